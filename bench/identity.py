"""Benchmark: API-key request verification (`verify_api_request`, the per-request auth cost of the
signed REST API) and password sign-in, on the embedded SQLite store.

Baseline measured in the same run: the bare HMAC-SHA256 computation + constant-time compare that a
request signature needs with no database, no key unsealing and no policy checks.

    python bench/identity.py [--smoke] [--seed N]

Prints one JSON line and appends it to bench/results/identity.jsonl (or to
$RINGFENCE_BENCH_RESULTS_DIR/identity.jsonl, which the CI smoke test uses to keep the tree clean).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pyotp  # noqa: E402

from ringfence.identity import IdentityContext, accounts, api_keys, second_factor  # noqa: E402
from ringfence.settings import Settings  # noqa: E402
from ringfence.store import Store  # noqa: E402


def percentile_us(samples_s: list[float], q: float) -> int:  # float-ok: latency, not money
    ordered = sorted(samples_s)
    return int(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"seed={args.seed}", file=sys.stderr)
    requests = 200 if args.smoke else 5000
    logins = 3 if args.smoke else 20

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.sqlite3")  # production argon2 parameters
        ctx = IdentityContext(store=Store.from_url(settings.database_url), settings=settings)
        email, password = "perf@example.com", "a long unusual passphrase 1"
        accounts.sign_up(ctx, email, password, ip="192.0.2.1")
        from sqlalchemy import select

        from ringfence.store.models import OutboxMessage

        with ctx.store.tx() as db:
            body = db.scalars(select(OutboxMessage.body)).first()
        accounts.verify_email(ctx, body.split("token=")[1].split()[0])
        token = accounts.login(ctx, email, password, ip="192.0.2.1").session.token
        enrollment = second_factor.begin_totp_enrollment(ctx, token)
        issued, _ = second_factor.confirm_totp_enrollment(ctx, token, pyotp.TOTP(enrollment.secret_base32).now())
        with ctx.store.tx() as db:  # a first second factor counts once confirmed from the e-mailed link
            body = db.scalars(select(OutboxMessage.body).where(OutboxMessage.template == "second_factor_confirm")).one()
        second_factor.confirm_first_factor(ctx, body.split("confirm-factor?token=")[1].split()[0])
        key = api_keys.create_api_key(ctx, issued.token, scopes=["read", "trade"], ip_allowlist=["192.0.2.0/24"])
        payloads = [f"symbol=BTCUSDT&side=BUY&quantity={rng.randint(1, 10**6)}&timestamp={i}".encode() for i in range(requests)]
        sigs = [api_keys.hmac_signature(key.secret, p) for p in payloads]

        lat: list[float] = []  # float-ok
        t0 = time.perf_counter()
        for p, s in zip(payloads, sigs):
            a = time.perf_counter()
            api_keys.verify_api_request(ctx, key.api_key, p, s, "192.0.2.7", "trade")
            lat.append(time.perf_counter() - a)
        verify_s = time.perf_counter() - t0

        secret_b = key.secret.encode()
        t0 = time.perf_counter()
        for p, s in zip(payloads, sigs):
            assert hmac.compare_digest(hmac.new(secret_b, p, hashlib.sha256).hexdigest().encode(), s.encode())
        baseline_s = time.perf_counter() - t0

        login_lat: list[float] = []  # float-ok
        for i in range(logins):
            a = time.perf_counter()
            accounts.login(ctx, email, password, ip=f"192.0.2.{10 + i}")
            login_lat.append(time.perf_counter() - a)

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    line = {
        "bench": "identity", "at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "git": git,
        "seed": args.seed, "smoke": args.smoke, "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "workload": {"signed_requests": requests, "logins": logins, "store": "sqlite", "argon2": "64 MiB, t=3, p=4"},
        "throughput_per_s": int(requests / verify_s), "p50_us": percentile_us(lat, 0.50), "p99_us": percentile_us(lat, 0.99),
        "seconds": round(verify_s, 3),
        "login_p50_ms": percentile_us(login_lat, 0.5) // 1000,
        "baseline": {"name": "bare HMAC-SHA256 + compare_digest, no DB", "throughput_per_s": int(requests / baseline_s)},
        "goal": {"throughput_per_s": 2000, "p99_us": 5000},
    }
    print(json.dumps(line))
    out = Path(os.environ.get("RINGFENCE_BENCH_RESULTS_DIR", ROOT / "bench" / "results")) / "identity.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
