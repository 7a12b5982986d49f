"""Shift and day-end totals: what the cashier hands over, what the station closes."""

import pytest

from core.records import Op
from core.results import Channel, OpKind, PlanFlag, ResultCode as R
from core.settlement.shifts import day_totals, load_shift, shift_totals
from tests.conftest import open_ledger
from tests.ledger_driver import DAY_MS, Driver

CARD = 55


@pytest.fixture
def books(tmp_path):
    driver = Driver(open_ledger(str(tmp_path / "data"), "cython"))
    driver.open_card(CARD, fleet=50_000, personal=50_000, points=10_000)
    yield driver
    driver.ledger.store.close()


def test_a_shift_hands_over_its_sales_refunds_and_voids_by_method(books):
    books.pay(CARD, 700)  # before the shift: not in it
    assert books.one(books.request(OpKind.SIGN_ON)).code == R.APPROVED
    fleet_sale = books.pay(CARD, 1_000, plan_flags=PlanFlag.USE_FLEET)
    books.pay(CARD, 2_000, plan_flags=PlanFlag.USE_PERSONAL)
    books.pay(CARD, 300, plan_flags=PlanFlag.USE_POINTS)
    wechat = books.pay(0, 4_000, plan_flags=0, channel=Channel.WECHAT_PAY)
    books.capture(wechat.txn_id)
    voided = books.pay(CARD, 500, plan_flags=PlanFlag.USE_PERSONAL)
    books.void(voided.txn_id)
    books.refund(fleet_sale.txn_id, 400)
    books.pay(CARD, 999, terminal_id=102)  # another terminal: not in this shift
    books.one(books.request(OpKind.SHIFT_CLOSE))
    totals = shift_totals(books.ledger.store, load_shift(books.ledger.store, 101))
    assert totals.sales_count == 4
    assert (totals.sales.fleet, totals.sales.personal, totals.sales.points_cash, totals.sales.channels) == (1_000, 2_000, 300, {"WECHAT_PAY": 4_000})
    assert totals.sales.total == 7_300
    assert (totals.voided_count, totals.voided_minor) == (1, 500)
    assert (totals.refunds_count, totals.refunds.fleet) == (1, 400)


def test_day_end_totals_by_terminal_and_operator(books):
    books.pay(CARD, 100, terminal_id=101, operator_id=7)
    books.pay(CARD, 200, terminal_id=102, operator_id=8)
    books.pay(CARD, 400, station_id=2)  # another station
    books.advance(DAY_MS)
    books.pay(CARD, 800)  # the next day
    totals = day_totals(books.ledger.store, 1, books.day - 1)
    assert totals.station.sales.total == 300
    assert {terminal: t.sales.total for terminal, t in totals.by_terminal.items()} == {101: 100, 102: 200}
    assert {operator: t.sales.total for operator, t in totals.by_operator.items()} == {7: 100, 8: 200}
    assert day_totals(books.ledger.store, 1, books.day).station.sales.total == 800
