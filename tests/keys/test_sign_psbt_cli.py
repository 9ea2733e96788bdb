"""Cold spends with a quorum nominated per transaction (seeded from the unsigned transaction's id
and its journal position, recomputable offline) and signed offline with `ringfence keys sign-psbt`:
the nominated pair's PSBT finalises and the local Bitcoin chain accepts the spend; a set that
includes a holder who was not nominated is refused."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from hypothesis import given, settings, strategies as st

from ringfence.chains.bitcoin.simulator import BitcoinSimulator
from ringfence.errors import QuorumNotNominated
from ringfence.keys.multisig import ColdWallet, holder_xpub_entry, nominate_for_transaction, transaction_seed

SRC = Path(__file__).resolve().parents[2] / "src"
NET = NETWORKS["regtest"]


def _holders(seed: int) -> list[bip32.HDKey]:
    print("seed", seed)
    rng = random.Random(seed)
    return [bip32.HDKey.from_seed(rng.randbytes(32), version=NET["xprv"]) for _ in range(3)]


def _sign_cli(tmp: Path, psbt: str, root: bip32.HDKey, name: str) -> str:
    key = tmp / f"{name}.xprv"
    key.write_text(root.to_string())
    os.chmod(key, 0o600)
    (tmp / f"{name}.in.psbt").write_text(psbt)
    res = subprocess.run([sys.executable, "-m", "ringfence.cli", "keys", "sign-psbt", "--psbt", str(tmp / f"{name}.in.psbt"),
                          "--key", str(key), "--out", str(tmp / f"{name}.out.psbt")],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert res.returncode == 0, res.stderr + res.stdout
    assert "1 signature(s) added" in res.stdout
    return (tmp / f"{name}.out.psbt").read_text().strip()


def test_nominated_pair_signs_offline_and_the_chain_accepts_the_spend(tmp_path: Path) -> None:
    roots = _holders(16)
    w = ColdWallet(f"wsh(sortedmulti(2,{','.join(holder_xpub_entry(r) for r in roots)}))")
    by_fp = {r.my_fingerprint.hex(): r for r in roots}
    sim = BitcoinSimulator()
    spk = bytes(w.script_pubkey(0))
    sim.mine(1, spk)
    sim.mine(100, bytes.fromhex("0014" + "22" * 20))  # the coinbase matures
    ((txid, vout), coin), = sim.utxos(spk).items()
    fee = 2_000
    psbt = w.create_psbt([{"txid": txid, "vout": vout, "amount_sat": coin.value_sat, "index": 0}],
                         [(bytes.fromhex("0014" + "33" * 20), coin.value_sat - fee)], fee_sat=fee)
    unsigned_txid = PSBT.from_string(psbt).tx.txid().hex()
    position = 4242  # the journal position at which the refill was recorded
    nom = nominate_for_transaction(w.holders, 2, unsigned_txid, position)
    seed_hex = transaction_seed(unsigned_txid, position).hex()
    assert nom.verify(seed_hex) and len(nom.selected) == 2
    # each nominated holder signs on their own (offline) machine with the CLI; the file travels back
    p = psbt
    for fp in nom.selected:
        p = _sign_cli(tmp_path, p, by_fp[fp], fp)
    raw = w.finalize(p, nom, seed_hex)
    accepted_txid, _ = sim.submit(raw)
    sim.mine(1, bytes.fromhex("0014" + "22" * 20))
    assert accepted_txid in sim.tx_height
    # a set with a holder who was not nominated is refused
    outsider = next(fp for fp in w.holders if fp not in nom.selected)
    p = psbt
    for fp in (nom.selected[0], outsider):
        p = _sign_cli(tmp_path, p, by_fp[fp], f"x-{fp}")
    with pytest.raises(QuorumNotNominated):
        w.finalize(p, nom, seed_hex)


def test_sign_psbt_refuses_a_key_that_is_not_in_the_psbt(tmp_path: Path) -> None:
    roots = _holders(17)
    w = ColdWallet(f"wsh(sortedmulti(2,{','.join(holder_xpub_entry(r) for r in roots)}))")
    psbt = w.create_psbt([{"txid": "ab" * 32, "vout": 0, "amount_sat": 50_000, "index": 0}],
                         [(bytes.fromhex("0014" + "11" * 20), 49_000)], fee_sat=1_000)
    stranger = _holders(99)[0]
    (tmp_path / "in.psbt").write_text(psbt)
    res = subprocess.run([sys.executable, "-m", "ringfence.cli", "keys", "sign-psbt", "--psbt", str(tmp_path / "in.psbt"),
                          "--out", str(tmp_path / "out.psbt")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(SRC), "RINGFENCE_COLD_XPRV": stranger.to_string()})
    assert res.returncode == 2 and "nothing signed" in res.stderr + res.stdout
    assert not (tmp_path / "out.psbt").exists()


@settings(max_examples=60, deadline=None)
@given(txid=st.binary(min_size=32, max_size=32), position=st.integers(0, 2**40), other=st.integers(0, 2**40))
def test_nomination_is_a_pure_function_of_the_journal(txid: bytes, position: int, other: int) -> None:
    holders = [hashlib.sha256(bytes([i])).hexdigest()[:8] for i in range(5)]
    a = nominate_for_transaction(holders, 3, txid.hex(), position)
    assert a == nominate_for_transaction(holders, 3, txid.hex(), position), "recomputable"
    assert len(set(a.selected)) == 3 and set(a.selected) <= set(holders)
    assert a.verify(transaction_seed(txid.hex(), position).hex())
    if other != position:
        assert not a.verify(transaction_seed(txid.hex(), other).hex()), "another journal position is another seed"
    assert list(a.selected) == sorted(a.selected)
