"""Generated business days: the real kernel with simulated channels.

Owns: a small network (stations, terminals, cards) that sells through the
ledger (core.ledger, whichever kernel it runs) and the channel simulators in
the order the server uses (server/channel_flow.py: hold, call the channel,
then capture or abort; a time-out reverses the channel side; voids and
reversals tell the channel), on a simulated clock; and the faults real
statements show, injected on demand, each with the difference it must cause.
Used by: tests, `python -m core.settlement generate` (demo data), the export
benchmark.
"""

import asyncio
import hashlib
import random

import msgspec

from core.channels import ChannelTimeout, SimulatedChannel, SimulatorSettings
from core.channels.base import ChannelOutcome
from core.channels.simulator import TIMEOUT_AFTER_ACT, TIMEOUT_BEFORE_ACT
from core.ledger import Ledger, business_day
from core.records import Op, Result
from core.results import AccountKind, CardType, Channel, OpKind, PlanFlag, ResultCode
from core.settlement.model import DifferenceKind, ItemKind
from core.settlement.money import MS_PER_DAY

UTC_OFFSET_MINUTES = 480
CHANNELS = (Channel.BANK_CARD, Channel.WECHAT_PAY, Channel.ALIPAY)
# Payments each generated channel remembers: the generator writes every
# day's statement after generating all the days, from what the channels
# remember, so it keeps more than the server's simulators (their bound
# until issue 7; beyond it the first days' statements would lose rows, so
# statement_file refuses a channel that forgot any).
GENERATED_PAYMENTS_MAX = 10_000
# Sales over all the generated days (`generate --days x --sales`). run_day
# sends its sales to the three channels in turn (a third each, rounded up
# each day) and adds at most one time-out a channel a day; the faults add
# at most two a channel. So one channel takes at most 25,000 / 3 + 366 + 366
# + 2 = 9,068 payments over 366 days: under GENERATED_PAYMENTS_MAX.
GENERATED_SALES_MAX = 25_000
GENERATED_DAYS_MAX = 366
# The same number of attempts server/channel_flow.py makes.
CHANNEL_UNDO_ATTEMPTS = 3
# The channel books a call this long after Tally sends it; Tally commits the
# outcome this long after sending.
CHANNEL_BOOKING_MS = 150
CAPTURE_MS = 300
CARD_ID_FIRST = 8_600_000_000_000_001
OPENING_BALANCE_MINOR = 10**9


class Expected(msgspec.Struct, frozen=True):
    """A fault injected, and the difference reconciliation must report."""

    fault: str
    channel: int
    day: int
    item: ItemKind
    reference: int
    kind: DifferenceKind


class SaleRecord(msgspec.Struct):
    txn_id: int
    station_id: int
    channel: int
    channel_minor: int
    day: int
    amount_minor: int = 0
    voided: bool = False

    @property
    def channel_only(self) -> bool:
        """Paid wholly by its channel and not voided: a refund of it goes to the channel."""
        return self.channel_minor == self.amount_minor > 0 and not self.voided


class Network:
    """Stations 1..stations, terminal 100+station at each, one card per
    station with fleet, personal and points money, three simulated channels."""

    def __init__(self, ledger: Ledger, stations: int = 3, seed: int = 1, utc_offset_minutes: int = UTC_OFFSET_MINUTES,
                 decline_ppm: int = 0, payments_max: int = GENERATED_PAYMENTS_MAX):
        self.ledger = ledger
        self.stations = stations
        self.random = random.Random(seed)
        self.utc_offset_minutes = utc_offset_minutes
        self.now_ms = 0
        self.serial = 0
        settings = SimulatorSettings(timeout_ms=0, seed=seed, decline_ppm=decline_ppm, payments_max=payments_max)
        self.channels = {int(channel): SimulatedChannel(channel.name.lower(), settings) for channel in CHANNELS}
        for simulator in self.channels.values():
            simulator.clock_ms = lambda: self.now_ms + CHANNEL_BOOKING_MS
        self.loop = asyncio.new_event_loop()
        self.sales: list[SaleRecord] = []
        self.expected: list[Expected] = []
        self.cards_opened = False

    def close(self):
        self.loop.close()

    # ------------------------------------------------------------ clock

    def start_of_day_ms(self, day: int) -> int:
        return day * MS_PER_DAY - self.utc_offset_minutes * 60_000

    def at(self, day: int, hour: int, minute: int = 0, second: int = 0, ms: int = 0):
        self.now_ms = self.start_of_day_ms(day) + ((hour * 60 + minute) * 60 + second) * 1000 + ms

    @property
    def day(self) -> int:
        return business_day(self.now_ms, self.utc_offset_minutes)

    # ------------------------------------------------------------ ledger

    def _apply(self, op: Op) -> Result:
        return self.ledger.apply([op], self.now_ms, self.day)[0]

    def _request(self, kind: int, station_id: int, **fields) -> Op:
        self.serial += 1
        op = Op(kind=kind, station_id=station_id, terminal_id=100 + station_id, operator_id=7, serial=self.serial, **fields)
        op.fingerprint = hashlib.blake2b(repr((kind, station_id, self.serial, sorted(fields.items()))).encode(), digest_size=16).digest()
        return op

    def open_cards(self):
        """One card per station, rich in every internal source."""
        for station in range(1, self.stations + 1):
            card_id = CARD_ID_FIRST + station
            result = self._apply(Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=CardType.COMPANY))
            assert result.code == ResultCode.APPROVED, ResultCode(result.code).name
            for kind in (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS):
                topup = self._apply(self._request(OpKind.TOPUP, station, card_id=card_id, account_kind=kind, amount=OPENING_BALANCE_MINOR))
                assert topup.code == ResultCode.APPROVED, ResultCode(topup.code).name
        self.cards_opened = True

    def _call(self, call):
        return self.loop.run_until_complete(call)

    def _undo_on_channel(self, channel: int, txn_id: int):
        for _ in range(CHANNEL_UNDO_ATTEMPTS):
            try:
                self._call(self.channels[channel].reverse(txn_id))
                return
            except ChannelTimeout:
                continue

    def _settle(self, pending: Result, channel: int, refund_of: int = 0) -> Result:
        """The second half of a PAY or REFUND with a channel part."""
        simulator = self.channels[channel]
        try:
            if refund_of:
                answer = self._call(simulator.refund(refund_of, pending.txn_id, pending.channel_amount))
            else:
                answer = self._call(simulator.pay(pending.txn_id, pending.channel_amount))
        except ChannelTimeout:
            if not refund_of:
                self._undo_on_channel(channel, pending.txn_id)
            self.now_ms += CAPTURE_MS
            return self._apply(Op(kind=OpKind.ABORT, ref_txn_id=pending.txn_id, abort_code=ResultCode.CHANNEL_UNAVAILABLE))
        self.now_ms += CAPTURE_MS
        if answer.outcome == ChannelOutcome.APPROVED:
            return self._apply(Op(kind=OpKind.CAPTURE, ref_txn_id=pending.txn_id))
        return self._apply(Op(kind=OpKind.ABORT, ref_txn_id=pending.txn_id, abort_code=ResultCode.CHANNEL_DECLINED))

    # ------------------------------------------------------------ operations

    def pay(self, station: int, amount_minor: int, channel: int = Channel.NONE, plan_flags: int = 0, card: bool = False) -> Result:
        """A sale: from the station's card by `plan_flags`, the rest (or all,
        without a card) through `channel`."""
        card_id = CARD_ID_FIRST + station if card else 0
        op = self._request(OpKind.PAY, station, card_id=card_id, amount=amount_minor, plan_flags=plan_flags if card else 0,
                           channel=channel, points_per_unit=100)
        result = self._apply(op)
        if result.code == ResultCode.PENDING:
            result = self._settle(result, channel)
        if result.code == ResultCode.APPROVED:
            self.sales.append(SaleRecord(result.txn_id, station, channel, result.channel_amount, self.day, result.amount))
        return result

    def void(self, sale: SaleRecord) -> Result:
        result = self._apply(self._request(OpKind.VOID, sale.station_id, ref_txn_id=sale.txn_id, points_per_unit=100))
        sale.voided = result.code == ResultCode.APPROVED
        if result.code == ResultCode.APPROVED and result.channel_amount > 0:
            self._undo_on_channel(sale.channel, sale.txn_id)
        return result

    def refund(self, sale: SaleRecord, amount_minor: int) -> Result:
        result = self._apply(self._request(OpKind.REFUND, sale.station_id, ref_txn_id=sale.txn_id, amount=amount_minor, points_per_unit=100))
        if result.code == ResultCode.PENDING:
            result = self._settle(result, sale.channel, refund_of=sale.txn_id)
        return result

    # ------------------------------------------------------------ a day

    def run_day(self, day: int, sales: int = 60, voids: int = 3, refunds: int = 3):
        """Random business between 08:00 and 22:00 local: sales through every
        channel and internal source, same-day voids, refunds of earlier
        sales, and the clean faults of real networks (time-outs the
        channel side recovers from, declines)."""
        if not self.cards_opened:
            self.at(day, 7)
            self.open_cards()
        earlier = [sale for sale in self.sales if sale.day < day and sale.channel_only]
        gap_ms = (14 * 3_600_000) // max(1, sales + voids + refunds + 4)
        self.at(day, 8)
        today = []
        for number in range(sales):
            self.now_ms += self.random.randint(gap_ms // 2, gap_ms)
            station = self.random.randint(1, self.stations)
            channel = CHANNELS[number % len(CHANNELS)]
            use_card = number % 4 == 0
            flags = self.random.choice((PlanFlag.USE_FLEET, PlanFlag.USE_PERSONAL, PlanFlag.USE_POINTS, 0))
            amount = self.random.randint(100, 50_000)
            result = self.pay(station, amount, channel, flags, card=use_card)
            if result.code == ResultCode.APPROVED and result.channel_amount > 0:
                today.append(self.sales[-1])
        for number in range(2):
            # A time-out the channel recovers from: it acted (or not), Tally reversed it.
            self.now_ms += gap_ms
            channel = CHANNELS[number % len(CHANNELS)]
            self.channels[channel].script("pay", TIMEOUT_AFTER_ACT if number == 0 else TIMEOUT_BEFORE_ACT)
            self.pay(1, 1234, channel)
        self.random.shuffle(today)
        for sale in today[:voids]:
            self.now_ms += gap_ms
            self.void(sale)
        for sale in self.random.sample(earlier, min(refunds, len(earlier))):
            self.now_ms += gap_ms
            self.refund(sale, max(1, sale.channel_minor // 2))

    # ------------------------------------------------------------ faults

    def _expect(self, fault: str, channel: int, day: int, item: ItemKind, reference: int, kind: DifferenceKind):
        self.expected.append(Expected(fault, int(channel), day, item, reference, kind))

    def fault_paid_after_timeout(self, station: int, channel: int, amount_minor: int = 8_800):
        """The channel took the payment, the answer timed out, and Tally's
        reversals never reached it: only on the channel's side."""
        simulator = self.channels[channel]
        simulator.script("pay", TIMEOUT_AFTER_ACT)
        simulator.script("reverse", *([TIMEOUT_BEFORE_ACT] * CHANNEL_UNDO_ATTEMPTS))
        result = self.pay(station, amount_minor, channel)
        assert result.code == ResultCode.CHANNEL_UNAVAILABLE
        self._expect("paid after time-out", channel, self.day, ItemKind.PAYMENT, result.txn_id, DifferenceKind.ONLY_CHANNEL)
        return result

    def fault_void_lost(self, station: int, channel: int, amount_minor: int = 4_200):
        """A same-day void whose reversal never reached the channel: we have
        it undone, the channel paid."""
        result = self.pay(station, amount_minor, channel)
        assert result.code == ResultCode.APPROVED
        self.now_ms += 60_000
        self.channels[channel].script("reverse", *([TIMEOUT_BEFORE_ACT] * CHANNEL_UNDO_ATTEMPTS))
        assert self.void(self.sales[-1]).code == ResultCode.APPROVED
        self._expect("void lost", channel, self.day, ItemKind.PAYMENT, result.txn_id, DifferenceKind.STATUS_DIFFERS)
        return result

    def fault_net_of_fee(self, station: int, channel: int, amount_minor: int = 20_000):
        """The statement shows the payment less the channel's fee."""
        result = self.pay(station, amount_minor, channel)
        assert result.code == ResultCode.APPROVED
        self.channels[channel].report_net_of_fee(result.txn_id)
        self._expect("amount net of fee", channel, self.day, ItemKind.PAYMENT, result.txn_id, DifferenceKind.AMOUNT_DIFFERS)
        return result

    def fault_missing_on_statement(self, station: int, channel: int, amount_minor: int = 3_300):
        """The channel's statement lacks a payment it approved."""
        result = self.pay(station, amount_minor, channel)
        assert result.code == ResultCode.APPROVED
        del self.channels[channel].payments[result.txn_id]
        self._expect("missing on statement", channel, self.day, ItemKind.PAYMENT, result.txn_id, DifferenceKind.ONLY_OURS)
        return result

    def fault_refund_after_timeout(self, sale: SaleRecord, amount_minor: int):
        """The channel refunded, its answer timed out, Tally aborted the refund."""
        self.channels[sale.channel].script("refund", TIMEOUT_AFTER_ACT)
        result = self.refund(sale, amount_minor)
        assert result.code == ResultCode.CHANNEL_UNAVAILABLE
        self._expect("refund after time-out", sale.channel, self.day, ItemKind.REFUND, result.txn_id, DifferenceKind.ONLY_CHANNEL)
        return result

    def refund_booked_late(self, sale: SaleRecord, amount_minor: int, delay_ms: int) -> Result:
        """A refund the channel books `delay_ms` after Tally: across midnight
        within the window it matches; beyond it, each day sees one side
        (the caller states what it expects)."""
        result = self._apply(self._request(OpKind.REFUND, sale.station_id, ref_txn_id=sale.txn_id, amount=amount_minor, points_per_unit=100))
        assert result.code == ResultCode.PENDING
        self.channels[sale.channel].book_refund_late(result.txn_id, delay_ms)
        result = self._settle(result, sale.channel, refund_of=sale.txn_id)
        assert result.code == ResultCode.APPROVED
        return result

    def statement_file(self, channel: int, day: int) -> bytes:
        simulator = self.channels[channel]
        if simulator.forgotten:
            raise ValueError(f"channel {simulator.name} forgot {simulator.forgotten} payments (it remembers "
                             f"{simulator.settings.payments_max}): its statements would lose rows; generate fewer sales")
        return simulator.statement_file(day, self.utc_offset_minutes)
