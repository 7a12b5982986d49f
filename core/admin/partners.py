"""Partner programmes: registration, disabling, the key check of their requests.

Owns: the admin_partners database. A partner (an airline, a bank, another
chain) sends points into cards with LoyaltyService.ExchangePartnerPoints; a
points-into-cash partner moves money, so in secure mode it must prove who
it is, like a terminal:

1. RegisterPartner (an administrator of a headquarters): a partner id gets a
   random 32-byte secret key, returned this once; the store keeps it sealed
   under the master key, bound to the partner id.
2. Every request: x-tally-partner and x-tally-mac (core/admin/keys.py
   partner_mac); `PartnerKeys.secret_of` hands the guard
   (server/partner_auth.py) the partner's record and secret, or refuses:
   unregistered (Unauthenticated), disabled (PermissionDenied).
A partner credits only cards of its headquarters' domain.
Used by: core.admin.Admin (its PartnersMixin), server/admin_service.py,
server/partner_auth.py.
"""

import os

import msgspec

from core import limits
from core.admin import keys
from core.admin.access import Actor, domain_of, require_range, require_text, require_visible, subtree
from core.admin.base import AdminBase
from core.admin.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from core.admin.model import (
    LIST_LIMIT_MAX,
    NAME_LENGTH_MAX,
    REASON_LENGTH_MAX,
    CardOwner,
    OrgKind,
    Partner,
    PartnerStatus,
    pack,
    u32_key,
    u64_key,
    unpack,
)
from core.records import card_station_key
from core.store import Store, rows


def partner_record(txn, store: Store, partner_id: int) -> Partner | None:
    value = txn.get(u32_key(partner_id), db=store.admin_partners) if store.admin_partners is not None else None
    return None if value is None else unpack(Partner, value)


class PartnersMixin(AdminBase):
    def _visible_partner(self, txn, actor: Actor, partner_id: int) -> Partner:
        partner = partner_record(txn, self.store, partner_id)
        if partner is None or (not actor.everywhere and partner.org_id not in subtree(txn, self.store, actor)):
            raise NotFound(f"partner {partner_id} not found")
        return partner

    def register_partner(self, actor: Actor, partner_id: int, org_id: int, name: str = "") -> tuple[Partner, bytes]:
        """(the record, the secret key): give the secret to the partner now;
        it is never shown again."""
        require_range(partner_id, "partner_id", 1, limits.PARTNER_ID_MAX)
        require_text(name, "name", 0, NAME_LENGTH_MAX)
        master_key = self._require_master_key()

        def change(txn):
            headquarters = require_visible(txn, self.store, actor, org_id)
            if headquarters.kind != OrgKind.HEADQUARTERS:
                raise InvalidInput("org_id", f"organisation {org_id} is a {headquarters.kind.name}, not a HEADQUARTERS: "
                                             "a partner credits the cards of a whole domain")
            if partner_record(txn, self.store, partner_id) is not None:
                raise AlreadyExists(f"partner id {partner_id} is registered")
            secret = os.urandom(keys.KEY_BYTES)
            sealed = keys.seal(master_key, keys.Purpose.PARTNER_SECRET, partner_id, 0, secret)
            partner = Partner(partner_id, org_id, name, PartnerStatus.ACTIVE, sealed, self.clock())
            txn.put(u32_key(partner_id), pack(partner), db=self.store.admin_partners)
            self._audit(txn, actor, "RegisterPartner", f"partner:{partner_id}", org_id, None, partner)
            return partner, secret

        return self._write(change)

    def disable_partner(self, actor: Actor, partner_id: int, reason: str) -> Partner:
        require_text(reason, "reason", 1, REASON_LENGTH_MAX)

        def change(txn):
            before = self._visible_partner(txn, actor, partner_id)
            after = msgspec.structs.replace(before, status=PartnerStatus.DISABLED, disabled_reason=reason)
            txn.put(u32_key(partner_id), pack(after), db=self.store.admin_partners)
            self._audit(txn, actor, "DisablePartner", f"partner:{partner_id}", before.org_id, before, after)
            return after

        return self._write(change)

    def list_partners(self, actor: Actor, limit: int = LIST_LIMIT_MAX) -> tuple[list[Partner], bool]:
        require_range(limit, "limit", 1, LIST_LIMIT_MAX)

        def look(txn):
            seen = subtree(txn, self.store, actor)
            found = [partner for partner in (unpack(Partner, value) for _, value in rows(txn, self.store.admin_partners))
                     if seen is None or partner.org_id in seen]
            return found[:limit], len(found) > limit

        return self._read(look)


class PartnerKeys:
    """The guard's side: a partner's record and secret, or a refusal."""

    def __init__(self, store: Store, master_key: bytes):
        self.store = store
        self.master_key = master_key

    def secret_of(self, txn, partner_id: int) -> tuple[Partner, bytes]:
        partner = partner_record(txn, self.store, partner_id)
        if partner is None:
            raise Unauthenticated(f"partner {partner_id} is not registered", reason="UNKNOWN_PARTNER")
        if partner.status != PartnerStatus.ACTIVE:
            raise PermissionDenied(f"partner {partner_id} is disabled: {partner.disabled_reason}", reason="PARTNER_DISABLED")
        return partner, keys.unseal(self.master_key, keys.Purpose.PARTNER_SECRET, partner_id, 0, partner.secret_sealed)


def card_in_domain(txn, store: Store, card_id: int, domain: int) -> bool:
    """Whether a card belongs to a headquarters' domain: issued by one of its
    organisations, or enabled for it (core/admin/cards.py)."""
    raw = txn.get(u64_key(card_id), db=store.admin_cards) if store.admin_cards is not None else None
    if raw is not None and domain_of(txn, store, unpack(CardOwner, raw).org_id) == domain:
        return True
    return txn.get(card_station_key(card_id, domain), db=store.card_domains) is not None
