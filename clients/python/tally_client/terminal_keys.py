"""A terminal's keys: the secret from registration and the working key of
the last sign-on.

Owns: building the SignOn request (MACed under the sign-on key), opening
the working key of its answer, the MAC metadata of every later request,
and when to sign on again (before the working key expires).
Used by: the clients (client.py, aio.py); works alone too, for a vendor
with a transport of its own.

The secret is what a terminal must keep safe: it is handed out once, by
AdminService.RegisterTerminal. The working key lives in memory only: after
a restart the terminal signs on again.
"""

import time

from tally_client import _proto, mac

SIGN_ON_METHOD = "/tally.v1.TerminalKeyService/SignOn"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TerminalKeys:
    def __init__(self, terminal_id: int, station_id: int, secret: bytes, algorithm: str = mac.DEFAULT_ALGORITHM):
        self.algorithm = mac.algorithm(algorithm)
        if not isinstance(secret, bytes) or len(secret) != self.algorithm.secret_bytes:
            raise ValueError(f"secret: must be {self.algorithm.secret_bytes} bytes")
        self.terminal_id = terminal_id
        self.station_id = station_id
        self._secret = secret
        self.key_id = 0
        self._working_key: bytes | None = None
        self.expires_ms = 0

    @property
    def signed_on(self) -> bool:
        return self._working_key is not None

    def needs_sign_on(self, margin_ms: int, at_ms: int | None = None) -> bool:
        """No working key, or it expires within margin_ms."""
        return self._working_key is None or self.expires_ms - margin_ms <= (now_ms() if at_ms is None else at_ms)

    def sign_on_request(self, serial: int, operator_id: int) -> tuple[bytes, tuple]:
        """(the KeySignOnRequest's wire bytes, its metadata)."""
        request = _proto.tally("KeySignOnRequest")()
        context = request.terminal
        context.station_id, context.terminal_id, context.serial, context.operator_id = (
            self.station_id, self.terminal_id, serial, operator_id)
        body = request.SerializeToString(deterministic=True)
        key = self.algorithm.sign_on_key(self._secret)
        return body, mac.metadata(self.algorithm, key, SIGN_ON_METHOD, self.terminal_id, mac.SIGN_ON_KEY_ID, serial,
                                  body)

    def accept(self, answer) -> None:
        """Use the working key of a KeySignOnAnswer from now on (raises
        mac.WorkingKeyError if it does not open: nothing changes then)."""
        said = mac.BY_NUMBER.get(getattr(answer, "key_algorithm", 0))
        if said is not None and said != self.algorithm.name:
            raise mac.WorkingKeyError(f"the server says terminal {self.terminal_id}'s keys are {said}, but this client "
                                      f"is set up with {self.algorithm.name}")
        key = self.algorithm.unwrap_working_key(self._secret, self.terminal_id, answer.key_id, answer.expires_ms,
                                                answer.wrapped_key)
        self._working_key, self.key_id, self.expires_ms = key, answer.key_id, answer.expires_ms

    def forget(self, key_id: int) -> None:
        """The server refused key_id: sign on before the next request (unless
        another thread already replaced it)."""
        if self.key_id == key_id:
            self._working_key = None

    def metadata(self, method: str, serial: int, body: bytes) -> tuple:
        """The MAC metadata of a request whose wire bytes are body."""
        if self._working_key is None:
            raise RuntimeError("no working key: sign on first")
        return mac.metadata(self.algorithm, self._working_key, method, self.terminal_id, self.key_id, serial, body)
