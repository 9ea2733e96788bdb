"""Bitcoin simulator throughput: accept + validate + mine real signed P2WPKH transactions.

Workload (seeded): K keys each get a matured coinbase; then N transfers, each spending the sender's
newest coin to a random receiver with change, submitted to the mempool and mined in blocks of B.
Baseline, same run: python-bitcointx's VerifyScript alone over the same transactions (the signature
check every node must do), so the ratio shows what the simulator's bookkeeping costs on top.

Usage: python bench/chains.py [--smoke] [--seed N]
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
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bitcointx.core import CMutableTransaction, COutPoint, CTransaction, CTxIn, CTxInWitness, CTxOut, b2lx, lx  # noqa: E402
from bitcointx.core.key import CKey  # noqa: E402
from bitcointx.core.script import (  # noqa: E402
    OP_0, OP_CHECKSIG, OP_DUP, OP_EQUALVERIFY, OP_HASH160, SIGHASH_ALL, SIGVERSION_WITNESS_V0,
    CScript, CScriptWitness, SignatureHash,
)
from bitcointx.core.scripteval import SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS, VerifyScript  # noqa: E402

from ringfence.chains.bitcoin.simulator import BitcoinSimulator  # noqa: E402

MINER = bytes.fromhex("0014" + "ee" * 20)


def h160(b: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(b).digest()).digest()


def sign(op, value, owner: CKey, outputs) -> bytes:
    tx = CMutableTransaction([CTxIn(COutPoint(lx(op[0]), op[1]))], [CTxOut(v, CScript(s)) for s, v in outputs])
    code = CScript([OP_DUP, OP_HASH160, h160(owner.pub), OP_EQUALVERIFY, OP_CHECKSIG])
    sig = owner.sign(SignatureHash(code, tx, 0, SIGHASH_ALL, amount=value, sigversion=SIGVERSION_WITNESS_V0))
    tx.wit.vtxinwit = [CTxInWitness(CScriptWitness([sig + bytes([SIGHASH_ALL]), owner.pub]))]
    return tx.serialize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n_txs, n_keys, block_txs = (40, 4, 10) if args.smoke else (2_000, 20, 100)
    rng = random.Random(args.seed)
    print(f"seed {args.seed}", file=sys.stderr)

    keys = [CKey(hashlib.sha256(b"bench-%d" % i).digest()) for i in range(n_keys)]
    spks = [bytes(CScript([OP_0, h160(k.pub)])) for k in keys]
    sim = BitcoinSimulator(coinbase_maturity=1)
    for spk in spks:
        sim.mine(1, spk)
    sim.mine(1, MINER)
    coins = {i: next((op, c.value_sat) for op, c in sim.utxos(spks[i]).items()) for i in range(n_keys)}

    # build the workload (signing is not timed): a chain of spends per key, all unconfirmed-safe
    raws, spent_values = [], []
    for _ in range(n_txs):
        src = rng.randrange(n_keys)
        dst = rng.randrange(n_keys)
        op, coin_value = coins[src]
        amount = rng.randrange(10_000, 1_000_000)
        change = coin_value - amount - 500
        raw = sign(op, coin_value, keys[src], [(spks[dst], amount), (spks[src], change)])
        raws.append(raw)
        spent_values.append((coin_value, spks[src]))
        txid = b2lx(CTransaction.deserialize(raw).GetTxid())
        coins[src] = ((txid, 1), change)

    t0 = time.perf_counter()
    for i, raw in enumerate(raws):
        sim.submit(raw)
        if (i + 1) % block_txs == 0:
            sim.mine(1, MINER)
    sim.mine(1, MINER)
    seconds = time.perf_counter() - t0  # float-ok: timing, not money
    sim.check_invariants()

    t1 = time.perf_counter()
    for raw, (value, spk) in zip(raws, spent_values):
        tx = CTransaction.deserialize(raw)
        VerifyScript(tx.vin[0].scriptSig, CScript(spk), tx, 0, flags={SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS},
                     amount=value, witness=tx.wit.vtxinwit[0].scriptWitness)
    base_seconds = time.perf_counter() - t1  # float-ok: timing

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    line = {
        "bench": "chains",
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": git,
        "seed": args.seed,
        "smoke": args.smoke,
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "workload": {"txs": n_txs, "keys": n_keys, "txs_per_block": block_txs, "type": "p2wpkh 1-in 2-out"},
        "throughput_per_s": round(n_txs / seconds),
        "seconds": round(seconds, 3),
        "baseline": {"name": "bitcointx VerifyScript only, same txs", "throughput_per_s": round(n_txs / base_seconds)},
    }
    out = json.dumps(line)
    print(out)
    results = Path(__file__).resolve().parent / "results" / "chains.jsonl"
    results.parent.mkdir(exist_ok=True)
    with results.open("a") as f:
        f.write(out + "\n")


if __name__ == "__main__":
    main()
