"""Backups (`python -m core.backup`): an online snapshot of a running node,
restore into a new directory with the audit at the end, point-in-time
restore to a log position or a wall-clock time, a new node joining from a
backup, and retention trimming the log only behind the oldest kept backup."""

import json
import subprocess
import sys
import threading
import time

import grpc

from bench.replica_set import ReplicaSet, TallyNode
from core.backup import catalogue
from core.ledger import Ledger
from core.replication.applier import content_digest
from core.store import log_position, open_store, replicated_stream
from tests.support import DEMO_COMPANY_CARD, REPO, ServerProcess
from tally.v1 import common_pb2, payment_pb2, payment_pb2_grpc, replication_pb2

TERMINAL = 101


def backup(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "core.backup", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def pay(address: str, serial: int):
    with grpc.insecure_channel(address) as channel:
        answer = payment_pb2_grpc.PaymentServiceStub(channel).Pay(payment_pb2.PayRequest(
            terminal=common_pb2.TerminalContext(station_id=1, terminal_id=TERMINAL, serial=serial, operator_id=7),
            amount_minor=100, plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True)), timeout=10)
    assert answer.result == common_pb2.APPROVED
    return answer


def serials_in(data_dir: str, serials) -> set[int]:
    store = open_store(data_dir, readonly=True)
    try:
        ledger = Ledger(store, kernel=object())
        return {serial for serial in serials if ledger.idem(TERMINAL, serial) is not None}
    finally:
        store.close()


def digest_of(data_dir: str) -> tuple[int, str]:
    store = open_store(data_dir, readonly=True)
    try:
        return content_digest(store)
    finally:
        store.close()


def test_an_online_snapshot_of_a_single_node_restores_with_a_clean_audit(tmp_path):
    server = ServerProcess(str(tmp_path / "data")).start()
    try:
        before = range(1, 201)
        for serial in before:
            pay(server.address, serial)
        stop = threading.Event()
        during = []

        def keep_paying():
            serial = 1000
            while not stop.is_set():
                serial += 1
                pay(server.address, serial)
                during.append(serial)

        payer = threading.Thread(target=keep_paying)
        payer.start()
        taken = backup("snapshot", "--data", str(tmp_path / "data"), "--to", str(tmp_path / "backups"))
        stop.set()
        payer.join()
    finally:
        server.stop()
    assert during, "the server served while the snapshot was taken"
    [snapshot] = catalogue.snapshots(str(tmp_path / "backups"))
    assert snapshot.manifest.position == 0 and snapshot.manifest.stream == "" and snapshot.path in taken.stdout
    restored = backup("restore", "--snapshot", snapshot.path, "--to", str(tmp_path / "restored"))
    assert "audit OK" in restored.stdout
    assert serials_in(str(tmp_path / "restored"), before) == set(before)
    refused = backup("restore", "--snapshot", snapshot.path, "--to", str(tmp_path / "restored"), check=False)
    assert refused.returncode != 0 and "not empty" in refused.stderr


def test_point_in_time_restore_a_joining_node_and_trimming(tmp_path):
    nodes = ReplicaSet(str(tmp_path / "cluster"), 2, ["--demo"]).start()
    try:
        leader = nodes.wait_leader()
        follower = next(node for node in nodes.nodes if node is not leader)
        url = nodes.nats.url
        first = range(1, 51)
        for serial in first:
            pay(leader.address, serial)
        nodes.wait_caught_up()
        backup("snapshot", "--data", follower.data_dir, "--to", str(tmp_path / "backups"))
        [old] = catalogue.snapshots(str(tmp_path / "backups"))
        assert old.manifest.position == leader.status().log_position and old.manifest.stream == "TALLY_LOG"

        second = range(51, 101)
        for serial in second:
            pay(leader.address, serial)
        position_after_second = leader.status().log_position
        time.sleep(1.0)
        between_ms = time.time_ns() // 1_000_000
        time.sleep(1.0)
        third = range(101, 151)
        for serial in third:
            pay(leader.address, serial)
        everything = set(first) | set(second) | set(third)

        between = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(between_ms / 1000)) + f".{between_ms % 1000:03d}Z"
        as_of_time = backup("restore", "--backups", str(tmp_path / "backups"), "--to", str(tmp_path / "as-of-time"),
                            "--replicate", url, "--time", between, "--standalone")
        assert "audit OK" in as_of_time.stdout
        assert serials_in(str(tmp_path / "as-of-time"), everything) == set(first) | set(second)
        assert replicated_stream(open_store(str(tmp_path / "as-of-time"), readonly=True)) is None

        as_of_position = backup("restore", "--backups", str(tmp_path / "backups"),
                                "--to", str(tmp_path / "as-of-position"),
                                "--replicate", url, "--position", str(position_after_second), "--standalone")
        assert "audit OK" in as_of_position.stdout
        assert serials_in(str(tmp_path / "as-of-position"), everything) == set(first) | set(second)

        # A new node: restored from the backup (it stays a node of the log), then started: it replays the rest.
        backup("restore", "--backups", str(tmp_path / "backups"), "--to", str(tmp_path / "n3"))
        joining = TallyNode("n3", str(tmp_path / "n3"), str(tmp_path / "n3.log"), url, ["--demo"])
        nodes.nodes.append(joining)
        joining.start()
        nodes.wait_caught_up()
        assert serials_in_running(joining, everything)

        # Retention: a newer snapshot, keep 1: the log is trimmed behind it, and only behind it.
        backup("snapshot", "--data", follower.data_dir, "--to", str(tmp_path / "backups"))
        newest = catalogue.snapshots(str(tmp_path / "backups"))[-1]
        trimmed = backup("trim", "--backups", str(tmp_path / "backups"), "--keep", "1", "--replicate", url)
        assert f"before position {newest.manifest.position + 1}" in trimmed.stdout
        assert [one.path for one in catalogue.snapshots(str(tmp_path / "backups"))] == [newest.path]
        pay(leader.address, 1000)
        backup("restore", "--backups", str(tmp_path / "backups"), "--to", str(tmp_path / "after-trim"),
               "--replicate", url, "--standalone")
        assert serials_in(str(tmp_path / "after-trim"), everything | {1000}) == everything | {1000}

        # A node with nothing, joining a trimmed log, says it needs a backup.
        empty = TallyNode("n4", str(tmp_path / "n4"), str(tmp_path / "n4.log"), url, [])
        nodes.nodes.append(empty)
        empty.start()
        deadline = time.monotonic() + 20
        while not (empty.status() and empty.status().behind_trimmed_log):
            assert time.monotonic() < deadline, "the empty node never reported the trimmed log"
            time.sleep(0.1)
        assert empty.status().role == replication_pb2.REPLICA_ROLE_FOLLOWER
        empty.kill()
        nodes.nodes.remove(empty)

        nodes.wait_caught_up()
        leader = nodes.leader()
        for node in sorted(nodes.nodes, key=lambda node: node is leader):
            node.stop()
        assert len({digest_of(node.data_dir) for node in nodes.nodes}) == 1
        digest = backup("digest", nodes.nodes[0].data_dir)
        position = log_position(open_store(nodes.nodes[0].data_dir, readonly=True))[0]
        assert digest.stdout.startswith(f"position {position} ")
    finally:
        nodes.close()


def serials_in_running(node: TallyNode, serials) -> bool:
    with grpc.insecure_channel(node.address) as channel:
        query = payment_pb2_grpc.PaymentServiceStub(channel).Query
        return all(query(payment_pb2.QueryRequest(terminal_id=TERMINAL, serial=serial)).found for serial in serials)


def test_bench_backup_measures_pay_during_a_snapshot(tmp_path):
    report_path = tmp_path / "backup.json"
    command = [sys.executable, "-m", "bench", "backup", "--data", str(tmp_path / "data"), "--duration", "8",
               "--before", "2", "--warmup", "1", "--concurrency", "50", "--json", str(report_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["backup_bytes"] > 0 and 0 < report["backup_s"] < 8 and report["errors"] == 0
    assert report["throughput_during_per_s"] > 0 and report["backup_ratio"] > 0
    assert len(catalogue.snapshots(str(tmp_path / "backups"))) == 0, "the bench keeps its snapshots to itself"
