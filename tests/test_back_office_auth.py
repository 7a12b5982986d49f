"""`python -m server --back-office-auth` on 127.0.0.1: the back-office RPCs of
promotions, risk, loyalty, settlement and cards need an AdminService token of
an allowed role and a `by` that is the token's user; terminal and customer
RPCs do not."""

import time

import grpc
import pytest

from tally.v1 import (
    card_pb2,
    card_pb2_grpc,
    common_pb2,
    loyalty_pb2,
    loyalty_pb2_grpc,
    promotion_pb2,
    promotion_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from tests.support import ServerProcess
from tests.test_admin_service import AdminClient, refused, seed_directory

P = promotion_pb2
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("back-office")
    data_dir = str(base / "data")
    seed_directory(data_dir).store.close()
    process = ServerProcess(data_dir, "--back-office-auth", demo=False).start()
    yield process
    process.stop()


def bearer(guarded_server, username: str) -> tuple:
    return (("authorization", f"Bearer {AdminClient(guarded_server.channel(), username).token}"),)


def discount(by: str) -> P.CreatePromotionRequest:
    now_ms = time.time_ns() // 1_000_000
    promotion = P.Promotion(kind=P.PROMOTION_KIND_DISCOUNT, name="ten off", valid_from_ms=now_ms - HOUR_MS,
                            valid_to_ms=now_ms + HOUR_MS, discount=P.DiscountTerms(off_permille=100))
    return P.CreatePromotionRequest(promotion=promotion, by=by)


def test_changing_promotions_needs_a_token_of_an_allowed_role(guarded_server):
    promotions = promotion_pb2_grpc.PromotionServiceStub(guarded_server.channel())
    assert "no token" in refused(lambda: promotions.CreatePromotion(discount("north-ops")), grpc.StatusCode.UNAUTHENTICATED)
    assert "unknown or ended token" in refused(
        lambda: promotions.CreatePromotion(discount("north-ops"), metadata=(("authorization", "Bearer made-up"),)),
        grpc.StatusCode.UNAUTHENTICATED)
    auditor = bearer(guarded_server, "auditor")
    assert "needs the role ADMINISTRATOR, OPERATIONS; user:auditor has AUDITOR" in refused(
        lambda: promotions.CreatePromotion(discount("auditor"), metadata=auditor), grpc.StatusCode.PERMISSION_DENIED)
    operations = bearer(guarded_server, "north-ops")
    assert "by is 'root' but the token is user:north-ops's" in refused(
        lambda: promotions.CreatePromotion(discount("root"), metadata=operations), grpc.StatusCode.PERMISSION_DENIED)
    created = promotions.CreatePromotion(discount("north-ops"), metadata=operations).promotion
    assert created.promotion_id > 0
    # Four eyes between people: the author cannot approve under another name.
    promotions.SubmitPromotion(P.StepRequest(promotion_id=created.promotion_id, by="north-ops"), metadata=operations)
    refused(lambda: promotions.ApprovePromotion(P.StepRequest(promotion_id=created.promotion_id, by="root"), metadata=operations),
            grpc.StatusCode.PERMISSION_DENIED)
    root = bearer(guarded_server, "root")
    approved = promotions.ApprovePromotion(P.StepRequest(promotion_id=created.promotion_id, by="root"), metadata=root).promotion
    assert approved.stage == P.PROMOTION_STAGE_APPROVED
    # Reading is for every role; without a token, for nobody.
    listed = promotions.ListPromotions(P.ListPromotionsRequest(), metadata=auditor).promotions
    assert created.promotion_id in [answer.promotion.promotion_id for answer in listed]
    refused(lambda: promotions.ListPromotions(P.ListPromotionsRequest()), grpc.StatusCode.UNAUTHENTICATED)
    assert any("call refused: /tally.v1.PromotionService/CreatePromotion PERMISSION_DENIED" in line
               for line in guarded_server.log_lines)


def test_risk_and_loyalty_changes_are_guarded_and_customer_rpcs_are_not(guarded_server):
    risk = promotion_pb2_grpc.RiskServiceStub(guarded_server.channel())
    loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(guarded_server.channel())
    promotions = promotion_pb2_grpc.PromotionServiceStub(guarded_server.channel())
    operations = bearer(guarded_server, "north-ops")
    # A card of north-ops' own region (a blacklist entry is its card's organisation's).
    cards = card_pb2_grpc.CardServiceStub(guarded_server.channel())
    cards.OpenCard(card_pb2.OpenCardRequest(card_id=1234, card_type=card_pb2.PERSONAL_CARD), metadata=operations)
    entry = P.AddBlacklistEntryRequest(card_id=1234, reason="stolen", by="north-ops")
    refused(lambda: risk.AddBlacklistEntry(entry), grpc.StatusCode.UNAUTHENTICATED)
    desk = bearer(guarded_server, "desk")
    refused(lambda: risk.AddBlacklistEntry(entry, metadata=desk), grpc.StatusCode.PERMISSION_DENIED)
    assert risk.AddBlacklistEntry(entry, metadata=operations).entry.card_id == 1234
    refused(lambda: loyalty.SetTimeZone(loyalty_pb2.SetTimeZoneRequest(card_id=1234, utc_offset_minutes=60)),
            grpc.StatusCode.UNAUTHENTICATED)
    # A customer's dry run and balance enquiry are answered without a token
    # (an RpcError here would fail the test).
    priced = promotions.PriceBasket(P.PriceBasketRequest(amount_minor=1_000, station_id=12))
    assert priced.discount_minor >= 0
    assert loyalty.GetPoints(loyalty_pb2.GetPointsRequest(card_id=1234)).result in (common_pb2.APPROVED, common_pb2.CARD_NOT_FOUND)


def test_settlement_and_card_changes_are_guarded(guarded_server):
    settlement = settlement_pb2_grpc.SettlementServiceStub(guarded_server.channel())
    cards = card_pb2_grpc.CardServiceStub(guarded_server.channel())
    refused(lambda: settlement.ListDifferences(settlement_pb2.ListDifferencesRequest()), grpc.StatusCode.UNAUTHENTICATED)
    refused(lambda: settlement.ListDifferences(settlement_pb2.ListDifferencesRequest(), metadata=bearer(guarded_server, "desk")),
            grpc.StatusCode.PERMISSION_DENIED)
    settlement.ListDifferences(settlement_pb2.ListDifferencesRequest(), metadata=bearer(guarded_server, "auditor"))

    def statement(by: str):
        header = settlement_pb2.StatementHeader(channel=common_pb2.WECHAT_PAY, file_name="w.csv", by=by)
        return iter([settlement_pb2.ImportStatementChunk(header=header, data=b"not a statement")])

    # A client stream: the token before the first message, `by` in its header.
    refused(lambda: settlement.ImportStatement(statement("root")), grpc.StatusCode.UNAUTHENTICATED)
    root = bearer(guarded_server, "root")
    assert "by is 'north-ops'" in refused(lambda: settlement.ImportStatement(statement("north-ops"), metadata=root),
                                          grpc.StatusCode.PERMISSION_DENIED)
    imported = settlement.ImportStatement(statement("root"), metadata=root)
    assert imported.result == settlement_pb2.REJECTED, "let through, and the file itself judged"
    assert imported.org_id == 1, "a statement is the headquarters' merchant account"
    opening = card_pb2.OpenCardRequest(card_id=88_000_001, card_type=card_pb2.PERSONAL_CARD)
    refused(lambda: cards.OpenCard(opening), grpc.StatusCode.UNAUTHENTICATED)
    assert cards.OpenCard(opening, metadata=bearer(guarded_server, "desk")).result == common_pb2.APPROVED
    assert cards.GetCard(card_pb2.GetCardRequest(card_id=88_000_001)).result == common_pb2.APPROVED, "an enquiry needs no token"
