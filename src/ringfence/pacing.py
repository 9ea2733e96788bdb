"""A background thread's share of the interpreter: periodic work paced so it cannot hold up requests.

Every thread of the engine process shares one GIL with the event loop that answers requests and the
sequencer that journals them. A periodic worker that computes for 100 ms at once (the reconciler's
fold of five seconds of journal, the monitoring scorer's batch) shares the GIL with them, turn by
turn (serve's switch interval), for that whole time, and the requests that arrive meanwhile queue:
at half the order capacity (the engine's GIL 70-100% busy) the backlog of one such burst takes many
times its length to drain (docs/latency.md, session 17). `CpuPacer.tick()`, called between small units of the work,
sleeps once the thread has used `slice_us` of CPU since it last slept, long enough that the thread
uses at most `share_permille` of one core while it works: the same work, spread out, and the GIL
back to the loop within a slice. Its users (docs/latency.md, sessions 17 and 20): the internal
reconciler's fold (a look after every command), the custody chain pass (between two balance reads
while it has found nothing, the chain lock released while it pauses: `unlocked_sleep`), the monitoring scorer (after every page
of events) and its outbox writer (after every chunk of rows), and the proof-of-solvency schedule.
Invariants: it only ever sleeps (never skips or reorders work), the
sleep is bounded (`MAX_SLEEP_US` per tick), and it measures the calling thread's own CPU time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CHAIN_PASS_SHARE_PERMILLE", "MAX_SLEEP_US", "MONITOR_SHARE_PERMILLE", "OUTBOX_SHARE_PERMILLE",
           "POR_SHARE_PERMILLE", "RECONCILER_SHARE_PERMILLE", "CpuPacer", "unlocked_sleep"]

#: the longest single pause (a slow slice, e.g. the thread was descheduled, must not park it for long)
MAX_SLEEP_US = 50_000
#: the internal reconciler (a fold of the journal every 5 s): a tenth of a core while it works, so a
#: 140 ms fold takes ~1.4 s of wall clock, inside its 5 s interval (a longer fold only delays the next pass, which is due 5 s after one ends). At half the order capacity the engine's
#: GIL is 70-100% busy: a share above what is left builds a queue while it lasts
RECONCILER_SHARE_PERMILLE = 100
#: the monitoring scorer (~70 ms of CPU a second at 860 orders/s, 7% of a core; ~12-20 ms a step):
#: its steps spread over most of the time between polls instead of bursts; a scorer that falls a
#: whole read batch behind catches up unpaced (monitoring/service.py), so its lag stays bounded
MONITOR_SHARE_PERMILLE = 100
#: the monitoring outbox's writer (~3 ms of CPU per flush at 1,000 orders/s, ten flushes a second):
#: a quarter of a core while it writes a flush in chunks; a whole batch behind, it writes unpaced
#: (monitoring/stream.py), so its queue stays bounded
OUTBOX_SHARE_PERMILLE = 250
#: the custody chain pass (30-40 ms of CPU per new block with the demo's in-process chains, one
#: balance read at a time): the chain lock is released while it pauses (`unlocked_sleep`), so the
#: miner, the deposit watchers and the withdrawals are not held off by its pauses
CHAIN_PASS_SHARE_PERMILLE = 100
#: the proof-of-solvency publisher (~60 ms of CPU per proof in the demo, every 30 s there): a tenth
#: of a core while it builds one
POR_SHARE_PERMILLE = 100


class CpuPacer:
    """Sleep between slices of a background thread's work so it uses at most `share_permille` of a core.

    `tick()` is cheap (one clock read) when no pause is due; call it between units of work (a journal
    record, a monitoring event, a wallet read). `paused_us` and `pauses` say what it cost in wall time.
    """

    def __init__(self, *, slice_us: int = 2_000, share_permille: int = 250,
                 cpu_ns: Callable[[], int] = time.thread_time_ns, sleep: Callable[[float], None] = time.sleep) -> None:  # float-ok: seconds to sleep
        if not 100 <= slice_us <= 100_000 or not 10 <= share_permille <= 1000:
            raise ValueError("slice_us must be 100..100000 and share_permille 10..1000")
        self.slice_ns = slice_us * 1000
        self.share_permille = share_permille
        self._cpu_ns, self._sleep = cpu_ns, sleep
        self._mark = cpu_ns()
        self.pauses = 0
        self.paused_us = 0

    def restart(self) -> None:
        """Begin a new slice (call before a burst of work after the thread was idle)."""
        self._mark = self._cpu_ns()

    def _pause_us(self) -> int:
        """The pause `tick()` would take now (0: none is due)."""
        used_ns = self._cpu_ns() - self._mark
        if used_ns < self.slice_ns or self.share_permille >= 1000:
            return 0
        # 0 for a share near a whole core and a short slice: keep counting until a pause is due
        return min(MAX_SLEEP_US, used_ns * (1000 - self.share_permille) // self.share_permille // 1000)

    def due(self) -> bool:
        """Would `tick()` pause now? (For work that holds something a pause must not keep, say an open
        transaction: it lets that go first, then ticks.)"""
        return self._pause_us() > 0

    def tick(self) -> None:
        pause_us = self._pause_us()
        if pause_us == 0:
            return
        self.pauses += 1
        self.paused_us += pause_us
        self._sleep(pause_us / 1e6)
        self._mark = self._cpu_ns()


def unlocked_sleep(lock: Any) -> Callable[[float], None]:  # float-ok: seconds to sleep
    """A `sleep` for a `CpuPacer` whose work runs under `lock` (a `threading.RLock`, held once or
    re-entrantly): each pause releases the lock completely for its length and takes it back after,
    so other users of the lock run while the paced work pauses. A caller that does not hold the lock
    just sleeps. (A plain `Lock` is refused: it cannot tell whether this thread is its holder.)"""
    if not hasattr(lock, "_is_owned"):
        raise TypeError("unlocked_sleep needs a threading.RLock")
    condition = threading.Condition(lock)

    def sleep(seconds: float) -> None:  # float-ok: time.sleep's argument
        try:
            condition.wait(seconds)  # releases `lock` however deeply it is held, re-takes it after
        except RuntimeError:  # not held by this thread: nothing to release
            time.sleep(seconds)

    return sleep
