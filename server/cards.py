"""CardService: opening cards, top-ups, status, limits, station allow lists.

Owns: the RPC handlers of tally.v1.CardService.
"""

from core.commit import GroupCommitter
from core.ledger import Ledger
from core.promotions.model import CouponTrigger
from core.results import ResultCode
from server import answers, requests
from tally.v1 import card_pb2, card_pb2_grpc


class CardService(card_pb2_grpc.CardServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, promotions=None):
        self.ledger = ledger
        self.committer = committer
        # server/promotion_flow.PromotionFlow: coupons issued on top-up.
        self.promotions = promotions

    def _card_answer(self, code: int, card_id: int) -> card_pb2.CardAnswer:
        answer = card_pb2.CardAnswer(result=code, result_text=answers.result_text(code))
        found = self.ledger.card_as_of(card_id, self.committer.clock(), self.committer.utc_offset_minutes)
        if found is not None:
            answer.card.CopyFrom(answers.card_message(*found))
        return answer

    async def _change(self, op) -> card_pb2.CardAnswer:
        result = await self.committer.submit(op)
        return self._card_answer(result.code, op.card_id)

    async def OpenCard(self, request, context):
        return await self._change(requests.open_card_op(request))

    async def top_up(self, request):
        """TopUp's one code path, shared with the gateway stream."""
        result = await self.committer.submit(requests.topup_op(request))
        answer = answers.payment_answer(result, request.terminal)
        if self.promotions is not None:
            answer.coupons_issued.extend(await self.promotions.issue_coupons(CouponTrigger.TOPUP, result, request.terminal.station_id))
        return answer

    async def TopUp(self, request, context):
        return await self.top_up(request)

    async def SetCardStatus(self, request, context):
        return await self._change(requests.set_card_status_op(request))

    async def SetCardLimits(self, request, context):
        return await self._change(requests.set_card_limits_op(request))

    async def AllowStation(self, request, context):
        return await self._change(requests.allow_station_op(request))

    async def GetCard(self, request, context):
        requests.require_range(request.card_id, "card_id", 1, 2**64 - 1)
        found = self.ledger.card(request.card_id) is not None
        return self._card_answer(ResultCode.APPROVED if found else ResultCode.CARD_NOT_FOUND, request.card_id)
