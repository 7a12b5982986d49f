"""`python -m core.audit DIR` (`tally audit`): check the ledger's invariants; exit 1 naming each breach.

Owns: the definition of a consistent data directory:
  - per unit (money, points) all balances sum to zero (double entry);
  - every account's balance equals credits - debits, and those equal the sums
    of its journal entries; its entries form one chain, newest first, from
    the account's last_seq (each entry names the one before it on each side);
  - every account's held amount equals the open holds against it, and no
    card or general account is overdrawn;
  - no hold is both posted and voided: a released, expired or aborted
    transaction has no sale postings; a posted one's sale postings equal its
    posted legs; a void or reversal returned exactly what was posted;
  - refunds never exceed what was paid; every stored answer's transaction exists;
  - every request's answer is found by its (terminal, serial): in the
    request index or in its terminal's tail (core/idempotency.py);
  - a card's points balance is what its open lots hold, its newest lot is
    the one stored with its points account, and the expiry index lists
    exactly the open lots (core/lots.py).
Used by: operators, the crash tests, the soak, CI.

The journal is read in chunks into numpy arrays, so a directory with tens of
millions of entries is checked in about a minute with bounded memory.
"""

import argparse
import collections
import json
import sys

import numpy as np

from core import idempotency
from core.records import (
    META_NEXT_TXN_ID,
    META_VALUE,
    POINTS_ACCOUNT_SIZE,
    REQUEST_BUCKET_BITS,
    REQUEST_INDEX_PAIR,
    TOMBSTONE_FINGERPRINT,
    Account,
    JournalEntry,
    Lot,
    Request,
    RequestTail,
    Txn,
    decode,
    inline_lot,
    lot_key,
    parse_account_key,
    parse_lot_expiry_key,
    parse_request_bucket_key,
    u64_key,
)
from core.results import (
    SYSTEM_ACCOUNT_KIND_MIN,
    AccountKind,
    Movement,
    OpKind,
    Reason,
    ResultCode,
    TxnFlag,
    TxnState,
    may_go_negative,
    unit_of,
)
from core import tools
from core.store import Store, entries, rows

JOURNAL_DTYPE = np.dtype(
    [
        ("seq", "<u8"),
        ("txn_id", "<u8"),
        ("amount", "<i8"),
        ("created_ms", "<u8"),
        ("debit_owner", "<u8"),
        ("credit_owner", "<u8"),
        ("debit_kind", "u1"),
        ("credit_kind", "u1"),
        ("movement", "u1"),
        ("reason", "u1"),
        ("business_day", "<u4"),
        ("station_id", "<u4"),
        ("reserved", "<u4"),
        ("debit_prev", "<u8"),
        ("credit_prev", "<u8"),
    ]
)
assert JOURNAL_DTYPE.itemsize == JournalEntry.LAYOUT.size
ACCOUNT_KEY_DTYPE = np.dtype([("kind", "u1"), ("owner", "<u8")])
JOURNAL_CHUNK_ENTRIES = 262_144
MONEY_MOVEMENTS = (Movement.FLEET, Movement.PERSONAL, Movement.POINTS_CASH, Movement.CHANNEL)
PROBLEMS_SHOWN_MAX = 50
CLOSED_HOLD_STATES = (TxnState.RELEASED, TxnState.EXPIRED, TxnState.ABORTED)
# Operations whose transaction id has no Txn record: it names journal
# entries only (a transfer, points granted or spent) or a shift.
KINDS_WITHOUT_TXN_RECORD = (
    OpKind.TRANSFER, OpKind.CHECKIN, OpKind.TASK, OpKind.REDEEM, OpKind.PARTNER_EXCHANGE, OpKind.SIGN_ON, OpKind.SHIFT_CLOSE,
    OpKind.CANCEL_CARD, OpKind.PACKET_CLAIM,
)


class AuditReport:
    def __init__(self):
        self.problems: list[str] = []
        self.counts = collections.Counter()

    def problem(self, text: str):
        self.problems.append(text)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "counts": dict(self.counts), "problems": self.problems}


def _progress(total: int, description: str):
    """A progress bar on a terminal, nothing otherwise."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="rec", disable=None, leave=False, file=sys.stderr)


class _JournalTotals:
    """What the journal says: per-account debits and credits, per-transaction
    money posted by sales and returned by undos and refunds."""

    def __init__(self, txn_id_limit: int):
        self.debits = collections.Counter()
        self.credits = collections.Counter()
        self.sale_money = np.zeros(txn_id_limit, dtype=np.int64)
        self.return_money = np.zeros(txn_id_limit, dtype=np.int64)
        self.entries = 0
        self.last_seq = 0
        self.seq_gaps = 0
        # (kind, owner) -> the seq of the account's newest entry so far
        self.chain_heads: dict[tuple[int, int], int] = {}
        # (kind, owner, seq) of entries that do not name the entry before
        # them on that account
        self.chain_breaks: list[tuple[int, int, int]] = []

    def add_chunk(self, chunk: np.ndarray):
        self.entries += len(chunk)
        self._follow_chains(chunk)
        expected = np.arange(self.last_seq + 1, self.last_seq + 1 + len(chunk), dtype=np.uint64)
        self.seq_gaps += int(np.count_nonzero(chunk["seq"] != expected))
        self.last_seq = int(chunk["seq"][-1])
        for side, totals in (("debit", self.debits), ("credit", self.credits)):
            keys = np.empty(len(chunk), dtype=ACCOUNT_KEY_DTYPE)
            keys["kind"] = chunk[side + "_kind"]
            keys["owner"] = chunk[side + "_owner"]
            unique, inverse = np.unique(keys, return_inverse=True)
            sums = np.zeros(len(unique), dtype=np.int64)
            np.add.at(sums, inverse.ravel(), chunk["amount"])
            for (kind, owner), total in zip(unique.tolist(), sums.tolist()):
                totals[(kind, owner)] += total
        money = np.isin(chunk["movement"], MONEY_MOVEMENTS) & (chunk["txn_id"] < len(self.sale_money))
        sales = money & np.isin(chunk["reason"], (Reason.SALE, Reason.COMPLETE))
        returns = money & np.isin(chunk["reason"], (Reason.REFUND, Reason.REVERSAL, Reason.VOID))
        np.add.at(self.sale_money, chunk["txn_id"][sales].astype(np.int64), chunk["amount"][sales])
        np.add.at(self.return_money, chunk["txn_id"][returns].astype(np.int64), chunk["amount"][returns])


    def _follow_chains(self, chunk: np.ndarray):
        """Each entry must name, on each side, the account's entry before it
        (JournalEntry.debit_prev, credit_prev): sorted by account and seq,
        every entry's prev is the seq before it, and an account's first entry
        in the chunk names the last one of the chunks before."""
        kinds = np.concatenate([chunk["debit_kind"], chunk["credit_kind"]])
        owners = np.concatenate([chunk["debit_owner"], chunk["credit_owner"]])
        seqs = np.concatenate([chunk["seq"], chunk["seq"]])
        prevs = np.concatenate([chunk["debit_prev"], chunk["credit_prev"]])
        order = np.lexsort((seqs, owners, kinds))
        kinds, owners, seqs, prevs = kinds[order], owners[order], seqs[order], prevs[order]
        same = (kinds[1:] == kinds[:-1]) & (owners[1:] == owners[:-1])
        broken = np.flatnonzero(same & (prevs[1:] != seqs[:-1])) + 1
        self.chain_breaks.extend(zip(kinds[broken].tolist(), owners[broken].tolist(), seqs[broken].tolist()))
        first = np.concatenate([[True], ~same])
        last = np.concatenate([~same, [True]])
        for kind, owner, seq, prev in zip(kinds[first].tolist(), owners[first].tolist(), seqs[first].tolist(), prevs[first].tolist()):
            if prev != self.chain_heads.get((kind, owner), 0):
                self.chain_breaks.append((kind, owner, seq))
        self.chain_heads.update(zip(zip(kinds[last].tolist(), owners[last].tolist()), seqs[last].tolist()))


def _read_journal(store: Store, txn, txn_id_limit: int) -> _JournalTotals:
    totals = _JournalTotals(txn_id_limit)
    size = JournalEntry.LAYOUT.size
    with _progress(entries(txn, store.journal), "journal") as bar:
        values = []
        for value in rows(txn, store.journal, keys=False):
            values.append(value)
            if len(values) == JOURNAL_CHUNK_ENTRIES:
                totals.add_chunk(np.frombuffer(b"".join(values), dtype=JOURNAL_DTYPE))
                bar.update(len(values))
                values = []
        if values:
            totals.add_chunk(np.frombuffer(b"".join(values), dtype=JOURNAL_DTYPE))
            bar.update(len(values))
    assert size == JOURNAL_DTYPE.itemsize
    return totals


def _money(record: Txn, prefix: str) -> int:
    return sum(getattr(record, prefix + leg) for leg in ("fleet", "personal", "points_cash", "channel"))


def _check_txn(record: Txn, journal: _JournalTotals, expected_held: collections.Counter, report: AuditReport):
    txn_id = record.txn_id
    sale_money = int(journal.sale_money[txn_id])
    return_money = int(journal.return_money[txn_id])
    posted = _money(record, "posted_")
    name = f"txn {txn_id}"
    if record.state == TxnState.HELD and record.kind in (OpKind.PAY, OpKind.PREAUTH):
        # A refund waiting for its channel reserves money on its sale; it
        # holds nothing on the card's accounts.
        expected_held[(AccountKind.FLEET, record.card_id)] += record.held_fleet
        expected_held[(AccountKind.PERSONAL, record.card_id)] += record.held_personal
        expected_held[(AccountKind.POINTS, record.card_id)] += record.held_points_used
    if record.kind in (OpKind.PAY, OpKind.PREAUTH):
        if record.state in CLOSED_HOLD_STATES and sale_money != 0:
            report.problem(f"{name}: hold is {TxnState(record.state).name} but has {sale_money} of sale postings (posted and voided)")
        if record.state == TxnState.POSTED and sale_money != posted:
            report.problem(f"{name}: posted legs total {posted} but the journal's sale postings total {sale_money}")
        undone = record.flags & (TxnFlag.VOIDED | TxnFlag.REVERSED)
        if undone == (TxnFlag.VOIDED | TxnFlag.REVERSED):
            report.problem(f"{name}: both voided and reversed")
        expected_return = posted - record.shortfall_settled if undone and record.state == TxnState.POSTED else 0
        if return_money != expected_return:
            report.problem(f"{name}: returned {return_money} by void/reversal, expected {expected_return}")
        if _money(record, "refunded_") > posted:
            report.problem(f"{name}: refunded {_money(record, 'refunded_')} exceeds posted {posted}")
        returned_max = posted if undone else _money(record, "refunded_")
        if record.refunds_posted > returned_max or (undone and record.state == TxnState.POSTED and record.refunds_posted != posted):
            report.problem(f"{name}: returned {record.refunds_posted} by posted refunds or undo, expected at most {returned_max}")
    elif record.kind == OpKind.REFUND:
        expected = posted if record.state == TxnState.POSTED else 0
        if return_money != expected:
            report.problem(f"{name}: refund posted {posted} but the journal returned {return_money}")


def _check_accounts(store: Store, txn, journal: _JournalTotals, expected_held, report: AuditReport):
    unit_sums = collections.Counter()
    seen = set()
    for key, value in rows(txn, store.accounts):
        account = decode(Account, value)
        ident = (account.kind, account.owner)
        seen.add(ident)
        name = f"account {AccountKind(account.kind).name}/{account.owner}"
        report.counts["accounts"] += 1
        unit_sums[unit_of(account.kind)] += account.balance
        if parse_account_key(key) != ident:
            report.problem(f"{name}: stored under key {parse_account_key(key)}")
        if account.balance != account.credits - account.debits:
            report.problem(f"{name}: balance {account.balance} != credits {account.credits} - debits {account.debits}")
        if account.debits != journal.debits[ident] or account.credits != journal.credits[ident]:
            report.problem(
                f"{name}: debits/credits {account.debits}/{account.credits} but its journal entries total "
                f"{journal.debits[ident]}/{journal.credits[ident]}"
            )
        if account.last_seq != journal.chain_heads.get(ident, 0):
            report.problem(f"{name}: last journal entry {account.last_seq} but its newest entry is {journal.chain_heads.get(ident, 0)}")
        expected_size = POINTS_ACCOUNT_SIZE if account.kind == AccountKind.POINTS else Account.LAYOUT.size
        if len(value) != expected_size:
            report.problem(f"{name}: stored in {len(value)} bytes, not {expected_size}")
        if account.held != expected_held[ident]:
            report.problem(f"{name}: held {account.held} but open holds total {expected_held[ident]}")
        if not may_go_negative(account.kind) and account.balance - account.held < 0:
            report.problem(f"{name}: overdrawn, balance {account.balance} held {account.held}")
    for ident in (set(journal.debits) | set(journal.credits)) - seen:
        report.problem(f"journal moves account {ident} that does not exist")
    for unit, total in unit_sums.items():
        if total != 0:
            report.problem(f"balances in unit {unit} sum to {total}, not zero")


def _check_lots(store: Store, txn, report: AuditReport):
    """A card's points balance is the sum of its open lots; its newest open
    lot is the one stored with its points account (none there: no open lot);
    the expiry index lists exactly the open lots."""
    lots_total = collections.Counter()
    open_keys = set()
    stored_newest = {}
    for key, value in rows(txn, store.point_lots):
        lot = decode(Lot, value)
        stored_newest[lot.card_id] = lot.expires_day
        if key != lot_key(lot.card_id, lot.expires_day):
            report.problem(f"lot of card {lot.card_id} stored under the wrong key")
        _count_lot(lot, lots_total, open_keys, report)
    for _, value in rows(txn, store.accounts):
        account = decode(Account, value)
        if account.kind != AccountKind.POINTS:
            continue
        newest = inline_lot(value)
        if newest is None and account.owner in stored_newest:
            report.problem(f"card {account.owner}: open lots in point_lots but none stored with its points account")
        if newest is not None:
            if newest.card_id != account.owner or newest.expires_day <= stored_newest.get(account.owner, 0):
                report.problem(f"card {account.owner}: the lot stored with its points account is not its newest")
            _count_lot(newest, lots_total, open_keys, report)
        if account.balance != lots_total[account.owner]:
            report.problem(f"card {account.owner}: points balance {account.balance} but its lots hold {lots_total[account.owner]}")
    indexed = {parse_lot_expiry_key(key) for key in rows(txn, store.lot_expiry, values=False)}
    if indexed != open_keys:
        report.problem(f"lot expiry index differs from the open lots: {len(indexed - open_keys)} extra, {len(open_keys - indexed)} missing")


def _count_lot(lot: Lot, lots_total: collections.Counter, open_keys: set, report: AuditReport):
    report.counts["open_lots"] += 1
    open_keys.add((lot.expires_day, lot.card_id))
    if not 0 < lot.remaining <= lot.original:
        report.problem(f"open lot {lot.card_id}/{lot.expires_day} has {lot.remaining} of {lot.original} points left")
    lots_total[lot.card_id] += lot.remaining


def _check_requests(store: Store, txn, txn_ids: set, report: AuditReport):
    """Every stored answer names a transaction that exists, and is found by
    its (terminal, serial): each index entry names the request of its key,
    each tail holds its terminal's requests within its serial range, no
    serial is above its terminal's largest, and the index and the tails
    together hold every request."""
    tails = {int.from_bytes(key, "big"): decode(RequestTail, value) for key, value in rows(txn, store.request_tails)}
    counted = 0
    for request in idempotency.every_request(txn, store):
        counted += 1
        tail = tails.get(request.terminal_id)
        if tail is None or request.serial > tail.max_serial:
            report.problem(f"request {request.terminal_id}/{request.serial}: above its terminal's largest serial")
        _check_answer(request, txn_ids, report)
    report.counts["requests"] = counted
    listed = 0
    for key, value in rows(txn, store.request_index):
        terminal_id, bucket = parse_request_bucket_key(key)
        previous = -1
        for serial, seq in REQUEST_INDEX_PAIR.iter_unpack(value):
            listed += 1
            stored = txn.get(u64_key(seq), db=store.requests)
            own = terminal_id.to_bytes(4, "little") + serial.to_bytes(8, "little")
            if serial >> REQUEST_BUCKET_BITS != bucket or serial <= previous or stored is None or stored[:4] + stored[8:16] != own:
                report.problem(f"request index of terminal {terminal_id} lists serial {serial} as request {seq}, not its own")
            previous = serial
    for terminal_id, tail in tails.items():
        for _, request in idempotency.tail_requests(txn, store, tail):
            listed += 1
            if request.terminal_id != terminal_id or not tail.tail_min_serial <= request.serial <= tail.tail_max_serial:
                report.problem(f"the request tail of terminal {terminal_id} holds {request.terminal_id}/{request.serial}")
    if listed != counted:
        report.problem(f"{counted} requests stored but {listed} found by index and tails")


def _check_answer(request: Request, txn_ids: set, report: AuditReport):
    entry = request.entry
    result = entry.result
    if entry.fingerprint == TOMBSTONE_FINGERPRINT or result.kind in KINDS_WITHOUT_TXN_RECORD or result.txn_id == 0:
        return
    if result.code == ResultCode.NOT_REVERSIBLE:
        return  # may name a journal-only original (a check-in, a redemption)
    if result.txn_id not in txn_ids:
        report.problem(f"a stored {OpKind(result.kind).name} answer names txn {result.txn_id}, which does not exist")


def audit(store: Store) -> AuditReport:
    report = AuditReport()
    with store.env.begin() as txn:
        raw = txn.get(META_NEXT_TXN_ID, db=store.meta)
        next_txn_id = META_VALUE.unpack(raw)[0] if raw else 1
        journal = _read_journal(store, txn, next_txn_id)
        report.counts["journal_entries"] = journal.entries
        if journal.seq_gaps:
            report.problem(f"journal sequence has {journal.seq_gaps} entries out of order or missing")
        expected_held = collections.Counter()
        txn_ids = set()
        with _progress(entries(txn, store.txns), "transactions") as bar:
            for _, value in rows(txn, store.txns):
                record = decode(Txn, value)
                txn_ids.add(record.txn_id)
                report.counts["transactions"] += 1
                if record.txn_id >= next_txn_id:
                    report.problem(f"txn {record.txn_id} is beyond the id counter {next_txn_id}")
                    continue
                _check_txn(record, journal, expected_held, report)
                bar.update(1)
        _check_accounts(store, txn, journal, expected_held, report)
        _check_lots(store, txn, report)
        _check_requests(store, txn, txn_ids, report)
        for kind, owner, seq in journal.chain_breaks[:PROBLEMS_SHOWN_MAX]:
            report.problem(f"journal entry {seq} does not name the entry before it on account {AccountKind(kind).name}/{owner}")
        if len(journal.chain_breaks) > PROBLEMS_SHOWN_MAX:
            report.problem(f"... and {len(journal.chain_breaks) - PROBLEMS_SHOWN_MAX} more journal entries out of their accounts' chains")
    return report


def main(argv=None, prog: str = "python -m core.audit") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Exit codes: 0 the books are consistent; 1 breaches (each named); "
                                     "2 the audit could not run (one line on stderr).")
    parser.add_argument("dir", nargs="?", metavar="DIR", help="data directory to check (read only); same as --data")
    tools.add_shared_options(parser)
    args = parser.parse_args(argv)
    if args.dir:
        args.data = args.dir
    return tools.run(prog, print_audit, args)


def print_audit(args) -> int:
    store = tools.open_existing_store(tools.data_path(args), readonly=True)
    try:
        report = audit(store)
    finally:
        store.close()
    if tools.json_wanted(args):
        print(json.dumps(report.as_dict(), indent=2))
    else:
        counts = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in sorted(report.counts.items()))
        if report.ok:
            print(f"audit OK: {counts}; every balance matches its journal and all sum to zero")
        else:
            print(f"audit FAILED: {len(report.problems)} problems ({counts})")
            for text in report.problems[:PROBLEMS_SHOWN_MAX]:
                print(f"  - {text}")
            if len(report.problems) > PROBLEMS_SHOWN_MAX:
                print(f"  ... and {len(report.problems) - PROBLEMS_SHOWN_MAX} more")
    return tools.EXIT_OK if report.ok else tools.EXIT_FOUND


if __name__ == "__main__":
    sys.exit(main())
