"""The engine's per-connection inbound bound in `serve --gateways N` (api/relay.py `_Inbound`), without
a network: a client whose messages pile up faster than its handler reads them is cut off at
MAX_INBOUND_MESSAGES messages or MAX_INBOUND_BYTES bytes, whichever comes first; what was queued is
freed and the handler's next read is a disconnect (1008 for a WebSocket). The end-to-end flood through
real gateways is tests/api/test_gateways.py; whether it reaches this bound there depends on how fast
the engine is, so the bound itself is pinned here."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.api import relay


def drain(inbound: relay._Inbound) -> list[dict]:
    async def read_all():
        out = []
        while not inbound.queue.empty():
            out.append(await inbound.get())
        return out

    return asyncio.run(read_all())


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=300_000), max_size=40), kind=st.sampled_from(["websocket", "http"]))
def test_the_inbound_queue_never_passes_its_bounds_and_overflow_ends_in_a_disconnect(sizes, kind):
    inbound = relay._Inbound(kind)
    accepted = 0
    overflowed_at = None
    for i, n in enumerate(sizes):
        key = "text" if kind == "websocket" else "body"
        ok = inbound.put({"type": f"{kind}.receive", key: "x" * n})
        assert inbound.queue.qsize() <= relay.MAX_INBOUND_MESSAGES
        assert inbound.bytes <= relay.MAX_INBOUND_BYTES
        if overflowed_at is None and not ok:
            overflowed_at = i
        accepted += ok and overflowed_at is None
    queued = drain(inbound)
    total = sum(64 + n for n in sizes[:accepted])
    if overflowed_at is None:
        assert len(queued) == len(sizes) and total <= relay.MAX_INBOUND_BYTES
    else:  # the one past the bound would have broken it; nothing of what was queued is kept
        assert total + 64 + sizes[overflowed_at] > relay.MAX_INBOUND_BYTES or accepted >= relay.MAX_INBOUND_MESSAGES
        assert queued == [relay._disconnect(kind, relay.TOO_MANY_MESSAGES[0])], queued[:2]


def test_the_message_count_bound_cuts_off_the_next_message():
    inbound = relay._Inbound("websocket")
    for _ in range(relay.MAX_INBOUND_MESSAGES):
        assert inbound.put({"type": "websocket.receive", "text": "{}"})
    assert not inbound.put({"type": "websocket.receive", "text": "{}"})
    assert drain(inbound) == [{"type": "websocket.disconnect", "code": 1008}]
    assert inbound.put({"type": "websocket.receive", "text": "{}"})  # later messages are dropped, not queued
    assert drain(inbound) == []
