"""Account linking (issue 20, item 4): accounts joined by what they share.

Every event with an account adds edges account — attribute: the client IP (`ip`), the device (user
agent, `device`), a withdrawal destination (`address`), a deposit source (`sender`), and every
trade adds an edge between its two accounts (`trade`). Accounts that share an attribute value, or
trade with each other, fall into one cluster (union-find over the accounts). An attribute value
seen on more than `max_fanout` accounts links nobody (a carrier NAT, a proxy, an exchange's own
hot wallet): it is listed as `ignored` with its account count.

A cluster is flagged when its members trade with each other (coordinated trading, wash rings) or
when one withdrawal destination or deposit source serves several members (cross-collateral abuse,
mule withdrawals); the flag says which. Deterministic over the stream like the rules.

The graph is kept in plain dicts and the clusters are its connected components (union-find):
networkx (3.6.1, a wheel on this machine) would do the same, but it is not installed in the
project's environment and this needs nothing more.
"""

from __future__ import annotations

import collections
from typing import Any

from .events import Event

__all__ = ["LinkGraph"]

MAX_ACCOUNTS_PER_VALUE = 10_000


class LinkGraph:
    def __init__(self, *, max_fanout: int = 20) -> None:
        self.max_fanout = max_fanout
        self.values: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        self.trades: collections.Counter[tuple[str, str]] = collections.Counter()
        self.accounts: set[str] = set()

    def add(self, e: Event) -> None:
        if not e.account_id:
            return
        self.accounts.add(e.account_id)
        pairs = [("ip", e.ip), ("device", e.device)]
        if e.kind == "withdrawal_requested":
            pairs.append(("address", str(e.data.get("address", ""))))
        if e.kind == "deposit_credited":
            pairs.append(("sender", str(e.data.get("sender", ""))))
        for attr, value in pairs:
            if value:
                members = self.values[(attr, value)]
                if len(members) < MAX_ACCOUNTS_PER_VALUE:
                    members.add(e.account_id)
        maker = e.data.get("maker_owner")
        if e.kind == "trade" and isinstance(maker, str) and maker and maker != e.account_id:
            self.accounts.add(maker)
            self.trades[tuple(sorted((e.account_id, maker)))] += 1  # type: ignore[index]

    def clusters(self) -> list[dict[str, Any]]:
        parent: dict[str, str] = {a: a for a in self.accounts}

        def find(a: str) -> str:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        def union(a: str, b: str) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        shared: list[tuple[str, str, list[str]]] = []
        ignored: list[dict[str, Any]] = []
        for (attr, value), seen in sorted(self.values.items()):
            if len(seen) < 2:
                continue
            if len(seen) > self.max_fanout:
                ignored.append({"attribute": attr, "value": value, "accounts": len(seen)})
                continue
            ordered = sorted(seen)
            shared.append((attr, value, ordered))
            for other in ordered[1:]:
                union(ordered[0], other)
        for (a, b) in self.trades:
            union(a, b)
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for a in self.accounts:
            groups[find(a)].append(a)
        out: list[dict[str, Any]] = []
        for root, members in sorted(groups.items()):
            if len(members) < 2:
                continue
            mset = set(members)
            links = [{"attribute": attr, "value": value, "accounts": accts} for attr, value, accts in shared if accts[0] in mset]
            internal = {f"{a}|{b}": n for (a, b), n in sorted(self.trades.items()) if a in mset}
            reasons = []
            if internal:
                reasons.append(f"members traded with each other {sum(internal.values())} time(s) (coordinated or wash trading)")
            for link in links:
                if link["attribute"] in ("address", "sender"):
                    reasons.append(f"{len(link['accounts'])} members share a {'withdrawal destination' if link['attribute'] == 'address' else 'deposit source'} "
                                   f"{link['value']} (cross-collateral or mule activity)")
            out.append({"cluster": root, "members": sorted(members), "links": links, "internal_trades": internal,
                        "flagged": bool(reasons), "reasons": reasons})
        out.sort(key=lambda c: (0 if c["flagged"] else 1, -len(c["members"]), str(c["cluster"])))
        return out + ([{"ignored_values": ignored}] if ignored else [])

    def cluster_of(self, account_id: str) -> dict[str, Any] | None:
        for c in self.clusters():
            if account_id in c.get("members", ()):
                return c
        return None
