"""`python -m bench nats-outage`: NATS servers lost under load, one then two, then back.

Owns: the outage drill of the replicated log. Three Tally nodes on a 3-node
NATS cluster (bench/replica_set.py), C terminals paying through a client
that follows the leader; then: SIGKILL the NATS server that leads the log's
stream; --phase seconds later SIGKILL a second one (no quorum left); then
restart both. It reports the longest pause in acknowledgements after the
first kill, whether anything was acknowledged without a quorum, how long
writes took to come back after the restart, whether the Tally leader
changed, and reads every acknowledged payment back (none may be lost).
Used by: operators (README, "High availability").
May call: the nodes through gRPC, the NATS servers (stream info).
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time

import msgspec

from bench import failover
from bench.e2e import BenchFailure
from bench.replica_set import LeaderClient, ReplicaSet
from core.replication.log import ReplicationLog

# Acknowledgements this long after the second kill were sent before it and
# still in flight; later ones would be acknowledged without a quorum.
IN_FLIGHT_GRACE_S = 0.5


class Report(msgspec.Struct):
    clients: int
    phase_s: float
    acknowledged: int
    lost: int
    # After killing the stream's leading NATS server: the longest gap
    # between two acknowledgements, and where the Tally leader went.
    one_down_longest_pause_s: float
    # After killing a second server: acknowledgements later than the grace.
    acknowledged_without_quorum: int
    # After restarting both: until the first acknowledgement.
    back_after_restart_s: float
    tally_leaders: list[str]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench nats-outage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, metavar="C", help="terminals paying (default %(default)s)")
    parser.add_argument("--phase", type=float, default=10.0, metavar="S",
                        help="seconds of each phase: one down, two down, both back (default %(default)g)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= failover.CLIENTS_MAX or not 2 <= args.phase <= 600:
        parser.error(f"--clients within 1 .. {failover.CLIENTS_MAX}, --phase within 2 .. 600")
    return args


def stream_leader(nodes: ReplicaSet) -> str:
    log = ReplicationLog(nodes.nats.url, name="tally-bench")
    log.connect(30)
    try:
        return log.thread.call(lambda: log.js.stream_info(log.names.stream), 10).cluster.leader
    finally:
        log.close()


async def drill(args, nodes: ReplicaSet) -> Report:
    run_id = int(time.time()) % 10_000_000
    client = LeaderClient([node.address for node in nodes.nodes])
    answers, unanswered = [], []
    marks = {}
    try:
        await failover.fund_cards(client, run_id)
        stop = asyncio.Event()
        load = asyncio.create_task(failover.load_until(client, args.clients, run_id, random.Random(1), stop,
                                                       answers, unanswered))
        await asyncio.sleep(3)
        first = next(server for server in nodes.nats.servers if server.name == stream_leader(nodes))
        marks["one down"] = time.monotonic()
        first.kill()
        await asyncio.sleep(args.phase)
        second = next(server for server in nodes.nats.servers if server.running)
        marks["two down"] = time.monotonic()
        second.kill()
        await asyncio.sleep(args.phase)
        marks["restarted"] = time.monotonic()
        first.start()
        second.start()
        await asyncio.sleep(args.phase)
        stop.set()
        await load
    finally:
        await client.close()
    leader = nodes.wait_leader()
    lost, _, _ = await failover.read_back(leader.address, answers)
    return report_of(args, answers, marks, lost)


def report_of(args, answers, marks, lost) -> Report:
    times = sorted(answer.at_s for answer in answers)
    one, two, back = marks["one down"], marks["two down"], marks["restarted"]
    during_one = [at for at in times if one <= at < two]
    pauses = [later - earlier for earlier, later in zip([one, *during_one], during_one)]
    leaders = []
    for answer in sorted(answers, key=lambda answer: answer.at_s):
        if not leaders or leaders[-1] != answer.address:
            leaders.append(answer.address)
    return Report(
        clients=args.clients, phase_s=args.phase, acknowledged=len(answers), lost=lost,
        one_down_longest_pause_s=round(max(pauses, default=two - one), 3),
        acknowledged_without_quorum=sum(1 for at in times if two + IN_FLIGHT_GRACE_S < at < back),
        back_after_restart_s=round(min((at - back for at in times if at >= back), default=float("inf")), 3),
        tally_leaders=leaders,
    )


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="tally-nats-outage-") as work_dir:
        nodes = ReplicaSet(work_dir, 3, ["--lease-ttl-s", "3"])
        try:
            nodes.start()
            report = asyncio.run(drill(args, nodes))
        except BenchFailure as failure:
            print(f"python -m bench nats-outage: {failure}", file=sys.stderr)
            return 1
        finally:
            nodes.close()
    print(f"{report.acknowledged} acknowledged, {report.lost} lost; one NATS server down: longest pause "
          f"{report.one_down_longest_pause_s:.2f} s; two down: {report.acknowledged_without_quorum} acknowledged "
          f"without a quorum; both back: writes again after {report.back_after_restart_s:.2f} s; the Tally leader "
          f"{'stayed' if len(report.tally_leaders) == 1 else 'moved: ' + ' -> '.join(report.tally_leaders)}")
    if args.json:
        with open(args.json, "wb") as json_file:
            json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    failed = report.lost or report.acknowledged_without_quorum or report.back_after_restart_s == float("inf")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
