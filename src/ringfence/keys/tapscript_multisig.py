"""Taproot script-path M-of-N cold storage: `tr(NUMS, sortedmulti_a(M, ...))`.

The internal key is the BIP-341 "nothing up my sleeve" point H (no one knows its discrete log), so
the output can only be spent through the single `sortedmulti_a` leaf: M BIP-340 signatures from the
holders. PSBTs are signed offline by each holder with embit; the wallet finalises only with exactly
the randomly nominated quorum (same `Nomination` as P2WSH), and checks the finished spend with
`verify_tapscript_multisig_spend`: control block commits to the output key (BIP-341), the leaf is a
well-formed multi_a script, and at least M signatures verify over the BIP-341 script-path sighash
(python-bitcointx computes the sighash; libsecp256k1 verifies). python-bitcointx 1.1.5 has no
tapscript interpreter, so this explicit check stands in for one.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import coincurve
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.psbt import PSBT, DerivationPath
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from ..errors import QuorumNotNominated, ValidationError
from .frost import tagged_hash
from .groups import SECP256K1
from .multisig import MAX_HOLDERS, MAX_INPUTS, Nomination

__all__ = ["TaprootColdWallet", "verify_tapscript_multisig_spend", "NUMS_XONLY"]

NUMS_XONLY = bytes.fromhex("50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0")
LEAF_VERSION = 0xC0
OP_CHECKSIG, OP_CHECKSIGADD, OP_NUMEQUAL = 0xAC, 0xBA, 0x9C


def _lift_x(x: bytes) -> Any:
    return SECP256K1.deserialize_element(b"\x02" + x)


def _output_key(internal: bytes, merkle_root: bytes) -> tuple[bytes, int]:
    t = int.from_bytes(tagged_hash("TapTweak", internal + merkle_root), "big")
    q = SECP256K1.add(_lift_x(internal), SECP256K1.base_mul(t))
    return q[0].to_bytes(32, "big"), q[1] & 1


def _parse_multi_a(script: bytes) -> tuple[int, list[bytes]]:
    """<k1> CHECKSIG <k2> CHECKSIGADD ... <m> NUMEQUAL  ->  (m, [k1, k2, ...])."""
    keys, pos = [], 0
    while pos < len(script) and script[pos] == 0x20:
        keys.append(script[pos + 1: pos + 33])
        op = script[pos + 33] if pos + 33 < len(script) else -1
        if op != (OP_CHECKSIG if not keys[:-1] else OP_CHECKSIGADD):
            raise ValidationError("leaf is not a multi_a script", field="witness")
        pos += 34
    rest = script[pos:]
    if not keys or len(rest) != 2 or rest[1] != OP_NUMEQUAL or not 0x51 <= rest[0] <= 0x60:
        raise ValidationError("leaf is not a multi_a script", field="witness")
    m = rest[0] - 0x50
    if not 1 <= m <= len(keys) <= MAX_HOLDERS:
        raise ValidationError("multi_a threshold out of range", field="witness")
    return m, keys


def _leaf_hash(script: bytes) -> bytes:
    return tagged_hash("TapLeaf", bytes([LEAF_VERSION]) + Script(script).serialize())


def _sighash(tx_raw: bytes, i: int, spent: Sequence[tuple[int, bytes]], leaf_hash: bytes, hashtype: int | None) -> bytes:
    from bitcointx.core import CTransaction, CTxOut
    from bitcointx.core.script import SIGVERSION_TAPSCRIPT, CScript, SIGHASH_Type, SignatureHashSchnorr

    tx = CTransaction.deserialize(tx_raw)
    outs = [CTxOut(v, CScript(spk)) for v, spk in spent]
    ht = None if hashtype is None else SIGHASH_Type(hashtype)
    return bytes(SignatureHashSchnorr(tx, i, outs, hashtype=ht, sigversion=SIGVERSION_TAPSCRIPT, tapleaf_hash=leaf_hash))


def verify_tapscript_multisig_spend(tx_raw: bytes, i: int, spent: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """Check input `i` spends its P2TR output via a multi_a leaf; return the keys whose signatures verified."""
    from bitcointx.core import CTransaction

    tx = CTransaction.deserialize(tx_raw)
    spk = spent[i][1]
    if len(spk) != 34 or spk[:2] != b"\x51\x20":
        raise ValidationError("spent output is not P2TR", field="spent")
    stack = [bytes(x) for x in tx.wit.vtxinwit[i].scriptWitness.stack]
    if len(stack) < 3:
        raise ValidationError("not a script-path spend", field="witness")
    control, script, sigs = stack[-1], stack[-2], stack[:-2]
    if len(control) != 33 or control[0] & 0xFE != LEAF_VERSION:
        raise ValidationError("control block must be 33 bytes (single leaf) with leaf version 0xc0", field="witness")
    leaf = _leaf_hash(script)
    qx, parity = _output_key(control[1:33], leaf)
    if qx != spk[2:] or parity != control[0] & 1:
        raise ValidationError("control block does not commit to the output key", field="witness")
    m, keys = _parse_multi_a(script)
    if len(sigs) != len(keys):
        raise ValidationError("need one (possibly empty) signature per key", field="witness")
    ok = []
    for key, sig in zip(keys, reversed(sigs)):  # first key is checked against the top of the stack
        if not sig:
            continue
        if len(sig) not in (64, 65):
            raise ValidationError("bad signature length", field="witness")
        digest = _sighash(tx_raw, i, spent, leaf, sig[64] if len(sig) == 65 else None)
        if not coincurve.PublicKeyXOnly(key).verify(sig[:64], digest):
            raise ValidationError("a signature in the witness does not verify", field="witness")
        ok.append(key)
    if len(ok) < m:
        raise ValidationError(f"only {len(ok)} of the required {m} signatures", field="witness")
    return ok


class TaprootColdWallet:
    def __init__(self, holder_keys: Sequence[str], m: int, network: str = "regtest") -> None:
        """holder_keys: `[fp/86h/1h/0h]tpub.../0/*` entries, one per holder."""
        if not 1 <= m <= len(holder_keys) <= MAX_HOLDERS:
            raise ValidationError(f"need 1 <= m <= holders <= {MAX_HOLDERS}", field="m")
        self.descriptor = Descriptor.from_string(f"tr({NUMS_XONLY.hex()},sortedmulti_a({m},{','.join(holder_keys)}))")
        self.m = m
        self.network = network
        self.holders = tuple(k.origin.fingerprint.hex() for k in self.descriptor.keys if k.origin is not None)
        if len(set(self.holders)) != len(holder_keys):
            raise ValidationError("holders must be distinct", field="holder_keys")

    def _leaf(self, index: int) -> tuple[bytes, list[Any]]:
        d = self.descriptor.derive(index)
        leaf = d.taptree.tree
        return leaf.miniscript.compile(), list(leaf.keys)

    def script_pubkey(self, index: int) -> bytes:
        return self.descriptor.derive(index).script_pubkey().data

    def address(self, index: int) -> str:
        return self.descriptor.derive(index).script_pubkey().address(NETWORKS[self.network])

    def create_psbt(self, utxos: Sequence[Mapping[str, Any]], outputs: Sequence[tuple[bytes, int]], fee_sat: int) -> str:
        if not 1 <= len(utxos) <= MAX_INPUTS or not outputs:
            raise ValidationError(f"need 1..{MAX_INPUTS} utxos and at least one output", field="utxos")
        if fee_sat < 0 or any(a <= 0 for _, a in outputs) or \
                sum(int(u["amount_sat"]) for u in utxos) != sum(a for _, a in outputs) + fee_sat:
            raise ValidationError("inputs must equal outputs + fee, amounts positive, fee >= 0", field="fee_sat")
        vin = [TransactionInput(bytes.fromhex(u["txid"]), int(u["vout"]), sequence=0xFFFFFFFD) for u in utxos]
        psbt = PSBT(Transaction(vin=vin, vout=[TransactionOutput(a, Script(s)) for s, a in outputs]))
        for inp, u in zip(psbt.inputs, utxos):
            idx = int(u["index"])
            script, keys = self._leaf(idx)
            leaf = _leaf_hash(script)
            qx, parity = _output_key(NUMS_XONLY, leaf)
            assert b"\x51\x20" + qx == self.script_pubkey(idx), "embit and BIP-341 disagree on the output key"
            inp.witness_utxo = TransactionOutput(int(u["amount_sat"]), Script(self.script_pubkey(idx)))
            inp.taproot_internal_key = None
            inp.taproot_scripts[bytes([LEAF_VERSION | parity]) + NUMS_XONLY] = script + bytes([LEAF_VERSION])
            for k in keys:
                inp.taproot_bip32_derivations[k.get_public_key()] = ([leaf], DerivationPath(
                    k.origin.fingerprint, list(k.origin.derivation)))
        return psbt.to_string()

    def finalize(self, psbt_b64: str, nomination: Nomination, block_hash: str) -> bytes:
        if not nomination.verify(block_hash):
            raise QuorumNotNominated("the nomination does not match the block hash", field="nomination")
        if nomination.holders != self.holders or nomination.m != self.m:
            raise QuorumNotNominated("the nomination is for another wallet", field="nomination")
        psbt = PSBT.from_string(psbt_b64)
        tx = Transaction.parse(psbt.tx.serialize())
        spent = [(inp.witness_utxo.value, inp.witness_utxo.script_pubkey.data) for inp in psbt.inputs]
        for i, inp in enumerate(psbt.inputs):
            (control, sc), = inp.taproot_scripts.items()
            script = sc[:-1]
            _m, keys = _parse_multi_a(script)
            fp_of = {pub.xonly(): der.fingerprint.hex() for pub, (_l, der) in inp.taproot_bip32_derivations.items()}
            by_key = {pub.xonly(): sig for (pub, _leaf), sig in inp.taproot_sigs.items()}
            signers = {fp_of.get(k, "?") for k in by_key}
            if signers != set(nomination.selected):
                raise QuorumNotNominated(f"input {i} is signed by holders other than the nominated quorum",
                                         field="psbt", signed_by=sorted(signers), nominated=list(nomination.selected))
            tx.vin[i].witness = Witness([by_key.get(k, b"") for k in reversed(keys)] + [script, control])
        raw = tx.serialize()
        for i in range(len(psbt.inputs)):
            verify_tapscript_multisig_spend(raw, i, spent)
        return raw
