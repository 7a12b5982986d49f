"""The requests a terminal sends: their gRPC methods, messages and checks.

Owns: building each tally.v1 request from plain Python arguments, the
method path of each RPC, and which requests are armed for reversal (those
that move money or points, with a TerminalContext).
Used by: the clients (client.py, aio.py, gateway.py).

Amounts are int minor units and points ints: a float, a bool or a str is
refused here (TypeError) before anything is sent. Ranges are the server's
to check (it names the field and the limit).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tally_client import _proto
from tally_client.codes import CardAccount, Channel
from tally_client.results import BasketLine

PAYMENTS = "/tally.v1.PaymentService/"
PAY = PAYMENTS + "Pay"
PRE_AUTHORIZE = PAYMENTS + "PreAuthorize"
COMPLETE = PAYMENTS + "Complete"
RELEASE = PAYMENTS + "Release"
REVERSE = PAYMENTS + "Reverse"
VOID = PAYMENTS + "Void"
REFUND = PAYMENTS + "Refund"
QUERY = PAYMENTS + "Query"
TOP_UP = "/tally.v1.CardService/TopUp"
LOYALTY = "/tally.v1.LoyaltyService/"
CHECK_IN = LOYALTY + "CheckIn"
COMPLETE_TASK = LOYALTY + "CompleteTask"
REDEEM_GIFT = LOYALTY + "RedeemGift"
GET_POINTS = LOYALTY + "GetPoints"
LIST_CATALOGUE = LOYALTY + "ListCatalogue"
QUOTE_POINTS = LOYALTY + "QuotePoints"
SIGN_ON = "/tally.v1.TerminalKeyService/SignOn"

# method -> its answer message's short name.
ANSWERS = {
    PAY: "PaymentAnswer", PRE_AUTHORIZE: "PaymentAnswer", COMPLETE: "PaymentAnswer", RELEASE: "PaymentAnswer",
    REVERSE: "PaymentAnswer", VOID: "PaymentAnswer", REFUND: "PaymentAnswer", TOP_UP: "PaymentAnswer",
    QUERY: "QueryAnswer", CHECK_IN: "LoyaltyAnswer", COMPLETE_TASK: "LoyaltyAnswer", REDEEM_GIFT: "LoyaltyAnswer",
    GET_POINTS: "PointsAnswer", LIST_CATALOGUE: "CatalogueAnswer", QUOTE_POINTS: "QuoteAnswer",
    SIGN_ON: "KeySignOnAnswer",
}


@dataclass(frozen=True, slots=True)
class Request:
    """A request to send: its method, its message, and whether its answer,
    if lost, is reversed (a TerminalContext request that moves something)."""

    method: str
    message: Any
    armed: bool


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: must be an int (minor units, points and ids are integers), "
                        f"got {type(value).__name__}")
    return value


def _basket_line(target, line: BasketLine, index: int):
    target.goods_code, target.name, target.category = line.goods_code, line.name, line.category
    target.quantity_milli = _integer(f"basket[{index}].quantity_milli", line.quantity_milli)
    target.unit_price_minor = _integer(f"basket[{index}].unit_price_minor", line.unit_price_minor)
    target.amount_minor = _integer(f"basket[{index}].amount_minor", line.amount_minor)


def pay(amount_minor: int, card_id: int = 0, use_fleet: bool = False, use_personal: bool = False,
        use_points: bool = False, points_max: int = 0, channel: Channel = Channel.NONE,
        basket: Iterable[BasketLine] = (), coupon_codes: Iterable[str] = ()) -> Request:
    message = _proto.tally("PayRequest")(amount_minor=_integer("amount_minor", amount_minor))
    plan = message.plan
    plan.card_id = _integer("plan.card_id", card_id)
    plan.use_fleet, plan.use_personal, plan.use_points = bool(use_fleet), bool(use_personal), bool(use_points)
    plan.points_max = _integer("plan.points_max", points_max)
    plan.channel = int(Channel(channel))
    for index, line in enumerate(basket):
        _basket_line(message.basket.add(), line, index)
    message.coupon_codes.extend(coupon_codes)
    return Request(PAY, message, armed=True)


def pre_authorize(card_id: int, amount_minor: int, hold_timeout_s: int = 0) -> Request:
    message = _proto.tally("PreAuthorizeRequest")(card_id=_integer("card_id", card_id),
                                                  amount_minor=_integer("amount_minor", amount_minor),
                                                  hold_timeout_s=_integer("hold_timeout_s", hold_timeout_s))
    return Request(PRE_AUTHORIZE, message, armed=True)


def complete(txn_id: int, amount_minor: int, basket: Iterable[BasketLine] = ()) -> Request:
    message = _proto.tally("CompleteRequest")(txn_id=_integer("txn_id", txn_id),
                                              amount_minor=_integer("amount_minor", amount_minor))
    for index, line in enumerate(basket):
        _basket_line(message.basket.add(), line, index)
    return Request(COMPLETE, message, armed=True)


def release(txn_id: int) -> Request:
    return Request(RELEASE, _proto.tally("ReleaseRequest")(txn_id=_integer("txn_id", txn_id)), armed=True)


def void(txn_id: int) -> Request:
    return Request(VOID, _proto.tally("VoidRequest")(txn_id=_integer("txn_id", txn_id)), armed=True)


def refund(txn_id: int, amount_minor: int) -> Request:
    message = _proto.tally("RefundRequest")(txn_id=_integer("txn_id", txn_id),
                                            amount_minor=_integer("amount_minor", amount_minor))
    return Request(REFUND, message, armed=True)


def reverse(original_serial: int) -> Request:
    # Not armed: a lost Reverse goes to the queue as itself (the clients see to it).
    message = _proto.tally("ReverseRequest")(original_serial=_integer("original_serial", original_serial))
    return Request(REVERSE, message, armed=False)


def top_up(card_id: int, amount: int, account: CardAccount = CardAccount.PERSONAL) -> Request:
    """amount: minor units, or points for the POINTS account."""
    message = _proto.tally("TopUpRequest")(card_id=_integer("card_id", card_id), account=int(CardAccount(account)),
                                           amount=_integer("amount", amount))
    return Request(TOP_UP, message, armed=True)


def check_in(card_id: int) -> Request:
    return Request(CHECK_IN, _proto.tally("CheckInRequest")(card_id=_integer("card_id", card_id)), armed=True)


def complete_task(card_id: int, task: str) -> Request:
    return Request(COMPLETE_TASK, _proto.tally("CompleteTaskRequest")(card_id=_integer("card_id", card_id), task=task),
                   armed=True)


def redeem_gift(card_id: int, gift_id: int, quantity: int = 1) -> Request:
    message = _proto.tally("RedeemGiftRequest")(card_id=_integer("card_id", card_id),
                                                gift_id=_integer("gift_id", gift_id),
                                                quantity=_integer("quantity", quantity))
    return Request(REDEEM_GIFT, message, armed=True)


def query(terminal_id: int = 0, serial: int = 0, txn_id: int = 0) -> Request:
    message = _proto.tally("QueryRequest")(terminal_id=_integer("terminal_id", terminal_id),
                                           serial=_integer("serial", serial), txn_id=_integer("txn_id", txn_id))
    return Request(QUERY, message, armed=False)


def get_points(card_id: int) -> Request:
    return Request(GET_POINTS, _proto.tally("GetPointsRequest")(card_id=_integer("card_id", card_id)), armed=False)


def list_catalogue() -> Request:
    return Request(LIST_CATALOGUE, _proto.tally("ListCatalogueRequest")(), armed=False)


def quote_points(card_id: int, station_id: int, amount_minor: int) -> Request:
    message = _proto.tally("QuotePointsRequest")(card_id=_integer("card_id", card_id), station_id=station_id,
                                                 amount_minor=_integer("amount_minor", amount_minor))
    return Request(QUOTE_POINTS, message, armed=False)


def has_terminal(message) -> bool:
    return "terminal" in message.DESCRIPTOR.fields_by_name


def stamp(message, station_id: int, terminal_id: int, serial: int, operator_id: int) -> None:
    """Fill the request's TerminalContext."""
    context = message.terminal
    context.station_id, context.terminal_id = station_id, terminal_id
    context.serial, context.operator_id = serial, operator_id
