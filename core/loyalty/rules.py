"""The loyalty rules: what earns points, check-in and tasks, tiers, expiry, partners.

Owns: the typed rules (msgspec), their validation (a contradiction is
refused when saved, never discovered at payment time), and where they are
stored (the `loyalty_config` database, as JSON with a version).
Used by: core/loyalty/earning.py (points of a sale), core/loyalty/jobs.py,
server/loyalty_service.py (admin RPCs), server/requests.py (every Pay).

Multipliers are integers in thousandths (per mille): 1.5x is 1500. Money is
minor units, points are whole points. No floats.

Domains (core/domains.py): the rules are one set per headquarters domain,
stored under b"rules/" + domain u32, and the network's under b"rules" (what
a domain that saved none runs by, and all there was before domains). A sale
earns by its station's domain's rules; a card's jobs (tiers, extensions) and
partner exchanges run by its issuing organisation's domain's (`CardRules`).
"""

import msgspec

from core import limits
from core.errors import InvalidInput
from core.results import Tier
from core.domains import NETWORK, card_domain
from core.store import put_versioned_json

PERMILLE_ONE = 1000
MULTIPLIER_PERMILLE_MAX = 100_000
RULES_KEY = b"rules"
RULES_DOMAIN_KEY = b"rules/"


class RuleError(InvalidInput):
    """A rule that cannot be saved, naming the field."""


class ThresholdBonus(msgspec.Struct, frozen=True):
    """A sale above threshold_minor earns bonus_permille more (100 = +10%)."""

    threshold_minor: int
    bonus_permille: int


class Campaign(msgspec.Struct, frozen=True):
    """A time-boxed multiplier, by headquarters (station_id 0) or one station.

    It multiplies the base points of the lines in its categories (all lines
    when categories is empty). An exclusive campaign that applies is the
    only campaign that applies (the highest priority wins among exclusive
    ones, then the lowest id); non-exclusive campaigns add up.
    """

    campaign_id: int
    name: str
    valid_from_ms: int
    valid_to_ms: int
    multiplier_permille: int
    station_id: int = 0
    categories: tuple[str, ...] = ()
    exclusive: bool = False
    priority: int = 0


class EarningRules(msgspec.Struct, frozen=True):
    base_points_per_unit: int = limits.EARN_POINTS_PER_UNIT_DEFAULT
    threshold_bonus: ThresholdBonus | None = None
    category_permille: dict[str, int] = {}
    tier_permille: dict[int, int] = {}
    campaigns: tuple[Campaign, ...] = ()


class CheckinRules(msgspec.Struct, frozen=True):
    points: int = 5
    streak_days: int = 7
    streak_bonus: int = 50


class TaskRules(msgspec.Struct, frozen=True):
    """Points per task kind, and a cap on task points per customer per day."""

    points: dict[str, int] = msgspec.field(default_factory=lambda: {"survey": 20, "share": 10})
    daily_cap: int = 50


class TierRules(msgspec.Struct, frozen=True):
    """Thresholds of spend over the last rolling_days, lowest first: a card
    is in the highest tier whose threshold its spend reaches."""

    rolling_days: int = 365
    thresholds_minor: dict[int, int] = msgspec.field(
        default_factory=lambda: {int(Tier.SILVER): 500_000, int(Tier.GOLD): 2_000_000, int(Tier.BLACK): 10_000_000}
    )


class ExpiryRules(msgspec.Struct, frozen=True):
    lot_validity_days: int = limits.LOT_VALIDITY_DAYS_DEFAULT
    # A month whose spend reaches this extends every lot by extension_days.
    extension_spend_minor: int = 20_000
    extension_days: int = 90
    # On this date each year, lots earned before January 1st of the previous
    # year are cleared (the oldest year's lots).
    clearance_month: int = 12
    clearance_day: int = 31


class Partner(msgspec.Struct, frozen=True):
    """rate_numerator / rate_denominator of our points (or minor units, when
    into_cash) per partner point."""

    name: str
    rate_numerator: int
    rate_denominator: int
    into_cash: bool = False


class LoyaltyRules(msgspec.Struct, frozen=True):
    version: int = 0
    earning: EarningRules = EarningRules()
    checkin: CheckinRules = CheckinRules()
    tasks: TaskRules = TaskRules()
    tiers: TierRules = TierRules()
    expiry: ExpiryRules = ExpiryRules()
    partners: dict[int, Partner] = {}


# ---------------------------------------------------------------- validation


def _range(value: int, field: str, low: int, high: int):
    if not low <= value <= high:
        raise RuleError(field, f"must be within {low} .. {high}, got {value}")


def _multiplier(value: int, field: str):
    if value < 0:
        raise RuleError(field, f"a multiplier below zero is refused, got {value}")
    _range(value, field, 0, MULTIPLIER_PERMILLE_MAX)


def validate(rules: LoyaltyRules):
    """Raise RuleError for the first rule that breaks a limit or contradicts another."""
    earning = rules.earning
    _range(earning.base_points_per_unit, "earning.base_points_per_unit", 0, limits.EARN_POINTS_PER_UNIT_MAX)
    if earning.threshold_bonus is not None:
        _range(earning.threshold_bonus.threshold_minor, "earning.threshold_bonus.threshold_minor", 0, limits.AMOUNT_MINOR_MAX)
        _multiplier(earning.threshold_bonus.bonus_permille, "earning.threshold_bonus.bonus_permille")
    for category, permille in earning.category_permille.items():
        _multiplier(permille, f"earning.category_permille[{category}]")
    for tier, permille in earning.tier_permille.items():
        if tier not in Tier.__members__.values():
            raise RuleError(f"earning.tier_permille[{tier}]", "unknown tier")
        _multiplier(permille, f"earning.tier_permille[{tier}]")
    _validate_campaigns(earning.campaigns)
    _range(rules.checkin.points, "checkin.points", 0, limits.POINTS_MAX)
    _range(rules.checkin.streak_days, "checkin.streak_days", 0, limits.STREAK_DAYS_MAX)
    _range(rules.checkin.streak_bonus, "checkin.streak_bonus", 0, limits.POINTS_MAX)
    for task, points in rules.tasks.points.items():
        _range(points, f"tasks.points[{task}]", 1, limits.POINTS_MAX)
    _range(rules.tasks.daily_cap, "tasks.daily_cap", 0, limits.POINTS_MAX)
    _range(rules.tiers.rolling_days, "tiers.rolling_days", 1, 3660)
    previous = -1
    for tier in sorted(rules.tiers.thresholds_minor):
        if tier not in Tier.__members__.values() or tier == Tier.REGULAR:
            raise RuleError(f"tiers.thresholds_minor[{tier}]", "must name a tier above REGULAR")
        threshold = rules.tiers.thresholds_minor[tier]
        _range(threshold, f"tiers.thresholds_minor[{tier}]", 0, limits.BALANCE_ABS_MAX)
        if threshold <= previous:
            raise RuleError(f"tiers.thresholds_minor[{tier}]", "a higher tier needs a higher threshold")
        previous = threshold
    expiry = rules.expiry
    _range(expiry.lot_validity_days, "expiry.lot_validity_days", 1, limits.LOT_VALIDITY_DAYS_MAX)
    _range(expiry.extension_spend_minor, "expiry.extension_spend_minor", 0, limits.AMOUNT_MINOR_MAX)
    _range(expiry.extension_days, "expiry.extension_days", 1, limits.LOT_EXTENSION_DAYS_MAX)
    _range(expiry.clearance_month, "expiry.clearance_month", 1, 12)
    _range(expiry.clearance_day, "expiry.clearance_day", 1, 28 if expiry.clearance_month == 2 else 30 if expiry.clearance_month in (4, 6, 9, 11) else 31)
    for partner_id, partner in rules.partners.items():
        _range(partner_id, f"partners[{partner_id}]", 1, limits.PARTNER_ID_MAX)
        _range(partner.rate_numerator, f"partners[{partner_id}].rate_numerator", 1, limits.PARTNER_RATE_TERM_MAX)
        _range(partner.rate_denominator, f"partners[{partner_id}].rate_denominator", 1, limits.PARTNER_RATE_TERM_MAX)


def _validate_campaigns(campaigns):
    seen = set()
    for index, campaign in enumerate(campaigns):
        where = f"earning.campaigns[{index}]"
        if campaign.campaign_id in seen:
            raise RuleError(f"{where}.campaign_id", f"{campaign.campaign_id} is used twice")
        seen.add(campaign.campaign_id)
        if not 0 < len(campaign.name) <= limits.GOODS_NAME_LENGTH_MAX:
            raise RuleError(f"{where}.name", f"length must be within 1 .. {limits.GOODS_NAME_LENGTH_MAX}")
        if campaign.valid_from_ms >= campaign.valid_to_ms:
            raise RuleError(f"{where}.valid_to_ms", "must be after valid_from_ms")
        _multiplier(campaign.multiplier_permille, f"{where}.multiplier_permille")
        _range(campaign.station_id, f"{where}.station_id", 0, limits.STATION_ID_MAX)
    exclusive = [c for c in campaigns if c.exclusive]
    for i, first in enumerate(exclusive):
        for second in exclusive[i + 1 :]:
            same_place = first.station_id == second.station_id or 0 in (first.station_id, second.station_id)
            same_time = first.valid_from_ms < second.valid_to_ms and second.valid_from_ms < first.valid_to_ms
            if same_place and same_time and first.priority == second.priority:
                raise RuleError(
                    "earning.campaigns",
                    f"exclusive campaigns {first.campaign_id} and {second.campaign_id} overlap in time and place with "
                    "the same priority: which one applies would be undecided",
                )


# ---------------------------------------------------------------- storage


def rules_key(domain: int) -> bytes:
    return RULES_KEY if domain == NETWORK else RULES_DOMAIN_KEY + domain.to_bytes(4, "big")


def load_all_rules(store) -> dict[int, LoyaltyRules]:
    """domain -> the rules it saved (NETWORK: the network's)."""
    found = {}
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.loyalty_config)
        if cursor.set_range(RULES_KEY):
            for key, raw in cursor.iternext():
                if not key.startswith(RULES_KEY):
                    break
                domain = NETWORK if key == RULES_KEY else int.from_bytes(key[len(RULES_DOMAIN_KEY):], "big")
                found[domain] = msgspec.json.decode(raw, type=LoyaltyRules)
    return found


def rules_in(saved: dict[int, LoyaltyRules], domain: int) -> tuple[LoyaltyRules, bool]:
    """(the rules a domain runs by, whether they are the network's (or the
    defaults) because it saved none)."""
    own = saved.get(domain)
    if own is not None:
        return own, False
    return saved.get(NETWORK) or LoyaltyRules(), domain != NETWORK


def load_rules(store, domain: int = NETWORK) -> LoyaltyRules:
    """The rules a domain runs by: its own, else the network's, else the defaults."""
    return rules_in(load_all_rules(store), domain)[0]


def save_rules(txn, store, rules: LoyaltyRules, domain: int = NETWORK) -> LoyaltyRules:
    """Validate and save a domain's rules in the caller's write transaction;
    the saved rules carry the next version number."""
    validate(rules)
    return put_versioned_json(txn, store.loyalty_config, rules_key(domain), rules)


class CardRules:
    """The rules each card runs by: those of its issuing organisation's
    domain (admin_cards), or the network's for a card without an owner
    record. For the jobs, which touch many cards: one read per card."""

    def __init__(self, store, saved: dict[int, LoyaltyRules] | None = None):
        self.store = store
        self.saved = load_all_rules(store) if saved is None else saved

    @classmethod
    def fixed(cls, rules: LoyaltyRules) -> "CardRules":
        """Every card by the same rules (one domain, or tests)."""
        return cls(None, {NETWORK: rules})

    def for_card(self, card_id: int) -> LoyaltyRules:
        if self.store is None or len(self.saved) <= (NETWORK in self.saved):
            return rules_in(self.saved, NETWORK)[0]
        with self.store.env.begin() as txn:
            return rules_in(self.saved, card_domain(txn, self.store, card_id))[0]

    def every(self) -> list[LoyaltyRules]:
        """Each distinct set in force (the network's included)."""
        return [*self.saved.values(), rules_in(self.saved, NETWORK)[0]]
