"""core.admin on a real LMDB directory: the tree, users and tokens, terminal
keys and sign-on, the audit chain and its tamper check, the CLI."""

import os
import subprocess
import sys

import msgspec
import pytest

from core.admin import Admin, audit, keys, users
from core.admin.access import Actor, cli_actor
from server.callers import permissions_of
from core.admin.errors import AlreadyExists, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from core.admin.model import AuditEntry, OrgKind, Role, pack, u32_key, u64_key, unpack
from core.admin.terminal_client import SIGN_ON_METHOD, TerminalKeys
from core.admin.terminals import WorkingKeys
from core.store import open_store
from tally.v1 import admin_pb2
from tests.support import REPO

PASSWORD = "correct horse battery"
MAP_SIZE_TEST_BYTES = 2**28

ADMIN_PERMISSIONS = permissions_of("/tally.v1.AdminService/")


class Clock:
    def __init__(self):
        self.ms = 1_800_000_000_000

    def __call__(self):
        return self.ms


@pytest.fixture
def world(tmp_path):
    """Two domains: Acme (HQ 1, region 2, station 12) and Other (HQ 50, station 51)."""
    store = open_store(str(tmp_path / "data"), MAP_SIZE_TEST_BYTES)
    clock = Clock()
    admin = Admin(store, master_key=os.urandom(32), clock=clock)
    cli = cli_actor()
    admin.create_headquarters(cli, "Acme", org_id=1)
    admin.create_organisation(cli, 1, OrgKind.REGION, "North", org_id=2)
    admin.create_organisation(cli, 2, OrgKind.STATION, "Station 12", org_id=12)
    admin.create_headquarters(cli, "Other", org_id=50)
    admin.create_organisation(cli, 50, OrgKind.STATION, "Station 51", org_id=51)
    yield admin, clock
    store.close()


def test_the_tree_has_rules_and_only_the_command_line_creates_a_domain(world):
    admin, _ = world
    region_admin = Actor("user:r", 2, Role.ADMINISTRATOR)
    with pytest.raises(PermissionDenied):
        admin.create_headquarters(region_admin, "Mine")
    with pytest.raises(InvalidInput, match="kind: a REGION cannot sit under a STATION"):
        admin.create_organisation(region_admin, 12, OrgKind.REGION, "Below a station")
    with pytest.raises(NotFound, match="organisation 50 not found"):
        admin.create_organisation(region_admin, 50, OrgKind.STATION, "In another domain")
    with pytest.raises(NotFound, match="organisation 1 not found"):
        admin.create_organisation(region_admin, 1, OrgKind.STATION, "Above me")
    with pytest.raises(AlreadyExists, match="organisation id 51 is taken"):
        admin.create_organisation(region_admin, 2, OrgKind.STATION, "Taken", org_id=51)
    with pytest.raises(InvalidInput, match=r"name: length must be within 1 .. 100 characters, got 101"):
        admin.create_organisation(region_admin, 2, OrgKind.STATION, "x" * 101)
    station = admin.create_organisation(region_admin, 2, OrgKind.STATION, "Station 13", org_id=13)
    assert station.parent_id == 2
    names = [org.name for org in admin.list_organisations(region_admin)[0]]
    assert names == ["North", "Station 12", "Station 13"]


def test_an_organisation_another_process_adds_is_in_the_subtree_at_the_next_call(world):
    """The tree a caller is scoped by is kept between calls (core/admin/
    access.py _tree) and read again once the table has another entry, even
    when another process (a second Admin over the directory) added it."""
    admin, clock = world
    region_admin = Actor("user:north", 2, Role.ADMINISTRATOR)
    assert [org.org_id for org in admin.list_organisations(region_admin)[0]] == [2, 12]
    elsewhere = Admin(admin.store, clock=clock)
    elsewhere.create_organisation(cli_actor(), 2, OrgKind.STATION, "Station 14", org_id=14)
    elsewhere.create_organisation(cli_actor(), 50, OrgKind.STATION, "Station 52", org_id=52)
    assert [org.org_id for org in admin.list_organisations(region_admin)[0]] == [2, 12, 14]
    elsewhere.update_organisation(cli_actor(), 14, "Station 14, renamed", "")
    assert [org.name for org in admin.list_organisations(region_admin)[0]][-1] == "Station 14, renamed"


def test_a_password_is_stored_as_argon2id_and_a_token_expires(world):
    admin, clock = world
    cli = cli_actor()
    admin.create_user(cli, "alice", PASSWORD, 1, Role.ADMINISTRATOR)
    stored = admin.get_user(cli, "alice").password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    with pytest.raises(Unauthenticated, match="wrong username or password"):
        admin.login("alice", PASSWORD + "!")
    with pytest.raises(Unauthenticated, match="wrong username or password"):
        admin.login("nobody", PASSWORD)
    admin.set_parameters(cli, {"token_validity_s": 60}, org_id=1)
    token, user, expires_ms = admin.login("alice", PASSWORD)
    assert expires_ms == clock.ms + 60_000
    assert admin.authenticate(token) == Actor("user:alice", 1, Role.ADMINISTRATOR)
    clock.ms += 60_000
    with pytest.raises(Unauthenticated, match="token expired"):
        admin.authenticate(token)
    actions = [entry.action for entry in admin.read_audit(cli)[0]]
    assert actions[-2:] == ["SetParameters", "Login"]
    assert "LoginFailed" not in actions, "a wrong password is counted on the user, not written to the audit log"


def test_disabling_a_user_or_changing_the_password_ends_the_tokens(world):
    admin, _ = world
    cli = cli_actor()
    admin.create_user(cli, "alice", PASSWORD, 1, Role.ADMINISTRATOR)
    admin.create_user(cli, "bob", PASSWORD, 12, Role.OPERATIONS)
    alice = admin.authenticate(admin.login("alice", PASSWORD)[0])
    bob_token = admin.login("bob", PASSWORD)[0]
    admin.update_user(alice, "bob", enabled=False)
    with pytest.raises(Unauthenticated, match="user disabled"):
        admin.authenticate(bob_token)
    admin.update_user(alice, "bob", enabled=True)
    admin.set_password(alice, "bob", "another long password")
    with pytest.raises(Unauthenticated, match="unknown or ended token"):
        admin.authenticate(bob_token)
    bob = admin.authenticate(admin.login("bob", "another long password")[0])
    with pytest.raises(PermissionDenied, match="old_password does not match"):
        admin.set_password(bob, "bob", "a third long password", old_password="wrong")
    with pytest.raises(NotFound):
        admin.set_password(bob, "alice", "a third long password")
    with pytest.raises(InvalidInput, match="new_password: length must be within 12 .. 256"):
        admin.set_password(alice, "bob", "short")


def test_a_verified_token_kept_in_memory_ends_at_once_on_a_change_here_and_soon_on_one_elsewhere(world):
    """authenticate keeps a verified token's actor for TOKEN_KEPT_MS (a
    console page makes several calls with one token): a logout, a user
    disabled or a role changed through this Admin count from the next call,
    a session's expiry to the millisecond, and a change another process
    makes (a second Admin over the same directory) within TOKEN_KEPT_MS."""
    admin, clock = world
    cli = cli_actor()
    admin.create_user(cli, "bob", PASSWORD, 12, Role.OPERATIONS)
    admin.set_parameters(cli, {"token_validity_s": 60}, org_id=1)
    token = admin.login("bob", PASSWORD)[0]
    bob = admin.authenticate(token)
    admin.update_user(cli, "bob", role=Role.AUDITOR)
    assert admin.authenticate(token).role == Role.AUDITOR, "a role changed here counts at once"
    admin.update_user(cli, "bob", enabled=False)
    with pytest.raises(Unauthenticated, match="user disabled"):
        admin.authenticate(token)
    admin.update_user(cli, "bob", enabled=True, role=Role.OPERATIONS)
    token = admin.login("bob", PASSWORD)[0]
    assert admin.authenticate(token) == bob
    admin.logout(bob, token)
    with pytest.raises(Unauthenticated, match="unknown or ended token"):
        admin.authenticate(token)

    token = admin.login("bob", PASSWORD)[0]
    assert admin.authenticate(token) == bob
    elsewhere = Admin(admin.store, clock=clock)  # another process's Admin over the directory
    elsewhere.update_user(cli, "bob", enabled=False)
    assert admin.authenticate(token) == bob, "kept: another process's change is not seen here at once"
    clock.ms += users.TOKEN_KEPT_MS
    with pytest.raises(Unauthenticated, match="user disabled"):
        admin.authenticate(token)

    elsewhere.update_user(cli, "bob", enabled=True)
    token, _, expires_ms = admin.login("bob", PASSWORD)
    clock.ms = expires_ms - 1
    assert admin.authenticate(token) == bob
    clock.ms = expires_ms
    with pytest.raises(Unauthenticated, match="token expired"):
        admin.authenticate(token)


def test_every_admin_service_rpc_has_a_permission_entry():
    rpcs = set(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    assert rpcs == set(ADMIN_PERMISSIONS)
    assert ADMIN_PERMISSIONS["ReadAudit"] == {Role.AUDITOR}


# ---------------------------------------------------------------- keys


def test_a_sealed_key_opens_only_for_its_terminal_and_master_key():
    master = os.urandom(32)
    sealed = keys.seal(master, keys.Purpose.TERMINAL_SECRET, 101, 0, b"s" * 32)
    assert keys.unseal(master, keys.Purpose.TERMINAL_SECRET, 101, 0, sealed) == b"s" * 32
    for args in ((master, keys.Purpose.TERMINAL_SECRET, 102, 0), (master, keys.Purpose.WORKING_KEY, 101, 0),
                 (os.urandom(32), keys.Purpose.TERMINAL_SECRET, 101, 0)):
        with pytest.raises(keys.SealError):
            keys.unseal(*args, sealed)


def test_the_mac_covers_every_byte_the_method_and_the_serial():
    key, body = os.urandom(32), bytes(range(40))
    mac = keys.compute_mac(key, "/tally.v1.PaymentService/Pay", 101, 3, 9, body)
    assert keys.mac_matches(key, "/tally.v1.PaymentService/Pay", 101, 3, 9, body, mac)
    for index in range(len(body)):
        changed = bytearray(body)
        changed[index] ^= 1
        assert not keys.mac_matches(key, "/tally.v1.PaymentService/Pay", 101, 3, 9, bytes(changed), mac)
    assert not keys.mac_matches(key, "/tally.v1.PaymentService/Refund", 101, 3, 9, body, mac)
    assert not keys.mac_matches(key, "/tally.v1.PaymentService/Pay", 101, 3, 10, body, mac)
    assert not keys.mac_matches(key, "/tally.v1.PaymentService/Pay", 101, 4, 9, body, mac)


def test_master_key_files_are_new_and_private(tmp_path):
    path = str(tmp_path / "master.key")
    keys.new_master_key_file(path)
    assert len(keys.load_master_key(path)) == 32
    with pytest.raises(FileExistsError):
        keys.new_master_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        keys.load_master_key(path)


def _sign_on(admin, terminal: TerminalKeys, serial: int, station_id=None):
    body, metadata = terminal.sign_on_request(serial, operator_id=7)
    values = dict(metadata)
    signed = admin.sign_on(SIGN_ON_METHOD, terminal.terminal_id, station_id or terminal.station_id, serial,
                           int(values[keys.METADATA_KEY_ID]), bytes.fromhex(values[keys.METADATA_MAC]), body)
    terminal.accept(admin_pb2.KeySignOnAnswer(key_id=signed.key_id, wrapped_key=signed.wrapped_key,
                                              expires_ms=signed.expires_ms))
    return signed


def test_sign_on_rotates_the_working_key_which_expires(world):
    admin, clock = world
    cli = cli_actor()
    record, secret = admin.register_terminal(cli, 101, 12)
    assert secret not in pack(record) and len(secret) == 32
    terminal = TerminalKeys(101, 12, secret)
    working_keys = WorkingKeys(admin.store, admin.master_key)
    first = _sign_on(admin, terminal, serial=1)
    first_key = terminal.working_key
    with admin.store.env.begin() as txn:
        assert working_keys.current(txn, 101, first.key_id, clock.ms)[1] == first_key
    second = _sign_on(admin, terminal, serial=2)
    assert (first.key_id, second.key_id) == (1, 2) and terminal.working_key != first_key
    with admin.store.env.begin() as txn:
        with pytest.raises(Unauthenticated, match="working key 1 of terminal 101 is not its current key"):
            working_keys.current(txn, 101, 1, clock.ms)
        clock.ms = second.expires_ms
        with pytest.raises(Unauthenticated, match="expired: sign on"):
            working_keys.current(txn, 101, 2, clock.ms)
    with pytest.raises(PermissionDenied, match="sign-on serial 2 of terminal 101 is not above its last"):
        _sign_on(admin, terminal, serial=2)
    with pytest.raises(PermissionDenied, match="registered at station 12, not 51"):
        _sign_on(admin, terminal, serial=3, station_id=51)
    with pytest.raises(Unauthenticated, match="MAC of terminal 101 does not verify"):
        _sign_on(admin, TerminalKeys(101, 12, os.urandom(32)), serial=4)
    admin.disable_terminal(cli, 101, "stolen")
    with pytest.raises(PermissionDenied, match="terminal 101 is disabled: stolen"):
        _sign_on(admin, terminal, serial=5)
    with pytest.raises(Unauthenticated, match="terminal 102 is not registered"):
        _sign_on(admin, TerminalKeys(102, 12, secret), serial=1)


def test_no_secret_reaches_the_audit_log(world):
    admin, _ = world
    cli = cli_actor()
    _, secret = admin.register_terminal(cli, 101, 12)
    terminal = TerminalKeys(101, 12, secret)
    _sign_on(admin, terminal, serial=1)
    admin.create_user(cli, "alice", PASSWORD, 1, Role.ADMINISTRATOR)
    text = "".join(entry.before + entry.after for entry in admin.read_audit(cli)[0])
    assert "secret" not in text and "key_sealed" not in text and "argon2" not in text
    assert secret.hex() not in text and terminal.working_key.hex() not in text
    assert '"key_id":1' in text


# ---------------------------------------------------------------- audit


def _tamper(store, seq: int, **changes):
    with store.env.begin(write=True) as txn:
        entry = unpack(AuditEntry, txn.get(u64_key(seq), db=store.admin_audit))
        txn.put(u64_key(seq), pack(msgspec.structs.replace(entry, **changes)), db=store.admin_audit)
        return entry


def test_the_audit_chain_names_an_edited_entry(world):
    admin, _ = world
    assert admin.verify_audit().intact and admin.verify_audit().entries == 5
    original = _tamper(admin.store, 3, after=admin.read_audit(cli_actor())[0][2].after.replace("Station 12", "Station X"))
    breaches = admin.verify_audit().breaches
    assert [(breach.seq, breach.reason) for breach in breaches] == [(3, "hash does not match its content: the entry was edited")]
    # Recomputing the edited entry's hash moves the breach to the next entry.
    forged = msgspec.structs.replace(original, after=original.after.replace("Station 12", "Station X"))
    digest = audit.entry_hash(forged.seq, forged.time_ms, forged.actor, forged.org_id, forged.action, forged.object,
                              forged.before, forged.after, forged.prev_hash)
    _tamper(admin.store, 3, after=forged.after, hash=digest)
    assert [(b.seq, b.reason) for b in admin.verify_audit().breaches] == [(4, "prev_hash is not the hash of entry 3")]


def test_the_audit_chain_notices_removed_and_cut_off_entries(world):
    admin, _ = world
    with admin.store.env.begin(write=True) as txn:
        txn.delete(u64_key(2), db=admin.store.admin_audit)
    reasons = [(b.seq, b.reason) for b in admin.verify_audit().breaches]
    assert (3, "entries 2 .. 2 are missing") in reasons and (3, "prev_hash is not the hash of entry 1") in reasons
    with admin.store.env.begin(write=True) as txn:
        txn.delete(u64_key(5), db=admin.store.admin_audit)
    assert any("cut off" in b.reason for b in admin.verify_audit().breaches)


def run_cli(*args, stdin: str = ""):
    return subprocess.run([sys.executable, "-m", "core.admin", *args], cwd=REPO, input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_the_command_line_creates_the_first_administrator_registers_a_terminal_and_verifies(tmp_path):
    data, master = str(tmp_path / "data"), str(tmp_path / "master.key")
    assert run_cli("master-key", "--out", master).returncode == 0
    made = run_cli("create-admin", "--data", data, "--org-name", "Acme", "--org-id", "1", "--username", "root",
                   "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    assert "administrator root of headquarters 1 (Acme)" in made.stdout
    station = run_cli("create-org", "--data", data, "--parent", "1", "--kind", "station", "--id", "12", "--name", "Station 12")
    assert station.returncode == 0, station.stderr
    registered = run_cli("register-terminal", "--data", data, "--master-key-file", master, "--terminal-id", "101",
                         "--station-id", "12")
    assert registered.returncode == 0, registered.stderr
    secret_line = [line for line in registered.stdout.splitlines() if line.startswith("secret key: ")]
    assert len(bytes.fromhex(secret_line[0].removeprefix("secret key: "))) == 32
    again = run_cli("register-terminal", "--data", data, "--master-key-file", master, "--terminal-id", "101",
                    "--station-id", "12")
    assert again.returncode == 2 and "terminal id 101 is registered" in again.stderr
    verified = run_cli("verify-audit", "--data", data)
    assert verified.returncode == 0 and "intact: 4 entries" in verified.stdout
    store = open_store(data, MAP_SIZE_TEST_BYTES)
    with store.env.begin() as txn:  # the kernel knows station 12 is in domain 1
        assert txn.get(u32_key(12), db=store.station_domains) == (1).to_bytes(4, "little")
    _tamper(store, 2, actor="cli:someone-else")
    store.close()
    broken = run_cli("verify-audit", "--data", data)
    assert broken.returncode == 1
    assert "entry 2: hash does not match its content: the entry was edited" in broken.stdout
    assert run_cli("--help").returncode == 0 and "verify-audit" in run_cli("--help").stdout
