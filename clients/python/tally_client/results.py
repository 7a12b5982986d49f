"""Typed answers: what each call returns, with money as int minor units.

Owns: the result records of the SDK and their making from tally.v1
messages (read field by field; unknown fields of a newer server are
ignored). Nothing here talks to the network.
Used by: the clients (client.py, aio.py, gateway.py), and callers.

Every result of a request that moves money or points carries the request's
serial and an Outcome: ANSWERED (the server's answer is here) or REVERSED
(no answer came: result is RESULT_CODE_UNSPECIFIED, approved is False, and
a Reverse of the serial is queued; see reversals.py).
"""

from dataclasses import dataclass

from tally_client.codes import (CardAccount, Channel, CustomerTier, Outcome, ResultCode, TransactionKind,
                                TransactionState, known)


@dataclass(frozen=True, slots=True)
class Balances:
    fleet_minor: int = 0
    personal_minor: int = 0
    points: int = 0


@dataclass(frozen=True, slots=True)
class Sources:
    """Where an answer's money came from (or went back to)."""

    fleet_minor: int = 0
    personal_minor: int = 0
    points_cash_minor: int = 0
    points_used: int = 0
    channel_minor: int = 0
    channel: Channel = Channel.NONE


@dataclass(frozen=True, slots=True)
class PointsItem:
    rule: str
    description: str
    points: int


@dataclass(frozen=True, slots=True)
class PromotionApplied:
    promotion_id: int
    name: str
    discount_minor: int
    funder: int
    funder_id: int
    coupon_id: int


@dataclass(frozen=True, slots=True)
class BasketLine:
    """One line of a basket; amounts in minor units, quantity in thousandths."""

    goods_code: str
    amount_minor: int
    quantity_milli: int = 1000
    unit_price_minor: int = 0
    name: str = ""
    category: str = ""


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """The answer to Pay, PreAuthorize, Complete, Release, Reverse, Void,
    Refund and TopUp."""

    outcome: Outcome
    serial: int
    result: ResultCode = ResultCode.RESULT_CODE_UNSPECIFIED
    result_text: str = ""
    txn_id: int = 0
    amount_minor: int = 0
    currency: str = ""
    sources: Sources = Sources()
    points_earned: int = 0
    points_clawed_back: int = 0
    balances: Balances = Balances()
    receipt: str = ""
    business_day: int = 0
    points_items: tuple[PointsItem, ...] = ()
    shortfall_settled_minor: int = 0
    promotions: tuple[PromotionApplied, ...] = ()
    discount_minor: int = 0
    declined_by: str = ""
    coupons_issued: tuple[str, ...] = ()

    @property
    def approved(self) -> bool:
        """True only for an answer that says APPROVED; never for a lost one."""
        return self.outcome is Outcome.ANSWERED and self.result == ResultCode.APPROVED


@dataclass(frozen=True, slots=True)
class Transaction:
    txn_id: int
    kind: TransactionKind | int
    state: TransactionState | int
    voided: bool
    reversed: bool
    card_id: int
    station_id: int
    terminal_id: int
    serial: int
    operator_id: int
    business_day: int
    created_ms: int
    expires_ms: int
    amount_minor: int
    currency: str
    held: Sources
    posted: Sources
    refunded: Sources
    points_earned: int
    points_clawed_back: int
    points_shortfall: int
    original_txn_id: int


@dataclass(frozen=True, slots=True)
class QueryResult:
    found: bool
    # By serial: the request's stored answer (outcome ANSWERED).
    answer: PaymentResult | None = None
    transaction: Transaction | None = None


@dataclass(frozen=True, slots=True)
class LoyaltyResult:
    """The answer to CheckIn, CompleteTask and RedeemGift."""

    outcome: Outcome
    serial: int
    result: ResultCode = ResultCode.RESULT_CODE_UNSPECIFIED
    result_text: str = ""
    txn_id: int = 0
    points: int = 0
    cash_minor: int = 0
    points_balance: int = 0
    personal_balance_minor: int = 0
    declined_by: str = ""

    @property
    def approved(self) -> bool:
        return self.outcome is Outcome.ANSWERED and self.result == ResultCode.APPROVED


@dataclass(frozen=True, slots=True)
class PointsLot:
    earned_day: int
    expires_day: int
    original: int
    remaining: int


@dataclass(frozen=True, slots=True)
class PointsResult:
    """GetPoints: a card's points, its open lots (oldest first) and tier."""

    result: ResultCode
    result_text: str
    points_balance: int
    points_held: int
    lots: tuple[PointsLot, ...]
    tier: CustomerTier | int


@dataclass(frozen=True, slots=True)
class Gift:
    gift_id: int
    points_price: int
    cash_price_minor: int
    stock: int
    redeemed: int
    per_customer_limit: int
    tiers: tuple[CustomerTier | int, ...]
    valid_from_day: int
    valid_to_day: int


@dataclass(frozen=True, slots=True)
class PointsQuote:
    """QuotePoints: what a sale would earn, rule by rule."""

    items: tuple[PointsItem, ...]
    total: int


@dataclass(frozen=True, slots=True)
class SignOnResult:
    key_id: int
    expires_ms: int
    serial: int



# ------------------------------------------------------------ from messages


def _sources(message) -> Sources:
    return Sources(message.fleet_minor, message.personal_minor, message.points_cash_minor, message.points_used,
                   message.channel_minor, known(Channel, message.channel))


def _currency(message) -> str:
    # Servers before the currency field send none.
    return message.currency if "currency" in message.DESCRIPTOR.fields_by_name else ""


def payment_result(message, serial: int) -> PaymentResult:
    balances = message.balances
    return PaymentResult(
        outcome=Outcome.ANSWERED, serial=serial, result=ResultCode(message.result), result_text=message.result_text,
        txn_id=message.txn_id, amount_minor=message.amount_minor, currency=_currency(message),
        sources=_sources(message.sources), points_earned=message.points_earned,
        points_clawed_back=message.points_clawed_back,
        balances=Balances(balances.fleet_minor, balances.personal_minor, balances.points), receipt=message.receipt,
        business_day=message.business_day,
        points_items=tuple(PointsItem(i.rule, i.description, i.points) for i in message.points_items),
        shortfall_settled_minor=message.shortfall_settled_minor,
        promotions=tuple(PromotionApplied(p.promotion_id, p.name, p.discount_minor, p.funder, p.funder_id, p.coupon_id)
                         for p in message.promotions),
        discount_minor=message.discount_minor, declined_by=message.declined_by,
        coupons_issued=tuple(message.coupons_issued))


def transaction(message) -> Transaction:
    return Transaction(
        message.txn_id, known(TransactionKind, message.kind), known(TransactionState, message.state), message.voided,
        message.reversed, message.card_id, message.station_id, message.terminal_id, message.serial, message.operator_id,
        message.business_day, message.created_ms, message.expires_ms, message.amount_minor, _currency(message),
        _sources(message.held), _sources(message.posted), _sources(message.refunded), message.points_earned,
        message.points_clawed_back, message.points_shortfall, message.original_txn_id)


def query_result(message, serial: int) -> QueryResult:
    return QueryResult(
        found=message.found,
        answer=payment_result(message.answer, serial) if message.HasField("answer") else None,
        transaction=transaction(message.transaction) if message.HasField("transaction") else None)


def loyalty_result(message, serial: int) -> LoyaltyResult:
    return LoyaltyResult(Outcome.ANSWERED, serial, ResultCode(message.result), message.result_text, message.txn_id,
                         message.points, message.cash_minor, message.points_balance, message.personal_balance_minor,
                         message.declined_by)


def points_result(message) -> PointsResult:
    return PointsResult(ResultCode(message.result), message.result_text, message.points_balance, message.points_held,
                        tuple(PointsLot(lot.earned_day, lot.expires_day, lot.original, lot.remaining)
                              for lot in message.lots),
                        known(CustomerTier, message.tier))


def gifts(message) -> tuple[Gift, ...]:
    return tuple(Gift(g.gift_id, g.points_price, g.cash_price_minor, g.stock, g.redeemed, g.per_customer_limit,
                      tuple(known(CustomerTier, t) for t in g.tiers), g.valid_from_day, g.valid_to_day)
                 for g in message.gifts)


def points_quote(message) -> PointsQuote:
    return PointsQuote(tuple(PointsItem(i.rule, i.description, i.points) for i in message.items), message.total)


def lost_payment(serial: int) -> PaymentResult:
    return PaymentResult(outcome=Outcome.REVERSED, serial=serial)


def lost_loyalty(serial: int) -> LoyaltyResult:
    return LoyaltyResult(outcome=Outcome.REVERSED, serial=serial)


__all__ = ["Balances", "BasketLine", "CardAccount", "Gift", "LoyaltyResult", "PaymentResult", "PointsItem",
           "PointsLot", "PointsQuote", "PointsResult", "PromotionApplied", "QueryResult", "SignOnResult", "Sources",
           "Transaction"]
