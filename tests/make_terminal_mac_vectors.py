"""Writes docs/terminal-mac-vectors.json: known answers of both terminal key
suites (core/admin/keys.py), for POS vendors and for tests/test_sm4.py.

    .venv/bin/python -m tests.make_terminal_mac_vectors

The inputs are fixed (secrets, working keys and nonces are counting bytes,
the requests real tally.v1 messages serialized deterministically), so a
second run writes the same file; tests/test_sm4.py checks the file against
the server's code and against independent implementations of HKDF, HMAC
and CMAC. The standard vectors of the primitives are copied from their
standards, not computed here.
"""

import json
import os

from core.admin import keys
from tally.v1 import admin_pb2, common_pb2, payment_pb2

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "terminal-mac-vectors.json")
TERMINAL_ID, STATION_ID = 101, 12
EXPIRES_MS = 1_767_312_000_000

STANDARD = {
    "sm4_block": [
        {"source": "GB/T 32907-2016, appendix A, example 1: one encryption",
         "key": "0123456789abcdeffedcba9876543210", "plaintext": "0123456789abcdeffedcba9876543210",
         "ciphertext": "681edf34d206965e86b3e94f536e4246", "iterations": 1},
        {"source": "GB/T 32907-2016, appendix A, example 2: the plaintext encrypted 1,000,000 times under the key",
         "key": "0123456789abcdeffedcba9876543210", "plaintext": "0123456789abcdeffedcba9876543210",
         "ciphertext": "595298c7c6fd271f0402f804c33d3f66", "iterations": 1_000_000},
    ],
    "sm4_gcm": [
        {"source": "RFC 8998, appendix A.1 (SM4-GCM)",
         "key": "0123456789abcdeffedcba9876543210", "nonce": "00001234567800000000abcd",
         "aad": "feedfacedeadbeeffeedfacedeadbeefabaddad2",
         "plaintext": "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbccccccccccccccccddddddddddddddddeeeeeeeeeeeeeeeeffffffffffffffff"
                      "eeeeeeeeeeeeeeeeaaaaaaaaaaaaaaaa",
         "ciphertext": "17f399f08c67d5ee19d0dc9969c4bb7d5fd46fd3756489069157b282bb200735d82710ca5c22f0ccfa7cbf93d496ac15"
                       "a56834cbcf98c397b4024a2691233b8d",
         "tag": "83de3541e4c2b58177e065a9bf7b62ec"},
    ],
    "sm3": [
        {"source": "GB/T 32905-2016, appendix A, example 1", "message": "616263",
         "digest": "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"},
    ],
}


def counting(length: int, start: int) -> bytes:
    return bytes((start + index) % 256 for index in range(length))


def request_vector(key: bytes, algorithm, method: str, key_id: int, serial: int, message) -> dict:
    body = message.SerializeToString(deterministic=True)
    return {
        "method": method, "terminal_id": TERMINAL_ID, "key_id": key_id, "serial": serial,
        "message": type(message).DESCRIPTOR.full_name, "body": body.hex(),
        "mac_input": keys.mac_input(method, TERMINAL_ID, key_id, serial, body).hex(),
        "mac": keys.compute_mac(key, method, TERMINAL_ID, key_id, serial, body, algorithm).hex(),
    }


def suite_vector(algorithm, secret_start: int, working_start: int) -> dict:
    secret = counting(keys.KEY_BYTES, secret_start)
    working_key = counting(keys.working_key_bytes(algorithm), working_start)
    nonce = counting(keys.NONCE_BYTES, 0xA0)
    context = common_pb2.TerminalContext(station_id=STATION_ID, terminal_id=TERMINAL_ID, serial=1001, operator_id=7)
    sign_on = admin_pb2.KeySignOnRequest(terminal=context)
    pay = payment_pb2.PayRequest(terminal=common_pb2.TerminalContext(station_id=STATION_ID, terminal_id=TERMINAL_ID,
                                                                     serial=1002, operator_id=7),
                                 amount_minor=25_000, plan=payment_pb2.PaymentPlan(card_id=6200000000000001,
                                                                                  use_fleet=True))
    query = payment_pb2.QueryRequest(terminal_id=TERMINAL_ID, serial=1002)
    return {
        "key_algorithm": f"TERMINAL_KEY_ALGORITHM_{algorithm.name}",
        "secret": secret.hex(),
        "sign_on_key": keys.sign_on_key(secret, algorithm).hex(),
        "wrap_key": keys.wrap_key(secret, algorithm).hex(),
        "sign_on": request_vector(keys.sign_on_key(secret, algorithm), algorithm, "/tally.v1.TerminalKeyService/SignOn",
                                  keys.SIGN_ON_KEY_ID, 1001, sign_on),
        "working_key": working_key.hex(),
        "wrapped": {"key_id": 1, "expires_ms": EXPIRES_MS, "nonce": nonce.hex(),
                    "aad": (TERMINAL_ID.to_bytes(4, "big") + (1).to_bytes(8, "big") + EXPIRES_MS.to_bytes(8, "big")).hex(),
                    "wrapped_key": keys.wrap_working_key(secret, TERMINAL_ID, 1, EXPIRES_MS, working_key, algorithm,
                                                         nonce=nonce).hex()},
        "requests": [
            request_vector(working_key, algorithm, "/tally.v1.PaymentService/Pay", 1, 1002, pay),
            request_vector(working_key, algorithm, "/tally.v1.PaymentService/Query", 1, 0, query),
        ],
    }


def document() -> dict:
    return {
        "format": "tally.v1 terminal key known answers",
        "about": "Known answers of the two terminal key suites of core/admin/keys.py and admin.proto's "
                 "TerminalKeyAlgorithm, all bytes in lowercase hex. For each suite: the secret key given at "
                 "registration; the keys HKDF derives from it (no salt; info 'tally.v1 sign-on mac' and 'tally.v1 "
                 "working-key wrap'; SHA-256 and 32 bytes, or SM3 and 16 bytes); a SignOn MACed with the sign-on key; "
                 "the working key as the sign-on answer wraps it (nonce || AEAD ciphertext || 16-byte tag; AES-256-GCM "
                 "or SM4-GCM under the wrap key, aad terminal_id u32 BE, key_id u64 BE, expires_ms u64 BE); requests "
                 "MACed with the working key (HMAC-SHA256, or CMAC-SM4 per NIST SP 800-38B). mac_input is what the MAC "
                 "covers: 'tally.v1 terminal mac' 0x00 method 0x00 terminal_id u32 BE, key_id u64 BE, serial u64 BE, "
                 "then the request's bytes exactly as sent. 'standard' holds the published vectors of SM4, SM4-GCM "
                 "and SM3 that prove the primitives. Made by make_terminal_mac.py beside this file.",
        "standard": STANDARD,
        "suites": [suite_vector(keys.KeyAlgorithm.AES_HMAC_SHA256, 0x00, 0x40),
                   suite_vector(keys.KeyAlgorithm.SM4_CMAC, 0x20, 0x60)],
    }


if __name__ == "__main__":
    with open(PATH, "w") as file:
        json.dump(document(), file, indent=2)
        file.write("\n")
    print(f"written: {PATH}")
