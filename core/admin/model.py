"""The typed records of administration, their limits and their LMDB keys.

Owns: organisations (a tree: headquarters, regions, stations), terminals,
operators, goods and categories, a domain's parameters, users and their
sessions, audit entries, cards' owners and customers; the limits on every field; the key scheme of each
admin_* named database (see core/store.py). Values are msgpack of these
structs.
Used by: every module of core.admin, server/admin_service.py,
server/terminal_auth.py.

A station is an organisation of kind STATION whose id is the station id
terminals send (TerminalContext.station_id): one namespace for organisation
and station ids, so "station 12" and "organisation 12" are the same thing.
A headquarters is the root of an application domain: everything below it
(regions, stations, terminals, operators, goods, users, audit entries) is
that domain's, and nobody outside its subtree sees it.
"""

import enum
import struct
from typing import ClassVar

import msgspec

from core import limits
from core.admin.keys import KeyAlgorithm

# ---------------------------------------------------------------- limits
# Administration's limits, next to its records (core/limits.py holds the
# transaction core's). Names carry their unit last.

ORG_ID_MAX = limits.STATION_ID_MAX
# Headquarters -> region -> ... -> station: at most this many levels.
ORG_DEPTH_MAX = 8
NAME_LENGTH_MAX = 100
ADDRESS_LENGTH_MAX = 200
REASON_LENGTH_MAX = 200
CODE_LENGTH_MAX = limits.GOODS_CODE_LENGTH_MAX
UNIT_LENGTH_MAX = 8
USERNAME_LENGTH_MAX = 64
PASSWORD_LENGTH_MIN = 12
PASSWORD_LENGTH_MAX = 256
# A bearer token's lifetime, and a working key's.
TOKEN_VALIDITY_S_DEFAULT = 8 * 3600
TOKEN_VALIDITY_S_MAX = 7 * 86400
WORKING_KEY_VALIDITY_S_DEFAULT = 86400
WORKING_KEY_VALIDITY_S_MAX = 7 * 86400
# Consecutive wrong passwords before a user is locked, and for how long.
LOGIN_FAILURES_MAX_DEFAULT = 10
LOGIN_FAILURES_MAX_MAX = 100
LOGIN_LOCKOUT_S_DEFAULT = 30 * 60
LOGIN_LOCKOUT_S_MAX = 7 * 86400
# Rows one list call returns at most.
LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10_000
# Cards and customers (core/admin/cards.py, customers.py).
CUSTOMER_ID_MAX = 2**64 - 1
VEHICLE_PLATE_LENGTH_MAX = 16
ALLOWED_GOODS_MAX = 64
PHONE_LENGTH_MAX = 32
EMAIL_LENGTH_MAX = 254
# An export lists at most this many transactions per card (the most recent).
EXPORT_TRANSACTIONS_PER_CARD_MAX = 10_000


class OrgKind(enum.IntEnum):
    """Where an organisation stands in the tree."""

    HEADQUARTERS = 1
    REGION = 2
    STATION = 3


# Which kinds may sit under which. A headquarters has no parent: only the
# CLI creates one (a new application domain), never an RPC.
CHILD_KINDS = {
    OrgKind.HEADQUARTERS: (OrgKind.REGION, OrgKind.STATION),
    OrgKind.REGION: (OrgKind.REGION, OrgKind.STATION),
    OrgKind.STATION: (),
}


class Role(enum.IntEnum):
    """A user's role; server/admin_service.py's permission table maps each
    RPC to the roles allowed to call it (core/admin/access.py)."""

    ADMINISTRATOR = 1
    OPERATIONS = 2
    CUSTOMER_SERVICE = 3
    AUDITOR = 4


class TerminalStatus(enum.IntEnum):
    ACTIVE = 1
    DISABLED = 2


class PartnerStatus(enum.IntEnum):
    ACTIVE = 1
    DISABLED = 2


class Partner(msgspec.Struct):
    """A partner programme that credits points or cash into cards of one
    headquarters' domain (LoyaltyService.ExchangePartnerPoints): its secret
    key sealed under the master key, bound to the partner id."""

    partner_id: int
    org_id: int
    name: str
    status: PartnerStatus
    secret_sealed: bytes
    registered_ms: int
    disabled_reason: str = ""


class Organisation(msgspec.Struct):
    org_id: int
    # 0 for a headquarters.
    parent_id: int
    kind: OrgKind
    name: str
    address: str = ""
    created_ms: int = 0


class Terminal(msgspec.Struct):
    """A registered terminal and its keys, sealed under the master key.

    secret_sealed: the terminal's secret key (given to the terminal once, at
    registration), sealed under the server's master key (a key file's, or an
    HSM's), bound to the terminal id (core/admin/keys.py). key_id / key_sealed / key_expires_ms:
    the current working key, from the last sign-on; an older key id is
    refused. signon_serial: the serial of the last accepted sign-on; a
    sign-on must carry a larger one (no replay).
    """

    terminal_id: int
    station_id: int
    name: str
    status: TerminalStatus
    secret_sealed: bytes
    registered_ms: int
    disabled_reason: str = ""
    key_id: int = 0
    key_sealed: bytes = b""
    key_expires_ms: int = 0
    signon_serial: int = 0
    signon_ms: int = 0
    # The key suite chosen at registration (core/admin/keys.py): a record
    # written before suites existed is AES_HMAC_SHA256.
    key_algorithm: KeyAlgorithm = KeyAlgorithm.AES_HMAC_SHA256


class Operator(msgspec.Struct):
    """A cashier or attendant, as TerminalContext.operator_id names them."""

    operator_id: int
    org_id: int
    name: str
    enabled: bool = True


class Category(msgspec.Struct):
    org_id: int
    code: str
    name: str


class Goods(msgspec.Struct):
    org_id: int
    code: str
    name: str
    # A category code of the same organisation.
    category: str
    # "L" for fuel, "pc" for a piece, ...
    unit: str
    # List price per unit, integer minor units.
    price_minor: int


class Parameters(msgspec.Struct):
    """A domain's system parameters (one record per headquarters)."""

    # Lifetime of a bearer token given at Login.
    token_validity_s: int = TOKEN_VALIDITY_S_DEFAULT
    # Lifetime of a working key given at SignOn.
    working_key_validity_s: int = WORKING_KEY_VALIDITY_S_DEFAULT
    # After this many wrong passwords in a row a user is locked for
    # login_lockout_s (an administrator may unlock it sooner).
    login_failures_max: int = LOGIN_FAILURES_MAX_DEFAULT
    login_lockout_s: int = LOGIN_LOCKOUT_S_DEFAULT


PARAMETER_RANGES = {
    "token_validity_s": (1, TOKEN_VALIDITY_S_MAX),
    "working_key_validity_s": (1, WORKING_KEY_VALIDITY_S_MAX),
    "login_failures_max": (1, LOGIN_FAILURES_MAX_MAX),
    "login_lockout_s": (1, LOGIN_LOCKOUT_S_MAX),
}


class User(msgspec.Struct):
    username: str
    org_id: int
    role: Role
    # argon2id, in its PHC string form (core/admin/passwords.py).
    password_hash: str
    enabled: bool = True
    created_ms: int = 0
    password_changed_ms: int = 0
    # Wrong passwords since the last good login; locked until this time
    # (ms since the epoch) once they reach the domain's login_failures_max.
    failed_logins: int = 0
    locked_until_ms: int = 0


class Session(msgspec.Struct):
    """A bearer token's session; stored under the token's SHA-256, never the
    token itself, so a copy of the store hands out no live token."""

    username: str
    expires_ms: int
    created_ms: int


class CardOwner(msgspec.Struct):
    """What administration keeps of a card the kernel holds (status, limits,
    balances, allowed stations and domains live in the kernel's records):
    the organisation that issued it, whose subtree alone sees and changes
    it, and what the kernel has no field for."""

    card_id: int
    org_id: int
    # 0: no customer.
    customer_id: int = 0
    # Fleet (COMPANY) cards only: the vehicle the card is for.
    vehicle_plate: str = ""
    # Goods or category codes the card may buy; empty: anything.
    allowed_goods: tuple[str, ...] = ()
    # Why it was last reported lost, frozen or cancelled; "" once unfrozen.
    status_reason: str = ""
    issued_ms: int = 0
    # 0 until ActivateCard: the kernel holds the card FROZEN till then.
    activated_ms: int = 0


class FieldCipher(enum.IntEnum):
    """How a customer's personal fields are stored (core/admin/customers.py)."""

    # In the clear: records written before encryption at rest, or by a
    # server without a master key.
    PLAINTEXT = 0
    AES_256_GCM = 1
    SM4_GCM = 2


class Customer(msgspec.Struct):
    """A card holder. PERSONAL_FIELDS are what EraseCustomer blanks and
    what the audit log never holds (it shows "[personal]" instead).

    Stored encrypted (field_cipher not PLAINTEXT), the personal fields
    themselves are "" and their values are in fields_sealed, each under the
    customer's own data key, which is data_key_sealed under the master key
    (core/admin/customers.py opens them; nothing else should read them).
    """

    PERSONAL_FIELDS: ClassVar[frozenset] = frozenset(("name", "phone", "email", "address", "birth_date"))

    customer_id: int
    org_id: int
    name: str = ""
    phone: str = ""
    email: str = ""
    address: str = ""
    # "YYYY-MM-DD" or "".
    birth_date: str = ""
    created_ms: int = 0
    updated_ms: int = 0
    # When the personal fields were erased on request; 0: never.
    erased_ms: int = 0
    # The erasure request's reference (a ticket number, no personal data).
    erasure_reference: str = ""
    field_cipher: FieldCipher = FieldCipher.PLAINTEXT
    # The customer's data key, sealed under the master key (keys.py,
    # Purpose.CUSTOMER_DATA_KEY); b"" when in the clear or erased.
    data_key_sealed: bytes = b""
    # Personal field name -> nonce || ciphertext || tag under the data key.
    fields_sealed: dict[str, bytes] = msgspec.field(default_factory=dict)


class AuditEntry(msgspec.Struct, frozen=True):
    """One administrative action. `hash` is the SHA-256 of every other field
    including `prev_hash`, the previous entry's hash (core/admin/audit.py)."""

    seq: int
    time_ms: int
    # "user:alice", "terminal:101", "cli:root".
    actor: str
    # The organisation the object belongs to: who may read the entry.
    org_id: int
    # The RPC or command: "CreateOrganisation", "SignOn", "Login", ...
    action: str
    # "organisation:12", "terminal:101", "user:bob".
    object: str
    # JSON of the object before and after ("" when absent); keys and password
    # hashes are never in it.
    before: str
    after: str
    prev_hash: bytes
    hash: bytes


class AuditHead(msgspec.Struct):
    """The last entry's seq and hash, kept apart from the chain so that
    cutting entries off its end is detected too."""

    seq: int
    hash: bytes


# ---------------------------------------------------------------- keys

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def u32_key(value: int) -> bytes:
    return _U32.pack(value)


def u64_key(value: int) -> bytes:
    return _U64.pack(value)


def parse_u32_key(key: bytes) -> int:
    return _U32.unpack(key)[0]


_CUSTOMER_CARD = struct.Struct(">QQ")


def customer_card_key(customer_id: int, card_id: int) -> bytes:
    """(customer u64, card u64): admin_customer_cards, a customer's cards."""
    return _CUSTOMER_CARD.pack(customer_id, card_id)


def parse_customer_card_key(key: bytes) -> tuple[int, int]:
    return _CUSTOMER_CARD.unpack(key)


def coded_key(org_id: int, code: str) -> bytes:
    """(org_id u32, code utf-8): goods and categories of an organisation."""
    return _U32.pack(org_id) + code.encode()


_encoder = msgspec.msgpack.Encoder()


def pack(record) -> bytes:
    return _encoder.encode(record)


def unpack(record_type, data: bytes):
    return msgspec.msgpack.decode(data, type=record_type)
