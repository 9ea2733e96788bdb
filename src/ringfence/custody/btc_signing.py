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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import coincurve
import httpx
import structlog

from ..errors import ConfigError, SigningRefused, ValidationError
from ..keys.interface import Scheme, Signature, SigningRequest

__all__ = ["FrostTaprootSigner", "SignerFleet", "open_btc_hot", "build_taproot_payment", "p2tr_address",
           "BTC_HOT_KEY_ID", "SIGNER_TYPE"]

log = structlog.get_logger("ringfence.custody.signers")

BTC_HOT_KEY_ID = "btc-hot"
SIGNER_TYPE = "frost-taproot"
P2TR_INPUT_VB = 58  # 41 base + 66/4 witness (one 64-byte BIP-340 signature)
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
    """A port free on 127.0.0.1 and [::1], both of which the child holds (listening.py `free_port`)."""
    from ..listening import free_port

    return free_port("127.0.0.1")


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


_SPAWNER: Any = None  # one thread that lives as long as the process (see spawn_child)


def spawn_child(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`Popen(args, preexec_fn=_die_with_parent)` from a thread that lives as long as this process.
    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a signer
    started from a request's worker thread got SIGTERM when the thread pool let that thread go idle
    (a spare signer added for a reshare died minutes later with an empty log)."""
    global _SPAWNER
    import concurrent.futures

    if _SPAWNER is None:
        _SPAWNER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="child-spawner")  # its thread never idles out
    proc: subprocess.Popen[bytes] = _SPAWNER.submit(subprocess.Popen, args, preexec_fn=_die_with_parent, **kwargs).result()
    return proc


def _secret_file(path: Path, nbytes: int = 24) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


#: How often a signer started on a free port of our choosing is started again on another one when
#: some other process bound that port first (a race every "pick a free port" has).
_PORT_RACES = 3


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
        self._port_races: dict[int, int] = {}  # signer -> starts lost to another process taking its free port

    def store_dir(self, i: int) -> Path:
        return self.root / f"signer-{i}"

    def holder_ids(self) -> list[int]:
        """The signers to start: 1..count at first, then those the hot key's record names (a reshare
        changes them)."""
        record = self.root.parent / "custody" / "btc-hot.json"
        if record.exists():
            return [int(i) for i in json.loads(record.read_text())["signers"]]
        return list(range(1, self.count + 1))

    def signer_identity(self, i: int) -> Any:
        """Signer i's TLS identity (made here before its first start, so its peers can pin it at once;
        the signer process opens the same files)."""
        from ..keys.tls import ensure_identity

        return ensure_identity(self.store_dir(i), f"{self.name}-{i}", _secret_file(self.root / f"signer-{i}.passphrase"))

    def pin_peers(self, certs: Mapping[int, Path]) -> None:
        """Write each signer's pin of every other one (`STORE/peers/signer-J.crt`). In production each
        signer's operator places these files on the signer's machine; here all signers share one."""
        for i in certs:
            peers = self.store_dir(i) / "peers"
            peers.mkdir(parents=True, exist_ok=True)
            for j, cert in certs.items():
                if j != i:
                    tmp = peers / f".signer-{j}.crt.tmp"
                    tmp.write_bytes(Path(cert).read_bytes())
                    os.replace(tmp, peers / f"signer-{j}.crt")

    def start_one(self, i: int, port: int | None = None) -> str:
        store = self.store_dir(i)
        passphrase = _secret_file(self.root / f"signer-{i}.passphrase")
        self.signer_identity(i)
        (store / "peers").mkdir(parents=True, exist_ok=True)
        if port is None:
            port = _free_port()
        else:
            self._port_races[i] = _PORT_RACES  # a port we were given is not ours to change
        env = dict(os.environ, RINGFENCE_SIGNER_PASSPHRASE=passphrase, RINGFENCE_SIGNER_TOKEN=self.token)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs[i] = open(self.root / f"signer-{i}.log", "ab")
        self.procs[i] = spawn_child(
            [sys.executable, "-m", "ringfence.keys.signer_server", "--store", str(store), "--identifier", str(i),
             "--name", f"{self.name}-{i}", "--port", str(port), "--create",
             "--coordinator-cert", str(self.identity.cert), "--peer-certs", str(store / "peers")],
            stdout=self.logs[i], stderr=subprocess.STDOUT, env=env)
        self.urls[i] = f"https://127.0.0.1:{port}"
        return self.urls[i]

    def tls(self) -> Any:
        """The coordinator's TLS settings: our identity, each signer's certificate pinned."""
        from ..keys.tls import ClientTLS

        return ClientTLS(self.identity, {i: self.store_dir(i) / "tls.crt" for i in self.urls})

    def start(self, timeout_s: int = 60) -> dict[int, str]:
        self.spawn()
        self.wait_ready(timeout_s)
        return dict(self.urls)

    def spawn(self) -> None:
        """Start the holders' processes without waiting for them (`wait_ready` does)."""
        ids = self.holder_ids()
        self.pin_peers({i: self.signer_identity(i).cert for i in ids})
        for i in ids:
            self.start_one(i)

    def wait_ready(self, timeout_s: int = 60, ids: Any = None) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(ids or self.urls)
        contexts: dict[int, Any] = {}  # one TLS context per signer (loading the encrypted key is not free)
        while pending:
            for i in sorted(pending):
                if self.procs[i].poll() is not None and self._lost_port_race(i):
                    self.start_one(i)  # its free port was taken between our choice and its bind: a new one
                    continue
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

    def _lost_port_race(self, i: int) -> bool:
        """Did signer i exit because another process bound its (free when chosen) port first?"""
        if self._port_races.get(i, 0) >= _PORT_RACES:
            return False
        try:
            tail = (self.root / f"signer-{i}.log").read_bytes()[-2000:]
        except OSError:
            return False
        if b"address already in use" not in tail.lower():  # (uvicorn's words, or listening.py's "Address ...")
            return False
        self._port_races[i] = self._port_races.get(i, 0) + 1
        self.logs.pop(i).close()
        return True

    def exited(self) -> dict[int, int]:
        """Signers whose process has ended (reaped here) -> exit status (negative: the signal)."""
        return {i: p.returncode for i, p in self.procs.items() if p.poll() is not None}

    def pids(self) -> dict[int, int]:
        return {i: p.pid for i, p in self.procs.items() if p.poll() is None}

    def stop_one(self, i: int) -> None:
        p = self.procs.pop(i, None)  # no longer one of the fleet (not "down" in /readyz)
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
                          sweep_all: bool = False, exclude: Any = ()) -> tuple[bytes, str, int]:
    """Pay `outputs` from the P2TR `from_address` (change back to it), each input signed by a
    BIP-340 key-path signature from `signer`; the coins are chosen by `wallets.plan_btc_spend`, as
    for every Bitcoin wallet. Returns (raw_tx, txid, fee_sat)."""
    from bitcointx.core import CTxInWitness, CTxOut, b2lx
    from bitcointx.core.script import CScript, CScriptWitness, SignatureHashSchnorr

    from .wallets import btc_unsigned_tx, plan_btc_spend

    own = bytes(adapter.script_of_address(from_address))
    if len(own) != 34 or own[:2] != b"\x51\x20" or own[2:] != signer.public_key(key_id, Scheme.TAPROOT_KEYPATH):
        raise ValidationError("the address is not this signer's Taproot output", field="from_address")
    spend = plan_btc_spend(adapter, from_address=from_address, outputs=outputs, fee_rate_sat_per_vb=fee_rate_sat_per_vb,
                           input_vb=P2TR_INPUT_VB, sweep_all=sweep_all, exclude=exclude)
    tx = btc_unsigned_tx(adapter, spend, from_address)
    spent = [CTxOut(u.value_sat, CScript(own)) for u in spend.coins]
    wits = []
    for i in range(len(spend.coins)):
        digest = bytes(SignatureHashSchnorr(tx, i, spent, hashtype=None))
        sig = signer.sign(SigningRequest(f"{request_id}:{i}", key_id, digest, Scheme.TAPROOT_KEYPATH, requested_by, reason))
        wits.append(CTxInWitness(CScriptWitness([bytes(sig.signature)])))
    tx.wit.vtxinwit = wits
    return tx.serialize(), b2lx(tx.GetTxid()), spend.fee_sat


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
    return begin_btc_hot(data_dir)()


def begin_btc_hot(data_dir: Path) -> Callable[[], tuple[SignerFleet | None, FrostTaprootSigner]]:
    """`start_btc_hot` in two steps: the signer processes are spawned now, and the returned function
    waits for them and opens the wallet — so `serve` can load its chains while they start."""
    from ..keys.tls import ClientTLS

    spec = os.environ.get("RINGFENCE_BTC_SIGNERS", "spawn").strip()
    record = Path(data_dir) / "custody" / "btc-hot.json"
    if spec in ("", "spawn"):
        fleet = SignerFleet(Path(data_dir) / "signers")
        try:
            fleet.spawn()
        except BaseException:
            fleet.stop()
            raise

        def finish() -> tuple[SignerFleet | None, FrostTaprootSigner]:
            try:
                fleet.wait_ready()
                return fleet, open_btc_hot(record, dict(fleet.urls), fleet.token, tls=fleet.tls())
            except BaseException:
                fleet.stop()
                raise

        return finish
    token = os.environ.get("RINGFENCE_SIGNER_TOKEN", "")
    if not token:
        raise ConfigError("set the signers' bearer token", field="RINGFENCE_SIGNER_TOKEN")
    urls = parse_signer_urls(spec)
    pins = {i: Path(p) for i, p in parse_signer_urls_like(os.environ.get("RINGFENCE_BTC_SIGNER_CERTS", "")).items()}
    if set(pins) != set(urls) or any(not u.startswith("https://") for u in urls.values()):
        raise ConfigError("every signer needs an https:// URL and a pinned certificate (ID=PATH)",
                          field="RINGFENCE_BTC_SIGNER_CERTS")
    return lambda: (None, open_btc_hot(record, urls, token, tls=ClientTLS(coordinator_identity(Path(data_dir)), pins)))


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


def _down(runtime: Any) -> str:
    """'; DOWN: signer 4 exited with 0' for the signers this node started whose process has ended."""
    fleet = runtime.btc_signers
    gone = fleet.exited() if fleet is not None else {}
    return "; DOWN: " + ", ".join(f"signer {i} exited with {rc}" for i, rc in sorted(gone.items())) if gone else ""


def wallet_signers(runtime: Any) -> dict[str, str]:
    """Who signs for each wallet of the runtime (what /readyz shows to operators)."""
    hot = runtime.btc_hot_signer
    out: dict[str, str] = {}
    chains = {t.chain for t in runtime.terms.values()}
    if "bitcoin" in chains:
        out.update({
            "btc_deposit": runtime.eth_hot_hsm.btc_deposit_signer_type if runtime.eth_hot_hsm is not None else "none",
            "btc_hot": f"{hot.signer_type} (signer processes {', '.join(map(str, hot.holders))}{_down(runtime)})",
            "btc_warm": (runtime.btc_vaults["warm"].signer_type if runtime.btc_vaults
                         else "single key derived from DIR/custody/seed (dev)"),
            "btc_cold": runtime.cold_vault.signer_type if runtime.cold_vault is not None else "single offline key (dev)",
            "shield_btc": (runtime.eth_hot_hsm.shield_btc_signer_type if runtime.eth_hot_hsm is not None
                           else "p2wsh 2-of-3 multisig, its three keys derived from DIR/custody/seed (dev)"),
        })
    if "ethereum" in chains:
        hsm = runtime.eth_hot_hsm
        out.update({"eth_deposit": hsm.deposit_signer_type if hsm is not None else "none",
                    "eth_hot": hsm.signer_type if hsm is not None else "none",
                    "eth_cold": hsm.cold_signer_type if hsm is not None else "none",
                    "shield_eth": hsm.shield_signer_type if hsm is not None else "none"})
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


# ------------------------------------------------------------------------ reshare on a live node


def signer_set_view(runtime: Any) -> dict[str, Any]:
    """The hot key's signers as the node's coordinator knows them: holders, spares, URLs, pins."""
    from ..keys.tls import fingerprint

    signer = runtime.btc_hot_signer
    coord = signer.coordinator
    pkg = coord.key(signer.key_id)
    holders = sorted(pkg.kp.verifying_shares)
    pins = dict(coord.tls.pins) if coord.tls is not None else {}
    ids = sorted(set(holders) | set(coord.signers) | set(getattr(runtime.btc_signers, "urls", {})))
    urls = {**getattr(runtime.btc_signers, "urls", {}), **coord.signers}
    if runtime.btc_signers is not None:
        pins = {**{i: runtime.btc_signers.store_dir(i) / "tls.crt" for i in runtime.btc_signers.urls}, **pins}
    gone = runtime.btc_signers.exited() if runtime.btc_signers is not None else {}
    return {"key_id": signer.key_id, "threshold": pkg.kp.threshold, "group_public_key": pkg.raw["group_public_key"],
            "address": signer.address(),
            "signers": [{"id": i, "url": urls.get(i, ""), "holder": i in holders, "running": i not in gone,
                         "fingerprint": fingerprint(pins[i]) if i in pins and Path(pins[i]).exists() else ""} for i in ids]}


#: Spare signers (started, holding no share yet) a node runs at once: each is a process of its own.
MAX_SPARE_SIGNERS = 3


def start_spare_signer(runtime: Any, ident: int) -> dict[str, Any]:
    """`serve` that runs its signers itself starts signer `ident` (no share yet) and answers its pin."""
    from ..keys.tls import fingerprint

    fleet = runtime.btc_signers
    if fleet is None:
        raise ValidationError("this node's signers run elsewhere: start the new one with `ringfence signer run` and "
                              "name its URL and certificate in the reshare", field="id")
    holders = set(runtime.btc_hot_signer.coordinator.key(runtime.btc_hot_signer.key_id).kp.verifying_shares)
    if ident in holders:
        raise ValidationError(f"signer {ident} already holds a share", field="id")
    spares = [i for i, proc in fleet.procs.items() if i not in holders and i != ident and proc.poll() is None]
    if len(spares) >= MAX_SPARE_SIGNERS:
        raise ValidationError(f"{len(spares)} spare signers already run ({', '.join(map(str, sorted(spares)))}): reshare "
                              f"to them first (at most {MAX_SPARE_SIGNERS})", field="id")
    if ident not in fleet.procs or fleet.procs[ident].poll() is not None:  # (no chain lock: it signs nothing)
        fleet.pin_peers({i: fleet.signer_identity(i).cert for i in sorted(holders | {ident})})
        fleet.start_one(ident)
        fleet.wait_ready(60, ids=[ident])
    cert = fleet.store_dir(ident) / "tls.crt"
    return {"id": ident, "url": fleet.urls[ident], "certificate": cert.read_text(), "fingerprint": fingerprint(cert)}


MAX_PEM_CHARS = 8_000


def resolve_signers(runtime: Any, entries: list[dict[str, Any]]) -> dict[int, tuple[str, Path, str]]:
    """The reshare request's signers -> {id: (url, pinned certificate file, its fingerprint)}. A signer
    named with a `certificate` (PEM) is pinned to exactly that one; otherwise to the certificate this
    node already pins (a current holder, or a spare it started)."""
    from cryptography import x509

    from ..keys.tls import fingerprint

    signer, fleet = runtime.btc_hot_signer, runtime.btc_signers
    coord = signer.coordinator
    known_pins = dict(coord.tls.pins) if coord.tls is not None else {}
    known_urls = {**(fleet.urls if fleet is not None else {}), **coord.signers}
    out: dict[int, tuple[str, Path, str]] = {}
    for n, e in enumerate(entries[:16]):
        ident = e.get("id")
        if isinstance(ident, bool) or not isinstance(ident, int) or not 1 <= ident <= 255 or ident in out:
            raise ValidationError("distinct signer identifiers 1..255", field=f"signers[{n}].id")
        url = e.get("url") or known_urls.get(ident, "")
        if not isinstance(url, str) or not url.startswith("https://") or len(url) > 200:
            raise ValidationError("an https:// URL (mutual TLS)", field=f"signers[{n}].url")
        pem = e.get("certificate")
        if pem is not None:
            if not isinstance(pem, str) or len(pem) > MAX_PEM_CHARS:
                raise ValidationError("a PEM certificate", field=f"signers[{n}].certificate")
            try:
                x509.load_pem_x509_certificate(pem.encode())
            except ValueError:
                raise ValidationError("not a PEM certificate", field=f"signers[{n}].certificate") from None
            pins = Path(runtime.data_dir) / "signers" / "pins"
            pins.mkdir(parents=True, exist_ok=True)
            tmp = pins / f".signer-{ident}.tmp"
            tmp.write_text(pem)
            path = pins / f"signer-{ident}-{fingerprint(tmp)[:16]}.crt"
            os.replace(tmp, path)
        elif ident in known_pins:
            path = Path(known_pins[ident])
        elif fleet is not None and (fleet.store_dir(ident) / "tls.crt").exists() and ident in fleet.urls:
            path = fleet.store_dir(ident) / "tls.crt"
        else:
            raise ValidationError(f"signer {ident} is not known to this node: give its certificate", field=f"signers[{n}]")
        out[ident] = (url.rstrip("/"), path, fingerprint(path))
    return out


def _pin(coord: Any, pins: Mapping[int, Path]) -> None:
    """Pin `pins` in the coordinator, dropping a connection pool that trusted another certificate."""
    if coord.tls is None:
        return
    for i, cert in pins.items():
        if coord.tls.pins.get(i) != cert:
            coord.tls.add({i: cert})
            stale = coord._clients.pop(i, None)
            if stale is not None:
                stale.close()


def reshare_hot_key(runtime: Any, signers: Mapping[int, tuple[str, Path, str]], threshold: int, reason: str,
                    generation: int) -> dict[str, Any]:
    """Run the reshare the operators decided: a quorum of today's holders re-deals the key to `signers`
    with `threshold`; removed holders delete their share; the group key, the Taproot output key and so
    the address do not change (checked). Under the chain lock: nothing is signed meanwhile."""
    signer = runtime.btc_hot_signer
    coord = signer.coordinator
    fleet = runtime.btc_signers
    record = Path(runtime.data_dir) / "custody" / "btc-hot.json"
    with runtime.chains.lock:
        old = coord.key(signer.key_id)
        old_ids = sorted(old.kp.verifying_shares)
        saved_pins = dict(coord.tls.pins) if coord.tls is not None else {}
        saved_urls = dict(coord.signers)
        _pin(coord, {i: cert for i, (_, cert, _) in signers.items()})
        if fleet is not None:  # one machine: the peers' pins are files this node may write (docs/keys.md)
            fleet.pin_peers({i: cert for i, (_, cert, _) in signers.items()}
                            | {i: fleet.store_dir(i) / "tls.crt" for i in old_ids if i not in signers})
        quorum = sorted(old_ids, key=lambda i: (i not in signers, i))[: old.kp.threshold]
        try:
            pkg = coord.reshare(signer.key_id, quorum, {i: url for i, (url, _, _) in signers.items()}, threshold, reason)
        except BaseException:
            # the shares did not change hands: the coordinator forgets the pins and URLs of this attempt
            coord.signers.clear()
            coord.signers.update(saved_urls)
            if coord.tls is not None:
                for i in [i for i in coord.tls.pins if i not in saved_pins]:
                    del coord.tls.pins[i]
                    stale = coord._clients.pop(i, None)
                    if stale is not None:
                        stale.close()
            _pin(coord, saved_pins)
            raise
        output = coord.public_key(signer.key_id, Scheme.TAPROOT_KEYPATH)
        if pkg.raw["group_public_key"] != old.raw["group_public_key"] or output != signer.output_key:
            raise SigningRefused("the reshare changed the hot wallet's key", field="key_id")
        signer.threshold, signer.holders = threshold, tuple(sorted(signers))
        removed = [i for i in old_ids if i not in signers]
        if fleet is not None:
            for i in removed:  # it holds nothing now: stopped, and no longer one of the fleet
                fleet.stop_one(i)
                fleet.urls.pop(i, None)
        rec = json.loads(record.read_text())
        rec.update(signers=sorted(signers), threshold=threshold, generation=generation,
                   reshares=int(rec.get("reshares", 0)) + 1)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        os.replace(tmp, record)
    log.info("custody.btc_hot_reshared", key_id=signer.key_id, signers=sorted(signers), threshold=threshold,
             dealers=quorum, retired=removed)
    return {**signer_set_view(runtime), "generation": generation, "dealers": quorum, "retired": removed}
