"""Watch-only descriptor wallets that build PSBTs (BIP-174) for offline signers, and finalise them.

The server holds only public descriptors (`wpkh(...)`, `wsh(sortedmulti(2,...))`, `tr(...)` over
account-level extended public keys). It finds its coins on the chain, selects inputs, adds change
back to itself and writes a PSBT carrying everything a cold signer needs to check and sign offline:
the spent outputs (`witness_utxo`), the witness script for multisig, and each key's BIP-32 origin
(fingerprint + path) so a signer can find its key and verify the change output is really its own.
Signing happens in `signer.py`, on the offline machine; `finalize` assembles witnesses and extracts
the raw transaction for broadcast.

Invariants: amounts are integer satoshis; sum(outputs) + fee == sum(selected inputs) exactly (the
fee is what is left, and dust change is added to the fee, never lost); no private key ever enters
this module: a descriptor with a private key is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from embit import finalizer
from embit.descriptor import Descriptor
from embit.networks import NETWORKS as EMBIT_NETWORKS
from embit.psbt import PSBT, DerivationPath
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from ...errors import InsufficientFunds, ValidationError
from .address import address_to_script
from .adapter import BitcoinAdapter

__all__ = ["DescriptorWallet", "WalletCoin", "finalize", "psbt_fee_sat"]

_EMBIT_NET = {"mainnet": "main", "testnet": "test", "signet": "signet", "regtest": "regtest"}
MAX_GAP = 1_000  # most addresses per branch a wallet scans for coins
MAX_OUTPUTS = 250
MAX_INPUTS = 500
DUST_SAT = 546  # change below this is added to the fee rather than creating an unspendable output

# virtual sizes used for fee estimation, rounded up (Bitcoin Core's numbers)
_TX_OVERHEAD_VB = 11
_OUTPUT_VB = {22: 31, 34: 43, 25: 34, 23: 32}  # by scriptPubKey length


@dataclass(frozen=True, slots=True)
class WalletCoin:
    txid: str
    vout: int
    value_sat: int
    branch: int  # 0 receive, 1 change
    index: int
    height: int


class DescriptorWallet:
    """A watch-only wallet over one descriptor with `<0;1>/*` (receive/change) derivation."""

    def __init__(self, descriptor: str, network: str = "regtest") -> None:
        if network not in _EMBIT_NET:
            raise ValidationError(f"unknown network {network!r}", field="network")
        try:
            desc = Descriptor.from_string(descriptor)
        except Exception as exc:
            raise ValidationError(f"descriptor does not parse: {exc}", field="descriptor") from None
        if any(getattr(k, "is_private", False) for k in desc.keys):
            raise ValidationError(
                "descriptor contains a private key; the server holds only public descriptors",
                field="descriptor",
            )
        if not desc.is_wildcard:
            raise ValidationError("descriptor must end in /<0;1>/* (or /*)", field="descriptor")
        self.descriptor = desc
        self.network = network
        self._net = EMBIT_NETWORKS[_EMBIT_NET[network]]
        self._input_vb = self._input_vsize()

    def _derived(self, index: int, branch: int):
        if not isinstance(index, int) or not 0 <= index < 2**31:
            raise ValidationError("must be 0..2^31-1 (non-hardened)", field="index")
        if branch not in (0, 1):
            raise ValidationError("must be 0 (receive) or 1 (change)", field="branch")
        branch_index = branch if self.descriptor.num_branches > 1 else None
        return self.descriptor.derive(index, branch_index=branch_index)

    def address(self, index: int, branch: int = 0) -> str:
        return self._derived(index, branch).address(self._net)

    def script_pubkey(self, index: int, branch: int = 0) -> bytes:
        return self._derived(index, branch).script_pubkey().data

    def _input_vsize(self) -> int:
        d = self.descriptor
        if d.is_taproot:
            return 58  # 41 base + 66/4 witness (64-byte schnorr sig)
        if d.is_basic_multisig:
            m = d.miniscript.args[0].num
            n = len(d.keys)
            witness = 1 + 1 + m * 73 + 1 + (3 + 34 * n)
            return 41 + -(-witness // 4)
        return 68  # P2WPKH

    # ---- coins ---------------------------------------------------------------------------------

    def coins(self, chain: BitcoinAdapter, gap: int = 20) -> list[WalletCoin]:
        """Unspent coins on both branches of the first `gap` indices, oldest first (via the adapter,
        so any Bitcoin backend that implements `unspent(address)` works)."""
        if not 1 <= gap <= MAX_GAP:
            raise ValidationError(f"must be 1..{MAX_GAP}", field="gap")
        out = []
        for branch in (0, 1):
            for index in range(gap):
                for u in chain.unspent(self.address(index, branch)):
                    out.append(WalletCoin(u.txid, u.vout, u.value_sat, branch, index, u.height))
        out.sort(key=lambda c: (c.height, c.txid, c.vout))
        return out

    # ---- PSBT ----------------------------------------------------------------------------------

    def create_psbt(
        self,
        coins: list[WalletCoin],
        outputs: list[tuple[str, int]],
        fee_rate_sat_per_vb: int,
        change_index: int = 0,
    ) -> str:
        """A base64 PSBT paying `outputs` [(address, amount_sat)], change to change branch."""
        if not outputs or len(outputs) > MAX_OUTPUTS:
            raise ValidationError(f"need 1..{MAX_OUTPUTS} outputs", field="outputs")
        if not isinstance(fee_rate_sat_per_vb, int) or fee_rate_sat_per_vb < 1:
            raise ValidationError("must be a positive integer (sat/vB)", field="fee_rate_sat_per_vb")
        pay: list[tuple[bytes, int]] = []
        for n, (addr, amount) in enumerate(outputs):
            spk = address_to_script(addr, self.network, field=f"outputs[{n}].address")
            if not isinstance(amount, int) or isinstance(amount, bool) or amount < DUST_SAT:
                raise ValidationError(
                    f"must be an integer number of satoshis >= {DUST_SAT}", field=f"outputs[{n}].amount"
                )
            pay.append((spk, amount))
        target = sum(a for _, a in pay)
        change_spk = self.script_pubkey(change_index, 1)
        base_vb = _TX_OVERHEAD_VB + sum(_OUTPUT_VB.get(len(s), 43) for s, _ in pay)
        change_vb = _OUTPUT_VB.get(len(change_spk), 43)

        selected: list[WalletCoin] = []
        total_in = 0
        for coin in sorted(coins, key=lambda c: -c.value_sat):
            if len(selected) >= MAX_INPUTS:
                break
            selected.append(coin)
            total_in += coin.value_sat
            fee_with_change = (base_vb + change_vb + self._input_vb * len(selected)) * fee_rate_sat_per_vb
            if total_in >= target + fee_with_change:
                break
        fee_no_change = (base_vb + self._input_vb * len(selected)) * fee_rate_sat_per_vb
        fee_with_change = (base_vb + change_vb + self._input_vb * len(selected)) * fee_rate_sat_per_vb
        if total_in < target + fee_no_change:
            raise InsufficientFunds(
                f"wallet has {total_in} sat in {len(selected)} coins, needs {target} + fee {fee_no_change}",
                field="outputs",
            )
        change = total_in - target - fee_with_change
        tx_outs = [TransactionOutput(a, Script(s)) for s, a in pay]
        if change >= DUST_SAT:
            tx_outs.append(TransactionOutput(change, Script(change_spk)))
        assert sum(o.value for o in tx_outs) <= total_in, "psbt would create money"

        tx = Transaction(
            vin=[TransactionInput(bytes.fromhex(c.txid), c.vout) for c in selected], vout=tx_outs
        )
        psbt = PSBT(tx)
        for inp, coin in zip(psbt.inputs, selected):
            self._fill_scope(inp, coin.index, coin.branch)
            inp.witness_utxo = TransactionOutput(coin.value_sat, Script(self.script_pubkey(coin.index, coin.branch)))
        if change >= DUST_SAT:
            self._fill_scope(psbt.outputs[-1], change_index, 1)
        return psbt.to_string()

    def _fill_scope(self, scope, index: int, branch: int) -> None:
        """Write the BIP-32 origins (and witness script) a signer needs into a PSBT input/output."""
        d = self._derived(index, branch)
        if d.is_taproot:
            key = d.keys[0]
            scope.taproot_internal_key = key.get_public_key()
            scope.taproot_bip32_derivations[key.get_public_key()] = (
                [],
                DerivationPath(key.origin.fingerprint, key.origin.derivation),
            )
            return
        ws = d.witness_script()
        if ws is not None:
            scope.witness_script = ws
        for key in d.keys:
            scope.bip32_derivations[key.get_public_key()] = DerivationPath(
                key.origin.fingerprint, key.origin.derivation
            )

    def owns_output(self, psbt_b64: str, output_index: int) -> bool:
        """True if the PSBT's output pays back to this wallet (a signer's change check)."""
        psbt = PSBT.from_string(psbt_b64)
        return self.descriptor.owns(psbt.outputs[output_index])


def psbt_fee_sat(psbt_b64: str) -> int:
    return PSBT.from_string(psbt_b64).fee()


def finalize(psbt_b64: str) -> bytes:
    """Assemble final witnesses and return the raw signed transaction; refuses an incomplete PSBT."""
    try:
        psbt = PSBT.from_string(psbt_b64)
    except Exception as exc:
        raise ValidationError(f"PSBT does not parse: {exc}", field="psbt") from None
    tx = finalizer.finalize_psbt(psbt)
    if tx is None:
        raise ValidationError("PSBT is not fully signed (not enough signatures)", field="psbt")
    return tx.serialize()
