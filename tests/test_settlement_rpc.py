"""SettlementService's shift, day and offline-batch RPCs over a real server:
SignOn, ShiftClose (the shift's totals, a closed shift refuses sales),
DayEnd (totals by station, terminal, operator and method, equal to the
journal; voids of a closed day refused, refunds not), BatchUpload (accepted,
duplicate, declined; a batch cut short by SIGKILL completed on retry, each
sale applied exactly once), and malformed requests."""

import collections
import json
import subprocess
import sys
import threading
import time

import grpc
import pytest

from core import limits
from core.records import Txn, decode, u64_key
from core.results import RESULT_TEXT, AccountKind, Movement, OpKind, Reason, ResultCode
from server.shift_service import BATCH_UPLOAD_ITEMS_MAX
from tally.v1 import card_pb2, common_pb2, payment_pb2, settlement_pb2, settlement_pb2_grpc
from tests.conftest import open_ledger
from tests.support import REPO, ServerProcess, Terminal
from tests.test_admin_terminal_auth import secured, signed_on  # noqa: F401 (secured is a fixture)

R = common_pb2
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
# Cards are opened and topped up at a station of their own, so that the
# stations under test hold only the sales the tests make.
FUNDING_STATION, FUNDING_TERMINAL = 9, 900
SALE_MOVEMENTS = (Movement.FLEET, Movement.PERSONAL, Movement.POINTS_CASH, Movement.CHANNEL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(str(tmp_path_factory.mktemp("settlement-rpc") / "data"), demo=False).start()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def channel(server):
    opened = server.channel()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def settlement(channel):
    return settlement_pb2_grpc.SettlementServiceStub(channel)


def open_card(channel, card_id: int, card_type: int = card_pb2.COMPANY, **balances) -> Terminal:
    funding = Terminal(channel, station_id=FUNDING_STATION, terminal_id=FUNDING_TERMINAL, serial=card_id % 10**6 * 10)
    assert funding.open_card(card_id, card_type).result == R.APPROVED
    for name, amount in balances.items():
        account = {"fleet": R.FLEET, "personal": R.PERSONAL, "points": R.POINTS}[name]
        assert funding.topup(card_id, amount, account=account).result == R.APPROVED
    return funding


def pay_request(terminal: Terminal, amount_minor: int, card_id: int, serial=None, **plan) -> payment_pb2.PayRequest:
    if not plan:
        plan = {"use_fleet": True}
    return payment_pb2.PayRequest(terminal=terminal.context(serial), amount_minor=amount_minor,
                                  plan=payment_pb2.PaymentPlan(card_id=card_id, **plan))


def pay(terminal: Terminal, amount_minor: int, card_id: int = 0, **plan) -> payment_pb2.PaymentAnswer:
    return terminal.payments.Pay(pay_request(terminal, amount_minor, card_id, **plan))


def refused(call, field: str):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details().startswith(field + ":"), caught.value.details()


def methods(totals: settlement_pb2.MethodTotals) -> tuple:
    channels = {channel.channel: channel.amount_minor for channel in totals.channels}
    return totals.fleet_minor, totals.personal_minor, totals.points_cash_minor, totals.points, channels, totals.total_minor


# ------------------------------------------------------------------ shifts


def test_a_shift_hands_over_exactly_its_sales_and_a_closed_shift_sells_nothing(channel, settlement):
    card = 8800000000000001
    open_card(channel, card, fleet=100_000, personal=50_000, points=10_000)
    till = Terminal(channel, station_id=5, terminal_id=501, operator_id=51)
    neighbour = Terminal(channel, station_id=5, terminal_id=502, operator_id=52)
    assert pay(till, 300, card, use_fleet=True).result == R.APPROVED  # before the shift: not in it

    sign_on = settlement_pb2.SignOnRequest(terminal=till.context())
    first = settlement.SignOn(sign_on)
    assert first.result == R.APPROVED and first.shift_id > 0 and first.operator_id == 51
    assert abs(first.opened_ms - time.time() * 1000) < 60_000
    assert settlement.SignOn(sign_on) == first  # a retry: the same shift
    again = settlement.SignOn(settlement_pb2.SignOnRequest(terminal=till.context()))
    assert (again.result, again.shift_id, again.opened_ms) == (R.SHIFT_ALREADY_OPEN, first.shift_id, first.opened_ms)

    fleet_sale = pay(till, 1_000, card, use_fleet=True)
    assert pay(till, 2_000, card, use_personal=True).result == R.APPROVED
    points_sale = pay(till, 300, card, use_points=True)
    assert (points_sale.result, points_sale.sources.points_used) == (R.APPROVED, 300)
    assert pay(till, 4_000, 0, channel=R.WECHAT_PAY).result == R.APPROVED
    voided = pay(till, 500, card, use_personal=True)
    assert till.payments.Void(payment_pb2.VoidRequest(terminal=till.context(), txn_id=voided.txn_id)).result == R.APPROVED
    refund = payment_pb2.RefundRequest(terminal=till.context(), txn_id=fleet_sale.txn_id, amount_minor=400)
    assert till.payments.Refund(refund).result == R.APPROVED
    assert pay(neighbour, 999, card).result == R.APPROVED  # another terminal: not in this shift

    close = settlement_pb2.ShiftCloseRequest(terminal=till.context())
    closed = settlement.ShiftClose(close)
    assert closed.result == R.APPROVED
    assert (closed.shift_id, closed.station_id, closed.terminal_id, closed.operator_id) == (first.shift_id, 5, 501, 51)
    assert closed.opened_ms == first.opened_ms <= closed.closed_ms and closed.first_txn_id == first.shift_id
    totals = closed.totals
    assert totals.sales_count == 4
    assert methods(totals.sales) == (1_000, 2_000, 300, 300, {R.WECHAT_PAY: 4_000}, 7_300)
    assert (totals.voided_count, totals.voided_minor, totals.reversed_count, totals.reversed_minor) == (1, 500, 0, 0)
    assert totals.refunds_count == 1 and methods(totals.refunds) == (400, 0, 0, 0, {}, 400)
    assert (totals.topups_count, totals.topups_minor, totals.discounts_minor) == (0, 0, 0)
    assert settlement.ShiftClose(close) == closed  # a retry: the same hand-over

    refused_sale = pay(till, 100, card)
    assert (refused_sale.result, refused_sale.result_text) == (R.SHIFT_CLOSED, RESULT_TEXT[ResultCode.SHIFT_CLOSED])
    assert pay(neighbour, 100, card).result == R.APPROVED  # never signed on: free
    assert settlement.ShiftClose(settlement_pb2.ShiftCloseRequest(terminal=till.context())).result == R.SHIFT_NOT_OPEN

    second = settlement.SignOn(settlement_pb2.SignOnRequest(terminal=till.context()))
    assert second.result == R.APPROVED and second.shift_id > closed.last_txn_id >= first.shift_id
    assert pay(till, 700, card, use_personal=True).result == R.APPROVED
    handed = settlement.ShiftClose(settlement_pb2.ShiftCloseRequest(terminal=till.context())).totals
    assert handed.sales_count == 1 and methods(handed.sales) == (0, 700, 0, 0, {}, 700)
    assert handed.voided_count == handed.refunds_count == 0


# ------------------------------------------------------------------ day-end


def journal_sales(data_dir: str, station_id: int, day: int) -> dict:
    """From the journal alone: money moved by sales (net of their voids) per
    terminal, operator and movement at the station on the day."""
    ledger = open_ledger(data_dir, "reference")
    sums = collections.defaultdict(int)
    try:
        with ledger.store.env.begin() as txn:
            for entry in ledger.journal():
                if entry.station_id != station_id or entry.business_day != day or entry.movement not in SALE_MOVEMENTS:
                    continue
                record = decode(Txn, txn.get(u64_key(entry.txn_id), db=ledger.store.txns))
                if record.kind != OpKind.PAY:
                    continue
                sign = -1 if entry.reason == Reason.VOID else 1
                for key in (("terminal", record.terminal_id), ("operator", record.operator_id), ("movement", entry.movement)):
                    sums[key] += sign * entry.amount
    finally:
        ledger.store.close()
    return dict(sums)


def test_day_end_totals_equal_the_journal_and_a_closed_day_is_refunded_not_voided(server, channel, settlement):
    card = 8800000000000002
    open_card(channel, card, fleet=100_000, personal=50_000)
    east = Terminal(channel, station_id=6, terminal_id=601, operator_id=61)
    west = Terminal(channel, station_id=6, terminal_id=602, operator_id=62)
    elsewhere = Terminal(channel, station_id=7, terminal_id=701, operator_id=61)
    first = pay(east, 1_100, card, use_fleet=True)
    east.operator_id = 62
    assert pay(east, 2_200, card, use_personal=True).result == R.APPROVED
    big = pay(west, 3_300, card, use_fleet=True)
    assert pay(west, 1_000, 0, channel=R.ALIPAY).result == R.APPROVED
    east.operator_id = 61
    undone = pay(east, 500, card, use_fleet=True)
    assert east.payments.Void(payment_pb2.VoidRequest(terminal=east.context(), txn_id=undone.txn_id)).result == R.APPROVED
    assert pay(elsewhere, 9_999, card).result == R.APPROVED  # another station
    today = first.business_day

    request = settlement_pb2.DayEndRequest(station_id=6, business_day=today, by="night manager")
    day = settlement.DayEnd(request)
    assert (day.result, day.station_id, day.business_day, day.closed_through_day) == (R.APPROVED, 6, today, today)
    assert day.station.sales_count == 4
    assert methods(day.station.sales) == (4_400, 2_200, 0, 0, {R.ALIPAY: 1_000}, 7_600)
    assert (day.station.voided_count, day.station.voided_minor, day.station.refunds_count) == (1, 500, 0)
    by_terminal = {part.terminal_id: methods(part.totals.sales) for part in day.terminals}
    assert by_terminal == {601: (1_100, 2_200, 0, 0, {}, 3_300), 602: (3_300, 0, 0, 0, {R.ALIPAY: 1_000}, 4_300)}
    by_operator = {part.operator_id: part.totals.sales.total_minor for part in day.operators}
    assert by_operator == {61: 1_100, 62: 6_500}
    assert [part.totals.voided_minor for part in day.terminals] == [500, 0]

    journal = journal_sales(server.data_dir, 6, today)
    assert {terminal: total for (kind, terminal), total in journal.items() if kind == "terminal"} == {
        part.terminal_id: part.totals.sales.total_minor for part in day.terminals}
    assert {operator: total for (kind, operator), total in journal.items() if kind == "operator"} == by_operator
    assert journal[("movement", Movement.FLEET)] == day.station.sales.fleet_minor
    assert journal[("movement", Movement.PERSONAL)] == day.station.sales.personal_minor
    assert journal[("movement", Movement.CHANNEL)] == day.station.sales.channels[0].amount_minor
    clearing = settlement.GetClearing(settlement_pb2.ClearingRequest(day=today))
    assert sum(line.net_minor for line in clearing.lines if line.station_id == 6) == day.station.sales.total_minor

    void = west.payments.Void(payment_pb2.VoidRequest(terminal=west.context(), txn_id=big.txn_id))
    assert (void.result, void.result_text) == (R.DAY_CLOSED, RESULT_TEXT[ResultCode.DAY_CLOSED])
    before = west.card(card).balances.fleet_minor
    refund = west.payments.Refund(payment_pb2.RefundRequest(terminal=west.context(), txn_id=big.txn_id, amount_minor=3_300))
    # After the day-end the station works in the next business day: the
    # refund belongs to it, not to the closed day.
    assert (refund.result, refund.amount_minor, refund.business_day) == (R.APPROVED, 3_300, today + 1)
    assert west.card(card).balances.fleet_minor == before + 3_300
    again = settlement.DayEnd(request)  # safe to repeat; the closed day's totals stay as closed
    assert again.closed_through_day == today and again.station.sales_count == 4
    assert again.station.refunds_count == 0 and again.station == day.station
    late = pay(west, 700, card, use_fleet=True)
    assert (late.result, late.business_day) == (R.APPROVED, today + 1)

    refused(lambda: settlement.DayEnd(settlement_pb2.DayEndRequest(station_id=6, business_day=today + 1, by="x")), "business_day")
    refused(lambda: settlement.DayEnd(settlement_pb2.DayEndRequest(station_id=0, business_day=today, by="x")), "station_id")
    refused(lambda: settlement.DayEnd(settlement_pb2.DayEndRequest(station_id=6, business_day=today, by=" ")), "by")


def test_close_day_from_the_command_line_works_while_the_server_runs(server, channel):
    card = 8800000000000005
    open_card(channel, card, fleet=10_000)
    till = Terminal(channel, station_id=10, terminal_id=1001, operator_id=11)
    sale = pay(till, 1_234, card, use_fleet=True)
    command = [sys.executable, "-m", "core.settlement", "close-day", "--data", server.data_dir, "--map-size-gib", "1",
               "--station", "10", "--day", str(sale.business_day), "--by", "cron", "--json"]
    ran = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert ran.returncode == 0, ran.stderr
    printed = json.loads(ran.stdout)
    assert printed["closed_through_day"] == sale.business_day and printed["by"] == "cron"
    assert printed["totals"]["station"]["sales_count"] == 1 and printed["totals"]["station"]["sales"]["fleet"] == 1_234
    void = till.payments.Void(payment_pb2.VoidRequest(terminal=till.context(), txn_id=sale.txn_id))
    assert void.result == R.DAY_CLOSED
    tomorrow = [str(sale.business_day + 1) if part == str(sale.business_day) else part for part in command]
    too_late = subprocess.run(tomorrow, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert too_late.returncode == 2 and "--day must be within 1 .. today" in too_late.stderr


# ------------------------------------------------------------------ offline batches


def statuses(answer: settlement_pb2.BatchUploadAnswer) -> list:
    return [(item.serial, settlement_pb2.BatchItemStatus.Name(item.status), R.ResultCode.Name(item.result)) for item in answer.results]


def test_an_offline_batch_is_accepted_declined_and_answered_duplicate_when_sent_again(channel, settlement):
    card = 8800000000000003
    open_card(channel, card, card_type=card_pb2.PERSONAL_CARD, personal=1_000)
    till = Terminal(channel, station_id=7, terminal_id=702, operator_id=71)
    online = pay_request(till, 200, card, serial=1, use_personal=True)
    assert till.payments.Pay(online).result == R.APPROVED  # sent online before the link dropped
    assert till.payments.Pay(pay_request(till, 50, card, serial=9, use_personal=True)).result == R.APPROVED
    items = [
        online,  # already applied: DUPLICATE
        pay_request(till, 600, card, serial=2, use_personal=True),
        pay_request(till, 500, card, serial=3, use_personal=True),  # 150 left: declined
        pay_request(till, 100, card, serial=4, use_personal=True),  # order kept: fits after the decline
        pay_request(till, 60, card, serial=9, use_personal=True),  # serial 9 was another sale: declined
    ]
    batch = settlement_pb2.BatchUploadRequest(terminal_id=702, station_id=7, items=items)
    first = settlement.BatchUpload(batch)
    assert statuses(first) == [
        (1, "DUPLICATE", "APPROVED"), (2, "ACCEPTED", "APPROVED"), (3, "DECLINED", "INSUFFICIENT_FUNDS"),
        (4, "ACCEPTED", "APPROVED"), (9, "DECLINED", "DUPLICATE_MISMATCH"),
    ]
    assert (first.accepted, first.duplicates, first.declined) == (2, 1, 2)
    # A declined item answers the amount asked, as a declined Pay does.
    assert [item.amount_minor for item in first.results] == [200, 600, 500, 100, 60]
    assert first.results[2].result_text == RESULT_TEXT[ResultCode.INSUFFICIENT_FUNDS] and first.results[1].result_text == ""
    assert till.card(card).balances.personal_minor == 1_000 - 200 - 50 - 600 - 100

    again = settlement.BatchUpload(batch)
    assert statuses(again) == [
        (1, "DUPLICATE", "APPROVED"), (2, "DUPLICATE", "APPROVED"), (3, "DUPLICATE", "INSUFFICIENT_FUNDS"),
        (4, "DUPLICATE", "APPROVED"), (9, "DECLINED", "DUPLICATE_MISMATCH"),
    ]
    assert (again.accepted, again.duplicates, again.declined) == (0, 4, 1)
    assert [item.txn_id for item in again.results] == [item.txn_id for item in first.results]
    assert till.card(card).balances.personal_minor == 50


def test_a_malformed_batch_is_refused_naming_the_field_and_applies_nothing(channel, settlement):
    till = Terminal(channel, station_id=7, terminal_id=703, operator_id=71, serial=100)
    card = 8800000000000003

    def batch(items, terminal_id=703, station_id=7):
        return lambda: settlement.BatchUpload(settlement_pb2.BatchUploadRequest(terminal_id=terminal_id, station_id=station_id, items=items))

    good = pay_request(till, 10, card, use_personal=True)
    refused(batch([]), "items")
    refused(batch([pay_request(till, 1, card) for _ in range(BATCH_UPLOAD_ITEMS_MAX + 1)]), "items")
    refused(batch([good], terminal_id=0), "terminal_id")
    refused(batch([good], terminal_id=limits.TERMINAL_ID_MAX + 1), "terminal_id")
    refused(batch([good], station_id=0), "station_id")
    other = Terminal(channel, station_id=7, terminal_id=704)
    refused(batch([good, pay_request(other, 10, card)]), "items[1].terminal.terminal_id")
    refused(batch([good, pay_request(till, 0, card)]), "items[1].amount_minor")
    missing = pay_request(till, 10, card)
    missing.terminal.serial = 0
    refused(batch([good, missing]), "items[1].terminal.serial")
    refused(batch([good, pay_request(till, 20, card), pay_request(till, 30, card, serial=good.terminal.serial)]),
            "items[2].terminal.serial")
    query = payment_pb2.QueryRequest(terminal_id=703, serial=good.terminal.serial)
    assert not till.payments.Query(query).found


def test_the_largest_answer_fits_the_message_limit():
    longest = max(RESULT_TEXT.values(), key=lambda text: len(text.encode()))
    item = settlement_pb2.BatchItemResult(serial=limits.SERIAL_MAX, status=settlement_pb2.DECLINED, result=max(ResultCode),
                                          result_text=longest, txn_id=2**64 - 1, amount_minor=limits.AMOUNT_MINOR_MAX,
                                          business_day=2**32 - 1)
    answer = settlement_pb2.BatchUploadAnswer(results=[item] * BATCH_UPLOAD_ITEMS_MAX, accepted=BATCH_UPLOAD_ITEMS_MAX,
                                              duplicates=BATCH_UPLOAD_ITEMS_MAX, declined=BATCH_UPLOAD_ITEMS_MAX)
    assert answer.ByteSize() <= limits.MESSAGE_BYTES_MAX


def test_under_terminal_auth_shifts_need_the_mac_and_batches_are_refused(secured):
    terminal, terminal_keys, channel = signed_on(secured, 104)
    signed = settlement_pb2_grpc.SettlementServiceStub(grpc.intercept_channel(channel, terminal_keys.interceptor()))
    plain = settlement_pb2_grpc.SettlementServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        plain.SignOn(settlement_pb2.SignOnRequest(terminal=terminal.context()))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert signed.SignOn(settlement_pb2.SignOnRequest(terminal=terminal.context())).result == R.APPROVED
    batch = settlement_pb2.BatchUploadRequest(terminal_id=104, station_id=12, items=[pay_request(terminal, 10, 6200000000000001)])
    with pytest.raises(grpc.RpcError) as caught:
        signed.BatchUpload(batch)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED and "no per-sale MAC" in caught.value.details()
    closed = signed.ShiftClose(settlement_pb2.ShiftCloseRequest(terminal=terminal.context()))
    assert closed.result == R.APPROVED and closed.terminal_id == 104 and closed.totals.sales_count == 0


# ------------------------------------------------------------------ a batch cut short


KILL_ATTEMPTS = 4
KILL_ITEMS = BATCH_UPLOAD_ITEMS_MAX
KILL_AMOUNT_MINOR = 10


def upload_until_killed(process: ServerProcess, batch, first_serial: int) -> None:
    """Send the batch and SIGKILL the server as soon as its first item is
    applied (a batch takes several commits: the rest is still to come)."""
    sender = process.channel()
    failure = []

    def send():
        try:
            settlement_pb2_grpc.SettlementServiceStub(sender).BatchUpload(batch, timeout=30)
        except grpc.RpcError as error:
            failure.append(error.code())

    thread = threading.Thread(target=send)
    thread.start()
    watcher = process.channel()
    query = payment_pb2.QueryRequest(terminal_id=801, serial=first_serial)
    deadline = time.monotonic() + 20
    while not Terminal(watcher).payments.Query(query).found:
        assert time.monotonic() < deadline, "the batch never started"
    process.kill()
    thread.join(30)
    watcher.close()
    sender.close()


def applied_serials(channel, serials) -> set:
    payments = Terminal(channel).payments
    return {serial for serial in serials if payments.Query(payment_pb2.QueryRequest(terminal_id=801, serial=serial)).found}


def test_a_batch_cut_short_by_sigkill_is_completed_on_retry_each_sale_exactly_once(tmp_path):
    data_dir = str(tmp_path / "data")
    card = 8800000000000004
    funded = KILL_ATTEMPTS * KILL_ITEMS * KILL_AMOUNT_MINOR + 1_000
    process = ServerProcess(data_dir, demo=False).start()
    setup = process.channel()
    open_card(setup, card, fleet=funded)
    setup.close()
    sent_serials = []
    for attempt in range(KILL_ATTEMPTS):
        serials = list(range(attempt * 10_000 + 1, attempt * 10_000 + KILL_ITEMS + 1))
        items = [payment_pb2.PayRequest(
            terminal=common_pb2.TerminalContext(station_id=8, terminal_id=801, serial=serial, operator_id=81),
            amount_minor=KILL_AMOUNT_MINOR, plan=payment_pb2.PaymentPlan(card_id=card, use_fleet=True)) for serial in serials]
        batch = settlement_pb2.BatchUploadRequest(terminal_id=801, station_id=8, items=items)
        upload_until_killed(process, batch, serials[0])
        process = ServerProcess(data_dir, demo=False).start()
        channel = process.channel()
        before = applied_serials(channel, serials)
        sent_serials.extend(serials)
        retried = settlement_pb2_grpc.SettlementServiceStub(channel).BatchUpload(batch, timeout=30)
        assert {item.serial for item in retried.results if item.status == settlement_pb2.DUPLICATE} == before
        assert {item.serial for item in retried.results if item.status == settlement_pb2.ACCEPTED} == set(serials) - before
        assert (retried.duplicates, retried.accepted, retried.declined) == (len(before), KILL_ITEMS - len(before), 0)
        balance = Terminal(channel).card(card).balances.fleet_minor
        assert balance == funded - len(sent_serials) * KILL_AMOUNT_MINOR
        channel.close()
        if 0 < len(before) < KILL_ITEMS:
            break  # cut short, completed on retry: proven
    else:
        pytest.fail(f"the server never died mid-batch in {KILL_ATTEMPTS} attempts")
    assert process.stop() == 0

    ledger = open_ledger(data_dir, "reference")
    try:
        txn_ids = [ledger.idem(801, serial).result.txn_id for serial in sent_serials]
        assert len(set(txn_ids)) == len(sent_serials) and 0 not in txn_ids
        sales = [record for record in map(ledger.txn, txn_ids) if record.kind == OpKind.PAY and record.terminal_id == 801]
        assert len(sales) == len(sent_serials)
        wanted, moved = set(txn_ids), collections.Counter()
        for entry in ledger.journal():
            if entry.txn_id in wanted and entry.movement == Movement.FLEET:
                moved[entry.txn_id] += entry.amount
        assert set(moved.values()) == {KILL_AMOUNT_MINOR} and len(moved) == len(sent_serials)
        assert ledger.account(AccountKind.FLEET, card).balance == funded - len(sent_serials) * KILL_AMOUNT_MINOR
    finally:
        ledger.store.close()
