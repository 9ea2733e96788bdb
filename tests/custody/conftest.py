"""Fixtures: one eth-tester chain per test module (starting one costs ~1 s), a fresh LocalNet
(node + Bitcoin simulator + keys unique to the test) per test."""

from __future__ import annotations

import pytest

from ringfence.chains.ethereum import EthereumAdapter, EthereumSettings
from ringfence.custody.localnet import LocalNet


@pytest.fixture(scope="module")
def eth_chain() -> EthereumAdapter:
    return EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))


@pytest.fixture
def net(tmp_path, eth_chain, request) -> LocalNet:
    n = LocalNet(tmp_path / "node", eth=eth_chain, key_seed=request.node.name)
    n.bootstrap()
    return n


def balance(net: LocalNet, owner: str, asset: str, kind: str = "available") -> int:
    acct = net.ledger.find(owner, asset, kind, "spot")
    return acct.balance if acct else 0
