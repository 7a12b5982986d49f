"""Shifts, day-end and offline batches: the terminal side of SettlementService.

Owns: the handlers of SignOn, ShiftClose, DayEnd and BatchUpload
(tally.v1.SettlementService): validation, the kernel operations SIGN_ON,
SHIFT_CLOSE and DAY_END through the group commit, their totals
(core/settlement/shifts.py, read in a worker thread), and applying an
offline batch's sales one by one through PaymentService.pay, the very path
of the Pay RPC (same validation, pricing, idempotency and result codes).
Used by: server/settlement_service.py (its RPC methods call these).
May call: core.settlement.shifts, server.requests (validation),
server.payments (pay), server.errors (statuses), server.scope (DayEnd closes
a station of the caller's subtree; a shift's totals are its terminal's own).

Offline batches. Each item is a Pay request with its own (terminal,
serial), so the kernel's idempotency applies it at most once, however often
the batch is sent: a batch cut short by a crash is completed by sending it
again, never doubled. An item is DUPLICATE when the kernel answered it from
the idempotency entry of an earlier request with the same (terminal, serial)
and content (the answer's `replayed` mark, set in the same write
transaction that found the entry): an earlier upload, the same sale sent
online, or another server process, whenever it committed. Uploads of one
terminal are serialised in this process, so a re-sent batch whose first
upload is still running waits for it.
"""

import asyncio
import logging
import weakref

from core import limits
from core.commit import GroupCommitter, QueueFull, ShuttingDown
from core.ledger import Ledger, business_day
from core.records import Op, Shift
from core.results import OpKind, ResultCode
from core.settlement.shifts import day_end_op, day_totals, load_shift, shift_totals
from server import answers, requests
from server.report_messages import totals_message
from server.scope import staff_scope
from server.answers import result_text
from core.errors import InvalidInput, ResourceExhausted, Unavailable
from tally.v1 import settlement_pb2

log = logging.getLogger(__name__)

# Items in one BatchUpload. The answer's worst case (every item declined
# with the longest reason, 64-bit serials and ids) must fit the 64 KiB
# message limit (core.limits.MESSAGE_BYTES_MAX): 500 items take about 63 KB.
# tests/test_settlement_rpc.py checks it.
BATCH_UPLOAD_ITEMS_MAX = 500
# Items of a batch in flight at once. They enter the group-commit queue in
# item order (each item's task submits before its first suspension), so the
# kernel applies them in the order the terminal approved them, and a window
# costs about one commit instead of one commit per item.
BATCH_UPLOAD_WINDOW = 64
BY_LENGTH_MAX = 500
# What an overloaded or stopping server advises a BatchUpload.
BATCH_RETRY_TEXT = "; send the whole batch again: items applied already answer DUPLICATE"


# ------------------------------------------------------------------ messages


def shift_op(kind: int, request) -> Op:
    """SIGN_ON or SHIFT_CLOSE: idempotent by (terminal, serial), like a Pay."""
    requests.validate_terminal(request.terminal)
    return Op(kind=kind, **requests.terminal_fields(request.terminal), fingerprint=requests.fingerprint(kind, request))


# ------------------------------------------------------------------ validation


def validate_batch(request, settings) -> None:
    """Every item well formed, the batch's terminal's, serials distinct: or
    INVALID_ARGUMENT naming the item's field, before anything is applied."""
    requests.require_range(request.terminal_id, "terminal_id", 1, limits.TERMINAL_ID_MAX)
    requests.require_range(request.station_id, "station_id", 1, limits.STATION_ID_MAX)
    if not 1 <= len(request.items) <= BATCH_UPLOAD_ITEMS_MAX:
        raise InvalidInput("items", f"1 .. {BATCH_UPLOAD_ITEMS_MAX} Pay requests, got {len(request.items)}")
    first_index_of_serial = {}
    for index, item in enumerate(request.items):
        where = f"items[{index}]"
        try:
            requests.pay_op(item, settings)
        except InvalidInput as error:
            raise error.within(where) from None
        if item.terminal.terminal_id != request.terminal_id:
            raise InvalidInput(f"{where}.terminal.terminal_id",
                                 f"must be the batch's terminal_id {request.terminal_id}, got {item.terminal.terminal_id}")
        if item.terminal.station_id != request.station_id:
            raise InvalidInput(f"{where}.terminal.station_id",
                                 f"must be the batch's station_id {request.station_id}, got {item.terminal.station_id}")
        earlier = first_index_of_serial.setdefault(item.terminal.serial, index)
        if earlier != index:
            raise InvalidInput(f"{where}.terminal.serial", f"{item.terminal.serial} is items[{earlier}]'s serial too")


# ------------------------------------------------------------------ handlers


class ShiftHandlers:
    def __init__(self, ledger: Ledger, committer: GroupCommitter, payments):
        self.ledger = ledger
        self.store = ledger.store
        self.committer = committer
        # server.payments.PaymentService: BatchUpload applies items with its `pay`.
        self.payments = payments
        # terminal id -> the lock its uploads take in turn (gone when unused).
        self._upload_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    def today(self) -> int:
        return business_day(self.committer.clock(), self.committer.utc_offset_minutes)

    async def SignOn(self, request, context):
        result = await self.committer.submit(shift_op(OpKind.SIGN_ON, request))
        answer = settlement_pb2.SignOnAnswer(result=result.code, result_text=result_text(result.code),
                                             shift_id=result.txn_id, business_day=result.business_day)
        shift = load_shift(self.store, request.terminal.terminal_id) if result.txn_id else None
        if shift is not None and shift.shift_id == result.txn_id:
            answer.opened_ms, answer.operator_id = shift.opened_ms, shift.operator_id
        return answer

    async def ShiftClose(self, request, context):
        result = await self.committer.submit(shift_op(OpKind.SHIFT_CLOSE, request))
        if result.code != ResultCode.APPROVED:
            return settlement_pb2.ShiftCloseAnswer(result=result.code, result_text=result_text(result.code))
        terminal_id = request.terminal.terminal_id
        shift = load_shift(self.store, terminal_id)
        if shift is None or shift.shift_id != result.txn_id:
            # A late retry: the terminal signed on again since. The result
            # still names the shift's range (SHIFT_CLOSE answers last_txn_id).
            shift = Shift(terminal_id=terminal_id, shift_id=result.txn_id, first_txn_id=result.txn_id,
                          last_txn_id=result.amount)
        totals = await asyncio.to_thread(shift_totals, self.store, shift)
        return settlement_pb2.ShiftCloseAnswer(
            result=result.code, result_text=result_text(result.code), shift_id=shift.shift_id,
            station_id=shift.station_id, terminal_id=terminal_id, operator_id=shift.operator_id,
            opened_ms=shift.opened_ms, closed_ms=shift.closed_ms, first_txn_id=shift.first_txn_id,
            last_txn_id=shift.last_txn_id, totals=totals_message(totals), currency=answers.currency(),
        )

    async def DayEnd(self, request, context):
        requests.require_range(request.station_id, "station_id", 1, limits.STATION_ID_MAX)
        requests.require_range(request.business_day, "business_day", 1, self.today())
        if not request.by.strip() or len(request.by) > BY_LENGTH_MAX:
            raise InvalidInput("by", f"required, 1 .. {BY_LENGTH_MAX} characters")
        # A day of a station of the caller's subtree (core/domains.py).
        staff_scope(self.store).require(request.station_id, f"station {request.station_id} not found")
        result = await self.committer.submit(day_end_op(request.station_id, request.business_day))
        answer = settlement_pb2.DayEndAnswer(result=result.code, result_text=result_text(result.code),
                                             station_id=request.station_id, business_day=request.business_day,
                                             currency=answers.currency())
        if result.code != ResultCode.APPROVED:
            return answer
        log.info("day %d of station %d closed by %s (closed through day %d)", request.business_day, request.station_id,
                 request.by, result.amount)
        totals = await asyncio.to_thread(day_totals, self.store, request.station_id, request.business_day)
        answer.closed_through_day = result.amount
        answer.station.CopyFrom(totals_message(totals.station))
        answer.terminals.extend(settlement_pb2.TerminalTotals(terminal_id=terminal_id, totals=totals_message(part))
                                for terminal_id, part in sorted(totals.by_terminal.items()))
        answer.operators.extend(settlement_pb2.OperatorTotals(operator_id=operator_id, totals=totals_message(part))
                                for operator_id, part in sorted(totals.by_operator.items()))
        return answer

    async def BatchUpload(self, request, context):
        validate_batch(request, self.payments.settings)
        lock = self._upload_locks.get(request.terminal_id)
        if lock is None:
            lock = self._upload_locks[request.terminal_id] = asyncio.Lock()
        answer = settlement_pb2.BatchUploadAnswer()
        async with lock:
            items = request.items
            for start in range(0, len(items), BATCH_UPLOAD_WINDOW):
                window = items[start : start + BATCH_UPLOAD_WINDOW]
                outcomes = await asyncio.gather(*(self._apply_item(item) for item in window), return_exceptions=True)
                for outcome in outcomes:
                    # The items applied are applied: a retry answers them DUPLICATE.
                    if isinstance(outcome, QueueFull):
                        raise ResourceExhausted("server queue full" + BATCH_RETRY_TEXT, reason=outcome.reason) from None
                    if isinstance(outcome, ShuttingDown):
                        raise Unavailable("server shutting down" + BATCH_RETRY_TEXT, reason=outcome.reason) from None
                    if isinstance(outcome, BaseException):
                        raise outcome
                answer.results.extend(outcomes)
        statuses = [item.status for item in answer.results]
        answer.accepted = statuses.count(settlement_pb2.ACCEPTED)
        answer.duplicates = statuses.count(settlement_pb2.DUPLICATE)
        answer.declined = statuses.count(settlement_pb2.DECLINED)
        return answer

    async def _apply_item(self, item) -> settlement_pb2.BatchItemResult:
        # No await before payments.pay submits: the items enter the queue in order.
        terminal = item.terminal
        paid = await self.payments.pay(item)
        approved = paid.result == ResultCode.APPROVED
        if paid.replayed:
            status = settlement_pb2.DUPLICATE
        else:
            status = settlement_pb2.ACCEPTED if approved else settlement_pb2.DECLINED
        return settlement_pb2.BatchItemResult(
            serial=terminal.serial, status=status, result=paid.result,
            result_text="" if approved else paid.result_text, txn_id=paid.txn_id, amount_minor=paid.amount_minor,
            business_day=paid.business_day,
        )
