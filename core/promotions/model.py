"""The typed promotion: kinds, terms, targeting, life cycle.

Owns: what a promotion is (one msgspec record per promotion, with the terms
of its kind in one sub-record), the stages of its life cycle and the step
from one to the next with who took it and when, and the records that live
beside promotions (coupons, red packets, lottery draws).
Used by: every module of core.promotions, server/promotion_service.py.

Money is integer minor units, rates are integer per mille (200 = 20% off),
probabilities integer per million. Times are ms since the epoch (UTC).
A zero in a bound (amount_max_minor, budget_minor, stock, uses_per_card,
total_count) means "no bound".
"""

import enum

import msgspec

from core.errors import FailedPrecondition
from core.results import CardType, Tier

PERMILLE_ONE = 1000
PPM_ONE = 1_000_000
QUANTITY_ONE_MILLI = 1000


class PromotionKind(enum.IntEnum):
    # Chosen goods at a rate off or a fixed price per unit.
    GOODS = 1
    # A rate off the sale (or some categories), or an amount off per litre.
    DISCOUNT = 2
    # Coupons: issued on top-up, purchase or by campaign; used in Pay.
    COUPON = 3
    # Cash red packets split into shares, claimed one per customer.
    RED_PACKET = 4
    # A draw plan: prizes with probabilities and stock, chances per spend.
    LOTTERY = 5


class Funder(enum.IntEnum):
    """Who pays for what the promotion gives (itemised on the receipt)."""

    HEADQUARTERS = 1
    STATION = 2
    PARTNER = 3


def funder_name(funder: int) -> str:
    """"headquarters", "station" or "partner", for receipts and clearing."""
    return Funder(funder).name.lower() if funder in Funder._value2member_map_ else f"funder {funder}"


class Stage(enum.IntEnum):
    DRAFT = 1
    SUBMITTED = 2
    APPROVED = 3
    ACTIVE = 4
    ENDED = 5


# The one way forward through the life cycle; ENDED may be reached from any
# stage but itself (a draft abandoned, a promotion stopped early).
NEXT_STAGES = {
    Stage.DRAFT: (Stage.SUBMITTED, Stage.ENDED),
    Stage.SUBMITTED: (Stage.APPROVED, Stage.ENDED),
    Stage.APPROVED: (Stage.ACTIVE, Stage.ENDED),
    Stage.ACTIVE: (Stage.ENDED,),
    Stage.ENDED: (),
}
# Only these stages apply to sales, claims and draws.
RUNNING_STAGES = frozenset((Stage.APPROVED, Stage.ACTIVE))


class CouponTrigger(enum.IntEnum):
    """What issues a coupon of a COUPON promotion."""

    TOPUP = 1
    PURCHASE = 2
    # Issued by staff (IssueCoupons), to cards or as bearer coupons.
    CAMPAIGN = 3


class Split(enum.IntEnum):
    """How a red packet's total is cut into shares."""

    # "Double mean": each share is drawn between the minimum and twice the
    # mean of what is left, so every position has the same expected share.
    RANDOM = 1
    EQUAL = 2


class StageChange(msgspec.Struct, frozen=True):
    stage: Stage
    by: str
    at_ms: int


class GoodsTerms(msgspec.Struct, frozen=True):
    """Lines whose goods_code is listed get off_permille off, or cost
    fixed_price_minor per unit (per 1000 of quantity_milli); exactly one of
    the two is set. The promotion's stock counts units (pieces, litres),
    each line's quantity rounded up to whole units."""

    goods_codes: tuple[str, ...]
    off_permille: int = 0
    fixed_price_minor: int = 0


class DiscountTerms(msgspec.Struct, frozen=True):
    """off_permille off the covered lines, or off_per_litre_minor per litre
    (per 1000 of quantity_milli) of them; exactly one of the two is set.
    Covered lines: those of `categories` or `goods_codes` (all lines when
    both are empty). max_off_minor caps what one sale gets. The promotion's
    stock counts sales."""

    off_permille: int = 0
    off_per_litre_minor: int = 0
    categories: tuple[str, ...] = ()
    goods_codes: tuple[str, ...] = ()
    max_off_minor: int = 0


class CouponTerms(msgspec.Struct, frozen=True):
    """A coupon takes face_value_minor, or off_permille (capped at
    max_off_minor), off what is left to pay when its turn comes, if that is
    at least min_spend_minor. It is issued on `issue_on`, per_issue_count at
    a time, total_count in all (the promotion's amount range is the range
    of the top-up or purchase that issues it), at issue_stations; it is
    usable valid_days after issue at use_stations and at the partner
    merchants listed in partners."""

    face_value_minor: int = 0
    off_permille: int = 0
    max_off_minor: int = 0
    min_spend_minor: int = 0
    issue_on: CouponTrigger = CouponTrigger.CAMPAIGN
    per_issue_count: int = 1
    total_count: int = 0
    valid_days: int = 30
    issue_stations: tuple[int, ...] = ()
    use_stations: tuple[int, ...] = ()
    partners: tuple[int, ...] = ()


class PacketTerms(msgspec.Struct, frozen=True):
    """Red packets of this promotion: share_count shares each, split at
    creation, no share below min_share_minor; a card may claim if its spend
    today reaches claim_min_spend_minor. A packet expires packet_validity_s
    after creation (and at the promotion's end at the latest); then its
    unclaimed rest goes back to its issuer."""

    share_count: int
    split: Split = Split.RANDOM
    min_share_minor: int = 1
    claim_min_spend_minor: int = 0
    packet_validity_s: int = 86_400


class Prize(msgspec.Struct, frozen=True):
    """stock 0: unlimited. value_minor is what the prize is worth (for the
    report), not money the draw moves."""

    prize_id: int
    name: str
    probability_ppm: int
    stock: int = 0
    value_minor: int = 0


class LotteryTerms(msgspec.Struct, frozen=True):
    """A draw picks prize i with probability_ppm / 10^6, in prize_id order;
    what is left of 10^6 and a prize out of stock fall to the consolation
    prize (itself out of stock: no prize, the chance is spent). Chances: one
    per chance_per_spend_minor of a sale (0: none), or bought for
    chance_points_price points each at chance_price_minor of points as cash
    (0: not sold)."""

    prizes: tuple[Prize, ...]
    consolation_prize_id: int
    chance_per_spend_minor: int = 0
    chance_price_minor: int = 0


class Promotion(msgspec.Struct, frozen=True):
    """One promotion. Targeting (each empty tuple: everyone): stations,
    tiers (core.results.Tier), card_types (core.results.CardType); the
    amount range of the sale or top-up, amount_min_minor .. amount_max_minor.
    Stacking: see core/promotions/pricing.py."""

    promotion_id: int
    kind: PromotionKind
    name: str
    valid_from_ms: int
    valid_to_ms: int
    stations: tuple[int, ...] = ()
    tiers: tuple[Tier, ...] = ()
    card_types: tuple[CardType, ...] = ()
    amount_min_minor: int = 0
    amount_max_minor: int = 0
    budget_minor: int = 0
    stock: int = 0
    uses_per_card: int = 0
    funder: Funder = Funder.HEADQUARTERS
    # The station or partner that funds it (0 for headquarters).
    funder_id: int = 0
    # The organisation that owns it (core/domains.py): its subtree's users
    # see and change it, and it applies only at the stations below it.
    # 0: the whole network's (made by the command line or the open server).
    org_id: int = 0
    priority: int = 0
    exclusive_group: str = ""
    stackable: bool = True
    goods: GoodsTerms | None = None
    discount: DiscountTerms | None = None
    coupon: CouponTerms | None = None
    packet: PacketTerms | None = None
    lottery: LotteryTerms | None = None
    stage: Stage = Stage.DRAFT
    history: tuple[StageChange, ...] = ()

    def runs_at(self, now_ms: int) -> bool:
        return self.stage in RUNNING_STAGES and self.valid_from_ms <= now_ms < self.valid_to_ms

    def rule(self, what: str = "") -> str:
        """The rule string of this promotion's counter takes: a decline by
        one of them names it."""
        return f"promotion {self.promotion_id} {what}".rstrip()


class StepError(FailedPrecondition):
    """A life-cycle step that is not allowed from the current stage."""


def step(promotion: Promotion, stage: Stage, by: str, at_ms: int) -> Promotion:
    """The promotion moved to `stage` by `by`, recorded in its history.
    An approval needs another person than the submission (four eyes)."""
    if stage not in NEXT_STAGES[promotion.stage]:
        raise StepError(f"promotion {promotion.promotion_id} is {promotion.stage.name}: it cannot become {stage.name}")
    if not by:
        raise StepError("who takes the step must be named")
    if stage == Stage.APPROVED:
        submitted_by = [change.by for change in promotion.history if change.stage == Stage.SUBMITTED]
        if submitted_by and submitted_by[-1] == by:
            raise StepError(f"{by} submitted promotion {promotion.promotion_id}: someone else must approve it")
    return msgspec.structs.replace(promotion, stage=stage, history=(*promotion.history, StageChange(stage, by, at_ms)))


def terms_of(promotion: Promotion):
    return {
        PromotionKind.GOODS: promotion.goods,
        PromotionKind.DISCOUNT: promotion.discount,
        PromotionKind.COUPON: promotion.coupon,
        PromotionKind.RED_PACKET: promotion.packet,
        PromotionKind.LOTTERY: promotion.lottery,
    }[promotion.kind]


# ---------------------------------------------------------------- beside promotions


class Coupon(msgspec.Struct, frozen=True):
    """One issued coupon. card_id 0: a bearer coupon (whoever shows the
    code). Its single use is the COUPON_USED counter of coupon_id."""

    coupon_id: int
    code: str
    promotion_id: int
    card_id: int
    issued_ms: int
    expires_ms: int
    issued_station: int = 0
    trigger: CouponTrigger = CouponTrigger.CAMPAIGN


class PacketState(enum.IntEnum):
    # Shares written, funding transfer not yet approved.
    FUNDING = 1
    OPEN = 2
    # The funding transfer was declined: nobody can claim.
    FAILED = 3
    # Expired, the unclaimed rest returned to the issuer.
    RETURNED = 4


class Packet(msgspec.Struct, frozen=True):
    """One red packet: shares fixed at creation (in the kernel's
    packet_shares database), funded from the issuer's account into the
    PROMOTION account owned by packet_id."""

    packet_id: int
    promotion_id: int
    total_minor: int
    share_count: int
    issuer_kind: int
    issuer_owner: int
    created_ms: int
    expires_ms: int
    created_by: str
    state: PacketState = PacketState.FUNDING
    funding_txn_id: int = 0
    returned_minor: int = 0


class Draw(msgspec.Struct, frozen=True):
    """One lottery draw; prize_id 0: no prize (consolation out of stock)."""

    seq: int
    promotion_id: int
    card_id: int
    prize_id: int
    at_ms: int
    consolation: bool = False


class StackingPolicy(msgspec.Struct, frozen=True):
    """The configurable part of the stacking policy (pricing.py); one per
    headquarters domain, and the network's for domains that saved none."""

    version: int = 0
    coupons_per_sale_max: int = 1
