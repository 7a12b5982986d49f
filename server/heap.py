"""Giving the heap's free pages back to the operating system.

Owns: the periodic malloc_trim of a long-running server.
Used by: server/app.py (a task started with the server, every
--heap-trim-interval seconds).

Why: the server's live memory is flat under load, but glibc keeps the
memory it once needed. A burst of calls in flight (thousands of coroutines,
gRPC buffers, protobuf messages) leaves free chunks spread through its
arenas, and glibc returns only the free space at the very top of each heap.
A 30-minute soak showed it: bytes in use stayed at 22 MB while the heap
grew from 38 to 46 MB, all of it free. Ops read RSS, and a rising RSS cannot
be told from a leak, so the server hands whole free pages back
(malloc_trim(0) releases them inside every arena, not only at the top).
One call costs about a millisecond per 10 MB released, on the event loop
thread; once a minute is nothing next to a payment's cost.

Only on glibc: elsewhere there is no malloc_trim and the task does nothing.
"""

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger("tally.heap")


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_size_t,)
    function.restype = ctypes.c_int
    return function


MALLOC_TRIM = _malloc_trim()


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
