"""The terminal guard's compiled way for a plain Pay (TerminalGuard.pass_pay,
server/fastpay.pyx terminal_pay) held to its reference, TerminalGuard.check:
whatever the compiled way passes, the reference passes as the same terminal;
a terminal changed through this process counts at the next request, one
changed by another process within TERMINALS_CHECKED_EVERY_MS. On a real
LMDB store."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.admin import Admin, keys
from core.admin.access import cli_actor
from core.admin.model import OrgKind
from core.admin.rotation import rotate_master_key
from core.admin.terminal_client import SIGN_ON_METHOD, TerminalKeys
from core.admin.terminals import terminals_version
from core.errors import TallyError
from core.results import OpKind
from core.store import open_store
from server import fastpay
from server.rpc import parser_of
from server.terminal_auth import MAC_LENGTHS, TERMINALS_CHECKED_EVERY_MS, TerminalGuard, parse_metadata
from tally.v1 import admin_pb2, common_pb2, payment_pb2

PAY = "/tally.v1.PaymentService/Pay"
PARSE_PAY = parser_of(payment_pb2.PayRequest.FromString)
MAP_SIZE_TEST_BYTES = 2**28
STATION, OTHER_STATION, TERMINAL, OTHER_TERMINAL = 12, 13, 101, 102
U64 = 2**64 - 1


class Clock:
    def __init__(self):
        self.ms = 1_800_000_000_000

    def __call__(self):
        return self.ms


class World:
    """A store with two stations and two signed-on terminals, the guard of
    a server on it, and its clock."""

    def __init__(self, directory: str):
        self.store = open_store(directory, MAP_SIZE_TEST_BYTES)
        self.clock = Clock()
        self.master_key = os.urandom(32)
        self.admin = Admin(self.store, master_key=self.master_key, clock=self.clock)
        cli = cli_actor()
        self.admin.create_headquarters(cli, "Acme", org_id=1)
        for station in (STATION, OTHER_STATION):
            self.admin.create_organisation(cli, 1, OrgKind.STATION, f"Station {station}", org_id=station)
        self.terminals = {terminal_id: self.register(terminal_id, station)
                          for terminal_id, station in ((TERMINAL, STATION), (OTHER_TERMINAL, OTHER_STATION))}
        self.guard = TerminalGuard(self.store, self.admin.master_key, clock=self.clock, admin=self.admin)
        self.signons = 0

    def register(self, terminal_id: int, station: int) -> TerminalKeys:
        _, secret = self.admin.register_terminal(cli_actor(), terminal_id, station)
        terminal = TerminalKeys(terminal_id, station, secret)
        self.sign_on(terminal, self.admin, serial=1)
        return terminal

    def sign_on(self, terminal: TerminalKeys, admin: Admin, serial: int):
        body, metadata = terminal.sign_on_request(serial, operator_id=7)
        values = dict(metadata)
        signed = admin.sign_on(SIGN_ON_METHOD, terminal.terminal_id, terminal.station_id, serial,
                               int(values[keys.METADATA_KEY_ID]), bytes.fromhex(values[keys.METADATA_MAC]), body)
        terminal.accept(admin_pb2.KeySignOnAnswer(key_id=signed.key_id, wrapped_key=signed.wrapped_key,
                                                  expires_ms=signed.expires_ms))

    def pay(self, terminal_id: int = TERMINAL, serial: int = 500, amount_minor: int = 2_500, **context) -> tuple:
        """(metadata, body) of a plain Pay MACed by the terminal."""
        terminal = self.terminals[terminal_id]
        fields = {"station_id": terminal.station_id, "terminal_id": terminal_id, "serial": serial, "operator_id": 7}
        fields.update(context)
        request = payment_pb2.PayRequest(terminal=common_pb2.TerminalContext(**fields), amount_minor=amount_minor,
                                         plan=payment_pb2.PaymentPlan(card_id=6_200_000_000_000_001, use_fleet=True))
        body = request.SerializeToString(deterministic=True)
        return terminal.metadata(PAY, serial, body), body

    def check(self, metadata, body):
        return self.guard.check(PAY, OpKind.PAY, metadata, body, PARSE_PAY)


@pytest.fixture
def world(tmp_path):
    world = World(str(tmp_path / "data"))
    yield world
    world.store.close()


# ------------------------------------------------------------ the metadata

DECIMALS = st.one_of(st.integers(0, U64).map(str), st.sampled_from(["", "-1", "+5", " 7", "1e3", "٣", str(2**64), "0" * 21]),
                     st.text(max_size=4))
MACS = st.one_of(st.binary(min_size=16, max_size=16).map(bytes.hex), st.binary(min_size=32, max_size=32).map(bytes.hex),
                 st.sampled_from(["", "zz", "abc", "ab cd"]), st.text(max_size=6))
PAIRS = st.one_of(st.tuples(st.just(keys.METADATA_TERMINAL), DECIMALS), st.tuples(st.just(keys.METADATA_KEY_ID), DECIMALS),
                  st.tuples(st.just(keys.METADATA_SERIAL), DECIMALS), st.tuples(st.just(keys.METADATA_MAC), MACS),
                  st.tuples(st.sampled_from(["user-agent", "x-tally-other"]), st.text(max_size=4)))


@st.composite
def metadata_and_body(draw):
    """Metadata of a Pay, well-formed most of the time, and a plain Pay
    whose terminal and serial are the metadata's most of the time."""
    terminal_id, serial = draw(st.sampled_from([TERMINAL, 1, 9])), draw(st.sampled_from([1, 500, U64]))
    pairs = [(keys.METADATA_TERMINAL, str(terminal_id)), (keys.METADATA_KEY_ID, str(draw(st.integers(0, 3)))),
             (keys.METADATA_SERIAL, str(serial)), (keys.METADATA_MAC, draw(MACS))]
    for _ in range(draw(st.integers(0, 3))):
        pairs.insert(draw(st.integers(0, len(pairs))), draw(PAIRS))
    if draw(st.booleans()):
        pairs.pop(draw(st.integers(0, len(pairs) - 1)))
    context = common_pb2.TerminalContext(station_id=STATION, terminal_id=draw(st.sampled_from([terminal_id, terminal_id, 2])),
                                         serial=draw(st.sampled_from([serial, serial, 2])), operator_id=7)
    request = payment_pb2.PayRequest(terminal=context, amount_minor=draw(st.sampled_from([1, 2_500, 0])),
                                     plan=payment_pb2.PaymentPlan(card_id=6_200_000_000_000_001, use_fleet=True))
    return tuple(pairs), request.SerializeToString(deterministic=True)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metadata_and_body())
def test_terminal_pay_reads_what_the_reference_reads_and_passes_nothing_it_refuses(found):
    """With no terminal kept, terminal_pay answers a Pay whose metadata and
    body read well with its terminal id (to be read and kept), else None."""
    metadata, body = found
    passed = fastpay.terminal_pay(metadata, body, keys.mac_prefix(PAY), {}, 1, 0)
    try:
        reference = parse_metadata(metadata)
    except TallyError:
        reference = None
    request = payment_pb2.PayRequest.FromString(body)
    plain = fastpay.PayMessage.single(body).plain(0)
    names_its_own = reference is not None and (request.terminal.terminal_id, request.terminal.serial) == (reference[0], reference[2])
    if passed is None:
        # Left to the reference: it refuses the metadata, or the Pay names
        # another terminal or serial, or is not plain.
        assert reference is None or not names_its_own or not plain
        return
    mac = bytes.fromhex(dict(metadata)[keys.METADATA_MAC])
    assert plain and passed == request.terminal.terminal_id
    if len(mac) in MAC_LENGTHS:  # the reference refuses other lengths; the MAC check would too
        assert reference is not None and reference[0] == passed and reference[3] == mac and names_its_own


# ------------------------------------------------------------ the guard

MUTATIONS = ("none", "body byte", "metadata serial", "key id", "terminal", "station", "other terminal's key", "expired",
             "disabled")


def mutated(world: World, mutation: str, serial: int):
    metadata, body = world.pay(serial=serial)
    values = dict(metadata)
    if mutation == "body byte":
        changed = bytearray(body)
        changed[len(changed) // 2] ^= 1
        body = bytes(changed)
    elif mutation == "metadata serial":
        values[keys.METADATA_SERIAL] = str(serial + 1)
    elif mutation == "key id":
        values[keys.METADATA_KEY_ID] = str(int(values[keys.METADATA_KEY_ID]) + 1)
    elif mutation == "terminal":
        values[keys.METADATA_TERMINAL] = str(OTHER_TERMINAL)
    elif mutation == "station":
        metadata, body = world.pay(serial=serial, station_id=OTHER_STATION)
        values = dict(metadata)
    elif mutation == "other terminal's key":
        other = world.terminals[OTHER_TERMINAL]
        values = dict(keys.mac_metadata(other.working_key, PAY, TERMINAL, other.key_id, serial, body))
    elif mutation == "expired":
        world.clock.ms = world.terminals[TERMINAL].expires_ms
    elif mutation == "disabled":
        world.admin.disable_terminal(cli_actor(), TERMINAL, "stolen")
    return tuple(values.items()), body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=6))
def test_what_pass_pay_passes_check_passes_as_the_same_terminal(tmp_path_factory, mutations):
    world = World(str(tmp_path_factory.mktemp("pass") / "data"))
    try:
        for serial, mutation in enumerate(mutations, start=1_000):
            metadata, body = mutated(world, mutation, serial)
            message = world.guard.pass_pay(PAY, metadata, body)
            try:
                request, caller = world.check(metadata, body)
            except TallyError:
                assert message is None, f"{mutation}: passed here, refused by the reference"
                continue
            if mutation == "none":
                assert message is not None
            if message is not None:
                assert caller.terminal_id == message.terminal_of(0) == request.terminal.terminal_id
                assert message.request(0) == body
    finally:
        world.store.close()


def test_a_change_through_this_process_counts_at_the_next_request(world):
    assert world.guard.pass_pay(PAY, *world.pay(serial=1)) is not None
    world.admin.disable_terminal(cli_actor(), TERMINAL, "reported stolen")
    assert world.guard.pass_pay(PAY, *world.pay(serial=2)) is None
    world.admin.enable_terminal(cli_actor(), TERMINAL)
    assert world.guard.pass_pay(PAY, *world.pay(serial=3)) is None  # no working key until it signs on
    world.sign_on(world.terminals[TERMINAL], world.admin, serial=4)
    assert world.guard.pass_pay(PAY, *world.pay(serial=5)) is not None


def test_a_change_by_another_process_counts_within_terminals_checked_every_ms(world):
    elsewhere = Admin(world.store, master_key=world.master_key, clock=world.clock)  # its own change count
    assert world.guard.pass_pay(PAY, *world.pay(serial=1)) is not None
    elsewhere.disable_terminal(cli_actor(), TERMINAL, "reported stolen")
    world.clock.ms += TERMINALS_CHECKED_EVERY_MS - 1
    assert world.guard.pass_pay(PAY, *world.pay(serial=2)) is not None  # kept: the delay the docstring states
    world.clock.ms += 1
    assert world.guard.pass_pay(PAY, *world.pay(serial=3)) is None
    elsewhere.enable_terminal(cli_actor(), TERMINAL)
    world.sign_on(world.terminals[TERMINAL], elsewhere, serial=4)
    world.clock.ms += TERMINALS_CHECKED_EVERY_MS
    assert world.guard.pass_pay(PAY, *world.pay(serial=5)) is not None


def test_every_write_of_a_terminal_moves_the_stored_version(world):
    def version():
        with world.store.env.begin() as txn:
            return terminals_version(txn, world.store)

    before = version()
    world.admin.register_terminal(cli_actor(), 103, STATION)
    world.admin.disable_terminal(cli_actor(), 103, "test")
    world.admin.enable_terminal(cli_actor(), 103)
    world.sign_on(world.terminals[TERMINAL], world.admin, serial=9)
    assert version() == before + 4
    new_master_key = os.urandom(32)
    rotate_master_key(world.store, world.admin.master_key, keys.as_master_key(new_master_key), cli_actor().name, world.clock())
    assert version() == before + 4 + 3  # one per terminal: 101, 102, 103


def test_a_sign_on_elsewhere_is_read_at_the_first_request_under_the_new_key(world):
    elsewhere = Admin(world.store, master_key=world.master_key, clock=world.clock)
    assert world.guard.pass_pay(PAY, *world.pay(serial=1)) is not None
    old_metadata, old_body = world.pay(serial=2)
    world.sign_on(world.terminals[TERMINAL], elsewhere, serial=3)
    assert world.guard.pass_pay(PAY, *world.pay(serial=4)) is not None
    assert world.guard.pass_pay(PAY, old_metadata, old_body) is None  # the old key is dead at once
