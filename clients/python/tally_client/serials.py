"""Serial numbers of one terminal, never used twice, whatever crashes.

Owns: the terminal's serial file (terminal-<id>.serial under the client's
state directory) and its lock file.
Used by: the clients, for every request they send and for the Reverse of a
lost one.

Every terminal request carries a serial, and (terminal_id, serial) makes it
idempotent: a serial sent again returns the first answer, a different
request under a used serial is declined (DUPLICATE_MISMATCH). So a serial
must never be reused, not even after a crash or a power cut.

How: the file holds the first serial not yet reserved. Serials are reserved
in blocks (1,000 by default): the new end of the block is written and
fsync'd before any serial of it is handed out. A crash loses at most the
unused rest of a block; the next run starts after it. One fsync per block,
not per request. A lock file (flock) keeps a second client, in this process
or another, off the same terminal's serials while one has them.
"""

import fcntl
import os
import threading

from tally_client._durable import write_atomically

SERIAL_MAX = 2**64 - 1
BLOCK_DEFAULT = 1000
BLOCK_MAX = 1_000_000
_HEADER = "tally-client serials 1"


class SerialsInUse(Exception):
    """Another client holds this terminal's serials."""


class SerialAllocator:
    def __init__(self, path: str, block: int = BLOCK_DEFAULT, first: int = 1):
        """path: the serial file; first: where a new file starts (a terminal
        moving to this SDK starts above the serials it used before)."""
        if not 1 <= block <= BLOCK_MAX:
            raise ValueError(f"block: must be within 1 .. {BLOCK_MAX}, got {block}")
        if not 1 <= first <= SERIAL_MAX:
            raise ValueError(f"first: must be within 1 .. 2^64-1, got {first}")
        self.path = path
        self.block = block
        self._mutex = threading.Lock()
        self._lock_descriptor = _lock(f"{path}.lock")
        try:
            self._next = _read(path, first)
        except BaseException:
            os.close(self._lock_descriptor)
            raise
        # Nothing of this run is reserved yet: the first next() reserves.
        self._limit = self._next

    def next(self) -> int:
        """A serial never handed out before by this terminal's file."""
        with self._mutex:
            if self._next >= self._limit:
                self._reserve()
            serial = self._next
            self._next += 1
            return serial

    @property
    def reserved_through(self) -> int:
        """The first serial the file does not reserve yet (a fresh run starts there)."""
        return self._limit

    def _reserve(self):
        if self._next > SERIAL_MAX:
            raise OverflowError("the terminal has used every serial up to 2^64-1")
        limit = min(self._next + self.block, SERIAL_MAX + 1)
        write_atomically(self.path, f"{_HEADER}\nnext {limit}\n".encode())
        self._limit = limit

    def close(self):
        if self._lock_descriptor >= 0:
            os.close(self._lock_descriptor)  # releases the flock
            self._lock_descriptor = -1


def _lock(path: str) -> int:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise SerialsInUse(f"{path}: another client uses this terminal's serials") from None
    return descriptor


def _read(path: str, first: int) -> int:
    try:
        with open(path) as file:
            text = file.read()
    except FileNotFoundError:
        return first
    lines = text.split("\n")
    if len(lines) < 2 or lines[0] != _HEADER or not lines[1].startswith("next "):
        raise ValueError(f"{path}: not a serial file of this SDK; refusing to guess where serials resume")
    value = lines[1][len("next "):]
    if not value.isdigit() or not 1 <= int(value) <= SERIAL_MAX + 1:
        raise ValueError(f"{path}: next must be a serial within 1 .. 2^64, got {value!r}")
    return int(value)
