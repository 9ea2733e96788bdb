"""The Ethereum adapter through web3's HTTPProvider (JSON-RPC over HTTP), as against a real node.

The node is the in-process eth-tester chain behind a loopback JSON-RPC endpoint (eth_rpc_bridge.py);
the adapter under test is configured only by `RINGFENCE_ETH_RPC_URL`.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import HTTPProvider

from ringfence.chains.adapter import Direction, TxState
from ringfence.chains.ethereum import EthDevChain, EthereumAdapter, EthereumSettings
from ringfence.errors import TransactionRejected

from .eth_rpc_bridge import EthRpcBridge

USER = Account.from_key((880).to_bytes(32, "big")).address


@pytest.fixture
def node():
    local = EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))  # the "node" side
    with EthRpcBridge(local.w3) as bridge:
        yield local, EthDevChain(local), bridge


def test_http_adapter_sees_deposits_reorgs_and_is_idempotent(node):
    local, dev, bridge = node
    eth = EthereumAdapter.from_settings(EthereumSettings.from_env({"RINGFENCE_ETH_RPC_URL": bridge.url}))
    assert isinstance(eth.w3.provider, HTTPProvider)
    assert eth.chain_id == local.chain_id and eth.current_height() == local.current_height()

    snap = dev.snapshot()
    raw = dev.sign_transfer(dev.dev_key(1), USER, 7 * 10**17)
    sent = eth.broadcast(raw)  # over HTTP
    assert not sent.already_known and eth.broadcast(raw).already_known
    dev.mine(2)
    status = eth.tx_status(sent.txid)
    assert status.state is TxState.CONFIRMED and status.confirmations == 3 and status.succeeded
    assert eth.balance(USER) == 7 * 10**17 and eth.balance(USER, height=status.block_height - 1) == 0
    scan = eth.scan(0, [USER])
    assert [(t.direction, t.amount_minor) for b in scan.blocks for t in b.transfers] == [(Direction.IN, 7 * 10**17)]
    fee = eth.estimate_fee()
    assert fee.fee_rate_minor > fee.priority_fee_minor > 0

    dev.reorg_to(snap, 4)
    assert eth.tx_status(sent.txid).state is TxState.UNKNOWN and eth.balance(USER) == 0
    assert eth.scan(scan.scanned_to_height, [USER]).reorg.fork_height == status.block_height


def test_http_adapter_token_deposit_and_node_rejection(node):
    local, dev, bridge = node
    contract = dev.deploy_token("USDT")
    eth = EthereumAdapter.from_settings(EthereumSettings(rpc_url=bridge.url))
    eth.add_token("USDT", contract, 6)
    sent = eth.broadcast(dev.sign_token_transfer(dev.dev_key(1), "USDT", USER, 42_000_000))
    assert eth.tx_status(sent.txid).succeeded
    assert eth.balance(USER, asset="USDT") == 42_000_000
    transfers = [t for b in eth.scan(0, [USER]).blocks for t in b.transfers]
    assert [(t.asset, t.amount_minor) for t in transfers] == [("USDT", 42_000_000)]
    with pytest.raises(TransactionRejected) as err:  # the node's JSON-RPC error comes back clearly
        eth.broadcast(dev.sign_transfer((4244).to_bytes(32, "big"), USER, 10**18))
    assert err.value.details["reason"] == "rejected"
