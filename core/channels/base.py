"""The interface of an external channel and the answers it gives."""

import enum
from typing import Protocol

import msgspec


class ChannelOutcome(enum.IntEnum):
    APPROVED = 1
    DECLINED = 2
    # The channel has no record of the reference (query).
    NOT_FOUND = 3


class ChannelAnswer(msgspec.Struct, frozen=True):
    outcome: ChannelOutcome
    # The channel's own id for the payment or refund ("" when declined).
    channel_reference: str = ""
    reason: str = ""
    # Query: what the channel holds for the reference, minor units.
    amount_minor: int = 0
    refunded_minor: int = 0
    reversed: bool = False


class ChannelTimeout(Exception):
    """The channel did not answer in time; what it did is unknown until a
    query or a reversal settles it."""


class ChannelAdapter(Protocol):
    """Every call is idempotent on its reference: Tally's transaction id."""

    name: str

    async def pay(self, reference: int, amount_minor: int) -> ChannelAnswer: ...

    async def query(self, reference: int) -> ChannelAnswer: ...

    async def reverse(self, reference: int) -> ChannelAnswer:
        """Undo a payment whatever its state (also one never received)."""
        ...

    async def void(self, reference: int) -> ChannelAnswer: ...

    async def refund(self, reference: int, refund_reference: int, amount_minor: int) -> ChannelAnswer: ...
