"""Perpetuals' risk path (issue #17): mark-to-market and margin check of N positions, and perpetual
orders through the engine against spot orders (same run, same engine, same book shape).

Usage: python bench/risk.py [--smoke] [--seed N]

1. `margin_check` (ringfence.derivatives.state): every position marked at its market's mark price,
   unrealised PnL, maintenance margin by bracket, cross equity per owner (wallet + margins + PnL),
   the list of accounts below maintenance. N = 1,000,000 positions (half long, half short, two
   markets, 500,000 owners); baseline: a bare loop over the same positions summing size × mark.
2. Order throughput through `Engine.apply` (in memory, no journal): a seeded stream of limit orders
   that rest and cross (about a third trade) on a perpetual vs the same stream on a spot market.
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

from ringfence.app import new_engine  # noqa: E402
from ringfence.derivatives.commands import FuturesTransfer, ListPerpetual, PlacePerpOrder  # noqa: E402
from ringfence.derivatives.state import Position, derivatives_state, margin_check, mark_of_perp  # noqa: E402
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset  # noqa: E402
from ringfence.ledger.model import Transfer  # noqa: E402
from ringfence.trading.commands import ListMarket, PlaceOrder  # noqa: E402

U = 10**6
BRACKETS = [[50_000 * U, 125, 4_000, 0], [600_000 * U, 100, 5_000, 50 * U], [3_000_000 * U, 75, 6_500, 950 * U],
            [12_000_000 * U, 50, 10_000, 11_450 * U]]


class Apply:
    def __init__(self) -> None:
        self.engine = new_engine()
        self.seq = 0
        self.ts = 1_700_000_000 * 10**9

    def __call__(self, cmd):  # type: ignore[no-untyped-def]
        self.seq += 1
        self.ts += 1_000
        return self.engine.apply(cmd, self.seq, self.ts, b"\0" * 32)


def world(owners: int) -> Apply:
    a = Apply()
    a(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    a(RegisterAsset("ETH", 8, "crypto", "ethereum"))
    a(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    a(ListMarket("BTCUSDT", "BTC", "USDT", "spot", 10_000, 100_000, 100_000, band_ppm=0))
    a(ListPerpetual("BTCUSDTPERP", "BTC", "USDT", "BTCUSDT", BRACKETS, tick_size=10_000, lot_size=100_000, min_qty=100_000))
    a(ListPerpetual("ETHUSDTPERP", "ETH", "USDT", "ETHUSDT", BRACKETS, tick_size=10_000, lot_size=100_000, min_qty=100_000))
    ledger = a.engine.ledger
    tid = 1
    for i in range(owners):
        o = f"u{i}"
        for asset in ("USDT", "BTC"):
            a(OpenAccount(o, asset, "available", "spot"))
        usdt, btc = ledger.get(o, "USDT", "available", "spot"), ledger.get(o, "BTC", "available", "spot")
        a(CreateTransfers([Transfer(tid, ledger.world("USDT").id, usdt.id, 10**12), Transfer(tid + 1, ledger.world("BTC").id, btc.id, 10**12)]))
        tid += 2
        a(FuturesTransfer(o, "USDT", 5 * 10**11, "MAIN_UMFUTURE"))
    return a


def plant_positions(a: Apply, n: int, rng: random.Random) -> None:
    """`n` positions straight into the state (a million fills would take the benchmark's whole
    budget): pairs of equal long and short, wallets funded, pool and margins consistent."""
    eng = a.engine
    st = derivatives_state(eng)
    ledger = eng.ledger
    world_usdt = ledger.world("USDT")
    owners = n // 2
    for i in range(owners):
        ledger.open_account(f"p{i}", "USDT", "available", "derivatives")
    quarter = n // 4  # each owner holds one position in each market: n positions, none overwritten
    for k in range(n // 2):
        sym = "BTCUSDTPERP" if k < quarter else "ETHUSDTPERP"
        j = k % quarter
        size = rng.randint(1, 500) * 100_000
        price = rng.randint(50_000, 70_000) * U
        cost = price * size // 10**8
        st.positions[(f"p{2 * j}", sym)] = Position(size, cost, 0, 0, 0)
        st.positions[(f"p{2 * j + 1}", sym)] = Position(-size, cost, 0, 0, 0)
        st.perps[sym].open_interest += size
    for i in range(owners):
        ledger.move(world_usdt, ledger.get(f"p{i}", "USDT", "available", "derivatives"), rng.randint(100, 100_000) * U)


def bench_margin(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    a = world(2)
    a(PlacePerpOrder("u0", "BTCUSDTPERP", "SELL", price=61_000 * U, quantity=100_000))
    a(PlacePerpOrder("u1", "BTCUSDTPERP", "BUY", price=61_000 * U, quantity=100_000))
    a(PlacePerpOrder("u0", "ETHUSDTPERP", "SELL", price=60_000 * U, quantity=100_000))
    a(PlacePerpOrder("u1", "ETHUSDTPERP", "BUY", price=60_000 * U, quantity=100_000))
    plant_positions(a, n, rng)
    eng = a.engine
    st = derivatives_state(eng)
    runs = []
    below = 0
    for _ in range(3):
        t0 = time.perf_counter_ns()
        below = len(margin_check(eng))
        runs.append(time.perf_counter_ns() - t0)
    marks = {s: mark_of_perp(eng, p) for s, p in st.perps.items()}
    base = []
    for _ in range(3):
        t0 = time.perf_counter_ns()
        total = 0
        for (_owner, s), pos in st.positions.items():
            total += pos.size * marks[s]
        base.append(time.perf_counter_ns() - t0)
    best, best_base = min(runs), min(base)
    return {"positions": len(st.positions), "below_maintenance": below, "seconds": best / 1e9,  # float-ok: timing
            "positions_per_s": int(len(st.positions) * 10**9 // best),
            "baseline": {"name": "bare loop: sum of size × mark over the same positions", "seconds": best_base / 1e9,  # float-ok: timing
                         "positions_per_s": int(len(st.positions) * 10**9 // best_base)},
            "goal": {"seconds": 1.0, "positions": 1_000_000}}


def order_stream(rng: random.Random, n: int, owners: int) -> list[tuple[str, str, int, int]]:
    out = []
    for _ in range(n):
        side = rng.choice(("BUY", "SELL"))
        mid = 60_000
        px = mid + rng.randint(-20, 20) * (1 if side == "BUY" else 1)
        out.append((f"u{rng.randrange(owners)}", side, px * U, rng.randint(1, 5) * 100_000))
    return out


def bench_orders(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    owners = 50
    stream = order_stream(rng, n, owners)
    result = {}
    for kind in ("spot", "perp"):
        a = world(owners)
        cmds = [PlaceOrder(o, "BTCUSDT", s, price=p, quantity=q) if kind == "spot" else
                PlacePerpOrder(o, "BTCUSDTPERP", s, price=p, quantity=q) for o, s, p, q in stream]
        t0 = time.perf_counter_ns()
        trades = 0
        for c in cmds:
            for e in a(c):
                if type(e).__name__ == "Trade":
                    trades += 1
        dt = time.perf_counter_ns() - t0
        a.engine.check_invariants()
        result[kind] = {"orders": n, "trades": trades, "orders_per_s": int(n * 10**9 // dt)}
    return {"perp": result["perp"], "baseline": {"name": "the same order stream on the spot market", **result["spot"]},
            "perp_vs_spot": round(result["perp"]["orders_per_s"] / result["spot"]["orders_per_s"], 3),  # float-ok: a ratio
            "goal": {"perp_vs_spot": 1.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    n_pos = 10_000 if args.smoke else 1_000_000
    n_orders = 2_000 if args.smoke else 100_000
    emit("risk", {"seed": args.seed, "workload": {"positions": n_pos, "orders": n_orders, "markets": 2},
                  "margin_check": bench_margin(n_pos, args.seed), "orders": bench_orders(n_orders, args.seed)},
         smoke=args.smoke)


if __name__ == "__main__":
    main()
