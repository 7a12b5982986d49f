"""`python -m bench log-content`: what the replicated log carries per payment, and what a follower pays for it.

Owns: the measurement behind the choice of the log's content (README,
"High availability"): batches of card payments through the Cython kernel
on a recording transaction (core/replication/changes.py), then, per
payment: the bytes of its key/value changes raw and compressed (zstd level
1 as logged, and zlib level 1 for comparison, with the time each takes),
the bytes of its kernel operation (what an operation log would carry), and
a follower's CPU to apply it, from the changes (core/replication/applier.py,
as a follower applies an entry with its position) against running the
kernel on the operations over the same state (what an operation log would
cost every follower).
Used by: operators; its figures are quoted in the README.
May call: core only (no server, no NATS).
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import zlib

import msgspec

from core.ledger import Ledger, encode_ops, load_kernel
from core.records import Op
from core.replication.applier import CHANGES, apply_entries
from core.replication.changes import _body_of
from core.replication.log import Entry
from core.results import AccountKind, OpKind, PlanFlag
from core.store import open_store

NOW_MS = 1_800_000_000_000
DAY = NOW_MS // 86_400_000


class Report(msgspec.Struct):
    payments_per_batch: int
    batches: int
    operation_bytes_per_payment: float
    changes_per_payment: float
    raw_bytes_per_payment: float
    zstd_bytes_per_payment: float
    zstd_ms_per_batch: float
    zlib_bytes_per_payment: float
    zlib_ms_per_batch: float
    follower_apply_changes_us_per_payment: float
    follower_run_kernel_us_per_payment: float


class Keeper:
    """Stands for the log: keeps each batch's payload (and its change count)."""

    def __init__(self):
        self.payloads, self.counts, self.zstd_s = [], [], 0.0

    def commit_changes(self, txn, recorder):
        started = time.perf_counter()
        self.payloads.append(recorder.payload())
        self.zstd_s += time.perf_counter() - started
        self.counts.append(recorder.count)


def fresh(path: str, cards: int) -> Ledger:
    shutil.rmtree(path, ignore_errors=True)
    ledger = Ledger(open_store(path, 2**32), load_kernel("cython"))
    ledger.apply([Op(kind=OpKind.OPEN_CARD, card_id=10 + index, card_status=2) for index in range(cards)], NOW_MS, DAY)
    ledger.apply([Op(kind=OpKind.TOPUP, terminal_id=1000 + index, station_id=1, serial=1, card_id=10 + index,
                     account_kind=AccountKind.PERSONAL, amount=10**9, fingerprint=digest(index, 0))
                  for index in range(cards)], NOW_MS, DAY)
    return ledger


def digest(index: int, batch: int) -> bytes:
    return hashlib.blake2b(f"{index}-{batch}".encode(), digest_size=16).digest()


def payments(cards: int, batch: int) -> bytes:
    return encode_ops([Op(kind=OpKind.PAY, terminal_id=1000 + index, station_id=1, serial=2 + batch, card_id=10 + index,
                          amount=100, plan_flags=PlanFlag.USE_PERSONAL, points_per_unit=100, earn_points=1,
                          fingerprint=digest(index, batch + 1)) for index in range(cards)])


def measure(cards: int, batches: int, work_dir: str) -> Report:
    leader, keeper = fresh(os.path.join(work_dir, "leader"), cards), Keeper()
    for batch in range(batches):
        leader.apply_encoded(payments(cards, batch), NOW_MS + batch, DAY, keeper)
    by_operations = fresh(os.path.join(work_dir, "operations"), cards)
    started = time.process_time()
    for batch in range(batches):
        by_operations.apply_encoded(payments(cards, batch), NOW_MS + batch, DAY)
    kernel_s = time.process_time() - started
    by_changes = fresh(os.path.join(work_dir, "changes"), cards)
    started = time.process_time()
    for position, payload in enumerate(keeper.payloads, start=1):
        entry = Entry(sequence=position, time_ms=NOW_MS, kind=CHANGES, node="leader", data=payload, pending=0)
        apply_entries(by_changes.store, [entry])  # as a follower does: the entry and its position
    changes_s = time.process_time() - started
    raw = [bytes(_body_of(payload)) for payload in keeper.payloads]
    started = time.perf_counter()
    zlibbed = [zlib.compress(body, 1) for body in raw]
    zlib_s = time.perf_counter() - started
    count = cards * batches
    return Report(
        payments_per_batch=cards, batches=batches, operation_bytes_per_payment=len(payments(cards, 0)) / cards,
        changes_per_payment=sum(keeper.counts) / count,
        raw_bytes_per_payment=sum(map(len, raw)) / count,
        zstd_bytes_per_payment=sum(map(len, keeper.payloads)) / count,
        zstd_ms_per_batch=1000 * keeper.zstd_s / batches,
        zlib_bytes_per_payment=sum(map(len, zlibbed)) / count,
        zlib_ms_per_batch=1000 * zlib_s / batches,
        follower_apply_changes_us_per_payment=1e6 * changes_s / count,
        follower_run_kernel_us_per_payment=1e6 * kernel_s / count,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench log-content", description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=1500, metavar="N", help="payments per batch (default %(default)s)")
    parser.add_argument("--batches", type=int, default=20, metavar="B", help="batches (default %(default)s)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 1 <= args.payments <= 8000 or not 1 <= args.batches <= 1000:
        parser.error("--payments within 1 .. 8000, --batches within 1 .. 1000")
    with tempfile.TemporaryDirectory(prefix="tally-log-content-") as work_dir:
        report = measure(args.payments, args.batches, work_dir)
    print(f"per card payment ({report.payments_per_batch} a batch, {report.batches} batches): operation "
          f"{report.operation_bytes_per_payment:.0f} B; changes {report.changes_per_payment:.1f}, "
          f"{report.raw_bytes_per_payment:.0f} B raw, {report.zstd_bytes_per_payment:.0f} B zstd-1 "
          f"({report.zstd_ms_per_batch:.1f} ms a batch), {report.zlib_bytes_per_payment:.0f} B zlib-1 "
          f"({report.zlib_ms_per_batch:.1f} ms a batch); follower CPU: applying the changes "
          f"{report.follower_apply_changes_us_per_payment:.1f} us, running the kernel on the operation "
          f"{report.follower_run_kernel_us_per_payment:.1f} us")
    if args.json:
        with open(args.json, "wb") as json_file:
            json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
