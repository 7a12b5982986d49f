"""The fixed binary layout of every stored record, and of kernel operations.

Owns: byte layouts (values little-endian, keys big-endian so that LMDB's
byte order is numeric order) and the typed Python view of each record.
Used by: reference.py (decodes and encodes with these), kernel.pyx (declares
the same layouts as packed C structs; tests/test_records.py checks that the
sizes agree), the server (builds operations, reads results), audit.

Each record is a msgspec.Struct whose fields are, in order, the fields of its
`LAYOUT`. `decode(Type, data)` and `encode(record)` convert.
"""

import struct
from typing import ClassVar

import msgspec

from core.results import AccountKind

# ---------------------------------------------------------------- operations


class Op(msgspec.Struct):
    """One request to the kernel. Fields a kind does not use stay zero.

    kind                 OpKind
    channel              Channel of the external remainder (PAY)
    plan_flags           PlanFlag: internal sources a PAY may use
    card_status          SET_CARD_STATUS: new CardStatus; OPEN_CARD: CardType
    account_kind         TOPUP: account credited; OPEN_ACCOUNT, TRANSFER: debit side
    credit_kind          TRANSFER: credit side
    abort_code           ABORT: the ResultCode recorded for the request
    station_id, terminal_id, operator_id   who asks
    hold_timeout_s       PREAUTH: seconds until the hold expires
    points_per_unit      points that make one currency unit when paying with
                         points (PAY), or settling a points shortfall (REFUND,
                         VOID, REVERSE)
    lot_validity_days    days a points lot this operation creates stays valid
    serial               the terminal's serial; 0 for operations without one
    card_id              the card
    ref_txn_id           CAPTURE, ABORT, COMPLETE, RELEASE, VOID, REFUND: target
    ref_serial           REVERSE: serial of the request being reversed
    account_owner        OPEN_ACCOUNT, TRANSFER: debit account owner
    credit_owner         TRANSFER: credit account owner
    amount               minor units (points for TOPUP of a points account)
    points_max           PAY: most points to spend; 0 means no cap
    earn_points          PAY, COMPLETE: points the loyalty rules give the whole
                         sale; PAY earns the share paid with money (see kernel)
    limit_per_txn        OPEN_CARD, SET_CARD_LIMITS: 0 means no limit
    limit_per_day        OPEN_CARD, SET_CARD_LIMITS: 0 means no limit
    fingerprint          16 bytes identifying the request's content
    item_id              REDEEM, GIFT_*: the gift; PARTNER_EXCHANGE: the partner
    bonus_points         CHECKIN: streak bonus; TASK: daily cap; GIFT_SET: cash price
    period               CHECKIN: streak length in days; EXTEND_LOTS: month
                         (year * 12 + month - 1); CLEAR_LOTS: year; GIFT_SET:
                         last valid day; PARTNER_EXCHANGE: rate denominator
    period_start         GIFT_SET: first valid day; CLEAR_LOTS: lots earned
                         before this day are cleared
    count_limit          GIFT_SET: most redemptions per customer (0: none)
    tier                 SET_TIER: new tier; SET_MEMBER: initial tier;
                         GIFT_SET: bitmask of tiers allowed (bit n = tier n)
    reason               SET_TIER: why (TierReason); PARTNER_EXCHANGE: 1 cash
    tz_offset_minutes    SET_MEMBER: the customer's time zone, minutes east of UTC
    link                 1: this operation is linked to the next one (a chain
                         applies whole or not at all; see core/counters.py)

    COUNTER (core/counters.py): account_kind scope, item_id owner, card_id
    subject, period period, amount delta, limit_per_day ceiling.
    PACKET_CLAIM: item_id the red packet, card_id the claimant, count_limit
    the packet's number of shares.
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBBBBBHIIIIIIQQQQQQqqqqq16sQqIIIBBhB7x")
    kind: int = 0
    channel: int = 0
    plan_flags: int = 0
    card_status: int = 0
    account_kind: int = 0
    credit_kind: int = 0
    abort_code: int = 0
    station_id: int = 0
    terminal_id: int = 0
    operator_id: int = 0
    hold_timeout_s: int = 0
    points_per_unit: int = 0
    lot_validity_days: int = 0
    serial: int = 0
    card_id: int = 0
    ref_txn_id: int = 0
    ref_serial: int = 0
    account_owner: int = 0
    credit_owner: int = 0
    amount: int = 0
    points_max: int = 0
    earn_points: int = 0
    limit_per_txn: int = 0
    limit_per_day: int = 0
    fingerprint: bytes = bytes(16)
    item_id: int = 0
    bonus_points: int = 0
    period: int = 0
    period_start: int = 0
    count_limit: int = 0
    tier: int = 0
    reason: int = 0
    tz_offset_minutes: int = 0
    link: int = 0


RESULT_FINAL = 1
RESULT_REPLAYED = 2


class Result(msgspec.Struct):
    """The kernel's answer to one operation; also the stored answer of a request.

    final is a set of bits. RESULT_FINAL (1) is clear while a PAY or REFUND
    waits for its channel, set otherwise. RESULT_REPLAYED (2) is set only in
    a returned result that is the stored answer of an earlier request with
    the same (terminal, serial) and fingerprint (a retry: nothing applied
    again); it is never stored.
    Balances are those of the card after the operation (0 without a card);
    the points balance is as of the operation's time (points of lots whose
    day has come do not count, written or not).
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<HBBIQQqqqqqqqqqqqq")
    code: int = 0
    kind: int = 0
    final: int = 1
    business_day: int = 0
    txn_id: int = 0
    card_id: int = 0
    amount: int = 0
    fleet: int = 0
    personal: int = 0
    points_cash: int = 0
    points_used: int = 0
    channel_amount: int = 0
    points_earned: int = 0
    points_clawed_back: int = 0
    # Earned points a return could not take back, settled in money instead.
    shortfall_settled: int = 0
    fleet_balance: int = 0
    personal_balance: int = 0
    points_balance: int = 0

    @property
    def replayed(self) -> bool:
        """The stored answer of an earlier request (see RESULT_REPLAYED)."""
        return bool(self.final & RESULT_REPLAYED)


# ------------------------------------------------------------ stored records


class Account(msgspec.Struct):
    """A ledger account. balance = credits - debits; available = balance - held.

    Card accounts (FLEET, PERSONAL, POINTS) never go below zero; system
    accounts may. POINTS and POINTS_LIABILITY count points, all others minor
    units.

    last_seq is the seq of the account's newest journal entry (0: none yet);
    each entry names the one before it on each side (JournalEntry.debit_prev,
    credit_prev), so an account's history is read from the journal newest
    first, with no index written beside it.

    A card's POINTS account is stored with its newest open points lot after
    it (POINTS_ACCOUNT_SIZE bytes; see inline_lot): a sale's earning changes
    the account it already writes, not a record of its own.
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBHIQqqqqQ")
    kind: int = 0
    unit: int = 0
    flags: int = 0
    reserved: int = 0
    owner: int = 0
    balance: int = 0
    held: int = 0
    debits: int = 0
    credits: int = 0
    last_seq: int = 0


class Card(msgspec.Struct):
    """A card. day_spent counts what was authorized on business day `day`."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QBBHIqqqQ")
    card_id: int = 0
    status: int = 0
    card_type: int = 0
    flags: int = 0
    day: int = 0
    day_spent: int = 0
    limit_per_txn: int = 0
    limit_per_day: int = 0
    opened_ms: int = 0


class Txn(msgspec.Struct):
    """A payment, pre-authorization, refund or top-up; a hold while HELD.

    Legs, in payment order: fleet, personal, points_cash (money that points
    paid), channel_amount; points_used is the points behind points_cash.
    held_*: what was authorized (held, or taken at once);
    posted_*: what was finally posted; refunded_*: cumulative refunds
    (including a refund still waiting for its channel); refunds_posted: the
    money given back by posted refunds, or by a void or reversal (then all
    that was posted). points_clawed_back + points_shortfall is
    what refunds and undos have taken back of points_earned so far.
    For a REFUND transaction, held_* are its legs and ref_txn_id the sale.
    shortfall_settled: money kept back from a refund (on the refund) or an
    undo (on the sale) because earned points were already spent;
    points_per_unit: the rate a pending refund settles that shortfall at.
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QBBBBIIIIIQQQQQq" + "q" * 20)
    txn_id: int = 0
    kind: int = 0
    state: int = 0
    flags: int = 0
    channel: int = 0
    station_id: int = 0
    terminal_id: int = 0
    operator_id: int = 0
    business_day: int = 0
    points_per_unit: int = 0
    serial: int = 0
    card_id: int = 0
    ref_txn_id: int = 0
    created_ms: int = 0
    expires_ms: int = 0
    amount: int = 0
    held_fleet: int = 0
    held_personal: int = 0
    held_points_cash: int = 0
    held_points_used: int = 0
    held_channel: int = 0
    posted_fleet: int = 0
    posted_personal: int = 0
    posted_points_cash: int = 0
    posted_points_used: int = 0
    posted_channel: int = 0
    refunded_fleet: int = 0
    refunded_personal: int = 0
    refunded_points_cash: int = 0
    refunded_points_used: int = 0
    refunded_channel: int = 0
    points_earned: int = 0
    points_clawed_back: int = 0
    points_shortfall: int = 0
    refunds_posted: int = 0
    shortfall_settled: int = 0


class Idem(msgspec.Struct):
    """An idempotency entry: the request's fingerprint and its stored answer.

    A reversal that arrives before its original leaves a tombstone: a zero
    fingerprint and code ALREADY_REVERSED, so the late original is refused.
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<16s" + Result.LAYOUT.format[1:])
    fingerprint: bytes = bytes(16)
    result: Result = msgspec.field(default_factory=Result)


class Request(msgspec.Struct):
    """A terminal request as answered: the idempotency record of (terminal,
    serial), stored in the order requests were first answered (key: the
    request's seq), so the requests of one commit sit on a few pages however
    long each terminal's history is.

    prev_seq: the terminal's previous request not yet in request_index (0:
    none); the newest is its RequestTail's last_seq. See core/idempotency.py.
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IIQQ" + Idem.LAYOUT.format[1:])
    terminal_id: int = 0
    reserved: int = 0
    serial: int = 0
    prev_seq: int = 0
    entry: Idem = msgspec.field(default_factory=Idem)


class RequestTail(msgspec.Struct):
    """A terminal's requests that request_index does not list yet: the
    newest's seq, how many (each names the one before, Request.prev_seq),
    the range of their serials, and the largest serial the terminal ever
    sent (a serial above it was never answered: no lookup at all).
    Every REQUEST_TAIL_MAX requests the tail is listed in request_index at
    once, in serial order, and starts empty again."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QQQQII")
    last_seq: int = 0
    max_serial: int = 0
    tail_min_serial: int = 0
    tail_max_serial: int = 0
    tail_count: int = 0
    reserved: int = 0


class JournalEntry(msgspec.Struct):
    """One posted transfer: amount moves from the debit to the credit account.

    debit_prev and credit_prev: the seq of the entry before this one on the
    debit account and on the credit account (0: this is its first), so that
    each account's entries form a chain from Account.last_seq back (a card's
    points statement, any account's history).
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QQqQQQBBBBIIIQQ")
    seq: int = 0
    txn_id: int = 0
    amount: int = 0
    created_ms: int = 0
    debit_owner: int = 0
    credit_owner: int = 0
    debit_kind: int = 0
    credit_kind: int = 0
    movement: int = 0
    reason: int = 0
    business_day: int = 0
    station_id: int = 0
    reserved: int = 0
    debit_prev: int = 0
    credit_prev: int = 0

    def before_on(self, kind: int, owner: int) -> int:
        """The seq of the entry before this one on account (kind, owner),
        one of its two sides (0: none)."""
        if self.debit_kind == kind and self.debit_owner == owner:
            return self.debit_prev
        return self.credit_prev


class Lot(msgspec.Struct):
    """Open points of a card that expire together: every earning of one day
    with the same validity shares a lot. Usable while day < expires_day.

    A card's newest open lot (the latest expires_day) is stored inline, after
    its POINTS account; the older ones in point_lots. A lot leaves both when
    its last point is spent or expires (closed_lots keeps it).
    """

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QIIqqQ")
    card_id: int = 0
    expires_day: int = 0
    earned_day: int = 0
    original: int = 0
    remaining: int = 0
    first_txn_id: int = 0


class Member(msgspec.Struct):
    """A card's loyalty state. Days here are the customer's local days."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QBBhIIIqII")
    card_id: int = 0
    tier: int = 0
    flags: int = 0
    tz_offset_minutes: int = 0
    checkin_day: int = 0
    checkin_streak: int = 0
    task_day: int = 0
    task_points_today: int = 0
    # Month (year * 12 + month - 1) whose spend last extended the lots, and
    # the last year cleared: each happens once.
    extended_month: int = 0
    cleared_year: int = 0


class TierChange(msgspec.Struct):
    """One tier change of a card, in order (key: card, change number)."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QIBBHq")
    card_id: int = 0
    day: int = 0
    old_tier: int = 0
    new_tier: int = 0
    reason: int = 0
    spend_minor: int = 0


class Gift(msgspec.Struct):
    """A catalogue gift: a points price (plus cash, from the personal
    account), stock that never goes below zero, a window, allowed tiers."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<QqqqqIIII")
    gift_id: int = 0
    points_price: int = 0
    cash_price: int = 0
    stock: int = 0
    redeemed: int = 0
    per_customer_limit: int = 0
    tier_mask: int = 0
    valid_from_day: int = 0
    valid_to_day: int = 0


class Shift(msgspec.Struct):
    """A terminal's shift: opened by SIGN_ON, closed by SHIFT_CLOSE. Its
    transactions are those of the terminal with ids in first_txn_id ..
    last_txn_id (last_txn_id is set when the shift closes)."""

    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IIIBBHQQQQQ")
    terminal_id: int = 0
    station_id: int = 0
    operator_id: int = 0
    state: int = 0
    reserved: int = 0
    reserved2: int = 0
    shift_id: int = 0
    opened_ms: int = 0
    closed_ms: int = 0
    first_txn_id: int = 0
    last_txn_id: int = 0


TOMBSTONE_FINGERPRINT = bytes(16)

RECORD_SIZES = {
    "Op": Op.LAYOUT.size,
    "Result": Result.LAYOUT.size,
    "Account": Account.LAYOUT.size,
    "Card": Card.LAYOUT.size,
    "Txn": Txn.LAYOUT.size,
    "Idem": Idem.LAYOUT.size,
    "Request": Request.LAYOUT.size,
    "RequestTail": RequestTail.LAYOUT.size,
    "JournalEntry": JournalEntry.LAYOUT.size,
    "Lot": Lot.LAYOUT.size,
    "Member": Member.LAYOUT.size,
    "TierChange": TierChange.LAYOUT.size,
    "Gift": Gift.LAYOUT.size,
    "Shift": Shift.LAYOUT.size,
}


def decode(record_type, data):
    """Bytes of a stored record -> its typed view. An Account is read from
    the first bytes of its value (a POINTS account's inline lot follows)."""
    if record_type is Idem:
        fields = Idem.LAYOUT.unpack(data)
        return Idem(fields[0], Result(*fields[1:]))
    if record_type is Request:
        fields = Request.LAYOUT.unpack(data)
        return Request(*fields[:4], Idem(fields[4], Result(*fields[5:])))
    if record_type is Account:
        return Account(*Account.LAYOUT.unpack_from(data))
    return record_type(*record_type.LAYOUT.unpack(data))


def encode(record) -> bytes:
    """Typed view -> bytes, in the record's fixed layout."""
    if type(record) is Idem:
        return Idem.LAYOUT.pack(record.fingerprint, *msgspec.structs.astuple(record.result))
    if type(record) is Request:
        entry = record.entry
        return Request.LAYOUT.pack(record.terminal_id, record.reserved, record.serial, record.prev_seq, entry.fingerprint,
                                   *msgspec.structs.astuple(entry.result))
    return record.LAYOUT.pack(*msgspec.structs.astuple(record))


# A POINTS account's value: the Account, then its newest open lot (all zero
# bytes when the card has no open lot).
POINTS_ACCOUNT_SIZE = Account.LAYOUT.size + Lot.LAYOUT.size
NO_LOT = bytes(Lot.LAYOUT.size)


def inline_lot(value: bytes) -> Lot | None:
    """The newest open lot stored after a POINTS account, or None."""
    lot = value[Account.LAYOUT.size : POINTS_ACCOUNT_SIZE]
    return None if len(lot) < Lot.LAYOUT.size or lot == NO_LOT else decode(Lot, lot)


def account_value(account: Account, lot: Lot | None = None) -> bytes:
    """The stored value of an account: a POINTS account with its inline lot
    (or none), any other the Account alone."""
    if account.kind != AccountKind.POINTS:
        return encode(account)
    return encode(account) + (NO_LOT if lot is None else encode(lot))


# ---------------------------------------------------------------------- keys

_U64 = struct.Struct(">Q")
_ACCOUNT_KEY = struct.Struct(">BQ")
_IDEM_KEY = struct.Struct(">IQ")
_HOLD_KEY = struct.Struct(">QQ")
_CARD_STATION_KEY = struct.Struct(">QI")


def account_key(kind: int, owner: int) -> bytes:
    return _ACCOUNT_KEY.pack(kind, owner)


def parse_account_key(key: bytes) -> tuple[int, int]:
    return _ACCOUNT_KEY.unpack(key)


def u64_key(value: int) -> bytes:
    """Key of a card, a transaction or a journal entry."""
    return _U64.pack(value)


def parse_u64_key(key: bytes) -> int:
    return _U64.unpack(key)[0]


def idem_key(terminal_id: int, serial: int) -> bytes:
    """(terminal, serial): version 2's key of an idempotency record."""
    return _IDEM_KEY.pack(terminal_id, serial)


def parse_idem_key(key: bytes) -> tuple[int, int]:
    return _IDEM_KEY.unpack(key)


# request_index lists a terminal's requests by runs of serials: the key is
# (terminal, serial >> REQUEST_BUCKET_BITS), the value the (serial, seq)
# pairs of that run, in serial order (REQUEST_INDEX_PAIR each). A tail of a
# terminal numbering its serials one after the other is listed with one or
# two records, not one per request.
REQUEST_BUCKET_BITS = 5
REQUEST_INDEX_PAIR = struct.Struct("<QQ")


def request_bucket_key(terminal_id: int, serial: int) -> bytes:
    """Key of the request_index record listing (terminal, serial)."""
    return _IDEM_KEY.pack(terminal_id, serial >> REQUEST_BUCKET_BITS)


def parse_request_bucket_key(key: bytes) -> tuple[int, int]:
    """(terminal, bucket): the bucket's serials are bucket << REQUEST_BUCKET_BITS and the next ones."""
    return _IDEM_KEY.unpack(key)


def bucket_seq(value: bytes, serial: int) -> int:
    """The seq a request_index record lists for serial, or 0."""
    for listed, seq in REQUEST_INDEX_PAIR.iter_unpack(value):
        if listed == serial:
            return seq
    return 0


def bucket_with(value: bytes | None, pairs: list[tuple[int, int]]) -> bytes:
    """A request_index record with (serial, seq) pairs added, in serial order."""
    merged = sorted([*REQUEST_INDEX_PAIR.iter_unpack(value or b""), *pairs])
    return b"".join(REQUEST_INDEX_PAIR.pack(serial, seq) for serial, seq in merged)


def hold_expiry_key(expires_ms: int, txn_id: int) -> bytes:
    return _HOLD_KEY.pack(expires_ms, txn_id)


def parse_hold_expiry_key(key: bytes) -> tuple[int, int]:
    return _HOLD_KEY.unpack(key)


_U32 = struct.Struct(">I")


def u32_key(value: int) -> bytes:
    """Key of a terminal's shift or a station's day-end."""
    return _U32.pack(value)


def card_station_key(card_id: int, station_id: int) -> bytes:
    return _CARD_STATION_KEY.pack(card_id, station_id)


_LOT_KEY = struct.Struct(">QI")
_LOT_EXPIRY_KEY = struct.Struct(">IQ")
_HISTORY_KEY = struct.Struct(">QQ")


def lot_key(card_id: int, expires_day: int) -> bytes:
    """Lots of a card in key order are oldest (closest to expiry) first."""
    return _LOT_KEY.pack(card_id, expires_day)


def lot_expiry_key(expires_day: int, card_id: int) -> bytes:
    return _LOT_EXPIRY_KEY.pack(expires_day, card_id)


def parse_lot_expiry_key(key: bytes) -> tuple[int, int]:
    return _LOT_EXPIRY_KEY.unpack(key)


def gift_count_key(gift_id: int, card_id: int) -> bytes:
    return _HISTORY_KEY.pack(gift_id, card_id)


def tier_change_key(card_id: int, number: int) -> bytes:
    return _HISTORY_KEY.pack(card_id, number)


# Meta keys: counters the kernel advances, stored as little-endian u64.
META_NEXT_TXN_ID = b"next_txn_id"
META_NEXT_JOURNAL_SEQ = b"next_journal_seq"
META_NEXT_REQUEST_SEQ = b"next_request_seq"
META_VALUE = struct.Struct("<Q")
