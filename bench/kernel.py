"""`python -m bench kernel`: the ledger kernel alone, Cython against the reference.

Owns: the transfer workload of issue 2 (10,000 accounts, uniform, 2,000,000
transfers, batches of 8,189), run durably (every batch one LMDB commit with
fsync) through each kernel on its own fresh data directory, in the same run.
Reports transfers/s for each and their ratio, and checks that both kernels
ended with identical books.
"""

import argparse
import json
import platform
import random
import sys
import tempfile
import time

from core import limits
from core.ledger import Ledger, load_kernel
from core.records import Op, encode
from core.results import AccountKind, OpKind
from core.store import DATABASE_NAMES, open_store

NOW_MS = 1_800_000_000_000
DAY = NOW_MS // 86_400_000
OPENING_BALANCE_MINOR = 10**9
BENCH_TERMINAL_ID = 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench kernel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000, help="general accounts (default %(default)s)")
    parser.add_argument("--transfers", type=int, default=2_000_000, help="transfers per kernel (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=limits.BATCH_SIZE_MAX, help="operations per commit (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the workload")
    parser.add_argument("--kernels", default="cython,reference", help="kernels to run, comma-separated")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.batch_size <= limits.BATCH_SIZE_MAX:
        parser.error(f"--batch-size must be within 1 .. {limits.BATCH_SIZE_MAX}")
    if args.accounts < 2 or args.transfers < 1:
        parser.error("--accounts must be at least 2 and --transfers at least 1")
    return args


def setup_ops(accounts: int) -> list[Op]:
    """Open the accounts and fund each from a system account."""
    ops = [Op(kind=OpKind.OPEN_ACCOUNT, account_kind=AccountKind.GENERAL, account_owner=owner) for owner in range(1, accounts + 1)]
    ops += [
        Op(
            kind=OpKind.TRANSFER,
            account_kind=AccountKind.TOPUP_FUNDING,
            credit_kind=AccountKind.GENERAL,
            credit_owner=owner,
            amount=OPENING_BALANCE_MINOR,
        )
        for owner in range(1, accounts + 1)
    ]
    return ops


def transfer_batches(accounts: int, transfers: int, batch_size: int, seed: int) -> list[bytes]:
    """Uniform random transfers between distinct accounts, each idempotent on
    its own serial, pre-encoded so that only the kernel is timed."""
    rng = random.Random(seed)
    batches, batch = [], []
    for serial in range(1, transfers + 1):
        debit = rng.randint(1, accounts)
        credit = rng.randint(1, accounts - 1)
        credit += credit >= debit
        op = Op(
            kind=OpKind.TRANSFER,
            terminal_id=BENCH_TERMINAL_ID,
            serial=serial,
            account_kind=AccountKind.GENERAL,
            account_owner=debit,
            credit_kind=AccountKind.GENERAL,
            credit_owner=credit,
            amount=rng.randint(1, 10_000),
            fingerprint=serial.to_bytes(16, "little"),
        )
        batch.append(encode(op))
        if len(batch) == batch_size:
            batches.append(b"".join(batch))
            batch = []
    if batch:
        batches.append(b"".join(batch))
    return batches


def run_kernel(name: str, directory: str, args, batches: list[bytes]) -> dict:
    ledger = Ledger(open_store(f"{directory}/{name}", 8 * 2**30), load_kernel(name))
    setup = setup_ops(args.accounts)
    for start in range(0, len(setup), limits.BATCH_SIZE_MAX):
        ledger.apply(setup[start : start + limits.BATCH_SIZE_MAX], NOW_MS, DAY)
    started = time.perf_counter()
    approved = 0
    for batch in batches:
        results = ledger.apply_encoded(batch, NOW_MS, DAY)
        approved += results[::112].count(1)  # first byte of each Result: code APPROVED
    seconds = time.perf_counter() - started
    with ledger.store.env.begin() as txn:
        books = {name: list(txn.cursor(db=ledger.store.dbs[name])) for name in ("accounts", "journal")}
    ledger.store.close()
    print(f"  {name:9s} {args.transfers / seconds:>12,.0f} transfers/s  ({seconds:.2f} s, {approved:,} approved)", file=sys.stderr)
    return {"transfers_per_s": args.transfers / seconds, "seconds": seconds, "approved": approved, "books": books}


def main(argv=None) -> int:
    args = parse_args(argv)
    kernels = args.kernels.split(",")
    print(f"kernel benchmark: {args.transfers:,} transfers over {args.accounts:,} accounts, batches of {args.batch_size:,}, durable", file=sys.stderr)
    batches = transfer_batches(args.accounts, args.transfers, args.batch_size, args.seed)
    with tempfile.TemporaryDirectory(prefix="tally-bench-kernel-") as directory:
        runs = {name: run_kernel(name, directory, args, batches) for name in kernels}
    books = [run.pop("books") for run in runs.values()]
    identical = all(b == books[0] for b in books)
    report = {
        "benchmark": "kernel",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": platform.platform(),
        "workload": {"accounts": args.accounts, "transfers": args.transfers, "batch_size": args.batch_size, "seed": args.seed, "durable": True},
        "kernels": runs,
        "identical_books": identical,
    }
    if "cython" in runs and "reference" in runs:
        report["ratio"] = runs["cython"]["transfers_per_s"] / runs["reference"]["transfers_per_s"]
        print(f"  ratio     {report['ratio']:>12.1f} x  (cython / reference, same run)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    if not identical:
        print("ERROR: the kernels ended with different books", file=sys.stderr)
        return 1
    return 0
