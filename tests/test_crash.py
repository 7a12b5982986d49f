"""SIGKILL under load: nothing acknowledged is lost, nothing is half-applied.

A real server in a subprocess takes concurrent payments (card only, and with
a channel part, so that a crash can catch a payment between its two commits)
and is killed with SIGKILL at a random moment, several times over the same
data directory. After each restart every acknowledged answer must be stored
exactly as it was given, and `python -m core.audit` must pass.
"""

import asyncio
import random
import subprocess
import sys

import grpc
from core.ledger import Ledger
from core.store import open_store
from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, payment_pb2, payment_pb2_grpc
from tests.support import ServerProcess

CLIENTS = 40
CYCLES = 3
CARD_BASE = 880_000


async def _client(address: str, index: int, cycle: int, acknowledged: dict, stop: asyncio.Event):
    async with grpc.aio.insecure_channel(address) as channel:
        payments = payment_pb2_grpc.PaymentServiceStub(channel)
        terminal_id = 5_000 + index
        serial = cycle * 1_000_000
        while not stop.is_set():
            serial += 1
            plan = payment_pb2.PaymentPlan(card_id=CARD_BASE + index % 10, use_personal=True)
            if serial % 3 == 0:
                plan.channel = common_pb2.ALIPAY
            context = common_pb2.TerminalContext(station_id=1, terminal_id=terminal_id, serial=serial, operator_id=1)
            request = payment_pb2.PayRequest(terminal=context, amount_minor=random.randint(1, 5_000), plan=plan)
            try:
                answer = await payments.Pay(request, timeout=5)
            except grpc.aio.AioRpcError:
                return  # the server died: this request is unacknowledged
            acknowledged[(terminal_id, serial)] = answer


async def _load_then_kill(server: ServerProcess, cycle: int, acknowledged: dict):
    stop = asyncio.Event()
    clients = [asyncio.create_task(_client(server.address, i, cycle, acknowledged, stop)) for i in range(CLIENTS)]
    await asyncio.sleep(random.uniform(0.5, 1.5))
    server.kill()
    stop.set()
    await asyncio.gather(*clients)


def _open_cards(server: ServerProcess):
    cards = card_pb2_grpc.CardServiceStub(server.channel())
    for index in range(10):
        cards.OpenCard(card_pb2.OpenCardRequest(card_id=CARD_BASE + index, card_type=card_pb2.PERSONAL_CARD))
        context = common_pb2.TerminalContext(station_id=1, terminal_id=4_999, serial=index + 1, operator_id=1)
        cards.TopUp(card_pb2.TopUpRequest(terminal=context, card_id=CARD_BASE + index, account=common_pb2.PERSONAL, amount=10**11))


def _audit(data_dir: str):
    audit = subprocess.run([sys.executable, "-m", "core.audit", data_dir], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path):
    data_dir = str(tmp_path / "data")
    server = ServerProcess(data_dir, "--channel-latency-ms", "1", "5", demo=False).start()
    _open_cards(server)
    acknowledged = {}
    for cycle in range(CYCLES):
        asyncio.run(_load_then_kill(server, cycle, acknowledged))
        _audit(data_dir)
        server = ServerProcess(data_dir, "--channel-latency-ms", "1", "5", demo=False).start()
        # Recovery ran before serving: no payment is left between its commits.
        store = open_store(data_dir, readonly=True)
        assert Ledger(store, kernel=object()).pending_txn_ids() == []
        store.close()
        payments = payment_pb2_grpc.PaymentServiceStub(server.channel())
        for (terminal_id, serial), answer in acknowledged.items():
            stored = payments.Query(payment_pb2.QueryRequest(terminal_id=terminal_id, serial=serial))
            assert stored.found, f"acknowledged request {terminal_id}/{serial} was lost"
            assert stored.answer.result == answer.result
            assert stored.answer.txn_id == answer.txn_id and stored.answer.amount_minor == answer.amount_minor
            assert stored.answer.sources == answer.sources
    assert len(acknowledged) > CLIENTS * CYCLES, "the load did not run"
    approved = sum(answer.result == common_pb2.APPROVED for answer in acknowledged.values())
    assert approved > len(acknowledged) // 2
    server.stop()
    _audit(data_dir)
