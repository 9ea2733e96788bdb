"""Worst single-transfer apply stall as the ledger grows (issue #18, the tail at half capacity).

Usage: python bench/transfer_stall.py [--smoke] [--transfers N] [--note TEXT]

Applies N plain transfers (world -> alice, ids 1..N, no randomness: the workload is fixed) one at
a time through `Ledger.create_transfers`, timing each call, and reports per band of transfers the
slowest call, the 99.99th percentile and the median. The ledger keeps every transfer it ever
applied (`Ledger.transfers`); when that was one dict, each doubling of its table copied the whole
table under the GIL (3.8-5.3 ms at 87,381 transfers, 7.3-8.3 ms at 174,762, 14.5-18.6 ms at
349,525), and the requests queued behind such a stall set the p99 of `bench/ledger.py --half-only`.

Baseline, same run: the same N ids stored into one plain dict (what the table replaced), each
store timed with its membership check, as the ledger's fast path does. The result line reports
both worst stalls and where they fell. The collector is off while timing (the transfers are
structs the collector does not track; its pauses are measured by bench/ledger.py).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from ringfence import native  # noqa: E402
from ringfence.ledger.ledger import Ledger  # noqa: E402
from ringfence.ledger.model import Transfer  # noqa: E402
from ringfence.money import Asset, AssetClass  # noqa: E402


def _summary(times: list[int], band: int) -> dict:
    worst = max(range(len(times)), key=times.__getitem__)
    bands = []
    for start in range(0, len(times), band):
        chunk = sorted(times[start:start + band])
        bands.append({"transfers": [start + 1, start + len(chunk)], "worst_us": chunk[-1] // 1000,
                      "p9999_us": chunk[min(len(chunk) - 1, int(len(chunk) * 0.9999))] // 1000,
                      "median_ns": chunk[len(chunk) // 2]})
    slowest = sorted(range(len(times)), key=times.__getitem__)[-5:][::-1]
    return {"worst_us": times[worst] // 1000, "worst_at_transfers_stored": worst,
            "slowest_5": [[i, times[i] // 1000] for i in slowest], "bands": bands}


def ledger_run(n: int) -> list[int]:
    ledger = Ledger()
    ledger.register_asset(Asset("USD", 2, AssetClass.FIAT))
    alice, _ = ledger.open_account("alice", "USD", "available", "spot")
    world = ledger.world("USD").id
    apply, clock, times = ledger.create_transfers, time.perf_counter_ns, []
    for tid in range(1, n + 1):
        batch = [Transfer(tid, world, alice.id, 1)]
        t0 = clock()
        failures = apply(batch, 0)
        times.append(clock() - t0)
        if failures:
            raise SystemExit(f"transfer {tid} refused: {failures}")
    if len(ledger.transfers) != n:
        raise SystemExit(f"the ledger holds {len(ledger.transfers)} transfers, not {n}")
    return times


def dict_run(n: int, world: int = 1, alice: int = 2) -> list[int]:
    table: dict[int, Transfer] = {}
    clock, times = time.perf_counter_ns, []
    for tid in range(1, n + 1):
        t = Transfer(tid, world, alice, 1)
        t0 = clock()
        if tid not in table:
            table[tid] = t
        times.append(clock() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: python bench/transfer_stall.py --transfers 400000")
    parser.add_argument("--smoke", action="store_true", help="20,000 transfers (CI)")
    parser.add_argument("--transfers", type=int, default=400_000, help="transfers to apply (default 400,000)")
    parser.add_argument("--note", default="", help="free text stored with the result")
    args = parser.parse_args()
    if args.transfers < 1_000:
        parser.error("--transfers: at least 1000")
    n = 20_000 if args.smoke else args.transfers
    gc.collect()
    gc.disable()
    try:
        baseline = dict_run(n)
        ledger = ledger_run(n)
    finally:
        gc.enable()
    band = max(1_000, n // 8)
    result = {"workload": {"transfers": n, "ids": "1..N in order, one transfer per call"},
              "hot_path": native.status()["implementation"],
              "ledger": _summary(ledger, band),
              "baseline": {"name": "the same ids stored into one plain dict (membership check + store), same run",
                           **_summary(baseline, band)}}
    if args.note:
        result["note"] = args.note
    emit("transfer_stall", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
