"""A card's transactions, newest first, read through the card_txns index.

Owns: reading one page of a card's transactions (the card's page in the
console, ReportService.ListCardTransactions) and filling the index in for a
data directory made before the kernel wrote it (data format 3:
`index_transactions`, run by `python -m core.migrations DIR`).
Used by: server/report_service.py, core/migrations.py.

The kernel (core/kernel.pyx, core/reference.py) adds (card_id, txn_id) to
card_txns in the batch that creates each transaction with a card, so the
index is exactly the transactions table's view by card, committed with it.
Without it a card's history is a scan of every transaction (seconds on a
directory of millions); with it, a page is one cursor walk.
"""

from collections.abc import Callable

from core import limits
from core.records import Txn, card_txn_key, decode, parse_card_txn_key, u64_key
from core.store import Store

# The migration's progress is told this often.
PROGRESS_EVERY_TXNS = 100_000
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


def index_transactions(txn, store: Store, progress: Callable[[int], None]):
    """Data format 3 (core/migrations.py): put every transaction of an older
    directory into card_txns, inside the migration's write transaction;
    progress(n) is told of each PROGRESS_EVERY_TXNS transactions read."""
    keys, read = [], 0
    for value in txn.cursor(db=store.txns).iternext(keys=False):
        record = decode(Txn, value)
        if record.card_id:
            keys.append(card_txn_key(record.card_id, record.txn_id))
        read += 1
        if read == PROGRESS_EVERY_TXNS:
            _put(txn, store, keys)
            progress(read)
            keys, read = [], 0
    _put(txn, store, keys)
    progress(read)


def _put(txn, store: Store, keys: list[bytes]):
    for key in sorted(keys):
        txn.put(key, b"", db=store.card_txns)
