"""GatewayService: many terminal requests in flight on one bidirectional stream.

Owns: tally.v1.GatewayService.Exchange: reading GatewayMessages, the window
of operations in flight per stream, running each operation through the very
methods the unary RPCs use (server/payments.py `pay`, `pre_authorize`, ...,
server/cards.py `top_up`), answering each message with one GatewayReply, and
ending streams cleanly when the server stops.
Used by: server/app.py (registers it).
May call: PaymentService and CardService operation methods, server/errors.py
(status_of), server/metrics.py.

Each message becomes one task; its operations run concurrently (they meet in
the group commit, so a batch of 200 Pays is typically one LMDB commit). One
writer per stream sends the replies: grpc.aio allows one write at a time.

A message of Pays alone is read from its wire bytes (server/fastpay.pyx):
its plain Pays are translated, committed as one group and answered as wire
bytes by server/payline.py, the rest of it the reference way; any other
message is parsed and each operation runs through the unary RPC's method.
"""

import asyncio
import logging
import time

import grpc

from core import limits
from server.errors import internal_error, status_of
from server.fastpay import PayMessage, replies as reply_bytes
from server.metrics import OBSERVER, outcome_of
from server.rpc import parser_of
from tally.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

# Operations received and not yet answered, per stream. 1,500 terminals in
# flight fit on one stream with room to spare; the group commit queue
# (QUEUE_LENGTH_MAX, 16,384) stays the bound of the whole server.
STREAM_WINDOW_MAX = 2048
# Operations in one GatewayMessage. With the 64 KiB message limit a batch of
# plain Pays fits about 1,000; 256 keeps one reply (with receipts) well under
# the limit too.
STREAM_BATCH_OPERATIONS_MAX = 256
WINDOW_METADATA_KEY = "tally-stream-window"
# A reply above this is split (the limit is MESSAGE_BYTES_MAX; the margin
# covers the reply's own fields).
REPLY_BYTES_MAX = limits.MESSAGE_BYTES_MAX - 1024

OPERATION_RPC_NAMES = {
    "pay": "Pay",
    "pre_authorize": "PreAuthorize",
    "complete": "Complete",
    "release": "Release",
    "reverse": "Reverse",
    "void": "Void",
    "refund": "Refund",
    "query": "Query",
    "top_up": "TopUp",
}
NO_REQUEST_TEXT = "no request set: give one of " + ", ".join(OPERATION_RPC_NAMES)
STOPPING_TEXT = "server shutting down: reconnect, and re-send (same serials) or Query what got no answer"


def error_result(code: grpc.StatusCode, message: str) -> gateway_pb2.GatewayResult:
    return gateway_pb2.GatewayResult(error=gateway_pb2.GatewayError(code=code.value[0], message=message))


def refused(correlation_id: int, code: grpc.StatusCode, message: str) -> gateway_pb2.GatewayReply:
    return gateway_pb2.GatewayReply(
        correlation_id=correlation_id, error=gateway_pb2.GatewayError(code=code.value[0], message=message)
    )


def split_replies(correlation_id: int, results: list) -> list[gateway_pb2.GatewayReply]:
    """One reply, or consecutive parts of at most REPLY_BYTES_MAX each."""
    reply = gateway_pb2.GatewayReply(correlation_id=correlation_id, results=results)
    if len(results) == 1 or reply.ByteSize() <= REPLY_BYTES_MAX:
        return [reply]
    replies, first, size = [], 0, 0
    for index, result in enumerate(results):
        result_size = result.ByteSize() + 8  # tag and length of the repeated field
        if index > first and size + result_size > REPLY_BYTES_MAX:
            replies.append(gateway_pb2.GatewayReply(correlation_id=correlation_id, first_index=first, results=results[first:index]))
            first, size = index, 0
        size += result_size
    replies.append(gateway_pb2.GatewayReply(correlation_id=correlation_id, first_index=first, results=results[first:]))
    return replies


def _request_id(stream, correlation_id: int, index: int) -> str | None:
    if not OBSERVER.log_requests:
        return None
    return f"{stream.stream_id}/{correlation_id}.{index}"


class _Stream:
    """The state of one open stream."""

    def __init__(self, window: int, stream_id: str):
        self.window = window
        # Request ids of its operations: stream id, correlation id, index.
        self.stream_id = stream_id
        self.in_flight = 0
        self.tasks_open = 0
        self.reading_done = False
        self.outbox: asyncio.Queue = asyncio.Queue()
        # Set while the replies waiting to be sent are at most the window: a
        # client that sends and never reads (refused messages need no slot
        # in the window) is stopped by HTTP/2 flow control, not by memory.
        self.outbox_room = asyncio.Event()
        self.outbox_room.set()

    def finished(self, stopping: bool) -> bool:
        """Nothing more to send: no message will come (the client half-closed,
        or the server stops) and every reply is sent."""
        return (self.reading_done or stopping) and self.tasks_open == 0 and self.outbox.empty()


class GatewayService(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, payments, cards, window: int = STREAM_WINDOW_MAX):
        assert 0 < window <= STREAM_WINDOW_MAX
        self.window = window
        self.handlers = {
            "pay": payments.pay,
            "pre_authorize": payments.pre_authorize,
            "complete": payments.complete,
            "release": payments.release,
            "reverse": payments.reverse,
            "void": payments.void,
            "refund": payments.refund,
            "query": payments.query,
            "top_up": cards.top_up,
        }
        self.stopping = False
        self._streams: set[_Stream] = set()
        self.payline = payments.payline
        self.parse = parser_of(gateway_pb2.GatewayMessage.FromString)

    def stop(self):
        """Stop taking messages; streams end (UNAVAILABLE) once their
        operations in flight are answered."""
        self.stopping = True
        for stream in self._streams:
            stream.outbox.put_nowait(None)

    async def Exchange(self, request_iterator, context):
        await context.send_initial_metadata(((WINDOW_METADATA_KEY, str(self.window)),))
        stream = _Stream(self.window, OBSERVER.new_request_id())
        self._streams.add(stream)
        metrics = OBSERVER.metrics
        if metrics is not None:
            metrics.streams.inc()
        reader = asyncio.get_running_loop().create_task(self._read(request_iterator, stream))
        try:
            await self._write(context, stream)
        finally:
            reader.cancel()
            self._streams.discard(stream)
            if metrics is not None:
                metrics.streams.dec()
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING_TEXT)

    # server/rpc.py hands Exchange the messages' wire bytes: a message of
    # Pays is read from them (PayMessage), any other parsed here.
    Exchange.wire_bytes = True

    async def _write(self, context, stream: _Stream):
        """Send replies until the client has half-closed and everything is
        answered, or the server stops and everything in flight is answered."""
        while not stream.finished(self.stopping):
            reply = await stream.outbox.get()
            if reply is not None:  # None is a wake-up: reading ended, or the server stops
                await context.write(reply)
            if stream.outbox.qsize() <= stream.window:
                stream.outbox_room.set()

    async def _read(self, request_iterator, stream: _Stream):
        loop = asyncio.get_running_loop()
        try:
            async for raw in request_iterator:
                message = PayMessage.read(raw)
                if message is None or message.count == 0:
                    message = self.parse(raw)
                if stream.outbox.qsize() > stream.window:
                    stream.outbox_room.clear()
                    await stream.outbox_room.wait()
                reply = self._admit(message, stream)
                if reply is not None:
                    stream.outbox.put_nowait(reply)
                    continue
                stream.tasks_open += 1
                loop.create_task(self._answer_pays(message, stream) if type(message) is PayMessage else self._answer(message, stream))
        except grpc.aio.AioRpcError as error:  # the client went away; the writer ends too
            log.debug("gateway stream %s: %s", stream.stream_id, error.code())
        finally:
            stream.reading_done = True
            stream.outbox.put_nowait(None)

    def _admit(self, message, stream: _Stream) -> gateway_pb2.GatewayReply | None:
        """None if the message may run, else the reply that refuses it."""
        count = message.count if type(message) is PayMessage else len(message.operations)
        correlation_id = message.correlation_id
        if self.stopping:
            return refused(correlation_id, grpc.StatusCode.UNAVAILABLE, STOPPING_TEXT)
        if not 1 <= count <= STREAM_BATCH_OPERATIONS_MAX:
            return refused(
                correlation_id, grpc.StatusCode.INVALID_ARGUMENT,
                f"operations: must hold 1 .. {STREAM_BATCH_OPERATIONS_MAX} operations, got {count}",
            )
        if stream.in_flight + count > stream.window:
            if OBSERVER.metrics is not None:
                OBSERVER.metrics.window_refusals.inc()
            return refused(
                correlation_id, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"stream window exceeded: {stream.in_flight} operations in flight plus {count} in this message "
                f"is more than the window of {stream.window}; wait for answers before sending more",
            )
        stream.in_flight += count
        if OBSERVER.metrics is not None:
            OBSERVER.metrics.stream_in_flight.inc(count)
        return None

    async def _answer(self, message, stream: _Stream):
        operations = message.operations
        try:
            if len(operations) == 1:
                results = [await self._run(operations[0], stream, message.correlation_id, 0)]
            else:
                results = await asyncio.gather(
                    *(self._run(operation, stream, message.correlation_id, index) for index, operation in enumerate(operations))
                )
            replies = split_replies(message.correlation_id, results)
        finally:
            stream.in_flight -= len(operations)
            stream.tasks_open -= 1
            if OBSERVER.metrics is not None:
                OBSERVER.metrics.stream_in_flight.dec(len(operations))
        for reply in replies:
            stream.outbox.put_nowait(reply)

    async def _answer_pays(self, message: PayMessage, stream: _Stream):
        """A message of Pays (server/payline.py), answered with wire bytes."""
        try:
            results = await self.payline.results(
                message, lambda index, request: self._run_request("pay", request, stream, message.correlation_id, index))
            replies = reply_bytes(message.correlation_id, results, REPLY_BYTES_MAX)
        finally:
            stream.in_flight -= message.count
            stream.tasks_open -= 1
            if OBSERVER.metrics is not None:
                OBSERVER.metrics.stream_in_flight.dec(message.count)
        for reply in replies:
            stream.outbox.put_nowait(reply)

    async def _run(self, operation, stream: _Stream, correlation_id: int, index: int) -> gateway_pb2.GatewayResult:
        """One operation through the unary RPC's own method; never raises."""
        name = operation.WhichOneof("request")
        if name is None:
            return error_result(grpc.StatusCode.INVALID_ARGUMENT, NO_REQUEST_TEXT)
        return await self._run_request(name, getattr(operation, name), stream, correlation_id, index)

    async def _run_request(self, name: str, request, stream: _Stream, correlation_id: int, index: int) -> gateway_pb2.GatewayResult:
        started = time.perf_counter() if OBSERVER.active else 0.0
        try:
            answer = await self.handlers[name](request)
        except Exception as error:
            status = status_of(error)
            if status is None:
                request_id = _request_id(stream, correlation_id, index)
                log.exception("gateway operation %s failed (request %s)", name, request_id)
                status = status_of(internal_error(request_id))
            if OBSERVER.active:
                OBSERVER.request(OPERATION_RPC_NAMES[name], "stream", status[0].name, time.perf_counter() - started, request,
                                 _request_id(stream, correlation_id, index))
            return error_result(*status)
        if OBSERVER.active:
            OBSERVER.request(OPERATION_RPC_NAMES[name], "stream", outcome_of(answer), time.perf_counter() - started, request,
                             _request_id(stream, correlation_id, index))
        if name == "query":
            return gateway_pb2.GatewayResult(query=answer)
        return gateway_pb2.GatewayResult(payment=answer)
