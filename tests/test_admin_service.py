"""AdminService over a real server on 127.0.0.1: tokens, roles per RPC,
domain isolation for every list and get RPC, the audit log and its check."""

import grpc
import msgspec
import pytest

from core.admin import Admin, keys
from core.admin.access import cli_actor
from server.callers import permissions_of
from core.admin.model import AuditEntry, OrgKind, Role, pack, u32_key, u64_key, unpack
from core.store import open_store
from tally.v1 import admin_pb2, admin_pb2_grpc
from tests.support import ServerProcess

PASSWORD = "correct horse battery"
STATION = admin_pb2.ORGANISATION_KIND_STATION
# Who is who in the seeded directory (see seed_directory).
USERS = {
    "root": (1, Role.ADMINISTRATOR),  # headquarters of Acme
    "auditor": (1, Role.AUDITOR),
    "north": (2, Role.ADMINISTRATOR),  # region North of Acme
    "north-ops": (2, Role.OPERATIONS),
    "desk": (1, Role.CUSTOMER_SERVICE),
    "other": (50, Role.ADMINISTRATOR),  # headquarters of Other, another domain
    "other-auditor": (50, Role.AUDITOR),
}

ADMIN_PERMISSIONS = permissions_of("/tally.v1.AdminService/")


def seed_directory(data_dir: str, master_key_file: str | None = None, users=USERS) -> Admin:
    """Acme: HQ 1 > region 2 > station 12; HQ 1 > station 13. Other: HQ 50 >
    station 51. Written with the library (as `python -m core.admin` does)
    before the server starts."""
    master_key = None
    if master_key_file is not None:
        keys.new_master_key_file(master_key_file)
        master_key = keys.load_master_key(master_key_file)
    store = open_store(data_dir, 2**30)
    admin = Admin(store, master_key)
    cli = cli_actor()
    admin.create_headquarters(cli, "Acme", org_id=1)
    admin.create_organisation(cli, 1, OrgKind.REGION, "North", org_id=2)
    admin.create_organisation(cli, 2, OrgKind.STATION, "Station 12", org_id=12)
    admin.create_organisation(cli, 1, OrgKind.STATION, "Station 13", org_id=13)
    admin.create_headquarters(cli, "Other", org_id=50)
    admin.create_organisation(cli, 50, OrgKind.STATION, "Station 51", org_id=51)
    for username, (org_id, role) in users.items():
        admin.create_user(cli, username, PASSWORD, org_id, role)
    return admin


class AdminClient:
    def __init__(self, channel, username: str | None = None, password: str = PASSWORD):
        self.stub = admin_pb2_grpc.AdminServiceStub(channel)
        self.token = ""
        if username is not None:
            self.token = self.stub.Login(admin_pb2.LoginRequest(username=username, password=password)).token

    def __getattr__(self, rpc):
        method = getattr(self.stub, rpc)
        return lambda request=None, **fields: method(
            request if request is not None else getattr(admin_pb2, f"{rpc}Request")(**fields),
            metadata=(("authorization", f"Bearer {self.token}"),))


def refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code() == code, error.value.details()
    return error.value.details()


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("admin")
    data_dir = str(base / "data")
    admin = seed_directory(data_dir, str(base / "master.key"))
    admin.store.close()
    process = ServerProcess(data_dir, "--master-key-file", str(base / "master.key"), demo=False).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def clients(admin_server):
    channel = admin_server.channel()
    return {username: AdminClient(channel, username) for username in USERS}


def test_a_token_is_needed_and_ends_at_logout(admin_server, clients):
    channel = admin_server.channel()
    assert "wrong username or password" in refused(
        lambda: AdminClient(channel, "root", "not the password at all"), grpc.StatusCode.UNAUTHENTICATED)
    anonymous = AdminClient(channel)
    assert "no token" in refused(anonymous.ListOrganisations, grpc.StatusCode.UNAUTHENTICATED)
    anonymous.token = "made-up"
    assert "unknown or ended token" in refused(anonymous.ListOrganisations, grpc.StatusCode.UNAUTHENTICATED)
    me = clients["north"].WhoAmI()
    assert (me.username, me.org_id, me.role) == ("north", 2, admin_pb2.ROLE_ADMINISTRATOR)
    session = AdminClient(channel, "desk")
    assert session.WhoAmI().role == admin_pb2.ROLE_CUSTOMER_SERVICE
    session.Logout()
    refused(session.WhoAmI, grpc.StatusCode.UNAUTHENTICATED)


def test_each_rpc_answers_only_the_roles_allowed(clients):
    text = refused(lambda: clients["auditor"].CreateOrganisation(parent_id=1, kind=STATION, name="S"),
                   grpc.StatusCode.PERMISSION_DENIED)
    assert text == "CreateOrganisation needs the role ADMINISTRATOR; user:auditor has AUDITOR"
    refused(lambda: clients["north-ops"].RegisterTerminal(terminal_id=7001, station_id=12), grpc.StatusCode.PERMISSION_DENIED)
    refused(lambda: clients["desk"].ListTerminals(), grpc.StatusCode.PERMISSION_DENIED)
    refused(lambda: clients["root"].ReadAudit(), grpc.StatusCode.PERMISSION_DENIED)
    refused(lambda: clients["north-ops"].CreateUser(username="x", password=PASSWORD, org_id=12, role=1),
            grpc.StatusCode.PERMISSION_DENIED)
    # Operations may pull a terminal, not register one.
    clients["north"].RegisterTerminal(terminal_id=7001, station_id=12)
    disabled = clients["north-ops"].DisableTerminal(terminal_id=7001, reason="screen broken")
    assert (disabled.status, disabled.disabled_reason) == (admin_pb2.TERMINAL_STATUS_DISABLED, "screen broken")
    assert clients["auditor"].ReadAudit().entries
    assert clients["desk"].ListGoods() is not None
    # Only the headquarters sets its domain's parameters.
    refused(lambda: clients["north"].SetParameters(token_validity_s=600), grpc.StatusCode.PERMISSION_DENIED)
    assert clients["root"].SetParameters(token_validity_s=7200).token_validity_s == 7200
    assert clients["north"].GetParameters().token_validity_s == 7200
    assert clients["other"].GetParameters().token_validity_s == 8 * 3600


def test_malformed_input_names_the_field_and_the_limit(clients):
    root = clients["root"]
    for call, text in (
        (lambda: root.CreateOrganisation(parent_id=1, kind=STATION, name="x" * 101), "name: length must be within 1 .. 100 characters, got 101"),
        (lambda: root.CreateOrganisation(parent_id=1, kind=admin_pb2.ORGANISATION_KIND_HEADQUARTERS, name="HQ"), "kind: must be REGION or STATION"),
        (lambda: root.RegisterTerminal(terminal_id=0, station_id=12), "terminal_id: must be within 1 .. 4294901759, got 0"),
        (lambda: root.RegisterTerminal(terminal_id=7002, station_id=2), "station_id: organisation 2 is a REGION, not a STATION"),
        (lambda: root.CreateUser(username="bob", password="short", org_id=12, role=2), "password: length must be within 12 .. 256 characters, got 5"),
        (lambda: root.CreateUser(username="bob smith", password=PASSWORD, org_id=12, role=2), "username: letters, digits"),
        (lambda: root.SetParameters(working_key_validity_s=0), "working_key_validity_s: must be within 1 .. 604800, got 0"),
        (lambda: root.ListOrganisations(limit=10_001), "limit: must be within 1 .. 10000, got 10001"),
        (lambda: root.SetGoods(goods=admin_pb2.Goods(org_id=12, code="92", name="Petrol", category="fuel", unit="L", price_minor=-1)),
         "price_minor: must be within 0 .. 1000000000000, got -1"),
    ):
        assert text in refused(call, grpc.StatusCode.INVALID_ARGUMENT)


def _directory_in_both_domains(clients):
    """Objects of every kind in Acme's region North, at Acme's HQ, and in Other."""
    made = {}
    for who, org_id, terminal_id, operator_id, username in (("north", 12, 7101, 9101, "clerk-12"),
                                                            ("root", 13, 7102, 9102, "clerk-13"),
                                                            ("other", 51, 7103, 9103, "clerk-51")):
        client = clients[who]
        client.RegisterTerminal(terminal_id=terminal_id, station_id=org_id, name=f"pos {terminal_id}")
        client.SetOperator(operator=admin_pb2.Operator(operator_id=operator_id, org_id=org_id, name="Cashier", enabled=True))
        client.SetCategory(category=admin_pb2.Category(org_id=org_id, code="fuel", name="Fuel"))
        client.SetGoods(goods=admin_pb2.Goods(org_id=org_id, code="92", name="Petrol 92", category="fuel", unit="L", price_minor=800))
        client.CreateUser(username=username, password=PASSWORD, org_id=org_id, role=admin_pb2.ROLE_OPERATIONS)
        made[org_id] = (terminal_id, operator_id, username)
    return made


# Every list RPC: how to call it and what identifies each row it returns.
LISTS = {
    "ListOrganisations": (lambda c: c.ListOrganisations().organisations, lambda row: row.org_id),
    "ListTerminals": (lambda c: c.ListTerminals().terminals, lambda row: row.station_id),
    "ListOperators": (lambda c: c.ListOperators().operators, lambda row: row.org_id),
    "ListCategories": (lambda c: c.ListCategories().categories, lambda row: row.org_id),
    "ListGoods": (lambda c: c.ListGoods().goods, lambda row: row.org_id),
    "ListUsers": (lambda c: c.ListUsers().users, lambda row: row.org_id),
    "ReadAudit": (lambda c: c.ReadAudit().entries, lambda row: row.org_id),
}
# Who sees what: (their domain's headquarters, every organisation they see).
# Stations 14 and 15 are made under North by other tests.
SUBTREES = {"north": (1, {2, 12, 14, 15}), "root": (1, {1, 2, 12, 13, 14, 15}), "other": (50, {50, 51}),
            "auditor": (1, {1, 2, 12, 13, 14, 15}), "other-auditor": (50, {50, 51})}


def test_domain_isolation_holds_for_every_list_and_get_rpc(clients):
    made = _directory_in_both_domains(clients)
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    reads = {name for name in service.methods_by_name if name.startswith(("List", "Get")) or name == "ReadAudit"}
    # The directory's reads; cards' and customers' (and every other RPC) are
    # classified in tests/test_admin_isolation.py.
    directory_reads = set(LISTS) | {"GetOrganisation", "GetTerminal", "GetUser", "GetParameters"}
    assert reads - directory_reads == {"GetCardRecord", "ListCardRecords", "GetCustomer", "ListCustomers", "ListPartners"}
    for who, (domain, subtree) in SUBTREES.items():
        client = clients[who]
        role = client.WhoAmI().role
        for name, (call, org_of) in LISTS.items():
            if role not in {int(allowed) for allowed in ADMIN_PERMISSIONS[name]}:
                continue
            rows = list(call(client))
            assert rows and {org_of(row) for row in rows} <= subtree, (who, name)
        assert client.GetParameters().headquarters_id == domain
    # Gets and changes of another domain's (or a sibling's) objects: NOT_FOUND,
    # in the words used for what does not exist at all.
    for who, outside_org in (("other", 12), ("other", 13), ("north", 13), ("north", 51), ("root", 51)):
        client = clients[who]
        terminal_id, operator_id, username = made[outside_org]
        for call in (
            lambda: client.GetOrganisation(org_id=outside_org),
            lambda: client.GetTerminal(terminal_id=terminal_id),
            lambda: client.GetUser(username=username),
            lambda: client.ListOperators(org_id=outside_org),
            lambda: client.ListGoods(org_id=outside_org),
            lambda: client.ListCategories(org_id=outside_org),
            lambda: client.ListUsers(org_id=outside_org),
            lambda: client.ListTerminals(station_id=outside_org),
            lambda: client.UpdateOrganisation(org_id=outside_org, name="Mine now"),
            lambda: client.DisableTerminal(terminal_id=terminal_id, reason="mine"),
            lambda: client.UpdateUser(username=username, enabled=False),
            lambda: client.SetPassword(username=username, new_password="taken over by me"),
            lambda: client.SetGoods(goods=admin_pb2.Goods(org_id=outside_org, code="95", name="x", category="fuel", unit="L")),
            lambda: client.CreateOrganisation(parent_id=outside_org, kind=STATION, name="Inside yours"),
            lambda: client.RegisterTerminal(terminal_id=7999, station_id=outside_org),
            lambda: client.CreateUser(username="intruder", password=PASSWORD, org_id=outside_org, role=1),
        ):
            assert "not found" in refused(call, grpc.StatusCode.NOT_FOUND), (who, outside_org)
    assert clients["north"].GetTerminal(terminal_id=7101).station_id == 12
    assert clients["root"].GetTerminal(terminal_id=7101).station_id == 12
    assert clients["root"].GetUser(username="clerk-12").enabled


def test_the_auditor_reads_who_did_what_before_and_after(clients):
    clients["north"].CreateOrganisation(parent_id=2, kind=STATION, name="Old name", org_id=14)
    clients["north"].UpdateOrganisation(org_id=14, name="New name", address="1 Main St")
    entries = clients["auditor"].ReadAudit(limit=10_000).entries
    update = [entry for entry in entries if entry.action == "UpdateOrganisation" and entry.object == "organisation:14"][-1]
    assert update.actor == "user:north" and update.org_id == 14
    assert '"name":"Old name"' in update.before and '"name":"New name"' in update.after
    assert [entry.seq for entry in entries] == sorted(entry.seq for entry in entries)
    assert not any(entry.org_id in (50, 51) for entry in entries)
    assert any(entry.org_id == 51 for entry in clients["other-auditor"].ReadAudit(limit=10_000).entries)
    page = clients["auditor"].ReadAudit(limit=2)
    assert len(page.entries) == 2 and page.truncated
    assert clients["auditor"].ReadAudit(after_seq=page.entries[-1].seq, limit=1).entries[0].seq > page.entries[-1].seq
    verified = clients["auditor"].VerifyAudit()
    assert verified.intact and verified.entries == verified.head_seq >= len(entries)


def test_verify_audit_names_an_entry_edited_on_disk(tmp_path):
    data_dir = str(tmp_path / "data")
    seed_directory(data_dir, users={"auditor": (1, Role.AUDITOR)}).store.close()
    process = ServerProcess(data_dir, demo=False).start()
    try:
        auditor = AdminClient(process.channel(), "auditor")
        assert auditor.VerifyAudit().intact
        # Someone with access to the files rewrites who created station 12.
        store = open_store(data_dir, 2**30)
        with store.env.begin(write=True) as txn:
            entry = unpack(AuditEntry, txn.get(u64_key(4), db=store.admin_audit))
            txn.put(u64_key(4), pack(msgspec.structs.replace(entry, actor="user:nobody")), db=store.admin_audit)
        store.close()
        verified = auditor.VerifyAudit()
        assert not verified.intact
        assert [(b.seq, b.reason) for b in verified.breaches] == [(4, "hash does not match its content: the entry was edited")]
    finally:
        process.stop()


def test_the_kernel_learns_each_stations_application_domain(admin_server, clients):
    """Stations seeded before the start (synced at start) and one made over
    gRPC (at once): the kernel refuses a domain-restricted card at stations
    of other domains by this record."""
    clients["north"].CreateOrganisation(parent_id=2, kind=STATION, name="Station 15", org_id=15)
    store = open_store(admin_server.data_dir, 2**30, readonly=True)
    with store.env.begin() as txn:
        domains = {station: int.from_bytes(txn.get(u32_key(station), db=store.station_domains) or b"", "little")
                   for station in (12, 13, 15, 51)}
    store.close()
    assert domains == {12: 1, 13: 1, 15: 1, 51: 50}
    assert "station 51: application domain 50" in admin_server.log


def test_every_refusal_is_logged(admin_server, clients):
    refused(AdminClient(admin_server.channel()).ListOrganisations, grpc.StatusCode.UNAUTHENTICATED)
    refused(lambda: clients["auditor"].SetOperator(operator=admin_pb2.Operator(operator_id=1, org_id=12, name="x")),
            grpc.StatusCode.PERMISSION_DENIED)
    assert admin_server.logged("call refused: /tally.v1.AdminService/SetOperator PERMISSION_DENIED")
    assert admin_server.logged("call refused: /tally.v1.AdminService/ListOrganisations UNAUTHENTICATED")
