"""PaymentService and CardService over a real server on 127.0.0.1."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tally.v1 import card_pb2, common_pb2, payment_pb2
from tests.support import DEMO_COMPANY_CARD, DEMO_PERSONAL_CARD, DEMO_RESTRICTED_CARD, Terminal

R = common_pb2


@pytest.fixture(scope="module")
def terminal(server):
    return Terminal(server.channel(), terminal_id=301)


def test_a_first_payment_is_approved_with_its_receipt(terminal):
    before = terminal.card(DEMO_COMPANY_CARD).balances
    answer, _ = terminal.pay(2_500)
    assert answer.result == R.APPROVED
    assert answer.sources.fleet_minor == 2_500
    assert answer.balances.fleet_minor == before.fleet_minor - 2_500
    assert answer.points_earned == 25
    assert "AMOUNT 25.00" in answer.receipt and "fleet account  25.00" in answer.receipt


def test_a_retry_returns_the_first_answer_and_moves_money_once(terminal):
    first, request = terminal.pay(1_000)
    again = terminal.payments.Pay(request)
    # The same answer, marked as the stored answer of the first request.
    assert (first.replayed, again.replayed) == (False, True)
    again.replayed = False
    assert again == first
    assert terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor == first.balances.fleet_minor


def test_a_reused_serial_with_another_amount_is_refused(terminal):
    first, request = terminal.pay(700)
    request.amount_minor = 701
    answer = terminal.payments.Pay(request)
    assert answer.result == R.DUPLICATE_MISMATCH
    assert "serial was used before" in answer.result_text


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: setattr(r, "amount_minor", 0), "amount_minor: must be within 1 .. 1000000000000, got 0"),
        (lambda r: setattr(r, "amount_minor", 10**12 + 1), "amount_minor: must be within 1 .. 1000000000000"),
        (lambda r: r.terminal.Clear(), "terminal: is required"),
        (lambda r: setattr(r.terminal, "serial", 0), "terminal.serial: must be within 1 .. 18446744073709551615, got 0"),
        (lambda r: setattr(r.terminal, "operator_id", 0), "terminal.operator_id: must be within 1"),
        (lambda r: r.plan.Clear(), "plan: needs a card_id or a channel"),
        (lambda r: setattr(r.plan, "points_max", -1), "plan.points_max: must be within 0 .. 1000000000000, got -1"),
        (lambda r: r.basket.add(goods_code="A", quantity_milli=1000, unit_price_minor=5, amount_minor=5), "basket: line amounts add up to 5"),
        (lambda r: r.basket.add(goods_code="X" * 33, quantity_milli=1000, amount_minor=100), "basket[0].goods_code: length must be within 1 .. 32"),
        (lambda r: [r.basket.add(goods_code="A", quantity_milli=1, amount_minor=0) for _ in range(65)], "basket: at most 64 lines, got 65"),
    ],
)
def test_malformed_input_is_refused_naming_the_field_and_the_server_keeps_serving(terminal, change, field):
    request = payment_pb2.PayRequest(
        terminal=terminal.context(), amount_minor=100, plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True)
    )
    change(request)
    with pytest.raises(grpc.RpcError) as error:
        terminal.payments.Pay(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.value.details()
    assert terminal.pay(100)[0].result == R.APPROVED


def test_declines_are_answers_naming_the_rule(terminal):
    answer, _ = terminal.pay(60_000, card_id=DEMO_PERSONAL_CARD, use_fleet=False, use_personal=True)
    assert answer.result == R.LIMIT_PER_TRANSACTION_EXCEEDED
    assert "per-transaction limit" in answer.result_text
    answer, _ = terminal.pay(100, card_id=DEMO_RESTRICTED_CARD, use_personal=True)
    assert answer.result == R.CARD_NOT_ALLOWED_HERE
    answer, _ = terminal.pay(100, card_id=999)
    assert answer.result == R.CARD_NOT_FOUND


def test_preauthorize_complete_and_query(terminal):
    hold = terminal.payments.PreAuthorize(
        payment_pb2.PreAuthorizeRequest(terminal=terminal.context(), card_id=DEMO_COMPANY_CARD, amount_minor=30_000)
    )
    assert hold.result == R.APPROVED
    assert terminal.card(DEMO_COMPANY_CARD).held.fleet_minor == 30_000
    done = terminal.payments.Complete(
        payment_pb2.CompleteRequest(
            terminal=terminal.context(),
            txn_id=hold.txn_id,
            amount_minor=12_345,
            basket=[common_pb2.BasketLine(goods_code="92", name="Petrol 92", category="fuel", quantity_milli=15_432, unit_price_minor=800, amount_minor=12_345)],
        )
    )
    assert (done.result, done.amount_minor, done.sources.fleet_minor) == (R.APPROVED, 12_345, 12_345)
    assert "Petrol 92  15.432 x 8.00  123.45" in done.receipt
    assert terminal.card(DEMO_COMPANY_CARD).held.fleet_minor == 0
    completion_serial = terminal.serial
    again = terminal.payments.Release(payment_pb2.ReleaseRequest(terminal=terminal.context(), txn_id=hold.txn_id))
    assert again.result == R.HOLD_CLOSED
    by_id = terminal.payments.Query(payment_pb2.QueryRequest(txn_id=hold.txn_id))
    assert by_id.found and by_id.transaction.state == payment_pb2.POSTED
    assert by_id.transaction.posted.fleet_minor == 12_345 and by_id.transaction.held.fleet_minor == 30_000
    by_serial = terminal.payments.Query(payment_pb2.QueryRequest(terminal_id=terminal.terminal_id, serial=completion_serial))
    assert by_serial.found and by_serial.answer.result == R.APPROVED and by_serial.transaction.txn_id == hold.txn_id
    missing = terminal.payments.Query(payment_pb2.QueryRequest(terminal_id=terminal.terminal_id, serial=10**12))
    assert not missing.found


def test_reversal_before_the_original_refuses_the_late_original(terminal):
    lost_serial = terminal.serial + 100
    reverse = terminal.payments.Reverse(payment_pb2.ReverseRequest(terminal=terminal.context(), original_serial=lost_serial))
    assert (reverse.result, reverse.amount_minor) == (R.ORIGINAL_NOT_SEEN, 0)
    assert "blocked" in reverse.result_text and "ORIGINAL_NOT_SEEN" in reverse.receipt
    late, _ = terminal.pay(500, serial=lost_serial)
    assert late.result == R.ALREADY_REVERSED


def test_void_and_refund(terminal):
    sale, _ = terminal.pay(4_000)
    void = terminal.payments.Void(payment_pb2.VoidRequest(terminal=terminal.context(), txn_id=sale.txn_id))
    assert (void.result, void.amount_minor, void.points_clawed_back) == (R.APPROVED, 4_000, 40)
    sale, _ = terminal.pay(4_000)
    refund = terminal.payments.Refund(payment_pb2.RefundRequest(terminal=terminal.context(), txn_id=sale.txn_id, amount_minor=4_001))
    assert refund.result == R.REFUND_EXCEEDS_PAID
    refund = terminal.payments.Refund(payment_pb2.RefundRequest(terminal=terminal.context(), txn_id=sale.txn_id, amount_minor=1_000))
    assert (refund.result, refund.sources.fleet_minor, refund.points_clawed_back) == (R.APPROVED, 1_000, 10)


def test_mixed_payment_with_a_channel_for_the_rest(terminal):
    terminal.open_card(7001)
    terminal.topup(7001, 300, account=common_pb2.PERSONAL)
    terminal.topup(7001, 200, account=common_pb2.POINTS)
    answer, _ = terminal.pay(1_000, card_id=7001, use_fleet=False, use_personal=True, use_points=True, channel=common_pb2.WECHAT_PAY)
    assert answer.result == R.APPROVED
    sources = answer.sources
    assert (sources.personal_minor, sources.points_cash_minor, sources.points_used, sources.channel_minor) == (300, 200, 200, 500)
    assert sources.channel == common_pb2.WECHAT_PAY
    assert "channel  5.00" in answer.receipt


def test_cards_open_top_up_limit_and_status(terminal):
    assert terminal.open_card(7002, limit_per_day_minor=1_000).result == R.APPROVED
    assert terminal.open_card(7002).result == R.CARD_EXISTS
    top = terminal.topup(7002, 5_000)
    assert (top.result, top.balances.personal_minor) == (R.APPROVED, 5_000)
    assert terminal.pay(1_001, card_id=7002, use_personal=True)[0].result == R.LIMIT_PER_DAY_EXCEEDED
    lost = terminal.cards.SetCardStatus(card_pb2.SetCardStatusRequest(card_id=7002, status=card_pb2.LOST))
    assert lost.result == R.APPROVED and lost.card.status == card_pb2.LOST
    assert terminal.pay(10, card_id=7002, use_personal=True)[0].result == R.CARD_LOST
    with pytest.raises(grpc.RpcError) as error:
        terminal.cards.OpenCard(card_pb2.OpenCardRequest(card_id=7003))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "card_type" in error.value.details()


def test_health_and_reflection(server):
    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="tally.v1.PaymentService"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for answer in answers for service in answer.list_services_response.service}
    assert {"tally.v1.PaymentService", "tally.v1.CardService", "grpc.health.v1.Health"} <= names


def test_channel_declines_and_time_outs_move_nothing(server_factory):
    for flags, code in (
        (("--channel-decline-ppm", "1000000"), R.CHANNEL_DECLINED),
        (("--channel-timeout-ppm", "1000000"), R.CHANNEL_UNAVAILABLE),
    ):
        process = server_factory(*flags)
        terminal = Terminal(process.channel())
        before = terminal.card(DEMO_COMPANY_CARD)
        answer, request = terminal.pay(600_000 + 50_000, use_personal=True, channel=common_pb2.BANK_CARD)
        assert answer.result == code, answer
        after = terminal.card(DEMO_COMPANY_CARD)
        assert after.balances == before.balances and after.held == before.held
        assert terminal.payments.Pay(request).result == code


def test_a_channel_that_never_answers_costs_a_terminal_one_channel_timeout(server_factory):
    """--channel-timeout-ms bounds the whole wait: the answer comes within it
    plus a commit (the deadline a terminal should set, as documented), not
    after the channel side's reversal attempts, which go on in the background."""
    timeout_ms = 1_000
    process = server_factory("--channel-timeout-ppm", "1000000", "--channel-timeout-ms", str(timeout_ms))
    terminal = Terminal(process.channel())
    request = payment_pb2.PayRequest(terminal=terminal.context(), amount_minor=650_000,
                                     plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_personal=True,
                                                                  channel=common_pb2.BANK_CARD))
    answer = terminal.payments.Pay(request, timeout=timeout_ms / 1000 + 1.5)
    assert answer.result == R.CHANNEL_UNAVAILABLE
    assert "could not be reversed" not in process.log


def test_clean_shutdown_keeps_everything_and_the_audit_passes(server_factory):
    import subprocess
    import sys

    process = server_factory()
    terminal = Terminal(process.channel())
    answers = [terminal.pay(100)[0] for _ in range(20)]
    assert {a.result for a in answers} == {R.APPROVED}
    assert process.stop() == 0
    audit = subprocess.run([sys.executable, "-m", "core.audit", process.data_dir], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout
    restarted = server_factory(data_dir=process.data_dir)
    balance = Terminal(restarted.channel()).card(DEMO_COMPANY_CARD).balances.fleet_minor
    assert balance == answers[-1].balances.fleet_minor


def test_the_reference_kernel_is_announced(server_factory):
    process = server_factory("--kernel", "reference")
    assert process.kernel == "reference"
    assert "running the plain-Python reference kernel" in process.log


def test_a_full_queue_answers_resource_exhausted_at_once_and_nothing_half_done(server_factory):
    import asyncio
    import subprocess
    import sys

    process = server_factory("--queue-length-max", "1")

    async def flood():
        async with grpc.aio.insecure_channel(process.address) as channel:
            from tally.v1 import payment_pb2_grpc

            payments = payment_pb2_grpc.PaymentServiceStub(channel)

            async def one(serial):
                request = payment_pb2.PayRequest(
                    terminal=common_pb2.TerminalContext(station_id=1, terminal_id=909, serial=serial, operator_id=1),
                    amount_minor=1,
                    plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True),
                )
                try:
                    return (await payments.Pay(request)).result
                except grpc.aio.AioRpcError as error:
                    assert "queue full" in error.details()
                    return error.code()

            return await asyncio.gather(*(one(serial) for serial in range(1, 401)))

    outcomes = asyncio.run(flood())
    refused = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    approved = outcomes.count(R.APPROVED)
    assert refused > 0 and approved > 0 and refused + approved == 400
    terminal = Terminal(process.channel(), terminal_id=910)
    assert terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor == 500_000 - approved
    assert terminal.pay(1)[0].result == R.APPROVED
    assert process.stop() == 0
    audit = subprocess.run([sys.executable, "-m", "core.audit", process.data_dir], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout
