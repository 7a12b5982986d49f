"""The back-office guard (`python -m server --back-office-auth`).

Owns: refusing a back-office RPC of PromotionService, RiskService or
LoyaltyService (core/admin/access.py's BACK_OFFICE_PERMISSIONS: creating and
approving promotions, coupons, red packets, chance grants, velocity limits,
the blacklist, loyalty rules and gifts) unless it carries an AdminService
token (`authorization: Bearer TOKEN`, from AdminService.Login) whose user
has a role allowed to call it; and, where the request names who acts (its
`by` field), unless that is the token's user, so that the four-eyes rule of
promotions (approved by someone other than the author) holds for people, not
for whatever name a caller types.
Used by: server/app.py, which registers every service through
`BackOfficeInterceptor.registrar` when the flag is on.

Checks, in order; the first that fails answers, logged at WARNING:

  no token, unknown, ended or expired token, user disabled   UNAUTHENTICATED
  the user's role may not call the RPC                      PERMISSION_DENIED
  `by` is not the token's user                               PERMISSION_DENIED

Terminal and customer RPCs are not touched (--terminal-auth guards
terminals). Off by default, like --terminal-auth, so that the demo, the
benchmarks and the examples run without users: a deployment turns both on.
It wraps each handler once, at registration, as server/terminal_auth.py
explains, so calls of unguarded RPCs cost nothing more.
"""

import logging

import grpc

from core.admin import Admin
from core.admin.access import BACK_OFFICE_PERMISSIONS, Actor, require_role
from core.admin.errors import AdminError, PermissionDenied
from server.admin_service import bearer_token, status_of
from server.terminal_auth import GuardedRegistrar

log = logging.getLogger("tally.back_office_auth")


def require_by_is_actor(request, actor: Actor):
    """A request that names who acts (`by`) must name the token's user
    (actor names are "user:USERNAME", core/admin/users.py)."""
    if "by" in request.DESCRIPTOR.fields_by_name and f"user:{request.by}" != actor.name:
        raise PermissionDenied(f"by is {request.by!r} but the token is {actor.name}'s: give your own username")


class BackOfficeInterceptor:
    """Puts the token check in front of every back-office RPC's handler."""

    def __init__(self, admin: Admin):
        self.admin = admin

    def registrar(self, server) -> GuardedRegistrar:
        return GuardedRegistrar(server, self)

    def intercepted(self, method: str, handler):
        """The handler the server runs for `method` instead of `handler`."""
        if method not in BACK_OFFICE_PERMISSIONS or handler is None or handler.unary_unary is None:
            return handler
        inner, admin = handler.unary_unary, self.admin

        async def behaviour(request, context):
            try:
                actor = admin.authenticate(bearer_token(context))
                require_role(actor, method, BACK_OFFICE_PERMISSIONS)
                require_by_is_actor(request, actor)
            except AdminError as error:
                code = status_of(error)
                log.warning("back-office call refused: %s %s: %s", method, code.name, error)
                await context.abort(code, str(error))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
