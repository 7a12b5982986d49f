"""PaymentService: what a terminal calls for every sale.

Owns: the RPC handlers of tally.v1.PaymentService. Each one validates and
translates (server/requests.py), queues the operation for the group commit,
settles a channel part if there is one (server/channel_flow.py) and answers
(server/answers.py).
"""

from core.commit import GroupCommitter
from core.ledger import Ledger
from core.records import Result
from core.results import OpKind, ResultCode
from server import answers, requests
from server.channel_flow import ChannelFlow
from server.errors import InvalidRequest, rpc
from server.settings import ServerSettings
from tally.v1 import payment_pb2, payment_pb2_grpc


class PaymentService(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, ledger: Ledger, committer: GroupCommitter, flow: ChannelFlow, settings: ServerSettings):
        self.ledger = ledger
        self.committer = committer
        self.flow = flow
        self.settings = settings

    async def _run(self, op) -> Result:
        result = await self.committer.submit(op)
        if result.code == ResultCode.PENDING:
            result = await self.flow.settle(result)
        return result

    @rpc
    async def Pay(self, request, context):
        result = await self._run(requests.pay_op(request, self.settings))
        return answers.payment_answer(result, request.terminal, request.basket, request.plan.channel)

    @rpc
    async def PreAuthorize(self, request, context):
        result = await self._run(requests.preauth_op(request, self.settings))
        return answers.payment_answer(result, request.terminal)

    @rpc
    async def Complete(self, request, context):
        result = await self._run(requests.complete_op(request, self.settings))
        return answers.payment_answer(result, request.terminal, request.basket)

    @rpc
    async def Release(self, request, context):
        result = await self._run(requests.by_txn_op(OpKind.RELEASE, request))
        return answers.payment_answer(result, request.terminal)

    @rpc
    async def Reverse(self, request, context):
        result = await self._run(requests.reverse_op(request))
        await self.flow.after_undo(result)
        return answers.payment_answer(result, request.terminal, channel=self._channel_of(result))

    @rpc
    async def Void(self, request, context):
        result = await self._run(requests.by_txn_op(OpKind.VOID, request))
        await self.flow.after_undo(result)
        return answers.payment_answer(result, request.terminal, channel=self._channel_of(result))

    @rpc
    async def Refund(self, request, context):
        result = await self._run(requests.refund_op(request))
        return answers.payment_answer(result, request.terminal, channel=self._channel_of(result))

    @rpc
    async def Query(self, request, context):
        if request.txn_id:
            record = self.ledger.txn(request.txn_id)
            if record is None:
                return payment_pb2.QueryAnswer(found=False)
            return payment_pb2.QueryAnswer(found=True, transaction=answers.transaction(record))
        if request.terminal_id == 0 or request.serial == 0:
            raise InvalidRequest("query", "give txn_id, or terminal_id and serial")
        entry = self.ledger.idem(request.terminal_id, request.serial)
        if entry is None:
            return payment_pb2.QueryAnswer(found=False)
        answer = payment_pb2.QueryAnswer(found=True, answer=answers.payment_answer(entry.result, channel=self._channel_of(entry.result)))
        record = self.ledger.txn(entry.result.txn_id) if entry.result.txn_id else None
        if record is not None and entry.result.kind != OpKind.TRANSFER:
            answer.transaction.CopyFrom(answers.transaction(record))
        return answer

    def _channel_of(self, result: Result) -> int:
        if result.channel_amount == 0 or result.txn_id == 0:
            return 0
        record = self.ledger.txn(result.txn_id)
        return record.channel if record is not None else 0
