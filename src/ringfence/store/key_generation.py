"""The API key generation: a counter in the store bumped with every change that can withdraw a key.

`identity_api_key_generation` (one row) is bumped in the same transaction as any ORM change to what
an API key's checks read: an `ApiKey`'s revocation, scopes, IP allow-list, expiry, secret, public
key or owner, a key deleted, a `User`'s freeze flag or account, and any ORM bulk UPDATE/DELETE of
those two tables. The hooks are registered on SQLAlchemy's `Session` class when the store package
is imported, so every process that writes the store (the server, a CLI) keeps the counter. After
such a commit the process's own `local_generation()` moves too, before `Store.tx` returns.
`identity/key_cache.py` drops its cached keys when either moves. (Writes through Core on a
connection, like `api_keys.touch_last_used`, bypass the hooks: use them only for columns nobody's
access depends on.)
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.orm import Session

from .models import ApiKey, User

__all__ = ["install_hooks", "local_generation", "bump", "bump_local"]

#: The columns whose change can withdraw (or alter) a key's access; `last_used_at_s` and `label` are not.
API_KEY_COLUMNS = ("user_id", "key_hash", "kind", "secret_enc", "public_key", "scopes", "ip_allowlist", "expires_at_s", "revoked_at_s")
USER_COLUMNS = ("frozen", "account_id")
_BUMPED = "ringfence.api_key_generation_bumped"

_local_generation = 0
_local_lock = threading.Lock()
_hooks_installed = False


def local_generation() -> int:
    """Bumped in this process after each commit that bumped the store's counter."""
    return _local_generation


def bump_local() -> None:
    """Move this process's generation without a commit: the identity database was replaced under it
    (a copy renamed over its file, seen by the key cache's watcher): another file is another state,
    whatever its counter says (it may repeat a value seen in the old file)."""
    global _local_generation
    with _local_lock:
        _local_generation += 1


def bump(session: Session) -> None:
    """Bump the counter with `session`'s commit (once per transaction): what the hooks below do for a
    change of a key or a user, and what a change they do not watch that still ends somebody's access
    calls itself: a web session signed out (identity/sessions.py). The access watch (api/access.py)
    then rechecks every live credential, so the streams and WebSocket API logons made with that
    session end with it."""
    if session.info.get(_BUMPED):
        return
    session.info[_BUMPED] = True
    session.connection().execute(text("UPDATE identity_api_key_generation SET value = value + 1 WHERE id = 1"))


def _changed(obj: Any, columns: tuple[str, ...]) -> bool:
    attrs = inspect(obj).attrs
    return any(attrs[c].history.has_changes() for c in columns)


def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    for obj in session.deleted:
        if isinstance(obj, (ApiKey, User)):
            bump(session)
            return
    for obj in session.dirty:
        if (isinstance(obj, ApiKey) and _changed(obj, API_KEY_COLUMNS)) or (isinstance(obj, User) and _changed(obj, USER_COLUMNS)):
            bump(session)
            return


def _do_orm_execute(state: Any) -> None:
    if not (state.is_update or state.is_delete):
        return
    mapper = state.bind_mapper
    if mapper is not None and mapper.class_ in (ApiKey, User):
        bump(state.session)


def _after_commit(session: Session) -> None:
    global _local_generation
    if session.info.pop(_BUMPED, False):
        with _local_lock:
            _local_generation += 1


def _after_rollback(session: Session) -> None:
    session.info.pop(_BUMPED, None)


def install_hooks() -> None:
    """Register the session hooks that bump the generation (once per process; idempotent)."""
    global _hooks_installed
    if _hooks_installed:
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "do_orm_execute", _do_orm_execute)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", lambda session, _tx: _after_rollback(session))
    _hooks_installed = True


install_hooks()
