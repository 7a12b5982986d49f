"""Loyalty: the earning rules (edited as the API's JSON, a refusal shown
with the field inside it that the API names), gifts and their stock, tiers.

SaveRules refuses contradictory rules naming the field ("rules_json.tiers
..."): the message appears beside the rules, nothing is saved.
"""

import json

from server.console.forms import Field, FormSpec
from server.console.pages.common import TIERS
from server.console.web import Ctx, page, route, submit
from tally.v1 import loyalty_pb2

SPECS = {
    "rules": FormSpec("rules", "/loyalty/rules", "Save the rules", (
        Field("rules_json", "Rules (JSON)", "textarea", required=True,
              help="the schema is core/loyalty/rules.py; the version is given by the server"),)),
    "gift": FormSpec("gift", "/loyalty/gift", "Save the gift", (
        Field("terms.gift_id", "Gift id", "int", required=True),
        Field("terms.points_price", "Points price", "int"),
        Field("terms.cash_price_minor", "Cash price", "amount"),
        Field("terms.per_customer_limit", "Per customer", "int", help="0: no limit"),
        Field("terms.tiers", "Tiers", "checkboxes", options=TIERS),
        Field("terms.valid_from_day", "From", "date"),
        Field("terms.valid_to_day", "Until", "date"))),
    "stock": FormSpec("stock", "/loyalty/stock", "Change the stock", (
        Field("gift_id", "Gift id", "int", required=True),
        Field("delta", "Add (or take away, negative)", "int", required=True))),
    "tier": FormSpec("tier", "/loyalty/tier", "Set the tier", (
        Field("card_id", "Card", "int", required=True),
        Field("tier", "Tier", "select", options=TIERS))),
}


def pretty(rules_json: str) -> str:
    try:
        return json.dumps(json.loads(rules_json), indent=2, ensure_ascii=False)
    except ValueError:
        return rules_json


async def loyalty_page(ctx: Ctx, failed=None):
    rules, rules_refusal = await ctx.maybe("loyalty", "GetRules", loyalty_pb2.GetRulesRequest())
    catalogue, catalogue_refusal = await ctx.maybe("loyalty", "ListCatalogue", loyalty_pb2.ListCatalogueRequest())
    forms = {name: ctx.form(spec) for name, spec in SPECS.items()}
    if rules is not None:
        forms["rules"].values = {"rules_json": pretty(rules.rules_json)}
    if failed is not None:
        forms[failed.spec.form_id] = failed
    tiers = []
    if rules is not None:
        document = json.loads(rules.rules_json)
        thresholds = document.get("tiers", {}).get("thresholds_minor", {})
        multipliers = document.get("earning", {}).get("tier_permille", {})
        tiers = [(value, thresholds.get(str(value)), multipliers.get(str(value))) for value, _ in TIERS]
    return ctx.render("loyalty.html", rules=rules, rules_refusal=rules_refusal, catalogue=catalogue,
                      catalogue_refusal=catalogue_refusal, forms=forms, tiers=tiers,
                      tier_name=lambda tier: loyalty_pb2.CustomerTier.Name(tier).title())


async def save_rules(ctx: Ctx, values: dict, nonce: str):
    saved = await ctx.call("loyalty", "SaveRules", loyalty_pb2.SaveRulesRequest(rules_json=values["rules_json"]))
    ctx.flash("good", f"{ctx.t('Rules saved')}: {ctx.t('version')} {saved.version}")
    return ctx.redirect("/loyalty")


async def save_gift(ctx: Ctx, values: dict, nonce: str):
    terms = loyalty_pb2.GiftTerms(
        gift_id=values["terms.gift_id"], points_price=values["terms.points_price"],
        cash_price_minor=values["terms.cash_price_minor"], per_customer_limit=values["terms.per_customer_limit"],
        tiers=[int(tier) for tier in values["terms.tiers"]], valid_from_day=values["terms.valid_from_day"],
        valid_to_day=values["terms.valid_to_day"])
    answer = await ctx.call("loyalty", "SetGift", loyalty_pb2.SetGiftRequest(terms=terms))
    ctx.flash("good" if answer.result == 1 else "bad", f"{ctx.t('Gift')} {terms.gift_id}: {answer.result_text or ctx.t('saved')}")
    return ctx.redirect("/loyalty")


async def change_stock(ctx: Ctx, values: dict, nonce: str):
    answer = await ctx.call("loyalty", "AddGiftStock", loyalty_pb2.AddGiftStockRequest(
        gift_id=values["gift_id"], delta=values["delta"]))
    ctx.flash("good" if answer.result == 1 else "bad",
              f"{ctx.t('Gift')} {values['gift_id']}: {answer.result_text or ctx.t('stock')} {answer.gift.stock}")
    return ctx.redirect("/loyalty")


async def set_tier(ctx: Ctx, values: dict, nonce: str):
    answer = await ctx.call("loyalty", "SetTier", loyalty_pb2.SetTierRequest(card_id=values["card_id"],
                                                                          tier=int(values["tier"])))
    ctx.flash("good" if answer.result == 1 else "bad", f"{ctx.t('Card')} {values['card_id']}: {answer.result_text or ctx.t('tier set')}")
    return ctx.redirect("/loyalty")


async def loyalty_again(ctx: Ctx, form):
    return await loyalty_page(ctx, failed=form)


ROUTES = [
    route("/loyalty", page(loyalty_page)),
    *(route(f"/loyalty/{name}", submit(lambda ctx, name=name: SPECS[name], action, loyalty_again), methods=("POST",))
      for name, action in (("rules", save_rules), ("gift", save_gift), ("stock", change_stock), ("tier", set_tier))),
]
