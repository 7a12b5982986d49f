"""Risk rules: velocity limits and the thresholds of flags, typed and validated.

Owns: the velocity limits (what they measure, over which window, the most
allowed), the counter takes they ask of the kernel, the flag thresholds,
their validation (a rule that cannot work is refused when saved, naming the
field) and their storage (the `risk_config` database, JSON with a version).
Used by: server/risk_service.py (admin RPCs), server/promotion_service.py
and server/payments.py (the takes linked to their operations), flags.py.

A velocity limit is a RISK_VELOCITY counter: owner the limit's id, subject
the card, period the number of the window (minutes, hours or days since
1970-01-01 in the network's local time), ceiling the limit. Linked to the
operation, the kernel counts and checks it in that operation's write
transaction: a request that would pass the limit is declined
COUNTER_LIMIT_REACHED naming the rule, and nothing of it is applied.

Domains (core/domains.py): the rules are one set per headquarters domain
(a sale takes the limits and flag rules of its station's domain), and the
network's (domain 0) for domains that saved none. Stored under b"rules"
(the network's) and b"rules/" + domain u32. Two domains may number their
limits alike: a domain's limit counts under its own counter owner
(`counter_owner`), so their counts never mix on a card used in both.
"""

import hashlib

import enum

import msgspec

from core import limits
from core.errors import InvalidInput
from core.counters import CounterScope, CounterTake
from core.store import put_versioned_json

RULES_KEY = b"rules"
RULES_DOMAIN_KEY = b"rules/"
NETWORK = 0
# Counter owners of domain limits have the top bit set: they never meet the
# network's, whose limit ids are at most LIMIT_ID_MAX (2^63 - 1).
DOMAIN_OWNER_BIT = 1 << 63
LIMITS_MAX = 64
NAME_LENGTH_MAX = limits.GOODS_NAME_LENGTH_MAX
LIMIT_ID_MAX = 2**63 - 1


class RiskRuleError(InvalidInput):
    """A rule that cannot be saved, naming the field."""


class Measure(enum.IntEnum):
    """What a velocity limit counts, per card."""

    # Minor units of sales.
    SALE_AMOUNT = 1
    # Sales.
    SALE_COUNT = 2
    # Points earned.
    POINTS_EARNED = 3
    # Gift redemptions (and points spent outside a sale).
    REDEMPTION_COUNT = 4


class Window(enum.IntEnum):
    MINUTE = 1
    HOUR = 2
    DAY = 3


WINDOW_MS = {Window.MINUTE: 60_000, Window.HOUR: 3_600_000, Window.DAY: 86_400_000}


class VelocityLimit(msgspec.Struct, frozen=True):
    """At most `ceiling` of `measure` per card per `window`."""

    limit_id: int
    name: str
    measure: Measure
    window: Window
    ceiling: int

    @property
    def rule(self) -> str:
        return f"risk {self.limit_id} {self.name}"

    def counter_owner(self, domain: int) -> int:
        """The RISK_VELOCITY counter's owner: the limit id for the network's
        limits (as stored before domains), a 63-bit digest of (domain, limit
        id) with the top bit set for a domain's."""
        if domain == NETWORK:
            return self.limit_id
        digest = hashlib.blake2b(domain.to_bytes(4, "big") + self.limit_id.to_bytes(8, "big"), digest_size=8).digest()
        return DOMAIN_OWNER_BIT | int.from_bytes(digest, "big") & (DOMAIN_OWNER_BIT - 1)


class FlagRules(msgspec.Struct, frozen=True):
    """small_sales_count sales of at most small_sale_max_minor by one card
    within small_sales_window_s raise a flag (small_sales_count 0: never);
    so does a sale in the quiet hours quiet_from_hour .. quiet_to_hour
    (local time; from > to wraps midnight; equal: no quiet hours). Off until
    set: each flag is a write, and only staff know what is unusual here."""

    small_sale_max_minor: int = 1_000
    small_sales_count: int = 0
    small_sales_window_s: int = 600
    quiet_from_hour: int = 0
    quiet_to_hour: int = 0

    @property
    def enabled(self) -> bool:
        return self.small_sales_count > 0 or self.quiet_from_hour != self.quiet_to_hour


class RiskRules(msgspec.Struct, frozen=True):
    version: int = 0
    limits: tuple[VelocityLimit, ...] = ()
    flags: FlagRules = FlagRules()


def period_of(window: Window, now_ms: int, utc_offset_minutes: int = 0) -> int:
    return (now_ms + utc_offset_minutes * 60_000) // WINDOW_MS[window]


def velocity_takes(rules: RiskRules, card_id: int, now_ms: int, *, sale_minor: int = 0, points_earned: int = 0,
                   redemptions: int = 0, utc_offset_minutes: int = 0, domain: int = NETWORK) -> list[CounterTake]:
    """The RISK_VELOCITY takes of one operation by card_id: a sale of
    sale_minor (counts one sale), points_earned, redemptions, under the
    rules of `domain`. A measure the operation does not touch takes
    nothing. No card, no takes."""
    if not card_id:
        return []
    deltas = {
        Measure.SALE_AMOUNT: sale_minor,
        Measure.SALE_COUNT: 1 if sale_minor > 0 else 0,
        Measure.POINTS_EARNED: points_earned,
        Measure.REDEMPTION_COUNT: redemptions,
    }
    takes = []
    for limit in rules.limits:
        delta = deltas[limit.measure]
        if delta > 0:
            takes.append(CounterTake(CounterScope.RISK_VELOCITY, limit.counter_owner(domain), subject=card_id,
                                     period=period_of(limit.window, now_ms, utc_offset_minutes), delta=delta,
                                     ceiling=limit.ceiling, rule=limit.rule))
    return takes


# ---------------------------------------------------------------- validation


def _range(value: int, field: str, low: int, high: int):
    if not low <= value <= high:
        raise RiskRuleError(field, f"must be within {low} .. {high}, got {value}")


# Velocity takes one operation may link (core/counters.py): every limit of
# the operation's measures takes, so they are bounded per operation, with
# room left in the chain for the sale's promotions.
SALE_MEASURES = (Measure.SALE_AMOUNT, Measure.SALE_COUNT, Measure.POINTS_EARNED)
LIMITS_PER_OPERATION_MAX = limits.COUNTER_TAKES_PER_SALE_MAX // 2


def validate(rules: RiskRules):
    if len(rules.limits) > LIMITS_MAX:
        raise RiskRuleError("limits", f"at most {LIMITS_MAX} limits, got {len(rules.limits)}")
    for measures, what in ((SALE_MEASURES, "sale"), ((Measure.REDEMPTION_COUNT,), "redemption")):
        count = sum(1 for limit in rules.limits if limit.measure in measures)
        if count > LIMITS_PER_OPERATION_MAX:
            raise RiskRuleError("limits", f"at most {LIMITS_PER_OPERATION_MAX} limits on {what} measures (each "
                                f"links a counter to the operation), got {count}")
    seen = set()
    for index, limit in enumerate(rules.limits):
        where = f"limits[{index}]"
        _range(limit.limit_id, f"{where}.limit_id", 1, LIMIT_ID_MAX)
        if limit.limit_id in seen:
            raise RiskRuleError(f"{where}.limit_id", f"{limit.limit_id} is used twice")
        seen.add(limit.limit_id)
        if not 1 <= len(limit.name) <= NAME_LENGTH_MAX:
            raise RiskRuleError(f"{where}.name", f"length must be within 1 .. {NAME_LENGTH_MAX}")
        if limit.measure not in Measure.__members__.values():
            raise RiskRuleError(f"{where}.measure", f"unknown measure {limit.measure}")
        if limit.window not in Window.__members__.values():
            raise RiskRuleError(f"{where}.window", f"unknown window {limit.window}")
        _range(limit.ceiling, f"{where}.ceiling", 1, limits.COUNTER_CEILING_MAX)
    flags = rules.flags
    _range(flags.small_sale_max_minor, "flags.small_sale_max_minor", 0, limits.AMOUNT_MINOR_MAX)
    if flags.small_sales_count != 0:
        _range(flags.small_sales_count, "flags.small_sales_count", 2, 10_000)
    _range(flags.small_sales_window_s, "flags.small_sales_window_s", 1, 86_400)
    _range(flags.quiet_from_hour, "flags.quiet_from_hour", 0, 23)
    _range(flags.quiet_to_hour, "flags.quiet_to_hour", 0, 23)


# ---------------------------------------------------------------- storage


def rules_key(domain: int) -> bytes:
    return RULES_KEY if domain == NETWORK else RULES_DOMAIN_KEY + domain.to_bytes(4, "big")


def load_rules(store, domain: int = NETWORK) -> RiskRules:
    """The rules a domain saved, or the network's (or the defaults) if none."""
    saved = load_all_rules(store)
    return saved.get(domain) or saved.get(NETWORK) or RiskRules()


def load_all_rules(store) -> dict[int, RiskRules]:
    """domain -> the rules it saved (NETWORK: the network's)."""
    found = {}
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.risk_config)
        if cursor.set_range(RULES_KEY):
            for key, raw in cursor.iternext():
                if not key.startswith(RULES_KEY):
                    break
                domain = NETWORK if key == RULES_KEY else int.from_bytes(key[len(RULES_DOMAIN_KEY):], "big")
                found[domain] = msgspec.json.decode(raw, type=RiskRules)
    return found


def save_rules(txn, store, rules: RiskRules, domain: int = NETWORK) -> RiskRules:
    """Validate and save a domain's rules in the caller's write transaction;
    the saved rules carry the next version number."""
    validate(rules)
    return put_versioned_json(txn, store.risk_config, rules_key(domain), rules)
