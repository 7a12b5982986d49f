"""The command-line tools as a user runs them (issue 16, "Command-line tools";
issue 18, one `tally` command): real subprocesses on real directories.

- a directory that holds no Tally store is refused by every tool but the
  server, and left as it was;
- an operating error is one line on stderr and exit 2, never a traceback;
- reconcile exits 0 clean, 1 differences, 2 error;
- `loyalty statement` prints a table, an unknown card is an error;
- --json after the command prints what --json before it prints;
- SetGift refuses a stock, naming AddGiftStock.
"""

import json
import os
import subprocess
import sys

import grpc
import pytest

from core.store import open_store
from tests.conftest import MAP_SIZE_TEST_BYTES
from tests.support import DEMO_COMPANY_CARD, REPO
from tally.v1 import loyalty_pb2, loyalty_pb2_grpc

TALLY = os.path.join(os.path.dirname(sys.executable), "tally")
CLEAN_ENVIRONMENT = {key: value for key, value in os.environ.items() if not key.startswith("TALLY_")}


def tally(*args, env=None, stdin=None):
    return subprocess.run([TALLY, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(CLEAN_ENVIRONMENT, **(env or {})), input=stdin)


def python_m(*args, env=None):
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(CLEAN_ENVIRONMENT, **(env or {})))


def one_line_error(result, *words):
    """Exit 2 and exactly one line on stderr holding `words`, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def empty_store(path) -> str:
    """A real, empty Tally store (every named database, no data)."""
    open_store(str(path), MAP_SIZE_TEST_BYTES).close()
    return str(path)


TOOLS_ON_A_DIRECTORY = [
    ("audit",),
    ("loyalty", "statement", DEMO_COMPANY_CARD),
    ("loyalty", "expire"),
    ("settlement", "queue", "list"),
    ("settlement", "reconcile", "--day", "2026-11-20"),
    ("settlement", "clear", "--day", "2026-11-20"),
    ("admin", "verify-audit"),
]


@pytest.mark.parametrize("command", TOOLS_ON_A_DIRECTORY, ids=lambda command: " ".join(map(str, command)))
def test_every_tool_refuses_a_directory_that_holds_no_store_and_leaves_it_alone(command, tmp_path):
    empty, missing = tmp_path / "empty", tmp_path / "typo"
    empty.mkdir()
    one_line_error(tally(*command, "--data", empty), "--data", str(empty), "holds no Tally store")
    one_line_error(tally(*command, env={"TALLY_DATA": str(empty)}), "holds no Tally store")
    one_line_error(tally(*command, "--data", missing), str(missing), "no such directory")
    assert os.listdir(empty) == [] and not missing.exists()


def test_the_python_m_forms_refuse_it_too(tmp_path):
    one_line_error(python_m("core.audit", tmp_path), "holds no Tally store")
    one_line_error(python_m("core.loyalty", "--data", tmp_path, "tiers"), "holds no Tally store")
    one_line_error(python_m("core.settlement", "queue", "list", "--data", tmp_path), "holds no Tally store")
    one_line_error(python_m("core.admin", "audit", "--data", tmp_path), "holds no Tally store")
    assert os.listdir(tmp_path) == []


def test_another_programs_lmdb_is_not_a_store(tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "other"), map_size=2**20)
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.close()
    one_line_error(tally("audit", "--data", tmp_path / "other"), "not a Tally store")


def test_the_issues_tracebacks_are_one_line_each(tmp_path):
    not_lmdb = tmp_path / "not-lmdb"
    not_lmdb.mkdir()
    (not_lmdb / "data.mdb").write_bytes(b"this is not an LMDB file" * 300)
    a_file = tmp_path / "a-file"
    a_file.write_text("hello")
    store = empty_store(tmp_path / "store")
    one_line_error(python_m("core.audit", tmp_path / "missing"), "no such directory")
    one_line_error(python_m("core.settlement", "import", "--data", store, "--channel", "alipay", tmp_path / "bill.csv"),
                   str(tmp_path / "bill.csv"), "No such file or directory", "nothing imported")
    one_line_error(python_m("server", "--data", not_lmdb), "not an LMDB file")
    one_line_error(python_m("server", "--data", a_file), "is a file, not a data directory")
    one_line_error(python_m("core.audit", not_lmdb), "not an LMDB file")
    one_line_error(tally("serve", "--data", a_file), "is a file")


def test_the_server_on_a_read_only_directory_is_one_line(tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    if os.geteuid() != 0:
        read_only.chmod(0o555)
        command = [sys.executable, "-m", "server", "--data", str(read_only)]
    else:
        # root writes through permissions: mount the directory read-only in
        # a mount namespace of the server's own.
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"root, and no mount namespace to make a read-only directory: {probe.stderr.decode().strip()}")
        command = ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{read_only}' '{read_only}' && "
                   f"exec '{sys.executable}' -m server --data '{read_only}'"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, env=CLEAN_ENVIRONMENT)
    one_line_error(result, str(read_only), "not writable")


@pytest.fixture(scope="module")
def settlement_days(tmp_path_factory):
    """Two generated days with every channel's statements, faults injected on
    the second; every statement imported but Alipay's of the first day."""
    root = tmp_path_factory.mktemp("days")
    data, statements = root / "data", root / "statements"
    made = python_m("core.settlement", "generate", "--data", data, "--day", "2026-11-21", "--days", "2", "--sales", "30",
                    "--faults", "--statements", statements)
    assert made.returncode == 0, made.stderr
    for name in sorted(os.listdir(statements)):
        if name != "alipay-2026-11-20.csv":
            channel = name.rsplit("-", 3)[0]
            imported = tally("settlement", "import", "--data", data, "--channel", channel, statements / name)
            assert imported.returncode == 0, imported.stderr
    return data


def test_reconcile_exits_0_when_clean(settlement_days):
    clean = tally("settlement", "reconcile", "--data", settlement_days, "--day", "2026-11-20", "--channel", "wechat_pay")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "differences: none" in clean.stdout


def test_reconcile_counts_a_day_without_sales_or_statements_as_clean(settlement_days):
    quiet = tally("settlement", "reconcile", "--data", settlement_days, "--day", "2026-11-25")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert quiet.stdout.count("no sales and no statement: nothing to reconcile") == 3


def test_reconcile_exits_1_on_differences(settlement_days):
    found = tally("--json", "settlement", "reconcile", "--data", settlement_days, "--day", "2026-11-21")
    assert found.returncode == 1, found.stdout + found.stderr
    outcomes = json.loads(found.stdout)
    assert {outcome["status"] for outcome in outcomes.values()} == {"differences"}
    assert outcomes["wechat_pay"]["run"]["differences"] >= 1


def test_reconcile_exits_2_when_a_channel_with_sales_has_no_statement(settlement_days):
    missing = tally("settlement", "reconcile", "--data", settlement_days, "--day", "2026-11-20")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "alipay 2026-11-20:" in missing.stderr and "no statement imported" in missing.stderr
    assert "bank_card 2026-11-20:" in missing.stdout  # the others were still reconciled


def test_the_exit_codes_are_documented():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "`reconcile` exits 0 when every channel is clean" in readme
    assert "Exit codes: 0 done (reconcile: every channel clean); 1 reconcile found" in tally("settlement", "--help").stdout


def test_loyalty_statement_is_a_table_and_an_unknown_card_an_error(server):
    printed = tally("loyalty", "statement", DEMO_COMPANY_CARD, "--data", server.data_dir)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == f"card {DEMO_COMPANY_CARD}: 20,000 points"
    assert not any(mark in printed.stdout for mark in ("{", "}", "(0,", "'", "Lot("))
    header = next(line for line in lines if "movement" in line and "balance" in line)
    topup = lines[lines.index(header) + 1].split()
    assert topup[-3:] == ["TOPUP", "+20,000", "20,000"] and len(topup[0]) == 10  # a date, not a day number
    one_line_error(tally("loyalty", "statement", "6200000000000099", "--data", server.data_dir),
                   "card_id", "no card 6200000000000099")


def test_json_after_the_command_is_the_json_before_it_on_every_tool(server, settlement_days, tmp_path):
    data = server.data_dir
    for before, after in [
        (["--json", "audit", "--data", data], ["audit", "--data", data, "--json"]),
        (["--json", "loyalty", "statement", DEMO_COMPANY_CARD, "--data", data],
         ["loyalty", "statement", DEMO_COMPANY_CARD, "--data", data, "--json"]),
        (["--data", data, "--json", "loyalty", "reminders", "--within", "1000", "--as-of", "2026-01-01"],
         ["--data", data, "loyalty", "reminders", "--within", "1000", "--as-of", "2026-01-01", "--json"]),
        (["--json", "settlement", "queue", "list", "--data", settlement_days],
         ["settlement", "queue", "list", "--data", settlement_days, "--json"]),
        (["--json", "admin", "verify-audit", "--data", data], ["admin", "verify-audit", "--data", data, "--json"]),
        (["--json", "serve", "--data", tmp_path, "--print-config"], ["serve", "--data", tmp_path, "--print-config", "--json"]),
    ]:
        first, second = tally(*before), tally(*after)
        assert first.returncode == 0, (before, first.stderr)
        assert first.stdout == second.stdout, (before, after)
        json.loads(first.stdout)
    # The python -m forms take it on either side too.
    assert python_m("core.loyalty", "--json", "--data", data, "statement", DEMO_COMPANY_CARD).stdout == \
        python_m("core.loyalty", "statement", DEMO_COMPANY_CARD, "--json", "--data", data).stdout


def test_every_command_has_help():
    listing = tally("--help")
    assert listing.returncode == 0
    for command in ("serve", "console", "audit", "loyalty", "settlement", "admin", "backup", "migrate", "bench"):
        assert f"  {command} " in listing.stdout, command
        helped = tally(command, "--help")
        if command in ("backup", "migrate") and helped.returncode == 2:
            one_line_error(helped, "not part of this build")  # another part's module, not merged yet
            continue
        assert helped.returncode == 0, (command, helped.stderr)
        assert "usage" in helped.stdout.lower() or "python -m bench" in helped.stdout, command
    nothing = tally("frobnicate")
    one_line_error(nothing, "no command 'frobnicate'")


def test_set_gift_refuses_a_stock_naming_add_gift_stock(server):
    loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(server.channel())
    terms = loyalty_pb2.GiftTerms(gift_id=71, points_price=500, stock=10)
    with pytest.raises(grpc.RpcError) as refused:
        loyalty.SetGift(loyalty_pb2.SetGiftRequest(terms=terms))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "terms.stock" in refused.value.details() and "AddGiftStock" in refused.value.details()
    terms.stock = 0
    assert loyalty.SetGift(loyalty_pb2.SetGiftRequest(terms=terms)).gift.gift_id == 71
    assert loyalty.AddGiftStock(loyalty_pb2.AddGiftStockRequest(gift_id=71, delta=10)).gift.stock == 10
    catalogue = loyalty.ListCatalogue(loyalty_pb2.ListCatalogueRequest())
    assert [gift.stock for gift in catalogue.gifts if gift.gift_id == 71] == [10]
