"""Console sessions: who is logged in, their token, CSRF, once-only forms.

Owns: Session (one browser's login: the AdminService token, kept here and
never sent to the browser; its user; the CSRF token of its forms; its
language; the outcome of each form it submitted) and SessionStore (the
sessions of this server process, in memory, bounded).
Used by: server/console/web.py.

The browser holds only an opaque session id, in a cookie that is HttpOnly,
SameSite=Strict, Path=/ and Secure when the console speaks TLS. A session
ends with its token (the domain's token_validity_s), at logout, or when the
user or token is refused by the API; a restart of the server ends them all
(log in again). Before login a session exists only to carry the login
form's CSRF token.

Once-only forms: each form carries a fresh nonce; the first submission of a
nonce runs the action, and any other submission of it (a double click, a
reload of the POST) waits for that one and answers its outcome, so the
action runs once. Money-moving RPCs also take request ids derived from the
nonce, so even a submission after a restart moves nothing twice.
"""

import asyncio
import collections
import hmac
import secrets
import time

import msgspec

COOKIE_NAME = "tally_console"
# Over TLS the browser then takes the cookie only if Secure, Path=/ and
# without a Domain: no other host or plain-HTTP page can set or shadow it.
TLS_COOKIE_NAME = "__Host-tally_console"
# Sessions held at most (logged in or not); the oldest anonymous ones go first.
SESSIONS_MAX = 10_000
# A login form's session lives this long without a login.
ANONYMOUS_LIFETIME_S = 30 * 60
# Outcomes of submitted forms remembered per session.
OUTCOMES_PER_SESSION_MAX = 256
NONCE_BYTES = 16
CHOICES_LIFETIME_S = 60.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class User(msgspec.Struct, frozen=True):
    username: str
    org_id: int
    role: str  # ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE, AUDITOR


class Outcome(msgspec.Struct, frozen=True):
    """What a form's submission answered: replayed to a repeat of its nonce."""

    status: int
    body: bytes
    headers: tuple


class Session:
    __slots__ = ("session_id", "csrf", "locale", "token", "user", "expires_ms", "flashes", "outcomes", "running", "cache")

    def __init__(self, locale: str, expires_ms: int):
        self.session_id = secrets.token_urlsafe(32)
        self.csrf = secrets.token_urlsafe(32)
        self.locale = locale
        self.token = ""
        self.user: User | None = None
        self.expires_ms = expires_ms
        # Messages for the next page shown (after a redirect).
        self.flashes: list[tuple[str, str]] = []
        self.outcomes: collections.OrderedDict[str, Outcome] = collections.OrderedDict()
        # nonce -> the future of the submission running it
        self.running: dict[str, asyncio.Future] = {}
        # What pages only offer as choices (the user's organisations), read
        # again after CHOICES_LIFETIME_S: key -> (monotonic expiry, value).
        self.cache: dict = {}

    @property
    def logged_in(self) -> bool:
        return self.user is not None

    def csrf_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())

    def flash(self, kind: str, text: str):
        self.flashes.append((kind, text))

    def take_flashes(self) -> list[tuple[str, str]]:
        flashes, self.flashes = self.flashes, []
        return flashes

    def remember(self, nonce: str, outcome: Outcome):
        self.outcomes[nonce] = outcome
        while len(self.outcomes) > OUTCOMES_PER_SESSION_MAX:
            self.outcomes.popitem(last=False)


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def valid_nonce(nonce: str) -> bool:
    return len(nonce) == 2 * NONCE_BYTES and all(character in "0123456789abcdef" for character in nonce)


def request_id_of(nonce: str) -> int:
    """A u64 request id (1 .. 2^63-1) from a form's nonce (random 128 bits)."""
    return int(nonce[:16], 16) % (2**63 - 1) + 1


class SessionStore:
    def __init__(self, default_locale: str, sessions_max: int = SESSIONS_MAX):
        self.default_locale = default_locale
        self.sessions_max = sessions_max
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id or "")
        if session is not None and session.expires_ms <= now_ms():
            self.drop(session)
            return None
        return session

    def anonymous(self) -> Session:
        """A new session for a login form."""
        return self._add(Session(self.default_locale, now_ms() + ANONYMOUS_LIFETIME_S * 1000))

    def login(self, before: Session, token: str, user: User, expires_ms: int) -> Session:
        """A new session (a new id: the one the login form had is dropped, so
        an id planted in a browser before login is worth nothing after)."""
        self.drop(before)
        session = Session(before.locale, expires_ms)
        session.token, session.user = token, user
        return self._add(session)

    def drop(self, session: Session):
        self._sessions.pop(session.session_id, None)

    def _add(self, session: Session) -> Session:
        if len(self._sessions) >= self.sessions_max:
            self._make_room()
        self._sessions[session.session_id] = session
        return session

    def _make_room(self):
        now = now_ms()
        for session in [session for session in self._sessions.values() if session.expires_ms <= now]:
            self.drop(session)
        if len(self._sessions) < self.sessions_max:
            return
        anonymous = [session for session in self._sessions.values() if not session.logged_in]
        for session in anonymous[: max(1, len(anonymous) // 2)]:
            self.drop(session)
        if len(self._sessions) >= self.sessions_max:
            # Every slot holds a live login: the oldest gives way.
            self.drop(next(iter(self._sessions.values())))
