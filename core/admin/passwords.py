"""Password hashing: argon2id through argon2-cffi, 19 MiB, 2 passes, one
lane (OWASP's Password Storage Cheat Sheet's first argon2id configuration),
stored as the PHC string so that the parameters travel with each hash and
others are rolled in at the next login (`needs_rehash`: hashes made before
this profile, 64 MiB and 3 passes, or with argon2-cffi's default of 4 lanes,
are rehashed then).

Why this profile and not RFC 9106's 64 MiB: a 64 MiB check took about
190 ms of a core here, and even one a second at the lowest priority moved
Pay's p99 x1.34 on this 2-core server (issue 15's target: 1.2). 19 MiB and 2
passes take about 24 ms. What guards an online guess is the lockout (ten
wrong passwords lock the user, core/admin/users.py); the hash's cost guards
a stolen user table, and OWASP rates its five configurations, this one
included, as equal there. Why one lane: with 4, each check ran 4 threads
and a flood of logins took both cores from the payments.

An unknown username costs no hash: it is refused after a wait as long as a
recent real check took (`_mimic_check`), so that it cannot be told from a
wrong password by time, and a flood of made-up names costs no CPU.
Used by: core/admin/users.py. The server runs every check, real or
mimicked, in its one hashing thread (server/admin_service.py HashGate), so
they also queue alike.
"""

import collections
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.admin.errors import InvalidInput
from core.admin.model import PASSWORD_LENGTH_MAX, PASSWORD_LENGTH_MIN

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Checked against when the user does not exist and the recent durations are
# stale (see _mimic_check).
_DUMMY_HASH = _hasher.hash("tally: no such user, never a password")

# How many real checks' durations an unknown user's wait is drawn from.
RECENT_CHECKS_KEPT = 16
# When the newest real check is older than this, an unknown user gets a
# real check against the dummy hash instead of a wait: the durations follow
# the server's load (a check under load takes longer), at a cost of at most
# one hash this often.
RECENT_CHECKS_FRESH_S = 10.0

_recent_check_s: collections.deque = collections.deque(maxlen=RECENT_CHECKS_KEPT)
_newest_check_at_s = float("-inf")


def require_acceptable(password: str, field: str = "password"):
    if not PASSWORD_LENGTH_MIN <= len(password) <= PASSWORD_LENGTH_MAX:
        raise InvalidInput(field, f"length must be within {PASSWORD_LENGTH_MIN} .. {PASSWORD_LENGTH_MAX} characters, got {len(password)}")


def hash_password(password: str) -> str:
    require_acceptable(password)
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    """True if `password` is the one hashed; False for None (unknown user),
    after as long."""
    if password_hash is None and _mimic_check():
        return False
    started_s = time.monotonic()
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    finally:
        _checked(started_s, time.monotonic())


def _checked(started_s: float, ended_s: float):
    global _newest_check_at_s
    _recent_check_s.append(ended_s - started_s)
    _newest_check_at_s = ended_s


def _mimic_check() -> bool:
    """Wait as long as one of the recent real checks took, drawn at random;
    False (no wait) when none is recent enough to stand for one."""
    if not _recent_check_s or time.monotonic() - _newest_check_at_s > RECENT_CHECKS_FRESH_S:
        return False
    time.sleep(secrets.choice(_recent_check_s))
    return True


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
