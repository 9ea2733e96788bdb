"""Signers on their own (here: separate processes started by hand with `ringfence signer run`):
`serve` is pointed at them with RINGFENCE_BTC_SIGNERS / RINGFENCE_BTC_SIGNER_CERTS, reaches them
over mutual TLS (each signer pins the certificate `ringfence signer coordinator-cert` made), creates
the hot wallet's key by DKG and pays a BTC withdrawal through the API with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import Server, cli, free_port
from .test_capital import ENV, signed, wait_for, withdraw_key

SRC = str(Path(__file__).resolve().parents[2] / "src")
TOKEN = "external-signer-token-" + "z" * 20


def test_serve_uses_signers_started_with_ringfence_signer_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = cli("signer", "coordinator-cert", "--data", str(data))
    assert made.returncode == 0, made.stderr
    coordinator_cert = made.stdout.splitlines()[0]
    assert coordinator_cert == str(data / "signers" / "coordinator" / "tls.crt") and "sha256 " in made.stdout
    procs, urls, certs = [], {}, {}
    try:
        for i in (1, 2, 3):
            port = free_port()
            store = tmp_path / f"machine-{i}" / "store"
            env = {**os.environ, "PYTHONPATH": SRC, "RINGFENCE_SIGNER_PASSPHRASE": f"operator-{i}-passphrase",
                   "RINGFENCE_SIGNER_TOKEN": TOKEN}
            procs.append(subprocess.Popen([sys.executable, "-m", "ringfence.cli", "signer", "run", "--store", str(store),
                                           "--identifier", str(i), "--port", str(port), "--create",
                                           "--coordinator-cert", coordinator_cert], env=env,
                                          stdout=open(tmp_path / f"signer-{i}.log", "wb"), stderr=subprocess.STDOUT))
            urls[i], certs[i] = f"https://127.0.0.1:{port}", store / "tls.crt"
        deadline = time.time() + 60
        while not all(c.exists() for c in certs.values()):
            assert time.time() < deadline, "the signers did not create their certificates"
            time.sleep(0.2)
        env = {**ENV, "RINGFENCE_SIGNER_TOKEN": TOKEN,
               "RINGFENCE_BTC_SIGNERS": ",".join(f"{i}={u}" for i, u in urls.items()),
               "RINGFENCE_BTC_SIGNER_CERTS": ",".join(f"{i}={c}" for i, c in certs.items())}
        srv = Server(data, env=env)
        try:
            signers = httpx.get(srv.base + "/readyz").json()["custody"]["wallet_signers"]
            assert signers["btc_hot"].startswith("frost-taproot 2-of-3"), signers
            assert not (data / "signers" / "signer-1").exists(), "serve started no signer of its own"
            key = withdraw_key(data)
            res = signed(srv, key, "POST", "/sapi/v1/capital/withdraw/apply",
                         {"coin": "BTC", "address": key["withdraw_addresses"]["BTC"], "amount": "0.015"})
            assert res.status_code == 200, res.text
            wid = res.json()["id"]

            def completed():
                rows = signed(srv, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "BTC"}).json()
                return next((r for r in rows if r["id"] == wid and r["status"] == 6), None)

            wait_for("the withdrawal signed by the external signers", completed, 90)
            by = [i for i in (1, 2, 3) if f"request wd-{wid}:0" in (certs[i].parent / "keyops.jsonl").read_text()]
            assert len(by) == 2, by
        finally:
            assert srv.stop() == 0
        assert all(p.poll() is None for p in procs), "external signers outlive serve"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
