"""Halts as engine state: quorum lifting, refusal of forged/duplicate/unknown/replayed approvals,
scoped guard behaviour, snapshot/replay determinism."""

from __future__ import annotations

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
    RegisterOperators,
    active_halts,
    halts_of,
    lift_message,
    metrics_samples,
    operators_message,
)

from .conftest import operator_keys, operators_node, public_hex
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
    msg = lift_message(halt_id, reason, raised_seq)
    return [(n, keys[n].sign(msg).hex()) for n in names]


def _raise(node, halt_id="h1", kind="venue", scope="*", level="HALTED"):
    [ev] = node.execute(Halt(halt_id, kind, scope, level, "test", '{"why":"test"}'))
    return ev.raised_seq


def test_lift_needs_m_of_n_valid_signatures(node, operators):
    seq = _raise(node)
    with pytest.raises(Forbidden, match="needs 2 of 3"):
        node.execute(LiftHalt("h1", "fixed", _sign(operators, ["op1"], "h1", "fixed", seq)))
    with pytest.raises(Forbidden, match="approved twice"):
        node.execute(LiftHalt("h1", "fixed", _sign(operators, ["op1", "op1"], "h1", "fixed", seq)))
    stranger = operator_keys(5)["op5"]
    forged = [("op1", operators["op1"].sign(lift_message("h1", "fixed", seq)).hex()),
              ("op2", stranger.sign(lift_message("h1", "fixed", seq)).hex())]
    with pytest.raises(Forbidden, match="does not verify"):
        node.execute(LiftHalt("h1", "fixed", forged))
    with pytest.raises(Forbidden, match="not a registered operator"):
        node.execute(LiftHalt("h1", "fixed", [("op1", forged[0][1]), ("op5", forged[1][1])]))
    # approvals signed for another reason do not verify for this one
    with pytest.raises(Forbidden, match="does not verify"):
        node.execute(LiftHalt("h1", "fixed", _sign(operators, ["op1", "op2"], "h1", "other reason", seq)))
    assert [h["halt_id"] for h in active_halts(node.engine)] == ["h1"]
    with pytest.raises(Halted):
        node.execute(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    assert "USDT" not in node.engine.ledger.assets
    [lifted] = node.execute(LiftHalt("h1", "fixed", _sign(operators, ["op3", "op1"], "h1", "fixed", seq)))
    assert lifted.approvers == ["op3", "op1"] and lifted.evidence == '{"why":"test"}'
    assert active_halts(node.engine) == []
    node.execute(RegisterAsset("USDT", 6, "crypto", "ethereum"))


def test_replayed_approval_is_refused(node, operators):
    seq1 = _raise(node, "h1")
    approvals = _sign(operators, ["op1", "op2"], "h1", "fixed", seq1)
    node.execute(LiftHalt("h1", "fixed", approvals))
    with pytest.raises(NotFound):
        node.execute(LiftHalt("h1", "fixed", approvals))  # same lift again: nothing to lift
    seq2 = _raise(node, "h1")  # the same halt id raised again later
    assert seq2 != seq1
    with pytest.raises(Forbidden, match="does not verify"):
        node.execute(LiftHalt("h1", "fixed", approvals))  # old approvals do not lift the new raise
    seq3 = _raise(node, "h2")
    with pytest.raises(Forbidden, match="does not verify"):
        node.execute(LiftHalt("h2", "fixed", approvals))  # nor another halt
    node.execute(LiftHalt("h2", "fixed", _sign(operators, ["op2", "op3"], "h2", "fixed", seq3)))
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


def test_operator_set_rotation_needs_the_current_quorum(node, operators):
    new = operator_keys(4)
    ops = [(k, public_hex(v)) for k, v in new.items()]
    with pytest.raises(Forbidden):
        node.execute(RegisterOperators(ops, 3, []))
    msg = operators_message(ops, 3, halts_of(node.engine).version)
    with pytest.raises(Forbidden, match="needs 2 of 3"):
        node.execute(RegisterOperators(ops, 3, [("op1", operators["op1"].sign(msg).hex())]))
    with pytest.raises(ValidationError, match="one alone may never lift"):
        node.execute(RegisterOperators(ops, 1, [(n, operators[n].sign(operators_message(ops, 1, 1)).hex()) for n in ("op1", "op2")]))
    [ev] = node.execute(RegisterOperators(ops, 3, [(n, operators[n].sign(msg).hex()) for n in ("op1", "op2")]))
    assert ev.version == 2 and ev.threshold == 3
    # the same approvals cannot be replayed (the version moved on)
    with pytest.raises(Forbidden):
        node.execute(RegisterOperators(ops, 3, [(n, operators[n].sign(msg).hex()) for n in ("op1", "op2")]))


def test_genesis_bootstrap_only_without_a_set(tmp_path):
    with new_node(tmp_path / "n", fsync=False) as n:
        keys = operator_keys(2)
        with pytest.raises(ValidationError, match="threshold"):
            n.execute(RegisterOperators([(k, public_hex(v)) for k, v in keys.items()], 1))
        n.execute(Halt("h", "venue", "*", "HALTED", "r", "{}"))
        with pytest.raises(Forbidden, match="no operators"):
            n.execute(LiftHalt("h", "r", []))
        n.execute(RegisterOperators([(k, public_hex(v)) for k, v in keys.items()], 2))


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
    node.execute(LiftHalt("h2", "ok", _sign(operators, ["op1", "op2"], "h2", "ok", seq)))
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
