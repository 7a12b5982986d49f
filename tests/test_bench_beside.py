"""`python -m bench e2e --beside KIND`: Pay with and without another load
beside it in one run (a flood of wrong logins, issue 15; back-office writes,
issue 16), and the p99 ratio they bound (a short run here; the figures come
from long ones, see README)."""

import json
import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.parametrize("beside, said", [("login-flood-known", "wrong logins by 4 clients"),
                                          ("back-office", "durable writes by 4 clients, 0 refused")])
def test_e2e_measures_pay_with_another_load_beside_it_and_reports_the_p99_ratio(tmp_path, beside, said):
    report_path = tmp_path / "flood.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--beside", beside, "--beside-clients", "4", "--skip-echo", "--concurrency", "8", "--duration", "1.5",
         "--warmup", "0.5", "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert (report["parameters"]["beside"], report["parameters"]["beside_clients"]) == (beside, 4)
    for side in ("pay", "pay_beside"):
        assert report[side]["requests"] > 0 and report[side]["errors"] == 0, side
    assert report["beside_p99_ratio"] == report["pay_beside"]["latency_ms"]["p99"] / report["pay"]["latency_ms"]["p99"]
    assert "beside_p99_ratio" in result.stdout and said in result.stderr


def test_a_beside_load_at_a_rate_never_calls_faster_than_it():
    """--beside-rate: the clients' calls together are spaced 1/R apart, so N
    calls take at least (N - 1) / R seconds whatever the threads do."""
    import time

    from bench.beside import BesideLoad

    class Counting(BesideLoad):
        calls = 0

        def one_client(self):
            while not self.stopping.is_set() and self.calls < 60:
                self.pace()
                self.count("calls")

        def summary(self):
            return f"{self.calls} calls"

    started = time.monotonic()
    load = Counting("127.0.0.1:1", clients=4, rate_per_s=200.0).start()
    while load.calls < 60:
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    load.stop()
    assert elapsed >= 59 / 200.0
