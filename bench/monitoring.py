"""Benchmark: monitoring rules over a synthetic day of activity (issue #20).

    python bench/monitoring.py [--smoke] [--seed N] [--users 20000]

Workload (seeded, `ringfence.monitoring.synth`): N accounts signing in, calling the API, placing,
cancelling and trading, withdrawing and depositing, plus labelled typologies (account takeover,
credential stuffing, wash rings, spoofers, structuring, tainted deposits, pump-and-dump groups on
thin markets), time-ordered.

* `throughput_per_s`: events scored per second by the shipped rule set (closed loop, one thread);
  `p50_us`/`p99_us`/`p999_us`: the decision latency of one event (`Scorer.process`).
* `outbox_write_per_s`: events written to the durable outbox (`monitoring_events`, SQLite in a
  temporary directory, the embedded default) in the worker's batches.
* `typologies`: precision and recall per typology (per-mille) on a held-aside seed (seed + 1000):
  an account counts as flagged when a rule meant for its typology names it (`synth.CATCHES`:
  account takeover and credential stuffing by the behavioural model's rules);
  `typologies_rules_only`: the same hits scored as before the model (`synth.CATCHES_RULES_ONLY`:
  the sequence and threshold rules for those two typologies).
* `without_model`: the throughput of the same rule set less its behaviour rules (the model's cost).
* Baseline, same run: the same events through a rule set of one threshold rule.
Goal (issue 20): >= 10,000 events/s and p99 <= 10 ms; >= 0.9 recall at >= 0.8 precision per typology.
The generator was written beside the rules, so the detection figures say the rules catch these
typologies as generated, not that they catch real abuse.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402

from ringfence.monitoring.rules import RuleSet, Scorer, default_rules, parse_rules  # noqa: E402
from ringfence.monitoring.synth import CATCHES_RULES_ONLY, generate, score_typologies  # noqa: E402

BASELINE_RULES = ('{"version": 1, "rules": [{"name": "failed-sign-ins", "type": "threshold", '
                  '"match": {"kind": ["sign_in_failed"]}, "window_s": 600, "count_gte": 5}]}')


def score(ruleset, events) -> tuple[float, list[int], list]:  # type: ignore[no-untyped-def]
    scorer = Scorer(ruleset)
    samples: list[int] = []
    hits = []
    clock = time.perf_counter_ns
    started = clock()
    for e in events:
        t0 = clock()
        hits.extend(scorer.process(e))
        samples.append(clock() - t0)
    return (clock() - started) / 1e9, samples, hits  # float-ok: seconds for the report


def outbox_rate(events, limit: int) -> int:  # type: ignore[no-untyped-def]
    from ringfence.monitoring.stream import Outbox
    from ringfence.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.from_url(f"sqlite:///{tmp}/m.sqlite3")
        box = Outbox(store)
        chosen = events[:limit]
        started = time.perf_counter()
        for e in chosen:
            box.publish(e.kind, source="bench", at_ms=e.at_ms, account_id=e.account_id, ip=e.ip, device=e.device, data=e.data)
        while box.flush():
            pass
        took = time.perf_counter() - started
        store.engine.dispose()
    return int(len(chosen) / took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny run for CI")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--users", type=int, default=20_000)
    args = ap.parse_args()
    users = 500 if args.smoke else args.users
    print(f"seed={args.seed} users={users}", file=sys.stderr)
    data = generate(args.seed, users)
    rules = default_rules()
    seconds, samples, _ = score(rules, data.events)
    base_seconds, _, _ = score(parse_rules(BASELINE_RULES), data.events)
    no_model = RuleSet(1, tuple(r for r in rules.rules if r.type != "behaviour"))
    no_model_seconds, _, _ = score(no_model, data.events)
    held = generate(args.seed + 1000, users)
    _, _, hits = score(rules, held.events)
    named = [(h.rule, (h.account_id, *h.related)) for h in hits]
    table = score_typologies(named, held.truth)
    before = score_typologies(named, held.truth, CATCHES_RULES_ONLY)
    n = len(data.events)
    emit("monitoring", {
        "seed": args.seed,
        "workload": {"users": users, "events": n, "rules": len(rules.rules), "held_aside_seed": args.seed + 1000},
        "throughput_per_s": int(n / seconds), "p50_us": percentile_us(samples, 50), "p99_us": percentile_us(samples, 99),
        "p999_us": percentile_us(samples, 99.9), "seconds": round(seconds, 3),
        "outbox_write_per_s": outbox_rate(data.events, 2_000 if args.smoke else 50_000),
        "typologies": table, "typologies_rules_only": before,
        "baseline": {"name": "the same events, one threshold rule", "throughput_per_s": int(n / base_seconds)},
        "without_model": {"name": "the same rules less the behaviour rules", "throughput_per_s": int(n / no_model_seconds)},
        "goal": {"throughput_per_s": 10_000, "p99_us": 10_000, "recall_permille": 900, "precision_permille": 800},
    }, smoke=args.smoke)


if __name__ == "__main__":
    main()
