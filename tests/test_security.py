"""Issue 15's attack list against a real server with both guards on
(--terminal-auth --back-office-auth), through the public gRPC API only:
each attack refused with the right status, nothing moved, the audit chain
intact. Domains (an organisation's objects answering NOT_FOUND to another)
are tests/test_domains.py's."""

import asyncio
import subprocess
import sys
import threading
import time

import grpc
import pytest

from core.admin import keys
from core.admin.access import cli_actor
from core.loyalty.rules import LoyaltyRules, Partner, save_rules
from core.results import CardType
from core.writes import write_now
from server.admin_service import HashGate
from tally.v1 import admin_pb2, card_pb2, card_pb2_grpc, common_pb2, loyalty_pb2, loyalty_pb2_grpc
from tests.support import REPO, ServerProcess
from tests.test_admin_service import AdminClient, refused, seed_directory

R = common_pb2
EXCHANGE = "/tally.v1.LoyaltyService/ExchangePartnerPoints"
UNAUTHENTICATED, PERMISSION_DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
ACME_CARD, OTHER_CARD = 8_100_000_001, 8_100_000_051
AIRLINE, OTHER_AIRLINE = 7, 8
# 1 partner point = 1,000 minor units: 10,000 points would be 100,000.00.
INTO_CASH = Partner(name="airline miles as cash", rate_numerator=1000, rate_denominator=1, into_cash=True)


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """A server in secure mode (but for TLS, which tests/test_admin_tls.py
    covers): Acme's and Other's cards, a partner of each domain."""
    base = tmp_path_factory.mktemp("secure")
    data_dir, master_key_file = str(base / "data"), str(base / "master.key")
    admin = seed_directory(data_dir, master_key_file)
    cli = cli_actor()
    for card_id, org_id in ((ACME_CARD, 13), (OTHER_CARD, 51)):
        admin.issue_card(cli, card_id, org_id, CardType.PERSONAL)
        admin.activate_card(cli, card_id)
    partners = {partner_id: admin.register_partner(cli, partner_id, org_id, name)[1]
                for partner_id, org_id, name in ((AIRLINE, 1, "Acme's airline"), (OTHER_AIRLINE, 50, "Other's airline"))}
    write_now(admin.store, save_rules, LoyaltyRules(partners={AIRLINE: INTO_CASH, OTHER_AIRLINE: INTO_CASH}))
    admin.store.close()
    process = ServerProcess(data_dir, "--terminal-auth", "--back-office-auth", "--master-key-file", master_key_file,
                            "--metrics-port", "0", demo=False).start()
    yield process, partners
    process.stop()


def exchange_request(card_id: int, partner_id: int = AIRLINE, reference: int = 1, points: int = 10_000):
    return loyalty_pb2.ExchangePartnerPointsRequest(card_id=card_id, partner_id=partner_id, partner_reference=reference,
                                                   partner_points=points)


def exchange(channel, request, secret: bytes | None = None, partner_id: int = AIRLINE):
    """ExchangePartnerPoints with the partner's MAC (none without a secret)."""
    body = request.SerializeToString()
    metadata = keys.partner_metadata(secret, EXCHANGE, partner_id, body) if secret is not None else ()
    call = channel.unary_unary(EXCHANGE, request_serializer=None,
                               response_deserializer=loyalty_pb2.LoyaltyAnswer.FromString)
    return call(body, metadata=metadata, timeout=10)


def personal_balance(process, card_id: int) -> int:
    client = AdminClient(process.channel(), "root" if card_id == ACME_CARD else "other")
    return client.GetCardRecord(card_id=card_id).balances.personal_minor


def test_money_from_nowhere_is_refused_and_a_partner_credits_only_its_own_domain(secure):
    process, partners = secure
    channel = process.channel()
    before = personal_balance(process, ACME_CARD)
    # The attack: anonymous, no metadata at all.
    text = refused(lambda: exchange(channel, exchange_request(ACME_CARD)), UNAUTHENTICATED)
    assert "missing x-tally-partner or x-tally-mac" in text
    # A MAC under a key that is not the partner's, and a MAC over other bytes.
    refused(lambda: exchange(channel, exchange_request(ACME_CARD), secret=bytes(32)), UNAUTHENTICATED)
    # One partner in another's name.
    text = refused(lambda: exchange(channel, exchange_request(ACME_CARD, partner_id=AIRLINE), partners[OTHER_AIRLINE],
                                    partner_id=OTHER_AIRLINE), PERMISSION_DENIED)
    assert "partner_id is 7, but the MAC is partner 8's" in text
    # Other's airline into Acme's card: as if the card did not exist.
    foreign = exchange(channel, exchange_request(ACME_CARD, partner_id=OTHER_AIRLINE, reference=5), partners[OTHER_AIRLINE],
                       partner_id=OTHER_AIRLINE)
    assert foreign.result == R.CARD_NOT_FOUND
    assert personal_balance(process, ACME_CARD) == before, "nothing moved"
    # The partner itself, into a card of its domain: credited once, however often sent.
    credited = exchange(channel, exchange_request(ACME_CARD, points=3, reference=2), partners[AIRLINE])
    assert credited.result == R.APPROVED and credited.cash_minor == 3_000
    assert exchange(channel, exchange_request(ACME_CARD, points=3, reference=2), partners[AIRLINE]) == credited
    assert personal_balance(process, ACME_CARD) == before + 3_000


def test_a_disabled_partner_is_refused(secure):
    process, partners = secure
    root = AdminClient(process.channel(), "root")
    root.RegisterPartner(partner_id=9, org_id=1, name="short-lived")
    disabled = root.DisablePartner(partner_id=9, reason="contract ended")
    assert disabled.status == admin_pb2.PARTNER_STATUS_DISABLED
    assert [p.partner_id for p in AdminClient(process.channel(), "other").ListPartners().partners] == [OTHER_AIRLINE]


def test_cards_are_not_enumerated_without_a_credential(secure):
    process, _ = secure
    cards = card_pb2_grpc.CardServiceStub(process.channel())
    text = refused(lambda: cards.GetCard(card_pb2.GetCardRequest(card_id=ACME_CARD)), UNAUTHENTICATED)
    assert "GetCard takes terminal (MAC); back office" in text
    points = loyalty_pb2_grpc.LoyaltyServiceStub(process.channel())
    refused(lambda: points.GetPoints(loyalty_pb2.GetPointsRequest(card_id=ACME_CARD)), UNAUTHENTICATED)


def test_ten_wrong_passwords_lock_a_user_until_an_administrator_unlocks_it(secure):
    process, _ = secure
    channel = process.channel()
    auditor = AdminClient(channel, "auditor")
    audit_before = auditor.ReadAudit(limit=10_000).entries
    for _ in range(10):
        refused(lambda: AdminClient(channel, "desk", "not the password at all"), UNAUTHENTICATED)
    text = refused(lambda: AdminClient(channel, "desk"), UNAUTHENTICATED)
    assert "locked after too many wrong passwords" in text, "the right password does not open a locked user"
    for _ in range(20):
        refused(lambda: AdminClient(channel, "desk", "not the password at all"), UNAUTHENTICATED)
    written = auditor.ReadAudit(after_seq=audit_before[-1].seq, limit=10_000).entries
    assert [entry.action for entry in written if entry.object == "user:desk"] == ["UserLocked"], \
        "one audit entry for the lockout, none per failure"
    root = AdminClient(channel, "root")
    assert root.GetUser(username="desk").locked_until_ms > 0
    refused(lambda: AdminClient(channel, "other").UnlockUser(username="desk", reason="x"), grpc.StatusCode.NOT_FOUND)
    unlocked = root.UnlockUser(username="desk", reason="ticket 4711: identity checked by phone")
    assert (unlocked.locked_until_ms, unlocked.failed_logins) == (0, 0)
    assert AdminClient(channel, "desk").token
    (entry,) = [e for e in auditor.ReadAudit(after_seq=audit_before[-1].seq, limit=10_000).entries if e.action == "UnlockUser"]
    assert "ticket 4711" in entry.after and entry.actor == "user:root"
    metrics = metrics_text(process)
    assert 'tally_login_failures_total{reason="WRONG_LOGIN"}' in metrics
    assert 'tally_login_failures_total{reason="USER_LOCKED"}' in metrics


def test_a_login_flood_waits_or_is_refused_at_once(secure):
    """At most one password hash runs at a time and a bounded number wait:
    the rest are RESOURCE_EXHAUSTED (LOGINS_BUSY) at once, never queued
    without bound (each hash takes 19 MiB)."""
    process, _ = secure
    codes, lock = [], threading.Lock()

    def attempt():
        try:
            AdminClient(process.channel(), "north", "not the password at all")
        except grpc.RpcError as error:
            with lock:
                codes.append((error.code(), error.details()))

    threads = [threading.Thread(target=attempt) for _ in range(48)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    busy = [details for code, details in codes if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert busy and all("retry in a second" in details for details in busy)
    assert len(codes) == 48 and {code for code, _ in codes} <= {UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    AdminClient(process.channel(), "root").UnlockUser(username="north", reason="test flood over")


def check_starts(payments_flowing: bool, checks: int) -> list[float]:
    """When each of `checks` password checks started, all asked for at once
    of one HashGate, in seconds after the first."""
    async def scenario():
        gate, started = HashGate(lambda: payments_flowing), []
        await asyncio.gather(*(gate.run(lambda: started.append(time.monotonic())) for _ in range(checks)))
        return [moment - started[0] for moment in started]

    return asyncio.run(scenario())


def test_password_checks_yield_to_flowing_payments_at_a_bounded_rate():
    """While payments flow, checks start at most PAYING_CHECKS_PER_S a second
    after a burst of PAYING_CHECKS_BURST (a flood's hashes sweep the caches
    payments run in); a quiet server starts them one after the other."""
    burst, interval_s = HashGate.PAYING_CHECKS_BURST, 1.0 / HashGate.PAYING_CHECKS_PER_S
    starts = check_starts(True, burst + 2)
    assert starts[burst - 1] < interval_s, "the burst starts at once"
    assert starts[burst] >= interval_s * 0.99 and starts[burst + 1] >= 2 * interval_s * 0.99
    assert check_starts(False, burst + 2)[-1] < interval_s


def test_an_unknown_username_waits_as_long_as_a_real_check_without_hashing(monkeypatch):
    """A made-up name costs no argon2id (a flood of them costs no CPU) yet
    is refused after a wait drawn from the recent real checks, so that it
    cannot be told from a wrong password by time."""
    from core.admin import passwords

    monkeypatch.setattr(passwords, "_recent_check_s", passwords.collections.deque(maxlen=passwords.RECENT_CHECKS_KEPT))
    monkeypatch.setattr(passwords, "_newest_check_at_s", float("-inf"))
    known = passwords.hash_password("the right password")
    assert not passwords.password_matches(known, "a wrong password")
    (real_s,) = passwords._recent_check_s
    cpu_before_s, started_s = time.thread_time(), time.monotonic()
    assert not passwords.password_matches(None, "a wrong password")
    waited_s, cpu_s = time.monotonic() - started_s, time.thread_time() - cpu_before_s
    assert len(passwords._recent_check_s) == 1, "no real check ran for the unknown name"
    assert waited_s >= real_s * 0.99 and cpu_s < real_s / 2


def test_an_unknown_username_gets_a_real_check_when_none_is_recent(monkeypatch):
    """The waits follow the server's load: with no real check within
    RECENT_CHECKS_FRESH_S, an unknown name is checked against the dummy
    hash (and that check's duration is kept)."""
    from core.admin import passwords

    monkeypatch.setattr(passwords, "_recent_check_s", passwords.collections.deque([0.001], maxlen=passwords.RECENT_CHECKS_KEPT))
    monkeypatch.setattr(passwords, "_newest_check_at_s", time.monotonic() - passwords.RECENT_CHECKS_FRESH_S - 1)
    assert not passwords.password_matches(None, "a wrong password")
    assert len(passwords._recent_check_s) == 2 and passwords._recent_check_s[-1] > 0.001
    assert passwords.password_matches(passwords.hash_password("the right password"), "the right password")


def test_a_hash_of_the_earlier_profile_is_still_checked_and_marked_for_rehash():
    """Users made before the 19 MiB profile log in as before and get the new
    profile's hash at that login (needs_rehash)."""
    from argon2 import PasswordHasher

    from core.admin import passwords

    earlier = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=1).hash("the right password")
    assert passwords.password_matches(earlier, "the right password")
    assert not passwords.password_matches(earlier, "a wrong password")
    assert passwords.needs_rehash(earlier) and not passwords.needs_rehash(passwords.hash_password("the right password"))


def test_the_audit_chain_is_intact_after_the_attacks(secure):
    process, _ = secure
    verified = AdminClient(process.channel(), "auditor").VerifyAudit()
    assert verified.intact and verified.entries > 0


@pytest.mark.parametrize("flags, listens", [((), False), (("--insecure",), True)])
def test_secure_mode_is_the_default_away_from_the_loopback(tmp_path, flags, listens):
    command = [sys.executable, "-m", "server", "--data", str(tmp_path / "data"), "--listen", "0.0.0.0:0", *flags]
    if not listens:
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert finished.returncode != 0
        (line,) = finished.stderr.strip().splitlines()
        assert "refusing to listen on 0.0.0.0:0 without TLS (--tls-cert, --tls-key), --terminal-auth, --back-office-auth" in line
        return
    process = ServerProcess(str(tmp_path / "data"), *flags, demo=False)
    process.args[process.args.index("127.0.0.1:0")] = "0.0.0.0:0"
    process.start()
    assert process.stop() == 0


def metrics_text(process) -> str:
    import re
    import urllib.request

    port = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", process.log).group(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()

