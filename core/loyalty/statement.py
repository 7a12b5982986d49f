"""A card's points statement: every lot, earning, spending and expiry, with dates.

Owns: reading a card's points history (the journal entries of its POINTS
account, a chain from the account's last_seq back: JournalEntry.debit_prev
and credit_prev) and its lots, open and closed, as of a moment: points of
lots whose day has come are expired in the statement even before a write has
recorded it (core/current.py). Such an expiry is the statement's last line,
with seq 0 and txn_id 0 (it has no journal entry yet).
Used by: server/loyalty_service.py (GetPoints, GetStatement), core/admin,
`python -m core.loyalty statement`.
"""

import time

import msgspec

from core import current, lots
from core.ledger import business_day
from core.records import Account, JournalEntry, Lot, account_key, decode, u64_key
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
    # Points as of the statement's moment; held: what payments waiting for
    # their channel hold of them.
    balance: int
    held: int
    open_lots: tuple[Lot, ...]
    closed_lots: tuple[Lot, ...]
    lines: tuple[StatementLine, ...]
    truncated: bool


def points_statement(store, card_id: int, lines_max: int = STATEMENT_LINES_MAX, now_ms: int | None = None,
                     utc_offset_minutes: int = 0) -> PointsStatement:
    """Oldest line first; at most lines_max lines (the most recent ones).
    As of now_ms (default: the clock) on the network's business day."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    with store.env.begin() as txn:
        raw = txn.get(account_key(AccountKind.POINTS, card_id), db=store.accounts)
        account = decode(Account, raw) if raw is not None else Account(kind=AccountKind.POINTS, owner=card_id)
        # Newest first: one line more than shown tells whether there are more.
        entries = list(points_entries(txn, store, card_id, account.last_seq, lines_max + 1))
        open_lots = lots.open_lots(txn, store, card_id)
        closed_lots = lots.stored_lots(txn, store.closed_lots, card_id)
    lines = []
    balance = account.balance
    for entry in entries:
        incoming = entry.credit_kind == AccountKind.POINTS and entry.credit_owner == card_id
        points = entry.amount if incoming else -entry.amount
        lines.append(StatementLine(entry.seq, entry.business_day, entry.created_ms, entry.txn_id, Movement(entry.movement).name, points, balance))
        balance -= points
    more = len(entries) > lines_max
    lines.reverse()
    balance = account.balance
    today = business_day(now_ms, utc_offset_minutes)
    now = current.points_as_of(account, open_lots, today)
    if now.expired:
        balance -= now.expired
        lines.append(StatementLine(0, today, now_ms, 0, Movement.EXPIRY.name, -now.expired, balance))
    closed = tuple(sorted((*closed_lots, *now.closed_lots), key=lambda lot: lot.expires_day))
    truncated = more or len(lines) > lines_max
    return PointsStatement(card_id, balance, account.held, now.open_lots, closed, tuple(lines[len(lines) - lines_max :] if lines_max else ()), truncated)


def points_entries(txn, store, card_id: int, last_seq: int, entries_max: int):
    """The journal entries of the card's POINTS account, newest first, at
    most entries_max: each names the one before it on the account."""
    seq = last_seq
    for _ in range(entries_max):
        if seq == 0:
            return
        entry = decode(JournalEntry, txn.get(u64_key(seq), db=store.journal))
        yield entry
        seq = entry.before_on(AccountKind.POINTS, card_id)
