"""Why an administrative request failed; server/admin_service.py maps each
class to its gRPC status, the CLI to a message and exit code 2.

Asking for something outside the caller's domain is NotFound, worded as for
an id that does not exist: a user learns nothing of another organisation,
not even that an id is in use there (except where ids are one namespace for
all: creating an id taken elsewhere is AlreadyExists).
"""


class AdminError(Exception):
    pass


class InvalidInput(AdminError):
    """INVALID_ARGUMENT: names the field and the limit."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(AdminError):
    pass


class AlreadyExists(AdminError):
    pass


class Unauthenticated(AdminError):
    """No, or a wrong, or an expired credential."""


class PermissionDenied(AdminError):
    """A known caller not allowed to do this."""


class FailedPrecondition(AdminError):
    pass
