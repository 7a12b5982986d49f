"""Result codes and call outcomes, as Python enums.

Owns: `ResultCode` (tally.v1.ResultCode, number for number: a test keeps it
identical to the contract; proto/tally/v1/common.proto documents each) and
`Outcome` (whether the server's answer reached the caller at all).
Used by: results.py, iso8583.py, the clients; callers compare against them.

A newer server may send a code this SDK does not know yet: it arrives as a
ResultCode named UNKNOWN_<number> (never approved), not as an error.
"""

import enum


class ResultCode(enum.IntEnum):
    """What the server decided. Only APPROVED means the money moved."""

    RESULT_CODE_UNSPECIFIED = 0
    APPROVED = 1
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
    COUNTER_LIMIT_REACHED = 46
    COUNTER_EXHAUSTED = 47
    LINKED_FAILED = 48
    PACKET_ALREADY_CLAIMED = 49
    PACKET_EMPTY = 50
    CARD_BLACKLISTED = 51
    GOODS_NOT_ALLOWED = 52
    ORIGINAL_NOT_SEEN = 53
    ORIGINAL_DECLINED = 54

    @classmethod
    def _missing_(cls, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return None
        unknown = int.__new__(cls, value)
        unknown._name_ = f"UNKNOWN_{value}"
        unknown._value_ = value
        return unknown


class Outcome(enum.Enum):
    """Whether the caller has the server's answer."""

    # The server answered; its ResultCode says what it decided.
    ANSWERED = "answered"
    # No answer came before the call's deadline (or the connection dropped
    # after sending): a Reverse of the request's serial is queued on disk and
    # sent until the server answers it, across restarts. Treat the request as
    # not done: a sale, top-up or hold is undone; a request that cannot be
    # undone is blocked if it had not arrived (ReversalQueue reports which).
    REVERSED = "reversed"


class Channel(enum.IntEnum):
    """External payment channels (tally.v1.Channel)."""

    NONE = 0
    BANK_CARD = 1
    WECHAT_PAY = 2
    ALIPAY = 3


class CardAccount(enum.IntEnum):
    """A card's accounts (tally.v1.CardAccount)."""

    UNSPECIFIED = 0
    FLEET = 1
    PERSONAL = 2
    POINTS = 3


class TransactionKind(enum.IntEnum):
    """tally.v1.TransactionKind."""

    UNSPECIFIED = 0
    TOPUP = 5
    SALE = 6
    PREAUTHORIZATION = 9
    REFUND = 14


class TransactionState(enum.IntEnum):
    """tally.v1.TransactionState."""

    UNSPECIFIED = 0
    HELD = 1
    POSTED = 2
    RELEASED = 3
    EXPIRED = 4
    ABORTED = 5


class CustomerTier(enum.IntEnum):
    """tally.v1.CustomerTier."""

    REGULAR = 0
    SILVER = 1
    GOLD = 2
    BLACK = 3


# The contract's names of the enums above where they differ from the Python
# ones (the prefix proto3 asks for on zero values): checked by a test.
WIRE_NAMES = {
    (Channel, "NONE"): "CHANNEL_NONE",
    (CardAccount, "UNSPECIFIED"): "CARD_ACCOUNT_UNSPECIFIED",
    (TransactionKind, "UNSPECIFIED"): "TRANSACTION_KIND_UNSPECIFIED",
    (TransactionState, "UNSPECIFIED"): "TRANSACTION_STATE_UNSPECIFIED",
}


def known(enum_type, value: int):
    """value as a member of enum_type (ResultCode makes unknown ones itself;
    the other enums fall back to the plain number)."""
    try:
        return enum_type(value)
    except ValueError:
        return value
