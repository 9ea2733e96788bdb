"""Distributed key generation, proactive share refresh and resharing for FROST keys.

REFERENCE IMPLEMENTATION — NOT CONSTANT-TIME (see `frost.py`).

- `DkgParticipant`: Pedersen DKG with Schnorr proofs of knowledge of each constant term (the
  FROST paper's KeyGen, as in RFC 9591 appendix guidance). Each participant keeps its own
  polynomial; the group secret is never computed anywhere.
- `RefreshParticipant`: proactive refresh — every holder deals a random polynomial with constant
  term 0, so shares change and the group public key does not. Old shares stop combining with new.
- `ReshareDealer` / `reshare_receive`: a quorum of current holders re-deals its Lagrange-weighted
  shares to a new participant set and threshold (add/remove a signer); the group public key is kept.

Round-two shares are secret and must travel encrypted to their recipient (`transport.py` seals
them); commitments and proofs are public. Every receiver verifies every share against the dealer's
commitments (Feldman VSS) and refuses the round if one fails, naming the dealer.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import CeremonyFailed
from .frost import CIPHERSUITES, MAX_PARTICIPANTS, Ciphersuite, ThresholdKeyPackage, derive_interpolating_value

__all__ = [
    "DkgError",
    "Round1Package",
    "DkgParticipant",
    "RefreshParticipant",
    "ReshareDealer",
    "reshare_receive",
    "run_dkg",
    "run_refresh",
    "run_reshare",
]


class DkgError(CeremonyFailed):
    """A DKG / refresh / reshare round failed; `culprit` names the dealer whose data was bad."""

    def __init__(self, message: str, culprit: int | None = None) -> None:
        super().__init__(message if culprit is None else f"{message} (participant {culprit})",
                         field="participant" if culprit is not None else None, culprit=culprit)
        self.culprit = culprit


def _check_set(threshold: int, participants: Sequence[int]) -> list[int]:
    ids = sorted(set(participants))
    if len(ids) != len(participants) or not ids or ids[0] < 1 or ids[-1] > MAX_PARTICIPANTS:
        raise DkgError(f"participants: need distinct identifiers in 1..{MAX_PARTICIPANTS}")
    if not 2 <= threshold <= len(ids):
        raise DkgError("threshold: need 2 <= threshold <= number of participants")
    return ids


def _pok_challenge(cs: Ciphersuite, identifier: int, context: bytes, c0: Any, r: Any) -> int:
    g = cs.group
    data = g.serialize_scalar(identifier) + context + g.serialize_element(c0) + g.serialize_element(r)
    return int.from_bytes(hashlib.sha512(cs.context_string + b"dkg-pok" + data).digest(), "big") % g.order


def _eval_poly(coeffs: Sequence[int], x: int, n: int) -> int:
    acc = 0
    for a in reversed(coeffs):
        acc = (acc * x + a) % n
    return acc


def _eval_commitment(cs: Ciphersuite, commitments: Sequence[Any], x: int) -> Any:
    g = cs.group
    acc = g.identity()
    for k, c in enumerate(commitments):
        acc = g.add(acc, g.mul(c, pow(x, k, g.order)))
    return acc


@dataclass(frozen=True)
class Round1Package:
    """Public round-one broadcast: Feldman commitments (+ proof of knowledge for a fresh DKG)."""

    identifier: int
    commitments: tuple[Any, ...]
    pok_r: Any = None
    pok_mu: int | None = None

    def to_dict(self, cs: Ciphersuite) -> dict[str, Any]:
        g = cs.group
        ser = lambda e: "" if g.is_identity(e) else g.serialize_element(e).hex()  # noqa: E731
        out: dict[str, Any] = {"identifier": self.identifier, "commitments": [ser(c) for c in self.commitments]}
        if self.pok_r is not None and self.pok_mu is not None:
            out["pok_r"] = g.serialize_element(self.pok_r).hex()
            out["pok_mu"] = g.serialize_scalar(self.pok_mu).hex()
        return out

    @classmethod
    def from_dict(cls, cs: Ciphersuite, d: Mapping[str, Any]) -> "Round1Package":
        g = cs.group
        de = lambda h: g.identity() if h == "" else g.deserialize_element(bytes.fromhex(h))  # noqa: E731
        comms = tuple(de(h) for h in d["commitments"])
        if len(comms) > MAX_PARTICIPANTS:
            raise DkgError("commitments: too many")
        pok_r = g.deserialize_element(bytes.fromhex(d["pok_r"])) if "pok_r" in d else None
        pok_mu = g.deserialize_scalar(bytes.fromhex(d["pok_mu"])) if "pok_mu" in d else None
        return cls(int(d["identifier"]), comms, pok_r, pok_mu)


@dataclass
class DkgParticipant:
    """One participant of a Pedersen DKG with proofs of knowledge. Holds only its own polynomial."""

    ciphersuite: str
    identifier: int
    threshold: int
    participants: Sequence[int]
    context: bytes  # binds proofs to this ceremony (key id), so they cannot be replayed elsewhere
    _coeffs: list[int] = field(default_factory=list, repr=False)
    _round1: dict[int, Round1Package] = field(default_factory=dict, repr=False)
    _own: Round1Package | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.participants = _check_set(self.threshold, self.participants)
        if self.identifier not in self.participants:
            raise DkgError("identifier: not among participants")

    @property
    def suite(self) -> Ciphersuite:
        return CIPHERSUITES[self.ciphersuite]

    def round1(self) -> Round1Package:
        cs = self.suite
        g = cs.group
        self._coeffs = [1 + secrets.randbelow(g.order - 1) for _ in range(self.threshold)]
        comms = tuple(g.base_mul(a) for a in self._coeffs)
        k = 1 + secrets.randbelow(g.order - 1)
        r = g.base_mul(k)
        c = _pok_challenge(cs, self.identifier, self.context, comms[0], r)
        self._own = Round1Package(self.identifier, comms, r, (k + self._coeffs[0] * c) % g.order)
        return self._own

    def round2(self, packages: Mapping[int, Round1Package]) -> dict[int, int]:
        """Verify everyone's proof of knowledge, then deal one secret share per other participant."""
        cs = self.suite
        g = cs.group
        if sorted(packages) != list(self.participants):
            raise DkgError("round1 packages: need exactly one per participant")
        if self._own is None or packages[self.identifier].commitments != self._own.commitments:
            raise DkgError("round1 packages: this participant's own broadcast was altered in transit")
        for i, p in packages.items():
            if p.identifier != i or len(p.commitments) != self.threshold or p.pok_r is None or p.pok_mu is None:
                raise DkgError("round1 package malformed", i)
            c = _pok_challenge(cs, i, self.context, p.commitments[0], p.pok_r)
            if not g.eq(g.base_mul(p.pok_mu), g.add(p.pok_r, g.mul(p.commitments[0], c))):
                raise DkgError("proof of knowledge failed", i)
        self._round1 = dict(packages)
        return {j: _eval_poly(self._coeffs, j, g.order) for j in self.participants if j != self.identifier}

    def finish(self, shares_for_me: Mapping[int, int]) -> ThresholdKeyPackage:
        cs = self.suite
        g = cs.group
        others = [i for i in self.participants if i != self.identifier]
        if sorted(shares_for_me) != others:
            raise DkgError("round2 shares: need exactly one from every other participant")
        total = _eval_poly(self._coeffs, self.identifier, g.order)
        for i, s in shares_for_me.items():
            if not g.eq(g.base_mul(s), _eval_commitment(cs, self._round1[i].commitments, self.identifier)):
                raise DkgError("secret share does not match the dealer's commitments", i)
            total = (total + s) % g.order
        self._coeffs = []  # drop the polynomial: the share is all this participant keeps
        pk = g.identity()
        for p in self._round1.values():
            pk = g.add(pk, p.commitments[0])
        vshares = {j: _sum_commitments(cs, self._round1.values(), j) for j in self.participants}
        kp = ThresholdKeyPackage(cs.name, self.identifier, total, self.threshold, pk, vshares)
        assert g.eq(g.base_mul(total), vshares[self.identifier]), "own share inconsistent with commitments"
        return kp


def _sum_commitments(cs: Ciphersuite, packages: Any, x: int) -> Any:
    g = cs.group
    acc = g.identity()
    for p in packages:
        acc = g.add(acc, _eval_commitment(cs, p.commitments, x))
    return acc


@dataclass
class RefreshParticipant:
    """Proactive refresh: deal a zero-constant polynomial; add everyone's deltas to the old share."""

    key_package: ThresholdKeyPackage = field(repr=False)
    _coeffs: list[int] = field(default_factory=list, repr=False)
    _round1: dict[int, Round1Package] = field(default_factory=dict, repr=False)
    _own: Round1Package | None = field(default=None, repr=False)

    def round1(self) -> Round1Package:
        g = self.key_package.suite.group
        self._coeffs = [0] + [1 + secrets.randbelow(g.order - 1) for _ in range(self.key_package.threshold - 1)]
        self._own = Round1Package(self.key_package.identifier, tuple(g.base_mul(a) for a in self._coeffs))
        return self._own

    def round2(self, packages: Mapping[int, Round1Package]) -> dict[int, int]:
        kp = self.key_package
        g = kp.suite.group
        ids = sorted(kp.verifying_shares)
        if sorted(packages) != ids:
            raise DkgError("refresh packages: every current holder must take part")
        if self._own is None or packages[kp.identifier].commitments != self._own.commitments:
            raise DkgError("refresh packages: this participant's own broadcast was altered in transit")
        for i, p in packages.items():
            if len(p.commitments) != kp.threshold or not g.is_identity(p.commitments[0]):
                raise DkgError("refresh polynomial must have a zero constant term", i)
        self._round1 = dict(packages)
        return {j: _eval_poly(self._coeffs, j, g.order) for j in ids if j != kp.identifier}

    def finish(self, shares_for_me: Mapping[int, int]) -> ThresholdKeyPackage:
        kp = self.key_package
        cs = kp.suite
        g = cs.group
        others = [i for i in sorted(kp.verifying_shares) if i != kp.identifier]
        if sorted(shares_for_me) != others:
            raise DkgError("refresh shares: need exactly one from every other holder")
        delta = _eval_poly(self._coeffs, kp.identifier, g.order)
        for i, s in shares_for_me.items():
            if not g.eq(g.base_mul(s), _eval_commitment(cs, self._round1[i].commitments, kp.identifier)):
                raise DkgError("refresh share does not match the dealer's commitments", i)
            delta = (delta + s) % g.order
        self._coeffs = []
        vshares = {j: g.add(y, _sum_commitments(cs, self._round1.values(), j)) for j, y in kp.verifying_shares.items()}
        new = ThresholdKeyPackage(cs.name, kp.identifier, (kp.secret_share + delta) % g.order, kp.threshold,
                                  kp.group_public_key, vshares)
        assert g.eq(g.base_mul(new.secret_share), vshares[kp.identifier]), "refreshed share inconsistent"
        return new


@dataclass
class ReshareDealer:
    """A current holder in the resharing quorum: re-deals λ_i·s_i to the new set with the new threshold."""

    key_package: ThresholdKeyPackage = field(repr=False)
    quorum: Sequence[int]
    new_participants: Sequence[int]
    new_threshold: int

    def deal(self) -> tuple[Round1Package, dict[int, int]]:
        kp = self.key_package
        cs = kp.suite
        g = cs.group
        quorum = sorted(set(self.quorum))
        if len(quorum) < kp.threshold or kp.identifier not in quorum:
            raise DkgError(f"quorum: need at least {kp.threshold} current holders including this one")
        new_ids = _check_set(self.new_threshold, self.new_participants)
        lam = derive_interpolating_value(cs, quorum, kp.identifier)
        coeffs = [lam * kp.secret_share % g.order] + [1 + secrets.randbelow(g.order - 1)
                                                       for _ in range(self.new_threshold - 1)]
        pkg = Round1Package(kp.identifier, tuple(g.base_mul(a) for a in coeffs))
        return pkg, {j: _eval_poly(coeffs, j, g.order) for j in new_ids}


def reshare_receive(cs: Ciphersuite, identifier: int, old_public: ThresholdKeyPackage | dict[str, Any],
                    quorum: Sequence[int], new_participants: Sequence[int], new_threshold: int,
                    packages: Mapping[int, Round1Package], shares_for_me: Mapping[int, int]) -> ThresholdKeyPackage:
    """A member of the new set combines the dealt sub-shares, checking each dealer against the old
    public key package (C_i0 must equal λ_i·Y_i) so a dealer cannot change the group key."""
    g = cs.group
    if isinstance(old_public, dict):
        old_pk = g.deserialize_element(bytes.fromhex(old_public["group_public_key"]))
        old_vs = {int(i): g.deserialize_element(bytes.fromhex(y)) for i, y in old_public["verifying_shares"].items()}
    else:
        old_pk, old_vs = old_public.group_public_key, old_public.verifying_shares
    quorum = sorted(set(quorum))
    new_ids = _check_set(new_threshold, new_participants)
    if identifier not in new_ids or sorted(packages) != quorum or sorted(shares_for_me) != quorum:
        raise DkgError("reshare: need one package and one share from every quorum member")
    total = 0
    pk = g.identity()
    for i in quorum:
        p = packages[i]
        lam = derive_interpolating_value(cs, quorum, i)
        if len(p.commitments) != new_threshold or not g.eq(p.commitments[0], g.mul(old_vs[i], lam)):
            raise DkgError("reshare commitment does not match the dealer's verifying share", i)
        if not g.eq(g.base_mul(shares_for_me[i]), _eval_commitment(cs, p.commitments, identifier)):
            raise DkgError("reshare share does not match the dealer's commitments", i)
        total = (total + shares_for_me[i]) % g.order
        pk = g.add(pk, p.commitments[0])
    if not g.eq(pk, old_pk):
        raise DkgError("reshare: dealt key differs from the group public key")
    vshares = {j: _sum_commitments(cs, packages.values(), j) for j in new_ids}
    return ThresholdKeyPackage(cs.name, identifier, total, new_threshold, old_pk, vshares)


# ------------------------------------------------ in-process drivers (tests, local ceremonies)


def run_dkg(cs: Ciphersuite, threshold: int, participants: Sequence[int], context: bytes) -> dict[int, ThresholdKeyPackage]:
    """Run every participant's side in one process. Each participant object sees only its own
    polynomial and the messages addressed to it; nothing ever adds the shares up."""
    parts = {i: DkgParticipant(cs.name, i, threshold, participants, context) for i in participants}
    r1 = {i: p.round1() for i, p in parts.items()}
    r2 = {i: p.round2(r1) for i, p in parts.items()}
    return {j: parts[j].finish({i: r2[i][j] for i in parts if i != j}) for j in parts}


def run_refresh(kps: Mapping[int, ThresholdKeyPackage]) -> dict[int, ThresholdKeyPackage]:
    parts = {i: RefreshParticipant(kp) for i, kp in kps.items()}
    r1 = {i: p.round1() for i, p in parts.items()}
    r2 = {i: p.round2(r1) for i, p in parts.items()}
    return {j: parts[j].finish({i: r2[i][j] for i in parts if i != j}) for j in parts}


def run_reshare(kps: Mapping[int, ThresholdKeyPackage], quorum: Sequence[int], new_participants: Sequence[int],
                new_threshold: int) -> dict[int, ThresholdKeyPackage]:
    cs = next(iter(kps.values())).suite
    dealt = {i: ReshareDealer(kps[i], quorum, new_participants, new_threshold).deal() for i in quorum}
    pub = next(iter(kps.values()))
    return {j: reshare_receive(cs, j, pub, quorum, new_participants, new_threshold,
                               {i: d[0] for i, d in dealt.items()}, {i: d[1][j] for i, d in dealt.items()})
            for j in new_participants}
