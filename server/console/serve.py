"""Serving the console inside the Tally server process.

Owns: starting the console (--console-listen) on the server's own event
loop once the gRPC port is bound, and stopping it first at shutdown. The
ASGI server is uvicorn, embedded through its documented Config/Server API:
it runs as one more task of the server's loop (no thread, no process), and
the Tally server keeps SIGINT and SIGTERM to itself (uvicorn's own signal
capture is switched off). TLS: the server's --tls-cert and --tls-key, for
both the browser's HTTPS and the console's gRPC channel to the server.
Used by: server/app.py.

Why uvicorn: well kept, small, speaks HTTP/1.1 with h11 (pure Python, no
extra native code), and can serve on an event loop it did not create.
"""

import asyncio
import contextlib
import ipaddress
import logging
import socket

import uvicorn

from server.console.api import Api, channel_to
from server.console.pages import ROUTES
from server.console.web import Console, ConsoleSettings, build_app
from server.tls import read_pem

log = logging.getLogger("tally.console")

START_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 5
# Connections served at once; more wait in the listen backlog.
CONCURRENT_CONNECTIONS_MAX = 256


class _EmbeddedServer(uvicorn.Server):
    """uvicorn, minus its signal handlers: the Tally server owns SIGINT and
    SIGTERM and stops the console itself."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def grpc_target(listen: str, port: int) -> str:
    """Where the console reaches this server's gRPC port: the loopback when
    it listens on every address, else the address it listens on."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return f"127.0.0.1:{port}"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def certificate_name(pem: bytes) -> str | None:
    """The name to check the server's certificate against: its first DNS
    name, or its common name; None when it names IP addresses only."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
        if names.get_values_for_type(x509.IPAddress):
            return None
    except x509.ExtensionNotFound:
        pass
    common = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(common[0].value) if common else None


def bind(listen: str) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as error:
        sock.close()
        raise SystemExit(f"python -m server: cannot listen on --console-listen {listen}: {error.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class RunningConsole:
    def __init__(self, server: _EmbeddedServer, task: asyncio.Task, api: Api, port: int):
        self.server = server
        self.task = task
        self.api = api
        self.port = port

    async def stop(self):
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await self.task
        await self.api.close()


async def start_console(settings, grpc_port: int) -> RunningConsole:
    tls = settings.tls_cert_file is not None
    if tls:
        certificate = read_pem(settings.tls_cert_file, "--tls-cert")
        channel = channel_to(grpc_target(settings.listen, grpc_port), certificate, certificate_name(certificate))
    else:
        channel = channel_to(grpc_target(settings.listen, grpc_port))
    api = Api(channel)
    console = Console(ConsoleSettings(settings.locale, settings.utc_offset_minutes, settings.currency, tls), api)
    config = uvicorn.Config(
        build_app(console, ROUTES), loop="none", lifespan="off", log_config=None, access_log=False, server_header=False,
        proxy_headers=False, limit_concurrency=CONCURRENT_CONNECTIONS_MAX, timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ssl_certfile=settings.tls_cert_file if tls else None, ssl_keyfile=settings.tls_key_file if tls else None)
    sock = bind(settings.console_listen)
    port = sock.getsockname()[1]
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            raise SystemExit(f"python -m server: the console did not start on {settings.console_listen}")
        await asyncio.sleep(0.01)
    host = settings.console_listen.rsplit(":", 1)[0]
    # Tests read the bound port from this line (--console-listen HOST:0).
    log.info("console on %s://%s:%d (%s)", "https" if tls else "http", host, port, settings.locale)
    return RunningConsole(server, task, api, port)
