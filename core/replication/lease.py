"""The leader's lease: one key in a JetStream key-value bucket with a TTL.

Owns: the bucket (3 replicas, history 1, max age = the lease's TTL, so the
key disappears by itself when its holder stops renewing), taking the lease
(create: only if nobody holds it), renewing it (update with the revision
last written: fails if anybody else took it since), releasing it on a
clean stop (so a follower takes over at once), reading who holds it, and
the holder's own view of how long it may still act as leader.
Used by: core/replication/node.py.

Why the holder stops before the key expires: `valid_until` counts the TTL
from the moment the renewal was sent, on this host's monotonic clock
(which runs on while the process is stopped), less a margin; the server
counts it from when it stored the renewal, later. So the old leader has
stopped acting before any other node can take the key. The log's expected
sequence fences it a second time: the new leader appends a LEADER entry
before it takes any write, and every append of the old one fails after it.
"""

import logging
import time

import msgspec

from core.replication.errors import LogUnavailable
from core.replication.log import ReplicationLog

log = logging.getLogger(__name__)

BUCKET_DEFAULT = "TALLY_LOG_LEADER"
KEY = "leader"
TTL_S_DEFAULT = 3.0
TTL_S_MIN = 1.0
TTL_S_MAX = 60.0
# Renewed three times per TTL: two renewals may fail before it lapses.
RENEWALS_PER_TTL = 3
# Margin taken off the TTL on the holder's side (clock rates, scheduling).
MARGIN_FRACTION = 0.2
REQUEST_TIMEOUT_S = 1.0


class Holder(msgspec.Struct, frozen=True):
    """What the key holds: who leads and where clients find it."""

    node: str
    address: str
    since_ms: int


class Lease:
    def __init__(self, log_client: ReplicationLog, node: str, address: str, bucket: str = BUCKET_DEFAULT,
                 ttl_s: float = TTL_S_DEFAULT):
        assert TTL_S_MIN <= ttl_s <= TTL_S_MAX
        self.log = log_client
        self.node = node
        self.address = address
        self.bucket = bucket
        self.ttl_s = ttl_s
        self.revision = 0
        self.valid_until = 0.0
        self.renewed_at = 0.0
        self._kv = None

    @property
    def opened(self) -> bool:
        return self._kv is not None

    @property
    def renew_interval_s(self) -> float:
        return self.ttl_s / RENEWALS_PER_TTL

    def open(self):
        """Create or bind the bucket (retried by the caller on LogUnavailable)."""
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        async def bind():
            try:
                return await self.log.js.key_value(self.bucket)
            except BucketNotFoundError:
                return await self.log.js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, history=1, ttl=self.ttl_s, replicas=self.log.replicas,
                    storage=StorageType.FILE))

        self._kv = self._call(bind, 5.0)

    def held(self) -> bool:
        """Whether this node may act as leader right now."""
        return self.revision != 0 and time.monotonic() < self.valid_until

    def holder(self) -> Holder | None:
        """Who holds the lease (None: nobody; the key expired or was released)."""
        from nats.js.errors import KeyNotFoundError

        async def get():
            try:
                return await self._kv.get(KEY)
            except KeyNotFoundError:
                return None

        entry = self._call(get)
        if entry is None or not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=Holder)

    def try_take(self) -> bool:
        """Take the lease if nobody holds it; True if taken."""
        from nats.js.errors import KeyWrongLastSequenceError

        value = msgspec.json.encode(Holder(self.node, self.address, time.time_ns() // 1_000_000))
        sent = time.monotonic()

        async def create():
            try:
                return await self._kv.create(KEY, value)
            except KeyWrongLastSequenceError:
                return 0

        revision = self._call(create)
        if not revision:
            return False
        self._held_from(revision, sent)
        log.info("took the leader lease (revision %d, TTL %g s)", revision, self.ttl_s)
        return True

    def renew(self) -> bool:
        """Write the key again under the revision this node wrote last; False
        if another node took it meanwhile (then this node is no leader)."""
        from nats.js.errors import KeyWrongLastSequenceError

        value = msgspec.json.encode(Holder(self.node, self.address, time.time_ns() // 1_000_000))
        sent = time.monotonic()

        async def update():
            try:
                return await self._kv.update(KEY, value, last=self.revision)
            except KeyWrongLastSequenceError:
                return 0

        revision = self._call(update)
        if not revision:
            self.revision = 0
            self.valid_until = 0.0
            return False
        self._held_from(revision, sent)
        return True

    def release(self):
        """Give the lease up (a clean stop): followers need not wait the TTL."""
        if self.revision == 0:
            return
        revision, self.revision, self.valid_until = self.revision, 0, 0.0

        async def delete():
            await self._kv.delete(KEY, last=revision)

        try:
            self._call(delete)
        except Exception as error:  # noqa: BLE001 -- it lapses by itself anyway
            log.warning("could not release the leader lease (%s); it lapses in %g s", error, self.ttl_s)

    def lapse(self):
        """Forget the lease without telling anyone (stepping down)."""
        self.revision = 0
        self.valid_until = 0.0

    def _held_from(self, revision: int, sent: float):
        self.revision = revision
        self.renewed_at = sent
        self.valid_until = sent + self.ttl_s * (1 - MARGIN_FRACTION)

    def _call(self, make, timeout_s: float = REQUEST_TIMEOUT_S):
        try:
            return self.log.thread.call(make, timeout_s)
        except TimeoutError:
            raise LogUnavailable("the lease bucket did not answer in time") from None
        except LogUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 -- nats' timeouts and connection errors
            raise LogUnavailable(f"lease: {type(error).__name__} {error}") from None
