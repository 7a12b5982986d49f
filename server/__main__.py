"""`python -m server --data DIR --listen HOST:PORT`: run one Tally server."""

import argparse
import asyncio
import logging
import sys

from core import limits
from core.channels import SimulatorSettings
from core.store import MAP_SIZE_BYTES_DEFAULT
from server.settings import ServerSettings


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
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
            simulator=SimulatorSettings(
                latency_ms_min=args.channel_latency_ms[0],
                latency_ms_max=args.channel_latency_ms[1],
                decline_ppm=args.channel_decline_ppm,
                timeout_ppm=args.channel_timeout_ppm,
            ),
        )
    except ValueError as error:
        raise SystemExit(f"python -m server: {error}") from None
    import uvloop

    from server.app import serve

    uvloop.run(serve(settings, demo=args.demo))


if __name__ == "__main__":
    main()
