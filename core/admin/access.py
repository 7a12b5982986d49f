"""Who may do what, and where: callers, the permission table, domains.

Owns: `Actor` (who acts: a user with a role, a terminal, or the command line),
the organisation tree walks that decide what a caller may see (its own
organisation's subtree, nothing else; a card or customer is its
organisation's), and the shared input checks of core.admin. Which role may
call which RPC is server/callers.py's table.
Used by: directory.py, users.py, terminals.py, cards.py, customers.py,
server/admin_service.py.
"""

import re
import time
import weakref

import msgspec

from core.admin.errors import InvalidInput, NotFound
from core.admin.model import ORG_DEPTH_MAX, Customer, Organisation, Role, u32_key, u64_key, unpack
from core.store import Store, entries, rows

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
    children = _tree(txn, store)
    found, frontier = {actor.org_id}, [actor.org_id]
    while frontier:
        below = [child for parent in frontier for child in children.get(parent, ())]
        found.update(below)
        frontier = below
    return found


# store -> (organisations in its table, parent id -> children ids) as last
# read. Why: every back-office call scopes its caller by the subtree, and
# reading the whole table for each (10,000 stations: 10,000 records
# unpacked) cost the server's event loop more than the call itself.
# Organisations are only ever added (no move, no delete; an update changes
# a name or an address), so the table's entry count names its tree: one
# stat per call instead of a scan, and any process's addition is seen at
# the next call.
_TREES: "weakref.WeakKeyDictionary[Store, tuple[int, dict[int, tuple[int, ...]]]]" = weakref.WeakKeyDictionary()


def _tree(txn, store: Store) -> dict[int, tuple[int, ...]]:
    count = entries(txn, store.admin_orgs)
    kept = _TREES.get(store)
    if kept is not None and kept[0] == count:
        return kept[1]
    children: dict[int, list[int]] = {}
    for key, value in rows(txn, store.admin_orgs):
        children.setdefault(unpack(Organisation, value).parent_id, []).append(int.from_bytes(key, "big"))
    tree = {parent: tuple(below) for parent, below in children.items()}
    _TREES[store] = (count, tree)
    return tree


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
