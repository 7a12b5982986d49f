"""`python -m bench crash --cycles K`: SIGKILL under load, K times; nothing acknowledged may be lost.

Owns: the crash tool. It starts the real server on a data directory, drives
payments at N concurrent terminals (card only, and with an external channel
part, so that a kill can fall between a payment's two commits), and kills the
server (SIGKILL, its whole process group, so every worker of --workers N
dies too) at a random moment. Then, each cycle: `python -m core.audit` on the
directory as the crash left it; restart (timed: that is the recovery time);
no payment left waiting for its channel; every answer acknowledged before the
kill read back by serial and compared (result, transaction, amount, sources).
At the end every acknowledged answer of every cycle is checked once more, the
server is stopped cleanly (exit 0) and audited.
Used by: operators, tests/test_ops_bench.py (a short run), `make soak`.
May call: the server through gRPC (subprocess), core.audit (subprocess).
"""

import argparse
import asyncio
import datetime
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import msgspec

from bench import charts
from bench.e2e import BenchFailure, free_port, log_tail, wait_until_serving
from bench.gateway_client import GatewayStream, OperationError
from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, payment_pb2, payment_pb2_grpc

CARD_ID_BASE = 6_270_000_000_000_000
CARDS = 20
TERMINAL_ID_BASE = 3_000_000
CLIENTS_MAX = 2000
CYCLES_MAX = 1000
QUERY_CONCURRENCY = 200
STOP_TIMEOUT_S = 30.0


class Cycle(msgspec.Struct):
    cycle: int
    load_s: float
    acknowledged: int
    approved: int
    unanswered: int
    audit_ok: bool
    recovery_s: float
    pending_after_restart: int
    lost: int
    mismatched: int


class Report(msgspec.Struct):
    date: str
    cycles: list[Cycle]
    acknowledged: int
    lost: int
    mismatched: int
    audits_failed: int
    final_audit_ok: bool
    server_exit_code: int | None
    recovery_s_max: float
    failures: list[str]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench crash",
        description="Crash test: drive payments at N terminals, SIGKILL the server at a random moment, audit, "
        "restart (timed), and read back every acknowledged answer by serial; K times. Exit 1 if anything "
        "acknowledged is lost or differs, or any audit fails.",
    )
    parser.add_argument("--cycles", type=int, default=20, metavar="K", help=f"kills, 1 .. {CYCLES_MAX} (default %(default)s)")
    parser.add_argument("--clients", type=int, default=100, metavar="N", help=f"concurrent terminals, 1 .. {CLIENTS_MAX} (default %(default)s)")
    parser.add_argument("--load-seconds", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"),
                        help="the kill comes this long after the load starts, uniformly at random (default 0.5 3.0)")
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary", help="transport (default %(default)s)")
    parser.add_argument("--data", metavar="DIR", help="data directory (kept); default: a new temporary one")
    parser.add_argument("--server-args", default="--channel-latency-ms 1 20", metavar='"FLAGS"',
                        help='extra flags for `python -m server`, written with "=": --server-args="--workers 2" '
                        '(default "%(default)s")')
    parser.add_argument("--seed", type=int, help="random seed of the kill moments and amounts (default: from the clock)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--chart", metavar="FILE.png", help="draw acknowledged answers and recovery time per cycle")
    args = parser.parse_args(argv)
    if not 1 <= args.cycles <= CYCLES_MAX:
        parser.error(f"--cycles must be within 1 .. {CYCLES_MAX}, got {args.cycles}")
    if not 1 <= args.clients <= CLIENTS_MAX:
        parser.error(f"--clients must be within 1 .. {CLIENTS_MAX}, got {args.clients}")
    if not 0 < args.load_seconds[0] <= args.load_seconds[1]:
        parser.error("--load-seconds needs 0 < MIN <= MAX")
    return args


class Server:
    """`python -m server` in its own process group, so that SIGKILL reaches every worker."""

    def __init__(self, data_dir: str, server_args: list[str], log_path: str):
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path = log_path
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", "--data", data_dir, "--listen", self.address, *server_args],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait(self):
        wait_until_serving(self.process, self.address, self.log_path)

    def kill(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL


def mixed_sale(card_id: int, terminal_id: int, serial: int, rng) -> payment_pb2.PayRequest:
    """A sale of the crash and failover drills: the card's personal account,
    and every third one with Alipay for the rest (a channel leg that a kill
    may leave pending)."""
    plan = payment_pb2.PaymentPlan(card_id=card_id, use_personal=True)
    if serial % 3 == 0:
        plan.channel = common_pb2.ALIPAY
    context = common_pb2.TerminalContext(station_id=1, terminal_id=terminal_id, serial=serial, operator_id=1)
    return payment_pb2.PayRequest(terminal=context, amount_minor=rng.randint(1, 5_000), plan=plan)


def open_cards(address: str, run_id: int):
    with grpc.insecure_channel(address) as channel:
        cards = card_pb2_grpc.CardServiceStub(channel)
        for index in range(CARDS):
            card_id = CARD_ID_BASE + run_id * 100 + index
            cards.OpenCard(card_pb2.OpenCardRequest(card_id=card_id, card_type=card_pb2.PERSONAL_CARD))
            context = common_pb2.TerminalContext(station_id=1, terminal_id=TERMINAL_ID_BASE - 1, serial=time.time_ns(), operator_id=1)
            answer = cards.TopUp(card_pb2.TopUpRequest(terminal=context, card_id=card_id, account=common_pb2.PERSONAL, amount=10**11))
            if answer.result != common_pb2.APPROVED:
                raise BenchFailure(f"funding card {card_id}: {common_pb2.ResultCode.Name(answer.result)}")


async def load(address: str, args, run_id: int, cycle: int, rng: random.Random, kill) -> tuple[dict, int, float]:
    """Pay at N terminals until the kill; returns acknowledged answers by
    (terminal, serial), how many requests got no answer, and the load time."""
    acknowledged, unanswered = {}, [0]
    stop = asyncio.Event()
    serial_base = time.time_ns() // 1000 * 1000
    channel = grpc.aio.insecure_channel(address, options=(("grpc.use_local_subchannel_pool", 1),))
    stream = await GatewayStream(channel).start() if args.mode == "stream" else None
    pay_unary = payment_pb2_grpc.PaymentServiceStub(channel).Pay

    async def client(index: int):
        terminal_id = TERMINAL_ID_BASE + index
        serial = serial_base
        while not stop.is_set():
            serial += 1
            request = mixed_sale(CARD_ID_BASE + run_id * 100 + index % CARDS, terminal_id, serial, rng)
            try:
                answer = await (stream.pay(request) if stream is not None else pay_unary(request, timeout=10))
            except (grpc.aio.AioRpcError, OperationError):
                unanswered[0] += 1
                return  # the server died: this one is unacknowledged
            acknowledged[(terminal_id, serial)] = answer

    tasks = [asyncio.create_task(client(index)) for index in range(args.clients)]
    load_s = rng.uniform(*args.load_seconds)
    await asyncio.sleep(load_s)
    kill()
    stop.set()
    await asyncio.gather(*tasks)
    if stream is not None:
        await stream.close()
    await channel.close()
    return acknowledged, unanswered[0], load_s


async def read_back(address: str, acknowledged: dict) -> tuple[int, int, list[str]]:
    """(lost, mismatched, examples) among acknowledged answers."""
    lost = mismatched = 0
    examples = []
    items = list(acknowledged.items())
    async with grpc.aio.insecure_channel(address) as channel:
        query = payment_pb2_grpc.PaymentServiceStub(channel).Query

        async def check(start: int):
            nonlocal lost, mismatched
            for (terminal_id, serial), answer in items[start::QUERY_CONCURRENCY]:
                stored = await query(payment_pb2.QueryRequest(terminal_id=terminal_id, serial=serial), timeout=30)
                if not stored.found:
                    lost += 1
                    examples.append(f"terminal {terminal_id} serial {serial}: acknowledged {common_pb2.ResultCode.Name(answer.result)}, now unknown")
                elif (stored.answer.result, stored.answer.txn_id, stored.answer.amount_minor, stored.answer.sources) != (
                        answer.result, answer.txn_id, answer.amount_minor, answer.sources):
                    mismatched += 1
                    examples.append(f"terminal {terminal_id} serial {serial}: stored answer differs from the acknowledged one")

        await asyncio.gather(*(check(start) for start in range(min(QUERY_CONCURRENCY, len(items)))))
    return lost, mismatched, examples[:20]


def audit_ok(data_dir: str) -> tuple[bool, str]:
    result = subprocess.run([sys.executable, "-m", "core.audit", data_dir], capture_output=True, text=True)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def pending_count(data_dir: str) -> int:
    from core.ledger import Ledger
    from core.store import open_store

    store = open_store(data_dir, readonly=True)
    try:
        return len(Ledger(store, kernel=object()).pending_txn_ids())
    finally:
        store.close()


def run(args, data_dir: str, log_path: str) -> tuple[Report, list[str]]:
    rng = random.Random(args.seed)
    server_args = shlex.split(args.server_args)
    run_id = int(time.time()) % 10_000_000
    server = Server(data_dir, server_args, log_path)
    server.wait()
    open_cards(server.address, run_id)
    cycles, everything, notes = [], {}, []
    for cycle in range(1, args.cycles + 1):
        acknowledged, unanswered, load_s = asyncio.run(load(server.address, args, run_id, cycle, rng, server.kill))
        everything.update(acknowledged)
        audited, audit_text = audit_ok(data_dir)
        if not audited:
            notes.append(f"cycle {cycle}: audit after the kill failed:\n{audit_text}")
        started_s = time.perf_counter()
        server = Server(data_dir, server_args, log_path)
        server.wait()
        recovery_s = time.perf_counter() - started_s
        lost, mismatched, examples = asyncio.run(read_back(server.address, acknowledged))
        notes.extend(f"cycle {cycle}: {text}" for text in examples)
        approved = sum(answer.result == common_pb2.APPROVED for answer in acknowledged.values())
        cycles.append(Cycle(cycle=cycle, load_s=load_s, acknowledged=len(acknowledged), approved=approved, unanswered=unanswered,
                            audit_ok=audited, recovery_s=recovery_s, pending_after_restart=pending_count(data_dir),
                            lost=lost, mismatched=mismatched))
        print(f"cycle {cycle:>3}: killed after {load_s:.2f} s, {len(acknowledged)} acknowledged ({approved} approved), "
              f"{unanswered} unanswered; audit {'OK' if audited else 'FAILED'}; back in {recovery_s:.2f} s; "
              f"{lost} lost, {mismatched} differ", flush=True)
    lost, mismatched, examples = asyncio.run(read_back(server.address, everything))
    notes.extend(f"final check: {text}" for text in examples)
    exit_code = server.stop()
    final_ok, final_text = audit_ok(data_dir)
    if not final_ok:
        notes.append(f"final audit failed:\n{final_text}")
    failures = []
    if lost or mismatched:
        failures.append(f"{lost} acknowledged answers lost and {mismatched} differ (all cycles, final check)")
    if any(c.lost or c.mismatched for c in cycles):
        failures.append("acknowledged answers lost or changed after a restart")
    if any(not c.audit_ok for c in cycles) or not final_ok:
        failures.append("an audit failed")
    if any(c.pending_after_restart for c in cycles):
        failures.append("payments left waiting for their channel after recovery")
    if exit_code != 0:
        failures.append(f"the server's clean stop exited {exit_code}")
    if sum(c.acknowledged for c in cycles) == 0:
        failures.append("no request was acknowledged: the load did not run")
    report = Report(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), cycles=cycles,
        acknowledged=len(everything), lost=lost, mismatched=mismatched,
        audits_failed=sum(not c.audit_ok for c in cycles) + (not final_ok), final_audit_ok=final_ok,
        server_exit_code=exit_code, recovery_s_max=max(c.recovery_s for c in cycles), failures=failures,
    )
    return report, notes


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="tally-crash-") as work_dir:
        data_dir = args.data or os.path.join(work_dir, "data")
        log_path = os.path.join(work_dir, "server.log")
        try:
            report, notes = run(args, data_dir, log_path)
        except BenchFailure as failure:
            print(f"python -m bench crash: {failure}\n{log_tail(log_path)}", file=sys.stderr)
            return 1
    for note in notes[:40]:
        print(note)
    print(f"{len(report.cycles)} cycles, {report.acknowledged} acknowledged answers, {report.lost} lost, {report.mismatched} differ, "
          f"{report.audits_failed} audits failed, longest recovery {report.recovery_s_max:.2f} s")
    print("PASS" if not report.failures else "FAIL: " + "; ".join(report.failures))
    if args.json:
        with open(args.json, "wb") as json_file:
            json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    if args.chart:
        numbers = [c.cycle for c in report.cycles]
        charts.series_chart(args.chart, f"bench crash: {len(numbers)} SIGKILLs, {report.lost} acknowledged lost", [
            ("answers per cycle", "requests", numbers, {"acknowledged": [c.acknowledged for c in report.cycles],
                                                        "unanswered at the kill": [c.unanswered for c in report.cycles]}),
            ("recovery: restart until serving", "seconds", numbers, {"recovery s": [c.recovery_s for c in report.cycles]}),
        ])
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
