"""The caller of this call, as the services outside AdminService scope by it.

Owns: turning `server.callers.current_caller()` into what a handler checks:
a staff caller's Scope (core/domains.py: its organisation's subtree), a
terminal's station, a partner's id. Terminals and partners are not staff:
for them the staff scope is everywhere and their own rule applies (a
terminal sees what is usable at its station; a partner its own id).
Used by: server/promotion_service.py, risk_service.py, loyalty_service.py,
settlement_service.py, shift_service.py, cards.py.
"""

from core.domains import EVERYWHERE, Scope, card_org, card_usable_at, scope_of
from core.errors import PermissionDenied
from server.callers import current_caller


def staff_scope(store) -> Scope:
    """The staff caller's scope; everywhere for any other caller (a
    terminal's or partner's own rule is checked by the handler, and without
    a guard the server acts for the whole network)."""
    caller = current_caller()
    if caller.kind != "staff":
        return EVERYWHERE
    return scope_of(store, caller.actor)


def terminal_station() -> int:
    """The station of a MAC'ed terminal caller; 0 for any other caller."""
    caller = current_caller()
    return caller.station_id if caller.kind == "terminal" else 0


def card_seen(store, card_id: int) -> bool:
    """Whether this call's caller may see the card: a terminal the cards
    usable at its station, staff those of their subtree, the open server
    every card (unseen answers as unknown)."""
    station = terminal_station()
    scope = staff_scope(store)
    if not station and scope.everywhere:
        return True
    with store.env.begin() as txn:
        if station:
            return card_usable_at(txn, store, card_id, station)
        return scope.sees(card_org(txn, store, card_id))


def station_of_request(station_id: int, field: str = "station_id") -> int:
    """The station a request is made at: a terminal caller's own (a request
    naming another is refused), else the request's."""
    own = terminal_station()
    if own and station_id and station_id != own:
        raise PermissionDenied(f"terminal of station {own} asks for station {station_id}: a terminal answers for its own "
                               "station only", field=field, reason="OTHER_STATION")
    return own or station_id
