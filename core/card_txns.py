"""A card's transactions, newest first, read through the card_txns index.

Owns: reading one page of a card's transactions (the card's page in the
console, ReportService.ListCardTransactions) and filling the index in for a
data directory made before the kernel wrote it (`backfill`).
Used by: server/report_service.py, server/app.py (the backfill at start).

The kernel (core/kernel.pyx, core/reference.py) adds (card_id, txn_id) to
card_txns in the batch that creates each transaction with a card, so the
index is exactly the transactions table's view by card, committed with it.
Without it a card's history is a scan of every transaction (seconds on a
directory of millions); with it, a page is one cursor walk.
"""

import logging
from collections.abc import Callable

from core import limits
from core.records import Txn, card_txn_key, decode, parse_card_txn_key, u64_key
from core.store import Store

log = logging.getLogger("tally.card_txns")

# meta: the first transaction id the backfill has not looked at yet; its
# absence on a directory with transactions means it never ran.
META_BACKFILL_NEXT = b"card_txns_backfill_next"
# meta: set once every transaction made before the index is in it.
META_BACKFILL_DONE = b"card_txns_backfill_done"
# Transactions indexed per write transaction of the backfill: small enough
# that the writer thread is never held long.
BACKFILL_CHUNK_TXNS = 20_000
# A page of the card's page, and the most one request may ask.
PAGE_TXNS_DEFAULT = 50
PAGE_TXNS_MAX = 1000


def page(txn, store: Store, card_id: int, before_txn_id: int, limit: int) -> tuple[list[Txn], bool]:
    """Up to `limit` of the card's transactions with ids below before_txn_id
    (0: from the newest), newest first, and whether older ones remain."""
    assert 0 < limit <= PAGE_TXNS_MAX
    cursor = txn.cursor(db=store.card_txns)
    if before_txn_id:
        upper = card_txn_key(card_id, before_txn_id)
    elif card_id < limits.CARD_ID_MAX:
        upper = card_txn_key(card_id + 1, 0)
    else:
        upper = None
    # On the first key at or past the upper bound (none: the end), then back.
    positioned = upper is not None and cursor.set_range(upper)
    moved = cursor.prev() if positioned else cursor.last()
    found: list[Txn] = []
    while moved:
        owner, txn_id = parse_card_txn_key(cursor.key())
        if owner != card_id:
            return found, False
        if len(found) == limit:
            return found, True
        value = txn.get(u64_key(txn_id), db=store.txns)
        if value is not None:
            found.append(decode(Txn, value))
        moved = cursor.prev()
    return found, False


def _meta(txn, store: Store, name: bytes) -> int | None:
    value = txn.get(name, db=store.meta)
    return None if value is None else int.from_bytes(value, "little")


def mark_complete(txn, store: Store):
    """Record that every transaction is in the index: for a directory whose
    every transaction a kernel that writes card_txns made (a new one, a
    fresh `bench seed`)."""
    txn.put(META_BACKFILL_DONE, (1).to_bytes(8, "little"), db=store.meta)


def backfill_needed(store: Store) -> bool:
    with store.env.begin() as txn:
        return not _meta(txn, store, META_BACKFILL_DONE)


def _index_chunk(txn, store: Store) -> bool:
    """Index the next BACKFILL_CHUNK_TXNS transactions after the mark; True
    once the end is reached (then the index is marked complete)."""
    start = _meta(txn, store, META_BACKFILL_NEXT) or 1
    cursor = txn.cursor(db=store.txns)
    done, next_id, keys = True, start, []
    if cursor.set_range(u64_key(start)):
        for value in cursor.iternext(keys=False):
            if len(keys) == BACKFILL_CHUNK_TXNS:
                done = False
                break
            record = decode(Txn, value)
            next_id = record.txn_id + 1
            if record.card_id:
                keys.append(card_txn_key(record.card_id, record.txn_id))
    for key in sorted(keys):
        txn.put(key, b"", db=store.card_txns)
    txn.put(META_BACKFILL_NEXT, next_id.to_bytes(8, "little"), db=store.meta)
    if done:
        mark_complete(txn, store)
    return done


async def backfill(store: Store, write: Callable) -> int:
    """Index every transaction of a directory made before card_txns existed,
    chunk by chunk through the server's one write path (`write(change)`,
    the group commit's); resumable, and nothing to do once done (a new
    directory is marked done by its first chunk, which finds nothing).
    Returns the chunks written."""
    if not backfill_needed(store):
        return 0
    with store.env.begin() as txn:
        total = txn.stat(store.txns)["entries"]
    if total:
        log.info("indexing %d transactions by card, once (a directory made before card_txns)", total)
    chunks = 1
    while not await write(lambda txn: _index_chunk(txn, store)):
        chunks += 1
        if chunks % 50 == 0:
            log.info("card_txns: %d of %d transactions indexed", chunks * BACKFILL_CHUNK_TXNS, total)
    if total:
        log.info("card_txns: every transaction indexed")
    return chunks
