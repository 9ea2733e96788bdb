"""The FROST coordinator: drives signer processes over HTTP and implements `Signer` for custody flows.

It never holds a share. For signing it keeps a small pool of pre-fetched nonce commitments per
signer (FROST's preprocessing round), so one threshold signature costs one HTTP round trip per
signer, sent in parallel. It aggregates the shares, verifies the signature against the group key,
and names the cheating signer if a share is bad. DKG, refresh and reshare are relayed here, but
round-two shares travel sealed to each recipient's transport key, so the coordinator cannot read them.

Invariants: a commitment from the pool is handed out once (then the signer's nonce store enforces
single use as well); a `Signature` is returned only if it verifies.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import httpx

from ..errors import CeremonyFailed, RingfenceError, SignerUnavailable, SigningRefused, ValidationError
from . import frost
from .frost import CIPHERSUITES, SigningCommitments, ThresholdKeyPackage
from .interface import Scheme, Signature, SigningRequest
from .signer_node import scheme_key_package

__all__ = ["ThresholdCoordinator", "SignerUnavailable", "PublicKeyPackage"]

POOL_REFILL = 20
TIMEOUT_S = 10.0


def _why(exc: BaseException) -> str:
    """A transport failure in a word; a refused TLS handshake says that it was one."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return f"TLS authentication failed: {getattr(seen, 'reason', None) or seen.__class__.__name__}"
        seen = seen.__cause__ or seen.__context__
    return exc.__class__.__name__


class PublicKeyPackage:
    """The public half of a threshold key (group key + verifying shares), as the coordinator sees it."""

    def __init__(self, d: Mapping[str, Any]) -> None:
        self.raw = dict(d)
        cs = CIPHERSUITES[d["ciphersuite"]]
        g = cs.group
        self.kp = ThresholdKeyPackage(cs.name, 0, 0, int(d["threshold"]),
                                      g.deserialize_element(bytes.fromhex(d["group_public_key"])),
                                      {int(i): g.deserialize_element(bytes.fromhex(y))
                                       for i, y in d["verifying_shares"].items()})


class ThresholdCoordinator:
    def __init__(self, signers: Mapping[int, str], token: str, *, actor: str = "coordinator", tls: Any = None) -> None:
        """`tls`: a `tls.ClientTLS` (our certificate and each signer's pinned one) for mutually
        authenticated TLS; without it, plain HTTP with the bearer token (tests, loopback baseline)."""
        if not signers:
            raise ValidationError("need at least one signer url", field="signers")
        self.signers = dict(signers)
        self.actor = actor
        self.tls = tls
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(headers=self._headers, timeout=TIMEOUT_S)
        self._clients: dict[int, httpx.Client] = {}
        self._pool: dict[tuple[str, int], deque[dict[str, Any]]] = {}
        self._keys: dict[str, PublicKeyPackage] = {}
        self._lock = threading.Lock()
        self._exec = ThreadPoolExecutor(max_workers=8)
        self._bg = ThreadPoolExecutor(max_workers=2)  # background nonce-pool refills
        self._refilling: set[tuple[str, int]] = set()

    def close(self) -> None:
        self._bg.shutdown(wait=True)
        self._exec.shutdown(wait=False)
        self._http.close()
        for c in self._clients.values():
            c.close()

    # ---------------------------------------------------------------------------- transport
    def _client(self, i: int) -> httpx.Client:
        """One connection pool per signer; with TLS it trusts only that signer's pinned certificate."""
        if self.tls is None:
            return self._http
        with self._lock:
            c = self._clients.get(i)
            if c is None:
                c = self._clients[i] = httpx.Client(headers=self._headers, timeout=TIMEOUT_S, verify=self.tls.context(i))
            return c

    def _post(self, i: int, path: str, body: dict[str, Any]) -> Any:
        try:
            r = self._client(i).post(self.signers[i] + path, json=body)
        except httpx.HTTPError as exc:
            raise SignerUnavailable(f"signer {i} unreachable ({_why(exc)})", field="signer", signer=i) from None
        if r.status_code != 200:
            d = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            err: type[RingfenceError] = ValidationError
            if r.status_code in (401, 403, 409):
                err = SigningRefused
            elif d.get("code") == "RF_CEREMONY_FAILED":
                err = CeremonyFailed
            exc = err(f"signer {i} refused: {d.get('code', r.status_code)}: {d.get('message', '')}", field=d.get("field"))
            exc.details.update({"signer": i, "remote_code": d.get("code"),
                                "culprit": (d.get("details") or {}).get("culprit")})
            raise exc
        return r.json()

    def _get(self, i: int, path: str) -> Any:
        try:
            r = self._client(i).get(self.signers[i] + path)
        except httpx.HTTPError as exc:
            raise SignerUnavailable(f"signer {i} unreachable ({_why(exc)})", field="signer", signer=i) from None
        r.raise_for_status()
        return r.json()

    def _all(self, ids: Sequence[int], fn: Any) -> dict[int, Any]:
        futs = {i: self._exec.submit(fn, i) for i in ids}
        return {i: f.result() for i, f in futs.items()}

    def transport_keys(self, ids: Sequence[int]) -> dict[int, str]:
        return self._transport(ids)[0]

    def _transport(self, ids: Sequence[int]) -> tuple[dict[str, str], dict[str, str]]:
        """Each signer's X25519 transport key and its proof (signed with the signer's pinned TLS key):
        the other signers check the proof against their own pin of that signer before they seal a
        share to the key (`SignerNode.check_peers`), so the coordinator cannot slip in a key of its own."""
        docs = self._all(ids, lambda i: self._get(i, "/v1/identity"))
        return ({str(i): d["transport_public_key"] for i, d in docs.items()},
                {str(i): d["transport_key_proof"] for i, d in docs.items() if d.get("transport_key_proof")})

    # ---------------------------------------------------------------------------- ceremonies
    def create_key(self, key_id: str, ciphersuite: str, threshold: int, participants: Sequence[int]) -> PublicKeyPackage:
        ids = sorted(participants)
        tk, proofs = self._transport(ids)
        r1 = self._all(ids, lambda i: self._post(i, "/v1/dkg/round1", {"key_id": key_id, "ciphersuite": ciphersuite,
                                                                         "threshold": threshold, "participants": ids,
                                                                         "transport_keys": tk, "transport_proofs": proofs}))
        pkgs = [r1[i] for i in ids]
        r2 = self._all(ids, lambda i: self._post(i, "/v1/dkg/round2", {"key_id": key_id, "packages": pkgs})["sealed"])
        fin = self._all(ids, lambda j: self._post(j, "/v1/dkg/finish", {
            "key_id": key_id, "actor": self.actor, "sealed": {str(i): r2[i][str(j)] for i in ids if i != j}}))
        return self._adopt(key_id, fin)

    def _adopt(self, key_id: str, public: Mapping[int, Mapping[str, Any]]) -> PublicKeyPackage:
        views = {(d["group_public_key"], tuple(sorted(d["verifying_shares"].items()))) for d in public.values()}
        if len(views) != 1:
            raise SigningRefused("signers disagree about the public key package", field="key_id")
        pkg = PublicKeyPackage(next(iter(public.values())))
        with self._lock:
            self._keys[key_id] = pkg
            for k in [k for k in self._pool if k[0] == key_id]:
                del self._pool[k]
            # a refill racing with a refresh may add stale commitments; signers refuse those (burned nonces)
        return pkg

    def refresh(self, key_id: str) -> PublicKeyPackage:
        ids = sorted(self.key(key_id).kp.verifying_shares)
        tk, proofs = self._transport(ids)
        r1 = self._all(ids, lambda i: self._post(i, "/v1/refresh/round1", {"key_id": key_id, "transport_keys": tk,
                                                                             "transport_proofs": proofs}))
        pkgs = [r1[i] for i in ids]
        r2 = self._all(ids, lambda i: self._post(i, "/v1/refresh/round2", {"key_id": key_id, "packages": pkgs})["sealed"])
        fin = self._all(ids, lambda j: self._post(j, "/v1/refresh/finish", {
            "key_id": key_id, "actor": self.actor, "sealed": {str(i): r2[i][str(j)] for i in ids if i != j}}))
        return self._adopt(key_id, fin)

    def reshare(self, key_id: str, quorum: Sequence[int], new_signers: Mapping[int, str], new_threshold: int,
                reason: str) -> PublicKeyPackage:
        """Add/remove signers: `quorum` (current holders) re-deal to `new_signers` with `new_threshold`.
        A signer being removed never deals: it is leaving, perhaps because it is not trusted any more
        (checked here, below every caller: the CLI, the console's reshare and `reshare_hot_key`)."""
        leaving = sorted(set(quorum) - set(new_signers))
        if leaving:
            raise ValidationError(f"a removed signer cannot be in the re-dealing quorum: {', '.join(map(str, leaving))}",
                                  field="quorum")
        old = self.key(key_id)
        self.signers.update(new_signers)
        new_ids = sorted(new_signers)
        tk, proofs = self._transport(new_ids)
        dealt = self._all(sorted(quorum), lambda i: self._post(i, "/v1/reshare/deal", {
            "key_id": key_id, "quorum": sorted(quorum), "new_participants": new_ids,
            "new_threshold": new_threshold, "transport_keys": tk, "transport_proofs": proofs}))
        pkgs = [dealt[i]["package"] for i in sorted(quorum)]
        fin = self._all(new_ids, lambda j: self._post(j, "/v1/reshare/receive", {
            "key_id": key_id, "old_public": old.raw, "quorum": sorted(quorum), "new_participants": new_ids,
            "new_threshold": new_threshold, "packages": pkgs, "actor": self.actor,
            "sealed": {str(i): dealt[i]["sealed"][str(j)] for i in sorted(quorum)}}))
        removed = [i for i in old.kp.verifying_shares if i not in new_signers]
        for i in removed:
            self._post(i, "/v1/retire", {"key_id": key_id, "actor": self.actor, "reason": reason})
            self.signers.pop(i, None)
        return self._adopt(key_id, fin)

    # ------------------------------------------------------------------------------- signing
    def key(self, key_id: str) -> PublicKeyPackage:
        with self._lock:
            pkg = self._keys.get(key_id)
        if pkg is None:
            ids = sorted(self.signers)
            pub = {}
            unreachable = []
            for i in ids:
                try:
                    pub[i] = self._get(i, f"/v1/keys/{key_id}")
                except httpx.HTTPError:
                    continue
                except SignerUnavailable as exc:
                    unreachable.append(str(exc))
            if not pub and len(unreachable) == len(ids):
                raise SignerUnavailable("; ".join(unreachable), field="signer")
            if not pub:
                raise ValidationError("no signer holds this key", field="key_id")
            pkg = self._adopt(key_id, pub)
        return pkg

    def public_key(self, key_id: str, scheme: Scheme) -> bytes:
        kp = scheme_key_package(self.key(key_id).kp, Scheme(scheme))
        if kp.suite.bip340:
            return kp.group_public_key[0].to_bytes(32, "big")
        return kp.suite.group.serialize_element(kp.group_public_key)

    def _refill(self, key_id: str, i: int) -> None:
        try:
            fresh = self._post(i, "/v1/commit", {"key_id": key_id, "count": POOL_REFILL})["commitments"]
            with self._lock:
                self._pool.setdefault((key_id, i), deque()).extend(fresh)
        finally:
            with self._lock:
                self._refilling.discard((key_id, i))

    def _take_commitment(self, key_id: str, i: int) -> dict[str, Any]:
        """Pop a pre-fetched commitment; refill in the background when the pool runs low so the
        signing path rarely waits for nonce generation."""
        k = (key_id, i)
        with self._lock:
            q = self._pool.setdefault(k, deque())
            item = q.popleft() if q else None
            low = len(q) < POOL_REFILL // 2 and k not in self._refilling
            if low:
                self._refilling.add(k)
        if low:
            self._bg.submit(self._refill, key_id, i)
        if item is None:
            return self._post(i, "/v1/commit", {"key_id": key_id, "count": 1})["commitments"][0]
        return item

    def _drop_pool(self, key_id: str) -> None:
        with self._lock:
            for k in [k for k in self._pool if k[0] == key_id]:
                del self._pool[k]

    def sign(self, request: SigningRequest, quorum: Sequence[int] | None = None) -> Signature:
        """Threshold-sign `request` with `quorum`, or — when no quorum is given — with the first t
        reachable holders: a signer that does not answer is skipped and the next holder takes its
        place (no single signer's outage stops withdrawals). If a signer reports a stale commitment
        (its nonce was burned by a refresh), the pool is dropped and the round retried once with fresh
        commitments; burned nonces are never reused."""
        pkg = self.key(request.key_id)
        holders = sorted(i for i in pkg.kp.verifying_shares if i in self.signers)
        down: set[int] = set()
        for _attempt in range(len(holders) + 1):
            chosen = sorted(quorum) if quorum is not None else [i for i in holders if i not in down][: pkg.kp.threshold]
            try:
                try:
                    return self._sign_once(request, chosen)
                except SigningRefused as exc:
                    if exc.details.get("remote_code") != "RF_NONCE_REUSED":
                        raise
                    self._drop_pool(request.key_id)
                    return self._sign_once(request, chosen)
            except SignerUnavailable as exc:
                failed = exc.details.get("signer")
                if quorum is not None or failed is None or failed in down:
                    raise
                down.add(failed)
        raise SignerUnavailable("not enough reachable signers for this key", field="quorum")

    def _sign_once(self, request: SigningRequest, quorum: Sequence[int]) -> Signature:
        pkg = self.key(request.key_id)
        kp = scheme_key_package(pkg.kp, request.scheme)
        cs = kp.suite
        quorum = sorted(quorum)
        if len(quorum) < kp.threshold:
            raise SigningRefused(f"need {kp.threshold} signers, have {len(quorum)}", field="quorum")
        picked = self._all(quorum, lambda i: self._take_commitment(request.key_id, i))
        comm_dicts = [picked[i]["commitments"] for i in quorum]
        comms = [SigningCommitments.from_dict(cs, c) for c in comm_dicts]
        body = {"key_id": request.key_id, "scheme": request.scheme.value, "message": request.digest.hex(),
                "commitments": comm_dicts, "request_id": request.request_id,
                "approval": request.approval.to_dict() if request.approval is not None else None}
        shares = self._all(quorum, lambda i: self._post(i, "/v1/sign", {**body, "nonce_id": picked[i]["nonce_id"]}))
        z = {i: cs.group.deserialize_scalar(bytes.fromhex(shares[i]["sig_share"])) for i in quorum}
        sig = frost.aggregate(cs, comms, request.digest, kp.group_public_key, z, kp.verifying_shares)
        return Signature(request.key_id, request.scheme, sig, self.public_key(request.key_id, request.scheme),
                         tuple(f"frost:{i}" for i in quorum))
