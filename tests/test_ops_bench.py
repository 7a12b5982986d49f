"""The operations tools (bench seed, e2e modes, soak, crash) do what operators
rely on: short runs here; the long ones are marked slow (make soak)."""

import json
import os
import subprocess
import sys

import pytest

from bench import soak
from tally.v1 import common_pb2, payment_pb2
from tests.support import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def assert_png(path):
    with open(path, "rb") as chart:
        assert chart.read(8) == PNG_MAGIC


@pytest.mark.parametrize("command", ["seed", "soak", "crash", "e2e"])
def test_every_tool_has_help_json_and_chart(command):
    result = bench(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout and "--chart" in result.stdout


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("seed") / "data")
    report_path = directory + ".json"
    chart_path = directory + ".png"
    result = bench("seed", "--transactions", "3000", "--accounts", "200", directory, "--json", report_path, "--chart", chart_path)
    assert result.returncode == 0, result.stderr
    return directory, json.load(open(report_path)), chart_path


def test_seed_builds_an_audited_directory_through_the_kernel(seeded):
    directory, report, chart_path = seeded
    assert report["transactions"] == 3000 and report["cards"] == 200
    kinds = report["by_kind"]
    assert kinds["OPEN_CARD"] == 200 and kinds["PAY"] > 2000 and kinds["TOPUP"] > 200 and kinds.get("REFUND", 0) > 0
    # Channel payments were settled as the server settles them: no pending left.
    assert kinds.get("CAPTURE", 0) > 0
    assert report["by_result"]["APPROVED"] > 0.95 * report["operations"]
    assert_png(chart_path)
    audit = subprocess.run([sys.executable, "-m", "core.audit", directory, "--json"], capture_output=True, text=True, cwd=REPO)
    assert audit.returncode == 0, audit.stdout
    audited = json.loads(audit.stdout)
    # Each transaction (top-ups, payments, refunds) left its stored answer;
    # card openings and captures are not requests of their own.
    assert audited["counts"]["requests"] == 3000


def test_seed_refuses_a_directory_that_holds_data(seeded):
    directory, _, _ = seeded
    result = bench("seed", "--transactions", "10", "--accounts", "2", directory)
    assert result.returncode == 2 and "already holds a data directory (data.mdb)" in result.stderr
    result = bench("seed", "--transactions", "3", "--accounts", "2", directory + "-other")
    assert result.returncode == 2 and "--transactions (3) must be at least twice --accounts (2)" in result.stderr


def test_e2e_stream_mode_on_a_seeded_directory(seeded, tmp_path):
    directory, _, _ = seeded
    report_path, chart_path = tmp_path / "stream.json", tmp_path / "stream.png"
    result = bench("e2e", "--mode", "stream", "--concurrency", "60", "--duration", "1.5", "--warmup", "0.5",
                   "--data", directory, "--json", str(report_path), "--chart", str(chart_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["parameters"]["mode"] == "stream"
    for side in ("pay", "echo"):
        assert report[side]["requests"] > 0 and report[side]["errors"] == 0
    assert report["pay"]["declines"] == 0 and report["pay"]["latency_ms"]["avg"] > 0
    # Each sale is committed durably: the server wrote its pages (wchar).
    assert report["pay"]["server_written_bytes_per_request"] > 100
    assert_png(chart_path)


def test_e2e_open_loop_keeps_the_arrival_rate(tmp_path):
    report_path = tmp_path / "open.json"
    result = bench("e2e", "--rate", "300", "--concurrency", "150", "--duration", "2", "--warmup", "0.5", "--skip-echo",
                   "--json", str(report_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["parameters"]["rate_per_s"] == 300
    # Open loop: what completes in the window is what arrived, about 600.
    assert 540 <= report["pay"]["requests"] <= 660 and report["pay"]["errors"] == 0


def test_soak_short_run_checks_every_answer_and_passes(tmp_path):
    report_path, chart_path = tmp_path / "soak.json", tmp_path / "soak.png"
    result = bench("soak", "--concurrency", "30", "--duration", "4", "--rss-growth-max-percent", "50",
                   "--json", str(report_path), "--chart", str(chart_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["errors"] == 0 and report["violations"] == 0 and report["audit_ok"] and report["server_exit_code"] == 0
    assert set(report["steps"]) == {name for name, _ in soak.STEPS}, "every kind of step ran"
    assert report["answers"] > 500 and len(report["intervals"]) == 4
    assert report["rss_growth_percent"] is not None
    assert report["data_transactions"] is None, "a new directory: no count to report"
    assert_png(chart_path)


def answer(result=common_pb2.APPROVED, fleet=0, personal=0, points_cash=0, points_used=0, channel=0, earned=0, balances=(0, 0, 0), txn_id=9):
    return payment_pb2.PaymentAnswer(
        result=result, txn_id=txn_id, amount_minor=fleet + personal + points_cash + channel, points_earned=earned,
        sources=payment_pb2.Sources(fleet_minor=fleet, personal_minor=personal, points_cash_minor=points_cash,
                                    points_used=points_used, channel_minor=channel),
        balances=common_pb2.Balances(fleet_minor=balances[0], personal_minor=balances[1], points=balances[2]),
    )


def test_the_soak_model_catches_a_wrong_source_order_balance_or_decline():
    import random

    plan = soak.ClientPlan(address="", mode="unary", client_index_first=0, client_count=1, run_id=1, serial_first=1,
                           warmup_s=0, duration_s=1, seed=1)
    client = soak.Client(0, plan, call=None, rng=random.Random(1))
    client.card = soak.Card(fleet=1_000, personal=500, points=0)
    card_only = payment_pb2.PaymentPlan(card_id=client.card_id, use_fleet=True, use_personal=True)
    # Fleet must pay first.
    with pytest.raises(soak.Violation, match="fleet/personal 200/1000, expected 1000/200"):
        client.check_pay(answer(fleet=200, personal=1_000, balances=(800, -500, 12)), 1_200, card_only, 0, 1)
    client.card = soak.Card(fleet=1_000, personal=500, points=0)
    # The balances the answer reports must follow from the sources.
    with pytest.raises(soak.Violation, match=r"balances \(fleet, personal, points\) \(0, 300, 12\), model \(0, 300, 13\)"):
        client.check_pay(answer(fleet=1_000, personal=200, earned=13, balances=(0, 300, 12)), 1_200, card_only, 0, 1)
    # More than the card holds, and no channel: must be declined.
    with pytest.raises(soak.Violation, match="APPROVED, expected INSUFFICIENT_FUNDS"):
        client.check_pay(answer(fleet=0, personal=300, balances=(0, 0, 12)), 301, card_only, 0, 2)
    client.card = soak.Card(fleet=1_000, personal=500, points=0)
    client.check_pay(answer(fleet=1_000, personal=200, earned=12, balances=(0, 300, 12)), 1_200, card_only, 0, 3)
    assert (client.card.fleet, client.card.personal, client.card.points, client.card.locked_points) == (0, 300, 12, 12)


def test_crash_short_run_loses_nothing_acknowledged(tmp_path):
    report_path, chart_path = tmp_path / "crash.json", tmp_path / "crash.png"
    result = bench("crash", "--cycles", "2", "--clients", "30", "--load-seconds", "0.3", "0.8",
                   "--json", str(report_path), "--chart", str(chart_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert len(report["cycles"]) == 2 and report["acknowledged"] > 0
    assert report["lost"] == 0 and report["mismatched"] == 0 and report["audits_failed"] == 0
    assert all(cycle["pending_after_restart"] == 0 for cycle in report["cycles"])
    assert_png(chart_path)


# ---------------------------------------------------------------- long runs (make soak)


@pytest.mark.slow
def test_soak_500_terminals_for_a_minute(tmp_path):
    report_path = tmp_path / "soak.json"
    result = bench("soak", "--concurrency", "500", "--duration", "60", "--json", str(report_path), timeout_s=900)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["errors"] == 0 and report["violations"] == 0 and report["audit_ok"]


@pytest.mark.slow
def test_crash_20_cycles_with_two_workers(tmp_path):
    result = bench("crash", "--cycles", "20", "--clients", "200", "--server-args=--workers 2 --channel-latency-ms 1 20",
                   "--json", str(tmp_path / "crash.json"), timeout_s=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "crash.json").read_text())["lost"] == 0


def soak_parameters(duration_s: float, warmup_s: float, interval_s: float) -> soak.Parameters:
    return soak.Parameters(mode="unary", concurrency=1, duration_s=duration_s, warmup_s=warmup_s, interval_s=interval_s,
                           client_processes=1, data_dir=None, server_args=[], rss_growth_max_percent=10.0, seed=1)


def test_soak_heap_growth_compares_interval_medians_so_one_spike_does_not_fail_it_but_a_trend_does():
    parameters = soak_parameters(duration_s=600, warmup_s=60, interval_s=60)
    mib = 2**20
    # Flat at 50 MiB after the warm-up, with a burst caught by the very last sample.
    flat = [(at_s, (80 if at_s < 60 else 50) * mib) for at_s in range(0, 601, 5)]
    flat[-1] = (600, 58 * mib)
    assert soak.heap_at_start_and_end(parameters, flat) == (50 * mib, 50 * mib)
    # A steady leak of 1 MiB a minute shows: 10 minutes later, about 9 MiB more.
    leaking = [(at_s, 50 * mib + at_s * mib // 60) for at_s in range(0, 601, 5)]
    start, end = soak.heap_at_start_and_end(parameters, leaking)
    assert (end - start) * 100 / start > 10
    assert soak.heap_at_start_and_end(parameters, [(0, 50 * mib)]) == (None, None)


def test_a_worn_seed_gives_e2es_terminals_and_cards_their_histories(tmp_path):
    """bench seed --worn-sales: each of e2e's clients' cards and terminals has
    N past sales (audited), and e2e then pays on them, its serials above."""
    from bench import e2e
    from core.card_txns import page
    from core.store import open_store

    directory = str(tmp_path / "worn")
    result = bench("seed", "--transactions", "200", "--accounts", "20", "--worn-sales", "30", "--worn-clients", "12",
                   "--batch-size", "50", directory)
    assert result.returncode == 0, result.stderr
    audit = subprocess.run([sys.executable, "-m", "core.audit", directory, "--json"], capture_output=True, text=True, cwd=REPO)
    assert audit.returncode == 0, audit.stdout
    assert json.loads(audit.stdout)["counts"]["requests"] == 200 + 12 * (1 + 30)
    store = open_store(directory, 2**28, readonly=True)
    with store.env.begin() as txn:
        for client in (0, 11):
            history, more = page(txn, store, e2e.CARD_ID_BASE + client, 0, 1000)
            assert [record.kind for record in history].count(6) == 30 and not more  # 30 PAYs, then the top-up
            assert {record.terminal_id for record in history} == {e2e.TERMINAL_ID_BASE + client}
    store.close()
    report_path = tmp_path / "worn.json"
    result = bench("e2e", "--mode", "stream", "--concurrency", "12", "--duration", "1", "--warmup", "0.3", "--skip-echo",
                   "--data", directory, "--json", str(report_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())["pay"]
    assert report["requests"] > 0 and report["errors"] == report["declines"] == 0
