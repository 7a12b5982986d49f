"""`python -m bench soak --concurrency 500 --duration S --data DIR`: a long mixed run that checks everything.

Owns: the soak. It starts the real server on DIR (a seeded 10-million-
transaction directory, or a new one), gives each of N clients (terminals) a
company card of its own, and runs a mixed workload closed loop: card
payments, mixed payments (personal account, points, then an external
channel), pre-authorization and completion or release, reversals (of a sale
just made, and of a request that never arrived, whose late original must
then be refused), voids, partial refunds (and refunds above what is left,
which must be refused), top-ups of money and points, and retries (which must
return the first answer byte for byte). Every client keeps its own model of
its card's balances and sales and checks every answer against it: the
result code, where the money came from (fleet first, then personal, then
points, then the channel; refunds back in the same order), and the balances
the answer reports. At the end each card is read back and compared with the
model, the server is stopped (it must exit 0), and `python -m core.audit`
checks the books.
Reports, per interval: answers, latency p50/p99/max, errors, violations and
the server's heap (RssAnon); overall: heap growth after the warm-up (the median
heap of the last interval over that of the first after the warm-up) and latency
drift (p99 of the last interval over the first after warm-up). Exit 1 on any
error, violation, audit problem, unclean server exit, or RSS growth above
--rss-growth-max-percent.
Used by: operators (`make soak` runs a long one), tests/test_ops_bench.py.
May call: the server through gRPC only (subprocess), core.audit (subprocess),
core.store (read-only, before the server starts: the directory's size).

The model can be exact because each client owns its card, and points earned
by a sale that may still be refunded or undone are never spent (so no
refund has a points shortfall to settle from the money).
"""

import argparse
import asyncio
import collections
import datetime
import json
import math
import multiprocessing
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import msgspec
import numpy

from bench import charts
from bench.e2e import BenchFailure, free_port, log_tail, receive, start_server, stop_server, wait_until_serving
from bench.gateway_client import GatewayStream, OperationError
from core.store import transactions_in_directory
from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, gateway_pb2, payment_pb2, payment_pb2_grpc

R = common_pb2
CARD_ID_BASE = 6_280_000_000_000_000
TERMINAL_ID_BASE = 2_000_000
STATIONS = 50
CONCURRENCY_MAX = 5000
CLIENTS_PER_CHANNEL = 50
CLIENTS_PER_STREAM = 250
CALL_TIMEOUT_S = 30.0
VIOLATIONS_KEPT = 100
# The server's heap is sampled this often (or once an interval if shorter);
# the growth compares the median of the first interval after the warm-up
# with that of the last.
RSS_SAMPLE_S = 5.0
OPENING_FLEET_MINOR = 300_000
OPENING_PERSONAL_MINOR = 100_000
OPENING_POINTS = 20_000
# What each step does, and how often (weights).
STEPS = (
    ("pay", 28), ("mixed_pay", 14), ("preauth_complete", 10), ("preauth_release", 3), ("reverse_sale", 8),
    ("reverse_lost", 2), ("void", 8), ("refund", 10), ("refund_too_much", 2), ("topup", 8), ("topup_points", 2),
    ("retry", 5),
)
RPC_OF_FIELD = {
    "pay": "Pay", "pre_authorize": "PreAuthorize", "complete": "Complete", "release": "Release",
    "reverse": "Reverse", "void": "Void", "refund": "Refund", "top_up": "TopUp",
}


class Parameters(msgspec.Struct, frozen=True):
    mode: str
    concurrency: int
    duration_s: float
    warmup_s: float
    interval_s: float
    client_processes: int
    data_dir: str | None
    server_args: list[str]
    rss_growth_max_percent: float
    seed: int


class ClientPlan(msgspec.Struct, frozen=True):
    address: str
    mode: str
    client_index_first: int
    client_count: int
    run_id: int
    serial_first: int
    warmup_s: float
    duration_s: float
    seed: int


class ClientResults(msgspec.Struct):
    done_s: list[float]
    latency_s: list[float]
    error_s: list[float]
    violation_s: list[float]
    errors: dict[str, int]
    violations: list[str]
    violation_count: int
    steps: dict[str, int]


class Interval(msgspec.Struct):
    start_s: float
    answers: int
    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: int
    violations: int
    server_rss_bytes: int | None


class Report(msgspec.Struct):
    date: str
    parameters: Parameters
    answers: int
    per_s: float
    latency_ms_avg: float | None
    latency_ms_p99: float | None
    errors: int
    error_codes: dict[str, int]
    violations: int
    violation_examples: list[str]
    steps: dict[str, int]
    intervals: list[Interval]
    rss_after_warmup_bytes: int | None
    rss_end_bytes: int | None
    rss_growth_percent: float | None
    # Transactions in --data when the run began (None: a new directory).
    data_transactions: int | None
    # VmRSS at the end, LMDB pages included (for information: it follows the data).
    rss_total_end_bytes: int | None
    latency_drift_p99: float | None
    server_exit_code: int | None
    audit_ok: bool
    audit: dict
    failures: list[str]


# ----------------------------------------------------------------------------
# Command line


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench soak",
        description="Soak: a mixed workload (pay, mixed pay with points and a channel, pre-authorize and "
        "complete or release, reverse, void, refund, top-ups, retries) at N concurrent terminals for S "
        "seconds against a real server, every answer checked against the client's own model of its card; "
        "then every card compared, the server stopped, and core.audit run. Reports errors, invariant "
        "violations, RSS growth and latency drift per interval. Exit 1 on any error or violation.",
    )
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary",
                        help="unary RPCs, or the same requests on GatewayService streams (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=500, metavar="N",
                        help=f"concurrent terminals, each with its own card; 1 .. {CONCURRENCY_MAX} (default %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, metavar="S", help="seconds of load (default %(default)s)")
    parser.add_argument("--warmup", type=float, metavar="S",
                        help="seconds after which RSS and latency are the baseline (default: a fifth of the duration, at most 60)")
    parser.add_argument("--interval", type=float, metavar="S",
                        help="reporting interval (default: a tenth of the duration, between 1 and 60)")
    parser.add_argument("--client-processes", type=int, default=2, metavar="P", help="client processes (default %(default)s)")
    parser.add_argument("--data", metavar="DIR",
                        help="server data directory, used as it is if it exists (e.g. from `bench seed`) and kept; "
                        "default: a new temporary one")
    parser.add_argument("--server-args", default="--channel-latency-ms 1 10", metavar='"FLAGS"',
                        help='extra flags for `python -m server`, one shell-quoted string, written with "=": '
                        '--server-args="--workers 2" (default "%(default)s")')
    parser.add_argument("--rss-growth-max-percent", type=float, default=10.0, metavar="PCT",
                        help="fail if the server's anonymous resident memory (RssAnon: its heap, not the LMDB "
                        "pages mapped from the file) grows more than this after the warm-up (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the workload (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--chart", metavar="FILE.png", help="draw latency and throughput over time, and the latency histogram")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= CONCURRENCY_MAX:
        parser.error(f"--concurrency must be within 1 .. {CONCURRENCY_MAX}, got {args.concurrency}")
    if args.duration <= 0:
        parser.error(f"--duration must be positive, got {args.duration:g}")
    if not 1 <= args.client_processes <= 64:
        parser.error(f"--client-processes must be within 1 .. 64, got {args.client_processes}")
    return args


def parameters_of(args) -> Parameters:
    warmup_s = args.warmup if args.warmup is not None else min(60.0, args.duration / 5)
    interval_s = args.interval if args.interval is not None else min(60.0, max(1.0, args.duration / 10))
    return Parameters(
        mode=args.mode, concurrency=args.concurrency, duration_s=args.duration, warmup_s=warmup_s, interval_s=interval_s,
        client_processes=min(args.client_processes, args.concurrency), data_dir=args.data,
        server_args=shlex.split(args.server_args), rss_growth_max_percent=args.rss_growth_max_percent, seed=args.seed,
    )


# ----------------------------------------------------------------------------
# The model of one client's card


class Sale(msgspec.Struct):
    txn_id: int
    serial: int
    business_day: int
    amount: int
    legs: list[int]  # fleet, personal, points cash, channel: what was paid
    refunded: list[int]  # the same legs, given back so far
    points_used: int
    earned: int
    # Earned points taken back so far by refunds and undos.
    clawed: int = 0
    undone: bool = False

    def refundable(self) -> int:
        return 0 if self.undone else sum(self.legs) - sum(self.refunded)


class Card(msgspec.Struct):
    fleet: int = 0
    personal: int = 0
    points: int = 0
    # Points earned by sales that may still be refunded or undone: never
    # spent, so that a return never has a shortfall.
    locked_points: int = 0


class Violation(Exception):
    pass


def expect(condition: bool, text: str):
    if not condition:
        raise Violation(text)


class Client:
    """One terminal with one card, and the model it checks answers against."""

    def __init__(self, index: int, plan: ClientPlan, call, rng: random.Random):
        self.index = index
        self.card_id = CARD_ID_BASE + plan.run_id * 10_000 + index
        self.terminal_id = TERMINAL_ID_BASE + index
        self.station_id = 1 + index % STATIONS
        self.serial = plan.serial_first
        self.call = call
        self.random = rng
        self.card = Card()
        self.sales: dict[int, Sale] = {}
        self.history: list = []  # (field, request, answer) for retries
        self.results: ClientResults | None = None
        self.start_s = self.end_s = 0.0

    def measure(self, results: "ClientResults", start_s: float, end_s: float):
        """From now on, each answer's latency goes into results."""
        self.results, self.start_s, self.end_s = results, start_s, end_s

    def context(self, serial: int | None = None) -> common_pb2.TerminalContext:
        if serial is None:
            self.serial += 1
            serial = self.serial
        return common_pb2.TerminalContext(station_id=self.station_id, terminal_id=self.terminal_id, serial=serial, operator_id=1)

    async def send(self, field: str, request, remember: bool = True):
        sent_s = time.perf_counter()
        answer = await self.call(field, request)
        if self.results is not None:
            done_s = time.perf_counter()
            self.results.done_s.append(done_s - self.start_s)
            self.results.latency_s.append(done_s - sent_s)
        if remember and len(self.history) < 200:
            self.history.append((field, request, answer))
        elif remember:
            self.history[self.random.randrange(200)] = (field, request, answer)
        return answer

    def check_balances(self, answer, what: str, declined_sale: bool = False):
        """The balances an approved answer reports must be the model's; so
        must a declined sale's (it answers the card's balances, nothing
        moved). Other declines report none: not compared."""
        if answer.result != R.APPROVED and not declined_sale:
            return
        got = (answer.balances.fleet_minor, answer.balances.personal_minor, answer.balances.points)
        want = (self.card.fleet, self.card.personal, self.card.points)
        if got != want:
            self.card.fleet, self.card.personal, self.card.points = got  # resynchronise: one violation, not a cascade
            raise Violation(f"{what}: balances (fleet, personal, points) {got}, model {want}")

    # ------------------------------------------------------------ set-up

    async def open(self):
        cards = self.call.cards
        opened = await cards.OpenCard(card_pb2.OpenCardRequest(card_id=self.card_id, card_type=card_pb2.COMPANY))
        expect(opened.result == R.APPROVED, f"OpenCard {self.card_id}: {R.ResultCode.Name(opened.result)}")
        for account, amount in ((R.FLEET, OPENING_FLEET_MINOR), (R.PERSONAL, OPENING_PERSONAL_MINOR), (R.POINTS, OPENING_POINTS)):
            answer = await cards.TopUp(card_pb2.TopUpRequest(terminal=self.context(), card_id=self.card_id, account=account, amount=amount))
            expect(answer.result == R.APPROVED, f"TopUp: {R.ResultCode.Name(answer.result)}")
        self.card = Card(fleet=OPENING_FLEET_MINOR, personal=OPENING_PERSONAL_MINOR, points=OPENING_POINTS)

    # ------------------------------------------------------------ steps

    def record_sale(self, answer, serial: int, points_used: int):
        sources = answer.sources
        legs = [sources.fleet_minor, sources.personal_minor, sources.points_cash_minor, sources.channel_minor]
        self.sales[answer.txn_id] = Sale(answer.txn_id, serial, answer.business_day, answer.amount_minor, legs, [0, 0, 0, 0],
                                         points_used, answer.points_earned)
        self.card.locked_points += answer.points_earned
        if len(self.sales) > 50:  # forget the oldest: its points become spendable
            oldest = next(iter(self.sales))
            self.forget(self.sales.pop(oldest))

    def forget(self, sale: Sale):
        self.card.locked_points -= sale.earned - sale.clawed

    async def step_pay(self, mixed: bool = False):
        amount = self.random.randint(100, 20_000)
        plan = payment_pb2.PaymentPlan(card_id=self.card_id, use_fleet=not mixed, use_personal=True)
        spendable = self.card.points - self.card.locked_points
        if mixed:
            plan.channel = self.random.choice((R.BANK_CARD, R.WECHAT_PAY, R.ALIPAY))
            if spendable > 0:
                plan.use_points = True
                plan.points_max = spendable
        context = self.context()
        answer = await self.send("pay", payment_pb2.PayRequest(terminal=context, amount_minor=amount, plan=plan))
        self.check_pay(answer, amount, plan, spendable, context.serial)

    def check_pay(self, answer, amount: int, plan, spendable: int, serial: int):
        what = f"pay {amount} (fleet {plan.use_fleet}, points {plan.use_points}, channel {plan.channel})"
        card = self.card
        fleet = min(card.fleet, amount) if plan.use_fleet else 0
        personal = min(card.personal, amount - fleet)
        if not plan.channel and fleet + personal < amount:
            expect(answer.result == R.INSUFFICIENT_FUNDS, f"{what}: {R.ResultCode.Name(answer.result)}, expected INSUFFICIENT_FUNDS")
            self.check_balances(answer, what, declined_sale=True)
            return
        if answer.result in (R.CHANNEL_DECLINED, R.CHANNEL_UNAVAILABLE) and plan.channel:
            self.check_balances(answer, what, declined_sale=True)  # nothing moved
            return
        expect(answer.result == R.APPROVED, f"{what}: {R.ResultCode.Name(answer.result)}, expected APPROVED")
        sources = answer.sources
        expect((sources.fleet_minor, sources.personal_minor) == (fleet, personal),
               f"{what}: fleet/personal {sources.fleet_minor}/{sources.personal_minor}, expected {fleet}/{personal}")
        rest = amount - fleet - personal
        expect(0 <= sources.points_cash_minor <= rest and 0 <= sources.points_used <= max(0, spendable),
               f"{what}: points {sources.points_used} paying {sources.points_cash_minor} of {rest} (spendable {spendable})")
        expect(sources.channel_minor == rest - sources.points_cash_minor,
               f"{what}: channel {sources.channel_minor}, expected {rest - sources.points_cash_minor}")
        card.fleet -= fleet
        card.personal -= personal
        card.points += answer.points_earned - sources.points_used
        self.check_balances(answer, what)
        self.record_sale(answer, serial, sources.points_used)

    async def step_preauth(self, complete: bool):
        available = self.card.fleet + self.card.personal
        amount = self.random.randint(100, 30_000)
        hold = await self.send("pre_authorize", payment_pb2.PreAuthorizeRequest(terminal=self.context(), card_id=self.card_id, amount_minor=amount))
        what = f"pre-authorize {amount}"
        if available < amount:
            expect(hold.result == R.INSUFFICIENT_FUNDS, f"{what}: {R.ResultCode.Name(hold.result)}, expected INSUFFICIENT_FUNDS")
            return
        expect(hold.result == R.APPROVED, f"{what}: {R.ResultCode.Name(hold.result)}")
        held_fleet = min(self.card.fleet, amount)
        expect((hold.sources.fleet_minor, hold.sources.personal_minor) == (held_fleet, amount - held_fleet),
               f"{what}: held {hold.sources.fleet_minor}/{hold.sources.personal_minor}, expected {held_fleet}/{amount - held_fleet}")
        self.check_balances(hold, what)  # a hold does not change the balance
        if not complete:
            released = await self.send("release", payment_pb2.ReleaseRequest(terminal=self.context(), txn_id=hold.txn_id))
            expect(released.result == R.APPROVED, f"release: {R.ResultCode.Name(released.result)}")
            self.check_balances(released, "release")
            return
        final = self.random.randint(0, amount)
        context = self.context()
        done = await self.send("complete", payment_pb2.CompleteRequest(terminal=context, txn_id=hold.txn_id, amount_minor=final))
        what = f"complete {final} of {amount}"
        expect(done.result == R.APPROVED, f"{what}: {R.ResultCode.Name(done.result)}")
        taken_fleet, taken_personal = done.sources.fleet_minor, done.sources.personal_minor
        expect(taken_fleet + taken_personal == final and taken_fleet <= held_fleet and taken_personal <= amount - held_fleet,
               f"{what}: took {taken_fleet}/{taken_personal} of held {held_fleet}/{amount - held_fleet}")
        self.card.fleet -= taken_fleet
        self.card.personal -= taken_personal
        self.card.points += done.points_earned
        self.check_balances(done, what)
        if final:
            self.record_sale(done, context.serial, 0)

    def pick_sale(self, need_refundable: bool = True) -> Sale | None:
        candidates = [sale for sale in self.sales.values() if sale.refundable() > 0 or not need_refundable]
        return self.random.choice(candidates) if candidates else None

    def give_back(self, sale: Sale, answer, legs: list[int], what: str):
        self.card.fleet += legs[0]
        self.card.personal += legs[1]
        self.card.points += answer.sources.points_used - answer.points_clawed_back
        self.card.locked_points -= answer.points_clawed_back
        sale.clawed += answer.points_clawed_back
        self.check_balances(answer, what)

    async def step_undo(self, kind: str):
        sale = self.pick_sale()
        if sale is None or sale.refunded != [0, 0, 0, 0]:
            return await self.step_pay()
        if kind == "void":
            answer = await self.send("void", payment_pb2.VoidRequest(terminal=self.context(), txn_id=sale.txn_id))
        else:
            answer = await self.send("reverse", payment_pb2.ReverseRequest(terminal=self.context(), original_serial=sale.serial))
        what = f"{kind} of txn {sale.txn_id}"
        if kind == "void" and answer.result == R.VOID_NOT_SAME_DAY:
            expect(answer.business_day != sale.business_day, f"{what}: VOID_NOT_SAME_DAY on the sale's own day")
            return
        expect(answer.result == R.APPROVED, f"{what}: {R.ResultCode.Name(answer.result)}")
        expect(answer.amount_minor == sum(sale.legs), f"{what}: undid {answer.amount_minor}, paid {sum(sale.legs)}")
        expect(answer.points_clawed_back == sale.earned - sale.clawed,
               f"{what}: took back {answer.points_clawed_back} points of {sale.earned} earned")
        sale.undone = True
        self.give_back(sale, answer, sale.legs, what)

    async def step_reverse_lost(self):
        lost = self.context()  # a serial whose request "never arrived"
        reversal = await self.send("reverse", payment_pb2.ReverseRequest(terminal=self.context(), original_serial=lost.serial))
        expect(reversal.result == R.ORIGINAL_NOT_SEEN, f"reversal of lost serial: {R.ResultCode.Name(reversal.result)}")
        late = await self.send("pay", payment_pb2.PayRequest(
            terminal=lost, amount_minor=100, plan=payment_pb2.PaymentPlan(card_id=self.card_id, use_fleet=True)))
        expect(late.result == R.ALREADY_REVERSED, f"late original after its reversal: {R.ResultCode.Name(late.result)}")
        self.check_balances(late, "late original", declined_sale=True)

    async def step_refund(self, too_much: bool):
        sale = self.pick_sale()
        if sale is None:
            return await self.step_pay()
        left = sale.refundable()
        amount = left + self.random.randint(1, 1000) if too_much else self.random.randint(1, left)
        answer = await self.send("refund", payment_pb2.RefundRequest(terminal=self.context(), txn_id=sale.txn_id, amount_minor=amount))
        what = f"refund {amount} of txn {sale.txn_id} ({left} left)"
        if too_much:
            expect(answer.result == R.REFUND_EXCEEDS_PAID, f"{what}: {R.ResultCode.Name(answer.result)}, expected REFUND_EXCEEDS_PAID")
            self.check_balances(answer, what)
            return
        expect(answer.result == R.APPROVED, f"{what}: {R.ResultCode.Name(answer.result)}")
        legs, rest = [], amount
        for paid, refunded in zip(sale.legs, sale.refunded):
            part = min(rest, paid - refunded)
            legs.append(part)
            rest -= part
        sources = answer.sources
        got = [sources.fleet_minor, sources.personal_minor, sources.points_cash_minor, sources.channel_minor]
        expect(got == legs, f"{what}: back to fleet/personal/points/channel {got}, expected {legs} (payment order)")
        sale.refunded = [a + b for a, b in zip(sale.refunded, legs)]
        self.give_back(sale, answer, legs, what)

    async def step_topup(self, points: bool):
        amount = self.random.randint(1_000, 10_000) if points else self.random.randint(5_000, 50_000)
        account = R.POINTS if points else R.PERSONAL
        answer = await self.send("top_up", card_pb2.TopUpRequest(terminal=self.context(), card_id=self.card_id, account=account, amount=amount))
        expect(answer.result == R.APPROVED, f"top-up {amount}: {R.ResultCode.Name(answer.result)}")
        if points:
            self.card.points += amount
        else:
            self.card.personal += amount
        self.check_balances(answer, f"top-up {amount}")

    async def step_retry(self):
        if not self.history:
            return await self.step_pay()
        field, request, first = self.random.choice(self.history)
        again = await self.send(field, request, remember=False)
        what = f"retry of {field} serial {request.terminal.serial}"
        if first.result == R.ALREADY_REVERSED:
            # An original refused after its reversal: refused again, as of
            # now (the card's balances may have moved), never stored.
            expect((again.result, again.replayed) == (first.result, False), f"{what}: {R.ResultCode.Name(again.result)}")
            return
        # Any other retry gets the first answer, marked as the stored one.
        expect(again.replayed, f"{what}: not marked replayed")
        again.replayed = False
        expect(again == first, f"{what}: the answer differs from the first")

    async def step(self, name: str):
        if name in ("pay", "mixed_pay"):
            return await self.step_pay(mixed=name == "mixed_pay")
        if name.startswith("preauth"):
            return await self.step_preauth(complete=name == "preauth_complete")
        if name in ("reverse_sale", "void"):
            return await self.step_undo("void" if name == "void" else "reverse")
        if name == "reverse_lost":
            return await self.step_reverse_lost()
        if name.startswith("refund"):
            return await self.step_refund(too_much=name == "refund_too_much")
        if name.startswith("topup"):
            return await self.step_topup(points=name == "topup_points")
        return await self.step_retry()

    async def verify_card(self):
        answer = await self.call.cards.GetCard(card_pb2.GetCardRequest(card_id=self.card_id))
        got = (answer.card.balances.fleet_minor, answer.card.balances.personal_minor, answer.card.balances.points)
        want = (self.card.fleet, self.card.personal, self.card.points)
        expect(got == want, f"card {self.card_id} at the end: (fleet, personal, points) {got}, model {want}")
        expect(answer.card.held == common_pb2.Balances(), f"card {self.card_id} at the end: holds left {answer.card.held}")


# ----------------------------------------------------------------------------
# Client processes


class Caller:
    """`await call(field, request)`: the request through unary RPCs or a gateway stream."""

    def __init__(self, channel, stream: GatewayStream | None):
        self.payments = payment_pb2_grpc.PaymentServiceStub(channel)
        self.cards = card_pb2_grpc.CardServiceStub(channel)
        self.stream = stream

    async def __call__(self, field: str, request):
        if self.stream is not None:
            result = await self.stream.submit(gateway_pb2.GatewayOperation(**{field: request}))
            return result.payment
        stub = self.cards if field == "top_up" else self.payments
        return await getattr(stub, RPC_OF_FIELD[field])(request, timeout=CALL_TIMEOUT_S)


def client_process_main(plan: ClientPlan, pipe):
    import uvloop

    try:
        results = uvloop.run(run_clients(plan, pipe))
    except Exception as error:
        pipe.send(("failed", f"{type(error).__name__}: {error}"))
        return
    pipe.send(("results", results))


async def run_clients(plan: ClientPlan, pipe) -> ClientResults:
    per_channel = CLIENTS_PER_STREAM if plan.mode == "stream" else CLIENTS_PER_CHANNEL
    count = math.ceil(plan.client_count / per_channel)
    options = (("grpc.use_local_subchannel_pool", 1),)
    channels = [grpc.aio.insecure_channel(plan.address, options=options) for _ in range(count)]
    streams = []
    try:
        if plan.mode == "stream":
            streams = [await GatewayStream(channel).start() for channel in channels]
        callers = [Caller(channel, streams[i] if streams else None) for i, channel in enumerate(channels)]
        indexes = range(plan.client_index_first, plan.client_index_first + plan.client_count)
        clients = [Client(i, plan, callers[i % count], random.Random(plan.seed * 1_000_003 + i)) for i in indexes]
        await asyncio.gather(*(client.open() for client in clients))
        pipe.send(("ready", None))
        start_at_wall_s = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        start_s = time.perf_counter() + (start_at_wall_s - time.time())
        end_s = start_s + plan.duration_s
        results = ClientResults([], [], [], [], {}, [], 0, {})
        for client in clients:
            client.measure(results, start_s, end_s)
        errors, steps = collections.Counter(), collections.Counter()
        await asyncio.gather(*(drive(client, start_s, end_s, results, errors, steps) for client in clients))
        for client in clients:
            try:
                await client.verify_card()
            except Violation as violation:
                note_violation(results, str(violation), plan.duration_s)
        results.errors, results.steps = dict(errors), dict(steps)
        return results
    finally:
        await asyncio.gather(*(stream.close() for stream in streams))
        await asyncio.gather(*(channel.close() for channel in channels))


def note_violation(results: ClientResults, text: str, at_s: float):
    results.violation_count += 1
    results.violation_s.append(at_s)
    if len(results.violations) < VIOLATIONS_KEPT:
        results.violations.append(text)


async def drive(client: Client, start_s: float, end_s: float, results: ClientResults, errors, steps):
    names = [name for name, _ in STEPS]
    weights = [weight for _, weight in STEPS]
    await asyncio.sleep(max(0.0, start_s - time.perf_counter()))
    while time.perf_counter() < end_s:
        name = client.random.choices(names, weights)[0]
        steps[name] += 1
        try:
            await client.step(name)
        except Violation as violation:
            note_violation(results, f"client {client.index}: {violation}", time.perf_counter() - start_s)
            continue
        except (grpc.aio.AioRpcError, OperationError) as error:
            errors[error.code().name] += 1
            results.error_s.append(time.perf_counter() - start_s)
            # The model cannot know whether the request was applied: resync.
            answer = await client.call.cards.GetCard(card_pb2.GetCardRequest(card_id=client.card_id))
            balances = answer.card.balances
            client.card.fleet, client.card.personal, client.card.points = balances.fleet_minor, balances.personal_minor, balances.points


# ----------------------------------------------------------------------------
# The parent: server, clients, RSS, report


def rss_bytes(pid: int, field: str = "RssAnon") -> int | None:
    """Resident memory of a process and its children (the workers).

    RssAnon by default: the heap, where a leak would show. The LMDB map is
    file-backed: its pages count in VmRSS as they are touched, so VmRSS
    grows with the data (and the page cache), not with a leak."""
    from bench.e2e import child_pids

    try:
        with open(f"/proc/{pid}/status") as status_file:
            total = next(int(line.split()[1]) * 1024 for line in status_file if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    for child in child_pids(pid):
        total += rss_bytes(child, field) or 0
    return total


def run_load(address: str, parameters: Parameters, server_pid: int) -> tuple[list[ClientResults], list, list]:
    context = multiprocessing.get_context("spawn")
    run_id = int(time.time()) % 100_000
    serial_first = time.time_ns()
    workers = []
    first = 0
    for index in range(parameters.client_processes):
        count = parameters.concurrency // parameters.client_processes + (index < parameters.concurrency % parameters.client_processes)
        plan = ClientPlan(address=address, mode=parameters.mode, client_index_first=first, client_count=count, run_id=run_id,
                          serial_first=serial_first, warmup_s=parameters.warmup_s, duration_s=parameters.duration_s,
                          seed=parameters.seed)
        first += count
        parent_end, child_end = context.Pipe()
        process = context.Process(target=client_process_main, args=(plan, child_end), daemon=True)
        process.start()
        child_end.close()
        workers.append((process, parent_end))
    try:
        for _, pipe in workers:
            receive(pipe, "ready", 600.0)
        start_at_wall_s = time.time() + 0.3
        for _, pipe in workers:
            pipe.send(start_at_wall_s)
        rss, rss_total = [], []
        step_s = min(parameters.interval_s, RSS_SAMPLE_S)
        at_s = 0.0
        while at_s <= parameters.duration_s:
            time.sleep(max(0.0, start_at_wall_s + at_s - time.time()))
            rss.append((at_s, rss_bytes(server_pid)))
            rss_total.append((at_s, rss_bytes(server_pid, "VmRSS")))
            at_s += step_s
        return [receive(pipe, "results", CALL_TIMEOUT_S + 120.0) for _, pipe in workers], rss, rss_total
    finally:
        for process, pipe in workers:
            process.join(timeout=5.0)
            if process.is_alive():
                process.terminate()
                process.join()
            pipe.close()


def audit(data_dir: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "core.audit", data_dir, "--json"], capture_output=True, text=True)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"ok": False, "problems": [f"audit did not run: {result.stderr.strip()[-500:]}"]}


def intervals_of(parameters: Parameters, done_s, latency_ms, error_s, violation_s, rss) -> list[Interval]:
    intervals = []
    count = max(1, math.ceil(parameters.duration_s / parameters.interval_s))
    rss_at = dict(rss)
    for bucket in range(count):
        low, high = bucket * parameters.interval_s, min(parameters.duration_s, (bucket + 1) * parameters.interval_s)
        mask = (done_s >= low) & (done_s < high)
        chunk = latency_ms[mask]
        p50, p99 = numpy.percentile(chunk, (50, 99)).tolist() if chunk.size else (None, None)
        end_rss = rss_at.get(round(high / parameters.interval_s) * parameters.interval_s)
        if end_rss is None and rss:
            end_rss = min(rss, key=lambda item: abs(item[0] - high))[1]
        intervals.append(Interval(
            start_s=low, answers=int(chunk.size), per_s=chunk.size / max(1e-9, high - low), p50_ms=p50, p99_ms=p99,
            max_ms=float(chunk.max()) if chunk.size else None,
            errors=int(((error_s >= low) & (error_s < high)).sum()),
            violations=int(((violation_s >= low) & (violation_s < high)).sum()), server_rss_bytes=end_rss,
        ))
    return intervals


def heap_at_start_and_end(parameters: Parameters, rss) -> tuple[int | None, int | None]:
    """The heap just after the warm-up and at the end: each the median of
    the samples of one interval (the first after the warm-up, the last).
    One sample swings by some 10% with the calls in flight at that moment
    (a 55 MB heap moved by 5 MB from one minute to the next); a leak shows
    as a trend, which medians keep and a single unlucky sample does not."""
    after_warmup = [(at_s, value) for at_s, value in rss if at_s >= parameters.warmup_s and value is not None]
    if not after_warmup:
        return None, None
    first = [value for at_s, value in after_warmup if at_s <= parameters.warmup_s + parameters.interval_s]
    last = [value for at_s, value in after_warmup if at_s >= parameters.duration_s - parameters.interval_s]
    return int(statistics.median(first)), int(statistics.median(last or first))


def build_report(parameters: Parameters, results: list[ClientResults], rss, exit_code, audit_report,
                 data_transactions: int | None = None) -> tuple[Report, tuple]:
    done_s = numpy.concatenate([numpy.asarray(r.done_s) for r in results]) if results else numpy.zeros(0)
    latency_ms = numpy.concatenate([numpy.asarray(r.latency_s) for r in results]) * 1000.0 if results else numpy.zeros(0)
    error_s = numpy.concatenate([numpy.asarray(r.error_s) for r in results]) if results else numpy.zeros(0)
    violation_s = numpy.concatenate([numpy.asarray(r.violation_s) for r in results]) if results else numpy.zeros(0)
    errors, steps = collections.Counter(), collections.Counter()
    for r in results:
        errors.update(r.errors)
        steps.update(r.steps)
    intervals = intervals_of(parameters, done_s, latency_ms, error_s, violation_s, rss)
    rss_start, rss_end = heap_at_start_and_end(parameters, rss)
    growth = None if not rss_start or rss_end is None else (rss_end - rss_start) * 100.0 / rss_start
    measured = [i for i in intervals if i.start_s >= parameters.warmup_s and i.p99_ms is not None]
    drift = measured[-1].p99_ms / measured[0].p99_ms if len(measured) >= 2 and measured[0].p99_ms else None
    violations = sum(r.violation_count for r in results)
    examples = [text for r in results for text in r.violations][:VIOLATIONS_KEPT]
    failures = []
    if sum(errors.values()):
        failures.append(f"{sum(errors.values())} errors: {dict(errors)}")
    if violations:
        failures.append(f"{violations} invariant violations")
    if not audit_report.get("ok"):
        failures.append(f"audit failed: {audit_report.get('problems', [])[:5]}")
    if exit_code != 0:
        failures.append(f"server exit code {exit_code}")
    if growth is not None and growth > parameters.rss_growth_max_percent:
        failures.append(f"server heap (RssAnon) grew {growth:.1f}% after the warm-up (limit {parameters.rss_growth_max_percent:g}%)")
    if latency_ms.size == 0:
        failures.append("no answers at all")
    return Report(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), parameters=parameters,
        answers=int(latency_ms.size), per_s=latency_ms.size / parameters.duration_s,
        latency_ms_avg=float(latency_ms.mean()) if latency_ms.size else None,
        latency_ms_p99=float(numpy.percentile(latency_ms, 99)) if latency_ms.size else None,
        errors=sum(errors.values()), error_codes=dict(errors), violations=violations, violation_examples=examples,
        steps=dict(steps), intervals=intervals, rss_after_warmup_bytes=rss_start, rss_end_bytes=rss_end,
        rss_growth_percent=growth, data_transactions=data_transactions, rss_total_end_bytes=None, latency_drift_p99=drift, server_exit_code=exit_code, audit_ok=bool(audit_report.get("ok")),
        audit=audit_report, failures=failures,
    ), (done_s, latency_ms, error_s)


def print_report(report: Report):
    parameters = report.parameters
    print(f"soak, {parameters.mode}: {parameters.concurrency} terminals for {parameters.duration_s:g} s "
          f"(warm-up {parameters.warmup_s:g} s, intervals of {parameters.interval_s:g} s)")
    if report.data_transactions is not None:
        print(f"data directory: {report.data_transactions:,} transactions when the run began")
    print(f"{'from s':>8}{'answers':>10}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}{'violations':>12}{'heap MiB':>10}")
    for interval in report.intervals:
        rss = "-" if interval.server_rss_bytes is None else f"{interval.server_rss_bytes / 2**20:.0f}"
        cell = lambda value: "-" if value is None else f"{value:.1f}"  # noqa: E731
        print(f"{interval.start_s:>8.0f}{interval.answers:>10}{interval.per_s:>9.0f}{cell(interval.p50_ms):>9}"
              f"{cell(interval.p99_ms):>9}{cell(interval.max_ms):>9}{interval.errors:>8}{interval.violations:>12}{rss:>10}")
    growth = "-" if report.rss_growth_percent is None else f"{report.rss_growth_percent:+.1f}%"
    drift = "-" if report.latency_drift_p99 is None else f"{report.latency_drift_p99:.2f}x"
    average = "-" if report.latency_ms_avg is None else f"{report.latency_ms_avg:.1f}"
    print(f"total: {report.answers} answers ({report.per_s:.0f}/s), avg {average} ms, {report.errors} errors, "
          f"{report.violations} violations, server heap (RssAnon) growth after warm-up {growth}, p99 drift {drift}, "
          f"server exit {report.server_exit_code}, audit {'OK' if report.audit_ok else 'FAILED'}")
    print("steps: " + ", ".join(f"{name} {count}" for name, count in sorted(report.steps.items())))
    for text in report.violation_examples[:10]:
        print(f"  violation: {text}")
    print("PASS" if not report.failures else "FAIL: " + "; ".join(report.failures))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    parameters = parameters_of(args)
    with tempfile.TemporaryDirectory(prefix="tally-soak-") as work_dir:
        data_dir = parameters.data_dir or os.path.join(work_dir, "data")
        log_path = os.path.join(work_dir, "server.log")
        data_transactions = transactions_in_directory(data_dir)
        address = f"127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "server", "--data", data_dir, "--listen", address, *parameters.server_args]
        process = start_server(command, log_path)
        try:
            wait_until_serving(process, address, log_path)
            results, rss, rss_total = run_load(address, parameters, process.pid)
        except BenchFailure as failure:
            stop_server(process)
            print(f"python -m bench soak: {failure}\n{log_tail(log_path)}", file=sys.stderr)
            return 1
        exit_code = stop_server(process)
        if exit_code != 0:
            print(log_tail(log_path), file=sys.stderr)
        # On a 10-million-transaction directory this takes minutes.
        print(f"load done; auditing {data_dir} ...", file=sys.stderr, flush=True)
        audit_report = audit(data_dir)
    report, (done_s, latency_ms, error_s) = build_report(parameters, results, rss, exit_code, audit_report, data_transactions)
    report.rss_total_end_bytes = rss_total[-1][1] if rss_total else None
    print_report(report)
    if args.json:
        with open(args.json, "wb") as json_file:
            json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    if args.chart:
        title = f"soak, {parameters.mode}, {parameters.concurrency} terminals, {report.errors} errors, {report.violations} violations"
        if report.data_transactions is not None:
            title += f"\non a directory of {report.data_transactions:,} transactions"
        charts.load_chart(args.chart, title, done_s, latency_ms, parameters.duration_s, error_s, heap=rss)
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
