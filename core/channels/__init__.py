"""External payment channels: banks and wallets, behind one interface.

Owns: the ChannelAdapter interface every channel implements (base.py, with
the rules an adapter writer must keep), the answers it gives, and
`build_channels`, which makes the adapters a server uses. Adapters are
found through the Python entry point group "tally.channels": each entry is
a factory `factory(context: ChannelContext) -> ChannelAdapter`, by name.
Tally's own distribution registers "simulator" (the built-in simulated
bank and wallets); a bank's or wallet's adapter is its own distribution
registering its own name, installed beside Tally, never an edit of Tally.
The server picks one per channel (--channel-adapter CHANNEL=NAME; default:
the simulator for every channel).
Used by: server/payments.py (pay, reverse, void, refund; never inside a write
transaction), server recovery (query), reconciliation later (statements).

Tally never calls a channel inside a write transaction. A payment with a
channel part is: hold the internal part (commit), call the channel, then
post or release (commit). A channel that times out leaves no money moved.
"""

from importlib.metadata import entry_points

import msgspec

from core.channels.base import ChannelAdapter, ChannelAnswer, ChannelOutcome, ChannelTimeout
from core.channels.simulator import SimulatedChannel, SimulatorSettings
from core.errors import InvalidInput
from core.results import Channel

__all__ = [
    "ChannelAdapter",
    "ChannelAnswer",
    "ChannelContext",
    "ChannelOutcome",
    "ChannelTimeout",
    "SimulatedChannel",
    "SimulatorSettings",
    "adapter_names",
    "build_channels",
]

ENTRY_POINT_GROUP = "tally.channels"
BUILT_IN_ADAPTER = "simulator"
# Tally's channels by their number (core.results.Channel, tally.v1.Channel):
# the names --channel-adapter and ChannelContext.channel use.
CHANNEL_NUMBERS = {channel.name.lower(): int(channel) for channel in (Channel.BANK_CARD, Channel.WECHAT_PAY, Channel.ALIPAY)}


class ChannelContext(msgspec.Struct, frozen=True):
    """What an adapter factory is given to make the adapter of one channel."""

    # Which of Tally's channels the adapter serves: "bank_card", "wechat_pay"
    # or "alipay" (tally.v1.Channel, lower case).
    channel: str
    # The longest the server waits for one call (--channel-timeout-ms): an
    # adapter's own network time-outs should be shorter.
    timeout_ms: int = 5000
    # The simulator's settings (latency, declines, time-outs): only the
    # built-in adapter reads them.
    simulator: SimulatorSettings = SimulatorSettings()


def simulated_channel(context: ChannelContext) -> ChannelAdapter:
    """The built-in adapter ("simulator"): a simulated bank or wallet."""
    return SimulatedChannel(context.channel, context.simulator)


def _factories() -> dict:
    """name -> entry point (or the built-in factory when Tally runs from a
    checkout that was never installed, so no entry point is registered)."""
    found = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    found.setdefault(BUILT_IN_ADAPTER, simulated_channel)
    return found


def adapter_names() -> list[str]:
    return sorted(_factories())


def parse_adapter_choice(text: str) -> tuple[str, str]:
    """"wechat_pay=acme" -> ("wechat_pay", "acme"), the channel checked."""
    channel, _, name = text.partition("=")
    if channel not in CHANNEL_NUMBERS or not name:
        raise InvalidInput("--channel-adapter", f"CHANNEL=NAME with CHANNEL one of {', '.join(CHANNEL_NUMBERS)}, got {text!r}")
    return channel, name


def build_channels(settings: SimulatorSettings | None = None, adapters: dict[str, str] | None = None,
                   timeout_ms: int = 5000) -> dict[int, ChannelAdapter]:
    """The channels by core.results.Channel number. `adapters`: channel name
    -> adapter name (entry point); a channel not named gets the simulator."""
    adapters = adapters or {}
    for channel in adapters:
        if channel not in CHANNEL_NUMBERS:
            raise InvalidInput("--channel-adapter", f"no channel {channel!r}: one of {', '.join(CHANNEL_NUMBERS)}")
    factories = _factories()
    built = {}
    for channel, number in CHANNEL_NUMBERS.items():
        name = adapters.get(channel, BUILT_IN_ADAPTER)
        if name not in factories:
            raise InvalidInput("--channel-adapter", f"{channel}={name}: no adapter {name!r} is installed "
                               f"(entry points of {ENTRY_POINT_GROUP}: {', '.join(sorted(factories))})")
        factory = factories[name]
        if hasattr(factory, "load"):
            factory = factory.load()
        built[number] = factory(ChannelContext(channel, timeout_ms, settings or SimulatorSettings()))
    return built
