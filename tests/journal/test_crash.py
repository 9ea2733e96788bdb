"""Crash test: a real writer process is SIGKILLed at seeded random moments and restarted.

Every transfer the writer printed as acknowledged before a kill must be in the recovered state,
and the recovered state hash must equal a clean replay of the journal from genesis. The seed is
printed; rerun with RINGFENCE_CRASH_SEED=<seed> to reproduce.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ringfence.app import new_node, replay_journal

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = int(os.environ.get("RINGFENCE_CRASH_KILLS", "55"))


def _run_until_killed(data_dir: Path, seed: int, delay_s: float) -> tuple[set[int], int]:  # float-ok: seconds
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: set[int] = set()
    ready = threading.Event()
    recovered_seq = [0]

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("ACK "):
                acked.add(int(line.split()[1]))
            elif line.startswith("READY "):
                recovered_seq[0] = int(line.split()[1])
                ready.set()
            elif line.startswith("ERR "):
                raise AssertionError(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert ready.wait(30), f"writer did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    thread.join(5)
    return acked, recovered_seq[0]


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    seed = int(os.environ.get("RINGFENCE_CRASH_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"crash test seed={seed} kills={KILLS}")
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    all_acked: set[int] = set()
    last_seq = 0
    for kill in range(KILLS):
        acked, recovered_seq = _run_until_killed(data_dir, rng.randrange(1 << 30), rng.uniform(0.0, 0.25))
        assert recovered_seq >= last_seq, f"seed={seed} kill={kill}: recovery went back from {last_seq} to {recovered_seq}"
        all_acked |= acked
        if kill % 10 == 9 or kill == KILLS - 1:
            node = new_node(data_dir)
            node.open()
            missing = all_acked - set(node.engine.ledger.transfers)
            assert not missing, f"seed={seed} kill={kill}: acknowledged transfers lost: {sorted(missing)[:10]}"
            node.engine.check_invariants()
            live = node.engine.state_hash()
            last_seq = node.engine.last_seq
            node.close()
            clean, _, _ = replay_journal(data_dir, use_snapshots=False)
            assert clean.state_hash() == live, f"seed={seed} kill={kill}: snapshot+tail differs from a clean replay"
    assert len(all_acked) > KILLS, f"seed={seed}: the writer acknowledged too little to prove anything"
