"""Keys in a hardware security module, through PKCS#11.

Owns: every call into a PKCS#11 token (python-pkcs11): opening the token
with its PIN, creating the master key and the audit MAC key inside it, and
the master key's sealing, which runs inside the token. Neither key ever
leaves it: both are created with CKA_EXTRACTABLE false and CKA_SENSITIVE
true, so the token refuses to show or wrap them out.
Used by: core/admin/__main__.py (master-key, audit-key, audit-head and the
commands that need the master key), server/admin_service.py (the server's
--pkcs11-* flags), tests/test_hsm.py (SoftHSM2 as the token).

Why python-pkcs11 (pinned in requirements.txt) and not PyKCS11: it ships
binary wheels (nothing to compile, no SWIG), its objects are typed (a
SecretKey with encrypt/decrypt/sign, GCMParams), and its errors are one
exception class per CKR_* code, so a wrong PIN says "PinIncorrect".

The master key: an AES-256 key; sealing is CKM_AES_GCM with a random
96-bit nonce given by the caller and the associated data of keys.py, and
the result has the software key's layout (nonce || ciphertext || tag).
PKCS#11 sessions are not for concurrent use: one lock serialises this
process's calls (a token call is ~30 us on SoftHSM2; what calls it per
request, the working key check, caches what it opened: core/admin/terminals.py).
Open a Pkcs11MasterKey in the process that uses it, after any fork: a
PKCS#11 library must not cross a fork (server/workers.py forks first).

The PIN: from a file (--pkcs11-pin-file, mode 600) or the environment
variable TALLY_PKCS11_PIN; never a command-line argument, which any user
of the machine can read in the process list.
"""

import os
import stat
import threading

import msgspec
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as errors
from pkcs11.mechanisms import GCMParams

from core.admin import keys
from core.errors import AlreadyExists, FailedPrecondition, NotFound, Unauthenticated

PIN_ENVIRONMENT = "TALLY_PKCS11_PIN"
MASTER_KEY_LABEL_DEFAULT = "tally-master"
LABEL_LENGTH_MAX = 32
PIN_LENGTH_MAX = 255
AES_KEY_BITS = 256
HMAC_KEY_BITS = 256
TAG_BITS = 128


class TokenConfig(msgspec.Struct, frozen=True):
    """Where a key lives: the PKCS#11 library, the token, the key's label,
    and where the PIN comes from (pin_file, else TALLY_PKCS11_PIN)."""

    module: str
    token_label: str
    key_label: str = MASTER_KEY_LABEL_DEFAULT
    pin_file: str | None = None

    def describe(self) -> str:
        return f"key {self.key_label!r} in PKCS#11 token {self.token_label!r}"


def read_pin(pin_file: str | None) -> str:
    """The user PIN: the first line of `pin_file` (which only its owner may
    read), else TALLY_PKCS11_PIN."""
    if pin_file is None:
        pin = os.environ.get(PIN_ENVIRONMENT, "")
        if not pin:
            raise FailedPrecondition(f"the token's PIN: give --pkcs11-pin-file FILE or set {PIN_ENVIRONMENT}")
        return pin
    try:
        mode = os.stat(pin_file).st_mode
        with open(pin_file) as file:
            pin = file.readline().rstrip("\n")
    except OSError as error:
        raise FailedPrecondition(f"PIN file {pin_file}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FailedPrecondition(f"PIN file {pin_file}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    if not 0 < len(pin) <= PIN_LENGTH_MAX:
        raise FailedPrecondition(f"PIN file {pin_file}: its first line must hold the PIN, 1 .. {PIN_LENGTH_MAX} characters")
    return pin


def _require_label(label: str, name: str):
    if not 0 < len(label) <= LABEL_LENGTH_MAX:
        raise FailedPrecondition(f"{name}: 1 .. {LABEL_LENGTH_MAX} characters, got {len(label)}")


def open_session(config: TokenConfig, write: bool = False):
    """A logged-in session on the token; FailedPrecondition or
    Unauthenticated with one line saying why not."""
    _require_label(config.token_label, "token label")
    _require_label(config.key_label, "key label")
    pin = read_pin(config.pin_file)
    library = _library(config.module)
    try:
        token = library.get_token(token_label=config.token_label)
    except errors.NoSuchToken:
        raise NotFound(f"PKCS#11 module {config.module}: no token labelled {config.token_label!r}") from None
    except errors.MultipleTokensReturned:
        raise FailedPrecondition(f"PKCS#11 module {config.module}: several tokens labelled {config.token_label!r}") from None
    try:
        return token.open(user_pin=pin, rw=write)
    except errors.UserAlreadyLoggedIn:
        # A login is the whole process's, for every session on the token
        # (PKCS#11: C_Login applies to the application): this process
        # logged in already, with a PIN the token took.
        return token.open(rw=write)
    except (errors.PinIncorrect, errors.PinInvalid, errors.PinLenRange):
        raise Unauthenticated(f"PKCS#11 token {config.token_label!r}: the PIN is refused") from None
    except errors.PinLocked:
        raise Unauthenticated(f"PKCS#11 token {config.token_label!r}: the PIN is locked; the security officer unlocks it") from None
    except errors.PKCS11Error as error:
        raise FailedPrecondition(f"PKCS#11 token {config.token_label!r}: cannot log in ({type(error).__name__})") from None


# PKCS#11 library path -> the library, loaded and initialised once per
# process (C_Initialize twice is an error, and a library finalised under
# open sessions ends them).
_LIBRARIES: dict[str, "pkcs11.lib"] = {}


def _library(module: str):
    library = _LIBRARIES.get(module)
    if library is None:
        try:
            library = _LIBRARIES[module] = pkcs11.lib(module)
        except (OSError, errors.PKCS11Error) as error:
            raise FailedPrecondition(f"PKCS#11 module {module}: cannot load it: {error or type(error).__name__}") from None
    return library


def find_key(session, config: TokenConfig, key_type, made_by: str):
    """The one secret key labelled config.key_label of `key_type`
    (`made_by`: the command that creates such a key)."""
    found = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: config.key_label,
                                      Attribute.KEY_TYPE: key_type}))
    if not found:
        raise NotFound(f"PKCS#11 token {config.token_label!r} holds no {key_type.name} key labelled {config.key_label!r}: "
                       f"create it with `python -m core.admin {made_by}`")
    if len(found) > 1:
        raise FailedPrecondition(f"PKCS#11 token {config.token_label!r} holds {len(found)} keys labelled {config.key_label!r}")
    return found[0]


# What every key Tally makes in a token is: stored there, secret, never out.
KEPT_INSIDE = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
               Attribute.WRAP: False, Attribute.UNWRAP: False, Attribute.DERIVE: False}


def create_master_key(config: TokenConfig):
    """A new AES-256 key in the token for sealing only (encrypt, decrypt);
    AlreadyExists if one has the label (never a second key of one name)."""
    with open_session(config, write=True) as session:
        _refuse_existing(session, config)
        session.generate_key(KeyType.AES, AES_KEY_BITS, label=config.key_label, store=True,
                             template={**KEPT_INSIDE, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                                       Attribute.SIGN: False, Attribute.VERIFY: False})


def create_audit_key(config: TokenConfig):
    """A new HMAC-SHA256 key in the token, for signing audit heads only."""
    with open_session(config, write=True) as session:
        _refuse_existing(session, config)
        session.generate_key(KeyType.GENERIC_SECRET, HMAC_KEY_BITS, label=config.key_label, store=True,
                             template={**KEPT_INSIDE, Attribute.SIGN: True, Attribute.VERIFY: True,
                                       Attribute.ENCRYPT: False, Attribute.DECRYPT: False})


def _refuse_existing(session, config: TokenConfig):
    if list(session.get_objects({Attribute.LABEL: config.key_label})):
        raise AlreadyExists(f"PKCS#11 token {config.token_label!r} already holds a key labelled {config.key_label!r}")


class Pkcs11MasterKey:
    """keys.MasterKey inside a token: AES-256-GCM by the token itself."""

    def __init__(self, config: TokenConfig):
        self.description = config.describe()
        self._session = open_session(config)
        try:
            self._key = find_key(self._session, config, KeyType.AES, "master-key")
        except Exception:
            self._session.close()
            raise
        self._lock = threading.Lock()

    def seal_bytes(self, aad: bytes, plaintext: bytes) -> bytes:
        nonce = os.urandom(keys.NONCE_BYTES)
        with self._lock:
            sealed = self._key.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                       mechanism_param=GCMParams(nonce, aad, TAG_BITS))
        return nonce + sealed

    def unseal_bytes(self, aad: bytes, sealed: bytes) -> bytes:
        if len(sealed) < keys.NONCE_BYTES + keys.TAG_BYTES:
            raise keys.SealError("too short to be sealed")
        try:
            with self._lock:
                return self._key.decrypt(sealed[keys.NONCE_BYTES:], mechanism=Mechanism.AES_GCM,
                                         mechanism_param=GCMParams(sealed[:keys.NONCE_BYTES], aad, TAG_BITS))
        except errors.PKCS11Error:
            # Tokens differ in what a failed tag check returns (SoftHSM2:
            # CKR_GENERAL_ERROR); all of them mean this does not open.
            raise keys.SealError("does not open: wrong master key or altered data") from None

    def close(self):
        self._session.close()


class Pkcs11Signer:
    """HMAC-SHA256 under a token's key (the audit head's MAC)."""

    def __init__(self, config: TokenConfig):
        self.description = config.describe()
        self._session = open_session(config)
        self._key = find_key(self._session, config, KeyType.GENERIC_SECRET, "audit-key")

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, mechanism=Mechanism.SHA256_HMAC)

    def verify(self, data: bytes, mac: bytes) -> bool:
        return self._key.verify(data, mac, mechanism=Mechanism.SHA256_HMAC)

    def close(self):
        self._session.close()
