"""Bitcoin address validation and address <-> scriptPubKey conversion, network-checked.

Accepts bech32 (witness v0), bech32m (witness v1+, BIP-350) and base58check P2PKH/P2SH addresses.
Every refusal is an `InvalidAddress` naming the field and the rule: bad checksum, wrong network
(with both networks named), mixed case, wrong checksum variant (bech32 vs bech32m), unknown witness
version/program length, or "this is not a Bitcoin address" (e.g. an Ethereum `0x...`).

Invariant: `script_to_address(address_to_script(a, n), n) == canonical(a)` for every valid `a`;
the canonical form of a bech32 address is lowercase.
"""

from __future__ import annotations

from functools import lru_cache

from embit import base58, bech32

from ...errors import InvalidAddress, ValidationError

__all__ = ["NETWORKS", "address_to_script", "script_to_address", "validate_address"]

#: network name -> (bech32 hrp, p2pkh version byte, p2sh version byte)
NETWORKS: dict[str, tuple[str, int, int]] = {
    "mainnet": ("bc", 0x00, 0x05),
    "testnet": ("tb", 0x6F, 0xC4),
    "signet": ("tb", 0x6F, 0xC4),
    "regtest": ("bcrt", 0x6F, 0xC4),
}
_HRP_NETWORK = {"bc": "mainnet", "tb": "testnet/signet", "bcrt": "regtest"}
_B58_NETWORK = {0x00: "mainnet", 0x05: "mainnet", 0x6F: "testnet/regtest", 0xC4: "testnet/regtest"}
MAX_ADDRESS_CHARS = 90
_BECH32_CHARSET = set("qpzry9x8gf2tvdw0s3jn54khce6mua7l")


def _network(network: str) -> tuple[str, int, int]:
    try:
        return NETWORKS[network]
    except KeyError:
        raise ValidationError(
            f"unknown Bitcoin network {network!r}; allowed: {', '.join(NETWORKS)}", field="network"
        ) from None


def validate_address(address: object, network: str, field: str = "address") -> str:
    """Return the canonical address or raise InvalidAddress naming `field` and what is wrong."""
    hrp, p2pkh, p2sh = _network(network)
    if not isinstance(address, str) or not address:
        raise InvalidAddress("must be a non-empty string", field=field, rule="type")
    if len(address) > MAX_ADDRESS_CHARS:
        raise InvalidAddress(f"is longer than {MAX_ADDRESS_CHARS} characters", field=field, rule="length")
    if address.lower().startswith("0x"):
        raise InvalidAddress(
            f"looks like an Ethereum address, not a Bitcoin {network} address", field=field, rule="chain"
        )
    lower = address.lower()
    sep = lower.rfind("1")
    if sep > 0 and lower[:sep] in _HRP_NETWORK and all(c in _BECH32_CHARSET for c in lower[sep + 1 :]):
        return _validate_bech32(address, network, hrp, field)
    return _validate_base58(address, network, p2pkh, p2sh, field)


def _validate_bech32(address: str, network: str, hrp: str, field: str) -> str:
    if address != address.lower() and address != address.upper():
        raise InvalidAddress("bech32 address mixes upper and lower case", field=field, rule="mixed_case")
    lower = address.lower()
    got_hrp = lower[: lower.rfind("1")]
    encoding, dec_hrp, data = bech32.bech32_decode(lower)
    if encoding is None:
        raise InvalidAddress("bad checksum (bech32/bech32m)", field=field, rule="checksum")
    if got_hrp != hrp:
        raise InvalidAddress(
            f"wrong network: address is for {_HRP_NETWORK[got_hrp]} ({got_hrp}), "
            f"this wallet is on {network} ({hrp})",
            field=field,
            rule="network",
        )
    if not data:
        raise InvalidAddress("has no witness program", field=field, rule="program")
    version = data[0]
    if version == 0 and encoding != bech32.Encoding.BECH32:
        raise InvalidAddress("witness v0 must use bech32, not bech32m", field=field, rule="checksum_variant")
    if version != 0 and encoding != bech32.Encoding.BECH32M:
        raise InvalidAddress(
            f"witness v{version} must use bech32m (BIP-350), not bech32", field=field, rule="checksum_variant"
        )
    ver, prog = bech32.decode(hrp, lower)
    if ver is None:
        raise InvalidAddress("witness program has an invalid length", field=field, rule="program")
    if ver == 1 and len(prog) != 32:
        raise InvalidAddress("taproot (v1) program must be 32 bytes", field=field, rule="program")
    if ver > 1:
        raise InvalidAddress(
            f"witness v{ver} outputs are not spendable yet; refusing to send there", field=field, rule="program"
        )
    return lower


def _validate_base58(address: str, network: str, p2pkh: int, p2sh: int, field: str) -> str:
    try:
        raw = base58.decode(address)
    except Exception:
        raise InvalidAddress(
            "is neither bech32 nor base58 (unexpected characters)", field=field, rule="format"
        ) from None
    if len(raw) != 25:
        raise InvalidAddress("base58 payload has the wrong length", field=field, rule="format")
    try:
        payload = base58.decode_check(address)
    except Exception:
        raise InvalidAddress("bad checksum (base58check)", field=field, rule="checksum") from None
    version = payload[0]
    if version not in (p2pkh, p2sh):
        where = _B58_NETWORK.get(version, f"unknown version byte 0x{version:02x}")
        raise InvalidAddress(
            f"wrong network: address is for {where}, this wallet is on {network}", field=field, rule="network"
        )
    return address


#: Conversions remembered (both ways): embit's bech32 is pure Python and a deposit's KYT reads the
#: addresses of many scripts. Both functions are pure, so a cached answer is the answer.
CACHE_ENTRIES = 1 << 16


def address_to_script(address: str, network: str, field: str = "address") -> bytes:
    """The scriptPubKey an address pays to (after full validation)."""
    if isinstance(address, str):
        try:
            return _address_to_script_cached(address, network)
        except InvalidAddress:
            pass  # not cached (lru_cache keeps no exceptions): refused below, naming the caller's field
    return _address_to_script(address, network, field)


@lru_cache(maxsize=CACHE_ENTRIES)
def _address_to_script_cached(address: str, network: str) -> bytes:
    return _address_to_script(address, network, "address")


def _address_to_script(address: str, network: str, field: str) -> bytes:
    canonical = validate_address(address, network, field)
    hrp, p2pkh, p2sh = _network(network)
    if canonical.startswith(hrp + "1"):
        ver, prog = bech32.decode(hrp, canonical)
        op = 0 if ver == 0 else 0x50 + ver
        return bytes([op, len(prog)]) + bytes(prog)
    payload = base58.decode_check(canonical)
    if payload[0] == p2pkh:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    return b"\xa9\x14" + payload[1:] + b"\x87"


def script_to_address(script_pubkey: bytes, network: str) -> str | None:
    """The address of a standard scriptPubKey, or None (e.g. OP_RETURN, bare multisig)."""
    return _script_to_address(bytes(script_pubkey), network)


@lru_cache(maxsize=CACHE_ENTRIES)
def _script_to_address(s: bytes, network: str) -> str | None:
    hrp, p2pkh, p2sh = _network(network)
    if len(s) == 22 and s[:2] == b"\x00\x14" or len(s) == 34 and s[:2] == b"\x00\x20":
        return bech32.encode(hrp, 0, s[2:])
    if len(s) == 34 and s[:2] == b"\x51\x20":
        return bech32.encode(hrp, 1, s[2:])
    if len(s) == 25 and s[:3] == b"\x76\xa9\x14" and s[23:] == b"\x88\xac":
        return base58.encode_check(bytes([p2pkh]) + s[3:23])
    if len(s) == 23 and s[:2] == b"\xa9\x14" and s[22:] == b"\x87":
        return base58.encode_check(bytes([p2sh]) + s[2:22])
    return None
