"""Reports of a business day: CSV files and PNG charts.

Owns: the report files and their columns:
  takings.csv       per station and payment method: in, out, net (clearing)
  differences.csv   every difference of the day, its state and resolution
  reconciliation.csv per channel: items matched, waiting, differences by kind, fees
  takings.png       net takings by station, stacked by payment method
  differences.png   differences by kind, per channel
Used by: the CLI (`report`), tests.

Amounts appear twice in CSV: integer minor units (for programs) and yuan
text (for people). Charts use matplotlib's Agg backend (no display needed).
"""

import csv
import os

from core.results import Channel
from core.settlement import queue
from core.settlement.clearing import Clearing
from core.settlement.model import DifferenceKind
from core.settlement.money import MINOR_PER_UNIT, date_of_day, format_yuan

CHANNEL_NAMES = {int(channel): channel.name.lower() for channel in Channel}


def _write_csv(path: str, header: list[str], rows: list[list]):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def write_takings_csv(clearing: Clearing, path: str):
    rows = [
        [date_of_day(clearing.day), line.station_id, line.method, line.funded_by, line.in_minor, line.out_minor,
         line.net_minor, format_yuan(line.net_minor), line.entries]
        for line in clearing.lines
    ]
    rows.append([date_of_day(clearing.day), "all", "all", "", sum(line.in_minor for line in clearing.lines),
                 sum(line.out_minor for line in clearing.lines), clearing.net_minor, format_yuan(clearing.net_minor),
                 sum(line.entries for line in clearing.lines)])
    _write_csv(path, ["date", "station", "method", "funded_by", "in_minor", "out_minor", "net_minor", "net_yuan", "entries"], rows)


def write_differences_csv(differences, path: str):
    rows = []
    for found in differences:
        resolution = found.resolution
        rows.append([
            found.key, date_of_day(found.day), CHANNEL_NAMES.get(found.channel, found.channel), found.kind.name,
            found.item.name, found.reference, found.station_id, found.ours_minor, found.channel_minor,
            found.delta_minor, format_yuan(found.delta_minor), found.fee_minor, found.state.name,
            resolution.action.name if resolution else "", resolution.by if resolution else "",
            resolution.why if resolution else "", resolution.adjustment_txn_id if resolution else "", found.detail,
        ])
    _write_csv(path, ["id", "date", "channel", "kind", "item", "reference", "station", "ours_minor", "channel_minor",
                      "delta_minor", "delta_yuan", "fee_minor", "state", "action", "by", "why", "adjustment_txn_id", "detail"], rows)


def write_reconciliation_csv(runs, path: str):
    kinds = [kind.name for kind in DifferenceKind]
    rows = [
        [date_of_day(run.day), CHANNEL_NAMES.get(run.channel, run.channel), run.items_matched, run.items_waiting,
         run.differences, *(run.differences_by_kind.get(kind, 0) for kind in kinds), run.fees_minor, format_yuan(run.fees_minor),
         run.ours_minor, run.channel_minor, run.window_ms // 1000, run.statement_sha256]
        for run in runs
    ]
    _write_csv(path, ["date", "channel", "matched", "waiting", "differences", *(kind.lower() for kind in kinds), "fees_minor",
                      "fees_yuan", "ours_minor", "channel_minor", "window_s", "statement_sha256"], rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def plot_takings(clearing: Clearing, path: str):
    plt = _pyplot()
    stations = sorted({line.station_id for line in clearing.lines})
    methods = sorted({line.method for line in clearing.lines})
    net = {(line.station_id, line.method): line.net_minor / MINOR_PER_UNIT for line in clearing.lines}
    figure, axes = plt.subplots(figsize=(max(7, len(stations) * 0.8 + 4), 4.5))
    positions = range(len(stations))
    above = [0.0] * len(stations)
    below = [0.0] * len(stations)
    for method in methods:
        values = [net.get((station, method), 0.0) for station in stations]
        bottoms = [above[i] if value >= 0 else below[i] for i, value in enumerate(values)]
        axes.bar(positions, values, bottom=bottoms, label=method)
        for i, value in enumerate(values):
            if value >= 0:
                above[i] += value
            else:
                below[i] += value
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(list(positions), [str(station) for station in stations])
    axes.set_xlabel("station")
    axes.set_ylabel("net (currency units): + owed to the station")
    axes.set_title(f"Takings by station and payment method, {date_of_day(clearing.day)}")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), title="method")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_differences(differences, day: int, path: str):
    plt = _pyplot()
    channels = sorted({found.channel for found in differences}) or [int(Channel.BANK_CARD), int(Channel.WECHAT_PAY), int(Channel.ALIPAY)]
    kinds = list(DifferenceKind)
    counts = {(found.channel, found.kind): 0 for found in differences}
    for found in differences:
        counts[(found.channel, found.kind)] += 1
    figure, axes = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(kinds)
    for index, kind in enumerate(kinds):
        positions = [number + index * width for number in range(len(channels))]
        axes.bar(positions, [counts.get((channel, kind), 0) for channel in channels], width=width, label=kind.name.lower())
    axes.set_xticks([number + 0.4 - width / 2 for number in range(len(channels))], [CHANNEL_NAMES.get(c, str(c)) for c in channels])
    axes.set_ylabel("differences")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_title(f"Reconciliation differences by kind, {date_of_day(day)} ({len(differences)} in all)")
    axes.set_ylim(0, max([1, *counts.values()]) * 1.15)
    axes.legend(fontsize="small", ncol=len(kinds), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_discounts_csv(clearing: Clearing, path: str):
    """Promotions' discounts per station and promotion, with who funds them."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["day", "station_id", "promotion_id", "name", "funded_by", "funder_id", "sales", "discount_minor"])
        for line in clearing.discounts:
            writer.writerow([clearing.day, line.station_id, line.promotion_id, line.name, line.funded_by, line.funder_id, line.sales, line.discount_minor])


def write_day_report(store, clearing: Clearing, directory: str) -> list[str]:
    """Every report of clearing.day into `directory`; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    day = clearing.day
    differences = queue.differences(store, day=day)
    paths = {name: os.path.join(directory, name) for name in
             ("takings.csv", "discounts.csv", "differences.csv", "reconciliation.csv", "takings.png", "differences.png")}
    write_takings_csv(clearing, paths["takings.csv"])
    write_discounts_csv(clearing, paths["discounts.csv"])
    write_differences_csv(differences, paths["differences.csv"])
    write_reconciliation_csv(queue.runs(store, day), paths["reconciliation.csv"])
    plot_takings(clearing, paths["takings.png"])
    plot_differences(differences, day, paths["differences.png"])
    return list(paths.values())
