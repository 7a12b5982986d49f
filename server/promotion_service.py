"""PromotionService: promotions, pricing dry runs, coupons, red packets, lotteries.

Owns: the RPC handlers of tally.v1.PromotionService (validation naming the
field, answers), PromotionHolder (the in-memory snapshot of promotions that
pricing reads, refreshed when promotions change), the red packet expiry job,
and `add_promotion_services` (the wiring server/app.py calls).
Used by: server/app.py; server/payments.py prices a Pay with
`PromotionHolder.price` and links `Pricing.takes` to the PAY.

Rules are core/promotions/ and core/risk/ (pure Python); every counter that
must not oversell is taken by the kernel through server/counter_client.py,
linked to the operation it belongs to. Money moves only through the kernel.

Domains (core/domains.py): a staff caller sees and changes the promotions
of its organisation's subtree, and their coupons, packets and draws;
another's answer as an unknown id does. What a terminal prices, claims,
looks up or draws is only what reaches its station (the network's, or its
station's, region's or headquarters'); so is what any sale prices. The
stacking policy is its headquarters domain's.
"""

import asyncio
import functools
import logging
import struct
import time

import msgspec
from google.protobuf import json_format

from core import limits, once
from core.commit import GroupCommitter, QueueFull
from core.counters import CounterScope, CounterTake, chain, packet_claim_op
from core.domains import EVERYWHERE, NETWORK, Scope, StationTree, reaches, require_card, settings_domain_of
from core.errors import FailedPrecondition, InvalidInput, NotFound
from core.ledger import Ledger, business_day
from core.loyalty import jobs
from core.promotions import coupons, lottery, packets
from core.promotions import store as promotion_store
from core.replication.errors import ReplicationError
from core.promotions.model import (
    CouponTrigger,
    Draw,
    Packet,
    PacketState,
    Promotion,
    PromotionKind,
    StackingPolicy,
    Stage,
)
from core.promotions.pricing import Pricing, Sale, SaleLine, price_basket
from core.promotions.validation import PromotionError
from core.records import Op
from core.results import AccountKind, OpKind, PlanFlag, ResultCode, Tier
from server import answers, requests
from server.counter_client import CounterClient, outcome_of
from server.risk_service import RiskHolder, RiskService, require_by
from server.scope import staff_scope, station_of_request, terminal_station
from tally.v1 import promotion_pb2, promotion_pb2_grpc

log = logging.getLogger("tally.promotions")

PACKET_JOB_INTERVAL_S = 60.0
LIST_LIMIT_DEFAULT = 1000
ID_MAX = 2**63 - 1
OUTPUT_ONLY = ("stage", "history")
# What the `once` record of a CreatePacket keeps: the packet and the funding's ResultCode.
PACKET_ANSWER = struct.Struct(">QH")


# ---------------------------------------------------------------- messages


@functools.cache
def _promotion_type_info() -> msgspec.inspect.StructType:
    return msgspec.inspect.type_info(Promotion)


def promotion_from_message(message: promotion_pb2.Promotion) -> Promotion:
    """The typed promotion of a message. proto3 leaves out fields at zero,
    so a zero takes the record's default (1 coupon per issue, 30 days, ...)."""
    given = json_format.MessageToDict(message, preserving_proto_field_name=True, use_integers_for_enums=True)
    for name in OUTPUT_ONLY:
        given.pop(name, None)
    try:
        return msgspec.convert(with_zeros(given, _promotion_type_info()), Promotion, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidInput(validation_field("promotion", error), str(error)) from None


ZEROS = {msgspec.inspect.IntType: 0, msgspec.inspect.StrType: "", msgspec.inspect.BoolType: False, msgspec.inspect.VarTupleType: []}


def with_zeros(given: dict, info: msgspec.inspect.StructType) -> dict:
    """`given` with the zeros proto3 leaves out put back where the record
    has no default (so that validation, not decoding, names a bad zero),
    in nested records too."""
    filled = dict(given)
    for field in info.fields:
        kind = type(field.type)
        if field.name not in filled:
            if field.required and kind in ZEROS:
                filled[field.name] = ZEROS[kind]
            continue
        nested = field.type
        if isinstance(nested, msgspec.inspect.UnionType):
            nested = next((t for t in nested.types if isinstance(t, msgspec.inspect.StructType)), nested)
        if isinstance(nested, msgspec.inspect.StructType) and isinstance(filled[field.name], dict):
            filled[field.name] = with_zeros(filled[field.name], nested)
        elif isinstance(nested, msgspec.inspect.VarTupleType) and isinstance(nested.item_type, msgspec.inspect.StructType):
            filled[field.name] = [with_zeros(item, nested.item_type) if isinstance(item, dict) else item for item in filled[field.name]]
    return filled


def validation_field(prefix: str, error: msgspec.ValidationError) -> str:
    """msgspec says "... - at `$.goods.off_permille`": name that field."""
    text = str(error)
    if "`$." in text:
        return prefix + "." + text.rsplit("`$.", 1)[1].rstrip("`")
    if "missing required field `" in text:
        return prefix + "." + text.split("missing required field `", 1)[1].split("`", 1)[0]
    return prefix


def to_message(record, message_type):
    """A message from a record whose field names it shares."""
    data = msgspec.to_builtins(record)
    return json_format.ParseDict(_without_none(data), message_type(), ignore_unknown_fields=True)


def _without_none(data):
    if isinstance(data, dict):
        return {key: _without_none(value) for key, value in data.items() if value is not None}
    if isinstance(data, list):
        return [_without_none(value) for value in data]
    return data


def coupon_message(coupon, used: bool) -> promotion_pb2.Coupon:
    message = to_message(coupon, promotion_pb2.Coupon)
    message.used = used
    return message


def pricing_answer(pricing: Pricing, unknown_codes) -> promotion_pb2.PriceBasketAnswer:
    answer = to_message(pricing, promotion_pb2.PriceBasketAnswer)
    answer.unknown_codes.extend(unknown_codes)
    return answer


def decline(answer_type, code: int, rule: str = "", **fields):
    return answer_type(result=code, result_text=answers.result_text(code), rule=rule, **fields)


# ---------------------------------------------------------------- the snapshot


class PromotionHolder:
    """The promotions in force in this process, as a pricing Snapshot:
    rebuilt when saved here, and at most a second after another process
    (another --workers worker) saved a change (promotion_meta's version)."""

    REFRESH_INTERVAL_S = 1.0

    def __init__(self, store):
        self.store = store
        self.tree = StationTree(store)
        self._snapshot = promotion_store.load_snapshot(store)
        self._checked_at = time.monotonic()

    @property
    def snapshot(self) -> promotion_store.Snapshot:
        if time.monotonic() - self._checked_at > self.REFRESH_INTERVAL_S:
            self._checked_at = time.monotonic()
            if promotion_store.version(self.store) != self._snapshot.version:
                self._snapshot = promotion_store.load_snapshot(self.store, self._snapshot)
        return self._snapshot

    def reload(self, saved: Promotion | None = None):
        """After a change of ours: `saved`, the one promotion it wrote, is
        put into the snapshot in memory when it is the only change since the
        snapshot (no JSON decoding of every promotion on the event loop: a
        network with thousands of drafts paid that per draft created);
        anything else reads them all again."""
        current = promotion_store.version(self.store)
        if saved is not None and current == self._snapshot.version + 1:
            self._snapshot = self._snapshot.with_promotion(saved, current)
        elif current != self._snapshot.version or saved is None:
            self._snapshot = promotion_store.load_snapshot(self.store, self._snapshot)
        self._checked_at = time.monotonic()

    def owner_of(self, promotion_id: int) -> int | None:
        """The organisation owning a promotion (ended ones too); None if none."""
        promotion = self.snapshot.by_id.get(promotion_id) or promotion_store.load_promotion(self.store, promotion_id)
        return None if promotion is None else promotion.org_id

    def coupons_by_code(self, codes, station_ancestry: tuple | None = None) -> tuple[list, list[str]]:
        """(coupons found, codes that name none), codes normalised. With a
        station's ancestry, a coupon of a promotion that does not reach it
        names none either (another domain's coupons are unknown there)."""
        found, unknown = [], []
        for code in codes:
            coupon = promotion_store.coupon_by_code(self.store, coupons.normalise_code(code))
            if coupon is not None and station_ancestry is not None:
                owner = self.owner_of(coupon.promotion_id)
                if owner is None or not reaches(owner, station_ancestry):
                    coupon = None
            (unknown.append(code) if coupon is None else found.append(coupon))
        return found, unknown

    def price(self, ledger: Ledger, basket, amount_minor: int, station_id: int, card_id: int, now_ms: int, coupon_codes=(),
              partner_id: int = 0, refused=None, takes_max: int = limits.COUNTER_TAKES_PER_SALE_MAX,
              explain: bool = False) -> tuple[Pricing, list[str]]:
        """Price a sale (basket: BasketLine messages, already validated by
        requests.validate_basket) under the stacking policy; returns the
        Pricing (its `takes` are to be linked to the PAY) and the coupon
        codes that name no coupon. explain: also list the promotions not
        yet approved, with why (PriceBasket); a Pay leaves it False.
        On a COUNTER_LIMIT_REACHED outcome, price again with
        refused={pricing.refusal_key(outcome.refused_by): reason}."""
        snapshot = self.snapshot
        if not snapshot.priced and not coupon_codes and not explain:
            # Nothing could apply: no reads, no arithmetic (the Pay hot path).
            return Pricing(applied=(), skipped=(), discount_minor=0, amount_minor=amount_minor), []
        station_ancestry = self.tree.ancestry(station_id)
        card = ledger.card(card_id) if card_id else None
        sale = Sale(
            amount_minor=amount_minor,
            station_id=station_id,
            now_ms=now_ms,
            lines=tuple(SaleLine(line.goods_code, line.category, line.quantity_milli, line.amount_minor) for line in basket),
            card_id=card_id if card is not None else 0,
            card_type=card.card_type if card is not None else 0,
            tier=jobs.member_tier(self.store, card_id) if card is not None else Tier.REGULAR,
            partner_id=partner_id,
        )
        found, unknown = self.coupons_by_code(coupon_codes, station_ancestry)
        priced, unapproved = snapshot.priced_at(station_ancestry)
        promotions = priced + unapproved if explain else priced
        policy = snapshot.policy_for(station_ancestry[-1] if station_ancestry else NETWORK)
        pricing = price_basket(promotions, sale, found, snapshot.by_id, policy, refused, takes_max)
        return pricing, unknown

    def reaching(self, promotions, station_id: int) -> list:
        """Those of `promotions` that apply at station_id."""
        station_ancestry = self.tree.ancestry(station_id)
        return [promotion for promotion in promotions if reaches(promotion.org_id, station_ancestry)]


# ---------------------------------------------------------------- the service


class PromotionService(promotion_pb2_grpc.PromotionServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, holder: PromotionHolder, risk: RiskHolder, settings):
        self.ledger = ledger
        self.store = ledger.store
        # The one write path: kernel operations and every change go through it.
        self.committer = committer
        self.counters = CounterClient(committer, ledger)
        self.holder = holder
        self.risk = risk
        self.settings = settings
        # The expiry job and ReturnExpiredPackets never run at once here.
        self._returning = asyncio.Lock()

    def now_ms(self) -> int:
        return self.committer.clock()

    def scope(self) -> Scope:
        """The staff caller's scope (everywhere for terminals and the open server)."""
        return staff_scope(self.store)

    def _seer(self, station_id: int = 0):
        """seen(promotion_id) for this call's caller: a terminal (of
        station_id, or the MAC'ed caller's station) sees what reaches its
        station; staff what their scope holds; the open server all."""
        station = station_id or terminal_station()
        scope = self.scope()
        station_ancestry = self.holder.tree.ancestry(station) if station else None

        def seen(promotion_id: int) -> bool:
            owner = self.holder.owner_of(promotion_id)
            if owner is None or (station_ancestry is not None and not reaches(owner, station_ancestry)):
                return False
            return scope.sees(owner)

        return seen

    def apply_in(self, txn, ops, now_ms: int):
        """Kernel operations inside a change's transaction (see Ledger.apply_in)."""
        return self.ledger.apply_in(txn, ops, now_ms, business_day(now_ms, self.committer.utc_offset_minutes))

    # ------------------------------------------------------------ promotions

    def _counters(self, promotion: Promotion) -> promotion_pb2.PromotionCounters:
        owner = promotion.promotion_id
        takes = [CounterTake(CounterScope.PROMOTION_BUDGET, owner), CounterTake(CounterScope.PROMOTION_STOCK, owner),
                 CounterTake(CounterScope.COUPON_ISSUED, owner)]
        prizes = promotion.lottery.prizes if promotion.lottery else ()
        takes += [CounterTake(CounterScope.LOTTERY_PRIZE, owner, subject=prize.prize_id) for prize in prizes]
        values = self.counters.read(takes)
        return promotion_pb2.PromotionCounters(
            budget_used_minor=values[0], stock_used=values[1], coupons_issued=values[2],
            prizes_given=[promotion_pb2.PrizeCount(prize_id=prize.prize_id, given=given, left=prize.stock - given if prize.stock else -1)
                          for prize, given in zip(prizes, values[3:])],
        )

    def _answer(self, promotion: Promotion) -> promotion_pb2.PromotionAnswer:
        return promotion_pb2.PromotionAnswer(promotion=to_message(promotion, promotion_pb2.Promotion), counters=self._counters(promotion))

    async def CreatePromotion(self, request, context):
        require_by(request.by)
        promotion = promotion_from_message(request.promotion)
        now_ms = self.now_ms()
        scope = self.scope()
        try:
            saved = await self.committer.write(
                lambda txn: promotion_store.save_draft(txn, self.store, promotion, request.by, now_ms, scope))
        except PromotionError as error:
            raise error.within("promotion") from None
        self.holder.reload(saved)
        return self._answer(saved)

    async def _step(self, request, stage: Stage):
        requests.require_range(request.promotion_id, "promotion_id", 1, ID_MAX)
        require_by(request.by)
        now_ms = self.now_ms()
        scope = self.scope()
        moved = await self.committer.write(
            lambda txn: promotion_store.step_promotion(txn, self.store, request.promotion_id, stage, request.by, now_ms, scope))
        self.holder.reload(moved)
        log.info("promotion %d is %s (by %s)", moved.promotion_id, stage.name, request.by)
        return self._answer(moved)

    async def SubmitPromotion(self, request, context):
        return await self._step(request, Stage.SUBMITTED)

    async def ApprovePromotion(self, request, context):
        return await self._step(request, Stage.APPROVED)

    async def ActivatePromotion(self, request, context):
        return await self._step(request, Stage.ACTIVE)

    async def EndPromotion(self, request, context):
        return await self._step(request, Stage.ENDED)

    async def ListPromotions(self, request, context):
        limit = request.limit or LIST_LIMIT_DEFAULT
        requests.require_range(limit, "limit", 1, promotion_store.LIST_LIMIT_MAX)
        found = promotion_store.list_promotions(self.store, request.kind, request.stage, limit, self.scope())
        return promotion_pb2.ListPromotionsAnswer(promotions=[self._answer(promotion) for promotion in found])

    def _promotion(self, promotion_id: int, scope: Scope = EVERYWHERE) -> Promotion:
        promotion = promotion_store.load_promotion(self.store, promotion_id, scope)
        if promotion is None:
            raise NotFound(promotion_store.missing(promotion_id))
        return promotion

    async def GetPromotion(self, request, context):
        return self._answer(self._promotion(request.promotion_id, self.scope()))

    def _policy_answer(self, policy: StackingPolicy, domain: int, defaults: bool) -> promotion_pb2.StackingPolicy:
        answer = to_message(policy, promotion_pb2.StackingPolicy)
        answer.org_id, answer.defaults = domain, defaults
        return answer

    async def GetStackingPolicy(self, request, context):
        domain = settings_domain_of(self.store, self.scope(), request.org_id, False, "the stacking policy")
        policy, defaults = promotion_store.load_policy(self.store, domain)
        return self._policy_answer(policy, domain, defaults)

    async def SetStackingPolicy(self, request, context):
        domain = settings_domain_of(self.store, self.scope(), request.org_id, True, "the stacking policy")
        policy = StackingPolicy(coupons_per_sale_max=request.coupons_per_sale_max)
        saved = await self.committer.write(lambda txn: promotion_store.save_policy(txn, self.store, policy, domain))
        self.holder.reload()
        return self._policy_answer(saved, domain, False)

    def _running(self, promotion_id: int, kind: PromotionKind, now_ms: int, scope: Scope = EVERYWHERE) -> Promotion:
        """A running promotion of `kind` the caller sees (a terminal: one
        that reaches its station); NotFound as for an unknown id otherwise."""
        requests.require_range(promotion_id, "promotion_id", 1, ID_MAX)
        promotion = self.holder.snapshot.running(promotion_id, kind, now_ms)
        if promotion is not None and not scope.sees(promotion.org_id):
            raise NotFound(promotion_store.missing(promotion_id))
        if promotion is None:
            promotion = self._promotion(promotion_id, scope)  # NOT_FOUND if none the caller sees
            if promotion.kind != kind:
                raise FailedPrecondition(f"promotion {promotion_id} is {promotion.kind.name}, not {kind.name}")
            self.holder.reload()
            promotion = self.holder.snapshot.running(promotion_id, kind, now_ms)
            if promotion is None:
                raise FailedPrecondition(f"promotion {promotion_id} is not running (approved or active, inside its window)")
        return promotion

    # ------------------------------------------------------------ pricing

    async def PriceBasket(self, request, context):
        requests.require_range(request.station_id, "station_id", 1, limits.STATION_ID_MAX)
        requests.require_range(request.amount_minor, "amount_minor", 1, limits.AMOUNT_MINOR_MAX)
        requests.validate_basket(request.basket, request.amount_minor)
        if len(request.coupon_codes) > limits.COUNTER_TAKES_PER_SALE_MAX:
            raise InvalidInput("coupon_codes", f"at most {limits.COUNTER_TAKES_PER_SALE_MAX} codes")
        for index, code in enumerate(request.coupon_codes):
            requests.require_length(code, f"coupon_codes[{index}]", 1, 2 * coupons.CODE_LENGTH)
        # A terminal prices at its own station, staff at one of theirs.
        station_of_request(request.station_id)
        self.scope().require(request.station_id, f"station {request.station_id} not found")
        if request.card_id and self.ledger.card(request.card_id) is None:
            raise NotFound(f"no card {request.card_id}")
        pricing, unknown = self.holder.price(self.ledger, request.basket, request.amount_minor, request.station_id, request.card_id,
                                             request.at_ms or self.now_ms(), request.coupon_codes, request.partner_id, explain=True)
        return pricing_answer(pricing, unknown)

    # ------------------------------------------------------------ coupons

    def _card_decline(self, card_id: int, now_ms: int):
        """(code, rule) refusing the card before anything is built, or None."""
        card = self.ledger.card(card_id)
        if card is None:
            return ResultCode.CARD_NOT_FOUND, ""
        entry = self.risk.blocking_entry(card_id, now_ms)
        if entry is not None:
            return ResultCode.CARD_BLACKLISTED, entry.rule
        return None

    def issue_in(self, txn, promotion: Promotion, card_id: int, station_id: int, trigger: CouponTrigger, now_ms: int):
        """Issue one batch of the promotion's coupons inside a change's
        transaction: (code, rule, coupons). The kernel takes the count and
        the coupons are written in the same commit: a crash leaves both or
        neither."""
        count = promotion.coupon.per_issue_count
        takes = [coupons.issue_take(promotion, count)]
        outcome = outcome_of(takes, self.apply_in(txn, chain(takes, None), now_ms), False)
        if outcome.code != ResultCode.APPROVED:
            return outcome.code, outcome.refused_by, []
        first = promotion_store.next_numbers(txn, self.store, promotion_store.COUPON_SEQUENCE, count)
        made = coupons.make_coupons(promotion, first, count, card_id, now_ms, station_id, trigger)
        promotion_store.put_coupons(txn, self.store, made)
        return ResultCode.APPROVED, "", made

    async def issue_on_event(self, trigger: CouponTrigger, amount_minor: int, station_id: int, card_id: int, txn_id: int) -> list:
        """Coupons an approved top-up or purchase (transaction txn_id) issues
        to its card (server/promotion_flow.py calls it after the operation):
        one batch of each COUPON promotion issued on this trigger, in range,
        here; once per transaction, however often the request is retried."""
        now_ms = self.now_ms()
        card = self.ledger.card(card_id) if card_id else None
        if card is None or self.risk.blocking_entry(card_id, now_ms) is not None:
            return []
        tier = jobs.member_tier(self.store, card_id)
        promotions = self.holder.reaching(self.holder.snapshot.by_id.values(), station_id)
        issuing = coupons.issuing(promotions, trigger, amount_minor, station_id, now_ms, card.card_type, tier)
        if not issuing:
            return []

        def issue_all(txn):
            if not promotion_store.mark_issued(txn, self.store, txn_id):
                return []  # issued before: a retried request issues nothing twice
            return [coupon for promotion in issuing for coupon in self.issue_in(txn, promotion, card_id, station_id, trigger, now_ms)[2]]

        return await self.committer.write(issue_all)

    async def IssueCoupons(self, request, context):
        require_by(request.by)
        requests.require_range(request.card_id, "card_id", 0, limits.CARD_ID_MAX)
        requests.require_range(request.station_id, "station_id", 0, limits.STATION_ID_MAX)
        once.require_request_id(request.request_id)
        now_ms = self.now_ms()
        promotion = self._running(request.promotion_id, PromotionKind.COUPON, now_ms, self.scope())
        issue_stations = promotion.coupon.issue_stations
        if issue_stations and request.station_id not in issue_stations:
            raise InvalidInput("station_id", f"promotion {promotion.promotion_id} issues at stations {list(issue_stations)} only")
        if request.station_id and not reaches(promotion.org_id, self.holder.tree.ancestry(request.station_id)):
            raise InvalidInput("station_id", f"station {request.station_id} is not in the subtree of organisation "
                               f"{promotion.org_id}, promotion {promotion.promotion_id}'s owner")
        if request.card_id:
            refusal = self._card_decline(request.card_id, now_ms)
            if refusal is not None:
                return decline(promotion_pb2.IssueCouponsAnswer, *refusal)
        fingerprint = once.fingerprint_of(request)

        def issue_once(txn):
            stored = once.recall(txn, self.store, "IssueCoupons", request.request_id, fingerprint)
            if stored is not None:
                answer = promotion_pb2.IssueCouponsAnswer.FromString(stored)
                answer.replayed = True
                return answer
            code, rule, made = self.issue_in(txn, promotion, request.card_id, request.station_id, CouponTrigger.CAMPAIGN, now_ms)
            answer = decline(promotion_pb2.IssueCouponsAnswer, code, rule, coupons=[coupon_message(coupon, False) for coupon in made])
            once.remember(txn, self.store, "IssueCoupons", request.request_id, fingerprint, answer.SerializeToString())
            return answer

        answer = await self.committer.write(issue_once)
        if answer.coupons and not answer.replayed:
            log.info("%d coupons of promotion %d issued by %s", len(answer.coupons), promotion.promotion_id, request.by)
        return answer

    def _used(self, coupon) -> bool:
        return self.counters.read([coupons.use_take(coupon)])[0] >= 1

    async def GetCoupon(self, request, context):
        requests.require_length(request.code, "code", 1, 2 * coupons.CODE_LENGTH)
        coupon = promotion_store.coupon_by_code(self.store, coupons.normalise_code(request.code))
        # A coupon is its promotion's: seen where its promotion is.
        if coupon is None or not self._seer()(coupon.promotion_id):
            raise NotFound("no coupon with this code")
        return promotion_pb2.CouponAnswer(coupon=coupon_message(coupon, self._used(coupon)))

    async def ListCoupons(self, request, context):
        requests.require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
        seen = self._seer()
        found = [coupon for coupon in promotion_store.coupons_of_card(self.store, request.card_id) if seen(coupon.promotion_id)]
        return promotion_pb2.ListCouponsAnswer(coupons=[coupon_message(coupon, self._used(coupon)) for coupon in found])

    # ------------------------------------------------------------ red packets

    async def CreatePacket(self, request, context):
        require_by(request.by)
        requests.require_range(request.total_minor, "total_minor", 1, limits.AMOUNT_MINOR_MAX)
        requests.require_range(request.issuer_owner, "issuer_owner", 0, limits.CARD_ID_MAX)
        once.require_request_id(request.request_id)
        now_ms = self.now_ms()
        scope = self.scope()
        promotion = self._running(request.promotion_id, PromotionKind.RED_PACKET, now_ms, scope)
        self._require_issuer(scope, request.issuer_kind, request.issuer_owner)
        # Checked, and the shares drawn, before the change: it decides nothing at random.
        checked = packets.new_packet(promotion, 0, request.total_minor, request.issuer_kind, request.issuer_owner, now_ms,
                                     request.by)
        terms = promotion.packet
        shares = packets.split_shares(checked.total_minor, checked.share_count, terms.split, terms.min_share_minor,
                                      lottery.SECURE_RANDOM)
        fingerprint = once.fingerprint_of(request)

        def make_packet(txn):
            """The packet, its shares, its account and its funding, or none of them."""
            stored = once.recall(txn, self.store, "CreatePacket", request.request_id, fingerprint)
            if stored is not None:
                return None, stored
            packet_id = promotion_store.next_numbers(txn, self.store, promotion_store.PACKET_SEQUENCE)
            packet = msgspec.structs.replace(checked, packet_id=packet_id)
            serial = promotion_store.next_numbers(txn, self.store, promotion_store.SERIAL_SEQUENCE)
            opened, funded = self.apply_in(txn, [packets.open_account_op(packet), packets.fund_op(packet, serial)], now_ms)
            assert opened.code in (ResultCode.APPROVED, ResultCode.ACCOUNT_EXISTS), opened
            if funded.code == ResultCode.APPROVED:
                packet = msgspec.structs.replace(packet, state=PacketState.OPEN, funding_txn_id=funded.txn_id)
            else:
                packet = msgspec.structs.replace(packet, state=PacketState.FAILED)
            promotion_store.put_packet(txn, self.store, packet, shares)
            once.remember(txn, self.store, "CreatePacket", request.request_id, fingerprint,
                          PACKET_ANSWER.pack(packet.packet_id, funded.code))
            return packet, None

        packet, stored = await self.committer.write(make_packet)
        if stored is not None:
            packet_id, code = PACKET_ANSWER.unpack(stored)
            answer = self._packet_answer(promotion_store.load_packet(self.store, packet_id), code)
            answer.replayed = True
            return answer
        code = ResultCode.APPROVED if packet.state == PacketState.OPEN else ResultCode.INSUFFICIENT_FUNDS
        log.info("red packet %d of promotion %d: %d in %d shares by %s: %s", packet.packet_id, promotion.promotion_id,
                 packet.total_minor, packet.share_count, request.by, ResultCode(code).name)
        return self._packet_answer(packet, code)

    def _require_issuer(self, scope: Scope, issuer_kind: int, issuer_owner: int):
        """A packet is funded from an account the caller sees: a card's of
        its subtree, or a system account of one of its organisations."""
        if scope.everywhere:
            return
        if issuer_kind in (AccountKind.FLEET, AccountKind.PERSONAL):
            require_card(self.store, scope, issuer_owner, f"card {issuer_owner} not found")
        else:
            scope.require(issuer_owner, f"organisation {issuer_owner} not found")

    def _packet_answer(self, packet: Packet, code: int = ResultCode.APPROVED, with_shares: bool = False) -> promotion_pb2.PacketAnswer:
        claimed = self.ledger.counter(CounterScope.PACKET_CLAIMS, packet.packet_id)
        shares = promotion_store.packet_shares(self.store, packet.packet_id, packet.share_count)
        account = self.ledger.account(AccountKind.PROMOTION, packet.packet_id)
        return promotion_pb2.PacketAnswer(
            result=code, result_text=answers.result_text(code), packet=to_message(packet, promotion_pb2.Packet),
            claimed_count=claimed, claimed_minor=sum(shares[:claimed]), balance_minor=account.balance if account else 0,
            shares=shares if with_shares else [],
        )

    async def GetPacket(self, request, context):
        packet = promotion_store.load_packet(self.store, request.packet_id)
        # A packet is its promotion's: seen where its promotion is.
        if packet is None or not self._seer()(packet.promotion_id):
            raise NotFound(f"no red packet {request.packet_id}")
        return self._packet_answer(packet, with_shares=request.with_shares)

    def _claim_refusal(self, request, packet: Packet | None, now_ms: int):
        """(code, rule) refusing a claim before the kernel, or None."""
        if packet is None:
            return ResultCode.PACKET_EMPTY, f"no red packet {request.packet_id}"
        if now_ms >= packet.expires_ms:
            return ResultCode.PACKET_EMPTY, f"red packet {packet.packet_id} expired at {packet.expires_ms}"
        if packet.state != PacketState.OPEN:
            return ResultCode.PACKET_EMPTY, f"red packet {packet.packet_id} is {packet.state.name}"
        promotion = self.holder.snapshot.running(packet.promotion_id, PromotionKind.RED_PACKET, now_ms)
        if promotion is None:
            return ResultCode.PACKET_EMPTY, f"promotion {packet.promotion_id} is not running"
        refusal = self._card_decline(request.card_id, now_ms)
        if refusal is not None:
            return refusal
        card = self.ledger.card(request.card_id)
        today = business_day(now_ms, self.committer.utc_offset_minutes)
        spent = card.day_spent if card.day == today else 0
        tier = jobs.member_tier(self.store, card.card_id)
        reason = packets.claim_refusal(promotion, request.terminal.station_id, card.card_type, tier, spent)
        if reason:
            return ResultCode.COUNTER_LIMIT_REACHED, f"{promotion.rule('claim condition')}: {reason}"
        return None

    async def ClaimPacket(self, request, context):
        requests.validate_terminal(request.terminal)
        requests.require_range(request.packet_id, "packet_id", 1, ID_MAX)
        requests.require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
        packet = promotion_store.load_packet(self.store, request.packet_id)
        if packet is not None and not self._seer(request.terminal.station_id)(packet.promotion_id):
            packet = None  # another domain's packet: as if there were none
        terminal = request.terminal
        # A retry of a claim the kernel saw gets its stored answer, whatever changed since.
        if packet is None or self.ledger.idem(terminal.terminal_id, terminal.serial) is None:
            refusal = self._claim_refusal(request, packet, self.now_ms())
            if refusal is not None:
                return decline(promotion_pb2.ClaimPacketAnswer, *refusal)
        op = packet_claim_op(packet.packet_id, request.card_id, packet.share_count, terminal.terminal_id, terminal.serial,
                             terminal.station_id, requests.fingerprint(OpKind.PACKET_CLAIM, request))
        op.operator_id = terminal.operator_id
        result = await self.committer.submit(op)
        approved = result.code == ResultCode.APPROVED
        return decline(promotion_pb2.ClaimPacketAnswer, result.code, amount_minor=result.amount if approved else 0,
                       txn_id=result.txn_id, personal_balance_minor=result.personal_balance)

    async def return_expired_packets(self, scope: Scope = EVERYWHERE) -> list[tuple[int, int]]:
        """The expiry job: every expired open packet's balance back to its
        issuer (only those of the promotions `scope` sees); (packet_id,
        amount) of those returned. A claim racing the return is refused by
        the kernel for lack of funds, or it lands first and the return fails
        for lack of funds and is retried."""
        async with self._returning:
            now_ms = self.now_ms()
            returned = []
            for packet in promotion_store.list_packets(self.store):
                if packet.state != PacketState.OPEN or now_ms < packet.expires_ms:
                    continue
                if not scope.everywhere and self.holder.owner_of(packet.promotion_id) not in scope.orgs:
                    continue
                unclaimed = await self.committer.write(lambda txn, packet=packet: self._return_in(txn, packet, now_ms))
                if unclaimed is not None:
                    returned.append((packet.packet_id, unclaimed))
                    log.info("red packet %d expired: %d back to its issuer", packet.packet_id, unclaimed)
            return returned

    def _return_in(self, txn, packet: Packet, now_ms: int) -> int | None:
        """Inside a change: the packet's rest back to its issuer and the
        packet RETURNED, in one commit; what went back, or None if the packet
        was finished before (another worker's job) or the return was declined
        (a claim raced it: retried next time)."""
        account = self.ledger.account_in(txn, AccountKind.PROMOTION, packet.packet_id)
        rest = account.balance - account.held if account else 0
        if rest > 0:
            serial = promotion_store.next_numbers(txn, self.store, promotion_store.SERIAL_SEQUENCE)
            (result,) = self.apply_in(txn, [packets.return_op(packet, rest, serial)], now_ms)
            if result.code != ResultCode.APPROVED:
                log.warning("red packet %d: returning %d declined %s; retried next time", packet.packet_id, rest,
                            ResultCode(result.code).name)
                return None
        # What went back is what no claim took.
        claimed = self.ledger.counter_in(txn, CounterScope.PACKET_CLAIMS, packet.packet_id)
        shares = promotion_store.packet_shares_in(txn, self.store, packet.packet_id, packet.share_count)
        unclaimed = packet.total_minor - sum(shares[:claimed])
        return unclaimed if promotion_store.finish_packet(txn, self.store, packet.packet_id, unclaimed) else None

    async def ReturnExpiredPackets(self, request, context):
        returned = await self.return_expired_packets(self.scope())
        return promotion_pb2.ReturnExpiredPacketsAnswer(
            returned=[promotion_pb2.ReturnedPacket(packet_id=packet_id, returned_minor=amount) for packet_id, amount in returned])

    # ------------------------------------------------------------ lottery

    async def GrantChances(self, request, context):
        require_by(request.by)
        requests.require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
        requests.require_range(request.count, "count", 0, lottery.CHANCES_PER_GRANT_MAX)
        requests.require_range(request.spend_minor, "spend_minor", 0, limits.AMOUNT_MINOR_MAX)
        if (request.count == 0) == (request.spend_minor == 0):
            raise InvalidInput("count", "give either count or spend_minor")
        now_ms = self.now_ms()
        promotion = self._running(request.promotion_id, PromotionKind.LOTTERY, now_ms, self.scope())
        count = request.count or lottery.chances_for_spend(promotion.lottery, request.spend_minor)
        refusal = self._card_decline(request.card_id, now_ms)
        if refusal is not None:
            return decline(promotion_pb2.ChancesAnswer, *refusal)
        if count == 0:
            chances = self.counters.read([lottery.chances_take(promotion, request.card_id, 1)])[0]
            return decline(promotion_pb2.ChancesAnswer, ResultCode.APPROVED, chances=chances)
        grant = lottery.chances_take(promotion, request.card_id, count)
        once = None
        if request.grant_number:
            once = lottery.once_take(CounterScope.LOTTERY_GRANT, promotion, request.card_id, request.grant_number, count)
        outcome = await self.counters.take([grant] if once is None else [once, grant])
        if once is not None and self._replayed(outcome, once):
            granted, chances = self.counters.read([once, grant])
            return decline(promotion_pb2.ChancesAnswer, ResultCode.APPROVED, granted=granted, chances=chances, replayed=True)
        if outcome.code != ResultCode.APPROVED:
            return decline(promotion_pb2.ChancesAnswer, outcome.code, outcome.refused_by)
        return decline(promotion_pb2.ChancesAnswer, ResultCode.APPROVED, granted=count, chances=outcome.values[-1])

    @staticmethod
    def _replayed(outcome, once) -> bool:
        """The chain was refused by its once-only mark: a retry of a numbered
        draw or grant that was made before."""
        return outcome.code == ResultCode.COUNTER_LIMIT_REACHED and outcome.refused_by == once.rule

    async def BuyChances(self, request, context):
        requests.validate_terminal(request.terminal)
        requests.require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
        requests.require_range(request.count, "count", 1, lottery.CHANCES_PER_GRANT_MAX)
        now_ms = self.now_ms()
        promotion = self._reaching_station(request.promotion_id, PromotionKind.LOTTERY, now_ms, request.terminal.station_id)
        price_minor = promotion.lottery.chance_price_minor
        if not price_minor:
            raise FailedPrecondition(f"promotion {promotion.promotion_id} does not sell chances")
        terminal = request.terminal
        if self.ledger.idem(terminal.terminal_id, terminal.serial) is None:
            refusal = self._card_decline(request.card_id, now_ms)
            if refusal is not None:
                return decline(promotion_pb2.ChancesAnswer, *refusal)
        amount_minor = request.count * price_minor
        pay = Op(kind=OpKind.PAY, **requests.terminal_fields(terminal), card_id=request.card_id, amount=amount_minor,
                 plan_flags=PlanFlag.USE_POINTS, points_per_unit=self.settings.points_per_unit,
                 lot_validity_days=self.settings.lot_validity_days, fingerprint=requests.fingerprint(OpKind.PAY, request))
        takes = [lottery.chances_take(promotion, request.card_id, request.count),
                 *self.risk.sale_takes(request.card_id, now_ms, amount_minor, station_id=terminal.station_id)]
        outcome = await self.counters.take(takes, pay)
        if outcome.code != ResultCode.APPROVED:
            return decline(promotion_pb2.ChancesAnswer, outcome.code, outcome.refused_by)
        await self.risk.observe_sale(request.card_id, terminal.station_id, amount_minor, now_ms)
        chances = self.counters.read(takes[:1])[0]
        return decline(promotion_pb2.ChancesAnswer, ResultCode.APPROVED, granted=request.count, chances=chances,
                       txn_id=outcome.main.txn_id, points_used=outcome.main.points_used)

    def _reaching_station(self, promotion_id: int, kind: PromotionKind, now_ms: int, station_id: int) -> Promotion:
        """A running promotion a terminal of station_id may use; another
        organisation's is NotFound, as an unknown id is."""
        promotion = self._running(promotion_id, kind, now_ms)
        if station_id and not reaches(promotion.org_id, self.holder.tree.ancestry(station_id)):
            raise NotFound(promotion_store.missing(promotion_id))
        return promotion

    async def Draw(self, request, context):
        requests.require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
        now_ms = self.now_ms()
        promotion = self._reaching_station(request.promotion_id, PromotionKind.LOTTERY, now_ms, terminal_station())
        refusal = self._card_decline(request.card_id, now_ms)
        if refusal is not None:
            return decline(promotion_pb2.DrawAnswer, *refusal)
        # Drawn before the change, which then decides nothing at random.
        drawn = lottery.pick_prize(promotion.lottery)
        return await self.committer.write(lambda txn: self._draw_in(txn, promotion, request, drawn, now_ms))

    def _draw_in(self, txn, promotion: Promotion, request, drawn, now_ms: int) -> promotion_pb2.DrawAnswer:
        """Inside a change: the chance, the prize and the draws log entry,
        committed together. The prize drawn, else the consolation prize,
        else none: each try is one linked chain, refused whole if its prize
        is out of stock."""
        terms = promotion.lottery
        consolation = lottery.consolation(terms)
        tries = [drawn] if drawn.prize_id == consolation.prize_id else [drawn, consolation]
        for prize in (*tries, None):
            is_consolation = prize is None or prize.prize_id != drawn.prize_id or drawn.prize_id == consolation.prize_id
            once = None
            if request.draw_number:
                code = lottery.outcome_code(terms, prize, is_consolation)
                once = lottery.once_take(CounterScope.LOTTERY_DRAW, promotion, request.card_id, request.draw_number, code)
            takes = lottery.draw_chain(promotion, request.card_id, prize, once)
            outcome = outcome_of(takes, self.apply_in(txn, chain(takes, None), now_ms), False)
            if once is not None and self._replayed(outcome, once):
                return self._draw_replayed(txn, promotion, request.card_id, once)
            if outcome.code == ResultCode.APPROVED:
                break
            if outcome.code != ResultCode.COUNTER_LIMIT_REACHED or prize is None:
                return decline(promotion_pb2.DrawAnswer, outcome.code, outcome.refused_by)
        draw = promotion_store.append_draw(txn, self.store, Draw(0, promotion.promotion_id, request.card_id,
                                                                 prize.prize_id if prize else 0, now_ms, is_consolation))
        chances_left = outcome.values[1 if once is not None else 0]
        return decline(promotion_pb2.DrawAnswer, ResultCode.APPROVED, prize_id=draw.prize_id, prize_name=prize.name if prize else "",
                       consolation=is_consolation, chances_left=chances_left, draw_seq=draw.seq)

    def _draw_replayed(self, txn, promotion: Promotion, card_id: int, once) -> promotion_pb2.DrawAnswer:
        """The answer to a retry of a numbered draw: the first draw's outcome,
        read back from its mark."""
        code, chances_left = (self.ledger.counter_in(txn, take.scope, take.owner, take.subject, take.period) for take in
                              (once, lottery.chances_take(promotion, card_id, -1)))
        prize, is_consolation = lottery.outcome_of(promotion.lottery, code)
        return decline(promotion_pb2.DrawAnswer, ResultCode.APPROVED, prize_id=prize.prize_id if prize else 0,
                       prize_name=prize.name if prize else "", consolation=is_consolation, chances_left=chances_left, replayed=True)

    async def ListDraws(self, request, context):
        limit = request.limit or LIST_LIMIT_DEFAULT
        requests.require_range(limit, "limit", 1, promotion_store.LIST_LIMIT_MAX)
        scope = self.scope()
        if request.promotion_id:
            self._promotion(request.promotion_id, scope)  # NOT_FOUND unless the caller's
        found = promotion_store.list_draws(self.store, request.promotion_id, limit, None if scope.everywhere else self._seer())
        return promotion_pb2.ListDrawsAnswer(draws=[to_message(draw, promotion_pb2.DrawRecord) for draw in found])


# ---------------------------------------------------------------- wiring


async def packet_job(service: PromotionService, interval_s: float = PACKET_JOB_INTERVAL_S):
    """Return the rest of expired red packets, every interval_s."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await service.return_expired_packets()
        except (QueueFull, ReplicationError):
            continue  # full, or a follower of a replicated log (the leader runs it)
        except Exception:
            log.exception("the red packet expiry job failed; retried next time")


class PromotionWiring(msgspec.Struct):
    """What server/app.py keeps: the holders (PaymentService prices and
    checks with them) and the job to cancel at shutdown."""

    holder: PromotionHolder
    risk: RiskHolder
    service: PromotionService
    job: asyncio.Task


def add_promotion_services(server, ledger: Ledger, committer: GroupCommitter, settings) -> PromotionWiring:
    holder = PromotionHolder(ledger.store)
    risk = RiskHolder(ledger.store, committer, settings.utc_offset_minutes)
    service = PromotionService(ledger, committer, holder, risk, settings)
    promotion_pb2_grpc.add_PromotionServiceServicer_to_server(service, server)
    promotion_pb2_grpc.add_RiskServiceServicer_to_server(RiskService(risk, committer.clock), server)
    return PromotionWiring(holder, risk, service, asyncio.create_task(packet_job(service)))


SERVICE_NAMES = (
    promotion_pb2.DESCRIPTOR.services_by_name["PromotionService"].full_name,
    promotion_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name,
)
