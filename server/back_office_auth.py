"""The back-office guard (`python -m server --back-office-auth`).

Owns: refusing a back-office RPC of PromotionService, RiskService,
LoyaltyService, SettlementService or CardService (core/admin/access.py's
BACK_OFFICE_PERMISSIONS: creating and approving promotions, coupons, red
packets, chance grants, velocity limits, the blacklist, loyalty rules and
gifts, statements, reconciliation and day-end, opening and changing cards)
unless it carries an AdminService token (`authorization: Bearer TOKEN`, from
AdminService.Login) whose user has a role allowed to call it; and, where the
request names who acts (its `by`, or its header's in a streamed statement),
unless that is the token's user: so the four-eyes rule of promotions
(approved by someone other than the author) holds between people, not
between names a caller types.
Used by: server/admin_service.py's registrar_for, through which server/app.py
registers every service.

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


def named_by(request) -> str | None:
    """Who the request says acts: its `by`, or its header's (a streamed
    statement's first chunk); None if it names nobody."""
    if "by" in request.DESCRIPTOR.fields_by_name:
        return request.by
    if "header" in request.DESCRIPTOR.fields_by_name and request.HasField("header") and "by" in request.header.DESCRIPTOR.fields_by_name:
        return request.header.by
    return None


def require_by_is_actor(request, actor: Actor):
    """A request that names who acts must name the token's user (actor
    names are "user:USERNAME", core/admin/users.py)."""
    by = named_by(request)
    if by is not None and f"user:{by}" != actor.name:
        raise PermissionDenied(f"by is {by!r} but the token is {actor.name}'s: give your own username")


class BackOfficeInterceptor:
    """Puts the token check in front of every back-office RPC's handler."""

    def __init__(self, admin: Admin):
        self.admin = admin

    def registrar(self, server) -> GuardedRegistrar:
        return GuardedRegistrar(server, self)

    def intercepted(self, method: str, handler):
        """The handler the server runs for `method` instead of `handler`."""
        if method not in BACK_OFFICE_PERMISSIONS or handler is None:
            return handler
        if handler.unary_unary is not None:
            return self._guarded_unary(method, handler)
        # Fail closed: a guarded RPC of a shape not handled here would pass.
        assert handler.stream_unary is not None, f"{method}: only unary and client-streaming RPCs can be guarded"
        return self._guarded_stream(method, handler)

    def _authorized(self, method: str, context) -> Actor:
        """The caller, if its token's role may call `method` (else AdminError)."""
        actor = self.admin.authenticate(bearer_token(context))
        require_role(actor, method, BACK_OFFICE_PERMISSIONS)
        return actor

    @staticmethod
    async def _refuse(method: str, context, error: AdminError):
        code = status_of(error)
        log.warning("back-office call refused: %s %s: %s", method, code.name, error)
        await context.abort(code, str(error))

    def _guarded_unary(self, method: str, handler):
        inner = handler.unary_unary

        async def behaviour(request, context):
            try:
                require_by_is_actor(request, self._authorized(method, context))
            except AdminError as error:
                await self._refuse(method, context, error)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)

    def _guarded_stream(self, method: str, handler):
        """A client stream (ImportStatement): the token is checked before the
        first message is read, `by` on the first message (its header)."""
        inner = handler.stream_unary

        async def behaviour(request_iterator, context):
            try:
                actor = self._authorized(method, context)
                first = await anext(request_iterator, None)
                if first is not None:
                    require_by_is_actor(first, actor)
            except AdminError as error:
                await self._refuse(method, context, error)

            async def the_whole_stream():
                if first is not None:
                    yield first
                async for request in request_iterator:
                    yield request

            return await inner(the_whole_stream(), context)

        return grpc.stream_unary_rpc_method_handler(
            behaviour, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
