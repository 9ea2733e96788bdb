"""Failure paths: a signed transaction the chain refuses voids the hold (funds back, nothing sent);
a user cancels before signing; the policy attestor refuses anything but the journaled withdrawal."""

from __future__ import annotations

import pytest

from ringfence.custody.commands import CancelWithdrawal
from ringfence.custody.workers import PolicyAttestor, SimulatedCrash
from ringfence.custody.wallets import eth_signing_digest
from ringfence.errors import RingfenceError, SigningRefused

from .flows import fund_btc, fund_eth, outside_btc_address


def test_refused_broadcast_fails_the_withdrawal_and_returns_funds(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    net.request("f1", "alice", "BTC", outside_btc_address(40), 20_000_000)
    net.withdrawals.crash_at = "after_record_signed"
    with pytest.raises(SimulatedCrash):
        net.withdrawals.run_until_idle()
    w = net.state.withdrawals["f1"]
    assert w.state == "signed"
    # Before it is broadcast, the same coins are spent elsewhere (e.g. an operator drained hot to cold).
    net.btc_balancer.transfer("BTC", from_wallet="btc_hot", from_address=net.btc_hot, key_id="btc-hot",
                              signer=net.local, to_wallet="btc_cold", to_address=net.cold["btc"],
                              amount_minor=net.btc.balance(net.btc_hot) - 10_000, kind="drain")
    net.btc_mine(1)
    net.btc_balancer.record_confirmed("BTC", 1)
    net.withdrawals.run_until_idle()
    assert w.state == "failed" and "refused" in w.end_reason
    assert net.ledger.find("alice", "BTC").available == 100_000_000
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
    net.node.engine.check_invariants()


def test_cancel_before_signing_only_by_the_requester(net) -> None:
    fund_btc(net, "bob", 100_000_000)
    dest = outside_btc_address(41)
    net.allow_list("bob", "BTC", dest)  # new address: cools for 24 h
    net.request("f2", "bob", "BTC", dest, 20_000_000)
    net.withdrawals.run_until_idle()
    assert net.state.withdrawals["f2"].state == "approved"
    with pytest.raises(RingfenceError) as exc:
        net.execute(CancelWithdrawal("f2", "BTC", "btc_hot", "mallory"))
    assert exc.value.field == "account_id"
    net.execute(CancelWithdrawal("f2", "BTC", "btc_hot", "bob"))
    assert net.state.withdrawals["f2"].state == "failed"
    assert net.ledger.find("bob", "BTC").available == 100_000_000
    net.execute(CancelWithdrawal("f2", "BTC", "btc_hot", "bob"))  # idempotent
    net.node.engine.check_invariants()


class RecordingKey:
    def __init__(self) -> None:
        self.calls = []

    def approve(self, **kw):
        self.calls.append(kw)
        return ("attestation", kw["transfer_digest"])


def test_policy_attestor_signs_only_the_journaled_withdrawal(net) -> None:
    fund_eth(net, "carl", 3 * 10**18)
    key = RecordingKey()
    att = PolicyAttestor(net.node, net.eth, key)
    net.request("f3", "carl", "ETH", "0x" + "56" * 20, 10**18)
    w = net.state.withdrawals["f3"]
    params = dict(to=w.address, value_wei=w.amount_minor, nonce=0, max_fee_per_gas=10**10, priority_fee_per_gas=10**9)
    with pytest.raises(SigningRefused):  # not yet in state signing
        att(w, eth_signing_digest(net.eth, **params), params)
    net.withdrawals.step(); net.withdrawals.step(); net.withdrawals.step()  # review, decide, authorize
    assert w.state == "signing"
    params["nonce"] = w.nonce
    good = eth_signing_digest(net.eth, **params)
    for bad in (dict(params, to="0x" + "66" * 20), dict(params, value_wei=2 * 10**18), dict(params, nonce=w.nonce + 1)):
        with pytest.raises(SigningRefused):
            att(w, eth_signing_digest(net.eth, **bad), bad)
    with pytest.raises(SigningRefused):  # digest of another transaction under the right params
        att(w, b"\x00" * 32, params)
    assert att(w, good, params) == ("attestation", good) and len(key.calls) == 1


def test_email_confirmation_expires_and_voids_the_hold(net) -> None:
    from ringfence.custody.commands import ConfirmWithdrawalEmail

    fund_btc(net, "dan", 100_000_000)
    net.request("f4", "dan", "BTC", outside_btc_address(42), 20_000_000, confirm=False)
    net.advance(31 * 60)
    net.execute(ConfirmWithdrawalEmail("f4", "BTC", "btc_hot", "token-f4"))
    w = net.state.withdrawals["f4"]
    assert w.state == "failed" and "expired" in w.end_reason
    assert net.ledger.find("dan", "BTC").available == 100_000_000
