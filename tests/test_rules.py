"""The ledger's rules, each as a terminal would meet it, on both kernels."""

import pytest

from core import limits
from core.audit import audit
from core.records import RESULT_FINAL, Account, Op, account_key, encode
from core.results import AccountKind, CardStatus, Channel, Movement, OpKind, PlanFlag, ResultCode as R, TxnFlag, TxnState, Unit
from tests.ledger_driver import DAY_MS, Driver, replayed

CARD = 6200000000000001
OTHER_CARD = 6200000000000002


@pytest.fixture
def books(ledger):
    driver = Driver(ledger)
    yield driver
    report = audit(ledger.store)
    assert report.ok, report.problems


def test_mixed_payment_takes_fleet_then_personal_then_points_then_channel(books):
    books.open_card(CARD, fleet=5_000, personal=3_000, points=1_000)
    result = books.pay(CARD, 9_500, channel=Channel.WECHAT_PAY)
    assert result.code == R.PENDING
    assert (result.fleet, result.personal, result.points_cash, result.points_used, result.channel_amount) == (5_000, 3_000, 1_000, 1_000, 500)
    assert books.held(CARD) == (5_000, 3_000, 1_000)
    final = books.capture(result.txn_id)
    assert final.code == R.APPROVED
    # Earned on what was not paid with points: (9,500 - 1,000) / 100 = 85.
    assert final.points_earned == 85
    assert books.balances(CARD) == (0, 0, 85)
    assert books.held(CARD) == (0, 0, 0)


def test_each_source_gives_only_what_it_has_up_to_the_rest(books):
    books.open_card(CARD, fleet=300, personal=10_000)
    result = books.pay(CARD, 1_000)
    assert result.code == R.APPROVED
    assert (result.fleet, result.personal, result.points_cash, result.channel_amount) == (300, 700, 0, 0)
    assert (result.fleet_balance, result.personal_balance) == (0, 9_300)


def test_points_as_cash_follow_the_rate_and_round_in_the_networks_favour(books):
    books.open_card(CARD, points=1_001)
    # 1,000 points per unit: 1,001 points buy 100 minor units (rounded down).
    result = books.pay(CARD, 100, plan_flags=PlanFlag.USE_POINTS, points_per_unit=1_000)
    assert (result.code, result.points_cash, result.points_used) == (R.APPROVED, 100, 1_000)
    # 33 minor units at 1,000 points per unit cost 330 points, not 329.
    books.topup(CARD, AccountKind.POINTS, 1_000)
    result = books.pay(CARD, 33, plan_flags=PlanFlag.USE_POINTS, points_per_unit=1_000)
    assert (result.code, result.points_used) == (R.APPROVED, 330)


def test_points_max_caps_points_spent(books):
    books.open_card(CARD, personal=2_000, points=5_000)
    result = books.pay(CARD, 3_000, plan_flags=PlanFlag.USE_POINTS | PlanFlag.USE_PERSONAL, points_max=200, channel=Channel.BANK_CARD)
    assert (result.code, result.personal, result.points_used, result.channel_amount) == (R.PENDING, 2_000, 200, 800)


def test_insufficient_funds_without_channel_moves_nothing(books):
    books.open_card(CARD, fleet=100, personal=100)
    before = books.balances(CARD)
    result = books.pay(CARD, 201)
    assert (result.code, result.txn_id) == (R.INSUFFICIENT_FUNDS, 0)
    assert books.balances(CARD) == before


def test_payment_by_channel_alone_needs_no_card(books):
    result = books.pay(0, 1_234, plan_flags=0, channel=Channel.ALIPAY)
    assert (result.code, result.channel_amount) == (R.PENDING, 1_234)
    final = books.capture(result.txn_id)
    assert (final.code, final.channel_amount, final.points_earned) == (R.APPROVED, 1_234, 0)


def test_channel_decline_releases_the_hold_and_is_the_stored_answer(books):
    books.open_card(CARD, fleet=100)
    op = books.pay_op(CARD, 500, channel=Channel.BANK_CARD)
    pending = books.one(op)
    final = books.abort(pending.txn_id, R.CHANNEL_DECLINED)
    assert final.code == R.CHANNEL_DECLINED
    assert books.held(CARD) == (0, 0, 0) and books.balances(CARD) == (100, 0, 0)
    # A retry of the same request gets the same final answer, marked replayed.
    assert books.one(op) == replayed(final)
    assert books.ledger.txn(pending.txn_id).state == TxnState.ABORTED


def test_per_transaction_and_per_day_limits(books):
    books.open_card(CARD, personal=100_000, limit_per_txn=5_000, limit_per_day=8_000)
    assert books.pay(CARD, 5_001).code == R.LIMIT_PER_TRANSACTION_EXCEEDED
    assert books.pay(CARD, 5_000).code == R.APPROVED
    assert books.pay(CARD, 3_001).code == R.LIMIT_PER_DAY_EXCEEDED
    assert books.pay(CARD, 3_000).code == R.APPROVED
    books.advance(DAY_MS)
    assert books.pay(CARD, 5_000).code == R.APPROVED


def test_a_void_gives_back_the_days_limit(books):
    books.open_card(CARD, personal=100_000, limit_per_day=5_000)
    sale = books.pay(CARD, 5_000)
    assert books.pay(CARD, 1).code == R.LIMIT_PER_DAY_EXCEEDED
    assert books.void(sale.txn_id).code == R.APPROVED
    assert books.pay(CARD, 5_000).code == R.APPROVED


@pytest.mark.parametrize(
    "status, code",
    [(CardStatus.LOST, R.CARD_LOST), (CardStatus.FROZEN, R.CARD_FROZEN), (CardStatus.CANCELLED, R.CARD_CANCELLED)],
)
def test_a_card_that_is_not_active_is_declined(books, status, code):
    books.open_card(CARD, personal=1_000)
    if status == CardStatus.CANCELLED:
        assert books.one(Op(kind=OpKind.CANCEL_CARD, card_id=CARD)).code == R.APPROVED
    else:
        assert books.one(Op(kind=OpKind.SET_CARD_STATUS, card_id=CARD, card_status=status)).code == R.APPROVED
    assert books.pay(CARD, 10).code == code
    assert books.preauth(CARD, 10).code == code


def test_a_cancelled_card_stays_cancelled(books):
    books.open_card(CARD)
    books.one(Op(kind=OpKind.CANCEL_CARD, card_id=CARD))
    result = books.one(Op(kind=OpKind.SET_CARD_STATUS, card_id=CARD, card_status=CardStatus.ACTIVE))
    assert result.code == R.CARD_CANCELLED
    assert books.one(Op(kind=OpKind.SET_CARD_STATUS, card_id=CARD, card_status=CardStatus.CANCELLED)).code == R.INVALID_OPERATION


def test_station_allow_list(books):
    books.open_card(CARD, personal=1_000)
    books.one(Op(kind=OpKind.ALLOW_STATION, card_id=CARD, station_id=2))
    assert books.pay(CARD, 10, station_id=1).code == R.CARD_NOT_ALLOWED_HERE
    assert books.pay(CARD, 10, station_id=2).code == R.APPROVED


def test_unknown_card(books):
    assert books.pay(CARD, 10).code == R.CARD_NOT_FOUND
    assert books.one(Op(kind=OpKind.OPEN_CARD, card_id=CARD, card_status=1)).code == R.APPROVED
    assert books.one(Op(kind=OpKind.OPEN_CARD, card_id=CARD, card_status=1)).code == R.CARD_EXISTS


# ---------------------------------------------------------------- idempotency


def test_a_retry_gets_the_first_answer_and_moves_nothing(books):
    books.open_card(CARD, personal=1_000)
    op = books.pay_op(CARD, 400)
    first = books.one(op)
    assert not first.replayed and first.final == RESULT_FINAL
    again = books.apply(op, op)
    assert again == [replayed(first), replayed(first)]
    # The mark is the answer's alone: the stored answer is the first one.
    assert books.ledger.idem(op.terminal_id, op.serial).result == first
    assert books.balances(CARD)[1] == 600


def test_a_retry_in_the_batch_of_its_first_request_is_marked_replayed(books):
    books.open_card(CARD, personal=1_000)
    op = books.pay_op(CARD, 400)
    first, retry = books.apply(op, op)
    assert (first.replayed, retry.replayed) == (False, True)
    assert retry == replayed(first)


def test_a_refused_retry_is_not_marked_replayed(books):
    books.open_card(CARD, personal=1_000)
    books.pay(CARD, 400, serial=77)
    mismatch = books.pay(CARD, 401, serial=77)
    assert (mismatch.code, mismatch.replayed) == (R.DUPLICATE_MISMATCH, False)


def test_a_used_serial_with_other_content_is_a_duplicate_mismatch(books):
    books.open_card(CARD, personal=1_000)
    first = books.pay(CARD, 400, serial=77)
    assert books.pay(CARD, 401, serial=77).code == R.DUPLICATE_MISMATCH
    assert books.ledger.idem(101, 77).result == first
    assert books.balances(CARD)[1] == 600


def test_a_declined_request_keeps_its_answer(books):
    books.open_card(CARD, personal=100)
    op = books.pay_op(CARD, 400)
    assert books.one(op).code == R.INSUFFICIENT_FUNDS
    books.topup(CARD, AccountKind.PERSONAL, 1_000)
    assert books.one(op).code == R.INSUFFICIENT_FUNDS


# ---------------------------------------------------------------- pre-authorization


def test_preauth_holds_fleet_then_personal_and_complete_posts_the_final_amount(books):
    books.open_card(CARD, fleet=3_000, personal=5_000)
    hold = books.preauth(CARD, 6_000)
    assert (hold.code, hold.fleet, hold.personal) == (R.APPROVED, 3_000, 3_000)
    assert books.held(CARD) == (3_000, 3_000, 0)
    # The hold counts against what else the card can pay at once.
    assert books.pay(CARD, 2_001, plan_flags=PlanFlag.USE_PERSONAL).code == R.INSUFFICIENT_FUNDS
    done = books.complete(hold.txn_id, 4_000)
    assert (done.code, done.amount, done.fleet, done.personal, done.points_earned) == (R.APPROVED, 4_000, 3_000, 1_000, 40)
    assert books.held(CARD) == (0, 0, 0)
    assert books.balances(CARD) == (0, 4_000, 40)


def test_complete_above_the_hold_is_declined(books):
    books.open_card(CARD, fleet=3_000)
    hold = books.preauth(CARD, 1_000)
    assert books.complete(hold.txn_id, 1_001).code == R.AMOUNT_EXCEEDS_HOLD
    assert books.complete(hold.txn_id, 1_000).code == R.APPROVED


def test_a_hold_closes_once(books):
    books.open_card(CARD, fleet=3_000)
    hold = books.preauth(CARD, 1_000)
    assert books.release(hold.txn_id).code == R.APPROVED
    assert books.release(hold.txn_id).code == R.HOLD_CLOSED
    assert books.complete(hold.txn_id, 10).code == R.HOLD_CLOSED
    assert books.held(CARD) == (0, 0, 0)


def test_an_expired_hold_can_be_neither_completed_nor_released(books):
    books.open_card(CARD, fleet=3_000)
    hold = books.preauth(CARD, 1_000, hold_timeout_s=60)
    books.advance(60_000)
    assert books.complete(hold.txn_id, 500).code == R.HOLD_EXPIRED
    assert books.release(hold.txn_id).code == R.HOLD_EXPIRED
    assert books.held(CARD) == (0, 0, 0)
    assert books.balances(CARD) == (3_000, 0, 0)


def test_the_sweep_expires_holds_nobody_touches(books):
    books.open_card(CARD, fleet=3_000)
    early = books.preauth(CARD, 1_000, hold_timeout_s=60)
    late = books.preauth(CARD, 1_000, hold_timeout_s=600)
    books.advance(61_000)
    # The batch expired the due hold before its first operation: the sweep
    # itself finds nothing left.
    assert books.one(Op(kind=OpKind.EXPIRE_HOLDS)).amount == 0
    assert books.ledger.txn(early.txn_id).state == TxnState.EXPIRED
    assert books.ledger.txn(late.txn_id).state == TxnState.HELD
    assert books.held(CARD) == (1_000, 0, 0)


def test_complete_only_at_the_station_of_the_hold(books):
    books.open_card(CARD, fleet=3_000)
    hold = books.preauth(CARD, 1_000)
    assert books.complete(hold.txn_id, 100, station_id=9).code == R.STATION_MISMATCH
    assert books.complete(hold.txn_id, 100).code == R.APPROVED


# ---------------------------------------------------------------- reversal


def test_reversal_undoes_a_sale_and_its_points(books):
    books.open_card(CARD, fleet=1_000, personal=1_000)
    sale = books.pay(CARD, 1_500, serial=10)
    assert books.balances(CARD) == (0, 500, 15)
    undo = books.reverse(10)
    assert (undo.code, undo.amount, undo.points_clawed_back) == (R.APPROVED, 1_500, 15)
    assert books.balances(CARD) == (1_000, 1_000, 0)
    assert books.ledger.txn(sale.txn_id).flags & TxnFlag.REVERSED
    # Repeated: it says the sale is reversed already, and nothing more moves.
    again = books.reverse(10)
    assert (again.code, again.txn_id, again.amount) == (R.ALREADY_REVERSED, sale.txn_id, 0)
    assert books.balances(CARD) == (1_000, 1_000, 0)


def test_reversal_before_the_original_refuses_the_late_original(books):
    books.open_card(CARD, fleet=1_000)
    assert books.reverse(10).code == R.ORIGINAL_NOT_SEEN
    late = books.pay(CARD, 500, serial=10)
    assert (late.code, late.txn_id) == (R.ALREADY_REVERSED, 0)
    assert books.balances(CARD) == (1_000, 0, 0)
    # A second reversal of the serial: still never seen, still blocked.
    assert books.reverse(10).code == R.ORIGINAL_NOT_SEEN


def test_reversal_of_a_declined_request_says_so_and_moves_nothing(books):
    books.open_card(CARD, fleet=100)
    assert books.pay(CARD, 500, serial=10).code == R.INSUFFICIENT_FUNDS
    assert books.reverse(10).code == R.ORIGINAL_DECLINED
    assert books.balances(CARD) == (100, 0, 0)


def test_reversal_of_a_preauth_releases_the_hold(books):
    books.open_card(CARD, fleet=1_000)
    hold = books.preauth(CARD, 600, serial=10)
    assert books.reverse(10).code == R.APPROVED
    assert books.held(CARD) == (0, 0, 0)
    assert books.complete(hold.txn_id, 100).code == R.ALREADY_REVERSED


def test_reversal_while_the_channel_works_refuses_the_capture(books):
    books.open_card(CARD, fleet=100)
    pending = books.pay(CARD, 500, channel=Channel.WECHAT_PAY, serial=10)
    assert books.reverse(10).code == R.APPROVED
    assert books.held(CARD) == (0, 0, 0)
    assert books.capture(pending.txn_id).code == R.ALREADY_REVERSED
    assert books.balances(CARD) == (100, 0, 0)
    assert books.ledger.pending_txn_ids() == []
    assert books.ledger.idem(101, 10).result.code == R.ALREADY_REVERSED


def test_reversal_of_a_topup_takes_the_money_back_if_it_is_still_there(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.PERSONAL, 1_000, serial=50)
    books.pay(CARD, 600)
    assert books.reverse(50).code == R.INSUFFICIENT_FUNDS
    books.topup(CARD, AccountKind.PERSONAL, 600)
    assert books.reverse(50).code == R.APPROVED
    assert books.balances(CARD)[1] == 0


def test_a_refund_cannot_be_reversed(books):
    books.open_card(CARD, personal=1_000)
    sale = books.pay(CARD, 500)
    books.refund(sale.txn_id, 100, serial=60)
    assert books.reverse(60).code == R.NOT_REVERSIBLE


# ---------------------------------------------------------------- void and refund


def test_void_same_day_only(books):
    books.open_card(CARD, personal=10_000)
    today = books.pay(CARD, 1_000)
    yesterday = books.pay(CARD, 1_000)
    assert books.void(today.txn_id).code == R.APPROVED
    assert books.void(today.txn_id).code == R.ALREADY_VOIDED
    books.advance(DAY_MS)
    assert books.void(yesterday.txn_id).code == R.VOID_NOT_SAME_DAY
    assert books.refund(yesterday.txn_id, 1_000).code == R.APPROVED
    assert books.balances(CARD)[1] == 10_000


def test_refunds_are_cumulative_and_never_above_what_was_paid(books):
    books.open_card(CARD, fleet=1_000, personal=1_000)
    sale = books.pay(CARD, 1_500)
    first = books.refund(sale.txn_id, 1_200)
    # Back to the sources in payment order: fleet first.
    assert (first.code, first.fleet, first.personal) == (R.APPROVED, 1_000, 200)
    assert books.refund(sale.txn_id, 301).code == R.REFUND_EXCEEDS_PAID
    assert books.refund(sale.txn_id, 300).code == R.APPROVED
    assert books.refund(sale.txn_id, 1).code == R.REFUND_EXCEEDS_PAID
    assert books.balances(CARD)[:2] == (1_000, 1_000)
    assert books.void(sale.txn_id).code == R.ALREADY_REFUNDED


def test_refund_takes_back_earned_points_in_proportion(books):
    books.open_card(CARD, personal=10_000)
    sale = books.pay(CARD, 10_000, earn_points=100)
    assert sale.points_earned == 100
    assert books.refund(sale.txn_id, 3_333).points_clawed_back == 33
    assert books.refund(sale.txn_id, 6_667).points_clawed_back == 67
    assert books.balances(CARD) == (0, 10_000, 0)


def test_points_already_spent_are_recorded_as_a_shortfall(books):
    books.open_card(CARD, personal=10_000)
    sale = books.pay(CARD, 10_000)
    books.pay(CARD, 100, plan_flags=PlanFlag.USE_POINTS, points_per_unit=100)  # spends the 100 points
    result = books.refund(sale.txn_id, 10_000)
    assert result.points_clawed_back == 0
    assert books.ledger.txn(sale.txn_id).points_shortfall == 100


def test_refund_of_a_channel_part_waits_for_the_channel(books):
    books.open_card(CARD, fleet=1_000)
    sale = books.capture(books.pay(CARD, 3_000, channel=Channel.ALIPAY).txn_id)
    pending = books.refund(sale.txn_id, 1_500)
    assert (pending.code, pending.fleet, pending.channel_amount) == (R.PENDING, 1_000, 500)
    # Reserved: a second refund cannot take the same money.
    assert books.refund(sale.txn_id, 1_501).code == R.REFUND_EXCEEDS_PAID
    assert books.abort(pending.txn_id, R.CHANNEL_UNAVAILABLE).code == R.CHANNEL_UNAVAILABLE
    assert books.balances(CARD)[0] == 0
    again = books.refund(sale.txn_id, 3_000)
    assert books.capture(again.txn_id).code == R.APPROVED
    assert books.balances(CARD)[0] == 1_000


def test_void_and_refund_only_at_the_sales_station(books):
    books.open_card(CARD, personal=1_000)
    sale = books.pay(CARD, 500)
    assert books.void(sale.txn_id, station_id=2).code == R.STATION_MISMATCH
    assert books.refund(sale.txn_id, 100, station_id=2).code == R.STATION_MISMATCH


def test_unknown_originals(books):
    assert books.void(999).code == R.ORIGINAL_NOT_FOUND
    assert books.refund(999, 1).code == R.ORIGINAL_NOT_FOUND
    assert books.complete(999, 1).code == R.ORIGINAL_NOT_FOUND
    assert books.release(999).code == R.ORIGINAL_NOT_FOUND


def test_wrong_kinds(books):
    books.open_card(CARD, personal=1_000)
    sale = books.pay(CARD, 500)
    assert books.complete(sale.txn_id, 10).code == R.WRONG_TRANSACTION_KIND
    hold = books.preauth(CARD, 100)
    assert books.void(hold.txn_id).code == R.TRANSACTION_NOT_POSTED


# ---------------------------------------------------------------- limits


def test_amounts_outside_the_limits_are_refused_by_the_kernel_too(books):
    books.open_card(CARD, personal=1_000)
    for amount in (0, -1, limits.AMOUNT_MINOR_MAX + 1):
        assert books.pay(CARD, amount).code == R.INVALID_OPERATION
    assert books.ledger.idem(101, books.serial) is None


def test_balances_never_leave_the_allowed_range(ledger):
    """A station's funding account near the floor: one more top-up would
    take it past -BALANCE_ABS_MAX, so it is declined and nothing moves.
    (Reaching the floor honestly takes millions of maximal top-ups, so the
    account is written there directly; the audit is not run on this store.)"""
    books = Driver(ledger)
    books.open_card(CARD)
    funding = Account(kind=AccountKind.TOPUP_FUNDING, unit=Unit.MONEY, owner=1, balance=-limits.BALANCE_ABS_MAX + 5, debits=limits.BALANCE_ABS_MAX - 5)
    with ledger.store.env.begin(write=True) as txn:
        txn.put(account_key(AccountKind.TOPUP_FUNDING, 1), encode(funding), db=ledger.store.accounts)
    assert books.topup(CARD, AccountKind.PERSONAL, 6).code == R.BALANCE_LIMIT
    assert books.topup(CARD, AccountKind.PERSONAL, 5).code == R.APPROVED
    assert ledger.account(AccountKind.TOPUP_FUNDING, 1).balance == -limits.BALANCE_ABS_MAX
    assert books.balances(CARD) == (0, 5, 0)


# ---------------------------------------------------------------- points lots


def lots(books, card_id):
    """The card's open lots, oldest first, wherever stored (core/lots.py)."""
    from core.lots import open_lots

    with books.ledger.store.env.begin() as txn:
        return open_lots(txn, books.ledger.store, card_id)


def test_earned_points_form_a_lot_that_expires_after_its_validity(books):
    books.open_card(CARD, personal=20_000)
    sale = books.pay(CARD, 10_000, earn_points=100, lot_validity_days=730)
    assert sale.points_earned == 100
    (lot,) = lots(books, CARD)
    assert (lot.earned_day, lot.expires_day, lot.original, lot.remaining) == (books.day, books.day + 730, 100, 100)


def test_points_paid_with_points_earn_nothing(books):
    books.open_card(CARD, personal=5_000, points=5_000)
    # 10,000 sale: 5,000 personal, 5,000 by points; the rules gave 100 points.
    sale = books.pay(CARD, 10_000, earn_points=100)
    assert (sale.points_cash, sale.points_earned) == (5_000, 50)


def test_spending_takes_the_lot_closest_to_expiry_first(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.POINTS, 300, lot_validity_days=100)
    books.topup(CARD, AccountKind.POINTS, 200, lot_validity_days=10)
    books.pay(CARD, 250, plan_flags=PlanFlag.USE_POINTS)
    remaining = {lot.expires_day - books.day: lot.remaining for lot in lots(books, CARD)}
    assert remaining == {100: 250}


def test_an_expired_point_is_never_spent(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.POINTS, 500, lot_validity_days=1)
    books.topup(CARD, AccountKind.POINTS, 100, lot_validity_days=30)
    books.advance(DAY_MS)
    result = books.pay(CARD, 400, plan_flags=PlanFlag.USE_POINTS, channel=Channel.WECHAT_PAY)
    # The day-old lot expired on this very touch: only 100 points were left.
    assert (result.code, result.points_used, result.channel_amount) == (R.PENDING, 100, 300)
    expiry = [e for e in books.ledger.journal() if e.movement == Movement.EXPIRY]
    assert [(e.amount, e.debit_owner) for e in expiry] == [(500, CARD)]


def test_the_expiry_operation_expires_without_a_sale(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.POINTS, 500, lot_validity_days=1)
    assert books.one(Op(kind=OpKind.EXPIRE_POINTS, card_id=CARD)).amount == 0
    books.advance(DAY_MS)
    result = books.one(Op(kind=OpKind.EXPIRE_POINTS, card_id=CARD))
    assert (result.amount, result.points_balance) == (500, 0)
    assert books.one(Op(kind=OpKind.EXPIRE_POINTS, card_id=CARD)).amount == 0
    assert lots(books, CARD) == []


def test_points_held_for_a_channel_payment_do_not_expire_under_it(books):
    books.open_card(CARD)
    books.topup(CARD, AccountKind.POINTS, 500, lot_validity_days=1)
    pending = books.pay(CARD, 1_000, plan_flags=PlanFlag.USE_POINTS, channel=Channel.ALIPAY)
    assert pending.points_used == 500
    books.advance(DAY_MS)
    assert books.one(Op(kind=OpKind.EXPIRE_POINTS, card_id=CARD)).amount == 0
    captured = books.capture(pending.txn_id)
    assert captured.code == R.APPROVED
    # Only the 5 points earned on the money-paid half are left.
    assert books.balances(CARD)[2] == captured.points_earned == 5


def test_a_refund_after_the_points_were_spent_settles_them_from_the_money(books):
    books.open_card(CARD, personal=20_000)
    sale = books.pay(CARD, 10_000, plan_flags=PlanFlag.USE_PERSONAL, earn_points=100)
    books.pay(CARD, 100, plan_flags=PlanFlag.USE_POINTS)  # spends the 100 points
    refund = books.refund(sale.txn_id, 10_000, points_per_unit=100)
    # 100 points at 100 points per unit are worth 100 minor units.
    assert (refund.code, refund.points_clawed_back, refund.shortfall_settled, refund.personal) == (R.APPROVED, 0, 100, 9_900)
    assert books.balances(CARD) == (0, 20_000 - 10_000 + 9_900, 0)
    assert books.ledger.account(AccountKind.POINTS_FUNDING, 0).balance == -100 + 100


def test_a_void_settles_a_shortfall_too(books):
    books.open_card(CARD, personal=20_000)
    sale = books.pay(CARD, 10_000, plan_flags=PlanFlag.USE_PERSONAL, earn_points=100)
    books.pay(CARD, 60, plan_flags=PlanFlag.USE_POINTS)  # spends 60 of the 100
    void = books.void(sale.txn_id, points_per_unit=100)
    assert (void.points_clawed_back, void.shortfall_settled, void.personal, void.amount) == (40, 60, 9_940, 9_940)


def test_huge_earnings_do_not_overflow(books):
    # Products of points and amounts pass 2^63; the kernel must get them exact.
    top = limits.AMOUNT_MINOR_MAX
    books.open_card(CARD, personal=top * 9 // 10, points=top)
    sale = books.pay(CARD, top, plan_flags=PlanFlag.USE_POINTS | PlanFlag.USE_PERSONAL, earn_points=limits.EARN_POINTS_MAX, points_per_unit=1_000)
    # Money pays nine tenths, points (10^12 at 1,000 a unit) the last tenth.
    assert (sale.personal, sale.points_cash, sale.points_used) == (top * 9 // 10, top // 10, top)
    assert sale.points_earned == limits.EARN_POINTS_MAX * 9 // 10
    refund = books.refund(sale.txn_id, top // 3)
    assert refund.points_clawed_back == sale.points_earned * (top // 3) // top


# ---------------------------------------------------------------- shifts and day-end


def test_a_closed_shift_refuses_sales_until_the_next_sign_on(books):
    books.open_card(CARD, personal=10_000)
    assert books.pay(CARD, 100).code == R.APPROVED  # never signed on: not held to shifts
    shift = books.one(books.request(OpKind.SIGN_ON))
    assert shift.code == R.APPROVED
    assert books.one(books.request(OpKind.SIGN_ON)).code == R.SHIFT_ALREADY_OPEN
    sale = books.pay(CARD, 200)
    closed = books.one(books.request(OpKind.SHIFT_CLOSE))
    assert (closed.code, closed.txn_id, closed.amount) == (R.APPROVED, shift.txn_id, sale.txn_id)
    assert books.pay(CARD, 300).code == R.SHIFT_CLOSED
    assert books.void(sale.txn_id).code == R.SHIFT_CLOSED
    assert books.one(books.request(OpKind.SHIFT_CLOSE)).code == R.SHIFT_NOT_OPEN
    # A reversal from the terminal itself is never refused.
    assert books.reverse(10**6).code == R.ORIGINAL_NOT_SEEN
    assert books.one(books.request(OpKind.SIGN_ON)).code == R.APPROVED
    assert books.pay(CARD, 300).code == R.APPROVED
    assert books.balances(CARD)[1] == 10_000 - 600


def test_after_day_end_a_void_is_refused_and_a_refund_is_the_path(books):
    books.open_card(CARD, personal=10_000)
    sale = books.pay(CARD, 1_000)
    assert books.one(Op(kind=OpKind.DAY_END, station_id=2, period=books.day)).code == R.APPROVED
    other_station_sale = books.pay(CARD, 500)
    assert books.one(Op(kind=OpKind.DAY_END, station_id=1, period=books.day)).amount == books.day
    assert books.one(Op(kind=OpKind.DAY_END, station_id=1, period=books.day - 5)).amount == books.day  # never backwards
    assert books.void(sale.txn_id).code == R.DAY_CLOSED
    assert books.void(other_station_sale.txn_id).code == R.DAY_CLOSED
    assert books.refund(sale.txn_id, 1_000).code == R.APPROVED


# ---------------------------------------------------------------- domains and cancellation


def test_a_card_works_only_in_its_enabled_domains(books):
    books.open_card(CARD, personal=1_000)
    books.one(Op(kind=OpKind.STATION_DOMAIN, station_id=1, period=10))
    books.one(Op(kind=OpKind.STATION_DOMAIN, station_id=2, period=20))
    assert books.pay(CARD, 10, station_id=2).code == R.APPROVED  # not restricted yet
    assert books.one(Op(kind=OpKind.ENABLE_DOMAIN, card_id=CARD, period=10)).code == R.APPROVED
    assert books.pay(CARD, 10, station_id=1).code == R.APPROVED
    assert books.pay(CARD, 10, station_id=2).code == R.DOMAIN_NOT_ENABLED
    assert books.pay(CARD, 10, station_id=3).code == R.DOMAIN_NOT_ENABLED  # a station of no domain


def test_cancelling_a_card_owes_its_balance_back_and_lapses_its_points(books):
    books.open_card(CARD, fleet=300, personal=1_200, points=50)
    hold = books.preauth(CARD, 100)
    assert books.one(Op(kind=OpKind.CANCEL_CARD, card_id=CARD)).code == R.CARD_HAS_HOLDS
    books.release(hold.txn_id)
    cancelled = books.one(Op(kind=OpKind.CANCEL_CARD, card_id=CARD))
    assert (cancelled.code, cancelled.amount, cancelled.fleet, cancelled.personal, cancelled.points_used) == (R.APPROVED, 1_500, 300, 1_200, 50)
    assert books.balances(CARD) == (0, 0, 0)
    assert books.ledger.account(AccountKind.REFUND_PAYABLE, CARD).balance == 1_500
    assert books.pay(CARD, 1).code == R.CARD_CANCELLED
    assert books.one(Op(kind=OpKind.CANCEL_CARD, card_id=CARD)).code == R.CARD_CANCELLED


# ---------------------------------------------------------------- every answer right in time (issue 16)


def test_a_hold_past_its_time_frees_its_funds_for_the_next_sale_at_once(books):
    books.open_card(CARD, fleet=1_000)
    hold = books.preauth(CARD, 1_000, hold_timeout_s=60)
    assert books.pay(CARD, 1_000, plan_flags=PlanFlag.USE_FLEET).code == R.INSUFFICIENT_FUNDS
    books.advance(60_000)  # the very millisecond it expires; no sweep has run
    sale = books.pay(CARD, 1_000, plan_flags=PlanFlag.USE_FLEET)
    assert (sale.code, sale.fleet) == (R.APPROVED, 1_000)
    assert books.ledger.txn(hold.txn_id).state == TxnState.EXPIRED
    assert books.complete(hold.txn_id, 500).code == R.HOLD_EXPIRED
    assert books.release(hold.txn_id).code == R.HOLD_EXPIRED
    assert books.held(CARD) == (0, 0, 0)


def test_a_batch_expires_a_bounded_number_of_due_holds_first_and_the_sweep_the_rest(books):
    books.open_card(CARD, fleet=10**9)
    count = limits.EXPIRE_SWEEP_HOLDS_MAX + 2
    results = books.apply(*(books.request(OpKind.PREAUTH, card_id=CARD, amount=1, hold_timeout_s=60) for _ in range(count)))
    assert {result.code for result in results} == {R.APPROVED}
    books.advance(60_000)
    assert books.one(Op(kind=OpKind.EXPIRE_HOLDS)).amount == 2  # the batch took the first EXPIRE_SWEEP_HOLDS_MAX
    assert books.held(CARD) == (0, 0, 0)


def test_an_answer_never_counts_points_whose_lot_has_expired(books):
    books.open_card(CARD, fleet=5_000)
    books.topup(CARD, AccountKind.POINTS, 500, lot_validity_days=1)
    books.topup(CARD, AccountKind.POINTS, 100, lot_validity_days=30)
    books.advance(DAY_MS)
    # A sale that does not touch the points: nothing expires in the store,
    # but the answer's points are those the card has today.
    sale = books.pay(CARD, 1_000, plan_flags=PlanFlag.USE_FLEET, earn_points=0)
    assert (sale.code, sale.points_balance) == (R.APPROVED, 100)
    assert books.balances(CARD)[2] == 600


def test_after_day_end_a_stations_sales_land_in_the_next_business_day(books):
    books.open_card(CARD, personal=100_000)
    today = books.day
    assert books.pay(CARD, 100).business_day == today
    assert books.one(Op(kind=OpKind.DAY_END, station_id=1, period=today)).code == R.APPROVED
    late = books.pay(CARD, 200)
    assert late.business_day == today + 1
    assert books.ledger.txn(late.txn_id).business_day == today + 1
    assert {entry.business_day for entry in books.ledger.journal(late.txn_id)} == {today + 1}
    # Another station's day is still open: its sales stay on the calendar's day.
    assert books.pay(CARD, 300, station_id=2).business_day == today
    # The station's day moves on once the calendar passes it.
    books.advance(2 * DAY_MS)
    assert books.pay(CARD, 400).business_day == today + 2


def test_after_day_end_the_cards_day_limit_starts_again(books):
    books.open_card(CARD, personal=100_000, limit_per_day=1_000)
    assert books.pay(CARD, 1_000).code == R.APPROVED
    assert books.pay(CARD, 1).code == R.LIMIT_PER_DAY_EXCEEDED
    books.one(Op(kind=OpKind.DAY_END, station_id=1, period=books.day))
    assert books.pay(CARD, 600).code == R.APPROVED
    # A station still on the earlier day counts the card's latest day, so
    # playing stations off against each other passes no limit.
    assert books.pay(CARD, 401, station_id=2).code == R.LIMIT_PER_DAY_EXCEEDED
    assert books.pay(CARD, 400, station_id=2).code == R.APPROVED
    assert books.pay(CARD, 1).code == R.LIMIT_PER_DAY_EXCEEDED


def test_after_day_end_points_are_earned_on_the_next_business_day(books):
    books.open_card(CARD, personal=20_000)
    books.one(Op(kind=OpKind.DAY_END, station_id=1, period=books.day))
    books.pay(CARD, 10_000, earn_points=100, lot_validity_days=730)
    (lot,) = lots(books, CARD)
    assert (lot.earned_day, lot.expires_day) == (books.day + 1, books.day + 1 + 730)


def test_after_day_end_a_gift_window_is_that_of_the_next_business_day(books):
    books.open_card(CARD, points=1_000)
    assert books.one(Op(kind=OpKind.GIFT_SET, item_id=5, amount=100, period_start=0, period=books.day)).code == R.APPROVED
    assert books.one(Op(kind=OpKind.GIFT_STOCK, item_id=5, amount=10)).code == R.APPROVED
    books.one(Op(kind=OpKind.DAY_END, station_id=1, period=books.day))
    redeem = lambda station: books.one(books.request(OpKind.REDEEM, station_id=station, card_id=CARD, item_id=5, amount=1))
    assert redeem(1).code == R.GIFT_NOT_AVAILABLE  # the gift's last day is over at station 1
    assert redeem(2).code == R.APPROVED


def test_a_reversal_that_finds_nothing_to_undo_says_what_it_found(books):
    books.open_card(CARD, fleet=10_000)
    voided = books.pay(CARD, 100, serial=20)
    books.void(voided.txn_id)
    released = books.preauth(CARD, 100, serial=21)
    books.release(released.txn_id)
    books.preauth(CARD, 100, serial=22, hold_timeout_s=1)
    declined = books.pay(CARD, 10**6, serial=23)
    pending = books.pay(CARD, 20_000, serial=24, channel=Channel.BANK_CARD)
    books.abort(pending.txn_id, R.CHANNEL_UNAVAILABLE)
    books.advance(1_000)
    found = {serial: books.reverse(serial) for serial in (20, 21, 22, 23, 24, 25)}
    assert {serial: result.code for serial, result in found.items()} == {
        20: R.ALREADY_VOIDED, 21: R.HOLD_CLOSED, 22: R.HOLD_EXPIRED, 23: R.ORIGINAL_DECLINED, 24: R.ORIGINAL_DECLINED,
        25: R.ORIGINAL_NOT_SEEN,
    }
    assert found[20].txn_id == voided.txn_id and declined.txn_id == 0
    assert all(result.amount == 0 for result in found.values())
    assert (books.balances(CARD), books.held(CARD)) == ((10_000, 0, 0), (0, 0, 0))  # nothing moved but the expiry
    assert books.pay(CARD, 1, serial=25).code == R.ALREADY_REVERSED  # the never-seen serial is blocked


def test_a_declined_sale_answers_the_amount_asked_and_the_cards_balances(books):
    books.open_card(CARD, fleet=100, personal=50, points=30)
    declined = books.pay(CARD, 500, plan_flags=PlanFlag.USE_FLEET | PlanFlag.USE_PERSONAL)
    assert (declined.code, declined.txn_id, declined.amount) == (R.INSUFFICIENT_FUNDS, 0, 500)
    assert (declined.fleet, declined.personal, declined.points_cash, declined.channel_amount) == (0, 0, 0, 0)
    assert (declined.fleet_balance, declined.personal_balance, declined.points_balance) == (100, 50, 30)
    refused = books.preauth(CARD, 500)
    assert (refused.code, refused.amount, refused.fleet_balance) == (R.INSUFFICIENT_FUNDS, 500, 100)
    books.one(Op(kind=OpKind.SET_CARD_STATUS, card_id=CARD, card_status=CardStatus.FROZEN))
    frozen = books.pay(CARD, 40)
    assert (frozen.code, frozen.amount, frozen.personal_balance) == (R.CARD_FROZEN, 40, 50)
    unknown = books.pay(OTHER_CARD, 40)
    assert (unknown.code, unknown.amount, unknown.card_id, unknown.fleet_balance) == (R.CARD_NOT_FOUND, 40, OTHER_CARD, 0)


def test_a_sale_refused_before_its_handler_answers_like_a_decline(books):
    books.open_card(CARD, fleet=700)
    books.one(books.request(OpKind.SIGN_ON))
    books.one(books.request(OpKind.SHIFT_CLOSE))
    closed = books.pay(CARD, 300)
    assert (closed.code, closed.amount, closed.fleet_balance) == (R.SHIFT_CLOSED, 300, 700)
    books.one(books.request(OpKind.SIGN_ON))
    books.reverse(90)
    late = books.pay(CARD, 300, serial=90)
    assert (late.code, late.amount, late.fleet_balance) == (R.ALREADY_REVERSED, 300, 700)


@pytest.mark.parametrize("code", [R.CHANNEL_UNAVAILABLE, R.CHANNEL_DECLINED])
def test_a_channel_that_took_nothing_leaves_no_legs_in_the_answer(books, code):
    books.open_card(CARD, fleet=100, personal=200)
    op = books.pay_op(CARD, 15_000, channel=Channel.WECHAT_PAY)
    pending = books.one(op)
    assert (pending.fleet, pending.personal, pending.channel_amount) == (100, 200, 14_700)
    final = books.abort(pending.txn_id, code)
    assert (final.code, final.amount, final.txn_id) == (code, 15_000, pending.txn_id)
    legs = (final.fleet, final.personal, final.points_cash, final.points_used, final.channel_amount, final.points_earned)
    assert legs == (0, 0, 0, 0, 0, 0)
    assert (final.fleet_balance, final.personal_balance) == (100, 200)
    assert books.ledger.idem(op.terminal_id, op.serial).result == final


def test_a_refund_whose_channel_took_nothing_leaves_no_legs_in_the_answer(books):
    sale = books.pay(0, 5_000, plan_flags=0, channel=Channel.ALIPAY)
    books.capture(sale.txn_id)
    pending = books.refund(sale.txn_id, 2_000)
    assert (pending.code, pending.channel_amount) == (R.PENDING, 2_000)
    final = books.abort(pending.txn_id, R.CHANNEL_UNAVAILABLE)
    assert (final.code, final.amount, final.channel_amount) == (R.CHANNEL_UNAVAILABLE, 2_000, 0)


def test_a_retry_of_a_request_waiting_for_its_channel_is_marked_replayed(books):
    books.open_card(CARD, fleet=100)
    op = books.pay_op(CARD, 500, channel=Channel.BANK_CARD)
    pending = books.one(op)
    retry = books.one(op)
    assert (retry.code, retry.replayed, retry.final & 1) == (R.PENDING, True, 0)
    assert retry == replayed(pending)
