"""`python -m server.console --server HOST:PORT --listen HOST:PORT` (`tally
console`): the web console, a process of its own in front of a Tally
server's gRPC port.

A server started with --console-listen runs this itself (server/console/
serve.py); it can also run on its own, beside a server, another host even.
Either way the server must check back-office tokens (--back-office-auth):
the console asks it at start and refuses to serve otherwise, since its
users' permissions and organisations would then not be checked. Beyond the
loopback it speaks only HTTPS (--tls-cert, --tls-key; the same files give
its channel to a server with TLS), unless --insecure.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import sys

import grpc

from server.console.api import Api, ApiError, channel_to
from server.console.serve import bind, certificate_name, die_with_parent
from server.priority import below_payments
from server.settings import LOCALES, is_loopback

log = logging.getLogger("tally.console")

PROG = "python -m server.console"
SHUTDOWN_GRACE_S = 5
# Connections served at once; more wait in the listen backlog.
CONCURRENT_CONNECTIONS_MAX = 256
SERVER_READY_TIMEOUT_S = 30.0


def parse_args(argv, prog: str = PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="the Tally server's gRPC address")
    parser.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="HTTP(S) address (default %(default)s)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate; also the server's, to trust")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument("--locale", choices=LOCALES, default="zh-CN", help="the network's language (default %(default)s)")
    parser.add_argument("--utc-offset-minutes", type=int, default=0, help="the network's time zone, minutes east of UTC")
    parser.add_argument("--currency", default="CNY", help="the network's currency, ISO 4217 (default %(default)s)")
    parser.add_argument("--insecure", action="store_true", help="serve beyond the loopback without TLS anyway")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # a starting server's pipe: the bound port
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert is None and not args.insecure and not is_loopback(args.listen):
        parser.error(f"refusing to serve the console on {args.listen} without TLS (--tls-cert, --tls-key): passwords and "
                     "session cookies would cross the network in the clear (pass --insecure to do it anyway)")
    return args


async def require_token_checks(api: Api):
    """Refuse to serve a server that does not check back-office tokens: a
    back-office read without a token must be refused."""
    from tally.v1 import promotion_pb2

    await asyncio.wait_for(api.channel.channel_ready(), SERVER_READY_TIMEOUT_S)
    try:
        await api.call("", "promotions", "ListPromotions", promotion_pb2.ListPromotionsRequest(limit=1))
    except ApiError as error:
        if error.code == grpc.StatusCode.UNAUTHENTICATED:
            return
        raise SystemExit(f"python -m server.console: the server at the --server address answered {error.code.name}: "
                         f"{error.text}") from None
    raise SystemExit("python -m server.console: the server does not check back-office tokens: run it with "
                     "--back-office-auth, or every user would act for the whole network")


async def serve(args):
    import uvicorn

    from server.console.pages import ROUTES
    from server.console.web import Console, ConsoleSettings, build_app
    from server.tls import read_pem

    tls = args.tls_cert is not None
    if tls:
        certificate = read_pem(args.tls_cert, "--tls-cert")
        channel = channel_to(args.server, certificate, certificate_name(certificate))
    else:
        channel = channel_to(args.server)
    api = Api(channel)
    # A server that starts its console has checked its own --back-office-auth;
    # a console on its own asks.
    if args.ready_fd is None:
        await require_token_checks(api)
    console = Console(ConsoleSettings(args.locale, args.utc_offset_minutes, args.currency, tls), api)
    sock = bind(args.listen)
    config = uvicorn.Config(
        # httptools: HTTP/1.1 parsed in C (llhttp), not in h11's Python.
        build_app(console, ROUTES), loop="none", http="httptools", lifespan="off", log_config=None, access_log=False, server_header=False,
        proxy_headers=False, limit_concurrency=CONCURRENT_CONNECTIONS_MAX, timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    if args.ready_fd is not None:
        os.write(args.ready_fd, f"{port}\n".encode())
        os.close(args.ready_fd)
    else:
        log.info("console on %s://%s:%d for the server at %s", "https" if tls else "http", args.listen.rsplit(":", 1)[0],
                 port, args.server)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await api.close()


def main(argv=None, prog: str = PROG) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    from server.metrics import configure_logging

    configure_logging(args.log_level, args.log_format)
    # uvicorn's lines ("Started server process") say nothing the server's do not.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    if args.ready_fd is not None:
        die_with_parent()
    # The console yields the CPU to payments: pages may wait, sales should
    # not. Before uvloop and gRPC start their threads, which inherit it.
    if below_payments() == "unchanged":
        log.warning("could not lower the console's CPU priority")
    import uvloop

    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
