"""`python -m bench e2e --terminal-auth`: Pay with and without the
terminal-auth interceptor in one run, and their ratio (a short run here;
the figure for issue 6 comes from a long one, see README)."""

import json
import subprocess
import sys

from tests.support import REPO


def test_e2e_measures_pay_with_and_without_terminal_auth_and_reports_the_ratio(tmp_path):
    report_path = tmp_path / "auth.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--terminal-auth", "--skip-echo", "--concurrency", "8", "--duration", "1.5",
         "--warmup", "0.5", "--rounds", "2", "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["parameters"]["terminal_auth"] is True and report["echo"] is None
    for side in ("pay", "pay_auth"):
        assert report[side]["requests"] > 0 and report[side]["errors"] == report[side]["declines"] == 0, side
        assert report[side]["server_exit_code"] == 0
    assert report["auth_ratio"] == report["auth_ratios"]["throughput"] == (
        report["pay_auth"]["throughput_per_s"] / report["pay"]["throughput_per_s"])
    assert "pay+auth" in result.stdout and "auth_ratio" in result.stdout
    # Two rounds of plain, auth, auth, plain: a ratio for each, printed too.
    by_round = report["auth_ratios"]["throughput_by_round"]
    assert len(by_round) == 2 and all(value > 0 for value in by_round)
    assert "auth_ratio by round:" in result.stdout


def test_rounds_out_of_range_are_refused_naming_the_limit():
    result = subprocess.run([sys.executable, "-m", "bench", "e2e", "--terminal-auth", "--rounds", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--rounds must be within 1 .. 20" in result.stderr


def test_terminal_auth_refuses_the_stream_mode():
    result = subprocess.run([sys.executable, "-m", "bench", "e2e", "--terminal-auth", "--mode", "stream"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--terminal-auth needs --mode unary" in result.stderr
