"""The ledger's layout for long histories (data format 3, issue 20), on both kernels.

- Requests (core/idempotency.py): every answer is found again by (terminal,
  serial), whether in its terminal's tail or in request_index, whatever the
  order of the serials; a tail of rising serials is listed with one or two
  index records.
- A card's newest open lot is stored with its POINTS account (core/lots.py):
  a later expiry moves it out, spending empties lots oldest first, a lot
  closed and earned again on the same expiry day opens again.
- A card's points statement is the chain of its POINTS account's journal
  entries (JournalEntry.debit_prev, credit_prev), newest first, truncated.
"""

import random

import pytest

from core import limits, lots
from core.audit import audit
from core.loyalty.statement import points_statement
from core.records import Account, JournalEntry, Lot, NO_LOT, REQUEST_INDEX_PAIR, account_key, decode, request_bucket_key
from core.results import AccountKind, OpKind, PlanFlag, ResultCode
from core.store import rows
from tests.ledger_driver import DAY_MS, Driver

CARD = 7
TAIL = limits.REQUEST_TAIL_MAX


@pytest.fixture
def books(ledger):
    driver = Driver(ledger)
    driver.open_card(CARD, personal=10**9)
    return driver


def sale(books, serial: int, terminal_id: int = 301):
    return books.request(OpKind.PAY, serial=serial, terminal_id=terminal_id, card_id=CARD, amount=100 + serial % 7,
                         plan_flags=PlanFlag.USE_PERSONAL, points_per_unit=100, earn_points=1)


def index_records(ledger, terminal_id: int) -> list[list[int]]:
    """The serials each request_index record of the terminal lists."""
    with ledger.store.env.begin() as txn:
        return [[serial for serial, _ in REQUEST_INDEX_PAIR.iter_unpack(value)]
                for key, value in rows(txn, ledger.store.request_index) if key[:4] == terminal_id.to_bytes(4, "big")]


def test_every_answer_is_found_again_in_the_tail_or_the_index(books):
    serials = list(range(1, 3 * TAIL + 6))
    first = {serial: books.one(sale(books, serial)) for serial in serials}
    # Every retry, indexed or still in the tail, gets its first answer.
    retried = books.apply(*(sale(books, serial) for serial in serials))
    assert [answer.txn_id for answer in retried] == [first[serial].txn_id for serial in serials]
    assert all(answer.replayed for answer in retried)
    # Rising serials: each run of 32 listed by one record, at most two per tail.
    listed = index_records(books.ledger, 301)
    assert sorted(serial for record in listed for serial in record) == serials[: 3 * TAIL]
    assert len(listed) <= 4 and all(record == sorted(record) for record in listed)
    assert audit(books.ledger.store).ok


def test_serials_in_any_order_below_and_above_the_largest(books):
    generator = random.Random(5)
    serials = generator.sample(range(1, 10_000), 2 * TAIL + 9)
    answers = {}
    for start in range(0, len(serials), 7):  # several serials to a batch
        batch = serials[start : start + 7]
        answers.update(zip(batch, books.apply(*(sale(books, serial) for serial in batch))))
    assert all(answer.code == ResultCode.APPROVED and not answer.replayed for answer in answers.values())
    # A serial never used, below the largest, is a new request, not a retry.
    unused = next(serial for serial in range(1, 10_000) if serial not in answers)
    assert not books.one(sale(books, unused)).replayed
    retried = books.apply(*(sale(books, serial) for serial in serials))
    assert [answer.txn_id for answer in retried] == [answers[serial].txn_id for serial in serials]
    for record in index_records(books.ledger, 301):
        assert record == sorted(record) and len({serial >> 5 for serial in record}) == 1
    assert audit(books.ledger.store).ok


def test_terminals_keep_their_own_requests(books):
    """The same serial from two terminals: two requests, each found."""
    for serial in range(1, TAIL + 3):
        books.apply(sale(books, serial, 301), sale(books, serial, 302))
    with books.ledger.store.env.begin() as txn:
        key = request_bucket_key(302, 1)
        assert txn.get(key, db=books.ledger.store.request_index) is not None
    assert books.ledger.idem(301, 5).result.txn_id != books.ledger.idem(302, 5).result.txn_id
    assert books.ledger.idem(303, 5) is None
    assert audit(books.ledger.store).ok


def stored_points(ledger) -> tuple[Lot | None, list[Lot]]:
    """(the lot stored with the card's POINTS account, those in point_lots)."""
    with ledger.store.env.begin() as txn:
        raw = txn.get(account_key(AccountKind.POINTS, CARD), db=ledger.store.accounts)
        stored = lots.stored_lots(txn, ledger.store.point_lots, CARD)
    assert len(raw) == Account.LAYOUT.size + Lot.LAYOUT.size
    inline = raw[Account.LAYOUT.size :]
    return (None if inline == NO_LOT else decode(Lot, inline)), stored


def earn(books, points: int, validity_days: int):
    return books.topup(CARD, AccountKind.POINTS, points, lot_validity_days=validity_days)


def test_the_newest_lot_is_stored_with_the_points_account(books):
    earn(books, 100, 30)
    earn(books, 50, 30)
    newest, older = stored_points(books.ledger)
    assert (newest.expires_day, newest.remaining, older) == (books.day + 30, 150, [])
    books.advance(DAY_MS)
    earn(books, 20, 30)  # a later expiry: the lot before moves out
    newest, older = stored_points(books.ledger)
    assert newest.expires_day == books.day + 30 and [lot.remaining for lot in older] == [150]
    earn(books, 5, 10)  # an earlier expiry goes to point_lots
    newest, older = stored_points(books.ledger)
    assert newest.remaining == 20 and [(lot.expires_day, lot.remaining) for lot in older] == [(books.day + 10, 5), (books.day + 29, 150)]
    # Spending takes the oldest first and the newest last.
    paid = books.pay(CARD, 17_000, plan_flags=PlanFlag.USE_POINTS, points_per_unit=1, earn_points=0)
    assert paid.points_used == 170
    newest, older = stored_points(books.ledger)
    assert (newest.remaining, older) == (5, [])
    books.pay(CARD, 500, plan_flags=PlanFlag.USE_POINTS, points_per_unit=1, earn_points=0)
    assert stored_points(books.ledger) == (None, [])
    # Earned again on the closed newest lot's expiry day: it opens again.
    books.topup(CARD, AccountKind.POINTS, 9, lot_validity_days=30)
    newest, _ = stored_points(books.ledger)
    assert (newest.original, newest.remaining) == (29, 9)
    assert audit(books.ledger.store).ok


def test_a_points_statement_is_the_chain_of_the_accounts_entries(books):
    for day in range(6):
        earn(books, 40 + day, 30)
        books.pay(CARD, 1_000 + day, plan_flags=PlanFlag.USE_PERSONAL | PlanFlag.USE_POINTS, points_per_unit=100, earn_points=3)
        books.advance(DAY_MS)
    with books.ledger.store.env.begin() as txn:
        journal = [decode(JournalEntry, value) for _, value in rows(txn, books.ledger.store.journal)]
    ours = [entry for entry in journal if (AccountKind.POINTS, CARD) in ((entry.debit_kind, entry.debit_owner), (entry.credit_kind, entry.credit_owner))]
    statement = points_statement(books.ledger.store, CARD, now_ms=books.now_ms)
    assert [line.seq for line in statement.lines] == [entry.seq for entry in ours]
    assert statement.lines[-1].balance_after == statement.balance == books.balances(CARD)[2]
    assert not statement.truncated
    last = points_statement(books.ledger.store, CARD, lines_max=4, now_ms=books.now_ms)
    assert last.truncated and last.lines == statement.lines[-4:]
