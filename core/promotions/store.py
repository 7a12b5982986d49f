"""Promotions, coupons, red packets and draws in LMDB; the snapshot pricing reads.

Owns: the promotion_* named databases (core/store.py lists them), saving a
promotion only after validation.py passed it, its life-cycle steps, the
sequences that number packets, coupons and the system's own requests, and
the in-memory Snapshot of promotions that pricing runs from.
Used by: server/promotion_service.py, server/payments.py (the snapshot).

Values: promotions and the stacking policy as JSON (readable by people and
by `GetPromotion`), coupons, packets and draws as msgpack. Counters live in
the kernel's `counters` database, never here: nothing here decides stock.

Functions that change something take the caller's write transaction
(core/writes.py: the one write path) and open none of their own. Several server processes (--workers) share the files: the
version under promotion_meta b"version" tells each that its snapshot is old.

Domains (core/domains.py): a promotion is its owner organisation's
(`org_id`); functions given a Scope see and change only the caller's, and
answer another's as they answer an id nobody uses. Its stations (and a
coupon's issue and use stations, a funding station) must lie in its owner's
subtree. The stacking policy is one per headquarters domain: key b"policy"
is the network's (domain 0, what a domain that saved none sells by),
b"policy/" + domain u32 a domain's.
"""

import struct
from collections.abc import Iterable

import msgspec

from core.admin.access import ancestry, organisation
from core.counters import PACKET_SHARE_VALUE, packet_share_key
from core.domains import EVERYWHERE, NETWORK, Scope, reaches
from core.errors import FailedPrecondition, NotFound
from core.promotions.model import (
    RUNNING_STAGES,
    Funder,
    Coupon,
    Draw,
    Packet,
    PacketState,
    Promotion,
    PromotionKind,
    StackingPolicy,
    Stage,
    StageChange,
    step,
)
from core.promotions.validation import PromotionError, validate, validate_policy
from core.records import u64_key
from core.store import load_json, put_versioned_json, rows

U64 = struct.Struct(">Q")
CARD_COUPON_KEY = struct.Struct(">QQ")
VERSION_KEY = b"version"
POLICY_KEY = b"policy"
POLICY_DOMAIN_KEY = b"policy/"
# Sequences: the last number given out.
PROMOTION_SEQUENCE = b"promotion_id"
PACKET_SEQUENCE = b"packet_id"
COUPON_SEQUENCE = b"coupon_id"
DRAW_SEQUENCE = b"draw_seq"
SERIAL_SEQUENCE = b"serial"
LIST_LIMIT_MAX = 10_000


class Conflict(FailedPrecondition):
    """The request does not fit the record's current state."""


def _get_u64(txn, db, key: bytes) -> int:
    raw = txn.get(key, db=db)
    return 0 if raw is None else U64.unpack(raw)[0]


def _bump(txn, db, key: bytes, count: int = 1) -> int:
    """Add count to a sequence; the first of the numbers given out."""
    last = _get_u64(txn, db, key)
    txn.put(key, U64.pack(last + count), db=db)
    return last + 1


def next_numbers(txn, store, sequence: bytes, count: int = 1) -> int:
    """Reserve `count` numbers of a sequence (in the caller's write
    transaction); the first of them. Numbers start at 1 and are never given
    out twice, even across processes."""
    return _bump(txn, store.promotion_meta, sequence, count)


# ---------------------------------------------------------------- promotions


def missing(promotion_id: int) -> str:
    """The words for a promotion nobody uses, or another domain's."""
    return f"no promotion {promotion_id}"


def load_promotion(store, promotion_id: int, scope: Scope = EVERYWHERE) -> Promotion | None:
    """The promotion, or None if there is none the caller sees."""
    with store.env.begin() as txn:
        raw = txn.get(u64_key(promotion_id), db=store.promotion_records)
    promotion = None if raw is None else msgspec.json.decode(raw, type=Promotion)
    return promotion if promotion is not None and scope.sees(promotion.org_id) else None


def list_promotions(store, kind: int = 0, stage: int = 0, limit: int = LIST_LIMIT_MAX,
                    scope: Scope = EVERYWHERE) -> list[Promotion]:
    found = []
    with store.env.begin() as txn:
        for _, raw in rows(txn, store.promotion_records):
            promotion = msgspec.json.decode(raw, type=Promotion)
            if not scope.sees(promotion.org_id):
                continue
            if (not kind or promotion.kind == kind) and (not stage or promotion.stage == stage):
                found.append(promotion)
                if len(found) >= limit:
                    break
    return found


def _put_promotion(txn, store, promotion: Promotion):
    txn.put(u64_key(promotion.promotion_id), msgspec.json.encode(promotion), db=store.promotion_records)
    _bump(txn, store.promotion_meta, VERSION_KEY)


def save_draft(txn, store, promotion: Promotion, by: str, now_ms: int, scope: Scope = EVERYWHERE) -> Promotion:
    """Create a promotion as a DRAFT (promotion_id 0: the next free id), or
    replace a draft's terms. Anything past DRAFT is refused: a submitted or
    approved promotion changes only by its life-cycle steps. Its owner
    (org_id, 0: the caller's organisation) must be the caller's to see."""
    promotion = msgspec.structs.replace(promotion, org_id=scope.owner_for(txn, store, promotion.org_id))
    if promotion.promotion_id == 0:
        promotion_id = _bump(txn, store.promotion_meta, PROMOTION_SEQUENCE)
        while txn.get(u64_key(promotion_id), db=store.promotion_records) is not None:
            promotion_id = _bump(txn, store.promotion_meta, PROMOTION_SEQUENCE)
        promotion = msgspec.structs.replace(promotion, promotion_id=promotion_id)
    raw = txn.get(u64_key(promotion.promotion_id), db=store.promotion_records)
    if raw is not None:
        current = msgspec.json.decode(raw, type=Promotion)
        scope.require(current.org_id, missing(promotion.promotion_id))
        if current.stage != Stage.DRAFT:
            raise Conflict(f"promotion {promotion.promotion_id} is {current.stage.name}: only a draft can be changed")
        history = current.history
    else:
        history = ()
    draft = msgspec.structs.replace(promotion, stage=Stage.DRAFT, history=(*history, step_record(Stage.DRAFT, by, now_ms)))
    validate(draft)
    require_within_owner(txn, store, draft)
    _put_promotion(txn, store, draft)
    return draft


def require_within_owner(txn, store, promotion: Promotion):
    """Every station the promotion names lies in its owner's subtree (the
    network's may name any): A's promotion neither runs nor is funded at
    B's stations."""
    if promotion.org_id == NETWORK:
        return
    if organisation(txn, store, promotion.org_id) is None:
        raise PromotionError("org_id", f"organisation {promotion.org_id} not found")
    named = [("stations", promotion.stations)]
    if promotion.coupon is not None:
        named += [("coupon.issue_stations", promotion.coupon.issue_stations), ("coupon.use_stations", promotion.coupon.use_stations)]
    if promotion.funder == Funder.STATION:
        named.append(("funder_id", (promotion.funder_id,)))
    for field, stations in named:
        for index, station in enumerate(stations):
            if not reaches(promotion.org_id, tuple(ancestry(txn, store, station))):
                where = field if field == "funder_id" else f"{field}[{index}]"
                raise PromotionError(where, f"station {station} is not in the subtree of organisation {promotion.org_id}, "
                                     "the promotion's owner")


def step_record(stage: Stage, by: str, now_ms: int) -> StageChange:
    if not by:
        raise PromotionError("by", "who saves the promotion must be named")
    return StageChange(stage, by, now_ms)


def step_promotion(txn, store, promotion_id: int, stage: Stage, by: str, now_ms: int, scope: Scope = EVERYWHERE) -> Promotion:
    """Move a promotion one step (model.step: the allowed steps, four eyes)."""
    raw = txn.get(u64_key(promotion_id), db=store.promotion_records)
    if raw is None:
        raise NotFound(missing(promotion_id))
    current = msgspec.json.decode(raw, type=Promotion)
    scope.require(current.org_id, missing(promotion_id))
    moved = step(current, stage, by, now_ms)
    _put_promotion(txn, store, moved)
    return moved


# ---------------------------------------------------------------- policy and snapshot


def policy_key(domain: int) -> bytes:
    return POLICY_KEY if domain == NETWORK else POLICY_DOMAIN_KEY + domain.to_bytes(4, "big")


def load_policy(store, domain: int = NETWORK) -> tuple[StackingPolicy, bool]:
    """(the policy a domain sells by, whether it is the network's because
    the domain saved none)."""
    with store.env.begin() as txn:
        raw = txn.get(policy_key(domain), db=store.promotion_meta)
        if raw is None and domain != NETWORK:
            return load_json(store, store.promotion_meta, POLICY_KEY, StackingPolicy), True
    return (StackingPolicy() if raw is None else msgspec.json.decode(raw, type=StackingPolicy)), False


def save_policy(txn, store, policy: StackingPolicy, domain: int = NETWORK) -> StackingPolicy:
    validate_policy(policy)
    saved = put_versioned_json(txn, store.promotion_meta, policy_key(domain), policy)
    _bump(txn, store.promotion_meta, VERSION_KEY)
    return saved


def _policies(txn, store) -> dict[int, StackingPolicy]:
    """domain -> its saved policy (NETWORK: the network's)."""
    found = {}
    cursor = txn.cursor(db=store.promotion_meta)
    if cursor.set_range(POLICY_KEY):
        for key, raw in cursor.iternext():
            if not key.startswith(POLICY_KEY):
                break
            domain = NETWORK if key == POLICY_KEY else int.from_bytes(key[len(POLICY_DOMAIN_KEY):], "big")
            found[domain] = msgspec.json.decode(raw, type=StackingPolicy)
    return found


def version(store) -> int:
    with store.env.begin() as txn:
        return _get_u64(txn, store.promotion_meta, VERSION_KEY)


class Snapshot:
    """The promotions pricing reads, in memory: `priced` are the goods and
    discount promotions that are approved or active (pricing checks their
    window against the sale's time), `by_id` every promotion not ENDED
    (coupons, packets and lotteries look theirs up), `policies` the
    stacking policy of each domain that saved one (NETWORK: the network's).
    A sale at a station sees only what reaches it (`priced_at`)."""

    PLACES_MAX = 10_000

    def __init__(self, promotions: Iterable[Promotion], policy: StackingPolicy | dict = StackingPolicy(), version: int = 0,
                 decoded: dict[bytes, Promotion] | None = None):
        # stored bytes -> the promotion they decode to (load_snapshot's, for the next one to reuse)
        self.decoded = decoded if decoded is not None else {}
        alive = sorted((p for p in promotions if p.stage != Stage.ENDED), key=lambda p: p.promotion_id)
        self.version = version
        self.policies = dict(policy) if isinstance(policy, dict) else {NETWORK: policy}
        self.policy = self.policies.get(NETWORK, StackingPolicy())
        self.by_id = {p.promotion_id: p for p in alive}
        priceable = [p for p in alive if p.kind in (PromotionKind.GOODS, PromotionKind.DISCOUNT)]
        self.priced = tuple(p for p in priceable if p.stage in RUNNING_STAGES)
        self.unapproved = tuple(p for p in priceable if p.stage not in RUNNING_STAGES)
        self._owners = frozenset(p.org_id for p in alive)
        # station ancestry -> (priced, unapproved) of what reaches it.
        self._at: dict[tuple, tuple] = {}

    def with_promotion(self, promotion: Promotion, version: int) -> "Snapshot":
        """This snapshot with one promotion written (new, changed or ended) at `version`."""
        others = (p for p in self.by_id.values() if p.promotion_id != promotion.promotion_id)
        return Snapshot([*others, promotion], self.policies, version, self.decoded)

    def running(self, promotion_id: int, kind: PromotionKind, now_ms: int) -> Promotion | None:
        promotion = self.by_id.get(promotion_id)
        if promotion is None or promotion.kind != kind or not promotion.runs_at(now_ms):
            return None
        return promotion

    def priced_at(self, station_ancestry: tuple[int, ...]) -> tuple[tuple[Promotion, ...], tuple[Promotion, ...]]:
        """(priced, unapproved) of the promotions that reach a station of
        this ancestry: the network's and its organisations' own."""
        if self._owners <= {NETWORK}:
            return self.priced, self.unapproved
        found = self._at.get(station_ancestry)
        if found is None:
            found = (tuple(p for p in self.priced if reaches(p.org_id, station_ancestry)),
                     tuple(p for p in self.unapproved if reaches(p.org_id, station_ancestry)))
            if len(self._at) >= self.PLACES_MAX:
                self._at.clear()
            self._at[station_ancestry] = found
        return found

    def policy_for(self, domain: int) -> StackingPolicy:
        """The domain's policy, or the network's if it saved none."""
        return self.policies.get(domain) or self.policy


def load_snapshot(store, previous: Snapshot | None = None) -> Snapshot:
    """Every promotion as stored now. With the snapshot before, a record
    whose bytes have not changed is not decoded again (a network keeps
    thousands of promotions, and a change rewrites one)."""
    known = previous.decoded if previous is not None else {}
    decoded = {}
    with store.env.begin() as txn:
        current = _get_u64(txn, store.promotion_meta, VERSION_KEY)
        for _, raw in rows(txn, store.promotion_records):
            raw = bytes(raw)
            promotion = known.get(raw)
            decoded[raw] = promotion if promotion is not None else msgspec.json.decode(raw, type=Promotion)
        policies = _policies(txn, store)
    return Snapshot(decoded.values(), policies, current, decoded)


# ---------------------------------------------------------------- coupons


def put_coupons(txn, store, coupons: list[Coupon]):
    for coupon in coupons:
        if not txn.put(coupon.code.encode(), U64.pack(coupon.coupon_id), db=store.promotion_coupon_codes, overwrite=False):
            raise Conflict(f"coupon code {coupon.code} exists")
        txn.put(u64_key(coupon.coupon_id), msgspec.msgpack.encode(coupon), db=store.promotion_coupons)
        if coupon.card_id:
            txn.put(CARD_COUPON_KEY.pack(coupon.card_id, coupon.coupon_id), b"", db=store.promotion_card_coupons)


def mark_issued(txn, store, txn_id: int) -> bool:
    """Record that the transaction's coupons are issued; False if they
    were already (a retried request issues nothing twice)."""
    return txn.put(u64_key(txn_id), b"", db=store.promotion_issued, overwrite=False)


def coupon_by_code(store, code: str) -> Coupon | None:
    with store.env.begin() as txn:
        raw_id = txn.get(code.encode(), db=store.promotion_coupon_codes)
        raw = None if raw_id is None else txn.get(raw_id, db=store.promotion_coupons)
    return None if raw is None else msgspec.msgpack.decode(raw, type=Coupon)


def coupons_of_card(store, card_id: int, limit: int = LIST_LIMIT_MAX) -> list[Coupon]:
    found = []
    with store.env.begin() as txn:
        cursor = txn.cursor(db=store.promotion_card_coupons)
        if cursor.set_range(CARD_COUPON_KEY.pack(card_id, 0)):
            for key in cursor.iternext(values=False):
                owner, coupon_id = CARD_COUPON_KEY.unpack(key)
                if owner != card_id or len(found) >= limit:
                    break
                found.append(msgspec.msgpack.decode(txn.get(u64_key(coupon_id), db=store.promotion_coupons), type=Coupon))
    return found


# ---------------------------------------------------------------- packets and draws


def put_packet(txn, store, packet: Packet, shares: list[int] | None = None):
    """Save a packet; with shares, also write them where the kernel reads
    them (packet_shares, key (packet_id, index), value i64 minor units),
    in the same transaction."""
    if shares is not None:
        assert len(shares) == packet.share_count and sum(shares) == packet.total_minor
        for index, share in enumerate(shares):
            txn.put(packet_share_key(packet.packet_id, index), PACKET_SHARE_VALUE.pack(share), db=store.packet_shares)
    txn.put(u64_key(packet.packet_id), msgspec.msgpack.encode(packet), db=store.promotion_packets)


def finish_packet(txn, store, packet_id: int, returned_minor: int) -> bool:
    """Mark an OPEN packet RETURNED with what went back; False if it was
    not OPEN any more (another process finished it)."""
    raw = txn.get(u64_key(packet_id), db=store.promotion_packets)
    packet = msgspec.msgpack.decode(raw, type=Packet)
    if packet.state != PacketState.OPEN:
        return False
    finished = msgspec.structs.replace(packet, state=PacketState.RETURNED, returned_minor=returned_minor)
    txn.put(u64_key(packet_id), msgspec.msgpack.encode(finished), db=store.promotion_packets)
    return True


def load_packet(store, packet_id: int) -> Packet | None:
    with store.env.begin() as txn:
        raw = txn.get(u64_key(packet_id), db=store.promotion_packets)
    return None if raw is None else msgspec.msgpack.decode(raw, type=Packet)


def packet_shares(store, packet_id: int, share_count: int) -> list[int]:
    with store.env.begin() as txn:
        return packet_shares_in(txn, store, packet_id, share_count)


def packet_shares_in(txn, store, packet_id: int, share_count: int) -> list[int]:
    return [PACKET_SHARE_VALUE.unpack(txn.get(packet_share_key(packet_id, index), db=store.packet_shares))[0]
            for index in range(share_count)]


def list_packets(store, limit: int = LIST_LIMIT_MAX) -> list[Packet]:
    with store.env.begin() as txn:
        return [msgspec.msgpack.decode(raw, type=Packet) for _, (_, raw) in zip(range(limit), rows(txn, store.promotion_packets))]


def append_draw(txn, store, draw: Draw) -> Draw:
    seq = _bump(txn, store.promotion_meta, DRAW_SEQUENCE)
    draw = msgspec.structs.replace(draw, seq=seq)
    txn.put(u64_key(seq), msgspec.msgpack.encode(draw), db=store.promotion_draws)
    return draw


def list_draws(store, promotion_id: int = 0, limit: int = LIST_LIMIT_MAX, seen=None) -> list[Draw]:
    """The draws log, of one lottery (promotion_id) or all; seen(promotion_id):
    whether the caller sees that lottery (None: every one)."""
    found = []
    with store.env.begin() as txn:
        for _, raw in rows(txn, store.promotion_draws):
            draw = msgspec.msgpack.decode(raw, type=Draw)
            if seen is not None and not seen(draw.promotion_id):
                continue
            if not promotion_id or draw.promotion_id == promotion_id:
                found.append(draw)
                if len(found) >= limit:
                    break
    return found
