"""The terminal MAC: the bytes it covers and the algorithms that make it.

Owns: the MAC input (the same bytes as the server's core/admin/keys.py
`mac_input`, checked against the published vectors in
docs/terminal-mac-vectors.json), the metadata keys a MACed request carries,
and the key algorithms a terminal may be registered with.
Used by: terminal_keys.py (sign-on, working key, per-request metadata).

The MAC covers, in this order:
    "tally.v1 terminal mac" 0x00
    the gRPC method path, e.g. "/tally.v1.PaymentService/Pay", 0x00
    terminal id (u32 big-endian), key id (u64 BE), serial (u64 BE)
    the request message exactly as sent on the wire
and travels as lowercase hex in x-tally-mac (64 digits for HMAC-SHA256, 32
for CMAC-SM4), beside x-tally-terminal, x-tally-key-id and x-tally-serial
(decimal text).

Two algorithms, chosen for each terminal when it is registered (the
server's KeySignOnAnswer.key_algorithm says which it has): "aes-hmac-sha256"
and "sm4-cmac" (the Chinese national algorithms). Adding one is a class with
the three methods of `KeyAlgorithm` and one entry in ALGORITHMS.
"""

import struct
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

METADATA_TERMINAL = "x-tally-terminal"
METADATA_KEY_ID = "x-tally-key-id"
METADATA_SERIAL = "x-tally-serial"
METADATA_MAC = "x-tally-mac"
# SignOn is MACed under the sign-on key, whose id is 0.
SIGN_ON_KEY_ID = 0
MAC_LABEL = b"tally.v1 terminal mac"
_IDS = struct.Struct(">IQQ")
NONCE_BYTES = 12


class WorkingKeyError(Exception):
    """A wrapped working key that does not open under this terminal's secret."""


def mac_header(method: str, terminal_id: int, key_id: int, serial: int) -> bytes:
    """Everything the MAC covers before the request's bytes."""
    return b"".join((MAC_LABEL, b"\0", method.encode("ascii"), b"\0", _IDS.pack(terminal_id, key_id, serial)))


def mac_input(method: str, terminal_id: int, key_id: int, serial: int, body: bytes) -> bytes:
    """The whole MAC input; the algorithms take header and body apart (no copy)."""
    return mac_header(method, terminal_id, key_id, serial) + body


class KeyAlgorithm(Protocol):
    """What a terminal key algorithm does on the terminal's side."""

    name: str
    secret_bytes: int

    def sign_on_key(self, secret: bytes) -> bytes:
        """The key a SignOn request is MACed with (key id 0)."""

    def unwrap_working_key(self, secret: bytes, terminal_id: int, key_id: int, expires_ms: int,
                           wrapped: bytes) -> bytes:
        """The working key in KeySignOnAnswer.wrapped_key; WorkingKeyError if it does not open."""

    def mac(self, key: bytes, header: bytes, body: bytes) -> bytes:
        """The MAC of header + body under key."""


class AesHmacSha256:
    """Today's algorithm (core/admin/keys.py): keys derived from the 32-byte
    secret with HKDF-SHA256, the working key wrapped with AES-256-GCM, the
    MAC HMAC-SHA256."""

    name = "aes-hmac-sha256"
    secret_bytes = 32
    _SIGN_ON_LABEL = b"tally.v1 sign-on mac"
    _WRAP_LABEL = b"tally.v1 working-key wrap"

    def _derive(self, secret: bytes, label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)

    def sign_on_key(self, secret: bytes) -> bytes:
        return self._derive(secret, self._SIGN_ON_LABEL)

    def unwrap_working_key(self, secret: bytes, terminal_id: int, key_id: int, expires_ms: int,
                           wrapped: bytes) -> bytes:
        associated = _IDS.pack(terminal_id, key_id, expires_ms)
        try:
            return AESGCM(self._derive(secret, self._WRAP_LABEL)).decrypt(wrapped[:NONCE_BYTES],
                          wrapped[NONCE_BYTES:], associated)
        except (InvalidTag, ValueError):
            raise WorkingKeyError("the working key does not open under this terminal's secret") from None

    def mac(self, key: bytes, header: bytes, body: bytes) -> bytes:
        signer = hmac.HMAC(key, hashes.SHA256())
        signer.update(header)
        signer.update(body)
        return signer.finalize()


class Sm4Cmac:
    """The Chinese national algorithms (GB/T 32907 SM4, GB/T 32905 SM3):
    16-byte SM4 keys derived from the 32-byte secret with HKDF-SM3, the
    working key wrapped with SM4-GCM (RFC 8998: a 12-byte nonce first, the
    16-byte tag last), the MAC CMAC over SM4 (NIST SP 800-38B) under the
    working key: 16 bytes."""

    name = "sm4-cmac"
    secret_bytes = 32
    _KEY_BYTES = 16
    _TAG_BYTES = 16
    _SIGN_ON_LABEL = b"tally.v1 sign-on mac"
    _WRAP_LABEL = b"tally.v1 working-key wrap"

    def _derive(self, secret: bytes, label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SM3(), length=self._KEY_BYTES, salt=None, info=label).derive(secret)

    def sign_on_key(self, secret: bytes) -> bytes:
        return self._derive(secret, self._SIGN_ON_LABEL)

    def unwrap_working_key(self, secret: bytes, terminal_id: int, key_id: int, expires_ms: int,
                           wrapped: bytes) -> bytes:
        nonce, sealed = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
        if len(sealed) < self._TAG_BYTES:
            raise WorkingKeyError("the working key does not open under this terminal's secret")
        try:
            decryptor = Cipher(algorithms.SM4(self._derive(secret, self._WRAP_LABEL)),
                               modes.GCM(nonce, sealed[-self._TAG_BYTES:])).decryptor()
            decryptor.authenticate_additional_data(_IDS.pack(terminal_id, key_id, expires_ms))
            return decryptor.update(sealed[:-self._TAG_BYTES]) + decryptor.finalize()
        except (InvalidTag, ValueError):
            raise WorkingKeyError("the working key does not open under this terminal's secret") from None

    def mac(self, key: bytes, header: bytes, body: bytes) -> bytes:
        signer = cmac.CMAC(algorithms.SM4(key))
        signer.update(header)
        signer.update(body)
        return signer.finalize()


ALGORITHMS: dict[str, KeyAlgorithm] = {algorithm.name: algorithm for algorithm in (AesHmacSha256(), Sm4Cmac())}
DEFAULT_ALGORITHM = AesHmacSha256.name
# tally.v1.TerminalKeyAlgorithm (KeySignOnAnswer.key_algorithm) -> name; 0: not said (the default).
BY_NUMBER = {0: AesHmacSha256.name, 1: AesHmacSha256.name, 2: Sm4Cmac.name}


def algorithm(name: str) -> KeyAlgorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm: {name!r} is not one of {', '.join(sorted(ALGORITHMS))}") from None


def metadata(algorithm: KeyAlgorithm, key: bytes, method: str, terminal_id: int, key_id: int, serial: int,
             body: bytes) -> tuple[tuple[str, str], ...]:
    """The four metadata pairs of a MACed request whose wire bytes are body."""
    mac = algorithm.mac(key, mac_header(method, terminal_id, key_id, serial), body)
    return ((METADATA_TERMINAL, str(terminal_id)), (METADATA_KEY_ID, str(key_id)),
            (METADATA_SERIAL, str(serial)), (METADATA_MAC, mac.hex()))
