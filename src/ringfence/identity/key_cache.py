"""Verified API keys kept in the API process, so a signed request costs no SQL round trip.

What is cached: per API key (under its keyed hash), the `KeySnapshot` the checks use — key id,
owner, kind, the HMAC secret still sealed (unsealed per request) or the parsed Ed25519 public key,
scopes, IP allow-list, expiry, revocation time and the owner's freeze flag. Every request still
runs the whole check (`api_keys.check_signed`: signature, revoked, expired, frozen, IP, scope)
against the snapshot; only the read is saved. Unknown keys are never cached (a flood of made-up
keys cannot fill memory); they take the SQL path as before.

Invalidation (the invariant: a change that withdraws access takes effect on the next request):

* Every transaction that changes what `admit` looks at — an API key's revocation, scopes,
  allow-list, expiry, secret or owner, a key deleted, a user's freeze flag, or any bulk UPDATE or
  DELETE of those tables — also bumps `identity_api_key_generation.value` in the same transaction.
  SQLAlchemy session hooks (`store/key_generation.py`, installed with the store) do it for every session, so no code path can forget.
* In the process that committed (today: the only one; `ringfence serve` runs the web security
  centre, the freeze link and the API together), the commit also bumps an in-memory generation
  before `Store.tx` returns, so the cache is empty before the revoke's HTTP response is sent.
* Other processes (a CLI on the same database; gateway processes later) see the store counter
  through a watcher thread that reads it every `poll_s` (on SQLite, on a plain `sqlite3` connection
  of its own: through SQLAlchemy each read cost ~0.5-0.8 ms of this process's GIL, 20 a second). A cache whose watcher has not read the
  counter within `stale_after_s` is bypassed (SQL for every request) rather than trusted: the cache
  fails closed. The watcher reads the file now at the database's path (a stat per poll): a copy
  renamed over it (a restore while serving) is read from then on, and counts as a change itself
  (`key_generation.bump_local`: the copy's counter may repeat a value of the old file's). For several gateways the revoking side should wait for the gateways to acknowledge
  the new generation before answering (docs/api.md, "API key cache").
* A request that filled the cache from a read that raced with a change does not store it: the
  generation is taken before the read and the entry is kept only if it has not moved.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import replace
from urllib.request import pathname2url

from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from ..store import key_generation
from . import api_keys
from .api_keys import ApiPrincipal, KeySnapshot
from .context import IdentityContext

__all__ = ["VerifiedKeyCache"]

log = logging.getLogger(__name__)

class VerifiedKeyCache:
    """See the module docstring. Thread-safe: used from the event loop and the thread pool."""

    def __init__(self, ctx: IdentityContext, *, max_entries: int = 100_000, poll_s: float = 0.05, stale_after_s: float = 2.0) -> None:  # float-ok: seconds
        self.ctx = ctx
        self.max_entries = max_entries
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self._entries: dict[str, KeySnapshot] = {}
        self._digests: dict[str, str] = {}
        self._lock = threading.Lock()
        self._store_generation = -1
        self._polled_at = 0.0  # float-ok: monotonic seconds of the watcher's last successful read
        self._generation = (-1, -1)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watch_conn: sqlite3.Connection | None = None  # the watcher's own (SQLite only)
        self._watch_file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file it last opened
        self.polls = 0  #: the watcher's reads of the store counter
        self.hits = 0
        self.misses = 0
        self.gateway_checked = 0  #: requests admitted on a gateway's signature check (admit_checked)

    # ------------------------------------------------------------------ generation

    def read_store_generation(self) -> int:
        with self.ctx.store.engine.connect() as conn:
            return int(conn.execute(text("SELECT value FROM identity_api_key_generation WHERE id = 1")).scalar_one())

    def _poll_store_generation(self) -> int:
        """The watcher's read of the store counter: on a file SQLite database, a plain `sqlite3`
        connection of the watcher's own, opened once (it never writes and never holds a transaction
        open, so every read sees the last commit of any connection); elsewhere `read_store_generation`."""
        url = self.ctx.store.engine.url
        database = url.database or ""
        if (url.get_backend_name() != "sqlite" or not database or database == ":memory:" or url.query
                or database.startswith("file:")):  # a URI database (memory, shared cache, options): SQLAlchemy's
            return self.read_store_generation()
        path = os.path.abspath(database)
        # The file now at the path (a stat, a few us per poll): a copy renamed over it (a restore while
        # serving) is read instead of the old file nothing commits to any more, and its being another
        # file drops the cached keys (its counter may repeat a value of the old one's).
        found = os.stat(path)
        file = (found.st_dev, found.st_ino)
        conn = self._watch_conn
        if conn is not None and file != self._watch_file:
            conn.close()
            conn = self._watch_conn = None
        if conn is None:
            # (mode=rw: a database that is not there is an error, never a new empty file; a file renamed
            # over the path between the stat and the open is seen at the next poll)
            conn = self._watch_conn = sqlite3.connect(f"file:{pathname2url(path)}?mode=rw", uri=True,
                                                      timeout=30, check_same_thread=False)
            if self._watch_file is not None and file != self._watch_file:
                key_generation.bump_local()
            self._watch_file = file
        row = conn.execute("SELECT value FROM identity_api_key_generation WHERE id = 1").fetchone()
        if row is None:
            raise LookupError("identity_api_key_generation has no row 1")
        return int(row[0])

    def start(self) -> None:
        """Read the store's counter once, then keep watching it in a daemon thread."""
        if self._watcher is not None:
            return
        self._store_generation = self.read_store_generation()
        self._polled_at = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, name="api-key-cache-watcher", daemon=True)
        self._watcher.start()

    def sync(self) -> None:
        """Read the store's counter now instead of waiting for the watcher: for a caller that knows
        the database changed (the WebSocket API's logged-on sessions watch SQLite's data_version)."""
        value = self.read_store_generation()
        self._store_generation = value
        self._polled_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        failing = False
        try:
            while not self._stop.wait(self.poll_s):
                try:
                    value = self._poll_store_generation()
                except Exception as err:  # the database is away: the cache goes stale and is bypassed
                    if not failing:
                        log.warning("API key cache: cannot read the key generation (%s); verifying keys in SQL until it can", type(err).__name__)
                    failing = True
                    if self._watch_conn is not None:  # open a fresh one next time
                        self._watch_conn.close()
                        self._watch_conn = None
                    continue
                failing = False
                self.polls += 1
                self._store_generation = value
                self._polled_at = time.monotonic()
        finally:
            if self._watch_conn is not None:
                self._watch_conn.close()
                self._watch_conn = None

    def _current(self) -> tuple[int, int] | None:
        """The generation to compare entries with, or None when the cache may not be trusted."""
        if self._watcher is None or time.monotonic() - self._polled_at > self.stale_after_s:
            return None
        return (key_generation.local_generation(), self._store_generation)

    def _get(self, digest: str, current: tuple[int, int] | None = None) -> KeySnapshot | None:
        """The cached snapshot of `digest` at generation `current` (read now when not given)."""
        if current is None:
            current = self._current()
        if current is None:
            return None
        with self._lock:
            if current != self._generation:
                self._entries.clear()
                self._generation = current
            return self._entries.get(digest)

    def _load(self, digest: str) -> KeySnapshot | None:
        before = self._current()
        key = api_keys.load_key(self.ctx, digest)
        if key is None or before is None:
            return key
        with self._lock:
            if self._current() == before:  # nothing committed a change while we read
                if before != self._generation:
                    self._entries.clear()
                    self._generation = before
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[digest] = key
        return key

    def _remember_use(self, digest: str, key: KeySnapshot, now: int) -> None:
        api_keys.touch_last_used(self.ctx, key.key_id, now)
        with self._lock:
            if self._entries.get(digest) is key:
                self._entries[digest] = replace(key, last_used_at_s=now)

    def _digest(self, api_key: str) -> str:
        """`api_keys.key_digest`, remembered for keys in the cache: a keyed hash per request was a
        visible share of a cached request's time, and a key's digest never changes. Made-up keys
        are not remembered (they are never cached either); bounded like the entries."""
        digest = self._digests.get(api_key)
        if digest is None:
            digest = api_keys.key_digest(self.ctx, api_key)
            if digest in self._entries:
                if len(self._digests) >= self.max_entries:
                    self._digests.clear()
                self._digests[api_key] = digest
        return digest

    # ------------------------------------------------------------------ the two entry points

    def verify_cached(self, api_key: object, payload: bytes | str, signature: object, client_ip: object, scope: str) -> ApiPrincipal | None:
        """`verify` without any I/O (safe on the event loop): the principal, an error, or None when
        the key is not cached or its last-use time is due to be written (call `verify` then)."""
        ip, data = api_keys.check_signed_arguments(api_key, payload, signature, client_ip, scope)
        assert isinstance(api_key, str) and isinstance(signature, str)
        key = self._get(self._digest(api_key))
        now = self.ctx.now()
        if key is None or api_keys.last_used_due(key, now):
            return None
        self.hits += 1
        return api_keys.check_signed(self.ctx, key, data, signature, ip, scope, now)

    def verify(self, api_key: object, payload: bytes | str, signature: object, client_ip: object, scope: str) -> ApiPrincipal:
        """The same answers as `api_keys.verify_api_request`, reading SQL only on a cache miss."""
        ip, data = api_keys.check_signed_arguments(api_key, payload, signature, client_ip, scope)
        assert isinstance(api_key, str) and isinstance(signature, str)
        digest = self._digest(api_key)
        key = self._get(digest)
        if key is None:
            self.misses += 1
            key = self._load(digest)
        now = self.ctx.now()
        principal = api_keys.check_signed(self.ctx, key, data, signature, ip, scope, now)
        assert key is not None
        if api_keys.last_used_due(key, now):
            self._remember_use(digest, key, now)
        return principal

    # ------------------------------------------------------------------ gateways (api/relay.py)

    def generation(self) -> list[int] | None:
        """What a gateway stamps its signature checks with (None: the cache is not trusted now)."""
        current = self._current()
        return list(current) if current is not None else None

    def material(self, api_key: str) -> list[object] | None:
        """`[generation, kind, secret or public key bytes]` of a cached, unrevoked key, for a gateway
        to check the key's signatures with; None when there is nothing current to give."""
        before = self._current()
        if before is None:
            return None
        key = self._get(self._digest(api_key))
        if key is None or key.revoked_at_s is not None:
            return None
        if key.kind == "hmac" and key.secret_enc:
            raw = self.ctx.sealer.unseal(key.secret_enc, purpose="apikey:" + key.key_hash)
        elif key.kind == "ed25519" and key.verifier is not None:
            raw = key.verifier.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            return None
        if self._current() != before:
            return None  # a change committed meanwhile: the gateway learns the key again later
        return [list(before), key.kind, raw]

    def admit_checked(self, api_key: object, client_ip: object, scope: str, generation: object) -> ApiPrincipal | None:
        """The principal of a request whose signature a gateway checked with this key as it was at
        `generation`, without I/O: `admit` (revoked, expired, frozen, IP, scope) on the cached key.
        None when `generation` is not the current one, the key is not cached, or its last-use time is
        due to be written: the caller then verifies the request itself (`verify_cached`, `verify`)."""
        current = self._current()
        if current is None or list(current) != generation:
            return None
        ip = api_keys.check_key_arguments(api_key, client_ip, scope)
        assert isinstance(api_key, str)
        key = self._get(self._digest(api_key), current)
        now = self.ctx.now()
        if key is None or api_keys.last_used_due(key, now) or self._current() != current:
            return None
        self.hits += 1
        self.gateway_checked += 1
        return api_keys.admit(key, ip, scope, now)

    def principal(self, api_key: object, client_ip: object, scope: str) -> ApiPrincipal:
        """The same answers as `api_keys.principal_for_key` (key-only endpoints)."""
        ip = api_keys.check_key_arguments(api_key, client_ip, scope)
        assert isinstance(api_key, str)
        digest = self._digest(api_key)
        key = self._get(digest) or self._load(digest)
        if key is None:
            from ..errors import Unauthorized

            raise Unauthorized("no such API key", field="api_key")
        return api_keys.admit(key, ip, scope, self.ctx.now())
