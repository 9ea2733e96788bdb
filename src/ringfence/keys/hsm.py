"""HSM-held keys over PKCS#11 (SoftHSM2 here, a hardware HSM in production) behind `Signer`.

Keys that must sign alone — the Ethereum hot wallet's secp256k1 ECDSA key, the policy engine's
Ed25519 approval key — are generated *inside* the token with CKA_SENSITIVE=true and
CKA_EXTRACTABLE=false, so the private key never exists outside it; ringfence only ever holds handles.

Segregation of duties: `HsmSigner` (the hot wallet) signs a transfer only with a valid
policy-approval attestation (see `attestation.py`) signed by the policy engine's key, for this key
and this exact digest, unexpired and never used before (a persistent replay register).
`PolicyApprovalKey` is the policy engine's side: it signs attestations with its own token's key.
The two run with different tokens and PINs.

ECDSA output is normalised to low-S (SoftHSM2 returns high-S about half the time) and returned as
r || s || recovery_id (65 bytes), verified with libsecp256k1 before it is returned.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import coincurve

from ..errors import AttestationInvalid, ConfigError, SigningRefused, ValidationError
from .attestation import ApprovalAttestation, issue_attestation, verify_attestation
from .interface import KEY_ID_PATTERN, Scheme, Signature, SigningRequest
from .keylog import KeyOperationLog

__all__ = ["HsmToken", "HsmSigner", "PolicyApprovalKey", "init_softhsm_token", "write_softhsm_config",
           "SOFTHSM_LIBRARY", "low_s"]

SOFTHSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
SECP256K1_OID = "1.3.132.0.10"
ED25519_OID = "1.3.101.112"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def write_softhsm_config(directory: Path) -> Path:
    """A SoftHSM2 config naming a token directory of our own (set SOFTHSM2_CONF to the result)."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    return conf


def init_softhsm_token(conf: Path, label: str, *, so_pin: str, user_pin: str) -> None:
    """Initialise a SoftHSM2 token (development/test ceremony; a hardware HSM has its own)."""
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    res = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin,
                          "--pin", user_pin], env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ConfigError(f"softhsm2-util could not initialise token {label!r}", field="token_label",
                          exit_code=res.returncode)


def low_s(sig64: bytes) -> bytes:
    r, s = int.from_bytes(sig64[:32], "big"), int.from_bytes(sig64[32:], "big")
    if s > SECP256K1_N // 2:
        s = SECP256K1_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class HsmToken:
    """An open PKCS#11 session on one token. Sessions are not shared across threads without the lock."""

    def __init__(self, token_label: str, user_pin: str, *, library: str = SOFTHSM_LIBRARY) -> None:
        import pkcs11

        if not user_pin:
            raise ConfigError("an HSM user PIN is required", field="user_pin")
        self._pkcs11 = pkcs11
        try:
            self._token = pkcs11.lib(library).get_token(token_label=token_label)
            self._session = self._token.open(rw=True, user_pin=user_pin)
        except (pkcs11.exceptions.PKCS11Error, RuntimeError) as exc:
            raise ConfigError(f"cannot open HSM token {token_label!r} ({exc.__class__.__name__})",
                              field="token_label") from None
        self.label = token_label
        self.lock = threading.Lock()

    def close(self) -> None:
        self._session.close()

    def generate(self, key_id: str, curve: str) -> bytes:
        """Generate a non-extractable key pair inside the token; return the public key bytes."""
        from pkcs11 import Attribute, KeyType, Mechanism
        from pkcs11.util.ec import encode_named_curve_parameters

        if not KEY_ID_PATTERN.match(key_id):
            raise ValidationError("must match [a-z0-9][a-z0-9._:-]{0,63}", field="key_id")
        if self._find(key_id, public=False, missing_ok=True) is not None:
            raise ValidationError("a key with this label already exists in the token", field="key_id")
        priv_tmpl = {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.TOKEN: True,
                     Attribute.SIGN: True}
        with self.lock:
            if curve == "secp256k1":
                params = self._session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(SECP256K1_OID)}, local=True)
                params.generate_keypair(store=True, label=key_id, private_template=priv_tmpl)
            elif curve == "ed25519":
                params = self._session.create_domain_parameters(
                    KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)}, local=True)
                params.generate_keypair(store=True, label=key_id, private_template=priv_tmpl,
                                        mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
            else:
                raise ValidationError("must be secp256k1 or ed25519", field="curve")
        return self.public_key(key_id)

    def _find(self, key_id: str, *, public: bool, missing_ok: bool = False):  # type: ignore[no-untyped-def]
        from pkcs11 import ObjectClass

        cls = ObjectClass.PUBLIC_KEY if public else ObjectClass.PRIVATE_KEY
        with self.lock:
            found = list(self._session.get_objects({self._pkcs11.Attribute.CLASS: cls,
                                                    self._pkcs11.Attribute.LABEL: key_id}))
        if not found:
            if missing_ok:
                return None
            raise ValidationError(f"no key {key_id!r} in HSM token {self.label!r}", field="key_id")
        return found[0]

    def public_key(self, key_id: str) -> bytes:
        """Compressed secp256k1 (33 bytes) or raw Ed25519 (32 bytes) public key."""
        from pkcs11 import Attribute

        pub = self._find(key_id, public=True)
        with self.lock:
            point = bytes(pub[Attribute.EC_POINT])
        raw = point[2:] if point[0] == 0x04 and point[1] == len(point) - 2 else point  # strip DER OCTET STRING
        if len(raw) == 65:
            return coincurve.PublicKey(raw).format(compressed=True)
        return raw

    def is_extractable(self, key_id: str) -> bool:
        from pkcs11 import Attribute

        priv = self._find(key_id, public=False)
        with self.lock:
            return bool(priv[Attribute.EXTRACTABLE]) or not bool(priv[Attribute.SENSITIVE])

    def raw_sign(self, key_id: str, data: bytes, curve: str) -> bytes:
        from pkcs11 import Mechanism

        priv = self._find(key_id, public=False)
        with self.lock:
            return bytes(priv.sign(data, mechanism=Mechanism.ECDSA if curve == "secp256k1" else Mechanism.EDDSA))


class PolicyApprovalKey:
    """The policy engine's approval key (Ed25519, in its own token). Signs attestations only."""

    def __init__(self, token: HsmToken, key_id: str, *, log: KeyOperationLog | None = None) -> None:
        self.token, self.key_id, self.log = token, key_id, log

    def public_key(self) -> bytes:
        return self.token.public_key(self.key_id)

    def approve(self, *, attestation_id: str, key_id: str, transfer_digest: bytes, now_ms: int, validity_ms: int,
                decided_by: str, reason: str) -> ApprovalAttestation:
        att = issue_attestation(lambda m: self.token.raw_sign(self.key_id, m, "ed25519"), attestation_id=attestation_id,
                                key_id=key_id, transfer_digest=transfer_digest, issued_at_ms=now_ms,
                                validity_ms=validity_ms, issued_by=decided_by)
        if self.log:
            self.log.append(actor=decided_by, action="policy_approve", key_id=key_id, reason=reason,
                            attestation_id=attestation_id)
        return att


class HsmSigner:
    """`Signer` for HSM-held ECDSA keys; signs only with a valid, unused policy-approval attestation."""

    def __init__(self, token: HsmToken, *, policy_public_key: bytes, replay_db: Path, log: KeyOperationLog,
                 clock_ms: Callable[[], int] | None = None, name: str = "hsm-signer") -> None:
        if len(policy_public_key) != 32:
            raise ConfigError("policy public key must be a 32-byte Ed25519 key", field="policy_public_key")
        self.token = token
        self.policy_public_key = policy_public_key
        self.log = log
        self.name = name
        self._clock = clock_ms or (lambda: int(time.time() * 1000))
        self._db = sqlite3.connect(str(replay_db), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS used_attestations (attestation_id TEXT PRIMARY KEY,"
                         " request_id TEXT NOT NULL, used_ms INTEGER NOT NULL)")
        self._db_lock = threading.Lock()

    def public_key(self, key_id: str, scheme: Scheme = Scheme.ECDSA_SECP256K1) -> bytes:
        return self.token.public_key(key_id)

    def _refuse(self, request: SigningRequest, exc: SigningRefused) -> SigningRefused:
        self.log.append(actor=self.name, action="hsm_refused", key_id=request.key_id,
                        reason=f"request {request.request_id}: {exc.code}", requested_by=request.requested_by)
        return exc

    def sign(self, request: SigningRequest) -> Signature:
        if request.scheme is not Scheme.ECDSA_SECP256K1:
            raise ValidationError("HSM signer signs ecdsa-secp256k1 only", field="scheme")
        try:
            att = verify_attestation(request.approval, self.policy_public_key, key_id=request.key_id,
                                     digest=request.digest, now_ms=self._clock())
        except AttestationInvalid as exc:
            raise self._refuse(request, exc) from None
        with self._db_lock:
            try:
                self._db.execute("INSERT INTO used_attestations VALUES (?,?,?)",
                                 (att.attestation_id, request.request_id, self._clock()))
            except sqlite3.IntegrityError:
                raise self._refuse(request, AttestationInvalid("this attestation was already used", field="approval",
                                                               reason="replayed")) from None
        sig = low_s(self.token.raw_sign(request.key_id, request.digest, "secp256k1"))
        pub = self.token.public_key(request.key_id)
        recid = next((v for v in range(2) if coincurve.PublicKey.from_signature_and_message(
            sig + bytes([v]), request.digest, hasher=None).format() == pub), None)
        if recid is None:
            raise SigningRefused("HSM signature did not verify under the key's public key", field="key_id")
        self.log.append(actor=self.name, action="hsm_sign", key_id=request.key_id,
                        reason=f"request {request.request_id}: {request.reason}", requested_by=request.requested_by,
                        attestation_id=att.attestation_id, approved_by=att.issued_by)
        return Signature(request.key_id, request.scheme, sig + bytes([recid]), pub, (f"hsm:{self.token.label}",))
