"""--workers N: several server processes on one port, one data directory."""

import asyncio
import json
import subprocess
import sys
import urllib.request

import grpc

from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, payment_pb2, payment_pb2_grpc
from tests.support import Terminal
from tests.test_metrics import metrics_url, scrape, value

CARD_BASE = 990_000
CARDS = 8
CONNECTIONS = 16
SALES_PER_CONNECTION = 40
# Every channel its own TCP connection: SO_REUSEPORT spreads connections.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def open_cards(address: str):
    cards = card_pb2_grpc.CardServiceStub(grpc.insecure_channel(address))
    for index in range(CARDS):
        card_id = CARD_BASE + index
        assert cards.OpenCard(card_pb2.OpenCardRequest(card_id=card_id, card_type=card_pb2.PERSONAL_CARD)).result == common_pb2.APPROVED
        context = common_pb2.TerminalContext(station_id=1, terminal_id=6_999, serial=index + 1, operator_id=1)
        topped = cards.TopUp(card_pb2.TopUpRequest(terminal=context, card_id=card_id, account=common_pb2.PERSONAL, amount=1_000_000))
        assert topped.result == common_pb2.APPROVED


async def pay_concurrently(address: str) -> dict:
    """CONNECTIONS terminals, each on its own connection, paying at once
    (some with a channel part, so that some payments take two commits)."""
    acknowledged = {}

    async def terminal(index: int):
        async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
            payments = payment_pb2_grpc.PaymentServiceStub(channel)
            for serial in range(1, SALES_PER_CONNECTION + 1):
                plan = payment_pb2.PaymentPlan(card_id=CARD_BASE + (index + serial) % CARDS, use_personal=True)
                if serial % 5 == 0:
                    plan.channel = common_pb2.ALIPAY
                context = common_pb2.TerminalContext(station_id=1, terminal_id=7_000 + index, serial=serial, operator_id=1)
                answer = await payments.Pay(payment_pb2.PayRequest(terminal=context, amount_minor=100 + serial, plan=plan))
                acknowledged[(7_000 + index, serial)] = answer

    await asyncio.gather(*(terminal(index) for index in range(CONNECTIONS)))
    return acknowledged


def test_two_workers_share_the_port_and_the_books_and_stop_cleanly(server_factory):
    process = server_factory("--workers", "2", "--log-requests", "--log-format", "json", "--metrics-port", "0", demo=False)
    open_cards(process.address)
    acknowledged = asyncio.run(pay_concurrently(process.address))
    assert len(acknowledged) == CONNECTIONS * SALES_PER_CONNECTION
    assert {answer.result for answer in acknowledged.values()} == {common_pb2.APPROVED}
    # Transaction ids come from one counter in the store: unique across workers.
    assert len({answer.txn_id for answer in acknowledged.values()}) == len(acknowledged)
    # The supervisor's one endpoint sums both workers.
    samples = scrape(metrics_url(process))
    assert value(samples, "tally_requests_total", rpc="Pay", transport="unary", outcome="APPROVED") == len(acknowledged)
    assert process.stop() == 0, process.log
    lines = [json.loads(line) for line in process.log_lines if line.startswith("{")]
    serving_pids = {line["pid"] for line in lines if line["message"].startswith("worker listening on")}
    paying_pids = {line["pid"] for line in lines if line.get("rpc") == "Pay"}
    assert len(serving_pids) == 2 and paying_pids == serving_pids, "both workers must have taken payments"
    assert sum(line["message"].startswith("stopped") for line in lines) == 2

    audit = subprocess.run([sys.executable, "-m", "core.audit", process.data_dir], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout
    restarted = server_factory(data_dir=process.data_dir, demo=False)
    payments = payment_pb2_grpc.PaymentServiceStub(restarted.channel())
    for (terminal_id, serial), answer in acknowledged.items():
        stored = payments.Query(payment_pb2.QueryRequest(terminal_id=terminal_id, serial=serial))
        assert stored.found and stored.answer.txn_id == answer.txn_id and stored.answer.sources == answer.sources
    terminal = Terminal(restarted.channel())
    paid = sum(answer.sources.personal_minor for answer in acknowledged.values())
    balances = sum(terminal.card(CARD_BASE + index).balances.personal_minor for index in range(CARDS))
    assert balances == CARDS * 1_000_000 - paid


def test_one_worker_does_not_share_its_port(server_factory):
    first = server_factory(demo=False)
    second = subprocess.run(
        [sys.executable, "-m", "server", "--data", first.data_dir + "-2", "--listen", first.address],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode != 0 and f"cannot listen on {first.address}" in second.stderr + second.stdout
