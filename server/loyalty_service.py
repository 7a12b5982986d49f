"""LoyaltyService: points, check-in, tasks, gifts, partner points, and the admin part.

Owns: the RPC handlers of tally.v1.LoyaltyService: validation (naming the
field and the limit), the operations they queue for the group commit, and
the answers. Rules come from core.loyalty.rules (saved in LMDB, validated
when saved); the kernel moves every point.

Domains (core/domains.py): the rules are one set per headquarters domain; a
sale, check-in or task earns by its station's domain's, a partner exchange
into a card by the card's domain's. Gifts are a domain's catalogue
(loyalty_gift_domains): listed, stocked and redeemed only in their domain
(the network's everywhere). A card's points, statement, tier and time zone
answer a terminal only for cards usable at its station, and staff only for
cards of their subtree; to anyone else the card is CARD_NOT_FOUND, as an
unknown one is.
"""

import time

import msgspec

from core import limits
from core.commit import GroupCommitter
from core.domains import NETWORK, Scope, StationTree, card_domain, card_org, settings_domain_of
from core.errors import InvalidInput, NotFound, PermissionDenied
from core.ledger import Ledger, business_day
from core.loyalty import jobs
from core.loyalty.earning import SaleLine, quote
from core.loyalty.rules import LoyaltyRules, RuleError, load_all_rules, rules_in, save_rules, validate
from core.loyalty.statement import points_statement
from core.records import Gift, Op, Result, decode, u64_key
from core.results import AccountKind, OpKind, ResultCode, Tier, TierReason
from server import answers, requests
from server.callers import current_caller
from server.counter_client import CounterClient
from core.admin.access import domain_of
from core.admin.partners import card_in_domain, partner_record
from server.scope import card_seen, staff_scope, station_of_request, terminal_station
from tally.v1 import loyalty_pb2, loyalty_pb2_grpc

CARD_ID_MAX = limits.CARD_ID_MAX


class RulesHolder:
    """The rules in force in this process, per domain: an in-memory
    snapshot, reloaded when saved here and at most a second after another
    process (another --workers worker, the CLI) saved them."""

    REFRESH_INTERVAL_S = 1.0

    def __init__(self, store, writer):
        self.store = store
        # The one write path (core/writes.py): the server's group commit.
        self.writer = writer
        self.tree = StationTree(store)
        self._saved = load_all_rules(store)
        self._loaded_at = time.monotonic()

    def _fresh(self) -> dict[int, LoyaltyRules]:
        if time.monotonic() - self._loaded_at > self.REFRESH_INTERVAL_S:
            self._saved = load_all_rules(self.store)
            self._loaded_at = time.monotonic()
        return self._saved

    @property
    def rules(self) -> LoyaltyRules:
        """The network's rules (what a domain that saved none runs by)."""
        return rules_in(self._fresh(), NETWORK)[0]

    def rules_of(self, domain: int) -> tuple[LoyaltyRules, bool]:
        """(the rules a domain runs by, whether they are the network's)."""
        return rules_in(self._fresh(), domain)

    def rules_at(self, station_id: int) -> LoyaltyRules:
        """The rules a sale at station_id earns by: its domain's."""
        saved = self._fresh()
        if len(saved) <= (NETWORK in saved):  # no domain saved its own: no lookup
            return rules_in(saved, NETWORK)[0]
        return rules_in(saved, self.tree.domain(station_id))[0]

    def rules_of_card(self, card_id: int) -> LoyaltyRules:
        """The rules of the card's issuing organisation's domain."""
        saved = self._fresh()
        if len(saved) <= (NETWORK in saved):
            return rules_in(saved, NETWORK)[0]
        with self.store.env.begin() as txn:
            return rules_in(saved, card_domain(txn, self.store, card_id))[0]

    async def save(self, rules: LoyaltyRules, domain: int = NETWORK) -> LoyaltyRules:
        saved = await self.writer.write(lambda txn: save_rules(txn, self.store, rules, domain))
        self._saved = {**self._saved, domain: saved}
        return saved

    def quote(self, ledger, basket, amount_minor: int, card_id: int, station_id: int, now_ms: int):
        """Points the rules of the station's domain give a sale (a basket of
        BasketLine messages)."""
        lines = [SaleLine(line.category, line.amount_minor) for line in basket]
        earning = self.rules_at(station_id).earning
        # The member's tier matters only to tier multipliers: without any,
        # a sale reads no member record.
        tier = jobs.member_tier(ledger.store, card_id) if card_id and earning.tier_permille else Tier.REGULAR
        return quote(earning, lines, amount_minor, tier, station_id, now_ms)


# ---------------------------------------------------------------- gifts' domains


def gift_domain(txn, store, gift_id: int) -> int:
    """The domain whose catalogue holds the gift; NETWORK if none does."""
    raw = txn.get(u64_key(gift_id), db=store.loyalty_gift_domains)
    return NETWORK if raw is None else int.from_bytes(raw, "big")


def gift_missing(gift_id: int) -> str:
    return f"no gift {gift_id}"


def lot_message(lot) -> loyalty_pb2.PointsLot:
    return loyalty_pb2.PointsLot(earned_day=lot.earned_day, expires_day=lot.expires_day, original=lot.original, remaining=lot.remaining)


def gift_message(gift: Gift, domain: int = NETWORK) -> loyalty_pb2.GiftTerms:
    return loyalty_pb2.GiftTerms(
        org_id=domain,
        gift_id=gift.gift_id,
        points_price=gift.points_price,
        cash_price_minor=gift.cash_price,
        stock=gift.stock,
        redeemed=gift.redeemed,
        per_customer_limit=gift.per_customer_limit,
        tiers=[tier for tier in Tier if gift.tier_mask >> tier & 1],
        valid_from_day=gift.valid_from_day,
        valid_to_day=gift.valid_to_day,
    )


def loyalty_answer(result, points: int, cash_minor: int = 0, declined_by: str = "") -> loyalty_pb2.LoyaltyAnswer:
    return loyalty_pb2.LoyaltyAnswer(
        result=result.code,
        result_text=answers.result_text(result.code) + (f": {declined_by}" if declined_by else ""),
        declined_by=declined_by,
        txn_id=result.txn_id,
        points=points if result.code == ResultCode.APPROVED else 0,
        cash_minor=cash_minor if result.code == ResultCode.APPROVED else 0,
        points_balance=result.points_balance,
        personal_balance_minor=result.personal_balance,
    )


def require_card(card_id: int):
    requests.require_range(card_id, "card_id", 1, CARD_ID_MAX)


def card_not_found(answer_type):
    """The answer to a card nobody has, or that the caller may not see."""
    return answer_type(result=ResultCode.CARD_NOT_FOUND, result_text=answers.result_text(ResultCode.CARD_NOT_FOUND))


class LoyaltyService(loyalty_pb2_grpc.LoyaltyServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, holder: RulesHolder, risk=None):
        self.ledger = ledger
        self.committer = committer
        self.holder = holder
        # Risk rules (server/risk_service.RiskHolder): redemptions per hour
        # and the blacklist. None: neither is checked.
        self.risk = risk
        self.counters = CounterClient(committer, ledger)
        self.store = ledger.store

    # ------------------------------------------------------------ who sees what

    def _card_seen(self, card_id: int) -> bool:
        return card_seen(self.store, card_id)

    def _gifts_seen(self):
        """seen(domain) for gifts: a terminal's station's domain and the
        network's; staff their own domain's; the open server all."""
        station = terminal_station()
        if station:
            domain = self.holder.tree.domain(station)
            return lambda gift_domain_id: gift_domain_id in (NETWORK, domain)
        scope = staff_scope(self.store)
        if scope.everywhere:
            return lambda gift_domain_id: True
        return lambda gift_domain_id: gift_domain_id == scope.domain

    # ------------------------------------------------------------ reads

    async def GetPoints(self, request, context):
        require_card(request.card_id)
        if not self._card_seen(request.card_id):
            return card_not_found(loyalty_pb2.PointsAnswer)
        account = self.ledger.account(AccountKind.POINTS, request.card_id)
        if account is None:
            return card_not_found(loyalty_pb2.PointsAnswer)
        statement = points_statement(self.ledger.store, request.card_id, 0, self.committer.clock(), self.committer.utc_offset_minutes)
        return loyalty_pb2.PointsAnswer(
            result=ResultCode.APPROVED,
            result_text=answers.result_text(ResultCode.APPROVED),
            points_balance=statement.balance,
            points_held=statement.held,
            lots=[lot_message(lot) for lot in statement.open_lots],
            tier=jobs.member_tier(self.ledger.store, request.card_id),
        )

    async def GetStatement(self, request, context):
        require_card(request.card_id)
        if self.ledger.card(request.card_id) is None or not self._card_seen(request.card_id):
            return card_not_found(loyalty_pb2.StatementAnswer)
        statement = points_statement(self.ledger.store, request.card_id, now_ms=self.committer.clock(),
                                     utc_offset_minutes=self.committer.utc_offset_minutes)
        return loyalty_pb2.StatementAnswer(
            result=ResultCode.APPROVED,
            result_text=answers.result_text(ResultCode.APPROVED),
            points_balance=statement.balance,
            open_lots=[lot_message(lot) for lot in statement.open_lots],
            closed_lots=[lot_message(lot) for lot in statement.closed_lots],
            lines=[loyalty_pb2.StatementLine(**msgspec.structs.asdict(line)) for line in statement.lines],
            truncated=statement.truncated,
        )

    async def ListCatalogue(self, request, context):
        seen = self._gifts_seen()
        with self.store.env.begin() as txn:
            gifts = [(gift, gift_domain(txn, self.store, gift.gift_id))
                     for gift in (decode(Gift, value) for _, value in txn.cursor(db=self.store.gifts))]
        return loyalty_pb2.CatalogueAnswer(gifts=[gift_message(gift, domain) for gift, domain in gifts if seen(domain)])

    async def ListExpiringSoon(self, request, context):
        requests.require_range(request.within_days, "within_days", 1, 3660)
        today = self.committer.clock() // jobs.MS_PER_DAY
        found = jobs.expiring_soon(self.ledger.store, today, request.within_days)
        scope = staff_scope(self.store)
        if not scope.everywhere:
            with self.store.env.begin() as txn:
                found = [item for item in found if scope.sees(card_org(txn, self.store, item["card_id"]))]
        return loyalty_pb2.ExpiringSoonAnswer(
            expiring=[loyalty_pb2.ExpiringPoints(card_id=f["card_id"], expires_day=f["expires_day"], points=f["points"]) for f in found]
        )

    async def QuotePoints(self, request, context):
        requests.require_range(request.amount_minor, "amount_minor", 0, limits.AMOUNT_MINOR_MAX)
        lines = []
        for index, line in enumerate(request.lines):
            requests.require_length(line.category, f"lines[{index}].category", 0, limits.GOODS_CODE_LENGTH_MAX)
            requests.require_range(line.amount_minor, f"lines[{index}].amount_minor", 0, limits.AMOUNT_MINOR_MAX)
            lines.append(SaleLine(line.category, line.amount_minor))
        station = station_of_request(request.station_id)
        scope = staff_scope(self.store)
        if station:
            scope.require(station, f"station {station} not found")
            rules = self.holder.rules_at(station)
        else:
            rules = self.holder.rules_of(scope.domain)[0]
        tier = jobs.member_tier(self.ledger.store, request.card_id) if request.card_id else Tier.REGULAR
        points = quote(rules.earning, lines, request.amount_minor, tier, station, self.committer.clock())
        return loyalty_pb2.QuoteAnswer(
            items=answers.points_items(points, points.total), total=points.total
        )

    # ------------------------------------------------------------ points in and out

    def _terminal_op(self, kind: int, request, **fields) -> Op:
        requests.validate_terminal(request.terminal)
        require_card(request.card_id)
        return Op(kind=kind, **requests.terminal_fields(request.terminal), card_id=request.card_id,
                  fingerprint=requests.fingerprint(kind, request), **fields)

    async def CheckIn(self, request, context):
        rules = self.holder.rules_at(request.terminal.station_id)
        checkin = rules.checkin
        op = self._terminal_op(OpKind.CHECKIN, request, amount=checkin.points, bonus_points=checkin.streak_bonus,
                               period=checkin.streak_days, lot_validity_days=rules.expiry.lot_validity_days)
        result = await self.committer.submit(op)
        return loyalty_answer(result, result.points_earned)

    async def CompleteTask(self, request, context):
        rules = self.holder.rules_at(request.terminal.station_id)
        tasks = rules.tasks
        if request.task not in tasks.points:
            raise InvalidInput("task", f"unknown task {request.task!r}; the rules name {sorted(tasks.points)}")
        op = self._terminal_op(OpKind.TASK, request, amount=tasks.points[request.task], bonus_points=tasks.daily_cap,
                               lot_validity_days=rules.expiry.lot_validity_days)
        result = await self.committer.submit(op)
        return loyalty_answer(result, result.points_earned)

    async def RedeemGift(self, request, context):
        requests.require_range(request.gift_id, "gift_id", 1, 2**64 - 1)
        requests.require_range(request.quantity, "quantity", 1, limits.REDEEM_QUANTITY_MAX)
        op = self._terminal_op(OpKind.REDEEM, request, item_id=request.gift_id, amount=request.quantity)
        with self.store.env.begin() as txn:
            domain = gift_domain(txn, self.store, request.gift_id)
        if domain not in (NETWORK, self.holder.tree.domain(request.terminal.station_id)):
            # Another domain's gift: as if the catalogue had none.
            return loyalty_answer(Result(code=ResultCode.GIFT_NOT_FOUND, kind=OpKind.REDEEM), 0)
        if self.risk is None:
            result = await self.committer.submit(op)
            return loyalty_answer(result, -result.points_used, result.personal)
        now_ms = self.committer.clock()
        entry = self.risk.blocking_entry(op.card_id, now_ms)
        if entry is not None:
            return loyalty_answer(Result(code=ResultCode.CARD_BLACKLISTED, kind=OpKind.REDEEM), 0, declined_by=entry.rule)
        outcome = await self.counters.take(self.risk.redemption_takes(op.card_id, now_ms, request.terminal.station_id), op)
        result = outcome.main if not outcome.refused_by else msgspec.structs.replace(outcome.main, code=outcome.code)
        return loyalty_answer(result, -result.points_used, result.personal, declined_by=outcome.refused_by)

    async def ExchangePartnerPoints(self, request, context):
        require_card(request.card_id)
        requests.require_range(request.partner_id, "partner_id", 1, limits.PARTNER_ID_MAX)
        requests.require_range(request.partner_reference, "partner_reference", 1, 2**64 - 1)
        requests.require_range(request.partner_points, "partner_points", 1, limits.POINTS_MAX)
        if not self._partner_may_credit(request.card_id):
            return loyalty_answer(Result(code=ResultCode.CARD_NOT_FOUND, kind=OpKind.PARTNER_EXCHANGE), 0)
        rules = self._exchange_rules(request.card_id)
        partner = rules.partners.get(request.partner_id)
        if partner is None:
            raise InvalidInput("partner_id", f"no partner {request.partner_id} in the rules of its domain")
        op = Op(
            kind=OpKind.PARTNER_EXCHANGE,
            terminal_id=limits.PARTNER_TERMINAL_ID_BASE + request.partner_id,
            serial=request.partner_reference,
            card_id=request.card_id,
            item_id=request.partner_id,
            amount=request.partner_points,
            earn_points=partner.rate_numerator,
            period=partner.rate_denominator,
            reason=1 if partner.into_cash else 0,
            points_per_unit=limits.POINTS_PER_UNIT_DEFAULT,
            lot_validity_days=rules.expiry.lot_validity_days,
            fingerprint=requests.fingerprint(OpKind.PARTNER_EXCHANGE, request),
        )
        result = await self.committer.submit(op)
        return loyalty_answer(result, result.points_earned, result.personal)

    def _exchange_rules(self, card_id: int) -> LoyaltyRules:
        """The rules an exchange runs by: the partner's headquarters domain's
        (server/partner_auth.py names the partner), or, without a guard, the
        domain's of the card credited."""
        caller = current_caller()
        if caller.kind != "partner":
            return self.holder.rules_of_card(card_id)
        with self.store.env.begin() as txn:
            partner = partner_record(txn, self.store, caller.partner_id)
            domain = domain_of(txn, self.store, partner.org_id) if partner is not None else NETWORK
        return self.holder.rules_of(domain)[0]

    def _partner_may_credit(self, card_id: int) -> bool:
        """A partner (server/partner_auth.py) credits only the cards of its
        headquarters' domain; another card answers as an unknown one."""
        caller = current_caller()
        if caller.kind != "partner":
            return True
        store = self.ledger.store
        with store.env.begin() as txn:
            partner = partner_record(txn, store, caller.partner_id)
            return partner is not None and card_in_domain(txn, store, card_id, partner.org_id)

    # ------------------------------------------------------------ admin

    def _domain(self, org_id: int, change: bool, what: str = "loyalty rules") -> int:
        return settings_domain_of(self.store, staff_scope(self.store), org_id, change, what)

    async def GetRules(self, request, context):
        domain = self._domain(request.org_id, False)
        rules, defaults = self.holder.rules_of(domain)
        return loyalty_pb2.RulesAnswer(rules_json=msgspec.json.encode(rules).decode(), version=rules.version, org_id=domain,
                                       defaults=defaults)

    async def SaveRules(self, request, context):
        try:
            rules = msgspec.json.decode(request.rules_json.encode(), type=LoyaltyRules)
            validate(rules)  # the request whole, before anything is read
        except msgspec.DecodeError as error:  # malformed JSON, or a value of the wrong type
            raise InvalidInput("rules_json", str(error)) from None
        except RuleError as error:
            raise error.within("rules_json") from None
        domain = self._domain(request.org_id, True)
        saved = await self.holder.save(rules, domain)
        return loyalty_pb2.RulesAnswer(rules_json=msgspec.json.encode(saved).decode(), version=saved.version, org_id=domain)

    def _gift_answer(self, code: int, gift_id: int) -> loyalty_pb2.GiftAnswer:
        with self.store.env.begin() as txn:
            raw = txn.get(u64_key(gift_id), db=self.store.gifts)
            domain = gift_domain(txn, self.store, gift_id)
        answer = loyalty_pb2.GiftAnswer(result=code, result_text=answers.result_text(code))
        if raw is not None:
            answer.gift.CopyFrom(gift_message(decode(Gift, raw), domain))
        return answer

    def _change_gift(self, gift_id: int, op: Op, scope: Scope, domain: int | None):
        """A change of a gift's kernel record, and its domain, in one write:
        the gift must be the caller's domain's (another's, or the network's
        for a domain's user, is NotFound as an unknown gift; a user below the
        headquarters may not change the catalogue). domain None: keep the
        gift's own (AddGiftStock); a new gift joins `domain`'s catalogue."""

        def change(txn):
            exists = txn.get(u64_key(gift_id), db=self.store.gifts) is not None
            owner = gift_domain(txn, self.store, gift_id) if exists else (NETWORK if domain is None else domain)
            if exists and domain is not None and owner != domain:
                raise NotFound(gift_missing(gift_id))  # the id is another catalogue's
            if not scope.everywhere:
                if owner != scope.domain:
                    raise NotFound(gift_missing(gift_id))
                if scope.org_id != owner:
                    raise PermissionDenied(f"the gift catalogue holds for the whole domain of headquarters {owner}: only "
                                           f"its users change it", reason="DOMAIN_SETTING")
            now_ms = self.committer.clock()
            (result,) = self.ledger.apply_in(txn, [op], now_ms, business_day(now_ms, self.committer.utc_offset_minutes))
            if result.code == ResultCode.APPROVED and not exists and owner != NETWORK:
                txn.put(u64_key(gift_id), owner.to_bytes(4, "big"), db=self.store.loyalty_gift_domains)
            return result

        return self.committer.write(change)

    async def SetGift(self, request, context):
        terms = request.terms
        requests.require_range(terms.gift_id, "terms.gift_id", 1, 2**64 - 1)
        requests.require_range(terms.points_price, "terms.points_price", 0, limits.POINTS_MAX)
        requests.require_range(terms.cash_price_minor, "terms.cash_price_minor", 0, limits.AMOUNT_MINOR_MAX)
        if terms.points_price + terms.cash_price_minor == 0:
            raise InvalidInput("terms", "a gift needs a points price or a cash price")
        if terms.valid_to_day and terms.valid_from_day > terms.valid_to_day:
            raise InvalidInput("terms.valid_to_day", "must not be before valid_from_day")
        if terms.stock:
            raise InvalidInput("terms.stock", "SetGift sets the terms only: add or remove stock with AddGiftStock "
                                              "(every change of stock is a counted movement)")
        scope = staff_scope(self.store)
        domain = self._domain(request.org_id, False, "the gift catalogue")
        mask = 0
        for index, tier in enumerate(terms.tiers):
            if tier not in Tier._value2member_map_:
                raise InvalidInput(f"terms.tiers[{index}]", f"must be one of {', '.join(t.name for t in Tier)}, got {tier}")
            mask |= 1 << tier
        op = Op(kind=OpKind.GIFT_SET, item_id=terms.gift_id, amount=terms.points_price, bonus_points=terms.cash_price_minor,
                count_limit=terms.per_customer_limit, tier=mask, period_start=terms.valid_from_day, period=terms.valid_to_day)
        # The everywhere actor naming no domain changes a gift where it is.
        result = await self._change_gift(terms.gift_id, op, scope, None if scope.everywhere and not request.org_id else domain)
        return self._gift_answer(result.code, terms.gift_id)

    async def AddGiftStock(self, request, context):
        requests.require_range(request.gift_id, "gift_id", 1, 2**64 - 1)
        requests.require_range(request.delta, "delta", -limits.GIFT_STOCK_MAX, limits.GIFT_STOCK_MAX)
        if request.delta == 0:
            raise InvalidInput("delta", "must not be 0")
        op = Op(kind=OpKind.GIFT_STOCK, item_id=request.gift_id, amount=request.delta)
        result = await self._change_gift(request.gift_id, op, staff_scope(self.store), None)
        return self._gift_answer(result.code, request.gift_id)

    async def SetTier(self, request, context):
        require_card(request.card_id)
        if request.tier not in Tier._value2member_map_:
            raise InvalidInput("tier", f"must be one of {', '.join(tier.name for tier in Tier)}, got {request.tier}")
        if not self._card_seen(request.card_id):
            return loyalty_answer(Result(code=ResultCode.CARD_NOT_FOUND, kind=OpKind.SET_TIER), 0)
        result = await self.committer.submit(Op(kind=OpKind.SET_TIER, card_id=request.card_id, tier=request.tier, reason=TierReason.ADMIN))
        return loyalty_answer(result, 0)

    async def SetTimeZone(self, request, context):
        require_card(request.card_id)
        requests.require_range(request.utc_offset_minutes, "utc_offset_minutes", -limits.TZ_OFFSET_MINUTES_MAX, limits.TZ_OFFSET_MINUTES_MAX)
        if not self._card_seen(request.card_id):
            return loyalty_answer(Result(code=ResultCode.CARD_NOT_FOUND, kind=OpKind.SET_MEMBER), 0)
        result = await self.committer.submit(Op(kind=OpKind.SET_MEMBER, card_id=request.card_id, tz_offset_minutes=request.utc_offset_minutes))
        return loyalty_answer(result, 0)
