"""Risk: velocity limits (edited as rows, saved together: SetLimits
replaces them all), the thresholds of the flags for review, the blacklist
(add with a reason, permanently or until a date; remove), and the flags
raised.

A refusal naming a limit (`limits[2].ceiling`) lands beside that row's field
even when blank rows were left out of the request.
"""

from server.console.api import ApiError
from server.console.forms import Field, Form, FormSpec
from server.console.web import Ctx, page, route, submit
from tally.v1 import promotion_pb2 as P

BLANK_LIMIT_ROWS = 2
LIMIT_ROWS_MAX = 64
FLAGS_LISTED = 100
MEASURES = tuple((value, name.removeprefix("RISK_MEASURE_").replace("_", " ").capitalize())
                 for name, value in P.RiskMeasure.items() if value)
WINDOWS = tuple((value, name.removeprefix("RISK_WINDOW_").capitalize()) for name, value in P.RiskWindow.items() if value)
LIMIT_COLUMNS = ("limit_id", "name", "measure", "window", "ceiling")

FLAGS_SPEC = FormSpec("flags", "/risk/flags", "Save the flag rules", (
    Field("flags.small_sale_max_minor", "A small sale is at most", "amount"),
    Field("flags.small_sales_count", "Small sales that raise a flag", "int", help="0: off; else 2 .. 10000"),
    Field("flags.small_sales_window_s", "Within seconds", "int"),
    Field("flags.quiet_from_hour", "Quiet hours from", "int", help="0 .. 23"),
    Field("flags.quiet_to_hour", "until", "int", help="equal: none"),
))
BLACKLIST_SPEC = FormSpec("blacklist", "/risk/blacklist", "Blacklist the card", (
    Field("card_id", "Card", "int", required=True),
    Field("reason", "Reason", required=True),
    Field("until_ms", "Until", "moment", help="empty: permanently"),
), danger=True)


def limits_spec(rows: int) -> FormSpec:
    fields = []
    for index in range(rows):
        fields += [Field(f"limits[{index}].limit_id", "Limit id", "int"),
                   Field(f"limits[{index}].name", "Name"),
                   Field(f"limits[{index}].measure", "Measure", "select", options=MEASURES),
                   Field(f"limits[{index}].window", "Per", "select", options=WINDOWS),
                   Field(f"limits[{index}].ceiling", "At most", "int")]
    return FormSpec("limits", "/risk/limits", "Save the limits", tuple(fields))


def remove_spec(card_id: int) -> FormSpec:
    return FormSpec(f"remove-{card_id}", "/risk/unblacklist", "Remove", (Field("card_id", "Card", "hidden"),))


async def risk_page(ctx: Ctx, failed=None):
    rules = await ctx.call("risk", "ListLimits", P.ListLimitsRequest())
    blacklist = await ctx.call("risk", "ListBlacklist", P.ListBlacklistRequest())
    after = ctx.request.query_params.get("after", "")
    flags = await ctx.call("risk", "ListFlags", P.ListFlagsRequest(after_seq=int(after) if after.isdigit() else 0,
                                                                   limit=FLAGS_LISTED))
    rows = min(len(rules.limits) + BLANK_LIMIT_ROWS, LIMIT_ROWS_MAX)
    values = {}
    for index, limit in enumerate(rules.limits):
        for column in LIMIT_COLUMNS:
            values[f"limits[{index}].{column}"] = getattr(limit, column)
    flag_values = {f"flags.{name}": getattr(rules.flags, name) for name in
                   ("small_sales_count", "small_sales_window_s", "quiet_from_hour", "quiet_to_hour")}
    flag_values["flags.small_sale_max_minor"] = ctx._amount_text(rules.flags.small_sale_max_minor)
    forms = {"limits": ctx.form(limits_spec(rows), values), "flags": ctx.form(FLAGS_SPEC, flag_values),
             "blacklist": ctx.form(BLACKLIST_SPEC)}
    removals = {entry.card_id: ctx.form(remove_spec(entry.card_id), {"card_id": entry.card_id})
                for entry in blacklist.entries}
    if failed is not None:
        forms[failed.spec.form_id] = failed
    return ctx.render("risk.html", rules=rules, blacklist=blacklist, flags=flags, forms=forms, removals=removals,
                      rows=rows, columns=LIMIT_COLUMNS, flag_kind=P.FlagKind.Name)


async def limits_spec_of(ctx: Ctx) -> FormSpec:
    data = await ctx.request.form()
    rows = sum(1 for name in data.keys() if name.endswith("].limit_id"))
    return limits_spec(min(max(rows, 1), LIMIT_ROWS_MAX))


async def save_limits(ctx: Ctx, values: dict, nonce: str):
    request = P.SetLimitsRequest()
    sent = {}  # index in the request -> row of the form
    rows = sum(1 for name in values if name.endswith("].limit_id"))
    for row in range(rows):
        item = {column: values[f"limits[{row}].{column}"] for column in LIMIT_COLUMNS}
        if not item["limit_id"] and not item["name"]:
            continue
        sent[len(request.limits)] = row
        request.limits.add(limit_id=item["limit_id"], name=item["name"], measure=int(item["measure"]),
                           window=int(item["window"]), ceiling=item["ceiling"])
    try:
        saved = await ctx.call("risk", "SetLimits", request)
    except ApiError as error:
        field = error.field
        for index, row in sent.items():
            if field.startswith(f"limits[{index}]."):
                error.field = field.replace(f"limits[{index}].", f"limits[{row}].", 1)
                break
        raise
    ctx.flash("good", f"{ctx.t('Limits saved')}: {len(saved.limits)} · {ctx.t('version')} {saved.version}")
    return ctx.redirect("/risk")


async def save_flags(ctx: Ctx, values: dict, nonce: str):
    flags = P.FlagRules(**{name.removeprefix("flags."): value for name, value in values.items()})
    await ctx.call("risk", "SetFlagRules", P.SetFlagRulesRequest(flags=flags))
    ctx.flash("good", ctx.t("Flag rules saved."))
    return ctx.redirect("/risk")


async def add_entry(ctx: Ctx, values: dict, nonce: str):
    await ctx.call("risk", "AddBlacklistEntry", P.AddBlacklistEntryRequest(
        card_id=values["card_id"], reason=values["reason"], until_ms=values["until_ms"], by=ctx.user.username))
    ctx.flash("good", f"{ctx.t('Card blacklisted')}: {values['card_id']}")
    return ctx.redirect("/risk")


async def remove_entry(ctx: Ctx, values: dict, nonce: str):
    card_id = int(values["card_id"])
    answer = await ctx.call("risk", "RemoveBlacklistEntry", P.RemoveBlacklistEntryRequest(card_id=card_id,
                                                                                          by=ctx.user.username))
    ctx.flash("good" if answer.found else "info", f"{ctx.t('Removed from the blacklist') if answer.found else ctx.t('Not on the blacklist')}: {card_id}")
    return ctx.redirect("/risk")


async def risk_again(ctx: Ctx, form: Form):
    return await risk_page(ctx, failed=form)


ROUTES = [
    route("/risk", page(risk_page)),
    route("/risk/limits", submit(limits_spec_of, save_limits, risk_again), methods=("POST",)),
    route("/risk/flags", submit(lambda ctx: FLAGS_SPEC, save_flags, risk_again), methods=("POST",)),
    route("/risk/blacklist", submit(lambda ctx: BLACKLIST_SPEC, add_entry, risk_again), methods=("POST",)),
    route("/risk/unblacklist", submit(lambda ctx: FormSpec("remove", "/risk/unblacklist", "Remove", (
        Field("card_id", "Card", "int", required=True),)), remove_entry, risk_again), methods=("POST",)),
]
