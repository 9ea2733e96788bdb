"""The shield fund on chain: sweep the fee share accrued in `insurance:<segment>` into the shield
vault, and check CoinEx's rule (the shield fund is worth at least what the hot wallets hold).

Money model. Trading credits 10 % of every fee to the ledger account `insurance:<segment>` (the
fund's claim; the reconciler checks it equals its share of the fills, so nothing here debits it).
The coins behind that claim first sit in the hot wallet with everything else. A sweep moves them on
chain from the hot wallet to the shield vault (a 2-of-3 multisig held by offline signers) and the
ledger records the same move between the custody accounts that mirror the two wallets,
`custody:<hot>` → `custody:<shield>` (plus the network fee, `custody:<hot>` → `onchain`), through
custody's own treasury commands: `RecordTransferSigned` journaled **before** broadcast,
`RecordInternalTransfer` once final. Every ledger asset still sums to zero; insurance is unchanged.

What is due: `accrued (all segments) - (in the vault (ledger custody) - capital paid in by treasury
funding) - already signed, not yet
recorded`. A sweep is sent only when that is at least the route's minimum (no dust transactions).

The rule: `shield value >= hot value`, both valued in one asset (default USDT) at the markets'
reference prices. An asset held but without a price makes the rule `None` (unknown), which is an
alert like a breach: an exchange cannot claim a rule it cannot evaluate.

`shield_status(engine)` only reads (call it inside `Node.read`); `ShieldSweeper.step()` decides from
journaled state and the chain, submits commands through the node and is safe to repeat after a
crash anywhere (a journaled, unbroadcast transfer is re-sent with the same bytes). In `ringfence
serve` the custody runtime runs `step()` as its supervised `shield-sweeper` worker, under the chain
lock the other custody workers share, every `RINGFENCE_SHIELD_SWEEP_EVERY_S` (custody/runtime.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..chains.adapter import TxState
from ..errors import RingfenceError, TransactionRejected
from ..ledger.model import SYSTEM_OWNER
from .commands import RecordInternalTransfer, custody_state

__all__ = ["ShieldRoute", "ShieldSweeper", "shield_status", "localnet_shield_routes", "SWEEP_PREFIX",
           "DEFAULT_VALUE_ASSET"]

SWEEP_PREFIX = "shield-"  # transfer ids of shield sweeps (Balancer.transfer names them "<kind>-<txid>")
DEFAULT_VALUE_ASSET = "USDT"
MAX_ROUTES = 64


def _balance(ledger: Any, asset: str, kind: str, segment: str) -> int:
    account = ledger.find(SYSTEM_OWNER, asset, kind, segment)  # find, never open: this only reads
    return int(account.balance) if account is not None else 0


def _price(engine: Any, asset: str, value_asset: str) -> tuple[int, int] | None:
    """(price in value-asset minor units per whole `asset`, 10**asset decimals), or None."""
    try:
        from ..trading.state import trading_state

        markets = trading_state(engine).markets
    except (KeyError, AttributeError):
        return None
    m = markets.get(asset + value_asset)
    if m is None:
        return None
    price = m.last_price or m.ref_price
    return (int(price), int(m.base_scale)) if price > 0 else None


def shield_status(engine: Any, value_asset: str = DEFAULT_VALUE_ASSET) -> dict[str, Any]:
    """Per asset: accrued (ledger insurance), in the vault, in flight, due, hot; and the rule."""
    ledger = engine.ledger
    try:
        cs = custody_state(engine)
        wallets, transfers, cfgs = cs.wallets, cs.transfers, cs.assets
    except KeyError:
        wallets, transfers, cfgs = {}, {}, {}
    shield_wallets = {n for n, w in wallets.items() if w.tier == "shield"}
    hot_wallets = {n for n, w in wallets.items() if w.tier == "hot"}
    rows = []
    shield_value = hot_value = 0
    unpriced: list[str] = []
    for spec in ledger.assets:
        code = spec.code
        chain = cfgs[code].chain if code in cfgs else None
        accrued = sum(_balance(ledger, code, "insurance", seg) for seg in ledger.segments)
        on_chain_wallets = [n for n in shield_wallets if wallets[n].chain == chain]
        vault = sum(_balance(ledger, code, "custody", n) for n in on_chain_wallets)
        hot = sum(_balance(ledger, code, "custody", n) for n in hot_wallets if wallets[n].chain == chain)
        in_flight = sum(t.amount_minor for t in transfers.values()
                        if t.state == "signed" and t.asset == code and t.to_wallet in shield_wallets)
        # the exchange's own capital paid into the vault (RecordTreasuryFunding) is shield fund too,
        # but it is not the fee share: only what the sweeps brought counts against what accrued
        capital = sum(t.amount_minor for k, t in transfers.items()
                      if k.startswith("funding:") and t.asset == code and t.to_wallet in shield_wallets)
        rows.append({"asset": code, "decimals": spec.decimals, "accrued_minor": str(accrued),
                     "vault_minor": str(vault), "capital_minor": str(capital), "in_flight_minor": str(in_flight),
                     "due_minor": str(max(accrued - (vault - capital) - in_flight, 0)), "hot_minor": str(hot),
                     "vault_wallets": sorted(on_chain_wallets)})
        if vault == 0 and hot == 0:
            continue
        if code == value_asset:
            shield_value += vault
            hot_value += hot
            continue
        price = _price(engine, code, value_asset)
        if price is None:
            unpriced.append(code)
            continue
        shield_value += vault * price[0] // price[1]  # floored: the rule is checked conservatively below
        hot_value += -(-hot * price[0] // price[1])  # ceiled
    applicable = bool(hot_wallets or shield_wallets)
    ok: bool | None = None if unpriced or not applicable else shield_value >= hot_value
    return {"rule": "shield fund value >= hot wallet value (CoinEx)", "value_asset": value_asset,
            "shield_value_minor": str(shield_value), "hot_value_minor": str(hot_value), "unpriced": unpriced,
            "applicable": applicable, "ok": ok, "alert": applicable and ok is not True, "assets": rows}


@dataclass(frozen=True)
class ShieldRoute:
    """Where one asset's shield share is swept from and to, and who signs for the hot wallet."""

    asset: str
    hot_wallet: str
    hot_address: str
    hot_key_id: str
    signer: Any
    shield_wallet: str
    shield_address: str
    min_sweep_minor: int = 10_000


@dataclass
class StepReport:
    sent: list[str] = field(default_factory=list)  # txids broadcast this step
    recorded: list[str] = field(default_factory=list)  # transfer ids recorded in the ledger this step
    resent: int = 0
    errors: dict[str, str] = field(default_factory=dict)


class ShieldSweeper:
    """A custody worker: one `step()` records final sweeps, re-sends journaled ones the chain lost,
    and starts a sweep for each route whose due amount reached its minimum."""

    def __init__(self, node: Any, adapters: Mapping[str, Any], routes: Sequence[ShieldRoute], *,
                 value_asset: str = DEFAULT_VALUE_ASSET) -> None:
        if len(routes) > MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES} shield routes")
        self.node = node
        self.adapters = dict(adapters)
        self.routes = list(routes)
        self.value_asset = value_asset
        self.last: StepReport | None = None

    def status(self) -> dict[str, Any]:
        return self.node.read(lambda e: shield_status(e, self.value_asset))  # type: ignore[no-any-return]

    def _chain(self, asset: str) -> str:
        return self.node.read(lambda e: custody_state(e).assets[asset].chain)  # type: ignore[no-any-return]

    def step(self) -> StepReport:
        report = StepReport()
        self._record_final(report)
        status = {row["asset"]: row for row in self.status()["assets"]}
        for route in self.routes:
            row = status.get(route.asset)
            if row is None:
                continue
            due = int(row["due_minor"])
            if due < route.min_sweep_minor:
                continue
            try:
                report.sent.append(self._send(route, due))
            except RingfenceError as exc:  # e.g. the hot wallet has no confirmed coins yet: next step
                report.errors[route.asset] = f"{exc.code}: {exc}"
        self.last = report
        return report

    def _send(self, route: ShieldRoute, amount_minor: int) -> str:
        from .workers import Balancer

        adapter = self.adapters[self._chain(route.asset)]
        balancer = Balancer(self.node, adapter, deposit_signer=None, key_of_address={})
        return balancer.transfer(route.asset, from_wallet=route.hot_wallet, from_address=route.hot_address,
                                 key_id=route.hot_key_id, signer=route.signer, to_wallet=route.shield_wallet,
                                 to_address=route.shield_address, amount_minor=amount_minor, kind="shield")

    def _record_final(self, report: StepReport) -> None:
        def signed(engine: Any) -> list[tuple[Any, int, str]]:
            cs = custody_state(engine)
            return [(copy.copy(t), cs.assets[t.asset].finality_confirmations, cs.assets[t.asset].chain)
                    for t in cs.transfers.values() if t.state == "signed" and t.id.startswith(SWEEP_PREFIX)]

        for t, final, chain in self.node.read(signed):
            adapter = self.adapters.get(chain)
            if adapter is None:
                continue
            status = adapter.tx_status(t.txid)
            if status.state is TxState.UNKNOWN:
                try:  # dropped (restart before broadcast, a reorg): the same journaled bytes again
                    adapter.broadcast(bytes.fromhex(t.raw_tx))
                    report.resent += 1
                except TransactionRejected as exc:
                    report.errors[t.id] = f"re-broadcast refused: {exc.details.get('reason', exc.code)}"
                continue
            if status.state is not TxState.CONFIRMED or status.confirmations < final:
                continue
            fee, gas_asset, gas = t.network_fee_minor, "", 0
            if chain == "ethereum":
                receipt = adapter.w3.eth.get_transaction_receipt(t.txid)
                fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
                if t.asset != adapter.native_asset:  # an ERC-20 sweep: its gas is ETH from the same hot wallet
                    fee, gas_asset, gas = 0, adapter.native_asset, fee
            self.node.execute(RecordInternalTransfer(t.id, t.asset, t.from_wallet, t.to_wallet, t.amount_minor, fee,
                                                     t.txid, gas_asset, gas))
            report.recorded.append(t.id)


def localnet_shield_routes(net: Any, min_sweep_minor: int = 10_000) -> list[ShieldRoute]:
    """The LocalNet's one shield vault (BTC, 2-of-3 multisig) fed from its BTC hot wallet."""
    return [ShieldRoute("BTC", "btc_hot", net.btc_hot, "btc-hot", net.local, "shield_btc", net.cold["shield"],
                        min_sweep_minor)]
