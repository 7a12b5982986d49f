"""The terminal's side of terminal authentication, for POS vendors.

Owns: what a terminal does with the secret key it got at registration:
sign on (TerminalKeyService.SignOn) to get the day's working key, and put
the MAC of every request in its metadata. Needs only grpcio, the generated
stubs and `cryptography`; core/admin/keys.py defines the bytes covered.

    from core.admin.terminal_client import TerminalKeys

    keys = TerminalKeys(terminal_id=101, station_id=12, secret=SECRET_FROM_REGISTRATION)
    keys.sign_on(channel, serial=next_serial(), operator_id=7)   # once a day
    payments = payment_pb2_grpc.PaymentServiceStub(grpc.intercept_channel(channel, keys.interceptor()))
    payments.Pay(request)          # x-tally-terminal, -key-id, -serial, -mac added

or, sending exactly the bytes that were MACed (no reliance on the stub
serializing the message the same way a second time):

    answer = keys.call(channel, "/tally.v1.PaymentService/Pay", request, payment_pb2.PaymentAnswer)

The serial of the MAC is the request's TerminalContext.serial; a request
without one (PaymentService.Query) uses 0. A vendor implementing this in
another language: HMAC-SHA256(working key, mac_input) in keys.py (CMAC-SM4
for a terminal registered with SM4_CMAC: `TerminalKeys(..., algorithm=
keys.KeyAlgorithm.SM4_CMAC)`), the working key opened as
KeySignOnAnswer.wrapped_key documents in admin.proto; known answers of
both suites: docs/terminal-mac-vectors.json.
"""

import collections

import grpc

from core.admin import keys
from tally.v1 import admin_pb2, common_pb2

SIGN_ON_METHOD = "/tally.v1.TerminalKeyService/SignOn"


def serial_of(request) -> int:
    """The serial a request's MAC carries: its TerminalContext's, else 0."""
    if request.DESCRIPTOR.fields_by_name.get("terminal") is not None and request.HasField("terminal"):
        return request.terminal.serial
    return 0


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                            "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class TerminalKeys:
    """A terminal's secret and its current working key."""

    def __init__(self, terminal_id: int, station_id: int, secret: bytes,
                 algorithm: keys.KeyAlgorithm = keys.KeyAlgorithm.AES_HMAC_SHA256):
        """`algorithm`: the suite the terminal was registered with (it MACs
        the sign-on already); the sign-on answer confirms it."""
        if len(secret) != keys.KEY_BYTES:
            raise ValueError(f"secret must be {keys.KEY_BYTES} bytes")
        self.terminal_id = terminal_id
        self.station_id = station_id
        self.secret = secret
        self.algorithm = keys.KeyAlgorithm(algorithm)
        self.key_id = 0
        self.working_key = None
        self.expires_ms = 0

    @property
    def working_key(self) -> bytes | None:
        return self._working_key

    @working_key.setter
    def working_key(self, key: bytes | None):
        self._working_key = key
        # Its MAC, keyed once for every request it signs.
        self.mac_key = None if key is None else keys.MacKey(key, self.algorithm)

    # ------------------------------------------------------------ sign-on

    def sign_on_request(self, serial: int, operator_id: int) -> tuple[bytes, tuple]:
        """(the request's bytes, its metadata), MACed with the sign-on key."""
        request = admin_pb2.KeySignOnRequest(terminal=common_pb2.TerminalContext(
            station_id=self.station_id, terminal_id=self.terminal_id, serial=serial, operator_id=operator_id))
        body = request.SerializeToString(deterministic=True)
        metadata = keys.mac_metadata(keys.sign_on_key(self.secret, self.algorithm), SIGN_ON_METHOD, self.terminal_id,
                                     keys.SIGN_ON_KEY_ID, serial, body, self.algorithm)
        return body, metadata

    def accept(self, answer: admin_pb2.KeySignOnAnswer):
        """Open the working key of a sign-on answer and use it from now on.
        An answer naming another suite than this terminal's is refused
        (ValueError): the terminal is misconfigured, nothing it MACs would pass."""
        # 0: a server from before key suites, which knew AES_HMAC_SHA256 only.
        told = answer.key_algorithm or keys.KeyAlgorithm.AES_HMAC_SHA256
        if told != self.algorithm:
            named = keys.KeyAlgorithm(told).name if told in keys.SUITES else f"number {told}"
            raise ValueError(f"terminal {self.terminal_id} is registered for key suite {named}, "
                             f"configured for {self.algorithm.name}")
        self.working_key = keys.unwrap_working_key(self.secret, self.terminal_id, answer.key_id, answer.expires_ms,
                                                   answer.wrapped_key, self.algorithm)
        self.key_id = answer.key_id
        self.expires_ms = answer.expires_ms

    def sign_on(self, channel: grpc.Channel, serial: int, operator_id: int, timeout: float | None = 10):
        body, metadata = self.sign_on_request(serial, operator_id)
        call = channel.unary_unary(SIGN_ON_METHOD, request_serializer=None,
                                   response_deserializer=admin_pb2.KeySignOnAnswer.FromString)
        answer = call(body, metadata=metadata, timeout=timeout)
        self.accept(answer)
        return answer

    # ------------------------------------------------------------ requests

    def metadata(self, method: str, serial: int, body: bytes) -> tuple:
        """The four metadata pairs for a request whose wire bytes are `body`."""
        if self.mac_key is None:
            raise RuntimeError("no working key: sign on first")
        return self.mac_key.metadata(method, self.terminal_id, self.key_id, serial, body)

    def call(self, channel: grpc.Channel, method: str, request, answer_type, timeout: float | None = 10):
        """Send `request` to `method` with its MAC, as exactly the bytes MACed."""
        body = request.SerializeToString(deterministic=True)
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=answer_type.FromString)
        return call(body, metadata=self.metadata(method, serial_of(request), body), timeout=timeout)

    def interceptor(self) -> grpc.UnaryUnaryClientInterceptor:
        """For grpc.intercept_channel: MACs every unary call of the stubs.
        The stubs serialize with SerializeToString(); Tally's terminal
        messages have no map fields, so that is the same bytes each time."""
        return _Signer(self)


class _Signer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, terminal: TerminalKeys):
        self.terminal = terminal

    def intercept_unary_unary(self, continuation, details, request):
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        added = self.terminal.metadata(method, serial_of(request), request.SerializeToString())
        signed = _CallDetails(details.method, details.timeout, (*(details.metadata or ()), *added),
                              details.credentials, details.wait_for_ready, details.compression)
        return continuation(signed, request)
