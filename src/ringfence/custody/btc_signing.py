"""The BTC hot wallet of `serve` on a FROST 2-of-3 Taproot key held by signer processes.

* `SignerFleet` starts the signer processes (`python -m ringfence.keys.signer_server`), one per
  share, each with its own encrypted share store under `DIR/signers/signer-N/` (its passphrase in
  `DIR/signers/signer-N.passphrase`, mode 0600: a demo convenience; in production each signer runs
  on its own machine with `ringfence signer run` and its operator's passphrase). A child dies with
  `serve` (PR_SET_PDEATHSIG), so a killed server leaves no signer behind.
* `open_btc_hot` creates the key by DKG the first time (no process ever holds the whole key) and
  afterwards checks that the signers still hold the key recorded in `DIR/custody/btc-hot.json`.
* `FrostTaprootSigner` is the `Signer` the custody workers get for the hot wallet: every signature
  is a FROST round with a quorum of the signer processes through `ThresholdCoordinator`; the
  result is checked against the Taproot output key before it is returned.
* `build_taproot_payment` pays from the P2TR hot address (BIP-341 key-path spends, SIGHASH_DEFAULT);
  `wallets.build_btc_payment` hands over to it when the signer is a Taproot signer.

Invariant: the serve process holds no share and no whole key of the hot wallet; a signature exists
only if a quorum of signer processes took part.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import coincurve
import httpx
import structlog

from ..errors import ConfigError, InsufficientFunds, SigningRefused, ValidationError
from ..keys.interface import Scheme, Signature, SigningRequest

__all__ = ["FrostTaprootSigner", "SignerFleet", "open_btc_hot", "build_taproot_payment", "p2tr_address",
           "BTC_HOT_KEY_ID", "SIGNER_TYPE"]

log = structlog.get_logger("ringfence.custody.signers")

BTC_HOT_KEY_ID = "btc-hot"
SIGNER_TYPE = "frost-taproot"
P2TR_INPUT_VB = 58  # 41 base + 66/4 witness (one 64-byte BIP-340 signature)
TX_OVERHEAD_VB = 11
MAX_INPUTS = 200
DUST_SAT = 546
SUITE = "FROST(secp256k1, SHA-256)"


def p2tr_address(output_key: bytes, network: str = "regtest") -> str:
    from ..chains.bitcoin.address import script_to_address

    addr = script_to_address(b"\x51\x20" + output_key, network)
    assert addr is not None
    return addr


class FrostTaprootSigner:
    """`Signer` for a Taproot key-path output whose key is a FROST threshold key (no key here)."""

    taproot = True

    def __init__(self, coordinator: Any, key_id: str = BTC_HOT_KEY_ID) -> None:
        self.coordinator = coordinator
        self.key_id = key_id
        pkg = coordinator.key(key_id)
        self.threshold = pkg.kp.threshold
        self.holders = tuple(sorted(pkg.kp.verifying_shares))
        self.output_key = coordinator.public_key(key_id, Scheme.TAPROOT_KEYPATH)

    @property
    def signer_type(self) -> str:
        return f"{SIGNER_TYPE} {self.threshold}-of-{len(self.holders)}"

    def public_key(self, key_id: str, scheme: Scheme = Scheme.TAPROOT_KEYPATH) -> bytes:
        if key_id != self.key_id:
            raise ValidationError(f"this signer holds {self.key_id!r} only", field="key_id")
        return self.output_key

    def sign(self, request: SigningRequest) -> Signature:
        if request.key_id != self.key_id:
            raise ValidationError(f"this signer holds {self.key_id!r} only", field="key_id")
        if request.scheme is not Scheme.TAPROOT_KEYPATH:
            raise ValidationError("the hot wallet signs frost-secp256k1-taproot only", field="scheme")
        sig = self.coordinator.sign(request)
        if not coincurve.PublicKeyXOnly(self.output_key).verify(sig.signature, request.digest):
            raise SigningRefused("threshold signature does not verify for the hot wallet's output key", field="key_id")
        return sig

    def address(self, network: str = "regtest") -> str:
        return p2tr_address(self.output_key, network)

    def close(self) -> None:
        self.coordinator.close()


# ------------------------------------------------------------------------------ signer processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prctl() -> Any:
    """libc's prctl, looked up in the parent (the child between fork and exec must not load libraries)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def _die_with_parent() -> None:  # runs in the child between fork and exec: one system call, nothing else
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _secret_file(path: Path, nbytes: int = 24) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


class SignerFleet:
    """`count` signer processes on 127.0.0.1, each with its own encrypted share store."""

    def __init__(self, root: Path, count: int = 3, *, name: str = "btc-signer") -> None:
        if not 2 <= count <= 16:
            raise ConfigError("must be 2..16", field="signers")
        self.root = Path(root)
        self.count = count
        self.name = name
        self.token = secrets.token_urlsafe(32)  # this run's bearer token (memory only)
        #: mutual TLS: the coordinator's (serve's) Ed25519 certificate, the signers' pinned client
        from ..keys.tls import ensure_identity

        self.identity = ensure_identity(self.root / "coordinator", "ringfence-coordinator",
                                        _secret_file(self.root / "coordinator.passphrase"))  # = coordinator_identity
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.urls: dict[int, str] = {}
        self.logs: dict[int, Any] = {}

    def store_dir(self, i: int) -> Path:
        return self.root / f"signer-{i}"

    def start_one(self, i: int, port: int | None = None) -> str:
        store = self.store_dir(i)
        passphrase = _secret_file(self.root / f"signer-{i}.passphrase")
        port = port or _free_port()
        env = dict(os.environ, RINGFENCE_SIGNER_PASSPHRASE=passphrase, RINGFENCE_SIGNER_TOKEN=self.token)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs[i] = open(self.root / f"signer-{i}.log", "ab")
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "ringfence.keys.signer_server", "--store", str(store), "--identifier", str(i),
             "--name", f"{self.name}-{i}", "--port", str(port), "--create",
             "--coordinator-cert", str(self.identity.cert)],
            stdout=self.logs[i], stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        self.urls[i] = f"https://127.0.0.1:{port}"
        return self.urls[i]

    def tls(self) -> Any:
        """The coordinator's TLS settings: our identity, each signer's certificate pinned."""
        from ..keys.tls import ClientTLS

        return ClientTLS(self.identity, {i: self.store_dir(i) / "tls.crt" for i in self.urls})

    def start(self, timeout_s: int = 60) -> dict[int, str]:
        for i in range(1, self.count + 1):
            self.start_one(i)
        self.wait_ready(timeout_s)
        return dict(self.urls)

    def wait_ready(self, timeout_s: int = 60, ids: Any = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(ids or self.urls)
        contexts: dict[int, Any] = {}  # one TLS context per signer (loading the encrypted key is not free)
        while pending:
            for i in sorted(pending):
                if self.procs[i].poll() is not None:
                    raise ConfigError(f"signer {i} exited with {self.procs[i].returncode}; see "
                                      f"{self.root / f'signer-{i}.log'}", field="signers")
                if not (self.store_dir(i) / "tls.crt").exists():
                    continue  # the signer creates its certificate on first start
                if i not in contexts:
                    try:
                        contexts[i] = self.tls().context(i)
                    except ConfigError:  # a certificate still being written (older signers): read it again
                        if time.monotonic() > deadline:
                            raise
                        continue
                try:
                    if httpx.get(self.urls[i] + "/health", timeout=2, verify=contexts[i]).status_code == 200:
                        pending.discard(i)
                except httpx.HTTPError:
                    pass
            if pending:
                if time.monotonic() > deadline:
                    raise ConfigError(f"signers {sorted(pending)} did not start within {timeout_s} s", field="signers")
                time.sleep(0.1)

    def pids(self) -> dict[int, int]:
        return {i: p.pid for i, p in self.procs.items() if p.poll() is None}

    def stop_one(self, i: int) -> None:
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        fh = self.logs.pop(i, None)
        if fh is not None:
            fh.close()

    def stop(self, timeout_s: float = 5.0) -> None:  # float-ok: seconds to wait
        """SIGTERM to every signer at once, SIGKILL to any still running after `timeout_s`."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for i in list(self.logs):
            self.logs.pop(i).close()


def parse_signer_urls(text: str) -> dict[int, str]:
    """`1=http://h:7301,2=http://h:7302,3=...` -> {1: url, ...}."""
    out: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        ident, sep, url = part.partition("=")
        if not sep or not ident.strip().isdigit() or not url.strip().startswith(("http://", "https://")):
            raise ConfigError(f"'{part[:60]}': write ID=URL, e.g. 1=http://127.0.0.1:7301", field="RINGFENCE_BTC_SIGNERS")
        out[int(ident)] = url.strip().rstrip("/")
    if len(out) < 2:
        raise ConfigError("name at least two signers", field="RINGFENCE_BTC_SIGNERS")
    return out


def open_btc_hot(record: Path, urls: Mapping[int, str], token: str, *, threshold: int = 2,
                 key_id: str = BTC_HOT_KEY_ID, tls: Any = None) -> FrostTaprootSigner:
    """The hot wallet's signer. First start: a DKG among `urls` creates the key and its public
    half is recorded in `record`. Later starts: the signers must still hold that key."""
    from ..keys.coordinator import ThresholdCoordinator

    coord = ThresholdCoordinator(dict(urls), token, actor="custody", tls=tls)
    try:
        if record.exists():
            want = json.loads(record.read_text())
            pkg = coord.key(key_id)
            if pkg.raw["group_public_key"] != want["group_public_key"]:
                raise ConfigError(f"the signers hold another {key_id} key than {record} records", field="signers")
        else:
            try:
                coord.key(key_id)
                raise ConfigError(f"the signers already hold {key_id} but {record} is missing", field="signers")
            except ValidationError:
                pass
            pkg = coord.create_key(key_id, SUITE, threshold, sorted(urls))
        signer = FrostTaprootSigner(coord, key_id)
    except BaseException:
        coord.close()
        raise
    if not record.exists():
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"key_id": key_id, "created_at_ms": time.time_ns() // 1_000_000, "scheme": Scheme.TAPROOT_KEYPATH.value,
                                      "threshold": threshold, "signers": sorted(urls),
                                      "group_public_key": pkg.raw["group_public_key"],
                                      "output_key": signer.output_key.hex(), "address": signer.address()}, indent=1))
    log.info("custody.btc_hot_frost", key_id=key_id, address=signer.address(), signers=sorted(urls), threshold=threshold)
    return signer


# --------------------------------------------------------------------------------- transactions


def build_taproot_payment(adapter: Any, *, from_address: str, key_id: str, signer: Any, outputs: list[tuple[str, int]],
                          fee_rate_sat_per_vb: int, request_id: str, reason: str, requested_by: str = "custody-signer",
                          sweep_all: bool = False) -> tuple[bytes, str, int]:
    """Pay `outputs` from the P2TR `from_address` (change back to it), each input signed by a
    BIP-340 key-path signature from `signer`. Returns (raw_tx, txid, fee_sat)."""
    from bitcointx.core import COutPoint, CMutableTransaction, CTxIn, CTxInWitness, CTxOut, b2lx, lx
    from bitcointx.core.script import CScript, CScriptWitness, SignatureHashSchnorr

    if not outputs or (any(v <= 0 for _, v in outputs) and not sweep_all):
        raise ValidationError("needs outputs with positive amounts", field="outputs")
    own = bytes(adapter.script_of_address(from_address))
    if len(own) != 34 or own[:2] != b"\x51\x20" or own[2:] != signer.public_key(key_id, Scheme.TAPROOT_KEYPATH):
        raise ValidationError("the address is not this signer's Taproot output", field="from_address")
    spent_in_mempool = set(getattr(adapter.node, "_mempool_spends", {}))
    tip = adapter.current_height()
    coins = [u for u in adapter.unspent(from_address)
             if (u.txid, u.vout) not in spent_in_mempool and (not u.coinbase or tip - u.height + 1 >= 100)]
    coins.sort(key=lambda u: -u.value_sat)
    outputs_vb = sum(9 + len(adapter.script_of_address(a)) for a, _ in outputs)
    change_vb = 9 + len(own)
    want = 0 if sweep_all else sum(v for _, v in outputs)
    picked: list[Any] = []
    total = fee = 0
    for u in coins[:MAX_INPUTS]:
        picked.append(u)
        total += u.value_sat
        fee = (TX_OVERHEAD_VB + P2TR_INPUT_VB * len(picked) + outputs_vb + (0 if sweep_all else change_vb)) * fee_rate_sat_per_vb
        if not sweep_all and total >= want + fee:
            break
    if sweep_all:
        if total - fee < DUST_SAT:
            raise InsufficientFunds(f"{from_address} holds {total} sat, not enough to sweep", field="from_address")
        outputs = [(outputs[0][0], total - fee)]
        want = total - fee
    elif total < want + fee:
        raise InsufficientFunds(f"{from_address} holds {total} spendable sat, needs {want + fee}", field="amount_minor")
    change = total - want - fee
    vout = [CTxOut(v, CScript(adapter.script_of_address(a))) for a, v in outputs]
    if change >= DUST_SAT:
        vout.append(CTxOut(change, CScript(own)))
    else:
        fee += change
    tx = CMutableTransaction([CTxIn(COutPoint(lx(u.txid), u.vout)) for u in picked], vout)
    spent = [CTxOut(u.value_sat, CScript(own)) for u in picked]
    wits = []
    for i in range(len(picked)):
        digest = bytes(SignatureHashSchnorr(tx, i, spent, hashtype=None))
        sig = signer.sign(SigningRequest(f"{request_id}:{i}", key_id, digest, Scheme.TAPROOT_KEYPATH, requested_by, reason))
        wits.append(CTxInWitness(CScriptWitness([bytes(sig.signature)])))
    tx.wit.vtxinwit = wits
    return tx.serialize(), b2lx(tx.GetTxid()), fee


class ShareRefresher:
    """Proactive share refresh on a schedule: every `every_s` the signers re-randomise their shares
    (`ThresholdCoordinator.refresh`); the group key, the Taproot output key and so the address stay
    the same, and old shares no longer combine with new ones. The last refresh is recorded in the
    key's record file, so a restart does not reset the schedule."""

    def __init__(self, signer: FrostTaprootSigner, record: Path, every_s: int) -> None:
        if every_s <= 0:
            raise ConfigError("must be a positive number of seconds", field="RINGFENCE_BTC_REFRESH_EVERY_S")
        self.signer = signer
        self.record = Path(record)
        self.every_s = every_s

    def due(self, now_ms: int) -> bool:
        rec = json.loads(self.record.read_text())
        last = int(rec.get("refreshed_at_ms") or rec.get("created_at_ms") or self.record.stat().st_mtime * 1000)
        return now_ms - last >= self.every_s * 1000

    def step(self) -> bool:
        now_ms = time.time_ns() // 1_000_000
        if not self.due(now_ms):
            return False
        rec = json.loads(self.record.read_text())
        coord = self.signer.coordinator
        pkg = coord.refresh(self.signer.key_id)
        output = coord.public_key(self.signer.key_id, Scheme.TAPROOT_KEYPATH)
        if pkg.raw["group_public_key"] != rec["group_public_key"] or output != self.signer.output_key:
            raise SigningRefused("a share refresh changed the hot wallet's key", field="key_id")
        rec.update(refreshed_at_ms=now_ms, refreshes=int(rec.get("refreshes", 0)) + 1)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        os.replace(tmp, self.record)
        log.info("custody.btc_hot_refreshed", key_id=self.signer.key_id, refreshes=rec["refreshes"])
        return True


# ------------------------------------------------------------------------------------ in `serve`


def start_btc_hot(data_dir: Path) -> tuple[SignerFleet | None, FrostTaprootSigner]:
    """The hot wallet's signers for `serve`, always over mutually authenticated TLS.

    `RINGFENCE_BTC_SIGNERS` unset or `spawn`: three signer processes started here (stopped with
    `serve`). `1=https://HOST:PORT,2=...,3=...`: signers run elsewhere (`ringfence signer run
    --coordinator-cert DIR/signers/coordinator/tls.crt`), each pinned by its certificate in
    `RINGFENCE_BTC_SIGNER_CERTS` (`1=PATH,2=PATH,3=PATH`), with the bearer token
    `RINGFENCE_SIGNER_TOKEN`."""
    from ..keys.tls import ClientTLS

    spec = os.environ.get("RINGFENCE_BTC_SIGNERS", "spawn").strip()
    record = Path(data_dir) / "custody" / "btc-hot.json"
    if spec in ("", "spawn"):
        fleet = SignerFleet(Path(data_dir) / "signers")
        try:
            urls = fleet.start()
            return fleet, open_btc_hot(record, urls, fleet.token, tls=fleet.tls())
        except BaseException:
            fleet.stop()
            raise
    token = os.environ.get("RINGFENCE_SIGNER_TOKEN", "")
    if not token:
        raise ConfigError("set the signers' bearer token", field="RINGFENCE_SIGNER_TOKEN")
    urls = parse_signer_urls(spec)
    pins = {i: Path(p) for i, p in parse_signer_urls_like(os.environ.get("RINGFENCE_BTC_SIGNER_CERTS", "")).items()}
    if set(pins) != set(urls) or any(not u.startswith("https://") for u in urls.values()):
        raise ConfigError("every signer needs an https:// URL and a pinned certificate (ID=PATH)",
                          field="RINGFENCE_BTC_SIGNER_CERTS")
    return None, open_btc_hot(record, urls, token, tls=ClientTLS(coordinator_identity(Path(data_dir)), pins))


def coordinator_identity(data_dir: Path) -> Any:
    """`serve`'s TLS identity towards its signers: DIR/signers/coordinator/tls.crt (the certificate
    the signers pin) and its encrypted key; created on first use."""
    from ..keys.tls import ensure_identity

    root = Path(data_dir) / "signers"
    return ensure_identity(root / "coordinator", "ringfence-coordinator", _secret_file(root / "coordinator.passphrase"))


def parse_signer_urls_like(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        ident, sep, value = part.partition("=")
        if not sep or not ident.strip().isdigit() or not value.strip():
            raise ConfigError(f"'{part[:60]}': write ID=PATH", field="RINGFENCE_BTC_SIGNER_CERTS")
        out[int(ident)] = value.strip()
    return out


def wallet_signers(runtime: Any) -> dict[str, str]:
    """Who signs for each wallet of the runtime (what /readyz shows to operators)."""
    hot = runtime.btc_hot_signer
    out: dict[str, str] = {}
    chains = {t.chain for t in runtime.terms.values()}
    if "bitcoin" in chains:
        out.update({
            "btc_deposit": "single keys per address, derived from DIR/custody/seed (dev; swept into hot)",
            "btc_hot": f"{hot.signer_type} (signer processes {', '.join(map(str, hot.holders))})",
            "btc_warm": (runtime.btc_vaults["warm"].signer_type if runtime.btc_vaults
                         else "single key derived from DIR/custody/seed (dev)"),
            "btc_cold": runtime.cold_vault.signer_type if runtime.cold_vault is not None else "single offline key (dev)",
            "shield_btc": "p2wsh 2-of-3 multisig, offline keys",
        })
    if "ethereum" in chains:
        out.update({"eth_deposit": "single keys per address, derived from DIR/custody/seed (dev; swept into hot)",
                    "eth_hot": "single key derived from DIR/custody/seed (dev)",
                    "eth_cold": "single offline key (dev)"})
    return out


def refresh_worker(runtime: Any, supervised: Any, lock: Any) -> Any:
    """The supervised `btc-key-refresh` worker: refresh every `RINGFENCE_BTC_REFRESH_EVERY_S`
    seconds (default one day), checked every minute at most; under the chain lock, so no
    withdrawal is being signed while the shares change."""
    text = os.environ.get("RINGFENCE_BTC_REFRESH_EVERY_S", "86400").strip()
    if not (text.isascii() and text.isdigit()):
        raise ConfigError("must be a whole number of seconds", field="RINGFENCE_BTC_REFRESH_EVERY_S")
    refresher = ShareRefresher(runtime.btc_hot_signer, Path(runtime.data_dir) / "custody" / "btc-hot.json", int(text))
    runtime.btc_refresher = refresher
    return supervised("btc-key-refresh", refresher.step, min(refresher.every_s, 60) * 1000, lock)
