"""What a write transaction changed, as bytes: the content of a log entry.

Owns: RecordingTxn, a stand-in for a py-lmdb write transaction that passes
every call through to the real one and encodes each key/value change it
stores (put, delete, replace, pop, a cursor's put/putmulti/delete, and a
database cleared with drop(db, delete=False)) as it happens; the encoding
(`encode_changes` / `decode_changes`, `payload`); and `apply_entry`, which
makes the same changes in another store's write transaction.
Used by: core/ledger.py and core/commit.py (the leader records each batch
and each back-office change), core/replication/applier.py (followers and
restores apply them), server/events.py (reads committed transactions out
of them).

Why key/value changes and not the operations: a follower that stores what
the leader stored needs no kernel, no clock, no rules snapshot and no
random draw to agree with it byte for byte, and back-office changes (plain
Python functions of a transaction) are logged the same way as kernel
batches. Measured (`python -m bench log-content`): a card payment changes
9 records, 851 bytes raw, 57 compressed, against 176 bytes for its
operation; a follower applies it in 7-11 us of CPU, where running the
kernel on the operation takes 9-15 us.

Encoding: VERSION (u8), then for each change
    database index u8 (core.store.DATABASE_NAMES), kind u8,
    key length u16, value length u32, key, value
little-endian; a CLEAR has empty key and value. The whole is compressed
with zstd (level 1: about 15x smaller on kernel records, about a
millisecond per MB) when that saves space, flagged in the version byte.
The hot loops (recording a putmulti, applying an entry) are compiled in
encoding.pyx; the plain-Python `_record_change`, `_record_puts` and
`_apply_body` here write and read the same bytes when it is not built.
"""

import struct
import threading
from collections.abc import Iterable

import zstandard

from core.store import DATABASE_NAMES, Store

VERSION = 1
COMPRESSED = 0x80
PUT = 1
DELETE = 2
CLEAR = 3
CHANGE_HEADER = struct.Struct("<BBHI")
KEY_BYTES_MAX = 0xFFFF
# Compressing a few hundred bytes saves nothing worth the CPU.
COMPRESS_BYTES_MIN = 4096
# zstd level 1, measured against zlib and lz4 on a batch of 1,500 payments
# (1.27 MB): zstd 1 84 KB in 1.3-1.8 ms, lz4 197 KB in 1.0 ms, zlib 1 121 KB
# in 4.7 ms on a quiet machine and 20-40 ms on a busy one (bench log-content).
COMPRESS_LEVEL = 1

Change = tuple[int, int, bytes, bytes]
_pack_header = CHANGE_HEADER.pack


def _record_change(encoded: bytearray, db: int, kind: int, key, value=b""):
    """Append one change to encoded (encoding.pyx's record_change, in Python)."""
    if len(key) > KEY_BYTES_MAX:
        raise ValueError(f"a key of {len(key)} bytes cannot be logged (at most {KEY_BYTES_MAX})")
    encoded += _pack_header(db, kind, len(key), len(value))
    encoded += key
    encoded += value


def _record_puts(encoded: bytearray, db: int, kind: int, items: list, count: int):
    """Append a change for each of the first count (key, value) pairs of
    items (encoding.pyx's record_puts, in Python)."""
    for key, value in items[:count] if count < len(items) else items:
        _record_change(encoded, db, kind, key, value)


# A zstd context must not be used by two threads at once: the leader
# compresses on its NATS thread, a follower decompresses on its replica
# thread while the events relay reads entries on another.
_contexts = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    compressor = getattr(_contexts, "compressor", None)
    if compressor is None:
        compressor = _contexts.compressor = zstandard.ZstdCompressor(level=COMPRESS_LEVEL)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_contexts, "decompressor", None)
    if decompressor is None:
        decompressor = _contexts.decompressor = zstandard.ZstdDecompressor()
    return decompressor


class RecordingTxn:
    """A write transaction that encodes what it changes (see `payload`).

    Reads (get, cursor reads, id, stat) go straight to the real transaction;
    `get` and `id` are the real bound methods, so the kernel's reads cost
    what they cost without recording. Every change is recorded only if
    LMDB stored it (a put with overwrite=False onto an existing key is not).
    Keys and values are copied into the encoding at once: the kernel passes
    bytearrays it goes on changing.
    """

    __slots__ = ("txn", "encoded", "count", "_index", "get", "id", "stat")

    def __init__(self, txn, index: dict):
        self.txn = txn
        self.encoded = bytearray()
        self.count = 0
        self._index = index
        self.get = txn.get
        self.id = txn.id
        self.stat = txn.stat

    def __getattr__(self, name):
        return getattr(self.txn, name)

    @property
    def changes(self) -> list[Change]:
        return _decode_body(self.encoded)

    def payload(self) -> bytes:
        """The log entry of everything changed so far ("" if nothing was)."""
        return _finish(self.encoded) if self.count else b""

    def record(self, db: int, kind: int, key, value=b""):
        record_change(self.encoded, db, kind, key, value)
        self.count += 1

    def put(self, key, value, dupdata=True, overwrite=True, append=False, db=None):
        stored = self.txn.put(key, value, dupdata=dupdata, overwrite=overwrite, append=append, db=db)
        if stored:
            self.record(self._index[db], PUT, key, value)
        return stored

    def replace(self, key, value, db=None):
        old = self.txn.replace(key, value, db=db)
        self.record(self._index[db], PUT, key, value)
        return old

    def delete(self, key, value=b"", db=None):
        deleted = self.txn.delete(key, value, db=db)
        if deleted:
            self.record(self._index[db], DELETE, key)
        return deleted

    def pop(self, key, db=None):
        old = self.txn.pop(key, db=db)
        if old is not None:
            self.record(self._index[db], DELETE, key)
        return old

    def drop(self, db, delete=True):
        if delete:
            raise NotImplementedError("a replicated store keeps its databases: drop(db, delete=False) clears one")
        self.txn.drop(db, delete=False)
        self.record(self._index[db], CLEAR, b"")

    def cursor(self, db=None):
        return RecordingCursor(self.txn.cursor(db=db), self._index[db], self)


class RecordingCursor:
    """A cursor of a RecordingTxn: reads pass through, changes are recorded."""

    __slots__ = ("cursor", "_db", "_txn")

    def __init__(self, cursor, db_index: int, txn: RecordingTxn):
        self.cursor = cursor
        self._db = db_index
        self._txn = txn

    def __getattr__(self, name):
        return getattr(self.cursor, name)

    def __iter__(self):
        return iter(self.cursor)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cursor.close()

    def put(self, key, value, dupdata=True, overwrite=True, append=False):
        stored = self.cursor.put(key, value, dupdata=dupdata, overwrite=overwrite, append=append)
        if stored:
            self._txn.record(self._db, PUT, key, value)
        return stored

    def putmulti(self, items, dupdata=True, overwrite=True, append=False):
        assert overwrite, "putmulti(overwrite=False) cannot say which items it stored"
        items = items if isinstance(items, list) else list(items)
        consumed, added = self.cursor.putmulti(items, dupdata=dupdata, overwrite=True, append=append)
        record_puts(self._txn.encoded, self._db, PUT, items, consumed)
        self._txn.count += consumed
        return consumed, added

    def replace(self, key, value):
        old = self.cursor.replace(key, value)
        self._txn.record(self._db, PUT, key, value)
        return old

    def pop(self, key):
        old = self.cursor.pop(key)
        if old is not None:
            self._txn.record(self._db, DELETE, key)
        return old

    def delete(self, dupdata=False):
        key = self.cursor.key()
        deleted = self.cursor.delete(dupdata)
        if deleted:
            self._txn.record(self._db, DELETE, key)
        return deleted


def database_index(store: Store) -> dict:
    """The store's database handles -> their index in DATABASE_NAMES."""
    assert len(DATABASE_NAMES) < 256
    return {store.dbs[name]: index for index, name in enumerate(DATABASE_NAMES)}


def recording(txn, store: Store, index: dict | None = None) -> RecordingTxn:
    return RecordingTxn(txn, index if index is not None else database_index(store))


def encode_changes(changes: Iterable[Change]) -> bytes:
    encoded = bytearray()
    for db, kind, key, value in changes:
        record_change(encoded, db, kind, key, value)
    return _finish(encoded)


def _finish(body: bytearray) -> bytes:
    if len(body) >= COMPRESS_BYTES_MIN:
        packed = _compressor().compress(body)
        if len(packed) < len(body):
            return bytes((VERSION | COMPRESSED,)) + packed
    return bytes((VERSION,)) + body


def decode_changes(data: bytes) -> list[Change]:
    return _decode_body(_body_of(data))


def _body_of(data: bytes):
    if not data:
        raise ValueError("an empty log entry")
    version = data[0] & ~COMPRESSED
    if version != VERSION:
        raise ValueError(f"log entry version {version}: this node reads version {VERSION} (upgrade it)")
    return _decompressor().decompress(data[1:]) if data[0] & COMPRESSED else memoryview(data)[1:]


def _decode_body(body) -> list[Change]:
    changes, offset, size = [], 0, CHANGE_HEADER.size
    unpack = CHANGE_HEADER.unpack_from
    view = memoryview(body)
    end = len(view)
    while offset < end:
        db, kind, key_length, value_length = unpack(view, offset)
        offset += size
        key = bytes(view[offset : offset + key_length])
        offset += key_length
        value = bytes(view[offset : offset + value_length])
        offset += value_length
        changes.append((db, kind, key, value))
    if offset != end:
        raise ValueError("a log entry ends inside a change: truncated or corrupt")
    return changes


def apply_entry(txn, store: Store, data: bytes):
    """Make the changes of a log entry in the caller's write transaction,
    in order, straight from its bytes (the follower's hot path: no list of
    changes in between). Runs of puts into one database go through one
    cursor (putmulti): the leader's kernel wrote them in key order, so each
    finds its page next to the last."""
    apply_changes(txn, [store.dbs[name] for name in DATABASE_NAMES], _body_of(data))


def _apply_body(txn, handles: list, body):
    """apply_entry's loop over a body (encoding.pyx's apply_changes, in Python)."""
    view = memoryview(body)
    unpack, size, end = CHANGE_HEADER.unpack_from, CHANGE_HEADER.size, len(view)
    offset, run, run_db = 0, [], -1
    while offset < end:
        db, kind, key_length, value_length = unpack(view, offset)
        offset += size
        key = view[offset : offset + key_length].tobytes()
        offset += key_length
        if kind == PUT:
            if db != run_db:
                _put_run(txn, handles, run_db, run)
                run, run_db = [], db
            run.append((key, view[offset : offset + value_length].tobytes()))
            offset += value_length
            continue
        offset += value_length
        _put_run(txn, handles, run_db, run)
        run, run_db = [], -1
        _apply_other(txn, handles[db], kind, key)
    if offset != end:
        raise ValueError("a log entry ends inside a change: truncated or corrupt")
    _put_run(txn, handles, run_db, run)


def _apply_other(txn, db, kind: int, key: bytes):
    if kind == DELETE:
        txn.delete(key, db=db)
    elif kind == CLEAR:
        txn.drop(db, delete=False)
    else:
        raise ValueError(f"unknown change kind {kind} in a log entry")


def _put_run(txn, handles, db: int, run: list):
    if run:
        with txn.cursor(db=handles[db]) as cursor:
            cursor.putmulti(run)


try:
    from core.replication.encoding import apply_changes, record_change, record_puts
except ImportError:  # not built (`make build`): the same work, slower
    record_change, record_puts, apply_changes = _record_change, _record_puts, _apply_body
