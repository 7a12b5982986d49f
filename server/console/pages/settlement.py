"""Settlement: upload a channel's statement (a refused file shows its line
and reason), reconcile, the error queue (resolve with who and why),
clearing, day-end, a station's day and shift totals, downloads (journal CSV
and Parquet, takings CSV and PNG chart).

`by` is always the logged-in user (the API checks it is the token's); a
day is chosen as a date and sent as the API's day number.
"""

import grpc
from starlette.responses import Response

from server.console.api import ApiError
from server.console.forms import Field, Form, FormSpec, raw_values
from server.console.i18n import iso_day, parse_day
from server.console.pages.common import CHANNELS, org_choices, organisations
from server.console.web import Ctx, page, route, submit
from tally.v1 import admin_pb2, common_pb2, report_pb2, settlement_pb2 as S

CHUNK_BYTES = 32 * 1024
# The largest statement the console takes (the API takes up to 512 MiB:
# import bigger files with `python -m core.settlement import`).
STATEMENT_BYTES_MAX = 64 * 2**20
DIFFERENCES_LISTED = 100
ACTIONS = ((S.ACCEPT, "Accept"), (S.ADJUST, "Adjust (post a correction)"), (S.REVERSE, "Reversed at the source"))
DOWNLOADS = {
    "journal.csv": (report_pb2.EXPORT_KIND_JOURNAL_CSV, "Journal (CSV)"),
    "journal.parquet": (report_pb2.EXPORT_KIND_JOURNAL_PARQUET, "Journal (Parquet)"),
    "takings.csv": (report_pb2.EXPORT_KIND_TAKINGS_CSV, "Takings (CSV)"),
    "takings.png": (report_pb2.EXPORT_KIND_TAKINGS_PNG, "Takings chart (PNG)"),
}

IMPORT_SPEC = FormSpec("import", "/settlement/import", "Upload", (
    Field("header.channel", "Channel", "select", options=CHANNELS),
    Field("header.day", "Statement day", "date", help="only for a file that does not say it"),
    Field("header.replace", "Replace a different file of that day", "checkbox"),
    Field("file", "Statement file", "file", required=True),
), multipart=True)
RECONCILE_SPEC = FormSpec("reconcile", "/settlement/reconcile", "Reconcile", (
    Field("channel", "Channel", "select", options=CHANNELS),
    Field("day", "Day", "date", required=True),
    Field("window_s", "Midnight window, seconds", "int", help="0: 600"),
))


def resolve_spec(difference_id: str) -> FormSpec:
    return FormSpec(f"resolve-{difference_id}", "/settlement/queue/resolve", "Resolve", (
        Field("id", "Difference", "hidden"),
        Field("action", "Action", "select", options=ACTIONS),
        Field("why", "Why", required=True),
        Field("station_id", "Station (adjust only, if unknown)", "int"),
    ))


async def resolve_spec_of(ctx: Ctx) -> FormSpec:
    return resolve_spec(str((await ctx.request.form()).get("id", "")))


async def day_end_spec(ctx: Ctx) -> FormSpec:
    stations = await organisations(ctx, admin_pb2.ORGANISATION_KIND_STATION)
    return FormSpec("dayend", "/settlement/dayend", "Close the day", (
        Field("station_id", "Station", "select", options=org_choices(stations)),
        Field("business_day", "Day", "date", required=True),
    ), danger=True)


def chosen_day(ctx: Ctx) -> int:
    text = ctx.request.query_params.get("day", "")
    try:
        return parse_day(text) if text else ctx.today() - 1
    except ValueError:
        return ctx.today() - 1


async def settlement_page(ctx: Ctx, failed=None, imported=None):
    day = chosen_day(ctx)
    statuses, status_refusal = await ctx.maybe("settlement", "GetReconcileStatus", S.ReconcileStatusRequest(day=day))
    clearing, clearing_refusal = await ctx.maybe("settlement", "GetClearing", S.ClearingRequest(day=day))
    forms = {"import": ctx.form(IMPORT_SPEC), "reconcile": ctx.form(RECONCILE_SPEC, {"day": iso_day(day)}),
             "dayend": ctx.form(await day_end_spec(ctx), {"business_day": iso_day(day)})}
    if failed is not None:
        forms[failed.spec.form_id] = failed
    return ctx.render("settlement.html", the_day=day, day_text=iso_day(day), statuses=statuses, status_refusal=status_refusal,
                      clearing=clearing, clearing_refusal=clearing_refusal, forms=forms, downloads=DOWNLOADS,
                      imported=imported, channel_name=common_pb2.Channel.Name, kind_name=S.DifferenceKind.Name,
                      import_result=S.ImportResult.Name)


async def import_statement(ctx: Ctx, values: dict, nonce: str):
    upload = values["file"]
    data = await upload.read(STATEMENT_BYTES_MAX + 1)
    if len(data) > STATEMENT_BYTES_MAX:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"at most {STATEMENT_BYTES_MAX // 2**20} MiB here: import larger "
                       "files with python -m core.settlement import", field="file")
    header = S.StatementHeader(channel=int(values["header.channel"]), file_name=(upload.filename or "")[:200],
                               by=ctx.user.username, day=values["header.day"], replace=values["header.replace"])
    chunks = [S.ImportStatementChunk(header=header, data=data[:CHUNK_BYTES])]
    chunks += [S.ImportStatementChunk(data=data[offset:offset + CHUNK_BYTES])
               for offset in range(CHUNK_BYTES, len(data), CHUNK_BYTES)]
    answer = await ctx.send_stream("settlement", "ImportStatement", chunks)
    if answer.result in (S.REJECTED, S.CONFLICT):
        form = Form(IMPORT_SPEC, raw_values(IMPORT_SPEC, await ctx.request.form()))
        where = f"{ctx.t('line')} {answer.error_line}: " if answer.result == S.REJECTED and answer.error_line else ""
        form.errors["file"] = f"{ctx.t(S.ImportResult.Name(answer.result))}: {where}{answer.error_reason}"
        response = await settlement_page(ctx, failed=form)
        response.status_code = 400
        return response
    ctx.flash("good", f"{ctx.t(S.ImportResult.Name(answer.result))}: {answer.rows} {ctx.t('rows')} · "
              f"{ctx.t('payments')} {ctx.money(answer.payments_minor)} · {ctx.t('fees')} {ctx.money(answer.fees_minor)}")
    return ctx.redirect(f"/settlement?day={iso_day(answer.day)}")


async def reconcile(ctx: Ctx, values: dict, nonce: str):
    status = await ctx.call("settlement", "Reconcile", S.ReconcileRequest(
        channel=int(values["channel"]), day=values["day"], window_s=values["window_s"]))
    ctx.flash("good", f"{ctx.t('Reconciled')}: {status.items_matched} {ctx.t('matched')} · "
              f"{status.differences} {ctx.t('differences')}")
    return ctx.redirect(f"/settlement?day={iso_day(values['day'])}")


async def day_end(ctx: Ctx, values: dict, nonce: str):
    answer = await ctx.call("settlement", "DayEnd", S.DayEndRequest(
        station_id=int(values["station_id"] or 0), business_day=values["business_day"], by=ctx.user.username))
    ctx.flash("good", f"{ctx.t('Day closed')}: {ctx.t('station')} {answer.station_id} · {ctx.day(answer.business_day)} · "
              f"{answer.station.sales_count} {ctx.t('sales')} {ctx.money(answer.station.sales.total_minor)}")
    return ctx.redirect(f"/settlement/station?station={answer.station_id}&day={iso_day(answer.business_day)}")


# ---------------------------------------------------------------- the queue


async def queue_page(ctx: Ctx, failed=None):
    query = ctx.request.query_params
    request = S.ListDifferencesRequest(limit=DIFFERENCES_LISTED, all_states=query.get("state") == "all")
    if query.get("day"):
        try:
            request.day = parse_day(query["day"])
        except ValueError:
            pass
    listed = await ctx.call("settlement", "ListDifferences", request)
    forms = {}
    for found in listed.differences:
        if found.state == S.OPEN:
            forms[found.id] = ctx.form(resolve_spec(found.id), {"id": found.id, "action": S.ACCEPT})
    if failed is not None and failed.value("id") in forms:
        forms[failed.value("id")] = failed
    return ctx.render("queue.html", listed=listed, forms=forms, day_text=iso_day(request.day) if request.day else "",
                      all_states=request.all_states, channel_name=common_pb2.Channel.Name, kind_name=S.DifferenceKind.Name,
                      state_name=S.DifferenceState.Name, item_name=S.DifferenceItem.Name,
                      action_name=S.ResolutionAction.Name)


async def resolve(ctx: Ctx, values: dict, nonce: str):
    answer = await ctx.call("settlement", "ResolveDifference", S.ResolveDifferenceRequest(
        id=values["id"], action=int(values["action"]), by=ctx.user.username, why=values["why"],
        station_id=values["station_id"]))
    if not answer.resolved:
        spec = resolve_spec(values["id"])
        form = Form(spec, raw_values(spec, await ctx.request.form()), general=answer.reason)
        response = await queue_page(ctx, failed=form)
        response.status_code = 400
        return response
    ctx.flash("good", f"{ctx.t('Resolved')}: {answer.difference.id} · {ctx.t(S.ResolutionAction.Name(answer.difference.resolution.action))}")
    return ctx.redirect("/settlement/queue")


# ---------------------------------------------------------------- a station's day, downloads


async def station_page(ctx: Ctx):
    query = ctx.request.query_params
    stations = await organisations(ctx, admin_pb2.ORGANISATION_KIND_STATION)
    station_text = query.get("station", "")
    station_id = int(station_text) if station_text.isdigit() else (stations[0].org_id if stations else 0)
    day = chosen_day(ctx) if query.get("day") else ctx.today()
    answer, refusal = (None, None)
    if station_id:
        answer, refusal = await ctx.maybe("reports", "GetStationDay", report_pb2.GetStationDayRequest(
            station_id=station_id, day=day))
    return ctx.render("station_day.html", answer=answer, refusal=refusal, stations=stations, station_id=station_id,
                      the_day=day, day_text=iso_day(day))


async def download(ctx: Ctx):
    query = ctx.request.query_params
    kind = DOWNLOADS.get(query.get("kind", ""))
    try:
        day = parse_day(query.get("day", ""))
    except ValueError:
        day = 0
    if kind is None or not day:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, ctx.t("Choose a day and a file."))
    chunks = await ctx.stream("reports", "ExportDay", report_pb2.ExportDayRequest(day=day, kind=kind[0]))
    return Response(b"".join(chunk.data for chunk in chunks), media_type=chunks[0].media_type,
                    headers={"content-disposition": f'attachment; filename="{chunks[0].file_name}"'})


async def settlement_again(ctx: Ctx, form):
    return await settlement_page(ctx, failed=form)


async def queue_again(ctx: Ctx, form):
    return await queue_page(ctx, failed=form)


ROUTES = [
    route("/settlement", page(settlement_page)),
    route("/settlement/import", submit(lambda ctx: IMPORT_SPEC, import_statement, settlement_again), methods=("POST",)),
    route("/settlement/reconcile", submit(lambda ctx: RECONCILE_SPEC, reconcile, settlement_again), methods=("POST",)),
    route("/settlement/dayend", submit(day_end_spec, day_end, settlement_again), methods=("POST",)),
    route("/settlement/queue", page(queue_page)),
    route("/settlement/queue/resolve", submit(resolve_spec_of, resolve, queue_again), methods=("POST",)),
    route("/settlement/station", page(station_page)),
    route("/settlement/download", page(download)),
]
