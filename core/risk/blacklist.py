"""The blacklist: cards refused permanently or frozen until a date, with a reason.

Owns: the entries (the `risk_blacklist` database) and the check every
operation on a card makes before it is built.
Used by: server/risk_service.py (add, remove, list), server/promotion_service.py
and server/payments.py (`blocking_entry` before an operation).

An entry is its card's organisation's (core/domains.py): staff add, remove
and list the entries of the cards they see; the check itself holds at every
station.

An entry is read from LMDB at each check (a few microseconds), not cached:
a card frozen by staff is refused by every server process at once.
"""

import msgspec

from core import limits
from core.errors import InvalidInput
from core.records import u64_key
from core.store import rows

REASON_LENGTH_MAX = 200
BY_LENGTH_MAX = 64
LIST_LIMIT_MAX = 10_000


# The latest time an entry may name: ms since the epoch fit a signed 64-bit
# integer (the wire type is unsigned: a negative time from a client arrives huge).
TIME_MS_MAX = 2**63 - 1


class BlacklistError(InvalidInput):
    """An entry that cannot be saved, naming the field."""


class BlacklistEntry(msgspec.Struct, frozen=True):
    """until_ms 0: permanent; otherwise the card is refused until then."""

    card_id: int
    reason: str
    added_by: str
    added_ms: int
    until_ms: int = 0

    def blocks(self, now_ms: int) -> bool:
        return self.until_ms == 0 or now_ms < self.until_ms

    @property
    def rule(self) -> str:
        """What a decline says."""
        kind = "blacklisted" if self.until_ms == 0 else f"frozen until {self.until_ms}"
        return f"risk blacklist: {kind}: {self.reason}"


def validate(entry: BlacklistEntry):
    if not 1 <= entry.card_id <= limits.CARD_ID_MAX:
        raise BlacklistError("card_id", f"must be within 1 .. {limits.CARD_ID_MAX}, got {entry.card_id}")
    if not 1 <= len(entry.reason) <= REASON_LENGTH_MAX:
        raise BlacklistError("reason", f"length must be within 1 .. {REASON_LENGTH_MAX} characters, got {len(entry.reason)}")
    if not 1 <= len(entry.added_by) <= BY_LENGTH_MAX:
        raise BlacklistError("by", f"length must be within 1 .. {BY_LENGTH_MAX} characters, got {len(entry.added_by)}")
    if entry.until_ms and entry.until_ms <= entry.added_ms:
        raise BlacklistError("until_ms", f"{entry.until_ms} is not after now ({entry.added_ms}): the freeze would end before it starts")
    if entry.until_ms > TIME_MS_MAX:
        raise BlacklistError("until_ms", f"must be at most {TIME_MS_MAX} (ms since the epoch), got {entry.until_ms}")


def add(txn, store, entry: BlacklistEntry) -> BlacklistEntry:
    """Add or replace the card's entry (in the caller's write transaction)."""
    validate(entry)
    txn.put(u64_key(entry.card_id), msgspec.msgpack.encode(entry), db=store.risk_blacklist)
    return entry


def remove(txn, store, card_id: int) -> bool:
    return txn.delete(u64_key(card_id), db=store.risk_blacklist)


def entry_of(store, card_id: int) -> BlacklistEntry | None:
    with store.env.begin() as txn:
        raw = txn.get(u64_key(card_id), db=store.risk_blacklist)
    return None if raw is None else msgspec.msgpack.decode(raw, type=BlacklistEntry)


def blocking_entry(store, card_id: int, now_ms: int) -> BlacklistEntry | None:
    """The entry that refuses this card now, or None (no entry, or a freeze
    that ended)."""
    if not card_id:
        return None
    entry = entry_of(store, card_id)
    return entry if entry is not None and entry.blocks(now_ms) else None


def entries(store, limit: int = LIST_LIMIT_MAX, seen=None) -> list[BlacklistEntry]:
    """Entries in card order; seen(txn, card_id): whether the caller sees
    the card (None: every card)."""
    found = []
    with store.env.begin() as txn:
        for _, raw in rows(txn, store.risk_blacklist):
            entry = msgspec.msgpack.decode(raw, type=BlacklistEntry)
            if seen is None or seen(txn, entry.card_id):
                found.append(entry)
                if len(found) >= limit:
                    break
    return found
