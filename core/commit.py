"""Group commit: many requests, one write transaction, one fsync.

Owns: the bounded queue between the gRPC handlers (asyncio) and the single
writer thread, batching, and answering every waiter after its commit is on
disk.
Used by: the server (every write goes through `GroupCommitter.submit`).

Why a thread: a durable LMDB commit costs 0.5 to 2 ms of fsync, so one
request per commit caps near 2,000 requests/s. While the writer commits one
batch, the next one queues up; the batch size follows the load by itself,
up to BATCH_SIZE_MAX. py-lmdb write transactions belong to the thread that
opened them, so the writer does begin, kernel and commit in one thread.
"""

import asyncio
import collections
import logging
import threading
import time
from typing import NamedTuple

from core import limits
from core.ledger import Ledger, business_day, decode_results
from core.records import Op, encode

log = logging.getLogger(__name__)

OP_SIZE = Op.LAYOUT.size
CHAIN_LENGTH_MAX = limits.COUNTER_TAKES_PER_SALE_MAX + 1


class QueueFull(Exception):
    """The writer's queue holds QUEUE_LENGTH_MAX requests: answer
    RESOURCE_EXHAUSTED at once rather than wait without bound."""


class ShuttingDown(Exception):
    """The committer stopped taking requests."""


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self._queue = collections.deque()
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

    @property
    def queue_length(self) -> int:
        return len(self._queue)

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
        return self._enqueue(op, 1, False, bypass_limit)

    def submit_chain(self, ops: list[Op]) -> asyncio.Future:
        """Queue a linked chain (core/counters.py) to be applied in one batch;
        the future resolves to the list of its Results, in order."""
        assert 0 < len(ops) <= CHAIN_LENGTH_MAX
        assert all(op.link for op in ops[:-1]) and not ops[-1].link
        return self._enqueue(b"".join(encode(op) for op in ops), len(ops), True, False)

    def _enqueue(self, data: bytes, op_count: int, chained: bool, bypass_limit: bool) -> asyncio.Future:
        future = self._loop.create_future()
        with self._ready:
            if self._stopping and not bypass_limit:
                raise ShuttingDown()
            if len(self._queue) >= self.queue_length_max and not bypass_limit:
                raise QueueFull()
            self._queue.append(_Entry(data, future, op_count, chained))
            if len(self._queue) == 1 or len(self._queue) == self.batch_size_max:
                self._ready.notify()
        return future

    # ------------------------------------------------------------ writer

    def _take_batch(self):
        with self._ready:
            while not self._queue and not self._stopping:
                self._ready.wait()
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
            # A chain is never split across two batches (it commits whole).
            batch, op_count = [], 0
            while self._queue and op_count + self._queue[0].op_count <= self.batch_size_max:
                entry = self._queue.popleft()
                batch.append(entry)
                op_count += entry.op_count
            return batch

    def _run(self):
        while True:
            batch = self._take_batch()
            if not batch:
                return  # stopping and drained
            started = time.perf_counter()
            outcomes = self._apply(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            self._loop.call_soon_threadsafe(_resolve, [entry.future for entry in batch], outcomes)

    def _apply(self, batch):
        """Results (bytes) for the whole batch; if the kernel raises, each
        operation is retried in a transaction of its own so that one bad
        operation fails alone and the others are still answered."""
        now_ms = self.clock()
        day = business_day(now_ms, self.utc_offset_minutes)
        try:
            results = decode_results(self.ledger.apply_encoded(b"".join(entry.data for entry in batch), now_ms, day))
            return _outcomes(batch, results)
        except Exception:
            if len(batch) == 1:
                log.exception("kernel failed on an operation; nothing of it was stored")
                return [_Failure()]
            log.exception("kernel failed on a batch of %d; retrying one by one", len(batch))
        outcomes = []
        for entry in batch:
            try:
                outcomes.extend(_outcomes([entry], decode_results(self.ledger.apply_encoded(entry.data, now_ms, day))))
            except Exception:
                log.exception("kernel failed on an operation; nothing of it was stored")
                outcomes.append(_Failure())
        return outcomes


class _Entry(NamedTuple):
    """One waiter: an operation, or a linked chain of them."""

    data: bytes
    future: asyncio.Future
    op_count: int
    chained: bool


def _outcomes(batch, results) -> list:
    """Each waiter's outcome: its Result, or a chain's list of Results."""
    outcomes, first = [], 0
    for entry in batch:
        if entry.chained:
            outcomes.append(results[first : first + entry.op_count])
        else:
            outcomes.append(results[first])
        first += entry.op_count
    assert first == len(results)
    return outcomes


class _Failure:
    """Stands for the result of an operation the kernel raised on."""


class KernelFailure(Exception):
    pass


def _resolve(futures, outcomes):
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():  # the caller went away (cancelled)
            continue
        if isinstance(outcome, _Failure):
            future.set_exception(KernelFailure("the ledger could not apply this request"))
        else:
            future.set_result(outcome)
