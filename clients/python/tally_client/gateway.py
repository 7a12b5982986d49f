"""The gateway's stream client: many terminals' operations in flight on one
GatewayService.Exchange stream, answers matched by correlation id.

Owns: batching (operations submitted in the same event-loop turn go out
as one message, up to 256 operations and 64 KiB), the server's window (the
client waits rather than be refused), matching each reply to its
operations (replies come in the order messages finish, possibly split over
several replies by first_index), and a broken stream: it reconnects and
sends every unanswered operation again (same bytes, same serial: the
server answers a repeat with its stored answer), until the operation's
deadline. An operation still unanswered then fails with OperationLost,
naming its terminal and serial: the gateway's terminal decides (Reverse or
Query); this client owns no terminal's serials, so it sends no Reverse.
Used by: payment gateways and station servers (asyncio).

    stream = await GatewayStream("tally.example:50051").start()
    answer = await stream.pay(Context(station_id=12, terminal_id=101, serial=5, operator_id=7),
                              25_000, card_id=6200000000000001, use_fleet=True)

A server with --terminal-auth refuses this stream (it carries no per-request
MAC): terminals then use TerminalClient.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc

from tally_client import _proto, errors, operations, results, transport
from tally_client.settings import ClientSettings

log = logging.getLogger("tally_client")

EXCHANGE = "/tally.v1.GatewayService/Exchange"
WINDOW_METADATA_KEY = "tally-stream-window"
BATCH_OPERATIONS_MAX = 256
# Below the server's 64 KiB message limit, with room for the framing.
BATCH_BYTES_MAX = 60 * 1024
STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}
_RESENT = frozenset(("RESOURCE_EXHAUSTED", "UNAVAILABLE"))


@dataclass(frozen=True, slots=True)
class Context:
    """The TerminalContext of a terminal's request, as the terminal sent it."""

    station_id: int
    terminal_id: int
    serial: int
    operator_id: int


class OperationLost(Exception):
    """No answer within the operation's deadline. The operation may or may
    not have been applied: Query (terminal_id, serial), or Reverse it."""

    def __init__(self, terminal_id: int, serial: int, last: str):
        super().__init__(f"terminal {terminal_id} serial {serial}: no answer ({last})")
        self.terminal_id, self.serial = terminal_id, serial


class _Operation:
    __slots__ = ("message", "future", "deadline", "terminal_id", "serial", "size")

    def __init__(self, message, future, deadline: float, terminal_id: int, serial: int):
        self.message, self.future, self.deadline = message, future, deadline
        self.terminal_id, self.serial = terminal_id, serial
        self.size = message.ByteSize() + 8


class GatewayStream:
    def __init__(self, target: str | None = None, *, settings: ClientSettings | None = None,
                 credentials: grpc.ChannelCredentials | None = None, channel=None):
        self.settings = settings or ClientSettings()
        self._own_channel = channel is None
        self._target, self._credentials = target, credentials
        self.channel = channel
        self.window = 1
        self._call: Any = None
        self._pending: list[_Operation] = []
        self._in_flight: dict[int, list[_Operation]] = {}
        self._in_flight_count = 0
        self._next_correlation_id = 1
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task | None = None
        self._last_break = "stream not open yet"
        # Streams that opened (their window came): more than one after a break.
        self.streams_opened = 0

    async def start(self) -> "GatewayStream":
        if self.channel is None:
            if self._target is None:
                raise ValueError("GatewayStream: give a target address or a channel")
            self.channel = transport.open_aio_channel(self._target, self.settings, self._credentials)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aenter__(self) -> "GatewayStream":
        return await self.start()

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        """Stop; operations without an answer fail with OperationLost."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_all("stream closed")
        if self._own_channel and self.channel is not None:
            await self.channel.close()

    # ------------------------------------------------------------ typed operations

    async def pay(self, context: Context, amount_minor: int, **plan) -> results.PaymentResult:
        """plan: the keyword arguments of TerminalClient.pay."""
        return await self._payment(context, operations.pay(amount_minor, **plan))

    async def pre_authorize(self, context: Context, card_id: int, amount_minor: int, hold_timeout_s: int = 0):
        return await self._payment(context, operations.pre_authorize(card_id, amount_minor, hold_timeout_s))

    async def complete(self, context: Context, txn_id: int, amount_minor: int, basket=()):
        return await self._payment(context, operations.complete(txn_id, amount_minor, basket))

    async def release(self, context: Context, txn_id: int):
        return await self._payment(context, operations.release(txn_id))

    async def void(self, context: Context, txn_id: int):
        return await self._payment(context, operations.void(txn_id))

    async def refund(self, context: Context, txn_id: int, amount_minor: int):
        return await self._payment(context, operations.refund(txn_id, amount_minor))

    async def reverse(self, context: Context, original_serial: int):
        return await self._payment(context, operations.reverse(original_serial))

    async def top_up(self, context: Context, card_id: int, amount: int, account=operations.CardAccount.PERSONAL):
        return await self._payment(context, operations.top_up(card_id, amount, account))

    async def query(self, terminal_id: int = 0, serial: int = 0, txn_id: int = 0) -> results.QueryResult:
        request = operations.query(terminal_id, serial, txn_id)
        outcome = await self.submit(_operation(request), terminal_id, serial)
        return results.query_result(outcome.query, serial)

    async def _payment(self, context: Context, request: operations.Request) -> results.PaymentResult:
        operations.stamp(request.message, context.station_id, context.terminal_id, context.serial, context.operator_id)
        outcome = await self.submit(_operation(request), context.terminal_id, context.serial)
        return results.payment_result(outcome.payment, context.serial)

    # ------------------------------------------------------------ raw operations

    def submit(self, operation, terminal_id: int = 0, serial: int = 0,
               timeout_s: float | None = None) -> asyncio.Future:
        """A tally.v1.GatewayOperation; the future's result is its
        GatewayResult (payment or query), or TallyRpcError, OperationLost."""
        future = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(OperationLost(terminal_id, serial, "stream closed"))
            return future
        budget = self.settings.operation_timeout_s if timeout_s is None else timeout_s
        self._pending.append(_Operation(operation, future, time.monotonic() + budget, terminal_id, serial))
        self._wake.set()
        return future

    # ------------------------------------------------------------ the stream

    async def _run(self):
        """One stream after another until closed: a broken stream's
        unanswered operations go out again on the next."""
        attempt = 0
        expiry = asyncio.get_running_loop().create_task(self._expire_forever())
        try:
            while not self._closed:
                opened = await self._serve_one_stream()
                attempt = 0 if opened else attempt + 1
                self._requeue_in_flight()
                await asyncio.sleep(transport.backoff_s(attempt, self.settings))
        finally:
            expiry.cancel()

    async def _serve_one_stream(self) -> bool:
        """True when the stream opened (its window came) before it ended."""
        self._call = self.channel.stream_stream(EXCHANGE, request_serializer=_serialize,
                                                response_deserializer=_proto.tally("GatewayReply").FromString)()
        try:
            metadata = dict(await self._call.initial_metadata())
            self.window = int(metadata.get(WINDOW_METADATA_KEY, "1"))
            self.streams_opened += 1
        except grpc.RpcError as error:
            self._last_break = f"{error.code().name}: {error.details()}"
            return False
        writer = asyncio.get_running_loop().create_task(self._write())
        try:
            async for reply in self._call:
                self._take(reply)
            self._last_break = "stream ended by the server"
        except grpc.RpcError as error:
            self._last_break = f"{error.code().name}: {error.details()}"
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                self._fail_all(self._last_break, errors.error_of(error))
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._call.cancel()
        log.warning("gateway stream broke (%s): %d operations to send again", self._last_break, self._in_flight_count)
        return True

    async def _write(self):
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                room = self.window - self._in_flight_count
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()
                    continue
                batch = self._next_batch(room)
                correlation_id = self._next_correlation_id
                self._next_correlation_id += 1
                self._in_flight[correlation_id] = batch
                self._in_flight_count += len(batch)
                message = _proto.tally("GatewayMessage")(correlation_id=correlation_id)
                message.operations.extend(op.message for op in batch)
                await self._call.write(message)

    def _next_batch(self, room: int) -> list[_Operation]:
        count, size = 0, 0
        limit = min(room, BATCH_OPERATIONS_MAX, len(self._pending))
        while count < limit and (count == 0 or size + self._pending[count].size <= BATCH_BYTES_MAX):
            size += self._pending[count].size
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    def _take(self, reply):
        batch = self._in_flight.get(reply.correlation_id)
        if batch is None:
            return
        if reply.HasField("error"):
            self._finish(reply.correlation_id)
            self._settle_error(batch, reply.error)
            return
        first = reply.first_index
        for operation, result in zip(batch[first:first + len(reply.results)], reply.results, strict=True):
            if operation.future.done():
                continue
            if result.WhichOneof("outcome") == "error":
                self._settle_error([operation], result.error)
            else:
                operation.future.set_result(result)
        if first + len(reply.results) == len(batch):
            self._finish(reply.correlation_id)

    def _finish(self, correlation_id: int):
        batch = self._in_flight.pop(correlation_id)
        self._in_flight_count -= len(batch)
        self._room.set()

    def _settle_error(self, batch: list[_Operation], error):
        status = STATUS_BY_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
        if status.name in _RESENT:
            # Refused before it ran (window, queue full, server stopping): again, same bytes.
            self._pending.extend(op for op in batch if not op.future.done())
            self._wake.set()
            return
        failure = errors.error_of_status(status, error.message)
        for operation in batch:
            if not operation.future.done():
                operation.future.set_exception(failure)

    def _requeue_in_flight(self):
        unanswered = [op for batch in self._in_flight.values() for op in batch if not op.future.done()]
        self._in_flight.clear()
        self._in_flight_count = 0
        self._pending = unanswered + self._pending
        self._room.set()
        self._wake.set()

    async def _expire_forever(self):
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for operation in [*self._pending, *(op for batch in self._in_flight.values() for op in batch)]:
                if operation.deadline <= now and not operation.future.done():
                    operation.future.set_exception(OperationLost(operation.terminal_id, operation.serial,
                                                   self._last_break))
            self._pending = [op for op in self._pending if not op.future.done()]

    def _fail_all(self, why: str, error: Exception | None = None):
        for operation in [*self._pending, *(op for batch in self._in_flight.values() for op in batch)]:
            if not operation.future.done():
                operation.future.set_exception(error or OperationLost(operation.terminal_id, operation.serial, why))
        self._pending = []


def _operation(request: operations.Request):
    """The GatewayOperation carrying a request (its oneof field by method)."""
    field = _ONEOF[request.method]
    operation = _proto.tally("GatewayOperation")()
    getattr(operation, field).CopyFrom(request.message)
    return operation


def _serialize(message) -> bytes:
    return message.SerializeToString()


_ONEOF = {
    operations.PAY: "pay", operations.PRE_AUTHORIZE: "pre_authorize", operations.COMPLETE: "complete",
    operations.RELEASE: "release", operations.REVERSE: "reverse", operations.VOID: "void",
    operations.REFUND: "refund", operations.QUERY: "query", operations.TOP_UP: "top_up",
}
