"""A gateway's side of GatewayService.Exchange, for the load tools.

Owns: one stream with many operations in flight: operations submitted in
the same event-loop turn go out as one message (up to 256), replies resolve
each operation's future by correlation id, the server's window is respected
(the client waits rather than be refused).
Used by: bench/e2e.py (--mode stream), bench/soak.py (--mode stream).
"""

import asyncio

import grpc

from tally.v1 import gateway_pb2, gateway_pb2_grpc

BATCH_OPERATIONS_MAX = 256
WINDOW_METADATA_KEY = "tally-stream-window"
STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


class OperationError(Exception):
    """An operation (or its whole message) answered with a GatewayError, or
    the stream broke before its answer came."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.status = code

    def code(self) -> grpc.StatusCode:  # the same accessor as grpc.aio.AioRpcError
        return self.status


class GatewayStream:
    def __init__(self, channel):
        self.call = gateway_pb2_grpc.GatewayServiceStub(channel).Exchange()
        self.window = 1
        self.pending: list = []
        self.waiting: dict[int, list] = {}
        self.in_flight = 0
        self.next_correlation_id = 1
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.broken: OperationError | None = None
        self.tasks = []

    async def start(self) -> "GatewayStream":
        metadata = dict(await self.call.initial_metadata())
        self.window = int(metadata.get(WINDOW_METADATA_KEY, "1"))
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._write()), loop.create_task(self._read())]
        return self

    def submit(self, operation: gateway_pb2.GatewayOperation) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.broken is not None:
            future.set_exception(self.broken)
            return future
        self.pending.append((operation, future))
        self.wake.set()
        return future

    async def pay(self, request):
        return (await self.submit(gateway_pb2.GatewayOperation(pay=request))).payment

    async def _write(self):
        while self.broken is None:
            await self.wake.wait()
            self.wake.clear()
            while self.pending and self.broken is None:
                room = self.window - self.in_flight
                if room <= 0:
                    self.room.clear()
                    await self.room.wait()
                    continue
                count = min(room, BATCH_OPERATIONS_MAX, len(self.pending))
                batch, self.pending = self.pending[:count], self.pending[count:]
                correlation_id = self.next_correlation_id
                self.next_correlation_id += 1
                self.waiting[correlation_id] = [future for _, future in batch]
                self.in_flight += count
                message = gateway_pb2.GatewayMessage(correlation_id=correlation_id, operations=[op for op, _ in batch])
                try:
                    await self.call.write(message)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                    self._break(OperationError(grpc.StatusCode.UNAVAILABLE, f"stream broke while writing: {error}"))

    async def _read(self):
        try:
            async for reply in self.call:
                if reply.HasField("error"):
                    futures = self.waiting.pop(reply.correlation_id)
                    self.in_flight -= len(futures)
                    self.room.set()
                    error = OperationError(STATUS_BY_NUMBER[reply.error.code], reply.error.message)
                    for future in futures:
                        if not future.done():
                            future.set_exception(error)
                    continue
                # Answers may come in parts (first_index): the message is done
                # when its last future has its result.
                futures = self.waiting[reply.correlation_id]
                first = reply.first_index
                for future, result in zip(futures[first : first + len(reply.results)], reply.results, strict=True):
                    if future.done():
                        continue
                    if result.WhichOneof("outcome") == "error":
                        future.set_exception(OperationError(STATUS_BY_NUMBER[result.error.code], result.error.message))
                    else:
                        future.set_result(result)
                if first + len(reply.results) == len(futures):
                    del self.waiting[reply.correlation_id]
                    self.in_flight -= len(futures)
                    self.room.set()
            self._break(OperationError(grpc.StatusCode.UNAVAILABLE, "stream ended by the server"))
        except grpc.aio.AioRpcError as error:
            self._break(OperationError(error.code(), error.details() or "stream broke"))

    def _break(self, error: OperationError):
        if self.broken is None:
            self.broken = error
        for futures in self.waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self.waiting.clear()
        for _, future in self.pending:
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        self.wake.set()
        self.room.set()

    async def close(self):
        for task in self.tasks:
            task.cancel()
        self.call.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
