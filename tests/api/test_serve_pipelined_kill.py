"""`ringfence serve --pipeline` killed with SIGKILL while clients are placing orders: after a restart
every order a client was answered for, and every order a client was shown in its open orders, is
there. The answers and the read models of a pipelined server wait for the batch's sync (docs/journal.md,
"Pipelined group commit"); a SIGKILL keeps the page cache, so what this test catches is an answer or
a read model ahead of the journal write, or a restart that does not recover a pipelined journal (the
power-cut property in tests/journal/test_pipelined.py covers the fsync itself)."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from .conftest import Server
from .test_rest import BASE_ORDER, signed_query

PLACERS = 4
#: orders answered before the kill (spread over several batches, several placers at once)
ACKED_BEFORE_KILL = 60


def _open_order_ids(server: Server, key: dict) -> set[int]:
    query = signed_query(key["api_secret"], {"symbol": "BTCUSDT"})
    r = httpx.get(server.base + "/api/v3/openOrders?" + query, headers={"X-MBX-APIKEY": key["api_key"]}, timeout=30)
    assert r.status_code == 200, r.text
    return {o["orderId"] for o in r.json()}


def test_a_killed_pipelined_server_keeps_every_answered_and_every_shown_order(tmp_path) -> None:
    data = tmp_path / "data"
    srv = Server(data, args=("--pipeline",), chains=False)
    answered: set[int] = set()
    shown: set[int] = set()
    stop = threading.Event()
    try:
        assert "group commit pipelined" in srv.log_text(), srv.log_text()[-2000:]
        key = srv.keys["alice"]
        before = _open_order_ids(srv, key)

        def place(worker: int) -> None:
            headers = {"X-MBX-APIKEY": key["api_key"], "Content-Type": "application/x-www-form-urlencoded"}
            with httpx.Client(base_url=srv.base, timeout=30) as http:
                i = 0
                while not stop.is_set():
                    order = {**BASE_ORDER, "quantity": "0.0010", "price": f"{60000 + 10 * worker + i % 7}.00"}
                    try:
                        r = http.post("/api/v3/order", content=signed_query(key["api_secret"], order), headers=headers)
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        answered.add(r.json()["orderId"])
                    i += 1

        def look() -> None:
            while not stop.is_set():
                try:
                    shown.update(_open_order_ids(srv, key) - before)
                except (httpx.HTTPError, AssertionError):
                    return

        threads = [threading.Thread(target=place, args=(w,)) for w in range(PLACERS)] + [threading.Thread(target=look)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(answered) < ACKED_BEFORE_KILL and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(answered) >= ACKED_BEFORE_KILL, f"only {len(answered)} orders answered in 120 s"
        srv.proc.send_signal(signal.SIGKILL)  # with orders in flight
        assert srv.proc.wait(20) == -signal.SIGKILL
        stop.set()
        for t in threads:
            t.join(60)
        srv.log.close()
    finally:
        stop.set()
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(20)
    assert shown, "the reader saw no order before the kill"

    again = Server(data, args=("--pipeline",), chains=False)
    try:
        after = _open_order_ids(again, again.keys["alice"])
        assert answered <= after, f"answered orders lost in the crash: {sorted(answered - after)}"
        assert shown <= after, f"orders shown in the open orders lost in the crash: {sorted(shown - after)}"
    finally:
        assert again.stop() == 0
