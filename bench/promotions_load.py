"""Promotions for `python -m bench e2e --promotions`: switched on and off in
the data directory between runs (the server is stopped then).

Owns: what "promotions active" means for the benchmark: a headquarters-
funded 5% discount on every sale (its budget counter taken by each one), a
lottery granting a chance per 100.00 spent (a chance counter), and a
velocity limit on the amount per card per day (a risk counter), all high
enough never to decline. Each Pay then prices its basket, links three
counters to its PAY and itemises the discount: the whole promotions path.
Used by: bench/e2e.py.
"""

import time

from core.promotions import store as promotion_store
from core.promotions.model import DiscountTerms, LotteryTerms, Prize, Promotion, PromotionKind, Stage
from core.writes import DirectWriter
from core.risk.rules import Measure, RiskRules, VelocityLimit, Window, load_rules, save_rules
from core.store import open_store

DISCOUNT_PERMILLE = 50
CHANCE_PER_SPEND_MINOR = 100
VELOCITY_CEILING_MINOR = 10**12
VALIDITY_MS = 24 * 3_600_000
BENCH_LIMIT_ID = 900


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def switch_on(data_dir: str):
    """Create and approve the bench's promotions and set its velocity limit."""
    store = open_store(data_dir)
    try:
        at_ms = now_ms()
        rules = load_rules(store)
        limit = VelocityLimit(BENCH_LIMIT_ID, "bench: amount per card per day", Measure.SALE_AMOUNT, Window.DAY, VELOCITY_CEILING_MINOR)

        def switch(txn):
            for promotion in bench_promotions(at_ms):
                draft = promotion_store.save_draft(txn, store, promotion, "bench", at_ms)
                promotion_store.step_promotion(txn, store, draft.promotion_id, Stage.SUBMITTED, "bench", at_ms)
                promotion_store.step_promotion(txn, store, draft.promotion_id, Stage.APPROVED, "bench-approver", at_ms)
            save_rules(txn, store, RiskRules(limits=(*rules.limits, limit), flags=rules.flags))

        DirectWriter(store).write_blocking(switch)
    finally:
        store.close()


def switch_off(data_dir: str):
    """End every running promotion and drop the bench's velocity limit."""
    store = open_store(data_dir)
    try:
        at_ms = now_ms()
        rules = load_rules(store)
        running = [promotion for promotion in promotion_store.list_promotions(store)
                   if promotion.stage in (Stage.APPROVED, Stage.ACTIVE) and promotion.name.startswith("bench")]

        def switch(txn):
            for promotion in running:
                promotion_store.step_promotion(txn, store, promotion.promotion_id, Stage.ENDED, "bench", at_ms)
            save_rules(txn, store, RiskRules(limits=tuple(limit for limit in rules.limits if limit.limit_id != BENCH_LIMIT_ID),
                                             flags=rules.flags))

        DirectWriter(store).write_blocking(switch)
    finally:
        store.close()


def bench_promotions(at_ms: int) -> list[Promotion]:
    window = dict(valid_from_ms=at_ms - 60_000, valid_to_ms=at_ms + VALIDITY_MS)
    discount = Promotion(0, PromotionKind.DISCOUNT, "bench discount", discount=DiscountTerms(off_permille=DISCOUNT_PERMILLE), **window)
    prizes = (Prize(prize_id=1, name="bench prize", probability_ppm=1, stock=1), Prize(prize_id=2, name="bench consolation", probability_ppm=0, stock=0))
    lottery = Promotion(0, PromotionKind.LOTTERY, "bench lottery", **window,
                        lottery=LotteryTerms(prizes=prizes, consolation_prize_id=2, chance_per_spend_minor=CHANCE_PER_SPEND_MINOR))
    return [discount, lottery]
