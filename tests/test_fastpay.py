"""server/fastpay.pyx against its reference, server/requests.py and server/answers.py.

Hypothesis draws Pay requests (valid and not: every field at, inside and
outside its limits, a missing terminal, baskets, coupon codes, unknown
channels) and kernel results. For each request the compiled path either
builds the very Op bytes requests.pay_op builds (fingerprint included), or
leaves the request to the reference; it takes every valid plain one, and it
never takes one the reference refuses or whose wire bytes are not protobuf's
own encoding. Each answer it writes is, byte for byte, the GatewayResult of
answers.payment_answer. Last, a real server answers a message mixing plain
Pays with others in order, and a stream Pay retried over unary is replayed.
"""

import asyncio

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import limits
from core.errors import InvalidInput
from core.loyalty.earning import quote
from core.loyalty.rules import EarningRules
from core.records import RESULT_REPLAYED, Result, encode
from core.results import Channel, OpKind, ResultCode
from server import answers, requests
from server.fastpay import Answers, PayMessage, replies
from server.settings import ServerSettings
from server.stream import REPLY_BYTES_MAX, split_replies
from tally.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, payment_pb2
from tests.support import DEMO_COMPANY_CARD, DEMO_PERSONAL_CARD, Terminal

U32 = 2**32 - 1
U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def around(*limits_: int, low: int, high: int):
    """Values at, next to and between the limits, within [low, high]."""
    picks = {value + delta for value in limits_ for delta in (-1, 0, 1)}
    return st.one_of(st.sampled_from(sorted(value for value in picks if low <= value <= high)), st.integers(low, high))


def mostly(valid, anything):
    """Seven times in eight a valid value, else any (its limits, beyond)."""
    return st.integers(0, 7).flatmap(lambda roll: anything if roll == 0 else valid)


TERMINALS = st.builds(
    common_pb2.TerminalContext,
    station_id=mostly(st.sampled_from([1, 2, 7]), around(0, 1, U32, low=0, high=U32)),
    terminal_id=mostly(st.integers(1, limits.TERMINAL_ID_MAX), around(0, 1, limits.TERMINAL_ID_MAX, low=0, high=U32)),
    serial=mostly(st.integers(1, U64), around(0, 1, U64, low=0, high=U64)),
    operator_id=mostly(st.integers(1, U32), around(0, 1, U32, low=0, high=U32)),
)
PLANS = st.builds(
    payment_pb2.PaymentPlan,
    card_id=st.sampled_from([0, 1, 6_200_000_000_000_001, 6_200_000_000_000_001, U64]),
    use_fleet=st.booleans(), use_personal=st.booleans(), use_points=st.booleans(),
    points_max=mostly(st.sampled_from([0, 0, 1, 500, limits.POINTS_MAX]), around(0, limits.POINTS_MAX, low=I64_MIN, high=I64_MAX)),
    channel=mostly(st.sampled_from([0, 0, 0, 1, 2, 3]), st.sampled_from([4, -1, 2**31 - 1])),
)
BASKET_LINES = st.builds(common_pb2.BasketLine, goods_code=st.sampled_from(["", "92", "diesel"]), amount_minor=st.integers(0, 500),
                         quantity_milli=st.integers(0, 2_000))


@st.composite
def pay_requests(draw):
    amount = draw(mostly(st.integers(1, limits.AMOUNT_MINOR_MAX), around(0, 1, limits.AMOUNT_MINOR_MAX, low=I64_MIN, high=I64_MAX)))
    request = payment_pb2.PayRequest(amount_minor=amount)
    if draw(st.integers(0, 19)):
        request.terminal.CopyFrom(draw(TERMINALS))
    if draw(st.integers(0, 19)):
        request.plan.CopyFrom(draw(PLANS))
    if draw(st.integers(0, 9)) == 0:
        request.basket.extend(draw(st.lists(BASKET_LINES, min_size=1, max_size=2)))
    if draw(st.integers(0, 19)) == 0:
        request.coupon_codes.append("ABCD")
    return request


# (points_per_unit, lot_validity_days, base points per unit) at every station.
SETTINGS = st.tuples(st.sampled_from([1, 100, 250]), st.sampled_from([1, 730]), st.sampled_from([0, 1, 3]))


def reference_op(request, station_settings):
    """The Op PaymentService.pay builds on the plain path: pay_op, earning the plain quote."""
    points_per_unit, lot_validity_days, per_unit = station_settings
    server_settings = ServerSettings(data_dir="", points_per_unit=points_per_unit, lot_validity_days=lot_validity_days)
    op = requests.pay_op(request, server_settings)
    op.earn_points = quote(EarningRules(base_points_per_unit=per_unit), [], request.amount_minor, 0, 0, 0).total
    return op


def one_message(request, correlation_id: int = 9) -> PayMessage:
    raw = gateway_pb2.GatewayMessage(correlation_id=correlation_id, operations=[gateway_pb2.GatewayOperation(pay=request)])
    return PayMessage.read(raw.SerializeToString(deterministic=True))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pay_requests(), SETTINGS)
def test_a_plain_pay_is_the_op_pay_op_builds_and_every_other_is_left_to_it(request, station_settings):
    message = one_message(request)
    assert message is not None and message.count == 1 and message.correlation_id == 9
    try:
        expected = reference_op(request, station_settings)
    except InvalidInput:
        expected = None
    plain_shape = not request.basket and not request.coupon_codes
    assert message.plain(0) == (expected is not None and plain_shape)
    if message.plain(0):
        assert message.ops([0], {request.terminal.station_id: station_settings}) == encode(expected)


@settings(max_examples=300, deadline=None)
@given(pay_requests(), st.lists(st.tuples(st.integers(1, 4), st.integers(0, 300)), max_size=4))
def test_bytes_protobuf_would_not_write_are_left_to_the_reference(request, edits):
    """Fields out of order, defaults written out, longer varints, unknown
    fields: never plain, since the fingerprint hashes protobuf's own encoding."""
    canonical = request.SerializeToString(deterministic=True)
    raw = bytearray(canonical)
    for kind, position in edits:
        position = position % (len(raw) + 1)
        if kind == 1:
            raw[position:position] = b"\x10\x00"  # amount_minor 0, written out
        elif kind == 2:
            raw[position:position] = b"\x30\x01"  # field 6: unknown to PayRequest
        elif kind == 3 and raw:
            raw = raw[position:] + raw[:position]  # fields out of order (or not parsing at all)
        elif kind == 4:
            raw += b"\x10\x81\x00"  # a varint one byte too long
    operation = b"\x0a" + bytes(encode_varint(len(raw))) + bytes(raw)
    message = PayMessage.read(b"\x08\x01\x12" + bytes(encode_varint(len(operation))) + operation)
    if message is None or not message.plain(0):
        return
    # Taken: then the bytes are exactly what protobuf writes for them.
    parsed = payment_pb2.PayRequest.FromString(bytes(raw))
    assert bytes(raw) == parsed.SerializeToString(deterministic=True)


def encode_varint(value: int) -> bytearray:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return out


def test_a_message_that_is_not_all_pays_is_left_whole_to_the_reference():
    mixed = gateway_pb2.GatewayMessage(correlation_id=3, operations=[
        gateway_pb2.GatewayOperation(pay=payment_pb2.PayRequest(amount_minor=5)),
        gateway_pb2.GatewayOperation(query=payment_pb2.QueryRequest(txn_id=1)),
    ])
    assert PayMessage.read(mixed.SerializeToString()) is None
    assert PayMessage.read(b"\x12\x00") is None  # an operation with no request set
    assert PayMessage.read(b"\xff") is None


RESULTS = st.builds(
    Result,
    code=st.sampled_from([int(code) for code in ResultCode] + [999]),
    kind=st.sampled_from([OpKind.PAY, OpKind.PAY, OpKind.PREAUTH, OpKind.TOPUP, 200]),
    final=st.sampled_from([1, 1, 1 | RESULT_REPLAYED, 0]),
    business_day=st.sampled_from([0, 19_000, 20_500, 2_932_896]),
    txn_id=st.sampled_from([0, 1, 10**12, U64]),
    card_id=st.sampled_from([0, 6_200_000_000_000_001]),
    amount=st.integers(0, limits.AMOUNT_MINOR_MAX),
    fleet=st.sampled_from([0, 0, 1, 99, 12_345]),
    personal=st.sampled_from([0, 0, 100, 7]),
    points_cash=st.sampled_from([0, 0, 50]),
    points_used=st.sampled_from([0, 0, 5_000]),
    channel_amount=st.sampled_from([0, 0, 300]),
    points_earned=st.sampled_from([0, 0, 3, 1_000_000]),
    points_clawed_back=st.sampled_from([0, 0, 4]),
    shortfall_settled=st.sampled_from([0, 0, 1]),
    fleet_balance=st.sampled_from([0, 5, 10**14, -1]),
    personal_balance=st.sampled_from([0, 99_999, -250]),
    points_balance=st.sampled_from([0, 17, 2**62]),
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pay_requests(), SETTINGS, RESULTS, st.sampled_from(["CNY", "EUR", ""]))
def test_an_answer_is_the_bytes_of_payment_answer(request, station_settings, result, currency):
    message = one_message(request)
    if not message.plain(0):
        return
    station = {request.terminal.station_id: station_settings}
    written = message.answers(Answers(currency), [0], encode(result), station)[0]
    if result.code == ResultCode.PENDING:
        assert written is None  # the reference settles the channel first
        return
    sale_quote = quote(EarningRules(base_points_per_unit=station_settings[2]), [], request.amount_minor, 0, 0, 0)
    previous = answers.currency()
    answers.set_currency(currency)
    try:
        expected = answers.payment_answer(result, request.terminal, request.basket, request.plan.channel, quote=sale_quote)
    finally:
        answers.set_currency(previous)
    assert written == gateway_pb2.GatewayResult(payment=expected).SerializeToString()
    # A unary Pay's answer: the PaymentAnswer alone, byte for byte.
    unwrapped = PayMessage.single(request.SerializeToString()).answers(Answers(currency), [0], encode(result), station, True)[0]
    assert unwrapped == expected.SerializeToString()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, U64), st.lists(st.integers(0, 3_000), min_size=1, max_size=300))
def test_replies_split_as_split_replies_splits_them(correlation_id, sizes):
    results = [gateway_pb2.GatewayResult(error=gateway_pb2.GatewayError(code=3, message="x" * size)) for size in sizes]
    expected = [reply.SerializeToString() for reply in split_replies(correlation_id, results)]
    assert replies(correlation_id, [result.SerializeToString() for result in results], REPLY_BYTES_MAX) == expected


# ---------------------------------------------------------------- on a server


def context(terminal_id: int, serial: int) -> common_pb2.TerminalContext:
    return common_pb2.TerminalContext(station_id=1, terminal_id=terminal_id, serial=serial, operator_id=7)


def pay(terminal_id: int, serial: int, amount_minor: int, **fields) -> payment_pb2.PayRequest:
    return payment_pb2.PayRequest(terminal=context(terminal_id, serial), amount_minor=amount_minor,
                                  plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True), **fields)


async def exchange(address: str, messages: list) -> list:
    async with grpc.aio.insecure_channel(address) as channel:
        call = gateway_pb2_grpc.GatewayServiceStub(channel).Exchange()
        for item in messages:
            await call.write(item)
        await call.done_writing()
        return [reply async for reply in call]


def test_plain_pays_and_the_others_of_one_message_answer_in_order(server):
    terminal = Terminal(server.channel(), terminal_id=411)
    line = common_pb2.BasketLine(goods_code="92", name="petrol 92", quantity_milli=1_000, unit_price_minor=700, amount_minor=700)
    batch = gateway_pb2.GatewayMessage(correlation_id=12, operations=[
        gateway_pb2.GatewayOperation(pay=pay(411, 1, 300)),
        gateway_pb2.GatewayOperation(pay=pay(411, 2, 0)),
        gateway_pb2.GatewayOperation(pay=pay(411, 3, 700, basket=[line])),
        gateway_pb2.GatewayOperation(pay=pay(411, 4, 400)),
        gateway_pb2.GatewayOperation(pay=pay(411, 5, 10**13)),
        # Plain, but its channel answers later: the reference settles it.
        gateway_pb2.GatewayOperation(pay=payment_pb2.PayRequest(terminal=context(411, 6), amount_minor=250,
                                                                plan=payment_pb2.PaymentPlan(channel=common_pb2.BANK_CARD))),
    ])
    (reply,) = asyncio.run(exchange(server.address, [batch]))
    results = reply.results
    assert [result.WhichOneof("outcome") for result in results] == ["payment", "error", "payment", "payment", "error", "payment"]
    assert [results[i].payment.amount_minor for i in (0, 2, 3)] == [300, 700, 400]
    assert (results[5].payment.result, results[5].payment.sources.channel_minor) == (common_pb2.APPROVED, 250)
    assert results[1].error.message == "amount_minor: must be within 1 .. 1000000000000, got 0"
    assert "petrol 92" in results[2].payment.receipt
    # Each one is the stored answer a unary retry gets back, marked replayed.
    for index in (0, 2, 3, 5):
        request = batch.operations[index].pay
        again = terminal.payments.Pay(request)
        assert again.replayed
        again.replayed = False
        assert again == results[index].payment


def test_a_unary_plain_pay_is_answered_as_the_reference_answers_it(server):
    """Unary Pay goes the compiled way when it is plain (server/payline.py,
    PaymentService.pay_wire); its answer is the one a retry over the stream
    gets back, and a Pay that is not plain still gets the reference's error."""
    terminal = Terminal(server.channel(), terminal_id=412)
    first = terminal.payments.Pay(pay(412, 1, 300))
    assert (first.result, first.amount_minor, first.replayed) == (common_pb2.APPROVED, 300, False)
    assert first.receipt
    channel = terminal.payments.Pay(payment_pb2.PayRequest(
        terminal=context(412, 2), amount_minor=250, plan=payment_pb2.PaymentPlan(channel=common_pb2.BANK_CARD)))
    assert (channel.result, channel.sources.channel_minor) == (common_pb2.APPROVED, 250)
    with pytest.raises(grpc.RpcError) as refused:
        terminal.payments.Pay(pay(412, 3, 0))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "amount_minor" in refused.value.details()
    batch = gateway_pb2.GatewayMessage(correlation_id=4, operations=[
        gateway_pb2.GatewayOperation(pay=pay(412, 1, 300))])
    (reply,) = asyncio.run(exchange(server.address, [batch]))
    again = reply.results[0].payment
    assert again.replayed
    again.replayed = False
    assert again == first


def test_with_a_card_on_the_blacklist_other_cards_stay_compiled_and_that_one_is_declined(server):
    """A non-empty blacklist keeps the compiled path for every other card
    (server/payline.py blocked): the listed card is declined by the
    reference, over unary and in a stream message beside plain Pays."""
    from tally.v1 import promotion_pb2, promotion_pb2_grpc

    risk = promotion_pb2_grpc.RiskServiceStub(server.channel())
    risk.AddBlacklistEntry(promotion_pb2.AddBlacklistEntryRequest(card_id=DEMO_PERSONAL_CARD, reason="stolen", by="test"))
    try:
        terminal = Terminal(server.channel(), terminal_id=413)
        listed = payment_pb2.PayRequest(terminal=context(413, 1), amount_minor=100,
                                        plan=payment_pb2.PaymentPlan(card_id=DEMO_PERSONAL_CARD, use_personal=True))
        assert terminal.payments.Pay(listed).result == common_pb2.CARD_BLACKLISTED
        assert terminal.payments.Pay(pay(413, 2, 150)).result == common_pb2.APPROVED
        batch = gateway_pb2.GatewayMessage(correlation_id=5, operations=[
            gateway_pb2.GatewayOperation(pay=pay(413, 3, 200)),
            gateway_pb2.GatewayOperation(pay=payment_pb2.PayRequest(
                terminal=context(413, 4), amount_minor=100,
                plan=payment_pb2.PaymentPlan(card_id=DEMO_PERSONAL_CARD, use_personal=True))),
            gateway_pb2.GatewayOperation(pay=pay(413, 5, 300)),
        ])
        (reply,) = asyncio.run(exchange(server.address, [batch]))
        assert [result.payment.result for result in reply.results] == [
            common_pb2.APPROVED, common_pb2.CARD_BLACKLISTED, common_pb2.APPROVED]
        assert [reply.results[i].payment.amount_minor for i in (0, 2)] == [200, 300]
    finally:
        risk.RemoveBlacklistEntry(promotion_pb2.RemoveBlacklistEntryRequest(card_id=DEMO_PERSONAL_CARD, by="test"))
