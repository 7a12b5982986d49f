"""Key material: the master key, sealed secrets, the terminal MAC scheme.

Owns: every use of cryptography in Tally (the `cryptography` package, and
the standard library's HMAC over OpenSSL for the terminal MAC: see
_AesSuite.keyed_mac; nothing hand-made), and the exact bytes a terminal's
MAC covers.
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

Two algorithm suites for terminal keys, chosen per terminal at
registration (KeyAlgorithm; the record keeps it, SignOn tells the terminal):
- AES_HMAC_SHA256 (the default, as above): HKDF-SHA256, 32-byte keys,
  AES-256-GCM wrap, HMAC-SHA256 MAC (32 bytes).
- SM4_CMAC (the Chinese national algorithms, GB/T 32907 SM4 and GB/T 32905
  SM3): HKDF-SM3 derives 16-byte SM4 keys from the same 32-byte secret, the
  16-byte working key travels under SM4-GCM (RFC 8998's AEAD; same layout
  as AES-GCM's: nonce || ciphertext || tag), and the MAC is CMAC (NIST SP
  800-38B) over SM4 under the working key: 16 bytes. CMAC rather than
  HMAC-SM3 because it needs the SM4 block cipher alone, which every POS
  secure element with SM4 has, and keys the MAC with the SM4 working key
  itself. docs/terminal-mac-vectors.json publishes vectors for both.

The master key is a MasterKey: anything that seals and opens bytes under
associated data. SoftwareMasterKey is AES-256-GCM in this process (the key
file of the demo, or raw bytes in tests); core/admin/hsm.py's
Pkcs11MasterKey does the same inside a PKCS#11 token, the key never
leaving it. Both write nonce || ciphertext || tag, so a sealed value says
nothing of where its key lives.
"""

import enum
import hmac as std_hmac
import os
import stat
import struct
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import cmac, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# The master key's and a terminal secret's length (both suites).
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# HMAC-SHA256's; CMAC-SM4's is SM4_MAC_BYTES.
MAC_BYTES = 32
SM4_KEY_BYTES = 16
SM4_MAC_BYTES = 16

# gRPC metadata of an authenticated terminal request (all ASCII text).
METADATA_TERMINAL = "x-tally-terminal"  # terminal id, decimal
METADATA_KEY_ID = "x-tally-key-id"  # working key id, decimal; 0 on SignOn (the sign-on key)
METADATA_SERIAL = "x-tally-serial"  # the request's serial, decimal
METADATA_MAC = "x-tally-mac"  # the MAC in lowercase hex: 64 digits (HMAC-SHA256) or 32 (CMAC-SM4)
# The decimal metadata (terminal, key id, serial): at most this many digits, below 2^64.
METADATA_DECIMAL_DIGITS_MAX = 20

SIGN_ON_KEY_ID = 0
MAC_LABEL = b"tally.v1 terminal mac"
_MAC_FIELDS = struct.Struct(">IQQ")
_WRAP_AAD = struct.Struct(">IQQ")
_SEAL_AAD = struct.Struct(">IQ")
_U64 = struct.Struct(">Q")


class SealError(Exception):
    """A sealed value that does not open: wrong master key or altered data."""


class KeyAlgorithm(enum.IntEnum):
    """A terminal's key suite (admin.proto's TerminalKeyAlgorithm)."""

    AES_HMAC_SHA256 = 1
    SM4_CMAC = 2


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


class MasterKey(Protocol):
    """What seals every stored key (terminal secrets, working keys,
    customers' data keys). `description` names it in logs, never its bits."""

    description: str

    def seal_bytes(self, aad: bytes, plaintext: bytes) -> bytes:
        """nonce || ciphertext || tag, bound to `aad`."""

    def unseal_bytes(self, aad: bytes, sealed: bytes) -> bytes:
        """The plaintext, or SealError."""


class SoftwareMasterKey:
    """AES-256-GCM in this process: the master key file's key (the demo),
    or raw bytes (tests)."""

    def __init__(self, key: bytes, description: str = "master key in memory"):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a master key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self.description = description

    @classmethod
    def from_file(cls, path: str) -> "SoftwareMasterKey":
        return cls(load_master_key(path), f"master key file {path}")

    def seal_bytes(self, aad: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal_bytes(self, aad: bytes, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise SealError("does not open: wrong master key or altered data") from None


def as_master_key(master_key) -> MasterKey:
    """A MasterKey as is; raw bytes (tests, older callers) as a
    SoftwareMasterKey."""
    return SoftwareMasterKey(master_key) if isinstance(master_key, (bytes, bytearray)) else master_key


# ---------------------------------------------------------------- sealing


class Purpose:
    """Associated data labels of sealed values: what a ciphertext is for."""

    TERMINAL_SECRET = 1
    WORKING_KEY = 2
    PARTNER_SECRET = 3
    CUSTOMER_DATA_KEY = 4


def seal(master_key, purpose: int, terminal_id: int, key_id: int, plaintext: bytes) -> bytes:
    """nonce || AEAD(master key, plaintext, aad=(purpose, terminal, key id))."""
    aad = bytes((purpose,)) + _SEAL_AAD.pack(terminal_id, key_id)
    return as_master_key(master_key).seal_bytes(aad, plaintext)


def unseal(master_key, purpose: int, terminal_id: int, key_id: int, sealed: bytes) -> bytes:
    aad = bytes((purpose,)) + _SEAL_AAD.pack(terminal_id, key_id)
    try:
        return as_master_key(master_key).unseal_bytes(aad, sealed)
    except SealError:
        raise SealError(f"sealed key of terminal {terminal_id} does not open: wrong master key or altered data") from None


def seal_data_key(master_key, customer_id: int, data_key: bytes) -> bytes:
    """A customer's data key under the master key, bound to the customer."""
    return as_master_key(master_key).seal_bytes(_data_key_aad(customer_id), data_key)


def unseal_data_key(master_key, customer_id: int, sealed: bytes) -> bytes:
    try:
        return as_master_key(master_key).unseal_bytes(_data_key_aad(customer_id), sealed)
    except SealError:
        raise SealError(f"data key of customer {customer_id} does not open: wrong master key or altered data") from None


def _data_key_aad(customer_id: int) -> bytes:
    return bytes((Purpose.CUSTOMER_DATA_KEY,)) + _U64.pack(customer_id)


# ---------------------------------------------------------------- the two suites


class _AesSuite:
    """AES_HMAC_SHA256: HKDF-SHA256, AES-256-GCM, HMAC-SHA256."""

    key_bytes = KEY_BYTES
    mac_bytes = MAC_BYTES
    _hash = hashes.SHA256()

    def derive(self, secret: bytes, label: bytes) -> bytes:
        return HKDF(algorithm=self._hash, length=self.key_bytes, salt=None, info=label).derive(secret)

    def encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return AESGCM(key).encrypt(nonce, plaintext, aad)

    def decrypt(self, key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        return AESGCM(key).decrypt(nonce, sealed, aad)

    @staticmethod
    def keyed_mac(key: bytes):
        """HMAC-SHA256 keyed with `key`, to be copied for each MAC (MacKey):
        the standard library's HMAC over OpenSSL. Why not cryptography's
        HMAC here: building its context for every request was the largest
        single part of the guarded Pay's cost in a loaded server (README,
        Security: terminal auth's cost), and the one-shot hmac.digest
        releases the GIL (under load, waiting to get it back); a copy and
        updates under 2 KiB keep it."""
        return std_hmac.new(key, digestmod="sha256")

    @staticmethod
    def finish(state) -> bytes:
        return state.digest()


class _Sm4Suite:
    """SM4_CMAC: HKDF-SM3, SM4-GCM, CMAC-SM4."""

    key_bytes = SM4_KEY_BYTES
    mac_bytes = SM4_MAC_BYTES
    _hash = hashes.SM3()

    def derive(self, secret: bytes, label: bytes) -> bytes:
        return HKDF(algorithm=self._hash, length=self.key_bytes, salt=None, info=label).derive(secret)

    def encrypt(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        return encryptor.update(plaintext) + encryptor.finalize() + encryptor.tag

    def decrypt(self, key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < TAG_BYTES:
            raise InvalidTag()
        decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, sealed[-TAG_BYTES:])).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor.update(sealed[:-TAG_BYTES]) + decryptor.finalize()

    @staticmethod
    def keyed_mac(key: bytes):
        """CMAC-SM4 keyed with `key`, to be copied for each MAC (MacKey)."""
        return cmac.CMAC(algorithms.SM4(key))

    @staticmethod
    def finish(state) -> bytes:
        return state.finalize()


SUITES = {KeyAlgorithm.AES_HMAC_SHA256: _AesSuite(), KeyAlgorithm.SM4_CMAC: _Sm4Suite()}
AES, SM4 = KeyAlgorithm.AES_HMAC_SHA256, KeyAlgorithm.SM4_CMAC


def working_key_bytes(algorithm: int = AES) -> int:
    return SUITES[algorithm].key_bytes


def mac_bytes_of(algorithm: int = AES) -> int:
    return SUITES[algorithm].mac_bytes


def aead_encrypt(algorithm: int, key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || ciphertext || tag: AES-256-GCM or SM4-GCM under `key`."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + SUITES[algorithm].encrypt(key, nonce, plaintext, aad)


def aead_decrypt(algorithm: int, key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext, or SealError."""
    try:
        return SUITES[algorithm].decrypt(key, sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise SealError("does not open under this key") from None


# ---------------------------------------------------------------- derived keys


def sign_on_key(secret: bytes, algorithm: int = AES) -> bytes:
    """The key a terminal MACs its SignOn with (key id 0)."""
    return SUITES[algorithm].derive(secret, b"tally.v1 sign-on mac")


def wrap_key(secret: bytes, algorithm: int = AES) -> bytes:
    """The key a working key travels under, from the server to the terminal."""
    return SUITES[algorithm].derive(secret, b"tally.v1 working-key wrap")


def wrap_working_key(secret: bytes, terminal_id: int, key_id: int, expires_ms: int, working_key: bytes,
                     algorithm: int = AES, nonce: bytes | None = None) -> bytes:
    """nonce || AEAD(wrap key, working key, aad=(terminal, key id, expires));
    `nonce` is given only to reproduce a published test vector."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    aad = _WRAP_AAD.pack(terminal_id, key_id, expires_ms)
    return nonce + SUITES[algorithm].encrypt(wrap_key(secret, algorithm), nonce, working_key, aad)


def unwrap_working_key(secret: bytes, terminal_id: int, key_id: int, expires_ms: int, wrapped: bytes,
                       algorithm: int = AES) -> bytes:
    aad = _WRAP_AAD.pack(terminal_id, key_id, expires_ms)
    try:
        return SUITES[algorithm].decrypt(wrap_key(secret, algorithm), wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
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
    The same bytes for both suites.
    """
    return _mac_header(method, terminal_id, key_id, serial) + body


def mac_prefix(method: str) -> bytes:
    """The MAC's header up to the method's 0x00 (see mac_input)."""
    return b"".join((MAC_LABEL, b"\0", method.encode(), b"\0"))


def _mac_header(method: str, terminal_id: int, key_id: int, serial: int) -> bytes:
    return mac_prefix(method) + _MAC_FIELDS.pack(terminal_id, key_id, serial)


def compute_mac(key: bytes, method: str, terminal_id: int, key_id: int, serial: int, body: bytes,
                algorithm: int = AES) -> bytes:
    return MacKey(key, algorithm).mac(method, terminal_id, key_id, serial, body)


def mac_matches(key: bytes, method: str, terminal_id: int, key_id: int, serial: int, body: bytes, mac: bytes,
                algorithm: int = AES) -> bool:
    """Whether `mac` is the terminal MAC of the request under `key`
    (constant-time)."""
    return MacKey(key, algorithm).matches(method, terminal_id, key_id, serial, body, mac)


class MacKey:
    """The terminal MAC under one key of a suite, its keyed state made once
    and copied for each request: the terminal guard keeps one per terminal
    in use (server/terminal_auth.py), a terminal one per working key
    (core/admin/terminal_client.py). The header and the body go in as two
    updates: no copy of the body."""

    __slots__ = ("finish", "keyed")

    def __init__(self, key: bytes, algorithm: int = AES):
        suite = SUITES[algorithm]
        # The keyed state, copied for each MAC; finish(state) -> the MAC.
        self.keyed = suite.keyed_mac(key)
        self.finish = suite.finish

    def mac(self, method: str, terminal_id: int, key_id: int, serial: int, body: bytes) -> bytes:
        state = self.keyed.copy()
        state.update(_mac_header(method, terminal_id, key_id, serial))
        state.update(body)
        return self.finish(state)

    def matches(self, method: str, terminal_id: int, key_id: int, serial: int, body: bytes, mac: bytes) -> bool:
        return std_hmac.compare_digest(self.mac(method, terminal_id, key_id, serial, body), mac)

    def metadata(self, method: str, terminal_id: int, key_id: int, serial: int, body: bytes) -> tuple:
        """The four metadata pairs of an authenticated request."""
        return (
            (METADATA_TERMINAL, str(terminal_id)),
            (METADATA_KEY_ID, str(key_id)),
            (METADATA_SERIAL, str(serial)),
            (METADATA_MAC, self.mac(method, terminal_id, key_id, serial, body).hex()),
        )


# ---------------------------------------------------------------- partners

METADATA_PARTNER = "x-tally-partner"  # partner id, decimal
PARTNER_MAC_LABEL = b"tally.v1 partner mac"
_PARTNER_FIELDS = struct.Struct(">I")


def partner_mac_key(secret: bytes) -> bytes:
    """The key a partner MACs its requests with (derived: the secret itself
    serves nothing else)."""
    return SUITES[AES].derive(secret, PARTNER_MAC_LABEL)


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


def mac_metadata(key: bytes, method: str, terminal_id: int, key_id: int, serial: int, body: bytes,
                 algorithm: int = AES) -> tuple:
    """The four metadata pairs of an authenticated request."""
    return MacKey(key, algorithm).metadata(method, terminal_id, key_id, serial, body)
