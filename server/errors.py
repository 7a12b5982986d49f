"""How failures become gRPC statuses, in one place.

Owns: turning a core.errors.TallyError (or anything else a handler raised)
into the status a caller sees: the gRPC code, the text, and
google.rpc.Status details in the `grpc-status-details-bin` trailer, so that
a program reads the reason and the field instead of parsing words:
  ErrorInfo(reason=the error's stable reason, domain="tally.v1",
            metadata={"field": ..., plus what the error adds})
  BadRequest.field_violations=[{field, description}]   (INVALID_ARGUMENT)
Used by: server/rpc.py (every RPC passes through it), server/stream.py
(each operation of a gateway stream fails the same way as its unary RPC).

A decline is never an error: it is an answer with a ResultCode. An
exception nobody expected is a bug: it is logged with its traceback and the
caller gets INTERNAL with a request id to quote, never a class name.
"""

import logging

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from core.errors import Internal, TallyError

log = logging.getLogger(__name__)

ERROR_DOMAIN = "tally.v1"
DETAILS_KEY = "grpc-status-details-bin"
# gRPC's own status names -> codes, once.
_CODES = {code.name: code for code in grpc.StatusCode}

class Refusal:
    """What a failed call answers: code, text and trailing metadata."""

    __slots__ = ("code", "text", "trailing_metadata", "reason")

    def __init__(self, code: grpc.StatusCode, text: str, trailing_metadata: tuple, reason: str):
        self.code = code
        self.text = text
        self.trailing_metadata = trailing_metadata
        self.reason = reason


def refusal_of(error: BaseException) -> Refusal | None:
    """The refusal for a TallyError; None for anything else (a bug)."""
    if not isinstance(error, TallyError):
        return None
    code = _CODES[error.status]
    trailing = ((DETAILS_KEY, status_details(error, code).SerializeToString()),)
    # What the error adds for machines is also plain trailing metadata, so a
    # client need not decode the details: x-tally-leader on NOT_LEADER.
    extra = tuple((f"x-tally-{key.replace('_', '-')}", value) for key, value in getattr(error, "metadata", {}).items())
    return Refusal(code, str(error), trailing + extra, error.reason)


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(code, text) for a TallyError, None for anything else."""
    refusal = refusal_of(error)
    return None if refusal is None else (refusal.code, refusal.text)


def status_details(error: TallyError, code: grpc.StatusCode) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=str(error))
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    if error.field:
        info.metadata["field"] = error.field
    for key, value in getattr(error, "metadata", {}).items():
        info.metadata[key] = value
    status.details.add().Pack(info)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        request = error_details_pb2.BadRequest()
        request.field_violations.add(field=error.field, description=error.message)
        status.details.add().Pack(request)
    return status


def internal_error(request_id: str) -> Internal:
    return Internal(f"internal error (request {request_id}); the server logged it. Query the request's serial "
                    "before retrying: it may or may not have been applied", reason="INTERNAL")


async def abort(context, refusal: Refusal):
    await context.abort(refusal.code, refusal.text, refusal.trailing_metadata)


assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
