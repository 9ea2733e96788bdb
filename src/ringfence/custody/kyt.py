"""KYT (know-your-transaction) scoring for deposits: a pluggable `Scorer` and the built-in one.

The built-in scorer combines a blacklist of addresses tied to hacks and sanctions (a loadable CSV,
OFAC-SDN style; a small sample ships in `custody/data/blacklist-sample.csv`) with taint over one and
two hops seen on our own chains: who sent the deposit, and who funded those senders.

Scores are integers 0..100. The deposit flow (deposit_cmds.py) routes by score: > 85 lands in the
user's `quarantine` account until a source-of-funds declaration and an analyst's decision; a sender
on the blacklist as `exploit` or `sanctions` is frozen and reported at once.

Scoring does I/O (chain lookups), so it runs only in the deposit worker; its result enters the engine
as fields of `CreditDeposit`. Invariant: scores are bounded 0..100 and every score > 0 has a reason.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Protocol

from ..errors import ValidationError

__all__ = ["KytInput", "KytResult", "Scorer", "Blacklist", "ChainFundingGraph", "BuiltinScorer",
           "QUARANTINE_ABOVE", "FREEZE_CATEGORIES", "sample_blacklist"]

#: A score strictly above this sends the deposit to quarantine.
QUARANTINE_ABOVE = 85
#: Direct senders in these categories are frozen and reported, whatever the score.
FREEZE_CATEGORIES = ("exploit", "sanctions")
CATEGORIES = ("sanctions", "exploit", "mixer")
MAX_BLACKLIST_ENTRIES = 1_000_000
MAX_FANOUT = 50  # senders/funders looked at per hop
MAX_LOOKBACK_BLOCKS = 2_000


@dataclass(frozen=True)
class KytInput:
    chain: str
    txid: str
    index: int
    asset: str
    address: str
    amount_minor: int
    sender: str | None = None


@dataclass(frozen=True)
class KytResult:
    score: int
    reasons: tuple[str, ...]
    category: str = ""  # the blacklist category of a *direct* sender, "" otherwise
    senders: tuple[str, ...] = ()  # who sent the deposit (the first is where "return to sender" pays)

    def __post_init__(self) -> None:
        assert 0 <= self.score <= 100, "KYT score out of range"
        assert self.score == 0 or self.reasons, "a positive score needs a reason"


class Scorer(Protocol):
    def score(self, item: KytInput) -> KytResult: ...


def _norm(chain: str, address: str) -> str:
    return address.lower() if chain == "ethereum" else address


class Blacklist:
    """`(chain, address) -> (category, source)`; Ethereum addresses compare case-insensitively."""

    def __init__(self, entries: Iterable[tuple[str, str, str, str]] = ()) -> None:
        self._entries: dict[tuple[str, str], tuple[str, str]] = {}
        for chain, address, category, source in entries:
            self.add(chain, address, category, source)

    def add(self, chain: str, address: str, category: str, source: str = "") -> None:
        if category not in CATEGORIES:
            raise ValidationError(f"must be one of {', '.join(CATEGORIES)}", field="category")
        if len(self._entries) >= MAX_BLACKLIST_ENTRIES:
            raise ValidationError(f"a blacklist holds at most {MAX_BLACKLIST_ENTRIES} entries", field="blacklist")
        self._entries[(chain, _norm(chain, address))] = (category, source)

    def lookup(self, chain: str, address: str | None) -> tuple[str, str] | None:
        if not address:
            return None
        return self._entries.get((chain, _norm(chain, address)))

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: str | Path) -> "Blacklist":
        """CSV lines `chain,address,category,source`; `#` starts a comment line."""
        bl = cls()
        text = Path(path).read_text(encoding="utf-8") if not isinstance(path, str) or "\n" not in path else path
        for n, row in enumerate(csv.reader(line for line in text.splitlines() if line.strip() and not line.startswith("#"))):
            if len(row) < 3:
                raise ValidationError(f"line {n + 1}: expected chain,address,category[,source]", field="blacklist")
            if row[0] not in ("bitcoin", "ethereum"):
                raise ValidationError(f"line {n + 1}: chain must be bitcoin or ethereum", field="blacklist")
            bl.add(row[0].strip(), row[1].strip(), row[2].strip(), (row[3] if len(row) > 3 else "").strip())
        return bl


def sample_blacklist() -> Blacklist:
    text = resources.files("ringfence.custody").joinpath("data/blacklist-sample.csv").read_text(encoding="utf-8")
    return Blacklist.load(text)


class ChainFundingGraph:
    """Who sent a transaction and who funded an address, read from our chain adapters.

    Bitcoin: the addresses of a transaction's spent outputs (the simulator's UTXO graph).
    Ethereum: a transaction's `from`, and the senders of transactions into an address within the
    last `MAX_LOOKBACK_BLOCKS` blocks. Who paid which address is indexed as blocks arrive (each block
    is read once), so scoring a deposit does not rescan the chain.
    """

    def __init__(self, adapters: dict[str, Any]) -> None:
        self.adapters = adapters
        self._index: dict[str, _FundingIndex] = {}

    def senders(self, chain: str, txid: str) -> list[str]:
        adapter = self.adapters.get(chain)
        if adapter is None:
            return []
        if chain == "bitcoin":
            from bitcointx.core import b2lx

            tx = adapter.node.get_tx(txid)
            if tx is None or tx.is_coinbase():
                return []
            out = []
            for txin in tx.vin[:MAX_FANOUT]:
                coin = adapter.node.coin((b2lx(txin.prevout.hash), txin.prevout.n))
                if coin is None:  # already spent: look it up in the funding transaction
                    prev = adapter.node.get_tx(b2lx(txin.prevout.hash))
                    spk = bytes(prev.vout[txin.prevout.n].scriptPubKey) if prev is not None else b""
                else:
                    spk = coin.script_pubkey
                addr = adapter.address_of_script(spk) if spk else None
                if addr:
                    out.append(addr)
            return out
        tx = adapter.w3.eth.get_transaction(txid)
        return [tx["from"]]

    def funders(self, chain: str, address: str) -> list[str]:
        adapter = self.adapters.get(chain)
        if adapter is None:
            return []
        idx = self._refresh(chain, adapter)
        low = idx.tip - MAX_LOOKBACK_BLOCKS
        entries = [ref for h, ref in idx.by_to.get(_norm(chain, address), []) if h >= low]
        if chain != "bitcoin":
            return entries[:MAX_FANOUT]
        # Bitcoin: every transaction that paid `address`; its senders are the funders.
        out: list[str] = []
        for txid in entries:
            out.extend(self.senders(chain, txid))
            if len(out) >= MAX_FANOUT:
                return out[:MAX_FANOUT]
        return out

    def _refresh(self, chain: str, adapter: Any) -> "_FundingIndex":
        """Index the blocks mined since the last call (each block is read once, not once per
        deposit); a changed hash at the last indexed height (a reorg) rebuilds the index."""
        idx = self._index.get(chain)
        tip = adapter.current_height()
        if idx is not None and idx.hashes and adapter.block_hash(idx.last) != idx.hashes[idx.last]:
            idx = None
        if idx is None or len(idx.hashes) > 2 * MAX_LOOKBACK_BLOCKS:
            idx = _FundingIndex()
            self._index[chain] = idx
        for h in range(max(idx.last + 1, tip - MAX_LOOKBACK_BLOCKS, 0), tip + 1):
            if chain == "bitcoin":
                from bitcointx.core import b2lx

                block = adapter.node.block_at(h)
                for tx in block.txs:
                    txid = b2lx(tx.GetTxid())
                    for o in tx.vout:
                        to = adapter.address_of_script(bytes(o.scriptPubKey))
                        if to:
                            idx.by_to.setdefault(to, []).append((h, txid))
            else:
                block = adapter.w3.eth.get_block(h, full_transactions=True)
                for tx in block["transactions"]:
                    if tx.get("to"):
                        idx.by_to.setdefault(tx["to"].lower(), []).append((h, tx["from"]))
            idx.hashes[h] = adapter.block_hash(h)
            idx.last = h
        idx.tip = tip
        return idx


@dataclass
class _FundingIndex:
    """Per chain: who paid each address, as (height, sender) for Ethereum or (height, txid) for Bitcoin."""

    last: int = -1
    tip: int = 0
    hashes: dict[int, str] = field(default_factory=dict)
    by_to: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


class BuiltinScorer:
    """Blacklist + taint. Direct blacklisted sender: 100; one hop: 90; two hops: 60; else 0."""

    def __init__(self, blacklist: Blacklist, graph: ChainFundingGraph | None = None, *,
                 hop1_score: int = 90, hop2_score: int = 60) -> None:
        self.blacklist = blacklist
        self.graph = graph
        self.hop1_score = hop1_score
        self.hop2_score = hop2_score

    def score(self, item: KytInput) -> KytResult:
        senders = [item.sender] if item.sender else []
        if self.graph is not None and not senders:
            senders = self.graph.senders(item.chain, item.txid)
        who = tuple(senders[:MAX_FANOUT])
        for s in senders:
            hit = self.blacklist.lookup(item.chain, s)
            if hit is not None:
                category, source = hit
                score = 100 if category in FREEZE_CATEGORIES else 95
                return KytResult(score, (f"sender {s} is blacklisted ({category}: {source})",), category, who)
        if self.graph is None:
            return KytResult(0, (), senders=who)
        hop2_reason = None
        for s in senders[:MAX_FANOUT]:
            for f in self.graph.funders(item.chain, s)[:MAX_FANOUT]:
                hit = self.blacklist.lookup(item.chain, f)
                if hit is not None:
                    return KytResult(self.hop1_score, (f"sender {s} was funded by blacklisted {f} ({hit[0]}): 1 hop",),
                                     senders=who)
                if hop2_reason is None:
                    for g in self.graph.funders(item.chain, f)[:MAX_FANOUT]:
                        hit2 = self.blacklist.lookup(item.chain, g)
                        if hit2 is not None:
                            hop2_reason = f"sender {s} <- {f} <- blacklisted {g} ({hit2[0]}): 2 hops"
                            break
        if hop2_reason:
            return KytResult(self.hop2_score, (hop2_reason,), senders=who)
        return KytResult(0, (), senders=who)
