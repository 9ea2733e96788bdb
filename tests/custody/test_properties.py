"""Property tests: conservation after every step; no double credit and no double reversal under random
reorg sequences; the ledger's user credits always equal the deposits currently on the chain's best
branch (after the watcher polled); no double broadcast under random crash points."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, seed, settings, strategies as st

from ringfence.custody.deposits import CREDITED_STATES
from ringfence.errors import InsufficientFunds
from ringfence.custody.localnet import LocalNet

from .flows import fund_btc, outside_btc_address

OPS = st.lists(st.one_of(
    st.tuples(st.just("deposit"), st.integers(20_000, 5_000_000)),
    st.tuples(st.just("mine"), st.integers(1, 3)),
    st.tuples(st.just("reorg"), st.integers(1, 4), st.integers(0, 3)),
    st.tuples(st.just("poll"), st.just(0)),
), min_size=1, max_size=25)


@seed(7)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_random_reorgs_never_double_credit(eth_chain, ops) -> None:
    print("seed 7, ops:", ops)
    with tempfile.TemporaryDirectory() as d:
        net = LocalNet(d, eth=eth_chain, key_seed="prop")
        net.bootstrap()
        addr = net.open_user("pat")["bitcoin"]
        net.btc_fund_miner()
        for op in ops:
            if op[0] == "deposit":
                try:
                    net.btc_send(addr, op[1])
                except InsufficientFunds:
                    pass  # the miner's coins are all in the mempool: skip
            elif op[0] == "mine":
                net.btc_mine(op[1])
            elif op[0] == "reorg":
                depth = min(op[1], net.sim.height - 104)
                if depth >= 1:
                    net.sim.reorganize(net.sim.height - depth + 1, depth + 1 + op[2], bytes.fromhex("0014" + "ee" * 20),
                                       include_mempool=bool(op[2] % 2))
            net.btc_watcher.poll()
            net.node.engine.check_invariants()  # conservation + each deposit credited net 0 or 1 times
            credited = sum(x.amount_minor for x in net.state.deposits.values() if x.state in CREDITED_STATES)
            acct = net.ledger.find("pat", "BTC")
            assert acct.balance == credited
            assert net.ledger.custody("BTC", "btc_deposit").balance == credited
            tip = net.btc.current_height()
            for x in net.state.deposits.values():
                if x.state in CREDITED_STATES:
                    # every credit is backed by a transaction in the current best chain with enough confirmations
                    status = net.btc.tx_status(x.txid)
                    assert status.confirmations >= 2 and tip - x.height + 1 >= 2
                    assert x.times_credited - x.times_reversed == 1


@seed(11)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(crashes=st.lists(st.sampled_from(["after_sign", "after_record_signed", "after_broadcast", None, "restart"]),
                        min_size=1, max_size=6))
def test_random_crashes_never_double_broadcast(eth_chain, crashes) -> None:
    from ringfence.custody.workers import SimulatedCrash

    print("seed 11, crashes:", crashes)
    with tempfile.TemporaryDirectory() as d:
        net = LocalNet(d, eth=eth_chain, key_seed="prop-crash")
        net.bootstrap()
        fund_btc(net, "quin", 50_000_000)
        dest = outside_btc_address(12)
        net.request("p1", "quin", "BTC", dest, 5_000_000)
        for c in crashes:
            if c == "restart":
                net.crash_and_restart()
                continue
            net.withdrawals.crash_at = c
            try:
                net.withdrawals.step()
            except SimulatedCrash:
                net.crash_and_restart()
            net.withdrawals.crash_at = None
            net.node.engine.check_invariants()
            assert len(net.sim.mempool) <= 1
        net.withdrawals.run_until_idle()
        net.btc_mine(6)
        net.withdrawals.run_until_idle()
        assert net.state.withdrawals["p1"].state == "settled"
        assert net.btc.balance(dest) == 5_000_000
        assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
        net.node.engine.check_invariants()


BATCH_OPS = st.lists(st.one_of(
    st.tuples(st.just("step"), st.integers(1, 10_000)),  # a worker pass, stopping after this many commands
    st.tuples(st.just("fail"), st.integers(0, 2)),  # one member failed while its batch is not yet sent
    st.tuples(st.just("crash"), st.sampled_from(["after_record_signed", "after_broadcast"])),
    st.tuples(st.just("mine"), st.integers(1, 6)),
), min_size=1, max_size=14)


@seed(13)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=BATCH_OPS)
def test_a_batchs_outputs_are_never_both_refunded_and_sent(eth_chain, ops) -> None:
    """Whatever the order of passes, failures, crashes and blocks: the withdrawals of one
    transaction are never some failed (refunded) and some signed, broadcast or settled, and a
    refunded withdrawal's address is never paid."""
    import pytest

    from ringfence.custody import workers
    from ringfence.custody.commands import FailWithdrawal
    from ringfence.custody.workers import SimulatedCrash

    print("seed 13, ops:", ops)
    with tempfile.TemporaryDirectory() as d:
        net = LocalNet(d, eth=eth_chain, key_seed="prop-batch")
        net.bootstrap()
        dests = []
        for i, amount in enumerate((10_000_000, 7_000_000, 3_000_000)):
            fund_btc(net, f"b{i}", 50_000_000)
            dests.append(outside_btc_address(60 + i))
            net.request(f"pb{i}", f"b{i}", "BTC", dests[i], amount)
        ids = [f"pb{i}" for i in range(3)]
        mp = pytest.MonkeyPatch()
        try:
            for op in ops:
                if op[0] == "step":
                    mp.setattr(workers, "MAX_STEPS", op[1])
                    net.withdrawals.step()
                    mp.undo()
                elif op[0] == "fail":
                    w = net.state.withdrawals[ids[op[1]]]
                    if w.state == "signed" and net.btc.tx_status(w.txid).state.name == "UNKNOWN":
                        net.execute(FailWithdrawal(w.id, "BTC", "btc_hot", "operator: never sent"))
                elif op[0] == "crash":
                    net.withdrawals.crash_at = op[1]
                    try:
                        net.withdrawals.step()
                    except SimulatedCrash:
                        net.crash_and_restart()
                    net.withdrawals.crash_at = None
                else:
                    net.btc_mine(op[1])
                by_txid: dict[str, set[str]] = {}
                for wid in ids:
                    w = net.state.withdrawals[wid]
                    if w.txid:
                        by_txid.setdefault(w.txid, set()).add(w.state)
                for txid, states in by_txid.items():
                    assert not ("failed" in states and states & {"signed", "broadcast", "settled"}), (txid, states)
                net.node.engine.check_invariants()
            net.withdrawals.run_until_idle()
            net.btc_mine(6)
            net.withdrawals.run_until_idle()
        finally:
            mp.undo()
        for i, wid in enumerate(ids):
            w = net.state.withdrawals[wid]
            assert w.state in ("settled", "failed"), (wid, w.state)
            paid = net.btc.balance(dests[i])
            assert paid == (w.amount_minor if w.state == "settled" else 0), (wid, w.state, paid)
        assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
