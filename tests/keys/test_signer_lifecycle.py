"""Key lifecycle with real signer processes over pinned mutual TLS (issue 16, item 5): a refresh
keeps the public key, a reshare replaces a signer without changing the key (so no funds move), a
lost share leaves a quorum that still signs, and a signer killed in the middle of a signature
refuses its consumed nonce after the restart while the signature completes on retry."""

from __future__ import annotations

import httpx
import pytest

from ringfence.custody.btc_signing import SignerFleet
from ringfence.errors import SignerUnavailable, ValidationError
from ringfence.keys.coordinator import ThresholdCoordinator
from ringfence.keys.interface import Scheme, SigningRequest

SUITE = "FROST(secp256k1, SHA-256)"


@pytest.fixture()
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGFENCE_SIGNER_CRASH_ONCE", str(tmp_path / "crash-now"))
    f = SignerFleet(tmp_path / "signers")
    f.start()
    yield f
    f.stop()


def _req(key_id: str, rid: str, digest: bytes = bytes(range(32))) -> SigningRequest:
    return SigningRequest(rid, key_id, digest, Scheme.TAPROOT_KEYPATH, "test", "lifecycle test")


def _share_file(fleet: SignerFleet, i: int, key_id: str) -> bytes:
    return (fleet.store_dir(i) / "shares" / f"{key_id}.bin").read_bytes()


def test_refresh_reshare_and_lost_share(fleet: SignerFleet) -> None:
    coord = ThresholdCoordinator(fleet.urls, fleet.token, tls=fleet.tls())
    try:
        pub = coord.create_key("k-life", SUITE, 2, [1, 2, 3]).raw["group_public_key"]
        out_key = coord.public_key("k-life", Scheme.TAPROOT_KEYPATH)
        before = {i: _share_file(fleet, i, "k-life") for i in (1, 2, 3)}
        # refresh: same key, every share replaced
        assert coord.refresh("k-life").raw["group_public_key"] == pub
        assert all(_share_file(fleet, i, "k-life") != before[i] for i in (1, 2, 3))
        assert coord.sign(_req("k-life", "after-refresh"), [2, 3]).public_key == out_key
        # reshare: signer 3 is replaced by a new signer 4; the key (and so the address) stays
        url4 = fleet.start_one(4)
        fleet.wait_ready(ids=[4])
        coord.tls.add({4: fleet.store_dir(4) / "tls.crt"})
        # the signers pin each other: the dealers seal shares to signer 4 only once they pin it
        fleet.pin_peers({i: fleet.store_dir(i) / "tls.crt" for i in (1, 2, 3, 4)})
        # the signer being removed may not deal, whoever calls: refused before any signer is asked
        shares = {i: _share_file(fleet, i, "k-life") for i in (1, 2, 3)}
        with pytest.raises(ValidationError, match="removed signer cannot be in the re-dealing quorum: 3") as refused:
            coord.reshare("k-life", [1, 3], {1: fleet.urls[1], 2: fleet.urls[2], 4: url4}, 2, "replace signer 3")
        assert refused.value.field == "quorum"
        assert {i: _share_file(fleet, i, "k-life") for i in (1, 2, 3)} == shares
        assert not (fleet.store_dir(4) / "shares" / "k-life.bin").exists()
        new = coord.reshare("k-life", [1, 2], {1: fleet.urls[1], 2: fleet.urls[2], 4: url4}, 2, "replace signer 3")
        assert new.raw["group_public_key"] == pub and sorted(new.kp.verifying_shares) == [1, 2, 4]
        assert not (fleet.store_dir(3) / "shares" / "k-life.bin").exists(), "the replaced signer's share is deleted"
        sig = coord.sign(_req("k-life", "after-reshare"), [1, 4])
        assert sig.public_key == out_key and sig.signers == ("frost:1", "frost:4")
        # a lost share: signer 1's machine is gone; the other two are a quorum and sign
        fleet.stop_one(1)
        sig = coord.sign(_req("k-life", "after-loss"))
        assert sig.signers == ("frost:2", "frost:4") and sig.public_key == out_key
        with pytest.raises(SignerUnavailable):
            coord.sign(_req("k-life", "needs-1"), [1, 2])
    finally:
        coord.close()


def test_signer_killed_mid_signature_refuses_the_nonce_and_the_retry_completes(fleet: SignerFleet, tmp_path) -> None:
    coord = ThresholdCoordinator(fleet.urls, fleet.token, tls=fleet.tls())
    try:
        coord.create_key("k-crash", SUITE, 2, [1, 2, 3])
        req = _req("k-crash", "w-crash")
        # the coordinator's round, step by step: commitments from 1 and 2, then signer 2 signs ...
        c = {i: coord._post(i, "/v1/commit", {"key_id": "k-crash", "count": 1})["commitments"][0] for i in (1, 2)}
        body = {"key_id": "k-crash", "scheme": req.scheme.value, "message": req.digest.hex(),
                "commitments": [c[1]["commitments"], c[2]["commitments"]], "request_id": req.request_id, "approval": None}
        (tmp_path / "crash-now").write_text("1")
        pid = fleet.procs[2].pid
        # ... and dies after consuming its nonce, before its share exists
        with pytest.raises(SignerUnavailable):
            coord._post(2, "/v1/sign", {**body, "nonce_id": c[2]["nonce_id"]})
        assert fleet.procs[2].wait(10) == -9 and not (tmp_path / "crash-now").exists()
        port = int(fleet.urls[2].rsplit(":", 1)[1])
        fleet.stop_one(2)
        fleet.start_one(2, port)  # restart: same store, same port
        fleet.wait_ready(ids=[2])
        assert fleet.procs[2].pid != pid
        coord._clients.pop(2).close()  # the old connection died with the process
        # the consumed nonce is refused after the restart: no nonce is ever used twice
        r = httpx.post(fleet.urls[2] + "/v1/sign", json={**body, "nonce_id": c[2]["nonce_id"]},
                       headers={"Authorization": f"Bearer {fleet.token}"}, verify=fleet.tls().context(2), timeout=10)
        assert r.status_code == 409 and r.json()["code"] == "RF_NONCE_REUSED", r.text
        # the retry (fresh commitments) completes with the same quorum and verifies
        sig = coord.sign(req, [1, 2])
        assert sig.signers == ("frost:1", "frost:2") and len(sig.signature) == 64
    finally:
        coord.close()


def test_a_signer_whose_free_port_was_taken_before_it_bound_starts_on_another(tmp_path, monkeypatch):
    """'Pick a free port, then start the process on it' is a race: another process may bind it in
    between (it happened in a full test run). The fleet starts that signer again on a new port."""
    import socket

    import ringfence.custody.btc_signing as signing

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real, handed = signing._free_port, []

    def first_one_taken() -> int:
        port = taken if not handed else real()
        handed.append(port)
        return port

    monkeypatch.setattr(signing, "_free_port", first_one_taken)
    f = SignerFleet(tmp_path / "signers")
    try:
        urls = f.start()
        assert handed[0] == taken and all(f":{taken}" not in u for u in urls.values()), (handed, urls)
        assert b"address already in use" in (tmp_path / "signers" / "signer-1.log").read_bytes().lower()
        assert all(httpx.get(u + "/health", timeout=5, verify=f.tls().context(i)).status_code == 200 for i, u in urls.items())
    finally:
        f.stop()
        squatter.close()
