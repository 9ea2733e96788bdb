"""Token deposits: the hand-assembled ERC-20 on the dev chain, seen through the adapter."""

from __future__ import annotations

import pytest
from eth_account import Account

from ringfence.chains.adapter import Direction, TxState
from ringfence.chains.erc20 import ERC20_ABI, INITIAL_SUPPLY_MINOR, assemble, token_runtime_code
from ringfence.chains.ethereum import EthDevChain, EthereumAdapter, EthereumSettings
from ringfence.errors import UnsupportedAsset, ValidationError

USER = Account.from_key((778).to_bytes(32, "big")).address
OTHER = Account.from_key((779).to_bytes(32, "big")).address


@pytest.fixture
def eth_token():
    eth = EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))
    dev = EthDevChain(eth)
    contract = dev.deploy_token("USDT")
    return eth, dev, contract


def test_assembler_resolves_labels_and_pushes():
    code = assemble([("ref", "end"), "JUMPI", ("push", 0x1234), ("label", "end"), "STOP"])
    assert code == bytes([0x61, 0x00, 0x07, 0x57, 0x61, 0x12, 0x34, 0x5B, 0x00])
    assert token_runtime_code()[:1] == b"\x34"  # starts with the CALLVALUE guard


def test_token_behaves_like_erc20_through_the_standard_abi(eth_token):
    eth, dev, contract = eth_token
    token = eth.w3.eth.contract(address=contract, abi=ERC20_ABI)
    owner = Account.from_key(dev.dev_key(1)).address
    assert token.functions.decimals().call() == 6
    assert token.functions.totalSupply().call() == INITIAL_SUPPLY_MINOR
    assert token.functions.balanceOf(owner).call() == INITIAL_SUPPLY_MINOR
    assert eth.balance(owner, asset="USDT") == INITIAL_SUPPLY_MINOR


def test_token_deposit_is_scanned_balanced_and_confirmed(eth_token):
    eth, dev, _ = eth_token
    owner = Account.from_key(dev.dev_key(1)).address
    since = eth.scan(0, [USER]).scanned_to_height
    sent = eth.broadcast(dev.sign_token_transfer(dev.dev_key(1), "USDT", USER, 250_000_000))
    dev.mine(2)
    assert eth.tx_status(sent.txid).succeeded and eth.confirmations(sent.txid) == 3
    assert eth.balance(USER, asset="USDT") == 250_000_000
    assert eth.balance(USER, asset="USDT", height=eth.tx_status(sent.txid).block_height - 1) == 0
    assert eth.balance(USER) == 0  # no ETH moved to the user
    scan = eth.scan(since, [USER, owner])
    token_transfers = [t for b in scan.blocks for t in b.transfers if t.asset == "USDT"]
    assert {(t.address, t.direction, t.amount_minor) for t in token_transfers} == {
        (USER, Direction.IN, 250_000_000),
        (owner, Direction.OUT, 250_000_000),
    }
    assert eth.finality_depth("USDT") == eth.finality_depth("ETH")
    assert set(eth.supported_assets()) == {"ETH", "USDT"}


def test_failed_token_transfer_moves_nothing_and_is_not_reported(eth_token):
    eth, dev, _ = eth_token
    poor = (4243).to_bytes(32, "big")
    eth.broadcast(dev.sign_transfer(dev.dev_key(2), Account.from_key(poor).address, 10**17))  # gas money
    since = eth.current_height()
    sent = eth.broadcast(dev.sign_token_transfer(poor, "USDT", USER, 1))  # holds no tokens
    status = eth.tx_status(sent.txid)
    assert status.state is TxState.CONFIRMED and status.succeeded is False
    assert eth.balance(USER, asset="USDT") == 0
    assert not any(b.transfers for b in eth.scan(since - 1, [USER]).blocks)


def test_token_reorg_reverses_the_deposit(eth_token):
    eth, dev, _ = eth_token
    snap = dev.snapshot()
    since = eth.scan(0, [USER]).scanned_to_height
    txid = eth.broadcast(dev.sign_token_transfer(dev.dev_key(1), "USDT", USER, 5_000_000)).txid
    first = eth.scan(since, [USER])
    assert any(t.asset == "USDT" for b in first.blocks for t in b.transfers)
    dev.reorg_to(snap, 3)
    assert eth.tx_status(txid).state is TxState.UNKNOWN
    assert eth.balance(USER, asset="USDT") == 0
    assert eth.scan(first.scanned_to_height, [USER]).reorg is not None


def test_unknown_token_and_bad_registration(eth_token):
    eth, _, contract = eth_token
    with pytest.raises(UnsupportedAsset) as err:
        eth.balance(USER, asset="DAI")
    assert "USDT" in str(err.value) and err.value.field == "asset"
    with pytest.raises(ValidationError) as err:
        eth.add_token("DAI", OTHER, 18)  # no code there
    assert err.value.field == "contract"
    with pytest.raises(ValidationError):
        eth.add_token("ETH", contract, 6)


def test_hot_wallet_balance_change_equals_reported_transfers_and_fees(eth_token):
    """Reconciliation contract: for a watched sender, balance delta == IN - (OUT + fee), per asset."""
    eth, dev, _ = eth_token
    hot_key = (4250).to_bytes(32, "big")
    hot = Account.from_key(hot_key).address
    eth.broadcast(dev.sign_transfer(dev.dev_key(1), hot, 2 * 10**18))
    eth.broadcast(dev.sign_token_transfer(dev.dev_key(1), "USDT", hot, 900))
    start = eth.current_height()
    eth_before, usdt_before = eth.balance(hot), eth.balance(hot, asset="USDT")

    eth.broadcast(dev.sign_transfer(hot_key, USER, 3 * 10**17))          # ETH withdrawal
    eth.broadcast(dev.sign_token_transfer(hot_key, "USDT", USER, 400))   # token withdrawal
    failed = eth.broadcast(dev.sign_token_transfer(hot_key, "USDT", USER, 10**9))  # reverts: short balance
    eth.broadcast(dev.sign_transfer(dev.dev_key(2), hot, 5))             # a deposit arrives too
    assert eth.tx_status(failed.txid).succeeded is False

    transfers = [t for b in eth.scan(start, [hot]).blocks for t in b.transfers]
    for asset, before in (("ETH", eth_before), ("USDT", usdt_before)):
        delta = sum(t.amount_minor if t.direction is Direction.IN else -(t.amount_minor + t.fee_minor)
                    for t in transfers if t.asset == asset)
        assert eth.balance(hot, asset=asset) - before == delta, asset
    fees = [t for t in transfers if t.fee_minor]
    assert len(fees) == 3 and all(t.asset == "ETH" and t.direction is Direction.OUT for t in fees)
    assert any(t.txid == failed.txid and t.amount_minor == 0 for t in fees)
