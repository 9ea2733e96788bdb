"""A NATS server that requires credentials (started here: nats-server with --user/--pass and JetStream
on a free port). The replicating server connects with them, never prints the password, and a wrong
or missing password is a clear start-up error that does not print it either."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

from api.conftest import Server, free_port


def test_credentials_are_used_and_never_printed(tmp_path, nats_with_password):
    port, password = nats_with_password
    url = f"nats://rf:{password}@127.0.0.1:{port}/RFAUTH"
    # the password from the environment, so it is not on the command line (ps) either
    srv = Server(tmp_path / "a", args=("--replicate", f"nats://rf@127.0.0.1:{port}/RFAUTH", "--node-id", "a"),
                 env={"RINGFENCE_NATS_PASSWORD": password}, chains=False)  # the demo's chains: unused here
    try:
        log = srv.log_text()
        assert "replicating to stream RFAUTH at nats://rf:***@127.0.0.1" in log
        assert password not in log
        status = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "status", "--nats", url],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and json.loads(status.stdout)["messages"] >= 1, status.stdout + status.stderr
    finally:
        assert srv.stop() == 0
    wrong = "nope-" + secrets.token_hex(8)
    for bad in (f"nats://rf:{wrong}@127.0.0.1:{port}/RFAUTH", f"nats://127.0.0.1:{port}/RFAUTH"):
        proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "b"), "--port",
                               str(free_port()), "--replicate", bad], capture_output=True, text=True, timeout=90,
                              env=dict(os.environ, COLUMNS="300"))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "--replicate: NATS at nats://" in out and "refused the login" in out, out
        assert password not in out and wrong not in out, out
        assert "Traceback" not in out, out
