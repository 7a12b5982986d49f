"""The audit log: every administrative action, append-only, hash-chained.

Owns: the admin_audit database and admin_meta's audit head (admin_meta's
terminals version is core/admin/terminals.py's). An entry says who, when,
what (the action and its object) and the object before and after, as JSON
without secrets or personal data. Each entry's SHA-256 covers all its fields and the
previous entry's hash (the first entry's predecessor is 32 zero bytes), and
the head (last seq and hash) is kept apart, so `verify` finds an edited,
removed, inserted or cut-off entry and names it.
Used by: every change in core.admin (appended in the same LMDB write
transaction as the change: both are stored or neither), the auditors' RPCs,
`python -m core.admin verify-audit`.

Nothing in Tally updates or deletes an entry. The chain proves the log was
not changed by anyone who could not also rewrite every later entry and the
head: someone with the data files can recompute every hash, and the chain
then verifies. The published head binds even that: `python -m core.admin
audit-head --out FILE` writes the head (seq, hash) to a file the operator
ships off the host (a ticket, a mail, another machine), with an HSM also a
MAC of it under a key in the token (core/admin/hsm.py), and
`verify-audit --expected-head FILE` checks that the chain still holds that
entry, with that hash, at that position, hashing consistently up to it.
A rewrite of anything at or before the published entry is then caught;
entries after it are bound by the next published head.
"""

import enum
import hashlib
import struct

import msgspec

from core.admin.model import AuditEntry, AuditHead, pack, u64_key, unpack
from core.store import Store, rows

GENESIS_HASH = bytes(32)
HEAD_KEY = b"audit_head"
# Fields never written into an entry's before/after.
SECRET_FIELDS = frozenset(("password_hash", "secret_sealed", "key_sealed", "data_key_sealed", "fields_sealed"))
HEAD_FORMAT = "tally.v1 audit head"
_HEAD_MAC_FIELDS = struct.Struct(">Q32s")


# What stands in an entry for a personal field that has a value: the log
# is append-only, so a person's data written into it could never be erased
# (core/admin/customers.py: EraseCustomer).
PERSONAL_MARK = "[personal]"


def view(record) -> str:
    """JSON of a record for an audit entry: enums by name, secrets left out,
    personal fields (a record's PERSONAL_FIELDS) as PERSONAL_MARK when set;
    "" for None."""
    if record is None:
        return ""
    if isinstance(record, dict):  # a few named values (a lockout, a reason)
        return msgspec.json.encode(record).decode()
    personal = getattr(type(record), "PERSONAL_FIELDS", frozenset())
    fields = {}
    for name in record.__struct_fields__:
        if name in SECRET_FIELDS:
            continue
        value = getattr(record, name)
        if name in personal:
            value = PERSONAL_MARK if value else ""
        fields[name] = value.name if isinstance(value, enum.Enum) else value
    return msgspec.json.encode(fields).decode()


def entry_hash(seq: int, time_ms: int, actor: str, org_id: int, action: str, object_: str, before: str, after: str,
               prev_hash: bytes) -> bytes:
    """SHA-256 over a msgpack array of the fields, in this order (msgpack of
    the same values is the same bytes)."""
    content = msgspec.msgpack.encode([seq, time_ms, actor, org_id, action, object_, before, after, prev_hash])
    return hashlib.sha256(content).digest()


def head(txn, store: Store) -> AuditHead:
    value = txn.get(HEAD_KEY, db=store.admin_meta) if store.admin_meta is not None else None
    return AuditHead(0, GENESIS_HASH) if value is None else unpack(AuditHead, value)


def append(txn, store: Store, now_ms: int, actor: str, org_id: int, action: str, object_: str,
           before=None, after=None) -> AuditEntry:
    """Append one entry inside the caller's write transaction."""
    last = head(txn, store)
    seq = last.seq + 1
    before_text, after_text = view(before), view(after)
    digest = entry_hash(seq, now_ms, actor, org_id, action, object_, before_text, after_text, last.hash)
    entry = AuditEntry(seq, now_ms, actor, org_id, action, object_, before_text, after_text, last.hash, digest)
    stored = txn.put(u64_key(seq), pack(entry), db=store.admin_audit, overwrite=False)
    assert stored, f"audit entry {seq} exists already: the head is behind the chain"
    txn.put(HEAD_KEY, pack(AuditHead(seq, digest)), db=store.admin_meta)
    return entry


def read(txn, store: Store, visible_org_ids, after_seq: int, limit: int) -> list[AuditEntry]:
    """Entries after `after_seq`, oldest first, at most `limit`, only those
    of organisations in `visible_org_ids` (None: all)."""
    found = []
    if store.admin_audit is None:
        return found
    cursor = txn.cursor(db=store.admin_audit)
    if not cursor.set_range(u64_key(after_seq + 1)):
        return found
    for _, value in cursor:
        entry = unpack(AuditEntry, value)
        if visible_org_ids is None or entry.org_id in visible_org_ids:
            found.append(entry)
            if len(found) == limit:
                break
    return found


class Breach(msgspec.Struct, frozen=True):
    seq: int
    reason: str


class Verification(msgspec.Struct, frozen=True):
    entries: int
    head_seq: int
    head_hash: str
    breaches: tuple[Breach, ...]

    @property
    def intact(self) -> bool:
        return not self.breaches


def verify(store: Store, expected: AuditHead | None = None) -> Verification:
    """Walk the whole chain once; every breach names its entry. With
    `expected` (a published head): that entry must be in the chain with
    that hash."""
    breaches = []
    found_expected = None
    with store.env.begin() as txn:
        previous_seq, previous_hash = 0, GENESIS_HASH
        for key, value in rows(txn, store.admin_audit):
            seq = int.from_bytes(key, "big")
            if seq != previous_seq + 1:
                breaches.append(Breach(seq, f"entries {previous_seq + 1} .. {seq - 1} are missing"))
            try:
                entry = unpack(AuditEntry, value)
            except msgspec.DecodeError:
                breaches.append(Breach(seq, "does not decode"))
                previous_seq, previous_hash = seq, None
                continue
            breaches.extend(_check_entry(seq, entry, previous_seq, previous_hash))
            if expected is not None and seq == expected.seq:
                found_expected = entry
            previous_seq, previous_hash = seq, entry.hash
        recorded = head(txn, store)
    if expected is not None:
        breaches.extend(_check_published(expected, found_expected))
    if (recorded.seq, recorded.hash) != (previous_seq, previous_hash) and not (recorded.seq == 0 and previous_seq == 0):
        breaches.append(Breach(recorded.seq, f"the head names entry {recorded.seq} ({recorded.hash.hex()[:16]}...), "
                                             f"the chain ends at entry {previous_seq}: entries were cut off or added"))
    return Verification(previous_seq, recorded.seq, recorded.hash.hex(), tuple(breaches))


def _check_published(expected: AuditHead, entry: AuditEntry | None) -> list[Breach]:
    if entry is None:
        return [Breach(expected.seq, f"the published head names entry {expected.seq}, which the chain no longer "
                                     f"holds: entries were removed or the chain was cut")]
    if entry.seq != expected.seq or entry.hash != expected.hash:
        return [Breach(expected.seq, f"hash is {entry.hash.hex()[:16]}..., the published head says "
                                     f"{expected.hash.hex()[:16]}...: the chain was rewritten at or before this entry")]
    return []


def head_mac_input(published: AuditHead) -> bytes:
    """What the HSM MACs of a published head: the format's name, 0x00, seq
    (u64 big-endian), hash (32 bytes)."""
    return HEAD_FORMAT.encode() + b"\0" + _HEAD_MAC_FIELDS.pack(published.seq, published.hash)


class PublishedHead(msgspec.Struct, frozen=True):
    """The file `audit-head` writes: JSON, one object."""

    format: str
    seq: int
    # Hex, 64 digits.
    hash: str
    written_ms: int
    # Hex HMAC-SHA256 of head_mac_input under mac_key; "" when no HSM signed it.
    mac: str = ""
    mac_key: str = ""

    def head(self) -> AuditHead:
        return AuditHead(self.seq, bytes.fromhex(self.hash))


def read_published(path: str) -> PublishedHead:
    """A head file; ValueError naming what is wrong."""
    try:
        with open(path, "rb") as file:
            published = msgspec.json.decode(file.read(), type=PublishedHead)
    except OSError as error:
        raise ValueError(f"head file {path}: {error.strerror}") from None
    except msgspec.DecodeError as error:
        raise ValueError(f"head file {path}: not an audit head ({error})") from None
    if published.format != HEAD_FORMAT:
        raise ValueError(f"head file {path}: format is {published.format!r}, not {HEAD_FORMAT!r}")
    try:
        if len(bytes.fromhex(published.hash)) != len(GENESIS_HASH) or (published.mac and not bytes.fromhex(published.mac)):
            raise ValueError
    except ValueError:
        raise ValueError(f"head file {path}: hash must be {2 * len(GENESIS_HASH)} hex digits, mac hex digits") from None
    return published


def _check_entry(seq: int, entry: AuditEntry, previous_seq: int, previous_hash: bytes | None) -> list[Breach]:
    found = []
    if entry.seq != seq:
        found.append(Breach(seq, f"stored under seq {seq} but says seq {entry.seq}"))
    if previous_hash is not None and entry.prev_hash != previous_hash:
        found.append(Breach(seq, f"prev_hash is not the hash of entry {previous_seq}"))
    expected = entry_hash(entry.seq, entry.time_ms, entry.actor, entry.org_id, entry.action, entry.object,
                          entry.before, entry.after, entry.prev_hash)
    if expected != entry.hash:
        found.append(Breach(seq, "hash does not match its content: the entry was edited"))
    return found
