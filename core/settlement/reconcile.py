"""Statement rows against the journal: every difference in exactly one kind.

Owns: turning the journal's channel entries and a statement's rows into
events (a payment, its undo, a refund), pairing them by Tally transaction id,
and classifying each item of a business day as matched, waiting for the next
statement, or one difference: ONLY_OURS, ONLY_CHANNEL, AMOUNT_DIFFERS,
STATUS_DIFFERS.
Used by: queue.reconcile_day (loads and stores), the CLI, the gRPC service.

The pairs and what they mean (item: a sale's payment with its same-day
undo, the undo of an earlier day's payment, or a refund):

  payment   ours \\ channel   absent        paid           revoked/failed
            absent            -             ONLY_CHANNEL   -  (a time-out Tally undid)
            paid              ONLY_OURS     amounts        STATUS_DIFFERS
            paid and undone   ONLY_OURS     STATUS_DIFFERS amounts (if revoked)
  undo      absent            -             STATUS_DIFFERS
            undone            STATUS_DIFFERS amounts
  refund    absent            -             ONLY_CHANNEL   -  (in process or failed)
            refunded          ONLY_OURS     amounts        STATUS_DIFFERS

Crossing midnight: the two sides of a pair may lie on neighbouring days (our
business day and the channel's bill day differ by a few seconds, or by the
time zones). A pair within `window_ms` of each other belongs to both days and
is matched, not reported; beyond it each side stands alone in its own day.
An event of ours with no partner, within the window of a day whose
statement is not imported yet, is waiting: not reported until it is.
"""

import enum
from collections import defaultdict

import msgspec
import numpy as np

from core.results import AccountKind, Movement, Reason, TxnState
from core.settlement.journal import read_days
from core.settlement.model import Difference, DifferenceKind, ItemKind, RowKind, RowStatus, Statement
from core.settlement.money import format_yuan, local_day

# Longest allowed window: a pair must still fall on neighbouring days.
WINDOW_MS_MAX = 12 * 3_600_000
WINDOW_MS_DEFAULT = 10 * 60_000
_SALE_REASONS = (Reason.SALE, Reason.COMPLETE)
_UNDO_REASONS = (Reason.VOID, Reason.REVERSAL)


class EventKind(enum.IntEnum):
    PAY = 1
    UNDO = 2
    REFUND = 3


class Event(msgspec.Struct):
    kind: EventKind
    # The sale's Tally id for PAY and UNDO, the refund's for REFUND.
    key: int
    amount_minor: int
    time_ms: int
    # Ours: the business day; the channel's: the statement's day.
    day: int
    status: RowStatus = RowStatus.SUCCESS
    station_id: int = 0
    fee_minor: int = 0
    line: int = 0


class Outcome(msgspec.Struct):
    differences: list[Difference]
    items_matched: int = 0
    items_waiting: int = 0
    ours_minor: int = 0
    channel_minor: int = 0


# ------------------------------------------------------------------ events


def our_events(store, channel: int, first_day: int, last_day: int, stations=None, include: bool = True) -> list[Event]:
    """The journal's entries for this channel's clearing account, as events:
    of `stations` only (include), of all but them (not include), or of every
    station (stations None)."""
    entries = read_days(store, first_day, last_day, movements=(Movement.CHANNEL,))
    clearing = AccountKind.CHANNEL_CLEARING
    mine = ((entries["debit_kind"] == clearing) & (entries["debit_owner"] == channel)) | (
        (entries["credit_kind"] == clearing) & (entries["credit_owner"] == channel)
    )
    if stations is not None:
        listed = np.isin(entries["station_id"], np.fromiter(stations, dtype=np.uint32, count=len(stations)))
        mine &= listed if include else ~listed
    events = []
    for entry in entries[mine].tolist():
        _, txn_id, amount, created_ms, _, _, _, _, _, reason, business_day, station_id, *_ = entry
        if reason in _SALE_REASONS:
            kind = EventKind.PAY
        elif reason in _UNDO_REASONS:
            kind = EventKind.UNDO
        elif reason == Reason.REFUND:
            kind = EventKind.REFUND
        else:
            continue
        events.append(Event(kind, txn_id, amount, created_ms, business_day, station_id=station_id))
    return events


def their_events(statements) -> list[Event]:
    """A statement's rows as events. A payment revoked the same day is a
    payment and its undo; a refund whose number is the order's is an undo."""
    events = []
    for statement in statements:
        for row in statement.rows:
            common = dict(time_ms=row.time_ms, day=statement.day, fee_minor=row.fee_minor, line=row.line)
            if row.kind == RowKind.PAYMENT:
                status = RowStatus.SUCCESS if row.status == RowStatus.REVOKED else row.status
                events.append(Event(EventKind.PAY, row.reference, row.amount_minor, status=status, **common))
                if row.status == RowStatus.REVOKED:
                    events.append(Event(EventKind.UNDO, row.reference, row.amount_minor, **dict(common, fee_minor=0)))
            elif row.refund_reference == row.reference:
                events.append(Event(EventKind.UNDO, row.reference, row.amount_minor, status=row.status, **common))
            else:
                events.append(Event(EventKind.REFUND, row.refund_reference, row.amount_minor, status=row.status, **common))
    return events


def _merge(events) -> dict:
    """(kind, key) -> one event; a repeated one (never in a sane file) adds up."""
    merged = {}
    for event in events:
        known = merged.get((event.kind, event.key))
        if known is None:
            merged[(event.kind, event.key)] = msgspec.structs.replace(event)
        else:
            known.amount_minor += event.amount_minor
            known.fee_minor += event.fee_minor
    return merged


# ------------------------------------------------------------------ pairing


class _Side(msgspec.Struct):
    pay: Event | None = None
    undo: Event | None = None
    refund: Event | None = None

    def put(self, event: Event):
        setattr(self, event.kind.name.lower(), event)


def _pairs_of_day(ours: dict, theirs: dict, day: int, window_ms: int):
    """(ours, theirs) per (kind, key) for `day`, each None when that side has
    nothing of the day; pairs across midnight within the window included."""
    for ident in set(ours) | set(theirs):
        mine, other = ours.get(ident), theirs.get(ident)
        mine_today = mine is not None and mine.day == day
        other_today = other is not None and other.day == day
        if not (mine_today or other_today):
            continue
        if mine is not None and other is not None and mine.day != other.day:
            if abs(mine.time_ms - other.time_ms) > window_ms:
                mine, other = (mine if mine_today else None), (other if other_today else None)
        yield ident, mine, other


def _waiting(event: Event, window_ms: int, statement_days: set, statement_offset: int) -> bool:
    """Could the channel have listed it on a statement not imported yet?"""
    days = {local_day(event.time_ms - window_ms, statement_offset), local_day(event.time_ms + window_ms, statement_offset)}
    return not days <= statement_days


def match(ours_events, their_events_, channel: int, day: int, window_ms: int, statement_days: set, statement_offset: int, txn_lookup=None) -> Outcome:
    """Pair and classify every item of `day`. `statement_days`: the days
    whose statements are imported; `txn_lookup(txn_id)`: our Txn or None
    (for the station and state of what the channel has and we did not post)."""
    if not 0 <= window_ms <= WINDOW_MS_MAX:
        raise ValueError(f"window must be within 0 .. {WINDOW_MS_MAX} ms")
    ours, theirs = _merge(ours_events), _merge(their_events_)
    items = defaultdict(lambda: (_Side(), _Side()))
    outcome = Outcome(differences=[])
    for (kind, key), mine, other in _pairs_of_day(ours, theirs, day, window_ms):
        if mine is not None and other is None and _waiting(mine, window_ms, statement_days, statement_offset):
            outcome.items_waiting += 1
            continue
        item_kind = ItemKind.REFUND if kind == EventKind.REFUND else ItemKind.PAYMENT
        side_ours, side_theirs = items[(item_kind, key)]
        if mine is not None:
            side_ours.put(mine)
        if other is not None:
            side_theirs.put(other)
    for (item_kind, key), (side_ours, side_theirs) in sorted(items.items()):
        if item_kind == ItemKind.PAYMENT and side_ours.pay is None and side_theirs.pay is None:
            item_kind = ItemKind.UNDO
        found = _classify(item_kind, side_ours, side_theirs)
        ours_minor, channel_minor = _money(item_kind, side_ours, ours=True), _money(item_kind, side_theirs, ours=False)
        outcome.ours_minor += ours_minor
        outcome.channel_minor += channel_minor
        if found is None:
            outcome.items_matched += 1
            continue
        outcome.differences.append(_difference(found, item_kind, key, side_ours, side_theirs, channel, day, ours_minor, channel_minor, txn_lookup))
    return outcome


# ------------------------------------------------------------------ classifying


def _succeeded(event: Event | None) -> bool:
    return event is not None and event.status == RowStatus.SUCCESS


def _classify(item: ItemKind, ours: _Side, theirs: _Side) -> DifferenceKind | None:
    if item == ItemKind.REFUND:
        return _compare(ours.refund, theirs.refund)
    if item == ItemKind.UNDO:
        if ours.undo is None or theirs.undo is None:
            return DifferenceKind.STATUS_DIFFERS if _succeeded(ours.undo) or _succeeded(theirs.undo) else None
        return _compare(ours.undo, theirs.undo)
    if ours.pay is None:
        # What the channel revoked or failed, and we never posted, moved no money.
        return DifferenceKind.ONLY_CHANNEL if _succeeded(theirs.pay) and theirs.undo is None else None
    if theirs.pay is None:
        return DifferenceKind.ONLY_OURS
    ours_undone, theirs_undone = ours.undo is not None, theirs.undo is not None or not _succeeded(theirs.pay)
    if ours_undone != theirs_undone:
        return DifferenceKind.STATUS_DIFFERS
    if ours_undone and not _succeeded(theirs.pay):
        return None
    return None if ours.pay.amount_minor == theirs.pay.amount_minor else DifferenceKind.AMOUNT_DIFFERS


def _compare(mine: Event | None, other: Event | None) -> DifferenceKind | None:
    """One event each side (a refund, an undo): present, status, amount."""
    if mine is None:
        return DifferenceKind.ONLY_CHANNEL if _succeeded(other) else None
    if other is None:
        return DifferenceKind.ONLY_OURS
    if not _succeeded(other):
        return DifferenceKind.STATUS_DIFFERS
    return None if mine.amount_minor == other.amount_minor else DifferenceKind.AMOUNT_DIFFERS


def _money(item: ItemKind, side: _Side, ours: bool) -> int:
    """Money the item moved on one side, in the payment's direction (channel
    clearing -> station receivable): a payment +, an undo or refund -."""
    if item == ItemKind.REFUND:
        return -side.refund.amount_minor if _succeeded(side.refund) else 0
    if item == ItemKind.UNDO:
        return -side.undo.amount_minor if _succeeded(side.undo) else 0
    if not _succeeded(side.pay) or side.undo is not None:
        return 0
    return side.pay.amount_minor


def _status(item: ItemKind, side: _Side) -> str:
    if item == ItemKind.REFUND:
        return "absent" if side.refund is None else ("refunded" if _succeeded(side.refund) else side.refund.status.name.lower())
    if item == ItemKind.UNDO:
        return "absent" if side.undo is None else ("undone" if _succeeded(side.undo) else side.undo.status.name.lower())
    if side.pay is None:
        return "absent"
    if not _succeeded(side.pay):
        return side.pay.status.name.lower()
    return "paid and undone" if side.undo is not None else "paid"


def _difference(kind, item, key, ours: _Side, theirs: _Side, channel, day, ours_minor, channel_minor, txn_lookup) -> Difference:
    events_ours = [event for event in (ours.pay, ours.undo, ours.refund) if event is not None]
    events_theirs = [event for event in (theirs.pay, theirs.undo, theirs.refund) if event is not None]
    station = events_ours[0].station_id if events_ours else 0
    ours_status = _status(item, ours)
    if not events_ours and txn_lookup is not None:
        record = txn_lookup(key)
        if record is not None:
            station = record.station_id
            ours_status = f"absent (transaction {TxnState(record.state).name.lower()})"
    fee = sum(event.fee_minor for event in events_theirs)
    lines = ", ".join(str(event.line) for event in events_theirs if event.line)
    detail = f"{ItemKind(item).name.lower()} {key}: ours {ours_status} {format_yuan(ours_minor)}, channel {_status(item, theirs)} {format_yuan(channel_minor)}"
    if lines:
        detail += f" (statement line {lines})"
    if kind == DifferenceKind.AMOUNT_DIFFERS and fee and abs(channel_minor - ours_minor) == abs(fee):
        detail += "; differs by exactly the row's fee: the channel reported the amount net of its fee"
    return Difference(
        channel=channel,
        day=day,
        item=item,
        reference=key,
        kind=kind,
        station_id=station,
        ours_minor=ours_minor,
        channel_minor=channel_minor,
        ours_status=ours_status,
        channel_status=_status(item, theirs),
        fee_minor=fee,
        detail=detail,
    )


def statement_fees(statement: Statement) -> int:
    return sum(row.fee_minor for row in statement.rows)

