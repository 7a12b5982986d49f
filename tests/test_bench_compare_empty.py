"""`python -m bench e2e --data DIR --compare-empty`: Pay on a seeded
directory and on a new empty one in one run, and their ratio (a short run
here; the figure for issue 7 comes from a long one on 10 million
transactions, see README)."""

import json
import subprocess
import sys

from core.store import transactions_in_directory
from tests.support import REPO

SEEDED_TRANSACTIONS = 2_000


def test_e2e_compares_a_seeded_directory_with_an_empty_one(tmp_path):
    data_dir, report_path, chart_path = tmp_path / "seeded", tmp_path / "compare.json", tmp_path / "compare.png"
    subprocess.run([sys.executable, "-m", "bench", "seed", "--transactions", str(SEEDED_TRANSACTIONS),
                    "--accounts", "100", str(data_dir)], cwd=REPO, check=True, capture_output=True, timeout=300)
    result = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--compare-empty", "--skip-echo", "--concurrency", "8", "--duration", "1.5",
         "--warmup", "0.2", "--data", str(data_dir), "--json", str(report_path), "--chart", str(chart_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    for side in ("pay", "pay_empty"):
        assert report[side]["requests"] > 0 and report[side]["errors"] == report[side]["declines"] == 0, side
    assert report["data_transactions"] == SEEDED_TRANSACTIONS
    assert report["kernel"] in ("cython", "reference"), "the kernel's name is read from the first run's log"
    assert report["data_ratio"] == report["pay"]["throughput_per_s"] / report["pay_empty"]["throughput_per_s"]
    assert "pay-empty" in result.stdout and "data_ratio" in result.stdout
    assert chart_path.read_bytes().startswith(b"\x89PNG")
    assert f"{SEEDED_TRANSACTIONS:,} transactions when the run began" in result.stdout
    # The `pay` side's sales went into the seeded directory, none of the
    # empty side's did (its warm-ups, 0.4 s in all, sell less than the
    # empty side's 1.5 measured seconds).
    assert transactions_in_directory(str(data_dir)) >= SEEDED_TRANSACTIONS + report["pay"]["requests"]
    assert transactions_in_directory(str(data_dir)) < SEEDED_TRANSACTIONS + report["pay"]["requests"] + report["pay_empty"]["requests"]


def test_compare_empty_needs_a_directory_to_compare():
    result = subprocess.run([sys.executable, "-m", "bench", "e2e", "--compare-empty"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--compare-empty needs --data DIR" in result.stderr
