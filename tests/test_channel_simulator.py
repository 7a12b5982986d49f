"""The shipped channel simulator (the mock of the banks and wallets outside
the system): its memory of payments is bounded, oldest forgotten first."""

import asyncio

import pytest

from core.channels.base import ChannelOutcome
from core.channels.simulator import SimulatedChannel, SimulatorSettings


def test_the_simulator_forgets_its_oldest_payments_beyond_its_bound():
    channel = SimulatedChannel("wechat", SimulatorSettings(payments_max=3))

    async def scenario():
        for reference in range(1, 6):
            assert (await channel.pay(reference, 100)).outcome == ChannelOutcome.APPROVED
        return [(await channel.query(reference)).outcome for reference in range(1, 6)]

    outcomes = asyncio.run(scenario())
    assert sorted(channel.payments) == [3, 4, 5]
    assert channel.forgotten == 2
    assert outcomes[2:] == [ChannelOutcome.APPROVED] * 3
    assert ChannelOutcome.APPROVED not in outcomes[:2]


def test_reversals_of_payments_it_never_took_count_against_the_same_bound():
    channel = SimulatedChannel("alipay", SimulatorSettings(payments_max=3))

    async def scenario():
        for reference in range(1, 6):
            assert (await channel.reverse(reference)).outcome == ChannelOutcome.APPROVED
        # A payment that arrives after its reversal is still declined.
        return (await channel.pay(5, 100)).outcome

    assert asyncio.run(scenario()) == ChannelOutcome.DECLINED
    assert sorted(channel.payments) == [3, 4, 5]


def test_a_simulator_must_remember_at_least_one_payment():
    with pytest.raises(ValueError, match="payments_max must be at least 1, got 0"):
        SimulatorSettings(payments_max=0)
