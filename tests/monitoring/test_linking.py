"""Account linking: clusters are the connected components of shared attributes and trades."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ringfence.monitoring.events import Event
from ringfence.monitoring.linking import LinkGraph


def test_shared_device_destination_and_trades_make_flagged_clusters() -> None:
    g = LinkGraph(max_fanout=3)
    g.add(Event(1, "sign_in", 1, account_id="a", ip="1.1.1.1", device="farm/1"))
    g.add(Event(2, "sign_in", 2, account_id="b", ip="2.2.2.2", device="farm/1"))
    g.add(Event(3, "trade", 3, account_id="a", data={"maker_owner": "b"}))
    g.add(Event(4, "withdrawal_requested", 4, account_id="c", data={"address": "bc1qmule"}))
    g.add(Event(5, "withdrawal_requested", 5, account_id="d", data={"address": "bc1qmule"}))
    for i, acct in enumerate(("w", "x", "y", "z")):  # one NAT address for four unrelated accounts: links nobody
        g.add(Event(10 + i, "sign_in", 10 + i, account_id=acct, ip="9.9.9.9"))
    clusters = [c for c in g.clusters() if "members" in c]
    assert [c["members"] for c in clusters] == [["a", "b"], ["c", "d"]]
    assert all(c["flagged"] for c in clusters)
    assert "traded with each other 1 time" in clusters[0]["reasons"][0]
    assert "withdrawal destination bc1qmule" in clusters[1]["reasons"][0]
    assert g.clusters()[-1]["ignored_values"] == [{"attribute": "ip", "value": "9.9.9.9", "accounts": 4}]
    assert g.cluster_of("w") is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 6)), max_size=40))
def test_clusters_are_exactly_the_connected_components(edges) -> None:
    g = LinkGraph(max_fanout=1000)
    for i, (acct, value) in enumerate(edges):
        g.add(Event(i + 1, "sign_in", i, account_id=f"a{acct}", device=f"d{value}"))
    # reference: repeated merging of the sets of accounts per device
    comps: list[set[str]] = []
    for value in {v for _, v in edges}:
        group = {f"a{a}" for a, v in edges if v == value}
        touching = [c for c in comps if c & group]
        merged = group.union(*touching)
        comps = [c for c in comps if not c & group] + [merged]
    expected = sorted(sorted(c) for c in comps if len(c) >= 2)
    assert sorted(c["members"] for c in g.clusters() if "members" in c) == expected
