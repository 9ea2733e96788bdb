"""ERC-20 sweeps: tokens credited to deposit addresses move into the hot wallet, as exchanges do it.

A deposit address holds the user's tokens but no ETH, and a token transfer's gas is paid in ETH by
the sender. So, per deposit address holding at least the token's sweep minimum:

1. **gas top-up**: if the address has less ETH than the sweep's gas budget (gas limit x max fee x
   2, room for the fee to rise), the hot wallet sends it that budget — an ordinary internal
   transfer (`RecordTransferSigned` before broadcast, `RecordInternalTransfer` ETH hot -> deposit
   once confirmed; the hot wallet's nonce reserved in the engine, `ReserveWalletNonce`);
2. **sweep**: once no transfer touching the deposit wallet is in flight, the address sends its
   whole token balance to the hot wallet (`transfer(hot, amount)`, signed with the address's own
   key), journaled before broadcast; once confirmed it is recorded as
   `RecordInternalTransfer(USDT deposit -> hot, gas_asset=ETH, gas_fee_minor=<gas used>)`, so the
   ledger's USDT and ETH custody of both wallets match the chain (chain reconciliation checks it).

Everything is decided from journaled state and the chain: a restart redoes what was not recorded
(`Balancer.resend_pending` re-sends journaled bytes). The native sweep of the same deposit wallet
waits while a token sweep or top-up is in flight (`busy`), so the two never race for one address's
ETH. A reverted sweep (it cannot happen with the demo's token unless the balance moved) is left
signed and logged for an operator: its gas is visible to reconciliation as an ETH shortfall.
"""

from __future__ import annotations

from typing import Any

import structlog

from .commands import RecordInternalTransfer, RecordTransferSigned, custody_state
from .wallets import ERC20_TRANSFER_GAS, build_eth_payment, erc20_transfer_data

__all__ = ["TokenSweeper", "GAS_MARGIN"]

log = structlog.get_logger("ringfence.custody.token_sweeps")

#: The top-up covers this many times the sweep's gas at today's max fee.
GAS_MARGIN = 2


class TokenSweeper:
    """Sweeps of one ERC-20 token from `deposit_wallet` addresses into the hot wallet."""

    def __init__(self, node: Any, adapter: Any, balancer: Any, *, token: str, deposit_wallet: str, hot_wallet: str,
                 hot_address: str, hot_key_id: str, hot_signer: Any, deposit_signer: Any,
                 key_of_address: dict[str, str], min_minor: int) -> None:
        self.node, self.adapter, self.balancer = node, adapter, balancer
        self.token, self.native = token, adapter.native_asset
        self.deposit_wallet, self.hot_wallet, self.hot_address = deposit_wallet, hot_wallet, hot_address
        self.hot_key_id, self.hot_signer, self.deposit_signer = hot_key_id, hot_signer, deposit_signer
        self.key_of_address = key_of_address
        self.min_minor = min_minor
        self.topped_up = 0
        self.swept = 0

    def busy(self) -> bool:
        """A transfer into or out of the deposit wallet is signed and not yet recorded."""
        w = self.deposit_wallet
        return bool(self.node.read(lambda e: any(t.state == "signed" and w in (t.from_wallet, t.to_wallet)
                                                 for t in custody_state(e).transfers.values())))

    def step(self, min_confirmations: int) -> int:
        """Record confirmed token sweeps, then top up or sweep what is due. Returns actions taken."""
        done = self.record_confirmed(min_confirmations)
        if self.busy():
            return done  # one thing at a time per deposit wallet: wait for what is in flight
        fee_q = self.adapter.estimate_fee()
        budget = ERC20_TRANSFER_GAS * fee_q.fee_rate_minor * GAS_MARGIN

        def candidates(engine: Any) -> list[str]:
            s = custody_state(engine)
            waiting = {d.address for d in s.deposits.values() if d.chain == self.adapter.chain and d.state == "seen"}
            return sorted(v[2] for k, v in s.deposit_addresses.items()
                          if k.startswith(self.adapter.chain + ":") and v[1] == self.deposit_wallet and v[2] not in waiting)

        for address in self.node.read(candidates):
            amount = self.adapter.balance(address, None, self.token)
            if amount < self.min_minor:
                continue
            if self.adapter.balance(address, None, None) < budget:
                self.balancer.transfer(self.native, from_wallet=self.hot_wallet, from_address=self.hot_address,
                                       key_id=self.hot_key_id, signer=self.hot_signer, to_wallet=self.deposit_wallet,
                                       to_address=address, amount_minor=budget, kind="gas")
                self.topped_up += 1
                done += 1
                continue
            nonce = self.adapter.w3.eth.get_transaction_count(address, "pending")
            raw, txid, _ = build_eth_payment(self.adapter, key_id=self.key_of_address[address], signer=self.deposit_signer,
                                             to=self.adapter.token(self.token).contract, value_wei=0, nonce=nonce,
                                             max_fee_per_gas=fee_q.fee_rate_minor, priority_fee_per_gas=fee_q.priority_fee_minor,
                                             request_id=f"sweep-{self.token}-{address}", reason=f"sweep {self.token} to hot",
                                             data=erc20_transfer_data(self.hot_address, amount), gas=ERC20_TRANSFER_GAS)
            self.node.execute(RecordTransferSigned(f"sweep-{txid[:40]}", self.token, self.deposit_wallet, self.hot_wallet,
                                                   amount, 0, txid, raw.hex()))
            self.adapter.broadcast(raw)
            self.swept += 1
            done += 1
        return done

    def record_confirmed(self, min_confirmations: int) -> int:
        """Token sweeps confirmed at depth become `RecordInternalTransfer` with their ETH gas."""
        from ..chains.adapter import TxState

        done = 0
        signed = self.node.read(lambda e: [(t.id, t.from_wallet, t.to_wallet, t.amount_minor, t.txid)
                                           for t in custody_state(e).transfers.values()
                                           if t.state == "signed" and t.asset == self.token
                                           and not t.id.startswith("shield-")])  # the shield sweeper records its own
        for tid, src, dst, amount, txid in signed:
            status = self.adapter.tx_status(txid)
            if status.state is not TxState.CONFIRMED or status.confirmations < min_confirmations:
                continue
            receipt = self.adapter.w3.eth.get_transaction_receipt(txid)
            if receipt["status"] != 1:
                log.error("token_sweep.reverted", transfer_id=tid, txid=txid)
                continue
            gas = int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
            self.node.execute(RecordInternalTransfer(tid, self.token, src, dst, amount, 0, txid, self.native, gas))
            done += 1
        return done
