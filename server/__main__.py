"""`python -m server` (`tally serve`): run one Tally server.

Settings come from defaults (server/settings.py) < a TOML config file
(--config FILE or $TALLY_CONFIG) < TALLY_* environment variables < flags
(server/config.py); --print-config shows the result and exits.
"""

import argparse
import sys

from core import tools
from core.channels import SimulatorSettings, adapter_names, parse_adapter_choice
from core.errors import InvalidInput, TallyError
from core.replication import lease, log as replication_log, node as replication_node
from core.store import require_format_of
from server import config
from server.settings import (DEFAULTS, KERNELS, LOCALES, LOG_FORMATS, LOG_LEVELS, MAP_SIZE_GIB_MAX, MAP_SIZE_MIB_MIN,
                             PII_CIPHERS, ServerSettings)
from server.stream import STREAM_WINDOW_MAX
from server.workers import WORKERS_MAX

PROG = "python -m server"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Every flag takes its default from DEFAULTS (ServerSettings), and is a
    config file key and a TALLY_ variable by itself (server/config.py)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Tally transaction core: serves PaymentService and CardService over gRPC "
        "(with health checking and reflection) until SIGINT or SIGTERM. Every flag may also be set in the "
        "config file (its name without the dashes) or as TALLY_NAME (capitals, dashes as underscores); "
        "flags win over the environment, the environment over the file.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings (default: $TALLY_CONFIG)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged settings, each with where it came from, and exit")
    parser.add_argument("--json", action="store_true", help="--print-config as JSON")
    parser.add_argument("--data", metavar="DIR", help="data directory (LMDB); created if missing")
    parser.add_argument("--listen", default=DEFAULTS.listen, metavar="HOST:PORT", help="gRPC address (default %(default)s)")
    parser.add_argument("--demo", action="store_true", help="create demo cards if the data directory has none")
    parser.add_argument("--kernel", choices=KERNELS, default=DEFAULTS.kernel,
                        help="ledger kernel: the Cython one if built (auto), or the plain-Python reference")
    parser.add_argument("--map-size-gib", type=int, default=DEFAULTS.map_size_bytes // 2**30,
                        help=f"LMDB map size, GiB of address space, 1 .. {MAP_SIZE_GIB_MAX} (default %(default)s): writes "
                        "are refused with RESOURCE_EXHAUSTED (STORE_FULL) once the data fills it")
    parser.add_argument("--map-size-mib", type=int, metavar="MIB",
                        help=f"LMDB map size in MiB instead, at least {MAP_SIZE_MIB_MIN}: for tests and small demos")
    parser.add_argument("--utc-offset-minutes", type=int, default=DEFAULTS.utc_offset_minutes,
                        help="business day boundary, minutes east of UTC (480 for UTC+8)")
    parser.add_argument("--points-per-unit", type=int, default=DEFAULTS.points_per_unit,
                        help="points that pay one currency unit (default %(default)s)")
    parser.add_argument("--earn-points-per-unit", type=int, default=DEFAULTS.earn_points_per_unit,
                        help="points earned per currency unit paid (default %(default)s)")
    parser.add_argument("--channel-timeout-ms", type=int, default=DEFAULTS.channel_timeout_ms,
                        help="the longest a request waits for a payment channel, in all: a Pay with a channel part "
                        "answers within it plus a commit (terminals: set your deadline 2 s above it; default %(default)s)")
    parser.add_argument("--channel-adapter", nargs="+", default=[], metavar="CHANNEL=NAME",
                        help="the adapter of a channel (bank_card, wechat_pay, alipay): an entry point of the "
                        "tally.channels group (core/channels); default: the built-in simulator for each")
    simulator = DEFAULTS.simulator
    parser.add_argument("--channel-latency-ms", type=int, nargs=2, default=[simulator.latency_ms_min, simulator.latency_ms_max],
                        metavar=("MIN", "MAX"), help="simulated channel latency range")
    parser.add_argument("--channel-decline-ppm", type=int, default=simulator.decline_ppm,
                        help="simulated channel declines, per million")
    parser.add_argument("--channel-timeout-ppm", type=int, default=simulator.timeout_ppm,
                        help="simulated channel time-outs, per million")
    parser.add_argument("--queue-length-max", type=int, default=DEFAULTS.queue_length_max,
                        help="requests waiting for the writer before RESOURCE_EXHAUSTED (default %(default)s)")
    parser.add_argument("--stream-window", type=int, default=DEFAULTS.stream_window, metavar="OPS",
                        help=f"operations in flight per GatewayService stream, 1 .. {STREAM_WINDOW_MAX} (default %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULTS.workers, metavar="N",
                        help=f"server processes sharing the port (SO_REUSEPORT), 1 .. {WORKERS_MAX}; each opens "
                        "the store itself after the fork (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (HOST of --listen; 0 picks a "
                        "free port); with --workers, one endpoint sums all workers; default: no endpoint")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=DEFAULTS.log_format,
                        help="text lines, or JSON lines (one object a line) for log collectors (default %(default)s)")
    parser.add_argument("--log-requests", action="store_true",
                        help="log one line per answered request: request id (the client's x-request-id "
                        "metadata, or a new one), RPC, transport, terminal, serial, outcome, latency")
    parser.add_argument("--log-level", default=DEFAULTS.log_level, choices=LOG_LEVELS)
    parser.add_argument("--terminal-auth", action="store_true",
                        help="refuse terminal requests without a valid MAC under the terminal's working key "
                        "(x-tally-* metadata; see server/terminal_auth.py); needs --master-key-file or --pkcs11-module")
    parser.add_argument("--back-office-auth", action="store_true",
                        help="refuse the back-office RPCs of promotions, risk, loyalty, settlement and cards (create, "
                        "approve, limits, blacklist, rules, gifts, statements, day-end, card changes) without an AdminService token of an allowed role, and a `by` "
                        "other than the token's user (see server/back_office_auth.py)")
    parser.add_argument("--master-key-file", metavar="FILE",
                        help="master key the terminals' keys are sealed under (python -m core.admin master-key); "
                        "needed to register terminals and for sign-on")
    hsm = parser.add_argument_group("master key in an HSM (instead of --master-key-file; docs/security-keys.md)")
    hsm.add_argument("--pkcs11-module", metavar="SO", help="the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
    hsm.add_argument("--pkcs11-token-label", default=DEFAULTS.pkcs11_token_label, metavar="LABEL", help="the token holding the master key")
    hsm.add_argument("--pkcs11-key-label", default=DEFAULTS.pkcs11_key_label, metavar="LABEL",
                     help="the master key's label in the token (python -m core.admin master-key; default %(default)s)")
    hsm.add_argument("--pkcs11-pin-file", metavar="FILE",
                     help="file (mode 600) whose first line is the user PIN; default: the TALLY_PKCS11_PIN "
                     "environment variable (never the command line)")
    parser.add_argument("--pii-cipher", choices=PII_CIPHERS, default=DEFAULTS.pii_cipher,
                        help="customers' personal fields at rest, under each customer's own data key sealed by "
                        "the master key: AES-256-GCM or SM4-GCM (default %(default)s)")
    parser.add_argument("--insecure", action="store_true",
                        help="listen beyond the loopback without TLS, --terminal-auth and --back-office-auth anyway "
                        "(refused by default: secure mode is the default away from 127.0.0.1)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve gRPC over TLS with this certificate (chain)")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--currency", default=DEFAULTS.currency, metavar="CODE",
                        help="ISO 4217 code of the network's currency, sent with every amount (default %(default)s)")
    parser.add_argument("--console-listen", metavar="HOST:PORT",
                        help="serve the web console (server/console/) on this address, HTTPS with --tls-cert; needs "
                        "--back-office-auth; users log in with AdminService users; default: no console")
    parser.add_argument("--locale", choices=LOCALES, default=DEFAULTS.locale,
                        help="the network's language, the console's default for every user (default %(default)s)")
    parser.add_argument("--heap-trim-interval", type=float, default=DEFAULTS.heap_trim_interval_s, metavar="S",
                        help="hand the heap's free pages back to the OS every S seconds, so that RSS shows memory "
                        "in use, not a past burst's (glibc malloc_trim; server/heap.py); 0: never (default %(default)g)")
    add_replication_flags(parser)
    return parser


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


def check_replication_args(args):
    """The replication flags' own limits (ValueError names the flag)."""
    if args.replicate and args.workers > 1:
        raise InvalidInput("--replicate", "runs one process per node: drop --workers")
    if args.replicate and not args.node_id:
        raise InvalidInput("--node-id", "--replicate needs it: a name unique among the nodes of the log")
    if args.node_id and not (len(args.node_id) <= 32 and args.node_id.replace("-", "").replace("_", "").isalnum()):
        raise InvalidInput("--node-id", f"1 .. 32 letters, digits, - or _, got {args.node_id!r}")
    if not lease.TTL_S_MIN <= args.lease_ttl_s <= lease.TTL_S_MAX:
        raise InvalidInput("--lease-ttl-s", f"must be within {lease.TTL_S_MIN:g} .. {lease.TTL_S_MAX:g}, got {args.lease_ttl_s:g}")
    if not 0.1 <= args.append_timeout_s <= 60:
        raise InvalidInput("--append-timeout-s", f"must be within 0.1 .. 60, got {args.append_timeout_s:g}")


def settings_of(args) -> ServerSettings:
    """The typed settings of merged arguments; ValueError names a bad one."""
    check_replication_args(args)
    if not args.data:
        raise InvalidInput("--data", "give the data directory: --data DIR, TALLY_DATA=DIR or `data` in the config file")
    for channel, name in map(parse_adapter_choice, args.channel_adapter):
        if name not in adapter_names():
            raise InvalidInput("--channel-adapter", f"{channel}={name}: no adapter {name!r} is installed "
                               f"(installed: {', '.join(adapter_names())})")
    return ServerSettings(
            data_dir=args.data,
            listen=args.listen,
            kernel=args.kernel,
            map_size_bytes=args.map_size_mib * 2**20 if args.map_size_mib is not None else args.map_size_gib * 2**30,
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
            pkcs11_module=args.pkcs11_module,
            pkcs11_token_label=args.pkcs11_token_label,
            pkcs11_key_label=args.pkcs11_key_label,
            pkcs11_pin_file=args.pkcs11_pin_file,
            pii_cipher=args.pii_cipher,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            heap_trim_interval_s=args.heap_trim_interval,
            currency=args.currency,
            insecure=args.insecure,
            console_listen=args.console_listen,
            locale=args.locale,
            workers=args.workers,
            log_level=args.log_level,
            log_format=args.log_format,
            channel_adapters=dict(parse_adapter_choice(choice) for choice in args.channel_adapter),
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


def main(argv=None, prog: str = PROG):
    parser = build_parser(prog)
    try:
        merged = config.parse(parser, sys.argv[1:] if argv is None else argv)
        args = merged.args
        settings = settings_of(args)
        if args.print_config:
            print(config.render_json(merged, settings) if args.json else config.render_toml(merged))
            return 0
        tools.check_server_directory(settings.data_dir, settings.map_size_bytes)
        require_format_of(settings.data_dir)
    except (TallyError, ValueError) as error:
        return tools.say_error(prog, error)
    from server.metrics import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.workers > 1:
        from server.workers import Supervisor

        return Supervisor(settings, args.workers, args.demo).run()
    import uvloop

    from server.app import serve

    uvloop.run(serve(settings, demo=args.demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
