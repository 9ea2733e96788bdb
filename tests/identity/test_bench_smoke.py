"""The identity benchmark runs in --smoke mode and prints one well-formed JSON line."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_identity_bench_smoke(tmp_path):
    env = dict(os.environ, RINGFENCE_BENCH_RESULTS_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "identity.py"), "--smoke", "--seed", "3"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["bench"] == "identity" and line["seed"] == 3 and "seed=3" in proc.stderr
    assert line["throughput_per_s"] > 0 and line["baseline"]["throughput_per_s"] > 0
    assert line["workload"]["signed_requests"] == 200
    assert json.loads((tmp_path / "identity.jsonl").read_text().splitlines()[-1]) == line
