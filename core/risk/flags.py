"""Patterns flagged for review: many small sales in a short time, unusual hours.

Owns: watching approved sales for the patterns of rules.FlagRules, the
flags they raise (kept in the `risk_flags` database for staff), and listing
them. A flag never declines anything: it is a note for a person.
Used by: server/payments.py and server/promotion_service.py (`observe`
after an approved sale), server/risk_service.py (ListFlags).

The watch is per process and in memory: with --workers N each worker sees
its own share of a card's sales, so a burst split over workers may be
flagged later or not at all. Good enough for review; anything that must
hold is a velocity limit, counted by the kernel.
"""

import collections
import enum

import msgspec

from core.records import u64_key
from core.risk.rules import FlagRules

# Cards watched at once; the least recently seen is forgotten first.
WATCHED_CARDS_MAX = 100_000
LIST_LIMIT_MAX = 10_000
SEQ_KEY = b"flag_seq"


class FlagKind(enum.IntEnum):
    SMALL_SALES = 1
    UNUSUAL_HOUR = 2


class Flag(msgspec.Struct, frozen=True):
    seq: int
    kind: FlagKind
    card_id: int
    station_id: int
    at_ms: int
    detail: str


class FlagWatch:
    def __init__(self, utc_offset_minutes: int = 0):
        self.utc_offset_minutes = utc_offset_minutes
        self._small_sales: collections.OrderedDict[int, collections.deque] = collections.OrderedDict()

    def observe(self, rules: FlagRules, card_id: int, station_id: int, amount_minor: int, now_ms: int) -> list[Flag]:
        """Flags an approved sale raises (seq 0 until recorded)."""
        flags = []
        if card_id and rules.small_sales_count and amount_minor <= rules.small_sale_max_minor:
            times = self._small_sales.pop(card_id, None) or collections.deque()
            window_ms = rules.small_sales_window_s * 1000
            while times and times[0] <= now_ms - window_ms:
                times.popleft()
            times.append(now_ms)
            if len(times) >= rules.small_sales_count:
                flags.append(Flag(0, FlagKind.SMALL_SALES, card_id, station_id, now_ms,
                                  f"{len(times)} sales of at most {rules.small_sale_max_minor} within {rules.small_sales_window_s} s"))
                times.clear()
            self._small_sales[card_id] = times
            while len(self._small_sales) > WATCHED_CARDS_MAX:
                self._small_sales.popitem(last=False)
        hour = (now_ms + self.utc_offset_minutes * 60_000) // 3_600_000 % 24
        if in_quiet_hours(rules, hour):
            flags.append(Flag(0, FlagKind.UNUSUAL_HOUR, card_id, station_id, now_ms,
                              f"a sale at {hour:02d}h, within the quiet hours {rules.quiet_from_hour:02d}h .. {rules.quiet_to_hour:02d}h"))
        return flags


def in_quiet_hours(rules: FlagRules, hour: int) -> bool:
    start, end = rules.quiet_from_hour, rules.quiet_to_hour
    if start == end:
        return False
    if start < end:
        return start <= hour < end
    return hour >= start or hour < end


def record(txn, store, flags: list[Flag]) -> list[Flag]:
    """Store flags, numbered in order (in the caller's write transaction)."""
    saved = []
    raw = txn.get(SEQ_KEY, db=store.risk_config)
    seq = 0 if raw is None else int.from_bytes(raw, "big")
    for flag in flags:
        seq += 1
        flag = msgspec.structs.replace(flag, seq=seq)
        txn.put(u64_key(seq), msgspec.msgpack.encode(flag), db=store.risk_flags)
        saved.append(flag)
    txn.put(SEQ_KEY, seq.to_bytes(8, "big"), db=store.risk_config)
    return saved


def list_flags(store, after_seq: int = 0, card_id: int = 0, limit: int = LIST_LIMIT_MAX, seen=None) -> list[Flag]:
    """Flags after after_seq, of one card or all; seen(txn, card_id): whether
    the caller sees the card (a flag is its card's organisation's)."""
    found = []
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.risk_flags)
        if not cursor.set_range(u64_key(after_seq + 1)):
            return found
        for _, raw in cursor.iternext():
            flag = msgspec.msgpack.decode(raw, type=Flag)
            if seen is not None and not seen(txn, flag.card_id):
                continue
            if not card_id or flag.card_id == card_id:
                found.append(flag)
                if len(found) >= limit:
                    break
    return found

