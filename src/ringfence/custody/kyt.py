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

__all__ = ["KytInput", "KytResult", "Scorer", "Blacklist", "BlacklistFile", "ChainFundingGraph", "BuiltinScorer",
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


class BlacklistFile:
    """A blacklist read from a CSV file (`RINGFENCE_KYT_BLACKLIST`) over a fixed base list (the sample),
    re-read when the file changes (sanctions lists change daily; no restart needed). The file is
    checked at most every `check_every_s` seconds; a file that no longer parses keeps the last good
    list and says why in `error`. A file that is missing or bad at start is refused (`load` raises)."""

    def __init__(self, path: str | Path, base: Blacklist | None = None, *, check_every_s: float = 1.0) -> None:  # float-ok: a timer, not money
        self.path = Path(path)
        self.base = base or Blacklist()
        self.check_every_s = check_every_s
        self.error = ""
        self.loads = 0
        self._stamp: tuple[int, int] = (-1, -1)
        self._checked = 0.0  # float-ok: monotonic clock
        self._list = self.base
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        import time

        now = time.monotonic()
        if not force and now - self._checked < self.check_every_s:
            return
        self._checked = now
        try:
            st = self.path.stat()
        except OSError as exc:
            if force:
                raise ValidationError(f"cannot read {self.path}: {exc.strerror}", field="RINGFENCE_KYT_BLACKLIST") from None
            self.error = f"cannot read {self.path}: {exc.strerror}; the last good list stays in force"
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            loaded = Blacklist.load(self.path)
        except (ValidationError, OSError, UnicodeDecodeError) as exc:
            if force:
                raise ValidationError(f"{self.path}: {exc}", field="RINGFENCE_KYT_BLACKLIST") from None
            self.error = f"{self.path}: {exc}; the last good list stays in force"
            return
        merged = Blacklist()
        merged._entries = {**self.base._entries, **loaded._entries}
        self._list, self._stamp, self.error = merged, stamp, ""
        self.loads += 1

    def refresh(self) -> None:
        """Re-read the file if it changed (the `kyt-blacklist` worker of serve calls this every second).
        A file that cannot be read or parsed raises (after keeping the last good list), so the
        supervised worker backs off and says so in /readyz and /metrics until the file is fixed."""
        self._reload()
        if self.error:
            raise ValidationError(self.error, field="RINGFENCE_KYT_BLACKLIST")

    def lookup(self, chain: str, address: str | None) -> tuple[str, str] | None:
        self._reload()
        return self._list.lookup(chain, address)

    def __len__(self) -> int:
        return len(self._list)


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
            # a transaction's senders never change (its inputs are part of its txid): remember them
            # while the index lives (it is rebuilt on a reorg); a transaction not found is not remembered
            return list(self._btc_senders(self._refresh(chain, adapter), adapter, txid))
        # the funding index has read every recent block once: its sender, without asking the node to
        # find the transaction again (eth-tester scans its blocks for each look-up)
        known = self._refresh(chain, adapter).sender_of.get(txid.lower())
        if known is not None:
            return [known]
        tx = adapter.w3.eth.get_transaction(txid)
        return [tx["from"]]

    @staticmethod
    def _btc_senders(idx: "_FundingIndex", adapter: Any, txid: str) -> tuple[str, ...]:
        """The addresses of a Bitcoin transaction's spent outputs, remembered in `idx` once every
        input was found (a transaction's inputs are part of its txid, so its senders never change)."""
        from bitcointx.core import b2lx

        known = idx.senders_of.get(txid)
        if known is not None:
            return known
        tx = adapter.node.get_tx(txid)
        if tx is None:
            return ()
        if tx.is_coinbase():
            idx.senders_of[txid] = ()
            return ()
        out: list[str] = []
        complete = True
        for txin in tx.vin[:MAX_FANOUT]:
            coin = adapter.node.coin((b2lx(txin.prevout.hash), txin.prevout.n))
            if coin is None:  # already spent: look it up in the funding transaction
                prev = adapter.node.get_tx(b2lx(txin.prevout.hash))
                spk = bytes(prev.vout[txin.prevout.n].scriptPubKey) if prev is not None else b""
                complete = complete and prev is not None
            else:
                spk = coin.script_pubkey
            addr = adapter.address_of_script(spk) if spk else None
            if addr:
                out.append(addr)
        if complete:
            idx.senders_of[txid] = tuple(out)
        return tuple(out)

    def funders(self, chain: str, address: str) -> list[str]:
        adapter = self.adapters.get(chain)
        if adapter is None:
            return []
        idx = self._refresh(chain, adapter)
        low = idx.tip - MAX_LOOKBACK_BLOCKS
        entries = [ref for h, ref in idx.by_to.get(_norm(chain, address), []) if h >= low]
        if chain != "bitcoin":
            return entries[:MAX_FANOUT]
        key = _norm(chain, address)
        known = idx.funders_of.get(key)  # until the next block (the index forgets them then)
        if known is not None:
            return list(known)
        # Bitcoin: every transaction that paid `address`; its senders are the funders, each named once
        # (a transaction paying the address in several outputs, or one sender paying it many times,
        # must not fill the fan-out with copies of one funder and hide the others)
        out: dict[str, None] = {}
        for txid in dict.fromkeys(entries):
            for s in self._btc_senders(idx, adapter, txid):
                out[s] = None
            if len(out) >= MAX_FANOUT:
                break
        found = tuple(out)[:MAX_FANOUT]
        idx.funders_of[key] = found
        return list(found)

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
                block = adapter.node.block_at(h)
                for txid, tx in zip(block.txids, block.txs):
                    for o in tx.vout:
                        to = adapter.address_of_script(bytes(o.scriptPubKey))
                        if to:
                            idx.by_to.setdefault(to, []).append((h, txid))
            else:
                block = adapter.w3.eth.get_block(h, full_transactions=True)
                for tx in block["transactions"]:
                    idx.sender_of["0x" + bytes(tx["hash"]).hex()] = tx["from"]
                    if tx.get("to"):
                        idx.by_to.setdefault(tx["to"].lower(), []).append((h, tx["from"]))
            idx.hashes[h] = adapter.block_hash(h)
            idx.last = h
        if idx.tip != tip:
            idx.funders_of.clear()
        idx.tip = tip
        return idx


@dataclass
class _FundingIndex:
    """Per chain: who paid each address, as (height, sender) for Ethereum or (height, txid) for Bitcoin."""

    last: int = -1
    tip: int = 0
    hashes: dict[int, str] = field(default_factory=dict)
    by_to: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: Ethereum: the sender of each indexed transaction (lower-case txid -> address).
    sender_of: dict[str, str] = field(default_factory=dict)
    #: Bitcoin: the senders (spent outputs' addresses) of each transaction looked at.
    senders_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Bitcoin: the funders of each address looked at since the last block (cleared when the tip moves).
    funders_of: dict[str, tuple[str, ...]] = field(default_factory=dict)


class BuiltinScorer:
    """Blacklist + taint. Direct blacklisted sender: 100; one hop: 90; two hops: 60; else 0."""

    def __init__(self, blacklist: "Blacklist | BlacklistFile", graph: ChainFundingGraph | None = None, *,
                 hop1_score: int = 90, hop2_score: int = 60) -> None:
        self.blacklist = blacklist
        self.graph = graph
        self.hop1_score = hop1_score
        self.hop2_score = hop2_score

    def screen_destination(self, chain: str, address: str) -> KytResult:
        """KYT on a withdrawal's (or a return's) destination: an address on the blacklist scores 100
        (sanctions, exploit) or 95 (mixer), with the entry as the reason; with a funding graph, an
        address funded by a blacklisted one scores like a deposit's sender does (1 hop: 90, 2 hops:
        60, `score`), the path as the reason; any other address 0."""
        hit = self.blacklist.lookup(chain, address)
        if hit is None:
            if self.graph is None:
                return KytResult(0, ())
            taint = self.score(KytInput(chain, "", 0, "", address, 0, sender=address))
            if taint.score == 0:
                return KytResult(0, ())
            return KytResult(taint.score, tuple(f"KYT: destination {r.removeprefix('sender ')}" for r in taint.reasons))
        category, source = hit
        return KytResult(100 if category in FREEZE_CATEGORIES else 95,
                         (f"KYT: destination {address} is blacklisted ({category}: {source})",), category)

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
