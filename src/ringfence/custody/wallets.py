"""Hot/warm/cold wallets: transaction building through the `Signer` interface, sweeps and refills.

* `LocalKeySigner` is the single-key signer behind the same `Signer` interface as the HSM and
  FROST signers; it signs the Bitcoin hot wallet and deposit-address sweeps in development/test
  (in production those keys live in an HSM or a threshold group — the flow does not change).
* `build_btc_payment` / `build_eth_payment` assemble a transaction, ask a `Signer` for each
  signature (with the request id and reason, and for the HSM the policy-approval attestation) and
  return `(raw_tx, txid, network_fee_minor)`. Nothing is broadcast here.
* `plan_balancing` decides sweeps and refills: deposit addresses above dust go to hot; hot is kept
  at or below `hot_max_bp` basis points of the asset's reserves (excess goes to cold) and refilled
  from warm (then cold) when it drops under `hot_min_bp`. Pure: it reads balances it is given.

Invariant: a built transaction spends only coins of the named wallet address and pays exactly the
requested outputs plus change back to that address; the fee is explicit and returned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import coincurve

from ..errors import InsufficientFunds, SigningRefused, ValidationError
from ..keys.interface import Scheme, Signature, SigningRequest

__all__ = ["LocalKeySigner", "build_btc_payment", "plan_btc_spend", "plan_spend", "choose_coins", "btc_unsigned_tx", "BtcSpend", "build_eth_payment", "p2wpkh_address", "p2wsh_address", "eth_address",
           "BalancingRule", "Move", "plan_balancing", "DUST_SAT"]

DUST_SAT = 546
P2WPKH_INPUT_VB = 68
TX_OVERHEAD_VB = 11
ETH_TRANSFER_GAS = 21_000
MAX_INPUTS = 200


class LocalKeySigner:
    """`Signer` over secp256k1 keys held in process memory (dev/test; one key per key id)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = {k: coincurve.PrivateKey(v) for k, v in keys.items()}

    def public_key(self, key_id: str, scheme: Scheme = Scheme.ECDSA_SECP256K1) -> bytes:
        return self._key(key_id).public_key.format(compressed=True)

    def _key(self, key_id: str) -> coincurve.PrivateKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise ValidationError(f"no local key {key_id!r}", field="key_id") from None

    def sign(self, request: SigningRequest) -> Signature:
        if request.scheme is not Scheme.ECDSA_SECP256K1:
            raise ValidationError("the local signer signs ecdsa-secp256k1 only", field="scheme")
        key = self._key(request.key_id)
        sig = key.sign_recoverable(request.digest, hasher=None)  # r || s || recid, RFC 6979, low-S
        pub = key.public_key.format(compressed=True)
        if coincurve.PublicKey.from_signature_and_message(sig, request.digest, hasher=None).format() != pub:
            raise SigningRefused("local signature did not verify", field="key_id")
        return Signature(request.key_id, request.scheme, sig, pub, ("local",))


def p2wpkh_address(pubkey33: bytes, network: str = "regtest") -> str:
    from ..chains.bitcoin.address import script_to_address

    h160 = hashlib.new("ripemd160", hashlib.sha256(pubkey33).digest()).digest()
    addr = script_to_address(b"\x00\x14" + h160, network)
    assert addr is not None
    return addr


def p2wsh_address(witness_script: bytes, network: str = "regtest") -> str:
    from ..chains.bitcoin.address import script_to_address

    addr = script_to_address(b"\x00\x20" + hashlib.sha256(witness_script).digest(), network)
    assert addr is not None
    return addr


def eth_address(pubkey33: bytes) -> str:
    from eth_utils import keccak, to_checksum_address

    raw = coincurve.PublicKey(pubkey33).format(compressed=False)[1:]
    return to_checksum_address(keccak(raw)[-20:])


def _der(sig64: bytes) -> bytes:
    def enc(x: bytes) -> bytes:
        x = x.lstrip(b"\x00") or b"\x00"
        if x[0] & 0x80:
            x = b"\x00" + x
        return b"\x02" + bytes([len(x)]) + x

    body = enc(sig64[:32]) + enc(sig64[32:64])
    return b"\x30" + bytes([len(body)]) + body


@dataclass(frozen=True)
class BtcSpend:
    """A planned spend of one address's coins: the coins, the outputs (a sweep's single output is
    sized here), the change back to the address (0 when it would be dust: it goes to the fee) and the fee."""

    coins: list[Any]
    outputs: list[tuple[str, int]]
    change_sat: int
    fee_sat: int


def plan_btc_spend(adapter: Any, *, from_address: str, outputs: list[tuple[str, int]], fee_rate_sat_per_vb: int,
                   input_vb: int, sweep_all: bool = False, exclude: Any = ()) -> BtcSpend:
    """Choose coins of `from_address` (`choose_coins`: the smallest single coin that pays everything,
    else largest first; confirmed coinbase only when mature, none spent in the mempool or named in
    `exclude` as (txid, vout)) for `outputs` at `fee_rate_sat_per_vb`; each input weighs `input_vb`
    (P2WPKH 68, P2TR key path 58, P2WSH 2-of-3 105). One coin selection for every Bitcoin wallet (the
    P2WPKH and FROST Taproot hot wallets, sweeps, the P2WSH vaults' refills).

    Conservation: sum(coins) == sum(outputs) + change_sat + fee_sat (asserted)."""
    if not outputs or (any(v <= 0 for _, v in outputs) and not sweep_all):
        raise ValidationError("needs outputs with positive amounts", field="outputs")
    skip = set(getattr(adapter.node, "_mempool_spends", {})) | set(exclude)
    tip = adapter.current_height()
    coins = [u for u in adapter.unspent(from_address)
             if (u.txid, u.vout) not in skip and (not u.coinbase or tip - u.height + 1 >= 100)]
    # an output's size follows its script (P2WPKH 31 vB, P2TR and P2WSH 43 vB)
    outputs_vb = sum(9 + len(adapter.script_of_address(a)) for a, _ in outputs)
    change_vb = 0 if sweep_all else 9 + len(adapter.script_of_address(from_address))
    return plan_spend(coins, outputs, from_address=from_address, fee_rate_sat_per_vb=fee_rate_sat_per_vb,
                      input_vb=input_vb, outputs_vb=outputs_vb, change_vb=change_vb, sweep_all=sweep_all)


def _coin_key(u: Any) -> tuple[int, int, str, int]:
    return (u.value_sat, u.height, u.txid, u.vout)


def choose_coins(coins: list[Any], want: int, fee_for: Any) -> list[Any]:
    """The coins to spend for `want` sat plus `fee_for(number of inputs)`: the smallest single coin
    that covers it (a small payment does not break a big coin, and the big coins stay for the payments
    that need them: a hot wallet funded with one coin per payment pays every payment from one coin,
    whatever their order); else the largest coins first, up to `MAX_INPUTS` (fewest inputs, smallest
    fee). Deterministic (ties broken by height, txid, vout). May fall short: the caller checks."""
    fits = [u for u in coins if u.value_sat >= want + fee_for(1)]
    if fits:
        return [min(fits, key=_coin_key)]
    picked: list[Any] = []
    total = 0
    for u in sorted(coins, key=_coin_key, reverse=True)[:MAX_INPUTS]:
        picked.append(u)
        total += u.value_sat
        if total >= want + fee_for(len(picked)):
            break
    return picked


def plan_spend(coins: list[Any], outputs: list[tuple[str, int]], *, from_address: str, fee_rate_sat_per_vb: int,
               input_vb: int, outputs_vb: int, change_vb: int, sweep_all: bool = False) -> BtcSpend:
    """`plan_btc_spend` without the chain: `coins` are the spendable coins (distinct outpoints),
    `outputs_vb`/`change_vb` the outputs' and the change output's sizes. Pure."""
    if len({(u.txid, u.vout) for u in coins}) != len(coins):
        raise ValidationError("a coin is listed twice", field="coins")

    def fee_for(n_inputs: int) -> int:
        return (TX_OVERHEAD_VB + input_vb * n_inputs + outputs_vb + change_vb) * fee_rate_sat_per_vb

    if sweep_all:
        picked = sorted(coins, key=_coin_key, reverse=True)[:MAX_INPUTS]
        want = 0
    else:
        want = sum(v for _, v in outputs)
        picked = choose_coins(coins, want, fee_for)
    total = sum(u.value_sat for u in picked)
    fee = fee_for(len(picked))
    if sweep_all:
        if total - fee < DUST_SAT:
            raise InsufficientFunds(f"{from_address} holds {total} sat, not enough to sweep", field="from_address")
        outputs = [(outputs[0][0], total - fee)]
        want = total - fee
    elif total < want + fee:
        raise InsufficientFunds(f"{from_address} holds {total} spendable sat, needs {want + fee}", field="amount_minor")
    change = total - want - fee
    if change < DUST_SAT:
        fee, change = fee + change, 0
    assert sum(u.value_sat for u in picked) == sum(v for _, v in outputs) + change + fee, "a spend created or lost satoshis"
    return BtcSpend(picked, list(outputs), change, fee)


def btc_tx_inputs(raw_tx_hex: str) -> list[tuple[str, int]]:
    """The coins (txid, vout) a serialised transaction spends."""
    from ..chains.bitcoin.rawtx import parse

    return parse(bytes.fromhex(raw_tx_hex))[0]


def btc_raw_unsigned(adapter: Any, spend: BtcSpend, change_address: str) -> Any:
    """`btc_unsigned_tx` as a `rawtx.UnsignedTx` (the same transaction, byte for byte)."""
    from ..chains.bitcoin.rawtx import UnsignedTx

    outs = [(adapter.script_of_address(a), v) for a, v in spend.outputs]
    if spend.change_sat:
        outs.append((adapter.script_of_address(change_address), spend.change_sat))
    return UnsignedTx([(u.txid, u.vout) for u in spend.coins], outs)


def btc_unsigned_tx(adapter: Any, spend: BtcSpend, change_address: str) -> Any:
    """The unsigned transaction of a planned spend (change, if any, last)."""
    from bitcointx.core import COutPoint, CMutableTransaction, CTxIn, CTxOut, lx
    from bitcointx.core.script import CScript

    vout = [CTxOut(v, CScript(adapter.script_of_address(a))) for a, v in spend.outputs]
    if spend.change_sat:
        vout.append(CTxOut(spend.change_sat, CScript(adapter.script_of_address(change_address))))
    return CMutableTransaction([CTxIn(COutPoint(lx(u.txid), u.vout)) for u in spend.coins], vout)


def build_btc_payment(adapter: Any, *, from_address: str, key_id: str, signer: Any, outputs: list[tuple[str, int]],
                      fee_rate_sat_per_vb: int, request_id: str, reason: str, requested_by: str = "custody-signer",
                      sweep_all: bool = False, exclude: Any = ()) -> tuple[bytes, str, int]:
    """Pay `outputs` from the P2WPKH `from_address` (change back to it). With `sweep_all`, the single
    output receives everything minus the fee; `exclude` names coins (txid, vout) reserved by
    transactions signed but not yet in the mempool. Returns (raw_tx, txid, fee_sat)."""
    from ..chains.bitcoin.rawtx import SIGHASH_ALL

    if getattr(signer, "taproot", False):  # a FROST Taproot hot wallet (btc_signing.py)
        from .btc_signing import build_taproot_payment

        return build_taproot_payment(adapter, from_address=from_address, key_id=key_id, signer=signer, outputs=outputs,
                                     fee_rate_sat_per_vb=fee_rate_sat_per_vb, request_id=request_id, reason=reason,
                                     requested_by=requested_by, sweep_all=sweep_all, exclude=exclude)
    spend = plan_btc_spend(adapter, from_address=from_address, outputs=outputs, fee_rate_sat_per_vb=fee_rate_sat_per_vb,
                           input_vb=P2WPKH_INPUT_VB, sweep_all=sweep_all, exclude=exclude)
    pub = signer.public_key(key_id, Scheme.ECDSA_SECP256K1)
    h160 = hashlib.new("ripemd160", hashlib.sha256(pub).digest()).digest()
    script_code = b"\x76\xa9\x14" + h160 + b"\x88\xac"  # OP_DUP OP_HASH160 <h160> OP_EQUALVERIFY OP_CHECKSIG
    raw_tx = btc_raw_unsigned(adapter, spend, from_address)  # each BIP-143 hash once per transaction, not per input
    attest = getattr(signer, "attest_btc_input", None)  # an HSM key (custody/eth_hsm.py): the policy side's yes first
    tx = btc_unsigned_tx(adapter, spend, from_address) if attest is not None else None  # what the policy side reads
    wits = []
    for i, u in enumerate(spend.coins):
        digest = raw_tx.bip143_digest(i, script_code, u.value_sat)
        approval = attest(adapter, tx, u.value_sat, i, key_id, digest) if attest is not None else None
        sig = signer.sign(SigningRequest(f"{request_id}:{i}", key_id, digest, Scheme.ECDSA_SECP256K1, requested_by, reason,
                                         approval))
        wits.append([_der(sig.signature[:64]) + bytes([SIGHASH_ALL]), pub])
    return raw_tx.serialize(wits), raw_tx.txid(), spend.fee_sat


def eth_unsigned(adapter: Any, *, to: str, value_wei: int, nonce: int, max_fee_per_gas: int, priority_fee_per_gas: int,
                 data: bytes = b"", gas: int = ETH_TRANSFER_GAS):
    from eth_account._utils.legacy_transactions import serializable_unsigned_transaction_from_dict

    tx = {"type": 2, "to": to, "value": value_wei, "gas": gas, "maxFeePerGas": max_fee_per_gas,
          "maxPriorityFeePerGas": priority_fee_per_gas, "nonce": nonce, "chainId": adapter.chain_id}
    if data:
        tx["data"] = data
    return serializable_unsigned_transaction_from_dict(tx)


def build_eth_payment(adapter: Any, *, key_id: str, signer: Any, to: str, value_wei: int, nonce: int,
                      max_fee_per_gas: int, priority_fee_per_gas: int, request_id: str, reason: str,
                      approval: Any = None, requested_by: str = "custody-signer", data: bytes = b"",
                      gas: int = ETH_TRANSFER_GAS) -> tuple[bytes, str, int]:
    """An EIP-1559 transaction signed through `signer`. Returns (raw_tx, txid, max network fee in wei)."""
    from eth_account._utils.legacy_transactions import encode_transaction
    from eth_utils import keccak

    unsigned = eth_unsigned(adapter, to=to, value_wei=value_wei, nonce=nonce, max_fee_per_gas=max_fee_per_gas,
                            priority_fee_per_gas=priority_fee_per_gas, data=data, gas=gas)
    digest = bytes(unsigned.hash())
    attest = getattr(signer, "attest_payment", None)
    if approval is None and attest is not None:  # an HSM key (custody/eth_hsm.py): the policy side's yes first
        approval = attest(adapter, dict(to=to, value_wei=value_wei, nonce=nonce, max_fee_per_gas=max_fee_per_gas,
                                        priority_fee_per_gas=priority_fee_per_gas, data=data, gas=gas), digest, key_id=key_id)
    sig = signer.sign(SigningRequest(request_id, key_id, digest, Scheme.ECDSA_SECP256K1, requested_by, reason, approval))
    r, s, v = int.from_bytes(sig.signature[:32], "big"), int.from_bytes(sig.signature[32:64], "big"), sig.signature[64]
    raw = encode_transaction(unsigned, (v, r, s))
    return raw, "0x" + keccak(raw).hex(), gas * max_fee_per_gas


#: Gas limit of an ERC-20 `transfer` (the assembled token uses about 50k; a real USDT about 65k).
ERC20_TRANSFER_GAS = 100_000


def erc20_transfer_data(to: str, amount_minor: int) -> bytes:
    """Calldata of `transfer(address,uint256)`."""
    from ..chains.ethereum import validate_eth_address

    if not 0 < amount_minor < 2**256:
        raise ValidationError("must be a positive token amount", field="amount_minor")
    return bytes.fromhex("a9059cbb") + bytes(12) + bytes.fromhex(validate_eth_address(to, "to")[2:]) + amount_minor.to_bytes(32, "big")


def eth_signing_digest(adapter: Any, **kw: Any) -> bytes:
    """The digest the HSM will be asked to sign (the policy side attests exactly this)."""
    return bytes(eth_unsigned(adapter, **kw).hash())


# ------------------------------------------------------------------------------- balancing


@dataclass(frozen=True)
class BalancingRule:
    asset: str
    hot_wallet: str
    warm_wallet: str | None
    cold_wallet: str
    hot_max_bp: int = 2_000  # hot may hold at most 20% of the asset's reserves
    hot_min_bp: int = 500  # refill below 5%
    hot_target_bp: int = 1_000  # refill/drain to 10%
    sweep_min_minor: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.hot_min_bp <= self.hot_target_bp <= self.hot_max_bp <= 10_000:
            raise ValidationError("need 0 <= hot_min_bp <= hot_target_bp <= hot_max_bp <= 10000", field="hot_max_bp")


@dataclass(frozen=True)
class Move:
    kind: str  # sweep | refill | drain
    from_wallet: str
    to_wallet: str
    amount_minor: int
    from_address: str = ""


def plan_balancing(rule: BalancingRule, *, deposit_balances: dict[str, int], wallet_balances: dict[str, int],
                   deposit_wallet: str) -> list[Move]:
    """Sweeps first (deposit addresses -> hot), then one refill or drain to bring hot to target."""
    moves = [Move("sweep", deposit_wallet, rule.hot_wallet, bal, addr)
             for addr, bal in sorted(deposit_balances.items()) if bal >= rule.sweep_min_minor]
    hot = wallet_balances.get(rule.hot_wallet, 0) + sum(m.amount_minor for m in moves)
    warm = wallet_balances.get(rule.warm_wallet, 0) if rule.warm_wallet else 0
    cold = wallet_balances.get(rule.cold_wallet, 0)
    reserves = hot + warm + cold + sum(b for a, b in deposit_balances.items() if b < rule.sweep_min_minor)
    if reserves <= 0:
        return moves
    target = reserves * rule.hot_target_bp // 10_000
    if hot * 10_000 > reserves * rule.hot_max_bp:
        moves.append(Move("drain", rule.hot_wallet, rule.cold_wallet, hot - target))
    elif hot * 10_000 < reserves * rule.hot_min_bp:
        need = target - hot
        if rule.warm_wallet and warm > 0:
            take = min(need, warm)
            moves.append(Move("refill", rule.warm_wallet, rule.hot_wallet, take))
            need -= take
        if need > 0 and cold > 0:
            moves.append(Move("refill", rule.cold_wallet, rule.hot_wallet, min(need, cold)))
    return moves
