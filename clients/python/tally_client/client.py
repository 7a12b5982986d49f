"""The terminal client, blocking: what a POS calls for every sale.

Owns: sending a prepared request until it is answered or its time is up
(same bytes, same serial on every attempt), arming and reversing lost
requests, sign-on and key rotation, and the background thread that drains
the reversal queue.
Used by: POS software; docs/integrators.md shows it at work.

    with TerminalClient("tally.example:50051", station_id=12, terminal_id=101, operator_id=7,
                        state_dir="/var/lib/pos/tally", secret=SECRET) as client:
        result = client.pay(25_000, card_id=6200000000000001, use_fleet=True)
        if result.approved: ...

Thread-safe: several threads may call one client.
"""

import logging
import threading
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


class TerminalClient(TerminalBase):
    def __init__(self, target: str, *, station_id: int, terminal_id: int, operator_id: int, state_dir: str,
                 secret: bytes | None = None, algorithm: str | None = None, settings: ClientSettings | None = None,
                 credentials: grpc.ChannelCredentials | None = None, channel: grpc.Channel | None = None,
                 serial_first: int = 1, on_reversal: Callable[[AnsweredReversal], None] | None = None,
                 drain: bool = True):
        """secret: the terminal's key from registration, for a server with
        --terminal-auth (the client signs on by itself when needed);
        on_reversal: called (from the drainer thread) with the answer of
        each queued Reverse; drain: run the background drainer (else call
        drain_reversals yourself)."""
        super().__init__(station_id=station_id, terminal_id=terminal_id, operator_id=operator_id,
                         state_dir=state_dir, secret=secret, algorithm=algorithm, settings=settings,
                         serial_first=serial_first)
        self._own_channel = channel is None
        self.channel = channel if channel is not None else transport.open_channel(target, self.settings, credentials)
        self._stubs: dict[str, Callable] = {}
        self._sign_on_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.on_reversal = on_reversal
        # Per entry: (next send time, sends so far), for the drainer's backoff.
        self._resend_at: dict[int, tuple[float, int]] = {}
        self._drainer = None
        if drain:
            self._drainer = threading.Thread(target=self._drain_forever, name=f"tally-reversals-{terminal_id}",
                                             daemon=True)
            self._drainer.start()

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "TerminalClient":
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop the drainer and release the terminal's files. Pending
        reversals stay on disk for the next client."""
        self._closed.set()
        self._wake.set()
        if self._drainer is not None:
            self._drainer.join()
        if self._own_channel:
            self.channel.close()
        self.close_state()

    # ------------------------------------------------------------ sign-on

    def sign_on(self) -> results.SignOnResult:
        """Get a new working key (TerminalKeyService.SignOn); the old key
        stops working at the server. Also key rotation: call it again."""
        if self.keys is None:
            raise RuntimeError("sign_on: this client has no secret (the server runs without --terminal-auth)")
        with self._sign_on_lock:
            return self._sign_on()

    def _sign_on(self) -> results.SignOnResult:
        serial = self.serials.next()
        keys = self.keys
        assert keys is not None, "sign_on needs the terminal's secret"
        body, metadata = keys.sign_on_request(serial, self.operator_id)
        prepared = Prepared(operations.SIGN_ON, body, serial, _proto.tally("KeySignOnAnswer"), armed=False)
        try:
            answer = self._send(prepared, fixed_metadata=metadata)
        except Lost as lost:
            raise lost.last or errors.Unavailable("sign-on: no answer") from None
        keys.accept(answer)
        return results.SignOnResult(answer.key_id, answer.expires_ms, serial)

    def _ensure_signed_on(self):
        if self.needs_sign_on():
            with self._sign_on_lock:
                if self.needs_sign_on():
                    self._sign_on()

    # ------------------------------------------------------------ payments

    def pay(self, amount_minor: int, *, card_id: int = 0, use_fleet: bool = False, use_personal: bool = False,
            use_points: bool = False, points_max: int = 0, channel: Channel = Channel.NONE,
            basket: Iterable[BasketLine] = (), coupon_codes: Iterable[str] = (),
            timeout_s: float | None = None) -> results.PaymentResult:
        return self._payment(timeout_s, operations.pay(amount_minor, card_id, use_fleet, use_personal, use_points,
                             points_max,
                                            channel, basket, coupon_codes))

    def pre_authorize(self, card_id: int, amount_minor: int, *, hold_timeout_s: int = 0,
                      timeout_s: float | None = None) -> results.PaymentResult:
        return self._payment(timeout_s, operations.pre_authorize(card_id, amount_minor, hold_timeout_s))

    def complete(self, txn_id: int, amount_minor: int, *, basket: Iterable[BasketLine] = (),
                 timeout_s: float | None = None) -> results.PaymentResult:
        return self._payment(timeout_s, operations.complete(txn_id, amount_minor, basket))

    def release(self, txn_id: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        return self._payment(timeout_s, operations.release(txn_id))

    def void(self, txn_id: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        return self._payment(timeout_s, operations.void(txn_id))

    def refund(self, txn_id: int, amount_minor: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        return self._payment(timeout_s, operations.refund(txn_id, amount_minor))

    def top_up(self, card_id: int, amount: int, *, account: CardAccount = CardAccount.PERSONAL,
               timeout_s: float | None = None) -> results.PaymentResult:
        return self._payment(timeout_s, operations.top_up(card_id, amount, account))

    def reverse(self, original_serial: int, *, timeout_s: float | None = None) -> results.PaymentResult:
        """Undo one of this terminal's requests by its serial. If this
        Reverse's own answer is lost, the queue resends it until answered
        (the result's outcome is then REVERSED)."""
        prepared = self.prepare(operations.reverse(original_serial))
        try:
            return results.payment_result(self._send(prepared, budget_s=timeout_s), prepared.serial)
        except Lost:
            self.queue_lost_reverse(prepared, original_serial)
            self._wake.set()
            return results.lost_payment(prepared.serial)

    def query(self, serial: int | None = None, *, txn_id: int = 0,
              timeout_s: float | None = None) -> results.QueryResult:
        """This terminal's request by serial (its stored answer), or a
        transaction by id."""
        request = operations.query(self.terminal_id if serial else 0, serial or 0, txn_id)
        return results.query_result(self._read(timeout_s, request), serial or 0)

    # ------------------------------------------------------------ loyalty

    def check_in(self, card_id: int, *, timeout_s: float | None = None) -> results.LoyaltyResult:
        return self._loyalty(timeout_s, operations.check_in(card_id))

    def complete_task(self, card_id: int, task: str, *, timeout_s: float | None = None) -> results.LoyaltyResult:
        return self._loyalty(timeout_s, operations.complete_task(card_id, task))

    def redeem_gift(self, card_id: int, gift_id: int, quantity: int = 1, *,
                    timeout_s: float | None = None) -> results.LoyaltyResult:
        return self._loyalty(timeout_s, operations.redeem_gift(card_id, gift_id, quantity))

    def get_points(self, card_id: int, *, timeout_s: float | None = None) -> results.PointsResult:
        return results.points_result(self._read(timeout_s, operations.get_points(card_id)))

    def list_catalogue(self, *, timeout_s: float | None = None) -> tuple[results.Gift, ...]:
        return results.gifts(self._read(timeout_s, operations.list_catalogue()))

    def quote_points(self, card_id: int, amount_minor: int, *, timeout_s: float | None = None) -> results.PointsQuote:
        request = operations.quote_points(card_id, self.station_id, amount_minor)
        return results.points_quote(self._read(timeout_s, request))

    # ------------------------------------------------------------ the call path

    def _payment(self, timeout_s: float | None, request: operations.Request) -> results.PaymentResult:
        answer, serial = self._armed(timeout_s, request)
        return results.lost_payment(serial) if answer is None else results.payment_result(answer, serial)

    def _loyalty(self, timeout_s: float | None, request: operations.Request) -> results.LoyaltyResult:
        answer, serial = self._armed(timeout_s, request)
        return results.lost_loyalty(serial) if answer is None else results.loyalty_result(answer, serial)

    def _armed(self, timeout_s: float | None, request: operations.Request):
        """(the answer, or None when it is lost and a Reverse is queued; the serial)."""
        prepared = self.prepare(request)
        entry = self.arm(prepared)
        try:
            answer = self._send(prepared, budget_s=timeout_s)
        except Lost:
            self._queue(entry)
            return None, prepared.serial
        except TallyRpcError:
            self.reversals.disarm(entry)  # refused, and no attempt of it can have run
            raise
        except BaseException:
            self._queue(entry)  # interrupted mid-call: its outcome is unknown
            raise
        self.reversals.disarm(entry)  # durable before the caller sees the answer
        return answer, prepared.serial

    def _read(self, timeout_s: float | None, request: operations.Request):
        prepared = self.prepare(request)
        try:
            return self._send(prepared, budget_s=timeout_s)
        except Lost as lost:
            raise lost.last or errors.Unavailable("no answer") from None

    def _queue(self, entry: PendingReversal):
        due = self.reverse_due(entry)
        log.warning("terminal %d: no answer to serial %d (%s): Reverse queued as serial %d", self.terminal_id,
                    due.original_serial, due.method, due.reverse_serial)
        self._wake.set()

    def _stub(self, prepared: Prepared) -> Callable:
        stub = self._stubs.get(prepared.method)
        if stub is None:
            stub = self._stubs[prepared.method] = self.channel.unary_unary(
                prepared.method, request_serializer=None, response_deserializer=prepared.answer_type.FromString)
        return stub

    def _send(self, prepared: Prepared, fixed_metadata: tuple | None = None, budget_s: float | None = None):
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
                metadata = fixed_metadata if fixed_metadata is not None else self._signed_metadata(prepared)
                return self._stub(prepared)(prepared.body, metadata=metadata,
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
            time.sleep(min(transport.backoff_s(attempt, settings), max(0.0, deadline - time.monotonic())))
            attempt += 1

    def _signed_metadata(self, prepared: Prepared) -> tuple | None:
        if self.keys is None:
            return None
        self._ensure_signed_on()
        return self.metadata(prepared)

    # ------------------------------------------------------------ the reversal queue

    def pending_reversals(self) -> list[PendingReversal]:
        return self.reversals.due()

    def drain_reversals(self, timeout_s: float | None = None) -> int:
        """Send every due Reverse now, until all are answered or timeout_s
        passes; the number still pending."""
        deadline = time.monotonic() + (self.settings.operation_timeout_s if timeout_s is None else timeout_s)
        while self.reversals.due() and time.monotonic() < deadline:
            self._drain_once(ignore_backoff=True, budget_s=max(0.05, deadline - time.monotonic()))
            if self.reversals.due():
                time.sleep(min(self.settings.backoff_max_s, max(0.0, deadline - time.monotonic())))
        return len(self.reversals)

    def _drain_forever(self):
        while not self._closed.is_set():
            self._wake.wait(self.settings.drain_interval_s)
            self._wake.clear()
            if not self._closed.is_set():
                try:
                    self._drain_once()
                except Exception:  # the drainer never dies: it logs and tries again
                    log.exception("terminal %d: reversal drainer", self.terminal_id)

    def _drain_once(self, ignore_backoff: bool = False, budget_s: float | None = None):
        with self._drain_lock:
            for entry in self.reversals.due():
                if self._closed.is_set() and not ignore_backoff:
                    return
                at, sends = self._resend_at.get(entry.original_serial, (0.0, 0))
                if not ignore_backoff and time.monotonic() < at:
                    continue
                self._send_reversal(entry, sends, budget_s)

    def _send_reversal(self, entry: PendingReversal, sends: int, budget_s: float | None):
        if entry.reverse_serial == 0:
            entry = self.reverse_due(entry)  # left armed by a client that died mid-call
        prepared = self.reverse_request(entry)
        try:
            answer = self._send(prepared, budget_s=min(budget_s or self.settings.attempt_timeout_s,
                                                       self.settings.attempt_timeout_s))
        except (Lost, TallyRpcError) as failure:
            wait = min(self.settings.reversal_backoff_max_s, self.settings.backoff_initial_s * 2**min(sends, 20))
            self._resend_at[entry.original_serial] = (time.monotonic() + wait, sends + 1)
            log.warning("terminal %d: Reverse of serial %d not answered yet: %s", self.terminal_id,
                        entry.original_serial, failure)
            return
        self._resend_at.pop(entry.original_serial, None)
        answered = self.reversals.answer(entry, answer.result, answer.result_text, answer.txn_id)
        if self.on_reversal is not None:
            self.on_reversal(answered)

