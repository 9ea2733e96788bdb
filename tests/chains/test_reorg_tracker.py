"""The reorg tracker on its own: what it reports, what it forgets, how much it looks up."""

from __future__ import annotations

import pytest

from ringfence.chains.adapter import ReorgTracker
from ringfence.errors import ValidationError


def test_stable_chain_costs_one_lookup_and_reports_nothing():
    chain = {h: f"a{h}" for h in range(10)}
    t = ReorgTracker()
    for h, bh in chain.items():
        t.remember(h, bh)
    calls = []
    assert t.check(9, lambda h: calls.append(h) or chain[h]) is None
    assert calls == [9]


def test_replaced_tail_is_reported_from_the_fork_and_forgotten():
    chain = {h: f"a{h}" for h in range(10)}
    t = ReorgTracker()
    for h, bh in chain.items():
        t.remember(h, bh)
    new = dict(chain)
    for h in (7, 8):
        new[h] = f"b{h}"  # chain is now shorter: 0..8, with 7 and 8 replaced, 9 gone
    del new[9]
    reorg = t.check(8, new.__getitem__)
    assert reorg.fork_height == 7
    assert reorg.replaced == {9: ("a9", None), 8: ("a8", "b8"), 7: ("a7", "b7")}
    assert sorted(t.remembered()) == list(range(7))
    assert t.check(8, new.__getitem__) is None  # reported once


def test_memory_is_bounded():
    t = ReorgTracker(max_tracked_blocks=5)
    for h in range(100):
        t.remember(h, str(h))
    assert sorted(t.remembered()) == [95, 96, 97, 98, 99]
    with pytest.raises(ValidationError):
        ReorgTracker(0)
