"""Promotions and risk inside Pay, over a real server on 127.0.0.1: what the
customer is charged, the itemised answer and receipt, stock that runs out
mid-day, coupons given back by a void, velocity limits and the blacklist
declining with the rule's name, and clearing's discount lines.

Each test prices at its own station (promotions target one station), so the
promotions of one test do not touch another's sales."""

import time

import grpc
import pytest

from tally.v1 import common_pb2, payment_pb2, promotion_pb2, promotion_pb2_grpc, settlement_pb2, settlement_pb2_grpc
from tests.support import Terminal

R = common_pb2
P = promotion_pb2
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def promotions(server):
    return promotion_pb2_grpc.PromotionServiceStub(server.channel())


@pytest.fixture(scope="module")
def risk(server):
    return promotion_pb2_grpc.RiskServiceStub(server.channel())


def running(promotions, station_id: int, **fields) -> P.Promotion:
    now_ms = time.time_ns() // 1_000_000
    fields.update(valid_from_ms=now_ms - HOUR_MS, valid_to_ms=now_ms + HOUR_MS, stations=[station_id])
    fields.setdefault("name", "test")
    created = promotions.CreatePromotion(P.CreatePromotionRequest(promotion=P.Promotion(**fields), by="alice")).promotion
    promotions.SubmitPromotion(P.StepRequest(promotion_id=created.promotion_id, by="alice"))
    return promotions.ApprovePromotion(P.StepRequest(promotion_id=created.promotion_id, by="bob")).promotion


def till(server, station_id: int, card_id: int, balance: int = 100_000) -> Terminal:
    """A terminal at its own station and a fresh personal card with money."""
    terminal = Terminal(server.channel(), station_id=station_id, terminal_id=700 + station_id)
    assert terminal.open_card(card_id).result == R.APPROVED
    assert terminal.topup(card_id, balance).result == R.APPROVED
    return terminal


def pay(terminal: Terminal, card_id: int, amount: int, coupons=(), serial=None):
    request = payment_pb2.PayRequest(
        terminal=terminal.context(serial), amount_minor=amount, coupon_codes=list(coupons),
        plan=payment_pb2.PaymentPlan(card_id=card_id, use_personal=True),
    )
    return terminal.payments.Pay(request), request


def test_a_discount_is_charged_itemised_and_answered_the_same_on_a_retry(server, promotions):
    discount = running(promotions, 61, kind=P.PROMOTION_KIND_DISCOUNT, name="ten off", funder=P.FUNDER_STATION, funder_id=61,
                       discount=P.DiscountTerms(off_permille=100))
    terminal = till(server, 61, 6_100)
    answer, request = pay(terminal, 6_100, 5_000)
    assert (answer.result, answer.amount_minor, answer.discount_minor) == (R.APPROVED, 4_500, 500)
    assert [(p.promotion_id, p.name, p.discount_minor, p.funder, p.funder_id) for p in answer.promotions] == [
        (discount.promotion_id, "ten off", 500, P.FUNDER_STATION, 61)
    ]
    assert answer.balances.personal_minor == 100_000 - 4_500
    assert "ten off  -5.00  (station)" in answer.receipt
    again = terminal.payments.Pay(request)
    assert again.replayed  # the stored answer, marked so
    again.replayed = False
    assert again == answer


def test_stock_that_runs_out_prices_the_next_sale_without_it(server, promotions):
    running(promotions, 62, kind=P.PROMOTION_KIND_DISCOUNT, name="first two", stock=2, discount=P.DiscountTerms(off_permille=500))
    terminal = till(server, 62, 6_200)
    charged = [pay(terminal, 6_200, 1_000)[0] for _ in range(3)]
    assert [(a.result, a.amount_minor, a.discount_minor) for a in charged] == [
        (R.APPROVED, 500, 500), (R.APPROVED, 500, 500), (R.APPROVED, 1_000, 0)
    ]


def test_a_coupon_is_used_once_and_a_void_gives_it_back(server, promotions):
    offer = running(promotions, 63, kind=P.PROMOTION_KIND_COUPON, name="three off",
                    coupon=P.CouponTerms(face_value_minor=300, per_issue_count=1, total_count=10, valid_days=30))
    terminal = till(server, 63, 6_300)
    issued = promotions.IssueCoupons(P.IssueCouponsRequest(promotion_id=offer.promotion_id, card_id=6_300, station_id=63, by="alice",
                                                          request_id="three-off-6300"))
    assert issued.result == R.APPROVED and len(issued.coupons) == 1
    code = issued.coupons[0].code
    first, _ = pay(terminal, 6_300, 2_000, coupons=[code])
    assert (first.amount_minor, [p.coupon_id for p in first.promotions]) == (1_700, [issued.coupons[0].coupon_id])
    second, _ = pay(terminal, 6_300, 2_000, coupons=[code])
    assert (second.result, second.amount_minor, second.discount_minor) == (R.APPROVED, 2_000, 0)
    voided = terminal.payments.Void(payment_pb2.VoidRequest(terminal=terminal.context(), txn_id=first.txn_id))
    assert voided.result == R.APPROVED
    third, _ = pay(terminal, 6_300, 2_000, coupons=[code])
    assert (third.amount_minor, third.discount_minor) == (1_700, 300)


def test_an_unknown_coupon_code_is_refused_naming_it(server):
    terminal = till(server, 64, 6_400)
    with pytest.raises(grpc.RpcError) as error:
        pay(terminal, 6_400, 1_000, coupons=["NO-SUCH-CODE"])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "coupon_codes[0]" in error.value.details()


def test_a_velocity_limit_declines_naming_the_rule_and_the_blacklist_refuses(server, risk):
    terminal = till(server, 65, 6_500)
    risk.SetLimits(P.SetLimitsRequest(limits=[P.VelocityLimit(limit_id=3, name="two sales a day", measure=P.RISK_MEASURE_SALE_COUNT,
                                                              window=P.RISK_WINDOW_DAY, ceiling=2)]))
    try:
        answers = [pay(terminal, 6_500, 100)[0] for _ in range(3)]
    finally:
        risk.SetLimits(P.SetLimitsRequest(limits=[]))
    assert [a.result for a in answers] == [R.APPROVED, R.APPROVED, R.COUNTER_LIMIT_REACHED]
    assert "two sales a day" in answers[2].declined_by and answers[2].declined_by in answers[2].result_text
    assert answers[2].txn_id == 0
    assert terminal.card(6_500).balances.personal_minor == 100_000 - 200
    risk.AddBlacklistEntry(P.AddBlacklistEntryRequest(card_id=6_500, reason="card skimmed", by="carol"))
    refused, _ = pay(terminal, 6_500, 100)
    assert refused.result == R.CARD_BLACKLISTED and "card skimmed" in refused.declined_by
    risk.RemoveBlacklistEntry(P.RemoveBlacklistEntryRequest(card_id=6_500, by="carol"))
    assert pay(terminal, 6_500, 100)[0].result == R.APPROVED


def test_clearing_lists_the_days_discounts_with_who_funds_them(server, promotions):
    offer = running(promotions, 66, kind=P.PROMOTION_KIND_DISCOUNT, name="hq five", funder=P.FUNDER_HEADQUARTERS,
                    discount=P.DiscountTerms(off_permille=50))
    terminal = till(server, 66, 6_600)
    kept = [pay(terminal, 6_600, 2_000)[0] for _ in range(3)]
    voided = terminal.payments.Void(payment_pb2.VoidRequest(terminal=terminal.context(), txn_id=kept[0].txn_id))
    assert voided.result == R.APPROVED
    settlement = settlement_pb2_grpc.SettlementServiceStub(server.channel())
    clearing = settlement.GetClearing(settlement_pb2.ClearingRequest(day=kept[0].business_day))
    lines = [(d.station_id, d.promotion_id, d.funded_by, d.sales, d.discount_minor) for d in clearing.discounts if d.station_id == 66]
    assert lines == [(66, offer.promotion_id, "headquarters", 2, 200)]


def test_coupons_are_issued_once_on_a_purchase_and_on_a_top_up_in_range(server, promotions):
    terminal = till(server, 67, 6_700)
    running(promotions, 67, kind=P.PROMOTION_KIND_COUPON, name="come back", amount_min_minor=1_000,
            coupon=P.CouponTerms(face_value_minor=100, issue_on=P.COUPON_TRIGGER_PURCHASE, per_issue_count=1, total_count=100, valid_days=7))
    running(promotions, 67, kind=P.PROMOTION_KIND_COUPON, name="thanks for topping up",
            coupon=P.CouponTerms(face_value_minor=50, issue_on=P.COUPON_TRIGGER_TOPUP, per_issue_count=2, total_count=100, valid_days=7))
    small, _ = pay(terminal, 6_700, 999)
    big, request = pay(terminal, 6_700, 1_000)
    assert (len(small.coupons_issued), len(big.coupons_issued)) == (0, 1)
    assert terminal.payments.Pay(request).coupons_issued == []
    topped = terminal.topup(6_700, 500)
    assert len(topped.coupons_issued) == 2
    listed = promotions.ListCoupons(P.ListCouponsRequest(card_id=6_700))
    assert sorted(c.code for c in listed.coupons) == sorted([*big.coupons_issued, *topped.coupons_issued])
    # The purchase coupon is good for the next sale.
    answer, _ = pay(terminal, 6_700, 2_000, coupons=[big.coupons_issued[0]])
    assert answer.discount_minor == 100
