"""Rate limits and lockout with exponential backoff, stored in SQL so every process shares them.

Fixed windows: `hit(bucket, limit, window_s)` counts one request and raises `RateLimited` once the
window's count exceeds `limit`. Lockout: after `free_failures` failed sign-ins for one e-mail key,
each further failure locks that key for base * 2**(extra) seconds (capped). The key is a hash of
the e-mail, and unknown e-mails are throttled exactly like known ones, so lockout behaviour never
reveals whether an account exists. These counters are the one thing a failed attempt changes, on
purpose: callers commit them before raising.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import RateLimited
from ..store.models import LoginThrottle, RateLimitWindow

__all__ = ["hit", "lockout_remaining_s", "record_failure", "clear_failures", "backoff_s"]


def hit(db: Session, *, bucket: str, limit: int, window_s: int, now_s: int) -> RateLimited | None:
    """Count one request; return (not raise) a RateLimited error when over the limit."""
    assert limit > 0 and window_s > 0 and len(bucket) <= 128
    window_start = now_s - now_s % window_s
    row = db.get(RateLimitWindow, (bucket, window_start), with_for_update=True)
    if row is None:
        try:
            with db.begin_nested():  # a concurrent request may create the same window first
                db.execute(delete(RateLimitWindow).where(RateLimitWindow.bucket == bucket,
                                                         RateLimitWindow.window_start_s < window_start))
                db.add(RateLimitWindow(bucket=bucket, window_start_s=window_start, hits=0))
        except IntegrityError:
            pass
        row = db.get(RateLimitWindow, (bucket, window_start), with_for_update=True, populate_existing=True)
        assert row is not None
    row.hits += 1
    db.flush()
    if row.hits > limit:
        retry = window_start + window_s - now_s
        return RateLimited(f"too many requests; retry in {retry} s", retry_after_s=retry)
    return None


def backoff_s(failures: int, *, free_failures: int, base_s: int, max_s: int) -> int:
    if failures < free_failures:
        return 0
    extra = min(failures - free_failures, 30)
    return min(base_s * (2**extra), max_s)


def lockout_remaining_s(db: Session, key_hash: str, now_s: int) -> int:
    row = db.get(LoginThrottle, key_hash)
    if row is None:
        return 0
    return max(0, row.locked_until_s - now_s)


def record_failure(db: Session, key_hash: str, now_s: int, *, free_failures: int, base_s: int, max_s: int) -> int:
    """Count a failure; return the new lock duration in seconds (0 if not locked)."""
    row = db.get(LoginThrottle, key_hash)
    if row is None:
        row = LoginThrottle(key_hash=key_hash, failures=0, locked_until_s=0, last_failure_at_s=now_s)
        db.add(row)
    row.failures += 1
    row.last_failure_at_s = now_s
    lock = backoff_s(row.failures, free_failures=free_failures, base_s=base_s, max_s=max_s)
    if lock:
        row.locked_until_s = now_s + lock
    db.flush()
    return lock


def clear_failures(db: Session, key_hash: str) -> None:
    db.execute(delete(LoginThrottle).where(LoginThrottle.key_hash == key_hash))


