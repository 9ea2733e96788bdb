"""Replicated journal, hot standby and failover with fencing, against the machine's NATS JetStream.

Real processes throughout: a primary `ringfence serve --demo --replicate`, a standby `ringfence serve
--standby` (both on one fresh PostgreSQL database for identity, so API keys survive a failover),
signed REST orders from httpx, `ringfence replication promote` as the operator. Checked: every
acknowledged order is in the stream and on the promoted standby (also after SIGKILL of the
primary), the standby's state hash at the cut-over equals the primary's journal replayed to that
sequence, and a deposed primary can never get a batch accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from pgtest import pg_database

from api.conftest import NO_CHAINS, Server, free_port, invoke
from ringfence.app import replay_journal
from ringfence.replication import PROMOTE_ACTION, promote_subject
from ringfence.staff.console import load_key
from ringfence.staff.decisions import format_approval

from .conftest import NATS_URL, Standby, peers_file


def rf(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"ringfence {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def rf_here(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`rf` in this process (typer's runner: the same command code, no interpreter start-up); an exception
    the command let out fails the test with its traceback."""
    from typer.testing import CliRunner

    from ringfence.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if check and result.exit_code != 0:
        raise AssertionError(f"ringfence {' '.join(args)} exited {result.exit_code}:\n{result.stdout}\n{result.stderr}")
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


class Trader:
    def __init__(self, base: str, key: dict) -> None:
        self.key = key
        self.http = httpx.Client(base_url=base, timeout=15)

    def _signed(self, params: dict[str, str]) -> str:
        payload = urlencode(dict(params, timestamp=str(int(time.time() * 1000)), recvWindow="10000"))
        return payload + "&signature=" + hmac.new(self.key["api_secret"].encode(), payload.encode(), hashlib.sha256).hexdigest()

    def place(self, client_id: str) -> httpx.Response:
        order = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001",
                 "price": "59950.00", "newClientOrderId": client_id}
        return self.http.post("/api/v3/order", content=self._signed(order),
                              headers={"X-MBX-APIKEY": self.key["api_key"], "Content-Type": "application/x-www-form-urlencoded"})

    def find(self, client_id: str) -> httpx.Response:
        query = self._signed({"symbol": "BTCUSDT", "origClientOrderId": client_id})
        return self.http.get("/api/v3/order?" + query, headers={"X-MBX-APIKEY": self.key["api_key"]})


def stream_messages(stream: str) -> list[tuple[int, dict[str, str], bytes]]:
    async def read() -> list[tuple[int, dict[str, str], bytes]]:
        import nats

        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            out = []
            for seq in range(1, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                out.append((seq, dict(msg.headers or {}), msg.data or b""))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def check_stream(stream: str) -> list[tuple[int, dict[str, str], bytes]]:
    """The stream is one unbroken chain of batches; no batch older than a fence follows it."""
    messages = stream_messages(stream)
    next_seq, prev_hash, fence = 1, None, 0
    for seq, h, _ in messages:
        if h["Rf-Kind"] == "fence":
            fence = max(fence, int(h["Rf-Epoch"]))
            continue
        assert int(h["Rf-Epoch"]) >= fence, f"stream message {seq}: epoch {h['Rf-Epoch']} after the fence of epoch {fence}"
        assert int(h["Rf-First-Seq"]) == next_seq, f"stream message {seq}: sequence gap"
        assert prev_hash is None or h["Rf-Prev-Hash"] == prev_hash, f"stream message {seq}: chain broken"
        next_seq, prev_hash = int(h["Rf-First-Seq"]) + int(h["Rf-Count"]), h["Rf-Hash"]
    return messages


def start_pair(tmp_path: Path, stream: str, pg_url: str, feed: bool = False) -> tuple[Server, Standby, str]:
    url = f"{NATS_URL}/{stream}"
    # both without the demo's custody chains (NO_CHAINS): no test here uses them, and their blocks and workers
    # cost each start seconds of CPU
    env = {"RINGFENCE_DATABASE_URL": pg_url, **NO_CHAINS, **peers_file(tmp_path, a=tmp_path / "a", b=tmp_path / "b")}
    primary = Server(tmp_path / "a", env=env | {"RINGFENCE_DEMO_FEED": "1" if feed else "0"},
                     args=("--replicate", url, "--node-id", "a"), chains=False)
    assert "replicating to stream " + stream in primary.log_text()
    standby = Standby(tmp_path / "b", url, "b", free_port(), env=env)
    return primary, standby, url


def _peers(staff: Path) -> str:
    """The peers file of `start_pair`, next to the primary's folder that holds `staff` (demo-staff.json)."""
    return str(staff.parent.parent / "peers.json")


def promote_is_a_quorum_decision(staff: Path, url: str, primary: Server, trader: Trader) -> None:
    """Refused, with the primary still serving: one operator alone, a forged second signature, a
    non-operator as the second signer, a token signed for another node. The standby checks each
    against the staff register of its own replica. In this process (`rf_here`): the promotion that follows
    is a real `ringfence replication promote` process."""
    one = rf_here("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ada", "--wait-s", "30",
             check=False)
    assert one.returncode == 1 and "refused by rule 'quorum'" in " ".join((one.stdout + one.stderr).split()), one.stdout + one.stderr
    ben = rf_here("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ben", "--sign-only").stdout.strip()
    staff_id, nonce, expires, signature = ben.split(":")
    forged = ":".join([staff_id, nonce, expires, ("0" if signature[0] != "0" else "1") + signature[1:]])
    bad = rf_here("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ada", "--approval", forged,
             "--wait-s", "30", check=False)
    assert bad.returncode == 1 and "refused by rule 'signature-valid'" in " ".join((bad.stdout + bad.stderr).split()), bad.stderr
    cy = rf_here("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ada", "--key", f"{staff}#cy",
            "--wait-s", "30", check=False)
    assert cy.returncode == 1 and "refused by rule 'role-required'" in " ".join((cy.stdout + cy.stderr).split()), cy.stderr
    # a token for node c, which the peers file does not hold (promote --sign-only refuses it): signed as the command would
    other = format_approval(load_key(f"{staff}#ben").sign(PROMOTE_ACTION, promote_subject(url.rsplit("/", 1)[1], "c", 2),
                                                          time.time_ns() + 600 * 10**9))
    moved = rf_here("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ada", "--approval", other,
               "--wait-s", "30", check=False)
    assert moved.returncode == 1 and "signature-valid" in moved.stdout + moved.stderr, moved.stderr
    status = json.loads(rf_here("replication", "status", "--nats", url).stdout)
    assert status["leader"]["node"] == "a" and status["leader"]["epoch"] == 1, status  # nobody was deposed
    assert trader.place("after-refusals").status_code == 200  # the primary still acknowledges


def test_standby_follows_and_a_promotion_fences_the_old_primary(tmp_path, stream):
    with pg_database() as pg_url:
        primary, standby, url = start_pair(tmp_path, stream, pg_url)
        try:
            alice = json.loads((tmp_path / "a" / "demo-keys.json").read_text())[0]
            a = Trader(primary.base, alice)
            acked = []
            for i in range(12):
                r = a.place(f"rep-{i}")
                assert r.status_code == 200, r.text
                acked.append(f"rep-{i}")
            last = httpx.get(primary.base + "/readyz").json()["last_seq"]
            deadline = time.time() + 30
            while (status := httpx.get(standby.base + "/v1/standby").json())["applied_seq"] < last:
                assert time.time() < deadline, status
                time.sleep(0.1)
            primary_state, _, _ = replay_journal(tmp_path / "a" / "engine", until_seq=last)  # read-only
            assert status["applied_seq"] == last and status["role"] == "standby", status
            assert status["signatures_checked"] is True, status  # started with the peers file
            assert status["outcomes_checked"] >= 11, status  # a batch's events are checked when the next batch arrives
            assert status["state_hash"] == primary_state.state_hash(), "the standby's state differs from the primary's"
            # every batch's state is checked through the incremental digest (sent two batches later: it is
            # taken while the next batch is fsynced), and the API read models are kept warm: fed every
            # batch the standby applies
            assert status["digests_checked"] >= 8, status  # from the third batch after the first that carries one
            assert status["read_models_seq"] == last, status
            not_ready = httpx.get(standby.base + "/readyz")
            assert not_ready.status_code == 503 and not_ready.json()["ready"] is False  # no clients to a standby
            assert httpx.post(standby.base + "/api/v3/order").status_code in (404, 501)  # it serves nothing else
            promote_is_a_quorum_decision(tmp_path / "a" / "demo-staff.json", url, primary, a)
            # what the primary's read models show now, once the standby applied all of it
            last = httpx.get(primary.base + "/readyz").json()["last_seq"]
            while httpx.get(standby.base + "/v1/standby").json()["read_models_seq"] < last:
                assert time.time() < deadline + 30
                time.sleep(0.1)
            views = {path: httpx.get(primary.base + path).json() for path in
                     ("/api/v3/depth?symbol=BTCUSDT&limit=100", "/api/v3/trades?symbol=BTCUSDT", "/api/v3/ticker/24hr?symbol=BTCUSDT")}
            staff = tmp_path / "a" / "demo-staff.json"
            out = rf("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ada",
                     "--key", f"{staff}#ben").stdout
            assert "promoted b at epoch 2 (was a at epoch 1); approved by ada, ben" in " ".join(out.split())
            standby.wait_ready()
            # the promoted standby served with the engine and read models it kept warm: no replay
            assert re.search(r"promoted: serving with the engine and API read models kept warm at sequence \d+ "
                             r"\(no journal replay", standby.text().replace("\n", " ")), standby.text()[-3000:]
            for path, seen in views.items():  # what the primary's read models showed, the same on b
                assert httpx.get(standby.base + path).json() == seen, path
            # the deposed primary: its next batch is refused by the stream, the client is not acknowledged
            refused = a.place("after-fence")
            assert refused.status_code == 503, refused.text
            # said by the refused publish, or first by the stream check (every STREAM_CHECK_S) seeing b's fence
            assert re.search(r"deposed at epoch 1|deposed: stream message \d+ is node 'b''s fence of epoch 2",
                             primary.log_text()), primary.log_text()[-3000:]
            assert a.place("after-fence-2").status_code == 503
            b = Trader(standby.base, alice)
            for client_id in acked:
                assert b.find(client_id).status_code == 200, client_id
            assert b.find("after-fence").status_code == 400  # never acknowledged, never replicated
            assert b.place("on-b").status_code == 200
            messages = check_stream(stream)
            kinds = [(h["Rf-Kind"], h["Rf-Epoch"]) for _, h, _ in messages]
            assert ("fence", "2") in kinds and kinds[-1] == ("batch", "2")
            assert not any(b"after-fence" in data for _, _, data in messages)
            assert any(b"on-b" in data for _, _, data in messages)
            status = json.loads(rf("replication", "status", "--nats", url, "--peers", str(tmp_path / "peers.json")).stdout)
            assert status["leader"]["node"] == "b" and status["leader"]["epoch"] == 2
            assert status["leader_signature"] == "valid", status  # b signed the record it wrote
        finally:
            primary.stop()
            assert standby.stop() == 0
        # the old primary cannot come back as primary while b leads
        proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "a"), "--port",
                               str(free_port()), "--replicate", url, "--node-id", "a"], capture_output=True, text=True,
                              timeout=60, env=dict(__import__("os").environ, RINGFENCE_DATABASE_URL=pg_url))
        assert proc.returncode == 2 and "'b' is the primary at epoch 2" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_a_standby_promoted_from_a_demo_primary_carries_its_index_feed_on(tmp_path, stream):
    """The demo primary quotes its perpetuals' index from simulated venues; the promoted standby
    (which has no --demo of its own) journals its own quotes at the new epoch, so the markets do not
    go REDUCE_ONLY when the primary's last quotes go stale (the drill's orders were refused so)."""
    with pg_database() as pg_url:
        primary, standby, url = start_pair(tmp_path, stream, pg_url, feed=True)
        try:
            assert "index feed: simulated venues" in primary.log_text()
            staff = tmp_path / "a" / "demo-staff.json"
            rf("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ada", "--key", f"{staff}#ben")
            standby.wait_ready()
            cut = int(standby.wait_for(r"journal sequence (\d+) state hash").group(1))
            assert "index feed: simulated venues sim1..sim5" in standby.text(), standby.text()[-3000:]
            deadline = time.time() + 30  # the feed quotes every second
            while not any(h["Rf-Epoch"] == "2" and b"index.quote/1" in data for _, h, data in check_stream(stream)):
                assert time.time() < deadline, "the promoted standby journaled no index quote"
                time.sleep(1)
            index = httpx.get(standby.base + "/fapi/v1/premiumIndex", params={"symbol": "BTCUSDT"}).json()
            assert int(index["indexPrice"].replace(".", "")) > 0, index
        finally:
            primary.stop()
            assert standby.stop() == 0
        # its first writes (the feed's set-up and first round) name their submitter, as every later quote does
        after = [json.loads(line) for line in rf("journal", "sources", str(tmp_path / "b"), "--from-seq", str(cut + 1),
                                                  "--limit", "100000").stdout.splitlines()]
        assert after and [r for r in after if r["source"] == ""] == [], after[:20]


def test_sigkill_of_the_primary_loses_no_acknowledged_order(tmp_path, stream):
    with pg_database() as pg_url:
        primary, standby, url = start_pair(tmp_path, stream, pg_url)
        acked: list[str] = []
        stop = threading.Event()
        alice = json.loads((tmp_path / "a" / "demo-keys.json").read_text())[0]

        def load() -> None:
            a = Trader(primary.base, alice)
            i = 0
            while not stop.is_set() and i < 150:  # stays under the account's open-order limit
                i += 1
                try:
                    if a.place(f"kill-{i}").status_code == 200:
                        acked.append(f"kill-{i}")
                except httpx.HTTPError:
                    return  # the primary died under this request: not acknowledged
        loader = threading.Thread(target=load)
        try:
            loader.start()
            # mid-load: once some orders are acknowledged (a fixed 2 s gave only 2 at load ~20)
            deadline = time.monotonic() + 60
            while len(acked) < 5 and loader.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            primary.proc.kill()  # SIGKILL mid-load
            primary.proc.wait(10)
            stop.set()
            loader.join(20)
            assert len(acked) >= 5, acked
            staff = tmp_path / "a" / "demo-staff.json"
            rf("replication", "promote", "--nats", url, "--node-id", "b", "--peers", _peers(staff), "--key", f"{staff}#ada", "--key", f"{staff}#ben")
            standby.wait_ready()
            m = standby.wait_for(r"journal sequence (\d+) state hash ([0-9a-f]{64})")
            b = Trader(standby.base, alice)
            missing = [c for c in acked if b.find(c).status_code != 200]
            assert not missing, f"acknowledged but lost: {missing}"
            cut = int(m.group(1))
            # identical state at the cut-over: the dead primary's journal replayed to that sequence
            dead, _, _ = replay_journal(tmp_path / "a" / "engine", until_seq=cut)
            assert dead.state_hash() == m.group(2)
            check_stream(stream)
        finally:
            stop.set()
            primary.log.close()
            assert standby.stop() == 0


@pytest.mark.parametrize("args, message", [
    (("--replicate", "nats://127.0.0.1:4222/X", "--standby", "nats://127.0.0.1:4222/X"), "not both"),
    (("--replicate", "http://127.0.0.1:4222/X"), "--replicate: must be a nats://host:port/STREAM URL"),
    (("--standby", "nats://127.0.0.1:4222/bad.name"), "--standby: the stream name"),
])
def test_bad_replication_options_are_refused(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "d"), "--port",
                           str(free_port()), *args], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in out and "Traceback" not in out, out


def test_a_replicated_node_outside_dev_mode_needs_a_peers_file_naming_it(tmp_path, stream):
    def serve(*extra: str, **env: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "d"), "--port",
                               str(free_port()), "--replicate", f"{NATS_URL}/{stream}", "--node-id", "d", *extra],
                              capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="300", **env))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in out, out
        return " ".join(out.split())

    assert "--peers: a replicated node outside dev mode needs a peers file" in serve(RINGFENCE_MODE="prod")
    entry = json.loads(rf("replication", "node-key", "--data-dir", str(tmp_path / "d"), "--node-id", "d").stdout)
    assert list(entry) == ["d"] and len(entry["d"]) == 64
    assert (tmp_path / "d" / "node.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "peers.json").write_text(json.dumps({"d": "ab" * 32}))
    assert "--peers: the peers file gives node 'd' a public key that is not the one of" in serve(
        "--peers", str(tmp_path / "peers.json"))
    (tmp_path / "peers.json").write_text(json.dumps({"e": entry["d"]}))
    assert f"--peers: node 'd' is not in the peers file; add: {{\"d\": \"{entry['d']}\"}}" in serve(
        "--peers", str(tmp_path / "peers.json"))


@pytest.mark.parametrize("command", [["replication"], ["replication", "promote"], ["replication", "status"],
                                     ["replication", "node-key"],
                                     ["replication", "nats-config"], ["journal", "sources"], ["dr"],
                                     ["dr", "drill"], ["serve"]])
def test_replication_commands_have_help_with_an_example(command):
    # in this process (`invoke`): each of these commands runs as a real process in this folder's other tests
    res = invoke(*command, "--help")
    assert res.returncode == 0 and "Example" in res.stdout, res.stdout + res.stderr
