"""Proof of reserves: ownership proofs (EIP-191, BIP-137, multisig), dedupe, one height per chain."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
from embit import ec, script
from embit.networks import NETWORKS

from ringfence.solvency.report import build_report, coverage_percent, render_html
from ringfence.solvency.reserves import (
    BalanceRegistryReader,
    EvmChainReader,
    OwnershipClaim,
    UtxoRegistryReader,
    Utxo,
    ownership_message,
    prove_reserves,
    sign_bitcoin_message,
    verify_bitcoin_ownership,
    verify_multisig_ownership,
)
from ringfence.solvency.snapshot import AssetSpec

SNAP = hashlib.sha256(b"reserves snapshot").hexdigest()
NET = "regtest"


def key(i: int) -> bytes:
    return hashlib.sha256(b"test key %d" % i).digest()


def pub(i: int) -> ec.PublicKey:
    return ec.PrivateKey(key(i)).get_public_key()


def p2wpkh(i: int) -> str:
    return script.p2wpkh(pub(i)).address(NETWORKS[NET])


# ---- EVM on a real eth-tester chain -------------------------------------------------------------

@pytest.fixture(scope="module")
def evm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from eth_account import Account
        from web3 import EthereumTesterProvider, Web3

        w3 = Web3(EthereumTesterProvider())
    accounts = [Account.from_key(key(100 + i)) for i in range(3)]
    for i, acct in enumerate(accounts):
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": acct.address, "value": (i + 1) * 10**18})
    return w3, accounts


def evm_sig(acct, address: str, snapshot: str = SNAP) -> str:
    from eth_account.messages import encode_defunct

    return "0x" + acct.sign_message(encode_defunct(text=ownership_message(snapshot, "ethereum", address))).signature.hex().removeprefix("0x")


def test_evm_reserves_valid_forged_duplicate_and_one_height(evm) -> None:
    w3, (a, b, c) = evm
    height = w3.eth.block_number
    claims = [
        OwnershipClaim("ethereum", "ETH", a.address, "evm", signature=evm_sig(a, a.address)),
        OwnershipClaim("ethereum", "ETH", b.address, "evm", signature=evm_sig(b, b.address)),
        # forged: a's key signs for c's address
        OwnershipClaim("ethereum", "ETH", c.address, "evm", signature=evm_sig(a, c.address)),
        # duplicate of a, lower-cased
        OwnershipClaim("ethereum", "ETH", a.address.lower(), "evm", signature=evm_sig(a, a.address.lower())),
        # signed for another snapshot: replay of an old proof
        OwnershipClaim("ethereum", "ETH", c.address, "evm", signature=evm_sig(c, c.address, "00" * 32)),
        OwnershipClaim("ethereum", "ETH", c.address, "evm", signature="0x1234"),
    ]
    reader = EvmChainReader(w3)
    result = prove_reserves(SNAP, claims, {"ethereum": reader}, {"ethereum": height})
    statuses = [r.status for r in result.addresses]
    assert statuses[0] == statuses[1] == "counted"
    assert statuses[2].startswith("rejected") and statuses[3] == "duplicate"
    assert statuses[4].startswith("rejected") and statuses[5].startswith("rejected")
    assert result.reserves_minor["ETH"] == 1 * 10**18 + 2 * 10**18
    assert result.heights == {"ethereum": height}
    # Money arriving after the snapshot height does not count.
    w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": a.address, "value": 5 * 10**18})
    again = prove_reserves(SNAP, claims, {"ethereum": reader}, {"ethereum": height})
    assert again.reserves_minor["ETH"] == 3 * 10**18
    later = prove_reserves(SNAP, claims, {"ethereum": reader})
    assert later.reserves_minor["ETH"] == 8 * 10**18 and later.heights["ethereum"] == height + 1


# ---- Bitcoin ------------------------------------------------------------------------------------

def btc_claim(i: int, kind: str = "p2wpkh", signer: int | None = None, address: str | None = None) -> OwnershipClaim:
    net = NETWORKS[NET]
    if address is None:
        address = {"p2wpkh": script.p2wpkh(pub(i)).address(net), "p2pkh": script.p2pkh(pub(i)).address(net),
                   "p2sh-p2wpkh": script.p2sh(script.p2wpkh(pub(i))).address(net)}[kind]
    sig = sign_bitcoin_message(key(signer if signer is not None else i),
                               ownership_message(SNAP, "bitcoin", address), kind)
    return OwnershipClaim("bitcoin", "BTC", address, "bitcoin", signature=sig, network=NET)


def multisig_claim(signers: list[int], keys=(1, 2, 3), m: int = 2, declared=None) -> OwnershipClaim:
    pubs = [pub(i) for i in keys]
    redeem = script.multisig(m, pubs)
    address = script.p2wsh(redeem).address(NETWORKS[NET])
    message = ownership_message(SNAP, "bitcoin", address)
    sigs = [{"pubkey": pub(i).sec().hex(), "signature": sign_bitcoin_message(key(i), message, "p2wpkh")}
            for i in signers]
    return OwnershipClaim("bitcoin", "BTC", address, "bitcoin-multisig", network=NET,
                          script=redeem.data.hex(), pubkeys=tuple(declared or [p.sec().hex() for p in pubs]),
                          threshold=m, signatures=tuple(sigs))


def test_bip137_single_key_kinds_and_forgery() -> None:
    for kind in ("p2wpkh", "p2pkh", "p2sh-p2wpkh"):
        claim = btc_claim(7, kind)
        assert claim.verify(SNAP) == (True, "valid"), kind
        forged = btc_claim(7, kind, signer=8)
        ok, reason = forged.verify(SNAP)
        assert not ok and "does not control" in reason
    # A segwit address signed with the compressed-P2PKH header (Bitcoin Core / Electrum style).
    segwit = btc_claim(7, "p2wpkh")
    core_style = sign_bitcoin_message(key(7), ownership_message(SNAP, "bitcoin", segwit.address), "p2pkh")
    assert verify_bitcoin_ownership(segwit.address, ownership_message(SNAP, "bitcoin", segwit.address),
                                    core_style, NET) == (True, "valid")
    # ...but a P2WPKH-header signature never proves a legacy address of another key.
    assert not verify_bitcoin_ownership(btc_claim(8, "p2pkh").address,
                                        ownership_message(SNAP, "bitcoin", btc_claim(8, "p2pkh").address),
                                        segwit.signature, NET)[0]
    good = btc_claim(7)
    message = ownership_message(SNAP, "bitcoin", good.address)
    assert not verify_bitcoin_ownership(good.address, message + "!", good.signature, NET)[0]
    assert not verify_bitcoin_ownership(good.address, message, "not base64!", NET)[0]
    assert not verify_bitcoin_ownership(good.address, message, "AAAA", NET)[0]


def test_multisig_threshold_script_and_keyset() -> None:
    assert multisig_claim([1, 3]).verify(SNAP) == (True, "valid")
    ok, reason = multisig_claim([1]).verify(SNAP)
    assert not ok and "1 of the required 2" in reason
    ok, reason = multisig_claim([1, 1]).verify(SNAP)  # the same key twice is one signer
    assert not ok
    ok, reason = multisig_claim([1, 9]).verify(SNAP)  # an outsider's signature does not count
    assert not ok
    ok, reason = multisig_claim([1, 2], declared=[pub(i).sec().hex() for i in (1, 2, 4)]).verify(SNAP)
    assert not ok and "key set" in reason
    good = multisig_claim([1, 2])
    ok, reason = verify_multisig_ownership(p2wpkh(1), "m", good.script, good.pubkeys, 2, good.signatures, NET)
    assert not ok and "does not hash" in reason


def test_bitcoin_reserves_from_utxo_registry(tmp_path) -> None:
    ms = multisig_claim([2, 3])
    single = btc_claim(1)
    forged = btc_claim(5, signer=6)
    utxos = [
        Utxo("aa" * 32, 0, single.address, 50_000, 100),
        Utxo("bb" * 32, 1, single.address, 7_000, 101, spent_height=105),   # spent before the height
        Utxo("cc" * 32, 0, single.address, 9_000, 111),                     # after the height
        Utxo("dd" * 32, 0, ms.address, 1_000_000, 90),
        Utxo("ee" * 32, 0, forged.address, 123_456, 90),
    ]
    registry = tmp_path / "utxos.json"
    registry.write_text(json.dumps({"chain": "bitcoin", "asset": "BTC", "height": 120, "utxos": [
        {"txid": u.txid, "vout": u.vout, "address": u.address, "value_minor": str(u.value_minor),
         "height": u.height, "spent_height": u.spent_height} for u in utxos]}))
    reader = UtxoRegistryReader.from_file(registry)
    claims = [single, ms, forged, single, multisig_claim([3, 1])]
    result = prove_reserves(SNAP, claims, {"bitcoin": reader}, {"bitcoin": 110})
    assert [r.status.split(":")[0] for r in result.addresses] == ["counted", "counted", "rejected", "duplicate",
                                                                    "duplicate"]
    assert result.reserves_minor == {"BTC": 50_000 + 1_000_000}
    assert reader.balance_of(single.address, "BTC", 104) == 57_000


def test_claim_for_unknown_chain_does_not_count() -> None:
    result = prove_reserves(SNAP, [btc_claim(1)], {})
    assert result.reserves_minor == {"BTC": 0}
    assert result.addresses[0].status.startswith("rejected")


# ---- report -------------------------------------------------------------------------------------

def test_coverage_is_integer_arithmetic() -> None:
    assert coverage_percent(163, 100) == "163.00"
    assert coverage_percent(2, 3) == "66.66"
    assert coverage_percent(10**30 + 1, 10**30) == "100.00"
    assert coverage_percent(5, 0) is None


def test_report_json_and_html(tmp_path) -> None:
    registry = BalanceRegistryReader("ethereum", 10, {"ETH": {"0xAbC": 163}})
    from eth_account import Account
    from eth_account.messages import encode_defunct

    acct = Account.from_key(key(3))
    registry = BalanceRegistryReader("ethereum", 10, {"ETH": {acct.address: 163 * 10**16}})
    sig = acct.sign_message(encode_defunct(text=ownership_message(SNAP, "ethereum", acct.address))).signature.hex()
    reserves = prove_reserves(SNAP, [OwnershipClaim("ethereum", "ETH", acct.address, "evm", signature=sig)],
                              {"ethereum": registry})
    root_doc = {"version": "ringfence-por-v1", "snapshot_id": SNAP, "assets": ["BTC", "ETH"],
                "root": {"hash": "ab" * 32, "sums": ["0", str(10**18)], "leaf_count": 4}}
    report = build_report(root_doc, [AssetSpec("BTC", 8), AssetSpec("ETH", 18)], reserves,
                          {"ETH": 10**17}, {"ETH": 5}, "file:x")
    eth = report["assets"][1]
    assert eth["coverage_percent"] == "163.00"
    assert eth["coverage_excluding_shield_fund_percent"] == "153.00"
    assert report["assets"][0]["coverage_percent"] is None
    assert report["chain_heights"] == {"ethereum": 10}
    page = render_html(report)
    assert "<svg" in page and "163.00%" in page and "shield fund" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<script" not in page
