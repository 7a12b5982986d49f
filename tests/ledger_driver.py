"""A terminal's-eye driver for the ledger: builds operations, keeps the clock.

Used by the rule tests and the property tests; it talks to core.ledger only.
"""

import hashlib

import msgspec

from core.ledger import Ledger
from core.records import RESULT_REPLAYED, Op, Result
from core.results import AccountKind, CardType, Channel, OpKind, PlanFlag

DAY_MS = 86_400_000
START_MS = 20_000 * DAY_MS + 10 * 3_600_000  # 10:00 on business day 20000
STATION = 1
TERMINAL = 101
ALL_SOURCES = PlanFlag.USE_FLEET | PlanFlag.USE_PERSONAL | PlanFlag.USE_POINTS


def replayed(result: Result) -> Result:
    """`result` as a retry of its request receives it: marked replayed."""
    return msgspec.structs.replace(result, final=result.final | RESULT_REPLAYED)


class Driver:
    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.now_ms = START_MS
        self.serial = 0

    @property
    def day(self) -> int:
        return self.now_ms // DAY_MS

    def advance(self, ms: int):
        self.now_ms += ms

    def apply(self, *ops: Op) -> list[Result]:
        return self.ledger.apply(list(ops), self.now_ms, self.day)

    def one(self, op: Op) -> Result:
        return self.apply(op)[0]

    def request(self, kind: int, serial: int | None = None, station_id: int = STATION, terminal_id: int = TERMINAL, operator_id: int = 7, **fields) -> Op:
        """An idempotent terminal request; the fingerprint follows its content."""
        if serial is None:
            self.serial += 1
            serial = self.serial
        op = Op(kind=kind, station_id=station_id, terminal_id=terminal_id, operator_id=operator_id, serial=serial, **fields)
        content = repr((kind, station_id, sorted(fields.items())))
        op.fingerprint = hashlib.blake2b(content.encode(), digest_size=16).digest()
        return op

    # ------------------------------------------------------------ shorthands

    def open_card(self, card_id: int, fleet: int = 0, personal: int = 0, points: int = 0, **limits) -> Result:
        result = self.one(Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=CardType.COMPANY, **limits))
        for kind, amount in ((AccountKind.FLEET, fleet), (AccountKind.PERSONAL, personal), (AccountKind.POINTS, points)):
            if amount:
                self.topup(card_id, kind, amount)
        return result

    def topup(self, card_id: int, kind: int, amount: int, **fields) -> Result:
        return self.one(self.request(OpKind.TOPUP, card_id=card_id, account_kind=kind, amount=amount, **fields))

    def pay_op(self, card_id: int, amount: int, plan_flags: int = ALL_SOURCES, channel: int = Channel.NONE, **fields) -> Op:
        fields.setdefault("points_per_unit", 100)
        fields.setdefault("earn_points", amount // 100 if 0 < amount <= 10**12 else 0)
        return self.request(OpKind.PAY, card_id=card_id, amount=amount, plan_flags=plan_flags, channel=channel, **fields)

    def pay(self, card_id: int, amount: int, **fields) -> Result:
        return self.one(self.pay_op(card_id, amount, **fields))

    def preauth(self, card_id: int, amount: int, hold_timeout_s: int = 600, **fields) -> Result:
        return self.one(self.request(OpKind.PREAUTH, card_id=card_id, amount=amount, hold_timeout_s=hold_timeout_s, **fields))

    def complete(self, txn_id: int, amount: int, **fields) -> Result:
        fields.setdefault("earn_points", amount // 100 if 0 <= amount <= 10**12 else 0)
        return self.one(self.request(OpKind.COMPLETE, ref_txn_id=txn_id, amount=amount, **fields))

    def release(self, txn_id: int, **fields) -> Result:
        return self.one(self.request(OpKind.RELEASE, ref_txn_id=txn_id, **fields))

    def reverse(self, original_serial: int, **fields) -> Result:
        return self.one(self.request(OpKind.REVERSE, ref_serial=original_serial, **fields))

    def void(self, txn_id: int, **fields) -> Result:
        return self.one(self.request(OpKind.VOID, ref_txn_id=txn_id, **fields))

    def refund(self, txn_id: int, amount: int, **fields) -> Result:
        return self.one(self.request(OpKind.REFUND, ref_txn_id=txn_id, amount=amount, **fields))

    def capture(self, txn_id: int) -> Result:
        return self.one(Op(kind=OpKind.CAPTURE, ref_txn_id=txn_id))

    def abort(self, txn_id: int, code: int) -> Result:
        return self.one(Op(kind=OpKind.ABORT, ref_txn_id=txn_id, abort_code=code))

    # ------------------------------------------------------------ reading

    def balances(self, card_id: int) -> tuple[int, int, int]:
        return tuple(self.ledger.account(kind, card_id).balance for kind in (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS))

    def held(self, card_id: int) -> tuple[int, int, int]:
        return tuple(self.ledger.account(kind, card_id).held for kind in (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS))
