"""The Cython kernel keeps records from one batch to the next (core/kernel.pyx,
Kernel): it must never answer from a record that another writer changed or
that an aborted batch left behind."""

import pytest

from core.ledger import Ledger, encode_ops
from core.reference import ReferenceKernel
from core.results import AccountKind, OpKind, PlanFlag, ResultCode
from tests.conftest import open_ledger
from tests.ledger_driver import Driver

CARD = 5


class Aborted(Exception):
    pass


def other_writer(ledger: Ledger) -> Driver:
    """A second writer on the same files, as another server process would be
    (its serials far from the first driver's, so that none is a retry)."""
    other = Driver(Ledger(ledger.store, ReferenceKernel()))
    other.serial = 1_000_000
    return other


def pay_personal(driver: Driver, amount: int):
    return driver.pay(CARD, amount, plan_flags=PlanFlag.USE_PERSONAL)


def abort_batch(ledger: Ledger, driver: Driver, ops) -> int:
    """Apply `ops` through the kernel in a write transaction that aborts;
    the transaction's id."""
    with pytest.raises(Aborted):
        with ledger.store.env.begin(write=True) as txn:
            ledger.kernel.apply_batch(txn, ledger.store, encode_ops(ops), driver.now_ms, driver.day)
            txn_id = txn.id()
            raise Aborted()
    return txn_id


def test_a_change_by_another_writer_is_seen(cython_ledger):
    driver = Driver(cython_ledger)
    driver.open_card(CARD, personal=1_000)
    assert pay_personal(driver, 100).code == ResultCode.APPROVED  # the card's records are now kept
    other_writer(cython_ledger).topup(CARD, AccountKind.PERSONAL, 500)
    paid = pay_personal(driver, 1_400)
    assert paid.code == ResultCode.APPROVED
    assert paid.personal_balance == 0


def test_points_lots_changed_by_another_writer_are_seen(cython_ledger):
    driver = Driver(cython_ledger)
    driver.open_card(CARD, personal=10_000, points=100)
    other = other_writer(cython_ledger)
    other.advance(86_400_000)
    other.topup(CARD, AccountKind.POINTS, 300)  # a second lot, a day later
    driver.advance(86_400_000)
    result = driver.pay(CARD, 400, plan_flags=PlanFlag.USE_POINTS, points_per_unit=100)
    assert result.code == ResultCode.APPROVED
    assert result.points_used == 400
    assert cython_ledger.account(AccountKind.POINTS, CARD).balance == 0


def test_an_aborted_batch_leaves_nothing_behind(cython_ledger):
    driver = Driver(cython_ledger)
    driver.open_card(CARD, personal=1_000)
    abort_batch(cython_ledger, driver, [driver.pay_op(CARD, 600, plan_flags=PlanFlag.USE_PERSONAL)])
    paid = pay_personal(driver, 700)
    assert paid.code == ResultCode.APPROVED
    assert paid.personal_balance == 300


def test_an_aborted_batch_then_another_writer_leaves_nothing_behind(cython_ledger):
    """The other writer's commit takes the number the aborted transaction had:
    the kernel must not take the next number as proof that nothing changed."""
    driver = Driver(cython_ledger)
    driver.open_card(CARD, personal=1_000)
    abort_batch(cython_ledger, driver, [driver.pay_op(CARD, 600, plan_flags=PlanFlag.USE_PERSONAL)])
    other_writer(cython_ledger).topup(CARD, AccountKind.PERSONAL, 1)
    paid = pay_personal(driver, 1_001)
    assert paid.code == ResultCode.APPROVED
    assert paid.personal_balance == 0


def test_redeeming_sees_gift_stock_changed_by_another_writer(cython_ledger):
    driver = Driver(cython_ledger)
    driver.open_card(CARD, personal=10_000, points=10_000)
    driver.one(driver.request(OpKind.GIFT_SET, item_id=1, amount=10, bonus_points=0))
    driver.one(driver.request(OpKind.GIFT_STOCK, item_id=1, amount=1))
    other = other_writer(cython_ledger)
    other.one(other.request(OpKind.GIFT_STOCK, item_id=1, amount=-1, serial=0))
    assert driver.one(driver.request(OpKind.REDEEM, card_id=CARD, item_id=1, amount=1)).code == ResultCode.GIFT_OUT_OF_STOCK


def test_a_late_confirmation_of_an_earlier_batch_is_ignored(cython_ledger):
    """The admin service runs the server's kernel from another thread: the
    ledger's confirmation of its own batch may come after the admin's batch
    ran (and aborted); it must not vouch for the admin's records."""
    driver = Driver(cython_ledger)
    driver.open_card(CARD, personal=1_000)
    with cython_ledger.store.env.begin(write=True) as txn:
        cython_ledger.kernel.apply_batch(txn, cython_ledger.store, encode_ops([driver.pay_op(CARD, 100, plan_flags=PlanFlag.USE_PERSONAL)]),
                                         driver.now_ms, driver.day)
        committed_txn_id = txn.id()
    aborted_txn_id = abort_batch(cython_ledger, driver, [driver.pay_op(CARD, 600, plan_flags=PlanFlag.USE_PERSONAL)])
    assert aborted_txn_id == committed_txn_id + 1
    cython_ledger.kernel.batch_committed(committed_txn_id)
    other_writer(cython_ledger).topup(CARD, AccountKind.PERSONAL, 1)  # takes the aborted transaction's number
    paid = pay_personal(driver, 901)
    assert paid.code == ResultCode.APPROVED
    assert paid.personal_balance == 0


def test_a_request_answered_by_another_writer_is_replayed(cython_ledger):
    """The kernel keeps terminals' request tails between batches: one that
    another writer added to must be read again."""
    driver = Driver(cython_ledger)
    driver.open_card(CARD, personal=1_000)
    assert pay_personal(driver, 100).code == ResultCode.APPROVED  # terminal 101's tail is now kept
    other = other_writer(cython_ledger)
    op = other.pay_op(CARD, 200, plan_flags=PlanFlag.USE_PERSONAL)
    first = other.one(op)
    retried = driver.one(op)
    assert retried.replayed and retried.txn_id == first.txn_id
    assert cython_ledger.account(AccountKind.PERSONAL, CARD).balance == 700


def cards_sharing_a_memo_slot(count: int) -> list[int]:
    """Card ids the kernel's card memo puts in one slot (the first `count`)."""
    from core.kernel import card_memo_slot_of

    wanted = card_memo_slot_of(CARD)
    return [card for card in range(1, 10_000_000) if card_memo_slot_of(card) == wanted][:count]


def loyalty_round(driver: Driver, cards: list[int]) -> list:
    """A batch that moves every card's money, points and lots, interleaved."""
    ops = []
    for card in cards:
        ops.append(driver.pay_op(card, 300, plan_flags=PlanFlag.USE_PERSONAL, earn_points=40, points_per_unit=100))
        ops.append(driver.pay_op(card, 500, plan_flags=PlanFlag.USE_PERSONAL | PlanFlag.USE_POINTS, points_max=30, points_per_unit=100))
        ops.append(driver.request(OpKind.REDEEM, card_id=card, item_id=1, amount=1))
    return driver.apply(*ops)


def run_loyalty_rounds(ledger: Ledger, cards: list[int]) -> tuple[list, dict]:
    """Sales that earn, sales that spend and redemptions of every card, over
    several batches and days; the answers and the books after them."""
    driver = Driver(ledger)
    driver.one(driver.request(OpKind.GIFT_SET, item_id=1, amount=20, bonus_points=50))
    driver.one(driver.request(OpKind.GIFT_STOCK, item_id=1, amount=100))
    for card in cards:
        driver.open_card(card, personal=100_000, points=1_000)
    answers = []
    for _ in range(4):
        answers += loyalty_round(driver, cards)
        answers += loyalty_round(driver, cards[::-1])
        driver.advance(200 * 86_400_000)  # lots expire along the way
    with ledger.store.env.begin() as txn:
        books = {name: list(txn.cursor(db=ledger.store.dbs[name])) for name in ("accounts", "cards", "journal", "point_lots", "closed_lots")}
    return answers, books


def test_cards_sharing_a_memo_slot_agree_with_the_reference(tmp_path):
    """The kernel remembers cards from batch to batch in a direct-mapped
    memo; cards that share a slot evict each other within and across
    batches and must end with the reference's answers and books."""
    cards = cards_sharing_a_memo_slot(3)
    assert len(cards) == 3
    ledgers = [open_ledger(str(tmp_path / kernel), kernel) for kernel in ("cython", "reference")]
    try:
        (answers, books), (expected_answers, expected_books) = (run_loyalty_rounds(ledger, cards) for ledger in ledgers)
    finally:
        for ledger in ledgers:
            ledger.store.close()
    assert sum(answer.code == ResultCode.APPROVED for answer in answers) > len(answers) // 2
    assert answers == expected_answers
    assert books == expected_books
