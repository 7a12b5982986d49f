"""Settings of one server process: the one typed object, with the one set of defaults.

Owns: the business parameters a request needs that the terminal does not
send (points rates, hold timeout, time zone) and the operating ones, each
with its default and its limits (checked when the object is made).
Used by: server/__main__.py (the flags take their defaults from DEFAULTS;
server/config.py merges a config file and TALLY_* variables under them),
server/app.py, the servicers.
"""

import ipaddress

import msgspec

from core import limits
from core.channels import SimulatorSettings
from core.replication.node import ReplicaSettings


HEAP_TRIM_INTERVAL_S_DEFAULT = 60.0
PII_CIPHERS = ("aes", "sm4")
# The console's languages (server/console/i18n.py).
LOCALES = ("zh-CN", "en")
HEAP_TRIM_INTERVAL_S_MAX = 86_400.0
MAP_SIZE_GIB_MAX = 16_384
# --map-size-mib, for tests and small demos: the smallest map that holds a
# demo directory with room for some writes.
MAP_SIZE_MIB_MIN = 8


def is_loopback(listen: str) -> bool:
    """Whether HOST:PORT listens on this machine only."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
KERNELS = ("auto", "cython", "reference")


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
    # Or the master key inside a PKCS#11 token (core/admin/hsm.py): the
    # library, the token's label, the key's label, and the file holding the
    # user PIN (None: the TALLY_PKCS11_PIN environment variable).
    pkcs11_module: str | None = None
    pkcs11_token_label: str = ""
    pkcs11_key_label: str = "tally-master"
    pkcs11_pin_file: str | None = None
    # Customers' personal fields at rest (core/admin/customers.py): "aes"
    # (AES-256-GCM) or "sm4" (SM4-GCM), under each customer's data key.
    pii_cipher: str = "aes"
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
    # Server processes sharing the port (server/workers.py).
    workers: int = 1
    log_level: str = "INFO"
    # "text" lines, or "json": one object a line, for log collectors.
    log_format: str = "text"
    # Channel name ("wechat_pay") -> adapter name (an entry point of the
    # "tally.channels" group, core/channels); a channel not named gets the
    # built-in simulator.
    channel_adapters: dict[str, str] = {}
    # ISO 4217 code of every amount the server answers with (the answers'
    # and records' `currency` field); one currency per network.
    currency: str = "CNY"
    # Listen beyond the loopback without TLS and both guards anyway.
    insecure: bool = False
    # The web console (server/console/): HOST:PORT of its HTTP(S) port;
    # None: no console. It needs back_office_auth (its users act through
    # the API with their own tokens) and, away from the loopback, TLS.
    console_listen: str | None = None
    # The network's language: the console's default for every user.
    locale: str = "zh-CN"

    def missing_for_secure_mode(self) -> list[str]:
        """What secure mode needs that these settings lack."""
        missing = []
        if self.tls_cert_file is None:
            missing.append("TLS (--tls-cert, --tls-key)")
        if not self.terminal_auth:
            missing.append("--terminal-auth")
        if not self.back_office_auth:
            missing.append("--back-office-auth")
        return missing

    def _check_console(self):
        if self.locale not in LOCALES:
            raise ValueError(f"--locale must be one of {', '.join(LOCALES)}, got {self.locale!r}")
        if self.console_listen is None:
            return
        if not self.back_office_auth:
            raise ValueError("--console-listen needs --back-office-auth: the console's users act through the API with "
                             "their own tokens, and without it the back-office RPCs would not check them")
        if self.workers > 1 or self.reuse_port:
            raise ValueError("--console-listen starts one console for one server process: with --workers, run "
                             "`python -m server.console --server HOST:PORT` beside the server")
        if self.tls_cert_file is None and not self.insecure and not is_loopback(self.console_listen):
            raise ValueError(f"refusing to serve the console on {self.console_listen} without TLS (--tls-cert, --tls-key): "
                             "passwords and session cookies would cross the network in the clear (pass --insecure to do "
                             "it anyway)")

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
        if self.master_key_file and self.pkcs11_module:
            raise ValueError("--master-key-file or --pkcs11-module: one master key, not both")
        if self.pkcs11_module and not self.pkcs11_token_label:
            raise ValueError("--pkcs11-module needs --pkcs11-token-label")
        if self.terminal_auth and not (self.master_key_file or self.pkcs11_module):
            raise ValueError("--terminal-auth needs --master-key-file or --pkcs11-module")
        if self.pii_cipher not in PII_CIPHERS:
            raise ValueError(f"--pii-cipher must be one of {', '.join(PII_CIPHERS)}, got {self.pii_cipher!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.replication is not None and self.reuse_port:
            raise ValueError("--replicate runs one process per node: drop --workers")
        if self.events_stream and self.replication is None:
            raise ValueError("--events-stream needs --replicate (events are read from the replicated log)")
        if not (len(self.currency) == 3 and self.currency.isascii() and self.currency.isalpha() and self.currency.isupper()):
            raise ValueError(f"--currency must be an ISO 4217 code, three capital letters (CNY), got {self.currency!r}")
        if not 0 <= self.heap_trim_interval_s <= HEAP_TRIM_INTERVAL_S_MAX:
            raise ValueError(f"--heap-trim-interval must be within 0 .. {HEAP_TRIM_INTERVAL_S_MAX:g} seconds")
        for name, allowed in (("kernel", KERNELS), ("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        from server.workers import WORKERS_MAX

        if not 1 <= self.workers <= WORKERS_MAX:
            raise ValueError(f"--workers must be within 1 .. {WORKERS_MAX}, got {self.workers}")
        if not MAP_SIZE_MIB_MIN * 2**20 <= self.map_size_bytes <= MAP_SIZE_GIB_MAX * 2**30:
            raise ValueError(f"--map-size-gib must be within 1 .. {MAP_SIZE_GIB_MAX} (LMDB's own default of 1 MiB "
                             f"would fill at once), got {self.map_size_bytes / 2**30:g}")
        self._check_console()
        missing = self.missing_for_secure_mode()
        if missing and not self.insecure and not is_loopback(self.listen):
            raise ValueError(f"refusing to listen on {self.listen} without {', '.join(missing)}: tokens, keys and card "
                             "data would cross the network in the clear or unchecked (pass --insecure to do it anyway)")


# The defaults every flag shows and falls back to (data_dir has none: --data,
# TALLY_DATA or the config file's `data` must name it).
DEFAULTS = ServerSettings(data_dir="")
