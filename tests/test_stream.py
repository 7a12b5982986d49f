"""GatewayService.Exchange over a real server: the unary semantics on a stream,
the window, and no acknowledged answer lost when the stream breaks."""

import asyncio
import subprocess
import sys

import grpc
import pytest

from server.stream import STREAM_BATCH_OPERATIONS_MAX, STREAM_WINDOW_MAX, WINDOW_METADATA_KEY
from tally.v1 import card_pb2, common_pb2, gateway_pb2, gateway_pb2_grpc, payment_pb2
from tests.support import DEMO_COMPANY_CARD, Terminal

R = common_pb2
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def context(terminal_id: int, serial: int) -> common_pb2.TerminalContext:
    return common_pb2.TerminalContext(station_id=1, terminal_id=terminal_id, serial=serial, operator_id=7)


def pay(terminal_id: int, serial: int, amount_minor: int, card_id: int = DEMO_COMPANY_CARD, **plan) -> payment_pb2.PayRequest:
    plan.setdefault("use_fleet", True)
    return payment_pb2.PayRequest(
        terminal=context(terminal_id, serial), amount_minor=amount_minor, plan=payment_pb2.PaymentPlan(card_id=card_id, **plan)
    )


def message(correlation_id: int, *operations: dict) -> gateway_pb2.GatewayMessage:
    return gateway_pb2.GatewayMessage(
        correlation_id=correlation_id, operations=[gateway_pb2.GatewayOperation(**operation) for operation in operations]
    )


async def exchange(address: str, messages: list, replies_expected: int | None = None) -> tuple[list, grpc.StatusCode, dict]:
    """Send the messages on one stream, half-close, read every reply."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = gateway_pb2_grpc.GatewayServiceStub(channel).Exchange()
        for item in messages:
            await call.write(item)
        await call.done_writing()
        replies = [reply async for reply in call]
        metadata = dict(await call.initial_metadata())
        return replies, await call.code(), metadata


def run(coroutine):
    return asyncio.run(coroutine)


def replayed(answer: payment_pb2.PaymentAnswer) -> payment_pb2.PaymentAnswer:
    """`answer` as a retry of its request receives it."""
    again = payment_pb2.PaymentAnswer()
    again.CopyFrom(answer)
    again.replayed = True
    return again


def test_a_stream_answers_exactly_as_the_unary_rpcs_and_shares_their_idempotency(server):
    terminal = Terminal(server.channel(), terminal_id=401)
    before = terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor
    first = pay(401, 1, 1_500)
    replies, code, metadata = run(exchange(server.address, [message(77, {"pay": first})]))
    assert code == grpc.StatusCode.OK
    assert metadata[WINDOW_METADATA_KEY] == str(STREAM_WINDOW_MAX)
    assert [reply.correlation_id for reply in replies] == [77]
    answer = replies[0].results[0].payment
    assert answer.result == R.APPROVED and answer.sources.fleet_minor == 1_500
    # The same request over unary is a retry: the stored answer, byte for
    # byte, marked replayed.
    assert terminal.payments.Pay(first) == replayed(answer)
    # And a unary request retried on the stream, likewise.
    unary, request = terminal.pay(2_000, serial=2)
    replies, _, _ = run(exchange(server.address, [message(78, {"pay": request})]))
    assert replies[0].results[0].payment == replayed(unary)
    assert terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor == before - 3_500
    # A reused serial with other content is refused the same way.
    changed = pay(401, 1, 1_501)
    replies, _, _ = run(exchange(server.address, [message(79, {"pay": changed})]))
    assert replies[0].results[0].payment.result == R.DUPLICATE_MISMATCH


def test_a_batch_answers_each_operation_in_order_and_refuses_bad_ones_naming_the_field(server):
    terminal = Terminal(server.channel(), terminal_id=402)
    sale, _ = terminal.pay(4_000, serial=1)
    batch = message(
        5,
        {"pay": pay(402, 10, 300)},
        {"pay": pay(402, 11, 0)},
        {"pre_authorize": payment_pb2.PreAuthorizeRequest(terminal=context(402, 12), card_id=DEMO_COMPANY_CARD, amount_minor=9_000)},
        {"query": payment_pb2.QueryRequest(terminal_id=402, serial=1)},
        {"refund": payment_pb2.RefundRequest(terminal=context(402, 13), txn_id=sale.txn_id, amount_minor=4_001)},
        {"top_up": card_pb2.TopUpRequest(terminal=context(402, 14), card_id=DEMO_COMPANY_CARD, account=R.PERSONAL, amount=50)},
        {},
    )
    replies, code, _ = run(exchange(server.address, [batch]))
    assert code == grpc.StatusCode.OK and len(replies) == 1
    results = replies[0].results
    assert [result.WhichOneof("outcome") for result in results] == ["payment", "error", "payment", "query", "payment", "payment", "error"]
    assert results[0].payment.result == R.APPROVED
    assert results[1].error.code == INVALID_ARGUMENT
    assert results[1].error.message == "amount_minor: must be within 1 .. 1000000000000, got 0"
    assert results[2].payment.result == R.APPROVED and results[2].payment.sources.fleet_minor == 9_000
    assert results[3].query.found and results[3].query.answer.txn_id == sale.txn_id
    assert results[4].payment.result == R.REFUND_EXCEEDS_PAID
    assert results[5].payment.result == R.APPROVED
    assert results[6].error.code == INVALID_ARGUMENT and "no request set" in results[6].error.message
    # The hold, the completion and the void run on the stream as on unary.
    hold_id = results[2].payment.txn_id
    replies, _, _ = run(exchange(server.address, [
        message(6, {"complete": payment_pb2.CompleteRequest(terminal=context(402, 15), txn_id=hold_id, amount_minor=7_000)}),
    ]))
    assert replies[0].results[0].payment.amount_minor == 7_000
    replies, _, _ = run(exchange(server.address, [
        message(7, {"release": payment_pb2.ReleaseRequest(terminal=context(402, 16), txn_id=hold_id)}),
        message(8, {"void": payment_pb2.VoidRequest(terminal=context(402, 17), txn_id=results[0].payment.txn_id)}),
        message(9, {"reverse": payment_pb2.ReverseRequest(terminal=context(402, 18), original_serial=99)}),
    ]))
    by_id = {reply.correlation_id: reply.results[0].payment for reply in replies}
    assert by_id[7].result == R.HOLD_CLOSED
    assert (by_id[8].result, by_id[8].amount_minor) == (R.APPROVED, 300)
    assert by_id[9].result == R.ORIGINAL_NOT_SEEN
    assert terminal.pay(10, serial=99)[0].result == R.ALREADY_REVERSED


def test_message_size_limits_are_refused_as_a_whole_and_the_stream_goes_on(server):
    too_many = message(1, *({"pay": pay(403, serial, 1)} for serial in range(1, STREAM_BATCH_OPERATIONS_MAX + 2)))
    replies, code, _ = run(exchange(server.address, [gateway_pb2.GatewayMessage(correlation_id=2), too_many, message(3, {"pay": pay(403, 1, 1)})]))
    assert code == grpc.StatusCode.OK
    by_id = {reply.correlation_id: reply for reply in replies}
    assert by_id[2].error.code == INVALID_ARGUMENT and by_id[2].error.message == "operations: must hold 1 .. 256 operations, got 0"
    assert by_id[1].error.code == INVALID_ARGUMENT and "got 257" in by_id[1].error.message and not by_id[1].results
    assert by_id[3].results[0].payment.result == R.APPROVED
    # Nothing of the refused batch ran: serial 1 was free for message 3.
    assert Terminal(server.channel()).payments.Query(payment_pb2.QueryRequest(terminal_id=403, serial=2)).found is False


def test_answers_too_large_for_one_reply_come_in_consecutive_parts(server):
    """256 Pays fit in one message; their answers (receipts) do not fit in
    one 64 KiB reply: they come in parts that together cover each once."""
    line = common_pb2.BasketLine(goods_code="G1", name="N" * 64, quantity_milli=1000, unit_price_minor=10, amount_minor=10)
    requests = [pay(407, serial, 10) for serial in range(1, STREAM_BATCH_OPERATIONS_MAX + 1)]
    for request in requests:
        request.basket.append(line)  # its name is printed on the receipt
    batch = message(11, *({"pay": request} for request in requests))
    assert batch.ByteSize() < 64 * 1024
    replies, code, _ = run(exchange(server.address, [batch]))
    assert code == grpc.StatusCode.OK and len(replies) >= 2
    assert all(reply.correlation_id == 11 and reply.ByteSize() <= 64 * 1024 for reply in replies)
    covered = []
    for reply in replies:
        assert reply.first_index == len(covered), "parts are consecutive"
        covered.extend(reply.results)
    assert len(covered) == STREAM_BATCH_OPERATIONS_MAX
    assert [result.payment.receipt.split("serial ")[1].split()[0] for result in covered] == [str(s) for s in range(1, 257)]
    assert {result.payment.result for result in covered} == {R.APPROVED}


def test_the_window_refuses_a_message_that_would_exceed_it_naming_the_numbers(server_factory):
    # A slow channel keeps the first message's operations in flight.
    process = server_factory("--stream-window", "4", "--channel-latency-ms", "400", "400")

    async def scenario():
        async with grpc.aio.insecure_channel(process.address) as channel:
            call = gateway_pb2_grpc.GatewayServiceStub(channel).Exchange()
            assert dict(await call.initial_metadata())[WINDOW_METADATA_KEY] == "4"
            slow = {"channel": R.ALIPAY, "use_fleet": False}
            await call.write(message(1, *({"pay": pay(404, serial, 100, card_id=0, **slow)} for serial in (1, 2, 3))))
            await call.write(message(2, {"pay": pay(404, 4, 100)}, {"pay": pay(404, 5, 100)}))
            refusal = await call.read()
            await call.write(message(3, {"pay": pay(404, 6, 100)}))
            replies = [await call.read(), await call.read()]
            await call.write(message(4, *({"pay": pay(404, serial, 100)} for serial in (7, 8, 9, 10))))
            replies.append(await call.read())
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            return refusal, replies, await call.code()

    refusal, replies, code = run(scenario())
    assert code == grpc.StatusCode.OK
    assert refusal.correlation_id == 2 and refusal.error.code == RESOURCE_EXHAUSTED
    assert refusal.error.message == (
        "stream window exceeded: 3 operations in flight plus 2 in this message is more than the window of 4; "
        "wait for answers before sending more"
    )
    assert [reply.correlation_id for reply in replies] == [3, 1, 4]
    assert all(result.payment.result == R.APPROVED for reply in replies for result in reply.results)
    query = Terminal(process.channel()).payments.Query
    assert not query(payment_pb2.QueryRequest(terminal_id=404, serial=4)).found, "a refused message must not run"


def test_a_stream_broken_by_a_crash_loses_no_acknowledged_answer(server_factory, tmp_path):
    """Pays in flight on a stream; the server is SIGKILLed after some answers
    arrived. After the restart every acknowledged answer is stored as given;
    the gateway re-sends the unanswered ones with their serials, and each
    sale is paid exactly once."""
    data_dir = str(tmp_path / "crash")
    process = server_factory("--channel-latency-ms", "1", "30", data_dir=data_dir)
    terminal_id, sales = 405, 400
    requests = {serial: pay(terminal_id, serial, 100 + serial, use_personal=True, channel=R.WECHAT_PAY if serial % 4 == 0 else 0)
                for serial in range(1, sales + 1)}
    before = Terminal(process.channel()).card(DEMO_COMPANY_CARD).balances

    async def send_until_killed():
        acknowledged = {}
        async with grpc.aio.insecure_channel(process.address) as channel:
            call = gateway_pb2_grpc.GatewayServiceStub(channel).Exchange()
            for serial, request in requests.items():
                await call.write(message(serial, {"pay": request}))
            try:
                while True:
                    reply = await call.read()
                    if reply == grpc.aio.EOF:
                        break
                    acknowledged[reply.correlation_id] = reply.results[0].payment
                    if len(acknowledged) == sales // 4:
                        process.kill()
            except grpc.aio.AioRpcError as error:
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
        return acknowledged

    acknowledged = run(send_until_killed())
    assert sales // 4 <= len(acknowledged) < sales, "the crash must break the stream mid-way"
    restarted = server_factory("--channel-latency-ms", "1", "30", data_dir=data_dir)
    terminal = Terminal(restarted.channel())
    for serial, answer in acknowledged.items():
        stored = terminal.payments.Query(payment_pb2.QueryRequest(terminal_id=terminal_id, serial=serial))
        assert stored.found, f"acknowledged serial {serial} lost"
        assert (stored.answer.result, stored.answer.txn_id, stored.answer.sources) == (answer.result, answer.txn_id, answer.sources)
    # The gateway re-sends what got no answer, on a new stream, same serials.
    missing = [serial for serial in requests if serial not in acknowledged]
    replies, code, _ = run(exchange(restarted.address, [message(serial, {"pay": requests[serial]}) for serial in missing]))
    assert code == grpc.StatusCode.OK and len(replies) == len(missing)
    final = {**acknowledged, **{reply.correlation_id: reply.results[0].payment for reply in replies}}
    assert {answer.result for answer in final.values()} == {R.APPROVED}
    paid_by_card = sum(answer.sources.fleet_minor + answer.sources.personal_minor for answer in final.values())
    after = terminal.card(DEMO_COMPANY_CARD).balances
    assert (before.fleet_minor + before.personal_minor) - (after.fleet_minor + after.personal_minor) == paid_by_card
    assert restarted.stop() == 0
    audit = subprocess.run([sys.executable, "-m", "core.audit", data_dir], capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout


def test_a_stopping_server_answers_what_is_in_flight_then_ends_the_stream_unavailable(server_factory):
    process = server_factory("--channel-latency-ms", "300", "300")

    async def scenario():
        async with grpc.aio.insecure_channel(process.address) as channel:
            call = gateway_pb2_grpc.GatewayServiceStub(channel).Exchange()
            await call.write(message(1, *({"pay": pay(406, serial, 100, card_id=0, channel=R.BANK_CARD, use_fleet=False)} for serial in (1, 2))))
            await asyncio.sleep(0.1)
            process.process.terminate()
            replies = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while (reply := await call.read()) != grpc.aio.EOF:
                    replies.append(reply)
            return replies, ended.value

    replies, ended = run(scenario())
    assert [reply.correlation_id for reply in replies] == [1]
    assert [result.payment.result for result in replies[0].results] == [R.APPROVED, R.APPROVED]
    assert ended.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in ended.details()
    assert process.process.wait(30) == 0
