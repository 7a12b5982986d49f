"""`python -m bench console`: the web console's page times on a large
directory, and what the console costs Pay.

Owns: preparing a data directory for the console (a headquarters over the
seeded stations, a user, the Pay load's cards; `bench seed` makes the
directory itself when no --data is given), a server with --console-listen,
a card with a history and an error queue with differences made through the
API, then two measurements:
  pages    each page's server time (the Server-Timing the console sends:
           from the request's arrival to its answer, every gRPC call
           included), N requests each, after a warm-up: the card page, the
           dashboard, the error queue; issue 19's target is p95 < 300 ms;
  pay      Pay's p99 under bench e2e's load (its client processes, stream
           mode by default) without and with the console in use (pages
           requested at --console-rate per second, open loop), alternated
           plain, console, console, plain per round on the same server;
           console_p99_ratio = p99 with / p99 without (all runs of each
           kind pooled), target < 1.10, and each round's ratio with their
           median (what a disturbance from outside moves least).
Used by: bench/__main__.py; tests/test_bench_console.py runs a short one.

The console runs in a process of its own (server/console/serve.py) and
the reads its pages ask for that grow with the books run in the server's
reader processes (server/readers.py), both at a lower CPU priority; what
is left in the server's process, and so on Pay's GIL, is answering the
pages' RPCs. The ratio is what all of it costs Pay on this machine: on
one whose cores other work shares, read the per-round ratios too.
"""

import argparse
import datetime
import http.client
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import msgspec
import numpy

from bench import e2e
from bench.directory_admin import directory_admin
from core.store import transactions_in_directory

HEADQUARTERS_ID = 800_000
# Seeded stations shown as organisations under the bench's headquarters
# (bench seed's are 1..500; bench e2e's load pays at station 1).
STATIONS_SHOWN = 20
USERNAME = "bench-admin"
PASSWORD = "bench console password"
CONSOLE_CARD = 6_280_000_000_000_001
CARD_HISTORY_SALES = 200
QUEUE_PAYMENTS = 40
FUNDING_TERMINAL_ID = 4_294_000_000
UTC_OFFSET_MINUTES = 480
PAGE_P95_TARGET_MS = 300.0
PAY_P99_RATIO_TARGET = 1.10
SERVER_START_TIMEOUT_S = 600.0
CONSOLE_LINE = re.compile(r"console on http://([^:\s]+):(\d+)")
SERVING_LINE = re.compile(r"serving on (\S+:\d+)")


class PageTimes(msgspec.Struct):
    path: str
    requests: int
    server_ms_p50: float
    server_ms_p95: float
    server_ms_p99: float
    server_ms_max: float
    wall_ms_p95: float
    meets_target: bool


class PayRun(msgspec.Struct):
    variant: str  # "plain" or "console"
    requests: int
    throughput_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    console_pages: int


class Report(msgspec.Struct):
    date: str
    data_dir: str
    transactions: int | None
    pages: list[PageTimes]
    page_p95_target_ms: float
    pay_mode: str
    pay_concurrency: int
    pay_runs: list[PayRun]
    console_rate_per_s: float
    console_p99_ratio: float | None
    console_p99_ratio_target: float
    round_ratios: list[float]
    # The median of round_ratios: each round's plain and console runs are
    # next to each other in time, so a disturbance from outside the run
    # (another process on the machine) moves one round, not the median.
    median_round_ratio: float


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", metavar="DIR", help="a seeded data directory to use (the bench adds its headquarters, "
                        "user and cards to it); default: seed a new one of --transactions")
    parser.add_argument("--transactions", type=int, default=300_000, metavar="N",
                        help="transactions of the directory seeded when no --data is given (default %(default)s)")
    parser.add_argument("--requests", type=int, default=200, metavar="R", help="timed requests per page (default %(default)s)")
    parser.add_argument("--warmup-requests", type=int, default=20, metavar="W", help="untimed first requests per page")
    parser.add_argument("--pay-mode", choices=("stream", "unary"), default="stream")
    parser.add_argument("--pay-concurrency", type=int, default=200, metavar="N")
    parser.add_argument("--pay-duration", type=float, default=20.0, metavar="S", help="each Pay run (default %(default)s)")
    parser.add_argument("--pay-warmup", type=float, default=3.0, metavar="S")
    parser.add_argument("--rounds", type=int, default=2, metavar="R",
                        help="plain, console, console, plain, R times (default %(default)s)")
    parser.add_argument("--console-rate", type=float, default=10.0, metavar="PAGES",
                        help="console pages requested per second during the console runs (default %(default)s)")
    parser.add_argument("--console-clients", type=int, default=4, metavar="C", help="browser sessions sharing that rate")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup_requests < 0 or args.rounds < 1 or args.console_clients < 1:
        parser.error("--requests, --rounds and --console-clients must be at least 1, --warmup-requests not negative")
    if not 0 < args.console_rate <= 1000:
        parser.error("--console-rate must be within 0 .. 1000 pages per second")
    return args


# ---------------------------------------------------------------- the directory


def seed(data_dir: str, transactions: int):
    accounts = max(1_000, transactions // 10)
    print(f"seeding {transactions:,} transactions on {accounts:,} cards into {data_dir}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "bench", "seed", "--transactions", str(transactions), "--accounts",
                    str(accounts), data_dir], check=True)


def prepare(data_dir: str, pay_cards: int):
    """The bench's headquarters over stations 1..STATIONS_SHOWN, its user,
    and the Pay load's cards, funded (as a seed would: through the kernel)."""
    from core.admin.errors import AlreadyExists
    from core.admin.model import OrgKind, Role
    from core.ledger import Ledger, business_day, load_kernel
    from core.records import Op
    from core.results import AccountKind, CardType, OpKind

    with directory_admin(data_dir) as (admin, actor):
        steps = [lambda: admin.create_headquarters(actor, "Bench", org_id=HEADQUARTERS_ID),
                 *(lambda station=station: admin.create_organisation(actor, HEADQUARTERS_ID, OrgKind.STATION,
                                                                     f"Station {station}", org_id=station)
                   for station in range(1, STATIONS_SHOWN + 1)),
                 lambda: admin.create_user(actor, USERNAME, PASSWORD, HEADQUARTERS_ID, Role.ADMINISTRATOR)]
        for step in steps:
            try:
                step()
            except AlreadyExists:
                pass  # a directory the bench prepared before
        now_ms = time.time_ns() // 1_000_000
        serial = time.time_ns()
        ops = []
        for index in range(pay_cards):
            card_id = e2e.CARD_ID_BASE + index
            ops.append(Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=CardType.PERSONAL))
            ops.append(Op(kind=OpKind.TOPUP, terminal_id=FUNDING_TERMINAL_ID, station_id=e2e.STATION_ID,
                          serial=serial + index, card_id=card_id, account_kind=AccountKind.PERSONAL,
                          amount=e2e.TOPUP_AMOUNT_MINOR))
        Ledger(admin.store, load_kernel("auto")).apply(ops, now_ms, business_day(now_ms, UTC_OFFSET_MINUTES))


class Server:
    def __init__(self, data_dir: str, log_path: str):
        self.log_path = log_path
        command = [sys.executable, "-m", "server", "--data", data_dir, "--listen", "127.0.0.1:0", "--back-office-auth",
                   "--console-listen", "127.0.0.1:0", "--locale", "en", "--utc-offset-minutes", str(UTC_OFFSET_MINUTES)]
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log)
        self.address, self.console = self._wait()

    def _wait(self):
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            with open(self.log_path) as log:
                text = log.read()
            serving, console = SERVING_LINE.search(text), CONSOLE_LINE.search(text)
            if serving and console:
                return serving.group(1), (console.group(1), int(console.group(2)))
            if self.process.poll() is not None:
                raise e2e.BenchFailure(f"server exited with code {self.process.returncode}\n{text[-3000:]}")
            time.sleep(0.2)
        raise e2e.BenchFailure("server did not start")

    def stop(self) -> int:
        try:
            return e2e.stop_server(self.process)
        finally:
            self.log.close()


# ---------------------------------------------------------------- the API setup


def setup_through_the_api(address: str) -> int:
    """A console card with CARD_HISTORY_SALES sales, and an error queue:
    QUEUE_PAYMENTS WeChat Pay sales and a bill with every other one 1.00 off.
    Returns the queue's differences."""
    import grpc

    from core.results import Channel
    from core.settlement.model import RowKind, RowStatus, Statement, StatementRow, totals_of
    from core.settlement.statements import wechat
    from tally.v1 import (admin_pb2, admin_pb2_grpc, card_pb2, common_pb2, payment_pb2, payment_pb2_grpc, settlement_pb2,
                          settlement_pb2_grpc)

    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        token = admin.Login(admin_pb2.LoginRequest(username=USERNAME, password=PASSWORD)).token
        metadata = (("authorization", f"Bearer {token}"),)
        try:
            admin.IssueCard(admin_pb2.IssueCardRequest(card_id=CONSOLE_CARD, org_id=e2e.STATION_ID,
                                                       card_type=card_pb2.PERSONAL_CARD), metadata=metadata)
            admin.ActivateCard(admin_pb2.ActivateCardRequest(card_id=CONSOLE_CARD), metadata=metadata)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        admin.TopUpCard(admin_pb2.TopUpCardRequest(card_id=CONSOLE_CARD, account=common_pb2.PERSONAL, amount_minor=10**10,
                                                   request_id=time.time_ns() % 2**62), metadata=metadata)
        payments = payment_pb2_grpc.PaymentServiceStub(channel)
        serial = time.time_ns()
        terminal_id = FUNDING_TERMINAL_ID + 1

        def pay(amount_minor: int, plan):
            nonlocal serial
            serial += 1
            context = common_pb2.TerminalContext(station_id=e2e.STATION_ID, terminal_id=terminal_id, serial=serial,
                                                 operator_id=1)
            answer = payments.Pay(payment_pb2.PayRequest(terminal=context, amount_minor=amount_minor, plan=plan))
            if answer.result != common_pb2.APPROVED:
                raise e2e.BenchFailure(f"setup Pay: {common_pb2.ResultCode.Name(answer.result)}")
            return answer

        for index in range(CARD_HISTORY_SALES):
            pay(1_000 + index, payment_pb2.PaymentPlan(card_id=CONSOLE_CARD, use_personal=True))
        sales = [pay(5_000 + index, payment_pb2.PaymentPlan(channel=common_pb2.WECHAT_PAY)) for index in range(QUEUE_PAYMENTS)]
        now_ms = time.time_ns() // 1_000_000
        rows = tuple(StatementRow(line=2 + index, kind=RowKind.PAYMENT, status=RowStatus.SUCCESS, reference=sale.txn_id,
                                  refund_reference=0, channel_trade_no=f"4200{sale.txn_id:020d}",
                                  amount_minor=sale.amount_minor + (100 if index % 2 else 0), fee_minor=0, time_ms=now_ms)
                     for index, sale in enumerate(sales))
        day = sales[0].business_day
        bill = wechat.write(Statement(channel=Channel.WECHAT_PAY, day=day, merchant_id="1900000001", rows=rows,
                                      totals=totals_of(rows)), UTC_OFFSET_MINUTES)
        settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
        header = settlement_pb2.StatementHeader(channel=common_pb2.WECHAT_PAY, file_name="bench.csv", by=USERNAME, replace=True)
        imported = settlement.ImportStatement(iter([settlement_pb2.ImportStatementChunk(header=header, data=bill)]),
                                              metadata=metadata)
        if imported.result not in (settlement_pb2.IMPORTED, settlement_pb2.REPLACED, settlement_pb2.ALREADY_IMPORTED):
            raise e2e.BenchFailure(f"bill refused: {imported.error_reason}")
        status = settlement.Reconcile(settlement_pb2.ReconcileRequest(channel=common_pb2.WECHAT_PAY, day=day),
                                      metadata=metadata)
        return status.differences


# ---------------------------------------------------------------- the console's client


class Browser:
    """One logged-in session over one keep-alive connection."""

    def __init__(self, host: str, port: int):
        self.connection = http.client.HTTPConnection(host, port, timeout=60)
        self.cookie = ""
        page = self.get("/login")[2]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        body = urllib.parse.urlencode({"csrf": csrf, "username": USERNAME, "password": PASSWORD, "next": "/"})
        status, _, _ = self.request("POST", "/login", body)
        if status != 303:
            raise e2e.BenchFailure(f"console login answered {status}")

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, float, str]:
        headers = {"cookie": self.cookie}
        if body is not None:
            headers["content-type"] = "application/x-www-form-urlencoded"
        try:
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if method != "GET":
                raise
            # uvicorn closes a keep-alive connection idle for 5 s (the
            # sessions of a ConsoleLoad wait for each other's logins, which
            # take seconds on a busy machine); a browser opens another and
            # asks again, and so does this one, once.
            self.connection.close()
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        cookie = response.headers.get("set-cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        timing = re.search(r"app;dur=([0-9.]+)", response.headers.get("server-timing", ""))
        return response.status, float(timing.group(1)) if timing else float("nan"), text

    def get(self, path: str) -> tuple[int, float, str]:
        return self.request("GET", path)


def page_paths() -> list[tuple[str, str]]:
    return [("card", f"/cards/{CONSOLE_CARD}"), ("dashboard", "/"), ("queue", "/settlement/queue")]


def time_pages(console: tuple[str, int], requests: int, warmup: int) -> list[PageTimes]:
    browser = Browser(*console)
    found = []
    for _, path in page_paths():
        server_ms, wall_ms = [], []
        for index in range(warmup + requests):
            started = time.perf_counter()
            status, app_ms, _ = browser.get(path)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if status != 200:
                raise e2e.BenchFailure(f"{path} answered {status}")
            if index >= warmup:
                server_ms.append(app_ms)
                wall_ms.append(elapsed_ms)
        p50, p95, p99 = numpy.percentile(server_ms, (50, 95, 99)).tolist()
        found.append(PageTimes(path, requests, p50, p95, p99, max(server_ms), float(numpy.percentile(wall_ms, 95)),
                               p95 < PAGE_P95_TARGET_MS))
    return found


class ConsoleLoad:
    """Open-loop page requests at `rate_per_s`, shared by `clients` sessions."""

    def __init__(self, console: tuple[str, int], rate_per_s: float, clients: int):
        self.browsers = [Browser(*console) for _ in range(clients)]
        self.interval_s = clients / rate_per_s
        self.stopping = threading.Event()
        self.pages = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._threads = []

    def start(self) -> "ConsoleLoad":
        for index, browser in enumerate(self.browsers):
            thread = threading.Thread(target=self._run, args=(browser, index), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, browser: Browser, offset: int):
        paths = [path for _, path in page_paths()]
        due = time.monotonic() + self.interval_s * offset / len(self.browsers)
        number = offset
        while not self.stopping.is_set():
            delay = due - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                break
            status, _, _ = browser.get(paths[number % len(paths)])
            with self._lock:
                self.pages += 1
                self.failures += status != 200
            number += 1
            due += self.interval_s

    def stop(self) -> int:
        self.stopping.set()
        for thread in self._threads:
            thread.join(60)
        return self.pages


# ---------------------------------------------------------------- Pay beside it


def pay_parameters(args) -> e2e.Parameters:
    return e2e.parameters_of(e2e.parse_args(["--mode", args.pay_mode, "--concurrency", str(args.pay_concurrency),
                                             "--duration", str(args.pay_duration), "--warmup", str(args.pay_warmup),
                                             "--skip-echo"]))


def pay_run(server: Server, parameters: e2e.Parameters, variant: str, console_load=None) -> tuple[PayRun, numpy.ndarray]:
    load = console_load() if console_load is not None else None
    try:
        measured = e2e.drive_load(server.address, parameters, fund_cards=False, server_pid=server.process.pid)
    finally:
        pages = load.stop() if load is not None else 0
    report = e2e.summarize(measured, parameters.duration_s, None)
    latency_ms = numpy.concatenate([numpy.asarray(s.latency_s, dtype=numpy.float64) for s in measured.samples]) * 1000
    run = PayRun(variant, report.requests, report.throughput_per_s, report.latency_ms.p50, report.latency_ms.p99,
                 report.errors, pages)
    print(f"pay {variant:8} {run.requests:>8} requests {run.throughput_per_s:8.0f}/s p99 {run.p99_ms or 0:7.1f} ms "
          f"errors {run.errors} console pages {pages}", file=sys.stderr)
    if run.errors:
        # A ratio of a failing server's latencies would mean nothing.
        raise e2e.BenchFailure(f"Pay failed {run.errors} times in a {variant} run ({run.requests} answered); the server's "
                               f"log says why (below; a full store answers RESOURCE_EXHAUSTED and logs 'writes refused')")
    return run, latency_ms


def p99(latencies: list[numpy.ndarray]) -> float | None:
    joined = numpy.concatenate(latencies) if latencies else numpy.empty(0)
    return float(numpy.percentile(joined, 99)) if joined.size else None


def run(args, data_dir: str, work_dir: str) -> Report:
    prepare(data_dir, args.pay_concurrency)
    server = Server(data_dir, os.path.join(work_dir, "server.log"))
    try:
        differences = setup_through_the_api(server.address)
        print(f"console card {CONSOLE_CARD} with {CARD_HISTORY_SALES} sales; {differences} differences in the queue",
              file=sys.stderr)
        pages = time_pages(server.console, args.requests, args.warmup_requests)
        for page in pages:
            print(f"page {page.path:24} server p50 {page.server_ms_p50:6.1f} p95 {page.server_ms_p95:6.1f} "
                  f"p99 {page.server_ms_p99:6.1f} ms (target p95 < {PAGE_P95_TARGET_MS:.0f})", file=sys.stderr)
        parameters = pay_parameters(args)
        runs, plain, loaded, round_ratios = [], [], [], []
        for _ in range(args.rounds):
            pair = {}
            for variant in ("plain", "console", "console", "plain"):
                factory = (lambda: ConsoleLoad(server.console, args.console_rate, args.console_clients).start()) \
                    if variant == "console" else None
                measured, latency_ms = pay_run(server, parameters, variant, factory)
                runs.append(measured)
                (loaded if variant == "console" else plain).append(latency_ms)
                pair.setdefault(variant, []).append(latency_ms)
            round_ratios.append(p99(pair["console"]) / p99(pair["plain"]))
    finally:
        server.stop()
    plain_p99, loaded_p99 = p99(plain), p99(loaded)
    return Report(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), data_dir=os.path.abspath(data_dir),
        transactions=transactions_in_directory(data_dir), pages=pages, page_p95_target_ms=PAGE_P95_TARGET_MS,
        pay_mode=args.pay_mode, pay_concurrency=args.pay_concurrency, pay_runs=runs, console_rate_per_s=args.console_rate,
        console_p99_ratio=None if not plain_p99 or loaded_p99 is None else loaded_p99 / plain_p99,
        console_p99_ratio_target=PAY_P99_RATIO_TARGET, round_ratios=round_ratios,
        median_round_ratio=float(numpy.median(round_ratios)))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="tally-bench-console-") as work_dir:
        data_dir = args.data
        if data_dir is None:
            data_dir = os.path.join(work_dir, "data")
            seed(data_dir, args.transactions)
        try:
            report = run(args, data_dir, work_dir)
        except e2e.BenchFailure as failure:
            print(f"python -m bench console: {failure}\n{e2e.log_tail(os.path.join(work_dir, 'server.log'))}", file=sys.stderr)
            return 1
    ratio = report.console_p99_ratio
    verdict = "meets" if ratio is not None and ratio < PAY_P99_RATIO_TARGET else "misses"
    print(f"console_p99_ratio {ratio:.3f} ({verdict} the target < {PAY_P99_RATIO_TARGET}); rounds "
          + ", ".join(f"{value:.3f}" for value in report.round_ratios) + f" (median {report.median_round_ratio:.3f}); "
          f"directory of {report.transactions:,} transactions")
    for page in report.pages:
        print(f"{page.path}: server p95 {page.server_ms_p95:.1f} ms ({'meets' if page.meets_target else 'misses'} "
              f"< {PAGE_P95_TARGET_MS:.0f})")
    if args.json:
        with open(args.json, "wb") as file:
            file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
