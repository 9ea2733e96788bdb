"""Deposits on both chains: confirmations, credit, finality, reorg reversal, idempotency."""

from __future__ import annotations

from ringfence.custody.commands import ObserveDeposit, CreditDeposit
from ringfence.errors import RingfenceError
import pytest

from .conftest import balance


def _custody(net, asset, wallet):
    return net.ledger.custody(asset, wallet).balance


def test_btc_deposit_credits_after_confirmations_and_finalizes(net) -> None:
    addrs = net.open_user("alice")
    net.btc_fund_miner()
    txid = net.btc_send(addrs["bitcoin"], 150_000_000)
    net.btc_watcher.poll()
    assert balance(net, "alice", "BTC") == 0  # in the mempool: not even seen
    net.btc_mine(1)
    net.btc_watcher.poll()
    (dep,) = [d for d in net.state.deposits.values() if d.txid == txid]
    assert dep.state == "seen" and net.state.pending_deposits("BTC", "btc_deposit") == 150_000_000
    assert balance(net, "alice", "BTC") == 0  # 1 of 2 confirmations
    net.btc_mine(1)
    net.btc_watcher.poll()
    assert balance(net, "alice", "BTC") == 150_000_000
    assert _custody(net, "BTC", "btc_deposit") == 150_000_000
    assert net.btc.balance(addrs["bitcoin"]) == 150_000_000
    net.btc_watcher.poll()  # polling again changes nothing
    assert balance(net, "alice", "BTC") == 150_000_000
    net.btc_mine(4)
    net.btc_watcher.poll()
    assert dep.final and net.state.pending_deposits("BTC", "btc_deposit") == 0
    net.node.engine.check_invariants()


def test_eth_deposit_credit_and_replayed_commands_are_idempotent(net) -> None:
    addrs = net.open_user("bob")
    txid = net.eth_send(addrs["ethereum"], 2 * 10**18)
    net.eth_mine(2)
    net.eth_watcher.poll()
    assert balance(net, "bob", "ETH") == 2 * 10**18
    dep = next(d for d in net.state.deposits.values() if d.txid == txid)
    before = net.node.engine.state_hash()
    # The same observation and credit again (a watcher restarted from height 0): nothing changes.
    net.execute(ObserveDeposit("ethereum", txid, dep.index, "ETH", dep.address, dep.amount_minor, dep.height, dep.block_hash))
    net.execute(CreditDeposit("ethereum", txid, dep.index, 10, 0, []))
    net.eth_watcher.cursor = 0
    net.eth_watcher.poll()
    assert balance(net, "bob", "ETH") == 2 * 10**18
    assert dep.times_credited == 1
    net.node.engine.check_invariants()
    assert before != net.node.engine.state_hash()  # seq/time moved, but balances did not


def test_btc_reorg_before_finality_reverses_credit_once(net) -> None:
    addrs = net.open_user("carl")
    net.btc_fund_miner()
    txid = net.btc_send(addrs["bitcoin"], 70_000_000)
    net.btc_mine(2)
    net.btc_watcher.poll()
    assert balance(net, "carl", "BTC") == 70_000_000
    height = net.btc.tx_status(txid).block_height
    net.sim.reorganize(height, 3, bytes.fromhex("0014" + "cd" * 20), include_mempool=False)
    net.btc_watcher.poll()
    dep = next(d for d in net.state.deposits.values() if d.txid == txid)
    assert dep.state == "reversed" and dep.times_reversed == 1
    assert balance(net, "carl", "BTC") == 0 and _custody(net, "BTC", "btc_deposit") == 0
    net.btc_watcher.poll()
    assert dep.times_reversed == 1  # never reversed twice
    # The transaction is back in the mempool; once re-mined it is credited again (net once).
    net.btc_mine(2)
    net.btc_watcher.poll()
    assert dep.state == "credited" and balance(net, "carl", "BTC") == 70_000_000
    assert dep.times_credited - dep.times_reversed == 1
    net.node.engine.check_invariants()


def test_eth_reorg_drops_uncredited_and_reverses_credited(net) -> None:
    addrs = net.open_user("dora")
    snap = net.dev.snapshot()
    txid = net.eth_send(addrs["ethereum"], 10**18)
    net.eth_mine(3)
    net.eth_watcher.poll()
    assert balance(net, "dora", "ETH") == 10**18
    net.dev.reorg_to(snap, 6)  # the deposit's block is gone and the tx with it
    net.eth_watcher.poll()
    dep = next(d for d in net.state.deposits.values() if d.txid == txid)
    assert dep.state == "reversed" and balance(net, "dora", "ETH") == 0
    assert net.ledger.custody("ETH", "eth_deposit").balance == 0
    net.node.engine.check_invariants()


def test_below_minimum_and_unknown_address(net) -> None:
    addrs = net.open_user("erin")
    net.btc_fund_miner()
    txid = net.btc_send(addrs["bitcoin"], 5_000)  # minimum deposit is 10,000 sat
    net.btc_mine(3)
    net.btc_watcher.poll()
    dep = next(d for d in net.state.deposits.values() if d.txid == txid)
    assert dep.state == "below_minimum" and balance(net, "erin", "BTC") == 0
    with pytest.raises(RingfenceError) as exc:
        net.execute(ObserveDeposit("bitcoin", "00" * 32, 0, "BTC", net.btc_hot, 10**6, 1, "x"))
    assert exc.value.field == "address"
    with pytest.raises(RingfenceError) as exc:
        net.execute(ObserveDeposit("bitcoin", "00" * 32, 0, "DOGE", addrs["bitcoin"], 10**6, 1, "x"))
    assert exc.value.code == "RF_UNSUPPORTED_ASSET"


def test_state_survives_restart_from_journal(net) -> None:
    addrs = net.open_user("fay")
    net.btc_fund_miner()
    net.btc_send(addrs["bitcoin"], 20_000_000)
    net.btc_mine(2)
    net.btc_watcher.poll()
    h = net.node.engine.state_hash()
    net.crash_and_restart()
    assert net.node.engine.state_hash() == h
    assert balance(net, "fay", "BTC") == 20_000_000


def test_reversal_of_a_spent_credit_records_shortfall_and_freezes_withdrawals(net) -> None:
    from ringfence.custody.commands import RequestWithdrawal
    import hashlib

    addrs = net.open_user("gil")
    net.btc_fund_miner()
    txid = net.btc_send(addrs["bitcoin"], 40_000_000)
    net.btc_mine(2)
    net.btc_watcher.poll()
    # gil spends most of the (credited, not yet final) deposit into a withdrawal hold.
    net.request("s1", "gil", "BTC", net.cold["btc"], 39_000_000, confirm=False)
    height = net.btc.tx_status(txid).block_height
    net.sim.reorganize(height, 3, bytes.fromhex("0014" + "cd" * 20), include_mempool=False)
    net.btc_watcher.poll()
    dep = next(d for d in net.state.deposits.values() if d.txid == txid)
    assert dep.state == "reversed" and dep.shortfall_minor == 39_000_000 + 10_000
    assert "gil" in net.state.withdrawals_frozen
    with pytest.raises(RingfenceError) as exc:
        net.execute(RequestWithdrawal("s2", "gil", "BTC", "btc_hot", net.cold["btc"], 50_000, 10_000,
                                      hashlib.sha256(b"x").hexdigest()))
    assert exc.value.field == "account_id" and "frozen" in str(exc.value)
    # The withdrawal requested before the reorg can never reach signing.
    from ringfence.custody.commands import ConfirmWithdrawalEmail

    net.execute(ConfirmWithdrawalEmail("s1", "BTC", "btc_hot", "token-s1"))
    net.withdrawals.run_until_idle()
    assert net.state.withdrawals["s1"].state == "manual_review"  # ~100% of the balance to a new address
    net.execute(net.sign("manual_review", "s1", "ana", True, "ok"))
    net.withdrawals.run_until_idle()
    assert net.state.withdrawals["s1"].state == "approved" and not net.state.withdrawals["s1"].txid
    assert "frozen" in net.withdrawals.errors["s1"]
    net.node.engine.check_invariants()
