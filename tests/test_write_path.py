"""The one write path (core/writes.py): only the group commit, the ledger's
batches and DirectWriter open LMDB write transactions, so that every durable
change runs off the event loop in the server, is stored whole or not at all,
and passes the one place a replicated log can see it. The other side of that
log, core/replication/applier.py, is the only other writer: a follower's
store changes only from the log."""

import asyncio
import pathlib

import pytest

from core.commit import GroupCommitter
from core.ledger import Ledger, load_kernel
from core.store import open_store

REPO = pathlib.Path(__file__).resolve().parent.parent
WRITERS = {"core/commit.py", "core/ledger.py", "core/writes.py", "core/replication/applier.py"}


def test_only_the_write_path_opens_write_transactions():
    found = set()
    for folder in ("core", "server", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            if "begin(write=True)" in path.read_text():
                found.add(str(path.relative_to(REPO)))
    assert found == WRITERS, f"write transactions outside the write path: {sorted(found - WRITERS)}"


def test_a_change_is_stored_whole_or_not_at_all_and_answers_in_order(tmp_path):
    store = open_store(str(tmp_path / "data"), 2**26)

    async def run():
        committer = GroupCommitter(Ledger(store, load_kernel("reference")))
        committer.start()

        def half_then_fail(txn):
            txn.put(b"half", b"1", db=store.meta)
            raise ValueError("the second half failed")

        stored = await committer.write(lambda txn: txn.put(b"whole", b"1", db=store.meta))
        with pytest.raises(ValueError, match="second half"):
            await committer.write(half_then_fail)
        blocking = await asyncio.to_thread(committer.write_blocking, lambda txn: txn.get(b"whole", db=store.meta))
        committer.stop()
        return stored, blocking

    stored, blocking = asyncio.run(run())
    assert stored is True and blocking == b"1"
    with store.env.begin() as txn:
        assert txn.get(b"whole", db=store.meta) == b"1"
        assert txn.get(b"half", db=store.meta) is None, "nothing of a change that raised is stored"
    store.close()
