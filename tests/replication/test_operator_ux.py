"""More of what a fresh-eyes operator met in issue #21's replicated setup, each through the real path:
a deposed primary refuses every write with its reason; the replication commands' options and exits."""

from __future__ import annotations

import sqlite3

import pytest
from fastapi.testclient import TestClient

from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import Fenced, Follower, parse_target, promote

from .conftest import NATS_URL, key_of, peers_of


def _users(data) -> list[str]:
    with sqlite3.connect(data / "identity.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT email FROM identity_users ORDER BY email")]


def test_a_deposed_primary_refuses_every_write_and_says_why(tmp_path, stream, monkeypatch):
    """After a promotion the old primary's engine stops (Fenced); its identity writes must stop too: a
    user signed up there would exist on no other node. /readyz says why it stopped."""
    from ringfence.api.serve import build
    from ringfence.replication import Replicator
    from ringfence.replication.serving import after_build

    monkeypatch.delenv("RINGFENCE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RINGFENCE_MODE", raising=False)
    target = parse_target(f"{NATS_URL}/{stream}")
    data = tmp_path / "a"
    app, exchange, info = build(data, demo=False)
    replicator = Replicator(target, "a", data / "engine", key=key_of("a"))
    after_build(exchange, replicator, print)
    follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        with TestClient(app, client=("127.0.0.1", 50000)) as http:  # type: ignore[arg-type]
            form = {"email": "before@example.com", "password": "correct horse battery staple 42"}
            first = http.post("/signup", data=form)
            assert first.status_code == 200, first.text[-1500:]
            ready = http.get("/readyz").json()
            assert ready["ready"] is True and ready["stopped"] is None, ready
            follower.poll()
            promote(target, "b")
            assert follower.follow_until_promoted() == 2
            with pytest.raises(Exception, match="not replicated"):  # its next batch is refused: the node stops
                exchange.node.submit(RegisterAsset("BTC", 8, "crypto", "bitcoin")).result(30)  # type: ignore[attr-defined]
            assert isinstance(exchange.node.failed, Fenced)  # type: ignore[attr-defined]
            refused = http.post("/signup", data=dict(form, email="after@example.com"))
            assert refused.status_code == 503, refused.text
            assert "deposed" in refused.json()["stopped"] and "deposed" in refused.json()["msg"], refused.text
            for path in ("/login", "/forgot-password", "/api/v3/order", "/api/v1/apiKey"):
                assert http.post(path, data={"email": "before@example.com"}).status_code == 503, path
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "deposed" in ready.json()["stopped"], ready.text
            assert http.get("/healthz").status_code == 200  # reads still answer
        assert _users(data) == ["before@example.com"]  # nothing written after the fence
    finally:
        follower.close()
        replicator.close()
        exchange.node.close()  # type: ignore[attr-defined]
