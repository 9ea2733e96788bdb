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


def test_local_and_crowded_addresses_and_the_market_maker_link_nobody() -> None:
    from ringfence.monitoring.linking import LinkingConfig

    g = LinkGraph(config=LinkingConfig(max_accounts_per_ip=2, liquidity_accounts=frozenset({"mm"})))
    for i, acct in enumerate(("alice", "bob", "new")):  # every local client is 127.0.0.1; an office LAN is 10/8
        g.add(Event(1 + i, "sign_in", 1, account_id=acct, ip="127.0.0.1", device=f"browser-{acct}"))
        g.add(Event(10 + i, "sign_in", 1, account_id=acct, ip="10.0.0.7"))
    g.add(Event(20, "trade", 2, account_id="alice", data={"maker_owner": "mm"}))  # both trade with the market maker
    g.add(Event(21, "trade", 2, account_id="bob", data={"maker_owner": "mm"}))
    g.add(Event(22, "trade", 2, account_id="mm", data={"maker_owner": "new"}))
    for i, acct in enumerate(("p", "q", "r")):  # one public address on three accounts: more than max_accounts_per_ip
        g.add(Event(30 + i, "sign_in", 3, account_id=acct, ip="8.8.4.4"))
    assert [c for c in g.clusters() if "members" in c] == [] and g.liquidity_trades == 3
    assert g.clusters()[-1]["ignored_values"] == [{"attribute": "ip", "value": "8.8.4.4", "accounts": 3}]
    # two accounts on one public address (within the limit) that trade with each other: a flagged cluster, with evidence
    g.add(Event(40, "sign_in", 4, account_id="x", ip="8.8.8.8"))
    g.add(Event(41, "sign_in", 4, account_id="y", ip="8.8.8.8"))
    g.add(Event(42, "trade", 5, account_id="x", data={"maker_owner": "y"}))
    [c] = [c for c in g.clusters() if "members" in c]
    assert c["members"] == ["x", "y"] and c["flagged"] and c["evidence"] == [40, 41, 42]
    # private addresses link when the rules say so
    lan = LinkGraph(config=LinkingConfig(link_private_ips=True))
    lan.add(Event(1, "sign_in", 1, account_id="a", ip="10.0.0.7"))
    lan.add(Event(2, "sign_in", 1, account_id="b", ip="10.0.0.7"))
    assert [c["members"] for c in lan.clusters() if "members" in c] == [["a", "b"]]


def test_a_cluster_is_raised_once_and_again_only_when_it_grows() -> None:
    from ringfence.monitoring.linking import RaisedClusters

    raised = RaisedClusters()
    assert raised.new(["a", "b"]) == []
    assert raised.new(["a", "b"]) is None  # more trades inside it: nothing new
    assert raised.new(["a"]) is None
    assert raised.new(["a", "b", "c"]) == ["c"]  # it grew
    assert raised.new(["a", "b"]) is None and raised.new(["d", "e"]) == []
    assert raised.new(["a", "b", "c", "d", "e"]) == []  # two raised clusters merged: nobody new joined
    assert raised.new(["a", "b", "c", "d", "e", "f"]) == ["f"]


def test_the_linking_settings_are_rules_data_validated_with_the_field_named() -> None:
    import json

    import pytest

    from ringfence.errors import ValidationError
    from ringfence.monitoring.rules import default_rules, parse_rules

    assert default_rules().linking.max_accounts_per_ip == 5 and not default_rules().linking.link_private_ips
    ok = parse_rules(json.dumps({"version": 1, "rules": [], "linking": {"max_accounts_per_ip": 3, "liquidity_accounts": ["mm"]}}))
    assert ok.linking.max_accounts_per_ip == 3 and ok.linking.liquidity_accounts == {"mm"}
    for linking, field in (({"max_accounts_per_ip": 1}, "rules.linking.max_accounts_per_ip"),
                           ({"link_private_ips": "yes"}, "rules.linking.link_private_ips"),
                           ({"liquidity_accounts": "mm"}, "rules.linking.liquidity_accounts"),
                           ({"other": 1}, "rules.linking")):
        with pytest.raises(ValidationError) as err:
            parse_rules(json.dumps({"version": 1, "rules": [], "linking": linking}))
        assert err.value.field == field, (linking, err.value)
