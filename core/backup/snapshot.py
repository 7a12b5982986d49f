"""An online, consistent snapshot of a data directory, while its server serves.

Owns: taking the snapshot. A thread opens one LMDB read transaction, reads
the log position it sees, and has LMDB write a compacting copy of exactly
that transaction (mdb_env_copyfd2 with MDB_CP_COMPACT: free pages left
out) into a pipe; this thread reads the pipe into the snapshot's file,
hashing it, drawing the progress bar, holding the pace to --rate-mib-s if
given, and flushing what it wrote every few MB (fdatasync, then dropping
those pages from the page cache) so that the copy never piles up dirty
pages that the server's own fsyncs would then wait behind. LMDB lets the
server go on writing meanwhile: readers never block the writer (the file
only grows while the read transaction keeps old pages alive).
Used by: core/backup/__main__.py (`snapshot`), tests/test_backup.py, bench.
"""

import hashlib
import os
import threading
import time

import tqdm

from core.backup.catalogue import SNAPSHOT_FILE, Manifest, snapshot_name, write_manifest
from core.store import LOG_STREAM_KEY, Store, log_position_in, open_store

CHUNK_BYTES = 1 << 20
# Written bytes between two fdatasync + page-cache drops of the snapshot.
FLUSH_BYTES = 16 << 20
RATE_MIB_S_MAX = 100_000
# Yielding to the server (the default): the lowest CPU priority, and the
# idle I/O class where the kernel's scheduler has one. Measured with Pay at
# 1,500 terminals on the 10M directory: see the README's "High availability".
NICE_LOWEST = 19
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13
SYS_IOPRIO_SET = 251  # x86_64


def yield_to_others():
    """Lowest CPU priority and idle I/O class for this thread and the
    threads it starts (Linux: both are per thread and inherited)."""
    os.nice(NICE_LOWEST - os.nice(0))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT)
    except (OSError, AttributeError):
        pass  # no such syscall here: CPU priority alone


def used_bytes(store: Store) -> int:
    """Pages in use (up to the last one written): the copy is at most this."""
    return (store.env.info()["last_pgno"] + 1) * store.env.stat()["psize"]


def take(data_dir: str, backups_dir: str, rate_mib_s: float | None = None,
         progress: bool = True, yielding: bool = True) -> tuple[str, Manifest]:
    """Snapshot `data_dir` into a new folder of `backups_dir`; returns its
    path and manifest. Safe while a server (or several) writes data_dir.
    yielding: lower this thread's CPU and I/O priority first (a command-line
    process does; the server it runs beside keeps its share)."""
    assert rate_mib_s is None or 0 < rate_mib_s <= RATE_MIB_S_MAX
    if yielding:
        yield_to_others()
    store = open_store(data_dir, readonly=True)
    os.makedirs(backups_dir, exist_ok=True)
    partial = os.path.join(backups_dir, f".partial-{os.getpid()}-{time.time_ns()}")
    os.makedirs(partial)
    try:
        total = used_bytes(store)
        seen = {}
        read_fd, write_fd = os.pipe()
        copier = threading.Thread(target=_copy_into, args=(store, write_fd, seen), name="lmdb-copy", daemon=True)
        copier.start()
        try:
            size, digest = _drain(read_fd, os.path.join(partial, SNAPSHOT_FILE), total, rate_mib_s, progress)
        finally:
            os.close(read_fd)
            copier.join()
        if "error" in seen:
            raise seen["error"]
        manifest = Manifest(position=seen["position"], position_time_ms=seen["time_ms"], stream=seen["stream"],
                            taken_ms=seen["taken_ms"], source=os.path.abspath(data_dir), bytes=size, sha256=digest)
        write_manifest(partial, manifest)
        final = os.path.join(backups_dir, snapshot_name(manifest))
        os.rename(partial, final)
        _fsync_dir(backups_dir)
        return final, manifest
    except BaseException:
        _remove(partial)
        raise
    finally:
        store.close()


def _copy_into(store: Store, write_fd: int, seen: dict):
    """In its own thread: one read transaction, its position, its copy."""
    try:
        with store.env.begin() as txn:
            seen["position"], seen["time_ms"] = log_position_in(txn, store)
            stream = txn.get(LOG_STREAM_KEY, db=store.meta) if store.meta is not None else None
            seen["stream"] = stream.decode() if stream is not None else ""
            seen["taken_ms"] = time.time_ns() // 1_000_000
            store.env.copyfd(write_fd, compact=True, txn=txn)
    except BaseException as error:  # the reader must hear of it
        seen["error"] = error
    finally:
        os.close(write_fd)


def _drain(read_fd: int, path: str, total: int, rate_mib_s: float | None, progress: bool) -> tuple[int, str]:
    digest = hashlib.sha256()
    written = flushed = 0
    started = time.monotonic()
    bar = tqdm.tqdm(total=total, unit="B", unit_scale=True, desc="snapshot", disable=not progress or None, leave=False)
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while chunk := os.read(read_fd, CHUNK_BYTES):
            os.write(out, chunk)
            digest.update(chunk)
            written += len(chunk)
            bar.update(len(chunk))
            if written - flushed >= FLUSH_BYTES:
                _flush(out, flushed, written)
                flushed = written
            if rate_mib_s is not None:
                ahead_s = written / (rate_mib_s * 2**20) - (time.monotonic() - started)
                if ahead_s > 0:
                    time.sleep(ahead_s)
        _flush(out, flushed, written)
    finally:
        os.close(out)
        bar.close()
    return written, digest.hexdigest()


def _flush(fd: int, start: int, end: int):
    os.fdatasync(fd)
    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


def _fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str):
    import shutil

    shutil.rmtree(path, ignore_errors=True)
