"""A small regtest-like Bitcoin UTXO chain, in process and deterministic, that validates real txs.

There is no bitcoind on this machine, so custody code is exercised against this simulator. It takes
real serialised transactions and checks what a node's consensus + mempool would:

* the transaction parses, is not a coinbase, has inputs and outputs, no input twice, output values
  in 0..21e6 BTC;
* every input exists and is unspent (in the chain, or as an output of a mempool transaction), and no
  other mempool transaction already spends it (double spend);
* coinbase outputs are spent only after `coinbase_maturity` blocks;
* sum(outputs) <= sum(inputs) (overspend), and the fee rate is at least `min_relay_fee_sat_per_vb`;
* every input script verifies: legacy/P2SH/P2WPKH/P2WSH through python-bitcointx's interpreter
  (`VerifyScript(..., amount=, witness=)`), and P2TR key-path spends by BIP-341 sighash
  (bitcointx `SignatureHashSchnorr`) + BIP-340 verification (coincurve). python-bitcointx 1.1.5
  treats witness v1 as anyone-can-spend, so the simulator never hands v1 to it. Taproot script-path
  spends and annexes are refused (not needed by ringfence's wallets).

It mines blocks on demand with a coinbase paying subsidy + fees to a given script, and reorganises
on command: blocks from height h are disconnected, their transactions return to the mempool (or
vanish when they no longer validate, e.g. a replacement double-spent them), and a new, longer branch
is mined. Block hashes are a deterministic hash of (parent, txids, height, branch tag): no
proof of work.

Invariants (property-tested): the value of all unspent outputs equals the sum of the subsidies of
the active chain (fees move from spenders to the miner, nothing else creates or destroys a satoshi);
no output is spent twice in the active chain; the mempool never holds two spends of one output.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass, field

import coincurve
from bitcointx.core import (
    COutPoint,
    CMutableTransaction,
    CTransaction,
    CTxIn,
    CTxOut,
    b2lx,
)
from bitcointx.core.script import CScript, CScriptWitness, SIGHASH_Type, SignatureHashSchnorr
from bitcointx.core.scripteval import (
    SCRIPT_VERIFY_CLEANSTACK,
    SCRIPT_VERIFY_DERSIG,
    SCRIPT_VERIFY_LOW_S,
    SCRIPT_VERIFY_NULLDUMMY,
    SCRIPT_VERIFY_NULLFAIL,
    SCRIPT_VERIFY_P2SH,
    SCRIPT_VERIFY_STRICTENC,
    SCRIPT_VERIFY_WITNESS,
    SCRIPT_VERIFY_WITNESS_PUBKEYTYPE,
    VerifyScript,
)

from ...errors import InvariantViolation, NotFound, SnapshotInvalid, TransactionRejected, ValidationError

__all__ = ["BitcoinSimulator", "SimBlock", "Coin", "COIN", "MAX_MONEY_SAT"]

COIN = 100_000_000
MAX_MONEY_SAT = 21_000_000 * COIN
MAX_TX_BYTES = 400_000
MAX_BLOCK_TXS = 2_000
MAX_MEMPOOL_TXS = 10_000
MAX_MINE_PER_CALL = 1_000
MAX_REORG_DEPTH = 100

_FLAGS = {
    SCRIPT_VERIFY_P2SH,
    SCRIPT_VERIFY_WITNESS,
    SCRIPT_VERIFY_STRICTENC,
    SCRIPT_VERIFY_DERSIG,
    SCRIPT_VERIFY_LOW_S,
    SCRIPT_VERIFY_NULLDUMMY,
    SCRIPT_VERIFY_NULLFAIL,
    SCRIPT_VERIFY_CLEANSTACK,
    SCRIPT_VERIFY_WITNESS_PUBKEYTYPE,
}
_TAPROOT_HASHTYPES = {0x01, 0x02, 0x03, 0x81, 0x82, 0x83}

Outpoint = tuple[str, int]  # (txid hex as displayed, output index)


@dataclass(slots=True)
class Coin:
    """One transaction output created on the active chain (spent or not)."""

    value_sat: int
    script_pubkey: bytes
    height: int
    coinbase: bool
    spent_by: str | None = None
    spent_height: int | None = None


@dataclass(frozen=True, slots=True)
class SimBlock:
    height: int
    block_hash: str
    parent_hash: str
    txs: tuple[CTransaction, ...]
    subsidy_sat: int
    fees_sat: int
    branch: int = 0
    #: the txids of `txs`, computed once when the block is connected (python-bitcointx serialises and
    #: hashes the whole transaction again on every GetTxid(): scanning blocks for deposits did that
    #: for every transaction of every block, and again for every look-up)
    ids: tuple[str, ...] = ()

    @property
    def txids(self) -> tuple[str, ...]:
        if len(self.ids) == len(self.txs):
            return self.ids
        return tuple(b2lx(tx.GetTxid()) for tx in self.txs)


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _reject(reason: str, message: str, **details) -> TransactionRejected:
    return TransactionRejected(message, field="raw_tx", reason=reason, **details)


@dataclass(slots=True)
class _Checked:
    tx: CTransaction
    txid: str
    fee_sat: int
    vsize: int
    spent: list[tuple[Outpoint, int, bytes]] = field(default_factory=list)  # (outpoint, value, spk)


class BitcoinSimulator:
    """The simulated node: mempool, active chain, UTXO set by height. Single-threaded."""

    def __init__(
        self,
        *,
        coinbase_maturity: int = 100,
        halving_interval: int = 150,
        min_relay_fee_sat_per_vb: int = 1,
    ) -> None:
        if coinbase_maturity < 0:
            raise ValidationError("must be >= 0", field="coinbase_maturity")
        self.coinbase_maturity = coinbase_maturity
        self.halving_interval = halving_interval
        self.min_relay_fee_sat_per_vb = min_relay_fee_sat_per_vb
        self.blocks: list[SimBlock] = []
        self.coins: dict[Outpoint, Coin] = {}
        self._by_script: dict[bytes, set[Outpoint]] = {}
        self.tx_height: dict[str, int] = {}
        self.mempool: OrderedDict[str, _Checked] = OrderedDict()
        self._mempool_spends: dict[Outpoint, str] = {}
        self._branch = 0
        genesis_hash = _sha256d(b"ringfence regtest genesis").hex()
        self.blocks.append(SimBlock(0, genesis_hash, "00" * 32, (), 0, 0))

    # ---- queries -------------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return len(self.blocks) - 1

    def block_at(self, height: int) -> SimBlock:
        if not isinstance(height, int) or not 0 <= height <= self.height:
            raise NotFound(f"no block at height {height}; tip is {self.height}", field="height")
        return self.blocks[height]

    def subsidy(self, height: int) -> int:
        halvings = height // self.halving_interval
        return 0 if halvings >= 64 else (50 * COIN) >> halvings

    def utxos(self, script_pubkey: bytes, height: int | None = None) -> dict[Outpoint, Coin]:
        """Unspent outputs paying `script_pubkey` as of `height` (default: tip)."""
        h = self.height if height is None else height
        if not 0 <= h <= self.height:
            raise NotFound(f"no block at height {h}; tip is {self.height}", field="height")
        out = {}
        for op in self._by_script.get(bytes(script_pubkey), ()):
            c = self.coins[op]
            if c.height <= h and (c.spent_height is None or c.spent_height > h):
                out[op] = c
        return out

    def balance(self, script_pubkey: bytes, height: int | None = None) -> int:
        return sum(c.value_sat for c in self.utxos(script_pubkey, height).values())

    def utxo_value_total(self) -> int:
        return sum(c.value_sat for c in self.coins.values() if c.spent_height is None)

    def coin(self, outpoint: Outpoint) -> Coin | None:
        return self.coins.get(outpoint)

    def get_tx(self, txid: str) -> CTransaction | None:
        if txid in self.mempool:
            return self.mempool[txid].tx
        h = self.tx_height.get(txid)
        if h is None:
            return None
        block = self.blocks[h]
        # python-bitcointx recomputes a txid on every GetTxid(): index a block's transactions once
        # (keyed by block hash, so a block replaced by a reorg is indexed again)
        cache: dict[str, tuple[str, CTransaction]] = self.__dict__.setdefault("_tx_index", {})
        hit = cache.get(txid)
        if hit is not None and hit[0] == block.block_hash:
            return hit[1]
        for known, tx in zip(block.txids, block.txs):
            cache[known] = (block.block_hash, tx)
        hit = cache.get(txid)
        if hit is not None and hit[0] == block.block_hash:
            return hit[1]
        raise InvariantViolation(f"tx index points at block {h} which lacks {txid}")

    # ---- mempool -------------------------------------------------------------------------------

    def submit(self, raw_tx: bytes) -> tuple[str, bool]:
        """Accept a signed transaction into the mempool. Returns (txid, already_known)."""
        if not isinstance(raw_tx, (bytes, bytearray)):
            raise ValidationError("must be the raw transaction bytes", field="raw_tx")
        if len(raw_tx) > MAX_TX_BYTES:
            raise _reject("too_large", f"transaction is larger than {MAX_TX_BYTES} bytes")
        try:
            tx = CTransaction.deserialize(bytes(raw_tx))
        except Exception as exc:  # bitcointx raises several types for junk bytes
            raise _reject("malformed", f"transaction does not parse: {exc}") from None
        txid = b2lx(tx.GetTxid())
        if txid in self.mempool or txid in self.tx_height:
            return txid, True
        if len(self.mempool) >= MAX_MEMPOOL_TXS:
            raise _reject("mempool_full", f"mempool holds {MAX_MEMPOOL_TXS} transactions; mine first")
        checked = self._check(tx, txid, spend_height=self.height + 1)
        self._add_to_mempool(checked)
        return txid, False

    def _add_to_mempool(self, checked: _Checked) -> None:
        for op, _, _ in checked.spent:
            assert op not in self._mempool_spends, "mempool double spend slipped through validation"
            self._mempool_spends[op] = checked.txid
        self.mempool[checked.txid] = checked

    def _lookup_input(self, op: Outpoint, txid: str, spend_height: int) -> tuple[int, bytes]:
        coin = self.coins.get(op)
        if coin is not None:
            if coin.spent_height is not None:
                raise _reject(
                    "double_spend",
                    f"input {op[0]}:{op[1]} was already spent by {coin.spent_by} in block {coin.spent_height}",
                    outpoint=f"{op[0]}:{op[1]}",
                )
            if coin.coinbase and spend_height - coin.height < self.coinbase_maturity:
                raise _reject(
                    "immature_coinbase",
                    f"input {op[0]}:{op[1]} is a coinbase output that matures after "
                    f"{self.coinbase_maturity} blocks (created at {coin.height})",
                )
            value, spk = coin.value_sat, coin.script_pubkey
        elif op[0] in self.mempool:
            parent = self.mempool[op[0]].tx
            if op[1] >= len(parent.vout):
                raise _reject("missing_inputs", f"input {op[0]}:{op[1]} does not exist")
            value, spk = parent.vout[op[1]].nValue, bytes(parent.vout[op[1]].scriptPubKey)
        else:
            raise _reject("missing_inputs", f"input {op[0]}:{op[1]} does not exist or is not known yet")
        other = self._mempool_spends.get(op)
        if other is not None and other != txid:
            raise _reject(
                "double_spend",
                f"input {op[0]}:{op[1]} is already spent by mempool transaction {other}",
                outpoint=f"{op[0]}:{op[1]}",
                conflicting_txid=other,
            )
        return value, spk

    def _check(self, tx: CTransaction, txid: str, spend_height: int) -> _Checked:
        if tx.is_coinbase():
            raise _reject("coinbase", "a coinbase transaction cannot be broadcast")
        if not tx.vin or not tx.vout:
            raise _reject("empty", "a transaction needs at least one input and one output")
        total_out = 0
        for n, out in enumerate(tx.vout):
            if not 0 <= out.nValue <= MAX_MONEY_SAT:
                raise _reject("bad_value", f"output {n} value {out.nValue} is outside 0..{MAX_MONEY_SAT}")
            total_out += out.nValue
        if total_out > MAX_MONEY_SAT:
            raise _reject("bad_value", "outputs add up to more than 21 million BTC")
        checked = _Checked(tx=tx, txid=txid, fee_sat=0, vsize=tx.get_virtual_size())
        seen: set[Outpoint] = set()
        total_in = 0
        for txin in tx.vin:
            op = (b2lx(txin.prevout.hash), txin.prevout.n)
            if op in seen:
                raise _reject("duplicate_input", f"input {op[0]}:{op[1]} appears twice")
            seen.add(op)
            value, spk = self._lookup_input(op, txid, spend_height)
            checked.spent.append((op, value, spk))
            total_in += value
        if total_out > total_in:
            raise _reject(
                "overspend",
                f"outputs ({total_out} sat) exceed inputs ({total_in} sat)",
                inputs_sat=total_in,
                outputs_sat=total_out,
            )
        checked.fee_sat = total_in - total_out
        if checked.fee_sat < self.min_relay_fee_sat_per_vb * checked.vsize:
            raise _reject(
                "fee_too_low",
                f"fee {checked.fee_sat} sat is below {self.min_relay_fee_sat_per_vb} sat/vB "
                f"for {checked.vsize} vB",
            )
        spent_outputs = [CTxOut(v, CScript(s)) for _, v, s in checked.spent]
        for i, (_, value, spk) in enumerate(checked.spent):
            self._verify_input(tx, i, value, spk, spent_outputs)
        return checked

    def _verify_input(self, tx: CTransaction, i: int, value: int, spk: bytes, spent_outputs) -> None:
        witness = tx.wit.vtxinwit[i].scriptWitness if i < len(tx.wit.vtxinwit) else CScriptWitness()
        if len(spk) == 34 and spk[0] == 0x51 and spk[1] == 0x20:
            self._verify_taproot_keypath(tx, i, spk[2:], witness, spent_outputs)
            return
        try:
            VerifyScript(tx.vin[i].scriptSig, CScript(spk), tx, i, flags=_FLAGS, amount=value, witness=witness)
        except Exception as exc:  # VerifyScriptError and friends: all mean "does not verify"
            raise _reject("bad_signature", f"input {i} script does not verify: {exc}", input=i) from None

    def _verify_taproot_keypath(self, tx, i: int, output_key: bytes, witness, spent_outputs) -> None:
        if tx.vin[i].scriptSig:
            raise _reject("bad_signature", f"input {i} spends taproot but has a scriptSig", input=i)
        stack = list(witness.stack)
        if len(stack) >= 2 and stack[-1][:1] == b"\x50":
            raise _reject("unsupported", f"input {i}: taproot annex is not supported by the simulator")
        if len(stack) != 1:
            raise _reject(
                "unsupported", f"input {i}: only taproot key-path spends are supported by the simulator"
            )
        sig = bytes(stack[0])
        if len(sig) == 64:
            hashtype = None
        elif len(sig) == 65 and sig[64] in _TAPROOT_HASHTYPES:
            hashtype = SIGHASH_Type(sig[64])
            sig = sig[:64]
        else:
            raise _reject("bad_signature", f"input {i}: taproot signature has a bad length or hash type")
        try:
            msg = SignatureHashSchnorr(tx, i, spent_outputs, hashtype=hashtype)
            ok = coincurve.PublicKeyXOnly(output_key).verify(sig, msg)
        except Exception as exc:
            raise _reject("bad_signature", f"input {i}: taproot signature check failed: {exc}") from None
        if not ok:
            raise _reject("bad_signature", f"input {i}: taproot (BIP-340) signature does not verify", input=i)

    # ---- mining --------------------------------------------------------------------------------

    def mine_to_address(self, count: int, address: str, network: str = "regtest") -> list[str]:
        """Mine `count` blocks whose coinbase pays `address` (validated for `network`)."""
        from .address import address_to_script

        return self.mine(count, address_to_script(address, network, field="address"))

    def mine(self, count: int, script_pubkey: bytes, *, include_mempool: bool = True) -> list[str]:
        """Mine `count` blocks paying the coinbase to `script_pubkey`; returns their hashes."""
        if not isinstance(count, int) or not 1 <= count <= MAX_MINE_PER_CALL:
            raise ValidationError(f"must be an integer 1..{MAX_MINE_PER_CALL}", field="count")
        hashes = []
        for _ in range(count):
            picked = list(self.mempool.values())[:MAX_BLOCK_TXS] if include_mempool else []
            hashes.append(self._connect(picked, bytes(script_pubkey)))
        return hashes

    def _connect(self, picked: list[_Checked], coinbase_spk: bytes) -> str:
        height = self.height + 1
        parent = self.blocks[-1]
        fees = sum(c.fee_sat for c in picked)
        subsidy = self.subsidy(height)
        cb = CMutableTransaction(
            [CTxIn(COutPoint(), CScript([height, self._branch.to_bytes(4, "little")]))],
            [CTxOut(subsidy + fees, CScript(coinbase_spk))],
        )
        txs = [CTransaction.from_instance(cb)] + [c.tx for c in picked]
        ids = (b2lx(txs[0].GetTxid()), *(c.txid for c in picked))
        header = bytes.fromhex(parent.block_hash) + height.to_bytes(8, "little")
        header += self._branch.to_bytes(4, "little")
        header += _sha256d(b"".join(bytes.fromhex(t)[::-1] for t in ids))
        block = SimBlock(height, _sha256d(header).hex(), parent.block_hash, tuple(txs), subsidy, fees, self._branch, ids)
        self.blocks.append(block)
        for tx, txid in zip(txs, ids):
            self._apply_tx(tx, height, txid)
        for c in picked:
            del self.mempool[c.txid]
            for op, _, _ in c.spent:
                self._mempool_spends.pop(op, None)
        return block.block_hash

    def _apply_tx(self, tx: CTransaction, height: int, txid: str | None = None) -> None:
        txid = txid or b2lx(tx.GetTxid())
        if not tx.is_coinbase():
            for txin in tx.vin:
                op = (b2lx(txin.prevout.hash), txin.prevout.n)
                coin = self.coins[op]
                if coin.spent_height is not None:
                    raise InvariantViolation(f"{op} spent twice in the active chain")
                coin.spent_by, coin.spent_height = txid, height
        for n, out in enumerate(tx.vout):
            op = (txid, n)
            spk = bytes(out.scriptPubKey)
            self.coins[op] = Coin(out.nValue, spk, height, tx.is_coinbase())
            self._by_script.setdefault(spk, set()).add(op)
        self.tx_height[txid] = height

    def _undo_tx(self, tx: CTransaction) -> None:
        txid = b2lx(tx.GetTxid())
        for n, _out in enumerate(tx.vout):
            op = (txid, n)
            coin = self.coins.pop(op)
            if coin.spent_height is not None:
                raise InvariantViolation(f"undoing {txid} whose output {n} is still spent")
            self._by_script[coin.script_pubkey].discard(op)
        if not tx.is_coinbase():
            for txin in tx.vin:
                coin = self.coins[(b2lx(txin.prevout.hash), txin.prevout.n)]
                coin.spent_by = coin.spent_height = None
        del self.tx_height[txid]

    # ---- reorganisation ------------------------------------------------------------------------

    def reorganize(
        self,
        fork_height: int,
        new_block_count: int,
        coinbase_script_pubkey: bytes,
        *,
        replacement_txs: tuple[bytes, ...] = (),
        include_mempool: bool = True,
    ) -> list[str]:
        """Replace blocks from `fork_height` to the tip by `new_block_count` new blocks.

        Disconnected transactions go back to the mempool; `replacement_txs` (e.g. a double spend of
        a deposit) are accepted first, so any returned transaction they conflict with vanishes. With
        `include_mempool=False` the new blocks are empty and returned transactions stay pending.
        `new_block_count` must make the new branch longer than the old one (more work wins).
        """
        if not isinstance(fork_height, int) or not 1 <= fork_height <= self.height:
            raise ValidationError(f"must be 1..{self.height} (genesis stays)", field="fork_height")
        depth = self.height - fork_height + 1
        if depth > MAX_REORG_DEPTH:
            raise ValidationError(f"reorg depth {depth} exceeds {MAX_REORG_DEPTH}", field="fork_height")
        if new_block_count <= depth - 1 or new_block_count > MAX_MINE_PER_CALL:
            raise ValidationError(
                f"the new branch must be longer than the old one: need {depth}..{MAX_MINE_PER_CALL} blocks",
                field="new_block_count",
            )
        returned: list[CTransaction] = []
        while self.height >= fork_height:
            block = self.blocks.pop()
            for tx in reversed(block.txs):
                self._undo_tx(tx)
            returned[:0] = [tx for tx in block.txs if not tx.is_coinbase()]
        old_pool = [c.tx for c in self.mempool.values()]
        self.mempool.clear()
        self._mempool_spends.clear()
        self._branch += 1
        replacement_error: TransactionRejected | None = None
        for raw in replacement_txs:
            try:
                self.submit(raw)
            except TransactionRejected as exc:  # finish the reorg, then report
                replacement_error = replacement_error or exc
        for tx in returned + old_pool:
            txid = b2lx(tx.GetTxid())
            if txid in self.mempool:
                continue
            try:
                self._add_to_mempool(self._check(tx, txid, spend_height=self.height + 1))
            except TransactionRejected:
                pass  # conflicts with the new branch: it vanishes, as in a real node
        hashes = self.mine(new_block_count, coinbase_script_pubkey, include_mempool=include_mempool)
        if replacement_error is not None:
            raise replacement_error
        return hashes

    # ---- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the chain and mempool as JSON (atomically: temp file, fsync, rename)."""
        doc = {
            "format": "ringfence-btc-sim/1",
            "params": {
                "coinbase_maturity": self.coinbase_maturity,
                "halving_interval": self.halving_interval,
                "min_relay_fee_sat_per_vb": self.min_relay_fee_sat_per_vb,
            },
            "branch": self._branch,
            "blocks": [
                {
                    "hash": b.block_hash,
                    "branch": b.branch,
                    "coinbase_script": bytes(b.txs[0].vout[0].scriptPubKey).hex(),
                    "txs": [tx.serialize().hex() for tx in b.txs[1:]],
                }
                for b in self.blocks[1:]
            ],
            "mempool": [c.tx.serialize().hex() for c in self.mempool.values()],
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BitcoinSimulator":
        """Rebuild a simulator from `save` output, re-validating every transaction and block hash."""
        try:
            doc = json.loads(Path(path).read_text())
            if doc.get("format") != "ringfence-btc-sim/1":
                raise ValueError(f"unknown format {doc.get('format')!r}")
            sim = cls(**doc["params"])
            for n, blk in enumerate(doc["blocks"], start=1):
                sim._branch = int(blk["branch"])
                for raw in blk["txs"]:
                    sim.submit(bytes.fromhex(raw))
                got = sim._connect(list(sim.mempool.values()), bytes.fromhex(blk["coinbase_script"]))
                if got != blk["hash"]:
                    raise ValueError(f"block {n} hash {got} != saved {blk['hash']}")
            sim._branch = int(doc["branch"])
            for raw in doc["mempool"]:
                sim.submit(bytes.fromhex(raw))
        except (OSError, ValueError, KeyError, TypeError, TransactionRejected) as exc:
            raise SnapshotInvalid(f"simulator state file does not load: {exc}", field="path") from None
        sim.check_invariants()
        return sim

    # ---- invariants ----------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Assert conservation and no double spend; raise InvariantViolation on failure."""
        subsidies = sum(b.subsidy_sat for b in self.blocks)
        if self.utxo_value_total() != subsidies:
            raise InvariantViolation(
                f"UTXO value {self.utxo_value_total()} != sum of subsidies {subsidies}"
            )
        spenders: dict[Outpoint, str] = {}
        for block in self.blocks:
            for tx in block.txs:
                if tx.is_coinbase():
                    continue
                for txin in tx.vin:
                    op = (b2lx(txin.prevout.hash), txin.prevout.n)
                    if op in spenders:
                        raise InvariantViolation(f"{op} spent twice in the active chain")
                    spenders[op] = b2lx(tx.GetTxid())
        for op, coin in self.coins.items():
            if (coin.spent_by is None) != (op not in spenders):
                raise InvariantViolation(f"coin {op} spent flag disagrees with the chain")
        seen: set[Outpoint] = set()
        for c in self.mempool.values():
            for op, _, _ in c.spent:
                if op in seen:
                    raise InvariantViolation(f"mempool spends {op} twice")
                seen.add(op)

