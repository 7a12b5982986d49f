"""`python -m bench seed --transactions N --accounts M DIR`: a realistic data directory, fast.

Owns: building a data directory of N transactions on M cards through the
kernel (core.ledger.Ledger.apply_encoded, batches of up to 8,189, each one LMDB
commit, synced to disk once at the end), never by writing records around it: every balance,
journal entry, idempotency entry and point lot is the kernel's own, so
`python -m core.audit DIR` checks it like any other directory.
Used by: operators and `bench e2e --data`, `bench soak --data` (a run on a
10-million-transaction directory).
May call: core (ledger, store), server.requests (the operations are built by
the server's own request translation, from protobuf requests, so their
fingerprints are real).

The mix, over the last --days business days: cards opened (40% company
cards with a fleet account) and funded; then 85% payments (card payments,
fleet then personal; 5% name an external channel, 3% pay by it alone, settled
by CAPTURE as the server does after the channel approves), 10% top-ups, 5%
partial refunds of recent card sales at their station. Stations 1..500, four terminals each.

--worn-sales N (issue 20's worn directory): then `bench e2e`'s own terminals
and cards (--worn-clients of them: terminal 1000 + i paying with card
6290000000000000 + i at station 1, as e2e's client i does) get N past
sales each, spread over the same days, a batch holding one sale of every
terminal in turn, as a busy network's commits do: the histories a year of
traffic leaves under the records e2e's Pay then writes. Their serials count
from 1; e2e's start from the clock, far above.
"""

import argparse
import collections
import datetime
import os
import random
import sys
import time

import msgspec

from core import limits
from core.ledger import MS_PER_DAY, Ledger, decode_results, load_kernel
from core.records import Op, encode
from core.results import CardType, OpKind, ResultCode
from core.store import open_store
from server import requests as translate
from server.settings import ServerSettings
from tally.v1 import card_pb2, common_pb2, payment_pb2

# Seeded cards live in their own id range, apart from the demo cards
# (6200000000000001..3) and the e2e and soak cards (629..., 628...).
CARD_ID_BASE = 6_100_000_000_000_000
STATIONS = 500
TERMINALS_PER_STATION = 4
TERMINAL_ID_BASE = 1_000_000
OPERATOR_ID = 1
COMPANY_CARD_SHARE = 0.4
OPENING_PERSONAL_MINOR = 500_000
OPENING_FLEET_MINOR = 2_000_000
RECENT_SALES_KEPT = 50_000
TRANSACTIONS_MAX = 100_000_000
WORN_SALES_MAX = 100_000
WORN_CLIENTS_MAX = 10_000
WORN_SALE_MINOR = 100
ACCOUNTS_MAX = 10_000_000


class BatchSample(msgspec.Struct, array_like=True):
    elapsed_s: float
    transactions: int
    commit_s: float


class SeedReport(msgspec.Struct):
    date: str
    data_dir: str
    transactions: int
    cards: int
    days: int
    operations: int
    batches: int
    seconds: float
    transactions_per_s: float
    by_kind: dict[str, int]
    by_result: dict[str, int]
    data_bytes: int
    kernel: str
    batch_samples: list[BatchSample]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench seed",
        description="Build a data directory of N realistic transactions on M cards through the kernel "
        "(batches of up to 8,189, each one commit; synced to disk at the end), with a progress bar. The directory must not "
        "hold data yet. Check it afterwards with `python -m core.audit DIR`.",
    )
    parser.add_argument("data", metavar="DIR", help="data directory to create")
    parser.add_argument("--transactions", type=int, default=10_000_000, metavar="N",
                        help=f"transactions: card opening top-ups, payments, top-ups, refunds; 1 .. {TRANSACTIONS_MAX:,} (default %(default)s)")
    parser.add_argument("--accounts", type=int, default=1_000_000, metavar="M",
                        help=f"cards (each with fleet, personal and points accounts); 1 .. {ACCOUNTS_MAX:,} (default %(default)s)")
    parser.add_argument("--days", type=int, default=30, help="business days the transactions spread over, ending today (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=limits.BATCH_SIZE_MAX,
                        help=f"operations per commit, 1 .. {limits.BATCH_SIZE_MAX} (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    parser.add_argument("--map-size-gib", type=int, default=64, help="LMDB map size, GiB (default %(default)s)")
    parser.add_argument("--worn-sales", type=int, default=0, metavar="N",
                        help=f"then N past sales for each of bench e2e's terminals and cards, 0 .. {WORN_SALES_MAX:,} "
                        "(a worn directory, issue 20; default %(default)s: none)")
    parser.add_argument("--worn-clients", type=int, default=1_500, metavar="C",
                        help=f"with --worn-sales: e2e's clients 0 .. C-1 (its --concurrency), 1 .. {WORN_CLIENTS_MAX:,} (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--chart", metavar="FILE.png", help="draw transactions/s and commit time over the run")
    args = parser.parse_args(argv)
    if not 0 <= args.worn_sales <= WORN_SALES_MAX:
        parser.error(f"--worn-sales must be within 0 .. {WORN_SALES_MAX}, got {args.worn_sales}")
    if not 1 <= args.worn_clients <= WORN_CLIENTS_MAX:
        parser.error(f"--worn-clients must be within 1 .. {WORN_CLIENTS_MAX}, got {args.worn_clients}")
    if not 1 <= args.transactions <= TRANSACTIONS_MAX:
        parser.error(f"--transactions must be within 1 .. {TRANSACTIONS_MAX}, got {args.transactions}")
    if not 1 <= args.accounts <= ACCOUNTS_MAX:
        parser.error(f"--accounts must be within 1 .. {ACCOUNTS_MAX}, got {args.accounts}")
    if args.transactions < 2 * args.accounts:
        parser.error(f"--transactions ({args.transactions}) must be at least twice --accounts ({args.accounts}): "
                     "funding the cards takes up to two top-ups each")
    if not 1 <= args.batch_size <= limits.BATCH_SIZE_MAX:
        parser.error(f"--batch-size must be within 1 .. {limits.BATCH_SIZE_MAX}, got {args.batch_size}")
    if not 1 <= args.days <= 3650:
        parser.error(f"--days must be within 1 .. 3650, got {args.days}")
    if os.path.exists(os.path.join(args.data, "data.mdb")):
        parser.error(f"{args.data} already holds a data directory (data.mdb); give a new one")
    return args


class Seeder:
    """Generates the operations and applies them, keeping what later
    operations need: recent sales (for refunds), card types."""

    def __init__(self, ledger: Ledger, args, settings: ServerSettings):
        self.ledger = ledger
        self.args = args
        self.settings = settings
        self.random = random.Random(args.seed)
        self.serial = 0
        self.company = [self.random.random() < COMPANY_CARD_SHARE for _ in range(args.accounts)]
        self.recent_sales = collections.deque(maxlen=RECENT_SALES_KEPT)
        self.captures: list[int] = []
        self.by_kind = collections.Counter()
        self.by_result = collections.Counter()
        self.transactions = 0
        self.operations = 0
        self.samples: list[BatchSample] = []
        self.started_s = time.perf_counter()

    # ------------------------------------------------------------ requests

    def terminal(self, station_id: int | None = None) -> common_pb2.TerminalContext:
        station_id = station_id or self.random.randint(1, STATIONS)
        self.serial += 1
        terminal_id = TERMINAL_ID_BASE + station_id * TERMINALS_PER_STATION + self.random.randrange(TERMINALS_PER_STATION)
        return common_pb2.TerminalContext(station_id=station_id, terminal_id=terminal_id, serial=self.serial, operator_id=OPERATOR_ID)

    def top_up(self, card_index: int, account: int, amount_minor: int) -> Op:
        request = card_pb2.TopUpRequest(terminal=self.terminal(), card_id=CARD_ID_BASE + card_index, account=account, amount=amount_minor)
        return translate.topup_op(request)

    def pay(self) -> Op:
        card_index = self.random.randrange(self.args.accounts)
        plan = payment_pb2.PaymentPlan(card_id=CARD_ID_BASE + card_index, use_fleet=self.company[card_index], use_personal=True)
        roll = self.random.random()
        if roll < 0.05:
            plan.channel = self.random.choice((common_pb2.BANK_CARD, common_pb2.WECHAT_PAY, common_pb2.ALIPAY))
            if roll < 0.03:  # a customer without a card, paying by bank card or wallet
                plan.card_id, plan.use_fleet, plan.use_personal = 0, False, False
        amount_minor = self.random.randint(500, 30_000)
        return translate.pay_op(payment_pb2.PayRequest(terminal=self.terminal(), amount_minor=amount_minor, plan=plan), self.settings)

    def refund(self) -> Op | None:
        if not self.recent_sales:
            return None
        txn_id, station_id, amount_minor = self.recent_sales[self.random.randrange(len(self.recent_sales))]
        request = payment_pb2.RefundRequest(terminal=self.terminal(station_id), txn_id=txn_id,
                                            amount_minor=self.random.randint(1, max(1, amount_minor // 2)))
        return translate.refund_op(request)

    def mixed_operation(self) -> Op:
        roll = self.random.random()
        if roll < 0.05:
            op = self.refund()
            if op is not None:
                return op
        if roll < 0.15:
            card_index = self.random.randrange(self.args.accounts)
            return self.top_up(card_index, common_pb2.PERSONAL, self.random.randint(10_000, 200_000))
        return self.pay()

    # ------------------------------------------------------------ applying

    def day_of(self, progress: float) -> tuple[int, int]:
        """(now_ms, business day) of a batch that far through the run."""
        today = int(time.time() * 1000) // MS_PER_DAY
        day = today - self.args.days + 1 + min(self.args.days - 1, int(progress * self.args.days))
        now_ms = day * MS_PER_DAY + 8 * 3_600_000 + int(progress * 1000) % 3_600_000
        return now_ms, day

    def apply(self, ops: list[Op], counted: int, progress: float):
        """Apply one batch; `counted` of its operations are transactions."""
        now_ms, day = self.day_of(progress)
        started_s = time.perf_counter()
        results = decode_results(self.ledger.apply_encoded(b"".join(encode(op) for op in ops), now_ms, day))
        commit_s = time.perf_counter() - started_s
        for op, result in zip(ops, results, strict=True):
            self.by_kind[OpKind(op.kind).name] += 1
            self.by_result[ResultCode(result.code).name] += 1
            if op.kind == OpKind.PAY and result.code == ResultCode.PENDING:
                self.captures.append(result.txn_id)
            elif op.kind in (OpKind.PAY, OpKind.CAPTURE) and result.code == ResultCode.APPROVED and result.channel_amount == 0:
                self.recent_sales.append((result.txn_id, op.station_id or self.station_of(result.txn_id), result.amount))
        self.operations += len(ops)
        self.transactions += counted
        self.samples.append(BatchSample(elapsed_s=time.perf_counter() - self.started_s, transactions=counted, commit_s=commit_s))

    def station_of(self, txn_id: int) -> int:
        return self.ledger.txn(txn_id).station_id

    def run(self, progress_bar):
        args = self.args
        # Refunds and captures refer to sales of earlier batches: a small
        # run still gets twenty or so batches.
        batch_size = min(args.batch_size, max(256, args.transactions // 20))
        # Cards: open (not a transaction), then fund: a personal top-up each,
        # and a fleet top-up for company cards (transactions, counted).
        for first in range(0, args.accounts, batch_size):
            indexes = range(first, min(args.accounts, first + batch_size))
            ops = [Op(kind=OpKind.OPEN_CARD, card_id=CARD_ID_BASE + i,
                      card_status=CardType.COMPANY if self.company[i] else CardType.PERSONAL) for i in indexes]
            self.apply(ops, 0, 0.0)
        fleet_funding = [self.top_up(i, common_pb2.FLEET, OPENING_FLEET_MINOR) for i in range(args.accounts) if self.company[i]]
        self.apply_opening(fleet_funding, batch_size, True, progress_bar)
        for first in range(0, args.accounts, batch_size):
            count = min(batch_size, args.accounts - first)
            self.apply([self.top_up(i, common_pb2.PERSONAL, OPENING_PERSONAL_MINOR) for i in range(first, first + count)], count, 0.0)
            progress_bar.update(count)
        while self.transactions < args.transactions:
            # CAPTUREs of the channel payments the last batch left pending go
            # first: they finish transactions already counted.
            ops = [Op(kind=OpKind.CAPTURE, ref_txn_id=txn_id) for txn_id in self.captures[:batch_size]]
            del self.captures[: len(ops)]
            count = min(batch_size - len(ops), args.transactions - self.transactions)
            ops.extend(self.mixed_operation() for _ in range(count))
            self.apply(ops, count, self.transactions / args.transactions)
            progress_bar.update(count)
        while self.captures:
            ops = [Op(kind=OpKind.CAPTURE, ref_txn_id=txn_id) for txn_id in self.captures[:batch_size]]
            del self.captures[: len(ops)]
            self.apply(ops, 0, 1.0)

    def apply_opening(self, ops: list[Op], batch_size: int, counted: bool, progress_bar=None):
        """Operations of the run's start (cards opened, funded) in batches;
        counted: they are transactions (told to the progress bar, if any)."""
        for first in range(0, len(ops), batch_size):
            batch = ops[first : first + batch_size]
            self.apply(batch, len(batch) if counted else 0, 0.0)
            if counted and progress_bar is not None:
                progress_bar.update(len(batch))

    def wear(self, progress_bar):
        """--worn-sales: e2e's terminals and cards, each with its history."""
        from bench import e2e

        clients, sales = self.args.worn_clients, self.args.worn_sales
        batch_size = self.args.batch_size
        cards = [e2e.CARD_ID_BASE + i for i in range(clients)]
        self.apply_opening([Op(kind=OpKind.OPEN_CARD, card_id=card_id, card_status=CardType.PERSONAL) for card_id in cards],
                           batch_size, False)
        self.apply_opening([translate.topup_op(card_pb2.TopUpRequest(
            terminal=e2e.terminal_of(i, 1), card_id=cards[i], account=common_pb2.PERSONAL,
            amount=WORN_SALE_MINOR * (sales + 1))) for i in range(clients)], batch_size, True)
        total = clients * sales
        ops, done = [], 0
        for serial in range(2, sales + 2):
            for i in range(clients):
                ops.append(translate.pay_op(payment_pb2.PayRequest(
                    terminal=e2e.terminal_of(i, serial), amount_minor=WORN_SALE_MINOR,
                    plan=payment_pb2.PaymentPlan(card_id=cards[i], use_personal=True)), self.settings))
                if len(ops) == batch_size:
                    done += len(ops)
                    self.apply(ops, len(ops), done / total)
                    progress_bar.update(len(ops))
                    ops = []
        if ops:
            self.apply(ops, len(ops), 1.0)
            progress_bar.update(len(ops))


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))


def draw(report: SeedReport, path: str):
    from bench import charts

    elapsed = [sample.elapsed_s for sample in report.batch_samples]
    rate = []
    previous_s = 0.0
    for sample in report.batch_samples:
        rate.append(sample.transactions / max(1e-9, sample.elapsed_s - previous_s))
        previous_s = sample.elapsed_s
    charts.series_chart(path, f"bench seed: {report.transactions:,} transactions on {report.cards:,} cards in {report.seconds:.0f} s", [
        ("transactions per second, per batch", "transactions/s", elapsed, {"transactions/s": rate}),
        ("kernel + commit time per batch", "ms", elapsed, {"commit ms": [sample.commit_s * 1000 for sample in report.batch_samples]}),
    ])


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Not durable per commit: a seed that crashes is simply run again, and
    # an fsync per batch would write each batch's scattered pages to disk
    # (gigabytes per second on a large directory). One sync at the end.
    store = open_store(args.data, args.map_size_gib * 2**30, durable=False)
    ledger = Ledger(store, load_kernel("auto"))
    settings = ServerSettings(data_dir=args.data)
    seeder = Seeder(ledger, args, settings)
    with tqdm(total=args.transactions, unit="txn", unit_scale=True, desc="seed", file=sys.stderr, disable=None) as bar:
        seeder.run(bar)
    if args.worn_sales:
        with tqdm(total=args.worn_clients * args.worn_sales, unit="sale", unit_scale=True, desc="worn", file=sys.stderr,
                  disable=None) as bar:
            seeder.wear(bar)
    store.env.sync(True)
    seconds = time.perf_counter() - seeder.started_s
    kernel = ledger.kernel_name
    store.close()
    report = SeedReport(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        data_dir=os.path.abspath(args.data),
        transactions=seeder.transactions,
        cards=args.accounts,
        days=args.days,
        operations=seeder.operations,
        batches=len(seeder.samples),
        seconds=seconds,
        transactions_per_s=seeder.transactions / seconds,
        by_kind=dict(seeder.by_kind),
        by_result=dict(seeder.by_result),
        data_bytes=directory_bytes(args.data),
        kernel=kernel,
        batch_samples=seeder.samples,
    )
    print(f"seeded {report.transactions:,} transactions on {report.cards:,} cards ({report.operations:,} operations, "
          f"{report.batches:,} commits) in {seconds:.1f} s: {report.transactions_per_s:,.0f} transactions/s, "
          f"{report.data_bytes / 2**20:,.0f} MiB, kernel {kernel}")
    print("  results: " + ", ".join(f"{name} {count:,}" for name, count in sorted(report.by_result.items(), key=lambda item: -item[1])))
    if args.json:
        with open(args.json, "wb") as json_file:
            json_file.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    if args.chart:
        draw(report, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
