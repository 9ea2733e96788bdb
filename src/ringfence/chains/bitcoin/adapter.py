"""`ChainAdapter` for Bitcoin, backed by the in-process `BitcoinSimulator`.

The adapter speaks addresses and integer satoshis to custody code and scriptPubKeys to the node.
A real bitcoind adapter would implement the same methods over JSON-RPC; only the node differs.

Invariants: amounts are satoshis (`int`); every address that enters is validated for checksum and
network first; `broadcast` of a known transaction returns `already_known=True` and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from bitcointx.core import b2lx

from ...errors import UnsupportedAsset, ValidationError
from ..adapter import (
    MAX_SCAN_BLOCKS,
    MAX_WATCHED_ADDRESSES,
    Block,
    BroadcastResult,
    Direction,
    FeeEstimate,
    Reorg,
    ReorgTracker,
    ScanResult,
    Transfer,
    TxState,
    TxStatus,
    finality_depth_for,
)
from .address import NETWORKS, address_to_script, script_to_address, validate_address
from .simulator import BitcoinSimulator

__all__ = ["BitcoinAdapter", "Utxo", "DEFAULT_BTC_FINALITY"]

#: Confirmations after which a BTC deposit is final (the common exchange choice).
DEFAULT_BTC_FINALITY = {"BTC": 6}
#: Blocks looked back for the fee estimate.
FEE_LOOKBACK_BLOCKS = 6


@dataclass(frozen=True, slots=True)
class Utxo:
    """An unspent output, as withdrawal wallets need it to build PSBTs."""

    txid: str
    vout: int
    value_sat: int
    height: int
    coinbase: bool


class BitcoinAdapter:
    chain = "bitcoin"
    native_asset = "BTC"

    def __init__(
        self,
        node: BitcoinSimulator,
        network: str = "regtest",
        finality: Mapping[str, int] | None = None,
        max_tracked_blocks: int = 1000,
    ) -> None:
        if network not in NETWORKS:
            raise ValidationError(f"unknown network {network!r}; allowed: {', '.join(NETWORKS)}", field="network")
        self.node = node
        self.network = network
        self._finality = dict(finality or DEFAULT_BTC_FINALITY)
        self._tracker = ReorgTracker(max_tracked_blocks)
        self._fee_cache: tuple[tuple[int, str, int], FeeEstimate] | None = None

    # ---- chain shape ---------------------------------------------------------------------------

    def current_height(self) -> int:
        return self.node.height

    def block_hash(self, height: int) -> str:
        return self.node.block_at(height).block_hash

    def check_reorg(self) -> Reorg | None:
        return self._tracker.check(self.node.height, self.block_hash)

    def scan(self, since_height: int, watched: Iterable[str]) -> ScanResult:
        if not isinstance(since_height, int) or since_height < 0:
            raise ValidationError("must be a non-negative integer", field="since_height")
        scripts = self._watched_scripts(watched)
        reorg = self.check_reorg()
        start = since_height + 1
        if reorg is not None:
            start = min(start, reorg.fork_height)
        tip = self.node.height
        end = min(tip, start + MAX_SCAN_BLOCKS - 1)
        blocks = []
        for h in range(start, end + 1):
            sb = self.node.block_at(h)
            blocks.append(Block(h, sb.block_hash, sb.parent_hash, tuple(self._transfers(sb, scripts))))
            self._tracker.remember(h, sb.block_hash)
        scanned_to = end if blocks else min(start - 1, tip)
        return ScanResult(tip_height=tip, scanned_to_height=scanned_to, blocks=tuple(blocks), reorg=reorg)

    def _watched_scripts(self, watched: Iterable[str]) -> dict[bytes, str]:
        scripts: dict[bytes, str] = {}
        for n, addr in enumerate(watched):
            if n >= MAX_WATCHED_ADDRESSES:
                raise ValidationError(f"at most {MAX_WATCHED_ADDRESSES} addresses per scan", field="watched")
            canonical = validate_address(addr, self.network, field=f"watched[{n}]")
            scripts[address_to_script(canonical, self.network)] = canonical
        return scripts

    def _transfers(self, sb, scripts: dict[bytes, str]) -> list[Transfer]:
        out: list[Transfer] = []
        for txid, tx in zip(sb.txids, sb.txs):
            if not tx.is_coinbase():
                for i, txin in enumerate(tx.vin):
                    coin = self.node.coin((b2lx(txin.prevout.hash), txin.prevout.n))
                    if coin is not None and coin.script_pubkey in scripts:
                        out.append(
                            Transfer(txid, i, "BTC", scripts[coin.script_pubkey], Direction.OUT, coin.value_sat)
                        )
            for n, vout in enumerate(tx.vout):
                spk = bytes(vout.scriptPubKey)
                if spk in scripts:
                    out.append(Transfer(txid, n, "BTC", scripts[spk], Direction.IN, vout.nValue))
        return out

    # ---- balances and transactions -------------------------------------------------------------

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int:
        if asset not in (None, "BTC"):
            raise UnsupportedAsset(f"asset {asset!r} is not carried by bitcoin; only BTC", field="asset")
        return self.node.balance(address_to_script(address, self.network), height)

    def unspent(self, address: str, height: int | None = None) -> list[Utxo]:
        """Unspent outputs paying `address` as of `height` (default tip), oldest first. Coinbase
        outputs are listed even while immature; the node refuses to spend them early."""
        coins = self.node.utxos(address_to_script(address, self.network), height)
        out = [Utxo(txid, vout, c.value_sat, c.height, c.coinbase) for (txid, vout), c in coins.items()]
        return sorted(out, key=lambda u: (u.height, u.txid, u.vout))

    def tx_status(self, txid: str) -> TxStatus:
        txid = _check_txid(txid)
        if txid in self.node.mempool:
            return TxStatus(txid, TxState.PENDING)
        h = self.node.tx_height.get(txid)
        if h is None:
            return TxStatus(txid, TxState.UNKNOWN)
        return TxStatus(
            txid,
            TxState.CONFIRMED,
            confirmations=self.node.height - h + 1,
            block_height=h,
            block_hash=self.node.block_at(h).block_hash,
            succeeded=True,
        )

    def confirmations(self, txid: str) -> int:
        return self.tx_status(txid).confirmations

    def broadcast(self, raw_tx: bytes) -> BroadcastResult:
        txid, known = self.node.submit(raw_tx)
        return BroadcastResult(txid=txid, already_known=known)

    def estimate_fee(self, asset: str | None = None) -> FeeEstimate:
        """Median fee rate (sat/vB, rounded up) of the last blocks' transactions, floored at min relay."""
        if asset not in (None, "BTC"):
            raise UnsupportedAsset(f"asset {asset!r} is not carried by bitcoin; only BTC", field="asset")
        # the quote depends only on the last blocks, which the tip's hash names (each block commits to
        # its parent): computed once per tip, not once per withdrawal signed
        key = (self.node.height, self.node.blocks[-1].block_hash, self.node.min_relay_fee_sat_per_vb)
        cached = self._fee_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        quote = self._estimate_fee()
        self._fee_cache = (key, quote)
        return quote

    def _estimate_fee(self) -> FeeEstimate:
        rates = []
        for h in range(max(1, self.node.height - FEE_LOOKBACK_BLOCKS + 1), self.node.height + 1):
            for tx in self.node.blocks[h].txs[1:]:
                fee = sum(self.node.coin(_op(i)).value_sat for i in tx.vin) - sum(o.nValue for o in tx.vout)
                vsize = tx.get_virtual_size()
                rates.append(-(-fee // vsize))  # round up: a fee quote must not underpay
        rates.sort()
        median = rates[len(rates) // 2] if rates else 0
        return FeeEstimate("BTC", max(median, self.node.min_relay_fee_sat_per_vb), "vbyte")

    # ---- addresses and assets ------------------------------------------------------------------

    def validate_address(self, address: str, field: str = "address") -> str:
        return validate_address(address, self.network, field)

    def address_of_script(self, script_pubkey: bytes) -> str | None:
        return script_to_address(script_pubkey, self.network)

    def script_of_address(self, address: str, field: str = "address") -> bytes:
        return address_to_script(address, self.network, field)

    def finality_depth(self, asset: str) -> int:
        return finality_depth_for(self._finality, asset, self.chain)

    def supported_assets(self) -> Sequence[str]:
        return tuple(self._finality)


def _op(txin) -> tuple[str, int]:
    return (b2lx(txin.prevout.hash), txin.prevout.n)


def _check_txid(txid: object) -> str:
    if not isinstance(txid, str) or len(txid) != 64:
        raise ValidationError("must be a 64-character hex transaction id", field="txid")
    try:
        bytes.fromhex(txid)
    except ValueError:
        raise ValidationError("must be a 64-character hex transaction id", field="txid") from None
    return txid.lower()

