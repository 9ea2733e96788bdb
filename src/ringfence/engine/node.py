"""One engine shard as a durable service: sequencer, group-committed journal, apply loop, recovery.

Flow of a command (ARCHITECTURE.md §1):

1. `submit(command)` (any thread) encodes the command once and decodes it back with the strict
   typed decoder, so a malformed command (a float, a bool, a missing field) fails right there with
   a clear error, and the object applied live is exactly the object replay will decode.
2. The sequencer thread collects a batch (bounded by command count, weight and a bounded wait),
   runs each command's precheck against current state (bad commands are answered at once and never
   journaled), stamps sequence numbers, one timestamp and 32 bytes of entropy, and appends the batch
   as one journal record with a single fsync (group commit).
3. Only after the fsync returns does it apply the commands in order and resolve each `Ack`:
   nothing is acknowledged before it is durable. One fsync per batch is on that path, the
   record's: the journal's durable mark is fsynced by a thread of its own (journal.py).
   Pipelined (`pipeline=True`), the sequencer applies the next batch while the fsync runs, and
   what leaves the node — acknowledgements, listeners, `read` results — waits for it (`_Pipeline`);
   replicated too, it also waits for the stream's ack of the batch, which is in flight meanwhile.

Readers on other threads (the API's event loop, the reconciler, custody workers) never touch the
engine directly: `node.read(fn)` runs `fn(engine)` between batches, under a readers-writer gate
that the sequencer holds only while it applies a batch (not while it journals), so a reader sees the
state after a whole journal record — never a command half applied — and waits at most one batch.
`node.last_seq` and the counters change once per batch, after it is applied (docs/engine.md, "How
readers see state").

If the journal cannot be written the node stops accepting commands: the state of the file is
unknown, and recovery on restart decides what was durable. The batch being written is answered
`NotDurable` when its write failed (at most a torn tail, truncated on recovery) and
`OutcomeUnknown` when it was written but the fsync failed (it may be recovered and applied).
`open()` takes the data directory's writer lock (`DIR/LOCK`) for the node's life: a second writer
is refused with the holder's pid, because two appenders interleave records and break the chain.
If a command breaks an invariant (`ShardHalt` from `apply`), the node rebuilds the state as of the
sequence number before it from snapshot + journal, records the halt in the state
(`Engine.enter_halt`), logs it once, and from then on refuses every command with `ShardHalted`;
replay on restart reproduces the same halted state.
"""

from __future__ import annotations

import os
import sys
import collections
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import msgspec

from ..errors import (
    ConfigError,
    InvariantViolation,
    JournalCorrupt,
    NotDurable,
    OutcomeUnknown,
    RateLimited,
    RingfenceError,
    SnapshotInvalid,
    ValidationError,
    error_codes,
)
from ..journal.journal import DataDirLock, DurableMark, JournalWriter, check_node_placement, scan
from .commands import Batch, Command, Event, SourcedBatch, encode
from .core import CommandRejected, Engine, ShardHalt
from .module import Module
from .snapshot import list_snapshots, read_snapshot, write_snapshot

__all__ = ["Node", "Ack", "ReadGate", "ReplicaLog", "RecoveryReport", "replay_journal", "command_weight"]

_STOP = object()
_log = logging.getLogger("ringfence.engine")


class ReplicaLog(Protocol):
    """Where a replicated node's batches must arrive before they are acknowledged (ringfence.replication)."""

    def begin(self, first_seq: int, count: int, payload: bytes, record_hash: bytes) -> Any: ...

    def finish(self, token: Any, engine: Engine, outputs: list[list[Event]]) -> None:
        """After apply, before any acknowledgement: return once the batch is replicated. `outputs`
        are the batch's events, per command (a follower checks it produced the same)."""

    def written(self, token: Any) -> None:
        """The batch's record is written (classic path: and fsynced); it is about to be applied.
        Work `begin` started on the state before the batch must be done by now; never raises."""

    def settle(self, token: Any) -> None:
        """After a failed local write: wait (bounded) for a publish `begin` started; never raises."""

    def finish_later(self, token: Any, engine: Engine, outputs: list[list[Event]]) -> "concurrent.futures.Future[None]":
        """Pipelined node (`Node(pipeline=True)`): what `finish` does, without waiting. Called after
        apply, before the next batch is applied (so it may read the engine at this batch's state);
        returns at once a future that completes once the batch is replicated, or fails."""

    def answered(self) -> None:
        """Optional (classic group commit): on the sequencer, once a replicated batch's commands are
        answered and before the next batch is taken; the engine is at that batch's state. Work due
        on that state that no client should wait for (the replication's state digest) goes here.
        Never raises."""


class ReadGate:
    """Many readers at once, or the one writer (the sequencer applying a batch); the writer first.

    The sequencer's cost is two short critical sections per batch (not per command) when no reader
    is inside. When readers are inside it waits for them, and readers that arrive while it waits
    queue behind it, so a stream of readers cannot starve the sequencer and a reader waits at most
    for the readers already inside plus one batch.
    """

    __slots__ = ("_cond", "_local", "_queued", "_readers", "_writer_waiting", "_writing")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0  # inside
        self._queued = 0  # waiting to get in
        self._writing = False
        self._writer_waiting = False
        self._local = threading.local()  # read depth per thread: a nested read must not queue

    def acquire_read(self) -> None:
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:
            with self._cond:
                if self._writing or self._writer_waiting:
                    self._queued += 1
                    while self._writing or self._writer_waiting:
                        self._cond.wait()
                    self._queued -= 1
                self._readers += 1
        local.depth = depth + 1

    def release_read(self) -> None:
        local = self._local
        local.depth -= 1
        if local.depth == 0:
            with self._cond:
                self._readers -= 1
                assert self._readers >= 0, "read gate released more often than taken"
                if self._readers == 0 and self._writer_waiting:
                    self._cond.notify_all()

    def refuse_if_reading(self) -> None:
        """A thread inside a read may not apply a batch itself: it would wait for its own read."""
        if getattr(self._local, "depth", 0):
            raise RuntimeError("a command cannot be applied from inside node.read(); read, then submit")

    def acquire_write(self) -> None:
        with self._cond:
            assert not self._writing, "the read gate has one writer"
            if self._readers:
                self._writer_waiting = True
                while self._readers:
                    self._cond.wait()
                self._writer_waiting = False
            self._writing = True

    def release_write(self) -> None:
        with self._cond:
            self._writing = False
            if self._queued:
                self._cond.notify_all()


class Ack:
    """The answer to one submitted command; resolved only once its batch is durable and applied.

    Waiting uses the node's one condition variable, notified once per batch, rather than a lock per
    command: at 100,000 commands/s the difference is a large share of the sequencer's time.

    While queued and in its batch, the Ack is also the command's place in the inbox: it carries the
    prepared command and its encoded bytes (`command`, `raw`; the bytes are dropped once the batch
    is answered). A queued request is then two objects the cyclic garbage collector tracks, the Ack
    and its decoded command's list (was four: a `(command, raw, ack)` tuple per request and a list
    for its one callback as well), so a backlog — which is what a stall builds — makes the young
    collections that come with it fewer and shorter (issue #18 item 6;
    tests/engine/test_node_gc.py).
    """

    __slots__ = ("events", "error", "seq", "source", "command", "raw", "_cond", "_callbacks")

    def __init__(self, cond: threading.Condition | None = None, source: str = "",
                 command: Command | None = None, raw: bytes = b"") -> None:
        self.source = source  # who submitted the command: journaled with it (SourcedBatch)
        self.events: list[Event] | None = None
        self.error: BaseException | None = None
        self.seq = 0
        #: the prepared (strictly decoded) command and its bytes, set once it is queued (`Node.submit`)
        self.command: Any = command
        self.raw = raw
        self._cond = cond
        #: None, the one callback (the usual case: no list to allocate), or a list of them
        self._callbacks: Callable[["Ack"], None] | list[Callable[["Ack"], None]] | None = None

    def _resolve(self, events: list[Event] | None = None, error: BaseException | None = None, seq: int = 0) -> None:
        """Answer this request, once: an Ack already answered keeps its first answer (a sweep of a
        stopping node and a late acknowledger could both reach it) and calls nobody again."""
        cond = self._cond
        if cond is not None:
            cond.acquire()  # against `add_done_callback` on another thread: each callback is called once
        try:
            if self.events is not None or self.error is not None:
                return
            self.seq, self.error, self.events = seq, error, events
            callbacks, self._callbacks = self._callbacks, None
        finally:
            if cond is not None:
                cond.release()
        if callbacks is not None:
            _call(self, callbacks)

    def done(self) -> bool:
        return self.events is not None or self.error is not None

    def add_done_callback(self, fn: Callable[["Ack"], None]) -> None:
        """Call `fn(ack)` when resolved (on the sequencer thread; keep it short), exactly once: at
        once, here, if it is resolved already. Registering and resolving take the node's condition
        (the resolver once per batch), so a callback registered while its Ack is being resolved on
        the sequencer is called by one of the two, never by both (it was, before session 18: both
        could see it)."""
        cond = self._cond
        if cond is not None:
            cond.acquire()  # (the lock's own C method: `with cond` costs two Python calls per request)
        try:
            registered = self.events is None and self.error is None  # not done
            if registered:
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = fn
                elif type(callbacks) is list:
                    callbacks.append(fn)
                else:
                    self._callbacks = [callbacks, fn]  # type: ignore[list-item]
        finally:
            if cond is not None:
                cond.release()
        if not registered:
            fn(self)

    def wait(self, timeout: float | None = None) -> list[Event]:  # float-ok: seconds to wait
        """Block until resolved; raise the submission error, if any; return the events."""
        if not self.done():
            cond = self._cond
            if cond is None:
                raise RuntimeError("this Ack was never submitted")
            deadline = None if timeout is None else time.monotonic() + timeout
            with cond:
                while not self.done():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError("command not acknowledged in time; it may still be applied")
                    cond.wait(left if left is not None else 1.0)
        if self.error is not None:
            raise self.error
        assert self.events is not None
        return self.events

    def result(self, timeout: float | None = None) -> list[Event]:  # float-ok: seconds to wait
        """Like `wait`, but a `CommandRejected` event is raised as the matching `RingfenceError`."""
        events = self.wait(timeout)
        for event in events:
            if isinstance(event, CommandRejected):
                raise rejection_error(event)
        return events


def _answer(accepted: list[Ack], first_seq: int, outputs: list[list[Event]],
            halted: dict[int, InvariantViolation]) -> None:
    """Resolve a durable, applied batch's acks in order: command `i` has sequence `first_seq + i`
    and events `outputs[i]`, or the error in `halted[i]`. What `Ack._resolve` does, inlined: this
    runs once per command on the sequencer's (or the acknowledger's) critical path."""
    if halted:
        for i, ack in enumerate(accepted):
            if i in halted:
                ack._resolve(error=halted[i])
            else:
                ack._resolve(outputs[i], seq=first_seq + i)
        return
    assert len(outputs) == len(accepted), "one list of events per accepted command"
    if not accepted:
        return
    seq = first_seq
    claimed: list[Any] = []  # ack, its callbacks, ...: taken under the condition, called after it
    cond = accepted[0]._cond
    if cond is not None:
        cond.acquire()  # once per batch: `add_done_callback` on another thread sees each Ack before or after
    try:
        for ack, events in zip(accepted, outputs):
            if ack.error is not None:  # answered already (a stopping node's sweep): its first answer stays
                seq += 1
                continue
            ack.seq = seq  # before `events`: a waiter that sees it done reads a complete answer
            ack.events = events
            ack.raw = b""  # journaled: a caller that keeps its Acks does not keep every request's bytes
            callbacks = ack._callbacks
            if callbacks is not None:
                ack._callbacks = None
                claimed.append(ack)
                claimed.append(callbacks)
            seq += 1
    finally:
        if cond is not None:
            cond.release()
    for i in range(1, len(claimed), 2):  # (inlined `_call`: a Python call per request saved)
        callbacks = claimed[i]
        if type(callbacks) is list:
            _call(claimed[i - 1], callbacks)
        else:
            try:
                callbacks(claimed[i - 1])
            except Exception:  # noqa: BLE001 - one caller's broken callback must not cost the others theirs
                _log.exception("a request's completion callback raised (request %d)", claimed[i - 1].seq)


def _call(ack: Ack, callbacks: Any) -> None:
    """Call an Ack's callbacks, claimed by its resolver: one function, or a list of them in order.
    One that raises is logged; the others (and the other requests' callbacks) are still called."""
    for fn in callbacks if type(callbacks) is list else (callbacks,):
        try:
            fn(ack)
        except Exception:  # noqa: BLE001 - see `_answer`
            _log.exception("a request's completion callback raised (request %d)", ack.seq)


def rejection_error(event: CommandRejected) -> RingfenceError:
    cls = error_codes().get(event.code, RingfenceError)
    err = cls(event.message, field=event.field or None)
    return err


def _bounded(value: int, low: int, high: int, name: str) -> int:
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low:,} and {high:,}", field=name)
    return value


def command_weight(command: Command) -> int:
    """How much batch capacity a command uses: its item count for list-carrying commands."""
    items = getattr(command, "transfers", None)
    if items is None:
        items = getattr(command, "actions", None)  # ringfence.trading.commands.TradingBatch
    return len(items) if items is not None else 1


@dataclass
class RecoveryReport:
    snapshot_seq: int = 0
    snapshot_path: str | None = None
    replayed_commands: int = 0
    replayed_records: int = 0
    last_seq: int = 0
    state_hash: str = ""
    seconds: float = 0.0  # float-ok: duration
    torn_tail: str | None = None
    notes: list[str] = field(default_factory=list)


def _load_newest_snapshot(
    snap_dir: Path, report: RecoveryReport, modules: Sequence[Module], max_seq: int | None = None
) -> tuple[Engine, bytes | None]:
    for path in list_snapshots(snap_dir):
        try:
            info = read_snapshot(path)
            if max_seq is not None and info.seq > max_seq:
                continue
            engine = Engine.from_snapshot_bytes(info.payload, modules)
            if engine.state_hash() != info.state_hash or engine.last_seq != info.seq:
                raise SnapshotInvalid(f"snapshot {path.name}: recomputed state hash differs from the recorded one")
        except (SnapshotInvalid, ValueError, msgspec.DecodeError) as err:
            report.notes.append(f"skipped snapshot {path.name}: {err}")
            continue
        report.snapshot_seq = info.seq
        report.snapshot_path = str(path)
        return engine, info.journal_hash
    return Engine(modules), None


def replay_journal(
    data_dir: Path,
    *,
    modules: Sequence[Module],
    use_snapshots: bool = True,
    truncate: bool = False,
    until_seq: int | None = None,
    on_batch: Callable[[Engine, Any, list[list[Event]]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Engine, RecoveryReport, Any]:
    """Rebuild the engine from the newest valid snapshot (optionally) plus the journal.

    With `until_seq`, stop after applying that sequence number (the state "as of" a journal
    position; the rest of the journal is still verified). Returns `(engine, report, scan_report)`.
    Raises `JournalCorrupt` on corruption. A command that broke an invariant when it was first
    applied breaks it again here: the same halted state is rebuilt (`rebuild_halted`).
    """
    started = time.perf_counter()
    report = RecoveryReport()
    data_dir = Path(data_dir)
    if until_seq is not None and until_seq < 0:
        raise ValidationError("must be a sequence number (0 or more)", field="until_seq")
    if use_snapshots:  # not one past `until_seq`
        engine, anchor = _load_newest_snapshot(data_dir / "snapshots", report, modules, until_seq)
    else:
        engine, anchor = Engine(modules), None
    start_seq = engine.last_seq
    decoder = engine.codec.batch
    gen = scan(data_dir / "journal", truncate=truncate, decode_from_seq=start_seq + 1)
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            scan_report = stop.value
            break
        if until_seq is not None and record.first_seq > until_seq:
            continue  # verified by the scan, not applied
        if record.last_seq <= start_seq:
            if record.last_seq == start_seq and anchor is not None and record.hash != anchor:
                raise JournalCorrupt(
                    f"the snapshot at sequence {start_seq} does not match the journal record that ends there"
                )
            continue
        if record.first_seq <= start_seq:
            raise JournalCorrupt(f"the snapshot at sequence {start_seq} falls inside a journal record")
        batch = decoder.decode(record.payload)
        if batch.first_seq != record.first_seq or len(batch.commands) != record.count:
            raise JournalCorrupt(
                f"record at {record.segment}:{record.offset} says sequence {record.first_seq} x {record.count} "
                f"but its payload holds {batch.first_seq} x {len(batch.commands)}"
            )
        apply = engine.apply
        outputs = []
        for i, command in enumerate(batch.commands):
            if until_seq is not None and batch.first_seq + i > until_seq:
                break
            try:
                outputs.append(apply(command, batch.first_seq + i, batch.ts_ns, batch.entropy))
            except ShardHalt as halt:
                outputs.append(rebuild_halted(data_dir, engine, halt))
        if on_batch is not None:
            on_batch(engine, batch, outputs)
        report.replayed_records += 1
        report.replayed_commands += len(outputs)
        if progress is not None:
            progress(len(outputs))
    if until_seq is not None and engine.last_seq < until_seq:
        raise ValidationError(f"the journal ends at sequence {engine.last_seq}, before {until_seq}", field="until_seq")
    if scan_report.last_seq < start_seq:
        raise JournalCorrupt(
            f"the journal ends at sequence {scan_report.last_seq} but the snapshot is at {start_seq}: "
            "acknowledged commands are missing from the journal"
        )
    report.torn_tail = scan_report.torn_tail
    report.notes.extend(scan_report.notes)
    report.last_seq = engine.last_seq
    report.state_hash = engine.state_hash()
    report.seconds = time.perf_counter() - started
    return engine, report, scan_report


def rebuild_halted(data_dir: Path, engine: Engine, halt: ShardHalt) -> list[Event]:
    """Put `engine` (broken by `halt`) into the halted state: its state as of `halt.seq - 1`, rebuilt
    from the newest snapshot at or before that point plus the journal, with the halt recorded.

    No undo log on the hot path: the journal already holds everything needed to rebuild, and a
    broken invariant is rare enough that replaying once is the cheap way to undo it."""
    clean, _, _ = replay_journal(data_dir, modules=engine.modules, until_seq=halt.seq - 1)
    return engine.enter_halt(clean, halt)


class Node:
    """A durable engine shard. Use `open()`, then either `start()` + `submit()` or `execute()`.

    `prezero_segments`: journal segments are zero-filled ahead of need (`JournalWriter(prezero=True)`,
    `ringfence serve` turns it on), so a record's fdatasync commits no file-size metadata."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        modules: Sequence[Module],
        fsync: bool = True,
        max_batch_commands: int = 8192,
        max_batch_weight: int = 65536,
        max_wait_us: int = 0,
        queue_limit: int = 100_000,
        segment_bytes: int = 64 * 1024 * 1024,
        snapshot_keep: int = 3,
        clock: Callable[[], int] = time.time_ns,
        entropy: Callable[[int], bytes] = os.urandom,
        journal_sync: Callable[[int], None] = os.fdatasync,
        purpose: str = "",
        pipeline: bool = False,
        durable_reads: bool = True, max_batches_in_flight: int = 0, prezero_segments: bool = False,
    ) -> None:
        if not 1 <= max_batch_commands <= 1_000_000:
            raise ValidationError("max_batch_commands must be between 1 and 1,000,000", field="max_batch_commands")
        if not 0 <= max_wait_us <= 100_000:
            raise ValidationError("max_wait_us must be between 0 and 100,000", field="max_wait_us")
        self.data_dir = Path(data_dir)
        #: The engine's modules (the standard list comes from `ringfence.app`).
        self.modules = tuple(modules)
        self.fsync = fsync
        self.max_batch_commands = max_batch_commands
        self.max_batch_weight = max_batch_weight
        self.max_wait_us = max_wait_us
        self.segment_bytes, self.prezero_segments = segment_bytes, prezero_segments
        self.snapshot_keep = snapshot_keep
        self._clock, self._entropy, self._journal_sync = clock, entropy, journal_sync
        #: written into the lock file next to the pid, so a refused second writer learns who holds it
        self.purpose = purpose or " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        self.lock: DataDirLock | None = None
        self.queue_limit = queue_limit
        self._inbox: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._acked = threading.Condition()
        self._thread: threading.Thread | None = None
        self.engine: Engine | None = None
        self.writer: JournalWriter | None = None
        self.failed: BaseException | None = None
        self._committing: list[Ack] = []  # the batch being committed (`_run` answers it if the commit raised)
        self.recovery: RecoveryReport | None = None
        #: `fn(first_seq, ts_ns, commands, outputs)` once per batch, in order, once the batch is
        #: durable and its acknowledgements resolved (read models, WebSocket feeds). Classic: on the
        #: sequencer thread right after the batch. Pipelined: on whichever thread sees the batch's
        #: sync return, when the engine may already be further on, so a listener must not read
        #: engine state: read what it needs in an apply hook.
        self.listeners: list[Callable[[int, int, list[Command], list[list[Event]]], None]] = []
        #: `fn(engine, first_seq, ts_ns)` on the sequencer thread right after each batch is applied,
        #: before it is durable: read from the state as of this batch what a listener will need
        #: (and keep it for the listener); publish nothing from here.
        self.apply_hooks: list[Callable[[Engine, int, int], None]] = []
        #: Replicated mode (ringfence.replication): the replica log every batch must reach before
        #: anyone is acknowledged. `begin` runs before the local write (it may start publishing
        #: while the fsync runs), `finish` (pipelined: `finish_later`, no wait) after it is applied; if either
        #: raises, the node stops and the batch's commands are answered NotDurable (before the write)
        #: or OutcomeUnknown (after it: the batch may be in the journal and the replica log).
        self.replica: ReplicaLog | None = None
        self.batches_committed = 0
        self.commands_committed = 0
        #: The last sequence number of the last batch applied; changes once per batch, after the whole of it (any thread may read it).
        self.last_seq = 0
        self._gate, self._direct = ReadGate(), threading.Lock()  # the lock: direct `execute_many` callers take turns
        self._decode = Engine(self.modules).codec.command.decode
        #: Pipelined group commit (see `_Pipeline`): the sequencer writes and applies batch N+1 while batch N's
        #: fdatasync runs on a syncer thread; each batch is acknowledged once a sync that began after its write returned.
        self.pipeline = pipeline
        #: Pipelined: `read` returns only once the batch it saw is durable (see `read`); False: never
        #: waits for an fsync (the API's event loop), may see a batch one fsync before it is durable.
        self.durable_reads = durable_reads
        #: Pipelined: start a batch only while fewer than this many are unacknowledged (0: no limit; `_Pipeline.wait_room`).
        self.max_batches_in_flight = _bounded(max_batches_in_flight, 0, 1_000, "max_batches_in_flight")
        self._pipe: _Pipeline | None = None
        #: Sequence number of the last command known durable (every mode; pipelined: may lag `last_seq`).
        self.durable_seq = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self, *, on_replay: Callable[[Engine, Any, list[list[Event]]], None] | None = None) -> RecoveryReport:
        """Recover: newest valid snapshot + journal tail, truncating a torn tail.

        With `on_replay`, read models that need the whole history are fed every batch: recovery
        then replays from genesis (snapshots are still verified against it by `journal replay`).
        """
        if self.lock is None:
            check_node_placement(self.data_dir)  # not inside or beside another node: before mkdir creates anything
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.lock is None:
            self.lock = DataDirLock(self.data_dir, self.purpose)  # before anything reads or truncates
        try:
            engine, report, scan_report = replay_journal(
                self.data_dir, modules=self.modules, truncate=True, use_snapshots=on_replay is None, on_batch=on_replay
            )
            self.engine = engine
            self.last_seq = self.durable_seq = engine.last_seq
            if engine.halted is not None:
                _log.critical("engine shard %s is halted since sequence %d (%s)", self.data_dir, *engine.halted)
            self.writer = JournalWriter(
                self.data_dir / "journal",
                next_seq=scan_report.last_seq + 1,
                last_hash=scan_report.last_hash,
                tail_segment=scan_report.tail_segment,
                tail_size=scan_report.tail_size,
                segment_bytes=self.segment_bytes,
                fsync=self.fsync,
                sync=self._journal_sync,
                prezero=self.prezero_segments,
            )
        except BaseException:
            self.lock.release()
            self.lock = None
            raise
        self.recovery = report
        return report

    def adopt(self, engine: Engine, position: tuple[int, bytes, Path | None, int], lock: DataDirLock) -> None:
        """Open with an engine that is already current — a promoted standby's, which verified and
        applied every batch of this very journal as it followed the stream — instead of replaying
        the journal: `position` is its writer's (`JournalWriter.position`) and `lock` the data
        directory's lock, handed over from the follower (never released in between)."""
        if self.engine is not None:
            raise RuntimeError("the node is already open")
        next_seq, last_hash, tail_segment, tail_size = position
        if engine.last_seq != next_seq - 1:
            raise RuntimeError(f"the engine is at sequence {engine.last_seq} but the journal ends at {next_seq - 1}")
        self.lock = lock
        self.engine = engine
        self.last_seq = self.durable_seq = engine.last_seq
        self.writer = JournalWriter(self.data_dir / "journal", next_seq=next_seq, last_hash=last_hash,
                                    tail_segment=tail_segment, tail_size=tail_size, segment_bytes=self.segment_bytes,
                                    fsync=self.fsync, sync=self._journal_sync, prezero=self.prezero_segments)
        self.recovery = RecoveryReport(last_seq=engine.last_seq, notes=["adopted the promoted standby's engine"])

    def start(self) -> None:
        if self.engine is None:
            self.open()
        if self._thread is None:
            if self.pipeline and self._pipe is None:
                if self.replica is not None and not hasattr(self.replica, "finish_later"):
                    raise ConfigError("pipeline=True needs a replica log that can replicate without waiting "
                                      "(ReplicaLog.finish_later); use pipeline=False with this one", field="pipeline")
                assert self.writer is not None
                self._pipe = _Pipeline(self)
            self._thread = threading.Thread(target=self._run, name="ringfence-sequencer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._post(_STOP)
            self._thread.join()
            self._thread = None
        if self._pipe is not None:  # everything written is synced and answered before the files close
            self._pipe.close()
            self._pipe = None
        try:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def abandon(self) -> None:
        """Drop the node as a killed process would, for crash simulations: close its files without
        syncing or flushing anything and release its lock (the kernel does both for a dead process).
        The sequencer thread must not be running."""
        assert self._thread is None, "abandon() simulates a dead process; stop the sequencer first"
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.poisoned = writer.poisoned or RuntimeError("abandoned (simulated crash)")
            writer.close()  # a poisoned writer closes its descriptors without syncing
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        self.failed = self.failed or RuntimeError("abandoned (simulated crash)")

    def _post(self, item: Any) -> None:
        self._inbox.append(item)
        if not self._wake.is_set():
            self._wake.set()

    def __enter__(self) -> "Node":
        if self.engine is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ submission

    def prepare(self, command: Command) -> tuple[Command, bytes]:
        """Encode once and decode strictly: the edge's type check, and the bytes to journal."""
        if not isinstance(command, Command):
            raise ValidationError("not a ringfence command", field="command")
        try:
            raw = encode(command)
        except (TypeError, OverflowError, ValueError) as err:
            raise ValidationError(f"the command cannot be encoded: {err}", field=type(command).__name__) from None
        try:
            return self._decode(raw), raw
        except msgspec.ValidationError as err:
            where = _field_of(err, type(command))
            reason = str(err).split(" - at `$", 1)[0]
            raise ValidationError(f"{reason}", field=where) from None

    def submit(self, command: Command, source: str = "") -> Ack:
        """Queue a command for the sequencer thread; returns its `Ack` at once. `source` names the
        submitter ("gateway:NODE", "worker:NAME", "staff:ID"); it is journaled, never applied."""
        ack = Ack(self._acked, source)
        if self.failed is not None:
            ack._resolve(error=NotDurable(f"the node has stopped: {self.failed}"))
            return ack
        if self._thread is None:  # nobody would ever take it from the inbox
            ack._resolve(error=NotDurable("the node's sequencer is not running; start() it, or use execute()"))
            return ack
        if len(self._inbox) >= self.queue_limit:
            ack._resolve(error=RateLimited("the engine queue is full; retry shortly"))
            return ack
        try:
            ack.command, ack.raw = self.prepare(command)
        except RingfenceError as err:
            ack._resolve(error=err)
            return ack
        self._inbox.append(ack)  # the Ack is the queued request (no tuple per request)
        if not self._wake.is_set():
            self._wake.set()
        return ack

    def execute(self, command: Command, source: str = "") -> list[Event]:
        """Submit one command and wait; a rejection is raised as its `RingfenceError`."""
        return self.execute_many([command], source=source)[0]

    def execute_many(self, commands: Iterable[Command], *, raise_rejected: bool = True, source: str = "") -> list[list[Event]]:
        """Run commands as one batch (directly when no sequencer thread runs) and wait for all."""
        acks: list[Ack] = []
        if self._thread is None:
            self._gate.refuse_if_reading()  # before anything is journaled
            items = []
            for command in commands:
                ack = Ack(self._acked, source)
                acks.append(ack)
                try:
                    ack.command, ack.raw = self.prepare(command)
                except RingfenceError as err:
                    ack._resolve(error=err)
                    continue
                items.append(ack)
            with self._direct:  # two threads could read the same next sequence number (test_direct_threads.py)
                self._commit(items)
        else:
            acks = [self.submit(c, source) for c in commands]
        return [ack.result() if raise_rejected else ack.wait() for ack in acks]

    def stopped_reason(self, detailed: bool = False) -> str | None:
        """Why this node has stopped for good (`failed`: deposed or fenced by replication, a journal
        write that failed), or None while it runs. The one question everything that must not act for
        a stopped node asks: the gateways' writes and /readyz, custody's workers, the policy attestor,
        the proof-of-solvency publisher. Our own errors are written for whoever reads them; any
        other (an OSError names files and folders) says only its kind unless `detailed` (an operator,
        or a caller with the metrics token): the safe side by default, as the gateway's was; the
        operator's own processes (the PoR publisher, held_read, custody's workers, the attestor) ask for
        the details explicitly."""
        failed = self.failed
        if failed is None:
            return None
        if detailed or isinstance(failed, RingfenceError):
            return str(failed) or type(failed).__name__
        return f"{type(failed).__name__} (the details with the metrics token, on /readyz)"

    def as_source(self, source: str) -> "SourcedNode":
        """This node as one service sees it: every command it submits is journaled with `source`."""
        return SourcedNode(self, source)

    # ------------------------------------------------------------------ reading state

    def read(self, fn: Callable[[Engine], Any]) -> Any:
        """Run `fn(engine)` on the calling thread between batches and return its result.

        `fn` sees the state after a whole batch (never a command half applied); `engine.last_seq`
        inside it is that batch's last sequence number. Keep `fn` short and side-effect free: the
        sequencer waits for it before it applies the next batch. Return plain values or copies,
        never live engine objects, which the next batch will change. Reads may nest; on the
        sequencer thread itself (a listener, a control task) `fn` runs directly. Pipelined, the
        result is returned only once the batch it saw is durable (at most the fsync in flight and
        the next one later), or `NotDurable` is raised if that sync failed; not so with
        `durable_reads=False`, which may see a batch up to one fsync before it is durable.
        """
        engine = self.engine
        if engine is None:
            raise RuntimeError("open() the node first")
        if threading.current_thread() is self._thread:
            return fn(engine)
        gate = self._gate
        gate.acquire_read()
        try:
            result = fn(engine)
            seen = self.last_seq
        finally:
            gate.release_read()
        pipe = self._pipe
        if pipe is not None and seen > pipe.durable_seq and self.durable_reads:
            pipe.wait_durable(seen)  # pipelined: nobody learns of a state a crash could still undo
        return result

    # ------------------------------------------------------------------ the sequencer

    def _run(self) -> None:
        try:
            self._sequence()
        except BaseException as err:  # the shard halted; answer everyone still waiting
            self.failed = self.failed or err
            # The batch being committed when it broke: taken out of the inbox, perhaps written,
            # perhaps applied — its unanswered requests hear "outcome unknown", never nothing.
            for ack in self._committing:
                if not ack.done():
                    ack._resolve(error=OutcomeUnknown(f"the node stopped while committing this request's batch "
                                                      f"({type(err).__name__}). Outcome unknown: check before "
                                                      f"retrying", field=None))
            while self._inbox:
                item = self._inbox.popleft()
                if isinstance(item, Ack):
                    item._resolve(error=NotDurable(f"the node has stopped: {self.failed!r}"))
            self._notify()

    def _notify(self) -> None:
        with self._acked:
            self._acked.notify_all()

    def _next(self) -> Any:
        """Block until something is in the inbox and return it."""
        inbox, wake = self._inbox, self._wake
        while True:
            if inbox:
                return inbox.popleft()
            wake.clear()
            if inbox:  # appended between the check and the clear
                continue
            wake.wait(0.5)

    def _sequence(self) -> None:
        inbox = self._inbox
        while True:
            item = self._next()
            if item is _STOP:
                return
            if callable(item):
                self._durable_barrier()
                item()  # a control task (snapshot) runs between batches, on durable state
                continue
            if self._pipe is not None and self.max_batches_in_flight:
                self._pipe.wait_room(self.max_batches_in_flight)  # the batch gathers what arrives meanwhile
            items = [item]
            weight = command_weight(item.command)
            deadline = time.perf_counter() + self.max_wait_us / 1e6 if self.max_wait_us else 0.0  # float-ok
            control = None
            while len(items) < self.max_batch_commands and weight < self.max_batch_weight:
                if not inbox:
                    if not deadline or time.perf_counter() >= deadline:
                        break
                    time.sleep(0)
                    continue
                nxt = inbox.popleft()
                if nxt is _STOP or callable(nxt):
                    control = nxt
                    break
                items.append(nxt)
                weight += command_weight(nxt.command)
            self._committing = items  # (answered by `_run` if the commit raises)
            self._commit(items)
            self._notify()
            if control is _STOP:
                return
            if control is not None:
                self._durable_barrier()
                control()

    def _commit(self, items: list[Ack]) -> None:
        engine, writer = self.engine, self.writer
        if engine is None or writer is None:
            raise RuntimeError("open() the node first")
        if self.failed is not None:
            for ack in items:
                ack._resolve(error=NotDurable(f"the node has stopped: {self.failed}"))
            return
        accepted: list[Ack] = []
        precheck = engine.precheck
        # Every precheck of the batch runs at one time, read once (not once per command): the time
        # the batch will carry or just before it (see `_precheck`), restored before anything else
        # can look at the engine — a refusal's callbacks, a write, the end of the batch.
        saved = engine.now_ns
        engine.now_ns, swapped = max(self._clock(), saved), True
        try:
            for item in items:
                try:
                    precheck(item.command)
                except RingfenceError as err:
                    engine.now_ns, swapped = saved, False
                    if accepted:
                        # The precheck saw the state before this batch; an earlier command of the batch
                        # (say, the RegisterAsset before this OpenAccount) may be what it needs. Commit
                        # those first and check again against the state that includes them.
                        self._write_and_apply(accepted)
                        accepted = []
                        if self.failed is None:
                            try:
                                self._precheck(item.command)
                            except RingfenceError as err2:
                                self._refuse(item, err2)
                            else:
                                accepted.append(item)
                        else:
                            self._refuse(item, err)
                    else:
                        self._refuse(item, err)
                    saved = engine.now_ns
                    engine.now_ns, swapped = max(self._clock(), saved), True
                    continue
                accepted.append(item)
        finally:
            if swapped:
                engine.now_ns = saved
        if accepted:
            self._write_and_apply(accepted)

    def _refuse(self, ack: Ack, err: RingfenceError) -> None:
        """Answer a command its precheck refused. Pipelined, the precheck may have seen batches
        whose fsync is still running: the refusal waits for them (a crash could undo what it saw)."""
        if self._pipe is None:
            ack._resolve(error=err)
        else:
            self._pipe.refuse(ack, err)

    def _durable_barrier(self) -> None:
        """Pipelined: wait until everything written is durable and answered (before a control
        task such as a snapshot, and before the journal rotates to a new segment)."""
        if self._pipe is not None:
            self._pipe.barrier()

    def _precheck(self, command: Command) -> None:
        """Run a command's precheck at the time its batch will carry (not the last batch's): a rule
        that depends on time (a cooling period, a lock) is judged as the handler will judge it. The
        precheck journals nothing, so the engine's time is restored afterwards."""
        engine = self.engine
        assert engine is not None
        saved = engine.now_ns
        engine.now_ns = max(self._clock(), saved)
        try:
            engine.precheck(command)
        finally:
            engine.now_ns = saved

    def _write_and_apply(self, accepted: list[Ack]) -> None:
        engine, writer = self.engine, self.writer
        assert engine is not None and writer is not None
        if self.failed is not None:
            for ack in accepted:
                ack._resolve(error=NotDurable(f"the node has stopped: {self.failed}"))
            return
        first_seq = writer.next_seq
        ts_ns = max(self._clock(), engine.now_ns)
        entropy = self._entropy(32)
        raws = [msgspec.Raw(ack.raw) for ack in accepted]
        sources = [ack.source for ack in accepted]
        payload = encode(SourcedBatch(first_seq, ts_ns, entropy, raws, sources) if any(sources)
                         else Batch(first_seq, ts_ns, entropy, raws))
        pipe = self._pipe
        entry: _Entry | None = None
        if pipe is not None:
            entry = self._journal_pipelined(pipe, writer, payload, first_seq, ts_ns, accepted)
            if entry is None:
                return
            journaled: Any = entry.token
        else:
            journaled = self._journal(writer, payload, first_seq, accepted)
            if journaled is None:
                return
        token = journaled
        outputs: list[list[Event]] = []
        apply = engine.apply
        # Readers wait while the batch is applied (not while it was journaled above); what they
        # can see of it — the state, `last_seq`, the acks — changes only once the whole batch is in.
        halted: dict[int, InvariantViolation] = {}
        gate = self._gate
        gate.acquire_write()
        try:
            for i, ack in enumerate(accepted):
                try:
                    events = apply(ack.command, first_seq + i, ts_ns, entropy)
                except ShardHalt as halt:  # an invariant broke: undo the command, halt the shard
                    events = self._halt(engine, halt)
                    halted[i] = InvariantViolation(f"shard halted at sequence {halt.seq}: {halt.detail}")
                outputs.append(events)
        except BaseException as err:  # could not even rebuild: the node stops, everyone is answered
            if self.failed is None:
                self.failed = err
            gate.release_write()
            for waiting in accepted:
                if not waiting.done():
                    waiting._resolve(error=NotDurable(f"the node has stopped: {err!r}"))
            raise
        self.last_seq = engine.last_seq
        self.batches_committed += 1
        self.commands_committed += len(accepted)
        gate.release_write()
        for hook in self.apply_hooks:
            hook(engine, first_seq, ts_ns)
        if entry is not None and pipe is not None:  # acknowledged, then listened to, once its sync returns
            if self.replica is not None:  # ... and once the replica log holds it
                pipe.replicate(entry, self.replica, token, engine, outputs)
            pipe.applied(entry, outputs, halted)
            return
        if self.replica is not None and not self._replicated(first_seq, accepted, token, engine, outputs):
            return
        self.durable_seq = self.last_seq
        _answer(accepted, first_seq, outputs, halted)
        if self.replica is not None:
            answered = getattr(self.replica, "answered", None)  # (optional in a ReplicaLog)
            if answered is not None:
                answered()
        for listener in self.listeners:
            listener(first_seq, ts_ns, [ack.command for ack in accepted], outputs)

    def _journal(self, writer: JournalWriter, payload: bytes, first_seq: int,
                 accepted: list[Ack]) -> Any:
        """Append the batch durably (replicated: start publishing it first). Returns the replica
        log's token (True when not replicating), or None after answering everyone on failure."""
        count, replica, token = len(accepted), self.replica, None
        try:
            if replica is None:
                writer.append(payload, first_seq, count)
                return True
            record, digest = writer.encode(payload, first_seq, count)
            try:
                token = replica.begin(first_seq, count, payload, digest)
            except BaseException as err:  # fenced or unreachable before anything was written: stop, answer below
                self.failed = err
                for ack in accepted:
                    ack._resolve(error=NotDurable(f"not replicated ({err}); nothing was applied; this node has stopped"))
                return None
            writer.append_record(record, digest, first_seq, count)
            replica.written(token)
            return token
        except OutcomeUnknown as err:
            # The record was written, the fsync failed: it may survive and be applied on restart,
            # or not. Telling the client "nothing applied" could make it retry into a duplicate.
            self.failed = err
            if replica is not None and token is not None:
                replica.settle(token)
            for ack in accepted:
                ack._resolve(error=OutcomeUnknown(f"{err.message}. Outcome unknown: check before retrying", field=None))
            return None
        except OSError as err:
            self.failed = err
            if replica is not None and token is not None:
                replica.settle(token)
            for ack in accepted:
                if token is None:
                    ack._resolve(error=NotDurable(f"journal write failed ({err.strerror or err}); nothing was applied"))
                else:  # the replica log may already hold the batch: a standby could apply it
                    ack._resolve(error=OutcomeUnknown(f"journal write failed ({err.strerror or err}) while the batch was "
                                                      "being replicated. Outcome unknown: check before retrying"))
            return None

    def _journal_pipelined(self, pipe: "_Pipeline", writer: JournalWriter, payload: bytes, first_seq: int, ts_ns: int,
                           accepted: list[Ack]) -> "_Entry | None":
        """Write the batch without waiting for its fsync and hand it to the syncer (replicated:
        start publishing it first); None after answering everyone on failure (as `_journal`).
        Replicated, any failure also stops the pipeline: the batches still in flight are answered
        `OutcomeUnknown` (they may be in the journal and the stream, or not)."""
        if writer.rotation_due():
            pipe.barrier()  # a new segment: the old one's descriptor closes only once all of it is synced
            if self.failed is not None:
                for ack in accepted:
                    ack._resolve(error=NotDurable(f"the node has stopped: {self.failed}"))
                return None
        count, replica, token = len(accepted), self.replica, None
        try:
            record, digest = writer.encode(payload, first_seq, count)
            if replica is not None:
                try:
                    token = replica.begin(first_seq, count, payload, digest)
                except BaseException as err:  # fenced or unreachable before anything was written
                    self.failed = self.failed or err
                    pipe.stop_replicating(err, first_seq)
                    for ack in accepted:
                        ack._resolve(error=NotDurable(f"not replicated ({err}); nothing was applied; this node has stopped"))
                    return None
            mark = writer.write_record(record, digest, first_seq, count)
            if replica is not None:
                replica.written(token)
        except (OutcomeUnknown, OSError) as err:  # OutcomeUnknown: the writer was poisoned by a failed sync
            self.failed = self.failed or err
            if replica is not None:
                pipe.stop_replicating(err, first_seq)
            if token is not None:  # the stream may hold the batch: a standby could apply it
                assert replica is not None
                replica.settle(token)
            reason = getattr(err, "message", None) or getattr(err, "strerror", None) or str(err)
            for ack in accepted:
                if token is None:
                    ack._resolve(error=NotDurable(f"journal write failed or the node has stopped ({reason}); "
                                                  "nothing was applied"))
                else:
                    ack._resolve(error=OutcomeUnknown(f"journal write failed ({reason}) while the batch was being "
                                                      "replicated. Outcome unknown: check before retrying"))
            return None
        entry = pipe.written(mark, first_seq, ts_ns, accepted, replicated=replica is None)
        entry.token = token
        return entry

    def _replicated(self, first_seq: int, accepted: list[Ack], token: Any, engine: Engine,
                    outputs: list[list[Event]]) -> bool:
        """Wait until the replica log holds the batch; on failure stop the node and answer OutcomeUnknown."""
        assert self.replica is not None
        try:
            self.replica.finish(token, engine, outputs)
            return True
        except BaseException as err:  # fenced off, or the replica log is unreachable: stop, answer everyone
            self.failed = err
            _log.critical("engine shard %s stopped: batch %d not replicated: %s", self.data_dir, first_seq, err)
            for ack in accepted:
                ack._resolve(error=OutcomeUnknown(f"the batch was journaled locally but not replicated ({err}); "
                                                  "this node has stopped. Check on the new primary before retrying"))
            return False

    def _halt(self, engine: Engine, halt: ShardHalt) -> list[Event]:
        """Rebuild the state before the command from snapshot + journal and record the halt; logged once."""
        _log.critical(
            "engine shard %s HALTED at sequence %d: %s; every later command is refused until an operator acts",
            self.data_dir, halt.seq, halt.detail,
        )
        try:
            return rebuild_halted(self.data_dir, engine, halt)
        except BaseException as err:  # cannot even rebuild: stop the node, answer everyone
            self.failed = err
            raise

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> Path:
        """Write a snapshot at the current journal position (between batches)."""
        if self._thread is None:
            return self._write_snapshot()
        done: queue.Queue[Path | BaseException] = queue.Queue()

        def task() -> None:
            try:
                done.put(self._write_snapshot())
            except BaseException as err:  # reported to the caller below
                done.put(err)

        self._post(task)
        result = done.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def _write_snapshot(self) -> Path:
        assert self.engine is not None and self.writer is not None
        payload = self.engine.snapshot_bytes()
        import hashlib

        return write_snapshot(
            self.data_dir / "snapshots",
            self.engine.last_seq,
            hashlib.sha256(payload).hexdigest(),
            self.writer.last_hash,
            payload,
            keep=self.snapshot_keep,
        )


class _Entry:
    """One written batch (or refusals that depend on written batches) waiting to be acknowledged."""

    __slots__ = ("last_seq", "first_seq", "ts_ns", "accepted", "outputs", "halted", "refusals", "applied",
                 "replicated", "token")

    def __init__(self, last_seq: int, first_seq: int, accepted: list[Ack], ts_ns: int = 0,
                 replicated: bool = True) -> None:
        self.last_seq = last_seq
        self.first_seq = first_seq
        self.ts_ns = ts_ns
        self.accepted = accepted
        self.outputs: list[list[Event]] = []
        self.halted: dict[int, InvariantViolation] = {}
        self.refusals: list[tuple[Ack, RingfenceError]] = []
        self.applied = False
        #: the replica log holds it (always, for a local-only node and for refusals)
        self.replicated = replicated
        self.token: Any = None  # the replica log's token from `begin`


class _Pipeline:
    """Pipelined group commit (`Node(pipeline=True)`).

    The sequencer writes batch N's record (no fsync), hands it here, applies it, and goes on to
    batch N+1 at once. The record syncer takes the newest record written and fdatasyncs the
    segment (one sync covers every record written before it began) and hands that position to the
    acknowledger, which hands the durable mark to the journal's mark thread (written and fsynced
    there, off this path), acknowledges every batch that sync covered and feeds them to the listeners, while
    the record syncer already syncs the next records. A request therefore waits for at most the
    record sync in flight when it was written and its own — not a queue of syncs — and the
    sequencer never stands still during an fsync.

    Rules (docs/journal.md, "Pipelined group commit"): an Ack is resolved, and its batch handed to
    the listeners, only once a sync that began after its record was written has returned, in
    sequence order (one resolver at a time, from the head of `pending`); a `Node.read` that saw a
    batch returns only once that batch is durable; a refusal by precheck waits for the batches it
    saw; a failed sync poisons the writer and stops the node: every batch written and not yet
    acknowledged is answered `OutcomeUnknown` (it may or may not have reached the disk), later ones
    `NotDurable`, and none of them reaches a listener.

    Replicated (a replica log that has `finish_later`): the sequencer starts publishing batch N
    (`begin`, before the write), applies it, hands it to the replica log (`finish_later`, which
    takes what needs the engine at N's state) and goes on to N+1 while N's fsync and stream ack are
    both in flight. "Durable" then means synced locally *and* held by the stream: a batch is
    acknowledged, handed to the listeners or shown by a durable read only once both have returned,
    in sequence order. A failed or refused publish (a deposed primary: the stream refuses it) stops
    the node like a failed sync: every batch in flight is answered `OutcomeUnknown`.
    """

    def __init__(self, node: "Node") -> None:
        assert node.writer is not None
        self.node = node
        self.writer = node.writer
        self.lock = threading.Lock()
        #: Three conditions on one lock, so that each change wakes only the thread that waits for it:
        #: a record written wakes the record syncer (`sync_wanted`), a sync returned or a stream ack
        #: the acknowledger (`ack_wanted`), and `cond` the callers of `wait_room`, `barrier`,
        #: `wait_durable` and `close`. With one condition for all, every batch written also woke the
        #: acknowledger for nothing, and every wake-up of a thread is a turn of the GIL taken from
        #: the sequencer (about one in three wake-ups of the acknowledger found nothing to do).
        self.cond = threading.Condition(self.lock)
        self.sync_wanted = threading.Condition(self.lock)
        self.ack_wanted = threading.Condition(self.lock)
        self.pending: collections.deque[_Entry] = collections.deque()
        self.unsynced: DurableMark | None = None  # the newest record written and not yet being synced
        self.synced: DurableMark | None = None  # records synced, not yet acknowledged
        self.records_closed = False
        #: synced locally, and (replicated) held by the stream, through this sequence number
        self.durable_seq = node.durable_seq
        self.synced_seq = node.durable_seq  # synced locally through this sequence number
        self.kicked = False  # a stream ack moved `durable_seq`: the acknowledger has batches to answer
        self.answer = ""  # what the batches in flight are told when replication failed
        self.room_wanted = False  # the sequencer waits for a batch to be acknowledged (`wait_room`)
        self.resolving = threading.Lock()
        self.closing = False
        self.failed: BaseException | None = None
        self.listeners_failed = False
        self.syncs = 0
        self.thread = threading.Thread(target=self._sync_records, name="ringfence-journal-sync", daemon=True)
        self.ack_thread = threading.Thread(target=self._acknowledge, name="ringfence-journal-ack", daemon=True)
        self.thread.start()
        self.ack_thread.start()

    # sequencer side
    def written(self, mark: DurableMark, first_seq: int, ts_ns: int, accepted: list[Ack],
                replicated: bool = True) -> _Entry:
        entry = _Entry(mark.last_seq, first_seq, accepted, ts_ns, replicated)
        with self.lock:
            self.pending.append(entry)
            self.unsynced = mark
            self.sync_wanted.notify()
        return entry

    def applied(self, entry: _Entry, outputs: list[list[Event]], halted: dict[int, InvariantViolation]) -> None:
        entry.outputs, entry.halted = outputs, halted
        with self.lock:
            entry.applied = True
        self.drain()

    def replicate(self, entry: _Entry, replica: ReplicaLog, token: Any, engine: Engine, outputs: list[list[Event]]) -> None:
        """Sequencer, right after the batch is applied: hand it to the replica log; the batch is
        acknowledged only once the stream holds it too (`_replicated`)."""
        try:
            published = replica.finish_later(token, engine, outputs)
        except BaseException as err:  # fenced (the lease), or the state could not be hashed
            self.stop_replicating(err, entry.first_seq)
            return
        published.add_done_callback(lambda done: self._replicated(entry, done))

    def _replicated(self, entry: _Entry, done: "concurrent.futures.Future[None]") -> None:
        """The stream's answer for one batch (on the replica log's thread): mark it held, or stop."""
        try:
            err = done.exception()
        except concurrent.futures.CancelledError as cancelled:
            err = cancelled
        if err is not None:
            self.stop_replicating(err, entry.first_seq)
            return
        with self.lock:
            entry.replicated = True
            before = self.durable_seq
            self._advance()
            if self.durable_seq != before:
                self.kicked = True  # the acknowledger answers them (listeners stay off this thread)
                self.ack_wanted.notify()
                self.cond.notify_all()

    def _advance(self) -> None:
        """Under `lock`: durable = synced locally, and held by the stream up to the first batch
        in flight that it does not hold yet (batches are published in order)."""
        durable = self.synced_seq
        for entry in self.pending:
            if not entry.replicated:
                durable = min(durable, entry.first_seq - 1)
                break
        if durable > self.durable_seq:
            self.durable_seq = durable
            self.node.durable_seq = durable

    def stop_replicating(self, err: BaseException, first_seq: int) -> None:
        """A batch could not be replicated (refused, unreachable, the lease ran out): stop the node;
        every batch in flight is answered `OutcomeUnknown`."""
        if not self.answer:
            self.answer = (f"the batch was journaled locally but not replicated ({err}); this node has stopped. "
                           "Check on the new primary before retrying")
        self._stop(err, f"batch {first_seq} not replicated")
        self.drain()

    def wait_room(self, limit: int) -> None:
        """Sequencer (`Node(max_batches_in_flight=limit)`): return once fewer than `limit` batches are
        written and not yet acknowledged (or the node has stopped). Waiting lets the next batch
        gather what arrives meanwhile, as the classic group commit does, instead of paying a
        publish and a sync for every request or two (replicated, that cost is what the CPU runs out of)."""
        with self.lock:
            while self.failed is None and sum(1 for e in self.pending if e.accepted) >= limit:
                self.room_wanted = True
                self.cond.wait(0.5)
            self.room_wanted = False

    def refuse(self, ack: Ack, err: RingfenceError) -> None:
        last = self.writer.next_seq - 1
        with self.lock:
            now = not self.pending and self.durable_seq >= last
            if not now:
                entry = _Entry(last, 0, [])
                entry.refusals.append((ack, err))
                entry.applied = True
                self.pending.append(entry)
        if now:
            ack._resolve(error=err)
        else:
            self.drain()

    def barrier(self) -> None:
        target = self.writer.next_seq - 1
        with self.lock:
            while self.durable_seq < target and self.failed is None:
                self.cond.wait(0.5)
        self.drain()

    def wait_durable(self, seq: int) -> None:
        """Return once everything through `seq` is durable; `NotDurable` if its sync failed. Not
        from the syncer threads (a listener reading the engine would wait for itself)."""
        if threading.current_thread() in (self.thread, self.ack_thread):
            raise RuntimeError("a listener of a pipelined node cannot read the engine (it may be further on than "
                               "the batch): read what the listener needs in an apply hook (Node.apply_hooks)")
        with self.lock:
            while self.durable_seq < seq and self.failed is None:
                self.cond.wait(0.5)
            failed = self.failed if self.durable_seq < seq else None
        if failed is not None:
            raise NotDurable(f"the node has stopped before what this read saw was durable: {failed}")

    def close(self) -> None:
        deadline = time.monotonic() + 10  # a publish times out after 5 s, failing its future
        with self.lock:
            while any(not e.replicated for e in self.pending) and self.failed is None and time.monotonic() < deadline:
                self.cond.wait(0.1)
            late = self.failed is None and any(not e.replicated for e in self.pending)
        if late:
            self.stop_replicating(TimeoutError("the replica log did not answer before the node closed"), 0)
        with self.lock:
            self.closing = True
            self._wake_all()
        self.thread.join()
        self.ack_thread.join()
        self.drain()

    # syncer side
    def _sync_records(self) -> None:
        writer = self.writer
        while True:
            with self.lock:
                while self.unsynced is None and not self.closing and self.failed is None:
                    self.sync_wanted.wait()
                mark, self.unsynced = self.unsynced, None
                if mark is None or self.failed is not None:
                    self.records_closed = True
                    self.ack_wanted.notify()
                    return
            try:
                writer.sync_records(mark)
            except BaseException as err:  # poisoned: stop the node, answer everyone written
                self._fail(err)
                return
            with self.lock:
                self.synced = mark
                self.ack_wanted.notify()

    def _acknowledge(self) -> None:
        writer = self.writer
        while True:
            with self.lock:
                while self.synced is None and not self.kicked and not self.records_closed and self.failed is None:
                    self.ack_wanted.wait()
                mark, self.synced = self.synced, None
                kicked, self.kicked = self.kicked, False
                if self.failed is not None or (mark is None and not kicked):
                    return
            if mark is not None:
                try:
                    writer.note_durable(mark)  # written and fsynced by the journal's mark thread
                except BaseException as err:  # poisoned: stop the node, answer everyone not yet durable
                    self._fail(err)
                    return
                with self.lock:
                    self.synced_seq = mark.last_seq
                    self.syncs += 1
                    self._advance()
                    self.cond.notify_all()
            self.drain()

    def _fail(self, err: BaseException) -> None:
        self._stop(err)
        self.drain()

    def _stop(self, err: BaseException, what: str = "journal sync failed") -> None:
        self.node.failed = self.node.failed or err
        with self.lock:
            self.failed = self.failed or err
            self._wake_all()
        _log.critical("engine shard %s stopped: %s: %s", self.node.data_dir, what, err)

    def _wake_all(self) -> None:
        """Under `lock`: the node stops or closes; every thread waiting on the pipeline looks again."""
        self.sync_wanted.notify_all()
        self.ack_wanted.notify_all()
        self.cond.notify_all()

    def drain(self) -> None:
        """Acknowledge, in order, every batch at the head of `pending` that is applied and durable,
        and hand it to the listeners (or, after a failed sync, answer them all)."""
        resolved = False
        with self.resolving:
            while True:
                with self.lock:
                    if not self.pending:
                        break
                    entry = self.pending[0]
                    durable = entry.applied and entry.replicated and entry.last_seq <= self.durable_seq
                    failed = None if durable else self.failed
                    if not durable and failed is None:
                        break
                    self.pending.popleft()
                    if self.room_wanted:
                        self.cond.notify_all()
                resolved = True
                if failed is not None:
                    message = getattr(failed, "message", None) or str(failed)
                    answer = self.answer or f"{message}. Outcome unknown: check before retrying"
                    for ack in entry.accepted:
                        if not ack.done():
                            ack._resolve(error=OutcomeUnknown(answer, field=None))
                else:
                    _answer(entry.accepted, entry.first_seq, entry.outputs, entry.halted)
                    if entry.accepted:
                        self._listen(entry)
                for ack, err in entry.refusals:
                    ack._resolve(error=err)
        if resolved:
            self.node._notify()

    def _listen(self, entry: _Entry) -> None:
        """Hand a durable batch to the listeners; one that raises stops the node, as it stops the
        classic sequencer (inside `drain`: the batches behind it are answered as failed)."""
        if self.listeners_failed:
            return
        commands = [ack.command for ack in entry.accepted]
        try:
            for listener in self.node.listeners:
                listener(entry.first_seq, entry.ts_ns, commands, entry.outputs)
        except BaseException as err:  # the read models cannot follow: stop the node, answer the rest
            self.listeners_failed = True
            self._stop(err, "a listener failed")


def _field_of(err: msgspec.ValidationError, command_type: type) -> str:
    """Turn msgspec's array path (`$[1][0][3]`) into field names (`transfers[0].amount`)."""
    import re
    import typing

    text = str(err)
    if " - at `$" not in text:
        return command_type.__name__
    indexes = [int(i) for i in re.findall(r"\[(\d+)\]", text.split(" - at `$", 1)[1])]
    parts: list[str] = []
    current: Any = command_type
    tagged = True  # the command itself is a tagged array: element 0 is its tag
    for index in indexes:
        if isinstance(current, type) and issubclass(current, msgspec.Struct):
            fields = current.__struct_fields__
            position = index - 1 if tagged else index
            if not 0 <= position < len(fields):
                break
            name = fields[position]
            parts.append(("." if parts else "") + name)
            current = typing.get_type_hints(current).get(name)
            tagged = False
        elif typing.get_origin(current) in (list, tuple):
            parts.append(f"[{index}]")
            current = typing.get_args(current)[0]
        else:
            break
    return "".join(parts) or command_type.__name__


class SourcedNode:
    """A `Node` handed to one service (a worker, a gateway): `submit`, `execute` and `execute_many`
    journal the service's identity with each command; everything else is the node's."""

    def __init__(self, node: Node, source: str) -> None:
        self._node, self.source = node, source

    def submit(self, command: Command) -> Ack:
        return self._node.submit(command, self.source)

    def execute(self, command: Command) -> list[Event]:
        return self._node.execute(command, self.source)

    def execute_many(self, commands: Iterable[Command], *, raise_rejected: bool = True) -> list[list[Event]]:
        return self._node.execute_many(commands, raise_rejected=raise_rejected, source=self.source)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)
