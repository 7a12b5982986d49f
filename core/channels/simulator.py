"""A simulated bank or wallet, used by the tests, the benchmarks and the demo.

Latency, decline rate and time-outs are configurable; randomness is seeded so
that a test can ask for exact behaviour. The simulator keeps what it was
asked in memory, as a real channel would keep it on its side: payments by
reference, their refunds and reversals, each with the time the channel
booked it, so that it can write its day's statement in its channel's real
format (`statement`), with the faults real statements have on demand:
`script` (a payment the channel took after a time-out, a reversal that never
arrives), `book_refund_late` (a refund the channel books later, even the next
day) and `report_net_of_fee` (an amount reported less the channel's fee).
"""

import asyncio
import random
import time

import msgspec

from core.channels.base import ChannelAnswer, ChannelOutcome, ChannelTimeout


# Payments one simulated channel remembers by default (for queries, refunds
# and its daily statement); beyond this the oldest are forgotten, as a real
# channel's online window ends. The server's simulators are mocks of banks
# living inside its process, so whatever they remember counts as the
# server's heap: at about 350 bytes a payment, its three channels at 10,000
# each held 10 MB when full and were still filling at the end of a
# 30-minute soak: most of that soak's heap growth (issue 7). 2,000 each is
# about 2 MB, full within the first minutes of a soak, and still more than
# the soak keeps in play (it ran clean with 300).
SIMULATED_PAYMENTS_MAX = 2_000


class SimulatorSettings(msgspec.Struct, frozen=True):
    # Time one call takes, uniformly between min and max, milliseconds.
    latency_ms_min: int = 0
    latency_ms_max: int = 0
    # Share of payments declined, in parts per million (0 .. 1,000,000).
    decline_ppm: int = 0
    # Share of calls that time out, in parts per million. A time-out may
    # happen before or after the channel acted: both are simulated.
    timeout_ppm: int = 0
    # How long a timed-out call waits before raising, milliseconds.
    timeout_ms: int = 50
    seed: int = 0
    # The channel's fee on a payment, parts per million of the amount (6,000
    # is 0.6%), rounded half up to the minor unit; refunds give back their share.
    fee_ppm: int = 6000
    # Payments remembered; beyond this the oldest are forgotten.
    payments_max: int = SIMULATED_PAYMENTS_MAX

    def __post_init__(self):
        for name in ("decline_ppm", "timeout_ppm", "fee_ppm"):
            value = getattr(self, name)
            if not 0 <= value <= 1_000_000:
                raise ValueError(f"{name} must be within 0 .. 1000000 parts per million, got {value}")
        if self.payments_max < 1:
            raise ValueError(f"payments_max must be at least 1, got {self.payments_max}")
        if not 0 <= self.latency_ms_min <= self.latency_ms_max:
            raise ValueError("latency_ms_min must be within 0 .. latency_ms_max")


class _Payment(msgspec.Struct):
    amount_minor: int
    refunded_minor: int = 0
    reversed: bool = False
    # refund reference -> (amount, when the channel booked it); None until
    # the first refund (most payments have none: no empty dict each).
    refunds: dict | None = None
    # When the channel booked the payment and the reversal, ms since the epoch.
    paid_ms: int = 0
    reversed_ms: int = 0
    # Fault: the statement shows the amount less the fee.
    net_of_fee: bool = False


# Scripted outcomes of the next calls (SimulatedChannel.script).
TIMEOUT_AFTER_ACT = "timeout_after_act"
TIMEOUT_BEFORE_ACT = "timeout_before_act"


class SimulatedChannel:
    def __init__(self, name: str, settings: SimulatorSettings):
        self.name = name
        self.settings = settings
        self.random = random.Random(settings.seed)
        self.payments: dict[int, _Payment] = {}
        # Payments forgotten past payments_max (their statement rows with them).
        self.forgotten = 0
        self.calls = 0
        # The channel's clock; a generated day sets its own.
        self.clock_ms = lambda: time.time_ns() // 1_000_000
        self.scripted: dict[str, list[str]] = {}
        # refund reference -> ms the channel books it after the call.
        self.late_refunds_ms: dict[int, int] = {}

    async def _delay(self):
        self.calls += 1
        low, high = self.settings.latency_ms_min, self.settings.latency_ms_max
        if high:
            await asyncio.sleep(self.random.uniform(low, high) / 1000)

    def _roll(self, ppm: int) -> bool:
        return ppm > 0 and self.random.randrange(1_000_000) < ppm

    def script(self, call: str, *outcomes: str):
        """Force the outcome of the next calls of `call` ("pay", "reverse",
        "refund"): TIMEOUT_AFTER_ACT (the channel acted, the answer was lost)
        or TIMEOUT_BEFORE_ACT (the request was lost), one per call."""
        assert all(outcome in (TIMEOUT_AFTER_ACT, TIMEOUT_BEFORE_ACT) for outcome in outcomes)
        self.scripted.setdefault(call, []).extend(outcomes)

    def book_refund_late(self, refund_reference: int, delay_ms: int):
        """The channel will book this refund `delay_ms` after it is asked."""
        self.late_refunds_ms[refund_reference] = delay_ms

    def report_net_of_fee(self, reference: int):
        """The statement will show this payment's amount less the fee."""
        self.payments[reference].net_of_fee = True

    def _remember(self, reference: int, payment: _Payment) -> _Payment:
        """Keep a new payment, forgetting the oldest beyond the bound."""
        self.payments[reference] = payment
        if len(self.payments) > self.settings.payments_max:
            del self.payments[next(iter(self.payments))]
            self.forgotten += 1
        return payment

    async def _maybe_time_out(self, act, call: str = ""):
        """Run `act` (the channel's side effect), possibly timing out before
        or after it, as a real network would."""
        forced = self.scripted.get(call)
        if forced:
            outcome = forced.pop(0)
            if outcome == TIMEOUT_AFTER_ACT:
                act()
            await asyncio.sleep(self.settings.timeout_ms / 1000)
            raise ChannelTimeout(f"{self.name}: no answer within {self.settings.timeout_ms} ms (scripted)")
        if self._roll(self.settings.timeout_ppm):
            acted_first = self.random.random() < 0.5
            if acted_first:
                act()
            await asyncio.sleep(self.settings.timeout_ms / 1000)
            raise ChannelTimeout(f"{self.name}: no answer within {self.settings.timeout_ms} ms")
        return act()

    async def pay(self, reference: int, amount_minor: int) -> ChannelAnswer:
        assert amount_minor > 0
        await self._delay()

        def act():
            existing = self.payments.get(reference)
            if existing is not None:
                if existing.reversed:
                    return ChannelAnswer(ChannelOutcome.DECLINED, reason="payment was reversed")
                return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-{reference}")
            if self._roll(self.settings.decline_ppm):
                return ChannelAnswer(ChannelOutcome.DECLINED, reason="declined by issuer")
            self._remember(reference, _Payment(amount_minor, paid_ms=self.clock_ms()))
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-{reference}")

        return await self._maybe_time_out(act, "pay")

    async def query(self, reference: int) -> ChannelAnswer:
        await self._delay()
        payment = self.payments.get(reference)
        if payment is None:
            return ChannelAnswer(ChannelOutcome.NOT_FOUND)
        return ChannelAnswer(
            ChannelOutcome.APPROVED,
            channel_reference=f"{self.name}-{reference}",
            amount_minor=payment.amount_minor,
            refunded_minor=payment.refunded_minor,
            reversed=payment.reversed,
        )

    async def reverse(self, reference: int) -> ChannelAnswer:
        await self._delay()

        def act():
            payment = self.payments.get(reference)
            if payment is None:
                payment = self._remember(reference, _Payment(0))
            if not payment.reversed:
                payment.reversed = True
                payment.reversed_ms = self.clock_ms()
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-{reference}")

        return await self._maybe_time_out(act, "reverse")

    async def void(self, reference: int) -> ChannelAnswer:
        return await self.reverse(reference)

    async def refund(self, reference: int, refund_reference: int, amount_minor: int) -> ChannelAnswer:
        assert amount_minor > 0
        await self._delay()

        def act():
            payment = self.payments.get(reference)
            if payment is None or payment.reversed:
                return ChannelAnswer(ChannelOutcome.DECLINED, reason="no such payment")
            if payment.refunds is not None and refund_reference in payment.refunds:
                return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-r{refund_reference}")
            if payment.refunded_minor + amount_minor > payment.amount_minor:
                return ChannelAnswer(ChannelOutcome.DECLINED, reason="refund exceeds payment")
            if payment.refunds is None:
                payment.refunds = {}
            payment.refunds[refund_reference] = (amount_minor, self.clock_ms() + self.late_refunds_ms.get(refund_reference, 0))
            payment.refunded_minor += amount_minor
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-r{refund_reference}")

        return await self._maybe_time_out(act, "refund")

    # ------------------------------------------------------------ statements

    def fee_minor(self, amount_minor: int) -> int:
        return (amount_minor * self.settings.fee_ppm + 500_000) // 1_000_000

    def statement_rows(self, day: int, utc_offset_minutes: int) -> list:
        """What the channel booked on local calendar day `day`, as rows."""
        from core.settlement.model import RowKind, RowStatus, StatementRow
        from core.settlement.money import local_day

        rows = []
        for reference, payment in sorted(self.payments.items()):
            if payment.amount_minor == 0:
                continue  # a reversal of a payment the channel never took
            fee = self.fee_minor(payment.amount_minor)
            same_day_revoke = payment.reversed and local_day(payment.reversed_ms, utc_offset_minutes) == local_day(payment.paid_ms, utc_offset_minutes)
            if local_day(payment.paid_ms, utc_offset_minutes) == day:
                amount = payment.amount_minor - fee if payment.net_of_fee else payment.amount_minor
                rows.append(StatementRow(
                    line=0, kind=RowKind.PAYMENT, status=RowStatus.REVOKED if same_day_revoke else RowStatus.SUCCESS,
                    reference=reference, refund_reference=0, channel_trade_no=f"{4200000000 + reference}",
                    amount_minor=amount, fee_minor=fee, time_ms=payment.paid_ms,
                ))
            if payment.reversed and not same_day_revoke and local_day(payment.reversed_ms, utc_offset_minutes) == day:
                rows.append(StatementRow(
                    line=0, kind=RowKind.REFUND, status=RowStatus.SUCCESS, reference=reference, refund_reference=reference,
                    channel_trade_no=f"{5000000000 + reference}", amount_minor=payment.amount_minor, fee_minor=-fee,
                    time_ms=payment.reversed_ms,
                ))
            for refund_reference, (amount, booked_ms) in (payment.refunds or {}).items():
                if local_day(booked_ms, utc_offset_minutes) == day:
                    rows.append(StatementRow(
                        line=0, kind=RowKind.REFUND, status=RowStatus.SUCCESS, reference=reference,
                        refund_reference=refund_reference, channel_trade_no=f"{5000000000 + refund_reference}",
                        amount_minor=amount, fee_minor=-self.fee_minor(amount), time_ms=booked_ms,
                    ))
        rows.sort(key=lambda row: (row.time_ms, row.reference, row.refund_reference))
        return rows

    def statement(self, day: int, utc_offset_minutes: int | None = None, merchant_id: str = "1900000001"):
        """The channel's statement of local day `day` (core.settlement.model.Statement)."""
        from core.results import Channel
        from core.settlement.model import Statement, totals_of
        from core.settlement.statements import FORMATS

        channel = Channel[self.name.upper()]
        offset = FORMATS[channel].UTC_OFFSET_MINUTES if utc_offset_minutes is None else utc_offset_minutes
        rows = tuple(self.statement_rows(day, offset))
        return Statement(channel=channel, day=day, merchant_id=merchant_id, rows=rows, totals=totals_of(rows))

    def statement_file(self, day: int, utc_offset_minutes: int | None = None) -> bytes:
        """The statement of `day` in the channel's real format, as downloaded."""
        from core.settlement.statements import write_statement

        return write_statement(self.statement(day, utc_offset_minutes), utc_offset_minutes)
