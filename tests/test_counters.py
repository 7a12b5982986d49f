"""Counters linked to a sale (core/counters.py), on both kernels: a chain
applies whole or not at all, limits hold, and undoing the sale gives back
what it took."""

import msgspec
import pytest

from core.audit import audit
from core.counters import COUNTER_VALUE, CounterScope as S, CounterTake, chain, packet_claim_op, packet_share_key, PACKET_SHARE_VALUE
from core.records import Op
from core.results import AccountKind, Channel, OpKind, ResultCode as R
from tests.ledger_driver import Driver, replayed

CARD = 6200000000000001
OTHER_CARD = 6200000000000002
PROMOTION_ID = 77
PACKET_ID = 900


@pytest.fixture
def books(ledger):
    driver = Driver(ledger)
    yield driver
    report = audit(ledger.store)
    assert report.ok, report.problems


def stock(delta=1, ceiling=2, rule="stock of promotion 77"):
    return CounterTake(S.PROMOTION_STOCK, PROMOTION_ID, delta=delta, ceiling=ceiling, rule=rule)


def budget(delta, ceiling=1_000):
    return CounterTake(S.PROMOTION_BUDGET, PROMOTION_ID, delta=delta, ceiling=ceiling)


def test_a_sale_takes_its_counters_only_when_approved(books):
    books.open_card(CARD, personal=1_000)
    answers = books.apply(*chain([stock(), budget(100)], books.pay_op(CARD, 500)))
    assert [a.code for a in answers] == [R.APPROVED, R.APPROVED, R.APPROVED]
    assert [a.amount for a in answers[:2]] == [1, 100]
    # The card cannot pay 600 more: the sale is declined and takes nothing.
    answers = books.apply(*chain([stock(), budget(100)], books.pay_op(CARD, 600)))
    assert [a.code for a in answers] == [R.LINKED_FAILED, R.LINKED_FAILED, R.INSUFFICIENT_FUNDS]
    assert books.ledger.counter(S.PROMOTION_STOCK, PROMOTION_ID) == 1
    assert books.ledger.counter(S.PROMOTION_BUDGET, PROMOTION_ID) == 100


def test_a_counter_past_its_ceiling_refuses_the_whole_chain(books):
    books.open_card(CARD, personal=10_000)
    for _ in range(2):
        assert books.apply(*chain([stock()], books.pay_op(CARD, 100)))[-1].code == R.APPROVED
    answers = books.apply(*chain([budget(10), stock()], books.pay_op(CARD, 100)))
    assert [a.code for a in answers] == [R.LINKED_FAILED, R.COUNTER_LIMIT_REACHED, R.LINKED_FAILED]
    # Nothing moved: the sale was not applied and the budget not taken.
    assert books.balances(CARD)[1] == 9_800
    assert books.ledger.counter(S.PROMOTION_BUDGET, PROMOTION_ID) == 0
    # The refused sale was not remembered: with more stock it goes through.
    sale = answers[-1]
    assert sale.txn_id == 0


def test_takes_of_one_chain_on_one_counter_add_up(books):
    books.open_card(CARD, personal=10_000)
    answers = books.apply(*chain([budget(600), budget(600)], books.pay_op(CARD, 100)))
    assert answers[1].code == R.COUNTER_LIMIT_REACHED
    assert books.ledger.counter(S.PROMOTION_BUDGET, PROMOTION_ID) == 0


def test_a_retried_sale_does_not_take_its_counters_twice(books):
    books.open_card(CARD, personal=10_000)
    sale = books.pay_op(CARD, 100)
    first = books.apply(*chain([stock(ceiling=5)], sale))
    again = books.apply(*chain([stock(ceiling=5)], sale))
    assert replayed(first[-1]) == again[-1]
    assert books.ledger.counter(S.PROMOTION_STOCK, PROMOTION_ID) == 1


@pytest.mark.parametrize("undo", ["void", "reverse"])
def test_undoing_the_sale_gives_its_counters_back(books, undo):
    books.open_card(CARD, personal=10_000)
    sale_op = books.pay_op(CARD, 100)
    sale = books.apply(*chain([stock(), CounterTake(S.COUPON_USED, 5, ceiling=1)], sale_op))[-1]
    assert books.ledger.counter(S.COUPON_USED, 5) == 1
    result = books.void(sale.txn_id) if undo == "void" else books.reverse(sale_op.serial)
    assert result.code == R.APPROVED
    assert books.ledger.counter(S.COUPON_USED, 5) == 0
    assert books.ledger.counter(S.PROMOTION_STOCK, PROMOTION_ID) == 0
    # A second void finds nothing more to give back.
    books.void(sale.txn_id)
    assert books.ledger.counter(S.PROMOTION_STOCK, PROMOTION_ID) == 0


def test_a_channel_payment_that_is_aborted_gives_its_counters_back(books):
    books.open_card(CARD)
    pending = books.apply(*chain([stock()], books.pay_op(CARD, 100, channel=Channel.WECHAT_PAY)))[-1]
    assert pending.code == R.PENDING
    assert books.ledger.counter(S.PROMOTION_STOCK, PROMOTION_ID) == 1
    assert books.abort(pending.txn_id, R.CHANNEL_DECLINED).code == R.CHANNEL_DECLINED
    assert books.ledger.counter(S.PROMOTION_STOCK, PROMOTION_ID) == 0


def test_a_chance_is_drawn_only_when_there_is_one(books):
    chances = CounterTake(S.LOTTERY_CHANCES, 3, subject=CARD, delta=-1)
    prize = CounterTake(S.LOTTERY_PRIZE, 3, subject=1, delta=1, ceiling=1)
    answers = books.apply(*chain([chances, prize], None))
    assert [a.code for a in answers] == [R.COUNTER_EXHAUSTED, R.LINKED_FAILED]
    books.apply(*chain([CounterTake(S.LOTTERY_CHANCES, 3, subject=CARD, delta=2)], None))
    assert [a.code for a in books.apply(*chain([chances, prize], None))] == [R.APPROVED, R.APPROVED]
    # The prize is out of stock: the chance is kept.
    assert [a.code for a in books.apply(*chain([chances, prize], None))] == [R.LINKED_FAILED, R.COUNTER_LIMIT_REACHED]
    assert books.ledger.counter(S.LOTTERY_CHANCES, 3, CARD) == 1


def test_malformed_chains_are_invalid_and_apply_nothing(books):
    books.open_card(CARD, personal=1_000)
    sale = books.pay_op(CARD, 100)
    # A sale in the middle of a chain.
    ops = chain([stock()], None)
    answers = books.apply(msgspec.structs.replace(sale, link=1), *ops)
    assert [a.code for a in answers] == [R.INVALID_OPERATION, R.INVALID_OPERATION]
    # A chain cut off by the end of the batch, and a zero delta.
    cut = chain([stock(), stock()], None)
    cut[-1].link = 1
    assert [a.code for a in books.apply(*cut)] == [R.INVALID_OPERATION] * 2
    assert books.apply(*chain([stock(delta=0)], None))[0].code == R.INVALID_OPERATION
    assert books.balances(CARD)[1] == 1_000
    assert books.ledger.counter(S.PROMOTION_STOCK, PROMOTION_ID) == 0


def make_packet(books, shares):
    books.one(Op(kind=OpKind.OPEN_ACCOUNT, account_kind=AccountKind.PROMOTION, account_owner=PACKET_ID))
    books.one(Op(kind=OpKind.TRANSFER, account_kind=AccountKind.TOPUP_FUNDING, account_owner=1, credit_kind=AccountKind.PROMOTION, credit_owner=PACKET_ID, amount=sum(shares)))
    with books.ledger.store.env.begin(write=True) as txn:
        for index, amount in enumerate(shares):
            txn.put(packet_share_key(PACKET_ID, index), PACKET_SHARE_VALUE.pack(amount), db=books.ledger.store.packet_shares)


def claim(books, card, shares=2, serial=None):
    books.serial += 1
    return books.one(packet_claim_op(PACKET_ID, card, shares, 101, serial or books.serial, 1))


def test_red_packet_shares_are_claimed_in_order_once_per_card(books):
    books.open_card(CARD)
    books.open_card(OTHER_CARD)
    books.open_card(3)
    make_packet(books, [70, 30])
    first = claim(books, CARD)
    assert (first.code, first.amount, first.personal_balance) == (R.APPROVED, 70, 70)
    assert claim(books, CARD).code == R.PACKET_ALREADY_CLAIMED
    assert claim(books, OTHER_CARD).amount == 30
    assert claim(books, 3).code == R.PACKET_EMPTY
    assert books.ledger.account(AccountKind.PROMOTION, PACKET_ID).balance == 0


def test_a_claim_on_a_returned_packet_fails_for_lack_of_funds(books):
    books.open_card(CARD)
    make_packet(books, [70, 30])
    books.one(Op(kind=OpKind.TRANSFER, account_kind=AccountKind.PROMOTION, account_owner=PACKET_ID, credit_kind=AccountKind.TOPUP_FUNDING, credit_owner=1, amount=100))
    assert claim(books, CARD).code == R.INSUFFICIENT_FUNDS
    assert books.ledger.counter(S.PACKET_CLAIMS, PACKET_ID) == 0
