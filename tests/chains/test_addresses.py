"""Address validation: checksums, networks, formats — each refusal names the field and the rule."""

from __future__ import annotations

import pytest
from embit import bech32

from ringfence.chains.bitcoin.address import address_to_script, script_to_address, validate_address
from ringfence.chains.ethereum import validate_eth_address
from ringfence.errors import InvalidAddress

# BIP-173 / BIP-350 valid mainnet examples, and BIP-84/86/44 first addresses of "abandon ... about"
P2WPKH_MAIN = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
P2TR_MAIN = "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
P2PKH_MAIN = "1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA"
ETH = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"


def _flip(s: str, i: int) -> str:
    alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l" if s[:2] in ("bc", "tb") else "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    c = s[i]
    return s[:i] + alphabet[(alphabet.index(c) + 1) % len(alphabet)] + s[i + 1 :]


@pytest.mark.parametrize("addr", [P2WPKH_MAIN, P2TR_MAIN, P2PKH_MAIN, P2WPKH_MAIN.upper()])
def test_valid_mainnet_addresses_round_trip(addr):
    canonical = validate_address(addr, "mainnet")
    assert canonical == (addr.lower() if addr.startswith("BC1") else addr)
    assert script_to_address(address_to_script(addr, "mainnet"), "mainnet") == canonical


def test_p2tr_script_is_witness_v1_of_the_bip86_output_key():
    assert address_to_script(P2TR_MAIN, "mainnet").hex() == (
        "5120a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c"
    )


@pytest.mark.parametrize("addr", [P2WPKH_MAIN, P2TR_MAIN, P2PKH_MAIN])
def test_bad_checksum_is_named(addr):
    bad = _flip(addr, len(addr) - 3)
    with pytest.raises(InvalidAddress) as err:
        validate_address(bad, "mainnet", field="withdrawal.address")
    assert err.value.field == "withdrawal.address"
    assert err.value.details["rule"] == "checksum"
    assert "checksum" in str(err.value)
    assert err.value.code == "RF_INVALID_ADDRESS" and isinstance(err.value, ValueError)


@pytest.mark.parametrize("addr", [P2WPKH_MAIN, P2TR_MAIN, P2PKH_MAIN])
def test_mainnet_address_on_regtest_is_wrong_network(addr):
    with pytest.raises(InvalidAddress) as err:
        validate_address(addr, "regtest")
    assert err.value.details["rule"] == "network"
    assert "mainnet" in str(err.value) and "regtest" in str(err.value)


def test_regtest_address_on_mainnet_is_wrong_network():
    regtest = bech32.encode("bcrt", 0, bytes(20))
    with pytest.raises(InvalidAddress, match="wrong network"):
        validate_address(regtest, "mainnet")


def test_taproot_with_bech32_instead_of_bech32m_is_refused():
    wrong_variant = bech32.bech32_encode(
        bech32.Encoding.BECH32, "bc", [1] + bech32.convertbits(bytes(32), 8, 5)
    )
    with pytest.raises(InvalidAddress) as err:
        validate_address(wrong_variant, "mainnet")
    assert err.value.details["rule"] == "checksum_variant"


def test_mixed_case_bech32_is_refused():
    mixed = P2WPKH_MAIN[:10] + P2WPKH_MAIN[10:].upper()
    with pytest.raises(InvalidAddress, match="mixes upper and lower case"):
        validate_address(mixed, "mainnet")


def test_cross_chain_addresses_are_named():
    with pytest.raises(InvalidAddress, match="Ethereum address"):
        validate_address(ETH, "mainnet")
    with pytest.raises(InvalidAddress, match="Bitcoin address"):
        validate_eth_address(P2WPKH_MAIN)
    with pytest.raises(InvalidAddress, match="Bitcoin address"):
        validate_eth_address(P2PKH_MAIN)


def test_eth_checksum_rules():
    assert validate_eth_address(ETH) == ETH
    assert validate_eth_address(ETH.lower()) == ETH  # no checksum present: accepted, returned checksummed
    assert validate_eth_address("0x" + ETH[2:].upper()) == ETH
    # flip the case of one letter: EIP-55 must catch it
    i = next(i for i, c in enumerate(ETH) if i > 1 and c.isalpha())
    bad = ETH[:i] + ETH[i].swapcase() + ETH[i + 1 :]
    with pytest.raises(InvalidAddress) as err:
        validate_eth_address(bad, field="to")
    assert err.value.field == "to" and err.value.details["rule"] == "checksum"
    for junk in ("0x1234", ETH + "00", "9858EfFD232B4033E47d90003D41EC34EcaEda94", "", None):
        with pytest.raises(InvalidAddress):
            validate_eth_address(junk)


def test_junk_bitcoin_input():
    for junk in ("", "not an address", "bc1", "x" * 200, None, 12):
        with pytest.raises(InvalidAddress):
            validate_address(junk, "mainnet")
