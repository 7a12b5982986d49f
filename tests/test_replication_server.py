"""Replicated servers over gRPC: the leader takes writes, followers serve
reads stamped with their freshness and refuse writes naming the leader, a
clean stop hands the lease over at once, and nothing writes a node's
directory behind the log (the command-line tools, a server without
--replicate)."""

import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.replica_set import ReplicaSet
from tests.support import DEMO_COMPANY_CARD, REPO, ServerProcess
from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, loyalty_pb2, loyalty_pb2_grpc, payment_pb2, payment_pb2_grpc
from tally.v1 import replication_pb2, replication_pb2_grpc, settlement_pb2, settlement_pb2_grpc


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    replica_set = ReplicaSet(str(tmp_path_factory.mktemp("replicated")), 2, ["--demo", "--metrics-port", "0"]).start()
    yield replica_set
    replica_set.close()


def pay(address: str, serial: int, amount_minor: int = 100):
    with grpc.insecure_channel(address) as channel:
        request = payment_pb2.PayRequest(
            terminal=common_pb2.TerminalContext(station_id=1, terminal_id=101, serial=serial, operator_id=7),
            amount_minor=amount_minor, plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True))
        return payment_pb2_grpc.PaymentServiceStub(channel).Pay(request, timeout=10)


def get_card(address: str):
    with grpc.insecure_channel(address) as channel:
        cards = card_pb2_grpc.CardServiceStub(channel)
        return cards.GetCard(card_pb2.GetCardRequest(card_id=DEMO_COMPANY_CARD), timeout=10)


def health(address: str, service: str):
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(condition, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_follower_serves_fresh_reads_and_sends_writes_to_the_leader(nodes):
    leader = nodes.wait_leader()
    follower = next(node for node in nodes.nodes if node is not leader)
    answer = pay(leader.address, serial=int(time.time_ns() // 1000))
    assert answer.result == common_pb2.APPROVED
    position = leader.status().log_position
    wait_for(lambda: follower.status().log_position >= position)

    card = get_card(follower.address)
    assert card.card.balances.fleet_minor == get_card(leader.address).card.balances.fleet_minor
    assert card.replica.log_position >= position and not card.replica.leader and card.replica.node_id == follower.name
    assert card.replica.lag_ms < 5_000
    with grpc.insecure_channel(follower.address) as channel:
        loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(channel)
        points = loyalty.GetPoints(loyalty_pb2.GetPointsRequest(card_id=DEMO_COMPANY_CARD))
    assert points.replica.log_position >= position
    assert get_card(leader.address).replica.leader

    with pytest.raises(grpc.RpcError) as refused:
        pay(follower.address, serial=int(time.time_ns() // 1000))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("x-tally-leader", leader.address) in tuple(refused.value.trailing_metadata())
    assert leader.address in refused.value.details()

    assert health(leader.address, "tally.v1.Leader") == health_pb2.HealthCheckResponse.SERVING
    assert health(follower.address, "tally.v1.Leader") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health(follower.address, "") == health_pb2.HealthCheckResponse.SERVING
    status = follower.status()
    assert status.role == replication_pb2.REPLICA_ROLE_FOLLOWER and status.leader_address == leader.address


def test_an_answer_a_reader_returns_as_wire_bytes_is_stamped_too(nodes):
    """ListDifferences is answered from a reader process's wire bytes
    (server/readers.py); a replicated node parses them to stamp its
    freshness like any other read."""
    leader = nodes.wait_leader()
    follower = next(node for node in nodes.nodes if node is not leader)
    for node in (leader, follower):
        with grpc.insecure_channel(node.address) as channel:
            settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
            listed = settlement.ListDifferences(settlement_pb2.ListDifferencesRequest(all_states=True), timeout=10)
        assert listed.HasField("replica") and listed.replica.node_id == node.name
        assert listed.replica.leader == (node is leader)


def metrics_of(node) -> str:
    import re
    import urllib.request

    with open(node.log_path) as log_file:
        port = re.findall(r"metrics on http://[^:]+:(\d+)/metrics", log_file.read())[-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_metrics_say_role_position_lag_and_append_time(nodes):
    leader = nodes.wait_leader()
    follower = next(node for node in nodes.nodes if node is not leader)
    pay(leader.address, serial=int(time.time_ns() // 1000))
    wait_for(lambda: follower.status().log_position == leader.status().log_position)
    time.sleep(1.5)  # the gauges are sampled once a second
    led, followed = metrics_of(leader), metrics_of(follower)
    assert metric(led, "tally_replication_leader") == 1 and metric(followed, "tally_replication_leader") == 0
    assert metric(led, "tally_replication_append_seconds_count") >= 1
    assert metric(followed, "tally_replication_log_position") == leader.status().log_position
    assert metric(followed, "tally_replication_lag_entries") == 0
    assert 0 <= metric(followed, "tally_replication_lag_seconds") < 5
    assert metric(followed, "tally_replication_leader_changes_total") >= 1


def test_tools_refuse_to_write_a_node_and_a_single_node_refuses_to_start_on_one(nodes):
    follower = next(node for node in nodes.nodes if node is not nodes.wait_leader())
    for command in (["core.loyalty", "--data", follower.data_dir, "tiers"],
                    ["core.settlement", "close-day", "--data", follower.data_dir, "--station", "1", "--day", "20000",
                     "--by", "ops"],
                    ["core.admin", "create-org", "--data", follower.data_dir, "--parent", "1", "--kind", "station",
                     "--name", "S"]):
        result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, command
        assert "replicated log" in result.stderr and "leader" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    reading = subprocess.run([sys.executable, "-m", "core.loyalty", "--data", follower.data_dir, "statement",
                              str(DEMO_COMPANY_CARD)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert reading.returncode == 0, "reads still work on a node's directory"

    single = ServerProcess(follower.data_dir, demo=False)
    with pytest.raises(RuntimeError, match="is a node of the replicated log"):
        single.start()


def test_a_clean_stop_hands_the_lease_over_at_once(nodes):
    leader = nodes.wait_leader()
    started = time.monotonic()
    assert leader.stop() == 0
    successor = nodes.wait_leader(timeout_s=10, other_than=leader)
    assert time.monotonic() - started < 2.5, "a released lease is taken without waiting for it to lapse"
    assert pay(successor.address, serial=int(time.time_ns() // 1000)).result == common_pb2.APPROVED
    leader.start()
    wait_for(lambda: leader.status() is not None and leader.status().role == replication_pb2.REPLICA_ROLE_FOLLOWER)


def test_a_standalone_server_says_so(tmp_path):
    # Any server answers GetStatus; without --replicate it is standalone and never stamps reads.
    process = ServerProcess(str(tmp_path / "data")).start()
    try:
        with grpc.insecure_channel(process.address) as channel:
            status = replication_pb2_grpc.ReplicationServiceStub(channel).GetStatus(
                replication_pb2.GetReplicationStatusRequest())
        assert status.role == replication_pb2.REPLICA_ROLE_STANDALONE
        assert not get_card(process.address).HasField("replica")
        assert health(process.address, "tally.v1.Leader") == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.stop()
