"""The terminal-auth interceptor (`python -m server --terminal-auth`).

Owns: checking every terminal request's MAC before anything else runs, even
before the request is parsed: the interceptor takes the request's bytes as
they came off the wire, and only a request that passes reaches the servicer.
Used by: server/app.py (installs it with --terminal-auth, by registering the
services through `TerminalAuthInterceptor.registrar`).

Guarded: PaymentService (every RPC), CardService.TopUp, LoyaltyService's
terminal RPCs (CheckIn, CompleteTask, RedeemGift), SettlementService's
SignOn and ShiftClose. Back-office RPCs (cards, loyalty rules, the rest of
settlement) are not terminal requests and pass untouched.
GatewayService.Exchange carries many terminals' requests in one stream with
no per-request MAC, and SettlementService.BatchUpload many Pay requests in
one message, so with --terminal-auth both are refused whole
(PERMISSION_DENIED) rather than left as a way around the check.

A request carries x-tally-terminal, x-tally-key-id, x-tally-serial and
x-tally-mac (core/admin/keys.py: what the MAC covers). Checks, in order; the
first that fails answers, and is logged at WARNING with its reason:

  metadata missing                               UNAUTHENTICATED
  metadata malformed                             INVALID_ARGUMENT (names the key)
  terminal not registered                        UNAUTHENTICATED
  terminal disabled                              PERMISSION_DENIED
  no working key, an old key id (rotated), expired   UNAUTHENTICATED
  MAC does not verify (any byte changed)         UNAUTHENTICATED
  request does not parse                         INVALID_ARGUMENT
  TerminalContext names another terminal         PERMISSION_DENIED
  TerminalContext.serial is not x-tally-serial   UNAUTHENTICATED
  TerminalContext names another station          PERMISSION_DENIED
  (terminal, serial) used by a different request PERMISSION_DENIED
  Query of another terminal's serial             PERMISSION_DENIED

Replays: an exact retry (same RPC, same content, same serial) passes, under
the current key, even one newer than the first attempt's: the kernel's
idempotency answers it with the stored answer and moves nothing, which is
what a terminal retrying after a time-out needs. A different request under a
used serial is refused here, before the kernel: the interceptor compares
the request's fingerprint with the kernel's idempotency entry (durable,
shared by every worker, kept across restarts). Two different requests with
one serial in flight at the same moment both pass here; the kernel applies
the first and declines the second (DUPLICATE_MISMATCH), so nothing moves
twice either way. Query has no serial of its own (x-tally-serial may be 0)
and is not replay-checked: it reads.
"""

import logging

import grpc
from google.protobuf.message import DecodeError

from core.admin import keys
from core.admin.access import now_ms
from core.admin.errors import AdminError, PermissionDenied
from core.admin.terminals import WorkingKeys
from core.records import Idem, decode, idem_key
from core.results import OpKind
from core.store import Store
from server.requests import fingerprint

log = logging.getLogger("tally.terminal_auth")

# gRPC path -> the kernel operation whose idempotency entry guards its
# serial (None: a read, not replay-checked).
GUARDED: dict[str, int | None] = {
    "/tally.v1.PaymentService/Pay": int(OpKind.PAY),
    "/tally.v1.PaymentService/PreAuthorize": int(OpKind.PREAUTH),
    "/tally.v1.PaymentService/Complete": int(OpKind.COMPLETE),
    "/tally.v1.PaymentService/Release": int(OpKind.RELEASE),
    "/tally.v1.PaymentService/Reverse": int(OpKind.REVERSE),
    "/tally.v1.PaymentService/Void": int(OpKind.VOID),
    "/tally.v1.PaymentService/Refund": int(OpKind.REFUND),
    "/tally.v1.PaymentService/Query": None,
    "/tally.v1.CardService/TopUp": int(OpKind.TOPUP),
    "/tally.v1.LoyaltyService/CheckIn": int(OpKind.CHECKIN),
    "/tally.v1.LoyaltyService/CompleteTask": int(OpKind.TASK),
    "/tally.v1.LoyaltyService/RedeemGift": int(OpKind.REDEEM),
    "/tally.v1.SettlementService/SignOn": int(OpKind.SIGN_ON),
    "/tally.v1.SettlementService/ShiftClose": int(OpKind.SHIFT_CLOSE),
    "/tally.v1.PromotionService/ClaimPacket": int(OpKind.PACKET_CLAIM),
    "/tally.v1.PromotionService/BuyChances": int(OpKind.PAY),
}
REFUSED_STREAMS = frozenset(("/tally.v1.GatewayService/Exchange",))
GATEWAY_REFUSED_TEXT = ("GatewayService carries no per-request MAC: with --terminal-auth, terminals call the "
                        "unary RPCs with x-tally-mac")
REFUSED_UNARY = frozenset(("/tally.v1.SettlementService/BatchUpload",))
BATCH_REFUSED_TEXT = ("BatchUpload carries no per-sale MAC: with --terminal-auth, terminals send offline sales one by one "
                      "with Pay (same serials: each is applied once)")
DECIMAL_DIGITS_MAX = 20
_FIELDS = (keys.METADATA_TERMINAL, keys.METADATA_KEY_ID, keys.METADATA_SERIAL, keys.METADATA_MAC)
_NO_FINGERPRINT = bytes(16)
# Of every key suite's MAC; the terminal's own suite decides which one verifies.
MAC_LENGTHS = frozenset(suite.mac_bytes for suite in keys.SUITES.values())


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, text: str):
        super().__init__(text)
        self.code = code


def _decimal(text: str, key: str) -> int:
    if len(text) <= DECIMAL_DIGITS_MAX and text.isdigit() and text.isascii():
        value = int(text)
        if value < 2**64:
            return value
    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{key}: must be a decimal number within 0 .. 2^64-1")


def parse_metadata(metadata) -> tuple[int, int, int, bytes]:
    """(terminal id, key id, serial, mac) from the call's metadata. This runs
    for every terminal request: the pairs go into a dict in C, and a key
    sent twice counts once (its last value), as with any metadata lookup."""
    found = dict(metadata or ())
    terminal, key_id = found.get(keys.METADATA_TERMINAL), found.get(keys.METADATA_KEY_ID)
    serial, mac = found.get(keys.METADATA_SERIAL), found.get(keys.METADATA_MAC)
    if terminal is None or key_id is None or serial is None or mac is None:
        missing = [key for key, value in zip(_FIELDS, (terminal, key_id, serial, mac)) if value is None]
        raise Refusal(grpc.StatusCode.UNAUTHENTICATED,
                      f"missing {', '.join(missing)}: this server authenticates terminals (see core/admin/terminal_client.py)")
    try:
        mac_bytes = bytes.fromhex(mac)
    except ValueError:
        mac_bytes = b""
    if len(mac_bytes) not in MAC_LENGTHS:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{keys.METADATA_MAC}: must be {2 * keys.MAC_BYTES} hex digits "
                                                        f"(HMAC-SHA256) or {2 * keys.SM4_MAC_BYTES} (CMAC-SM4)")
    return (_decimal(terminal, keys.METADATA_TERMINAL), _decimal(key_id, keys.METADATA_KEY_ID),
            _decimal(serial, keys.METADATA_SERIAL), mac_bytes)


class TerminalGuard:
    """The checks of the module's docstring, without gRPC around them."""

    def __init__(self, store: Store, master_key: keys.MasterKey, clock=now_ms):
        self.store = store
        self.working_keys = WorkingKeys(store, master_key)
        self.clock = clock
        # The handles themselves: Store finds a database by name on each access.
        self._env, self._idem = store.env, store.idem

    def check(self, method: str, kind: int | None, metadata, body: bytes, parse):
        """The parsed request, or Refusal."""
        terminal_id, key_id, serial, mac = parse_metadata(metadata)
        with self._env.begin() as txn:
            try:
                terminal, working_key = self.working_keys.current(txn, terminal_id, key_id, self.clock())
            except AdminError as error:
                code = grpc.StatusCode.PERMISSION_DENIED if isinstance(error, PermissionDenied) else grpc.StatusCode.UNAUTHENTICATED
                raise Refusal(code, str(error)) from None
            if not keys.mac_matches(working_key, method, terminal_id, key_id, serial, body, mac, terminal.key_algorithm):
                raise Refusal(grpc.StatusCode.UNAUTHENTICATED, f"MAC of terminal {terminal_id} does not verify")
            try:
                request = parse(body)
            except DecodeError:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "request: does not parse") from None
            if kind is None:
                if request.terminal_id not in (0, terminal_id):
                    raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"terminal {terminal_id} may query only its own requests")
                return request
            context = request.terminal
            if context.terminal_id != terminal_id:
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                              f"terminal.terminal_id is {context.terminal_id}, but the MAC is terminal {terminal_id}'s")
            if context.serial != serial:
                raise Refusal(grpc.StatusCode.UNAUTHENTICATED, f"terminal.serial is {context.serial}, {keys.METADATA_SERIAL} {serial}")
            if context.station_id != terminal.station_id:
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                              f"terminal {terminal_id} is registered at station {terminal.station_id}, not {context.station_id}")
            stored = txn.get(idem_key(terminal_id, serial), db=self._idem)
        if stored is not None:
            previous = decode(Idem, stored).fingerprint
            if previous != _NO_FINGERPRINT and previous != fingerprint(kind, request):
                raise Refusal(grpc.StatusCode.PERMISSION_DENIED,
                              f"serial {serial} of terminal {terminal_id} was used for another request: a replay")
        return request


class TerminalAuthInterceptor:
    """Puts the guard in front of every terminal RPC's handler.

    Why not grpc.aio.ServerInterceptor: that API resolves the handler
    through a Python coroutine on every call, which measured 20 to 80 µs per
    call before any check ran (a tenth of a Pay's server CPU). The handlers
    are fixed once the server runs, so the interceptor takes the same place
    in the call path (before parsing, before the servicer) by wrapping each
    handler once, when the services are registered: `registrar(server)` is
    the object to pass to the add_*Servicer_to_server functions.
    """

    def __init__(self, guard: TerminalGuard):
        self.guard = guard

    def registrar(self, server) -> "GuardedRegistrar":
        return GuardedRegistrar(server, self)

    def intercepted(self, method: str, handler):
        """The handler the server runs for `method` instead of `handler`."""
        if method in GUARDED:
            if handler is None or handler.unary_unary is None:
                return handler
            return self._guarded(handler, method, GUARDED[method])
        if method in REFUSED_STREAMS:
            return grpc.stream_stream_rpc_method_handler(_refuse_stream)
        if method in REFUSED_UNARY:
            return grpc.unary_unary_rpc_method_handler(_refuse_batch)
        return handler

    def _guarded(self, handler, method: str, kind: int | None):
        parse, inner, guard = handler.request_deserializer, handler.unary_unary, self.guard

        async def behaviour(body: bytes, context):
            try:
                request = guard.check(method, kind, context.invocation_metadata(), body, parse)
            except Refusal as refusal:
                log.warning("terminal request refused: %s %s: %s", method, refusal.code.name, refusal)
                await context.abort(refusal.code, str(refusal))
            return await inner(request, context)

        # No request_deserializer: the behaviour receives the wire bytes.
        return grpc.unary_unary_rpc_method_handler(behaviour, response_serializer=handler.response_serializer)


class GuardedRegistrar:
    """Stands for the server when services register: their handlers go in
    wrapped by the interceptor (this module's, or server/back_office_auth.py's:
    anything with `intercepted(method, handler)`); everything else passes to
    the server."""

    def __init__(self, server, interceptor):
        self._server = server
        self._interceptor = interceptor

    def add_generic_rpc_handlers(self, handlers):
        self._server.add_generic_rpc_handlers(tuple(_GuardedHandlers(handler, self._interceptor) for handler in handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict):
        wrapped = {name: self._interceptor.intercepted(f"/{service_name}/{name}", handler) for name, handler in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, wrapped)

    def __getattr__(self, name):
        return getattr(self._server, name)


class _GuardedHandlers(grpc.GenericRpcHandler):
    def __init__(self, handlers, interceptor):
        self._handlers = handlers
        self._interceptor = interceptor
        # gRPC path -> the handler to run, made at the method's first call.
        self._resolved = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        resolved = self._resolved.get(method)
        if resolved is None:
            resolved = self._interceptor.intercepted(method, self._handlers.service(handler_call_details))
            if resolved is not None:
                self._resolved[method] = resolved
        return resolved


async def _refuse_stream(request_iterator, context):
    log.warning("terminal request refused: GatewayService/Exchange PERMISSION_DENIED: %s", GATEWAY_REFUSED_TEXT)
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, GATEWAY_REFUSED_TEXT)


async def _refuse_batch(request, context):
    log.warning("terminal request refused: SettlementService/BatchUpload PERMISSION_DENIED: %s", BATCH_REFUSED_TEXT)
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, BATCH_REFUSED_TEXT)
