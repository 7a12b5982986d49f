"""A card's points statement: every lot, earning, spending and expiry, with dates.

Owns: reading a card's points history (the points_history index over the
journal) and its lots, open and closed.
Used by: server/loyalty_service.py (GetStatement), `python -m core.loyalty statement`.
"""

import msgspec

from core.records import JournalEntry, Lot, decode, parse_points_history_key, u64_key
from core.results import AccountKind, Movement

STATEMENT_LINES_MAX = 10_000


class StatementLine(msgspec.Struct, frozen=True):
    seq: int
    business_day: int
    created_ms: int
    txn_id: int
    movement: str
    # Points in (+) or out (-) of the card's points account.
    points: int
    balance_after: int


class PointsStatement(msgspec.Struct, frozen=True):
    card_id: int
    balance: int
    open_lots: tuple[Lot, ...]
    closed_lots: tuple[Lot, ...]
    lines: tuple[StatementLine, ...]
    truncated: bool


def _lots(txn, db, card_id: int) -> list[Lot]:
    prefix = u64_key(card_id)
    found = []
    cursor = txn.cursor(db=db)
    if cursor.set_range(prefix):
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                break
            found.append(decode(Lot, value))
    return found


def points_statement(store, card_id: int, lines_max: int = STATEMENT_LINES_MAX) -> PointsStatement:
    """Oldest line first; at most lines_max lines (the most recent ones)."""
    prefix = u64_key(card_id)
    entries = []
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.points_history)
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix):
                    break
                _, seq = parse_points_history_key(key)
                entries.append(decode(JournalEntry, txn.get(u64_key(seq), db=store.journal)))
        open_lots = _lots(txn, store.point_lots, card_id)
        closed_lots = _lots(txn, store.closed_lots, card_id)
    lines = []
    balance = 0
    for entry in entries:
        incoming = entry.credit_kind == AccountKind.POINTS and entry.credit_owner == card_id
        points = entry.amount if incoming else -entry.amount
        balance += points
        lines.append(StatementLine(entry.seq, entry.business_day, entry.created_ms, entry.txn_id, Movement(entry.movement).name, points, balance))
    truncated = len(lines) > lines_max
    return PointsStatement(card_id, balance, tuple(open_lots), tuple(closed_lots), tuple(lines[-lines_max:]), truncated)
