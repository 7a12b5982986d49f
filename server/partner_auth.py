"""The partner guard: a partner programme's MAC on each of its requests.

Owns: checking, before anything else runs and before the request is parsed,
that a partner's request carries x-tally-partner and a MAC of its exact
bytes under the partner's key (core/admin/keys.py partner_mac), that the
partner is registered and enabled, and that the request names only the
partner's own id. On with --terminal-auth (partners are machines, as
terminals are).
Used by: server/rpc.py, for the RPCs server/callers.py lets a partner call
(LoyaltyService.ExchangePartnerPoints).

  metadata missing or malformed                 UNAUTHENTICATED / INVALID_ARGUMENT
  partner not registered                        UNAUTHENTICATED
  partner disabled                              PERMISSION_DENIED
  MAC does not verify (any byte changed)        UNAUTHENTICATED
  request names another partner_id              PERMISSION_DENIED
"""

from core.admin import keys
from core.admin.partners import PartnerKeys
from core.errors import InvalidInput, PermissionDenied, Unauthenticated
from core.store import Store
from server.callers import Caller

DECIMAL_DIGITS_MAX = 5


class PartnerGuard:
    def __init__(self, store: Store, master_key: bytes):
        self.store = store
        self.keys = PartnerKeys(store, master_key)

    def check(self, method: str, metadata, body: bytes, parse) -> tuple[object, Caller]:
        partner_id, mac = parse_metadata(metadata)
        with self.store.env.begin() as txn:
            partner, secret = self.keys.secret_of(txn, partner_id)
        if not keys.partner_mac_matches(secret, method, partner_id, body, mac):
            raise Unauthenticated(f"MAC of partner {partner_id} does not verify", reason="BAD_MAC")
        request = parse(body)
        if request.partner_id != partner_id:
            raise PermissionDenied(f"partner_id is {request.partner_id}, but the MAC is partner {partner_id}'s",
                                   field="partner_id", reason="OTHER_PARTNER")
        return request, Caller("partner", partner_id=partner_id)


def parse_metadata(metadata) -> tuple[int, bytes]:
    found = dict(metadata or ())
    partner, mac = found.get(keys.METADATA_PARTNER), found.get(keys.METADATA_MAC)
    if partner is None or mac is None:
        raise Unauthenticated(f"missing {keys.METADATA_PARTNER} or {keys.METADATA_MAC}: this server authenticates partners",
                              reason="NO_CREDENTIAL")
    if not (partner.isascii() and partner.isdigit() and len(partner) <= DECIMAL_DIGITS_MAX):
        raise InvalidInput(keys.METADATA_PARTNER, "must be a partner id, decimal", reason="BAD_METADATA")
    try:
        mac_bytes = bytes.fromhex(mac)
    except ValueError:
        mac_bytes = b""
    if len(mac_bytes) != keys.MAC_BYTES:
        raise InvalidInput(keys.METADATA_MAC, f"must be {2 * keys.MAC_BYTES} hex digits", reason="BAD_METADATA")
    return int(partner), mac_bytes
