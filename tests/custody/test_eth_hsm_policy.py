"""The ETH hot wallet's HSM and its policy side (custody/eth_hsm.py, issue 16 item 3), with the real
HSM process (SoftHSM2 tokens) and a real engine: the policy attests a payment out of the hot wallet
only to one of the exchange's own wallets or to a withdrawal the engine has in state `signing`, and
the proof of reserves' message only for the hot address; everything else is refused before the HSM
sees it. The live path (a withdrawal through the Binance API) is
tests/api/test_capital.py::test_eth_withdrawal_is_signed_in_the_hsm_process_and_mined."""

from __future__ import annotations

import json

import pytest
from eth_utils import keccak, to_checksum_address
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from ringfence.custody.eth_hsm import EthHotHsm
from ringfence.custody.localnet import LocalNet
from ringfence.custody.wallets import build_eth_payment, erc20_transfer_data
from ringfence.errors import SigningRefused
from ringfence.solvency.reserves import ownership_message


def test_the_policy_side_attests_only_own_wallets_and_engine_approved_withdrawals(tmp_path, eth_chain) -> None:
    hsm = EthHotHsm(tmp_path / "hsm").wait_ready()
    try:
        net = LocalNet(tmp_path / "node", eth=eth_chain, key_seed="hsm-policy", hot_signer=hsm, hot_key_id="eth-hot")
        net.bootstrap()
        hsm.node = net.node
        assert net.eth_hot == hsm.address
        net.eth_send(hsm.address, 10**18)
        net.eth_mine()
        fee = net.eth.estimate_fee()

        def pay(to: str, request_id: str, *, value_wei: int = 10**15, data: bytes = b"", gas: int = 21_000):
            nonce = net.eth.w3.eth.get_transaction_count(hsm.address)
            return build_eth_payment(net.eth, key_id="eth-hot", signer=hsm, to=to, value_wei=value_wei, nonce=nonce,
                                     max_fee_per_gas=fee.fee_rate_minor, priority_fee_per_gas=fee.priority_fee_minor,
                                     request_id=request_id, reason="test", data=data, gas=gas)

        stranger = "0x" + "12" * 20
        with pytest.raises(SigningRefused, match="no withdrawal in state signing") as refused:
            pay(stranger, "theft-1")
        assert refused.value.field == "to"
        with pytest.raises(SigningRefused, match="ERC-20 transfer"):  # any other contract call
            pay(net.cold["eth"], "call-1", value_wei=0, data=bytes.fromhex("deadbeef"), gas=100_000)
        with pytest.raises(SigningRefused, match="not a token contract"):  # a transfer() on a contract that is no custodied token
            pay(stranger, "token-1", value_wei=0, data=erc20_transfer_data(stranger, 5), gas=100_000)
        message = ownership_message("ab" * 16, "ethereum", stranger)
        data = message.encode()
        with pytest.raises(SigningRefused, match="proof of reserves' message for its address"):
            hsm.attest_message(message, keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data))
        log = tmp_path / "hsm" / "keyops.jsonl"
        ops = log.read_text() if log.exists() else ""  # written at the HSM's first operation
        assert "hsm_sign" not in ops and "policy_approve" not in ops, "a refused payment reached the HSM"

        # a move to the exchange's own cold wallet is attested, signed in the HSM and accepted by the chain
        before = net.eth.balance(net.cold["eth"])
        raw, txid, _ = pay(net.cold["eth"], "to-cold-1")
        net.eth.broadcast(raw)
        net.eth_mine()
        assert net.eth.balance(net.cold["eth"]) - before == 10**15
        entries = [json.loads(line) for line in (tmp_path / "hsm" / "keyops.jsonl").read_text().splitlines()]
        signed = [e for e in entries if e.get("action") == "hsm_sign"]
        assert len(signed) == 1 and "to-cold-1" in signed[0]["reason"] and signed[0]["approved_by"] == "custody-policy"

        # the HSM process dies: the next request starts it again on the same tokens, and the same key signs
        hsm.proc.kill()
        hsm.proc.wait()
        raw, _, _ = pay(net.cold["eth"], "to-cold-2")
        net.eth.broadcast(raw)
        net.eth_mine()
        assert hsm.restarts == 1 and hsm.address == net.eth_hot
        assert net.eth.balance(net.cold["eth"]) - before == 2 * 10**15
    finally:
        hsm.close()


@seed(16)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(to=st.binary(min_size=20, max_size=20), value=st.integers(0, 10**24), nonce=st.integers(0, 2**32),
       own=st.sampled_from(["", "eth_cold", "deposit"]))
def test_property_the_policy_attests_a_payment_only_to_the_exchange_or_an_approved_withdrawal(
        tmp_path_factory, eth_chain, to, value, nonce, own) -> None:
    """With no withdrawal in state `signing`, a payment from the hot wallet is attested exactly when its
    destination is one of the exchange's own wallets or deposit addresses, and the attestation is
    for exactly that transaction's digest (seed 16)."""
    from ringfence.custody.state import custody_state
    from ringfence.custody.wallets import eth_signing_digest

    print("seed 16:", to.hex(), value, nonce, own)
    hsm, net = _policy_rig(tmp_path_factory, eth_chain)
    wallets = net.node.read(lambda e: {w.name: list(w.addresses) for w in custody_state(e).wallets.values()})
    addresses = {"eth_cold": net.cold["eth"], "deposit": _RIG["alice"]}
    dest = addresses[own] if own else to_checksum_address("0x" + to.hex())
    params = dict(to=dest, value_wei=value, nonce=nonce, max_fee_per_gas=10**9, priority_fee_per_gas=10**8, data=b"", gas=21_000)
    digest = eth_signing_digest(net.eth, **params)
    known = {a.lower() for ws in wallets.values() for a in ws} | {a.lower() for a in addresses.values()}
    if own or dest.lower() in known:
        att = hsm.attest_payment(net.eth, params, digest)
        assert att.transfer_digest == digest and att.key_id == "eth-hot"
    else:
        with pytest.raises(SigningRefused):
            hsm.attest_payment(net.eth, params, digest)
    other = eth_signing_digest(net.eth, **{**params, "nonce": nonce + 1})
    with pytest.raises(SigningRefused, match="digest is not the transaction's"):
        hsm.attest_payment(net.eth, params, other)


_RIG: dict[str, object] = {}


def _policy_rig(tmp_path_factory, eth_chain):
    """One HSM process and one engine for every example (stopped when the module's tests end)."""
    if "hsm" not in _RIG:
        root = tmp_path_factory.mktemp("hsm-property")
        hsm = EthHotHsm(root / "hsm").wait_ready()
        net = LocalNet(root / "node", eth=eth_chain, key_seed="hsm-property", hot_signer=hsm, hot_key_id="eth-hot")
        net.bootstrap()
        hsm.node = net.node
        _RIG.update(hsm=hsm, net=net, alice=net.open_user("alice")["ethereum"])
    return _RIG["hsm"], _RIG["net"]


@pytest.fixture(scope="module", autouse=True)
def _stop_rig():
    yield
    if "hsm" in _RIG:
        _RIG.pop("hsm").close()  # type: ignore[attr-defined]
        _RIG.clear()


def test_deposit_cold_and_shield_keys_sign_only_what_the_engine_justifies(tmp_path_factory, eth_chain) -> None:
    """The other Ethereum keys of the HSM process (issue 16, item 3): a deposit address's key, made in
    the token when the address is assigned, is attested only for a sweep to the hot wallet and only
    once the engine has the address assigned; the cold key only for a rebalance the engine authorized
    (none here: refused); the shield vault's key never for a payment, only for its own proof of
    reserves' message. The attestation names the key's token label, so it signs with no other key."""
    from ringfence.custody.wallet_cmds import AssignDepositAddress
    from ringfence.custody.wallets import eth_signing_digest
    from ringfence.ledger.commands import OpenAccount

    hsm, net = _policy_rig(tmp_path_factory, eth_chain)
    address = hsm.deposit_address("carol")
    assert hsm.deposit_address("carol") == address != hsm.deposit_address("dave"), "one key per account, the same on every call"

    def params(to: str, **kw):
        p = dict(to=to, value_wei=10**15, nonce=0, max_fee_per_gas=10**9, priority_fee_per_gas=10**8, data=b"", gas=21_000)
        return {**p, **kw}

    sweep = params(net.eth_hot)
    digest = eth_signing_digest(net.eth, **sweep)
    with pytest.raises(SigningRefused, match="no decision of the engine"):  # not yet an assigned deposit address
        hsm.attest_payment(net.eth, sweep, digest, key_id="dep-eth-carol")
    net.execute(OpenAccount("carol", "ETH"))
    net.execute(AssignDepositAddress("carol", "ethereum", "eth_deposit", address))
    att = hsm.attest_payment(net.eth, sweep, digest, key_id="dep-eth-carol")
    assert att.key_id == hsm.label("dep-eth-carol") and att.transfer_digest == digest
    for to in (net.cold["eth"], "0x" + "12" * 20, _RIG["alice"]):  # another wallet of the exchange is no sweep either
        p = params(to)
        with pytest.raises(SigningRefused, match="no decision of the engine"):
            hsm.attest_payment(net.eth, p, eth_signing_digest(net.eth, **p), key_id="dep-eth-carol")
    for key_id in ("eth-cold", "eth-shield"):
        with pytest.raises(SigningRefused, match="no decision of the engine"):
            hsm.attest_payment(net.eth, sweep, digest, key_id=key_id)
    message = ownership_message("ab" * 16, "ethereum", hsm.shield_address)
    data = message.encode()
    por = keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)
    assert hsm.attest_message(message, por, key_id="eth-shield").key_id == "eth-shield"
    with pytest.raises(SigningRefused, match="message for its address"):
        hsm.attest_message(message, por, key_id="eth-cold")


def test_a_bitcoin_deposit_key_signs_only_a_sweep_to_the_hot_wallet(tmp_path_factory, eth_chain) -> None:
    """A Bitcoin deposit address's key is in the HSM too (token rf-btc-deposits): the policy attests an
    input only for its own BIP-143 sighash, of a transaction whose every output pays `btc_hot`, from an
    address the engine assigned; anything else is refused before the HSM sees it."""
    import hashlib

    from bitcointx.core import COutPoint, CMutableTransaction, CTxIn, CTxOut
    from bitcointx.core.script import CScript, OP_CHECKSIG, OP_DUP, OP_EQUALVERIFY, OP_HASH160, SIGHASH_ALL, \
        SIGVERSION_WITNESS_V0, SignatureHash

    from ringfence.custody.wallet_cmds import AssignDepositAddress
    from ringfence.custody.wallets import p2wpkh_address
    from ringfence.ledger.commands import OpenAccount

    hsm, net = _policy_rig(tmp_path_factory, eth_chain)
    pub = hsm.public_key("dep-bit-erin")
    address = p2wpkh_address(pub)
    script_code = CScript([OP_DUP, OP_HASH160, hashlib.new("ripemd160", hashlib.sha256(pub).digest()).digest(),
                           OP_EQUALVERIFY, OP_CHECKSIG])

    def sweep(to: str):
        tx = CMutableTransaction([CTxIn(COutPoint(bytes(32), 0))], [CTxOut(90_000, CScript(net.btc.script_of_address(to)))])
        return tx, bytes(SignatureHash(script_code, tx, 0, SIGHASH_ALL, amount=100_000, sigversion=SIGVERSION_WITNESS_V0))

    tx, digest = sweep(net.btc_hot)
    with pytest.raises(SigningRefused, match="nothing but a sweep"):  # not yet an assigned deposit address
        hsm.attest_btc_input(net.btc, tx, 100_000, 0, "dep-bit-erin", digest)
    net.execute(OpenAccount("erin", "BTC"))
    net.execute(AssignDepositAddress("erin", "bitcoin", "btc_deposit", address))
    att = hsm.attest_btc_input(net.btc, tx, 100_000, 0, "dep-bit-erin", digest)
    assert att.key_id == hsm.label("dep-bit-erin") and att.transfer_digest == digest
    with pytest.raises(SigningRefused, match="not the transaction input's"):  # another amount: another sighash
        hsm.attest_btc_input(net.btc, tx, 100_001, 0, "dep-bit-erin", digest)
    import coincurve

    stranger = p2wpkh_address(coincurve.PrivateKey(b"\x07" * 32).public_key.format())
    for to in (net.cold["btc"], stranger):  # the exchange's cold wallet is no sweep's destination either
        other, other_digest = sweep(to)
        with pytest.raises(SigningRefused, match="nothing but a sweep"):
            hsm.attest_btc_input(net.btc, other, 100_000, 0, "dep-bit-erin", other_digest)
    with pytest.raises(SigningRefused, match="only a Bitcoin deposit key"):
        hsm.attest_btc_input(net.btc, tx, 100_000, 0, "eth-hot", digest)


def test_the_cold_key_in_the_hsm_pays_a_refill_the_engine_authorized(tmp_path, eth_chain) -> None:
    """The cold wallet's key in the HSM (token rf-eth-vaults): a drain to it (hot key) and, once a new band
    asks for it, a refill out of it are each authorized by the engine, attested and signed in the HSM
    process, and land on chain; a payment from cold that no authorized rebalance names is refused."""
    import copy

    from ringfence.custody.commands import ActivatePolicy
    from ringfence.custody.localnet import DEFAULT_POLICY
    from ringfence.custody.rebalance import Rebalancer, WalletKey
    from ringfence.custody.wallets import eth_signing_digest

    from .flows import fund_eth

    def band(lo: int, mid: int, hi: int) -> dict:
        p = copy.deepcopy(DEFAULT_POLICY)
        p["balancing"] = [{"asset": "ETH", "hot_min_bp": lo, "hot_target_bp": mid, "hot_max_bp": hi}]
        return p

    hsm = EthHotHsm(tmp_path / "hsm").wait_ready()
    try:
        net = LocalNet(tmp_path / "node", eth=eth_chain, key_seed="hsm-cold", hot_signer=hsm, hot_key_id="eth-hot")
        net.cold["eth"] = hsm.cold_address  # the engine's eth_cold is the HSM's key
        net.bootstrap(band(4_000, 5_000, 6_000))
        hsm.node = net.node
        fund_eth(net, "cold", 10 * 10**18)
        rb = Rebalancer(net.node, net.eth, net.eth_balancer, assets=["ETH"], hot=WalletKey("eth_hot", net.eth_hot, "eth-hot", hsm),
                        cold=WalletKey("eth_cold", hsm.cold_address, "eth-cold", hsm))
        net.tick()
        assert rb.step() == 1, rb.last_refusal  # the drain, signed by the hot key
        net.eth_mine(3)
        net.eth_balancer.record_confirmed("ETH", 1)
        cold_before = net.eth.balance(hsm.cold_address)
        assert cold_before > 0
        theft = dict(to=net.eth_hot, value_wei=10**15, nonce=0, max_fee_per_gas=10**9, priority_fee_per_gas=10**8, data=b"", gas=21_000)
        with pytest.raises(SigningRefused, match="no decision of the engine"):  # no authorized rebalance names it
            hsm.attest_payment(net.eth, theft, eth_signing_digest(net.eth, **theft), key_id="eth-cold")

        net.execute(net.desk.propose_policy("p-band-2", json.dumps(band(9_000, 9_500, 10_000)), "pat"))
        net.execute(net.desk.approve_policy(net.node.engine, "p-band-2", "pia"))
        net.execute(net.desk.approve_policy(net.node.engine, "p-band-2", "pol"))
        net.advance(24 * 3600 + 1)
        net.execute(ActivatePolicy("p-band-2"))
        net.tick()
        assert rb.step() == 1, rb.last_refusal  # the refill, signed by the cold key in the HSM
        net.eth_mine(3)
        net.eth_balancer.record_confirmed("ETH", 1)
        assert net.eth.balance(hsm.cold_address) < cold_before
        assert net.ledger.custody("ETH", "eth_cold").balance == net.eth.balance(hsm.cold_address)
        ops = [json.loads(line) for line in (tmp_path / "hsm" / "keyops.jsonl").read_text().splitlines()]
        assert any(o.get("action") == "hsm_sign" and o.get("key_id") == "eth-cold" for o in ops)
    finally:
        hsm.close()


def test_the_bitcoin_shield_vaults_three_hsm_keys_sign_only_its_proof_of_reserves(tmp_path_factory, eth_chain) -> None:
    """The Bitcoin shield vault (P2WSH 2-of-3) has its three keys in three tokens of the HSM process
    (issue 16, item 3): its address is `wsh(sortedmulti(2, k0, k1, k2))` of their public keys; the
    policy attests none of them for a payment (neither an Ethereum transaction nor a Bitcoin input),
    and attests only the proof of reserves' message naming the vault's address. Two of them sign a
    snapshot's multisig claim through the reserve source, and the verifier accepts it."""
    from bitcointx.core import COutPoint, CMutableTransaction, CTxIn, CTxOut
    from bitcointx.core.script import CScript

    from ringfence.custody.eth_hsm import BTC_SHIELD_KEY_IDS, shield_btc_script
    from ringfence.custody.wallets import eth_signing_digest, p2wsh_address
    from ringfence.keys.interface import Scheme, SigningRequest
    from ringfence.errors import AttestationInvalid
    from ringfence.solvency.reserve_source import SignerReserveSource, WalletKeys
    from ringfence.solvency.reserves import bitcoin_message_hash

    hsm, net = _policy_rig(tmp_path_factory, eth_chain)
    pubs = [hsm.public_key(k) for k in BTC_SHIELD_KEY_IDS]
    assert len(set(pubs)) == 3 and hsm.shield_btc_address == p2wsh_address(shield_btc_script(pubs))
    record = json.loads((hsm.dir.parent / "eth-hot.json").read_text())["shield_btc"]
    assert record["address"] == hsm.shield_btc_address
    assert {v["token"] for v in record["keys"].values()} == {f"rf-{k}" for k in BTC_SHIELD_KEY_IDS}, "a token per key"

    spend = CMutableTransaction([CTxIn(COutPoint(bytes(32), 0))], [CTxOut(90_000, CScript(net.btc.script_of_address(net.btc_hot)))])
    p = dict(to=net.eth_hot, value_wei=10**15, nonce=0, max_fee_per_gas=10**9, priority_fee_per_gas=10**8, data=b"", gas=21_000)
    for key_id in BTC_SHIELD_KEY_IDS:
        with pytest.raises(SigningRefused, match="only a Bitcoin deposit key"):  # not even to the exchange's hot wallet
            hsm.attest_btc_input(net.btc, spend, 100_000, 0, key_id, b"\x01" * 32)
        with pytest.raises(SigningRefused, match="no decision of the engine"):
            hsm.attest_payment(net.eth, p, eth_signing_digest(net.eth, **p), key_id=key_id)

    message = ownership_message("cd" * 16, "bitcoin", hsm.shield_btc_address)
    digest = bitcoin_message_hash(message)
    att = hsm.attest_message(message, digest, key_id="btc-shield-1")
    assert att.key_id == "btc-shield-1" and att.transfer_digest == digest
    with pytest.raises(AttestationInvalid):  # the attestation names its key: another token does not sign with it
        hsm.sign(SigningRequest("r-shield", "btc-shield-2", digest, Scheme.ECDSA_SECP256K1, "test", "por", att))
    for other in (net.btc_hot, net.cold["btc"]):  # another address of the exchange is not the vault's message
        with pytest.raises(SigningRefused, match="message for its address"):
            hsm.attest_message(ownership_message("cd" * 16, "bitcoin", other), bitcoin_message_hash(
                ownership_message("cd" * 16, "bitcoin", other)), key_id="btc-shield-0")
    with pytest.raises(SigningRefused, match="not the message's"):
        hsm.attest_message(message, b"\x02" * 32, key_id="btc-shield-0")

    vault = WalletKeys("bitcoin", ("BTC",), hsm.shield_btc_address, tuple((hsm, k) for k in BTC_SHIELD_KEY_IDS),
                       script_hex=shield_btc_script(pubs).hex(), threshold=2)
    snapshot = "ef" * 16
    (claim,) = SignerReserveSource("shield", [vault], {"bitcoin": net.btc}).evidence(snapshot).claims
    assert claim.type == "bitcoin-multisig" and len(claim.signatures) == 2
    assert claim.verify(snapshot)[0], claim.verify(snapshot)
    assert not claim.verify("01" * 16)[0], "a claim is for its snapshot only"


@seed(163)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(snapshot=st.binary(min_size=1, max_size=32), vault=st.booleans(), chain=st.sampled_from(["bitcoin", "ethereum"]),
       other=st.text("023456789acdefghjklmnpqrstuvwxyz", min_size=20, max_size=62), key=st.integers(0, 2))
def test_property_a_shield_key_attests_exactly_the_vaults_proof_message(tmp_path_factory, eth_chain, snapshot, vault,
                                                                        chain, other, key) -> None:
    """A shield vault key's message is attested exactly when it is the proof of reserves' message on
    bitcoin naming the vault's address (seed 163)."""
    from ringfence.solvency.reserves import bitcoin_message_hash

    print("seed 163:", snapshot.hex(), vault, chain, other, key)
    hsm, _ = _policy_rig(tmp_path_factory, eth_chain)
    address = hsm.shield_btc_address if vault else "bcrt1q" + other
    message = ownership_message(snapshot.hex(), chain, address)
    digest = bitcoin_message_hash(message)
    if vault and chain == "bitcoin":
        assert hsm.attest_message(message, digest, key_id=f"btc-shield-{key}").transfer_digest == digest
    else:
        with pytest.raises(SigningRefused, match="message for its address"):
            hsm.attest_message(message, digest, key_id=f"btc-shield-{key}")
