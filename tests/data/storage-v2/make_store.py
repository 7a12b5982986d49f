"""Makes store.tar.xz and expected.json.xz here: a data directory written by the
code of data format 2, and what that code read from it.

Run once, with Tally at commit 5bd515f (data format 2, before issue 20's
layout), from the repository's root:

    .venv/bin/python tests/data/storage-v2/make_store.py

Kept as the record of how the fixture was made; the code of format 3 cannot
run it (the layouts it writes are gone). tests/test_migrations.py migrates a
copy of the store and compares every balance, lot, transaction, journal
entry, stored answer and points statement with expected.json.xz.

What it holds: six cards over forty business days at two stations and three
terminals (hundreds of serials each): sales that earn points with lots of
different validities (some expired, some closed by spending, one card's
lots extended and cleared), sales paid with points, refunds with a points
shortfall, voids, reversals (one before its original: a tombstone), a
pre-authorization still open and one completed, a channel payment still
pending and one captured, check-ins, tasks, gift redemptions, a tier
change, a cancelled card.
"""

import hashlib
import json
import lzma
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.getcwd())

from core.ledger import Ledger, load_kernel  # noqa: E402
from core.loyalty.statement import points_statement  # noqa: E402
from core.records import Account, Idem, JournalEntry, Lot, Op, decode, parse_account_key, parse_idem_key  # noqa: E402
from core.results import AccountKind, CardType, Channel, OpKind, ResultCode, Tier, TierReason  # noqa: E402
from core.store import open_store, rows  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DAY_MS = 86_400_000
FIRST_DAY = 20_000
DAYS = 40
CARDS = (31, 32, 33, 34, 35, 36)
TERMINALS = {101: 1, 102: 1, 201: 2}
GIFT = 7


class Maker:
    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.random = random.Random(20)
        self.serials = {terminal: 0 for terminal in TERMINALS}
        self.now_ms = FIRST_DAY * DAY_MS + 9 * 3_600_000
        self.sales: list[tuple[int, int, int]] = []  # (txn_id, station, amount)
        self.pending: list[int] = []

    def request(self, kind, terminal=101, serial=None, **fields) -> Op:
        if serial is None:
            self.serials[terminal] += 1
            serial = self.serials[terminal]
        op = Op(kind=kind, terminal_id=terminal, station_id=TERMINALS[terminal], operator_id=7, serial=serial, **fields)
        op.fingerprint = hashlib.blake2b(repr((kind, terminal, serial, sorted(fields.items()))).encode(), digest_size=16).digest()
        return op

    def apply(self, *ops):
        return self.ledger.apply(list(ops), self.now_ms, self.now_ms // DAY_MS)

    def setup(self):
        ops = [Op(kind=OpKind.OPEN_CARD, card_id=card, card_status=CardType.COMPANY) for card in CARDS]
        ops.append(Op(kind=OpKind.GIFT_SET, item_id=GIFT, amount=300, bonus_points=500, count_limit=5))
        ops.append(Op(kind=OpKind.GIFT_STOCK, item_id=GIFT, amount=40))
        for card in CARDS:
            for kind, amount in ((AccountKind.FLEET, 500_000), (AccountKind.PERSONAL, 200_000), (AccountKind.POINTS, 3_000)):
                ops.append(self.request(OpKind.TOPUP, card_id=card, account_kind=kind, amount=amount, lot_validity_days=25))
        self.apply(*ops)

    def sale(self):
        card = self.random.choice(CARDS)
        terminal = self.random.choice(tuple(TERMINALS))
        amount = self.random.randint(100, 9_000)
        flags = self.random.choice((3, 3, 6, 7, 4))
        channel = Channel.WECHAT_PAY if self.random.random() < 0.08 else Channel.NONE
        return self.request(OpKind.PAY, terminal, card_id=card, amount=amount, plan_flags=flags, channel=channel, points_per_unit=100,
                            points_max=self.random.choice((0, 500)), earn_points=amount // 50,
                            lot_validity_days=self.random.choice((0, 10, 20, 30)))

    def day(self, index: int):
        ops = [self.sale() for _ in range(self.random.randint(15, 30))]
        if self.sales and index % 3 == 0:
            txn_id, station, amount = self.random.choice(self.sales[-20:])
            terminal = 201 if station == 2 else 101
            ops.append(self.request(OpKind.REFUND, terminal, ref_txn_id=txn_id, amount=max(1, amount // 3), points_per_unit=100))
        card = CARDS[index % len(CARDS)]
        ops.append(self.request(OpKind.CHECKIN, 102, card_id=card, amount=5, bonus_points=50, period=7))
        ops.append(self.request(OpKind.TASK, 102, card_id=card, amount=30, bonus_points=40))
        if index % 4 == 1:
            ops.append(self.request(OpKind.REDEEM, 102, card_id=self.random.choice(CARDS), item_id=GIFT, amount=1))
        results = self.apply(*ops)
        for op, result in zip(ops, results):
            if op.kind == OpKind.PAY and result.code == ResultCode.APPROVED:
                self.sales.append((result.txn_id, op.station_id, result.amount))
            if op.kind == OpKind.PAY and result.code == ResultCode.PENDING:
                self.pending.append(result.txn_id)
        if self.pending and index % 2 == 0:
            self.apply(*[Op(kind=OpKind.CAPTURE, ref_txn_id=txn_id) for txn_id in self.pending])
            self.pending.clear()
        if index == 12:
            self.void_and_reverse()
        if index == 20:
            self.apply(Op(kind=OpKind.EXTEND_LOTS, card_id=CARDS[0], amount=90, period=24_000))
            self.apply(Op(kind=OpKind.SET_TIER, card_id=CARDS[1], tier=Tier.GOLD, reason=TierReason.SPEND_UP, amount=99_000))
        if index == 30:
            self.apply(Op(kind=OpKind.CLEAR_LOTS, card_id=CARDS[2], period=2024, period_start=FIRST_DAY + 10))
        self.now_ms += DAY_MS

    def void_and_reverse(self):
        sale = self.request(OpKind.PAY, 101, card_id=CARDS[3], amount=2_000, plan_flags=3, points_per_unit=100, earn_points=40)
        (result,) = self.apply(sale)
        self.apply(self.request(OpKind.VOID, 101, ref_txn_id=result.txn_id, points_per_unit=100))
        sale = self.request(OpKind.PAY, 102, card_id=CARDS[4], amount=1_500, plan_flags=3, points_per_unit=100, earn_points=30)
        self.apply(sale)
        self.apply(self.request(OpKind.REVERSE, 102, ref_serial=sale.serial, points_per_unit=100))
        # A reversal before its original: a tombstone for a serial not seen.
        self.apply(self.request(OpKind.REVERSE, 201, ref_serial=self.serials[201] + 500))

    def finish(self):
        self.apply(self.request(OpKind.PREAUTH, 101, card_id=CARDS[0], amount=4_000, hold_timeout_s=7 * 24 * 3600))
        (hold,) = self.apply(self.request(OpKind.PREAUTH, 101, card_id=CARDS[1], amount=3_000, hold_timeout_s=3600))
        self.apply(self.request(OpKind.COMPLETE, 101, ref_txn_id=hold.txn_id, amount=2_500, earn_points=50))
        self.apply(self.request(OpKind.PAY, 201, card_id=CARDS[2], amount=90_000_000, plan_flags=1, channel=Channel.ALIPAY,
                                points_per_unit=100, earn_points=10))
        self.apply(Op(kind=OpKind.CANCEL_CARD, card_id=CARDS[5]))


def snapshot(store, now_ms: int) -> dict:
    with store.env.begin() as txn:
        accounts = {"{}/{}".format(*parse_account_key(key)): _fields(decode(Account, value)) for key, value in rows(txn, store.accounts)}
        journal = [_fields(decode(JournalEntry, value))[:12] for _, value in rows(txn, store.journal)]
        txns = {str(int.from_bytes(key, "big")): value.hex() for key, value in rows(txn, store.txns)}
        idem = {}
        for key, value in rows(txn, store.idem):
            entry = decode(Idem, value)
            terminal, serial = parse_idem_key(key)
            idem[f"{terminal}/{serial}"] = [entry.fingerprint.hex(), _fields(entry.result)]
        lots = {name: [_fields(decode(Lot, value)) for _, value in rows(txn, store.dbs[name])] for name in ("point_lots", "closed_lots")}
        unchanged = {name: [[key.hex(), value.hex()] for key, value in rows(txn, store.dbs[name])]
                     for name in ("cards", "members", "gifts", "gift_counts", "tier_changes", "hold_expiry", "pending", "shifts")}
    statements = {}
    for card in CARDS:
        statement = points_statement(store, card, now_ms=now_ms)
        statements[str(card)] = {
            "balance": statement.balance, "held": statement.held,
            "open_lots": [_fields(lot) for lot in statement.open_lots],
            "closed_lots": [_fields(lot) for lot in statement.closed_lots],
            "lines": [_fields(line) for line in statement.lines],
        }
    return {"now_ms": now_ms, "accounts": accounts, "journal": journal, "txns": txns, "idem": idem, "lots": lots,
            "unchanged": unchanged, "statements": statements}


def _fields(record) -> list:
    return [getattr(record, name) for name in record.__struct_fields__]


def main():
    directory = tempfile.mkdtemp()
    try:
        store = open_store(os.path.join(directory, "store"), 2**28)
        maker = Maker(Ledger(store, load_kernel("reference")))
        maker.setup()
        for index in range(DAYS):
            maker.day(index)
        maker.finish()
        expected = snapshot(store, maker.now_ms)
        store.close()
        with lzma.open(os.path.join(HERE, "expected.json.xz"), "wt") as out:
            json.dump(expected, out, sort_keys=True)
        subprocess.run(["tar", "-cJf", os.path.join(HERE, "store.tar.xz"), "-C", directory, "store/data.mdb"], check=True)
    finally:
        shutil.rmtree(directory)
    print(f"{len(expected['journal'])} journal entries, {len(expected['txns'])} transactions, {len(expected['idem'])} answers")


if __name__ == "__main__":
    main()
