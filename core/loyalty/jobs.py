"""Scheduled loyalty jobs: expiry, monthly extension, yearly clearance, tiers, reminders.

Owns: deciding which cards a job touches, from the stored records, and
running the kernel operations that do the work (EXPIRE_POINTS, EXTEND_LOTS,
CLEAR_LOTS, SET_TIER) in batches through core.ledger.
Used by: `python -m core.loyalty` (cron), tests.

Every job is idempotent and resumable: expiry removes what it expired from
the index it reads; extension and clearance are marked done per card and
month or year in the card's member record; a tier change is made only when
the tier differs. A job killed half way is simply run again.
"""

import collections
import datetime
import sys

from core import dates, limits, lots
from core.ledger import Ledger
from core.loyalty.rules import CardRules, LoyaltyRules
from core.records import Member, Op, Txn, decode, parse_lot_expiry_key, u64_key
from core.results import OpKind, Tier, TierReason, TxnFlag, TxnState

MS_PER_DAY = 86_400_000
EPOCH = dates.EPOCH
SPEND_KINDS = (OpKind.PAY, OpKind.PREAUTH)


day_of, date_of = dates.day_of, dates.date_of


def month_index(year: int, month: int) -> int:
    return year * 12 + month - 1


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="card", disable=None, leave=False, file=sys.stderr)


def run_ops(ledger: Ledger, ops: list[Op], day: int, description: str) -> list:
    """Apply `ops` as of `day`, a batch per commit, with a progress bar."""
    results = []
    with _progress(len(ops), description) as bar:
        for start in range(0, len(ops), limits.BATCH_SIZE_MAX):
            batch = ops[start : start + limits.BATCH_SIZE_MAX]
            results.extend(ledger.apply(batch, day * MS_PER_DAY, day))
            bar.update(len(batch))
    return results


# ---------------------------------------------------------------- expiry


def cards_with_lots_expired(store, as_of_day: int) -> list[int]:
    cards = set()
    with store.env.begin() as txn:
        for key in txn.cursor(db=store.lot_expiry).iternext(values=False):
            expires_day, card_id = parse_lot_expiry_key(key)
            if expires_day > as_of_day:
                break
            cards.add(card_id)
    return sorted(cards)


def expire_points(ledger: Ledger, as_of_day: int, today: int) -> dict:
    """Expire every lot whose expiry day is on or before as_of_day."""
    if as_of_day > today:
        raise ValueError(f"--as-of must not be after today ({date_of(today)}): points cannot expire early")
    cards = cards_with_lots_expired(ledger.store, as_of_day)
    results = run_ops(ledger, [Op(kind=OpKind.EXPIRE_POINTS, card_id=card) for card in cards], as_of_day, "expire")
    return {"cards": len(cards), "points_expired": sum(r.amount for r in results)}


# ---------------------------------------------------------------- spend


def spend_by_card(store, first_day: int, last_day: int) -> dict[int, int]:
    """What each card paid (minor units) for sales on business days
    first_day .. last_day, less what was refunded; voided and reversed
    sales do not count."""
    spend = collections.Counter()
    with store.env.begin() as txn:
        for _, value in txn.cursor(db=store.txns):
            record = decode(Txn, value)
            if record.kind not in SPEND_KINDS or record.state != TxnState.POSTED or record.card_id == 0:
                continue
            if record.flags & (TxnFlag.VOIDED | TxnFlag.REVERSED) or not first_day <= record.business_day <= last_day:
                continue
            posted = record.posted_fleet + record.posted_personal + record.posted_points_cash + record.posted_channel
            refunded = record.refunded_fleet + record.refunded_personal + record.refunded_points_cash + record.refunded_channel
            spend[record.card_id] += posted - refunded
    return dict(spend)


def _per_card(rules: LoyaltyRules | CardRules) -> CardRules:
    return rules if isinstance(rules, CardRules) else CardRules.fixed(rules)


def extend_lots(ledger: Ledger, rules: LoyaltyRules | CardRules, year: int, month: int) -> dict:
    """Extend every lot of each card whose spend in the month reached the
    threshold of its rules (its domain's, with CardRules), once per card and
    month."""
    per_card = _per_card(rules)
    first = datetime.date(year, month, 1)
    last = datetime.date(year + month // 12, month % 12 + 1, 1) - datetime.timedelta(days=1)
    spend = spend_by_card(ledger.store, day_of(first), day_of(last))
    expiry = {card: per_card.for_card(card).expiry for card in spend}
    cards = sorted(card for card, total in spend.items() if total >= expiry[card].extension_spend_minor)
    ops = [Op(kind=OpKind.EXTEND_LOTS, card_id=card, amount=expiry[card].extension_days, period=month_index(year, month))
           for card in cards]
    results = run_ops(ledger, ops, day_of(last), "extend")
    return {"cards": len(cards), "lots_moved": sum(r.amount for r in results)}


def clear_lots(ledger: Ledger, year: int) -> dict:
    """The yearly clearance: lots earned before January 1st of the previous
    year lose what is left of them, once per card and year."""
    cutoff = day_of(datetime.date(year - 1, 1, 1))
    cards = set()
    with ledger.store.env.begin() as txn:
        for lot in lots.every_open_lot(txn, ledger.store):
            if lot.earned_day < cutoff:
                cards.add(lot.card_id)
    ops = [Op(kind=OpKind.CLEAR_LOTS, card_id=card, period=year, period_start=cutoff) for card in sorted(cards)]
    results = run_ops(ledger, ops, day_of(datetime.date(year, 12, 31)), "clear")
    return {"cards": len(cards), "points_cleared": sum(r.amount for r in results)}


# ---------------------------------------------------------------- tiers


def tier_for(spend_minor: int, rules: LoyaltyRules) -> int:
    tier = Tier.REGULAR
    for candidate, threshold in sorted(rules.tiers.thresholds_minor.items(), key=lambda item: item[1]):
        if spend_minor >= threshold:
            tier = candidate
    return tier


def update_tiers(ledger: Ledger, rules: LoyaltyRules | CardRules, as_of_day: int) -> dict:
    """Move every card to the tier its spend over the rolling period earns
    (by its rules: its domain's, with CardRules), recording each change with
    its reason and the spend behind it."""
    per_card = _per_card(rules)
    periods = {every.tiers.rolling_days for every in per_card.every()}
    spends = {days: spend_by_card(ledger.store, as_of_day - days + 1, as_of_day) for days in periods}
    current = {}
    with ledger.store.env.begin() as txn:
        for key, _ in txn.cursor(db=ledger.store.cards):
            current[int.from_bytes(key, "big")] = Tier.REGULAR
        for _, value in txn.cursor(db=ledger.store.members):
            member = decode(Member, value)
            current[member.card_id] = member.tier
    ops = []
    for card_id, tier in sorted(current.items()):
        card_rules = per_card.for_card(card_id)
        spent = spends[card_rules.tiers.rolling_days].get(card_id, 0)
        target = tier_for(spent, card_rules)
        if target != tier:
            reason = TierReason.SPEND_UP if target > tier else TierReason.SPEND_DOWN
            ops.append(Op(kind=OpKind.SET_TIER, card_id=card_id, tier=target, reason=reason, amount=spent))
    run_ops(ledger, ops, as_of_day, "tiers")
    ups = sum(op.reason == TierReason.SPEND_UP for op in ops)
    return {"cards": len(current), "upgraded": ups, "downgraded": len(ops) - ups}


# ---------------------------------------------------------------- reminders


def expiring_soon(store, today: int, within_days: int) -> list[dict]:
    """Cards with points expiring in the next `within_days` days, soonest
    first. A lot expiring today is expired already (usable while the day is
    before its expires_day), so the list starts tomorrow."""
    found = []
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.lot_expiry)
        if cursor.set_range((today + 1).to_bytes(4, "big")):
            for key in cursor.iternext(values=False):
                expires_day, card_id = parse_lot_expiry_key(key)
                if expires_day > today + within_days:
                    break
                lot = lots.open_lot(txn, store, card_id, expires_day)
                found.append({"card_id": card_id, "expires_day": expires_day, "expires": str(date_of(expires_day)), "points": lot.remaining})
    return found


def member_tier(store, card_id: int) -> int:
    with store.env.begin() as txn:
        raw = txn.get(u64_key(card_id), db=store.members)
    return Tier.REGULAR if raw is None else decode(Member, raw).tier
