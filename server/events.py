"""Committed changes as typed tally.v1 events for other systems (CRM, SMS, BI).

Owns: the events relay of a replicated leader (--events-stream NAME): a
thread that reads the replicated log in order from where the events stream
left off, turns each entry's changes into tally.v1.Event messages
(proto/tally/v1/events.proto: a transaction as it stands after the commit,
points moved without a sale, a coupon issued, used or given back), and
publishes them on the events stream's subjects tally.events.transaction,
.points and .coupon, each with Nats-Msg-Id "<log position>-<index>" (JetStream
drops a repeat within its window) and the headers Tally-Log-Position,
Tally-Event-Index and Tally-Event-Count. It resumes after the last event the
stream holds, so a new leader carries on where the old one stopped: at
least once, in log order.
Used by: server/app.py (started on promotion, stopped on demotion).
May call: the NATS connection of core/replication (log.py), server/answers.py.

Why from the log and not from the commit: the log is the order every node
agrees on, events go out after the quorum has the change, and a relay that
dies loses nothing (the next leader reads the same log).
"""

import logging
import threading
from collections.abc import Iterator

import msgspec

from core.counters import COUNTER_VALUE, CounterScope, parse_counter_key
from core.promotions.model import Coupon
from core.records import JournalEntry, Txn, decode
from core.replication import applier
from core.replication.changes import PUT, decode_changes
from core.replication.errors import LogTrimmed, LogUnavailable
from core.replication.log import Entry, ReplicationLog
from core.results import AccountKind, Movement
from core.store import DATABASE_NAMES
from server.answers import transaction
from tally.v1 import events_pb2

log = logging.getLogger("tally.events")

SUBJECT_PREFIX = "tally.events"
POSITION_HEADER = "Tally-Log-Position"
INDEX_HEADER = "Tally-Event-Index"
COUNT_HEADER = "Tally-Event-Count"
# How long the events stream keeps an event (consumers read well within it).
RETENTION_S = 7 * 86_400.0
POLL_INTERVAL_S = 0.05
RETRY_INTERVAL_S = 0.5
PUBLISH_TIMEOUT_S = 5.0

_INDEX = {name: index for index, name in enumerate(DATABASE_NAMES)}
TXNS, JOURNAL, COUPONS, COUNTERS = (_INDEX[name] for name in ("txns", "journal", "promotion_coupons", "counters"))


def events_of(entry: Entry) -> list[tuple[str, events_pb2.Event]]:
    """(subject, Event) for each change of a log entry that other systems
    care about, in the order the entry made them."""
    if entry.kind != applier.CHANGES:
        return []
    found = list(_changes_of(decode_changes(entry.data)))
    events = []
    for index, (kind, payload) in enumerate(found):
        event = events_pb2.Event(log_position=entry.sequence, index=index, count=len(found), committed_ms=entry.time_ms)
        getattr(event, kind).CopyFrom(payload)
        events.append((f"{SUBJECT_PREFIX}.{kind}", event))
    return events


def _changes_of(changes) -> Iterator[tuple[str, object]]:
    txn_ids = set()
    journal = []
    for db, kind, key, value in changes:
        if kind != PUT:
            continue
        if db == TXNS:
            record = decode(Txn, value)
            txn_ids.add(record.txn_id)
            yield "transaction", transaction(record)
        elif db == JOURNAL:
            journal.append(decode(JournalEntry, value))
        elif db == COUPONS:
            coupon = msgspec.msgpack.decode(value, type=Coupon)
            yield "coupon", events_pb2.CouponChange(coupon_id=coupon.coupon_id, promotion_id=coupon.promotion_id,
                                                    card_id=coupon.card_id, state="issued")
        elif db == COUNTERS:
            scope, owner, _, _ = parse_counter_key(key)
            if scope == CounterScope.COUPON_USED:
                used = COUNTER_VALUE.unpack(value)[0]
                yield "coupon", events_pb2.CouponChange(coupon_id=owner, state="used" if used else "given back")
    yield from _points_of(journal, txn_ids)


def _points_of(journal: list, txn_ids: set) -> Iterator[tuple[str, object]]:
    """Points moved on cards by operations without a transaction record of
    their own (sales, refunds and top-ups come with their transaction)."""
    for entry in journal:
        if entry.txn_id in txn_ids:
            continue
        sides = ((entry.credit_kind, entry.credit_owner, 1), (entry.debit_kind, entry.debit_owner, -1))
        for kind, owner, sign in sides:
            if kind == AccountKind.POINTS:
                yield "points", events_pb2.PointsMovement(
                    txn_id=entry.txn_id, card_id=owner, points=sign * entry.amount,
                    movement=_movement_name(entry.movement), station_id=entry.station_id,
                    business_day=entry.business_day, created_ms=entry.created_ms)


def _movement_name(movement: int) -> str:
    try:
        return Movement(movement).name
    except ValueError:
        return str(movement)


class EventRelay:
    """Publishes the log's events while this node leads (module docstring)."""

    def __init__(self, log_client: ReplicationLog, stream: str):
        self.log = log_client
        self.stream = stream
        self.published = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tally-events", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self):
        resume = None
        while not self._stop.is_set():
            try:
                if resume is None:
                    self._ensure_stream()
                    resume = self._resume_point()
                resume = self._relay_from(*resume)
            except LogUnavailable as error:
                log.debug("events: %s", error)
                self._stop.wait(RETRY_INTERVAL_S)
            except LogTrimmed as error:
                log.error("events of log entries %d .. %d were never published and the log no longer holds them",
                          error.wanted, error.first - 1)
                resume = (error.first, -1)
            except Exception:
                log.exception("events relay failed; starting again from the events stream's last event")
                resume = None
                self._stop.wait(RETRY_INTERVAL_S * 4)

    def _relay_from(self, position: int, skip_through: int) -> tuple[int, int]:
        """Publish entries from `position` on (skipping its events up to
        index skip_through); returns where to go on from."""
        entries = self.log.read(position)
        if not entries:
            self._stop.wait(POLL_INTERVAL_S)
            return position, skip_through
        for entry in entries:
            for subject, event in events_of(entry):
                if entry.sequence == position and event.index <= skip_through:
                    continue
                self._publish(subject, event)
            position, skip_through = entry.sequence + 1, -1
            if self._stop.is_set():
                break
        return position, skip_through

    def _publish(self, subject: str, event: events_pb2.Event):
        headers = {
            "Nats-Msg-Id": f"{event.log_position}-{event.index}",
            POSITION_HEADER: str(event.log_position),
            INDEX_HEADER: str(event.index),
            COUNT_HEADER: str(event.count),
        }
        data = event.SerializeToString()

        async def publish():
            return await self.log.js.publish(subject, data, timeout=PUBLISH_TIMEOUT_S, stream=self.stream,
                                             headers=headers)

        try:
            self.log.thread.call(publish, PUBLISH_TIMEOUT_S + 1)
        except Exception as error:  # noqa: BLE001 -- nats' timeouts: retried from the last event stored
            raise LogUnavailable(f"publishing an event: {error}") from None
        self.published += 1

    def _ensure_stream(self):
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        async def ensure():
            try:
                await self.log.js.stream_info(self.stream)
            except NotFoundError:
                await self.log.js.add_stream(StreamConfig(
                    name=self.stream, subjects=[f"{SUBJECT_PREFIX}.>"], num_replicas=self.log.replicas,
                    storage=StorageType.FILE, max_age=RETENTION_S, duplicate_window=120.0))

        try:
            self.log.thread.call(ensure, 10)
        except Exception as error:  # noqa: BLE001
            raise LogUnavailable(f"events stream: {error}") from None

    def _resume_point(self) -> tuple[int, int]:
        """(log position to read from, last index already published of it)."""
        from nats.js.errors import NotFoundError

        async def last():
            info = await self.log.js.stream_info(self.stream)
            if info.state.messages == 0:
                return None
            try:
                return await self.log.js.get_msg(self.stream, info.state.last_seq)
            except NotFoundError:
                return None

        try:
            message = self.log.thread.call(last, 10)
        except Exception as error:  # noqa: BLE001
            raise LogUnavailable(f"events stream: {error}") from None
        if message is None or not message.headers:
            return self._first_position(), -1
        position = int(message.headers[POSITION_HEADER])
        index, count = int(message.headers[INDEX_HEADER]), int(message.headers[COUNT_HEADER])
        return (position + 1, -1) if index + 1 >= count else (position, index)

    def _first_position(self) -> int:
        state = self.log.state()
        return max(1, state.first)
