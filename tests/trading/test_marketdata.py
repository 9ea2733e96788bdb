"""Klines, ticker and trades of the event-fed read model, with sequencer timestamps."""

from __future__ import annotations

from scenario import BTC_SCALE, USDT, btcusdt, price, qty

from ringfence.trading.marketdata import KLINE_INTERVALS_NS, MarketData

MIN = 60 * 10**9


def test_klines_ticker_and_trades_follow_sequencer_time() -> None:
    d = btcusdt()
    d.fund("alice", "USDT", 1_000_000 * USDT)
    d.fund("bob", "BTC", 10 * BTC_SCALE)
    md = MarketData()
    for _c, ts, ev in d.log:
        md.feed(0, ts, ev)
    d.ts_ns = (d.ts_ns // (1440 * MIN) + 1) * (1440 * MIN)  # the next midnight UTC
    fills = [("100", "1", 0), ("102", "2", 30 * 10**9), ("99", "1", MIN), ("101", "1", 5 * MIN + 1)]
    start = d.ts_ns
    for p, q, at in fills:
        d.ts_ns = start + at - 1000
        md.feed(0, d.ts_ns + 1000, d.place("bob", "SELL", price(p), qty(q)))
        d.ts_ns = start + at
        md.feed(0, d.ts_ns + 1000, d.place("alice", "BUY", price(p), qty(q)))
    sd = md["BTCUSDT"]
    one_min = sd.kline_rows("1m")
    assert [r[1:5] for r in one_min] == [
        [price("100"), price("102"), price("100"), price("102")],
        [price("99")] * 4,
        [price("101")] * 4,
    ]
    assert [r[5] for r in one_min] == [qty("3"), qty("1"), qty("1")]
    assert [r[7] for r in one_min] == [2, 1, 1]
    five = sd.kline_rows("5m")
    assert len(five) == 2 and five[0][1:5] == [price("100"), price("102"), price("99"), price("99")]
    day = sd.kline_rows("1d")
    assert len(day) == 1 and day[0][7] == 4 and day[0][6] == 100 * USDT + 204 * USDT + 99 * USDT + 101 * USDT
    assert set(KLINE_INTERVALS_NS) == {"1m", "5m", "15m", "1h", "4h", "1d"}
    t = sd.ticker()
    assert (t["open_price"], t["high_price"], t["low_price"], t["last_price"]) == (price("100"), price("102"), price("99"), price("101"))
    assert t["count"] == 4 and t["volume"] == qty("5")
    assert [x["is_buyer_maker"] for x in sd.trades] == [False] * 4
    assert [x["ts_ns"] for x in sd.trades][0] == start + 1000
