"""`python -m bench backup --data DIR`: Pay throughput while an online snapshot runs.

Owns: the backup-under-load figure (issue 17: Pay throughput during a
backup of the 10M directory at least 0.8 of without). It starts the server
on DIR, drives Pay at N terminals for --duration seconds (bench e2e's
clients, closed loop, after a warm-up), and --before seconds into the
measurement runs `python -m core.backup snapshot --data DIR` in a
subprocess, as an operator would. Throughput is counted per second; the
report compares the seconds during the snapshot with those before and after
it (backup_ratio), and gives the snapshot's duration, size and rate.
Used by: operators, tests/test_backup.py (a short run on a small directory).
May call: the server and core.backup in subprocesses, bench e2e's clients.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import msgspec

from bench import charts, e2e
from core.store import transactions_in_directory

BACKUP_RATIO_TARGET = 0.8
SNAPSHOT_TIMEOUT_S = 3600.0


class Report(msgspec.Struct):
    date: str
    data_transactions: int | None
    concurrency: int
    mode: str
    duration_s: float
    rate_mib_s: float | None
    backup_started_s: float
    backup_s: float
    backup_bytes: int
    backup_mib_s: float
    throughput_before_after_per_s: float
    throughput_during_per_s: float
    backup_ratio: float
    latency_ms_during_p99: float | None
    latency_ms_outside_p99: float | None
    errors: int
    completions_by_second: list[int]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench backup",
        description="Pay under load on DIR while `python -m core.backup snapshot` copies DIR: throughput during the "
        "snapshot against before and after it (backup_ratio; issue 17 asks for at least 0.8), the snapshot's "
        "duration and rate. Exit 0 if the run had no errors and the snapshot succeeded.")
    parser.add_argument("--data", required=True, metavar="DIR", help="data directory (e.g. a copy of var/seed-10m)")
    parser.add_argument("--mode", choices=("unary", "stream"), default="stream")
    parser.add_argument("--concurrency", type=int, default=500, metavar="N")
    parser.add_argument("--duration", type=float, default=300.0, metavar="S",
                        help="measured seconds; the snapshot must end within them (default %(default)g)")
    parser.add_argument("--warmup", type=float, default=10.0, metavar="S", help="default %(default)g")
    parser.add_argument("--before", type=float, default=30.0, metavar="S",
                        help="seconds of the measurement before the snapshot starts (default %(default)g)")
    parser.add_argument("--rate-mib-s", type=float, metavar="MIB", help="the snapshot's --rate-mib-s (default: none)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--chart", metavar="FILE.png")
    args = parser.parse_args(argv)
    if not 0 < args.before < args.duration:
        parser.error("--before must be within 0 .. --duration")
    return args


def run(args, work_dir: str) -> Report:
    parameters = e2e.Parameters(
        mode=args.mode, rate_per_s=None, concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup,
        client_processes=2, clients_per_channel=e2e.CLIENTS_PER_CHANNEL_DEFAULT, amount_minor=100,
        call_timeout_s=30.0, server_args=[], data_dir=args.data, skip_echo=True)
    transactions = transactions_in_directory(args.data)
    backup = {}
    address = f"127.0.0.1:{e2e.free_port()}"
    log_path = os.path.join(work_dir, "server.log")
    server = e2e.start_server(e2e.server_command("pay", address, parameters, args.data), log_path)

    def schedule(measure_start_wall_s: float):
        thread = threading.Thread(target=take_snapshot, args=(args, work_dir, measure_start_wall_s, backup),
                                  daemon=True)
        thread.start()
        backup["thread"] = thread

    try:
        e2e.wait_until_serving(server, address, log_path)
        measured = e2e.drive_load(address, parameters, fund_cards=True, server_pid=server.pid, on_start=schedule)
        backup["thread"].join(SNAPSHOT_TIMEOUT_S)
    finally:
        exit_code = e2e.stop_server(server)
    if backup.get("error"):
        raise e2e.BenchFailure(f"the snapshot failed: {backup['error']}")
    summary = e2e.summarize(measured, args.duration, exit_code)
    if backup["ended_s"] > args.duration:
        raise e2e.BenchFailure(f"the snapshot took {backup['ended_s'] - backup['started_s']:.0f} s and ended after the "
                               f"measurement: give a longer --duration")
    return report_of(args, transactions, summary, measured, backup)


def take_snapshot(args, work_dir: str, measure_start_wall_s: float, backup: dict):
    time.sleep(max(0.0, measure_start_wall_s + args.before - time.time()))
    backup["started_s"] = time.time() - measure_start_wall_s
    command = [sys.executable, "-m", "core.backup", "snapshot", "--data", args.data,
               "--to", os.path.join(work_dir, "backups")]
    if args.rate_mib_s:
        command += ["--rate-mib-s", str(args.rate_mib_s)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SNAPSHOT_TIMEOUT_S)
    backup["ended_s"] = time.time() - measure_start_wall_s
    if result.returncode != 0:
        backup["error"] = (result.stdout + result.stderr)[-2000:]
        return
    found = re.search(r": ([\d,]+) bytes", result.stdout)
    backup["bytes"] = int(found.group(1).replace(",", "")) if found else 0


def report_of(args, transactions, summary, measured, backup) -> Report:
    import numpy

    started, ended = backup["started_s"], backup["ended_s"]
    done = numpy.concatenate([numpy.asarray(samples.done_s) for samples in measured.samples])
    latency = numpy.concatenate([numpy.asarray(samples.latency_s) for samples in measured.samples]) * 1000
    during = (done >= started) & (done < ended)
    outside_s = args.duration - (ended - started)
    return Report(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        data_transactions=transactions, concurrency=args.concurrency, mode=args.mode, duration_s=args.duration,
        rate_mib_s=args.rate_mib_s, backup_started_s=round(started, 2), backup_s=round(ended - started, 2),
        backup_bytes=backup["bytes"], backup_mib_s=round(backup["bytes"] / 2**20 / max(0.001, ended - started), 1),
        throughput_before_after_per_s=round(float((~during).sum()) / outside_s, 1),
        throughput_during_per_s=round(float(during.sum()) / (ended - started), 1),
        backup_ratio=round(float(during.sum()) / (ended - started) / max(1e-9, float((~during).sum()) / outside_s), 3),
        latency_ms_during_p99=float(numpy.percentile(latency[during], 99)) if during.any() else None,
        latency_ms_outside_p99=float(numpy.percentile(latency[~during], 99)) if (~during).any() else None,
        errors=summary.errors + summary.errors_unmeasured,
        completions_by_second=summary.completions_by_second,
    )


def draw(report: Report, path: str):
    seconds = list(range(len(report.completions_by_second)))
    running = [int(report.backup_started_s <= second < report.backup_started_s + report.backup_s) for second in seconds]
    charts.series_chart(path, f"Pay during an online snapshot ({report.backup_s:.0f} s, from "
                        f"{report.backup_started_s:.0f} s): backup_ratio {report.backup_ratio:.3f}", [
        ("Pay answers per second", "answers/s", seconds, {"answers": report.completions_by_second}),
        ("snapshot running", "1 = running", seconds, {"core.backup snapshot": running}),
    ])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="tally-backup-") as work_dir:
        try:
            report = run(args, work_dir)
        except e2e.BenchFailure as failure:
            print(f"python -m bench backup: {failure}", file=sys.stderr)
            return 1
    verdict = "meets" if report.backup_ratio >= BACKUP_RATIO_TARGET else "misses"
    print(f"snapshot of {report.data_transactions or 0:,} transactions: {report.backup_bytes:,} bytes in "
          f"{report.backup_s:.1f} s ({report.backup_mib_s:.0f} MiB/s), started {report.backup_started_s:.0f} s in")
    print(f"Pay {report.mode}, {report.concurrency} terminals: {report.throughput_during_per_s:,.0f}/s during the "
          f"snapshot, {report.throughput_before_after_per_s:,.0f}/s before and after it: backup_ratio "
          f"{report.backup_ratio:.3f} ({verdict} the target "
          f">= {BACKUP_RATIO_TARGET}); p99 {report.latency_ms_during_p99 or 0:.0f} ms during, "
          f"{report.latency_ms_outside_p99 or 0:.0f} ms outside; {report.errors} errors")
    if args.json:
        with open(args.json, "wb") as json_file:
            json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    if args.chart:
        draw(report, args.chart)
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
