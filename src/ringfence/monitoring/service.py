"""The monitoring worker inside `ringfence serve`: the outbox writer plus the scorer.

The scorer reads the stream from its cursor (`monitoring_cursor`, name "rules"), runs every event
through the rule set and stores the hits as alerts in cases; the cursor moves in the same
transaction as the alerts, and only from where this scorer read it (`cases.store_hits`), so a
restart neither loses nor repeats an alert, nor does a second scorer on the same stream. On start
the rules' windows are warmed with the events of the longest window before the cursor (their hits
are not raised again). Nothing here runs on the engine's sequencer thread.

The scorer runs on a thread of this process, or (`serve`'s default, `process`) in a process of its
own (scorer_process.py): the engine process then keeps the outbox and the system checks, and asks
the scorer process for what only it holds (the links, the baselines, the model, its progress).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select

from ..store import Store
from ..store.data_version import CommitCounter
from ..store.models import MonitoringAlert, MonitoringCase, MonitoringCursor, MonitoringEvent
from ..errors import ConfigError
from ..pacing import CpuPacer
from .cases import CursorMoved, store_hits
from .events import Event
from .feedback import LABELS, MAX_WEIGHT, MIN_WEIGHT, STEP, Decision, decisions_after, learn
from .geoip import GeoIP
from .linking import LinkGraph, RaisedClusters
from .rules import Hit, RuleSet, Scorer, default_rules, parse_rules
from .stream import READ_BATCH, Outbox, custody_resolver, pending_at_least, read_after, read_pages

__all__ = ["Monitor", "load_rules"]

log = structlog.get_logger("ringfence.monitoring")
CURSOR = "rules"
CLUSTER_RULE = "linked-cluster"
CLUSTER_CHECK_MS = 1_000
LINK_KINDS = frozenset({"trade", "withdrawal_requested", "deposit_credited"})


def load_rules(path: str) -> RuleSet:
    return parse_rules(Path(path).read_text()) if path else default_rules()


#: events scored per hold of the links' lock (and between the pacer's looks at the clock)
SCORE_CHUNK = 64
#: events fetched and decoded at a time while the scorer keeps up: each page of its one query is
#: decoded and scored before the next is fetched, so no read is a burst of its own (one read of a
#: quarter second of orders, a few hundred events, was 4-22 ms of CPU; docs/latency.md, session 20)
READ_PAGE = SCORE_CHUNK


class Monitor:
    def __init__(self, store: Store, exchange: Any, ruleset: RuleSet, *, poll_ms: int = 200, flush_ms: int = 100, geoip: str = "",
                 liquidity_accounts: tuple[str, ...] = (), identity: Any = None, pacer: CpuPacer | None = None,
                 outbox_pacer: CpuPacer | None = None, writes_outbox: bool = True, process: Any = None) -> None:
        self.store = store
        #: whether this process writes the outbox's queue to the stream (a scorer process only reads it)
        self.writes_outbox = writes_outbox
        #: the scorer process (scorer_process.ScorerProcess) that scores in this one's stead, or None: a thread here
        self.process = process
        #: In a serving process: the scorer's share of the GIL while it scores a batch (ringfence/pacing.py);
        #: a batch of a quarter second of orders was ~15-28 ms of CPU in one burst (docs/latency.md, session 17)
        self.pacer = pacer
        self.identity = identity  # the identity service's context: account actions go through its API (cases.py)
        self.geoip: GeoIP | None = None
        if geoip:
            try:
                self.geoip = GeoIP(geoip)
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot read the GeoIP database {geoip!r}: {err}", field="RINGFENCE_MONITORING_GEOIP") from None
        self.exchange = exchange
        self.ruleset = ruleset
        self.poll_ms = max(10, poll_ms)
        self.outbox = Outbox(store, flush_ms=flush_ms, resolve=custody_resolver(exchange), pacer=outbox_pacer)
        self.scorer = Scorer(ruleset)
        link_cfg = ruleset.linking
        if liquidity_accounts:  # the demo's market maker (serve --demo), beside the rule set's own
            link_cfg = dataclasses.replace(link_cfg, liquidity_accounts=link_cfg.liquidity_accounts | frozenset(liquidity_accounts))
        self.link_config = link_cfg
        self.links = LinkGraph(config=link_cfg)
        self._links_lock = threading.Lock()
        self._raised = RaisedClusters()  # the flagged clusters alerted on (linking.py)
        self._clusters_checked_ms = 0
        self._clusters_dirty = False
        self._clusters_checked_through = 0  # the stream position the last cluster check covered
        self.cursor = 0  # the last event whose alerts are stored (monitoring_cursor, moved with them)
        #: scored but not yet stored: the last event in the scorer's windows and the links, and the alerts
        #: of the events after `cursor` up to it. A failed write keeps them here for the next step, which
        #: reads on from `scored_through` and stores them with its own (no event is scored twice)
        self.scored_through = 0
        self._unsaved: list[Hit] = []
        #: one step at a time (the thread's, and `stop()`'s last one, which may come before the thread
        #: ended): two at once scored the same events twice, and could drop alerts the other had just added
        self._step_lock = threading.Lock()
        self.feedback_through = 0  # the last case-log close step applied to the model's weights (feedback.py)
        self.decisions: list[Decision] = []
        self.alerts_raised = 0
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # checks of the exchange itself (not of an account), run on this thread on their own interval:
        # each has `name`, `due(now_ms)`, `check(now_ms)` (stores its alerts) and `status()`
        # (e.g. solvency/shield_alarm.py: CoinEx's shield fund rule)
        self.system_checks: list[Any] = []
        #: SQLite's `PRAGMA data_version` when the last step of the thread began (`_store_version`):
        #: while it has not moved, no connection of any process committed anything, so the next poll's
        #: step (three transactions: decisions, the backlog, the events) would read nothing new
        self._version_stepped: int | None = None
        #: followed across a copy renamed over the database's path (store/data_version.py)
        self._versions = CommitCounter(store.engine.url)
        self.idle_polls_skipped = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.writes_outbox:
            self.outbox.start()
        if self.process is not None:
            self.process.start()  # it loads the cursor and warms its windows itself
        else:
            self._load()
        self._thread = threading.Thread(target=self._run, name="ringfence-monitoring", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        """The cursor as stored, the model's weights, the windows and links warmed with the events before it."""
        self._feedback()  # the weights every decision so far taught, before the windows are warmed
        with self.store.tx() as db:
            row = db.get(MonitoringCursor, CURSOR)
            self.cursor = row.position if row is not None else 0
            last_at = db.scalar(select(MonitoringEvent.at_ms).where(MonitoringEvent.id == self.cursor)) or 0
            first = db.scalar(select(func.min(MonitoringEvent.id)).where(
                MonitoringEvent.at_ms >= last_at - self.ruleset.max_window_ms(), MonitoringEvent.id <= self.cursor))
        self.scored_through = self.cursor
        warm_from = (first or self.cursor + 1) - 1
        while warm_from < self.cursor:  # warm the windows; these events' hits were stored before
            batch = self._located([e for e in read_after(self.store, warm_from) if e.id <= self.cursor])
            if not batch:
                break
            with self._links_lock:  # (a scorer process answers questions about the links meanwhile)
                for e in batch:
                    self.scorer.process(e)
                    self.links.add(e)
            warm_from = batch[-1].id
        with self.store.tx() as db:  # flagged clusters already raised (their signature ends the explanation)
            for text in db.scalars(select(MonitoringAlert.explanation).where(MonitoringAlert.rule == CLUSTER_RULE)):
                self._raised.signatures.add(text.rsplit("[", 1)[-1].rstrip("]"))

    def _reload(self) -> None:
        """Another scorer moved the stored cursor (CursorMoved): what this one scored since is dropped
        (the other stored those events' alerts) and everything is loaded again from the cursor."""
        with self._links_lock:
            self.scorer = Scorer(self.ruleset)
            self.links = LinkGraph(config=self.link_config)
        self._raised = RaisedClusters()
        self._unsaved = []
        self.feedback_through, self.decisions = 0, []
        self._clusters_checked_ms, self._clusters_dirty, self._clusters_checked_through = 0, False, 0
        self._version_stepped = None
        self._load()

    def stop(self) -> None:
        self._stop.set()
        if self.writes_outbox:
            self.outbox.stop()
        if self._thread is not None:
            self._thread.join(10)
        if self.process is not None:  # after the outbox's last write: its last step scores that too
            self.process.stop()
            return
        # what the outbox wrote last (unpaced: `_stop` is set; the caller may be the event loop, which waits
        # no longer than it did): not while a step of the thread still runs, stuck for 10 s; the events
        # after the stored cursor are scored on the next start
        if not self._step_lock.acquire(blocking=False):
            log.warning("monitoring.last_step_skipped", reason="a step of the scorer's thread is still running")
            return
        try:
            self._step()
        finally:
            self._step_lock.release()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.poll_ms / 1000):
                if self.process is not None:
                    try:
                        self.process.keep_running()  # started again, after a pause, if it ended
                    except Exception as err:  # (it could not be spawned) logged, and tried again on the next poll
                        self.errors += 1
                        self.last_error = type(err).__name__
                        log.exception("monitoring.scorer_process_start_failed")
                    self.run_system_checks()
                    continue
                try:
                    version = self._store_version()
                    if self._nothing_new(version):
                        self.idle_polls_skipped += 1
                    else:
                        # again at once only after a full batch: a stream that is caught up is read once per
                        # poll, in batches of what came meanwhile (each step costs a few transactions of its own)
                        while self.step() >= READ_BATCH:
                            pass
                        self._version_stepped = version  # only after steps that did not fail
                except CursorMoved as err:  # another scorer stored these events' alerts: start again from its cursor
                    log.warning("monitoring.cursor_moved", error=str(err))
                    try:
                        with self._step_lock:
                            self._reload()
                    except Exception as reload_err:  # the store away: the next poll's step fails again and retries
                        self.errors += 1
                        self.last_error = type(reload_err).__name__
                        log.exception("monitoring.reload_failed")
                except Exception as err:  # logged and retried; the cursor moved only over events scored
                    self.errors += 1
                    self.last_error = type(err).__name__
                    log.exception("monitoring.step_failed")
                self.run_system_checks()
        finally:
            self._versions.close()  # reopened by a next start; its values go on past the last one, which then steps

    def _nothing_new(self, version: int | None) -> bool:
        """Whether the poll's step may be skipped: the database has not changed since the last step
        began (`version`, None where there is no such counter: every poll steps), and that step left
        nothing to finish (alerts still to store, a cluster check due after more time)."""
        return (version is not None and version == self._version_stepped and self.scored_through == self.cursor
                and not self._clusters_dirty)

    def _store_version(self) -> int | None:
        """SQLite's `PRAGMA data_version` on a connection of the scorer thread's own, which never
        writes: it changes whenever any other connection, of any process, commits to the database
        (the outbox's events, `add_in_tx`'s, the analysts' decisions, this scorer's own alerts).
        Idle, the scorer's three transactions per poll were the largest CPU of an idle serving
        process (~1.4% of a core, issue 18); the pragma costs microseconds. None on PostgreSQL, in
        memory or for a URI database: the thread steps on every poll, as before.

        The counter is the opened file's: a database restored by renaming another file over its path
        (or removed) is seen by a look at the path's inode each poll (store/data_version.py), and the
        poll steps with a connection to the file now there. Without it the scorer watched the old
        file's counter, which nothing moves any more, and scored nothing again once the pool's
        connections had reopened the path (review, session 22; tests/monitoring/test_idle_poll.py)."""
        return self._versions.read()

    def run_system_checks(self) -> None:
        now_ms = time.time_ns() // 1_000_000
        for check in self.system_checks:
            if not check.due(now_ms):
                continue
            try:
                if check.check(now_ms) is not None:
                    self.alerts_raised += 1
            except Exception as err:  # logged and retried on the next interval
                self.errors += 1
                self.last_error = type(err).__name__
                log.exception("monitoring.system_check_failed", check=check.name)

    def _feedback(self) -> None:
        """Apply the analysts' decisions logged since the last look to the model's feature weights."""
        new = decisions_after(self.store, self.feedback_through)
        if not new:
            return
        with self._links_lock:
            model = self.scorer.model
            if model is not None:
                model.weights = learn(new, model.weights)
            self.decisions.extend(new)
            self.feedback_through = new[-1].action_id

    def model_status(self) -> dict[str, Any]:
        """The learnt weights and the decisions that taught them (GET /admin/v1/model)."""
        if self.process is not None:
            return self.process.ask("model_status")  # type: ignore[no-any-return]
        with self._links_lock:
            model = self.scorer.model
            return {"weights": dict(model.weights) if model is not None else {},
                    "learning": {"step_permille": STEP, "min_permille": MIN_WEIGHT, "max_permille": MAX_WEIGHT,
                                 "labels": sorted(LABELS)},
                    "applied_through_action": self.feedback_through,
                    "decisions": [d.as_dict() for d in self.decisions[-500:]], "decisions_total": len(self.decisions)}

    def step(self) -> int:
        """Score the next batch of events (at most READ_BATCH); returns how many were read. One step at
        a time: a step called while another runs waits for it."""
        with self._step_lock:
            return self._step()

    def _step(self) -> int:
        self._feedback()
        if self.scored_through > self.cursor:  # a failed step's results first: no more is read (or kept) until stored
            self._save(time.time_ns() // 1_000_000)
        # paced while it keeps up; a whole batch waiting means it fell behind (a burst of events, a share
        # too small for the rate): that batch and the next run at full speed until it has caught up
        pacer = self.pacer
        if pacer is not None and (self._stop.is_set() or pending_at_least(self.store, self.scored_through, READ_BATCH)):
            pacer = None
        if pacer is not None:
            pacer.restart()
        # one read, its rows decoded a page at a time, each page scored before the next is fetched (the
        # same events in the same order as one read decoded at once, which is what runs unpaced)
        events: list[Event] = []
        pages = read_pages(self.store, self.scored_through, page=READ_PAGE if pacer is not None else READ_BATCH)
        try:
            for page in pages:
                page = self._located(page)
                for first in range(0, len(page), SCORE_CHUNK):
                    with self._links_lock:  # released between chunks: a paused scorer holds up no reader of the links
                        for e in page[first:first + SCORE_CHUNK]:
                            found = self.scorer.process(e)
                            self.links.add(e)  # if this raises, e's alerts are not kept with the events before it
                            self._unsaved.extend(found)
                            self.scored_through = e.id
                            events.append(e)
                    if pacer is not None:
                        pacer.tick()
        except Exception:
            # a later page's read (or its GeoIP look-up) failed: the events scored before it are in the
            # scorer's windows and the links already; store their alerts and move the cursor over them, as
            # a smaller step would have. Should that write fail too (the database is gone), they stay
            # unsaved in memory, and the retry reads on after them and stores them with its own
            pages.close()  # the read's transaction ends before the alerts are written
            self._clusters_dirty = self._clusters_dirty or any(e.kind in LINK_KINDS for e in events)
            if self.scored_through > self.cursor:
                self._save(time.time_ns() // 1_000_000)
            raise
        now_ms = time.time_ns() // 1_000_000
        # The links changed since the last cluster check: check again once CLUSTER_CHECK_MS has passed,
        # whether or not more events come (a trade in a batch inside the interval is checked later).
        self._clusters_dirty = self._clusters_dirty or any(e.kind in LINK_KINDS for e in events)
        due = self._clusters_dirty and now_ms - self._clusters_checked_ms >= CLUSTER_CHECK_MS
        if self.scored_through == self.cursor and not due:
            return 0
        if due:  # (kept with the unsaved alerts: `_raised` has these clusters from now on)
            self._unsaved.extend(self._flagged_clusters(events[-1].at_ms if events else now_ms))
        self._save(now_ms)
        if due:  # only once its alerts are stored: `pending` in status() is false when they are visible
            self._clusters_checked_ms, self._clusters_dirty, self._clusters_checked_through = now_ms, False, self.cursor
        return len(events)

    def _save(self, now_ms: int) -> None:
        """Store the unsaved alerts and move the cursor to `scored_through` in one transaction; if the
        write fails, both stay as they are for the next step's write."""
        store_hits(self.store, self._unsaved, now_ms, cursor=(CURSOR, self.scored_through, self.cursor))
        self.cursor = self.scored_through
        self.alerts_raised += len(self._unsaved)
        self._unsaved = []

    def _located(self, events: list[Event]) -> list[Event]:
        """With a GeoIP database: each event with an IP and no country gets `data.country` (when known)."""
        geo = self.geoip
        if geo is None:
            return events
        out = []
        for e in events:
            if e.ip and "country" not in e.data:
                country = geo.country(e.ip)
                if country:
                    e = Event(e.id, e.kind, e.at_ms, account_id=e.account_id, ip=e.ip, device=e.device, source=e.source,
                              data={**e.data, "country": country})
            out.append(e)
        return out

    def _flagged_clusters(self, at_ms: int) -> list[Hit]:
        """One `linked-cluster` alert per newly flagged cluster: raised once for a set of members, and
        again only when the cluster grows (a member set not within one already raised). More trades
        inside a raised cluster raise nothing new. The evidence is the event ids of its links."""
        hits = []
        with self._links_lock:
            clusters = self.links.clusters()
        for c in clusters:
            if not c.get("flagged"):
                continue
            members = c["members"]
            joined = self._raised.new(members)
            if joined is None:
                continue
            hits.append(Hit(CLUSTER_RULE, "high", members[0], at_ms,
                            f"linked accounts {', '.join(members[:10])}{' …' if len(members) > 10 else ''}"
                            + (f" (grown: {', '.join(joined[:10])} joined)" if joined else "") + ": "
                            + "; ".join(c["reasons"]) + f" [{self._raised.signature(members)}]", tuple(c.get("evidence", ())),
                            related=tuple(members[1:])))
        return hits

    def clusters(self, account_id: str = "") -> Any:
        """Linked-account clusters (linking.py), or the one holding `account_id`."""
        if self.process is not None:
            return self.process.ask("clusters", account_id)
        with self._links_lock:
            return self.links.cluster_of(account_id) if account_id else self.links.clusters()

    def baseline(self, account_id: str) -> dict[str, Any] | None:
        """The behavioural model's baseline of one account (models.py), or None (no behaviour rule, or unseen)."""
        if self.process is not None:
            return self.process.ask("baseline", account_id)  # type: ignore[no-any-return]
        with self._links_lock:
            model = self.scorer.model
            return model.summary(account_id) if model is not None else None

    def scorer_status(self) -> dict[str, Any]:
        """What the scorer itself holds: its cursor, what it scored, learnt and linked, its errors."""
        with self._links_lock:
            model, links = self.scorer.model, self.links
            return {"cursor": self.cursor, "events_scored": self.scorer.events_scored,
                    "model": {"accounts": len(model.profiles), "events_learnt": model.events_learnt} if model is not None else None,
                    "linking": {"accounts": len(links.accounts), "trades": links.trades_seen,
                                "liquidity_trades": links.liquidity_trades,
                                "liquidity_accounts": sorted(links.config.liquidity_accounts),
                                "checked_through": self._clusters_checked_through, "pending": self._clusters_dirty},
                    "errors": self.errors, "last_error": self.last_error}

    def status(self) -> dict[str, Any]:
        with self.store.tx() as db:
            newest = db.scalar(select(func.max(MonitoringEvent.id))) or 0
            alerts = db.scalar(select(func.count()).select_from(MonitoringAlert)) or 0
            active = db.scalar(select(func.count()).select_from(MonitoringCase).where(MonitoringCase.status != "closed")) or 0
            stored_cursor = db.scalar(select(MonitoringCursor.position).where(MonitoringCursor.name == CURSOR)) or 0
        if self.process is None:
            scoring = self.scorer_status()
        else:  # the scorer process's own figures; while it is away, the stored cursor and no counts
            scoring = self.process.status(fallback={"cursor": stored_cursor, "events_scored": None, "model": None, "linking": None,
                                                    "errors": 0, "last_error": ""})
            scoring["errors"] += self.errors  # the system checks' here
            scoring["last_error"] = self.last_error or scoring["last_error"]
        return {"rules": [{"name": r.name, "type": r.type, "severity": r.severity, "description": r.description}
                          for r in self.ruleset.rules],
                **scoring, "newest_event": newest, "lag_events": max(0, newest - scoring["cursor"]),
                "alerts_total": alerts, "active_cases": active,
                "outbox": {"queued": len(self.outbox._queue), "written": self.outbox.written, "dropped": self.outbox.dropped,
                           "errors": self.outbox.errors},
                "geoip": self.geoip.path if self.geoip is not None else "",
                **{check.name: check.status() for check in self.system_checks}}
