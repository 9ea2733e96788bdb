"""Multisig cold storage: P2WSH M-of-N wallets from descriptors, PSBTs signed offline by separate key
holders, and a randomly nominated quorum per transfer that anyone can re-check later.

Nomination (verifiable randomness): when a transfer is requested, the wallet commits to a *future*
block height. Once that block exists, seed = SHA256(block_hash || request_id) and each holder gets the
rank SHA256(seed || holder_fingerprint); the M lowest ranks are the quorum. Nobody can choose the
signers (the block hash is unknown when the request is made), and anyone holding the block hash can
recompute the nomination (`Nomination.verify`).

The wallet finalises a PSBT only if every input carries valid signatures from exactly the nominated
holders — a PSBT signed by any other set is refused with `QuorumNotNominated` even if it has M valid
signatures. The finished transaction is checked with python-bitcointx's script interpreter
(`VerifyScript` with witness and amount) before it is returned.

Amounts are integer satoshis. Invariant: inputs = outputs + fee, fee >= 0, checked when building.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from embit import bip32
from embit.descriptor import Descriptor
from embit.ec import PublicKey as EmbitPublicKey
from embit.ec import Signature as EmbitSignature
from embit.finalizer import finalize_psbt
from embit.networks import NETWORKS
from embit.psbt import PSBT, DerivationPath
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from ..errors import QuorumNotNominated, ValidationError

__all__ = ["Nomination", "nominate_quorum", "nominate_for_transaction", "transaction_seed", "ColdWallet", "holder_xpub_entry", "sign_psbt_offline", "MAX_HOLDERS"]

MAX_HOLDERS = 15  # P2WSH multisig standardness limit
MAX_INPUTS = 200
BIP48_PATH = "m/48h/1h/0h/2h"


@dataclass(frozen=True)
class Nomination:
    request_id: str
    block_height: int
    block_hash: str  # hex, as displayed by block explorers is irrelevant: we hash the raw 32 bytes
    holders: tuple[str, ...]  # fingerprints (hex) of all holders, as in the descriptor
    m: int
    selected: tuple[str, ...]

    def verify(self, block_hash: str) -> bool:
        """Recompute the nomination from public data: True only if it is exactly this one."""
        again = nominate_quorum(self.holders, self.m, bytes.fromhex(block_hash), self.request_id, self.block_height)
        return block_hash == self.block_hash and again.selected == self.selected

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "block_height": self.block_height, "block_hash": self.block_hash,
                "holders": list(self.holders), "m": self.m, "selected": list(self.selected)}


def nominate_quorum(holders: Sequence[str], m: int, block_hash: bytes, request_id: str, block_height: int) -> Nomination:
    if len(block_hash) != 32:
        raise ValidationError("must be 32 bytes", field="block_hash")
    if not 1 <= m <= len(holders) <= MAX_HOLDERS or len(set(holders)) != len(holders):
        raise ValidationError(f"need 1 <= m <= distinct holders <= {MAX_HOLDERS}", field="m")
    if not 1 <= len(request_id) <= 128:
        raise ValidationError("must be 1-128 characters", field="request_id")
    seed = hashlib.sha256(block_hash + request_id.encode()).digest()
    ranked = sorted(holders, key=lambda h: hashlib.sha256(seed + bytes.fromhex(h)).digest())
    return Nomination(request_id, block_height, block_hash.hex(), tuple(holders), m, tuple(sorted(ranked[:m])))


def transaction_seed(unsigned_txid: str, journal_position: int) -> bytes:
    """The nomination seed of one transaction: SHA256("ringfence-quorum-v1" || txid || position), from
    the unsigned transaction's id and the journal position at which it was recorded. Both are in the
    journal, so an auditor recomputes the quorum offline; the engine reads no randomness."""
    try:
        txid = bytes.fromhex(unsigned_txid)
    except ValueError:
        raise ValidationError("must be 64 hex characters", field="txid") from None
    if len(txid) != 32:
        raise ValidationError("must be 64 hex characters", field="txid")
    if not isinstance(journal_position, int) or journal_position < 0:
        raise ValidationError("must be a journal position >= 0", field="journal_position")
    return hashlib.sha256(b"ringfence-quorum-v1" + txid + journal_position.to_bytes(8, "big")).digest()


def nominate_for_transaction(holders: Sequence[str], m: int, unsigned_txid: str, journal_position: int) -> Nomination:
    """The quorum of one cold transaction (the M holders ranked lowest under `transaction_seed`).
    Checked like any nomination: `nomination.verify(transaction_seed(txid, position).hex())`.
    Unlike a future block hash, a transaction id can be ground by whoever builds the transaction
    (change amount, input choice); the builder is the server, which holds none of the keys."""
    seed = transaction_seed(unsigned_txid, journal_position)
    return nominate_quorum(holders, m, seed, f"tx:{unsigned_txid}", journal_position)


def holder_xpub_entry(root: bip32.HDKey, network: str = "regtest") -> str:
    """`[fingerprint/48h/1h/0h/2h]tpub.../0/*` — what a key holder hands over for the descriptor."""
    net = NETWORKS[network]
    xpub = root.derive(BIP48_PATH).to_public().to_string(version=net["xpub"])
    return f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{xpub}/0/*"


def sign_psbt_offline(psbt_b64: str, root: bip32.HDKey) -> str:
    """What an offline key holder runs: add this holder's signatures to a PSBT and hand it back."""
    psbt = PSBT.from_string(psbt_b64)
    if psbt.sign_with(root) == 0:
        raise ValidationError("this key holder has no key in the PSBT's inputs", field="psbt")
    return psbt.to_string()


class ColdWallet:
    def __init__(self, descriptor: str, network: str = "regtest") -> None:
        self.descriptor = Descriptor.from_string(descriptor)
        if not (self.descriptor.is_basic_multisig and self.descriptor.is_segwit and not self.descriptor.is_wrapped):
            raise ValidationError("must be a wsh(multi/sortedmulti(...)) descriptor", field="descriptor")
        self.network = network
        self.m = int(self.descriptor.miniscript.args[0].num)
        self.holders = tuple(k.origin.fingerprint.hex() for k in self.descriptor.keys)
        if len(self.holders) > MAX_HOLDERS or len(set(self.holders)) != len(self.holders):
            raise ValidationError("holders must be distinct and at most 15", field="descriptor")

    def script_pubkey(self, index: int) -> bytes:
        return self.descriptor.derive(index).script_pubkey().data

    def address(self, index: int) -> str:
        return self.descriptor.derive(index).script_pubkey().address(NETWORKS[self.network])

    def create_psbt(self, utxos: Sequence[Mapping[str, Any]], outputs: Sequence[tuple[bytes, int]], fee_sat: int) -> str:
        """utxos: [{txid (hex, display order), vout, amount_sat, index}], outputs: [(script_pubkey, amount_sat)]."""
        if not 1 <= len(utxos) <= MAX_INPUTS or not outputs:
            raise ValidationError(f"need 1..{MAX_INPUTS} utxos and at least one output", field="utxos")
        total_in = sum(int(u["amount_sat"]) for u in utxos)
        total_out = sum(a for _, a in outputs)
        if fee_sat < 0 or any(a <= 0 for _, a in outputs) or total_in != total_out + fee_sat:
            raise ValidationError("inputs must equal outputs + fee, amounts positive, fee >= 0", field="fee_sat")
        vin = [TransactionInput(bytes.fromhex(u["txid"]), int(u["vout"]), sequence=0xFFFFFFFD) for u in utxos]
        vout = [TransactionOutput(a, Script(spk)) for spk, a in outputs]
        psbt = PSBT(Transaction(vin=vin, vout=vout))
        for inp, u in zip(psbt.inputs, utxos):
            d = self.descriptor.derive(int(u["index"]))
            inp.witness_utxo = TransactionOutput(int(u["amount_sat"]), d.script_pubkey())
            inp.witness_script = d.witness_script()
            for k in d.keys:
                inp.bip32_derivations[k.get_public_key()] = DerivationPath(
                    k.origin.fingerprint, list(k.origin.derivation))
        return psbt.to_string()

    def signers_of(self, psbt: PSBT) -> list[set[str]]:
        """Per input: the holder fingerprints whose signatures are present *and valid*."""
        out = []
        for i, inp in enumerate(psbt.inputs):
            sc = Script(inp.witness_script.data)
            h = psbt.tx.sighash_segwit(i, sc, inp.witness_utxo.value)
            fps = set()
            for pub, sig in inp.partial_sigs.items():
                der = inp.bip32_derivations.get(pub)
                if der is None or sig[-1] != 1:
                    raise ValidationError("signature from a key outside the wallet, or not SIGHASH_ALL", field="psbt")
                if not EmbitPublicKey.parse(pub.sec()).verify(EmbitSignature.parse(sig[:-1]), h):
                    raise ValidationError(f"invalid signature on input {i}", field="psbt")
                fps.add(der.fingerprint.hex())
            out.append(fps)
        return out

    def finalize(self, psbt_b64: str, nomination: Nomination, block_hash: str) -> bytes:
        """Refuse unless the nomination re-checks and every input is signed by exactly the nominated quorum."""
        if not nomination.verify(block_hash):
            raise QuorumNotNominated("the nomination does not match the block hash", field="nomination")
        if nomination.holders != self.holders or nomination.m != self.m:
            raise QuorumNotNominated("the nomination is for another wallet", field="nomination")
        psbt = PSBT.from_string(psbt_b64)
        for i, signers in enumerate(self.signers_of(psbt)):
            if signers != set(nomination.selected):
                raise QuorumNotNominated(f"input {i} is signed by holders other than the nominated quorum",
                                         field="psbt", signed_by=sorted(signers), nominated=list(nomination.selected))
        tx = finalize_psbt(psbt)
        if tx is None:
            raise ValidationError("PSBT could not be finalised", field="psbt")
        raw = tx.serialize()
        _verify_with_interpreter(raw, psbt)
        return raw


def _verify_with_interpreter(raw: bytes, psbt: PSBT) -> None:
    from bitcointx.core import CTransaction
    from bitcointx.core.script import CScript
    from bitcointx.core.scripteval import SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS, VerifyScript

    tx = CTransaction.deserialize(raw)
    for i, inp in enumerate(psbt.inputs):
        VerifyScript(tx.vin[i].scriptSig, CScript(inp.witness_utxo.script_pubkey.data), tx, i,
                     flags={SCRIPT_VERIFY_P2SH, SCRIPT_VERIFY_WITNESS}, amount=inp.witness_utxo.value,
                     witness=tx.wit.vtxinwit[i].scriptWitness)
