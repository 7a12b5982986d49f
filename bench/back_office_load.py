"""Back-office writes beside a payment load, for `bench e2e --beside back-office`.

Owns: BackOfficeLoad, N threads writing through the back-office RPCs as
fast as they are answered: a promotion draft created, a card put on the
blacklist and taken off it, the loyalty rules saved again. Every one is a
durable change through the group commit's writer (issue 16: none runs on
the event loop), so Pay's p99 beside them shows whether they hold it up.
Used by: bench/e2e.py. The server runs without guards (the bench's own).
"""

import itertools
import time

import grpc

from bench.beside import BesideLoad
from tally.v1 import card_pb2, card_pb2_grpc, loyalty_pb2, loyalty_pb2_grpc, promotion_pb2, promotion_pb2_grpc

CALL_TIMEOUT_S = 30.0
# A card the payment load never uses (bench cards start at 1,000,000).
BLACKLISTED_CARD = 999_999
HOUR_MS = 3_600_000


class BackOfficeLoad(BesideLoad):
    def __init__(self, address: str, clients: int, rate_per_s: float | None = None):
        super().__init__(address, clients, rate_per_s)
        self.writes = 0
        self.errors = 0
        self._numbers = itertools.count(1)

    def summary(self) -> str:
        return f"back office: {self.writes} durable writes by {self.clients} clients, {self.errors} refused"

    def one_client(self):
        with grpc.insecure_channel(self.address) as channel:
            promotions = promotion_pb2_grpc.PromotionServiceStub(channel)
            risk = promotion_pb2_grpc.RiskServiceStub(channel)
            loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(channel)
            try:  # the card the blacklist writes name; another thread may have opened it
                card_pb2_grpc.CardServiceStub(channel).OpenCard(
                    card_pb2.OpenCardRequest(card_id=BLACKLISTED_CARD, card_type=card_pb2.PERSONAL_CARD), timeout=CALL_TIMEOUT_S)
            except grpc.RpcError:
                pass
            rules = loyalty.GetRules(loyalty_pb2.GetRulesRequest(), timeout=CALL_TIMEOUT_S).rules_json
            while not self.stopping.is_set():
                number = next(self._numbers)
                now_ms = time.time_ns() // 1_000_000
                calls = (
                    lambda: promotions.CreatePromotion(promotion_pb2.CreatePromotionRequest(by="bench", promotion=promotion_pb2.Promotion(
                        kind=promotion_pb2.PROMOTION_KIND_DISCOUNT, name=f"bench draft {number}", valid_from_ms=now_ms,
                        valid_to_ms=now_ms + HOUR_MS, discount=promotion_pb2.DiscountTerms(off_permille=10))),
                        timeout=CALL_TIMEOUT_S),
                    lambda: risk.AddBlacklistEntry(promotion_pb2.AddBlacklistEntryRequest(
                        card_id=BLACKLISTED_CARD, reason="bench", by="bench"), timeout=CALL_TIMEOUT_S),
                    lambda: risk.RemoveBlacklistEntry(promotion_pb2.RemoveBlacklistEntryRequest(
                        card_id=BLACKLISTED_CARD, by="bench"), timeout=CALL_TIMEOUT_S),
                    lambda: loyalty.SaveRules(loyalty_pb2.SaveRulesRequest(rules_json=rules), timeout=CALL_TIMEOUT_S),
                )
                for call in calls:
                    self.pace()
                    try:
                        call()
                        outcome = "writes"
                    except grpc.RpcError:
                        outcome = "errors"
                    self.count(outcome)
