"""Differential run: the compiled hot path against the pure-Python reference on seeded commands.

    python bench/native_diff.py [--smoke] [--seed N] [--commands N] [--src DIR]

Example: python bench/native_diff.py --commands 1000000 --seed 7

Two fresh interpreters run the same seeded command stream: one with the compiled modules
(`ringfence/native.py`; it must report every module compiled, or the run fails) and one with
`RINGFENCE_PURE=1` (every module pure). Each applies the stream to an engine and reports the
SHA-256 of every event it emitted (in order, canonical encoding), the state hash every 50,000
commands and at the end, and what it halted on if anything. The run passes only if both agree on
all of it.

The stream: exchange-core's single-book mix and the multi-market mix (market orders by quantity and
by quote amount) from `ringfence.trading.workload`, which follow the book through the engine's own
events, interleaved (8 %) with seeded "chaos" commands that reach the rest of the matching code:
stop orders of both kinds, FOK, post-only, every self-trade mode, off-tick prices, off-lot, huge and
negative quantities, unknown orders, cancel-all, `TradingBatch`es, reference prices (the dual-price
guard and its timer, a narrow band on one book) and market status changes. Half-way the engine is snapshotted and restored,
and the run carries on in the restored engine.

Output: one JSON line on stdout, appended to bench/results/native_diff.jsonl (unless --no-record).
Exit status 1 if the two disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_EVERY = 50_000
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
ACCOUNTS = 200


def _chaos(rng: random.Random, symbol: str, mid_ticks: int, live: list[int], owners: int) -> Any:
    """One seeded command off the beaten path (see the module docstring)."""
    from ringfence.trading.commands import (
        AmendOrder,
        CancelAll,
        CancelOrder,
        PlaceOrder,
        SetMarketStatus,
        SetReferencePrice,
        TradingBatch,
    )
    from ringfence.trading.workload import LOT, TICK

    owner = f"u{rng.randrange(owners)}"
    side = rng.choice(["BUY", "SELL"])
    r = rng.random()

    def price() -> int:
        p = max(1, mid_ticks + rng.randrange(-40, 41)) * TICK
        return p + (rng.choice([1, -1]) if rng.random() < 0.05 else 0)  # sometimes off tick

    def qty() -> int:
        q = rng.randrange(1, 40) * LOT
        x = rng.random()
        if x < 0.03:
            return q + 1  # off lot
        if x < 0.05:
            return 10**20  # more than anyone holds
        if x < 0.06:
            return -q
        return q

    def order() -> Any:
        kind = rng.choice(["LIMIT", "LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LIMIT", "STOP_MARKET"])
        tif = rng.choice(["GTC", "GTC", "IOC", "FOK"])
        stp = rng.choice(["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"])
        coid = f"c{rng.randrange(50)}" if rng.random() < 0.2 else ""
        if kind == "MARKET":
            if rng.random() < 0.5:
                return PlaceOrder(owner, symbol, side, kind, tif, quantity=qty(), stp=stp, client_order_id=coid)
            return PlaceOrder(owner, symbol, side, kind, tif, quote_amount=rng.randrange(1, 5000) * 10**6, stp=stp, client_order_id=coid)
        stop = price() if kind.startswith("STOP") else 0
        p = 0 if kind == "STOP_MARKET" else price()
        return PlaceOrder(owner, symbol, side, kind, tif, price=p, quantity=qty(), stop_price=stop, stp=stp, client_order_id=coid)

    if r < 0.45:
        return order()
    if r < 0.55:
        oid = rng.choice(live) if live and rng.random() < 0.7 else rng.randrange(1, 10**6)
        return CancelOrder(owner, symbol, oid)
    if r < 0.65:
        oid = rng.choice(live) if live and rng.random() < 0.8 else rng.randrange(1, 10**6)
        return AmendOrder(owner, symbol, oid, price=price() if rng.random() < 0.7 else 0, quantity=qty() if rng.random() < 0.4 else 0)
    if r < 0.70:
        return CancelAll(owner, symbol)
    if r < 0.85:
        return TradingBatch([order() for _ in range(rng.randrange(1, 6))])
    if r < 0.96:
        # Mostly near the touch; sometimes far enough that a narrow band leaves resting orders outside.
        jump = rng.choice([-1700, 1700]) if rng.random() < 0.2 else rng.randrange(-30, 31)
        return SetReferencePrice(symbol, max(1, mid_ticks + jump) * TICK)
    return SetMarketStatus(symbol, rng.choice(["ACTIVE", "ACTIVE", "REDUCE_ONLY"]))


def child(seed: int, n: int) -> dict[str, Any]:
    """Run the stream in this interpreter (whichever implementation it loaded)."""
    import msgspec

    from ringfence import native
    from ringfence.app import new_engine
    from ringfence.engine.core import ShardHalt
    from ringfence.trading.commands import ListMarket, SetMarketStatus
    from ringfence.trading.state import market_of
    from ringfence.trading.workload import TICK, ExchangeCoreMix, fund_transfers, setup_commands

    impl = native.status()
    engine = new_engine()
    seq = 0
    ts = 1_000_000_000
    digest = hashlib.sha256()
    encode = msgspec.json.Encoder().encode
    events_total = 0
    kinds: dict[str, int] = {}
    halted = ""

    def apply(c: Any) -> list[Any]:
        nonlocal seq, ts, events_total
        seq += 1
        ts += 997_000  # ~1 ms per command: the band timer fires on its own
        ev = engine.apply(c, seq, ts, b"")
        digest.update(encode(ev))
        events_total += len(ev)
        for e in ev:
            name = type(e).__name__
            key = f"{name}:{getattr(e, 'reason', '') or getattr(e, 'code', '')}" if name in ("OrderRejected", "OrderExpired", "CommandRejected") else name
            kinds[key] = kinds.get(key, 0) + 1
        return ev

    for c in setup_commands(SYMBOLS, ACCOUNTS):
        if isinstance(c, ListMarket):  # a wide price band on one book, a narrow one on the other
            c = msgspec.structs.replace(c, band_ppm=100_000 if c.symbol == SYMBOLS[0] else 500, band_timeout_ns=10**9)
        apply(c)
    for c in fund_transfers(engine, [s[:-4] for s in SYMBOLS] + ["USDT"], ACCOUNTS):
        apply(c)
    rng = random.Random(seed)
    gens = [
        ExchangeCoreMix(SYMBOLS[0], seed=seed * 1000, accounts=ACCOUNTS, target_orders=400, spread_levels=200),
        ExchangeCoreMix(SYMBOLS[1], seed=seed * 1000 + 1, accounts=ACCOUNTS, target_orders=400, spread_levels=200,
                        shares=(0.30, 0.10, 0.20, 0.05)),
    ]
    for g in gens:
        for c in g.prefill():
            g.observe(apply(c))
    checkpoints: list[str] = []
    commands = hashlib.sha256()
    started = time.perf_counter()
    restored_at = n // 2
    i = 0
    try:
        while i < n:
            k = rng.randrange(len(gens))
            g = gens[k]
            m = market_of(engine, SYMBOLS[k])
            g.touch(m)
            if m.status != "ACTIVE" and rng.random() < 0.05:
                c = SetMarketStatus(SYMBOLS[k], "ACTIVE")  # do not stay reduce-only for long
            elif rng.random() < 0.08:
                mid = (g.best_bid + g.best_ask) // 2 if g.best_ask > g.best_bid else m.last_price // TICK or g.center
                c = _chaos(rng, SYMBOLS[k], mid, g.live, ACCOUNTS)
            else:
                c = g.next()
            commands.update(encode(c))
            ev = apply(c)
            for gg in gens:  # each generator follows its own book
                gg.observe([e for e in ev if getattr(e, "symbol", "") == gg.symbol])
            i += 1
            if i % CHECKPOINT_EVERY == 0:
                checkpoints.append(engine.state_hash())
            if i == restored_at:
                engine = engine.restored(engine.snapshot_bytes())
    except ShardHalt as halt:
        halted = f"seq {halt.seq}: {halt.error}"
    seconds = time.perf_counter() - started
    return {
        "implementation": impl["implementation"],
        "modules": impl["modules"],
        "commands": i,
        "commands_sha256": commands.hexdigest(),
        "events": events_total,
        "events_sha256": digest.hexdigest(),
        "checkpoints": checkpoints,
        "state_hash": "" if halted else engine.state_hash(),
        "halted": halted,
        "event_kinds": dict(sorted(kinds.items())),
        "seconds": round(seconds, 2),  # float-ok: report
    }


def run_child(src: Path, pure: bool, seed: int, n: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "RINGFENCE_PURE": "1" if pure else ""}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--seed", str(seed), "--commands", str(n)],
        env=env, capture_output=True, text=True,
    )
    if proc.returncode:
        raise SystemExit(f"the {'pure' if pure else 'compiled'} child failed:\n{proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def compare(seed: int, n: int, src: Path) -> dict[str, Any]:
    """Run both children; the result line (with `same` and `problems`)."""
    compiled = run_child(src, False, seed, n)
    pure = run_child(src, True, seed, n)
    problems = []
    if compiled["implementation"] != "compiled":
        problems.append(f"the compiled child ran {compiled['modules']} (build it: python -m ringfence.native build)")
    if pure["implementation"] != "pure":
        problems.append(f"the pure child ran {pure['modules']}")
    for key in ("commands", "commands_sha256", "events", "events_sha256", "event_kinds", "checkpoints", "state_hash", "halted"):
        if compiled[key] != pure[key]:
            problems.append(f"{key} differs: compiled {compiled[key]!r} != pure {pure[key]!r}")
    if compiled["halted"]:
        problems.append(f"the run halted ({compiled['halted']}): the stream must run to the end")
    return {
        "bench": "native_diff",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": _git_rev(),
        "seed": seed,
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}, shared/noisy",
        "workload": {"commands": n, "markets": len(SYMBOLS), "accounts": ACCOUNTS, "chaos_share": 0.08},  # float-ok: share
        "same": not problems,
        "problems": problems,
        "events": compiled["events"],
        "events_sha256": compiled["events_sha256"],
        "state_hash": compiled["state_hash"],
        "checkpoints": len(compiled["checkpoints"]),
        "event_kinds": compiled["event_kinds"],
        "compiled_seconds": compiled["seconds"],
        "pure_seconds": pure["seconds"],
        "throughput_per_s": int(n / compiled["seconds"]) if compiled["seconds"] else 0,
        "baseline": {"name": "the same stream on pure Python (with the generator's cost in both)",
                     "throughput_per_s": int(n / pure["seconds"]) if pure["seconds"] else 0},
    }


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description="Compiled vs pure-Python differential run (see the module docstring).\n\n"
                                 "Example: python bench/native_diff.py --commands 1000000 --seed 7")
    ap.add_argument("--smoke", action="store_true", help="20,000 commands")
    ap.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    ap.add_argument("--commands", type=int, default=None, help="default 1,000,000 (smoke 20,000)")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="source tree to run (with its compiled build)")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/native_diff.jsonl")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    n = args.commands or (20_000 if args.smoke else 1_000_000)
    if args.child:
        print(json.dumps(child(seed, n)))
        return
    print(f"[native_diff] seed={seed} commands={n:,} src={args.src}", file=sys.stderr, flush=True)
    result = compare(seed, n, args.src)
    line = json.dumps(result)
    print(line)
    if not args.no_record:
        with (ROOT / "bench" / "results" / "native_diff.jsonl").open("a") as fh:
            fh.write(line + "\n")
    if not result["same"]:
        print(f"[native_diff] DIFFERENT (reproduce: python bench/native_diff.py --seed {seed} --commands {n})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
