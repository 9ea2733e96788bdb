"""The HSM as its own process: PKCS#11 tokens (SoftHSM2 here, a network HSM in production) behind a
Unix socket, so the process that decides what to pay (`serve`) never loads the tokens' library and
never has a key's bytes in its memory, not even while a signature is made.

Run (serve starts it, see `custody/eth_hsm.py`):
    python -m ringfence.keys.hsm_server --dir DIR/hsm --socket DIR/hsm/hsm.sock

On first start it initialises eight tokens in DIR (its own SoftHSM2 config, `DIR/tokens`):
`rf-eth-hot` (the Ethereum hot wallet's secp256k1 key `eth-hot`), `rf-eth-vaults` (the Ethereum cold
wallet's `eth-cold` and the shield vault's `eth-shield`), `rf-eth-deposits` and `rf-btc-deposits`
(one key per deposit address, `dep-eth-<32 hex>` / `dep-bit-<32 hex>`, generated on request when the
address is assigned), `rf-btc-shield-0`, `-1`, `-2` (one key each, `btc-shield-N`: the three keys of
the Bitcoin shield vault, a P2WSH 2-of-3 multisig; a token of its own per key, each with its own PIN)
and `rf-policy`
(the policy side's Ed25519 attestation key `policy-approval`). Every key is generated inside its
token (CKA_SENSITIVE, not extractable); each token has its own PIN (`DIR/*.pin`, mode 0600, read
only by this process). Later starts open the same tokens: the keys, and so the addresses, stay.

One JSON request per connection, answered with one JSON object (at most 64 KiB each way):
  {"op": "public_keys"}                 -> {"eth-hot": HEX33, "eth-cold": HEX33, "eth-shield": HEX33,
                                            "btc-shield-0".."-2": HEX33, "policy-approval": HEX32}
  {"op": "deposit_key", "key_id"}       -> {"public_key": HEX33} (generated in its chain's deposit token if missing)
  {"op": "attest", "key_id", "digest", "attestation_id", "decided_by", "reason"}
                                        -> {"attestation": {...}} (the policy key signs the policy side's yes)
  {"op": "sign", "key_id", "request_id", "digest", "requested_by", "reason", "approval": {...}}
                                        -> {"signature": HEX65, "public_key": HEX33, "signers": [...]}
`sign` goes through `HsmSigner`: refused unless the attestation is the policy key's, for exactly
this digest and key, unexpired and never used before (replay register `DIR/replay.sqlite`). Errors
are `{"error": {"code", "message", "field"}}`. Every signature and refusal is in `DIR/keyops.jsonl`.
The socket is created mode 0600 inside a 0700 directory: only the exchange's own user reaches it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import socketserver
import subprocess
import threading
from pathlib import Path
from typing import Any

from ..errors import RingfenceError, ValidationError

__all__ = ["main", "HOT_TOKEN", "VAULT_TOKEN", "DEPOSIT_TOKEN", "POLICY_TOKEN", "HOT_KEY_ID", "COLD_KEY_ID",
           "SHIELD_KEY_ID", "BTC_SHIELD_KEY_IDS", "BTC_SHIELD_TOKENS", "POLICY_KEY_ID", "DEPOSIT_KEY", "MAX_MESSAGE_BYTES", "TOKEN_OF_KEY"]

HOT_TOKEN, VAULT_TOKEN, DEPOSIT_TOKEN, POLICY_TOKEN = "rf-eth-hot", "rf-eth-vaults", "rf-eth-deposits", "rf-policy"
BTC_DEPOSIT_TOKEN = "rf-btc-deposits"
HOT_KEY_ID, COLD_KEY_ID, SHIELD_KEY_ID, POLICY_KEY_ID = "eth-hot", "eth-cold", "eth-shield", "policy-approval"
#: The Bitcoin shield vault's three keys (wsh(sortedmulti(2, k0, k1, k2))), each in a token of its own.
BTC_SHIELD_KEY_IDS = ("btc-shield-0", "btc-shield-1", "btc-shield-2")
BTC_SHIELD_TOKENS = tuple(f"rf-{k}" for k in BTC_SHIELD_KEY_IDS)
#: Which token holds each fixed wallet key (generated on the first start).
TOKEN_OF_KEY = {HOT_KEY_ID: HOT_TOKEN, COLD_KEY_ID: VAULT_TOKEN, SHIELD_KEY_ID: VAULT_TOKEN,
                **dict(zip(BTC_SHIELD_KEY_IDS, BTC_SHIELD_TOKENS))}
#: A deposit address's key label (the client hashes the account's key id into it), per chain.
DEPOSIT_KEY = re.compile(r"^dep-(eth|bit)-[0-9a-f]{32}$")
MAX_MESSAGE_BYTES = 65_536
ATTESTATION_VALIDITY_MS = 60_000


def _pin(directory: Path, name: str) -> str:
    path = directory / f"{name}.pin"
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


class _Tokens:
    """The open tokens, one attestation-gated signer per wallet token, and the policy key."""

    def __init__(self, directory: Path) -> None:
        from .hsm import HsmSigner, HsmToken, PolicyApprovalKey, init_softhsm_token, write_softhsm_config
        from .keylog import KeyOperationLog

        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        conf = write_softhsm_config(directory)
        os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the library when it is first loaded, below
        # idempotent: a start cut short anywhere is finished by the next. The tokens are made before the
        # PKCS#11 library is loaded here (it lists the slots once, when it is loaded).
        show = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True, check=False,
                              env={**os.environ, "SOFTHSM2_CONF": str(conf)})
        labels = (HOT_TOKEN, VAULT_TOKEN, DEPOSIT_TOKEN, BTC_DEPOSIT_TOKEN, *BTC_SHIELD_TOKENS, POLICY_TOKEN)
        pins = {label: _pin(directory, label) for label in labels}
        for label, pin in pins.items():
            if not re.search(rf"Label:\s+{re.escape(label)}\s*$", show.stdout, re.M):
                init_softhsm_token(conf, label, so_pin=secrets.token_urlsafe(18), user_pin=pin)
        self.tokens = {label: HsmToken(label, pins[label]) for label in labels}
        self.policy = self.tokens[POLICY_TOKEN]
        wanted = [(self.tokens[t], k, "secp256k1") for k, t in TOKEN_OF_KEY.items()] + [(self.policy, POLICY_KEY_ID, "ed25519")]
        for token, key_id, curve in wanted:
            if token._find(key_id, public=False, missing_ok=True) is None:
                token.generate(key_id, curve)
        log = KeyOperationLog(directory / "keyops.jsonl")
        self.policy_key = PolicyApprovalKey(self.policy, POLICY_KEY_ID, log=log)
        self.signers = {label: HsmSigner(self.tokens[label], policy_public_key=self.policy_key.public_key(),
                                         replay_db=directory / "replay.sqlite", log=log, name=f"hsm-{label[3:]}")
                        for label in (HOT_TOKEN, VAULT_TOKEN, DEPOSIT_TOKEN, BTC_DEPOSIT_TOKEN, *BTC_SHIELD_TOKENS)}
        self._generating = threading.Lock()

    @staticmethod
    def token_of(key_id: str) -> str:
        if key_id in TOKEN_OF_KEY:
            return TOKEN_OF_KEY[key_id]
        m = DEPOSIT_KEY.match(key_id)
        if m:
            return DEPOSIT_TOKEN if m.group(1) == "eth" else BTC_DEPOSIT_TOKEN
        raise ValidationError(f"must be one of {', '.join(TOKEN_OF_KEY)} or dep-eth-/dep-bit-<32 hex>", field="key_id")

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        import time

        from .attestation import ApprovalAttestation
        from .interface import Scheme, SigningRequest

        op = req.get("op")
        if op == "public_keys":
            out = {k: self.tokens[t].public_key(k).hex() for k, t in TOKEN_OF_KEY.items()}
            return {**out, POLICY_KEY_ID: self.policy_key.public_key().hex()}
        key_id = _text(req, "key_id") if op != "sign" or "key_id" in req else HOT_KEY_ID
        token = self.token_of(key_id)
        if op == "deposit_key":
            if token not in (DEPOSIT_TOKEN, BTC_DEPOSIT_TOKEN):
                raise ValidationError("must be a deposit key (dep-eth-/dep-bit-<32 hex>)", field="key_id")
            deposits = self.tokens[token]
            with self._generating:  # two first requests for one address make one key
                if deposits._find(key_id, public=False, missing_ok=True) is None:
                    deposits.generate(key_id, "secp256k1")
            return {"public_key": deposits.public_key(key_id).hex()}
        if self.tokens[token]._find(key_id, public=False, missing_ok=True) is None:
            raise ValidationError(f"no key {key_id!r} in token {token}", field="key_id")
        digest = _hex(req, "digest")
        if op == "attest":
            att = self.policy_key.approve(attestation_id=_text(req, "attestation_id"), key_id=key_id, transfer_digest=digest,
                                          now_ms=time.time_ns() // 1_000_000, validity_ms=ATTESTATION_VALIDITY_MS,
                                          decided_by=_text(req, "decided_by"), reason=_text(req, "reason"))
            return {"attestation": att.to_dict()}
        if op == "sign":
            approval = req.get("approval")
            given = ApprovalAttestation.from_dict(approval) if isinstance(approval, dict) else None
            sig = self.signers[token].sign(SigningRequest(_text(req, "request_id"), key_id, digest, Scheme.ECDSA_SECP256K1,
                                                          _text(req, "requested_by"), _text(req, "reason"), given))
            return {"signature": sig.signature.hex(), "public_key": sig.public_key.hex(), "signers": list(sig.signers)}
        raise ValidationError("must be public_keys, deposit_key, attest or sign", field="op")


def _text(req: dict[str, Any], name: str) -> str:
    value = req.get(name)
    if not isinstance(value, str) or not value:
        raise ValidationError("a non-empty string is required", field=name)
    return value


def _hex(req: dict[str, Any], name: str) -> bytes:
    try:
        return bytes.fromhex(_text(req, name))
    except ValueError:
        raise ValidationError("hexadecimal bytes are required", field=name) from None


class _Handler(socketserver.StreamRequestHandler):
    tokens: _Tokens

    def handle(self) -> None:
        line = self.rfile.readline(MAX_MESSAGE_BYTES + 1)
        try:
            if len(line) > MAX_MESSAGE_BYTES:
                raise ValidationError(f"a request is at most {MAX_MESSAGE_BYTES} bytes", field="request")
            try:
                req = json.loads(line)
            except ValueError:
                raise ValidationError("one JSON object per line", field="request") from None
            if not isinstance(req, dict):
                raise ValidationError("one JSON object per line", field="request")
            out = self.tokens.answer(req)
        except RingfenceError as exc:
            out = {"error": exc.to_dict()}
        self.wfile.write(json.dumps(out).encode() + b"\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="ringfence HSM process: the Ethereum wallet keys (hot, cold, shield, deposit addresses), the Bitcoin deposit and shield vault keys and the policy key in PKCS#11 tokens. "
                                "Example: python -m ringfence.keys.hsm_server --dir ./data/custody/hsm --socket ./data/custody/hsm/hsm.sock")
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--socket", required=True, type=Path)
    args = p.parse_args(argv)
    args.dir, args.socket = args.dir.resolve(), args.socket.resolve()  # the process changes directory below
    _Handler.tokens = _Tokens(args.dir)
    args.socket.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        os.chdir(args.socket.parent)  # bound by its name: a Unix socket path is at most 107 bytes, a data dir may be longer
        # bound and listening under a temporary name, then renamed into place: a client that sees the
        # socket file (EthHotHsm.wait_ready waits for it) always finds it listening. Bound under its
        # own name, the file existed a moment before listen(), and a client under load was refused.
        pending = f".{args.socket.name}.{os.getpid()}"
        Path(pending).unlink(missing_ok=True)
        server = socketserver.UnixStreamServer(pending, _Handler)
        os.rename(pending, args.socket.name)
    finally:
        os.umask(old)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    print(f"hsm ready on {args.socket}", flush=True)
    with server:
        server.serve_forever()


if __name__ == "__main__":
    main()
