"""Earning rules: a table of sales and the exact points each rule gives;
rules that contradict each other are refused when saved."""

import pytest

from core.writes import write_now
from core.loyalty.earning import SaleLine, quote
from core.loyalty.rules import Campaign, EarningRules, LoyaltyRules, RuleError, ThresholdBonus, load_rules, save_rules, validate
from core.results import Tier
from core.store import open_store

DAY_MS = 86_400_000
NOW_MS = 20_000 * DAY_MS
STATION = 3

RULES = EarningRules(
    base_points_per_unit=1,
    threshold_bonus=ThresholdBonus(threshold_minor=10_000, bonus_permille=100),
    category_permille={"shop": 1_500, "lube": 0},
    tier_permille={Tier.SILVER: 1_100, Tier.GOLD: 1_300},
    campaigns=(
        Campaign(1, "double fuel", NOW_MS - DAY_MS, NOW_MS + DAY_MS, 2_000, categories=("fuel",)),
        Campaign(2, "station 3 week", NOW_MS - DAY_MS, NOW_MS + DAY_MS, 1_200, station_id=STATION),
        Campaign(3, "expired", NOW_MS - 9 * DAY_MS, NOW_MS - DAY_MS, 5_000),
    ),
)
NO_CAMPAIGNS = EarningRules(
    base_points_per_unit=1,
    threshold_bonus=RULES.threshold_bonus,
    category_permille=RULES.category_permille,
    tier_permille=RULES.tier_permille,
)

# (rules, lines (category, amount), amount, tier, station, expected items {rule: points}, total)
CASES = [
    # 1 point per currency unit, rounded down: 99.99 earns 99.
    (NO_CAMPAIGNS, [], 9_999, Tier.REGULAR, 1, {"base": 99}, 99),
    # At the threshold no bonus; one cent above it, +10%.
    (NO_CAMPAIGNS, [], 10_000, Tier.REGULAR, 1, {"base": 100}, 100),
    (NO_CAMPAIGNS, [], 10_001, Tier.REGULAR, 1, {"base": 100, "threshold": 10}, 110),
    # Category multiplier 1.5x on the shop line only; 0x on lubricants.
    (NO_CAMPAIGNS, [("fuel", 4_000), ("shop", 2_000)], 6_000, Tier.REGULAR, 1, {"base": 60, "category": 10}, 70),
    (NO_CAMPAIGNS, [("lube", 5_000)], 5_000, Tier.REGULAR, 1, {"base": 50, "category": -50}, 0),
    # Tier multipliers apply after category and threshold.
    (NO_CAMPAIGNS, [], 5_000, Tier.SILVER, 1, {"base": 50, "tier": 5}, 55),
    (NO_CAMPAIGNS, [("shop", 20_000)], 20_000, Tier.GOLD, 1, {"base": 200, "category": 100, "threshold": 30, "tier": 99}, 429),
    # Campaigns: double fuel everywhere (HQ); +20% at station 3; expired one ignored.
    (RULES, [("fuel", 5_000)], 5_000, Tier.REGULAR, 1, {"base": 50, "campaign:1": 50}, 100),
    (RULES, [("fuel", 5_000)], 5_000, Tier.REGULAR, STATION, {"base": 50, "campaign:1": 50, "campaign:2": 10}, 110),
    (RULES, [("shop", 5_000)], 5_000, Tier.REGULAR, 1, {"base": 50, "category": 25}, 75),
]


@pytest.mark.parametrize("rules, lines, amount, tier, station, items, total", CASES)
def test_points_of_a_sale(rules, lines, amount, tier, station, items, total):
    result = quote(rules, [SaleLine(c, a) for c, a in lines], amount, tier, station, NOW_MS)
    assert {item.rule: item.points for item in result.items if item.points or item.rule == "base"} == items
    assert result.total == total


def test_an_exclusive_campaign_shuts_out_the_others():
    exclusive = Campaign(9, "members' day", NOW_MS - DAY_MS, NOW_MS + DAY_MS, 3_000, exclusive=True)
    rules = EarningRules(campaigns=(*RULES.campaigns, exclusive))
    result = quote(rules, [SaleLine("fuel", 1_000)], 1_000, Tier.REGULAR, STATION, NOW_MS)
    assert [item.rule for item in result.items] == ["base", "campaign:9"]
    assert result.total == 10 + 20


@pytest.mark.parametrize(
    "rules, field",
    [
        (EarningRules(category_permille={"shop": -1}), "earning.category_permille[shop]: a multiplier below zero is refused"),
        (EarningRules(tier_permille={Tier.GOLD: -500}), "earning.tier_permille[2]: a multiplier below zero is refused"),
        (
            EarningRules(
                campaigns=(
                    Campaign(1, "a", 0, 10 * DAY_MS, 2_000, exclusive=True),
                    Campaign(2, "b", 5 * DAY_MS, 20 * DAY_MS, 3_000, station_id=4, exclusive=True),
                )
            ),
            "exclusive campaigns 1 and 2 overlap in time and place",
        ),
        (EarningRules(campaigns=(Campaign(1, "a", 10, 10, 2_000),)), "earning.campaigns[0].valid_to_ms: must be after valid_from_ms"),
        (EarningRules(campaigns=(Campaign(1, "a", 0, 9, 2_000), Campaign(1, "b", 0, 9, 2_000))), "earning.campaigns[1].campaign_id: 1 is used twice"),
    ],
)
def test_contradicting_rules_are_refused_when_saved(tmp_path, rules, field):
    store = open_store(str(tmp_path / "data"), 2**26)
    with pytest.raises(RuleError) as error:
        write_now(store, save_rules, LoyaltyRules(earning=rules))
    assert field in str(error.value)
    assert load_rules(store).version == 0, "nothing is saved"


def test_exclusive_campaigns_in_other_places_or_priorities_may_overlap():
    validate(
        LoyaltyRules(
            earning=EarningRules(
                campaigns=(
                    Campaign(1, "a", 0, 10 * DAY_MS, 2_000, station_id=1, exclusive=True),
                    Campaign(2, "b", 0, 10 * DAY_MS, 2_000, station_id=2, exclusive=True),
                    Campaign(3, "c", 0, 10 * DAY_MS, 2_000, station_id=0, exclusive=True, priority=5),
                )
            )
        )
    )


def test_saved_rules_get_the_next_version(tmp_path):
    store = open_store(str(tmp_path / "data"), 2**26)
    first = write_now(store, save_rules, LoyaltyRules(earning=NO_CAMPAIGNS))
    second = write_now(store, save_rules, LoyaltyRules(earning=RULES))
    assert (first.version, second.version) == (1, 2)
    assert load_rules(store) == second
