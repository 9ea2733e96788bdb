"""The relay's link reader (api/relay.py `_FrameReader`): whatever way the socket splits the byte
stream, the frames come out whole, in order, each once; a frame over the limit or one that does not
decode ends the link only after every frame before it was handed out."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.api import relay

payloads = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.text(max_size=40), st.binary(max_size=300),
                     st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4))
frames_st = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**31), payloads), max_size=30)


async def _read_all(chunks: list[bytes]) -> tuple[list[list[object]], BaseException | None]:
    reader = asyncio.StreamReader(limit=relay.MAX_FRAME_BYTES)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    frames = relay._FrameReader(reader)
    out: list[list[object]] = []
    try:
        while True:
            out.append(await frames.next())
    except (asyncio.IncompleteReadError, ConnectionError, ValueError) as err:
        return out, err


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


@settings(max_examples=200, deadline=None)
@given(frames_st, st.lists(st.integers(0, 10_000), max_size=40))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_split(frames: list[tuple[int, int, object]],
                                                                       cuts: list[int]) -> None:
    data = b"".join(relay._frame(kind, sid, payload) for kind, sid, payload in frames)
    out, err = asyncio.run(_read_all(_chunked(data, cuts)))
    assert out == [list(f) for f in frames]
    assert isinstance(err, asyncio.IncompleteReadError) and err.partial == b""  # the link ended cleanly


@pytest.mark.parametrize("bad", ["oversize", "garbage", "torn"])
def test_a_bad_frame_ends_the_link_after_the_frames_before_it(bad: str) -> None:
    good = [relay._frame(relay.OPEN, 1, {"type": "http"}), relay._frame(relay.IN, 1, {"type": "http.request", "body": b"x"})]
    if bad == "oversize":
        tail = (relay.MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"\x90"
    elif bad == "garbage":
        tail = (3).to_bytes(4, "big") + b"\xc1\xc1\xc1"  # 0xc1 is never used in msgpack
    else:
        tail = relay._frame(relay.END, 1, None)[:-1]  # the link closed inside a frame
    after = relay._frame(relay.END, 1, None) if bad != "torn" else b""  # nothing comes after a torn frame
    out, err = asyncio.run(_read_all([b"".join(good) + tail + after]))
    assert out == [[relay.OPEN, 1, {"type": "http"}], [relay.IN, 1, {"type": "http.request", "body": b"x"}]]
    if bad == "oversize":
        assert isinstance(err, ConnectionError) and "over the limit" in str(err)
    elif bad == "garbage":
        assert isinstance(err, ValueError)
    else:
        assert isinstance(err, asyncio.IncompleteReadError) and err.partial == tail


@pytest.mark.parametrize("shape", [[1, 2], [1, 2, 3, 4], {"kind": 0}, "text", [b"\x00", 1, None], [0, "1", None]])
def test_a_frame_that_is_not_kind_stream_payload_ends_the_link_after_the_frames_before_it(shape: object) -> None:
    """A frame that decodes but is not `[int kind, int stream, payload]` is as bad as one that does not
    decode: before, the engine's link handler unpacked it and died with an unhandled TypeError."""
    good = relay._frame(relay.OPEN, 1, {"type": "http"})
    bad = relay._encode(shape)
    out, err = asyncio.run(_read_all([good + len(bad).to_bytes(4, "big") + bad + relay._frame(relay.END, 1, None)]))
    assert out == [[relay.OPEN, 1, {"type": "http"}]]
    assert isinstance(err, ValueError) and "not [kind, stream, payload]" in str(err)


@pytest.mark.parametrize("scope", [None, [1, 2], "http", {"no": "type"}, {"type": "lifespan"}])
def test_an_open_frame_without_an_http_or_websocket_scope_ends_only_its_link(tmp_path, scope: object) -> None:
    """The engine's side of a gateway link: an OPEN whose scope is not an ASGI http/websocket scope
    closes that link (no unhandled exception, no handler started); another link is still served."""
    async def app(scope, receive, send):  # a plain ASGI app: 200 "ok"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def go() -> tuple[bytes, list[object]]:
        engine = relay.EngineRelay(app, tmp_path / "run" / "engine.sock")
        await engine.start()
        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx.get("exception")))
        try:
            reader, writer = await asyncio.open_unix_connection(str(engine.path))
            writer.write(relay._frame(relay.OPEN, 1, scope))
            await writer.drain()
            closed = await asyncio.wait_for(reader.read(), 10)  # EOF: the engine ended this link
            reader2, writer2 = await asyncio.open_unix_connection(str(engine.path))
            writer2.write(relay._frame(relay.OPEN, 1, {"type": "http", "method": "GET", "path": "/", "headers": []}))
            writer2.write(relay._frame(relay.IN, 1, {"type": "http.request", "body": b"", "more_body": False}))
            await writer2.drain()
            frames = relay._FrameReader(reader2)
            kind, sid, answer = await asyncio.wait_for(frames.next(), 10)  # start and body in one ANSWER frame
            assert (kind, sid) == (relay.ANSWER, 1)
            writer.close()
            writer2.close()
            return closed, [*answer, *errors]
        finally:
            await engine.stop(grace=1)

    closed, seen = asyncio.run(go())
    assert closed == b""
    assert seen[0]["status"] == 200 and seen[1]["body"] == b"ok"
    assert seen[2:] == []


_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


def plain(value: object) -> object:
    """`value` with tuples as lists (msgpack gives lists for the headers' tuples)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize("sends, frames", [
    # the API's answers: a start and one last body, one ANSWER frame (it also ends the stream)
    ([_START, {"type": "http.response.body", "body": b"ok"}], [("ANSWER", [_START, {"type": "http.response.body", "body": b"ok"}])]),
    # a body in parts: the start goes first, as it did, then each part, then END
    ([_START, {"type": "http.response.body", "body": b"a", "more_body": True}, {"type": "http.response.body", "body": b"b"}],
     [("OUT", _START), ("OUT", {"type": "http.response.body", "body": b"a", "more_body": True}),
      ("OUT", {"type": "http.response.body", "body": b"b"}), ("END", None)]),
    # a start the app never followed with a body (it failed): the start, then END
    ([_START, "raise"], [("OUT", _START), ("END", None)]),
    # nothing sent at all: END
    (["raise"], [("END", None)]),
])
def test_an_http_answer_leaves_the_engine_in_order_and_whole(tmp_path, sends: list[object], frames: list[tuple[str, object]]) -> None:
    """The engine's side of a link (EngineRelay._run): what the app sends for one request, as frames on
    the link, in the order sent; a start with its last body is one ANSWER frame and no END follows."""
    names = {relay.OUT: "OUT", relay.END: "END", relay.ANSWER: "ANSWER"}

    async def app(scope, receive, send):
        await receive()
        for message in sends:
            if message == "raise":
                raise RuntimeError("the app failed")
            await send(dict(message))

    async def go() -> list[tuple[str, object]]:
        engine = relay.EngineRelay(app, tmp_path / "run" / "engine.sock")
        await engine.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(engine.path))
            writer.write(relay._frame(relay.OPEN, 7, {"type": "http", "method": "GET", "path": "/", "headers": []}))
            writer.write(relay._frame(relay.IN, 7, {"type": "http.request", "body": b"", "more_body": False}))
            await writer.drain()
            reader_frames = relay._FrameReader(reader)
            got: list[tuple[str, object]] = []
            while not got or got[-1][0] not in ("END", "ANSWER"):
                kind, sid, payload = await asyncio.wait_for(reader_frames.next(), 10)
                assert sid == 7
                got.append((names[kind], payload))
            writer.close()
            return got
        finally:
            await engine.stop(grace=1)

    assert plain(asyncio.run(go())) == plain(frames)


def test_the_gateway_hands_an_answer_frame_to_its_client_as_start_body_end() -> None:
    """The gateway's side (`_Link._pump`): an ANSWER frame is the start, the body and the end of that
    request's stream, as OUT, OUT and END were; another stream on the link is not touched."""
    async def go() -> tuple[list[object], list[object]]:
        reader = asyncio.StreamReader(limit=relay.MAX_FRAME_BYTES)
        here, there = socket.socketpair()
        _, writer = await asyncio.open_connection(sock=here)  # the link's way to the engine: nothing is sent here
        link = relay._Link(reader, writer)
        answered, other = relay._Outbound(), relay._Outbound()
        link.streams.update({3: answered, 4: other})
        reader.feed_data(relay._frame(relay.ANSWER, 3, [_START, {"type": "http.response.body", "body": b"x"}]))
        got = [await asyncio.wait_for(answered.get(), 10) for _ in range(3)]
        untouched = other.queue.empty()
        reader.feed_eof()
        await link.task
        writer.close()
        there.close()
        return got, [untouched]

    got, untouched = asyncio.run(go())
    assert plain(got) == plain([_START, {"type": "http.response.body", "body": b"x"}, None])
    assert untouched == [True]


@pytest.mark.parametrize("early, ok", [
    ([{"type": "http.request", "body": b"a=1", "more_body": False}], True),
    ([{"type": "http.request", "body": b"a=", "more_body": True}, {"type": "http.request", "body": b"1", "more_body": False}], True),
    ("not a list", False), ([["not", "a", "message"]], False),
])
def test_messages_sent_with_the_open_frame_reach_the_app_as_in_frames_would(tmp_path, early: object, ok: bool) -> None:
    """A gateway that has a request's first messages already (a signed request it read whole, a request
    without a body) sends them inside the OPEN frame's scope (relay.EARLY): the app receives them in order,
    as from IN frames, and the scope it sees does not carry them; anything else there ends the link."""
    seen: list[object] = []

    async def app(scope, receive, send):
        seen.append(relay.EARLY in scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def go() -> object:
        engine = relay.EngineRelay(app, tmp_path / "run" / "engine.sock")
        await engine.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(engine.path))
            writer.write(relay._frame(relay.OPEN, 5, {"type": "http", "method": "POST", "path": "/", "headers": [], relay.EARLY: early}))
            await writer.drain()
            frames = relay._FrameReader(reader)
            try:
                kind, sid, payload = await asyncio.wait_for(frames.next(), 10)
            except asyncio.IncompleteReadError:
                return "link closed"
            finally:
                writer.close()
            return kind, sid, payload[1]["body"]
        finally:
            await engine.stop(grace=1)

    got = asyncio.run(go())
    if ok:
        assert got == (relay.ANSWER, 5, b"a=1") and seen == [False]
    else:
        assert got == "link closed" and seen == []
