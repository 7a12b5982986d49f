"""Counters for the server's promotion and risk code.

Owns: turning CounterTakes (core/counters.py) and the operation they belong
to into one linked chain for the group committer, and reading live values.
Used by: server/payments.py (promotions and velocity limits linked to a
sale), server/promotion_service.py (coupons, red packets, lottery draws).

A chain commits whole or not at all; the outcome names the rule of the take
the kernel refused, so that a decline can say which rule declined it.
"""

from collections.abc import Sequence

import msgspec

from core.commit import GroupCommitter
from core.counters import COUNTER_VALUE, CounterTake, chain
from core.ledger import Ledger
from core.records import Op, Result
from core.results import ResultCode

REFUSING_CODES = (ResultCode.COUNTER_LIMIT_REACHED, ResultCode.COUNTER_EXHAUSTED)


class ChainOutcome(msgspec.Struct):
    """code: APPROVED, the refusing counter's code, or the main op's code.
    refused_by: the rule of the refused take ("" when none was refused).
    values: each take's counter value after the chain (empty if refused).
    main: the main operation's Result, or None for a chain of counters only."""

    code: int
    refused_by: str = ""
    values: list[int] = msgspec.field(default_factory=list)
    main: Result | None = None


class CounterClient:
    def __init__(self, committer: GroupCommitter, ledger: Ledger):
        self.committer = committer
        self.ledger = ledger

    async def take(self, takes: Sequence[CounterTake], main: Op | None = None) -> ChainOutcome:
        """Apply the takes linked to `main` (or alone). Raises QueueFull or
        ShuttingDown like GroupCommitter.submit."""
        assert takes or main is not None
        if not takes:
            result = await self.committer.submit(main)
            return ChainOutcome(code=result.code, main=result)
        results = await self.committer.submit_chain(chain(takes, main))
        return outcome_of(takes, results, main is not None)

    def read(self, takes: Sequence[CounterTake]) -> list[int]:
        """Live values of the takes' counters (a committed snapshot)."""
        with self.ledger.store.env.begin() as txn:
            values = [txn.get(take.key(), db=self.ledger.store.counters) for take in takes]
        return [0 if value is None else COUNTER_VALUE.unpack(value)[0] for value in values]


def outcome_of(takes: Sequence[CounterTake], results: list[Result], has_main: bool) -> ChainOutcome:
    main = results[-1] if has_main else None
    for take, result in zip(takes, results):
        if result.code in REFUSING_CODES:
            return ChainOutcome(code=result.code, refused_by=take.rule, main=main)
    if main is not None and main.code not in (ResultCode.APPROVED, ResultCode.PENDING):
        return ChainOutcome(code=main.code, main=main)
    code = ResultCode.APPROVED if main is None else main.code
    return ChainOutcome(code=code, values=[result.amount for result in results[: len(takes)]], main=main)
