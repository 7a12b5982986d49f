"""Group commit: many requests, one write transaction, one fsync.

Owns: the bounded queue between the gRPC handlers (asyncio) and the single
writer thread, batching, and answering every waiter after its commit is on
disk. It is the server's one write path: kernel operations (`submit`,
`submit_chain`) and every other durable change (`write`: a function
`change(txn)` run in a write transaction of its own, for the back office:
promotions, risk, loyalty rules, settlement, administration) go through the
same thread in the order they were queued, so no handler ever writes LMDB on
the event loop and a change is stored whole or not at all.
Used by: the server (every write goes through a GroupCommitter);
core/writes.py's DirectWriter is the same interface for command-line tools.

Replicated (`log`, a core.replication Replica): each batch's and each
change's transaction records what it changes, the changes are appended to
the replicated log and acknowledged by a quorum, and only then does the
transaction commit and anyone get an answer; a follower refuses every
write at once (NOT_LEADER, naming the leader), and a refusal of the log
fails the batch whole (core/replication/node.py).

Why a thread: a durable LMDB commit costs 0.5 to 2 ms of fsync, so one
request per commit caps near 2,000 requests/s. While the writer commits one
batch, the next one queues up; the batch size follows the load by itself,
up to BATCH_SIZE_MAX. py-lmdb write transactions belong to the thread that
opened them, so the writer does begin, kernel and commit in one thread.
"""

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import lmdb

from core import limits
from core.errors import Internal, ResourceExhausted, Unavailable
from core.ledger import Ledger, business_day, decode_results
from core.records import Op, Result, encode
from core.replication.errors import ReplicationError

log = logging.getLogger(__name__)

OP_SIZE = Op.LAYOUT.size
RESULT_SIZE = Result.LAYOUT.size
CHAIN_LENGTH_MAX = limits.COUNTER_TAKES_PER_SALE_MAX + 1


class QueueFull(ResourceExhausted):
    """The writer's queue holds QUEUE_LENGTH_MAX requests: answer
    RESOURCE_EXHAUSTED at once rather than wait without bound."""

    def __init__(self):
        super().__init__("server queue full; retry with the same serial", reason="QUEUE_FULL")


class ShuttingDown(Unavailable):
    """The committer stopped taking requests."""

    def __init__(self):
        super().__init__("server shutting down; retry with the same serial", reason="SHUTTING_DOWN")


class StoreFull(ResourceExhausted):
    """LMDB's map or the disk is full: nothing of the write was stored.
    Reads go on; writes need an operator (a larger --map-size-gib, or disk)."""

    def __init__(self, cause: str):
        super().__init__(f"the store is full ({cause}); nothing was written: an operator must raise --map-size-gib "
                         "or free disk space, then retry with the same serial (reads are still served)",
                         reason="STORE_FULL")


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


# Back-office changes that may share one commit with a batch of operations.
CHANGES_PER_BATCH_MAX = 64
# A replicated leader's batches in one write transaction, each its own log
# entry, the later ones appended while the earlier ones await the quorum.
# Measured (bench e2e --compare-replicated, stream, 1,500 in flight): 2 gave
# replicated_ratio 0.728, 3 gave 0.718 in the next run: no better, and each
# more batch delays the first one's answers by a kernel run.
PIPELINED_BATCHES_MAX = 2
# payments_flowing: operations taken within this long.
PAYMENTS_FLOWING_S = 1.0


class GroupCommitter:
    def __init__(
        self,
        ledger: Ledger,
        utc_offset_minutes: int = 0,
        queue_length_max: int = limits.QUEUE_LENGTH_MAX,
        batch_size_max: int = limits.BATCH_SIZE_MAX,
        batch_wait_ms: float = limits.BATCH_WAIT_MS_MAX,
        clock=clock_ms,
        on_batch=None,
        log=None,
    ):
        assert 0 < batch_size_max <= limits.BATCH_SIZE_MAX
        assert 0 < queue_length_max <= limits.QUEUE_LENGTH_MAX
        self.ledger = ledger
        self.utc_offset_minutes = utc_offset_minutes
        self.queue_length_max = queue_length_max
        self.batch_size_max = batch_size_max
        assert 0 <= batch_wait_ms <= limits.BATCH_WAIT_MS_MAX
        self.batch_wait_s = batch_wait_ms / 1000
        self.clock = clock
        # Called in the writer thread after each commit with (size, seconds);
        # the server's metrics hook in here.
        self.on_batch = on_batch
        # A core.replication Replica on a replicated node: every write is
        # appended to the log and acknowledged by a quorum before it commits,
        # and only the leader takes writes. None: the embedded single node.
        self.log = log
        # Why the last write failed for lack of room (None once a write
        # commits again): health and metrics report it.
        self.store_full: str | None = None
        # When the writer last took operations (monotonic seconds; written by
        # the writer thread alone): payments_flowing reads it.
        self._operations_taken_s = float("-inf")
        self._queue = collections.deque()
        # Operations (a change counts one) in the queue: what its bound bounds.
        self._queued_ops = 0
        self._ready = threading.Condition()
        self._stopping = False
        self._thread = None
        self._loop = None

    # ------------------------------------------------------------ life cycle

    def start(self, loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="tally-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0):
        """Take no more requests; commit and answer everything queued; return."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            assert not self._thread.is_alive(), "writer did not drain in time"

    def payments_flowing(self) -> bool:
        """Whether the writer took kernel operations within the last
        PAYMENTS_FLOWING_S: the password hashes yield to them then
        (server/admin_service.py HashGate)."""
        return time.monotonic() - self._operations_taken_s < PAYMENTS_FLOWING_S

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def takes_writes(self) -> bool:
        """False on a replicated node that is not the leader (its writes
        would be refused): background jobs skip their rounds there."""
        if self.log is None:
            return True
        try:
            self.log.check_writable()
        except ReplicationError:
            return False
        return True

    # ------------------------------------------------------------ submit

    def submit(self, op: Op, bypass_limit: bool = False) -> asyncio.Future:
        """Queue one operation; the future resolves to its Result once the
        batch holding it is committed. Raises QueueFull or ShuttingDown at
        once, without waiting.

        bypass_limit is for the second half of a request already admitted (a
        payment's CAPTURE or ABORT after its channel answered): refusing it
        would leave a hold open. Their number is bounded by the requests
        admitted before them.
        """
        return self.submit_encoded(encode(op), bypass_limit)

    def submit_encoded(self, op: bytes, bypass_limit: bool = False) -> asyncio.Future:
        assert len(op) == OP_SIZE
        return self._enqueue(_Entry(op, self._loop.create_future(), 1, False, None), bypass_limit)

    def submit_chain(self, ops: list[Op]) -> asyncio.Future:
        """Queue a linked chain (core/counters.py) to be applied in one batch;
        the future resolves to the list of its Results, in order."""
        assert 0 < len(ops) <= CHAIN_LENGTH_MAX
        assert all(op.link for op in ops[:-1]) and not ops[-1].link
        return self._enqueue(_Entry(b"".join(encode(op) for op in ops), self._loop.create_future(), len(ops), True, None), False)

    def submit_group(self, ops: bytes) -> asyncio.Future:
        """Queue encoded operations, each applied on its own (no chain), in
        one batch; the future resolves to their Results as the kernel wrote
        them (bytes, RESULT_SIZE each, in order): the stream's plain Pays
        (server/payline.py) answer from those bytes without decoding them.
        Each operation counts against the queue's bound."""
        count = len(ops) // OP_SIZE
        assert 0 < count <= self.batch_size_max and len(ops) == count * OP_SIZE
        return self._enqueue(_Entry(ops, self._loop.create_future(), count, False, None, True), False)

    def write(self, change: Callable[[Any], Any]) -> asyncio.Future:
        """Queue a change: `change(txn)` runs in the writer thread inside a
        write transaction of its own, committed durably; the future resolves
        to what it returned, or raises what it raised (then nothing of it is
        stored). Raises QueueFull or ShuttingDown at once."""
        return self._enqueue(_Entry(b"", self._loop.create_future(), 0, False, change), False)

    def write_blocking(self, change: Callable[[Any], Any]):
        """`write` for code running in a worker thread (never the event
        loop's, never the writer's own): waits for the commit and returns
        change's value, or raises its exception."""
        assert threading.current_thread() is not self._thread, "the writer cannot wait for itself"
        assert not _on_loop(self._loop), "write_blocking on the event loop: use `await write(change)`"
        future = concurrent.futures.Future()
        self._enqueue(_Entry(b"", future, 0, False, change), False)
        return future.result()

    def _enqueue(self, entry: "_Entry", bypass_limit: bool):
        if self.log is not None:
            self.log.check_writable()  # a follower refuses at once, naming the leader
        with self._ready:
            if self._stopping and not bypass_limit:
                raise ShuttingDown()
            if self._queued_ops + max(1, entry.op_count) > self.queue_length_max and not bypass_limit:
                raise QueueFull()
            self._queue.append(entry)
            self._queued_ops += max(1, entry.op_count)
            if len(self._queue) == 1 or len(self._queue) == self.batch_size_max or entry.change is not None:
                self._ready.notify()
        return entry.future

    # ------------------------------------------------------------ writer

    def _take_batch(self):
        with self._ready:
            while not self._queue and not self._stopping:
                self._ready.wait()
            # (A directory that belongs to a replicated log refuses the kernel
            # without the log: Ledger.apply_encoded says so, operation by operation.)
            joining = self.log is None and self.ledger.replicated_stream is None
            if self._queue and self._queue[0].change is not None and not joining:
                self._queued_ops -= 1
                return [self._queue.popleft()]
            # Requests come in bursts (the event loop reads many at once); the
            # first of a burst wakes the writer. Lingering a moment lets the
            # rest join the same commit: measured at 1,500 clients, batches
            # went from a median of 2 to hundreds, and CPU per request fell,
            # since a commit costs about half a millisecond of CPU however
            # small it is.
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._queue) < self.batch_size_max and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            return self._pop_batch(joining)

    def _take_more(self) -> list:
        """The replicated leader's next batch while an append is
        outstanding: the operations queued now, without waiting for more
        (none if a change comes first: it goes alone)."""
        with self._ready:
            if not self._queue or self._queue[0].change is not None:
                return []
            return self._pop_batch(False)

    def _pop_batch(self, joining: bool) -> list:
        """Under self._ready: the next batch from the front of the queue."""
        # A chain is never split across two batches (it commits whole).
        # Changes join the batch (up to CHANGES_PER_BATCH_MAX) on a single
        # node: one commit, one fsync, for the operations and the
        # back-office writes waiting together (each change in a nested
        # transaction of its own). On a replicated node a change waits for
        # the batch queued before it and goes alone.
        batch, op_count, changes = [], 0, 0
        while self._queue:
            entry = self._queue[0]
            if entry.change is not None:
                if not joining or changes == CHANGES_PER_BATCH_MAX:
                    break
                changes += 1
            elif op_count + entry.op_count > self.batch_size_max:
                break
            else:
                op_count += entry.op_count
            batch.append(self._queue.popleft())
        self._queued_ops -= op_count + changes
        if op_count:
            self._operations_taken_s = time.monotonic()
        return batch

    def _run(self):
        while True:
            batch = self._take_batch()
            if not batch:
                return  # stopping and drained
            started = time.perf_counter()
            if len(batch) == 1 and batch[0].change is not None:
                outcomes = [self._apply_change(batch[0].change)]
            elif self.log is not None and batch[0].change is None:
                for part, outcomes in self._apply_pipelined(batch):
                    self._report_batch(part, started)
                    self._deliver(part, outcomes)
                continue
            else:
                together = any(entry.change is not None for entry in batch)
                outcomes = self._apply_together(batch) if together else self._apply(batch)
                self._report_batch(batch, started)
            self._deliver(batch, outcomes)

    def _report_batch(self, batch, started: float):
        if self.on_batch is not None:
            self.on_batch(sum(entry.op_count for entry in batch), time.perf_counter() - started)

    def _apply_pipelined(self, first: list) -> list[tuple[list, list]]:
        """The replicated leader's batches: `first`, and while its append
        awaits the quorum, up to PIPELINED_BATCHES_MAX - 1 more taken from
        the queue, all in one write transaction (Ledger.apply_pipelined).
        The writer would otherwise sit idle for each quorum round trip
        (3-6 ms a batch, measured under load). Returns (batch, outcomes)
        for each batch taken."""
        batches = [first]

        def operations():
            yield b"".join(entry.data for entry in first)
            while len(batches) < PIPELINED_BATCHES_MAX:
                batch = self._take_more()
                if not batch:
                    return
                batches.append(batch)
                yield b"".join(entry.data for entry in batch)

        now_ms = self.clock()
        day = business_day(now_ms, self.utc_offset_minutes)
        try:
            self.log.prepare()
            results = self.ledger.apply_pipelined(operations(), now_ms, day, self.log)
        except Exception as error:
            if len(batches) == 1 or isinstance(error, ReplicationError):
                return [(batch, self._failed(batch, error, now_ms, day)) for batch in batches]
            # Not the log (the kernel or the store): each batch again on its
            # own, after the log is read back (an entry that landed is then
            # applied, and its operations get their stored answers).
            log.exception("a pipelined transaction of %d batches failed; each batch again on its own", len(batches))
            return [(batch, self._apply(batch)) for batch in batches]
        self.store_full = None
        return [(batch, _outcomes(batch, part)) for batch, part in zip(batches, results, strict=True)]

    def _deliver(self, batch, outcomes):
        waiting = []
        for entry, outcome in zip(batch, outcomes, strict=True):
            if isinstance(entry.future, concurrent.futures.Future):
                _settle(entry.future, outcome)
            else:
                waiting.append((entry.future, outcome))
        if waiting:
            self._loop.call_soon_threadsafe(_resolve, waiting)

    def _apply_change(self, change):
        """What change(txn) returned, or the exception that undid it."""
        try:
            if self.log is not None:
                value = self._apply_change_logged(change)
            else:
                with self.ledger.store.env.begin(write=True) as txn:
                    value = change(txn)
        except Exception as error:
            return _Raised(self._store_error(error) or error)
        self.store_full = None
        return value

    def _apply_together(self, batch):
        """Operations and changes in one write transaction: the kernel's
        batch first, then each change in a nested transaction (one that
        raises is undone alone and answered with its error). Their order is
        free: all were waiting at once, none answered. If the transaction
        fails as a whole, each part is applied again on its own."""
        ops = [entry for entry in batch if entry.change is None]
        now_ms = self.clock()
        day = business_day(now_ms, self.utc_offset_minutes)
        try:
            with self.ledger.store.env.begin(write=True) as txn:
                results = (self.ledger.kernel.apply_batch(txn, self.ledger.store, b"".join(entry.data for entry in ops), now_ms, day)
                           if ops else b"")
                env = self.ledger.store.env
                values = {id(entry): _nested(env, txn, entry.change) for entry in batch if entry.change is not None}
            # No batch_committed: a change may have written records the kernel keeps.
        except Exception as error:
            log.warning("a batch with back-office changes failed whole (%s); each part again on its own", error)
            outcomes = iter(self._apply(ops) if ops else [])
            return [self._apply_change(entry.change) if entry.change is not None else next(outcomes) for entry in batch]
        self.store_full = None
        answers = iter(_outcomes(ops, results))
        return [self._change_outcome(values[id(entry)]) if entry.change is not None else next(answers) for entry in batch]

    def _change_outcome(self, value):
        if isinstance(value, _Raised):
            return _Raised(self._store_error(value.error) or value.error)
        return value

    def _apply_change_logged(self, change):
        """change(txn) on a recording transaction; its changes are appended
        to the log before the commit."""
        self.log.prepare()
        with self.ledger.store.env.begin(write=True) as txn:
            recorder = self.ledger.recording(txn)
            value = change(recorder)
            self.log.commit_changes(txn, recorder)
        return value

    def _store_error(self, error: Exception) -> StoreFull | None:
        """StoreFull for LMDB's full map or a full disk; None otherwise."""
        cause = _full_store_cause(error)
        if cause is None:
            return None
        self.store_full = cause
        log.error("write refused: %s", cause)
        return StoreFull(cause)

    def _apply(self, batch):
        """Results (bytes) for the whole batch; if the kernel raises, each
        operation is retried in a transaction of its own so that one bad
        operation fails alone and the others are still answered."""
        now_ms = self.clock()
        day = business_day(now_ms, self.utc_offset_minutes)
        try:
            if self.log is not None:
                self.log.prepare()
            results = self.ledger.apply_encoded(b"".join(entry.data for entry in batch), now_ms, day, self.log)
            self.store_full = None
            return _outcomes(batch, results)
        except Exception as error:
            return self._failed(batch, error, now_ms, day)

    def _failed(self, batch, error: Exception, now_ms: int, day: int) -> list:
        """The outcomes of a batch whose transaction raised `error`."""
        if isinstance(error, ReplicationError):
            # The log refused (not the leader, no quorum): the batch
            # fails whole, and nothing of it was committed here.
            return [_Raised(error)] * len(batch)
        full = self._store_error(error)
        if full is not None:
            return [_Raised(full)] * len(batch)
        if len(batch) == 1:
            log.exception("kernel failed on an operation; nothing of it was stored", exc_info=error)
            return [_Raised(KernelFailure())]
        log.exception("kernel failed on a batch of %d; retrying one by one", len(batch), exc_info=error)
        outcomes = []
        for entry in batch:
            try:
                outcomes.extend(_outcomes([entry], self.ledger.apply_encoded(entry.data, now_ms, day, self.log)))
            except Exception as error:
                full = self._store_error(error)
                if full is None:
                    log.exception("kernel failed on an operation; nothing of it was stored")
                outcomes.append(_Raised(full or KernelFailure()))
        return outcomes


class _Entry(NamedTuple):
    """One waiter: an operation, a linked chain of them, a group of them
    (answered with their Results' bytes), or a change."""

    data: bytes
    future: "asyncio.Future | concurrent.futures.Future"
    op_count: int
    chained: bool
    change: Callable[[Any], Any] | None
    grouped: bool = False


def _outcomes(batch, results: bytes) -> list:
    """Each waiter's outcome: its Result, a chain's list of Results, or a
    group's Results as bytes."""
    outcomes, first = [], 0
    for entry in batch:
        part = results[first * RESULT_SIZE : (first + entry.op_count) * RESULT_SIZE]
        if entry.grouped:
            outcomes.append(part)
        elif entry.chained:
            outcomes.append(decode_results(part))
        else:
            outcomes.append(Result(*Result.LAYOUT.unpack(part)))
        first += entry.op_count
    assert first * RESULT_SIZE == len(results)
    return outcomes


def _nested(env, txn, change):
    """change(child) in a transaction nested in txn: its value, or _Raised
    with what it raised (and nothing of it kept)."""
    try:
        with env.begin(write=True, parent=txn) as child:
            return change(child)
    except Exception as error:
        return _Raised(error)


class _Raised(NamedTuple):
    """Stands for an outcome that is an exception (the waiter raises it)."""

    error: Exception


class KernelFailure(Internal):
    def __init__(self):
        super().__init__("the ledger could not apply this request; nothing of it was stored (the error is logged)",
                         reason="KERNEL_FAILURE")


def _full_store_cause(error: Exception) -> str | None:
    if isinstance(error, lmdb.MapFullError):
        return "the LMDB map is full"
    if isinstance(error, (lmdb.Error, OSError)) and ("No space left" in str(error) or "ENOSPC" in str(error)):
        return "the disk is full"
    return None


def _on_loop(loop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _settle(future, outcome):
    if future.done():  # the caller went away (cancelled)
        return
    if isinstance(outcome, _Raised):
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome)


def _resolve(waiting):
    for future, outcome in waiting:
        _settle(future, outcome)
