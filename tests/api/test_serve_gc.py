"""`ringfence serve` moves its start-up heap out of the cyclic garbage collector's way before
serving (issue #18 item 6: a full collection of `serve --demo`'s heap holds the GIL for ~160 ms of
CPU, stopping the sequencer, the event loop and the market-data fan-out)."""

from __future__ import annotations

import gc
import re

import httpx
import pytest

from ringfence.api.serve import GC_YOUNG_THRESHOLD, freeze_startup_heap

#: the shared demo server starts without its chains (conftest.NO_CHAINS): what is frozen here is serve's own
#: start-up heap (engine, read models, app, libraries), which freezes the same with or without custody
SERVER_CHAINS = False


def test_freezing_takes_the_heap_out_of_full_collections() -> None:
    # a heap of the kind start-up builds: many small containers that point at each other
    heap = [{"id": i, "peers": []} for i in range(200_000)]
    for i, node in enumerate(heap):
        node["peers"].append(heap[i - 1])  # type: ignore[attr-defined]
    thresholds = gc.get_threshold()
    try:
        out = freeze_startup_heap()
        # from then on the youngest generation is collected far less often than Python's 700
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *thresholds[1:]) and GC_YOUNG_THRESHOLD >= 10_000
        assert out["frozen"] >= 400_000  # the dicts and their lists, at least
        # what it froze is frozen still (a few of those objects may have been freed since, by refcount)
        assert 0 <= out["frozen"] - gc.get_freeze_count() < 1_000, (out["frozen"], gc.get_freeze_count())
        # a full collection no longer scans them: it got much cheaper
        assert out["full_collection_cpu_us_after"] * 4 < out["full_collection_cpu_us_before"], out
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert gc.get_freeze_count() == 0


def test_serve_freezes_its_start_up_heap_and_goes_on_serving(server) -> None:
    lines = [line for line in server.log_text().splitlines() if "start-up heap frozen" in line]
    assert len(lines) == 1, server.log_text()[-2000:]
    match = re.search(r"frozen out of the cyclic GC: ([\d,]+) objects; a full collection took (\d+) ms of CPU, now (\d+) ms", lines[0])
    assert match is not None, lines[0]
    frozen, before_ms, after_ms = int(match[1].replace(",", "")), int(match[2]), int(match[3])
    assert frozen > 50_000, lines[0]  # the demo's engine, read models, app and libraries
    assert after_ms < before_ms, lines[0]
    # frozen before serving: the server answers as before
    assert httpx.get(server.base + "/api/v3/ping", timeout=10).status_code == 200
    assert httpx.get(server.base + "/api/v3/depth", params={"symbol": "BTCUSDT"}, timeout=10).json()["bids"]


def test_a_gateway_freezes_its_start_up_heap_at_its_lifespan_start(tmp_path) -> None:
    """`serve --gateways N`: each gateway process (api/relay.py `main`) moves its start-up heap out of
    the cyclic GC and widens the young generation, as the engine does: at the defaults a gateway ran
    112-308 young collections and a full one of 23-86 ms in 10 s of bench/api.py's open loop."""
    import asyncio

    from ringfence.api.relay import GatewayRelay

    heap = [{"id": i, "peers": []} for i in range(50_000)]  # what the gateway's libraries built
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message["type"])

    thresholds = gc.get_threshold()
    try:
        gateway = GatewayRelay(tmp_path / "engine.sock", index=3, freeze_heap=True)
        asyncio.run(gateway({"type": "lifespan"}, receive, send))
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert gateway.heap is not None and gateway.heap["frozen"] >= len(heap) and gc.get_freeze_count() > len(heap)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    # not by default: a GatewayRelay driven in-process (the relay tests) leaves its process's collector alone
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    asyncio.run(GatewayRelay(tmp_path / "engine.sock").__call__({"type": "lifespan"}, receive, send))
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds


@pytest.mark.parametrize(("standby", "paused"), [(None, True), ("nats://127.0.0.1:4222/RF", False)])
def test_serve_pauses_the_collector_for_its_start_only_and_a_failed_start_turns_it_on_again(tmp_path, monkeypatch,
                                                                                              standby, paused) -> None:
    """`serve` pauses the cyclic GC while it starts (not as a standby, which may follow its stream for days);
    a start that fails (here: refused at its checks, as a bad setting is) leaves the collector on again."""
    import typer

    from ringfence.api import serve as serve_module

    seen: list[bool] = []

    def refuse(*_args: object) -> None:
        seen.append(gc.isenabled())
        raise typer.Exit(2)

    monkeypatch.setattr(serve_module, "check_before_start", refuse)
    assert gc.isenabled()
    with pytest.raises(typer.Exit):
        serve_module.serve(data=tmp_path / "d", host="127.0.0.1", port=1, demo=False, forwarded_allow_ips=None,
                           replicate=None, standby=standby, node_id=None, peers=None, gateways=0, pipeline=False)
    assert seen == [not paused]  # paused while it started (or not, for a standby)
    assert gc.isenabled()  # and on again after the failed start
