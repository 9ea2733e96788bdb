"""Custody signing: threshold Schnorr (FROST), HSM-held keys, multisig cold storage, segregation of duties.

Everything signs behind one narrow interface, `interface.Signer.sign(SigningRequest) -> Signature`.

- `frost`, `dkg`, `groups`: a REFERENCE FROST implementation (RFC 9591) — NOT CONSTANT-TIME, not audited;
  swap it for a hardened library behind `Signer` before it guards real funds.
- `signer_node`, `signer_server`, `coordinator`: each FROST signer as its own process with its own
  encrypted share store (`share_store`) and single-use nonce store (`nonce_store`), driven over HTTP.
- `taproot`: BIP-341 key-path spends by a FROST key.
- `hsm`: PKCS#11 (SoftHSM2 here) keys that never leave the token; signs only with a policy attestation.
- `multisig`: P2WSH M-of-N cold storage with PSBTs and a randomly nominated, re-checkable quorum.
- `duties`, `keylog`, `ceremony`, `cli`: roles, the key-operation journal, and key ceremonies.

Submodules are imported on use, so importing this package stays cheap.
"""

from .interface import Scheme, Signature, Signer, SigningRequest

__all__ = ["Scheme", "Signature", "Signer", "SigningRequest"]
