"""Fault injection on the local Ethereum chain: leaks, double credits, reorgs, memory tampering."""

from __future__ import annotations

import json

import pytest
from eth_account import Account

from ringfence.errors import Halted
from ringfence.ledger.commands import RegisterAsset
from ringfence.risk.halts import active_halts, halt_for
from ringfence.reconcile.reconciler import ReconcileSettings, Reconciler, WalletSpec

from .custody_sim import SimCreditDeposit, SimCustody, SimRequestWithdrawal

ONE_ETH = 10**18


def _reconciler(node, eth, custody, **settings):
    wallet = WalletSpec("hot1", "ETH", "ethereum", eth.adapter, (eth.hot_address,))
    return Reconciler(node, wallets=[wallet], custody=custody, settings=ReconcileSettings(**settings))


def _deposit(eth, custody, amount, *, confirm: bool = True):
    """A user's deposit lands on the hot wallet; the watcher sees it as pending."""
    sent = eth.adapter.broadcast(eth.dev.sign_transfer(eth.dev.dev_key(1), eth.hot_address, amount))
    custody.observe("ETH", "hot1", sent.txid, amount)
    return sent.txid


def _credit(node, custody, txid, amount, owner="alice"):
    node.execute(SimCreditDeposit("ETH", "hot1", owner, amount, txid, 0))
    custody.forget("ETH", "hot1", txid)


def _funded_then_leaked(node, eth, custody) -> str:
    """Alice's 5 ETH deposited and credited, then 1 ETH leaked from the hot wallet to an attacker (auto-mined):
    the attacker's address."""
    txid = _deposit(eth, custody, 5 * ONE_ETH)
    _credit(node, custody, txid, 5 * ONE_ETH)
    attacker = Account.from_key(bytes([0x66]) * 32).address
    eth.adapter.broadcast(eth.dev.sign_transfer(eth.hot_key, attacker, ONE_ETH))
    return attacker


def test_clean_state_has_no_mismatch_and_no_halt(node, eth):
    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    txid = _deposit(eth, custody, 5 * ONE_ETH)
    assert rec.run_once().mismatches == []  # pending, not credited: inside the band
    _credit(node, custody, txid, 5 * ONE_ETH)
    report = rec.run_once()
    assert report.mismatches == [] and report.halts_submitted == []
    assert report.chain_rows[0].chain_minor == report.chain_rows[0].ledger_minor == 5 * ONE_ETH
    assert active_halts(node.engine) == []


def test_leaked_hot_key_pauses_withdrawals_of_the_asset_within_one_block(node, eth):
    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    txid = _deposit(eth, custody, 5 * ONE_ETH)
    _credit(node, custody, txid, 5 * ONE_ETH)
    assert rec.new_blocks() and rec.run_once().mismatches == []
    # the key leaks: a transaction drains funds outside the withdrawal flow (auto-mined: one block)
    attacker = Account.from_key(bytes([0x66]) * 32).address
    leak = eth.adapter.broadcast(eth.dev.sign_transfer(eth.hot_key, attacker, 2 * ONE_ETH))
    assert rec.new_blocks()  # the worker wakes on the new block
    report = rec.run_once(internal=False)
    [m] = report.mismatches
    assert m.kind == "hot_wallet_shortfall" and m.scope == "ETH"
    assert m.expected_minor == 5 * ONE_ETH and m.actual_minor < 3 * ONE_ETH  # 2 ETH + gas left
    assert report.halts_submitted == [m.halt_id]
    [halt] = active_halts(node.engine)
    assert (halt["scope_kind"], halt["scope"], halt["level"]) == ("asset", "ETH", "WITHDRAWALS_PAUSED")
    evidence = json.loads(halt["evidence"])
    assert evidence["details"]["height"] == eth.adapter.tx_status(leak.txid).block_height
    assert evidence["details"]["addresses"] == [eth.hot_address]
    assert int(evidence["delta_minor"]) == m.actual_minor - 5 * ONE_ETH
    assert halt_for(node.engine, "asset", "ETH") == "WITHDRAWALS_PAUSED"
    # withdrawals of ETH are refused, other things are not
    with pytest.raises(Halted, match="WITHDRAWALS_PAUSED"):
        node.execute(SimRequestWithdrawal("ETH", "hot1", "alice", ONE_ETH))
    node.execute(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    # idempotent: the same discrepancy seen again is the same halt
    again = rec.run_once(internal=False)
    assert again.halts_submitted == [] and again.halts_already_active == [m.halt_id]
    assert len(active_halts(node.engine)) == 1
    [incident] = rec.incidents.incidents()
    assert incident["halt_id"] == m.halt_id and incident["seen_count"] == 2


def test_deposit_credited_twice_is_detected_and_halted(node, eth):
    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    txid = _deposit(eth, custody, 3 * ONE_ETH)
    _credit(node, custody, txid, 3 * ONE_ETH)
    node.execute(SimCreditDeposit("ETH", "hot1", "alice", 3 * ONE_ETH, txid, 0))  # the injected bug
    report = rec.run_once()
    kinds = {m.kind for m in report.mismatches}
    assert {"duplicate_credit", "hot_wallet_shortfall", "liabilities_exceed_reserves"} <= kinds
    assert "engine_journal_mismatch" not in kinds  # the engine did what the journal says
    dup = next(m for m in report.mismatches if m.kind == "duplicate_credit")
    assert dup.subject == f"deposit:{txid}:0" and dup.details["again_seq"] > dup.details["first_seq"]
    levels = {(h["scope_kind"], h["scope"], h["level"]) for h in active_halts(node.engine)}
    assert levels == {("asset", "ETH", "WITHDRAWALS_PAUSED")}
    with pytest.raises(Halted):
        node.execute(SimRequestWithdrawal("ETH", "hot1", "alice", ONE_ETH))


def test_reorg_removing_a_deposit_before_finality_raises_no_halt(node, eth):
    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    first = _deposit(eth, custody, ONE_ETH)
    _credit(node, custody, first, ONE_ETH)
    snap = eth.dev.snapshot()
    txid = _deposit(eth, custody, 4 * ONE_ETH)  # seen, pending, not final, not credited
    assert rec.new_blocks() and rec.run_once().mismatches == []
    eth.dev.reorg_to(snap, 3)  # the deposit's block is replaced; the tx is gone
    assert eth.adapter.balance(eth.hot_address) == ONE_ETH
    assert custody.pending_deposits("ETH", "hot1") == 4 * ONE_ETH  # the watcher has not noticed yet
    assert rec.new_blocks()
    report = rec.run_once()
    assert report.mismatches == [] and active_halts(node.engine) == []
    custody.forget("ETH", "hot1", txid)  # the watcher reverses the pending deposit
    assert rec.run_once().mismatches == []


def test_reorg_removing_a_credited_deposit_before_finality_raises_no_halt(node, eth):
    """The custody flows credit before finality; the deposit stays in `pending_deposits` until final."""
    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    snap = eth.dev.snapshot()
    txid = _deposit(eth, custody, 2 * ONE_ETH)
    node.execute(SimCreditDeposit("ETH", "hot1", "alice", 2 * ONE_ETH, txid, 0))  # credited, not final
    assert rec.run_once().mismatches == []
    eth.dev.reorg_to(snap, 3)
    assert eth.adapter.balance(eth.hot_address) == 0
    report = rec.run_once()
    assert [m.kind for m in report.mismatches if m.rule.level] == []
    assert active_halts(node.engine) == []


def test_reorg_removing_a_final_credited_deposit_does_halt(node, eth):
    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    snap = eth.dev.snapshot()
    txid = _deposit(eth, custody, 2 * ONE_ETH)
    _credit(node, custody, txid, 2 * ONE_ETH)  # credited as final
    eth.dev.reorg_to(snap, 3)
    report = rec.run_once()
    assert [m.kind for m in report.mismatches if m.rule.level] == ["hot_wallet_shortfall", "liabilities_exceed_reserves"]


def test_balance_changed_in_engine_memory_halts_the_venue(node, eth):
    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    txid = _deposit(eth, custody, ONE_ETH)
    _credit(node, custody, txid, ONE_ETH)
    assert rec.run_once().mismatches == []
    node.engine.ledger.get("bob", "ETH").credits_posted += 7  # tampering, no command
    report = rec.run_once()
    paths = {(m.kind, m.details.get("path")) for m in report.mismatches}
    assert ("engine_journal_mismatch", "replay") in paths and ("engine_journal_mismatch", "shadow") in paths
    assert ("ledger_not_zero_sum", None) in paths
    assert halt_for(node.engine, "venue", "*") == "HALTED"
    with pytest.raises(Halted, match="venue is HALTED"):
        node.execute(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    with pytest.raises(Halted):
        node.execute(SimCreditDeposit("ETH", "hot1", "alice", 1, "0xabc", 0))


def test_a_shortfall_seen_only_once_is_not_evidence(node, eth):
    """The view and the ledger are read a moment apart: a withdrawal settling in between can look
    like a shortfall on one read. Only a shortfall seen twice with the same amounts halts."""
    custody = SimCustody()
    txid = _deposit(eth, custody, 4 * ONE_ETH)
    _credit(node, custody, txid, 4 * ONE_ETH)
    attacker = Account.from_key(bytes([0x67]) * 32).address
    sent = eth.adapter.broadcast(eth.dev.sign_transfer(eth.hot_key, attacker, ONE_ETH))  # a real withdrawal
    fee = 4 * ONE_ETH - ONE_ETH - eth.adapter.balance(eth.hot_address)

    class LateView(SimCustody):
        calls = 0

        def in_flight_withdrawals(self, asset, wallet):
            LateView.calls += 1
            return 0 if LateView.calls == 1 else ONE_ETH + fee  # the first read missed it

    rec = _reconciler(node, eth, LateView())
    assert rec.run_once(internal=False).mismatches == [] and LateView.calls == 2
    assert active_halts(node.engine) == [] and sent.txid


def test_a_lifted_halt_is_not_raised_again_for_the_same_evidence_but_a_new_loss_halts(node, eth, operators):
    from .conftest import desk_for

    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    attacker = _funded_then_leaked(node, eth, custody)
    [halt_id] = rec.run_once(internal=False).halts_submitted
    [halt] = active_halts(node.engine)
    assert halt["halt_id"] == halt_id
    node.execute(desk_for(node, operators).lift(node.engine, halt_id, "loss written off", ["op1", "op2"]))
    report = rec.run_once(internal=False)
    assert report.acknowledged == [halt_id] and report.halts_submitted == [] and active_halts(node.engine) == []
    eth.adapter.broadcast(eth.dev.sign_transfer(eth.hot_key, attacker, ONE_ETH))  # it leaks again
    report = rec.run_once(internal=False)
    assert len(report.halts_submitted) == 1 and report.halts_submitted[0] != halt_id
    assert [h["level"] for h in active_halts(node.engine)] == ["WITHDRAWALS_PAUSED"]


def test_a_shortfall_that_cleared_after_a_lift_and_comes_back_with_the_same_amounts_halts_again(node, eth, operators):
    """A lift acknowledges one occurrence: while that shortfall lasts it is not raised again, but once a pass
    saw the wallet whole, a shortfall of the very same amounts is a new occurrence and a new halt."""
    from .conftest import desk_for

    custody = SimCustody()
    rec = _reconciler(node, eth, custody)
    _funded_then_leaked(node, eth, custody)
    report = rec.run_once(internal=False)
    [first] = report.mismatches
    [halt_id] = report.halts_submitted
    node.execute(desk_for(node, operators).lift(node.engine, halt_id, "loss under review", ["op1", "op2"]))
    assert rec.run_once(internal=False).acknowledged == [halt_id]  # the same occurrence: not raised again
    # a withdrawal recorded for exactly the missing amount covers it: the wallet is whole on the next pass
    short = first.expected_minor - first.actual_minor
    custody.in_flight[("ETH", "hot1")] = {"w-1": short}
    clear = rec.run_once(internal=False)
    assert clear.mismatches == [] and clear.chain_rows[0].status == "OK"
    custody.in_flight.clear()  # that withdrawal failed: the very same amounts are missing again
    again = rec.run_once(internal=False)
    [m] = again.mismatches
    assert (m.expected_minor, m.actual_minor) == (first.expected_minor, first.actual_minor)
    assert again.halts_submitted == [m.halt_id] and m.halt_id != halt_id and again.acknowledged == []
    assert [h["halt_id"] for h in active_halts(node.engine)] == [m.halt_id]
    with pytest.raises(Halted, match="WITHDRAWALS_PAUSED"):
        node.execute(SimRequestWithdrawal("ETH", "hot1", "alice", ONE_ETH))


def test_a_restarted_reconciler_keeps_a_lasting_shortfall_s_halt_and_its_lift(node, eth, operators):
    """A new reconciler (a restart) sees the shortfall that was halted and lifted, and one still halted, as
    the same occurrences: it raises neither again (no pass of its own saw those wallets whole)."""
    from .conftest import desk_for

    custody = SimCustody()
    _funded_then_leaked(node, eth, custody)
    [halt_id] = _reconciler(node, eth, custody).run_once(internal=False).halts_submitted
    again = _reconciler(node, eth, custody).run_once(internal=False)  # restarted while it is halted
    assert again.halts_submitted == [] and again.halts_already_active == [halt_id]
    node.execute(desk_for(node, operators).lift(node.engine, halt_id, "loss under review", ["op1", "op2"]))
    lifted = _reconciler(node, eth, custody).run_once(internal=False)  # restarted after the lift
    assert lifted.halts_submitted == [] and lifted.acknowledged == [halt_id] and active_halts(node.engine) == []
