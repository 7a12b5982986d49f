"""Coupons: unguessable codes, when coupons are issued, and their counters.

Owns: the code format, which COUPON promotions issue on a top-up, a purchase
or a campaign, the issue counter (COUPON_ISSUED: per-issue count against the
total count) and the use counter (COUPON_USED, ceiling 1, linked to the Pay).
Used by: server/promotion_service.py (IssueCoupons, coupon lookups),
server/payments.py (coupons a top-up or purchase issues), pricing.py (the
use take).

Issuing takes the COUPON_ISSUED counter first; the coupons are written only
after the kernel approved it. A crash in between leaves the count taken and
no coupons: under-issuing, never over-issuing.
"""

import secrets

from core.counters import CounterScope, CounterTake
from core.promotions.model import Coupon, CouponTrigger, Promotion, PromotionKind

# Crockford's base32 without the letters people misread (I, L, O, U): 16
# characters carry 80 bits, drawn from the operating system's secure source.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 16
MS_PER_DAY = 86_400_000


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(code: str) -> str:
    """What a cashier types: upper case, dashes and spaces ignored."""
    return code.replace("-", "").replace(" ", "").upper()


def code_is_well_formed(code: str) -> bool:
    return len(code) == CODE_LENGTH and all(character in CODE_ALPHABET for character in code)


def issue_take(promotion: Promotion, count: int) -> CounterTake:
    """count coupons of the promotion's total_count (0: no total)."""
    return CounterTake(CounterScope.COUPON_ISSUED, promotion.promotion_id, delta=count, ceiling=promotion.coupon.total_count,
                       rule=promotion.rule("coupons issued"))


def use_take(coupon: Coupon) -> CounterTake:
    return CounterTake(CounterScope.COUPON_USED, coupon.coupon_id, ceiling=1, rule=f"coupon {coupon.coupon_id} used")


def issuing(promotions, trigger: CouponTrigger, amount_minor: int, station_id: int, now_ms: int, card_type: int = 0,
            tier: int = 0) -> list[Promotion]:
    """The COUPON promotions a top-up or purchase of amount_minor at
    station_id issues coupons of, in promotion id order: running, issued on
    this trigger, at this station, to this card type and tier, with the
    amount in the promotion's range."""
    found = []
    for promotion in promotions:
        if promotion.kind != PromotionKind.COUPON or not promotion.runs_at(now_ms):
            continue
        terms = promotion.coupon
        if terms.issue_on != trigger:
            continue
        if terms.issue_stations and station_id not in terms.issue_stations:
            continue
        if promotion.stations and station_id not in promotion.stations:
            continue
        if promotion.card_types and card_type not in promotion.card_types:
            continue
        if promotion.tiers and tier not in promotion.tiers:
            continue
        if amount_minor < promotion.amount_min_minor or (promotion.amount_max_minor and amount_minor > promotion.amount_max_minor):
            continue
        found.append(promotion)
    return sorted(found, key=lambda promotion: promotion.promotion_id)


def make_coupons(promotion: Promotion, first_coupon_id: int, count: int, card_id: int, now_ms: int, station_id: int = 0,
                 trigger: CouponTrigger = CouponTrigger.CAMPAIGN) -> list[Coupon]:
    """count coupons numbered from first_coupon_id, each with a fresh code;
    they expire valid_days after issue."""
    expires_ms = now_ms + promotion.coupon.valid_days * MS_PER_DAY
    return [
        Coupon(coupon_id=first_coupon_id + index, code=new_code(), promotion_id=promotion.promotion_id, card_id=card_id,
               issued_ms=now_ms, expires_ms=expires_ms, issued_station=station_id, trigger=trigger)
        for index in range(count)
    ]
