"""Loyalty in the kernel: check-in, tasks, tiers, gifts, partner points,
lot extension and clearance, each on both kernels; the audit runs after each."""

import pytest

from core.audit import audit
from core.records import Op, TierChange, decode
from core.results import AccountKind, OpKind, ResultCode as R, Tier, TierReason
from tests.ledger_driver import DAY_MS, Driver, replayed

CARD = 77
OTHER = 78
GIFT = 5


@pytest.fixture
def books(ledger):
    driver = Driver(ledger)
    driver.open_card(CARD, personal=10_000, points=2_000)
    driver.open_card(OTHER, personal=10_000, points=2_000)
    yield driver
    report = audit(ledger.store)
    assert report.ok, report.problems


def checkin(books, card=CARD, **fields):
    fields = {"amount": 5, "bonus_points": 50, "period": 7, **fields}
    return books.one(books.request(OpKind.CHECKIN, card_id=card, **fields))


def test_one_checkin_per_local_day_and_a_bonus_on_the_seventh(books):
    points = []
    for day in range(8):
        first = checkin(books)
        assert checkin(books).code == R.ALREADY_CHECKED_IN
        points.append(first.points_earned)
        books.advance(DAY_MS)
    assert points == [5, 5, 5, 5, 5, 5, 55, 5]
    assert books.balances(CARD)[2] == 2_000 + 5 * 8 + 50


def test_a_missed_day_starts_the_streak_again(books):
    for _ in range(6):
        checkin(books)
        books.advance(DAY_MS)
    books.advance(DAY_MS)  # a day missed
    assert checkin(books).points_earned == 5


def test_checkin_days_follow_the_customers_time_zone(books):
    # It is 10:00 UTC: 23:00 of the day before at UTC-11.
    books.one(Op(kind=OpKind.SET_MEMBER, card_id=CARD, tz_offset_minutes=-11 * 60))
    assert checkin(books, card=CARD).code == R.APPROVED
    assert checkin(books, card=OTHER).code == R.APPROVED  # in UTC
    books.advance(3_600_000)  # 11:00 UTC: midnight at UTC-11, still 11:00 in UTC
    assert checkin(books, card=CARD).code == R.APPROVED
    assert checkin(books, card=OTHER).code == R.ALREADY_CHECKED_IN


def test_task_points_stop_at_the_daily_cap(books):
    task = lambda: books.one(books.request(OpKind.TASK, card_id=CARD, amount=30, bonus_points=70))
    assert [task().points_earned for _ in range(3)] == [30, 30, 10]
    assert task().code == R.TASK_CAP_REACHED
    books.advance(DAY_MS)
    assert task().points_earned == 30


def test_tier_changes_are_recorded_with_their_reason(books):
    set_tier = lambda tier, reason: books.one(Op(kind=OpKind.SET_TIER, card_id=CARD, tier=tier, reason=reason, amount=123_456))
    assert set_tier(Tier.GOLD, TierReason.SPEND_UP).code == R.APPROVED
    assert set_tier(Tier.GOLD, TierReason.SPEND_UP).code == R.APPROVED  # no change, no record
    assert set_tier(Tier.SILVER, TierReason.SPEND_DOWN).code == R.APPROVED
    with books.ledger.store.env.begin() as txn:
        changes = [decode(TierChange, value) for _, value in txn.cursor(db=books.ledger.store.tier_changes)]
    assert [(c.old_tier, c.new_tier, c.reason, c.spend_minor) for c in changes] == [
        (Tier.REGULAR, Tier.GOLD, TierReason.SPEND_UP, 123_456),
        (Tier.GOLD, Tier.SILVER, TierReason.SPEND_DOWN, 123_456),
    ]


def set_gift(books, **fields):
    fields = {"amount": 500, "bonus_points": 0, "count_limit": 0, "tier": 0, "period_start": 0, "period": 0, **fields}
    assert books.one(Op(kind=OpKind.GIFT_SET, item_id=GIFT, **fields)).code == R.APPROVED


def stock(books, delta):
    return books.one(Op(kind=OpKind.GIFT_STOCK, item_id=GIFT, amount=delta))


def redeem(books, card=CARD, quantity=1, **fields):
    return books.one(books.request(OpKind.REDEEM, card_id=card, item_id=GIFT, amount=quantity, **fields))


def test_redeeming_takes_points_and_stock(books):
    set_gift(books, amount=500, bonus_points=300)
    assert stock(books, 3).amount == 3
    result = redeem(books, quantity=2)
    assert (result.code, result.points_used, result.personal) == (R.APPROVED, 1_000, 600)
    assert books.balances(CARD) == (0, 9_400, 1_000)
    assert redeem(books, quantity=2).code == R.GIFT_OUT_OF_STOCK
    assert stock(books, -2).code == R.GIFT_OUT_OF_STOCK  # never below zero
    assert stock(books, -1).amount == 0


def test_a_redemption_is_idempotent(books):
    set_gift(books)
    stock(books, 5)
    op = books.request(OpKind.REDEEM, card_id=CARD, item_id=GIFT, amount=1)
    first = books.one(op)
    assert books.apply(op, op) == [replayed(first), replayed(first)]
    assert books.balances(CARD)[2] == 1_500


def test_gift_limits_windows_and_tiers(books):
    set_gift(books, count_limit=1, period_start=books.day + 1, period=books.day + 2, tier=1 << Tier.GOLD)
    stock(books, 10)
    assert redeem(books).code == R.GIFT_NOT_AVAILABLE
    books.advance(DAY_MS)
    assert redeem(books).code == R.TIER_NOT_ALLOWED
    books.one(Op(kind=OpKind.SET_TIER, card_id=CARD, tier=Tier.GOLD, reason=TierReason.ADMIN))
    assert redeem(books).code == R.APPROVED
    assert redeem(books).code == R.GIFT_LIMIT_REACHED
    books.advance(2 * DAY_MS)
    assert redeem(books).code == R.GIFT_NOT_AVAILABLE
    assert books.one(books.request(OpKind.REDEEM, card_id=CARD, item_id=999, amount=1)).code == R.GIFT_NOT_FOUND


def test_redemption_needs_the_points_and_the_cash(books):
    set_gift(books, amount=2_001)
    stock(books, 1)
    assert redeem(books).code == R.INSUFFICIENT_POINTS
    set_gift(books, amount=1, bonus_points=10_001)
    assert redeem(books).code == R.INSUFFICIENT_FUNDS
    assert books.balances(CARD) == (0, 10_000, 2_000)


def test_partner_points_convert_into_points_or_cash(books):
    exchange = lambda **fields: books.one(books.request(OpKind.PARTNER_EXCHANGE, card_id=CARD, item_id=9, points_per_unit=100, **fields))
    # 3 standard points for every 2 partner points; their value is owed by the partner.
    into_points = exchange(amount=1_001, earn_points=3, period=2, reason=0)
    assert (into_points.code, into_points.points_earned) == (R.APPROVED, 1_501)
    assert books.ledger.account(AccountKind.PARTNER_CLEARING, 9).balance == -1_501
    into_cash = exchange(amount=500, earn_points=1, period=5, reason=1)
    assert (into_cash.code, into_cash.personal) == (R.APPROVED, 100)
    assert books.balances(CARD) == (0, 10_100, 3_501)
    assert exchange(amount=1, earn_points=1, period=5, reason=1).code == R.INSUFFICIENT_POINTS


def test_extension_moves_every_lot_once_per_month(books):
    books.topup(CARD, AccountKind.POINTS, 100, lot_validity_days=10)
    before = {lot.expires_day for lot in lots(books)}
    extend = lambda month: books.one(Op(kind=OpKind.EXTEND_LOTS, card_id=CARD, amount=90, period=month))
    assert extend(24_300).amount == 2
    assert extend(24_300).amount == 0
    assert {lot.expires_day for lot in lots(books)} == {day + 90 for day in before}
    books.advance(20 * DAY_MS)  # past the old expiry of the 10-day lot
    assert books.one(Op(kind=OpKind.EXPIRE_POINTS, card_id=CARD)).amount == 0


def test_clearance_removes_the_old_years_lots_once(books):
    books.advance(DAY_MS)
    books.topup(CARD, AccountKind.POINTS, 300)
    clear = lambda: books.one(Op(kind=OpKind.CLEAR_LOTS, card_id=CARD, period=2026, period_start=books.day))
    # The 2,000 points of the first day are cleared; the 300 of today stay.
    assert clear().amount == 2_000
    assert clear().amount == 0
    assert books.balances(CARD)[2] == 300


def lots(books):
    from core.lots import open_lots

    with books.ledger.store.env.begin() as txn:
        return open_lots(txn, books.ledger.store, CARD)
