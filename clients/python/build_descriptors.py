"""Builds the descriptors the SDK loads: tally_client/_generated/tally_v1.binpb.

Owns: the one protoc command of the SDK. It compiles the tally.v1 contract
(the checkout's proto/tally/v1/*.proto) and the SDK's copy of the google.rpc
error details into one FileDescriptorSet (imports included). The SDK builds
its message classes from it at import, in a descriptor pool of its own
(tally_client/_proto.py says why).
Used by: setup.py (every wheel and sdist build), the Makefile (`make build`),
both through `ensure()`.

    python build_descriptors.py [PROTO_ROOT]
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "tally_client", "_generated", "tally_v1.binpb")
SDK_PROTOS = os.path.join(HERE, "proto")
# In a checkout the contract sits two levels up; an sdist carries the built
# descriptors instead (MANIFEST.in), since it has no checkout around it.
CHECKOUT_PROTOS = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def sources(proto_root: str) -> list[str]:
    contract = os.path.join(proto_root, "tally", "v1")
    names = sorted(name for name in os.listdir(contract) if name.endswith(".proto"))
    return [f"tally/v1/{name}" for name in names] + ["tally_client/google_rpc.proto"]


def build(proto_root: str, output: str = OUTPUT):
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    arguments = ["protoc", f"-I{proto_root}", f"-I{SDK_PROTOS}", f"-I{well_known}", "--include_imports",
                 f"--descriptor_set_out={output}", *sources(proto_root)]
    if protoc.main(arguments) != 0:
        raise SystemExit(f"protoc failed on {proto_root}")


def ensure(proto_root: str = CHECKOUT_PROTOS):
    """Rebuild from the checkout's protos when there is a checkout; otherwise
    (building from an sdist) the descriptors must already be there."""
    if os.path.isdir(os.path.join(proto_root, "tally", "v1")):
        build(proto_root)
    elif not os.path.exists(OUTPUT):
        raise SystemExit(f"no tally.v1 protos at {proto_root} and no built descriptors at {OUTPUT}")


if __name__ == "__main__":
    ensure(*sys.argv[1:2])
