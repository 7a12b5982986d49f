"""Password hashing: argon2id through argon2-cffi: 64 MiB, 3 passes (RFC
9106's low-memory profile) but one lane, stored as the PHC string so that the
parameters travel with each hash and others can be rolled in at the next
login (`needs_rehash`: hashes made with argon2-cffi's default of 4 lanes are
rehashed then).

Why one lane: with 4, each check runs 4 threads of the argon2 library and a
flood of logins took both cores of a small server from the payments (Pay's
p99 rose 1.9x). With one it runs in the server's single hashing thread at
the lowest priority (server/admin_service.py HashGate); the memory and work
per guess, what makes guessing costly, are the same.
Used by: core/admin/users.py. Each hash or check takes tens of
milliseconds on purpose: the server runs them in that thread.
"""

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.admin.errors import InvalidInput
from core.admin.model import PASSWORD_LENGTH_MAX, PASSWORD_LENGTH_MIN

_hasher = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=1)
# Checked against when the user does not exist, so that an unknown name
# takes as long to refuse as a wrong password.
_DUMMY_HASH = _hasher.hash("tally: no such user, never a password")


def require_acceptable(password: str, field: str = "password"):
    if not PASSWORD_LENGTH_MIN <= len(password) <= PASSWORD_LENGTH_MAX:
        raise InvalidInput(field, f"length must be within {PASSWORD_LENGTH_MIN} .. {PASSWORD_LENGTH_MAX} characters, got {len(password)}")


def hash_password(password: str) -> str:
    require_acceptable(password)
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    """True if `password` is the one hashed; False for None (unknown user),
    after the same work."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
