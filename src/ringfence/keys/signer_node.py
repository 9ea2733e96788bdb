"""One FROST participant: its encrypted share store, its nonce store, and the protocol steps it
answers (commit, sign, DKG, refresh, reshare, backup). Transport-agnostic; `signer_server.py`
puts it behind HTTP on 127.0.0.1.

Invariants:
- The node never returns or logs its secret share or nonces; round-two DKG/refresh/reshare shares
  leave it only sealed to the recipient's X25519 transport key (`transport.seal`).
- A signature share is computed only after its nonce was durably consumed (`NonceStore.consume`).
- If the node was started with a policy public key, it signs only digests with a valid
  policy-approval attestation for the same key and digest.
- Signers pin each other (`pin_peers`): the node signs its transport key with its TLS identity key,
  and before it seals a round-two share to another participant it checks that participant's
  transport key against its own pin of that participant's certificate (`PEERS/signer-N.crt`). An
  unpinned participant, or a key the pinned certificate did not sign, aborts the ceremony
  (`RF_CEREMONY_FAILED`) before any share leaves: a coordinator cannot put a key of its own in the
  middle of a DKG, refresh or reshare.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography.exceptions import InvalidTag

from ..errors import ValidationError
from . import dkg, frost, transport
from .attestation import ApprovalAttestation, verify_attestation
from .frost import CIPHERSUITES, SigningCommitments, ThresholdKeyPackage
from .interface import KEY_ID_PATTERN, MAX_MESSAGE_BYTES, Scheme
from .keylog import KeyOperationLog
from .nonce_store import NonceStore
from .share_store import EncryptedShareStore

__all__ = ["SignerNode", "scheme_key_package", "SCHEME_SUITES", "MAX_PENDING_CEREMONIES"]

MAX_PENDING_CEREMONIES = 16  # in-flight DKG/refresh rounds per signer; more is an operator error or abuse

SCHEME_SUITES = {
    Scheme.FROST_SECP256K1: frost.FROST_SECP256K1_SHA256.name,
    Scheme.BIP340: frost.FROST_SECP256K1_SHA256.name,
    Scheme.TAPROOT_KEYPATH: frost.FROST_SECP256K1_SHA256.name,
    Scheme.FROST_ED25519: frost.FROST_ED25519_SHA512.name,
}


def scheme_key_package(kp: ThresholdKeyPackage, scheme: Scheme) -> ThresholdKeyPackage:
    """The key package a scheme signs with (BIP-340 even-Y, or Taproot-tweaked)."""
    if SCHEME_SUITES.get(scheme) != kp.ciphersuite:
        raise ValidationError(f"scheme {scheme.value} does not fit a {kp.ciphersuite} key", field="scheme")
    if scheme is Scheme.BIP340:
        return frost.bip340_key_package(kp)
    if scheme is Scheme.TAPROOT_KEYPATH:
        return frost.bip340_key_package(kp, taproot_tweak=True)
    return kp


def _key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
        raise ValidationError("must match [a-z0-9][a-z0-9._:-]{0,63}", field="key_id")
    return key_id


def _crash_once_hook() -> None:
    """Test hook: with RINGFENCE_SIGNER_CRASH_ONCE=PATH and that file present, delete it and die
    (SIGKILL) right after the nonce was consumed and before the share is computed: a crash in the
    middle of a signature. Without the variable nothing happens."""
    flag = os.environ.get("RINGFENCE_SIGNER_CRASH_ONCE")
    if flag and os.path.exists(flag):
        os.unlink(flag)
        os.kill(os.getpid(), signal.SIGKILL)


class SignerNode:
    def __init__(self, store: EncryptedShareStore, identifier: int, *, name: str,
                 policy_public_key: bytes | None = None, log: KeyOperationLog | None = None) -> None:
        if not 1 <= identifier <= frost.MAX_PARTICIPANTS:
            raise ValidationError("must be 1..255", field="identifier")
        self.store = store
        self.identifier = identifier
        self.name = name
        self.policy_public_key = policy_public_key
        self.nonces = NonceStore(store.root / "nonces.sqlite", store)
        self.log = log or KeyOperationLog(store.root / "keyops.jsonl")
        self._transport = store.transport_key()
        self._pending: dict[tuple[str, str], Any] = {}  # (ceremony, key_id) -> in-flight protocol state
        self._cache: dict[tuple[str, Scheme], ThresholdKeyPackage] = {}
        self._lock = threading.Lock()
        self._identity_key: Any = None  # Ed25519 (the TLS key): signs our transport key
        self._peers_dir: Path | None = None  # pinned certificates of the other signers

    def pin_peers(self, identity_key: Any, peers_dir: Path | None) -> None:
        """Sign our transport key with `identity_key`; with `peers_dir`, seal shares only to pinned peers."""
        self._identity_key = identity_key
        self._peers_dir = Path(peers_dir) if peers_dir is not None else None

    @staticmethod
    def transport_statement(identifier: int, transport_key_hex: str) -> bytes:
        return f"ringfence-signer-transport-v1|{identifier}|{transport_key_hex}".encode()

    def check_peers(self, transport_keys: Mapping[int, str], proofs: Mapping[int, str]) -> None:
        """Every other participant is pinned here and its transport key is signed by its pinned certificate;
        our own entry is our key. Raises `CeremonyFailed` naming the participant; without peer pins, nothing."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from ..errors import CeremonyFailed
        from .tls import certificate_key

        own = transport.public_bytes(self._transport).hex()
        if str(transport_keys.get(self.identifier, own)) != own:
            raise CeremonyFailed(f"the transport key given for this signer ({self.identifier}) is not its own",
                                 field="transport_keys")
        if self._peers_dir is None:
            return
        for j, key_hex in sorted(transport_keys.items()):
            if j == self.identifier:
                continue
            pin = self._peers_dir / f"signer-{j}.crt"
            if not pin.is_file():
                raise CeremonyFailed(f"signer {j} is not pinned by signer {self.identifier} (no {pin.name}): "
                                     "refused to seal a share to it", field="transport_keys", culprit=j)
            try:
                Ed25519PublicKey.from_public_bytes(certificate_key(pin)).verify(
                    bytes.fromhex(proofs.get(j, "")), self.transport_statement(j, str(key_hex)))
            except (InvalidSignature, ValueError):
                raise CeremonyFailed(f"signer {j}'s transport key is not signed by its pinned certificate",
                                     field="transport_keys", culprit=j) from None

    def close(self) -> None:
        self.nonces.close()

    # ------------------------------------------------------------------------- identity, keys
    def identity(self) -> dict[str, Any]:
        key_hex = transport.public_bytes(self._transport).hex()
        out = {"identifier": self.identifier, "name": self.name, "transport_public_key": key_hex, "keys": self.store.key_ids()}
        if self._identity_key is not None:
            out["transport_key_proof"] = self._identity_key.sign(self.transport_statement(self.identifier, key_hex)).hex()
        return out

    def public_package(self, key_id: str) -> dict[str, Any]:
        return self.store.get(_key_id(key_id)).public_dict()

    def _kp(self, key_id: str, scheme: Scheme) -> ThresholdKeyPackage:
        with self._lock:
            hit = self._cache.get((key_id, scheme))
        if hit is None:
            hit = scheme_key_package(self.store.get(key_id), scheme)
            with self._lock:
                self._cache[(key_id, scheme)] = hit
        return hit

    def _replace_share(self, key_id: str, kp: ThresholdKeyPackage, why: str, actor: str) -> None:
        self.store.put(key_id, kp)
        burned = self.nonces.discard_open(key_id)
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key_id}
        self.log.append(actor=actor, action=why, key_id=key_id, reason=f"share stored; {burned} stale nonces burned",
                        signer=self.name)

    # ------------------------------------------------------------------------------- signing
    def commit(self, key_id: str, count: int) -> list[dict[str, Any]]:
        kp = self.store.get(_key_id(key_id))
        return [{"nonce_id": nid, "commitments": c.to_dict(kp.suite)} for nid, c in self.nonces.create(key_id, kp, count)]

    def sign(self, *, key_id: str, scheme: str, message: bytes, nonce_id: str,
             commitments: Sequence[Mapping[str, Any]], approval: Mapping[str, Any] | None,
             request_id: str, now_ms: int | None = None) -> dict[str, Any]:
        key_id = _key_id(key_id)
        try:
            sch = Scheme(scheme)
        except ValueError:
            raise ValidationError(f"must be one of {[s.value for s in SCHEME_SUITES]}", field="scheme") from None
        if not 1 <= len(message) <= MAX_MESSAGE_BYTES:
            raise ValidationError(f"must be 1-{MAX_MESSAGE_BYTES} bytes", field="message")
        if len(commitments) > frost.MAX_PARTICIPANTS:
            raise ValidationError("too many commitments", field="commitments")
        if self.policy_public_key is not None:
            att = ApprovalAttestation.from_dict(approval) if approval is not None else None
            verify_attestation(att, self.policy_public_key, key_id=key_id, digest=message,
                               now_ms=int(time.time() * 1000) if now_ms is None else now_ms)
        kp = self._kp(key_id, sch)
        comms = [SigningCommitments.from_dict(kp.suite, c) for c in commitments]
        nonces = self.nonces.consume(key_id, nonce_id)  # durable before any share exists
        _crash_once_hook()
        z = frost.sign_share(kp, nonces, message, comms)
        self.log.append(actor=self.name, action="sign_share", key_id=key_id, reason=f"request {request_id}",
                        scheme=sch.value, signers=[c.identifier for c in comms])
        return {"identifier": self.identifier, "sig_share": kp.suite.group.serialize_scalar(z).hex()}

    # ----------------------------------------------------------------------------------- DKG
    def _start_ceremony(self, slot: tuple[str, str], state: Any) -> None:
        with self._lock:
            if slot not in self._pending and len(self._pending) >= MAX_PENDING_CEREMONIES:
                raise ValidationError(f"at most {MAX_PENDING_CEREMONIES} ceremonies may be in flight", field="key_id")
            self._pending[slot] = state  # restarting a ceremony for the same key discards the old round

    @staticmethod
    def _transcript(packages: Sequence[Mapping[str, Any]]) -> str:
        """Hash of the round-one broadcast as this participant saw it. It is bound into every sealed
        round-two share, so if the coordinator showed participants different round-one packages
        (equivocation), the shares fail to open and the ceremony aborts."""
        canon = sorted((json.dumps(dict(p), sort_keys=True) for p in packages))
        return hashlib.sha256("\n".join(canon).encode()).hexdigest()

    def _aad(self, ceremony: str, key_id: str, sender: int, recipient: int, transcript: str = "") -> bytes:
        return f"{ceremony}:{key_id}:{sender}->{recipient}:{transcript}".encode()

    def _seal_all(self, ceremony: str, key_id: str, shares: Mapping[int, int], transport_keys: Mapping[int, str],
                  cs: frost.Ciphersuite, transcript: str = "") -> dict[str, str]:
        return {str(j): transport.seal(bytes.fromhex(transport_keys[j]), cs.group.serialize_scalar(s),
                                       self._aad(ceremony, key_id, self.identifier, j, transcript)).hex()
                for j, s in shares.items()}

    def _open_all(self, ceremony: str, key_id: str, sealed: Mapping[str, str], cs: frost.Ciphersuite,
                  transcript: str = "") -> dict[int, int]:
        out = {}
        for i, blob in sealed.items():
            try:
                raw = transport.open_sealed(self._transport, bytes.fromhex(blob),
                                            self._aad(ceremony, key_id, int(i), self.identifier, transcript))
            except InvalidTag:
                raise dkg.DkgError("sealed share does not open: wrong recipient, tampered, or participants saw "
                                   "different round-one broadcasts", int(i)) from None
            out[int(i)] = cs.group.deserialize_scalar(raw)
        return out

    def dkg_round1(self, key_id: str, ciphersuite: str, threshold: int, participants: Sequence[int],
                   transport_keys: Mapping[int, str], proofs: Mapping[int, str] | None = None) -> dict[str, Any]:
        key_id = _key_id(key_id)
        self.check_peers(transport_keys, proofs or {})
        if self.store.has(key_id):
            raise ValidationError("a key with this id already exists in this store", field="key_id")
        if ciphersuite not in (frost.FROST_SECP256K1_SHA256.name, frost.FROST_ED25519_SHA512.name):
            raise ValidationError("must be FROST(secp256k1, SHA-256) or FROST(Ed25519, SHA-512)", field="ciphersuite")
        p = dkg.DkgParticipant(ciphersuite, self.identifier, threshold, list(participants), f"dkg:{key_id}".encode())
        pkg = p.round1()
        self._start_ceremony(("dkg", key_id), (p, dict(transport_keys)))
        return pkg.to_dict(p.suite)

    def dkg_round2(self, key_id: str, packages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        p, tkeys = self._pending[("dkg", _key_id(key_id))][:2]
        r1 = {int(d["identifier"]): dkg.Round1Package.from_dict(p.suite, d) for d in packages}
        transcript = self._transcript(packages)
        self._pending[("dkg", key_id)] = (p, tkeys, transcript)
        return self._seal_all("dkg", key_id, p.round2(r1), tkeys, p.suite, transcript)

    def dkg_finish(self, key_id: str, sealed: Mapping[str, str], actor: str) -> dict[str, Any]:
        p, _, transcript = self._pending.pop(("dkg", _key_id(key_id)))
        kp = p.finish(self._open_all("dkg", key_id, sealed, p.suite, transcript))
        self._replace_share(key_id, kp, "dkg_complete", actor)
        return kp.public_dict()

    # ------------------------------------------------------------------------------- refresh
    def refresh_round1(self, key_id: str, transport_keys: Mapping[int, str],
                       proofs: Mapping[int, str] | None = None) -> dict[str, Any]:
        kp = self.store.get(_key_id(key_id))
        self.check_peers(transport_keys, proofs or {})
        r = dkg.RefreshParticipant(kp)
        pkg = r.round1()
        self._start_ceremony(("refresh", key_id), (r, dict(transport_keys)))
        return pkg.to_dict(kp.suite)

    def refresh_round2(self, key_id: str, packages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        r, tkeys = self._pending[("refresh", _key_id(key_id))][:2]
        cs = r.key_package.suite
        r1 = {int(d["identifier"]): dkg.Round1Package.from_dict(cs, d) for d in packages}
        transcript = self._transcript(packages)
        self._pending[("refresh", key_id)] = (r, tkeys, transcript)
        return self._seal_all("refresh", key_id, r.round2(r1), tkeys, cs, transcript)

    def refresh_finish(self, key_id: str, sealed: Mapping[str, str], actor: str) -> dict[str, Any]:
        r, _, transcript = self._pending.pop(("refresh", _key_id(key_id)))
        kp = r.finish(self._open_all("refresh", key_id, sealed, r.key_package.suite, transcript))
        self._replace_share(key_id, kp, "refresh_complete", actor)
        return kp.public_dict()

    # ------------------------------------------------------------------------------- reshare
    def reshare_deal(self, key_id: str, quorum: Sequence[int], new_participants: Sequence[int], new_threshold: int,
                     transport_keys: Mapping[int, str], proofs: Mapping[int, str] | None = None) -> dict[str, Any]:
        kp = self.store.get(_key_id(key_id))
        self.check_peers(transport_keys, proofs or {})
        pkg, shares = dkg.ReshareDealer(kp, list(quorum), list(new_participants), new_threshold).deal()
        return {"package": pkg.to_dict(kp.suite), "sealed": self._seal_all("reshare", key_id, shares, transport_keys, kp.suite)}

    def reshare_receive(self, key_id: str, old_public: Mapping[str, Any], quorum: Sequence[int],
                        new_participants: Sequence[int], new_threshold: int, packages: Sequence[Mapping[str, Any]],
                        sealed: Mapping[str, str], actor: str) -> dict[str, Any]:
        key_id = _key_id(key_id)
        cs = CIPHERSUITES[old_public["ciphersuite"]]
        pk = {int(d["identifier"]): dkg.Round1Package.from_dict(cs, d) for d in packages}
        kp = dkg.reshare_receive(cs, self.identifier, dict(old_public), list(quorum), list(new_participants),
                                 new_threshold, pk, self._open_all("reshare", key_id, sealed, cs))
        self._replace_share(key_id, kp, "reshare_complete", actor)
        return kp.public_dict()

    def retire(self, key_id: str, actor: str, reason: str) -> None:
        """Delete this node's share (a removed signer) and burn its nonces."""
        key_id = _key_id(key_id)
        self.store.delete(key_id)
        self.nonces.discard_open(key_id)
        self.log.append(actor=actor, action="share_deleted", key_id=key_id, reason=reason, signer=self.name)


def open_node(store_dir: Path, passphrase: str, identifier: int, name: str, *, create: bool = False,
              policy_public_key: bytes | None = None) -> SignerNode:
    return SignerNode(EncryptedShareStore(store_dir, passphrase, create=create), identifier, name=name,
                      policy_public_key=policy_public_key)
