"""Halts on the API: a halt journaled while the exchange was down is enforced and visible after
restart — on /v1/halts, /readyz, /metrics, the `!halts` stream and the dashboard — and scoped:
only the halted market refuses orders."""

import json

import httpx
from playwright.sync_api import expect, sync_playwright

from ringfence.risk.halts import Halt

from .conftest import NO_CHAINS, Server
from .test_dashboard import ARGS, CHROMIUM
from .test_rest import signed_query
from ringfence.app import new_node


def order(server, account, symbol, price, qty):
    key = server.keys[account]
    body = signed_query(key["api_secret"], {"symbol": symbol, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": qty, "price": price})
    return httpx.post(server.base + "/api/v3/order", content=body, headers={"X-MBX-APIKEY": key["api_key"], "Content-Type": "application/x-www-form-urlencoded"})


def test_a_journaled_halt_is_enforced_and_visible_after_restart(tmp_path):
    """The demo without its chains (conftest.NO_CHAINS): the halt is a market's, no chain is used."""
    data = tmp_path / "data"
    first = Server(data, chains=False)
    assert order(first, "alice", "BTCUSDT", "60990.00", "0.0010").status_code == 200
    assert first.stop() == 0

    node = new_node(data / "engine")
    node.open()
    evidence = json.dumps({"kind": "test", "detail": "injected by the test"})
    node.execute(Halt("test-btc", "market", "BTCUSDT", "HALTED", "reconciliation mismatch (test)", evidence))
    journaled = node.engine.last_seq
    node.close()

    server = Server(data, chains=False)
    try:
        halts = httpx.get(server.base + "/v1/halts").json()
        assert [(h["halt_id"], h["scope"], h["level"]) for h in halts] == [("test-btc", "BTCUSDT", "HALTED")]
        assert json.loads(halts[0]["evidence"])["detail"] == "injected by the test"
        ready = httpx.get(server.base + "/readyz").json()
        assert ready["active_halts"] == 1
        assert ready["last_seq"] == journaled  # restarting with --demo journals nothing new
        metrics = httpx.get(server.base + "/metrics").text
        assert 'ringfence_halt_active{halt_id="test-btc",level="HALTED",scope="BTCUSDT",scope_kind="market"} 1.0' in metrics
        refused = order(server, "alice", "BTCUSDT", "60990.00", "0.0010")
        assert refused.json() == {"code": -1013, "msg": "Market is closed."}
        assert order(server, "alice", "ETHUSDT", "2999.00", "0.0100").status_code == 200  # scoped
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            page.goto(server.base + "/")
            expect(page.locator("#halts")).to_contain_text("HALTED (market BTCUSDT)")
            browser.close()
    finally:
        assert server.stop() == 0


def test_halts_stream_pushes_raised_and_lifted_halts(tmp_path, monkeypatch):
    """The `!halts` WebSocket stream, driven in-process (the reconciler submits Halt commands to the
    node the server runs; here the test does). The demo without its chains (conftest.NO_CHAINS): none is used."""
    from starlette.testclient import TestClient

    from ringfence.api.serve import build

    from structlog.testing import capture_logs

    for name, value in NO_CHAINS.items():
        monkeypatch.setenv(name, value)
    app, exchange, _ = build(tmp_path / "data", demo=True)
    with TestClient(app) as client, capture_logs() as logged:
        with client.websocket_connect("/ws/!halts") as ws:
            exchange.node.submit(Halt("ws-eth", "asset", "ETH", "WITHDRAWALS_PAUSED", "hot wallet shortfall (test)", "{}")).wait(10)
            message = ws.receive_json()
        assert message["e"] == "haltRaised" and message["id"] == "ws-eth"
        # and in the server's log, for an operator (it was only on the stream and the pages)
        raised = [r for r in logged if r["event"] == "halt.raised" and r.get("halt_id") == "ws-eth"]
        assert raised and raised[0]["log_level"] == "warning" and raised[0]["level"] == "WITHDRAWALS_PAUSED", logged
        assert message["scopeKind"] == "asset" and message["level"] == "WITHDRAWALS_PAUSED"
        assert [h["halt_id"] for h in client.get("/v1/halts").json()] == ["ws-eth"]


def test_a_shard_halted_by_a_broken_invariant_is_not_ready_and_shows_in_halts(tmp_path, monkeypatch):
    """A broken invariant (here planted in this live engine's own handler table: the journal and a
    restart know nothing of it) halts the shard: /readyz answers 503, /v1/halts leads with it. The demo
    without its chains (conftest.NO_CHAINS): none is used."""
    from starlette.testclient import TestClient

    from ringfence.api.serve import build
    from ringfence.errors import InvariantViolation, ShardHalted
    from ringfence.trading.commands import SetFeeTier

    for name, value in NO_CHAINS.items():
        monkeypatch.setenv(name, value)
    app, exchange, _ = build(tmp_path / "data", demo=True)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200

        def broken(engine, command):
            engine.ledger.open_account("mallory", "USDT", "available", "spot", 0)
            raise InvariantViolation("planted by the test")

        exchange.node.engine._handlers[SetFeeTier] = broken  # planted by the test, between batches
        ack = exchange.node.submit(SetFeeTier(7, 100, 200))
        try:
            ack.wait(10)
            raise AssertionError("the broken command must not succeed")
        except InvariantViolation:
            pass
        seq = exchange.read(lambda engine: engine.halted[0])
        assert exchange.read(lambda engine: engine.ledger.find("mallory", "USDT", "available", "spot")) is None
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["halted"] is True
        halts = client.get("/v1/halts").json()
        assert halts[0]["halt_id"] == "shard-halted" and halts[0]["raised_seq"] == seq and halts[0]["level"] == "HALTED"
        try:
            exchange.node.submit(SetFeeTier(8, 100, 200)).wait(10)
            raise AssertionError("a halted shard must refuse")
        except ShardHalted:
            pass
