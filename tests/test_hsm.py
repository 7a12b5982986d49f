"""The master key in an HSM, SoftHSM2 as the real PKCS#11 token: made inside
the token by `python -m core.admin master-key`, never readable out of it,
sealing inside it; a real server started with the --pkcs11-* flags
registers terminals (both key suites), which sign on and pay with valid
MACs; a wrong or missing PIN stops the start with one line saying why;
rotating a key file's master key into the token keeps every key."""

import itertools
import os
import subprocess
import sys

import grpc
import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism

from core.admin import hsm, keys
from core.admin.model import Terminal as TerminalRecord
from core.admin.model import u32_key, unpack
from core.admin.terminal_client import TerminalKeys
from core.store import open_store
from tally.v1 import admin_pb2, common_pb2
from tests.softhsm import USER_PIN, cli_flags, token_flags, with_key_label
from tests.support import REPO, ServerProcess, Terminal
from tests.test_admin_service import AdminClient, refused, seed_directory

LABELS = (f"hsm-test-{index}" for index in itertools.count())


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core.admin", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env)


def made_master_key(label: str | None = None) -> hsm.TokenConfig:
    config = with_key_label(label or next(LABELS))
    made = run_cli("master-key", *cli_flags(config))
    assert made.returncode == 0, made.stderr
    assert f"key {config.key_label!r} in PKCS#11 token" in made.stdout
    return config


def test_the_master_key_is_made_inside_the_token_and_its_value_never_leaves_it():
    config = made_master_key()
    with hsm.open_session(config) as session:
        key = hsm.find_key(session, config, KeyType.AES, "master-key")
        assert key.key_length == 256
        assert key[Attribute.EXTRACTABLE] is False and key[Attribute.SENSITIVE] is True
        assert key[Attribute.NEVER_EXTRACTABLE] is True and key[Attribute.TOKEN] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]
    # Nor can another key of the token wrap it out.
    wrapper = with_key_label(next(LABELS))
    with hsm.open_session(wrapper, write=True) as session:
        wrapping = session.generate_key(KeyType.AES, 256, label=wrapper.key_label, store=False,
                                        template={Attribute.WRAP: True})
        with pytest.raises((pkcs11.exceptions.KeyUnextractable, pkcs11.exceptions.KeyNotWrappable)):
            wrapping.wrap_key(hsm.find_key(session, config, KeyType.AES, "master-key"), mechanism=Mechanism.AES_KEY_WRAP)
    again = run_cli("master-key", *cli_flags(config))
    assert again.returncode == 2
    assert f"already holds a key labelled {config.key_label!r}" in again.stderr


def test_sealing_runs_in_the_token_and_opens_only_with_its_key_and_associated_data():
    config = made_master_key()
    other = made_master_key()
    master, stranger = hsm.Pkcs11MasterKey(config), hsm.Pkcs11MasterKey(other)
    sealed = keys.seal(master, keys.Purpose.TERMINAL_SECRET, 101, 0, b"s" * 32)
    assert len(sealed) == keys.NONCE_BYTES + 32 + keys.TAG_BYTES
    assert keys.unseal(master, keys.Purpose.TERMINAL_SECRET, 101, 0, sealed) == b"s" * 32
    for key, purpose, terminal_id in ((master, keys.Purpose.TERMINAL_SECRET, 102), (master, keys.Purpose.WORKING_KEY, 101),
                                      (stranger, keys.Purpose.TERMINAL_SECRET, 101)):
        with pytest.raises(keys.SealError):
            keys.unseal(key, purpose, terminal_id, 0, sealed)
    altered = bytearray(sealed)
    altered[-1] ^= 1
    with pytest.raises(keys.SealError):
        keys.unseal(master, keys.Purpose.TERMINAL_SECRET, 101, 0, bytes(altered))
    # Two seals of one value differ (a fresh nonce each time).
    assert keys.seal(master, keys.Purpose.TERMINAL_SECRET, 101, 0, b"s" * 32) != sealed


def test_the_pin_comes_from_the_environment_when_no_file_is_given():
    config = with_key_label(next(LABELS))
    flags = ("--pkcs11-module", config.module, "--token-label", config.token_label, "--key-label", config.key_label)
    missing = run_cli("master-key", *flags, env={k: v for k, v in os.environ.items() if k != hsm.PIN_ENVIRONMENT})
    assert missing.returncode == 2 and "give --pkcs11-pin-file FILE or set TALLY_PKCS11_PIN" in missing.stderr
    made = run_cli("master-key", *flags, env={**os.environ, hsm.PIN_ENVIRONMENT: USER_PIN})
    assert made.returncode == 0, made.stderr


@pytest.fixture(scope="module")
def hsm_server(tmp_path_factory):
    """A server whose master key is in the token, with --terminal-auth."""
    config = made_master_key()
    data_dir = str(tmp_path_factory.mktemp("hsm-server") / "data")
    seed_directory(data_dir, users={"root": (1, 1)}).store.close()
    process = ServerProcess(data_dir, "--terminal-auth", *token_flags(config)).start()
    yield process, config
    process.stop()


@pytest.mark.parametrize("algorithm", [admin_pb2.TERMINAL_KEY_ALGORITHM_AES_HMAC_SHA256,
                                       admin_pb2.TERMINAL_KEY_ALGORITHM_SM4_CMAC])
def test_a_server_with_the_key_in_the_token_registers_a_terminal_that_signs_on_and_pays(hsm_server, algorithm):
    process, config = hsm_server
    assert f"master key: key {config.key_label!r} in PKCS#11 token {config.token_label!r}" in process.log
    root = AdminClient(process.channel(), "root")
    terminal_id = 300 + algorithm
    registered = root.RegisterTerminal(terminal_id=terminal_id, station_id=12, key_algorithm=algorithm)
    assert registered.terminal.key_algorithm == algorithm
    terminal_keys = TerminalKeys(terminal_id, 12, registered.secret_key, keys.KeyAlgorithm(algorithm))
    signed_on = terminal_keys.sign_on(process.channel(), serial=1, operator_id=7)
    assert signed_on.key_algorithm == algorithm and signed_on.key_id == 1
    assert len(terminal_keys.working_key) == keys.working_key_bytes(algorithm)
    terminal = Terminal(grpc.intercept_channel(process.channel(), terminal_keys.interceptor()), station_id=12,
                        terminal_id=terminal_id, serial=1)
    answer, _ = terminal.pay(1_000)
    assert answer.result == common_pb2.APPROVED
    # A request MACed under another key is refused: the token's key check is not a formality.
    stranger = TerminalKeys(terminal_id, 12, os.urandom(32), keys.KeyAlgorithm(algorithm))
    stranger.working_key, stranger.key_id = os.urandom(keys.working_key_bytes(algorithm)), terminal_keys.key_id
    forged = Terminal(grpc.intercept_channel(process.channel(), stranger.interceptor()), station_id=12,
                      terminal_id=terminal_id, serial=50)
    assert refused(lambda: forged.pay(1_000), grpc.StatusCode.UNAUTHENTICATED) == f"MAC of terminal {terminal_id} does not verify"


def start_fails(tmp_path, *flags, env=None) -> list[str]:
    """The stderr lines of a server start that must fail."""
    started = subprocess.run([sys.executable, "-m", "server", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                              "--terminal-auth", *flags], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert started.returncode != 0
    return [line for line in started.stderr.splitlines() if line.strip()]


def test_a_wrong_or_missing_pin_is_refused_at_start_with_one_line(tmp_path):
    config = made_master_key()
    wrong_pin_file = str(tmp_path / "wrong-pin")
    descriptor = os.open(wrong_pin_file, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write("not-the-pin\n")
    flags = token_flags(config)
    wrong = start_fails(tmp_path, *flags[:-1], wrong_pin_file)
    assert wrong[-1] == f"python -m server: PKCS#11 token {config.token_label!r}: the PIN is refused"
    assert not any("Traceback" in line for line in wrong)
    no_pin = start_fails(tmp_path, *flags[:-2], env={k: v for k, v in os.environ.items() if k != hsm.PIN_ENVIRONMENT})
    assert no_pin[-1] == "python -m server: the token's PIN: give --pkcs11-pin-file FILE or set TALLY_PKCS11_PIN"
    no_key = start_fails(tmp_path, *flags[:5], "no-such-key", *flags[6:])
    assert no_key[-1].startswith(f"python -m server: PKCS#11 token {config.token_label!r} holds no AES key labelled "
                                 f"'no-such-key'")
    both = start_fails(tmp_path, *flags, "--master-key-file", str(tmp_path / "master.key"))
    assert both[-1] == "python -m server: --master-key-file or --pkcs11-module: one master key, not both"


def test_rotating_from_a_key_file_into_the_token_keeps_terminals_and_customers(tmp_path):
    data_dir, master_key_file = str(tmp_path / "data"), str(tmp_path / "master.key")
    seed_directory(data_dir, master_key_file, users={"root": (1, 1)}).store.close()
    process = ServerProcess(data_dir, "--terminal-auth", "--master-key-file", master_key_file).start()
    root = AdminClient(process.channel(), "root")
    secrets = {terminal_id: root.RegisterTerminal(terminal_id=terminal_id, station_id=12).secret_key
               for terminal_id in (401, 402)}
    signed_on = TerminalKeys(401, 12, secrets[401])
    signed_on.sign_on(process.channel(), serial=1, operator_id=7)
    customer_id = root.CreateCustomer(org_id=12, profile=admin_pb2.CustomerProfile(name="Sun Li")).customer_id
    process.stop()
    config = made_master_key()
    rotated = run_cli("rotate-master-key", "--data", data_dir, "--master-key-file", master_key_file,
                      *cli_flags(with_key_label("unused")), "--new-key-label", config.key_label)
    assert rotated.returncode == 0, rotated.stderr
    assert "2 terminal secrets, 1 working keys, 0 partner secrets, 1 customers' data keys" in rotated.stdout
    process = ServerProcess(data_dir, "--terminal-auth", *token_flags(config)).start()
    try:
        # The working key of before the rotation still serves: it was sealed again, not replaced.
        terminal = Terminal(grpc.intercept_channel(process.channel(), signed_on.interceptor()), station_id=12,
                            terminal_id=401, serial=1)
        assert terminal.pay(700)[0].result == common_pb2.APPROVED
        TerminalKeys(402, 12, secrets[402]).sign_on(process.channel(), serial=1, operator_id=7)
        assert AdminClient(process.channel(), "root").GetCustomer(customer_id=customer_id).profile.name == "Sun Li"
    finally:
        process.stop()
    # The old key file opens nothing in the store any more.
    store = open_store(data_dir, 2**30, readonly=True)
    with store.env.begin() as txn:
        record = unpack(TerminalRecord, txn.get(u32_key(402), db=store.admin_terminals))
    store.close()
    with pytest.raises(keys.SealError):
        keys.unseal(keys.SoftwareMasterKey.from_file(master_key_file), keys.Purpose.TERMINAL_SECRET, 402, 0,
                    record.secret_sealed)
