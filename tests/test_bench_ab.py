"""bench/ab.py runs the same seeded workload in two source trees and reports both rates and the
ratio; a tree against itself ends in the same state (the check that catches a behaviour change)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ab_of_a_tree_against_itself_reports_both_sides_and_the_same_state() -> None:
    for workload in ("core", "ledger"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "ab.py"), "--a", str(ROOT), "--b", str(ROOT),
             "--workload", workload, "--commands", "2000", "--rounds", "2", "--seed", "3"],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        assert line["bench"] == "ab" and line["workload"] == workload and line["seed"] == 3
        for side in ("a", "b"):
            assert line[side]["per_cpu_s"] > 0 and len(line[side]["runs_cpu_s"]) == 2
            assert len(line[side]["state_hash"]) == 1  # every run of one side ends in one state
        assert line["same_state_hash"] is True and line["ratio_b_over_a"] > 0
