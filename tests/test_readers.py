"""The server's reader processes (server/readers.py) over a real LMDB
directory: they see what this process commits after they started, answer
what the same reads in this process answer (takings, a card's page, a
station's day with its shifts), yield the CPU to everything else, a
long read (an export, a day's totals) has a process of its own that a
page's read does not wait for, and a reader that dies is replaced. Who may ask for what is the services' to
check: tests/test_report_service.py asks through a real server."""

import asyncio
import os
import signal
import time

import pytest

from core import card_txns
from core.ledger import Ledger, business_day, load_kernel
from core.records import Op
from core.results import AccountKind, CardType, OpKind, ResultCode
from core.settlement import shifts as shift_totals
from core.settlement.clearing import clear_day
from core.store import open_store
from server.priority import NICENESS
from server.readers import (Readers, read_card_transactions, read_open_holds, read_station_day, read_takings,
                            read_takings_answer, with_fields)
from server.report_messages import totals_message, transaction_message
from tally.v1 import report_pb2
from tests.ledger_driver import Driver

CARD = 4_100_000_000_000_001


@pytest.fixture
def ledger(tmp_path):
    store = open_store(str(tmp_path / "data"), 64 * 1024 * 1024)
    ledger = Ledger(store, load_kernel("auto"))
    yield ledger
    store.close()


def top_up(ledger: Ledger, station_id: int, serial: int, amount_minor: int, open_card: bool = False):
    now_ms = time.time_ns() // 1_000_000
    ops = [Op(kind=OpKind.OPEN_CARD, card_id=CARD, card_status=CardType.PERSONAL)] if open_card else []
    ops.append(Op(kind=OpKind.TOPUP, terminal_id=1, station_id=station_id, serial=serial, card_id=CARD,
                  account_kind=AccountKind.PERSONAL, amount=amount_minor))
    ledger.apply(ops, now_ms, business_day(now_ms))
    return business_day(now_ms)


def test_takings_read_in_a_reader_follow_what_is_committed_after_it_started(ledger):
    today = top_up(ledger, 12, 1, 5_000, open_card=True)

    async def scenario():
        readers = Readers(ledger.store)
        try:
            first, read_first = await readers.run(read_takings, today, today, None)
            assert tuple(first) == clear_day(ledger.store, today).lines
            top_up(ledger, 13, 2, 700)
            second, read_second = await readers.run(read_takings, today, today, None)
            assert tuple(second) == clear_day(ledger.store, today).lines
            assert {line.station_id for line in second} == {12, 13} and read_second > read_first
            only_13, _ = await readers.run(read_takings, today, today, {13})
            assert [line.station_id for line in only_13] == [13] and only_13[0].out_minor == 700
            holds = await readers.run(read_open_holds, 0, None, 10)
            assert holds.count == 0 and not holds.holds
        finally:
            readers.close()

    asyncio.run(scenario())


def test_a_reader_runs_at_a_lower_priority_and_one_that_died_is_replaced(ledger):
    async def scenario():
        readers = Readers(ledger.store)
        try:
            assert await readers.run(os.nice, 0) == NICENESS
            if hasattr(os, "SCHED_IDLE"):
                assert await readers.run(os.sched_getscheduler, 0) == os.SCHED_IDLE
            pid = await readers.run(os.getpid)
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            replaced = await readers.run(os.getpid)
            assert replaced not in (pid, os.getpid())
        finally:
            readers.close()

    asyncio.run(scenario())


def books_with_three_sales(tmp_path, first_amount_minor: int) -> tuple:
    """(store, driver, the sales' results): CARD opened and three sales on it at station 12,
    terminal 7, of first_amount_minor and the two amounts above it."""
    store = open_store(str(tmp_path / "data"), 64 * 1024 * 1024)
    books = Driver(Ledger(store, load_kernel("auto")))
    books.open_card(CARD, personal=50_000)
    assert books.one(books.request(OpKind.SIGN_ON, station_id=12, terminal_id=7)).code == ResultCode.APPROVED
    sales = [books.pay(CARD, first_amount_minor + index, station_id=12, terminal_id=7) for index in range(3)]
    assert all(sale.code == ResultCode.APPROVED for sale in sales)
    return store, books, sales


def test_a_cards_page_and_a_stations_day_read_in_a_reader_are_those_read_here(tmp_path):
    store, books, sales = books_with_three_sales(tmp_path, 1_000)
    assert books.pay(CARD, 999, station_id=13, terminal_id=8).code == ResultCode.APPROVED  # not station 12's

    async def scenario():
        readers = Readers(store)
        try:
            page = await readers.run(read_card_transactions, CARD, sales[-1].txn_id, 2)
            day = await readers.run(read_station_day, 12, books.day)
            other_day = await readers.run(read_station_day, 14, books.day)
        finally:
            readers.close()
        return page, day, other_day

    page, day, other_day = asyncio.run(scenario())
    with store.env.begin() as txn:
        found, more = card_txns.page(txn, store, CARD, sales[-1].txn_id, 2)
    assert page == report_pb2.ListCardTransactionsAnswer(transactions=map(transaction_message, found), more=more)
    assert [item.txn_id for item in page.transactions] == [sales[1].txn_id, sales[0].txn_id] and page.more
    assert page.transactions[0].personal_minor == 1_001 and page.transactions[0].station_id == 12

    totals = shift_totals.day_totals(store, 12, books.day)
    assert day.station == totals_message(totals.station)
    assert day.station.sales_count == 3 and day.station.sales.personal_minor == 3_003
    assert [(part.terminal_id, part.totals.sales_count) for part in day.terminals] == [(7, 3)]
    assert [(part.operator_id, part.totals.sales_count) for part in day.operators] == [(7, 3)]
    (shift,) = day.shifts
    assert (shift.terminal_id, shift.operator_id, shift.closed_ms) == (7, 7, 0)
    assert shift.totals == totals_message(shift_totals.shift_totals(store, shift_totals.load_shift(store, 7)))
    assert day.day == books.day and day.closed_through_day == 0 and not day.currency, "the service adds the currency"
    assert other_day.station.sales_count == 0 and not other_day.shifts and not other_day.terminals
    store.close()


def test_a_long_read_runs_in_its_own_process_and_a_pages_read_does_not_wait_for_it(ledger):
    async def scenario():
        readers = Readers(ledger.store)
        try:
            short_pid = await readers.run(os.getpid)
            long_pid = await readers.run(os.getpid, long_read=True)
            assert len({short_pid, long_pid, os.getpid()}) == 3
            if hasattr(os, "SCHED_IDLE"):
                assert await readers.run(os.sched_getscheduler, 0, long_read=True) == os.SCHED_IDLE
            long_read = asyncio.ensure_future(readers.run(time.sleep, 3, long_read=True))
            await asyncio.sleep(0.2)
            holds = await asyncio.wait_for(readers.run(read_open_holds, 0, None, 10), 2)
            assert holds.count == 0 and not long_read.done(), "the page's read answered while the long one ran"
            await long_read
            os.kill(long_pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            assert await readers.run(os.getpid, long_read=True) not in (long_pid, short_pid)
            assert await readers.run(os.getpid) == short_pid, "the pages' reader lives on"
        finally:
            readers.close()

    asyncio.run(scenario())


def test_a_readers_answer_as_wire_bytes_parses_to_the_answer_built_here(tmp_path):
    """Readers.answer: the services return these bytes as the RPC's answer
    unparsed, so they must be the very answer the same read builds in the
    server's process; with_fields adds the service's own fields."""
    store, books, sales = books_with_three_sales(tmp_path, 2_000)
    reads = [(read_card_transactions, (CARD, 0, 2)), (read_station_day, (12, books.day)),
             (read_open_holds, (0, None, 10)), (read_takings_answer, (books.day, books.day, {12}))]

    async def scenario():
        readers = Readers(store)
        try:
            return [await readers.answer(read, *args) for read, args in reads]
        finally:
            readers.close()

    found = asyncio.run(scenario())
    try:
        import server.readers as readers_module

        readers_module._store = store  # the same reads, in this process
        for (read, args), wire in zip(reads, found):
            here = read(*args)
            assert isinstance(wire, bytes) and type(here).FromString(wire) == here, read.__name__
    finally:
        readers_module._store = None
        readers_module._today = None
    page = report_pb2.ListCardTransactionsAnswer.FromString(found[0])
    assert [item.txn_id for item in page.transactions] == [sales[2].txn_id, sales[1].txn_id] and page.more
    takings = report_pb2.GetTakingsAnswer.FromString(
        with_fields(found[3], report_pb2.GetTakingsAnswer(currency="CNY")))
    assert takings.currency == "CNY" and {line.station_id for line in takings.lines} == {12}
    assert takings.net_minor == sum(line.net_minor for line in takings.lines) > 0
    store.close()
