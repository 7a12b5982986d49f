"""What every part of the admin API shares: the open store, the master key
(core/admin/keys.py's MasterKey: a key file's or an HSM's), the clock, one
write transaction per change with its audit entry (through the one write
path, core/writes.py: the server passes its group commit, the command line
a DirectWriter), and the kernel for the changes to cards.

Used by: directory.py, users.py, terminals.py, cards.py, customers.py (their
mixins make up core.admin.Admin).

A change to a card (issue, status, limits, top-up, cancel, domains) runs
its kernel operations inside the admin write transaction itself
(`_apply_kernel`), not through the group commit: the kernel's records, the
card's owner record and the audit entry are then stored together or not at
all. In the server the change runs in the group commit's writer thread,
between two batches, with the server's own kernel (which forgets what it
kept from the last batch when another transaction came between).
"""

from collections.abc import Callable, Sequence

from core.admin import audit, keys
from core.admin.access import Actor, now_ms
from core.admin.errors import FailedPrecondition
from core.admin.model import FieldCipher
from core.records import Op, Result
from core.store import Store
from core.writes import DirectWriter


class AdminBase:
    def __init__(self, store: Store, master_key: keys.MasterKey | bytes | None = None, clock: Callable[[], int] = now_ms,
                 kernel=None, utc_offset_minutes: int = 0, writer=None,
                 field_cipher: FieldCipher = FieldCipher.AES_256_GCM):
        self.store = store
        # The one write path (core/writes.py): a GroupCommitter in the server.
        self.writer = writer if writer is not None else DirectWriter(store)
        # A key file's or an HSM's (keys.MasterKey); raw bytes are a key in memory.
        self.master_key = None if master_key is None else keys.as_master_key(master_key)
        # How new and changed customers' personal fields are encrypted
        # (core/admin/customers.py): the network's choice, --pii-cipher.
        self.field_cipher = field_cipher
        self.clock = clock
        # How many admin changes this object has made (committed or not):
        # what a memory of admin records compares to know it may be stale
        # (server/terminal_auth.py's kept terminals).
        self.changes = 0
        # None: core.ledger.load_kernel() at the first card change.
        self.kernel = kernel
        # Of the business day the kernel stamps on what it posts, as the
        # server's group commit does (--utc-offset-minutes).
        self.utc_offset_minutes = utc_offset_minutes
        # token -> (kept until, ms; its Actor): core/admin/users.py authenticate.
        self._kept_actors: dict[str, tuple[int, Actor]] = {}

    def _write(self, change):
        """Run change(txn) in one durable write transaction: the change and
        its audit entry are stored together, or, if it raises, neither."""
        try:
            return self.writer.write_blocking(change)
        finally:
            # Counted once the write is over, so a memory refreshed after
            # this count changed reads the change.
            self.changes += 1

    def _read(self, look):
        with self.store.env.begin() as txn:
            return look(txn)

    def _audit(self, txn, actor: Actor, action: str, object_: str, org_id: int, before=None, after=None):
        return audit.append(txn, self.store, self.clock(), actor.name, org_id, action, object_, before, after)

    def _apply_kernel(self, txn, ops: Sequence[Op]) -> list[Result]:
        """The kernel's results for `ops`, applied inside `txn` (see the
        module's docstring)."""
        from core.ledger import business_day, decode_results, encode_ops, load_kernel

        if self.kernel is None:
            self.kernel = load_kernel()
        now = self.clock()
        return decode_results(self.kernel.apply_batch(txn, self.store, encode_ops(ops), now,
                                                      business_day(now, self.utc_offset_minutes)))

    def _require_master_key(self) -> keys.MasterKey:
        if self.master_key is None:
            raise FailedPrecondition("no master key: start the server (or the command) with --master-key-file "
                                     "or --pkcs11-module")
        return self.master_key
