"""The client SDK (clients/python) against a real server: typed answers,
typed errors, retries with the same serial, the currency, and the terminal
MAC (sign-on, rotation, a key the server dropped).

Helpers here (a server on a fixed port, a server with --terminal-auth and
registered terminals, quick client settings) serve the other
tests/test_sdk_*.py modules too.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from core.admin.access import cli_actor
from tally.v1 import settlement_pb2, settlement_pb2_grpc
from tally_client import (CardAccount, ClientSettings, InvalidArgument, Outcome, ResultCode, TerminalClient,
                          TransactionState)
from tally_client.results import BasketLine
from tests.support import DEMO_COMPANY_CARD, DEMO_PERSONAL_CARD, REPO, ServerProcess
from tests.test_admin_service import AdminClient, seed_directory

# Quick enough for tests, long enough for a loaded 2-core machine.
QUICK = ClientSettings(attempt_timeout_s=5, operation_timeout_s=20, backoff_initial_s=0.05, backoff_max_s=0.5,
                       drain_interval_s=0.1, reversal_backoff_max_s=0.5)
# terminal id -> station, registered before the secured server starts.
REGISTERED = {101: 12, 102: 12, 103: 12, 104: 12}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_on(port: int, data_dir: str, *args: str, demo: bool = True) -> ServerProcess:
    """A server on a fixed port, so that a restart is found at the same address."""
    return ServerProcess(data_dir, *args, "--listen", f"127.0.0.1:{port}", demo=demo)


def open_client(address: str, state_dir, terminal_id: int = 101, station_id: int = 1, **options) -> TerminalClient:
    options.setdefault("settings", QUICK)
    return TerminalClient(address, station_id=station_id, terminal_id=terminal_id, operator_id=7,
                          state_dir=str(state_dir), **options)


def secured_server(base, *args: str) -> tuple[ServerProcess, dict[int, bytes]]:
    """--terminal-auth, terminals registered (their secrets returned), user root."""
    data_dir, master_key_file = str(base / "data"), str(base / "master.key")
    admin = seed_directory(data_dir, master_key_file, users={"root": (1, 1)})
    secrets = {terminal_id: admin.register_terminal(cli_actor(), terminal_id, station_id)[1]
               for terminal_id, station_id in REGISTERED.items()}
    admin.store.close()
    return ServerProcess(data_dir, "--terminal-auth", "--master-key-file", master_key_file, *args), secrets


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    process, secrets = secured_server(tmp_path_factory.mktemp("sdk-auth"))
    process.start()
    yield process, secrets
    process.stop()


# ------------------------------------------------------------ answers and errors


def test_a_pay_answers_typed_results_in_int_minor_units(server, tmp_path):
    with open_client(server.address, tmp_path) as client:
        before = client.get_points(DEMO_COMPANY_CARD).points_balance
        result = client.pay(2_500, card_id=DEMO_COMPANY_CARD, use_fleet=True,
                            basket=[BasketLine("92", 2_500, quantity_milli=3_571, unit_price_minor=700,
                                               category="fuel")])
        assert result.outcome is Outcome.ANSWERED and result.approved
        assert result.result is ResultCode.APPROVED and result.serial == 1
        assert (result.amount_minor, result.sources.fleet_minor, result.currency) == (2_500, 2_500, "CNY")
        assert all(type(value) is int for value in (result.amount_minor, result.txn_id, result.balances.fleet_minor,
                                                     result.balances.points, result.points_earned))
        assert result.balances.points == before + result.points_earned and result.points_earned > 0
        assert "TALLY SALE" in result.receipt
        stored = client.query(result.serial)
        assert stored.found and stored.answer.txn_id == result.txn_id and stored.answer.serial == result.serial
        assert stored.transaction.state is TransactionState.POSTED and stored.transaction.currency == "CNY"
        assert client.query(txn_id=result.txn_id).transaction.amount_minor == 2_500
        assert client.pending_reversals() == []


def test_holds_refunds_voids_top_ups_and_loyalty_calls_answer_typed_results(server, tmp_path):
    with open_client(server.address, tmp_path, terminal_id=102) as client:
        hold = client.pre_authorize(DEMO_COMPANY_CARD, 10_000)
        assert hold.approved and hold.amount_minor == 10_000
        completed = client.complete(hold.txn_id, 7_000)
        assert completed.approved and completed.amount_minor == 7_000
        refund = client.refund(hold.txn_id, 1_000)
        assert refund.approved and refund.amount_minor == 1_000 and refund.txn_id != hold.txn_id
        sale = client.pay(300, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        assert client.void(sale.txn_id).approved
        assert client.void(sale.txn_id).result is ResultCode.ALREADY_VOIDED
        second = client.pre_authorize(DEMO_COMPANY_CARD, 500)
        assert client.release(second.txn_id).approved
        top_up = client.top_up(DEMO_PERSONAL_CARD, 1_000, account=CardAccount.PERSONAL)
        assert top_up.approved and top_up.balances.personal_minor >= 1_000
        check_in = client.check_in(DEMO_PERSONAL_CARD)
        assert check_in.approved and check_in.points > 0
        assert client.check_in(DEMO_PERSONAL_CARD).result is ResultCode.ALREADY_CHECKED_IN
        assert client.redeem_gift(DEMO_PERSONAL_CARD, gift_id=999).result is ResultCode.GIFT_NOT_FOUND
        quote = client.quote_points(DEMO_PERSONAL_CARD, 10_000)
        assert quote.total == sum(item.points for item in quote.items) > 0
        # Every request took the next serial, and each is answered as stored.
        assert [client.query(serial).found for serial in range(1, 12)] == [True] * 11


def test_a_refused_request_raises_a_typed_error_and_leaves_nothing_to_reverse(server, tmp_path):
    with open_client(server.address, tmp_path, terminal_id=103) as client:
        with pytest.raises(InvalidArgument) as refused:
            client.pay(0, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        # From the google.rpc.Status details of the trailer, not from the words.
        error = refused.value
        assert (error.status, error.reason, error.field, error.domain) == (
            "INVALID_ARGUMENT", "INVALID_FIELD", "amount_minor", "tally.v1")
        assert [(v.field, v.description) for v in error.violations] == [
            ("amount_minor", "must be within 1 .. 1000000000000, got 0")]
        assert client.pending_reversals() == [] and os.listdir(client.reversals.directory) == []
        with pytest.raises(TypeError, match="amount_minor: must be an int"):
            client.pay(25.0, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        with pytest.raises(TypeError):
            client.pay(True, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        # The float never reached the wire: the next request has the next serial.
        assert client.pay(100, card_id=DEMO_COMPANY_CARD, use_fleet=True).serial == 2


def test_the_server_answers_in_its_currency_setting(server_factory, tmp_path):
    euro = server_factory("--currency", "EUR")
    with open_client(euro.address, tmp_path) as client:
        result = client.pay(1_000, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        assert result.currency == "EUR" and client.query(result.serial).transaction.currency == "EUR"
    clearing = settlement_pb2_grpc.SettlementServiceStub(euro.channel()).GetClearing(
        settlement_pb2.ClearingRequest(day=result.business_day))
    assert clearing.currency == "EUR" and clearing.net_minor != 0
    refused = subprocess.run([sys.executable, "-m", "server", "--data", str(tmp_path / "x"), "--currency", "eur"],
                             cwd=REPO, capture_output=True, text=True)
    assert refused.returncode != 0 and "--currency must be an ISO 4217 code" in refused.stderr


# ------------------------------------------------------------ retries


def test_a_server_that_comes_up_late_gets_the_same_serial_once(tmp_path):
    """UNAVAILABLE is retried with the same bytes until the call's deadline:
    the server, started 1.5 s into the call, answers it; its request log
    shows the serial once."""
    port = free_port()
    server = server_on(port, str(tmp_path / "data"), "--log-requests", "--log-format", "json")
    starter = threading.Timer(1.5, server.start)
    try:
        with open_client(f"127.0.0.1:{port}", tmp_path / "state") as client:
            started = time.monotonic()
            starter.start()
            result = client.pay(1_000, card_id=DEMO_COMPANY_CARD, use_fleet=True)
            assert result.approved and time.monotonic() - started >= 1.5
            assert client.pending_reversals() == []
        starter.join()
        logged = [json.loads(line) for line in server.log_lines if line.startswith("{")]
        pays = [entry for entry in logged if entry.get("rpc") == "Pay"]
        assert [(entry["serial"], entry["outcome"]) for entry in pays] == [(result.serial, "APPROVED")]
    finally:
        starter.cancel()
        server.kill()


def test_a_full_server_queue_is_retried_until_every_sale_is_approved_once(server_factory, tmp_path):
    """--queue-length-max 1 and twelve terminals paying at once: the server
    refuses many attempts with RESOURCE_EXHAUSTED; every sale is still
    approved, once, under its own serial."""
    server = server_factory("--queue-length-max", "1", "--log-requests", "--log-format", "json")
    settings = ClientSettings(attempt_timeout_s=5, operation_timeout_s=60, backoff_initial_s=0.01, backoff_max_s=0.05)
    paid = []

    def terminal(terminal_id: int):
        with open_client(server.address, tmp_path / str(terminal_id), terminal_id=terminal_id, settings=settings,
                         drain=False) as client:
            paid.extend((terminal_id, client.pay(10, card_id=DEMO_COMPANY_CARD, use_fleet=True)) for _ in range(25))

    threads = [threading.Thread(target=terminal, args=(terminal_id,)) for terminal_id in range(801, 813)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paid) == 300 and all(result.approved for _, result in paid)
    logged = [json.loads(line) for line in server.log_lines if line.startswith("{")]
    pays = [(entry["terminal_id"], entry["serial"], entry["outcome"]) for entry in logged if entry.get("rpc") == "Pay"]
    assert sum(outcome == "RESOURCE_EXHAUSTED" for _, _, outcome in pays) > 0  # the path under test was taken
    approved = sorted((terminal_id, serial) for terminal_id, serial, outcome in pays if outcome == "APPROVED")
    assert approved == sorted((terminal_id, result.serial) for terminal_id, result in paid)


def test_every_call_has_a_deadline(tmp_path):
    """Nothing listens: a read gives up at the call's deadline with a typed
    error, never hangs."""
    settings = ClientSettings(attempt_timeout_s=0.2, operation_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.2)
    with open_client(f"127.0.0.1:{free_port()}", tmp_path, settings=settings, drain=False) as client:
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            client.get_points(DEMO_COMPANY_CARD)
        assert failed.value.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert time.monotonic() - started < 5


# ------------------------------------------------------------ the terminal MAC


def test_a_terminal_signs_on_by_itself_and_pays_with_its_mac(secured, tmp_path):
    process, secrets = secured
    with open_client(process.address, tmp_path, terminal_id=101, station_id=12, secret=secrets[101]) as client:
        result = client.pay(1_000, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        assert result.approved
        # The pay took serial 1, the sign-on before its first attempt serial 2.
        assert client.keys.key_id == 1 and result.serial == 1
        assert client.query(result.serial).answer.txn_id == result.txn_id
        assert client.pay(1_000, card_id=DEMO_COMPANY_CARD, use_fleet=True).serial == 3
    # Without the MAC the same server refuses.
    with open_client(process.address, tmp_path / "plain", terminal_id=101, station_id=12, serial_first=10**6) as plain:
        with pytest.raises(Exception) as refused:
            plain.pay(1_000, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        assert refused.value.status == "UNAUTHENTICATED"


def test_keys_rotate_at_sign_on_and_before_they_expire(secured, tmp_path):
    process, secrets = secured
    with open_client(process.address, tmp_path, terminal_id=102, station_id=12, secret=secrets[102]) as client:
        first = client.sign_on()
        assert client.pay(100, card_id=DEMO_COMPANY_CARD, use_fleet=True).approved
        second = client.sign_on()
        assert second.key_id == first.key_id + 1 and second.serial > first.serial
        assert client.pay(100, card_id=DEMO_COMPANY_CARD, use_fleet=True).approved
    # A margin longer than a key's life: the client signs on before every call.
    eager = ClientSettings(attempt_timeout_s=5, operation_timeout_s=20, key_rotation_margin_s=10**7)
    with open_client(process.address, tmp_path, terminal_id=102, station_id=12, secret=secrets[102],
                     settings=eager) as client:
        for _ in range(3):
            assert client.pay(100, card_id=DEMO_COMPANY_CARD, use_fleet=True).approved
        assert client.keys.key_id == second.key_id + 3


def test_a_key_the_server_dropped_is_replaced_and_the_request_sent_again(secured, tmp_path):
    """Disabled and enabled again, a terminal has no working key at the
    server: the next request is refused UNAUTHENTICATED, the client signs on
    and sends the same bytes (same serial) once more."""
    process, secrets = secured
    root = AdminClient(process.channel(), "root")
    with open_client(process.address, tmp_path, terminal_id=103, station_id=12, secret=secrets[103]) as client:
        assert client.pay(100, card_id=DEMO_COMPANY_CARD, use_fleet=True).approved
        key_id = client.keys.key_id
        root.DisableTerminal(terminal_id=103, reason="moved to another lane")
        root.EnableTerminal(terminal_id=103)
        result = client.pay(200, card_id=DEMO_COMPANY_CARD, use_fleet=True)
        assert result.approved and client.keys.key_id == key_id + 1
        assert client.query(result.serial).answer.amount_minor == 200


def test_an_sm4_terminal_signs_on_and_pays_through_the_sdk(tmp_path):
    """A terminal registered with the SM4 suite (CMAC-SM4 MACs, SM4-GCM
    wrapped keys) pays through the SDK set up with algorithm="sm4-cmac"; the
    same terminal set up with the AES suite is refused at sign-on."""
    from core.admin.keys import KeyAlgorithm

    data_dir, master_key_file = str(tmp_path / "data"), str(tmp_path / "master.key")
    admin = seed_directory(data_dir, master_key_file, users={"root": (1, 1)})
    _, secret = admin.register_terminal(cli_actor(), 301, 12, key_algorithm=KeyAlgorithm.SM4_CMAC)
    admin.store.close()
    process = ServerProcess(data_dir, "--terminal-auth", "--master-key-file", master_key_file).start()
    try:
        with open_client(process.address, tmp_path / "sm4", terminal_id=301, station_id=12, secret=secret,
                         algorithm="sm4-cmac") as client:
            result = client.pay(1_000, card_id=DEMO_COMPANY_CARD, use_fleet=True)
            assert result.approved and len(client.keys.metadata("/x", 1, b"")[3][1]) == 32, "a 16-byte CMAC"
        with open_client(process.address, tmp_path / "aes", terminal_id=301, station_id=12, secret=secret,
                         serial_first=10**6) as wrong_suite:
            with pytest.raises(Exception) as refused:
                wrong_suite.pay(1_000, card_id=DEMO_COMPANY_CARD, use_fleet=True)
            assert refused.value.status == "UNAUTHENTICATED"
    finally:
        process.stop()
