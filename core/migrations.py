"""`python -m core.migrations DIR`: bring a data directory up to this code's data format.

Owns: the registry of migration steps (STEPS: the version a step makes ->
the step) and running the steps a store lacks, in order, with a progress
bar. The version itself lives in the store's meta (core/store.py:
DATA_FORMAT_VERSION is what this code reads and writes; a store without a
version is version 1).
Used by: the command line, `make run` (the demo directory), tests. The
server and the tools refuse a store of another version (core/store.py
open_store) and name this command.

A step is a function step(txn, store, progress) that rewrites what the
version before it left, inside the one write transaction it is given; the
runner sets the new version in that same transaction, so a step is stored
whole with its version or not at all, and a migration cut short by a crash
resumes at the step it did not finish. A step never reads what a later one
writes. To change a layout: raise DATA_FORMAT_VERSION in core/store.py, add
the step here under the new number, say in its docstring what it changes.

Steps:
  2  settlement's keys gain the headquarters domain whose merchant account
     a statement is (issue 15): every statement, import, run and difference
     of a version 1 store becomes the network's (domain 0).
  3  the ledger's layout for long histories (issue 20): journal entries name
     the entry before them on each account and accounts their newest
     (points_history goes); each card's newest open lot moves from
     point_lots to after its points account; idempotency records move from
     idem, keyed by (terminal, serial), to requests in order with
     request_index and request_tails (core/idempotency.py).
"""

import argparse
import struct
import sys
from collections.abc import Callable

import lmdb

from core.errors import TallyError
from core.records import (
    META_NEXT_REQUEST_SEQ,
    META_VALUE,
    NO_LOT,
    Account,
    JournalEntry,
    RequestTail,
    bucket_with,
    encode,
    parse_idem_key,
    request_bucket_key,
    u32_key,
    u64_key,
)
from core.results import AccountKind
from core.store import DATA_FORMAT_VERSION, Store, format_version, open_store, set_format_version
from core.writes import DirectWriter

PROG = "python -m core.migrations"
NETWORK_DOMAIN_PREFIX = (0).to_bytes(4, "big")
# Databases whose keys gained the domain in version 2 (core/store.py).
SETTLEMENT_KEYED_BY_DAY = ("settlement_imports", "settlement_statements", "settlement_differences", "settlement_runs")


def settlement_keys_gain_the_domain(txn, store: Store, progress: Callable[[int], None]):
    """Version 2: (channel, day, ...) -> (domain 0, channel, day, ...) in the
    settlement databases. The values stay: their new `domain` fields decode
    as 0 (msgpack defaults)."""
    for name in SETTLEMENT_KEYED_BY_DAY:
        db = store.dbs[name]
        if db is None:
            continue
        rows = list(txn.cursor(db=db).iternext())
        txn.drop(db, delete=False)
        for key, value in rows:
            txn.put(NETWORK_DOMAIN_PREFIX + key, value, db=db)
        progress(len(rows))


def settlement_rows(txn, store: Store) -> int:
    return sum(txn.stat(store.dbs[name])["entries"] for name in SETTLEMENT_KEYED_BY_DAY if store.dbs[name] is not None)


# Version 2's layouts that version 3 changed (core/records.py).
V2_ACCOUNT = struct.Struct("<BBHIQqqqq")
V2_JOURNAL_ENTRY = struct.Struct("<QQqQQQBBBBIII")
V2_IDEM_SIZE = 16 + 120
REWRITE_CHUNK_ROWS = 65_536


def retired_db(txn, store: Store, name: str):
    """A database of an older format (core/store.py RETIRED_DATABASE_NAMES), or None."""
    try:
        return store.env.open_db(name.encode(), txn=txn, create=False)
    except lmdb.NotFoundError:
        return None


def ledger_layout_for_long_histories(txn, store: Store, progress: Callable[[int], None]):
    """Version 3: the journal chained by account, each card's newest lot
    inline, requests in the order answered. Every balance, lot, transaction
    and answer stays as it was (tests/test_migrations.py compares them)."""
    heads = chain_the_journal(txn, store, progress)
    rewrite_accounts(txn, store, heads, progress)
    move_newest_lots_inline(txn, store, progress)
    requests_in_order(txn, store, progress)
    history = retired_db(txn, store, "points_history")
    if history is not None:
        txn.drop(history, delete=True)


def rewrite_in_chunks(txn, db, change, progress):
    """Put change(key, value) over each row of `db` that it returns bytes
    for, a chunk at a time (bounded memory on a directory of millions)."""
    cursor = txn.cursor(db=db)
    position = cursor.first()
    while position:
        chunk = []
        while position and len(chunk) < REWRITE_CHUNK_ROWS:
            chunk.append((cursor.key(), cursor.value()))
            position = cursor.next()
        rewritten = [(key, new) for key, new in ((key, change(key, value)) for key, value in chunk) if new is not None]
        txn.cursor(db=db).putmulti(rewritten)
        progress(len(chunk))
        if position:
            # The puts moved the cursor's pages: find the next row again.
            position = cursor.set_key(chunk[-1][0]) and cursor.next()


def chain_the_journal(txn, store: Store, progress) -> dict[tuple[int, int], int]:
    """Rewrite every entry with the seq of the entry before it on each
    account; the newest entry's seq of each account."""
    heads: dict[tuple[int, int], int] = {}

    def chained(key, value):
        if len(value) != V2_JOURNAL_ENTRY.size:
            return None  # written by this format already
        entry = JournalEntry(*V2_JOURNAL_ENTRY.unpack(value))
        debit, credit = (entry.debit_kind, entry.debit_owner), (entry.credit_kind, entry.credit_owner)
        entry.debit_prev, entry.credit_prev = heads.get(debit, 0), heads.get(credit, 0)
        heads[debit] = heads[credit] = entry.seq
        return encode(entry)

    rewrite_in_chunks(txn, store.journal, chained, progress)
    return heads


def rewrite_accounts(txn, store: Store, heads: dict, progress):
    """Each account with the seq of its newest journal entry; a POINTS
    account with room for its inline lot (none yet)."""

    def with_head(key, value):
        if len(value) != V2_ACCOUNT.size:
            return None
        account = Account(*V2_ACCOUNT.unpack(value))
        account.last_seq = heads.get((account.kind, account.owner), 0)
        return encode(account) + (NO_LOT if account.kind == AccountKind.POINTS else b"")

    rewrite_in_chunks(txn, store.accounts, with_head, progress)


def move_newest_lots_inline(txn, store: Store, progress):
    """Each card's newest open lot (the last of its keys in point_lots)
    leaves point_lots for the place after its points account."""
    newest = {}
    for key, value in txn.cursor(db=store.point_lots):
        newest[key[:8]] = (key, value)
    for card_key, (key, value) in newest.items():
        account_key = bytes((AccountKind.POINTS,)) + card_key
        stored = txn.get(account_key, db=store.accounts)
        txn.put(account_key, stored[: Account.LAYOUT.size] + value, db=store.accounts)
        txn.delete(key, db=store.point_lots)
    progress(len(newest))


def requests_in_order(txn, store: Store, progress):
    """Version 2's idem records, keyed by (terminal, serial), become
    requests numbered in that order; all of them are listed in
    request_index, and each terminal's tail starts empty at its largest
    serial."""
    idem = retired_db(txn, store, "idem")
    if idem is None:
        return
    seq = 0
    tails: dict[int, int] = {}
    requests, index = [], []
    bucket, pairs = None, []
    for key, value in txn.cursor(db=idem):
        assert len(value) == V2_IDEM_SIZE
        terminal_id, serial = parse_idem_key(key)
        seq += 1
        requests.append((u64_key(seq), struct.pack("<IIQQ", terminal_id, 0, serial, 0) + value))
        tails[terminal_id] = max(tails.get(terminal_id, 0), serial)
        # In (terminal, serial) order: each bucket's pairs come together.
        if request_bucket_key(terminal_id, serial) != bucket:
            if pairs:
                index.append((bucket, bucket_with(None, pairs)))
            bucket, pairs = request_bucket_key(terminal_id, serial), []
        pairs.append((serial, seq))
        if len(requests) >= REWRITE_CHUNK_ROWS:
            append_requests(txn, store, requests, index, progress)
    if pairs:
        index.append((bucket, bucket_with(None, pairs)))
    append_requests(txn, store, requests, index, progress)
    txn.cursor(db=store.request_tails).putmulti(
        [(u32_key(terminal_id), encode(RequestTail(max_serial=serial))) for terminal_id, serial in sorted(tails.items())], append=True)
    txn.put(META_NEXT_REQUEST_SEQ, META_VALUE.pack(seq + 1), db=store.meta)
    txn.drop(idem, delete=True)


def append_requests(txn, store: Store, requests: list, index: list, progress):
    """Both lists are in key order past what is stored: appended."""
    txn.cursor(db=store.requests).putmulti(requests, append=True)
    txn.cursor(db=store.request_index).putmulti(index, append=True)
    progress(len(requests))
    requests.clear()
    index.clear()


def ledger_rows(txn, store: Store) -> int:
    idem = retired_db(txn, store, "idem")
    counted = (store.journal, store.accounts, store.point_lots)
    return sum(txn.stat(db)["entries"] for db in counted) + (0 if idem is None else txn.stat(idem)["entries"])


class Step:
    """One migration: what it does (one line), the rows it will touch (for
    the progress bar), and the change itself."""

    def __init__(self, summary: str, change, rows_of):
        self.summary = summary
        self.change = change
        self.rows_of = rows_of


STEPS: dict[int, Step] = {
    2: Step("settlement keys gain the domain", settlement_keys_gain_the_domain, settlement_rows),
    3: Step("ledger layout for long histories", ledger_layout_for_long_histories, ledger_rows),
}
assert sorted(STEPS) == list(range(2, DATA_FORMAT_VERSION + 1)), "one step per version above 1"


def pending(store: Store) -> list[int]:
    """The versions whose steps the store still needs, in order."""
    version = format_version(store)
    if version > DATA_FORMAT_VERSION:
        raise TallyError(f"{store.path} holds data format {version}, newer than this code's {DATA_FORMAT_VERSION}",
                         reason="STORE_FORMAT_NEWER")
    return list(range(version + 1, DATA_FORMAT_VERSION + 1))


def migrate(store: Store, progress_factory=None) -> list[int]:
    """Run every step the store needs; the versions made, in order.
    progress_factory(total, description) -> a context manager with
    update(n) (tqdm's shape); None: no progress shown."""
    made = []
    for version in pending(store):
        step = STEPS[version]

        def change(txn, step=step, version=version):
            total = step.rows_of(txn, store)
            if progress_factory is None:
                step.change(txn, store, lambda n: None)
            else:
                with progress_factory(total, f"{version}: {step.summary}") as bar:
                    step.change(txn, store, bar.update)
            set_format_version(txn, store, version)

        DirectWriter(store).write_blocking(change)
        made.append(version)
    return made


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="rows", disable=None, file=sys.stderr)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("data", metavar="DIR", help="the data directory (stop the server first)")
    parser.add_argument("--map-size-gib", type=int, default=64, help="LMDB map size, GiB (as the server's)")
    parser.add_argument("--check", action="store_true", help="only say which steps are pending (exit 1 if any)")
    args = parser.parse_args(argv)
    store = open_store(args.data, args.map_size_gib * 2**30, check_format=False)
    try:
        before = format_version(store)
        if args.check:
            todo = pending(store)
            print(f"{args.data}: data format {before}; pending: {', '.join(map(str, todo)) or 'none'}")
            return 1 if todo else 0
        made = migrate(store, _progress)
    except TallyError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if made:
        print(f"{args.data}: data format {before} -> {made[-1]} ({', '.join(STEPS[v].summary for v in made)})")
    else:
        print(f"{args.data}: data format {before}, up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
