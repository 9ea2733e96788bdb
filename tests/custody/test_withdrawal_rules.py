"""The withdrawal rules the engine itself enforces (issue 15 item 3), with the sequencer's time:
the address book, its cooling period, the lock after a security change; the risk review's
mandatory manual review of ≥ 95 % of the balance to a new address; a token withdrawal's gas
booked in the chain's native asset. Every refusal changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ringfence.custody.commands import (
    AddWithdrawalAddress, RecordSecurityChange, RemoveWithdrawalAddress, SetWithdrawalRules, custody_state, withdrawal_blocker,
)
from ringfence.custody.state import CustodyState, WithdrawalRules
from ringfence.errors import RingfenceError

from .conftest import balance
from .flows import fund_btc, outside_btc_address

COOL_S = 600
LOCK_S = 3600


def _ruled(net) -> None:
    net.execute(SetWithdrawalRules(True, COOL_S, LOCK_S))


def _later(net, seconds: int) -> None:
    """Let time pass, with nothing journaled meanwhile: the precheck runs at the time its batch
    will carry (the node's clock), and the handler checks again at that same time."""
    net.advance(seconds)


def _refused(net, wid: str, dest: str, amount: int, code: str) -> None:
    before = (balance(net, "alice", "BTC"), net.ledger.find("alice", "BTC").available, dict(net.state.withdrawals))
    with pytest.raises(RingfenceError) as info:
        net.request(wid, "alice", "BTC", dest, amount)
    assert info.value.code == code, info.value
    assert info.value.field in ("address", "account_id")
    assert (balance(net, "alice", "BTC"), net.ledger.find("alice", "BTC").available, dict(net.state.withdrawals)) == before


def test_address_must_be_listed_and_cooled(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    _ruled(net)
    dest = outside_btc_address(7)
    _refused(net, "r1", dest, 1_000_000, "RF_ADDRESS_NOT_LISTED")
    net.allow_list("alice", "BTC", dest)
    _refused(net, "r2", dest, 1_000_000, "RF_ADDRESS_COOLING")
    _later(net, COOL_S - 2)
    _refused(net, "r3", dest, 1_000_000, "RF_ADDRESS_COOLING")
    _later(net, 2)
    net.request("r4", "alice", "BTC", dest, 1_000_000)
    assert net.state.withdrawals["r4"].state == "confirmed"


def test_removed_entry_is_not_listed_any_more(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    _ruled(net)
    dest = outside_btc_address(10)
    net.execute(AddWithdrawalAddress("alice", "BTC", dest, 0))
    (ev,) = net.execute(RemoveWithdrawalAddress("alice", "BTC", dest))
    assert ev.kind == "address_book.removed"
    _refused(net, "d1", dest, 1_000_000, "RF_ADDRESS_NOT_LISTED")
    (ev,) = net.execute(RemoveWithdrawalAddress("alice", "BTC", dest))  # a retry changes nothing
    assert ev.kind == "address_book.unchanged"
    with pytest.raises(RingfenceError) as info:  # a malformed address is refused, naming the field
        net.execute(RemoveWithdrawalAddress("alice", "BTC", "not-an-address"))
    assert info.value.field == "address"
    net.execute(AddWithdrawalAddress("alice", "BTC", dest))  # added again: it cools again from now
    _refused(net, "d2", dest, 1_000_000, "RF_ADDRESS_COOLING")


def test_removing_the_destination_fails_a_withdrawal_awaiting_its_email(net) -> None:
    """The book is required: a withdrawal asked for while its destination was listed, then the entry
    removed, is failed by `ConfirmWithdrawalEmail` (the hold released), never confirmed; and one
    whose destination is still listed is confirmed as before."""
    from ringfence.custody.commands import ConfirmWithdrawalEmail

    fund_btc(net, "alice", 100_000_000)
    _ruled(net)
    dest = outside_btc_address(11)
    net.execute(AddWithdrawalAddress("alice", "BTC", dest, 0))
    available = net.ledger.find("alice", "BTC").available
    net.request("g1", "alice", "BTC", dest, 1_000_000, confirm=False)
    assert net.ledger.find("alice", "BTC").available < available
    net.execute(RemoveWithdrawalAddress("alice", "BTC", dest))
    (ev,) = net.execute(ConfirmWithdrawalEmail("g1", "BTC", "btc_hot", "token-g1"))
    assert ev.kind == "withdrawal.failed" and "removed from your address book" in ev.detail[0], ev
    w = net.state.withdrawals["g1"]
    assert w.state == "failed" and net.ledger.find("alice", "BTC").available == available
    (ev,) = net.execute(ConfirmWithdrawalEmail("g1", "BTC", "btc_hot", "token-g1"))  # a replay changes nothing
    assert ev.kind == "withdrawal.unchanged" and net.ledger.find("alice", "BTC").available == available
    net.execute(AddWithdrawalAddress("alice", "BTC", dest, 0))
    net.request("g2", "alice", "BTC", dest, 1_000_000)
    assert net.state.withdrawals["g2"].state == "confirmed"


def test_operator_pre_cooled_entry_is_usable_at_once(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    _ruled(net)
    dest = outside_btc_address(8)
    net.execute(AddWithdrawalAddress("alice", "BTC", dest, 0))
    net.request("p1", "alice", "BTC", dest, 1_000_000)
    assert net.state.withdrawals["p1"].state == "confirmed"


def test_security_change_locks_withdrawals_in_the_engine_for_the_rules_period(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    _ruled(net)
    dest = outside_btc_address(9)
    net.execute(AddWithdrawalAddress("alice", "BTC", dest, 0))
    net.execute(RecordSecurityChange(41, "alice", "password_changed"))
    _refused(net, "s1", dest, 1_000_000, "RF_WITHDRAWALS_LOCKED")
    _later(net, LOCK_S - 1)
    # a retried relay of the same event id changes nothing (it does not extend the lock)
    (ev,) = net.execute(RecordSecurityChange(41, "alice", "password_changed"))
    assert ev.kind == "security_change.unchanged"
    _refused(net, "s2", dest, 1_000_000, "RF_WITHDRAWALS_LOCKED")
    _later(net, 1)
    net.request("s3", "alice", "BTC", dest, 1_000_000)
    # another account is never affected
    assert "bob" not in custody_state(net.node.engine).security_locks


def test_rules_survive_a_restart(net) -> None:
    _ruled(net)
    net.execute(RecordSecurityChange(5, "alice", "email_changed"))
    net.execute(AddWithdrawalAddress("alice", "BTC", outside_btc_address(3)))
    before = (net.state.rules, dict(net.state.security_locks), dict(net.state.address_usable_ns), net.state.security_relay_pos)
    net.crash_and_restart()
    assert (net.state.rules, dict(net.state.security_locks), dict(net.state.address_usable_ns),
            net.state.security_relay_pos) == before
    net.node.snapshot()
    net.crash_and_restart()
    assert net.state.rules == WithdrawalRules(True, COOL_S, LOCK_S)


def test_almost_all_of_the_balance_to_a_new_address_waits_for_a_human_with_reasons(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    _ruled(net)
    dest = outside_btc_address(11)
    net.execute(AddWithdrawalAddress("alice", "BTC", dest, 0))  # listed, but never paid before: new
    net.request("m1", "alice", "BTC", dest, 95_000_000)
    net.withdrawals.run_until_idle()
    w = net.state.withdrawals["m1"]
    assert w.state == "manual_review" and w.manual_review
    assert any("mandatory manual review" in r and "new address" in r for r in w.risk_reasons), w.risk_reasons


@pytest.mark.parametrize("cooling_s,lock_s,field", [(-1, 0, "address_cooling_s"), (0, 31 * 86400, "security_lock_s")])
def test_bad_rules_are_refused_and_change_nothing(net, cooling_s: int, lock_s: int, field: str) -> None:
    _ruled(net)
    with pytest.raises(RingfenceError) as info:
        net.execute(SetWithdrawalRules(True, cooling_s, lock_s))
    assert info.value.field == field
    assert net.state.rules == WithdrawalRules(True, COOL_S, LOCK_S)


@settings(max_examples=200, deadline=None)
@given(now=st.integers(0, 10**15), added=st.integers(0, 10**15), cooling_s=st.integers(0, 10**5),
       lock_until=st.integers(0, 2 * 10**15), listed=st.booleans(), required=st.booleans())
def test_blocker_matches_the_rules(now: int, added: int, cooling_s: int, lock_until: int, listed: bool, required: bool) -> None:
    s = CustodyState()
    s.rules = WithdrawalRules(required, cooling_s, 86400)
    key = "alice|BTC|addr"
    if listed:
        s.address_book[key] = added
        s.address_usable_ns[key] = added + cooling_s * 10**9
    s.security_locks["alice"] = lock_until
    got = withdrawal_blocker(s, now, "alice", "BTC", "bitcoin", "addr")
    if now < lock_until:
        assert got is not None and got.code == "RF_WITHDRAWALS_LOCKED"
    elif required and not listed:
        assert got is not None and got.code == "RF_ADDRESS_NOT_LISTED"
    elif required and now < added + cooling_s * 10**9:
        assert got is not None and got.code == "RF_ADDRESS_COOLING"
    else:
        assert got is None


@pytest.mark.store
def test_identity_security_changes_are_relayed_into_the_engine_lock(net, tmp_path) -> None:
    """A password change recorded by identity reaches the engine as `RecordSecurityChange` (the
    relay `serve` runs), so the engine's own withdrawal command refuses during the lock."""
    from pgtest import profile_store_url
    from ringfence.identity.context import IdentityContext
    from ringfence.settings import Settings
    from ringfence.store import Store

    with profile_store_url(tmp_path) as url:  # SQLite, or PostgreSQL on the suite's PostgreSQL profile
        ctx = IdentityContext(store=Store.from_url(url), settings=Settings(mode="dev"))
        try:
            _relay_security_changes(net, ctx)
        finally:
            ctx.store.engine.dispose()


def _relay_security_changes(net, ctx) -> None:
    from ringfence.custody.runtime import relay_security_changes
    from ringfence.identity.api_keys import issue_demo_key
    from ringfence.identity.events import credential_changed
    from ringfence.store.models import User
    from sqlalchemy import select

    issue_demo_key(ctx, "alice", "alice@demo.ringfence.local")
    fund_btc(net, "alice", 100_000_000)
    _ruled(net)
    dest = outside_btc_address(12)
    net.execute(AddWithdrawalAddress("alice", "BTC", dest, 0))
    assert relay_security_changes(net.node, ctx) == 0  # issuing a demo key is no credential change
    with ctx.store.tx() as db:
        user = db.scalars(select(User).where(User.account_id == "alice")).first()
        credential_changed(ctx, db, user, change="password_changed", ip="127.0.0.1")
    assert relay_security_changes(net.node, ctx) == 1
    assert relay_security_changes(net.node, ctx) == 0  # relayed once
    _refused(net, "id1", dest, 1_000_000, "RF_WITHDRAWALS_LOCKED")
    _later(net, LOCK_S)
    net.request("id2", "alice", "BTC", dest, 1_000_000)


def test_a_supervised_worker_restarts_after_errors_with_back_off() -> None:
    import threading
    import time

    from ringfence.custody.runtime import Supervised

    calls = []

    def step() -> None:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RuntimeError(f"boom {len(calls)}")

    stop = threading.Event()
    w = Supervised("flaky", step, 10, threading.RLock())
    w.start(stop)
    deadline = time.monotonic() + 10
    while w.steps < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    w.join(5)
    assert w.restarts == 2 and w.steps >= 1 and "boom 2" in w.last_error
    # back-off: 0.5 s after the first error, 1 s after the second
    assert calls[1] - calls[0] >= 0.45 and calls[2] - calls[1] >= 0.95
    assert w.status()["state"] == "stopped"
