"""Fresh-eyes review of the sequencer's own NATS connection (`direct.DirectLink`, issue #21,
session 21): token URLs, credentials only to a server that asks for them, a hostile or confused
server (or anyone in between before TLS) answered with a DirectError, never a TypeError out of
`NatsLink.direct` nor a reply buffered up to the server's max_payload, and a connection the link
closed meanwhile never used. The hostile server below is the attacker, written here; the
connection's real work is tested against the real nats-server (test_direct_publish.py and here)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ringfence.app import new_node
from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import Follower, Replicator, parse_target
from ringfence.replication.direct import DirectError, DirectLink

from .conftest import attached_primary, key_of, peers_of
from .test_nats_tls import tls_nats  # noqa: F401 - the fixture


@contextmanager
def hostile(script: Callable[[socket.socket, list[bytes]], None]) -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection server on a free port that runs `script(conn, heard)`: (port, heard)."""
    server = socket.create_server(("127.0.0.1", 0))
    heard: list[bytes] = []

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            try:
                script(conn, heard)
            except OSError:
                pass  # the client hung up first
            time.sleep(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], heard
    finally:
        server.close()
        thread.join(5)


def _until(conn: socket.socket, marker: bytes) -> bytes:
    got = b""
    conn.settimeout(5)
    while marker not in got:
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _handshake(info: dict) -> Callable[[socket.socket, list[bytes]], bytes]:
    def script(conn: socket.socket, heard: list[bytes]) -> bytes:
        conn.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
        heard.append(_until(conn, b"PING\r\n"))
        conn.sendall(b"PONG\r\n")
        return heard[-1]
    return script


def test_a_token_url_publishes_on_the_direct_connection(tmp_path, nats_with_token):
    """`nats://TOKEN@host` is a token to NATS (nats-py sends it as auth_token): the direct connection
    sent it as a user name, was refused, and every batch went through the loop (a warning only)."""
    port, token = nats_with_token
    link = DirectLink(f"nats://{token}@127.0.0.1:{port}", inbox="_INBOX")
    link.connect()
    link.close()
    node = new_node(tmp_path / "a")
    node.open()
    replicator = Replicator(parse_target(f"nats://{token}@127.0.0.1:{port}/TK"), "a", key=key_of("a"))
    try:
        replicator.attach(node)
        assert replicator._direct is not None, "the token URL's node fell back to the loop"
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        assert replicator.published >= 1 and replicator.stream_seq == replicator._sent_seq
    finally:
        node.close()
        replicator.close()


def test_credentials_go_only_to_a_server_that_asks_for_them():
    """As nats-py: a server (or anyone in between, on nats://) whose INFO has no auth_required is not
    sent the password."""
    with hostile(_handshake({"server_id": "x", "max_payload": 1048576, "headers": True})) as (port, heard):
        link = DirectLink(f"nats://rf-node:s3cret-pw@127.0.0.1:{port}", inbox="_INBOX_rf-node")
        link.connect()
        link.close()
    assert b"CONNECT " in heard[0] and b"s3cret-pw" not in heard[0] and b"rf-node\"" not in heard[0], heard
    with hostile(_handshake({"server_id": "x", "auth_required": True, "headers": True})) as (port, heard):
        link = DirectLink(f"nats://rf-node:s3cret-pw@127.0.0.1:{port}", inbox="_INBOX_rf-node")
        link.connect()
        link.close()
    connect = json.loads(heard[0].split(b"\r\n")[0][len(b"CONNECT "):])
    assert connect["user"] == "rf-node" and connect["pass"] == "s3cret-pw" and "auth_token" not in connect


@pytest.mark.parametrize("info", [b"INFO []", b'INFO {"max_payload": "big"}', b'INFO {"max_payload": 1e300}',
                                  b'INFO {"max_payload": -5}', b"INFO {not json", b'INFO {"max_payload": [1]}',
                                  # nested past the interpreter's stack: a RecursionError out of `connect` (intruder
                                  # review of session 22: on a reconnection it stopped the node instead of handing
                                  # over to the link's path, `Replicator._direct_usable` catching OSError only)
                                  b'INFO {"a": ' + b"[" * 60_000])
def test_a_garbled_info_is_a_direct_error(info):
    def script(conn: socket.socket, heard: list[bytes]) -> None:
        conn.sendall(info + b"\r\n")
        heard.append(_until(conn, b"\r\n"))

    with hostile(script) as (port, _):
        link = DirectLink(f"nats://127.0.0.1:{port}", inbox="_INBOX", timeout_s=2)
        with pytest.raises(DirectError, match="INFO"):
            link.connect()
    assert link.sock is None


def test_a_reply_larger_than_any_ack_is_refused_before_its_body_is_read():
    """The server says max_payload 64 MiB; a message on the reply inbox of 900 KB is no JetStream ack:
    refused at its MSG line (it was buffered whole, up to max_payload + 64 KiB)."""
    def script(conn: socket.socket, heard: list[bytes]) -> None:
        _handshake({"max_payload": 64 * 1024 * 1024, "headers": True})(conn, heard)
        conn.sendall(b"MSG _INBOX.x.1 1 900000\r\n" + b"x" * 900_000 + b"\r\n")
        time.sleep(1)

    with hostile(script) as (port, _):
        link = DirectLink(f"nats://127.0.0.1:{port}", inbox="_INBOX", timeout_s=3)
        link.connect()
        with pytest.raises(DirectError, match="sizes"):
            link.reply(time.monotonic() + 3)
        link.close()


def test_a_connection_the_link_closed_while_it_was_being_opened_is_never_used():
    """`NatsLink._close_directs` (a partition, or the link's close) sets `dead`, then closes the socket:
    while the sequencer is inside `connect` past its first check there is no socket to close yet, and
    the connection came up and served batches anyway."""
    link = DirectLink("nats://127.0.0.1:1", inbox="_INBOX", timeout_s=3)

    def script(conn: socket.socket, heard: list[bytes]) -> None:
        link.dead = True  # and its `close()` found no socket: it ran before `connect` had one
        _handshake({"headers": True})(conn, heard)

    with hostile(script) as (port, _):
        link.port = port
        with pytest.raises(DirectError, match="closed"):
            link.connect()
    assert link.sock is None and link.connects == 0


def test_tls_the_direct_connection_verifies_like_the_link(tmp_path, tls_nats):  # noqa: F811
    """Over tls:// the direct connection is used, encrypted; without the CA, or under a name the
    certificate does not hold (localhost: the certificate is for 127.0.0.1), it is refused; to a
    server without TLS it never sends plain text."""
    import ssl

    port, ca = tls_nats
    target = parse_target(f"tls://127.0.0.1:{port}/RFTLS?tls_ca={ca}")
    node = new_node(tmp_path / "a")
    node.open()
    replicator = Replicator(target, "a", key=key_of("a"))
    try:
        replicator.attach(node)
        assert replicator._direct is not None and replicator._direct.encrypted
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        try:
            assert follower.poll() == 2
        finally:
            follower.close()
    finally:
        node.close()
        replicator.close()
    for url, ca_file in ((f"tls://127.0.0.1:{port}", ""), (f"tls://localhost:{port}", str(ca))):
        link = DirectLink(url, inbox="_INBOX", tls_ca=ca_file, timeout_s=3)
        with pytest.raises(ssl.SSLCertVerificationError):
            link.connect()

    def plain(conn: socket.socket, heard: list[bytes]) -> None:
        conn.sendall(b'INFO {"headers": true}\r\n')
        conn.settimeout(3)
        heard.append(conn.recv(65536))

    with hostile(plain) as (plain_port, heard):
        link = DirectLink(f"tls://127.0.0.1:{plain_port}", inbox="_INBOX", timeout_s=2)
        with pytest.raises(OSError):
            link.connect()
    assert heard and not heard[0].startswith(b"CONNECT"), heard  # a TLS ClientHello, never the CONNECT in clear


def test_a_direct_connection_that_cannot_be_opened_again_hands_over_to_the_link(tmp_path, stream):
    """The server this connection knows went away while the node was idle, and the link's nats-py
    client is up (in a NATS cluster it reconnects to the other servers; this connection knows only
    the URL's): the next batch went nowhere and the node stopped. Now the link's path serves it, and
    every later batch; a standby checks them all. (The server "gone": the connection's port pointed
    at one where nothing listens.)"""
    from api.conftest import free_port

    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer

    from journal.test_journal import seed_ledger

    from .conftest import NATS_URL, attached_primary, running

    node, replicator = attached_primary(tmp_path, stream, "?state_hash_every=3&state_digest=1")
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        direct = replicator._direct
        assert direct is not None
        direct.close()
        direct.port = free_port()
        for i in range(6):  # (every third batch carries the state hash inline: `finish` sends it)
            node.submit(CreateTransfers([Transfer(900 + i, world, alice, 1)])).result(10)
        assert replicator._direct is None and node.failed is None
        assert replicator.stream_seq == replicator._sent_seq and replicator._broken is None
        follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        try:
            follower.poll()
            assert follower.engine.last_seq == node.last_seq
            assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        finally:
            follower.close()


def test_a_partition_still_fails_the_batch_on_the_direct_path(tmp_path, stream):
    """The hand-over above is for a connection the server closed, never for a link that is closed."""
    from ringfence.errors import OutcomeUnknown
    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer

    from journal.test_journal import seed_ledger

    from .conftest import attached_primary, running

    node, replicator = attached_primary(tmp_path, stream, "?state_hash_every=2&state_digest=1")
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        replicator.link.disconnect()
        with pytest.raises(OutcomeUnknown):
            node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)
        assert node.failed is not None and replicator._direct is not None and replicator._direct.dead


@pytest.mark.parametrize("data", [b'{"error": "x"}', b'{"error": ["x"]}', b'{"error": 5}', b"[1]", b"not json",
                                  b'{"a": ' + b"[" * 60_000])
def test_a_garbled_ack_is_a_forged_one_that_fences_with_a_message(tmp_path, stream, data):
    """Intruder review of session 22: a reply `{"error": "x"}` on the ack inbox (a string where JetStream gives
    {"code", "err_code", "description"}) stopped the node with an AttributeError out of `Replicator._stored`;
    it is a reply the stream does not give: Fenced, naming the batch, as a forged ack is."""
    from ringfence.replication import Fenced
    from ringfence.replication.direct import Reply

    node, replicator = attached_primary(tmp_path, stream)
    try:
        with pytest.raises(Fenced, match="batch 7 is not one the stream gives"):
            replicator._stored(7, 3, Reply("_INBOX.x.1", data, None))
    finally:
        node.close()
        replicator.close()
