"""What stored records read as of now: the expiry time has brought and no write has applied yet.

Owns: the read side of two rules of the kernels (core/reference.py,
core/kernel.pyx), so that no read shows what time has already taken:
- a pre-authorization past its expires_ms is EXPIRED and holds nothing
  (the kernels expire it before the first operation of their next batch,
  or the sweep, EXPIRE_HOLDS, does);
- the points of lots whose expiry day has come are not spendable: what is
  left of them expires, never below what open holds need, oldest lot
  first, and a lot left empty is closed (the kernels write it when the
  card's points are next used, or the expiry job does).
Used by: core/ledger.py's read helpers (GetCard, Query) and
core/loyalty/statement.py (GetPoints, GetStatement, the statement CLI).
Calls nothing but the record layouts: the caller reads, in one LMDB read
transaction, what these functions look at (a card's lots: core/lots.py).
"""

import msgspec

from core import limits
from core.records import Account, Card, Lot, Txn, decode, parse_hold_expiry_key, u64_key
from core.results import OpKind, TxnState

# Due holds a read looks at, soonest first. Each batch expires as many before
# its first operation (reference.expire_due_holds), so more than this are due
# and unwritten only after the writer stood still (a restart) and until its
# first batches: a read is exact up to this many.
HOLDS_DUE_READ_MAX = limits.EXPIRE_SWEEP_HOLDS_MAX


def hold_expired(record: Txn, now_ms: int) -> bool:
    """A pre-authorization still HELD in the store whose time has come."""
    return record.kind == OpKind.PREAUTH and record.state == TxnState.HELD and now_ms >= record.expires_ms


def txn_as_of(record: Txn, now_ms: int) -> Txn:
    """The transaction as of now_ms: a hold past its time reads EXPIRED."""
    if hold_expired(record, now_ms):
        return msgspec.structs.replace(record, state=TxnState.EXPIRED)
    return record


def due_holds(txn, store, card_id: int, now_ms: int) -> list[Txn]:
    """The card's pre-authorizations past their time that no write has
    expired yet (looking at HOLDS_DUE_READ_MAX due holds at most)."""
    found = []
    cursor = txn.cursor(db=store.hold_expiry)
    if not cursor.first():
        return found
    for looked, key in enumerate(cursor.iternext(values=False)):
        expires_ms, txn_id = parse_hold_expiry_key(key)
        if expires_ms > now_ms or looked == HOLDS_DUE_READ_MAX:
            break
        record = decode(Txn, txn.get(u64_key(txn_id), db=store.txns))
        if record.card_id == card_id and hold_expired(record, now_ms):
            found.append(record)
    return found


class PointsNow(msgspec.Struct, frozen=True):
    """A card's points as of a day: the account and lots once what is due
    has expired, and how many points that is."""

    account: Account
    open_lots: tuple[Lot, ...]
    # Lots the expiry closes (left empty), oldest first.
    closed_lots: tuple[Lot, ...]
    expired: int


def points_as_of(account: Account, open_lots: list[Lot], today: int) -> PointsNow:
    """What reference.expire_lots would leave on business day `today`: the
    due lots' points expire, at most the free balance, oldest lot first."""
    due = sum(lot.remaining for lot in open_lots if lot.expires_day <= today)
    expired = max(0, min(due, account.balance - account.held))
    still_open, closed, left = [], [], expired
    for lot in open_lots:
        taken = min(lot.remaining, left)
        left -= taken
        lot = msgspec.structs.replace(lot, remaining=lot.remaining - taken)
        (closed if lot.remaining == 0 and taken else still_open).append(lot)
    account = msgspec.structs.replace(account, balance=account.balance - expired, debits=account.debits + expired)
    return PointsNow(account, tuple(still_open), tuple(closed), expired)


def card_as_of(card: Card, fleet: Account, personal: Account, holds: list[Txn]) -> tuple[Card, Account, Account]:
    """The card and its money accounts once `holds` (its due holds) are
    released, as reference.release_hold releases them: held funds free, the
    day's spend given back if it is still the hold's day."""
    for record in holds:
        fleet = msgspec.structs.replace(fleet, held=fleet.held - record.held_fleet)
        personal = msgspec.structs.replace(personal, held=personal.held - record.held_personal)
        if card.day == record.business_day:
            card = msgspec.structs.replace(card, day_spent=max(0, card.day_spent - record.amount))
    return card, fleet, personal
