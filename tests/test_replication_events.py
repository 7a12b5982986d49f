"""Events for other systems (--events-stream): each committed change of a
transaction, points moved by a check-in, in log order on tally.events.*,
each once per (log position, index), carried on by the next leader."""

import asyncio
import time

import grpc
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.replica_set import ReplicaSet
from tests.support import DEMO_COMPANY_CARD
from tally.v1 import common_pb2, events_pb2, loyalty_pb2, loyalty_pb2_grpc, payment_pb2, payment_pb2_grpc

EVENTS = "TALLY_EVENTS"


def pay(address: str, serial: int):
    with grpc.insecure_channel(address) as channel:
        return payment_pb2_grpc.PaymentServiceStub(channel).Pay(payment_pb2.PayRequest(
            terminal=common_pb2.TerminalContext(station_id=1, terminal_id=101, serial=serial, operator_id=7),
            amount_minor=2_500, plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True)), timeout=10)


def check_in(address: str):
    with grpc.insecure_channel(address) as channel:
        return loyalty_pb2_grpc.LoyaltyServiceStub(channel).CheckIn(loyalty_pb2.CheckInRequest(
            terminal=common_pb2.TerminalContext(station_id=1, terminal_id=101, serial=99_000, operator_id=7),
            card_id=DEMO_COMPANY_CARD), timeout=10)


def read_events(url: str, wanted: int, timeout_s: float = 30.0) -> list[tuple[str, events_pb2.Event]]:
    async def read():
        client = await nats.connect(url.split(","))
        try:
            js = client.jetstream()
            sub = await js.subscribe("tally.events.>", stream=EVENTS, ordered_consumer=True,
                                     config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            found = []
            deadline = time.monotonic() + timeout_s
            while len(found) < wanted and time.monotonic() < deadline:
                try:
                    message = await sub.next_msg(timeout=1)
                except nats.errors.TimeoutError:
                    continue
                found.append((message.subject, events_pb2.Event.FromString(message.data)))
            # Anything more would be a duplicate or an event nobody asked for.
            try:
                while True:
                    message = await sub.next_msg(timeout=1)
                    found.append((message.subject, events_pb2.Event.FromString(message.data)))
            except nats.errors.TimeoutError:
                pass
            return found
        finally:
            await client.close()

    return asyncio.run(read())


def test_events_follow_the_log_once_each_across_a_failover(tmp_path):
    nodes = ReplicaSet(str(tmp_path), 2, ["--demo", "--events-stream", EVENTS, "--lease-ttl-s", "2"]).start()
    try:
        leader = nodes.wait_leader()
        sales = [pay(leader.address, serial) for serial in range(1, 6)]
        assert check_in(leader.address).result == common_pb2.APPROVED
        leader.kill()
        new = nodes.wait_leader(other_than=leader)
        sales += [pay(new.address, serial) for serial in range(6, 9)]
        sale_ids = [sale.txn_id for sale in sales]

        events = read_events(nodes.nats.url, wanted=3 + len(sales) + 1)
        keys = [(event.log_position, event.index) for _, event in events]
        assert len(keys) == len(set(keys)), "each event once"
        assert keys == sorted(keys), "in log order"
        transactions = [event.transaction for subject, event in events if subject == "tally.events.transaction"]
        assert [txn.txn_id for txn in transactions if txn.txn_id in sale_ids] == sale_ids
        assert all(txn.kind == payment_pb2.SALE and txn.posted.fleet_minor == 2_500
                   for txn in transactions if txn.txn_id in sale_ids)
        points = [event.points for subject, event in events if subject == "tally.events.points"]
        assert any(movement.card_id == DEMO_COMPANY_CARD and movement.points > 0 and movement.movement == "CHECKIN"
                   for movement in points), points
        assert all(event.index < event.count for _, event in events)
    finally:
        nodes.close()
