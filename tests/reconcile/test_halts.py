"""Halts as engine state: quorum lifting, refusal of forged/duplicate/unknown/replayed approvals,
scoped guard behaviour, snapshot/replay determinism."""

from __future__ import annotations

import time

import pytest

from ringfence.engine.commands import Command, Event
from ringfence.engine.core import Engine
from ringfence.engine.module import Effect, Module
from ringfence.app import replay_journal, standard_modules
from ringfence.errors import Forbidden, Halted, NotFound, ValidationError
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.risk.halts import (
    Halt,
    LiftHalt,
    LiftHaltSigned,
    RegisterOperators,
    active_halts,
    halts_of,
    lift_subject,
    metrics_samples,
)
from ringfence.staff import StaffKey, StaffRefused, staff_of

from .conftest import desk_for, operator_keys, operators_node
from ringfence.app import new_node


class SimPlaceOrder(Command, tag="test.recon.place/1"):
    symbol: str
    asset: str = ""


class CancelOrder(Command, tag="test.recon.cancel/1"):
    symbol: str


class ApproveWithdrawalSim(Command, tag="test.recon.approve_withdrawal/1"):
    asset: str
    wallet: str


class SettleWithdrawalSim(Command, tag="test.recon.settle_withdrawal/1"):
    asset: str
    wallet: str


class RecordSignedTx(Command, tag="test.recon.signed_tx/1"):
    """Named like the custody flows' command: recording a signed transaction leads to broadcast."""

    withdrawal_id: str
    asset: str
    wallet: str


def _ok(engine: Engine, command: Command) -> list[Event]:
    return []


def _scopes(engine: Engine, c) -> list[tuple[str, str]]:
    out = [("market", c.symbol)] if hasattr(c, "symbol") else []
    if getattr(c, "asset", ""):
        out.append(("asset", c.asset))
        if hasattr(c, "wallet"):
            out.append(("asset", f"{c.asset}@{c.wallet}"))
    return out


#: Stand-ins for trading and custody commands, declared the way those modules declare theirs.
PLANTED = Module("test-halts")
for _type, _effect in [(SimPlaceOrder, Effect.OPENS_RISK), (CancelOrder, Effect.REDUCES_RISK),
                       (ApproveWithdrawalSim, Effect.MOVES_FUNDS_OUT), (RecordSignedTx, Effect.MOVES_FUNDS_OUT),
                       (SettleWithdrawalSim, Effect.NEUTRAL)]:
    PLANTED.handles(_type, effect=_effect, scopes=_scopes)(_ok)


@pytest.fixture
def node(tmp_path, operators):
    n = operators_node(tmp_path, operators, PLANTED)
    yield n
    n.close()


def _sign(keys, names, halt_id, reason, raised_seq):
    """Fresh signed approvals (new nonces) by `names` for lifting one raise of a halt."""
    expires = time.time_ns() + 600 * 10**9
    return [keys[n].sign("halt.lift", lift_subject(halt_id, reason, raised_seq), expires) for n in names]


def _raise(node, halt_id="h1", kind="venue", scope="*", level="HALTED"):
    [ev] = node.execute(Halt(halt_id, kind, scope, level, "test", '{"why":"test"}'))
    return ev.raised_seq


def test_lift_needs_m_of_n_valid_signatures(node, operators):
    seq = _raise(node)
    with pytest.raises(StaffRefused, match="rule 'quorum'.*needs 2"):
        node.execute(LiftHaltSigned("h1", "fixed", _sign(operators, ["op1"], "h1", "fixed", seq)))
    with pytest.raises(StaffRefused, match="distinct-people"):
        node.execute(LiftHaltSigned("h1", "fixed", _sign(operators, ["op1", "op1"], "h1", "fixed", seq)))
    stranger = StaffKey("op2", operator_keys(5)["op5"].private_key)  # claims op2, holds another key
    forged = _sign(operators, ["op1"], "h1", "fixed", seq) + _sign({"op2": stranger}, ["op2"], "h1", "fixed", seq)
    with pytest.raises(StaffRefused, match="signature-valid"):
        node.execute(LiftHaltSigned("h1", "fixed", forged))
    unknown = _sign(operators, ["op1"], "h1", "fixed", seq) + _sign(operator_keys(5), ["op5"], "h1", "fixed", seq)
    with pytest.raises(StaffRefused, match="staff-registered"):
        node.execute(LiftHaltSigned("h1", "fixed", unknown))
    # approvals signed for another reason do not verify for this one
    with pytest.raises(StaffRefused, match="signature-valid"):
        node.execute(LiftHaltSigned("h1", "fixed", _sign(operators, ["op1", "op2"], "h1", "other reason", seq)))
    assert [h["halt_id"] for h in active_halts(node.engine)] == ["h1"]
    with pytest.raises(Halted):
        node.execute(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    assert "USDT" not in node.engine.ledger.assets
    [lifted] = node.execute(LiftHaltSigned("h1", "fixed", _sign(operators, ["op3", "op1"], "h1", "fixed", seq)))
    assert lifted.approvers == ["op3", "op1"] and lifted.evidence == '{"why":"test"}'
    assert active_halts(node.engine) == []
    node.execute(RegisterAsset("USDT", 6, "crypto", "ethereum"))


def test_replayed_approval_is_refused(node, operators):
    seq1 = _raise(node, "h1")
    approvals = _sign(operators, ["op1", "op2"], "h1", "fixed", seq1)
    node.execute(LiftHaltSigned("h1", "fixed", approvals))
    with pytest.raises(NotFound):
        node.execute(LiftHaltSigned("h1", "fixed", approvals))  # same lift again: nothing to lift
    seq2 = _raise(node, "h1")  # the same halt id raised again later
    assert seq2 != seq1
    with pytest.raises(StaffRefused, match="nonce-once"):
        node.execute(LiftHaltSigned("h1", "fixed", approvals))  # old approvals do not lift the new raise
    seq3 = _raise(node, "h2")
    fresh_for_h1 = _sign(operators, ["op1", "op2"], "h1", "fixed", seq2)
    with pytest.raises(StaffRefused, match="signature-valid"):
        node.execute(LiftHaltSigned("h2", "fixed", fresh_for_h1))  # nor another halt
    node.execute(LiftHaltSigned("h2", "fixed", _sign(operators, ["op2", "op3"], "h2", "fixed", seq3)))
    assert [h["halt_id"] for h in active_halts(node.engine)] == ["h1"]


def test_halt_is_idempotent_and_validated(node):
    _raise(node, "h1", "asset", "ETH", "WITHDRAWALS_PAUSED")
    [ev] = node.execute(Halt("h1", "asset", "ETH", "WITHDRAWALS_PAUSED", "again", "{}"))
    assert type(ev).__name__ == "HaltUnchanged"
    for bad, field in [
        (Halt("h2", "planet", "x", "HALTED", "r", "{}"), "scope_kind"),
        (Halt("h2", "venue", "ETH", "HALTED", "r", "{}"), "scope"),
        (Halt("h2", "asset", "ETH", "STOPPED", "r", "{}"), "level"),
        (Halt("h2", "asset", "ETH", "HALTED", "", "{}"), "reason"),
        (Halt("h2", "asset", "ETH", "HALTED", "r", "{not json"), "evidence"),
        (Halt("bad id!", "asset", "ETH", "HALTED", "r", "{}"), "halt_id"),
    ]:
        with pytest.raises(ValidationError) as info:
            node.execute(bad)
        assert info.value.field == field
    assert len(active_halts(node.engine)) == 1
    assert metrics_samples(node.engine) == [
        ({"scope_kind": "asset", "scope": "ETH", "level": "WITHDRAWALS_PAUSED", "halt_id": "h1"}, 1)]


def test_operator_set_changes_need_the_current_quorum(node, operators):
    desk = desk_for(node, operators)
    newcomer = StaffKey.generate("op4")
    with pytest.raises(StaffRefused, match="rule 'quorum'"):
        node.execute(desk.add(node.engine, newcomer, ["operator"], "hire", ["op1"]))
    [ev] = node.execute(desk.add(node.engine, newcomer, ["operator"], "hire", ["op1", "op2"]))
    assert ev.kind == "added" and ev.approvers == ["op1", "op2"]
    # the newcomer counts towards the next quorum, a removed operator no longer does
    node.execute(desk.remove(node.engine, "op3", "left", ["op4", "op1"]))
    seq = _raise(node, "h9")
    with pytest.raises(StaffRefused, match="staff-active"):
        node.execute(LiftHaltSigned("h9", "r", _sign({**operators, "op4": newcomer}, ["op3", "op4"], "h9", "r", seq)))
    node.execute(LiftHaltSigned("h9", "r", _sign({**operators, "op4": newcomer}, ["op2", "op4"], "h9", "r", seq)))
    assert staff_of(node.engine).members["op3"].status == "removed"


def test_legacy_operator_commands_are_refused_when_submitted(tmp_path):
    with new_node(tmp_path / "n", fsync=False) as n:
        keys = operator_keys(2)
        with pytest.raises(Forbidden, match="retired"):
            n.execute(RegisterOperators([(k, v.public_hex) for k, v in keys.items()], 2))
        n.execute(Halt("h", "venue", "*", "HALTED", "r", "{}"))
        with pytest.raises(Forbidden, match="retired"):
            n.execute(LiftHalt("h", "r", []))
        with pytest.raises(StaffRefused, match="staff-registered"):
            n.execute(LiftHaltSigned("h", "r", []))
        assert halts_of(n.engine).operators == {}


def test_scoped_levels(node, operators):
    node.execute(SimPlaceOrder("BTCUSDT"))
    _raise(node, "m", "market", "BTCUSDT", "REDUCE_ONLY")
    with pytest.raises(Halted, match="market BTCUSDT is REDUCE_ONLY"):
        node.execute(SimPlaceOrder("BTCUSDT"))
    node.execute(CancelOrder("BTCUSDT"))
    node.execute(SimPlaceOrder("ETHUSDT"))  # another market is not affected
    node.execute(ApproveWithdrawalSim("ETH", "hot1"))
    _raise(node, "w", "asset", "ETH@hot1", "WITHDRAWALS_PAUSED")
    with pytest.raises(Halted, match="WITHDRAWALS_PAUSED"):
        node.execute(ApproveWithdrawalSim("ETH", "hot1"))
    with pytest.raises(Halted, match="WITHDRAWALS_PAUSED"):
        node.execute(RecordSignedTx("w1", "ETH", "hot1"))
    node.execute(ApproveWithdrawalSim("ETH", "hot2"))  # other wallet of the asset
    node.execute(SettleWithdrawalSim("ETH", "hot1"))  # facts from the chain are still recorded
    node.execute(SimPlaceOrder("ETHUSDT", "ETH"))  # trading the asset is not paused
    _raise(node, "a", "asset", "ETH", "HALTED")
    with pytest.raises(Halted, match="asset ETH is HALTED"):
        node.execute(SimPlaceOrder("ETHUSDT", "ETH"))
    with pytest.raises(Halted):
        node.execute(OpenAccount("carol", "ETH"))
    node.execute(OpenAccount("carol", "BTC"))
    node.execute(CancelOrder("ETHUSDT"))


def test_halts_survive_snapshot_and_replay(node, operators):
    _raise(node, "h1", "asset", "ETH", "WITHDRAWALS_PAUSED")
    seq = _raise(node, "h2")
    node.execute(LiftHaltSigned("h2", "ok", _sign(operators, ["op1", "op2"], "h2", "ok", seq)))
    replayed, _, _ = replay_journal(node.data_dir, use_snapshots=False, extra_modules=node.modules[len(standard_modules()):])
    assert replayed.state_hash() == node.engine.state_hash()
    assert active_halts(replayed) == active_halts(node.engine)
    again = node.engine.restored(node.engine.snapshot_bytes())
    assert again.state_hash() == node.engine.state_hash()
    assert halts_of(again).level_at("asset", "ETH") == 1


def test_a_segment_halt_covers_every_account_of_a_transfer(node):
    """Found by the simulation: scopes were deduplicated by asset, so in `world -> alice:spot` only
    the world account's segment ("-") counted and a spot halt let the deposit through."""
    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer

    ledger = node.engine.ledger
    world, alice = ledger.world("BTC").id, ledger.get("alice", "BTC").id
    _raise(node, "h-spot", "segment", "spot", "HALTED")
    before = node.engine.state_hash()
    for debit, credit in ((world, alice), (alice, world)):
        with pytest.raises(Halted, match="segment spot"):
            node.execute(CreateTransfers([Transfer(1, debit, credit, 5)]))
    assert node.engine.state_hash() == before


def test_reduce_only_allows_reducing_a_partly_filled_order(node):
    """Found by the simulation: the guard read `Order.quantity` (no such attribute) and fell back to
    `leaves`, so lowering the total quantity of a partly filled order was refused as adding exposure."""
    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer
    from ringfence.trading.commands import AmendOrder, ListMarket, PlaceOrder

    node.execute(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    node.execute(ListMarket("BTCUSDT", "BTC", "USDT", tick_size=10**6, lot_size=10**5, min_qty=10**5, band_ppm=0))
    for i, (owner, asset) in enumerate((("alice", "USDT"), ("bob", "BTC"))):
        node.execute(OpenAccount(owner, asset))
        ledger = node.engine.ledger
        node.execute(CreateTransfers([Transfer(100 + i, ledger.world(asset).id, ledger.get(owner, asset).id, 10**12)]))
    [accepted, *_] = node.execute(PlaceOrder("alice", "BTCUSDT", "BUY", price=60_000 * 10**6, quantity=10 * 10**5))
    node.execute(PlaceOrder("bob", "BTCUSDT", "SELL", price=60_000 * 10**6, quantity=6 * 10**5))  # alice: 4 lots left
    _raise(node, "h-ro", "market", "BTCUSDT", "REDUCE_ONLY")
    [amended] = node.execute(AmendOrder("alice", "BTCUSDT", accepted.order_id, 0, 8 * 10**5))  # total 10 -> 8 lots
    assert (amended.quantity, amended.leaves) == (8 * 10**5, 2 * 10**5)
    with pytest.raises(Halted, match="REDUCE_ONLY"):
        node.execute(AmendOrder("alice", "BTCUSDT", accepted.order_id, 0, 9 * 10**5))  # growing is refused
