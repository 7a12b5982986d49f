"""Risk (core/risk/): velocity takes, rule validation, blacklist, flags."""

import pytest

from core.writes import write_now
from core.counters import CounterScope, CounterTake
from core.risk import blacklist, flags
from core.risk.rules import (
    FlagRules,
    Measure,
    RiskRuleError,
    RiskRules,
    VelocityLimit,
    Window,
    load_rules,
    save_rules,
    validate,
    velocity_takes,
)
from core.store import open_store

MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
# 2026-03-01 10:15:30 UTC: day 20513, hour 492322, minute 29539335.
NOW = 20_513 * DAY_MS + 10 * HOUR_MS + 15 * MINUTE_MS + 30_000
CARD = 6200000000000002
RULES = RiskRules(limits=(
    VelocityLimit(1, "amount per card per day", Measure.SALE_AMOUNT, Window.DAY, 500_000),
    VelocityLimit(2, "sales per card per day", Measure.SALE_COUNT, Window.DAY, 20),
    VelocityLimit(3, "points per customer per minute", Measure.POINTS_EARNED, Window.MINUTE, 100),
    VelocityLimit(4, "redemptions per hour", Measure.REDEMPTION_COUNT, Window.HOUR, 5),
))


@pytest.fixture
def store(tmp_path):
    opened = open_store(str(tmp_path / "data"), 2**28)
    yield opened
    opened.close()


def test_a_sale_takes_amount_count_and_points_each_in_its_window():
    takes = velocity_takes(RULES, CARD, NOW, sale_minor=12_345, points_earned=123)
    assert takes == [
        CounterTake(CounterScope.RISK_VELOCITY, 1, subject=CARD, period=20_513, delta=12_345, ceiling=500_000, rule="risk 1 amount per card per day"),
        CounterTake(CounterScope.RISK_VELOCITY, 2, subject=CARD, period=20_513, delta=1, ceiling=20, rule="risk 2 sales per card per day"),
        CounterTake(CounterScope.RISK_VELOCITY, 3, subject=CARD, period=29_539_335, delta=123, ceiling=100,
                    rule="risk 3 points per customer per minute"),
    ]


def test_a_redemption_takes_its_hour_and_the_local_day_follows_the_offset():
    assert velocity_takes(RULES, CARD, NOW, redemptions=1) == [
        CounterTake(CounterScope.RISK_VELOCITY, 4, subject=CARD, period=492_322, delta=1, ceiling=5, rule="risk 4 redemptions per hour")]
    # 10:15 UTC is 00:15 the next day at UTC+14.
    assert velocity_takes(RULES, CARD, NOW, sale_minor=1, utc_offset_minutes=14 * 60)[0].period == 20_514
    assert velocity_takes(RULES, 0, NOW, sale_minor=1) == [], "no card, nothing to count"
    assert velocity_takes(RiskRules(), CARD, NOW, sale_minor=1) == []


@pytest.mark.parametrize("rules, field", [
    (RiskRules(limits=(VelocityLimit(1, "a", Measure.SALE_COUNT, Window.DAY, 0),)), "limits[0].ceiling"),
    (RiskRules(limits=(VelocityLimit(1, "a", Measure.SALE_COUNT, Window.DAY, 5), VelocityLimit(1, "b", Measure.SALE_COUNT, Window.DAY, 5))),
     "limits[1].limit_id"),
    (RiskRules(limits=(VelocityLimit(1, "", Measure.SALE_COUNT, Window.DAY, 5),)), "limits[0].name"),
    (RiskRules(limits=(VelocityLimit(1, "a", 9, Window.DAY, 5),)), "limits[0].measure"),
    (RiskRules(limits=(VelocityLimit(1, "a", Measure.SALE_COUNT, 0, 5),)), "limits[0].window"),
    (RiskRules(flags=FlagRules(quiet_from_hour=24)), "flags.quiet_from_hour"),
    (RiskRules(flags=FlagRules(small_sales_count=1)), "flags.small_sales_count"),
])
def test_rules_that_cannot_work_are_refused_naming_the_field(rules, field):
    with pytest.raises(RiskRuleError) as error:
        validate(rules)
    assert error.value.field == field


def test_rules_are_saved_with_a_version(store):
    assert load_rules(store) == RiskRules()
    assert write_now(store, save_rules, RULES).version == 1
    assert write_now(store, save_rules, RULES).version == 2
    assert load_rules(store).limits == RULES.limits


def test_blacklist_permanent_and_frozen_until_a_date(store):
    write_now(store, blacklist.add, blacklist.BlacklistEntry(CARD, "chargeback fraud", "risk-desk", NOW))
    write_now(store, blacklist.add, blacklist.BlacklistEntry(CARD + 1, "disputed refunds", "risk-desk", NOW, until_ms=NOW + 90 * DAY_MS))
    permanent = blacklist.blocking_entry(store, CARD, NOW + 10_000 * DAY_MS)
    assert permanent.rule == "risk blacklist: blacklisted: chargeback fraud"
    frozen = blacklist.blocking_entry(store, CARD + 1, NOW + 90 * DAY_MS - 1)
    assert frozen.rule == f"risk blacklist: frozen until {NOW + 90 * DAY_MS}: disputed refunds"
    assert blacklist.blocking_entry(store, CARD + 1, NOW + 90 * DAY_MS) is None, "the freeze ends on its date"
    assert blacklist.blocking_entry(store, CARD + 2, NOW) is None
    assert [entry.card_id for entry in blacklist.entries(store)] == [CARD, CARD + 1]
    assert write_now(store, blacklist.remove, CARD) is True and write_now(store, blacklist.remove, CARD) is False
    assert blacklist.blocking_entry(store, CARD, NOW) is None


@pytest.mark.parametrize("entry, field", [
    (blacklist.BlacklistEntry(0, "x", "me", NOW), "card_id"),
    (blacklist.BlacklistEntry(CARD, "", "me", NOW), "reason"),
    (blacklist.BlacklistEntry(CARD, "x", "", NOW), "by"),
    (blacklist.BlacklistEntry(CARD, "x", "me", NOW, until_ms=NOW), "until_ms"),
])
def test_a_bad_blacklist_entry_is_refused_naming_the_field(store, entry, field):
    with pytest.raises(blacklist.BlacklistError) as error:
        write_now(store, blacklist.add, entry)
    assert error.value.field == field


def test_many_small_sales_in_a_short_time_raise_one_flag(store):
    watch = flags.FlagWatch()
    rules = FlagRules(small_sale_max_minor=1_000, small_sales_count=3, small_sales_window_s=60, quiet_from_hour=0, quiet_to_hour=0)
    at = [NOW, NOW + 10_000, NOW + 70_001, NOW + 75_000, NOW + 80_000]
    raised = [watch.observe(rules, CARD, 1, 900, t) for t in at]
    # The first falls out of the window before the third; the 3rd, 4th, 5th flag.
    assert [len(r) for r in raised] == [0, 0, 0, 0, 1]
    assert raised[4][0].detail == "3 sales of at most 1000 within 60 s"
    assert watch.observe(rules, CARD, 1, 1_001, NOW + 81_000) == [], "not a small sale"
    saved = write_now(store, flags.record, raised[4] + watch.observe(rules, CARD + 1, 2, 5, NOW))
    assert [flag.seq for flag in saved] == [1]
    assert [(f.seq, f.kind, f.card_id) for f in flags.list_flags(store)] == [(1, flags.FlagKind.SMALL_SALES, CARD)]


def test_a_sale_in_the_quiet_hours_is_flagged_not_declined(store):
    rules = FlagRules(quiet_from_hour=22, quiet_to_hour=5)
    watch = flags.FlagWatch(utc_offset_minutes=8 * 60)
    # 10:15 UTC is 18:15 at UTC+8; 18:15 UTC is 02:15 there.
    assert watch.observe(rules, CARD, 1, 50_000, NOW) == []
    (flag,) = watch.observe(rules, CARD, 1, 50_000, NOW + 8 * HOUR_MS)
    assert (flag.kind, flag.detail) == (flags.FlagKind.UNUSUAL_HOUR, "a sale at 02h, within the quiet hours 22h .. 05h")
    assert [flags.in_quiet_hours(rules, hour) for hour in (21, 22, 23, 0, 4, 5)] == [False, True, True, True, True, False]
    saved = write_now(store, flags.record, [flag, flag])
    assert [f.seq for f in saved] == [1, 2]
    assert [f.seq for f in flags.list_flags(store, after_seq=1)] == [2]


def test_more_velocity_limits_on_one_operation_than_its_chain_can_link_are_refused():
    from core.risk.rules import LIMITS_PER_OPERATION_MAX

    too_many = tuple(VelocityLimit(limit_id=index + 1, name=f"sales {index}", measure=Measure.SALE_COUNT, window=Window.DAY, ceiling=10)
                     for index in range(LIMITS_PER_OPERATION_MAX + 1))
    with pytest.raises(RiskRuleError) as error:
        validate(RiskRules(limits=too_many))
    assert error.value.field == "limits" and f"at most {LIMITS_PER_OPERATION_MAX} limits on sale measures" in str(error.value)
    validate(RiskRules(limits=too_many[:-1]))
