"""A promoted standby never lets go of its port (intruder review of #21, F1, High).

The standby's status page (`/v1/standby`) listened on the node's port while it followed; at the promotion
`before_build` closed it ("frees the port for the server that starts next"), and the promoted exchange bound
the port again only after the hand-over, the Replicator and `after_build`: seconds. An unprivileged local user
looping on `bind(127.0.0.1:PORT)` won it: `promote` said "promoted b at epoch 2", the leader record and fence
were in the stream, the old primary was deposed, and the node exited with `[Errno 98] address already in use`:
no primary at all, and the new primary's clients talked to the intruder's server.

Here, with the machine's NATS: a primary and a standby (real `ringfence serve` processes, plain and with one
gateway in front of the standby's engine), and an `Intruder` (tests/api/conftest.py) trying for the standby's
port from while it follows until well after the promotion. It never gets it; the promoted node serves on the port.
The standby runs with a wildcard --host (`::`, and `0.0.0.0` with the gateway), so it holds the port on both address
families (listening.py): an `Intruder` on each wildcard and each loopback never gets it either.
"""

from __future__ import annotations

import errno
import json
import sys
import subprocess
import time

import httpx
import pytest

from api.conftest import HELD_ADDRESSES, NO_CHAINS, Intruder, Server, free_port, has_ipv6_loopback, url_of

from .conftest import NATS_URL, Standby, peers_file


@pytest.mark.parametrize(("host", "gateways"), [("::", ()), ("0.0.0.0", ("--gateways", "1"))],
                         ids=["one-process-host-::", "gateways-host-0.0.0.0"])
def test_the_promoted_standby_keeps_its_port_from_the_status_page_to_the_exchange(tmp_path, stream, host, gateways):
    assert has_ipv6_loopback(), "this test needs IPv6 loopback (::1): the standby holds its port on both families"
    url = f"{NATS_URL}/{stream}"
    a, b = tmp_path / "a", tmp_path / "b"
    env = {**NO_CHAINS, **peers_file(tmp_path, a=a, b=b)}
    primary = Server(a, env=env, args=("--replicate", url, "--node-id", "a"), demo=False, chains=False)
    standby = None
    intruders: list[Intruder] = []
    try:
        assert "replicating to stream " + stream in primary.log_text()
        standby = Standby(b, url, "b", free_port(), env=env, args=("--host", host, *gateways))
        # every address the host form stands for (both families' wildcards and loopbacks: issue #21, intruder review of #22)
        intruders = [Intruder(standby.port, address).start() for address in HELD_ADDRESSES[host]]
        for address in ("127.0.0.1", "::1"):  # the status page answers over either family
            assert httpx.get(f"{url_of(address, standby.port)}/v1/standby", timeout=10).json()["role"] == "standby"
        promoted = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "promote", "--nats", url,
                                   "--node-id", "b", "--peers", str(tmp_path / "peers.json"), "--wait-s", "60"],
                                  capture_output=True, text=True, timeout=120)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "promoted b at epoch 2" in " ".join(promoted.stdout.split()), promoted.stdout
        deadline = time.time() + 90
        ready = False
        while not ready and standby.proc.poll() is None and not any(i.won for i in intruders) and time.time() < deadline:
            try:
                ready = httpx.get(standby.base + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        time.sleep(1 if ready else 0)  # and a moment of serving as the primary
        for intruder in intruders:
            intruder.stop()
        for intruder in intruders:
            assert not intruder.won, f"another socket got {intruder.host} port {standby.port}: {intruder.won}\n{standby.text()[-3000:]}"
        assert ready and standby.proc.poll() is None, standby.text()[-3000:]
        for intruder in intruders:
            assert len(intruder.refused) > 50 and set(intruder.refused) == {errno.EADDRINUSE}, (intruder.host, intruder.refused[:20])
        assert httpx.get(f"http://[::1]:{standby.port}/api/v3/ping", timeout=10).json() == {}
        assert "address already in use" not in standby.text().lower()
        # the promoted node answers on the port: the exchange's API, not the status page
        assert httpx.get(standby.base + "/api/v3/ping", timeout=10).json() == {}
        assert httpx.get(standby.base + "/v1/standby", timeout=10).status_code == 404
        status = json.loads(subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "status", "--nats", url,
                                            "--peers", str(tmp_path / "peers.json")], capture_output=True, text=True,
                                           timeout=120, check=True).stdout)
        assert status["leader"]["node"] == "b" and status["leader"]["epoch"] == 2, status
    finally:
        for intruder in intruders:
            intruder.stop()
        if standby is not None:
            assert standby.stop() == 0, standby.text()[-3000:]
        primary.stop()
