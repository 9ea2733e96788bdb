"""Proof of reserves: which on-chain addresses the exchange controls, and what they hold at one height.

Job: take a list of ownership claims (address + signature(s) over a message naming the snapshot),
check each one, read the balance of every proven address at one height per chain, and total the
reserves per asset. Ownership proofs:

* EVM: an EIP-191 `personal_sign` signature (eth-account) recovering to the address.
* Bitcoin single-key (P2PKH, P2SH-P2WPKH, P2WPKH): a BIP-137 compact message signature whose
  recovered key hashes to the address.
* Bitcoin multisig / threshold (P2WSH or P2SH `OP_m <keys> OP_n OP_CHECKMULTISIG`): the script, its
  public-key set and at least `m` BIP-137-style signatures by distinct keys of the set; the script
  must hash to the address.

Invariants: an address is counted at most once per (chain, asset) however often it is listed; an
address without a valid proof contributes zero; every balance of a chain is read at that chain's one
snapshot height; amounts are `int` minor units. Chain access goes through `ChainBalanceReader`, so
the custody simulator and real nodes plug in without touching this logic.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import coincurve
from embit import ec, script
from embit.networks import NETWORKS

from ..errors import ValidationError

__all__ = [
    "ownership_message",
    "verify_evm_ownership",
    "verify_bitcoin_ownership",
    "verify_multisig_ownership",
    "sign_bitcoin_message",
    "bitcoin_message_hash",
    "ChainBalanceReader",
    "EvmChainReader",
    "BalanceRegistryReader",
    "UtxoRegistryReader",
    "OwnershipClaim",
    "AddressResult",
    "ReservesResult",
    "prove_reserves",
    "load_claims",
]

MAX_CLAIMS = 100_000
MAX_MULTISIG_KEYS = 15
BTC_HEADER_KINDS = {
    # BIP-137 header byte ranges -> address kind
    range(27, 31): "p2pkh-uncompressed",
    range(31, 35): "p2pkh",
    range(35, 39): "p2sh-p2wpkh",
    range(39, 43): "p2wpkh",
}
_KIND_BASE = {"p2pkh-uncompressed": 27, "p2pkh": 31, "p2sh-p2wpkh": 35, "p2wpkh": 39}


def ownership_message(snapshot_id_hex: str, chain: str, address: str) -> str:
    """The text every ownership proof signs: it names the snapshot, the chain and the address."""
    return f"ringfence proof of reserves\nsnapshot: {snapshot_id_hex}\nchain: {chain}\naddress: {address}"


# --------------------------------------------------------------------------------------------
# Ownership proofs
# --------------------------------------------------------------------------------------------


def verify_evm_ownership(address: str, message: str, signature: str) -> tuple[bool, str]:
    """EIP-191 signature over `message` must recover to `address` (hex signature, 65 bytes)."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        sig = bytes.fromhex(signature.removeprefix("0x"))
    except (ValueError, AttributeError):
        return False, "signature is not hex"
    if len(sig) != 65:
        return False, "signature must be 65 bytes"
    try:
        signer = Account.recover_message(encode_defunct(text=message), signature=sig)
    except Exception as exc:  # eth-account raises several types for malformed signatures
        return False, f"signature does not recover: {type(exc).__name__}"
    if signer.lower() != address.lower():
        return False, "signature was made by a different key"
    return True, "valid"


def _varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return b"\xfe" + n.to_bytes(4, "little")


def bitcoin_message_hash(message: str) -> bytes:
    data = message.encode("utf-8")
    payload = b"\x18Bitcoin Signed Message:\n" + _varint(len(data)) + data
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()


def sign_bitcoin_message(private_key: bytes, message: str, kind: str = "p2wpkh") -> str:
    """BIP-137 signature (base64) — used by the custody side and by tests."""
    if kind not in _KIND_BASE:
        raise ValidationError(f"kind must be one of {sorted(_KIND_BASE)}", field="kind")
    rec = coincurve.PrivateKey(private_key).sign_recoverable(bitcoin_message_hash(message), hasher=None)
    header = _KIND_BASE[kind] + rec[64]
    return base64.b64encode(bytes([header]) + rec[:64]).decode("ascii")


def _recover_bitcoin(message: str, signature_b64: str) -> tuple[bytes, str]:
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("signature is not base64") from None
    if len(raw) != 65:
        raise ValueError("signature must be 65 bytes")
    header = raw[0]
    kind = next((k for r, k in BTC_HEADER_KINDS.items() if header in r), None)
    if kind is None:
        raise ValueError("signature header byte is not a BIP-137 header")
    recid = (header - 27) & 3
    try:
        pub = coincurve.PublicKey.from_signature_and_message(raw[1:] + bytes([recid]),
                                                            bitcoin_message_hash(message), hasher=None)
    except Exception:  # noqa: BLE001 - libsecp256k1 rejects invalid signatures with ValueError/others
        raise ValueError("signature does not recover a public key") from None
    return pub.format(compressed=kind != "p2pkh-uncompressed"), kind


def _network(name: str) -> Mapping[str, Any]:
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValidationError(f"network must be one of {sorted(NETWORKS)}", field="network") from None


def verify_bitcoin_ownership(address: str, message: str, signature_b64: str,
                             network: str = "main") -> tuple[bool, str]:
    """BIP-137: the key recovered from the signature must produce `address` for its header kind."""
    net = _network(network)
    try:
        pub_bytes, kind = _recover_bitcoin(message, signature_b64)
    except ValueError as exc:
        return False, str(exc)
    if kind == "p2pkh-uncompressed":
        h160 = hashlib.new("ripemd160", hashlib.sha256(pub_bytes).digest()).digest()
        candidates = [script.Script(b"\x76\xa9\x14" + h160 + b"\x88\xac").address(net)]
    else:
        pub = ec.PublicKey.parse(pub_bytes)
        by_kind = {"p2pkh": script.p2pkh(pub).address(net), "p2wpkh": script.p2wpkh(pub).address(net),
                   "p2sh-p2wpkh": script.p2sh(script.p2wpkh(pub)).address(net)}
        # Many wallets (Bitcoin Core, Electrum) sign segwit addresses with the compressed-P2PKH
        # header 31-34; the recovered key controls all three single-key forms, so accept them.
        candidates = list(by_kind.values()) if kind == "p2pkh" else [by_kind[kind]]
    if address not in candidates:
        return False, "signature was made by a key that does not control this address"
    return True, "valid"


def verify_taproot_ownership(address: str, message: str, signature_hex: str, network: str = "main") -> tuple[bool, str]:
    """A P2TR key-path address (e.g. a FROST threshold key): a BIP-340 signature by its output key
    over the BIP-137 message hash."""
    net = _network(network)
    try:
        spk = script.address_to_scriptpubkey(address).data
    except Exception:  # noqa: BLE001 - embit raises several types for a bad address
        return False, "address does not decode"
    if len(spk) != 34 or spk[:2] != b"\x51\x20" or script.Script(spk).address(net) != address:
        return False, "not a taproot address of this network"
    try:
        sig = bytes.fromhex(signature_hex)
        ok = len(sig) == 64 and coincurve.PublicKeyXOnly(spk[2:]).verify(sig, bitcoin_message_hash(message))
    except (ValueError, TypeError):
        ok = False
    return (True, "valid") if ok else (False, "BIP-340 signature does not verify for the output key")


def _parse_multisig(redeem: bytes) -> tuple[int, list[bytes]]:
    """OP_m <33-byte keys> OP_n OP_CHECKMULTISIG -> (m, keys); ValueError otherwise."""
    if len(redeem) < 3 or redeem[-1] != 0xAE:
        raise ValueError("script is not a bare OP_CHECKMULTISIG script")
    m_op, n_op = redeem[0], redeem[-2]
    if not (0x51 <= m_op <= 0x60 and 0x51 <= n_op <= 0x60):
        raise ValueError("script threshold/key count opcodes are invalid")
    m, n = m_op - 0x50, n_op - 0x50
    keys, i = [], 1
    for _ in range(n):
        if i >= len(redeem) - 2 or redeem[i] != 33:
            raise ValueError("script must push n compressed public keys")
        keys.append(redeem[i + 1 : i + 34])
        i += 34
    if i != len(redeem) - 2 or not 1 <= m <= n <= MAX_MULTISIG_KEYS:
        raise ValueError("script is malformed")
    return m, keys


def verify_multisig_ownership(address: str, message: str, script_hex: str, pubkeys: Sequence[str],
                              threshold: int, signatures: Sequence[Mapping[str, str]],
                              network: str = "main", wrapping: str = "p2wsh") -> tuple[bool, str]:
    """Multisig/threshold wallet: the script must match the key set and threshold, hash to the
    address, and at least `threshold` distinct keys of the set must have signed `message`."""
    net = _network(network)
    try:
        redeem = bytes.fromhex(script_hex)
        m, keys = _parse_multisig(redeem)
    except ValueError as exc:
        return False, str(exc)
    try:
        declared = [bytes.fromhex(k) for k in pubkeys]
    except (ValueError, TypeError):
        return False, "pubkeys must be hex"
    if declared != keys:
        return False, "the public-key set does not match the script"
    if threshold != m:
        return False, "the threshold does not match the script"
    s = script.Script(redeem)
    if wrapping == "p2wsh":
        derived = script.p2wsh(s).address(net)
    elif wrapping == "p2sh":
        derived = script.p2sh(s).address(net)
    else:
        return False, "wrapping must be p2wsh or p2sh"
    if derived != address:
        return False, "the script does not hash to this address"
    signers: set[bytes] = set()
    for item in signatures[: 2 * MAX_MULTISIG_KEYS]:
        try:
            pub, _ = _recover_bitcoin(message, item.get("signature", ""))
            claimed = bytes.fromhex(item.get("pubkey", ""))
        except (ValueError, TypeError):
            continue
        if pub == claimed and pub in keys:
            signers.add(pub)
    if len(signers) < m:
        return False, f"only {len(signers)} of the required {m} keys signed"
    return True, "valid"


# --------------------------------------------------------------------------------------------
# Chain balance adapters
# --------------------------------------------------------------------------------------------


class ChainBalanceReader(Protocol):
    """What the reserves calculation needs from a chain: its height and balances at a height."""

    chain: str

    def height(self) -> int: ...

    def balance_of(self, address: str, asset: str, height: int) -> int: ...


class EvmChainReader:
    """Native-coin balances from an EVM node through web3 (eth-tester in tests, RPC in production)."""

    def __init__(self, w3: Any, chain: str = "ethereum", native_asset: str = "ETH") -> None:
        self.w3 = w3
        self.chain = chain
        self.native_asset = native_asset

    def height(self) -> int:
        return int(self.w3.eth.block_number)

    def balance_of(self, address: str, asset: str, height: int) -> int:
        if asset != self.native_asset:
            raise ValidationError(f"{self.chain} reader only knows {self.native_asset}", field="asset")
        from web3 import Web3

        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address), block_identifier=height))


class BalanceRegistryReader:
    """Account-model balances from a file: {"chain", "height", "balances": {asset: {address: minor}}}."""

    def __init__(self, chain: str, height: int, balances: Mapping[str, Mapping[str, int]]) -> None:
        self.chain = chain
        self._height = height
        self._balances = {a: {k.lower(): v for k, v in m.items()} for a, m in balances.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "BalanceRegistryReader":
        doc = _read_json(path, "balance registry")
        balances = {asset: {addr: _int_str(v, f"balances.{asset}.{addr}") for addr, v in m.items()}
                    for asset, m in doc["balances"].items()}
        return cls(doc["chain"], int(doc["height"]), balances)

    def height(self) -> int:
        return self._height

    def balance_of(self, address: str, asset: str, height: int) -> int:
        if height != self._height:
            raise ValidationError(f"registry is at height {self._height}, not {height}", field="height")
        return self._balances.get(asset, {}).get(address.lower(), 0)


@dataclass(frozen=True)
class Utxo:
    txid: str
    vout: int
    address: str
    value_minor: int
    height: int
    spent_height: int | None = None


class UtxoRegistryReader:
    """UTXO-model balances from a registry file; a UTXO counts at height H if created at or before
    H and not spent at or before H. The custody issue's chain simulator will replace the file."""

    def __init__(self, chain: str, asset: str, tip_height: int, utxos: Iterable[Utxo]) -> None:
        self.chain = chain
        self.asset = asset
        self._tip = tip_height
        self._by_address: dict[str, list[Utxo]] = {}
        for u in utxos:
            self._by_address.setdefault(u.address, []).append(u)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "UtxoRegistryReader":
        doc = _read_json(path, "UTXO registry")
        utxos = [Utxo(u["txid"], int(u["vout"]), u["address"], _int_str(u["value_minor"], "value_minor"),
                      int(u["height"]), u.get("spent_height")) for u in doc["utxos"]]
        return cls(doc["chain"], doc.get("asset", "BTC"), int(doc["height"]), utxos)

    def height(self) -> int:
        return self._tip

    def balance_of(self, address: str, asset: str, height: int) -> int:
        if asset != self.asset:
            raise ValidationError(f"{self.chain} registry only holds {self.asset}", field="asset")
        if height > self._tip:
            raise ValidationError(f"height {height} is above the registry tip {self._tip}", field="height")
        return sum(u.value_minor for u in self._by_address.get(address, ())
                   if u.height <= height and (u.spent_height is None or u.spent_height > height))


def _read_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read {what} file {path}: {exc}", field=what) from None
    if not isinstance(doc, dict):
        raise ValidationError(f"{what} file must hold a JSON object", field=what)
    return doc


def _int_str(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 39:
        return int(value)
    raise ValidationError("must be a non-negative integer (minor units)", field=where)


# --------------------------------------------------------------------------------------------
# Claims and the reserves total
# --------------------------------------------------------------------------------------------

CLAIM_TYPES = ("evm", "bitcoin", "bitcoin-multisig", "bitcoin-taproot")


@dataclass(frozen=True)
class OwnershipClaim:
    """One address the exchange says it controls, with the evidence."""

    chain: str
    asset: str
    address: str
    type: str
    signature: str = ""
    network: str = "main"
    script: str = ""
    pubkeys: tuple[str, ...] = ()
    threshold: int = 0
    signatures: tuple[Mapping[str, str], ...] = ()
    wrapping: str = "p2wsh"

    def key(self) -> tuple[str, str, str]:
        # EVM addresses are case-insensitive (checksum casing); bech32 is too; base58 is not.
        address = self.address.lower() if self.type == "evm" or self.address[:3].lower() in ("bc1", "tb1", "bcr") \
            else self.address
        return self.chain, self.asset, address

    @classmethod
    def from_json(cls, item: Mapping[str, Any], i: int) -> "OwnershipClaim":
        where = f"addresses[{i}]"
        if not isinstance(item, Mapping):
            raise ValidationError("must be an object", field=where)
        for name in ("chain", "asset", "address", "type"):
            if not isinstance(item.get(name), str) or not item.get(name):
                raise ValidationError(f"{name} must be a non-empty string", field=f"{where}.{name}")
        if item["type"] not in CLAIM_TYPES:
            raise ValidationError(f"type must be one of {', '.join(CLAIM_TYPES)}", field=f"{where}.type")
        return cls(chain=item["chain"], asset=item["asset"], address=item["address"], type=item["type"],
                   signature=str(item.get("signature", "")), network=str(item.get("network", "main")),
                   script=str(item.get("script", "")), pubkeys=tuple(item.get("pubkeys", ())),
                   threshold=int(item.get("threshold", 0)), signatures=tuple(item.get("signatures", ())),
                   wrapping=str(item.get("wrapping", "p2wsh")))

    def verify(self, snapshot_id_hex: str) -> tuple[bool, str]:
        message = ownership_message(snapshot_id_hex, self.chain, self.address)
        if self.type == "evm":
            return verify_evm_ownership(self.address, message, self.signature)
        if self.type == "bitcoin":
            return verify_bitcoin_ownership(self.address, message, self.signature, self.network)
        if self.type == "bitcoin-taproot":
            return verify_taproot_ownership(self.address, message, self.signature, self.network)
        return verify_multisig_ownership(self.address, message, self.script, self.pubkeys, self.threshold,
                                         self.signatures, self.network, self.wrapping)


def load_claims(doc: Mapping[str, Any]) -> list[OwnershipClaim]:
    items = doc.get("addresses")
    if not isinstance(items, list):
        raise ValidationError('reserves evidence must have an "addresses" list', field="addresses")
    if len(items) > MAX_CLAIMS:
        raise ValidationError(f"at most {MAX_CLAIMS} addresses", field="addresses")
    return [OwnershipClaim.from_json(item, i) for i, item in enumerate(items)]


@dataclass
class AddressResult:
    chain: str
    asset: str
    address: str
    type: str
    status: str  # "counted" | "duplicate" | "rejected: <reason>"
    balance_minor: int

    def to_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "asset": self.asset, "address": self.address, "type": self.type,
                "status": self.status, "balance_minor": str(self.balance_minor)}


@dataclass
class ReservesResult:
    snapshot_id: str
    heights: dict[str, int]
    reserves_minor: dict[str, int]
    addresses: list[AddressResult] = field(default_factory=list)

    def counted(self) -> list[AddressResult]:
        return [a for a in self.addresses if a.status == "counted"]


def prove_reserves(snapshot_id_hex: str, claims: Iterable[OwnershipClaim],
                   readers: Mapping[str, ChainBalanceReader],
                   heights: Mapping[str, int] | None = None, pace: Callable[[], None] | None = None) -> ReservesResult:
    """Verify each claim, dedupe, and sum proven balances per asset at one height per chain.

    `heights` pins the snapshot height per chain (default: each reader's current height, read once).
    `pace` is called before each claim (a paced publisher pauses there: one claim is a signature check
    and a balance read; all of them at once were a burst of tens of ms in a serving process).
    """
    pinned: dict[str, int] = dict(heights or {})
    result = ReservesResult(snapshot_id=snapshot_id_hex, heights=pinned, reserves_minor={})
    seen: set[tuple[str, str, str]] = set()
    for claim in claims:
        if pace is not None:
            pace()
        reader = readers.get(claim.chain)
        result.reserves_minor.setdefault(claim.asset, 0)
        if reader is None:
            result.addresses.append(AddressResult(claim.chain, claim.asset, claim.address, claim.type,
                                                  "rejected: no balance reader for this chain", 0))
            continue
        if claim.chain not in pinned:
            pinned[claim.chain] = reader.height()
        key = claim.key()
        if key in seen:
            result.addresses.append(AddressResult(claim.chain, claim.asset, claim.address, claim.type,
                                                  "duplicate", 0))
            continue
        ok, reason = claim.verify(snapshot_id_hex)
        if not ok:
            result.addresses.append(AddressResult(claim.chain, claim.asset, claim.address, claim.type,
                                                  f"rejected: {reason}", 0))
            continue
        seen.add(key)
        balance = reader.balance_of(claim.address, claim.asset, pinned[claim.chain])
        assert balance >= 0, "a chain balance cannot be negative"
        result.reserves_minor[claim.asset] += balance
        result.addresses.append(AddressResult(claim.chain, claim.asset, claim.address, claim.type,
                                              "counted", balance))
    return result
