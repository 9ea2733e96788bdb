"""The futures read model (derivatives/history.py): fed the engine's own events, its income ledger
explains every futures wallet to the minor unit, its fills carry each side's realised PnL, and its
funding rounds are the engine's."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.commands import FundingSettled, PositionChanged, SetMarginType
from ringfence.derivatives.history import FuturesHistory
from ringfence.derivatives.state import account_summary, derivatives_state
from ringfence.trading.commands import CancelAll, Trade

from .perpworld import PERP, order, perp_world, rejected, with_index

OWNERS = ("alice", "bob", "carol")


def _fed(d) -> FuturesHistory:  # type: ignore[no-untyped-def]
    h = FuturesHistory()
    for _, ts_ns, events in d.log:
        h.feed(ts_ns, events)
    return h


def _wallet_total(d, owner: str) -> int:  # type: ignore[no-untyped-def]
    s = account_summary(d.engine, owner, "USDT")
    return s["wallet"] + s["cross_margin"] + s["isolated_margin"]


def _explains_every_wallet(d, h: FuturesHistory) -> None:  # type: ignore[no-untyped-def]
    for owner in OWNERS:
        assert sum(r["income"] for r in h.income_of(owner)) == _wallet_total(d, owner), owner


def test_fills_funding_and_transfers_explain_the_wallets():
    d = perp_world()
    quote = with_index(d)
    quote("60000")
    assert not rejected(d.apply(SetMarginType("bob", PERP, "ISOLATED")))
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")
    order(d, "carol", "BUY", "60300", "0.1")  # a book above the index: longs pay funding
    order(d, "bob", "SELL", "60400", "0.1")
    ev = order(d, "alice", "SELL", "60300", "0.4")  # alice closes 0.4 at a profit against carol's bid... partly
    pcs = [e for e in ev if isinstance(e, PositionChanged)]
    trades = [e for e in ev if isinstance(e, Trade)]
    st = derivatives_state(d.engine)
    d.ts_ns = st.perps[PERP].next_funding_ns - 10**9
    quote("60000")
    fev = d.apply(CancelAll("carol", PERP), advance_ns=10**9)
    f = next(e for e in fev if isinstance(e, FundingSettled))
    assert f.rate_ppm > 0 and f.owners
    h = _fed(d)
    # funding: the round as settled, and each owner's amount as income
    assert [(r["rate_ppm"], r["mark"], r["index"]) for r in h.funding_of(PERP)] == [(f.rate_ppm, f.mark_price, f.index_price)]
    for owner, amount in zip(f.owners, f.amounts):
        assert [r["income"] for r in h.income_of(owner) if r["incomeType"] == "FUNDING_FEE"] == [amount]
    # fills: one row per side, with that side's realised PnL (alice's sale realised a profit)
    sold = [t for t in h.user_trades("alice", PERP) if t["id"] == trades[0].trade_id]
    assert len(sold) == 1 and sold[0]["side"] == "SELL" and sold[0]["realizedPnl"] == pcs[1].realized_pnl > 0
    carol = [t for t in h.user_trades("carol", PERP) if t["id"] == trades[0].trade_id][0]
    assert carol["buyer"] and carol["maker"] and carol["realizedPnl"] == pcs[0].realized_pnl == 0
    assert carol["commission"] == trades[0].maker_fee and carol["commissionAsset"] == "USDT"
    # the income ledger explains every futures wallet exactly (transfers in, PnL, fees, funding)
    _explains_every_wallet(d, h)
    # and a replay of the same events builds the same model
    again = _fed(d)
    assert again.income == h.income and again.trades == h.trades


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, 2**32))
def test_random_trading_income_always_explains_the_wallets(seed):
    print("seed", seed)
    rng = random.Random(seed)
    d = perp_world()
    for _ in range(30):
        px = str(rng.randint(59_500, 60_500))
        order(d, rng.choice(OWNERS), rng.choice(["BUY", "SELL"]), px, f"0.{rng.randint(1, 999):03d}",
              reduce_only=int(rng.random() < 0.2))
    _explains_every_wallet(d, _fed(d))


def test_mark_and_index_candles_take_one_sample_a_second_and_fold_by_minute():
    from ringfence.derivatives.price_history import PriceCandles
    from ringfence.derivatives.state import mark_of_perp

    from .perpworld import PERP, order, perp_world, with_index

    d = perp_world(owners=("alice", "bob"))
    quote = with_index(d)
    candles = PriceCandles()
    d.ts_ns = d.ts_ns // 60_000_000_000 * 60_000_000_000 + 60_000_000_000  # a minute's start
    seen: dict[int, tuple[int, int]] = {}  # second -> (mark, index) at the first batch of it
    prices = ["60000", "60100", "59900", "60050", "60200", "60150"]
    for i in range(150):  # 2.5 minutes, three batches a second
        for k in range(3):
            d.ts_ns += 333_000_000 if k else 1_000_000
            quote(prices[(i + k) % len(prices)])
            if i % 7 == 0 and k == 1:
                order(d, "alice", "BUY", prices[i % len(prices)], "0.001")
                order(d, "bob", "SELL", prices[i % len(prices)], "0.001")
            samples = candles.sample(d.engine, d.ts_ns)
            second = d.ts_ns // 10**9
            if second not in seen:
                p = d.engine.components["derivatives"].perps[PERP]
                seen[second] = (mark_of_perp(d.engine, p), d.engine.components["index"].symbols["BTCUSDT"].index_minor)
                assert samples == [("mark", PERP, seen[second][0]), ("index", "BTCUSDT", seen[second][1])]
                candles.fold(d.ts_ns, samples)
            else:
                assert samples is None  # one sample a second
    for kind, col in (("mark", 0), ("index", 1)):
        rows = candles.rows(kind, PERP if kind == "mark" else "BTCUSDT", "1m")
        minutes = sorted({s // 60 for s in seen})
        assert [r[0] for r in rows] == [m * 60 * 10**9 for m in minutes]
        for r, m in zip(rows, minutes):
            xs = [seen[s][col] for s in sorted(seen) if s // 60 == m]
            assert r[1:] == [xs[0], max(xs), min(xs), xs[-1], len(xs)]


def test_batches_run_before_the_exchange_starts_reach_the_candles_as_a_restart_replays_them(tmp_path):  # type: ignore[no-untyped-def]
    # `serve --demo` submits the index feed's first round directly, before the exchange starts (no
    # loop yet). A restart replays that batch into the mark candles; the live candles must hold it
    # too, or today's candle would open at another price after a restart (and so would every other
    # read model fed from it).
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ringfence.api.service import Exchange
    from ringfence.index.feeds import FeedSigner

    from .perpworld import price

    d = perp_world()
    with_index(d)
    setup = [c for c, _, _ in d.log]
    signer = FeedSigner("v1", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    live = Exchange(tmp_path / "data", fsync=False)
    live.open()
    try:
        assert not [e for evs in live.node.execute_many(setup) for e in evs if rejected([e])]
        for px in ("61000", "61500"):  # each in a second of its own: sampled
            time.sleep(1.05)
            assert not rejected(live.node.execute_many([signer.quote("BTCUSDT", price(px), time.time_ns())])[0])
        rows = live.futures.prices.rows("mark", PERP, "1d")
        perps_live = live.futures.perps
    finally:
        live.close()
    again = Exchange(tmp_path / "data", fsync=False)
    again.open()
    try:
        assert rows and rows[-1][1] == price("61000") and rows[-1][4] == price("61500"), rows
        assert again.futures.prices.rows("mark", PERP, "1d") == rows
        assert again.futures.prices.rows("index", "BTCUSDT", "1m") == live.futures.prices.rows("index", "BTCUSDT", "1m")
        assert again.futures.perps == perps_live
    finally:
        again.close()
