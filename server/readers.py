"""Reader processes: the back-office reads that take milliseconds, run off
the server's GIL.

Owns: Readers, a pool of READER_PROCESSES processes started on first use
(and another for the long reads, started on the first of them), each
opening the server's LMDB directory read-only (LMDB readers in other
processes see every committed write) at the lowest CPU priority
(server/priority.py), and the reads they do: a day's takings (today's kept
running in the reader, as core/settlement/takings.py keeps them), the open
pre-authorizations, the settlement queue's differences, a day's clearing
and files, a page of a card's transactions and a station's day with its
shifts. A reader returns plain records (msgspec structs, lists) or, where
building it is a loop over many records, the answer itself: as its wire
bytes (Readers.answer), which the service passes on as the RPC's answer
(server/rpc.py passing_bytes) after adding its own fields as bytes
(with_fields). The services check the caller before the read. The
messages are built by server/report_messages.py, as in the server.
Used by: server/report_service.py, server/settlement_service.py;
server/app.py starts nothing (the pool starts with the first read) and
closes it at shutdown.

Who may see what is still decided in the server, by the same rules as
every RPC (server/callers.py, server/scope.py): a service checks the
caller, then passes the reader what it may show (the set of stations it
sees, a DifferencesSeen), never a token.

Why processes: with Pay streaming at ~20,000 sales a second, today's
takings grow by ~30,000 journal entries a second, and reading them is a
Python loop of a few microseconds an entry. In a thread of the server that
loop held the server's GIL for tens of milliseconds per dashboard, and the
event loop serving Pay gave the GIL up at each of its system calls and
waited for it back: Pay's p99 tripled with the console in use (bench
console). In a reader process the loop takes only CPU, at the lowest
priority (server/priority.py), so where cores are short a page waits, not
a sale.
"""

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from core import card_txns
from core.records import Shift, Txn, decode, parse_hold_expiry_key, u32_key, u64_key
from core.settlement import queue
from core.settlement import shifts as shift_totals
from core.settlement.clearing import Clearing, clear_day
from core.settlement.model import DifferenceState
from core.settlement.takings import RunningTakings
from core.store import Store, open_store, rows
from server.priority import below_payments
from server.report_messages import clearing_lines, difference_message, totals_message, transaction_message
from tally.v1 import report_pb2, settlement_pb2

READER_PROCESSES = 1

# ---------------------------------------------------------------- the reader's side
# The state of one reader process, set by _start_reader.
_store: Store | None = None
_today: RunningTakings | None = None


def _start_reader(path: str, map_size_bytes: int):
    from server.console.serve import die_with_parent

    global _store
    die_with_parent()  # a server killed leaves no reader behind
    below_payments()  # like the console's process: payments first
    _store = open_store(path, map_size_bytes, readonly=True)


def read_takings(day: int, today: int, stations: set[int] | None):
    """(clearing lines of `day`, journal entries read): today's from the
    running sums, at `stations` (None: all), a past day's cleared afresh,
    all of them (read_takings_answer keeps those the caller sees)."""
    global _today
    if day != today:
        return clear_day(_store, day).lines, 0
    if _today is None or _today.day != day:
        _today = RunningTakings(day)
    return _today.lines(_store, stations)


def read_takings_answer(day: int, today: int, seen: set[int] | None) -> report_pb2.GetTakingsAnswer:
    """The takings of `day` at the stations of `seen` (None: all) as the
    answer (the service adds the currency): its hundred-odd lines built
    here, not under the server's GIL."""
    lines, read = read_takings(day, today, seen)
    listed = clearing_lines(lines, seen)
    return report_pb2.GetTakingsAnswer(day=day, lines=listed, net_minor=sum(line.net_minor for line in listed),
                                       journal_entries=read)


def read_open_holds(station_id: int, stations: set[int] | None, limit: int) -> report_pb2.ListOpenHoldsAnswer:
    """The open holds at station_id (0: any) among `stations` (None: all):
    their count and sum, and the first `limit` of them by expiry."""
    answer = report_pb2.ListOpenHoldsAnswer()
    with _store.env.begin() as txn:
        for key in rows(txn, _store.hold_expiry, values=False):
            expires_ms, txn_id = parse_hold_expiry_key(key)
            value = txn.get(u64_key(txn_id), db=_store.txns)
            if value is None:
                continue
            record = decode(Txn, value)
            if station_id not in (0, record.station_id) or (stations is not None and record.station_id not in stations):
                continue
            held = record.held_fleet + record.held_personal + record.held_points_cash
            answer.count += 1
            answer.held_minor += held
            if len(answer.holds) < limit:
                answer.holds.add(txn_id=txn_id, card_id=record.card_id, station_id=record.station_id,
                                 terminal_id=record.terminal_id, held_minor=held, created_ms=record.created_ms,
                                 expires_ms=expires_ms)
            else:
                answer.truncated = True
    return answer


def read_card_transactions(card_id: int, before_txn_id: int, limit: int) -> report_pb2.ListCardTransactionsAnswer:
    """A page of the card's transactions (core/card_txns.py), as the answer."""
    with _store.env.begin() as txn:
        found, more = card_txns.page(txn, _store, card_id, before_txn_id, limit)
    return report_pb2.ListCardTransactionsAnswer(transactions=map(transaction_message, found), more=more)


def read_station_day(station_id: int, day: int) -> report_pb2.GetStationDayAnswer:
    """The station's totals of `day` (all, per terminal, per operator), the
    day it closed through and each of its terminals' shift totals, as the
    answer (the service adds the currency). A day's totals read every
    transaction of the day: at ~20,000 sales a second, millions."""
    with _store.env.begin() as txn:
        closed = txn.get(u32_key(station_id), db=_store.day_ends)
        station_shifts = [shift for shift in (decode(Shift, value) for _, value in rows(txn, _store.shifts))
                          if shift.station_id == station_id]
    totals = shift_totals.day_totals(_store, station_id, day)
    answer = report_pb2.GetStationDayAnswer(
        station_id=station_id, day=day, station=totals_message(totals.station),
        closed_through_day=0 if closed is None else int.from_bytes(closed, "little"))
    answer.terminals.extend(settlement_pb2.TerminalTotals(terminal_id=terminal_id, totals=totals_message(part))
                            for terminal_id, part in sorted(totals.by_terminal.items()))
    answer.operators.extend(settlement_pb2.OperatorTotals(operator_id=operator_id, totals=totals_message(part))
                            for operator_id, part in sorted(totals.by_operator.items()))
    for shift in sorted(station_shifts, key=lambda shift: shift.terminal_id):
        answer.shifts.add(terminal_id=shift.terminal_id, shift_id=shift.shift_id, operator_id=shift.operator_id,
                          opened_ms=shift.opened_ms, closed_ms=shift.closed_ms,
                          totals=totals_message(shift_totals.shift_totals(_store, shift)))
    return answer


def read_clearing(day: int) -> Clearing:
    return clear_day(_store, day)


def read_differences(filters: dict, limit: int, seen) -> settlement_pb2.ListDifferencesAnswer:
    """The answer listing the first `limit` differences matching `filters`
    that `seen` accepts, with how many open ones match them. Built here:
    a queue page's hundred messages cost the server's GIL about a
    millisecond to build."""
    listed = queue.differences(_store, **filters, limit=limit, seen=seen)
    open_filters = {**filters, "state": DifferenceState.OPEN}
    return settlement_pb2.ListDifferencesAnswer(differences=map(difference_message, listed),
                                                open=len(queue.differences(_store, **open_filters, seen=seen)))


def wire_bytes(read, *args) -> bytes:
    """read(*args)'s answer as its protobuf wire bytes, for Readers.answer."""
    return read(*args).SerializeToString()


def write_export(kind: int, day: int, stations, path: str):
    """The file of `kind` for `day` at `stations` (None: all) at `path`."""
    from core.settlement import export, report

    if kind == report_pb2.EXPORT_KIND_JOURNAL_CSV:
        export.export_day(_store, day, csv_path=path, stations=stations)
    elif kind == report_pb2.EXPORT_KIND_JOURNAL_PARQUET:
        export.export_day(_store, day, parquet_path=path, stations=stations)
    else:
        clearing = clear_day(_store, day)
        clearing = Clearing(day=day, lines=tuple(line for line in clearing.lines
                                                 if stations is None or line.station_id in stations))
        if kind == report_pb2.EXPORT_KIND_TAKINGS_CSV:
            report.write_takings_csv(clearing, path)
        else:
            report.plot_takings(clearing, path)


# ---------------------------------------------------------------- the server's side


def with_fields(wire: bytes, fields) -> bytes:
    """An answer's wire bytes with the fields set in `fields` (a message
    of the answer's type: the service's own, e.g. the currency) added:
    protobuf's wire format merges messages written one after the other,
    so the answer is not parsed to add them."""
    return wire + fields.SerializeToString()


class Readers:
    """The server's reader processes over `store`'s directory: `processes`
    for the reads a page waits for, and as many more, started on the first
    of them, for the long reads (long_read=True: a day's files, clearing or
    station totals, which read every transaction or journal entry of a day,
    seconds to minutes on a busy network), so that a card's page or the
    dashboard never waits behind an export."""

    def __init__(self, store: Store, processes: int = READER_PROCESSES):
        assert processes >= 1
        self.path = store.path
        self.map_size_bytes = store.env.info()["map_size"]
        self.processes = processes
        self._pools: dict[bool, ProcessPoolExecutor] = {}

    def _started(self, long_read: bool) -> ProcessPoolExecutor:
        pool = self._pools.get(long_read)
        if pool is None:
            # spawn: the server has gRPC's threads, which a fork would copy half-alive.
            pool = self._pools[long_read] = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_reader,
                initargs=(self.path, self.map_size_bytes))
        return pool

    async def run(self, read, *args, long_read: bool = False):
        """read(*args) in a reader process (one of the long reads' if
        long_read); a reader that died (killed, out of memory) is replaced
        and the read tried once more."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._started(long_read), read, *args)
        except BrokenProcessPool:
            self._pools.pop(long_read).shutdown(wait=False, cancel_futures=True)
            return await loop.run_in_executor(self._started(long_read), read, *args)

    async def answer(self, read, *args, long_read: bool = False) -> bytes:
        """The wire bytes of the answer read(*args) builds in a reader: the
        service returns them as the RPC's answer (server/rpc.py
        passing_bytes), so the server's GIL neither parses the answer it
        receives from the reader nor serializes the one it sends; the
        bytes cross the pipe as bytes, not as a pickled message."""
        return await self.run(wire_bytes, read, *args, long_read=long_read)

    def close(self):
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools.clear()
