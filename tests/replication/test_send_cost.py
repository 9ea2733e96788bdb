"""The primary's per-batch CPU on the NATS thread, kept without weakening a check (issue #21, session 19).

Every message is still signed with the node's Ed25519 key (`FastSigner`: the same signatures, by
libsodium where the key's seed is readable) over the same bytes (`signed_bytes`, built as one
string). No NATS here: tests/replication/test_ack_path.py counts the loop iterations per batch
against the real JetStream.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

import ringfence.replication as replication
from ringfence.nodekey import verify
from ringfence.replication import FastSigner, signed_bytes

KEY = Ed25519PrivateKey.generate()
SIGNER = FastSigner(KEY)

_NAMES = st.sampled_from(["Rf-Kind", "Rf-Epoch", "Rf-Outcome", "Rf-Outcome-Of", "Rf-Outcome-Next", "Rf-State",
                          "Rf-State-Digest", "Rf-State-Digest-Of", "Rf-Sig", "Rf-Node", "Rf-Pos", "Nats-Msg-Id",
                          "Nats-Expected-Last-Sequence", "Rf-A", "Rf-A-B", "Rf-A_B", "rf-lower", "X-Rf-Other"])


def _signed_bytes_v1(stream: str, headers: dict[str, str], body: bytes) -> bytes:
    """The module docstring's definition, as session 18 wrote it (one encoded line per header)."""
    lines = [b"ringfence-replication-v1", b"stream=" + stream.encode()]
    lines += [f"{name}:{value}".encode() for name, value in sorted(headers.items())
              if name.startswith("Rf-") and name != "Rf-Sig"]
    lines.append(b"body-sha256=" + hashlib.sha256(body).hexdigest().encode())
    return b"\n".join(lines)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=12), st.dictionaries(_NAMES, st.text(max_size=40)), st.binary(max_size=300))
def test_the_signed_bytes_are_the_documented_ones(stream, headers, body):
    """Names sorted as names ("Rf-A" before "Rf-A-B", though ':' sorts after '-'), any text value."""
    try:
        expected = _signed_bytes_v1(stream, headers, body)
    except UnicodeEncodeError:  # a lone surrogate: not encodable either way
        return
    assert signed_bytes(stream, headers, body) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_the_fast_signer_gives_the_keys_own_signatures(data):
    assert SIGNER.used_libsodium
    signature = SIGNER.sign(data)
    assert signature == KEY.sign(data)  # Ed25519 is deterministic: the very same bytes
    assert verify(KEY.public_key(), signature, data)
    assert not verify(KEY.public_key(), signature, data + b"x")


def test_a_key_whose_seed_cannot_be_read_signs_itself():
    class Opaque:  # an HSM's key, say: it signs, its seed stays inside
        def sign(self, data: bytes) -> bytes:
            return KEY.sign(data)

        def private_bytes(self, *args: Any) -> bytes:
            raise TypeError("not exportable")

    class Other:  # a key whose seed does not give its signatures is not trusted to libsodium
        def sign(self, data: bytes) -> bytes:
            return KEY.sign(data)

        def private_bytes(self, *args: Any) -> bytes:
            return bytes(32)

    class Offline:  # an HSM that is not answering yet: the replicator still starts (review, session 19)
        def sign(self, data: bytes) -> bytes:
            raise ConnectionError("token not present")

        def private_bytes(self, *args: Any) -> bytes:
            return KEY.private_bytes_raw()

    offline = FastSigner(Offline())
    assert not offline.used_libsodium
    for key in (Opaque(), Other()):
        signer = FastSigner(key)
        assert not signer.used_libsodium
        assert signer.sign(b"batch") == KEY.sign(b"batch")


def test_the_replicator_signs_with_the_fast_signer():
    replicator = object.__new__(replication.Replicator)  # no link: only `_sign`'s own work
    replicator.key, replicator._signer = KEY, FastSigner(KEY)
    replicator.node_id, replicator._session = "a", "0123456789abcdef"
    replicator.target = replication.parse_target("nats://127.0.0.1:4222/S")
    headers = {"Rf-Kind": "batch", "Rf-Epoch": "3"}
    replicator._sign(headers, b"payload", 7)
    assert headers["Rf-Pos"] == "7" and headers["Rf-Node"] == "a"
    assert verify(KEY.public_key(), bytes.fromhex(headers["Rf-Sig"]), signed_bytes("S", headers, b"payload"))
