"""Halt scopes of the commands that name a deposit by (chain, txid, index) and carry no asset
field (issue 15 follow-up): an asset halt stops them, a halt on another asset does not.
`CreditDeposit`, `FinalizeDeposit`, `FileSourceOfFunds`, `ReturnDepositSigned` and the review of
a quarantined deposit touch the deposit's asset (and `asset@wallet`); `ReorgDeposits` touches
every asset of its chain. The live path (the deposit watcher under a halt raised by the staff
console, credited after the lift) is in tests/api/test_custody_gaps.py."""

from __future__ import annotations

from typing import Any

import pytest

from ringfence.custody.commands import (
    CreditDeposit, FileSourceOfFunds, FinalizeDeposit, ReorgDeposits, ReviewQuarantineSigned,
)
from ringfence.custody.refund_cmds import ReturnDepositSigned
from ringfence.errors import RingfenceError
from ringfence.risk.halts import Halt
from ringfence.staff.decisions import StaffSignature

SIG = StaffSignature("ana", "n" * 16, 10**19, "00" * 64)


def _seen_eth_deposit(net) -> Any:
    addrs = net.open_user("hal")
    txid = net.eth_send(addrs["ethereum"], 10**17)
    net.eth_mine(1)
    net.eth_watcher.poll()  # observed (1 confirmation: not yet creditable)
    (d,) = [d for d in net.state.deposits.values() if d.txid == txid]
    assert d.state == "seen"
    return d


def _commands(d: Any) -> dict[str, Any]:
    return {
        "CreditDeposit": CreditDeposit(d.chain, d.txid, d.index, 3, 0, []),
        "FinalizeDeposit": FinalizeDeposit(d.chain, d.txid, d.index, 8),
        "FileSourceOfFunds": FileSourceOfFunds(d.chain, d.txid, d.index, d.account_id, "salary from my employer"),
        "ReturnDepositSigned": ReturnDepositSigned(d.chain, d.txid, d.index, "0x" + "11" * 20, "tainted", SIG),
        "ReviewQuarantineSigned": ReviewQuarantineSigned(d.chain, d.txid, d.index, "release", "declared", SIG),
        "ReorgDeposits": ReorgDeposits(d.chain, d.height),
    }


def _code(net, command: Any) -> str:
    before = net.node.engine.state_hash()
    try:
        net.execute(command)
    except RingfenceError as exc:
        assert net.node.engine.state_hash() == before, "a refusal changed nothing"
        return exc.code
    return "accepted"


@pytest.mark.parametrize("name", ["CreditDeposit", "FinalizeDeposit", "FileSourceOfFunds", "ReturnDepositSigned",
                                  "ReviewQuarantineSigned", "ReorgDeposits"])
def test_an_asset_halt_stops_the_deposit_commands_and_another_assets_halt_does_not(net, name: str) -> None:
    d = _seen_eth_deposit(net)
    command = _commands(d)[name]
    net.execute(Halt("h-btc", "asset", "BTC", "HALTED", "another asset"))
    assert _code(net, command) != "RF_HALTED", f"{name}: a BTC halt stopped an ETH deposit command"
    net.execute(Halt("h-eth", "asset", "ETH", "HALTED", "test"))
    assert _code(net, _commands(d)[name]) == "RF_HALTED", name


def test_the_watcher_keeps_a_halted_deposit_waiting_and_credits_it_after_the_lift(net) -> None:
    d = _seen_eth_deposit(net)
    net.execute(Halt("h-eth", "asset", "ETH", "HALTED", "test"))
    net.eth_mine(3)
    net.eth_watcher.poll()  # the watcher does not fail: the deposit waits, its refusal is kept
    assert net.state.deposits[d.key].state == "seen"
    assert net.eth_watcher.errors[d.key].startswith("RF_HALTED")
    net.execute(net.sign("lift", "h-eth", "fixed", ["tina", "tom"]))
    net.eth_watcher.poll()
    assert net.state.deposits[d.key].state == "credited" and d.key not in net.eth_watcher.errors
