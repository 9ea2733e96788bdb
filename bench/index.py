"""Index benchmark: what the index module costs spot's hot path, and how fast signed quotes apply.

    python bench/index.py [--smoke] [--seed N] [--commands N]

* **Hot path A/B.** The exchange-core mix (`bench/matching.py`'s generator) through raw
  `Engine.apply`, with the standard modules and with the same modules minus `index`, alternated
  four times; CPU seconds of each and the best-of ratio. With no index configured the module costs
  one before-command hook (a comparison) and one guard (a type check) per command, and the final
  state hashes must be equal (checked).
* **Quotes.** Signed `SubmitQuote` commands for one symbol of five venues through `Engine.apply`
  (each verified once there; a node verifies it again in the precheck): quotes per second.

One JSON line on stdout (appended to bench/results/index.jsonl). The machine is shared: compare
ratios measured in the same run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit  # noqa: E402
import matching  # noqa: E402

from ringfence import app  # noqa: E402
from ringfence.engine.core import Engine  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def raw_cpu_s(w: matching.Workload, modules: tuple) -> tuple[float, str]:  # float-ok: seconds
    engine = Engine(modules)
    seq = 0
    for c in w.setup + w.funding + w.prefill:
        seq += 1
        engine.apply(c, seq, seq * 1000, b"")
    apply = engine.apply
    started = time.process_time()
    for c in w.commands:
        seq += 1
        apply(c, seq, seq * 1000, b"")
    return time.process_time() - started, engine.state_hash()


def quotes_per_s(n: int) -> float:  # float-ok: a rate
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ringfence.index.commands import ConfigureIndex, RegisterFeedKey
    from ringfence.index.feeds import FeedSigner

    engine = app.new_engine()
    signers = [FeedSigner(f"v{i}", Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)) for i in range(5)]
    now = 1_700_000_000_000_000_000
    seq = 0
    for c in [RegisterFeedKey(s.venue, s.public_key_hex) for s in signers] + [ConfigureIndex("BTCUSDT", [(s.venue, 1) for s in signers], 3)]:
        seq += 1
        engine.apply(c, seq, now, b"")
    quotes = []
    for i in range(n):
        now += 1_000_000
        quotes.append((signers[i % 5].quote("BTCUSDT", 60_000 * 10**6 + (i % 97) * 10**4, now), now))
    started = time.process_time()
    for q, ts in quotes:
        seq += 1
        engine.apply(q, seq, ts, b"")
    return n / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few thousand commands (CI)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--commands", type=int, default=300_000)
    args = parser.parse_args()
    n = 5_000 if args.smoke else args.commands
    log(f"seed={args.seed} commands={n}")
    w = matching.Workload("exchange-core mix", ["BTCUSDT"], 1000, (0.09, 0.03, 0.06, 0.82), args.seed)
    w.generate(n)
    full = app.STANDARD_MODULES
    without = tuple(m for m in full if m.name != "index")
    runs: dict[str, list[float]] = {"with_index": [], "without_index": []}  # float-ok: seconds
    for _ in range(1 if args.smoke else 4):
        a, ha = raw_cpu_s(w, full)
        b, hb = raw_cpu_s(w, without)
        if ha != hb:
            raise SystemExit("the index module changed the state hash of a spot-only run")
        runs["with_index"].append(round(a, 3))
        runs["without_index"].append(round(b, 3))
    emit("index", {
        "seed": args.seed,
        "hot_path_commands": n,
        "hot_path_cpu_s": runs,
        "hot_path_ratio_best": round(min(runs["with_index"]) / min(runs["without_index"]), 4),
        "quotes_per_s": round(quotes_per_s(500 if args.smoke else 20_000)),
    }, smoke=args.smoke)


if __name__ == "__main__":
    main()
