"""The published audit head: `audit-head --out FILE` writes (seq, hash), and
with an HSM a MAC of them; `verify-audit --expected-head FILE` catches what
the chain alone cannot: a whole chain rewritten with consistent hashes, as
an attacker holding the data files would do it; and a cut chain, an altered
head file."""

import json
import subprocess
import sys

import msgspec
import pytest

from core.admin import Admin, audit
from core.admin.access import cli_actor
from core.admin.model import AuditEntry, AuditHead, OrgKind, pack, u64_key, unpack
from core.store import open_store, rows
from tests.softhsm import cli_flags, with_key_label
from tests.support import REPO
from tests.test_admin_service import seed_directory

HEAD_SEQ = 6  # seed_directory's six organisations, no users


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "core.admin", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def data_dir(tmp_path):
    path = str(tmp_path / "data")
    seed_directory(path, users={}).store.close()
    return path


def rewrite_whole_chain(data_dir: str, seq: int, actor: str):
    """What an attacker with the files does: change entry `seq`, then
    recompute every hash from it on, and the head, so the chain verifies."""
    store = open_store(data_dir, 2**30)
    with store.env.begin(write=True) as txn:
        entries = [unpack(AuditEntry, value) for _, value in rows(txn, store.admin_audit)]
        previous_hash = audit.GENESIS_HASH
        for entry in entries:
            if entry.seq == seq:
                entry = msgspec.structs.replace(entry, actor=actor)
            fields = (entry.seq, entry.time_ms, entry.actor, entry.org_id, entry.action, entry.object, entry.before,
                      entry.after, previous_hash)
            entry = AuditEntry(*fields, audit.entry_hash(*fields))
            txn.put(u64_key(entry.seq), pack(entry), db=store.admin_audit)
            previous_hash = entry.hash
        txn.put(audit.HEAD_KEY, pack(AuditHead(entries[-1].seq, previous_hash)), db=store.admin_meta)
    store.close()


def test_a_whole_chain_rewritten_passes_alone_and_fails_against_the_published_head(data_dir, tmp_path):
    head_file = str(tmp_path / "head.json")
    written = run_cli("audit-head", "--data", data_dir, "--out", head_file)
    assert written.returncode == 0, written.stderr
    published = json.load(open(head_file))
    assert published["seq"] == HEAD_SEQ and len(published["hash"]) == 64 and published["mac"] == ""
    assert run_cli("verify-audit", "--data", data_dir, "--expected-head", head_file).returncode == 0
    # The log grows after the head was published: still consistent with it.
    store = open_store(data_dir, 2**30)
    Admin(store).create_organisation(cli_actor(), 1, OrgKind.STATION, "Station 14", org_id=14)
    store.close()
    grown = run_cli("verify-audit", "--data", data_dir, "--expected-head", head_file)
    assert grown.returncode == 0 and f"holds the published head: entry {HEAD_SEQ}" in grown.stdout
    rewrite_whole_chain(data_dir, 2, actor="cli:nobody")
    alone = run_cli("verify-audit", "--data", data_dir)
    assert alone.returncode == 0 and f"intact: {HEAD_SEQ + 1} entries" in alone.stdout
    against = run_cli("verify-audit", "--data", data_dir, "--expected-head", head_file)
    assert against.returncode == 1
    assert (f"entry {HEAD_SEQ}: hash is " in against.stdout
            and "the published head says " + published["hash"][:16] + "...: the chain was rewritten at or before this entry"
            in against.stdout), against.stdout
    assert "BROKEN: 1 breach(es)" in against.stdout


def test_a_chain_cut_below_the_published_head_is_caught(data_dir, tmp_path):
    head_file = str(tmp_path / "head.json")
    assert run_cli("audit-head", "--data", data_dir, "--out", head_file).returncode == 0
    store = open_store(data_dir, 2**30)
    with store.env.begin(write=True) as txn:
        last = unpack(AuditEntry, txn.get(u64_key(HEAD_SEQ - 1), db=store.admin_audit))
        txn.delete(u64_key(HEAD_SEQ), db=store.admin_audit)
        txn.put(audit.HEAD_KEY, pack(AuditHead(last.seq, last.hash)), db=store.admin_meta)
    store.close()
    assert run_cli("verify-audit", "--data", data_dir).returncode == 0
    against = run_cli("verify-audit", "--data", data_dir, "--expected-head", head_file)
    assert against.returncode == 1
    assert f"entry {HEAD_SEQ}: the published head names entry {HEAD_SEQ}, which the chain no longer holds" in against.stdout


def test_a_head_file_that_is_not_one_is_refused_naming_what_is_wrong(data_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tally.v1 audit head", "seq": 1, "hash": "zz", "written_ms": 0}')
    refused = run_cli("verify-audit", "--data", data_dir, "--expected-head", str(bad))
    assert refused.returncode == 2 and "hash must be 64 hex digits" in refused.stderr
    missing = run_cli("verify-audit", "--data", data_dir, "--expected-head", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "No such file or directory" in missing.stderr


def test_a_head_macd_in_the_hsm_verifies_only_unaltered_and_with_the_token(data_dir, tmp_path):
    config = with_key_label("audit-head-key")
    made = run_cli("audit-key", *cli_flags(config))
    assert made.returncode == 0, made.stderr
    head_file = tmp_path / "head.json"
    written = run_cli("audit-head", "--data", data_dir, "--out", str(head_file), *cli_flags(config))
    assert written.returncode == 0, written.stderr
    published = json.loads(head_file.read_text())
    assert len(published["mac"]) == 64 and published["mac_key"] == config.describe()
    verified = run_cli("verify-audit", "--data", data_dir, "--expected-head", str(head_file), *cli_flags(config))
    assert verified.returncode == 0 and "(MAC verified)" in verified.stdout
    without_token = run_cli("verify-audit", "--data", data_dir, "--expected-head", str(head_file))
    assert without_token.returncode == 2 and "give --pkcs11-module" in without_token.stderr
    # An attacker who rewrote the chain writes a head file to match: the MAC gives it away.
    rewrite_whole_chain(data_dir, 3, actor="cli:nobody")
    store = open_store(data_dir, 2**30, readonly=True)
    with store.env.begin() as txn:
        forged_hash = audit.head(txn, store).hash.hex()
    store.close()
    head_file.write_text(json.dumps({**published, "hash": forged_hash}))
    forged = run_cli("verify-audit", "--data", data_dir, "--expected-head", str(head_file), *cli_flags(config))
    assert forged.returncode == 1
    assert f"entry {HEAD_SEQ}: the published head's MAC does not verify under {config.describe()}" in forged.stdout
