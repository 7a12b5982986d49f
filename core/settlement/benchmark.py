"""`python -m core.settlement export --benchmark`: the journal export, timed.

Owns: the measurement issue 5 asks for: one business day of at least
1,000,000 journal rows exported as CSV and as Parquet, each in under 10 s.
The journal is written straight into a temporary data directory as valid
JournalEntry records (sales by every method, voids, refunds and top-ups over
50 stations, with a few thousand rows on the days either side so that the
day has to be found), because what is measured is the export, not the
kernel. Reports rows/s for each format.
"""

import os
import platform
import shutil
import tempfile
import time

import numpy as np

from core.writes import DirectWriter
from core.audit import JOURNAL_DTYPE
from core.records import META_NEXT_JOURNAL_SEQ, META_VALUE, u64_key
from core.results import AccountKind, Movement, Reason
from core.settlement.export import export_day
from core.store import open_store

DAY = 19_875  # 2024-06-01
NEIGHBOUR_ROWS = 5_000
LIMIT_S = 10.0


def synthetic_journal(rows: int, seed: int = 1) -> np.ndarray:
    """`rows` entries on DAY, NEIGHBOUR_ROWS on the days before and after."""
    rng = np.random.default_rng(seed)
    total = rows + 2 * NEIGHBOUR_ROWS
    entries = np.zeros(total, dtype=JOURNAL_DTYPE)
    entries["seq"] = np.arange(1, total + 1)
    entries["txn_id"] = np.arange(1, total + 1)
    entries["amount"] = rng.integers(100, 100_000, total)
    days = np.full(total, DAY, dtype=np.uint32)
    days[:NEIGHBOUR_ROWS] = DAY - 1
    days[-NEIGHBOUR_ROWS:] = DAY + 1
    entries["business_day"] = days
    start_ms = (DAY - 1) * 86_400_000
    entries["created_ms"] = start_ms + np.arange(total) * (3 * 86_400_000 // total)
    stations = rng.integers(1, 51, total)
    entries["station_id"] = stations
    methods = rng.choice([Movement.FLEET, Movement.PERSONAL, Movement.POINTS_CASH, Movement.CHANNEL], total, p=[0.2, 0.3, 0.1, 0.4])
    entries["movement"] = methods
    source = {Movement.FLEET: AccountKind.FLEET, Movement.PERSONAL: AccountKind.PERSONAL,
              Movement.POINTS_CASH: AccountKind.POINTS_FUNDING, Movement.CHANNEL: AccountKind.CHANNEL_CLEARING}
    entries["debit_kind"] = np.select([methods == movement for movement in source], list(source.values()))
    entries["debit_owner"] = np.where(methods == Movement.CHANNEL, rng.integers(1, 4, total), rng.integers(1, 100_000, total))
    entries["credit_kind"] = AccountKind.STATION_RECEIVABLE
    entries["credit_owner"] = stations
    entries["reason"] = rng.choice([Reason.SALE, Reason.VOID, Reason.REFUND], total, p=[0.96, 0.02, 0.02])
    returning = entries["reason"] != Reason.SALE
    for name in ("kind", "owner"):
        debit, credit = entries["debit_" + name].copy(), entries["credit_" + name].copy()
        entries["debit_" + name] = np.where(returning, credit, debit)
        entries["credit_" + name] = np.where(returning, debit, credit)
    return entries


def write_journal(store, entries: np.ndarray):
    data = entries.tobytes()
    size = JOURNAL_DTYPE.itemsize

    def load(txn):
        cursor = txn.cursor(db=store.journal)
        cursor.putmulti(((u64_key(int(seq)), data[i * size : (i + 1) * size]) for i, seq in enumerate(entries["seq"].tolist())), append=True)
        txn.put(META_NEXT_JOURNAL_SEQ, META_VALUE.pack(len(entries) + 1), db=store.meta)

    DirectWriter(store).write_blocking(load)


def _timed(function) -> tuple[float, int]:
    started = time.perf_counter()
    rows = function()
    return time.perf_counter() - started, rows


def run_export_benchmark(rows: int = 1_000_000) -> dict:
    directory = tempfile.mkdtemp(prefix="tally-export-bench-")
    try:
        store = open_store(os.path.join(directory, "data"), 8 * 2**30)
        started = time.perf_counter()
        write_journal(store, synthetic_journal(rows))
        seed_s = time.perf_counter() - started
        csv_path, parquet_path = os.path.join(directory, "day.csv"), os.path.join(directory, "day.parquet")
        csv_s, csv_rows = _timed(lambda: export_day(store, DAY, csv_path=csv_path))
        parquet_s, parquet_rows = _timed(lambda: export_day(store, DAY, parquet_path=parquet_path))
        both_s, _ = _timed(lambda: export_day(store, DAY, csv_path=csv_path, parquet_path=parquet_path))
        assert csv_rows == parquet_rows == rows, (csv_rows, parquet_rows, rows)
        report = {
            "rows": rows,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
            "seed_s": round(seed_s, 2),
            "csv_s": round(csv_s, 3),
            "csv_rows_per_s": round(rows / csv_s),
            "csv_bytes": os.path.getsize(csv_path),
            "parquet_s": round(parquet_s, 3),
            "parquet_rows_per_s": round(rows / parquet_s),
            "parquet_bytes": os.path.getsize(parquet_path),
            "csv_and_parquet_together_s": round(both_s, 3),
            "limit_s": LIMIT_S,
            "within_limit": csv_s < LIMIT_S and parquet_s < LIMIT_S,
        }
        store.close()
        return report
    finally:
        shutil.rmtree(directory, ignore_errors=True)
