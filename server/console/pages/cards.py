"""Cards: search by card number, customer or plate; issue a card; a card's
page (balances, points lots, transactions, coupons) with the counter's daily
work: top up, activate, freeze, report lost, limits, allowed stations and
goods, plate, tier, cancel.

Every change is an AdminService call with the user's token (the role and
the card's organisation are the API's to check); a top-up's request_id comes
from its form's nonce, so a double submit tops up once.
"""

from server.console.forms import Field, FormSpec
from server.console.pages.common import CARD_TYPES, REASON_HELP, TIERS, org_choices, organisations, tier_name
from server.console.sessions import request_id_of
from server.console.web import Ctx, page, route, submit
from tally.v1 import admin_pb2, card_pb2, common_pb2, loyalty_pb2, promotion_pb2, report_pb2

TRANSACTIONS_PER_PAGE = 20
LISTED_CARDS = 50
ACCOUNTS = ((common_pb2.PERSONAL, "Personal account"), (common_pb2.FLEET, "Fleet account"))


async def issue_spec(ctx: Ctx) -> FormSpec:
    orgs = await organisations(ctx)
    return FormSpec("issue", "/cards/issue", "Issue the card", (
        Field("card_id", "Card number", "int", required=True),
        Field("org_id", "Organisation", "select", options=org_choices(orgs)),
        Field("card_type", "Card type", "select", options=CARD_TYPES),
        Field("limit_per_transaction_minor", "Limit per sale", "amount", help="0: no limit"),
        Field("limit_per_day_minor", "Limit per day", "amount", help="0: no limit"),
        Field("customer_id", "Customer id", "int", help="0: none"),
        Field("vehicle_plate", "Vehicle plate", help="fleet cards only"),
    ))


def card_specs(card_id: int, stations) -> dict[str, FormSpec]:
    base = f"/cards/{card_id}"
    return {
        "topup": FormSpec("topup", base + "/topup", "Top up", (
            Field("account", "Account", "select", options=ACCOUNTS),
            Field("amount_minor", "Amount", "amount", required=True))),
        "points": FormSpec("points", base + "/points", "Add points", (
            Field("amount_minor", "Points", "int", required=True),)),
        "activate": FormSpec("activate", base + "/activate", "Activate", ()),
        "freeze": FormSpec("freeze", base + "/freeze", "Freeze", (Field("reason", "Reason", required=True, help=REASON_HELP),)),
        "unfreeze": FormSpec("unfreeze", base + "/unfreeze", "Unfreeze", ()),
        "lost": FormSpec("lost", base + "/lost", "Report lost", (Field("reason", "Reason", required=True, help=REASON_HELP),),
                         danger=True),
        "limits": FormSpec("limits", base + "/limits", "Change limits", (
            Field("limit_per_transaction_minor", "Limit per sale", "amount", help="0: no limit"),
            Field("limit_per_day_minor", "Limit per day", "amount", help="0: no limit"))),
        "station": FormSpec("station", base + "/station", "Allow station", (
            Field("station_id", "Station", "select", options=org_choices(stations)),)),
        "goods": FormSpec("goods", base + "/goods", "Set allowed goods", (
            Field("allowed_goods", "Goods or category codes", "codes", help="separated by commas; empty: anything"),)),
        "plate": FormSpec("plate", base + "/plate", "Set plate", (Field("vehicle_plate", "Vehicle plate"),)),
        "tier": FormSpec("tier", base + "/tier", "Set tier", (Field("tier", "Tier", "select", options=TIERS),)),
        "cancel": FormSpec("cancel", base + "/cancel", "Cancel the card", (
            Field("reason", "Reason", required=True, help=REASON_HELP),), danger=True),
    }


# ---------------------------------------------------------------- the list


async def cards_page(ctx: Ctx, failed=None):
    query = ctx.request.query_params
    card_text, customer_text, plate = (query.get(name, "").strip() for name in ("card", "customer", "plate"))
    if card_text.isdigit():
        return ctx.redirect(f"/cards/{int(card_text)}")
    request = admin_pb2.ListCardRecordsRequest(limit=LISTED_CARDS, vehicle_plate=plate)
    if customer_text.isdigit():
        request.customer_id = int(customer_text)
    listed, refusal = await ctx.maybe("admin", "ListCardRecords", request)
    issue = failed or ctx.form(await issue_spec(ctx), {"card_type": card_pb2.PERSONAL_CARD, "customer_id": customer_text})
    return ctx.render("cards.html", listed=listed, refusal=refusal, issue=issue, card_text=card_text,
                      customer_text=customer_text, plate=plate, tier_name=tier_name,
                      status_name=card_pb2.CardStatus.Name, type_name=card_pb2.CardType.Name)


async def issue_card(ctx: Ctx, values: dict, nonce: str):
    card = await ctx.call("admin", "IssueCard", admin_pb2.IssueCardRequest(
        card_id=values["card_id"], org_id=int(values["org_id"] or 0), card_type=int(values["card_type"]),
        limit_per_transaction_minor=values["limit_per_transaction_minor"],
        limit_per_day_minor=values["limit_per_day_minor"], customer_id=values["customer_id"],
        vehicle_plate=values["vehicle_plate"]))
    ctx.flash("good", ctx.t("Card issued: activate it before it pays.") + f" {card.card_id}")
    return ctx.redirect(f"/cards/{card.card_id}")


# ---------------------------------------------------------------- one card


async def card_page(ctx: Ctx, card_id: int, failed=None):
    card = await ctx.call("admin", "GetCardRecord", admin_pb2.GetCardRecordRequest(card_id=card_id))
    before = ctx.request.query_params.get("before", "")
    points, points_refusal = await ctx.maybe("loyalty", "GetPoints", loyalty_pb2.GetPointsRequest(card_id=card_id))
    history, history_refusal = await ctx.maybe("reports", "ListCardTransactions", report_pb2.ListCardTransactionsRequest(
        card_id=card_id, before_txn_id=int(before) if before.isdigit() else 0, limit=TRANSACTIONS_PER_PAGE))
    coupons, _ = await ctx.maybe("promotions", "ListCoupons", promotion_pb2.ListCouponsRequest(card_id=card_id))
    stations = await organisations(ctx, admin_pb2.ORGANISATION_KIND_STATION)
    specs = card_specs(card_id, stations)
    forms = {name: ctx.form(spec) for name, spec in specs.items()}
    forms["limits"].values = {"limit_per_transaction_minor": ctx._amount_text(card.limit_per_transaction_minor),
                              "limit_per_day_minor": ctx._amount_text(card.limit_per_day_minor)}
    forms["goods"].values = {"allowed_goods": ", ".join(card.allowed_goods)}
    forms["plate"].values = {"vehicle_plate": card.vehicle_plate}
    forms["tier"].values = {"tier": card.tier}
    if failed is not None:
        forms[failed.spec.form_id] = failed
    return ctx.render(
        "card.html", card=card, points=points, points_refusal=points_refusal, history=history,
        history_refusal=history_refusal, coupons=coupons, forms=forms, tier_name=tier_name,
        status_name=card_pb2.CardStatus.Name, type_name=card_pb2.CardType.Name, channel_name=common_pb2.Channel.Name)


def card_spec_of(name: str):
    async def spec_of(ctx: Ctx, card_id: int):
        stations = await organisations(ctx, admin_pb2.ORGANISATION_KIND_STATION) if name == "station" else []
        return card_specs(card_id, stations)[name]

    return spec_of


async def _changed(ctx: Ctx, card_id: int, rpc: str, request, done: str):
    await ctx.call("admin", rpc, request)
    ctx.flash("good", ctx.t(done))
    return ctx.redirect(f"/cards/{card_id}")


async def top_up(ctx: Ctx, values: dict, nonce: str, card_id: int, account: int | None = None):
    answer = await ctx.call("admin", "TopUpCard", admin_pb2.TopUpCardRequest(
        card_id=card_id, account=account or int(values["account"]), amount_minor=values["amount_minor"],
        request_id=request_id_of(nonce)))
    shown = values["amount_minor"] if account == common_pb2.POINTS else ctx.money(values["amount_minor"])
    ctx.flash("good", f"{ctx.t('Topped up')} {shown} · {ctx.t('transaction')} {answer.txn_id}"
              + (f" ({ctx.t('already done: nothing moved again')})" if answer.replayed else ""))
    return ctx.redirect(f"/cards/{card_id}")


async def add_points(ctx: Ctx, values: dict, nonce: str, card_id: int):
    return await top_up(ctx, values, nonce, card_id, common_pb2.POINTS)


def simple(rpc: str, request_of, done: str):
    async def action(ctx: Ctx, values: dict, nonce: str, card_id: int):
        return await _changed(ctx, card_id, rpc, request_of(card_id, values), done)

    return action


async def set_tier(ctx: Ctx, values: dict, nonce: str, card_id: int):
    await ctx.call("loyalty", "SetTier", loyalty_pb2.SetTierRequest(card_id=card_id, tier=int(values["tier"])))
    ctx.flash("good", ctx.t("Tier set."))
    return ctx.redirect(f"/cards/{card_id}")


async def card_again(ctx: Ctx, form, card_id: int):
    return await card_page(ctx, card_id, failed=form)


async def cards_again(ctx: Ctx, form):
    return await cards_page(ctx, failed=form)


CHANGES = {
    "topup": top_up,
    "points": add_points,
    "activate": simple("ActivateCard", lambda card_id, values: admin_pb2.ActivateCardRequest(card_id=card_id),
                       "Card activated."),
    "freeze": simple("FreezeCard", lambda card_id, values: admin_pb2.FreezeCardRequest(
        card_id=card_id, reason=values["reason"]), "Card frozen."),
    "unfreeze": simple("UnfreezeCard", lambda card_id, values: admin_pb2.UnfreezeCardRequest(card_id=card_id),
                       "Card unfrozen."),
    "lost": simple("ReportCardLost", lambda card_id, values: admin_pb2.ReportCardLostRequest(
        card_id=card_id, reason=values["reason"]), "Card reported lost."),
    "limits": simple("ChangeCardLimits", lambda card_id, values: admin_pb2.ChangeCardLimitsRequest(
        card_id=card_id, limit_per_transaction_minor=values["limit_per_transaction_minor"],
        limit_per_day_minor=values["limit_per_day_minor"]), "Limits changed."),
    "station": simple("AllowCardStation", lambda card_id, values: admin_pb2.AllowCardStationRequest(
        card_id=card_id, station_id=int(values["station_id"] or 0)), "Station allowed."),
    "goods": simple("SetAllowedGoods", lambda card_id, values: admin_pb2.SetAllowedGoodsRequest(
        card_id=card_id, allowed_goods=values["allowed_goods"]), "Allowed goods set."),
    "plate": simple("SetVehiclePlate", lambda card_id, values: admin_pb2.SetVehiclePlateRequest(
        card_id=card_id, vehicle_plate=values["vehicle_plate"]), "Plate set."),
    "tier": set_tier,
    "cancel": simple("CancelCard", lambda card_id, values: admin_pb2.CancelCardRequest(
        card_id=card_id, reason=values["reason"]), "Card cancelled: its balance is owed back to the holder."),
}

ROUTES = [
    route("/cards", page(cards_page)),
    route("/cards/issue", submit(issue_spec, issue_card, cards_again), methods=("POST",)),
    route("/cards/{card_id:int}", page(card_page)),
    *(route(f"/cards/{{card_id:int}}/{name}", submit(card_spec_of(name), action, card_again), methods=("POST",))
      for name, action in CHANGES.items()),
]
