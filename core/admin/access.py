"""Who may do what, and where: callers, the permission table, domains.

Owns: `Actor` (who acts: a user with a role, a terminal, or the command line),
`PERMISSIONS` (AdminService RPC -> roles allowed), the organisation tree
walks that decide what a caller may see (its own organisation's subtree,
nothing else; a card or customer is its organisation's), and the shared
input checks of core.admin.
Used by: directory.py, users.py, terminals.py, cards.py, customers.py,
server/admin_service.py.
"""

import re
import time

import msgspec

from core.admin.errors import InvalidInput, NotFound, PermissionDenied
from core.admin.model import ORG_DEPTH_MAX, Customer, Organisation, Role, u32_key, u64_key, unpack
from core.store import Store, rows

ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE, AUDITOR = (
    Role.ADMINISTRATOR, Role.OPERATIONS, Role.CUSTOMER_SERVICE, Role.AUDITOR)
EVERY_ROLE = frozenset(Role)

# AdminService: the roles allowed to call each RPC. Login needs no token;
# every other RPC needs one whose user has one of these roles. A test checks
# that every RPC of the service is in this table, so none is open by mistake.
PERMISSIONS: dict[str, frozenset] = {
    "Login": frozenset(),
    "Logout": EVERY_ROLE,
    "WhoAmI": EVERY_ROLE,
    "CreateOrganisation": frozenset((ADMINISTRATOR,)),
    "UpdateOrganisation": frozenset((ADMINISTRATOR,)),
    "GetOrganisation": EVERY_ROLE,
    "ListOrganisations": EVERY_ROLE,
    "RegisterTerminal": frozenset((ADMINISTRATOR,)),
    "EnableTerminal": frozenset((ADMINISTRATOR,)),
    # Operations staff may pull a stolen or broken terminal at once.
    "DisableTerminal": frozenset((ADMINISTRATOR, OPERATIONS)),
    "GetTerminal": frozenset((ADMINISTRATOR, OPERATIONS, AUDITOR)),
    "ListTerminals": frozenset((ADMINISTRATOR, OPERATIONS, AUDITOR)),
    "SetOperator": frozenset((ADMINISTRATOR, OPERATIONS)),
    "ListOperators": frozenset((ADMINISTRATOR, OPERATIONS, AUDITOR)),
    "SetCategory": frozenset((ADMINISTRATOR, OPERATIONS)),
    "ListCategories": EVERY_ROLE,
    "SetGoods": frozenset((ADMINISTRATOR, OPERATIONS)),
    "ListGoods": EVERY_ROLE,
    "GetParameters": EVERY_ROLE,
    "SetParameters": frozenset((ADMINISTRATOR,)),
    "CreateUser": frozenset((ADMINISTRATOR,)),
    "UpdateUser": frozenset((ADMINISTRATOR,)),
    # Anyone changes their own password (giving the old one); an
    # administrator sets that of a user of its subtree (see users.py).
    "SetPassword": EVERY_ROLE,
    "GetUser": frozenset((ADMINISTRATOR, AUDITOR)),
    "ListUsers": frozenset((ADMINISTRATOR, AUDITOR)),
    "ReadAudit": frozenset((AUDITOR,)),
    "VerifyAudit": frozenset((AUDITOR, ADMINISTRATOR)),
    # Cards (core/admin/cards.py). Customer service handles a holder's card
    # (issue, activate, lost, freeze, unfreeze, plate) but moves no money:
    # top-ups and cancelling (which owes the balance back) are operations'.
    "IssueCard": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    "ActivateCard": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    "TopUpCard": frozenset((ADMINISTRATOR, OPERATIONS)),
    "ReportCardLost": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    "FreezeCard": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    "UnfreezeCard": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    "CancelCard": frozenset((ADMINISTRATOR, OPERATIONS)),
    "ChangeCardLimits": frozenset((ADMINISTRATOR, OPERATIONS)),
    "SetVehiclePlate": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    "AllowCardStation": frozenset((ADMINISTRATOR, OPERATIONS)),
    "SetAllowedGoods": frozenset((ADMINISTRATOR, OPERATIONS)),
    # Opening a card to another domain's stations is a business decision.
    "EnableCardDomain": frozenset((ADMINISTRATOR,)),
    "GetCardRecord": EVERY_ROLE,
    "ListCardRecords": EVERY_ROLE,
    # Customers (core/admin/customers.py): personal data, so auditors and
    # operations staff do not read it; erasing it is for administrators.
    "CreateCustomer": frozenset((ADMINISTRATOR, CUSTOMER_SERVICE)),
    "UpdateCustomer": frozenset((ADMINISTRATOR, CUSTOMER_SERVICE)),
    "GetCustomer": frozenset((ADMINISTRATOR, CUSTOMER_SERVICE)),
    "ListCustomers": frozenset((ADMINISTRATOR, CUSTOMER_SERVICE)),
    "ExportCustomer": frozenset((ADMINISTRATOR, CUSTOMER_SERVICE)),
    "EraseCustomer": frozenset((ADMINISTRATOR,)),
}

# The back-office RPCs of the other services, by gRPC path: with
# `python -m server --back-office-auth` each needs an AdminService token
# whose user has one of these roles (server/back_office_auth.py). What a
# terminal or a customer calls (Pay, PriceBasket, ClaimPacket, Draw,
# CheckIn, SignOn, ...) is not here: terminals prove themselves with MACs
# (--terminal-auth). Changing what sales do (promotions, limits, blacklist,
# loyalty rules, gifts) is for administrators and operations staff; reading
# it, for every role. A test checks that every path names an RPC of its
# service and none is a terminal's.
_CHANGE = frozenset((ADMINISTRATOR, OPERATIONS))
_PROMOTION, _RISK, _LOYALTY = "/tally.v1.PromotionService/", "/tally.v1.RiskService/", "/tally.v1.LoyaltyService/"
_SETTLEMENT, _CARD = "/tally.v1.SettlementService/", "/tally.v1.CardService/"
BACK_OFFICE_PERMISSIONS: dict[str, frozenset] = {
    **{_PROMOTION + name: _CHANGE for name in (
        "CreatePromotion", "SubmitPromotion", "ApprovePromotion", "ActivatePromotion", "EndPromotion",
        "SetStackingPolicy", "IssueCoupons", "CreatePacket", "ReturnExpiredPackets", "GrantChances")},
    **{_PROMOTION + name: EVERY_ROLE for name in ("ListPromotions", "GetPromotion", "GetStackingPolicy", "ListCoupons", "ListDraws")},
    **{_RISK + name: _CHANGE for name in ("SetLimits", "SetFlagRules", "AddBlacklistEntry", "RemoveBlacklistEntry")},
    **{_RISK + name: EVERY_ROLE for name in ("ListLimits", "ListBlacklist", "ListFlags")},
    **{_LOYALTY + name: _CHANGE for name in ("SaveRules", "SetGift", "AddGiftStock", "SetTier", "SetTimeZone")},
    _LOYALTY + "GetRules": EVERY_ROLE,
    # Reconciliation posts adjustments and closes days: operations' work,
    # which auditors read. SignOn and ShiftClose are the terminals' own.
    **{_SETTLEMENT + name: _CHANGE for name in ("ImportStatement", "Reconcile", "ResolveDifference", "DayEnd")},
    **{_SETTLEMENT + name: frozenset((ADMINISTRATOR, OPERATIONS, AUDITOR))
       for name in ("GetReconcileStatus", "ListDifferences", "GetClearing")},
    # CardService's card changes, with the roles of their AdminService twins
    # (IssueCard, FreezeCard, ChangeCardLimits, AllowCardStation); TopUp is a
    # terminal's, GetCard a balance enquiry.
    _CARD + "OpenCard": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    _CARD + "SetCardStatus": frozenset((ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE)),
    _CARD + "SetCardLimits": _CHANGE,
    _CARD + "AllowStation": _CHANGE,
}


class Actor(msgspec.Struct, frozen=True):
    """Who acts. org_id 0 is the command line run by whoever may read the
    data directory: it sees every domain (it could read the files anyway)."""

    name: str
    org_id: int
    role: Role | None = None

    @property
    def everywhere(self) -> bool:
        return self.org_id == 0


def cli_actor() -> Actor:
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", 0)


def require_role(actor: Actor, rpc: str, permissions: dict[str, frozenset] = PERMISSIONS):
    allowed = permissions[rpc]
    if actor.role not in allowed:
        names = ", ".join(sorted(role.name for role in allowed)) or "nobody"
        role = actor.role.name if actor.role is not None else "none"
        raise PermissionDenied(f"{rpc} needs the role {names}; {actor.name} has {role}")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- the tree


def organisation(txn, store: Store, org_id: int) -> Organisation | None:
    value = txn.get(u32_key(org_id), db=store.admin_orgs) if store.admin_orgs is not None else None
    return None if value is None else unpack(Organisation, value)


def ancestry(txn, store: Store, org_id: int) -> list[int]:
    """org_id, its parent, ..., its headquarters; [] if it does not exist."""
    chain = []
    while org_id != 0 and len(chain) <= ORG_DEPTH_MAX:
        org = organisation(txn, store, org_id)
        if org is None:
            return chain if chain else []
        chain.append(org_id)
        org_id = org.parent_id
    return chain


def domain_of(txn, store: Store, org_id: int) -> int:
    """The headquarters above org_id (itself for a headquarters); 0 if none."""
    chain = ancestry(txn, store, org_id)
    return chain[-1] if chain else 0


def visible(txn, store: Store, actor: Actor, org_id: int) -> bool:
    """Whether org_id exists and lies in the actor's subtree."""
    if actor.everywhere:
        return organisation(txn, store, org_id) is not None
    return actor.org_id in ancestry(txn, store, org_id)


def require_visible(txn, store: Store, actor: Actor, org_id: int, what: str = "organisation") -> Organisation:
    """The organisation, if the actor may see it; NotFound otherwise, in the
    same words whether it exists elsewhere or nowhere."""
    if not visible(txn, store, actor, org_id):
        raise NotFound(f"{what} {org_id} not found")
    return organisation(txn, store, org_id)


def subtree(txn, store: Store, actor: Actor) -> set[int] | None:
    """Every organisation id the actor may see; None: all of them (CLI)."""
    if actor.everywhere:
        return None
    children: dict[int, list[int]] = {}
    for key, value in rows(txn, store.admin_orgs):
        children.setdefault(unpack(Organisation, value).parent_id, []).append(int.from_bytes(key, "big"))
    found, frontier = {actor.org_id}, [actor.org_id]
    while frontier:
        below = [child for parent in frontier for child in children.get(parent, ())]
        found.update(below)
        frontier = below
    return found


def customer_record(txn, store: Store, customer_id: int) -> Customer | None:
    db = store.admin_customers
    value = txn.get(u64_key(customer_id), db=db) if db is not None else None
    return None if value is None else unpack(Customer, value)


def visible_customer(txn, store: Store, actor: Actor, customer_id: int) -> Customer:
    """The customer, if the actor's subtree holds its organisation; NotFound
    otherwise, as for an id nobody uses."""
    customer = customer_record(txn, store, customer_id)
    if customer is None or not visible(txn, store, actor, customer.org_id):
        raise NotFound(f"customer {customer_id} not found")
    return customer


# ---------------------------------------------------------------- input


def require_range(value: int, field: str, low: int, high: int):
    if not low <= value <= high:
        raise InvalidInput(field, f"must be within {low} .. {high}, got {value}")


def require_text(value: str, field: str, low: int, high: int) -> str:
    if not low <= len(value) <= high:
        raise InvalidInput(field, f"length must be within {low} .. {high} characters, got {len(value)}")
    if any(ord(character) < 32 for character in value):
        raise InvalidInput(field, "must not contain control characters")
    return value


_CODE = re.compile(r"[A-Za-z0-9._\-]+\Z")


def require_code(value: str, field: str, high: int) -> str:
    require_text(value, field, 1, high)
    if not _CODE.match(value):
        raise InvalidInput(field, "letters, digits, '.', '_' and '-' only")
    return value
