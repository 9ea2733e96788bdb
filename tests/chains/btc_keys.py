"""Test-side Bitcoin signing with python-bitcointx (independent of the embit PSBT wallet path).

Keys are derived deterministically from small integers: tests are reproducible and the keys are
worthless outside the simulator.
"""

from __future__ import annotations

import hashlib

from bitcointx.core import CMutableTransaction, CTxIn, CTxOut, CTxInWitness, lx
from bitcointx.core.key import CKey
from bitcointx.core.script import (
    CScript,
    CScriptWitness,
    OP_0,
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    SignatureHash,
)
from bitcointx.core import COutPoint


def key(n: int) -> CKey:
    return CKey(hashlib.sha256(b"ringfence-test-key-%d" % n).digest())


def p2wpkh_script(k: CKey) -> bytes:
    return bytes(CScript([OP_0, hashlib.new("ripemd160", hashlib.sha256(k.pub).digest()).digest()]))


def sign_p2wpkh(inputs, outputs, *, sign_with=None) -> bytes:
    """inputs: [((txid, vout), value_sat, CKey)], outputs: [(script_pubkey, value_sat)] -> raw tx.

    `sign_with` (list of CKey, one per input) signs with other keys than the owners, for tests of
    invalid signatures.
    """
    tx = CMutableTransaction(
        [CTxIn(COutPoint(lx(op[0]), op[1])) for op, _, _ in inputs],
        [CTxOut(v, CScript(spk)) for spk, v in outputs],
    )
    witnesses = []
    for i, (_, value, owner) in enumerate(inputs):
        signer = owner if sign_with is None else sign_with[i]
        h160 = hashlib.new("ripemd160", hashlib.sha256(owner.pub).digest()).digest()
        script_code = CScript([OP_DUP, OP_HASH160, h160, OP_EQUALVERIFY, OP_CHECKSIG])
        sighash = SignatureHash(script_code, tx, i, SIGHASH_ALL, amount=value, sigversion=SIGVERSION_WITNESS_V0)
        sig = signer.sign(sighash) + bytes([SIGHASH_ALL])
        witnesses.append(CTxInWitness(CScriptWitness([sig, owner.pub])))
    tx.wit.vtxinwit = witnesses
    return tx.serialize()
