"""The engine's events reach the monitoring stream although the server died between journaling them and
relaying them (issue 20, item 1: "durable: the journal for engine events"): a self-trade through the
Binance API is journaled while the outbox holds it in memory (its flush interval set long), the
server is killed with SIGKILL, and at the next start `relay_recovered` relays the lost events again
from the batches recovery replayed — the trade is on the stream once and its `wash-trade` alert is
raised once. One data directory, two server starts."""

from __future__ import annotations

import signal
import time

import httpx

from tests.api.conftest import Server
from tests.monitoring.test_live import _inside_spread, _signed, admin, alerts_for, poll
import pytest

# the SQL store (identity, read models) is exercised: `make test` runs this file again on PostgreSQL
pytestmark = pytest.mark.store


def _engine_events(server: Server, kind: str) -> list[dict]:
    from ringfence.monitoring.stream import read_after
    from ringfence.store import Store

    store = Store.from_url(server.database_url)
    try:
        out, after = [], 0
        while batch := read_after(store, after):
            out += [{"kind": e.kind, "account_id": e.account_id, **e.data} for e in batch if e.source == "engine" and e.kind == kind]
            after = batch[-1].id
        return out
    finally:
        store.engine.dispose()


def test_engine_events_lost_in_a_crash_are_relayed_from_the_journal_exactly_once(tmp_path) -> None:
    data = tmp_path / "data"
    slow = Server(data, env={"RINGFENCE_MONITORING_FLUSH_MS": "8000", "RINGFENCE_MONITORING_POLL_MS": "50"}, chains=False)
    try:
        alice = slow.keys["alice"]
        headers = {"X-MBX-APIKEY": alice["api_key"], "Content-Type": "application/x-www-form-urlencoded"}

        def order(side: str, price: str) -> dict:
            body = _signed(alice["api_secret"], {"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                                 "price": price, "quantity": "0.0010", "selfTradePreventionMode": "NONE"})
            r = httpx.post(slow.base + "/api/v3/order", content=body, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        # an engine event on the stream first (the relay resumes after the newest one): an order far from the touch
        bid = httpx.get(slow.base + "/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 1}).json()["bids"][0][0]
        whole = int(bid.split(".")[0]) * 97 // 100
        order("BUY", f"{whole}.00")  # 3% under the best bid: inside the band, never filled
        poll(lambda: admin(slow, "GET", "/admin/v1/monitoring").json()["outbox"]["queued"] == 0
             and _engine_events(slow, "order_placed"), "the first order on the stream", timeout_s=20)
        # just after a flush (the next is 8 s away): the self-trade is journaled, its events only queued
        price = _inside_spread(slow)
        order("SELL", price)
        filled = order("BUY", price)
        assert filled["fills"], filled
        status = admin(slow, "GET", "/admin/v1/monitoring").json()
        assert status["outbox"]["queued"] >= 3, status  # two orders and the trade (and the API calls), not written
        slow.proc.send_signal(signal.SIGKILL)
        slow.proc.wait(10)
    finally:
        if slow.proc.poll() is None:
            slow.proc.kill()
    assert not [t for t in _engine_events(slow, "trade") if t["account_id"] == "alice"], "the trade was written before the kill"

    again = Server(data, env={"RINGFENCE_MONITORING_POLL_MS": "50"}, chains=False)
    try:
        [alert] = poll(lambda: alerts_for(again, "wash-trade", "alice"), "the wash-trade alert after the restart")
        assert "self-trade" in alert["explanation"], alert
        trades = [t for t in _engine_events(again, "trade") if t["account_id"] == "alice"]
        assert len(trades) == 1 and trades[0]["maker_owner"] == "alice", trades
        placed = _engine_events(again, "order_placed")
        assert "monitoring.relay_recovered" in again.log_text(), again.log_text()[-3000:]
        assert len({p["seq"] for p in placed}) == len(placed), placed  # no engine event twice
        time.sleep(0.5)  # a second poll of the worker: still one alert
        assert len(alerts_for(again, "wash-trade", "alice")) == 1
        assert admin(again, "GET", "/admin/v1/monitoring").json()["outbox"]["dropped"] == 0
    finally:
        assert again.stop() == 0
