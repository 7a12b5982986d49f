"""Log entries into a node's store, with the position in the same transaction.

Owns: the kinds of log entry (CHANGES: a write transaction's key/value
changes, core/replication/changes.py; LEADER: a node took the lease and
fenced the log before its first write), applying entries in order in one
write transaction together with this node's position (so a crash leaves
the store and its position agreeing, and a restart replays from there),
and marking a directory as a node of a log.
Used by: core/replication/node.py (followers; a leader catching up),
core/backup.py (restore and point-in-time replay), core/commit.py through
Replica.commit_changes (`put_position` on the leader's own transaction).

This module, core/commit.py, core/ledger.py and core/writes.py are the only
ones that open write transactions (tests/test_write_path.py): a follower's
store changes only here, from the log.
"""

import hashlib

import msgspec

from core.replication.changes import apply_entry
from core.records import META_NEXT_JOURNAL_SEQ, META_NEXT_TXN_ID
from core.replication.log import Entry
from core.store import DATABASE_NAMES, LOG_POSITION, LOG_POSITION_KEY, LOG_STREAM_KEY, Store, log_position_in, rows

# Meta keys of the node itself, never logged (its place in the log, its log).
NODE_LOCAL_KEYS = (LOG_POSITION_KEY, LOG_STREAM_KEY)

CHANGES = "changes"
LEADER = "leader"
KINDS = (CHANGES, LEADER)


class LeaderMark(msgspec.Struct, frozen=True):
    """A LEADER entry's content: who took over, where, under which lease
    revision (a term number: it only grows). The first entry of a log also
    carries `base`, the fingerprint of the store its first leader started
    from: a node applying that entry must start from the same (an empty
    directory, or a restored copy of the same data), else it would apply
    the log onto other books."""

    node: str
    address: str
    term: int
    base: str = ""


class BaseMismatch(Exception):
    """This node's store is not the one the log started from."""


class OutOfOrder(Exception):
    """An entry past the next position: a gap in what was read (a bug)."""


def put_position(txn, store: Store, position: int, time_ms: int):
    txn.put(LOG_POSITION_KEY, LOG_POSITION.pack(position, time_ms), db=store.meta)


def apply_entries(store: Store, entries: list[Entry], stop_at: int | None = None) -> tuple[int, int, list[Entry]]:
    """Apply `entries` (in log order) past this store's position, up to
    `stop_at` if given, in one durable write transaction. Entries at or
    below the position are skipped (already applied). Returns (position,
    time_ms, entries applied)."""
    applied = []
    with store.env.begin(write=True) as txn:
        position, time_ms = log_position_in(txn, store)
        for entry in entries:
            if entry.sequence <= position:
                continue
            if stop_at is not None and entry.sequence > stop_at:
                break
            if entry.sequence != position + 1:
                raise OutOfOrder(f"entry {entry.sequence} read after {position}")
            if entry.kind == CHANGES:
                apply_entry(txn, store, entry.data)
            elif entry.kind == LEADER:
                _check_base(txn, store, entry)
            else:
                raise ValueError(f"log entry {entry.sequence} has the unknown kind {entry.kind!r}: upgrade this node")
            position, time_ms = entry.sequence, entry.time_ms
            applied.append(entry)
        if applied:
            put_position(txn, store, position, time_ms)
    return position, time_ms, applied


def base_fingerprint(txn, store: Store) -> str:
    """What a store holds, in brief: the entries of every database and the
    kernel's next ids (the log's own meta keys aside). Equal for an empty
    directory and for every copy of one directory."""
    digest = hashlib.sha256()
    for name in DATABASE_NAMES:
        db = store.dbs.get(name)
        count = 0 if db is None else txn.stat(db)["entries"]
        if name == "meta" and db is not None:
            count -= sum(1 for key in NODE_LOCAL_KEYS if txn.get(key, db=db) is not None)
        digest.update(f"{name}={count};".encode())
    for key in (META_NEXT_TXN_ID, META_NEXT_JOURNAL_SEQ):
        digest.update(key + (txn.get(key, db=store.meta) or b""))
    return digest.hexdigest()[:32]


def _check_base(txn, store: Store, entry: Entry):
    mark = msgspec.json.decode(entry.data, type=LeaderMark)
    if mark.base and mark.base != base_fingerprint(txn, store):
        raise BaseMismatch(f"this node's data is not what the log started from (entry {entry.sequence}): restore it "
                           "from a snapshot of a node of this log (python -m core.backup restore), or start it empty")


def mark_replicated(store: Store, stream: str):
    """Record that this directory is a node of `stream` (the command-line
    tools then refuse to write it). Node-local: never logged."""
    with store.env.begin(write=True) as txn:
        txn.put(LOG_STREAM_KEY, stream.encode(), db=store.meta)


def mark_standalone(store: Store):
    """Make a copy of a node's directory a standalone store (a restore for
    inspection): it forgets its log and its position."""
    with store.env.begin(write=True) as txn:
        txn.delete(LOG_STREAM_KEY, db=store.meta)
        txn.delete(LOG_POSITION_KEY, db=store.meta)


def content_digest(store: Store) -> tuple[int, str]:
    """(position, SHA-256 of every key and value of every database but this
    node's own place in the log): nodes of one log at the same position
    hold the same digest, byte for byte (the failover tests and bench
    compare them)."""
    digest = hashlib.sha256()
    with store.env.begin() as txn:
        position, _ = log_position_in(txn, store)
        for name in DATABASE_NAMES:
            digest.update(b"\x00db:" + name.encode())
            for key, value in rows(txn, store.dbs.get(name)):
                if name == "meta" and key in NODE_LOCAL_KEYS:
                    continue
                digest.update(len(key).to_bytes(4, "little") + key + len(value).to_bytes(4, "little") + value)
    return position, digest.hexdigest()
