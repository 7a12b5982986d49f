"""`python -m bench e2e --promotions`: Pay with and without promotions
active in one run, and their ratio (a short run here; the figure for issue 4
comes from a long one, see README). The data directory kept afterwards shows
the promotions really priced the sales of their half."""

import json
import subprocess
import sys

from core.counters import CounterScope
from core.ledger import Ledger
from core.promotions import store as promotion_store
from core.promotions.model import Stage
from core.store import open_store
from tests.support import REPO


def test_e2e_measures_pay_with_and_without_promotions_and_reports_the_ratio(tmp_path):
    report_path, data_dir = tmp_path / "promotions.json", tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "e2e", "--promotions", "--skip-echo", "--concurrency", "8", "--duration", "1.5",
         "--warmup", "0.5", "--data", str(data_dir), "--json", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    for side in ("pay", "pay_promotions"):
        assert report[side]["requests"] > 0 and report[side]["errors"] == report[side]["declines"] == 0, side
    assert report["promotions_ratio"] == report["pay_promotions"]["throughput_per_s"] / report["pay"]["throughput_per_s"]
    assert "pay+promo" in result.stdout and "promotions_ratio" in result.stdout
    store = open_store(str(data_dir))
    try:
        promotions = [p for p in promotion_store.list_promotions(store) if p.name == "bench discount"]
        # Switched on for each of the two promotions halves, off after each.
        assert [p.stage for p in promotions] == [Stage.ENDED, Stage.ENDED]
        ledger = Ledger(store)
        given = [ledger.counter(CounterScope.PROMOTION_BUDGET, p.promotion_id) for p in promotions]
        # 5% of each 100-minor sale: 5 per sale, at least one sale per half.
        assert all(value > 0 and value % 5 == 0 for value in given), given
    finally:
        store.close()
