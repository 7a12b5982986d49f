"""The rules of the ledger in plain Python: the executable specification.

Owns: what every operation does to accounts, cards, transactions,
idempotency entries and the journal.
Used by: ledger.py when the Cython kernel is not built, and the property
tests, which run random operation sequences through this and kernel.pyx and
require identical results and identical stored bytes.

Written for clarity, not speed: every record is read from and written to the
LMDB write transaction directly. kernel.pyx follows this file function by
function; a change of rule here must be made there too (the property tests
fail until it is).

One call, `apply_batch`, applies a batch of operations (core.records.Op
layouts, concatenated) in order inside the caller's write transaction and
returns their results (core.records.Result layouts, concatenated).
"""

from core import idempotency, limits
from core.counters import (
    COUNTER_VALUE,
    PACKET_SHARE_VALUE,
    TXN_COUNTER_ENTRY,
    CounterScope,
    counter_key,
    packet_share_key,
)
from core.records import (
    META_NEXT_JOURNAL_SEQ,
    META_NEXT_REQUEST_SEQ,
    META_NEXT_TXN_ID,
    META_VALUE,
    NO_LOT,
    RESULT_REPLAYED,
    TOMBSTONE_FINGERPRINT,
    Account,
    Card,
    Idem,
    JournalEntry,
    Gift,
    Lot,
    Member,
    Op,
    Request,
    RequestTail,
    Shift,
    TierChange,
    Result,
    Txn,
    account_key,
    card_station_key,
    decode,
    encode,
    hold_expiry_key,
    gift_count_key,
    bucket_with,
    inline_lot,
    lot_expiry_key,
    lot_key,
    parse_hold_expiry_key,
    request_bucket_key,
    tier_change_key,
    u32_key,
    u64_key,
)
from core.results import (
    SYSTEM_ACCOUNT_KIND_MIN,
    AccountKind,
    CardFlag,
    CardStatus,
    CardType,
    Channel,
    Movement,
    OpKind,
    PlanFlag,
    Reason,
    ResultCode,
    ShiftState,
    Tier,
    TierReason,
    TxnFlag,
    TxnState,
    may_go_negative,
    unit_of,
)

OP_SIZE = Op.LAYOUT.size
ACCOUNT_SIZE = Account.LAYOUT.size

K = AccountKind
R = ResultCode

# Operations that may carry a serial and so are idempotent on (terminal, serial).
IDEMPOTENT_KINDS = frozenset(
    (
        OpKind.TOPUP,
        OpKind.PAY,
        OpKind.PREAUTH,
        OpKind.COMPLETE,
        OpKind.RELEASE,
        OpKind.REVERSE,
        OpKind.VOID,
        OpKind.REFUND,
        OpKind.TRANSFER,
        OpKind.CHECKIN,
        OpKind.TASK,
        OpKind.REDEEM,
        OpKind.PARTNER_EXCHANGE,
        OpKind.SIGN_ON,
        OpKind.SHIFT_CLOSE,
        OpKind.PACKET_CLAIM,
    )
)
# Operator actions a closed shift refuses (a reversal, sent by the terminal
# itself, and a completion of fuel already pumped are never refused).
SHIFT_BOUND_KINDS = frozenset((OpKind.PAY, OpKind.PREAUTH, OpKind.TOPUP, OpKind.REFUND, OpKind.VOID, OpKind.REDEEM))
REVERSIBLE_KINDS = frozenset((OpKind.PAY, OpKind.PREAUTH, OpKind.COMPLETE, OpKind.TOPUP))
# Requests that take money from a card: a decline answers the amount asked
# and the card's balances.
SALE_KINDS = frozenset((OpKind.PAY, OpKind.PREAUTH))
# Main operations of a chain whose counters are given back when the
# transaction is voided, reversed, released or aborted.
COUNTER_RETURNING_KINDS = frozenset((OpKind.PAY, OpKind.PREAUTH, OpKind.COMPLETE, OpKind.TOPUP))
CARD_TYPES = frozenset(int(t) for t in CardType)
TIERS = frozenset(int(t) for t in Tier)
TIER_REASONS = frozenset(int(r) for r in TierReason)
MS_PER_DAY = 86_400_000
CARD_STATUSES = frozenset(int(s) for s in CardStatus)
ACCOUNT_KINDS = frozenset(int(k) for k in AccountKind)
CARD_STATUS_DECLINES = {
    CardStatus.LOST: R.CARD_LOST,
    CardStatus.FROZEN: R.CARD_FROZEN,
    CardStatus.CANCELLED: R.CARD_CANCELLED,
}


def points_for_cash(cash_minor: int, points_per_unit: int) -> int:
    """Points needed to pay `cash_minor`, rounded up: the customer never pays
    with fewer points than the rate asks."""
    return (cash_minor * points_per_unit + 99) // 100


def cash_for_points(points: int, points_per_unit: int) -> int:
    """Minor units that `points` buy, rounded down."""
    return points * 100 // points_per_unit


def share(points: int, part: int, whole: int) -> int:
    """points * part / whole, rounded down; 0 when whole is 0. Exact for any
    size (the kernel computes it with Python integers too: the product of a
    points count and an amount can pass 2^63)."""
    return points * part // whole if whole else 0


def op_is_valid(op: Op) -> bool:
    """Limits every operation must respect; the server enforces them first."""
    if op.kind in (OpKind.TOPUP, OpKind.PAY, OpKind.PREAUTH, OpKind.REFUND, OpKind.TRANSFER):
        if op.amount <= 0 or op.amount > limits.AMOUNT_MINOR_MAX:
            return False
    if op.kind == OpKind.COMPLETE and (op.amount < 0 or op.amount > limits.AMOUNT_MINOR_MAX):
        return False
    if op.kind == OpKind.PAY:
        if op.plan_flags & PlanFlag.USE_POINTS and not 0 < op.points_per_unit <= limits.POINTS_PER_UNIT_MAX:
            return False
        if op.points_max < 0 or op.points_max > limits.POINTS_MAX:
            return False
        if op.channel > Channel.ALIPAY:
            return False
    if not 0 <= op.earn_points <= limits.EARN_POINTS_MAX:
        return False
    if op.lot_validity_days > limits.LOT_VALIDITY_DAYS_MAX:
        return False
    if op.kind in (OpKind.REFUND, OpKind.VOID, OpKind.REVERSE) and op.points_per_unit > limits.POINTS_PER_UNIT_MAX:
        return False
    if op.kind == OpKind.PREAUTH and not 0 < op.hold_timeout_s <= limits.HOLD_TIMEOUT_S_MAX:
        return False
    if op.kind in (OpKind.OPEN_CARD, OpKind.SET_CARD_LIMITS):
        for limit in (op.limit_per_txn, op.limit_per_day):
            if limit < 0 or limit > limits.AMOUNT_MINOR_MAX:
                return False
    if op.kind == OpKind.TOPUP and op.account_kind not in (K.FLEET, K.PERSONAL, K.POINTS):
        return False
    if op.kind == OpKind.OPEN_CARD and op.card_status not in CARD_TYPES:
        return False
    if op.kind == OpKind.SET_CARD_STATUS and (op.card_status not in CARD_STATUSES or op.card_status == CardStatus.CANCELLED):
        return False  # cancelling refunds the balance: CANCEL_CARD
    if op.kind == OpKind.OPEN_ACCOUNT and not (op.account_kind in ACCOUNT_KINDS and op.account_kind >= SYSTEM_ACCOUNT_KIND_MIN):
        return False
    if op.kind == OpKind.TRANSFER:
        if op.account_kind not in ACCOUNT_KINDS or op.credit_kind not in ACCOUNT_KINDS:
            return False
        if (op.account_kind, op.account_owner) == (op.credit_kind, op.credit_owner):
            return False
    return loyalty_op_is_valid(op) and counter_op_is_valid(op)


def counter_op_is_valid(op: Op) -> bool:
    if op.kind == OpKind.COUNTER:
        if not (op.account_kind > 0 and op.amount != 0 and abs(op.amount) <= limits.COUNTER_DELTA_ABS_MAX):
            return False
        return 0 <= op.limit_per_day <= limits.COUNTER_CEILING_MAX
    if op.kind == OpKind.PACKET_CLAIM:
        return op.item_id > 0 and 0 < op.count_limit <= limits.PACKET_SHARES_MAX
    return True


def chain_is_valid(ops: list[Op]) -> bool:
    """A chain: counters, then at most one other operation, which ends it."""
    if len(ops) > limits.COUNTER_TAKES_PER_SALE_MAX + 1 or ops[-1].link:
        return False
    return all(op.kind == OpKind.COUNTER for op in ops[:-1]) and all(op_is_valid(op) for op in ops)


def loyalty_op_is_valid(op: Op) -> bool:
    kind = op.kind
    if kind == OpKind.SET_MEMBER:
        return -limits.TZ_OFFSET_MINUTES_MAX <= op.tz_offset_minutes <= limits.TZ_OFFSET_MINUTES_MAX
    if kind == OpKind.CHECKIN:
        return 0 <= op.amount <= limits.POINTS_MAX and 0 <= op.bonus_points <= limits.POINTS_MAX and op.period <= limits.STREAK_DAYS_MAX
    if kind == OpKind.TASK:
        return 0 < op.amount <= limits.POINTS_MAX and 0 <= op.bonus_points <= limits.POINTS_MAX
    if kind == OpKind.SET_TIER:
        return op.tier in TIERS and op.reason in TIER_REASONS
    if kind == OpKind.GIFT_SET:
        prices_ok = 0 <= op.amount <= limits.POINTS_MAX and 0 <= op.bonus_points <= limits.AMOUNT_MINOR_MAX and op.amount + op.bonus_points > 0
        return op.item_id > 0 and prices_ok and (op.period == 0 or op.period_start <= op.period)
    if kind == OpKind.GIFT_STOCK:
        return op.item_id > 0 and op.amount != 0 and -limits.GIFT_STOCK_MAX <= op.amount <= limits.GIFT_STOCK_MAX
    if kind == OpKind.REDEEM:
        return op.item_id > 0 and 0 < op.amount <= limits.REDEEM_QUANTITY_MAX
    if kind == OpKind.PARTNER_EXCHANGE:
        rate_ok = 0 < op.earn_points <= limits.PARTNER_RATE_TERM_MAX and 0 < op.period <= limits.PARTNER_RATE_TERM_MAX
        funding_ok = op.reason == 1 or 0 < op.points_per_unit <= limits.POINTS_PER_UNIT_MAX
        return 0 < op.amount <= limits.POINTS_MAX and rate_ok and op.reason in (0, 1) and funding_ok
    if kind == OpKind.EXTEND_LOTS:
        return 0 < op.amount <= limits.LOT_EXTENSION_DAYS_MAX
    return True


class ReferenceKernel:
    """Same interface as core.kernel.Kernel."""

    name = "reference"

    def batch_committed(self, txn_id: int):
        """Nothing to do: this kernel keeps nothing between batches."""

    def batch_continues(self, txn_id: int):
        """Nothing to do: this kernel keeps nothing between batches."""

    def apply_batch(self, txn, store, ops: bytes, now_ms: int, business_day: int) -> bytes:
        assert len(ops) % OP_SIZE == 0
        assert len(ops) // OP_SIZE <= limits.BATCH_SIZE_MAX
        batch = _Batch(txn, store, now_ms, business_day)
        # Expiry holds at the moment of use: no operation of the batch sees a
        # hold whose time has come (bounded; EXPIRE_HOLDS sweeps the rest).
        batch.expire_due_holds()
        decoded = [decode(Op, ops[offset : offset + OP_SIZE]) for offset in range(0, len(ops), OP_SIZE)]
        results = bytearray()
        first = 0
        while first < len(decoded):
            last = chain_last(decoded, first)
            if last == first and decoded[first].kind != OpKind.COUNTER:
                answers = [batch.apply(decoded[first])]
            else:
                answers = batch.apply_chain(decoded[first : last + 1])
            for answer in answers:
                results += encode(answer)
            first = last + 1
        batch.finish()
        return bytes(results)


def chain_last(ops: list[Op], first: int) -> int:
    """Index of the last op of the chain starting at `first`: the first op
    without `link`, or the batch's last op (a chain cut short is invalid)."""
    last = first
    while ops[last].link and last + 1 < len(ops):
        last += 1
    return last


class _Batch:
    """One batch: the write transaction, the clock and the counters.

    Two days: calendar_day is the batch's business day by the clock (points
    lots expire by it); day is the business day of the operation being
    applied, which at a station whose day is closed (DAY_END) is the day
    after the closed one (see station_day).
    """

    def __init__(self, txn, store, now_ms: int, business_day: int):
        self.txn = txn
        self.store = store
        self.now_ms = now_ms
        self.calendar_day = business_day
        self.day = business_day
        self.next_txn_id = self._meta(META_NEXT_TXN_ID, 1)
        self.next_journal_seq = self._meta(META_NEXT_JOURNAL_SEQ, 1)
        self.next_request_seq = self._meta(META_NEXT_REQUEST_SEQ, 1)

    def _meta(self, name: bytes, default: int) -> int:
        value = self.txn.get(name, db=self.store.meta)
        return default if value is None else META_VALUE.unpack(value)[0]

    def finish(self):
        self.txn.put(META_NEXT_TXN_ID, META_VALUE.pack(self.next_txn_id), db=self.store.meta)
        self.txn.put(META_NEXT_JOURNAL_SEQ, META_VALUE.pack(self.next_journal_seq), db=self.store.meta)
        self.txn.put(META_NEXT_REQUEST_SEQ, META_VALUE.pack(self.next_request_seq), db=self.store.meta)

    # ------------------------------------------------------------ dispatch

    def apply(self, op: Op) -> Result:
        self.day = self.station_day(op.station_id)
        if not op_is_valid(op):
            return self.result(op, R.INVALID_OPERATION)
        self.lot_validity_days = op.lot_validity_days or limits.LOT_VALIDITY_DAYS_DEFAULT
        idempotent = op.serial != 0 and op.kind in IDEMPOTENT_KINDS
        if idempotent:
            stored = self.load_idem(op.terminal_id, op.serial)
            if stored is not None:
                return self.replay(op, stored)
        if op.kind in SHIFT_BOUND_KINDS and self.shift_closed(op.terminal_id):
            result = self.refusal(op, R.SHIFT_CLOSED)
        else:
            result = HANDLERS[op.kind](self, op)
        if idempotent:
            self.save_idem(op.terminal_id, op.serial, Idem(op.fingerprint, result))
        return result

    def apply_chain(self, ops: list[Op]) -> list[Result]:
        """Counters, then the main operation: all applied or none. The
        counters are checked first, the main operation applied, and the
        counters taken only if it was approved (or waits for its channel)."""
        self.day = self.station_day(ops[-1].station_id)
        if not chain_is_valid(ops):
            return [self.result(op, R.INVALID_OPERATION) for op in ops]
        takes, main = (ops, None) if ops[-1].kind == OpKind.COUNTER else (ops[:-1], ops[-1])
        if main is not None and self.is_replay(main):
            answer = self.apply(main)
            return [self.result(op, answer.code) for op in takes] + [answer]
        refusal = self.counters_refusal(takes)
        if refusal is not None:
            refused, code = refusal
            answers = [self.result(op, code if index == refused else R.LINKED_FAILED) for index, op in enumerate(takes)]
            return answers + ([] if main is None else [self.refusal(main, R.LINKED_FAILED)])
        answer = None if main is None else self.apply(main)
        if answer is not None and answer.code not in (R.APPROVED, R.PENDING):
            return [self.result(op, R.LINKED_FAILED) for op in takes] + [answer]
        returned_by = answer.txn_id if answer is not None and main.kind in COUNTER_RETURNING_KINDS else 0
        values = self.take_counters(takes, returned_by)
        answers = [self.result(op, R.APPROVED, amount=value) for op, value in zip(takes, values)]
        return answers + ([] if answer is None else [answer])

    def is_replay(self, op: Op) -> bool:
        return op.serial != 0 and op.kind in IDEMPOTENT_KINDS and self.load_idem(op.terminal_id, op.serial) is not None

    def replay(self, op: Op, stored: Idem) -> Result:
        """A request seen before: its first answer, marked replayed (a mark
        never stored), or why it is refused."""
        if stored.fingerprint == TOMBSTONE_FINGERPRINT:
            return self.refusal(op, R.ALREADY_REVERSED)
        if stored.fingerprint != op.fingerprint:
            return self.refusal(op, R.DUPLICATE_MISMATCH)
        answer = stored.result
        answer.final |= RESULT_REPLAYED
        return answer

    def result(self, op: Op, code: int, **fields) -> Result:
        fields.setdefault("final", 1)
        return Result(code=code, kind=op.kind, business_day=self.day, **fields)

    def refusal(self, op: Op, code: int) -> Result:
        """A request refused before its handler ran (closed shift, linked
        counter, replay refusal); a sale's refusal is a decline like any."""
        if op.kind in SALE_KINDS:
            return self.sale_decline(op, code)
        return self.result(op, code, card_id=op.card_id)

    def sale_decline(self, op: Op, code: int) -> Result:
        """A declined PAY or PREAUTH: nothing taken; the amount asked and,
        when the card exists, its balances."""
        known = op.card_id != 0 and self.load_card(op.card_id) is not None
        return self.result(op, code, card_id=op.card_id, amount=op.amount, **(self.card_balances(op.card_id) if known else {}))

    # ------------------------------------------------------------ storage

    def load(self, record_type, db, key):
        value = self.txn.get(key, db=db)
        return None if value is None else decode(record_type, value)

    def load_card(self, card_id: int):
        return self.load(Card, self.store.cards, u64_key(card_id))

    def save_card(self, card: Card):
        self.txn.put(u64_key(card.card_id), encode(card), db=self.store.cards)

    def load_account(self, kind: int, owner: int):
        return self.load(Account, self.store.accounts, account_key(kind, owner))

    def account_or_new(self, kind: int, owner: int) -> Account:
        account = self.load_account(kind, owner)
        if account is None:
            assert may_go_negative(kind), "a card or general account must be opened first"
            account = Account(kind=kind, unit=unit_of(kind), owner=owner)
        return account

    def save_account(self, account: Account):
        """Store the account; a POINTS account keeps the inline lot stored after it."""
        key = account_key(account.kind, account.owner)
        value = encode(account)
        if account.kind == K.POINTS:
            stored = self.txn.get(key, db=self.store.accounts)
            value += NO_LOT if stored is None else stored[ACCOUNT_SIZE:]
        self.txn.put(key, value, db=self.store.accounts)

    def load_txn(self, txn_id: int):
        return self.load(Txn, self.store.txns, u64_key(txn_id))

    def save_txn(self, record: Txn):
        self.txn.put(u64_key(record.txn_id), encode(record), db=self.store.txns)

    def load_idem(self, terminal_id: int, serial: int):
        found = idempotency.find(self.txn, self.store, terminal_id, serial)
        return None if found is None else found[1].entry

    def save_idem(self, terminal_id: int, serial: int, entry: Idem):
        """Store the answer of (terminal, serial): over the stored one, or
        as the terminal's newest request (see core/idempotency.py)."""
        found = idempotency.find(self.txn, self.store, terminal_id, serial)
        if found is not None:
            seq, request = found
            request.entry = entry
            self.txn.put(u64_key(seq), encode(request), db=self.store.requests)
            return
        tail = idempotency.tail_of(self.txn, self.store, terminal_id) or RequestTail()
        seq = self.next_request_seq
        self.next_request_seq += 1
        self.txn.put(u64_key(seq), encode(Request(terminal_id, 0, serial, tail.last_seq, entry)), db=self.store.requests, append=True)
        tail.tail_min_serial = serial if tail.tail_count == 0 else min(tail.tail_min_serial, serial)
        tail.tail_max_serial = max(tail.tail_max_serial, serial)
        tail.max_serial = max(tail.max_serial, serial)
        tail.last_seq = seq
        tail.tail_count += 1
        if tail.tail_count == limits.REQUEST_TAIL_MAX:
            tail = self.index_tail(terminal_id, tail)
        self.txn.put(u32_key(terminal_id), encode(tail), db=self.store.request_tails)

    def index_tail(self, terminal_id: int, tail: RequestTail) -> RequestTail:
        """List the tail's requests in request_index, all at once (a run of
        serials: one or two records per REQUEST_TAIL_MAX requests); the tail
        starts empty again."""
        buckets = {}
        for seq, request in idempotency.tail_requests(self.txn, self.store, tail):
            buckets.setdefault(request_bucket_key(terminal_id, request.serial), []).append((request.serial, seq))
        for key, pairs in buckets.items():
            self.txn.put(key, bucket_with(self.txn.get(key, db=self.store.request_index), pairs), db=self.store.request_index)
        return RequestTail(max_serial=tail.max_serial)

    def new_txn_id(self) -> int:
        txn_id = self.next_txn_id
        self.next_txn_id += 1
        return txn_id

    def available(self, kind: int, owner: int) -> int:
        account = self.load_account(kind, owner)
        return 0 if account is None else account.balance - account.held

    def card_balances(self, card_id: int) -> dict:
        """The card's balances for an answer; points as of now (what the
        next touch of the card expires does not count)."""
        if card_id == 0:
            return {}
        points = self.load_account(K.POINTS, card_id)
        return {
            "fleet_balance": self.load_account(K.FLEET, card_id).balance,
            "personal_balance": self.load_account(K.PERSONAL, card_id).balance,
            "points_balance": points.balance - self.expirable(card_id, points),
        }

    # ------------------------------------------------------------ postings

    def postings_fit(self, postings) -> bool:
        """Every balance stays within +-BALANCE_ABS_MAX after `postings`.

        postings: list of (debit_kind, debit_owner, credit_kind, credit_owner,
        amount, movement, reason), applied in order.
        """
        running = {}
        for debit_kind, debit_owner, credit_kind, credit_owner, amount, _, _ in postings:
            if amount == 0:
                continue
            for kind, owner, delta in ((debit_kind, debit_owner, -amount), (credit_kind, credit_owner, amount)):
                key = (kind, owner)
                if key not in running:
                    running[key] = self.account_or_new(kind, owner).balance
                running[key] += delta
                if abs(running[key]) > limits.BALANCE_ABS_MAX:
                    return False
        return True

    def post(self, txn_id: int, station_id: int, postings):
        """Apply postings: move balances and write one journal entry each."""
        for debit_kind, debit_owner, credit_kind, credit_owner, amount, movement, reason in postings:
            if amount == 0:
                continue
            seq = self.next_journal_seq
            debit = self.account_or_new(debit_kind, debit_owner)
            debit.balance -= amount
            debit.debits += amount
            assert may_go_negative(debit_kind) or debit.balance >= debit.held, "overdraft"
            # Each entry names the one before it on each account: the
            # account's history is a chain from its last_seq back.
            debit_prev, debit.last_seq = debit.last_seq, seq
            self.save_account(debit)
            credit = self.account_or_new(credit_kind, credit_owner)
            credit.balance += amount
            credit.credits += amount
            credit_prev, credit.last_seq = credit.last_seq, seq
            self.save_account(credit)
            entry = JournalEntry(
                seq=seq,
                txn_id=txn_id,
                amount=amount,
                created_ms=self.now_ms,
                debit_owner=debit_owner,
                credit_owner=credit_owner,
                debit_kind=debit_kind,
                credit_kind=credit_kind,
                movement=movement,
                reason=reason,
                business_day=self.day,
                station_id=station_id,
                debit_prev=debit_prev,
                credit_prev=credit_prev,
            )
            self.txn.put(u64_key(entry.seq), encode(entry), db=self.store.journal, append=True)
            self.next_journal_seq += 1
            # A card's points live in lots: every point in follows the
            # lot of its expiry, every point out leaves the oldest lot.
            if debit_kind == K.POINTS:
                self.take_from_lots(debit_owner, amount)
            if credit_kind == K.POINTS:
                self.add_to_lot(credit_owner, amount, txn_id)

    # ------------------------------------------------------------ points lots

    def open_lots(self, card_id: int, expired_only: bool = False) -> list[Lot]:
        """The card's open lots, oldest (closest to expiry) first: those of
        point_lots, then the newest, stored inline with the POINTS account."""
        prefix = u64_key(card_id)
        found = []
        cursor = self.txn.cursor(db=self.store.point_lots)
        if cursor.set_range(prefix):
            for key, value in cursor.iternext():
                if not key.startswith(prefix):
                    break
                found.append(decode(Lot, value))
        cursor.close()
        newest = self.load_inline_lot(card_id)
        if newest is not None:
            found.append(newest)
        return [lot for lot in found if lot.expires_day <= self.calendar_day] if expired_only else found

    def load_inline_lot(self, card_id: int):
        """The card's newest open lot, or None."""
        return inline_lot(self.txn.get(account_key(K.POINTS, card_id), db=self.store.accounts))

    def save_inline_lot(self, card_id: int, lot):
        """Store the card's newest open lot (None: it has none) after its POINTS account."""
        key = account_key(K.POINTS, card_id)
        stored = self.txn.get(key, db=self.store.accounts)
        self.txn.put(key, stored[:ACCOUNT_SIZE] + (NO_LOT if lot is None else encode(lot)), db=self.store.accounts)

    def add_to_lot(self, card_id: int, amount: int, txn_id: int):
        """Points in join the lot of their expiry day. The card's newest lot
        is stored inline, so a sale's earning writes no record of its own: a
        later expiry opens a new newest lot and the one before moves out to
        point_lots; an earlier one (a shorter validity) goes to point_lots."""
        expires_day = self.day + self.lot_validity_days
        newest = self.load_inline_lot(card_id)
        if newest is None or expires_day > newest.expires_day:
            if newest is not None:
                self.txn.put(lot_key(card_id, newest.expires_day), encode(newest), db=self.store.point_lots)
            newest = self.open_lot(card_id, expires_day, txn_id)
        if newest.expires_day == expires_day:
            newest.original += amount
            newest.remaining += amount
            self.save_inline_lot(card_id, newest)
            return
        key = lot_key(card_id, expires_day)
        lot = self.load(Lot, self.store.point_lots, key) or self.open_lot(card_id, expires_day, txn_id)
        lot.original += amount
        lot.remaining += amount
        self.txn.put(key, encode(lot), db=self.store.point_lots)

    def open_lot(self, card_id: int, expires_day: int, txn_id: int) -> Lot:
        """A new open lot, listed in lot_expiry; a lot of the same day closed
        earlier opens again."""
        key = lot_key(card_id, expires_day)
        lot = self.load(Lot, self.store.closed_lots, key)
        if lot is None:
            lot = Lot(card_id=card_id, expires_day=expires_day, earned_day=self.day, first_txn_id=txn_id)
        else:
            self.txn.delete(key, db=self.store.closed_lots)
        self.txn.put(lot_expiry_key(expires_day, card_id), b"", db=self.store.lot_expiry)
        return lot

    def take_from_lots(self, card_id: int, amount: int):
        left = amount
        for lot in self.open_lots(card_id):
            if left == 0:
                break
            taken = min(lot.remaining, left)
            lot.remaining -= taken
            left -= taken
            self.save_lot(lot)
        assert left == 0, "points balance and lots disagree"

    def save_lot(self, lot: Lot):
        """Write an open lot back where it is stored; one left empty closes."""
        newest = self.load_inline_lot(lot.card_id)
        inline = newest is not None and newest.expires_day == lot.expires_day
        key = lot_key(lot.card_id, lot.expires_day)
        if lot.remaining == 0:
            if inline:
                self.save_inline_lot(lot.card_id, None)
            else:
                self.txn.delete(key, db=self.store.point_lots)
            self.txn.delete(lot_expiry_key(lot.expires_day, lot.card_id), db=self.store.lot_expiry)
            self.txn.put(key, encode(lot), db=self.store.closed_lots)
        elif inline:
            self.save_inline_lot(lot.card_id, lot)
        else:
            self.txn.put(key, encode(lot), db=self.store.point_lots)

    def expirable(self, card_id: int, account: Account) -> int:
        """Points of the card's lots whose day has come (by the calendar, not
        a station's day), never below what open holds need."""
        due = sum(lot.remaining for lot in self.open_lots(card_id, expired_only=True))
        return max(0, min(due, account.balance - account.held))

    def expire_lots(self, card_id: int) -> int:
        """Expire what is left of the card's lots whose day has come. Runs
        before anything spends points, so that an expired point is never
        spent."""
        account = self.load_account(K.POINTS, card_id)
        if account is None:
            return 0
        amount = self.expirable(card_id, account)
        if amount > 0:
            self.post(0, 0, [(K.POINTS, card_id, K.POINTS_LIABILITY, 0, amount, Movement.EXPIRY, Reason.EXPIRY)])
        return amount

    def expire_points(self, op: Op) -> Result:
        if self.load_card(op.card_id) is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        expired = self.expire_lots(op.card_id)
        return self.result(op, R.APPROVED, card_id=op.card_id, amount=expired, **self.card_balances(op.card_id))

    def change_held(self, card_id: int, fleet: int, personal: int, points: int):
        """Add to (or, negative, release from) the held amounts of a card."""
        for kind, delta in ((K.FLEET, fleet), (K.PERSONAL, personal), (K.POINTS, points)):
            if delta == 0:
                continue
            account = self.load_account(kind, card_id)
            account.held += delta
            assert 0 <= account.held <= account.balance, "held out of range"
            self.save_account(account)

    # ------------------------------------------------------------ card rules

    def card_decline(self, card, station_id: int) -> int:
        """Why this card cannot pay at this station, or APPROVED."""
        if card is None:
            return R.CARD_NOT_FOUND
        if card.status != CardStatus.ACTIVE:
            return CARD_STATUS_DECLINES[card.status]
        if card.flags & CardFlag.RESTRICTED_STATIONS:
            allowed = self.txn.get(card_station_key(card.card_id, station_id), db=self.store.card_stations)
            if allowed is None:
                return R.CARD_NOT_ALLOWED_HERE
        if card.flags & CardFlag.RESTRICTED_DOMAINS:
            raw = self.txn.get(u32_key(station_id), db=self.store.station_domains)
            domain = 0 if raw is None else int.from_bytes(raw, "little")
            if self.txn.get(card_station_key(card.card_id, domain), db=self.store.card_domains) is None:
                return R.DOMAIN_NOT_ENABLED
        return R.APPROVED

    def enable_domain(self, op: Op) -> Result:
        """Enable an application domain (op.period) for a card; once one is,
        the card works only at stations of its enabled domains."""
        card = self.load_card(op.card_id)
        if card is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        card.flags |= CardFlag.RESTRICTED_DOMAINS
        self.save_card(card)
        self.txn.put(card_station_key(op.card_id, op.period), b"", db=self.store.card_domains)
        return self.result(op, R.APPROVED, card_id=op.card_id)

    def station_domain(self, op: Op) -> Result:
        """The application domain (op.period) a station belongs to."""
        self.txn.put(u32_key(op.station_id), op.period.to_bytes(4, "little"), db=self.store.station_domains)
        return self.result(op, R.APPROVED)

    def cancel_card(self, op: Op) -> Result:
        """Cancel a card: its fleet and personal balances become owed back to
        the holder (REFUND_PAYABLE, paid out outside the core), its points
        lapse to the points liability. Refused while holds are open."""
        card = self.load_card(op.card_id)
        if card is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        if card.status == CardStatus.CANCELLED:
            return self.result(op, R.CARD_CANCELLED, card_id=op.card_id)
        accounts = {kind: self.load_account(kind, op.card_id) for kind in (K.FLEET, K.PERSONAL, K.POINTS)}
        if any(account.held for account in accounts.values()):
            return self.result(op, R.CARD_HAS_HOLDS, card_id=op.card_id)
        postings = [
            (K.FLEET, op.card_id, K.REFUND_PAYABLE, op.card_id, accounts[K.FLEET].balance, Movement.CANCEL, Reason.CANCEL),
            (K.PERSONAL, op.card_id, K.REFUND_PAYABLE, op.card_id, accounts[K.PERSONAL].balance, Movement.CANCEL, Reason.CANCEL),
            (K.POINTS, op.card_id, K.POINTS_LIABILITY, 0, accounts[K.POINTS].balance, Movement.CANCEL, Reason.CANCEL),
        ]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT, card_id=op.card_id)
        txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings)
        card.status = CardStatus.CANCELLED
        self.save_card(card)
        refunded = accounts[K.FLEET].balance + accounts[K.PERSONAL].balance
        return self.result(op, R.APPROVED, txn_id=txn_id, card_id=op.card_id, amount=refunded, fleet=accounts[K.FLEET].balance,
                           personal=accounts[K.PERSONAL].balance, points_used=accounts[K.POINTS].balance)

    def spent_today(self, card: Card) -> int:
        """What counts against the day limit: the spend of the card's last
        day of spending, unless this operation's day is later. (A station
        still on the day before, while another's day is closed, counts the
        later day's spend too: stations cannot be played off to pass a limit.)"""
        return card.day_spent if card.day >= self.day else 0

    def limit_decline(self, card: Card, amount: int) -> int:
        if card.limit_per_txn and amount > card.limit_per_txn:
            return R.LIMIT_PER_TRANSACTION_EXCEEDED
        if card.limit_per_day and self.spent_today(card) + amount > card.limit_per_day:
            return R.LIMIT_PER_DAY_EXCEEDED
        return R.APPROVED

    def add_spent(self, card: Card, amount: int):
        card.day_spent = self.spent_today(card) + amount
        card.day = max(card.day, self.day)

    def return_spent(self, card_id: int, business_day: int, amount: int):
        """Give back day spend authorized on `business_day` but not taken."""
        if card_id == 0 or amount == 0:
            return
        card = self.load_card(card_id)
        if card.day == business_day:
            card.day_spent = max(0, card.day_spent - amount)
            self.save_card(card)

    # ------------------------------------------------------------ cards

    def open_card(self, op: Op) -> Result:
        if self.load_card(op.card_id) is not None:
            return self.result(op, R.CARD_EXISTS, card_id=op.card_id)
        card = Card(
            card_id=op.card_id,
            status=CardStatus.ACTIVE,
            card_type=op.card_status,
            limit_per_txn=op.limit_per_txn,
            limit_per_day=op.limit_per_day,
            opened_ms=self.now_ms,
        )
        self.save_card(card)
        for kind in (K.FLEET, K.PERSONAL, K.POINTS):
            self.save_account(Account(kind=kind, unit=unit_of(kind), owner=op.card_id))
        return self.result(op, R.APPROVED, card_id=op.card_id)

    def set_card_status(self, op: Op) -> Result:
        card = self.load_card(op.card_id)
        if card is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        if card.status == CardStatus.CANCELLED:
            return self.result(op, R.CARD_CANCELLED, card_id=op.card_id)
        card.status = op.card_status
        self.save_card(card)
        return self.result(op, R.APPROVED, card_id=op.card_id)

    def set_card_limits(self, op: Op) -> Result:
        card = self.load_card(op.card_id)
        if card is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        card.limit_per_txn = op.limit_per_txn
        card.limit_per_day = op.limit_per_day
        self.save_card(card)
        return self.result(op, R.APPROVED, card_id=op.card_id)

    def allow_station(self, op: Op) -> Result:
        card = self.load_card(op.card_id)
        if card is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        card.flags |= CardFlag.RESTRICTED_STATIONS
        self.save_card(card)
        self.txn.put(card_station_key(op.card_id, op.station_id), b"", db=self.store.card_stations)
        return self.result(op, R.APPROVED, card_id=op.card_id)

    def topup(self, op: Op) -> Result:
        card = self.load_card(op.card_id)
        if card is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        if card.status != CardStatus.ACTIVE:
            return self.result(op, CARD_STATUS_DECLINES[card.status], card_id=op.card_id)
        if op.account_kind == K.POINTS:
            source = (K.POINTS_LIABILITY, 0)
        else:
            source = (K.TOPUP_FUNDING, op.station_id)
        postings = [(*source, op.account_kind, op.card_id, op.amount, Movement.TOPUP, Reason.TOPUP)]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT, card_id=op.card_id)
        record = self.txn_draft(op, OpKind.TOPUP, TxnState.POSTED)
        record.txn_id = self.new_txn_id()
        legs = {
            K.FLEET: "fleet",
            K.PERSONAL: "personal",
            K.POINTS: "points_used",
        }
        leg = legs[op.account_kind]
        setattr(record, "held_" + leg, op.amount)
        setattr(record, "posted_" + leg, op.amount)
        self.save_txn(record)
        self.post(record.txn_id, op.station_id, postings)
        return self.result(
            op,
            R.APPROVED,
            txn_id=record.txn_id,
            card_id=op.card_id,
            amount=op.amount,
            **{leg: op.amount},
            **self.card_balances(op.card_id),
        )

    def txn_draft(self, op: Op, kind: int, state: int) -> Txn:
        """A transaction record without an id: ids are given only once every
        check has passed, so a decline consumes none."""
        return Txn(
            kind=kind,
            state=state,
            channel=op.channel,
            station_id=op.station_id,
            terminal_id=op.terminal_id,
            operator_id=op.operator_id,
            business_day=self.day,
            serial=op.serial,
            card_id=op.card_id,
            ref_txn_id=op.ref_txn_id,
            created_ms=self.now_ms,
            amount=op.amount,
        )

    # ------------------------------------------------------------ pay

    def pay(self, op: Op) -> Result:
        card = None
        if op.card_id != 0:
            card = self.load_card(op.card_id)
            decline = self.card_decline(card, op.station_id)
            if decline == R.APPROVED:
                decline = self.limit_decline(card, op.amount)
            if decline != R.APPROVED:
                return self.sale_decline(op, decline)
        if card is not None and op.plan_flags & PlanFlag.USE_POINTS:
            self.expire_lots(op.card_id)
        fleet, personal, points_cash, points_used = self.split_internal(op, card)
        channel_amount = op.amount - fleet - personal - points_cash
        if channel_amount > 0 and op.channel == Channel.NONE:
            return self.sale_decline(op, R.INSUFFICIENT_FUNDS)
        record = self.txn_draft(op, OpKind.PAY, TxnState.HELD)
        record.channel = op.channel if channel_amount > 0 else Channel.NONE
        record.held_fleet = fleet
        record.held_personal = personal
        record.held_points_cash = points_cash
        record.held_points_used = points_used
        record.held_channel = channel_amount
        if card is not None:
            # Points are earned on what money paid, not on what points paid.
            record.points_earned = share(op.earn_points, op.amount - points_cash, op.amount)
        if channel_amount == 0 and not self.postings_fit(sale_postings(record)):
            return self.sale_decline(op, R.BALANCE_LIMIT)
        record.txn_id = self.new_txn_id()
        if card is not None:
            self.add_spent(card, op.amount)
            self.save_card(card)
        if channel_amount == 0:
            self.post_sale(record)
            self.save_txn(record)
            return self.sale_result(op, record, R.APPROVED)
        self.change_held(op.card_id, fleet, personal, points_used)
        self.save_txn(record)
        self.txn.put(u64_key(record.txn_id), b"", db=self.store.pending)
        return self.sale_result(op, record, R.PENDING)

    def split_internal(self, op: Op, card) -> tuple[int, int, int, int]:
        """Take from fleet, then personal, then points, each what it has."""
        if card is None:
            return 0, 0, 0, 0
        rest = op.amount
        fleet = personal = points_cash = points_used = 0
        if op.plan_flags & PlanFlag.USE_FLEET:
            fleet = min(rest, self.available(K.FLEET, op.card_id))
            rest -= fleet
        if op.plan_flags & PlanFlag.USE_PERSONAL:
            personal = min(rest, self.available(K.PERSONAL, op.card_id))
            rest -= personal
        if op.plan_flags & PlanFlag.USE_POINTS:
            points_available = min(self.available(K.POINTS, op.card_id), limits.POINTS_MAX)
            if op.points_max:
                points_available = min(points_available, op.points_max)
            points_cash = min(rest, cash_for_points(points_available, op.points_per_unit))
            points_used = points_for_cash(points_cash, op.points_per_unit)
        return fleet, personal, points_cash, points_used

    def post_sale(self, record: Txn):
        """Post a sale's held legs and its earned points; state POSTED."""
        for field in LEG_FIELDS:
            setattr(record, "posted_" + field, getattr(record, "held_" + field))
        self.post(record.txn_id, record.station_id, sale_postings(record, Reason.SALE))
        record.state = TxnState.POSTED

    def sale_result(self, op: Op, record: Txn, code: int) -> Result:
        return self.result(
            op,
            code,
            final=0 if code == R.PENDING else 1,
            txn_id=record.txn_id,
            card_id=record.card_id,
            amount=record.amount,
            **answer_legs(record),
            points_earned=record.points_earned if record.state == TxnState.POSTED else 0,
            **self.card_balances(record.card_id),
        )

    # ------------------------------------------------------------ channel

    def capture(self, op: Op) -> Result:
        """Phase 2 of a PAY or REFUND whose channel part succeeded."""
        record = self.load_txn(op.ref_txn_id)
        if record is None:
            return self.result(op, R.ORIGINAL_NOT_FOUND)
        self.day = self.station_day(record.station_id)
        code = self.channel_wait_decline(record)
        if code != R.APPROVED:
            return self.result(op, code, txn_id=record.txn_id)
        if record.kind == OpKind.REFUND:
            sale = self.load_txn(record.ref_txn_id)
            self.post_return(record, sale, record.amount, Reason.REFUND, record.points_per_unit)
            self.save_txn(sale)
        else:
            self.change_held(record.card_id, -record.held_fleet, -record.held_personal, -record.held_points_used)
            self.post_sale(record)
        self.save_txn(record)
        return self.finish_request(op, record, R.APPROVED)

    def abort(self, op: Op) -> Result:
        """Phase 2 of a PAY or REFUND whose channel part failed."""
        record = self.load_txn(op.ref_txn_id)
        if record is None:
            return self.result(op, R.ORIGINAL_NOT_FOUND)
        self.day = self.station_day(record.station_id)
        code = self.channel_wait_decline(record)
        if code != R.APPROVED:
            return self.result(op, code, txn_id=record.txn_id)
        if record.kind == OpKind.REFUND:
            sale = self.load_txn(record.ref_txn_id)
            for field in LEG_FIELDS:
                setattr(sale, "refunded_" + field, getattr(sale, "refunded_" + field) - getattr(record, "held_" + field))
            self.save_txn(sale)
        else:
            self.release_hold(record)
        record.state = TxnState.ABORTED
        self.save_txn(record)
        return self.finish_request(op, record, op.abort_code)

    def channel_wait_decline(self, record: Txn) -> int:
        """Why a CAPTURE or ABORT cannot settle `record`, or APPROVED. Either
        way the transaction stops waiting for its channel."""
        if record.kind not in (OpKind.PAY, OpKind.REFUND):
            return R.WRONG_TRANSACTION_KIND
        self.txn.delete(u64_key(record.txn_id), db=self.store.pending)
        if record.flags & TxnFlag.REVERSED:
            return R.ALREADY_REVERSED
        if record.state != TxnState.HELD:
            return R.HOLD_CLOSED
        return R.APPROVED

    def finish_request(self, op: Op, record: Txn, code: int) -> Result:
        """Store the final answer of the request that waited for its channel."""
        original_op = Op(kind=record.kind, station_id=record.station_id)
        if record.kind == OpKind.REFUND:
            result = self.refund_result(original_op, record, code)
        else:
            result = self.sale_result(original_op, record, code)
        entry = self.load_idem(record.terminal_id, record.serial)
        if entry is not None:
            self.save_idem(record.terminal_id, record.serial, Idem(entry.fingerprint, result))
        return result

    def release_hold(self, record: Txn):
        self.change_held(record.card_id, -record.held_fleet, -record.held_personal, -record.held_points_used)
        self.return_spent(record.card_id, record.business_day, record.amount)
        self.return_counters(record.txn_id)

    # ------------------------------------------------------------ pre-auth

    def preauth(self, op: Op) -> Result:
        card = self.load_card(op.card_id)
        decline = self.card_decline(card, op.station_id)
        if decline == R.APPROVED:
            decline = self.limit_decline(card, op.amount)
        if decline != R.APPROVED:
            return self.sale_decline(op, decline)
        fleet = min(op.amount, self.available(K.FLEET, op.card_id))
        personal = op.amount - fleet
        if personal > self.available(K.PERSONAL, op.card_id):
            return self.sale_decline(op, R.INSUFFICIENT_FUNDS)
        record = self.txn_draft(op, OpKind.PREAUTH, TxnState.HELD)
        record.txn_id = self.new_txn_id()
        record.held_fleet = fleet
        record.held_personal = personal
        record.expires_ms = self.now_ms + op.hold_timeout_s * 1000
        self.add_spent(card, op.amount)
        self.save_card(card)
        self.change_held(op.card_id, fleet, personal, 0)
        self.save_txn(record)
        self.txn.put(hold_expiry_key(record.expires_ms, record.txn_id), b"", db=self.store.hold_expiry)
        return self.sale_result(op, record, R.APPROVED)

    def open_hold(self, op: Op):
        """The pre-authorization `op` acts on, or why it cannot be touched."""
        record = self.load_txn(op.ref_txn_id)
        if record is None:
            return None, R.ORIGINAL_NOT_FOUND
        if record.kind != OpKind.PREAUTH:
            return record, R.WRONG_TRANSACTION_KIND
        if record.station_id != op.station_id:
            return record, R.STATION_MISMATCH
        if record.flags & TxnFlag.REVERSED:
            return record, R.ALREADY_REVERSED
        if record.state == TxnState.EXPIRED:
            return record, R.HOLD_EXPIRED
        if record.state != TxnState.HELD:
            return record, R.HOLD_CLOSED
        if self.now_ms >= record.expires_ms:
            self.expire_hold(record)
            return record, R.HOLD_EXPIRED
        return record, R.APPROVED

    def expire_hold(self, record: Txn):
        self.release_hold(record)
        record.state = TxnState.EXPIRED
        self.save_txn(record)
        self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.store.hold_expiry)

    def complete(self, op: Op) -> Result:
        record, code = self.open_hold(op)
        if code != R.APPROVED:
            return self.result(op, code, txn_id=0 if record is None else record.txn_id)
        if op.amount > record.held_fleet + record.held_personal:
            return self.result(op, R.AMOUNT_EXCEEDS_HOLD, txn_id=record.txn_id)
        self.change_held(record.card_id, -record.held_fleet, -record.held_personal, 0)
        self.return_spent(record.card_id, record.business_day, record.amount - op.amount)
        record.posted_fleet = min(op.amount, record.held_fleet)
        record.posted_personal = op.amount - record.posted_fleet
        record.points_earned = op.earn_points
        self.post(record.txn_id, record.station_id, sale_postings(_posted_view(record), Reason.COMPLETE))
        record.state = TxnState.POSTED
        self.save_txn(record)
        self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.store.hold_expiry)
        result = self.sale_result(op, record, R.APPROVED)
        result.amount = op.amount
        return result

    def release(self, op: Op) -> Result:
        record, code = self.open_hold(op)
        if code != R.APPROVED:
            return self.result(op, code, txn_id=0 if record is None else record.txn_id)
        self.release_hold(record)
        record.state = TxnState.RELEASED
        self.save_txn(record)
        self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.store.hold_expiry)
        return self.result(
            op,
            R.APPROVED,
            txn_id=record.txn_id,
            card_id=record.card_id,
            amount=record.held_fleet + record.held_personal,
            fleet=record.held_fleet,
            personal=record.held_personal,
            **self.card_balances(record.card_id),
        )

    def expire_due_holds(self) -> int:
        """Expire up to EXPIRE_SWEEP_HOLDS_MAX holds whose time has come,
        soonest first; the number expired."""
        cursor = self.txn.cursor(db=self.store.hold_expiry)
        due = []
        if cursor.first():
            for key in cursor.iternext(keys=True, values=False):
                expires_ms, txn_id = parse_hold_expiry_key(key)
                if expires_ms > self.now_ms or len(due) == limits.EXPIRE_SWEEP_HOLDS_MAX:
                    break
                due.append(txn_id)
        cursor.close()
        for txn_id in due:
            self.expire_hold(self.load_txn(txn_id))
        return len(due)

    def expire_holds(self, op: Op) -> Result:
        """The sweep of holds nobody touches: each batch expires those due
        before its first operation, this what was left beyond the bound."""
        return self.result(op, R.APPROVED, amount=self.expire_due_holds())

    # ------------------------------------------------------------ undo

    def reverse(self, op: Op) -> Result:
        """Undo the request with serial `ref_serial`, whether or not it came.
        APPROVED only when something was undone; else what was found."""
        original = self.load_idem(op.terminal_id, op.ref_serial)
        if original is None:
            self.save_idem(op.terminal_id, op.ref_serial, Idem(TOMBSTONE_FINGERPRINT, Result(code=R.ALREADY_REVERSED, business_day=self.day)))
            return self.result(op, R.ORIGINAL_NOT_SEEN)
        answer = original.result
        if original.fingerprint == TOMBSTONE_FINGERPRINT:
            return self.result(op, R.ORIGINAL_NOT_SEEN)
        if answer.kind not in REVERSIBLE_KINDS:
            return self.result(op, R.NOT_REVERSIBLE, txn_id=answer.txn_id)
        if answer.code not in (R.APPROVED, R.PENDING):
            return self.result(op, R.ORIGINAL_DECLINED, txn_id=answer.txn_id)
        record = self.load_txn(answer.txn_id)
        code = nothing_to_reverse(record)
        if code != R.APPROVED:
            return self.result(op, code, txn_id=record.txn_id)
        if refunded_total(record) != 0:
            return self.result(op, R.NOT_REVERSIBLE, txn_id=record.txn_id)
        if record.kind == OpKind.TOPUP:
            return self.reverse_topup(op, record)
        if record.state == TxnState.HELD:
            self.release_hold(record)
            if record.kind == OpKind.PREAUTH:
                record.state = TxnState.RELEASED
                self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.store.hold_expiry)
            else:
                # A payment waiting for its channel: the channel's answer will
                # find it reversed (see capture) and the pending entry stays
                # until then, so a restart still settles the channel side.
                record.state = TxnState.ABORTED
                self.save_idem(record.terminal_id, record.serial, Idem(original.fingerprint, self.sale_result(Op(kind=record.kind), record, R.ALREADY_REVERSED)))
            record.flags |= TxnFlag.REVERSED
            self.save_txn(record)
            return self.undo_result(op, record)
        return self.undo_posted(op, record, TxnFlag.REVERSED, Reason.REVERSAL)

    def reverse_topup(self, op: Op, record: Txn) -> Result:
        kind, amount = topup_leg(record)
        if kind == K.POINTS:
            self.expire_lots(record.card_id)
        if self.available(kind, record.card_id) < amount:
            return self.result(op, R.INSUFFICIENT_FUNDS, txn_id=record.txn_id, card_id=record.card_id)
        source = (K.POINTS_LIABILITY, 0) if kind == K.POINTS else (K.TOPUP_FUNDING, record.station_id)
        postings = [(kind, record.card_id, *source, amount, Movement.TOPUP, Reason.REVERSAL)]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT, txn_id=record.txn_id, card_id=record.card_id)
        self.post(record.txn_id, record.station_id, postings)
        self.return_counters(record.txn_id)
        record.flags |= TxnFlag.REVERSED
        self.save_txn(record)
        return self.result(op, R.APPROVED, txn_id=record.txn_id, card_id=record.card_id, amount=amount, **self.card_balances(record.card_id))

    def void(self, op: Op) -> Result:
        record, code = self.posted_sale(op)
        if code == R.APPROVED and refunded_total(record) != 0:
            code = R.ALREADY_REFUNDED
        # A closed day first: after DAY_END the station is on the next day,
        # and "closed" says more than "not the same day".
        if code == R.APPROVED and record.business_day <= self.closed_day(record.station_id):
            code = R.DAY_CLOSED
        if code == R.APPROVED and record.business_day != self.day:
            code = R.VOID_NOT_SAME_DAY
        if code != R.APPROVED:
            return self.result(op, code, txn_id=0 if record is None else record.txn_id)
        return self.undo_posted(op, record, TxnFlag.VOIDED, Reason.VOID)

    def posted_sale(self, op: Op):
        """The posted sale a VOID or REFUND acts on, or why it cannot."""
        record = self.load_txn(op.ref_txn_id)
        if record is None:
            return None, R.ORIGINAL_NOT_FOUND
        if record.kind not in (OpKind.PAY, OpKind.PREAUTH):
            return record, R.WRONG_TRANSACTION_KIND
        if record.station_id != op.station_id:
            return record, R.STATION_MISMATCH
        if record.flags & TxnFlag.REVERSED:
            return record, R.ALREADY_REVERSED
        if record.flags & TxnFlag.VOIDED:
            return record, R.ALREADY_VOIDED
        if record.state != TxnState.POSTED:
            return record, R.TRANSACTION_NOT_POSTED
        return record, R.APPROVED

    def undo_posted(self, op: Op, record: Txn, flag: int, reason: int) -> Result:
        """Return everything a posted sale took, and its earned points."""
        amount = posted_total(record)
        undo = Txn(txn_id=record.txn_id, card_id=record.card_id, station_id=record.station_id, channel=record.channel, amount=amount)
        for field in LEG_FIELDS:
            setattr(undo, "held_" + field, getattr(record, "posted_" + field))
        if not self.postings_fit(return_postings(undo, 0)):
            return self.result(op, R.BALANCE_LIMIT, txn_id=record.txn_id)
        self.post_return(undo, record, amount, reason, op.points_per_unit)
        record.shortfall_settled = undo.shortfall_settled
        self.return_spent(record.card_id, record.business_day, amount)
        self.return_counters(record.txn_id)
        record.flags |= flag
        self.save_txn(record)
        return self.undo_result(op, undo)

    def undo_result(self, op: Op, record: Txn) -> Result:
        """What a reversal or void gave back: a posted return's legs, or the
        released legs of a hold."""
        prefix = "posted_" if record.state == TxnState.POSTED else "held_"
        return self.result(
            op,
            R.APPROVED,
            txn_id=record.txn_id,
            card_id=record.card_id,
            amount=leg_total(record, prefix),
            fleet=getattr(record, prefix + "fleet"),
            personal=getattr(record, prefix + "personal"),
            points_cash=getattr(record, prefix + "points_cash"),
            points_used=getattr(record, prefix + "points_used"),
            channel_amount=getattr(record, prefix + "channel"),
            points_clawed_back=record.points_clawed_back,
            shortfall_settled=record.shortfall_settled,
            **self.card_balances(record.card_id),
        )

    # ------------------------------------------------------------ refund

    def refund(self, op: Op) -> Result:
        sale, code = self.posted_sale(op)
        if code == R.APPROVED and refunded_total(sale) + op.amount > posted_total(sale):
            code = R.REFUND_EXCEEDS_PAID
        if code != R.APPROVED:
            return self.result(op, code, txn_id=0 if sale is None else sale.txn_id)
        record = self.txn_draft(op, OpKind.REFUND, TxnState.HELD)
        record.card_id = sale.card_id
        record.channel = sale.channel
        record.points_per_unit = op.points_per_unit
        rest = op.amount
        for field in ("fleet", "personal", "points_cash", "channel"):
            part = min(rest, getattr(sale, "posted_" + field) - getattr(sale, "refunded_" + field))
            setattr(record, "held_" + field, part)
            rest -= part
        if sale.posted_points_cash:
            cash_after = sale.refunded_points_cash + record.held_points_cash
            record.held_points_used = sale.posted_points_used * cash_after // sale.posted_points_cash - sale.refunded_points_used
        if not self.postings_fit(return_postings(record, 0)):
            return self.result(op, R.BALANCE_LIMIT, txn_id=sale.txn_id)
        record.txn_id = self.new_txn_id()
        for field in LEG_FIELDS:
            setattr(sale, "refunded_" + field, getattr(sale, "refunded_" + field) + getattr(record, "held_" + field))
        if record.held_channel == 0:
            self.post_return(record, sale, op.amount, Reason.REFUND, op.points_per_unit)
            code = R.APPROVED
        else:
            self.txn.put(u64_key(record.txn_id), b"", db=self.store.pending)
            code = R.PENDING
        self.save_txn(sale)
        self.save_txn(record)
        return self.refund_result(op, record, code)

    def refund_result(self, op: Op, record: Txn, code: int) -> Result:
        return self.result(
            op,
            code,
            final=0 if code == R.PENDING else 1,
            txn_id=record.txn_id,
            card_id=record.card_id,
            amount=record.amount,
            **answer_legs(record),
            points_clawed_back=record.points_clawed_back,
            shortfall_settled=record.shortfall_settled,
            **self.card_balances(record.card_id),
        )

    def post_return(self, record: Txn, sale: Txn, amount: int, reason: int, points_per_unit: int):
        """Post the return of `record`'s legs (a refund, or an undo of all of
        `sale`) and take back the share of earned points that `amount` of
        refunds entitles, as far as the points account allows. Points already
        spent (the shortfall) are settled from the returned money at
        `points_per_unit`, rounded down, from the fleet then the personal leg;
        what those legs cannot cover stays recorded as shortfall."""
        refunds_after = sale.refunds_posted + amount
        claw_target = share(sale.points_earned, refunds_after, posted_total(sale)) - sale.points_clawed_back - sale.points_shortfall
        points_free = 0
        if sale.card_id:
            self.expire_lots(sale.card_id)
            points_free = self.available(K.POINTS, sale.card_id) + record.held_points_used
        claw = min(claw_target, points_free)
        shortfall = claw_target - claw
        settled = 0
        if points_per_unit:
            settled = min(share(shortfall, 100, points_per_unit), record.held_fleet + record.held_personal)
        for field in LEG_FIELDS:
            setattr(record, "posted_" + field, getattr(record, "held_" + field))
        from_fleet = min(settled, record.posted_fleet)
        record.posted_fleet -= from_fleet
        record.posted_personal -= settled - from_fleet
        record.points_clawed_back = claw
        record.points_shortfall = shortfall
        record.shortfall_settled = settled
        sale.points_clawed_back += claw
        sale.points_shortfall += shortfall
        sale.refunds_posted = refunds_after
        record.state = TxnState.POSTED
        postings = return_postings(_posted_view(record), claw, reason)
        postings.append((K.STATION_RECEIVABLE, sale.station_id, K.POINTS_FUNDING, 0, settled, Movement.SHORTFALL, reason))
        self.post(record.txn_id, sale.station_id, postings)

    # ------------------------------------------------------------ loyalty

    def load_member(self, card_id: int) -> Member:
        """The card's loyalty state; a card that never had one is REGULAR in UTC."""
        member = self.load(Member, self.store.members, u64_key(card_id))
        return member if member is not None else Member(card_id=card_id, tier=Tier.REGULAR)

    def save_member(self, member: Member):
        self.txn.put(u64_key(member.card_id), encode(member), db=self.store.members)

    def local_day(self, member: Member) -> int:
        return (self.now_ms + member.tz_offset_minutes * 60_000) // MS_PER_DAY

    def active_card_decline(self, card_id: int) -> int:
        card = self.load_card(card_id)
        if card is None:
            return R.CARD_NOT_FOUND
        if card.status != CardStatus.ACTIVE:
            return CARD_STATUS_DECLINES[card.status]
        return R.APPROVED

    def grant_points(self, op: Op, points: int, movement: int) -> Result:
        """Give `points` from the points liability: check-ins, tasks."""
        postings = [(K.POINTS_LIABILITY, 0, K.POINTS, op.card_id, points, movement, Reason.LOYALTY)]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT, card_id=op.card_id)
        txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings)
        return self.result(op, R.APPROVED, txn_id=txn_id, card_id=op.card_id, amount=points, points_earned=points, **self.card_balances(op.card_id))

    def set_member(self, op: Op) -> Result:
        if self.load_card(op.card_id) is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        member = self.load_member(op.card_id)
        member.tz_offset_minutes = op.tz_offset_minutes
        self.save_member(member)
        return self.result(op, R.APPROVED, card_id=op.card_id)

    def checkin(self, op: Op) -> Result:
        """Points for today's check-in (once a local day), and a bonus on every
        `period`-th day in a row."""
        decline = self.active_card_decline(op.card_id)
        if decline != R.APPROVED:
            return self.result(op, decline, card_id=op.card_id)
        member = self.load_member(op.card_id)
        today = self.local_day(member)
        if member.checkin_streak and member.checkin_day == today:
            return self.result(op, R.ALREADY_CHECKED_IN, card_id=op.card_id)
        streak = member.checkin_streak + 1 if member.checkin_streak and member.checkin_day + 1 == today else 1
        bonus = op.bonus_points if op.period and streak % op.period == 0 else 0
        result = self.grant_points(op, op.amount + bonus, Movement.CHECKIN) if op.amount + bonus else self.result(op, R.APPROVED, card_id=op.card_id)
        if result.code == R.APPROVED:
            member.checkin_day = today
            member.checkin_streak = streak
            self.save_member(member)
        return result

    def task(self, op: Op) -> Result:
        """Points for a task, up to a cap per local day (bonus_points; 0: none)."""
        decline = self.active_card_decline(op.card_id)
        if decline != R.APPROVED:
            return self.result(op, decline, card_id=op.card_id)
        member = self.load_member(op.card_id)
        today = self.local_day(member)
        earned_today = member.task_points_today if member.task_day == today else 0
        award = op.amount if op.bonus_points == 0 else min(op.amount, op.bonus_points - earned_today)
        if award <= 0:
            return self.result(op, R.TASK_CAP_REACHED, card_id=op.card_id)
        result = self.grant_points(op, award, Movement.TASK)
        if result.code == R.APPROVED:
            member.task_day = today
            member.task_points_today = earned_today + award
            self.save_member(member)
        return result

    def set_tier(self, op: Op) -> Result:
        if self.load_card(op.card_id) is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        member = self.load_member(op.card_id)
        if member.tier != op.tier:
            number = self.count_prefix(self.store.tier_changes, u64_key(op.card_id))
            change = TierChange(card_id=op.card_id, day=self.day, old_tier=member.tier, new_tier=op.tier, reason=op.reason, spend_minor=op.amount)
            self.txn.put(tier_change_key(op.card_id, number), encode(change), db=self.store.tier_changes)
            member.tier = op.tier
            self.save_member(member)
        return self.result(op, R.APPROVED, card_id=op.card_id)

    def count_prefix(self, db, prefix: bytes) -> int:
        count = 0
        cursor = self.txn.cursor(db=db)
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix):
                    break
                count += 1
        cursor.close()
        return count

    def load_gift(self, gift_id: int):
        return self.load(Gift, self.store.gifts, u64_key(gift_id))

    def gift_set(self, op: Op) -> Result:
        """Create or change a gift's terms; its stock and count stay."""
        gift = self.load_gift(op.item_id) or Gift(gift_id=op.item_id)
        gift.points_price = op.amount
        gift.cash_price = op.bonus_points
        gift.per_customer_limit = op.count_limit
        gift.tier_mask = op.tier
        gift.valid_from_day = op.period_start
        gift.valid_to_day = op.period
        self.txn.put(u64_key(gift.gift_id), encode(gift), db=self.store.gifts)
        return self.result(op, R.APPROVED, amount=gift.stock)

    def gift_stock(self, op: Op) -> Result:
        gift = self.load_gift(op.item_id)
        if gift is None:
            return self.result(op, R.GIFT_NOT_FOUND)
        if gift.stock + op.amount < 0:
            return self.result(op, R.GIFT_OUT_OF_STOCK, amount=gift.stock)
        gift.stock += op.amount
        self.txn.put(u64_key(gift.gift_id), encode(gift), db=self.store.gifts)
        return self.result(op, R.APPROVED, amount=gift.stock)

    def redeem(self, op: Op) -> Result:
        """A gift for points (plus cash from the personal account). Stock and
        the customer's count are checked and taken here, in the write
        transaction, so no concurrency can oversell."""
        card = self.load_card(op.card_id)
        decline = self.card_decline(card, op.station_id)
        if decline != R.APPROVED:
            return self.result(op, decline, card_id=op.card_id)
        gift = self.load_gift(op.item_id)
        if gift is None:
            return self.result(op, R.GIFT_NOT_FOUND, card_id=op.card_id)
        if self.day < gift.valid_from_day or (gift.valid_to_day and self.day > gift.valid_to_day):
            return self.result(op, R.GIFT_NOT_AVAILABLE, card_id=op.card_id)
        member = self.load_member(op.card_id)
        if gift.tier_mask and not (gift.tier_mask >> member.tier) & 1:
            return self.result(op, R.TIER_NOT_ALLOWED, card_id=op.card_id)
        if gift.stock < op.amount:
            return self.result(op, R.GIFT_OUT_OF_STOCK, card_id=op.card_id)
        count_key = gift_count_key(op.item_id, op.card_id)
        raw = self.txn.get(count_key, db=self.store.gift_counts)
        count = 0 if raw is None else int.from_bytes(raw, "little")
        if gift.per_customer_limit and count + op.amount > gift.per_customer_limit:
            return self.result(op, R.GIFT_LIMIT_REACHED, card_id=op.card_id)
        self.expire_lots(op.card_id)
        points = gift.points_price * op.amount
        cash = gift.cash_price * op.amount
        if self.available(K.POINTS, op.card_id) < points:
            return self.result(op, R.INSUFFICIENT_POINTS, card_id=op.card_id)
        if self.available(K.PERSONAL, op.card_id) < cash:
            return self.result(op, R.INSUFFICIENT_FUNDS, card_id=op.card_id)
        postings = [
            (K.POINTS, op.card_id, K.POINTS_LIABILITY, 0, points, Movement.GIFT, Reason.LOYALTY),
            (K.PERSONAL, op.card_id, K.STATION_RECEIVABLE, op.station_id, cash, Movement.GIFT, Reason.LOYALTY),
        ]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT, card_id=op.card_id)
        txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings)
        gift.stock -= op.amount
        gift.redeemed += op.amount
        self.txn.put(u64_key(gift.gift_id), encode(gift), db=self.store.gifts)
        self.txn.put(count_key, (count + op.amount).to_bytes(4, "little"), db=self.store.gift_counts)
        return self.result(
            op, R.APPROVED, txn_id=txn_id, card_id=op.card_id, amount=cash, personal=cash, points_used=points, **self.card_balances(op.card_id)
        )

    def partner_exchange(self, op: Op) -> Result:
        """Partner points in, at earn_points / period: into standard points
        (reason 0), whose value the partner owes the points funding at
        points_per_unit, or into cash on the personal account (reason 1)."""
        decline = self.active_card_decline(op.card_id)
        if decline != R.APPROVED:
            return self.result(op, decline, card_id=op.card_id)
        converted = share(op.amount, op.earn_points, op.period)
        if converted == 0:
            return self.result(op, R.INSUFFICIENT_POINTS, card_id=op.card_id)
        partner = (K.PARTNER_CLEARING, op.item_id)
        if op.reason == 1:
            postings = [(*partner, K.PERSONAL, op.card_id, converted, Movement.PARTNER, Reason.LOYALTY)]
        else:
            value = share(converted, 100, op.points_per_unit)
            postings = [
                (K.POINTS_LIABILITY, 0, K.POINTS, op.card_id, converted, Movement.PARTNER, Reason.LOYALTY),
                (*partner, K.POINTS_FUNDING, 0, value, Movement.PARTNER, Reason.LOYALTY),
            ]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT, card_id=op.card_id)
        txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings)
        fields = {"personal": converted} if op.reason == 1 else {"points_earned": converted}
        return self.result(op, R.APPROVED, txn_id=txn_id, card_id=op.card_id, amount=op.amount, **fields, **self.card_balances(op.card_id))

    def extend_lots(self, op: Op) -> Result:
        """Move every open lot's expiry `amount` days later, once per month
        (`period`), for a month whose spend qualified (the job decides)."""
        if self.load_card(op.card_id) is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        member = self.load_member(op.card_id)
        if member.extended_month == op.period:
            return self.result(op, R.APPROVED, card_id=op.card_id, amount=0)
        # Every lot moves by the same days, so no two meet and the newest
        # stays the newest (inline): remove all, then put each back under its
        # new expiry.
        lots = self.open_lots(op.card_id)
        stored = lots[:-1] if self.load_inline_lot(op.card_id) is not None else lots
        for lot in lots:
            self.txn.delete(lot_expiry_key(lot.expires_day, op.card_id), db=self.store.lot_expiry)
        for lot in stored:
            self.txn.delete(lot_key(op.card_id, lot.expires_day), db=self.store.point_lots)
        for lot in lots:
            lot.expires_day += op.amount
            self.txn.put(lot_expiry_key(lot.expires_day, op.card_id), b"", db=self.store.lot_expiry)
        for lot in stored:
            self.txn.put(lot_key(op.card_id, lot.expires_day), encode(lot), db=self.store.point_lots)
        if len(stored) < len(lots):
            self.save_inline_lot(op.card_id, lots[-1])
        member.extended_month = op.period
        self.save_member(member)
        return self.result(op, R.APPROVED, card_id=op.card_id, amount=len(lots))

    def clear_lots(self, op: Op) -> Result:
        """The yearly clearance: what is left of lots earned before
        `period_start` expires now, once per year (`period`)."""
        if self.load_card(op.card_id) is None:
            return self.result(op, R.CARD_NOT_FOUND, card_id=op.card_id)
        member = self.load_member(op.card_id)
        if member.cleared_year == op.period:
            return self.result(op, R.APPROVED, card_id=op.card_id, amount=0)
        old = sum(lot.remaining for lot in self.open_lots(op.card_id) if lot.earned_day < op.period_start)
        account = self.load_account(K.POINTS, op.card_id)
        amount = min(old, account.balance - account.held)
        if amount > 0:
            self.post(0, 0, [(K.POINTS, op.card_id, K.POINTS_LIABILITY, 0, amount, Movement.EXPIRY, Reason.EXPIRY)])
        member.cleared_year = op.period
        self.save_member(member)
        return self.result(op, R.APPROVED, card_id=op.card_id, amount=max(amount, 0), **self.card_balances(op.card_id))

    # ------------------------------------------------------------ shifts and days

    def load_shift(self, terminal_id: int):
        return self.load(Shift, self.store.shifts, u32_key(terminal_id))

    def save_shift(self, shift: Shift):
        self.txn.put(u32_key(shift.terminal_id), encode(shift), db=self.store.shifts)

    def shift_closed(self, terminal_id: int) -> bool:
        """A terminal that signed on and then closed its shift takes no more
        sales until it signs on again; one that never signed on is free."""
        shift = self.load_shift(terminal_id)
        return shift is not None and shift.state == ShiftState.CLOSED

    def sign_on(self, op: Op) -> Result:
        shift = self.load_shift(op.terminal_id)
        if shift is not None and shift.state == ShiftState.OPEN:
            return self.result(op, R.SHIFT_ALREADY_OPEN, txn_id=shift.shift_id)
        shift_id = self.new_txn_id()
        shift = Shift(
            terminal_id=op.terminal_id,
            station_id=op.station_id,
            operator_id=op.operator_id,
            state=ShiftState.OPEN,
            shift_id=shift_id,
            opened_ms=self.now_ms,
            first_txn_id=shift_id,
        )
        self.save_shift(shift)
        return self.result(op, R.APPROVED, txn_id=shift_id)

    def shift_close(self, op: Op) -> Result:
        shift = self.load_shift(op.terminal_id)
        if shift is None or shift.state != ShiftState.OPEN:
            return self.result(op, R.SHIFT_NOT_OPEN)
        shift.state = ShiftState.CLOSED
        shift.closed_ms = self.now_ms
        shift.last_txn_id = self.next_txn_id - 1
        self.save_shift(shift)
        return self.result(op, R.APPROVED, txn_id=shift.shift_id, amount=shift.last_txn_id)

    def closed_day(self, station_id: int) -> int:
        raw = self.txn.get(u32_key(station_id), db=self.store.day_ends)
        return -1 if raw is None else int.from_bytes(raw, "little")

    def station_day(self, station_id: int) -> int:
        """The business day of an operation at this station: the calendar's,
        or the next day once the station has closed the calendar's (a sale
        after DAY_END belongs to the next day); never further ahead
        (limits.STATION_DAY_AHEAD_MAX). Station 0 (operations of no
        station) takes the calendar's."""
        if station_id != 0 and self.closed_day(station_id) >= self.calendar_day:
            return self.calendar_day + limits.STATION_DAY_AHEAD_MAX
        return self.calendar_day

    def day_end(self, op: Op) -> Result:
        """Close business day `period` at the station (days only move forward)."""
        closed = max(self.closed_day(op.station_id), op.period)
        self.txn.put(u32_key(op.station_id), closed.to_bytes(4, "little"), db=self.store.day_ends)
        return self.result(op, R.APPROVED, amount=closed)

    # ------------------------------------------------------------ counters

    def counter_value(self, key: bytes) -> int:
        value = self.txn.get(key, db=self.store.counters)
        return 0 if value is None else COUNTER_VALUE.unpack(value)[0]

    def save_counter(self, key: bytes, value: int):
        self.txn.put(key, COUNTER_VALUE.pack(value), db=self.store.counters)

    def counters_refusal(self, takes: list[Op]):
        """(index, code) of the first take that would leave its bounds, with
        the takes before it counted; None when all fit."""
        values = {}
        for index, op in enumerate(takes):
            key = counter_key(op.account_kind, op.item_id, op.card_id, op.period)
            value = values.get(key, self.counter_value(key)) + op.amount
            if value < 0:
                return index, R.COUNTER_EXHAUSTED
            if value > (op.limit_per_day or limits.COUNTER_CEILING_MAX):
                return index, R.COUNTER_LIMIT_REACHED
            values[key] = value
        return None

    def take_counters(self, takes: list[Op], returned_by: int) -> list[int]:
        """Add every take; remember them under `returned_by` (a transaction
        id, 0 for none) so that undoing it gives them back."""
        values = []
        entries = b""
        for op in takes:
            key = counter_key(op.account_kind, op.item_id, op.card_id, op.period)
            value = self.counter_value(key) + op.amount
            self.save_counter(key, value)
            values.append(value)
            entries += TXN_COUNTER_ENTRY.pack(key, op.amount)
        if returned_by and entries:
            before = self.txn.get(u64_key(returned_by), db=self.store.txn_counters) or b""
            self.txn.put(u64_key(returned_by), before + entries, db=self.store.txn_counters)
        return values

    def return_counters(self, txn_id: int):
        """Give back what a voided, reversed, released or aborted
        transaction took; a counter may go below zero (chances already used)."""
        entries = self.txn.get(u64_key(txn_id), db=self.store.txn_counters)
        if entries is None:
            return
        for key, delta in TXN_COUNTER_ENTRY.iter_unpack(entries):
            self.save_counter(key, self.counter_value(key) - delta)
        self.txn.delete(u64_key(txn_id), db=self.store.txn_counters)

    def packet_claim(self, op: Op) -> Result:
        decline = self.card_decline(self.load_card(op.card_id), op.station_id)
        if decline != R.APPROVED:
            return self.result(op, decline, card_id=op.card_id)
        claimer = counter_key(CounterScope.PACKET_CLAIMER, op.item_id, op.card_id)
        if self.counter_value(claimer) >= 1:
            return self.result(op, R.PACKET_ALREADY_CLAIMED, card_id=op.card_id)
        claims = counter_key(CounterScope.PACKET_CLAIMS, op.item_id)
        index = self.counter_value(claims)
        share = None if index >= op.count_limit else self.txn.get(packet_share_key(op.item_id, index), db=self.store.packet_shares)
        if share is None:
            return self.result(op, R.PACKET_EMPTY, card_id=op.card_id)
        amount = PACKET_SHARE_VALUE.unpack(share)[0]
        if self.available(K.PROMOTION, op.item_id) < amount:
            return self.result(op, R.INSUFFICIENT_FUNDS, card_id=op.card_id)
        postings = [(K.PROMOTION, op.item_id, K.PERSONAL, op.card_id, amount, Movement.PROMOTION, Reason.PROMOTION)]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT, card_id=op.card_id)
        txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings)
        self.save_counter(claimer, 1)
        self.save_counter(claims, index + 1)
        return self.result(op, R.APPROVED, txn_id=txn_id, card_id=op.card_id, amount=amount, **self.card_balances(op.card_id))

    # ------------------------------------------------------------ general

    def open_account(self, op: Op) -> Result:
        if self.load_account(op.account_kind, op.account_owner) is not None:
            return self.result(op, R.ACCOUNT_EXISTS)
        self.save_account(Account(kind=op.account_kind, unit=unit_of(op.account_kind), owner=op.account_owner))
        return self.result(op, R.APPROVED)

    def transfer(self, op: Op) -> Result:
        for kind, owner in ((op.account_kind, op.account_owner), (op.credit_kind, op.credit_owner)):
            if not may_go_negative(kind) and self.load_account(kind, owner) is None:
                return self.result(op, R.ACCOUNT_NOT_FOUND)
        if not may_go_negative(op.account_kind) and self.available(op.account_kind, op.account_owner) < op.amount:
            return self.result(op, R.INSUFFICIENT_FUNDS)
        postings = [(op.account_kind, op.account_owner, op.credit_kind, op.credit_owner, op.amount, Movement.TRANSFER, Reason.TRANSFER)]
        if not self.postings_fit(postings):
            return self.result(op, R.BALANCE_LIMIT)
        txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings)
        return self.result(op, R.APPROVED, txn_id=txn_id, amount=op.amount)


LEG_FIELDS = ("fleet", "personal", "points_cash", "points_used", "channel")
ANSWER_LEG_NAMES = ("fleet", "personal", "points_cash", "points_used", "channel_amount")


def answer_legs(record: Txn) -> dict:
    """The legs an answer reports: posted, or held while waiting; none for a
    transaction that took nothing (aborted: its channel declined or did not
    answer, or it was reversed while waiting)."""
    if record.state == TxnState.POSTED:
        prefix = "posted_"
    elif record.state == TxnState.HELD:
        prefix = "held_"
    else:
        return {}
    return {name: getattr(record, prefix + field) for name, field in zip(ANSWER_LEG_NAMES, LEG_FIELDS)}


def nothing_to_reverse(record: Txn) -> int:
    """Why a reversal finds nothing to undo in `record`, or APPROVED."""
    if record.flags & TxnFlag.REVERSED:
        return R.ALREADY_REVERSED
    if record.flags & TxnFlag.VOIDED:
        return R.ALREADY_VOIDED
    if record.state == TxnState.RELEASED:
        return R.HOLD_CLOSED
    if record.state == TxnState.EXPIRED:
        return R.HOLD_EXPIRED
    if record.state == TxnState.ABORTED:
        return R.ORIGINAL_DECLINED
    return R.APPROVED


def _posted_view(record: Txn) -> Txn:
    """A copy whose held_* legs are `record`'s posted_* legs."""
    view = Txn(card_id=record.card_id, station_id=record.station_id, channel=record.channel, points_earned=record.points_earned)
    for field in LEG_FIELDS:
        setattr(view, "held_" + field, getattr(record, "posted_" + field))
    return view


def leg_total(record: Txn, prefix: str) -> int:
    """Money of the legs (points_used is points, not money: not counted)."""
    return sum(getattr(record, prefix + field) for field in ("fleet", "personal", "points_cash", "channel"))


def posted_total(record: Txn) -> int:
    return leg_total(record, "posted_")


def refunded_total(record: Txn) -> int:
    return leg_total(record, "refunded_")


def topup_leg(record: Txn) -> tuple[int, int]:
    if record.posted_fleet:
        return K.FLEET, record.posted_fleet
    if record.posted_personal:
        return K.PERSONAL, record.posted_personal
    return K.POINTS, record.posted_points_used


def sale_postings(record: Txn, reason: int = Reason.SALE):
    """The transfers of a sale's held legs, in payment order, then earning."""
    card, station = record.card_id, record.station_id
    return [
        (K.FLEET, card, K.STATION_RECEIVABLE, station, record.held_fleet, Movement.FLEET, reason),
        (K.PERSONAL, card, K.STATION_RECEIVABLE, station, record.held_personal, Movement.PERSONAL, reason),
        (K.POINTS, card, K.POINTS_LIABILITY, 0, record.held_points_used, Movement.POINTS, reason),
        (K.POINTS_FUNDING, 0, K.STATION_RECEIVABLE, station, record.held_points_cash, Movement.POINTS_CASH, reason),
        (K.CHANNEL_CLEARING, record.channel, K.STATION_RECEIVABLE, station, record.held_channel, Movement.CHANNEL, reason),
        (K.POINTS_LIABILITY, 0, K.POINTS, card, record.points_earned, Movement.EARN, reason),
    ]


def return_postings(record: Txn, points_clawed_back: int, reason: int = Reason.REFUND):
    """The transfers that give `record`'s held legs back, then take back
    `points_clawed_back` earned points."""
    card, station = record.card_id, record.station_id
    return [
        (K.STATION_RECEIVABLE, station, K.FLEET, card, record.held_fleet, Movement.FLEET, reason),
        (K.STATION_RECEIVABLE, station, K.PERSONAL, card, record.held_personal, Movement.PERSONAL, reason),
        (K.POINTS_LIABILITY, 0, K.POINTS, card, record.held_points_used, Movement.POINTS, reason),
        (K.STATION_RECEIVABLE, station, K.POINTS_FUNDING, 0, record.held_points_cash, Movement.POINTS_CASH, reason),
        (K.STATION_RECEIVABLE, station, K.CHANNEL_CLEARING, record.channel, record.held_channel, Movement.CHANNEL, reason),
        (K.POINTS, card, K.POINTS_LIABILITY, 0, points_clawed_back, Movement.EARN, reason),
    ]


HANDLERS = {
    OpKind.OPEN_CARD: _Batch.open_card,
    OpKind.SET_CARD_STATUS: _Batch.set_card_status,
    OpKind.SET_CARD_LIMITS: _Batch.set_card_limits,
    OpKind.ALLOW_STATION: _Batch.allow_station,
    OpKind.TOPUP: _Batch.topup,
    OpKind.PAY: _Batch.pay,
    OpKind.CAPTURE: _Batch.capture,
    OpKind.ABORT: _Batch.abort,
    OpKind.PREAUTH: _Batch.preauth,
    OpKind.COMPLETE: _Batch.complete,
    OpKind.RELEASE: _Batch.release,
    OpKind.REVERSE: _Batch.reverse,
    OpKind.VOID: _Batch.void,
    OpKind.REFUND: _Batch.refund,
    OpKind.EXPIRE_HOLDS: _Batch.expire_holds,
    OpKind.OPEN_ACCOUNT: _Batch.open_account,
    OpKind.EXPIRE_POINTS: _Batch.expire_points,
    OpKind.SET_MEMBER: _Batch.set_member,
    OpKind.CHECKIN: _Batch.checkin,
    OpKind.TASK: _Batch.task,
    OpKind.SET_TIER: _Batch.set_tier,
    OpKind.GIFT_SET: _Batch.gift_set,
    OpKind.GIFT_STOCK: _Batch.gift_stock,
    OpKind.REDEEM: _Batch.redeem,
    OpKind.PARTNER_EXCHANGE: _Batch.partner_exchange,
    OpKind.EXTEND_LOTS: _Batch.extend_lots,
    OpKind.CLEAR_LOTS: _Batch.clear_lots,
    OpKind.SIGN_ON: _Batch.sign_on,
    OpKind.SHIFT_CLOSE: _Batch.shift_close,
    OpKind.DAY_END: _Batch.day_end,
    OpKind.ENABLE_DOMAIN: _Batch.enable_domain,
    OpKind.STATION_DOMAIN: _Batch.station_domain,
    OpKind.CANCEL_CARD: _Batch.cancel_card,
    OpKind.TRANSFER: _Batch.transfer,
    OpKind.PACKET_CLAIM: _Batch.packet_claim,
}
