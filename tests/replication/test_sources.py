"""Zero trust inside: every command entering the engine carries who submitted it.

A live `serve --demo --node-id gw1`: an order through the REST gateway, a halt raised by a staff
member through the admin console, the index feed worker's quotes. `ringfence journal sources`
on the node's folder shows "gateway:gw1", "staff:ada" and "worker:index-feed" for them. The source
is journaled (covered by the hash chain) but never applied: the same commands with and without
sources give the same state hash, and a journal written before sources existed still replays.
"""

from __future__ import annotations

import json
import time

from api.conftest import Server
from ringfence.app import new_node, replay_journal
from ringfence.engine.commands import Batch, encode
from ringfence.journal.journal import scan_all
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer

from .test_replication import Trader, rf


def _sources(data) -> list[dict]:
    out = rf("journal", "sources", str(data), "--limit", "10000000").stdout
    return [json.loads(line) for line in out.splitlines()]


def test_the_journal_names_the_service_that_submitted_each_command(tmp_path):
    srv = Server(tmp_path / "a", args=("--node-id", "gw1"), env={"RINGFENCE_DEMO_FEED": "1"}, chains=False)  # chains: unused
    try:
        alice = json.loads((tmp_path / "a" / "demo-keys.json").read_text())[0]
        r = Trader(srv.base, alice).place("who-1")
        assert r.status_code == 200, r.text
        staff = tmp_path / "a" / "demo-staff.json"
        rf("halts", "raise", "src-1", "--scope-kind", "asset", "--scope", "ETH", "--level", "WITHDRAWALS_PAUSED",
           "--reason", "sources test", "--key", f"{staff}#ada", "--url", srv.base)
        deadline = time.time() + 30
        while not any(s["source"] == "worker:index-feed" for s in _sources(tmp_path / "a")):
            assert time.time() < deadline, "no index quote journaled with its worker's name"
            time.sleep(0.5)
    finally:
        assert srv.stop() == 0
    rows = _sources(tmp_path / "a")
    by_tag: dict[str, set[str]] = {}
    for row in rows:
        by_tag.setdefault(row["command"], set()).add(row["source"])
    orders = [t for t in by_tag if "order" in t and "gateway:gw1" in by_tag[t]]
    assert orders, by_tag
    assert "staff:ada" in {s for t, ss in by_tag.items() if "halt" in t for s in ss}, by_tag
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))  # every command listed once, in order
    verify = rf("journal", "verify", str(tmp_path / "a"))
    assert "journal: OK" in verify.stdout


def test_sources_do_not_change_the_state_or_old_journals(tmp_path):
    def run(folder, source: str) -> str:
        node = new_node(folder, clock=lambda: 1_700_000_000_000_000_000, entropy=lambda n: b"\x07" * n)
        node.open()
        try:
            node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"), source)
            node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")], source=source)
            world, alice = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("alice", "BTC").id))
            node.as_source(source).execute(CreateTransfers([Transfer(1, world, alice, 500)]))
            return node.read(lambda e: e.state_hash())
        finally:
            node.close()

    plain, sourced = run(tmp_path / "plain", ""), run(tmp_path / "sourced", "worker:test")
    assert plain == sourced
    old, _ = scan_all(tmp_path / "plain" / "journal")
    new, _ = scan_all(tmp_path / "sourced" / "journal")
    codec = replay_journal(tmp_path / "plain")[0].codec
    for a, b in zip(old, new):
        pa, pb = codec.batch.decode(a.payload), codec.batch.decode(b.payload)
        assert pa.sources == [] and pb.sources == ["worker:test"] * len(pb.commands)
        # a batch without sources is the exact bytes of the format before sources existed
        assert a.payload == encode(Batch(pa.first_seq, pa.ts_ns, pa.entropy, pa.commands))
    assert replay_journal(tmp_path / "sourced")[0].state_hash() == plain
