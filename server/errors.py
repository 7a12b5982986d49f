"""How failures become gRPC statuses, in one place.

A decline is never an error: it is an answer with a ResultCode. Errors are
malformed input (INVALID_ARGUMENT, naming the field and its limit), overload
(RESOURCE_EXHAUSTED), shutdown (UNAVAILABLE) and bugs (INTERNAL).
The unary RPCs (`rpc` below) and the gateway stream (server/stream.py) both
map exceptions with `status_of`, so an operation fails the same way on both.
"""

import functools
import logging
import time

import grpc

from core.commit import KernelFailure, QueueFull, ShuttingDown
from server.metrics import OBSERVER, outcome_of, request_id_of

log = logging.getLogger(__name__)

QUEUE_FULL_TEXT = "server queue full; retry with the same serial"
SHUTTING_DOWN_TEXT = "server shutting down; retry with the same serial"


class InvalidRequest(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def status_of(error: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The status an operation that raised `error` ends with; None for an
    exception nobody expected (a bug: the caller logs it and answers INTERNAL)."""
    if isinstance(error, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, QUEUE_FULL_TEXT
    if isinstance(error, ShuttingDown):
        return grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN_TEXT
    if isinstance(error, KernelFailure):
        return grpc.StatusCode.INTERNAL, str(error)
    return None


def rpc(method):
    """Wrap a servicer method: map exceptions to statuses, never crash;
    report every answer to the metrics and the request log."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        if not OBSERVER.active:
            try:
                return await method(self, request, context)
            except Exception as error:
                status = status_of(error)
                if status is None:
                    raise
                await context.abort(*status)
        started = time.perf_counter()
        request_id = request_id_of(context) if OBSERVER.log_requests else None
        try:
            answer = await method(self, request, context)
        except Exception as error:
            status = status_of(error)
            outcome = status[0].name if status is not None else grpc.StatusCode.INTERNAL.name
            OBSERVER.request(name, "unary", outcome, time.perf_counter() - started, request, request_id)
            if status is None:
                raise
            await context.abort(*status)
        OBSERVER.request(name, "unary", outcome_of(answer), time.perf_counter() - started, request, request_id)
        return answer

    return wrapper
