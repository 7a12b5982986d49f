"""Where a card's open points lots are stored, for reading.

Owns: finding a card's open lots: the newest (the latest expires_day)
inline after its POINTS account, the older ones in point_lots under (card,
expires_day); lot_expiry lists them all by expiry. The kernels write them
(core/reference.py add_to_lot, take_from_lots; core/kernel.pyx the same).
Used by: core/current.py (reads as of now), core/loyalty (statements, the
jobs), core/audit.py.

Why inline (issue 20): every earning sale adds to its card's newest lot,
and the sale writes the card's POINTS account anyway; in point_lots, keyed
by card, the lot was a record of its own on a page of its own per card of a
commit. Older lots are written only when spent (oldest first) or moved
out when a later day's earning opens a newer lot (once per card and day).
"""

from collections.abc import Iterator

from core.records import Lot, account_key, decode, inline_lot, lot_key, u64_key
from core.results import AccountKind


def inline_of(txn, store, card_id: int) -> Lot | None:
    """The card's newest open lot (stored with its POINTS account), or None."""
    raw = txn.get(account_key(AccountKind.POINTS, card_id), db=store.accounts)
    return None if raw is None else inline_lot(raw)


def stored_lots(txn, db, card_id: int) -> list[Lot]:
    """The card's lots in `db` (point_lots or closed_lots), oldest first."""
    prefix = u64_key(card_id)
    found = []
    cursor = txn.cursor(db=db)
    if cursor.set_range(prefix):
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                break
            found.append(decode(Lot, value))
    return found


def open_lots(txn, store, card_id: int) -> list[Lot]:
    """Every open lot of the card, oldest (closest to expiry) first."""
    found = stored_lots(txn, store.point_lots, card_id)
    newest = inline_of(txn, store, card_id)
    return found if newest is None else found + [newest]


def open_lot(txn, store, card_id: int, expires_day: int) -> Lot | None:
    """The card's open lot expiring on expires_day, or None."""
    raw = txn.get(lot_key(card_id, expires_day), db=store.point_lots)
    if raw is not None:
        return decode(Lot, raw)
    newest = inline_of(txn, store, card_id)
    return newest if newest is not None and newest.expires_day == expires_day else None


def every_open_lot(txn, store) -> Iterator[Lot]:
    """Every open lot: those of point_lots, then the inline ones."""
    for _, value in txn.cursor(db=store.point_lots):
        yield decode(Lot, value)
    cursor = txn.cursor(db=store.accounts)
    prefix = bytes((AccountKind.POINTS,))
    if cursor.set_range(prefix):
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                break
            lot = inline_lot(value)
            if lot is not None:
                yield lot
