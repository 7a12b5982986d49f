"""One replicated node: follower or leader, and the moves between them.

Owns: the node's role and its place in the log (`position`, kept in LMDB
with the changes it belongs to), the replica thread (a follower reads the
log in order and applies it; a caught-up follower takes a free lease, reads
to the end of the log, appends a LEADER entry with the expected sequence,
then takes writes; a leader renews its lease and steps down when it cannot),
and the leader's side of the write path: `commit_changes`, called by the
group commit's writer inside each write transaction, appends the
transaction's changes and waits for the quorum before the transaction
commits and anyone is answered.
Used by: core/commit.py (GroupCommitter(log=replica)), core/ledger.py (the
kernel's batches in the leader's transactions), server/app.py (wiring,
promotion hooks, read answers' lag), server/metrics.py.

Order of a write on the leader: kernel or change in an open LMDB write
transaction (recorded) -> append with Nats-Expected-Last-Sequence = position
-> quorum ack -> lease still held? -> position put in the same transaction
-> commit (fsync) -> answers. A crash after the append and before the commit
leaves the entry in the log only: the node replays it on restart. An append
whose outcome is unknown (no answer) aborts the transaction and makes the
leader read the log before its next write, so it never writes past an entry
it has not applied.

Pipelined (the group commit's kernel batches, `append_started` and
`appended`): while batch N's append awaits the quorum, the writer runs
batch N+1 in the same open transaction and appends it with the expected
sequence N's + 1 and N's msg id as Nats-Expected-Last-Msg-Id (so it can
only land right after N); the transaction commits once both are
acknowledged, and only then are N's and N+1's clients answered.
"""

import concurrent.futures
import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable

import msgspec

from core.replication import applier
from core.replication.errors import EntryTooLarge, LogFenced, LogTrimmed, LogUnavailable, NotLeader
from core.replication.lease import BUCKET_DEFAULT, TTL_S_DEFAULT, Lease
from core.replication.log import (
    MAX_PAYLOAD_BYTES, REPLICAS_DEFAULT, STREAM_DEFAULT, SUBJECT_DEFAULT, LogNames, ReplicationLog,
)
from core.store import Store, log_position

log = logging.getLogger(__name__)

APPEND_TIMEOUT_S_DEFAULT = 5.0
POLL_INTERVAL_S_DEFAULT = 0.01
# An idle follower waits longer between reads, doubling up to this: its CPU
# while idle falls from 5% to 1% of a core (measured), its lag after a quiet
# spell grows by at most this much.
POLL_INTERVAL_S_IDLE_MAX = 0.1
# A follower reads who leads at most this often while idle.
HOLDER_CHECK_INTERVAL_S = 0.25
# Backoff while the log does not answer.
RETRY_INTERVAL_S = 0.25
# A node behind the trimmed log says so this often (it needs a restore).
TRIMMED_REPORT_INTERVAL_S = 30.0


class Role(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


class ReplicaSettings(msgspec.Struct, frozen=True):
    """How a node reaches the log and the lease (server flags --replicate ...)."""

    urls: str
    node_id: str
    stream: str = STREAM_DEFAULT
    subject: str = SUBJECT_DEFAULT
    lease_bucket: str = BUCKET_DEFAULT
    lease_ttl_s: float = TTL_S_DEFAULT
    append_timeout_s: float = APPEND_TIMEOUT_S_DEFAULT
    poll_interval_s: float = POLL_INTERVAL_S_DEFAULT
    replicas: int = REPLICAS_DEFAULT


class Status(msgspec.Struct, frozen=True):
    """What health, metrics and read answers say about this node."""

    node_id: str
    role: str
    position: int
    lag_entries: int
    lag_ms: int
    leader_node: str
    leader_address: str
    leader_changes: int
    trimmed: bool


class Replica:
    """A node of the replicated log (see the module docstring)."""

    def __init__(self, settings: ReplicaSettings, store: Store, on_append: Callable[[float, int], None] | None = None):
        self.settings = settings
        self.store = store
        self.log = ReplicationLog(settings.urls, LogNames(settings.stream, settings.subject), settings.replicas,
                                  name=f"tally-{settings.node_id}")
        self.lease: Lease | None = None
        self.address = ""
        self.role = Role.FOLLOWER
        self.position, self.position_time_ms = log_position(store)
        self.leader_node = ""
        self.leader_address = ""
        self.leader_changes = 0
        self.pending = 0
        self.caught_up_at = 0.0
        self.trimmed = False
        # Why this node cannot follow the log ("" while it can).
        self.refused = ""
        self.on_promoted: Callable[[], None] | None = None
        self.on_demoted: Callable[[], None] | None = None
        self.on_append = on_append
        self._needs_resync = False
        self._apply_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._holder_checked_at = 0.0
        self._poll_s = settings.poll_interval_s

    # ------------------------------------------------------------ life cycle

    def connect(self, timeout_s: float = 30.0):
        """Reach the log (creating the stream if needed) and mark the store
        as a node of it."""
        self.log.connect(timeout_s)
        if self.log.max_payload < MAX_PAYLOAD_BYTES:
            log.warning("the NATS servers take messages of at most %d bytes (max_payload); large batches need %d: "
                        "set max_payload in their configuration", self.log.max_payload, MAX_PAYLOAD_BYTES)
        applier.mark_replicated(self.store, self.settings.stream)

    def start(self, address: str):
        """Follow the log, and stand for leader once caught up; `address`
        is this node's gRPC address, given to clients that write here."""
        self.address = address
        self.lease = Lease(self.log, self.settings.node_id, address, self.settings.lease_bucket,
                           self.settings.lease_ttl_s)
        self._thread = threading.Thread(target=self._run, name="tally-replica", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop following; a leader releases its lease (a follower then
        takes over without waiting for it to lapse)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.lease is not None and self.role is Role.LEADER:
            self.role = Role.FOLLOWER
            self.lease.release()
        self.log.close()

    # ------------------------------------------------------------ status

    def status(self) -> Status:
        leader = self.role is Role.LEADER
        return Status(
            node_id=self.settings.node_id,
            role=self.role.value,
            position=self.position,
            lag_entries=0 if leader else self.pending,
            lag_ms=0 if leader else self.lag_ms(),
            leader_node=self.settings.node_id if leader else self.leader_node,
            leader_address=self.address if leader else self.leader_address,
            leader_changes=self.leader_changes,
            trimmed=self.trimmed,
        )

    def lag_ms(self) -> int:
        """How old the newest change this node may be missing can be: 0 on
        the leader; on a follower, the time since it last saw that it had
        applied the whole log."""
        if self.role is Role.LEADER:
            return 0
        if self.caught_up_at == 0.0:
            return int(max(0, time.time() * 1000 - self.position_time_ms)) if self.position_time_ms else 0
        return int((time.monotonic() - self.caught_up_at) * 1000)

    # ------------------------------------------------------------ leader side (writer thread)

    def check_writable(self):
        """Raise NotLeader unless this node may take writes now."""
        if self.role is not Role.LEADER or self.lease is None or not self.lease.held():
            raise NotLeader(self.leader_address, self.leader_node)

    def prepare(self):
        """Before a write transaction opens: if an earlier append's outcome
        is unknown, read the log to its end first (the entry may be there)."""
        self.check_writable()
        if self._needs_resync:
            self._catch_up_as_leader()

    def commit_changes(self, txn, recorder):
        """Inside the writer's open write transaction: log its changes, wait
        for the quorum, and put the new position into the transaction. Raises
        (the caller aborts the transaction, nobody is answered as done):
        NotLeader / LogFenced if this node may not write, LogUnavailable if
        the log did not answer within append_timeout_s."""
        data = recorder.payload()
        if not data:
            return
        self.check_writable()
        if len(data) > self.log.max_payload:
            raise EntryTooLarge(len(data), self.log.max_payload)
        started = time.perf_counter()
        position = self._append(data, applier.CHANGES)
        if self.on_append is not None:
            self.on_append(time.perf_counter() - started, len(data))
        self._appended_at(txn, position)

    def append_started(self, recorder, pipelined: list["PendingAppend"]) -> "PendingAppend":
        """Inside the writer's open write transaction: start appending its
        latest batch's changes (recorder) after the `pipelined` appends
        started in it before, without waiting for any quorum ack; the
        writer runs the next batch meanwhile, and `appended` waits for them
        all before the commit. The leader is the only writer, so each
        entry's position is known: position + 1 + len(pipelined)."""
        self.check_writable()
        previous = pipelined[-1].msg_id if pipelined else ""
        expected = self.position + len(pipelined)
        pending = PendingAppend(expected, uuid.uuid4().hex)

        def make_data() -> bytes:  # on the NATS thread
            pending.data = recorder.payload()
            return pending.data

        pending.future = self.log.append_started(make_data, expected, pending.msg_id, applier.CHANGES,
                                                 self.settings.node_id, previous)
        pending.future.add_done_callback(pending.answered)
        return pending

    def appended(self, txn, pipelined: list["PendingAppend"]):
        """Wait for the appends `append_started` began in txn, then check
        the lease and put the last one's position into txn: `commit_changes`
        for several entries. Raises as commit_changes does; then the caller
        aborts txn and calls `abandoned` (Ledger.apply_pipelined), so that
        whatever of it reached the log is read back before the next write."""
        if not pipelined:
            return
        position = self.position
        for index, pending in enumerate(pipelined):
            position = self._pending_position(pending, index, len(pipelined))
        self._appended_at(txn, position)

    def _appended_at(self, txn, position: int):
        """After the quorum acknowledged entries up to `position`: the lease
        must still be held (else the entries are stored and acknowledged, but
        nobody is answered from here: this node applies them as a follower),
        and the position goes into txn."""
        if not self.lease.held():
            self._needs_resync = True
            raise NotLeader(self.leader_address, self.leader_node, "the lease lapsed during the append")
        now_ms = time.time_ns() // 1_000_000
        applier.put_position(txn, self.store, position, now_ms)
        self.position, self.position_time_ms = position, now_ms

    def abandoned(self, pipelined: list["PendingAppend"]):
        """The transaction of these appends is aborted: some may have
        landed, so read the log before the next write."""
        if not pipelined:
            return
        self._needs_resync = True
        # Wait until none is still in flight: the read-back must see where
        # the last of them landed, not race it.
        concurrent.futures.wait([pending.future for pending in pipelined], self.settings.append_timeout_s + 1)

    def _pending_position(self, pending: "PendingAppend", index: int, count: int) -> int:
        """Where the pending append landed. The first of a transaction
        fenced: another node writes, step down. A lone append that got no
        answer: retried as `_append` does. Any other failure fails the
        transaction (resync tells a foreign entry from a lost answer)."""
        try:
            stored, data = pending.future.result(self.settings.append_timeout_s + 1)
        except LogFenced:
            if index == 0:
                self._step_down("another node appended to the log")
            raise
        except LogUnavailable:
            if count != 1 or not self.lease.held():
                raise
            data = pending.data
            stored = self._append(data, applier.CHANGES, pending.msg_id)
        except concurrent.futures.TimeoutError:
            pending.future.cancel()
            raise LogUnavailable("no answer to an append in time") from None
        if stored != pending.expected_last + 1:
            raise LogFenced(f"the append landed at {stored}, not {pending.expected_last + 1}")
        if self.on_append is not None:
            self.on_append((pending.answered_at or time.perf_counter()) - pending.started, len(data))
        return stored

    def _append(self, data: bytes, kind: str, msg_id: str = "") -> int:
        """Append at position + 1, retrying the same entry (same Nats-Msg-Id)
        while the log does not answer and the lease holds."""
        msg_id = msg_id or uuid.uuid4().hex
        deadline = time.monotonic() + self.settings.append_timeout_s
        while True:
            try:
                stored = self.log.append(data, self.position, msg_id, kind, self.settings.node_id)
            except LogFenced:
                self._needs_resync = True
                self._step_down("another node appended to the log")
                raise
            except LogUnavailable:
                if time.monotonic() >= deadline or not self.lease.held():
                    self._needs_resync = True
                    raise
                time.sleep(RETRY_INTERVAL_S)
                continue
            if stored != self.position + 1:
                self._needs_resync = True
                raise LogFenced(f"the append landed at {stored}, not {self.position + 1}")
            return stored

    def _catch_up_as_leader(self):
        """Apply whatever the log holds past this node's position. Only this
        node's own entries may be there (an append whose answer was lost);
        any other node's means it was deposed."""
        target = self.log.state().last
        while self.position < target:
            entries = self.log.read(self.position + 1)
            if not entries:
                raise LogUnavailable(f"the log says it ends at {target} but nothing past {self.position} was read")
            foreign = [entry for entry in entries if entry.node != self.settings.node_id]
            self._apply(entries)
            if foreign:
                self._step_down(f"node {foreign[0].node} wrote entry {foreign[0].sequence}")
                raise NotLeader(self.leader_address, self.leader_node)
        self._needs_resync = False

    # ------------------------------------------------------------ the replica thread

    def _run(self):
        while not self._stopping.is_set():
            try:
                if not self.lease.opened:
                    self.lease.open()
                elif self.role is Role.LEADER:
                    self._lead()
                else:
                    self._follow()
            except LogUnavailable as error:
                log.debug("log unavailable: %s", error)
                self._stopping.wait(RETRY_INTERVAL_S)
            except LogTrimmed as error:
                self._report_trimmed(error)
            except applier.BaseMismatch as error:
                self._report_refused(str(error))
            except Exception:
                log.exception("replica thread: unexpected error; retrying")
                self._stopping.wait(1.0)

    def _lead(self):
        """Renew the lease on time; step down if it is lost or lapses."""
        lease = self.lease
        wait_s = lease.renewed_at + lease.renew_interval_s - time.monotonic()
        if wait_s > 0:
            self._stopping.wait(min(wait_s, 0.05))
            if not lease.held():
                self._step_down("the lease lapsed (no renewal answered in time)")
            return
        try:
            if not lease.renew():
                self._step_down("another node holds the lease")
        except LogUnavailable:
            if not lease.held():
                self._step_down("the lease lapsed (the lease bucket did not answer)")
            else:
                self._stopping.wait(0.05)

    def _follow(self):
        entries = self.log.read(self.position + 1)
        self.trimmed = False
        self.refused = ""
        if entries:
            self._apply(entries)
            self.pending = entries[-1].pending
            if self.pending == 0:
                self.caught_up_at = time.monotonic()
            self._poll_s = self.settings.poll_interval_s
            return
        self.pending = 0
        self.caught_up_at = time.monotonic()
        if time.monotonic() - self._holder_checked_at >= HOLDER_CHECK_INTERVAL_S:
            self._holder_checked_at = time.monotonic()
            if self._read_holder() is None and self.lease.try_take():
                self._promote()
                return
        self._stopping.wait(self._poll_s)
        self._poll_s = min(self._poll_s * 2, max(POLL_INTERVAL_S_IDLE_MAX, self.settings.poll_interval_s))

    def _read_holder(self):
        holder = self.lease.holder()
        if holder is not None:
            self.leader_node, self.leader_address = holder.node, holder.address
        return holder

    def _apply(self, entries):
        with self._apply_lock:
            before = self.position
            self.position, self.position_time_ms, applied = applier.apply_entries(self.store, entries)
        for entry in applied:
            if entry.kind == applier.LEADER:
                self.leader_changes += 1
                mark = msgspec.json.decode(entry.data, type=applier.LeaderMark)
                if mark.node != self.settings.node_id:
                    self.leader_node, self.leader_address = mark.node, mark.address
        return self.position - before

    def _promote(self):
        """Holding a fresh lease: read the log to its end, fence it with a
        LEADER entry, then take writes."""
        term = self.lease.revision
        try:
            while True:
                target = self.log.state().last
                while self.position < target:
                    self._apply(self.log.read(self.position + 1))
                mark = msgspec.json.encode(applier.LeaderMark(self.settings.node_id, self.address, term,
                                                              self._base() if self.position == 0 else ""))
                try:
                    position = self.log.append(mark, self.position, uuid.uuid4().hex, applier.LEADER,
                                               self.settings.node_id)
                except LogFenced:
                    continue  # an append of the old leader landed first: read it too
                self._apply([_own_entry(position, applier.LEADER, self.settings.node_id, mark)])
                break
            if not self.lease.held():
                raise LogUnavailable("the lease lapsed while taking over")
        except (LogUnavailable, LogTrimmed) as error:
            log.warning("could not take over (%s); following again", error)
            self.lease.release()
            return
        self._needs_resync = False
        self.leader_node, self.leader_address = self.settings.node_id, self.address
        self.role = Role.LEADER
        log.info("leader from log position %d (term %d)", self.position, term)
        if self.on_promoted is not None:
            self.on_promoted()

    def _base(self) -> str:
        with self.store.env.begin() as txn:
            return applier.base_fingerprint(txn, self.store)

    def _step_down(self, why: str):
        if self.role is not Role.LEADER:
            return
        self.role = Role.FOLLOWER
        self.lease.lapse()
        self.leader_node, self.leader_address = "", ""
        self.caught_up_at = 0.0
        log.warning("no longer the leader: %s", why)
        if self.on_demoted is not None:
            self.on_demoted()

    def _report_trimmed(self, error: LogTrimmed):
        self.trimmed = True
        self._report_refused(str(error))

    def _report_refused(self, why: str):
        """This node cannot follow the log as it is (a restore is needed):
        say so now and then, serve what it has, take no lease."""
        log.error("cannot follow the log: %s", why)
        self.refused = why
        self._stopping.wait(TRIMMED_REPORT_INTERVAL_S)


class PendingAppend:
    """An append started and not yet waited for (Replica.append_started)."""

    __slots__ = ("expected_last", "msg_id", "started", "answered_at", "future", "data")

    def __init__(self, expected_last: int, msg_id: str):
        self.expected_last = expected_last
        self.msg_id = msg_id
        self.started = time.perf_counter()
        self.future: concurrent.futures.Future | None = None
        # When the quorum ack (or a failure) came: the writer may be busy
        # with the next batch then, and learn it later.
        self.answered_at = 0.0
        # The entry's bytes, once the NATS thread made them.
        self.data = b""

    def answered(self, future):
        self.answered_at = time.perf_counter()


def _own_entry(position: int, kind: str, node: str, data: bytes):
    from core.replication.log import Entry

    return Entry(sequence=position, time_ms=time.time_ns() // 1_000_000, kind=kind, node=node, data=data, pending=0)
