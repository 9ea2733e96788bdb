"""Fixtures for the chain-layer tests: a fresh simulator per test, deterministic keys and wallets."""

from __future__ import annotations

import pytest
from embit import bip32
from embit.networks import NETWORKS

from ringfence.chains.bitcoin.adapter import BitcoinAdapter
from ringfence.chains.bitcoin.simulator import BitcoinSimulator

REGTEST = NETWORKS["regtest"]
MINER_SPK = bytes.fromhex("0014" + "ab" * 20)  # an unrelated P2WPKH that collects coinbases


def root_key(n: int) -> bip32.HDKey:
    """Deterministic BIP-32 root for cold signer `n` (test-only seeds)."""
    return bip32.HDKey.from_seed(bytes([n]) * 32, version=REGTEST["xprv"])


def account(root: bip32.HDKey, path: str) -> str:
    """`[fingerprint/path]tpub.../<0;1>/*` — what a cold signer exports to the server."""
    xpub = root.derive(path).to_public().to_base58(REGTEST["xpub"])
    return f"[{root.my_fingerprint.hex()}/{path[2:]}]{xpub}/<0;1>/*"


@pytest.fixture
def sim() -> BitcoinSimulator:
    return BitcoinSimulator()


@pytest.fixture
def btc(sim) -> BitcoinAdapter:
    return BitcoinAdapter(sim, network="regtest")


@pytest.fixture
def signers() -> list[bip32.HDKey]:
    return [root_key(1), root_key(2), root_key(3)]


def fund(sim: BitcoinSimulator, script_pubkey: bytes, blocks: int = 1) -> None:
    """Mine `blocks` coinbases to `script_pubkey` and mature them."""
    sim.mine(blocks, script_pubkey)
    sim.mine(sim.coinbase_maturity, MINER_SPK)
