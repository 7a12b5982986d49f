"""External payment channels: banks and wallets, behind one interface.

Owns: the ChannelAdapter interface every channel implements, the answers it
gives, and `build_channels`, which makes the adapters a server uses.
Used by: server/payments.py (pay, reverse, void, refund; never inside a write
transaction), server recovery (query), reconciliation later (statements).

Tally never calls a channel inside a write transaction. A payment with a
channel part is: hold the internal part (commit), call the channel, then
post or release (commit). A channel that times out leaves no money moved.
"""

from core.channels.base import ChannelAdapter, ChannelAnswer, ChannelOutcome, ChannelTimeout
from core.channels.simulator import SimulatedChannel, SimulatorSettings

__all__ = [
    "ChannelAdapter",
    "ChannelAnswer",
    "ChannelOutcome",
    "ChannelTimeout",
    "SimulatedChannel",
    "SimulatorSettings",
    "build_channels",
]


def build_channels(settings: SimulatorSettings | None = None) -> dict[int, ChannelAdapter]:
    """The channels by core.results.Channel number. Only simulators ship;
    a real bank or wallet adapter implements ChannelAdapter the same way."""
    from core.results import Channel

    settings = settings or SimulatorSettings()
    return {
        int(channel): SimulatedChannel(channel.name.lower(), settings)
        for channel in (Channel.BANK_CARD, Channel.WECHAT_PAY, Channel.ALIPAY)
    }
