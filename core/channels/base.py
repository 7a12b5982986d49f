"""The interface of an external channel (a bank, a wallet) and the answers it gives.

For adapter writers: a channel adapter is a class with the five coroutines
of ChannelAdapter below and a `name`, made by a factory that Tally finds
through the Python entry point group "tally.channels" (core/channels/__init__.py):

    # acme_wallet/__init__.py
    from core.channels import ChannelAdapter, ChannelAnswer, ChannelContext, ChannelOutcome, ChannelTimeout

    class AcmeWallet:
        def __init__(self, context: ChannelContext):
            self.name = f"acme-{context.channel}"
            ...                          # credentials: the adapter's own configuration

        async def pay(self, reference, amount_minor): ...

    def acme_wallet(context: ChannelContext) -> ChannelAdapter:
        return AcmeWallet(context)

    # the adapter's pyproject.toml
    [project.entry-points."tally.channels"]
    acme = "acme_wallet:acme_wallet"

and the server runs it for a channel with `--channel-adapter wechat_pay=acme`
(or `channel-adapter = ["wechat_pay=acme"]` in its config file). What every
adapter must keep:
  - `reference` is Tally's transaction id, the same on every retry: each call
    is idempotent on it (a second pay of a reference answers the first
    outcome and takes no money twice). It is also the order number the
    channel prints on its statement (商户订单号; a refund's row carries the
    refund's own id), which reconciliation matches on.
  - Tally never calls an adapter inside a write transaction; it bounds every
    call by its own timeout (--channel-timeout-ms). An adapter that cannot
    tell whether the channel acted raises ChannelTimeout: Tally then
    reverses (reverse) or asks (query) until the channel says.
  - reverse undoes a payment whatever its state, also one the channel never
    received (it must then refuse a late pay of that reference); void is the
    same-day cancellation; refund(reference, refund_reference, amount) gives
    back part of a payment, idempotent on refund_reference.
  - query answers what the channel holds for a reference (NOT_FOUND if
    nothing): Tally asks after a restart for payments left waiting.
  - Amounts are integer minor units, never floats.
"""

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
