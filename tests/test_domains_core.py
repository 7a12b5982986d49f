"""Domains in the core, without a server (the server's side: test_domains.py):
a statement is matched against its domain's stations only, promotions run
and are seen only within their owner's subtree, a domain's velocity limits
count apart from another's, and each card runs by its domain's loyalty
rules."""

import msgspec
import pytest

from core.admin import Admin
from core.admin.access import Actor, cli_actor
from core.admin.model import OrgKind, Role
from core.domains import EVERYWHERE, StationTree, scope_of
from core.errors import NotFound
from core.loyalty.rules import CardRules, LoyaltyRules, load_rules, save_rules
from core.promotions import store as promotion_store
from core.promotions.model import DiscountTerms, Promotion, PromotionKind, Stage
from core.promotions.validation import PromotionError
from core.results import CardType
from core.risk.rules import DOMAIN_OWNER_BIT, Measure, RiskRules, VelocityLimit, Window, velocity_takes
from core.settlement import queue
from core.settlement.model import DifferenceKind
from core.settlement.simulate import CHANNELS, Network
from core.writes import write_now
from tests.settlement_samples import DAY

T0 = 1_700_000_000_000
HOUR_MS = 3_600_000


def tree(store) -> Admin:
    """HQ 100 > region 110 > station 1; HQ 100 > station 2; HQ 200 > station 3."""
    admin = Admin(store)
    cli = cli_actor()
    admin.create_headquarters(cli, "A", org_id=100)
    admin.create_organisation(cli, 100, OrgKind.REGION, "A north", org_id=110)
    admin.create_organisation(cli, 110, OrgKind.STATION, "A 1", org_id=1)
    admin.create_organisation(cli, 100, OrgKind.STATION, "A 2", org_id=2)
    admin.create_headquarters(cli, "B", org_id=200)
    admin.create_organisation(cli, 200, OrgKind.STATION, "B 3", org_id=3)
    return admin


# ---------------------------------------------------------------- settlement


def test_a_statement_is_matched_against_its_domain_s_stations_only(ledger):
    """One clean day at stations 1, 2 (domain 100) and 3 (domain 200): the
    same statements, as domain 100's merchant account, match the sales of
    stations 1 and 2 and report station 3's as ONLY_CHANNEL; as the
    network's (stations of no domain), every row is ONLY_CHANNEL."""
    network = Network(ledger, stations=3, seed=3)
    try:
        for day in (DAY - 1, DAY, DAY + 1):
            network.run_day(day, sales=45, voids=3, refunds=4)
        tree(ledger.store)
        for domain in (0, 100):
            for channel in CHANNELS:
                for day in (DAY - 1, DAY, DAY + 1):
                    queue.import_statement(ledger.store, channel, network.statement_file(channel, day), f"{channel}-{day}",
                                           "tester", day=day, domain=domain)
        runs = {domain: [queue.reconcile_day(ledger.store, channel, DAY, txn_lookup=ledger.txn, domain=domain) for channel in CHANNELS]
                for domain in (0, 100)}
    finally:
        network.close()
    ours = queue.differences(ledger.store, domain=100)
    assert ours and {d.kind for d in ours} == {DifferenceKind.ONLY_CHANNEL} and {d.station_id for d in ours} == {3}
    assert sum(run.items_matched for run in runs[100]) > 0 and any(run.ours_minor for run in runs[100])
    network_wide = queue.differences(ledger.store, domain=0)
    assert {d.kind for d in network_wide} == {DifferenceKind.ONLY_CHANNEL} and {d.station_id for d in network_wide} == {1, 2, 3}
    assert all(run.ours_minor == 0 for run in runs[0]), "no station is the network's: nothing of ours is matched"
    assert all(d.key.startswith("100-") for d in ours) and not any(d.key.startswith("100-") for d in network_wide)
    # Each domain's difference is resolved under its own id, once.
    first = ours[0]
    resolved = queue.resolve(ledger.store, first.key, queue.ResolutionAction.ACCEPT, "tester", "a test")
    assert resolved.domain == 100 and queue.actions(ledger.store, first.key, domain=100)[-1].what == "accept"
    with pytest.raises(NotFound):
        queue.difference(ledger.store, first.key, seen=lambda found: found.domain == 200)


# ---------------------------------------------------------------- promotions


def discount(org_id: int = 0, **fields) -> Promotion:
    return Promotion(promotion_id=0, kind=PromotionKind.DISCOUNT, name="ten off", valid_from_ms=T0, valid_to_ms=T0 + HOUR_MS,
                     discount=DiscountTerms(off_permille=100), org_id=org_id, **fields)


def test_a_promotion_is_its_owner_s_and_runs_only_below_it(ledger):
    store = ledger.store
    tree(store)
    north = scope_of(store, Actor("user:north", 110, Role.ADMINISTRATOR))
    b = scope_of(store, Actor("user:b", 200, Role.ADMINISTRATOR))
    with pytest.raises(PromotionError) as refused:
        write_now(store, promotion_store.save_draft, discount(110, stations=(1, 2)), "north", T0, north)
    assert refused.value.field == "stations[1]"
    with pytest.raises(PromotionError) as refused:
        write_now(store, promotion_store.save_draft, discount(110, funder=2, funder_id=3), "north", T0, north)
    assert refused.value.field == "funder_id"
    ours = write_now(store, promotion_store.save_draft, discount(), "north", T0, north)
    assert ours.org_id == 110, "the maker's organisation by default"
    with pytest.raises(NotFound) as unseen:
        write_now(store, promotion_store.step_promotion, ours.promotion_id, Stage.SUBMITTED, "b", T0, b)
    assert str(unseen.value) == f"no promotion {ours.promotion_id}"
    assert promotion_store.list_promotions(store, scope=b) == [] and promotion_store.load_promotion(store, ours.promotion_id, b) is None
    for by in ("north", "approver"):
        write_now(store, promotion_store.step_promotion, ours.promotion_id, Stage.SUBMITTED if by == "north" else Stage.APPROVED,
                  by, T0, EVERYWHERE)
    network = write_now(store, promotion_store.save_draft, discount(), "cli", T0)
    snapshot = promotion_store.load_snapshot(store)
    stations = StationTree(store)
    assert [p.promotion_id for p in snapshot.priced_at(stations.ancestry(1))[0]] == [ours.promotion_id]
    assert snapshot.priced_at(stations.ancestry(2))[0] == () and snapshot.priced_at(stations.ancestry(3))[0] == ()
    assert network.org_id == 0 and [p.promotion_id for p in snapshot.priced_at(())[1]] == [network.promotion_id]


def test_the_stacking_policy_is_a_domain_s_or_the_network_s(ledger):
    store = ledger.store
    tree(store)
    write_now(store, promotion_store.save_policy, msgspec.convert({"coupons_per_sale_max": 2}, promotion_store.StackingPolicy))
    write_now(store, promotion_store.save_policy, promotion_store.StackingPolicy(coupons_per_sale_max=5), 100)
    snapshot = promotion_store.load_snapshot(store)
    assert (snapshot.policy_for(100).coupons_per_sale_max, snapshot.policy_for(200).coupons_per_sale_max) == (5, 2)
    assert promotion_store.load_policy(store, 200) == (snapshot.policy, True)


# ---------------------------------------------------------------- risk and loyalty


def test_a_domain_s_velocity_limit_counts_apart_from_another_s_of_the_same_id():
    limit = VelocityLimit(limit_id=7, name="day", measure=Measure.SALE_COUNT, window=Window.DAY, ceiling=3)
    rules = RiskRules(limits=(limit,))
    owners = [velocity_takes(rules, 42, T0, sale_minor=100, domain=domain)[0].owner for domain in (0, 100, 200)]
    assert owners[0] == 7, "the network's limits count where they always did"
    assert owners[1] != owners[2] and all(owner & DOMAIN_OWNER_BIT for owner in owners[1:])


def test_each_card_runs_by_its_domain_s_loyalty_rules(ledger):
    store = ledger.store
    admin = tree(store)
    cli = cli_actor()
    for card_id, org_id in ((501, 1), (502, 3)):
        admin.issue_card(cli, card_id, org_id, CardType.PERSONAL)
    ledger.apply([ledger_open_card(503)], T0, T0 // 86_400_000)
    write_now(store, save_rules, LoyaltyRules(), 0)
    generous = msgspec.convert({"expiry": {"extension_days": 30}}, LoyaltyRules)
    write_now(store, save_rules, generous, 100)
    rules = CardRules(store)
    assert [rules.for_card(card).expiry.extension_days for card in (501, 502, 503)] == [30, 90, 90]
    assert load_rules(store, 200) == load_rules(store, 0) and load_rules(store, 100).version == 1


def ledger_open_card(card_id: int):
    """A card opened as CardService does without a guard: the network's."""
    from core.records import Op
    from core.results import OpKind

    return Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=CardType.PERSONAL)


def test_a_station_s_ancestry_is_read_once_and_a_new_station_is_seen_soon(ledger):
    store = ledger.store
    admin = tree(store)
    stations = StationTree(store)
    stations.UNKNOWN_TTL_S = 0.0
    assert stations.ancestry(1) == (1, 110, 100) and stations.domain(3) == 200
    assert stations.ancestry(4) == () and stations.domain(4) == 0
    admin.create_organisation(cli_actor(), 200, OrgKind.STATION, "B 4", org_id=4)
    assert stations.ancestry(4) == (4, 200)
