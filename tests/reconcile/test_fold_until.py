"""The reconciler folds the journal exactly to the live engine's batch boundary, and resumes there."""

from __future__ import annotations

from pathlib import Path

from ringfence.app import new_node
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.reconcile.reconciler import JournalFold


def test_fold_stops_at_a_batch_boundary_and_resumes(tmp_path: Path) -> None:
    node = new_node(tmp_path, fsync=False)
    node.open()
    node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), OpenAccount("a", "BTC"), OpenAccount("b", "BTC")])
    world, a, b = (node.read(lambda e, o=o: e.ledger.get(o, "BTC").id if o != "world" else e.ledger.world("BTC").id)
                   for o in ("world", "a", "b"))
    boundaries = [node.last_seq]
    for i in range(5):  # one journal record each
        node.execute_many([CreateTransfers([Transfer(10 + 2 * i, world, a, 100)]), CreateTransfers([Transfer(11 + 2 * i, a, b, 40)])])
        boundaries.append(node.last_seq)
    fold = JournalFold(tmp_path)
    for until in boundaries:
        fold.advance(until_seq=until)
        assert fold.last_seq == until  # never past the boundary asked for, never short of it
    assert fold.advance() == 0  # everything was folded exactly once
    assert fold.engine.state_hash() == node.read(lambda e: e.state_hash())
    node.close()
