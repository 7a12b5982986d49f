"""Promotions in LMDB (core/promotions/store.py), coupons and the lottery's
pure parts (core/promotions/coupons.py, lottery.py)."""

import random

import msgspec
import pytest

from core.writes import write_now
from core.counters import CounterScope, CounterTake
from core.promotions import coupons, lottery
from core.promotions import store as promotion_store
from core.promotions.model import (
    CouponTerms,
    CouponTrigger,
    DiscountTerms,
    LotteryTerms,
    Prize,
    Promotion,
    PromotionKind,
    StackingPolicy,
    Stage,
)
from core.promotions.validation import PromotionError
from core.store import open_store

DAY_MS = 86_400_000
T0 = 1_750_000_000_000
DISCOUNT = Promotion(promotion_id=0, kind=PromotionKind.DISCOUNT, name="ten off", valid_from_ms=T0, valid_to_ms=T0 + DAY_MS,
                     discount=DiscountTerms(off_permille=100))
COUPON = msgspec.structs.replace(DISCOUNT, promotion_id=5, kind=PromotionKind.COUPON, discount=None, stage=Stage.APPROVED,
                                 amount_min_minor=10_000, amount_max_minor=50_000,
                                 coupon=CouponTerms(face_value_minor=500, issue_on=CouponTrigger.TOPUP, issue_stations=(1,), per_issue_count=3,
                                                    total_count=90, valid_days=7))
LOTTERY = msgspec.structs.replace(DISCOUNT, promotion_id=8, kind=PromotionKind.LOTTERY, discount=None, stage=Stage.APPROVED, lottery=LotteryTerms(
    prizes=(Prize(3, "bike", 100_000, stock=2), Prize(1, "car", 10_000, stock=1), Prize(2, "thanks", 0)), consolation_prize_id=2,
    chance_per_spend_minor=20_000))


@pytest.fixture
def store(tmp_path):
    opened = open_store(str(tmp_path / "data"), 2**28)
    yield opened
    opened.close()


def test_drafts_are_numbered_validated_and_only_drafts_change(store):
    first = write_now(store, promotion_store.save_draft, DISCOUNT, "alice", T0)
    second = write_now(store, promotion_store.save_draft, DISCOUNT, "alice", T0)
    assert (first.promotion_id, second.promotion_id) == (1, 2)
    assert first.stage == Stage.DRAFT and [(c.stage, c.by) for c in first.history] == [(Stage.DRAFT, "alice")]
    with pytest.raises(PromotionError) as error:
        write_now(store, promotion_store.save_draft, msgspec.structs.replace(first, valid_to_ms=T0), "alice", T0)
    assert error.value.field == "valid_to_ms"
    assert promotion_store.load_promotion(store, 1) == first, "nothing of a refused promotion is saved"
    changed = write_now(store, promotion_store.save_draft, msgspec.structs.replace(first, name="eleven off"), "bob", T0 + 1)
    assert [c.by for c in changed.history] == ["alice", "bob"]
    write_now(store, promotion_store.step_promotion, 1, Stage.SUBMITTED, "bob", T0 + 2)
    with pytest.raises(promotion_store.Conflict, match="SUBMITTED: only a draft can be changed"):
        write_now(store, promotion_store.save_draft, changed, "bob", T0 + 3)
    with pytest.raises(promotion_store.NotFound):
        write_now(store, promotion_store.step_promotion, 99, Stage.SUBMITTED, "bob", T0)
    # An id chosen by the caller is kept; the sequence skips ids taken.
    write_now(store, promotion_store.save_draft, msgspec.structs.replace(DISCOUNT, promotion_id=3), "alice", T0)
    assert write_now(store, promotion_store.save_draft, DISCOUNT, "alice", T0).promotion_id == 4


def test_the_snapshot_follows_the_version(store):
    before = promotion_store.version(store)
    saved = write_now(store, promotion_store.save_draft, DISCOUNT, "alice", T0)
    write_now(store, promotion_store.step_promotion, saved.promotion_id, Stage.SUBMITTED, "alice", T0)
    write_now(store, promotion_store.step_promotion, saved.promotion_id, Stage.APPROVED, "bob", T0)
    policy = write_now(store, promotion_store.save_policy, StackingPolicy(coupons_per_sale_max=2))
    assert promotion_store.version(store) == before + 4
    snapshot = promotion_store.load_snapshot(store)
    assert [p.promotion_id for p in snapshot.priced] == [saved.promotion_id]
    assert (snapshot.policy.coupons_per_sale_max, snapshot.policy.version, snapshot.version) == (2, policy.version, before + 4)
    with pytest.raises(PromotionError) as error:
        write_now(store, promotion_store.save_policy, StackingPolicy(coupons_per_sale_max=17))
    assert error.value.field == "coupons_per_sale_max"


def snapshot_view(snapshot) -> tuple:
    return (snapshot.version, snapshot.by_id, [p.promotion_id for p in snapshot.priced],
            [p.promotion_id for p in snapshot.unapproved], snapshot.policies)


def test_a_snapshot_with_one_promotion_written_is_the_one_read_again(store):
    """PromotionHolder.reload(saved) puts a change into the snapshot in
    memory: it must equal reading every promotion again, each step of the way."""
    write_now(store, promotion_store.save_policy, StackingPolicy(coupons_per_sale_max=2))
    snapshot = promotion_store.load_snapshot(store)
    first = write_now(store, promotion_store.save_draft, DISCOUNT, "alice", T0)
    steps = [first, write_now(store, promotion_store.save_draft, COUPON, "alice", T0)]
    steps.append(write_now(store, promotion_store.step_promotion, first.promotion_id, Stage.SUBMITTED, "alice", T0))
    steps.append(write_now(store, promotion_store.step_promotion, first.promotion_id, Stage.APPROVED, "bob", T0))
    steps.append(write_now(store, promotion_store.step_promotion, first.promotion_id, Stage.ENDED, "bob", T0))
    versions = iter(range(snapshot.version + 1, snapshot.version + 1 + len(steps)))
    for saved in steps:
        snapshot = snapshot.with_promotion(saved, next(versions))
    assert snapshot_view(snapshot) == snapshot_view(promotion_store.load_snapshot(store))
    assert first.promotion_id not in snapshot.by_id, "an ended promotion leaves the snapshot"
    # Read again from the one before: the unchanged ones are reused, the result the same.
    before = promotion_store.load_snapshot(store)
    write_now(store, promotion_store.save_draft, msgspec.structs.replace(DISCOUNT, name="new"), "carol", T0)
    again = promotion_store.load_snapshot(store, before)
    assert snapshot_view(again) == snapshot_view(promotion_store.load_snapshot(store))
    assert again.by_id[steps[1].promotion_id] is before.by_id[steps[1].promotion_id]


def test_coupon_codes_are_unguessable_unique_and_found_by_code(store):
    made = coupons.make_coupons(COUPON, first_coupon_id=10, count=3, card_id=42, now_ms=T0, station_id=1, trigger=CouponTrigger.TOPUP)
    assert [c.coupon_id for c in made] == [10, 11, 12]
    assert all(coupons.code_is_well_formed(c.code) for c in made) and len({c.code for c in made}) == 3
    assert all(c.expires_ms == T0 + 7 * DAY_MS for c in made)
    write_now(store, promotion_store.put_coupons, made)
    typed = "-".join(made[1].code[i:i + 4] for i in range(0, 16, 4)).lower()
    assert promotion_store.coupon_by_code(store, coupons.normalise_code(typed)) == made[1]
    assert promotion_store.coupon_by_code(store, "0" * 16) is None
    assert promotion_store.coupons_of_card(store, 42) == made
    assert promotion_store.coupons_of_card(store, 43) == []
    with pytest.raises(promotion_store.Conflict):
        write_now(store, promotion_store.put_coupons, [msgspec.structs.replace(made[0], coupon_id=13)])
    codes = {coupons.new_code() for _ in range(10_000)}
    assert len(codes) == 10_000, "80 random bits do not repeat"
    assert coupons.issue_take(COUPON, 3) == CounterTake(CounterScope.COUPON_ISSUED, 5, delta=3, ceiling=90, rule="promotion 5 coupons issued")
    assert coupons.use_take(made[0]) == CounterTake(CounterScope.COUPON_USED, 10, delta=1, ceiling=1, rule="coupon 10 used")


@pytest.mark.parametrize("trigger, amount, station, expected", [
    (CouponTrigger.TOPUP, 10_000, 1, [5]),
    (CouponTrigger.TOPUP, 50_000, 1, [5]),
    (CouponTrigger.TOPUP, 9_999, 1, []),
    (CouponTrigger.TOPUP, 50_001, 1, []),
    (CouponTrigger.TOPUP, 20_000, 2, []),
    (CouponTrigger.PURCHASE, 20_000, 1, []),
])
def test_which_coupons_a_top_up_or_purchase_issues(trigger, amount, station, expected):
    found = coupons.issuing([COUPON, LOTTERY], trigger, amount, station, T0 + 1)
    assert [p.promotion_id for p in found] == expected


def test_the_draw_follows_the_probabilities_in_prize_id_order():
    rng = random.Random(7)
    draws = [lottery.pick_prize(LOTTERY.lottery, rng).prize_id for _ in range(100_000)]
    # car 1%, thanks 0% of its own, bike 10%, the rest (89%) consolation (thanks).
    assert abs(draws.count(1) - 1_000) <= 100
    assert abs(draws.count(3) - 10_000) <= 300
    assert draws.count(1) + draws.count(2) + draws.count(3) == 100_000


def test_the_counter_chains_of_the_lottery():
    car = LOTTERY.lottery.prizes[1]
    assert lottery.draw_chain(LOTTERY, 42, car) == [
        CounterTake(CounterScope.LOTTERY_CHANCES, 8, subject=42, delta=-1, rule="promotion 8 chances"),
        CounterTake(CounterScope.LOTTERY_PRIZE, 8, subject=1, delta=1, ceiling=1, rule="promotion 8 prize 1"),
    ]
    assert lottery.draw_chain(LOTTERY, 42, None) == lottery.draw_chain(LOTTERY, 42, car)[:1]
    assert lottery.chances_for_spend(LOTTERY.lottery, 59_999) == 2
    assert lottery.chance_takes([LOTTERY, COUPON], 42, 60_000, 1, T0 + 1) == [
        CounterTake(CounterScope.LOTTERY_CHANCES, 8, subject=42, delta=3, rule="promotion 8 chances")]
    assert lottery.chance_takes([LOTTERY], 0, 60_000, 1, T0 + 1) == [], "no card, no chances"
    assert lottery.chance_takes([LOTTERY], 42, 60_000, 1, T0 + DAY_MS) == [], "outside the window"


def test_a_numbered_draw_starts_with_a_mark_that_can_be_set_once_and_holds_the_outcome():
    terms = LOTTERY.lottery
    outcomes = [(prize, consolation) for prize in (None, *terms.prizes) for consolation in (False, True)]
    codes = [lottery.outcome_code(terms, prize, consolation) for prize, consolation in outcomes]
    assert len(set(codes)) == len(outcomes) and min(codes) == 1, "every outcome its own code, none zero"
    assert [lottery.outcome_of(terms, code) for code in codes] == outcomes
    car = terms.prizes[1]
    won = lottery.outcome_code(terms, car, False)
    once = lottery.once_take(CounterScope.LOTTERY_DRAW, LOTTERY, 42, 17, won)
    # Set once: from 0 to `won` fits under the ceiling, a second take does not.
    assert (once.subject, once.period, once.delta, once.ceiling, once.rule) == (42, 17, won, won, "promotion 8 draw number 17")
    assert lottery.draw_chain(LOTTERY, 42, car, once) == [once, *lottery.draw_chain(LOTTERY, 42, car)]
