"""Every RPC of every tally.v1 service has a declared caller
(server/callers.py), so a new RPC cannot slip past the guards: this walks
the proto descriptors. And the registrar refuses to serve an RPC that is
not in the table."""

import importlib
import pathlib

import grpc
import pytest

from server.callers import CALLERS
from server.rpc import Guards, Registrar

PROTO_DIR = pathlib.Path(__file__).resolve().parent.parent / "proto" / "tally" / "v1"


def every_rpc_path() -> set[str]:
    paths = set()
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        module = importlib.import_module(f"tally.v1.{proto.stem}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            paths.update(f"/{service.full_name}/{method.name}" for method in service.methods)
    return paths


def test_every_rpc_has_a_declared_caller_and_every_entry_an_rpc():
    paths = every_rpc_path()
    assert len(paths) > 100
    missing = sorted(paths - set(CALLERS))
    assert not missing, f"RPCs without a declared caller in server/callers.py: {missing}"
    own = {path for path in CALLERS if path.startswith("/tally.v1.")}
    assert own <= paths, f"entries naming no RPC: {sorted(own - paths)}"


def test_every_entry_allows_someone_or_says_why_not():
    for path, allowed in CALLERS.items():
        assert allowed.public or allowed.terminal or allowed.partner or allowed.roles or allowed.refused_when_secure, path
        assert not (allowed.public and (allowed.roles or allowed.terminal)), f"{path}: public needs nothing else"
        if allowed.serial is not None:
            assert allowed.terminal, f"{path}: a serial is a terminal's"


def test_what_moves_money_is_never_public():
    money = ("Pay", "Refund", "TopUp", "ExchangePartnerPoints", "CreatePacket", "TopUpCard", "ResolveDifference",
             "ClaimPacket", "BuyChances", "RedeemGift", "Draw")
    for path, allowed in CALLERS.items():
        if path.rsplit("/", 1)[1] in money:
            assert not allowed.public and not allowed.refused_when_secure, path


def test_an_rpc_missing_from_the_table_cannot_be_registered():
    registrar = Registrar(server=None, guards=Guards(admin=None))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    with pytest.raises(KeyError):
        registrar.wrap("/tally.v1.PaymentService/PayTwice", handler)


def test_the_readme_shows_the_table_as_the_code_has_it():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = readme.split("<!-- callers:begin -->\n", 1)[1].split("\n<!-- callers:end -->", 1)[0]
    from server.callers import markdown_table

    assert shown == markdown_table(), "README.md's caller table is stale: paste `python -m server.callers`"
