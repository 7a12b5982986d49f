"""A simulated bank or wallet, used by the tests, the benchmarks and the demo.

Latency, decline rate and time-outs are configurable; randomness is seeded so
that a test can ask for exact behaviour. The simulator keeps what it was
asked in memory, as a real channel would keep it on its side: payments by
reference, their refunds and reversals.
"""

import asyncio
import random

import msgspec

from core.channels.base import ChannelAnswer, ChannelOutcome, ChannelTimeout


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

    def __post_init__(self):
        for name in ("decline_ppm", "timeout_ppm"):
            value = getattr(self, name)
            if not 0 <= value <= 1_000_000:
                raise ValueError(f"{name} must be within 0 .. 1000000 parts per million, got {value}")
        if not 0 <= self.latency_ms_min <= self.latency_ms_max:
            raise ValueError("latency_ms_min must be within 0 .. latency_ms_max")


class _Payment(msgspec.Struct):
    amount_minor: int
    refunded_minor: int = 0
    reversed: bool = False
    refunds: dict = msgspec.field(default_factory=dict)


class SimulatedChannel:
    def __init__(self, name: str, settings: SimulatorSettings):
        self.name = name
        self.settings = settings
        self.random = random.Random(settings.seed)
        self.payments: dict[int, _Payment] = {}
        self.calls = 0

    async def _delay(self):
        self.calls += 1
        low, high = self.settings.latency_ms_min, self.settings.latency_ms_max
        if high:
            await asyncio.sleep(self.random.uniform(low, high) / 1000)

    def _roll(self, ppm: int) -> bool:
        return ppm > 0 and self.random.randrange(1_000_000) < ppm

    async def _maybe_time_out(self, act):
        """Run `act` (the channel's side effect), possibly timing out before
        or after it, as a real network would."""
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
            self.payments[reference] = _Payment(amount_minor)
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-{reference}")

        return await self._maybe_time_out(act)

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
            payment = self.payments.setdefault(reference, _Payment(0))
            payment.reversed = True
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-{reference}")

        return await self._maybe_time_out(act)

    async def void(self, reference: int) -> ChannelAnswer:
        return await self.reverse(reference)

    async def refund(self, reference: int, refund_reference: int, amount_minor: int) -> ChannelAnswer:
        assert amount_minor > 0
        await self._delay()

        def act():
            payment = self.payments.get(reference)
            if payment is None or payment.reversed:
                return ChannelAnswer(ChannelOutcome.DECLINED, reason="no such payment")
            if refund_reference in payment.refunds:
                return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-r{refund_reference}")
            if payment.refunded_minor + amount_minor > payment.amount_minor:
                return ChannelAnswer(ChannelOutcome.DECLINED, reason="refund exceeds payment")
            payment.refunds[refund_reference] = amount_minor
            payment.refunded_minor += amount_minor
            return ChannelAnswer(ChannelOutcome.APPROVED, channel_reference=f"{self.name}-r{refund_reference}")

        return await self._maybe_time_out(act)
