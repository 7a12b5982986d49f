"""What a running server tells its operators: Prometheus metrics and request logs.

Owns: the metric families (requests by RPC and outcome, latency histograms,
group-commit batch sizes and commit time, queue length, LMDB map use,
gateway streams), the `--metrics-port` HTTP endpoint, JSON-lines logging and
the one-line-per-request log with request ids.
Used by: server/errors.py (every unary RPC), server/stream.py (every stream
operation), server/app.py (commit hook, sampler, endpoint), server/workers.py
(one endpoint for all worker processes).

With --workers N the workers write their metrics to files under
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen by
that variable being set before prometheus_client is imported) and the
supervisor serves the sum; so prometheus_client is imported here lazily,
never at module import.

Observing is cheap when off: `OBSERVER` is a no-op until `configure` runs.
"""

import itertools
import json
import logging
import os
import time

log = logging.getLogger("tally.requests")

# Latency buckets, seconds: from a single commit (sub-millisecond) to the
# 400 ms p99 target and beyond.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 10.0)
# Batch sizes: powers of two up to BATCH_SIZE_MAX (8,189).
BATCH_SIZE_BUCKETS = tuple(float(2**power) for power in range(14))
COMMIT_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
SAMPLE_INTERVAL_S = 1.0

RESULT_OUTCOMES = None  # filled lazily: ResultCode number -> name


def _outcome_names() -> dict[int, str]:
    from tally.v1 import common_pb2

    return {value.number: value.name for value in common_pb2.ResultCode.DESCRIPTOR.values}


def outcome_of(answer) -> str:
    """The label of an answer: its ResultCode name, FOUND / NOT_FOUND for a
    QueryAnswer, OK for an answer with neither (a back-office record)."""
    global RESULT_OUTCOMES
    if RESULT_OUTCOMES is None:
        RESULT_OUTCOMES = _outcome_names()
    result = getattr(answer, "result", None)
    if result is None:
        found = getattr(answer, "found", None)
        return "OK" if found is None else "FOUND" if found else "NOT_FOUND"
    return RESULT_OUTCOMES.get(result, str(result))


class Metrics:
    """The metric families of one server process."""

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = registry if registry is not None else REGISTRY
        self.requests = Counter(
            "tally_requests_total", "Requests answered, by RPC, transport (unary or stream) and outcome "
            "(a ResultCode name, FOUND/NOT_FOUND for Query, or the gRPC status of an error)",
            ("rpc", "transport", "outcome"), registry=registry)
        self.latency = Histogram(
            "tally_request_seconds", "Time from a request's arrival to its answer, seconds",
            ("rpc", "transport"), buckets=LATENCY_BUCKETS_S, registry=registry)
        self.batch_size = Histogram(
            "tally_commit_batch_operations", "Operations per group commit (one LMDB write transaction, one fsync)",
            buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.commit_time = Histogram(
            "tally_commit_seconds", "Time to apply and commit one batch (kernel plus fsync), seconds",
            buckets=COMMIT_BUCKETS_S, registry=registry)
        self.queue_length = Gauge(
            "tally_commit_queue_length", "Requests waiting for the writer", registry=registry,
            multiprocess_mode="livesum")
        self.map_used = Gauge(
            "tally_lmdb_map_used_bytes", "Bytes of the LMDB map in use (pages up to the last one written)",
            registry=registry, multiprocess_mode="livemax")
        self.map_size = Gauge(
            "tally_lmdb_map_size_bytes", "Size of the LMDB map (address space reserved; --map-size-gib)",
            registry=registry, multiprocess_mode="livemax")
        self.streams = Gauge(
            "tally_gateway_streams_open", "GatewayService streams open", registry=registry, multiprocess_mode="livesum")
        self.stream_in_flight = Gauge(
            "tally_gateway_operations_in_flight", "Stream operations received and not yet answered",
            registry=registry, multiprocess_mode="livesum")
        self.window_refusals = Counter(
            "tally_gateway_window_refusals_total", "Stream messages refused because they exceeded the window",
            registry=registry)
        # Replication (--replicate; core/replication/node.py).
        self.append_time = Histogram(
            "tally_replication_append_seconds", "Time from a batch's append to the log to its quorum ack, seconds",
            buckets=COMMIT_BUCKETS_S, registry=registry)
        self.append_bytes = Histogram(
            "tally_replication_append_bytes", "Bytes of each log entry the leader appends (compressed changes)",
            buckets=tuple(float(4**power) for power in range(4, 13)), registry=registry)
        self.replication_role = Gauge(
            "tally_replication_leader", "1 on the leader of a replicated log, 0 on a follower or a single node",
            registry=registry, multiprocess_mode="livemax")
        self.replication_position = Gauge(
            "tally_replication_log_position", "The last log entry applied on this node", registry=registry,
            multiprocess_mode="livemax")
        self.replication_lag_entries = Gauge(
            "tally_replication_lag_entries", "Log entries past this node's position (0 on the leader)",
            registry=registry, multiprocess_mode="livemax")
        self.replication_lag = Gauge(
            "tally_replication_lag_seconds", "Seconds since this follower last saw it had applied the whole log "
            "(0 on the leader)", registry=registry, multiprocess_mode="livemax")
        self.leader_changes = Counter(
            "tally_replication_leader_changes_total", "Leader changes this node has seen in the log (LEADER entries)",
            registry=registry)
        self._leader_changes_seen = 0
        self.login_failures = Counter(
            "tally_login_failures_total", "Logins refused, by reason (WRONG_LOGIN, USER_LOCKED)", ("reason",),
            registry=registry)
        self.store_full = Gauge(
            "tally_store_full", "1 while writes are refused because the LMDB map or the disk is full, else 0",
            registry=registry, multiprocess_mode="livemax")
        self._children = {}

    def request(self, rpc: str, transport: str, outcome: str, seconds: float):
        key = (rpc, transport, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(rpc, transport, outcome),
                self.latency.labels(rpc, transport),
            )
        children[0].inc()
        children[1].observe(seconds)

    def batch(self, size: int, seconds: float):
        """GroupCommitter.on_batch: runs in the writer thread."""
        self.batch_size.observe(size)
        self.commit_time.observe(seconds)


    def append(self, seconds: float, size: int):
        """Replica.on_append: runs in the writer thread after each quorum ack."""
        self.append_time.observe(seconds)
        self.append_bytes.observe(size)

    def sample_replica(self, replica):
        status = replica.status()
        self.replication_role.set(1 if status.role == "leader" else 0)
        self.replication_position.set(status.position)
        self.replication_lag_entries.set(status.lag_entries)
        self.replication_lag.set(status.lag_ms / 1000)
        if status.leader_changes > self._leader_changes_seen:
            self.leader_changes.inc(status.leader_changes - self._leader_changes_seen)
            self._leader_changes_seen = status.leader_changes


class Observer:
    """Where the request paths report each answered request."""

    def __init__(self):
        self.metrics: Metrics | None = None
        self.log_requests = False
        # A plain attribute, read on every request: a property showed in the profile.
        self.active = False
        self._request_ids = itertools.count(1)
        self._pid = os.getpid()

    def configure(self, metrics: Metrics | None, log_requests: bool):
        self.metrics = metrics
        self.log_requests = log_requests
        self.active = metrics is not None or log_requests
        self._pid = os.getpid()

    def login_failed(self, reason: str):
        if self.metrics is not None:
            self.metrics.login_failures.labels(reason).inc()

    def new_request_id(self) -> str:
        """Unique within the server's life across worker processes: pid, then a counter."""
        return f"{self._pid:x}-{next(self._request_ids):x}"

    def request(self, rpc: str, transport: str, outcome: str, seconds: float, request=None, request_id: str | None = None):
        if self.metrics is not None:
            self.metrics.request(rpc, transport, outcome, seconds)
        if self.log_requests:
            fields = {
                "request_id": request_id or self.new_request_id(),
                "rpc": rpc,
                "transport": transport,
                "outcome": outcome,
                "latency_ms": round(seconds * 1000, 3),
            }
            terminal = getattr(request, "terminal", None)
            if terminal is not None:
                fields["terminal_id"] = terminal.terminal_id
                fields["serial"] = terminal.serial
            log.info("%s %s", rpc, outcome, extra={"fields": fields})


OBSERVER = Observer()


def request_id_of(context) -> str:
    """The client's x-request-id if it sent one (at most 64 characters are
    kept), else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return OBSERVER.new_request_id()


# ---------------------------------------------------------------- sampling


def lmdb_map_use(env) -> tuple[int, int]:
    """(bytes in use, map size) of an LMDB environment."""
    info = env.info()
    page_size = env.stat()["psize"]
    return (info["last_pgno"] + 1) * page_size, info["map_size"]


def sample(metrics: Metrics, committer, env):
    """Gauges that are states rather than events, read once per interval."""
    metrics.queue_length.set(committer.queue_length)
    if committer.log is not None:
        metrics.sample_replica(committer.log)
    metrics.store_full.set(1 if committer.store_full else 0)
    used, size = lmdb_map_use(env)
    metrics.map_used.set(used)
    metrics.map_size.set(size)


# ---------------------------------------------------------------- endpoint


def serve_metrics(port: int, host: str = "0.0.0.0", multiprocess_dir: str | None = None):
    """The HTTP endpoint /metrics, in a daemon thread. With multiprocess_dir,
    it sums what every worker process wrote there."""
    from prometheus_client import CollectorRegistry, start_http_server

    host = host.strip("[]")
    registry = None
    if multiprocess_dir is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
    if registry is None:
        server, thread = start_http_server(port, addr=host)
    else:
        server, thread = start_http_server(port, addr=host, registry=registry)
    return server.server_port


# ---------------------------------------------------------------- logs


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, and the
    fields a request line carries (request_id, rpc, outcome, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str):
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLinesFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
