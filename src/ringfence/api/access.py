"""Ending what outlives a key's access: listen keys, user data sockets, WebSocket API logons.

A listen key (`POST /api/v3/userDataStream`, `/fapi/v1/listenKey`, the dashboard's
`/session/v3/userDataStream`) and a `/ws-api/v3` logon or `userDataStream.subscribe` are each made
with one credential: an API key (from one client IP) or a signed-in web session. When that
credential stops working — a key revoked or deleted, the account frozen, a password reset
(`identity.events.end_access`), an allow-list or scope change — what it opened ends with it:

* every listen key made with it is dropped (keep-alive and new sockets answer "does not exist"),
  and every socket open on one is closed with 1008 and `REVOKED_REASON`;
* every WebSocket API connection logged on with it, or subscribed to user data with it, loses its
  subscription and is closed the same way.

How it learns: the API key generation (store/key_generation.py) moves with every commit that can
withdraw a key, in this process at once and in another (a CLI) within the key cache watcher's poll
(identity/key_cache.py). `AccessWatch.settle` rechecks every live credential when the generation
moved since its last check; it runs every `POLL_S` on the server's loop and before anything that
trusts a listen key (a keep-alive, a socket opening on one). Behind `serve --gateways N` the user
data streams, the WebSocket API sessions and the identity web all run in the engine process (the
gateways relay the connections), so this one watcher there covers them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

from starlette.concurrency import run_in_threadpool

from ..errors import RingfenceError

__all__ = ["AccessWatch", "Source", "REVOKED_CLOSE", "REVOKED_REASON"]

log = logging.getLogger("ringfence.api.access")

#: ("key", api_key, client_ip, account) or ("session", session_id, account)
Source = tuple[Any, ...]
REVOKED_CLOSE = 1008
REVOKED_REASON = "access revoked: the API key or session this stream was opened with no longer works"


class AccessWatch:
    POLL_S = 0.1

    def __init__(self, auth: Any) -> None:
        self.auth = auth
        self._probe = getattr(auth, "key_generation", None)
        self._seen: Any = self._probe() if self._probe is not None else None
        self._lock: asyncio.Lock | None = None
        #: (what credentials are live now, what to end when some of them are dead)
        self._holders: list[tuple[Callable[[], Iterable[Source]], Callable[[set[Source]], None]]] = []

    def add(self, sources: Callable[[], Iterable[Source]], end: Callable[[set[Source]], None]) -> None:
        self._holders.append((sources, end))

    async def run(self) -> None:
        """Check every `POLL_S` until cancelled (the server's lifespan)."""
        failing = False
        while True:
            await asyncio.sleep(self.POLL_S)
            try:
                await self.settle()
            except Exception:  # the database away, or a fault of ours: logged once, the next poll tries again
                if not failing:
                    log.exception("access.settle_failed")
                failing = True
            else:
                failing = False

    async def settle(self) -> None:
        """When the key generation moved since the last check (or cannot be read: the cache is
        stale), recheck every live credential and end what the dead ones opened."""
        if self._probe is None:
            return  # no identity service behind this gate: nothing is ever revoked
        if self._seen is not None and self._probe() == self._seen:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            generation = self._probe()
            if self._seen is not None and generation == self._seen:
                return
            live = {source for sources, _ in self._holders for source in sources()}
            dead = await run_in_threadpool(self.dead, live) if live else set()
            self._seen = generation  # read before the checks: a change during them is checked again
            if dead:
                log.info("access.revoked", extra={"credentials": len(dead)})
                for _, end in self._holders:
                    end(dead)

    def dead(self, sources: set[Source]) -> set[Source]:
        """The sources that no longer work (blocking: SQL on cache misses)."""
        out: set[Source] = set()
        sync = getattr(getattr(self.auth, "cache", None), "sync", None)
        if sync is not None:
            sync()  # the generation as committed now, by any process
        for source in sources:
            try:
                if source[0] == "key":
                    alive = self.auth.owner_of(source[1], source[2], "read") == source[3]
                else:
                    alive = self.auth.session_live(source[1], source[2])
            except RingfenceError:
                alive = False
            if not alive:
                out.add(source)
        return out
