"""Back-office requests done once: the caller's request id.

Owns: the `once` database: for each (RPC, request id) a caller sent, the
request's fingerprint and the answer it got. A back-office RPC that moves
money or stock (CreatePacket, IssueCoupons) takes a request id from its
caller; the change that does the work records the answer in the same write
transaction, so a retry after a lost answer, a time-out or a crash gets the
first answer back (`replayed`) and nothing is done twice, and a crash before
the commit leaves nothing done at all.
Used by: server/promotion_service.py.

A request id is the caller's: 1 .. 64 printable characters (a UUID, or the
caller's own numbering). The same id with a different request is refused:
a caller reusing ids by mistake learns it instead of getting another answer.
"""

import hashlib

from core.errors import FailedPrecondition, InvalidInput

REQUEST_ID_LENGTH_MAX = 64
FINGERPRINT_BYTES = 16


def require_request_id(request_id: str, field: str = "request_id") -> str:
    if not 1 <= len(request_id) <= REQUEST_ID_LENGTH_MAX or not request_id.isprintable():
        raise InvalidInput(field, f"required, 1 .. {REQUEST_ID_LENGTH_MAX} printable characters: a retry with the same "
                                  "id is answered without being done twice", reason="REQUEST_ID_REQUIRED")
    return request_id


def fingerprint_of(request) -> bytes:
    """Identifies a request's content: a retry sends the same bytes."""
    return hashlib.blake2b(request.SerializeToString(deterministic=True), digest_size=FINGERPRINT_BYTES).digest()


def _key(rpc: str, request_id: str) -> bytes:
    return rpc.encode() + b"\x00" + request_id.encode()


def recall(txn, store, rpc: str, request_id: str, fingerprint: bytes) -> bytes | None:
    """The answer stored for this request id, or None if it is new. The same
    id with other content is FailedPrecondition."""
    stored = txn.get(_key(rpc, request_id), db=store.once)
    if stored is None:
        return None
    if stored[:FINGERPRINT_BYTES] != fingerprint:
        raise FailedPrecondition(f"request_id {request_id!r} was used for a different {rpc} request",
                                 field="request_id", reason="REQUEST_ID_REUSED")
    return stored[FINGERPRINT_BYTES:]


def remember(txn, store, rpc: str, request_id: str, fingerprint: bytes, answer: bytes):
    assert len(fingerprint) == FINGERPRINT_BYTES
    txn.put(_key(rpc, request_id), fingerprint + answer, db=store.once)
