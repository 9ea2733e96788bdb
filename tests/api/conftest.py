"""A real `ringfence serve --demo` process on a free port, shared by the API tests of a module."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (), demo: bool = True) -> None:
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / f"serve-{self.port}.log", "w")
        # RINGFENCE_POR_EVERY_S=0: one proof at start only, so a test's proof and root file always match
        # (tests of the schedule set their own interval). The demo's index feed journals quotes every
        # second; tests that check that a refusal journals nothing turn it off unless they ask for it
        # (tests/index/ does).
        full_env = dict(os.environ, RINGFENCE_RECONCILE_EVERY_MS="1000", PYTHONUNBUFFERED="1", RINGFENCE_POR_EVERY_S="0",
                        RINGFENCE_DEMO_FEED="0")
        full_env.update(env or {})
        self.argv = ["serve", *(["--demo"] if demo else []), "--data", str(data), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringfence.cli", *self.argv],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log.name}:\n" + Path(self.log.name).read_text()[-3000:])
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready; reproduce with: ringfence " + " ".join(self.argv))
        entries = json.loads((data / "demo-keys.json").read_text()) if demo else []
        self.keys = {k["account"]: k for k in entries if k.get("kind", "hmac") == "hmac"}
        self.ed25519_keys = {k["account"]: k for k in entries if k.get("kind") == "ed25519"}

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        self.log.close()
        return code


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve") / "data")
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`ringfence ARGS` in a child process with this checkout's sources (the console, the faucet)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, env=env, timeout=60)
