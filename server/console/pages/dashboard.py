"""The dashboard: today's takings by station and payment method (charts),
open holds, reconciliation per channel, the store's and replication's health.

Each part is one call made with the user's token, all at once; a part the
user's role may not read shows the API's refusal in its place. A
standalone server is not asked for its replication status (the store's
status already says "standalone").
"""

import asyncio
import time

from server.console import charts
from server.console.web import Ctx, page, route
from tally.v1 import common_pb2, replication_pb2, report_pb2, settlement_pb2

STATEMENT_CHANNELS = (common_pb2.BANK_CARD, common_pb2.WECHAT_PAY, common_pb2.ALIPAY)
# Methods that are not takings of a sale (the station's top-up cash, corrections).
NOT_SALES = ("top-up",)
HOLDS_LISTED = 10
REFRESH_S_MIN = 5
# How long a server that answered "standalone" is not asked for its replication status.
STANDALONE = "standalone"
STANDALONE_KEY = ("standalone-until",)
STANDALONE_KEPT_S = 60.0


def takings_view(ctx: Ctx, answer) -> dict:
    """Sales money in per station and method: rows for the chart, totals."""
    by_station: dict[int, dict[str, int]] = {}
    by_method: dict[str, int] = {}
    for line in answer.lines:
        if line.method in NOT_SALES or line.method.startswith("adjustment"):
            continue
        by_station.setdefault(line.station_id, {})[line.method] = line.net_minor
        by_method[line.method] = by_method.get(line.method, 0) + line.net_minor
    methods = sorted(by_method, key=lambda name: -by_method[name])
    rows = [(f"{ctx.t('Station')} {station}", values) for station, values in sorted(by_station.items())]
    return {
        "rows": rows, "methods": methods, "by_method": by_method, "total": sum(by_method.values()),
        "chart": charts.stacked_bars(rows, methods, ctx.money, title=ctx.t("Takings by station")),
        "method_chart": charts.stacked_bars([(ctx.t(name), {name: by_method[name]}) for name in methods], methods,
                                            ctx.money, title=ctx.t("Takings by payment method")),
        "legend": charts.legend(methods, ctx.t),
    }


async def no_answer():
    return None, None


async def dashboard(ctx: Ctx):
    yesterday = ctx.today() - 1
    # A server whose store status said "standalone" a moment ago has no
    # replication to report (it only becomes a replica by a restart): its
    # status would be a call for nothing, and each call costs the server's
    # event loop, which serves Pay, a fraction of a millisecond.
    standalone_until = ctx.session.cache.get(STANDALONE_KEY, 0.0)
    takings, holds, reconciled, store, replication = await asyncio.gather(
        ctx.maybe("reports", "GetTakings", report_pb2.GetTakingsRequest()),
        ctx.maybe("reports", "ListOpenHolds", report_pb2.ListOpenHoldsRequest(limit=HOLDS_LISTED)),
        ctx.maybe("settlement", "GetReconcileStatus", settlement_pb2.ReconcileStatusRequest(day=yesterday)),
        ctx.maybe("reports", "GetStoreStatus", report_pb2.GetStoreStatusRequest()),
        no_answer() if standalone_until > time.monotonic()
        else ctx.maybe("replication", "GetStatus", replication_pb2.GetReplicationStatusRequest()),
    )
    if store[0] is not None and store[0].replication == STANDALONE:
        ctx.session.cache[STANDALONE_KEY] = time.monotonic() + STANDALONE_KEPT_S
    statuses = {}
    if reconciled[0] is not None:
        statuses = {status.channel: status for status in reconciled[0].statuses}
    refresh = ctx.request.query_params.get("refresh", "")
    return ctx.render(
        "dashboard.html", takings=takings, view=takings_view(ctx, takings[0]) if takings[0] is not None else None,
        holds=holds, reconciled=reconciled, statuses=statuses, channels=STATEMENT_CHANNELS,
        channel_name=common_pb2.Channel.Name, store=store, yesterday=yesterday, replication=replication[0],
        role_name=replication_pb2.ReplicaRole.Name,
        refresh_s=max(int(refresh), REFRESH_S_MIN) if refresh.isdigit() else 0)


ROUTES = [route("/", page(dashboard))]
