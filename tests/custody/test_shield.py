"""The shield fund on chain (issue 15, item 6), against LocalNet's real local chains.

Fees from a real trade accrue 10 % to `insurance:spot`; the sweeper moves exactly the due amount
from the BTC hot wallet into the 2-of-3 shield vault by a real transaction, journaled before
broadcast and recorded once final: the chain and the ledger move equally, the ledger still sums
to zero per asset, insurance is untouched, and a second step sends nothing. CoinEx's rule
(shield value >= hot value) is checked: a vault smaller than the hot wallet raises the alert,
treasury funding of the vault clears it.
"""

from __future__ import annotations

from ringfence.custody.commands import RecordTreasuryFunding, custody_state
from ringfence.custody.shield import ShieldSweeper, localnet_shield_routes, shield_status
from ringfence.ledger.model import SYSTEM_OWNER
from ringfence.trading.commands import ListMarket, PlaceOrder

from .flows import fund_btc, fund_eth

BTC = 10**8
ETH = 10**18


def _asset_sum(net, asset: str) -> int:
    return sum(a.balance for a in net.ledger.iter_accounts() if a.asset == asset)


def _trade_btc_for_eth(net) -> None:
    """alice sells 2 BTC to bob for 40 ETH: bob pays a 0.1 % BTC fee, 10 % of it to insurance:spot."""
    fund_btc(net, "alice", 3 * BTC)
    fund_eth(net, "bob", 50 * ETH)
    net.execute(ListMarket("BTCETH", "BTC", "ETH", "spot", tick_size=10**15, lot_size=10**5, min_qty=10**5, band_ppm=0))
    net.execute(PlaceOrder("alice", "BTCETH", "SELL", "LIMIT", "GTC", price=20 * ETH, quantity=2 * BTC))
    net.execute(PlaceOrder("bob", "BTCETH", "BUY", "LIMIT", "GTC", price=20 * ETH, quantity=2 * BTC))


def test_sweep_moves_the_accrued_share_on_chain_and_in_the_ledger(net) -> None:
    _trade_btc_for_eth(net)
    accrued = net.ledger.insurance("BTC", "spot").balance
    assert accrued == 2 * BTC * 1000 // 1_000_000 // 10 == 20_000  # fee 0.1 % of 2 BTC, a tenth of it
    shield_addr = net.cold["shield"]
    hot_chain_before = net.btc.balance(net.btc_hot)
    assert net.btc.balance(shield_addr) == 0
    status = net.node.read(shield_status)
    btc = next(r for r in status["assets"] if r["asset"] == "BTC")
    assert (btc["accrued_minor"], btc["vault_minor"], btc["due_minor"]) == ("20000", "0", "20000")

    sweeper = ShieldSweeper(net.node, {"bitcoin": net.btc, "ethereum": net.eth}, localnet_shield_routes(net, 10_000))
    first = sweeper.step()
    assert len(first.sent) == 1 and not first.errors
    (sweep,) = [t for t in custody_state(net.node.engine).transfers.values() if t.id.startswith("shield-")]
    assert (sweep.state, sweep.amount_minor, sweep.from_wallet, sweep.to_wallet) == ("signed", 20_000, "btc_hot", "shield_btc")
    # journaled, broadcast, not final: nothing due any more, nothing sent twice
    assert sweeper.step().sent == []
    assert net.ledger.custody("BTC", "shield_btc").balance == 0  # the ledger waits for finality

    net.btc_mine(6)
    done = sweeper.step()
    assert done.recorded == [sweep.id] and done.sent == []
    fee = sweep.network_fee_minor
    assert fee > 0
    # on chain and in the ledger, the same move
    assert net.btc.balance(shield_addr) == 20_000 == net.ledger.custody("BTC", "shield_btc").balance
    assert net.btc.balance(net.btc_hot) == hot_chain_before - 20_000 - fee == net.ledger.custody("BTC", "btc_hot").balance
    assert net.ledger.insurance("BTC", "spot").balance == accrued  # the fund's claim is not debited
    assert _asset_sum(net, "BTC") == 0 and _asset_sum(net, "ETH") == 0
    net.node.engine.ledger.check_invariants()
    assert sweeper.step().sent == [] and sweeper.step().recorded == []
    btc = next(r for r in net.node.read(shield_status)["assets"] if r["asset"] == "BTC")
    assert (btc["vault_minor"], btc["due_minor"], btc["in_flight_minor"]) == ("20000", "0", "0")


def test_sweep_survives_a_restart_between_journal_and_broadcast(net) -> None:
    _trade_btc_for_eth(net)
    routes = localnet_shield_routes(net, 10_000)
    sweeper = ShieldSweeper(net.node, {"bitcoin": net.btc}, routes)
    from ringfence.custody.workers import Balancer

    # die after RecordTransferSigned, before the broadcast
    original = Balancer._journal_and_send

    def journal_only(self, tid, asset, src, dst, amount, fee, txid, raw):
        from ringfence.custody.commands import RecordTransferSigned

        self.node.execute(RecordTransferSigned(tid, asset, src, dst, amount, fee, txid, raw.hex()))
        raise RuntimeError("killed before broadcast")

    Balancer._journal_and_send = journal_only
    try:
        try:
            sweeper.step()
        except RuntimeError:
            pass
    finally:
        Balancer._journal_and_send = original
    net.crash_and_restart()
    sweeper = ShieldSweeper(net.node, {"bitcoin": net.btc}, routes)
    first = sweeper.step()
    assert first.resent == 1 and first.sent == []  # the journaled bytes, not a second transaction
    net.btc_mine(6)
    assert len(sweeper.step().recorded) == 1
    assert net.btc.balance(net.cold["shield"]) == 20_000 == net.ledger.custody("BTC", "shield_btc").balance


def test_coinex_rule_alerts_when_the_shield_is_worth_less_than_hot(net) -> None:
    _trade_btc_for_eth(net)
    sweeper = ShieldSweeper(net.node, {"bitcoin": net.btc}, localnet_shield_routes(net, 10_000))
    sweeper.step()
    net.btc_mine(6)
    sweeper.step()
    # Only BTC wallets hold anything priced in BTC terms: value everything in BTC. ETH has no
    # BTC price here, so valuing in BTC leaves ETH unpriced -> unknown, which is an alert too.
    status = net.node.read(lambda e: shield_status(e, "BTC"))
    assert status["applicable"] and status["ok"] is None and status["unpriced"] == ["ETH"] and status["alert"]
    # Drain ETH hot out of the picture by valuing with a BTC price for ETH: list ETHBTC.
    net.execute(ListMarket("ETHBTC", "ETH", "BTC", "spot", tick_size=10**3, lot_size=10**15, min_qty=10**15, band_ppm=0))
    from ringfence.trading.commands import SetReferencePrice

    net.execute(SetReferencePrice("ETHBTC", 5_000_000))  # 0.05 BTC per ETH
    status = net.node.read(lambda e: shield_status(e, "BTC"))
    hot_btc = net.ledger.custody("BTC", "btc_hot").balance
    hot_eth = net.ledger.custody("ETH", "eth_hot").balance
    expected_hot = hot_btc + -(-hot_eth * 5_000_000 // ETH)
    assert status["hot_value_minor"] == str(expected_hot)
    assert status["shield_value_minor"] == "20000"
    assert status["ok"] is False and status["alert"]
    # The treasury tops the vault up on chain (2-of-3 vault, real payment) and records it.
    top_up = expected_hot + 1_000_000
    txid = net.btc_send(net.cold["shield"], top_up)
    net.btc_mine(1)
    net.execute(RecordTreasuryFunding("shield-topup-1", "BTC", "shield_btc", top_up, txid))
    status = net.node.read(lambda e: shield_status(e, "BTC"))
    assert status["ok"] is True and not status["alert"]
    assert int(status["shield_value_minor"]) == 20_000 + top_up == net.btc.balance(net.cold["shield"])
    assert net.ledger.find(SYSTEM_OWNER, "BTC", "insurance", "spot").balance == 20_000


def test_no_custody_wallets_means_not_applicable(tmp_path) -> None:
    from ringfence.app import new_engine

    status = shield_status(new_engine())
    assert status["applicable"] is False and status["ok"] is None and status["alert"] is False
