"""The red packet split (core/promotions/packets.py): exact sums always, and
the double-mean draw's statistics over many packets with a fixed seed."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import limits
from core.promotions.model import PacketTerms, Promotion, PromotionKind, Split, Stage
from core.promotions.packets import PacketError, claim_refusal, fund_op, new_packet, return_op, split_shares
from core.results import AccountKind, CardType, OpKind

SEED = 20_240_601


@given(
    share_count=st.integers(1, 200),
    min_share_minor=st.integers(1, 500),
    extra_minor=st.integers(0, 10**7),
    split=st.sampled_from(list(Split)),
    seed=st.integers(0, 2**32),
)
def test_the_shares_always_add_up_to_the_total_and_none_is_below_the_minimum(share_count, min_share_minor, extra_minor, split, seed):
    total = share_count * min_share_minor + extra_minor
    shares = split_shares(total, share_count, split, min_share_minor, random.Random(seed))
    assert len(shares) == share_count
    assert sum(shares) == total
    assert min(shares) >= min_share_minor


def test_equal_split_gives_the_remainder_to_the_first_shares():
    assert split_shares(1_000, 3, Split.EQUAL, 1, random.Random(0)) == [334, 333, 333]
    assert split_shares(10_000, 100, Split.EQUAL, 100, random.Random(0)) == [100] * 100


def test_double_mean_statistics_over_many_packets():
    """100.00 in 10 shares of at least 0.50, 20,000 packets: every position's
    mean share is the packet's mean (10.00) within 2.5%, the minimum share
    is reached, no share passes twice the mean of what was left."""
    rng = random.Random(SEED)
    packets, share_count, total, minimum = 20_000, 10, 10_000, 50
    sums = [0] * share_count
    smallest = total
    first_largest = 0
    for _ in range(packets):
        shares = split_shares(total, share_count, Split.RANDOM, minimum, rng)
        assert sum(shares) == total
        for position, share in enumerate(shares):
            sums[position] += share
        smallest = min(smallest, min(shares))
        first_largest = max(first_largest, shares[0])
    means = [s / packets for s in sums]
    for position, mean in enumerate(means):
        assert abs(mean - total / share_count) <= 25, (position, means)
    assert smallest == minimum
    # The first share is at most the minimum plus twice the mean spare.
    assert first_largest <= minimum + 2 * (total - share_count * minimum) // share_count
    assert first_largest >= minimum + 2 * (total - share_count * minimum) // share_count - 10


def test_the_same_seed_splits_the_same_way():
    first = split_shares(100_000, 100, Split.RANDOM, 1, random.Random(SEED))
    again = split_shares(100_000, 100, Split.RANDOM, 1, random.Random(SEED))
    assert first == again and sum(first) == 100_000


@pytest.mark.parametrize("total, count, minimum, field", [
    (99, 100, 1, "total_minor"),
    (1_000, 0, 1, "share_count"),
    (10**6, limits.PACKET_SHARES_MAX + 1, 1, "share_count"),
    (1_000, 10, 0, "min_share_minor"),
    (limits.AMOUNT_MINOR_MAX + 1, 10, 1, "total_minor"),
])
def test_impossible_splits_are_refused_naming_the_field(total, count, minimum, field):
    with pytest.raises(PacketError) as error:
        split_shares(total, count, Split.RANDOM, minimum, random.Random(0))
    assert error.value.field == field


def packet_promotion(**fields) -> Promotion:
    terms = PacketTerms(share_count=100, min_share_minor=10, claim_min_spend_minor=fields.pop("min_spend", 0))
    fields.setdefault("valid_to_ms", 10_000_000)
    return Promotion(promotion_id=40, kind=PromotionKind.RED_PACKET, name="spring", valid_from_ms=0,
                     stage=Stage.APPROVED, packet=terms, **fields)


def test_a_packet_expires_after_its_validity_or_at_the_promotion_end():
    promotion = packet_promotion()
    packet = new_packet(promotion, 9, 50_000, AccountKind.GENERAL, 3, now_ms=1_000, by="ops")
    assert (packet.share_count, packet.expires_ms) == (100, 10_000_000)
    longer = new_packet(packet_promotion(valid_to_ms=10**12), 9, 50_000, AccountKind.GENERAL, 3, now_ms=1_000, by="ops")
    assert longer.expires_ms == 1_000 + 86_400_000
    with pytest.raises(PacketError) as error:
        new_packet(promotion, 9, 50_000, AccountKind.POINTS, 3, now_ms=1_000, by="ops")
    assert error.value.field == "issuer_kind"
    with pytest.raises(PacketError) as error:
        new_packet(packet_promotion(amount_max_minor=20_000), 9, 50_000, AccountKind.GENERAL, 3, now_ms=1_000, by="ops")
    assert error.value.field == "total_minor"


def test_funding_and_returning_are_transfers_between_the_issuer_and_the_packet_account():
    packet = new_packet(packet_promotion(), 9, 50_000, AccountKind.GENERAL, 3, now_ms=1_000, by="ops")
    fund = fund_op(packet, serial=11)
    assert (fund.kind, fund.account_kind, fund.account_owner, fund.credit_kind, fund.credit_owner, fund.amount, fund.serial) == (
        OpKind.TRANSFER, AccountKind.GENERAL, 3, AccountKind.PROMOTION, 9, 50_000, 11)
    back = return_op(packet, 1_234, serial=12)
    assert (back.account_kind, back.account_owner, back.credit_kind, back.credit_owner, back.amount) == (
        AccountKind.PROMOTION, 9, AccountKind.GENERAL, 3, 1_234)
    assert fund.fingerprint != back.fingerprint


def test_the_claim_condition():
    promotion = packet_promotion(min_spend=20_000, stations=(1,), card_types=(CardType.PERSONAL,))
    assert claim_refusal(promotion, 1, CardType.PERSONAL, 0, 20_000) == ""
    assert claim_refusal(promotion, 1, CardType.PERSONAL, 0, 19_999) == "needs a spend of 20000 today; the card spent 19999"
    assert claim_refusal(promotion, 2, CardType.PERSONAL, 0, 20_000) == "not claimable at station 2"
    assert claim_refusal(promotion, 1, CardType.COMPANY, 0, 20_000) == "not for this card type"
