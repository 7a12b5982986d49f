"""The gRPC side of a client: channel options, retry policy, what a failure means.

Owns: the service config (gRPC's own retry policy for the terminal
services), keepalive, the classification of a failed attempt (retry with
the same serial, answer lost, or refused before it ran) and the backoff.
Used by: client.py, aio.py, gateway.py.

Two layers of retry, both with the same bytes and so the same serial:
- gRPC's retry policy, inside one attempt: UNAVAILABLE (no connection, or
  the server stopping) and RESOURCE_EXHAUSTED (the server's queue is full)
  answered before the call committed are retried at once by the channel.
- The client's loop, across attempts, until the operation's deadline:
  also DEADLINE_EXCEEDED (an attempt's deadline passed: the server may
  have done it; the retry returns the stored answer if so) and everything
  gRPC gave up on.
"""

import enum
import json
import random

import grpc

from tally_client.settings import ClientSettings

RETRIED_BY_GRPC = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
TERMINAL_SERVICES = ("tally.v1.PaymentService", "tally.v1.CardService", "tally.v1.LoyaltyService",
                     "tally.v1.TerminalKeyService", "tally.v1.SettlementService")


class Disposition(enum.Enum):
    # Send the same bytes again (same serial), until the operation's deadline.
    RETRY = "retry"
    # The server may have acted and will not say: the answer is lost.
    LOST = "lost"
    # The server refused the request before it ran: nothing happened.
    REFUSED = "refused"


_RETRY = frozenset((grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED))
_LOST = frozenset((grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
                   grpc.StatusCode.CANCELLED))


def disposition(code: grpc.StatusCode) -> Disposition:
    if code in _RETRY:
        return Disposition.RETRY
    if code in _LOST:
        return Disposition.LOST
    return Disposition.REFUSED


def disposition_of(error) -> Disposition:
    """The disposition of a TallyRpcError (a sign-on that failed, say)."""
    if error.status not in grpc.StatusCode.__members__:
        return Disposition.LOST
    return disposition(grpc.StatusCode[error.status])


# A refusal after an attempt that may have reached the server (it timed out,
# the connection dropped) does not prove that nothing happened: the answer
# counts as lost. RESOURCE_EXHAUSTED is refused before anything runs.
NOT_RUN = frozenset(("RESOURCE_EXHAUSTED",))


def backoff_s(attempt: int, settings: ClientSettings) -> float:
    """The wait before attempt number `attempt` + 1 (full jitter: spreads the
    terminals of a station that lost the server at the same moment)."""
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * 2**min(attempt, 20))
    return random.uniform(settings.backoff_initial_s / 2, ceiling)


def service_config(settings: ClientSettings) -> dict:
    return {
        "methodConfig": [{
            "name": [{"service": service} for service in TERMINAL_SERVICES],
            "retryPolicy": {
                "maxAttempts": settings.transport_attempts_max,
                "initialBackoff": f"{settings.backoff_initial_s:.3f}s",
                "maxBackoff": f"{settings.backoff_max_s:.3f}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": list(RETRIED_BY_GRPC),
            },
        }],
    }


def channel_options(settings: ClientSettings) -> list[tuple[str, object]]:
    return [
        ("grpc.service_config", json.dumps(service_config(settings))),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        # A channel down reconnects quickly: a POS waits for the next sale.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", int(settings.backoff_max_s * 1000)),
    ]


def open_channel(target: str, settings: ClientSettings,
                 credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    options = channel_options(settings)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(target: str, settings: ClientSettings, credentials: grpc.ChannelCredentials | None = None):
    options = channel_options(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)
