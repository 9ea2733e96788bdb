"""`ringfence serve` holds its port from the check at start until it stops (intruder review of #21, F1).

serve checked the port with a probe socket and closed it, then recovered the journal and built the node
(seconds) and only then bound the port again for uvicorn: another local user's process looping on
`bind(127.0.0.1:PORT)` got it in that gap, the node exited with `[Errno 98] address already in use` and
the clients talked to the intruder's server. With `--gateways N` the probe's copy stayed bound but did
not listen until the gateways started, and a socket with SO_REUSEADDR may share such a port and listen
on it first. Here a real `serve` process, plain and with one gateway, while an `Intruder` (conftest.py)
tries for the port from the moment the data folder exists (serve checks the port before it makes it)
until the node answers: it never gets it, and the node serves on the port.

The node announces http://localhost:PORT, and a browser may resolve localhost to ::1 first: serve bound
127.0.0.1 only, and another local user listening on [::1]:PORT got the browsers' requests and session
cookies (intruder review of #22). A second `Intruder` on [::1]:PORT never gets it either, and the node
answers there too.
"""

from __future__ import annotations

import errno
import os
import time

import httpx
import pytest
from launcher import spawn_cli

from .conftest import ARGON2_TEST_COST, NO_CHAINS, Intruder, free_port, has_ipv6_loopback


@pytest.mark.parametrize("args", [(), ("--gateways", "1")], ids=["one-process", "gateways"])
def test_no_other_socket_gets_the_port_while_serve_starts(tmp_path, args):
    data, port = tmp_path / "d", free_port()
    log_path = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", RINGFENCE_DEMO_FEED="0", RINGFENCE_POR_EVERY_S="0", **NO_CHAINS,
               **ARGON2_TEST_COST)
    with open(log_path, "w") as log:
        proc = spawn_cli(["serve", "--data", str(data), "--port", str(port), *args], env, log)
        intruder = Intruder(port)
        intruder6 = Intruder(port, "::1") if has_ipv6_loopback() else None
        try:
            deadline = time.time() + 120
            while not data.exists():  # made only after serve checked (now: took) the port
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.005)
            intruder.start()
            if intruder6 is not None:
                intruder6.start()
            ready = False
            while not ready and proc.poll() is None and not intruder.won and time.time() < deadline:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    time.sleep(0.1)
            time.sleep(1 if ready else 0)  # and a moment of serving
            intruder.stop()
            text = log_path.read_text()
            assert not intruder.won, f"another socket got port {port}: {intruder.won}\n{text[-3000:]}"
            assert ready and proc.poll() is None, text[-3000:]
            assert len(intruder.refused) > 50 and set(intruder.refused) == {errno.EADDRINUSE}, intruder.refused[:20]
            assert httpx.get(f"http://127.0.0.1:{port}/api/v3/ping", timeout=10).json() == {}
            if intruder6 is not None:
                intruder6.stop()
                assert not intruder6.won, f"another socket got [::1]:{port}: {intruder6.won}\n{text[-3000:]}"
                assert len(intruder6.refused) > 50 and set(intruder6.refused) == {errno.EADDRINUSE}, intruder6.refused[:20]
                assert httpx.get(f"http://[::1]:{port}/api/v3/ping", timeout=10).json() == {}
        finally:
            intruder.stop()
            if intruder6 is not None:
                intruder6.stop()
            proc.terminate()
            try:
                proc.wait(30)
            except Exception:  # noqa: BLE001 - a stuck server is killed, never left running
                proc.kill()
                proc.wait(10)
    if args:
        assert "gateways: 1 processes" in log_path.read_text()
