"""A gateway message's plain Pays, batch-wise: translated, committed and answered by server/fastpay.pyx.

Owns: whether the plain path applies, per station, in the server's state
now (PaymentService.pay would take its plain branch: nothing for promotions
to price or count, no velocity limits, the card not on the blacklist, no flag rules,
no coupons issued on purchase, earning rules of the base rate alone, no
request log), the settings its operations are built with, and running a
message's plain Pays: one group commit for all of them, their answers'
wire bytes in one pass. The rest of the message goes the reference way
(PaymentService.pay: server/requests.py, server/answers.py), and so does a
plain Pay the kernel answered PENDING (its channel settles it).
Used by: server/stream.py.

Why: at 1,500 terminals in flight a stream Pay cost about 40 times the
server CPU of the stream's echo, almost all of it Tally's own Python per
payment (validation, the Op, the quote, the answer and its receipt, a task
and a future each); issue 20 moves that work into compiled code, a
message at a time, as the kernel applies a batch at a time.
"""

import asyncio
import time
from typing import NamedTuple

from core.loyalty.earning import quote
from core.records import Result
from server import answers, fastpay
from server.errors import status_of
from server.metrics import OBSERVER, outcome_of
from tally.v1 import gateway_pb2, payment_pb2


async def _nothing() -> list:
    return []


class _Outcome(NamedTuple):
    """What metrics.outcome_of reads of an answer."""

    result: int


def plain_earning(earning) -> bool:
    """Earning rules whose quote is the base item alone for any sale
    (core/loyalty/earning.py quote: no category, threshold, tier or
    campaign item can arise)."""
    return not (earning.category_permille or earning.threshold_bonus is not None or earning.tier_permille or earning.campaigns)


def _code_at(results: bytes, position: int) -> int:
    """The ResultCode of the kernel's Result number `position` (its first two bytes, little-endian)."""
    offset = position * Result.LAYOUT.size
    return results[offset] | results[offset + 1] << 8


class PayLine:
    def __init__(self, payments):
        self.payments = payments
        self.committer = payments.committer
        self._tables: fastpay.Answers | None = None
        self._tables_currency = None

    def tables(self) -> fastpay.Answers:
        """The answers' tables, with the currency set at the server's start."""
        currency = answers.currency()
        if currency != self._tables_currency:
            self._tables_currency = currency
            self._tables = fastpay.Answers(currency)
        return self._tables

    def settings_at(self, station_id: int):
        """(points_per_unit, lot_validity_days, base points per unit) a plain
        Pay at the station is built with, or None when it would not take
        PaymentService.pay's plain path."""
        payments = self.payments
        if OBSERVER.log_requests or payments.rules is None:
            return None
        if payments.promotions is not None and not payments.promotions.plain_at(station_id):
            return None
        rules = payments.rules.rules_at(station_id)
        if not plain_earning(rules.earning):
            return None
        return (payments.settings.points_per_unit, rules.expiry.lot_validity_days, rules.earning.base_points_per_unit)

    def blocked(self, message: fastpay.PayMessage, indexes: list) -> set:
        """The Pays listed whose card the blacklist refuses now: the
        reference declines them (looked up only while the blacklist holds
        entries, as PromotionFlow._pay does)."""
        promotions = self.payments.promotions
        if promotions is None or not promotions.risk.blocking_possible():
            return set()
        now_ms = self.committer.clock()
        return {index for index in indexes
                if message.card_of(index) and promotions.risk.blocking_entry(message.card_of(index), now_ms) is not None}

    async def results(self, message: fastpay.PayMessage, run_reference) -> list:
        """Each Pay's GatewayResult bytes, in the message's order.
        run_reference(index, request) answers the message's Pay number index
        the reference way (a GatewayResult message)."""
        settings = {}
        for station in message.plain_stations():
            found = self.settings_at(station)
            if found is not None:
                settings[station] = found
        plain, others = message.split(settings)
        blocked = self.blocked(message, plain)
        if blocked:
            plain = [index for index in plain if index not in blocked]
            others = sorted([*others, *blocked])
        if not others:
            return await self._plain(message, plain, settings)
        # The reference Pays run beside the plain ones, as every operation
        # of a message ran before.
        outcomes = await asyncio.gather(
            self._plain(message, plain, settings) if plain else _nothing(),
            *(run_reference(index, payment_pb2.PayRequest.FromString(message.request(index))) for index in others),
        )
        results: list = [None] * message.count
        for index, result in zip(plain, outcomes[0]):
            results[index] = result
        for index, result in zip(others, outcomes[1:]):
            results[index] = result.SerializeToString()
        return results

    async def one(self, body: bytes, message: fastpay.PayMessage | None = None):
        """A unary Pay from its wire bytes: (its answer, its outcome label)
        where the answer is the PaymentAnswer's wire bytes (or the message,
        when the reference finished it), or None when it is not plain here
        (the reference answers it whole). message: the body as read already
        (the terminal guard's), if it was."""
        if message is None:
            message = fastpay.PayMessage.single(body)
        if not message.plain(0):
            return None
        station = message.station_of(0)
        found = self.settings_at(station)
        if found is None:
            return None
        if self.blocked(message, [0]):
            return None
        settings = {station: found}
        results = await self.committer.submit_group(message.ops([0], settings))
        (written,) = message.answers(self.tables(), [0], results, settings, True)
        if written is None:
            answer = (await self._finish(message, 0, Result(*Result.LAYOUT.unpack(results)))).payment
            return answer, outcome_of(answer)
        return written, outcome_of(_Outcome(_code_at(results, 0)))

    async def _plain(self, message: fastpay.PayMessage, plain: list, settings: dict) -> list:
        started = time.perf_counter()
        try:
            results = await self.committer.submit_group(message.ops(plain, settings))
        except Exception as error:
            status = status_of(error)
            if status is None:
                raise
            refused = gateway_pb2.GatewayResult(error=gateway_pb2.GatewayError(code=status[0].value[0], message=status[1])).SerializeToString()
            return [refused] * len(plain)
        written = message.answers(self.tables(), plain, results, settings)
        size = Result.LAYOUT.size
        if None in written:
            for position, answer in enumerate(written):
                if answer is None:  # waiting for a channel, or a date past year 9999: the reference finishes it
                    result = Result(*Result.LAYOUT.unpack_from(results, position * size))
                    written[position] = (await self._finish(message, plain[position], result)).SerializeToString()
        if OBSERVER.active:
            seconds = time.perf_counter() - started
            for position in range(len(plain)):
                OBSERVER.request("Pay", "stream", outcome_of(_Outcome(_code_at(results, position))), seconds)
        return written

    async def _finish(self, message: fastpay.PayMessage, index: int, result: Result) -> gateway_pb2.GatewayResult:
        """The rest of PaymentService.pay for a plain Pay: its channel
        settles, the reference writes the answer."""
        request = payment_pb2.PayRequest.FromString(message.request(index))
        final = await self.payments._settled(result)
        station = request.terminal.station_id
        earning = self.payments.rules.rules_at(station).earning
        sale_quote = quote(earning, [], request.amount_minor, 0, station, self.committer.clock())
        answer = answers.payment_answer(final, request.terminal, request.basket, request.plan.channel, quote=sale_quote)
        return gateway_pb2.GatewayResult(payment=answer)
