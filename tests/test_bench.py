"""The benchmarks run and report what operators rely on (short runs here;
`make bench` runs the full workloads)."""

import json
import subprocess
import sys

from tests.support import REPO


def test_kernel_benchmark_reports_both_kernels_and_their_ratio(tmp_path):
    report_path = tmp_path / "kernel.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "kernel", "--accounts", "500", "--transfers", "20000", "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["identical_books"] is True
    assert report["kernels"]["cython"]["approved"] == report["kernels"]["reference"]["approved"] > 0
    assert report["ratio"] > 1, "the Cython kernel must beat the reference"


def test_e2e_benchmark_measures_pay_and_the_echo_baseline(tmp_path):
    report_path = tmp_path / "e2e.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--concurrency", "20", "--duration", "2", "--warmup", "0.5", "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    for side in ("pay", "echo"):
        assert report[side]["requests"] > 0 and report[side]["errors"] == 0
        assert set(report[side]["latency_ms"]) >= {"p50", "p95", "p99", "max"}
    assert report["pay"]["declines"] == 0
    assert report["ratios"]["throughput"] > 0
