"""Deposit addresses from account xpubs, checked against the published BIP-84/86/44 vectors.

All vectors use the BIP-39 mnemonic "abandon abandon ... about". The account keys and addresses
below are the ones printed in BIP-84, BIP-86 and SLIP-132; the Ethereum address is the well-known
m/44'/60'/0'/0/0 of that mnemonic.
"""

from __future__ import annotations

import pytest
from bip_utils import Bip39SeedGenerator, Bip44, Bip44Coins
from embit.descriptor import Descriptor
from embit.networks import NETWORKS

from ringfence.chains.derivation import derive_deposit_address
from ringfence.chains.ethereum import validate_eth_address
from ringfence.errors import ValidationError

from .conftest import account, root_key

BIP84_ZPUB = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
BIP86_XPUB = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"
BIP44_XPUB = "xpub6BosfCnifzxcFwrSzQiqu2DBVTshkCXacvNsWGYJVVhhawA7d4R5WSWGFNbi8Aw6ZRc1brxMyWMzG3DSSSSoekkudhUd9yLb6qx39T9nMdj"
ROOT_XPUB = "xpub661MyMwAqRbcFkPHucMnrGNzDwb6teAX1RbKQmqtEF8kK3Z7LZ59qafCjB9eCRLiTVG3uxBxgKvRgbubRhqSKXnGGb1aoaqLrpMBDrVxga8"
BIP84_ZPRV = "zprvAdG4iTXWBoARxkkzNpNh8r6Qag3irQB8PzEMkAFeTRXxHpbF9z4QgEvBRmfvqWvGp42t42nvgGpNgYSJA9iefm1yYNZKEm7z6qUWCroSQnE"


def test_bip84_vector():
    assert derive_deposit_address(BIP84_ZPUB, 0, "bip84-btc") == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"


def test_bip86_vectors():
    assert derive_deposit_address(BIP86_XPUB, 0, "bip86-btc") == "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
    assert derive_deposit_address(BIP86_XPUB, 1, "bip86-btc") == "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh"


def test_bip44_btc_vector():
    assert derive_deposit_address(BIP44_XPUB, 0, "bip44-btc") == "1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA"


def test_bip44_eth_address_from_account_xpub():
    # the private side exists only here, in the test, to produce the account xpub a cold device exports
    seed = Bip39SeedGenerator("abandon " * 11 + "about").Generate()
    account_xpub = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0).PublicKey().ToExtended()
    addr = derive_deposit_address(account_xpub, 0, "bip44-eth")
    assert addr == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    assert validate_eth_address(addr) == addr  # EIP-55 checksummed
    assert derive_deposit_address(account_xpub, 1, "bip44-eth") != addr


def test_regtest_bip84_matches_embit_descriptor_wallet():
    """Two libraries (bip-utils for deposits, embit for the PSBT wallet) must agree on addresses."""
    root = root_key(7)
    tpub = root.derive("m/84h/1h/0h").to_public().to_base58(NETWORKS["regtest"]["xpub"])
    desc = Descriptor.from_string("wpkh(%s)" % account(root, "m/84h/1h/0h"))
    for i in (0, 1, 5):
        ours = derive_deposit_address(tpub, i, "bip84-btc", network="regtest")
        assert ours == desc.derive(i, branch_index=0).address(NETWORKS["regtest"])
        assert ours.startswith("bcrt1q")


def test_private_keys_are_refused():
    with pytest.raises(ValidationError, match="PRIVATE") as err:
        derive_deposit_address(BIP84_ZPRV, 0, "bip84-btc")
    assert err.value.field == "account_xpub"
    assert BIP84_ZPRV not in str(err.value)  # never echo a secret


def test_wrong_depth_and_bad_checksum_and_index():
    with pytest.raises(ValidationError, match="depth 3"):
        derive_deposit_address(ROOT_XPUB, 0, "bip84-btc")
    with pytest.raises(ValidationError, match="checksum"):
        derive_deposit_address(BIP84_ZPUB[:-1] + ("x" if BIP84_ZPUB[-1] != "x" else "y"), 0, "bip84-btc")
    for bad in (-1, 2**31, "0", True):
        with pytest.raises(ValidationError) as err:
            derive_deposit_address(BIP84_ZPUB, bad, "bip84-btc")
        assert err.value.field == "index"
    with pytest.raises(ValueError):
        derive_deposit_address(BIP84_ZPUB, 0, "bip99-btc")
