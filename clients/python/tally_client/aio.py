"""The terminal client for asyncio: the same calls as client.py, awaited.

Owns: the asyncio call path (same bytes and serial on every attempt, arming
and reversing lost requests, sign-on) and the drainer task of the reversal
queue. The durable file writes (serial blocks, queue entries) run in a
worker thread, so an fsync never stalls the event loop.
Used by: asyncio POS software and station servers.

    async with AsyncTerminalClient("127.0.0.1:50051", station_id=1, terminal_id=101, operator_id=7,
                                   state_dir="/var/lib/pos/tally") as client:
        result = await client.pay(25_000, card_id=6200000000000001, use_fleet=True)

Create and use it on one event loop (gRPC's asyncio channels belong to one).
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import grpc

from tally_client import _proto, errors, operations, results, transport
from tally_client._terminal import Lost, Prepared, TerminalBase
from tally_client.codes import CardAccount, Channel
from tally_client.errors import TallyRpcError
from tally_client.results import BasketLine
from tally_client.reversals import AnsweredReversal, PendingReversal
from tally_client.settings import ClientSettings
from tally_client.transport import Disposition

log = logging.getLogger("tally_client")


class AsyncTerminalClient(TerminalBase):
    def __init__(self, target: str, *, station_id: int, terminal_id: int, operator_id: int, state_dir: str,
                 secret: bytes | None = None, algorithm: str | None = None, settings: ClientSettings | None = None,
                 credentials: grpc.ChannelCredentials | None = None, serial_first: int = 1,
                 on_reversal: Callable[[AnsweredReversal], None] | None = None, drain: bool = True):
        """The arguments of client.TerminalClient; start() (or `async with`)
        opens the channel and the drainer on the running loop."""
        super().__init__(station_id=station_id, terminal_id=terminal_id, operator_id=operator_id,
                         state_dir=state_dir, secret=secret, algorithm=algorithm, settings=settings,
                         serial_first=serial_first)
        self._target, self._credentials, self._drain = target, credentials, drain
        self.on_reversal = on_reversal
        self.channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Callable] = {}
        # Bound to the running loop at their first use.
        self._sign_on_lock, self._drain_lock, self._wake = asyncio.Lock(), asyncio.Lock(), asyncio.Event()
        self._drainer: asyncio.Task | None = None
        self._resend_at: dict[int, tuple[float, int]] = {}

    async def start(self) -> "AsyncTerminalClient":
        self.channel = transport.open_aio_channel(self._target, self.settings, self._credentials)
        if self._drain:
            self._drainer = asyncio.get_running_loop().create_task(self._drain_forever())
        return self

    async def __aenter__(self) -> "AsyncTerminalClient":
        return await self.start()

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        """Stop the drainer and release the terminal's files; pending
        reversals stay on disk for the next client."""
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
            self._drainer = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        self.close_state()

    # ------------------------------------------------------------ sign-on

    async def sign_on(self) -> results.SignOnResult:
        """A new working key (TerminalKeyService.SignOn); call again to rotate."""
        if self.keys is None:
            raise RuntimeError("sign_on: this client has no secret (the server runs without --terminal-auth)")
        async with self._sign_on_lock:
            return await self._sign_on()

    async def _sign_on(self) -> results.SignOnResult:
        serial = await asyncio.to_thread(self.serials.next)
        keys = self.keys
        assert keys is not None, "sign_on needs the terminal's secret"
        body, metadata = keys.sign_on_request(serial, self.operator_id)
        prepared = Prepared(operations.SIGN_ON, body, serial, _proto.tally("KeySignOnAnswer"), armed=False)
        try:
            answer = await self._send(prepared, fixed_metadata=metadata)
        except Lost as lost:
            raise lost.last or errors.Unavailable("sign-on: no answer") from None
        keys.accept(answer)
        return results.SignOnResult(answer.key_id, answer.expires_ms, serial)

    async def _ensure_signed_on(self):
        if self.needs_sign_on():
            async with self._sign_on_lock:
                if self.needs_sign_on():
                    await self._sign_on()

    # ------------------------------------------------------------ payments

    async def pay(self, amount_minor: int, *, card_id: int = 0, use_fleet: bool = False, use_personal: bool = False,
                  use_points: bool = False, points_max: int = 0, channel: Channel = Channel.NONE,
                  basket: Iterable[BasketLine] = (), coupon_codes: Iterable[str] = (),
                  timeout_s: float | None = None) -> results.PaymentResult:
        return await self._payment(timeout_s, operations.pay(amount_minor, card_id, use_fleet, use_personal, use_points,
                                                  points_max, channel, basket, coupon_codes))

    async def pre_authorize(self, card_id: int, amount_minor: int, *, hold_timeout_s: int = 0,
                            timeout_s: float | None = None) -> results.PaymentResult:
        return await self._payment(timeout_s, operations.pre_authorize(card_id, amount_minor, hold_timeout_s))

    async def complete(self, txn_id: int, amount_minor: int, *, basket: Iterable[BasketLine] = (),
                       timeout_s: float | None = None) -> results.PaymentResult:
        return await self._payment(timeout_s, operations.complete(txn_id, amount_minor, basket))

    async def release(self, txn_id: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        return await self._payment(timeout_s, operations.release(txn_id))

    async def void(self, txn_id: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        return await self._payment(timeout_s, operations.void(txn_id))

    async def refund(self, txn_id: int, amount_minor: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        return await self._payment(timeout_s, operations.refund(txn_id, amount_minor))

    async def top_up(self, card_id: int, amount: int, *, account: CardAccount = CardAccount.PERSONAL,
                     timeout_s: float | None = None) -> results.PaymentResult:
        return await self._payment(timeout_s, operations.top_up(card_id, amount, account))

    async def reverse(self, original_serial: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        prepared = await self._prepare(operations.reverse(original_serial))
        try:
            return results.payment_result(await self._send(prepared, budget_s=timeout_s), prepared.serial)
        except Lost:
            await asyncio.to_thread(self.queue_lost_reverse, prepared, original_serial)
            self._wake.set()
            return results.lost_payment(prepared.serial)

    async def query(self, serial: int | None = None, *, txn_id: int = 0,
                    timeout_s: float | None = None) -> results.QueryResult:
        request = operations.query(self.terminal_id if serial else 0, serial or 0, txn_id)
        return results.query_result(await self._read(timeout_s, request), serial or 0)

    # ------------------------------------------------------------ loyalty

    async def check_in(self, card_id: int, *, timeout_s: float | None = None) -> results.LoyaltyResult:
        return await self._loyalty(timeout_s, operations.check_in(card_id))

    async def complete_task(self, card_id: int, task: str, *, timeout_s: float | None = None) -> results.LoyaltyResult:
        return await self._loyalty(timeout_s, operations.complete_task(card_id, task))

    async def redeem_gift(self, card_id: int, gift_id: int, quantity: int = 1, *,
                          timeout_s: float | None = None) -> results.LoyaltyResult:
        return await self._loyalty(timeout_s, operations.redeem_gift(card_id, gift_id, quantity))

    async def get_points(self, card_id: int, *, timeout_s: float | None = None) -> results.PointsResult:
        return results.points_result(await self._read(timeout_s, operations.get_points(card_id)))

    async def list_catalogue(self, *, timeout_s: float | None = None) -> tuple[results.Gift, ...]:
        return results.gifts(await self._read(timeout_s, operations.list_catalogue()))

    async def quote_points(self, card_id: int, amount_minor: int, *,
                           timeout_s: float | None = None) -> results.PointsQuote:
        request = operations.quote_points(card_id, self.station_id, amount_minor)
        return results.points_quote(await self._read(timeout_s, request))

    # ------------------------------------------------------------ the call path

    async def _prepare(self, request: operations.Request) -> Prepared:
        # prepare() may reserve a block of serials (an fsync): off the loop.
        return await asyncio.to_thread(self.prepare, request)

    async def _payment(self, timeout_s: float | None, request: operations.Request) -> results.PaymentResult:
        answer, serial = await self._armed(timeout_s, request)
        return results.lost_payment(serial) if answer is None else results.payment_result(answer, serial)

    async def _loyalty(self, timeout_s: float | None, request: operations.Request) -> results.LoyaltyResult:
        answer, serial = await self._armed(timeout_s, request)
        return results.lost_loyalty(serial) if answer is None else results.loyalty_result(answer, serial)

    async def _armed(self, timeout_s: float | None, request: operations.Request):
        prepared = await self._prepare(request)
        entry = await asyncio.to_thread(self.arm, prepared)
        try:
            answer = await self._send(prepared, budget_s=timeout_s)
        except Lost:
            await self._queue(entry)
            return None, prepared.serial
        except TallyRpcError:
            await asyncio.to_thread(self.reversals.disarm, entry)  # refused, and no attempt of it can have run
            raise
        except BaseException:
            # Cancelled or interrupted mid-call: the outcome is unknown. The
            # entry is made due synchronously (a cancelled task cannot await).
            self.reverse_due(entry)
            raise
        await asyncio.to_thread(self.reversals.disarm, entry)
        return answer, prepared.serial

    async def _read(self, timeout_s: float | None, request: operations.Request):
        prepared = await self._prepare(request)
        try:
            return await self._send(prepared, budget_s=timeout_s)
        except Lost as lost:
            raise lost.last or errors.Unavailable("no answer") from None

    async def _queue(self, entry: PendingReversal):
        due = await asyncio.to_thread(self.reverse_due, entry)
        log.warning("terminal %d: no answer to serial %d (%s): Reverse queued as serial %d", self.terminal_id,
                    due.original_serial, due.method, due.reverse_serial)
        self._wake.set()

    def _stub(self, prepared: Prepared) -> Callable:
        stub = self._stubs.get(prepared.method)
        if stub is None:
            if self.channel is None:
                raise RuntimeError("AsyncTerminalClient: call start() (or use `async with`) first")
            stub = self._stubs[prepared.method] = self.channel.unary_unary(
                prepared.method, request_serializer=None, response_deserializer=prepared.answer_type.FromString)
        return stub

    async def _send(self, prepared: Prepared, fixed_metadata: tuple | None = None, budget_s: float | None = None):
        """The answer; Lost when the time is up or the server may have acted
        without answering; TallyRpcError when it refused the request and no
        earlier attempt may have reached it."""
        settings = self.settings
        deadline = time.monotonic() + (settings.operation_timeout_s if budget_s is None else budget_s)
        last, attempt, signed_on_again, maybe_applied = None, 0, False, False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Lost(last)
            key_id = self.keys.key_id if self.keys is not None else 0
            try:
                metadata = fixed_metadata if fixed_metadata is not None else await self._signed_metadata(prepared)
                return await self._stub(prepared)(prepared.body, metadata=metadata,
                                                  timeout=min(settings.attempt_timeout_s, remaining))
            except grpc.RpcError as error:
                last, kind = errors.error_of(error), transport.disposition(error.code())
            except TallyRpcError as error:  # the sign-on this attempt needed failed: nothing was sent
                last, kind = error, transport.disposition_of(error)
            if kind is Disposition.REFUSED:
                if (isinstance(last, errors.Unauthenticated) and fixed_metadata is None and self.keys is not None
                        and not signed_on_again):
                    # The working key expired or was dropped: sign on, then the same bytes again.
                    signed_on_again = True
                    self.keys.forget(key_id)
                    continue
                raise Lost(last) if maybe_applied else last
            maybe_applied = maybe_applied or last.status not in transport.NOT_RUN
            if kind is Disposition.LOST:
                raise Lost(last)
            await asyncio.sleep(min(transport.backoff_s(attempt, settings), max(0.0, deadline - time.monotonic())))
            attempt += 1

    async def _signed_metadata(self, prepared: Prepared) -> tuple | None:
        if self.keys is None:
            return None
        await self._ensure_signed_on()
        return self.metadata(prepared)

    # ------------------------------------------------------------ the reversal queue

    def pending_reversals(self) -> list[PendingReversal]:
        return self.reversals.due()

    async def drain_reversals(self, timeout_s: float | None = None) -> int:
        """Send every due Reverse now, until all are answered or timeout_s
        passes; the number still pending."""
        deadline = time.monotonic() + (self.settings.operation_timeout_s if timeout_s is None else timeout_s)
        while self.reversals.due() and time.monotonic() < deadline:
            await self._drain_once(ignore_backoff=True, budget_s=max(0.05, deadline - time.monotonic()))
            if self.reversals.due():
                await asyncio.sleep(min(self.settings.backoff_max_s, max(0.0, deadline - time.monotonic())))
        return len(self.reversals)

    async def _drain_forever(self):
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.drain_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._drain_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("terminal %d: reversal drainer", self.terminal_id)

    async def _drain_once(self, ignore_backoff: bool = False, budget_s: float | None = None):
        async with self._drain_lock:
            for entry in self.reversals.due():
                at, sends = self._resend_at.get(entry.original_serial, (0.0, 0))
                if not ignore_backoff and time.monotonic() < at:
                    continue
                await self._send_reversal(entry, sends, budget_s)

    async def _send_reversal(self, entry: PendingReversal, sends: int, budget_s: float | None):
        if entry.reverse_serial == 0:
            entry = await asyncio.to_thread(self.reverse_due, entry)  # left armed by a client that died mid-call
        prepared = self.reverse_request(entry)
        try:
            answer = await self._send(prepared, budget_s=min(budget_s or self.settings.attempt_timeout_s,
                                                             self.settings.attempt_timeout_s))
        except (Lost, TallyRpcError) as failure:
            wait = min(self.settings.reversal_backoff_max_s, self.settings.backoff_initial_s * 2**min(sends, 20))
            self._resend_at[entry.original_serial] = (time.monotonic() + wait, sends + 1)
            log.warning("terminal %d: Reverse of serial %d not answered yet: %s", self.terminal_id,
                        entry.original_serial, failure)
            return
        self._resend_at.pop(entry.original_serial, None)
        answered = await asyncio.to_thread(self.reversals.answer, entry, answer.result, answer.result_text,
                                           answer.txn_id)
        if self.on_reversal is not None:
            self.on_reversal(answered)
