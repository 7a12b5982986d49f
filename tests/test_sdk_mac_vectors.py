"""The terminal MAC's published known-answer vectors
(docs/terminal-mac-vectors.json), for vendors writing the MAC in other
languages: the SDK and the server's core/admin/keys.py must both match
them, byte for byte.

The vectors are made here with the standard library's hmac and hashlib
(a third implementation, sharing no code with either side) and
`cryptography`'s AES-GCM with fixed nonces; the test checks that the
committed file is exactly what this makes, so a vector cannot drift.
    .venv/bin/python -m tests.test_sdk_mac_vectors --write    # after a deliberate change
"""

import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format

from core.admin import keys
from tally.v1 import admin_pb2, payment_pb2
from tests.support import REPO
from tally_client import mac as sdk_mac
from tally_client.terminal_keys import TerminalKeys

VECTORS = os.path.join(REPO, "docs", "terminal-mac-vectors.json")
SECRET = bytes(range(32))
WORKING_KEY = bytes(range(0x20, 0x40))
WRAP_NONCE = bytes(range(0xA0, 0xAC))
TERMINAL_ID, STATION_ID, OPERATOR_ID = 101, 12, 7
KEY_ID, EXPIRES_MS = 1, 1_767_225_600_000


def hkdf_sha256(secret: bytes, info: bytes) -> bytes:
    """RFC 5869 with no salt (a zero-filled one), one 32-byte block."""
    pseudo_random_key = hmac.new(bytes(32), secret, hashlib.sha256).digest()
    return hmac.new(pseudo_random_key, info + b"\x01", hashlib.sha256).digest()


def mac_input(method: str, terminal_id: int, key_id: int, serial: int, body: bytes) -> bytes:
    return b"tally.v1 terminal mac\0" + method.encode() + b"\0" + struct.pack(">IQQ", terminal_id, key_id,
                                                      serial) + body


def context(serial: int) -> dict:
    return {"station_id": STATION_ID, "terminal_id": TERMINAL_ID, "serial": serial, "operator_id": OPERATOR_ID}


def requests() -> list[tuple]:
    """(name, method, terminal id, key id, serial, key, request type, request as JSON)"""
    sign_on_key = hkdf_sha256(SECRET, b"tally.v1 sign-on mac")
    pay = {"terminal": context(2), "amount_minor": 25_000, "plan": {"card_id": 6200000000000001, "use_fleet": True}}
    basket = {"terminal": context(3), "amount_minor": 35_000, "coupon_codes": ["SPRING-10"],
              "basket": [{"goods_code": "92", "name": "92号汽油", "category": "fuel", "quantity_milli": 50_000,
                          "unit_price_minor": 700, "amount_minor": 35_000}],
              "plan": {"card_id": 6200000000000002, "use_personal": True, "use_points": True, "channel": "ALIPAY"}}
    return [
        ("sign-on", "/tally.v1.TerminalKeyService/SignOn", TERMINAL_ID, 0, 1, sign_on_key,
         admin_pb2.KeySignOnRequest, {"terminal": context(1)}),
        ("pay", "/tally.v1.PaymentService/Pay", TERMINAL_ID, KEY_ID, 2, WORKING_KEY, payment_pb2.PayRequest, pay),
        ("pay with basket, coupon and UTF-8 name", "/tally.v1.PaymentService/Pay", TERMINAL_ID, KEY_ID, 3, WORKING_KEY,
         payment_pb2.PayRequest, basket),
        ("query (no serial of its own: 0)", "/tally.v1.PaymentService/Query", TERMINAL_ID, KEY_ID, 0, WORKING_KEY,
         payment_pb2.QueryRequest, {"terminal_id": TERMINAL_ID, "serial": 2}),
        ("largest ids, empty body", "/tally.v1.PaymentService/Query", 0xFFFEFFFF, 2**64 - 1, 2**64 - 1, WORKING_KEY,
         payment_pb2.QueryRequest, {}),
    ]


def make_vectors() -> dict:
    wrapped = WRAP_NONCE + AESGCM(hkdf_sha256(SECRET, b"tally.v1 working-key wrap")).encrypt(
        WRAP_NONCE, WORKING_KEY, struct.pack(">IQQ", TERMINAL_ID, KEY_ID, EXPIRES_MS))
    macs = []
    for name, method, terminal_id, key_id, serial, key, request_type, fields in requests():
        request = json_format.ParseDict(fields, request_type())
        body = request.SerializeToString(deterministic=True)
        data = mac_input(method, terminal_id, key_id, serial, body)
        macs.append({
            "name": name, "method": method, "terminal_id": terminal_id, "key_id": key_id, "serial": serial,
            "key_hex": key.hex(), "request_type": request.DESCRIPTOR.full_name,
            "request": fields,
            "body_hex": body.hex(), "mac_input_hex": data.hex(),
            "mac_hex": hmac.new(key, data, hashlib.sha256).hexdigest(),
        })
    return {
        "about": "Known-answer vectors of Tally's terminal MAC (algorithm aes-hmac-sha256). See docs/integrators.md; "
                 "the bytes covered are mac_input: 'tally.v1 terminal mac' 0x00, method 0x00, terminal id (u32 BE), "
                 "key id (u64 BE), serial (u64 BE), the request's exact wire bytes. MAC = HMAC-SHA256(key, mac_input), "
                 "sent as 64 lowercase hex digits in x-tally-mac.",
        "algorithm": "aes-hmac-sha256",
        "secret_hex": SECRET.hex(),
        "sign_on_key": {"info": "tally.v1 sign-on mac", "hkdf": "HKDF-SHA256, no salt, 32 bytes",
                        "key_hex": hkdf_sha256(SECRET, b"tally.v1 sign-on mac").hex()},
        "wrap_key": {"info": "tally.v1 working-key wrap", "hkdf": "HKDF-SHA256, no salt, 32 bytes",
                     "key_hex": hkdf_sha256(SECRET, b"tally.v1 working-key wrap").hex()},
        "working_key": {
            "about": "KeySignOnAnswer.wrapped_key = 12-byte nonce || AES-256-GCM(wrap key, working key, "
                     "aad = terminal id u32 BE || key id u64 BE || expires_ms u64 BE), ciphertext then 16-byte tag",
            "terminal_id": TERMINAL_ID, "key_id": KEY_ID, "expires_ms": EXPIRES_MS,
            "wrapped_key_hex": wrapped.hex(), "working_key_hex": WORKING_KEY.hex(),
        },
        "macs": macs,
    }


def load() -> dict:
    with open(VECTORS) as file:
        return json.load(file)


def test_the_published_vectors_are_what_the_reference_makes():
    assert load() == make_vectors(), "docs/terminal-mac-vectors.json changed: regenerate only on purpose (--write)"


def test_the_server_matches_every_vector():
    vectors = load()
    secret = bytes.fromhex(vectors["secret_hex"])
    assert keys.sign_on_key(secret).hex() == vectors["sign_on_key"]["key_hex"]
    assert keys.wrap_key(secret).hex() == vectors["wrap_key"]["key_hex"]
    wrapped = vectors["working_key"]
    assert keys.unwrap_working_key(secret, wrapped["terminal_id"], wrapped["key_id"], wrapped["expires_ms"],
                                   bytes.fromhex(wrapped["wrapped_key_hex"])).hex() == wrapped["working_key_hex"]
    for vector in vectors["macs"]:
        key, body = bytes.fromhex(vector["key_hex"]), bytes.fromhex(vector["body_hex"])
        ids = vector["method"], vector["terminal_id"], vector["key_id"], vector["serial"]
        assert keys.mac_input(*ids, body).hex() == vector["mac_input_hex"], vector["name"]
        assert keys.compute_mac(key, *ids, body).hex() == vector["mac_hex"], vector["name"]
        assert keys.mac_matches(key, *ids, body, bytes.fromhex(vector["mac_hex"])), vector["name"]


def test_the_sdk_matches_every_vector():
    vectors = load()
    secret = bytes.fromhex(vectors["secret_hex"])
    algorithm = sdk_mac.algorithm(vectors["algorithm"])
    assert algorithm.sign_on_key(secret).hex() == vectors["sign_on_key"]["key_hex"]
    wrapped = vectors["working_key"]
    terminal = TerminalKeys(wrapped["terminal_id"], STATION_ID, secret)
    terminal.accept(admin_pb2.KeySignOnAnswer(key_id=wrapped["key_id"], expires_ms=wrapped["expires_ms"],
                                              wrapped_key=bytes.fromhex(wrapped["wrapped_key_hex"])))
    for vector in vectors["macs"]:
        key, body = bytes.fromhex(vector["key_hex"]), bytes.fromhex(vector["body_hex"])
        ids = vector["method"], vector["terminal_id"], vector["key_id"], vector["serial"]
        assert sdk_mac.mac_input(*ids, body).hex() == vector["mac_input_hex"], vector["name"]
        pairs = dict(sdk_mac.metadata(algorithm, key, *ids, body))
        assert pairs == {"x-tally-terminal": str(vector["terminal_id"]), "x-tally-key-id": str(vector["key_id"]),
                         "x-tally-serial": str(vector["serial"]), "x-tally-mac": vector["mac_hex"]}, vector["name"]
        if key.hex() == wrapped["working_key_hex"] and vector["terminal_id"] == terminal.terminal_id:
            # The working key the SDK opened from the wrapped key signs the same.
            assert dict(terminal.metadata(vector["method"], vector["serial"], body))["x-tally-mac"] == vector["mac_hex"]


def test_the_sdk_builds_the_sign_on_request_of_the_vector():
    vector = next(v for v in load()["macs"] if v["name"] == "sign-on")
    terminal = TerminalKeys(TERMINAL_ID, STATION_ID, SECRET)
    body, metadata = terminal.sign_on_request(serial=1, operator_id=OPERATOR_ID)
    assert body.hex() == vector["body_hex"]
    assert dict(metadata)["x-tally-mac"] == vector["mac_hex"]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with open(VECTORS, "w") as out:
        json.dump(make_vectors(), out, indent=2, ensure_ascii=False)
        out.write("\n")
