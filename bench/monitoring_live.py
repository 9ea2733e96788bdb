"""Benchmark: the synthetic typologies replayed through a live exchange's API (issue #20, item 8).

    python bench/monitoring_live.py [--smoke] [--seed 1001] [--users 60] [--real-hashes]

Starts one `ringfence serve --demo` (its own data directory in a temporary directory, a free port,
`--forwarded-allow-ips 127.0.0.1`, the rule set of `ringfence monitoring replay-rules`, 500 ms
blocks on the local chains), runs `ringfence.monitoring.replay.replay` against it — sign-ups,
e-mail confirmation, TOTP, API keys, faucet deposits, orders and cancels, wrong passwords, a takeover
from a new device and network, an address book and structured withdrawals, a tainted deposit, thin
markets listed by the operator quorum and pumped and dumped (or bought up by a large buyer) — then reads the alerts back from
`GET /admin/v1/alerts` (an analyst's signed requests) and reports precision and recall per typology
over the replay's own accounts (per-mille), with the wall time. The server is stopped at the end.

Password hashing is cheap (argon2 1 MiB, one pass; dev mode only) unless `--real-hashes`: the
measure is the detection path, and the shipped argon2 cost (64 MiB, 3 passes) makes the sign-ups
dominate the wall time. Smoke: 20 accounts (the least that holds every typology, confounder and the thin markets' two makers).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from ringfence.monitoring.replay import replay, replay_rules  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="20 accounts")
    ap.add_argument("--seed", type=int, default=1001, help="the generator's seed (1001: the held-aside seed of bench/monitoring.py)")
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--real-hashes", action="store_true", help="the shipped argon2 cost for passwords")
    args = ap.parse_args()
    users = 20 if args.smoke else args.users
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        rules = replay_rules(Path(tmp) / "replay-rules.json")
        port = free_port()
        env = dict(os.environ, RINGFENCE_MONITORING_RULES=str(rules), RINGFENCE_MONITORING_POLL_MS="50",
                   RINGFENCE_CUSTODY_BLOCK_INTERVAL_MS="500", RINGFENCE_CUSTODY_POLL_MS="200", RINGFENCE_DEMO_FEED="0",
                   RINGFENCE_POR_EVERY_S="0", PYTHONUNBUFFERED="1",
                   # time compressed like the rules: addresses cool 0 s, a credential change locks withdrawals 1 s
                   RINGFENCE_CUSTODY_ADDRESS_COOLING_S="0", RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S="1")
        if not args.real_hashes:
            env.update(RINGFENCE_IDENTITY_ARGON2_MEMORY_KIB="1024", RINGFENCE_IDENTITY_ARGON2_TIME_COST="1",
                       RINGFENCE_IDENTITY_ARGON2_PARALLELISM="1")
        log = open(Path(tmp) / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "ringfence.cli", "serve", "--demo", "--data", str(data), "--port", str(port),
                                 "--forwarded-allow-ips", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise SystemExit("the server exited early:\n" + (Path(tmp) / "serve.log").read_text()[-3000:])
                try:
                    if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.3)
            print(f"seed={args.seed} users={users} server={base}", file=sys.stderr)
            result = replay(base, data, seed=args.seed, users=users, log=lambda line: print(line, file=sys.stderr))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    emit("monitoring_live", {
        "seed": args.seed, "workload": {"users": users, "path": "serve --demo, REST + web pages + faucet deposits",
                                        "password_hashing": "shipped argon2" if args.real_hashes else "argon2 1 MiB, 1 pass (dev)"},
        "seconds": result["seconds"], "alerts_read": result["alerts_read"], "typologies": result["typologies"],
        "goal": {"recall_permille": 900, "precision_permille": 800},
    }, smoke=args.smoke)


if __name__ == "__main__":
    main()
