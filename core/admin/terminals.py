"""Terminals: registration, disabling, daily sign-on, the working key check.

Owns: the admin_terminals database and the life of a terminal's keys
(core/admin/keys.py says how they are made and sealed):

1. RegisterTerminal (an administrator): a terminal id at a station gets a
   random 32-byte secret key, returned this once, and its key suite
   (keys.KeyAlgorithm: AES and HMAC-SHA256 by default, or SM4 and
   CMAC-SM4); the store keeps the secret sealed under the master key.
2. SignOn (the terminal, every day): MACed with the sign-on key derived from
   its secret, with a serial above that of its last sign-on. It receives a
   new working key (of its suite) wrapped under its secret, valid for the domain's
   working_key_validity_s (a day by default). The previous working key is
   dead from that moment: keys rotate at each sign-on and expire by
   themselves.
3. Every later request: `WorkingKeys.current` hands the interceptor
   (server/terminal_auth.py) the terminal's record and current working key,
   or refuses: unregistered (Unauthenticated), disabled (PermissionDenied),
   no key, an old key id, an expired key (Unauthenticated).

Disabling a terminal drops its working key: once enabled again it signs on
before anything else.
Used by: core.admin.Admin (its TerminalsMixin), server/admin_service.py,
server/terminal_auth.py.
"""

import os
import struct

import msgspec

from core import limits
from core.admin import keys
from core.admin.access import Actor, require_range, require_text, require_visible, subtree, visible
from core.admin.base import AdminBase
from core.admin.directory import collect
from core.admin.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from core.admin.model import (
    LIST_LIMIT_MAX,
    NAME_LENGTH_MAX,
    ORG_ID_MAX,
    REASON_LENGTH_MAX,
    OrgKind,
    KeyAlgorithm,
    Terminal,
    TerminalStatus,
    pack,
    u32_key,
    unpack,
)
from core.store import Store, rows


class SignedOn(msgspec.Struct, frozen=True):
    """What a terminal receives at sign-on."""

    key_id: int
    # nonce || AEAD(wrap key, working key, aad=(terminal, key id, expires_ms)):
    # AES-256-GCM or SM4-GCM, as key_algorithm says.
    wrapped_key: bytes
    expires_ms: int
    key_algorithm: KeyAlgorithm = KeyAlgorithm.AES_HMAC_SHA256


# admin_meta's key of a u64 counting every change of a terminal's record,
# by any process: the terminal guard (server/terminal_auth.py) reads it a
# few times a second to know whether a terminal it keeps in memory changed.
TERMINALS_VERSION_KEY = b"terminals_version"
_VERSION = struct.Struct("<Q")


def terminals_version(txn, store: Store) -> int:
    """How many times a terminal's record changed (0: never, or before the
    count was kept)."""
    value = txn.get(TERMINALS_VERSION_KEY, db=store.admin_meta) if store.admin_meta is not None else None
    return 0 if value is None else _VERSION.unpack(value)[0]


def put_terminal(txn, store: Store, terminal: Terminal):
    """Store a terminal's record, counted in the terminals' version: every
    write of admin_terminals goes through here."""
    txn.put(u32_key(terminal.terminal_id), pack(terminal), db=store.admin_terminals)
    txn.put(TERMINALS_VERSION_KEY, _VERSION.pack(terminals_version(txn, store) + 1), db=store.admin_meta)


def terminal_record(txn, store: Store, terminal_id: int) -> Terminal | None:
    db = store.admin_terminals
    value = txn.get(u32_key(terminal_id), db=db) if db is not None else None
    return None if value is None else unpack(Terminal, value)


def require_registered(terminal: Terminal | None, terminal_id: int) -> Terminal:
    if terminal is None:
        raise Unauthenticated(f"terminal {terminal_id} is not registered")
    if terminal.status != TerminalStatus.ACTIVE:
        raise PermissionDenied(f"terminal {terminal_id} is disabled: {terminal.disabled_reason}")
    return terminal


class TerminalsMixin(AdminBase):
    def _visible_terminal(self, txn, actor: Actor, terminal_id: int) -> Terminal:
        terminal = terminal_record(txn, self.store, terminal_id)
        if terminal is None or not visible(txn, self.store, actor, terminal.station_id):
            raise NotFound(f"terminal {terminal_id} not found")
        return terminal

    def register_terminal(self, actor: Actor, terminal_id: int, station_id: int, name: str = "",
                          key_algorithm: KeyAlgorithm = KeyAlgorithm.AES_HMAC_SHA256) -> tuple[Terminal, bytes]:
        """(the record, the secret key): give the secret to the terminal now;
        it is never shown again."""
        require_range(terminal_id, "terminal_id", 1, limits.TERMINAL_ID_MAX)
        if key_algorithm not in keys.SUITES:
            raise InvalidInput("key_algorithm", f"must be one of {', '.join(algorithm.name for algorithm in keys.SUITES)}")
        require_range(station_id, "station_id", 1, ORG_ID_MAX)
        require_text(name, "name", 0, NAME_LENGTH_MAX)
        master_key = self._require_master_key()

        def change(txn):
            station = require_visible(txn, self.store, actor, station_id, "station")
            if station.kind != OrgKind.STATION:
                raise InvalidInput("station_id", f"organisation {station_id} is a {station.kind.name}, not a STATION")
            if terminal_record(txn, self.store, terminal_id) is not None:
                raise AlreadyExists(f"terminal id {terminal_id} is registered")
            secret = os.urandom(keys.KEY_BYTES)
            sealed = keys.seal(master_key, keys.Purpose.TERMINAL_SECRET, terminal_id, 0, secret)
            terminal = Terminal(terminal_id, station_id, name, TerminalStatus.ACTIVE, sealed, self.clock(),
                                key_algorithm=KeyAlgorithm(key_algorithm))
            put_terminal(txn, self.store, terminal)
            self._audit(txn, actor, "RegisterTerminal", f"terminal:{terminal_id}", station_id, None, terminal)
            return terminal, secret

        return self._write(change)

    def disable_terminal(self, actor: Actor, terminal_id: int, reason: str) -> Terminal:
        require_text(reason, "reason", 1, REASON_LENGTH_MAX)
        return self._set_status(actor, terminal_id, TerminalStatus.DISABLED, reason, "DisableTerminal")

    def enable_terminal(self, actor: Actor, terminal_id: int) -> Terminal:
        return self._set_status(actor, terminal_id, TerminalStatus.ACTIVE, "", "EnableTerminal")

    def _set_status(self, actor, terminal_id, status, reason, action) -> Terminal:
        def change(txn):
            before = self._visible_terminal(txn, actor, terminal_id)
            # The working key dies with either change: the terminal signs on again.
            after = msgspec.structs.replace(before, status=status, disabled_reason=reason, key_sealed=b"", key_expires_ms=0)
            put_terminal(txn, self.store, after)
            self._audit(txn, actor, action, f"terminal:{terminal_id}", before.station_id, before, after)
            return after

        return self._write(change)

    def get_terminal(self, actor: Actor, terminal_id: int) -> Terminal:
        return self._read(lambda txn: self._visible_terminal(txn, actor, terminal_id))

    def list_terminals(self, actor: Actor, station_id: int = 0, limit: int = LIST_LIMIT_MAX) -> tuple[list, bool]:
        def look(txn):
            if station_id:
                require_visible(txn, self.store, actor, station_id, "station")
            seen = subtree(txn, self.store, actor)
            terminals = (unpack(Terminal, value) for _, value in rows(txn, self.store.admin_terminals))
            return collect((t for t in terminals if (seen is None or t.station_id in seen) and station_id in (0, t.station_id)), limit)

        return self._read(look)

    # ------------------------------------------------------------ sign-on

    def sign_on(self, method: str, terminal_id: int, station_id: int, serial: int, key_id: int, mac: bytes,
                body: bytes) -> SignedOn:
        """A terminal's daily sign-on (see the module's docstring). Checks,
        in this order: registered, enabled, MACed with the sign-on key, at
        its own station, a serial above its last sign-on's."""
        master_key = self._require_master_key()

        def change(txn):
            terminal = require_registered(terminal_record(txn, self.store, terminal_id), terminal_id)
            if key_id != keys.SIGN_ON_KEY_ID:
                raise Unauthenticated(f"SignOn is MACed with the sign-on key: {keys.METADATA_KEY_ID} must be 0, got {key_id}")
            secret = keys.unseal(master_key, keys.Purpose.TERMINAL_SECRET, terminal_id, 0, terminal.secret_sealed)
            algorithm = terminal.key_algorithm
            if not keys.mac_matches(keys.sign_on_key(secret, algorithm), method, terminal_id, key_id, serial, body, mac,
                                    algorithm):
                raise Unauthenticated(f"MAC of terminal {terminal_id} does not verify")
            if station_id != terminal.station_id:
                raise PermissionDenied(f"terminal {terminal_id} is registered at station {terminal.station_id}, not {station_id}")
            if serial <= terminal.signon_serial:
                raise PermissionDenied(f"sign-on serial {serial} of terminal {terminal_id} is not above its last ({terminal.signon_serial}): a replay")
            now = self.clock()
            new_key_id = terminal.key_id + 1
            expires_ms = now + self.parameters_of(txn, terminal.station_id).working_key_validity_s * 1000
            working_key = os.urandom(keys.working_key_bytes(algorithm))
            after = msgspec.structs.replace(
                terminal, key_id=new_key_id, key_expires_ms=expires_ms, signon_serial=serial, signon_ms=now,
                key_sealed=keys.seal(master_key, keys.Purpose.WORKING_KEY, terminal_id, new_key_id, working_key))
            put_terminal(txn, self.store, after)
            self._audit(txn, Actor(f"terminal:{terminal_id}", terminal.station_id), "SignOn", f"terminal:{terminal_id}",
                        terminal.station_id, terminal, after)
            wrapped = keys.wrap_working_key(secret, terminal_id, new_key_id, expires_ms, working_key, algorithm)
            return SignedOn(new_key_id, wrapped, expires_ms, algorithm)

        return self._write(change)


# Working keys kept opened in memory, at most (one per terminal in use):
# past it the oldest opened goes. Why a cache: with the master key in an
# HSM, opening is a call into the token (~30 us on SoftHSM2, more over a
# network HSM's link), once per terminal and key per process instead of
# once per request. What it costs: the working keys of up to this many
# terminals sit in this process's memory, as they would in the terminals'.
KEY_CACHE_ENTRIES_MAX = 100_000


class WorkingKeys:
    """The interceptor's view of terminals: each request reads the
    terminal's record (so a disable or a sign-on by any process counts at
    once) and gets its current working key, opened once per process."""

    def __init__(self, store: Store, master_key: keys.MasterKey | bytes):
        self.store = store
        self.master_key = keys.as_master_key(master_key)
        self._opened: dict[tuple[int, int], tuple[bytes, bytes]] = {}
        # terminal id -> (its stored bytes, decoded): decoded again only
        # when the stored record changed.
        self._decoded: dict[int, tuple[bytes, Terminal]] = {}
        self._terminals_db = store.admin_terminals

    def _terminal(self, txn, terminal_id: int) -> Terminal | None:
        value = txn.get(u32_key(terminal_id), db=self._terminals_db)
        if value is None:
            return None
        cached = self._decoded.get(terminal_id)
        if cached is not None and cached[0] == value:
            return cached[1]
        if len(self._decoded) >= KEY_CACHE_ENTRIES_MAX:
            self._decoded.clear()
        terminal = unpack(Terminal, value)
        self._decoded[terminal_id] = (value, terminal)
        return terminal

    def current(self, txn, terminal_id: int, key_id: int, now_ms: int) -> tuple[Terminal, bytes]:
        """(the terminal, its working key), or Unauthenticated /
        PermissionDenied saying why not."""
        terminal = require_registered(self._terminal(txn, terminal_id), terminal_id)
        if not terminal.key_sealed:
            raise Unauthenticated(f"terminal {terminal_id} has no working key: sign on")
        if key_id != terminal.key_id:
            raise Unauthenticated(f"working key {key_id} of terminal {terminal_id} is not its current key "
                                  f"({terminal.key_id}): keys rotate at each sign-on")
        if terminal.key_expires_ms <= now_ms:
            raise Unauthenticated(f"working key {key_id} of terminal {terminal_id} expired: sign on")
        return terminal, self.opened(terminal)

    def opened(self, terminal: Terminal) -> bytes:
        """The terminal's current working key (it has one: key_sealed)."""
        terminal_id, key_id = terminal.terminal_id, terminal.key_id
        cached = self._opened.get((terminal_id, key_id))
        if cached is not None and cached[0] == terminal.key_sealed:
            return cached[1]
        working_key = keys.unseal(self.master_key, keys.Purpose.WORKING_KEY, terminal_id, key_id, terminal.key_sealed)
        if len(self._opened) >= KEY_CACHE_ENTRIES_MAX:
            # Dicts keep insertion order: the first is the oldest opened.
            del self._opened[next(iter(self._opened))]
        self._opened[(terminal_id, key_id)] = (terminal.key_sealed, working_key)
        return working_key
