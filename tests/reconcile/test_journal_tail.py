"""The fold's own journal reader: incremental across segments, and refuses a tampered journal."""

from __future__ import annotations

import pytest

from ringfence.engine.node import Node
from ringfence.errors import JournalCorrupt
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.reconcile.reconciler import JournalFold
from ringfence.app import new_node


def _fill(node: Node, start: int, n: int) -> None:
    ledger = node.engine.ledger
    world, alice = ledger.world("BTC").id, ledger.get("alice", "BTC").id
    for i in range(n):
        node.execute(CreateTransfers([Transfer(start + i, world, alice, 1 + i)]))


def test_incremental_over_rotating_segments_and_tamper_detection(tmp_path):
    node = new_node(tmp_path, fsync=False, segment_bytes=2048)
    node.open()
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute(OpenAccount("alice", "BTC"))
    _fill(node, 1, 40)
    fold = JournalFold(tmp_path)
    assert fold.advance() == 42 and fold.last_seq == node.engine.last_seq
    assert len(list((tmp_path / "journal").iterdir())) > 2  # several segments
    assert fold.advance() == 0
    _fill(node, 100, 25)
    assert fold.advance() == 25  # only what was appended
    assert fold.engine.state_hash() == node.engine.state_hash()
    alice = node.engine.ledger.get("alice", "BTC").id
    assert fold.book.balance[alice] == sum(range(1, 41)) + sum(range(1, 26))
    node.close()
    first = sorted((tmp_path / "journal").iterdir())[0]
    data = bytearray(first.read_bytes())
    data[200] ^= 1
    first.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt):
        JournalFold(tmp_path).advance()
