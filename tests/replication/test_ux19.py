"""Session 19: what a new user met trying issue #21's replication, each through the real path."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import Fenced, Follower, parse_target, promote
from ringfence.solvency.publisher import read_history

from .conftest import NATS_URL, key_of, peers_of


def test_a_deposed_primary_publishes_no_proof_of_solvency(tmp_path, stream, monkeypatch):
    """After `batch N not replicated ... deposed`, the old primary's engine still holds batch N (applied
    before the stream refused it): a proof at that position would attest a history no standby has.
    Its scheduled publisher publishes nothing more and says why once; asked directly, it refuses."""
    from ringfence.api.serve import build
    from ringfence.replication import Replicator
    from ringfence.replication.serving import after_build

    monkeypatch.delenv("RINGFENCE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RINGFENCE_MODE", raising=False)
    monkeypatch.setenv("RINGFENCE_POR_EVERY_S", "1")
    target = parse_target(f"{NATS_URL}/{stream}")
    data = tmp_path / "a"
    app, exchange, info = build(data, demo=False)
    publisher = info["por"]["publisher"]
    replicator = Replicator(target, "a", data / "engine", key=key_of("a"))
    after_build(exchange, replicator, print)
    follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    node = exchange.node  # type: ignore[attr-defined]
    try:
        with TestClient(app, client=("127.0.0.1", 50000)):  # type: ignore[arg-type]
            _deposed_and_proofs(node, publisher, target, follower, data)
    finally:
        follower.close()
        replicator.close()
        node.close()


def _deposed_and_proofs(node, publisher, target, follower, data) -> None:
    node.submit(RegisterAsset("BTC", 8, "crypto", "bitcoin")).result(30)
    before = publisher.publish()  # a healthy primary publishes
    assert before["position"] == f"journal:{node.last_seq}"
    follower.poll()
    promote(target, "b")
    assert follower.follow_until_promoted() == 2
    with pytest.raises(Exception, match="not replicated"):
        node.submit(RegisterAsset("ETH", 18, "crypto", "ethereum")).result(30)
    assert isinstance(node.failed, Fenced)
    with pytest.raises(Exception, match="no proof published: the node has stopped .*deposed"):
        publisher.publish()
    deadline = time.monotonic() + 10
    while publisher._thread.is_alive() and time.monotonic() < deadline:  # the schedule ends
        time.sleep(0.1)
    assert not publisher._thread.is_alive()
    proofs = read_history(data / "por")["proofs"]
    assert [p["position"] for p in proofs][-1] == before["position"], proofs  # nothing after the fence
    assert not [p for p in (data / "por").iterdir() if p.name.startswith(".tmp")]
    assert "deposed" in publisher.refused
