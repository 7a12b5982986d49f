"""SettlementService: statements, reconciliation, the error queue, clearing.

Owns: the RPC handlers of tally.v1.SettlementService. Each one validates,
runs core.settlement (LMDB reads and writes of the settlement databases) in
a worker thread so that the event loop keeps serving payments, and answers;
the reads that grow with the books (the queue's differences, a day's
clearing) run in the server's reader processes (server/readers.py).
An ADJUST resolution posts its correcting transfer through the group
commit, like any other ledger write.
Shifts, day-end and offline batches (SignOn, ShiftClose, DayEnd,
BatchUpload) are handled in server/shift_service.py; this class only
answers them with it.
Used by: server/app.py (registers it).

A statement the parser refuses is an answer (REJECTED, with the line and the
reason); malformed requests are INVALID_ARGUMENT naming the field; asking
for what does not exist (a statement not imported, an unknown difference) is
FAILED_PRECONDITION or NOT_FOUND with the reason.

Domains (core/domains.py): statements and reconciliation runs are a
headquarters domain's (its users read them, the headquarters' users import
and reconcile); a difference is seen by users whose subtree holds its
station (one at no known station by the headquarters' users); clearing
lists the caller's stations. The rest answers as an unknown id.
"""

import asyncio
import logging

import msgspec

from core.admin.access import Actor, subtree
from core.commit import GroupCommitter
from core.domains import Scope, settings_domain_of
from core.errors import InvalidInput
from core.ledger import Ledger, business_day
from core.results import Channel
from core.settlement import queue
from core.settlement.model import DifferenceState, ResolutionAction, parse_difference_key
from core.settlement.reconcile import WINDOW_MS_DEFAULT, WINDOW_MS_MAX
from core.settlement.statements import StatementError
from core.settlement.statements.common import STATEMENT_BYTES_MAX
from server import answers
from server.readers import Readers, read_clearing, read_differences
from server.report_messages import clearing_lines, difference_message
from server.scope import staff_scope
from server.shift_service import ShiftHandlers
from tally.v1 import settlement_pb2, settlement_pb2_grpc

log = logging.getLogger(__name__)

STATEMENT_CHANNELS = (Channel.BANK_CARD, Channel.WECHAT_PAY, Channel.ALIPAY)
CHUNK_BYTES_MAX = 32 * 1024
LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10_000
FILE_NAME_LENGTH_MAX = 200
DAY_MAX = 2**32 - 1


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(field, message)


def _day(value: int, field: str = "day") -> int:
    """A business day (days since 1970-01-01), with room for the day
    before and after that reconciliation reads."""
    if not 1 <= value < DAY_MAX:
        raise _invalid(field, f"must be within 1 .. {DAY_MAX - 1} (days since 1970-01-01), got {value}")
    return value


def _channel(value: int, field: str = "channel") -> int:
    if value not in STATEMENT_CHANNELS:
        raise _invalid(field, "BANK_CARD, WECHAT_PAY or ALIPAY")
    return value


def _text(value: str, field: str, length_max: int = queue.TEXT_LENGTH_MAX) -> str:
    if not value.strip() or len(value) > length_max:
        raise _invalid(field, f"required, 1 .. {length_max} characters")
    return value


# ------------------------------------------------------------------ messages


def status_message(run) -> settlement_pb2.ReconcileStatus:
    return settlement_pb2.ReconcileStatus(
        channel=run.channel, day=run.day, at_ms=run.at_ms, items_matched=run.items_matched, items_waiting=run.items_waiting,
        differences=run.differences,
        differences_by_kind=[settlement_pb2.DifferenceCount(kind=settlement_pb2.DifferenceKind.Value(kind), count=count)
                             for kind, count in run.differences_by_kind.items()],
        fees_minor=run.fees_minor, ours_minor=run.ours_minor, channel_minor=run.channel_minor,
        window_s=run.window_ms // 1000, statement_sha256=run.statement_sha256, org_id=run.domain,
    )


class DifferencesSeen:
    """seen(difference) for a staff caller below the network: its domain's,
    at a station of its subtree; at no known station, the headquarters'.
    A class, not a closure, so that a reader process can be given it."""

    __slots__ = ("domain", "whole_domain", "orgs")

    def __init__(self, scope: Scope):
        self.domain = scope.domain
        self.whole_domain = scope.org_id == scope.domain
        self.orgs = scope.orgs

    def __call__(self, found) -> bool:
        return found.domain == self.domain and (self.whole_domain or found.station_id in self.orgs)


def differences_seen(scope: Scope) -> DifferencesSeen | None:
    """seen(difference) for a staff caller (None: every one)."""
    return None if scope.everywhere else DifferencesSeen(scope)


# ------------------------------------------------------------------ service


class SettlementService(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, payments, readers: Readers):
        """payments: the server's PaymentService (server/payments.py), whose
        `pay` applies each item of a BatchUpload; readers: the server's
        reader processes (server/readers.py), for the queue and clearing."""
        self.ledger = ledger
        self.readers = readers
        self.store = ledger.store
        self.committer = committer
        self.shifts = ShiftHandlers(ledger, committer, payments)

    def _domain(self, org_id: int, change: bool) -> int:
        return settings_domain_of(self.store, staff_scope(self.store), org_id, change, "statements and reconciliation")

    async def ImportStatement(self, request_iterator, context):
        header, data = await self._read_statement(request_iterator)
        domain = self._domain(header.org_id, True)
        answer = settlement_pb2.ImportStatementAnswer(org_id=domain)
        try:
            result, record = await asyncio.to_thread(
                queue.import_statement, self.store, header.channel, data, header.file_name or "statement", header.by,
                day=header.day or None, replace=header.replace, writer=self.committer, domain=domain,
            )
        except StatementError as error:
            return settlement_pb2.ImportStatementAnswer(result=settlement_pb2.REJECTED, error_line=error.line, error_reason=error.reason,
                                                        org_id=domain)
        except queue.SettlementError as error:
            return settlement_pb2.ImportStatementAnswer(result=settlement_pb2.CONFLICT, error_reason=str(error), org_id=domain)
        answer.result = int(result)
        answer.sha256, answer.day, answer.rows = record.sha256, record.day, record.rows
        answer.payments_minor, answer.refunds_minor = record.totals.payments_minor, record.totals.refunds_minor
        answer.fees_minor = record.totals.fees_minor
        return answer

    async def _read_statement(self, request_iterator):
        header, parts, size = None, [], 0
        async for chunk in request_iterator:
            if chunk.HasField("header"):
                if header is not None:
                    raise _invalid("header", "only in the first message")
                header = chunk.header
            elif header is None:
                raise _invalid("header", "the first message must carry the header")
            if len(chunk.data) > CHUNK_BYTES_MAX:
                raise _invalid("data", f"at most {CHUNK_BYTES_MAX} bytes a message")
            size += len(chunk.data)
            if size > STATEMENT_BYTES_MAX:
                raise _invalid("data", f"a statement has at most {STATEMENT_BYTES_MAX} bytes")
            parts.append(chunk.data)
        if header is None:
            raise _invalid("header", "no message was sent")
        _channel(header.channel, "header.channel")
        _text(header.by, "header.by")
        if len(header.file_name) > FILE_NAME_LENGTH_MAX:
            raise _invalid("header.file_name", f"at most {FILE_NAME_LENGTH_MAX} characters")
        return header, b"".join(parts)

    async def Reconcile(self, request, context):
        channel = _channel(request.channel)
        window_ms = request.window_s * 1000 if request.window_s else WINDOW_MS_DEFAULT
        if window_ms > WINDOW_MS_MAX:
            raise _invalid("window_s", f"at most {WINDOW_MS_MAX // 1000}")
        domain = self._domain(request.org_id, True)
        run = await asyncio.to_thread(queue.reconcile_day, self.store, channel, _day(request.day), window_ms, txn_lookup=self.ledger.txn,
                                      writer=self.committer, domain=domain)
        return status_message(run)

    async def GetReconcileStatus(self, request, context):
        channels = [_channel(request.channel)] if request.channel else list(STATEMENT_CHANNELS)
        day = _day(request.day)
        domain = self._domain(request.org_id, False)
        runs = await asyncio.to_thread(lambda: [queue.last_run(self.store, channel, day, domain) for channel in channels])
        return settlement_pb2.ReconcileStatusAnswer(statuses=[status_message(run) for run in runs if run is not None])

    async def ListDifferences(self, request, context):
        channel = _channel(request.channel) if request.channel else None
        limit = request.limit or LIST_LIMIT_DEFAULT
        if limit > LIST_LIMIT_MAX:
            raise _invalid("limit", f"at most {LIST_LIMIT_MAX}")
        state = None if request.all_states else (request.state or DifferenceState.OPEN)
        day = _day(request.day) if request.day else None
        scope = staff_scope(self.store)
        # The open server lists every domain's unless one is named.
        domain = None if scope.everywhere and not request.org_id else self._domain(request.org_id, False)
        seen = differences_seen(scope)

        filters = {"day": day, "channel": channel, "state": state, "domain": domain}
        return await self.readers.answer(read_differences, filters, limit, seen)

    async def ResolveDifference(self, request, context):
        try:
            parse_difference_key(request.id)
        except ValueError as error:
            raise _invalid("id", str(error)) from None
        if request.action not in set(ResolutionAction):
            raise _invalid("action", "ACCEPT, ADJUST or REVERSE")
        _text(request.by, "by")
        _text(request.why, "why")
        now_ms = self.committer.clock()
        day = business_day(now_ms, self.committer.utc_offset_minutes)
        scope = staff_scope(self.store)
        seen = differences_seen(scope)
        if request.station_id:
            # An adjustment posts to a station's receivable: one of the caller's.
            scope.require(request.station_id, f"station {request.station_id} not found")

        def apply_in(txn, ops):
            return self.ledger.apply_in(txn, ops, now_ms, day)

        try:
            resolved = await asyncio.to_thread(
                queue.resolve, self.store, request.id, ResolutionAction(request.action), request.by, request.why,
                apply_in=apply_in, station_id=request.station_id, now_ms=now_ms, writer=self.committer, seen=seen,
            )
        except queue.SettlementError as error:
            current = await asyncio.to_thread(queue.difference, self.store, request.id, seen)
            return settlement_pb2.ResolveDifferenceAnswer(resolved=False, reason=str(error), difference=difference_message(current))
        return settlement_pb2.ResolveDifferenceAnswer(resolved=True, difference=difference_message(resolved))

    def _stations_seen(self, org_id: int) -> frozenset[int] | None:
        """The stations seen in clearing: the stations of org_id's subtree (0:
        the caller's; every station for the open server), which the caller
        must see; None: every station."""
        scope = staff_scope(self.store)
        if scope.everywhere and not org_id:
            return None
        with self.store.env.begin() as txn:
            target = scope.owner_for(txn, self.store, org_id)
            stations = frozenset(subtree(txn, self.store, Actor("clearing", target)))
        return stations

    async def GetClearing(self, request, context):
        seen = self._stations_seen(request.org_id)
        clearing = await self.readers.run(read_clearing, _day(request.day), long_read=True)
        lines = clearing_lines(clearing.lines, seen)
        discounts = [line for line in clearing.discounts if seen is None or line.station_id in seen]
        return settlement_pb2.ClearingAnswer(
            day=clearing.day, lines=lines,
            net_minor=clearing.net_minor if seen is None else sum(line.net_minor for line in lines),
            discounts=[settlement_pb2.DiscountLine(**msgspec.structs.asdict(line)) for line in discounts],
            currency=answers.currency(),
        )

    # ------------------------------------------------------------ shifts, days, offline batches

    async def SignOn(self, request, context):
        return await self.shifts.SignOn(request, context)

    async def ShiftClose(self, request, context):
        return await self.shifts.ShiftClose(request, context)

    async def DayEnd(self, request, context):
        return await self.shifts.DayEnd(request, context)

    async def BatchUpload(self, request, context):
        return await self.shifts.BatchUpload(request, context)
