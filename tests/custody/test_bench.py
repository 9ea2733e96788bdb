"""`bench/custody.py --smoke` runs and prints one JSON result line with both rates and their baselines,
for the Ethereum chain and (`"bitcoin"`) the Bitcoin simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_bench_smoke() -> None:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    out = subprocess.run([sys.executable, str(root / "bench" / "custody.py"), "--smoke", "--seed", "3"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    assert "seed 3" in out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["bench"] == "custody" and line["smoke"] is True and line["seed"] == 3
    assert line["workload"]["deposits"] == 6 and line["workload"]["withdrawals"] == 4
    for section in (line, line["bitcoin"]):  # eth-tester, then the Bitcoin simulator (same run)
        for part in ("deposits", "withdrawals"):
            assert section[part]["throughput_per_s"] > 0 and section[part]["baseline"]["throughput_per_s"] > 0
            assert section[part]["ratio_to_baseline"] > 0
    assert line["bitcoin"]["workload"] == {"chain": "bitcoin (UTXO simulator)", "deposits": 6, "withdrawals": 4}
    assert line["goal"] == {"ratio_to_baseline": 0.8}
