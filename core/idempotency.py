"""Stored answers of terminal requests, found by (terminal, serial): the idempotency records.

Owns: the read side of the three databases that keep them (core/store.py):
  requests       seq -> Request        every request as answered, in the order first answered
  request_tails  terminal -> RequestTail   the terminal's newest requests, chained
  request_index  (terminal, serial >> 5) -> its (serial, seq) pairs   the terminal's older requests
Used by: core/reference.py (the rules that write them; core/kernel.pyx
mirrors both sides), core/ledger.py (Query, the tests), core/audit.py,
server/terminal_auth.py, core/admin/cards.py.

Why this layout (issue 20): the records of one commit are written where
the commit's other records are, at the end of one sequence, whatever the
history of each terminal. Keyed by (terminal, serial) as before, a commit
of 1,500 sales from 1,500 terminals wrote 1,500 leaf pages of a worn
directory (each terminal's last one) and their branch pages. Now a
commit writes its requests on a few pages of `requests`, the tails of its
terminals on the few pages of `request_tails` (one small record per
terminal), and `request_index` only once per REQUEST_TAIL_MAX requests of
a terminal: one or two records listing the tail's serials.

Finding (terminal, serial): a serial above the terminal's largest was
never answered (the usual case, a new sale: one small read); one within
the tail's serial range is looked for along the tail (at most
REQUEST_TAIL_MAX reads of recent records); anything else in the index.
"""

from collections.abc import Iterator

from core.records import Request, RequestTail, bucket_seq, decode, request_bucket_key, u32_key, u64_key


def tail_of(txn, store, terminal_id: int) -> RequestTail | None:
    raw = txn.get(u32_key(terminal_id), db=store.request_tails)
    return None if raw is None else decode(RequestTail, raw)


def request_at(txn, store, seq: int) -> Request:
    return decode(Request, txn.get(u64_key(seq), db=store.requests))


def tail_requests(txn, store, tail: RequestTail) -> Iterator[tuple[int, Request]]:
    """(seq, request) of the tail, newest first."""
    seq = tail.last_seq
    for _ in range(tail.tail_count):
        request = request_at(txn, store, seq)
        yield seq, request
        seq = request.prev_seq


def find(txn, store, terminal_id: int, serial: int) -> tuple[int, Request] | None:
    """The request (terminal, serial) and its seq, or None if never answered."""
    tail = tail_of(txn, store, terminal_id)
    if tail is None or serial > tail.max_serial:
        return None
    if tail.tail_count and tail.tail_min_serial <= serial <= tail.tail_max_serial:
        for seq, request in tail_requests(txn, store, tail):
            if request.serial == serial:
                return seq, request
    raw = txn.get(request_bucket_key(terminal_id, serial), db=store.request_index)
    seq = 0 if raw is None else bucket_seq(raw, serial)
    return None if seq == 0 else (seq, request_at(txn, store, seq))


def every_request(txn, store) -> Iterator[Request]:
    """Every stored request, in the order first answered."""
    if store.requests is None:
        return
    for _, value in txn.cursor(db=store.requests):
        yield decode(Request, value)
