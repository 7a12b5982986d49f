"""Who may call each RPC: the one table, for every service of tally.v1.

Owns: CALLERS (gRPC path -> Allowed), the kinds of caller, and the caller of
the call being served (`current_caller()`, set by server/rpc.py before a
handler runs).
Used by: server/rpc.py (checks every call against this table before its
handler runs), the handlers that scope what they show or change to the
caller's organisation, tests/test_callers.py (walks the proto descriptors:
an RPC missing here fails the suite, so a new RPC cannot slip past).

Callers, in secure mode (--terminal-auth and --back-office-auth, the default
away from loopback: server/settings.py):
  terminal     a registered terminal, its request MAC'ed under its working
               key (server/terminal_auth.py); `serial` names the kernel
               operation whose idempotency entry guards the request's serial
               (a different request under a used serial is refused there)
  back office  an AdminService user's token (`authorization: Bearer ...`)
               whose role is in `roles`; what it sees and changes is its
               organisation's subtree (core/admin/access.py)
  partner      a registered partner programme, its request MAC'ed under its
               own key, scoped to its partner id (server/partner_auth.py)
  public       anyone: health, reflection, Login, and the terminal sign-on
               (which proves itself with the terminal's secret)
An RPC may allow several (GetCard: a terminal reading a card, or staff).
AdminService checks tokens always, guard or not. Without the guards (the
demo on 127.0.0.1), the other RPCs are open and act for the whole network.
"""

import contextvars

import msgspec

from core.admin.access import Actor
from core.admin.model import Role
from core.results import OpKind

ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE, AUDITOR = (
    Role.ADMINISTRATOR, Role.OPERATIONS, Role.CUSTOMER_SERVICE, Role.AUDITOR)
EVERY_ROLE = frozenset(Role)
CHANGE = frozenset((ADMINISTRATOR, OPERATIONS))
FINANCE_READ = frozenset((ADMINISTRATOR, OPERATIONS, AUDITOR))
NOBODY = frozenset()


class Allowed(msgspec.Struct, frozen=True):
    """Who may call one RPC (see the module docstring)."""

    terminal: bool = False
    # The OpKind guarding the request's serial; None: the request has no
    # serial of its own (a read, or one made idempotent by its own number).
    serial: int | None = None
    roles: frozenset = NOBODY
    partner: bool = False
    public: bool = False
    # AdminService: a token is needed even without --back-office-auth.
    always_guarded: bool = False
    # Refused outright in secure mode, with this reason (no per-request MAC).
    refused_when_secure: str = ""

    def __or__(self, other: "Allowed") -> "Allowed":
        return Allowed(
            terminal=self.terminal or other.terminal, serial=self.serial if self.serial is not None else other.serial,
            roles=self.roles | other.roles, partner=self.partner or other.partner, public=self.public or other.public,
            always_guarded=self.always_guarded or other.always_guarded,
            refused_when_secure=self.refused_when_secure or other.refused_when_secure)

    def describe(self) -> str:
        """One line for the README's table and for refusals."""
        parts = []
        if self.public:
            parts.append("public")
        if self.terminal:
            parts.append("terminal (MAC)" + (f", serial guarded as {OpKind(self.serial).name}" if self.serial is not None else ""))
        if self.partner:
            parts.append("partner (MAC)")
        if self.roles:
            parts.append("back office: " + ", ".join(sorted(role.name for role in self.roles)))
        if self.refused_when_secure:
            parts.append("refused in secure mode")
        return "; ".join(parts)


def terminal(serial: OpKind | None = None) -> Allowed:
    return Allowed(terminal=True, serial=None if serial is None else int(serial))


def staff(*roles: Role | frozenset) -> Allowed:
    found = frozenset()
    for role in roles:
        found |= role if isinstance(role, frozenset) else frozenset((role,))
    return Allowed(roles=found)


def admin(*roles: Role | frozenset) -> Allowed:
    return msgspec.structs.replace(staff(*roles), always_guarded=True)


PUBLIC = Allowed(public=True)
PARTNER = Allowed(partner=True)

_PAYMENT, _CARD, _GATEWAY = "/tally.v1.PaymentService/", "/tally.v1.CardService/", "/tally.v1.GatewayService/"
_LOYALTY, _PROMOTION, _RISK = "/tally.v1.LoyaltyService/", "/tally.v1.PromotionService/", "/tally.v1.RiskService/"
_SETTLEMENT, _ADMIN, _KEYS = "/tally.v1.SettlementService/", "/tally.v1.AdminService/", "/tally.v1.TerminalKeyService/"
_REPORT = "/tally.v1.ReportService/"

GATEWAY_REFUSED_TEXT = ("GatewayService carries no per-request MAC: in secure mode terminals call the unary RPCs with "
                        "x-tally-mac")
BATCH_REFUSED_TEXT = ("BatchUpload carries no per-sale MAC: in secure mode terminals send offline sales one by one with "
                      "Pay (same serials: each is applied once)")

CALLERS: dict[str, Allowed] = {
    # ---- payments: the terminal's own requests; Query also for staff.
    _PAYMENT + "Pay": terminal(OpKind.PAY),
    _PAYMENT + "PreAuthorize": terminal(OpKind.PREAUTH),
    _PAYMENT + "Complete": terminal(OpKind.COMPLETE),
    _PAYMENT + "Release": terminal(OpKind.RELEASE),
    _PAYMENT + "Reverse": terminal(OpKind.REVERSE),
    _PAYMENT + "Void": terminal(OpKind.VOID),
    _PAYMENT + "Refund": terminal(OpKind.REFUND),
    _PAYMENT + "Query": terminal() | staff(EVERY_ROLE),
    # ---- cards: changes are the back office's (with the roles of their
    # AdminService twins); a top-up is a terminal's; an enquiry either's.
    _CARD + "OpenCard": staff(ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE),
    _CARD + "TopUp": terminal(OpKind.TOPUP),
    _CARD + "SetCardStatus": staff(ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE),
    _CARD + "SetCardLimits": staff(CHANGE),
    _CARD + "AllowStation": staff(CHANGE),
    _CARD + "GetCard": terminal() | staff(EVERY_ROLE),
    # ---- the gateway stream: no MAC per operation.
    _GATEWAY + "Exchange": Allowed(refused_when_secure=GATEWAY_REFUSED_TEXT),
    # ---- loyalty
    _LOYALTY + "GetPoints": terminal() | staff(EVERY_ROLE),
    _LOYALTY + "GetStatement": terminal() | staff(EVERY_ROLE),
    _LOYALTY + "CheckIn": terminal(OpKind.CHECKIN),
    _LOYALTY + "CompleteTask": terminal(OpKind.TASK),
    _LOYALTY + "RedeemGift": terminal(OpKind.REDEEM),
    # Moves value into a card: only the partner itself, for its own id.
    _LOYALTY + "ExchangePartnerPoints": PARTNER,
    _LOYALTY + "ListCatalogue": terminal() | staff(EVERY_ROLE),
    _LOYALTY + "ListExpiringSoon": staff(ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE),
    _LOYALTY + "QuotePoints": terminal() | staff(EVERY_ROLE),
    _LOYALTY + "GetRules": staff(EVERY_ROLE),
    _LOYALTY + "SaveRules": staff(CHANGE),
    _LOYALTY + "SetGift": staff(CHANGE),
    _LOYALTY + "AddGiftStock": staff(CHANGE),
    _LOYALTY + "SetTier": staff(CHANGE),
    _LOYALTY + "SetTimeZone": staff(ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE),
    # ---- promotions: changing what sales do is for administrators and
    # operations; reading it for every role; the customer's side at a terminal.
    **{_PROMOTION + name: staff(CHANGE) for name in (
        "CreatePromotion", "SubmitPromotion", "ApprovePromotion", "ActivatePromotion", "EndPromotion",
        "SetStackingPolicy", "IssueCoupons", "CreatePacket", "ReturnExpiredPackets", "GrantChances")},
    **{_PROMOTION + name: staff(EVERY_ROLE) for name in (
        "ListPromotions", "GetPromotion", "GetStackingPolicy", "ListCoupons", "ListDraws")},
    _PROMOTION + "PriceBasket": terminal() | staff(EVERY_ROLE),
    _PROMOTION + "GetCoupon": terminal() | staff(EVERY_ROLE),
    _PROMOTION + "GetPacket": terminal() | staff(EVERY_ROLE),
    _PROMOTION + "ClaimPacket": terminal(OpKind.PACKET_CLAIM),
    _PROMOTION + "BuyChances": terminal(OpKind.PAY),
    # A draw moves a prize: a terminal's (its draw_number makes it once-only).
    _PROMOTION + "Draw": terminal(),
    # ---- risk
    **{_RISK + name: staff(CHANGE) for name in ("SetLimits", "SetFlagRules", "AddBlacklistEntry", "RemoveBlacklistEntry")},
    **{_RISK + name: staff(EVERY_ROLE) for name in ("ListLimits", "ListBlacklist", "ListFlags")},
    # ---- settlement: reconciliation posts adjustments and closes days
    # (operations' work, auditors read it); shifts are the terminals' own.
    **{_SETTLEMENT + name: staff(CHANGE) for name in ("ImportStatement", "Reconcile", "ResolveDifference", "DayEnd")},
    **{_SETTLEMENT + name: staff(FINANCE_READ) for name in ("GetReconcileStatus", "ListDifferences", "GetClearing")},
    _SETTLEMENT + "SignOn": terminal(OpKind.SIGN_ON),
    _SETTLEMENT + "ShiftClose": terminal(OpKind.SHIFT_CLOSE),
    _SETTLEMENT + "BatchUpload": Allowed(refused_when_secure=BATCH_REFUSED_TEXT),
    # ---- administration: a token always (Login gives it).
    _ADMIN + "Login": PUBLIC,
    _ADMIN + "Logout": admin(EVERY_ROLE),
    _ADMIN + "WhoAmI": admin(EVERY_ROLE),
    _ADMIN + "CreateOrganisation": admin(ADMINISTRATOR),
    _ADMIN + "UpdateOrganisation": admin(ADMINISTRATOR),
    _ADMIN + "GetOrganisation": admin(EVERY_ROLE),
    _ADMIN + "ListOrganisations": admin(EVERY_ROLE),
    _ADMIN + "RegisterTerminal": admin(ADMINISTRATOR),
    _ADMIN + "EnableTerminal": admin(ADMINISTRATOR),
    # Operations staff may pull a stolen or broken terminal at once.
    _ADMIN + "DisableTerminal": admin(ADMINISTRATOR, OPERATIONS),
    _ADMIN + "GetTerminal": admin(FINANCE_READ),
    _ADMIN + "ListTerminals": admin(FINANCE_READ),
    _ADMIN + "SetOperator": admin(CHANGE),
    _ADMIN + "ListOperators": admin(FINANCE_READ),
    _ADMIN + "SetCategory": admin(CHANGE),
    _ADMIN + "ListCategories": admin(EVERY_ROLE),
    _ADMIN + "SetGoods": admin(CHANGE),
    _ADMIN + "ListGoods": admin(EVERY_ROLE),
    _ADMIN + "GetParameters": admin(EVERY_ROLE),
    _ADMIN + "SetParameters": admin(ADMINISTRATOR),
    _ADMIN + "CreateUser": admin(ADMINISTRATOR),
    _ADMIN + "UpdateUser": admin(ADMINISTRATOR),
    # Anyone changes their own password (giving the old one); an
    # administrator sets that of a user of its subtree (core/admin/users.py).
    _ADMIN + "SetPassword": admin(EVERY_ROLE),
    _ADMIN + "GetUser": admin(ADMINISTRATOR, AUDITOR),
    _ADMIN + "ListUsers": admin(ADMINISTRATOR, AUDITOR),
    _ADMIN + "ReadAudit": admin(AUDITOR),
    _ADMIN + "VerifyAudit": admin(AUDITOR, ADMINISTRATOR),
    # Cards: customer service handles a holder's card (issue, activate, lost,
    # freeze, unfreeze, plate) but moves no money: top-ups and cancelling
    # (which owes the balance back) are operations'.
    **{_ADMIN + name: admin(ADMINISTRATOR, OPERATIONS, CUSTOMER_SERVICE) for name in (
        "IssueCard", "ActivateCard", "ReportCardLost", "FreezeCard", "UnfreezeCard", "SetVehiclePlate")},
    **{_ADMIN + name: admin(CHANGE) for name in (
        "TopUpCard", "CancelCard", "ChangeCardLimits", "AllowCardStation", "SetAllowedGoods")},
    # Opening a card to another domain's stations is a business decision.
    _ADMIN + "EnableCardDomain": admin(ADMINISTRATOR),
    _ADMIN + "GetCardRecord": admin(EVERY_ROLE),
    _ADMIN + "ListCardRecords": admin(EVERY_ROLE),
    # Customers: personal data, so auditors and operations staff do not read
    # it; erasing it is for administrators.
    **{_ADMIN + name: admin(ADMINISTRATOR, CUSTOMER_SERVICE) for name in (
        "CreateCustomer", "UpdateCustomer", "GetCustomer", "ListCustomers", "ExportCustomer")},
    _ADMIN + "EraseCustomer": admin(ADMINISTRATOR),
    # Logins and partners.
    _ADMIN + "UnlockUser": admin(ADMINISTRATOR),
    _ADMIN + "RegisterPartner": admin(ADMINISTRATOR),
    _ADMIN + "DisablePartner": admin(ADMINISTRATOR, OPERATIONS),
    _ADMIN + "ListPartners": admin(ADMINISTRATOR, OPERATIONS, AUDITOR),
    # ---- reports (read only): a token always, like AdminService. A card's
    # history for every role that reads cards; the books for those who read
    # settlement; the store's health for those who run it.
    _REPORT + "ListCardTransactions": admin(EVERY_ROLE),
    **{_REPORT + name: admin(FINANCE_READ) for name in ("GetTakings", "ListOpenHolds", "GetStationDay", "ExportDay")},
    _REPORT + "GetStoreStatus": admin(ADMINISTRATOR, OPERATIONS),
    # The terminal proves itself with the sign-on MAC under its secret.
    _KEYS + "SignOn": PUBLIC,
    # ---- gRPC's own services.
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    # A replicated node's role and lag, like health (server/replication_service.py).
    "/tally.v1.ReplicationService/GetStatus": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
}


class Caller(msgspec.Struct, frozen=True):
    """Who is being served. kind: "terminal", "staff", "partner", "public",
    or "open" (no guard is on: the demo; it acts for the whole network)."""

    kind: str
    actor: Actor | None = None
    terminal_id: int = 0
    station_id: int = 0
    partner_id: int = 0


OPEN = Caller("open", Actor("open", 0))
_CURRENT: contextvars.ContextVar[Caller] = contextvars.ContextVar("tally_caller", default=OPEN)


def current_caller() -> Caller:
    return _CURRENT.get()


def set_current_caller(caller: Caller):
    return _CURRENT.set(caller)


def staff_actor() -> Actor:
    """The back-office actor of this call: the token's user, or the
    whole-network actor when no guard is on."""
    caller = _CURRENT.get()
    return caller.actor if caller.actor is not None else OPEN.actor


def permissions_of(service_prefix: str) -> dict[str, frozenset]:
    """{method name: roles} for one service's table entries (tests, docs)."""
    return {path[len(service_prefix):]: allowed.roles for path, allowed in CALLERS.items() if path.startswith(service_prefix)}


def markdown_table() -> str:
    """The table for README.md's Security section (tests/test_callers.py
    keeps the README's copy equal to it): `python -m server.callers`."""
    lines = ["| RPC | who may call it in secure mode |", "|---|---|"]
    for path, allowed in sorted(CALLERS.items()):
        service, method = path.strip("/").rsplit("/", 1)
        lines.append(f"| `{service.removeprefix('tally.v1.')}.{method}` | {allowed.describe()} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
