"""A deterministic end-to-end walkthrough on the Bitcoin simulator (used by the CLI and the docs).

Three cold signers export account xpubs; the server builds a 2-of-3 `wsh(sortedmulti)` wallet from
them, receives a deposit, watches confirmations, lives through a reorg that un-confirms the deposit,
then withdraws with a PSBT that two signers sign offline. The signers' seeds are fixed test values.
"""

from __future__ import annotations

from typing import Iterator

from embit import bip32
from embit.networks import NETWORKS

from .bitcoin.adapter import BitcoinAdapter
from .bitcoin.signer import sign_psbt
from .bitcoin.simulator import BitcoinSimulator
from .bitcoin.wallet import DescriptorWallet, finalize

__all__ = ["run_walkthrough"]

_NET = NETWORKS["regtest"]
_BURN = bytes.fromhex("0014" + "00" * 20)


def _signer(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(bytes([n]) * 32, version=_NET["xprv"])


def _account(root: bip32.HDKey) -> str:
    path = "48h/1h/0h/2h"
    xpub = root.derive("m/" + path).to_public().to_base58(_NET["xpub"])
    return f"[{root.my_fingerprint.hex()}/{path}]{xpub}/<0;1>/*"


def run_walkthrough() -> Iterator[str]:
    signers = [_signer(n) for n in (1, 2, 3)]
    vault = DescriptorWallet("wsh(sortedmulti(2,%s))" % ",".join(_account(s) for s in signers))
    node = BitcoinSimulator()
    btc = BitcoinAdapter(node)
    deposit_addr = vault.address(0)
    yield f"vault deposit address (2-of-3 P2WSH): {deposit_addr}"

    node.mine(1, vault.script_pubkey(0))
    node.mine(100, _BURN)
    yield f"mined a coinbase to the vault and matured it: tip {btc.current_height()}"
    yield f"vault balance: {btc.balance(deposit_addr)} sat"

    coins = vault.coins(btc)
    dest = btc.address_of_script(bytes.fromhex("0014" + "11" * 20))
    psbt = vault.create_psbt(coins, [(dest, 150_000_000)], fee_rate_sat_per_vb=2)
    psbt, n1 = sign_psbt(psbt, signers[0].to_base58(_NET["xprv"]))
    psbt, n2 = sign_psbt(psbt, signers[1].to_base58(_NET["xprv"]))
    yield f"PSBT signed offline by signers 1 and 2 ({n1 + n2} signatures)"
    sent = btc.broadcast(finalize(psbt))
    again = btc.broadcast(finalize(psbt))
    yield f"broadcast {sent.txid[:16]}...; broadcasting again: already_known={again.already_known}"

    node.mine(2, _BURN)
    status = btc.tx_status(sent.txid)
    yield f"confirmations: {status.confirmations} (final at {btc.finality_depth('BTC')})"

    node.reorganize(status.block_height, 3, _BURN, include_mempool=False)
    yield f"reorg from height {status.block_height}: now {btc.tx_status(sent.txid).state.value}, " \
          f"{btc.confirmations(sent.txid)} confirmations"
    node.mine(1, _BURN)
    yield f"re-mined: {btc.confirmations(sent.txid)} confirmation(s); recipient has {btc.balance(dest)} sat"
    node.check_invariants()
    yield "UTXO invariants hold (value conserved, nothing spent twice)"
