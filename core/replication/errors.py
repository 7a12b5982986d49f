"""Why a replicated node refuses: one core.errors kind each.

Owns: the errors of replication, so that the group commit can tell a
refusal of the log (fail the whole batch, never retry its operations one by
one) from a kernel failure.
Used by: core/replication/* (raise them), core/commit.py (fails a batch
whole on any ReplicationError), the server (maps them like every TallyError:
NotLeader names the leader in ErrorInfo metadata and trailing metadata).
"""

from core.errors import FailedPrecondition, ResourceExhausted, Unavailable


class ReplicationError:
    """Mixed into each error below (first, for `within`): the log or this
    node's role refused, not the request, so no field is at fault."""

    def within(self, prefix: str):
        return self


class NotLeader(ReplicationError, FailedPrecondition):
    """This node does not take writes now: send them to the leader.
    metadata["leader"] is its gRPC address ("" while none is known)."""

    def __init__(self, leader_address: str, node_id: str = "", detail: str = ""):
        where = f"the leader is {leader_address}" if leader_address else "no leader is known yet; retry shortly"
        why = f" ({detail})" if detail else ""
        super().__init__(f"this node is a follower and takes no writes{why}: {where}", reason="NOT_LEADER")
        self.metadata = {"leader": leader_address, "leader_node": node_id}


class LogFenced(ReplicationError, FailedPrecondition):
    """The log moved on without this writer: another node appended."""

    def __init__(self, detail: str):
        super().__init__(f"not the leader any more: {detail}", reason="NOT_LEADER")


class LogUnavailable(ReplicationError, Unavailable):
    """No quorum, no server, or no answer in time: an append in this state
    may or may not have been stored (a retry with the same Nats-Msg-Id
    finds out)."""

    def __init__(self, detail: str):
        super().__init__(f"the replicated log is unavailable ({detail}); retry with the same serial",
                         reason="LOG_UNAVAILABLE")
        self.detail = detail


class LogTrimmed(ReplicationError, FailedPrecondition):
    """The entries a node needs next were trimmed from the stream."""

    def __init__(self, wanted: int, first: int):
        super().__init__(f"the log starts at {first} but this node needs {wanted}: restore it from a backup taken "
                         f"at or after position {first - 1} (python -m core.backup restore)", reason="LOG_TRIMMED")
        self.wanted = wanted
        self.first = first


class EntryTooLarge(ReplicationError, ResourceExhausted):
    """One write transaction changed more than a NATS message may carry."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"this change is {size:,} bytes in the log, above the NATS servers' max_payload of {limit:,}: "
                         "nothing was stored; split it, or raise max_payload", reason="LOG_ENTRY_TOO_LARGE")


class ReplicatedStore(ReplicationError, FailedPrecondition):
    """A tool tried to write a replicated node's directory behind the log."""

    def __init__(self, path: str, stream: str):
        super().__init__(f"{path} is a node of the replicated log {stream}: writes go through the leader's gRPC "
                         "API, not into a node's files (a standalone copy: python -m core.backup restore --standalone)",
                         reason="REPLICATED_STORE")
