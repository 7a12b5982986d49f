"""The SDK as a distributable: its wheel installs into a fresh venv outside
the checkout with only its dependencies and pays against a real server;
it never imports Tally's server; it imports next to the server's own
tally.v1 stubs; its enums are the contract's; every ResultCode has an
ISO 8583 response code; the error details of the trailer decode as
googleapis' own classes write them."""

import ast
import os
import subprocess
import sys
import textwrap

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import tally_client
from tally.v1 import common_pb2, loyalty_pb2, payment_pb2
from tally_client import _proto, codes, errors, iso8583
from tally_client.codes import Outcome, ResultCode
from tests.support import DEMO_COMPANY_CARD, REPO

SDK = os.path.join(REPO, "clients", "python")
SDK_DEPENDENCIES = {"grpcio", "protobuf", "cryptography"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel, built as a vendor builds it (pip wheel; no network: this
    venv's setuptools and grpcio-tools)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), SDK], check=True, cwd=str(out))
    [built] = os.listdir(out)
    return str(out / built)


def test_the_wheel_installs_into_a_fresh_venv_and_pays(wheel, server, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "install", "--quiet", wheel], cwd=str(tmp_path),
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    script = textwrap.dedent(f"""
        import importlib.metadata, pathlib, sys
        import tally_client
        from tally_client import TerminalClient
        assert pathlib.Path(tally_client.__file__).parent.joinpath("py.typed").exists()
        requires = {{r.split(">")[0].split("<")[0].split("=")[0].strip()
                    for r in importlib.metadata.requires("tally-client")}}
        print(sorted(requires))
        with TerminalClient({server.address!r}, station_id=1, terminal_id=601, operator_id=7,
                            state_dir={str(tmp_path / "state")!r}) as client:
            result = client.pay(1_000, card_id={DEMO_COMPANY_CARD}, use_fleet=True)
        print(result.result.name, result.amount_minor)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("core", "server", "bench", "tally", "tests")))
    """)
    # Outside the checkout, with nothing of it on the path.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run([python, "-c", script], cwd=str(tmp_path), env=environment, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    requires, paid, server_modules = run.stdout.splitlines()
    assert requires == str(sorted(SDK_DEPENDENCIES))
    assert paid == "APPROVED 1000"
    assert server_modules == "[]"
    checked = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_the_wheel_carries_the_contract_and_the_typing_marker(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"tally_client/py.typed", "tally_client/_generated/tally_v1.binpb", "tally_client/client.py"} <= names
    assert not any(name.startswith(("tally/", "core/", "server/", "bench/")) for name in names)


def test_the_sdk_never_imports_the_server():
    for name in os.listdir(os.path.join(SDK, "tally_client")):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(SDK, "tally_client", name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]] if node.level == 0 else []
            else:
                continue
            assert not set(roots) & {"core", "server", "bench", "tally", "tests"}, f"{name}: imports {roots}"


def test_the_sdk_imports_next_to_the_servers_stubs():
    """Same names, separate descriptor pools, the same bytes on the wire."""
    ours = _proto.tally("PayRequest")(amount_minor=25_000)
    ours.plan.card_id, ours.terminal.serial = DEMO_COMPANY_CARD, 9
    theirs = payment_pb2.PayRequest(amount_minor=25_000, plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD),
                                    terminal=common_pb2.TerminalContext(serial=9))
    assert type(ours).DESCRIPTOR.full_name == theirs.DESCRIPTOR.full_name == "tally.v1.PayRequest"
    assert type(ours).DESCRIPTOR.file.pool is not theirs.DESCRIPTOR.file.pool
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert tally_client.messages.PayRequest is type(ours)


@pytest.mark.parametrize("sdk_enum, wire_enum", [
    (codes.ResultCode, common_pb2.ResultCode), (codes.Channel, common_pb2.Channel),
    (codes.CardAccount, common_pb2.CardAccount), (codes.TransactionKind, payment_pb2.TransactionKind),
    (codes.TransactionState, payment_pb2.TransactionState), (codes.CustomerTier, loyalty_pb2.CustomerTier),
])
def test_the_sdks_enums_are_the_contracts(sdk_enum, wire_enum):
    """A new value in the contract fails here until the SDK has it (and, for
    ResultCode, its ISO 8583 code in iso8583.py)."""
    ours = {codes.WIRE_NAMES.get((sdk_enum, member.name), member.name): member.value for member in sdk_enum}
    assert ours == dict(wire_enum.items())


def test_every_result_code_has_an_iso8583_response_code():
    assert set(iso8583.RESPONSE_CODE) == set(ResultCode)
    assert all(len(code) == 2 and code.isdigit() for code in iso8583.RESPONSE_CODE.values())
    assert [result for result, code in iso8583.RESPONSE_CODE.items() if code == "00"] == [ResultCode.APPROVED]
    assert iso8583.response_code(ResultCode.INSUFFICIENT_FUNDS) == "51"
    assert iso8583.response_code(ResultCode.APPROVED, Outcome.REVERSED) == "68"
    assert iso8583.response_code_of_status("INVALID_ARGUMENT") == "30"


def test_a_result_code_from_a_newer_server_is_never_approved():
    unknown = ResultCode(999)
    assert unknown.name == "UNKNOWN_999" and unknown != ResultCode.APPROVED
    assert iso8583.response_code(unknown) == "05"
    answer = _proto.tally("PaymentAnswer")(result=999, txn_id=5)
    from tally_client import results

    assert not results.payment_result(answer, 1).approved


def _details(code: grpc.StatusCode, *details) -> bytes:
    """A google.rpc.Status as server/errors.py writes it, with googleapis' classes."""
    status = status_pb2.Status(code=code.value[0], message="refused")
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status.SerializeToString()


def test_the_error_details_decode_as_googleapis_writes_them():
    info = error_details_pb2.ErrorInfo(reason="FIELD_OUT_OF_RANGE", domain="tally.v1",
                                       metadata={"field": "basket[2].amount_minor"})
    bad = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="basket[2].amount_minor",
                                                    description="must be within 0 .. 10^12"),
        error_details_pb2.BadRequest.FieldViolation(field="amount_minor", description="lines do not add up")])
    blob = _details(grpc.StatusCode.INVALID_ARGUMENT, info, bad)
    error = errors.error_of_status(grpc.StatusCode.INVALID_ARGUMENT, "words", (("grpc-status-details-bin", blob),))
    assert isinstance(error, errors.InvalidArgument)
    assert (error.reason, error.field, error.domain, error.message) == (
        "FIELD_OUT_OF_RANGE", "basket[2].amount_minor", "tally.v1", "words")
    assert [v.field for v in error.violations] == ["basket[2].amount_minor", "amount_minor"]
    # No ErrorInfo: the field is the first violation's.
    only_bad = _details(grpc.StatusCode.INVALID_ARGUMENT, bad)
    assert errors.error_of_status(grpc.StatusCode.INVALID_ARGUMENT, "w", (("grpc-status-details-bin", only_bad),)
                                  ).field == "basket[2].amount_minor"


def test_without_usable_details_the_error_is_the_plain_status():
    other_code = _details(grpc.StatusCode.NOT_FOUND, error_details_pb2.ErrorInfo(reason="NOT_FOUND"))
    for trailer in ((), (("grpc-status-details-bin", other_code),), (("grpc-status-details-bin", b"\xff\xff"),)):
        error = errors.error_of_status(grpc.StatusCode.UNAVAILABLE, "server stopping", trailer)
        assert isinstance(error, errors.Unavailable)
        assert (error.status, error.reason, error.field, error.violations) == ("UNAVAILABLE", "UNAVAILABLE", "", ())
