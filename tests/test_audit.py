"""`python -m core.audit` passes on consistent books and names every breach."""

import subprocess
import sys

import pytest

from core.records import Account, Txn, account_key, decode, encode, u64_key
from core.results import AccountKind, Channel, ResultCode, TxnState
from tests.conftest import open_ledger
from tests.ledger_driver import Driver

CARD = 42


@pytest.fixture
def books(tmp_path):
    ledger = open_ledger(str(tmp_path / "data"), "cython")
    driver = Driver(ledger)
    driver.open_card(CARD, fleet=5_000, personal=5_000, points=500)
    driver.pay(CARD, 3_000)
    driver.preauth(CARD, 1_000)
    pending = driver.pay(CARD, 8_000, channel=Channel.WECHAT_PAY)  # left waiting for its channel
    assert pending.code == ResultCode.PENDING and driver.held(CARD) == (2_000, 5_000, 530)
    yield driver
    ledger.store.close()


def run_audit(books) -> subprocess.CompletedProcess:
    books.ledger.store.env.sync(True)
    return subprocess.run([sys.executable, "-m", "core.audit", books.ledger.store.path], capture_output=True, text=True)


def rewrite(books, db_name: str, key: bytes, record_type, **changes):
    db = books.ledger.store.dbs[db_name]
    with books.ledger.store.env.begin(write=True) as txn:
        record = decode(record_type, txn.get(key, db=db))
        for field, value in changes.items():
            setattr(record, field, value)
        txn.put(key, encode(record), db=db)


def test_consistent_books_pass(books):
    result = run_audit(books)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("audit OK")


def test_a_balance_that_does_not_match_its_journal_fails(books):
    key = account_key(AccountKind.PERSONAL, CARD)
    account = books.ledger.account(AccountKind.PERSONAL, CARD)
    rewrite(books, "accounts", key, Account, balance=account.balance + 1, credits=account.credits + 1)
    result = run_audit(books)
    assert result.returncode == 1
    assert f"account PERSONAL/{CARD}: debits/credits" in result.stdout
    assert "sum to 1, not zero" in result.stdout


def test_a_missing_journal_entry_fails(books):
    with books.ledger.store.env.begin(write=True) as txn:
        txn.delete(u64_key(3), db=books.ledger.store.journal)
    result = run_audit(books)
    assert result.returncode == 1
    assert "journal sequence has" in result.stdout


def test_a_hold_both_posted_and_voided_fails(books):
    sale = books.ledger.txn(books.ledger.idem(101, 4).result.txn_id)
    assert sale.state == TxnState.POSTED
    rewrite(books, "txns", u64_key(sale.txn_id), Txn, state=TxnState.RELEASED)
    result = run_audit(books)
    assert result.returncode == 1
    assert f"txn {sale.txn_id}: hold is RELEASED but has 3000 of sale postings (posted and voided)" in result.stdout


def test_held_amounts_must_match_open_holds(books):
    rewrite(books, "accounts", account_key(AccountKind.FLEET, CARD), Account, held=0)
    result = run_audit(books)
    assert result.returncode == 1
    assert f"account FLEET/{CARD}: held 0 but open holds total 2000" in result.stdout


def test_json_report(books):
    books.ledger.store.env.sync(True)
    result = subprocess.run([sys.executable, "-m", "core.audit", "--json", books.ledger.store.path], capture_output=True, text=True)
    import json

    report = json.loads(result.stdout)
    assert report["ok"] is True and report["counts"]["transactions"] == 6
