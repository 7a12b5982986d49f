"""The server's reader processes (server/readers.py) over a real LMDB
directory: they see what this process commits after they started, answer
what the same reads in this process answer, yield the CPU, and a reader
that dies is replaced."""

import asyncio
import os
import signal
import time

import pytest

from core.ledger import Ledger, business_day, load_kernel
from core.records import Op
from core.results import AccountKind, CardType, OpKind
from core.settlement.clearing import clear_day
from core.store import open_store
from server.readers import NICENESS, Readers, read_open_holds, read_takings

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
            assert await readers.run(os.nice, 0) == min(os.nice(0) + NICENESS, 19)
            pid = await readers.run(os.getpid)
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            replaced = await readers.run(os.getpid)
            assert replaced not in (pid, os.getpid())
        finally:
            readers.close()

    asyncio.run(scenario())
