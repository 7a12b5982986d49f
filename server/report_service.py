"""ReportService over gRPC: read-only views of the books for the back office.

Owns: the handlers of tally.v1.ReportService (proto/tally/v1/report.proto):
a card's transactions (core/card_txns.py), a day's takings kept up to date
(core/settlement/takings.py), the open pre-authorizations, a station's day
and shifts so far (core/settlement/shifts.py), a day's files
(core/settlement/export.py, report.py) and the store's health. Nothing
here writes. The reads (a card's page, takings, open holds, a station's
day, files) run in the server's reader processes (server/readers.py), off
the GIL Pay's event loop needs; the store's health in a worker thread; none
on the event loop.
Used by: server/app.py; the web console (server/console/) calls it with the
logged-in user's token like any client.

Who may call what is server/callers.py's table (a token always, like
AdminService); what an answer shows is the caller's subtree: a card as
server/scope.py card_seen decides for every RPC, and every list and sum
keeps only the stations of the caller's subtree (core/admin/access.py
subtree).
"""

import asyncio
import datetime
import os
import tempfile

import numpy as np

from core import card_txns, limits
from core.admin.access import require_visible, subtree
from core.commit import GroupCommitter
from core.errors import InvalidInput, NotFound
from core.ledger import Ledger, business_day
from core.store import entries
from server import answers
from server.readers import (Readers, read_card_transactions, read_open_holds, read_station_day, read_takings_answer,
                            with_fields, write_export)
from server.callers import staff_actor
from server.scope import card_seen
from tally.v1 import report_pb2, report_pb2_grpc

OPEN_HOLDS_LISTED_DEFAULT = 100
OPEN_HOLDS_LISTED_MAX = 1000
EXPORT_CHUNK_BYTES = 32 * 1024
# The file name and media type of each export, by kind.
EXPORT_FILES = {
    report_pb2.EXPORT_KIND_JOURNAL_CSV: ("journal-{date}.csv", "text/csv"),
    report_pb2.EXPORT_KIND_JOURNAL_PARQUET: ("journal-{date}.parquet", "application/vnd.apache.parquet"),
    report_pb2.EXPORT_KIND_TAKINGS_CSV: ("takings-{date}.csv", "text/csv"),
    report_pb2.EXPORT_KIND_TAKINGS_PNG: ("takings-{date}.png", "image/png"),
}


class ReportService(report_pb2_grpc.ReportServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, readers: Readers, replica=None):
        self.ledger = ledger
        # The reads that take milliseconds run there (server/readers.py).
        self.readers = readers
        # The node of --replicate (core/replication), None when standalone.
        self.replica = replica
        self.store = ledger.store
        self.committer = committer

    def today(self) -> int:
        return business_day(self.committer.clock(), self.committer.utc_offset_minutes)

    def _day(self, day: int, field: str = "day") -> int:
        """day, 0 meaning today, within 1 .. tomorrow (a station may be a day ahead)."""
        today = self.today()
        if not 0 <= day <= today + 1:
            raise InvalidInput(field, f"must be within 1 .. {today + 1} (days since 1970-01-01; 0: today), got {day}")
        return day or today

    def _seen(self, txn) -> set[int] | None:
        """The organisations (stations among them) the caller sees; None: all."""
        return subtree(txn, self.store, staff_actor())

    # ------------------------------------------------------------ cards

    async def ListCardTransactions(self, request, context):
        if not 1 <= request.card_id <= limits.CARD_ID_MAX:
            raise InvalidInput("card_id", f"must be within 1 .. {limits.CARD_ID_MAX}, got {request.card_id}")
        if request.limit > card_txns.PAGE_TXNS_MAX:
            raise InvalidInput("limit", f"must be within 0 .. {card_txns.PAGE_TXNS_MAX}, got {request.limit}")
        limit = request.limit or card_txns.PAGE_TXNS_DEFAULT
        # The one card-visibility check of the API (as for GetCard, GetPoints).
        if not card_seen(self.store, request.card_id):
            raise NotFound(f"card {request.card_id} not found")

        return await self.readers.answer(read_card_transactions, request.card_id, request.before_txn_id, limit)

    # ------------------------------------------------------------ takings and holds

    async def GetTakings(self, request, context):
        day = self._day(request.day)
        with self.store.env.begin() as txn:
            seen = self._seen(txn)
        today = self.today()
        # A past day is cleared afresh (clear_day): a long read.
        answer = await self.readers.answer(read_takings_answer, day, today, seen, long_read=day != today)
        return with_fields(answer, report_pb2.GetTakingsAnswer(currency=answers.currency()))

    async def ListOpenHolds(self, request, context):
        if request.limit > OPEN_HOLDS_LISTED_MAX:
            raise InvalidInput("limit", f"must be within 0 .. {OPEN_HOLDS_LISTED_MAX}, got {request.limit}")
        limit = request.limit or OPEN_HOLDS_LISTED_DEFAULT
        with self.store.env.begin() as txn:
            if request.station_id:
                require_visible(txn, self.store, staff_actor(), request.station_id, "station")
            seen = self._seen(txn)
        answer = await self.readers.answer(read_open_holds, request.station_id, seen, limit)
        return with_fields(answer, report_pb2.ListOpenHoldsAnswer(currency=answers.currency()))

    # ------------------------------------------------------------ a station's day

    async def GetStationDay(self, request, context):
        day = self._day(request.day)
        with self.store.env.begin() as txn:
            require_visible(txn, self.store, staff_actor(), request.station_id, "station")
        answer = await self.readers.answer(read_station_day, request.station_id, day, long_read=True)
        return with_fields(answer, report_pb2.GetStationDayAnswer(currency=answers.currency()))

    # ------------------------------------------------------------ files

    async def ExportDay(self, request, context):
        if request.kind not in EXPORT_FILES:
            raise InvalidInput("kind", f"must be one of {', '.join(report_pb2.ExportKind.Name(k) for k in EXPORT_FILES)}")
        if not 1 <= request.day <= self.today():
            raise InvalidInput("day", f"must be within 1 .. {self.today()} (days since 1970-01-01), got {request.day}")
        with self.store.env.begin() as txn:
            seen = self._seen(txn)
        name, media_type = EXPORT_FILES[request.kind]
        file_name = name.format(date=datetime.date(1970, 1, 1) + datetime.timedelta(days=request.day))
        with tempfile.TemporaryDirectory(prefix="tally-export-") as directory:
            path = os.path.join(directory, file_name)
            stations = None if seen is None else np.fromiter(sorted(seen), dtype=np.uint32)
            await self.readers.run(write_export, request.kind, request.day, stations, path, long_read=True)
            first = True
            with open(path, "rb") as file:
                while True:
                    data = await asyncio.to_thread(file.read, EXPORT_CHUNK_BYTES)
                    if not data and not first:
                        return
                    yield report_pb2.ExportDayChunk(data=data, file_name=file_name if first else "",
                                                    media_type=media_type if first else "")
                    first = False

    # ------------------------------------------------------------ the store

    async def GetStoreStatus(self, request, context):
        def read():
            info, stat = self.store.env.info(), self.store.env.stat()
            with self.store.env.begin() as txn:
                return report_pb2.GetStoreStatusAnswer(
                    writes_accepted=self.committer.store_full is None,
                    store_full_reason=self.committer.store_full or "", map_size_bytes=info["map_size"],
                    used_bytes=(info["last_pgno"] + 1) * stat["psize"], transactions=entries(txn, self.store.txns),
                    journal_entries=entries(txn, self.store.journal), queue_length=self.committer.queue_length,
                    queue_length_max=self.committer.queue_length_max, kernel=self.ledger.kernel_name,
                    replication="standalone" if self.replica is None else self.replica.role.name.lower())

        return await asyncio.to_thread(read)


def add_report_service(server, ledger: Ledger, committer: GroupCommitter, readers: Readers, replica=None):
    report_pb2_grpc.add_ReportServiceServicer_to_server(ReportService(ledger, committer, readers, replica), server)


SERVICE_NAMES = (report_pb2.DESCRIPTOR.services_by_name["ReportService"].full_name,)
