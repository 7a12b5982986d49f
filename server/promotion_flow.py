"""Promotions and risk inside a Pay: price, link the counters, retry.

Owns: what a sale does between validation and its answer when promotions or
risk rules are in force: the blacklist check, pricing the basket under the
stacking policy (core/promotions/pricing.py), the counters the sale links to
its PAY (promotion budget and stock, coupon use, lottery chances, velocity
limits: core/counters.py), and pricing again without a promotion the kernel
found used up. Also the answer's itemised promotions, read back from what
the transaction really took, so a retried request answers the same.
A sale sees only what reaches its station (core/domains.py): the network's
promotions and lotteries and those of the station's organisations, its
domain's stacking policy and velocity limits.
Used by: server/payments.py.

Why price again: the snapshot pricing reads may be a moment old, and many
sales race for the same stock; the kernel is the judge. When it refuses a
promotion's counter, the sale is priced without that promotion, at most
PRICING_ATTEMPTS_MAX times; a refused risk limit declines the sale, naming
the rule.
"""

from collections.abc import Callable
from typing import NamedTuple

import msgspec

from core import limits
from core.counters import CounterScope, CounterTake
from core.ledger import Ledger
from core.promotions import lottery
from core.promotions.model import PromotionKind
from core.promotions.pricing import Pricing, refusal_key
from core.risk.rules import LIMITS_PER_OPERATION_MAX
from core.records import Op, Result
from core.results import OpKind, ResultCode
from server.counter_client import CounterClient
from core.errors import InvalidInput
from core.promotions.model import CouponTrigger
from server.promotion_service import PromotionService
from server.risk_service import RiskHolder
from tally.v1 import payment_pb2

PRICING_ATTEMPTS_MAX = 4
# Lotteries whose chances one sale earns (the first ones, by id); with
# LIMITS_PER_OPERATION_MAX velocity takes this leaves pricing six takes.
CHANCE_TAKES_MAX = 2
COUPON_CODES_PER_SALE_MAX = 4
REFUSED_REASON = "used up: the kernel refused its counter (stock, budget or uses)"


class SaleOutcome(msgspec.Struct):
    """The sale's result (PENDING if a channel still has to answer) and, when
    a limit or the blacklist declined it, the rule that did."""

    result: Result
    declined_by: str = ""
    # Whether promotions were priced (else the answer has none to itemise).
    priced: bool = True


class PromotionFlow:
    def __init__(self, ledger: Ledger, service: PromotionService, risk: RiskHolder, clock: Callable[[], int]):
        self.ledger = ledger
        self.service = service
        self.counters = service.counters
        self.holder = service.holder
        self.risk = risk
        self.clock = clock
        self.committer = self.counters.committer
        self._lotteries_of = (None, ())
        self._issuing_of = (None, frozenset())

    async def pay(self, request, build_op: Callable[[int, list], Op]) -> SaleOutcome:
        """build_op(amount_minor, lines) -> the PAY for what is left to pay,
        with the basket lines after discounts (for the points it earns).
        An approved sale is shown to the risk flags (which never decline)."""
        outcome = await self._pay(request, build_op)
        result = outcome.result
        if result.code == ResultCode.APPROVED and result.card_id:
            await self.risk.observe_sale(result.card_id, request.terminal.station_id, result.amount, self.clock())
        return outcome

    async def _pay(self, request, build_op: Callable[[int, list], Op]) -> SaleOutcome:
        if len(request.coupon_codes) > COUPON_CODES_PER_SALE_MAX:
            raise InvalidInput("coupon_codes", f"at most {COUPON_CODES_PER_SALE_MAX} codes")
        card_id = request.plan.card_id
        now_ms = self.clock()
        entry = self.risk.blocking_entry(card_id, now_ms) if card_id else None
        if entry is not None:
            declined = self.ledger.sale_declined(ResultCode.CARD_BLACKLISTED, OpKind.PAY, card_id, request.amount_minor,
                                                 request.terminal.station_id, now_ms, self.committer.utc_offset_minutes)
            return SaleOutcome(declined, entry.rule)
        lotteries = self._lotteries()
        if not (request.coupon_codes or self.holder.snapshot.priced or lotteries or self.risk.any_limits):
            # Nothing to price or count: the plain path, no chain.
            return SaleOutcome(await self.committer.submit(build_op(request.amount_minor, list(request.basket))), priced=False)
        refused: dict[str, str] = {}
        station_id = request.terminal.station_id
        # Only the lotteries of the station's organisations (or the network's) count.
        lotteries = self.holder.reaching(lotteries, station_id) if lotteries else lotteries
        for _ in range(PRICING_ATTEMPTS_MAX):
            pricing = self._price(request, now_ms, refused)
            op = build_op(pricing.amount_minor, discounted_lines(request.basket, pricing))
            risk_takes = self.risk.sale_takes(card_id, now_ms, pricing.amount_minor, op.earn_points, station_id)
            chance_takes = lottery.chance_takes(lotteries, card_id, pricing.amount_minor, station_id, now_ms)
            # Velocity takes first and never dropped; pricing left room for
            # them and for CHANCE_TAKES_MAX lotteries' chances.
            takes = [*risk_takes, *chance_takes[:CHANCE_TAKES_MAX], *pricing.takes]
            assert len(takes) <= limits.COUNTER_TAKES_PER_SALE_MAX, "pricing was given the room the other takes leave"
            outcome = await self.counters.take(takes, op)
            if not outcome.refused_by:
                return SaleOutcome(outcome.main)
            if any(take.rule == outcome.refused_by for take in risk_takes):
                return SaleOutcome(_declined(outcome.main, outcome.code), outcome.refused_by)
            refused[refusal_key(outcome.refused_by)] = REFUSED_REASON
        return SaleOutcome(_declined(outcome.main, outcome.code), outcome.refused_by)

    def plain_at(self, station_id: int) -> bool:
        """Whether any Pay without coupon codes at the station takes _pay's
        plain branch and nothing after it: nothing priced, no lotteries, no
        velocity limits, no flag rules at the station, no coupons issued on
        purchase (server/payline.py). A card on the blacklist is looked for
        per Pay (PayLine.blocked), as _pay does before its plain branch."""
        snapshot = self.holder.snapshot
        if snapshot.priced or self._lotteries() or self.risk.any_limits:
            return False
        if self.risk.flags_at(station_id).enabled:
            return False
        self._issuing(snapshot)
        return CouponTrigger.PURCHASE not in self._issuing_of[1]

    def _issuing(self, snapshot):
        """The triggers the snapshot's coupons are issued on, found once per snapshot."""
        if self._issuing_of[0] is not snapshot:
            triggers = frozenset(p.coupon.issue_on for p in snapshot.by_id.values() if p.kind == PromotionKind.COUPON)
            self._issuing_of = (snapshot, triggers)

    async def issue_coupons(self, trigger: CouponTrigger, result: Result, station_id: int) -> list[str]:
        """Codes of the coupons an approved sale or top-up issues to its card
        (once per transaction); nothing when no promotion issues on it."""
        self._issuing(self.holder.snapshot)
        if trigger not in self._issuing_of[1] or result.code != ResultCode.APPROVED or not result.card_id:
            return []
        issued = await self.service.issue_on_event(trigger, result.amount, station_id, result.card_id, result.txn_id)
        return [coupon.code for coupon in issued]

    def _lotteries(self) -> tuple:
        """The snapshot's lotteries, found once per snapshot."""
        snapshot = self.holder.snapshot
        if self._lotteries_of[0] is not snapshot:
            found = tuple(p for p in snapshot.by_id.values() if p.kind == PromotionKind.LOTTERY)
            self._lotteries_of = (snapshot, found)
        return self._lotteries_of[1]

    def _price(self, request, now_ms: int, refused: dict) -> Pricing:
        pricing, unknown = self.holder.price(
            self.ledger, request.basket, request.amount_minor, request.terminal.station_id, request.plan.card_id, now_ms,
            coupon_codes=list(request.coupon_codes), refused=refused,
            takes_max=limits.COUNTER_TAKES_PER_SALE_MAX - LIMITS_PER_OPERATION_MAX - CHANCE_TAKES_MAX,
        )
        if unknown:
            index = list(request.coupon_codes).index(unknown[0])
            raise InvalidInput(f"coupon_codes[{index}]", f"no coupon has the code {unknown[0]!r}")
        if pricing.amount_minor == 0:
            raise InvalidInput("amount_minor", "the promotions take off the whole amount: nothing is left to pay")
        return pricing

    def applied(self, result: Result) -> list[payment_pb2.PromotionApplied]:
        """What the sale's transaction took off, per promotion, from the
        counters it really took (a retry answers the first answer's items)."""
        if not result.txn_id or result.code not in (ResultCode.APPROVED, ResultCode.PENDING):
            return []
        coupons = {}
        items = []
        for (scope, owner, _, _), delta in self.ledger.txn_counters(result.txn_id):
            if scope == CounterScope.COUPON_USED:
                coupons[len(items) - 1] = owner
            if scope != CounterScope.PROMOTION_BUDGET:
                continue
            promotion = self.holder.snapshot.by_id.get(owner)
            items.append(payment_pb2.PromotionApplied(
                promotion_id=owner, discount_minor=delta,
                name=promotion.name if promotion else "", funder=promotion.funder if promotion else 0,
                funder_id=promotion.funder_id if promotion else 0,
            ))
        for index, coupon_id in coupons.items():
            if 0 <= index < len(items):
                items[index].coupon_id = coupon_id
        return items


def _declined(result: Result, code: int) -> Result:
    return msgspec.structs.replace(result, code=code)


class PricedLine(NamedTuple):
    """A basket line after discounts: what the loyalty rules earn on."""

    category: str
    amount_minor: int


def discounted_lines(basket, pricing: Pricing) -> list[PricedLine]:
    amounts = [line.amount_minor for line in basket]
    for applied in pricing.applied:
        for line in applied.lines:
            if line.line < len(amounts):
                amounts[line.line] -= line.discount_minor
    return [PricedLine(line.category, amount) for line, amount in zip(basket, amounts)]
