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
cookies (intruder review of #22). Likewise `--host 0.0.0.0` bound IPv4 only ([::]:PORT and [::1]:PORT were
free), `--host ::1` left 127.0.0.1:PORT free and `--host ::` covered IPv4 as a sysctl said (issue #21). For
each host form an `Intruder` on every address it stands for (both loopbacks; for a wildcard both wildcards
too) never gets the port, and the node answers on 127.0.0.1 and [::1] alike.
"""

from __future__ import annotations

import errno
import os
import time

import httpx
import pytest
from launcher import spawn_cli

from .conftest import ARGON2_TEST_COST, HELD_ADDRESSES, NO_CHAINS, Intruder, free_port, has_ipv6_loopback, url_of

#: (--host, more arguments): every host form that holds both families, one process; with one gateway the default
#: host and the IPv6 wildcard (the gateway processes serve every socket they inherit)
CASES = [(host, ()) for host in HELD_ADDRESSES] + [(host, ("--gateways", "1")) for host in ("127.0.0.1", "::")]


@pytest.mark.parametrize(("host", "args"), CASES, ids=[f"{h}-{'gateways' if a else 'one-process'}" for h, a in CASES])
def test_no_other_socket_gets_the_port_while_serve_starts(tmp_path, host, args):
    assert has_ipv6_loopback(), "this test needs IPv6 loopback (::1): serve holds the port on both families"
    data, port = tmp_path / "d", free_port()
    log_path = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", RINGFENCE_DEMO_FEED="0", RINGFENCE_POR_EVERY_S="0", **NO_CHAINS,
               **ARGON2_TEST_COST)
    host_args = () if host == "127.0.0.1" else ("--host", host)  # (127.0.0.1: serve's default)
    with open(log_path, "w") as log:
        proc = spawn_cli(["serve", "--data", str(data), "--port", str(port), *host_args, *args], env, log)
        intruders = [Intruder(port, address) for address in HELD_ADDRESSES[host]]
        try:
            deadline = time.time() + 120
            while not data.exists():  # made only after serve checked (now: took) the port
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.005)
            for intruder in intruders:
                intruder.start()
            ready = False
            while not ready and proc.poll() is None and not any(i.won for i in intruders) and time.time() < deadline:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    time.sleep(0.1)
            time.sleep(1 if ready else 0)  # and a moment of serving
            for intruder in intruders:
                intruder.stop()
            text = log_path.read_text()
            for intruder in intruders:
                assert not intruder.won, f"another socket got {intruder.host} port {port}: {intruder.won}\n{text[-3000:]}"
            assert ready and proc.poll() is None, text[-3000:]
            for intruder in intruders:
                assert len(intruder.refused) > 50 and set(intruder.refused) == {errno.EADDRINUSE}, (intruder.host, intruder.refused[:20])
            for address in ("127.0.0.1", "::1"):  # the exchange answers over either family, whichever --host form
                assert httpx.get(f"{url_of(address, port)}/api/v3/ping", timeout=10).json() == {}, address
            assert "warning: --host" not in text  # (this machine has both families)
        finally:
            for intruder in intruders:
                intruder.stop()
            proc.terminate()
            try:
                proc.wait(30)
            except Exception:  # noqa: BLE001 - a stuck server is killed, never left running
                proc.kill()
                proc.wait(10)
    if args:
        assert "gateways: 1 processes" in log_path.read_text()
