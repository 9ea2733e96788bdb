"""Taproot script-path M-of-N cold storage: nominated quorum spends, other sets refused,
and the independent tapscript verifier rejects forged witnesses."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from embit import bip32
from embit.networks import NETWORKS

from ringfence.keys.multisig import nominate_quorum, sign_psbt_offline
from ringfence.keys.tapscript_multisig import TaprootColdWallet, verify_tapscript_multisig_spend
from ringfence.errors import QuorumNotNominated, ValidationError

NET = NETWORKS["regtest"]


def make(n: int, m: int, seed: int = 86) -> tuple[TaprootColdWallet, dict[str, bip32.HDKey]]:
    print("seed", seed)
    rng = random.Random(seed)
    roots = [bip32.HDKey.from_seed(rng.randbytes(32), version=NET["xprv"]) for _ in range(n)]
    entries = [f"[{r.my_fingerprint.hex()}/86h/1h/0h]{r.derive('m/86h/1h/0h').to_public().to_string(version=NET['xpub'])}/0/*"
               for r in roots]
    return TaprootColdWallet(entries, m), {r.my_fingerprint.hex(): r for r in roots}


@pytest.mark.parametrize("m,n", [(2, 3), (3, 5)])
def test_tapscript_quorum_spends_and_others_refused(m: int, n: int) -> None:
    w, by_fp = make(n, m)
    assert w.address(0).startswith("bcrt1p")
    bh = hashlib.sha256(b"block 900000").digest()
    nom = nominate_quorum(w.holders, m, bh, "cold-1", 900000)
    utxos = [{"txid": "ef" * 32, "vout": 0, "amount_sat": 2_000_000, "index": 5}]
    psbt = w.create_psbt(utxos, [(bytes.fromhex("0014" + "22" * 20), 1_995_000)], 5_000)
    p = psbt
    for fp in nom.selected:
        p = sign_psbt_offline(p, by_fp[fp])
    raw = w.finalize(p, nom, bh.hex())
    spent = [(2_000_000, w.script_pubkey(5))]
    assert len(verify_tapscript_multisig_spend(raw, 0, spent)) == m
    # tamper with the spent amount: the sighash changes, signatures no longer verify
    with pytest.raises(ValidationError):
        verify_tapscript_multisig_spend(raw, 0, [(2_000_001, w.script_pubkey(5))])
    # drop one signature from the witness: fewer than m signatures cannot spend
    from bitcointx.core import CMutableTransaction, CTxInWitness, CTxWitness
    from bitcointx.core.script import CScriptWitness

    mtx = CMutableTransaction.deserialize(raw)
    stack = [bytes(x) for x in mtx.wit.vtxinwit[0].scriptWitness.stack]
    first_sig = next(k for k, x in enumerate(stack[:-2]) if x)
    stack[first_sig] = b""
    mtx.wit = CTxWitness([CTxInWitness(CScriptWitness(stack))])
    with pytest.raises(ValidationError, match="required"):
        verify_tapscript_multisig_spend(mtx.serialize(), 0, spent)
    # another output key: the control block does not commit to it
    with pytest.raises(ValidationError):
        verify_tapscript_multisig_spend(raw, 0, [(2_000_000, w.script_pubkey(6))])
    for combo in [c for c in itertools.combinations(w.holders, m) if set(c) != set(nom.selected)][:2]:
        p = psbt
        for fp in combo:
            p = sign_psbt_offline(p, by_fp[fp])
        with pytest.raises(QuorumNotNominated):
            w.finalize(p, nom, bh.hex())


def test_fewer_than_m_signatures_cannot_spend() -> None:
    w, by_fp = make(3, 2)
    bh = hashlib.sha256(b"b").digest()
    nom = nominate_quorum(w.holders, 1, bh, "x", 1)  # a 1-holder "nomination" cannot satisfy a 2-of-3 leaf
    psbt = w.create_psbt([{"txid": "01" * 32, "vout": 0, "amount_sat": 10_000, "index": 0}],
                         [(bytes.fromhex("0014" + "33" * 20), 9_000)], 1_000)
    p = sign_psbt_offline(psbt, by_fp[nom.selected[0]])
    with pytest.raises(QuorumNotNominated):
        w.finalize(p, nom, bh.hex())  # wrong m for this wallet
