# cython: language_level=3, boundscheck=False, wraparound=False
"""The hot loops of the change encoding (core/replication/changes.py),
compiled: the leader appending change records to a log entry's body, a
follower applying them.

Owns: `record_change` and `record_puts`, byte for byte what changes.py's
plain-Python `_record_change` / `_record_puts` write, and `apply_changes`,
what its `_apply_body` does (tests run both):
    database index u8, kind u8, key length u16, value length u32, key, value
little-endian. Used by: core/replication/changes.py only (which falls back
to its own functions when this module is not built).

Why compiled: recording the kernel's putmulti runs item by item, and in
Python it took 15% of the leader's writer thread under the stream load
(py-spy, issue 17), where the writer is the replicated path's bottleneck;
a follower parsing entries in Python spent 12 us of CPU a payment, on the
same two cores as the leader.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

DEF HEADER_SIZE = 8
DEF KEY_BYTES_MAX = 0xFFFF


cdef inline const char* _data(object buffer, Py_ssize_t* size) noexcept:
    """The bytes of a bytes or bytearray key or value; NULL for any other
    buffer (a memoryview, say: the caller copies it into bytes first)."""
    if type(buffer) is bytes:
        size[0] = PyBytes_GET_SIZE(buffer)
        return PyBytes_AS_STRING(buffer)
    if type(buffer) is bytearray:
        size[0] = PyByteArray_GET_SIZE(buffer)
        return PyByteArray_AS_STRING(buffer)
    return NULL


cdef inline bint _plain(tuple item) noexcept:
    return (type(item[0]) is bytes or type(item[0]) is bytearray) and (type(item[1]) is bytes or type(item[1]) is bytearray)


cdef inline void _write(char* out, uint8_t db, uint8_t kind, const char* key, Py_ssize_t key_size,
                        const char* value, Py_ssize_t value_size) noexcept:
    cdef uint16_t key_length = <uint16_t>key_size
    cdef uint32_t value_length = <uint32_t>value_size
    out[0] = <char>db
    out[1] = <char>kind
    # x86-64 and aarch64 Linux are little-endian, like the format.
    memcpy(out + 2, &key_length, 2)
    memcpy(out + 4, &value_length, 4)
    memcpy(out + HEADER_SIZE, key, key_size)
    memcpy(out + HEADER_SIZE + key_size, value, value_size)


cdef inline Py_ssize_t _grow(bytearray encoded, Py_ssize_t added) except -1:
    cdef Py_ssize_t start = PyByteArray_GET_SIZE(encoded)
    PyByteArray_Resize(encoded, start + added)
    return start


def record_change(bytearray encoded, int db, int kind, key, value=b""):
    """Append one change to `encoded`."""
    cdef Py_ssize_t key_size = 0, value_size = 0
    key = key if type(key) is bytes or type(key) is bytearray else bytes(key)
    value = value if type(value) is bytes or type(value) is bytearray else bytes(value)
    cdef const char* key_data = _data(key, &key_size)
    cdef const char* value_data = _data(value, &value_size)
    if key_size > KEY_BYTES_MAX:
        raise ValueError(f"a key of {key_size} bytes cannot be logged (at most {KEY_BYTES_MAX})")
    cdef Py_ssize_t start = _grow(encoded, HEADER_SIZE + key_size + value_size)
    _write(PyByteArray_AS_STRING(encoded) + start, db, kind, key_data, key_size, value_data, value_size)


def record_puts(bytearray encoded, int db, int kind, list items, Py_ssize_t count):
    """Append a PUT of each of the first `count` (key, value) pairs of items."""
    assert 0 <= count <= len(items)
    cdef Py_ssize_t index, key_size = 0, value_size = 0, total = 0
    cdef tuple item
    for index in range(count):
        if type(items[index]) is not tuple or not _plain(<tuple>items[index]):
            # Any other pairs of buffers: copied into bytes, once.
            items = [(bytes(key), bytes(value)) for key, value in items[:count]]
        item = <tuple>items[index]
        _data(item[0], &key_size)
        _data(item[1], &value_size)
        if key_size > KEY_BYTES_MAX:
            raise ValueError(f"a key of {key_size} bytes cannot be logged (at most {KEY_BYTES_MAX})")
        total += HEADER_SIZE + key_size + value_size
    cdef Py_ssize_t start = _grow(encoded, total)
    cdef char* out = PyByteArray_AS_STRING(encoded) + start
    cdef const char* key_data
    cdef const char* value_data
    for index in range(count):
        item = <tuple>items[index]
        key_data = _data(item[0], &key_size)
        value_data = _data(item[1], &value_size)
        _write(out, db, kind, key_data, key_size, value_data, value_size)
        out += HEADER_SIZE + key_size + value_size


DEF PUT = 1
DEF DELETE = 2
DEF CLEAR = 3


def apply_changes(txn, list handles, body):
    """Make the changes of a log entry's body (uncompressed, without its
    version byte) in txn, in order: changes.py's `_apply_body`, compiled
    (a follower's hot loop: about 9 changes a payment). Runs of puts into
    one database go through one cursor's putmulti."""
    cdef const unsigned char[::1] view = body
    cdef Py_ssize_t end = view.shape[0]
    cdef Py_ssize_t offset = 0
    cdef const unsigned char* data = &view[0] if end else NULL
    cdef uint16_t key_length
    cdef uint32_t value_length
    cdef int db, kind, run_db = -1
    cdef list run = []
    while offset < end:
        if end - offset < HEADER_SIZE:
            raise ValueError("a log entry ends inside a change: truncated or corrupt")
        db = data[offset]
        kind = data[offset + 1]
        memcpy(&key_length, data + offset + 2, 2)
        memcpy(&value_length, data + offset + 4, 4)
        offset += HEADER_SIZE
        if <Py_ssize_t>key_length + <Py_ssize_t>value_length > end - offset:
            raise ValueError("a log entry ends inside a change: truncated or corrupt")
        key = PyBytes_FromStringAndSize(<const char*>data + offset, key_length)
        offset += key_length
        if kind == PUT:
            if db != run_db:
                _put_run(txn, handles, run_db, run)
                run, run_db = [], db
            run.append((key, PyBytes_FromStringAndSize(<const char*>data + offset, value_length)))
            offset += value_length
            continue
        offset += value_length
        _put_run(txn, handles, run_db, run)
        run, run_db = [], -1
        _apply_other(txn, handles[db], kind, key)
    _put_run(txn, handles, run_db, run)


cdef _put_run(txn, list handles, int db, list run):
    if run:
        with txn.cursor(db=handles[db]) as cursor:
            cursor.putmulti(run)


cdef _apply_other(txn, db, int kind, bytes key):
    if kind == DELETE:
        txn.delete(key, db=db)
    elif kind == CLEAR:
        txn.drop(db, delete=False)
    else:
        raise ValueError(f"unknown change kind {kind} in a log entry")
