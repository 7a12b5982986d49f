"""Tally's result codes as ISO 8583 response codes (field 39), for gateways
that speak 8583 to acquirers, hosts or switches.

Owns: the one table ResultCode -> the nearest ISO 8583:1987 response code,
and the codes for a call that got no answer or an error. docs/integrators.md
prints the table with the reasons.
Used by: gateway writers (`response_code(result)`); a test checks that every
ResultCode has an entry, so a new code cannot be forgotten.

"Nearest": 8583 has no codes for loyalty or shifts, so those take the code
an 8583 host would answer for the same kind of refusal (a frequency limit
is 65, a refusal of this terminal 58, a state that forbids the request 12).
"""

from tally_client.codes import Outcome, ResultCode

R = ResultCode

# ISO 8583:1987 field 39 values used below.
APPROVED = "00"
PICK_UP_CARD = "04"
DO_NOT_HONOUR = "05"
REQUEST_IN_PROGRESS = "09"
INVALID_TRANSACTION = "12"
INVALID_AMOUNT = "13"
INVALID_CARD_NUMBER = "14"
UNABLE_TO_LOCATE_RECORD = "25"
FORMAT_ERROR = "30"
LOST_CARD = "41"
INSUFFICIENT_FUNDS = "51"
NO_SAVINGS_ACCOUNT = "53"
NOT_PERMITTED_TO_CARDHOLDER = "57"
NOT_PERMITTED_TO_TERMINAL = "58"
SUSPECTED_FRAUD = "59"
EXCEEDS_AMOUNT_LIMIT = "61"
RESTRICTED_CARD = "62"
SECURITY_VIOLATION = "63"
EXCEEDS_FREQUENCY_LIMIT = "65"
RESPONSE_RECEIVED_TOO_LATE = "68"
ISSUER_INOPERATIVE = "91"
DUPLICATE_TRANSMISSION = "94"
SYSTEM_MALFUNCTION = "96"

# Their meanings, in the standard's words.
MEANING: dict[str, str] = {
    APPROVED: "approved or completed successfully",
    PICK_UP_CARD: "pick up card",
    DO_NOT_HONOUR: "do not honour",
    REQUEST_IN_PROGRESS: "request in progress",
    INVALID_TRANSACTION: "invalid transaction",
    INVALID_AMOUNT: "invalid amount",
    INVALID_CARD_NUMBER: "invalid card number (no such number)",
    UNABLE_TO_LOCATE_RECORD: "unable to locate record on file",
    FORMAT_ERROR: "format error",
    LOST_CARD: "lost card, pick up",
    INSUFFICIENT_FUNDS: "not sufficient funds",
    NO_SAVINGS_ACCOUNT: "no savings account",
    NOT_PERMITTED_TO_CARDHOLDER: "transaction not permitted to cardholder",
    NOT_PERMITTED_TO_TERMINAL: "transaction not permitted to terminal",
    SUSPECTED_FRAUD: "suspected fraud",
    EXCEEDS_AMOUNT_LIMIT: "exceeds withdrawal amount limit",
    RESTRICTED_CARD: "restricted card",
    SECURITY_VIOLATION: "security violation",
    EXCEEDS_FREQUENCY_LIMIT: "exceeds withdrawal frequency limit",
    RESPONSE_RECEIVED_TOO_LATE: "response received too late",
    ISSUER_INOPERATIVE: "issuer or switch inoperative",
    DUPLICATE_TRANSMISSION: "duplicate transmission",
    SYSTEM_MALFUNCTION: "system malfunction",
}

RESPONSE_CODE: dict[ResultCode, str] = {
    R.RESULT_CODE_UNSPECIFIED: SYSTEM_MALFUNCTION,
    R.APPROVED: APPROVED,
    R.PENDING: REQUEST_IN_PROGRESS,
    R.INSUFFICIENT_FUNDS: INSUFFICIENT_FUNDS,
    R.LIMIT_PER_TRANSACTION_EXCEEDED: EXCEEDS_AMOUNT_LIMIT,
    R.LIMIT_PER_DAY_EXCEEDED: EXCEEDS_AMOUNT_LIMIT,
    R.CARD_NOT_FOUND: INVALID_CARD_NUMBER,
    R.CARD_LOST: LOST_CARD,
    R.CARD_FROZEN: RESTRICTED_CARD,
    R.CARD_CANCELLED: PICK_UP_CARD,
    R.CARD_NOT_ALLOWED_HERE: NOT_PERMITTED_TO_TERMINAL,
    R.CARD_EXISTS: INVALID_TRANSACTION,
    R.HOLD_EXPIRED: INVALID_TRANSACTION,
    R.HOLD_CLOSED: INVALID_TRANSACTION,
    R.AMOUNT_EXCEEDS_HOLD: INVALID_AMOUNT,
    R.ORIGINAL_NOT_FOUND: UNABLE_TO_LOCATE_RECORD,
    R.ALREADY_REVERSED: INVALID_TRANSACTION,
    R.ALREADY_VOIDED: INVALID_TRANSACTION,
    R.ALREADY_REFUNDED: INVALID_TRANSACTION,
    R.VOID_NOT_SAME_DAY: INVALID_TRANSACTION,
    R.REFUND_EXCEEDS_PAID: INVALID_AMOUNT,
    R.NOT_REVERSIBLE: INVALID_TRANSACTION,
    R.WRONG_TRANSACTION_KIND: INVALID_TRANSACTION,
    R.STATION_MISMATCH: NOT_PERMITTED_TO_TERMINAL,
    R.DUPLICATE_MISMATCH: DUPLICATE_TRANSMISSION,
    R.CHANNEL_DECLINED: DO_NOT_HONOUR,
    R.CHANNEL_UNAVAILABLE: ISSUER_INOPERATIVE,
    R.BALANCE_LIMIT: INVALID_AMOUNT,
    R.ACCOUNT_NOT_FOUND: NO_SAVINGS_ACCOUNT,
    R.ACCOUNT_EXISTS: INVALID_TRANSACTION,
    R.TRANSACTION_NOT_POSTED: INVALID_TRANSACTION,
    R.INVALID_OPERATION: SYSTEM_MALFUNCTION,
    R.ALREADY_CHECKED_IN: EXCEEDS_FREQUENCY_LIMIT,
    R.TASK_CAP_REACHED: EXCEEDS_FREQUENCY_LIMIT,
    R.GIFT_NOT_FOUND: UNABLE_TO_LOCATE_RECORD,
    R.GIFT_NOT_AVAILABLE: NOT_PERMITTED_TO_CARDHOLDER,
    R.GIFT_OUT_OF_STOCK: DO_NOT_HONOUR,
    R.GIFT_LIMIT_REACHED: EXCEEDS_FREQUENCY_LIMIT,
    R.TIER_NOT_ALLOWED: NOT_PERMITTED_TO_CARDHOLDER,
    R.INSUFFICIENT_POINTS: INSUFFICIENT_FUNDS,
    R.SHIFT_CLOSED: NOT_PERMITTED_TO_TERMINAL,
    R.SHIFT_ALREADY_OPEN: INVALID_TRANSACTION,
    R.SHIFT_NOT_OPEN: INVALID_TRANSACTION,
    R.DAY_CLOSED: INVALID_TRANSACTION,
    R.DOMAIN_NOT_ENABLED: NOT_PERMITTED_TO_CARDHOLDER,
    R.CARD_HAS_HOLDS: INVALID_TRANSACTION,
    R.COUNTER_LIMIT_REACHED: EXCEEDS_AMOUNT_LIMIT,
    R.COUNTER_EXHAUSTED: INSUFFICIENT_FUNDS,
    R.LINKED_FAILED: DO_NOT_HONOUR,
    R.PACKET_ALREADY_CLAIMED: EXCEEDS_FREQUENCY_LIMIT,
    R.PACKET_EMPTY: DO_NOT_HONOUR,
    R.CARD_BLACKLISTED: SUSPECTED_FRAUD,
    R.GOODS_NOT_ALLOWED: NOT_PERMITTED_TO_CARDHOLDER,
}

# A call that ended without an answer, by gRPC status name (errors.py's
# TallyRpcError.status), and a lost answer (Outcome.REVERSED).
STATUS_RESPONSE_CODE: dict[str, str] = {
    "INVALID_ARGUMENT": FORMAT_ERROR,
    "UNAUTHENTICATED": SECURITY_VIOLATION,
    "PERMISSION_DENIED": NOT_PERMITTED_TO_TERMINAL,
    "NOT_FOUND": UNABLE_TO_LOCATE_RECORD,
    "FAILED_PRECONDITION": INVALID_TRANSACTION,
    "RESOURCE_EXHAUSTED": ISSUER_INOPERATIVE,
    "UNAVAILABLE": ISSUER_INOPERATIVE,
    "DEADLINE_EXCEEDED": RESPONSE_RECEIVED_TOO_LATE,
}
LOST_ANSWER = RESPONSE_RECEIVED_TOO_LATE


def response_code(result: ResultCode, outcome: Outcome = Outcome.ANSWERED) -> str:
    """Field 39 for an answer; a code this SDK does not know is 05 (do not
    honour), never 00."""
    if outcome is not Outcome.ANSWERED:
        return LOST_ANSWER
    return RESPONSE_CODE.get(result, DO_NOT_HONOUR)


def response_code_of_status(status: str) -> str:
    """Field 39 for a call that ended with a gRPC error (by status name)."""
    return STATUS_RESPONSE_CODE.get(status, SYSTEM_MALFUNCTION)
