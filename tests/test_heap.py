"""server/heap.py: free heap pages go back to the OS, so a soak's RSS shows
memory in use rather than the high-water mark of a past burst."""

import subprocess
import sys

import pytest

from server import heap
from tests.support import REPO

# A burst of 1 KB blocks (above pymalloc's 512 bytes: they come from glibc),
# one in 50 kept so that no heap can shrink from its top alone, like a
# server whose long-lived objects sit among a burst's freed buffers.
BURST = """
import sys
from server import heap

def rss_anon_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon"))

blocks = [bytes(1024) + index.to_bytes(4, "little") for index in range(200_000)]
kept = blocks[::50]
del blocks
before = rss_anon_kib()
released = heap.release_free_heap()
print(before, rss_anon_kib(), released, len(kept))
"""


@pytest.mark.skipif(heap.MALLOC_TRIM is None, reason="malloc_trim is glibc's")
def test_release_free_heap_gives_a_fragmented_burst_back():
    result = subprocess.run([sys.executable, "-c", BURST], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    before_kib, after_kib, released, kept = result.stdout.split()
    assert released == "True" and kept == "4000"
    # About 200 MB were freed but stayed resident; most must be gone now.
    assert int(before_kib) > 150_000
    assert int(after_kib) < int(before_kib) // 3, (before_kib, after_kib)


# Big buffers freed after a first big one, with small long-lived objects
# allocated between them: a group commit's batches among the server's state.
BATCH_BUFFERS = """
import sys
from server import heap

def rss_anon_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon"))

if sys.argv[1] == "configured":
    assert heap.configure_malloc()
first = bytearray(1 << 20)
del first
big, small = [], []
for index in range(100):
    big.append(bytearray(1 << 20))
    small.append(bytes(600) + index.to_bytes(2, "little"))
before = rss_anon_kib()
del big
print(before, rss_anon_kib())
"""


def rss_after_batch_buffers_kib(mode: str) -> tuple[int, int]:
    result = subprocess.run([sys.executable, "-c", BATCH_BUFFERS, mode], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    before_kib, after_kib = result.stdout.split()
    return int(before_kib), int(after_kib)


@pytest.mark.skipif(heap.MALLOPT is None, reason="mallopt is glibc's")
def test_configured_malloc_returns_freed_batch_buffers_where_the_default_keeps_them():
    before_kib, after_kib = rss_after_batch_buffers_kib("default")
    # glibc's own rule: the first 1 MB block freed raised its mmap threshold,
    # so the next hundred came from the heap and stay resident once freed.
    assert after_kib > before_kib * 9 // 10, (before_kib, after_kib)
    before_kib, after_kib = rss_after_batch_buffers_kib("configured")
    assert before_kib > 100_000 and after_kib < before_kib // 4, (before_kib, after_kib)


FREEZE = """
import gc
from server import heap

made_at_start = [{"card": 1}]
heap.freeze_start_objects()
made_later = [{"card": 2}]
tracked = gc.get_objects()
print(any(item is made_at_start for item in tracked), any(item is made_later for item in tracked), gc.get_freeze_count() > 0)
"""


def test_objects_made_at_start_leave_the_collectors_generations_and_later_ones_stay():
    """What the server does once serving (server/app.py): its start's
    objects are no longer walked by each collection; a call's are."""
    done = subprocess.run([sys.executable, "-c", FREEZE], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True"]
