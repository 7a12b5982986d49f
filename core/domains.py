"""Whose is what outside AdminService: a caller's scope, a station's place
in the tree, a card's organisation.

Owns: `Scope` (what a back-office actor sees: its organisation's subtree),
the rule for domain-wide settings (`settings_domain`), the ancestry of a
station for what applies to its sales (`StationTree`, cached), and who owns
a card (`card_org`, `card_usable_at`).
Used by: core/promotions, core/risk, core/loyalty, core/settlement and the
server's services (server/scope.py gives them the caller's side).
May call: core/admin/access.py (the tree walks AdminService follows).

The rules, AdminService's everywhere:
- An object of organisation X (a promotion, a card, a difference found at a
  station) is seen and changed by users of X and of the organisations above
  it; to anyone else it is NotFound, worded as for an id nobody uses.
  Organisation 0 owns what the command line or the open server (no guard
  on) made: the whole network's, seen only by the everywhere actor.
- Domain-wide settings (loyalty rules, risk limits and flag rules, the
  stacking policy, the gift catalogue, statements and reconciliation) are a
  headquarters'. Users of the domain read them (their sales run by them);
  only users of the headquarters itself change them: below it the change is
  PermissionDenied (the caller knows they exist), another domain's is
  NotFound. Domain 0 holds the network's defaults, which a domain that saved
  none runs by; only the everywhere actor reads or changes them.
- What applies to a sale at a station (a promotion, a coupon, a packet, a
  lottery, earning rules, velocity limits) is the network's or that of an
  organisation in the station's ancestry (the station, its region, its
  headquarters): headquarters A's discount never prices a sale at B's.
"""

import time

from core.admin.access import Actor, ancestry, domain_of, organisation, subtree
from core.admin.model import CardOwner, unpack
from core.errors import NotFound, PermissionDenied
from core.records import Card, card_station_key, decode, u32_key, u64_key
from core.results import CardFlag
from core.store import Store

# The network's own (organisation 0): made by the everywhere actor.
NETWORK = 0


class Scope:
    """What one back-office caller sees. orgs None: everything (the command
    line, the open server); domain: the caller's headquarters."""

    __slots__ = ("actor", "orgs", "domain")

    def __init__(self, actor: Actor | None, orgs: frozenset | None, domain: int):
        self.actor = actor
        self.orgs = orgs
        self.domain = domain

    @property
    def everywhere(self) -> bool:
        return self.orgs is None

    @property
    def org_id(self) -> int:
        return 0 if self.actor is None else self.actor.org_id

    def sees(self, org_id: int) -> bool:
        """Whether an object of org_id is the caller's (org 0: the network's,
        the everywhere actor's alone)."""
        return self.orgs is None or org_id in self.orgs

    def require(self, org_id: int, missing: str):
        """NotFound with `missing` (the words of an unknown id) unless the
        caller sees objects of org_id."""
        if not self.sees(org_id):
            raise NotFound(missing)

    def owner_for(self, txn, store: Store, org_id: int) -> int:
        """The owner of something the caller makes: org_id if given (it must
        see it), else its own organisation (0 for the everywhere actor)."""
        if org_id == 0:
            return self.org_id
        if organisation(txn, store, org_id) is None or not self.sees(org_id):
            raise NotFound(f"organisation {org_id} not found")
        return org_id


EVERYWHERE = Scope(None, None, NETWORK)


def scope_of(store: Store, actor: Actor | None) -> Scope:
    if actor is None or actor.everywhere:
        return EVERYWHERE
    with store.env.begin() as txn:
        orgs = frozenset(subtree(txn, store, actor))
        return Scope(actor, orgs, domain_of(txn, store, actor.org_id))


def settings_domain(txn, store: Store, scope: Scope, org_id: int, change: bool, what: str) -> int:
    """The domain whose settings (`what`, e.g. "loyalty rules") a request
    reads or changes (see the module docstring): org_id names an
    organisation of it (0: the caller's own domain; for the everywhere
    actor, 0 is the network's defaults)."""
    if scope.everywhere:
        if org_id == 0:
            return NETWORK
        if organisation(txn, store, org_id) is None:
            raise NotFound(f"organisation {org_id} not found")
        return domain_of(txn, store, org_id)
    target = org_id or scope.org_id
    if not (target == scope.domain or scope.sees(target)):
        raise NotFound(f"organisation {org_id} not found")
    domain = domain_of(txn, store, target)
    if change and scope.org_id != domain:
        raise PermissionDenied(f"{what} hold for the whole domain of headquarters {domain}: only its users change them, "
                               f"{scope.actor.name} is of organisation {scope.org_id}", reason="DOMAIN_SETTING")
    return domain


def settings_domain_of(store: Store, scope: Scope, org_id: int, change: bool, what: str) -> int:
    with store.env.begin() as txn:
        return settings_domain(txn, store, scope, org_id, change, what)


def require_headquarters(txn, store: Store, org_id: int, field: str) -> int:
    """org_id, if it is a headquarters (the root of a domain): for the
    command line's --domain options."""
    from core.errors import InvalidInput

    if org_id != NETWORK and (organisation(txn, store, org_id) is None or domain_of(txn, store, org_id) != org_id):
        raise InvalidInput(field, f"{org_id} is not a headquarters (0: the network's)")
    return org_id


# ---------------------------------------------------------------- stations


class StationTree:
    """station_id -> (station, its parents..., its headquarters), read from
    the organisation tree once per station: an organisation never changes
    parent (core/admin/directory.py), so what was read stays true. A
    station not in the tree (the demo's, a bench's) is () and is read again
    after UNKNOWN_TTL_S, in case it was created since. Sales ask this at
    every Pay: a dict lookup once a station is known."""

    UNKNOWN_TTL_S = 1.0
    STATIONS_MAX = 100_000

    def __init__(self, store: Store):
        self.store = store
        self._known: dict[int, tuple[int, ...]] = {}
        self._unknown: dict[int, float] = {}

    def ancestry(self, station_id: int) -> tuple[int, ...]:
        found = self._known.get(station_id)
        if found is not None:
            return found
        checked = self._unknown.get(station_id)
        if checked is not None and time.monotonic() - checked < self.UNKNOWN_TTL_S:
            return ()
        with self.store.env.begin() as txn:
            found = tuple(ancestry(txn, self.store, station_id)) if station_id else ()
        if len(self._known) + len(self._unknown) >= self.STATIONS_MAX:
            self._known.clear()
            self._unknown.clear()
        if found:
            self._known[station_id] = found
            self._unknown.pop(station_id, None)
        else:
            self._unknown[station_id] = time.monotonic()
        return found

    def domain(self, station_id: int) -> int:
        """The station's headquarters; NETWORK (0) if it is in no tree."""
        found = self.ancestry(station_id)
        return found[-1] if found else NETWORK


def reaches(owner_org: int, station_ancestry: tuple[int, ...]) -> bool:
    """Whether what organisation owner_org owns applies at a station of that
    ancestry: the network's everywhere, an organisation's in its subtree."""
    return owner_org == NETWORK or owner_org in station_ancestry


def stations_by_domain(txn, store: Store) -> dict[int, int]:
    """station -> its headquarters, for every station of the tree (stations
    in no tree are the network's: not listed)."""
    from core.admin.model import Organisation, OrgKind
    from core.store import rows

    found = {}
    for key, value in rows(txn, store.admin_orgs):
        if unpack(Organisation, value).kind == OrgKind.STATION:
            station = int.from_bytes(key, "big")
            found[station] = domain_of(txn, store, station)
    return found


# ---------------------------------------------------------------- cards


def card_org(txn, store: Store, card_id: int) -> int:
    """The organisation that issued the card (admin_cards); 0 for a card
    without an owner record (opened through the open CardService: the
    network's, seen only by the everywhere actor)."""
    db = store.admin_cards
    value = txn.get(u64_key(card_id), db=db) if db is not None else None
    return 0 if value is None else unpack(CardOwner, value).org_id


def card_domain(txn, store: Store, card_id: int) -> int:
    org_id = card_org(txn, store, card_id)
    return domain_of(txn, store, org_id) if org_id else NETWORK


def require_card(store: Store, scope: Scope, card_id: int, missing: str | None = None) -> int:
    """The card's organisation, if the caller sees it; NotFound otherwise,
    worded as for a card that does not exist."""
    with store.env.begin() as txn:
        org_id = card_org(txn, store, card_id)
    scope.require(org_id, missing or f"card {card_id} not found")
    return org_id


def card_usable_at(txn, store: Store, card_id: int, station_id: int) -> bool:
    """The kernel's domain rule (core/reference.py card_decline): a card
    restricted to domains is usable only at stations of an enabled one; a
    card that does not exist is usable nowhere."""
    raw = txn.get(u64_key(card_id), db=store.cards)
    if raw is None:
        return False
    card = decode(Card, raw)
    if not card.flags & CardFlag.RESTRICTED_DOMAINS:
        return True
    domain = txn.get(u32_key(station_id), db=store.station_domains)
    domain_id = 0 if domain is None else int.from_bytes(domain, "little")
    return txn.get(card_station_key(card_id, domain_id), db=store.card_domains) is not None
