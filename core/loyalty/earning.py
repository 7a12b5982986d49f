"""Points a sale earns, itemised rule by rule.

Owns: the earning calculation, in this fixed order, each item rounded down
to whole points once:
  1. base: the sale's amount x base_points_per_unit / 100 (per currency unit);
  2. category: each line's base x (its category multiplier - 1);
  3. threshold: (1 + 2) x bonus share, if the sale is above the threshold;
  4. tier: (1 + 2 + 3) x (the tier multiplier - 1);
  5. campaigns: each applicable campaign adds the base of its lines x
     (multiplier - 1); an applicable exclusive campaign shuts out the others.
The total is what the rules give the whole sale; the kernel then keeps the
share paid with money (points paid with points earn nothing), so the answer
shows a last item for that difference.
Used by: server/requests.py (Pay and Complete), the loyalty tests.
"""

import msgspec

from core.loyalty.rules import PERMILLE_ONE, EarningRules


class PointsItem(msgspec.Struct, frozen=True):
    rule: str
    description: str
    points: int


class PointsQuote(msgspec.Struct, frozen=True):
    items: tuple[PointsItem, ...]
    total: int


class SaleLine(msgspec.Struct, frozen=True):
    category: str
    amount_minor: int


def quote(rules: EarningRules, lines: list[SaleLine], amount_minor: int, tier: int, station_id: int, now_ms: int) -> PointsQuote:
    """Points the rules give a sale of `amount_minor` (lines: its basket; a
    sale without a basket is one line without a category)."""
    assert amount_minor >= 0
    if not lines:
        lines = [SaleLine(category="", amount_minor=amount_minor)]
    per_unit = rules.base_points_per_unit
    base = amount_minor * per_unit // 100
    items = [PointsItem("base", f"{per_unit} per currency unit", base)]
    category = category_points(rules, lines)
    if category:
        items.append(PointsItem("category", "goods category multipliers", category))
    running = base + category
    bonus = rules.threshold_bonus
    if bonus is not None and amount_minor > bonus.threshold_minor:
        extra = running * bonus.bonus_permille // PERMILLE_ONE
        items.append(PointsItem("threshold", f"+{percent(bonus.bonus_permille)} above {bonus.threshold_minor // 100}", extra))
        running += extra
    tier_permille = rules.tier_permille.get(tier, PERMILLE_ONE)
    if tier_permille != PERMILLE_ONE:
        extra = running * (tier_permille - PERMILLE_ONE) // PERMILLE_ONE
        items.append(PointsItem("tier", f"tier multiplier {times(tier_permille)}", extra))
    for campaign in applicable_campaigns(rules, lines, station_id, now_ms):
        covered = sum(line.amount_minor for line in lines if not campaign.categories or line.category in campaign.categories)
        extra = covered * per_unit * (campaign.multiplier_permille - PERMILLE_ONE) // (100 * PERMILLE_ONE)
        items.append(PointsItem(f"campaign:{campaign.campaign_id}", campaign.name, extra))
    total = max(0, sum(item.points for item in items))
    return PointsQuote(items=tuple(items), total=total)


def category_points(rules: EarningRules, lines: list[SaleLine]) -> int:
    """Item 2: what the lines' category multipliers add to their base."""
    # Most rules have no multiplier: skip the pass over the lines (a quote
    # is made for every sale).
    if not rules.category_permille:
        return 0
    per_unit = rules.base_points_per_unit
    extra = sum(line.amount_minor * per_unit * (rules.category_permille.get(line.category, PERMILLE_ONE) - PERMILLE_ONE) for line in lines)
    return extra // (100 * PERMILLE_ONE)


def percent(permille: int) -> str:
    """150 -> '15%', 125 -> '12.5%': integers only."""
    whole, tenths = divmod(permille, 10)
    return f"{whole}.{tenths}%" if tenths else f"{whole}%"


def times(permille: int) -> str:
    """1500 -> '1.5x', 1000 -> '1x'."""
    whole, fraction = divmod(permille, PERMILLE_ONE)
    return f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "x"


def applicable_campaigns(rules: EarningRules, lines, station_id: int, now_ms: int):
    """Campaigns running now at this station and covering some line."""
    if not rules.campaigns:  # the usual case; a quote is made for every sale
        return []
    running = [
        campaign
        for campaign in rules.campaigns
        if campaign.valid_from_ms <= now_ms < campaign.valid_to_ms
        and campaign.station_id in (0, station_id)
        and (not campaign.categories or any(line.category in campaign.categories for line in lines))
    ]
    exclusive = sorted((c for c in running if c.exclusive), key=lambda c: (-c.priority, c.campaign_id))
    if exclusive:
        return [exclusive[0]]
    return sorted(running, key=lambda c: c.campaign_id)
