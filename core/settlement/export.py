"""A day's journal for batch clients: CSV and Parquet, fast.

Owns: the export's columns and the two writers. The journal is read in
chunks (journal.py) straight into numpy, handed to Arrow without copying,
and written by pyarrow's C++ CSV and Parquet writers, so a day of millions of
entries is exported in seconds with bounded memory.
Used by: the CLI (`export`, `export --benchmark`), batch clients.

Columns, one row per journal entry (money in integer minor units):
  seq, txn_id, amount_minor, created_ms, created_at (the network's local
  time, its offset written with it: statements are local too), business_day,
  station_id, debit_kind, debit_owner, credit_kind, credit_owner, movement,
  reason. Kinds, movements and reasons are names (AccountKind, Movement,
  Reason of core/results.py); in Parquet they are dictionary-encoded.
"""

import enum

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet

from core.audit import JOURNAL_DTYPE
from core.results import AccountKind, Movement, Reason
from core.settlement.journal import iter_chunks


def _names(enum_type: type[enum.IntEnum]) -> pa.Array:
    """A dictionary indexed by the u8 code itself: code -> name."""
    names = [f"{enum_type.__name__.lower()}_{code}" for code in range(256)]
    for member in enum_type:
        names[member.value] = member.name
    return pa.array(names, type=pa.string())


_KINDS, _MOVEMENTS, _REASONS = _names(AccountKind), _names(Movement), _names(Reason)
def schema_of(utc_offset_minutes: int = 0) -> pa.Schema:
    return pa.schema(_columns(timestamp_type(utc_offset_minutes)))


def timestamp_type(utc_offset_minutes: int) -> pa.DataType:
    """Milliseconds with the network's offset as their zone ("+08:00")."""
    sign = "+" if utc_offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(utc_offset_minutes), 60)
    return pa.timestamp("ms", tz=f"{sign}{hours:02d}:{minutes:02d}")


def _columns(created_at_type: pa.DataType) -> list:
    return [
        ("seq", pa.uint64()),
        ("txn_id", pa.uint64()),
        ("amount_minor", pa.int64()),
        ("created_ms", pa.uint64()),
        ("created_at", created_at_type),
        ("business_day", pa.uint32()),
        ("station_id", pa.uint32()),
        ("debit_kind", pa.dictionary(pa.uint8(), pa.string())),
        ("debit_owner", pa.uint64()),
        ("credit_kind", pa.dictionary(pa.uint8(), pa.string())),
        ("credit_owner", pa.uint64()),
        ("movement", pa.dictionary(pa.uint8(), pa.string())),
        ("reason", pa.dictionary(pa.uint8(), pa.string())),
    ]


SCHEMA = schema_of(0)


def _coded(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.ascontiguousarray(codes)), dictionary)


def to_arrow(chunk: np.ndarray, utc_offset_minutes: int = 0) -> pa.RecordBatch:
    """Journal entries (JOURNAL_DTYPE) -> one Arrow record batch."""
    column = lambda name: pa.array(np.ascontiguousarray(chunk[name]))  # noqa: E731
    created = np.ascontiguousarray(chunk["created_ms"]).view(np.int64)
    return pa.RecordBatch.from_arrays(
        [
            column("seq"),
            column("txn_id"),
            column("amount"),
            column("created_ms"),
            pa.array(created, type=pa.int64()).cast(timestamp_type(utc_offset_minutes)),
            column("business_day"),
            column("station_id"),
            _coded(chunk["debit_kind"], _KINDS),
            column("debit_owner"),
            _coded(chunk["credit_kind"], _KINDS),
            column("credit_owner"),
            _coded(chunk["movement"], _MOVEMENTS),
            _coded(chunk["reason"], _REASONS),
        ],
        schema=schema_of(utc_offset_minutes),
    )


def _plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionary columns as their strings: CSV has no dictionaries."""
    arrays = [array.cast(pa.string()) if pa.types.is_dictionary(array.type) else array for array in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def export_day(store, day: int, csv_path: str | None = None, parquet_path: str | None = None, progress=None,
               utc_offset_minutes: int = 0, stations: np.ndarray | None = None) -> int:
    """Write the day's journal to the paths given; returns the rows written.
    stations: only the entries of these station ids (None: every entry)."""
    assert csv_path or parquet_path
    csv_writer = parquet_writer = None
    rows = 0
    try:
        for chunk in iter_chunks(store, day, day, progress):
            if stations is not None:
                chunk = chunk[np.isin(chunk["station_id"], stations)]
            if len(chunk) == 0:
                continue
            batch = to_arrow(chunk, utc_offset_minutes)
            if parquet_path:
                if parquet_writer is None:
                    parquet_writer = pyarrow.parquet.ParquetWriter(parquet_path, batch.schema, compression="zstd")
                parquet_writer.write_batch(batch)
            if csv_path:
                plain = _plain(batch)
                if csv_writer is None:
                    csv_writer = pyarrow.csv.CSVWriter(csv_path, plain.schema)
                csv_writer.write_batch(plain)
            rows += len(chunk)
    finally:
        if parquet_writer is not None:
            parquet_writer.close()
        if csv_writer is not None:
            csv_writer.close()
    if rows == 0:
        # An empty day still gets files with the columns, so clients need no special case.
        empty = to_arrow(np.empty(0, dtype=JOURNAL_DTYPE), utc_offset_minutes)
        if parquet_path:
            pyarrow.parquet.write_table(pa.Table.from_batches([empty]), parquet_path)
        if csv_path:
            pyarrow.csv.write_csv(pa.Table.from_batches([_plain(empty)]), csv_path)
    return rows

