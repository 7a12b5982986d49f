"""Clearing for a business day: what each station is owed or owes, per method.

Owns: reading a day's journal and summing, per station and payment method,
every money movement into or out of the station's two system accounts: its
receivable (sales paid by fleet, personal, points as cash and each channel;
voids, reversals, refunds and adjustments back) and its top-up funding (cash
the station took for top-ups, which it owes headquarters).
Used by: the CLI (`clear`, `report`), the gRPC service, tests.

Sign: net_minor > 0, the station is owed that much by whoever funds the
method; < 0, the station owes it. The lines add up exactly to the change of
the station's accounts in the journal for the day (a test checks the sums
against the journal and against account balances).

Who funds each method:
  fleet              the company behind the fleet card (its prepaid account)
  personal           headquarters' stored-value float (the cardholder prepaid)
  points             headquarters' points funding
  <channel>          the channel (bank card acquirer, WeChat Pay, Alipay)
  top-up             the station owes headquarters the cash it took
  adjustment/<chan>  settlement's corrections after reconciliation
  anything newer     named after its journal movement (e.g. shortfall)
"""

import msgspec
import numpy as np

from core.counters import budget_takes
from core.promotions.model import funder_name
from core.promotions.store import load_promotion
from core.records import Txn, decode, u64_key
from core.results import AccountKind, Channel, Movement, TxnState, Unit, unit_of
from core.settlement.journal import read_days
from core.settlement.shifts import first_txn_of_day, past_day

STATION_ACCOUNT_KINDS = (AccountKind.STATION_RECEIVABLE, AccountKind.TOPUP_FUNDING)
METHOD_NAMES = {
    Movement.FLEET: "fleet",
    Movement.PERSONAL: "personal",
    Movement.POINTS_CASH: "points",
    Movement.TOPUP: "top-up",
    Movement.TRANSFER: "adjustment",
}
FUNDED_BY = {
    "fleet": "company (fleet account)",
    "personal": "headquarters (stored value)",
    "points": "headquarters (points funding)",
    "top-up": "station owes headquarters",
}
_GROUP_DTYPE = np.dtype([("station", "<u8"), ("movement", "u1"), ("channel", "<u8")])


class ClearingLine(msgspec.Struct, frozen=True):
    station_id: int
    method: str
    funded_by: str
    # Money in (sales, reversed top-ups) and out (returns, top-ups), >= 0.
    in_minor: int
    out_minor: int
    net_minor: int
    entries: int


class DiscountLine(msgspec.Struct, frozen=True):
    """Discounts a promotion gave on a station's sales of the day (posted,
    not voided or reversed): the customers paid that much less, and the
    funder owes it to the station (a station-funded promotion is the
    station's own cost). Not a journal movement, so not in `lines`."""

    station_id: int
    promotion_id: int
    name: str
    funded_by: str
    funder_id: int
    sales: int
    discount_minor: int


class Clearing(msgspec.Struct, frozen=True):
    day: int
    lines: tuple[ClearingLine, ...]
    discounts: tuple[DiscountLine, ...] = ()

    def net_by_station(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for line in self.lines:
            totals[line.station_id] = totals.get(line.station_id, 0) + line.net_minor
        return totals

    def net_by_method(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for line in self.lines:
            totals[line.method] = totals.get(line.method, 0) + line.net_minor
        return totals

    @property
    def net_minor(self) -> int:
        return sum(line.net_minor for line in self.lines)


def method_name(movement: int, channel: int) -> str:
    try:
        name = METHOD_NAMES.get(Movement(movement)) or Movement(movement).name.lower()
    except ValueError:
        name = f"movement {movement}"
    if channel:
        channel_name = Channel(channel).name.lower() if channel in set(Channel) else f"channel {channel}"
        return channel_name if movement == Movement.CHANNEL else f"{name}/{channel_name}"
    return name


def _money_only(entries: np.ndarray) -> np.ndarray:
    points_kinds = [kind for kind in AccountKind if unit_of(kind) == Unit.POINTS]
    return entries[~np.isin(entries["debit_kind"], points_kinds) & ~np.isin(entries["credit_kind"], points_kinds)]


def _side(entries: np.ndarray, side: str, other: str) -> tuple[np.ndarray, np.ndarray]:
    """Group keys and amounts of entries whose `side` account is a station's."""
    chosen = entries[np.isin(entries[side + "_kind"], STATION_ACCOUNT_KINDS)]
    keys = np.empty(len(chosen), dtype=_GROUP_DTYPE)
    keys["station"] = chosen[side + "_owner"]
    keys["movement"] = chosen["movement"]
    keys["channel"] = np.where(chosen[other + "_kind"] == AccountKind.CHANNEL_CLEARING, chosen[other + "_owner"], 0)
    return keys, chosen["amount"]


def group_sums(entries: np.ndarray) -> dict[tuple[int, int, int], tuple[int, int, int]]:
    """(station, movement, channel) -> (money in, money out, entries) of the
    journal entries given (any days: the caller picks them)."""
    entries = _money_only(entries)
    credit_keys, credit_amounts = _side(entries, "credit", "debit")
    debit_keys, debit_amounts = _side(entries, "debit", "credit")
    keys = np.concatenate([credit_keys, debit_keys])
    signed = np.concatenate([credit_amounts, -debit_amounts])
    if len(keys) == 0:
        return {}
    packed = _packed(keys)
    if packed is None:  # an owner id too large to pack: group the records themselves
        unique, inverse = np.unique(keys, return_inverse=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        group_of = inverse.ravel()[order]
    else:
        order = np.argsort(packed, kind="stable")
        group_of = packed[order]
    starts = np.flatnonzero(np.r_[True, group_of[1:] != group_of[:-1]])
    ordered = signed[order]
    in_sums = np.add.reduceat(np.where(ordered > 0, ordered, 0), starts)
    out_sums = np.add.reduceat(np.where(ordered < 0, -ordered, 0), starts)
    counts = np.diff(np.r_[starts, len(ordered)])
    firsts = keys[order[starts]]
    return {(station, movement, channel): (money_in, money_out, count)
            for station, movement, channel, money_in, money_out, count in zip(
                firsts["station"].tolist(), firsts["movement"].tolist(), firsts["channel"].tolist(), in_sums.tolist(),
                out_sums.tolist(), counts.tolist())}


def _packed(keys: np.ndarray) -> np.ndarray | None:
    """Each (station, movement, channel) as one uint64 (station u32, channel
    u24, movement u8), which sorts ten times faster than the records; None
    when a station or channel id does not fit."""
    if keys["station"].max() >= 1 << 32 or keys["channel"].max() >= 1 << 24:
        return None
    return (keys["station"] << np.uint64(32)) | (keys["channel"] << np.uint64(8)) | keys["movement"].astype(np.uint64)


def lines_of(sums: dict[tuple[int, int, int], tuple[int, int, int]]) -> tuple[ClearingLine, ...]:
    """Clearing lines of group_sums' sums, in station, movement, channel order."""
    lines = []
    for (station, movement, channel), (money_in, money_out, count) in sorted(sums.items()):
        method = method_name(movement, channel)
        funded_by = FUNDED_BY.get(method) or (f"the channel ({method})" if movement == Movement.CHANNEL else "see the journal")
        lines.append(ClearingLine(station, method, funded_by, money_in, money_out, money_in - money_out, count))
    return tuple(lines)


def clear_day(store, day: int) -> Clearing:
    return Clearing(day=day, lines=lines_of(group_sums(read_days(store, day, day))), discounts=discounts_of_day(store, day))


def discounts_of_day(store, day: int) -> tuple[DiscountLine, ...]:
    """Per station and promotion, from what the day's sales took from the
    promotions' budgets (core/counters.budget_takes)."""
    sums: dict[tuple[int, int], list[int]] = {}
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.txn_counters)
        if cursor.set_range(u64_key(first_txn_of_day(txn, store, day))):
            for key in cursor.iternext(values=False):
                record = txn.get(key, db=store.txns)
                if record is None:
                    continue
                sale = decode(Txn, record)
                if past_day(sale, day):
                    break
                if sale.business_day != day or sale.state != TxnState.POSTED or sale.flags:
                    continue
                for promotion_id, minor in budget_takes(txn, store, sale.txn_id):
                    total = sums.setdefault((sale.station_id, promotion_id), [0, 0])
                    total[0] += 1
                    total[1] += minor
    lines = []
    for (station_id, promotion_id), (sales, minor) in sorted(sums.items()):
        promotion = load_promotion(store, promotion_id)
        funder = funder_name(promotion.funder) if promotion else "unknown (promotion deleted)"
        lines.append(DiscountLine(station_id, promotion_id, promotion.name if promotion else "", funder,
                                  promotion.funder_id if promotion else 0, sales, minor))
    return tuple(lines)
