"""The second half of a payment or refund that has an external channel part.

Owns: calling the channel after the internal part is held and committed,
then posting (CAPTURE) or releasing (ABORT) in a second commit; telling the
channel about voids and reversals; settling, at start-up, whatever a crash
left waiting for a channel.
Used by: server/payments.py, server/app.py (recovery).

A channel is never called inside a write transaction. A channel that times
out leaves no money moved: ours is released at once and its side reversed
in the background (retried, then left to reconciliation), so a terminal
waits at most --channel-timeout-ms for the channel plus a commit: it should
set its own deadline to that plus a margin of a second or two.
"""

import asyncio
import logging

from core import limits
from core.channels import ChannelAnswer, ChannelOutcome, ChannelTimeout
from core.commit import GroupCommitter
from core.ledger import Ledger
from core.records import Op, Result
from core.results import OpKind, ResultCode, TxnFlag

log = logging.getLogger(__name__)

# Attempts to tell a channel about a reversal or void before leaving it to
# reconciliation (the channel's statement will show the difference).
CHANNEL_UNDO_ATTEMPTS = 3


class ChannelFlow:
    def __init__(self, ledger: Ledger, committer: GroupCommitter, channels: dict, channel_timeout_ms: int,
                 lot_validity_days=lambda: limits.LOT_VALIDITY_DAYS_DEFAULT):
        self.ledger = ledger
        self.committer = committer
        self.channels = channels
        self.timeout_s = channel_timeout_ms / 1000
        # A capture posts the sale's earned points: their lot gets the
        # validity in force (a callable: the loyalty rules can change it),
        # like a sale paid without a channel.
        self.lot_validity_days = lot_validity_days
        # txn_id -> the task settling it; a retry of a waiting request joins it.
        self.inflight: dict[int, asyncio.Task] = {}
        # Reversals on a channel still being retried after the answer went out.
        self.undoing: set[asyncio.Task] = set()

    async def settle(self, pending: Result) -> Result:
        """The final answer of a request that came back PENDING."""
        task = self.inflight.get(pending.txn_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._settle(pending.txn_id))
            self.inflight[pending.txn_id] = task
            task.add_done_callback(lambda _: self.inflight.pop(pending.txn_id, None))
        # Shielded: a terminal that hangs up must not leave the hold open.
        return await asyncio.shield(task)

    async def _settle(self, txn_id: int) -> Result:
        record = self.ledger.txn(txn_id)
        channel = self.channels[record.channel]
        try:
            if record.kind == OpKind.REFUND:
                answer = await self._call(channel.refund(record.ref_txn_id, txn_id, record.held_channel))
            else:
                answer = await self._call(channel.pay(txn_id, record.held_channel))
        except ChannelTimeout as error:
            log.warning("channel %s timed out on txn %d: %s", channel.name, txn_id, error)
            if record.kind != OpKind.REFUND:
                self.undo_later(record.channel, txn_id)
            return await self._finish(Op(kind=OpKind.ABORT, ref_txn_id=txn_id, abort_code=ResultCode.CHANNEL_UNAVAILABLE))
        if answer.outcome == ChannelOutcome.APPROVED:
            result = await self._finish(Op(kind=OpKind.CAPTURE, ref_txn_id=txn_id, lot_validity_days=self.lot_validity_days()))
            if result.code == ResultCode.ALREADY_REVERSED:
                # The terminal reversed the payment while the channel worked.
                self.undo_later(record.channel, txn_id)
            return result
        return await self._finish(Op(kind=OpKind.ABORT, ref_txn_id=txn_id, abort_code=ResultCode.CHANNEL_DECLINED))

    async def _call(self, call) -> ChannelAnswer:
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except (asyncio.TimeoutError, ConnectionError, OSError) as error:
            raise ChannelTimeout(str(error) or "no answer") from error

    async def _finish(self, op: Op) -> Result:
        """Commit CAPTURE or ABORT; its result is the original request's final
        answer. If another process settled it first, read what it stored."""
        result = await self.committer.submit(op, bypass_limit=True)
        if result.code in (ResultCode.HOLD_CLOSED, ResultCode.WRONG_TRANSACTION_KIND):
            record = self.ledger.txn(op.ref_txn_id)
            return self.ledger.idem(record.terminal_id, record.serial).result
        return result

    async def undo_on_channel(self, channel_id: int, txn_id: int, attempts: int = CHANNEL_UNDO_ATTEMPTS,
                              final: bool = True) -> bool:
        """Reverse a payment on its channel; retried, then (final) left to
        reconciliation if the channel stays away. Whether it was reversed."""
        channel = self.channels[channel_id]
        for attempt in range(1, attempts + 1):
            try:
                await self._call(channel.reverse(txn_id))
                return True
            except ChannelTimeout:
                log.warning("channel %s: reversal of txn %d failed (attempt %d)", channel.name, txn_id, attempt)
        if final:
            log.error("channel %s: txn %d could not be reversed; reconciliation will show it", channel.name, txn_id)
        return False

    def undo_later(self, channel_id: int, txn_id: int, attempts: int = CHANNEL_UNDO_ATTEMPTS):
        """undo_on_channel in the background: nobody's answer waits for it."""
        task = asyncio.get_running_loop().create_task(self.undo_on_channel(channel_id, txn_id, attempts))
        self.undoing.add(task)
        task.add_done_callback(self.undoing.discard)

    async def after_undo(self, result: Result):
        """A void or reversal approved on our side: tell the channel, waiting
        for one attempt at most (the terminal's answer is bounded by the
        channel time-out); further attempts go on in the background."""
        if result.code == ResultCode.APPROVED and result.channel_amount > 0:
            record = self.ledger.txn(result.txn_id)
            if not await self.undo_on_channel(record.channel, record.txn_id, attempts=1, final=False):
                self.undo_later(record.channel, record.txn_id, CHANNEL_UNDO_ATTEMPTS - 1)

    async def recover(self):
        """Settle everything a crash left waiting for a channel, before serving."""
        txn_ids = self.ledger.pending_txn_ids()
        for txn_id in txn_ids:
            record = self.ledger.txn(txn_id)
            if record.kind == OpKind.PAY and not record.flags & TxnFlag.REVERSED:
                answer = await self._query(record.channel, txn_id)
                if answer is not None and answer.outcome == ChannelOutcome.APPROVED and not answer.reversed:
                    await self._finish(Op(kind=OpKind.CAPTURE, ref_txn_id=txn_id, lot_validity_days=self.lot_validity_days()))
                    continue
                await self.undo_on_channel(record.channel, txn_id)
                await self._finish(Op(kind=OpKind.ABORT, ref_txn_id=txn_id, abort_code=ResultCode.CHANNEL_UNAVAILABLE))
            elif record.kind == OpKind.PAY:
                await self.undo_on_channel(record.channel, txn_id)
                await self._finish(Op(kind=OpKind.ABORT, ref_txn_id=txn_id, abort_code=ResultCode.ALREADY_REVERSED))
            else:
                # A refund: asking again is safe, the channel keys it by our id.
                await self._settle(txn_id)
        if txn_ids:
            log.info("recovered %d transactions left waiting for a channel", len(txn_ids))

    async def _query(self, channel_id: int, txn_id: int) -> ChannelAnswer | None:
        try:
            return await self._call(self.channels[channel_id].query(txn_id))
        except ChannelTimeout:
            return None
