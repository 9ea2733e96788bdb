"""Worst single-transfer apply stall as the ledger grows (issue #18): applies N plain transfers one
at a time through `Ledger.create_transfers` (world -> alice) and prints, per band of transfers, the
slowest call and the 99.99th percentile. A whole-table rehash of the transfers shows as a spike at
each doubling of the table.

    PYTHONPATH=src python bench/transfer_stall.py [N]   (default 400000)
"""

from __future__ import annotations

import gc
import sys
import time

from ringfence import native
from ringfence.ledger.ledger import Ledger
from ringfence.ledger.model import Transfer
from ringfence.money import Asset, AssetClass


def main(n: int = 400_000, band: int = 50_000) -> None:
    ledger = Ledger()
    ledger.register_asset(Asset("USD", 2, AssetClass.FIAT))
    alice, _ = ledger.open_account("alice", "USD", "available", "spot")
    world = ledger.world("USD").id
    apply = ledger.create_transfers
    clock = time.perf_counter_ns
    times: list[int] = []
    gc.disable()  # the transfers are gc=False structs; keep collector pauses out of the measure
    for tid in range(1, n + 1):
        batch = [Transfer(tid, world, alice.id, 1)]
        t0 = clock()
        failures = apply(batch, 0)
        times.append(clock() - t0)
        assert not failures, failures
    gc.enable()
    print(f"implementation: {native.status()['implementation']}  transfers: {len(ledger.transfers)}")
    worst_all = 0
    for start in range(0, n, band):
        chunk = sorted(times[start:start + band])
        worst_all = max(worst_all, chunk[-1])
        p9999 = chunk[min(len(chunk) - 1, int(len(chunk) * 0.9999))]
        print(f"  {start + 1:>7}-{start + len(chunk):>7}: worst {chunk[-1] / 1e6:7.3f} ms  "
              f"p99.99 {p9999 / 1e6:6.3f} ms  median {chunk[len(chunk) // 2] / 1e3:5.2f} us")
    top = sorted(range(n), key=times.__getitem__)[-8:][::-1]
    print("8 slowest (transfers stored before the call: ms):", ", ".join(f"{i}: {times[i] / 1e6:.2f}" for i in top))
    print(f"worst single apply: {worst_all / 1e6:.3f} ms; total {sum(times) / 1e9:.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400_000)
