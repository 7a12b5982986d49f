"""PaymentService: what a terminal calls for every sale.

Owns: the RPC handlers of tally.v1.PaymentService. Each one validates and
translates (server/requests.py), queues the operation for the group commit,
settles a channel part if there is one (server/channel_flow.py) and answers
(server/answers.py).

Each operation is a plain method (`pay`, `pre_authorize`, ...) taking the
request message and returning the answer message or raising (server/errors.py
maps the exception to a status). The unary RPCs (`Pay`, ...) and the gateway
stream (server/stream.py) both call these methods: one code path, so the
same validation, idempotency and result codes on both transports.
"""

import asyncio

import msgspec

from core.admin.cards import basket_refusal
from core.commit import GroupCommitter
from core.ledger import Ledger
from core.promotions.model import CouponTrigger
from core.records import RESULT_REPLAYED, Op, Result
from core.results import OpKind, ResultCode
from server import answers, requests
from server.channel_flow import ChannelFlow
from server.payline import PayLine
from core.errors import InvalidInput
from server.settings import ServerSettings
from tally.v1 import payment_pb2, payment_pb2_grpc


class PaymentService(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, flow: ChannelFlow, settings: ServerSettings, rules=None,
                 promotions=None):
        self.ledger = ledger
        self.committer = committer
        self.flow = flow
        self.settings = settings
        # The loyalty rules (server/loyalty_service.RulesHolder); None: base rate only.
        self.rules = rules
        # Promotions and risk (server/promotion_flow.PromotionFlow); None: Pay
        # prices nothing and checks no limits beyond the card's own.
        self.promotions = promotions
        # lot validity days -> the settings ops are built with.
        self._op_settings = {settings.lot_validity_days: settings}
        # Plain Pays, compiled (server/payline.py): the stream's, and the
        # unary ones server/rpc.py hands over as wire bytes (pay_wire).
        self.payline = PayLine(self)

    def op_settings(self, station_id: int) -> ServerSettings:
        """The settings a station's ops are built with: the points lots'
        validity comes from the loyalty rules of its domain, when there are
        rules."""
        if self.rules is None:
            return self.settings
        days = self.rules.rules_at(station_id).expiry.lot_validity_days
        found = self._op_settings.get(days)
        if found is None:
            found = self._op_settings[days] = msgspec.structs.replace(self.settings, lot_validity_days=days)
        return found

    def _quote(self, basket, amount_minor: int, card_id: int, station_id: int):
        if self.rules is None:
            return None
        return self.rules.quote(self.ledger, basket, amount_minor, card_id, station_id, self.committer.clock())

    # ------------------------------------------------------------ operations

    async def _run(self, op) -> Result:
        return await self._settled(await self.committer.submit(op))

    async def _settled(self, result: Result) -> Result:
        """The final answer; a retry's stays marked replayed once its
        channel settles (BatchUpload labels its items by the mark)."""
        if result.code != ResultCode.PENDING:
            return result
        final = await self.flow.settle(result)
        return msgspec.structs.replace(final, final=final.final | RESULT_REPLAYED) if result.replayed else final

    async def pay(self, request):
        base = requests.pay_op(request, self.op_settings(request.terminal.station_id))  # validates the request before anything reads it
        refusal = basket_refusal(self.ledger.store, request.plan.card_id, request.basket)
        if refusal:
            declined = self.ledger.sale_declined(ResultCode.GOODS_NOT_ALLOWED, OpKind.PAY, request.plan.card_id, request.amount_minor,
                                                 request.terminal.station_id, self.committer.clock(), self.committer.utc_offset_minutes)
            return answers.payment_answer(declined, request.terminal, request.basket, request.plan.channel, declined_by=refusal)
        if self.promotions is None:
            quote = self._quote(request.basket, request.amount_minor, request.plan.card_id, request.terminal.station_id)
            op = base if quote is None else msgspec.structs.replace(base, earn_points=quote.total)
            result = await self._run(op)
            return answers.payment_answer(result, request.terminal, request.basket, request.plan.channel, quote=quote)
        quotes = []

        def build_op(amount_minor: int, lines) -> Op:
            """The PAY for what is left after discounts, earning on it."""
            quote = self._quote(lines, amount_minor, request.plan.card_id, request.terminal.station_id)
            quotes.append(quote)
            earn = requests.base_points(amount_minor, self.op_settings(request.terminal.station_id)) if quote is None else quote.total
            return msgspec.structs.replace(base, amount=amount_minor, earn_points=earn)

        outcome = await self.promotions.pay(request, build_op)
        result = await self._settled(outcome.result)
        answer = answers.payment_answer(
            result, request.terminal, request.basket, request.plan.channel, quote=quotes[-1] if quotes else None,
            promotions=self.promotions.applied(result) if outcome.priced else (), declined_by=outcome.declined_by,
        )
        answer.coupons_issued.extend(await self.promotions.issue_coupons(CouponTrigger.PURCHASE, result, request.terminal.station_id))
        return answer

    async def pre_authorize(self, request):
        result = await self._run(requests.preauth_op(request, self.op_settings(request.terminal.station_id)))
        return answers.payment_answer(result, request.terminal)

    async def complete(self, request):
        op = requests.complete_op(request, self.op_settings(request.terminal.station_id))  # validates the request before anything reads it
        hold = self.ledger.txn(request.txn_id)
        quote = self._quote(request.basket, request.amount_minor, hold.card_id if hold else 0, request.terminal.station_id)
        if quote is not None:
            op = msgspec.structs.replace(op, earn_points=quote.total)
        result = await self._run(op)
        return answers.payment_answer(result, request.terminal, request.basket, quote=quote)

    async def release(self, request):
        result = await self._run(requests.by_txn_op(OpKind.RELEASE, request))
        return answers.payment_answer(result, request.terminal)

    async def reverse(self, request):
        result = await self._run(requests.reverse_op(request, self.op_settings(request.terminal.station_id)))
        await asyncio.shield(self.flow.after_undo(result))
        return answers.payment_answer(result, request.terminal, channel=self._channel_of(result))

    async def void(self, request):
        result = await self._run(requests.by_txn_op(OpKind.VOID, request, self.op_settings(request.terminal.station_id)))
        # Shielded: a terminal that hangs up must not cancel the channel's reversal.
        await asyncio.shield(self.flow.after_undo(result))
        return answers.payment_answer(result, request.terminal, channel=self._channel_of(result))

    async def refund(self, request):
        result = await self._run(requests.refund_op(request, self.op_settings(request.terminal.station_id)))
        return answers.payment_answer(result, request.terminal, channel=self._channel_of(result))

    async def query(self, request):
        if request.txn_id:
            record = self.ledger.txn_as_of(request.txn_id, self.committer.clock())
            if record is None:
                return payment_pb2.QueryAnswer(found=False)
            return payment_pb2.QueryAnswer(found=True, transaction=answers.transaction(record))
        if request.terminal_id == 0 or request.serial == 0:
            raise InvalidInput("query", "give txn_id, or terminal_id and serial")
        entry = self.ledger.idem(request.terminal_id, request.serial)
        if entry is None:
            return payment_pb2.QueryAnswer(found=False)
        answer = payment_pb2.QueryAnswer(found=True, answer=answers.payment_answer(entry.result, channel=self._channel_of(entry.result)))
        record = self.ledger.txn_as_of(entry.result.txn_id, self.committer.clock()) if entry.result.txn_id else None
        if record is not None and entry.result.kind != OpKind.TRANSFER:
            answer.transaction.CopyFrom(answers.transaction(record))
        return answer

    # ------------------------------------------------------------ unary RPCs

    async def Pay(self, request, context):
        return await self.pay(request)

    async def pay_wire(self, body: bytes, message=None):
        """Pay from its wire bytes when it is plain (server/payline.py):
        (answer, outcome label), or None for the reference path. message:
        the body's fastpay.PayMessage, when the terminal guard read it."""
        return await self.payline.one(body, message)

    async def PreAuthorize(self, request, context):
        return await self.pre_authorize(request)

    async def Complete(self, request, context):
        return await self.complete(request)

    async def Release(self, request, context):
        return await self.release(request)

    async def Reverse(self, request, context):
        return await self.reverse(request)

    async def Void(self, request, context):
        return await self.void(request)

    async def Refund(self, request, context):
        return await self.refund(request)

    async def Query(self, request, context):
        return await self.query(request)

    def _channel_of(self, result: Result) -> int:
        if result.channel_amount == 0 or result.txn_id == 0:
            return 0
        record = self.ledger.txn(result.txn_id)
        return record.channel if record is not None else 0
