"""What every part of the admin API shares: the open store, the master key,
the clock, one write transaction per change with its audit entry.

Used by: directory.py, users.py, terminals.py (their mixins make up
core.admin.Admin).
"""

from collections.abc import Callable

from core.admin import audit
from core.admin.access import Actor, now_ms
from core.admin.errors import FailedPrecondition
from core.store import Store


class AdminBase:
    def __init__(self, store: Store, master_key: bytes | None = None, clock: Callable[[], int] = now_ms):
        self.store = store
        self.master_key = master_key
        self.clock = clock

    def _write(self, change):
        """Run change(txn) in one durable write transaction: the change and
        its audit entry are stored together, or, if it raises, neither."""
        with self.store.env.begin(write=True) as txn:
            return change(txn)

    def _read(self, look):
        with self.store.env.begin() as txn:
            return look(txn)

    def _audit(self, txn, actor: Actor, action: str, object_: str, org_id: int, before=None, after=None):
        return audit.append(txn, self.store, self.clock(), actor.name, org_id, action, object_, before, after)

    def _require_master_key(self) -> bytes:
        if self.master_key is None:
            raise FailedPrecondition("no master key: start the server (or the command) with --master-key-file")
        return self.master_key
