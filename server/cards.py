"""CardService: opening cards, top-ups, status, limits, station allow lists.

Owns: the RPC handlers of tally.v1.CardService.

Domains (core/domains.py), as AdminService's card RPCs: a card is the
organisation's that opened it (admin_cards). OpenCard by a user records it
as the user's organisation's (or a given one the user sees) and enables the
card for that organisation's domain only, in the same commit; without a
guard (the demo, benchmarks) a card opened with no org_id has no owner: the
network's. SetCardStatus, SetCardLimits, AllowStation and GetCard answer a
user only for cards of its subtree, a terminal's GetCard only for cards
usable at its station; any other card is CARD_NOT_FOUND, as an unknown one.
"""

from core.admin.access import domain_of
from core.admin.model import CardOwner, pack
from core.commit import GroupCommitter
from core.errors import InvalidInput
from core.ledger import Ledger, business_day
from core.promotions.model import CouponTrigger
from core.records import Op, Result, u64_key
from core.results import OpKind, ResultCode
from server import answers, requests
from server.scope import card_seen, staff_scope
from tally.v1 import card_pb2, card_pb2_grpc


class CardService(card_pb2_grpc.CardServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, promotions=None):
        self.ledger = ledger
        self.store = ledger.store
        self.committer = committer
        # server/promotion_flow.PromotionFlow: coupons issued on top-up.
        self.promotions = promotions

    def _card_answer(self, code: int, card_id: int) -> card_pb2.CardAnswer:
        answer = card_pb2.CardAnswer(result=code, result_text=answers.result_text(code))
        found = None
        if code != ResultCode.CARD_NOT_FOUND:  # an unseen card shows nothing, as an unknown one
            found = self.ledger.card_as_of(card_id, self.committer.clock(), self.committer.utc_offset_minutes)
        if found is not None:
            answer.card.CopyFrom(answers.card_message(*found))
        return answer

    def _seen(self, card_id: int) -> bool:
        return card_seen(self.store, card_id)

    async def _change(self, op) -> card_pb2.CardAnswer:
        if not self._seen(op.card_id):
            return self._card_answer(ResultCode.CARD_NOT_FOUND, op.card_id)
        result = await self.committer.submit(op)
        return self._card_answer(result.code, op.card_id)

    async def OpenCard(self, request, context):
        op = requests.open_card_op(request)
        requests.require_range(request.org_id, "org_id", 0, 2**32 - 1)
        scope = staff_scope(self.store)
        if scope.everywhere and not request.org_id:
            result = await self.committer.submit(op)  # the network's card: no owner
            return self._card_answer(result.code, op.card_id)
        result = await self.committer.write(lambda txn: self._open_owned(txn, scope, request.org_id, op))
        return self._card_answer(result.code, op.card_id)

    def _open_owned(self, txn, scope, org_id: int, op: Op) -> Result:
        """Inside a change: the card, its owner record and its domain, all or
        none. A card id taken (the kernel's answer) changes nothing."""
        owner = scope.owner_for(txn, self.store, org_id)
        domain = domain_of(txn, self.store, owner)
        now_ms = self.committer.clock()
        day = business_day(now_ms, self.committer.utc_offset_minutes)
        (opened,) = self.ledger.apply_in(txn, [op], now_ms, day)
        if opened.code != ResultCode.APPROVED:
            return opened
        (enabled,) = self.ledger.apply_in(txn, [Op(kind=OpKind.ENABLE_DOMAIN, card_id=op.card_id, period=domain)], now_ms, day)
        if enabled.code != ResultCode.APPROVED:
            raise InvalidInput("card_id", f"the kernel refused the card's domain: {ResultCode(enabled.code).name}")
        txn.put(u64_key(op.card_id), pack(CardOwner(op.card_id, owner, issued_ms=now_ms, activated_ms=now_ms)),
                db=self.store.admin_cards)
        return opened

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
        op = requests.allow_station_op(request)
        if self._seen(op.card_id):
            # As AdminService's AllowCardStation: a station of the caller's subtree.
            staff_scope(self.store).require(op.station_id, f"station {op.station_id} not found")
        return await self._change(op)

    async def GetCard(self, request, context):
        requests.require_range(request.card_id, "card_id", 1, 2**64 - 1)
        found = self.ledger.card(request.card_id) is not None and self._seen(request.card_id)
        return self._card_answer(ResultCode.APPROVED if found else ResultCode.CARD_NOT_FOUND, request.card_id)
