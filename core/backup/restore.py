"""Restore a snapshot into a new directory, and replay the log onto it.

Owns: copying a snapshot's file into a new data directory (checked against
its manifest's SHA-256), replaying the replicated log from the snapshot's
position up to a target (a log position, a wall-clock time, or the end of
the log) through core/replication/applier.py, the same code a follower
applies entries with, and making the result a standalone directory when
asked (it forgets its log: the command-line tools and a server without
--replicate may then write it).
Used by: core/backup/__main__.py (`restore`), tests/test_backup.py.

A restored directory that keeps its marks is a node of the log at the
snapshot's position (or the target's): a server started on it with
--replicate replays the rest of the log and follows; that is how a new node
joins ("a new node starts from a backup"). A point-in-time restore for
inspection ("the books as of before yesterday's bad import") is restored
--standalone, so that nothing replays past its target.
"""

import hashlib
import os

import tqdm

from core.backup.catalogue import SNAPSHOT_FILE, Snapshot
from core.replication import applier
from core.replication.errors import LogTrimmed
from core.replication.log import LogNames, ReplicationLog
from core.store import Store, log_position, open_store

CHUNK_BYTES = 1 << 20


class RestoreError(Exception):
    """The restore cannot be done as asked; the message says why."""


class Target:
    """Where a replay stops: at a log position, at the last entry stored at
    or before a wall-clock time (ms since the epoch), or at the end."""

    def __init__(self, position: int | None = None, time_ms: int | None = None):
        assert position is None or time_ms is None
        self.position = position
        self.time_ms = time_ms

    def admits(self, entry) -> bool:
        if self.position is not None:
            return entry.sequence <= self.position
        if self.time_ms is not None:
            return entry.time_ms <= self.time_ms
        return True

    def describe(self) -> str:
        if self.position is not None:
            return f"position {self.position}"
        if self.time_ms is not None:
            return f"time {self.time_ms} ms"
        return "the end of the log"


def copy_snapshot(snapshot: Snapshot, data_dir: str, progress: bool = True):
    """The snapshot's file into a new (or empty) data directory."""
    if os.path.exists(data_dir) and os.listdir(data_dir):
        raise RestoreError(f"{data_dir} is not empty: restore into a new directory")
    os.makedirs(data_dir, exist_ok=True)
    source = os.path.join(snapshot.path, SNAPSHOT_FILE)
    digest = hashlib.sha256()
    bar = tqdm.tqdm(total=snapshot.manifest.bytes, unit="B", unit_scale=True, desc="copy", leave=False,
                    disable=not progress or None)
    with open(source, "rb") as reader, open(os.path.join(data_dir, SNAPSHOT_FILE), "xb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            writer.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
        writer.flush()
        os.fdatasync(writer.fileno())
    bar.close()
    if digest.hexdigest() != snapshot.manifest.sha256:
        raise RestoreError(f"{source} does not match its manifest's SHA-256: the snapshot is damaged")


def replay(store: Store, urls: str, names: LogNames, target: Target, progress: bool = True) -> tuple[int, int]:
    """Apply the log's entries past the store's position up to `target`;
    returns (position reached, entries applied)."""
    log = ReplicationLog(urls, names, name="tally-restore")
    log.connect(30)
    try:
        state = log.state()
        position, _ = log_position(store)
        if state.entries and position + 1 < state.first:
            raise RestoreError(str(LogTrimmed(position + 1, state.first)))
        last = state.last if target.position is None else min(state.last, target.position)
        if target.position is not None and target.position > state.last:
            raise RestoreError(f"the log ends at {state.last}: there is no position {target.position}")
        applied = 0
        bar = tqdm.tqdm(total=max(0, last - position), unit="entries", desc="replay", leave=False,
                        disable=not progress or None)
        while position < last:
            entries = log.read(position + 1)
            admitted = []
            for entry in entries:
                if not target.admits(entry):
                    break
                admitted.append(entry)
            if admitted:
                position, _, done = applier.apply_entries(store, admitted)
                applied += len(done)
                bar.update(len(done))
            if len(admitted) < len(entries) or not entries:
                break
        bar.close()
        return position, applied
    finally:
        log.close()


def restore(snapshot: Snapshot, data_dir: str, urls: str | None, names: LogNames, target: Target,
            standalone: bool, progress: bool = True) -> tuple[int, int]:
    """Copy, replay (with urls), mark; returns (position, entries replayed)."""
    copy_snapshot(snapshot, data_dir, progress)
    store = open_store(data_dir)
    try:
        position, applied = log_position(store)[0], 0
        if urls:
            position, applied = replay(store, urls, names, target, progress)
        if standalone:
            applier.mark_standalone(store)
        return position, applied
    finally:
        store.close()
