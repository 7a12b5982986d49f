"""The SDK's asyncio clients against a real server: the terminal client
(typed answers, a lost answer reversed by the drainer task) and the
gateway stream (many operations in flight over a small window, answers
matched to their operations, a stream broken by SIGKILL picked up again
with the same serials)."""

import asyncio

import pytest

from tally_client import AsyncTerminalClient, GatewayStream, Outcome, ResultCode
from tally_client.codes import Channel
from tally_client.gateway import Context, OperationLost
from tests.support import DEMO_COMPANY_CARD, DEMO_PERSONAL_CARD, Terminal
from tests.test_sdk_client import QUICK, free_port, server_on
from tests.test_sdk_reversals import PERSONAL_START_MINOR, SALE_MINOR, audit_is_clean, personal_minor


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


def test_the_asyncio_client_pays_and_reverses_a_lost_answer(server_factory, tmp_path):
    server = server_factory("--channel-latency-ms", "1000", "1000")

    async def scenario():
        answered = asyncio.Event()
        async with AsyncTerminalClient(server.address, station_id=1, terminal_id=101, operator_id=7,
                                       state_dir=str(tmp_path), settings=QUICK,
                                       on_reversal=lambda _: answered.set()) as client:
            paid = await client.pay(2_500, card_id=DEMO_COMPANY_CARD, use_fleet=True)
            assert paid.approved and paid.serial == 1 and paid.currency == "CNY"
            assert (await client.query(paid.serial)).answer.txn_id == paid.txn_id
            assert (await client.get_points(DEMO_COMPANY_CARD)).points_balance > 0
            lost = await client.pay(SALE_MINOR, card_id=DEMO_PERSONAL_CARD, use_personal=True, channel=Channel.ALIPAY,
                                    timeout_s=0.5)
            assert lost.outcome is Outcome.REVERSED and not lost.approved
            await asyncio.wait_for(answered.wait(), 30)  # the drainer task sent the Reverse
            assert client.pending_reversals() == []
            assert client.reversals.answered[-1].original_serial == lost.serial

    run(scenario())
    assert personal_minor(server) == PERSONAL_START_MINOR


def contexts(terminal_id: int, count: int, first_serial: int = 1):
    return [Context(station_id=1, terminal_id=terminal_id, serial=first_serial + i,
                    operator_id=7) for i in range(count)]


def test_the_gateway_stream_matches_many_answers_to_their_operations(server_factory):
    """400 sales of four terminals in flight over a window of 16: every one
    answered once, each answer the one stored under its own serial."""
    server = server_factory("--stream-window", "16")
    amounts = {}

    async def scenario():
        async with GatewayStream(server.address, settings=QUICK) as stream:
            calls = []
            for terminal_id in (201, 202, 203, 204):
                for context in contexts(terminal_id, 100):
                    amount = 1 + (terminal_id * 1000 + context.serial) % 97
                    amounts[(terminal_id, context.serial)] = amount
                    calls.append(stream.pay(context, amount, card_id=DEMO_COMPANY_CARD, use_fleet=True))
            answers = await asyncio.gather(*calls)
            assert stream.window == 16
            queried = await asyncio.gather(*(stream.query(terminal_id=t, serial=s) for t, s in amounts))
            return answers, queried

    answers, queried = run(scenario())
    assert all(answer.approved for answer in answers)
    assert len({answer.txn_id for answer in answers}) == 400
    for (key, amount), answer, stored in zip(amounts.items(), answers, queried):
        assert answer.amount_minor == amount and answer.serial == key[1]
        assert stored.answer.txn_id == answer.txn_id and stored.transaction.terminal_id == key[0]


def test_a_refused_operation_fails_alone(server_factory):
    server = server_factory()

    async def scenario():
        async with GatewayStream(server.address, settings=QUICK) as stream:
            good, bad = await asyncio.gather(
                stream.pay(Context(1, 301, 1, 7), 100, card_id=DEMO_COMPANY_CARD, use_fleet=True),
                stream.pay(Context(1, 301, 2, 7), 0, card_id=DEMO_COMPANY_CARD, use_fleet=True),
                return_exceptions=True)
            return good, bad

    good, bad = run(scenario())
    assert good.approved
    assert bad.status == "INVALID_ARGUMENT" and "amount_minor" in bad.message


def test_a_broken_stream_sends_unanswered_operations_again_with_their_serials(tmp_path):
    """SIGKILL with sales waiting for their channel; the server comes back on
    the same address; the stream reconnects and sends them again: each
    answered once, under its own serial, nothing moved twice."""
    port, data_dir = free_port(), str(tmp_path / "data")
    server = server_on(port, data_dir, "--channel-latency-ms", "1500", "1500").start()

    async def scenario():
        async with GatewayStream(f"127.0.0.1:{port}", settings=QUICK) as stream:
            calls = [asyncio.ensure_future(stream.pay(context, 1_000, card_id=DEMO_PERSONAL_CARD, use_personal=True,
                                                      channel=Channel.ALIPAY)) for context in contexts(401, 5)]
            await asyncio.sleep(0.5)
            server.kill()
            restarted = await asyncio.to_thread(server_on(port, data_dir).start)
            answers = await asyncio.gather(*calls)
            assert stream.streams_opened >= 2
            return answers, restarted

    answers, server = run(scenario())
    print("answers after the break:", [answer.result.name for answer in answers])
    try:
        # The crash's recovery settled what waited for the channel; the
        # repeats got those stored answers, not new sales.
        assert [answer.serial for answer in answers] == [1, 2, 3, 4, 5]
        assert all(answer.outcome is Outcome.ANSWERED for answer in answers)
        taken = sum(answer.sources.personal_minor for answer in answers if answer.result is ResultCode.APPROVED)
        assert personal_minor(server) == PERSONAL_START_MINOR - taken
        payments = Terminal(server.channel()).payments
        from tally.v1 import payment_pb2

        for answer in answers:
            stored = payments.Query(payment_pb2.QueryRequest(terminal_id=401, serial=answer.serial))
            assert stored.answer.result == answer.result and stored.answer.txn_id == answer.txn_id
    finally:
        server.stop()
    audit_is_clean(data_dir)


def test_an_operation_past_its_deadline_is_lost_naming_its_serial(tmp_path):
    async def scenario():
        async with GatewayStream(f"127.0.0.1:{free_port()}", settings=QUICK) as stream:
            future = stream.submit(_pay_operation(), terminal_id=501, serial=9, timeout_s=0.5)
            with pytest.raises(OperationLost) as lost:
                await future
            return lost.value

    lost = run(scenario())
    assert (lost.terminal_id, lost.serial) == (501, 9) and "serial 9" in str(lost)


def _pay_operation():
    from tally_client import gateway, operations

    request = operations.pay(100, card_id=DEMO_COMPANY_CARD, use_fleet=True)
    operations.stamp(request.message, 1, 501, 9, 7)
    return gateway._operation(request)
