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

The workloads take turns (--rounds, 10 by default): each round applies the
next share of every workload's batches, the order flipping from round to
round, so that other load on the machine weighs on each alike; the rates
are over all rounds, and the report lists each round's too.
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
from core.store import open_store

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
    parser.add_argument("--rounds", type=int, default=10,
                        help="the workloads take turns this many times, each round a share of each (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.batch_size <= limits.BATCH_SIZE_MAX:
        parser.error(f"--batch-size must be within 1 .. {limits.BATCH_SIZE_MAX}")
    if args.accounts < 2 or args.transfers < 1:
        parser.error("--accounts must be at least 2 and --transfers at least 1")
    if not 1 <= args.rounds <= 100:
        parser.error(f"--rounds must be within 1 .. 100, got {args.rounds}")
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


class Workload:
    """One ledger on its own directory and the batches it applies, timed
    round by round: the workloads of a run take turns (see main), so that
    what else runs on the machine weighs on each alike."""

    def __init__(self, name: str, unit: str, ledger: Ledger, batches: list[bytes]):
        self.name = name
        self.unit = unit
        self.ledger = ledger
        self.batches = batches
        self.done = 0
        self.operations = 0
        self.seconds = 0.0
        self.approved = 0
        self.round_rates: list[float] = []

    def run_round(self, rounds_left: int):
        """The next 1/rounds_left of the batches left."""
        count = -(-(len(self.batches) - self.done) // rounds_left)
        batches = self.batches[self.done : self.done + count]
        started = time.perf_counter()
        for batch in batches:
            self.approved += self.ledger.apply_encoded(batch, NOW_MS, DAY)[::RESULT_SIZE].count(1)  # first byte of each Result: code APPROVED
        seconds = time.perf_counter() - started
        operations = sum(len(batch) for batch in batches) // Op.LAYOUT.size
        self.done += count
        self.operations += operations
        self.seconds += seconds
        self.round_rates.append(operations / seconds if seconds else 0.0)

    def report(self) -> dict:
        rate = self.operations / self.seconds
        print(f"  {self.name:9s} {rate:>12,.0f} {self.unit}/s  ({self.seconds:.2f} s, {self.approved:,} approved)", file=sys.stderr)
        return {f"{self.unit}_per_s": rate, "seconds": self.seconds, "approved": self.approved, "rounds": self.round_rates}


def opened(directory: str, name: str, kernel: str, setup: list[Op]) -> Ledger:
    ledger = Ledger(open_store(f"{directory}/{name}", 8 * 2**30), load_kernel(kernel))
    for start in range(0, len(setup), limits.BATCH_SIZE_MAX):
        ledger.apply(setup[start : start + limits.BATCH_SIZE_MAX], NOW_MS, DAY)
    return ledger


def run_rounds(workloads: list[Workload], rounds: int):
    """Each round runs a share of every workload, in turn; the order flips
    from one round to the next."""
    for index in range(rounds):
        for workload in workloads if index % 2 == 0 else workloads[::-1]:
            workload.run_round(rounds - index)


def books_of(ledger: Ledger) -> dict:
    with ledger.store.env.begin() as txn:
        return {name: list(txn.cursor(db=ledger.store.dbs[name])) for name in ("accounts", "journal")}


def main(argv=None) -> int:
    args = parse_args(argv)
    kernels = args.kernels.split(",")
    print(f"kernel benchmark: {args.transfers:,} transfers over {args.accounts:,} accounts, batches of {args.batch_size:,}, durable, "
          f"{args.rounds} rounds", file=sys.stderr)
    batches = transfer_batches(args.accounts, args.transfers, args.batch_size, args.seed)
    with tempfile.TemporaryDirectory(prefix="tally-bench-kernel-") as directory:
        workloads = [Workload(name, "transfers", opened(directory, name, name, setup_ops(args.accounts)), batches) for name in kernels]
        if args.mixed:
            workloads.append(Workload("mixed", "operations", opened(directory, "mixed", "cython", mixed_setup_ops(args.accounts)),
                                      mixed_batches(args.accounts, args.transfers, args.batch_size, args.seed)))
        run_rounds(workloads, args.rounds)
        runs = {workload.name: workload.report() for workload in workloads}
        books = [books_of(workload.ledger) for workload in workloads if workload.name in kernels]
        for workload in workloads:
            workload.ledger.store.close()
    mixed = runs.pop("mixed", None)
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
            shares = [m / t for m, t in zip(mixed["rounds"], runs["cython"]["rounds"]) if t]
            report["mixed_share_rounds"] = shares
            print(f"  mixed / transfers {report['mixed_share_of_transfers']:.2f} (rounds {', '.join(f'{share:.2f}' for share in shares)})",
                  file=sys.stderr)
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
