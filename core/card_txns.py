"""A card's transactions, newest first, read from its accounts' journal chains.

Owns: reading one page of a card's transactions (the card's page in the
console, ReportService.ListCardTransactions).
Used by: server/report_service.py.

No index is written for it (issue 20: a sale writes no record a read can
derive). Each of the card's accounts (FLEET, PERSONAL, POINTS) names its
newest journal entry and each entry the one before it on either account
(core/records.py JournalEntry), so the card's transactions are the
transactions of those three chains, walked together newest entry first.

What the page lists, then: every transaction that moved the card's money or
points. A sale still waiting for its channel or a pre-authorization whose
hold is open has posted nothing yet: it appears once it posts
(ReportService.ListOpenHolds lists the open holds meanwhile).

Order: by transaction id, newest first, so that before_txn_id pages exactly.
A transaction may post after newer ones (a hold captured later, a channel
sale completed later), so the walk goes on past the page's last id until
the entries it reads were posted before that transaction was created: every
transaction not met by then was created earlier, with a smaller id.
"""

import heapq

from core.records import Account, JournalEntry, Txn, account_key, decode, u64_key
from core.results import AccountKind
from core.store import Store

# A page of the card's page, and the most one request may ask.
PAGE_TXNS_DEFAULT = 50
PAGE_TXNS_MAX = 1000
CARD_ACCOUNT_KINDS = (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS)


def page(txn, store: Store, card_id: int, before_txn_id: int, limit: int) -> tuple[list[Txn], bool]:
    """Up to `limit` of the card's transactions with ids below before_txn_id
    (0: from the newest), newest first, and whether older ones remain."""
    assert 0 < limit <= PAGE_TXNS_MAX
    found: dict[int, Txn] = {}
    # The (limit + 1)-th newest found so far decides when the walk may stop.
    kept: list[int] = []  # a min-heap of the limit + 1 largest ids found
    for entry in _entries_newest_first(txn, store, card_id):
        if len(kept) > limit and entry.created_ms < found[kept[0]].created_ms:
            break
        if entry.txn_id in found or (before_txn_id and entry.txn_id >= before_txn_id):
            continue
        value = txn.get(u64_key(entry.txn_id), db=store.txns)
        if value is None:
            continue
        found[entry.txn_id] = decode(Txn, value)
        if len(kept) <= limit:
            heapq.heappush(kept, entry.txn_id)
        elif entry.txn_id > kept[0]:
            heapq.heapreplace(kept, entry.txn_id)
    newest = sorted(kept, reverse=True)
    return [found[txn_id] for txn_id in newest[:limit]], len(newest) > limit


def _entries_newest_first(txn, store: Store, card_id: int):
    """The journal entries of the card's accounts, newest first (an entry
    between two of its accounts once)."""
    heads = []
    for kind in CARD_ACCOUNT_KINDS:
        raw = txn.get(account_key(kind, card_id), db=store.accounts)
        if raw is not None:
            last_seq = decode(Account, raw).last_seq
            if last_seq:
                heads.append((-last_seq, kind))
    heapq.heapify(heads)
    previous_seq = 0
    while heads:
        negative_seq, kind = heads[0]
        seq = -negative_seq
        entry = decode(JournalEntry, txn.get(u64_key(seq), db=store.journal))
        before = entry.before_on(kind, card_id)
        if before:
            heapq.heapreplace(heads, (-before, kind))
        else:
            heapq.heappop(heads)
        if seq != previous_seq:
            yield entry
        previous_seq = seq
