"""`python -m bench e2e`: Pay over gRPC at N concurrent terminals, against a baseline.

Owns: the end-to-end benchmark. It starts the real server (`python -m server`)
in a subprocess on a free 127.0.0.1 port, opens and funds one card per client,
drives Pay from several client processes (grpc.aio on uvloop), stops the
server, then runs the same load against the echo servicer (bench/echo.py) on
the same gRPC stack. It reports requests, throughput, latency (average and
percentiles), errors and declines of both, and the ratios pay/echo, as a
table, optionally as JSON and as a PNG chart.

Two transports (--mode): unary PaymentService.Pay calls, or GatewayService
streams (each client process's terminals share a few streams; what they send
in one event-loop turn goes out as one message). Two kinds of load: closed
loop (each terminal sends its next sale when the last is answered: N in
flight), or open loop (--rate R: sales arrive at R per second in total,
spread round-robin over the N terminals, whatever the answers do; latency is
counted from the arrival, so a slow server cannot hide its queue).
Used by: `python -m bench e2e` (bench/__main__.py), tests/test_bench.py.
May call: the server and the echo servicer only through gRPC, in subprocesses;
core.store (read-only, before a server starts: the directory's size).

With --terminal-auth, the Pay load also runs against a server started
with --terminal-auth, each client signed on as a registered terminal and
every request MACed (core/admin/terminal_client.py; the bench registers its
terminals and writes a master key first). The report adds that run and
auth_ratio = its throughput / the plain Pay run's: the terminal-auth
interceptor's cost, measured in the same run. --terminal-auth-algorithm sm4
registers the terminals for SM4 keys and CMAC-SM4 instead of AES and
HMAC-SHA256. The two alternate as plain,
auth, auth, plain, each for half of --duration, so that a load that drifts
during the run (other work on the machine) weighs on both sides alike.
With --promotions, likewise with promotions active (bench/promotions_load.py)
and promotions_ratio. With --compare-replicated, likewise with replication
on (bench/replicated.py: a 3-node NATS cluster on loopback, the leader
under load and --followers K followers applying the log): replicated_ratio
= the leader's throughput / the single node's (issue 17 asks for at least
0.7), with the followers' CPU and the log's bytes per transaction. With
--compare-empty, likewise on --data DIR and on a
new empty directory: data_ratio = DIR's throughput / the empty one's, what a
big directory costs (issue 7 asks for at least 0.9 on 10 million
transactions). Every report on --data says how many transactions DIR held
when the run began: each run adds its own, so a directory used for many
runs is no longer the size it was seeded with.

The runs are sequential, never concurrent: the machine has two cores and
the clients already share them with the server under test.
"""

import argparse
import asyncio
import collections
import datetime
import math
import multiprocessing
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import msgspec
import numpy
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import charts, promotions_load
from bench.back_office_load import BackOfficeLoad
from bench.directory_admin import directory_admin
from bench.login_flood import KnownUserLoginFlood, LoginFlood
from bench.gateway_client import GatewayStream, OperationError
from bench.replicated import ReplicatedExtras
from core.store import transactions_in_directory
from tally.v1 import admin_pb2, card_pb2, card_pb2_grpc, common_pb2, payment_pb2, payment_pb2_grpc

# Bench cards and terminals live in their own id ranges, far from the demo
# cards (6200000000000001..3) and demo terminals (1, 101, 102, 201).
CARD_ID_BASE = 6_290_000_000_000_000
TERMINAL_ID_BASE = 1000
STATION_ID = 1
OPERATOR_ID = 1
# One top-up per card covers any run: 10^12 minor units pay 10^10 sales of 100.
TOPUP_AMOUNT_MINOR = 10**12
# --terminal-auth: the bench's application domain (its headquarters) above
# station STATION_ID, whose terminals it registers.
AUTH_HEADQUARTERS_ID = 900_000
PAY_METHOD = "/tally.v1.PaymentService/Pay"
TOP_UP_METHOD = "/tally.v1.CardService/TopUp"
# Issue 6: the interceptor costs under 10% of Pay's throughput, so
# auth_ratio is at least this.
AUTH_RATIO_TARGET = 0.9
# --promotions: Pay with promotions active keeps at least this share of the
# plain Pay throughput (issue 4: within 20%).
PROMOTIONS_RATIO_TARGET = 0.8
# --compare-empty: Pay on a 10-million-transaction directory keeps at least
# this share of the throughput on an empty one (issue 7).
DATA_RATIO_TARGET = 0.9
# --compare-replicated: Pay on a replicated leader keeps at least this share
# of the single node's throughput (issue 17: at most 30% cost).
REPLICATED_RATIO_TARGET = 0.7
# What server/admin_service.py logs when it installs the interceptor.
# --beside KIND: another load run beside Pay in the variant runs, and the most
# it may raise Pay's p99 by: a login flood, of unknown or of existing users
# (issue 15: 1.2), back-office writes (issue 16: "unchanged", read as within
# the run's own noise, 1.1).
BESIDE_LOADS = {"login-flood": (LoginFlood, 1.2), "login-flood-known": (KnownUserLoginFlood, 1.2),
                "back-office": (BackOfficeLoad, 1.1)}
BESIDE_CLIENTS_DEFAULT = 16
BESIDE_CLIENTS_MAX = 256
BESIDE_RATE_MAX = 100_000.0
AUTH_LOG_LINE = "terminal and partner authentication on"
# --terminal-auth-algorithm -> core.admin.keys.KeyAlgorithm (its numbers).
TERMINAL_ALGORITHMS = {"aes": 1, "sm4": 2}
SIGNED_TOP_UP_TIMEOUT_S = 30.0

CONCURRENCY_MAX = 5000
CLIENT_PROCESSES_MAX = 64
# A grpc.aio client process tops out near 2,400 calls/s; ~100 calls in flight
# per HTTP/2 connection keeps each connection's frames small and spreads the
# server's reads over several sockets.
CLIENTS_PER_CHANNEL_DEFAULT = 100
# Stream mode: terminals sharing one stream (one connection). The window per
# stream is 2,048; 500 keeps each stream's messages batched yet spreads the
# server's reads over a few sockets.
CLIENTS_PER_STREAM_DEFAULT = 500
RATE_PER_S_MAX = 1_000_000
# --rounds: each round restarts both servers four times.
ROUNDS_MAX = 20
# Open loop: the arrival scheduler wakes this often and sends what is due.
ARRIVAL_TICK_S = 0.001
# Closed loop: pause after an error before the terminal's next sale.
ERROR_BACKOFF_S = 0.01

SERVER_READY_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 30.0
HEALTH_POLL_INTERVAL_S = 0.05
# Client processes must all be set up (connected, cards funded) before any
# starts; this much slack lets every event loop be waiting when the start
# time arrives.
START_DELAY_S = 0.3
CLIENT_SETUP_TIMEOUT_S = 300.0
LOG_TAIL_LINES = 30

KERNEL_PATTERN = re.compile(r"\(kernel: (\w+)")

# Every channel gets its own subchannel pool: without it, channels to the
# same target with equal arguments share one TCP connection, and "several
# channels" would be one. Message limits match the server's.
CLIENT_CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.max_send_message_length", 64 * 1024),
)


class Parameters(msgspec.Struct, frozen=True):
    mode: str
    # Open loop: arrivals per second over all terminals; None: closed loop.
    rate_per_s: float | None
    concurrency: int
    duration_s: float
    warmup_s: float
    client_processes: int
    clients_per_channel: int
    amount_minor: int
    call_timeout_s: float
    server_args: list[str]
    data_dir: str | None
    skip_echo: bool
    clients_per_stream: int = CLIENTS_PER_STREAM_DEFAULT
    # Also run Pay against a server with --terminal-auth, MACed clients.
    terminal_auth: bool = False
    # Their key suite: "aes" (HMAC-SHA256) or "sm4" (CMAC-SM4).
    terminal_auth_algorithm: str = "aes"
    # Also run Pay with promotions and a velocity limit active.
    promotions: bool = False
    # Also run Pay on a new empty directory, the baseline of --data.
    compare_empty: bool = False
    # Also run Pay on the leader of a replicated log, with this many followers.
    compare_replicated: bool = False
    followers: int = 1
    # The load run beside Pay in the variant runs (a BESIDE_LOADS name), and its clients.
    beside: str | None = None
    beside_clients: int = 0
    # --beside-rate: the beside load's calls per second, all clients together
    # (None: each client calls again as soon as it is answered).
    beside_rate_per_s: float | None = None
    # --terminal-auth / --promotions / --compare-empty: how many times the
    # plain, variant, variant, plain sequence runs (each run lasts
    # duration / (2 * rounds)).
    rounds: int = 1


class ClientPlan(msgspec.Struct, frozen=True):
    """What one client process does: clients [client_index_first,
    client_index_first + client_count) of the run."""

    address: str
    mode: str
    # Open loop: this process's share of the arrivals per second.
    rate_per_s: float | None
    clients_per_stream: int
    fund_cards: bool
    client_index_first: int
    client_count: int
    clients_per_channel: int
    # Serial of each card's top-up; Pay serials count up from the next one.
    serial_first: int
    amount_minor: int
    warmup_s: float
    duration_s: float
    call_timeout_s: float
    # --terminal-auth run: the 32-byte secret of each of this process's
    # terminals, in client order; empty: requests carry no MAC.
    terminal_secrets: tuple[bytes, ...] = ()
    # Their key suite (core.admin.keys.KeyAlgorithm).
    terminal_algorithm: int = 1


class Window(msgspec.Struct, frozen=True):
    """The run in this process's time.perf_counter seconds: clients start
    at start_s, requests completing in [measure_start_s, end_s) count."""

    start_s: float
    measure_start_s: float
    end_s: float

    def measures(self, done_s: float) -> bool:
        return self.measure_start_s <= done_s < self.end_s


class ProcessSamples(msgspec.Struct):
    """What one client process sends back to the parent."""

    latency_s: list[float]
    # Seconds since the measurement started, at which each sample completed.
    done_s: list[float]
    # Same, of each measured error.
    error_s: list[float]
    declines: int
    errors: int
    # Errors in the warm-up or after the end: not measured, still failures.
    errors_unmeasured: int
    error_codes: dict[str, int]


class LatencyMs(msgspec.Struct):
    avg: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class TargetReport(msgspec.Struct):
    """One run (pay or echo)."""

    requests: int
    throughput_per_s: float
    latency_ms: LatencyMs
    errors: int
    declines: int
    errors_unmeasured: int
    error_codes: dict[str, int]
    # Requests completed in each second of the measurement (the last one is
    # partial if the duration is not a whole number of seconds).
    completions_by_second: list[int]
    # CPU the server process used during the measurement (all its threads),
    # from /proc; null where there is no /proc. On two shared cores the
    # clients can be the bottleneck, and then throughput says more about the
    # clients than the server: CPU per request still says what a call costs.
    server_cpu_s: float | None
    server_cpu_ms_per_request: float | None
    server_exit_code: int | None
    # Bytes the server process (and its children) handed to write() in the
    # measurement, /proc/PID/io wchar: LMDB's pages and the logs (issue 20
    # asks for at most 8 KB a payment); null where there is no /proc.
    server_written_bytes: int | None = None
    server_written_bytes_per_request: float | None = None


class Ratios(msgspec.Struct):
    """pay / echo."""

    throughput: float | None
    latency_p99: float | None
    server_cpu_per_request: float | None


class AuthRatios(msgspec.Struct):
    """Pay with the terminal-auth interceptor (or with promotions) / Pay
    without it; or Pay on --data / Pay on an empty directory."""

    throughput: float | None
    latency_p99: float | None
    server_cpu_per_request: float | None
    # The throughput ratio of each round (--rounds): how far one round's
    # figure can be trusted on a shared machine.
    throughput_by_round: list[float] = []


class Report(msgspec.Struct, omit_defaults=True):
    date: str
    parameters: Parameters
    pay: TargetReport
    echo: TargetReport | None
    ratios: Ratios
    cpu_count: int
    grpc_version: str
    # Read from the server's log; omitted when the log does not say.
    kernel: str | None = None
    # --terminal-auth only: the Pay run with the interceptor, its ratios to
    # the plain Pay run, and auth_ratio (= auth_ratios.throughput; issue 6
    # asks for at least AUTH_RATIO_TARGET).
    pay_auth: TargetReport | None = None
    auth_ratios: AuthRatios | None = None
    auth_ratio: float | None = None
    # --promotions only: the Pay run with promotions active, its ratios to
    # the plain Pay run, and promotions_ratio (issue 4 asks for at least
    # PROMOTIONS_RATIO_TARGET).
    pay_promotions: TargetReport | None = None
    promotions_ratios: AuthRatios | None = None
    promotions_ratio: float | None = None
    # --compare-empty only: `pay` ran on --data, this on a new empty
    # directory; data_ratio = pay's throughput / this one's (issue 7 asks
    # for at least DATA_RATIO_TARGET).
    pay_empty: TargetReport | None = None
    data_ratios: AuthRatios | None = None
    data_ratio: float | None = None
    # --compare-replicated only: Pay on the leader of a replicated log, its
    # ratios to the single node, replicated_ratio (issue 17 asks for at
    # least REPLICATED_RATIO_TARGET), and the followers' and the log's costs.
    pay_replicated: TargetReport | None = None
    replicated_ratios: AuthRatios | None = None
    replicated_ratio: float | None = None
    replicated: ReplicatedExtras | None = None
    # --data only: the transactions the directory held before the run.
    data_transactions: int | None = None
    # --beside only: the Pay run with the other load beside it, its ratios to
    # the plain run, and beside_p99_ratio (bounded by BESIDE_LOADS).
    pay_beside: TargetReport | None = None
    beside_ratios: AuthRatios | None = None
    beside_p99_ratio: float | None = None


class Measured(msgspec.Struct):
    samples: list[ProcessSamples]
    server_cpu_s: float | None
    server_written_bytes: int | None = None


class BenchFailure(Exception):
    """The run could not complete (server did not start, a client process
    failed); the message says why."""


# ----------------------------------------------------------------------------
# Command line


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench e2e",
        description="End-to-end benchmark: starts the Tally server on a free 127.0.0.1 port, drives "
        "PaymentService.Pay closed-loop at N concurrent clients (one card and one terminal each), then "
        "runs the same load against an echo PaymentService on the same gRPC stack (bench/echo.py). "
        "Prints requests, throughput, latency p50/p95/p99/max, errors and declines of both, and the "
        "ratios pay/echo. Exit code 0 if both runs completed with zero gRPC errors, 1 otherwise.",
    )
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary",
                        help="unary: one PaymentService.Pay call per sale; stream: sales on GatewayService "
                        "streams, many in flight per stream (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=100, metavar="N",
                        help=f"concurrent clients (terminals); closed loop: each sends its next request when the "
                        f"previous answer arrives; 1 .. {CONCURRENCY_MAX} (default %(default)s)")
    parser.add_argument("--rate", type=float, metavar="R",
                        help="open loop: R sales per second in total, arriving at a fixed pace and spread "
                        "round-robin over the N terminals, whether or not earlier ones were answered; latency "
                        "counts from each arrival (default: closed loop)")
    parser.add_argument("--duration", type=float, default=10.0, metavar="S",
                        help="measured seconds of each run, pay and echo (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="S",
                        help="seconds of load before the measurement starts, not counted (default %(default)s)")
    parser.add_argument("--client-processes", type=int, default=2, metavar="P",
                        help="client processes sharing the N clients; one process drives about 2,400 calls/s "
                        "(default %(default)s, at most N)")
    parser.add_argument("--clients-per-channel", type=int, default=CLIENTS_PER_CHANNEL_DEFAULT, metavar="C",
                        help="unary mode: clients sharing one gRPC channel (one HTTP/2 connection) (default %(default)s)")
    parser.add_argument("--clients-per-stream", type=int, default=CLIENTS_PER_STREAM_DEFAULT, metavar="C",
                        help="stream mode: terminals sharing one gateway stream (one connection each) (default %(default)s)")
    parser.add_argument("--amount-minor", type=int, default=100, metavar="MINOR",
                        help="amount of each sale, integer minor units (default %(default)s)")
    parser.add_argument("--call-timeout", type=float, default=30.0, metavar="S",
                        help="deadline of each call; a call past it counts as an error (default %(default)s)")
    parser.add_argument("--data", metavar="DIR",
                        help="server data directory, used as it is if it exists (e.g. one made by `bench seed`) "
                        "and kept afterwards; default: a fresh temporary one, removed")
    parser.add_argument("--server-args", default="", metavar='"FLAGS"',
                        help='extra flags for `python -m server`, one shell-quoted string; write it with "=" '
                        'since it starts with a dash: --server-args="--kernel reference" '
                        '(--data and --listen are set by this tool)')
    parser.add_argument("--skip-echo", action="store_true",
                        help="run Pay only, without the echo baseline (echo and ratios are null in the JSON)")
    parser.add_argument("--terminal-auth", action="store_true",
                        help="also run Pay against a server with --terminal-auth (terminals registered and signed "
                        "on, every request MACed) and report auth_ratio = its throughput / plain Pay's; the two "
                        "alternate (plain, auth, auth, plain, each half of --duration); unary mode only, on a data "
                        "directory whose station 1 and bench terminals are not registered yet")
    parser.add_argument("--terminal-auth-algorithm", choices=tuple(TERMINAL_ALGORITHMS), default="aes",
                        help="with --terminal-auth: the terminals' key suite, aes (HMAC-SHA256 MACs) or sm4 "
                        "(CMAC-SM4 MACs) (default %(default)s)")
    parser.add_argument("--promotions", action="store_true",
                        help="also run Pay with promotions active (a 5%% discount, a lottery chance per sale and a "
                        "velocity limit: three counters linked to every PAY; bench/promotions_load.py) and report "
                        "promotions_ratio = its throughput / plain Pay's; the two alternate like --terminal-auth")
    parser.add_argument("--compare-empty", action="store_true",
                        help="with --data: also run Pay on a new empty data directory and report data_ratio = the "
                        "throughput on --data / on the empty one (issue 7 asks for at least 0.9 on 10 million "
                        "transactions); the two alternate like --terminal-auth, each run with its own warm-up")
    parser.add_argument("--compare-replicated", action="store_true",
                        help="also run Pay on the leader of a replicated log (a 3-node NATS JetStream cluster on "
                        "loopback, --followers K followers applying it) and report replicated_ratio = its throughput / "
                        "the single node's (issue 17 asks for at least 0.7); the two alternate like --terminal-auth")
    parser.add_argument("--followers", type=int, default=1, metavar="K",
                        help="with --compare-replicated: followers applying the log during the run, 0 .. 4 "
                        "(default %(default)s)")
    parser.add_argument("--beside", choices=sorted(BESIDE_LOADS), metavar="KIND",
                        help="also run Pay with another load beside it and report beside_p99_ratio = Pay's p99 with it / "
                        "without; the two alternate like --terminal-auth. login-flood: wrong logins "
                        "(AdminService.Login of unknown users, a full argon2id check each; issue 15 asks at most 1.2); "
                        "back-office: promotion drafts, blacklist entries and loyalty rules written without pause "
                        "(issue 16: Pay's p99 unchanged, read as at most 1.1)")
    parser.add_argument("--beside-clients", type=int, default=BESIDE_CLIENTS_DEFAULT, metavar="N",
                        help="clients of the --beside load (default %(default)s)")
    parser.add_argument("--beside-rate", type=float, metavar="R",
                        help="the --beside load's calls per second, its clients together (default: each calls again as "
                        "soon as it is answered, so a faster server gets more of it)")
    parser.add_argument("--rounds", type=int, default=1, metavar="R",
                        help="with --terminal-auth, --promotions or --compare-empty: run the plain, variant, "
                        "variant, plain sequence R times, each run lasting --duration / (2 R); the ratio counts every "
                        "run, and each round's ratio is printed too, showing how much one round wanders on a shared "
                        "machine (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the whole report as JSON to FILE")
    parser.add_argument("--chart", metavar="FILE.png",
                        help="also draw the Pay run: latency over time, throughput over time, latency histogram")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    if not 1 <= args.concurrency <= CONCURRENCY_MAX:
        parser.error(f"--concurrency must be within 1 .. {CONCURRENCY_MAX}")
    if not 1 <= args.client_processes <= CLIENT_PROCESSES_MAX:
        parser.error(f"--client-processes must be within 1 .. {CLIENT_PROCESSES_MAX}")
    if args.clients_per_channel < 1 or args.clients_per_stream < 1:
        parser.error("--clients-per-channel and --clients-per-stream must be at least 1")
    if args.rate is not None and not 0 < args.rate <= RATE_PER_S_MAX:
        parser.error(f"--rate must be within 0 .. {RATE_PER_S_MAX} sales per second, got {args.rate:g}")
    if not 1 <= args.amount_minor <= 10**12:
        parser.error("--amount-minor must be within 1 .. 10^12")
    if args.duration <= 0 or args.warmup < 0 or args.call_timeout <= 0:
        parser.error("--duration and --call-timeout must be positive, --warmup not negative")
    if args.terminal_auth + args.promotions + args.compare_empty + bool(args.beside) + args.compare_replicated > 1:
        parser.error("--terminal-auth, --promotions, --compare-empty, --beside and --compare-replicated each compare two "
                     "runs: use one at a time")
    if args.beside_rate is not None and not (args.beside and 0 < args.beside_rate <= BESIDE_RATE_MAX):
        parser.error(f"--beside-rate needs --beside and must be within 0 .. {BESIDE_RATE_MAX:,} calls/s")
    if not 1 <= args.beside_clients <= BESIDE_CLIENTS_MAX:
        parser.error(f"--beside-clients must be within 1 .. {BESIDE_CLIENTS_MAX}")
    if not 0 <= args.followers <= 4:
        parser.error(f"--followers must be within 0 .. 4, got {args.followers}")
    if args.compare_empty and not args.data:
        parser.error("--compare-empty needs --data DIR: the directory compared with an empty one")
    if not 1 <= args.rounds <= ROUNDS_MAX:
        parser.error(f"--rounds must be within 1 .. {ROUNDS_MAX}")
    if args.terminal_auth_algorithm != "aes" and not args.terminal_auth:
        parser.error("--terminal-auth-algorithm goes with --terminal-auth")
    if args.terminal_auth and args.mode != "unary":
        parser.error("--terminal-auth needs --mode unary: with it the server refuses GatewayService streams")


def parameters_of(args) -> Parameters:
    return Parameters(
        mode=args.mode,
        rate_per_s=args.rate,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        client_processes=min(args.client_processes, args.concurrency),
        clients_per_channel=args.clients_per_channel,
        amount_minor=args.amount_minor,
        call_timeout_s=args.call_timeout,
        server_args=shlex.split(args.server_args),
        data_dir=args.data,
        skip_echo=args.skip_echo,
        clients_per_stream=args.clients_per_stream,
        terminal_auth=args.terminal_auth,
        terminal_auth_algorithm=args.terminal_auth_algorithm,
        promotions=args.promotions,
        compare_empty=args.compare_empty,
        compare_replicated=args.compare_replicated,
        followers=args.followers,
        beside=args.beside,
        beside_clients=args.beside_clients if args.beside else 0,
        beside_rate_per_s=args.beside_rate,
        rounds=args.rounds,
    )


# ----------------------------------------------------------------------------
# Servers under test (subprocesses)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(command: list[str], log_path: str) -> subprocess.Popen:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_until_serving(process: subprocess.Popen, address: str, log_path: str):
    """Poll gRPC health until SERVING: the server opens its store, recovers
    and seeds before it listens, and that takes as long as it takes."""
    deadline_s = time.monotonic() + SERVER_READY_TIMEOUT_S
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline_s:
            if process.poll() is not None:
                raise BenchFailure(f"server exited with code {process.returncode}\n{log_tail(log_path)}")
            try:
                if stub.Check(request, timeout=1.0).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(HEALTH_POLL_INTERVAL_S)
    raise BenchFailure(f"server not serving after {SERVER_READY_TIMEOUT_S:.0f} s\n{log_tail(log_path)}")


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM and wait: the server finishes calls in flight and commits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -signal.SIGKILL


def log_tail(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as log_file:
            return "".join(log_file.readlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


def log_says(log_path: str, text: str) -> bool:
    try:
        with open(log_path, errors="replace") as log_file:
            return text in log_file.read()
    except OSError:
        return False


def kernel_name(log_path: str) -> str | None:
    try:
        with open(log_path, errors="replace") as log_file:
            found = KERNEL_PATTERN.search(log_file.read())
    except OSError:
        return None
    return found.group(1) if found else None


class TerminalAuth(msgspec.Struct, frozen=True):
    """What the --terminal-auth run needs: the server's master key file and
    each client's terminal secret (client index order)."""

    master_key_file: str
    secrets: tuple[bytes, ...]


def server_command(target: str, address: str, parameters: Parameters, data_dir: str,
                   auth: TerminalAuth | None = None) -> list[str]:
    if target == "echo":
        return [sys.executable, "-m", "bench.echo", "--listen", address, "--log-level", "WARNING"]
    # The tool's own flags come first so that --server-args may add to them.
    secured = ["--terminal-auth", "--master-key-file", auth.master_key_file] if auth is not None else []
    return [sys.executable, "-m", "server", "--data", data_dir, "--listen", address, *secured, *parameters.server_args]


def run_target(target: str, parameters: Parameters, data_dir: str, log_path: str,
               auth: TerminalAuth | None = None, beside=None) -> tuple[TargetReport, Measured]:
    """One server, one load. beside: given the server's address, another
    load (a BesideLoad) that runs against it for the whole run (warm-up
    included)."""
    address = f"127.0.0.1:{free_port()}"
    process = start_server(server_command(target, address, parameters, data_dir, auth), log_path)
    other = None
    try:
        wait_until_serving(process, address, log_path)
        other = beside(address).start() if beside is not None else None
        measured = drive_load(address, parameters, fund_cards=(target == "pay"), server_pid=process.pid,
                              secrets=auth.secrets if auth is not None else ())
    finally:
        if other is not None:
            print(other.stop(), file=sys.stderr)
        exit_code = stop_server(process)
    return summarize(measured, parameters.duration_s, exit_code), measured


def register_terminals(data_dir: str, work_dir: str, concurrency: int, algorithm: str = "aes") -> TerminalAuth:
    """A master key, the bench's headquarters and station STATION_ID, and
    one registered terminal per client, written to the data directory
    before the server starts (as `python -m core.admin` would)."""
    from core.admin import keys
    from core.admin.errors import AdminError
    from core.admin.model import OrgKind

    master_key_file = os.path.join(work_dir, "master.key")
    keys.new_master_key_file(master_key_file)
    with directory_admin(data_dir, keys.load_master_key(master_key_file)) as (admin, actor):
        try:
            admin.create_headquarters(actor, "Bench", org_id=AUTH_HEADQUARTERS_ID)
            admin.create_organisation(actor, AUTH_HEADQUARTERS_ID, OrgKind.STATION, "Bench station", org_id=STATION_ID)
            secrets = tuple(admin.register_terminal(actor, TERMINAL_ID_BASE + index, STATION_ID, f"bench {index}",
                                                    TERMINAL_ALGORITHMS[algorithm])[1]
                            for index in range(concurrency))
        except AdminError as error:
            raise BenchFailure(f"--terminal-auth registers station {STATION_ID} and terminals {TERMINAL_ID_BASE}.. in "
                               f"{data_dir}: {error} (use a data directory without them)") from None
    return TerminalAuth(master_key_file, secrets)


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of a process, all its threads, and its
    child processes (the workers of --workers N), alive or reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            fields = stat_file.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14, stime 15, cutime
    # 16 and cstime 17 (man 5 proc).
    total = sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for child in child_pids(pid):
        total += process_cpu_s(child) or 0.0
    return total


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children_file:
            return [int(child) for child in children_file.read().split()]
    except OSError:
        return []


def process_written_bytes(pid: int) -> int | None:
    """Bytes a process and its children passed to write() and its kind
    (wchar of /proc/PID/io, man 5 proc)."""
    try:
        with open(f"/proc/{pid}/io") as io_file:
            fields = dict(line.split(": ") for line in io_file.read().splitlines())
    except OSError:
        return None
    return int(fields["wchar"]) + sum(process_written_bytes(child) or 0 for child in child_pids(pid))


def server_use_in_window(server_pid: int, start_at_wall_s: float, parameters: Parameters) -> tuple[float | None, int | None]:
    """Sleep through the run, reading the server's CPU and bytes written
    when the measurement starts and when it ends."""
    time.sleep(max(0.0, start_at_wall_s + parameters.warmup_s - time.time()))
    cpu_s_first, written_first = process_cpu_s(server_pid), process_written_bytes(server_pid)
    time.sleep(max(0.0, start_at_wall_s + parameters.warmup_s + parameters.duration_s - time.time()))
    cpu_s_last, written_last = process_cpu_s(server_pid), process_written_bytes(server_pid)
    cpu_s = None if cpu_s_first is None or cpu_s_last is None else cpu_s_last - cpu_s_first
    written = None if written_first is None or written_last is None else written_last - written_first
    return cpu_s, written


# ----------------------------------------------------------------------------
# Client processes: the parent's side


def client_plans(address: str, parameters: Parameters, fund_cards: bool,
                 secrets: tuple[bytes, ...] = ()) -> list[ClientPlan]:
    # A serial base from the clock: a reused --data directory already holds
    # the serials of earlier runs for these terminals, and a reused serial
    # would be answered from the idempotency table instead of being paid.
    serial_first = time.time_ns()
    plans = []
    first = 0
    for index in range(parameters.client_processes):
        count = parameters.concurrency // parameters.client_processes
        count += 1 if index < parameters.concurrency % parameters.client_processes else 0
        plans.append(
            ClientPlan(
                address=address,
                mode=parameters.mode,
                rate_per_s=None if parameters.rate_per_s is None else parameters.rate_per_s / parameters.client_processes,
                clients_per_stream=parameters.clients_per_stream,
                fund_cards=fund_cards,
                client_index_first=first,
                client_count=count,
                clients_per_channel=parameters.clients_per_channel,
                serial_first=serial_first,
                amount_minor=parameters.amount_minor,
                warmup_s=parameters.warmup_s,
                duration_s=parameters.duration_s,
                call_timeout_s=parameters.call_timeout_s,
                terminal_secrets=secrets[first:first + count],
                terminal_algorithm=TERMINAL_ALGORITHMS[parameters.terminal_auth_algorithm],
            )
        )
        first += count
    assert first == parameters.concurrency
    return plans


def drive_load(address: str, parameters: Parameters, fund_cards: bool, server_pid: int,
               secrets: tuple[bytes, ...] = (), on_start=None) -> Measured:
    """on_start(measure_start_wall_s), if given, is called once the clients
    are set up, with the wall-clock time the measurement will start at
    (bench backup schedules its snapshot from it)."""
    # spawn, not fork: the parent has used gRPC (health checks), and gRPC's
    # threads and sockets do not survive a fork.
    context = multiprocessing.get_context("spawn")
    workers = []
    for plan in client_plans(address, parameters, fund_cards, secrets):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=client_process_main, args=(plan, child_end), daemon=True)
        process.start()
        child_end.close()
        workers.append((process, parent_end))
    try:
        for _, pipe in workers:
            receive(pipe, "ready", CLIENT_SETUP_TIMEOUT_S)
        start_at_wall_s = time.time() + START_DELAY_S
        for _, pipe in workers:
            pipe.send(start_at_wall_s)
        if on_start is not None:
            on_start(start_at_wall_s + parameters.warmup_s)
        server_cpu_s, server_written_bytes = server_use_in_window(server_pid, start_at_wall_s, parameters)
        run_timeout_s = parameters.call_timeout_s + 30.0
        samples = [receive(pipe, "samples", run_timeout_s) for _, pipe in workers]
        return Measured(samples=samples, server_cpu_s=server_cpu_s, server_written_bytes=server_written_bytes)
    finally:
        for process, pipe in workers:
            process.join(timeout=5.0)
            if process.is_alive():
                process.terminate()
                process.join()
            pipe.close()


def receive(pipe, kind: str, timeout_s: float):
    if not pipe.poll(timeout_s):
        raise BenchFailure(f"a client process sent no {kind} within {timeout_s:.0f} s")
    try:
        received_kind, payload = pipe.recv()
    except EOFError:
        raise BenchFailure(f"a client process died before sending {kind}") from None
    if received_kind == "failed":
        raise BenchFailure(f"a client process failed: {payload}")
    assert received_kind == kind, (received_kind, kind)
    return payload


# ----------------------------------------------------------------------------
# Client processes: the child's side


def client_process_main(plan: ClientPlan, pipe):
    import uvloop

    try:
        samples = uvloop.run(run_clients(plan, pipe))
    except Exception as error:  # the parent must hear of it, not wait for a timeout
        pipe.send(("failed", f"{type(error).__name__}: {error}"))
        return
    pipe.send(("samples", samples))


async def run_clients(plan: ClientPlan, pipe) -> ProcessSamples:
    per_channel = plan.clients_per_stream if plan.mode == "stream" else plan.clients_per_channel
    channel_count = math.ceil(plan.client_count / per_channel)
    channels = [grpc.aio.insecure_channel(plan.address, options=CLIENT_CHANNEL_OPTIONS) for _ in range(channel_count)]
    streams = []
    try:
        await asyncio.wait_for(asyncio.gather(*(channel.channel_ready() for channel in channels)), SERVER_READY_TIMEOUT_S)
        clients = range(plan.client_index_first, plan.client_index_first + plan.client_count)
        signers = None
        if plan.terminal_secrets:
            signers = await sign_on_terminals(channels, plan)
        if plan.fund_cards:
            await asyncio.gather(*(fund_card(channels[i % channel_count], i, plan.serial_first, signers)
                                   for i in clients))
        if plan.mode == "stream":
            streams = [await GatewayStream(channel).start() for channel in channels]
            pays = [stream.pay for stream in streams]
        elif signers is not None:
            pays = [signed_unary(channel, PAY_METHOD, payment_pb2.PaymentAnswer, signers, plan.call_timeout_s)
                    for channel in channels]
        else:
            pays = [unary_pay(payment_pb2_grpc.PaymentServiceStub(channel).Pay, plan.call_timeout_s) for channel in channels]
        pipe.send(("ready", None))
        start_at_wall_s = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        window = window_of(plan, start_at_wall_s)
        tally = Tally(window)
        requests = {i: pay_request(plan, i) for i in clients}
        if plan.rate_per_s is None:
            await asyncio.gather(*(drive_client(pays[i % channel_count], requests[i], window, tally) for i in clients))
        else:
            await drive_open_loop(pays, requests, plan.rate_per_s, window, tally, plan.call_timeout_s)
        return tally.samples()
    finally:
        await asyncio.gather(*(stream.close() for stream in streams))
        await asyncio.gather(*(channel.close() for channel in channels))


def unary_pay(stub_pay, call_timeout_s: float):
    async def pay(request):
        return await stub_pay(request, timeout=call_timeout_s)

    return pay


async def sign_on_terminals(channels, plan: ClientPlan) -> dict:
    """terminal id -> its TerminalKeys, each signed on (a serial from the
    clock, above any earlier run's sign-on)."""
    from core.admin.terminal_client import SIGN_ON_METHOD, TerminalKeys

    signers = {}
    for offset, secret in enumerate(plan.terminal_secrets):
        client_index = plan.client_index_first + offset
        terminal = TerminalKeys(TERMINAL_ID_BASE + client_index, STATION_ID, secret, plan.terminal_algorithm)
        body, metadata = terminal.sign_on_request(plan.serial_first, OPERATOR_ID)
        sign_on = channels[client_index % len(channels)].unary_unary(
            SIGN_ON_METHOD, request_serializer=None, response_deserializer=admin_pb2.KeySignOnAnswer.FromString)
        terminal.accept(await sign_on(body, metadata=metadata, timeout=plan.call_timeout_s))
        signers[terminal.terminal_id] = terminal
    return signers


def signed_unary(channel, method: str, answer_type, signers: dict, call_timeout_s: float):
    """A unary call whose request goes out as the bytes its MAC covers,
    with the four x-tally-* metadata of its terminal's working key."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=answer_type.FromString)

    async def send(request):
        body = request.SerializeToString()
        metadata = signers[request.terminal.terminal_id].metadata(method, request.terminal.serial, body)
        return await call(body, metadata=metadata, timeout=call_timeout_s)

    return send


def window_of(plan: ClientPlan, start_at_wall_s: float) -> Window:
    # The start time crosses processes as wall-clock time; latency is measured
    # with perf_counter, which does not jump when the clock is adjusted.
    start_s = time.perf_counter() + (start_at_wall_s - time.time())
    measure_start_s = start_s + plan.warmup_s
    return Window(start_s=start_s, measure_start_s=measure_start_s, end_s=measure_start_s + plan.duration_s)


def terminal_of(client_index: int, serial: int) -> common_pb2.TerminalContext:
    return common_pb2.TerminalContext(
        station_id=STATION_ID, terminal_id=TERMINAL_ID_BASE + client_index, serial=serial, operator_id=OPERATOR_ID
    )


async def fund_card(channel, client_index: int, serial: int, signers: dict | None = None):
    """Open the client's card (it may exist from an earlier run on the same
    data) and top up its personal account so Pay never runs out (a top-up
    is a terminal request: MACed when the server authenticates terminals)."""
    card_id = CARD_ID_BASE + client_index
    cards = card_pb2_grpc.CardServiceStub(channel)
    opened = await cards.OpenCard(card_pb2.OpenCardRequest(card_id=card_id, card_type=card_pb2.PERSONAL_CARD))
    if opened.result not in (common_pb2.APPROVED, common_pb2.CARD_EXISTS):
        raise RuntimeError(f"OpenCard {card_id}: {common_pb2.ResultCode.Name(opened.result)}")
    top_up = cards.TopUp
    if signers is not None:
        top_up = signed_unary(channel, TOP_UP_METHOD, payment_pb2.PaymentAnswer, signers, SIGNED_TOP_UP_TIMEOUT_S)
    topped = await top_up(
        card_pb2.TopUpRequest(
            terminal=terminal_of(client_index, serial), card_id=card_id, account=common_pb2.PERSONAL, amount=TOPUP_AMOUNT_MINOR
        )
    )
    if topped.result != common_pb2.APPROVED:
        raise RuntimeError(f"TopUp {card_id}: {common_pb2.ResultCode.Name(topped.result)}")


def pay_request(plan: ClientPlan, client_index: int) -> payment_pb2.PayRequest:
    return payment_pb2.PayRequest(
        terminal=terminal_of(client_index, plan.serial_first),
        amount_minor=plan.amount_minor,
        plan=payment_pb2.PaymentPlan(card_id=CARD_ID_BASE + client_index, use_personal=True),
    )


class Tally:
    """Samples and counts of one client process, in its window."""

    def __init__(self, window: Window):
        self.window = window
        self.latency_s = []
        self.done_s = []
        self.error_s = []
        self.declines = 0
        self.errors = 0
        self.errors_unmeasured = 0
        self.error_codes = collections.Counter()

    def add_answer(self, sent_s: float, done_s: float, result: int):
        if not self.window.measures(done_s):
            return
        self.latency_s.append(done_s - sent_s)
        self.done_s.append(done_s - self.window.measure_start_s)
        if result != common_pb2.APPROVED:
            self.declines += 1

    def add_error(self, done_s: float, code: grpc.StatusCode):
        self.error_codes[code.name] += 1
        if self.window.measures(done_s):
            self.errors += 1
            self.error_s.append(done_s - self.window.measure_start_s)
        else:
            self.errors_unmeasured += 1

    def samples(self) -> ProcessSamples:
        return ProcessSamples(
            latency_s=self.latency_s,
            done_s=self.done_s,
            error_s=self.error_s,
            declines=self.declines,
            errors=self.errors,
            errors_unmeasured=self.errors_unmeasured,
            error_codes=dict(self.error_codes),
        )


async def drive_client(pay, request: payment_pb2.PayRequest, window: Window, tally: Tally):
    """One terminal, closed loop: the next sale goes out when the answer to
    the last one is in, until the window ends. Each sale has a new serial;
    the request is reused because it is serialized (or copied into a stream
    operation) when sent."""
    await asyncio.sleep(max(0.0, window.start_s - time.perf_counter()))
    terminal = request.terminal
    while (sent_s := time.perf_counter()) < window.end_s:
        terminal.serial += 1
        try:
            answer = await pay(request)
        except (grpc.aio.AioRpcError, OperationError) as error:
            tally.add_error(time.perf_counter(), error.code())
            await asyncio.sleep(ERROR_BACKOFF_S)  # as a terminal would, rather than spin
            continue
        tally.add_answer(sent_s, time.perf_counter(), answer.result)


async def drive_open_loop(pays, requests: dict, rate_per_s: float, window: Window, tally: Tally, call_timeout_s: float):
    """Open loop: arrival k is due at start + k / rate; it goes to terminal
    k mod N with that terminal's next serial, whether or not the terminal's
    last sale was answered. Latency counts from the due time."""
    terminals = list(requests)
    interval_s = 1.0 / rate_per_s
    in_flight = set()

    async def one(pay, request, due_s):
        try:
            answer = await asyncio.wait_for(pay(request), call_timeout_s)
        except (grpc.aio.AioRpcError, OperationError) as error:
            tally.add_error(time.perf_counter(), error.code())
            return
        except asyncio.TimeoutError:
            tally.add_error(time.perf_counter(), grpc.StatusCode.DEADLINE_EXCEEDED)
            return
        tally.add_answer(due_s, time.perf_counter(), answer.result)

    loop = asyncio.get_running_loop()
    arrival = 0
    while True:
        now_s = time.perf_counter()
        if now_s >= window.end_s:
            break
        while (due_s := window.start_s + arrival * interval_s) <= now_s and due_s < window.end_s:
            client = terminals[arrival % len(terminals)]
            request = payment_pb2.PayRequest()
            request.CopyFrom(requests[client])
            request.terminal.serial += arrival // len(terminals) + 1
            task = loop.create_task(one(pays[client % len(pays)], request, due_s))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            arrival += 1
        await asyncio.sleep(min(ARRIVAL_TICK_S, max(0.0, due_s - time.perf_counter())))
    if in_flight:
        await asyncio.wait(in_flight, timeout=call_timeout_s + 1.0)


# ----------------------------------------------------------------------------
# Report


def summarize(measured: Measured, duration_s: float, server_exit_code: int | None) -> TargetReport:
    samples = measured.samples
    latency_ms = numpy.concatenate([numpy.asarray(s.latency_s, dtype=numpy.float64) for s in samples]) * 1000.0
    done_second = numpy.concatenate([numpy.asarray(s.done_s, dtype=numpy.float64) for s in samples]).astype(numpy.int64)
    seconds = math.ceil(duration_s)
    server_cpu_ms = None if measured.server_cpu_s is None else measured.server_cpu_s * 1000.0
    error_codes = collections.Counter()
    for s in samples:
        error_codes.update(s.error_codes)
    return TargetReport(
        requests=int(latency_ms.size),
        throughput_per_s=latency_ms.size / duration_s,
        latency_ms=latency_summary(latency_ms),
        errors=sum(s.errors for s in samples),
        declines=sum(s.declines for s in samples),
        errors_unmeasured=sum(s.errors_unmeasured for s in samples),
        error_codes=dict(error_codes),
        completions_by_second=numpy.bincount(done_second, minlength=seconds)[:seconds].tolist(),
        server_cpu_s=measured.server_cpu_s,
        server_cpu_ms_per_request=ratio(server_cpu_ms, latency_ms.size),
        server_exit_code=server_exit_code,
        server_written_bytes=measured.server_written_bytes,
        server_written_bytes_per_request=ratio(measured.server_written_bytes, latency_ms.size),
    )


def latency_summary(latency_ms: numpy.ndarray) -> LatencyMs:
    if latency_ms.size == 0:
        return LatencyMs(avg=None, p50=None, p95=None, p99=None, max=None)
    p50, p95, p99 = numpy.percentile(latency_ms, (50, 95, 99)).tolist()
    return LatencyMs(avg=float(latency_ms.mean()), p50=p50, p95=p95, p99=p99, max=float(latency_ms.max()))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratios_of(pay: TargetReport, echo: TargetReport | None) -> Ratios:
    if echo is None:
        return Ratios(throughput=None, latency_p99=None, server_cpu_per_request=None)
    return Ratios(
        throughput=ratio(pay.throughput_per_s, echo.throughput_per_s),
        latency_p99=ratio(pay.latency_ms.p99, echo.latency_ms.p99),
        server_cpu_per_request=ratio(pay.server_cpu_ms_per_request, echo.server_cpu_ms_per_request),
    )


def auth_ratios_of(pay: TargetReport, pay_auth: TargetReport, by_round: list) -> AuthRatios:
    return AuthRatios(
        throughput=ratio(pay_auth.throughput_per_s, pay.throughput_per_s),
        latency_p99=ratio(pay_auth.latency_ms.p99, pay.latency_ms.p99),
        server_cpu_per_request=ratio(pay_auth.server_cpu_ms_per_request, pay.server_cpu_ms_per_request),
        throughput_by_round=[value for value in by_round if value is not None],
    )


def succeeded(report: TargetReport | None) -> bool:
    if report is None:
        return True
    return report.errors == 0 and report.errors_unmeasured == 0 and report.server_exit_code == 0


def cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(report: Report):
    parameters = report.parameters
    load = "closed loop" if parameters.rate_per_s is None else f"open loop at {parameters.rate_per_s:g}/s"
    print(
        f"e2e Pay, {parameters.mode}, {load}: {parameters.concurrency} clients in {parameters.client_processes} processes, "
        f"{parameters.duration_s:g} s measured after {parameters.warmup_s:g} s warm-up, "
        f"kernel {report.kernel or 'unknown'}, {report.cpu_count} CPUs"
    )
    print(
        f"{'':9}{'requests':>10}{'req/s':>10}{'avg ms':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}{'declines':>10}{'srv cpu ms/req':>16}{'srv KB written/req':>20}"
    )
    if report.data_transactions is not None:
        print(f"data directory: {report.data_transactions:,} transactions when the run began")
    rows = (("pay", report.pay), ("pay+auth", report.pay_auth), ("pay+promo", report.pay_promotions),
            ("pay-empty", report.pay_empty), ("pay-repl", report.pay_replicated), ("pay+beside", report.pay_beside),
            ("echo", report.echo))
    for name, target in rows:
        if target is None:
            continue
        latency = target.latency_ms
        print(
            f"{name:9}{target.requests:>10}{target.throughput_per_s:>10.0f}{cell(latency.avg, 2):>9}{cell(latency.p50, 2):>9}"
            f"{cell(latency.p95, 2):>9}{cell(latency.p99, 2):>9}{cell(latency.max, 2):>9}"
            f"{target.errors:>8}{target.declines:>10}{cell(target.server_cpu_ms_per_request, 3):>16}"
            f"{cell(None if target.server_written_bytes_per_request is None else target.server_written_bytes_per_request / 1000, 2):>20}"
        )
        if target.errors_unmeasured or target.error_codes:
            print(f"{'':9}errors outside the window: {target.errors_unmeasured}; by code: {target.error_codes}")
    algorithm = report.parameters.terminal_auth_algorithm
    print_variant_ratios("auth/pay", "auth_ratio" + ("" if algorithm == "aes" else f" ({algorithm})"), report.auth_ratios,
                         AUTH_RATIO_TARGET)
    print_variant_ratios("promo/pay", "promotions_ratio", report.promotions_ratios, PROMOTIONS_RATIO_TARGET)
    print_variant_ratios("pay/empty", "data_ratio", report.data_ratios, DATA_RATIO_TARGET)
    print_variant_ratios("repl/pay", "replicated_ratio", report.replicated_ratios, REPLICATED_RATIO_TARGET)
    if report.replicated is not None:
        extra = report.replicated
        print(f"{'':9}replicated: {extra.followers} follower(s), follower CPU "
              f"{cell(extra.follower_cpu_ms_per_transaction, 3)} ms per transaction, NATS servers' CPU "
              f"{cell(extra.nats_cpu_ms_per_transaction, 3)} ms per transaction, log "
              f"{cell(extra.log_bytes_per_transaction, 0)} bytes per transaction, {extra.log_entries} log entries for "
              f"{extra.transactions} transactions; append to quorum ack {cell(extra.append_ms_avg, 2)} ms on average, "
              f"{cell(extra.entry_bytes_avg, 0)} bytes an entry")
    print_variant_ratios("beside", "beside_throughput_ratio", report.beside_ratios, None)
    if report.beside_p99_ratio is not None:
        limit = BESIDE_LOADS[report.parameters.beside][1]
        verdict = "meets" if report.beside_p99_ratio <= limit else "misses"
        print(f"{'':9}beside_p99_ratio ({report.parameters.beside}) {report.beside_p99_ratio:.2f} "
              f"({verdict} the target <= {limit})")
    if report.echo is None:
        return
    print(f"{'pay/echo':9}{'':10}{cell(report.ratios.throughput, 3):>10}{'':27}{cell(report.ratios.latency_p99, 2):>9}"
          f"{'':35}{cell(report.ratios.server_cpu_per_request, 2):>16}")


def print_variant_ratios(label: str, name: str, ratios: AuthRatios | None, target: float | None):
    """The ratio line of a --terminal-auth or --promotions run, with its verdict (none without a target)."""
    if ratios is None:
        return
    verdict = "" if ratios.throughput is None or target is None else (
        f"   {name} {ratios.throughput:.3f} ({'meets' if ratios.throughput >= target else 'misses'} the target >= {target})")
    print(f"{label:9}{'':10}{cell(ratios.throughput, 3):>10}{'':27}{cell(ratios.latency_p99, 2):>9}"
          f"{'':35}{cell(ratios.server_cpu_per_request, 2):>16}{verdict}")
    if len(ratios.throughput_by_round) > 1:
        print(f"{'':9}{name} by round: {' '.join(f'{value:.3f}' for value in ratios.throughput_by_round)}")


def write_json(report: Report, path: str):
    with open(path, "wb") as json_file:
        json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2))
        json_file.write(b"\n")


# ----------------------------------------------------------------------------
# Entry point


def run(parameters: Parameters, work_dir: str) -> tuple[Report, Measured]:
    data_dir = parameters.data_dir or os.path.join(work_dir, "data")
    alternating = (parameters.terminal_auth or parameters.promotions or parameters.compare_empty
                   or parameters.compare_replicated or parameters.beside)
    # The log the kernel's name is read from: the first plain Pay run's.
    pay_log_path = os.path.join(work_dir, alternating_log_name("pay-server", 1, 0) if alternating else "pay-server.log")
    auth = (register_terminals(data_dir, work_dir, parameters.concurrency, parameters.terminal_auth_algorithm)
            if parameters.terminal_auth else None)
    pay_auth = pay_promotions = pay_empty = pay_replicated = replicated = pay_beside = None
    by_round = []
    # Every run adds to a --data directory: say what this one began with.
    data_transactions = transactions_in_directory(parameters.data_dir) if parameters.data_dir else None
    if parameters.compare_empty:
        (pay_empty, _), (pay, measured), by_round = run_on_data_and_empty(parameters, work_dir)
    elif auth is not None:
        (pay, measured), (pay_auth, _), by_round = run_with_and_without_auth(parameters, data_dir, work_dir, auth)
    elif parameters.promotions:
        (pay, measured), (pay_promotions, _), by_round = run_with_and_without_promotions(parameters, data_dir, work_dir)
    elif parameters.compare_replicated:
        (pay, measured), (pay_replicated, _), by_round, replicated = run_with_and_without_replication(
            parameters, data_dir, work_dir)
    elif parameters.beside:
        (pay, measured), (pay_beside, _), by_round = run_with_and_without_beside(parameters, data_dir, work_dir)
    else:
        pay, measured = run_target("pay", parameters, data_dir, pay_log_path)
    echo = None
    if not parameters.skip_echo:
        echo, _ = run_target("echo", parameters, data_dir, os.path.join(work_dir, "echo-server.log"))
    report = Report(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        parameters=parameters,
        pay=pay,
        echo=echo,
        ratios=ratios_of(pay, echo),
        cpu_count=os.cpu_count() or 0,
        grpc_version=grpc.__version__,
        kernel=kernel_name(pay_log_path),
    )
    if pay_auth is not None:
        report.pay_auth = pay_auth
        report.auth_ratios = auth_ratios_of(pay, pay_auth, by_round)
        report.auth_ratio = report.auth_ratios.throughput
    if pay_promotions is not None:
        report.pay_promotions = pay_promotions
        report.promotions_ratios = auth_ratios_of(pay, pay_promotions, by_round)
        report.promotions_ratio = report.promotions_ratios.throughput
    if pay_empty is not None:
        report.pay_empty = pay_empty
        report.data_ratios = auth_ratios_of(pay_empty, pay, by_round)
        report.data_ratio = report.data_ratios.throughput
    if pay_replicated is not None:
        report.pay_replicated = pay_replicated
        report.replicated_ratios = auth_ratios_of(pay, pay_replicated, by_round)
        report.replicated_ratio = report.replicated_ratios.throughput
        report.replicated = replicated
    if pay_beside is not None:
        report.pay_beside = pay_beside
        report.beside_ratios = auth_ratios_of(pay, pay_beside, by_round)
        report.beside_p99_ratio = report.beside_ratios.latency_p99
    report.data_transactions = data_transactions
    return report, measured


def run_with_and_without_auth(parameters: Parameters, data_dir: str, work_dir: str, auth: TerminalAuth) -> tuple:
    """(plain Pay, Pay with terminal auth): the server of the variant runs
    with --terminal-auth and must say so in its log."""
    def run_secured(half: Parameters, log_path: str):
        part = run_target("pay", half, data_dir, log_path, auth)
        if not log_says(log_path, AUTH_LOG_LINE):
            raise BenchFailure(f"the --terminal-auth server never said {AUTH_LOG_LINE!r}: no interceptor was measured")
        return part

    return run_alternating(parameters, data_dir, work_dir, "pay-auth-server", run_secured)


def run_with_and_without_beside(parameters: Parameters, data_dir: str, work_dir: str) -> tuple:
    """(plain Pay, Pay with the --beside load beside it)."""
    load_class = BESIDE_LOADS[parameters.beside][0]

    def run_beside(half: Parameters, log_path: str):
        prepared = load_class.prepare(data_dir)  # before the server opens the directory

        def beside(address: str):
            return load_class(address, half.beside_clients, half.beside_rate_per_s, **prepared)

        return run_target("pay", half, data_dir, log_path, beside=beside)

    return run_alternating(parameters, data_dir, work_dir, "pay-beside-server", run_beside)


def run_with_and_without_promotions(parameters: Parameters, data_dir: str, work_dir: str) -> tuple:
    """(plain Pay, Pay with promotions active): the promotions are switched
    on in the data directory before each variant run and off after it."""
    def run_promoted(half: Parameters, log_path: str):
        promotions_load.switch_on(data_dir)
        try:
            return run_target("pay", half, data_dir, log_path)
        finally:
            promotions_load.switch_off(data_dir)

    return run_alternating(parameters, data_dir, work_dir, "pay-promotions-server", run_promoted)


def run_with_and_without_replication(parameters: Parameters, data_dir: str, work_dir: str) -> tuple:
    """(plain Pay, Pay on a replicated leader, by round, the replicated
    side's extras): one NATS cluster for the whole run (bench/replicated.py)."""
    from bench import e2e as this_module
    from bench.replicated import ReplicatedSide

    side = ReplicatedSide(work_dir, parameters.followers)
    try:
        plain, variant, by_round = run_alternating(parameters, data_dir, work_dir, "pay-replicated-server",
                                                   lambda half, log_path: side.run(this_module, half, log_path))
    finally:
        side.close()
    return plain, variant, by_round, side.summary()


def run_on_data_and_empty(parameters: Parameters, work_dir: str) -> tuple:
    """(Pay on a new empty directory, Pay on --data): the empty side is
    the plain run, the same directory for all its runs."""
    def run_on_data(half: Parameters, log_path: str):
        return run_target("pay", half, parameters.data_dir, log_path)

    empty_dir = os.path.join(work_dir, "empty")
    return run_alternating(parameters, empty_dir, work_dir, "pay-data-server", run_on_data)


def run_alternating(parameters: Parameters, data_dir: str, work_dir: str, variant_name: str, run_variant) -> tuple:
    """(plain Pay, the variant, each round's throughput ratio), run as
    plain, variant, variant, plain (--rounds times), each run for
    duration / (2 * rounds), each side's runs merged: a load that drifts
    during the run weighs on both sides alike."""
    part = msgspec.structs.replace(parameters, duration_s=parameters.duration_s / (2 * parameters.rounds))
    parts = {False: [], True: []}
    by_round = []
    for round_number in range(1, parameters.rounds + 1):
        for index, variant in enumerate((False, True, True, False)):
            name = variant_name if variant else "pay-server"
            log_path = os.path.join(work_dir, alternating_log_name(name, round_number, index))
            parts[variant].append(run_variant(part, log_path) if variant else run_target("pay", part, data_dir, log_path))
        by_round.append(ratio(sum(report.requests for report, _ in parts[True][-2:]),
                              sum(report.requests for report, _ in parts[False][-2:])))
    return merged(parts[False], part.duration_s), merged(parts[True], part.duration_s), by_round


def alternating_log_name(server_name: str, round_number: int, index: int) -> str:
    """The log of run `index` (0 .. 3) of round `round_number`: each side
    runs twice a round, as its first (-1) and second (-2) run."""
    return f"{server_name}-{round_number}-{index // 2 + 1}.log"


def merged(parts: list[tuple[TargetReport, Measured]], part_duration_s: float) -> tuple[TargetReport, Measured]:
    """Several runs of one target as one: each run's seconds follow the
    last's, CPU adds up, the first failing exit code stands."""
    samples = []
    for index, (_, measured) in enumerate(parts):
        shift_s = index * part_duration_s
        samples.extend(msgspec.structs.replace(one, done_s=[value + shift_s for value in one.done_s],
                                               error_s=[value + shift_s for value in one.error_s])
                       for one in measured.samples)
    cpu_s = [measured.server_cpu_s for _, measured in parts]
    written = [measured.server_written_bytes for _, measured in parts]
    measured = Measured(samples=samples, server_cpu_s=None if None in cpu_s else sum(cpu_s),
                        server_written_bytes=None if None in written else sum(written))
    exit_code = next((report.server_exit_code for report, _ in parts if report.server_exit_code != 0), 0)
    return summarize(measured, part_duration_s * len(parts), exit_code), measured


def draw(report: Report, measured: Measured, path: str):
    parameters = report.parameters
    load = "closed loop" if parameters.rate_per_s is None else f"open loop {parameters.rate_per_s:g}/s"
    latency = report.pay.latency_ms
    title = (f"Pay, {parameters.mode}, {load}, {parameters.concurrency} terminals: "
             f"{report.pay.throughput_per_s:.0f}/s, avg {cell(latency.avg, 1)} ms, p99 {cell(latency.p99, 1)} ms, "
             f"{report.pay.errors} errors")
    if report.data_transactions is not None:
        title += f"\non a directory of {report.data_transactions:,} transactions"
    if report.data_ratio is not None:
        title += f", {report.data_ratio:.3f} of the throughput on an empty one (data_ratio)"
    done_s = [value for samples in measured.samples for value in samples.done_s]
    latency_ms = [value * 1000.0 for samples in measured.samples for value in samples.latency_s]
    error_s = [value for samples in measured.samples for value in samples.error_s]
    charts.load_chart(path, title, done_s, latency_ms, parameters.duration_s, error_s)


def main(argv) -> int:
    args = parse_args(argv)
    parameters = parameters_of(args)
    with tempfile.TemporaryDirectory(prefix="tally-e2e-") as work_dir:
        try:
            report, measured = run(parameters, work_dir)
        except BenchFailure as failure:
            print(f"python -m bench e2e: {failure}", file=sys.stderr)
            return 1
    print_table(report)
    if args.json:
        write_json(report, args.json)
    if args.chart:
        draw(report, measured, args.chart)
    targets = (report.pay, report.pay_auth, report.pay_promotions, report.pay_empty, report.pay_replicated, report.echo)
    return 0 if all(succeeded(target) for target in targets) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
