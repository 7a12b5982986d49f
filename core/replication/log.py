"""The replicated log: a JetStream stream of 3 replicas, one writer at a time.

Owns: the NATS connection (nats-py, asyncio) on a thread of its own, so that
the group commit's writer thread and the replica thread call it as plain
blocking functions; creating the stream (file storage, R3, direct gets
allowed); appending an entry with `Nats-Expected-Last-Sequence` (only a
writer that has seen the whole log can append: a deposed leader's append is
refused) and `Nats-Msg-Id` (a retry of the same entry is stored once);
reading entries in order with batched direct gets (stateless: no consumer
to lose when a NATS server dies); the stream's first and last positions;
trimming the front of the stream.
Used by: core/replication/node.py (the leader appends, followers read),
core/backup.py (point-in-time restore replays entries; trim), and the
events relay.

Errors are core.errors kinds: LogFenced (FAILED_PRECONDITION: another
writer appended first), LogUnavailable (UNAVAILABLE: no quorum, no server,
or no answer in time; the entry may or may not be stored).
"""

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import msgspec

from core.replication.errors import EntryTooLarge, LogFenced, LogTrimmed, LogUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

STREAM_DEFAULT = "TALLY_LOG"
SUBJECT_DEFAULT = "tally.log"
REPLICAS_DEFAULT = 3
# JetStream's answer to a stale Nats-Expected-Last-Sequence, and to a
# Nats-Expected-Last-Msg-Id that is not the last entry's.
WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_MSG_ID = 10070
# A request to NATS that has not answered in this time has failed (the
# entry of an append may still have been stored: see append).
REQUEST_TIMEOUT_S = 2.0
# Entries one direct get returns at most, and their bytes at most.
READ_BATCH_ENTRIES_MAX = 256
READ_BATCH_BYTES_MAX = 16 * 2**20
# NATS refuses messages above the servers' max_payload (1 MB by default);
# the local cluster and the README's configuration raise it to this.
MAX_PAYLOAD_BYTES = 8 * 2**20

NODE_HEADER = "Tally-Node"
KIND_HEADER = "Tally-Kind"


class Entry(msgspec.Struct, frozen=True):
    """One log entry as read back: its position, when the stream stored
    it (ms since the epoch), its headers and its bytes."""

    sequence: int
    time_ms: int
    kind: str
    node: str
    data: bytes
    pending: int  # entries after this one when it was read


class StreamState(msgspec.Struct, frozen=True):
    first: int
    last: int
    entries: int
    bytes: int


class LogNames(msgspec.Struct, frozen=True):
    stream: str = STREAM_DEFAULT
    subject: str = SUBJECT_DEFAULT


class NatsThread:
    """An asyncio loop on a daemon thread: `call` runs a coroutine there and
    waits for it from any other thread."""

    def __init__(self, name: str = "tally-nats"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(_wrap(make), self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _wrap(make):
    return await make()


def _append_headers(expected_last: int, msg_id: str, kind: str, node: str, previous_msg_id: str = "") -> dict:
    """An append's headers: where it must land (after expected_last, and
    after the entry previous_msg_id if given), its de-duplication id, and
    what and whose it is."""
    headers = {
        "Nats-Expected-Last-Sequence": str(expected_last),
        "Nats-Msg-Id": msg_id,
        KIND_HEADER: kind,
        NODE_HEADER: node,
    }
    if previous_msg_id:
        headers["Nats-Expected-Last-Msg-Id"] = previous_msg_id
    return headers


class ReplicationLog:
    """The stream, through one NATS connection (see the module docstring)."""

    def __init__(self, urls: str | list[str], names: LogNames = LogNames(), replicas: int = REPLICAS_DEFAULT,
                 name: str = "tally"):
        self.urls = urls.split(",") if isinstance(urls, str) else list(urls)
        self.names = names
        self.replicas = replicas
        self.client_name = name
        self.thread = NatsThread()
        self.nc = None
        self.js = None
        # Replies of direct gets: one subscription on PREFIX.* for all reads
        # (a subscription per read cost more CPU than the read itself).
        self._reply_prefix = ""
        self._replies: dict[str, asyncio.Queue] = {}
        self._reads = 0

    # ------------------------------------------------------------ connection

    def connect(self, timeout_s: float = 30.0):
        """Connect (retrying until timeout_s) and make sure the stream exists."""
        try:
            self.thread.call(lambda: self._connect(timeout_s), timeout_s + 5)
        except TimeoutError:
            raise LogUnavailable(f"no NATS server of {','.join(self.urls)} answered within {timeout_s:g} s") from None

    async def _connect(self, timeout_s: float):
        import nats

        deadline = time.monotonic() + timeout_s

        async def quiet(error):
            log.debug("nats: %s", error)

        while True:
            try:
                # Once connected, it reconnects without end; the first
                # connection is bounded by the deadline.
                self.nc = await asyncio.wait_for(nats.connect(
                    self.urls, name=self.client_name, connect_timeout=2, reconnect_time_wait=0.25,
                    max_reconnect_attempts=-1, ping_interval=1, max_outstanding_pings=3,
                    error_cb=quiet, disconnected_cb=None, pending_size=64 * 2**20,
                ), max(0.1, deadline - time.monotonic()))
                break
            except Exception as error:  # noqa: BLE001 -- nats raises many kinds on a refused connect
                if time.monotonic() > deadline:
                    raise LogUnavailable(f"no NATS server of {','.join(self.urls)} answered within {timeout_s:g} s: "
                                         f"{type(error).__name__} {error}".rstrip()) from None
                await asyncio.sleep(0.25)
        self.js = self.nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        self._reply_prefix = self.nc.new_inbox()

        async def route(message):
            queue = self._replies.get(message.subject)
            if queue is not None:
                queue.put_nowait(message)

        await self.nc.subscribe(f"{self._reply_prefix}.*", cb=route)
        while True:
            try:
                await self._ensure_stream()
                return
            except Exception as error:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise LogUnavailable(f"cannot create the stream {self.names.stream}: {error}") from None
                await asyncio.sleep(0.5)

    async def _ensure_stream(self):
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await self.js.stream_info(self.names.stream)
            return
        except NotFoundError:
            pass
        await self.js.add_stream(StreamConfig(
            name=self.names.stream, subjects=[self.names.subject], num_replicas=self.replicas,
            storage=StorageType.FILE, allow_direct=True, max_msg_size=MAX_PAYLOAD_BYTES,
            # Retries of one append are recognised for two minutes.
            duplicate_window=120.0, deny_delete=True,
        ))
        log.info("created the stream %s (%d replicas, subject %s)", self.names.stream, self.replicas,
                 self.names.subject)

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload if self.nc is not None else 0

    def close(self):
        if self.nc is not None:
            try:
                self.thread.call(self.nc.close, 5)
            except Exception:  # noqa: BLE001 -- closing a dead connection
                pass
        self.thread.stop()

    # ------------------------------------------------------------ append

    def append(self, data: bytes, expected_last: int, msg_id: str, kind: str, node: str,
               timeout_s: float = REQUEST_TIMEOUT_S) -> int:
        """Store `data` at position expected_last + 1 and return it, once a
        quorum of the stream's replicas has it. Raises LogFenced if the log
        is past expected_last (another writer), LogUnavailable if no answer
        came: then the entry may have been stored, and a retry with the
        same msg_id answers its position without storing it twice."""
        headers = _append_headers(expected_last, msg_id, kind, node)
        try:
            return self.thread.call(lambda: self._publish(data, headers, timeout_s), timeout_s + 1)
        except TimeoutError:
            raise LogUnavailable(f"no answer to an append within {timeout_s:g} s") from None

    def append_started(self, make_data: Callable[[], bytes], expected_last: int, msg_id: str, kind: str, node: str,
                       previous_msg_id: str = "", timeout_s: float = REQUEST_TIMEOUT_S) -> concurrent.futures.Future:
        """`append`, without waiting: the entry's bytes are made on the NATS
        thread (make_data: compression off the caller's thread) and
        published there; the future gives (position, bytes) or raises what
        `append` raises, EntryTooLarge too.

        previous_msg_id: the msg id the entry at expected_last must have
        (Nats-Expected-Last-Msg-Id). An append started while the one before
        it is unacknowledged needs it: if the one before was refused and
        another writer's entry took its place, the sequence alone would
        match and this entry would land after a foreign one."""
        headers = _append_headers(expected_last, msg_id, kind, node, previous_msg_id)

        async def run():
            data = make_data()
            if len(data) > self.max_payload:
                raise EntryTooLarge(len(data), self.max_payload)
            return await self._publish(data, headers, timeout_s), data

        return asyncio.run_coroutine_threadsafe(run(), self.thread.loop)

    async def _publish(self, data: bytes, headers: dict, timeout_s: float) -> int:
        from nats.errors import NoRespondersError, TimeoutError as NatsTimeout
        from nats.js.errors import APIError, NoStreamResponseError

        try:
            ack = await self.js.publish(self.names.subject, data, timeout=timeout_s, headers=headers)
        except APIError as error:
            if error.err_code == WRONG_LAST_SEQUENCE:
                raise LogFenced(f"the log is past {headers['Nats-Expected-Last-Sequence']}") from None
            if error.err_code == WRONG_LAST_MSG_ID:
                raise LogFenced(f"entry {headers['Nats-Expected-Last-Sequence']} is not "
                                f"{headers.get('Nats-Expected-Last-Msg-Id')}") from None
            raise LogUnavailable(f"append refused: {error.description or error}") from None
        except (NatsTimeout, asyncio.TimeoutError, NoRespondersError, NoStreamResponseError) as error:
            raise LogUnavailable(f"append: {type(error).__name__}") from None
        except Exception as error:  # noqa: BLE001 -- a closed or reconnecting connection
            raise LogUnavailable(f"append: {error}") from None
        return ack.seq

    # ------------------------------------------------------------ read

    def read(self, first: int, entries_max: int = READ_BATCH_ENTRIES_MAX, bytes_max: int = READ_BATCH_BYTES_MAX,
             timeout_s: float = REQUEST_TIMEOUT_S) -> list[Entry]:
        """Entries from position `first` on, in order, at most entries_max
        (fewer at the end of the log; none past it). Raises LogTrimmed if
        `first` is before the stream's first entry, LogUnavailable if no
        server answered."""
        assert first >= 1
        try:
            found = self.thread.call(lambda: self._direct_get(first, entries_max, bytes_max, timeout_s), timeout_s + 1)
        except TimeoutError:
            raise LogUnavailable(f"no answer to a read within {timeout_s:g} s") from None
        if found and found[0].sequence != first:
            raise LogTrimmed(first, found[0].sequence)
        for before, after in zip(found, found[1:]):
            if after.sequence != before.sequence + 1:
                raise LogTrimmed(before.sequence + 1, after.sequence)
        return found

    async def _direct_get(self, first: int, entries_max: int, bytes_max: int, timeout_s: float) -> list[Entry]:
        """One batched direct get ($JS.API.DIRECT.GET, nats-server 2.11+):
        the server sends up to `batch` messages then an end-of-batch status."""
        request = json.dumps({"seq": first, "batch": entries_max, "max_bytes": bytes_max}).encode()
        self._reads += 1
        inbox = f"{self._reply_prefix}.{self._reads}"
        replies = self._replies[inbox] = asyncio.Queue()
        found = []
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{self.names.stream}", request, reply=inbox)
            deadline = asyncio.get_running_loop().time() + timeout_s
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise LogUnavailable("a read got no end of batch in time")
                try:
                    message = await asyncio.wait_for(replies.get(), remaining)
                except asyncio.TimeoutError:
                    raise LogUnavailable("no answer to a read") from None
                headers = message.headers or {}
                status = headers.get("Status")
                if status is not None:
                    if status in ("204", "404"):
                        return found
                    if status == "408" or status == "503":
                        raise LogUnavailable(f"read: status {status}")
                    raise LogUnavailable(f"read: status {status} {headers.get('Description', '')}")
                found.append(_entry_of(message, headers))
        finally:
            del self._replies[inbox]

    def state(self, timeout_s: float = REQUEST_TIMEOUT_S) -> StreamState:
        """The stream's first and last positions (from its leader)."""
        try:
            info = self.thread.call(lambda: self.js.stream_info(self.names.stream), timeout_s + 1)
        except TimeoutError:
            raise LogUnavailable("no answer to a stream info") from None
        except Exception as error:  # noqa: BLE001 -- nats' own timeout and API errors
            raise LogUnavailable(f"stream info: {type(error).__name__} {error}") from None
        state = info.state
        return StreamState(first=state.first_seq, last=state.last_seq, entries=state.messages, bytes=state.bytes)

    def trim_before(self, position: int, timeout_s: float = 10.0) -> int:
        """Remove the entries before `position` (kept: position and after);
        returns how many went."""
        async def purge():
            return await self.js.purge_stream(self.names.stream, seq=position)

        try:
            self.thread.call(purge, timeout_s)
        except Exception as error:  # noqa: BLE001
            raise LogUnavailable(f"trim: {error}") from None
        return position


def _entry_of(message, headers: dict) -> Entry:
    return Entry(
        sequence=int(headers["Nats-Sequence"]),
        time_ms=stamp_ms(headers.get("Nats-Time-Stamp", "")),
        kind=headers.get(KIND_HEADER, ""),
        node=headers.get(NODE_HEADER, ""),
        data=message.data,
        pending=int(headers.get("Nats-Num-Pending", "0")),
    )


def stamp_ms(stamp: str) -> int:
    """NATS's RFC 3339 time with nanoseconds -> ms since the epoch."""
    if not stamp:
        return 0
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    return int(seconds) * 1000 + int((fraction + "000")[:3])
