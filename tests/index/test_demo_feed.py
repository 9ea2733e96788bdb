"""The demo feed on a node in-process: set-up is idempotent, and a restart after the sources went
stale re-seeds the market maker's ladder without tripping over the index's REDUCE_ONLY halt."""

from __future__ import annotations

import time
from pathlib import Path

from ringfence.api.demo import MARKET_MAKER, seed_demo
from ringfence.app import new_node
from ringfence.index.worker import refresh_demo_feed, setup_demo_feed
from ringfence.risk.halts import market_status
from ringfence.trading.commands import CancelAll


def _first_start(path: Path) -> None:
    with new_node(path, fsync=False) as node:
        refresh_demo_feed(node)  # first start: nothing listed yet, so no index
        assert not node.engine.components["index"].symbols
        seed_demo(node)
        sims = setup_demo_feed(node)
        assert [s.symbol for s in sims] == ["BTCUSDT", "ETHUSDT"]
        node.execute_many([q for s in sims for q in s.step(time.time_ns())])
        assert market_status(node.engine, "BTCUSDT") == "ACTIVE"
        assert setup_demo_feed(node) and node.engine.components["index"].version == 7  # 5 keys + 2 symbols, once
        node.execute_many([CancelAll(MARKET_MAKER, "BTCUSDT"), CancelAll(MARKET_MAKER, "ETHUSDT")])


def test_restart_after_stale_sources_reseeds_the_ladder(tmp_path: Path) -> None:
    path = tmp_path / "engine"
    _first_start(path)
    later = time.time_ns() + 120 * 10**9  # the sources are two minutes stale
    with new_node(path, fsync=False, clock=lambda: later) as node:
        refresh_demo_feed(node, clock=lambda: later)
        done = seed_demo(node)  # would raise if the ladder met a REDUCE_ONLY market
        assert done["ladder_orders"] == 20, done
        assert market_status(node.engine, "BTCUSDT") == "ACTIVE"
        s = node.engine.components["index"].symbols["BTCUSDT"]
        assert s.live_sources == 5 and not s.short and node.engine.components["index"].version == 7


def test_without_the_refresh_the_stale_index_would_refuse_the_ladder(tmp_path: Path) -> None:
    """The failure the refresh prevents (so the test above can fail)."""
    import pytest

    from ringfence.errors import RingfenceError

    path = tmp_path / "engine"
    _first_start(path)
    later = time.time_ns() + 120 * 10**9
    with new_node(path, fsync=False, clock=lambda: later) as node:
        with pytest.raises(RingfenceError, match="REDUCE_ONLY"):
            seed_demo(node)
