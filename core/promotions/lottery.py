"""The lottery: chances, a secure draw, and the prize's stock kept by the kernel.

Owns: how many chances a spend earns, picking a prize from the plan's
probabilities with a secure random source, and the counter chains of a
grant and of a draw.
Used by: server/promotion_service.py (GrantChances, BuyChances, Draw),
server/payments.py (chances a sale earns: `chance_takes`).

A card's chances are the counter LOTTERY_CHANCES (owner: the lottery,
subject: the card): grants add, draws take one, and the kernel's floor of
zero refuses a draw without a chance. A draw is one linked chain:
  LOTTERY_CHANCES delta -1, LOTTERY_PRIZE (subject: the prize) delta +1
  with ceiling the prize's stock;
all or nothing. If the prize's stock is out the kernel refuses the chain
(nothing moved, the chance kept) and the draw falls back to the consolation
prize, the same way; if that too is out, the chance alone is spent for no
prize. So stock never goes below zero, whatever the concurrency.

A retried draw or grant (its answer lost on the way back) must not spend or
give a second time. The caller numbers its draws and grants per card
(`draw_number`, `grant_number`); the chain then starts with a take that can
happen once: LOTTERY_DRAW or LOTTERY_GRANT (owner: the lottery, subject: the
card, period: the number), delta and ceiling both the outcome. The first
chain sets it; a retry's chain is refused by it before anything else moves,
and the outcome is read back from it (`once_take`, `outcome_code`).
"""

import random
import secrets

from core.counters import CounterScope, CounterTake
from core.promotions.model import PPM_ONE, LotteryTerms, Prize, Promotion, PromotionKind

SECURE_RANDOM = secrets.SystemRandom()
# Chances one grant may give.
CHANCES_PER_GRANT_MAX = 1000


def chances_for_spend(terms: LotteryTerms, amount_minor: int) -> int:
    """One chance per chance_per_spend_minor of the sale, rounded down."""
    if not terms.chance_per_spend_minor:
        return 0
    return min(amount_minor // terms.chance_per_spend_minor, CHANCES_PER_GRANT_MAX)


def chances_take(promotion: Promotion, card_id: int, count: int) -> CounterTake:
    """count chances for the card (negative: take them)."""
    return CounterTake(CounterScope.LOTTERY_CHANCES, promotion.promotion_id, subject=card_id, delta=count,
                       rule=promotion.rule("chances"))


def chance_takes(promotions, card_id: int, amount_minor: int, station_id: int, now_ms: int) -> list[CounterTake]:
    """The chances a sale of amount_minor earns in every running lottery
    (for server/payments.py to link to the PAY: given back with the sale)."""
    takes = []
    for promotion in promotions:
        if promotion.kind != PromotionKind.LOTTERY or not promotion.runs_at(now_ms) or not card_id:
            continue
        if promotion.stations and station_id not in promotion.stations:
            continue
        count = chances_for_spend(promotion.lottery, amount_minor)
        if count:
            takes.append(chances_take(promotion, card_id, count))
    return takes


def pick_prize(terms: LotteryTerms, rng: random.Random = SECURE_RANDOM) -> Prize:
    """A prize by the plan's probabilities: a number in 0 .. 10^6 - 1 falls
    into the band of one prize (bands in prize_id order, each
    probability_ppm wide), or beyond them all: the consolation prize."""
    number = rng.randrange(PPM_ONE)
    for prize in sorted(terms.prizes, key=lambda prize: prize.prize_id):
        if number < prize.probability_ppm:
            return prize
        number -= prize.probability_ppm
    return consolation(terms)


def consolation(terms: LotteryTerms) -> Prize:
    return next(prize for prize in terms.prizes if prize.prize_id == terms.consolation_prize_id)


def prize_take(promotion: Promotion, prize: Prize) -> CounterTake:
    return CounterTake(CounterScope.LOTTERY_PRIZE, promotion.promotion_id, subject=prize.prize_id, ceiling=prize.stock,
                       rule=f"{promotion.rule('prize')} {prize.prize_id}")


def draw_chain(promotion: Promotion, card_id: int, prize: Prize | None, once: CounterTake | None = None) -> list[CounterTake]:
    """The chain of one draw: the draw number's mark (if numbered; first, so
    that a retry is refused by it and by nothing else), a chance, and the
    prize (None: no prize)."""
    takes = [] if once is None else [once]
    takes.append(chances_take(promotion, card_id, -1))
    if prize is not None:
        takes.append(prize_take(promotion, prize))
    return takes


def once_take(scope: CounterScope, promotion: Promotion, card_id: int, number: int, value: int) -> CounterTake:
    """The mark of the caller's draw or grant `number` for this card: set
    to `value` (>= 1) by the first chain, refusing every later one."""
    assert scope in (CounterScope.LOTTERY_DRAW, CounterScope.LOTTERY_GRANT) and number > 0 and value > 0
    what = "draw number" if scope == CounterScope.LOTTERY_DRAW else "grant number"
    return CounterTake(scope, promotion.promotion_id, subject=card_id, period=number, delta=value, ceiling=value,
                       rule=promotion.rule(f"{what} {number}"))


def outcome_code(terms: LotteryTerms, prize: Prize | None, consolation: bool) -> int:
    """A draw's outcome as a counter value: 1 + 2 x (the prize's place in
    prize_id order, from 1; 0: no prize) + 1 if it was the consolation. A
    lottery's terms do not change once approved, so the place stays valid."""
    place = 0 if prize is None else 1 + sorted(p.prize_id for p in terms.prizes).index(prize.prize_id)
    return 1 + 2 * place + int(consolation)


def outcome_of(terms: LotteryTerms, code: int) -> tuple[Prize | None, bool]:
    """(prize or None, consolation) of an outcome_code."""
    assert code >= 1
    place, consolation = divmod(code - 1, 2)
    if place == 0:
        return None, bool(consolation)
    prizes = sorted(terms.prizes, key=lambda prize: prize.prize_id)
    return prizes[place - 1], bool(consolation)
