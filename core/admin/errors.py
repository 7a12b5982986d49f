"""Why an administrative request failed: the kinds of core/errors.py.

Kept as a module so core.admin's parts import their errors from one place;
every class is core.errors' own (server/errors.py maps them to statuses, the
command line to a message and exit code 2).

Asking for something outside the caller's domain is NotFound, worded as for
an id that does not exist: a user learns nothing of another organisation,
not even that an id is in use there (except where ids are one namespace for
all: creating an id taken elsewhere is AlreadyExists).
"""

from core.errors import (  # noqa: F401 (re-exported)
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TallyError,
    Unauthenticated,
)

AdminError = TallyError
