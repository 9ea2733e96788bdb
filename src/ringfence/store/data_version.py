"""SQLite's commit counter of a database file, followed across a restore by rename.

`PRAGMA data_version`, read on a connection that never writes, changes whenever any other
connection, of any process, commits to the database: a reader can tell "nothing changed" for a few
microseconds instead of a transaction (the monitoring scorer's idle polls, the WebSocket API's
logged-on sessions). The counter is the opened file's, though: a copy renamed over the path (a
restore while serving) or the file removed leaves the connection watching a file nothing writes
any more, so the counter stands still while the pool's connections read and write the new file
(review, session 22). `CommitCounter.read` therefore looks at the path's (st_dev, st_ino) on each
read (a stat, ~5 us of CPU beside the pragma's ~5) and reopens on the file now there.

The values `read` returns never go back, across reopens too (each new connection's counter is
shifted past the last value returned): a value remembered before a restore is never returned again
after it, so "unchanged" always means the same file with no commit since.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from urllib.request import pathname2url

from sqlalchemy.engine import URL

__all__ = ["CommitCounter"]


class CommitCounter:
    """The commit counter of the SQLite database at `url`'s file; `read()` is None where there is no
    such counter (PostgreSQL, an in-memory database, a URL with options or a `file:` URI) or the file
    is away (callers then read what they wanted to know, as if it had changed)."""

    def __init__(self, url: URL) -> None:
        database = url.database or ""
        self.path: str | None = None
        if (url.get_backend_name() == "sqlite" and database and database != ":memory:" and not url.query
                and not database.startswith("file:")):
            self.path = os.path.abspath(database)
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file `_conn` opened
        self._shift = 0  # added to `_conn`'s counter: its values start past every one returned before
        self._last: int | None = None
        self._lock = threading.Lock()  # one connection, read from the event loop and from threads

    def read(self) -> int | None:
        if self.path is None:
            return None
        with self._lock:
            try:
                found = os.stat(self.path)
                file = (found.st_dev, found.st_ino)
                if self._conn is not None and file != self._file:  # another file at the path now
                    self._close()
                if self._conn is None:
                    # (a file renamed over the path between the stat and the open is seen on the next read)
                    self._conn = sqlite3.connect(f"file:{pathname2url(self.path)}?mode=rw", uri=True, timeout=30,
                                                 check_same_thread=False)
                    self._file = file
                    first = self._pragma(self._conn)
                    self._shift = 0 if self._last is None else self._last + 1 - first
                value = self._shift + self._pragma(self._conn)
            except (OSError, sqlite3.Error):  # the file is away: no counter this time, a fresh connection next time
                self._close()
                return None
            assert self._last is None or value >= self._last, (value, self._last)
            self._last = value
            return value

    def close(self) -> None:
        with self._lock:
            self._close()

    @staticmethod
    def _pragma(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._file = None, None
