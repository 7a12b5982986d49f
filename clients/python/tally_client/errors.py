"""Errors a call can end with, as typed exceptions a program can act on.

Owns: `TallyRpcError` and one subclass per gRPC status, and turning a
grpc.RpcError into one: its status, and from the `grpc-status-details-bin`
trailer (a google.rpc.Status) the stable `reason` (ErrorInfo.reason, domain
"tally.v1"), the `field` at fault (ErrorInfo.metadata["field"], else the
first BadRequest field violation) and every field violation.
Used by: the clients (every failed call raises one of these).

A server that sends no details still gives a typed error: the status, its
name as the reason, no field, and the server's words as the message.
A decline is never an error: it is an answer with a ResultCode.
"""

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from tally_client import _proto

DETAILS_KEY = "grpc-status-details-bin"
DOMAIN = "tally.v1"
_ERROR_INFO = "google.rpc.ErrorInfo"
_BAD_REQUEST = "google.rpc.BadRequest"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class TallyRpcError(Exception):
    """A call the server refused (or that could not reach it).

    status      the gRPC status name ("INVALID_ARGUMENT")
    reason      a stable UPPER_SNAKE code ("FIELD_OUT_OF_RANGE"); the status
                name when the server sent no details
    field       the request field at fault ("basket[2].amount_minor"), or ""
    message     the server's words, for people
    violations  every BadRequest field violation, in the server's order
    """

    status = "UNKNOWN"

    def __init__(self, message: str, reason: str = "", field: str = "", violations: tuple = (), domain: str = ""):
        super().__init__(f"{self.status}: {message}")
        self.message = message
        self.reason = reason or self.status
        self.field = field
        self.violations: tuple[FieldViolation, ...] = violations
        self.domain = domain


class InvalidArgument(TallyRpcError):
    status = "INVALID_ARGUMENT"


class NotFound(TallyRpcError):
    status = "NOT_FOUND"


class AlreadyExists(TallyRpcError):
    status = "ALREADY_EXISTS"


class Unauthenticated(TallyRpcError):
    status = "UNAUTHENTICATED"


class PermissionDenied(TallyRpcError):
    status = "PERMISSION_DENIED"


class FailedPrecondition(TallyRpcError):
    status = "FAILED_PRECONDITION"


class ResourceExhausted(TallyRpcError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(TallyRpcError):
    status = "UNAVAILABLE"


class DeadlineExceeded(TallyRpcError):
    status = "DEADLINE_EXCEEDED"


class Internal(TallyRpcError):
    status = "INTERNAL"


class Cancelled(TallyRpcError):
    status = "CANCELLED"


ERROR_BY_STATUS: dict[str, type[TallyRpcError]] = {
    kind.status: kind for kind in (InvalidArgument, NotFound, AlreadyExists, Unauthenticated, PermissionDenied,
                                   FailedPrecondition, ResourceExhausted, Unavailable, DeadlineExceeded, Internal,
                                   Cancelled)
}


def error_of_status(status: grpc.StatusCode, message: str, trailing_metadata=()) -> TallyRpcError:
    """The typed error of a call that ended with `status`."""
    kind = ERROR_BY_STATUS.get(status.name)
    if kind is None:
        kind = type(f"{status.name.title()}", (TallyRpcError,), {"status": status.name})
    details = _details_of(status, trailing_metadata)
    if details is None:
        return kind(message)
    reason, field, violations, domain = details
    return kind(message, reason, field, violations, domain)


def error_of(error: grpc.RpcError) -> TallyRpcError:
    """The typed error of a failed call (sync or asyncio)."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else ()
    return error_of_status(error.code(), error.details() or "", trailing)


def _details_of(status: grpc.StatusCode, trailing_metadata):
    """(reason, field, violations, domain) from the trailer, or None when
    there is none or it is not this call's status (then it is ignored, as
    grpcio-status does)."""
    blob = next((value for key, value in (trailing_metadata or ()) if key == DETAILS_KEY), None)
    if not isinstance(blob, bytes):
        return None
    try:
        decoded = _proto.message_class("google.rpc.Status").FromString(blob)
    except DecodeError:
        return None
    if decoded.code != status.value[0]:
        return None
    reason, field, domain = "", "", ""
    violations: list[FieldViolation] = []
    for detail in decoded.details:
        type_name = detail.type_url.rsplit("/", 1)[-1]
        try:
            if type_name == _ERROR_INFO:
                info = _proto.message_class(_ERROR_INFO).FromString(detail.value)
                reason, domain = info.reason, info.domain
                field = info.metadata.get("field", field)
            elif type_name == _BAD_REQUEST:
                found = _proto.message_class(_BAD_REQUEST).FromString(detail.value)
                violations.extend(FieldViolation(v.field, v.description) for v in found.field_violations)
        except DecodeError:
            continue  # one bad detail does not hide the others
    if not field and violations:
        field = violations[0].field
    return reason, field, tuple(violations), domain
