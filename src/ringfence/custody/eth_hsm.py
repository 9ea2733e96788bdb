"""The Ethereum wallets of `serve`, signed in the HSM behind the policy attestation (issue 16, item 3).

`EthHotHsm` is the `Signer` for every Ethereum key of the exchange: the hot wallet `eth-hot`, the
cold wallet `eth-cold`, the shield vault `eth-shield` and one key per deposit address
(`dep-eth-ACCOUNT`, whose token label is `dep-eth-` + 32 hex of its hash). The keys live in PKCS#11
tokens held by their own process (`keys/hsm_server.py`, started here); `serve` only ever sends
digests and gets signatures back, and no whole key of these wallets is in its memory. The HSM
process signs a digest only with a policy-approval attestation for exactly that digest and key
(signed by the policy key in a fourth token, unexpired, never used before).

The policy side runs here, because it reads the journaled engine state: before asking for an
attestation it rebuilds the transaction's digest from its fields and says yes only if
* `eth-hot`: its destination (for an ERC-20 `transfer`, the token's recipient) is a withdrawal the
  engine has in state `signing`, with the same address, asset, amount and nonce; or it is one of
  the exchange's own wallets (a registered wallet or an assigned deposit address: shield sweeps,
  hot -> cold rebalancing, gas top-ups of deposit addresses);
* a deposit key: the key's address is an assigned deposit address and the destination is the hot
  wallet `eth_hot` (a sweep; nothing else ever leaves a deposit address);
* `eth-cold`: the engine holds a rebalance from `eth_cold` to `eth_hot` in state `authorized`
  (`AuthorizeRebalance`, checked against the policy's band) for exactly this asset and amount;
* `eth-shield`: never a payment (no flow of `serve` spends from the shield vault);
* `btc-shield-0`, `-1`, `-2` (the Bitcoin shield vault, P2WSH 2-of-3, one key per token): never a
  payment either (neither `attest_payment` nor `attest_btc_input` approves them), only the proof of
  reserves' message naming the vault's address; two of the three sign each snapshot;
* a message: the proof of reserves' ownership message (EIP-191) naming the key's own address.
Anything else is refused (`RF_SIGNING_REFUSED`) and the HSM never sees an attestation for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import AttestationInvalid, ConfigError, RingfenceError, SignerUnavailable, SigningRefused, ValidationError
from ..keys.attestation import ApprovalAttestation
from ..keys.interface import Scheme, Signature, SigningRequest

__all__ = ["EthHotHsm", "KEY_ID", "BTC_SHIELD_KEY_IDS", "shield_btc_script"]

KEY_ID = "eth-hot"
COLD_KEY_ID, SHIELD_KEY_ID = "eth-cold", "eth-shield"
#: The Bitcoin shield vault's three keys (P2WSH 2-of-3), each generated in a token of its own.
BTC_SHIELD_KEY_IDS = ("btc-shield-0", "btc-shield-1", "btc-shield-2")
#: The fixed keys and the wallet each one signs for.
WALLET_OF_KEY = {KEY_ID: "eth_hot", COLD_KEY_ID: "eth_cold", SHIELD_KEY_ID: "shield_eth",
                 **{k: "shield_btc" for k in BTC_SHIELD_KEY_IDS}}
MAX_DEPOSIT_KEYS = 1_000_000  # a bound on the address cache (one entry per deposit address)
_ERC20_TRANSFER = bytes.fromhex("a9059cbb")
_POR_MESSAGE = re.compile(r"^ringfence proof of reserves\nsnapshot: [0-9a-f]{1,128}\nchain: (ethereum|bitcoin)\naddress: ([0-9a-zA-Z]{1,90})$")
_ERRORS: dict[str, type[RingfenceError]] = {"RF_ATTESTATION_INVALID": AttestationInvalid, "RF_VALIDATION": ValidationError}


class EthHotHsm:
    """`Signer` for the Ethereum keys through the HSM process, with the policy side's checks (module doc)."""

    signer_type = "hsm secp256k1 (PKCS#11 token rf-eth-hot in its own process), signs only with a policy attestation"
    cold_signer_type = ("hsm secp256k1 (PKCS#11 token rf-eth-vaults in its own process), signs only a rebalance the "
                        "engine authorized, with a policy attestation")
    shield_signer_type = ("hsm secp256k1 (PKCS#11 token rf-eth-vaults in its own process), signs only the proof of "
                          "reserves' message, with a policy attestation")
    shield_btc_signer_type = ("hsm secp256k1 p2wsh 2-of-3 multisig, each of its three keys generated in a PKCS#11 token "
                              "of its own (rf-btc-shield-0, -1, -2) in the HSM process; signs only the proof of "
                              "reserves' message, with a policy attestation; never a payment")
    deposit_signer_type = ("hsm secp256k1, one key per address generated in PKCS#11 token rf-eth-deposits in its own "
                           "process; signs only sweeps to eth_hot, with a policy attestation")
    btc_deposit_signer_type = ("hsm secp256k1, one key per address generated in PKCS#11 token rf-btc-deposits in its own "
                               "process; signs only sweeps to btc_hot, with a policy attestation")

    def __init__(self, directory: Path, *, timeout_s: int = 60) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.socket_path = self.dir / "hsm.sock"
        self._log = open(self.dir / "hsm.log", "ab")
        self.timeout_s = timeout_s
        self.node: Any = None  # the engine the policy side reads (`CustodyRuntime.start` sets it)
        self.address = ""
        self.restarts = 0
        self._public = b""
        self._keys: dict[str, bytes] = {}  # key id -> compressed public key (fixed keys and deposit keys)
        self._restarting = threading.Lock()
        self._spawn()

    def _spawn(self) -> None:
        from .btc_signing import spawn_child

        self.socket_path.unlink(missing_ok=True)
        self.proc = spawn_child([sys.executable, "-m", "ringfence.keys.hsm_server", "--dir", str(self.dir),
                                 "--socket", str(self.socket_path)], stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> "EthHotHsm":
        """Wait for the HSM process's socket and read the keys (it starts while the chains load)."""
        from .wallets import eth_address, p2wsh_address

        deadline = time.monotonic() + self.timeout_s
        while not self.socket_path.exists():
            if self.proc.poll() is not None:
                raise ConfigError(f"the HSM process exited with {self.proc.returncode}; see {self.dir / 'hsm.log'}", field="hsm")
            if time.monotonic() > deadline:
                raise ConfigError(f"the HSM process did not start within {self.timeout_s} s", field="hsm")
            time.sleep(0.05)
        while True:
            try:
                keys = self._call({"op": "public_keys"})
                break
            except SignerUnavailable:
                # the socket's file appears when the process binds it, a moment before it listens: a connection
                # in between is refused (seen on a loaded machine); any other failure ends the wait at its deadline
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if self.address and any(bytes.fromhex(keys[k]) != self._keys[k] for k in WALLET_OF_KEY):
            raise ConfigError("the HSM process came back with other wallet keys", field="hsm")
        self._public = bytes.fromhex(keys[KEY_ID])
        self._keys.update({k: bytes.fromhex(keys[k]) for k in WALLET_OF_KEY})
        self.cold_address = eth_address(self._keys[COLD_KEY_ID])
        self.shield_address = eth_address(self._keys[SHIELD_KEY_ID])
        self.shield_btc_script = shield_btc_script([self._keys[k] for k in BTC_SHIELD_KEY_IDS])
        self.shield_btc_address = p2wsh_address(self.shield_btc_script)
        self.policy_public_key = bytes.fromhex(keys["policy-approval"])
        self.address = eth_address(self._public)
        record = {"address": self.address, "public_key": self._public.hex(), "key_id": KEY_ID, "token": "rf-eth-hot",
                  "policy_public_key": self.policy_public_key.hex(),
                  "cold": {"address": self.cold_address, "public_key": self._keys[COLD_KEY_ID].hex(), "token": "rf-eth-vaults"},
                  "shield": {"address": self.shield_address, "public_key": self._keys[SHIELD_KEY_ID].hex(),
                             "token": "rf-eth-vaults"},
                  "shield_btc": {"address": self.shield_btc_address, "witness_script": self.shield_btc_script.hex(),
                                 "keys": {k: {"public_key": self._keys[k].hex(), "token": f"rf-{k}"} for k in BTC_SHIELD_KEY_IDS}}}
        tmp = self.dir.parent / ".eth-hot.json.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(self.dir.parent / "eth-hot.json")  # what operators and tests read: DIR/custody/eth-hot.json
        return self

    # ---- the HSM process

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.address and self.proc.poll() is not None:  # the HSM process died: start it again (same tokens)
            with self._restarting:
                if self.proc.poll() is not None:
                    if self.restarts >= 10:
                        raise SignerUnavailable(f"the HSM process keeps exiting ({self.proc.returncode}); see "
                                                f"{self.dir / 'hsm.log'}", field="hsm")
                    self.restarts += 1
                    self._spawn()
                    self.wait_ready()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(30)
                if len(str(self.socket_path)) < 100:
                    s.connect(str(self.socket_path))
                else:  # a Unix socket path is at most 107 bytes: reach it through an open descriptor of its directory
                    fd = os.open(self.dir, os.O_RDONLY)
                    try:
                        s.connect(f"/proc/self/fd/{fd}/{self.socket_path.name}")
                    finally:
                        os.close(fd)
                s.sendall(json.dumps(request).encode() + b"\n")
                with s.makefile("rb") as fh:
                    answer = json.loads(fh.readline(1 << 17) or b"{}")
        except (OSError, ValueError) as exc:
            raise SignerUnavailable(f"the HSM process did not answer ({exc.__class__.__name__})", field="hsm") from None
        if "error" in answer:
            err = answer["error"]
            raise _ERRORS.get(err.get("code", ""), SigningRefused)(err.get("message"), field=err.get("field"))
        return answer  # type: ignore[no-any-return]

    @staticmethod
    def label(key_id: str) -> str:
        """The token label of a key id (a deposit key's id holds an account id: hashed into the label)."""
        if key_id in WALLET_OF_KEY:
            return key_id
        if key_id.startswith(("dep-eth-", "dep-bit-")):
            return key_id[:8] + hashlib.sha256(key_id.encode()).hexdigest()[:32]
        raise ValidationError(f"the HSM holds {', '.join(WALLET_OF_KEY)}, dep-eth-* and dep-bit-* only", field="key_id")

    def public_key(self, key_id: str, scheme: Scheme = Scheme.ECDSA_SECP256K1) -> bytes:
        """A key's public key; a deposit key is generated in the token on first use (its address is assigned)."""
        pub = self._keys.get(key_id)
        if pub is None:
            label = self.label(key_id)
            if len(self._keys) >= MAX_DEPOSIT_KEYS:
                self._keys = {k: v for k, v in self._keys.items() if k in WALLET_OF_KEY}
            pub = self._keys[key_id] = bytes.fromhex(self._call({"op": "deposit_key", "key_id": label})["public_key"])
        return pub

    def deposit_address(self, account_id: str) -> str:
        from .wallets import eth_address

        return eth_address(self.public_key(f"dep-eth-{account_id}"))

    def sign(self, request: SigningRequest) -> Signature:
        if request.scheme is not Scheme.ECDSA_SECP256K1:
            raise ValidationError("the HSM signs ecdsa-secp256k1 only", field="scheme")
        public = self.public_key(request.key_id)
        out = self._call({"op": "sign", "key_id": self.label(request.key_id), "request_id": request.request_id,
                          "digest": request.digest.hex(), "requested_by": request.requested_by, "reason": request.reason,
                          "approval": request.approval.to_dict() if request.approval is not None else None})
        sig = bytes.fromhex(out["signature"])
        import coincurve

        recovered = coincurve.PublicKey.from_signature_and_message(sig, request.digest, hasher=None).format()
        if recovered != public:
            raise SigningRefused(f"the HSM's signature does not recover the key {request.key_id}", field="key_id")
        return Signature(request.key_id, request.scheme, sig, public, tuple(out["signers"]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    # ---- the policy side

    def _attest(self, key_id: str, digest: bytes, why: str) -> ApprovalAttestation:
        out = self._call({"op": "attest", "key_id": self.label(key_id), "digest": digest.hex(),
                          "attestation_id": f"att-{secrets.token_hex(8)}", "decided_by": "custody-policy", "reason": why[:200]})
        return ApprovalAttestation.from_dict(out["attestation"])

    def attest_payment(self, adapter: Any, params: dict[str, Any], digest: bytes, key_id: str = KEY_ID) -> ApprovalAttestation:
        """The policy's yes for a transaction from one of the Ethereum wallets (`wallets.build_eth_payment` asks)."""
        from .state import custody_state
        from .wallets import eth_address, eth_signing_digest

        if eth_signing_digest(adapter, **params) != digest:
            raise SigningRefused("the digest is not the transaction's", field="digest")
        self.label(key_id)  # a key of this HSM, or refused
        to, value, data = str(params["to"]).lower(), int(params["value_wei"]), bytes(params.get("data") or b"")
        asset = "ETH"
        if data:
            if len(data) != 68 or data[:4] != _ERC20_TRANSFER or value != 0:
                raise SigningRefused("an exchange wallet calls nothing but an ERC-20 transfer", field="data")
            tokens = {adapter.token(a).contract.lower(): a for a in self._assets() if a != "ETH"}
            if to not in tokens:
                raise SigningRefused("not a token contract of a custodied asset", field="to")
            asset, to, value = tokens[to], "0x" + data[16:36].hex(), int.from_bytes(data[36:], "big")
        source = eth_address(self.public_key(key_id)).lower()

        def wallet_address(s: Any, name: str) -> str | None:
            w = s.wallets.get(name)
            return w.addresses[0].lower() if w is not None and w.addresses else None

        def decide_hot(engine: Any) -> str | None:
            s = custody_state(engine)
            for w in s.withdrawals.values():
                if (w.state == "signing" and w.asset == asset and w.address.lower() == to and w.amount_minor == value
                        and w.nonce == int(params["nonce"])):
                    return f"withdrawal {w.id} approved by policy"
            if s.owner_of("ethereum", to) is not None:
                return f"internal move of {asset} to deposit address {to}"
            for wallet in s.wallets.values():
                if wallet.chain == "ethereum" and to in {a.lower() for a in wallet.addresses}:
                    return f"internal move of {asset} to wallet {wallet.name}"
            return None

        def decide_deposit(engine: Any) -> str | None:
            s = custody_state(engine)
            if s.owner_of("ethereum", source) is None:
                return None
            return f"sweep of {asset} from deposit address {source} to eth_hot" if to == wallet_address(s, "eth_hot") else None

        def decide_cold(engine: Any) -> str | None:
            s = custody_state(engine)
            if to != wallet_address(s, "eth_hot") or source != wallet_address(s, "eth_cold"):
                return None
            for t in s.transfers.values():
                if (t.state == "authorized" and t.asset == asset and t.from_wallet == "eth_cold" and t.to_wallet == "eth_hot"
                        and t.amount_minor == value):
                    return f"rebalance {t.id} authorized by the engine"
            return None

        if key_id == KEY_ID:
            why = self.node.read(decide_hot)
        elif key_id.startswith("dep-eth-"):
            why = self.node.read(decide_deposit)
        elif key_id == COLD_KEY_ID:
            why = self.node.read(decide_cold)
        else:
            why = None  # the shield vault: no flow of serve pays out of it
        if why is None and key_id == KEY_ID:
            raise SigningRefused(f"no withdrawal in state signing pays {value} {asset} to {to}, and it is no wallet of "
                                 "the exchange", field="to")
        if why is None:
            raise SigningRefused(f"{key_id}: no decision of the engine pays {value} {asset} from {source} to {to}", field="to")
        return self._attest(key_id, digest, why)

    def attest_message(self, message: str, digest: bytes, key_id: str = KEY_ID) -> ApprovalAttestation:
        """The policy's yes for the proof of reserves' ownership message of the key's own address
        (EIP-191 on Ethereum, the Bitcoin signed-message hash for a Bitcoin deposit key); a key of the
        Bitcoin shield vault signs the message naming the vault's P2WSH address."""
        from eth_utils import keccak

        from ..solvency.reserves import bitcoin_message_hash
        from .wallets import eth_address, p2wpkh_address

        m = _POR_MESSAGE.match(message)
        bitcoin = key_id.startswith("dep-bit-") or key_id in BTC_SHIELD_KEY_IDS
        if key_id in BTC_SHIELD_KEY_IDS:
            own = self.shield_btc_address
        else:
            own = p2wpkh_address(self.public_key(key_id)) if bitcoin else eth_address(self.public_key(key_id)).lower()
        if (m is None or m.group(1) != ("bitcoin" if bitcoin else "ethereum")
                or (m.group(2) if bitcoin else m.group(2).lower()) != own):
            raise SigningRefused("an HSM key signs only the proof of reserves' message for its address", field="message")
        data = message.encode()
        want = bitcoin_message_hash(message) if bitcoin else keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)
        if want != digest:
            raise SigningRefused("the digest is not the message's", field="digest")
        return self._attest(key_id, digest, "proof of reserves")

    def attest_btc_input(self, adapter: Any, tx: Any, amount_sat: int, index: int, key_id: str, digest: bytes) -> ApprovalAttestation:
        """The policy's yes for input `index` of a sweep out of a Bitcoin deposit address
        (`wallets.build_btc_payment` asks): the digest is that input's BIP-143 sighash of `tx`, the key's
        address is a deposit address the engine assigned, and every output pays the hot wallet `btc_hot`."""
        from bitcointx.core.script import CScript, OP_CHECKSIG, OP_DUP, OP_EQUALVERIFY, OP_HASH160, SIGHASH_ALL, \
            SIGVERSION_WITNESS_V0, SignatureHash

        from .state import custody_state
        from .wallets import p2wpkh_address

        if not key_id.startswith("dep-bit-"):
            raise SigningRefused("only a Bitcoin deposit key signs Bitcoin sweeps here", field="key_id")
        pub = self.public_key(key_id)
        h160 = hashlib.new("ripemd160", hashlib.sha256(pub).digest()).digest()
        script_code = CScript([OP_DUP, OP_HASH160, h160, OP_EQUALVERIFY, OP_CHECKSIG])
        if not 0 <= index < len(tx.vin) or bytes(SignatureHash(script_code, tx, index, SIGHASH_ALL, amount=amount_sat,
                                                               sigversion=SIGVERSION_WITNESS_V0)) != digest:
            raise SigningRefused("the digest is not the transaction input's", field="digest")
        source = p2wpkh_address(pub)
        scripts = {bytes(o.scriptPubKey) for o in tx.vout}

        def decide(engine: Any) -> str | None:
            s = custody_state(engine)
            hot = s.wallets.get("btc_hot")
            if s.owner_of("bitcoin", source) is None or hot is None or not hot.addresses:
                return None
            return f"sweep from deposit address {source} to btc_hot" if scripts == {adapter.script_of_address(hot.addresses[0])} else None

        why = self.node.read(decide)
        if why is None:
            raise SigningRefused(f"{key_id}: a deposit address pays nothing but a sweep to btc_hot", field="outputs")
        return self._attest(key_id, digest, why)

    def _assets(self) -> list[str]:
        from .state import custody_state

        return self.node.read(lambda e: [a for a, spec in custody_state(e).assets.items() if spec.chain == "ethereum"])  # type: ignore[no-any-return]


def shield_btc_script(public_keys: list[bytes]) -> bytes:
    """The shield vault's witness script, `sortedmulti(2, k0, k1, k2)`: OP_2 <keys, sorted> OP_3 OP_CHECKMULTISIG."""
    if len(public_keys) != 3 or any(len(k) != 33 for k in public_keys):
        raise ValidationError("three compressed public keys are required", field="public_keys")
    return bytes([0x52]) + b"".join(b"\x21" + k for k in sorted(public_keys)) + bytes([0x53, 0xAE])
