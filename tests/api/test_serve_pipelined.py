"""`ringfence serve --pipeline` runs the pipelined group commit (docs/journal.md, "Pipelined group commit"):
its read models are fed only durable batches, in order, before the answers of their batch, so what
a client is told right after its answer — open orders, the book, the balance — already has its
order, and taking it away again leaves everything as it was."""

from __future__ import annotations

import pytest

from .conftest import Server
from .test_rest import BASE_ORDER, Client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("pipelined") / "data", args=("--pipeline",), chains=False)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def test_serve_pipelines_and_a_clients_reads_follow_its_answers(server) -> None:
    assert "group commit pipelined, one fsync per acknowledgement (--pipeline, at most 4 batches in flight)" \
        in server.log_text(), server.log_text()[-2000:]
    alice = Client(server)
    before = alice.state()
    placed = []
    for i in range(12):
        r = alice.post("/api/v3/order", {**BASE_ORDER, "price": f"{60100 + 10 * i}.00"})
        assert r.status_code == 200, r.text
        placed.append(r.json()["orderId"])
        _, open_ids, bids, _ = alice.state()
        assert placed[-1] in open_ids  # the read model had the batch before the answer went out
        assert any(b[0].startswith(str(60100 + 10 * i)) for b in bids), bids
    for order_id in placed:
        r = alice.http.delete("/api/v3/order?" + alice_query(alice, order_id), headers={"X-MBX-APIKEY": alice.key})
        assert r.json()["status"] == "CANCELED", r.text
    assert alice.state() == before


def alice_query(alice: Client, order_id: int) -> str:
    from .test_rest import signed_query

    return signed_query(alice.secret, {"symbol": "BTCUSDT", "orderId": str(order_id)})
