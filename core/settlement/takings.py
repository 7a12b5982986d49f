"""Today's takings, kept up to date as sales commit.

Owns: RunningTakings, the clearing sums (core/settlement/clearing.py) of
one business day, extended at each look by the journal entries committed
since the last one, so that a dashboard asking every few seconds reads only
what is new (the first look reads the day once, like clear_day).
Used by: server/report_service.py (ReportService.GetTakings).

Journal sequence numbers only grow, and a day's entries never change once
written, so the sums of the entries up to a sequence number stay true; the
first look starts a day early because several writer processes may
interleave batches near midnight (as core/settlement/journal.py does).
"""

import threading

import numpy as np

from core.audit import JOURNAL_DTYPE
from core.records import parse_u64_key, u64_key
from core.settlement.clearing import ClearingLine, group_sums, lines_of
from core.settlement.journal import CHUNK_ENTRIES, _first_seq_from_day
from core.store import Store


class RunningTakings:
    """The clearing sums of `day`, as of journal entry next_seq - 1."""

    def __init__(self, day: int):
        self.day = day
        self.next_seq = 0  # 0: not read yet
        self.sums: dict[tuple[int, int, int], tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def lines(self, store: Store, stations=None) -> tuple[tuple[ClearingLine, ...], int]:
        """The day's lines including every entry committed before the call
        (only those of `stations`, a set, if given), and the journal entries
        read in all (the last sequence number)."""
        with self._lock:
            self._read_new(store)
            sums = self.sums if stations is None else {key: value for key, value in self.sums.items() if key[0] in stations}
            return lines_of(sums), self.next_seq - 1

    def _read_new(self, store: Store):
        # Values as bytes, not buffers: py-lmdb makes a bytes object several
        # times faster than a buffer (0.5 against 3.4 us an entry, measured).
        with store.env.begin() as txn:
            start = self.next_seq or _first_seq_from_day(txn, store, self.day - 1)
            cursor = txn.cursor(db=store.journal)
            if not cursor.set_range(u64_key(start)):
                self.next_seq = max(start, 1)
                return
            values = []
            for key, value in cursor.iternext():
                values.append(value)
                last_key = key
                if len(values) == CHUNK_ENTRIES:
                    self._add(values)
                    values = []
            if values:
                self._add(values)
            self.next_seq = parse_u64_key(bytes(last_key)) + 1

    def _add(self, values: list):
        chunk = np.frombuffer(b"".join(values), dtype=JOURNAL_DTYPE)
        for key, (money_in, money_out, count) in group_sums(chunk[chunk["business_day"] == self.day]).items():
            before = self.sums.get(key, (0, 0, 0))
            self.sums[key] = (before[0] + money_in, before[1] + money_out, before[2] + count)
