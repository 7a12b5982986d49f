"""Reads answer as of now (core/current.py through core/ledger.py and the
points statement), on both kernels: a hold past its time and points past
their lot's day read expired before any write has recorded it, and read
exactly as the stored records do once a write has."""

import pytest

from core import limits
from core.audit import audit
from core.loyalty import jobs
from core.loyalty.statement import points_statement
from core.records import Op
from core.results import AccountKind, Channel, OpKind, PlanFlag, ResultCode as R, TxnState
from core.settlement.shifts import day_totals
from tests.ledger_driver import DAY_MS, Driver

CARD = 6200000000000001


@pytest.fixture
def books(ledger):
    driver = Driver(ledger)
    yield driver
    report = audit(ledger.store)
    assert report.ok, report.problems


def stored_card(books, card_id):
    return books.ledger.card(card_id), tuple(books.ledger.account(kind, card_id) for kind in (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS))


def statement(books, card_id=CARD):
    return points_statement(books.ledger.store, card_id, now_ms=books.now_ms)


def test_a_hold_past_its_time_reads_expired_and_free_before_any_write(books):
    books.open_card(CARD, fleet=1_000, personal=500, limit_per_day=10_000)
    due = books.preauth(CARD, 1_200, hold_timeout_s=60)
    later = books.preauth(CARD, 100, hold_timeout_s=600)
    books.advance(60_000)
    card, (fleet, personal, _) = books.ledger.card_as_of(CARD, books.now_ms)
    assert (fleet.held, personal.held, card.day_spent) == (0, 100, 100)
    assert books.held(CARD) == (1_000, 300, 0)  # nothing written yet
    assert books.ledger.txn_as_of(due.txn_id, books.now_ms).state == TxnState.EXPIRED
    assert books.ledger.txn_as_of(later.txn_id, books.now_ms).state == TxnState.HELD
    assert books.ledger.txn(due.txn_id).state == TxnState.HELD
    # The next write expires it, and the stored records read as the view did.
    books.one(Op(kind=OpKind.EXPIRE_HOLDS))
    assert books.ledger.card_as_of(CARD, books.now_ms) == (card, (fleet, personal, books.ledger.account(AccountKind.POINTS, CARD)))
    assert stored_card(books, CARD) == books.ledger.card_as_of(CARD, books.now_ms)
    assert books.ledger.txn(due.txn_id) == books.ledger.txn_as_of(due.txn_id, books.now_ms - 1)


def test_points_past_their_lots_day_read_expired_before_any_write(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.POINTS, 500, lot_validity_days=1)
    books.topup(CARD, AccountKind.POINTS, 100, lot_validity_days=30)
    assert (statement(books).balance, len(statement(books).open_lots)) == (600, 2)
    books.advance(DAY_MS)  # the day after the first lot's last day; no job has run
    view = statement(books)
    assert view.balance == 100 and books.ledger.card_as_of(CARD, books.now_ms)[1][2].balance == 100
    assert [(lot.expires_day - books.day, lot.remaining) for lot in view.open_lots] == [(29, 100)]
    assert [(lot.original, lot.remaining) for lot in view.closed_lots] == [(500, 0)]
    last = view.lines[-1]
    assert (last.seq, last.txn_id, last.movement, last.points, last.balance_after) == (0, 0, "EXPIRY", -500, 100)
    assert books.balances(CARD)[2] == 600  # nothing written yet
    # The expiry written: the statement reads the same, with the line's journal seq.
    assert books.one(Op(kind=OpKind.EXPIRE_POINTS, card_id=CARD)).amount == 500
    written = statement(books)
    assert (written.balance, written.open_lots, written.closed_lots) == (view.balance, view.open_lots, view.closed_lots)
    assert [(line.movement, line.points, line.balance_after) for line in written.lines] == [
        (line.movement, line.points, line.balance_after) for line in view.lines]
    assert written.lines[-1].seq != 0
    assert stored_card(books, CARD) == books.ledger.card_as_of(CARD, books.now_ms)


def test_points_held_by_a_waiting_payment_do_not_read_expired(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.POINTS, 500, lot_validity_days=1)
    pending = books.pay(CARD, 700, plan_flags=PlanFlag.USE_POINTS, points_max=200, channel=Channel.ALIPAY, earn_points=0)
    assert (pending.code, pending.points_used) == (R.PENDING, 200)
    books.advance(DAY_MS)
    view = statement(books)
    assert (view.balance, view.held) == (200, 200)
    assert [lot.remaining for lot in view.open_lots] == [200]
    assert books.one(Op(kind=OpKind.EXPIRE_POINTS, card_id=CARD)).amount == 300
    assert (statement(books).balance, statement(books).open_lots) == (view.balance, view.open_lots)


def test_reminders_never_list_points_that_expire_today(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.POINTS, 500, lot_validity_days=1)
    books.topup(CARD, AccountKind.POINTS, 100, lot_validity_days=2)
    books.advance(DAY_MS)
    assert [found["points"] for found in jobs.expiring_soon(books.ledger.store, books.day, 30)] == [100]


def test_day_totals_find_a_days_sales_made_after_another_stations_next_day_began(books):
    books.open_card(CARD, personal=100_000)
    today = books.day
    books.one(Op(kind=OpKind.DAY_END, station_id=1, period=today))
    ahead = books.pay(CARD, 100, station_id=1)
    behind = books.pay(CARD, 200, station_id=2)
    assert (ahead.business_day, behind.business_day) == (today + 1, today)
    behind_day = day_totals(books.ledger.store, 2, today).station
    assert (behind_day.sales_count, behind_day.sales.total) == (1, 200)
    assert day_totals(books.ledger.store, 1, today + 1).station.sales_count == 1
    assert day_totals(books.ledger.store, 1, today).station.sales_count == 0


def test_a_station_is_never_more_than_a_day_ahead_of_the_calendar(books):
    books.open_card(CARD, personal=100_000)
    books.one(Op(kind=OpKind.DAY_END, station_id=1, period=books.day + 5))
    assert books.pay(CARD, 100).business_day == books.day + limits.STATION_DAY_AHEAD_MAX
    assert books.ledger.station_day(1, books.now_ms) == books.day + 1
    assert books.ledger.station_day(2, books.now_ms) == books.day
