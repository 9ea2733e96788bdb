"""CI runs the proof-of-liabilities benchmark in --smoke mode (never timed here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_por_smoke_runs_and_reports() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "por.py"), "--smoke", "--jsonl", "--no-record",
                          "--seed", "3"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["bench"] == "por" and result["seed"] == 3
    assert result["sample_proofs_valid"] is True
    assert result["workload"]["accounts"] == 20_000 and result["workload"]["balances_above_2_64"] > 0
    assert result["jsonl_all_proofs"]["proofs"] == 20_000
    assert result["baseline"]["seconds"] > 0
