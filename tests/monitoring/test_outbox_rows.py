"""`stream._write_events` inserts in multi-row statements (up to ROWS_PER_INSERT rows each, issue 18: an
executemany gave the GIL away and took it back once per row): every row lands, with its values, in the
order given (ids in that order), whatever the count and on both stores; the outbox's rows (no user)
and identity's (`add_in_tx`, a user id or none) alike."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from pgtest import PG_URL, pg_schema
from ringfence.monitoring import stream
from ringfence.monitoring.stream import Outbox, add_in_tx
from ringfence.store import Store
from ringfence.store.models import MonitoringEvent

_COUNTS = (0, 1, stream.ROWS_PER_INSERT - 1, stream.ROWS_PER_INSERT, stream.ROWS_PER_INSERT + 1, 3 * stream.ROWS_PER_INSERT + 5)


def _stored(store: Store) -> list[tuple[object, ...]]:
    with store.tx() as db:
        rows = db.execute(select(MonitoringEvent.id, MonitoringEvent.kind, MonitoringEvent.source, MonitoringEvent.user_id,
                                 MonitoringEvent.account_id, MonitoringEvent.ip, MonitoringEvent.device, MonitoringEvent.at_ms,
                                 MonitoringEvent.data).order_by(MonitoringEvent.id)).all()
    ids = [r[0] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    return [tuple(r[1:]) for r in rows]


def _check(store: Store) -> None:
    expected: list[tuple[object, ...]] = []
    for n in _COUNTS:  # the outbox: rows without a user, through its flush (chunks of FLUSH_CHUNK)
        outbox = Outbox(store)
        for i in range(n):
            outbox.publish("order_placed", source="engine", at_ms=1_000 + i, account_id=f"a{i % 5}", ip=f"10.0.0.{i % 3}",
                           device="d'x" if i % 2 else "", data={"seq": i, "symbol": "BTCUSDT", "note": "é\\\"" if i % 4 == 0 else "x"})
            expected.append(("order_placed", "engine", None, f"a{i % 5}", f"10.0.0.{i % 3}", "d'x" if i % 2 else "", 1_000 + i,
                             stream._data({"seq": i, "symbol": "BTCUSDT", "note": "é\\\"" if i % 4 == 0 else "x"})))
        while outbox.flush():
            pass
        # identity's way: in the caller's transaction, with and without a user
        with store.tx() as db:
            for i in range(n):
                add_in_tx(db, "login", source="identity", at_ms=5_000 + i, user_id=None, account_id=f"b{i}", data={"i": i})
        expected += [("login", "identity", None, f"b{i}", "", "", 5_000 + i, f'{{"i":{i}}}') for i in range(n)]
    with store.tx() as db:  # rows with a user id too, straight through the writer
        stream._write_events(db, [("login", "identity", None if i % 2 else 7, f"c{i}", "", "", 9_000 + i, "{}") for i in range(70)])
    expected += [("login", "identity", None if i % 2 else 7, f"c{i}", "", "", 9_000 + i, "{}") for i in range(70)]
    assert _stored(store) == expected


def test_rows_land_whole_and_in_order_on_sqlite(tmp_path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'm.sqlite'}")
    try:
        _check(store)
    finally:
        store.engine.dispose()


@pytest.mark.store
def test_rows_land_whole_and_in_order_on_postgresql() -> None:
    with pg_schema() as schema:
        store = Store.from_url(PG_URL, schema=schema)
        try:
            _check(store)
        finally:
            store.engine.dispose()
