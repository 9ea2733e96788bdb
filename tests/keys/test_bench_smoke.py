"""The signing benchmark runs in --smoke mode and prints one well-formed JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_signing_smoke(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "signing.py"), "--smoke", "--seed", "3", "--results",
                          str(tmp_path / "signing.jsonl")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["bench"] == "signing" and line["seed"] == 3
    assert line["throughput_per_s"] > 0 and line["hsm_per_s"] > 0 and line["baseline"]["throughput_per_s"] > 0
    assert line["p50_ms"] <= line["p99_ms"]
    assert "mutual TLS" in line["workload"]["transport"]
    plain = line["baseline_loopback_http"]
    assert plain["throughput_per_s"] > 0 and plain["p50_ms"] <= plain["p99_ms"]
    assert (tmp_path / "signing.jsonl").read_text().strip() == res.stdout.strip().splitlines()[-1]
