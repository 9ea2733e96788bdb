"""Taproot (BIP-341) key-path spends signed by a FROST threshold key.

Builds the P2TR output for a threshold key, computes the BIP-341 signature hash of a spending
transaction with python-bitcointx, and checks a finished key-path spend before it is broadcast.
python-bitcointx 1.1.5's script interpreter treats witness v1 programs as "anyone can spend", so the
key-path check here is done explicitly: output key from the scriptPubKey, BIP-341 sighash, BIP-340
signature verification with libsecp256k1 (coincurve).

Invariant: `verify_keypath_spend` returns True only if the witness holds exactly one 64- or 65-byte
BIP-340 signature that libsecp256k1 accepts for the output key over the BIP-341 sighash.
"""

from __future__ import annotations

from typing import Sequence

import coincurve
from bitcointx.core import CTransaction, CTxOut
from bitcointx.core.script import SIGHASH_Type, SignatureHashSchnorr

from .frost import ThresholdKeyPackage, taproot_output_key

__all__ = ["p2tr_script_pubkey", "keypath_sighash", "verify_keypath_spend"]


def p2tr_script_pubkey(kp: ThresholdKeyPackage) -> bytes:
    """OP_1 <32-byte output key> for the BIP-86 style (no script tree) output of this threshold key."""
    return b"\x51\x20" + taproot_output_key(kp)


def keypath_sighash(tx: CTransaction, input_index: int, spent_outputs: Sequence[CTxOut],
                    hashtype: int | None = None) -> bytes:
    """BIP-341 signature message hash (SIGHASH_DEFAULT unless `hashtype` says otherwise)."""
    ht = None if hashtype is None else SIGHASH_Type(hashtype)
    return bytes(SignatureHashSchnorr(tx, input_index, spent_outputs, hashtype=ht))


def verify_keypath_spend(tx: CTransaction, input_index: int, spent_outputs: Sequence[CTxOut]) -> bool:
    spk = bytes(spent_outputs[input_index].scriptPubKey)
    if len(spk) != 34 or spk[:2] != b"\x51\x20":
        return False
    stack = list(tx.wit.vtxinwit[input_index].scriptWitness.stack)
    if len(stack) != 1 or len(stack[0]) not in (64, 65):
        return False
    sig = bytes(stack[0])
    hashtype = sig[64] if len(sig) == 65 else None
    if hashtype == 0:
        return False  # BIP-341: an explicit 0x00 hash type byte is invalid
    digest = keypath_sighash(tx, input_index, spent_outputs, hashtype)
    return coincurve.PublicKeyXOnly(spk[2:]).verify(sig[:64], digest)
