"""A replicated node's face to clients: its status, its reads' freshness.

Owns: ReplicationService.GetStatus (proto/tally/v1/replication.proto), the
ReplicaFreshness stamped on every read answer that has the field (Query,
GetCard, GetPoints, ...: server/rpc.py calls `stamp` on each unary answer),
the health service name "tally.v1.Leader" (SERVING on the leader only, so a
load balancer's health checks find where writes go), and starting the node
(`start_replica`: connect to the log before the store is used, refuse a
replicated directory without --replicate).
Used by: server/app.py.
"""

import logging

from core.replication.errors import LogUnavailable
from core.replication.node import Replica, Role
from core.store import Store, replicated_stream
from tally.v1 import common_pb2, replication_pb2, replication_pb2_grpc

log = logging.getLogger("tally.replication")

LEADER_HEALTH_NAME = "tally.v1.Leader"
SERVICE_NAME = replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"].full_name
ROLES = {
    Role.LEADER.value: replication_pb2.REPLICA_ROLE_LEADER,
    Role.FOLLOWER.value: replication_pb2.REPLICA_ROLE_FOLLOWER,
}


def start_replica(settings, store: Store, on_append=None) -> Replica | None:
    """The node of --replicate, connected to its log (the store is then
    marked as a node of it); None without --replicate. A directory that is a
    node of a log does not start without it: a single node writing there
    would leave the log behind."""
    if settings.replication is None:
        stream = replicated_stream(store)
        if stream is not None:
            raise SystemExit(f"{settings.data_dir} is a node of the replicated log {stream}: start it with "
                             "--replicate, or restore a standalone copy (python -m core.backup restore --standalone)")
        return None
    replica = Replica(settings.replication, store, on_append=on_append)
    try:
        replica.connect()
    except LogUnavailable as error:
        raise SystemExit(f"cannot start node {settings.replication.node_id}: {error.detail}") from None
    log.info("node %s of the log %s on %s, at position %d", settings.replication.node_id, settings.replication.stream,
             settings.replication.urls, replica.position)
    return replica


class ReplicationService(replication_pb2_grpc.ReplicationServiceServicer):
    def __init__(self, replica: Replica | None):
        self.replica = replica

    async def GetStatus(self, request, context):
        if self.replica is None:
            return replication_pb2.ReplicationStatus(role=replication_pb2.REPLICA_ROLE_STANDALONE)
        status = self.replica.status()
        return replication_pb2.ReplicationStatus(
            node_id=status.node_id,
            role=ROLES[status.role],
            log_position=status.position,
            lag_entries=status.lag_entries,
            lag_ms=status.lag_ms,
            leader_node_id=status.leader_node,
            leader_address=status.leader_address,
            leader_changes=status.leader_changes,
            behind_trimmed_log=status.trimmed,
        )


class FreshnessStamp:
    """Fills `replica` (a ReplicaFreshness) on answers that have the field."""

    def __init__(self, replica: Replica):
        self.replica = replica
        self._has_field: dict[type, bool] = {}

    def __call__(self, answer):
        has = self._has_field.get(type(answer))
        if has is None:
            has = self._has_field[type(answer)] = "replica" in answer.DESCRIPTOR.fields_by_name
        if not has:
            return
        replica = self.replica
        leader = replica.role is Role.LEADER
        answer.replica.CopyFrom(common_pb2.ReplicaFreshness(
            log_position=replica.position,
            lag_entries=0 if leader else replica.pending,
            lag_ms=replica.lag_ms(),
            leader=leader,
            node_id=replica.settings.node_id,
        ))
