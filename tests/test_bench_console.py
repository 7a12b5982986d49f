"""`python -m bench console`: the console's page times on a seeded directory
and Pay's p99 with and without the console in use, in one run (a short run
here, on a directory of fifty thousand transactions; the figures
come from long runs, see README)."""

import json
import subprocess
import sys

from tests.support import REPO


def test_bench_console_times_each_page_and_the_cost_to_pay(tmp_path):
    report_path = tmp_path / "console.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "console", "--transactions", "50000", "--requests", "20", "--warmup-requests", "3",
         "--pay-concurrency", "20", "--pay-duration", "2", "--pay-warmup", "0.5", "--rounds", "1", "--console-rate", "5",
         "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["transactions"] >= 50_000
    assert [page["path"].split("/")[1] or "dashboard" for page in report["pages"]] == ["cards", "dashboard", "settlement"]
    for page in report["pages"]:
        assert page["requests"] == 20 and 0 < page["server_ms_p50"] <= page["server_ms_p95"] <= page["server_ms_max"]
        assert page["meets_target"] == (page["server_ms_p95"] < report["page_p95_target_ms"])
    runs = report["pay_runs"]
    assert [run["variant"] for run in runs] == ["plain", "console", "console", "plain"]
    assert all(run["requests"] > 0 and run["errors"] == 0 for run in runs)
    assert all(run["console_pages"] > 0 for run in runs if run["variant"] == "console")
    assert report["console_p99_ratio"] > 0 and len(report["round_ratios"]) == 1
    assert report["median_round_ratio"] == report["round_ratios"][0]
    assert "console_p99_ratio" in result.stdout and "server p95" in result.stdout
