"""How failures become gRPC statuses, in one place.

A decline is never an error: it is an answer with a ResultCode. Errors are
malformed input (INVALID_ARGUMENT, naming the field and its limit), overload
(RESOURCE_EXHAUSTED), shutdown (UNAVAILABLE) and bugs (INTERNAL).
"""

import functools
import logging

import grpc

from core.commit import KernelFailure, QueueFull, ShuttingDown

log = logging.getLogger(__name__)


class InvalidRequest(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def rpc(method):
    """Wrap a servicer method: map exceptions to statuses, never crash."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except QueueFull:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server queue full; retry with the same serial")
        except ShuttingDown:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down; retry with the same serial")
        except KernelFailure as error:
            await context.abort(grpc.StatusCode.INTERNAL, str(error))

    return wrapper
