# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot path: a batch of operations applied inside one LMDB write transaction.

Owns: the same rules as core/reference.py, function for function, on C
structs. Every record a batch touches is read from LMDB once into a buffer
that the C code changes in place; at the end of the batch every changed
record is written back in key order with one putmulti per database (keys
past the last stored one appended). Cards, accounts, points lots, members
and gifts stay in memory for the next batch while no one else writes to the
store (see Kernel).
Used by: core.ledger (which falls back to the reference when this module is
not built). The property tests hold the two to identical results and bytes.

All divisions here have non-negative operands and non-zero divisors, so C
division (cdivision) equals Python's floor division.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy, memmove, memset

import gc
from bisect import bisect_right, insort
from operator import itemgetter

from core import counters as _counters
from core import limits as _limits
from core import records as _records
from core import results as _results

cdef extern from *:
    uint64_t bswap64 "__builtin_bswap64"(uint64_t)
    uint32_t bswap32 "__builtin_bswap32"(uint32_t)

# ------------------------------------------------------------ constants
# Numbers come from core.limits and core.results: one source for both sides.

cdef int64_t AMOUNT_MINOR_MAX = _limits.AMOUNT_MINOR_MAX
cdef int64_t BALANCE_ABS_MAX = _limits.BALANCE_ABS_MAX
cdef int64_t POINTS_MAX = _limits.POINTS_MAX
cdef uint32_t POINTS_PER_UNIT_MAX = _limits.POINTS_PER_UNIT_MAX
cdef int64_t EARN_POINTS_MAX = _limits.EARN_POINTS_MAX
cdef uint32_t LOT_VALIDITY_DAYS_DEFAULT = _limits.LOT_VALIDITY_DAYS_DEFAULT
cdef uint32_t LOT_VALIDITY_DAYS_MAX = _limits.LOT_VALIDITY_DAYS_MAX
cdef int TZ_OFFSET_MINUTES_MAX = _limits.TZ_OFFSET_MINUTES_MAX
cdef uint32_t STREAK_DAYS_MAX = _limits.STREAK_DAYS_MAX
cdef int64_t GIFT_STOCK_MAX = _limits.GIFT_STOCK_MAX
cdef int64_t REDEEM_QUANTITY_MAX = _limits.REDEEM_QUANTITY_MAX
cdef int64_t PARTNER_RATE_TERM_MAX = _limits.PARTNER_RATE_TERM_MAX
cdef int64_t LOT_EXTENSION_DAYS_MAX = _limits.LOT_EXTENSION_DAYS_MAX
cdef int64_t MS_PER_DAY = 86_400_000
cdef uint32_t HOLD_TIMEOUT_S_MAX = _limits.HOLD_TIMEOUT_S_MAX
cdef Py_ssize_t BATCH_SIZE_MAX = _limits.BATCH_SIZE_MAX
cdef Py_ssize_t KERNEL_RECORDS_CACHED_MAX = _limits.KERNEL_RECORDS_CACHED_MAX
cdef Py_ssize_t EXPIRE_SWEEP_HOLDS_MAX = _limits.EXPIRE_SWEEP_HOLDS_MAX
cdef uint32_t REQUEST_TAIL_MAX = _limits.REQUEST_TAIL_MAX
cdef int REQUEST_BUCKET_BITS = _records.REQUEST_BUCKET_BITS
cdef uint32_t STATION_DAY_AHEAD_MAX = _limits.STATION_DAY_AHEAD_MAX

_R = _results.ResultCode
cdef uint16_t APPROVED = _R.APPROVED
cdef uint16_t PENDING = _R.PENDING
cdef uint16_t INSUFFICIENT_FUNDS = _R.INSUFFICIENT_FUNDS
cdef uint16_t LIMIT_PER_TRANSACTION_EXCEEDED = _R.LIMIT_PER_TRANSACTION_EXCEEDED
cdef uint16_t LIMIT_PER_DAY_EXCEEDED = _R.LIMIT_PER_DAY_EXCEEDED
cdef uint16_t CARD_NOT_FOUND = _R.CARD_NOT_FOUND
cdef uint16_t CARD_LOST = _R.CARD_LOST
cdef uint16_t CARD_FROZEN = _R.CARD_FROZEN
cdef uint16_t CARD_CANCELLED = _R.CARD_CANCELLED
cdef uint16_t CARD_NOT_ALLOWED_HERE = _R.CARD_NOT_ALLOWED_HERE
cdef uint16_t CARD_EXISTS = _R.CARD_EXISTS
cdef uint16_t HOLD_EXPIRED = _R.HOLD_EXPIRED
cdef uint16_t HOLD_CLOSED = _R.HOLD_CLOSED
cdef uint16_t AMOUNT_EXCEEDS_HOLD = _R.AMOUNT_EXCEEDS_HOLD
cdef uint16_t ORIGINAL_NOT_FOUND = _R.ORIGINAL_NOT_FOUND
cdef uint16_t ALREADY_REVERSED = _R.ALREADY_REVERSED
cdef uint16_t ALREADY_VOIDED = _R.ALREADY_VOIDED
cdef uint16_t ALREADY_REFUNDED = _R.ALREADY_REFUNDED
cdef uint16_t VOID_NOT_SAME_DAY = _R.VOID_NOT_SAME_DAY
cdef uint16_t REFUND_EXCEEDS_PAID = _R.REFUND_EXCEEDS_PAID
cdef uint16_t NOT_REVERSIBLE = _R.NOT_REVERSIBLE
cdef uint16_t WRONG_TRANSACTION_KIND = _R.WRONG_TRANSACTION_KIND
cdef uint16_t STATION_MISMATCH = _R.STATION_MISMATCH
cdef uint16_t DUPLICATE_MISMATCH = _R.DUPLICATE_MISMATCH
cdef uint16_t BALANCE_LIMIT = _R.BALANCE_LIMIT
cdef uint16_t ACCOUNT_NOT_FOUND = _R.ACCOUNT_NOT_FOUND
cdef uint16_t ACCOUNT_EXISTS = _R.ACCOUNT_EXISTS
cdef uint16_t TRANSACTION_NOT_POSTED = _R.TRANSACTION_NOT_POSTED
cdef uint16_t INVALID_OPERATION = _R.INVALID_OPERATION
cdef uint16_t ALREADY_CHECKED_IN = _R.ALREADY_CHECKED_IN
cdef uint16_t TASK_CAP_REACHED = _R.TASK_CAP_REACHED
cdef uint16_t GIFT_NOT_FOUND = _R.GIFT_NOT_FOUND
cdef uint16_t GIFT_NOT_AVAILABLE = _R.GIFT_NOT_AVAILABLE
cdef uint16_t GIFT_OUT_OF_STOCK = _R.GIFT_OUT_OF_STOCK
cdef uint16_t GIFT_LIMIT_REACHED = _R.GIFT_LIMIT_REACHED
cdef uint16_t TIER_NOT_ALLOWED = _R.TIER_NOT_ALLOWED
cdef uint16_t INSUFFICIENT_POINTS = _R.INSUFFICIENT_POINTS
cdef uint16_t SHIFT_CLOSED = _R.SHIFT_CLOSED
cdef uint16_t SHIFT_ALREADY_OPEN = _R.SHIFT_ALREADY_OPEN
cdef uint16_t SHIFT_NOT_OPEN = _R.SHIFT_NOT_OPEN
cdef uint16_t DAY_CLOSED = _R.DAY_CLOSED
cdef uint16_t DOMAIN_NOT_ENABLED = _R.DOMAIN_NOT_ENABLED
cdef uint16_t CARD_HAS_HOLDS = _R.CARD_HAS_HOLDS
cdef uint16_t COUNTER_LIMIT_REACHED = _R.COUNTER_LIMIT_REACHED
cdef uint16_t COUNTER_EXHAUSTED = _R.COUNTER_EXHAUSTED
cdef uint16_t LINKED_FAILED = _R.LINKED_FAILED
cdef uint16_t PACKET_ALREADY_CLAIMED = _R.PACKET_ALREADY_CLAIMED
cdef uint16_t PACKET_EMPTY = _R.PACKET_EMPTY
cdef uint16_t ORIGINAL_NOT_SEEN = _R.ORIGINAL_NOT_SEEN
cdef uint16_t ORIGINAL_DECLINED = _R.ORIGINAL_DECLINED
cdef uint8_t RESULT_REPLAYED = _records.RESULT_REPLAYED

_K = _results.OpKind
cdef uint8_t OP_OPEN_CARD = _K.OPEN_CARD
cdef uint8_t OP_SET_CARD_STATUS = _K.SET_CARD_STATUS
cdef uint8_t OP_SET_CARD_LIMITS = _K.SET_CARD_LIMITS
cdef uint8_t OP_ALLOW_STATION = _K.ALLOW_STATION
cdef uint8_t OP_TOPUP = _K.TOPUP
cdef uint8_t OP_PAY = _K.PAY
cdef uint8_t OP_CAPTURE = _K.CAPTURE
cdef uint8_t OP_ABORT = _K.ABORT
cdef uint8_t OP_PREAUTH = _K.PREAUTH
cdef uint8_t OP_COMPLETE = _K.COMPLETE
cdef uint8_t OP_RELEASE = _K.RELEASE
cdef uint8_t OP_REVERSE = _K.REVERSE
cdef uint8_t OP_VOID = _K.VOID
cdef uint8_t OP_REFUND = _K.REFUND
cdef uint8_t OP_EXPIRE_HOLDS = _K.EXPIRE_HOLDS
cdef uint8_t OP_OPEN_ACCOUNT = _K.OPEN_ACCOUNT
cdef uint8_t OP_TRANSFER = _K.TRANSFER
cdef uint8_t OP_EXPIRE_POINTS = _K.EXPIRE_POINTS
cdef uint8_t OP_SET_MEMBER = _K.SET_MEMBER
cdef uint8_t OP_CHECKIN = _K.CHECKIN
cdef uint8_t OP_TASK = _K.TASK
cdef uint8_t OP_SET_TIER = _K.SET_TIER
cdef uint8_t OP_GIFT_SET = _K.GIFT_SET
cdef uint8_t OP_GIFT_STOCK = _K.GIFT_STOCK
cdef uint8_t OP_REDEEM = _K.REDEEM
cdef uint8_t OP_PARTNER_EXCHANGE = _K.PARTNER_EXCHANGE
cdef uint8_t OP_EXTEND_LOTS = _K.EXTEND_LOTS
cdef uint8_t OP_CLEAR_LOTS = _K.CLEAR_LOTS
cdef uint8_t OP_SIGN_ON = _K.SIGN_ON
cdef uint8_t OP_SHIFT_CLOSE = _K.SHIFT_CLOSE
cdef uint8_t OP_DAY_END = _K.DAY_END
cdef uint8_t OP_ENABLE_DOMAIN = _K.ENABLE_DOMAIN
cdef uint8_t OP_STATION_DOMAIN = _K.STATION_DOMAIN
cdef uint8_t OP_CANCEL_CARD = _K.CANCEL_CARD
cdef uint8_t OP_COUNTER = _K.COUNTER
cdef uint8_t OP_PACKET_CLAIM = _K.PACKET_CLAIM
cdef uint8_t SCOPE_PACKET_CLAIMS = _counters.CounterScope.PACKET_CLAIMS
cdef uint8_t SCOPE_PACKET_CLAIMER = _counters.CounterScope.PACKET_CLAIMER
cdef int64_t COUNTER_DELTA_ABS_MAX = _limits.COUNTER_DELTA_ABS_MAX
cdef int64_t COUNTER_CEILING_MAX = _limits.COUNTER_CEILING_MAX
cdef Py_ssize_t COUNTER_TAKES_PER_SALE_MAX = _limits.COUNTER_TAKES_PER_SALE_MAX
cdef uint32_t PACKET_SHARES_MAX = _limits.PACKET_SHARES_MAX
cdef uint8_t SHIFT_OPEN = _results.ShiftState.OPEN
cdef uint8_t SHIFT_STATE_CLOSED = _results.ShiftState.CLOSED
cdef frozenset TIERS = frozenset(int(t) for t in _results.Tier)
cdef frozenset TIER_REASONS = frozenset(int(r) for r in _results.TierReason)
cdef uint8_t TIER_REGULAR = _results.Tier.REGULAR

_A = _results.AccountKind
cdef uint8_t FLEET = _A.FLEET
cdef uint8_t PERSONAL = _A.PERSONAL
cdef uint8_t POINTS = _A.POINTS
cdef uint8_t STATION_RECEIVABLE = _A.STATION_RECEIVABLE
cdef uint8_t CHANNEL_CLEARING = _A.CHANNEL_CLEARING
cdef uint8_t POINTS_LIABILITY = _A.POINTS_LIABILITY
cdef uint8_t POINTS_FUNDING = _A.POINTS_FUNDING
cdef uint8_t TOPUP_FUNDING = _A.TOPUP_FUNDING
cdef uint8_t PARTNER_CLEARING = _A.PARTNER_CLEARING
cdef uint8_t REFUND_PAYABLE = _A.REFUND_PAYABLE
cdef uint8_t GENERAL = _A.GENERAL
cdef uint8_t PROMOTION = _A.PROMOTION
cdef uint8_t SYSTEM_ACCOUNT_KIND_MIN = _results.SYSTEM_ACCOUNT_KIND_MIN
cdef uint8_t UNIT_MONEY = _results.Unit.MONEY
cdef uint8_t UNIT_POINTS = _results.Unit.POINTS
cdef frozenset ACCOUNT_KINDS = frozenset(int(k) for k in _A)

cdef uint8_t CARD_ACTIVE = _results.CardStatus.ACTIVE
cdef uint8_t CARD_STATUS_LOST = _results.CardStatus.LOST
cdef uint8_t CARD_STATUS_FROZEN = _results.CardStatus.FROZEN
cdef uint8_t CARD_STATUS_CANCELLED = _results.CardStatus.CANCELLED
cdef uint8_t CARD_TYPE_COMPANY = _results.CardType.COMPANY
cdef uint8_t CARD_TYPE_PERSONAL = _results.CardType.PERSONAL
cdef uint16_t RESTRICTED_STATIONS = _results.CardFlag.RESTRICTED_STATIONS
cdef uint16_t RESTRICTED_DOMAINS = _results.CardFlag.RESTRICTED_DOMAINS

cdef uint8_t HELD = _results.TxnState.HELD
cdef uint8_t POSTED = _results.TxnState.POSTED
cdef uint8_t RELEASED = _results.TxnState.RELEASED
cdef uint8_t EXPIRED = _results.TxnState.EXPIRED
cdef uint8_t ABORTED = _results.TxnState.ABORTED
cdef uint8_t FLAG_VOIDED = _results.TxnFlag.VOIDED
cdef uint8_t FLAG_REVERSED = _results.TxnFlag.REVERSED

cdef uint8_t CHANNEL_NONE = _results.Channel.NONE
cdef uint8_t CHANNEL_LAST = _results.Channel.ALIPAY
cdef uint8_t USE_FLEET = _results.PlanFlag.USE_FLEET
cdef uint8_t USE_PERSONAL = _results.PlanFlag.USE_PERSONAL
cdef uint8_t USE_POINTS = _results.PlanFlag.USE_POINTS

cdef uint8_t MOVE_FLEET = _results.Movement.FLEET
cdef uint8_t MOVE_PERSONAL = _results.Movement.PERSONAL
cdef uint8_t MOVE_POINTS = _results.Movement.POINTS
cdef uint8_t MOVE_POINTS_CASH = _results.Movement.POINTS_CASH
cdef uint8_t MOVE_CHANNEL = _results.Movement.CHANNEL
cdef uint8_t MOVE_EARN = _results.Movement.EARN
cdef uint8_t MOVE_TOPUP = _results.Movement.TOPUP
cdef uint8_t MOVE_TRANSFER = _results.Movement.TRANSFER
cdef uint8_t MOVE_EXPIRY = _results.Movement.EXPIRY
cdef uint8_t MOVE_SHORTFALL = _results.Movement.SHORTFALL
cdef uint8_t MOVE_CHECKIN = _results.Movement.CHECKIN
cdef uint8_t MOVE_TASK = _results.Movement.TASK
cdef uint8_t MOVE_GIFT = _results.Movement.GIFT
cdef uint8_t MOVE_PARTNER = _results.Movement.PARTNER
cdef uint8_t MOVE_CANCEL = _results.Movement.CANCEL
cdef uint8_t MOVE_PROMOTION = _results.Movement.PROMOTION
cdef uint8_t REASON_SALE = _results.Reason.SALE
cdef uint8_t REASON_COMPLETE = _results.Reason.COMPLETE
cdef uint8_t REASON_TOPUP = _results.Reason.TOPUP
cdef uint8_t REASON_REVERSAL = _results.Reason.REVERSAL
cdef uint8_t REASON_VOID = _results.Reason.VOID
cdef uint8_t REASON_REFUND = _results.Reason.REFUND
cdef uint8_t REASON_TRANSFER = _results.Reason.TRANSFER
cdef uint8_t REASON_EXPIRY = _results.Reason.EXPIRY
cdef uint8_t REASON_LOYALTY = _results.Reason.LOYALTY
cdef uint8_t REASON_CANCEL = _results.Reason.CANCEL
cdef uint8_t REASON_PROMOTION = _results.Reason.PROMOTION

cdef bytes META_NEXT_TXN_ID = _records.META_NEXT_TXN_ID
cdef bytes META_NEXT_JOURNAL_SEQ = _records.META_NEXT_JOURNAL_SEQ
cdef bytes META_NEXT_REQUEST_SEQ = _records.META_NEXT_REQUEST_SEQ
cdef char ZERO_FINGERPRINT[16]
memset(ZERO_FINGERPRINT, 0, 16)

# Most postings one operation makes (a sale: four legs, points, earning).
cdef enum:
    POSTINGS_MAX = 8

# Accounts a batch remembers by (kind, owner) without building a key or
# searching a dict: one sale looks up its card's accounts a dozen times
# (checks, postings_fit, post, the balances in its result).
cdef enum:
    ACCOUNT_MEMO_SLOTS = 64


cdef struct AccountMemo:
    AccountRec* record  # NULL: an empty slot
    PyObject* holder    # the bytearray holding it, owned by the batch's accounts dict
    uint64_t owner
    uint8_t kind
    bint dirty          # already in accounts_dirty


cdef inline Py_ssize_t account_memo_slot(uint8_t kind, uint64_t owner) noexcept:
    return <Py_ssize_t>(((owner * <uint64_t>0x9E3779B97F4A7C15) >> 58) ^ kind) & (ACCOUNT_MEMO_SLOTS - 1)


# Cards a kernel remembers from batch to batch (see _Records.card_memo): a
# loyalty sale reads its card, the card's three accounts and its lot days a
# dozen times, and the next sale of the same card is batches later, long
# after the 64-slot account memo has forgotten it. Direct-mapped: a card
# whose slot is taken by another simply goes back to the dicts.
cdef enum:
    CARD_MEMO_SLOTS_LOG2 = 15
    CARD_MEMO_SLOTS = 1 << CARD_MEMO_SLOTS_LOG2
    CARD_ACCOUNT_KINDS = 3  # FLEET, PERSONAL, POINTS: index kind - FLEET


cdef struct CardMemo:
    uint64_t card_id          # 0: an empty slot
    CardRec* card             # NULL: not looked up through this slot yet
    PyObject* card_holder     # the bytearray holding it, owned by _Records.cards
    bint card_dirty           # already in this batch's cards_dirty
    uint64_t batch            # the _Records batch its dirty flags belong to
    AccountMemo accounts[CARD_ACCOUNT_KINDS]  # record NULL: not looked up yet
    PyObject* lot_days        # the card's list in _Records.lot_days, or NULL


cdef inline Py_ssize_t card_memo_index(uint64_t card_id) noexcept:
    return <Py_ssize_t>((card_id * <uint64_t>0x9E3779B97F4A7C15) >> (64 - CARD_MEMO_SLOTS_LOG2))


cdef inline CardMemo* card_memo_slot(CardMemo* memo, uint64_t card_id, uint64_t batch) noexcept:
    """The card's slot, its dirty flags cleared when they were set by an
    earlier batch: a slot is reset when first touched in a batch, not all
    32,768 of them at each batch's start (4 MB swept per batch, which a
    small batch paid in full)."""
    cdef CardMemo* slot = &memo[card_memo_index(card_id)]
    cdef int k
    if slot.batch != batch:
        slot.batch = batch
        slot.card_dirty = False
        for k in range(CARD_ACCOUNT_KINDS):
            slot.accounts[k].dirty = False
    return slot


cdef inline CardMemo* claimed_card_memo(CardMemo* memo, uint64_t card_id, uint64_t batch) noexcept:
    """The card's slot, emptied first if another card held it."""
    cdef CardMemo* slot = card_memo_slot(memo, card_id, batch)
    if slot.card_id != card_id:
        memset(slot, 0, sizeof(CardMemo))
        slot.card_id = card_id
        slot.batch = batch
    return slot


cdef inline int card_account_index(uint8_t kind) noexcept:
    """The kind's index in CardMemo.accounts, or -1 for an account no card owns."""
    return kind - FLEET if FLEET <= kind <= POINTS and POINTS - FLEET + 1 == CARD_ACCOUNT_KINDS else -1


cdef inline uint16_t status_decline(uint8_t status) noexcept:
    if status == CARD_STATUS_LOST:
        return CARD_LOST
    if status == CARD_STATUS_FROZEN:
        return CARD_FROZEN
    return CARD_CANCELLED


def record_sizes():
    """sizeof of each C layout, for the test that they match core.records."""
    return {
        "Op": sizeof(OpRec),
        "Result": sizeof(ResultRec),
        "Account": sizeof(AccountRec),
        "Card": sizeof(CardRec),
        "Txn": sizeof(TxnRec),
        "Idem": sizeof(IdemRec),
        "Request": sizeof(RequestRec),
        "RequestTail": sizeof(RequestTailRec),
        "JournalEntry": sizeof(JournalRec),
        "Lot": sizeof(LotRec),
        "Member": sizeof(MemberRec),
        "TierChange": sizeof(TierChangeRec),
        "Gift": sizeof(GiftRec),
        "Shift": sizeof(ShiftRec),
    }


def card_memo_slot_of(uint64_t card_id):
    """The card memo slot of a card, for the test of cards sharing one."""
    return card_memo_index(card_id)


# ------------------------------------------------------------ keys

cdef inline bytes u64_key(uint64_t value):
    cdef uint64_t big = bswap64(value)
    return PyBytes_FromStringAndSize(<char*>&big, 8)


cdef inline bytes account_key(uint8_t kind, uint64_t owner):
    cdef char buffer[9]
    cdef uint64_t big = bswap64(owner)
    buffer[0] = <char>kind
    memcpy(buffer + 1, &big, 8)
    return PyBytes_FromStringAndSize(buffer, 9)


cdef inline bytes idem_key(uint32_t terminal_id, uint64_t serial):
    cdef char buffer[12]
    cdef uint32_t big_terminal = bswap32(terminal_id)
    cdef uint64_t big_serial = bswap64(serial)
    memcpy(buffer, &big_terminal, 4)
    memcpy(buffer + 4, &big_serial, 8)
    return PyBytes_FromStringAndSize(buffer, 12)


cdef inline bytes request_bucket_key(uint32_t terminal_id, uint64_t serial):
    return idem_key(terminal_id, serial >> REQUEST_BUCKET_BITS)


cdef struct IndexPair:
    uint64_t serial
    uint64_t seq

cdef enum:
    # Bound of a tail's length (limits.REQUEST_TAIL_MAX, checked at import).
    REQUEST_TAIL_LENGTH_MAX = 256

assert REQUEST_TAIL_MAX <= REQUEST_TAIL_LENGTH_MAX


cdef int compare_pairs(const void* a, const void* b) noexcept nogil:
    cdef uint64_t left = (<const IndexPair*>a).serial
    cdef uint64_t right = (<const IndexPair*>b).serial
    return -1 if left < right else (1 if left > right else 0)


cdef bytes bucket_with(object stored, const IndexPair* pairs, Py_ssize_t count):
    """Mirror of records.bucket_with: the record `stored` (or none) with
    `count` pairs added, in serial order."""
    cdef Py_ssize_t stored_count = 0 if stored is None else PyBytes_GET_SIZE(stored) // sizeof(IndexPair)
    cdef bytes merged = PyBytes_FromStringAndSize(NULL, (stored_count + count) * sizeof(IndexPair))
    cdef IndexPair* out = <IndexPair*>PyBytes_AS_STRING(merged)
    if stored_count:
        memcpy(out, PyBytes_AS_STRING(stored), stored_count * sizeof(IndexPair))
    memcpy(out + stored_count, pairs, count * sizeof(IndexPair))
    qsort(out, stored_count + count, sizeof(IndexPair), compare_pairs)
    return merged


cdef uint64_t bucket_seq(bytes value, uint64_t serial) noexcept:
    """Mirror of records.bucket_seq: the seq a request_index record lists
    for serial, or 0."""
    cdef const uint64_t* pairs = <const uint64_t*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(value) // 16):
        if pairs[2 * i] == serial:
            return pairs[2 * i + 1]
    return 0


cdef inline bytes hold_expiry_key(uint64_t expires_ms, uint64_t txn_id):
    cdef char buffer[16]
    cdef uint64_t big_expires = bswap64(expires_ms)
    cdef uint64_t big_txn = bswap64(txn_id)
    memcpy(buffer, &big_expires, 8)
    memcpy(buffer + 8, &big_txn, 8)
    return PyBytes_FromStringAndSize(buffer, 16)


cdef inline bytes card_station_key(uint64_t card_id, uint32_t station_id):
    cdef char buffer[12]
    cdef uint64_t big_card = bswap64(card_id)
    cdef uint32_t big_station = bswap32(station_id)
    memcpy(buffer, &big_card, 8)
    memcpy(buffer + 8, &big_station, 4)
    return PyBytes_FromStringAndSize(buffer, 12)


cdef inline bytes lot_key(uint64_t card_id, uint32_t expires_day):
    cdef char buffer[12]
    cdef uint64_t big_card = bswap64(card_id)
    cdef uint32_t big_day = bswap32(expires_day)
    memcpy(buffer, &big_card, 8)
    memcpy(buffer + 8, &big_day, 4)
    return PyBytes_FromStringAndSize(buffer, 12)


cdef inline bytes lot_expiry_key(uint32_t expires_day, uint64_t card_id):
    cdef char buffer[12]
    cdef uint32_t big_day = bswap32(expires_day)
    cdef uint64_t big_card = bswap64(card_id)
    memcpy(buffer, &big_day, 4)
    memcpy(buffer + 4, &big_card, 8)
    return PyBytes_FromStringAndSize(buffer, 12)


cdef inline bytes pair_key(uint64_t first, uint64_t second):
    """Key of a gift's count for a card, or a card's tier change."""
    cdef char buffer[16]
    cdef uint64_t big_first = bswap64(first)
    cdef uint64_t big_second = bswap64(second)
    memcpy(buffer, &big_first, 8)
    memcpy(buffer + 8, &big_second, 8)
    return PyBytes_FromStringAndSize(buffer, 16)


cdef inline bytes counter_key(uint8_t scope, uint64_t owner, uint64_t subject, uint32_t period):
    cdef char buffer[21]
    cdef uint64_t big_owner = bswap64(owner)
    cdef uint64_t big_subject = bswap64(subject)
    cdef uint32_t big_period = bswap32(period)
    buffer[0] = <char>scope
    memcpy(buffer + 1, &big_owner, 8)
    memcpy(buffer + 9, &big_subject, 8)
    memcpy(buffer + 17, &big_period, 4)
    return PyBytes_FromStringAndSize(buffer, 21)


cdef inline bytes packet_share_key(uint64_t packet_id, uint32_t index):
    cdef char buffer[12]
    cdef uint64_t big_packet = bswap64(packet_id)
    cdef uint32_t big_index = bswap32(index)
    memcpy(buffer, &big_packet, 8)
    memcpy(buffer + 8, &big_index, 4)
    return PyBytes_FromStringAndSize(buffer, 12)


cdef inline bytes u32_key(uint32_t value):
    cdef uint32_t big = bswap32(value)
    return PyBytes_FromStringAndSize(<char*>&big, 4)


cdef inline uint64_t parse_u64(const char* data):
    cdef uint64_t big
    memcpy(&big, data, 8)
    return bswap64(big)


# ------------------------------------------------------------ pure rules

cdef inline bint may_go_negative(uint8_t kind):
    return kind >= SYSTEM_ACCOUNT_KIND_MIN and kind != GENERAL and kind != PROMOTION


cdef inline uint8_t unit_of(uint8_t kind):
    if kind == POINTS or kind == POINTS_LIABILITY:
        return UNIT_POINTS
    return UNIT_MONEY


cdef inline int64_t points_for_cash(int64_t cash_minor, int64_t points_per_unit):
    return (cash_minor * points_per_unit + 99) // 100


cdef inline int64_t cash_for_points(int64_t points, int64_t points_per_unit):
    return points * 100 // points_per_unit


cdef extern from *:
    """
    /* points * part / whole in 128 bits (the product can pass 2^63); 0 when
       the quotient does not fit 64 bits. Operands are non-negative and whole
       positive, so C division equals floor division. */
    static inline int tally_share_fits(int64_t points, int64_t part, int64_t whole, int64_t* out) {
        __int128 quotient = (__int128)points * part / whole;
        if (quotient > INT64_MAX) return 0;
        *out = (int64_t)quotient;
        return 1;
    }
    """
    bint share_fits "tally_share_fits"(int64_t points, int64_t part, int64_t whole, int64_t* out) noexcept nogil


cdef int64_t share(int64_t points, int64_t part, int64_t whole) except? -1:
    """Mirror of reference.share: exact, though points * part can pass 2^63
    (a trillion points times a trillion minor units). A sale computes it in
    128-bit C; any other sign, or a quotient past 64 bits, takes Python
    integers (which raise as the reference's result would not fit)."""
    cdef int64_t quotient
    if whole == 0:
        return 0
    if points >= 0 and part >= 0 and whole > 0 and share_fits(points, part, whole, &quotient):
        return quotient
    return (<object>points) * part // whole


cdef inline bint is_idempotent_kind(uint8_t kind):
    return (kind == OP_TOPUP or kind == OP_PAY or kind == OP_PREAUTH or kind == OP_COMPLETE
            or kind == OP_RELEASE or kind == OP_REVERSE or kind == OP_VOID or kind == OP_REFUND
            or kind == OP_TRANSFER or kind == OP_CHECKIN or kind == OP_TASK or kind == OP_REDEEM
            or kind == OP_PARTNER_EXCHANGE or kind == OP_SIGN_ON or kind == OP_SHIFT_CLOSE
            or kind == OP_PACKET_CLAIM)


cdef inline bint is_counter_returning_kind(uint8_t kind):
    return kind == OP_PAY or kind == OP_PREAUTH or kind == OP_COMPLETE or kind == OP_TOPUP


cdef inline bint is_shift_bound_kind(uint8_t kind):
    return (kind == OP_PAY or kind == OP_PREAUTH or kind == OP_TOPUP or kind == OP_REFUND
            or kind == OP_VOID or kind == OP_REDEEM)


cdef inline bint is_reversible_kind(uint8_t kind):
    return kind == OP_PAY or kind == OP_PREAUTH or kind == OP_COMPLETE or kind == OP_TOPUP


cdef inline bint is_sale_kind(uint8_t kind):
    """Mirror of reference.SALE_KINDS."""
    return kind == OP_PAY or kind == OP_PREAUTH


cdef inline uint16_t nothing_to_reverse(const TxnRec* record) noexcept:
    """Mirror of reference.nothing_to_reverse."""
    if record.flags & FLAG_REVERSED:
        return ALREADY_REVERSED
    if record.flags & FLAG_VOIDED:
        return ALREADY_VOIDED
    if record.state == RELEASED:
        return HOLD_CLOSED
    if record.state == EXPIRED:
        return HOLD_EXPIRED
    if record.state == ABORTED:
        return ORIGINAL_DECLINED
    return APPROVED


# What an answer reports of a transaction that took nothing.
cdef int64_t NO_LEGS[LEG_COUNT]
memset(NO_LEGS, 0, sizeof(NO_LEGS))


cdef inline const int64_t* answer_legs(const TxnRec* record) noexcept:
    """Mirror of reference.answer_legs."""
    if record.state == POSTED:
        return &record.posted[0]
    if record.state == HELD:
        return &record.held[0]
    return NO_LEGS


cdef inline bint is_card_status(uint8_t status):
    return status == CARD_ACTIVE or status == CARD_STATUS_LOST or status == CARD_STATUS_FROZEN or status == CARD_STATUS_CANCELLED


cdef bint op_is_valid(const OpRec* op):
    """Mirror of reference.op_is_valid."""
    cdef uint8_t kind = op.kind
    if kind == OP_TOPUP or kind == OP_PAY or kind == OP_PREAUTH or kind == OP_REFUND or kind == OP_TRANSFER:
        if op.amount <= 0 or op.amount > AMOUNT_MINOR_MAX:
            return False
    if kind == OP_COMPLETE and (op.amount < 0 or op.amount > AMOUNT_MINOR_MAX):
        return False
    if kind == OP_PAY:
        if op.plan_flags & USE_POINTS and not (0 < op.points_per_unit <= POINTS_PER_UNIT_MAX):
            return False
        if op.points_max < 0 or op.points_max > POINTS_MAX:
            return False
        if op.channel > CHANNEL_LAST:
            return False
    if op.earn_points < 0 or op.earn_points > EARN_POINTS_MAX:
        return False
    if op.lot_validity_days > LOT_VALIDITY_DAYS_MAX:
        return False
    if (kind == OP_REFUND or kind == OP_VOID or kind == OP_REVERSE) and op.points_per_unit > POINTS_PER_UNIT_MAX:
        return False
    if kind == OP_PREAUTH and not (0 < op.hold_timeout_s <= HOLD_TIMEOUT_S_MAX):
        return False
    if kind == OP_OPEN_CARD or kind == OP_SET_CARD_LIMITS:
        if op.limit_per_txn < 0 or op.limit_per_txn > AMOUNT_MINOR_MAX:
            return False
        if op.limit_per_day < 0 or op.limit_per_day > AMOUNT_MINOR_MAX:
            return False
    if kind == OP_TOPUP and not (op.account_kind == FLEET or op.account_kind == PERSONAL or op.account_kind == POINTS):
        return False
    if kind == OP_OPEN_CARD and not (op.card_status == CARD_TYPE_COMPANY or op.card_status == CARD_TYPE_PERSONAL):
        return False
    if kind == OP_SET_CARD_STATUS and (not is_card_status(op.card_status) or op.card_status == CARD_STATUS_CANCELLED):
        return False
    if kind == OP_OPEN_ACCOUNT and not (op.account_kind in ACCOUNT_KINDS and op.account_kind >= SYSTEM_ACCOUNT_KIND_MIN):
        return False
    if kind == OP_TRANSFER:
        if op.account_kind not in ACCOUNT_KINDS or op.credit_kind not in ACCOUNT_KINDS:
            return False
        if op.account_kind == op.credit_kind and op.account_owner == op.credit_owner:
            return False
    return loyalty_op_is_valid(op) and counter_op_is_valid(op)


cdef bint counter_op_is_valid(const OpRec* op):
    """Mirror of reference.counter_op_is_valid."""
    if op.kind == OP_COUNTER:
        if not (op.account_kind > 0 and op.amount != 0 and -COUNTER_DELTA_ABS_MAX <= op.amount <= COUNTER_DELTA_ABS_MAX):
            return False
        return 0 <= op.limit_per_day <= COUNTER_CEILING_MAX
    if op.kind == OP_PACKET_CLAIM:
        return op.item_id > 0 and 0 < op.count_limit <= PACKET_SHARES_MAX
    return True


cdef bint chain_is_valid(const OpRec* ops, Py_ssize_t count):
    """Mirror of reference.chain_is_valid."""
    cdef Py_ssize_t i
    if count > COUNTER_TAKES_PER_SALE_MAX + 1 or ops[count - 1].link:
        return False
    for i in range(count):
        if i < count - 1 and ops[i].kind != OP_COUNTER:
            return False
        if not op_is_valid(&ops[i]):
            return False
    return True


cdef Py_ssize_t chain_last(const char* op_data, Py_ssize_t first, Py_ssize_t count) noexcept:
    """Mirror of reference.chain_last."""
    cdef Py_ssize_t last = first
    while (<const OpRec*>(op_data + last * sizeof(OpRec))).link and last + 1 < count:
        last += 1
    return last


cdef bint loyalty_op_is_valid(const OpRec* op):
    """Mirror of reference.loyalty_op_is_valid."""
    cdef uint8_t kind = op.kind
    if kind == OP_SET_MEMBER:
        return -TZ_OFFSET_MINUTES_MAX <= op.tz_offset_minutes <= TZ_OFFSET_MINUTES_MAX
    if kind == OP_CHECKIN:
        return 0 <= op.amount <= POINTS_MAX and 0 <= op.bonus_points <= POINTS_MAX and op.period <= STREAK_DAYS_MAX
    if kind == OP_TASK:
        return 0 < op.amount <= POINTS_MAX and 0 <= op.bonus_points <= POINTS_MAX
    if kind == OP_SET_TIER:
        return op.tier in TIERS and op.reason in TIER_REASONS
    if kind == OP_GIFT_SET:
        if not (0 <= op.amount <= POINTS_MAX and 0 <= op.bonus_points <= AMOUNT_MINOR_MAX and op.amount + op.bonus_points > 0):
            return False
        return op.item_id > 0 and (op.period == 0 or op.period_start <= op.period)
    if kind == OP_GIFT_STOCK:
        return op.item_id > 0 and op.amount != 0 and -GIFT_STOCK_MAX <= op.amount <= GIFT_STOCK_MAX
    if kind == OP_REDEEM:
        return op.item_id > 0 and 0 < op.amount <= REDEEM_QUANTITY_MAX
    if kind == OP_PARTNER_EXCHANGE:
        if not (0 < op.earn_points <= PARTNER_RATE_TERM_MAX and 0 < op.period <= PARTNER_RATE_TERM_MAX):
            return False
        if not (op.reason == 1 or 0 < op.points_per_unit <= POINTS_PER_UNIT_MAX):
            return False
        return 0 < op.amount <= POINTS_MAX and (op.reason == 0 or op.reason == 1)
    if kind == OP_EXTEND_LOTS:
        return 0 < op.amount <= LOT_EXTENSION_DAYS_MAX
    return True


cdef inline int64_t money_total(const int64_t* legs):
    """Money of the legs; points_used is points and does not count."""
    return legs[LEG_FLEET] + legs[LEG_PERSONAL] + legs[LEG_POINTS_CASH] + legs[LEG_CHANNEL]


cdef inline void set_posting(Posting* p, uint8_t debit_kind, uint64_t debit_owner, uint8_t credit_kind,
                             uint64_t credit_owner, int64_t amount, uint8_t movement, uint8_t reason) noexcept:
    p.debit_kind = debit_kind
    p.debit_owner = debit_owner
    p.credit_kind = credit_kind
    p.credit_owner = credit_owner
    p.amount = amount
    p.movement = movement
    p.reason = reason


cdef int sale_postings(Posting* p, uint64_t card, uint32_t station, uint8_t channel,
                       const int64_t* legs, int64_t points_earned, uint8_t reason) noexcept:
    """Mirror of reference.sale_postings: payment order, then earning."""
    set_posting(&p[0], FLEET, card, STATION_RECEIVABLE, station, legs[LEG_FLEET], MOVE_FLEET, reason)
    set_posting(&p[1], PERSONAL, card, STATION_RECEIVABLE, station, legs[LEG_PERSONAL], MOVE_PERSONAL, reason)
    set_posting(&p[2], POINTS, card, POINTS_LIABILITY, 0, legs[LEG_POINTS_USED], MOVE_POINTS, reason)
    set_posting(&p[3], POINTS_FUNDING, 0, STATION_RECEIVABLE, station, legs[LEG_POINTS_CASH], MOVE_POINTS_CASH, reason)
    set_posting(&p[4], CHANNEL_CLEARING, channel, STATION_RECEIVABLE, station, legs[LEG_CHANNEL], MOVE_CHANNEL, reason)
    set_posting(&p[5], POINTS_LIABILITY, 0, POINTS, card, points_earned, MOVE_EARN, reason)
    return 6


cdef int return_postings(Posting* p, uint64_t card, uint32_t station, uint8_t channel,
                         const int64_t* legs, int64_t points_clawed_back, uint8_t reason) noexcept:
    """Mirror of reference.return_postings."""
    set_posting(&p[0], STATION_RECEIVABLE, station, FLEET, card, legs[LEG_FLEET], MOVE_FLEET, reason)
    set_posting(&p[1], STATION_RECEIVABLE, station, PERSONAL, card, legs[LEG_PERSONAL], MOVE_PERSONAL, reason)
    set_posting(&p[2], POINTS_LIABILITY, 0, POINTS, card, legs[LEG_POINTS_USED], MOVE_POINTS, reason)
    set_posting(&p[3], STATION_RECEIVABLE, station, POINTS_FUNDING, 0, legs[LEG_POINTS_CASH], MOVE_POINTS_CASH, reason)
    set_posting(&p[4], STATION_RECEIVABLE, station, CHANNEL_CLEARING, channel, legs[LEG_CHANNEL], MOVE_CHANNEL, reason)
    set_posting(&p[5], POINTS, card, POINTS_LIABILITY, 0, points_clawed_back, MOVE_EARN, reason)
    return 6


# ------------------------------------------------------------ writing

cdef object record_key = itemgetter(0)


cdef struct KeyedRecord:
    uint64_t prefix       # the key's first 8 bytes as a number: most comparisons end here
    const char* key
    PyObject* key_object  # borrowed from the dict being sorted, as is value
    PyObject* value


# Length of the keys compare_keys compares; set by sorted_items, which holds
# the GIL throughout, so no other sort runs meanwhile.
cdef Py_ssize_t compared_key_length = 0


cdef int compare_keys(const void* a, const void* b) noexcept nogil:
    cdef const KeyedRecord* left = <const KeyedRecord*>a
    cdef const KeyedRecord* right = <const KeyedRecord*>b
    if left.prefix != right.prefix:
        return -1 if left.prefix < right.prefix else 1
    return memcmp(left.key + 8, right.key + 8, compared_key_length - 8)


cdef list sorted_items(dict records):
    """The (key, value) pairs of `records` in key order.

    A batch sorts every record it writes (tens of thousands). Its keys are
    bytes of one length (each database has one key layout), so qsort with
    memcmp does it at a fraction of the cost of list.sort comparing bytes
    objects; any other keys take the Python sort.
    """
    global compared_key_length
    cdef Py_ssize_t count = len(records)
    if count < 2:
        return list(records.items())
    cdef KeyedRecord* sorting = <KeyedRecord*>malloc(count * sizeof(KeyedRecord))
    if sorting == NULL:
        raise MemoryError()
    cdef Py_ssize_t position = 0
    cdef Py_ssize_t i = 0
    cdef PyObject* key
    cdef PyObject* value
    cdef Py_ssize_t length = -1
    cdef bint ascending = True
    cdef list items = None
    try:
        while PyDict_Next(records, &position, &key, &value):
            if type(<object>key) is not bytes or PyBytes_GET_SIZE(<object>key) < 8 or (length != -1 and PyBytes_GET_SIZE(<object>key) != length):
                return sorted(records.items(), key=record_key)
            length = PyBytes_GET_SIZE(<object>key)
            sorting[i].prefix = parse_u64(PyBytes_AS_STRING(<object>key))
            sorting[i].key = PyBytes_AS_STRING(<object>key)
            sorting[i].key_object = key
            sorting[i].value = value
            compared_key_length = length
            # Records made in key order (new transactions, idempotency
            # records of rising serials) need no sort.
            if i and ascending and compare_keys(&sorting[i - 1], &sorting[i]) > 0:
                ascending = False
            i += 1
        if not ascending:
            qsort(sorting, count, sizeof(KeyedRecord), compare_keys)
        items = [(<object>sorting[i].key_object, <object>sorting[i].value) for i in range(count)]
    finally:
        free(sorting)
    return items


cdef put_in_key_order(object txn, object db, list items):
    """Put the (key, value) pairs of `items` (unique keys, in key order).

    In key order, each put finds its page next to the previous one (LMDB
    checks the cursor's page before searching from the root). The keys past
    the last one stored (new transactions, journal entries, idempotency
    records of a terminal's rising serials) are appended: no search at all,
    and full pages instead of pages split in half.
    """
    if not items:
        return
    cursor = txn.cursor(db)
    cdef Py_ssize_t first_appended = 0
    if cursor.last():
        first_appended = bisect_right(items, cursor.key(), key=record_key)
    cdef Py_ssize_t appended = len(items) - first_appended
    if first_appended:
        cursor.putmulti(items[:first_appended] if appended else items)
    if appended:
        consumed, added = cursor.putmulti(items[first_appended:] if first_appended else items, append=True)
        assert added == appended, "an appended key was not past the last one"
    cursor.close()


# ------------------------------------------------------------ the kernel

cdef class Kernel:
    """Same interface as core.reference.ReferenceKernel.

    Unlike the reference, it keeps the records its batches read (cards,
    accounts, points lots, members, gifts) from one batch to the next, so a
    card seen in an earlier batch costs no LMDB search. They are trusted only
    while nothing else has written to the store: the next batch's write
    transaction must be the one LMDB numbers right after the batch that
    filled them, and that batch must have committed (the ledger says so by
    calling `batch_committed` with its transaction's id). Any other writer,
    in this process or another sharing the files (`--workers N`), or an
    aborted batch, makes the kernel forget them all. The admin service runs
    this same kernel in its own write transactions from other threads and
    never confirms them: LMDB's writer lock keeps batches from overlapping,
    and a confirmation for any transaction but the last batch's is ignored.
    """

    cdef readonly str name
    # What the last batch left, or None; see records_for.
    cdef _Records records
    cdef object records_store
    # LMDB id of the last batch's write transaction, and the same id once
    # that transaction is known to have committed (0 until then).
    cdef uint64_t batch_txn_id
    cdef uint64_t committed_txn_id
    # The same id while that transaction stays open for one more batch
    # (0 otherwise): see batch_continues.
    cdef uint64_t continued_txn_id

    def __init__(self):
        self.name = "cython"
        self.records = None

    def batch_committed(self, uint64_t txn_id):
        """The write transaction `txn_id` (its txn.id()) committed: if it was
        the last batch's, that batch's records may serve the next one."""
        if txn_id == self.batch_txn_id:
            self.committed_txn_id = txn_id

    def batch_continues(self, uint64_t txn_id):
        """The last batch's write transaction `txn_id` stays open and the
        very next batch runs in it (a replicated leader's pipelined appends,
        core/commit.py): the records the last batch left hold for it, as
        they would after a commit. Call it right before that next batch."""
        if txn_id == self.batch_txn_id:
            self.continued_txn_id = txn_id

    cdef _Records records_for(self, txn, store):
        """The records of the previous batch if they still hold, else none."""
        cdef _Records records = self.records
        cdef uint64_t committed = self.committed_txn_id
        cdef uint64_t continued = self.continued_txn_id
        cdef uint64_t txn_id = <uint64_t>txn.id()
        # Until this batch commits, nothing of it may be trusted.
        self.records = None
        self.committed_txn_id = 0
        self.continued_txn_id = 0
        self.batch_txn_id = 0
        cdef bint holding = ((continued != 0 and txn_id == continued)
                             or (committed != 0 and txn_id == committed + 1))
        if (records is None or store is not self.records_store or not holding
                or records.count() > KERNEL_RECORDS_CACHED_MAX):
            records = _Records(store)
        records.begin(txn)
        return records

    def apply_batch(self, txn, store, bytes ops, int64_t now_ms, uint32_t business_day):
        cdef Py_ssize_t op_size = sizeof(OpRec)
        cdef Py_ssize_t result_size = sizeof(ResultRec)
        cdef Py_ssize_t count = PyBytes_GET_SIZE(ops) // op_size
        assert PyBytes_GET_SIZE(ops) == count * op_size
        assert count <= BATCH_SIZE_MAX
        cdef bytearray results = PyByteArray_FromStringAndSize(NULL, count * result_size)
        cdef char* op_data = PyBytes_AS_STRING(ops)
        cdef char* result_data = PyByteArray_AS_STRING(results)
        cdef _Records records = self.records_for(txn, store)
        cdef _Batch batch = _Batch(txn, store, records, now_ms, business_day)
        cdef Py_ssize_t i
        # A batch allocates tens of thousands of short-lived tuples and keys,
        # none of them in cycles; the cyclic collector would walk them over
        # and over (a tenth of the kernel's time when measured).
        cdef bint collecting = gc.isenabled()
        gc.disable()
        cdef Py_ssize_t last
        try:
            # Mirror of the reference: expiry holds at the moment of use.
            batch.expire_due_holds()
            i = 0
            while i < count:
                last = chain_last(op_data, i, count)
                if last == i and (<OpRec*>(op_data + i * op_size)).kind != OP_COUNTER:
                    batch.apply(<OpRec*>(op_data + i * op_size), <ResultRec*>(result_data + i * result_size))
                else:
                    batch.apply_chain(<OpRec*>(op_data + i * op_size), <ResultRec*>(result_data + i * result_size), last - i + 1)
                i = last + 1
            batch.finish()
        finally:
            if collecting:
                gc.enable()
        self.records = records
        self.records_store = store
        self.batch_txn_id = txn.id()
        return bytes(results)


cdef class _Table:
    """One named database read and written through a cache (kept from batch
    to batch as Kernel explains).

    Every key is read from LMDB at most once; puts and deletes stay in
    memory until `flush`, which writes them in key order at the end of the
    batch. A record rewritten by many operations of a batch (a gift's stock,
    a card's points lot) costs one LMDB write instead of one per operation,
    and sorted writes walk the B-tree's pages in order instead of at random.
    """

    cdef object txn
    cdef object db
    # key -> the record as bytes, or None when the database has none
    cdef dict values
    # keys put or deleted since the last flush (the value is unused)
    cdef dict changed

    def __init__(self, db):
        self.txn = None
        self.db = db
        self.values = {}
        self.changed = {}

    cdef bytes get(self, bytes key):
        cdef PyObject* cached = PyDict_GetItem(self.values, key)
        if cached != NULL:
            return <object>cached
        value = self.txn.get(key, None, self.db)
        self.values[key] = value
        return value

    cdef put(self, bytes key, bytes value):
        self.values[key] = value
        self.changed[key] = None

    cdef delete(self, bytes key):
        self.values[key] = None
        self.changed[key] = None

    cdef remember(self, bytes key, bytes value):
        """Record what a cursor read from LMDB, so that `get` need not read it again."""
        if PyDict_GetItem(self.values, key) == NULL:
            self.values[key] = value

    cdef flush(self):
        if not self.changed:
            return
        cdef list puts = []
        for key, _ in sorted_items(self.changed):
            value = self.values[key]
            if value is None:
                self.txn.delete(key, db=self.db)
            else:
                puts.append((key, value))
        put_in_key_order(self.txn, self.db, puts)
        self.changed = {}


cdef class _Records:
    """The records batches read and change, as they stand after the last
    batch (see Kernel): each dict maps a key to the record, or to None when
    LMDB has none."""

    # key -> bytearray holding the record, or None
    cdef dict accounts, cards
    cdef _Table point_lots, closed_lots, lot_expiry, members, gifts, gift_counts
    # terminal id -> bytearray holding its RequestTailRec, or None
    cdef dict request_tails
    # card id -> expiry days of the card's lots in point_lots, ascending (the
    # order of their keys), for the cards whose lots have been listed; the
    # newest lot is the one inline with the card's POINTS account
    cdef dict lot_days
    # Pointers into the records of accounts, cards and lot_days, whose entries
    # are never removed or replaced by a record (see CardMemo); calloc'd.
    cdef CardMemo* card_memo
    # Counts the batches begun: a slot's dirty flags hold for this one only.
    cdef uint64_t batch

    def __cinit__(self, store):
        self.card_memo = <CardMemo*>calloc(CARD_MEMO_SLOTS, sizeof(CardMemo))
        if self.card_memo == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.card_memo)

    def __init__(self, store):
        self.accounts = {}
        self.cards = {}
        self.point_lots = _Table(store.point_lots)
        self.closed_lots = _Table(store.closed_lots)
        self.lot_expiry = _Table(store.lot_expiry)
        self.members = _Table(store.members)
        self.gifts = _Table(store.gifts)
        self.gift_counts = _Table(store.gift_counts)
        self.request_tails = {}
        self.lot_days = {}

    cdef begin(self, txn):
        for table in self.tables():
            (<_Table>table).txn = txn
        # A new batch has written nothing yet (card_memo_slot).
        self.batch += 1

    cdef tuple tables(self):
        return (self.point_lots, self.closed_lots, self.lot_expiry, self.members, self.gifts, self.gift_counts)

    cdef Py_ssize_t count(self):
        cdef Py_ssize_t total = len(self.accounts) + len(self.cards) + len(self.lot_days) + len(self.request_tails)
        for table in self.tables():
            total += len((<_Table>table).values)
        return total


cdef class _Batch:
    cdef object txn
    cdef object accounts_db, cards_db, card_stations_db, txns_db
    cdef object requests_db, request_index_db, request_tails_db
    cdef object journal_db, hold_expiry_db, pending_db, meta_db
    cdef object tier_changes_db
    # Read and written through caches, flushed in key order by finish.
    cdef _Table point_lots, closed_lots, lot_expiry, members, gifts, gift_counts
    # The last gift this batch read or wrote (a batch's redemptions are
    # mostly of few gifts): redeeming reads and rewrites it without a key,
    # a dict search and a bytes object each time. Written to `gifts` when
    # another gift takes its place and at finish.
    cdef GiftRec gift_memo
    cdef bint gift_memo_valid, gift_memo_dirty
    # card id -> expiry days of the card's open lots (see _Records)
    cdef dict lot_days
    # Zeroed with the object; a slot is only ever set to a record of
    # self.accounts, whose entries this batch never removes.
    cdef AccountMemo account_memo[ACCOUNT_MEMO_SLOTS]
    # The _Records' card memo: cards and their accounts and lot days
    cdef CardMemo* card_memo
    cdef uint64_t card_memo_batch
    cdef object shifts_db, day_ends_db, card_domains_db, station_domains_db
    cdef object counters_db, txn_counters_db, packet_shares_db
    # terminal id -> ShiftState (0: never signed on), read once per batch
    cdef dict shift_states
    cdef uint32_t lot_validity_days
    # key -> bytearray holding the record, or None when LMDB has none
    # (accounts and cards are the _Records' own dicts, kept between batches)
    cdef dict accounts, cards, txns
    # key -> the same bytearray, for records this batch changed
    cdef dict accounts_dirty, cards_dirty, txns_dirty
    # Transactions this batch made: the record of id first_txn_id + i at
    # index i (None: an id without one, a transfer's say)
    cdef list new_txns
    cdef uint64_t first_txn_id
    # Requests (core/idempotency.py): those this batch adds (seq
    # first_request_seq + i at index i), each a bytearray holding its
    # RequestRec; older ones it read (u64_key(seq) -> bytearray) and changed
    cdef list new_requests
    cdef uint64_t first_request_seq
    cdef dict requests_loaded, requests_changed
    # Terminals' tails (the _Records' dict: terminal id -> bytearray or None),
    # those changed, and the last one looked up (a batch's requests come from
    # a terminal in runs)
    cdef dict request_tails, request_tails_dirty
    cdef uint32_t last_tail_terminal
    cdef bytearray last_tail
    # request_index records this batch writes: bucket key -> value
    cdef dict index_puts
    # The batch's journal entries, malloc'd and doubled as they come: a
    # loyalty batch makes three entries per operation, and a bytearray grown
    # an entry at a time copied them over and over as it grew.
    cdef JournalRec* journal
    cdef Py_ssize_t journal_count
    cdef Py_ssize_t journal_capacity
    cdef int64_t now_ms
    # The batch's day by the clock, and the day of the operation being
    # applied (see reference._Batch and station_day).
    cdef uint32_t calendar_day
    cdef uint32_t day
    # station id -> its last closed day (-1: none), read once per batch
    cdef dict closed_days
    # The last station_day answer (station 0: none): a batch's operations
    # mostly come from few stations in runs.
    cdef uint32_t last_station_id
    cdef uint32_t last_station_day
    cdef uint64_t next_txn_id, next_journal_seq, next_request_seq

    def __init__(self, txn, store, _Records records, int64_t now_ms, uint32_t business_day):
        self.txn = txn
        self.accounts_db = store.accounts
        self.cards_db = store.cards
        self.card_stations_db = store.card_stations
        self.txns_db = store.txns
        self.requests_db = store.requests
        self.request_index_db = store.request_index
        self.request_tails_db = store.request_tails
        self.journal_db = store.journal
        self.hold_expiry_db = store.hold_expiry
        self.pending_db = store.pending
        self.meta_db = store.meta
        self.tier_changes_db = store.tier_changes
        self.point_lots = records.point_lots
        self.closed_lots = records.closed_lots
        self.lot_expiry = records.lot_expiry
        self.members = records.members
        self.gifts = records.gifts
        self.gift_counts = records.gift_counts
        self.request_tails = records.request_tails
        self.lot_days = records.lot_days
        self.card_memo = records.card_memo
        self.card_memo_batch = records.batch
        self.shifts_db = store.shifts
        self.day_ends_db = store.day_ends
        self.card_domains_db = store.card_domains
        self.station_domains_db = store.station_domains
        self.counters_db = store.counters
        self.txn_counters_db = store.txn_counters
        self.packet_shares_db = store.packet_shares
        self.shift_states = {}
        self.lot_validity_days = LOT_VALIDITY_DAYS_DEFAULT
        self.accounts = records.accounts
        self.cards = records.cards
        self.txns = {}
        self.accounts_dirty = {}
        self.cards_dirty = {}
        self.txns_dirty = {}
        self.new_txns = []
        self.new_requests = []
        self.requests_loaded = {}
        self.requests_changed = {}
        self.request_tails_dirty = {}
        self.last_tail = None
        self.index_puts = {}
        self.journal = NULL
        self.journal_capacity = 0
        self.journal_count = 0
        self.now_ms = now_ms
        self.calendar_day = business_day
        self.day = business_day
        self.closed_days = {}
        self.last_station_id = 0
        self.next_txn_id = self.meta(META_NEXT_TXN_ID, 1)
        self.next_journal_seq = self.meta(META_NEXT_JOURNAL_SEQ, 1)
        self.next_request_seq = self.meta(META_NEXT_REQUEST_SEQ, 1)
        self.first_request_seq = self.next_request_seq
        self.first_txn_id = self.next_txn_id

    def __dealloc__(self):
        free(self.journal)

    cdef JournalRec* new_journal_entry(self) except NULL:
        """Room for the next journal entry, at index journal_count."""
        cdef Py_ssize_t capacity
        cdef JournalRec* grown
        if self.journal_count == self.journal_capacity:
            capacity = 2 * self.journal_capacity if self.journal_capacity else 4096
            grown = <JournalRec*>realloc(self.journal, capacity * sizeof(JournalRec))
            if grown == NULL:
                raise MemoryError()
            self.journal = grown
            self.journal_capacity = capacity
        memset(&self.journal[self.journal_count], 0, sizeof(JournalRec))
        return &self.journal[self.journal_count]

    cdef uint64_t meta(self, bytes name, uint64_t default) except? 0:
        value = self.txn.get(name, None, self.meta_db)
        if value is None:
            return default
        return (<uint64_t*>PyBytes_AS_STRING(value))[0]

    cdef finish(self):
        cdef Py_ssize_t i
        cdef Py_ssize_t entry_size = sizeof(JournalRec)
        for db, dirty in ((self.accounts_db, self.accounts_dirty), (self.cards_db, self.cards_dirty),
                          (self.txns_db, self.txns_dirty), (self.requests_db, self.requests_changed)):
            put_in_key_order(self.txn, db, sorted_items(dirty))
        if self.new_txns:
            self.txn.cursor(self.txns_db).putmulti(
                [(u64_key(self.first_txn_id + i), self.new_txns[i]) for i in range(len(self.new_txns)) if self.new_txns[i] is not None],
                append=True)
        if self.new_requests:
            self.txn.cursor(self.requests_db).putmulti(
                [(u64_key(self.first_request_seq + i), self.new_requests[i]) for i in range(len(self.new_requests))], append=True)
        cdef const char* entries = <const char*>self.journal
        cdef uint64_t first_seq = self.next_journal_seq - self.journal_count
        if self.journal_count:
            self.txn.cursor(self.journal_db).putmulti(
                [(u64_key(first_seq + i), PyBytes_FromStringAndSize(entries + i * entry_size, entry_size)) for i in range(self.journal_count)],
                append=True,
            )
        self.flush_gift_memo()
        for table in (self.point_lots, self.closed_lots, self.lot_expiry, self.members, self.gifts, self.gift_counts):
            (<_Table>table).flush()
        put_in_key_order(self.txn, self.request_index_db, sorted_items(self.index_puts))
        put_in_key_order(self.txn, self.request_tails_db,
                         [(u32_key(terminal_id), self.request_tails_dirty[terminal_id]) for terminal_id in sorted(self.request_tails_dirty)])
        self.txn.put(META_NEXT_TXN_ID, (<char*>&self.next_txn_id)[:8], db=self.meta_db)
        self.txn.put(META_NEXT_JOURNAL_SEQ, (<char*>&self.next_journal_seq)[:8], db=self.meta_db)
        self.txn.put(META_NEXT_REQUEST_SEQ, (<char*>&self.next_request_seq)[:8], db=self.meta_db)

    # -------------------------------------------------------- storage

    cdef bytearray fetch(self, dict cache, object db, bytes key):
        """The record under `key`, read from LMDB once per batch; None if absent."""
        cdef PyObject* cached = PyDict_GetItem(cache, key)
        if cached != NULL:
            return <object>cached
        value = self.txn.get(key, None, db)
        cdef bytearray record = None
        if value is not None:
            record = PyByteArray_FromStringAndSize(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        cache[key] = record
        return record

    cdef CardRec* load_card(self, uint64_t card_id) except? NULL:
        cdef CardMemo* memo = card_memo_slot(self.card_memo, card_id, self.card_memo_batch)
        if memo.card_id == card_id and memo.card != NULL:
            return memo.card
        cdef bytearray record = self.fetch(self.cards, self.cards_db, u64_key(card_id))
        if record is None:
            return NULL
        return self.remember_card(card_id, record, False)

    cdef CardRec* remember_card(self, uint64_t card_id, bytearray record, bint dirty) noexcept:
        cdef CardMemo* memo = claimed_card_memo(self.card_memo, card_id, self.card_memo_batch)
        memo.card = <CardRec*>PyByteArray_AS_STRING(record)
        memo.card_holder = <PyObject*>record
        memo.card_dirty = dirty
        return memo.card

    cdef CardRec* card_for_write(self, uint64_t card_id) except NULL:
        cdef CardMemo* memo = card_memo_slot(self.card_memo, card_id, self.card_memo_batch)
        cdef bytes key
        if memo.card_id == card_id and memo.card != NULL:
            if not memo.card_dirty:
                self.cards_dirty[u64_key(card_id)] = <object>memo.card_holder
                memo.card_dirty = True
            return memo.card
        key = u64_key(card_id)
        cdef bytearray record = self.fetch(self.cards, self.cards_db, key)
        assert record is not None
        self.cards_dirty[key] = record
        return self.remember_card(card_id, record, True)

    cdef AccountMemo* remembered_account(self, uint8_t kind, uint64_t owner) noexcept:
        """The memo slot holding the account, or NULL."""
        cdef int index = card_account_index(kind)
        cdef CardMemo* card_memo
        if index >= 0:
            card_memo = card_memo_slot(self.card_memo, owner, self.card_memo_batch)
            if card_memo.card_id == owner and card_memo.accounts[index].record != NULL:
                return &card_memo.accounts[index]
            return NULL
        cdef AccountMemo* memo = &self.account_memo[account_memo_slot(kind, owner)]
        if memo.record != NULL and memo.owner == owner and memo.kind == kind:
            return memo
        return NULL

    cdef AccountRec* remember_account(self, uint8_t kind, uint64_t owner, bytearray record, bint dirty) noexcept:
        cdef int index = card_account_index(kind)
        cdef AccountMemo* memo
        if index >= 0:
            memo = &claimed_card_memo(self.card_memo, owner, self.card_memo_batch).accounts[index]
        else:
            memo = &self.account_memo[account_memo_slot(kind, owner)]
        memo.record = <AccountRec*>PyByteArray_AS_STRING(record)
        memo.holder = <PyObject*>record
        memo.owner = owner
        memo.kind = kind
        memo.dirty = dirty
        return memo.record

    cdef AccountRec* load_account(self, uint8_t kind, uint64_t owner) except? NULL:
        cdef AccountMemo* memo = self.remembered_account(kind, owner)
        if memo != NULL:
            return memo.record
        cdef bytearray record = self.fetch(self.accounts, self.accounts_db, account_key(kind, owner))
        if record is None:
            return NULL
        return self.remember_account(kind, owner, record, False)

    cdef AccountRec* account_or_new(self, uint8_t kind, uint64_t owner, bint for_write) except NULL:
        """The account, created empty if it is a system account LMDB lacks.
        A created account is stored only if the batch writes to it."""
        cdef AccountMemo* memo = self.remembered_account(kind, owner)
        if memo != NULL:
            if for_write and not memo.dirty:
                self.accounts_dirty[account_key(kind, owner)] = <object>memo.holder
                memo.dirty = True
            return memo.record
        cdef bytes key = account_key(kind, owner)
        cdef bytearray record = self.fetch(self.accounts, self.accounts_db, key)
        cdef AccountRec* account
        if record is None:
            assert may_go_negative(kind), "a card or general account must be opened first"
            record = PyByteArray_FromStringAndSize(NULL, sizeof(AccountRec))
            account = <AccountRec*>PyByteArray_AS_STRING(record)
            memset(account, 0, sizeof(AccountRec))
            account.kind = kind
            account.unit = unit_of(kind)
            account.owner = owner
            self.accounts[key] = record
        if for_write:
            self.accounts_dirty[key] = record
        return self.remember_account(kind, owner, record, for_write)

    cdef new_account(self, uint8_t kind, uint64_t owner):
        # A POINTS account is stored with its inline lot (none yet).
        cdef Py_ssize_t size = sizeof(PointsAccountRec) if kind == POINTS else sizeof(AccountRec)
        cdef bytes key = account_key(kind, owner)
        cdef bytearray record = PyByteArray_FromStringAndSize(NULL, size)
        cdef AccountRec* account = <AccountRec*>PyByteArray_AS_STRING(record)
        memset(account, 0, size)
        account.kind = kind
        account.unit = unit_of(kind)
        account.owner = owner
        self.accounts[key] = record
        self.accounts_dirty[key] = record
        self.remember_account(kind, owner, record, True)

    cdef TxnRec* load_txn(self, uint64_t txn_id) except? NULL:
        cdef bytearray record
        cdef uint64_t index
        if txn_id >= self.first_txn_id:
            # An id this batch gave: its record, if it has one, is new.
            index = txn_id - self.first_txn_id
            if index < <uint64_t>len(self.new_txns) and self.new_txns[index] is not None:
                return <TxnRec*>PyByteArray_AS_STRING(<bytearray>self.new_txns[index])
            return NULL
        record = self.fetch(self.txns, self.txns_db, u64_key(txn_id))
        if record is None:
            return NULL
        return <TxnRec*>PyByteArray_AS_STRING(record)

    cdef mark_txn(self, uint64_t txn_id):
        """Write the (changed) transaction back at the end of the batch (a
        new one is written then anyway)."""
        if txn_id >= self.first_txn_id:
            return
        cdef bytes key = u64_key(txn_id)
        self.txns_dirty[key] = self.txns[key]

    cdef TxnRec* store_txn(self, const TxnRec* draft) except NULL:
        """A new transaction (its id given by this batch): kept in id order
        and appended at the end of the batch."""
        cdef bytearray record = PyByteArray_FromStringAndSize(<char*>draft, sizeof(TxnRec))
        cdef Py_ssize_t index = draft.txn_id - self.first_txn_id
        while len(self.new_txns) < index:
            self.new_txns.append(None)
        assert len(self.new_txns) == index, "a new transaction stored twice"
        self.new_txns.append(record)
        return <TxnRec*>PyByteArray_AS_STRING(record)

    # -------------------------------------------------------- requests
    # Mirror of core/idempotency.py (finding) and reference.save_idem.

    cdef IdemRec* load_idem(self, uint32_t terminal_id, uint64_t serial) except? NULL:
        """The stored answer of (terminal, serial), or NULL."""
        cdef uint64_t seq = self.find_request(terminal_id, serial)
        if seq == 0:
            return NULL
        return &(<RequestRec*>PyByteArray_AS_STRING(self.request_record(seq))).idem

    cdef bytearray load_tail(self, uint32_t terminal_id):
        """The terminal's RequestTailRec in a bytearray (kept, see _Records), or None."""
        if self.last_tail is not None and terminal_id == self.last_tail_terminal:
            return self.last_tail
        cdef PyObject* cached = PyDict_GetItem(self.request_tails, terminal_id)
        cdef bytearray tail = None
        if cached != NULL:
            if <object>cached is not None:
                tail = <bytearray>cached
        else:
            value = self.txn.get(u32_key(terminal_id), None, self.request_tails_db)
            if value is not None:
                tail = PyByteArray_FromStringAndSize(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
            self.request_tails[terminal_id] = tail
        if tail is not None:
            self.last_tail_terminal = terminal_id
            self.last_tail = tail
        return tail

    cdef uint64_t find_request(self, uint32_t terminal_id, uint64_t serial) except? 0:
        """Mirror of idempotency.find: the request's seq, or 0."""
        cdef bytearray record = self.load_tail(terminal_id)
        if record is None:
            return 0
        cdef RequestTailRec tail
        memcpy(&tail, PyByteArray_AS_STRING(record), sizeof(RequestTailRec))
        if serial > tail.max_serial:
            return 0
        cdef uint64_t seq
        cdef uint32_t i
        cdef const RequestRec* request
        if tail.tail_count and tail.tail_min_serial <= serial <= tail.tail_max_serial:
            seq = tail.last_seq
            for i in range(tail.tail_count):
                request = <const RequestRec*>PyByteArray_AS_STRING(self.request_record(seq))
                if request.serial == serial:
                    return seq
                seq = request.prev_seq
        cdef bytes key = request_bucket_key(terminal_id, serial)
        cdef PyObject* cached = PyDict_GetItem(self.index_puts, key)
        value = <object>cached if cached != NULL else self.txn.get(key, None, self.request_index_db)
        if value is None:
            return 0
        return bucket_seq(value, serial)

    cdef bytearray request_record(self, uint64_t seq):
        """The request stored under seq (one bytearray per batch, however found)."""
        if seq >= self.first_request_seq:
            return <bytearray>self.new_requests[seq - self.first_request_seq]
        cdef bytes key = u64_key(seq)
        cdef PyObject* cached = PyDict_GetItem(self.requests_loaded, key)
        if cached != NULL:
            return <bytearray>cached
        value = self.txn.get(key, None, self.requests_db)
        assert value is not None, "a request index or tail names a missing request"
        cdef bytearray record = PyByteArray_FromStringAndSize(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        self.requests_loaded[key] = record
        return record

    cdef save_idem(self, uint32_t terminal_id, uint64_t serial, const char* fingerprint, const ResultRec* result):
        """Mirror of reference.save_idem. An answer already stored is
        overwritten in place, so pointers into it (the fingerprint passed in,
        say) stay valid."""
        cdef uint64_t seq = self.find_request(terminal_id, serial)
        if seq == 0:
            self.add_request(terminal_id, serial, fingerprint, result)
            return
        cdef bytearray record = self.request_record(seq)
        cdef IdemRec* entry = &(<RequestRec*>PyByteArray_AS_STRING(record)).idem
        memmove(entry.fingerprint, fingerprint, 16)
        memmove(&entry.result, result, sizeof(ResultRec))
        if seq < self.first_request_seq:
            self.requests_changed[u64_key(seq)] = record

    cdef add_request(self, uint32_t terminal_id, uint64_t serial, const char* fingerprint, const ResultRec* result):
        """The terminal's newest request, at the end of `requests` and of its tail."""
        cdef bytearray tail_record = self.load_tail(terminal_id)
        if tail_record is None:
            tail_record = PyByteArray_FromStringAndSize(NULL, sizeof(RequestTailRec))
            memset(PyByteArray_AS_STRING(tail_record), 0, sizeof(RequestTailRec))
            self.request_tails[terminal_id] = tail_record
        self.request_tails_dirty[terminal_id] = tail_record
        cdef RequestTailRec* tail = <RequestTailRec*>PyByteArray_AS_STRING(tail_record)
        cdef uint64_t seq = self.next_request_seq
        self.next_request_seq += 1
        cdef bytearray record = PyByteArray_FromStringAndSize(NULL, sizeof(RequestRec))
        cdef RequestRec* request = <RequestRec*>PyByteArray_AS_STRING(record)
        memset(request, 0, sizeof(RequestRec))
        request.terminal_id = terminal_id
        request.serial = serial
        request.prev_seq = tail.last_seq
        memmove(request.idem.fingerprint, fingerprint, 16)
        memmove(&request.idem.result, result, sizeof(ResultRec))
        self.new_requests.append(record)
        if tail.tail_count == 0 or serial < tail.tail_min_serial:
            tail.tail_min_serial = serial
        if serial > tail.tail_max_serial:
            tail.tail_max_serial = serial
        if serial > tail.max_serial:
            tail.max_serial = serial
        tail.last_seq = seq
        tail.tail_count += 1
        if tail.tail_count == REQUEST_TAIL_MAX:
            self.index_tail(terminal_id, tail)

    cdef index_tail(self, uint32_t terminal_id, RequestTailRec* tail):
        """Mirror of reference.index_tail."""
        cdef IndexPair pairs[REQUEST_TAIL_LENGTH_MAX]
        cdef uint64_t seq = tail.last_seq
        cdef uint32_t i, first
        cdef const RequestRec* request
        assert tail.tail_count <= REQUEST_TAIL_LENGTH_MAX
        for i in range(tail.tail_count):
            request = <const RequestRec*>PyByteArray_AS_STRING(self.request_record(seq))
            pairs[i].serial = request.serial
            pairs[i].seq = seq
            seq = request.prev_seq
        # By serial: each bucket's pairs together.
        qsort(pairs, tail.tail_count, sizeof(IndexPair), compare_pairs)
        first = 0
        for i in range(1, tail.tail_count + 1):
            if i == tail.tail_count or pairs[i].serial >> REQUEST_BUCKET_BITS != pairs[first].serial >> REQUEST_BUCKET_BITS:
                key = request_bucket_key(terminal_id, pairs[first].serial)
                cached = PyDict_GetItem(self.index_puts, key)
                stored = <object>cached if cached != NULL else self.txn.get(key, None, self.request_index_db)
                self.index_puts[key] = bucket_with(stored, &pairs[first], i - first)
                first = i
        cdef uint64_t max_serial = tail.max_serial
        memset(tail, 0, sizeof(RequestTailRec))
        tail.max_serial = max_serial

    cdef uint64_t new_txn_id(self):
        self.next_txn_id += 1
        return self.next_txn_id - 1

    cdef int64_t available(self, uint8_t kind, uint64_t owner) except? -1:
        cdef AccountRec* account = self.load_account(kind, owner)
        if account == NULL:
            return 0
        return account.balance - account.held

    cdef set_card_balances(self, ResultRec* r, uint64_t card_id):
        """Mirror of reference.card_balances: points as of now."""
        if card_id == 0:
            return
        r.fleet_balance = self.load_account(FLEET, card_id).balance
        r.personal_balance = self.load_account(PERSONAL, card_id).balance
        cdef AccountRec* points = self.load_account(POINTS, card_id)
        r.points_balance = points.balance - self.expirable(card_id, points)

    cdef void init_result(self, const OpRec* op, ResultRec* r, uint16_t code) noexcept:
        memset(r, 0, sizeof(ResultRec))
        r.code = code
        r.kind = op.kind
        r.final = 1
        r.business_day = self.day

    # -------------------------------------------------------- postings

    cdef bint postings_fit(self, const Posting* postings, int count) except? False:
        """Mirror of reference.postings_fit."""
        cdef uint8_t kinds[2 * POSTINGS_MAX]
        cdef uint64_t owners[2 * POSTINGS_MAX]
        cdef int64_t running[2 * POSTINGS_MAX]
        cdef int slots = 0
        cdef int i, side, slot
        cdef uint8_t kind
        cdef uint64_t owner
        cdef int64_t delta
        for i in range(count):
            if postings[i].amount == 0:
                continue
            for side in range(2):
                if side == 0:
                    kind = postings[i].debit_kind
                    owner = postings[i].debit_owner
                    delta = -postings[i].amount
                else:
                    kind = postings[i].credit_kind
                    owner = postings[i].credit_owner
                    delta = postings[i].amount
                slot = 0
                while slot < slots and not (kinds[slot] == kind and owners[slot] == owner):
                    slot += 1
                if slot == slots:
                    kinds[slot] = kind
                    owners[slot] = owner
                    running[slot] = self.account_or_new(kind, owner, False).balance
                    slots += 1
                running[slot] += delta
                if running[slot] > BALANCE_ABS_MAX or running[slot] < -BALANCE_ABS_MAX:
                    return False
        return True

    cdef post(self, uint64_t txn_id, uint32_t station_id, const Posting* postings, int count):
        """Mirror of reference.post."""
        cdef int i
        cdef AccountRec* debit
        cdef AccountRec* credit
        cdef JournalRec* entry
        for i in range(count):
            if postings[i].amount == 0:
                continue
            debit = self.account_or_new(postings[i].debit_kind, postings[i].debit_owner, True)
            debit.balance -= postings[i].amount
            debit.debits += postings[i].amount
            assert may_go_negative(postings[i].debit_kind) or debit.balance >= debit.held, "overdraft"
            credit = self.account_or_new(postings[i].credit_kind, postings[i].credit_owner, True)
            credit.balance += postings[i].amount
            credit.credits += postings[i].amount
            entry = self.new_journal_entry()
            entry.seq = self.next_journal_seq
            entry.txn_id = txn_id
            entry.amount = postings[i].amount
            entry.created_ms = self.now_ms
            entry.debit_owner = postings[i].debit_owner
            entry.credit_owner = postings[i].credit_owner
            entry.debit_kind = postings[i].debit_kind
            entry.credit_kind = postings[i].credit_kind
            entry.movement = postings[i].movement
            entry.reason = postings[i].reason
            entry.business_day = self.day
            entry.station_id = station_id
            entry.reserved = 0
            # Each entry names the one before it on each account.
            entry.debit_prev = debit.last_seq
            entry.credit_prev = credit.last_seq
            debit.last_seq = self.next_journal_seq
            credit.last_seq = self.next_journal_seq
            self.next_journal_seq += 1
            self.journal_count += 1
            # Mirror of the lots hook in reference.post.
            if postings[i].debit_kind == POINTS:
                self.take_from_lots(postings[i].debit_owner, postings[i].amount)
            if postings[i].credit_kind == POINTS:
                self.add_to_lot(postings[i].credit_owner, postings[i].amount, txn_id)

    # -------------------------------------------------------- points lots

    cdef list open_lot_days(self, uint64_t card_id):
        """The expiry days of the card's lots in point_lots, ascending, read
        from LMDB once (then kept, see _Records). Every change to those lots
        goes through this list (and the point_lots table), so it stays exact."""
        cdef CardMemo* memo = card_memo_slot(self.card_memo, card_id, self.card_memo_batch)
        if memo.card_id == card_id and memo.lot_days != NULL:
            return <list>memo.lot_days
        cdef PyObject* cached = PyDict_GetItem(self.lot_days, card_id)
        if cached != NULL:
            claimed_card_memo(self.card_memo, card_id, self.card_memo_batch).lot_days = cached
            return <list>cached
        cdef bytes prefix = u64_key(card_id)
        cdef list days = []
        cursor = self.txn.cursor(db=self.point_lots.db)
        if cursor.set_range(prefix):
            for key, value in cursor.iternext():
                if not key.startswith(prefix):
                    break
                days.append((<const LotRec*>PyBytes_AS_STRING(value)).expires_day)
                self.point_lots.remember(key, value)
        cursor.close()
        self.lot_days[card_id] = days
        claimed_card_memo(self.card_memo, card_id, self.card_memo_batch).lot_days = <PyObject*>days
        return days

    cdef LotRec* newest_lot(self, uint64_t card_id, bint for_write) except NULL:
        """The card's newest open lot, inline after its POINTS account
        (expires_day 0: none); for_write marks the account changed."""
        cdef AccountRec* account
        if for_write:
            account = self.account_or_new(POINTS, card_id, True)
        else:
            account = self.load_account(POINTS, card_id)
        assert account != NULL, "a card's points account exists"
        return &(<PointsAccountRec*>account).lot

    cdef list open_lots(self, uint64_t card_id, bint expired_only):
        """Mirror of reference.open_lots: the card's open lots as bytes,
        those of point_lots, then the inline newest."""
        cdef list found = []
        for day in self.open_lot_days(card_id):
            if expired_only and <uint32_t>day > self.calendar_day:
                break
            found.append(self.point_lots.get(lot_key(card_id, day)))
        cdef const LotRec* newest = self.newest_lot(card_id, False)
        if newest.expires_day != 0 and not (expired_only and newest.expires_day > self.calendar_day):
            found.append(PyBytes_FromStringAndSize(<const char*>newest, sizeof(LotRec)))
        return found

    cdef add_to_lot(self, uint64_t card_id, int64_t amount, uint64_t txn_id):
        """Mirror of reference.add_to_lot."""
        cdef uint32_t expires_day = self.day + self.lot_validity_days
        cdef LotRec* newest = self.newest_lot(card_id, True)
        if newest.expires_day == 0 or expires_day > newest.expires_day:
            if newest.expires_day != 0:
                self.point_lots.put(lot_key(card_id, newest.expires_day), PyBytes_FromStringAndSize(<char*>newest, sizeof(LotRec)))
                insort(self.open_lot_days(card_id), newest.expires_day)
            self.open_lot(card_id, expires_day, txn_id, newest)
        if newest.expires_day == expires_day:
            newest.original += amount
            newest.remaining += amount
            return
        cdef bytes key = lot_key(card_id, expires_day)
        cdef LotRec lot
        value = self.point_lots.get(key)
        if value is None:
            self.open_lot(card_id, expires_day, txn_id, &lot)
            insort(self.open_lot_days(card_id), expires_day)
        else:
            memcpy(&lot, PyBytes_AS_STRING(value), sizeof(LotRec))
        lot.original += amount
        lot.remaining += amount
        self.point_lots.put(key, PyBytes_FromStringAndSize(<char*>&lot, sizeof(LotRec)))

    cdef open_lot(self, uint64_t card_id, uint32_t expires_day, uint64_t txn_id, LotRec* lot):
        """Mirror of reference.open_lot: *lot is the new lot."""
        cdef bytes key = lot_key(card_id, expires_day)
        value = self.closed_lots.get(key)
        if value is None:
            memset(lot, 0, sizeof(LotRec))
            lot.card_id = card_id
            lot.expires_day = expires_day
            lot.earned_day = self.day
            lot.first_txn_id = txn_id
        else:
            memcpy(lot, PyBytes_AS_STRING(value), sizeof(LotRec))
            self.closed_lots.delete(key)
        self.lot_expiry.put(lot_expiry_key(expires_day, card_id), b"")

    cdef take_from_lots(self, uint64_t card_id, int64_t amount):
        """Mirror of reference.take_from_lots: oldest first, the inline newest last."""
        cdef int64_t left = amount
        cdef int64_t taken
        cdef LotRec lot
        cdef bytes key
        cdef list days = self.open_lot_days(card_id)
        while days and left:
            key = lot_key(card_id, days[0])
            memcpy(&lot, PyBytes_AS_STRING(self.point_lots.get(key)), sizeof(LotRec))
            taken = lot.remaining if lot.remaining < left else left
            lot.remaining -= taken
            left -= taken
            if lot.remaining == 0:
                self.point_lots.delete(key)
                del days[0]
                self.close_lot(&lot)
            else:
                self.point_lots.put(key, PyBytes_FromStringAndSize(<char*>&lot, sizeof(LotRec)))
        cdef LotRec* newest
        if left:
            newest = self.newest_lot(card_id, True)
            assert newest.expires_day != 0, "points balance and lots disagree"
            taken = newest.remaining if newest.remaining < left else left
            newest.remaining -= taken
            left -= taken
            if newest.remaining == 0:
                self.close_lot(newest)
                memset(newest, 0, sizeof(LotRec))
        assert left == 0, "points balance and lots disagree"

    cdef close_lot(self, const LotRec* lot):
        """A lot left empty: off the expiry index, into closed_lots."""
        self.lot_expiry.delete(lot_expiry_key(lot.expires_day, lot.card_id))
        self.closed_lots.put(lot_key(lot.card_id, lot.expires_day), PyBytes_FromStringAndSize(<const char*>lot, sizeof(LotRec)))

    cdef int64_t expirable(self, uint64_t card_id, const AccountRec* account) except -1:
        """Mirror of reference.expirable."""
        if account.balance <= account.held:
            return 0
        cdef int64_t due = 0
        cdef uint32_t day
        for day in self.open_lot_days(card_id):
            if day > self.calendar_day:
                break
            due += (<const LotRec*>PyBytes_AS_STRING(self.point_lots.get(lot_key(card_id, day)))).remaining
        cdef const LotRec* newest = &(<const PointsAccountRec*>account).lot
        if newest.expires_day != 0 and newest.expires_day <= self.calendar_day:
            due += newest.remaining
        cdef int64_t free = account.balance - account.held
        if free < due:
            due = free
        return due if due > 0 else 0

    cdef int64_t expire_lots(self, uint64_t card_id) except -1:
        """Mirror of reference.expire_lots."""
        cdef AccountRec* account = self.load_account(POINTS, card_id)
        if account == NULL:
            return 0
        cdef int64_t amount = self.expirable(card_id, account)
        cdef Posting posting
        if amount > 0:
            set_posting(&posting, POINTS, card_id, POINTS_LIABILITY, 0, amount, MOVE_EXPIRY, REASON_EXPIRY)
            self.post(0, 0, &posting, 1)
        return amount

    cdef expire_points(self, const OpRec* op, ResultRec* r):
        if self.load_card(op.card_id) == NULL:
            self.init_result(op, r, CARD_NOT_FOUND)
            r.card_id = op.card_id
            return
        cdef int64_t expired = self.expire_lots(op.card_id)
        self.init_result(op, r, APPROVED)
        r.card_id = op.card_id
        r.amount = expired
        self.set_card_balances(r, op.card_id)

    cdef change_held(self, uint64_t card_id, int64_t fleet, int64_t personal, int64_t points):
        cdef uint8_t kinds[3]
        cdef int64_t deltas[3]
        cdef int i
        cdef AccountRec* account
        kinds[0] = FLEET
        kinds[1] = PERSONAL
        kinds[2] = POINTS
        deltas[0] = fleet
        deltas[1] = personal
        deltas[2] = points
        for i in range(3):
            if deltas[i] == 0:
                continue
            account = self.account_or_new(kinds[i], card_id, True)
            account.held += deltas[i]
            assert 0 <= account.held <= account.balance, "held out of range"

    # -------------------------------------------------------- card rules

    cdef uint16_t card_decline(self, const CardRec* card, uint32_t station_id) except 0:
        if card == NULL:
            return CARD_NOT_FOUND
        if card.status != CARD_ACTIVE:
            return status_decline(card.status)
        if card.flags & RESTRICTED_STATIONS:
            if self.txn.get(card_station_key(card.card_id, station_id), None, self.card_stations_db) is None:
                return CARD_NOT_ALLOWED_HERE
        cdef uint32_t domain = 0
        if card.flags & RESTRICTED_DOMAINS:
            raw = self.txn.get(u32_key(station_id), None, self.station_domains_db)
            if raw is not None:
                memcpy(&domain, PyBytes_AS_STRING(raw), 4)
            if self.txn.get(card_station_key(card.card_id, domain), None, self.card_domains_db) is None:
                return DOMAIN_NOT_ENABLED
        return APPROVED

    cdef inline int64_t spent_today(self, const CardRec* card) noexcept:
        """Mirror of reference.spent_today."""
        return card.day_spent if card.day >= self.day else 0

    cdef uint16_t limit_decline(self, const CardRec* card, int64_t amount) noexcept:
        if card.limit_per_txn and amount > card.limit_per_txn:
            return LIMIT_PER_TRANSACTION_EXCEEDED
        if card.limit_per_day and self.spent_today(card) + amount > card.limit_per_day:
            return LIMIT_PER_DAY_EXCEEDED
        return APPROVED

    cdef add_spent(self, uint64_t card_id, int64_t amount):
        cdef CardRec* card = self.card_for_write(card_id)
        card.day_spent = self.spent_today(card) + amount
        if self.day > card.day:
            card.day = self.day

    cdef return_spent(self, uint64_t card_id, uint32_t business_day, int64_t amount):
        if card_id == 0 or amount == 0:
            return
        cdef CardRec* card = self.load_card(card_id)
        if card.day == business_day:
            card = self.card_for_write(card_id)
            card.day_spent = card.day_spent - amount if card.day_spent > amount else 0

    # -------------------------------------------------------- dispatch

    cdef apply(self, const OpRec* op, ResultRec* r):
        self.day = self.station_day(op.station_id)
        if not op_is_valid(op):
            self.init_result(op, r, INVALID_OPERATION)
            return
        self.lot_validity_days = op.lot_validity_days if op.lot_validity_days else LOT_VALIDITY_DAYS_DEFAULT
        cdef bint idempotent = op.serial != 0 and is_idempotent_kind(op.kind)
        cdef IdemRec* stored
        if idempotent:
            stored = self.load_idem(op.terminal_id, op.serial)
            if stored != NULL:
                self.replay(op, stored, r)
                return
        if is_shift_bound_kind(op.kind) and self.shift_closed(op.terminal_id):
            self.refusal(op, SHIFT_CLOSED, r)
        else:
            self.dispatch(op, r)
        if idempotent:
            self.save_idem(op.terminal_id, op.serial, op.fingerprint, r)

    cdef apply_chain(self, const OpRec* ops, ResultRec* results, Py_ssize_t count):
        """Mirror of reference.apply_chain."""
        cdef Py_ssize_t k
        cdef Py_ssize_t takes = count
        cdef const OpRec* main = NULL
        cdef ResultRec* answer = &results[count - 1]
        self.day = self.station_day(ops[count - 1].station_id)
        if not chain_is_valid(ops, count):
            for k in range(count):
                self.init_result(&ops[k], &results[k], INVALID_OPERATION)
            return
        if ops[count - 1].kind != OP_COUNTER:
            main = &ops[count - 1]
            takes = count - 1
        if main != NULL and self.is_replay(main):
            self.apply(main, answer)
            for k in range(takes):
                self.init_result(&ops[k], &results[k], answer.code)
            return
        cdef Py_ssize_t refused = -1
        cdef uint16_t code = self.counters_refusal(ops, takes, &refused)
        if code != APPROVED:
            for k in range(takes):
                self.init_result(&ops[k], &results[k], code if k == refused else LINKED_FAILED)
            if main != NULL:
                self.refusal(main, LINKED_FAILED, answer)
            return
        if main != NULL:
            self.apply(main, answer)
            if answer.code != APPROVED and answer.code != PENDING:
                for k in range(takes):
                    self.init_result(&ops[k], &results[k], LINKED_FAILED)
                return
        cdef uint64_t returned_by = answer.txn_id if main != NULL and is_counter_returning_kind(main.kind) else 0
        self.take_counters(ops, results, takes, returned_by)

    cdef bint is_replay(self, const OpRec* op) except? True:
        if op.serial == 0 or not is_idempotent_kind(op.kind):
            return False
        return self.load_idem(op.terminal_id, op.serial) != NULL

    cdef replay(self, const OpRec* op, const IdemRec* stored, ResultRec* r):
        """Mirror of reference.replay."""
        if memcmp(stored.fingerprint, ZERO_FINGERPRINT, 16) == 0:
            self.refusal(op, ALREADY_REVERSED, r)
        elif memcmp(stored.fingerprint, op.fingerprint, 16) != 0:
            self.refusal(op, DUPLICATE_MISMATCH, r)
        else:
            memcpy(r, &stored.result, sizeof(ResultRec))
            r.final |= RESULT_REPLAYED

    cdef refusal(self, const OpRec* op, uint16_t code, ResultRec* r):
        """Mirror of reference.refusal."""
        if is_sale_kind(op.kind):
            self.sale_decline(op, code, r)
        else:
            self.init_result(op, r, code)
            r.card_id = op.card_id

    cdef sale_decline(self, const OpRec* op, uint16_t code, ResultRec* r):
        """Mirror of reference.sale_decline."""
        self.init_result(op, r, code)
        r.card_id = op.card_id
        r.amount = op.amount
        if op.card_id != 0 and self.load_card(op.card_id) != NULL:
            self.set_card_balances(r, op.card_id)

    cdef dispatch(self, const OpRec* op, ResultRec* r):
        cdef uint8_t kind = op.kind
        if kind == OP_TRANSFER:
            self.transfer(op, r)
        elif kind == OP_PAY:
            self.pay(op, r)
        elif kind == OP_CAPTURE:
            self.capture(op, r)
        elif kind == OP_ABORT:
            self.abort(op, r)
        elif kind == OP_PREAUTH:
            self.preauth(op, r)
        elif kind == OP_COMPLETE:
            self.complete(op, r)
        elif kind == OP_RELEASE:
            self.release(op, r)
        elif kind == OP_REVERSE:
            self.reverse(op, r)
        elif kind == OP_VOID:
            self.void_sale(op, r)
        elif kind == OP_REFUND:
            self.refund(op, r)
        elif kind == OP_TOPUP:
            self.topup(op, r)
        elif kind == OP_OPEN_CARD:
            self.open_card(op, r)
        elif kind == OP_SET_CARD_STATUS:
            self.set_card_status(op, r)
        elif kind == OP_SET_CARD_LIMITS:
            self.set_card_limits(op, r)
        elif kind == OP_ALLOW_STATION:
            self.allow_station(op, r)
        elif kind == OP_EXPIRE_HOLDS:
            self.expire_holds(op, r)
        elif kind == OP_OPEN_ACCOUNT:
            self.open_account(op, r)
        elif kind == OP_EXPIRE_POINTS:
            self.expire_points(op, r)
        elif kind == OP_REDEEM:
            self.redeem(op, r)
        elif kind == OP_CHECKIN:
            self.checkin(op, r)
        elif kind == OP_TASK:
            self.task(op, r)
        elif kind == OP_PARTNER_EXCHANGE:
            self.partner_exchange(op, r)
        elif kind == OP_SET_MEMBER:
            self.set_member(op, r)
        elif kind == OP_SET_TIER:
            self.set_tier(op, r)
        elif kind == OP_GIFT_SET:
            self.gift_set(op, r)
        elif kind == OP_GIFT_STOCK:
            self.gift_stock(op, r)
        elif kind == OP_EXTEND_LOTS:
            self.extend_lots(op, r)
        elif kind == OP_CLEAR_LOTS:
            self.clear_lots(op, r)
        elif kind == OP_SIGN_ON:
            self.sign_on(op, r)
        elif kind == OP_SHIFT_CLOSE:
            self.shift_close(op, r)
        elif kind == OP_DAY_END:
            self.day_end(op, r)
        elif kind == OP_ENABLE_DOMAIN:
            self.enable_domain(op, r)
        elif kind == OP_STATION_DOMAIN:
            self.station_domain(op, r)
        elif kind == OP_CANCEL_CARD:
            self.cancel_card(op, r)
        elif kind == OP_PACKET_CLAIM:
            self.packet_claim(op, r)
        else:
            raise KeyError(kind)

    # -------------------------------------------------------- cards

    cdef open_card(self, const OpRec* op, ResultRec* r):
        if self.load_card(op.card_id) != NULL:
            self.init_result(op, r, CARD_EXISTS)
            r.card_id = op.card_id
            return
        cdef bytes key = u64_key(op.card_id)
        cdef bytearray record = PyByteArray_FromStringAndSize(NULL, sizeof(CardRec))
        cdef CardRec* card = <CardRec*>PyByteArray_AS_STRING(record)
        memset(card, 0, sizeof(CardRec))
        card.card_id = op.card_id
        card.status = CARD_ACTIVE
        card.card_type = op.card_status
        card.limit_per_txn = op.limit_per_txn
        card.limit_per_day = op.limit_per_day
        card.opened_ms = self.now_ms
        self.cards[key] = record
        self.cards_dirty[key] = record
        self.remember_card(op.card_id, record, True)
        self.new_account(FLEET, op.card_id)
        self.new_account(PERSONAL, op.card_id)
        self.new_account(POINTS, op.card_id)
        self.init_result(op, r, APPROVED)
        r.card_id = op.card_id

    cdef set_card_status(self, const OpRec* op, ResultRec* r):
        cdef CardRec* card = self.load_card(op.card_id)
        if card == NULL:
            self.init_result(op, r, CARD_NOT_FOUND)
        elif card.status == CARD_STATUS_CANCELLED:
            self.init_result(op, r, CARD_CANCELLED)
        else:
            self.card_for_write(op.card_id).status = op.card_status
            self.init_result(op, r, APPROVED)
        r.card_id = op.card_id

    cdef set_card_limits(self, const OpRec* op, ResultRec* r):
        cdef CardRec* card = self.load_card(op.card_id)
        if card == NULL:
            self.init_result(op, r, CARD_NOT_FOUND)
        else:
            card = self.card_for_write(op.card_id)
            card.limit_per_txn = op.limit_per_txn
            card.limit_per_day = op.limit_per_day
            self.init_result(op, r, APPROVED)
        r.card_id = op.card_id

    cdef allow_station(self, const OpRec* op, ResultRec* r):
        cdef CardRec* card = self.load_card(op.card_id)
        if card == NULL:
            self.init_result(op, r, CARD_NOT_FOUND)
        else:
            self.card_for_write(op.card_id).flags |= RESTRICTED_STATIONS
            self.txn.put(card_station_key(op.card_id, op.station_id), b"", db=self.card_stations_db)
            self.init_result(op, r, APPROVED)
        r.card_id = op.card_id

    cdef topup(self, const OpRec* op, ResultRec* r):
        cdef CardRec* card = self.load_card(op.card_id)
        if card == NULL or card.status != CARD_ACTIVE:
            self.init_result(op, r, CARD_NOT_FOUND if card == NULL else status_decline(card.status))
            r.card_id = op.card_id
            return
        cdef Posting posting
        if op.account_kind == POINTS:
            set_posting(&posting, POINTS_LIABILITY, 0, op.account_kind, op.card_id, op.amount, MOVE_TOPUP, REASON_TOPUP)
        else:
            set_posting(&posting, TOPUP_FUNDING, op.station_id, op.account_kind, op.card_id, op.amount, MOVE_TOPUP, REASON_TOPUP)
        if not self.postings_fit(&posting, 1):
            self.init_result(op, r, BALANCE_LIMIT)
            r.card_id = op.card_id
            return
        cdef TxnRec draft
        self.txn_draft(op, OP_TOPUP, POSTED, &draft)
        draft.txn_id = self.new_txn_id()
        cdef int leg = LEG_FLEET if op.account_kind == FLEET else (LEG_PERSONAL if op.account_kind == PERSONAL else LEG_POINTS_USED)
        draft.held[leg] = op.amount
        draft.posted[leg] = op.amount
        self.store_txn(&draft)
        self.post(draft.txn_id, op.station_id, &posting, 1)
        self.init_result(op, r, APPROVED)
        r.txn_id = draft.txn_id
        r.card_id = op.card_id
        r.amount = op.amount
        if leg == LEG_FLEET:
            r.fleet = op.amount
        elif leg == LEG_PERSONAL:
            r.personal = op.amount
        else:
            r.points_used = op.amount
        self.set_card_balances(r, op.card_id)

    cdef void txn_draft(self, const OpRec* op, uint8_t kind, uint8_t state, TxnRec* record) noexcept:
        memset(record, 0, sizeof(TxnRec))
        record.kind = kind
        record.state = state
        record.channel = op.channel
        record.station_id = op.station_id
        record.terminal_id = op.terminal_id
        record.operator_id = op.operator_id
        record.business_day = self.day
        record.serial = op.serial
        record.card_id = op.card_id
        record.ref_txn_id = op.ref_txn_id
        record.created_ms = self.now_ms
        record.amount = op.amount

    # -------------------------------------------------------- pay

    cdef pay(self, const OpRec* op, ResultRec* r):
        cdef CardRec* card = NULL
        cdef uint16_t decline
        if op.card_id != 0:
            card = self.load_card(op.card_id)
            decline = self.card_decline(card, op.station_id)
            if decline == APPROVED:
                decline = self.limit_decline(card, op.amount)
            if decline != APPROVED:
                self.sale_decline(op, decline, r)
                return
        if card != NULL and op.plan_flags & USE_POINTS:
            self.expire_lots(op.card_id)
        cdef TxnRec draft
        self.txn_draft(op, OP_PAY, HELD, &draft)
        if card != NULL:
            self.split_internal(op, draft.held)
        cdef int64_t channel_amount = op.amount - draft.held[LEG_FLEET] - draft.held[LEG_PERSONAL] - draft.held[LEG_POINTS_CASH]
        if channel_amount > 0 and op.channel == CHANNEL_NONE:
            self.sale_decline(op, INSUFFICIENT_FUNDS, r)
            return
        draft.channel = op.channel if channel_amount > 0 else CHANNEL_NONE
        draft.held[LEG_CHANNEL] = channel_amount
        if card != NULL:
            draft.points_earned = share(op.earn_points, op.amount - draft.held[LEG_POINTS_CASH], op.amount)
        cdef Posting postings[POSTINGS_MAX]
        cdef int count
        if channel_amount == 0:
            count = sale_postings(postings, draft.card_id, draft.station_id, draft.channel, draft.held, draft.points_earned, REASON_SALE)
            if not self.postings_fit(postings, count):
                self.sale_decline(op, BALANCE_LIMIT, r)
                return
        draft.txn_id = self.new_txn_id()
        if card != NULL:
            self.add_spent(op.card_id, op.amount)
        cdef TxnRec* record = self.store_txn(&draft)
        if channel_amount == 0:
            self.post_sale(record)
            self.sale_result(op.kind, record, APPROVED, r)
            return
        self.change_held(op.card_id, draft.held[LEG_FLEET], draft.held[LEG_PERSONAL], draft.held[LEG_POINTS_USED])
        self.txn.put(u64_key(record.txn_id), b"", db=self.pending_db)
        self.sale_result(op.kind, record, PENDING, r)

    cdef split_internal(self, const OpRec* op, int64_t* legs):
        """Mirror of reference.split_internal."""
        cdef int64_t rest = op.amount
        cdef int64_t taken, points_available
        if op.plan_flags & USE_FLEET:
            taken = self.available(FLEET, op.card_id)
            legs[LEG_FLEET] = rest if rest < taken else taken
            rest -= legs[LEG_FLEET]
        if op.plan_flags & USE_PERSONAL:
            taken = self.available(PERSONAL, op.card_id)
            legs[LEG_PERSONAL] = rest if rest < taken else taken
            rest -= legs[LEG_PERSONAL]
        if op.plan_flags & USE_POINTS:
            points_available = self.available(POINTS, op.card_id)
            if points_available > POINTS_MAX:
                points_available = POINTS_MAX
            if op.points_max and op.points_max < points_available:
                points_available = op.points_max
            taken = cash_for_points(points_available, op.points_per_unit)
            legs[LEG_POINTS_CASH] = rest if rest < taken else taken
            legs[LEG_POINTS_USED] = points_for_cash(legs[LEG_POINTS_CASH], op.points_per_unit)

    cdef post_sale(self, TxnRec* record):
        cdef Posting postings[POSTINGS_MAX]
        memcpy(record.posted, record.held, LEG_COUNT * sizeof(int64_t))
        cdef int count = sale_postings(postings, record.card_id, record.station_id, record.channel,
                                       record.held, record.points_earned, REASON_SALE)
        self.post(record.txn_id, record.station_id, postings, count)
        record.state = POSTED

    cdef sale_result(self, uint8_t kind, const TxnRec* record, uint16_t code, ResultRec* r):
        memset(r, 0, sizeof(ResultRec))
        r.code = code
        r.kind = kind
        r.final = 0 if code == PENDING else 1
        r.business_day = self.day
        r.txn_id = record.txn_id
        r.card_id = record.card_id
        r.amount = record.amount
        cdef const int64_t* legs = answer_legs(record)
        r.fleet = legs[LEG_FLEET]
        r.personal = legs[LEG_PERSONAL]
        r.points_cash = legs[LEG_POINTS_CASH]
        r.points_used = legs[LEG_POINTS_USED]
        r.channel_amount = legs[LEG_CHANNEL]
        r.points_earned = record.points_earned if record.state == POSTED else 0
        self.set_card_balances(r, record.card_id)

    # -------------------------------------------------------- channel

    cdef uint16_t channel_wait_decline(self, const TxnRec* record) except 0:
        if not (record.kind == OP_PAY or record.kind == OP_REFUND):
            return WRONG_TRANSACTION_KIND
        self.txn.delete(u64_key(record.txn_id), db=self.pending_db)
        if record.flags & FLAG_REVERSED:
            return ALREADY_REVERSED
        if record.state != HELD:
            return HOLD_CLOSED
        return APPROVED

    cdef capture(self, const OpRec* op, ResultRec* r):
        cdef TxnRec* record = self.load_txn(op.ref_txn_id)
        if record == NULL:
            self.init_result(op, r, ORIGINAL_NOT_FOUND)
            return
        self.day = self.station_day(record.station_id)
        cdef uint16_t code = self.channel_wait_decline(record)
        if code != APPROVED:
            self.init_result(op, r, code)
            r.txn_id = record.txn_id
            return
        cdef TxnRec* sale
        self.mark_txn(record.txn_id)
        if record.kind == OP_REFUND:
            sale = self.load_txn(record.ref_txn_id)
            self.mark_txn(sale.txn_id)
            self.post_return(record, sale, record.held, record.amount, REASON_REFUND, record.points_per_unit)
        else:
            self.change_held(record.card_id, -record.held[LEG_FLEET], -record.held[LEG_PERSONAL], -record.held[LEG_POINTS_USED])
            self.post_sale(record)
        self.finish_request(record, APPROVED, r)

    cdef abort(self, const OpRec* op, ResultRec* r):
        cdef TxnRec* record = self.load_txn(op.ref_txn_id)
        if record == NULL:
            self.init_result(op, r, ORIGINAL_NOT_FOUND)
            return
        self.day = self.station_day(record.station_id)
        cdef uint16_t code = self.channel_wait_decline(record)
        if code != APPROVED:
            self.init_result(op, r, code)
            r.txn_id = record.txn_id
            return
        cdef TxnRec* sale
        cdef int leg
        self.mark_txn(record.txn_id)
        if record.kind == OP_REFUND:
            sale = self.load_txn(record.ref_txn_id)
            self.mark_txn(sale.txn_id)
            for leg in range(LEG_COUNT):
                sale.refunded[leg] -= record.held[leg]
        else:
            self.release_hold(record)
        record.state = ABORTED
        self.finish_request(record, op.abort_code, r)

    cdef finish_request(self, const TxnRec* record, uint16_t code, ResultRec* r):
        """Store the final answer of the request that waited for its channel."""
        if record.kind == OP_REFUND:
            self.refund_result(record.kind, record, code, r)
        else:
            self.sale_result(record.kind, record, code, r)
        cdef IdemRec* entry = self.load_idem(record.terminal_id, record.serial)
        if entry != NULL:
            self.save_idem(record.terminal_id, record.serial, entry.fingerprint, r)

    cdef release_hold(self, const TxnRec* record):
        self.change_held(record.card_id, -record.held[LEG_FLEET], -record.held[LEG_PERSONAL], -record.held[LEG_POINTS_USED])
        self.return_spent(record.card_id, record.business_day, record.amount)
        self.return_counters(record.txn_id)

    # -------------------------------------------------------- pre-auth

    cdef preauth(self, const OpRec* op, ResultRec* r):
        cdef CardRec* card = self.load_card(op.card_id)
        cdef uint16_t decline = self.card_decline(card, op.station_id)
        if decline == APPROVED:
            decline = self.limit_decline(card, op.amount)
        if decline != APPROVED:
            self.sale_decline(op, decline, r)
            return
        cdef int64_t fleet_available = self.available(FLEET, op.card_id)
        cdef int64_t fleet = op.amount if op.amount < fleet_available else fleet_available
        cdef int64_t personal = op.amount - fleet
        if personal > self.available(PERSONAL, op.card_id):
            self.sale_decline(op, INSUFFICIENT_FUNDS, r)
            return
        cdef TxnRec draft
        self.txn_draft(op, OP_PREAUTH, HELD, &draft)
        draft.txn_id = self.new_txn_id()
        draft.held[LEG_FLEET] = fleet
        draft.held[LEG_PERSONAL] = personal
        draft.expires_ms = self.now_ms + <int64_t>op.hold_timeout_s * 1000
        self.add_spent(op.card_id, op.amount)
        self.change_held(op.card_id, fleet, personal, 0)
        cdef TxnRec* record = self.store_txn(&draft)
        self.txn.put(hold_expiry_key(record.expires_ms, record.txn_id), b"", db=self.hold_expiry_db)
        self.sale_result(op.kind, record, APPROVED, r)

    cdef uint16_t open_hold(self, const OpRec* op, TxnRec** found) except 0:
        """Mirror of reference.open_hold; *found is the transaction or NULL."""
        cdef TxnRec* record = self.load_txn(op.ref_txn_id)
        found[0] = record
        if record == NULL:
            return ORIGINAL_NOT_FOUND
        if record.kind != OP_PREAUTH:
            return WRONG_TRANSACTION_KIND
        if record.station_id != op.station_id:
            return STATION_MISMATCH
        if record.flags & FLAG_REVERSED:
            return ALREADY_REVERSED
        if record.state == EXPIRED:
            return HOLD_EXPIRED
        if record.state != HELD:
            return HOLD_CLOSED
        if <uint64_t>self.now_ms >= record.expires_ms:
            self.expire_hold(record)
            return HOLD_EXPIRED
        return APPROVED

    cdef expire_hold(self, TxnRec* record):
        self.release_hold(record)
        record.state = EXPIRED
        self.mark_txn(record.txn_id)
        self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.hold_expiry_db)

    cdef complete(self, const OpRec* op, ResultRec* r):
        cdef TxnRec* record
        cdef uint16_t code = self.open_hold(op, &record)
        if code != APPROVED:
            self.init_result(op, r, code)
            r.txn_id = 0 if record == NULL else record.txn_id
            return
        if op.amount > record.held[LEG_FLEET] + record.held[LEG_PERSONAL]:
            self.init_result(op, r, AMOUNT_EXCEEDS_HOLD)
            r.txn_id = record.txn_id
            return
        self.change_held(record.card_id, -record.held[LEG_FLEET], -record.held[LEG_PERSONAL], 0)
        self.return_spent(record.card_id, record.business_day, record.amount - op.amount)
        record.posted[LEG_FLEET] = op.amount if op.amount < record.held[LEG_FLEET] else record.held[LEG_FLEET]
        record.posted[LEG_PERSONAL] = op.amount - record.posted[LEG_FLEET]
        record.points_earned = op.earn_points
        cdef Posting postings[POSTINGS_MAX]
        cdef int count = sale_postings(postings, record.card_id, record.station_id, record.channel,
                                       record.posted, record.points_earned, REASON_COMPLETE)
        self.post(record.txn_id, record.station_id, postings, count)
        record.state = POSTED
        self.mark_txn(record.txn_id)
        self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.hold_expiry_db)
        self.sale_result(op.kind, record, APPROVED, r)
        r.amount = op.amount

    cdef release(self, const OpRec* op, ResultRec* r):
        cdef TxnRec* record
        cdef uint16_t code = self.open_hold(op, &record)
        if code != APPROVED:
            self.init_result(op, r, code)
            r.txn_id = 0 if record == NULL else record.txn_id
            return
        self.release_hold(record)
        record.state = RELEASED
        self.mark_txn(record.txn_id)
        self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.hold_expiry_db)
        self.init_result(op, r, APPROVED)
        r.txn_id = record.txn_id
        r.card_id = record.card_id
        r.amount = record.held[LEG_FLEET] + record.held[LEG_PERSONAL]
        r.fleet = record.held[LEG_FLEET]
        r.personal = record.held[LEG_PERSONAL]
        self.set_card_balances(r, record.card_id)

    cdef Py_ssize_t expire_due_holds(self) except -1:
        """Mirror of reference.expire_due_holds."""
        cdef list due = []
        cdef const char* data
        cursor = self.txn.cursor(db=self.hold_expiry_db)
        if cursor.first():
            for key in cursor.iternext(keys=True, values=False):
                data = PyBytes_AS_STRING(key)
                if parse_u64(data) > <uint64_t>self.now_ms or len(due) == EXPIRE_SWEEP_HOLDS_MAX:
                    break
                due.append(parse_u64(data + 8))
        cursor.close()
        for txn_id in due:
            self.expire_hold(self.load_txn(txn_id))
        return len(due)

    cdef expire_holds(self, const OpRec* op, ResultRec* r):
        cdef Py_ssize_t expired = self.expire_due_holds()
        self.init_result(op, r, APPROVED)
        r.amount = expired

    # -------------------------------------------------------- undo

    cdef reverse(self, const OpRec* op, ResultRec* r):
        cdef IdemRec* original = self.load_idem(op.terminal_id, op.ref_serial)
        cdef ResultRec tombstone
        if original == NULL:
            memset(&tombstone, 0, sizeof(ResultRec))
            tombstone.code = ALREADY_REVERSED
            tombstone.final = 1
            tombstone.business_day = self.day
            self.save_idem(op.terminal_id, op.ref_serial, ZERO_FINGERPRINT, &tombstone)
            self.init_result(op, r, ORIGINAL_NOT_SEEN)
            return
        if memcmp(original.fingerprint, ZERO_FINGERPRINT, 16) == 0:
            self.init_result(op, r, ORIGINAL_NOT_SEEN)
            return
        cdef ResultRec* answer = &original.result
        if not is_reversible_kind(answer.kind):
            self.init_result(op, r, NOT_REVERSIBLE)
            r.txn_id = answer.txn_id
            return
        if answer.code != APPROVED and answer.code != PENDING:
            self.init_result(op, r, ORIGINAL_DECLINED)
            r.txn_id = answer.txn_id
            return
        cdef TxnRec* record = self.load_txn(answer.txn_id)
        cdef uint16_t code = nothing_to_reverse(record)
        if code != APPROVED:
            self.init_result(op, r, code)
            r.txn_id = record.txn_id
            return
        if money_total(record.refunded) != 0:
            self.init_result(op, r, NOT_REVERSIBLE)
            r.txn_id = record.txn_id
            return
        if record.kind == OP_TOPUP:
            self.reverse_topup(op, record, r)
            return
        cdef ResultRec final
        if record.state == HELD:
            self.release_hold(record)
            if record.kind == OP_PREAUTH:
                record.state = RELEASED
                self.txn.delete(hold_expiry_key(record.expires_ms, record.txn_id), db=self.hold_expiry_db)
            else:
                record.state = ABORTED
                self.sale_result(record.kind, record, ALREADY_REVERSED, &final)
                self.save_idem(record.terminal_id, record.serial, original.fingerprint, &final)
            record.flags |= FLAG_REVERSED
            self.mark_txn(record.txn_id)
            self.undo_result(op, record, r)
            return
        self.undo_posted(op, record, FLAG_REVERSED, REASON_REVERSAL, r)

    cdef reverse_topup(self, const OpRec* op, TxnRec* record, ResultRec* r):
        cdef uint8_t kind
        cdef int64_t amount
        if record.posted[LEG_FLEET]:
            kind = FLEET
            amount = record.posted[LEG_FLEET]
        elif record.posted[LEG_PERSONAL]:
            kind = PERSONAL
            amount = record.posted[LEG_PERSONAL]
        else:
            kind = POINTS
            amount = record.posted[LEG_POINTS_USED]
        if kind == POINTS:
            self.expire_lots(record.card_id)
        if self.available(kind, record.card_id) < amount:
            self.init_result(op, r, INSUFFICIENT_FUNDS)
            r.txn_id = record.txn_id
            r.card_id = record.card_id
            return
        cdef Posting posting
        if kind == POINTS:
            set_posting(&posting, kind, record.card_id, POINTS_LIABILITY, 0, amount, MOVE_TOPUP, REASON_REVERSAL)
        else:
            set_posting(&posting, kind, record.card_id, TOPUP_FUNDING, record.station_id, amount, MOVE_TOPUP, REASON_REVERSAL)
        if not self.postings_fit(&posting, 1):
            self.init_result(op, r, BALANCE_LIMIT)
            r.txn_id = record.txn_id
            r.card_id = record.card_id
            return
        self.post(record.txn_id, record.station_id, &posting, 1)
        self.return_counters(record.txn_id)
        record.flags |= FLAG_REVERSED
        self.mark_txn(record.txn_id)
        self.init_result(op, r, APPROVED)
        r.txn_id = record.txn_id
        r.card_id = record.card_id
        r.amount = amount
        self.set_card_balances(r, record.card_id)

    cdef void_sale(self, const OpRec* op, ResultRec* r):
        cdef TxnRec* record
        cdef uint16_t code = self.posted_sale(op, &record)
        if code == APPROVED and money_total(record.refunded) != 0:
            code = ALREADY_REFUNDED
        if code == APPROVED and <int64_t>record.business_day <= self.closed_day(record.station_id):
            code = DAY_CLOSED
        if code == APPROVED and record.business_day != self.day:
            code = VOID_NOT_SAME_DAY
        if code != APPROVED:
            self.init_result(op, r, code)
            r.txn_id = 0 if record == NULL else record.txn_id
            return
        self.undo_posted(op, record, FLAG_VOIDED, REASON_VOID, r)

    cdef uint16_t posted_sale(self, const OpRec* op, TxnRec** found) except 0:
        cdef TxnRec* record = self.load_txn(op.ref_txn_id)
        found[0] = record
        if record == NULL:
            return ORIGINAL_NOT_FOUND
        if not (record.kind == OP_PAY or record.kind == OP_PREAUTH):
            return WRONG_TRANSACTION_KIND
        if record.station_id != op.station_id:
            return STATION_MISMATCH
        if record.flags & FLAG_REVERSED:
            return ALREADY_REVERSED
        if record.flags & FLAG_VOIDED:
            return ALREADY_VOIDED
        if record.state != POSTED:
            return TRANSACTION_NOT_POSTED
        return APPROVED

    cdef undo_posted(self, const OpRec* op, TxnRec* record, uint8_t flag, uint8_t reason, ResultRec* r):
        """Mirror of reference.undo_posted: return all a posted sale took."""
        cdef int64_t amount = money_total(record.posted)
        cdef Posting postings[POSTINGS_MAX]
        cdef int count = return_postings(postings, record.card_id, record.station_id, record.channel, record.posted, 0, reason)
        if not self.postings_fit(postings, count):
            self.init_result(op, r, BALANCE_LIMIT)
            r.txn_id = record.txn_id
            return
        cdef TxnRec undo
        memset(&undo, 0, sizeof(TxnRec))
        undo.txn_id = record.txn_id
        undo.card_id = record.card_id
        undo.station_id = record.station_id
        undo.channel = record.channel
        undo.amount = amount
        memcpy(undo.held, record.posted, LEG_COUNT * sizeof(int64_t))
        self.post_return(&undo, record, undo.held, amount, reason, op.points_per_unit)
        record.shortfall_settled = undo.shortfall_settled
        self.return_spent(record.card_id, record.business_day, amount)
        self.return_counters(record.txn_id)
        record.flags |= flag
        self.mark_txn(record.txn_id)
        self.undo_result(op, &undo, r)

    cdef undo_result(self, const OpRec* op, const TxnRec* record, ResultRec* r):
        """Mirror of reference.undo_result."""
        cdef const int64_t* legs = &record.held[0]
        if record.state == POSTED:
            legs = &record.posted[0]
        self.init_result(op, r, APPROVED)
        r.txn_id = record.txn_id
        r.card_id = record.card_id
        r.amount = money_total(legs)
        r.fleet = legs[LEG_FLEET]
        r.personal = legs[LEG_PERSONAL]
        r.points_cash = legs[LEG_POINTS_CASH]
        r.points_used = legs[LEG_POINTS_USED]
        r.channel_amount = legs[LEG_CHANNEL]
        r.points_clawed_back = record.points_clawed_back
        r.shortfall_settled = record.shortfall_settled
        self.set_card_balances(r, record.card_id)

    # -------------------------------------------------------- refund

    cdef refund(self, const OpRec* op, ResultRec* r):
        cdef TxnRec* sale
        cdef uint16_t code = self.posted_sale(op, &sale)
        if code == APPROVED and money_total(sale.refunded) + op.amount > money_total(sale.posted):
            code = REFUND_EXCEEDS_PAID
        if code != APPROVED:
            self.init_result(op, r, code)
            r.txn_id = 0 if sale == NULL else sale.txn_id
            return
        cdef TxnRec draft
        self.txn_draft(op, OP_REFUND, HELD, &draft)
        draft.card_id = sale.card_id
        draft.channel = sale.channel
        draft.points_per_unit = op.points_per_unit
        cdef int64_t rest = op.amount
        cdef int64_t part
        cdef int i, leg
        cdef int money_legs[4]
        money_legs[0] = LEG_FLEET
        money_legs[1] = LEG_PERSONAL
        money_legs[2] = LEG_POINTS_CASH
        money_legs[3] = LEG_CHANNEL
        for i in range(4):
            leg = money_legs[i]
            part = sale.posted[leg] - sale.refunded[leg]
            if rest < part:
                part = rest
            draft.held[leg] = part
            rest -= part
        cdef int64_t cash_after
        if sale.posted[LEG_POINTS_CASH]:
            cash_after = sale.refunded[LEG_POINTS_CASH] + draft.held[LEG_POINTS_CASH]
            draft.held[LEG_POINTS_USED] = sale.posted[LEG_POINTS_USED] * cash_after // sale.posted[LEG_POINTS_CASH] - sale.refunded[LEG_POINTS_USED]
        cdef Posting postings[POSTINGS_MAX]
        cdef int count = return_postings(postings, draft.card_id, draft.station_id, draft.channel, draft.held, 0, REASON_REFUND)
        if not self.postings_fit(postings, count):
            self.init_result(op, r, BALANCE_LIMIT)
            r.txn_id = sale.txn_id
            return
        draft.txn_id = self.new_txn_id()
        for leg in range(LEG_COUNT):
            sale.refunded[leg] += draft.held[leg]
        self.mark_txn(sale.txn_id)
        cdef TxnRec* record = self.store_txn(&draft)
        if record.held[LEG_CHANNEL] == 0:
            self.post_return(record, sale, record.held, op.amount, REASON_REFUND, op.points_per_unit)
            code = APPROVED
        else:
            self.txn.put(u64_key(record.txn_id), b"", db=self.pending_db)
            code = PENDING
        self.refund_result(op.kind, record, code, r)

    cdef refund_result(self, uint8_t kind, const TxnRec* record, uint16_t code, ResultRec* r):
        memset(r, 0, sizeof(ResultRec))
        r.code = code
        r.kind = kind
        r.final = 0 if code == PENDING else 1
        r.business_day = self.day
        r.txn_id = record.txn_id
        r.card_id = record.card_id
        r.amount = record.amount
        cdef const int64_t* legs = answer_legs(record)
        r.fleet = legs[LEG_FLEET]
        r.personal = legs[LEG_PERSONAL]
        r.points_cash = legs[LEG_POINTS_CASH]
        r.points_used = legs[LEG_POINTS_USED]
        r.channel_amount = legs[LEG_CHANNEL]
        r.points_clawed_back = record.points_clawed_back
        r.shortfall_settled = record.shortfall_settled
        self.set_card_balances(r, record.card_id)

    cdef post_return(self, TxnRec* record, TxnRec* sale, const int64_t* legs, int64_t amount, uint8_t reason, uint32_t points_per_unit):
        """Mirror of reference.post_return."""
        cdef int64_t refunds_after = sale.refunds_posted + amount
        cdef int64_t claw_target = share(sale.points_earned, refunds_after, money_total(sale.posted)) - sale.points_clawed_back - sale.points_shortfall
        cdef int64_t points_free = 0
        if sale.card_id:
            self.expire_lots(sale.card_id)
            points_free = self.available(POINTS, sale.card_id) + legs[LEG_POINTS_USED]
        cdef int64_t claw = claw_target if claw_target < points_free else points_free
        cdef int64_t shortfall = claw_target - claw
        cdef int64_t settled = 0
        cdef int64_t coverable = legs[LEG_FLEET] + legs[LEG_PERSONAL]
        if points_per_unit:
            settled = share(shortfall, 100, points_per_unit)
            if settled > coverable:
                settled = coverable
        memmove(record.posted, legs, LEG_COUNT * sizeof(int64_t))
        cdef int64_t from_fleet = settled if settled < record.posted[LEG_FLEET] else record.posted[LEG_FLEET]
        record.posted[LEG_FLEET] -= from_fleet
        record.posted[LEG_PERSONAL] -= settled - from_fleet
        record.points_clawed_back = claw
        record.points_shortfall = shortfall
        record.shortfall_settled = settled
        sale.points_clawed_back += claw
        sale.points_shortfall += shortfall
        sale.refunds_posted = refunds_after
        record.state = POSTED
        cdef Posting postings[POSTINGS_MAX]
        cdef int count = return_postings(postings, record.card_id, record.station_id, record.channel, record.posted, claw, reason)
        set_posting(&postings[count], STATION_RECEIVABLE, sale.station_id, POINTS_FUNDING, 0, settled, MOVE_SHORTFALL, reason)
        self.post(record.txn_id, sale.station_id, postings, count + 1)

    # -------------------------------------------------------- loyalty

    cdef MemberRec load_member(self, uint64_t card_id) except *:
        """Mirror of reference.load_member (a copy; save_member writes it)."""
        cdef MemberRec member
        value = self.members.get(u64_key(card_id))
        if value is None:
            memset(&member, 0, sizeof(MemberRec))
            member.card_id = card_id
            member.tier = TIER_REGULAR
        else:
            memcpy(&member, PyBytes_AS_STRING(value), sizeof(MemberRec))
        return member

    cdef save_member(self, const MemberRec* member):
        self.members.put(u64_key(member.card_id), PyBytes_FromStringAndSize(<char*>member, sizeof(MemberRec)))

    cdef inline uint32_t local_day(self, const MemberRec* member) noexcept:
        return <uint32_t>((self.now_ms + <int64_t>member.tz_offset_minutes * 60_000) // MS_PER_DAY)

    cdef uint16_t active_card_decline(self, uint64_t card_id) except 0:
        cdef CardRec* card = self.load_card(card_id)
        if card == NULL:
            return CARD_NOT_FOUND
        if card.status != CARD_ACTIVE:
            return status_decline(card.status)
        return APPROVED

    cdef grant_points(self, const OpRec* op, int64_t points, uint8_t movement, ResultRec* r):
        cdef Posting posting
        set_posting(&posting, POINTS_LIABILITY, 0, POINTS, op.card_id, points, movement, REASON_LOYALTY)
        if not self.postings_fit(&posting, 1):
            self.init_result(op, r, BALANCE_LIMIT)
            r.card_id = op.card_id
            return
        cdef uint64_t txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, &posting, 1)
        self.init_result(op, r, APPROVED)
        r.txn_id = txn_id
        r.card_id = op.card_id
        r.amount = points
        r.points_earned = points
        self.set_card_balances(r, op.card_id)

    cdef decline_for_card(self, const OpRec* op, uint16_t code, ResultRec* r):
        self.init_result(op, r, code)
        r.card_id = op.card_id

    cdef set_member(self, const OpRec* op, ResultRec* r):
        if self.load_card(op.card_id) == NULL:
            self.decline_for_card(op, CARD_NOT_FOUND, r)
            return
        cdef MemberRec member = self.load_member(op.card_id)
        member.tz_offset_minutes = op.tz_offset_minutes
        self.save_member(&member)
        self.decline_for_card(op, APPROVED, r)

    cdef checkin(self, const OpRec* op, ResultRec* r):
        cdef uint16_t decline = self.active_card_decline(op.card_id)
        if decline != APPROVED:
            self.decline_for_card(op, decline, r)
            return
        cdef MemberRec member = self.load_member(op.card_id)
        cdef uint32_t today = self.local_day(&member)
        if member.checkin_streak and member.checkin_day == today:
            self.decline_for_card(op, ALREADY_CHECKED_IN, r)
            return
        cdef uint32_t streak = member.checkin_streak + 1 if member.checkin_streak and member.checkin_day + 1 == today else 1
        cdef int64_t bonus = op.bonus_points if op.period and streak % op.period == 0 else 0
        if op.amount + bonus:
            self.grant_points(op, op.amount + bonus, MOVE_CHECKIN, r)
        else:
            self.decline_for_card(op, APPROVED, r)
        if r.code == APPROVED:
            member.checkin_day = today
            member.checkin_streak = streak
            self.save_member(&member)

    cdef task(self, const OpRec* op, ResultRec* r):
        cdef uint16_t decline = self.active_card_decline(op.card_id)
        if decline != APPROVED:
            self.decline_for_card(op, decline, r)
            return
        cdef MemberRec member = self.load_member(op.card_id)
        cdef uint32_t today = self.local_day(&member)
        cdef int64_t earned_today = member.task_points_today if member.task_day == today else 0
        cdef int64_t award = op.amount
        if op.bonus_points and op.bonus_points - earned_today < award:
            award = op.bonus_points - earned_today
        if award <= 0:
            self.decline_for_card(op, TASK_CAP_REACHED, r)
            return
        self.grant_points(op, award, MOVE_TASK, r)
        if r.code == APPROVED:
            member.task_day = today
            member.task_points_today = earned_today + award
            self.save_member(&member)

    cdef set_tier(self, const OpRec* op, ResultRec* r):
        if self.load_card(op.card_id) == NULL:
            self.decline_for_card(op, CARD_NOT_FOUND, r)
            return
        cdef MemberRec member = self.load_member(op.card_id)
        cdef TierChangeRec change
        cdef Py_ssize_t number
        if member.tier != op.tier:
            number = self.count_prefix(self.tier_changes_db, u64_key(op.card_id))
            memset(&change, 0, sizeof(TierChangeRec))
            change.card_id = op.card_id
            change.day = self.day
            change.old_tier = member.tier
            change.new_tier = op.tier
            change.reason = op.reason
            change.spend_minor = op.amount
            self.txn.put(pair_key(op.card_id, number), PyBytes_FromStringAndSize(<char*>&change, sizeof(TierChangeRec)), db=self.tier_changes_db)
            member.tier = op.tier
            self.save_member(&member)
        self.decline_for_card(op, APPROVED, r)

    cdef Py_ssize_t count_prefix(self, object db, bytes prefix) except -1:
        cdef Py_ssize_t count = 0
        cursor = self.txn.cursor(db=db)
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix):
                    break
                count += 1
        cursor.close()
        return count

    cdef bint load_gift(self, uint64_t gift_id, GiftRec* gift) except? False:
        if self.gift_memo_valid and self.gift_memo.gift_id == gift_id:
            memcpy(gift, &self.gift_memo, sizeof(GiftRec))
            return True
        value = self.gifts.get(u64_key(gift_id))
        if value is None:
            return False
        memcpy(gift, PyBytes_AS_STRING(value), sizeof(GiftRec))
        self.remember_gift(gift, False)
        return True

    cdef save_gift(self, const GiftRec* gift):
        self.remember_gift(gift, True)

    cdef remember_gift(self, const GiftRec* gift, bint dirty):
        """Keep `gift` as the batch's gift memo, the one it held written to
        the gifts table first if it was changed and is another gift."""
        if self.gift_memo_valid and self.gift_memo.gift_id != gift.gift_id:
            self.flush_gift_memo()
        dirty = dirty or (self.gift_memo_valid and self.gift_memo_dirty)
        memcpy(&self.gift_memo, gift, sizeof(GiftRec))
        self.gift_memo_valid = True
        self.gift_memo_dirty = dirty

    cdef flush_gift_memo(self):
        if self.gift_memo_valid and self.gift_memo_dirty:
            self.gifts.put(u64_key(self.gift_memo.gift_id), PyBytes_FromStringAndSize(<char*>&self.gift_memo, sizeof(GiftRec)))
        self.gift_memo_valid = False
        self.gift_memo_dirty = False

    cdef gift_set(self, const OpRec* op, ResultRec* r):
        cdef GiftRec gift
        if not self.load_gift(op.item_id, &gift):
            memset(&gift, 0, sizeof(GiftRec))
            gift.gift_id = op.item_id
        gift.points_price = op.amount
        gift.cash_price = op.bonus_points
        gift.per_customer_limit = op.count_limit
        gift.tier_mask = op.tier
        gift.valid_from_day = op.period_start
        gift.valid_to_day = op.period
        self.save_gift(&gift)
        self.init_result(op, r, APPROVED)
        r.amount = gift.stock

    cdef gift_stock(self, const OpRec* op, ResultRec* r):
        cdef GiftRec gift
        if not self.load_gift(op.item_id, &gift):
            self.init_result(op, r, GIFT_NOT_FOUND)
            return
        if gift.stock + op.amount < 0:
            self.init_result(op, r, GIFT_OUT_OF_STOCK)
            r.amount = gift.stock
            return
        gift.stock += op.amount
        self.save_gift(&gift)
        self.init_result(op, r, APPROVED)
        r.amount = gift.stock

    cdef redeem(self, const OpRec* op, ResultRec* r):
        """Mirror of reference.redeem."""
        cdef CardRec* card = self.load_card(op.card_id)
        cdef uint16_t decline = self.card_decline(card, op.station_id)
        if decline != APPROVED:
            self.decline_for_card(op, decline, r)
            return
        cdef GiftRec gift
        if not self.load_gift(op.item_id, &gift):
            self.decline_for_card(op, GIFT_NOT_FOUND, r)
            return
        if self.day < gift.valid_from_day or (gift.valid_to_day and self.day > gift.valid_to_day):
            self.decline_for_card(op, GIFT_NOT_AVAILABLE, r)
            return
        # Only a gift for some tiers needs the member's tier (reading it
        # changes nothing, so skipping it leaves the books the same).
        cdef MemberRec member
        if gift.tier_mask:
            member = self.load_member(op.card_id)
            if not (gift.tier_mask >> member.tier) & 1:
                self.decline_for_card(op, TIER_NOT_ALLOWED, r)
                return
        if gift.stock < op.amount:
            self.decline_for_card(op, GIFT_OUT_OF_STOCK, r)
            return
        cdef bytes count_key = pair_key(op.item_id, op.card_id)
        raw = self.gift_counts.get(count_key)
        cdef uint32_t count = 0
        if raw is not None:
            memcpy(&count, PyBytes_AS_STRING(raw), 4)
        if gift.per_customer_limit and count + op.amount > gift.per_customer_limit:
            self.decline_for_card(op, GIFT_LIMIT_REACHED, r)
            return
        self.expire_lots(op.card_id)
        cdef int64_t points = gift.points_price * op.amount
        cdef int64_t cash = gift.cash_price * op.amount
        if self.available(POINTS, op.card_id) < points:
            self.decline_for_card(op, INSUFFICIENT_POINTS, r)
            return
        if self.available(PERSONAL, op.card_id) < cash:
            self.decline_for_card(op, INSUFFICIENT_FUNDS, r)
            return
        cdef Posting postings[2]
        set_posting(&postings[0], POINTS, op.card_id, POINTS_LIABILITY, 0, points, MOVE_GIFT, REASON_LOYALTY)
        set_posting(&postings[1], PERSONAL, op.card_id, STATION_RECEIVABLE, op.station_id, cash, MOVE_GIFT, REASON_LOYALTY)
        if not self.postings_fit(postings, 2):
            self.decline_for_card(op, BALANCE_LIMIT, r)
            return
        cdef uint64_t txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings, 2)
        gift.stock -= op.amount
        gift.redeemed += op.amount
        self.save_gift(&gift)
        count += op.amount
        self.gift_counts.put(count_key, PyBytes_FromStringAndSize(<char*>&count, 4))
        self.init_result(op, r, APPROVED)
        r.txn_id = txn_id
        r.card_id = op.card_id
        r.amount = cash
        r.personal = cash
        r.points_used = points
        self.set_card_balances(r, op.card_id)

    cdef partner_exchange(self, const OpRec* op, ResultRec* r):
        """Mirror of reference.partner_exchange."""
        cdef uint16_t decline = self.active_card_decline(op.card_id)
        if decline != APPROVED:
            self.decline_for_card(op, decline, r)
            return
        cdef int64_t converted = share(op.amount, op.earn_points, op.period)
        if converted == 0:
            self.decline_for_card(op, INSUFFICIENT_POINTS, r)
            return
        cdef Posting postings[2]
        cdef int count
        if op.reason == 1:
            set_posting(&postings[0], PARTNER_CLEARING, op.item_id, PERSONAL, op.card_id, converted, MOVE_PARTNER, REASON_LOYALTY)
            count = 1
        else:
            set_posting(&postings[0], POINTS_LIABILITY, 0, POINTS, op.card_id, converted, MOVE_PARTNER, REASON_LOYALTY)
            set_posting(&postings[1], PARTNER_CLEARING, op.item_id, POINTS_FUNDING, 0, share(converted, 100, op.points_per_unit), MOVE_PARTNER, REASON_LOYALTY)
            count = 2
        if not self.postings_fit(postings, count):
            self.decline_for_card(op, BALANCE_LIMIT, r)
            return
        cdef uint64_t txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings, count)
        self.init_result(op, r, APPROVED)
        r.txn_id = txn_id
        r.card_id = op.card_id
        r.amount = op.amount
        if op.reason == 1:
            r.personal = converted
        else:
            r.points_earned = converted
        self.set_card_balances(r, op.card_id)

    cdef extend_lots(self, const OpRec* op, ResultRec* r):
        """Mirror of reference.extend_lots."""
        if self.load_card(op.card_id) == NULL:
            self.decline_for_card(op, CARD_NOT_FOUND, r)
            return
        cdef MemberRec member = self.load_member(op.card_id)
        if member.extended_month == op.period:
            self.decline_for_card(op, APPROVED, r)
            return
        cdef list lots = self.open_lots(op.card_id, False)
        cdef list days = self.open_lot_days(op.card_id)
        # The newest is the last, and stays inline: all move by the same days.
        cdef Py_ssize_t stored = len(days)
        cdef Py_ssize_t i
        cdef LotRec lot
        for i in range(len(lots)):
            memcpy(&lot, PyBytes_AS_STRING(lots[i]), sizeof(LotRec))
            self.lot_expiry.delete(lot_expiry_key(lot.expires_day, op.card_id))
            if i < stored:
                self.point_lots.delete(lot_key(op.card_id, lot.expires_day))
        days.clear()
        for i in range(len(lots)):
            memcpy(&lot, PyBytes_AS_STRING(lots[i]), sizeof(LotRec))
            lot.expires_day += <uint32_t>op.amount
            self.lot_expiry.put(lot_expiry_key(lot.expires_day, op.card_id), b"")
            if i < stored:
                self.point_lots.put(lot_key(op.card_id, lot.expires_day), PyBytes_FromStringAndSize(<char*>&lot, sizeof(LotRec)))
                days.append(lot.expires_day)
            else:
                memcpy(self.newest_lot(op.card_id, True), &lot, sizeof(LotRec))
        member.extended_month = op.period
        self.save_member(&member)
        self.decline_for_card(op, APPROVED, r)
        r.amount = len(lots)

    cdef clear_lots(self, const OpRec* op, ResultRec* r):
        """Mirror of reference.clear_lots."""
        if self.load_card(op.card_id) == NULL:
            self.decline_for_card(op, CARD_NOT_FOUND, r)
            return
        cdef MemberRec member = self.load_member(op.card_id)
        if member.cleared_year == op.period:
            self.decline_for_card(op, APPROVED, r)
            return
        cdef int64_t old = 0
        cdef const LotRec* lot
        for value in self.open_lots(op.card_id, False):
            lot = <const LotRec*>PyBytes_AS_STRING(value)
            if lot.earned_day < op.period_start:
                old += lot.remaining
        cdef AccountRec* account = self.load_account(POINTS, op.card_id)
        cdef int64_t amount = account.balance - account.held
        if old < amount:
            amount = old
        cdef Posting posting
        if amount > 0:
            set_posting(&posting, POINTS, op.card_id, POINTS_LIABILITY, 0, amount, MOVE_EXPIRY, REASON_EXPIRY)
            self.post(0, 0, &posting, 1)
        member.cleared_year = op.period
        self.save_member(&member)
        self.decline_for_card(op, APPROVED, r)
        r.amount = amount if amount > 0 else 0
        self.set_card_balances(r, op.card_id)

    # -------------------------------------------------------- domains and cancellation

    cdef enable_domain(self, const OpRec* op, ResultRec* r):
        """Mirror of reference.enable_domain."""
        if self.load_card(op.card_id) == NULL:
            self.decline_for_card(op, CARD_NOT_FOUND, r)
            return
        self.card_for_write(op.card_id).flags |= RESTRICTED_DOMAINS
        self.txn.put(card_station_key(op.card_id, op.period), b"", db=self.card_domains_db)
        self.decline_for_card(op, APPROVED, r)

    cdef station_domain(self, const OpRec* op, ResultRec* r):
        cdef uint32_t domain = op.period
        self.txn.put(u32_key(op.station_id), PyBytes_FromStringAndSize(<char*>&domain, 4), db=self.station_domains_db)
        self.init_result(op, r, APPROVED)

    cdef cancel_card(self, const OpRec* op, ResultRec* r):
        """Mirror of reference.cancel_card."""
        cdef CardRec* card = self.load_card(op.card_id)
        if card == NULL:
            self.decline_for_card(op, CARD_NOT_FOUND, r)
            return
        if card.status == CARD_STATUS_CANCELLED:
            self.decline_for_card(op, CARD_CANCELLED, r)
            return
        cdef AccountRec* fleet = self.load_account(FLEET, op.card_id)
        cdef AccountRec* personal = self.load_account(PERSONAL, op.card_id)
        cdef AccountRec* points = self.load_account(POINTS, op.card_id)
        if fleet.held or personal.held or points.held:
            self.decline_for_card(op, CARD_HAS_HOLDS, r)
            return
        cdef int64_t fleet_balance = fleet.balance
        cdef int64_t personal_balance = personal.balance
        cdef int64_t points_balance = points.balance
        cdef Posting postings[3]
        set_posting(&postings[0], FLEET, op.card_id, REFUND_PAYABLE, op.card_id, fleet_balance, MOVE_CANCEL, REASON_CANCEL)
        set_posting(&postings[1], PERSONAL, op.card_id, REFUND_PAYABLE, op.card_id, personal_balance, MOVE_CANCEL, REASON_CANCEL)
        set_posting(&postings[2], POINTS, op.card_id, POINTS_LIABILITY, 0, points_balance, MOVE_CANCEL, REASON_CANCEL)
        if not self.postings_fit(postings, 3):
            self.decline_for_card(op, BALANCE_LIMIT, r)
            return
        cdef uint64_t txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, postings, 3)
        self.card_for_write(op.card_id).status = CARD_STATUS_CANCELLED
        self.init_result(op, r, APPROVED)
        r.txn_id = txn_id
        r.card_id = op.card_id
        r.amount = fleet_balance + personal_balance
        r.fleet = fleet_balance
        r.personal = personal_balance
        r.points_used = points_balance

    # -------------------------------------------------------- shifts and days

    cdef bint load_shift(self, uint32_t terminal_id, ShiftRec* shift) except? False:
        value = self.txn.get(u32_key(terminal_id), None, self.shifts_db)
        if value is None:
            return False
        memcpy(shift, PyBytes_AS_STRING(value), sizeof(ShiftRec))
        return True

    cdef save_shift(self, const ShiftRec* shift):
        self.txn.put(u32_key(shift.terminal_id), PyBytes_FromStringAndSize(<char*>shift, sizeof(ShiftRec)), db=self.shifts_db)
        self.shift_states[shift.terminal_id] = shift.state

    cdef bint shift_closed(self, uint32_t terminal_id) except? False:
        """Mirror of reference.shift_closed."""
        cdef ShiftRec shift
        state = self.shift_states.get(terminal_id)
        if state is None:
            state = shift.state if self.load_shift(terminal_id, &shift) else 0
            self.shift_states[terminal_id] = state
        return state == SHIFT_STATE_CLOSED

    cdef sign_on(self, const OpRec* op, ResultRec* r):
        cdef ShiftRec shift
        if self.load_shift(op.terminal_id, &shift) and shift.state == SHIFT_OPEN:
            self.init_result(op, r, SHIFT_ALREADY_OPEN)
            r.txn_id = shift.shift_id
            return
        memset(&shift, 0, sizeof(ShiftRec))
        shift.terminal_id = op.terminal_id
        shift.station_id = op.station_id
        shift.operator_id = op.operator_id
        shift.state = SHIFT_OPEN
        shift.shift_id = self.new_txn_id()
        shift.opened_ms = self.now_ms
        shift.first_txn_id = shift.shift_id
        self.save_shift(&shift)
        self.init_result(op, r, APPROVED)
        r.txn_id = shift.shift_id

    cdef shift_close(self, const OpRec* op, ResultRec* r):
        cdef ShiftRec shift
        if not self.load_shift(op.terminal_id, &shift) or shift.state != SHIFT_OPEN:
            self.init_result(op, r, SHIFT_NOT_OPEN)
            return
        shift.state = SHIFT_STATE_CLOSED
        shift.closed_ms = self.now_ms
        shift.last_txn_id = self.next_txn_id - 1
        self.save_shift(&shift)
        self.init_result(op, r, APPROVED)
        r.txn_id = shift.shift_id
        r.amount = shift.last_txn_id

    cdef int64_t closed_day(self, uint32_t station_id) except? -2:
        cdef PyObject* cached = PyDict_GetItem(self.closed_days, station_id)
        if cached != NULL:
            return <int64_t><object>cached
        raw = self.txn.get(u32_key(station_id), None, self.day_ends_db)
        cdef uint32_t day
        cdef int64_t closed = -1
        if raw is not None:
            memcpy(&day, PyBytes_AS_STRING(raw), 4)
            closed = day
        self.closed_days[station_id] = closed
        return closed

    cdef uint32_t station_day(self, uint32_t station_id) except? 0:
        """Mirror of reference.station_day."""
        if station_id == 0:
            return self.calendar_day
        if station_id == self.last_station_id:
            return self.last_station_day
        cdef uint32_t day = self.calendar_day
        if self.closed_day(station_id) >= self.calendar_day:
            day += STATION_DAY_AHEAD_MAX
        self.last_station_id = station_id
        self.last_station_day = day
        return day

    cdef day_end(self, const OpRec* op, ResultRec* r):
        cdef int64_t closed = self.closed_day(op.station_id)
        if op.period > closed:
            closed = op.period
        cdef uint32_t day = <uint32_t>closed
        self.txn.put(u32_key(op.station_id), PyBytes_FromStringAndSize(<char*>&day, 4), db=self.day_ends_db)
        self.closed_days[op.station_id] = closed
        self.last_station_id = 0
        self.init_result(op, r, APPROVED)
        r.amount = closed

    # -------------------------------------------------------- general

    # -------------------------------------------------------- counters

    cdef int64_t counter_value(self, bytes key) except? -1:
        value = self.txn.get(key, None, self.counters_db)
        if value is None:
            return 0
        cdef int64_t number
        memcpy(&number, PyBytes_AS_STRING(value), 8)
        return number

    cdef save_counter(self, bytes key, int64_t value):
        self.txn.put(key, PyBytes_FromStringAndSize(<char*>&value, 8), db=self.counters_db)

    cdef uint16_t counters_refusal(self, const OpRec* takes, Py_ssize_t count, Py_ssize_t* refused) except 0:
        """Mirror of reference.counters_refusal."""
        cdef dict values = {}
        cdef Py_ssize_t k
        cdef int64_t value
        cdef int64_t ceiling
        for k in range(count):
            key = counter_key(takes[k].account_kind, takes[k].item_id, takes[k].card_id, takes[k].period)
            value = values[key] if key in values else self.counter_value(key)
            value += takes[k].amount
            ceiling = takes[k].limit_per_day if takes[k].limit_per_day else COUNTER_CEILING_MAX
            if value < 0:
                refused[0] = k
                return COUNTER_EXHAUSTED
            if value > ceiling:
                refused[0] = k
                return COUNTER_LIMIT_REACHED
            values[key] = value
        return APPROVED

    cdef take_counters(self, const OpRec* takes, ResultRec* results, Py_ssize_t count, uint64_t returned_by):
        """Mirror of reference.take_counters."""
        cdef Py_ssize_t k
        cdef int64_t value
        cdef int64_t delta
        cdef bytearray entries = bytearray()
        for k in range(count):
            key = counter_key(takes[k].account_kind, takes[k].item_id, takes[k].card_id, takes[k].period)
            value = self.counter_value(key) + takes[k].amount
            self.save_counter(key, value)
            self.init_result(&takes[k], &results[k], APPROVED)
            results[k].amount = value
            delta = takes[k].amount
            entries += key
            entries += PyBytes_FromStringAndSize(<char*>&delta, 8)
        if returned_by and count:
            txn_key = u64_key(returned_by)
            before = self.txn.get(txn_key, b"", self.txn_counters_db)
            self.txn.put(txn_key, before + bytes(entries), db=self.txn_counters_db)

    cdef return_counters(self, uint64_t txn_id):
        """Mirror of reference.return_counters."""
        cdef bytes txn_key = u64_key(txn_id)
        entries = self.txn.get(txn_key, None, self.txn_counters_db)
        if entries is None:
            return
        cdef const char* data = PyBytes_AS_STRING(entries)
        cdef Py_ssize_t offset
        cdef int64_t delta
        for offset in range(0, PyBytes_GET_SIZE(entries), 29):
            key = PyBytes_FromStringAndSize(data + offset, 21)
            memcpy(&delta, data + offset + 21, 8)
            self.save_counter(key, self.counter_value(key) - delta)
        self.txn.delete(txn_key, db=self.txn_counters_db)

    cdef packet_claim(self, const OpRec* op, ResultRec* r):
        """Mirror of reference.packet_claim."""
        cdef uint16_t code = self.card_decline(self.load_card(op.card_id), op.station_id)
        if code != APPROVED:
            self.decline_for_card(op, code, r)
            return
        cdef bytes claimer = counter_key(SCOPE_PACKET_CLAIMER, op.item_id, op.card_id, 0)
        if self.counter_value(claimer) >= 1:
            self.decline_for_card(op, PACKET_ALREADY_CLAIMED, r)
            return
        cdef bytes claims = counter_key(SCOPE_PACKET_CLAIMS, op.item_id, 0, 0)
        cdef int64_t index = self.counter_value(claims)
        share = None
        if index < op.count_limit:
            share = self.txn.get(packet_share_key(op.item_id, <uint32_t>index), None, self.packet_shares_db)
        if share is None:
            self.decline_for_card(op, PACKET_EMPTY, r)
            return
        cdef int64_t amount
        memcpy(&amount, PyBytes_AS_STRING(share), 8)
        if self.available(PROMOTION, op.item_id) < amount:
            self.decline_for_card(op, INSUFFICIENT_FUNDS, r)
            return
        cdef Posting posting
        set_posting(&posting, PROMOTION, op.item_id, PERSONAL, op.card_id, amount, MOVE_PROMOTION, REASON_PROMOTION)
        if not self.postings_fit(&posting, 1):
            self.decline_for_card(op, BALANCE_LIMIT, r)
            return
        cdef uint64_t txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, &posting, 1)
        self.save_counter(claimer, 1)
        self.save_counter(claims, index + 1)
        self.init_result(op, r, APPROVED)
        r.txn_id = txn_id
        r.card_id = op.card_id
        r.amount = amount
        self.set_card_balances(r, op.card_id)

    cdef open_account(self, const OpRec* op, ResultRec* r):
        if self.load_account(op.account_kind, op.account_owner) != NULL:
            self.init_result(op, r, ACCOUNT_EXISTS)
            return
        self.new_account(op.account_kind, op.account_owner)
        self.init_result(op, r, APPROVED)

    cdef transfer(self, const OpRec* op, ResultRec* r):
        if not may_go_negative(op.account_kind) and self.load_account(op.account_kind, op.account_owner) == NULL:
            self.init_result(op, r, ACCOUNT_NOT_FOUND)
            return
        if not may_go_negative(op.credit_kind) and self.load_account(op.credit_kind, op.credit_owner) == NULL:
            self.init_result(op, r, ACCOUNT_NOT_FOUND)
            return
        if not may_go_negative(op.account_kind) and self.available(op.account_kind, op.account_owner) < op.amount:
            self.init_result(op, r, INSUFFICIENT_FUNDS)
            return
        cdef Posting posting
        set_posting(&posting, op.account_kind, op.account_owner, op.credit_kind, op.credit_owner, op.amount, MOVE_TRANSFER, REASON_TRANSFER)
        if not self.postings_fit(&posting, 1):
            self.init_result(op, r, BALANCE_LIMIT)
            return
        cdef uint64_t txn_id = self.new_txn_id()
        self.post(txn_id, op.station_id, &posting, 1)
        self.init_result(op, r, APPROVED)
        r.txn_id = txn_id
        r.amount = op.amount

