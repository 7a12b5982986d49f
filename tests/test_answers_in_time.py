"""Every answer right in time (issue 16), over a real server on 127.0.0.1:
a hold past its time is free at once for GetCard, Query and Pay; points past
their lot's day are not shown as spendable; a station's sales after DayEnd
are in the next business day; Reverse, declined and channel-failed answers
say what happened; a retried request is marked replayed, and BatchUpload
labels an item DUPLICATE exactly when another request applied it first."""

import concurrent.futures
import time

import pytest

from core.dates import date_of
from core.records import Op
from core.results import AccountKind, CardType, OpKind
from tally.v1 import card_pb2, common_pb2, loyalty_pb2, loyalty_pb2_grpc, payment_pb2, settlement_pb2, settlement_pb2_grpc
from tests.conftest import open_ledger
from tests.ledger_driver import DAY_MS, Driver
from tests.support import ServerProcess, Terminal

R = common_pb2
CARD = 7700000000000001


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(str(tmp_path_factory.mktemp("in-time") / "data"), demo=False).start()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def channel(server):
    opened = server.channel()
    yield opened
    opened.close()


def new_card(channel, card_id: int, station_id: int = 1, terminal_id: int = 101, **balances) -> Terminal:
    terminal = Terminal(channel, station_id=station_id, terminal_id=terminal_id, serial=card_id % 10**5 * 1000)
    assert terminal.open_card(card_id, card_pb2.COMPANY).result == R.APPROVED
    for name, amount in balances.items():
        account = {"fleet": R.FLEET, "personal": R.PERSONAL, "points": R.POINTS}[name]
        assert terminal.topup(card_id, amount, account=account).result == R.APPROVED
    return terminal


def pay_request(terminal: Terminal, amount_minor: int, card_id: int, serial=None, **plan) -> payment_pb2.PayRequest:
    return payment_pb2.PayRequest(terminal=terminal.context(serial), amount_minor=amount_minor, plan=payment_pb2.PaymentPlan(card_id=card_id, **plan))


def test_a_hold_past_its_time_is_free_at_once_for_getcard_query_and_pay(channel):
    terminal = new_card(channel, CARD, personal=1_000)
    preauth = payment_pb2.PreAuthorizeRequest(terminal=terminal.context(), card_id=CARD, amount_minor=1_000, hold_timeout_s=1)
    hold = terminal.payments.PreAuthorize(preauth)
    assert hold.result == R.APPROVED and terminal.card(CARD).held.personal_minor == 1_000
    expires_ms = terminal.payments.Query(payment_pb2.QueryRequest(txn_id=hold.txn_id)).transaction.expires_ms
    # Just past its time: the server sweeps holds every 5 s, so no sweep
    # has run yet in all likelihood; the answers must not wait for one.
    time.sleep(max(0.0, (expires_ms + 30) / 1000 - time.time()))
    card = terminal.card(CARD)
    assert (card.held.personal_minor, card.balances.personal_minor) == (0, 1_000)
    assert terminal.payments.Query(payment_pb2.QueryRequest(txn_id=hold.txn_id)).transaction.state == payment_pb2.EXPIRED
    by_serial = terminal.payments.Query(payment_pb2.QueryRequest(terminal_id=terminal.terminal_id, serial=preauth.terminal.serial))
    assert by_serial.transaction.state == payment_pb2.EXPIRED
    sale, _ = terminal.pay(1_000, card_id=CARD, use_personal=True)
    assert (sale.result, sale.sources.personal_minor) == (R.APPROVED, 1_000)
    complete = payment_pb2.CompleteRequest(terminal=terminal.context(), txn_id=hold.txn_id, amount_minor=500)
    assert terminal.payments.Complete(complete).result == R.HOLD_EXPIRED


def test_points_past_their_lots_day_are_never_shown_as_spendable(tmp_path):
    data_dir = str(tmp_path / "data")
    ledger = open_ledger(data_dir, "cython")
    books = Driver(ledger)
    books.now_ms = (time.time_ns() // 1_000_000) - 3 * DAY_MS  # three days ago
    card_id = 7700000000000002
    assert books.one(Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=CardType.PERSONAL)).code == R.APPROVED
    books.topup(card_id, AccountKind.POINTS, 500, lot_validity_days=1)
    books.topup(card_id, AccountKind.POINTS, 100, lot_validity_days=30)
    ledger.store.close()
    server = ServerProcess(data_dir, demo=False).start()
    try:
        opened = server.channel()
        loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(opened)
        points = loyalty.GetPoints(loyalty_pb2.GetPointsRequest(card_id=card_id))
        assert points.points_balance == 100 and [lot.remaining for lot in points.lots] == [100]
        statement = loyalty.GetStatement(loyalty_pb2.GetStatementRequest(card_id=card_id))
        assert statement.points_balance == 100 and [lot.remaining for lot in statement.open_lots] == [100]
        assert [(lot.original, lot.remaining) for lot in statement.closed_lots] == [(500, 0)]
        assert [(line.movement, line.points, line.balance_after) for line in statement.lines][-1] == ("EXPIRY", -500, 100)
        assert Terminal(opened).card(card_id).balances.points == 100
        opened.close()
    finally:
        server.kill()


def test_a_stations_sales_after_day_end_land_in_the_next_business_day(channel):
    card_id = 7700000000000003
    new_card(channel, card_id, fleet=10_000)
    closing = Terminal(channel, station_id=8, terminal_id=801, serial=1)
    open_still = Terminal(channel, station_id=9, terminal_id=901, serial=1)
    first, _ = closing.pay(100, card_id=card_id)
    today = first.business_day
    settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
    closed = settlement.DayEnd(settlement_pb2.DayEndRequest(station_id=8, business_day=today, by="night manager"))
    assert (closed.result, closed.station.sales_count) == (R.APPROVED, 1)
    late, _ = closing.pay(200, card_id=card_id)
    assert (late.result, late.business_day) == (R.APPROVED, today + 1)
    assert f"day {date_of(today + 1)}" in late.receipt, "the business day as a calendar date"
    elsewhere, _ = open_still.pay(300, card_id=card_id)
    assert elsewhere.business_day == today
    again = settlement.DayEnd(settlement_pb2.DayEndRequest(station_id=8, business_day=today, by="night manager"))
    assert again.station == closed.station  # the closed day does not change


def test_a_second_reversal_says_the_sale_is_reversed_already(channel):
    card_id = 7700000000000004
    terminal = new_card(channel, card_id, fleet=1_000)
    sale, request = terminal.pay(400, card_id=card_id)
    reverse = lambda: terminal.payments.Reverse(payment_pb2.ReverseRequest(terminal=terminal.context(), original_serial=request.terminal.serial))
    first = reverse()
    assert (first.result, first.amount_minor, first.sources.fleet_minor) == (R.APPROVED, 400, 400)
    second = reverse()
    assert (second.result, second.amount_minor, second.txn_id) == (R.ALREADY_REVERSED, 0, sale.txn_id)
    assert "ALREADY_REVERSED: the original was reversed" in second.receipt
    assert terminal.card(card_id).balances.fleet_minor == 1_000


def test_a_declined_pay_answers_the_amount_asked_and_the_cards_balances(channel):
    card_id = 7700000000000005
    terminal = new_card(channel, card_id, fleet=300, personal=1_000)
    declined, _ = terminal.pay(5_000, card_id=card_id, use_fleet=True, use_personal=True)
    assert (declined.result, declined.txn_id, declined.amount_minor) == (R.INSUFFICIENT_FUNDS, 0, 5_000)
    assert (declined.balances.fleet_minor, declined.balances.personal_minor) == (300, 1_000)
    assert (declined.sources.fleet_minor, declined.sources.personal_minor) == (0, 0)
    assert "AMOUNT 50.00" in declined.receipt
    assert "balance fleet 3.00  personal 10.00  points 0" in declined.receipt
    assert "fleet account" not in declined.receipt


@pytest.mark.parametrize("flag, code", [("--channel-timeout-ppm", R.CHANNEL_UNAVAILABLE), ("--channel-decline-ppm", R.CHANNEL_DECLINED)])
def test_a_channel_that_took_nothing_answers_no_legs(server_factory, flag, code):
    server = server_factory(flag, "1000000", demo=False)
    opened = server.channel()
    card_id = 7700000000000006
    terminal = new_card(opened, card_id, fleet=100, personal=200)
    answer, request = terminal.pay(15_000, card_id=card_id, use_fleet=True, use_personal=True, channel=R.WECHAT_PAY)
    assert (answer.result, answer.amount_minor, answer.txn_id > 0) == (code, 15_000, True)
    sources = answer.sources
    assert (sources.fleet_minor, sources.personal_minor, sources.points_cash_minor, sources.channel_minor, sources.channel) == (0, 0, 0, 0, 0)
    assert (answer.balances.fleet_minor, answer.balances.personal_minor) == (100, 200)
    assert "AMOUNT 150.00" in answer.receipt and "account" not in answer.receipt and "channel  " not in answer.receipt
    stored = terminal.payments.Query(payment_pb2.QueryRequest(terminal_id=terminal.terminal_id, serial=request.terminal.serial))
    assert stored.answer.sources == answer.sources and stored.answer.amount_minor == 15_000
    opened.close()


def test_points_items_explain_only_points_a_card_sale_really_paid_with(channel):
    cardless = Terminal(channel, station_id=1, terminal_id=121, serial=1)
    answer, _ = cardless.pay(15_000, card_id=0, use_fleet=False, channel=R.ALIPAY)
    assert (answer.result, answer.points_earned) == (R.APPROVED, 0)
    assert [item.rule for item in answer.points_items] == []
    card_id = 7700000000000007
    terminal = new_card(channel, card_id, personal=5_000, points=5_000)
    half, _ = terminal.pay(10_000, card_id=card_id, use_fleet=False, use_personal=True, use_points=True)
    assert (half.result, half.sources.points_cash_minor) == (R.APPROVED, 5_000)
    assert "paid_with_points" in [item.rule for item in half.points_items]
    assert sum(item.points for item in half.points_items) == half.points_earned
    plain, _ = terminal.pay(100, card_id=card_id, use_fleet=False, use_personal=True)
    assert "paid_with_points" not in [item.rule for item in plain.points_items]


def test_a_batch_item_is_duplicate_exactly_when_the_same_sale_sent_online_applied_first(channel):
    card_id = 7700000000000008
    new_card(channel, card_id, personal=10**7)
    till = Terminal(channel, station_id=7, terminal_id=750)
    items = [pay_request(till, 100 + serial, card_id, serial=serial, use_personal=True) for serial in range(1, 201)]
    settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        uploading = pool.submit(settlement.BatchUpload, settlement_pb2.BatchUploadRequest(terminal_id=750, station_id=7, items=items))
        online = list(pool.map(till.payments.Pay, items))
        batch = uploading.result()
    assert {answer.result for answer in online} == {R.APPROVED} and {item.result for item in batch.results} == {R.APPROVED}
    for item, answer in zip(batch.results, online, strict=True):
        # Whichever came second was answered from the first one's entry.
        assert (item.status == settlement_pb2.DUPLICATE) == (not answer.replayed), item.serial
        assert item.txn_id == answer.txn_id
    assert batch.accepted + batch.duplicates == len(items)
    assert till.card(card_id).balances.personal_minor == 10**7 - sum(item.amount_minor for item in items)
