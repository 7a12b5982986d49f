"""A full store (LMDB's map here; a full disk is answered the same way):
writes answer RESOURCE_EXHAUSTED naming the cause and what to do, health
and metrics say so, reads go on, and nothing of a refused write is stored."""

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tally.v1 import common_pb2
from tests.support import DEMO_COMPANY_CARD, Terminal
from tests.test_security import metrics_text

DETAILS_KEY = "grpc-status-details-bin"


def reason_of(error: grpc.RpcError) -> str:
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())[DETAILS_KEY])
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason


PAYING_TERMINALS = 16


def pay_until_refused(channel, terminal_id: int) -> tuple[int, grpc.RpcError]:
    """Pays of 1 minor unit from one terminal until one is refused: (how many
    were approved, the refusal)."""
    terminal = Terminal(channel, terminal_id=terminal_id)
    for approved in range(20_000):
        try:
            answer = terminal.pay(1)[0]
        except grpc.RpcError as error:
            return approved, error
        assert answer.result == common_pb2.APPROVED
    raise AssertionError("8 MiB never filled")


def test_a_full_store_refuses_writes_keeps_serving_reads_and_says_so(server_factory):
    process = server_factory("--map-size-mib", "8", "--metrics-port", "0")
    terminal = Terminal(process.channel(), terminal_id=911)
    opening = terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor
    # Terminals paying side by side share commits, so the map fills in a
    # few seconds rather than one fsync per Pay.
    with ThreadPoolExecutor(PAYING_TERMINALS) as pool:
        outcomes = list(pool.map(lambda index: pay_until_refused(process.channel(), 912 + index), range(PAYING_TERMINALS)))
    approved = sum(count for count, _ in outcomes)
    for _, refusal in outcomes:
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the store is full (the LMDB map is full)" in refusal.details() and "--map-size-gib" in refusal.details()
        assert reason_of(refusal) == "STORE_FULL"
    card = terminal.card(DEMO_COMPANY_CARD)
    assert approved > 0
    assert card.balances.fleet_minor == opening - approved, "nothing of a refused write is stored"
    health = health_pb2_grpc.HealthStub(process.channel())
    check = lambda service: health.Check(health_pb2.HealthCheckRequest(service=service)).status
    deadline_checks = 50
    while check("tally.v1.Writes") != health_pb2.HealthCheckResponse.NOT_SERVING and deadline_checks:
        time.sleep(0.1)
        deadline_checks -= 1
    assert check("tally.v1.Writes") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert check("") == health_pb2.HealthCheckResponse.SERVING, "reads are still served"
    assert "tally_store_full 1.0" in metrics_text(process)
