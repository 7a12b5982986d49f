"""One error model for the whole core: what failed, why, and how to say it.

Owns: `TallyError`, the one base of every error Tally raises on purpose, and
its kinds (one per gRPC status a caller can act on). Each error carries
  message   words for people ("must be within 1 .. 500, got 900")
  field     the request field at fault, as a path ("basket[2].amount_minor"),
            or "" when no single field is
  reason    a stable UPPER_SNAKE code for machines ("FIELD_OUT_OF_RANGE",
            "NOT_FOUND", "QUEUE_FULL"); clients switch on it, never on words
  status    the gRPC status name the server answers with
Used by: every part of core that refuses something, the server (one place,
server/errors.py, turns any TallyError into a status with google.rpc.Status
details), the command-line tools (one line and exit code 2).

A decline is not an error: it is an answer with a ResultCode. Errors are
malformed input, missing objects, refused callers, overload and bugs.
core imports no gRPC: statuses are named here and mapped in the server.
"""


class TallyError(Exception):
    """status: the gRPC status name; reason: the default machine reason."""

    status = "INTERNAL"
    reason = "INTERNAL"

    def __init__(self, message: str, field: str = "", reason: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field
        if reason is not None:
            self.reason = reason

    def within(self, prefix: str) -> "TallyError":
        """The same error with its field under `prefix` (a request's rules
        JSON, a nested message): "limits[0].ceiling" -> "rules.limits[0].ceiling"."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return type(self)(self.message, field, self.reason)


class InvalidInput(TallyError, ValueError):
    """Malformed input: names the field and the limit it breaks."""

    status = "INVALID_ARGUMENT"
    reason = "INVALID_FIELD"

    def __init__(self, field: str, message: str, reason: str | None = None):
        # Field first: every caller names what it refuses.
        super().__init__(message, field, reason)

    def within(self, prefix: str) -> "InvalidInput":
        return InvalidInput(f"{prefix}.{self.field}" if self.field else prefix, self.message, self.reason)


class NotFound(TallyError, LookupError):
    """No such object, or one outside the caller's organisation: both are
    worded alike, so a caller learns nothing of other organisations."""

    status = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExists(TallyError):
    status = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class Unauthenticated(TallyError):
    """No, a wrong, or an expired credential."""

    status = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(TallyError):
    """A known caller not allowed to do this."""

    status = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class FailedPrecondition(TallyError, ValueError):
    """The request is well formed but the state does not allow it now."""

    status = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(TallyError):
    """A bound is reached (queue, store, concurrent logins): retry later."""

    status = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(TallyError):
    """Shutting down, or not the leader: retry, elsewhere if told where."""

    status = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class Internal(TallyError):
    """A bug or a broken store: the text says what, never a class name."""

    status = "INTERNAL"
    reason = "INTERNAL"
