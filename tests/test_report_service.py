"""ReportService over a real server on 127.0.0.1: a card's transactions
read from its accounts' journal chains (core/card_txns.py),
today's takings by station and method, open holds, a station's day, a day's
files, the store's health; a token always, and each caller's subtree only."""

import asyncio
import csv
import io
import itertools

import grpc
import pytest

from core import card_txns
from core.ledger import Ledger, load_kernel
from core.records import Op, Txn, decode
from core.results import AccountKind, CardType, OpKind, ResultCode
from core.store import open_store
from tally.v1 import card_pb2, common_pb2, payment_pb2, report_pb2, report_pb2_grpc
from tests.support import ServerProcess, Terminal
from tests.test_admin_service import AdminClient, refused, seed_directory

CARD = 7_100_000_000_000_001  # issued by station 12 (Acme)
PLATED_CARD = 7_100_000_000_000_002  # a fleet card of station 13 (Acme) with a plate
OTHER_CARD = 7_100_000_000_000_051  # issued by station 51 (Other)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("report") / "data")
    seed_directory(data_dir).store.close()
    process = ServerProcess(data_dir, "--back-office-auth", demo=False).start()
    root, other = AdminClient(process.channel(), "root"), AdminClient(process.channel(), "other")
    for client, card_id, org_id in ((root, CARD, 12), (other, OTHER_CARD, 51)):
        client.IssueCard(card_id=card_id, org_id=org_id, card_type=card_pb2.PERSONAL_CARD)
        client.ActivateCard(card_id=card_id)
        client.TopUpCard(card_id=card_id, account=common_pb2.PERSONAL, amount_minor=100_000, request_id=1)
    root.IssueCard(card_id=PLATED_CARD, org_id=13, card_type=card_pb2.COMPANY, vehicle_plate="京A-12345")
    yield process
    process.stop()


def reports(server, username: str | None):
    stub = report_pb2_grpc.ReportServiceStub(server.channel())
    metadata = () if username is None else (("authorization", f"Bearer {AdminClient(server.channel(), username).token}"),)
    return lambda rpc, request: getattr(stub, rpc)(request, metadata=metadata)


SERIALS = itertools.count(1)


def pay_at_station_12(server, amount_minor: int, card_id: int = CARD):
    answer, _ = Terminal(server.channel(), station_id=12, terminal_id=1201).pay(
        amount_minor, card_id=card_id, serial=next(SERIALS), use_fleet=False, use_personal=True)
    assert answer.result == common_pb2.APPROVED, answer.result_text
    return answer


def test_a_cards_transactions_newest_first_by_page_and_only_in_the_callers_subtree(server):
    sale = pay_at_station_12(server, 2_345)
    call = reports(server, "desk")  # customer service of Acme's headquarters
    listed = call("ListCardTransactions", report_pb2.ListCardTransactionsRequest(card_id=CARD)).transactions
    assert [(item.kind, item.state) for item in listed[:2]] == [("PAY", "POSTED"), ("TOPUP", "POSTED")]
    assert listed[0].txn_id == sale.txn_id and listed[0].personal_minor == 2_345 and listed[0].station_id == 12
    assert listed[1].personal_minor == 100_000 and listed[1].terminal_id == 0, "a back-office top-up has no terminal"
    first = call("ListCardTransactions", report_pb2.ListCardTransactionsRequest(card_id=CARD, limit=1))
    assert [item.txn_id for item in first.transactions] == [sale.txn_id] and first.more
    rest = call("ListCardTransactions", report_pb2.ListCardTransactionsRequest(
        card_id=CARD, limit=1, before_txn_id=sale.txn_id))
    assert [item.kind for item in rest.transactions] == ["TOPUP"] and not rest.more
    # Another domain's card is as unknown as a card nobody has.
    missing = refused(lambda: call("ListCardTransactions", report_pb2.ListCardTransactionsRequest(card_id=OTHER_CARD)),
                      grpc.StatusCode.NOT_FOUND)
    assert missing == f"card {OTHER_CARD} not found"
    assert "card_id" in refused(lambda: call("ListCardTransactions", report_pb2.ListCardTransactionsRequest()),
                                grpc.StatusCode.INVALID_ARGUMENT)
    assert "limit" in refused(lambda: call("ListCardTransactions", report_pb2.ListCardTransactionsRequest(
        card_id=CARD, limit=1001)), grpc.StatusCode.INVALID_ARGUMENT)


def test_every_rpc_needs_a_token_of_an_allowed_role(server):
    anonymous = reports(server, None)
    refused(lambda: anonymous("GetTakings", report_pb2.GetTakingsRequest()), grpc.StatusCode.UNAUTHENTICATED)
    refused(lambda: anonymous("ListCardTransactions", report_pb2.ListCardTransactionsRequest(card_id=CARD)),
            grpc.StatusCode.UNAUTHENTICATED)
    desk = reports(server, "desk")
    refused(lambda: desk("GetTakings", report_pb2.GetTakingsRequest()), grpc.StatusCode.PERMISSION_DENIED)
    auditor = reports(server, "auditor")
    refused(lambda: auditor("GetStoreStatus", report_pb2.GetStoreStatusRequest()), grpc.StatusCode.PERMISSION_DENIED)
    status = reports(server, "root")("GetStoreStatus", report_pb2.GetStoreStatusRequest())
    assert status.writes_accepted and status.transactions > 0 and 0 < status.used_bytes <= status.map_size_bytes
    assert status.replication == "standalone" and status.kernel in ("cython", "reference")


def test_takings_follow_each_sale_and_show_only_the_callers_stations(server):
    root = reports(server, "root")
    before = root("GetTakings", report_pb2.GetTakingsRequest())
    personal = {line.station_id: line.in_minor for line in before.lines if line.method == "personal"}
    pay_at_station_12(server, 1_000)
    after = root("GetTakings", report_pb2.GetTakingsRequest())
    assert after.day == before.day and after.journal_entries > before.journal_entries
    assert {line.station_id: line.in_minor for line in after.lines if line.method == "personal"}[12] == \
        personal.get(12, 0) + 1_000
    assert after.net_minor == sum(line.net_minor for line in after.lines) and after.currency == "CNY"
    # The other domain's administrator sees none of Acme's stations.
    other = reports(server, "other")("GetTakings", report_pb2.GetTakingsRequest())
    assert {line.station_id for line in other.lines} <= {51}
    assert "day" in refused(lambda: root("GetTakings", report_pb2.GetTakingsRequest(day=10**6)),
                            grpc.StatusCode.INVALID_ARGUMENT)


def test_open_holds_and_a_stations_day_so_far(server):
    terminal = Terminal(server.channel(), station_id=12, terminal_id=1202)
    held = terminal.payments.PreAuthorize(payment_pb2.PreAuthorizeRequest(
        terminal=terminal.context(), card_id=CARD, amount_minor=5_000))
    assert held.result == common_pb2.APPROVED
    holds = reports(server, "north-ops")("ListOpenHolds", report_pb2.ListOpenHoldsRequest(station_id=12))
    assert [(hold.txn_id, hold.card_id, hold.held_minor) for hold in holds.holds] == [(held.txn_id, CARD, 5_000)]
    assert holds.count == 1 and holds.held_minor == 5_000
    nothing = reports(server, "other")("ListOpenHolds", report_pb2.ListOpenHoldsRequest())
    assert nothing.count == 0
    refused(lambda: reports(server, "other")("ListOpenHolds", report_pb2.ListOpenHoldsRequest(station_id=12)),
            grpc.StatusCode.NOT_FOUND)
    day = reports(server, "root")("GetStationDay", report_pb2.GetStationDayRequest(station_id=12))
    assert day.station.sales_count >= 1 and day.station.sales.personal_minor >= 2_345
    assert 1201 in [part.terminal_id for part in day.terminals] and day.closed_through_day == 0
    refused(lambda: reports(server, "other")("GetStationDay", report_pb2.GetStationDayRequest(station_id=12)),
            grpc.StatusCode.NOT_FOUND)


def test_a_days_files_hold_only_the_callers_stations(server):
    pay_at_station_12(server, 777)
    root = reports(server, "root")
    today = root("GetTakings", report_pb2.GetTakingsRequest()).day

    def download(call, kind):
        chunks = list(call("ExportDay", report_pb2.ExportDayRequest(day=today, kind=kind)))
        return chunks[0].file_name, chunks[0].media_type, b"".join(chunk.data for chunk in chunks)

    name, media_type, data = download(root, report_pb2.EXPORT_KIND_JOURNAL_CSV)
    assert name.startswith("journal-") and name.endswith(".csv") and media_type == "text/csv"
    journal = list(csv.DictReader(io.StringIO(data.decode())))
    assert journal and {row["station_id"] for row in journal} <= {"12", "13", "2", "1"}
    _, _, other_data = download(reports(server, "other"), report_pb2.EXPORT_KIND_JOURNAL_CSV)
    assert all(row["station_id"] == "51" for row in csv.DictReader(io.StringIO(other_data.decode())))
    _, media_type, png = download(root, report_pb2.EXPORT_KIND_TAKINGS_PNG)
    assert media_type == "image/png" and png.startswith(b"\x89PNG")
    _, _, parquet = download(root, report_pb2.EXPORT_KIND_JOURNAL_PARQUET)
    assert parquet.startswith(b"PAR1")
    assert "kind" in refused(lambda: download(root, report_pb2.EXPORT_KIND_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT)


def test_cards_are_found_by_vehicle_plate_whatever_its_spelling(server):
    root = AdminClient(server.channel(), "root")
    found = root.ListCardRecords(vehicle_plate="京a 12345").cards
    assert [card.card_id for card in found] == [PLATED_CARD]
    assert not root.ListCardRecords(vehicle_plate="京A-99999").cards
    assert not AdminClient(server.channel(), "other").ListCardRecords(vehicle_plate="京A12345").cards


@pytest.mark.parametrize("kernel", ["reference", "cython"])
def test_a_cards_pages_list_every_posted_transaction_in_id_order_even_one_posted_late(tmp_path, kernel):
    """core/card_txns.py walks the card's account chains: a pre-authorization
    completed after newer sales still takes its place by id, and paging by
    before_txn_id meets every transaction once; another card's never."""
    store = open_store(str(tmp_path / "data"), 2**28)
    ledger = Ledger(store, load_kernel(kernel))
    now_ms, day = 1_780_000_000_000, 20_600
    card, other = 11, 12

    def apply(ops, at_ms):
        results = ledger.apply(ops, at_ms, day)
        assert all(result.code == ResultCode.APPROVED for result in results), results
        return results

    serials = itertools.count(1)

    def topup(card_id, amount):
        return Op(kind=OpKind.TOPUP, terminal_id=9, station_id=1, serial=next(serials), card_id=card_id,
                  account_kind=AccountKind.PERSONAL, amount=amount)

    apply([Op(kind=OpKind.OPEN_CARD, card_id=c, card_status=CardType.PERSONAL) for c in (card, other)], now_ms)
    apply([topup(card if n % 3 else other, 1_000 + n) for n in range(1, 10)], now_ms + 1)
    (hold,) = apply([Op(kind=OpKind.PREAUTH, terminal_id=9, station_id=1, serial=next(serials), card_id=card,
                        amount=500, hold_timeout_s=600)], now_ms + 2)
    apply([topup(card, 2_000 + n) for n in range(1, 6)], now_ms + 3)

    def all_pages(limit):
        listed, before = [], 0
        while True:
            with store.env.begin() as txn:
                found, more = card_txns.page(txn, store, card, before, limit)
            listed += [record.txn_id for record in found]
            if not more:
                return listed
            before = found[-1].txn_id

    open_hold_hidden = all_pages(2)
    assert hold.txn_id not in open_hold_hidden, "a hold posts nothing until completed"
    apply([Op(kind=OpKind.COMPLETE, terminal_id=9, station_id=1, serial=next(serials), ref_txn_id=hold.txn_id,
              amount=400)], now_ms + 4)
    with store.env.begin() as txn:
        expected = sorted((record.txn_id for record in map(lambda value: decode(Txn, value),
                                                            txn.cursor(db=store.txns).iternext(keys=False))
                           if record.card_id == card), reverse=True)
    assert hold.txn_id in expected and len(expected) == 6 + 5 + 1
    for limit in (1, 2, 5, 1000):
        assert all_pages(limit) == expected
    with store.env.begin() as txn:
        first, more = card_txns.page(txn, store, card, 0, 3)
    assert [record.txn_id for record in first] == expected[:3] and more
    store.close()
