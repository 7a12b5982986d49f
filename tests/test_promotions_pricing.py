"""Pricing and the stacking policy (core/promotions/pricing.py), table-driven:
each row is a basket, the promotions and coupons in force, and the exact
discounts expected, promotion by promotion."""

import random

import pytest

from core.counters import CounterScope, CounterTake
from core.promotions.model import (
    Coupon,
    CouponTerms,
    DiscountTerms,
    GoodsTerms,
    Promotion,
    PromotionKind,
    StackingPolicy,
    Stage,
)
from core.promotions.pricing import Sale, SaleLine, price_basket, refusal_key
from core.promotions.store import Snapshot
from core.promotions.validation import validate
from core.results import CardType, Tier

DAY_MS = 86_400_000
T0 = 1_750_000_000_000
CARD = 777
# 40 litres of 92 at 7.50 (300.00) and two pieces of C1 at 10.00 (20.00).
FUEL = SaleLine(goods_code="92", category="fuel", quantity_milli=40_000, amount_minor=30_000)
SHOP = SaleLine(goods_code="C1", category="shop", quantity_milli=2_000, amount_minor=2_000)


def promotion(promotion_id: int, kind: PromotionKind, **fields) -> Promotion:
    fields.setdefault("stage", Stage.APPROVED)
    fields.setdefault("valid_from_ms", T0 - DAY_MS)
    fields.setdefault("valid_to_ms", T0 + DAY_MS)
    made = Promotion(promotion_id=promotion_id, kind=kind, name=f"p{promotion_id}", **fields)
    validate(made)  # every promotion of the table could be saved
    return made


def goods(promotion_id, codes, off=0, price=0, **fields):
    return promotion(promotion_id, PromotionKind.GOODS, goods=GoodsTerms(tuple(codes), off_permille=off, fixed_price_minor=price), **fields)


def discount(promotion_id, off=0, per_litre=0, categories=(), max_off=0, **fields):
    terms = DiscountTerms(off_permille=off, off_per_litre_minor=per_litre, categories=tuple(categories), max_off_minor=max_off)
    return promotion(promotion_id, PromotionKind.DISCOUNT, discount=terms, **fields)


def coupon_promotion(promotion_id, face=0, off=0, min_spend=0, max_off=0, use_stations=(), partners=(), **fields):
    terms = CouponTerms(face_value_minor=face, off_permille=off, min_spend_minor=min_spend, max_off_minor=max_off,
                        use_stations=tuple(use_stations), partners=tuple(partners))
    return promotion(promotion_id, PromotionKind.COUPON, coupon=terms, **fields)


def coupon(coupon_id, promotion_id, card_id=0, expires_ms=T0 + DAY_MS):
    return Coupon(coupon_id=coupon_id, code=f"CODE{coupon_id}", promotion_id=promotion_id, card_id=card_id, issued_ms=T0 - DAY_MS,
                  expires_ms=expires_ms)


def sale(lines=(FUEL, SHOP), amount_minor=None, **fields):
    fields.setdefault("station_id", 1)
    fields.setdefault("now_ms", T0)
    fields.setdefault("card_id", CARD)
    fields.setdefault("card_type", CardType.PERSONAL)
    return Sale(amount_minor=sum(line.amount_minor for line in lines) if amount_minor is None else amount_minor, lines=tuple(lines), **fields)


C10, C11, C12, C13 = (coupon_promotion(10, face=500), coupon_promotion(11, face=1_000, priority=2),
                      coupon_promotion(12, face=2_000, min_spend=30_000), coupon_promotion(13, off=100, max_off=1_000))

# (name, promotions, coupons, sale, policy, refused,
#  expected [(promotion_id, coupon_id, discount)], expected skipped {(promotion_id, coupon_id): reason fragment}, total)
CASES = [
    ("nothing in force", [], [], sale(), None, None, [], {}, 0),
    ("rate off every line, rounded down per line",
     [discount(1, off=105)], [], sale(), None, None, [(1, 0, 3_150 + 210)], {}, 3_360),
    ("per-litre discount on the fuel line only",
     [discount(2, per_litre=30, categories=["fuel"])], [], sale(), None, None, [(2, 0, 1_200)], {}, 1_200),
    ("per-litre discount, fractional litres rounded down",
     [discount(2, per_litre=33, categories=["fuel"])], [], sale(lines=[SaleLine("92", "fuel", 40_555, 30_416)]), None, None,
     [(2, 0, 1_338)], {}, 1_338),
    ("per-litre discount capped per sale",
     [discount(2, per_litre=30, categories=["fuel"], max_off=1_000)], [], sale(), None, None, [(2, 0, 1_000)], {}, 1_000),
    ("goods at a fixed price per unit",
     [goods(3, ["C1"], price=800)], [], sale(), None, None, [(3, 0, 400)], {}, 400),
    ("goods rate first, then the discount on what is left of each line",
     [discount(1, off=100, priority=9), goods(3, ["C1"], off=500)], [], sale(), None, None,
     [(3, 0, 1_000), (1, 0, 3_000 + 100)], {}, 4_100),
    ("goods promotion without its goods in the basket",
     [goods(3, ["X9"], off=500)], [], sale(), None, None, [], {(3, 0): "no line of its goods"}, 0),
    ("exclusive group: the higher priority wins",
     [discount(1, off=100, exclusive_group="fuel", priority=1), discount(2, per_litre=30, categories=["fuel"], exclusive_group="fuel", priority=5)],
     [], sale(), None, None, [(2, 0, 1_200)], {(1, 0): "exclusive group 'fuel': promotion 2 applies"}, 1_200),
    ("exclusive group: equal priority, the lowest id wins",
     [discount(4, off=50, exclusive_group="g"), discount(3, off=100, exclusive_group="g")], [], sale(), None, None,
     [(3, 0, 3_200)], {(4, 0): "promotion 3 applies"}, 3_200),
    ("exclusive group: a member that takes nothing leaves the group to the next",
     [discount(1, per_litre=30, categories=["lpg"], exclusive_group="g", priority=9), discount(2, off=100, exclusive_group="g")],
     [], sale(), None, None, [(2, 0, 3_200)], {(1, 0): "no line of its categories"}, 3_200),
    ("different exclusive groups stack",
     [discount(1, off=100, exclusive_group="a"), discount(2, per_litre=30, categories=["fuel"], exclusive_group="b")], [], sale(), None, None,
     [(1, 0, 3_200), (2, 0, 1_200)], {}, 4_400),
    ("not stackable and first: applies alone",
     [discount(1, off=100, stackable=False, priority=9), discount(2, per_litre=30, categories=["fuel"])], [coupon(1, 10)], sale(), None, None,
     [(1, 0, 3_200)], {(2, 0): "promotion 1 applies alone", (10, 1): "promotion 1 applies alone"}, 3_200),
    ("not stackable after another: skipped",
     [discount(1, off=100), discount(2, off=200, stackable=False, priority=-1)], [], sale(), None, None,
     [(1, 0, 3_200)], {(2, 0): "not stackable: promotion 1 already applies"}, 3_200),
    ("one coupon per sale: the highest priority coupon",
     [], [coupon(1, 10), coupon(2, 11)], sale(), None, None, [(11, 2, 1_000)], {(10, 1): "at most 1 coupon(s) per sale"}, 1_000),
    ("one coupon per sale: equal priority, the lowest coupon id",
     [], [coupon(7, 10), coupon(5, 10)], sale(), None, None, [(10, 5, 500)], {(10, 7): "at most 1 coupon(s)"}, 500),
    ("two coupons when the policy allows two",
     [], [coupon(1, 10), coupon(2, 11)], sale(), StackingPolicy(coupons_per_sale_max=2), None, [(11, 2, 1_000), (10, 1, 500)], {}, 1_500),
    ("coupon minimum spend counts what is left after the discounts",
     [discount(1, off=100)], [coupon(3, 12)], sale(), None, None, [(1, 0, 3_200)],
     {(12, 3): "needs a spend of 30000; 28800 is left to pay"}, 3_200),
    ("coupon minimum spend reached",
     [], [coupon(3, 12)], sale(), None, None, [(12, 3, 2_000)], {}, 2_000),
    ("coupon rate capped",
     [], [coupon(4, 13)], sale(), None, None, [(13, 4, 1_000)], {}, 1_000),
    ("a coupon worth more than what is left takes what is left",
     [goods(3, ["C1"], off=500)], [coupon(1, 11)], sale(lines=[SHOP]), None, None, [(3, 0, 1_000), (11, 1, 1_000)], {}, 2_000),
    ("coupon expired, of another card, or shown twice",
     [], [coupon(1, 10, expires_ms=T0), coupon(2, 10, card_id=CARD + 1), coupon(3, 10, card_id=CARD), coupon(3, 10, card_id=CARD)],
     sale(), None, None, [(10, 3, 500)],
     {(10, 1): "expired", (10, 2): "issued to another card", (10, 3): "shown twice"}, 500),
    ("coupon of an unknown promotion",
     [], [coupon(1, 99)], sale(), None, None, [], {(99, 1): "no coupon promotion"}, 0),
    ("coupon usable at other stations only, or at a partner",
     [], [coupon(1, 14)], sale(), None, None, [], {(14, 1): "not usable at station 1"}, 0),
    ("coupon usable at its partner merchant",
     [], [coupon(1, 14)], sale(partner_id=5), None, None, [(14, 1, 500)], {}, 500),
    ("amount range: below the minimum",
     [discount(1, off=100, amount_min_minor=50_000)], [], sale(), None, None, [], {(1, 0): "below its minimum 50000"}, 0),
    ("amount range: above the maximum",
     [discount(1, off=100, amount_max_minor=10_000)], [], sale(), None, None, [], {(1, 0): "above its maximum 10000"}, 0),
    ("amount range: inside",
     [discount(1, off=100, amount_min_minor=32_000, amount_max_minor=32_000)], [], sale(), None, None, [(1, 0, 3_200)], {}, 3_200),
    ("station, tier and card type targeting",
     [discount(1, off=100, stations=(2,)), discount(2, off=100, tiers=(Tier.GOLD,)), discount(3, off=100, card_types=(CardType.COMPANY,)),
      discount(4, off=100, card_types=(CardType.PERSONAL,), tiers=(Tier.REGULAR, Tier.GOLD), stations=(1, 2))],
     [], sale(), None, None, [(4, 0, 3_200)],
     {(1, 0): "does not run at station 1", (2, 0): "not for tier REGULAR", (3, 0): "not for PERSONAL cards"}, 3_200),
    ("a sale without a card: card-only and per-customer promotions skip",
     [discount(1, off=100, card_types=(CardType.COMPANY,)), discount(2, off=100, uses_per_card=1), discount(3, off=50)],
     [], sale(card_id=0, card_type=0), None, None, [(3, 0, 1_500 + 100)],
     {(1, 0): "for cards only", (2, 0): "needs a card"}, 1_600),
    ("drafts and promotions outside their window",
     [discount(1, off=100, stage=Stage.DRAFT), discount(2, off=100, valid_to_ms=T0), discount(3, off=100, valid_from_ms=T0 + 1)],
     [], sale(), None, None, [], {(1, 0): "DRAFT: only approved or active", (2, 0): "ended at", (3, 0): "starts at"}, 0),
    ("refused by the kernel on the first try: priced again without it",
     [discount(1, off=100), discount(2, per_litre=30, categories=["fuel"])], [coupon(9, 10)], sale(), None,
     {"promotion 1": "budget spent", "coupon 9": "coupon already used"},
     [(2, 0, 1_200)], {(1, 0): "budget spent", (10, 9): "coupon already used"}, 1_200),
    ("a sale without a basket is one line of its amount",
     [discount(1, off=50), discount(2, per_litre=30, categories=["fuel"])], [], sale(lines=[], amount_minor=10_000), None, None,
     [(1, 0, 500)], {(2, 0): "no line of its categories"}, 500),
    ("everything at once, in policy order",
     [goods(3, ["C1"], price=800), discount(1, off=100, exclusive_group="x", priority=3), discount(2, off=200, exclusive_group="x"),
      discount(5, per_litre=30, categories=["fuel"])],
     [coupon(1, 10), coupon(2, 11)], sale(), None, None,
     [(3, 0, 400), (1, 0, 3_000 + 160), (5, 0, 1_200), (11, 2, 1_000)],
     {(2, 0): "exclusive group 'x'", (10, 1): "at most 1 coupon(s)"}, 5_760),
]


def coupon_promotions():
    return {p.promotion_id: p for p in (C10, C11, C12, C13, coupon_promotion(14, face=500, use_stations=(2,), partners=(5,)))}


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_stacking_table(case):
    _, promotions, coupons, basket, policy, refused, expected, expected_skipped, total = case
    pricing = price_basket(promotions, basket, coupons, coupon_promotions(), policy or StackingPolicy(), refused)
    assert [(a.promotion_id, a.coupon_id, a.discount_minor) for a in pricing.applied] == expected
    assert pricing.discount_minor == total
    assert pricing.amount_minor == basket.amount_minor - total
    skipped = {(s.promotion_id, s.coupon_id): s.reason for s in pricing.skipped}
    assert set(skipped) == set(expected_skipped), skipped
    for key, fragment in expected_skipped.items():
        assert fragment in skipped[key], (key, skipped[key])


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_the_same_basket_prices_the_same_whatever_the_order_given(case):
    _, promotions, coupons, basket, policy, refused, _, _, _ = case
    first = price_basket(promotions, basket, coupons, coupon_promotions(), policy or StackingPolicy(), refused)
    shuffler = random.Random(4)
    for _ in range(5):
        promotions_shuffled, coupons_shuffled = list(promotions), list(coupons)
        shuffler.shuffle(promotions_shuffled)
        shuffler.shuffle(coupons_shuffled)
        again = price_basket(promotions_shuffled, basket, coupons_shuffled, coupon_promotions(), policy or StackingPolicy(), refused)
        assert again.applied == first.applied
        assert sorted(again.skipped, key=lambda s: (s.promotion_id, s.coupon_id)) == sorted(first.skipped, key=lambda s: (s.promotion_id, s.coupon_id))


def test_the_takes_of_an_applied_promotion_and_coupon():
    promotions = [goods(3, ["C1"], off=500, budget_minor=10_000, stock=50, uses_per_card=2)]
    pricing = price_basket(promotions, sale(), [coupon(8, 10)], coupon_promotions())
    assert pricing.takes == [
        CounterTake(CounterScope.PROMOTION_BUDGET, 3, delta=1_000, ceiling=10_000, rule="promotion 3 budget"),
        CounterTake(CounterScope.PROMOTION_STOCK, 3, delta=2, ceiling=50, rule="promotion 3 stock"),
        CounterTake(CounterScope.PROMOTION_USES, 3, subject=CARD, delta=1, ceiling=2, rule="promotion 3 uses per card"),
        CounterTake(CounterScope.PROMOTION_BUDGET, 10, delta=500, ceiling=0, rule="promotion 10 budget"),
        CounterTake(CounterScope.COUPON_USED, 8, delta=1, ceiling=1, rule="coupon 8 used"),
    ]
    assert [refusal_key(take.rule) for take in pricing.takes] == ["promotion 3"] * 3 + ["promotion 10", "coupon 8"]
    # Fuel litres round up to whole units for a goods stock: 40.5 litres take 41.
    fuel = price_basket([goods(4, ["92"], off=10, stock=100)], sale(lines=[SaleLine("92", "fuel", 40_500, 30_375)]))
    assert fuel.takes[1] == CounterTake(CounterScope.PROMOTION_STOCK, 4, delta=41, ceiling=100, rule="promotion 4 stock")
    assert (fuel.applied[0].funder, fuel.applied[0].lines[0].line, fuel.applied[0].lines[0].discount_minor) == (1, 0, 303)


def test_a_promotion_whose_counters_would_pass_what_a_sale_may_link_is_skipped():
    promotions = [discount(1, off=10), discount(2, off=10, stock=5), discount(3, off=10)]
    pricing = price_basket(promotions, sale(), takes_max=2)
    assert [a.promotion_id for a in pricing.applied] == [1, 3]
    assert "counters would pass the 2 one sale may link" in pricing.skipped[0].reason


def test_the_snapshot_prices_only_approved_or_active_goods_and_discounts():
    ended = discount(5, off=100, stage=Stage.ENDED)
    snapshot = Snapshot([discount(1, off=100), discount(2, off=100, stage=Stage.DRAFT), ended, C10, discount(3, off=1, stage=Stage.ACTIVE)])
    assert [p.promotion_id for p in snapshot.priced] == [1, 3]
    assert [p.promotion_id for p in snapshot.unapproved] == [2]
    assert sorted(snapshot.by_id) == [1, 2, 3, 10]
    assert snapshot.running(10, PromotionKind.COUPON, T0) is C10
    assert snapshot.running(10, PromotionKind.COUPON, T0 + DAY_MS) is None
    assert snapshot.running(1, PromotionKind.COUPON, T0) is None


@pytest.mark.parametrize("off", (1, 999, 1000))
def test_no_line_ever_goes_below_zero(off):
    promotions = [goods(1, ["C1"], off=1000), discount(2, off=off), coupon_promotion(20, face=1_000_000)]
    pricing = price_basket(promotions[:2], sale(), [coupon(1, 20)], {20: promotions[2]}, StackingPolicy(coupons_per_sale_max=1))
    assert pricing.discount_minor == 32_000 and pricing.amount_minor == 0
    for applied in pricing.applied:
        assert all(line.discount_minor > 0 for line in applied.lines)
