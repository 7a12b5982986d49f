"""Customers over a real server: the profile and its checks, the tier
shown, the export of everything held on a person (one JSON document, in
chunks), and erasure on request: the personal fields go, from the record,
the export and the audit log alike, while the cards, balances and journal
entries keep their amounts."""

import itertools
import json

import grpc
import pytest

from core.admin.model import Role
from core.records import JournalEntry, Txn, decode, u64_key
from core.store import open_store, rows
from tally.v1 import admin_pb2, card_pb2, common_pb2, loyalty_pb2, loyalty_pb2_grpc
from tests.support import ServerProcess, Terminal
from tests.test_admin_service import AdminClient, refused, seed_directory

R = common_pb2
INVALID_ARGUMENT, FAILED_PRECONDITION = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
USERS = {
    "root": (1, Role.ADMINISTRATOR),
    "desk": (12, Role.CUSTOMER_SERVICE),
    "ops": (1, Role.OPERATIONS),
    "auditor": (1, Role.AUDITOR),
}
CARD_BASE = 7_200_000_000_000_000
SERIAL_RANGES = itertools.count(0, 10**6)
PERSON = admin_pb2.CustomerProfile(name="Zhang Wei", phone="+86 138 0013 8000", email="zhang.wei@example.cn",
                                   address="88 Jianguo Road, Beijing", birth_date="1984-02-29")
PERSONAL_VALUES = ("Zhang Wei", "+86 138 0013 8000", "zhang.wei@example.cn", "88 Jianguo Road", "1984-02-29")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("admin-customers") / "data")
    seed_directory(data_dir, users=USERS).store.close()
    process = ServerProcess(data_dir, demo=False).start()
    channel = process.channel()
    yield process, {username: AdminClient(channel, username) for username in USERS}
    process.stop()


def card_for(clients, customer_id: int, card_id: int, amount_minor: int = 50_000):
    root = clients["root"]
    root.IssueCard(card_id=card_id, org_id=12, card_type=card_pb2.PERSONAL_CARD, customer_id=customer_id)
    root.ActivateCard(card_id=card_id)
    root.TopUpCard(card_id=card_id, account=R.PERSONAL, amount_minor=amount_minor, request_id=card_id)


def sales(process, card_id: int, amounts) -> list:
    terminal = Terminal(process.channel(), station_id=12, terminal_id=512, serial=next(SERIAL_RANGES))
    answers = [terminal.pay(amount, card_id=card_id, use_fleet=False, use_personal=True)[0] for amount in amounts]
    assert [answer.result for answer in answers] == [R.APPROVED] * len(answers)
    return answers


def export(client, customer_id: int) -> tuple[bytes, list[int]]:
    chunks = list(client.ExportCustomer(customer_id=customer_id))
    return b"".join(chunk.data for chunk in chunks), [len(chunk.data) for chunk in chunks]


def journal_of(data_dir: str, card_id: int) -> list[tuple]:
    """(seq, txn, amount, debit, credit) of every journal entry of the
    card's transactions, read from the files as the server left them."""
    store = open_store(data_dir, 2**30, readonly=True)
    try:
        with store.env.begin() as txn:
            txn_ids = {decode(Txn, value).txn_id for _, value in rows(txn, store.txns) if decode(Txn, value).card_id == card_id}
            entries = [decode(JournalEntry, value) for _, value in rows(txn, store.journal)]
    finally:
        store.close()
    return [(entry.seq, entry.txn_id, entry.amount, entry.debit_owner, entry.credit_owner)
            for entry in entries if entry.txn_id in txn_ids]


def test_a_profile_is_created_changed_and_checked(served):
    _, clients = served
    desk = clients["desk"]
    created = desk.CreateCustomer(org_id=12, profile=PERSON)
    assert (created.customer_id, created.org_id, created.profile, created.tier, list(created.card_ids)) == (
        1, 12, PERSON, loyalty_pb2.REGULAR, [])
    changed = admin_pb2.CustomerProfile(name="Zhang Wei", phone="010 6512 0000")
    updated = desk.UpdateCustomer(customer_id=1, profile=changed)
    assert (updated.profile, updated.created_ms) == (changed, created.created_ms) and updated.updated_ms >= created.updated_ms
    assert desk.GetCustomer(customer_id=1).profile == changed
    assert [c.customer_id for c in clients["root"].ListCustomers().customers] == [1]
    for profile, text in (
        (admin_pb2.CustomerProfile(phone="call me"), "profile.phone: digits, '+', '-', '(', ')' and spaces only"),
        (admin_pb2.CustomerProfile(email="a@b@c"), "profile.email: must hold exactly one '@'"),
        (admin_pb2.CustomerProfile(birth_date="1984-02-30"), "profile.birth_date: must be a date YYYY-MM-DD, got '1984-02-30'"),
        (admin_pb2.CustomerProfile(name="x" * 101), "profile.name: length must be within 0 .. 100 characters, got 101"),
    ):
        assert text in refused(lambda: desk.CreateCustomer(org_id=12, profile=profile), INVALID_ARGUMENT)
    assert refused(lambda: desk.CreateCustomer(org_id=12, profile=PERSON, customer_id=1), grpc.StatusCode.ALREADY_EXISTS) == (
        "customer id 1 is taken")
    # Personal data is for customer service and administrators only.
    for who in ("ops", "auditor"):
        assert refused(lambda: clients[who].GetCustomer(customer_id=1), grpc.StatusCode.PERMISSION_DENIED).startswith(
            "GetCustomer needs the role ADMINISTRATOR, CUSTOMER_SERVICE")
    refused(lambda: desk.EraseCustomer(customer_id=1, reason="ticket 1"), grpc.StatusCode.PERMISSION_DENIED)
    # The audit log says who changed which customer, never to what.
    entries = [entry for entry in clients["auditor"].ReadAudit(limit=10_000).entries if entry.object == "customer:1"]
    assert [(entry.action, entry.actor) for entry in entries] == [("CreateCustomer", "user:desk"), ("UpdateCustomer", "user:desk")]
    assert json.loads(entries[1].before)["phone"] == "[personal]" and json.loads(entries[1].after)["email"] == ""
    assert not any(value in entry.before + entry.after for entry in entries for value in PERSONAL_VALUES + ("010 6512",))


def test_the_tier_shown_is_the_highest_of_the_customers_cards(served):
    process, clients = served
    customer_id = clients["desk"].CreateCustomer(org_id=12, profile=admin_pb2.CustomerProfile(name="Tier Holder")).customer_id
    card_for(clients, customer_id, CARD_BASE + 1)
    card_for(clients, customer_id, CARD_BASE + 2)
    loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(process.channel())
    assert loyalty.SetTier(loyalty_pb2.SetTierRequest(card_id=CARD_BASE + 2, tier=loyalty_pb2.GOLD)).result == R.APPROVED
    shown = clients["desk"].GetCustomer(customer_id=customer_id)
    assert (shown.tier, list(shown.card_ids)) == (loyalty_pb2.GOLD, [CARD_BASE + 1, CARD_BASE + 2])
    assert [card.tier for card in clients["desk"].ListCardRecords(customer_id=customer_id).cards] == [
        loyalty_pb2.REGULAR, loyalty_pb2.GOLD]


def test_the_export_holds_everything_on_the_person_as_one_json_document(served):
    process, clients = served
    customer_id = clients["desk"].CreateCustomer(org_id=12, profile=PERSON).customer_id
    card_id = CARD_BASE + 3
    card_for(clients, customer_id, card_id)
    # Enough sales that the document needs more than one chunk.
    answers = sales(process, card_id, [1_000] * 39 + [2_345])
    data, sizes = export(clients["desk"], customer_id)
    assert len(sizes) >= 2 and set(sizes[:-1]) == {32 * 1024} and 0 < sizes[-1] <= 32 * 1024
    document = json.loads(data)
    assert (document["format"], document["exported_by"]) == ("tally.v1.customer-export", "user:desk")
    customer = document["customer"]
    assert (customer["customer_id"], customer["org_id"], customer["domain"], customer["tier"]) == (customer_id, 12, 1, "REGULAR")
    assert (customer["name"], customer["phone"], customer["email"], customer["birth_date"]) == (
        "Zhang Wei", "+86 138 0013 8000", "zhang.wei@example.cn", "1984-02-29")
    [card] = document["cards"]
    assert (card["card"]["card_id"], card["card"]["status"], card["card"]["personal_minor"]) == (card_id, "ACTIVE", 50_000 - 41_345)
    assert [(t["kind"], t["amount"]) for t in card["transactions"]] == [("TOPUP", 50_000)] + [("PAY", 1_000)] * 39 + [("PAY", 2_345)]
    assert [t["txn_id"] for t in card["transactions"][1:]] == [answer.txn_id for answer in answers]
    assert card["transactions_truncated"] is False
    statement = card["points_statement"]
    earned = sum(answer.points_earned for answer in answers)
    assert earned > 0 and statement["balance"] == earned == card["card"]["points"]
    assert [line["points"] for line in statement["lines"]] == [answer.points_earned for answer in answers if answer.points_earned]
    exports = [entry for entry in clients["auditor"].ReadAudit(limit=10_000).entries if entry.action == "ExportCustomer"]
    assert [(entry.object, entry.actor) for entry in exports] == [(f"customer:{customer_id}", "user:desk")]


def test_erasure_removes_the_personal_fields_and_keeps_the_amounts(served):
    process, clients = served
    desk, root = clients["desk"], clients["root"]
    customer_id = desk.CreateCustomer(org_id=12, profile=PERSON).customer_id
    card_id = CARD_BASE + 4
    card_for(clients, customer_id, card_id, amount_minor=20_000)
    sales(process, card_id, [3_000, 4_500])
    journal_before = journal_of(process.data_dir, card_id)
    assert [amount for _, _, amount, _, _ in journal_before if amount in (20_000, 3_000, 4_500)] == [20_000, 3_000, 4_500]
    card_before = root.GetCardRecord(card_id=card_id)

    erased = root.EraseCustomer(customer_id=customer_id, reason="ticket 42")
    assert erased.profile == admin_pb2.CustomerProfile() and erased.erased_ms > 0
    assert (erased.erasure_reference, list(erased.card_ids), erased.org_id) == ("ticket 42", [card_id], 12)
    assert desk.GetCustomer(customer_id=customer_id).profile == admin_pb2.CustomerProfile()
    # The books are untouched: the card, its balances, every journal entry.
    assert root.GetCardRecord(card_id=card_id) == card_before
    assert card_before.balances.personal_minor == 20_000 - 7_500
    assert journal_of(process.data_dir, card_id) == journal_before
    data, _ = export(desk, customer_id)
    document = json.loads(data)
    assert document["customer"]["erased_ms"] == erased.erased_ms and document["customer"]["name"] == ""
    assert [(t["kind"], t["amount"]) for t in document["cards"][0]["transactions"]] == [("TOPUP", 20_000), ("PAY", 3_000), ("PAY", 4_500)]
    assert not any(value.encode() in data for value in PERSONAL_VALUES)
    # Not in the audit log either, before the erasure or after.
    entries = clients["auditor"].ReadAudit(limit=10_000).entries
    assert not any(value in entry.before + entry.after for entry in entries for value in PERSONAL_VALUES)
    erase = [entry for entry in entries if entry.action == "EraseCustomer"][-1]
    assert (json.loads(erase.before)["name"], json.loads(erase.after)["name"]) == ("[personal]", "")
    assert json.loads(erase.after)["erasure_reference"] == "ticket 42"
    # An erased customer stays erased.
    for call, text in (
        (lambda: desk.UpdateCustomer(customer_id=customer_id, profile=PERSON), f"customer {customer_id} was erased on request: create a new customer"),
        (lambda: root.EraseCustomer(customer_id=customer_id, reason="again"), f"customer {customer_id} was erased already"),
        (lambda: root.IssueCard(card_id=CARD_BASE + 5, org_id=12, card_type=card_pb2.PERSONAL_CARD, customer_id=customer_id),
         f"customer {customer_id} was erased on request"),
    ):
        assert refused(call, FAILED_PRECONDITION) == text
