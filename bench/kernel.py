"""`python -m bench kernel`: the ledger kernel alone, Cython against the reference.

Owns: the transfer workload of issue 2 (10,000 accounts, uniform, 2,000,000
transfers, batches of 8,189), run durably (every batch one LMDB commit with
fsync) through each kernel on its own fresh data directory, in the same run.
Reports transfers/s for each and their ratio, and checks that both kernels
ended with identical books.

With --mixed it also runs the loyalty mix of issue 3 through the Cython
kernel: as many operations, a third each sales that earn points, sales that
spend points (with the rest from the personal account) and gift
redemptions, over as many cards; reported as operations/s and as a share of
the transfer workload's rate in the same run.
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
from core.records import Op, Result, encode
from core.results import AccountKind, OpKind
from core.store import DATABASE_NAMES, open_store

NOW_MS = 1_800_000_000_000
DAY = NOW_MS // 86_400_000
OPENING_BALANCE_MINOR = 10**9
# The first byte of each Result is its code's low byte: APPROVED is 1.
RESULT_SIZE = Result.LAYOUT.size
BENCH_TERMINAL_ID = 1


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench kernel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000, help="general accounts (default %(default)s)")
    parser.add_argument("--transfers", type=int, default=2_000_000, help="transfers per kernel (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=limits.BATCH_SIZE_MAX, help="operations per commit (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the workload")
    parser.add_argument("--kernels", default="cython,reference", help="kernels to run, comma-separated")
    parser.add_argument("--mixed", action="store_true", help="also run the loyalty mix through the Cython kernel")
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


MIX_GIFT_ID = 1


def mixed_setup_ops(cards: int) -> list[Op]:
    """Cards with money and points, and one gift with ample stock."""
    ops = [Op(kind=OpKind.GIFT_SET, item_id=MIX_GIFT_ID, amount=50, bonus_points=100), Op(kind=OpKind.GIFT_STOCK, item_id=MIX_GIFT_ID, amount=10**9)]
    for card in range(1, cards + 1):
        ops.append(Op(kind=OpKind.OPEN_CARD, card_id=card, card_status=2))
        for serial, kind in ((2 * card - 1, AccountKind.PERSONAL), (2 * card, AccountKind.POINTS)):
            ops.append(Op(kind=OpKind.TOPUP, terminal_id=2, station_id=1, serial=serial, card_id=card, account_kind=kind, amount=10**11,
                          fingerprint=serial.to_bytes(16, "little")))
    return ops


def mixed_batches(cards: int, operations: int, batch_size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    batches, batch = [], []
    for serial in range(1, operations + 1):
        card = rng.randint(1, cards)
        common = dict(terminal_id=3, station_id=1, serial=serial, card_id=card, fingerprint=serial.to_bytes(16, "little"))
        choice = serial % 3
        if choice == 0:
            op = Op(kind=OpKind.PAY, amount=rng.randint(100, 20_000), plan_flags=2, earn_points=rng.randint(1, 200), points_per_unit=100, **common)
        elif choice == 1:
            op = Op(kind=OpKind.PAY, amount=rng.randint(100, 20_000), plan_flags=6, points_max=500, earn_points=10, points_per_unit=100, **common)
        else:
            op = Op(kind=OpKind.REDEEM, item_id=MIX_GIFT_ID, amount=1, **common)
        batch.append(encode(op))
        if len(batch) == batch_size:
            batches.append(b"".join(batch))
            batch = []
    if batch:
        batches.append(b"".join(batch))
    return batches


def run_mixed(directory: str, args) -> dict:
    ledger = Ledger(open_store(f"{directory}/mixed", 8 * 2**30), load_kernel("cython"))
    setup = mixed_setup_ops(args.accounts)
    for start in range(0, len(setup), limits.BATCH_SIZE_MAX):
        ledger.apply(setup[start : start + limits.BATCH_SIZE_MAX], NOW_MS, DAY)
    batches = mixed_batches(args.accounts, args.transfers, args.batch_size, args.seed)
    started = time.perf_counter()
    approved = 0
    for batch in batches:
        approved += ledger.apply_encoded(batch, NOW_MS, DAY)[::RESULT_SIZE].count(1)
    seconds = time.perf_counter() - started
    ledger.store.close()
    print(f"  mixed     {args.transfers / seconds:>12,.0f} operations/s ({seconds:.2f} s, {approved:,} approved)", file=sys.stderr)
    return {"operations_per_s": args.transfers / seconds, "seconds": seconds, "approved": approved}


def run_kernel(name: str, directory: str, args, batches: list[bytes]) -> dict:
    ledger = Ledger(open_store(f"{directory}/{name}", 8 * 2**30), load_kernel(name))
    setup = setup_ops(args.accounts)
    for start in range(0, len(setup), limits.BATCH_SIZE_MAX):
        ledger.apply(setup[start : start + limits.BATCH_SIZE_MAX], NOW_MS, DAY)
    started = time.perf_counter()
    approved = 0
    for batch in batches:
        results = ledger.apply_encoded(batch, NOW_MS, DAY)
        approved += results[::RESULT_SIZE].count(1)  # first byte of each Result: code APPROVED
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
        mixed = run_mixed(directory, args) if args.mixed else None
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
    if mixed is not None:
        report["mixed"] = mixed
        if "cython" in runs:
            report["mixed_share_of_transfers"] = mixed["operations_per_s"] / runs["cython"]["transfers_per_s"]
            print(f"  mixed / transfers {report['mixed_share_of_transfers']:.2f}", file=sys.stderr)
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
