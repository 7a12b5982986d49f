"""PNG charts of a load run: latency over time, throughput over time, latency histogram.

Owns: drawing (matplotlib, Agg backend: no display needed).
Used by: bench e2e, soak, crash, seed.
"""

import math

import numpy

CHART_DPI = 110
SECONDS_PER_POINT_MIN = 1.0
# Over long runs a point per second is too many; at most this many points.
POINTS_MAX = 600


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def bucket_seconds(duration_s: float) -> float:
    return max(SECONDS_PER_POINT_MIN, math.ceil(duration_s / POINTS_MAX))


def per_interval(done_s: numpy.ndarray, latency_ms: numpy.ndarray, duration_s: float, interval_s: float):
    """(interval starts, completions/s, p50 ms, p99 ms, max ms) per interval; NaN where none completed."""
    count = max(1, math.ceil(duration_s / interval_s))
    index = numpy.minimum((done_s // interval_s).astype(numpy.int64), count - 1)
    starts = numpy.arange(count) * interval_s
    throughput = numpy.bincount(index, minlength=count)[:count] / interval_s
    p50 = numpy.full(count, numpy.nan)
    p99 = numpy.full(count, numpy.nan)
    peak = numpy.full(count, numpy.nan)
    order = numpy.argsort(index, kind="stable")
    sorted_index = index[order]
    bounds = numpy.searchsorted(sorted_index, numpy.arange(count + 1))
    for bucket in range(count):
        chunk = latency_ms[order[bounds[bucket] : bounds[bucket + 1]]]
        if chunk.size:
            p50[bucket], p99[bucket] = numpy.percentile(chunk, (50, 99))
            peak[bucket] = chunk.max()
    return starts, throughput, p50, p99, peak


def load_chart(path: str, title: str, done_s, latency_ms, duration_s: float, errors_s=None, heap=None):
    """Three panels: latency p50/p99 over time, throughput over time, latency
    histogram; a fourth with `heap` ((seconds, bytes) samples): the server's
    heap over time, where a leak would show as a slope."""
    pyplot = _pyplot()
    done_s = numpy.asarray(done_s, dtype=numpy.float64)
    latency_ms = numpy.asarray(latency_ms, dtype=numpy.float64)
    interval_s = bucket_seconds(duration_s)
    heap = [(at_s, value) for at_s, value in heap or () if value is not None]
    figure, panels = pyplot.subplots(4 if heap else 3, 1, figsize=(9, 13 if heap else 10))
    latency_axes, throughput_axes, histogram_axes = panels[:3]
    if heap:
        panels[3].plot([at_s for at_s, _ in heap], [value / 2**20 for _, value in heap], label="RssAnon")
        panels[3].set(xlabel="seconds", ylabel="MiB", title="server heap over time")
        panels[3].legend()
    figure.suptitle(title)
    if latency_ms.size:
        starts, throughput, p50, p99, peak = per_interval(done_s, latency_ms, duration_s, interval_s)
        latency_axes.plot(starts, p50, label="p50")
        latency_axes.plot(starts, p99, label="p99")
        latency_axes.plot(starts, peak, label="max", alpha=0.4)
        throughput_axes.plot(starts, throughput, label="answers/s")
        bins = numpy.logspace(math.log10(max(latency_ms.min(), 0.01)), math.log10(max(latency_ms.max(), 0.02)), 60)
        histogram_axes.hist(latency_ms, bins=bins)
        histogram_axes.set_xscale("log")
        for value, label in ((latency_ms.mean(), "avg"), (numpy.percentile(latency_ms, 99), "p99")):
            histogram_axes.axvline(value, color="black", linestyle="--", linewidth=0.8)
            histogram_axes.annotate(f"{label} {value:.1f} ms", (value, 0), xytext=(3, 20), textcoords="offset points", rotation=90)
    if errors_s is not None and len(errors_s):
        throughput_axes.hist(numpy.asarray(errors_s), bins=max(1, math.ceil(duration_s / interval_s)),
                             range=(0, duration_s), color="red", label="errors", alpha=0.6)
    latency_axes.set(xlabel="seconds", ylabel="latency ms", title=f"latency over time (per {interval_s:g} s)")
    latency_axes.legend()
    throughput_axes.set(xlabel="seconds", ylabel="per second", title="throughput over time")
    throughput_axes.legend()
    histogram_axes.set(xlabel="latency ms (log scale)", ylabel="answers", title="latency histogram")
    figure.tight_layout()
    figure.savefig(path, dpi=CHART_DPI)
    pyplot.close(figure)


def series_chart(path: str, title: str, panels: list[tuple[str, str, list, dict]]):
    """Free-form panels: (panel title, y label, x values, {series name: y values})."""
    pyplot = _pyplot()
    figure, axes_list = pyplot.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    figure.suptitle(title)
    for axes, (panel_title, y_label, x_values, series) in zip(axes_list[:, 0], panels):
        for name, values in series.items():
            axes.plot(x_values, values, marker="o" if len(x_values) <= 40 else None, label=name)
        axes.set(title=panel_title, ylabel=y_label)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=CHART_DPI)
    pyplot.close(figure)
