from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.staff import StaffKey
from ringfence.staff.desk import StaffDesk

from . import custody_sim
from ringfence.app import new_node


def operator_keys(n: int = 3) -> dict[str, StaffKey]:
    """Staff operators op1..opN with fixed keys (seed byte i)."""
    return {f"op{i}": StaffKey(f"op{i}", Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32)) for i in range(1, n + 1)}


def public_hex(key: Ed25519PrivateKey | StaffKey) -> str:
    if isinstance(key, StaffKey):
        return key.public_hex
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def desk_for(node, operators: dict[str, StaffKey]) -> StaffDesk:
    """A desk signing for `operators`; these nodes stamp commands with the wall clock."""
    return StaffDesk(operators, time.time_ns)


@pytest.fixture
def operators() -> dict[str, StaffKey]:
    return operator_keys(3)


def operators_node(tmp_path, operators, *extra_modules):
    """A node of the standard modules plus the test custody commands (and `extra_modules`), with
    the operators as the genesis staff (quorum 2)."""
    n = new_node(tmp_path / "node", fsync=False, extra_modules=(custody_sim.MODULE, *extra_modules))
    n.open()
    n.execute(desk_for(n, operators).genesis({k: ["operator"] for k in operators}, 2))
    n.execute(RegisterAsset("ETH", 18, "crypto", "ethereum"))
    n.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    for owner in ("alice", "bob"):
        n.execute(OpenAccount(owner, "ETH"))
        n.execute(OpenAccount(owner, "BTC"))
    return n


@pytest.fixture
def node(tmp_path, operators):
    n = operators_node(tmp_path, operators)
    yield n
    n.close()


@dataclass
class EthWorld:
    adapter: object
    dev: object
    hot_key: bytes
    hot_address: str


@pytest.fixture
def eth() -> EthWorld:
    from eth_account import Account

    from ringfence.chains.ethereum import EthDevChain, EthereumAdapter, EthereumSettings

    adapter = EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))
    dev = EthDevChain(adapter)
    hot_key = bytes([0x42]) * 32
    return EthWorld(adapter, dev, hot_key, Account.from_key(hot_key).address)
