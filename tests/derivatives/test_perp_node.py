"""Perpetuals on a durable node: replay from the journal gives the same state hash, and the
reconciler's independent pass folds perpetual transfers and fills (raising no false mismatch, and
halting on a planted one)."""

from __future__ import annotations

from pathlib import Path

from ringfence.app import new_node, replay_journal
from ringfence.derivatives.commands import FuturesTransfer, ListPerpetual, PlacePerpOrder
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.reconcile.reconciler import ReconcileSettings, Reconciler
from ringfence.trading.commands import ListMarket

from .perpworld import BRACKETS, PERP, USDT


def _trade_perpetuals(node) -> None:
    node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), RegisterAsset("USDT", 6, "crypto", "ethereum"),
                       ListMarket("BTCUSDT", "BTC", "USDT", "spot", 10_000, 10_000, 10_000, band_ppm=0)])
    node.execute(ListPerpetual(PERP, "BTC", "USDT", "BTCUSDT", BRACKETS, tick_size=10_000, lot_size=10_000, min_qty=10_000))
    for i, o in enumerate(("alice", "bob")):
        node.execute(OpenAccount(o, "USDT", "available", "spot"))
        acct = node.engine.ledger.get(o, "USDT", "available", "spot")
        node.execute(CreateTransfers([Transfer(i + 1, node.engine.ledger.world("USDT").id, acct.id, 50_000 * USDT)]))
        node.execute(FuturesTransfer(o, "USDT", 40_000 * USDT, "MAIN_UMFUTURE"))
    for px, q in ((60_000, 3), (60_500, 2), (59_000, 4)):
        node.execute(PlacePerpOrder("alice", PERP, "BUY", price=px * USDT, quantity=q * 10**7))
        node.execute(PlacePerpOrder("bob", PERP, "SELL", price=px * USDT, quantity=q * 10**7))
        node.execute(PlacePerpOrder("alice", PERP, "SELL", price=px * USDT, quantity=10**7))
        node.execute(PlacePerpOrder("bob", PERP, "BUY", price=px * USDT, quantity=10**7))
    node.execute(FuturesTransfer("bob", "USDT", 1_000 * USDT, "UMFUTURE_MAIN"))


def test_a_planted_perpetual_fee_leak_is_found_by_the_independent_fold_and_halts(tmp_path: Path, use_ledger_class) -> None:
    """Plant a derivatives bug the replay cannot see (the replay engine runs the same code) and that
    keeps USDT summing to zero: every perpetual fee takes one unit more from the payer's wallet into
    the fees account than the fill's `PositionChanged.fee` says. Only the shadow book's own fold of
    the fills disagrees — on the fees account and on the payer's wallet + margin — and the reconciler
    halts the venue as for any other journal mismatch."""
    from ringfence.ledger.ledger import Ledger
    from ringfence.risk.halts import active_halts

    class LeakyLedger(Ledger):
        def move(self, debit, credit, amount):
            if credit.kind == "fees" and credit.segment == "derivatives" and debit.owner != "system" and debit.available > amount:
                amount += 1
            super().move(debit, credit, amount)

        def settle_margin_side(self, hold_id, take, wallet, margin, released, pool, gain, paid, insurance, covered, fees,
                               fee_net, shield, post, hold=None):
            # a fill's postings (one call per side): the fee leg takes one unit more, when the wallet has it
            if fees.segment == "derivatives" and fee_net and wallet.available + take + released + gain - paid - fee_net - shield - post > 0:
                fee_net += 1
            super().settle_margin_side(hold_id, take, wallet, margin, released, pool, gain, paid, insurance, covered, fees,
                                       fee_net, shield, post, hold)

    use_ledger_class(LeakyLedger)
    node = new_node(tmp_path / "n", fsync=False)
    node.open()
    try:
        _trade_perpetuals(node)
        rec = Reconciler(node, settings=ReconcileSettings(confirm_reads=1))
        report = rec.run_once()
        found = {(m.kind, m.subject, m.details.get("path")) for m in report.mismatches}
        print(sorted(found))
        assert ("fees_mismatch", "system:USDT:fees:derivatives", "shadow") in found
        assert ("engine_journal_mismatch", "alice:USDT:derivatives(wallet+margin)", "shadow") in found
        assert not any(m.details.get("path") == "replay" for m in report.mismatches)  # the same code replays it
        levels = {(h["scope_kind"], h["scope"], h["level"]) for h in active_halts(node.engine)}
        assert ("venue", "*", "HALTED") in levels and ("segment", "derivatives", "REDUCE_ONLY") in levels, levels
    finally:
        node.close()


def test_replay_and_reconcile_with_perpetual_fills(tmp_path: Path) -> None:
    node = new_node(tmp_path / "n", fsync=False)
    node.open()
    try:
        _trade_perpetuals(node)
        node.engine.check_invariants()
        assert node.engine.components["derivatives"].positions
        live = node.engine.state_hash()
        rec = Reconciler(node, settings=ReconcileSettings(confirm_reads=1))
        report = rec.run_once()
        assert report.mismatches == [], [m.evidence() for m in report.mismatches]
        # the independent fold models the perpetual fills: nothing stands down
        assert rec.fold.book.unmodelled == {} and report.notes == [], (rec.fold.book.unmodelled, report.notes)
        assert rec.fold.book.derivatives_wallets  # alice's and bob's wallet + margin, folded
    finally:
        node.close()
    engine, _, _ = replay_journal(tmp_path / "n")
    assert engine.state_hash() == live


def test_the_liquidation_worker_steps_an_account_below_maintenance(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ringfence.derivatives.commands import SetLeverage, SetMarginType
    from ringfence.derivatives.worker import LiquidationWorker
    from ringfence.index.commands import ConfigureIndex, RegisterFeedKey
    from ringfence.index.feeds import FeedSigner

    node = new_node(tmp_path / "n", fsync=False)
    node.open()
    try:
        signer = FeedSigner("v1", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
        node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), RegisterAsset("USDT", 6, "crypto", "ethereum"),
                           ListMarket("BTCUSDT", "BTC", "USDT", "spot", 10_000, 10_000, 10_000, band_ppm=0),
                           RegisterFeedKey("v1", signer.public_key_hex),
                           ConfigureIndex("BTCUSDT", [("v1", 1)], 1, stale_after_ns=3600 * 10**9)])
        node.execute(ListPerpetual(PERP, "BTC", "USDT", "BTCUSDT", BRACKETS, tick_size=10_000, lot_size=10_000, min_qty=10_000))
        import time

        def quote(px: int) -> None:
            node.execute(signer.quote("BTCUSDT", px * USDT, time.time_ns()))

        for i, o in enumerate(("alice", "bob", "carol", "dave")):
            node.execute(OpenAccount(o, "USDT", "available", "spot"))
            acct = node.engine.ledger.get(o, "USDT", "available", "spot")
            node.execute(CreateTransfers([Transfer(i + 1, node.engine.ledger.world("USDT").id, acct.id, 10_000 * USDT)]))
            node.execute(FuturesTransfer(o, "USDT", 10_000 * USDT, "MAIN_UMFUTURE"))
            node.execute(SetLeverage(o, PERP, 20))
        quote(60_000)
        node.execute(PlacePerpOrder("bob", PERP, "SELL", price=60_000 * USDT, quantity=2 * 10**8))
        node.execute(PlacePerpOrder("alice", PERP, "BUY", price=60_000 * USDT, quantity=2 * 10**8))
        node.execute(SetMarginType("dave", PERP, "ISOLATED"))  # dave's isolated long: liquidated on its own
        node.execute(SetLeverage("dave", PERP, 50))
        node.execute(PlacePerpOrder("bob", PERP, "SELL", price=60_000 * USDT, quantity=10**7))
        node.execute(PlacePerpOrder("dave", PERP, "BUY", price=60_000 * USDT, quantity=10**7))
        worker = LiquidationWorker(node)
        assert worker.round() == 0  # nobody is below maintenance
        quote(55_200)
        node.execute(PlacePerpOrder("carol", PERP, "BUY", price=55_200 * USDT, quantity=5 * 10**7))
        node.execute(PlacePerpOrder("bob", PERP, "SELL", price=55_200 * USDT, quantity=10**4))  # last trade 55,200
        assert worker.round() == 2 and worker.submitted == 2  # alice's cross account, dave's isolated position
        positions = node.engine.components["derivatives"].positions
        assert 0 < positions[("alice", PERP)].size < 2 * 10**8
        assert positions.get(("dave", PERP)) is None or positions[("dave", PERP)].size < 10**7
        assert worker.round() == 0  # cooling down
        node.engine.check_invariants()
    finally:
        node.close()
