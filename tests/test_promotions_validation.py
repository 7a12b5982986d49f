"""Inconsistent promotions are refused when saved, naming the field
(core/promotions/validation.py), and the life cycle only moves forward."""

import msgspec
import pytest

from core.promotions.model import (
    CouponTerms,
    DiscountTerms,
    Funder,
    GoodsTerms,
    LotteryTerms,
    PacketTerms,
    Prize,
    Promotion,
    PromotionKind,
    Stage,
    StepError,
    step,
)
from core.promotions.validation import PromotionError, validate

DAY_MS = 86_400_000
DISCOUNT = Promotion(promotion_id=1, kind=PromotionKind.DISCOUNT, name="ten off", valid_from_ms=DAY_MS, valid_to_ms=2 * DAY_MS,
                     discount=DiscountTerms(off_permille=100))
COUPON = msgspec.structs.replace(DISCOUNT, kind=PromotionKind.COUPON, discount=None, coupon=CouponTerms(face_value_minor=500))
LOTTERY = msgspec.structs.replace(DISCOUNT, kind=PromotionKind.LOTTERY, discount=None, lottery=LotteryTerms(
    prizes=(Prize(1, "car", 1, stock=1), Prize(2, "thanks", 999_999)), consolation_prize_id=2))


def changed(base: Promotion, **fields) -> Promotion:
    return msgspec.structs.replace(base, **fields)


def terms(base: Promotion, field: str, **changes) -> Promotion:
    return msgspec.structs.replace(base, **{field: msgspec.structs.replace(getattr(base, field), **changes)})


CASES = [
    ("window ends before it starts", changed(DISCOUNT, valid_to_ms=DAY_MS - 1), "valid_to_ms", "ends"),
    ("window of zero length", changed(DISCOUNT, valid_to_ms=DAY_MS), "valid_to_ms", "before it starts"),
    ("no name", changed(DISCOUNT, name=""), "name", "length must be within 1 .. 64"),
    ("id zero", changed(DISCOUNT, promotion_id=0), "promotion_id", "within 1 .."),
    ("rate above 1000 per mille", terms(DISCOUNT, "discount", off_permille=1001), "discount.off_permille", "within 0 .. 1000, got 1001"),
    ("rate below zero", terms(DISCOUNT, "discount", off_permille=-1), "discount.off_permille", "got -1"),
    ("rate and per-litre both set", terms(DISCOUNT, "discount", off_per_litre_minor=30), "discount",
     "exactly one of off_permille and off_per_litre_minor"),
    ("neither rate nor per-litre", terms(DISCOUNT, "discount", off_permille=0), "discount", "exactly one"),
    ("minimum above maximum", changed(DISCOUNT, amount_min_minor=5_000, amount_max_minor=4_999), "amount_min_minor",
     "5000 is above amount_max_minor 4999"),
    ("negative budget", changed(DISCOUNT, budget_minor=-1), "budget_minor", "must not be negative"),
    ("negative stock", changed(DISCOUNT, stock=-5), "stock", "must not be negative, got -5"),
    ("unknown tier", changed(DISCOUNT, tiers=(7,)), "tiers[0]", "unknown tier 7"),
    ("unknown card type", changed(DISCOUNT, card_types=(1, 9)), "card_types[1]", "unknown card type 9"),
    ("station zero", changed(DISCOUNT, stations=(1, 0)), "stations[1]", "within 1 .."),
    ("station funder without a station", changed(DISCOUNT, funder=Funder.STATION), "funder_id", "within 1 .."),
    ("headquarters funder with an id", changed(DISCOUNT, funder_id=4), "funder_id", "within 0 .. 0"),
    ("terms of another kind", changed(DISCOUNT, goods=GoodsTerms(("92",), off_permille=1)), "goods", "only a GOODS promotion"),
    ("missing terms", changed(DISCOUNT, discount=None), "discount", "needs its discount terms"),
    ("goods without goods", changed(DISCOUNT, kind=PromotionKind.GOODS, discount=None, goods=GoodsTerms((), off_permille=100)),
     "goods.goods_codes", "at least one goods code"),
    ("goods with rate and price", changed(DISCOUNT, kind=PromotionKind.GOODS, discount=None,
                                          goods=GoodsTerms(("92",), off_permille=100, fixed_price_minor=700)), "goods", "exactly one"),
    ("coupon without face value or rate", terms(COUPON, "coupon", face_value_minor=0), "coupon",
     "exactly one of face_value_minor and off_permille"),
    ("coupon worth more than its minimum spend", terms(COUPON, "coupon", min_spend_minor=400), "coupon.face_value_minor",
     "500 is above min_spend_minor 400"),
    ("coupon issued more at once than in all", terms(COUPON, "coupon", per_issue_count=3, total_count=2), "coupon.per_issue_count",
     "3 is above total_count 2"),
    ("coupon valid for no day", terms(COUPON, "coupon", valid_days=0), "coupon.valid_days", "within 1 .. 3660"),
    ("packet without shares", changed(DISCOUNT, kind=PromotionKind.RED_PACKET, discount=None, packet=PacketTerms(share_count=0)),
     "packet.share_count", "within 1 .. 100000"),
    ("packet range too small for its shares", changed(DISCOUNT, kind=PromotionKind.RED_PACKET, discount=None, amount_max_minor=99,
                                                      packet=PacketTerms(share_count=100)), "amount_max_minor", "cannot give 100 shares"),
    ("probabilities above one", terms(LOTTERY, "lottery", prizes=(Prize(1, "car", 600_000), Prize(2, "thanks", 400_001))),
     "lottery.prizes", "add up to 1000001 per million"),
    ("consolation prize not in the plan", terms(LOTTERY, "lottery", consolation_prize_id=3), "lottery.consolation_prize_id",
     "3 is not one of the prizes"),
    ("prize id twice", terms(LOTTERY, "lottery", prizes=(Prize(1, "car", 1), Prize(1, "bike", 1))), "lottery.prizes[1].prize_id",
     "used twice"),
    ("negative prize stock", terms(LOTTERY, "lottery", prizes=(Prize(1, "car", 1, stock=-1), Prize(2, "thanks", 1))),
     "lottery.prizes[0].stock", "got -1"),
]


@pytest.mark.parametrize("promotion, field, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_an_inconsistent_promotion_is_refused_naming_the_field(promotion, field, fragment):
    with pytest.raises(PromotionError) as error:
        validate(promotion)
    assert error.value.field == field
    assert fragment in str(error.value)
    assert str(error.value).startswith(f"{field}: ")


@pytest.mark.parametrize("promotion", [DISCOUNT, COUPON, LOTTERY], ids=["discount", "coupon", "lottery"])
def test_consistent_promotions_pass(promotion):
    validate(promotion)


def test_the_life_cycle_moves_forward_with_who_and_when():
    draft = changed(DISCOUNT, stage=Stage.DRAFT)
    submitted = step(draft, Stage.SUBMITTED, "alice", 10)
    with pytest.raises(StepError, match="someone else must approve"):
        step(submitted, Stage.APPROVED, "alice", 11)
    approved = step(submitted, Stage.APPROVED, "bob", 12)
    active = step(approved, Stage.ACTIVE, "bob", 13)
    ended = step(active, Stage.ENDED, "carol", 14)
    assert [(c.stage, c.by, c.at_ms) for c in ended.history] == [
        (Stage.SUBMITTED, "alice", 10), (Stage.APPROVED, "bob", 12), (Stage.ACTIVE, "bob", 13), (Stage.ENDED, "carol", 14)]
    with pytest.raises(StepError, match="DRAFT: it cannot become APPROVED"):
        step(draft, Stage.APPROVED, "bob", 15)
    with pytest.raises(StepError, match="ENDED: it cannot become ENDED"):
        step(ended, Stage.ENDED, "bob", 15)
    with pytest.raises(StepError, match="must be named"):
        step(draft, Stage.SUBMITTED, "", 15)
    assert step(draft, Stage.ENDED, "bob", 16).stage == Stage.ENDED
