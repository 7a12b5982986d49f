"""The one table of result codes, and the small enums stored in records.

Owns: ResultCode (every answer the core gives), OpKind, CardStatus, CardType,
AccountKind, TxnState, TxnFlag, Channel, Movement, Reason.
Used by: records, kernel, reference, server (which maps ResultCode one to one
onto tally.v1.ResultCode; a test keeps the two identical).

A decline is not an error: it is an answer with one of these codes.
"""

import enum


class ResultCode(enum.IntEnum):
    """Outcome of one operation. Ordered: the first failing check wins."""

    UNSPECIFIED = 0
    APPROVED = 1
    # The operation is waiting for an external channel; never a final answer.
    PENDING = 2
    INSUFFICIENT_FUNDS = 3
    LIMIT_PER_TRANSACTION_EXCEEDED = 4
    LIMIT_PER_DAY_EXCEEDED = 5
    CARD_NOT_FOUND = 6
    CARD_LOST = 7
    CARD_FROZEN = 8
    CARD_CANCELLED = 9
    CARD_NOT_ALLOWED_HERE = 10
    CARD_EXISTS = 11
    HOLD_EXPIRED = 12
    HOLD_CLOSED = 13
    AMOUNT_EXCEEDS_HOLD = 14
    ORIGINAL_NOT_FOUND = 15
    ALREADY_REVERSED = 16
    ALREADY_VOIDED = 17
    ALREADY_REFUNDED = 18
    VOID_NOT_SAME_DAY = 19
    REFUND_EXCEEDS_PAID = 20
    NOT_REVERSIBLE = 21
    WRONG_TRANSACTION_KIND = 22
    STATION_MISMATCH = 23
    DUPLICATE_MISMATCH = 24
    CHANNEL_DECLINED = 25
    CHANNEL_UNAVAILABLE = 26
    BALANCE_LIMIT = 27
    ACCOUNT_NOT_FOUND = 28
    ACCOUNT_EXISTS = 29
    TRANSACTION_NOT_POSTED = 30
    # The operation's fields break a limit of core.limits; the server refuses
    # such requests before they reach the kernel, so this marks a bug there.
    INVALID_OPERATION = 31
    ALREADY_CHECKED_IN = 32
    TASK_CAP_REACHED = 33
    GIFT_NOT_FOUND = 34
    GIFT_NOT_AVAILABLE = 35
    GIFT_OUT_OF_STOCK = 36
    GIFT_LIMIT_REACHED = 37
    TIER_NOT_ALLOWED = 38
    INSUFFICIENT_POINTS = 39
    SHIFT_CLOSED = 40
    SHIFT_ALREADY_OPEN = 41
    SHIFT_NOT_OPEN = 42
    DAY_CLOSED = 43
    DOMAIN_NOT_ENABLED = 44
    CARD_HAS_HOLDS = 45
    # A counter linked to the request would pass its ceiling (stock, budget,
    # uses per customer, a velocity limit); the answer names the rule.
    COUNTER_LIMIT_REACHED = 46
    # A counter linked to the request would go below zero (no lottery chance left).
    COUNTER_EXHAUSTED = 47
    # Another operation of the same linked chain was refused; nothing applied.
    LINKED_FAILED = 48
    # This card has already claimed a share of the red packet.
    PACKET_ALREADY_CLAIMED = 49
    # Every share of the red packet is claimed, or the packet is unknown.
    PACKET_EMPTY = 50
    # The card is on the risk blacklist (permanently or until a date).
    CARD_BLACKLISTED = 51
    # A basket line is not among the goods the card may buy.
    GOODS_NOT_ALLOWED = 52
    # Reverse: no request with the original's serial was seen (never sent, or
    # not arrived yet). Its serial is now blocked: if it arrives, it is
    # refused (ALREADY_REVERSED). Nothing was undone because nothing was taken.
    ORIGINAL_NOT_SEEN = 53
    # Reverse: the original was declined (or its channel declined or did not
    # answer), so it took nothing and there is nothing to undo.
    ORIGINAL_DECLINED = 54


class OpKind(enum.IntEnum):
    """What one kernel operation does. Stored in transactions and results."""

    NONE = 0
    OPEN_CARD = 1
    SET_CARD_STATUS = 2
    SET_CARD_LIMITS = 3
    ALLOW_STATION = 4
    TOPUP = 5
    PAY = 6
    CAPTURE = 7
    ABORT = 8
    PREAUTH = 9
    COMPLETE = 10
    RELEASE = 11
    REVERSE = 12
    VOID = 13
    REFUND = 14
    EXPIRE_HOLDS = 15
    OPEN_ACCOUNT = 16
    TRANSFER = 17
    EXPIRE_POINTS = 18
    SET_MEMBER = 19
    CHECKIN = 20
    TASK = 21
    SET_TIER = 22
    GIFT_SET = 23
    GIFT_STOCK = 24
    REDEEM = 25
    PARTNER_EXCHANGE = 26
    EXTEND_LOTS = 27
    CLEAR_LOTS = 28
    SIGN_ON = 29
    SHIFT_CLOSE = 30
    DAY_END = 31
    ENABLE_DOMAIN = 32
    STATION_DOMAIN = 33
    CANCEL_CARD = 34
    # Add to a counter (core/counters.py), linked to the operation after it.
    COUNTER = 35
    # Claim the next share of a red packet for a card.
    PACKET_CLAIM = 36


class CardStatus(enum.IntEnum):
    ACTIVE = 1
    LOST = 2
    FROZEN = 3
    CANCELLED = 4


class CardType(enum.IntEnum):
    COMPANY = 1
    PERSONAL = 2


class CardFlag(enum.IntFlag):
    # Only stations in the card's allow list accept it.
    RESTRICTED_STATIONS = 1
    # Only stations of the application domains enabled for the card accept it.
    RESTRICTED_DOMAINS = 2


class AccountKind(enum.IntEnum):
    """The first byte of an account key. Below 16: a card's own accounts."""

    FLEET = 1
    PERSONAL = 2
    POINTS = 3
    # System accounts: the other side of every movement. They may go negative.
    STATION_RECEIVABLE = 16
    CHANNEL_CLEARING = 17
    POINTS_LIABILITY = 18
    POINTS_FUNDING = 19
    TOPUP_FUNDING = 20
    # What a partner programme owes for points or cash it sent us.
    PARTNER_CLEARING = 21
    # Balances of cancelled cards, owed back to their holders.
    REFUND_PAYABLE = 22
    # Money set aside for a promotion (owner: the promotion or red packet).
    # Like a general account it may not go below zero.
    PROMOTION = 23
    # Plain accounts opened with OPEN_ACCOUNT (benchmarks, adjustments).
    GENERAL = 32


CARD_ACCOUNT_KINDS = (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS)
SYSTEM_ACCOUNT_KIND_MIN = 16


def may_go_negative(kind: int) -> bool:
    """System accounts hold the other side and may go below zero; a card's
    accounts, general accounts and promotion funds may not."""
    return kind >= SYSTEM_ACCOUNT_KIND_MIN and kind != AccountKind.GENERAL and kind != AccountKind.PROMOTION


class ShiftState(enum.IntEnum):
    OPEN = 1
    CLOSED = 2


class Tier(enum.IntEnum):
    REGULAR = 0
    SILVER = 1
    GOLD = 2
    BLACK = 3


class TierReason(enum.IntEnum):
    ADMIN = 1
    SPEND_UP = 2
    SPEND_DOWN = 3


class Unit(enum.IntEnum):
    MONEY = 1
    POINTS = 2


def unit_of(kind: int) -> int:
    """Points accounts count points; every other account counts minor units."""
    if kind == AccountKind.POINTS or kind == AccountKind.POINTS_LIABILITY:
        return Unit.POINTS
    return Unit.MONEY


class TxnState(enum.IntEnum):
    # Funds are held: a pre-authorization, or a payment or refund waiting for
    # its external channel.
    HELD = 1
    POSTED = 2
    RELEASED = 3
    EXPIRED = 4
    # The channel declined or timed out; the hold was released.
    ABORTED = 5


class TxnFlag(enum.IntFlag):
    VOIDED = 1
    REVERSED = 2


class Channel(enum.IntEnum):
    NONE = 0
    BANK_CARD = 1
    WECHAT_PAY = 2
    ALIPAY = 3


class PlanFlag(enum.IntFlag):
    """Which internal sources a payment plan allows, taken in this order."""

    USE_FLEET = 1
    USE_PERSONAL = 2
    USE_POINTS = 4


class Movement(enum.IntEnum):
    """What a journal entry moves (the source of the money)."""

    FLEET = 1
    PERSONAL = 2
    POINTS = 3
    POINTS_CASH = 4
    CHANNEL = 5
    EARN = 6
    TOPUP = 7
    TRANSFER = 8
    # Points that reached their lot's expiry.
    EXPIRY = 9
    # Money kept back from a return because earned points were spent.
    SHORTFALL = 10
    CHECKIN = 11
    TASK = 12
    GIFT = 13
    PARTNER = 14
    CANCEL = 15
    # Money paid out by a promotion (a red packet share).
    PROMOTION = 16


class Reason(enum.IntEnum):
    """Why a journal entry was written."""

    SALE = 1
    COMPLETE = 2
    TOPUP = 3
    REVERSAL = 4
    VOID = 5
    REFUND = 6
    TRANSFER = 7
    EXPIRY = 8
    LOYALTY = 9
    CANCEL = 10
    PROMOTION = 11


# What each code means, in words for a terminal's display. One table.
RESULT_TEXT = {
    ResultCode.UNSPECIFIED: "unspecified",
    ResultCode.APPROVED: "approved",
    ResultCode.PENDING: "waiting for the payment channel",
    ResultCode.INSUFFICIENT_FUNDS: "insufficient funds: the card does not cover the amount and no channel pays the rest",
    ResultCode.LIMIT_PER_TRANSACTION_EXCEEDED: "declined by the card's per-transaction limit",
    ResultCode.LIMIT_PER_DAY_EXCEEDED: "declined by the card's per-day limit",
    ResultCode.CARD_NOT_FOUND: "no such card",
    ResultCode.CARD_LOST: "card reported lost",
    ResultCode.CARD_FROZEN: "card frozen",
    ResultCode.CARD_CANCELLED: "card cancelled",
    ResultCode.CARD_NOT_ALLOWED_HERE: "card not allowed at this station",
    ResultCode.CARD_EXISTS: "a card with this id exists",
    ResultCode.HOLD_EXPIRED: "the pre-authorization expired",
    ResultCode.HOLD_CLOSED: "the pre-authorization was already completed or released",
    ResultCode.AMOUNT_EXCEEDS_HOLD: "the final amount is above the amount held",
    ResultCode.ORIGINAL_NOT_FOUND: "no such original transaction",
    ResultCode.ALREADY_REVERSED: "the original was reversed",
    ResultCode.ALREADY_VOIDED: "the sale was voided",
    ResultCode.ALREADY_REFUNDED: "the sale has refunds: refund the rest instead of voiding",
    ResultCode.VOID_NOT_SAME_DAY: "a sale of an earlier business day cannot be voided: refund it",
    ResultCode.REFUND_EXCEEDS_PAID: "refunds would exceed what was paid",
    ResultCode.NOT_REVERSIBLE: "the original cannot be reversed",
    ResultCode.WRONG_TRANSACTION_KIND: "the transaction is of the wrong kind for this request",
    ResultCode.STATION_MISMATCH: "the original transaction belongs to another station",
    ResultCode.DUPLICATE_MISMATCH: "the serial was used before for a different request",
    ResultCode.CHANNEL_DECLINED: "the payment channel declined",
    ResultCode.CHANNEL_UNAVAILABLE: "the payment channel did not answer in time; nothing was taken",
    ResultCode.BALANCE_LIMIT: "a balance would leave the range the ledger allows",
    ResultCode.ACCOUNT_NOT_FOUND: "no such account",
    ResultCode.ACCOUNT_EXISTS: "the account exists",
    ResultCode.TRANSACTION_NOT_POSTED: "the transaction is not posted",
    ResultCode.INVALID_OPERATION: "the core refused an operation outside its limits",
    ResultCode.ALREADY_CHECKED_IN: "already checked in today",
    ResultCode.TASK_CAP_REACHED: "today's cap on task points is reached",
    ResultCode.GIFT_NOT_FOUND: "no such gift",
    ResultCode.GIFT_NOT_AVAILABLE: "the gift is outside its validity window",
    ResultCode.GIFT_OUT_OF_STOCK: "the gift is out of stock",
    ResultCode.GIFT_LIMIT_REACHED: "the customer reached this gift's limit",
    ResultCode.TIER_NOT_ALLOWED: "the gift is not offered to the customer's tier",
    ResultCode.INSUFFICIENT_POINTS: "not enough points",
    ResultCode.SHIFT_CLOSED: "the terminal's shift is closed: sign on first",
    ResultCode.SHIFT_ALREADY_OPEN: "a shift is already open on this terminal",
    ResultCode.SHIFT_NOT_OPEN: "no shift is open on this terminal",
    ResultCode.DAY_CLOSED: "the business day is closed at this station: refund instead",
    ResultCode.DOMAIN_NOT_ENABLED: "the card is not enabled for this station's application domain",
    ResultCode.CARD_HAS_HOLDS: "the card has open holds: complete or release them first",
    ResultCode.COUNTER_LIMIT_REACHED: "declined by a promotion or risk limit",
    ResultCode.COUNTER_EXHAUSTED: "nothing left to use (no chance, no stock)",
    ResultCode.LINKED_FAILED: "not applied: another part of the same request was refused",
    ResultCode.PACKET_ALREADY_CLAIMED: "this card has already claimed a share of the red packet",
    ResultCode.PACKET_EMPTY: "every share of the red packet is claimed",
    ResultCode.CARD_BLACKLISTED: "card refused by the risk blacklist",
    ResultCode.GOODS_NOT_ALLOWED: "the card may not buy these goods",
    ResultCode.ORIGINAL_NOT_SEEN: "original never seen: its serial is now blocked (refused if it arrives)",
    ResultCode.ORIGINAL_DECLINED: "the original was declined and took nothing: nothing to reverse",
}
