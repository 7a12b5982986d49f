"""Domain isolation for EVERY AdminService RPC, over a real server.

The table CASES classifies each RPC of the service descriptor; a new RPC
without an entry fails test_every_rpc_is_classified. The rule it checks,
as admin.proto documents it: a record outside the caller's subtree (another
domain's, or a sibling region's) is NOT_FOUND, in the words of an id nobody
uses, whether the RPC reads it, lists it (as a filter) or changes it; a
list without a filter holds none of it. PERMISSION_DENIED is only ever a
role's refusal (and SetParameters by a user below the headquarters).

Two attackers, each against objects made by someone else:
  "domain": the administrator of Acme (HQ 1) against Other (HQ 50, station 51);
  "sibling": the administrator of region North (2) against Acme's station 13,
             which hangs off the headquarters, not the region.
After every attempt, the victims' records read by their own users are what
they were before, and their part of the audit log did not grow.
"""

import grpc
import pytest

from server.callers import permissions_of
from core.admin.model import Role
from tally.v1 import admin_pb2, card_pb2, common_pb2
from tests.support import ServerProcess
from tests.test_admin_service import PASSWORD, AdminClient, refused, seed_directory

NOT_FOUND = grpc.StatusCode.NOT_FOUND
STATION = admin_pb2.ORGANISATION_KIND_STATION
CARD_BASE = 7_300_000_000_000_000
USERS = {
    "root": (1, Role.ADMINISTRATOR),
    "auditor": (1, Role.AUDITOR),
    "north": (2, Role.ADMINISTRATOR),
    "north-auditor": (2, Role.AUDITOR),
    "other": (50, Role.ADMINISTRATOR),
    "other-auditor": (50, Role.AUDITOR),
}
# Who made each organisation's objects (see made_at).
MAKERS = {12: "north", 13: "root", 51: "other"}
# attacker: (its administrator, its auditor, the organisations it sees,
#            its own organisation's objects, the victim's, the victim's owner and auditor)
ATTACKS = {
    "domain": ("root", "auditor", {1, 2, 12, 13}, 12, 51, ("other", "other-auditor")),
    "sibling": ("north", "north-auditor", {2, 12}, 12, 13, ("root", "auditor")),
}

ADMIN_PERMISSIONS = permissions_of("/tally.v1.AdminService/")


def objects_of(org_id: int) -> dict:
    """The ids of what made_at makes at an organisation."""
    return {"org": org_id, "terminal": 7000 + org_id, "operator": 9000 + org_id, "username": f"clerk-{org_id}",
            "customer": 100 + org_id, "card": CARD_BASE + org_id, "hq": 50 if org_id == 51 else 1, "partner": org_id}


def made_at(client, org_id: int):
    made = objects_of(org_id)
    client.RegisterTerminal(terminal_id=made["terminal"], station_id=org_id, name="pos")
    client.SetOperator(operator=admin_pb2.Operator(operator_id=made["operator"], org_id=org_id, name="Cashier", enabled=True))
    client.SetCategory(category=admin_pb2.Category(org_id=org_id, code="fuel", name="Fuel"))
    client.SetGoods(goods=admin_pb2.Goods(org_id=org_id, code="92", name="Petrol 92", category="fuel", unit="L", price_minor=800))
    client.CreateUser(username=made["username"], password=PASSWORD, org_id=org_id, role=admin_pb2.ROLE_OPERATIONS)
    client.CreateCustomer(org_id=org_id, customer_id=made["customer"], profile=admin_pb2.CustomerProfile(name=f"Holder {org_id}"))
    client.IssueCard(card_id=made["card"], org_id=org_id, card_type=card_pb2.COMPANY, customer_id=made["customer"],
                     vehicle_plate=f"P-{org_id}")
    client.ActivateCard(card_id=made["card"])
    client.TopUpCard(card_id=made["card"], account=common_pb2.FLEET, amount_minor=10_000, request_id=org_id)


def snapshot(owner, auditor, victim: dict) -> list:
    """Everything of the victim's, as its own users read it."""
    org = victim["org"]
    return [message.SerializeToString(deterministic=True) for message in (
        owner.GetOrganisation(org_id=org), owner.GetTerminal(terminal_id=victim["terminal"]),
        owner.GetUser(username=victim["username"]), owner.ListOperators(org_id=org), owner.ListCategories(org_id=org),
        owner.ListGoods(org_id=org), owner.ListUsers(org_id=org), owner.GetCardRecord(card_id=victim["card"]),
        owner.GetCustomer(customer_id=victim["customer"]), owner.GetParameters(),
    )] + [entry.SerializeToString() for entry in auditor.ReadAudit(limit=10_000).entries if entry.org_id == org]


# ---------------------------------------------------------------- the table
# GET and CHANGE: calls naming the victim's records, each NOT_FOUND.
# LIST: (the list unfiltered, the org of a row, calls filtered on the victim: NOT_FOUND).
# OWN: RPCs that name no record; a check that they reach only the caller's own.
GET, CHANGE, LIST, OWN = "get", "change", "list", "own"


def _own_login(env):
    answer = env.anonymous.Login(username=env.admin_name, password=PASSWORD)
    assert answer.user.username == env.admin_name and answer.user.org_id == USERS[env.admin_name][0]


def _own_logout(env):
    session = AdminClient(env.channel, env.admin_name)
    session.Logout()
    refused(session.WhoAmI, grpc.StatusCode.UNAUTHENTICATED)
    assert env.owner.WhoAmI().username == env.owner_name


def _own_who_am_i(env):
    me = env.admin.WhoAmI()
    assert (me.username, me.org_id) == (env.admin_name, USERS[env.admin_name][0])


def _own_get_parameters(env):
    assert env.admin.GetParameters().headquarters_id == 1


def _own_set_parameters(env):
    """Only the headquarters' own users, and only for their domain: the
    victim's domain keeps its parameters (snapshot) either way."""
    try:
        answer = env.admin.SetParameters(token_validity_s=3_600)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert env.admin_name == "north"
        return
    assert answer.headquarters_id == 1 and env.admin_name == "root"


def _own_verify_audit(env):
    """One chain for every domain: the answer counts entries and names
    breaches by seq, and carries no entry of anyone."""
    answer = env.auditor.VerifyAudit()
    assert answer.intact and answer.entries == answer.head_seq > 0
    assert [field.name for field, _ in answer.ListFields()] == ["intact", "entries", "head_seq", "head_hash"]


def _own_list_partners(env):
    """Partners of the attacker's subtree only (a region sees none: they
    belong to headquarters)."""
    listed = {partner.org_id for partner in env.admin.ListPartners().partners}
    assert listed <= env.subtree, listed


def _list(call, org_of, *filtered):
    return (LIST, (call, org_of, filtered))


def _rows_org(row):
    return row.org_id


CASES = {
    "Login": (OWN, _own_login),
    "Logout": (OWN, _own_logout),
    "WhoAmI": (OWN, _own_who_am_i),
    "GetParameters": (OWN, _own_get_parameters),
    "SetParameters": (OWN, _own_set_parameters),
    "VerifyAudit": (OWN, _own_verify_audit),
    "CreateOrganisation": (CHANGE, lambda c, v, o: [lambda: c.CreateOrganisation(parent_id=v["hq"], kind=STATION, name="Mine")]),
    "UpdateOrganisation": (CHANGE, lambda c, v, o: [lambda: c.UpdateOrganisation(org_id=v["org"], name="Mine now")]),
    "GetOrganisation": (GET, lambda c, v, o: [lambda: c.GetOrganisation(org_id=v["org"])]),
    "ListOrganisations": _list(lambda c: c.ListOrganisations().organisations, _rows_org),
    "RegisterTerminal": (CHANGE, lambda c, v, o: [lambda: c.RegisterTerminal(terminal_id=7999, station_id=v["org"])]),
    "DisableTerminal": (CHANGE, lambda c, v, o: [lambda: c.DisableTerminal(terminal_id=v["terminal"], reason="mine")]),
    "EnableTerminal": (CHANGE, lambda c, v, o: [lambda: c.EnableTerminal(terminal_id=v["terminal"])]),
    "GetTerminal": (GET, lambda c, v, o: [lambda: c.GetTerminal(terminal_id=v["terminal"])]),
    "ListTerminals": _list(lambda c: c.ListTerminals().terminals, lambda row: row.station_id,
                           lambda c, v: c.ListTerminals(station_id=v["org"])),
    "SetOperator": (CHANGE, lambda c, v, o: [lambda: c.SetOperator(operator=admin_pb2.Operator(
        operator_id=v["operator"], org_id=v["org"], name="Mine", enabled=False))]),
    "ListOperators": _list(lambda c: c.ListOperators().operators, _rows_org, lambda c, v: c.ListOperators(org_id=v["org"])),
    "SetCategory": (CHANGE, lambda c, v, o: [lambda: c.SetCategory(category=admin_pb2.Category(org_id=v["org"], code="fuel", name="x"))]),
    "ListCategories": _list(lambda c: c.ListCategories().categories, _rows_org, lambda c, v: c.ListCategories(org_id=v["org"])),
    "SetGoods": (CHANGE, lambda c, v, o: [lambda: c.SetGoods(goods=admin_pb2.Goods(
        org_id=v["org"], code="92", name="x", category="fuel", unit="L", price_minor=1))]),
    "ListGoods": _list(lambda c: c.ListGoods().goods, _rows_org, lambda c, v: c.ListGoods(org_id=v["org"])),
    "CreateUser": (CHANGE, lambda c, v, o: [lambda: c.CreateUser(username="intruder", password=PASSWORD, org_id=v["org"], role=1)]),
    "UpdateUser": (CHANGE, lambda c, v, o: [lambda: c.UpdateUser(username=v["username"], enabled=False)]),
    "SetPassword": (CHANGE, lambda c, v, o: [lambda: c.SetPassword(username=v["username"], new_password="taken over by me")]),
    "GetUser": (GET, lambda c, v, o: [lambda: c.GetUser(username=v["username"])]),
    "ListUsers": _list(lambda c: c.ListUsers().users, _rows_org, lambda c, v: c.ListUsers(org_id=v["org"])),
    "ReadAudit": _list(lambda c: c.ReadAudit(limit=10_000).entries, _rows_org),
    "IssueCard": (CHANGE, lambda c, v, o: [
        lambda: c.IssueCard(card_id=CARD_BASE + 999, org_id=v["org"], card_type=card_pb2.PERSONAL_CARD),
        lambda: c.IssueCard(card_id=CARD_BASE + 999, org_id=o["org"], card_type=card_pb2.PERSONAL_CARD, customer_id=v["customer"])]),
    "ActivateCard": (CHANGE, lambda c, v, o: [lambda: c.ActivateCard(card_id=v["card"])]),
    "TopUpCard": (CHANGE, lambda c, v, o: [lambda: c.TopUpCard(card_id=v["card"], account=common_pb2.FLEET, amount_minor=1, request_id=1)]),
    "ReportCardLost": (CHANGE, lambda c, v, o: [lambda: c.ReportCardLost(card_id=v["card"], reason="mine")]),
    "FreezeCard": (CHANGE, lambda c, v, o: [lambda: c.FreezeCard(card_id=v["card"], reason="mine")]),
    "UnfreezeCard": (CHANGE, lambda c, v, o: [lambda: c.UnfreezeCard(card_id=v["card"])]),
    "CancelCard": (CHANGE, lambda c, v, o: [lambda: c.CancelCard(card_id=v["card"], reason="mine")]),
    "ChangeCardLimits": (CHANGE, lambda c, v, o: [lambda: c.ChangeCardLimits(card_id=v["card"], limit_per_day_minor=1)]),
    "SetVehiclePlate": (CHANGE, lambda c, v, o: [lambda: c.SetVehiclePlate(card_id=v["card"], vehicle_plate="MINE")]),
    "AllowCardStation": (CHANGE, lambda c, v, o: [lambda: c.AllowCardStation(card_id=v["card"], station_id=o["org"]),
                                                  lambda: c.AllowCardStation(card_id=o["card"], station_id=v["org"])]),
    "SetAllowedGoods": (CHANGE, lambda c, v, o: [lambda: c.SetAllowedGoods(card_id=v["card"], allowed_goods=["shop"])]),
    "EnableCardDomain": (CHANGE, lambda c, v, o: [lambda: c.EnableCardDomain(card_id=v["card"], domain_id=1)]),
    "GetCardRecord": (GET, lambda c, v, o: [lambda: c.GetCardRecord(card_id=v["card"])]),
    "ListCardRecords": _list(lambda c: c.ListCardRecords().cards, _rows_org, lambda c, v: c.ListCardRecords(org_id=v["org"]),
                             lambda c, v: c.ListCardRecords(customer_id=v["customer"])),
    "CreateCustomer": (CHANGE, lambda c, v, o: [lambda: c.CreateCustomer(org_id=v["org"], profile=admin_pb2.CustomerProfile(name="x"))]),
    "UpdateCustomer": (CHANGE, lambda c, v, o: [lambda: c.UpdateCustomer(customer_id=v["customer"], profile=admin_pb2.CustomerProfile())]),
    "GetCustomer": (GET, lambda c, v, o: [lambda: c.GetCustomer(customer_id=v["customer"])]),
    "ListCustomers": _list(lambda c: c.ListCustomers().customers, _rows_org, lambda c, v: c.ListCustomers(org_id=v["org"])),
    "ExportCustomer": (GET, lambda c, v, o: [lambda: list(c.ExportCustomer(customer_id=v["customer"]))]),
    "EraseCustomer": (CHANGE, lambda c, v, o: [lambda: c.EraseCustomer(customer_id=v["customer"], reason="mine")]),
    "UnlockUser": (CHANGE, lambda c, v, o: [lambda: c.UnlockUser(username=v["username"], reason="mine")]),
    "RegisterPartner": (CHANGE, lambda c, v, o: [lambda: c.RegisterPartner(partner_id=90 + v["org"], org_id=v["hq"])]),
    "DisablePartner": (CHANGE, lambda c, v, o: [lambda: c.DisablePartner(partner_id=v["partner"], reason="mine")]),
    "ListPartners": (OWN, lambda env: _own_list_partners(env)),
}


class Attack:
    """One attacker's clients and targets, handed to the OWN checks."""

    def __init__(self, channel, clients, attack: str):
        self.admin_name, auditor_name, self.subtree, own_org, victim_org, (self.owner_name, victim_auditor) = ATTACKS[attack]
        self.channel = channel
        self.anonymous = AdminClient(channel)
        self.admin, self.auditor = clients[self.admin_name], clients[auditor_name]
        self.owner, self.victim_auditor = clients[self.owner_name], clients[victim_auditor]
        self.own, self.victim = objects_of(own_org), objects_of(victim_org)

    def client_for(self, rpc: str):
        """A user of the attacking side whose role may call the RPC (so a
        refusal can only be the domain's)."""
        allowed = ADMIN_PERMISSIONS[rpc]
        return self.admin if not allowed or Role.ADMINISTRATOR in allowed else self.auditor


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("admin-isolation")
    data_dir, master_key_file = str(base / "data"), str(base / "master.key")
    seed_directory(data_dir, master_key_file, users=USERS).store.close()
    process = ServerProcess(data_dir, "--master-key-file", master_key_file, demo=False).start()
    channel = process.channel()
    clients = {username: AdminClient(channel, username) for username in USERS}
    for org_id, maker in MAKERS.items():
        made_at(clients[maker], org_id)
    # Partners belong to a headquarters: one of each domain's.
    clients["root"].RegisterPartner(partner_id=objects_of(13)["partner"], org_id=1, name="Acme's airline")
    clients["other"].RegisterPartner(partner_id=objects_of(51)["partner"], org_id=50, name="Other's airline")
    yield channel, clients
    process.stop()


def test_every_rpc_is_classified():
    methods = set(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    assert methods - set(CASES) == set(), "classify each new RPC in CASES"
    assert set(CASES) - methods == set()
    assert set(ADMIN_PERMISSIONS) == methods


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_nobody_sees_or_changes_records_outside_their_subtree(served, attack):
    channel, clients = served
    env = Attack(channel, clients, attack)
    before = snapshot(env.owner, env.victim_auditor, env.victim)
    checked = []
    for rpc, (kind, make) in CASES.items():
        client = env.client_for(rpc)
        if kind == OWN:
            make(env)
        elif kind == LIST:
            call, org_of, filtered = make
            orgs = {org_of(row) for row in call(client)}
            assert orgs and orgs <= env.subtree and env.victim["org"] not in orgs, (rpc, orgs)
            for filtered_call in filtered:
                assert "not found" in refused(lambda: filtered_call(client, env.victim), NOT_FOUND), rpc
        else:
            for call in make(client, env.victim, env.own):
                assert "not found" in refused(call, NOT_FOUND), rpc
        checked.append(rpc)
    assert checked == list(CASES)
    assert snapshot(env.owner, env.victim_auditor, env.victim) == before
    # The attacker's own records answer, so the refusals above are the domain's.
    assert env.admin.GetCardRecord(card_id=env.own["card"]).balances.fleet_minor == 10_000
    assert env.admin.GetCustomer(customer_id=env.own["customer"]).profile.name == "Holder 12"


def test_ids_shared_by_every_domain_are_refused_as_taken_not_revealed_further(served):
    """Card, customer, terminal, operator ids and usernames are one
    namespace: taking one used elsewhere is ALREADY_EXISTS (the only thing
    another domain learns is that the id is in use)."""
    _, clients = served
    root, victim = clients["root"], objects_of(51)
    for call, text in (
        (lambda: root.IssueCard(card_id=victim["card"], org_id=12, card_type=card_pb2.PERSONAL_CARD), f"card id {victim['card']} is taken"),
        (lambda: root.CreateCustomer(org_id=12, customer_id=victim["customer"]), f"customer id {victim['customer']} is taken"),
        (lambda: root.RegisterTerminal(terminal_id=victim["terminal"], station_id=12), f"terminal id {victim['terminal']} is registered"),
        (lambda: root.SetOperator(operator=admin_pb2.Operator(operator_id=victim["operator"], org_id=12, name="x")),
         f"operator id {victim['operator']} is taken"),
    ):
        assert refused(call, grpc.StatusCode.ALREADY_EXISTS) == text
