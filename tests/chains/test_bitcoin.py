"""The Bitcoin simulator and adapter: real signed transactions, rejections, PSBT multisig, taproot, reorgs."""

from __future__ import annotations

import hashlib

import coincurve
import pytest
from bitcointx.core import CMutableTransaction, COutPoint, CTransaction, CTxIn, CTxInWitness, CTxOut, lx
from bitcointx.core.script import CScript, CScriptWitness, SignatureHashSchnorr
from embit.psbt import PSBT

from ringfence.chains.adapter import Direction, TxState
from ringfence.chains.bitcoin.signer import sign_psbt
from ringfence.chains.bitcoin.wallet import DescriptorWallet, finalize, psbt_fee_sat
from ringfence.errors import InsufficientFunds, TransactionRejected, UnsupportedAsset, ValidationError

from .btc_keys import key, p2wpkh_script, sign_p2wpkh
from .conftest import MINER_SPK, REGTEST, account, fund

SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _only_coin(sim, spk):
    (op, coin), = sim.utxos(spk).items()
    return op, coin


def _rejected(fn) -> TransactionRejected:
    with pytest.raises(TransactionRejected) as err:
        fn()
    assert err.value.field == "raw_tx"
    return err.value


# ---- plain P2WPKH transfers ---------------------------------------------------------------------


def test_p2wpkh_transfer_moves_value_and_is_seen_by_scan(sim, btc):
    alice, bob = key(1), key(2)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    bob_addr = btc.address_of_script(p2wpkh_script(bob))
    alice_addr = btc.address_of_script(p2wpkh_script(alice))
    start = btc.scan(0, [bob_addr, alice_addr]).scanned_to_height

    raw = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(bob), 30_000_000), (p2wpkh_script(alice), coin.value_sat - 30_000_000 - 2_000)])
    sent = btc.broadcast(raw)
    assert not sent.already_known
    assert btc.tx_status(sent.txid).state is TxState.PENDING and btc.confirmations(sent.txid) == 0
    assert btc.balance(bob_addr) == 0  # mempool is not balance

    sim.mine(1, MINER_SPK)
    assert btc.confirmations(sent.txid) == 1
    assert btc.balance(bob_addr) == 30_000_000
    assert btc.balance(alice_addr) == coin.value_sat - 30_000_000 - 2_000
    assert btc.balance(bob_addr, height=sim.height - 1) == 0  # history by height
    # the miner got subsidy + exactly the fee
    assert sim.blocks[-1].txs[0].vout[0].nValue == sim.subsidy(sim.height) + 2_000

    scan = btc.scan(start, [bob_addr, alice_addr])
    transfers = [t for b in scan.blocks for t in b.transfers]
    assert {(t.address, t.direction, t.amount_minor) for t in transfers if t.txid == sent.txid} == {
        (bob_addr, Direction.IN, 30_000_000),
        (alice_addr, Direction.IN, coin.value_sat - 30_000_000 - 2_000),
        (alice_addr, Direction.OUT, coin.value_sat),
    }
    sim.mine(5, MINER_SPK)
    assert btc.confirmations(sent.txid) == 6 == btc.finality_depth("BTC")
    sim.check_invariants()


def test_broadcasting_twice_is_one_send(sim, btc):
    alice = key(1)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    raw = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(key(2)), coin.value_sat - 1_000)])
    first, second = btc.broadcast(raw), btc.broadcast(raw)
    assert first.txid == second.txid and not first.already_known and second.already_known
    assert len(sim.mempool) == 1
    sim.mine(1, MINER_SPK)
    assert btc.broadcast(raw).already_known  # also once confirmed
    assert len(sim.mempool) == 0 and btc.confirmations(first.txid) == 1


def test_signature_by_the_wrong_key_is_rejected_and_changes_nothing(sim, btc):
    alice = key(1)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    before = (sim.utxo_value_total(), dict(sim.mempool))
    raw = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(key(2)), 1_000_000)], sign_with=[key(9)])
    err = _rejected(lambda: btc.broadcast(raw))
    assert err.details["reason"] == "bad_signature" and "does not verify" in str(err)
    assert (sim.utxo_value_total(), dict(sim.mempool)) == before


def test_tampered_output_invalidates_the_signature(sim, btc):
    alice = key(1)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    tx = CMutableTransaction.from_instance(
        CTransaction.deserialize(sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(key(2)), 1_000_000)]))
    )
    tx.vout[0].scriptPubKey = CScript(p2wpkh_script(key(3)))  # redirect the payment after signing
    assert _rejected(lambda: btc.broadcast(tx.serialize())).details["reason"] == "bad_signature"


def test_double_spends_are_rejected_in_mempool_and_after_mining(sim, btc):
    alice = key(1)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    pay_bob = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(key(2)), coin.value_sat - 1_000)])
    pay_eve = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(key(3)), coin.value_sat - 5_000)])
    bob_txid = btc.broadcast(pay_bob).txid
    err = _rejected(lambda: btc.broadcast(pay_eve))
    assert err.details["reason"] == "double_spend" and err.details["conflicting_txid"] == bob_txid
    sim.mine(1, MINER_SPK)
    err = _rejected(lambda: btc.broadcast(pay_eve))
    assert err.details["reason"] == "double_spend" and "already spent" in str(err)
    # the same input twice inside one transaction
    op2, coin2 = next(iter(sim.utxos(p2wpkh_script(key(2))).items()))
    twice = sign_p2wpkh([(op2, coin2.value_sat, key(2)), (op2, coin2.value_sat, key(2))], [(MINER_SPK, 1_000)])
    assert _rejected(lambda: btc.broadcast(twice)).details["reason"] == "duplicate_input"
    sim.check_invariants()


def test_overspend_missing_input_immature_coinbase_and_junk(sim, btc):
    alice = key(1)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    over = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(key(2)), coin.value_sat + 1)])
    err = _rejected(lambda: btc.broadcast(over))
    assert err.details["reason"] == "overspend" and err.details["outputs_sat"] == coin.value_sat + 1

    ghost = ("11" * 32, 0)
    missing = sign_p2wpkh([(ghost, 10_000, alice)], [(MINER_SPK, 5_000)])
    assert _rejected(lambda: btc.broadcast(missing)).details["reason"] == "missing_inputs"

    sim.mine(1, p2wpkh_script(key(4)))  # fresh coinbase, not mature
    op4, coin4 = _only_coin(sim, p2wpkh_script(key(4)))
    young = sign_p2wpkh([(op4, coin4.value_sat, key(4))], [(MINER_SPK, coin4.value_sat - 1_000)])
    assert _rejected(lambda: btc.broadcast(young)).details["reason"] == "immature_coinbase"

    low_fee = sign_p2wpkh([(op, coin.value_sat, alice)], [(MINER_SPK, coin.value_sat - 10)])
    assert _rejected(lambda: btc.broadcast(low_fee)).details["reason"] == "fee_too_low"

    for junk in (b"", b"\x00" * 10, b"not a transaction"):
        assert _rejected(lambda junk=junk: btc.broadcast(junk)).details["reason"] == "malformed"
    assert len(sim.mempool) == 0


def test_fee_estimate_and_finality_and_assets(sim, btc):
    assert btc.estimate_fee().fee_rate_minor == sim.min_relay_fee_sat_per_vb  # empty chain: the floor
    alice = key(1)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    raw = sign_p2wpkh([(op, coin.value_sat, alice)], [(MINER_SPK, coin.value_sat - 11_000)])
    btc.broadcast(raw)
    sim.mine(1, MINER_SPK)
    vsize = CTransaction.deserialize(raw).get_virtual_size()
    est = btc.estimate_fee()
    assert est.fee_rate_minor == -(-11_000 // vsize) and isinstance(est.fee_rate_minor, int)
    assert est.fee_for(vsize) >= 11_000
    assert btc.finality_depth("BTC") == 6 and tuple(btc.supported_assets()) == ("BTC",)
    with pytest.raises(UnsupportedAsset) as err:
        btc.finality_depth("DOGE")
    assert err.value.field == "asset" and "BTC" in str(err.value)
    with pytest.raises(UnsupportedAsset):
        btc.balance(btc.address_of_script(MINER_SPK), asset="ETH")


# ---- PSBT wallets and cold signers --------------------------------------------------------------


def _multisig_wallet(signers) -> DescriptorWallet:
    return DescriptorWallet(
        "wsh(sortedmulti(2,%s))" % ",".join(account(r, "m/48h/1h/0h/2h") for r in signers)
    )


def test_2_of_3_psbt_signed_by_two_offline_signers_spends(sim, btc, signers):
    vault = _multisig_wallet(signers)
    fund(sim, vault.script_pubkey(0))
    coins = vault.coins(btc)
    assert [c.value_sat for c in coins] == [sim.subsidy(1)]
    dest = btc.address_of_script(p2wpkh_script(key(5)))
    psbt = vault.create_psbt(coins, [(dest, 120_000_000)], fee_rate_sat_per_vb=3)
    # the server's PSBT carries the spent output, the witness script and all three key origins
    parsed = PSBT.from_string(psbt)
    assert parsed.inputs[0].witness_script is not None and len(parsed.inputs[0].bip32_derivations) == 3
    assert vault.owns_output(psbt, 1) and not vault.owns_output(psbt, 0)  # signers can check change

    one, n1 = sign_psbt(psbt, signers[0].to_base58(REGTEST["xprv"]))
    assert n1 == 1
    with pytest.raises(ValidationError, match="not fully signed"):
        finalize(one)  # 1 of 3 is not enough
    stranger, n0 = sign_psbt(one, key_root_unrelated())
    assert n0 == 0  # an unrelated key signs nothing
    two, n2 = sign_psbt(one, signers[2].to_base58(REGTEST["xprv"]))
    assert n2 == 1
    raw = finalize(two)
    sent = btc.broadcast(raw)
    sim.mine(1, MINER_SPK)
    assert btc.confirmations(sent.txid) == 1
    assert btc.balance(dest) == 120_000_000
    fee = psbt_fee_sat(two)
    vsize = CTransaction.deserialize(raw).get_virtual_size()
    assert 3 * vsize <= fee <= 3 * vsize + 3 * 4  # estimate rounds up by at most a few vbytes
    assert sum(c.value_sat for c in vault.coins(btc)) == sim.subsidy(1) - 120_000_000 - fee
    sim.check_invariants()


def key_root_unrelated() -> str:
    from .conftest import root_key

    return root_key(99).to_base58(REGTEST["xprv"])


def test_multisig_with_two_signatures_from_the_same_signer_fails(sim, btc, signers):
    vault = _multisig_wallet(signers)
    fund(sim, vault.script_pubkey(0))
    psbt = vault.create_psbt(vault.coins(btc), [(btc.address_of_script(MINER_SPK), 10_000_000)], 2)
    signed, _ = sign_psbt(psbt, signers[0].to_base58(REGTEST["xprv"]))
    signed, again = sign_psbt(signed, signers[0].to_base58(REGTEST["xprv"]))
    with pytest.raises(ValidationError):
        finalize(signed)
    # forge completeness: put signer 0's signature in twice; the script must refuse it
    p = PSBT.from_string(signed)
    (pub, sig), = p.inputs[0].partial_sigs.items()
    others = [k for k in p.inputs[0].bip32_derivations if k != pub]
    p.inputs[0].partial_sigs[others[0]] = sig
    raw = finalize(p.to_string())
    assert _rejected(lambda: btc.broadcast(raw)).details["reason"] == "bad_signature"


def test_psbt_wallet_refuses_private_descriptors_and_overspends(sim, btc, signers):
    with pytest.raises(ValidationError, match="private key") as err:
        DescriptorWallet("wpkh(%s/<0;1>/*)" % signers[0].derive("m/84h/1h/0h").to_base58(REGTEST["xprv"]))
    assert err.value.field == "descriptor"
    wallet = DescriptorWallet("wpkh(%s)" % account(signers[0], "m/84h/1h/0h"))
    fund(sim, wallet.script_pubkey(0))
    with pytest.raises(InsufficientFunds):
        wallet.create_psbt(wallet.coins(btc), [(btc.address_of_script(MINER_SPK), sim.subsidy(1))], 1)
    with pytest.raises(ValidationError) as err:
        wallet.create_psbt(wallet.coins(btc), [("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", 10_000)], 1)
    assert err.value.field == "outputs[0].address"  # mainnet address on a regtest wallet


# ---- taproot key path ---------------------------------------------------------------------------


def test_p2tr_key_path_spend_via_psbt_validates(sim, btc, signers):
    wallet = DescriptorWallet("tr(%s)" % account(signers[0], "m/86h/1h/0h"))
    assert wallet.address(0).startswith("bcrt1p")
    fund(sim, wallet.script_pubkey(0))
    psbt = wallet.create_psbt(wallet.coins(btc), [(btc.address_of_script(MINER_SPK), 10_000_000)], 2)
    signed, n = sign_psbt(psbt, signers[0].to_base58(REGTEST["xprv"]))
    assert n == 1
    sent = btc.broadcast(finalize(signed))
    sim.mine(1, MINER_SPK)
    assert btc.confirmations(sent.txid) == 1
    # the wrong signer cannot sign it
    fund(sim, wallet.script_pubkey(1))
    psbt = wallet.create_psbt(wallet.coins(btc)[-1:], [(btc.address_of_script(MINER_SPK), 10_000_000)], 2)
    _, n = sign_psbt(psbt, signers[1].to_base58(REGTEST["xprv"]))
    assert n == 0


def _tagged(tag: str, data: bytes) -> bytes:
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + data).digest()


def _taproot_keys(secret: bytes) -> tuple[bytes, bytes]:
    """(tweaked private key, output x-only key) per BIP-341 with no script tree."""
    d = int.from_bytes(secret, "big")
    pub = coincurve.PrivateKey(secret).public_key.format(compressed=True)
    if pub[0] == 3:
        d = SECP_N - d
    t = int.from_bytes(_tagged("TapTweak", pub[1:]), "big")
    tweaked = ((d + t) % SECP_N).to_bytes(32, "big")
    return tweaked, coincurve.PrivateKey(tweaked).public_key.format(compressed=True)[1:]


def _p2tr_spend(op, value, output_key, signing_key, dest_spk, fee=2_000) -> bytes:
    tx = CMutableTransaction([CTxIn(COutPoint(lx(op[0]), op[1]))], [CTxOut(value - fee, CScript(dest_spk))])
    spent = [CTxOut(value, CScript(b"\x51\x20" + output_key))]
    msg = SignatureHashSchnorr(tx, 0, spent)  # BIP-341 sighash, SIGHASH_DEFAULT
    sig = coincurve.PrivateKey(signing_key).sign_schnorr(msg)
    tx.wit.vtxinwit = [CTxInWitness(CScriptWitness([sig]))]
    return tx.serialize()


def test_p2tr_key_path_by_hand_with_bip341_sighash_and_schnorr(sim, btc):
    tweaked, output_key = _taproot_keys(hashlib.sha256(b"taproot owner").digest())
    spk = b"\x51\x20" + output_key
    fund(sim, spk)
    op, coin = _only_coin(sim, spk)

    wrong_key, _ = _taproot_keys(hashlib.sha256(b"somebody else").digest())
    bad = _p2tr_spend(op, coin.value_sat, output_key, wrong_key, MINER_SPK)
    err = _rejected(lambda: btc.broadcast(bad))
    assert err.details["reason"] == "bad_signature" and "BIP-340" in str(err)

    untweaked = hashlib.sha256(b"taproot owner").digest()  # the internal key alone is not enough
    assert _rejected(lambda: btc.broadcast(_p2tr_spend(op, coin.value_sat, output_key, untweaked, MINER_SPK))).details["reason"] == "bad_signature"

    good = _p2tr_spend(op, coin.value_sat, output_key, tweaked, MINER_SPK)
    sent = btc.broadcast(good)
    sim.mine(1, MINER_SPK)
    assert btc.confirmations(sent.txid) == 1
    assert btc.balance(btc.address_of_script(spk)) == 0


def test_bitcointx_and_embit_agree_on_the_taproot_sighash(sim):
    """Cross-check the simulator's BIP-341 sighash (bitcointx) against embit's implementation."""
    from embit.transaction import Transaction as ETx
    from embit.script import Script as EScript

    tweaked, output_key = _taproot_keys(b"\x01" * 32)
    raw = _p2tr_spend(("22" * 32, 1), 5_000_000, output_key, tweaked, MINER_SPK)
    tx = CTransaction.deserialize(raw)
    ours = SignatureHashSchnorr(tx, 0, [CTxOut(5_000_000, CScript(b"\x51\x20" + output_key))])
    theirs = ETx.parse(raw).sighash_taproot(0, [EScript(b"\x51\x20" + output_key)], [5_000_000])
    assert ours == theirs


# ---- reorganisations ----------------------------------------------------------------------------


def _deposit(sim, btc, amount=25_000_000):
    alice, user = key(1), key(2)
    fund(sim, p2wpkh_script(alice))
    op, coin = _only_coin(sim, p2wpkh_script(alice))
    raw = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(user), amount), (p2wpkh_script(alice), coin.value_sat - amount - 3_000)])
    return raw, (op, coin, alice), btc.address_of_script(p2wpkh_script(user))


def test_reorg_drops_confirmations_and_returns_tx_to_mempool(sim, btc):
    raw, _, user_addr = _deposit(sim, btc)
    watch = [user_addr]
    since = btc.scan(0, watch).scanned_to_height
    txid = btc.broadcast(raw).txid
    sim.mine(3, MINER_SPK)
    h = btc.tx_status(txid).block_height
    old_hash = btc.block_hash(h)
    first = btc.scan(since, watch)
    assert btc.confirmations(txid) == 3 and btc.balance(user_addr) == 25_000_000

    sim.reorganize(h, 4, MINER_SPK, include_mempool=False)  # replace its block by empty ones
    status = btc.tx_status(txid)
    assert status.state is TxState.PENDING and status.confirmations == 0
    assert btc.balance(user_addr) == 0 and btc.block_hash(h) != old_hash

    again = btc.scan(first.scanned_to_height, watch)
    assert again.reorg is not None and again.reorg.fork_height == h
    assert again.reorg.replaced[h] == (old_hash, btc.block_hash(h))
    assert again.blocks[0].height == h  # rewound to the fork
    assert not any(b.transfers for b in again.blocks)

    sim.mine(1, MINER_SPK)  # re-included in a later block
    status = btc.tx_status(txid)
    assert status.state is TxState.CONFIRMED and status.block_height == sim.height and status.confirmations == 1
    sim.check_invariants()


def test_reorg_with_a_double_spend_makes_the_deposit_vanish(sim, btc):
    raw, (op, coin, alice), user_addr = _deposit(sim, btc)
    txid = btc.broadcast(raw).txid
    sim.mine(2, MINER_SPK)
    h = btc.tx_status(txid).block_height
    thief = sign_p2wpkh([(op, coin.value_sat, alice)], [(p2wpkh_script(key(3)), coin.value_sat - 4_000)])
    sim.reorganize(h, 3, MINER_SPK, replacement_txs=(thief,))
    assert btc.tx_status(txid).state is TxState.UNKNOWN and btc.confirmations(txid) == 0
    assert btc.balance(user_addr) == 0
    assert btc.balance(btc.address_of_script(p2wpkh_script(key(3)))) == coin.value_sat - 4_000
    assert _rejected(lambda: btc.broadcast(raw)).details["reason"] == "double_spend"
    sim.check_invariants()


def test_reorg_arguments_are_checked(sim):
    sim.mine(5, MINER_SPK)
    with pytest.raises(ValidationError) as err:
        sim.reorganize(3, 2, MINER_SPK)  # 3 blocks replaced by 2 is not more work
    assert err.value.field == "new_block_count"
    with pytest.raises(ValidationError):
        sim.reorganize(0, 10, MINER_SPK)
    assert sim.height == 5


# ---- persistence --------------------------------------------------------------------------------


def test_state_file_round_trip_and_corruption(sim, btc, tmp_path):
    raw, _, user_addr = _deposit(sim, btc)
    txid = btc.broadcast(raw).txid
    sim.mine(2, MINER_SPK)
    sim.reorganize(sim.height, 2, MINER_SPK)  # branch tags must survive too
    alice = key(1)
    op, coin = next(iter(sim.utxos(p2wpkh_script(alice)).items()))
    pending = btc.broadcast(sign_p2wpkh([(op, coin.value_sat, alice)], [(MINER_SPK, coin.value_sat - 5_000)])).txid
    path = tmp_path / "regtest.json"
    sim.save(path)

    from ringfence.chains.bitcoin.simulator import BitcoinSimulator
    from ringfence.errors import SnapshotInvalid

    again = BitcoinSimulator.load(path)
    assert [b.block_hash for b in again.blocks] == [b.block_hash for b in sim.blocks]
    assert list(again.mempool) == [pending]
    restored = type(btc)(again)
    assert restored.balance(user_addr) == btc.balance(user_addr) == 25_000_000
    assert restored.confirmations(txid) == btc.confirmations(txid)

    text = path.read_text()
    path.write_text(text.replace(raw.hex()[:40], raw.hex()[:39] + ("0" if raw.hex()[39] != "0" else "1"), 1))
    with pytest.raises(SnapshotInvalid) as err:
        BitcoinSimulator.load(path)
    assert err.value.field == "path"
    path.write_text("{not json")
    with pytest.raises(SnapshotInvalid):
        BitcoinSimulator.load(path)


def test_mine_to_address_checks_the_network(sim, btc):
    addr = btc.address_of_script(p2wpkh_script(key(6)))
    sim.mine_to_address(1, addr)
    assert btc.balance(addr) == sim.subsidy(1)
    (utxo,) = btc.unspent(addr)
    assert utxo.coinbase and utxo.height == 1 and utxo.value_sat == sim.subsidy(1)
    assert btc.unspent(addr, height=0) == []
    from ringfence.errors import InvalidAddress

    with pytest.raises(InvalidAddress):
        sim.mine_to_address(1, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")
