"""SM4 terminal keys: the primitives against their standards (GB/T 32907
SM4, RFC 8998 SM4-GCM, GB/T 32905 SM3, CMAC as NIST SP 800-38B), the
published known answers (docs/terminal-mac-vectors.json) against the
server's code and against independent implementations, the server's guard
accepting the vectors' requests, and an SM4 terminal registered from the
command line that signs on and pays through a real server."""

import hashlib
import hmac
import json
import os
import subprocess
import sys

import grpc
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core.admin import keys
from core.admin.access import cli_actor
from core.admin.model import KeyAlgorithm, pack, u32_key, unpack
from core.admin.model import Terminal as TerminalRecord
from core.admin.terminal_client import TerminalKeys
from core.errors import Unauthenticated
from core.results import OpKind
from core.store import open_store, rows
from server.terminal_auth import TerminalGuard
from tally.v1 import admin_pb2, common_pb2, payment_pb2
from tests.support import REPO, ServerProcess, Terminal
from tests.test_admin_service import AdminClient, refused, seed_directory

KAT_PATH = os.path.join(REPO, "docs", "terminal-mac-vectors.json")
KAT = json.load(open(KAT_PATH))
SUITES = {suite["key_algorithm"]: suite for suite in KAT["suites"]}
ALGORITHMS = {"TERMINAL_KEY_ALGORITHM_AES_HMAC_SHA256": KeyAlgorithm.AES_HMAC_SHA256,
              "TERMINAL_KEY_ALGORITHM_SM4_CMAC": KeyAlgorithm.SM4_CMAC}
MESSAGES = {"tally.v1.KeySignOnRequest": admin_pb2.KeySignOnRequest, "tally.v1.PayRequest": payment_pb2.PayRequest,
            "tally.v1.QueryRequest": payment_pb2.QueryRequest}
h = bytes.fromhex


# ------------------------------------------------------------ independent implementations


def hkdf(hash_name: str, secret: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with the standard library's HMAC, no salt."""
    size = hashlib.new(hash_name).digest_size
    pseudo_random_key = hmac.new(bytes(size), secret, hash_name).digest()
    output, block = b"", b""
    for counter in range(1, -(-length // size) + 1):
        block = hmac.new(pseudo_random_key, block + info + bytes((counter,)), hash_name).digest()
        output += block
    return output[:length]


def block_cipher(cipher_type, key: bytes):
    encryptor = Cipher(cipher_type(key), modes.ECB()).encryptor()
    return encryptor.update


def cmac_by_the_book(cipher_type, key: bytes, message: bytes) -> bytes:
    """NIST SP 800-38B section 6.2, over any 128-bit block cipher's ECB."""
    encrypt = block_cipher(cipher_type, key)

    def double(block: bytes) -> bytes:
        value = int.from_bytes(block, "big") << 1
        if value >> 128:
            value = (value & (2**128 - 1)) ^ 0x87
        return value.to_bytes(16, "big")

    first_subkey = double(encrypt(bytes(16)))
    second_subkey = double(first_subkey)
    blocks = [message[index:index + 16] for index in range(0, len(message), 16)] or [b""]
    last = blocks[-1]
    if len(last) == 16:
        last = bytes(a ^ b for a, b in zip(last, first_subkey))
    else:
        padded = last + b"\x80" + bytes(15 - len(last))
        last = bytes(a ^ b for a, b in zip(padded, second_subkey))
    state = bytes(16)
    for block in (*blocks[:-1], last):
        state = encrypt(bytes(a ^ b for a, b in zip(state, block)))
    return state


# ------------------------------------------------------------ the primitives


@pytest.mark.parametrize("vector", KAT["standard"]["sm4_block"], ids=lambda vector: f"{vector['iterations']}x")
def test_sm4_meets_gbt_32907(vector):
    encrypt = block_cipher(algorithms.SM4, h(vector["key"]))
    block = h(vector["plaintext"])
    for _ in range(vector["iterations"]):
        block = encrypt(block)
    assert block.hex() == vector["ciphertext"]


def test_sm4_gcm_meets_rfc_8998_and_sm3_meets_gbt_32905():
    vector = KAT["standard"]["sm4_gcm"][0]
    suite = keys.SUITES[KeyAlgorithm.SM4_CMAC]
    sealed = suite.encrypt(h(vector["key"]), h(vector["nonce"]), h(vector["plaintext"]), h(vector["aad"]))
    assert sealed.hex() == vector["ciphertext"] + vector["tag"]
    assert suite.decrypt(h(vector["key"]), h(vector["nonce"]), sealed, h(vector["aad"])) == h(vector["plaintext"])
    sm3 = KAT["standard"]["sm3"][0]
    digest = hashes.Hash(hashes.SM3())
    digest.update(h(sm3["message"]))
    assert digest.finalize().hex() == sm3["digest"]


# RFC 4493 / NIST SP 800-38B, AES-128 examples: they prove the book's CMAC above.
AES_CMAC_KEY = h("2b7e151628aed2a6abf7158809cf4f3c")
AES_CMAC_MESSAGE = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411"
                     "e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
AES_CMAC_EXAMPLES = ((0, "bb1d6929e95937287fa37d129b756746"), (16, "070a16b46b4d4144f79bdd9dd04a287c"),
                     (40, "dfa66747de9ae63030ca32611497c827"), (64, "51f0bebf7e3b9d92fc49741779363cfe"))


def test_cmac_sm4_is_the_cmac_of_nist_sp_800_38b():
    for length, tag in AES_CMAC_EXAMPLES:
        assert cmac_by_the_book(algorithms.AES, AES_CMAC_KEY, AES_CMAC_MESSAGE[:length]).hex() == tag
    key = bytes(range(16))
    for length in (0, 1, 15, 16, 17, 32, 100):
        message = os.urandom(length)
        assert keys.compute_mac(key, "/m", 1, 2, 3, message, KeyAlgorithm.SM4_CMAC) == cmac_by_the_book(
            algorithms.SM4, key, keys.mac_input("/m", 1, 2, 3, message))


# ------------------------------------------------------------ the published vectors


def independent_mac(algorithm: KeyAlgorithm, key: bytes, mac_input: bytes) -> bytes:
    if algorithm == KeyAlgorithm.SM4_CMAC:
        return cmac_by_the_book(algorithms.SM4, key, mac_input)
    return hmac.new(key, mac_input, "sha256").digest()


def check_request(algorithm: KeyAlgorithm, key: bytes, vector: dict):
    body = h(vector["body"])
    MESSAGES[vector["message"]].FromString(body)  # real tally.v1 messages
    fields = (vector["method"], vector["terminal_id"], vector["key_id"], vector["serial"])
    assert keys.mac_input(*fields, body).hex() == vector["mac_input"]
    assert keys.compute_mac(key, *fields, body, algorithm).hex() == vector["mac"]
    assert independent_mac(algorithm, key, h(vector["mac_input"])).hex() == vector["mac"]
    assert keys.mac_matches(key, *fields, body, h(vector["mac"]), algorithm)
    assert not keys.mac_matches(key, *fields, body + b"\0", h(vector["mac"]), algorithm)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_the_published_vectors_match_the_servers_code_and_independent_code(name):
    suite, algorithm = SUITES[name], ALGORITHMS[name]
    secret = h(suite["secret"])
    hash_name, length = ("sm3", 16) if algorithm == KeyAlgorithm.SM4_CMAC else ("sha256", 32)
    assert keys.sign_on_key(secret, algorithm).hex() == suite["sign_on_key"]
    assert hkdf(hash_name, secret, b"tally.v1 sign-on mac", length).hex() == suite["sign_on_key"]
    assert keys.wrap_key(secret, algorithm).hex() == suite["wrap_key"]
    assert hkdf(hash_name, secret, b"tally.v1 working-key wrap", length).hex() == suite["wrap_key"]
    check_request(algorithm, h(suite["sign_on_key"]), suite["sign_on"])
    working_key, wrapped = h(suite["working_key"]), suite["wrapped"]
    assert len(working_key) == keys.working_key_bytes(algorithm)
    assert keys.wrap_working_key(secret, 101, wrapped["key_id"], wrapped["expires_ms"], working_key, algorithm,
                                 nonce=h(wrapped["nonce"])).hex() == wrapped["wrapped_key"]
    assert keys.unwrap_working_key(secret, 101, wrapped["key_id"], wrapped["expires_ms"], h(wrapped["wrapped_key"]),
                                   algorithm) == working_key
    for request in suite["requests"]:
        check_request(algorithm, working_key, request)


def test_the_vector_file_is_what_its_generator_writes():
    from tests.make_terminal_mac_vectors import document

    assert json.loads(json.dumps(document())) == KAT


@pytest.mark.parametrize("name", sorted(SUITES))
def test_the_servers_guard_accepts_the_vectors_requests_and_refuses_a_changed_byte(tmp_path, name):
    suite, algorithm = SUITES[name], ALGORITHMS[name]
    master_key = os.urandom(keys.KEY_BYTES)
    admin = seed_directory(str(tmp_path / "data"), users={})
    admin.master_key = keys.as_master_key(master_key)
    terminal, _ = admin.register_terminal(cli_actor(), 101, 12, key_algorithm=algorithm)
    expires_ms = suite["wrapped"]["expires_ms"]
    # The vectors' working key becomes the terminal's current one, as a sign-on would leave it.
    signed_on = msgspec.structs.replace(terminal, key_id=1, key_expires_ms=expires_ms, key_sealed=keys.seal(
        master_key, keys.Purpose.WORKING_KEY, 101, 1, h(suite["working_key"])))
    with admin.store.env.begin(write=True) as txn:
        txn.put(u32_key(101), pack(signed_on), db=admin.store.admin_terminals)
    guard = TerminalGuard(admin.store, keys.as_master_key(master_key), clock=lambda: expires_ms - 1)
    for request, kind in zip(suite["requests"], (int(OpKind.PAY), None)):
        metadata = ((keys.METADATA_TERMINAL, "101"), (keys.METADATA_KEY_ID, "1"),
                    (keys.METADATA_SERIAL, str(request["serial"])), (keys.METADATA_MAC, request["mac"]))
        parse = MESSAGES[request["message"]].FromString
        body = h(request["body"])
        accepted, caller = guard.check(request["method"], kind, metadata, body, parse)
        assert accepted == parse(body)
        with pytest.raises(Unauthenticated, match="MAC of terminal 101 does not verify"):
            guard.check(request["method"], kind, metadata, body[:-1] + bytes((body[-1] ^ 1,)), parse)
    admin.store.close()


# ------------------------------------------------------------ over a real server


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "core.admin", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def sm4_server(tmp_path_factory):
    """--terminal-auth with a master key file; terminal 201 registered for
    SM4 from the command line."""
    base = tmp_path_factory.mktemp("sm4")
    data_dir, master_key_file = str(base / "data"), str(base / "master.key")
    seed_directory(data_dir, master_key_file, users={"root": (1, 1)}).store.close()
    registered = run_cli("register-terminal", "--data", data_dir, "--master-key-file", master_key_file,
                         "--terminal-id", "201", "--station-id", "12", "--key-algorithm", "sm4")
    assert registered.returncode == 0, registered.stderr
    assert "key suite SM4_CMAC" in registered.stdout
    secret = h(next(line for line in registered.stdout.splitlines() if line.startswith("secret key: "))[12:])
    process = ServerProcess(data_dir, "--terminal-auth", "--master-key-file", master_key_file).start()
    yield process, secret
    process.stop()


def test_an_sm4_terminal_signs_on_and_pays_with_cmac_sm4(sm4_server):
    process, secret = sm4_server
    terminal_keys = TerminalKeys(201, 12, secret, KeyAlgorithm.SM4_CMAC)
    answer = terminal_keys.sign_on(process.channel(), serial=1, operator_id=7)
    assert answer.key_algorithm == admin_pb2.TERMINAL_KEY_ALGORITHM_SM4_CMAC
    assert len(terminal_keys.working_key) == keys.SM4_KEY_BYTES
    terminal = Terminal(grpc.intercept_channel(process.channel(), terminal_keys.interceptor()), station_id=12,
                        terminal_id=201, serial=1)
    paid, request = terminal.pay(1_500)
    assert paid.result == common_pb2.APPROVED
    body = request.SerializeToString(deterministic=True)
    assert len(dict(terminal_keys.metadata("/tally.v1.PaymentService/Pay", 2, body))[keys.METADATA_MAC]) == 32
    assert AdminClient(process.channel(), "root").GetTerminal(terminal_id=201).key_algorithm == (
        admin_pb2.TERMINAL_KEY_ALGORITHM_SM4_CMAC)


def test_a_terminal_configured_for_the_other_suite_cannot_sign_on(sm4_server):
    process, secret = sm4_server
    misconfigured = TerminalKeys(201, 12, secret)  # AES, the default
    assert refused(lambda: misconfigured.sign_on(process.channel(), serial=10, operator_id=7),
                   grpc.StatusCode.UNAUTHENTICATED) == "MAC of terminal 201 does not verify"
    answer = admin_pb2.KeySignOnAnswer(key_id=1, wrapped_key=b"x" * 44, expires_ms=1,
                                       key_algorithm=admin_pb2.TERMINAL_KEY_ALGORITHM_SM4_CMAC)
    with pytest.raises(ValueError, match="registered for key suite SM4_CMAC, configured for AES_HMAC_SHA256"):
        misconfigured.accept(answer)


def test_registering_with_an_unknown_suite_is_refused_naming_the_field(sm4_server):
    process, _ = sm4_server
    root = AdminClient(process.channel(), "root")
    text = refused(lambda: root.RegisterTerminal(terminal_id=202, station_id=12, key_algorithm=9),
                   grpc.StatusCode.INVALID_ARGUMENT)
    assert text == "key_algorithm: must be one of AES_HMAC_SHA256, SM4_CMAC"
    default = root.RegisterTerminal(terminal_id=203, station_id=12)
    assert default.terminal.key_algorithm == admin_pb2.TERMINAL_KEY_ALGORITHM_AES_HMAC_SHA256


def test_bench_e2e_measures_pay_with_sm4_terminals(tmp_path):
    data_dir, report_path = str(tmp_path / "data"), tmp_path / "sm4.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--terminal-auth", "--terminal-auth-algorithm", "sm4", "--skip-echo",
         "--concurrency", "4", "--duration", "2", "--warmup", "0.5", "--data", data_dir, "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["parameters"]["terminal_auth_algorithm"] == "sm4" and "auth_ratio (sm4)" in result.stdout
    assert report["pay_auth"]["requests"] > 0 and report["pay_auth"]["errors"] == 0
    store = open_store(data_dir, 2**30, readonly=True)
    with store.env.begin() as txn:
        suites = {unpack(TerminalRecord, value).key_algorithm for _, value in rows(txn, store.admin_terminals)}
    store.close()
    assert suites == {KeyAlgorithm.SM4_CMAC}
