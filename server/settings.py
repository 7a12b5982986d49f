"""Settings of one server process, from the command line.

Owns: the business parameters a request needs that the terminal does not
send (points rates, hold timeout, time zone) and the operating ones.
Used by: server/app.py (builds it from flags), the servicers.
"""

import msgspec

from core import limits
from core.channels import SimulatorSettings
from core.replication.node import ReplicaSettings


HEAP_TRIM_INTERVAL_S_DEFAULT = 60.0
HEAP_TRIM_INTERVAL_S_MAX = 86_400.0


class ServerSettings(msgspec.Struct, frozen=True):
    data_dir: str
    listen: str = "127.0.0.1:50051"
    kernel: str = "auto"
    map_size_bytes: int = 64 * 2**30
    # Business day boundary: minutes east of UTC (480 for China, UTC+8).
    utc_offset_minutes: int = 0
    # Points as cash: points that make one currency unit.
    points_per_unit: int = limits.POINTS_PER_UNIT_DEFAULT
    # Points earned per currency unit paid (not counting points).
    earn_points_per_unit: int = limits.EARN_POINTS_PER_UNIT_DEFAULT
    hold_timeout_s_default: int = limits.HOLD_TIMEOUT_S_DEFAULT
    # Days a points lot stays valid (24 months).
    lot_validity_days: int = limits.LOT_VALIDITY_DAYS_DEFAULT
    # Longest wait for an external channel before the payment is abandoned
    # (and the channel side reversed).
    channel_timeout_ms: int = 5000
    # How often expired pre-authorizations are swept.
    hold_sweep_interval_s: float = 5.0
    # Requests waiting for the writer before new ones get RESOURCE_EXHAUSTED.
    queue_length_max: int = limits.QUEUE_LENGTH_MAX
    # Seconds a stopping server gives calls in flight to finish.
    shutdown_grace_s: float = 10.0
    simulator: SimulatorSettings = SimulatorSettings()
    # Operations in flight per gateway stream (GatewayService.Exchange).
    stream_window: int = 2048
    # Port of the Prometheus endpoint /metrics; None: no endpoint.
    metrics_port: int | None = None
    # Write each worker's metrics for the supervisor to serve (--workers).
    metrics_multiprocess: bool = False
    # One JSON-able log line per answered request, with its request id.
    log_requests: bool = False
    # Let several worker processes listen on the same port (--workers > 1).
    reuse_port: bool = False
    # Settle what a crash left waiting for a channel before serving. With
    # --workers only the first worker does it, before the others start.
    recover: bool = True
    # Terminal authentication (server/terminal_auth.py): every terminal
    # request must carry a MAC under its terminal's working key.
    terminal_auth: bool = False
    # Back-office RPCs (promotions, risk, loyalty, settlement, cards) need an
    # AdminService token with an allowed role (server/back_office_auth.py).
    back_office_auth: bool = False
    # The master key the terminals' keys are sealed under (core/admin/keys.py);
    # needed by --terminal-auth, terminal registration and sign-on.
    master_key_file: str | None = None
    # TLS on the gRPC port when both are set (PEM files); then plaintext is refused.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Seconds between handing the heap's free pages back to the OS
    # (server/heap.py); 0: never.
    heap_trim_interval_s: float = HEAP_TRIM_INTERVAL_S_DEFAULT
    # A node of a replicated log (--replicate, --node-id; core/replication/);
    # None: the embedded single node.
    replication: ReplicaSettings | None = None
    # The gRPC address clients are sent to when this node leads (followers
    # name it in their refusals); "" : the address it listens on.
    advertise: str = ""
    # The leader publishes committed transactions as tally.v1 events on this
    # JetStream stream (server/events.py); "": no events.
    events_stream: str = ""

    def __post_init__(self):
        if not 0 < self.points_per_unit <= limits.POINTS_PER_UNIT_MAX:
            raise ValueError(f"points_per_unit must be within 1 .. {limits.POINTS_PER_UNIT_MAX}")
        if not 0 <= self.earn_points_per_unit <= limits.EARN_POINTS_PER_UNIT_MAX:
            raise ValueError(f"earn_points_per_unit must be within 0 .. {limits.EARN_POINTS_PER_UNIT_MAX}")
        if not 0 < self.hold_timeout_s_default <= limits.HOLD_TIMEOUT_S_MAX:
            raise ValueError(f"hold_timeout_s_default must be within 1 .. {limits.HOLD_TIMEOUT_S_MAX}")
        if not 0 < self.queue_length_max <= limits.QUEUE_LENGTH_MAX:
            raise ValueError(f"queue_length_max must be within 1 .. {limits.QUEUE_LENGTH_MAX}")
        from server.stream import STREAM_WINDOW_MAX

        if not 0 < self.stream_window <= STREAM_WINDOW_MAX:
            raise ValueError(f"stream_window must be within 1 .. {STREAM_WINDOW_MAX}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be within 0 .. 65535")
        if not -14 * 60 <= self.utc_offset_minutes <= 14 * 60:
            raise ValueError("utc_offset_minutes must be within -840 .. 840")
        if self.terminal_auth and not self.master_key_file:
            raise ValueError("--terminal-auth needs --master-key-file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.replication is not None and self.reuse_port:
            raise ValueError("--replicate runs one process per node: drop --workers")
        if self.events_stream and self.replication is None:
            raise ValueError("--events-stream needs --replicate (events are read from the replicated log)")
        if not 0 <= self.heap_trim_interval_s <= HEAP_TRIM_INTERVAL_S_MAX:
            raise ValueError(f"--heap-trim-interval must be within 0 .. {HEAP_TRIM_INTERVAL_S_MAX:g} seconds")
