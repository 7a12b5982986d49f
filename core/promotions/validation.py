"""Refusing inconsistent promotions when they are saved, naming the field.

Owns: every limit of a promotion's fields and every contradiction between
them. A promotion that passes here can be priced, claimed or drawn without
a surprise; one that fails raises PromotionError(field, message) and is not
saved. The server turns that into INVALID_ARGUMENT "promotion.FIELD: ...".
Used by: core/promotions/store.py (save), server/promotion_service.py.
"""

from core import limits
from core.errors import InvalidInput
from core.promotions.model import (
    PERMILLE_ONE,
    PPM_ONE,
    CouponTrigger,
    Funder,
    Promotion,
    PromotionKind,
    StackingPolicy,
    terms_of,
)
from core.results import CardType, Tier

PROMOTION_ID_MAX = 2**63 - 1
NAME_LENGTH_MAX = limits.GOODS_NAME_LENGTH_MAX
GROUP_LENGTH_MAX = limits.GOODS_CODE_LENGTH_MAX
TARGETS_MAX = 1000
GOODS_CODES_MAX = 1000
PRIORITY_ABS_MAX = 1_000_000
COUNT_MAX = 10**9
COUPON_VALID_DAYS_MAX = 3660
COUPONS_PER_SALE_MAX = 16
PACKET_VALIDITY_S_MAX = 366 * 86_400
PRIZES_MAX = 64
# No promotion runs longer than ten years.
WINDOW_MS_MAX = 3660 * 86_400_000

KIND_FIELDS = {
    PromotionKind.GOODS: "goods",
    PromotionKind.DISCOUNT: "discount",
    PromotionKind.COUPON: "coupon",
    PromotionKind.RED_PACKET: "packet",
    PromotionKind.LOTTERY: "lottery",
}


class PromotionError(InvalidInput):
    """A promotion that cannot be saved, naming the field."""


def _range(value: int, field: str, low: int, high: int):
    if not low <= value <= high:
        raise PromotionError(field, f"must be within {low} .. {high}, got {value}")


def _length(text: str, field: str, low: int, high: int):
    if not low <= len(text) <= high:
        raise PromotionError(field, f"length must be within {low} .. {high} characters, got {len(text)}")


def _one_of(first: int, second: int, field_first: str, field_second: str, where: str):
    if (first != 0) == (second != 0):
        raise PromotionError(where, f"set exactly one of {field_first} and {field_second}")


def _codes(codes, field: str, required: bool):
    if required and not codes:
        raise PromotionError(field, "must name at least one goods code")
    if len(codes) > GOODS_CODES_MAX:
        raise PromotionError(field, f"at most {GOODS_CODES_MAX} entries, got {len(codes)}")
    for index, code in enumerate(codes):
        _length(code, f"{field}[{index}]", 1, limits.GOODS_CODE_LENGTH_MAX)


def _ids(values, field: str, high: int):
    if len(values) > TARGETS_MAX:
        raise PromotionError(field, f"at most {TARGETS_MAX} entries, got {len(values)}")
    for index, value in enumerate(values):
        _range(value, f"{field}[{index}]", 1, high)


def validate(promotion: Promotion):
    """Raise PromotionError for the first field that breaks a limit or
    contradicts another."""
    _range(promotion.promotion_id, "promotion_id", 1, PROMOTION_ID_MAX)
    _length(promotion.name, "name", 1, NAME_LENGTH_MAX)
    _range(promotion.valid_from_ms, "valid_from_ms", 0, 2**63 - 1)
    if promotion.valid_to_ms <= promotion.valid_from_ms:
        raise PromotionError("valid_to_ms", f"the window ends ({promotion.valid_to_ms}) before it starts ({promotion.valid_from_ms})")
    if promotion.valid_to_ms - promotion.valid_from_ms > WINDOW_MS_MAX:
        raise PromotionError("valid_to_ms", f"a window is at most {WINDOW_MS_MAX // 86_400_000} days")
    _ids(promotion.stations, "stations", limits.STATION_ID_MAX)
    for index, tier in enumerate(promotion.tiers):
        if tier not in Tier.__members__.values():
            raise PromotionError(f"tiers[{index}]", f"unknown tier {tier}")
    for index, card_type in enumerate(promotion.card_types):
        if card_type not in CardType.__members__.values():
            raise PromotionError(f"card_types[{index}]", f"unknown card type {card_type}")
    _range(promotion.amount_min_minor, "amount_min_minor", 0, limits.AMOUNT_MINOR_MAX)
    _range(promotion.amount_max_minor, "amount_max_minor", 0, limits.AMOUNT_MINOR_MAX)
    if promotion.amount_max_minor and promotion.amount_min_minor > promotion.amount_max_minor:
        raise PromotionError("amount_min_minor", f"{promotion.amount_min_minor} is above amount_max_minor {promotion.amount_max_minor}")
    for name in ("budget_minor", "stock", "uses_per_card"):
        value = getattr(promotion, name)
        if value < 0:
            raise PromotionError(name, f"must not be negative, got {value}")
    _range(promotion.budget_minor, "budget_minor", 0, limits.COUNTER_CEILING_MAX)
    _range(promotion.stock, "stock", 0, limits.COUNTER_CEILING_MAX)
    _range(promotion.uses_per_card, "uses_per_card", 0, COUNT_MAX)
    _validate_funder(promotion)
    _range(promotion.org_id, "org_id", 0, limits.STATION_ID_MAX)
    _range(promotion.priority, "priority", -PRIORITY_ABS_MAX, PRIORITY_ABS_MAX)
    _length(promotion.exclusive_group, "exclusive_group", 0, GROUP_LENGTH_MAX)
    _validate_terms(promotion)


def _validate_funder(promotion: Promotion):
    if promotion.funder not in Funder.__members__.values():
        raise PromotionError("funder", f"unknown funder {promotion.funder}")
    if promotion.funder == Funder.HEADQUARTERS:
        _range(promotion.funder_id, "funder_id", 0, 0)
    elif promotion.funder == Funder.STATION:
        _range(promotion.funder_id, "funder_id", 1, limits.STATION_ID_MAX)
    else:
        _range(promotion.funder_id, "funder_id", 1, limits.PARTNER_ID_MAX)


def _validate_terms(promotion: Promotion):
    wanted = KIND_FIELDS[promotion.kind]
    for kind, field in KIND_FIELDS.items():
        present = getattr(promotion, field) is not None
        if kind == promotion.kind and not present:
            raise PromotionError(field, f"a {promotion.kind.name} promotion needs its {field} terms")
        if kind != promotion.kind and present:
            raise PromotionError(field, f"only a {kind.name} promotion has {field} terms; this one is {promotion.kind.name}")
    terms = terms_of(promotion)
    {
        PromotionKind.GOODS: _validate_goods,
        PromotionKind.DISCOUNT: _validate_discount,
        PromotionKind.COUPON: _validate_coupon,
        PromotionKind.RED_PACKET: _validate_packet,
        PromotionKind.LOTTERY: _validate_lottery,
    }[promotion.kind](promotion, terms, wanted)


def _validate_goods(promotion, goods, where):
    _codes(goods.goods_codes, f"{where}.goods_codes", required=True)
    _one_of(goods.off_permille, goods.fixed_price_minor, "off_permille", "fixed_price_minor", where)
    _range(goods.off_permille, f"{where}.off_permille", 0, PERMILLE_ONE)
    _range(goods.fixed_price_minor, f"{where}.fixed_price_minor", 0, limits.AMOUNT_MINOR_MAX)


def _validate_discount(promotion, discount, where):
    _one_of(discount.off_permille, discount.off_per_litre_minor, "off_permille", "off_per_litre_minor", where)
    _range(discount.off_permille, f"{where}.off_permille", 0, PERMILLE_ONE)
    _range(discount.off_per_litre_minor, f"{where}.off_per_litre_minor", 0, limits.AMOUNT_MINOR_MAX)
    _range(discount.max_off_minor, f"{where}.max_off_minor", 0, limits.AMOUNT_MINOR_MAX)
    _codes(discount.goods_codes, f"{where}.goods_codes", required=False)
    _codes(discount.categories, f"{where}.categories", required=False)


def _validate_coupon(promotion, coupon, where):
    _one_of(coupon.face_value_minor, coupon.off_permille, "face_value_minor", "off_permille", where)
    _range(coupon.face_value_minor, f"{where}.face_value_minor", 0, limits.AMOUNT_MINOR_MAX)
    _range(coupon.off_permille, f"{where}.off_permille", 0, PERMILLE_ONE)
    _range(coupon.max_off_minor, f"{where}.max_off_minor", 0, limits.AMOUNT_MINOR_MAX)
    _range(coupon.min_spend_minor, f"{where}.min_spend_minor", 0, limits.AMOUNT_MINOR_MAX)
    if coupon.face_value_minor and coupon.min_spend_minor and coupon.face_value_minor > coupon.min_spend_minor:
        raise PromotionError(f"{where}.face_value_minor", f"{coupon.face_value_minor} is above min_spend_minor {coupon.min_spend_minor}: "
                             "the coupon would be worth more than the least it may be used on")
    if coupon.issue_on not in CouponTrigger.__members__.values():
        raise PromotionError(f"{where}.issue_on", f"unknown trigger {coupon.issue_on}")
    _range(coupon.per_issue_count, f"{where}.per_issue_count", 1, limits.COUNTER_TAKES_PER_SALE_MAX)
    _range(coupon.total_count, f"{where}.total_count", 0, COUNT_MAX)
    if coupon.total_count and coupon.per_issue_count > coupon.total_count:
        raise PromotionError(f"{where}.per_issue_count", f"{coupon.per_issue_count} is above total_count {coupon.total_count}")
    _range(coupon.valid_days, f"{where}.valid_days", 1, COUPON_VALID_DAYS_MAX)
    _ids(coupon.issue_stations, f"{where}.issue_stations", limits.STATION_ID_MAX)
    _ids(coupon.use_stations, f"{where}.use_stations", limits.STATION_ID_MAX)
    _ids(coupon.partners, f"{where}.partners", limits.PARTNER_ID_MAX)


def _validate_packet(promotion, packet, where):
    _range(packet.share_count, f"{where}.share_count", 1, limits.PACKET_SHARES_MAX)
    _range(packet.min_share_minor, f"{where}.min_share_minor", 1, limits.AMOUNT_MINOR_MAX)
    _range(packet.claim_min_spend_minor, f"{where}.claim_min_spend_minor", 0, limits.AMOUNT_MINOR_MAX)
    _range(packet.packet_validity_s, f"{where}.packet_validity_s", 1, PACKET_VALIDITY_S_MAX)
    if promotion.amount_max_minor and promotion.amount_max_minor < packet.share_count * packet.min_share_minor:
        raise PromotionError("amount_max_minor", f"a packet of at most {promotion.amount_max_minor} cannot give "
                             f"{packet.share_count} shares of at least {packet.min_share_minor}")


def _validate_lottery(promotion, lottery, where):
    if not 1 <= len(lottery.prizes) <= PRIZES_MAX:
        raise PromotionError(f"{where}.prizes", f"1 .. {PRIZES_MAX} prizes, got {len(lottery.prizes)}")
    seen = set()
    total_ppm = 0
    for index, prize in enumerate(lottery.prizes):
        at = f"{where}.prizes[{index}]"
        _range(prize.prize_id, f"{at}.prize_id", 1, 2**63 - 1)
        if prize.prize_id in seen:
            raise PromotionError(f"{at}.prize_id", f"{prize.prize_id} is used twice")
        seen.add(prize.prize_id)
        _length(prize.name, f"{at}.name", 1, NAME_LENGTH_MAX)
        _range(prize.probability_ppm, f"{at}.probability_ppm", 0, PPM_ONE)
        _range(prize.stock, f"{at}.stock", 0, limits.COUNTER_CEILING_MAX)
        _range(prize.value_minor, f"{at}.value_minor", 0, limits.AMOUNT_MINOR_MAX)
        total_ppm += prize.probability_ppm
    if total_ppm > PPM_ONE:
        raise PromotionError(f"{where}.prizes", f"probabilities add up to {total_ppm} per million, above {PPM_ONE}")
    if lottery.consolation_prize_id not in seen:
        raise PromotionError(f"{where}.consolation_prize_id", f"{lottery.consolation_prize_id} is not one of the prizes")
    _range(lottery.chance_per_spend_minor, f"{where}.chance_per_spend_minor", 0, limits.AMOUNT_MINOR_MAX)
    _range(lottery.chance_price_minor, f"{where}.chance_price_minor", 0, limits.AMOUNT_MINOR_MAX)


def validate_policy(policy: StackingPolicy):
    _range(policy.coupons_per_sale_max, "coupons_per_sale_max", 0, COUPONS_PER_SALE_MAX)
