"""CI runs the state digest benchmark in --smoke mode (never timed here): the incremental digest
equals the digest from nothing after every batch (the bench asserts it) and every part reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_digest_smoke_runs_and_reports() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "digest.py"), "--smoke", "--seed", "3"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["bench"] == "digest" and result["seed"] == 3 and result["smoke"] is True
    for workload in result["results"].values():
        assert set(workload["per_batch"]) == {"order", "cancel", "transfers10", "perp_order"}
        assert workload["from_nothing_us_per_component"]["trading"] > 0
        assert all(v["incremental_us"] > 0 and v["from_nothing_us"] > 0 for v in workload["per_batch"].values())
