"""Users, passwords and bearer tokens.

Owns: the admin_users and admin_sessions databases. Login checks the
password (argon2id, core/admin/passwords.py) and gives an opaque random
token (32 bytes, URL-safe base64), valid for the domain's token_validity_s;
only the token's SHA-256 is stored. Every call with a token reads the
session and the user again, so disabling a user, changing a role or a
password takes effect on the next call.

Lockout: each wrong password counts against the user; at the domain's
login_failures_max in a row the user is locked for login_lockout_s (even
the right password is refused then, without hashing), until an
administrator unlocks it with a reason. The audit log gets one entry when a
user is locked and one when it is unlocked, not one per failure, so a
flood of wrong logins cannot grow it without bound; failures are counted
in the user record and in the server's metrics.
Used by: core.admin.Admin (its UsersMixin), server/admin_service.py.
"""

import hashlib
import logging
import re
import secrets

import msgspec

from core.admin import passwords
from core.admin.access import Actor, require_range, require_text, require_visible, subtree, visible
from core.admin.base import AdminBase
from core.admin.directory import collect
from core.admin.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from core.admin.model import (
    LIST_LIMIT_MAX,
    ORG_ID_MAX,
    REASON_LENGTH_MAX,
    USERNAME_LENGTH_MAX,
    Role,
    Session,
    User,
    pack,
    unpack,
)
from core.store import rows

log = logging.getLogger("tally.admin")

TOKEN_BYTES = 32
TOKEN_LENGTH_MAX = 100
# How long a verified token's actor is kept in memory, and how many are.
# Safe because every change made through this Admin (logout, a user
# disabled, a role changed) forgets them all at once (UsersMixin._write),
# and a session's own expiry still holds to the millisecond; what another
# process changes (another --workers worker, `python -m server.cli` on the
# directory) counts here at most TOKEN_KEPT_MS later.
TOKEN_KEPT_MS = 2_000
TOKENS_KEPT_MAX = 1_024
# Expired sessions removed at each login, at most: a bound on the work one
# login does.
EXPIRED_SESSIONS_SWEPT_MAX = 100
WRONG_LOGIN_TEXT = "wrong username or password"
LOCKED_TEXT = "user locked after too many wrong passwords: retry after the lockout, or ask an administrator to unlock it"
_USERNAME = re.compile(r"[A-Za-z0-9._@\-]+\Z")


def require_username(username: str, field: str = "username") -> str:
    require_text(username, field, 1, USERNAME_LENGTH_MAX)
    if not _USERNAME.match(username):
        raise InvalidInput(field, "letters, digits, '.', '_', '@' and '-' only")
    return username


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def actor_of(user: User) -> Actor:
    return Actor(f"user:{user.username}", user.org_id, user.role)


class UsersMixin(AdminBase):
    def _user(self, txn, username: str) -> User | None:
        value = txn.get(username.encode(), db=self.store.admin_users) if self.store.admin_users is not None else None
        return None if value is None else unpack(User, value)

    def _visible_user(self, txn, actor: Actor, username: str) -> User:
        user = self._user(txn, username)
        if user is None or not visible(txn, self.store, actor, user.org_id):
            raise NotFound(f"user {username} not found")
        return user

    # ------------------------------------------------------------ sessions

    def login(self, username: str, password: str) -> tuple[str, User, int]:
        """(token, user, expires_ms). Wrong name, wrong password and a
        disabled user are refused in the same words and the same time; a
        locked user is refused at once (see the module's docstring)."""
        require_username(username)
        require_text(password, "password", 1, passwords.PASSWORD_LENGTH_MAX)
        user = self._read(lambda txn: self._user(txn, username))
        if user is not None and user.locked_until_ms > self.clock():
            log.warning("login refused for %r: locked", username)
            raise Unauthenticated(LOCKED_TEXT, reason="USER_LOCKED")
        matches = passwords.password_matches(user.password_hash if user else None, password)
        if not matches or not user.enabled:
            if user is not None and not matches:
                self._write(lambda txn: self._count_failure(txn, username))
            log.warning("login refused for %r", username)
            raise Unauthenticated(WRONG_LOGIN_TEXT, reason="WRONG_LOGIN")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        rehashed = passwords.hash_password(password) if passwords.needs_rehash(user.password_hash) else None

        def change(txn):
            now = self.clock()
            self._sweep_sessions(txn, now)
            expires_ms = now + self.parameters_of(txn, user.org_id).token_validity_s * 1000
            txn.put(token_key(token), pack(Session(username, expires_ms, now)), db=self.store.admin_sessions)
            current = self._user(txn, username) or user
            if rehashed is not None or current.failed_logins:
                after = msgspec.structs.replace(current, password_hash=rehashed or current.password_hash, failed_logins=0)
                txn.put(username.encode(), pack(after), db=self.store.admin_users)
            self._audit(txn, actor_of(user), "Login", f"user:{username}", user.org_id)
            return expires_ms

        return token, user, self._write(change)

    def _count_failure(self, txn, username: str):
        """One more wrong password; at the domain's limit, the user is
        locked (and that, once, goes to the audit log)."""
        user = self._user(txn, username)
        if user is None:
            return
        parameters = self.parameters_of(txn, user.org_id)
        failed = user.failed_logins + 1
        locked_until_ms = user.locked_until_ms
        if failed >= parameters.login_failures_max:
            locked_until_ms = self.clock() + parameters.login_lockout_s * 1000
            failed = 0
            self._audit(txn, actor_of(user), "UserLocked", f"user:{username}", user.org_id, None,
                        {"after_failures": parameters.login_failures_max, "locked_until_ms": locked_until_ms})
            log.warning("user %r locked until %d after %d wrong passwords", username, locked_until_ms,
                        parameters.login_failures_max)
        txn.put(username.encode(), pack(msgspec.structs.replace(user, failed_logins=failed, locked_until_ms=locked_until_ms)),
                db=self.store.admin_users)

    def unlock_user(self, actor: Actor, username: str, reason: str) -> User:
        """Lift a lockout before its time (an administrator of the user's
        organisation), with the reason in the audit log."""
        require_text(reason, "reason", 1, REASON_LENGTH_MAX)

        def change(txn):
            user = self._visible_user(txn, actor, username)
            if user.locked_until_ms <= self.clock() and not user.failed_logins:
                raise FailedPrecondition(f"user {username} is not locked", reason="NOT_LOCKED")
            after = msgspec.structs.replace(user, failed_logins=0, locked_until_ms=0)
            txn.put(username.encode(), pack(after), db=self.store.admin_users)
            self._audit(txn, actor, "UnlockUser", f"user:{username}", user.org_id, None, {"reason": reason})
            return after

        return self._write(change)

    def _sweep_sessions(self, txn, now: int):
        ended = [key for key, value in rows(txn, self.store.admin_sessions) if unpack(Session, value).expires_ms <= now]
        for key in ended[:EXPIRED_SESSIONS_SWEPT_MAX]:
            txn.delete(key, db=self.store.admin_sessions)

    def authenticate(self, token: str) -> Actor:
        """The actor a bearer token stands for, or Unauthenticated. A token
        verified in the last TOKEN_KEPT_MS is answered from memory (see
        _kept_actors): a console page makes several calls with one token,
        and each read of the session and the user took the event loop
        serving Pay about 0.1 ms."""
        if not 0 < len(token) <= TOKEN_LENGTH_MAX:
            raise Unauthenticated("no token: call Login and send 'authorization: Bearer TOKEN'")
        now = self.clock()
        kept = self._kept_actors.get(token)
        if kept is not None and now < kept[0]:
            return kept[1]

        def look(txn):
            value = txn.get(token_key(token), db=self.store.admin_sessions)
            if value is None:
                raise Unauthenticated("unknown or ended token: log in again")
            session = unpack(Session, value)
            if session.expires_ms <= now:
                raise Unauthenticated("token expired: log in again")
            user = self._user(txn, session.username)
            if user is None or not user.enabled:
                raise Unauthenticated("user disabled")
            return actor_of(user), session.expires_ms

        actor, expires_ms = self._read(look)
        if len(self._kept_actors) >= TOKENS_KEPT_MAX:
            self._kept_actors.clear()
        self._kept_actors[token] = (min(now + TOKEN_KEPT_MS, expires_ms), actor)
        return actor

    def _write(self, change):
        """Every admin change forgets the verified tokens: a logout, a user
        disabled, a role or organisation changed count from the next call."""
        try:
            return super()._write(change)
        finally:
            self._kept_actors.clear()

    def logout(self, actor: Actor, token: str):
        def change(txn):
            txn.delete(token_key(token), db=self.store.admin_sessions)
            self._audit(txn, actor, "Logout", actor.name, actor.org_id)

        self._write(change)

    # ------------------------------------------------------------ users

    def create_user(self, actor: Actor, username: str, password: str, org_id: int, role: int) -> User:
        require_username(username)
        require_range(org_id, "org_id", 1, ORG_ID_MAX)
        if role not in Role.__members__.values():
            raise InvalidInput("role", "must be ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE or AUDITOR")
        password_hash = passwords.hash_password(password)

        def change(txn):
            require_visible(txn, self.store, actor, org_id)
            if self._user(txn, username) is not None:
                raise AlreadyExists(f"username {username} is taken")
            now = self.clock()
            user = User(username, org_id, Role(role), password_hash, True, now, now)
            txn.put(username.encode(), pack(user), db=self.store.admin_users)
            self._audit(txn, actor, "CreateUser", f"user:{username}", org_id, None, user)
            return user

        return self._write(change)

    def update_user(self, actor: Actor, username: str, role: int | None = None, enabled: bool | None = None) -> User:
        if role is not None and role not in Role.__members__.values():
            raise InvalidInput("role", "must be ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE or AUDITOR")

        def change(txn):
            before = self._visible_user(txn, actor, username)
            after = msgspec.structs.replace(
                before, role=before.role if role is None else Role(role), enabled=before.enabled if enabled is None else enabled)
            if actor.name == f"user:{username}" and (after.role != before.role or not after.enabled):
                raise FailedPrecondition("you cannot disable yourself or change your own role: ask another administrator")
            txn.put(username.encode(), pack(after), db=self.store.admin_users)
            self._audit(txn, actor, "UpdateUser", f"user:{username}", before.org_id, before, after)
            return after

        return self._write(change)

    def set_password(self, actor: Actor, username: str, new_password: str, old_password: str = "") -> User:
        """Your own password, giving the old one; or, as an administrator
        (or the command line), that of a user of your subtree. Every session
        of the user ends."""
        passwords.require_acceptable(new_password, "new_password")
        own = actor.name == f"user:{username}"
        user = self._read(lambda txn: self._visible_user(txn, actor, username))
        if own and not passwords.password_matches(user.password_hash, old_password):
            raise PermissionDenied("old_password does not match")
        if not own and not actor.everywhere and actor.role != Role.ADMINISTRATOR:
            raise PermissionDenied("only an administrator sets another user's password")
        password_hash = passwords.hash_password(new_password)

        def change(txn):
            before = self._visible_user(txn, actor, username)
            after = msgspec.structs.replace(before, password_hash=password_hash, password_changed_ms=self.clock())
            txn.put(username.encode(), pack(after), db=self.store.admin_users)
            for key, value in list(rows(txn, self.store.admin_sessions)):
                if unpack(Session, value).username == username:
                    txn.delete(key, db=self.store.admin_sessions)
            self._audit(txn, actor, "SetPassword", f"user:{username}", before.org_id, before, after)
            return after

        return self._write(change)

    def get_user(self, actor: Actor, username: str) -> User:
        return self._read(lambda txn: self._visible_user(txn, actor, username))

    def list_users(self, actor: Actor, org_id: int = 0, limit: int = LIST_LIMIT_MAX) -> tuple[list, bool]:
        def look(txn):
            if org_id:
                require_visible(txn, self.store, actor, org_id)
            seen = subtree(txn, self.store, actor)
            users = (unpack(User, value) for _, value in rows(txn, self.store.admin_users))
            return collect((user for user in users if (seen is None or user.org_id in seen) and org_id in (0, user.org_id)), limit)

        return self._read(look)
