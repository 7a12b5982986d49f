"""RiskService: velocity limits, the blacklist and flags; the risk every operation asks.

Owns: the RPC handlers of tally.v1.RiskService (validation naming the field,
answers), and RiskHolder: the rules in force in this process (reloaded when
saved, like the loyalty rules), the velocity takes of an operation, the
blacklist check, and the flag watch.
Used by: server/app.py (wiring), server/promotion_service.py and
server/payments.py (`RiskHolder.sale_takes`, `blocking_entry`, `observe_sale`).

The kernel counts velocity limits (core/risk/rules.py); nothing here decides
a limit from a value it read.
"""

import logging
import time

import msgspec

from core import limits
from core.risk import blacklist, flags
from core.risk.rules import FlagRules, RiskRules, VelocityLimit, load_rules, save_rules, velocity_takes
from server import requests
from tally.v1 import promotion_pb2, promotion_pb2_grpc

log = logging.getLogger("tally.risk")

BY_LENGTH_MAX = 64


class RiskHolder:
    """The risk rules in force in this process: reloaded when saved here and
    at most a second after another process saved them."""

    REFRESH_INTERVAL_S = 1.0

    def __init__(self, store, writer, utc_offset_minutes: int = 0):
        self.store = store
        # The one write path (core/writes.py): the server's group commit.
        self.writer = writer
        self.utc_offset_minutes = utc_offset_minutes
        self.watch = flags.FlagWatch(utc_offset_minutes)
        self._rules = load_rules(store)
        self._loaded_at = time.monotonic()
        self._blacklist_checked_at = None
        self._blacklist_is_empty = False

    @property
    def rules(self) -> RiskRules:
        if time.monotonic() - self._loaded_at > self.REFRESH_INTERVAL_S:
            self._rules = load_rules(self.store)
            self._loaded_at = time.monotonic()
        return self._rules

    async def save(self, rules: RiskRules) -> RiskRules:
        self._rules = await self.writer.write(lambda txn: save_rules(txn, self.store, rules))
        self._loaded_at = time.monotonic()
        return self._rules

    def sale_takes(self, card_id: int, now_ms: int, amount_minor: int, points_earned: int = 0):
        """Velocity takes of a sale, to link to its PAY (COUNTER_TAKES_PER_SALE_MAX
        bounds them with the promotions' takes: at most 64 limits exist, but
        only those of the sale's measures take)."""
        return velocity_takes(self.rules, card_id, now_ms, sale_minor=amount_minor, points_earned=points_earned,
                              utc_offset_minutes=self.utc_offset_minutes)

    def redemption_takes(self, card_id: int, now_ms: int):
        return velocity_takes(self.rules, card_id, now_ms, redemptions=1, utc_offset_minutes=self.utc_offset_minutes)

    def blocking_entry(self, card_id: int, now_ms: int):
        """The blacklist entry refusing the card now, or None. While the
        blacklist is empty (checked at most every REFRESH_INTERVAL_S, and at
        once after a change here) no sale pays for a lookup."""
        if self._blacklist_empty():
            return None
        return blacklist.blocking_entry(self.store, card_id, now_ms)

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
        rules = self.rules.flags
        if not rules.enabled:
            return []
        raised = self.watch.observe(rules, card_id, station_id, amount_minor, now_ms)
        return await self.writer.write(lambda txn: flags.record(txn, self.store, raised)) if raised else []


def limit_message(limit: VelocityLimit) -> promotion_pb2.VelocityLimit:
    return promotion_pb2.VelocityLimit(limit_id=limit.limit_id, name=limit.name, measure=limit.measure, window=limit.window,
                                       ceiling=limit.ceiling)


def rules_answer(rules: RiskRules) -> promotion_pb2.RiskRulesAnswer:
    return promotion_pb2.RiskRulesAnswer(
        limits=[limit_message(limit) for limit in rules.limits],
        flags=promotion_pb2.FlagRules(**msgspec.structs.asdict(rules.flags)),
        version=rules.version,
    )


def entry_message(entry: blacklist.BlacklistEntry) -> promotion_pb2.BlacklistEntry:
    return promotion_pb2.BlacklistEntry(**msgspec.structs.asdict(entry))


def require_by(by: str):
    requests.require_length(by, "by", 1, BY_LENGTH_MAX)


class RiskService(promotion_pb2_grpc.RiskServiceServicer):
    def __init__(self, holder: RiskHolder, clock):
        self.holder = holder
        self.clock = clock

    async def _save(self, rules: RiskRules) -> promotion_pb2.RiskRulesAnswer:
        return rules_answer(await self.holder.save(rules))

    async def ListLimits(self, request, context):
        return rules_answer(self.holder.rules)

    async def SetLimits(self, request, context):
        # Unknown enum values are refused by validation, naming the field.
        found = tuple(VelocityLimit(limit_id=limit.limit_id, name=limit.name, measure=limit.measure, window=limit.window,
                                    ceiling=limit.ceiling) for limit in request.limits)
        return await self._save(msgspec.structs.replace(self.holder.rules, limits=found))

    async def SetFlagRules(self, request, context):
        # Every field is taken as sent: 0 is a real hour here.
        given = request.flags
        rules = FlagRules(small_sale_max_minor=given.small_sale_max_minor, small_sales_count=given.small_sales_count,
                          small_sales_window_s=given.small_sales_window_s, quiet_from_hour=given.quiet_from_hour,
                          quiet_to_hour=given.quiet_to_hour)
        return await self._save(msgspec.structs.replace(self.holder.rules, flags=rules))

    async def AddBlacklistEntry(self, request, context):
        require_by(request.by)
        entry = blacklist.BlacklistEntry(card_id=request.card_id, reason=request.reason, added_by=request.by,
                                         added_ms=self.clock(), until_ms=request.until_ms)
        await self.holder.writer.write(lambda txn: blacklist.add(txn, self.holder.store, entry))
        self.holder.blacklist_changed()
        log.info("card %d blacklisted by %s: %s", entry.card_id, entry.added_by, entry.rule)
        return promotion_pb2.BlacklistAnswer(found=True, entry=entry_message(entry))

    async def RemoveBlacklistEntry(self, request, context):
        requests.require_range(request.card_id, "card_id", 1, limits.CARD_ID_MAX)
        require_by(request.by)
        entry = blacklist.entry_of(self.holder.store, request.card_id)
        if entry is None:
            return promotion_pb2.BlacklistAnswer(found=False)
        await self.holder.writer.write(lambda txn: blacklist.remove(txn, self.holder.store, request.card_id))
        self.holder.blacklist_changed()
        log.info("card %d off the blacklist (by %s; it was: %s)", request.card_id, request.by, entry.rule)
        return promotion_pb2.BlacklistAnswer(found=True, entry=entry_message(entry))

    async def ListBlacklist(self, request, context):
        return promotion_pb2.ListBlacklistAnswer(entries=[entry_message(entry) for entry in blacklist.entries(self.holder.store)])

    async def ListFlags(self, request, context):
        limit = request.limit or 1000
        requests.require_range(limit, "limit", 1, flags.LIST_LIMIT_MAX)
        requests.require_range(request.after_seq, "after_seq", 0, 2**64 - 2)
        found = flags.list_flags(self.holder.store, request.after_seq, request.card_id, limit)
        return promotion_pb2.ListFlagsAnswer(flags=[promotion_pb2.Flag(**msgspec.structs.asdict(flag)) for flag in found])
