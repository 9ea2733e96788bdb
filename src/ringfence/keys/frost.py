"""FROST threshold Schnorr signatures (RFC 9591): FROST(secp256k1, SHA-256), FROST(Ed25519, SHA-512),
and a BIP-340 variant of the secp256k1 suite for Bitcoin Taproot key-path spends.

REFERENCE IMPLEMENTATION — NOT CONSTANT-TIME, NOT AUDITED. It follows RFC 9591 step by step so that
every intermediate value can be checked against the RFC's test vectors. Only `ThresholdKeyPackage`,
`commit`, `sign_share`, `aggregate` and `verify` are used by the rest of ringfence, so an audited
library (a hardened FROST or CGGMP implementation) can replace this module behind
`ringfence.keys.interface.Signer`.

Invariants:
- A nonce pair is used for exactly one signature share (the caller's `NonceStore` enforces it;
  `sign_share` cannot, because it is stateless).
- `aggregate` verifies the final signature, and on failure identifies the cheating participant by
  verifying each signature share; it never returns an invalid signature.
- BIP-340 mode: the group key and the group commitment R always have even Y in the signature
  (shares and nonces are negated as BIP-340 requires), output is R.x || z (64 bytes).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import InvalidSignatureShare
from .groups import ED25519, SECP256K1, DeserializeError, Group

__all__ = [
    "Ciphersuite",
    "FROST_SECP256K1_SHA256",
    "FROST_ED25519_SHA512",
    "FROST_SECP256K1_BIP340",
    "CIPHERSUITES",
    "ThresholdKeyPackage",
    "SigningNonces",
    "SigningCommitments",
    "InvalidShare",
    "nonce_generate",
    "commit",
    "compute_binding_factors",
    "compute_group_commitment",
    "derive_interpolating_value",
    "sign_share",
    "verify_signature_share",
    "aggregate",
    "verify",
    "tagged_hash",
    "bip340_key_package",
    "split_secret",
    "MAX_PARTICIPANTS",
]

MAX_PARTICIPANTS = 255  # identifiers are 1..255 in ringfence; keeps every loop bounded


class InvalidShare(InvalidSignatureShare):
    """A signature share failed verification; `identifier` names the participant who sent it."""

    def __init__(self, identifier: int) -> None:
        super().__init__(f"signature share from participant {identifier} is invalid", field="sig_share",
                         participant=identifier)
        self.identifier = identifier


def tagged_hash(tag: str, msg: bytes) -> bytes:
    """BIP-340 tagged hash: SHA256(SHA256(tag) || SHA256(tag) || msg)."""
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + msg).digest()


def _expand_message_xmd_sha256(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-256 (b_in_bytes=32, s_in_bytes=64)."""
    ell = -(-len_in_bytes // 32)
    assert ell <= 255 and len(dst) <= 255, "expand_message_xmd limits"
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(64) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha256(msg_prime).digest()
    bi = hashlib.sha256(b0 + b"\x01" + dst_prime).digest()
    out = bi
    for i in range(2, ell + 1):
        bi = hashlib.sha256(bytes(x ^ y for x, y in zip(b0, bi)) + bytes([i]) + dst_prime).digest()
        out += bi
    return out[:len_in_bytes]


@dataclass(frozen=True)
class Ciphersuite:
    """A FROST ciphersuite: a group plus the hash functions H1..H5 of RFC 9591 section 6."""

    name: str
    context_string: bytes
    group: Group
    h1: Callable[[bytes], int]  # binding factor ("rho")
    h3: Callable[[bytes], int]  # nonce generation ("nonce")
    h4: Callable[[bytes], bytes]  # message hash ("msg")
    h5: Callable[[bytes], bytes]  # commitment list hash ("com")
    challenge: Callable[[Any, Any, bytes], int]  # H2 over (R, PK, msg)
    bip340: bool = False

    def serialize_signature(self, r: Any, z: int) -> bytes:
        if self.bip340:
            return r[0].to_bytes(32, "big") + self.group.serialize_scalar(z)
        return self.group.serialize_element(r) + self.group.serialize_scalar(z)

    @property
    def signature_size_bytes(self) -> int:
        return 64 if self.bip340 else self.group.element_size_bytes + self.group.scalar_size_bytes


def _secp_suite(context: bytes, name: str, bip340: bool) -> Ciphersuite:
    n = SECP256K1.order

    def h2f(dst_tag: bytes) -> Callable[[bytes], int]:
        return lambda m: int.from_bytes(_expand_message_xmd_sha256(m, context + dst_tag, 48), "big") % n

    def sha(tag: bytes) -> Callable[[bytes], bytes]:
        return lambda m: hashlib.sha256(context + tag + m).digest()

    chal_rfc = h2f(b"chal")

    def challenge(r: Any, pk: Any, msg: bytes) -> int:
        if bip340:
            data = r[0].to_bytes(32, "big") + pk[0].to_bytes(32, "big") + msg
            return int.from_bytes(tagged_hash("BIP0340/challenge", data), "big") % n
        return chal_rfc(SECP256K1.serialize_element(r) + SECP256K1.serialize_element(pk) + msg)

    return Ciphersuite(name, context, SECP256K1, h2f(b"rho"), h2f(b"nonce"), sha(b"msg"), sha(b"com"),
                       challenge, bip340)


def _ed25519_suite() -> Ciphersuite:
    context = b"FROST-ED25519-SHA512-v1"
    n = ED25519.order

    def h(tag: bytes) -> Callable[[bytes], int]:
        return lambda m: int.from_bytes(hashlib.sha512(context + tag + m).digest(), "little") % n

    def sha(tag: bytes) -> Callable[[bytes], bytes]:
        return lambda m: hashlib.sha512(context + tag + m).digest()

    def challenge(r: Any, pk: Any, msg: bytes) -> int:
        # H2 has no context string, so that the output is a plain RFC 8032 Ed25519 signature.
        data = ED25519.serialize_element(r) + ED25519.serialize_element(pk) + msg
        return int.from_bytes(hashlib.sha512(data).digest(), "little") % n

    return Ciphersuite("FROST(Ed25519, SHA-512)", context, ED25519, h(b"rho"), h(b"nonce"), sha(b"msg"),
                       sha(b"com"), challenge)


FROST_SECP256K1_SHA256 = _secp_suite(b"FROST-secp256k1-SHA256-v1", "FROST(secp256k1, SHA-256)", False)
FROST_SECP256K1_BIP340 = _secp_suite(b"FROST-secp256k1-SHA256-TR-v1", "FROST(secp256k1, SHA-256, BIP-340)", True)
FROST_ED25519_SHA512 = _ed25519_suite()
CIPHERSUITES: dict[str, Ciphersuite] = {
    cs.name: cs for cs in (FROST_SECP256K1_SHA256, FROST_SECP256K1_BIP340, FROST_ED25519_SHA512)
}


# ------------------------------------------------------------------------------------------ types


@dataclass(frozen=True)
class ThresholdKeyPackage:
    """One participant's view of a threshold key: its secret share plus the public key package.

    `secret_share` is secret; `__repr__` hides it so it never reaches a log by accident.
    """

    ciphersuite: str
    identifier: int
    secret_share: int = field(repr=False)
    threshold: int
    group_public_key: Any
    verifying_shares: Mapping[int, Any]

    @property
    def suite(self) -> Ciphersuite:
        return CIPHERSUITES[self.ciphersuite]

    def to_dict(self) -> dict[str, Any]:
        g = self.suite.group
        return {
            "ciphersuite": self.ciphersuite,
            "identifier": self.identifier,
            "secret_share": g.serialize_scalar(self.secret_share).hex(),
            "threshold": self.threshold,
            "group_public_key": g.serialize_element(self.group_public_key).hex(),
            "verifying_shares": {str(i): g.serialize_element(y).hex() for i, y in self.verifying_shares.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ThresholdKeyPackage":
        cs = CIPHERSUITES[d["ciphersuite"]]
        g = cs.group
        kp = cls(
            ciphersuite=cs.name,
            identifier=int(d["identifier"]),
            secret_share=g.deserialize_scalar(bytes.fromhex(d["secret_share"])),
            threshold=int(d["threshold"]),
            group_public_key=g.deserialize_element(bytes.fromhex(d["group_public_key"])),
            verifying_shares={int(i): g.deserialize_element(bytes.fromhex(y))
                              for i, y in d["verifying_shares"].items()},
        )
        if not g.eq(g.base_mul(kp.secret_share), kp.verifying_shares[kp.identifier]):
            raise DeserializeError("secret share does not match its verifying share")
        return kp

    def public_dict(self) -> dict[str, Any]:
        d = self.to_dict()
        del d["secret_share"]
        return d


@dataclass(frozen=True)
class SigningNonces:
    hiding: int = field(repr=False)
    binding: int = field(repr=False)


@dataclass(frozen=True)
class SigningCommitments:
    identifier: int
    hiding: Any
    binding: Any

    def to_dict(self, cs: Ciphersuite) -> dict[str, Any]:
        g = cs.group
        return {"identifier": self.identifier, "hiding": g.serialize_element(self.hiding).hex(),
                "binding": g.serialize_element(self.binding).hex()}

    @classmethod
    def from_dict(cls, cs: Ciphersuite, d: Mapping[str, Any]) -> "SigningCommitments":
        g = cs.group
        return cls(int(d["identifier"]), g.deserialize_element(bytes.fromhex(d["hiding"])),
                   g.deserialize_element(bytes.fromhex(d["binding"])))


# ------------------------------------------------------------------------------ RFC 9591 section 4


def nonce_generate(cs: Ciphersuite, secret: int, random_bytes: bytes | None = None) -> int:
    random_bytes = secrets.token_bytes(32) if random_bytes is None else random_bytes
    return cs.h3(random_bytes + cs.group.serialize_scalar(secret))


def commit(cs: Ciphersuite, identifier: int, secret_share: int, *,
           hiding_randomness: bytes | None = None,
           binding_randomness: bytes | None = None) -> tuple[SigningNonces, SigningCommitments]:
    """Round one: fresh nonces and their public commitments."""
    hiding = nonce_generate(cs, secret_share, hiding_randomness)
    binding = nonce_generate(cs, secret_share, binding_randomness)
    g = cs.group
    return SigningNonces(hiding, binding), SigningCommitments(identifier, g.base_mul(hiding), g.base_mul(binding))


def _check_commitment_list(commitment_list: Sequence[SigningCommitments]) -> list[int]:
    ids = [c.identifier for c in commitment_list]
    if ids != sorted(set(ids)):
        raise ValueError("commitment_list: identifiers must be unique and sorted ascending")
    if not ids or len(ids) > MAX_PARTICIPANTS or ids[0] < 1:
        raise ValueError(f"commitment_list: 1..{MAX_PARTICIPANTS} participants with identifiers >= 1 required")
    return ids


def encode_group_commitment_list(cs: Ciphersuite, commitment_list: Sequence[SigningCommitments]) -> bytes:
    g = cs.group
    return b"".join(g.serialize_scalar(c.identifier) + g.serialize_element(c.hiding) + g.serialize_element(c.binding)
                    for c in commitment_list)


def binding_factor_input_prefix(cs: Ciphersuite, group_public_key: Any,
                                commitment_list: Sequence[SigningCommitments], msg: bytes) -> bytes:
    return (cs.group.serialize_element(group_public_key) + cs.h4(msg)
            + cs.h5(encode_group_commitment_list(cs, commitment_list)))


def compute_binding_factors(cs: Ciphersuite, group_public_key: Any,
                            commitment_list: Sequence[SigningCommitments], msg: bytes) -> dict[int, int]:
    _check_commitment_list(commitment_list)
    prefix = binding_factor_input_prefix(cs, group_public_key, commitment_list, msg)
    return {c.identifier: cs.h1(prefix + cs.group.serialize_scalar(c.identifier)) for c in commitment_list}


def compute_group_commitment(cs: Ciphersuite, commitment_list: Sequence[SigningCommitments],
                             binding_factors: Mapping[int, int]) -> Any:
    g = cs.group
    acc = g.identity()
    for c in commitment_list:
        acc = g.add(acc, g.add(c.hiding, g.mul(c.binding, binding_factors[c.identifier])))
    return acc


def derive_interpolating_value(cs: Ciphersuite, participants: Sequence[int], x_i: int) -> int:
    n = cs.group.order
    if x_i not in participants:
        raise ValueError("x_i is not in the participant list")
    if len(set(participants)) != len(participants):
        raise ValueError("participant list contains duplicates")
    num, den = 1, 1
    for x_j in participants:
        if x_j == x_i:
            continue
        num = num * x_j % n
        den = den * (x_j - x_i) % n
    return num * pow(den, -1, n) % n


def _odd_y(cs: Ciphersuite, point: Any) -> bool:
    return cs.bip340 and bool(point[1] & 1)


def _signing_context(cs: Ciphersuite, group_public_key: Any, commitment_list: Sequence[SigningCommitments],
                     msg: bytes) -> tuple[dict[int, int], Any, int, bool]:
    if cs.bip340 and group_public_key[1] & 1:
        raise ValueError("group_public_key: BIP-340 signing needs an even-Y key; use bip340_key_package()")
    rho = compute_binding_factors(cs, group_public_key, commitment_list, msg)
    r = compute_group_commitment(cs, commitment_list, rho)
    if cs.group.is_identity(r):
        raise ValueError("commitment_list: group commitment is the identity")
    negate = _odd_y(cs, r)
    if negate:
        r = cs.group.neg(r)
    return rho, r, cs.challenge(r, group_public_key, msg), negate


def sign_share(key_package: ThresholdKeyPackage, nonces: SigningNonces, msg: bytes,
               commitment_list: Sequence[SigningCommitments]) -> int:
    """Round two: this participant's signature share z_i."""
    cs = key_package.suite
    n = cs.group.order
    ids = _check_commitment_list(commitment_list)
    if key_package.identifier not in ids:
        raise ValueError("commitment_list: does not include this participant")
    if len(ids) < key_package.threshold:
        raise ValueError(f"commitment_list: needs at least {key_package.threshold} participants, got {len(ids)}")
    mine = next(c for c in commitment_list if c.identifier == key_package.identifier)
    g = cs.group
    if not (g.eq(mine.hiding, g.base_mul(nonces.hiding)) and g.eq(mine.binding, g.base_mul(nonces.binding))):
        raise ValueError("commitment_list: this participant's commitment does not match its nonces")
    rho, _r, c, negate = _signing_context(cs, key_package.group_public_key, commitment_list, msg)
    k = (nonces.hiding + nonces.binding * rho[key_package.identifier]) % n
    if negate:
        k = n - k
    lam = derive_interpolating_value(cs, ids, key_package.identifier)
    return (k + lam * key_package.secret_share * c) % n


def verify_signature_share(cs: Ciphersuite, identifier: int, verifying_share: Any, sig_share: int,
                           commitment_list: Sequence[SigningCommitments], group_public_key: Any,
                           msg: bytes) -> bool:
    g = cs.group
    rho, _r, c, negate = _signing_context(cs, group_public_key, commitment_list, msg)
    mine = next(x for x in commitment_list if x.identifier == identifier)
    comm_share = g.add(mine.hiding, g.mul(mine.binding, rho[identifier]))
    if negate:
        comm_share = g.neg(comm_share)
    lam = derive_interpolating_value(cs, [x.identifier for x in commitment_list], identifier)
    l_side = g.base_mul(sig_share)
    r_side = g.add(comm_share, g.mul(verifying_share, c * lam % g.order))
    return g.eq(l_side, r_side)


def aggregate(cs: Ciphersuite, commitment_list: Sequence[SigningCommitments], msg: bytes,
              group_public_key: Any, sig_shares: Mapping[int, int],
              verifying_shares: Mapping[int, Any] | None = None) -> bytes:
    """Combine signature shares; the result is verified before it is returned."""
    ids = _check_commitment_list(commitment_list)
    if sorted(sig_shares) != ids:
        raise ValueError("sig_shares: need exactly one share per participant in commitment_list")
    _rho, r, _c, _neg = _signing_context(cs, group_public_key, commitment_list, msg)
    z = sum(sig_shares.values()) % cs.group.order
    sig = cs.serialize_signature(r, z)
    if not verify(cs, msg, sig, group_public_key):
        if verifying_shares is not None:
            for i in ids:
                if not verify_signature_share(cs, i, verifying_shares[i], sig_shares[i], commitment_list,
                                              group_public_key, msg):
                    raise InvalidShare(i)
        raise ValueError("aggregate: the combined signature does not verify")
    return sig


def verify(cs: Ciphersuite, msg: bytes, sig: bytes, public_key: Any) -> bool:
    """Verify a FROST signature (RFC 9591 section 6; BIP-340 for the BIP-340 suite)."""
    g = cs.group
    if len(sig) != cs.signature_size_bytes:
        return False
    try:
        if cs.bip340:
            rx = int.from_bytes(sig[:32], "big")
            r = SECP256K1.deserialize_element(b"\x02" + sig[:32])
            z = g.deserialize_scalar(sig[32:])
            if public_key[1] & 1:
                return False
        else:
            r = g.deserialize_element(sig[: g.element_size_bytes])
            z = g.deserialize_scalar(sig[g.element_size_bytes:])
    except (DeserializeError, ValueError):
        return False
    c = cs.challenge(r, public_key, msg)
    if cs.bip340:
        point = g.add(g.base_mul(z), g.neg(g.mul(public_key, c)))
        return point is not None and point[0] == rx and point[1] % 2 == 0
    lhs = g.base_mul(z)
    rhs = g.add(r, g.mul(public_key, c))
    if g is ED25519:  # cofactored verification, as RFC 9591 section 6.1 requires
        return g.eq(g.mul(lhs, 8), g.mul(rhs, 8))
    return g.eq(lhs, rhs)


# ------------------------------------------------------------------------ BIP-340 / Taproot keys


def bip340_key_package(kp: ThresholdKeyPackage, *, taproot_merkle_root: bytes | None = None,
                       taproot_tweak: bool = False) -> ThresholdKeyPackage:
    """The same threshold key as an even-Y BIP-340 key, optionally Taproot-tweaked (BIP-341).

    With `taproot_tweak=True` the returned package signs for the output key
    Q = P + int(hashTapTweak(P.x || merkle_root))·G (BIP-86 when merkle_root is empty/None).
    Shares transform as s_i' = g_q·(g_p·s_i + t); since the Lagrange weights of any quorum sum to 1,
    the quorum's combined secret is exactly the tweaked, parity-adjusted key. No share leaves its owner.
    """
    if kp.ciphersuite not in (FROST_SECP256K1_SHA256.name, FROST_SECP256K1_BIP340.name):
        raise ValueError("ciphersuite: BIP-340 output needs a secp256k1 threshold key")
    g = SECP256K1
    n = g.order
    p = kp.group_public_key
    gp = n - 1 if p[1] & 1 else 1
    p_even = g.mul(p, gp)
    t = 0
    if taproot_tweak:
        root = taproot_merkle_root or b""
        t = int.from_bytes(tagged_hash("TapTweak", p_even[0].to_bytes(32, "big") + root), "big")
        if t >= n:
            raise ValueError("taproot tweak overflowed the group order")
    q = g.add(p_even, g.base_mul(t))
    gq = n - 1 if q[1] & 1 else 1
    tg = g.base_mul(t)
    return ThresholdKeyPackage(
        ciphersuite=FROST_SECP256K1_BIP340.name,
        identifier=kp.identifier,
        secret_share=gq * (gp * kp.secret_share + t) % n,
        threshold=kp.threshold,
        group_public_key=g.mul(q, gq),
        verifying_shares={i: g.mul(g.add(g.mul(y, gp), tg), gq) for i, y in kp.verifying_shares.items()},
    )


def taproot_output_key(kp: ThresholdKeyPackage, taproot_merkle_root: bytes | None = None) -> bytes:
    """The 32-byte x-only Taproot output key for this group key (BIP-86 style when no script tree)."""
    return bip340_key_package(kp, taproot_merkle_root=taproot_merkle_root,
                              taproot_tweak=True).group_public_key[0].to_bytes(32, "big")


# ------------------------------------------------------------------- trusted dealer (tests only)


def split_secret(cs: Ciphersuite, secret: int, threshold: int, max_participants: int,
                 coefficients: Iterable[int] | None = None) -> list[ThresholdKeyPackage]:
    """RFC 9591 Appendix C trusted-dealer split. Used to replay the RFC vectors; production keys
    come from the distributed key generation in `dkg.py`, where no party ever holds `secret`."""
    if not 1 <= threshold <= max_participants <= MAX_PARTICIPANTS:
        raise ValueError("threshold: need 1 <= threshold <= max_participants <= 255")
    g = cs.group
    n = g.order
    coeffs = [secret % n] + (list(coefficients) if coefficients is not None
                             else [secrets.randbelow(n) for _ in range(threshold - 1)])
    if len(coeffs) != threshold:
        raise ValueError("coefficients: need exactly threshold-1 coefficients")
    shares = {i: sum(a * pow(i, k, n) for k, a in enumerate(coeffs)) % n for i in range(1, max_participants + 1)}
    vshares = {i: g.base_mul(s) for i, s in shares.items()}
    pk = g.base_mul(coeffs[0])
    return [ThresholdKeyPackage(cs.name, i, s, threshold, pk, vshares) for i, s in shares.items()]
