"""Cards for back-office users, over a real server: issue to cancel with the
balance owed back, limits, plate, stations, goods, domains, the roles per
RPC, and the audit entry (before and after) of every change. Payments at
the stations show that the kernel enforces what administration set."""

import itertools
import json

import grpc
import pytest

from core.admin.cards import goods_allowed
from core.admin.model import Role
from tally.v1 import admin_pb2, card_pb2, common_pb2, payment_pb2
from tests.support import ServerProcess, Terminal
from tests.test_admin_service import AdminClient, refused, seed_directory

R = common_pb2
FAILED_PRECONDITION, NOT_FOUND = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND
INVALID_ARGUMENT, PERMISSION_DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
# Acme: HQ 1 > region 2 > station 12, HQ 1 > station 13; Other: HQ 50 > station 51.
USERS = {
    "root": (1, Role.ADMINISTRATOR),
    "ops": (1, Role.OPERATIONS),
    "desk": (1, Role.CUSTOMER_SERVICE),
    "auditor": (1, Role.AUDITOR),
    "north": (2, Role.ADMINISTRATOR),
    "other": (50, Role.ADMINISTRATOR),
}
CARD_BASE = 7_100_000_000_000_000
SERIAL_RANGES = itertools.count(0, 10**6)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("admin-cards") / "data")
    seed_directory(data_dir, users=USERS).store.close()
    process = ServerProcess(data_dir, demo=False).start()
    channel = process.channel()
    yield process, {username: AdminClient(channel, username) for username in USERS}
    process.stop()


def terminal_at(process, station_id: int) -> Terminal:
    """A terminal at the station; each one numbers from its own range, so
    that two tests never send one (terminal, serial)."""
    return Terminal(process.channel(), station_id=station_id, terminal_id=400 + station_id, serial=next(SERIAL_RANGES))


def pay(terminal: Terminal, card_id: int, amount_minor: int) -> int:
    answer, _ = terminal.pay(amount_minor, card_id=card_id, use_fleet=False, use_personal=True)
    return answer.result


def issued_and_funded(clients, card_id: int, org_id: int = 12, amount_minor: int = 10_000, **fields):
    clients["root"].IssueCard(card_id=card_id, org_id=org_id, card_type=card_pb2.PERSONAL_CARD, **fields)
    clients["root"].ActivateCard(card_id=card_id)
    return clients["root"].TopUpCard(card_id=card_id, account=R.PERSONAL, amount_minor=amount_minor, request_id=card_id)


def audit_of(clients, card_id: int) -> list:
    entries = clients["auditor"].ReadAudit(limit=10_000).entries
    return [entry for entry in entries if entry.object == f"card:{card_id}"]


def test_a_card_goes_from_issue_to_cancel_with_its_balance_owed_back(served):
    process, clients = served
    card_id, station = CARD_BASE + 1, terminal_at(process, 12)
    desk, ops = clients["desk"], clients["ops"]
    issued = desk.IssueCard(card_id=card_id, org_id=12, card_type=card_pb2.PERSONAL_CARD, limit_per_day_minor=50_000)
    assert (issued.status, issued.activated, list(issued.domains), issued.org_id) == (card_pb2.FROZEN, False, [1], 12)
    assert issued.limit_per_day_minor == 50_000 and issued.issued_ms > 0 and issued.activated_ms == 0
    assert "CARD_FROZEN: " in refused(lambda: ops.TopUpCard(card_id=card_id, account=R.PERSONAL, amount_minor=1, request_id=1),
                                      FAILED_PRECONDITION)
    assert desk.ActivateCard(card_id=card_id).status == card_pb2.ACTIVE
    assert refused(lambda: desk.ActivateCard(card_id=card_id), FAILED_PRECONDITION) == f"card {card_id} is activated already"

    topped = ops.TopUpCard(card_id=card_id, account=R.PERSONAL, amount_minor=10_000, request_id=1)
    assert (topped.card.balances.personal_minor, topped.replayed) == (10_000, False) and topped.txn_id > 0
    again = ops.TopUpCard(card_id=card_id, account=R.PERSONAL, amount_minor=10_000, request_id=1)
    assert (again.txn_id, again.card.balances.personal_minor, again.replayed) == (topped.txn_id, 10_000, True)
    assert refused(lambda: ops.TopUpCard(card_id=card_id, account=R.PERSONAL, amount_minor=10_001, request_id=1),
                   grpc.StatusCode.ALREADY_EXISTS) == "DUPLICATE_MISMATCH: the serial was used before for a different request"
    assert pay(station, card_id, 2_500) == R.APPROVED

    lost = desk.ReportCardLost(card_id=card_id, reason="holder called")
    assert (lost.status, lost.status_reason) == (card_pb2.LOST, "holder called")
    assert pay(station, card_id, 100) == R.CARD_LOST
    assert desk.UnfreezeCard(card_id=card_id).status == card_pb2.ACTIVE
    assert desk.FreezeCard(card_id=card_id, reason="dispute").status == card_pb2.FROZEN
    assert pay(station, card_id, 100) == R.CARD_FROZEN
    assert refused(lambda: desk.FreezeCard(card_id=card_id, reason="again"), FAILED_PRECONDITION) == (
        f"card {card_id} is FROZEN: only an ACTIVE card is frozen")
    unfrozen = desk.UnfreezeCard(card_id=card_id)
    assert (unfrozen.status, unfrozen.status_reason) == (card_pb2.ACTIVE, "")

    cancelled = ops.CancelCard(card_id=card_id, reason="closed at the holder's request")
    assert (cancelled.refund_minor, cancelled.personal_minor, cancelled.fleet_minor) == (7_500, 7_500, 0)
    card = cancelled.card
    assert (card.status, card.balances.personal_minor, card.refund_payable_minor) == (card_pb2.CANCELLED, 0, 7_500)
    assert pay(station, card_id, 100) == R.CARD_CANCELLED
    assert refused(lambda: ops.CancelCard(card_id=card_id, reason="twice"), FAILED_PRECONDITION).startswith("CARD_CANCELLED: ")
    assert refused(lambda: desk.UnfreezeCard(card_id=card_id), FAILED_PRECONDITION) == (
        f"card {card_id} is CANCELLED: only a LOST or FROZEN card is unfrozen")

    entries = audit_of(clients, card_id)
    assert [(entry.action, entry.actor) for entry in entries] == [
        ("IssueCard", "user:desk"), ("ActivateCard", "user:desk"), ("TopUpCard", "user:ops"),
        ("ReportCardLost", "user:desk"), ("UnfreezeCard", "user:desk"), ("FreezeCard", "user:desk"),
        ("UnfreezeCard", "user:desk"), ("CancelCard", "user:ops")]
    assert all(entry.org_id == 12 for entry in entries)
    top_up = entries[2]
    assert (json.loads(top_up.before)["personal_minor"], json.loads(top_up.after)["personal_minor"]) == (0, 10_000)
    cancel = entries[-1]
    assert (json.loads(cancel.before)["status"], json.loads(cancel.after)["status"]) == ("ACTIVE", "CANCELLED")
    assert (json.loads(cancel.before)["refund_payable_minor"], json.loads(cancel.after)["refund_payable_minor"]) == (0, 7_500)
    assert entries[0].before == "" and json.loads(entries[0].after)["status"] == "FROZEN"


def test_cancelling_is_refused_while_a_hold_is_open(served):
    process, clients = served
    card_id, station = CARD_BASE + 2, terminal_at(process, 12)
    issued_and_funded(clients, card_id, amount_minor=6_000)
    held = station.payments.PreAuthorize(payment_pb2.PreAuthorizeRequest(
        terminal=station.context(), card_id=card_id, amount_minor=4_000))
    assert held.result == R.APPROVED
    assert refused(lambda: clients["ops"].CancelCard(card_id=card_id, reason="closing"), FAILED_PRECONDITION) == (
        "CARD_HAS_HOLDS: the card has open holds: complete or release them first")
    record = clients["ops"].GetCardRecord(card_id=card_id)
    assert (record.status, record.held.personal_minor, record.balances.personal_minor) == (card_pb2.ACTIVE, 4_000, 6_000)
    assert [entry.action for entry in audit_of(clients, card_id)] == ["IssueCard", "ActivateCard", "TopUpCard"]
    released = station.payments.Release(payment_pb2.ReleaseRequest(terminal=station.context(), txn_id=held.txn_id))
    assert released.result == R.APPROVED
    assert clients["ops"].CancelCard(card_id=card_id, reason="closing").refund_minor == 6_000


def test_limits_plate_stations_goods_and_domains_are_kept_and_enforced(served):
    process, clients = served
    root = clients["root"]
    at_12, at_13, at_51 = (terminal_at(process, station) for station in (12, 13, 51))
    card_id = CARD_BASE + 3
    issued_and_funded(clients, card_id)
    assert root.ChangeCardLimits(card_id=card_id, limit_per_transaction_minor=1_000).limit_per_transaction_minor == 1_000
    assert pay(at_12, card_id, 1_500) == R.LIMIT_PER_TRANSACTION_EXCEEDED
    assert pay(at_12, card_id, 1_000) == R.APPROVED
    # Its own domain only, until another is enabled.
    assert pay(at_51, card_id, 100) == R.DOMAIN_NOT_ENABLED
    assert "domain_id: organisation 51 is not a headquarters" in refused(
        lambda: root.EnableCardDomain(card_id=card_id, domain_id=51), INVALID_ARGUMENT)
    assert list(root.EnableCardDomain(card_id=card_id, domain_id=50).domains) == [1, 50]
    assert pay(at_51, card_id, 100) == R.APPROVED
    # Allowed stations: one of the caller's subtree; then only those.
    assert refused(lambda: root.AllowCardStation(card_id=card_id, station_id=51), NOT_FOUND) == "station 51 not found"
    assert "station_id: organisation 2 is a REGION, not a STATION" in refused(
        lambda: root.AllowCardStation(card_id=card_id, station_id=2), INVALID_ARGUMENT)
    assert list(root.AllowCardStation(card_id=card_id, station_id=13).allowed_stations) == [13]
    assert (pay(at_12, card_id, 100), pay(at_13, card_id, 100)) == (R.CARD_NOT_ALLOWED_HERE, R.APPROVED)

    assert "vehicle_plate: only a fleet (COMPANY) card has a vehicle plate" in refused(
        lambda: root.SetVehiclePlate(card_id=card_id, vehicle_plate="B-XY 123"), INVALID_ARGUMENT)
    fleet = root.IssueCard(card_id=CARD_BASE + 4, org_id=2, card_type=card_pb2.COMPANY, vehicle_plate="京A12345")
    assert (fleet.vehicle_plate, fleet.card_type, fleet.org_id) == ("京A12345", card_pb2.COMPANY, 2)
    assert root.SetVehiclePlate(card_id=CARD_BASE + 4, vehicle_plate="京A54321").vehicle_plate == "京A54321"
    goods = root.SetAllowedGoods(card_id=CARD_BASE + 4, allowed_goods=["fuel", "92", "fuel"])
    assert list(goods.allowed_goods) == ["92", "fuel"]
    assert "allowed_goods[0]: letters, digits" in refused(
        lambda: root.SetAllowedGoods(card_id=CARD_BASE + 4, allowed_goods=["no spaces"]), INVALID_ARGUMENT)
    assert (goods_allowed(("92", "fuel"), "95", "fuel"), goods_allowed(("92", "fuel"), "92", "shop"),
            goods_allowed(("92", "fuel"), "cola", "shop"), goods_allowed((), "cola", "shop")) == (True, True, False, True)
    actions = [entry.action for entry in audit_of(clients, CARD_BASE + 4)]
    assert actions == ["IssueCard", "SetVehiclePlate", "SetAllowedGoods"]
    root.IssueCard(card_id=CARD_BASE + 9, org_id=13, card_type=card_pb2.PERSONAL_CARD)
    assert [card.card_id for card in root.ListCardRecords(org_id=2).cards] == [CARD_BASE + 4]
    # Region North (2) holds station 12, not the headquarters' station 13.
    assert [card.card_id for card in clients["north"].ListCardRecords().cards] == [CARD_BASE + n for n in (1, 2, 3, 4)]
    assert [card.card_id for card in root.ListCardRecords(limit=10).cards] == [CARD_BASE + n for n in (1, 2, 3, 4, 9)]
    assert refused(lambda: clients["north"].ListCardRecords(org_id=13), NOT_FOUND) == "organisation 13 not found"


def test_each_card_rpc_answers_only_the_roles_allowed(served):
    _, clients = served
    card_id = CARD_BASE + 5
    clients["desk"].IssueCard(card_id=card_id, org_id=13, card_type=card_pb2.PERSONAL_CARD)
    clients["desk"].ActivateCard(card_id=card_id)
    assert refused(lambda: clients["desk"].TopUpCard(card_id=card_id, account=R.PERSONAL, amount_minor=1, request_id=5),
                   PERMISSION_DENIED) == "TopUpCard needs the role ADMINISTRATOR, OPERATIONS; user:desk has CUSTOMER_SERVICE"
    refused(lambda: clients["desk"].CancelCard(card_id=card_id, reason="x"), PERMISSION_DENIED)
    refused(lambda: clients["desk"].ChangeCardLimits(card_id=card_id), PERMISSION_DENIED)
    refused(lambda: clients["ops"].EnableCardDomain(card_id=card_id, domain_id=50), PERMISSION_DENIED)
    refused(lambda: clients["auditor"].IssueCard(card_id=card_id + 1, org_id=13, card_type=card_pb2.PERSONAL_CARD),
            PERMISSION_DENIED)
    refused(lambda: clients["auditor"].ReportCardLost(card_id=card_id, reason="x"), PERMISSION_DENIED)
    assert clients["auditor"].GetCardRecord(card_id=card_id).status == card_pb2.ACTIVE
    assert clients["ops"].FreezeCard(card_id=card_id, reason="checking").status == card_pb2.FROZEN
    # A region's administrator does not see the headquarters' station 13.
    assert refused(lambda: clients["north"].GetCardRecord(card_id=card_id), NOT_FOUND) == f"card {card_id} not found"


def test_issuing_refuses_a_taken_id_and_malformed_input(served):
    process, clients = served
    root = clients["root"]
    # A card opened by CardService (no organisation) shares the id space.
    assert Terminal(process.channel()).open_card(CARD_BASE + 6).result == R.APPROVED
    assert refused(lambda: root.IssueCard(card_id=CARD_BASE + 6, org_id=12, card_type=card_pb2.PERSONAL_CARD),
                   grpc.StatusCode.ALREADY_EXISTS) == f"card id {CARD_BASE + 6} is taken"
    assert refused(lambda: root.GetCardRecord(card_id=CARD_BASE + 6), NOT_FOUND) == f"card {CARD_BASE + 6} not found"
    root.IssueCard(card_id=CARD_BASE + 7, org_id=12, card_type=card_pb2.PERSONAL_CARD)
    refused(lambda: clients["other"].IssueCard(card_id=CARD_BASE + 7, org_id=51, card_type=card_pb2.PERSONAL_CARD),
            grpc.StatusCode.ALREADY_EXISTS)
    for call, text in (
        (lambda: root.IssueCard(card_id=CARD_BASE + 8, org_id=12), "card_type: must be COMPANY or PERSONAL_CARD"),
        (lambda: root.IssueCard(card_id=0, org_id=12, card_type=card_pb2.PERSONAL_CARD), "card_id: must be within 1 .. 18446744073709551615, got 0"),
        (lambda: root.IssueCard(card_id=CARD_BASE + 8, org_id=12, card_type=card_pb2.PERSONAL_CARD, limit_per_day_minor=-1),
         "limit_per_day_minor: must be within 0 .. 1000000000000, got -1"),
        (lambda: root.TopUpCard(card_id=CARD_BASE + 7, account=R.PERSONAL, amount_minor=0, request_id=1),
         "amount_minor: must be within 1 .. 1000000000000, got 0"),
        (lambda: root.TopUpCard(card_id=CARD_BASE + 7, account=R.PERSONAL, amount_minor=1, request_id=0),
         "request_id: must be within 1 .. 18446744073709551615, got 0"),
        (lambda: root.TopUpCard(card_id=CARD_BASE + 7, amount_minor=1, request_id=1), "account: must be FLEET, PERSONAL or POINTS"),
        (lambda: root.ReportCardLost(card_id=CARD_BASE + 7), "reason: length must be within 1 .. 200 characters, got 0"),
    ):
        assert text in refused(call, INVALID_ARGUMENT)
    # Nothing of a refused issue is left behind.
    assert refused(lambda: root.GetCardRecord(card_id=CARD_BASE + 8), NOT_FOUND) == f"card {CARD_BASE + 8} not found"
    assert Terminal(process.channel()).card(CARD_BASE + 8).card_id == 0


def test_pay_refuses_goods_the_card_may_not_buy_naming_the_line(served):
    process, clients = served
    card_id = CARD_BASE + 20
    issued_and_funded(clients, card_id)
    clients["root"].SetAllowedGoods(card_id=card_id, allowed_goods=["fuel"])
    terminal = terminal_at(process, 12)

    def pay_basket(*lines):
        request = payment_pb2.PayRequest(
            terminal=terminal.context(), amount_minor=sum(amount for _, _, amount in lines),
            basket=[common_pb2.BasketLine(goods_code=code, category=category, quantity_milli=1_000, unit_price_minor=amount, amount_minor=amount)
                    for code, category, amount in lines],
            plan=payment_pb2.PaymentPlan(card_id=card_id, use_personal=True),
        )
        return terminal.payments.Pay(request)

    assert pay_basket(("92", "fuel", 500)).result == R.APPROVED
    refused_answer = pay_basket(("92", "fuel", 500), ("cola", "shop", 300))
    assert refused_answer.result == R.GOODS_NOT_ALLOWED and refused_answer.txn_id == 0
    assert refused_answer.declined_by.startswith("basket[1]: goods 'cola' (shop)")
    assert terminal.card(card_id).balances.personal_minor == 10_000 - 500
