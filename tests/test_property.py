"""The Cython kernel and the plain-Python reference agree on every input.

Hypothesis draws sequences of batches of operations (valid and invalid,
retries, reused serials, serials below a terminal's largest never used
before, runs of sales long enough that terminals' request tails are indexed
and cards' newest lots move out, from two terminals, reversals before
originals and after voids,
releases, expiries and declines, holds expiring mid-sequence, day changes,
day-ends of today and of the days around it) over a few cards, so that they
collide. Both kernels apply the same batches to their own LMDB directory;
every result must be equal (a retry's replayed mark included), and at the
end every stored byte. The audit must pass on both. Last, the reads as of a
later moment (core/current.py) must show each card exactly as the kernels
store it once a write has expired what was due.
"""

import hashlib
import tempfile

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import limits
from core.audit import audit
from core.loyalty.statement import points_statement
from core.counters import PACKET_SHARE_VALUE, CounterScope, CounterTake, chain, packet_claim_op, packet_share_key
from core.records import Account, Card, Gift, JournalEntry, Lot, Member, Op, Request, RequestTail, Shift, TierChange, Txn, decode
from core.results import AccountKind, CardStatus, Channel, OpKind, ResultCode
from core.store import DATABASE_NAMES
from tests.conftest import open_ledger
from tests.ledger_driver import DAY_MS, START_MS

CARDS = (11, 12, 13)
AMOUNTS = st.one_of(
    st.sampled_from([1, 99, 100, 101, 500, 1_000, 5_000]), st.integers(1, 20_000), st.sampled_from([0, -5, limits.AMOUNT_MINOR_MAX + 1])
)
STATIONS = st.sampled_from([1, 1, 1, 2])
ADVANCES_MS = st.sampled_from([0, 0, 1_000, 59_000, 3_600_000, DAY_MS])


class _History:
    """What the sequence produced so far, so later operations can refer to
    real transactions and serials (and sometimes to ones that do not exist)."""

    def __init__(self):
        self.txn_ids = [999]
        self.serials = [1]
        self.next_serial = 1
        # Serials skipped over, to be used later below the terminal's largest.
        self.gaps = []
        # The calendar's business day of the batch being drawn.
        self.day = START_MS // DAY_MS

    def new_serial(self, data) -> int:
        choice = data.draw(st.integers(0, 19))
        if choice < 2:  # a retry, or a reused serial
            return data.draw(st.sampled_from(self.serials))
        if choice == 2 and self.gaps:  # never used, below the largest
            serial = self.gaps.pop(data.draw(st.integers(0, len(self.gaps) - 1)))
        else:
            if choice == 3:  # a jump, leaving serials for later
                self.gaps.extend(range(self.next_serial + 1, self.next_serial + 4))
                self.next_serial += 3
            self.next_serial += 1
            serial = self.next_serial
        self.serials.append(serial)
        return serial

    def txn_id(self, data) -> int:
        return data.draw(st.sampled_from(self.txn_ids[-12:]))


def _fingerprint(op: Op) -> bytes:
    content = repr((op.kind, op.station_id, op.card_id, op.amount, op.ref_txn_id, op.ref_serial, op.plan_flags, op.channel, op.account_kind))
    return hashlib.blake2b(content.encode(), digest_size=16).digest()


TERMINALS = (101, 102)


def _request(kind, serial, station, terminal_id=101, **fields) -> Op:
    op = Op(kind=kind, terminal_id=terminal_id, station_id=station, operator_id=7, serial=serial, **fields)
    op.fingerprint = _fingerprint(op)
    return op


COUNTER_KEYS = ((CounterScope.PROMOTION_STOCK, 1, 0), (CounterScope.PROMOTION_BUDGET, 1, 0), (CounterScope.LOTTERY_CHANCES, 2, CARDS[0]))
PACKET_ID = 900
PACKET_SHARES = (100, 50, 25)


def _draw_chain(data, history: _History) -> list[Op]:
    """Counters linked to a drawn operation (or to none), now and then
    malformed: a link left on the last op, a zero delta."""
    takes = []
    for _ in range(data.draw(st.integers(1, 3))):
        scope, owner, subject = data.draw(st.sampled_from(COUNTER_KEYS))
        takes.append(CounterTake(scope, owner, subject, delta=data.draw(st.sampled_from([1, 1, 2, -1, 250, 0])), ceiling=data.draw(st.sampled_from([0, 2, 3, 500]))))
    main = data.draw(st.sampled_from([None, "op", "op", "op"]))
    ops = chain(takes, None if main is None else _draw_op(data, history))
    if data.draw(st.integers(0, 9)) == 0:
        ops[-1] = msgspec.structs.replace(ops[-1], link=1)
    return ops


def _draw_ops(data, history: _History) -> list[Op]:
    """One operation, a chain of counters linked to one, a red packet claim,
    a run of sales, or now and then a sale whose points are spent at once (so that its
    refund or void meets a points shortfall)."""
    choice = data.draw(st.integers(0, 19))
    if choice == 0:
        return _draw_chain(data, history)
    if choice == 1:
        card = data.draw(st.sampled_from((*CARDS, 404)))
        return [packet_claim_op(PACKET_ID, card, data.draw(st.sampled_from([2, 3, 4])), 101, history.new_serial(data), 1)]
    if choice == 2:
        return _draw_sales_run(data, history)
    if choice > 3:
        return [_draw_op(data, history)]
    card = data.draw(st.sampled_from(CARDS))
    sale = _request(OpKind.PAY, history.new_serial(data), 1, card_id=card, amount=5_000, plan_flags=3, points_per_unit=100, earn_points=500)
    spend = _request(OpKind.PAY, history.new_serial(data), 1, card_id=card, amount=10_000, plan_flags=4, points_per_unit=100, channel=Channel.WECHAT_PAY)
    # The sale is the next transaction: its id is the counter's next value.
    return [sale, spend]


def _draw_sales_run(data, history: _History) -> list[Op]:
    """Many small sales of one terminal and card, earning points that expire
    on one of a few days, now and then paid with points: enough requests
    that the terminal's tail is indexed (REQUEST_TAIL_MAX), and the card's
    newest lot moves out to point_lots when a later expiry comes."""
    card = data.draw(st.sampled_from(CARDS))
    terminal = data.draw(st.sampled_from(TERMINALS))
    sales = []
    for _ in range(data.draw(st.integers(8, limits.REQUEST_TAIL_MAX + 8))):
        sales.append(_request(OpKind.PAY, history.new_serial(data), 1, terminal_id=terminal, card_id=card, amount=data.draw(st.sampled_from([100, 250])),
                              plan_flags=data.draw(st.sampled_from([3, 3, 7])), points_per_unit=100, earn_points=7,
                              lot_validity_days=data.draw(st.sampled_from([0, 2, 3]))))
    return sales


GIFTS = (1, 2)


def _draw_loyalty_op(data, history: _History) -> Op:
    card = data.draw(st.sampled_from(CARDS))
    kind = data.draw(st.sampled_from(["checkin", "task", "redeem", "redeem", "gift", "stock", "partner", "tier", "member", "extend", "clear"]))
    if kind == "checkin":
        return _request(OpKind.CHECKIN, history.new_serial(data), 1, card_id=card, amount=5, bonus_points=50, period=data.draw(st.sampled_from([0, 2, 7])))
    if kind == "task":
        return _request(OpKind.TASK, history.new_serial(data), 1, card_id=card, amount=data.draw(st.sampled_from([10, 30])), bonus_points=data.draw(st.sampled_from([0, 40])))
    if kind == "redeem":
        return _request(OpKind.REDEEM, history.new_serial(data), data.draw(STATIONS), card_id=card, item_id=data.draw(st.sampled_from(GIFTS)), amount=data.draw(st.sampled_from([1, 1, 2])))
    if kind == "gift":
        return Op(
            kind=OpKind.GIFT_SET, item_id=data.draw(st.sampled_from(GIFTS)), amount=data.draw(st.sampled_from([0, 100, 1_000])),
            bonus_points=data.draw(st.sampled_from([0, 0, 500])), count_limit=data.draw(st.sampled_from([0, 1, 3])),
            tier=data.draw(st.sampled_from([0, 0b1, 0b110])), period_start=data.draw(st.sampled_from([0, 20_000])),
            period=data.draw(st.sampled_from([0, 20_001, 30_000])),
        )
    if kind == "stock":
        return Op(kind=OpKind.GIFT_STOCK, item_id=data.draw(st.sampled_from(GIFTS)), amount=data.draw(st.sampled_from([2, 5, -1, -10])))
    if kind == "partner":
        return _request(
            OpKind.PARTNER_EXCHANGE, history.new_serial(data), 1, card_id=card, item_id=7, amount=data.draw(st.sampled_from([1, 999, 5_000])),
            earn_points=data.draw(st.sampled_from([1, 3])), period=data.draw(st.sampled_from([1, 10])), reason=data.draw(st.sampled_from([0, 1])),
            points_per_unit=100,
        )
    if kind == "tier":
        return Op(kind=OpKind.SET_TIER, card_id=card, tier=data.draw(st.sampled_from([0, 1, 2])), reason=data.draw(st.sampled_from([1, 2, 3])), amount=12_345)
    if kind == "member":
        return Op(kind=OpKind.SET_MEMBER, card_id=card, tz_offset_minutes=data.draw(st.sampled_from([0, 480, -300])))
    if kind == "extend":
        return Op(kind=OpKind.EXTEND_LOTS, card_id=card, amount=data.draw(st.sampled_from([1, 90])), period=data.draw(st.sampled_from([24_300, 24_301])))
    return Op(kind=OpKind.CLEAR_LOTS, card_id=card, period=data.draw(st.sampled_from([2026, 2027])), period_start=data.draw(st.sampled_from([20_000, 20_002])))


def _draw_op(data, history: _History) -> Op:
    family = data.draw(st.sampled_from(["pay", "pay", "pay", "topup", "preauth", "by_txn", "by_txn", "by_txn", "reverse", "channel", "card", "loyalty", "loyalty"]))
    if family == "loyalty":
        return _draw_loyalty_op(data, history)
    if family == "pay":
        return _request(
            OpKind.PAY, history.new_serial(data), data.draw(STATIONS),
            card_id=data.draw(st.sampled_from((0, *CARDS, *CARDS))), amount=data.draw(AMOUNTS), plan_flags=data.draw(st.integers(0, 7)),
            channel=data.draw(st.sampled_from([Channel.NONE, Channel.NONE, Channel.WECHAT_PAY, Channel.BANK_CARD])),
            points_max=data.draw(st.sampled_from([0, 0, 50, 300])), points_per_unit=data.draw(st.sampled_from([100, 100, 7, 1_000])),
            earn_points=data.draw(st.sampled_from([0, 1, 10, 57, 10**12])),
            lot_validity_days=data.draw(st.sampled_from([0, 1, 30])),
        )
    if family == "topup":
        kind = data.draw(st.sampled_from([AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS]))
        return _request(
            OpKind.TOPUP, history.new_serial(data), 1, card_id=data.draw(st.sampled_from(CARDS)), account_kind=kind, amount=data.draw(AMOUNTS),
            lot_validity_days=data.draw(st.sampled_from([0, 1, 2])),
        )
    if family == "preauth":
        return _request(
            OpKind.PREAUTH, history.new_serial(data), data.draw(STATIONS), card_id=data.draw(st.sampled_from(CARDS)),
            amount=data.draw(AMOUNTS), hold_timeout_s=data.draw(st.sampled_from([1, 60, 3_600])),
        )
    if family == "by_txn":
        kind = data.draw(st.sampled_from([OpKind.COMPLETE, OpKind.RELEASE, OpKind.VOID, OpKind.REFUND, OpKind.REFUND]))
        return _request(kind, history.new_serial(data), data.draw(STATIONS), ref_txn_id=history.txn_id(data), amount=data.draw(AMOUNTS),
                        earn_points=data.draw(st.sampled_from([0, 3, 10**12])), points_per_unit=data.draw(st.sampled_from([0, 100, 7])),
                        lot_validity_days=data.draw(st.sampled_from([0, 1, 30])))
    if family == "reverse":
        return _request(
            OpKind.REVERSE, history.new_serial(data), 1, ref_serial=data.draw(st.sampled_from([*history.serials[-10:], 10**6])),
            points_per_unit=data.draw(st.sampled_from([0, 100])),
        )
    if family == "channel":
        code = data.draw(st.sampled_from([ResultCode.CHANNEL_DECLINED, ResultCode.CHANNEL_UNAVAILABLE]))
        return Op(kind=data.draw(st.sampled_from([OpKind.CAPTURE, OpKind.CAPTURE, OpKind.ABORT])), ref_txn_id=history.txn_id(data), abort_code=code)
    card = data.draw(st.sampled_from(CARDS))
    if data.draw(st.integers(0, 3)) == 0:
        return data.draw(
            st.sampled_from(
                [
                    _request(OpKind.SIGN_ON, history.new_serial(data), data.draw(STATIONS)),
                    _request(OpKind.SHIFT_CLOSE, history.new_serial(data), 1),
                    Op(kind=OpKind.DAY_END, station_id=data.draw(STATIONS), period=history.day + data.draw(st.sampled_from([-1, 0, 0, 1]))),
                    Op(kind=OpKind.ENABLE_DOMAIN, card_id=card, period=data.draw(st.sampled_from([0, 5]))),
                    Op(kind=OpKind.STATION_DOMAIN, station_id=data.draw(STATIONS), period=data.draw(st.sampled_from([0, 5, 6]))),
                    Op(kind=OpKind.CANCEL_CARD, card_id=card),
                ]
            )
        )
    return data.draw(
        st.sampled_from(
            [
                Op(kind=OpKind.SET_CARD_STATUS, card_id=card, card_status=data.draw(st.sampled_from([CardStatus.ACTIVE, CardStatus.FROZEN, CardStatus.LOST]))),
                Op(kind=OpKind.SET_CARD_LIMITS, card_id=card, limit_per_txn=data.draw(st.sampled_from([0, 1_000, 5_000])), limit_per_day=data.draw(st.sampled_from([0, 3_000, 20_000]))),
                Op(kind=OpKind.ALLOW_STATION, card_id=card, station_id=data.draw(STATIONS)),
                Op(kind=OpKind.EXPIRE_HOLDS),
                Op(kind=OpKind.EXPIRE_POINTS, card_id=card),
            ]
        )
    )


def _open_cards() -> list[Op]:
    ops = [Op(kind=OpKind.OPEN_CARD, card_id=card, card_status=1) for card in CARDS]
    serial = 1_000
    for card in CARDS:
        for kind in (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS):
            serial += 1
            ops.append(_request(OpKind.TOPUP, serial, 1, card_id=card, account_kind=kind, amount=3_000))
    ops.append(Op(kind=OpKind.OPEN_ACCOUNT, account_kind=AccountKind.PROMOTION, account_owner=PACKET_ID))
    ops.append(Op(kind=OpKind.TRANSFER, account_kind=AccountKind.TOPUP_FUNDING, account_owner=1, credit_kind=AccountKind.PROMOTION, credit_owner=PACKET_ID, amount=sum(PACKET_SHARES) - 10))
    return ops


def _write_packet_shares(ledger):
    with ledger.store.env.begin(write=True) as txn:
        for index, amount in enumerate(PACKET_SHARES):
            txn.put(packet_share_key(PACKET_ID, index), PACKET_SHARE_VALUE.pack(amount), db=ledger.store.packet_shares)


RECORD_TYPES = {
    "accounts": Account, "cards": Card, "txns": Txn, "requests": Request, "request_tails": RequestTail, "journal": JournalEntry,
    "point_lots": Lot, "closed_lots": Lot,
    "members": Member, "gifts": Gift, "tier_changes": TierChange, "shifts": Shift,
}


def _first_difference(ours: dict, theirs: dict):
    for name in DATABASE_NAMES:
        if ours[name] == theirs[name]:
            continue
        keys = sorted(set(dict(ours[name])) | set(dict(theirs[name])))
        for key in keys:
            a, b = dict(ours[name]).get(key), dict(theirs[name]).get(key)
            if a != b:
                decode_value = (lambda v: v if v is None or name not in RECORD_TYPES else decode(RECORD_TYPES[name], v))
                return f"{name} {key.hex()}:\n kernel    {decode_value(a)}\n reference {decode_value(b)}"
    return None


def _describe(applied) -> str:
    lines = []
    for now_ms, ops in applied[1:]:
        lines.append(f"  at {now_ms - START_MS} ms:")
        for op in ops:
            fields = {k: v for k, v in msgspec.structs.asdict(op).items() if v and k != "fingerprint"}
            lines.append(f"    {OpKind(op.kind).name} {fields}")
    return "\n".join(lines)


def _stored_card(ledger, card_id: int):
    return ledger.card(card_id), tuple(ledger.account(kind, card_id) for kind in (AccountKind.FLEET, AccountKind.PERSONAL, AccountKind.POINTS))


def _without_last_seq(found):
    """A card and its accounts with last_seq left out: the expiry a read
    applies as of now has no journal entry yet, the one the write makes does."""
    card, accounts = found
    return card, tuple(msgspec.structs.replace(account, last_seq=0) for account in accounts)


def _points_now(ledger, card_id: int, now_ms: int):
    statement = points_statement(ledger.store, card_id, now_ms=now_ms)
    return statement.balance, statement.held, statement.open_lots, statement.closed_lots


def _check_reads_as_of(cython, reference, now_ms: int):
    """What the reads show at now_ms, before any write, is what both kernels
    store once a batch at now_ms has expired the due holds and points."""
    views = {card: (reference.card_as_of(card, now_ms), _points_now(reference, card, now_ms)) for card in CARDS}
    ops = [Op(kind=OpKind.EXPIRE_HOLDS)] + [Op(kind=OpKind.EXPIRE_POINTS, card_id=card) for card in CARDS]
    results = [ledger.apply(ops, now_ms, now_ms // DAY_MS) for ledger in (cython, reference)]
    assert results[0] == results[1]
    for card, (card_view, points_view) in views.items():
        for ledger in (cython, reference):
            assert _without_last_seq(_stored_card(ledger, card)) == _without_last_seq(card_view), f"card {card} read as of {now_ms - START_MS} ms"
            assert _points_now(ledger, card, now_ms) == points_view, f"points of card {card} read as of {now_ms - START_MS} ms"


def _dump(ledger) -> dict:
    with ledger.store.env.begin() as txn:
        return {name: list(txn.cursor(db=ledger.store.dbs[name])) for name in DATABASE_NAMES}


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_kernel_and_reference_agree(data):
    history = _History()
    with tempfile.TemporaryDirectory() as directory:
        cython = open_ledger(f"{directory}/cython", "cython")
        reference = open_ledger(f"{directory}/reference", "reference")
        for ledger in (cython, reference):
            _write_packet_shares(ledger)
        now_ms = START_MS
        applied = []
        batch_count = data.draw(st.integers(1, 25))
        for index in range(batch_count + 1):
            if index == 0:
                ops = _open_cards()
            else:
                now_ms += data.draw(ADVANCES_MS)
                history.day = now_ms // DAY_MS
                ops = [op for _ in range(data.draw(st.integers(1, 5))) for op in _draw_ops(data, history)]
            day = now_ms // DAY_MS
            applied.append((now_ms, ops))
            results_reference = reference.apply(ops, now_ms, day)
            try:
                results_cython = cython.apply(ops, now_ms, day)
            except AssertionError as error:
                raise AssertionError(f"kernel raised {error} after:\n{_describe(applied)}") from error
            for op, ours, theirs in zip(ops, results_cython, results_reference):
                assert ours == theirs, f"results differ for {op}:\n kernel    {ours}\n reference {theirs}\nafter:\n{_describe(applied)}"
                if ours.txn_id:
                    history.txn_ids.append(ours.txn_id)
        _check_reads_as_of(cython, reference, now_ms + data.draw(ADVANCES_MS))
        difference = _first_difference(_dump(cython), _dump(reference))
        assert difference is None, f"{difference}\nafter:\n{_describe(applied)}"
        for ledger in (cython, reference):
            report = audit(ledger.store)
            assert report.ok, report.problems
            ledger.store.close()


def test_batch_size_is_bounded(ledger):
    import pytest

    ops = [Op(kind=OpKind.EXPIRE_HOLDS)] * (limits.BATCH_SIZE_MAX + 1)
    with pytest.raises(AssertionError):
        ledger.apply(ops, START_MS, START_MS // DAY_MS)
