"""How a client times, retries and keeps its connection, in one record.

Owns: ClientSettings, the defaults and their limits.
Used by: the clients and transport.py (the gRPC service config).
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientSettings:
    # Deadline of one attempt of a call (every call has one). Above the
    # server's wait for an external channel (5 s by default).
    attempt_timeout_s: float = 10.0
    # How long a call may take, all attempts together; past it, a request
    # that moves money or points counts as lost and is reversed.
    operation_timeout_s: float = 30.0
    # Waits between attempts: doubling from initial to max, with jitter.
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 2.0
    # Attempts gRPC itself makes inside one attempt on UNAVAILABLE and
    # RESOURCE_EXHAUSTED (its retry policy, 2 .. 5; same bytes, same serial).
    transport_attempts_max: int = 3
    # Serials reserved on disk at a time (serials.py).
    serial_block: int = 1000
    # Sign on again when the working key expires within this many seconds.
    key_rotation_margin_s: float = 300.0
    # HTTP/2 keepalive pings while calls are open. Tally's server (gRPC's
    # defaults) refuses pings more often than every 5 minutes without data;
    # lower it only together with the server's ping policy.
    keepalive_time_s: float = 300.0
    keepalive_timeout_s: float = 20.0
    # The reversal drainer: how often it looks for due reversals when idle,
    # and its longest wait between resends of one that fails.
    drain_interval_s: float = 1.0
    reversal_backoff_max_s: float = 30.0

    def __post_init__(self):
        for name in ("attempt_timeout_s", "operation_timeout_s", "backoff_initial_s", "backoff_max_s",
                     "keepalive_time_s", "keepalive_timeout_s", "drain_interval_s", "reversal_backoff_max_s"):
            value = getattr(self, name)
            if not 0 < value <= 86_400:
                raise ValueError(f"{name}: must be within 0 .. 86400 seconds (not 0), got {value}")
        if self.operation_timeout_s < self.attempt_timeout_s:
            raise ValueError("operation_timeout_s: must be at least attempt_timeout_s")
        if not 2 <= self.transport_attempts_max <= 5:
            raise ValueError("transport_attempts_max: must be within 2 .. 5 (gRPC's limit), "
                             f"got {self.transport_attempts_max}")
        if self.key_rotation_margin_s < 0:
            raise ValueError("key_rotation_margin_s: must be 0 or more")
