"""Backups of a data directory: online snapshots, restore, point-in-time restore.

`python -m core.backup --help`. A snapshot is a consistent copy of the LMDB
environment taken from a read transaction while the server keeps serving,
with the log position that transaction had reached (on a replicated node);
a restore copies a snapshot into a new directory, replays the replicated
log from the snapshot's position up to a chosen position or wall-clock time
(or its end), and ends with core.audit. Without NATS (the embedded single
node) snapshots and restores work the same, minus the replay.

Modules:
  catalogue.py  a folder of snapshots: their manifests, choosing one for a target
  snapshot.py   taking one (compacting copy through a pipe: progress, rate limit)
  restore.py    restoring one, and replaying the log onto it
  __main__.py   the command line: snapshot, list, restore, trim, digest
"""
