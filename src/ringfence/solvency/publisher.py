"""Proof of solvency on a schedule: one proof every N seconds, each kept, listed in a history.

Job: a worker inside `ringfence serve` calls `PorPublisher.publish()` at start and then every
`RINGFENCE_POR_EVERY_S` seconds; an operator asks for one now with `ringfence por publish-now`
(POST /admin/v1/por/publish, api/admin.py). One publication:

1. reads, through `Node.read` (a whole batch, never half a command), the liabilities snapshot and
   the shield fund's status — copies only; the publisher never changes engine state;
2. builds the Merkle-sum tree outside the read (the sequencer is not held up by it);
3. asks every `ReserveSource` (custody) for signed claims and balances at one height per chain and
   checks them itself (`prove_reserves`); with no source it publishes liabilities only and says
   "no reserve evidence";
4. writes `OUT/<n>/` (root.json, reserves.json, report.html, evidence.json, and the private
   per-user store proofs/) into a temporary folder renamed into place, then rewrites
   `OUT/history.json` atomically — a reader sees either the old or the new history, and every
   proof a history names is complete on disk.

Steps 1-3 and the files that do not name `n` are built outside the publisher's lock, which guards
only step 4's numbering and swap: a proof published on request (unpaced) never waits for a paced
scheduled proof to be built. Two proofs of one snapshot are never built at once (the second caller
joins the first's, which goes on unpaced if the caller is), and a proof of an older position than
one this publisher published meanwhile is dropped, so the newest proof is always the newest state.

Invariants: `n` only grows (it continues after a restart from history.json); at most `keep` proofs
are kept (the oldest are removed, from the history first, then from disk); amounts are `int` minor
units and ratios integer basis points.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import structlog

from ..errors import RateLimited, RingfenceError
from .reserve_source import ReserveEvidence, ReserveSource, claim_to_json

__all__ = ["HISTORY_FORMAT", "NodeStopped", "PorPublisher", "PublishBusy", "read_history", "current_dir", "PUBLIC_FILES"]

HISTORY_FORMAT = "ringfence-por-history-v1"
MAX_KEEP = 100_000
#: What of a proof folder anyone may download (proofs/ holds every user's nonce: never public).
PUBLIC_FILES = ("root.json", "reserves.json", "report.html", "evidence.json")

log = structlog.get_logger("ringfence.por")


def read_history(out_dir: Path) -> dict[str, Any]:
    """The history document, or an empty one when nothing was published on a schedule yet."""
    try:
        doc = json.loads((out_dir / "history.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format": HISTORY_FORMAT, "proofs": []}
    if not isinstance(doc, dict) or doc.get("format") != HISTORY_FORMAT:
        raise ValueError(f"{out_dir / 'history.json'} is not a {HISTORY_FORMAT} file")
    return doc


def current_dir(out_dir: Path) -> Path:
    """The newest scheduled proof's folder; `out_dir` itself for a proof from `ringfence por publish`."""
    proofs = read_history(out_dir)["proofs"]
    return out_dir / str(proofs[-1]["n"]) if proofs else out_dir


def _coverage_bp(reserves: int, liabilities: int) -> int | None:
    return reserves * 10_000 // liabilities if liabilities > 0 else None


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class NodeStopped(RingfenceError, RuntimeError):
    """The node stopped (deposed, fenced, a failed write): it publishes no proof any more."""

    code = "RF_NODE_STOPPED"
    http_status = 503
    default_message = "the node has stopped: it publishes no proof of solvency"


class PublishBusy(RateLimited):
    """An operator's request for a proof while another request's proof of a different state is being
    built: refused before anything is read or built (one requested build at a time; the schedule's
    goes on beside it)."""

    code = "RF_POR_BUSY"
    default_message = "a proof of solvency asked for by a request is being built; retry once it is published"


class PorPublisher:
    """Publishes proofs into `out_dir/<n>/` and keeps `out_dir/history.json`."""

    def __init__(self, read: Callable[[Callable[[Any], Any]], Any], out_dir: Path, secret: bytes, *,
                 sources: Sequence[ReserveSource] = (), keep: int = 500, value_asset: str = "USDT",
                 every_s: int = 0, clock_ns: Callable[[], int] = time.time_ns, min_leaf_count: int = 16,
                 alive: Callable[[], bool] | None = None, stopped: Callable[[], str | None] | None = None,
                 pacer: Any = None) -> None:
        if not 1 <= keep <= MAX_KEEP:
            raise ValueError(f"keep must be 1..{MAX_KEEP}")
        self.read = read
        self.out_dir = Path(out_dir)
        self.secret = secret
        self.sources = list(sources)
        self.keep = keep
        self.value_asset = value_asset
        self.every_s = every_s
        self.clock_ns = clock_ns
        self.min_leaf_count = min_leaf_count
        #: False once the node it reads is closed: the schedule ends with it
        self.alive = alive or (lambda: True)
        #: why the node it reads must not be attested any more (deposed or fenced, its replication or a
        #: journal write failed), else None: a proof names a position the replicated history must hold
        self.stopped = stopped or (lambda: None)
        self.refused = ""  # the reason once a publication was refused for it (logged once)
        #: In a serving process: the schedule's share of the GIL while it builds a proof (ringfence/pacing.py),
        #: looked at between its stages and before each reserve claim; a proof published on request
        #: (`publish()`, the start-up one) is not paced
        self.pacer = pacer
        self.published = 0
        self.joined = 0  # calls that joined a proof of their snapshot already being built
        self.failures = 0
        self.last_error = ""
        self._lock = threading.Lock()  # the publication swap: `n`, the folder into place, history.json
        self._builds_lock = threading.Lock()  # guards `_builds`
        self._builds: dict[str, _Build] = {}  # the proofs being built, by snapshot id
        #: the proof a request (`publish(requested=True)`) is building: (snapshot id, journal position), or None
        self._requested: tuple[str, int] | None = None
        self._published_seq = -1  # the journal position of the newest proof this publisher published
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ one publication

    def _read_state(self) -> tuple[Any, dict[str, Any], int]:
        from ..custody.shield import shield_status
        from .ledger_source import snapshot_from_engine

        return self.read(lambda engine: (snapshot_from_engine(engine), shield_status(engine, self.value_asset),  # type: ignore[no-any-return]
                                         engine.last_seq))

    def _reserves(self, snapshot_id_hex: str, pace: Callable[[], None] | None = None) -> tuple[Any, ReserveEvidence | None, str]:
        from .reserves import prove_reserves

        if not self.sources:
            return None, None, "no reserve evidence: no reserve source is configured (liabilities only)"
        evidence = ReserveEvidence()
        try:
            for source in self.sources:
                evidence.merge(source.evidence(snapshot_id_hex))
        except Exception as exc:  # noqa: BLE001 - a source is custody's I/O: publish liabilities and say why
            return None, None, f"no reserve evidence: reserve source failed ({type(exc).__name__}: {exc})"
        result = prove_reserves(snapshot_id_hex, evidence.claims, evidence.readers, evidence.heights, pace=pace)
        names = ", ".join(s.name for s in self.sources)
        return result, evidence, f"reserves proven from {len(result.counted())} addresses ({names})"

    def publish(self, *, paced: bool = False, requested: bool = False) -> dict[str, Any]:
        """Publish one proof now; returns its history entry. `paced`: at `pacer`'s share (the schedule).

        The proof is built without the publisher's lock (only its numbering and swap take it). If a
        proof of the same snapshot is being built already, this one joins it and returns its entry (an
        unpaced caller makes it go on unpaced); a proof of an older position than one published
        meanwhile is not published: the newer one's entry is returned.

        `requested` (an operator's request, POST /admin/v1/por/publish): one such build at a time. While
        one is being built, a request for another state is refused with `PublishBusy` (429) — before
        the snapshot is read when the journal has moved on from that build's position — so a burst of
        requests never builds (nor copies the liabilities of) more than one proof beside the schedule's."""
        pacer = self.pacer if paced else None
        if pacer is not None:
            pacer.restart()
        self._check_node()
        if requested:
            with self._builds_lock:
                running = self._requested
            if running is not None and self.read(lambda engine: engine.last_seq) != running[1]:
                raise self._busy(running)
        try:
            snap, shield, seq = self._read_state()
        except Exception:
            self._check_node()  # the read saw a state that never became durable: the node stopped
            raise
        key = snap.snapshot_id.hex()
        with self._builds_lock:
            build = self._builds.get(key)
            joined = build is not None
            if build is None:
                if requested and self._requested is not None:
                    raise self._busy(self._requested)
                if not self._builds:
                    self._sweep_temporary()
                build = self._builds[key] = _Build()
                if requested:
                    self._requested = (key, seq)
            self.joined += joined
        if joined:
            log.info("por.joined", snapshot_id=key, position=snap.position, hurried=pacer is None)
            if pacer is None:
                build.hurry.set()  # asked for now: the rest of that proof runs at full speed
            build.done.wait()
            if build.error is not None:
                raise _own_copy(build.error) from build.error
            assert build.entry is not None
            return build.entry
        try:
            build.entry = self._publish(snap, shield, seq, key, build, pacer)
            return build.entry
        except BaseException as exc:
            build.error = exc
            raise
        finally:
            with self._builds_lock:
                del self._builds[key]
                if self._requested is not None and self._requested[0] == key:
                    self._requested = None
            build.done.set()

    @staticmethod
    def _busy(running: tuple[str, int]) -> PublishBusy:
        return PublishBusy(f"a proof of solvency of journal:{running[1]} asked for by a request is being built; "
                           "retry once it is published (GET /por/history)", field="por")

    def _sweep_temporary(self) -> None:
        """Remove the temporary folders a crash left behind (no proof is being built: none is in use)."""
        if self.out_dir.is_dir():
            for tmp in self.out_dir.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def _check_node(self) -> None:
        """Raise `NodeStopped` if the node stopped: its state may hold batches the stream never stored."""
        reason = self.stopped()
        if reason is not None:
            if not self.refused:
                self.refused = reason
                log.warning("por.not_published", reason=f"the node has stopped ({reason}): its state may hold "
                            "batches the replicated history does not; no proof is published from it")
            raise NodeStopped(f"no proof published: the node has stopped ({reason})")

    def _publish(self, snap: Any, shield: dict[str, Any], seq: int, key: str, build: "_Build", pacer: Any) -> dict[str, Any]:
        from .pol import build_liability_tree
        from .report import build_report, render_html

        def pace() -> None:
            if pacer is not None and not build.hurry.is_set():
                pacer.tick()

        pace()
        tree = build_liability_tree(snap.snapshot_id, snap.asset_codes, snap.iter_accounts(), self.secret,
                                    min_leaf_count=self.min_leaf_count)
        root = tree.root_document()
        pace()
        reserves, evidence, note = self._reserves(key, pace if pacer is not None else None)
        pace()
        accrued = {row["asset"]: int(row["accrued_minor"]) for row in shield["assets"]}
        report = build_report(root, snap.assets, reserves, accrued, snap.debts_minor, snap.position)

        self.out_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.out_dir, 0o700)  # the per-user stores hold every user's nonce
        tmp = self.out_dir / f".tmp-{key[:32]}"  # one build of a snapshot at a time (`_builds`)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            (tmp / "root.json").write_text(json.dumps(root, indent=1) + "\n")
            tree.write_store(tmp / "proofs")
            if evidence is not None:
                doc = {"snapshot_id": key, "heights": dict(evidence.heights),
                       "addresses": [claim_to_json(c) for c in evidence.claims]}
                (tmp / "evidence.json").write_text(json.dumps(doc, indent=1) + "\n")
            with self._lock:  # the swap: what names `n`, the folder into place, the history
                if seq < self._published_seq:  # a newer state's proof was published while this one was built
                    newer = read_history(self.out_dir)["proofs"]
                    if newer:
                        return newer[-1]
                return self._swap(tmp, snap, seq, root, report, render_html, tree.account_count, evidence is not None,
                                  note, shield)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # (gone already once swapped into place)

    def _swap(self, tmp: Path, snap: Any, seq: int, root: dict[str, Any], report: dict[str, Any], render_html: Any,
              accounts: int, proven: bool, note: str, shield: dict[str, Any]) -> dict[str, Any]:
        """Number the built proof, move its folder into place and add it to the history (under `_lock`)."""
        history = read_history(self.out_dir)
        n = int(history["proofs"][-1]["n"]) + 1 if history["proofs"] else int(history.get("next_n", 1))
        published_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock_ns() // 10**9))
        report.update(n=n, published_at=published_at, reserves_note=note, shield=shield)
        (tmp / "reserves.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "report.html").write_text(render_html(report))
        self._check_node()  # it may have stopped while the tree was built: nothing of it is published
        final = self.out_dir / str(n)
        shutil.rmtree(final, ignore_errors=True)  # a folder a crash left behind, never in the history
        os.replace(tmp, final)

        entry = self._entry(n, published_at, snap, root, report, accounts, proven)
        history["proofs"].append(entry)
        dropped = history["proofs"][: max(len(history["proofs"]) - self.keep, 0)]
        history["proofs"] = history["proofs"][len(dropped):]
        history["next_n"] = n + 1
        history["every_s"] = self.every_s
        history["keep"] = self.keep
        history["reserve_sources"] = [s.name for s in self.sources]
        _write_json(self.out_dir / "history.json", history)
        for old in dropped:  # gone from the history first, then from disk
            shutil.rmtree(self.out_dir / str(old["n"]), ignore_errors=True)
        self.published += 1
        self._published_seq = max(self._published_seq, seq)
        log.info("por.published", n=n, position=snap.position, accounts=accounts, reserves=proven, shield_alert=shield["alert"])
        return entry

    def _entry(self, n: int, published_at: str, snap: Any, root: dict[str, Any], report: dict[str, Any],
               accounts: int, proven: bool) -> dict[str, Any]:
        assets = []
        for row in report["assets"]:
            held, owed = int(row["reserves_minor"]), int(row["liabilities_minor"])
            claimed = proven and any(a["asset"] == row["asset"] for a in report["addresses"])
            assets.append({"asset": row["asset"], "decimals": row["decimals"], "liabilities_minor": str(owed),
                           "reserves_minor": str(held) if claimed else None,
                           "coverage_percent": row["coverage_percent"],
                           "coverage_bp": _coverage_bp(held, owed) if claimed else None})
        shield = report["shield"]
        return {"n": n, "published_at": published_at, "position": snap.position, "snapshot_id": snap.snapshot_id.hex(),
                "root_hash": root["root"]["hash"], "leaf_count": root["root"]["leaf_count"], "accounts": accounts,
                "reserves_proven": proven, "reserves_note": report["reserves_note"], "chain_heights": report["chain_heights"],
                "assets": assets, "shield_ok": shield["ok"], "shield_alert": shield["alert"],
                "files": [f for f in PUBLIC_FILES if f != "evidence.json" or proven]}

    # ------------------------------------------------------------------ the schedule

    def run(self, stop: threading.Event) -> None:
        """Publish every `every_s` seconds until `stop` is set; a failed run is logged and retried."""
        while not stop.wait(self.every_s):
            if not self.alive():
                log.info("por.schedule_ended", reason="the node was closed")
                return
            try:
                self.publish(paced=True)
            except NodeStopped:  # said once by _check_node: a stopped node never publishes again
                log.info("por.schedule_ended", reason=self.refused)
                return
            except Exception as exc:  # noqa: BLE001 - one failed publication must not end the schedule; logged and counted
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("por.publish_failed", error=self.last_error)

    def start(self) -> None:
        """Run the schedule on a daemon thread (`every_s` > 0)."""
        if self.every_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name="ringfence-por-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30) -> None:  # float-ok: a thread join timeout, not money
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def _own_copy(err: BaseException) -> BaseException:
    """A copy of a failed build's exception for a caller that joined it (its cause: the build's): one
    exception object raised in several threads would gather each thread's frames in one traceback."""
    try:
        return copy.copy(err)
    except Exception:  # noqa: BLE001 - an exception class that cannot be copied: said by a plain one
        return RingfenceError(f"the proof this call joined failed: {type(err).__name__}: {err}")


class _Build:
    """One proof being built (`PorPublisher._builds`): its result for the callers that joined it."""

    def __init__(self) -> None:
        self.hurry = threading.Event()  # set by an unpaced caller that joined: no more pauses
        self.done = threading.Event()
        self.entry: dict[str, Any] | None = None
        self.error: BaseException | None = None


class PorMetrics:
    """Prometheus collector: the newest proof (from history.json) and the live shield fund rule.

    `ringfence_shield_alert` is 1 when CoinEx's rule is broken or cannot be checked (an asset without
    a price); 0 when it holds or no hot/shield wallet exists (`ringfence_shield_rule_applicable` 0).
    """

    def __init__(self, read: Callable[[Callable[[Any], Any]], Any], out_dir: Path, value_asset: str = "USDT") -> None:
        self.read = read
        self.out_dir = Path(out_dir)
        self.value_asset = value_asset

    def describe(self) -> list[Any]:
        return []  # no static description: collected on each scrape

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from ..custody.shield import shield_status

        try:
            proofs = read_history(self.out_dir)["proofs"]
        except (OSError, ValueError):
            proofs = []
        count = GaugeMetricFamily("ringfence_por_proofs_kept", "Scheduled proofs of solvency kept in DIR/por")
        count.add_metric([], len(proofs))
        yield count
        if proofs:
            head = proofs[-1]
            number = GaugeMetricFamily("ringfence_por_last_proof_number", "Number of the newest published proof")
            number.add_metric([], head["n"])
            yield number
            proven = GaugeMetricFamily("ringfence_por_reserves_proven", "1 when the newest proof carries reserve evidence")
            proven.add_metric([], 1 if head["reserves_proven"] else 0)
            yield proven
            coverage = GaugeMetricFamily("ringfence_por_coverage_basis_points",
                                         "Reserves / liabilities of the newest proof, in basis points", labels=["asset"])
            for row in head["assets"]:
                if row.get("coverage_bp") is not None:
                    coverage.add_metric([row["asset"]], row["coverage_bp"])
            yield coverage
        status = self.read(lambda engine: shield_status(engine, self.value_asset))
        alert = GaugeMetricFamily("ringfence_shield_alert", "1 when shield fund value < hot wallet value (or unpriced)")
        alert.add_metric([], 1 if status["alert"] else 0)
        yield alert
        applicable = GaugeMetricFamily("ringfence_shield_rule_applicable", "1 when hot or shield wallets exist")
        applicable.add_metric([], 1 if status["applicable"] else 0)
        yield applicable
        values = GaugeMetricFamily("ringfence_shield_rule_value_minor", "Both sides of the shield rule, in the value asset's minor units",
                                   labels=["side", "value_asset"])
        values.add_metric(["shield", self.value_asset], int(status["shield_value_minor"]))
        values.add_metric(["hot", self.value_asset], int(status["hot_value_minor"]))
        yield values
