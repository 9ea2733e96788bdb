"""bench/replicate.py runs (smoke sizes) against the real NATS and reports both modes in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import NATS_URL


def test_replicate_benchmark_smoke(stream):
    bench = Path(__file__).resolve().parents[2] / "bench" / "replicate.py"
    out = subprocess.run([sys.executable, str(bench), "--smoke", "--nats", NATS_URL], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    tp = line["throughput"]
    assert set(tp) == {"local", "replicated_hash_every_batch", "replicated_hash_every_64"}
    assert all(v["failed"] is None and v["throughput_per_s"] > 0 for v in tp.values()), tp
    assert line["latency"]["replicated_hash_every_64"]["errors"] == 0
    assert line["smoke"] is True
