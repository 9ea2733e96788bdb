"""The cold signer: signs a PSBT with a BIP-32 root key, offline. Never imported by the server.

This is the code that runs on an air-gapped machine (or inside an HSM-backed signer later). It gets
a base64 PSBT, checks it, signs every input whose BIP-32 origin fingerprint matches its root key
(P2WPKH / P2WSH multisig via ECDSA; P2TR key path via BIP-340 Schnorr with the BIP-341 tweak) and
returns the PSBT with its signatures. It has no network access and no knowledge of the chain: all
it trusts is the PSBT's `witness_utxo` values, which BIP-341 commits to for taproot inputs.

Invariants: refuses a PSBT whose outputs exceed its inputs; returns the count of signatures added,
so a signer that matched nothing is visible (0), never silent.
"""

from __future__ import annotations

from embit import bip32
from embit.psbt import PSBT

from ...errors import ValidationError

__all__ = ["sign_psbt", "MAX_PSBT_CHARS"]

MAX_PSBT_CHARS = 2_000_000


def sign_psbt(psbt_b64: str, root_xprv: str) -> tuple[str, int]:
    """Sign with the root extended private key; returns (signed PSBT base64, signatures added)."""
    if not isinstance(psbt_b64, str) or not 0 < len(psbt_b64) <= MAX_PSBT_CHARS:
        raise ValidationError(f"must be a base64 PSBT of at most {MAX_PSBT_CHARS} characters", field="psbt")
    try:
        psbt = PSBT.from_string(psbt_b64)
    except Exception as exc:
        raise ValidationError(f"PSBT does not parse: {exc}", field="psbt") from None
    try:
        root = bip32.HDKey.from_string(root_xprv)
    except Exception:
        raise ValidationError("is not an extended private key", field="root_xprv") from None
    if not root.is_private:
        raise ValidationError("is an extended public key; a signer needs the private key", field="root_xprv")
    total_in = 0
    for i in range(len(psbt.inputs)):
        utxo = psbt.utxo(i)
        if utxo is None:
            raise ValidationError(f"input {i} lacks its spent output (witness_utxo)", field="psbt")
        total_in += utxo.value
    total_out = sum(out.value for out in psbt.tx.vout)
    if total_out > total_in:
        raise ValidationError(f"outputs {total_out} sat exceed inputs {total_in} sat", field="psbt")
    added = psbt.sign_with(root)
    return psbt.to_string(), added
