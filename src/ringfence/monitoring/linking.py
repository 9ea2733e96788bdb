"""Account linking (issue 20, item 4): accounts joined by what they share.

Every event with an account adds edges account — attribute: the client IP (`ip`), the device (user
agent, `device`), a withdrawal destination (`address`), a deposit source (`sender`), and every
trade adds an edge between its two accounts (`trade`). Accounts that share an attribute value, or
trade with each other, fall into one cluster (union-find over the accounts). An attribute value
seen on more than `max_fanout` accounts links nobody (a carrier NAT, a proxy, an exchange's own
hot wallet): it is listed as `ignored` with its account count. IP addresses link less readily
(`LinkingConfig`, the rule set's `linking` object): an address that is not globally routable
(loopback, private, link-local, carrier-grade NAT: everyone behind one gateway, every local client)
links nobody, and a public address links at most `max_accounts_per_ip` accounts. Trades against a
liquidity account (the exchange's own or a designated market maker, `liquidity_accounts`) link
nobody: trading with the market maker is what every customer does.

A cluster is flagged when its members trade with each other (coordinated trading, wash rings) or
when one withdrawal destination or deposit source serves several members (cross-collateral abuse,
mule withdrawals); the flag says which. Deterministic over the stream like the rules.

The graph is kept in plain dicts and the clusters are its connected components (union-find):
networkx (3.6.1, a wheel on this machine) would do the same, but it is not installed in the
project's environment and this needs nothing more.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from .events import Event

__all__ = ["LinkGraph", "LinkingConfig", "RaisedClusters", "routable_ip"]

MAX_ACCOUNTS_PER_VALUE = 10_000
EVIDENCE_PER_LINK = 20  # event ids kept per (value, account) and per trading pair
MAX_EVIDENCE = 200  # event ids named on one cluster


@dataclass(frozen=True)
class LinkingConfig:
    """How accounts are linked (the rule set's optional `linking` object, docs/monitoring.md)."""

    max_accounts_per_value: int = 20  # a device, destination or source on more accounts links nobody
    max_accounts_per_ip: int = 5  # a public IP on more accounts (a NAT, a VPN exit, an office) links nobody
    link_private_ips: bool = False  # loopback, private, link-local and CGNAT addresses link nobody unless true
    liquidity_accounts: frozenset[str] = frozenset()  # market makers: trading against them links nobody


@functools.lru_cache(maxsize=65_536)
def routable_ip(value: str) -> bool:
    """A globally routable address (not loopback, private, link-local, carrier-grade NAT, reserved)."""
    try:
        return ipaddress.ip_address(value).is_global
    except ValueError:
        return False


class LinkGraph:
    def __init__(self, *, max_fanout: int | None = None, config: LinkingConfig | None = None) -> None:
        cfg = config or LinkingConfig()
        self.config = cfg
        self.max_fanout = cfg.max_accounts_per_value if max_fanout is None else max_fanout
        self.max_per_ip = cfg.max_accounts_per_ip if max_fanout is None else max_fanout
        self.values: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        # (attribute, value, account) -> the first event ids that showed it; (a, b) -> their trades' event ids
        self.seen_in: dict[tuple[str, str, str], list[int]] = {}
        self.trade_events: dict[tuple[str, str], list[int]] = {}
        self.trades: collections.Counter[tuple[str, str]] = collections.Counter()
        self.accounts: set[str] = set()
        self.trades_seen = 0  # trades between two accounts
        self.liquidity_trades = 0  # of which against a liquidity account (no link)

    def add(self, e: Event) -> None:
        if not e.account_id:
            return
        self.accounts.add(e.account_id)
        pairs = [("device", e.device)]
        if e.ip and (self.config.link_private_ips or routable_ip(e.ip)):
            pairs.append(("ip", e.ip))
        if e.kind == "withdrawal_requested":
            pairs.append(("address", str(e.data.get("address", ""))))
        if e.kind == "deposit_credited":
            pairs.append(("sender", str(e.data.get("sender", ""))))
        for attr, value in pairs:
            if value:
                members = self.values[(attr, value)]
                if len(members) < MAX_ACCOUNTS_PER_VALUE:
                    members.add(e.account_id)
                    ids = self.seen_in.setdefault((attr, value, e.account_id), [])
                    if len(ids) < EVIDENCE_PER_LINK:
                        ids.append(e.id)
        maker = e.data.get("maker_owner")
        if e.kind == "trade" and isinstance(maker, str) and maker and maker != e.account_id:
            self.trades_seen += 1
            if maker in self.config.liquidity_accounts or e.account_id in self.config.liquidity_accounts:
                self.liquidity_trades += 1  # every customer trades with the market maker: no link
                return
            self.accounts.add(maker)
            a, b = sorted((e.account_id, maker))
            self.trades[(a, b)] += 1
            ids = self.trade_events.setdefault((a, b), [])
            if len(ids) < EVIDENCE_PER_LINK:
                ids.append(e.id)

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
            if len(seen) > (self.max_per_ip if attr == "ip" else self.max_fanout):
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
            evidence: set[int] = set()
            for link in links:
                for acct in link["accounts"]:
                    evidence.update(self.seen_in.get((str(link["attribute"]), str(link["value"]), acct), ()))
            for (a, b) in self.trades:
                if a in mset:
                    evidence.update(self.trade_events.get((a, b), ()))
            out.append({"cluster": root, "members": sorted(members), "links": links, "internal_trades": internal,
                        "flagged": bool(reasons), "reasons": reasons, "evidence": sorted(evidence)[:MAX_EVIDENCE]})
        out.sort(key=lambda c: (0 if c["flagged"] else 1, -len(c["members"]), str(c["cluster"])))
        return out + ([{"ignored_values": ignored}] if ignored else [])

    def cluster_of(self, account_id: str) -> dict[str, Any] | None:
        for c in self.clusters():
            if account_id in c.get("members", ()):
                return c
        return None


class RaisedClusters:
    """Which flagged clusters were alerted on: a cluster is raised once for its set of members, and
    again only when it grows (its members are not within one set already raised). More trades or
    links inside a raised cluster raise nothing. `signatures` survive a restart (they end each
    alert's explanation); the member sets are this process's."""

    def __init__(self) -> None:
        self.signatures: set[str] = set()
        self.member_sets: list[frozenset[str]] = []

    @staticmethod
    def signature(members: list[str]) -> str:
        return hashlib.sha256(json.dumps(sorted(members)).encode()).hexdigest()[:16]

    def new(self, members: list[str]) -> list[str] | None:
        """None when this member set was raised (or lies within one raised); else the members that
        joined raised clusters (empty for a cluster never raised), and the set is now raised."""
        mset = frozenset(members)
        sig = self.signature(members)
        if sig in self.signatures or any(mset <= raised for raised in self.member_sets):
            return None
        before = [r for r in self.member_sets if r & mset]
        self.signatures.add(sig)
        self.member_sets = [r for r in self.member_sets if not r <= mset] + [mset]
        return sorted(mset - frozenset().union(*before)) if before else []
