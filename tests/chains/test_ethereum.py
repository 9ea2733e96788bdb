"""The Ethereum adapter against the in-process eth-tester chain: real signed txs, reorgs, rejections."""

from __future__ import annotations

import socket

import pytest
import rlp
from eth_account import Account
from web3 import HTTPProvider

from ringfence.chains.adapter import ChainAdapter, Direction, TxState
from ringfence.chains.ethereum import EthDevChain, EthereumAdapter, EthereumSettings
from ringfence.errors import ChainUnavailable, ConfigError, NotFound, TransactionRejected, UnsupportedAsset

USER = Account.from_key((777).to_bytes(32, "big")).address  # a deposit address (key unused by the server)
ONE_ETH = 10**18


@pytest.fixture
def eth() -> EthereumAdapter:
    return EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))


@pytest.fixture
def dev(eth) -> EthDevChain:
    return EthDevChain(eth)


def test_adapters_satisfy_the_protocol(eth, btc):
    assert isinstance(eth, ChainAdapter) and isinstance(btc, ChainAdapter)


def test_transfer_is_confirmed_scanned_and_balanced(eth, dev):
    start = eth.scan(0, [USER]).scanned_to_height
    raw = dev.sign_transfer(dev.dev_key(1), USER, 3 * ONE_ETH)
    sent = eth.broadcast(raw)
    assert not sent.already_known and sent.txid.startswith("0x")
    status = eth.tx_status(sent.txid)
    assert status.state is TxState.CONFIRMED and status.confirmations == 1 and status.succeeded
    dev.mine(4)
    assert eth.confirmations(sent.txid) == 5
    assert eth.balance(USER) == 3 * ONE_ETH
    assert eth.balance(USER, height=status.block_height - 1) == 0
    scan = eth.scan(start, [USER, Account.from_key(dev.dev_key(1)).address])
    transfers = [t for b in scan.blocks for t in b.transfers]
    assert {(t.address, t.direction, t.amount_minor) for t in transfers} == {
        (USER, Direction.IN, 3 * ONE_ETH),
        (Account.from_key(dev.dev_key(1)).address, Direction.OUT, 3 * ONE_ETH),
    }
    assert all(isinstance(t.amount_minor, int) for t in transfers)
    assert scan.scanned_to_height == eth.current_height() and scan.reorg is None
    # a second scan from where the first stopped sees nothing new
    assert eth.scan(scan.scanned_to_height, [USER]).blocks == ()


def test_broadcast_twice_is_one_send(eth, dev):
    raw = dev.sign_transfer(dev.dev_key(2), USER, ONE_ETH)
    first, second = eth.broadcast(raw), eth.broadcast(raw)
    assert first.txid == second.txid and not first.already_known and second.already_known
    assert eth.balance(USER) == ONE_ETH


def test_reorg_replaces_the_deposit_block(eth, dev):
    dev.mine(2)
    snap = dev.snapshot()
    since = eth.scan(0, [USER]).scanned_to_height
    raw = dev.sign_transfer(dev.dev_key(1), USER, 2 * ONE_ETH)
    txid = eth.broadcast(raw).txid
    dev.mine(2)
    first = eth.scan(since, [USER])
    h = eth.tx_status(txid).block_height
    old_hash = eth.block_hash(h)
    assert eth.confirmations(txid) == 3 and any(b.transfers for b in first.blocks)

    dev.reorg_to(snap, 5)  # a longer branch without the deposit
    assert eth.tx_status(txid).state is TxState.UNKNOWN and eth.confirmations(txid) == 0
    assert eth.balance(USER) == 0 and eth.block_hash(h) != old_hash
    again = eth.scan(first.scanned_to_height, [USER])
    assert again.reorg is not None and again.reorg.fork_height == h
    assert again.reorg.replaced[h][0] == old_hash
    assert again.blocks[0].height == h and not any(b.transfers for b in again.blocks)

    # the signed tx is re-broadcast (as a node would re-add it) and lands in a new block
    resent = eth.broadcast(raw)
    assert not resent.already_known
    status = eth.tx_status(txid)
    assert status.block_height > h and status.block_hash != old_hash and status.confirmations == 1


def test_check_reorg_reports_nothing_on_a_stable_chain(eth, dev):
    dev.mine(3)
    eth.scan(0, [USER])
    dev.mine(2)
    assert eth.check_reorg() is None


def test_wrong_chain_id_is_refused_as_wrong_network(eth, dev):
    raw = dev.sign_transfer(dev.dev_key(1), USER, ONE_ETH, chain_id=1)
    with pytest.raises(TransactionRejected) as err:
        eth.broadcast(raw)
    assert err.value.details["reason"] == "wrong_chain" and "chain id 1" in str(err.value)
    assert eth.balance(USER) == 0


def _legacy(eth, key: bytes, chain_id: int | None) -> bytes:
    tx = {"to": USER, "value": ONE_ETH, "gas": 21_000, "gasPrice": 3 * 10**9, "nonce": 0}
    if chain_id is not None:
        tx["chainId"] = chain_id
    return bytes(Account.from_key(key).sign_transaction(tx).raw_transaction)


def test_invalid_signature_and_replayable_and_junk_are_refused(eth, dev):
    fields = rlp.decode(_legacy(eth, dev.dev_key(3), eth.chain_id))
    fields[7] = b""  # r = 0: no sender can be recovered
    with pytest.raises(TransactionRejected) as err:
        eth.broadcast(rlp.encode(fields))
    assert err.value.details["reason"] == "bad_signature"
    with pytest.raises(TransactionRejected) as err:
        eth.broadcast(_legacy(eth, dev.dev_key(3), None))
    assert err.value.details["reason"] == "no_chain_id"
    with pytest.raises(TransactionRejected) as err:
        eth.broadcast(b"\x02\x99junk")
    assert err.value.details["reason"] == "malformed"
    # a valid legacy EIP-155 tx goes through
    assert not eth.broadcast(_legacy(eth, dev.dev_key(3), eth.chain_id)).already_known
    assert eth.balance(USER) == ONE_ETH


def test_unfunded_sender_is_refused_by_the_node(eth, dev):
    poor = (4242).to_bytes(32, "big")
    with pytest.raises(TransactionRejected) as err:
        eth.broadcast(dev.sign_transfer(poor, USER, ONE_ETH))
    assert err.value.details["reason"] == "rejected"


def test_fee_estimate_finality_and_assets(eth):
    fee = eth.estimate_fee()
    assert fee.unit == "gas" and isinstance(fee.fee_rate_minor, int)
    assert fee.fee_rate_minor > fee.priority_fee_minor > 0
    assert eth.finality_depth("ETH") == 64
    with pytest.raises(UnsupportedAsset) as err:
        eth.finality_depth("USDT")
    assert err.value.field == "asset"
    with pytest.raises(NotFound):
        eth.block_hash(10_000)
    with pytest.raises(NotFound):
        eth.balance(USER, height=10_000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_url_setting_switches_to_http_provider():
    url = f"http://127.0.0.1:{_free_port()}"
    settings = EthereumSettings.from_env({"RINGFENCE_ETH_RPC_URL": url})
    adapter = EthereumAdapter.from_settings(settings)
    assert isinstance(adapter.w3.provider, HTTPProvider) and adapter.network == "rpc"
    with pytest.raises(ChainUnavailable):  # nothing listens there: a clear, retryable error
        adapter.current_height()
    with pytest.raises(ConfigError) as err:
        EthereumSettings.from_env({"RINGFENCE_ETH_RPC_URL": "ftp://node"})
    assert err.value.field == "RINGFENCE_ETH_RPC_URL"
    assert EthereumSettings.from_env({}).rpc_url is None


def test_pending_tx_is_pending_and_rebroadcast_is_idempotent(eth, dev):
    dev.auto_mine(False)
    raw = dev.sign_transfer(dev.dev_key(4), USER, ONE_ETH)
    sent = eth.broadcast(raw)
    status = eth.tx_status(sent.txid)
    assert status.state is TxState.PENDING and status.confirmations == 0
    assert eth.broadcast(raw).already_known
    assert eth.balance(USER) == 0
    dev.mine(1)
    assert eth.tx_status(sent.txid).state is TxState.CONFIRMED and eth.balance(USER) == ONE_ETH
    assert eth.broadcast(raw).already_known
