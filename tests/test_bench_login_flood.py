"""`python -m bench e2e --login-flood`: Pay with and without a flood of
wrong logins in one run, and the p99 ratio issue 15 bounds (a short run
here; the figure comes from a long one, see README)."""

import json
import subprocess
import sys

from tests.support import REPO


def test_e2e_measures_pay_during_a_login_flood_and_reports_the_p99_ratio(tmp_path):
    report_path = tmp_path / "flood.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--login-flood", "4", "--skip-echo", "--concurrency", "8", "--duration", "3",
         "--warmup", "0.5", "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["parameters"]["login_flood"] == 4
    for side in ("pay", "pay_flood"):
        assert report[side]["requests"] > 0 and report[side]["errors"] == 0, side
    assert report["flood_p99_ratio"] == report["pay_flood"]["latency_ms"]["p99"] / report["pay"]["latency_ms"]["p99"]
    assert "flood_p99_ratio" in result.stdout and "wrong logins by 4 clients" in result.stderr
