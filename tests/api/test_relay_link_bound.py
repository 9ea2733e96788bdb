"""The engine never waits on a gateway link (api/relay.py `EngineLink`): market data and replies are
written at once, and a link whose gateway stopped reading is aborted once more than
LINK_MAX_BUFFER_BYTES wait for it, instead of growing the engine's memory. A real Unix socket whose
other end never reads; the bound lowered to 1 MiB for speed (the code reads it at each write)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ringfence.api import relay


def test_a_link_whose_gateway_stopped_reading_is_aborted_past_its_bound(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(relay, "LINK_MAX_BUFFER_BYTES", 1 << 20)

    async def scenario() -> tuple[int, int, bool, bool]:
        held: list[asyncio.StreamWriter] = []

        async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # a hung gateway: keeps the connection, reads nothing

        server = await asyncio.start_unix_server(never_reads, path=str(tmp_path / "engine.sock"))
        _, writer = await asyncio.open_unix_connection(str(tmp_path / "engine.sock"))
        while not held:
            await asyncio.sleep(0.01)
        link = relay.EngineLink(relay._Batched(writer))
        payload = b"x" * 10_000
        sent = 0
        while link.publish("btcusdt@depth", payload):
            sent += 1
            if sent % 3 == 0:
                await asyncio.sleep(0)  # the turn's frames go out in one write, into asyncio's buffer
            assert link.writer.buffered() <= relay.LINK_MAX_BUFFER_BYTES
            assert sent < 10_000, "never aborted"
        refused_after = link.publish("btcusdt@depth", payload)
        await asyncio.sleep(0)
        closing = writer.is_closing()
        for w in held:
            w.close()
        server.close()
        return sent, len(held), refused_after, closing

    sent, gateways, refused_after, closing = asyncio.run(scenario())
    assert gateways == 1
    assert sent * 10_000 > 1 << 20, "the bound counts what waits in asyncio's buffer, beyond the kernel's"
    assert refused_after is False and closing
