"""The terminal guard (`python -m server --terminal-auth`).

Owns: checking a terminal request's MAC before anything else runs, even
before the request is parsed: it takes the request's bytes as they came off
the wire, and only a request that passes reaches the servicer.
Used by: server/rpc.py, for every RPC that server/callers.py lets a
terminal call (Pay and the other payment RPCs, TopUp, the loyalty and
promotion RPCs of a customer at a terminal, SignOn and ShiftClose, the
enquiries GetCard, Query, GetPoints, ...). GatewayService.Exchange and
SettlementService.BatchUpload carry no MAC per request and are refused in
secure mode (server/callers.py says why).

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
  an RPC with a serial but no TerminalContext    INVALID_ARGUMENT
  TerminalContext names another terminal         PERMISSION_DENIED
  TerminalContext.serial is not x-tally-serial   UNAUTHENTICATED
  TerminalContext names another station          PERMISSION_DENIED
  (terminal, serial) used by a different request PERMISSION_DENIED
  Query of another terminal's serial             PERMISSION_DENIED

A plain Pay (server/fastpay.pyx: what the kernel can be handed straight
from the wire) takes a compiled way through the same checks,
`TerminalGuard.pass_pay`, and the reference way above answers whatever it
does not pass:
- the metadata and the Pay's terminal and serial are read from the wire
  (fastpay.terminal_pay): no protobuf object is made;
- the terminal's record, station and working key come from memory, kept
  per terminal with the key's MAC state (fastpay.KeptTerminal): a change made
  through this process's Admin (disable, enable, sign-on) counts at the
  next request; a change made by another process (another worker, the
  offline tools) counts within TERMINALS_CHECKED_EVERY_MS, the interval
  at which the stored count of terminal changes (core/admin/terminals.py
  terminals_version) is read: once it moved, each kept terminal is
  compared with its stored record again at its next request;
- the replay check is the kernel's own: a used serial with another body
  comes back from the kernel as DUPLICATE_MISMATCH, which server/rpc.py
  answers with `TerminalGuard.replay_refusal`, the very refusal the
  reference gives, and nothing moves.
Why: under load each of these steps cost far more than in a loop (python
-m bench e2e --terminal-auth, README's Security section: 0.74-0.76 of
plain Pay through the reference alone).

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
import types

from core import idempotency
from core.admin import keys
from core.admin.access import now_ms
from core.admin.model import Terminal, TerminalStatus, u32_key, unpack
from core.admin.terminals import KEY_CACHE_ENTRIES_MAX, WorkingKeys, terminals_version
from core.errors import InvalidInput, PermissionDenied, Unauthenticated
from core.store import Store
from server import fastpay
from server.callers import Caller
from server.requests import fingerprint

log = logging.getLogger("tally.terminal_auth")

_FIELDS = (keys.METADATA_TERMINAL, keys.METADATA_KEY_ID, keys.METADATA_SERIAL, keys.METADATA_MAC)
_NO_FINGERPRINT = bytes(16)
# Of every key suite's MAC; the terminal's own suite decides which one verifies.
MAC_LENGTHS = frozenset(suite.mac_bytes for suite in keys.SUITES.values())
# How often pass_pay reads the stored count of terminal changes: the delay
# of a change made by another process. One read a tenth of a second, where
# reading each terminal's record at each Pay cost the loaded server most of
# the guard's time (README, Security: figures).
TERMINALS_CHECKED_EVERY_MS = 100


def _decimal(text: str, key: str) -> int:
    if len(text) <= keys.METADATA_DECIMAL_DIGITS_MAX and text.isdigit() and text.isascii():
        value = int(text)
        if value < 2**64:
            return value
    raise InvalidInput(key, "must be a decimal number within 0 .. 2^64-1", reason="BAD_METADATA")


def parse_metadata(metadata) -> tuple[int, int, int, bytes]:
    """(terminal id, key id, serial, mac) from the call's metadata. This runs
    for every terminal request: the pairs go into a dict in C, and a key
    sent twice counts once (its last value), as with any metadata lookup."""
    found = dict(metadata or ())
    terminal, key_id = found.get(keys.METADATA_TERMINAL), found.get(keys.METADATA_KEY_ID)
    serial, mac = found.get(keys.METADATA_SERIAL), found.get(keys.METADATA_MAC)
    if terminal is None or key_id is None or serial is None or mac is None:
        missing = [key for key, value in zip(_FIELDS, (terminal, key_id, serial, mac)) if value is None]
        raise Unauthenticated(f"missing {', '.join(missing)}: this server authenticates terminals "
                              "(see core/admin/terminal_client.py)", reason="NO_CREDENTIAL")
    try:
        mac_bytes = bytes.fromhex(mac)
    except ValueError:
        mac_bytes = b""
    if len(mac_bytes) not in MAC_LENGTHS:
        raise InvalidInput(keys.METADATA_MAC, f"must be {2 * keys.MAC_BYTES} hex digits (HMAC-SHA256) or "
                                              f"{2 * keys.SM4_MAC_BYTES} (CMAC-SM4)", reason="BAD_METADATA")
    return (_decimal(terminal, keys.METADATA_TERMINAL), _decimal(key_id, keys.METADATA_KEY_ID),
            _decimal(serial, keys.METADATA_SERIAL), mac_bytes)


class TerminalGuard:
    """The checks of the module's docstring, without gRPC around them."""

    def __init__(self, store: Store, master_key: keys.MasterKey, clock=now_ms, admin=None):
        self.store = store
        self.working_keys = WorkingKeys(store, master_key)
        self.clock = clock
        # The Admin this process changes terminals through (its `changes`
        # count); None: no change is made here (a test's guard, a tool's).
        self.admin = admin
        # terminal id -> fastpay.KeptTerminal, for pass_pay.
        self._kept: dict = {}
        # What the kept terminals were read against: a number that moves
        # when the Admin's change count or the stored terminals version
        # moved (_generation).
        self._generation = 0
        self._admin_changes = 0
        self._stored_version = 0
        self._version_read_ms = 0
        # RPC path -> keys.mac_prefix(path).
        self._mac_prefixes: dict[str, bytes] = {}
        # The handles themselves: Store finds a database by name on each access.
        self._env = store.env
        self._terminals = store.admin_terminals
        self._requests = types.SimpleNamespace(requests=store.requests, request_tails=store.request_tails,
                                               request_index=store.request_index)

    def check(self, method: str, kind: int | None, metadata, body: bytes, parse) -> tuple[object, Caller]:
        """(the parsed request, the terminal as caller); raises a TallyError
        refusing it. kind: the OpKind whose idempotency entry guards the
        serial, None for a request without a serial of its own."""
        terminal_id, key_id, serial, mac = parse_metadata(metadata)
        with self._env.begin() as txn:
            terminal, working_key = self.working_keys.current(txn, terminal_id, key_id, self.clock())
            if not keys.mac_matches(working_key, method, terminal_id, key_id, serial, body, mac, terminal.key_algorithm):
                raise Unauthenticated(f"MAC of terminal {terminal_id} does not verify", reason="BAD_MAC")
            request = parse(body)
            self._check_context(request, kind, terminal_id, serial, terminal.station_id)
            stored = idempotency.find(txn, self._requests, terminal_id, serial) if kind is not None else None
        if stored is not None:
            previous = stored[1].entry.fingerprint
            if previous != _NO_FINGERPRINT and previous != fingerprint(kind, request):
                raise self.replay_refusal(terminal_id, serial)
        return request, Caller("terminal", terminal_id=terminal_id, station_id=terminal.station_id)

    @staticmethod
    def replay_refusal(terminal_id: int, serial: int) -> PermissionDenied:
        return PermissionDenied(f"serial {serial} of terminal {terminal_id} was used for another request: a replay",
                                reason="REPLAY")

    def pass_pay(self, method: str, metadata, body: bytes):
        """The Pay's fastpay.PayMessage when every check of check() but the
        replay check passes it (the kernel makes that one: see the module's
        docstring); None when any does not, or the Pay is not plain: then
        check() decides and says why."""
        now = self.clock()
        generation = self._generation_at(now)
        prefix = self._mac_prefixes.get(method)
        if prefix is None:
            prefix = self._mac_prefixes[method] = keys.mac_prefix(method)
        found = fastpay.terminal_pay(metadata, body, prefix, self._kept, now, generation)
        if found.__class__ is int:
            if not self._keep(found, generation):
                return None
            found = fastpay.terminal_pay(metadata, body, prefix, self._kept, now, generation)
            if found.__class__ is int:  # it names another key than the stored one
                return None
        return found

    def _generation_at(self, now: int) -> int:
        """The kept terminals' generation: moved when this process's Admin
        changed anything, or the stored terminals version moved (read at
        most every TERMINALS_CHECKED_EVERY_MS)."""
        changes = self.admin.changes if self.admin is not None else 0
        if changes == self._admin_changes and self._version_read_ms <= now < self._version_read_ms + TERMINALS_CHECKED_EVERY_MS:
            return self._generation
        if changes != self._admin_changes:
            self._admin_changes = changes
            self._generation += 1
        if now >= self._version_read_ms + TERMINALS_CHECKED_EVERY_MS or now < self._version_read_ms:
            with self._env.begin() as txn:
                version = terminals_version(txn, self.store)
            self._version_read_ms = now
            if version != self._stored_version:
                self._stored_version = version
                self._generation += 1
        return self._generation

    def _keep(self, terminal_id: int, generation: int) -> bool:
        """Read the terminal's record and keep it (fastpay.KeptTerminal) for
        this generation; False when it is not active with a working key
        (check() says which)."""
        with self._env.begin() as txn:
            record = txn.get(u32_key(terminal_id), db=self._terminals)
        if record is None:
            return False
        kept = self._kept.get(terminal_id)
        if kept is not None and kept.record == record:
            kept.generation = generation
            return True
        terminal = unpack(Terminal, record)
        if terminal.status != TerminalStatus.ACTIVE or not terminal.key_sealed:
            self._kept.pop(terminal_id, None)
            return False
        if len(self._kept) >= KEY_CACHE_ENTRIES_MAX:
            self._kept.clear()
        mac_key = keys.MacKey(self.working_keys.opened(terminal), terminal.key_algorithm)
        self._kept[terminal_id] = fastpay.KeptTerminal(record, terminal.station_id, terminal.key_id,
                                                       terminal.key_expires_ms, mac_key, generation)
        return True

    @staticmethod
    def _check_context(request, kind: int | None, terminal_id: int, serial: int, station_id: int):
        """The request's own terminal fields must be the MAC's terminal's."""
        fields = request.DESCRIPTOR.fields_by_name
        if "terminal_id" in fields and request.terminal_id not in (0, terminal_id):
            raise PermissionDenied(f"terminal {terminal_id} may query only its own requests", reason="OTHER_TERMINAL")
        if "terminal" not in fields or not request.HasField("terminal"):
            if kind is not None:
                raise InvalidInput("terminal", "is required (station_id, terminal_id, serial, operator_id)")
            return
        context = request.terminal
        if context.terminal_id != terminal_id:
            raise PermissionDenied(f"terminal.terminal_id is {context.terminal_id}, but the MAC is terminal {terminal_id}'s",
                                   field="terminal.terminal_id", reason="OTHER_TERMINAL")
        if kind is not None and context.serial != serial:
            raise Unauthenticated(f"terminal.serial is {context.serial}, {keys.METADATA_SERIAL} {serial}",
                                  field="terminal.serial", reason="SERIAL_MISMATCH")
        if context.station_id != station_id:
            raise PermissionDenied(f"terminal {terminal_id} is registered at station {station_id}, not {context.station_id}",
                                   field="terminal.station_id", reason="OTHER_STATION")
