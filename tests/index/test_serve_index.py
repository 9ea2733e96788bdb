"""The index in a running exchange: real `ringfence serve --demo` processes, httpx, the CLI, and
the ccxt poller feeding one node from other nodes' tickers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from api.conftest import Invoked, Server, invoke  # noqa: E402  (tests/api/conftest.py: a real server on a free port)

from ringfence.index.feeds import FeedSigner  # noqa: E402

FEED_ON = {"RINGFENCE_DEMO_FEED": "1"}


def cli(*args: str, check: bool = True, process: bool = False) -> subprocess.CompletedProcess[str] | Invoked:
    """`ringfence ARGS` in this process (tests/api/conftest.py invoke: the same command code without a Python start of
    1-2 s of CPU per call), or with `process` in a process of its own (`index show` and `index feed` here)."""
    if process:
        r: subprocess.CompletedProcess[str] | Invoked = subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True,
                                                                      text=True, timeout=120, env=dict(os.environ))
    else:
        r = invoke(*args)
    if check and r.returncode != 0:
        raise AssertionError(f"ringfence {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def wait_for(fn, what: str, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):  # type: ignore[no-untyped-def]
    srv = Server(tmp_path_factory.mktemp("index") / "data", env=FEED_ON, chains=False)
    yield srv
    assert srv.stop() == 0


def test_demo_serves_a_live_index_mark_price_and_premium_index(demo: Server) -> None:
    def live() -> dict | None:  # type: ignore[type-arg]
        v = httpx.get(demo.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()
        return v if v["status"] == "LIVE" and v["liveSources"] >= 3 else None

    v = wait_for(live, "a live BTCUSDT index")
    assert [s["venue"] for s in v["sources"]] == ["sim1", "sim2", "sim3", "sim4", "sim5"]
    assert v["marketStatus"] == "ACTIVE" and v["referencePrice"] is not None
    index = int(v["indexPriceMinor"])
    assert 50_000 * 10**6 < index < 70_000 * 10**6
    live_rows = [s for s in v["sources"] if s["live"]]
    assert sum(int(s["weightShare"].replace(".", "")) for s in live_rows) <= 1_000_000
    p = httpx.get(demo.base + "/fapi/v1/premiumIndex", params={"symbol": "BTCUSDT"}).json()
    assert set(p) >= {"symbol", "markPrice", "indexPrice", "lastFundingRate", "nextFundingTime", "time"}
    assert p["lastFundingRate"] == "0.00000000"
    assert httpx.get(demo.base + "/fapi/v1/premiumIndex", params={"symbol": "NOPE"}).json()["code"] == -1121
    both = httpx.get(demo.base + "/fapi/v1/premiumIndex").json()
    assert sorted(x["symbol"] for x in both) == ["BTCUSDT", "ETHUSDT"]
    # the index keeps moving: the feed worker quotes every second
    first_seq = v["sources"][0]["seq"]
    wait_for(lambda: httpx.get(demo.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()["sources"][0]["seq"] > first_seq + 1,
             "more quotes from sim1")
    out = cli("index", "show", "--url", demo.base, "--symbol", "BTCUSDT", "--json", process=True)
    shown = json.loads(out.stdout)
    assert shown["symbol"] == "BTCUSDT" and shown["status"] == "LIVE"
    table = cli("index", "show", "--url", demo.base).stdout
    assert "ETHUSDT" in table and "sim5" in table


def test_ccxt_binanceusdm_mark_and_index_price_candles(demo: Server):
    """fetchMarkOHLCV / fetchIndexOHLCV (/fapi/v1/markPriceKlines, /fapi/v1/indexPriceKlines):
    one sample a second of the engine's mark and index, a candle for every minute the node ran."""
    S = "BTC/USDT:USDT"
    from derivatives.test_fapi_live import make_usdm

    ex = make_usdm(demo.base, demo.keys["alice"]["api_key"], demo.keys["alice"]["api_secret"])
    ex.load_markets()
    wait_for(lambda: httpx.get(demo.base + "/fapi/v1/markPriceKlines", params={"symbol": "BTCUSDT", "interval": "1m"}).json(),
             "a first mark price sample")
    mark = ex.fetch_mark_ohlcv(S, "1m", limit=1500)
    index = ex.fetch_index_ohlcv(S, "1m", limit=1500)
    pi = httpx.get(demo.base + "/fapi/v1/premiumIndex", params={"symbol": "BTCUSDT"}).json()
    assert mark and index
    for rows in (mark, index):
        assert all(t % 60_000 == 0 and lo <= min(o, c) <= max(o, c) <= hi and v == 0 for t, o, hi, lo, c, v in rows), rows
        # the demo's feed makes a batch every second: no minute without a candle since the node started
        assert [b[0] - a[0] for a, b in zip(rows, rows[1:])] == [60_000] * (len(rows) - 1)
    # the newest candles close at most a second before now: at the mark and index the engine reports
    # (the demo's venues walk at most 0.03 % + noise a second)
    for close, now in ((mark[-1][4], pi["markPrice"]), (index[-1][4], pi["indexPrice"])):
        assert abs(Decimal(str(close)) - Decimal(now)) <= Decimal(now) / 200, (close, now)
    raw = httpx.get(demo.base + "/fapi/v1/markPriceKlines", params={"symbol": "BTCUSDT", "interval": "1m"}).json()
    assert all(len(r) == 12 and r[6] == r[0] + 59_999 and r[5] == "0" and 1 <= r[8] <= 60 for r in raw), raw[-3:]
    # startTime / limit as Binance: from the first candle at or after startTime
    later = httpx.get(demo.base + "/fapi/v1/markPriceKlines",
                      params={"symbol": "BTCUSDT", "interval": "1m", "startTime": str(raw[-1][0]), "limit": "5"}).json()
    assert later == raw[-1:] or later[0][:2] == raw[-1][:2]  # the newest candle may have taken a sample since
    eth = ex.fetch_mark_ohlcv("ETH/USDT:USDT", "5m")
    assert eth and Decimal(str(eth[-1][4])) < Decimal(str(mark[-1][4])) / 5  # ETH's own mark, not BTC's
    bad = httpx.get(demo.base + "/fapi/v1/indexPriceKlines", params={"pair": "NOPEUSDT", "interval": "1m"}).json()
    assert bad["code"] == -1121
    bad = httpx.get(demo.base + "/fapi/v1/markPriceKlines", params={"symbol": "BTCUSDT", "interval": "7m"}).json()
    assert bad["code"] == -1100 and "interval" in bad["msg"]


def test_forged_and_replayed_quotes_over_http_are_refused(demo: Server) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    v = httpx.get(demo.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()
    seq = max(s["seq"] for s in v["sources"]) + 10_000
    forger = FeedSigner("sim1", Ed25519PrivateKey.generate(), {"BTCUSDT": seq})
    # stamped ahead of the live feed, which keeps quoting meanwhile: the forged signature (checked last)
    # must be what refuses it, not an order check against a feed quote accepted a moment later
    q = forger.quote("BTCUSDT", 1_000 * 10**6, time.time_ns() + 5 * 10**9)
    form = {"venue": q.venue, "symbol": q.symbol, "price_minor": str(q.price_minor), "source_ts_ns": str(q.source_ts_ns),
            "seq": str(q.seq), "signature": q.signature_hex}
    r = httpx.post(demo.base + "/v1/index/quote", data=form)
    assert r.status_code == 401 and r.json()["code"] == -1022 and "forged" in r.json()["msg"], r.text
    after = httpx.get(demo.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()
    assert all(s["seq"] < seq for s in after["sources"])  # nothing of it was kept
    assert int(after["indexPriceMinor"]) > 10_000 * 10**6
    # a genuine sim1 quote (the demo key is derivable, by design of the demo) replayed: refused
    from ringfence.index.feeds import demo_feed_key

    # 1.5 s ahead (2 s are allowed) so the running feed's own sim1 quote cannot overtake it; from
    # here on the feed's sim1 sequence is below ours and refused (this test runs last on the fixture)
    real = FeedSigner("sim1", demo_feed_key("sim1"), {"BTCUSDT": seq})
    good = real.quote("BTCUSDT", int(after["indexPriceMinor"]), time.time_ns() + 1_500_000_000)
    form = {"venue": "sim1", "symbol": "BTCUSDT", "price_minor": str(good.price_minor), "source_ts_ns": str(good.source_ts_ns),
            "seq": str(good.seq), "signature": good.signature_hex}
    assert httpx.post(demo.base + "/v1/index/quote", data=form).status_code == 200
    again = httpx.post(demo.base + "/v1/index/quote", data=form)
    assert again.status_code == 409 and "replayed" in again.json()["msg"], again.text
    bad = httpx.post(demo.base + "/v1/index/quote", data={**form, "price_minor": "1e9"})
    assert bad.status_code == 400


def test_operators_override_and_register_feed_keys_through_the_admin_api(demo: Server) -> None:
    """`ringfence index override|register-feed --url`: signed with staff keys, sent to /admin/v1, verified by the engine."""
    staff = demo.data / "demo-staff.json"
    ada, ben, cy = (f"{staff}#{who}" for who in ("ada", "ben", "cy"))
    wait_for(lambda: httpx.get(demo.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()["status"] == "LIVE", "a live index")
    args = ("index", "override", "--url", demo.base, "--symbol", "BTCUSDT", "--price-minor", "61000000000", "--reason", "feed incident")
    alone = cli(*args, "--key", ada, check=False)  # one operator: below the quorum of 2
    assert alone.returncode == 1 and "quorum" in alone.stderr + alone.stdout
    analyst = cli(*args, "--key", ada, "--key", cy, check=False)  # cy is no operator
    assert analyst.returncode == 1 and "role-required" in analyst.stderr + analyst.stdout
    token = cli(*args, "--key", ben, "--sign-only", process=True).stdout.strip()  # ben signs on his own machine
    assert token.startswith("ben:") and token.count(":") == 3
    cli(*args, "--key", ada, "--approval", token)
    v = httpx.get(demo.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()
    assert v["override"] is not None and v["referencePrice"] == v["override"] and v["override"].startswith("61000")
    replay = cli(*args, "--key", ada, "--approval", token, check=False)  # ben's token again: spent (and the version moved on)
    assert replay.returncode == 1 and "nonce-once" in replay.stderr + replay.stdout
    cli("index", "override", "--url", demo.base, "--symbol", "BTCUSDT", "--price-minor", "0", "--reason", "fixed",
        "--key", ben, "--key", ada)
    assert httpx.get(demo.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()["override"] is None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ringfence.staff.console import AdminClient, load_key

    public = FeedSigner("x", Ed25519PrivateKey.from_private_bytes(b"\x51" * 32)).public_key_hex
    with AdminClient(demo.base, load_key(ada)) as client:
        before = client.get("/index")
        assert "kraken" not in before["feed_keys"]
        cli("index", "register-feed", "--url", demo.base, "--venue", "kraken", "--public-key", public, "--key", ada, "--key", ben)
        after = client.get("/index")
    assert after["feed_keys"]["kraken"] == public and after["version"] == before["version"] + 1
    unsigned = httpx.post(demo.base + "/admin/v1/index/override", json={"symbol": "BTCUSDT", "price_minor": 1, "reason": "x",
                                                                        "approvals": []})
    assert unsigned.status_code == 401  # no signed request: nothing submitted


def test_ccxt_poller_feeds_a_node_from_other_ringfence_nodes(demo: Server, tmp_path: Path) -> None:
    # the source node is the module's demo server: a Binance venue whose BTCUSDT book is the demo ladder
    # (the tests above place no order; its own index feed does not touch the book)
    source = demo
    target_dir = tmp_path / "target"
    # the target lists its demo markets and staff first, then (stopped) gets five feed keys and a
    # BTCUSDT index, each signed by the demo's operator quorum (ada, ben)
    first = Server(target_dir, env={"RINGFENCE_DEMO_FEED": "0"}, chains=False)
    assert first.stop() == 0
    quorum = ["--key", f"{target_dir}/demo-staff.json#ada", "--key", f"{target_dir}/demo-staff.json#ben"]
    venues = []
    for name in ("local-a", "local-b", "local-c", "local-d", "local-e"):
        key = tmp_path / f"{name}.key"
        public = cli("index", "keygen", "--out", str(key)).stdout.strip()
        if not venues:  # staff exist: no approvals, no change
            unsigned = cli("index", "register-feed", str(target_dir), "--venue", name, "--public-key", public, check=False)
            assert unsigned.returncode == 1 and "quorum" in unsigned.stderr + unsigned.stdout
        cli("index", "register-feed", str(target_dir), "--venue", name, "--public-key", public, *quorum)
        venues.append(name)
    cli("index", "configure", str(target_dir), "--symbol", "BTCUSDT", *sum((["--source", v] for v in venues), []), "--min-sources", "3",
        *quorum)
    target = Server(target_dir, env=FEED_ON, chains=False)  # its demo feed leaves the configured BTCUSDT alone
    try:
        assert httpx.get(target.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()["marketStatus"] == "REDUCE_ONLY"
        config = {"venues": [
            {"venue": v, "exchange": "binance", "market": "BTC/USDT", "symbol": "BTCUSDT", "decimals": 6,
             "key_file": f"{v}.key", "url": (source.base if i < 3 else target.base),
             "options": {"fetchMarkets": ["spot"], "fetchCurrencies": False, "fetchMargins": False, "adjustForTimeDifference": False}}
            for i, v in enumerate(venues)
        ]}
        (tmp_path / "feeds.json").write_text(json.dumps(config))
        out = cli("index", "feed", "--config", str(tmp_path / "feeds.json"), "--url", target.base, "--rounds", "2", process=True)
        assert "10 accepted, 0 refused, 0 venue errors" in out.stdout, out.stdout
        v = httpx.get(target.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()
        assert v["status"] == "LIVE" and v["liveSources"] == 5 and v["marketStatus"] == "ACTIVE", v
        # both demo books are a ladder around 61000: the mid of best bid and ask
        assert v["indexPrice"] == "61000.000000", v
        assert [s["seq"] for s in v["sources"]] == [2] * 5
        # a second run continues the sequence numbers from what the node accepted
        out = cli("index", "feed", "--config", str(tmp_path / "feeds.json"), "--target", target.base, "--rounds", "1")
        assert "5 accepted, 0 refused" in out.stdout, out.stdout
        eth = httpx.get(target.base + "/v1/index", params={"symbol": "ETHUSDT"}).json()
        assert eth["sources"][0]["venue"] == "sim1"  # the demo feed still runs ETHUSDT
    finally:
        assert target.stop() == 0


def test_demo_restart_keeps_the_index_and_continues_the_feed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = Server(data, env=FEED_ON, chains=False)
    try:
        v = wait_for(lambda: (lambda x: x if x["status"] == "LIVE" else None)(
            httpx.get(srv.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()), "a live index")
        marks = wait_for(lambda: httpx.get(srv.base + "/fapi/v1/markPriceKlines", params={"symbol": "BTCUSDT", "interval": "1d"}).json(),
                         "a mark price candle")
    finally:
        assert srv.stop() == 0
    shown = json.loads(cli("index", "show", "--data", str(data), "--symbol", "BTCUSDT", "--json").stdout)
    before = {s["venue"]: s["seq"] for s in shown["sources"]}
    assert all(seq >= v["sources"][0]["seq"] - 1 for seq in before.values())
    again = Server(data, env=FEED_ON, chains=False)  # sources are stale by now; the first round brings them back
    try:
        after = httpx.get(again.base + "/v1/index", params={"symbol": "BTCUSDT"}).json()
        assert after["status"] == "LIVE" and after["marketStatus"] == "ACTIVE", after
        assert all(s["seq"] > before[s["venue"]] for s in after["sources"] if s["live"])
        # the mark candles are sampled again from the journal's batches: today's candle opens at the
        # same time and price, and holds every sample taken before the stop
        again_marks = httpx.get(again.base + "/fapi/v1/markPriceKlines", params={"symbol": "BTCUSDT", "interval": "1d"}).json()
        (t0, o0, h0, l0, _, _, _, _, n0, *_), (t1, o1, h1, l1, _, _, _, _, n1, *_) = marks[-1], again_marks[-1]
        assert (t1, o1) == (t0, o0) and n1 >= n0 and Decimal(h1) >= Decimal(h0) and Decimal(l1) <= Decimal(l0)
        halts = httpx.get(again.base + "/v1/halts").json()
        assert not [h for h in halts if h["halt_id"].startswith("index:")], halts
    finally:
        assert again.stop() == 0
