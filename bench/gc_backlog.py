"""What a backlog costs the cyclic collector: N 1-transfer requests queued behind a held sequencer,
then one young collection timed in thread CPU (docs/latency.md, session 18).

Usage: python bench/gc_backlog.py N closure|shared
  closure: a callback closure per request (bench/ledger.py's harness before session 18)
  shared:  one callback for every request, its slot found by id(ack) (bench/ledger.py now)
Prints the young tracked objects per queued request and the CPU of `gc.collect(0)`. Run it with
PYTHONPATH switched between two trees for an A/B of the node's per-request objects.
"""

from __future__ import annotations

import gc
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ledger as B  # noqa: E402


def main() -> None:
    n, style = int(sys.argv[1]), sys.argv[2]
    root = Path(tempfile.mkdtemp(prefix="rf-gc-backlog-"))
    node, ids, next_id = B.prepared_node(root / "n", 10_000)
    cmds = B.Requests(random.Random(1)).take(ids, next_id, n)
    node.start()
    held, release = threading.Event(), threading.Event()
    node._post(lambda: (held.set(), release.wait(60)))  # a control task: the sequencer waits in it
    assert held.wait(30)
    gc.collect()
    gc.freeze()
    gc.disable()
    slots: dict[int, int] = {}
    acked = [0] * n

    def shared(ack) -> None:  # type: ignore[no-untyped-def]
        acked[slots.pop(id(ack))] = 1

    def make_cb(i: int):  # type: ignore[no-untyped-def]
        def cb(ack) -> None:  # type: ignore[no-untyped-def]
            acked[i] = 1

        return cb

    for i, c in enumerate(cmds):
        ack = node.submit(c)
        if style == "closure":
            ack.add_done_callback(make_cb(i))
        else:
            slots[id(ack)] = i
            ack.add_done_callback(shared)
        del ack
    young = len(gc.get_objects(0))
    started = time.thread_time_ns()
    gc.collect(0)
    cpu_us = (time.thread_time_ns() - started) // 1000
    release.set()
    while sum(acked) < n:
        time.sleep(0.01)
    gc.enable()
    gc.unfreeze()
    node.close()
    print(f"{style} N={n}: young tracked objects {young} ({young / n:.2f} per queued request), "
          f"gc.collect(0) {cpu_us} us CPU ({B.app.__file__})")


if __name__ == "__main__":
    main()
