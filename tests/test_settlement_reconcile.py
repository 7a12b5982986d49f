"""Reconciliation over generated days: the real kernel (both kernels, through
core.ledger) and the channel simulators' statements in their real formats.
Every injected fault is found in its kind, a clean day has no difference,
midnight is crossed within the window, the queue keeps who and why, a
re-import changes nothing, and clearing adds up exactly to the journal."""

import collections
import os

import numpy as np
import pytest

from core.audit import JOURNAL_DTYPE
from core.records import Account
from core.results import AccountKind, Channel, Movement, ResultCode
from core.settlement import queue
from core.settlement.clearing import clear_day, group_sums
from core.settlement.model import DifferenceKind, DifferenceState, ItemKind, ResolutionAction
from core.settlement.simulate import CHANNELS, Network
from core.settlement.statements import StatementError
from tests.conftest import open_ledger
from tests.settlement_samples import DAY, EXPECTED, STATEMENT_FILES, build_sample_day
from tests.support import REPO

DATA = os.path.join(REPO, "tests", "data", "settlement")


def import_days(store, network, days, channels=CHANNELS):
    for channel in channels:
        for day in days:
            queue.import_statement(store, channel, network.statement_file(channel, day), f"{channel.name}-{day}", "tester", day=day)


def reconcile(store, ledger, day, window_ms=queue.reconcile.WINDOW_MS_DEFAULT):
    return {channel: queue.reconcile_day(store, channel, day, window_ms, txn_lookup=ledger.txn) for channel in CHANNELS}


def found(store, day):
    return {(d.channel, d.item, d.reference, d.kind) for d in queue.differences(store, day=day)}


@pytest.fixture
def network(ledger):
    built = Network(ledger, stations=3, seed=3)
    yield built
    built.close()


def test_a_clean_generated_day_has_no_differences(ledger, network):
    for day in (DAY - 1, DAY, DAY + 1):
        network.run_day(day, sales=45, voids=3, refunds=4)
    import_days(ledger.store, network, (DAY - 1, DAY, DAY + 1))
    runs = reconcile(ledger.store, ledger, DAY)
    assert all(run.differences == 0 and run.items_waiting == 0 for run in runs.values()), runs
    assert sum(run.items_matched for run in runs.values()) >= 35
    assert all(run.ours_minor == run.channel_minor for run in runs.values())
    assert queue.differences(ledger.store) == []


def test_every_injected_fault_is_found_in_its_kind_and_nothing_else(ledger, network):
    network.run_day(DAY - 1, sales=30)
    network.run_day(DAY, sales=30)
    network.fault_paid_after_timeout(2, Channel.WECHAT_PAY)
    network.fault_void_lost(1, Channel.ALIPAY)
    network.fault_net_of_fee(3, Channel.BANK_CARD)
    network.fault_missing_on_statement(1, Channel.WECHAT_PAY)
    network.fault_paid_after_timeout(3, Channel.BANK_CARD)
    network.fault_void_lost(2, Channel.WECHAT_PAY)
    earlier = [sale for sale in network.sales if sale.day == DAY - 1 and sale.channel_only]
    network.fault_refund_after_timeout(earlier[0], 7)
    import_days(ledger.store, network, (DAY - 1, DAY, DAY + 1))
    runs = reconcile(ledger.store, ledger, DAY)
    expected = {(e.channel, e.item, e.reference, e.kind) for e in network.expected}
    assert len(expected) == 7
    assert found(ledger.store, DAY) == expected
    assert sum(run.differences for run in runs.values()) == 7
    fee_fault = next(d for d in queue.differences(ledger.store) if d.kind == DifferenceKind.AMOUNT_DIFFERS)
    assert -fee_fault.delta_minor == fee_fault.fee_minor and "net of its fee" in fee_fault.detail
    assert runs[Channel.WECHAT_PAY].fees_minor > 0
    # The day before was clean, and stays so with the faults of the day after it.
    assert all(run.differences == 0 for run in reconcile(ledger.store, ledger, DAY - 1).values())


def midnight_network(ledger) -> tuple[Network, int, int]:
    """A sale the channel books at 23:59:59.950 that Tally captures after
    midnight, and a refund Tally posts at 23:59:50 that the channel books 20 s
    later, the next day."""
    network = Network(ledger, stations=2, seed=4)
    network.run_day(DAY - 1, sales=9)
    network.at(DAY, 23, 59, 59, 800)
    sale = network.pay(1, 7_700, Channel.WECHAT_PAY)
    assert sale.code == ResultCode.APPROVED and network.day == DAY + 1
    earlier = next(s for s in network.sales if s.day == DAY - 1 and s.channel == Channel.ALIPAY and s.channel_only)
    network.at(DAY, 23, 59, 50)
    refund = network.refund_booked_late(earlier, 1, 20_000)
    return network, sale.txn_id, refund.txn_id


def test_rows_crossing_midnight_are_matched_within_the_window(tmp_path):
    ledger = open_ledger(str(tmp_path / "midnight"), "cython")
    network, sale_id, refund_id = midnight_network(ledger)
    import_days(ledger.store, network, (DAY - 1, DAY, DAY + 1))
    for day in (DAY, DAY + 1):
        assert all(run.differences == 0 and run.items_waiting == 0 for run in reconcile(ledger.store, ledger, day).values())
    # Without a window, each day sees one side of each.
    reconcile(ledger.store, ledger, DAY, window_ms=0)
    reconcile(ledger.store, ledger, DAY + 1, window_ms=0)
    assert found(ledger.store, DAY) == {
        (Channel.WECHAT_PAY, ItemKind.PAYMENT, sale_id, DifferenceKind.ONLY_CHANNEL),
        (Channel.ALIPAY, ItemKind.REFUND, refund_id, DifferenceKind.ONLY_OURS),
    }
    assert found(ledger.store, DAY + 1) == {
        (Channel.WECHAT_PAY, ItemKind.PAYMENT, sale_id, DifferenceKind.ONLY_OURS),
        (Channel.ALIPAY, ItemKind.REFUND, refund_id, DifferenceKind.ONLY_CHANNEL),
    }
    # With the window back, a new reconciliation clears them (logged, by the system).
    reconcile(ledger.store, ledger, DAY)
    states = {d.state for d in queue.differences(ledger.store, day=DAY)}
    assert states == {DifferenceState.CLEARED}
    assert any(action.what == "cleared" and action.by == "system" for action in queue.actions(ledger.store))
    network.close()
    ledger.store.close()


def test_an_entry_near_midnight_waits_for_the_next_statement(tmp_path):
    ledger = open_ledger(str(tmp_path / "waiting"), "cython")
    network, _, refund_id = midnight_network(ledger)
    import_days(ledger.store, network, (DAY - 1, DAY))
    run = queue.reconcile_day(ledger.store, Channel.ALIPAY, DAY, txn_lookup=ledger.txn)
    assert (run.items_waiting, run.differences) == (1, 0)
    import_days(ledger.store, network, (DAY + 1,), channels=(Channel.ALIPAY,))
    run = queue.reconcile_day(ledger.store, Channel.ALIPAY, DAY, txn_lookup=ledger.txn)
    assert (run.items_waiting, run.differences) == (0, 0)
    network.close()
    ledger.store.close()


def test_a_refund_the_channel_books_the_next_day_beyond_the_window_is_reported_on_both_days(tmp_path):
    ledger = open_ledger(str(tmp_path / "late"), "cython")
    network = Network(ledger, stations=2, seed=6)
    network.run_day(DAY - 1, sales=9)
    earlier = next(s for s in network.sales if s.channel == Channel.BANK_CARD and s.channel_only)
    network.at(DAY, 15)
    refund = network.refund_booked_late(earlier, 50, 20 * 3_600_000)
    import_days(ledger.store, network, (DAY - 1, DAY, DAY + 1))
    reconcile(ledger.store, ledger, DAY)
    reconcile(ledger.store, ledger, DAY + 1)
    assert found(ledger.store, DAY) == {(Channel.BANK_CARD, ItemKind.REFUND, refund.txn_id, DifferenceKind.ONLY_OURS)}
    assert found(ledger.store, DAY + 1) == {(Channel.BANK_CARD, ItemKind.REFUND, refund.txn_id, DifferenceKind.ONLY_CHANNEL)}
    network.close()
    ledger.store.close()


# ------------------------------------------------------------------ the queue


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample day of tests/data, on the Cython kernel, statements imported
    from the files and reconciled."""
    ledger = open_ledger(str(tmp_path_factory.mktemp("sample") / "data"), "cython")
    network = build_sample_day(ledger)
    for channel, name in STATEMENT_FILES.items():
        with open(os.path.join(DATA, name), "rb") as file:
            queue.import_statement(ledger.store, channel, file.read(), name, "tester")
        queue.reconcile_day(ledger.store, channel, DAY, txn_lookup=ledger.txn)
    yield ledger, network
    network.close()
    ledger.store.close()


def test_the_sample_statements_give_the_expected_reports(sample, tmp_path):
    from core.settlement.report import write_day_report

    ledger, network = sample
    for name, channel in ((name, channel) for channel, name in STATEMENT_FILES.items()):
        with open(os.path.join(DATA, name), "rb") as file:
            assert file.read() == network.statement_file(channel, DAY), f"{name} no longer what the simulator writes: `python -m tests.settlement_samples`"
    paths = write_day_report(ledger.store, clear_day(ledger.store, DAY), str(tmp_path))
    for name in ("differences.csv", "reconciliation.csv", "takings.csv"):
        with open(os.path.join(EXPECTED, name), encoding="utf-8") as expected, open(tmp_path / name, encoding="utf-8") as written:
            assert written.read() == expected.read(), name
    for path in paths:
        if path.endswith(".png"):
            with open(path, "rb") as file:
                assert file.read(8) == b"\x89PNG\r\n\x1a\n"
            assert os.path.getsize(path) > 5_000


def test_a_reimport_of_the_same_file_changes_nothing(sample):
    ledger, network = sample
    store = ledger.store
    before = (queue.imports(store), queue.differences(store), len(queue.actions(store)))
    name = STATEMENT_FILES[Channel.WECHAT_PAY]
    with open(os.path.join(DATA, name), "rb") as file:
        data = file.read()
    result, record = queue.import_statement(store, Channel.WECHAT_PAY, data, "again.csv", "someone else")
    assert result == queue.ImportResult.ALREADY_IMPORTED and record.file_name == name
    for channel in CHANNELS:
        queue.reconcile_day(store, channel, DAY, txn_lookup=ledger.txn)
    assert (queue.imports(store), queue.differences(store), len(queue.actions(store))) == before
    # A different file for the same channel and day is refused unless replaced.
    other = network.statement_file(Channel.WECHAT_PAY, DAY).replace(b"`Tally sale", b"`Tally sale 2", 1)
    with pytest.raises(queue.SettlementError, match="replace it explicitly"):
        queue.import_statement(store, Channel.WECHAT_PAY, other, "other.csv", "tester")
    with pytest.raises(StatementError, match="line 1"):
        queue.import_statement(store, Channel.ALIPAY, data, name, "tester")
    assert queue.imports(store) == before[0]


def test_staff_resolve_differences_with_who_and_why(sample):
    ledger, _ = sample
    store = ledger.store
    open_before = queue.differences(store, state=DifferenceState.OPEN)
    by_kind = {d.kind: d for d in open_before}
    with pytest.raises(queue.SettlementError, match="why is required"):
        queue.resolve(store, by_kind[DifferenceKind.ONLY_OURS].key, ResolutionAction.ACCEPT, "ana", " ")
    with pytest.raises(queue.SettlementError, match="no ledger was given"):
        queue.resolve(store, by_kind[DifferenceKind.ONLY_CHANNEL].key, ResolutionAction.ADJUST, "ana", "x")

    accepted = queue.resolve(store, by_kind[DifferenceKind.AMOUNT_DIFFERS].key, ResolutionAction.ACCEPT, "ana", "the acquirer's fee, booked separately")
    assert accepted.state == DifferenceState.RESOLVED and accepted.resolution.by == "ana"

    only_channel = by_kind[DifferenceKind.ONLY_CHANNEL]
    receivable_before = ledger.account(AccountKind.STATION_RECEIVABLE, only_channel.station_id).balance
    posted = []

    def apply_in(txn, ops):
        posted.extend(ops)
        return ledger.apply_in(txn, ops, network_now(), DAY)

    adjusted = queue.resolve(store, only_channel.key, ResolutionAction.ADJUST, "bo", "customer charged, no sale: credit the station",
                             apply_in=apply_in)
    resolution = adjusted.resolution
    assert resolution.adjustment_minor == only_channel.delta_minor and resolution.adjustment_txn_id > 0
    assert ledger.account(AccountKind.STATION_RECEIVABLE, only_channel.station_id).balance == receivable_before + only_channel.delta_minor
    entries = list(ledger.journal(resolution.adjustment_txn_id))
    assert [(e.movement, e.debit_kind, e.debit_owner, e.amount) for e in entries] == [
        (Movement.TRANSFER, AccountKind.CHANNEL_CLEARING, only_channel.channel, only_channel.delta_minor)
    ]
    # The same adjustment again moves nothing twice: the ledger replays it.
    assert ledger.apply([posted[0]], network_now(), DAY)[0].txn_id == resolution.adjustment_txn_id
    with pytest.raises(queue.SettlementError, match="is resolved by bo"):
        queue.resolve(store, only_channel.key, ResolutionAction.ACCEPT, "cy", "again")

    reversed_ = queue.resolve(store, by_kind[DifferenceKind.STATUS_DIFFERS].key, ResolutionAction.REVERSE, "cy", "refunded in the Alipay portal")
    assert reversed_.resolution.action == ResolutionAction.REVERSE

    still_open = queue.differences(store, state=DifferenceState.OPEN)
    assert len(still_open) == len(open_before) - 3
    log = queue.actions(store, only_channel.key)
    assert [(a.what.split(" ")[0], a.by) for a in log] == [("found", "system"), ("adjust", "bo")]
    assert log[-1].why == "customer charged, no sale: credit the station"
    # Reconciling again leaves resolved ones as staff left them.
    for channel in CHANNELS:
        queue.reconcile_day(store, channel, DAY, txn_lookup=ledger.txn)
    assert queue.difference(store, only_channel.key).state == DifferenceState.RESOLVED
    assert len(queue.differences(store, state=DifferenceState.OPEN)) == len(still_open)
    # The adjustment shows in the station's clearing.
    methods = {line.method for line in clear_day(store, DAY).lines if line.station_id == only_channel.station_id}
    assert f"adjustment/{Channel(only_channel.channel).name.lower()}" in methods


def network_now() -> int:
    return DAY * 86_400_000 + 12 * 3_600_000


# ------------------------------------------------------------------ clearing


def test_clearing_adds_up_exactly_to_the_journal(ledger, network):
    days = (DAY - 1, DAY, DAY + 1)
    for day in days:
        network.run_day(day, sales=40, voids=3, refunds=4)
    network.fault_paid_after_timeout(1, Channel.ALIPAY)
    totals = collections.Counter()
    for day in days:
        clearing = clear_day(ledger.store, day)
        # Independently: every money entry of the day touching a station's accounts.
        expected = collections.Counter()
        for entry in ledger.journal():
            if entry.business_day != day:
                continue
            for kind, owner, sign in ((entry.credit_kind, entry.credit_owner, 1), (entry.debit_kind, entry.debit_owner, -1)):
                if kind in (AccountKind.STATION_RECEIVABLE, AccountKind.TOPUP_FUNDING):
                    expected[(owner, entry.movement)] += sign * entry.amount
        by_station_movement = collections.Counter()
        movement_of = {"fleet": Movement.FLEET, "personal": Movement.PERSONAL, "points": Movement.POINTS_CASH, "top-up": Movement.TOPUP}
        for line in clearing.lines:
            by_station_movement[(line.station_id, movement_of.get(line.method, Movement.CHANNEL))] += line.net_minor
            assert line.in_minor - line.out_minor == line.net_minor and line.in_minor >= 0 and line.out_minor >= 0
        assert +by_station_movement == +expected
        totals.update(clearing.net_by_station())
    for station in range(1, 4):
        balance = sum((ledger.account(kind, station) or Account()).balance for kind in (AccountKind.STATION_RECEIVABLE, AccountKind.TOPUP_FUNDING))
        assert totals[station] == balance


def test_clearing_groups_alike_whether_or_not_the_owner_ids_pack_into_one_number():
    """group_sums sorts (station, movement, channel) packed into a uint64;
    ids too large to pack take the slower path with the same sums."""
    entries = np.zeros(5, dtype=JOURNAL_DTYPE)
    entries["credit_kind"] = AccountKind.STATION_RECEIVABLE
    entries["movement"] = Movement.PERSONAL
    entries["amount"] = (100, 250, 7, 1_000, 3)
    entries["credit_owner"] = (7, 7, 9, 7, 9)
    entries["debit_kind"][3] = AccountKind.STATION_RECEIVABLE  # a transfer out of station 8 into 7
    entries["debit_owner"][3] = 8
    small = group_sums(entries)
    assert small == {(7, Movement.PERSONAL, 0): (1_350, 0, 3), (8, Movement.PERSONAL, 0): (0, 1_000, 1),
                     (9, Movement.PERSONAL, 0): (10, 0, 2)}
    entries["credit_owner"] += 1 << 40
    entries["debit_owner"][3] += 1 << 40
    assert group_sums(entries) == {(station + (1 << 40), movement, channel): sums
                                   for (station, movement, channel), sums in small.items()}


# ------------------------------------------------------------------ export and CLI


def test_a_days_journal_exports_as_csv_and_parquet(sample, tmp_path):
    import pyarrow.csv
    import pyarrow.parquet

    from core.settlement.export import export_day

    ledger, _ = sample
    rows = export_day(ledger.store, DAY, str(tmp_path / "day.csv"), str(tmp_path / "day.parquet"))
    entries = [e for e in ledger.journal() if e.business_day == DAY]
    assert rows == len(entries) > 50
    for table in (pyarrow.parquet.read_table(tmp_path / "day.parquet"), pyarrow.csv.read_csv(tmp_path / "day.csv")):
        assert table.num_rows == rows
        assert table.column("amount_minor").to_pylist() == [e.amount for e in entries]
        assert table.column("seq").to_pylist() == [e.seq for e in entries]
        assert set(table.column("movement").to_pylist()) <= {m.name for m in Movement}
    assert export_day(ledger.store, DAY + 30, str(tmp_path / "empty.csv")) == 0
    assert open(tmp_path / "empty.csv").read().startswith('"seq","txn_id","amount_minor"')


def test_an_export_and_the_queue_log_tell_time_in_the_networks_zone(sample, tmp_path):
    """Statements are UTC+8: an export's created_at and the queue log are in
    the network's time zone too, with the offset written beside them."""
    import datetime
    import subprocess
    import sys

    import pyarrow.parquet

    from core.settlement.export import export_day

    ledger, _ = sample
    export_day(ledger.store, DAY, str(tmp_path / "day.csv"), str(tmp_path / "day.parquet"), utc_offset_minutes=480)
    table = pyarrow.parquet.read_table(tmp_path / "day.parquet")
    assert str(table.schema.field("created_at").type.tz) == "+08:00"
    first = table.column("created_at")[0].as_py()
    created_ms = table.column("created_ms")[0].as_py()
    assert first.utcoffset() == datetime.timedelta(hours=8) and int(first.timestamp() * 1000) == created_ms
    assert "+08" in open(tmp_path / "day.csv").read().splitlines()[1]
    log = subprocess.run([sys.executable, "-m", "core.settlement", "queue", "log", "--data", ledger.store.path],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TALLY_UTC_OFFSET_MINUTES": "480"})
    assert log.returncode == 0, log.stderr
    assert log.stdout and all(" UTC+8 " in line for line in log.stdout.splitlines())


def test_the_command_line_runs_a_whole_day(tmp_path, capsys):
    from core.settlement.__main__ import main

    data, statements, reports = str(tmp_path / "data"), str(tmp_path / "statements"), str(tmp_path / "reports")
    assert main(["generate", "--data", data, "--day", "2024-06-01", "--sales", "24", "--faults", "--statements", statements, "--kernel", "cython"]) == 0
    files = sorted(os.listdir(statements))
    assert len(files) == 6
    for channel in ("bank_card", "wechat_pay", "alipay"):
        paths = [os.path.join(statements, name) for name in files if name.startswith(channel)]
        assert main(["import", "--data", data, "--channel", channel, *paths, "--by", "ops"]) == 0
    assert main(["import", "--data", data, "--channel", "alipay", os.path.join(DATA, "bad", "alipay-footer.csv")]) == 2
    capsys.readouterr()
    assert main(["reconcile", "--data", data, "--day", "2024-06-01"]) == 1  # differences found
    out = capsys.readouterr().out
    assert "wechat_pay 2024-06-01:" in out and "1 only_channel" in out
    assert main(["queue", "list", "--data", data]) == 0
    listing = capsys.readouterr().out
    assert listing.strip().endswith("4 open differences")
    first = listing.split()[0]
    assert main(["queue", "resolve", "--data", data, first, "--action", "accept", "--by", "ana", "--why", "checked"]) == 0
    assert main(["queue", "list", "--data", data, "--json"]) == 0
    assert '"state": 1' in capsys.readouterr().out
    assert main(["queue", "log", "--data", data, first]) == 0
    assert "accept -- ana: checked" in capsys.readouterr().out
    assert main(["clear", "--data", data, "--day", "2024-06-01", "--csv", str(tmp_path / "clear.csv")]) == 0
    assert main(["export", "--data", data, "--day", "2024-06-01", "--csv", str(tmp_path / "j.csv"), "--parquet", str(tmp_path / "j.parquet")]) == 0
    assert main(["report", "--data", data, "--day", "2024-06-01", "--out", reports]) == 0
    assert sorted(os.listdir(reports)) == ["differences.csv", "differences.png", "discounts.csv", "reconciliation.csv", "takings.csv", "takings.png"]


def test_every_settlement_command_has_help():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "core.settlement", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "usage: python -m core.settlement" in result.stdout
    for command in ("import", "reconcile", "queue", "clear", "export", "report", "generate"):
        assert command in result.stdout
    from core.settlement.__main__ import build_parser

    parser = build_parser()
    for command in (["import"], ["reconcile"], ["queue"], ["queue", "list"], ["queue", "resolve"], ["clear"], ["export"], ["report"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*command, "--help"])
        assert exit_.value.code == 0


def test_statements_are_refused_once_a_channel_forgot_payments(ledger):
    # Each channel takes a third of the sales: 30 sales overflow 5 per channel.
    network = Network(ledger, stations=2, seed=7, payments_max=5)
    try:
        network.run_day(DAY, sales=30)
        with pytest.raises(ValueError, match=r"channel bank_card forgot \d+ payments \(it remembers 5\)"):
            network.statement_file(Channel.BANK_CARD, DAY)
    finally:
        network.close()


@pytest.mark.parametrize("days, sales, message", [
    ("0", "10", "--days must be within 1 .. 366, got 0"),
    ("2", "0", "--sales must be within 1 .. 25000, got 0"),
    ("3", "10000", "--days x --sales must be at most 25000 sales in all, got 3 x 10000 = 30000"),
])
def test_generate_refuses_more_sales_than_its_channels_remember(tmp_path, capsys, days, sales, message):
    from core.settlement.__main__ import main

    data = tmp_path / "data"
    assert main(["generate", "--data", str(data), "--day", "2024-06-01", "--days", days, "--sales", sales,
                 "--statements", str(tmp_path / "statements")]) == 2
    assert message in capsys.readouterr().err
    assert not data.exists()
