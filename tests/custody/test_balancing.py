"""Hot/warm/cold: sweeps from deposit addresses to hot, refills of hot from warm, drains of hot to
cold when hot exceeds its share of reserves; ledger custody accounts track the chain throughout."""

from __future__ import annotations

import pytest

from ringfence.custody.commands import (AuthorizeVaultRefillSigned, RecordInternalTransfer, RecordTransferSigned,
                                       RecordTreasuryFunding)
from ringfence.custody.vault_cmds import refill_subject
from ringfence.custody.wallets import BalancingRule, Move, build_btc_payment, plan_balancing
from ringfence.errors import Forbidden, RingfenceError

from .flows import fund_btc


RULE = BalancingRule("BTC", "btc_hot", "btc_warm", "btc_cold", hot_max_bp=2_000, hot_min_bp=500, hot_target_bp=1_000,
                     sweep_min_minor=10_000)


def test_plan_balancing_pure() -> None:
    # Sweep dust-free deposit addresses; hot far above 20% of reserves -> drain to the 10% target.
    moves = plan_balancing(RULE, deposit_balances={"a1": 50_000, "a2": 5_000}, wallet_balances={"btc_hot": 500_000,
                           "btc_warm": 200_000, "btc_cold": 300_000}, deposit_wallet="btc_deposit")
    assert moves[0] == Move("sweep", "btc_deposit", "btc_hot", 50_000, "a1")
    reserves = 550_000 + 200_000 + 300_000 + 5_000
    assert moves[1] == Move("drain", "btc_hot", "btc_cold", 550_000 - reserves // 10)
    # Hot below 5%: refill from warm first, then cold.
    moves = plan_balancing(RULE, deposit_balances={}, wallet_balances={"btc_hot": 10, "btc_warm": 30,
                           "btc_cold": 10_000}, deposit_wallet="btc_deposit")
    assert moves == [Move("refill", "btc_warm", "btc_hot", 30), Move("refill", "btc_cold", "btc_hot", 10_040 // 10 - 10 - 30)]
    with pytest.raises(RingfenceError):
        BalancingRule("BTC", "h", None, "c", hot_max_bp=100, hot_min_bp=500)


def _chain_matches_ledger(net) -> None:
    for wallet, addr in (("btc_hot", net.btc_hot), ("btc_warm", net.btc_warm), ("btc_cold", net.cold["btc"])):
        assert net.ledger.custody("BTC", wallet).balance == net.btc.balance(addr), wallet


def test_sweep_drain_and_refill_on_chain(net) -> None:
    fund_btc(net, "alice", 300_000_000)  # deposit + sweep into hot
    _chain_matches_ledger(net)
    assert net.ledger.custody("BTC", "btc_deposit").balance == net.btc.balance(net.state.deposit_addresses[
        next(k for k in net.state.deposit_addresses if k.startswith("bitcoin:"))][2])
    hot = net.ledger.custody("BTC", "btc_hot").balance
    plan = plan_balancing(RULE, deposit_balances={}, wallet_balances={"btc_hot": hot, "btc_warm": 0, "btc_cold": 0},
                          deposit_wallet="btc_deposit")
    (drain,) = plan
    assert drain.kind == "drain" and drain.to_wallet == "btc_cold"
    net.btc_balancer.transfer("BTC", from_wallet="btc_hot", from_address=net.btc_hot, key_id="btc-hot", signer=net.local,
                              to_wallet="btc_cold", to_address=net.cold["btc"], amount_minor=drain.amount_minor, kind="drain")
    net.btc_mine(1)
    assert net.btc_balancer.record_confirmed("BTC", 1) == 1
    _chain_matches_ledger(net)
    hot = net.ledger.custody("BTC", "btc_hot").balance
    reserves = sum(net.ledger.custody("BTC", w).balance for w in ("btc_hot", "btc_warm", "btc_cold"))
    assert hot * 10_000 <= reserves * RULE.hot_max_bp  # hot kept below its share
    # Warm is funded from outside (treasury), then refills hot.
    top_up = net.btc_send(net.btc_warm, 20_000_000)
    net.btc_mine(1)
    net.execute(RecordTreasuryFunding("f-1", "BTC", "btc_warm", 20_000_000, top_up))
    # a transfer out of a vault without a decision is refused (custody/vault_cmds.py), nothing journaled
    refill = dict(from_wallet="btc_warm", from_address=net.btc_warm, key_id="btc-warm", signer=net.local,
                  to_wallet="btc_hot", to_address=net.btc_hot, amount_minor=10_000_000, kind="refill")
    seq = net.node.engine.last_seq
    with pytest.raises(Forbidden, match="needs a decision first"):
        net.btc_balancer.transfer("BTC", **refill)
    assert net.node.engine.last_seq == seq
    # the operator quorum decides it for exactly this transaction; then it is journaled and sent
    raw, txid, fee = build_btc_payment(net.btc, from_address=net.btc_warm, key_id="btc-warm", signer=net.local,
                                       outputs=[(net.btc_hot, 10_000_000)], fee_rate_sat_per_vb=2, request_id="r-1",
                                       reason="refill")
    subject = refill_subject("warm-r1", "BTC", "btc_warm", "btc_hot", 10_000_000)
    net.execute(AuthorizeVaultRefillSigned("warm-r1", "BTC", "btc_warm", "btc_hot", 10_000_000, fee, txid,
                                           net.desk.signs(["tina", "tom"], "vault.refill", subject)))
    net.execute(RecordTransferSigned("warm-r1", "BTC", "btc_warm", "btc_hot", 10_000_000, fee, txid, raw.hex()))
    net.btc.broadcast(raw)
    net.btc_mine(1)
    net.btc_balancer.record_confirmed("BTC", 1)
    _chain_matches_ledger(net)
    net.node.engine.check_invariants()


def test_internal_transfer_idempotent_and_validated(net) -> None:
    fund_btc(net, "bob", 100_000_000)
    cmd = RecordInternalTransfer("t-1", "BTC", "btc_hot", "btc_cold", 1_000, 0, "ab" * 32)
    net.execute(cmd)
    net.execute(cmd)
    assert net.ledger.custody("BTC", "btc_cold").balance == 1_000
    with pytest.raises(RingfenceError) as exc:
        net.execute(RecordInternalTransfer("t-2", "BTC", "btc_hot", "eth_hot", 1, 0, "x"))
    assert exc.value.field == "to_wallet"


def test_shield_fund_is_a_public_cold_multisig(net) -> None:
    pub = net.state.public_addresses()
    assert pub == {"shield_btc": [net.cold["shield"]]}
    assert net.cold["shield"].startswith("bcrt1q") and len(net.cold["shield"]) == 64  # P2WSH
    assert net.state.wallets["shield_btc"].tier == "shield"


def test_eth_hot_drain_and_withdrawal_share_engine_nonces(net) -> None:
    from .flows import fund_eth

    fund_eth(net, "erin", 4 * 10**18)
    tx = net.eth_balancer.transfer("ETH", from_wallet="eth_hot", from_address=net.eth_hot, key_id="eth-hot",
                                   signer=net.local, to_wallet="eth_cold", to_address=net.cold["eth"],
                                   amount_minor=10**18, kind="drain")
    net.request("n1", "erin", "ETH", "0x" + "ab" * 20, 10**17)
    net.withdrawals.run_until_idle()
    w = net.state.withdrawals["n1"]
    assert w.nonce == 1 and w.state == "broadcast"  # the drain took nonce 0 through the engine
    net.eth_mine(8)
    net.eth_balancer.record_confirmed("ETH", 1)
    net.withdrawals.run_until_idle()
    assert w.state == "settled" and net.eth.tx_status(tx).confirmations >= 8
    assert net.ledger.custody("ETH", "eth_hot").balance == net.eth.balance(net.eth_hot)
    assert net.ledger.custody("ETH", "eth_cold").balance == net.eth.balance(net.cold["eth"]) == 10**18


def test_sweep_is_journaled_before_broadcast_and_survives_a_crash(net) -> None:
    from ringfence.custody.workers import SimulatedCrash

    addrs = net.open_user("finn")
    net.btc_fund_miner()
    net.btc_send(addrs["bitcoin"], 30_000_000)
    net.btc_mine(2)
    net.btc_watcher.poll()
    net.btc_balancer.crash_at = "after_record_transfer"
    with pytest.raises(SimulatedCrash):
        net.btc_balancer.sweep("BTC", "btc_deposit", "btc_hot", net.btc_hot, 10_000)
    assert not net.sim.mempool  # journaled, never sent
    budget = net.state.in_flight_transfers("BTC", "btc_deposit")
    assert 30_000_000 - 1_000 < budget <= 30_000_000  # what reconciliation must allow for
    net.crash_and_restart()
    assert net.state.in_flight_transfers("BTC", "btc_deposit") == budget
    assert net.btc_balancer.resend_pending() == 1
    assert net.btc_balancer.resend_pending() == 1  # a second re-send is the same transaction (already known)
    assert len(net.sim.mempool) == 1
    net.btc_mine(1)
    assert net.btc_balancer.record_confirmed("BTC", 1) == 1
    assert net.state.in_flight_transfers("BTC", "btc_deposit") == 0
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
    assert net.ledger.custody("BTC", "btc_deposit").balance == net.btc.balance(addrs["bitcoin"]) == 0
    net.node.engine.check_invariants()
