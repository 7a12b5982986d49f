"""Totals of a cashier's shift and of a station's business day.

Owns: reading the transactions of a shift (the terminal's transactions with
ids in the shift's range) or of a business day, and summing them per payment
method, per terminal and per operator, for the hand-over and the day-end;
the DAY_END operation that closes a day.
Used by: server/shift_service.py (ShiftClose, DayEnd), the CLI (close-day), tests.

A sale counts at its posted amounts; a voided or reversed sale counts in
`voided` / `reversed`, not in sales; refunds count where they were made.
"""

import collections

import msgspec

from core import limits
from core.counters import budget_takes
from core.records import Op, Shift, Txn, decode, u32_key, u64_key
from core.results import Channel, OpKind, TxnFlag, TxnState

SALE_KINDS = (OpKind.PAY, OpKind.PREAUTH)
METHODS = ("fleet", "personal", "points_cash", "channel")


class MethodTotals(msgspec.Struct):
    """Money per payment method, minor units; points is the points behind points_cash."""

    fleet: int = 0
    personal: int = 0
    points_cash: int = 0
    points: int = 0
    channels: dict[str, int] = msgspec.field(default_factory=dict)

    def add(self, record: Txn, prefix: str):
        self.fleet += getattr(record, prefix + "fleet")
        self.personal += getattr(record, prefix + "personal")
        self.points_cash += getattr(record, prefix + "points_cash")
        self.points += getattr(record, prefix + "points_used")
        channel_amount = getattr(record, prefix + "channel")
        if channel_amount:
            name = Channel(record.channel).name
            self.channels[name] = self.channels.get(name, 0) + channel_amount

    @property
    def total(self) -> int:
        return self.fleet + self.personal + self.points_cash + sum(self.channels.values())


class Totals(msgspec.Struct):
    sales_count: int = 0
    sales: MethodTotals = msgspec.field(default_factory=MethodTotals)
    refunds_count: int = 0
    refunds: MethodTotals = msgspec.field(default_factory=MethodTotals)
    voided_count: int = 0
    voided_minor: int = 0
    reversed_count: int = 0
    reversed_minor: int = 0
    topups_count: int = 0
    topups_minor: int = 0
    # Promotions' discounts on the sales counted (voided and reversed sales
    # gave their promotions back): what the customers did not pay.
    discounts_minor: int = 0

    def add(self, record: Txn, discount_minor: int = 0):
        posted = sum(getattr(record, "posted_" + method) for method in METHODS)
        if record.state != TxnState.POSTED:
            return
        if record.kind in SALE_KINDS:
            if record.flags & TxnFlag.VOIDED:
                self.voided_count += 1
                self.voided_minor += posted
            elif record.flags & TxnFlag.REVERSED:
                self.reversed_count += 1
                self.reversed_minor += posted
            else:
                self.sales_count += 1
                self.sales.add(record, "posted_")
                self.discounts_minor += discount_minor
        elif record.kind == OpKind.REFUND:
            self.refunds_count += 1
            self.refunds.add(record, "posted_")
        elif record.kind == OpKind.TOPUP and not record.flags & TxnFlag.REVERSED:
            self.topups_count += 1
            self.topups_minor += record.posted_fleet + record.posted_personal


class DayTotals(msgspec.Struct):
    station_id: int
    business_day: int
    station: Totals
    by_terminal: dict[int, Totals]
    by_operator: dict[int, Totals]


def _discount(txn, store, record: Txn) -> int:
    if record.kind not in SALE_KINDS:
        return 0
    return sum(minor for _, minor in budget_takes(txn, store, record.txn_id))


def _txns_from(txn, store, first_id: int):
    cursor = txn.cursor(db=store.txns)
    if cursor.set_range(u64_key(first_id)):
        for _, value in cursor.iternext():
            yield decode(Txn, value)


def load_shift(store, terminal_id: int) -> Shift | None:
    with store.env.begin() as txn:
        raw = txn.get(u32_key(terminal_id), db=store.shifts)
    return None if raw is None else decode(Shift, raw)


def shift_totals(store, shift: Shift) -> Totals:
    """Totals of the shift's transactions (up to now if it is still open)."""
    totals = Totals()
    with store.env.begin() as txn:
        for record in _txns_from(txn, store, shift.first_txn_id):
            if shift.last_txn_id and record.txn_id > shift.last_txn_id:
                break
            if record.terminal_id == shift.terminal_id:
                totals.add(record, _discount(txn, store, record))
    return totals


def first_txn_of_day(txn, store, day: int) -> int:
    """An id at or before the day's first transaction, by bisection over the
    ids (skipping ids that name no transaction). Ids grow with time and a
    transaction's business day is its calendar day or up to
    STATION_DAY_AHEAD_MAX days later (a station whose day is closed works on
    the next), so ids whose business day is before day - that are all
    before the day's first transaction."""
    day -= limits.STATION_DAY_AHEAD_MAX
    low, high = 1, 1
    cursor = txn.cursor(db=store.txns)
    if cursor.last():
        high = int.from_bytes(cursor.key(), "big") + 1
    while low < high:
        middle = (low + high) // 2
        if not cursor.set_range(u64_key(middle)):
            high = middle
            continue
        record = decode(Txn, cursor.value())
        if record.business_day < day:
            low = int.from_bytes(cursor.key(), "big") + 1
        else:
            high = middle
    return low


def past_day(record: Txn, day: int) -> bool:
    """Whether `record` and every later transaction are past business day
    `day` (see first_txn_of_day)."""
    return record.business_day > day + limits.STATION_DAY_AHEAD_MAX


def day_end_op(station_id: int, day: int) -> Op:
    """The kernel operation that closes business day `day` at the station
    (and so every day before it: days only move forward). It has no serial:
    repeating it changes nothing."""
    assert station_id > 0 and day > 0
    return Op(kind=OpKind.DAY_END, station_id=station_id, period=day)


def day_totals(store, station_id: int, day: int) -> DayTotals:
    """Totals of a station's business day: all, per terminal, per operator."""
    station = Totals()
    by_terminal = collections.defaultdict(Totals)
    by_operator = collections.defaultdict(Totals)
    with store.env.begin() as txn:
        for record in _txns_from(txn, store, first_txn_of_day(txn, store, day)):
            if past_day(record, day):
                break
            if record.station_id != station_id or record.business_day != day:
                continue
            discount = _discount(txn, store, record)
            for totals in (station, by_terminal[record.terminal_id], by_operator[record.operator_id]):
                totals.add(record, discount)
    return DayTotals(station_id, day, station, dict(by_terminal), dict(by_operator))
