"""The bank test, in the style of Jepsen's: money moves among 100 cards while
a nemesis kills and pauses leaders and NATS servers at random. At the end
the cards hold exactly the money they started with, every acknowledged
operation is in the books exactly once, every node's audit is clean and all
nodes hold the same books, byte for byte.

A transfer is two idempotent requests: Pay from card A (its personal
account), then TopUp of card B by the same amount; the client sends each
to the leader and, refused or cut off, finds the leader and sends the same
request again (bench/replica_set.py's LeaderClient), as a terminal would."""

import asyncio
import random
import time

import grpc
import pytest

from bench.replica_set import LeaderClient, ReplicaSet
from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, payment_pb2, payment_pb2_grpc

CARDS = 100
CARD_ID_BASE = 6_282_000_000_000_000
OPENING_MINOR = 1_000_000
WORKERS = 20
CHAOS_S = 90
REQUEST_DEADLINE_S = 120.0
TTL_S = 2.0

pytestmark = pytest.mark.slow


def card_of(index: int) -> int:
    return CARD_ID_BASE + index


def pay_stub(channel):
    return payment_pb2_grpc.PaymentServiceStub(channel).Pay


def top_up_stub(channel):
    return card_pb2_grpc.CardServiceStub(channel).TopUp


async def open_cards(client: LeaderClient):
    deadline = time.monotonic() + REQUEST_DEADLINE_S
    for index in range(CARDS):
        await client.call(lambda channel: card_pb2_grpc.CardServiceStub(channel).OpenCard,
                          card_pb2.OpenCardRequest(card_id=card_of(index), card_type=card_pb2.PERSONAL_CARD), deadline)
        context = common_pb2.TerminalContext(station_id=1, terminal_id=7_000, serial=index + 1, operator_id=1)
        answer, _ = await client.call(top_up_stub, card_pb2.TopUpRequest(
            terminal=context, card_id=card_of(index), account=common_pb2.PERSONAL, amount=OPENING_MINOR), deadline)
        assert answer.result == common_pb2.APPROVED


async def transfers(client: LeaderClient, worker: int, stop: asyncio.Event, done: list, rng: random.Random):
    """Transfers until `stop`; each acknowledged leg goes into `done` as
    (terminal, serial, card, signed amount, answer)."""
    terminal_id = 7_100 + worker
    serial = 0
    while not stop.is_set():
        source, target = rng.sample(range(CARDS), 2)
        amount = rng.randint(1, 5_000)
        serial += 1
        context = common_pb2.TerminalContext(station_id=1, terminal_id=terminal_id, serial=serial, operator_id=1)
        request = payment_pb2.PayRequest(terminal=context, amount_minor=amount,
                                         plan=payment_pb2.PaymentPlan(card_id=card_of(source), use_personal=True))
        paid, _ = await client.call(pay_stub, request, time.monotonic() + REQUEST_DEADLINE_S)
        done.append((terminal_id, serial, source, -amount, paid))
        if paid.result != common_pb2.APPROVED:
            continue  # declined (not enough money): nothing moved
        serial += 1
        context = common_pb2.TerminalContext(station_id=1, terminal_id=terminal_id, serial=serial, operator_id=1)
        topped, _ = await client.call(top_up_stub, card_pb2.TopUpRequest(
            terminal=context, card_id=card_of(target), account=common_pb2.PERSONAL, amount=amount),
            time.monotonic() + REQUEST_DEADLINE_S)
        assert topped.result == common_pb2.APPROVED, topped
        done.append((terminal_id, serial, target, amount, topped))


def nemesis(nodes: ReplicaSet, stop_at: float, rng: random.Random, actions: list):
    """Kill or pause a leader or a NATS server every few seconds, and heal."""
    while time.monotonic() < stop_at:
        time.sleep(rng.uniform(3, 6))
        choice = rng.choice(("kill leader", "kill leader and disk", "pause leader", "kill nats", "pause nats"))
        actions.append(choice)
        if choice.endswith("leader") or choice.endswith("disk"):
            leader = nodes.leader()
            if leader is None:
                continue
            if choice == "pause leader":
                leader.pause()
                time.sleep(TTL_S + rng.uniform(0.5, 2))
                leader.resume()
                continue
            leader.kill()
            if choice.endswith("disk"):
                leader.wipe()
            time.sleep(rng.uniform(0.5, 2))
            leader.start()
            continue
        server = rng.choice(nodes.nats.servers)
        if choice == "kill nats":
            server.kill()
            time.sleep(rng.uniform(2, 5))
            server.start()
        else:
            server.pause()
            time.sleep(rng.uniform(1, 4))
            server.resume()


def test_bank(tmp_path):
    rng = random.Random(17)
    nodes = ReplicaSet(str(tmp_path), 3, ["--lease-ttl-s", str(TTL_S)]).start()
    try:
        done, actions = [], []

        async def run():
            client = LeaderClient([node.address for node in nodes.nodes])
            try:
                await open_cards(client)
                stop = asyncio.Event()
                chaos = asyncio.get_running_loop().run_in_executor(
                    None, nemesis, nodes, time.monotonic() + CHAOS_S, random.Random(rng.random()), actions)
                workers = [asyncio.create_task(transfers(client, worker, stop, done, random.Random(rng.random())))
                           for worker in range(WORKERS)]
                await chaos
                stop.set()
                await asyncio.gather(*workers)
            finally:
                await client.close()

        asyncio.run(run())
        assert len(actions) >= 10 and len(done) > 500, (actions, len(done))
        for node in nodes.nodes:
            if not node.running:
                node.start()
        nodes.wait_caught_up(120)
        leader = nodes.wait_leader()
        check_every_answer_once(leader.address, done)
        check_cards_hold_what_they_began_with(leader.address)
        check_books_identical(nodes)
    finally:
        nodes.close()


def check_every_answer_once(address: str, done: list):
    """Each acknowledged leg is stored with its answer; each card's balance
    is its opening plus the legs acknowledged on it, each counted once."""
    expected = {index: OPENING_MINOR for index in range(CARDS)}
    with grpc.insecure_channel(address) as channel:
        query = payment_pb2_grpc.PaymentServiceStub(channel).Query
        for terminal_id, serial, card, amount, answer in done:
            stored = query(payment_pb2.QueryRequest(terminal_id=terminal_id, serial=serial), timeout=30)
            assert stored.found, (terminal_id, serial)
            assert (stored.answer.result, stored.answer.txn_id) == (answer.result, answer.txn_id), (terminal_id, serial)
            if answer.result == common_pb2.APPROVED:
                expected[card] += amount
        cards = card_pb2_grpc.CardServiceStub(channel)
        for index, balance in expected.items():
            found = personal_balance(cards, index)
            assert found == balance, f"card {index}: {found}, expected {balance}"


def personal_balance(cards, index: int) -> int:
    return cards.GetCard(card_pb2.GetCardRequest(card_id=card_of(index)), timeout=30).card.balances.personal_minor


def check_cards_hold_what_they_began_with(address: str):
    with grpc.insecure_channel(address) as channel:
        cards = card_pb2_grpc.CardServiceStub(channel)
        total = sum(personal_balance(cards, index) for index in range(CARDS))
    assert total == CARDS * OPENING_MINOR


def check_books_identical(nodes: ReplicaSet):
    failures, found = nodes.stop_and_check()
    assert not failures, failures
    assert len(set(found)) == 1, found
