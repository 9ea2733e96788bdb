"""Batched Bitcoin withdrawals: the withdrawals of one hot wallet that become signable in the same
worker pass are paid by one transaction (one output each, change back to the wallet), journaled for
all of them at once before broadcast (`RecordSignedBatch`); each settles with its share of the fee,
the shares add up to the transaction's fee, and the ledger follows the chain."""

from __future__ import annotations

import pytest

from ringfence.custody.commands import RecordSignedBatch, RecordSignedTx
from ringfence.custody.workers import SimulatedCrash
from ringfence.errors import RingfenceError

from .conftest import balance
from .flows import fund_btc, outside_btc_address

FEE = 10_000  # BTC withdrawal fee (sat)
AMOUNTS = [10_000_000, 7_000_000, 12_000_000, 3_000_000]


def _setup(net, n: int = len(AMOUNTS)) -> list[tuple[str, str, int]]:
    for i in range(n):
        fund_btc(net, f"u{i}", 50_000_000)
    out = []
    for i, amount in enumerate(AMOUNTS[:n]):
        dest = outside_btc_address(40 + i)
        net.request(f"bw{i}", f"u{i}", "BTC", dest, amount)
        out.append((f"bw{i}", dest, amount))
    return out


def _domain_hash(net) -> str:
    """The state hash without the sequencer's stamps (a refused command still takes a sequence number)."""
    import hashlib

    from ringfence.engine.commands import encode

    return hashlib.sha256(encode(net.node.engine.snapshot_state()[3:])).hexdigest()


def _tx_fee(net, txid: str) -> int:
    from bitcointx.core import b2lx

    tx = net.sim.get_tx(txid)
    spent = sum(net.sim.coin((b2lx(i.prevout.hash), i.prevout.n)).value_sat for i in tx.vin)
    return spent - sum(o.nValue for o in tx.vout)


def _payments_to(net, dest: str) -> int:
    spk = net.btc.script_of_address(dest)
    return sum(1 for h in range(1, net.sim.height + 1) for tx in net.sim.block_at(h).txs for o in tx.vout
               if bytes(o.scriptPubKey) == spk)


def test_withdrawals_signable_in_one_pass_are_paid_by_one_transaction(net) -> None:
    wds = _setup(net)
    net.withdrawals.run_until_idle()
    ws = [net.state.withdrawals[wid] for wid, _, _ in wds]
    assert {w.state for w in ws} == {"broadcast"}
    (txid,) = {w.txid for w in ws}  # one transaction for the whole batch
    tx = net.sim.get_tx(txid)
    paid = [(bytes(o.scriptPubKey), o.nValue) for o in tx.vout]
    assert paid[:len(wds)] == [(net.btc.script_of_address(d), a) for _, d, a in wds], "one output per withdrawal, in order"
    assert all(spk == net.btc.script_of_address(net.btc_hot) for spk, _ in paid[len(wds):]), "the rest is change to hot"
    assert sum(w.network_fee_minor for w in ws) == _tx_fee(net, txid), "the fee shares add up to the fee"
    assert net.state.in_flight_withdrawals("BTC", "btc_hot") == sum(a for *_, a in wds) + _tx_fee(net, txid)
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    assert {w.state for w in ws} == {"settled"}
    for i, (_, dest, amount) in enumerate(wds):
        assert net.btc.balance(dest) == amount
        assert balance(net, f"u{i}", "BTC") == 50_000_000 - amount - FEE
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot), "ledger follows the chain"
    assert net.state.in_flight_withdrawals("BTC", "btc_hot") == 0
    net.node.engine.check_invariants()


def test_batch_max_one_signs_one_transaction_per_withdrawal(net) -> None:
    wds = _setup(net, 3)
    net.withdrawals.batch_max = 1
    net.withdrawals.run_until_idle()
    ws = [net.state.withdrawals[wid] for wid, _, _ in wds]
    assert {w.state for w in ws} == {"broadcast"} and len({w.txid for w in ws}) == 3
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    assert {w.state for w in ws} == {"settled"}
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)


@pytest.mark.parametrize("point", ["after_sign", "after_record_signed", "after_broadcast"])
def test_a_crash_around_a_batch_pays_each_withdrawal_exactly_once(net, point) -> None:
    wds = _setup(net, 3)
    for _ in range(5):  # review, decide, authorize: every withdrawal is signing
        net.withdrawals.step()
        if all(net.state.withdrawals[wid].state == "signing" for wid, _, _ in wds):
            break
    assert all(net.state.withdrawals[wid].state == "signing" for wid, _, _ in wds)
    net.withdrawals.crash_at = point
    with pytest.raises(SimulatedCrash):
        for _ in range(5):
            net.withdrawals.step()
    states = {net.state.withdrawals[wid].state for wid, _, _ in wds}
    assert len(states) == 1, f"a batch is recorded for all of its withdrawals or for none: {states}"
    state_hash = net.node.engine.state_hash()
    net.crash_and_restart()
    assert net.node.engine.state_hash() == state_hash
    net.withdrawals.run_until_idle()
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    for wid, dest, amount in wds:
        assert net.state.withdrawals[wid].state == "settled"
        assert net.btc.balance(dest) == amount and _payments_to(net, dest) == 1, "paid exactly once"
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
    net.node.engine.check_invariants()


def test_a_bad_batch_is_refused_whole_and_changes_nothing(net) -> None:
    wds = _setup(net, 2)
    for _ in range(5):
        net.withdrawals.step()
        if all(net.state.withdrawals[wid].state == "signing" for wid, _, _ in wds):
            break
    ids = [wid for wid, _, _ in wds]
    before = _domain_hash(net)
    bad = [
        RecordSignedBatch("BTC", "btc_hot", "aa" * 32, "00", [ids[0], ids[0]], [1, 1]),  # one withdrawal twice
        RecordSignedBatch("BTC", "btc_hot", "aa" * 32, "00", [ids[0]], [1]),  # a batch of one
        RecordSignedBatch("BTC", "btc_hot", "aa" * 32, "00", ids, [1]),  # one fee share short
        RecordSignedBatch("BTC", "btc_hot", "aa" * 32, "00", ids, [1, -1]),  # a negative share
        RecordSignedBatch("ETH", "eth_hot", "aa" * 32, "00", ids, [1, 1]),  # another wallet's
        RecordSignedBatch("BTC", "btc_hot", "aa" * 32, "00", [*ids, "nope"], [1, 1, 1]),  # an unknown withdrawal
    ]
    for command in bad:
        with pytest.raises(RingfenceError):
            net.node.execute(command)
    assert _domain_hash(net) == before
    # one withdrawal no longer signing: the batch is refused for all of them, the other stays signing
    net.execute(RecordSignedTx(ids[0], "BTC", "btc_hot", "cc" * 32, "00", 1))
    before = _domain_hash(net)
    with pytest.raises(RingfenceError):
        net.node.execute(RecordSignedBatch("BTC", "btc_hot", "bb" * 32, "00", ids, [1, 1]))
    assert _domain_hash(net) == before
    assert net.state.withdrawals[ids[1]].state == "signing" and not net.state.withdrawals[ids[1]].txid


def _signed_batch(net, n: int = 3) -> list[tuple[str, str, int]]:
    """A batch journaled (every withdrawal `signed`, one txid) and not yet sent."""
    wds = _setup(net, n)
    net.withdrawals.crash_at = "after_record_signed"
    with pytest.raises(SimulatedCrash):
        net.withdrawals.run_until_idle()
    net.withdrawals.crash_at = None
    ws = [net.state.withdrawals[wid] for wid, _, _ in wds]
    assert {w.state for w in ws} == {"signed"} and len({w.txid for w in ws}) == 1
    return wds


def test_failing_one_withdrawal_of_a_batch_fails_and_refunds_the_whole_batch(net) -> None:
    from ringfence.custody.commands import FailWithdrawal

    wds = _signed_batch(net)
    ids = [wid for wid, _, _ in wds]
    events = net.execute(FailWithdrawal(ids[1], "BTC", "btc_hot", "operator: fee too low"))
    assert sorted(e.ref for e in events) == sorted(ids), "one command voids every member"
    for i, (wid, _, _) in enumerate(wds):
        w = net.state.withdrawals[wid]
        assert w.state == "failed", wid
        assert balance(net, f"u{i}", "BTC") == 50_000_000, "hold released: amount and fee back"
        assert balance(net, f"u{i}", "BTC", "clearing") == 0
    assert "batch with" in net.state.withdrawals[ids[0]].end_reason
    assert net.state.in_flight_withdrawals("BTC", "btc_hot") == 0
    # The journaled bytes would still be valid on chain: no sibling may send them now.
    net.withdrawals.run_until_idle()
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    for _, dest, _ in wds:
        assert _payments_to(net, dest) == 0, "a refunded withdrawal is never paid"
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot), "ledger follows the chain"
    net.node.engine.check_invariants()


def test_a_batch_with_a_settled_member_cannot_fail(net) -> None:
    from ringfence.custody.commands import FailWithdrawal, SettleWithdrawal

    wds = _setup(net, 2)
    net.withdrawals.run_until_idle()
    net.btc_mine(6)
    w0, w1 = (net.state.withdrawals[wid] for wid, _, _ in wds)
    assert w0.state == w1.state == "broadcast"
    net.execute(SettleWithdrawal(w0.id, "BTC", "btc_hot", w0.txid, 6, w0.network_fee_minor))
    before = _domain_hash(net)
    with pytest.raises(RingfenceError) as exc:
        net.node.execute(FailWithdrawal(w1.id, "BTC", "btc_hot", "looks stuck"))
    assert exc.value.field == "withdrawal_id"
    assert _domain_hash(net) == before and w1.state == "broadcast"
    net.withdrawals.run_until_idle()
    assert w1.state == "settled"
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)


@pytest.mark.parametrize("max_steps", [1, 10_000])
def test_a_refused_batch_fails_together_even_when_a_pass_stops_between_members(net, monkeypatch, max_steps) -> None:
    from ringfence.custody import workers

    wds = _signed_batch(net)
    # before it is sent, the hot wallet's coins are spent elsewhere: the batch can never confirm
    net.btc_balancer.transfer("BTC", from_wallet="btc_hot", from_address=net.btc_hot, key_id="btc-hot",
                              signer=net.local, to_wallet="btc_cold", to_address=net.cold["btc"],
                              amount_minor=net.btc.balance(net.btc_hot) - 10_000, kind="drain")
    net.btc_mine(1)
    net.btc_balancer.record_confirmed("BTC", 1)
    monkeypatch.setattr(workers, "MAX_STEPS", max_steps)
    net.withdrawals.step()  # the first member's broadcast is refused: the pass may stop right there
    states = {net.state.withdrawals[wid].state for wid, _, _ in wds}
    assert states == {"failed"}, f"a batch fails together: {states}"
    net.crash_and_restart()
    net.withdrawals.run_until_idle()
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    for i, (wid, dest, _) in enumerate(wds):
        assert net.state.withdrawals[wid].state == "failed" and _payments_to(net, dest) == 0
        assert balance(net, f"u{i}", "BTC") == 50_000_000
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
    net.node.engine.check_invariants()
