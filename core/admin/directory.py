"""Organisations, operators, goods and categories, a domain's parameters.

Owns: the admin_orgs, admin_operators, admin_categories, admin_goods and
admin_parameters databases. Every change checks that its object lies in
the actor's subtree, and is written with its audit entry in one
transaction. Lists show only the actor's subtree; a get or change outside
it is NotFound.
Used by: core.admin.Admin (this is its DirectoryMixin).
"""

import msgspec

from core import limits
from core.admin.access import (
    Actor,
    ancestry,
    domain_of,
    organisation,
    require_code,
    require_range,
    require_text,
    require_visible,
    subtree,
    visible,
)
from core.admin.base import AdminBase
from core.admin.errors import AlreadyExists, InvalidInput, PermissionDenied
from core.admin.model import (
    ADDRESS_LENGTH_MAX,
    CHILD_KINDS,
    CODE_LENGTH_MAX,
    LIST_LIMIT_MAX,
    NAME_LENGTH_MAX,
    ORG_DEPTH_MAX,
    ORG_ID_MAX,
    PARAMETER_RANGES,
    UNIT_LENGTH_MAX,
    Category,
    Goods,
    Operator,
    Organisation,
    OrgKind,
    Parameters,
    coded_key,
    pack,
    parse_u32_key,
    u32_key,
    unpack,
)
from core.records import Op
from core.results import OpKind
from core.store import rows


def station_domain_op(station_id: int, domain: int) -> Op:
    """The kernel operation that tells it a station's application domain
    (its headquarters): a card enabled for some domains is refused at the
    stations of the others."""
    return Op(kind=OpKind.STATION_DOMAIN, station_id=station_id, period=domain)


def collect(records, limit: int) -> tuple[list, bool]:
    """At most `limit` records, and whether there were more."""
    require_range(limit, "limit", 1, LIST_LIMIT_MAX)
    found = []
    for record in records:
        if len(found) == limit:
            return found, True
        found.append(record)
    return found, False


class DirectoryMixin(AdminBase):
    # ------------------------------------------------------------ organisations

    def create_headquarters(self, actor: Actor, name: str, org_id: int = 0) -> Organisation:
        """A new application domain. Only the command line does this: no
        user of one domain may create another."""
        if not actor.everywhere:
            raise PermissionDenied("only the command line (python -m core.admin) creates a headquarters")
        return self._create_organisation(actor, 0, OrgKind.HEADQUARTERS, name, "", org_id)

    def create_organisation(self, actor: Actor, parent_id: int, kind: int, name: str, address: str = "",
                            org_id: int = 0) -> Organisation:
        if kind not in (OrgKind.REGION, OrgKind.STATION):
            raise InvalidInput("kind", "must be REGION or STATION (a headquarters is created with the command line)")
        require_range(parent_id, "parent_id", 1, ORG_ID_MAX)
        return self._create_organisation(actor, parent_id, OrgKind(kind), name, address, org_id)

    def _create_organisation(self, actor, parent_id, kind, name, address, org_id) -> Organisation:
        require_text(name, "name", 1, NAME_LENGTH_MAX)
        require_text(address, "address", 0, ADDRESS_LENGTH_MAX)
        require_range(org_id, "org_id", 0, ORG_ID_MAX)

        def change(txn):
            if parent_id:
                parent = require_visible(txn, self.store, actor, parent_id)
                if kind not in CHILD_KINDS[parent.kind]:
                    raise InvalidInput("kind", f"a {kind.name} cannot sit under a {parent.kind.name}")
                if len(ancestry(txn, self.store, parent_id)) + 1 > ORG_DEPTH_MAX:
                    raise InvalidInput("parent_id", f"the tree is at most {ORG_DEPTH_MAX} levels deep")
            new_id = org_id or self._next_org_id(txn)
            if organisation(txn, self.store, new_id) is not None:
                raise AlreadyExists(f"organisation id {new_id} is taken")
            org = Organisation(new_id, parent_id, kind, name, address, self.clock())
            txn.put(u32_key(new_id), pack(org), db=self.store.admin_orgs)
            action = "CreateHeadquarters" if kind == OrgKind.HEADQUARTERS else "CreateOrganisation"
            self._audit(txn, actor, action, f"organisation:{new_id}", new_id, None, org)
            return org

        return self._write(change)

    def _next_org_id(self, txn) -> int:
        cursor = txn.cursor(db=self.store.admin_orgs)
        last = parse_u32_key(cursor.key()) if cursor.last() else 0
        if last >= ORG_ID_MAX:
            raise InvalidInput("org_id", f"no id left above {last}: give one explicitly")
        return last + 1

    def update_organisation(self, actor: Actor, org_id: int, name: str, address: str) -> Organisation:
        require_text(name, "name", 1, NAME_LENGTH_MAX)
        require_text(address, "address", 0, ADDRESS_LENGTH_MAX)

        def change(txn):
            before = require_visible(txn, self.store, actor, org_id)
            after = msgspec.structs.replace(before, name=name, address=address)
            txn.put(u32_key(org_id), pack(after), db=self.store.admin_orgs)
            self._audit(txn, actor, "UpdateOrganisation", f"organisation:{org_id}", org_id, before, after)
            return after

        return self._write(change)

    def domain_of(self, org_id: int) -> int:
        """The headquarters (application domain) org_id belongs to; 0 if none."""
        return self._read(lambda txn: domain_of(txn, self.store, org_id))

    def get_organisation(self, actor: Actor, org_id: int) -> Organisation:
        return self._read(lambda txn: require_visible(txn, self.store, actor, org_id))

    def list_organisations(self, actor: Actor, kind: int = 0, limit: int = LIST_LIMIT_MAX) -> tuple[list, bool]:
        def look(txn):
            seen = subtree(txn, self.store, actor)
            orgs = (unpack(Organisation, value) for key, value in rows(txn, self.store.admin_orgs)
                    if seen is None or parse_u32_key(key) in seen)
            return collect((org for org in orgs if kind in (0, org.kind)), limit)

        return self._read(look)

    # ------------------------------------------------------------ operators

    def set_operator(self, actor: Actor, operator_id: int, org_id: int, name: str, enabled: bool = True) -> Operator:
        """Create or change an operator (a cashier: TerminalContext.operator_id)."""
        require_range(operator_id, "operator_id", 1, limits.OPERATOR_ID_MAX)
        require_text(name, "name", 1, NAME_LENGTH_MAX)

        def change(txn):
            require_visible(txn, self.store, actor, org_id)
            value = txn.get(u32_key(operator_id), db=self.store.admin_operators)
            before = None if value is None else unpack(Operator, value)
            if before is not None and not visible(txn, self.store, actor, before.org_id):
                raise AlreadyExists(f"operator id {operator_id} is taken")
            after = Operator(operator_id, org_id, name, enabled)
            txn.put(u32_key(operator_id), pack(after), db=self.store.admin_operators)
            self._audit(txn, actor, "SetOperator", f"operator:{operator_id}", org_id, before, after)
            return after

        return self._write(change)

    def list_operators(self, actor: Actor, org_id: int = 0, limit: int = LIST_LIMIT_MAX) -> tuple[list, bool]:
        return self._read(lambda txn: collect(self._scoped(txn, actor, org_id, self.store.admin_operators, Operator), limit))

    def _scoped(self, txn, actor: Actor, org_id: int, db, record_type):
        """Records of `db` whose org_id the actor sees (only org_id's if given)."""
        if org_id:
            require_visible(txn, self.store, actor, org_id)
        seen = subtree(txn, self.store, actor)
        for _, value in rows(txn, db):
            record = unpack(record_type, value)
            if (seen is None or record.org_id in seen) and org_id in (0, record.org_id):
                yield record

    # ------------------------------------------------------------ goods

    def set_category(self, actor: Actor, org_id: int, code: str, name: str) -> Category:
        require_code(code, "code", CODE_LENGTH_MAX)
        require_text(name, "name", 1, NAME_LENGTH_MAX)

        def change(txn):
            require_visible(txn, self.store, actor, org_id)
            key = coded_key(org_id, code)
            value = txn.get(key, db=self.store.admin_categories)
            before = None if value is None else unpack(Category, value)
            after = Category(org_id, code, name)
            txn.put(key, pack(after), db=self.store.admin_categories)
            self._audit(txn, actor, "SetCategory", f"category:{org_id}/{code}", org_id, before, after)
            return after

        return self._write(change)

    def list_categories(self, actor: Actor, org_id: int = 0, limit: int = LIST_LIMIT_MAX) -> tuple[list, bool]:
        return self._read(lambda txn: collect(self._scoped(txn, actor, org_id, self.store.admin_categories, Category), limit))

    def set_goods(self, actor: Actor, org_id: int, code: str, name: str, category: str, unit: str,
                  price_minor: int) -> Goods:
        require_code(code, "code", CODE_LENGTH_MAX)
        require_text(name, "name", 1, limits.GOODS_NAME_LENGTH_MAX)
        require_code(category, "category", CODE_LENGTH_MAX)
        require_text(unit, "unit", 1, UNIT_LENGTH_MAX)
        require_range(price_minor, "price_minor", 0, limits.AMOUNT_MINOR_MAX)

        def change(txn):
            require_visible(txn, self.store, actor, org_id)
            if txn.get(coded_key(org_id, category), db=self.store.admin_categories) is None:
                raise InvalidInput("category", f"no category {category!r} in organisation {org_id}")
            key = coded_key(org_id, code)
            value = txn.get(key, db=self.store.admin_goods)
            before = None if value is None else unpack(Goods, value)
            after = Goods(org_id, code, name, category, unit, price_minor)
            txn.put(key, pack(after), db=self.store.admin_goods)
            self._audit(txn, actor, "SetGoods", f"goods:{org_id}/{code}", org_id, before, after)
            return after

        return self._write(change)

    def list_goods(self, actor: Actor, org_id: int = 0, limit: int = LIST_LIMIT_MAX) -> tuple[list, bool]:
        return self._read(lambda txn: collect(self._scoped(txn, actor, org_id, self.store.admin_goods, Goods), limit))

    # ------------------------------------------------------------ parameters

    def parameters_of(self, txn, org_id: int) -> Parameters:
        """The parameters of the domain org_id belongs to (defaults if unset)."""
        value = txn.get(u32_key(domain_of(txn, self.store, org_id)), db=self.store.admin_parameters)
        return Parameters() if value is None else unpack(Parameters, value)

    def get_parameters(self, actor: Actor, org_id: int = 0) -> tuple[int, Parameters]:
        """(the domain's headquarters, its parameters): the actor's own
        domain, or for the command line that of org_id."""
        def look(txn):
            target = org_id or actor.org_id
            require_visible(txn, self.store, actor, target)
            return domain_of(txn, self.store, target), self.parameters_of(txn, target)

        return self._read(look)

    def set_parameters(self, actor: Actor, changes: dict[str, int], org_id: int = 0) -> Parameters:
        """Change some of the domain's parameters. Only a user of the
        headquarters itself may: they hold for the whole domain."""
        for name, value in changes.items():
            if name not in PARAMETER_RANGES:
                raise InvalidInput(name, f"no such parameter; known: {', '.join(sorted(PARAMETER_RANGES))}")
            require_range(value, name, *PARAMETER_RANGES[name])

        def change(txn):
            target = org_id or actor.org_id
            require_visible(txn, self.store, actor, target)
            domain = domain_of(txn, self.store, target)
            if not actor.everywhere and actor.org_id != domain:
                raise PermissionDenied(f"parameters hold for the whole domain: only users of organisation {domain} set them")
            before = self.parameters_of(txn, domain)
            after = msgspec.structs.replace(before, **changes)
            txn.put(u32_key(domain), pack(after), db=self.store.admin_parameters)
            self._audit(txn, actor, "SetParameters", f"parameters:{domain}", domain, before, after)
            return after

        return self._write(change)

