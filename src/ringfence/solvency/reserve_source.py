"""Where a scheduled proof of reserves gets its evidence: `ReserveSource`, provided by custody.

Job: for one snapshot id, a reserve source hands the publisher (1) ownership claims — messages
naming the snapshot, signed by the wallets' actual signers (single keys: BIP-137 / EIP-191;
multisig vaults: the script and a threshold of signatures), and (2) a balance reader per chain
with the one height every balance of that chain is read at. The publisher never trusts the
source's word: `prove_reserves` checks every signature and script and reads every balance itself.

`SignerReserveSource` is the implementation over custody's wallets: a list of `WalletKeys`
(address, chain adapter, the `Signer`s and key ids that control it). `seed_wallet_keys` lists the
wallets of a custody set-up whose offline keys (cold wallets, the 2-of-3 shield vault) derive from
one seed — shared by `localnet_reserve_source` (a `custody.localnet.LocalNet`, the tests) and the
custody runtime inside `ringfence serve` (`CustodyRuntime.reserve_source`; there the shield vault's
three keys are in HSM tokens and it adds that vault's `WalletKeys` itself, so nothing of the shield
vault is derived from the seed in `serve`).

Invariants: a claim is made only for an address whose signature the signer produced right now for
this snapshot id; all balances of a chain are read at the height pinned once per evidence call;
amounts are `int` minor units.
"""

from __future__ import annotations

import base64
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import coincurve

from ..errors import ValidationError
from .reserves import ChainBalanceReader, OwnershipClaim, bitcoin_message_hash, ownership_message

__all__ = [
    "ReserveEvidence",
    "ReserveSource",
    "AdapterBalanceReader",
    "WalletKeys",
    "SignerReserveSource",
    "claim_to_json",
    "seed_wallet_keys",
    "seed_cold_signer",
    "shield_vault_keys",
    "localnet_reserve_source",
    "load_reserve_sources",
]

MAX_WALLETS = 100_000
#: The cold wallets' key ids per chain (offline signer, derived from the custody seed).
COLD_KEY_IDS = {"bitcoin": "btc-cold", "ethereum": "eth-cold"}


@dataclass
class ReserveEvidence:
    """Signed ownership claims plus, per chain, a balance reader and the one height to read at."""

    claims: list[OwnershipClaim] = field(default_factory=list)
    readers: dict[str, ChainBalanceReader] = field(default_factory=dict)
    heights: dict[str, int] = field(default_factory=dict)

    def merge(self, other: "ReserveEvidence") -> None:
        for chain, height in other.heights.items():
            if chain in self.heights and self.heights[chain] != height:
                raise ValidationError(f"two reserve sources pinned {chain} at different heights", field="heights")
            self.heights[chain] = height
        self.readers.update(other.readers)
        self.claims.extend(other.claims)


@runtime_checkable
class ReserveSource(Protocol):
    """What custody provides to the proof-of-reserves publisher."""

    name: str

    def evidence(self, snapshot_id_hex: str) -> ReserveEvidence:
        """Claims signed for `snapshot_id_hex` and balance readers pinned at one height per chain."""
        ...


class AdapterBalanceReader:
    """`ChainBalanceReader` over a custody chain adapter (Bitcoin simulator/node, eth-tester/RPC):
    both answer `balance(address, height, asset)` at a past height. `lock` (optional) is held
    around every call: the in-process demo chains are not thread-safe and the custody workers
    use them too."""

    def __init__(self, adapter: Any, lock: Any = None) -> None:
        self.adapter = adapter
        self.chain = str(adapter.chain)
        self.lock = lock if lock is not None else nullcontext()

    def height(self) -> int:
        with self.lock:
            return int(self.adapter.current_height())

    def balance_of(self, address: str, asset: str, height: int) -> int:
        with self.lock:
            return int(self.adapter.balance(address, height, asset))


@dataclass(frozen=True)
class WalletKeys:
    """One address of the exchange and who signs for it.

    `keys` are `(signer, key_id)` pairs. One pair: a single-key address (`p2wpkh` on Bitcoin, an
    EOA on Ethereum). Several: a multisig vault whose `script_hex` is `OP_m <keys> OP_n
    OP_CHECKMULTISIG`; `threshold` of them sign (the others are not asked).
    """

    chain: str
    assets: tuple[str, ...]
    address: str
    keys: tuple[tuple[Any, str], ...]
    network: str = "regtest"
    script_hex: str = ""
    threshold: int = 0


def _sign_digest(signer: Any, key_id: str, digest: bytes, why: str, approval: Any = None) -> tuple[bytes, int, bytes]:
    """(r||s, recovery id, compressed public key) from any custody `Signer` (local or HSM)."""
    from ..keys.interface import Scheme, SigningRequest

    sig = signer.sign(SigningRequest(request_id=f"por-{digest.hex()[:24]}", key_id=key_id, digest=digest,
                                     scheme=Scheme.ECDSA_SECP256K1, requested_by="por-publisher", reason=why,
                                     approval=approval))
    rs = bytes(sig.signature[:64])
    pub = bytes(sig.public_key)
    for recid in ((sig.signature[64],) if len(sig.signature) == 65 else (0, 1)):
        try:
            got = coincurve.PublicKey.from_signature_and_message(rs + bytes([recid]), digest, hasher=None)
        except ValueError:
            continue
        if got.format(compressed=True) == coincurve.PublicKey(pub).format(compressed=True):
            return rs, recid, got.format(compressed=True)
    raise ValidationError(f"signer for {key_id} returned a signature that does not recover its key", field="key_id")


def _bip137(signer: Any, key_id: str, message: str, header_base: int) -> tuple[str, bytes]:
    digest = bitcoin_message_hash(message)
    attest = getattr(signer, "attest_message", None)  # an HSM key (custody/eth_hsm.py): the policy side's yes first
    rs, recid, pub = _sign_digest(signer, key_id, digest, "proof of reserves",
                                  attest(message, digest, key_id=key_id) if attest else None)
    return base64.b64encode(bytes([header_base + recid]) + rs).decode("ascii"), pub


def _bip340(signer: Any, key_id: str, message: str) -> str:
    from ..keys.interface import Scheme, SigningRequest

    digest = bitcoin_message_hash(message)
    sig = signer.sign(SigningRequest(request_id=f"por-{digest.hex()[:24]}", key_id=key_id, digest=digest,
                                     scheme=Scheme.TAPROOT_KEYPATH, requested_by="por-publisher", reason="proof of reserves"))
    return bytes(sig.signature).hex()


def _eip191(signer: Any, key_id: str, message: str) -> str:
    from eth_utils import keccak

    data = message.encode("utf-8")
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)
    attest = getattr(signer, "attest_message", None)  # an HSM key (custody/eth_hsm.py): the policy side's yes first
    rs, recid, _ = _sign_digest(signer, key_id, digest, "proof of reserves", attest(message, digest, key_id=key_id) if attest else None)
    return "0x" + (rs + bytes([27 + recid])).hex()


class SignerReserveSource:
    """Evidence from the custody wallets themselves: each claim is signed by the wallet's signer(s)
    for the snapshot at hand, and balances are read through the chain adapters at one height."""

    def __init__(self, name: str, wallets: Sequence[WalletKeys], adapters: Mapping[str, Any], *, lock: Any = None) -> None:
        if len(wallets) > MAX_WALLETS:
            raise ValidationError(f"at most {MAX_WALLETS} wallets per source", field="wallets")
        self.name = name
        self.wallets = list(wallets)
        self.adapters = dict(adapters)
        self.lock = lock

    def evidence(self, snapshot_id_hex: str) -> ReserveEvidence:
        out = ReserveEvidence()
        for chain, adapter in self.adapters.items():
            reader = AdapterBalanceReader(adapter, self.lock)
            out.readers[chain] = reader
            out.heights[chain] = reader.height()  # pinned once: every balance of this chain is read here
        for w in self.wallets:
            if w.chain not in self.adapters:
                continue
            message = ownership_message(snapshot_id_hex, w.chain, w.address)
            for asset in w.assets:
                out.claims.append(self._claim(w, asset, message))
        return out

    def _claim(self, w: WalletKeys, asset: str, message: str) -> OwnershipClaim:
        if w.chain == "ethereum":
            signer, key_id = w.keys[0]
            return OwnershipClaim(w.chain, asset, w.address, "evm", signature=_eip191(signer, key_id, message))
        if not w.script_hex and getattr(w.keys[0][0], "taproot", False):
            signer, key_id = w.keys[0]  # a FROST Taproot key (the hot wallet): a BIP-340 signature by a quorum
            return OwnershipClaim(w.chain, asset, w.address, "bitcoin-taproot", network=w.network,
                                  signature=_bip340(signer, key_id, message))
        if not w.script_hex:
            signer, key_id = w.keys[0]
            sig, _ = _bip137(signer, key_id, message, 39)  # 39-42: P2WPKH
            return OwnershipClaim(w.chain, asset, w.address, "bitcoin", signature=sig, network=w.network)
        from .reserves import _parse_multisig

        _, script_keys = _parse_multisig(bytes.fromhex(w.script_hex))  # the key set, in the script's order
        signatures = []
        for signer, key_id in w.keys[: w.threshold]:
            sig, pub = _bip137(signer, key_id, message, 31)  # 31-34: compressed key
            signatures.append({"pubkey": pub.hex(), "signature": sig})
        return OwnershipClaim(w.chain, asset, w.address, "bitcoin-multisig", network=w.network, script=w.script_hex,
                              pubkeys=tuple(k.hex() for k in script_keys), threshold=w.threshold,
                              signatures=tuple(signatures))


def claim_to_json(c: OwnershipClaim) -> dict[str, Any]:
    """The claim as the evidence file (`load_claims`) reads it back."""
    out: dict[str, Any] = {"chain": c.chain, "asset": c.asset, "address": c.address, "type": c.type}
    if c.type in ("evm", "bitcoin", "bitcoin-taproot"):
        out["signature"] = c.signature
    if c.type != "evm":
        out["network"] = c.network
    if c.type == "bitcoin-multisig":
        out.update(script=c.script, pubkeys=list(c.pubkeys), threshold=c.threshold,
                   signatures=[dict(s) for s in c.signatures], wrapping=c.wrapping)
    return out


def _seed_key(seed: str, label: str) -> bytes:
    from ..custody.localnet import derive_key

    return derive_key(seed, label)  # type: ignore[no-any-return]


def seed_cold_signer(seed: str, chains: Sequence[str] = tuple(COLD_KEY_IDS)) -> Any:
    """The cold wallets' offline signer (`btc-cold`, `eth-cold`), keys derived from the seed; only
    the keys of `chains` are derived (a cold wallet held elsewhere is never derived here)."""
    from ..custody.wallets import LocalKeySigner

    return LocalKeySigner({COLD_KEY_IDS[c]: _seed_key(seed, COLD_KEY_IDS[c]) for c in chains})


def shield_vault_keys(seed: str, address: str, assets: tuple[str, ...] = ("BTC",)) -> WalletKeys:
    """The shield vault, `wsh(sortedmulti(2, k0, k1, k2))` at receive index 0 (`localnet.shield_multisig`):
    its witness script and two of its three offline signers, derived from the seed like every other
    local key. Refuses an `address` that is not that vault's."""
    from embit import bip32
    from embit.networks import NETWORKS

    from ..custody.localnet import shield_multisig
    from ..custody.wallets import LocalKeySigner

    vault = shield_multisig(seed)
    if vault.address(0) != address:
        raise ValidationError("is not the shield vault derived from this seed", field="address")
    regtest = NETWORKS["regtest"]
    child: dict[str, bytes] = {}
    for n in range(3):
        root = bip32.HDKey.from_seed(_seed_key(seed, f"shield-{n}"), version=regtest["xprv"])
        child[f"shield-{n}"] = root.derive("m/48h/1h/0h/2h/0/0").key.secret
    signer = LocalKeySigner(child)
    script_hex = vault._derived(0, 0).witness_script().data.hex()
    return WalletKeys("bitcoin", assets, address, tuple((signer, k) for k in sorted(child)), script_hex=script_hex,
                      threshold=2)


def seed_wallet_keys(seed: str, assets: Mapping[str, tuple[str, ...]], online: Sequence[tuple[str, str, Any, str]],
                     cold: Mapping[str, str], shield_address: str | None) -> list[WalletKeys]:
    """Every wallet of a seed-derived custody set-up, each with the signer that controls it.

    `assets`: chain -> the assets its wallets hold (e.g. ethereum -> ETH, USDT). `online`: (chain,
    address, signer, key id) of the keys the custody workers hold — deposit addresses, hot, warm.
    `cold`: chain -> the cold wallet's address (`btc-cold` / `eth-cold`, offline signer).
    `shield_address`: the 2-of-3 shield vault on bitcoin, or None. Chains not in `assets` are skipped.
    """
    wallets = [WalletKeys(chain, assets[chain], address, ((signer, key_id),))
               for chain, address, signer, key_id in online if chain in assets]
    offline = seed_cold_signer(seed, [c for c in sorted(cold) if c in assets])
    for chain, address in sorted(cold.items()):
        if chain in assets:
            wallets.append(WalletKeys(chain, assets[chain], address, ((offline, COLD_KEY_IDS[chain]),)))
    if shield_address is not None and "bitcoin" in assets:
        wallets.append(shield_vault_keys(seed, shield_address, assets["bitcoin"]))
    return wallets


def localnet_reserve_source(net: Any, name: str = "localnet") -> SignerReserveSource:
    """Every wallet of a `LocalNet`: deposit addresses, hot, warm, cold and the 2-of-3 shield vault,
    each signed by the key that controls it (the shield vault by two of its three offline keys)."""
    online = [("ethereum" if address.startswith("0x") else "bitcoin", address, net.local, key_id)
              for address, key_id in sorted(net.deposit_keys.items())]
    online += [("bitcoin", net.btc_hot, net.local, "btc-hot"), ("bitcoin", net.btc_warm, net.local, "btc-warm"),
               ("ethereum", net.eth_hot, net.eth_hot_signer, net.eth_hot_key)]
    wallets = seed_wallet_keys(net.seed, {"bitcoin": ("BTC",), "ethereum": ("ETH",)}, online,
                               {"bitcoin": net.cold["btc"], "ethereum": net.cold["eth"]}, net.cold["shield"])
    return SignerReserveSource(name, wallets, {"bitcoin": net.btc, "ethereum": net.eth})


def load_reserve_sources(spec: str, *args: Any) -> list[ReserveSource]:
    """Sources named in settings (`package.module:factory`, comma-separated), each factory called
    with `args` (the exchange and the data directory) and returning a source or a list of them."""
    from importlib import import_module

    from ..errors import ConfigError

    out: list[ReserveSource] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        module_name, _, attr = item.partition(":")
        if not module_name or not attr:
            raise ConfigError(f"{item[:80]!r} is not package.module:factory", field="RINGFENCE_POR_RESERVE_SOURCES")
        try:
            factory = getattr(import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load {item[:80]!r}: {exc}", field="RINGFENCE_POR_RESERVE_SOURCES") from None
        made = factory(*args)
        for source in made if isinstance(made, (list, tuple)) else [made]:
            if not isinstance(source, ReserveSource):
                raise ConfigError(f"{item[:80]!r} returned {type(source).__name__}, not a ReserveSource",
                                  field="RINGFENCE_POR_RESERVE_SOURCES")
            out.append(source)
    return out
