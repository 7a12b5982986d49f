"""Cards for back-office users: issue, activate, top up, report lost,
freeze, unfreeze, cancel with the balance owed back, limits, vehicle plate,
allowed stations and goods, application domains.

Owns: the admin_cards database (CardOwner: the organisation that issued
the card, its customer, plate, allowed goods, last status reason) and every
change an administrative user makes to a card. The kernel's records stay
the truth for status, limits, balances, allowed stations and domains;
`CardView` joins both. Each change runs its kernel operations inside the
admin write transaction (AdminBase._apply_kernel), so the kernel's records,
the owner record and the audit entry (the CardView before and after) are
stored together or not at all; a kernel decline aborts all three and is
FailedPrecondition naming the result code.

Domains: a card is its organisation's. Users whose subtree holds that
organisation see and change it; to anyone else it is NotFound, in the words
of a card that does not exist. Card ids are one namespace with the kernel
(cards opened by CardService too), so issuing a taken id is AlreadyExists.
An issued card is enabled for its own application domain (the kernel then
refuses it at every other domain's stations) and held FROZEN by the kernel
until ActivateCard: the kernel has no state of its own for "issued".

What the kernel cannot undo, neither can this: a station once allowed, a
domain once enabled stay so.
Used by: core.admin.Admin (its CardsMixin), server/admin_service.py.
"""

import hashlib
import re
import struct

import msgspec

from core import idempotency, limits
from core.admin.access import (
    Actor,
    domain_of,
    organisation,
    require_range,
    require_text,
    require_visible,
    subtree,
    visible,
    visible_customer,
)
from core.admin.base import AdminBase
from core.admin.directory import collect
from core.admin.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound
from core.admin.model import (
    ALLOWED_GOODS_MAX,
    CODE_LENGTH_MAX,
    CUSTOMER_ID_MAX,
    LIST_LIMIT_MAX,
    REASON_LENGTH_MAX,
    VEHICLE_PLATE_LENGTH_MAX,
    CardOwner,
    OrgKind,
    customer_card_key,
    pack,
    unpack,
)
from core.records import Account, Card, Member, Op, account_key, decode, u64_key
from core.results import RESULT_TEXT, AccountKind, CardStatus, CardType, OpKind, ResultCode, Tier
from core.store import Store, rows

# The kernel's idempotency key of a back-office top-up: terminal 0 (no
# terminal sends 0: TerminalContext.terminal_id starts at 1) and a serial
# derived from the domain and the caller's request id, so that two domains
# using the same request id never meet.
BACK_OFFICE_TERMINAL_ID = 0
_SERIAL = struct.Struct(">Q")
_CODE = re.compile(r"[A-Za-z0-9._\-]+\Z")


class CardView(msgspec.Struct, frozen=True):
    """A card as administration shows it (and writes it into the audit log)."""

    card_id: int
    org_id: int
    customer_id: int
    card_type: CardType
    status: CardStatus
    activated: bool
    limit_per_transaction_minor: int
    limit_per_day_minor: int
    # Balances, held included; held_*: open pre-authorizations.
    fleet_minor: int
    personal_minor: int
    points: int
    held_fleet_minor: int
    held_personal_minor: int
    held_points: int
    # Owed back to the holder since the card was cancelled.
    refund_payable_minor: int
    tier: Tier
    vehicle_plate: str
    allowed_goods: tuple[str, ...]
    # Empty: every station (of the enabled domains).
    allowed_stations: tuple[int, ...]
    domains: tuple[int, ...]
    status_reason: str
    issued_ms: int
    activated_ms: int


class CardChange(msgspec.Struct, frozen=True):
    """What a change did: the card after it, and the kernel's answer to its
    last operation (a top-up's or a cancellation's transaction and amounts)."""

    card: CardView
    txn_id: int = 0
    amount: int = 0
    fleet: int = 0
    personal: int = 0
    points: int = 0
    # A top-up repeated with its request id: nothing moved again.
    replayed: bool = False


# ---------------------------------------------------------------- reading


def card_owner(txn, store: Store, card_id: int) -> CardOwner | None:
    db = store.admin_cards
    value = txn.get(u64_key(card_id), db=db) if db is not None else None
    return None if value is None else unpack(CardOwner, value)


def _ids_after_prefix(txn, db, card_id: int) -> tuple[int, ...]:
    """The u32 after the card's u64 in the keys of card_stations or card_domains."""
    prefix = u64_key(card_id)
    found = []
    cursor = txn.cursor(db=db)
    if cursor.set_range(prefix):
        for key in cursor.iternext(values=False):
            if not key.startswith(prefix):
                break
            found.append(int.from_bytes(key[8:], "big"))
    return tuple(found)


def _account(txn, store: Store, kind: int, card_id: int) -> Account:
    value = txn.get(account_key(kind, card_id), db=store.accounts)
    return Account() if value is None else decode(Account, value)


def card_tier(txn, store: Store, card_id: int) -> Tier:
    value = txn.get(u64_key(card_id), db=store.members)
    return Tier.REGULAR if value is None else Tier(decode(Member, value).tier)


def card_view(txn, store: Store, owner: CardOwner) -> CardView:
    card = decode(Card, txn.get(u64_key(owner.card_id), db=store.cards))
    fleet, personal, points = (_account(txn, store, kind, owner.card_id)
                               for kind in (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS))
    refund = _account(txn, store, AccountKind.REFUND_PAYABLE, owner.card_id)
    return CardView(
        card_id=owner.card_id, org_id=owner.org_id, customer_id=owner.customer_id, card_type=CardType(card.card_type),
        status=CardStatus(card.status), activated=owner.activated_ms != 0,
        limit_per_transaction_minor=card.limit_per_txn, limit_per_day_minor=card.limit_per_day,
        fleet_minor=fleet.balance, personal_minor=personal.balance, points=points.balance,
        held_fleet_minor=fleet.held, held_personal_minor=personal.held, held_points=points.held,
        refund_payable_minor=refund.balance, tier=card_tier(txn, store, owner.card_id),
        vehicle_plate=owner.vehicle_plate, allowed_goods=owner.allowed_goods, allowed_stations=_ids_after_prefix(txn, store.card_stations, owner.card_id),
        domains=_ids_after_prefix(txn, store.card_domains, owner.card_id), status_reason=owner.status_reason,
        issued_ms=owner.issued_ms, activated_ms=owner.activated_ms)


def goods_allowed(allowed_goods: tuple[str, ...], goods_code: str, category: str) -> bool:
    """Whether a basket line may be bought with a card whose allowed goods
    are `allowed_goods` (goods or category codes; empty: anything)."""
    return not allowed_goods or goods_code in allowed_goods or category in allowed_goods


def basket_refusal(store: Store, card_id: int, basket) -> str:
    """Why Pay must refuse this basket on this card (its first line the
    card may not buy), or "" (server/payments.py calls it before pricing)."""
    if not card_id or not basket:
        return ""
    with store.env.begin() as txn:
        owner = card_owner(txn, store, card_id)
    if owner is None or not owner.allowed_goods:
        return ""
    for index, line in enumerate(basket):
        if not goods_allowed(owner.allowed_goods, line.goods_code, line.category):
            return f"basket[{index}]: goods {line.goods_code!r} ({line.category}) is not among the card's allowed goods"
    return ""


def plate_key(plate: str) -> str:
    """A plate as searched: case, spaces and dashes do not matter."""
    return "".join(character for character in plate.casefold() if character not in " -")


# ---------------------------------------------------------------- input


def require_card_id(card_id: int) -> int:
    require_range(card_id, "card_id", 1, limits.CARD_ID_MAX)
    return card_id


def require_limits(limit_per_transaction_minor: int, limit_per_day_minor: int):
    require_range(limit_per_transaction_minor, "limit_per_transaction_minor", 0, limits.AMOUNT_MINOR_MAX)
    require_range(limit_per_day_minor, "limit_per_day_minor", 0, limits.AMOUNT_MINOR_MAX)


def require_plate(plate: str, card_type: int) -> str:
    require_text(plate, "vehicle_plate", 0, VEHICLE_PLATE_LENGTH_MAX)
    if plate and card_type != CardType.COMPANY:
        raise InvalidInput("vehicle_plate", "only a fleet (COMPANY) card has a vehicle plate")
    return plate


def require_goods_codes(codes) -> tuple[str, ...]:
    if len(codes) > ALLOWED_GOODS_MAX:
        raise InvalidInput("allowed_goods", f"at most {ALLOWED_GOODS_MAX} codes, got {len(codes)}")
    for index, code in enumerate(codes):
        require_text(code, f"allowed_goods[{index}]", 1, CODE_LENGTH_MAX)
        if not _CODE.match(code):
            raise InvalidInput(f"allowed_goods[{index}]", "letters, digits, '.', '_' and '-' only")
    return tuple(sorted(set(codes)))


def kernel_refusal(code: int):
    text = f"{ResultCode(code).name}: {RESULT_TEXT.get(code, 'refused')}"
    if code == ResultCode.DUPLICATE_MISMATCH:
        return AlreadyExists(text)
    return FailedPrecondition(text)


def require_approved(results):
    for result in results:
        if result.code != ResultCode.APPROVED:
            raise kernel_refusal(result.code)
    return results[-1]


def top_up_serial(domain: int, request_id: int) -> int:
    """A 64-bit serial, never 0, from (domain, request id)."""
    digest = hashlib.blake2b(_SERIAL.pack(domain) + _SERIAL.pack(request_id), digest_size=8).digest()
    return _SERIAL.unpack(digest)[0] or 1


def top_up_fingerprint(domain: int, card_id: int, account: int, amount_minor: int, request_id: int) -> bytes:
    content = msgspec.msgpack.encode(["TopUpCard", domain, card_id, account, amount_minor, request_id])
    return hashlib.blake2b(content, digest_size=16).digest()


# ---------------------------------------------------------------- the API

TOP_UP_ACCOUNTS = (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS)


class CardsMixin(AdminBase):
    def _visible_card(self, txn, actor: Actor, card_id: int) -> CardOwner:
        owner = card_owner(txn, self.store, card_id)
        if owner is None or not visible(txn, self.store, actor, owner.org_id):
            raise NotFound(f"card {card_id} not found")
        return owner

    def issue_card(self, actor: Actor, card_id: int, org_id: int, card_type: int, limit_per_transaction_minor: int = 0,
                   limit_per_day_minor: int = 0, customer_id: int = 0, vehicle_plate: str = "") -> CardView:
        """A new card of organisation org_id, enabled for its domain, not
        yet activated (the kernel holds it FROZEN)."""
        require_card_id(card_id)
        if card_type not in (CardType.COMPANY, CardType.PERSONAL):
            raise InvalidInput("card_type", "must be COMPANY or PERSONAL_CARD")
        require_limits(limit_per_transaction_minor, limit_per_day_minor)
        require_range(customer_id, "customer_id", 0, CUSTOMER_ID_MAX)
        require_plate(vehicle_plate, card_type)

        def change(txn):
            require_visible(txn, self.store, actor, org_id)
            domain = domain_of(txn, self.store, org_id)
            if customer_id:
                self._require_card_holder(txn, actor, customer_id, domain)
            taken = txn.get(u64_key(card_id), db=self.store.cards) is not None
            if taken or card_owner(txn, self.store, card_id) is not None:
                raise AlreadyExists(f"card id {card_id} is taken")
            require_approved(self._apply_kernel(txn, [
                Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=card_type,
                   limit_per_txn=limit_per_transaction_minor, limit_per_day=limit_per_day_minor),
                Op(kind=OpKind.ENABLE_DOMAIN, card_id=card_id, period=domain),
                Op(kind=OpKind.SET_CARD_STATUS, card_id=card_id, card_status=CardStatus.FROZEN),
            ]))
            owner = CardOwner(card_id, org_id, customer_id, vehicle_plate, issued_ms=self.clock())
            txn.put(u64_key(card_id), pack(owner), db=self.store.admin_cards)
            if customer_id:
                txn.put(customer_card_key(customer_id, card_id), b"", db=self.store.admin_customer_cards)
            after = card_view(txn, self.store, owner)
            self._audit(txn, actor, "IssueCard", f"card:{card_id}", org_id, None, after)
            return after

        return self._write(change)

    def _require_card_holder(self, txn, actor: Actor, customer_id: int, domain: int):
        customer = visible_customer(txn, self.store, actor, customer_id)
        if domain_of(txn, self.store, customer.org_id) != domain:
            raise InvalidInput("customer_id", f"customer {customer_id} belongs to another application domain")
        if customer.erased_ms:
            raise FailedPrecondition(f"customer {customer_id} was erased on request")

    def _change_card(self, actor: Actor, card_id: int, action: str, plan) -> CardChange:
        """The common shape of a change: find the card (NotFound outside the
        actor's subtree), plan(txn, view, owner) -> (kernel ops, new owner),
        apply, audit before and after."""
        require_card_id(card_id)

        def change(txn):
            owner = self._visible_card(txn, actor, card_id)
            before = card_view(txn, self.store, owner)
            ops, after_owner = plan(txn, before, owner)
            last = require_approved(self._apply_kernel(txn, ops)) if ops else None
            if after_owner != owner:
                txn.put(u64_key(card_id), pack(after_owner), db=self.store.admin_cards)
            after = card_view(txn, self.store, after_owner)
            self._audit(txn, actor, action, f"card:{card_id}", owner.org_id, before, after)
            if last is None:
                return CardChange(after)
            return CardChange(after, last.txn_id, last.amount, last.fleet, last.personal, last.points_used)

        return self._write(change)

    def activate_card(self, actor: Actor, card_id: int) -> CardView:
        def plan(txn, view, owner):
            if view.activated:
                raise FailedPrecondition(f"card {card_id} is activated already")
            if view.status != CardStatus.FROZEN:
                raise FailedPrecondition(f"card {card_id} is {view.status.name}: it cannot be activated")
            return ([Op(kind=OpKind.SET_CARD_STATUS, card_id=card_id, card_status=CardStatus.ACTIVE)],
                    msgspec.structs.replace(owner, activated_ms=self.clock()))

        return self._change_card(actor, card_id, "ActivateCard", plan).card

    def report_card_lost(self, actor: Actor, card_id: int, reason: str) -> CardView:
        require_text(reason, "reason", 1, REASON_LENGTH_MAX)

        def plan(txn, view, owner):
            if view.status in (CardStatus.LOST, CardStatus.CANCELLED):
                raise FailedPrecondition(f"card {card_id} is {view.status.name} already")
            return ([Op(kind=OpKind.SET_CARD_STATUS, card_id=card_id, card_status=CardStatus.LOST)],
                    msgspec.structs.replace(owner, status_reason=reason))

        return self._change_card(actor, card_id, "ReportCardLost", plan).card

    def freeze_card(self, actor: Actor, card_id: int, reason: str) -> CardView:
        require_text(reason, "reason", 1, REASON_LENGTH_MAX)

        def plan(txn, view, owner):
            if view.status != CardStatus.ACTIVE:
                raise FailedPrecondition(f"card {card_id} is {view.status.name}: only an ACTIVE card is frozen")
            return ([Op(kind=OpKind.SET_CARD_STATUS, card_id=card_id, card_status=CardStatus.FROZEN)],
                    msgspec.structs.replace(owner, status_reason=reason))

        return self._change_card(actor, card_id, "FreezeCard", plan).card

    def unfreeze_card(self, actor: Actor, card_id: int) -> CardView:
        """LOST or FROZEN back to ACTIVE (a card found again, or cleared)."""
        def plan(txn, view, owner):
            if view.status not in (CardStatus.LOST, CardStatus.FROZEN):
                raise FailedPrecondition(
                    f"card {card_id} is {view.status.name}: only a LOST or FROZEN card is unfrozen")
            if not view.activated:
                raise FailedPrecondition(f"card {card_id} was never activated: ActivateCard")
            return ([Op(kind=OpKind.SET_CARD_STATUS, card_id=card_id, card_status=CardStatus.ACTIVE)],
                    msgspec.structs.replace(owner, status_reason=""))

        return self._change_card(actor, card_id, "UnfreezeCard", plan).card

    def cancel_card(self, actor: Actor, card_id: int, reason: str) -> CardChange:
        """Final. The fleet and personal balances become owed back to the
        holder (refund_payable_minor; paid out outside Tally), the points
        lapse. Refused while the card has open holds (CARD_HAS_HOLDS)."""
        require_text(reason, "reason", 1, REASON_LENGTH_MAX)

        def plan(txn, view, owner):
            return ([Op(kind=OpKind.CANCEL_CARD, card_id=card_id, station_id=owner.org_id)],
                    msgspec.structs.replace(owner, status_reason=reason))

        return self._change_card(actor, card_id, "CancelCard", plan)

    def change_card_limits(self, actor: Actor, card_id: int, limit_per_transaction_minor: int,
                           limit_per_day_minor: int) -> CardView:
        require_limits(limit_per_transaction_minor, limit_per_day_minor)

        def plan(txn, view, owner):
            return ([Op(kind=OpKind.SET_CARD_LIMITS, card_id=card_id, limit_per_txn=limit_per_transaction_minor,
                        limit_per_day=limit_per_day_minor)], owner)

        return self._change_card(actor, card_id, "ChangeCardLimits", plan).card

    def set_vehicle_plate(self, actor: Actor, card_id: int, vehicle_plate: str) -> CardView:
        def plan(txn, view, owner):
            require_plate(vehicle_plate, view.card_type)
            return [], msgspec.structs.replace(owner, vehicle_plate=vehicle_plate)

        return self._change_card(actor, card_id, "SetVehiclePlate", plan).card

    def allow_card_station(self, actor: Actor, card_id: int, station_id: int) -> CardView:
        """Restrict the card to its allowed stations, adding this one."""
        require_range(station_id, "station_id", 1, limits.STATION_ID_MAX)

        def plan(txn, view, owner):
            station = require_visible(txn, self.store, actor, station_id, "station")
            if station.kind != OrgKind.STATION:
                raise InvalidInput("station_id", f"organisation {station_id} is a {station.kind.name}, not a STATION")
            return [Op(kind=OpKind.ALLOW_STATION, card_id=card_id, station_id=station_id)], owner

        return self._change_card(actor, card_id, "AllowCardStation", plan).card

    def set_allowed_goods(self, actor: Actor, card_id: int, allowed_goods) -> CardView:
        codes = require_goods_codes(list(allowed_goods))

        def plan(txn, view, owner):
            return [], msgspec.structs.replace(owner, allowed_goods=codes)

        return self._change_card(actor, card_id, "SetAllowedGoods", plan).card

    def enable_card_domain(self, actor: Actor, card_id: int, domain_id: int) -> CardView:
        """Let the card pay at the stations of another application domain
        too (its own is enabled at issue). domain_id names a headquarters."""
        require_range(domain_id, "domain_id", 1, limits.STATION_ID_MAX)

        def plan(txn, view, owner):
            headquarters = organisation(txn, self.store, domain_id)
            if headquarters is None or headquarters.kind != OrgKind.HEADQUARTERS:
                raise InvalidInput("domain_id", f"organisation {domain_id} is not a headquarters")
            return [Op(kind=OpKind.ENABLE_DOMAIN, card_id=card_id, period=domain_id)], owner

        return self._change_card(actor, card_id, "EnableCardDomain", plan).card

    def top_up_card(self, actor: Actor, card_id: int, account: int, amount_minor: int, request_id: int) -> CardChange:
        """Money (or points) onto one of the card's accounts, from the
        top-up funding account of the card's organisation. Idempotent on
        request_id within the domain: the same top-up again moves nothing
        and answers as the first time; another top-up under a used
        request_id is AlreadyExists."""
        require_card_id(card_id)
        if account not in TOP_UP_ACCOUNTS:
            raise InvalidInput("account", "must be FLEET, PERSONAL or POINTS")
        require_range(amount_minor, "amount_minor", 1, limits.AMOUNT_MINOR_MAX)
        require_range(request_id, "request_id", 1, limits.SERIAL_MAX)

        def change(txn):
            owner = self._visible_card(txn, actor, card_id)
            domain = domain_of(txn, self.store, owner.org_id)
            serial = top_up_serial(domain, request_id)
            replayed = idempotency.find(txn, self.store, BACK_OFFICE_TERMINAL_ID, serial) is not None
            before = card_view(txn, self.store, owner)
            op = Op(kind=OpKind.TOPUP, station_id=owner.org_id, terminal_id=BACK_OFFICE_TERMINAL_ID, serial=serial,
                    card_id=card_id, account_kind=account, amount=amount_minor,
                    fingerprint=top_up_fingerprint(domain, card_id, account, amount_minor, request_id))
            result = require_approved(self._apply_kernel(txn, [op]))
            after = card_view(txn, self.store, owner)
            if not replayed:
                self._audit(txn, actor, "TopUpCard", f"card:{card_id}", owner.org_id, before, after)
            return CardChange(after, result.txn_id, result.amount, result.fleet, result.personal, result.points_used,
                              replayed)

        return self._write(change)

    def get_card(self, actor: Actor, card_id: int) -> CardView:
        require_card_id(card_id)
        return self._read(lambda txn: card_view(txn, self.store, self._visible_card(txn, actor, card_id)))

    def list_cards(self, actor: Actor, org_id: int = 0, customer_id: int = 0,
                   limit: int = LIST_LIMIT_MAX, vehicle_plate: str = "") -> tuple[list[CardView], bool]:
        """Cards of the actor's subtree, by card id; only org_id's, only
        customer_id's, or only those with a vehicle plate, if given."""
        plate = plate_key(require_text(vehicle_plate, "vehicle_plate", 0, VEHICLE_PLATE_LENGTH_MAX))

        def look(txn):
            if org_id:
                require_visible(txn, self.store, actor, org_id)
            if customer_id:
                visible_customer(txn, self.store, actor, customer_id)
            seen = subtree(txn, self.store, actor)
            owners = (unpack(CardOwner, value) for _, value in rows(txn, self.store.admin_cards))
            chosen = (owner for owner in owners if (seen is None or owner.org_id in seen)
                      and org_id in (0, owner.org_id) and customer_id in (0, owner.customer_id)
                      and plate in ("", plate_key(owner.vehicle_plate)))
            return collect((card_view(txn, self.store, owner) for owner in chosen), limit)

        return self._read(look)
