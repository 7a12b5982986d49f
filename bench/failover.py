"""`python -m bench failover --cycles N`: kill -9 the leader under load, N times; RPO and RTO.

Owns: the failover drill. It starts a 3-node NATS JetStream cluster and
three Tally nodes on loopback (bench/replica_set.py), funds cards through
the leader, then each cycle: Pay at C terminals (card only, and one sale in
three with an external channel part, so that a kill can fall between a
payment's two commits) through a client that follows the leader; after a
random few seconds SIGKILL the leader's whole process group AND delete its
data directory (its host and disk are gone); the clients find the new
leader and send their unanswered requests again (same serial: idempotent).
Measured per cycle: RTO = the first answer of the new leader minus the last
answer of the old one; every answer acknowledged before the kill is read
back from the new leader by serial and compared (RPO: none may be lost);
the killed node restarts on an empty directory and replays the whole log.
At the end: every node caught up, stopped cleanly, `python -m core.audit`
on each directory, and the nodes' content digests compared (identical).
Used by: operators (README, "High availability"), tests/test_replication_failover.py
(a short run), `make soak`.
May call: the nodes through gRPC, core.audit (subprocess).
"""

import argparse
import asyncio
import datetime
import os
import random
import statistics
import sys
import tempfile
import time

import grpc
import msgspec

from bench import charts
from bench.crash import mixed_sale
from bench.e2e import BenchFailure
from bench.replica_set import LeaderClient, ReplicaSet
from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, payment_pb2, payment_pb2_grpc

CARD_ID_BASE = 6_280_000_000_000_000
CARDS = 50
TERMINAL_ID_BASE = 4_000_000
CYCLES_MAX = 1000
CLIENTS_MAX = 1000
# Clients keep sending for this long after the new leader's first answer,
# so the cycle's throughput chart shows it carry the load.
AFTER_TAKEOVER_S = 1.0
# A request not answered by any leader in this time counts as unanswered.
REQUEST_DEADLINE_S = 60.0
RTO_TARGET_S = 10.0
QUERY_CONCURRENCY = 50


class Cycle(msgspec.Struct):
    cycle: int
    killed: str
    new_leader: str
    load_s: float
    acknowledged: int
    # Requests in flight at the kill and answered later (by the new leader).
    answered_after_kill: int
    unanswered: int
    rto_s: float
    lost: int
    mismatched: int
    # The killed node, restarted on an empty directory: until it serves.
    restart_s: float


class Report(msgspec.Struct):
    date: str
    cycles: list[Cycle]
    nodes: int
    clients: int
    lease_ttl_s: float
    acknowledged: int
    lost: int
    mismatched: int
    rto_s_p50: float
    rto_s_max: float
    rto_target_s: float
    audits_failed: int
    digests_equal: bool
    log_position: int
    # Acknowledged answers per second over the whole drill, for the chart.
    answers_by_second: list[int]
    failures: list[str]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench failover",
        description="Failover drill: three Tally nodes on a 3-node NATS JetStream cluster (loopback); Pay under load; "
        "SIGKILL the leader and delete its data directory, N times. Reports RTO (last answer of the old leader to "
        "the first of the new) per cycle, p50 and max (target max <= 10 s), and checks that no acknowledged payment "
        "is lost (RPO 0), every node's audit is clean and all nodes hold the same books. Exit 0 if all holds.")
    parser.add_argument("--cycles", type=int, default=20, metavar="N",
                        help=f"kills, 1 .. {CYCLES_MAX} (default %(default)s)")
    parser.add_argument("--clients", type=int, default=100, metavar="C",
                        help=f"concurrent terminals, 1 .. {CLIENTS_MAX} (default %(default)s)")
    parser.add_argument("--load-seconds", type=float, nargs=2, default=(2.0, 5.0), metavar=("MIN", "MAX"),
                        help="load before each kill, a random time in this range (default 2 5)")
    parser.add_argument("--lease-ttl-s", type=float, default=3.0, metavar="S",
                        help="the nodes' --lease-ttl-s (default %(default)g)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the kill times and amounts")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, data, NATS stores)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--chart", metavar="FILE.png", help="RTO per cycle and answers per second")
    args = parser.parse_args(argv)
    if not 1 <= args.cycles <= CYCLES_MAX:
        parser.error(f"--cycles must be within 1 .. {CYCLES_MAX}")
    if not 1 <= args.clients <= CLIENTS_MAX:
        parser.error(f"--clients must be within 1 .. {CLIENTS_MAX}")
    if not 0 < args.load_seconds[0] <= args.load_seconds[1]:
        parser.error("--load-seconds MIN MAX: 0 < MIN <= MAX")
    return args


# ---------------------------------------------------------------- load


class Answer(msgspec.Struct):
    terminal_id: int
    serial: int
    answer: bytes  # the PaymentAnswer
    address: str
    at_s: float  # time.monotonic()


async def fund_cards(client: LeaderClient, run_id: int):
    deadline = time.monotonic() + REQUEST_DEADLINE_S
    for index in range(CARDS):
        card_id = CARD_ID_BASE + run_id * 100 + index
        await client.call(lambda channel: card_pb2_grpc.CardServiceStub(channel).OpenCard,
                          card_pb2.OpenCardRequest(card_id=card_id, card_type=card_pb2.PERSONAL_CARD), deadline)
        context = common_pb2.TerminalContext(station_id=1, terminal_id=TERMINAL_ID_BASE - 1,
                                             serial=run_id * 1000 + index, operator_id=1)
        top_up = card_pb2.TopUpRequest(terminal=context, card_id=card_id, account=common_pb2.PERSONAL, amount=10**11)
        answer, _ = await client.call(lambda channel: card_pb2_grpc.CardServiceStub(channel).TopUp, top_up, deadline)
        if answer.result != common_pb2.APPROVED:
            raise BenchFailure(f"funding card {card_id}: {common_pb2.ResultCode.Name(answer.result)}")


async def load_until(client: LeaderClient, clients: int, run_id: int, rng: random.Random, stop: asyncio.Event,
                     answers: list, unanswered: list):
    """C terminals paying until `stop`; each request is sent until some
    leader answers it (or REQUEST_DEADLINE_S passes: then unanswered)."""
    serial_base = time.time_ns() // 1000 * 1000

    def pay(channel):
        return payment_pb2_grpc.PaymentServiceStub(channel).Pay

    async def terminal(index: int):
        terminal_id = TERMINAL_ID_BASE + index
        serial = serial_base
        while not stop.is_set():
            serial += 1
            request = mixed_sale(CARD_ID_BASE + run_id * 100 + index % CARDS, terminal_id, serial, rng)
            try:
                answer, address = await client.call(pay, request, time.monotonic() + REQUEST_DEADLINE_S)
            except (grpc.aio.AioRpcError, TimeoutError):
                unanswered.append((terminal_id, serial))
                continue
            answers.append(Answer(terminal_id, serial, answer.SerializeToString(), address, time.monotonic()))

    await asyncio.gather(*(terminal(index) for index in range(clients)))


async def read_back(address: str, answers: list[Answer]) -> tuple[int, int, list[str]]:
    """(lost, mismatched, examples) of acknowledged answers, read from `address`."""
    lost = mismatched = 0
    examples = []
    async with grpc.aio.insecure_channel(address) as channel:
        query = payment_pb2_grpc.PaymentServiceStub(channel).Query

        async def check(start: int):
            nonlocal lost, mismatched
            for answer in answers[start::QUERY_CONCURRENCY]:
                acknowledged = payment_pb2.PaymentAnswer.FromString(answer.answer)
                stored = await query(payment_pb2.QueryRequest(terminal_id=answer.terminal_id, serial=answer.serial),
                                     timeout=30)
                if not stored.found:
                    lost += 1
                    examples.append(f"terminal {answer.terminal_id} serial {answer.serial}: acknowledged, now unknown")
                elif (stored.answer.result, stored.answer.txn_id, stored.answer.amount_minor) != (
                        acknowledged.result, acknowledged.txn_id, acknowledged.amount_minor):
                    mismatched += 1
                    examples.append(f"terminal {answer.terminal_id} serial {answer.serial}: stored answer differs")

        await asyncio.gather(*(check(start) for start in range(QUERY_CONCURRENCY)))
    return lost, mismatched, examples[:10]


# ---------------------------------------------------------------- cycles


async def one_cycle(number: int, nodes: ReplicaSet, client: LeaderClient, args, run_id: int,
                    rng: random.Random, all_answers: list) -> tuple[Cycle, list[str]]:
    leader = nodes.wait_leader()
    answers, unanswered = [], []
    stop = asyncio.Event()
    load = asyncio.create_task(load_until(client, args.clients, run_id, rng, stop, answers, unanswered))
    load_s = rng.uniform(*args.load_seconds)
    await asyncio.sleep(load_s)
    killed_at = time.monotonic()
    leader.kill()
    leader.wipe()
    while not any(answer.address != leader.address and answer.at_s > killed_at for answer in answers):
        if load.done() or time.monotonic() - killed_at > REQUEST_DEADLINE_S:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(AFTER_TAKEOVER_S)
    stop.set()
    await load
    all_answers.extend(answers)
    old = [answer.at_s for answer in answers if answer.address == leader.address]
    new = [answer.at_s for answer in answers if answer.address != leader.address and answer.at_s > killed_at]
    rto_s = (min(new) - max(old)) if old and new else float("inf")
    new_leader = nodes.wait_leader(other_than=leader)
    restarted_at = time.monotonic()
    await asyncio.to_thread(leader.start)
    restart_s = time.monotonic() - restarted_at
    lost, mismatched, examples = await read_back(new_leader.address, answers)
    after_kill = sum(1 for answer in answers if answer.at_s > killed_at)
    cycle = Cycle(cycle=number, killed=leader.name, new_leader=new_leader.name, load_s=round(load_s, 3),
                  acknowledged=len(answers), answered_after_kill=after_kill, unanswered=len(unanswered),
                  rto_s=round(rto_s, 3), lost=lost, mismatched=mismatched, restart_s=round(restart_s, 3))
    return cycle, examples


def finish(nodes: ReplicaSet) -> tuple[int, bool, int, list[str]]:
    """Catch up, stop, audit and compare every node: (audits failed,
    digests equal, log position, notes)."""
    notes, found = nodes.stop_and_check()
    equal = len(set(found)) == 1
    if not equal:
        notes.append("nodes differ: " + ", ".join(f"{node.name} at {position}: {digest[:12]}"
                                                  for node, (position, digest) in zip(nodes.nodes, found)))
    audits_failed = sum(1 for note in notes if note.startswith("audit of"))
    return audits_failed, equal, found[0][0], notes


async def drill(args, work_dir: str) -> tuple[Report, list[str]]:
    rng = random.Random(args.seed)
    run_id = int(time.time()) % 10_000_000
    node_args = ["--lease-ttl-s", str(args.lease_ttl_s), "--channel-latency-ms", "1", "5"]
    nodes = ReplicaSet(work_dir, 3, node_args)
    cycles, notes, all_answers = [], [], []
    started = time.monotonic()
    try:
        await asyncio.to_thread(nodes.start)
        client = LeaderClient([node.address for node in nodes.nodes])
        try:
            await fund_cards(client, run_id)
            for number in range(1, args.cycles + 1):
                cycle, examples = await one_cycle(number, nodes, client, args, run_id, rng, all_answers)
                cycles.append(cycle)
                notes.extend(examples)
                print(f"cycle {number}: killed {cycle.killed} -> {cycle.new_leader} leads, RTO {cycle.rto_s:.2f} s, "
                      f"{cycle.acknowledged} acknowledged, {cycle.lost} lost, restart {cycle.restart_s:.1f} s",
                      flush=True)
        finally:
            await client.close()
        audits_failed, equal, position, finish_notes = await asyncio.to_thread(finish, nodes)
        notes.extend(finish_notes)
    except BenchFailure:
        raise
    finally:
        nodes.close()
    return report_of(args, cycles, all_answers, started, audits_failed, equal, position, notes), notes


def report_of(args, cycles, answers, started, audits_failed, equal, position, notes) -> Report:
    rtos = [cycle.rto_s for cycle in cycles]
    seconds = [int(answer.at_s - started) for answer in answers]
    by_second = [0] * (max(seconds) + 1 if seconds else 0)
    for second in seconds:
        by_second[second] += 1
    failures = []
    lost = sum(cycle.lost for cycle in cycles)
    mismatched = sum(cycle.mismatched for cycle in cycles)
    if lost or mismatched:
        failures.append(f"{lost} acknowledged payments lost, {mismatched} differ")
    if max(rtos) > RTO_TARGET_S:
        failures.append(f"RTO max {max(rtos):.2f} s above the target {RTO_TARGET_S:g} s")
    if audits_failed:
        failures.append(f"{audits_failed} audits failed")
    if not equal:
        failures.append("the nodes' books differ")
    return Report(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        cycles=cycles, nodes=3, clients=args.clients, lease_ttl_s=args.lease_ttl_s,
        acknowledged=len(answers), lost=lost, mismatched=mismatched,
        rto_s_p50=statistics.median(rtos), rto_s_max=max(rtos), rto_target_s=RTO_TARGET_S,
        audits_failed=audits_failed, digests_equal=equal, log_position=position,
        answers_by_second=by_second, failures=failures,
    )


def draw(report: Report, path: str):
    numbers = [cycle.cycle for cycle in report.cycles]
    charts.series_chart(path, f"bench failover: {len(numbers)} leader kills, RTO p50 {report.rto_s_p50:.2f} s, max "
                        f"{report.rto_s_max:.2f} s, {report.lost} acknowledged lost", [
        ("RTO: last answer of the old leader to the first of the new", "seconds", numbers,
         {"RTO s": [cycle.rto_s for cycle in report.cycles]}),
        ("answers per cycle", "requests", numbers, {"acknowledged": [cycle.acknowledged for cycle in report.cycles],
                                                    "answered after the kill": [cycle.answered_after_kill
                                                                                for cycle in report.cycles]}),
        ("answers per second over the drill", "answers/s", list(range(len(report.answers_by_second))),
         {"answers": report.answers_by_second}),
    ])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tally-failover-") as temporary:
        work_dir = args.keep or temporary
        try:
            report, notes = asyncio.run(drill(args, work_dir))
        except BenchFailure as failure:
            print(f"python -m bench failover: {failure}", file=sys.stderr)
            return 1
    for note in notes[:40]:
        print(note)
    print(f"{len(report.cycles)} cycles, {report.acknowledged} acknowledged, {report.lost} lost, {report.mismatched} "
          f"differ; RTO p50 {report.rto_s_p50:.2f} s, max {report.rto_s_max:.2f} s (target {RTO_TARGET_S:g}); "
          f"{report.audits_failed} audits failed; nodes identical: {report.digests_equal} at log position "
          f"{report.log_position}")
    print("PASS" if not report.failures else "FAIL: " + "; ".join(report.failures))
    if args.json:
        with open(args.json, "wb") as json_file:
            json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    if args.chart:
        draw(report, args.chart)
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
