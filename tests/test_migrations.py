"""The data format version and `python -m core.migrations DIR`: a new store
is stamped current; the server and the tools refuse an older one with one
line naming the migration, and a newer one; the migration brings a version 1
store (settlement keyed without the domain) to this code's format, once."""

import struct
import subprocess
import sys

import pytest

from core.migrations import SETTLEMENT_KEYED_BY_DAY, STEPS
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
    assert migrated.stdout.strip() == (f"{path}: data format 1 -> {DATA_FORMAT_VERSION} (settlement keys gain the "
                                       "domain, transactions indexed by card)")
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
