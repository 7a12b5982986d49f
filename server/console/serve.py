"""Serving the console: its own process, a client of the server's gRPC port.

Owns: the console process (`python -m server.console`, server/console/
__main__.py: uvicorn serving the Starlette app on its own event loop) and
its start and stop by the Tally server (`--console-listen`): the server
starts it once its gRPC port is bound, waits until it listens (a pipe it
writes the bound port to), stops it first at shutdown (SIGTERM: uvicorn
finishes the requests in flight), and the console dies with the server
(PR_SET_PDEATHSIG) if the server is killed.
Used by: server/app.py (the server's side), server/console/__main__.py.

Why a process of its own and not a task of the server's event loop: a page
costs 9 to 15 ms of CPU (rendering, and both ends of its gRPC calls when
they share a process; measured with `python -m bench console`), and in the
server's loop that time is taken from Pay: Pay's p99 rose by about a fifth
with 10 pages a second. In its own process the console costs the server
only the RPCs it answers, like any other client, and it runs at the
lowest CPU priority (server/priority.py: the kernel's idle class), so that
where cores are short payments go first and pages wait; the console's
rules are still all the API's. Why uvicorn: well kept, small, HTTP/1.1
parsed by httptools (llhttp, in C; h11's pure Python was about a tenth of
a page's CPU), TLS from the server's own certificate files.
"""

import asyncio
import ctypes
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys

log = logging.getLogger("tally.console")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


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
    except (OSError, ValueError) as error:
        sock.close()
        raise SystemExit(f"python -m server.console: cannot listen on {listen}: {getattr(error, 'strerror', error)}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def die_with_parent():
    """Linux: SIGTERM this process when the server that started it dies,
    however it dies (a SIGKILL leaves no console behind)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------- the server's side


class RunningConsole:
    def __init__(self, process: subprocess.Popen, port: int):
        self.process = process
        self.port = port

    async def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


def console_command(settings, grpc_port: int, ready_fd: int) -> list[str]:
    command = [sys.executable, "-m", "server.console", "--server", grpc_target(settings.listen, grpc_port),
               "--listen", settings.console_listen, "--locale", settings.locale,
               "--utc-offset-minutes", str(settings.utc_offset_minutes), "--currency", settings.currency,
               "--ready-fd", str(ready_fd), "--log-level", settings.log_level, "--log-format", settings.log_format]
    if settings.tls_cert_file is not None:
        command += ["--tls-cert", settings.tls_cert_file, "--tls-key", settings.tls_key_file]
    if settings.insecure:
        command.append("--insecure")
    return command


async def start_console(settings, grpc_port: int) -> RunningConsole:
    """Start the console process and wait until it listens."""
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(console_command(settings, grpc_port, write_end), pass_fds=(write_end,),
                                   stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    try:
        port_text = await asyncio.wait_for(asyncio.to_thread(_read_line, read_end), START_TIMEOUT_S)
    except asyncio.TimeoutError:
        process.kill()
        raise SystemExit(f"python -m server: the console did not start on {settings.console_listen}") from None
    finally:
        os.close(read_end)
    if not port_text.isdigit():
        process.wait()
        raise SystemExit(f"python -m server: the console did not start on {settings.console_listen} (see above)")
    scheme = "https" if settings.tls_cert_file is not None else "http"
    # Tests read the bound port from this line (--console-listen HOST:0).
    log.info("console on %s://%s:%s (%s; process %d)", scheme, settings.console_listen.rsplit(":", 1)[0], port_text,
             settings.locale, process.pid)
    return RunningConsole(process, int(port_text))


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
