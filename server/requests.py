"""From gRPC requests to kernel operations: validation and translation.

Owns: every check of a terminal's input against core.limits (raising
InvalidInput that names the field and the limit), the request fingerprint,
and building core.records.Op values.
Used by: server/payments.py and server/cards.py.
"""

import hashlib

from core import limits
from core.records import Op
from core.results import AccountKind, CardStatus, CardType, Channel, OpKind, PlanFlag
from core.errors import InvalidInput
from server.settings import ServerSettings


CHANNELS = frozenset(int(channel) for channel in Channel)
USE_FLEET, USE_PERSONAL, USE_POINTS = int(PlanFlag.USE_FLEET), int(PlanFlag.USE_PERSONAL), int(PlanFlag.USE_POINTS)
KIND_PAY = int(OpKind.PAY)


def base_points(amount_minor: int, settings: ServerSettings) -> int:
    """Points a sale earns before any loyalty rule: earn_points_per_unit per
    whole currency unit, rounded down."""
    return amount_minor * settings.earn_points_per_unit // 100


def require_range(value: int, field: str, low: int, high: int):
    if not low <= value <= high:
        raise InvalidInput(field, f"must be within {low} .. {high}, got {value}")


def require_length(text: str, field: str, low: int, high: int):
    if not low <= len(text) <= high:
        raise InvalidInput(field, f"length must be within {low} .. {high} characters, got {len(text)}")


def fingerprint(kind: int, request) -> bytes:
    """16 bytes that identify a request's content. A retry sends the same
    content and so the same fingerprint; protobuf's deterministic encoding
    makes equal messages equal bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(bytes((kind,)))
    digest.update(request.SerializeToString(deterministic=True))
    return digest.digest()


def validate_terminal(terminal, field: str = "terminal"):
    if terminal is None or terminal.ByteSize() == 0:
        raise InvalidInput(field, "is required (station_id, terminal_id, serial, operator_id)")
    require_range(terminal.station_id, f"{field}.station_id", 1, limits.STATION_ID_MAX)
    require_range(terminal.terminal_id, f"{field}.terminal_id", 1, limits.TERMINAL_ID_MAX)
    require_range(terminal.serial, f"{field}.serial", 1, limits.SERIAL_MAX)
    require_range(terminal.operator_id, f"{field}.operator_id", 1, limits.OPERATOR_ID_MAX)


def validate_basket(basket, amount_minor: int, field: str = "basket"):
    if len(basket) > limits.BASKET_LINES_MAX:
        raise InvalidInput(field, f"at most {limits.BASKET_LINES_MAX} lines, got {len(basket)}")
    if not basket:
        return
    total = 0
    for index, line in enumerate(basket):
        where = f"{field}[{index}]"
        require_length(line.goods_code, f"{where}.goods_code", 1, limits.GOODS_CODE_LENGTH_MAX)
        require_length(line.name, f"{where}.name", 0, limits.GOODS_NAME_LENGTH_MAX)
        require_length(line.category, f"{where}.category", 0, limits.GOODS_CODE_LENGTH_MAX)
        require_range(line.quantity_milli, f"{where}.quantity_milli", 1, limits.QUANTITY_MILLI_MAX)
        require_range(line.unit_price_minor, f"{where}.unit_price_minor", 0, limits.AMOUNT_MINOR_MAX)
        require_range(line.amount_minor, f"{where}.amount_minor", 0, limits.AMOUNT_MINOR_MAX)
        total += line.amount_minor
    if total != amount_minor:
        raise InvalidInput(field, f"line amounts add up to {total}, but amount_minor is {amount_minor}")


def terminal_fields(terminal) -> dict:
    return {
        "station_id": terminal.station_id,
        "terminal_id": terminal.terminal_id,
        "serial": terminal.serial,
        "operator_id": terminal.operator_id,
    }


# ---------------------------------------------------------------- payments


def pay_op(request, settings: ServerSettings, earn_points: int | None = None) -> Op:
    """earn_points: what the loyalty rules give the whole sale (the kernel
    keeps the money-paid share); without rules, the base rate."""
    validate_terminal(request.terminal)
    require_range(request.amount_minor, "amount_minor", 1, limits.AMOUNT_MINOR_MAX)
    validate_basket(request.basket, request.amount_minor)
    plan = request.plan
    require_range(plan.points_max, "plan.points_max", 0, limits.POINTS_MAX)
    if plan.channel not in CHANNELS:
        raise InvalidInput("plan.channel", f"unknown channel {plan.channel}")
    if plan.card_id == 0 and plan.channel == Channel.NONE:
        raise InvalidInput("plan", "needs a card_id or a channel: nothing would pay")
    # Plain ints: IntFlag arithmetic costs microseconds on the hot path.
    flags = (USE_FLEET if plan.use_fleet else 0) | (USE_PERSONAL if plan.use_personal else 0) | (USE_POINTS if plan.use_points else 0)
    if plan.card_id != 0 and flags == 0 and plan.channel == Channel.NONE:
        raise InvalidInput("plan", "uses no source: set use_fleet, use_personal, use_points or channel")
    terminal = request.terminal
    return Op(
        kind=KIND_PAY,
        station_id=terminal.station_id,
        terminal_id=terminal.terminal_id,
        serial=terminal.serial,
        operator_id=terminal.operator_id,
        card_id=plan.card_id,
        amount=request.amount_minor,
        plan_flags=flags,
        channel=plan.channel,
        points_max=plan.points_max,
        points_per_unit=settings.points_per_unit,
        earn_points=base_points(request.amount_minor, settings) if earn_points is None else earn_points,
        lot_validity_days=settings.lot_validity_days,
        fingerprint=fingerprint(KIND_PAY, request),
    )


def preauth_op(request, settings: ServerSettings) -> Op:
    validate_terminal(request.terminal)
    require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
    require_range(request.amount_minor, "amount_minor", 1, limits.AMOUNT_MINOR_MAX)
    require_range(request.hold_timeout_s, "hold_timeout_s", 0, limits.HOLD_TIMEOUT_S_MAX)
    return Op(
        kind=OpKind.PREAUTH,
        **terminal_fields(request.terminal),
        card_id=request.card_id,
        amount=request.amount_minor,
        hold_timeout_s=request.hold_timeout_s or settings.hold_timeout_s_default,
        fingerprint=fingerprint(OpKind.PREAUTH, request),
    )


def complete_op(request, settings: ServerSettings, earn_points: int | None = None) -> Op:
    validate_terminal(request.terminal)
    require_range(request.txn_id, "txn_id", 1, 2**64 - 1)
    require_range(request.amount_minor, "amount_minor", 0, limits.AMOUNT_MINOR_MAX)
    validate_basket(request.basket, request.amount_minor)
    return Op(
        kind=OpKind.COMPLETE,
        **terminal_fields(request.terminal),
        ref_txn_id=request.txn_id,
        amount=request.amount_minor,
        earn_points=base_points(request.amount_minor, settings) if earn_points is None else earn_points,
        lot_validity_days=settings.lot_validity_days,
        fingerprint=fingerprint(OpKind.COMPLETE, request),
    )


def return_fields(settings: ServerSettings | None) -> dict:
    """What an operation that gives money back needs: the rate that settles
    a points shortfall, and the validity of lots for points it returns."""
    if settings is None:
        return {}
    return {"points_per_unit": settings.points_per_unit, "lot_validity_days": settings.lot_validity_days}


def by_txn_op(kind: int, request, settings: ServerSettings | None = None) -> Op:
    """Release and Void: a terminal and the transaction acted on."""
    validate_terminal(request.terminal)
    require_range(request.txn_id, "txn_id", 1, 2**64 - 1)
    return Op(kind=kind, **terminal_fields(request.terminal), ref_txn_id=request.txn_id, fingerprint=fingerprint(kind, request),
              **return_fields(settings))


def reverse_op(request, settings: ServerSettings | None = None) -> Op:
    validate_terminal(request.terminal)
    require_range(request.original_serial, "original_serial", 1, limits.SERIAL_MAX)
    if request.original_serial == request.terminal.serial:
        raise InvalidInput("original_serial", "must differ from terminal.serial (the reversal's own serial)")
    return Op(
        kind=OpKind.REVERSE,
        **terminal_fields(request.terminal),
        ref_serial=request.original_serial,
        fingerprint=fingerprint(OpKind.REVERSE, request),
        **return_fields(settings),
    )


def refund_op(request, settings: ServerSettings | None = None) -> Op:
    validate_terminal(request.terminal)
    require_range(request.txn_id, "txn_id", 1, 2**64 - 1)
    require_range(request.amount_minor, "amount_minor", 1, limits.AMOUNT_MINOR_MAX)
    return Op(
        kind=OpKind.REFUND,
        **terminal_fields(request.terminal),
        ref_txn_id=request.txn_id,
        amount=request.amount_minor,
        fingerprint=fingerprint(OpKind.REFUND, request),
        **return_fields(settings),
    )


# ---------------------------------------------------------------- cards

CARD_ACCOUNTS = {1: AccountKind.FLEET, 2: AccountKind.PERSONAL, 3: AccountKind.POINTS}


def open_card_op(request) -> Op:
    require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
    if request.card_type not in (CardType.COMPANY, CardType.PERSONAL):
        raise InvalidInput("card_type", "must be COMPANY or PERSONAL_CARD")
    require_range(request.limit_per_transaction_minor, "limit_per_transaction_minor", 0, limits.AMOUNT_MINOR_MAX)
    require_range(request.limit_per_day_minor, "limit_per_day_minor", 0, limits.AMOUNT_MINOR_MAX)
    return Op(
        kind=OpKind.OPEN_CARD,
        card_id=request.card_id,
        card_status=request.card_type,
        limit_per_txn=request.limit_per_transaction_minor,
        limit_per_day=request.limit_per_day_minor,
    )


def topup_op(request) -> Op:
    validate_terminal(request.terminal)
    require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
    if request.account not in CARD_ACCOUNTS:
        raise InvalidInput("account", "must be FLEET, PERSONAL or POINTS")
    require_range(request.amount, "amount", 1, limits.AMOUNT_MINOR_MAX)
    return Op(
        kind=OpKind.TOPUP,
        **terminal_fields(request.terminal),
        card_id=request.card_id,
        account_kind=CARD_ACCOUNTS[request.account],
        amount=request.amount,
        fingerprint=fingerprint(OpKind.TOPUP, request),
    )


def set_card_status_op(request) -> Op:
    require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
    if request.status not in CardStatus.__members__.values():
        raise InvalidInput("status", "must be ACTIVE, LOST, FROZEN or CANCELLED")
    if request.status == CardStatus.CANCELLED:
        # Cancelling moves the balances to the refund owed to the holder.
        return Op(kind=OpKind.CANCEL_CARD, card_id=request.card_id)
    return Op(kind=OpKind.SET_CARD_STATUS, card_id=request.card_id, card_status=request.status)


def set_card_limits_op(request) -> Op:
    require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
    require_range(request.limit_per_transaction_minor, "limit_per_transaction_minor", 0, limits.AMOUNT_MINOR_MAX)
    require_range(request.limit_per_day_minor, "limit_per_day_minor", 0, limits.AMOUNT_MINOR_MAX)
    return Op(
        kind=OpKind.SET_CARD_LIMITS,
        card_id=request.card_id,
        limit_per_txn=request.limit_per_transaction_minor,
        limit_per_day=request.limit_per_day_minor,
    )


def allow_station_op(request) -> Op:
    require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
    require_range(request.station_id, "station_id", 1, limits.STATION_ID_MAX)
    return Op(kind=OpKind.ALLOW_STATION, card_id=request.card_id, station_id=request.station_id)
