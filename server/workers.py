"""`python -m server --workers N`: N server processes on one port.

Owns: the supervisor process: reserving the port, forking the workers (each
opens its own LMDB environment after the fork; the supervisor never opens
the store nor touches gRPC), forwarding SIGTERM/SIGINT, serving the summed
Prometheus metrics of all workers, and the exit code.
Used by: server/__main__.py.

Why this is safe: the Cython kernel keeps no state across batches, every
batch is one LMDB write transaction, and LMDB serialises writers across
processes with its lock file; so N writers (one per worker) on the same
files are N group committers taking turns, each commit durable. Readers
never block. The kernel allocates transaction ids from a counter inside the
write transaction, so ids stay unique across workers.

Order of start: worker 0 opens the store, settles what a crash left
waiting for a channel, seeds demo data if asked, and starts serving; only
then are workers 1 .. N-1 forked (they skip recovery: it must not race with
payments worker 0 is already serving). SO_REUSEPORT spreads connections,
not requests, over the workers: a client (or a gateway stream) stays on the
worker that accepted its connection.

A worker that dies unexpectedly makes the supervisor stop the others and
exit 1: the service manager restarts the whole set, and the restart runs
recovery. Clean shutdown: SIGTERM to the supervisor is forwarded to every
worker, each drains (finishes calls in flight, commits) and exits 0; the
supervisor exits 0 when all did.
"""

import logging
import os
import select
import shutil
import signal
import socket
import tempfile

import msgspec

from server.settings import ServerSettings

log = logging.getLogger("tally.supervisor")

WORKERS_MAX = 64
WORKER_READY_TIMEOUT_S = 300.0


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Bind (without listening) a SO_REUSEPORT socket on the address, so
    that --listen HOST:0 gets one port number that every worker then binds
    too. A socket that does not listen receives no connections."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))
    bound_port = reserved.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    return reserved, f"{shown_host}:{bound_port}"


def _worker_main(settings: ServerSettings, demo: bool, ready_fd: int) -> int:
    """In the forked child: serve until told to stop."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    import uvloop

    from server.app import serve

    def ready(_port):
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    try:
        uvloop.run(serve(settings, demo=demo, ready=ready))
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        return 1
    return 0


def _fork_worker(settings: ServerSettings, demo: bool) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 1
        try:
            code = _worker_main(settings, demo, write_fd)
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _wait_ready(pid: int, read_fd: int) -> bool:
    """True once the worker is serving; False if it exited first."""
    try:
        readable, _, _ = select.select([read_fd], [], [], WORKER_READY_TIMEOUT_S)
        return bool(readable) and os.read(read_fd, 1) == b"1"
    finally:
        os.close(read_fd)


class Supervisor:
    def __init__(self, settings: ServerSettings, workers: int, demo: bool):
        assert 2 <= workers <= WORKERS_MAX
        self.settings = settings
        self.workers = workers
        self.demo = demo
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False

    def _signal(self, signum, _frame):
        if not self.stopping:
            log.info("supervisor: signal %d, stopping %d workers", signum, len(self.children))
        self.stopping = True
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        reserved, listen = reserve_port(self.settings.listen)
        metrics_dir = None
        if self.settings.metrics_port is not None:
            # Must be set before any process imports prometheus_client.
            metrics_dir = tempfile.mkdtemp(prefix="tally-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        try:
            return self._run(listen, metrics_dir)
        finally:
            reserved.close()
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def _run(self, listen: str, metrics_dir: str | None) -> int:
        for index in range(self.workers):
            if self.stopping:
                break
            settings = msgspec.structs.replace(
                self.settings, listen=listen, reuse_port=True, recover=(index == 0),
                metrics_port=None, metrics_multiprocess=metrics_dir is not None,
            )
            pid, read_fd = _fork_worker(settings, self.demo and index == 0)
            self.children[pid] = index
            if not _wait_ready(pid, read_fd):
                log.error("supervisor: worker %d (pid %d) did not start", index, pid)
                self._signal(signal.SIGTERM, None)
                break
        if metrics_dir is not None and not self.stopping:
            from server.metrics import serve_metrics

            port = serve_metrics(self.settings.metrics_port, host=listen.rsplit(":", 1)[0].strip("[]"), multiprocess_dir=metrics_dir)
            log.info("metrics on http://%s:%d/metrics (all %d workers)", listen.rsplit(":", 1)[0], port, self.workers)
        if not self.stopping:
            from core.ledger import load_kernel

            # Same words as a single server's line: tests and tools wait for it.
            log.info("serving on %s (kernel: %s, data: %s, workers: %d)", listen, load_kernel(self.settings.kernel).name,
                     self.settings.data_dir, self.workers)
        return self._reap(metrics_dir)

    def _reap(self, metrics_dir: str | None) -> int:
        failed = False
        while self.children:
            pid, status = os.waitpid(-1, 0)
            index = self.children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if metrics_dir is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, metrics_dir)
            if code != 0:
                failed = True
            if not self.stopping:
                log.error("supervisor: worker %d (pid %d) exited with %d; stopping the others", index, pid, code)
                self._signal(signal.SIGTERM, None)
            else:
                log.info("supervisor: worker %d (pid %d) stopped with %d", index, pid, code)
        return 1 if failed else 0
