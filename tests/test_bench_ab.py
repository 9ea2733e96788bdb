"""bench/ab.py runs the same seeded workload in two source trees and reports both rates and the
ratio; a tree against itself ends in the same state (the check that catches a behaviour change)."""

from __future__ import annotations

import json
import os
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


def test_digest_ab_compares_two_ledger_digests_each_on_its_own_ledger() -> None:
    """bench/digest_ab.py put both versions on one ledger; since session 17 a digest keeps its state on the
    account records, so the second found nothing to fold and the run stopped at its first batch ("the two
    versions' digests differ"), even for a tree against itself. Each version now digests a ledger of its own."""
    digest = ROOT / "src" / "ringfence" / "ledger" / "digest.py"
    for extra in ([], ["--interpreted"], ["--two-account"]):
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "digest_ab.py"), "--baseline", str(digest),
                               "--batches", "20", *extra], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        assert line["bench"] == "digest_ab" and line["batches"] == 20 and line["ratio"] > 0, line
        assert line["baseline_us_per_batch"] > 0 and line["this_tree_us_per_batch"] > 0, line
