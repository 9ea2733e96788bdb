"""Benchmark: FROST 2-of-3 threshold signatures across signer processes on loopback, and HSM signatures.

python bench/signing.py [--smoke] [--seed N]

Measures, in one run:
- FROST(secp256k1, BIP-340) 2-of-3 end to end: coordinator -> two signer processes over mutually
  authenticated TLS 1.3 with pinned Ed25519 certificates (what `serve` uses) on 127.0.0.1; the same run
  over plain HTTP with the bearer token (the transport before) is the same-run baseline
  (`baseline_loopback_http`). Real uvicorn servers, encrypted share stores, durable nonce stores -> aggregate -> verify.
  Closed loop (latency p50/p99 per threshold signature, throughput) and a paced open-loop run at half the
  closed-loop rate (latency counted from the scheduled send time, so coordinated omission is counted).
- FROST 2-of-3 in one process (no network, no stores): the protocol's own cost.
- HSM: SoftHSM2 secp256k1 ECDSA through `HsmSigner` (attestation check, replay register, low-S, verify).
- Baseline: single-key BIP-340 signing with coincurve (libsecp256k1).
Prints one JSON line and appends it to bench/results/signing.jsonl.
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
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def pct(xs: list[float], q: float) -> float:  # float-ok: latency statistics, not money
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_signers(tmp: Path, token: str, n: int) -> tuple[dict[int, str], list[subprocess.Popen[bytes]]]:
    import httpx

    urls, procs = {}, []
    for i in range(1, n + 1):
        port = free_port()
        env = {**os.environ, "RINGFENCE_SIGNER_PASSPHRASE": f"bench-passphrase-{i}", "RINGFENCE_SIGNER_TOKEN": token,
               "PYTHONPATH": str(ROOT / "src")}
        procs.append(subprocess.Popen([sys.executable, "-m", "ringfence.keys.signer_server", "--store",
                                       str(tmp / f"s{i}"), "--identifier", str(i), "--name", f"bench-{i}", "--port",
                                       str(port), "--create"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        urls[i] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    for i, u in urls.items():
        while True:
            try:
                if httpx.get(u + "/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"signer {i} did not start")
            time.sleep(0.1)
    return urls, procs


def bench_frost_processes(n_sigs: int, rng: random.Random, tmp: Path, *, mtls: bool) -> dict:
    import coincurve

    from ringfence.keys.coordinator import ThresholdCoordinator
    from ringfence.keys.frost import FROST_SECP256K1_SHA256
    from ringfence.keys.interface import Scheme, SigningRequest

    fleet = None
    if mtls:  # the transport `serve` uses: TLS 1.3, pinned Ed25519 certificates both ways
        from ringfence.custody.btc_signing import SignerFleet

        os.environ["PYTHONPATH"] = str(ROOT / "src")
        fleet = SignerFleet(tmp / "fleet", name="bench")
        urls, token, procs = fleet.start(), fleet.token, []
    else:
        token = "bench-token-" + "y" * 24
        urls, procs = start_signers(tmp, token, 3)
    try:
        c = ThresholdCoordinator(urls, token, tls=fleet.tls() if fleet is not None else None)
        t0 = time.perf_counter()
        c.create_key("bench-key", FROST_SECP256K1_SHA256.name, 2, [1, 2, 3])
        dkg_ms = (time.perf_counter() - t0) * 1000
        xonly = c.public_key("bench-key", Scheme.BIP340)
        quorums = [[1, 2], [1, 3], [2, 3]]

        def one(k: int, tag: str) -> float:
            digest = hashlib.sha256(f"{tag}-{k}-{rng.random()}".encode()).digest()
            q = quorums[k % 3]
            t = time.perf_counter()
            sig = c.sign(SigningRequest(request_id=f"{tag}-{k}", key_id="bench-key", digest=digest,
                                        scheme=Scheme.BIP340, requested_by="bench", reason="bench"), q)
            dt = (time.perf_counter() - t) * 1000
            assert coincurve.PublicKeyXOnly(xonly).verify(sig.signature, digest)
            return dt

        for k in range(min(10, n_sigs)):  # warm-up: connections, pools
            one(k, "warm")
        lat = []
        t0 = time.perf_counter()
        for k in range(n_sigs):
            lat.append(one(k, "closed"))
        closed_s = time.perf_counter() - t0
        rate = n_sigs / closed_s
        # paced open loop at half the closed-loop rate; latency from the scheduled time
        interval = 2.0 / rate
        paced = []
        start = time.perf_counter()
        for k in range(n_sigs):
            sched = start + k * interval
            while time.perf_counter() < sched:
                time.sleep(min(0.001, max(0.0, sched - time.perf_counter())))
            one(k, "paced")
            paced.append((time.perf_counter() - sched) * 1000)
        c.close()
        return {"throughput_per_s": round(rate, 1), "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2),
                "max_ms": round(max(lat), 2), "dkg_ms": round(dkg_ms, 1),
                "paced": {"offered_per_s": round(rate / 2, 1), "p50_ms": round(pct(paced, 0.5), 2),
                          "p99_ms": round(pct(paced, 0.99), 2)}}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        if fleet is not None:
            fleet.stop()


def bench_frost_inprocess(n_sigs: int) -> float:
    from ringfence.keys import dkg, frost

    kps = dkg.run_dkg(frost.FROST_SECP256K1_SHA256, 2, [1, 2, 3], b"bench")
    tr = {i: frost.bip340_key_package(kp) for i, kp in kps.items()}
    cs = tr[1].suite
    t0 = time.perf_counter()
    for k in range(n_sigs):
        msg = k.to_bytes(32, "big")
        pairs = {i: frost.commit(cs, i, tr[i].secret_share) for i in (1, 2)}
        comms = [pairs[1][1], pairs[2][1]]
        shares = {i: frost.sign_share(tr[i], pairs[i][0], msg, comms) for i in (1, 2)}
        frost.aggregate(cs, comms, msg, tr[1].group_public_key, shares, tr[1].verifying_shares)
    return n_sigs / (time.perf_counter() - t0)


def bench_hsm(n_sigs: int, tmp: Path) -> dict:
    from ringfence.keys.hsm import HsmSigner, HsmToken, init_softhsm_token, write_softhsm_config

    conf = write_softhsm_config(tmp / "hsm")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    init_softhsm_token(conf, "bench-hot", so_pin="bench-so-pin", user_pin="bench-user-pin")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from ringfence.keys.attestation import issue_attestation
    from ringfence.keys.interface import Scheme, SigningRequest
    from ringfence.keys.keylog import KeyOperationLog

    policy = Ed25519PrivateKey.generate()  # stands in for the policy engine's HSM key in this bench
    tok = HsmToken("bench-hot", "bench-user-pin")
    tok.generate("eth-hot", "secp256k1")
    signer = HsmSigner(tok, policy_public_key=policy.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
                       replay_db=tmp / "replay.sqlite", log=KeyOperationLog(tmp / "hsm-keyops.jsonl"))
    lat = []
    raw_t0 = time.perf_counter()
    for k in range(n_sigs):
        tok.raw_sign("eth-hot", k.to_bytes(32, "big"), "secp256k1")
    raw_rate = n_sigs / (time.perf_counter() - raw_t0)
    t0 = time.perf_counter()
    for k in range(n_sigs):
        digest = hashlib.sha256(k.to_bytes(8, "big")).digest()
        now = int(time.time() * 1000)
        att = issue_attestation(policy.sign, attestation_id=f"a{k}", key_id="eth-hot", transfer_digest=digest,
                                issued_at_ms=now, validity_ms=60_000, issued_by="bench-policy")
        t = time.perf_counter()
        signer.sign(SigningRequest(request_id=f"h{k}", key_id="eth-hot", digest=digest, scheme=Scheme.ECDSA_SECP256K1,
                                   requested_by="bench", reason="bench", approval=att))
        lat.append((time.perf_counter() - t) * 1000)
    rate = n_sigs / (time.perf_counter() - t0)
    tok.close()
    return {"per_s": round(rate, 1), "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2),
            "raw_pkcs11_sign_per_s": round(raw_rate, 1)}


def bench_baseline(n_sigs: int) -> float:
    import coincurve

    key = coincurve.PrivateKey(hashlib.sha256(b"baseline").digest())
    t0 = time.perf_counter()
    for k in range(n_sigs):
        key.sign_schnorr(k.to_bytes(32, "big"))
    return n_sigs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "signing.jsonl")
    args = ap.parse_args()
    print(f"seed {args.seed}", file=sys.stderr)
    rng = random.Random(args.seed)
    n_frost = 30 if args.smoke else 400
    n_hsm = 30 if args.smoke else 1000
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rf-bench-signing-") as d:
        tmp = Path(d)
        frost_proc = bench_frost_processes(n_frost, rng, tmp / "mtls", mtls=True)
        frost_plain = bench_frost_processes(n_frost, rng, tmp / "plain", mtls=False)
        inproc = bench_frost_inprocess(n_frost)
        hsm = bench_hsm(n_hsm, tmp)
    base = bench_baseline(2000 if args.smoke else 20000)
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        git = ""
    line = {
        "bench": "signing", "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "git": git,
        "seed": args.seed, "smoke": args.smoke,
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "workload": {"frost_signatures": n_frost, "threshold": "2-of-3", "scheme": "frost-secp256k1-bip340",
                     "transport": "HTTP/1.1 over mutual TLS 1.3 (pinned Ed25519 certificates), loopback, 3 signer processes", "hsm_signatures": n_hsm,
                     "hsm": "SoftHSM2 secp256k1 ECDSA via PKCS#11 + attestation check"},
        "throughput_per_s": frost_proc["throughput_per_s"], "p50_ms": frost_proc["p50_ms"],
        "p99_ms": frost_proc["p99_ms"], "max_ms": frost_proc["max_ms"], "dkg_ms": frost_proc["dkg_ms"],
        "paced": frost_proc["paced"], "frost_inprocess_per_s": round(inproc, 1),
        "hsm_per_s": hsm["per_s"], "hsm_p50_ms": hsm["p50_ms"], "hsm_p99_ms": hsm["p99_ms"],
        "hsm_raw_pkcs11_sign_per_s": hsm["raw_pkcs11_sign_per_s"],
        "seconds": round(time.perf_counter() - t_all, 2),
        "baseline": {"name": "single-key BIP-340 sign, coincurve/libsecp256k1", "throughput_per_s": round(base, 1)},
        "baseline_loopback_http": {"name": "the same FROST 2-of-3 run over plain HTTP + bearer token (before mTLS)",
                                   **frost_plain},
        "goal": {"p50_ms": 50, "p99_ms": 50},
    }
    text = json.dumps(line)
    print(text)
    out = args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
