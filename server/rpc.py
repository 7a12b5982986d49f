"""Every call's way in: parse, check the caller, run, answer or refuse.

Owns: `Router`, the server's one generic handler, which finds every RPC's
handler by its path (why not gRPC's registered methods: its docstring), and
`Registrar`, the Router that wraps each tally.v1 handler once (at
registration: grpc.aio's per-call interceptor path cost more than the
checks themselves). For every call of a
tally.v1 RPC, in order:
  1. the request's wire bytes are parsed here: bytes that do not parse are
     INVALID_ARGUMENT naming the message type, never UNKNOWN;
  2. the caller is checked against server/callers.py's table: a terminal's
     MAC (server/terminal_auth.py), a staff token and its role (and that the
     request's `by` is the token's user), a partner's MAC
     (server/partner_auth.py); refused callers get UNAUTHENTICATED or
     PERMISSION_DENIED and the handler never runs;
  3. the handler runs with the caller in `server.callers.current_caller()`;
  4. a core.errors.TallyError becomes its status with machine-readable
     details (server/errors.py); anything else is a bug: logged, INTERNAL;
  5. the answer is counted in the metrics and the request log; an answer
     a handler returns as wire bytes (Pay's fast path, a reader's answer)
     is sent as it is.
Used by: server/app.py (the composition root) registers every service
through one Registrar; bench/echo.py routes its services through a Router,
so that the baseline runs on the same gRPC path.

gRPC's own services (health, reflection) pass through untouched: they are
public and answer for themselves.
"""

import contextvars
import logging
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from core.errors import InvalidInput, PermissionDenied, Unauthenticated
from core.results import ResultCode
from server import errors
from server.callers import CALLERS, OPEN, Allowed, Caller, set_current_caller
from server.metrics import OBSERVER, outcome_of, request_id_of

log = logging.getLogger("tally.rpc")

# RPC -> the method of its servicer that answers from the request's
# wire bytes when it can (None: the parsed request's path answers).
PAY = "/tally.v1.PaymentService/Pay"
WIRE_HANDLERS = {PAY: "pay_wire"}
# The outcome label (server/metrics.py) of the kernel's answer to a used
# serial with another body.
REPLAYED_OTHER = ResultCode.DUPLICATE_MISMATCH.name
AUTHORIZATION_KEY = "authorization"
BEARER = "bearer "
MAC_KEY = "x-tally-mac"
PARTNER_KEY = "x-tally-partner"
_OWN_PREFIX = "/tally.v1."
PUBLIC_CALLER = Caller("public")
# The call's metadata as gRPC read it to find the handler (Router.service),
# for the handlers that read it on every call (call_metadata).
_CALL_METADATA: contextvars.ContextVar = contextvars.ContextVar("tally_call_metadata", default=None)


def call_metadata(context):
    """The call's metadata: as grpc.aio read it to find the handler, when
    the Router kept it (a path it was asked to keep it for), else read again
    from the context. Why keep it: grpc.aio builds the metadata tuple anew
    on each invocation_metadata() (one tuple per pair), and it had already
    built it for the handler's lookup, in the same task (grpc 1.85
    _handle_rpc: _find_method_handler, then the handler). Were it ever found
    in another task, this reads the context's: a MAC covers its terminal's
    metadata and body together, so metadata that were not the call's
    would not verify and the full check would answer."""
    kept = kept_metadata()
    return kept if kept is not None else context.invocation_metadata()


def kept_metadata():
    """The metadata the Router kept for this call, or None."""
    return _CALL_METADATA.get()


class Guards:
    """The credentials this server checks. terminal: TerminalGuard
    (--terminal-auth) or None; partner: PartnerGuard (on with
    --terminal-auth: partners are machines too) or None; staff tokens are
    checked by core.admin.Admin, always for AdminService and with
    --back-office-auth for the other back-office RPCs."""

    def __init__(self, admin, terminal=None, partner=None, back_office: bool = False):
        self.admin = admin
        self.terminal = terminal
        self.partner = partner
        self.back_office = back_office

    def _kinds_on(self, allowed: Allowed) -> dict[str, bool]:
        """Each kind of caller the RPC allows -> whether its guard is on."""
        kinds = {}
        if allowed.terminal:
            kinds["terminal"] = self.terminal is not None
        if allowed.partner:
            kinds["partner"] = self.partner is not None
        if allowed.roles:
            kinds["staff"] = self.back_office or allowed.always_guarded
        return kinds

    def guarded(self, allowed: Allowed) -> bool:
        """Whether a call of this RPC must present a credential: when every
        kind of caller it allows is checked. (With --back-office-auth alone,
        an enquiry that terminals and staff both make stays open, as the
        terminals' own RPCs do: terminals are not authenticated then.)"""
        kinds = self._kinds_on(allowed)
        return bool(kinds) and all(kinds.values())

    def admit(self, method: str, allowed: Allowed, metadata, body: bytes, parse):
        """(request, caller) for a call allowed to run; raises a TallyError
        refusing it otherwise."""
        if allowed.refused_when_secure and self.terminal is not None:
            raise PermissionDenied(allowed.refused_when_secure, reason="REFUSED_IN_SECURE_MODE")
        if allowed.public:
            return parse(body), PUBLIC_CALLER
        found = dict(metadata or ())
        token = bearer_token(found.get(AUTHORIZATION_KEY, ""))
        # A credential presented is checked whenever its guard is on, even
        # where the RPC would also run without one: it scopes what is shown.
        kinds = {kind for kind, on in self._kinds_on(allowed).items() if on}
        if "terminal" in kinds and MAC_KEY in found:
            return self.terminal.check(method, allowed.serial, metadata, body, parse)
        if "partner" in kinds and PARTNER_KEY in found:
            return self.partner.check(method, metadata, body, parse)
        if "staff" in kinds and token:
            return self._staff(method, allowed, token, body, parse)
        if not self.guarded(allowed):
            return parse(body), OPEN
        if kinds == {"staff"}:
            return self._staff(method, allowed, token, body, parse)  # says what is missing
        if kinds == {"terminal"}:
            return self.terminal.check(method, allowed.serial, metadata, body, parse)  # says what is missing
        if kinds == {"partner"}:
            return self.partner.check(method, metadata, body, parse)
        raise Unauthenticated(f"no credential: {method.rsplit('/', 1)[1]} takes {allowed.describe()}",
                              reason="NO_CREDENTIAL")

    def _staff(self, method: str, allowed: Allowed, token: str, body: bytes, parse):
        actor = self.admin.authenticate(token)
        if actor.role not in allowed.roles:
            names = ", ".join(sorted(role.name for role in allowed.roles))
            role = actor.role.name if actor.role is not None else "none"
            raise PermissionDenied(f"{method.rsplit('/', 1)[1]} needs the role {names}; {actor.name} has {role}",
                                   reason="ROLE_NOT_ALLOWED")
        request = parse(body)
        require_by_is_actor(request, actor)
        return request, Caller("staff", actor)


def parser_of(deserializer):
    """A request parser that refuses bytes that do not parse as the RPC's
    request message with INVALID_ARGUMENT naming the message type."""
    if deserializer is None:  # the handler takes the wire bytes itself (TerminalKeyService.SignOn)
        return lambda body: body
    message_type = getattr(deserializer, "__self__", None)
    type_name = message_type.DESCRIPTOR.full_name if message_type is not None else "the request message"

    def parse(body: bytes):
        try:
            return deserializer(body)
        except (DecodeError, ValueError, TypeError):
            raise InvalidInput("request", f"does not parse as {type_name}", reason="UNPARSABLE") from None

    return parse


def bearer_token(value: str) -> str:
    return value[len(BEARER):].strip() if value[: len(BEARER)].lower() == BEARER else ""


def named_by(request) -> str | None:
    """Who the request says acts: its `by`, or its header's (a streamed
    statement's first chunk); None if it names nobody."""
    fields = request.DESCRIPTOR.fields_by_name
    if "by" in fields:
        return request.by
    if "header" in fields and request.HasField("header") and "by" in request.header.DESCRIPTOR.fields_by_name:
        return request.header.by
    return None


def require_by_is_actor(request, actor):
    """A request that names who acts must name the token's user (actor names
    are "user:USERNAME"): the four-eyes rule of promotions holds between
    people, not between names a caller types."""
    by = named_by(request)
    if by is not None and by and f"user:{by}" != actor.name:
        raise PermissionDenied(f"by is {by!r} but the token is {actor.name}'s: give your own username", field="by",
                               reason="BY_IS_NOT_CALLER")


class Router(grpc.GenericRpcHandler):
    """Stands for the grpc.aio server when services register, and is its one
    generic handler: every RPC is found by its path in one dict.

    Why not gRPC's registered methods (what the generated add_*_to_server
    asks for): grpc.aio's server waits for its next call with asyncio.wait
    over one pending future per registered method, so with Tally's ~130 RPCs
    every call cost a wait over ~130 futures (py-spy, unary Pay at 1,500 in
    flight: about an eighth of the event loop's time). Routed here, the
    server waits on one future, its generic call.
    """

    def __init__(self, server):
        self._server = server
        # gRPC path -> the handler to run.
        self._routes = {}
        # Generic handlers added without their methods (TerminalKeyService's
        # SignOn): asked once per path, their answer kept in _routes.
        self._others = []
        # Paths whose handler reads the metadata of every call (call_metadata).
        self._keeps_metadata: set[str] = set()
        if server is not None:
            server.add_generic_rpc_handlers((self,))

    def add_generic_rpc_handlers(self, handlers):
        self._others.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict):
        for name, handler in method_handlers.items():
            method = f"/{service_name}/{name}"
            self._routes[method] = self.wrap(method, handler)

    def __getattr__(self, name):
        return getattr(self._server, name)

    def service(self, handler_call_details):
        method = handler_call_details.method
        handler = self._routes.get(method)
        if handler is None:
            return self._ask_others(handler_call_details)
        if method in self._keeps_metadata:
            _CALL_METADATA.set(handler_call_details.invocation_metadata)
        return handler

    def keep_metadata(self, method: str):
        """Hand each call of `method` its metadata as read for the lookup
        (call_metadata)."""
        self._keeps_metadata.add(method)

    def _ask_others(self, handler_call_details):
        for other in self._others:
            handler = other.service(handler_call_details)
            if handler is not None:
                handler = self.wrap(handler_call_details.method, handler)
                self._routes[handler_call_details.method] = handler
                return handler
        return None

    def wrap(self, method: str, handler):
        """The handler the server runs for `method` (this router: as given)."""
        return handler


class Registrar(Router):
    """The server's Router, wrapping each tally.v1 handler once (see the
    module docstring)."""

    def __init__(self, server, guards: Guards, stamp=None):
        super().__init__(server)
        self.guards = guards
        # On a replicated node: stamps each unary answer with its freshness
        # (server/replication_service.py); None on the single node.
        self.stamp = stamp

    # ------------------------------------------------------------ wrapping

    def wrap(self, method: str, handler):
        if handler is None or not method.startswith(_OWN_PREFIX):
            return handler
        # Fail closed: a tally.v1 RPC missing from the table cannot be served.
        allowed = CALLERS[method]
        serializer = passing_bytes(handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, allowed, handler), response_serializer=serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._unary_stream(method, allowed, handler), response_serializer=serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._stream_unary(method, allowed, handler), response_serializer=serializer)
        return grpc.stream_stream_rpc_method_handler(self._stream_stream(method, allowed, handler), response_serializer=serializer)

    def _unary(self, method: str, allowed: Allowed, handler):
        inner, parse, guards = handler.unary_unary, parser_of(handler.request_deserializer), self.guards
        name = method.rsplit("/", 1)[1]
        stamp = self.stamp
        # A handler that may answer from the wire bytes (PaymentService.Pay:
        # server/payline.py), when its answer needs no freshness stamp (a
        # single node's): straight away when no guard reads the call, or
        # once the terminal's MAC has verified over those very bytes.
        wire = getattr(getattr(inner, "__self__", None), WIRE_HANDLERS.get(method, ""), None) if stamp is None else None
        # An answer a handler returns as wire bytes (a reader's: server/readers.py)
        # is parsed only to be stamped, on a replicated node.
        answer_type = answer_type_of(method) if stamp is not None else None
        # The guards are the server's from its start: whether they read a call
        # of this RPC is decided once, not per call.
        unguarded = wire is not None and guards.terminal is None and not guards.guarded(allowed)
        # A terminal's plain Pay under --terminal-auth: checked by the guard's
        # compiled way (server/terminal_auth.py pass_pay) and handed to the
        # wire handler as read; whatever it does not pass takes admit().
        pass_pay = guards.terminal if wire is not None and guards.terminal is not None and method == PAY else None
        if pass_pay is not None:
            self.keep_metadata(method)

        async def behaviour(body: bytes, context):
            started = time.perf_counter()
            request, found = None, None
            try:
                if unguarded:
                    found = await wire(body)
                elif pass_pay is not None:
                    found = await _passed_pay(pass_pay, wire, method, body, context)
                if found is None:
                    request, caller = guards.admit(method, allowed, context.invocation_metadata(), body, parse)
                    if caller is not OPEN:
                        set_current_caller(caller)
                    if wire is not None and not unguarded:
                        found = await wire(body)
                if found is None:
                    answer = await inner(request, context)
                    if stamp is not None:
                        if answer.__class__ is bytes:
                            answer = answer_type.FromString(answer)
                        stamp(answer)
                    outcome = outcome_of(answer)
                else:
                    answer, outcome = found
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _refuse(method, name, error, context, started, request)
            if OBSERVER.active:
                OBSERVER.request(name, "unary", outcome, time.perf_counter() - started, request,
                                 request_id_of(context) if OBSERVER.log_requests else None)
            return answer

        return behaviour

    def _unary_stream(self, method: str, allowed: Allowed, handler):
        inner, parse, guards = handler.unary_stream, parser_of(handler.request_deserializer), self.guards
        name = method.rsplit("/", 1)[1]

        async def behaviour(body: bytes, context):
            started = time.perf_counter()
            request = None
            try:
                request, caller = guards.admit(method, allowed, context.invocation_metadata(), body, parse)
                set_current_caller(caller)
                async for answer in inner(request, context):
                    yield answer
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _refuse(method, name, error, context, started, request)

        return behaviour

    def _stream_unary(self, method: str, allowed: Allowed, handler):
        """A client stream (ImportStatement): the caller is checked on the
        first message, before the handler reads anything."""
        inner, parse, guards = handler.stream_unary, parser_of(handler.request_deserializer), self.guards
        name = method.rsplit("/", 1)[1]

        async def behaviour(request_iterator, context):
            started = time.perf_counter()
            try:
                first = await anext(request_iterator, None)
                request, caller = guards.admit(method, allowed, context.invocation_metadata(),
                                               b"" if first is None else first, parse)
                set_current_caller(caller)

                async def the_whole_stream():
                    if first is not None:
                        yield request
                    async for raw in request_iterator:
                        yield parse(raw)

                answer = await inner(the_whole_stream(), context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _refuse(method, name, error, context, started, None)
            return answer

        return behaviour

    def _stream_stream(self, method: str, allowed: Allowed, handler):
        inner, parse, guards = handler.stream_stream, parser_of(handler.request_deserializer), self.guards
        name = method.rsplit("/", 1)[1]

        async def behaviour(request_iterator, context):
            started = time.perf_counter()
            try:
                guards.admit(method, allowed, context.invocation_metadata(), b"", parse)

                async def parsed():
                    async for raw in request_iterator:
                        yield parse(raw)

                # A handler marked wire_bytes reads the messages' bytes itself
                # (GatewayService: server/fastpay.pyx), refusing those that do
                # not parse as parse would.
                result = inner(request_iterator if getattr(inner, "wire_bytes", False) else parsed(), context)
                if hasattr(result, "__aiter__"):
                    async for answer in result:
                        yield answer
                else:
                    await result
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _refuse(method, name, error, context, started, None)

        return behaviour


async def _passed_pay(guard, wire, method: str, body: bytes, context):
    """The wire handler's (answer, outcome) for a Pay the terminal guard's
    compiled way passed, or None when it did not pass it or the wire
    handler declined it (admit() and the handler then take it from the
    start: nothing was written). The kernel checks replays there: a used
    serial with another body is refused as the reference guard refuses it."""
    message = guard.pass_pay(method, call_metadata(context), body)
    if message is None:
        return None
    found = await wire(body, message)
    if found is not None and found[1] == REPLAYED_OTHER:
        raise guard.replay_refusal(message.terminal_of(0), message.serial_of(0))
    return found


def answer_type_of(method: str):
    """The answer message class of a tally.v1 RPC ("/tally.v1.Service/Rpc")."""
    found = descriptor_pool.Default().FindMethodByName(method[1:].replace("/", "."))
    return message_factory.GetMessageClass(found.output_type)


def passing_bytes(serializer):
    """The RPC's response serializer, passing an answer already written as
    wire bytes (server/fastpay.pyx) as it is."""
    if serializer is None:
        return None

    def serialize(answer):
        return answer if answer.__class__ is bytes else serializer(answer)

    return serialize


async def _refuse(method: str, name: str, error: Exception, context, started: float, request):
    refusal = errors.refusal_of(error)
    request_id = request_id_of(context)
    if refusal is None:
        log.error("%s failed (request %s)", method, request_id, exc_info=error)
        refusal = errors.refusal_of(errors.internal_error(request_id))
    elif refusal.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        log.warning("call refused: %s %s: %s", method, refusal.code.name, refusal.text)
    if OBSERVER.active:
        OBSERVER.request(name, "unary", refusal.code.name, time.perf_counter() - started, request, request_id)
    await errors.abort(context, refusal)
