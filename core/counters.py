"""Counters the kernel keeps so that nothing is oversold or over-used.

Owns: the counter key layout, the scopes a counter belongs to, and the
CounterTake a promotion or a risk rule asks the kernel for.
Used by: core.promotions and core.risk (they decide which counters a sale
touches), server code that turns takes into COUNTER ops linked to the sale,
the kernel and the reference (which apply them).

One counter is a signed integer under a 21-byte key (scope, owner, subject,
period). A COUNTER op adds `delta` to it and is refused unless the new value
stays within 0 <= value <= ceiling (ceiling 0: no upper bound). The same rule
serves every use:
- stock or total count: value counts what was used, ceiling is the stock;
- a budget: value counts minor units spent, ceiling is the budget;
- a per-customer or per-period use count: subject is the card, period the day
  (or hour, minute), ceiling the allowed count;
- a balance such as lottery chances: grants add, draws subtract; the floor of
  zero refuses a draw without a chance.

Counter ops are linked to the sale they belong to (the LINKED flag on every
op of the chain but the last): the kernel applies all of them or none, after
the sale itself is approved, and gives them back when that sale is voided,
reversed or aborted.
"""

import enum
import struct
from collections.abc import Sequence

import msgspec

from core.records import Op
from core.results import OpKind

COUNTER_KEY = struct.Struct(">BQQI")
COUNTER_VALUE = struct.Struct("<q")
# txn_counters: what a sale took, one entry per counter, to give it back.
TXN_COUNTER_ENTRY = struct.Struct("<21sq")
PACKET_SHARE_KEY = struct.Struct(">QI")
PACKET_SHARE_VALUE = struct.Struct("<q")


class CounterScope(enum.IntEnum):
    """What the owner id of a counter names."""

    PROMOTION_STOCK = 1       # owner: promotion; goods or coupon stock used
    PROMOTION_BUDGET = 2      # owner: promotion; minor units of discount given
    PROMOTION_USES = 3        # owner: promotion; subject: card; uses per customer
    COUPON_USED = 4           # owner: coupon id; used once (ceiling 1)
    COUPON_ISSUED = 5         # owner: promotion; coupons issued (total count)
    PACKET_CLAIMS = 6         # owner: red packet; shares claimed
    PACKET_CLAIMER = 7        # owner: red packet; subject: card; ceiling 1
    LOTTERY_CHANCES = 8       # owner: lottery; subject: card; chances held
    LOTTERY_PRIZE = 9         # owner: lottery; subject: prize; prizes given
    RISK_VELOCITY = 10        # owner: risk rule; subject: card; period: window
    # Set once (ceiling = delta = the value), so that a retry is refused and
    # finds the first call's outcome: core/promotions/lottery.py.
    LOTTERY_DRAW = 11         # owner: lottery; subject: card; period: the caller's draw number; the outcome
    LOTTERY_GRANT = 12        # owner: lottery; subject: card; period: the caller's grant number; chances given


class CounterTake(msgspec.Struct, frozen=True):
    """One counter change a sale (or a claim, a draw) needs.

    rule names the promotion or risk rule behind it, for the decline text:
    when this take is refused, the answer says which rule refused it.
    """

    scope: int
    owner: int
    subject: int = 0
    period: int = 0
    delta: int = 1
    ceiling: int = 0
    rule: str = ""

    def key(self) -> bytes:
        return counter_key(self.scope, self.owner, self.subject, self.period)


def counter_key(scope: int, owner: int, subject: int = 0, period: int = 0) -> bytes:
    return COUNTER_KEY.pack(scope, owner, subject, period)


def parse_counter_key(key: bytes) -> tuple[int, int, int, int]:
    return COUNTER_KEY.unpack(key)


def packet_share_key(packet_id: int, index: int) -> bytes:
    return PACKET_SHARE_KEY.pack(packet_id, index)


def counter_op(take: CounterTake, link: int) -> Op:
    return Op(
        kind=OpKind.COUNTER,
        account_kind=take.scope,
        item_id=take.owner,
        card_id=take.subject,
        period=take.period,
        amount=take.delta,
        limit_per_day=take.ceiling,
        link=link,
    )


def chain(takes: Sequence[CounterTake], main: Op | None) -> list[Op]:
    """The ops of one linked chain: the counter takes, then the main op.
    Every op but the last carries link=1."""
    ops = [counter_op(take, 1) for take in takes]
    if main is not None:
        ops.append(msgspec.structs.replace(main, link=0))
    if ops:
        ops[-1] = msgspec.structs.replace(ops[-1], link=0)
    return ops


def packet_claim_op(packet_id: int, card_id: int, share_count: int, terminal_id: int, serial: int, station_id: int, fingerprint: bytes = bytes(16)) -> Op:
    """Claim the next share of a red packet for a card (idempotent by (terminal, serial))."""
    return Op(
        kind=OpKind.PACKET_CLAIM,
        item_id=packet_id,
        card_id=card_id,
        count_limit=share_count,
        terminal_id=terminal_id,
        serial=serial,
        station_id=station_id,
        fingerprint=fingerprint,
    )


def budget_takes(txn, store, txn_id: int) -> list[tuple[int, int]]:
    """(promotion_id, minor units) of every promotion budget a transaction
    took and still holds: the discounts it was given (core/promotions:
    a promotion's budget take is its discount)."""
    entries = txn.get(txn_id.to_bytes(8, "big"), db=store.txn_counters)
    if entries is None:
        return []
    found = []
    for key, delta in TXN_COUNTER_ENTRY.iter_unpack(entries):
        scope, owner, _, _ = parse_counter_key(key)
        if scope == CounterScope.PROMOTION_BUDGET:
            found.append((owner, delta))
    return found
