"""The one write path, for code that runs without a server.

Owns: DirectWriter, the same interface as core.commit.GroupCommitter's
`write` and `write_blocking` for command-line tools and tests that own the
data directory: a change is a function `change(txn)` that makes its writes
inside the write transaction it is given and opens none of its own.
Used by: the command-line tools (core.settlement, core.loyalty, core.admin),
tests; the server passes its GroupCommitter where a writer is wanted.

Why one path: every durable change is then stored whole or not at all, runs
off the event loop in the server, and passes the one place (the group
commit's writer thread) where a replicated log can see it. Only core/commit.py,
core/ledger.py (the kernel's batches) and this module open write transactions;
tests/test_write_path.py keeps it so.
"""

from collections.abc import Callable
from typing import Any, Protocol

from core.replication.errors import ReplicatedStore
from core.store import Store, replicated_stream


class Writer(Protocol):
    async def write(self, change: Callable[[Any], Any]) -> Any: ...

    def write_blocking(self, change: Callable[[Any], Any]) -> Any: ...


def refuse_if_replicated(store: Store):
    """Raise ReplicatedStore (FAILED_PRECONDITION: one line naming the log)
    if `store` is a node of a replicated log: the command-line tools call it
    before a command that writes, so they refuse before doing any work."""
    stream = replicated_stream(store)
    if stream is not None:
        raise ReplicatedStore(store.path, stream)


class DirectWriter:
    """Runs each change at once in its own durable write transaction.

    Refuses (ReplicatedStore, FAILED_PRECONDITION) a directory that is a
    node of a replicated log: a change made there behind the log's back
    would be on this node alone, and gone at the next failover. Those
    changes go through the leader's gRPC API."""

    def __init__(self, store: Store):
        self.store = store

    def write_blocking(self, change: Callable[[Any], Any]) -> Any:
        refuse_if_replicated(self.store)
        with self.store.env.begin(write=True) as txn:
            return change(txn)

    async def write(self, change: Callable[[Any], Any]) -> Any:
        return self.write_blocking(change)


def write_now(store: Store, change_of: Callable[..., Any], *args, **kwargs) -> Any:
    """`change_of(txn, store, *args)` in a write transaction of its own: for
    tools and tests that own the directory (the server uses its writer)."""
    return DirectWriter(store).write_blocking(lambda txn: change_of(txn, store, *args, **kwargs))
