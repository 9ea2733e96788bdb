"""The rebalancing worker: it proposes, the engine decides, the chain executes.

For each asset with a band in the active policy (`"balancing"`, see `rebalance_cmds`), every step:
if an authorized rebalance is waiting (a restart between the decision and the signature), sign and
send it; if one is signed and unconfirmed, wait (the balancer records it once confirmed); else read
the hot wallet's share of the reserves from the ledger and, outside the band, propose a drain to
cold down to the target, or a refill from cold up to it (`AuthorizeRebalance`). The engine checks
the proposal against the policy and its own books; only an authorized transfer is signed
(`RecordTransferSigned` before broadcast, as every internal transfer).

The demo's cold wallet key is derived from the seed like the others and signs in-process; a real
deployment's cold signer is offline (the BTC cold path with PSBTs is separate work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from ..errors import RingfenceError
from .commands import custody_state
from .rebalance_cmds import AuthorizeRebalance, hot_share, rebalance_kind
from .wallets import ERC20_TRANSFER_GAS, ETH_TRANSFER_GAS

__all__ = ["Rebalancer", "WalletKey"]

log = structlog.get_logger("ringfence.custody.rebalance")


@dataclass(frozen=True)
class WalletKey:
    wallet: str
    address: str
    key_id: str
    signer: Any


class Rebalancer:
    def __init__(self, node: Any, adapter: Any, balancer: Any, *, assets: list[str], hot: WalletKey, cold: WalletKey) -> None:
        self.node, self.adapter, self.balancer = node, adapter, balancer
        self.assets, self.hot, self.cold = assets, hot, cold
        self.proposed = 0
        self.executed = 0
        self.last_refusal = ""

    def step(self) -> int:
        done = 0
        for asset in self.assets:
            try:
                done += self._asset(asset)
            except RingfenceError as exc:  # e.g. the engine refused the proposal: try again next step
                self.last_refusal = f"{asset}: {exc.code}: {exc}"
                log.info("rebalance.refused", asset=asset, error=self.last_refusal)
        return done

    def _asset(self, asset: str) -> int:
        def view(engine: Any) -> tuple[Any, list[tuple[str, str, str, int, str]], int, int, int]:
            s = custody_state(engine)
            policy = s.policy()
            band = policy.band(asset) if policy is not None else None
            open_ = [(t.id, t.from_wallet, t.to_wallet, t.amount_minor, t.state) for t in s.transfers.values()
                     if t.asset == asset and t.state in ("authorized", "signed") and t.from_wallet in s.wallets
                     and t.to_wallet in s.wallets and rebalance_kind(s.wallets[t.from_wallet].tier, s.wallets[t.to_wallet].tier)]
            hot, reserves = hot_share(engine, s, asset, self.hot.wallet) if band is not None else (0, 0)
            acct = engine.ledger.find("system", asset, "custody", self.cold.wallet)
            cold = 0 if acct is None else acct.credits_posted - acct.debits_posted
            return band, open_, hot, reserves, cold

        band, open_, hot, reserves, cold = self.node.read(view)
        if band is None:
            return 0
        for tid, src, dst, amount, state in open_:
            if state == "authorized":  # decided but not signed (a restart in between): execute it now
                self._execute(asset, tid, src, dst, amount)
                return 1
        if open_ or reserves <= 0:
            return 0  # one at a time: the balancer records the signed one once confirmed
        target = reserves * band.target_bp // 10_000
        if hot * 10_000 > reserves * band.max_bp:
            src, dst, amount = self.hot.wallet, self.cold.wallet, hot - target
        elif hot * 10_000 < reserves * band.min_bp:
            gas = (ETH_TRANSFER_GAS if asset == self.adapter.native_asset else 0) * self.adapter.estimate_fee().fee_rate_minor
            src, dst, amount = self.cold.wallet, self.hot.wallet, min(target - hot, cold - gas)
        else:
            return 0
        if amount <= 0:
            return 0
        tid = f"rebalance-{asset}-{self.node.read(lambda e: len(custody_state(e).transfers))}"
        self.node.execute(AuthorizeRebalance(tid, asset, src, dst, amount))
        self.proposed += 1
        self._execute(asset, tid, src, dst, amount)
        return 1

    def _execute(self, asset: str, tid: str, src: str, dst: str, amount: int) -> None:
        frm, to = (self.hot, self.cold) if src == self.hot.wallet else (self.cold, self.hot)
        if asset != self.adapter.native_asset:
            need = ERC20_TRANSFER_GAS * self.adapter.estimate_fee().fee_rate_minor
            if self.adapter.balance(frm.address, None, None) < need:
                raise_gas = f"{frm.wallet} has no ETH for the {asset} transfer's gas"
                self.last_refusal = raise_gas
                log.warning("rebalance.no_gas", asset=asset, wallet=frm.wallet)
                return
        self.balancer.transfer(asset, from_wallet=frm.wallet, from_address=frm.address, key_id=frm.key_id, signer=frm.signer,
                               to_wallet=to.wallet, to_address=to.address, amount_minor=amount,
                               kind="drain" if src == self.hot.wallet else "refill", transfer_id=tid)
        self.executed += 1
