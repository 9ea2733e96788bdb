"""What open conditional orders cost the perpetual order path (issue #17: take-profit, trailing stops).

Usage: python bench/conditional.py [--smoke] [--seed N]

The seeded perpetual order stream of bench/risk.py (limit orders around 60,000 that rest and cross,
about a third trade) through `Engine.apply` in memory, twice on the same kind of engine: with no
conditional order (the baseline), then with N open ones on the same market from 50 owners — stops,
take-profits and trailing stops, half on the mark price, half on the last trade — placed where the
stream never reaches them (so what is measured is the watching, not the firing). Every trade checks
the market's conditional orders at once; every 100 ms of sequencer time all of them are checked.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import emit  # noqa: E402
from risk import U, order_stream, world  # noqa: E402

from ringfence.derivatives.commands import PlaceConditionalOrder, PlacePerpOrder  # noqa: E402
from ringfence.derivatives.state import derivatives_state  # noqa: E402

OWNERS = 50
#: (type, side, trigger in USDT, callback bp): none reachable by the stream (59,980..60,020)
SHAPES = (("STOP_MARKET", "SELL", 50_000, 0), ("STOP_MARKET", "BUY", 70_000, 0), ("TAKE_PROFIT_MARKET", "SELL", 70_000, 0),
          ("TAKE_PROFIT_MARKET", "BUY", 50_000, 0), ("TRAILING_STOP_MARKET", "SELL", 0, 1_000))


def run(stream: list[tuple[str, str, int, int]], conditional: int, rng: random.Random) -> dict:
    a = world(OWNERS)
    a(PlacePerpOrder("u0", "BTCUSDTPERP", "SELL", price=60_000 * U, quantity=100_000))
    a(PlacePerpOrder("u1", "BTCUSDTPERP", "BUY", price=60_000 * U, quantity=100_000))  # a last price
    for i in range(conditional):
        typ, side, trigger, bp = SHAPES[i % len(SHAPES)]
        trigger += rng.randint(0, 999) if trigger else 0
        ev = a(PlaceConditionalOrder(f"u{i % OWNERS}", "BTCUSDTPERP", side, typ, 100_000, trigger * U, 0, "GTC",
                                     "MARK_PRICE" if i % 2 else "CONTRACT_PRICE", 0, 0, bp))
        assert type(ev[-1]).__name__ == "ConditionalOrderAccepted", ev
    cmds = [PlacePerpOrder(o, "BTCUSDTPERP", s, price=p, quantity=q) for o, s, p, q in stream]
    t0, c0 = time.perf_counter_ns(), time.process_time_ns()
    trades = fired = 0
    for c in cmds:
        for e in a(c):
            name = type(e).__name__
            trades += name == "Trade"
            fired += name == "ConditionalOrderTriggered"
    dt, cpu = time.perf_counter_ns() - t0, time.process_time_ns() - c0
    a.engine.check_invariants()
    assert fired == 0 and len(derivatives_state(a.engine).conditional) == conditional, "the workload must not fire any"
    n = len(cmds)
    return {"orders": n, "trades": trades, "conditional_open": conditional, "orders_per_s": int(n * 10**9 // dt),
            "orders_per_cpu_s": int(n * 10**9 // max(1, cpu))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    n_orders, n_cond = (2_000, 500) if args.smoke else (50_000, 5_000)
    stream = order_stream(random.Random(args.seed), n_orders, OWNERS)
    base = run(stream, 0, random.Random(args.seed))
    withc = run(stream, n_cond, random.Random(args.seed))
    emit("conditional", {"seed": args.seed, "workload": {"orders": n_orders, "conditional_open": n_cond, "owners": OWNERS},
                         "with_conditional": withc, "baseline": {"name": "the same stream with no conditional order", **base},
                         "ratio_cpu": round(withc["orders_per_cpu_s"] / base["orders_per_cpu_s"], 3)},  # float-ok: a ratio
         smoke=args.smoke)


if __name__ == "__main__":
    main()
