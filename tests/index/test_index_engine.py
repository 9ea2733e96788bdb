"""The index module through the engine: signed quotes, staleness, REDUCE_ONLY, the band, overrides."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import BTC, SEC, VENUES, Shard, usdt

from ringfence.app import engine_from_snapshot, new_engine
from ringfence.index.commands import IndexPriceChanged, OverrideReferencePrice, SubmitQuote
from ringfence.index.feeds import FeedSigner
from ringfence.index.mark import mark_of
from ringfence.index.module import halt_id_of
from ringfence.risk.halts import LiftHalt, RegisterOperators, lift_message
from ringfence.trading.commands import OrderRejected, PlaceOrder, SetReferencePrice


def live_shard(price: int = usdt(60000), **kw: object) -> Shard:
    s = Shard(**kw)  # type: ignore[arg-type]
    s.round({v: price for v in VENUES})
    return s


def test_index_is_the_clamped_weighted_mean_and_the_band_follows_it() -> None:
    s = live_shard()
    assert s.status() == "ACTIVE"
    assert s.index().index_minor == usdt(60000)
    assert s.market().ref_price == usdt(60000)
    assert (s.market().band_lo, s.market().band_hi) == (usdt(54000), usdt(66000))
    events = s.round({"v1": usdt(60100), "v2": usdt(60200), "v3": usdt(60300), "v4": usdt(60400), "v5": usdt(99999)})
    # median 60300; clamp ±1 % -> v5 counts as 60903; mean of (60100, 60200, 60300, 60400, 60903)
    assert s.index().median_minor == usdt(60300)
    assert s.index().index_minor == (usdt(60100) + usdt(60200) + usdt(60300) + usdt(60400) + usdt(60903)) // 5
    assert any(isinstance(e, IndexPriceChanged) for e in events)
    assert s.market().ref_price == s.index().index_minor


def test_forged_replayed_out_of_order_stale_and_future_quotes_are_refused_and_change_nothing() -> None:
    s = live_shard()
    before = s.engine.state_hash()
    good = s.quote("v1", usdt(60010))
    forger = FeedSigner("v1", Ed25519PrivateKey.from_private_bytes(b"\x77" * 32), {"BTCUSDT": 1000})
    forged_key = forger.quote("BTCUSDT", usdt(50000), s.now)
    assert s.refused(forged_key) == "RF_FORBIDDEN"
    altered = SubmitQuote(good.venue, good.symbol, good.price_minor + 1, good.source_ts_ns, good.seq, good.signature_hex)
    assert s.refused(altered) == "RF_FORBIDDEN"
    other_symbol = SubmitQuote(good.venue, "ETHUSDT", good.price_minor, good.source_ts_ns, good.seq, good.signature_hex)
    assert s.refused(other_symbol) == "RF_NOT_FOUND"
    assert s.engine.state_hash() == before  # edge refusals journal nothing
    s.submit(good)
    accepted = s.engine.state_hash()
    assert s.refused(good) == "RF_CONFLICT"  # the same quote again (replay)
    older = s.signers["v2"]
    s.submit(older.quote("BTCUSDT", usdt(60000), s.now))
    stale_seq = older.quote("BTCUSDT", usdt(60000), s.now - SEC)  # seq above, source time behind
    assert s.refused(stale_seq) == "RF_CONFLICT"
    assert s.engine.state_hash() != accepted  # the accepted quote did change the state
    # stale and future quotes pass the edge (time is the sequencer's) and are rejected by the handler
    fresh = Shard()
    v3 = fresh.signers["v3"]
    index_before = fresh.engine.components["index"].symbols["BTCUSDT"].row()
    assert fresh.refused(v3.quote("BTCUSDT", usdt(1), fresh.now - 11 * SEC)) == "RF_VALIDATION"
    assert fresh.refused(v3.quote("BTCUSDT", usdt(1), fresh.now + 60 * SEC)) == "RF_VALIDATION"
    assert fresh.engine.components["index"].symbols["BTCUSDT"].row() == index_before
    assert fresh.refused(FeedSigner("nobody", Ed25519PrivateKey.generate()).quote("BTCUSDT", 1, fresh.now)) == "RF_FORBIDDEN"
    fresh.submit(v3.quote("BTCUSDT", usdt(1), fresh.now))  # the same venue, in time: accepted
    assert fresh.index().quotes["v3"].price_minor == usdt(1)


def test_fewer_than_min_live_sources_is_reduce_only_through_halts_and_back() -> None:
    s = live_shard()
    s.fund("alice", "USDT", usdt(100000))
    s.fund("bob", "BTC", BTC)
    # only v1 and v2 keep quoting; after 10 s the others are stale: 2 live < 3
    for _ in range(11):
        s.round({"v1": usdt(60000), "v2": usdt(60000)})
    assert s.index().live_sources == 2 and s.index().short
    assert s.status() == "REDUCE_ONLY"
    halts = s.engine.components["halts"].active
    assert halt_id_of("BTCUSDT") in halts and halts[halt_id_of("BTCUSDT")].level == "REDUCE_ONLY"
    assert s.refused(PlaceOrder("alice", "BTCUSDT", "BUY", price=usdt(60000), quantity=10_000)) == "RF_HALTED"
    s.round({"v1": usdt(60000), "v2": usdt(60000), "v3": usdt(60000)})
    assert s.status() == "ACTIVE" and not s.index().short
    assert halt_id_of("BTCUSDT") not in s.engine.components["halts"].active
    events = s.place("alice", "BUY", usdt(60000), 10_000)
    assert not any(isinstance(e, OrderRejected) for e in events)


def test_sources_go_stale_by_sequencer_time_on_any_command() -> None:
    s = live_shard()
    s.fund("alice", "USDT", usdt(100000))
    # no quote for 11 s: the next command of any kind (an order) sees all five stale first
    code = s.refused(PlaceOrder("alice", "BTCUSDT", "BUY", price=usdt(60000), quantity=10_000), advance_ns=11 * SEC)
    assert code == "RF_HALTED"
    assert s.index().live_sources == 0 and s.status() == "REDUCE_ONLY"
    assert s.index().index_minor == usdt(60000)  # frozen at the last good value
    assert s.market().ref_price == usdt(60000)


def test_set_reference_price_is_refused_on_an_indexed_symbol_and_unchanged_without_an_index() -> None:
    s = live_shard()
    assert s.refused(SetReferencePrice("BTCUSDT", usdt(1000))) == "RF_FORBIDDEN"
    plain = Shard(index=False)
    plain.submit(SetReferencePrice("BTCUSDT", usdt(1000)))
    assert plain.market().ref_price == usdt(1000)
    assert "index" not in [name for name, _ in plain.engine.snapshot_state()[4]]  # no index: not in the hash


def _operators(s: Shard) -> list[Ed25519PrivateKey]:
    keys = [Ed25519PrivateKey.from_private_bytes(bytes([40 + i]) * 32) for i in range(3)]
    ops = [(f"op{i}", FeedSigner("x", k).public_key_hex) for i, k in enumerate(keys)]
    s.submit(RegisterOperators(ops, 2))
    return keys


def test_override_needs_an_operator_quorum_once_operators_exist_and_cannot_be_replayed() -> None:
    from ringfence.index.auth import approval_message

    s = live_shard()
    keys = _operators(s)
    cmd = OverrideReferencePrice("BTCUSDT", usdt(61000), "feed incident")
    assert s.refused(cmd) == "RF_FORBIDDEN"  # no approvals
    version = s.engine.components["index"].version
    msg = approval_message(cmd, version)
    one = [("op0", keys[0].sign(msg).hex())]
    assert s.refused(OverrideReferencePrice("BTCUSDT", usdt(61000), "feed incident", one)) == "RF_FORBIDDEN"
    two = one + [("op1", keys[1].sign(msg).hex())]
    approved = OverrideReferencePrice("BTCUSDT", usdt(61000), "feed incident", two)
    s.submit(approved)
    assert s.market().ref_price == usdt(61000) and s.index().override_minor == usdt(61000)
    s.round({v: usdt(60000) for v in VENUES}, advance_ns=SEC)
    assert s.market().ref_price == usdt(61000)  # pinned while overridden
    assert s.refused(approved) == "RF_FORBIDDEN"  # the same approvals again: the version moved on
    clear = OverrideReferencePrice("BTCUSDT", 0, "feed fixed")
    msg = approval_message(clear, s.engine.components["index"].version)
    s.submit(OverrideReferencePrice("BTCUSDT", 0, "feed fixed", [("op2", keys[2].sign(msg).hex()), ("op0", keys[0].sign(msg).hex())]))
    assert s.market().ref_price == s.index().index_minor == usdt(60000)


def test_an_operator_may_lift_the_index_halt_with_a_quorum() -> None:
    s = live_shard()
    keys = _operators(s)
    for _ in range(11):
        s.round({"v1": usdt(60000)})
    record = s.engine.components["halts"].active[halt_id_of("BTCUSDT")]
    msg = lift_message(record.halt_id, "feeds checked by hand", record.raised_seq)
    s.submit(LiftHalt(record.halt_id, "feeds checked by hand", [("op0", keys[0].sign(msg).hex()), ("op1", keys[1].sign(msg).hex())]))
    assert s.status() == "ACTIVE"


def test_replay_and_snapshot_reproduce_the_state_hash() -> None:
    s = live_shard()
    s.fund("alice", "USDT", usdt(100000))
    for i in range(30):
        s.round({v: usdt(60000) + usdt(10) * ((i * (k + 3)) % 7) for k, v in enumerate(VENUES) if (i + k) % 6})
    s.place("alice", "BUY", usdt(59000), 10_000)
    live = s.engine.state_hash()
    again = new_engine()
    for seq, (command, ts) in enumerate(s.log, start=1):
        again.apply(command, seq, ts, b"\x00" * 32)
    assert again.state_hash() == live
    restored = engine_from_snapshot(s.engine.snapshot_bytes())
    assert restored.state_hash() == live
    restored.check_invariants()


def test_mark_price_is_the_median_of_index_basis_and_last() -> None:
    s = live_shard()
    m = mark_of(s.engine, "BTCUSDT")
    assert m is not None and m.mark_minor == usdt(60000) and m.ma_samples == 0  # empty book: no sample
    s.fund("alice", "USDT", usdt(100000))
    s.fund("bob", "BTC", BTC)
    s.place("alice", "BUY", usdt(60100), 10_000)
    s.place("bob", "SELL", usdt(60300), 10_000)
    for _ in range(3):
        s.round({v: usdt(60000) for v in VENUES}, advance_ns=61 * SEC)
    m = mark_of(s.engine, "BTCUSDT")
    assert m is not None and m.ma_samples == 3 and m.ma_basis_minor == usdt(200)  # mid 60200 - index 60000
    # no trade yet: last counts as the index -> median(60000, 60200, 60000) = 60000
    assert m.mark_minor == usdt(60000)
    s.place("bob", "SELL", usdt(60100), 10_000)  # trades at 60100 with alice's bid
    m = mark_of(s.engine, "BTCUSDT")
    assert m is not None and m.last_minor == usdt(60100) and m.mark_minor == usdt(60100)
    assert mark_of(s.engine, "BTCUSDT", funding_basis_ppm=10_000).mark_minor == usdt(60200)  # type: ignore[union-attr]
