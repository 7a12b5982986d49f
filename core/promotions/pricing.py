"""Pricing a basket: which promotions and coupons apply, for how much, and why not.

Owns: the stacking policy, the discount arithmetic, the counter takes of
each applied promotion, and a reason for every promotion that does not apply.
Used by: server/payments.py (every Pay: `price_basket`, then the takes are
linked to the PAY), server/promotion_service.py (PriceBasket, a dry run).

STACKING POLICY (the same input always prices the same way):
  1. Candidates: goods and discount promotions that are APPROVED or ACTIVE,
     inside their window, and target this station, tier, card type and a
     sale amount (before any discount) in their amount range; and the
     coupons shown, unexpired, of an approved or active promotion, issued
     to this card (or bearer), usable at this station or partner.
  2. Order: goods promotions, then discounts, then coupons; within each,
     highest priority first; ties by lowest promotion id (coupons then by
     lowest coupon id).
  3. Each candidate in turn takes off what is left of each covered line
     (never below zero), rounded down per line; a coupon's minimum spend is
     compared with what is left to pay when its turn comes.
  4. Exclusive group: only the first candidate of a group that takes
     something off applies. Not stackable: applies only if nothing applied
     before it, and then nothing after it applies.
  5. At most policy.coupons_per_sale_max coupons (1 unless configured) per
     sale; a candidate whose counters would pass takes_max is skipped.

Counter takes of an applied promotion (core/counters.py), in this order:
budget (always: delta = the discount, ceiling = budget_minor or none; it
records who funded what), stock (if stock: units of goods, or one sale),
uses per card (if uses_per_card), a coupon's single use. The kernel refuses
the whole chain if one take would pass its ceiling and names the take's
rule; the caller prices again with that rule's key in `refused`
(`refusal_key`), so the sale goes through without it.
"""

from collections.abc import Mapping, Sequence

import msgspec

from core import limits
from core.counters import CounterScope, CounterTake
from core.promotions.model import (
    PERMILLE_ONE,
    QUANTITY_ONE_MILLI,
    Coupon,
    Promotion,
    RUNNING_STAGES,
    PromotionKind,
    StackingPolicy,
)
from core.results import CardType, Tier

PHASES = {PromotionKind.GOODS: 0, PromotionKind.DISCOUNT: 1, PromotionKind.COUPON: 2}


class SaleLine(msgspec.Struct, frozen=True):
    goods_code: str
    category: str
    quantity_milli: int
    amount_minor: int


class Sale(msgspec.Struct, frozen=True):
    """What is priced. A sale without lines is one line of its amount.
    card_type 0 and card_id 0: no card (the sale is paid by a channel).
    partner_id: a partner merchant's id when the sale is at one (0: our own
    station)."""

    amount_minor: int
    station_id: int
    now_ms: int
    lines: tuple[SaleLine, ...] = ()
    card_id: int = 0
    card_type: int = 0
    tier: int = Tier.REGULAR
    partner_id: int = 0


class LineDiscount(msgspec.Struct, frozen=True):
    line: int
    discount_minor: int


class AppliedPromotion(msgspec.Struct, frozen=True):
    promotion_id: int
    name: str
    kind: PromotionKind
    discount_minor: int
    funder: int
    funder_id: int
    takes: tuple[CounterTake, ...]
    coupon_id: int = 0
    lines: tuple[LineDiscount, ...] = ()


class Skipped(msgspec.Struct, frozen=True):
    promotion_id: int
    reason: str
    coupon_id: int = 0


class Pricing(msgspec.Struct, frozen=True):
    """applied in the order they applied; amount_minor is what is left to pay."""

    applied: tuple[AppliedPromotion, ...]
    skipped: tuple[Skipped, ...]
    discount_minor: int
    amount_minor: int

    @property
    def takes(self) -> list[CounterTake]:
        return [take for applied in self.applied for take in applied.takes]


def refusal_key(rule: str) -> str:
    """The key to put in `refused` for a take's rule: "promotion 12" or
    "coupon 77" (a rule is that key and what the take counts)."""
    return " ".join(rule.split(" ", 2)[:2])


class Candidate(msgspec.Struct, frozen=True):
    promotion: Promotion
    coupon: Coupon | None = None

    @property
    def order(self):
        return (PHASES[self.promotion.kind], -self.promotion.priority, self.promotion.promotion_id,
                self.coupon.coupon_id if self.coupon else 0)

    @property
    def key(self) -> str:
        return f"coupon {self.coupon.coupon_id}" if self.coupon else f"promotion {self.promotion.promotion_id}"


def price_basket(
    promotions: Sequence[Promotion],
    sale: Sale,
    coupons: Sequence[Coupon] = (),
    coupon_promotions: Mapping[int, Promotion] | None = None,
    policy: StackingPolicy = StackingPolicy(),
    refused: Mapping[str, str] | None = None,
    takes_max: int = limits.COUNTER_TAKES_PER_SALE_MAX,
) -> Pricing:
    """Price `sale` under the stacking policy above.

    promotions: the snapshot's goods and discount promotions (others are
    ignored); coupons: those the customer shows, with coupon_promotions
    their promotions by id (a coupon whose promotion is missing is skipped);
    refused: refusal keys (see refusal_key) the kernel refused on an earlier
    try of this sale, with the reason to report; takes_max: how many counter
    takes the caller can link (its own risk takes count too).
    """
    refused = refused or {}
    skipped: list[Skipped] = []
    candidates = []
    for promotion in promotions:
        if promotion.kind in (PromotionKind.GOODS, PromotionKind.DISCOUNT):
            candidates.append(Candidate(promotion))
    seen_codes = set()
    for coupon in coupons:
        promotion = (coupon_promotions or {}).get(coupon.promotion_id)
        if promotion is None or promotion.kind != PromotionKind.COUPON:
            skipped.append(Skipped(coupon.promotion_id, "no coupon promotion of this id is running", coupon.coupon_id))
            continue
        if coupon.coupon_id in seen_codes:
            skipped.append(Skipped(coupon.promotion_id, "the coupon is shown twice", coupon.coupon_id))
            continue
        seen_codes.add(coupon.coupon_id)
        candidates.append(Candidate(promotion, coupon))
    candidates.sort(key=lambda candidate: candidate.order)

    lines = sale.lines or (SaleLine("", "", 0, sale.amount_minor),)
    remaining = [line.amount_minor for line in lines]
    applied: list[AppliedPromotion] = []
    groups: dict[str, int] = {}
    alone = 0
    coupons_used = 0
    takes_used = 0
    for candidate in candidates:
        promotion, coupon = candidate.promotion, candidate.coupon
        if coupon is None:
            reason = refused.get(candidate.key) or _not_targeted(promotion, sale)
        else:
            reason = refused.get(candidate.key) or _coupon_refusal(coupon, promotion, sale)
        if not reason and alone:
            reason = f"promotion {alone} applies alone (not stackable)"
        if not reason and promotion.exclusive_group in groups:
            reason = f"exclusive group {promotion.exclusive_group!r}: promotion {groups[promotion.exclusive_group]} applies"
        if not reason and not promotion.stackable and applied:
            reason = f"not stackable: promotion {applied[0].promotion_id} already applies"
        if not reason and coupon and coupons_used >= policy.coupons_per_sale_max:
            reason = f"at most {policy.coupons_per_sale_max} coupon(s) per sale"
        if reason:
            skipped.append(Skipped(promotion.promotion_id, reason, coupon.coupon_id if coupon else 0))
            continue
        line_discounts, units, reason = _discounts(promotion, coupon, lines, remaining)
        if not reason:
            takes = _takes(promotion, coupon, sale, sum(line_discounts), units)
            if takes_used + len(takes) > takes_max:
                reason = f"its {len(takes)} counters would pass the {takes_max} one sale may link"
        if reason:
            skipped.append(Skipped(promotion.promotion_id, reason, coupon.coupon_id if coupon else 0))
            continue
        for index, discount in enumerate(line_discounts):
            remaining[index] -= discount
        takes_used += len(takes)
        applied.append(AppliedPromotion(
            promotion_id=promotion.promotion_id,
            name=promotion.name,
            kind=promotion.kind,
            discount_minor=sum(line_discounts),
            funder=promotion.funder,
            funder_id=promotion.funder_id,
            takes=takes,
            coupon_id=coupon.coupon_id if coupon else 0,
            lines=tuple(LineDiscount(index, discount) for index, discount in enumerate(line_discounts) if discount),
        ))
        if promotion.exclusive_group:
            groups[promotion.exclusive_group] = promotion.promotion_id
        if not promotion.stackable:
            alone = promotion.promotion_id
        if coupon:
            coupons_used += 1
    discount = sum(item.discount_minor for item in applied)
    assert 0 <= discount <= sale.amount_minor
    return Pricing(applied=tuple(applied), skipped=tuple(skipped), discount_minor=discount, amount_minor=sale.amount_minor - discount)


# ---------------------------------------------------------------- targeting


def _not_running(promotion: Promotion, now_ms: int) -> str:
    if promotion.stage not in RUNNING_STAGES:
        return f"{promotion.stage.name}: only approved or active promotions apply"
    if now_ms < promotion.valid_from_ms:
        return f"starts at {promotion.valid_from_ms}"
    if now_ms >= promotion.valid_to_ms:
        return f"ended at {promotion.valid_to_ms}"
    return ""


def _not_targeted(promotion: Promotion, sale: Sale) -> str:
    """Why the promotion does not target this sale ("" if it does)."""
    reason = _not_running(promotion, sale.now_ms)
    if reason:
        return reason
    if promotion.stations and sale.station_id not in promotion.stations:
        return f"does not run at station {sale.station_id}"
    if promotion.card_types:
        if not sale.card_type:
            return "for cards only"
        if sale.card_type not in promotion.card_types:
            return f"not for {CardType(sale.card_type).name} cards"
    if promotion.tiers and sale.tier not in promotion.tiers:
        return f"not for tier {Tier(sale.tier).name}"
    if sale.amount_minor < promotion.amount_min_minor:
        return f"the sale's {sale.amount_minor} is below its minimum {promotion.amount_min_minor}"
    if promotion.amount_max_minor and sale.amount_minor > promotion.amount_max_minor:
        return f"the sale's {sale.amount_minor} is above its maximum {promotion.amount_max_minor}"
    if promotion.uses_per_card and not sale.card_id:
        return "limited uses per customer: needs a card"
    return ""


def _coupon_refusal(coupon: Coupon, promotion: Promotion, sale: Sale) -> str:
    """Why the coupon cannot be used on this sale ("" if it can). A coupon
    stays usable until its own expiry while its promotion is approved or
    active, even after the promotion's window (which is for issuing); the
    promotion's amount range is that of the issuing sale, not checked here."""
    terms = promotion.coupon
    if promotion.stage not in RUNNING_STAGES:
        return f"{promotion.stage.name}: only coupons of approved or active promotions apply"
    if sale.now_ms >= coupon.expires_ms:
        return f"the coupon expired at {coupon.expires_ms}"
    if coupon.card_id and coupon.card_id != sale.card_id:
        return "the coupon was issued to another card"
    if sale.partner_id:
        if sale.partner_id not in terms.partners:
            return f"not usable at partner {sale.partner_id}"
    elif terms.use_stations and sale.station_id not in terms.use_stations:
        return f"not usable at station {sale.station_id}"
    if promotion.uses_per_card and not sale.card_id:
        return "limited uses per customer: needs a card"
    return ""


# ---------------------------------------------------------------- arithmetic


def _units(quantity_milli: int) -> int:
    """Whole units of a line (pieces, litres), rounded up, at least one."""
    return max(1, -(-quantity_milli // QUANTITY_ONE_MILLI))


def _discounts(promotion: Promotion, coupon: Coupon | None, lines, remaining) -> tuple[list[int], int, str]:
    """(discount per line, units for a goods stock, reason it takes nothing)."""
    discounts = [0] * len(lines)
    units = 1
    if promotion.kind == PromotionKind.GOODS:
        goods = promotion.goods
        units = 0
        for index, line in enumerate(lines):
            if line.goods_code not in goods.goods_codes:
                continue
            units += _units(line.quantity_milli)
            if goods.off_permille:
                discounts[index] = remaining[index] * goods.off_permille // PERMILLE_ONE
            else:
                price = -(-goods.fixed_price_minor * line.quantity_milli // QUANTITY_ONE_MILLI)
                discounts[index] = max(0, remaining[index] - price)
        if not units:
            return discounts, 0, "no line of its goods"
    elif promotion.kind == PromotionKind.DISCOUNT:
        terms = promotion.discount
        covered = False
        for index, line in enumerate(lines):
            covers_all = not terms.categories and not terms.goods_codes
            if not covers_all and line.category not in terms.categories and line.goods_code not in terms.goods_codes:
                continue
            covered = True
            if terms.off_permille:
                discounts[index] = remaining[index] * terms.off_permille // PERMILLE_ONE
            else:
                discounts[index] = min(remaining[index], line.quantity_milli * terms.off_per_litre_minor // QUANTITY_ONE_MILLI)
        if not covered:
            return discounts, 0, "no line of its categories or goods"
        _cap(discounts, terms.max_off_minor)
    else:
        terms = promotion.coupon
        left = sum(remaining)
        if left < terms.min_spend_minor:
            return discounts, 0, f"needs a spend of {terms.min_spend_minor}; {left} is left to pay at its turn"
        if terms.face_value_minor:
            _spread(discounts, remaining, min(terms.face_value_minor, left))
        else:
            for index in range(len(lines)):
                discounts[index] = remaining[index] * terms.off_permille // PERMILLE_ONE
            _cap(discounts, terms.max_off_minor)
    if not any(discounts):
        return discounts, units, "takes nothing off what is left"
    return discounts, units, ""


def _cap(discounts: list[int], cap_minor: int):
    """Keep the first discounts in line order up to cap_minor in all."""
    if not cap_minor or sum(discounts) <= cap_minor:
        return
    left = cap_minor
    for index, discount in enumerate(discounts):
        discounts[index] = min(discount, left)
        left -= discounts[index]


def _spread(discounts: list[int], remaining: list[int], amount_minor: int):
    """An amount off the sale, taken from the lines in order."""
    for index, left in enumerate(remaining):
        discounts[index] = min(left, amount_minor)
        amount_minor -= discounts[index]


def _takes(promotion: Promotion, coupon: Coupon | None, sale: Sale, discount_minor: int, units: int) -> tuple[CounterTake, ...]:
    owner = promotion.promotion_id
    takes = [CounterTake(CounterScope.PROMOTION_BUDGET, owner, delta=discount_minor, ceiling=promotion.budget_minor,
                         rule=promotion.rule("budget"))]
    if promotion.stock:
        takes.append(CounterTake(CounterScope.PROMOTION_STOCK, owner, delta=units, ceiling=promotion.stock, rule=promotion.rule("stock")))
    if promotion.uses_per_card:
        takes.append(CounterTake(CounterScope.PROMOTION_USES, owner, subject=sale.card_id, ceiling=promotion.uses_per_card,
                                 rule=promotion.rule("uses per card")))
    if coupon is not None:
        takes.append(CounterTake(CounterScope.COUPON_USED, coupon.coupon_id, ceiling=1, rule=f"coupon {coupon.coupon_id} used"))
    return tuple(takes)
