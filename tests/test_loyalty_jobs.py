"""The scheduled loyalty jobs: expiry, extension, clearance, tiers, reminders.
Each is run twice to show it is idempotent; the audit runs after each test."""

import datetime
import json
import subprocess
import sys

import pytest

from core.audit import audit
from core.loyalty import jobs
from core.loyalty.rules import LoyaltyRules
from core.records import Op
from core.results import AccountKind, OpKind, PlanFlag, ResultCode as R, Tier
from tests.conftest import open_ledger
from tests.ledger_driver import DAY_MS, Driver
from tests.support import REPO

CARD = 91
SPENDER = 92


@pytest.fixture
def books(tmp_path):
    driver = Driver(open_ledger(str(tmp_path / "data"), "cython"))
    driver.open_card(CARD, personal=1_000_000)
    driver.open_card(SPENDER, personal=10_000_000)
    yield driver
    report = audit(driver.ledger.store)
    assert report.ok, report.problems
    driver.ledger.store.close()


def test_expiry_job_expires_due_lots_once_and_never_early(books):
    books.topup(CARD, AccountKind.POINTS, 300, lot_validity_days=1)
    books.topup(CARD, AccountKind.POINTS, 200, lot_validity_days=10)
    today = books.day
    with pytest.raises(ValueError, match="must not be after today"):
        jobs.expire_points(books.ledger, today + 1, today)
    assert jobs.expire_points(books.ledger, today, today) == {"cards": 0, "points_expired": 0}
    tomorrow = today + 1
    assert jobs.expire_points(books.ledger, tomorrow, tomorrow) == {"cards": 1, "points_expired": 300}
    assert jobs.expire_points(books.ledger, tomorrow, tomorrow) == {"cards": 0, "points_expired": 0}
    assert books.balances(CARD)[2] == 200


def test_a_month_of_qualifying_spend_extends_every_lot_once(books):
    date = jobs.date_of(books.day)
    books.topup(SPENDER, AccountKind.POINTS, 100)
    books.topup(CARD, AccountKind.POINTS, 100)
    books.pay(SPENDER, 25_000, plan_flags=PlanFlag.USE_PERSONAL)  # above the 200.00 threshold
    books.pay(CARD, 19_999, plan_flags=PlanFlag.USE_PERSONAL)  # below it
    rules = LoyaltyRules()
    before = {card: [lot.expires_day for lot in lots(books, card)] for card in (CARD, SPENDER)}
    assert jobs.extend_lots(books.ledger, rules, date.year, date.month)["cards"] == 1
    assert jobs.extend_lots(books.ledger, rules, date.year, date.month)["lots_moved"] == 0
    assert [lot.expires_day for lot in lots(books, SPENDER)] == [day + 90 for day in before[SPENDER]]
    assert [lot.expires_day for lot in lots(books, CARD)] == before[CARD]


def test_the_yearly_clearance_removes_the_oldest_years_lots(books):
    books.topup(CARD, AccountKind.POINTS, 700)  # earned on day 20000 (2024-10-04)
    books.advance(400 * DAY_MS)  # into 2025-11
    books.topup(CARD, AccountKind.POINTS, 50)
    # 2025's clearance keeps 2024 and 2025; 2026's removes what is left of 2024.
    assert jobs.clear_lots(books.ledger, 2025) == {"cards": 0, "points_cleared": 0}
    assert jobs.clear_lots(books.ledger, 2026) == {"cards": 1, "points_cleared": 700}
    assert jobs.clear_lots(books.ledger, 2026) == {"cards": 0, "points_cleared": 0}
    assert books.balances(CARD)[2] == 50


def test_tiers_follow_rolling_spend_both_ways(books):
    rules = LoyaltyRules()
    books.pay(SPENDER, 2_500_000, plan_flags=PlanFlag.USE_PERSONAL)  # 25,000.00: gold
    outcome = jobs.update_tiers(books.ledger, rules, books.day)
    assert (outcome["upgraded"], outcome["downgraded"]) == (1, 0)
    assert jobs.member_tier(books.ledger.store, SPENDER) == Tier.GOLD
    assert jobs.update_tiers(books.ledger, rules, books.day)["upgraded"] == 0
    # A year later the spend has left the rolling window.
    assert jobs.update_tiers(books.ledger, rules, books.day + 365)["downgraded"] == 1
    assert jobs.member_tier(books.ledger.store, SPENDER) == Tier.REGULAR


def test_a_voided_sale_does_not_count_towards_a_tier(books):
    sale = books.pay(SPENDER, 2_500_000, plan_flags=PlanFlag.USE_PERSONAL)
    assert books.void(sale.txn_id).code == R.APPROVED
    assert jobs.update_tiers(books.ledger, LoyaltyRules(), books.day)["upgraded"] == 0


def test_reminders_list_points_expiring_soon(books):
    books.topup(CARD, AccountKind.POINTS, 40, lot_validity_days=5)
    books.topup(SPENDER, AccountKind.POINTS, 60, lot_validity_days=50)
    soon = jobs.expiring_soon(books.ledger.store, books.day, 30)
    assert [(item["card_id"], item["points"], item["expires_day"] - books.day) for item in soon] == [(CARD, 40, 5)]
    assert len(jobs.expiring_soon(books.ledger.store, books.day, 60)) == 2


def test_the_command_line_runs_a_job_and_refuses_bad_rules(books, tmp_path):
    books.ledger.store.env.sync(True)
    data = books.ledger.store.path
    run = lambda *args: subprocess.run([sys.executable, "-m", "core.loyalty", "--data", data, *args], cwd=REPO, capture_output=True, text=True)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    result = run("--json", "expire", "--as-of", today)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"cards": 0, "points_expired": 0}
    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps({"earning": {"category_permille": {"shop": -5}}}))
    result = run("rules", "check", str(bad))
    assert result.returncode == 1
    assert "earning.category_permille[shop]: a multiplier below zero is refused" in result.stderr


def lots(books, card_id):
    from core.lots import open_lots

    with books.ledger.store.env.begin() as txn:
        return open_lots(txn, books.ledger.store, card_id)
