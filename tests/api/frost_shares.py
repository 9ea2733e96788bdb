"""Test helper: what an attacker (or an auditor) who opened share stores of the BTC hot wallet's
signers could compute. It reads `DIR/signers/signer-N` with the demo passphrase beside it."""

from __future__ import annotations

from pathlib import Path

import coincurve

from ringfence.keys import frost
from ringfence.keys.share_store import EncryptedShareStore
from ringfence.keys.interface import Scheme, Signature, SigningRequest


def share(data: Path, i: int, key_id: str = "btc-hot") -> frost.ThresholdKeyPackage:
    root = data / "signers"
    passphrase = (root / f"signer-{i}.passphrase").read_text().strip()
    return EncryptedShareStore(root / f"signer-{i}", passphrase).get(key_id)


def combined_secrets(data: Path, ids: tuple[int, ...] = (1, 2)) -> tuple[int, int]:
    """(group secret, Taproot-tweaked output secret) from `ids`' shares: the whole key that no
    process of the exchange may hold. Checked against the recorded group key; re-read while a
    scheduled refresh is between two signers' share files."""
    import json
    import time

    want = json.loads((data / "custody" / "btc-hot.json").read_text())["group_public_key"]
    deadline = time.monotonic() + 30
    while True:
        got = _combine(data, ids)
        if coincurve.PrivateKey(got[0].to_bytes(32, "big")).public_key.format().hex() == want:
            return got
        assert time.monotonic() < deadline, "the shares never combined to the recorded group key"
        time.sleep(0.05)


def _combine(data: Path, ids: tuple[int, ...]) -> tuple[int, int]:
    kps = [share(data, i) for i in ids]
    cs = kps[0].suite
    n = cs.group.order
    plain = sum(frost.derive_interpolating_value(cs, list(ids), kp.identifier) * kp.secret_share for kp in kps) % n
    tweaked_kps = [frost.bip340_key_package(kp, taproot_tweak=True) for kp in kps]
    tweaked = sum(frost.derive_interpolating_value(cs, list(ids), kp.identifier) * kp.secret_share for kp in tweaked_kps) % n
    return plain, tweaked


class StolenTaprootKey:
    """A single-key Taproot signer made from two stolen shares (the theft scenario)."""

    taproot = True

    def __init__(self, data: Path) -> None:
        self._key = coincurve.PrivateKey(combined_secrets(data)[1].to_bytes(32, "big"))
        self.output_key = self._key.public_key_xonly.format()

    def public_key(self, key_id: str, scheme: Scheme = Scheme.TAPROOT_KEYPATH) -> bytes:
        return self.output_key

    def sign(self, request: SigningRequest) -> Signature:
        return Signature(request.key_id, request.scheme, self._key.sign_schnorr(request.digest), self.output_key, ("thief",))
