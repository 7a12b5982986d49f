"""The tally.v1 message classes the SDK uses, from its own descriptor pool.

Owns: loading _generated/tally_v1.binpb (built by build_descriptors.py from
the contract) and making message classes from it.
Used by: every module of the SDK that builds or reads a message.

Why a descriptor set and a pool of its own, not generated `tally.v1` stubs:
- Installing a package named `tally` would collide with the server's own
  `tally.v1` stubs (same import name, different files on disk).
- Generated stubs under another import name would still register the files
  "tally/v1/*.proto" and the symbols "tally.v1.*" in protobuf's default
  pool; importing them next to the server's stubs (the tests do) fails as
  soon as the two were built from different versions of the contract.
- A pool of the SDK's own holds the same names without touching the default
  pool, so both import side by side whatever their versions. The bytes on
  the wire do not depend on which pool a class came from.
- Generated code also pins the protobuf runtime to at least the version of
  the generator; a descriptor set works with any protobuf the SDK allows.
The SDK's public API is typed dataclasses (results.py); these classes are
for building requests and for callers who want the raw messages.
"""

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "tally.v1"


def _load_pool() -> descriptor_pool.DescriptorPool:
    data = resources.files(__package__).joinpath("_generated", "tally_v1.binpb").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool


POOL = _load_pool()
_classes: dict[str, Any] = {}


def message_class(full_name: str) -> Any:
    """The class of a message by its full name, e.g. "tally.v1.PayRequest"."""
    found = _classes.get(full_name)
    if found is None:
        found = _classes[full_name] = message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))
    return found


def tally(name: str) -> Any:
    """A tally.v1 message class by its short name: tally("PayRequest").
    Typed Any: the classes are made at run time from the descriptors (the
    SDK's typed view of them is results.py)."""
    return message_class(f"{PACKAGE}.{name}")


def enum_values(full_name: str) -> dict[str, int]:
    """An enum's values by name, e.g. enum_values("tally.v1.ResultCode")."""
    return {value.name: value.number for value in POOL.FindEnumTypeByName(full_name).values}


class _Messages:
    """`tally_client.messages.PayRequest`: every tally.v1 message by name."""

    def __getattr__(self, name: str) -> Any:
        try:
            return tally(name)
        except KeyError:
            raise AttributeError(f"tally.v1 has no message {name}") from None


messages = _Messages()
