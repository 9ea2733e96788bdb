"""Kill a real worker process (SIGKILL: no cleanup) at each step of a withdrawal, restart it from the
journal, and check the withdrawal settles with exactly one transaction on chain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("crash_worker.py")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kills", [["step-2", "after_sign", "after_broadcast"], ["after_record_signed", "step-1"]])
def test_killed_worker_resumes_and_sends_once(tmp_path, kills) -> None:
    res = _run("setup", str(tmp_path))
    assert res.returncode == 0, res.stderr
    for point in kills:
        res = _run("run", str(tmp_path), point)
        assert res.returncode == -signal.SIGKILL, f"{point}: python {SCRIPT} run {tmp_path} {point}\n{res.stderr}"
    res = _run("run", str(tmp_path), "none")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"state": "settled", "dest": 25_000_000, "paying_txs": 1, "hot_matches": True}
