"""`python -m server --data DIR --listen HOST:PORT`: run one Tally server."""

import argparse
import asyncio
import logging
import sys

from core import limits
from core.channels import SimulatorSettings
from core.replication import lease, log as replication_log, node as replication_node
from core.store import MAP_SIZE_BYTES_DEFAULT
from server.settings import HEAP_TRIM_INTERVAL_S_DEFAULT, ServerSettings
from server.stream import STREAM_WINDOW_MAX
from server.workers import WORKERS_MAX


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Tally transaction core: serves PaymentService and CardService over gRPC "
        "(with health checking and reflection) until SIGINT or SIGTERM.",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="data directory (LMDB); created if missing")
    parser.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT", help="gRPC address (default %(default)s)")
    parser.add_argument("--demo", action="store_true", help="create demo cards if the data directory has none")
    parser.add_argument("--kernel", choices=("auto", "cython", "reference"), default="auto",
                        help="ledger kernel: the Cython one if built (auto), or the plain-Python reference")
    parser.add_argument("--map-size-gib", type=int, default=MAP_SIZE_BYTES_DEFAULT // 2**30,
                        help="LMDB map size, GiB of address space (default %(default)s)")
    parser.add_argument("--utc-offset-minutes", type=int, default=0,
                        help="business day boundary, minutes east of UTC (480 for UTC+8)")
    parser.add_argument("--points-per-unit", type=int, default=100, help="points that pay one currency unit")
    parser.add_argument("--earn-points-per-unit", type=int, default=1, help="points earned per currency unit paid")
    parser.add_argument("--channel-timeout-ms", type=int, default=5000, help="longest wait for a payment channel")
    parser.add_argument("--channel-latency-ms", type=int, nargs=2, default=(0, 0), metavar=("MIN", "MAX"),
                        help="simulated channel latency range")
    parser.add_argument("--channel-decline-ppm", type=int, default=0, help="simulated channel declines, per million")
    parser.add_argument("--channel-timeout-ppm", type=int, default=0, help="simulated channel time-outs, per million")
    parser.add_argument("--queue-length-max", type=int, default=limits.QUEUE_LENGTH_MAX,
                        help="requests waiting for the writer before RESOURCE_EXHAUSTED (default %(default)s)")
    parser.add_argument("--stream-window", type=int, default=STREAM_WINDOW_MAX, metavar="OPS",
                        help="operations in flight per GatewayService stream, 1 .. %(default)s (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help=f"server processes sharing the port (SO_REUSEPORT), 1 .. {WORKERS_MAX}; each opens "
                        "the store itself after the fork (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (HOST of --listen; 0 picks a "
                        "free port); with --workers, one endpoint sums all workers; default: no endpoint")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text lines, or JSON lines (one object a line) for log collectors (default %(default)s)")
    parser.add_argument("--log-requests", action="store_true",
                        help="log one line per answered request: request id (the client's x-request-id "
                        "metadata, or a new one), RPC, transport, terminal, serial, outcome, latency")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--terminal-auth", action="store_true",
                        help="refuse terminal requests without a valid MAC under the terminal's working key "
                        "(x-tally-* metadata; see server/terminal_auth.py); needs --master-key-file")
    parser.add_argument("--back-office-auth", action="store_true",
                        help="refuse the back-office RPCs of promotions, risk, loyalty, settlement and cards (create, "
                        "approve, limits, blacklist, rules, gifts, statements, day-end, card changes) without an AdminService token of an allowed role, and a `by` "
                        "other than the token's user (see server/back_office_auth.py)")
    parser.add_argument("--master-key-file", metavar="FILE",
                        help="master key the terminals' keys are sealed under (python -m core.admin master-key); "
                        "needed to register terminals and for sign-on")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve gRPC over TLS with this certificate (chain)")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--heap-trim-interval", type=float, default=HEAP_TRIM_INTERVAL_S_DEFAULT, metavar="S",
                        help="hand the heap's free pages back to the OS every S seconds, so that RSS shows memory "
                        "in use, not a past burst's (glibc malloc_trim; server/heap.py); 0: never (default %(default)g)")
    add_replication_flags(parser)
    args = parser.parse_args(argv)
    if args.replicate and args.workers > 1:
        parser.error("--replicate runs one process per node: drop --workers")
    if args.replicate and not args.node_id:
        parser.error("--replicate needs --node-id (a name unique among the nodes of the log)")
    if args.node_id and not (len(args.node_id) <= 32 and args.node_id.replace("-", "").replace("_", "").isalnum()):
        parser.error(f"--node-id must be 1 .. 32 letters, digits, - or _, got {args.node_id!r}")
    if not lease.TTL_S_MIN <= args.lease_ttl_s <= lease.TTL_S_MAX:
        parser.error(f"--lease-ttl-s must be within {lease.TTL_S_MIN:g} .. {lease.TTL_S_MAX:g}, got {args.lease_ttl_s:g}")
    if not 0.1 <= args.append_timeout_s <= 60:
        parser.error(f"--append-timeout-s must be within 0.1 .. 60, got {args.append_timeout_s:g}")
    if not 1 <= args.workers <= WORKERS_MAX:
        parser.error(f"--workers must be within 1 .. {WORKERS_MAX}, got {args.workers}")
    return args


def add_replication_flags(parser):
    group = parser.add_argument_group(
        "replication", "high availability on NATS JetStream (README: High availability); without --replicate the "
        "server is the embedded single node")
    group.add_argument("--replicate", metavar="URLS",
                       help="comma-separated NATS URLs (nats://host:port,...) of a JetStream cluster: every write is "
                       "appended to a replicated log and acknowledged by a quorum before it is answered; one node "
                       "leads (takes writes), the others apply the log and serve reads")
    group.add_argument("--node-id", default="", metavar="ID",
                       help="this node's name, unique among the nodes of the log (letters, digits, - and _)")
    group.add_argument("--advertise", default="", metavar="HOST:PORT",
                       help="the gRPC address clients reach this node at, given to them by followers when this node "
                       "leads (default: the address of --listen)")
    group.add_argument("--log-stream", default=replication_log.STREAM_DEFAULT, metavar="NAME",
                       help="JetStream stream of the log (default %(default)s; subject: its name in lower case, "
                       "dots for underscores, e.g. tally.log)")
    group.add_argument("--lease-ttl-s", type=float, default=lease.TTL_S_DEFAULT, metavar="S",
                       help="the leader's lease: a follower takes over at most this long after the leader stops "
                       "renewing it (default %(default)g)")
    group.add_argument("--append-timeout-s", type=float, default=replication_node.APPEND_TIMEOUT_S_DEFAULT,
                       metavar="S", help="how long the leader retries an append the log does not answer before the "
                       "batch fails with UNAVAILABLE (default %(default)g)")
    group.add_argument("--events-stream", default="", metavar="NAME",
                       help="publish each committed transaction as a tally.v1.Event on this JetStream stream "
                       "(subjects tally.events.*; proto/tally/v1/events.proto); default: no events")


def replication_of(args) -> "replication_node.ReplicaSettings | None":
    if not args.replicate:
        return None
    stream = args.log_stream
    subject = replication_log.SUBJECT_DEFAULT if stream == replication_log.STREAM_DEFAULT else stream.lower().replace("_", ".")
    return replication_node.ReplicaSettings(
        urls=args.replicate, node_id=args.node_id, stream=stream, subject=subject,
        lease_bucket=f"{stream}_LEADER", lease_ttl_s=args.lease_ttl_s, append_timeout_s=args.append_timeout_s,
    )


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from server.metrics import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        settings = ServerSettings(
            data_dir=args.data,
            listen=args.listen,
            kernel=args.kernel,
            map_size_bytes=args.map_size_gib * 2**30,
            utc_offset_minutes=args.utc_offset_minutes,
            points_per_unit=args.points_per_unit,
            earn_points_per_unit=args.earn_points_per_unit,
            channel_timeout_ms=args.channel_timeout_ms,
            queue_length_max=args.queue_length_max,
            stream_window=args.stream_window,
            metrics_port=args.metrics_port,
            log_requests=args.log_requests,
            terminal_auth=args.terminal_auth,
            back_office_auth=args.back_office_auth,
            master_key_file=args.master_key_file,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            heap_trim_interval_s=args.heap_trim_interval,
            replication=replication_of(args),
            advertise=args.advertise,
            events_stream=args.events_stream,
            simulator=SimulatorSettings(
                latency_ms_min=args.channel_latency_ms[0],
                latency_ms_max=args.channel_latency_ms[1],
                decline_ppm=args.channel_decline_ppm,
                timeout_ppm=args.channel_timeout_ppm,
            ),
        )
    except ValueError as error:
        raise SystemExit(f"python -m server: {error}") from None
    if args.workers > 1:
        from server.workers import Supervisor

        return Supervisor(settings, args.workers, args.demo).run()
    import uvloop

    from server.app import serve

    uvloop.run(serve(settings, demo=args.demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
