"""Per-user deposit addresses from an account-level extended PUBLIC key (BIP-32/44/84/86).

The server holds only account xpubs (depth 3: m/purpose'/coin'/account'); it derives the external
chain `.../0/i` for user index `i`, non-hardened, so no private key is ever needed or accepted here.
An extended *private* key is refused before it is parsed, with an error that says why.

Schemes (bip-utils 2.12.3):
* BIP-44 Bitcoin  -> P2PKH (`1...`, `m...`)
* BIP-84 Bitcoin  -> P2WPKH (`bc1q...`), account key as zpub/vpub (SLIP-132) or plain xpub/tpub
* BIP-86 Bitcoin  -> P2TR key path (`bc1p...`), BIP-341 tweak with an empty script tree
* BIP-44 Ethereum -> EIP-55 address of m/44'/60'/0'/0/i

Invariants: the same (xpub, index) always gives the same address; index < 2**31; the account key
must be at depth 3 (an address-level or root key is a configuration mistake and is refused).
"""

from __future__ import annotations

import enum

from bip_utils import (
    Bip44,
    Bip44Changes,
    Bip44Coins,
    Bip84,
    Bip84Coins,
    Bip86,
    Bip86Coins,
)
from embit import base58

from ..errors import ValidationError

__all__ = ["Scheme", "derive_deposit_address", "MAX_ADDRESS_INDEX"]

MAX_ADDRESS_INDEX = 2**31 - 1
_PRIVATE_PREFIXES = ("xprv", "tprv", "yprv", "zprv", "uprv", "vprv", "Yprv", "Zprv", "Uprv", "Vprv")
# SLIP-132 version bytes of public keys, to re-tag plain xpub/tpub as zpub/vpub for bip-utils
_XPUB, _TPUB = bytes.fromhex("0488b21e"), bytes.fromhex("043587cf")
_ZPUB, _VPUB = bytes.fromhex("04b24746"), bytes.fromhex("045f1cf6")


class Scheme(str, enum.Enum):
    BIP44_BTC = "bip44-btc"
    BIP84_BTC = "bip84-btc"
    BIP86_BTC = "bip86-btc"
    BIP44_ETH = "bip44-eth"


def _coin(scheme: Scheme, network: str):
    testnet = network in ("testnet", "signet", "regtest")
    if scheme is Scheme.BIP44_ETH:
        # Ethereum addresses carry no network; the chain id lives in each signed transaction
        return Bip44, Bip44Coins.ETHEREUM
    if network not in ("mainnet", "testnet", "signet", "regtest"):
        raise ValidationError(
            f"unknown Bitcoin network {network!r}; allowed: mainnet, testnet, signet, regtest", field="network"
        )
    regtest = network == "regtest"
    if scheme is Scheme.BIP44_BTC:
        return Bip44, (Bip44Coins.BITCOIN_REGTEST if regtest else Bip44Coins.BITCOIN_TESTNET if testnet else Bip44Coins.BITCOIN)
    if scheme is Scheme.BIP84_BTC:
        return Bip84, (Bip84Coins.BITCOIN_REGTEST if regtest else Bip84Coins.BITCOIN_TESTNET if testnet else Bip84Coins.BITCOIN)
    return Bip86, (Bip86Coins.BITCOIN_REGTEST if regtest else Bip86Coins.BITCOIN_TESTNET if testnet else Bip86Coins.BITCOIN)


def _normalise_key(account_xpub: str, scheme: Scheme) -> str:
    if not isinstance(account_xpub, str) or not 100 <= len(account_xpub) <= 120:
        raise ValidationError("must be a base58 extended public key", field="account_xpub")
    if account_xpub.startswith(_PRIVATE_PREFIXES):
        raise ValidationError(
            "is an extended PRIVATE key; the server derives deposit addresses from public keys only",
            field="account_xpub",
        )
    try:
        raw = base58.decode_check(account_xpub)
    except Exception:
        raise ValidationError("bad checksum or not base58 (extended public key)", field="account_xpub") from None
    if len(raw) != 78:
        raise ValidationError("is not a 78-byte BIP-32 extended key", field="account_xpub")
    if raw[45] == 0:
        raise ValidationError(
            "is an extended PRIVATE key; the server derives deposit addresses from public keys only",
            field="account_xpub",
        )
    if raw[4] != 3:
        raise ValidationError(
            f"must be an account-level key (depth 3, m/purpose'/coin'/account'), got depth {raw[4]}",
            field="account_xpub",
        )
    if scheme is Scheme.BIP84_BTC and raw[:4] in (_XPUB, _TPUB):
        # many wallets export BIP-84 accounts as plain xpub/tpub; re-tag for bip-utils' SLIP-132 check
        raw = (_ZPUB if raw[:4] == _XPUB else _VPUB) + raw[4:]
        return base58.encode_check(raw)
    return account_xpub


def derive_deposit_address(account_xpub: str, index: int, scheme: Scheme | str, network: str = "mainnet") -> str:
    """The receive address number `index` of the account behind `account_xpub`."""
    scheme = Scheme(scheme)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_ADDRESS_INDEX:
        raise ValidationError(f"must be an integer 0..{MAX_ADDRESS_INDEX}", field="index")
    cls, coin = _coin(scheme, network)
    key = _normalise_key(account_xpub, scheme)
    try:
        account = cls.FromExtendedKey(key, coin)
    except Exception as exc:
        raise ValidationError(
            f"is not a valid {scheme.value} account key for {network}: {exc}", field="account_xpub"
        ) from None
    if not account.IsPublicOnly():
        raise ValidationError("must be a public key", field="account_xpub")
    return account.Change(Bip44Changes.CHAIN_EXT).AddressIndex(index).PublicKey().ToAddress()
