"""From kernel results and stored records to gRPC answers and receipts.

Owns: PaymentAnswer, Transaction and Card messages, the receipt text, and
the currency every amount is answered in (set once at start, --currency).
Used by: server/payments.py and server/cards.py; settlement answers take
the currency from here.
"""

from core import dates
from core.promotions.model import funder_name
from core.records import Account, Card, Result, Txn
from core.results import RESULT_TEXT, CardFlag, OpKind, ResultCode, TxnFlag
from tally.v1 import card_pb2, common_pb2, payment_pb2

RESULT_NAMES = {int(code): code.name for code in ResultCode}
SALE_KINDS = (OpKind.PAY, OpKind.PREAUTH)
_currency = "CNY"


def set_currency(code: str):
    """The server's currency setting (server/app.py, at start)."""
    global _currency
    _currency = code


def currency() -> str:
    return _currency


RECEIPT_TITLES = {
    OpKind.PAY: "SALE",
    OpKind.PREAUTH: "PRE-AUTHORIZATION",
    OpKind.COMPLETE: "COMPLETION",
    OpKind.RELEASE: "RELEASE",
    OpKind.REVERSE: "REVERSAL",
    OpKind.VOID: "VOID",
    OpKind.REFUND: "REFUND",
    OpKind.TOPUP: "TOP-UP",
}


def money(amount_minor: int) -> str:
    """Minor units as a decimal string, without floats: 12345 -> '123.45'."""
    if amount_minor < 0:
        return "-" + money(-amount_minor)
    return f"{amount_minor // 100}.{amount_minor % 100:02d}"


def quantity(quantity_milli: int) -> str:
    """Thousandths as a decimal string, without floats: 40125 -> '40.125'."""
    units, milli = divmod(quantity_milli, 1000)
    return f"{units}.{milli:03d}".rstrip("0").rstrip(".")


def result_text(code: int) -> str:
    return RESULT_TEXT.get(code, f"result {code}")


def fill_sources(sources: payment_pb2.Sources, result: Result, channel: int):
    """Set in place: a sub-message built apart and passed to its parent's
    constructor is copied, which costs a Pay more than filling it."""
    sources.fleet_minor = result.fleet
    sources.personal_minor = result.personal
    sources.points_cash_minor = result.points_cash
    sources.points_used = result.points_used
    sources.channel_minor = result.channel_amount
    sources.channel = channel if result.channel_amount else 0


def points_items(quote, points_earned: int, paid_with_points: bool = False) -> list:
    """The rules' items, and, when points paid part of a card's sale
    (paid_with_points), what the sale did not earn because of it."""
    if quote is None:
        return []
    items = [common_pb2.PointsItem(rule=i.rule, description=i.description, points=i.points) for i in quote.items]
    if paid_with_points and quote.total != points_earned:
        items.append(common_pb2.PointsItem(rule="paid_with_points", description="no points on what points paid", points=points_earned - quote.total))
    return items


def shows_balances(result: Result) -> bool:
    """Whether the answer's balances are the card's: an approved request on
    a card, or a sale declined on a card that exists (a declined Pay or
    PreAuthorize answers the card's balances; other declines answer none)."""
    if not result.card_id:
        return False
    if result.code == ResultCode.APPROVED:
        return True
    return result.kind in SALE_KINDS and result.code not in (ResultCode.CARD_NOT_FOUND, ResultCode.PENDING)


def payment_answer(result: Result, terminal=None, basket=(), channel: int = 0, quote=None, promotions=(), declined_by: str = "") -> payment_pb2.PaymentAnswer:
    """promotions: PromotionApplied messages of the sale; declined_by: the
    rule that declined it (a risk limit, the blacklist, a promotion's limit)."""
    answer = payment_pb2.PaymentAnswer(
        result=result.code,
        result_text=result_text(result.code) + (f": {declined_by}" if declined_by else ""),
        txn_id=result.txn_id,
        amount_minor=result.amount,
        points_earned=result.points_earned,
        points_clawed_back=result.points_clawed_back,
        receipt=receipt(result, terminal, basket, channel, promotions) if terminal is not None else "",
        business_day=result.business_day,
        shortfall_settled_minor=result.shortfall_settled,
        declined_by=declined_by,
        currency=_currency,
        replayed=result.replayed,
    )
    fill_sources(answer.sources, result, channel)
    balances = answer.balances
    balances.fleet_minor = result.fleet_balance
    balances.personal_minor = result.personal_balance
    balances.points = result.points_balance
    if result.code == ResultCode.APPROVED and result.card_id:
        # A sale without a card earns nothing: no rule to itemise.
        answer.points_items.extend(points_items(quote, result.points_earned, result.points_cash > 0))
    if promotions:
        answer.promotions.extend(promotions)
        answer.discount_minor = sum(item.discount_minor for item in promotions)
    return answer


def receipt(result: Result, terminal, basket, channel: int, promotions=()) -> str:
    title = RECEIPT_TITLES.get(result.kind, "TRANSACTION")
    lines = [
        f"TALLY {title}",
        f"station {terminal.station_id}  terminal {terminal.terminal_id}  operator {terminal.operator_id}",
        f"serial {terminal.serial}  txn {result.txn_id}  day {dates.date_of(result.business_day)}",
    ]
    for line in basket:
        lines.append(f"{line.name or line.goods_code}  {quantity(line.quantity_milli)} x {money(line.unit_price_minor)}  {money(line.amount_minor)}")
    for item in promotions:
        lines.append(f"  {item.name or 'promotion ' + str(item.promotion_id)}  -{money(item.discount_minor)}  ({funder_name(item.funder)})")
    lines.append(f"AMOUNT {money(result.amount)}")
    if result.code == ResultCode.APPROVED:
        for label, value in (
            ("fleet account", result.fleet),
            ("personal account", result.personal),
            (f"points ({result.points_used})", result.points_cash),
            ("channel", result.channel_amount),
        ):
            if value:
                lines.append(f"  {label}  {money(value)}")
        if result.points_earned:
            lines.append(f"points earned {result.points_earned}")
        if result.points_clawed_back:
            lines.append(f"points taken back {result.points_clawed_back}")
        if result.shortfall_settled:
            lines.append(f"kept for points already spent {money(result.shortfall_settled)}")
    if shows_balances(result):
        lines.append(f"balance fleet {money(result.fleet_balance)}  personal {money(result.personal_balance)}  points {result.points_balance}")
    lines.append(f"{RESULT_NAMES.get(result.code, result.code)}: {result_text(result.code)}")
    return "\n".join(lines)


def leg_sources(record: Txn, prefix: str) -> payment_pb2.Sources:
    return payment_pb2.Sources(
        fleet_minor=getattr(record, prefix + "fleet"),
        personal_minor=getattr(record, prefix + "personal"),
        points_cash_minor=getattr(record, prefix + "points_cash"),
        points_used=getattr(record, prefix + "points_used"),
        channel_minor=getattr(record, prefix + "channel"),
        channel=record.channel,
    )


def transaction(record: Txn) -> payment_pb2.Transaction:
    return payment_pb2.Transaction(
        txn_id=record.txn_id,
        kind=record.kind,
        state=record.state,
        voided=bool(record.flags & TxnFlag.VOIDED),
        reversed=bool(record.flags & TxnFlag.REVERSED),
        card_id=record.card_id,
        station_id=record.station_id,
        terminal_id=record.terminal_id,
        serial=record.serial,
        operator_id=record.operator_id,
        business_day=record.business_day,
        created_ms=record.created_ms,
        expires_ms=record.expires_ms,
        amount_minor=record.amount,
        held=leg_sources(record, "held_"),
        posted=leg_sources(record, "posted_"),
        refunded=leg_sources(record, "refunded_"),
        points_earned=record.points_earned,
        points_clawed_back=record.points_clawed_back,
        points_shortfall=record.points_shortfall,
        original_txn_id=record.ref_txn_id if record.kind == OpKind.REFUND else 0,
        currency=_currency,
    )


def card_message(card: Card, accounts: tuple[Account, Account, Account]) -> card_pb2.Card:
    fleet, personal, points = accounts
    return card_pb2.Card(
        card_id=card.card_id,
        card_type=card.card_type,
        status=card.status,
        limit_per_transaction_minor=card.limit_per_txn,
        limit_per_day_minor=card.limit_per_day,
        spent_today_minor=card.day_spent,
        spent_day=card.day,
        restricted_to_stations=bool(card.flags & CardFlag.RESTRICTED_STATIONS),
        balances=common_pb2.Balances(fleet_minor=fleet.balance, personal_minor=personal.balance, points=points.balance),
        held=common_pb2.Balances(fleet_minor=fleet.held, personal_minor=personal.held, points=points.held),
    )
