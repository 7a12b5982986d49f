"""Cash red packets: the split into shares, the claim condition, the money's way.

Owns: cutting a total into N shares at creation (random "double mean" with
a minimum share, or equal; the sum is always the total), the condition a
card must meet to claim, and the transfers that fund a packet and return
its unclaimed rest.
Used by: server/promotion_service.py (CreatePacket, ClaimPacket, the
expiry job).

The money: creating a packet moves its total from the issuer's account to
the PROMOTION account owned by the packet id (a TRANSFER). A claim is the
kernel's PACKET_CLAIM: it takes the next share index (PACKET_CLAIMS counter,
ceiling share_count), refuses a second claim by the same card
(PACKET_CLAIMER, ceiling 1), and moves that share from the PROMOTION account
to the card's PERSONAL account. After expiry a TRANSFER moves the account's
balance back to the issuer; a claim after that finds no funds in the kernel,
so a claim racing the return can never pay out money that went back.
"""

import hashlib
import random

from core import limits
from core.errors import InvalidInput
from core.promotions.model import Packet, PacketTerms, Promotion, Split
from core.records import Op
from core.results import AccountKind, OpKind

# Accounts a packet may be funded from (and its rest returned to).
ISSUER_ACCOUNT_KINDS = frozenset((AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.TOPUP_FUNDING, AccountKind.GENERAL))


class PacketError(InvalidInput):
    """A red packet that cannot be made, naming the field."""


def split_shares(total_minor: int, share_count: int, split: Split, min_share_minor: int, rng: random.Random) -> list[int]:
    """share_count shares adding up to total_minor, none below min_share_minor.

    EQUAL: total // N each, the remainder one minor unit each to the first
    shares. RANDOM ("double mean"): what is above the minimum (the spare) is
    handed out in order; with k shares left, a share gets a uniform draw in
    0 .. 2 x spare / k, so its expected share is the mean of what is left
    and every position has the same expected share; the last share gets the
    spare left. rng: secrets.SystemRandom() in service, a seeded Random in tests.
    """
    if not 1 <= share_count <= limits.PACKET_SHARES_MAX:
        raise PacketError("share_count", f"must be within 1 .. {limits.PACKET_SHARES_MAX}, got {share_count}")
    if min_share_minor < 1:
        raise PacketError("min_share_minor", f"must be at least 1, got {min_share_minor}")
    if total_minor < share_count * min_share_minor:
        raise PacketError("total_minor", f"{total_minor} cannot give {share_count} shares of at least {min_share_minor}")
    if total_minor > limits.AMOUNT_MINOR_MAX:
        raise PacketError("total_minor", f"must be at most {limits.AMOUNT_MINOR_MAX}, got {total_minor}")
    if split == Split.EQUAL:
        each, rest = divmod(total_minor, share_count)
        shares = [each + 1] * rest + [each] * (share_count - rest)
    else:
        spare = total_minor - share_count * min_share_minor
        shares = []
        for left in range(share_count, 1, -1):
            extra = rng.randint(0, 2 * spare // left)
            shares.append(min_share_minor + extra)
            spare -= extra
        shares.append(min_share_minor + spare)
    assert sum(shares) == total_minor and min(shares) >= min_share_minor and len(shares) == share_count
    return shares


def new_packet(promotion: Promotion, packet_id: int, total_minor: int, issuer_kind: int, issuer_owner: int, now_ms: int,
               by: str) -> Packet:
    terms: PacketTerms = promotion.packet
    if issuer_kind not in ISSUER_ACCOUNT_KINDS:
        raise PacketError("issuer_kind", f"a packet is funded from {sorted(k.name for k in ISSUER_ACCOUNT_KINDS)}")
    if total_minor < promotion.amount_min_minor or (promotion.amount_max_minor and total_minor > promotion.amount_max_minor):
        raise PacketError("total_minor", f"must be within the promotion's {promotion.amount_min_minor} .. "
                          f"{promotion.amount_max_minor or limits.AMOUNT_MINOR_MAX}, got {total_minor}")
    expires_ms = min(now_ms + terms.packet_validity_s * 1000, promotion.valid_to_ms)
    return Packet(packet_id=packet_id, promotion_id=promotion.promotion_id, total_minor=total_minor, share_count=terms.share_count,
                  issuer_kind=issuer_kind, issuer_owner=issuer_owner, created_ms=now_ms, expires_ms=expires_ms, created_by=by)


def claim_refusal(promotion: Promotion, station_id: int, card_type: int, tier: int, spent_today_minor: int) -> str:
    """Why a card may not claim a share of a packet of this promotion ("" if
    it may): the promotion's stations, card types and tiers, and the claim
    condition, a minimum spend today."""
    if promotion.stations and station_id not in promotion.stations:
        return f"not claimable at station {station_id}"
    if promotion.card_types and card_type not in promotion.card_types:
        return "not for this card type"
    if promotion.tiers and tier not in promotion.tiers:
        return "not for this tier"
    need = promotion.packet.claim_min_spend_minor
    if spent_today_minor < need:
        return f"needs a spend of {need} today; the card spent {spent_today_minor}"
    return ""


def open_account_op(packet: Packet) -> Op:
    return Op(kind=OpKind.OPEN_ACCOUNT, account_kind=AccountKind.PROMOTION, account_owner=packet.packet_id)


def fund_op(packet: Packet, serial: int) -> Op:
    """The issuer's account to the packet's PROMOTION account, its total."""
    return Op(kind=OpKind.TRANSFER, terminal_id=limits.PROMOTION_TERMINAL_ID, serial=serial, account_kind=packet.issuer_kind,
              account_owner=packet.issuer_owner, credit_kind=AccountKind.PROMOTION, credit_owner=packet.packet_id,
              amount=packet.total_minor, fingerprint=_fingerprint(b"fund", packet.packet_id, packet.total_minor))


def return_op(packet: Packet, amount_minor: int, serial: int) -> Op:
    """The packet's unclaimed rest back to the issuer."""
    return Op(kind=OpKind.TRANSFER, terminal_id=limits.PROMOTION_TERMINAL_ID, serial=serial, account_kind=AccountKind.PROMOTION,
              account_owner=packet.packet_id, credit_kind=packet.issuer_kind, credit_owner=packet.issuer_owner,
              amount=amount_minor, fingerprint=_fingerprint(b"return", packet.packet_id, amount_minor))


def _fingerprint(what: bytes, packet_id: int, amount_minor: int) -> bytes:
    return hashlib.blake2b(what + packet_id.to_bytes(8, "big") + amount_minor.to_bytes(8, "big"), digest_size=16).digest()
