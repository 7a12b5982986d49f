"""The ledger as a Python library: apply operations, read records.

Owns: choosing the kernel (Cython if built, the reference otherwise), one
durable write transaction per batch, and the read helpers every other part
uses instead of touching LMDB keys itself. The `*_as_of` helpers answer as
of a moment (core/current.py): what time has expired reads expired, whether
or not a write has recorded it yet; the plain ones give the stored record.
Used by: commit.py (the writer thread), the server's read paths, audit,
benchmarks and tests.
"""

import logging
from collections.abc import Iterator, Sequence

from core import current, idempotency, limits, lots
from core.counters import COUNTER_VALUE, TXN_COUNTER_ENTRY, counter_key, parse_counter_key
from core.records import (
    Account,
    Card,
    Idem,
    JournalEntry,
    Op,
    Result,
    Txn,
    account_key,
    decode,
    encode,
    u32_key,
    u64_key,
)
from core.reference import ReferenceKernel
from core.replication.changes import database_index, recording
from core.replication.errors import ReplicatedStore
from core.results import CARD_ACCOUNT_KINDS
from core.store import Store, replicated_stream

log = logging.getLogger(__name__)

RESULT_SIZE = Result.LAYOUT.size
MS_PER_DAY = 86_400_000


def load_kernel(name: str = "auto"):
    """The kernel to run: "cython", "reference", or "auto" (Cython if built)."""
    if name == "reference":
        return ReferenceKernel()
    try:
        from core.kernel import Kernel
    except ImportError:
        if name == "cython":
            raise
        log.warning("Cython kernel not built (run `make build`); using the plain-Python reference kernel")
        return ReferenceKernel()
    return Kernel()


def business_day(now_ms: int, utc_offset_minutes: int = 0) -> int:
    """Days since 1970-01-01 in the network's local time."""
    return (now_ms + utc_offset_minutes * 60_000) // MS_PER_DAY


def encode_ops(ops: Sequence[Op]) -> bytes:
    return b"".join(encode(op) for op in ops)


def decode_results(data: bytes) -> list[Result]:
    # One pass of iter_unpack: the writer thread decodes every answer while
    # holding the GIL, so this runs for every request.
    return [Result(*fields) for fields in Result.LAYOUT.iter_unpack(data)]


class Ledger:
    """One open data directory and the kernel that writes to it.

    Writes must come from a single thread (py-lmdb write transactions belong
    to the thread that opened them); commit.GroupCommitter is that thread in
    the server. Reads may come from any thread.
    """

    def __init__(self, store: Store, kernel=None):
        self.store = store
        self.kernel = kernel if kernel is not None else load_kernel()
        # A node of a replicated log takes writes only through the log
        # (apply_encoded's `log`); tools writing its files are refused.
        self.replicated_stream = replicated_stream(store)
        self._database_index = None

    @property
    def kernel_name(self) -> str:
        return self.kernel.name

    # ------------------------------------------------------------ writes

    def apply_encoded(self, ops: bytes, now_ms: int, day: int, log=None) -> bytes:
        """Apply encoded operations in one write transaction and commit it.

        Returns only after the commit is on disk. If the kernel raises, the
        transaction is aborted and nothing of the batch is stored.
        log: a core.replication Replica (the leader's group commit): the
        kernel writes through a recording transaction, and the changes are
        appended to the log and acknowledged by a quorum before the commit;
        if the log refuses, the transaction is aborted and the error raised.
        """
        assert len(ops) // Op.LAYOUT.size <= limits.BATCH_SIZE_MAX
        if log is not None:
            return self._apply_logged(ops, now_ms, day, log)
        if self.replicated_stream is not None:
            raise ReplicatedStore(self.store.path, self.replicated_stream)
        with self.store.env.begin(write=True) as txn:
            results = self.kernel.apply_batch(txn, self.store, ops, now_ms, day)
            txn_id = txn.id()
        # Only now may the kernel keep this batch's records for the next one.
        self.kernel.batch_committed(txn_id)
        return results

    def _apply_logged(self, ops: bytes, now_ms: int, day: int, log) -> bytes:
        with self.store.env.begin(write=True) as txn:
            recorder = self.recording(txn)
            results = self.kernel.apply_batch(recorder, self.store, ops, now_ms, day)
            log.commit_changes(txn, recorder)
            txn_id = txn.id()
        self.kernel.batch_committed(txn_id)
        return results

    def apply_pipelined(self, batches: Iterator[bytes], now_ms: int, day: int, log) -> list[bytes]:
        """The leader's batches one after another in one write transaction,
        each appended to the log as soon as the kernel is done with it (log:
        a core.replication Replica), the next one running while its quorum
        ack is outstanding; the transaction commits once every append is
        acknowledged. Returns each batch's results. `batches` is asked for
        the next one only after the last one's append started. If anything
        raises, the transaction is aborted, and the log is read back before
        the next write (some appends may have landed)."""
        results, pipelined = [], []
        try:
            with self.store.env.begin(write=True) as txn:
                for ops in batches:
                    if results:
                        self.kernel.batch_continues(txn.id())
                    recorder = self.recording(txn)
                    results.append(self.kernel.apply_batch(recorder, self.store, ops, now_ms, day))
                    if recorder.count:
                        pipelined.append(log.append_started(recorder, pipelined))
                log.appended(txn, pipelined)
                txn_id = txn.id()
        except BaseException:
            log.abandoned(pipelined)
            raise
        self.kernel.batch_committed(txn_id)
        return results

    def recording(self, txn):
        """`txn` wrapped so that what it changes can be logged."""
        if self._database_index is None:
            self._database_index = database_index(self.store)
        return recording(txn, self.store, self._database_index)

    def apply(self, ops: Sequence[Op], now_ms: int, day: int) -> list[Result]:
        return decode_results(self.apply_encoded(encode_ops(ops), now_ms, day))

    def apply_in(self, txn, ops: Sequence[Op], now_ms: int, day: int) -> list[Result]:
        """Apply ops inside the caller's write transaction: a change of the
        one write path (core/writes.py) that moves money or takes counters
        together with records of its own (a red packet and its funding, a
        draw and its log entry), all committed together or not at all. Only
        from the thread that writes (the group commit's writer in the server);
        the kernel forgets what it kept from its last batch, since this
        transaction is not one of its batches."""
        assert len(ops) <= limits.BATCH_SIZE_MAX
        return decode_results(self.kernel.apply_batch(txn, self.store, encode_ops(ops), now_ms, day))

    # ------------------------------------------------------------ reads

    def _get(self, record_type, db, key):
        with self.store.env.begin() as txn:
            value = txn.get(key, db=db)
        return None if value is None else decode(record_type, value)

    def card(self, card_id: int) -> Card | None:
        return self._get(Card, self.store.cards, u64_key(card_id))

    def account(self, kind: int, owner: int) -> Account | None:
        return self._get(Account, self.store.accounts, account_key(kind, owner))

    def account_in(self, txn, kind: int, owner: int) -> Account | None:
        """An account as the caller's transaction sees it."""
        value = txn.get(account_key(kind, owner), db=self.store.accounts)
        return None if value is None else decode(Account, value)

    def txn(self, txn_id: int) -> Txn | None:
        return self._get(Txn, self.store.txns, u64_key(txn_id))

    def idem(self, terminal_id: int, serial: int) -> Idem | None:
        """The stored answer of the request (terminal, serial), or None."""
        with self.store.env.begin() as txn:
            found = idempotency.find(txn, self.store, terminal_id, serial)
        return None if found is None else found[1].entry

    def station_day(self, station_id: int, now_ms: int, utc_offset_minutes: int = 0) -> int:
        """The business day a request at this station takes now: the
        calendar's, or the day after the station's closed day (as the
        kernels' station_day)."""
        calendar_day = business_day(now_ms, utc_offset_minutes)
        with self.store.env.begin() as txn:
            raw = txn.get(u32_key(station_id), db=self.store.day_ends) if station_id else None
        if raw is not None and int.from_bytes(raw, "little") >= calendar_day:
            return calendar_day + limits.STATION_DAY_AHEAD_MAX
        return calendar_day

    def sale_declined(self, code: int, kind: int, card_id: int, amount: int, station_id: int, now_ms: int,
                      utc_offset_minutes: int = 0) -> Result:
        """The answer to a sale the server declines before the kernel sees it
        (a basket rule, the blacklist), as the kernels decline one: the
        amount asked and, when the card exists, its balances as of now."""
        result = Result(code=code, kind=kind, business_day=self.station_day(station_id, now_ms, utc_offset_minutes), card_id=card_id, amount=amount)
        found = self.card_as_of(card_id, now_ms, utc_offset_minutes) if card_id else None
        if found is not None:
            fleet, personal, points = found[1]
            result.fleet_balance, result.personal_balance, result.points_balance = fleet.balance, personal.balance, points.balance
        return result

    def txn_as_of(self, txn_id: int, now_ms: int) -> Txn | None:
        """The transaction as of now_ms: a hold past its time reads EXPIRED."""
        record = self.txn(txn_id)
        return None if record is None else current.txn_as_of(record, now_ms)

    def card_as_of(self, card_id: int, now_ms: int, utc_offset_minutes: int = 0) -> tuple[Card, tuple[Account, Account, Account]] | None:
        """The card and its (fleet, personal, points) accounts as of now_ms:
        its holds past their time released, the points of its lots past
        their day expired. None if there is no such card."""
        with self.store.env.begin() as txn:
            raw = txn.get(u64_key(card_id), db=self.store.cards)
            if raw is None:
                return None
            fleet, personal, points = (
                decode(Account, txn.get(account_key(kind, card_id), db=self.store.accounts)) for kind in CARD_ACCOUNT_KINDS
            )
            holds = current.due_holds(txn, self.store, card_id, now_ms) if fleet.held or personal.held else []
            open_lots = lots.open_lots(txn, self.store, card_id) if points.balance > points.held else []
        card, fleet, personal = current.card_as_of(decode(Card, raw), fleet, personal, holds)
        points = current.points_as_of(points, open_lots, business_day(now_ms, utc_offset_minutes)).account
        return card, (fleet, personal, points)

    def pending_txn_ids(self) -> list[int]:
        """Transactions waiting for an external channel (crash recovery)."""
        with self.store.env.begin() as txn:
            return [int.from_bytes(key, "big") for key in txn.cursor(db=self.store.pending).iternext(values=False)]

    def journal(self, txn_id: int | None = None) -> Iterator[JournalEntry]:
        """Every journal entry in order, or those of one transaction."""
        with self.store.env.begin() as txn:
            for _, value in txn.cursor(db=self.store.journal):
                entry = decode(JournalEntry, value)
                if txn_id is None or entry.txn_id == txn_id:
                    yield entry

    def counter(self, scope: int, owner: int, subject: int = 0, period: int = 0) -> int:
        """A counter's value (core/counters.py); 0 if never touched."""
        with self.store.env.begin() as txn:
            return self.counter_in(txn, scope, owner, subject, period)

    def counter_in(self, txn, scope: int, owner: int, subject: int = 0, period: int = 0) -> int:
        value = txn.get(counter_key(scope, owner, subject, period), db=self.store.counters)
        return 0 if value is None else COUNTER_VALUE.unpack(value)[0]

    def txn_counters(self, txn_id: int) -> list[tuple[tuple[int, int, int, int], int]]:
        """What a transaction took from counters and has not given back:
        ((scope, owner, subject, period), delta) in the order taken."""
        with self.store.env.begin() as txn:
            entries = txn.get(u64_key(txn_id), db=self.store.txn_counters)
        if entries is None:
            return []
        return [(parse_counter_key(key), delta) for key, delta in TXN_COUNTER_ENTRY.iter_unpack(entries)]

    def accounts(self) -> Iterator[Account]:
        with self.store.env.begin() as txn:
            for _, value in txn.cursor(db=self.store.accounts):
                yield decode(Account, value)
