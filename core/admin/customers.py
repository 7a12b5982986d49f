"""Customers: card holders' profiles, their tier, the export of everything
held on a person, and the erasure of their personal fields on request.

Owns: the admin_customers database (Customer) and admin_customer_cards (a
customer's cards, written when a card is issued to them). A customer is
its organisation's: users whose subtree holds that organisation see and
change it; to anyone else it is NotFound, in the words of an id nobody
uses. Customer ids are one namespace for all domains.

Personal data: only the fields of CustomerProfile are stored (name, phone,
email, address, date of birth), all optional. The audit log never holds
their values (core/admin/audit.py writes "[personal]"), so that erasing
them leaves no copy in an append-only log. EraseCustomer blanks them and
records when; the customer id, its organisation, its cards, their balances
and every journal entry stay as they were (the books must still add up),
now belonging to nobody identifiable. ExportCustomer is one JSON document:
the profile, the tier, every card with its balances, transactions and
points statement; exporting is itself an audited action.

At rest, the personal fields are encrypted (when the server has a master
key): each customer gets its own random data key, sealed under the master
key (a key file's or an HSM's, core/admin/keys.py); each field is sealed
under the data key with AES-256-GCM or SM4-GCM (the network's choice,
Admin.field_cipher, the server's --pii-cipher), its associated data naming
the customer, the field and the cipher, so that a ciphertext copied onto
another customer or field does not open. A new data key at every write.
EraseCustomer drops the data key with the fields (crypto-shredding): a
ciphertext left anywhere (a copy of the store made before, LMDB pages not
yet reused) opens only with that data key, and the store no longer holds
it; copies made before the erasure hold it sealed under the master key,
which is why the master key is rotated (docs/security-keys.md).
Records written in the clear (before this, or by a server without a master
key) read as they are, and are encrypted at their next write.
Everything above this module sees a Customer with its fields in the clear:
`_opened` is the one place that opens, `_sealed` the one that seals.
Used by: core.admin.Admin (its CustomersMixin), server/admin_service.py.
"""

import datetime
import enum
import os
import re

import msgspec

from core.admin import keys
from core.admin.access import (
    Actor,
    customer_record,
    domain_of,
    require_range,
    require_text,
    require_visible,
    subtree,
    visible_customer,
)
from core.admin.base import AdminBase
from core.admin.cards import card_owner, card_tier, card_view
from core.admin.directory import collect
from core.admin.errors import AlreadyExists, FailedPrecondition, InvalidInput
from core.admin.model import (
    ADDRESS_LENGTH_MAX,
    CUSTOMER_ID_MAX,
    EMAIL_LENGTH_MAX,
    EXPORT_TRANSACTIONS_PER_CARD_MAX,
    LIST_LIMIT_MAX,
    NAME_LENGTH_MAX,
    PHONE_LENGTH_MAX,
    REASON_LENGTH_MAX,
    Customer,
    FieldCipher,
    pack,
    parse_customer_card_key,
    u64_key,
    unpack,
)
from core.loyalty.statement import points_statement
from core.records import Txn, decode
from core.results import OpKind, Tier, TxnState
from core.store import Store, rows

EXPORT_FORMAT = "tally.v1.customer-export"
PERSONAL_FIELD_NAMES = tuple(sorted(Customer.PERSONAL_FIELDS))
# The AEAD of each cipher (keys.py's suites) and its data key's length.
FIELD_SUITES = {FieldCipher.AES_256_GCM: keys.AES, FieldCipher.SM4_GCM: keys.SM4}
FIELD_LABEL = b"tally.v1 customer field"
_SEALED_FIELDS = {"data_key_sealed": b"", "fields_sealed": {}}
_PHONE = re.compile(r"[0-9+\-() ]*\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


class CustomerProfile(msgspec.Struct, frozen=True):
    """The personal fields, each optional ("")."""

    name: str = ""
    phone: str = ""
    email: str = ""
    address: str = ""
    birth_date: str = ""


class CustomerView(msgspec.Struct, frozen=True):
    customer: Customer
    # The highest tier of the customer's cards (REGULAR without cards).
    tier: Tier
    card_ids: tuple[int, ...]


def require_profile(profile: CustomerProfile) -> CustomerProfile:
    require_text(profile.name, "profile.name", 0, NAME_LENGTH_MAX)
    require_text(profile.phone, "profile.phone", 0, PHONE_LENGTH_MAX)
    if not _PHONE.match(profile.phone):
        raise InvalidInput("profile.phone", "digits, '+', '-', '(', ')' and spaces only")
    require_text(profile.email, "profile.email", 0, EMAIL_LENGTH_MAX)
    if profile.email and profile.email.count("@") != 1:
        raise InvalidInput("profile.email", "must hold exactly one '@'")
    require_text(profile.address, "profile.address", 0, ADDRESS_LENGTH_MAX)
    if profile.birth_date:
        try:
            if not _DATE.match(profile.birth_date):
                raise ValueError
            datetime.date.fromisoformat(profile.birth_date)
        except ValueError:
            raise InvalidInput("profile.birth_date", f"must be a date YYYY-MM-DD, got {profile.birth_date!r}") from None
    return profile


def field_aad(customer_id: int, field: str, cipher: FieldCipher) -> bytes:
    """"tally.v1 customer field" 0x00, customer id (u64 BE), cipher (one
    byte), the field's name."""
    return FIELD_LABEL + b"\0" + u64_key(customer_id) + bytes((cipher,)) + field.encode()


def seal_personal(master_key: keys.MasterKey, cipher: FieldCipher, customer: Customer) -> Customer:
    """The stored form of a customer in the clear: a new data key, sealed;
    each personal field sealed under it (an empty one too: the stored form
    does not tell which fields are empty); the fields themselves blank."""
    suite = FIELD_SUITES[cipher]
    data_key = os.urandom(keys.working_key_bytes(suite))
    sealed = {field: keys.aead_encrypt(suite, data_key, getattr(customer, field).encode(),
                                       field_aad(customer.customer_id, field, cipher))
              for field in PERSONAL_FIELD_NAMES}
    return msgspec.structs.replace(customer, **dict.fromkeys(PERSONAL_FIELD_NAMES, ""), field_cipher=cipher,
                                   data_key_sealed=keys.seal_data_key(master_key, customer.customer_id, data_key),
                                   fields_sealed=sealed)


def open_personal(master_key: keys.MasterKey | None, stored: Customer) -> Customer:
    """The customer with its personal fields in the clear (blank once
    erased); FailedPrecondition without the master key they need."""
    if stored.field_cipher == FieldCipher.PLAINTEXT or not stored.data_key_sealed:
        return msgspec.structs.replace(stored, **_SEALED_FIELDS)
    if master_key is None:
        raise FailedPrecondition(f"customer {stored.customer_id}: the personal fields are encrypted, and this server "
                                 f"has no master key (--master-key-file or --pkcs11-module)")
    suite = FIELD_SUITES[stored.field_cipher]
    try:
        data_key = keys.unseal_data_key(master_key, stored.customer_id, stored.data_key_sealed)
        fields = {field: keys.aead_decrypt(suite, data_key, stored.fields_sealed[field],
                                           field_aad(stored.customer_id, field, stored.field_cipher)).decode()
                  for field in PERSONAL_FIELD_NAMES}
    except (keys.SealError, KeyError):
        raise FailedPrecondition(f"customer {stored.customer_id}: the personal fields do not open: another master "
                                 f"key, or altered data") from None
    return msgspec.structs.replace(stored, **fields, **_SEALED_FIELDS)


def customer_card_ids(txn, store: Store, customer_id: int) -> tuple[int, ...]:
    if store.admin_customer_cards is None:
        return ()
    prefix = u64_key(customer_id)
    found = []
    cursor = txn.cursor(db=store.admin_customer_cards)
    if cursor.set_range(prefix):
        for key in cursor.iternext(values=False):
            if not key.startswith(prefix):
                break
            found.append(parse_customer_card_key(key)[1])
    return tuple(found)


def customer_view(txn, store: Store, customer: Customer) -> CustomerView:
    card_ids = customer_card_ids(txn, store, customer.customer_id)
    tier = max((card_tier(txn, store, card_id) for card_id in card_ids), default=Tier.REGULAR)
    return CustomerView(customer, Tier(tier), card_ids)


def card_transactions(txn, store: Store, card_id: int) -> tuple[list[dict], bool]:
    """The card's transactions, oldest first, the most recent
    EXPORT_TRANSACTIONS_PER_CARD_MAX of them, and whether there were more.
    The transaction table has no index by card: this reads all of it."""
    found = []
    for _, value in rows(txn, store.txns):
        record = decode(Txn, value)
        if record.card_id == card_id:
            found.append(record)
    kept = found[-EXPORT_TRANSACTIONS_PER_CARD_MAX:]
    return [transaction_document(record) for record in kept], len(found) > len(kept)


def transaction_document(record: Txn) -> dict:
    document = msgspec.structs.asdict(record)
    document["kind"] = OpKind(record.kind).name
    document["state"] = TxnState(record.state).name
    return document


def without_keys(fields: dict) -> dict:
    """A customer's fields without the sealed ones (empty once opened)."""
    return {name: value for name, value in fields.items() if name not in _SEALED_FIELDS}


def named_fields(record) -> dict:
    """A flat record's fields, enums by name."""
    return {name: value.name if isinstance(value, enum.Enum) else value
            for name, value in msgspec.structs.asdict(record).items()}


class CustomersMixin(AdminBase):
    def _opened(self, stored: Customer) -> Customer:
        return open_personal(self.master_key, stored)

    def _sealed(self, customer: Customer) -> Customer:
        """What to store: encrypted under a new data key with a master key;
        in the clear without one (the server warns at start)."""
        if self.master_key is None:
            return customer
        return seal_personal(self.master_key, self.field_cipher, customer)

    def _visible_opened(self, txn, actor: Actor, customer_id: int) -> Customer:
        return self._opened(visible_customer(txn, self.store, actor, customer_id))

    def create_customer(self, actor: Actor, org_id: int, profile: CustomerProfile,
                        customer_id: int = 0) -> CustomerView:
        require_profile(profile)
        require_range(customer_id, "customer_id", 0, CUSTOMER_ID_MAX)

        def change(txn):
            require_visible(txn, self.store, actor, org_id)
            new_id = customer_id or self._next_customer_id(txn)
            if customer_record(txn, self.store, new_id) is not None:
                raise AlreadyExists(f"customer id {new_id} is taken")
            now = self.clock()
            customer = Customer(new_id, org_id, **msgspec.structs.asdict(profile), created_ms=now, updated_ms=now)
            txn.put(u64_key(new_id), pack(self._sealed(customer)), db=self.store.admin_customers)
            self._audit(txn, actor, "CreateCustomer", f"customer:{new_id}", org_id, None, customer)
            return customer_view(txn, self.store, customer)

        return self._write(change)

    def _next_customer_id(self, txn) -> int:
        cursor = txn.cursor(db=self.store.admin_customers)
        last = int.from_bytes(cursor.key(), "big") if cursor.last() else 0
        if last >= CUSTOMER_ID_MAX:
            raise InvalidInput("customer_id", f"no id left above {last}: give one explicitly")
        return last + 1

    def update_customer(self, actor: Actor, customer_id: int, profile: CustomerProfile) -> CustomerView:
        """Replaces every personal field with the profile's."""
        require_profile(profile)

        def change(txn):
            before = self._visible_opened(txn, actor, customer_id)
            if before.erased_ms:
                raise FailedPrecondition(f"customer {customer_id} was erased on request: create a new customer")
            after = msgspec.structs.replace(before, **msgspec.structs.asdict(profile), updated_ms=self.clock())
            txn.put(u64_key(customer_id), pack(self._sealed(after)), db=self.store.admin_customers)
            self._audit(txn, actor, "UpdateCustomer", f"customer:{customer_id}", before.org_id, before, after)
            return customer_view(txn, self.store, after)

        return self._write(change)

    def get_customer(self, actor: Actor, customer_id: int) -> CustomerView:
        def look(txn):
            return customer_view(txn, self.store, self._visible_opened(txn, actor, customer_id))

        return self._read(look)

    def list_customers(self, actor: Actor, org_id: int = 0,
                       limit: int = LIST_LIMIT_MAX) -> tuple[list[CustomerView], bool]:
        def look(txn):
            if org_id:
                require_visible(txn, self.store, actor, org_id)
            seen = subtree(txn, self.store, actor)
            customers = (unpack(Customer, value) for _, value in rows(txn, self.store.admin_customers))
            # Only the customers shown are opened (a token call each with an HSM).
            chosen = (customer for customer in customers
                      if (seen is None or customer.org_id in seen) and org_id in (0, customer.org_id))
            return collect((customer_view(txn, self.store, self._opened(customer)) for customer in chosen), limit)

        return self._read(look)

    def erase_customer(self, actor: Actor, customer_id: int, reason: str) -> CustomerView:
        """Blank the personal fields for good and destroy the customer's
        data key (see the module's docstring)."""
        require_text(reason, "reason", 1, REASON_LENGTH_MAX)

        def change(txn):
            stored = visible_customer(txn, self.store, actor, customer_id)
            if stored.erased_ms:
                raise FailedPrecondition(f"customer {customer_id} was erased already")
            # Erasure does not need the fields open: without the master key
            # it still destroys what would open them.
            before = stored if stored.data_key_sealed and self.master_key is None else self._opened(stored)
            now = self.clock()
            blank = msgspec.structs.asdict(CustomerProfile())
            after = msgspec.structs.replace(stored, **blank, **_SEALED_FIELDS, updated_ms=now, erased_ms=now,
                                            erasure_reference=reason)
            txn.put(u64_key(customer_id), pack(after), db=self.store.admin_customers)
            self._audit(txn, actor, "EraseCustomer", f"customer:{customer_id}", before.org_id, before, after)
            return customer_view(txn, self.store, after)

        return self._write(change)

    def export_customer(self, actor: Actor, customer_id: int) -> bytes:
        """Everything held on the customer, as one JSON document (UTF-8)."""
        def look(txn):
            customer = self._visible_opened(txn, actor, customer_id)
            view = customer_view(txn, self.store, customer)
            cards = []
            for card_id in view.card_ids:
                owner = card_owner(txn, self.store, card_id)
                transactions, truncated = card_transactions(txn, self.store, card_id)
                cards.append({"card": named_fields(card_view(txn, self.store, owner)), "transactions": transactions,
                              "transactions_truncated": truncated})
            return customer, view, cards

        customer, view, cards = self._read(look)
        for card in cards:
            card["points_statement"] = msgspec.to_builtins(points_statement(self.store, card["card"]["card_id"]))
        self._write(lambda txn: self._audit(txn, actor, "ExportCustomer", f"customer:{customer_id}", customer.org_id))
        document = {
            "format": EXPORT_FORMAT,
            "exported_ms": self.clock(),
            "exported_by": actor.name,
            "customer": {**without_keys(named_fields(customer)), "tier": view.tier.name,
                         "domain": self._read(lambda txn: domain_of(txn, self.store, customer.org_id))},
            "cards": cards,
        }
        return msgspec.json.encode(document)
