"""Keeping the server's heap to what it uses.

Owns: glibc malloc's settings for a long-running server, the periodic
malloc_trim, and keeping the objects made at start out of Python's cyclic
collector (freeze_start_objects).
Used by: server/app.py (configure_malloc at start, freeze_start_objects once
serving; a task handing free pages back every --heap-trim-interval seconds).

Why: the server's live memory is flat under load, but glibc keeps memory it
once needed. A 30-minute soak showed it: bytes in use stayed near 22 MB
while the heap grew from 38 to 48 MB, all of it free space. Two causes:
- glibc's mmap threshold rises to the largest block freed so far, so the
  group commit's big batch buffers come from the heap, between long-lived
  small objects, and leave holes behind (configure_malloc fixes the
  threshold; tests/test_heap.py shows both behaviours);
- a burst of calls in flight leaves free chunks spread through the heap,
  and glibc gives back only the free space at its very top (malloc_trim(0)
  releases whole free pages anywhere in every arena).
Ops read RSS, and an RSS that keeps a past burst's high-water mark cannot be
told from a leak. One trim costs about a millisecond per 10 MB released, on
the event loop; once a minute is nothing next to a payment's cost.

Only on glibc: elsewhere these functions do nothing.
"""

import asyncio
import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("tally.heap")


def _libc_function(name: str, *argument_types):
    """A function of the C library (returning int), or None where the C
    library has no such function (not glibc)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argument_types
    function.restype = ctypes.c_int
    return function


MALLOC_TRIM = _libc_function("malloc_trim", ctypes.c_size_t)
MALLOPT = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)

# mallopt parameters (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Blocks from this size up are mapped on their own and unmapped when freed.
# glibc's default starts here too but rises to the largest block freed so
# far: after the first big batch buffer (a group commit's ops and results,
# up to 1.4 MB) every later one is carved out of the heap, among long-lived
# small objects, and its space stays behind as holes. Fixing the threshold
# keeps those buffers out of the heap.
MMAP_THRESHOLD_BYTES = 128 * 1024
# Heaps malloc may use: one per thread by default (gRPC's threads, the
# writer thread, the event loop), each keeping its own free space.
ARENAS_MAX = 2


def configure_malloc() -> bool:
    """Set the two glibc malloc parameters above; True if both took.
    Called once at start, before the server's threads allocate much."""
    if MALLOPT is None:
        return False
    return MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and MALLOPT(M_ARENA_MAX, ARENAS_MAX) == 1


def release_free_heap() -> bool:
    """Give the heap's whole free pages back to the OS; True if any went."""
    return MALLOC_TRIM is not None and MALLOC_TRIM(0) == 1


async def release_free_heap_every(interval_s: float):
    if MALLOC_TRIM is None:
        log.info("no malloc_trim in this C library: free heap pages stay with the process")
        return
    while True:
        await asyncio.sleep(interval_s)
        release_free_heap()


def freeze_start_objects():
    """Move every object alive now (modules, protobuf descriptors, the
    services, the store's handles: all made at start and kept for the
    process's life) out of the cyclic collector's generations. Every call
    allocates tasks and futures, and each full collection they trigger
    walked all of these again: 3% of the event loop's time in Python's
    collector at 1,500 unary terminals (py-spy), against 0.5% in the echo
    servicer, whose heap is small. Objects made later are collected as
    before."""
    gc.collect()
    gc.freeze()
