"""Promotions: the list with live counters, drafts (created and changed with
refusals beside the field the API names), the steps (submit, approve by
someone else, activate, end), coupon batches, red packets, lotteries, and
"try a basket" (PriceBasket, a dry run).

Field names are the API's (`promotion.discount.off_permille`, ...): an
INVALID_ARGUMENT naming one lands beside it. The four-eyes rule is the
API's: the console sends `by` as the logged-in user, so an author's
approval is refused by the server, not hidden here. Coupon batches and
packets carry request ids from their form's nonce (made once).
"""

import grpc

from server.console.api import ApiError
from server.console.forms import Field, Form, FormSpec, raw_values
from server.console.i18n import local_moment_text
from server.console.pages.common import CARD_TYPES, TIERS, tier_name
from server.console.sessions import now_ms
from server.console.web import Ctx, page, route, submit
from tally.v1 import card_pb2, common_pb2, promotion_pb2 as P

KINDS = {"discount": P.PROMOTION_KIND_DISCOUNT, "goods": P.PROMOTION_KIND_GOODS, "coupon": P.PROMOTION_KIND_COUPON,
         "packet": P.PROMOTION_KIND_RED_PACKET, "lottery": P.PROMOTION_KIND_LOTTERY}
KIND_OF = {value: name for name, value in KINDS.items()}
PRIZE_ROWS = 4
BASKET_ROWS = 3
STEPS = {"submit": "SubmitPromotion", "approve": "ApprovePromotion", "activate": "ActivatePromotion",
         "end": "EndPromotion"}
FUNDERS = ((P.FUNDER_HEADQUARTERS, "Headquarters"), (P.FUNDER_STATION, "Station"), (P.FUNDER_PARTNER, "Partner"))
TRIGGERS = ((P.COUPON_TRIGGER_CAMPAIGN, "By campaign (issued by staff)"), (P.COUPON_TRIGGER_TOPUP, "On top-up"),
            (P.COUPON_TRIGGER_PURCHASE, "On purchase"))
SPLITS = ((P.PACKET_SPLIT_RANDOM, "Random (double mean)"), (P.PACKET_SPLIT_EQUAL, "Equal"))
ISSUERS = ((32, "General account"), (20, "Top-up funding"), (2, "A card's personal account"), (1, "A card's fleet account"))
AMOUNTS = {"amount_min_minor", "amount_max_minor", "budget_minor", "fixed_price_minor", "off_per_litre_minor",
           "max_off_minor", "face_value_minor", "min_spend_minor", "min_share_minor", "claim_min_spend_minor",
           "chance_per_spend_minor", "chance_price_minor", "value_minor"}

COMMON_FIELDS = (
    Field("promotion.name", "Name", required=True, help="printed on the receipt"),
    Field("promotion.valid_from_ms", "From", "moment", required=True),
    Field("promotion.valid_to_ms", "Until", "moment", required=True),
    Field("promotion.stations", "Stations", "ids", help="separated by commas; empty: every station"),
    Field("promotion.tiers", "Tiers", "checkboxes", options=TIERS),
    Field("promotion.card_types", "Card types", "checkboxes", options=CARD_TYPES),
    Field("promotion.amount_min_minor", "Least amount", "amount"),
    Field("promotion.amount_max_minor", "Largest amount", "amount", help="0: no maximum"),
    Field("promotion.budget_minor", "Budget", "amount", help="0: no budget"),
    Field("promotion.stock", "Stock", "int", help="0: no stock"),
    Field("promotion.uses_per_card", "Uses per card", "int", help="0: no limit"),
    Field("promotion.funder", "Funded by", "select", options=FUNDERS),
    Field("promotion.funder_id", "Funding station or partner", "int", help="0 for headquarters"),
    Field("promotion.priority", "Priority", "int"),
    Field("promotion.exclusive_group", "Exclusive group"),
    Field("promotion.stackable", "Stacks with others", "checkbox"),
)
TERMS_FIELDS = {
    "discount": (
        Field("promotion.discount.off_permille", "Off, per mille", "int", help="100 = 10% off"),
        Field("promotion.discount.off_per_litre_minor", "Off per litre", "amount"),
        Field("promotion.discount.categories", "Categories", "codes", help="e.g. fuel; empty: every line"),
        Field("promotion.discount.goods_codes", "Goods codes", "codes"),
        Field("promotion.discount.max_off_minor", "Most off per sale", "amount", help="0: no cap")),
    "goods": (
        Field("promotion.goods.goods_codes", "Goods codes", "codes", required=True),
        Field("promotion.goods.off_permille", "Off, per mille", "int"),
        Field("promotion.goods.fixed_price_minor", "Fixed price per unit", "amount")),
    "coupon": (
        Field("promotion.coupon.face_value_minor", "Face value", "amount"),
        Field("promotion.coupon.off_permille", "Off, per mille", "int"),
        Field("promotion.coupon.max_off_minor", "Most off", "amount", help="0: no cap"),
        Field("promotion.coupon.min_spend_minor", "Least spend", "amount"),
        Field("promotion.coupon.issue_on", "Issued", "select", options=TRIGGERS),
        Field("promotion.coupon.per_issue_count", "Coupons per issue", "int", help="1 .. 16; 0: 1"),
        Field("promotion.coupon.total_count", "Coupons in all", "int", help="0: no total"),
        Field("promotion.coupon.valid_days", "Days valid", "int", help="0: 30"),
        Field("promotion.coupon.issue_stations", "Issuing stations", "ids"),
        Field("promotion.coupon.use_stations", "Usable at stations", "ids")),
    "packet": (
        Field("promotion.packet.share_count", "Shares per packet", "int", required=True),
        Field("promotion.packet.split", "Split", "select", options=SPLITS),
        Field("promotion.packet.min_share_minor", "Least share", "amount"),
        Field("promotion.packet.claim_min_spend_minor", "Spend today to claim", "amount"),
        Field("promotion.packet.packet_validity_s", "Seconds a packet lasts", "int", help="0: a day")),
    "lottery": (
        *(field for index in range(PRIZE_ROWS) for field in (
            Field(f"promotion.lottery.prizes[{index}].prize_id", "Prize id", "int"),
            Field(f"promotion.lottery.prizes[{index}].name", "Prize"),
            Field(f"promotion.lottery.prizes[{index}].probability_ppm", "Chance, per million", "int"),
            Field(f"promotion.lottery.prizes[{index}].stock", "Prizes there are", "int", help="0: unlimited"),
            Field(f"promotion.lottery.prizes[{index}].value_minor", "Worth", "amount"))),
        Field("promotion.lottery.consolation_prize_id", "Consolation prize id", "int", required=True),
        Field("promotion.lottery.chance_per_spend_minor", "A chance per spend of", "amount", help="0: none by spend"),
        Field("promotion.lottery.chance_price_minor", "A chance's price in points as cash", "amount", help="0: not sold")),
}


def draft_spec(kind: str, promotion_id: int = 0) -> FormSpec:
    action = f"/promotions/{promotion_id}/edit" if promotion_id else f"/promotions/new/{kind}"
    return FormSpec("draft", action, "Save the draft", COMMON_FIELDS + TERMS_FIELDS[kind])


def promotion_message(kind: str, values: dict, promotion_id: int = 0) -> P.Promotion:
    """The Promotion a draft form describes (shape checked; the rest is the API's)."""
    promotion = P.Promotion(promotion_id=promotion_id, kind=KINDS[kind], stackable=values["promotion.stackable"])
    for name, value in values.items():
        path = name.split(".")[1:]
        if path[0] in ("stackable",) or (len(path) > 1 and path[0] == "lottery"):
            continue
        target = promotion if len(path) == 1 else getattr(promotion, path[0])
        field = path[-1]
        if field in ("tiers", "card_types"):
            getattr(target, field).extend(int(item) for item in value)
        elif isinstance(value, list):
            getattr(target, field).extend(value)
        elif field in ("funder", "issue_on", "split"):
            setattr(target, field, int(value or 0))
        else:
            setattr(target, field, value)
    if kind == "lottery":
        _lottery_terms(promotion.lottery, values)
    if not promotion.HasField(kind):
        getattr(promotion, kind).SetInParent()
    return promotion


def _lottery_terms(lottery, values: dict):
    prefix = "promotion.lottery."
    for index in range(PRIZE_ROWS):
        row = {name.rsplit(".", 1)[1]: values[name] for name in values if name.startswith(f"{prefix}prizes[{index}].")}
        if row.get("prize_id") or row.get("name"):
            lottery.prizes.add(**row)
    for field in ("consolation_prize_id", "chance_per_spend_minor", "chance_price_minor"):
        setattr(lottery, field, values[prefix + field])


def values_of(ctx: Ctx, promotion) -> dict:
    """A saved promotion as a draft form's values."""
    values = {"promotion.stackable": promotion.stackable if promotion.HasField("stackable") else True}
    kind = KIND_OF[promotion.kind]
    for field in COMMON_FIELDS + TERMS_FIELDS[kind]:
        path = field.name.split(".")[1:]
        if path[0] == "stackable" or (path[0] == "lottery" and len(path) > 1):
            continue
        source = promotion if len(path) == 1 else getattr(promotion, path[0])
        values[field.name] = _text(ctx, field, getattr(source, path[-1]))
    if kind == "lottery":
        for index, prize in enumerate(promotion.lottery.prizes[:PRIZE_ROWS]):
            for name in ("prize_id", "name", "probability_ppm", "stock", "value_minor"):
                field = Field(name, name, "amount" if name == "value_minor" else "int")
                values[f"promotion.lottery.prizes[{index}].{name}"] = _text(ctx, field, getattr(prize, name))
        for name in ("consolation_prize_id", "chance_per_spend_minor", "chance_price_minor"):
            field = Field(name, name, "amount" if name in AMOUNTS else "int")
            values[f"promotion.lottery.{name}"] = _text(ctx, field, getattr(promotion.lottery, name))
    return values


def _text(ctx: Ctx, field: Field, value):
    if field.kind == "moment":
        return local_moment_text(value, ctx.settings.utc_offset_minutes)
    if field.kind == "amount":
        return ctx._amount_text(value) if value else ""
    if field.kind in ("checkboxes",):
        return [str(int(item)) for item in value]
    if field.kind in ("ids", "codes"):
        return ", ".join(str(item) for item in value)
    if field.kind == "int":
        return str(value) if value else ""
    return value


# ---------------------------------------------------------------- pages


async def promotions_page(ctx: Ctx):
    query = ctx.request.query_params
    kind = KINDS.get(query.get("kind", ""), 0)
    listed = await ctx.call("promotions", "ListPromotions", P.ListPromotionsRequest(kind=kind))
    return ctx.render("promotions.html", listed=listed.promotions, kinds=KINDS, kind_name=P.PromotionKind.Name,
                      stage_name=P.PromotionStage.Name, chosen=query.get("kind", ""))


async def new_draft_page(ctx: Ctx, kind: str, failed=None):
    if kind not in KINDS:
        return ctx.redirect("/promotions")
    start = now_ms()
    form = failed or ctx.form(draft_spec(kind), {
        "promotion.valid_from_ms": local_moment_text(start, ctx.settings.utc_offset_minutes),
        "promotion.valid_to_ms": local_moment_text(start + 30 * 86_400_000, ctx.settings.utc_offset_minutes),
        "promotion.stackable": True, "promotion.funder": P.FUNDER_HEADQUARTERS})
    return ctx.render("promotion_form.html", form=form, kind=kind, promotion=None)


async def create_draft(ctx: Ctx, values: dict, nonce: str, kind: str):
    answer = await ctx.call("promotions", "CreatePromotion", P.CreatePromotionRequest(
        promotion=promotion_message(kind, values), by=ctx.user.username))
    ctx.flash("good", ctx.t("Draft saved."))
    return ctx.redirect(f"/promotions/{answer.promotion.promotion_id}")


def promotion_specs(promotion_id: int, kind: str) -> dict[str, FormSpec]:
    base = f"/promotions/{promotion_id}"
    specs = {name: FormSpec(f"step-{name}", f"{base}/{name}", label, (), danger=name == "end")
             for name, label in (("submit", "Submit for approval"), ("approve", "Approve"), ("activate", "Activate"),
                                 ("end", "End the promotion"))}
    specs["coupons"] = FormSpec("coupons", base + "/coupons", "Issue coupons", (
        Field("card_id", "Card", "int", help="0: bearer coupons"),
        Field("station_id", "Issuing station", "int")))
    specs["packet"] = FormSpec("packet", base + "/packet", "Create a red packet", (
        Field("total_minor", "Total", "amount", required=True),
        Field("issuer_kind", "Paid from", "select", options=ISSUERS),
        Field("issuer_owner", "Card (for a card's account)", "int")))
    specs["chances"] = FormSpec("chances", base + "/chances", "Grant chances", (
        Field("card_id", "Card", "int", required=True),
        Field("count", "Chances", "int", required=True)))
    return specs


async def promotion_page(ctx: Ctx, promotion_id: int, failed=None, issued=None):
    answer = await ctx.call("promotions", "GetPromotion", P.GetPromotionRequest(promotion_id=promotion_id))
    promotion = answer.promotion
    kind = KIND_OF.get(promotion.kind, "discount")
    forms = {name: ctx.form(spec) for name, spec in promotion_specs(promotion_id, kind).items()}
    forms["packet"].values = {"issuer_kind": 32}
    edit = ctx.form(draft_spec(kind, promotion_id), values_of(ctx, promotion))
    if failed is not None:
        if failed.spec.form_id == "draft":
            edit = failed
        for name, form in forms.items():
            if form.spec.form_id == failed.spec.form_id:
                forms[name] = failed
    draws = None
    if kind == "lottery":
        draws, _ = await ctx.maybe("promotions", "ListDraws", P.ListDrawsRequest(promotion_id=promotion_id, limit=50))
    packet = None
    packet_id = ctx.request.query_params.get("packet", "")
    if packet_id.isdigit():
        packet, _ = await ctx.maybe("promotions", "GetPacket", P.GetPacketRequest(packet_id=int(packet_id)))
    return ctx.render("promotion.html", answer=answer, promotion=promotion, counters=answer.counters, kind=kind,
                      forms=forms, edit=edit, draws=draws, packet=packet, issued=issued,
                      stage_name=P.PromotionStage.Name, kind_name=P.PromotionKind.Name, funder_name=P.Funder.Name,
                      tier_name=tier_name, type_name=card_pb2.CardType.Name, packet_state=P.PacketState.Name)


async def edit_draft(ctx: Ctx, values: dict, nonce: str, promotion_id: int):
    current = await ctx.call("promotions", "GetPromotion", P.GetPromotionRequest(promotion_id=promotion_id))
    kind = KIND_OF[current.promotion.kind]
    await ctx.call("promotions", "CreatePromotion", P.CreatePromotionRequest(
        promotion=promotion_message(kind, values, promotion_id), by=ctx.user.username))
    ctx.flash("good", ctx.t("Draft saved."))
    return ctx.redirect(f"/promotions/{promotion_id}")


def step(name: str):
    async def action(ctx: Ctx, values: dict, nonce: str, promotion_id: int):
        answer = await ctx.call("promotions", STEPS[name], P.StepRequest(promotion_id=promotion_id, by=ctx.user.username))
        ctx.flash("good", f"{ctx.t('Now')}: {ctx.t(P.PromotionStage.Name(answer.promotion.stage))}")
        return ctx.redirect(f"/promotions/{promotion_id}")

    return action


async def issue_coupons(ctx: Ctx, values: dict, nonce: str, promotion_id: int):
    answer = await ctx.call("promotions", "IssueCoupons", P.IssueCouponsRequest(
        promotion_id=promotion_id, card_id=values["card_id"], station_id=values["station_id"], by=ctx.user.username,
        request_id=nonce))
    if answer.result != common_pb2.APPROVED:
        ctx.flash("bad", f"{ctx.t('Declined')}: {answer.result_text} {answer.rule}")
    else:
        codes = ", ".join(coupon.code for coupon in answer.coupons)
        ctx.flash("good", f"{ctx.t('Coupons issued')}: {codes}")
    return ctx.redirect(f"/promotions/{promotion_id}")


async def create_packet(ctx: Ctx, values: dict, nonce: str, promotion_id: int):
    answer = await ctx.call("promotions", "CreatePacket", P.CreatePacketRequest(
        promotion_id=promotion_id, total_minor=values["total_minor"], issuer_kind=int(values["issuer_kind"]),
        issuer_owner=values["issuer_owner"], by=ctx.user.username, request_id=nonce))
    if answer.result != common_pb2.APPROVED:
        ctx.flash("bad", f"{ctx.t('Declined')}: {answer.result_text}")
    else:
        ctx.flash("good", f"{ctx.t('Red packet created')}: {answer.packet.packet_id}")
    return ctx.redirect(f"/promotions/{promotion_id}?packet={answer.packet.packet_id}")


async def grant_chances(ctx: Ctx, values: dict, nonce: str, promotion_id: int):
    answer = await ctx.call("promotions", "GrantChances", P.GrantChancesRequest(
        promotion_id=promotion_id, card_id=values["card_id"], count=values["count"], by=ctx.user.username,
        grant_number=int(nonce[:8], 16) % (2**32 - 1) + 1))
    if answer.result != common_pb2.APPROVED:
        ctx.flash("bad", f"{ctx.t('Declined')}: {answer.result_text} {answer.rule}")
    else:
        ctx.flash("good", f"{ctx.t('Chances granted')}: {answer.granted} · {ctx.t('the card has')} {answer.chances}")
    return ctx.redirect(f"/promotions/{promotion_id}")


# ---------------------------------------------------------------- try a basket

BASKET_SPEC = FormSpec("basket", "/promotions/basket", "Price the basket", (
    Field("station_id", "Station", "int", required=True),
    Field("card_id", "Card", "int", help="0: no card"),
    Field("amount_minor", "Amount", "amount", required=True),
    *(field for index in range(BASKET_ROWS) for field in (
        Field(f"basket[{index}].goods_code", "Goods code"),
        Field(f"basket[{index}].category", "Category"),
        Field(f"basket[{index}].quantity_milli", "Quantity, thousandths", "int", help="1000 = 1 litre or piece"),
        Field(f"basket[{index}].amount_minor", "Line amount", "amount"))),
    Field("coupon_codes", "Coupon codes", "codes"),
))


async def basket_page(ctx: Ctx, failed=None, priced=None, form=None):
    form = failed or form or ctx.form(BASKET_SPEC, {"basket[0].category": "fuel"})
    return ctx.render("basket.html", form=form, priced=priced, kind_name=P.PromotionKind.Name, funder_name=P.Funder.Name)


async def price_basket(ctx: Ctx, values: dict, nonce: str):
    request = P.PriceBasketRequest(station_id=values["station_id"], card_id=values["card_id"],
                                   amount_minor=values["amount_minor"], coupon_codes=values["coupon_codes"])
    for index in range(BASKET_ROWS):
        code = values[f"basket[{index}].goods_code"]
        if code:
            request.basket.add(goods_code=code, category=values[f"basket[{index}].category"],
                               quantity_milli=values[f"basket[{index}].quantity_milli"],
                               amount_minor=values[f"basket[{index}].amount_minor"])
    priced = await ctx.call("promotions", "PriceBasket", request)
    shown = Form(BASKET_SPEC, raw_values(BASKET_SPEC, await ctx.request.form()))
    return await basket_page(ctx, priced=priced, form=shown)


# ---------------------------------------------------------------- routes


async def draft_again(ctx: Ctx, form, kind: str):
    return await new_draft_page(ctx, kind, failed=form)


async def promotion_again(ctx: Ctx, form, promotion_id: int):
    return await promotion_page(ctx, promotion_id, failed=form)


async def basket_again(ctx: Ctx, form):
    return await basket_page(ctx, failed=form)


def new_spec_of(ctx: Ctx, kind: str) -> FormSpec:
    if kind not in KINDS:
        raise ApiError(grpc.StatusCode.NOT_FOUND, f"no promotion kind {kind!r}")
    return draft_spec(kind)


async def edit_spec_of(ctx: Ctx, promotion_id: int) -> FormSpec:
    current = await ctx.call("promotions", "GetPromotion", P.GetPromotionRequest(promotion_id=promotion_id))
    return draft_spec(KIND_OF[current.promotion.kind], promotion_id)


def spec_of(name: str):
    return lambda ctx, promotion_id: promotion_specs(promotion_id, "")[name]


ROUTES = [
    route("/promotions", page(promotions_page)),
    route("/promotions/basket", page(basket_page)),
    route("/promotions/basket", submit(lambda ctx: BASKET_SPEC, price_basket, basket_again), methods=("POST",)),
    route("/promotions/new/{kind}", page(new_draft_page)),
    route("/promotions/new/{kind}", submit(new_spec_of, create_draft, draft_again), methods=("POST",)),
    route("/promotions/{promotion_id:int}", page(promotion_page)),
    route("/promotions/{promotion_id:int}/edit", submit(edit_spec_of, edit_draft, promotion_again), methods=("POST",)),
    *(route(f"/promotions/{{promotion_id:int}}/{name}", submit(spec_of(name), step(name), promotion_again),
            methods=("POST",)) for name in STEPS),
    route("/promotions/{promotion_id:int}/coupons", submit(spec_of("coupons"), issue_coupons, promotion_again),
          methods=("POST",)),
    route("/promotions/{promotion_id:int}/packet", submit(spec_of("packet"), create_packet, promotion_again),
          methods=("POST",)),
    route("/promotions/{promotion_id:int}/chances", submit(spec_of("chances"), grant_chances, promotion_again),
          methods=("POST",)),
]
