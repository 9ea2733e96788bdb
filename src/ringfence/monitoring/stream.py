"""The event stream's durable outbox (`monitoring_events`) and its writers and readers.

* Identity writes its events with `add_in_tx` inside the transaction of the change itself (a sign-in,
  a failed sign-in, a password change...), so an event exists exactly when the change does.
* Every row is written by `_write_events` (the one writer of the table): on PostgreSQL it first takes
  a transaction-scoped advisory lock (`EVENT_IDS_LOCK`), so the transactions that insert events run
  one at a time and commit in the order of their ids. The readers move a cursor past the highest id
  they read (`read_after`): ids drawn from a sequence at INSERT but seen at COMMIT would otherwise let
  a later writer's rows show before an open earlier one's, which the cursor would then pass unread.
  SQLite's one write lock gives that order by itself.
* The API edge (`ApiCallRecorder`), the admin API and the engine's batch subscriber
  (`engine_subscriber`) call `Outbox.publish`, which only appends to a bounded in-memory queue; a
  background thread writes the queue in batches. Nothing here runs on the engine's sequencer or
  waits for the database on a request. A full queue drops the event and counts it
  (`Outbox.dropped`, shown in `GET /admin/v1/monitoring`).
* Engine events (orders, cancels, trades, deposits, withdrawals) come from the committed batches,
  i.e. what the journal holds; each carries its journal `seq`. The journal is their durable record:
  events journaled but still in the outbox's queue when the process died (a crash, `kill -9`) are
  relayed again at the next start (`relay_recovered`) from the batches recovery replayed, after the
  last engine event the stream holds — exactly once, counted per sequence number.

`read_after(store, after_id)` returns events in stream order with identity's `user_id` resolved to
the account id.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from enum import StrEnum
from typing import Any, Callable, Generator, Iterator

import msgspec
import structlog
from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session

from ..store import Store
from ..store.models import MonitoringEvent, User
from .events import Event

__all__ = ["Outbox", "add_in_tx", "pending_at_least", "read_after", "read_pages", "read_range", "engine_subscriber", "relay_recovered", "ApiCallRecorder"]

log = structlog.get_logger("ringfence.monitoring")
MAX_QUEUE = 100_000
FLUSH_BATCH = 2_000
#: rows per executemany of a flush: a flush of a tenth of a second of orders (~200-300 rows) was one
#: burst of 3-14 ms of CPU on the engine process's GIL; in chunks, with the pacer's look between
#: them, the writer pauses within a chunk of its slice (docs/latency.md, session 20)
FLUSH_CHUNK = 64
#: rows per transaction at most. A transaction otherwise ends only where the pacer pauses (or at the
#: end of the flush): a commit costs ~0.3-0.4 ms of CPU on SQLite (its WAL write and fsync, the
#: session); a commit per chunk cost the writer ~7-13 us more per order at 700 orders/s (docs/latency.md, session 21)
FLUSH_TX_ROWS = 512


_encode_sorted = msgspec.json.Encoder(order="sorted").encode
#: The value types whose JSON msgspec writes exactly as `json.dumps` does (floats are not among them:
#: the two spell some differently, e.g. 1e+16 and 1e16). The trading vocabulary's StrEnums join it as
#: they are met (an order's type): both write a StrEnum member as its text, which is its value.
_PLAIN: set[type] = {str, int, bool, type(None)}


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _data(data: dict[str, Any] | None) -> str:
    """`json.dumps(data, separators=(",", ":"), sort_keys=True)`, the same text, faster: msgspec's
    encoder (json.dumps was most of the outbox writer's CPU in the serving process, which it takes
    from the event loop under one GIL) for a flat object of strings, integers, booleans and StrEnum
    members whose text needs no escape; json.dumps itself for anything else (an escape, non-ASCII, a
    float, a nested value, a key that is not a string), so the stored text never depends on which
    encoder wrote it.

    One pass over the items decides (a `frozenset.issuperset(map(...))` builds a set per call, three
    per event before), and the escapes are looked for in the decoded text: `b"\\" in raw` on bytes
    first tries the needle as an integer and raises and clears a TypeError each time (both were a
    visible share of the outbox writer's instructions, issue 18)."""
    if not data:
        return "{}"
    plain = _PLAIN
    for key, value in data.items():
        if type(key) is not str:
            return _dumps(data)
        if type(value) not in plain:
            if not isinstance(value, StrEnum):
                return _dumps(data)
            plain.add(type(value))  # json.dumps writes a str subclass's text, msgspec an Enum's value: the same
    try:
        raw = _encode_sorted(data)
    except (TypeError, ValueError, OverflowError):  # not expected of these types; json.dumps answers
        return _dumps(data)
    # no escape in the text (msgspec escapes quotes, backslashes and control characters with a
    # backslash, and writes DEL and non-ASCII as they are, where json.dumps escapes them all)
    if raw.isascii():
        text = raw.decode("ascii")
        if "\\" not in text and "\x7f" not in text:
            return text
    return _dumps(data)


def add_in_tx(db: Session, kind: str, *, source: str, at_ms: int, user_id: int | None = None, account_id: str = "",
              ip: str = "", device: str = "", data: dict[str, Any] | None = None) -> None:
    """Add one event to the caller's transaction (it commits or rolls back with the change). The row
    is inserted when the transaction commits, after the rest of its changes (`_write_pending`): the
    lock `_write_events` takes on PostgreSQL is then held only for that insert and the COMMIT, and a
    transaction holding it never waits for another lock (no deadlock with the row locks identity takes)."""
    if db.in_nested_transaction():  # a savepoint rolled back would not take its events with it
        raise RuntimeError("add_in_tx: not inside a savepoint (begin_nested); add the event after it")
    db.info.setdefault(_PENDING, []).append(
        (kind, source, user_id, account_id[:40], ip[:64], device[:256], at_ms, _data(data)))


_PENDING = "ringfence.monitoring.pending_events"
_LOCKED = "ringfence.monitoring.events_locked"
#: The key of the transaction-scoped advisory lock (`pg_advisory_xact_lock`) every transaction that
#: inserts into `monitoring_events` takes first on PostgreSQL: "rfmonevt" as a bigint.
EVENT_IDS_LOCK = int.from_bytes(b"rfmonevt", "big") - 2**63


@event.listens_for(Session, "before_commit")
def _write_pending(db: Session) -> None:
    """The events `add_in_tx` queued, inserted as the transaction commits (after a flush of its other changes)."""
    if db.in_nested_transaction() or not db.info.get(_PENDING):
        return
    db.flush()
    _write_events(db, db.info.pop(_PENDING))


@event.listens_for(Session, "after_transaction_end")
def _forget(db: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the events of a transaction rolled back go with it
        db.info.pop(_PENDING, None)
        db.info.pop(_LOCKED, None)


_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_COLUMNS = ("kind", "source", "user_id", "account_id", "ip", "device", "at_ms", "data")


def _write_events(db: Session, rows: list[tuple[Any, ...]], *, without_user: bool = False) -> None:
    """Insert `rows` (tuples of `_COLUMNS`) into `monitoring_events`: the table's only writer.
    `without_user`: the rows leave `user_id` out (tuples of `_COLUMNS` but it), and it is NULL in each
    (the outbox's events: sqlite3 binds a None parameter only after looking for an adapter for it, two
    attribute lookups whose AttributeErrors are formatted and dropped: per row, per event).

    On PostgreSQL the transaction first takes the advisory lock `EVENT_IDS_LOCK` (once; it is held
    until COMMIT or ROLLBACK), so inserting transactions are serialized and the ids become visible in
    id order (the module's docstring says why the readers need it). The rows go to the driver as
    INSERTs of up to ROWS_PER_INSERT rows each (`VALUES (...), (...), ...`: the same rows in the same
    order, so the same ids), not SQLAlchemy's per-row parameter processing (most of the outbox writer's
    time once) nor an executemany: sqlite3 releases the GIL around each statement step and takes it
    back, so an executemany handed the GIL to the event loop and waited for it once per row, ~10-20 us
    of CPU per row on a busy serving process against ~5 for a multi-row INSERT (issue 18). A driver of
    another parameter style goes through a Core INSERT."""
    if db.in_nested_transaction():  # a savepoint rolled back would release the lock with it
        raise RuntimeError("monitoring events are written outside savepoints")
    conn = db.connection()
    if conn.dialect.name == "postgresql" and db.info.get(_LOCKED) is not db.get_transaction():
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({EVENT_IDS_LOCK})")
        db.info[_LOCKED] = db.get_transaction()
    mark = _PLACEHOLDER.get(conn.dialect.paramstyle)
    if mark is None:
        if without_user:
            rows = [(*r[:2], None, *r[2:]) for r in rows]
        db.execute(insert(MonitoringEvent), [dict(zip(_COLUMNS, r)) for r in rows])
        return
    row = "(" + ", ".join("NULL" if without_user and column == "user_id" else mark for column in _COLUMNS) + ")"
    head = f"INSERT INTO {MonitoringEvent.__tablename__} ({', '.join(_COLUMNS)}) VALUES "
    for first in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[first:first + ROWS_PER_INSERT]
        conn.exec_driver_sql(head + ", ".join([row] * len(part)), tuple(value for r in part for value in r))


#: Rows per INSERT statement of `_write_events`: 64 rows of 8 columns are 512 parameters, under every
#: SQLite's limit (999 before 3.32) and PostgreSQL's (65,535).
ROWS_PER_INSERT = 64


def _insert_events(db: Session, rows: list[dict[str, Any]]) -> None:
    """The outbox's queued rows, written by `_write_events` (no user id: NULL)."""
    _write_events(db, [_row(r) for r in rows], without_user=True)


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    """An outbox event as a row of `_COLUMNS` without `user_id`."""
    return (r["kind"], r["source"], r["account_id"], r["ip"], r["device"], r["at_ms"], _data(r["data"]))


class Outbox:
    """A bounded queue written to `monitoring_events` by one background thread."""

    def __init__(self, store: Store, *, flush_ms: int = 100, max_queue: int = MAX_QUEUE,
                 resolve: Callable[[list[dict[str, Any]]], None] | None = None, pacer: Any = None) -> None:
        self.store = store
        #: In a serving process: the writer's share of the GIL while it writes a flush (ringfence/pacing.py),
        #: looked at between chunks of FLUSH_CHUNK rows; a writer a whole batch behind writes unpaced
        self.pacer = pacer
        self.flush_ms = flush_ms
        self.max_queue = max_queue
        self.resolve = resolve
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0
        self.errors = 0

    def publish(self, kind: str, *, source: str, at_ms: int | None = None, account_id: str = "", ip: str = "",
                device: str = "", data: dict[str, Any] | None = None) -> None:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append({"kind": kind, "source": source, "at_ms": at_ms if at_ms is not None else time.time_ns() // 1_000_000,
                            "account_id": account_id[:40], "ip": ip[:64], "device": device[:256], "data": data or {}})

    def flush(self) -> int:
        """Write up to FLUSH_BATCH queued events, in order; returns how many were written. Each
        executemany is at most FLUSH_CHUNK rows, with a look at the pacer after it; a transaction
        commits when a pause is due (before it: no transaction stays open while the writer sleeps),
        after FLUSH_TX_ROWS rows, or at the end of the flush. Paced (`pacer`) unless a whole batch is
        queued (behind: written at full speed) or the writer is stopping. A transaction that fails is
        put back at the front of the queue with everything after it, for the next attempt.

        The custody resolver reads the engine once per flush (one `Node.read` for all of its deposit
        and withdrawal events), before the first write: each event's deposit or withdrawal is in the
        engine's state by then (an event is published only after its batch was applied). Most of what
        is read (account, asset, chain, txid; address, wallet) is fixed when the deposit or withdrawal
        is recorded; a deposit's sender changes only if a reorg reverses it and it is credited again
        (its KYT score too, which is why the event's score is its own, from the credit's event): an
        event that waited that long (the store away, its rows retried; relayed after a restart) gets
        the later credit's sender. Read before the flush's pauses, it is at least as close to the
        event's as it was read after them, per chunk."""
        rows: list[dict[str, Any]] = []
        while self._queue and len(rows) < FLUSH_BATCH:
            rows.append(self._queue.popleft())
        if not rows:
            return 0
        pacer = self.pacer if len(rows) < FLUSH_BATCH and not self._stop.is_set() else None
        if pacer is not None:
            pacer.restart()
        if self.resolve is not None:
            try:
                self.resolve(rows)
            except Exception:  # resolving is best effort; the events are kept as they are
                log.exception("monitoring.resolve_failed")
        written = 0
        while written < len(rows):
            end = written
            try:
                with self.store.tx() as db:  # executemany of tuples, not one ORM object per event
                    while end < len(rows):
                        chunk = rows[end:end + FLUSH_CHUNK]
                        _insert_events(db, chunk)
                        end += len(chunk)
                        if end - written >= FLUSH_TX_ROWS or (pacer is not None and pacer.due()):
                            break  # commit, then pause
            except Exception:  # the store is away: counted, logged, the rows kept for the next attempt
                self.errors += 1
                log.exception("monitoring.outbox_write_failed", rows=len(rows) - written)
                for r in reversed(rows[written:]):  # keep them for the next attempt, in order
                    self._queue.appendleft(r)
                return written
            self.written += end - written
            written = end
            if pacer is not None:
                pacer.tick()
        return written

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self._wake.wait(self.flush_ms / 1000)
                self._wake.clear()
                # a backlog (whole batches) is written at once; a partial batch means the queue was
                # drained, so the next write waits for flush_ms like the first: under a steady stream
                # of events, draining until empty made a commit of a few rows every few ms (27 a
                # second under bench/api.py's orders, each an SQLite/PostgreSQL commit on this
                # process's GIL) where one per flush_ms writes the same events
                while self.flush() >= FLUSH_BATCH and not self._stop.is_set():
                    pass
            while self.flush():
                pass

        self._thread = threading.Thread(target=run, name="ringfence-monitoring-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)


_decode_json = msgspec.json.Decoder().decode


def loads_data(text: str) -> Any:
    """`json.loads(text)`, the same value for every text, faster: msgspec's decoder (the scorer reads
    thousands of events a second in the serving process, and json.loads was ~15% of its time), with
    json.loads itself deciding whatever msgspec refuses (NaN, 1e400, a lone surrogate escape...)."""
    try:
        return _decode_json(text)
    except ValueError:  # msgspec.DecodeError and ValidationError are ValueErrors: json.loads answers
        return json.loads(text)


def _row_event(r: Any) -> Event:
    try:
        data = loads_data(r.data)
    except ValueError:
        data = {}
    return Event(r.id, r.kind, r.at_ms, account_id=r.account_id or r.user_account or "", ip=r.ip, device=r.device,
                 source=r.source, data=data if isinstance(data, dict) else {})


_EVENT_COLUMNS = (MonitoringEvent.id, MonitoringEvent.kind, MonitoringEvent.at_ms, MonitoringEvent.account_id, MonitoringEvent.ip,
                  MonitoringEvent.device, MonitoringEvent.source, MonitoringEvent.data, User.account_id.label("user_account"))
#: How many events `read_after` returns at most (a reader that got fewer has caught up with the stream).
READ_BATCH = 5_000


def read_after(store: Store, after_id: int, *, limit: int = READ_BATCH) -> list[Event]:
    # plain rows of the columns, not ORM objects: the scorer reads thousands a second in the serving process
    with store.tx() as db:
        rows = db.execute(_events_after(after_id, limit)).all()
        return [_row_event(r) for r in rows]


def _events_after(after_id: int, limit: int) -> Any:
    """The query of `read_after` and `read_pages`: events after `after_id`, in id order, with their users."""
    return (select(*_EVENT_COLUMNS).outerjoin(User, User.id == MonitoringEvent.user_id)
            .where(MonitoringEvent.id > after_id).order_by(MonitoringEvent.id).limit(limit))


def read_pages(store: Store, after_id: int, *, page: int, limit: int = READ_BATCH) -> Generator[list[Event], None, None]:
    """The events `read_after(store, after_id, limit=limit)` returns, the same ones in the same order,
    `page` at a time, decoded a page per step of the iteration (the scorer scores a page before it
    takes the next; decoding a whole read at once was a burst of its own). One query:

    * on SQLite its rows are stepped as the pages are asked for (the driver reads them lazily: the
      first page of 5,000 costs ~1% of the whole read's steps), so the read transaction stays open
      until the iteration ends; in WAL mode (`store.make_engine`) writers commit meanwhile;
    * on PostgreSQL psycopg downloads every row at execute anyway: they are taken at once and the
      transaction ended before the first page, so no transaction stays open ("idle in transaction",
      its locks on the tables and its snapshot holding back vacuum) while the caller pauses."""
    query = _events_after(after_id, limit)
    if store.engine.dialect.name != "sqlite":
        with store.tx() as db:
            every = db.connection().execute(query).all()
        for first in range(0, len(every), page):
            yield [_row_event(r) for r in every[first:first + page]]
        return
    with store.tx() as db:  # a Core result: the driver's cursor is read as the pages are asked for
        result = db.connection().execute(query)
        while rows := result.fetchmany(page):
            yield [_row_event(r) for r in rows]


def pending_at_least(store: Store, after_id: int, count: int) -> bool:
    """Are there at least `count` events after `after_id`? (One indexed look, no rows decoded: how the
    scorer tells that it fell a whole batch behind before it reads.)"""
    with store.tx() as db:
        return db.scalar(select(MonitoringEvent.id).where(MonitoringEvent.id > after_id)
                         .order_by(MonitoringEvent.id).offset(count - 1).limit(1)) is not None


def read_range(store: Store, from_ms: int = 0, to_ms: int = 2**62) -> Iterator[Event]:
    """The recorded stream between two times, in stream order (for `ringfence monitoring backtest`)."""
    after = 0
    while True:
        batch = read_after(store, after)
        if not batch:
            return
        for e in batch:
            if from_ms <= e.at_ms <= to_ms:
                yield e
        after = batch[-1].id


# ------------------------------------------------------------------------------ the engine's events


def engine_subscriber(exchange: Any, outbox: Outbox) -> Callable[[int, int, list[list[Any]], dict[str, int]], None]:
    """A batch subscriber (`Exchange.batch_subscribers`): orders, cancels and trades of each
    committed batch into the outbox, with their journal seq. Runs on the loop thread after the read
    models; it only builds small dicts and appends them."""
    rows = _engine_rows(exchange)

    def on_batch(first_seq: int, ts_ns: int, outputs: list[list[Any]], before: dict[str, int]) -> None:
        for kind, at_ms, account_id, data in rows(first_seq, ts_ns, outputs):
            outbox.publish(kind, source="engine", at_ms=at_ms, account_id=account_id, data=data)

    return on_batch


def _last_relayed(store: Store) -> tuple[int, int]:
    """The journal seq of the newest engine event on the stream and how many events of that seq it
    holds ((0, 0): none). The outbox writes in order, so every engine event after it is missing."""
    last, count, before = 0, 0, None  # no upper bound at first: the id column is a 32-bit INTEGER on PostgreSQL
    while True:
        query = select(MonitoringEvent.id, MonitoringEvent.data).where(MonitoringEvent.source == "engine")
        if before is not None:
            query = query.where(MonitoringEvent.id < before)
        with store.tx() as db:
            rows = db.execute(query.order_by(MonitoringEvent.id.desc()).limit(500)).all()
        if not rows:
            return last, count
        for row_id, data in rows:
            try:
                seq = int(json.loads(data).get("seq", 0))
            except (ValueError, TypeError, AttributeError):
                seq = 0
            if not last:
                last = seq
            if seq != last:
                return last, count
            count += 1
            before = row_id


def relay_recovered(exchange: Any, outbox: Outbox, store: Store) -> int:
    """Relay again the engine events the journal holds and the stream lost (journaled, then the process
    died with them in the outbox's queue): those of the batches recovery replayed (`Exchange.recovered`)
    after the newest engine event on the stream, skipping the ones of its seq already there. Called
    once at start, before serving; returns how many were queued. A stream with no engine event yet
    starts from now (the journal before it predates monitoring)."""
    recovered = list(getattr(exchange, "recovered", ()))
    exchange.recovered = collections.deque()  # the replayed outputs are not needed any more
    last, have = _last_relayed(store)
    if not last or not recovered:
        return 0
    if recovered[0][0] > last + 1:
        log.warning("monitoring.relay_gap", last_relayed_seq=last, oldest_recovered_seq=recovered[0][0])
    rows = _engine_rows(exchange)
    n = 0
    for first_seq, ts_ns, outputs in recovered:
        if first_seq + len(outputs) - 1 < last:
            continue
        seen = 0
        for kind, at_ms, account_id, data in rows(first_seq, ts_ns, outputs):
            if data["seq"] < last:
                continue
            if data["seq"] == last:
                seen += 1
                if seen <= have:
                    continue
            outbox.publish(kind, source="engine", at_ms=at_ms, account_id=account_id, data=data)
            n += 1
    if n:
        log.warning("monitoring.relay_recovered", events=n, after_seq=last)
    return n


def _engine_rows(exchange: Any) -> Callable[[int, int, list[list[Any]]], Iterator[tuple[str, int, str, dict[str, Any]]]]:
    """(kind, at_ms, account_id, data) of each engine event the stream records, in order."""
    from ..custody.state import CustodyEvent
    from ..trading.commands import MarketListed, OrderAccepted, OrderCanceled, Trade
    from ..trading.staff_cmds import MarketDelisted

    # symbol -> its base asset's decimals, for an order's notional: read from the engine at the first
    # order of the symbol, then kept until an event that lists, changes or delists the symbol passes
    # here (a market's base cannot change otherwise, nor an asset's decimals). `exchange.market` was a
    # `Node.read` on the event loop for nearly every batch (its cache holds only until the next batch
    # is applied), waiting for the sequencer whenever it was applying one (issue 18, session 21)
    base_decimals: dict[str, int] = {}

    def notional_of(symbol: str, price: int, quantity: int) -> int:
        decimals = base_decimals.get(symbol)
        if decimals is None:
            try:
                decimals = base_decimals[symbol] = exchange.market(symbol).base_decimals
            except Exception:  # an unknown market: the event is still recorded, without a notional
                return 0
        return price * quantity // 10 ** decimals

    # (symbol, side) -> (the market's read model, its update_id, the best price then): the best
    # price is a scan of every level of that side, once per accepted order on the event loop; the
    # book's levels change only with its update_id (trading/marketdata.py), so the scan is redone
    # only when they did (an order that does not rest, an IOC that expires, leaves them as they were)
    best_seen: dict[tuple[str, str], tuple[Any, int, int]] = {}

    def touch_bp(symbol: str, side: str, price: int) -> int:
        try:
            md = exchange.marketdata[symbol]
            seen = best_seen.get((symbol, side))
            if seen is not None and seen[0] is md and seen[1] == md.update_id:
                best = seen[2]
            else:
                levels = md.bids if side == "BUY" else md.asks
                best = (max(levels) if side == "BUY" else min(levels)) if levels else 0
                best_seen[(symbol, side)] = (md, md.update_id, best)
        except Exception:  # no book for the symbol (a perpetual, a delisted market): scored as far from the touch
            return 10_000
        if best <= 0 or price <= 0:
            return 10_000
        return min(10_000, abs(best - price) * 10_000 // best)

    def rows(first_seq: int, ts_ns: int, outputs: list[list[Any]]) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
        at_ms = ts_ns // 1_000_000
        for offset, events in enumerate(outputs):
            seq = first_seq + offset
            for e in events:
                t = type(e)
                if t is Trade:
                    yield ("trade", at_ms, e.taker_owner,
                                   {"seq": seq, "symbol": e.symbol, "trade_id": e.trade_id, "price": e.price,
                                         "quantity": e.quantity, "quote_qty": e.quote_qty, "maker_owner": e.maker_owner,
                                         "taker_side": e.taker_side})
                elif t is OrderAccepted:
                    notional = notional_of(e.symbol, e.price, e.quantity) if e.price and e.quantity else 0
                    yield ("order_placed", at_ms, e.owner,
                                   {"seq": seq, "symbol": e.symbol, "order_id": e.order_id, "side": e.side,
                                         "order_type": e.order_type, "price": e.price, "quantity": e.quantity,
                                         "notional_minor": notional, "touch_bp": touch_bp(e.symbol, e.side, e.price)})
                elif t is OrderCanceled:
                    yield ("order_canceled", at_ms, e.owner,
                                   {"seq": seq, "symbol": e.symbol, "order_id": e.order_id, "side": e.side,
                                         "price": e.price, "leaves": e.leaves, "reason": e.reason})
                elif t is MarketListed or t is MarketDelisted:  # the symbol's base may differ from here on
                    base_decimals.pop(e.symbol, None)
                elif t is CustodyEvent and (e.kind == "withdrawal.requested" or (
                        e.kind in ("deposit.credited", "deposit.quarantined", "deposit.frozen")
                        and e.detail[:1] and str(e.detail[0]).startswith("KYT score"))):
                    # a deposit credited into any of the user's accounts: available, quarantine (KYT score above
                    # the quarantine line) or frozen (a sanctioned source); `state` says which. Only the credit
                    # itself (its detail starts with the KYT score), not an analyst's later freeze of a quarantined one
                    if e.kind == "withdrawal.requested":
                        yield ("withdrawal_requested", at_ms, "", {"seq": seq, "ref": e.ref, "amount_minor": e.amount_minor,
                                                                   "state": e.state})
                    else:
                        # the KYT score of this credit, from its own event: the deposit's record holds only its
                        # latest credit's (a reorg reverses it, it is seen and credited again with a new score)
                        data = {"seq": seq, "ref": e.ref, "amount_minor": e.amount_minor, "state": e.state}
                        score = _kyt_score(str(e.detail[0]))
                        if score is not None:
                            data["score"] = score
                        yield ("deposit_credited", at_ms, "", data)

    return rows


def _kyt_score(detail: str) -> int | None:
    """The score of a deposit credit's first detail, "KYT score N" (custody/deposit_cmds.py); None if it is not one."""
    text = detail.removeprefix("KYT score ")
    return int(text) if text != detail and text.isascii() and text.isdigit() and len(text) <= 3 else None


def custody_resolver(exchange: Any) -> Callable[[list[dict[str, Any]]], None]:
    """Fill account, asset and chain data into deposit/withdrawal events (in the outbox's thread)."""

    def resolve(rows: list[dict[str, Any]]) -> None:
        wanted = [r for r in rows if r["kind"] in ("withdrawal_requested", "deposit_credited")]
        if not wanted:
            return

        def read(engine: Any) -> None:
            from ..custody.state import custody_state

            s = custody_state(engine)
            for r in wanted:
                ref = r["data"]["ref"]
                if r["kind"] == "withdrawal_requested":
                    w = s.withdrawals.get(ref)
                    if w is not None:
                        r["account_id"] = w.account_id
                        r["data"].update(asset=w.asset, address=w.address, wallet=w.wallet)
                else:
                    d = s.deposits.get(ref)
                    if d is not None:
                        r["account_id"] = d.account_id or ""
                        r["data"].update(asset=d.asset, chain=d.chain, txid=d.txid, sender=d.sender or "")
                        r["data"].setdefault("score", d.score)  # the event's own (`_engine_rows`) if it had one

        exchange.read(read)

    return resolve


# ------------------------------------------------------------------------------ the API edge


class ApiCallRecorder:
    """ASGI middleware: one `api_call` event per request to the API (`/api/`, `/sapi/`, `/v1/`):
    route, method, status, weight, client IP, user agent, the caller's account and the API key's
    first 8 characters (never the key or any secret). It only appends to the outbox queue."""

    PREFIXES = ("/api/", "/sapi/", "/v1/")

    def __init__(self, app: Any, outbox: Outbox) -> None:
        self.app = app
        self.outbox = outbox

    def records(self, scope: dict[str, Any]) -> bool:
        """Whether a request with this scope gets an api_call event."""
        return scope["type"] == "http" and scope.get("path", "").startswith(self.PREFIXES)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.records(scope):
            await self.app(scope, receive, send)
            return
        status = [500]

        async def observed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.record(scope, status[0])

    def record(self, scope: dict[str, Any], status: int) -> None:
        """The api_call event of a request answered with `status` (500: none was sent), as its scope
        stands when it is answered (the route, the caller's account and weight the app left there).
        The API key and the user agent are each the last header of its name (what `dict(headers)`
        kept), found in one pass over the headers. api/app.py `HotRoutes` records its requests here too."""
        state = scope.get("state") or {}
        key_header = agent = b""
        for name, value in scope.get("headers") or ():
            if name == b"x-mbx-apikey":
                key_header = value
            elif name == b"user-agent":
                agent = value
        client = scope.get("client")
        route = getattr(scope.get("route"), "path", "unmatched")
        self.outbox.publish("api_call", source="api", account_id=str(state.get("rf_account", "")),
                            ip=client[0] if client else "",
                            device=agent[:256].decode("ascii", "replace"),
                            data={"method": scope.get("method", ""), "endpoint": route, "status": status,
                                  "weight": int(state.get("rf_weight", 0)), "key_prefix": key_header[:8].decode("ascii", "replace"),
                                  "error": status >= 400})
