"""The replicated side of `bench e2e --compare-replicated`.

Owns: a 3-node NATS JetStream cluster on loopback for the whole bench run
(core/replication/local_cluster.py), and each replicated Pay run: the
leader (`python -m server --replicate ... --node-id leader`) on its own data
directory, waited for until it leads, K followers applying the log on
theirs, the load driven at the leader exactly as bench e2e drives a single
node, then followers and leader stopped (followers first: the leader's
clean stop releases its lease, and the next run's leader takes it at once).
What it adds to a run: the followers' CPU and position, and the log's bytes
per transaction.
Used by: bench/e2e.py (--compare-replicated).
May call: the servers through gRPC, the NATS cluster (stream state).
"""

import os
import time

import grpc
import msgspec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.replication.local_cluster import LocalCluster
from core.replication.log import ReplicationLog
from core.store import transactions_in_directory

LEADER_HEALTH_NAME = "tally.v1.Leader"
LEADER_TIMEOUT_S = 60.0
FOLLOWERS_MAX = 4
# Followers get this long after the load to apply the rest of the log.
CATCH_UP_TIMEOUT_S = 60.0


class ReplicatedExtras(msgspec.Struct):
    """What a replicated run measured beyond the leader's TargetReport."""

    followers: int
    # CPU of all followers over the run (warm-up and funding included), per
    # transaction they applied.
    follower_cpu_ms_per_transaction: float | None
    # CPU of the three NATS servers over the run, per transaction.
    nats_cpu_ms_per_transaction: float | None
    log_bytes_per_transaction: float | None
    log_entries: int
    transactions: int
    # The leader's own view (its metrics): mean time from append to quorum
    # ack, mean entry size.
    append_ms_avg: float | None = None
    entry_bytes_avg: float | None = None


class ReplicatedSide:
    """The cluster and the nodes' directories of one bench run."""

    def __init__(self, work_dir: str, followers: int):
        assert 0 <= followers <= FOLLOWERS_MAX
        self.work_dir = work_dir
        self.followers = followers
        self.cluster = LocalCluster(os.path.join(work_dir, "nats")).start()
        self.leader_dir = os.path.join(work_dir, "replicated-leader")
        self.follower_dirs = [os.path.join(work_dir, f"replicated-follower-{index}") for index in range(followers)]
        self.extras: list[ReplicatedExtras] = []

    def close(self):
        self.cluster.kill()

    def run(self, e2e, half, log_path: str):
        """One replicated Pay run: (TargetReport, Measured) like e2e.run_target."""
        address = f"127.0.0.1:{e2e.free_port()}"
        flags = ["--replicate", self.cluster.url]
        metrics_port = e2e.free_port()
        leader = e2e.start_server([*e2e.server_command("pay", address, half, self.leader_dir), *flags,
                                   "--node-id", "leader", "--metrics-port", str(metrics_port)], log_path)
        followers = []
        try:
            e2e.wait_until_serving(leader, address, log_path)
            wait_until_leader(leader, address, log_path, e2e)
            for index, folder in enumerate(self.follower_dirs):
                follower_log = log_path.replace(".log", f"-follower-{index}.log")
                follower_address = f"127.0.0.1:{e2e.free_port()}"
                process = e2e.start_server([*e2e.server_command("pay", follower_address, half, folder), *flags,
                                            "--node-id", f"follower-{index}"], follower_log)
                e2e.wait_until_serving(process, follower_address, follower_log)
                followers.append((process, follower_address))
            log_before = self.stream_state()
            transactions_before = transactions_in_directory(self.leader_dir) or 0
            cpu_before = [e2e.process_cpu_s(process.pid) or 0.0 for process, _ in followers]
            nats_before = self.nats_cpu_s(e2e)
            measured = e2e.drive_load(address, half, fund_cards=True, server_pid=leader.pid)
            wait_until_caught_up([follower_address for _, follower_address in followers], address)
            cpu_after = [e2e.process_cpu_s(process.pid) or 0.0 for process, _ in followers]
            nats_after = self.nats_cpu_s(e2e)
            log_after = self.stream_state()
            appends = scrape(metrics_port)
        finally:
            for process, _ in followers:
                e2e.stop_server(process)
            exit_code = e2e.stop_server(leader)
        transactions = (transactions_in_directory(self.leader_dir) or 0) - transactions_before
        self.extras.append(ReplicatedExtras(
            followers=len(followers),
            follower_cpu_ms_per_transaction=(1000 * sum(after - before for before, after in zip(cpu_before, cpu_after))
                                             / len(followers) / transactions) if followers and transactions else None,
            nats_cpu_ms_per_transaction=1000 * (nats_after - nats_before) / transactions if transactions else None,
            log_bytes_per_transaction=(log_after.bytes - log_before.bytes) / transactions if transactions else None,
            log_entries=log_after.last - log_before.last,
            transactions=transactions,
            append_ms_avg=mean_of(appends, "tally_replication_append_seconds", 1000.0),
            entry_bytes_avg=mean_of(appends, "tally_replication_append_bytes"),
        ))
        return e2e.summarize(measured, half.duration_s, exit_code), measured

    def nats_cpu_s(self, e2e) -> float:
        return sum(e2e.process_cpu_s(server.process.pid) or 0.0 for server in self.cluster.servers)

    def stream_state(self):
        log = ReplicationLog(self.cluster.url)
        try:
            log.connect(10)
            return log.state()
        finally:
            log.close()

    def summary(self) -> ReplicatedExtras | None:
        if not self.extras:
            return None
        transactions = sum(extra.transactions for extra in self.extras)

        def weighted(name):
            values = [(getattr(extra, name), extra.transactions) for extra in self.extras
                      if getattr(extra, name) is not None]
            total = sum(count for _, count in values)
            return sum(value * count for value, count in values) / total if total else None

        return ReplicatedExtras(
            followers=self.followers,
            follower_cpu_ms_per_transaction=weighted("follower_cpu_ms_per_transaction"),
            nats_cpu_ms_per_transaction=weighted("nats_cpu_ms_per_transaction"),
            log_bytes_per_transaction=weighted("log_bytes_per_transaction"),
            log_entries=sum(extra.log_entries for extra in self.extras),
            transactions=transactions,
            append_ms_avg=weighted("append_ms_avg"),
            entry_bytes_avg=weighted("entry_bytes_avg"),
        )


def scrape(port: int) -> dict[str, float]:
    """The leader's unlabelled Prometheus samples (name -> value)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            found[name] = float(value)
    return found


def mean_of(samples: dict[str, float], histogram: str, scale: float = 1.0) -> float | None:
    count = samples.get(f"{histogram}_count")
    return scale * samples[f"{histogram}_sum"] / count if count else None


def wait_until_leader(process, address: str, log_path: str, e2e):
    """Until health says tally.v1.Leader SERVING: the node took the lease
    and fenced the log."""
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    request = health_pb2.HealthCheckRequest(service=LEADER_HEALTH_NAME)
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise e2e.BenchFailure(f"leader exited with code {process.returncode}\n{e2e.log_tail(log_path)}")
            try:
                if stub.Check(request, timeout=1.0).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise e2e.BenchFailure(f"the node did not become the leader within {LEADER_TIMEOUT_S:.0f} s\n"
                           f"{e2e.log_tail(log_path)}")


def log_position_of(address: str) -> int:
    from tally.v1 import replication_pb2, replication_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = replication_pb2_grpc.ReplicationServiceStub(channel)
        return stub.GetStatus(replication_pb2.GetReplicationStatusRequest(), timeout=5).log_position


def wait_until_caught_up(follower_addresses: list[str], leader_address: str):
    """Followers' CPU counts what they applied of this run: wait for them
    to reach the leader's position."""
    if not follower_addresses:
        return
    target = log_position_of(leader_address)
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(log_position_of(address) >= target for address in follower_addresses):
            return
        time.sleep(0.1)
