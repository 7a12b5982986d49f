"""Key material: the master key, sealed secrets, the terminal MAC scheme.

Owns: every use of cryptography in Tally (the `cryptography` package only,
nothing hand-made), and the exact bytes a terminal's MAC covers.
Used by: core/admin/terminals.py (registration, sign-on), the interceptor
(server/terminal_auth.py), core/admin/terminal_client.py (the POS side).

The choices, and why:
- Master key: 32 random bytes, hex in a file only the server's user reads
  (`python -m core.admin master-key --out FILE`; the server's
  --master-key-file). It never enters the data directory, so a copy of the
  LMDB files alone opens no terminal's key.
- A terminal's secret key (32 bytes, handed out once at registration) and
  its working keys are stored sealed: AES-256-GCM under the master key with
  a random 96-bit nonce, the associated data binding the ciphertext to its
  purpose and terminal (a sealed key copied onto another terminal's record
  does not open). Reversible sealing, not a hash, because the server needs
  the secret at each sign-on to wrap the new working key for the terminal.
- From the secret, HKDF-SHA256 derives two keys, one per use, so no key
  serves two algorithms: the sign-on MAC key and the working-key wrap key.
- Sign-on: a fresh random 32-byte working key, sent wrapped with AES-256-GCM
  under the wrap key; the associated data is (terminal, key id, expiry), so
  the terminal knows which key it holds and until when.
- Every later request: HMAC-SHA256 under the working key over `mac_input`
  (the method, the terminal, the key id, the serial and the request's exact
  bytes on the wire), sent in the metadata keys below.
"""

import os
import stat
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
MAC_BYTES = 32

# gRPC metadata of an authenticated terminal request (all ASCII text).
METADATA_TERMINAL = "x-tally-terminal"  # terminal id, decimal
METADATA_KEY_ID = "x-tally-key-id"  # working key id, decimal; 0 on SignOn (the sign-on key)
METADATA_SERIAL = "x-tally-serial"  # the request's serial, decimal
METADATA_MAC = "x-tally-mac"  # HMAC-SHA256, 64 lowercase hex digits

SIGN_ON_KEY_ID = 0
MAC_LABEL = b"tally.v1 terminal mac"
_MAC_FIELDS = struct.Struct(">IQQ")
_WRAP_AAD = struct.Struct(">IQQ")
_SEAL_AAD = struct.Struct(">IQ")


class SealError(Exception):
    """A sealed value that does not open: wrong master key or altered data."""


# ---------------------------------------------------------------- master key


def new_master_key_file(path: str):
    """Write a new random master key, readable by its owner only; never
    overwrite one (losing it makes every registered terminal unusable)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(os.urandom(KEY_BYTES).hex() + "\n")


def load_master_key(path: str) -> bytes:
    """The key in a master key file; ValueError saying what is wrong."""
    try:
        mode = os.stat(path).st_mode
        with open(path) as file:
            text = file.read().strip()
    except OSError as error:
        raise ValueError(f"master key file {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"master key file {path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"master key file {path}: must hold {KEY_BYTES} bytes as {2 * KEY_BYTES} hex digits")
    return key


# ---------------------------------------------------------------- sealing


class Purpose:
    """Associated data labels of sealed values: what a ciphertext is for."""

    TERMINAL_SECRET = 1
    WORKING_KEY = 2
    PARTNER_SECRET = 3


def seal(master_key: bytes, purpose: int, terminal_id: int, key_id: int, plaintext: bytes) -> bytes:
    """nonce || AES-256-GCM(master_key, plaintext, aad=(purpose, terminal, key id))."""
    nonce = os.urandom(NONCE_BYTES)
    aad = bytes((purpose,)) + _SEAL_AAD.pack(terminal_id, key_id)
    return nonce + AESGCM(master_key).encrypt(nonce, plaintext, aad)


def unseal(master_key: bytes, purpose: int, terminal_id: int, key_id: int, sealed: bytes) -> bytes:
    aad = bytes((purpose,)) + _SEAL_AAD.pack(terminal_id, key_id)
    try:
        return AESGCM(master_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise SealError(f"sealed key of terminal {terminal_id} does not open: wrong master key or altered data") from None


# ---------------------------------------------------------------- derived keys


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(secret)


def sign_on_key(secret: bytes) -> bytes:
    """The key a terminal MACs its SignOn with (key id 0)."""
    return _derive(secret, b"tally.v1 sign-on mac")


def wrap_key(secret: bytes) -> bytes:
    """The key a working key travels under, from the server to the terminal."""
    return _derive(secret, b"tally.v1 working-key wrap")


def wrap_working_key(secret: bytes, terminal_id: int, key_id: int, expires_ms: int, working_key: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    aad = _WRAP_AAD.pack(terminal_id, key_id, expires_ms)
    return nonce + AESGCM(wrap_key(secret)).encrypt(nonce, working_key, aad)


def unwrap_working_key(secret: bytes, terminal_id: int, key_id: int, expires_ms: int, wrapped: bytes) -> bytes:
    aad = _WRAP_AAD.pack(terminal_id, key_id, expires_ms)
    try:
        return AESGCM(wrap_key(secret)).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise SealError("working key does not open under this terminal's secret") from None


# ---------------------------------------------------------------- the MAC


def mac_input(method: str, terminal_id: int, key_id: int, serial: int, body: bytes) -> bytes:
    """The bytes a terminal MAC covers, in this order:

        "tally.v1 terminal mac" 0x00
        method, the gRPC path, e.g. "/tally.v1.PaymentService/Pay"  0x00
        terminal id (u32 big-endian), key id (u64 BE), serial (u64 BE)
        body: the request message exactly as sent on the wire

    The method is in it so that a request's bytes cannot be replayed to
    another RPC; the key id and serial so that the metadata cannot be
    swapped; the body last, whole, so that any changed byte changes the MAC.
    """
    return _mac_header(method, terminal_id, key_id, serial) + body


def _mac_header(method: str, terminal_id: int, key_id: int, serial: int) -> bytes:
    return b"".join((MAC_LABEL, b"\0", method.encode(), b"\0", _MAC_FIELDS.pack(terminal_id, key_id, serial)))


def compute_mac(key: bytes, method: str, terminal_id: int, key_id: int, serial: int, body: bytes) -> bytes:
    signer = hmac.HMAC(key, hashes.SHA256())
    signer.update(_mac_header(method, terminal_id, key_id, serial))
    signer.update(body)
    return signer.finalize()


def mac_matches(key: bytes, method: str, terminal_id: int, key_id: int, serial: int, body: bytes, mac: bytes) -> bool:
    """Constant-time comparison (cryptography's verify). The header and the
    body go in as two updates: no copy of the body."""
    checker = hmac.HMAC(key, hashes.SHA256())
    checker.update(_mac_header(method, terminal_id, key_id, serial))
    checker.update(body)
    try:
        checker.verify(mac)
    except InvalidSignature:
        return False
    return True


# ---------------------------------------------------------------- partners

METADATA_PARTNER = "x-tally-partner"  # partner id, decimal
PARTNER_MAC_LABEL = b"tally.v1 partner mac"
_PARTNER_FIELDS = struct.Struct(">I")


def partner_mac_key(secret: bytes) -> bytes:
    """The key a partner MACs its requests with (derived: the secret itself
    serves nothing else)."""
    return _derive(secret, PARTNER_MAC_LABEL)


def partner_mac_input(method: str, partner_id: int, body: bytes) -> bytes:
    """The bytes a partner's MAC covers: "tally.v1 partner mac" 0x00, the
    gRPC path 0x00, the partner id (u32 big-endian), the request exactly as
    sent. A replayed request is harmless: ExchangePartnerPoints is done once
    per (partner, partner_reference) and answers a retry the same."""
    return b"".join((PARTNER_MAC_LABEL, b"\0", method.encode(), b"\0", _PARTNER_FIELDS.pack(partner_id), body))


def partner_mac(secret: bytes, method: str, partner_id: int, body: bytes) -> bytes:
    signer = hmac.HMAC(partner_mac_key(secret), hashes.SHA256())
    signer.update(partner_mac_input(method, partner_id, body))
    return signer.finalize()


def partner_mac_matches(secret: bytes, method: str, partner_id: int, body: bytes, mac: bytes) -> bool:
    checker = hmac.HMAC(partner_mac_key(secret), hashes.SHA256())
    checker.update(partner_mac_input(method, partner_id, body))
    try:
        checker.verify(mac)
    except InvalidSignature:
        return False
    return True


def partner_metadata(secret: bytes, method: str, partner_id: int, body: bytes) -> tuple:
    """The metadata pairs of a partner's request."""
    return ((METADATA_PARTNER, str(partner_id)), (METADATA_MAC, partner_mac(secret, method, partner_id, body).hex()))


def mac_metadata(key: bytes, method: str, terminal_id: int, key_id: int, serial: int, body: bytes) -> tuple:
    """The four metadata pairs of an authenticated request."""
    return (
        (METADATA_TERMINAL, str(terminal_id)),
        (METADATA_KEY_ID, str(key_id)),
        (METADATA_SERIAL, str(serial)),
        (METADATA_MAC, compute_mac(key, method, terminal_id, key_id, serial, body).hex()),
    )
