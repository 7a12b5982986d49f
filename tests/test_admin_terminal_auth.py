"""Terminal authentication over a real server with --terminal-auth: sign-on,
MACed requests, and every refusal (each also in the server's log)."""

import itertools
import os
import time

import grpc
import pytest

from core.admin import keys
from core.admin.access import cli_actor
from core.admin.terminal_client import TerminalKeys
from tally.v1 import admin_pb2, card_pb2, common_pb2, gateway_pb2, gateway_pb2_grpc, payment_pb2
from tests.support import DEMO_COMPANY_CARD, ServerProcess, Terminal
from tests.test_admin_service import AdminClient, refused, seed_directory

PAY = "/tally.v1.PaymentService/Pay"
R = common_pb2
UNAUTHENTICATED, PERMISSION_DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
# terminal id -> station it is registered at (seeded before the server starts).
REGISTERED = {101: 12, 102: 12, 103: 13, 104: 12, 105: 12}
# A terminal keeps counting its serials across sign-ons; each signed_on()
# starts a fresh range so that no two tests share a serial.
SERIAL_RANGES = itertools.count(0, 10**6)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A server with --terminal-auth; terminals registered, secrets kept."""
    base = tmp_path_factory.mktemp("terminal-auth")
    data_dir, master_key_file = str(base / "data"), str(base / "master.key")
    admin = seed_directory(data_dir, master_key_file, users={"root": (1, 1)})
    secrets = {terminal_id: admin.register_terminal(cli_actor(), terminal_id, station_id)[1]
               for terminal_id, station_id in REGISTERED.items()}
    admin.store.close()
    process = ServerProcess(data_dir, "--terminal-auth", "--master-key-file", master_key_file).start()
    yield process, secrets
    process.stop()


def signed_on(secured, terminal_id: int):
    """(a Terminal whose stubs MAC every call, its keys, the plain channel)."""
    process, secrets = secured
    station_id = REGISTERED[terminal_id]
    terminal_keys = TerminalKeys(terminal_id, station_id, secrets[terminal_id])
    channel = process.channel()
    terminal = Terminal(grpc.intercept_channel(channel, terminal_keys.interceptor()), station_id=station_id,
                        terminal_id=terminal_id, serial=next(SERIAL_RANGES))
    terminal.serial += 1
    terminal_keys.sign_on(channel, terminal.serial, operator_id=7)
    return terminal, terminal_keys, channel


def pay_request(terminal: Terminal, amount_minor: int, serial=None, **context) -> payment_pb2.PayRequest:
    request = payment_pb2.PayRequest(terminal=terminal.context(serial), amount_minor=amount_minor,
                                     plan=payment_pb2.PaymentPlan(card_id=DEMO_COMPANY_CARD, use_fleet=True))
    for name, value in context.items():
        setattr(request.terminal, name, value)
    return request


def send_raw(channel, body: bytes, metadata) -> payment_pb2.PaymentAnswer:
    call = channel.unary_unary(PAY, request_serializer=None, response_deserializer=payment_pb2.PaymentAnswer.FromString)
    return call(body, metadata=metadata, timeout=10)


def test_a_signed_on_terminal_pays_and_an_exact_retry_gets_the_first_answer(secured):
    terminal, terminal_keys, _ = signed_on(secured, 101)
    assert terminal_keys.key_id == 1 and len(terminal_keys.working_key) == 32
    answer, request = terminal.pay(2_500)
    assert answer.result == R.APPROVED
    again = terminal.payments.Pay(request)
    assert again.replayed  # the stored answer, marked so
    again.replayed = False
    assert again == answer
    top_up = terminal.topup(DEMO_COMPANY_CARD, 100, account=common_pb2.PERSONAL)
    assert top_up.result == R.APPROVED
    assert terminal.payments.Query(payment_pb2.QueryRequest(terminal_id=101, serial=request.terminal.serial)).found
    # Back-office RPCs and health are not terminal requests: no MAC needed.
    process, _ = secured
    assert Terminal(process.channel()).card(DEMO_COMPANY_CARD).card_id == DEMO_COMPANY_CARD


def test_a_valid_mac_with_one_changed_byte_is_refused(secured):
    terminal, terminal_keys, channel = signed_on(secured, 101)
    before = terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor
    request = pay_request(terminal, 2_500)
    body = request.SerializeToString(deterministic=True)
    metadata = terminal_keys.metadata(PAY, request.terminal.serial, body)
    request.amount_minor = 2_501
    changed = request.SerializeToString(deterministic=True)
    assert len(changed) == len(body) and sum(a != b for a, b in zip(body, changed)) == 1
    text = refused(lambda: send_raw(channel, changed, metadata), UNAUTHENTICATED)
    assert text == "MAC of terminal 101 does not verify"
    assert terminal.card(DEMO_COMPANY_CARD).balances.fleet_minor == before
    assert send_raw(channel, body, metadata).result == R.APPROVED


def test_a_request_without_or_with_a_malformed_or_wrong_mac_is_refused(secured):
    process, _ = secured
    unsigned = Terminal(process.channel(), station_id=12, terminal_id=101, serial=10**9)
    assert "missing x-tally-terminal, x-tally-key-id, x-tally-serial, x-tally-mac" in refused(
        lambda: unsigned.pay(100), UNAUTHENTICATED)
    terminal, terminal_keys, channel = signed_on(secured, 101)
    request = pay_request(terminal, 100)
    body = request.SerializeToString(deterministic=True)
    good = dict(terminal_keys.metadata(PAY, request.terminal.serial, body))
    wrong = {**good, keys.METADATA_MAC: os.urandom(32).hex()}
    assert refused(lambda: send_raw(channel, body, tuple(wrong.items())), UNAUTHENTICATED) == "MAC of terminal 101 does not verify"
    malformed = {**good, keys.METADATA_MAC: "zz"}
    assert "x-tally-mac: must be 64 hex digits" in refused(lambda: send_raw(channel, body, tuple(malformed.items())),
                                                           grpc.StatusCode.INVALID_ARGUMENT)
    other_serial = {**good, keys.METADATA_SERIAL: str(request.terminal.serial + 1)}
    refused(lambda: send_raw(channel, body, tuple(other_serial.items())), UNAUTHENTICATED)


def test_an_unregistered_terminal_is_refused(secured):
    process, _ = secured
    stranger = TerminalKeys(999, 12, os.urandom(32))
    assert refused(lambda: stranger.sign_on(process.channel(), 1, 7), UNAUTHENTICATED) == "terminal 999 is not registered"
    stranger.working_key, stranger.key_id = os.urandom(32), 1
    terminal = Terminal(grpc.intercept_channel(process.channel(), stranger.interceptor()), station_id=12, terminal_id=999)
    assert refused(lambda: terminal.pay(100), UNAUTHENTICATED) == "terminal 999 is not registered"


def test_a_disabled_terminal_is_refused_and_signs_on_again_once_enabled(secured):
    process, _ = secured
    terminal, terminal_keys, channel = signed_on(secured, 102)
    assert terminal.pay(100)[0].result == R.APPROVED
    root = AdminClient(process.channel(), "root")
    root.DisableTerminal(terminal_id=102, reason="reported stolen")
    assert refused(lambda: terminal.pay(100), PERMISSION_DENIED) == "terminal 102 is disabled: reported stolen"
    terminal.serial += 1
    refused(lambda: terminal_keys.sign_on(channel, terminal.serial, 7), PERMISSION_DENIED)
    root.EnableTerminal(terminal_id=102)
    assert "has no working key: sign on" in refused(lambda: terminal.pay(100), UNAUTHENTICATED)
    terminal.serial += 1
    terminal_keys.sign_on(channel, terminal.serial, 7)
    assert terminal.pay(100)[0].result == R.APPROVED


def test_a_mac_under_the_old_key_is_refused_after_rotation(secured):
    terminal, terminal_keys, channel = signed_on(secured, 104)
    old_key_id, old_key = terminal_keys.key_id, terminal_keys.working_key
    terminal.serial += 1
    signon_serial = terminal.serial
    terminal_keys.sign_on(channel, signon_serial, 7)
    assert terminal_keys.key_id == old_key_id + 1
    request = pay_request(terminal, 100)
    body = request.SerializeToString(deterministic=True)
    old = keys.mac_metadata(old_key, PAY, 104, old_key_id, request.terminal.serial, body)
    text = refused(lambda: send_raw(channel, body, old), UNAUTHENTICATED)
    assert text == f"working key {old_key_id} of terminal 104 is not its current key ({old_key_id + 1}): keys rotate at each sign-on"
    # The old key id with the new key is no better.
    mixed = keys.mac_metadata(terminal_keys.working_key, PAY, 104, old_key_id, request.terminal.serial, body)
    refused(lambda: send_raw(channel, body, mixed), UNAUTHENTICATED)
    assert send_raw(channel, body, terminal_keys.metadata(PAY, request.terminal.serial, body)).result == R.APPROVED
    # A replayed sign-on (its serial is not above the last one) is refused.
    text = refused(lambda: terminal_keys.sign_on(channel, signon_serial, 7), PERMISSION_DENIED)
    assert text == f"sign-on serial {signon_serial} of terminal 104 is not above its last ({signon_serial}): a replay"


def test_an_expired_working_key_is_refused(secured):
    process, _ = secured
    root = AdminClient(process.channel(), "root")
    root.SetParameters(working_key_validity_s=1)
    try:
        terminal, terminal_keys, _ = signed_on(secured, 103)
    finally:
        root.SetParameters(working_key_validity_s=86400)
    time.sleep(max(0.0, terminal_keys.expires_ms / 1000 - time.time()) + 0.05)
    assert refused(lambda: terminal.pay(100), UNAUTHENTICATED) == "working key 1 of terminal 103 expired: sign on"


def test_a_used_serial_with_another_body_is_refused_and_an_exact_retry_is_not(secured):
    terminal, terminal_keys, channel = signed_on(secured, 105)
    first, request = terminal.pay(700)
    assert first.result == R.APPROVED
    changed = pay_request(terminal, 701, serial=request.terminal.serial)
    text = refused(lambda: terminal.payments.Pay(changed), PERMISSION_DENIED)
    assert text == f"serial {request.terminal.serial} of terminal 105 was used for another request: a replay"
    # An exact retry, even after a new sign-on (another key), gets the first answer.
    terminal.serial += 1
    terminal_keys.sign_on(channel, terminal.serial, 7)
    again = terminal.payments.Pay(request)
    assert again.replayed
    again.replayed = False
    assert again == first


def test_a_terminal_at_another_station_or_in_another_terminals_name_is_refused(secured):
    terminal, _, _ = signed_on(secured, 101)
    text = refused(lambda: terminal.payments.Pay(pay_request(terminal, 100, station_id=13)), PERMISSION_DENIED)
    assert text == "terminal.station_id: terminal 101 is registered at station 12, not 13"
    refused(lambda: terminal.payments.Pay(pay_request(terminal, 100, terminal_id=102)), PERMISSION_DENIED)
    refused(lambda: terminal.payments.Query(payment_pb2.QueryRequest(terminal_id=102, serial=1)), PERMISSION_DENIED)
    top_up = card_pb2.TopUpRequest(terminal=terminal.context(), card_id=DEMO_COMPANY_CARD, account=common_pb2.PERSONAL, amount=1)
    top_up.terminal.station_id = 13
    refused(lambda: terminal.cards.TopUp(top_up), PERMISSION_DENIED)


def test_the_gateway_stream_is_refused_under_terminal_auth(secured):
    terminal, _, channel = signed_on(secured, 101)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    message = gateway_pb2.GatewayMessage(correlation_id=1, operations=[gateway_pb2.GatewayOperation(pay=pay_request(terminal, 100))])
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Exchange(iter([message]), timeout=10))
    assert error.value.code() == PERMISSION_DENIED and "GatewayService carries no per-request MAC" in error.value.details()


def test_refusals_are_logged(secured):
    process, _ = secured
    stranger = TerminalKeys(998, 12, os.urandom(32))
    refused(lambda: stranger.sign_on(process.channel(), 1, 7), UNAUTHENTICATED)
    unsigned = Terminal(process.channel(), station_id=12, terminal_id=101, serial=10**9 + 5)
    refused(lambda: unsigned.pay(100), UNAUTHENTICATED)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "terminal 998 is not registered" not in process.log:
        time.sleep(0.05)
    assert "call refused: /tally.v1.TerminalKeyService/SignOn UNAUTHENTICATED: terminal 998 is not registered" in process.log
    assert process.logged("call refused: /tally.v1.PaymentService/Pay UNAUTHENTICATED: missing x-tally-terminal")


def test_sign_on_answers_a_wrapped_key_only_the_terminal_opens(secured):
    process, secrets = secured
    terminal_keys = TerminalKeys(101, 12, secrets[101])
    body, metadata = terminal_keys.sign_on_request(serial=10**10, operator_id=7)
    call = process.channel().unary_unary("/tally.v1.TerminalKeyService/SignOn", request_serializer=None,
                                         response_deserializer=admin_pb2.KeySignOnAnswer.FromString)
    answer = call(body, metadata=metadata, timeout=10)
    assert answer.key_id >= 1 and answer.expires_ms > time.time() * 1000
    assert len(answer.wrapped_key) == keys.NONCE_BYTES + keys.KEY_BYTES + 16
    with pytest.raises(keys.SealError):
        TerminalKeys(101, 12, secrets[102]).accept(answer)
    terminal_keys.accept(answer)
    assert len(terminal_keys.working_key) == 32


def test_a_sign_on_with_a_malformed_terminal_context_names_the_field(secured):
    process, secrets = secured
    terminal_keys = TerminalKeys(101, 12, secrets[101])
    text = refused(lambda: terminal_keys.sign_on(process.channel(), 10**11, operator_id=0), grpc.StatusCode.INVALID_ARGUMENT)
    assert text == "terminal.operator_id: must be within 1 .. 4294967295, got 0"


def test_every_terminal_rpc_without_a_mac_is_refused(secured):
    """Each guarded RPC (payments, top-up, loyalty, shifts, red packet claims,
    lottery chances bought with points) refuses a call that carries no MAC."""
    from server.callers import CALLERS

    process, _ = secured
    channel = process.channel()
    terminal_only = [path for path, allowed in CALLERS.items() if allowed.terminal and not allowed.roles]
    assert "/tally.v1.PromotionService/ClaimPacket" in terminal_only and "/tally.v1.PromotionService/BuyChances" in terminal_only
    for method in terminal_only:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as error:
            call(b"", timeout=10)
        assert error.value.code() == UNAUTHENTICATED, method
