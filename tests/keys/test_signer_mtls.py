"""Signer transport with pinned keys (issue 16, item 4): coordinator and signers authenticate each
other with TLS 1.3 and pinned Ed25519 certificates. A man in the middle with its own key is refused
in both directions, for a DKG and for a signature: the coordinator refuses its certificate (nothing
reaches the signer), and the signer refuses it as a client, even when it holds the bearer token."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from ringfence.custody.btc_signing import SignerFleet
from ringfence.errors import SignerUnavailable
from ringfence.keys.coordinator import ThresholdCoordinator
from ringfence.keys.interface import Scheme, SigningRequest
from ringfence.keys.tls import ClientTLS, ensure_identity, fingerprint

SUITE = "FROST(secp256k1, SHA-256)"


class Mitm:
    """A TLS-terminating proxy with its own Ed25519 certificate in front of one signer: it presents
    its own certificate downstream and its own client certificate upstream, and relays bytes."""

    def __init__(self, root: Path, upstream: tuple[str, int], upstream_cert: Path) -> None:
        self.me = ensure_identity(root / "mallory", "mallory", "mallory-passphrase")
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(str(self.me.cert), str(self.me.key), password=self.me.password)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.check_hostname = False
        self.client_ctx.load_verify_locations(str(upstream_cert))  # mallory may well know the signer's cert
        self.client_ctx.load_cert_chain(str(self.me.cert), str(self.me.key), password=self.me.password)
        self.upstream = upstream
        self.events: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            down = self.server_ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.events.append(f"downstream refused: {exc.__class__.__name__}")
            raw.close()
            return
        self.events.append("downstream accepted")
        try:
            up = self.client_ctx.wrap_socket(socket.create_connection(self.upstream), server_hostname="127.0.0.1")
            data = down.recv(65536)
            up.sendall(data)
            answer = up.recv(65536)  # TLS 1.3: a refused client certificate shows up on the first read
            if not answer:
                raise ConnectionError("closed")
            self.events.append("relayed")
            down.sendall(answer)
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            self.events.append(f"upstream refused: {exc.__class__.__name__}")
        finally:
            down.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = SignerFleet(tmp_path_factory.mktemp("mtls") / "signers")
    f.start()
    yield f
    f.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _req(rid: str) -> SigningRequest:
    return SigningRequest(rid, "k-mtls", bytes(range(32)), Scheme.TAPROOT_KEYPATH, "test", "mtls test")


def test_pinned_mutual_tls_dkg_and_signing_work(fleet: SignerFleet) -> None:
    coord = ThresholdCoordinator(fleet.urls, fleet.token, tls=fleet.tls())
    try:
        coord.create_key("k-mtls", SUITE, 2, [1, 2, 3])
        sig = coord.sign(_req("ok-1"), [1, 2])
        assert len(sig.signature) == 64 and sig.signers == ("frost:1", "frost:2")
    finally:
        coord.close()
    assert all(u.startswith("https://") for u in fleet.urls.values())
    fps = {fingerprint(fleet.store_dir(i) / "tls.crt") for i in (1, 2, 3)} | {fingerprint(fleet.identity.cert)}
    assert len(fps) == 4, "every party has its own key"


def test_coordinator_refuses_a_man_in_the_middle_for_dkg_and_signing(fleet: SignerFleet, tmp_path) -> None:
    mitm = Mitm(tmp_path, ("127.0.0.1", _port(fleet.urls[2])), fleet.store_dir(2) / "tls.crt")
    urls = {**fleet.urls, 2: mitm.url}
    coord = ThresholdCoordinator(urls, fleet.token, tls=fleet.tls())  # pins signer 2's real certificate
    try:
        with pytest.raises(SignerUnavailable, match="signer 2 unreachable.*TLS authentication failed"):
            coord.create_key("k-mitm-dkg", SUITE, 2, [1, 2, 3])
        with pytest.raises(SignerUnavailable, match="signer 2 unreachable.*TLS authentication failed"):
            coord.sign(_req("mitm-1"), [1, 2])
        # without a fixed quorum the coordinator goes round the intercepted signer: 1 and 3 sign
        assert coord.sign(_req("mitm-2")).signers == ("frost:1", "frost:3")
    finally:
        coord.close()
        mitm.close()
    assert mitm.events and all(e.startswith("downstream refused") for e in mitm.events), mitm.events
    for i in (1, 2, 3):
        assert not (fleet.store_dir(i) / "shares" / "k-mitm-dkg.bin").exists(), "a DKG through a MITM stored nothing"


def test_signer_refuses_a_man_in_the_middle_as_client_for_dkg_and_signing(fleet: SignerFleet, tmp_path) -> None:
    """Mallory knows the URLs, the signers' certificates and even the bearer token, but has her own key."""
    mallory = ensure_identity(tmp_path / "mallory-coord", "mallory", "mallory-passphrase")
    pins = {i: fleet.store_dir(i) / "tls.crt" for i in (1, 2, 3)}
    coord = ThresholdCoordinator(fleet.urls, fleet.token, tls=ClientTLS(mallory, pins))
    try:
        # TLS 1.3: the server checks the client certificate after the client finished its side, so
        # mallory sees an alert or a closed connection, depending on timing
        with pytest.raises(SignerUnavailable, match="unreachable"):
            coord.create_key("k-mallory", SUITE, 2, [1, 2, 3])
        with pytest.raises(SignerUnavailable, match="unreachable"):
            coord.sign(_req("mallory-1"), [1, 2])
    finally:
        coord.close()
    # and as a relay: a client that trusts anything, through the proxy, still does not reach signer 2
    import httpx

    mitm = Mitm(tmp_path, ("127.0.0.1", _port(fleet.urls[2])), fleet.store_dir(2) / "tls.crt")
    try:
        with pytest.raises(httpx.HTTPError):
            httpx.post(mitm.url + "/v1/commit", json={"key_id": "k-mtls", "count": 1},
                       headers={"Authorization": f"Bearer {fleet.token}"}, verify=False, timeout=5)
    finally:
        mitm.close()
    assert "downstream accepted" in mitm.events and any(e.startswith("upstream refused") for e in mitm.events), mitm.events
    assert "relayed" not in mitm.events
    for i in (1, 2, 3):
        assert not (fleet.store_dir(i) / "shares" / "k-mallory.bin").exists()
        assert "mallory" not in (fleet.store_dir(i) / "keyops.jsonl").read_text(), "no request of mallory's was served"


class SubstitutingCoordinator(ThresholdCoordinator):
    """A malicious coordinator: it hands the other signers its own X25519 key as signer 2's transport
    key, so that it could open the shares they seal to signer 2 (the man in the middle of a DKG)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        from ringfence.keys import transport

        self.mine = transport.new_transport_key()
        self.mine_hex = transport.public_bytes(self.mine).hex()

    def _transport(self, ids):
        keys, proofs = super()._transport(ids)
        if "2" in keys:
            keys["2"] = self.mine_hex
        return keys, proofs


def test_signers_pin_each_other_a_substituted_transport_key_or_an_unpinned_signer_is_refused(fleet: SignerFleet) -> None:
    """Signers pin each other (STORE/peers/signer-N.crt): each seals round-two shares only to a transport key
    signed by a peer certificate it pinned. A coordinator that swaps signer 2's key for its own is refused by
    the others before any share leaves; a signer whose certificate no peer pinned (a fourth signer started
    without pins) is refused by every pinned signer, naming it; once pinned, the same DKG succeeds."""
    from ringfence.errors import CeremonyFailed

    evil = SubstitutingCoordinator(fleet.urls, fleet.token, tls=fleet.tls())
    try:
        with pytest.raises(CeremonyFailed, match="signer 2's transport key is not signed by its pinned certificate"):
            evil.create_key("k-swap", SUITE, 2, [1, 2, 3])
    finally:
        evil.close()
    for i in (1, 2, 3):
        assert not (fleet.store_dir(i) / "shares" / "k-swap.bin").exists()

    fleet.start_one(4)  # its own certificate; no peer pins it, and it pins nobody
    fleet.wait_ready(60, ids=[4])
    coord = ThresholdCoordinator(fleet.urls, fleet.token, tls=fleet.tls())
    try:
        with pytest.raises(CeremonyFailed, match="signer 4 is not pinned by signer 1") as refused:
            coord.create_key("k-unpinned", SUITE, 2, [1, 4])
        assert refused.value.details["culprit"] == 4
        assert not any((fleet.store_dir(i) / "shares" / "k-unpinned.bin").exists() for i in (1, 4))
        fleet.pin_peers({i: fleet.store_dir(i) / "tls.crt" for i in (1, 2, 3, 4)})
        coord.create_key("k-pinned", SUITE, 2, [1, 4])
        assert coord.sign(SigningRequest("pinned-1", "k-pinned", bytes(32), Scheme.TAPROOT_KEYPATH, "t", "t"),
                          [1, 4]).signers == ("frost:1", "frost:4")
    finally:
        coord.close()
        fleet.stop_one(4)


def test_each_signer_holds_its_port_on_both_loopbacks_and_signs_over_either(fleet: SignerFleet) -> None:
    """A signer on 127.0.0.1 also holds [::1] (listening.py; issue #21): no other socket gets [::1]:PORT, where a
    coordinator configured with https://localhost:PORT may connect, and the signer answers there too."""
    import errno

    urls = {i: fleet.urls[i] for i in (1, 2, 3)}  # (signer 4 of the test above is stopped)
    for url in urls.values():
        for reuse in (0, 1):
            with socket.socket(socket.AF_INET6) as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
                with pytest.raises(OSError) as refused:
                    other.bind(("::1", _port(url)))
                assert refused.value.errno == errno.EADDRINUSE
    coord = ThresholdCoordinator({i: f"https://[::1]:{_port(u)}" for i, u in urls.items()}, fleet.token,
                                 tls=fleet.tls())
    try:
        coord.create_key("k-mtls-v6", SUITE, 2, [1, 2, 3])
        assert coord.sign(_req("v6-1"), [2, 3]).signers == ("frost:2", "frost:3")
    finally:
        coord.close()


def test_signer_run_refuses_a_taken_twin_and_creates_nothing(tmp_path) -> None:
    """`ringfence signer run --host 0.0.0.0` holds [::] too; another socket there refuses the start by name (exit 2),
    before the share store is made."""
    import os
    import subprocess
    import sys

    with socket.socket(socket.AF_INET6) as theirs:
        theirs.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        theirs.bind(("::", 0))
        theirs.listen()
        port = theirs.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "ringfence.cli", "signer", "run", "--store", str(tmp_path / "s1"),
                              "--identifier", "1", "--port", str(port), "--host", "0.0.0.0", "--create"],
                             capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, RINGFENCE_SIGNER_PASSPHRASE="p" * 16, RINGFENCE_SIGNER_TOKEN="t" * 32))
    assert out.returncode == 2, out.stdout + out.stderr
    assert (f"error: --host 0.0.0.0 --port {port}: cannot listen on [::]:{port} (IPv6 wildcard, every IPv6 address of "
            f"this machine; --host 0.0.0.0 holds it too): Address already in use; held by [::]:{port} of user ") in out.stderr, out.stderr
    assert not (tmp_path / "s1").exists()
