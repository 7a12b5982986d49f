"""A replicated Tally on one machine: NATS cluster, nodes, a client that follows the leader.

Owns: starting a 3-node NATS JetStream cluster and N Tally nodes
(`python -m server --replicate ... --node-id nK`, each on its own data
directory and a port it keeps across restarts), killing (SIGKILL), pausing
(SIGSTOP), resuming and restarting nodes, finding the leader (ReplicationService
.GetStatus), and LeaderClient: an asyncio client that sends each request to
the leader and, when refused (NOT_LEADER names the leader in x-tally-leader)
or when the node is gone (UNAVAILABLE, a deadline), finds the leader and
sends the same request again, as a gateway would. Requests are idempotent on
(terminal, serial), so a retry never moves money twice.
Used by: bench/failover.py, tests/test_replication_failures.py.
May call: the nodes through gRPC; core/replication/local_cluster.py.
"""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time

import grpc

from bench.e2e import BenchFailure, free_port, log_tail, wait_until_serving
from core.replication.applier import content_digest
from core.replication.local_cluster import LocalCluster
from core.store import open_store
from tally.v1 import replication_pb2, replication_pb2_grpc

LEADER_METADATA_KEY = "x-tally-leader"
STATUS_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 30.0
# A client looks for the leader this often while none answers.
LEADER_POLL_INTERVAL_S = 0.05


class TallyNode:
    """One `python -m server --replicate` process, in its own process group."""

    def __init__(self, name: str, data_dir: str, log_path: str, nats_url: str, extra_args: list[str]):
        self.name = name
        self.data_dir = data_dir
        self.log_path = log_path
        self.nats_url = nats_url
        self.extra_args = extra_args
        self.address = f"127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "TallyNode":
        command = [sys.executable, "-m", "server", "--data", self.data_dir, "--listen", self.address,
                   "--replicate", self.nats_url, "--node-id", self.name, *self.extra_args]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            wait_until_serving(self.process, self.address, self.log_path)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL: the host is gone."""
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def pause(self):
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> int:
        if not self.running:
            return self.process.returncode if self.process is not None else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL

    def wipe(self):
        """Delete the node's data directory (its disk is gone too)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def status(self) -> replication_pb2.ReplicationStatus | None:
        try:
            with grpc.insecure_channel(self.address) as channel:
                stub = replication_pb2_grpc.ReplicationServiceStub(channel)
                return stub.GetStatus(replication_pb2.GetReplicationStatusRequest(), timeout=STATUS_TIMEOUT_S)
        except grpc.RpcError:
            return None


class ReplicaSet:
    """NATS servers and Tally nodes under one work directory."""

    def __init__(self, work_dir: str, nodes: int = 3, node_args: list[str] | None = None):
        self.work_dir = work_dir
        self.nats = LocalCluster(os.path.join(work_dir, "nats"))
        self.nodes = [
            TallyNode(f"n{index + 1}", os.path.join(work_dir, f"n{index + 1}"),
                      os.path.join(work_dir, f"n{index + 1}.log"), self.nats.url, list(node_args or []))
            for index in range(nodes)
        ]

    def start(self) -> "ReplicaSet":
        """NATS, then the first node until it leads, then the others; if any
        fails to start, everything started is killed before raising."""
        try:
            self.nats.start()
            self.nodes[0].start()
            self.wait_leader()
            for node in self.nodes[1:]:
                node.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        for node in self.nodes:
            if node.running:
                node.resume()
                node.kill()
        for server in self.nats.servers:
            if server.running:
                server.resume()
        self.nats.kill()

    def by_address(self, address: str) -> TallyNode | None:
        return next((node for node in self.nodes if node.address == address), None)

    def leader(self) -> TallyNode | None:
        for node in self.nodes:
            if not node.running:
                continue
            status = node.status()
            if status is not None and status.role == replication_pb2.REPLICA_ROLE_LEADER:
                return node
        return None

    def wait_leader(self, timeout_s: float = 60.0, other_than: TallyNode | None = None) -> TallyNode:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not other_than:
                return leader
            time.sleep(LEADER_POLL_INTERVAL_S)
        tails = "\n".join(f"--- {node.name}\n{log_tail(node.log_path)}" for node in self.nodes)
        raise BenchFailure(f"no leader within {timeout_s:g} s\n{tails}")

    def wait_caught_up(self, timeout_s: float = 60.0):
        """Until every running node is at the leader's log position."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            statuses = [node.status() for node in self.nodes if node.running]
            if leader is not None and None not in statuses:
                target = leader.status()
                if target is not None and all(status.log_position >= target.log_position for status in statuses):
                    return
            time.sleep(0.1)
        raise BenchFailure(f"the nodes did not catch up within {timeout_s:g} s")


    def stop_and_check(self) -> tuple[list[str], list[tuple[int, str]]]:
        """Catch up, stop every node (followers first: a leader stopping
        hands its lease to a follower, who would add a LEADER entry), then
        `python -m core.audit` on each directory and each one's (position,
        content digest). Returns (audit failures, digests in node order)."""
        self.wait_caught_up()
        leader = self.leader()
        failures = []
        for node in sorted(self.nodes, key=lambda node: node is leader):
            code = node.stop()
            if code != 0:
                failures.append(f"{node.name} exited with {code} on SIGTERM")
        found = []
        for node in self.nodes:
            audit = subprocess.run([sys.executable, "-m", "core.audit", node.data_dir], capture_output=True, text=True)
            if audit.returncode != 0:
                failures.append(f"audit of {node.name}: {(audit.stdout + audit.stderr)[-500:]}")
            store = open_store(node.data_dir, readonly=True)
            try:
                found.append(content_digest(store))
            finally:
                store.close()
        return failures, found


def leader_of(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == LEADER_METADATA_KEY:
            return value
    return ""


class LeaderClient:
    """Sends requests to the leader of a ReplicaSet, following it (see the
    module docstring). One channel per node address, kept open."""

    def __init__(self, addresses: list[str], call_timeout_s: float = 2.0):
        self.addresses = list(addresses)
        self.call_timeout_s = call_timeout_s
        self.leader = ""
        self._channels = {address: grpc.aio.insecure_channel(address) for address in self.addresses}
        self._finding: asyncio.Task | None = None

    async def close(self):
        await asyncio.gather(*(channel.close() for channel in self._channels.values()))

    def channel(self, address: str):
        return self._channels[address]

    async def call(self, make_stub_call, request, deadline_s: float):
        """make_stub_call(channel) -> the stub's method; returns (answer,
        address that answered). Retries until time.monotonic() passes
        deadline_s, then raises the last error."""
        last_error = None
        while time.monotonic() < deadline_s:
            address = self.leader or await self.find_leader(deadline_s)
            if not address:
                continue
            try:
                answer = await make_stub_call(self._channels[address])(request, timeout=self.call_timeout_s)
                return answer, address
            except grpc.aio.AioRpcError as error:
                last_error = error
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION and leader_of(error) in self._channels:
                    self.leader = leader_of(error)
                    continue
                if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    if self.leader == address:
                        self.leader = ""
                    await asyncio.sleep(LEADER_POLL_INTERVAL_S)
                    continue
                raise
        raise last_error if last_error is not None else TimeoutError("no leader answered in time")

    async def find_leader(self, deadline_s: float) -> str:
        """Ask every node who leads; one search at a time for all callers."""
        if self._finding is None or self._finding.done():
            self._finding = asyncio.ensure_future(self._find())
        try:
            found = await asyncio.wait_for(asyncio.shield(self._finding), max(0.01, deadline_s - time.monotonic()))
        except asyncio.TimeoutError:
            return ""
        if not found:
            await asyncio.sleep(LEADER_POLL_INTERVAL_S)
        return found

    async def _find(self) -> str:
        async def ask(address):
            try:
                stub = replication_pb2_grpc.ReplicationServiceStub(self._channels[address])
                status = await stub.GetStatus(replication_pb2.GetReplicationStatusRequest(), timeout=0.5)
            except grpc.aio.AioRpcError:
                return ""
            if status.role == replication_pb2.REPLICA_ROLE_LEADER:
                return address
            return ""

        found = [address for address in await asyncio.gather(*(ask(address) for address in self.addresses)) if address]
        self.leader = found[0] if len(found) == 1 else ""
        return self.leader
