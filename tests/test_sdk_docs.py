"""docs/integrators.md works as written: every Python example runs against
a real server (a plain one, and one with --terminal-auth for the MAC
example) and prints what the guide says; its ISO 8583 table is the SDK's."""

import os
import re
import subprocess
import sys

import pytest

from tally_client import iso8583
from tally_client.codes import ResultCode
from tests.support import REPO, ServerProcess
from tests.test_sdk_client import secured_server

GUIDE = os.path.join(REPO, "docs", "integrators.md")
# What each example prints (lines that must appear), in the guide's order.
EXPECTED = [
    ["ANSWERED APPROVED 25000 CNY", "stored: True"],
    ["False LIMIT_PER_TRANSACTION_EXCEEDED", "INVALID_ARGUMENT INVALID_FIELD amount_minor",
     "  amount_minor - must be within 1 .. 1000000000000, got 0"],
    ["True False", "pending: [(1, '/tally.v1.PaymentService/Pay')]", "reversed serial 1 -> approved"],
    ["True key 1", "rotated to key 2"],
    ["True"],
    ["10 approved"],
    ["150 answers, 150 approved, window 2048"],
    ["00 41 68"],
]


def guide() -> str:
    with open(GUIDE) as file:
        return file.read()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    # Channel latency: the reversal example's sale must outlive its 50 ms.
    plain = ServerProcess(str(tmp_path_factory.mktemp("docs") / "data"), "--channel-latency-ms", "500", "500").start()
    secured, secrets = secured_server(tmp_path_factory.mktemp("docs-auth"))
    secured.start()
    yield plain, secured, secrets
    plain.stop()
    secured.stop()


def test_every_python_example_runs_and_prints_what_the_guide_says(servers, tmp_path):
    plain, secured, secrets = servers
    examples = re.findall(r"```python\n(.*?)```", guide(), re.S)
    assert len(examples) == len(EXPECTED)
    for index, (code, expected) in enumerate(zip(examples, EXPECTED)):
        environment = dict(os.environ, TALLY_ADDRESS=plain.address, TALLY_STATE_DIR=str(tmp_path / f"state{index}"),
                           TALLY_SECURE_ADDRESS=secured.address, TALLY_TERMINAL_SECRET=secrets[101].hex())
        run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, f"example {index + 1}:\n{code}\n{run.stderr}"
        lines = run.stdout.splitlines()
        for line in expected:
            assert any(printed.startswith(line) for printed in lines), f"example {index + 1}: {line!r} not in {lines}"


def test_the_guides_iso8583_table_is_the_sdks():
    rows = re.findall(r"^\| (\w+) \| (\d+) \| (\d\d) \| ([^|]+) \|$", guide(), re.M)
    table = {name: (int(number), code, meaning.strip()) for name, number, code, meaning in rows}
    assert table == {code.name: (code.value, field_39, iso8583.MEANING[field_39])
                     for code, field_39 in iso8583.RESPONSE_CODE.items()}
    assert set(table) == {code.name for code in ResultCode}


def test_the_guide_names_the_files_it_points_to():
    text = guide()
    for path in ("docs/terminal-mac-vectors.json", "proto/baseline/tally-v1.binpb", "buf.yaml", "clients/python",
                 "tests/test_proto_contract.py"):
        assert path in text and os.path.exists(os.path.join(REPO, path)), path
    assert re.search(r"^proto-baseline:", open(os.path.join(REPO, "Makefile")).read(), re.M)
