"""The data format version and `python -m core.migrations DIR`: a new store
is stamped current; the server and the tools refuse an older one with one
line naming the migration, and a newer one; the migration brings a version 1
store (settlement keyed without the domain) to this code's format, once; a
version 2 store made by that code (tests/data/storage-v2) upgrades to the
ledger layout of version 3 with every balance, lot, transaction, journal
entry, stored answer and statement as before, and takes new operations."""

import json
import lzma
import shutil
import struct
import subprocess
import sys
import tarfile

import msgspec
import pytest

from core import lots
from core.audit import audit
from core.ledger import Ledger, load_kernel
from core.loyalty.statement import points_statement
from core.migrations import SETTLEMENT_KEYED_BY_DAY, STEPS
from core.records import Account, JournalEntry, Lot, Op, account_key, decode, parse_account_key
from core.results import AccountKind, OpKind, ResultCode
from core.store import rows
from core.settlement import queue
from core.settlement.model import ResolutionAction
from core.store import (
    DATA_FORMAT_VERSION,
    FORMAT_VERSION_KEY,
    StoreFormatError,
    format_version,
    open_store,
    set_format_version,
)
from core.writes import write_now
from tests.settlement_samples import DATA, DAY, STATEMENT_FILES
from tests.support import REPO

MAP_SIZE_BYTES = 2**28
V1_DAY_KEY = struct.Struct(">BI")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def version_1_store(path: str):
    """A store as the code before data format versions left it: a statement
    imported and reconciled, its settlement keys without the domain, and no
    version in meta."""
    store = open_store(path, MAP_SIZE_BYTES)
    for channel, name in STATEMENT_FILES.items():
        with open(f"{DATA}/{name}", "rb") as file:
            queue.import_statement(store, channel, file.read(), name, "tester")
        queue.reconcile_day(store, channel, DAY)

    def to_version_1(txn, store):
        for name in SETTLEMENT_KEYED_BY_DAY:
            rows = list(txn.cursor(db=store.dbs[name]).iternext())
            txn.drop(store.dbs[name], delete=False)
            for key, value in rows:
                assert key[:4] == b"\0\0\0\0", "the network's (domain 0)"
                txn.put(key[4:], value, db=store.dbs[name])
        txn.delete(FORMAT_VERSION_KEY, db=store.meta)

    write_now(store, to_version_1)
    differences = [d.key for d in queue.differences(store)]
    store.close()
    return differences


def test_a_new_store_is_of_this_code_s_format_and_every_version_has_its_step(tmp_path):
    store = open_store(str(tmp_path / "data"), MAP_SIZE_BYTES)
    assert format_version(store) == DATA_FORMAT_VERSION
    store.close()
    assert sorted(STEPS) == list(range(2, DATA_FORMAT_VERSION + 1))


def test_an_older_store_is_refused_until_migrated_then_reads_as_before(tmp_path):
    path = str(tmp_path / "data")
    before = version_1_store(path)
    assert before, "the sample day's statements leave differences"
    with pytest.raises(StoreFormatError) as refused:
        open_store(path, MAP_SIZE_BYTES)
    assert str(refused.value) == (f"{path} holds data format 1, this code reads {DATA_FORMAT_VERSION}: "
                                  f"run `python -m core.migrations {path}` first")
    server = run("-m", "server", "--data", path, "--listen", "127.0.0.1:0")
    assert server.returncode != 0 and server.stderr.strip().splitlines()[-1] == f"python -m server: {refused.value}"
    tool = run("-m", "core.settlement", "queue", "list", "--data", path)
    assert tool.returncode == 2 and tool.stderr.strip() == f"python -m core.settlement queue: {refused.value}"
    assert run("-m", "core.audit", path).returncode == 2

    assert run("-m", "core.migrations", path, "--check").returncode == 1
    migrated = run("-m", "core.migrations", path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == (f"{path}: data format 1 -> {DATA_FORMAT_VERSION} "
                                       "(settlement keys gain the domain, ledger layout for long histories)")
    again = run("-m", "core.migrations", path)
    assert again.stdout.strip() == f"{path}: data format {DATA_FORMAT_VERSION}, up to date"

    store = open_store(path, MAP_SIZE_BYTES)
    assert [d.key for d in queue.differences(store)] == before, "the same differences under the same ids"
    assert all(queue.load_statement(store, channel, DAY) is not None for channel in STATEMENT_FILES)
    assert {run.domain for run in queue.runs(store)} == {0}
    resolved = queue.resolve(store, before[0], ResolutionAction.ACCEPT, "tester", "after the migration")
    assert resolved.key == before[0]
    store.close()
    assert run("-m", "core.audit", path).returncode == 0


def test_a_newer_store_is_refused_by_the_server_the_tools_and_the_migration(tmp_path):
    path = str(tmp_path / "data")
    store = open_store(path, MAP_SIZE_BYTES)
    write_now(store, set_format_version, DATA_FORMAT_VERSION + 1)
    store.close()
    with pytest.raises(StoreFormatError) as refused:
        open_store(path, MAP_SIZE_BYTES)
    assert "newer than this code's" in str(refused.value)
    assert "newer than this code's" in run("-m", "server", "--data", path, "--listen", "127.0.0.1:0").stderr
    migration = run("-m", "core.migrations", path)
    assert migration.returncode == 2 and "newer than this code's" in migration.stderr


V2_DATA = f"{REPO}/tests/data/storage-v2"


def version_2_store(tmp_path) -> tuple[str, dict]:
    """A copy of the store the version 2 code made (make_store.py beside
    it) and what that code read from it."""
    with tarfile.open(f"{V2_DATA}/store.tar.xz") as archive:
        archive.extractall(tmp_path, filter="data")
    with lzma.open(f"{V2_DATA}/expected.json.xz", "rt") as expected:
        return str(tmp_path / "store"), json.load(expected)


def fields(record) -> list:
    return list(msgspec.structs.astuple(record))


def test_a_version_2_store_upgrades_with_everything_as_it_was(tmp_path):
    path, expected = version_2_store(tmp_path)
    with pytest.raises(StoreFormatError):
        open_store(path, MAP_SIZE_BYTES)
    migrated = run("-m", "core.migrations", path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"{path}: data format 2 -> 3 (ledger layout for long histories)"
    store = open_store(path, MAP_SIZE_BYTES)
    try:
        report = audit(store)
        assert report.ok, report.problems
        assert report.counts["requests"] == len(expected["idem"])
        with store.env.begin() as txn:
            journal = [decode(JournalEntry, value) for _, value in rows(txn, store.journal)]
            accounts = {"{}/{}".format(*parse_account_key(key)): decode(Account, value) for key, value in rows(txn, store.accounts)}
            txns = {str(int.from_bytes(key, "big")): value.hex() for key, value in rows(txn, store.txns)}
            unchanged = {name: [[key.hex(), value.hex()] for key, value in rows(txn, store.dbs[name])] for name in expected["unchanged"]}
            closed = [fields(decode(Lot, value)) for _, value in rows(txn, store.closed_lots)]
            open_lots = [fields(lot) for card in {lot[0] for lot in expected["lots"]["point_lots"]} for lot in lots.open_lots(txn, store, card)]
        assert [fields(entry)[:12] for entry in journal] == expected["journal"]
        newest = {}
        for entry in journal:
            newest[f"{entry.debit_kind}/{entry.debit_owner}"] = newest[f"{entry.credit_kind}/{entry.credit_owner}"] = entry.seq
        assert {key: fields(account)[:9] for key, account in accounts.items()} == expected["accounts"]
        assert {key: account.last_seq for key, account in accounts.items()} == {key: newest.get(key, 0) for key in accounts}
        assert txns == expected["txns"]
        assert unchanged == expected["unchanged"]
        assert sorted(open_lots) == sorted(expected["lots"]["point_lots"])
        assert closed == expected["lots"]["closed_lots"]
        ledger = Ledger(store, load_kernel("reference"))
        for key, (fingerprint, result) in expected["idem"].items():
            terminal_id, serial = map(int, key.split("/"))
            entry = ledger.idem(terminal_id, serial)
            assert [entry.fingerprint.hex(), fields(entry.result)] == [fingerprint, result], key
        for card, statement in expected["statements"].items():
            now = points_statement(store, int(card), now_ms=expected["now_ms"])
            assert [now.balance, now.held, [fields(lot) for lot in now.open_lots], [fields(lot) for lot in now.closed_lots],
                    [fields(line) for line in now.lines]] == [statement[name] for name in ("balance", "held", "open_lots", "closed_lots", "lines")]
    finally:
        store.close()


def test_a_migrated_store_takes_new_operations_alike_on_both_kernels(tmp_path):
    """Retries of requests answered before the migration replay their
    answers, a reversal of one finds it, new sales add to the migrated lots,
    and both kernels store the same bytes."""
    path, expected = version_2_store(tmp_path)
    assert run("-m", "core.migrations", path).returncode == 0
    shutil.copytree(path, f"{path}-reference")
    replays = [key for key, (_, result) in expected["idem"].items() if result[1] == OpKind.PAY and result[0] == ResultCode.APPROVED][-40:]
    stores = {}
    for kernel, directory in (("cython", path), ("reference", f"{path}-reference")):
        ledger = Ledger(open_store(directory, MAP_SIZE_BYTES), load_kernel(kernel))
        retried = [ledger.idem(*map(int, key.split("/"))) for key in replays]
        ops = [Op(kind=OpKind.PAY, terminal_id=int(key.split("/")[0]), serial=int(key.split("/")[1]), station_id=1, card_id=31,
                  amount=1, plan_flags=3, fingerprint=entry.fingerprint) for key, entry in zip(replays, retried)]
        ops += [Op(kind=OpKind.PAY, terminal_id=101, serial=10_000 + n, station_id=1, card_id=31 + n % 5, amount=300 + n, plan_flags=7,
                   points_per_unit=100, earn_points=9, lot_validity_days=n % 3, fingerprint=n.to_bytes(16, "little")) for n in range(80)]
        ops.append(Op(kind=OpKind.REVERSE, terminal_id=int(replays[0].split("/")[0]), serial=20_000, ref_serial=int(replays[0].split("/")[1]),
                      station_id=1, fingerprint=bytes(15) + b"r"))
        now_ms = expected["now_ms"] + 3_600_000
        results = ledger.apply(ops, now_ms, now_ms // 86_400_000)
        assert [result.replayed for result in results[: len(replays)]] == [True] * len(replays)
        assert [result.txn_id for result in results[: len(replays)]] == [entry.result.txn_id for entry in retried]
        assert results[-1].code in (ResultCode.APPROVED, ResultCode.ALREADY_REFUNDED, ResultCode.NOT_REVERSIBLE, ResultCode.ALREADY_REVERSED)
        report = audit(ledger.store)
        assert report.ok, report.problems
        with ledger.store.env.begin() as txn:
            stores[kernel] = {name: list(txn.cursor(db=db)) for name, db in ledger.store.dbs.items()}
            points = txn.get(account_key(AccountKind.POINTS, 31), db=ledger.store.accounts)
        assert len(points) == Account.LAYOUT.size + Lot.LAYOUT.size
        stores[kernel + " results"] = results
        ledger.store.close()
    assert stores["cython results"] == stores["reference results"]
    assert stores["cython"] == stores["reference"]
