"""RiskService: velocity limits, the blacklist and flags; the risk every operation asks.

Owns: the RPC handlers of tally.v1.RiskService (validation naming the field,
answers), and RiskHolder: the rules in force in this process (reloaded when
saved, like the loyalty rules), the velocity takes of an operation, the
blacklist check, and the flag watch.
Used by: server/app.py (wiring), server/promotion_service.py and
server/payments.py (`RiskHolder.sale_takes`, `blocking_entry`, `observe_sale`).

The kernel counts velocity limits (core/risk/rules.py); nothing here decides
a limit from a value it read.

Domains (core/domains.py): limits and flag rules are one set per
headquarters domain, and a sale (or redemption) takes those of its
station's domain (the network's if the domain saved none). Blacklist
entries and flags are their card's organisation's: staff see and change
those of the cards they see.
"""

import logging
import time

import msgspec

from core import limits
from core.domains import NETWORK, Scope, StationTree, card_org, require_card, settings_domain_of
from core.risk import blacklist, flags
from core.risk.rules import FlagRules, RiskRules, VelocityLimit, load_all_rules, save_rules, validate, velocity_takes
from server import requests
from server.scope import staff_scope
from tally.v1 import promotion_pb2, promotion_pb2_grpc

log = logging.getLogger("tally.risk")

BY_LENGTH_MAX = 64


class RiskHolder:
    """The risk rules in force in this process, per domain: reloaded when
    saved here and at most a second after another process saved them."""

    REFRESH_INTERVAL_S = 1.0

    def __init__(self, store, writer, utc_offset_minutes: int = 0):
        self.store = store
        # The one write path (core/writes.py): the server's group commit.
        self.writer = writer
        self.utc_offset_minutes = utc_offset_minutes
        self.tree = StationTree(store)
        self.watch = flags.FlagWatch(utc_offset_minutes)
        self._saved = load_all_rules(store)
        self._loaded_at = time.monotonic()
        self._blacklist_checked_at = None
        self._blacklist_is_empty = False

    def _fresh(self) -> dict[int, RiskRules]:
        if time.monotonic() - self._loaded_at > self.REFRESH_INTERVAL_S:
            self._saved = load_all_rules(self.store)
            self._loaded_at = time.monotonic()
        return self._saved

    @property
    def rules(self) -> RiskRules:
        """The network's rules (what a domain that saved none runs by)."""
        return self.rules_of(NETWORK)[0]

    def rules_of(self, domain: int) -> tuple[RiskRules, bool]:
        """(the rules a domain runs by, whether they are the network's
        because it saved none)."""
        saved = self._fresh()
        own = saved.get(domain)
        if own is not None:
            return own, False
        return saved.get(NETWORK) or RiskRules(), domain != NETWORK

    def _at(self, station_id: int) -> tuple[RiskRules, int]:
        """(the rules of a station's domain, the domain whose they are)."""
        saved = self._fresh()
        # Only the network's rules saved: no station needs looking up.
        domain = self.tree.domain(station_id) if len(saved) > (NETWORK in saved) else NETWORK
        rules, defaults = self.rules_of(domain)
        return rules, NETWORK if defaults else domain

    @property
    def any_limits(self) -> bool:
        """Whether some domain has velocity limits (else no sale links any)."""
        return any(rules.limits for rules in self._fresh().values())

    async def save(self, rules: RiskRules, domain: int = NETWORK) -> RiskRules:
        saved = await self.writer.write(lambda txn: save_rules(txn, self.store, rules, domain))
        self._saved = {**self._saved, domain: saved}
        return saved

    def sale_takes(self, card_id: int, now_ms: int, amount_minor: int, points_earned: int = 0, station_id: int = 0):
        """Velocity takes of a sale at station_id under its domain's limits,
        to link to its PAY (COUNTER_TAKES_PER_SALE_MAX bounds them with the
        promotions' takes: at most 64 limits exist, but only those of the
        sale's measures take)."""
        rules, domain = self._at(station_id)
        return velocity_takes(rules, card_id, now_ms, sale_minor=amount_minor, points_earned=points_earned,
                              utc_offset_minutes=self.utc_offset_minutes, domain=domain)

    def redemption_takes(self, card_id: int, now_ms: int, station_id: int = 0):
        rules, domain = self._at(station_id)
        return velocity_takes(rules, card_id, now_ms, redemptions=1, utc_offset_minutes=self.utc_offset_minutes, domain=domain)

    def blocking_entry(self, card_id: int, now_ms: int):
        """The blacklist entry refusing the card now, or None. While the
        blacklist is empty (checked at most every REFRESH_INTERVAL_S, and at
        once after a change here) no sale pays for a lookup."""
        if self._blacklist_empty():
            return None
        return blacklist.blocking_entry(self.store, card_id, now_ms)

    def blocking_possible(self) -> bool:
        """Whether the blacklist holds any entry (what blocking_entry looks up)."""
        return not self._blacklist_empty()

    def flags_at(self, station_id: int):
        """The flag rules of the station's domain (observe_sale's)."""
        return self._at(station_id)[0].flags

    def blacklist_changed(self):
        self._blacklist_checked_at = None

    def _blacklist_empty(self) -> bool:
        now = time.monotonic()
        if self._blacklist_checked_at is None or now - self._blacklist_checked_at > self.REFRESH_INTERVAL_S:
            with self.store.env.begin() as txn:
                self._blacklist_is_empty = txn.stat(self.store.risk_blacklist)["entries"] == 0
            self._blacklist_checked_at = now
        return self._blacklist_is_empty

    async def observe_sale(self, card_id: int, station_id: int, amount_minor: int, now_ms: int) -> list[flags.Flag]:
        """After an approved sale: record the flags it raises (never declines;
        the write runs off the event loop)."""
        rules = self._at(station_id)[0].flags
        if not rules.enabled:
            return []
        raised = self.watch.observe(rules, card_id, station_id, amount_minor, now_ms)
        return await self.writer.write(lambda txn: flags.record(txn, self.store, raised)) if raised else []


def limit_message(limit: VelocityLimit) -> promotion_pb2.VelocityLimit:
    return promotion_pb2.VelocityLimit(limit_id=limit.limit_id, name=limit.name, measure=limit.measure, window=limit.window,
                                       ceiling=limit.ceiling)


def rules_answer(rules: RiskRules, domain: int = NETWORK, defaults: bool = False) -> promotion_pb2.RiskRulesAnswer:
    return promotion_pb2.RiskRulesAnswer(
        limits=[limit_message(limit) for limit in rules.limits],
        flags=promotion_pb2.FlagRules(**msgspec.structs.asdict(rules.flags)),
        version=rules.version, org_id=domain, defaults=defaults,
    )


def entry_message(entry: blacklist.BlacklistEntry) -> promotion_pb2.BlacklistEntry:
    return promotion_pb2.BlacklistEntry(**msgspec.structs.asdict(entry))


def require_by(by: str):
    requests.require_length(by, "by", 1, BY_LENGTH_MAX)


class RiskService(promotion_pb2_grpc.RiskServiceServicer):
    def __init__(self, holder: RiskHolder, clock):
        self.holder = holder
        self.store = holder.store
        self.clock = clock

    def _domain(self, org_id: int, change: bool) -> int:
        return settings_domain_of(self.store, staff_scope(self.store), org_id, change, "risk limits and flag rules")

    async def _save(self, domain: int, **changes) -> promotion_pb2.RiskRulesAnswer:
        rules = msgspec.structs.replace(self.holder.rules_of(domain)[0], **changes)
        return rules_answer(await self.holder.save(rules, domain), domain)

    async def ListLimits(self, request, context):
        domain = self._domain(request.org_id, False)
        rules, defaults = self.holder.rules_of(domain)
        return rules_answer(rules, domain, defaults)

    async def SetLimits(self, request, context):
        # Unknown enum values are refused by validation, naming the field.
        found = tuple(VelocityLimit(limit_id=limit.limit_id, name=limit.name, measure=limit.measure, window=limit.window,
                                    ceiling=limit.ceiling) for limit in request.limits)
        validate(RiskRules(limits=found))  # the request whole, before anything is read
        return await self._save(self._domain(request.org_id, True), limits=found)

    async def SetFlagRules(self, request, context):
        # Every field is taken as sent: 0 is a real hour here.
        given = request.flags
        rules = FlagRules(small_sale_max_minor=given.small_sale_max_minor, small_sales_count=given.small_sales_count,
                          small_sales_window_s=given.small_sales_window_s, quiet_from_hour=given.quiet_from_hour,
                          quiet_to_hour=given.quiet_to_hour)
        validate(RiskRules(flags=rules))  # the request whole, before anything is read
        return await self._save(self._domain(request.org_id, True), flags=rules)

    def _card_seen(self, scope: Scope):
        """seen(txn, card_id) for the lists: the card's organisation is the caller's."""
        return None if scope.everywhere else (lambda txn, card_id: scope.sees(card_org(txn, self.store, card_id)))

    async def AddBlacklistEntry(self, request, context):
        require_by(request.by)
        entry = blacklist.BlacklistEntry(card_id=request.card_id, reason=request.reason, added_by=request.by,
                                         added_ms=self.clock(), until_ms=request.until_ms)
        blacklist.validate(entry)  # the whole request, before anything is read
        require_card(self.store, staff_scope(self.store), request.card_id)
        await self.holder.writer.write(lambda txn: blacklist.add(txn, self.holder.store, entry))
        self.holder.blacklist_changed()
        log.info("card %d blacklisted by %s: %s", entry.card_id, entry.added_by, entry.rule)
        return promotion_pb2.BlacklistAnswer(found=True, entry=entry_message(entry))

    async def RemoveBlacklistEntry(self, request, context):
        requests.require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
        require_by(request.by)
        require_card(self.store, staff_scope(self.store), request.card_id)
        entry = blacklist.entry_of(self.holder.store, request.card_id)
        if entry is None:
            return promotion_pb2.BlacklistAnswer(found=False)
        await self.holder.writer.write(lambda txn: blacklist.remove(txn, self.holder.store, request.card_id))
        self.holder.blacklist_changed()
        log.info("card %d off the blacklist (by %s; it was: %s)", request.card_id, request.by, entry.rule)
        return promotion_pb2.BlacklistAnswer(found=True, entry=entry_message(entry))

    async def ListBlacklist(self, request, context):
        found = blacklist.entries(self.holder.store, seen=self._card_seen(staff_scope(self.store)))
        return promotion_pb2.ListBlacklistAnswer(entries=[entry_message(entry) for entry in found])

    async def ListFlags(self, request, context):
        limit = request.limit or 1000
        requests.require_range(limit, "limit", 1, flags.LIST_LIMIT_MAX)
        requests.require_range(request.after_seq, "after_seq", 0, 2**64 - 2)
        seen = self._card_seen(staff_scope(self.store))
        found = flags.list_flags(self.holder.store, request.after_seq, request.card_id, limit, seen)
        return promotion_pb2.ListFlagsAnswer(flags=[promotion_pb2.Flag(**msgspec.structs.asdict(flag)) for flag in found])
