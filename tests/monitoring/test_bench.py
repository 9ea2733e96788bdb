"""bench/monitoring.py in smoke mode: it runs, emits its JSON line, and the shipped rules (with the
behavioural model) catch every synthetic typology on the held-aside seed at the issue's goal (recall
>= 0.9 at precision >= 0.8); the generator is deterministic."""

import json
import subprocess
import sys
from pathlib import Path

from ringfence.monitoring.synth import TYPOLOGIES, generate
from ringfence.monitoring.events import to_json


def test_monitoring_benchmark_smoke() -> None:
    bench = Path(__file__).resolve().parents[2] / "bench" / "monitoring.py"
    out = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["bench"] == "monitoring" and line["smoke"] is True and "seed=1" in out.stderr
    assert line["throughput_per_s"] > 0 and line["outbox_write_per_s"] > 0 and line["baseline"]["throughput_per_s"] > 0
    assert set(line["typologies"]) == set(TYPOLOGIES)
    for typ, row in line["typologies"].items():
        assert row["accounts"] > 0 and row["recall_permille"] >= 900 and row["precision_permille"] >= 800, (typ, row)
    assert set(line["typologies_rules_only"]) == set(TYPOLOGIES) and line["without_model"]["throughput_per_s"] > 0


def test_the_generator_is_deterministic_for_a_seed() -> None:
    a, b, c = generate(5, 200), generate(5, 200), generate(6, 200)
    assert [to_json(e) for e in a.events] == [to_json(e) for e in b.events] and a.truth == b.truth
    assert [to_json(e) for e in a.events] != [to_json(e) for e in c.events]
    assert all(x.at_ms <= y.at_ms for x, y in zip(a.events, a.events[1:]))
