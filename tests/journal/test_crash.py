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


class Writers:
    """Starts crash_writer.py writers by forking them from one `--fork-server` process (see there)."""

    def __init__(self, fifo_dir: Path) -> None:
        self.server = subprocess.Popen([sys.executable, str(WRITER), "--fork-server"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        self.fifo_dir, self.n = fifo_dir, 0

    def _ask(self, line: str, answer: str) -> str:
        self.server.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.server.stdin.flush()  # type: ignore[union-attr]
        reply = self.server.stdout.readline().split()  # type: ignore[union-attr]
        assert reply[:1] == [answer], f"the fork server answered {reply!r} to {line!r}"
        return reply[1]

    def start(self, data_dir: Path, seed: int) -> tuple[int, Path]:
        self.n += 1
        fifo = self.fifo_dir / f"writer-{self.n}.out"
        os.mkfifo(fifo)
        return int(self._ask(f"run {data_dir} {seed} {fifo}", "pid")), fifo

    def reap(self, pid: int) -> None:
        self._ask(f"reap {pid}", "reaped")

    def close(self) -> None:
        self.server.stdin.close()  # type: ignore[union-attr]
        assert self.server.wait(30) == 0


def _run_until_killed(writers: Writers, data_dir: Path, seed: int, delay_s: float) -> tuple[set[int], int]:  # float-ok: seconds
    pid, fifo = writers.start(data_dir, seed)
    acked: set[int] = set()
    ready = threading.Event()
    recovered_seq = [0]
    errors: list[str] = []

    def reader() -> None:
        with open(fifo) as out:  # EOF when the writer is gone
            for line in out:
                if line.startswith("ACK "):
                    acked.add(int(line.split()[1]))
                elif line.startswith("READY "):
                    recovered_seq[0] = int(line.split()[1])
                    ready.set()
                elif line.startswith("ERR "):
                    errors.append(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started = ready.wait(30)
    if started:
        time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    writers.reap(pid)  # gone (not a zombie) before the next writer or the check opens the journal
    thread.join(5)
    assert started, f"writer {pid} did not start (seed {seed})"
    assert not errors, errors
    return acked, recovered_seq[0]


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    seed = int(os.environ.get("RINGFENCE_CRASH_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"crash test seed={seed} kills={KILLS}")
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    all_acked: set[int] = set()
    last_seq = 0
    writers = Writers(tmp_path)
    for kill in range(KILLS):
        acked, recovered_seq = _run_until_killed(writers, data_dir, rng.randrange(1 << 30), rng.uniform(0.0, 0.25))
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
    writers.close()
    assert len(all_acked) > KILLS, f"seed={seed}: the writer acknowledged too little to prove anything"
