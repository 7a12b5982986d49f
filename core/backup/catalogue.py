"""A folder of snapshots, each a folder holding data.mdb and manifest.json.

Owns: the Manifest (what a snapshot is of, and its log position), naming
and listing snapshots, and choosing the one a restore starts from (the
newest at or before a target position or time).
Used by: core/backup/snapshot.py (writes manifests), restore.py, __main__.py.
"""

import os
import time

import msgspec

SNAPSHOT_FILE = "data.mdb"
MANIFEST_FILE = "manifest.json"


class Manifest(msgspec.Struct, frozen=True):
    """One snapshot. position: the last log entry it holds (0 on a single
    node or before any entry); position_time_ms: when the log stored that
    entry; stream: the log it belongs to ("" for a standalone directory)."""

    position: int
    position_time_ms: int
    stream: str
    taken_ms: int
    source: str
    bytes: int
    sha256: str


class Snapshot(msgspec.Struct, frozen=True):
    path: str
    manifest: Manifest


def snapshot_name(manifest: Manifest) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(manifest.taken_ms / 1000))
    return f"{stamp}-p{manifest.position}"


def read_manifest(path: str) -> Manifest:
    with open(os.path.join(path, MANIFEST_FILE), "rb") as manifest_file:
        return msgspec.json.decode(manifest_file.read(), type=Manifest)


def write_manifest(path: str, manifest: Manifest):
    with open(os.path.join(path, MANIFEST_FILE), "wb") as manifest_file:
        manifest_file.write(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")


def snapshots(folder: str) -> list[Snapshot]:
    """Every complete snapshot under `folder`, oldest position first."""
    found = []
    if not os.path.isdir(folder):
        return found
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.exists(os.path.join(path, MANIFEST_FILE)) and os.path.exists(os.path.join(path, SNAPSHOT_FILE)):
            found.append(Snapshot(path, read_manifest(path)))
    return sorted(found, key=lambda snapshot: (snapshot.manifest.position, snapshot.manifest.taken_ms))


def choose(folder: str, position: int | None = None, time_ms: int | None = None) -> Snapshot | None:
    """The newest snapshot a restore to `position` (or to wall-clock
    `time_ms`) can start from; None if every snapshot is past it."""
    candidates = snapshots(folder)
    if position is not None:
        candidates = [one for one in candidates if one.manifest.position <= position]
    if time_ms is not None:
        candidates = [one for one in candidates
                      if (one.manifest.position_time_ms or one.manifest.taken_ms) <= time_ms]
    return candidates[-1] if candidates else None
