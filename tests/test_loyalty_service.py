"""LoyaltyService and loyalty in Pay, over a real server on 127.0.0.1."""

import asyncio
import json

import grpc
import pytest

from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, loyalty_pb2, loyalty_pb2_grpc, payment_pb2
from tests.support import DEMO_COMPANY_CARD, Terminal

R = common_pb2
GIFT = 77
CUSTOMERS = 200
STOCK = 15


@pytest.fixture(scope="module")
def loyalty(server):
    return loyalty_pb2_grpc.LoyaltyServiceStub(server.channel())


@pytest.fixture(scope="module")
def terminal(server):
    return Terminal(server.channel(), terminal_id=401)


def save_rules(loyalty, rules: dict) -> loyalty_pb2.RulesAnswer:
    return loyalty.SaveRules(loyalty_pb2.SaveRulesRequest(rules_json=json.dumps(rules)))


def test_pay_earns_by_the_rules_and_itemises_them(loyalty, terminal):
    save_rules(loyalty, {"earning": {"base_points_per_unit": 1, "category_permille": {"shop": 2000}}})
    request = payment_pb2.PayRequest(
        terminal=terminal.context(),
        amount_minor=30_000,
        basket=[
            common_pb2.BasketLine(goods_code="92", category="fuel", quantity_milli=20_000, unit_price_minor=1_000, amount_minor=20_000),
            common_pb2.BasketLine(goods_code="C1", category="shop", quantity_milli=1_000, unit_price_minor=10_000, amount_minor=10_000),
        ],
        plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True),
    )
    answer = terminal.payments.Pay(request)
    assert answer.result == R.APPROVED
    assert [(item.rule, item.points) for item in answer.points_items] == [("base", 300), ("category", 100)]
    assert answer.points_earned == 400


def test_contradicting_rules_are_refused_naming_the_field(loyalty):
    with pytest.raises(grpc.RpcError) as error:
        save_rules(loyalty, {"earning": {"tier_permille": {"2": -100}}})
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rules_json.earning.tier_permille[2]" in error.value.details() and "below zero" in error.value.details()


def test_checkin_task_points_and_statement(loyalty, terminal, server):
    save_rules(loyalty, {"checkin": {"points": 5, "streak_days": 7, "streak_bonus": 50}, "tasks": {"points": {"survey": 20}, "daily_cap": 30}})
    terminal.open_card(9_001)
    checkin = lambda: loyalty.CheckIn(loyalty_pb2.CheckInRequest(terminal=terminal.context(), card_id=9_001))
    assert checkin().points == 5
    assert checkin().result == R.ALREADY_CHECKED_IN
    task = lambda: loyalty.CompleteTask(loyalty_pb2.CompleteTaskRequest(terminal=terminal.context(), card_id=9_001, task="survey"))
    assert [task().points, task().points] == [20, 10]
    assert task().result == R.TASK_CAP_REACHED
    with pytest.raises(grpc.RpcError) as error:
        loyalty.CompleteTask(loyalty_pb2.CompleteTaskRequest(terminal=terminal.context(), card_id=9_001, task="dance"))
    assert "task: unknown task 'dance'" in error.value.details()
    points = loyalty.GetPoints(loyalty_pb2.GetPointsRequest(card_id=9_001))
    assert points.points_balance == 35 and sum(lot.remaining for lot in points.lots) == 35
    statement = loyalty.GetStatement(loyalty_pb2.GetStatementRequest(card_id=9_001))
    assert [(line.movement, line.points) for line in statement.lines] == [("CHECKIN", 5), ("TASK", 20), ("TASK", 10)]
    assert statement.lines[-1].balance_after == 35


def test_many_customers_race_for_a_small_stock_and_it_is_never_oversold(loyalty, server):
    loyalty.SetGift(loyalty_pb2.SetGiftRequest(terms=loyalty_pb2.GiftTerms(gift_id=GIFT, points_price=100, per_customer_limit=1)))
    loyalty.AddGiftStock(loyalty_pb2.AddGiftStockRequest(gift_id=GIFT, delta=STOCK))
    cards = card_pb2_grpc.CardServiceStub(server.channel())
    for index in range(CUSTOMERS):
        cards.OpenCard(card_pb2.OpenCardRequest(card_id=50_000 + index, card_type=card_pb2.PERSONAL_CARD))
        context = common_pb2.TerminalContext(station_id=1, terminal_id=402, serial=index + 1, operator_id=1)
        cards.TopUp(card_pb2.TopUpRequest(terminal=context, card_id=50_000 + index, account=common_pb2.POINTS, amount=1_000))

    async def race():
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = loyalty_pb2_grpc.LoyaltyServiceStub(channel)

            async def redeem(index):
                context = common_pb2.TerminalContext(station_id=1, terminal_id=403, serial=index + 1, operator_id=1)
                return await stub.RedeemGift(loyalty_pb2.RedeemGiftRequest(terminal=context, card_id=50_000 + index, gift_id=GIFT, quantity=1))

            return await asyncio.gather(*(redeem(index) for index in range(CUSTOMERS)))

    answers = asyncio.run(race())
    codes = [answer.result for answer in answers]
    assert len(answers) == CUSTOMERS, "every redemption is answered"
    assert codes.count(R.APPROVED) == STOCK
    assert codes.count(R.GIFT_OUT_OF_STOCK) == CUSTOMERS - STOCK
    assert all(answer.points == -100 for answer in answers if answer.result == R.APPROVED)
    (gift,) = [g for g in loyalty.ListCatalogue(loyalty_pb2.ListCatalogueRequest()).gifts if g.gift_id == GIFT]
    assert (gift.stock, gift.redeemed) == (0, STOCK)


def test_points_lots_get_the_validity_of_the_rules_in_force_on_every_path(loyalty, terminal):
    """A sale paid by card and one paid through a channel (posted by the
    channel flow's capture) both put their points in lots valid for the
    rules' lot_validity_days, not the built-in 730."""
    save_rules(loyalty, {"expiry": {"lot_validity_days": 45}})
    card = 9_045
    terminal.open_card(card)
    terminal.topup(card, 10_000)
    by_card, _ = terminal.pay(5_000, card_id=card, use_fleet=False, use_personal=True)
    by_channel, _ = terminal.pay(3_000, card_id=card, use_fleet=False, channel=common_pb2.WECHAT_PAY)
    assert (by_card.result, by_channel.result) == (R.APPROVED, R.APPROVED)
    assert by_card.points_earned > 0 and by_channel.points_earned > 0
    points = loyalty.GetPoints(loyalty_pb2.GetPointsRequest(card_id=card))
    today = by_card.business_day
    assert [(lot.expires_day, lot.remaining) for lot in points.lots] == [(today + 45, by_card.points_earned + by_channel.points_earned)]
    save_rules(loyalty, {})


def test_redemptions_per_hour_are_limited_and_the_decline_names_the_rule(loyalty, terminal, server):
    from tally.v1 import promotion_pb2, promotion_pb2_grpc

    risk = promotion_pb2_grpc.RiskServiceStub(server.channel())
    card = 9_077
    terminal.open_card(card)
    terminal.cards.TopUp(card_pb2.TopUpRequest(terminal=terminal.context(), card_id=card, account=R.POINTS, amount=10_000))
    loyalty.SetGift(loyalty_pb2.SetGiftRequest(terms=loyalty_pb2.GiftTerms(gift_id=78, points_price=100)))
    loyalty.AddGiftStock(loyalty_pb2.AddGiftStockRequest(gift_id=78, delta=10))
    risk.SetLimits(promotion_pb2.SetLimitsRequest(limits=[promotion_pb2.VelocityLimit(
        limit_id=9, name="two gifts an hour", measure=promotion_pb2.RISK_MEASURE_REDEMPTION_COUNT, window=promotion_pb2.RISK_WINDOW_HOUR, ceiling=2)]))
    try:
        redeem = lambda: loyalty.RedeemGift(loyalty_pb2.RedeemGiftRequest(terminal=terminal.context(), card_id=card, gift_id=78, quantity=1))
        answers = [redeem() for _ in range(3)]
    finally:
        risk.SetLimits(promotion_pb2.SetLimitsRequest(limits=[]))
    assert [a.result for a in answers] == [R.APPROVED, R.APPROVED, R.COUNTER_LIMIT_REACHED]
    assert "two gifts an hour" in answers[2].declined_by
    assert loyalty.GetPoints(loyalty_pb2.GetPointsRequest(card_id=card)).points_balance == 10_000 - 200


def test_set_gift_refuses_a_stock_it_would_ignore(loyalty):
    """Stock changes only by AddGiftStock (counted, never below zero): a stock
    in SetGift's terms was silently ignored, now it is refused naming the RPC."""
    with pytest.raises(grpc.RpcError) as error:
        loyalty.SetGift(loyalty_pb2.SetGiftRequest(terms=loyalty_pb2.GiftTerms(gift_id=79, points_price=100, stock=50)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("terms.stock: ") and "AddGiftStock" in error.value.details()
    assert [gift.gift_id for gift in loyalty.ListCatalogue(loyalty_pb2.ListCatalogueRequest()).gifts].count(79) == 0
