"""The index module through the engine: signed quotes, staleness, REDUCE_ONLY, the band, overrides."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import BTC, SEC, VENUES, Shard, usdt

from ringfence.app import engine_from_snapshot, new_engine
from ringfence.index.commands import IndexPriceChanged, OverrideReferencePrice, SubmitQuote
from ringfence.index.feeds import FeedSigner
from ringfence.index.mark import mark_of
from ringfence.index.module import halt_id_of
from ringfence.staff.decisions import StaffKey
from ringfence.staff.desk import StaffDesk
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


def _staff(s: Shard) -> StaffDesk:
    """The staff genesis: op0..op2 operators (quorum 2), an analyst; keys held by one desk (a test)."""
    keys = [StaffKey(f"op{i}", Ed25519PrivateKey.from_private_bytes(bytes([40 + i]) * 32)) for i in range(3)]
    keys.append(StaffKey("cy", Ed25519PrivateKey.from_private_bytes(b"\x33" * 32)))
    desk = StaffDesk(keys, lambda: s.now)
    s.submit(desk.genesis({"op0": ["operator"], "op1": ["operator"], "op2": ["operator"], "cy": ["analyst"]}, 2))
    return desk


def test_override_needs_the_staff_operator_quorum_once_staff_exist_and_cannot_be_replayed() -> None:
    from ringfence.index.auth import admin_subject, approved_by
    from ringfence.staff.state import StaffRefused

    s = live_shard()
    desk = _staff(s)
    cmd = OverrideReferencePrice("BTCUSDT", usdt(61000), "feed incident")
    assert s.refused(cmd) == "RF_SEGREGATION_OF_DUTIES"  # no approvals: below the quorum
    version = s.engine.components["index"].version
    before = s.engine.state_hash()
    for approvers, rule in ((["op0"], "quorum"), (["op0", "cy"], "role-required"), (["op0", "op0"], "distinct-people")):
        try:
            s.engine.precheck(approved_by(desk, approvers, cmd, version))
            raise AssertionError(f"{approvers} were accepted")
        except StaffRefused as err:
            assert err.rule == rule, err
    # signed for another action, another price or another version: the signature does not verify
    wrong_action = desk.signs(["op0", "op1"], "index.configure", admin_subject(cmd, version))
    other_price = desk.signs(["op0", "op1"], "index.override", admin_subject(OverrideReferencePrice("BTCUSDT", usdt(1), "feed incident"), version))
    other_version = desk.signs(["op0", "op1"], "index.override", admin_subject(cmd, version + 1))
    for sigs in (wrong_action, other_price, other_version):
        assert s.refused(OverrideReferencePrice("BTCUSDT", usdt(61000), "feed incident", sigs)) == "RF_SEGREGATION_OF_DUTIES"
    assert s.engine.state_hash() == before  # every refusal changed nothing
    approved = approved_by(desk, ["op0", "op1"], cmd, version)
    events = s.submit(approved)
    assert [e.approvers for e in events if type(e).__name__ == "ReferenceOverridden"] == [["op0", "op1"]]
    assert s.market().ref_price == usdt(61000) and s.index().override_minor == usdt(61000)
    nonces = s.engine.components["staff"].nonces
    assert all(f"{a.staff_id}/{a.nonce}" in nonces for a in approved.approvals)  # spent
    s.round({v: usdt(60000) for v in VENUES}, advance_ns=SEC)
    assert s.market().ref_price == usdt(61000)  # pinned while overridden
    assert s.refused(approved) == "RF_SEGREGATION_OF_DUTIES"  # the same approvals again: nonces spent, the version moved on
    clear = OverrideReferencePrice("BTCUSDT", 0, "feed fixed")
    s.submit(approved_by(desk, ["op2", "op0"], clear, s.engine.components["index"].version))
    assert s.market().ref_price == s.index().index_minor == usdt(60000)


def test_feed_keys_and_configuration_need_the_quorum_once_staff_exist() -> None:
    from ringfence.index.auth import approved_by
    from ringfence.index.commands import ConfigureIndex, RegisterFeedKey

    s = live_shard()
    desk = _staff(s)
    new_key = FeedSigner("v6", Ed25519PrivateKey.from_private_bytes(b"\x66" * 32)).public_key_hex
    register = RegisterFeedKey("v6", new_key)
    assert s.refused(register) == "RF_SEGREGATION_OF_DUTIES"
    st = s.engine.components["index"]
    s.submit(approved_by(desk, ["op1", "op2"], register, st.version))
    assert st.feed_keys["v6"] == new_key
    configure = ConfigureIndex("BTCUSDT", [(v, 1) for v in (*VENUES, "v6")], 4)
    assert s.refused(configure) == "RF_SEGREGATION_OF_DUTIES"
    s.submit(approved_by(desk, ["op0", "op2"], configure, st.version))
    assert st.symbols["BTCUSDT"].min_sources == 4 and "v6" in st.symbols["BTCUSDT"].sources
    # a removed operator's signatures stop counting on the next command
    s.submit(desk.remove(s.engine, "op2", "left", ["op0", "op1"]))
    back = ConfigureIndex("BTCUSDT", [(v, 1) for v in VENUES], 3)
    assert s.refused(approved_by(desk, ["op0", "op2"], back, st.version)) == "RF_SEGREGATION_OF_DUTIES"


def test_before_staff_exist_index_admin_is_the_genesis_rule() -> None:
    from ringfence.index.auth import approved_by

    s = live_shard()
    keys = [StaffKey(f"op{i}", Ed25519PrivateKey.from_private_bytes(bytes([40 + i]) * 32)) for i in range(2)]
    desk = StaffDesk(keys, lambda: s.now)
    cmd = OverrideReferencePrice("BTCUSDT", usdt(61000), "set up")
    assert s.refused(approved_by(desk, ["op0", "op1"], cmd, s.engine.components["index"].version)) == "RF_VALIDATION"
    s.submit(cmd)  # no staff yet: accepted without approvals
    assert s.index().override_minor == usdt(61000)


def test_an_operator_quorum_may_lift_the_index_halt() -> None:
    s = live_shard()
    desk = _staff(s)
    for _ in range(11):
        s.round({"v1": usdt(60000)})
    assert s.status() == "REDUCE_ONLY"
    s.submit(desk.lift(s.engine, halt_id_of("BTCUSDT"), "feeds checked by hand", ["op0", "op1"]))
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
