"""Real signer processes on free loopback ports, each with its own encrypted share store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from ringfence.keys.hsm import HsmSigner, HsmToken, PolicyApprovalKey, init_softhsm_token, write_softhsm_config
from ringfence.keys.keylog import KeyOperationLog

NOW_MS = 1_800_000_000_000

TOKEN = "test-token-" + "x" * 24
PASSPHRASES = {i: f"passphrase-for-signer-{i}" for i in range(1, 10)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SignerProcs:
    """Starts / stops signer processes; `url[i]` is signer i's base URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.url: dict[int, str] = {}
        self.extra_args: dict[int, list[str]] = {}

    def start(self, i: int, *extra: str) -> str:
        port = free_port()
        store = self.root / f"signer-{i}"
        env = {**os.environ, "RINGFENCE_SIGNER_PASSPHRASE": PASSPHRASES[i], "RINGFENCE_SIGNER_TOKEN": TOKEN}
        self.extra_args[i] = list(extra)
        log = open(self.root / f"signer-{i}.log", "ab")
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "ringfence.keys.signer_server", "--store", str(store), "--identifier",
             str(i), "--name", f"signer-{i}", "--port", str(port), "--create", *extra],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url[i] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"signer {i} exited: {(self.root / f'signer-{i}.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url[i] + "/health", timeout=0.5).status_code == 200:
                    return self.url[i]
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"signer {i} did not start; to reproduce run: {' '.join(self.procs[i].args)}")

    def stop(self, i: int) -> None:
        p = self.procs.pop(i)
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def restart(self, i: int) -> str:
        self.stop(i)
        return self.start(i, *self.extra_args[i])

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.stop(i)


@pytest.fixture(scope="module")
def signer_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignerProcs]:
    procs = SignerProcs(tmp_path_factory.mktemp("signers"))
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("hsm")
    conf = write_softhsm_config(d)
    os.environ["SOFTHSM2_CONF"] = str(conf)  # one config per test process: PKCS#11 initialises once
    init_softhsm_token(conf, "hot-wallet", so_pin="so-pin-hot-1", user_pin="user-pin-hot-1")
    init_softhsm_token(conf, "policy", so_pin="so-pin-pol-1", user_pin="user-pin-pol-1")
    hot = HsmToken("hot-wallet", "user-pin-hot-1")
    pol = HsmToken("policy", "user-pin-pol-1")
    hot.generate("eth-hot", "secp256k1")
    pol.generate("policy-approval", "ed25519")
    log = KeyOperationLog(d / "keyops.jsonl")
    clock = {"now": NOW_MS}
    policy = PolicyApprovalKey(pol, "policy-approval", log=log)
    signer = HsmSigner(hot, policy_public_key=policy.public_key(), replay_db=d / "replay.sqlite", log=log,
                       clock_ms=lambda: clock["now"])
    yield {"dir": d, "hot": hot, "pol": pol, "policy": policy, "signer": signer, "clock": clock, "log": log}
    hot.close()
    pol.close()
