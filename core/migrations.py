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
  3  transactions indexed by card (issue 19, the console's card page): the
     kernel writes card_txns with each new transaction; this step puts every
     transaction of an older store into it (core/card_txns.py).
"""

import argparse
import sys
from collections.abc import Callable

from core import card_txns
from core.errors import TallyError
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


class Step:
    """One migration: what it does (one line), the rows it will touch (for
    the progress bar), and the change itself."""

    def __init__(self, summary: str, change, rows_of):
        self.summary = summary
        self.change = change
        self.rows_of = rows_of


def transaction_rows(txn, store: Store) -> int:
    return txn.stat(store.txns)["entries"]


STEPS: dict[int, Step] = {
    2: Step("settlement keys gain the domain", settlement_keys_gain_the_domain, settlement_rows),
    3: Step("transactions indexed by card", card_txns.index_transactions, transaction_rows),
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
