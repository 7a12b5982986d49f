"""The SDK against the terminal MAC's published known answers
(docs/terminal-mac-vectors.json, both key suites), byte for byte: the keys
it derives, the working key it unwraps, the MAC input and the MAC of each
request. tests/test_sm4.py checks the server's core/admin/keys.py and
independent implementations against the same file."""

import json
import os

import pytest

from tests.support import REPO
from tally_client import mac as sdk_mac

VECTORS = os.path.join(REPO, "docs", "terminal-mac-vectors.json")
SUITE_NAMES = {"TERMINAL_KEY_ALGORITHM_AES_HMAC_SHA256": "aes-hmac-sha256", "TERMINAL_KEY_ALGORITHM_SM4_CMAC": "sm4-cmac"}


def suites() -> list:
    with open(VECTORS) as file:
        return json.load(file)["suites"]


@pytest.mark.parametrize("suite", suites(), ids=lambda suite: SUITE_NAMES[suite["key_algorithm"]])
def test_the_sdk_matches_every_vector_of_both_suites(suite):
    algorithm = sdk_mac.algorithm(SUITE_NAMES[suite["key_algorithm"]])
    secret = bytes.fromhex(suite["secret"])
    sign_on_key = algorithm.sign_on_key(secret)
    assert sign_on_key.hex() == suite["sign_on_key"]
    wrapped = suite["wrapped"]
    working_key = algorithm.unwrap_working_key(secret, suite["sign_on"]["terminal_id"], wrapped["key_id"],
                                               wrapped["expires_ms"], bytes.fromhex(wrapped["wrapped_key"]))
    assert working_key.hex() == suite["working_key"]
    for vector, key in [(suite["sign_on"], sign_on_key)] + [(request, working_key) for request in suite["requests"]]:
        header = sdk_mac.mac_header(vector["method"], vector["terminal_id"], vector["key_id"], vector["serial"])
        body = bytes.fromhex(vector["body"])
        assert (header + body).hex() == vector["mac_input"]
        assert algorithm.mac(key, header, body).hex() == vector["mac"], vector["method"]


def test_a_wrapped_key_with_one_byte_changed_does_not_open():
    for suite in suites():
        algorithm = sdk_mac.algorithm(SUITE_NAMES[suite["key_algorithm"]])
        wrapped = bytearray.fromhex(suite["wrapped"]["wrapped_key"])
        wrapped[-1] ^= 1
        with pytest.raises(sdk_mac.WorkingKeyError):
            algorithm.unwrap_working_key(bytes.fromhex(suite["secret"]), suite["sign_on"]["terminal_id"],
                                         suite["wrapped"]["key_id"], suite["wrapped"]["expires_ms"], bytes(wrapped))
