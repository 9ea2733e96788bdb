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
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
