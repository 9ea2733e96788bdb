"""Key management meets the chain: a FROST threshold key (from a DKG, no party ever holding the
whole key) owns a Taproot output on the local Bitcoin chain, and 2-of-3 and 3-of-5 quorums spend
it. The simulator validates the BIP-341 key-path spend itself; t-1 shares, the untweaked key or a
non-quorum signature are refused by the chain and change nothing."""

import pytest
from bitcointx.core import CMutableTransaction, COutPoint, CTxIn, CTxInWitness, CTxOut, CTxWitness, lx
from bitcointx.core.script import CScript, CScriptWitness

from ringfence.chains.bitcoin.adapter import BitcoinAdapter
from ringfence.chains.bitcoin.simulator import BitcoinSimulator
from ringfence.keys import dkg, frost, taproot
from ringfence.keys.frost import FROST_SECP256K1_SHA256
from ringfence.errors import TransactionRejected

MINER_SPK = bytes.fromhex("0014" + "ab" * 20)


def threshold_sign(kps, quorum, msg):
    cs = next(iter(kps.values())).suite
    pairs = {i: frost.commit(cs, i, kps[i].secret_share) for i in quorum}
    comms = [pairs[i][1] for i in sorted(quorum)]
    shares = {i: frost.sign_share(kps[i], pairs[i][0], msg, comms) for i in quorum}
    kp = kps[quorum[0]]
    return frost.aggregate(cs, comms, msg, kp.group_public_key, shares, kp.verifying_shares)


def coin_for(sim, spk):
    """Mine a coinbase to `spk`, mature it, return (outpoint, value)."""
    sim.mine(1, spk)
    sim.mine(sim.coinbase_maturity, MINER_SPK)
    ((outpoint, coin),) = sim.utxos(spk).items()
    return outpoint, coin


def spend(kps, quorum, outpoint, value, spk, *, tweak=True):
    tx = CMutableTransaction([CTxIn(COutPoint(lx(outpoint[0]), outpoint[1]))], [CTxOut(value - 5_000, CScript(MINER_SPK))])
    funding = CTxOut(value, CScript(spk))
    digest = taproot.keypath_sighash(tx, 0, [funding])
    signing = {i: frost.bip340_key_package(kp, taproot_tweak=tweak) for i, kp in kps.items()}
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([threshold_sign(signing, quorum, digest)]))])
    return tx.serialize()


@pytest.mark.parametrize("t,n,quorum", [(2, 3, [1, 3]), (3, 5, [2, 4, 5])])
def test_frost_quorum_spends_a_taproot_output_on_the_local_chain(t, n, quorum):
    sim = BitcoinSimulator()
    btc = BitcoinAdapter(sim, network="regtest")
    kps = dkg.run_dkg(FROST_SECP256K1_SHA256, t, list(range(1, n + 1)), f"vault:{t}of{n}".encode())
    spk = taproot.p2tr_script_pubkey(kps[1])
    outpoint, coin = coin_for(sim, spk)
    address = btc.address_of_script(spk)
    assert address.startswith("bcrt1p") and btc.balance(address) == coin.value_sat

    # the untweaked (internal) key and a quorum that is too small are refused by the chain
    with pytest.raises(TransactionRejected) as err:
        btc.broadcast(spend(kps, quorum, outpoint, coin.value_sat, spk, tweak=False))
    assert err.value.details["reason"] == "bad_signature"
    with pytest.raises((TransactionRejected, ValueError)):  # t-1 shares: no valid signature exists
        btc.broadcast(spend(kps, quorum[:-1], outpoint, coin.value_sat, spk))
    assert btc.balance(address) == coin.value_sat

    sent = btc.broadcast(spend(kps, quorum, outpoint, coin.value_sat, spk))
    sim.mine(1, MINER_SPK)
    assert btc.confirmations(sent.txid) == 1
    assert btc.balance(address) == 0
