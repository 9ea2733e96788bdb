"""The gateway's edge checks: parameters, signed requests, replay protection and rate limits.

Everything a client sends is validated here before it becomes a command: a parameter that is
missing, duplicated, not a plain decimal, over-precise or out of range is answered with Binance's
error shape naming the parameter, and nothing reaches the engine.

Signed requests follow Binance exactly: `X-MBX-APIKEY` header; `timestamp` (ms) and optional
`recvWindow` (≤ 60,000 ms, default 5,000); `signature` = hex HMAC-SHA256 of the request's
parameters as sent (query string, then body, without the signature itself) under the key's secret,
or canonical base64 Ed25519 over the same bytes for Ed25519 keys. A signed payload is accepted
once: the replay guard remembers (key id, SHA-256 of the signed bytes), not the signature's text,
so no re-spelling of the signature (case, base64 variants, URL escapes) and no re-split of the same
bytes between query and body runs a request twice.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping
from urllib.parse import parse_qsl, unquote_plus

from ..errors import InvalidAmount
from ..money import parse_amount
from .binance_errors import BinanceError, illegal, mandatory

__all__ = ["Params", "split_signature", "ReplayGuard", "RateLimiter", "check_timestamp", "MAX_RECV_WINDOW_MS"]

MAX_RECV_WINDOW_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5_000
MAX_PARAMS = 64
MAX_PARAM_CHARS = 512
#: The one form an integer may take at the edge: ASCII digits only. `str.isdigit()` and `int()`
#: also accept superscripts ('²') and other scripts' digits ('٣', '３'), so neither may decide.
_ASCII_INT_RE = re.compile(r"[0-9]{1,20}")


def _parse_qsl(text: str) -> list[tuple[str, str]]:
    """`parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMS + 1)`, the same pairs, without
    its unquoting when there is nothing to unquote (no '%', no '+': a signed order's usual text),
    which was a visible share of an order's time in the engine."""
    if "%" in text or "+" in text:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_PARAMS + 1)
    if not text:
        return []
    if 1 + text.count("&") > MAX_PARAMS + 1:
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for piece in text.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((name, value))
    return pairs


class Params:
    """Request parameters from the query string and (for POST) the form body."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        listed = pairs if type(pairs) is list else list(pairs)
        values: dict[str, str] = dict(listed)
        if len(values) == len(listed) <= MAX_PARAMS and (not values or max(map(len, values.values())) <= MAX_PARAM_CHARS):
            self._values = values  # the usual request: nothing to refuse, the pairs in one dict (one C call)
            return
        self._values = {}  # something is wrong: the first wrong pair, in order, says what
        for count, (name, value) in enumerate(listed):
            if count >= MAX_PARAMS:
                raise BinanceError(-1104, f"Too many parameters; at most {MAX_PARAMS} are accepted.")
            if name in self._values:
                raise BinanceError(-1101, f"Duplicate values for a parameter detected: '{name}'.")
            if len(value) > MAX_PARAM_CHARS:
                raise illegal(name, f"at most {MAX_PARAM_CHARS} characters are allowed")
            self._values[name] = value

    @classmethod
    def parse(cls, query: str, body: str = "") -> "Params":
        try:
            pairs = _parse_qsl(query)
            pairs += _parse_qsl(body)
        except ValueError:
            raise BinanceError(-1104, f"Too many parameters; at most {MAX_PARAMS} are accepted.") from None
        return cls(pairs)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._values.get(name)
        return default if value is None or value == "" else value

    def require(self, name: str) -> str:
        value = self._values.get(name)
        if value is None or value == "":
            raise mandatory(name)
        return value

    def integer(self, name: str, *, default: int | None = None, low: int = 0, high: int = 2**63 - 1) -> int:
        raw = self._values.get(name) or None  # `get`: an empty value is absent
        if raw is None:
            if default is None:
                raise mandatory(name)
            return default
        if _ASCII_INT_RE.fullmatch(raw) is None:
            raise illegal(name, f"legal range is an integer from {low} to {high}, written with the ASCII digits 0-9 only.")
        value = int(raw)
        if not low <= value <= high:
            raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is {low} to {high}.")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        if raw not in ("true", "false", "TRUE", "FALSE"):
            raise illegal(name, "legal values are 'true' and 'false'.")
        return raw.lower() == "true"

    def names(self) -> list[str]:
        """Every parameter name sent, in the order sent (query first, then body)."""
        return list(self._values)

    def as_sent(self) -> Mapping[str, str]:
        """Every parameter sent, name -> its value exactly as sent (empty ones included), in the order
        sent: the mapping itself, not a copy (read it, do not change it)."""
        return self._values

    def raw(self, name: str) -> str | None:
        """The value exactly as sent, empty string included (`get` treats empty as absent)."""
        return self._values.get(name)

    def amount(self, name: str, decimals: int, *, required: bool = True, allow_zero: bool = False) -> int:
        raw = self._values.get(name) or None  # `get`: an empty value is absent
        if raw is None:
            if required:
                raise mandatory(name)
            return 0
        try:
            return parse_amount(raw, decimals, field=name, allow_zero=allow_zero)
        except InvalidAmount as err:
            if "decimal places" in err.message:
                raise BinanceError(-1111, f"Parameter '{name}' has too much precision: at most {decimals} decimals.") from None
            raise illegal(name, f"{err.message}; legal form is digits with an optional '.' and up to {decimals} decimals.") from None

    def choice(self, name: str, allowed: Iterable[str], *, default: str | None = None, code: int = -1100) -> str:
        options = allowed if type(allowed) is tuple else tuple(allowed)
        raw = self._values.get(name) or default  # `get(name, default)`: an empty value is absent
        if raw is None:
            raise mandatory(name)
        if raw not in options:
            raise BinanceError(code, f"Invalid {name} '{raw[:40]}'; allowed: {', '.join(options)}.")
        return raw


def split_signature(query: str, body: str) -> tuple[bytes, str | None]:
    """Return (signed payload, signature): everything sent, minus the `signature` parameter."""
    # The usual signed request (every client library): one `signature=` in all, the body's (or, with
    # no body, the query's) last parameter. Then the payload is the bytes before its '&', without
    # splitting and re-joining every parameter (a visible share of an order's time in the engine,
    # and in each gateway, which splits it too). Anything else takes the general path below.
    last = body if body else query
    if (query.count("signature=") + body.count("signature=")) == 1:
        at = last.rfind("&signature=") + 1 if not last.startswith("signature=") else 0
        if (at or last.startswith("signature=")) and "&" not in last[at:]:
            head = last[:at - 1] if at else ""
            if last is body:
                # the general path joins the query's kept pieces and the body's without a separator
                return (query + head).encode(), unquote_plus(last[at + 10:])
            return head.encode(), unquote_plus(last[at + 10:])
    signature = None
    parts = []
    for source in (query, body):
        if not source:
            continue
        kept = []
        for piece in source.split("&"):
            if piece.startswith("signature="):
                if signature is not None:
                    raise BinanceError(-1101, "Duplicate values for a parameter detected: 'signature'.")
                # URL-decoded: base64 Ed25519 signatures arrive with '+', '/' and '=' escaped
                signature = unquote_plus(piece[len("signature=") :])
            else:
                kept.append(piece)
        parts.append("&".join(kept))
    return "".join(parts).encode(), signature


def check_timestamp(params: Params, now_ms: int) -> int:
    """Refuse a request signed outside its `recvWindow`; returns its `timestamp` (ms)."""
    timestamp = params.integer("timestamp")
    window = params.integer("recvWindow", default=DEFAULT_RECV_WINDOW_MS, low=1, high=MAX_RECV_WINDOW_MS)
    if timestamp > now_ms + 1_000 or now_ms - timestamp > window:
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
    return timestamp


class ReplayGuard:
    """Remembers accepted (key id, SHA-256 of the signed payload) pairs until their window has
    passed, so a signed request runs once however it is re-spelled or re-sent.

    The memory is in the process, so a request signed before the guard could remember it is
    refused outright: `not_before_ms` starts at the server's start (a request accepted just before
    a restart cannot run again after it) and rises when the bound (`max_entries`) forces out an
    entry that is still inside its window (nothing signed at or before that entry's timestamp may
    run, since the guard no longer knows whether it did). It rises the same way when an entry leaves
    because its window has passed: a call can come with a `now_ms` older than one that already
    dropped the entry (read before an await, as the WebSocket API's key check in a thread, or a wall
    clock stepped back), and that request's timestamp passed its own window check, so without it a
    replay of the dropped request ran again. Honest clients sign each request with a fresh timestamp
    and never meet either refusal (an entry leaves `window_ms` = the largest recvWindow + 2 s after
    it was accepted, so its timestamp is older than any request a current clock lets through).
    """

    def __init__(self, max_entries: int = 1_000_000, *, started_ms: int | None = None) -> None:
        # Keys are bytes (the key id in decimal, ":", the 32-byte digest) and values ints, in two dicts,
        # not `(key_id, digest) -> (expires_ms, timestamp_ms)` tuples: a minute of signed requests is
        # tens of thousands of entries, and two tracked tuples each made every young collection of
        # the serving process scan them (issue 18, item 6; tests/api/test_replay_guard_gc.py).
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # -> expires_ms, oldest first
        self._signed: dict[bytes, int] = {}  # -> timestamp_ms
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.not_before_ms = time.time_ns() // 1_000_000 if started_ms is None else started_ms

    def check_and_remember(
        self, key_id: int, payload: bytes, now_ms: int, timestamp_ms: int, window_ms: int = MAX_RECV_WINDOW_MS + 2_000
    ) -> None:
        key = b"%d:%s" % (key_id, hashlib.sha256(payload).digest())  # the digest's fixed length: one key per pair
        with self._lock:
            seen, signed = self._seen, self._signed
            while seen:
                oldest = next(iter(seen))
                expires = seen[oldest]
                if expires > now_ms and len(seen) < self.max_entries:
                    break
                # forced out inside its window, or its window passed by a clock ahead of a later call's:
                # a request signed at or before it may no longer run (the guard forgot whether it did)
                self.not_before_ms = max(self.not_before_ms, signed.pop(oldest) + 1)
                del seen[oldest]
            if timestamp_ms < self.not_before_ms:
                raise BinanceError(
                    -1021,
                    "Timestamp for this request is outside of the recvWindow: it was signed before this "
                    "server could remember it (a restart) or after it forgot it; sign it again with a fresh timestamp.",
                )
            if key in seen:
                raise BinanceError(-1022, "Signature for this request is not valid: it was already used (replay).")
            seen[key] = now_ms + window_ms
            signed[key] = timestamp_ms


@dataclass
class _Window:
    start_s: int
    used: int
    violations: int
    banned_until_s: int


class RateLimiter:
    """Request weight per client (IP or API key) per minute, then 429, then a temporary ban (418).

    Fixed one-minute windows like Binance's REQUEST_WEIGHT. A client that keeps hammering after
    `ban_after` refusals in one window is banned for `ban_s` seconds. Memory is bounded by
    dropping idle clients.
    """

    def __init__(self, weight_per_min: int, *, ban_after: int = 20, ban_s: int = 120, clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000) -> None:  # float-ok: clock seconds
        self.weight_per_min = weight_per_min
        self.ban_after = ban_after
        self.ban_s = ban_s
        self._clock = clock
        self._clients: OrderedDict[str, _Window] = OrderedDict()
        self._lock = threading.Lock()
        self.max_clients = max_clients

    def charge(self, client: str, weight: int) -> int:
        """Charge `weight`; return the weight used this window, or raise 429/418."""
        now = self._clock()
        now_s = int(now)
        with self._lock:
            window = self._clients.get(client)
            if window is None:
                if len(self._clients) >= self.max_clients:
                    self._clients.popitem(last=False)
                window = _Window(now_s - now_s % 60, 0, 0, 0)
                self._clients[client] = window
            else:
                self._clients.move_to_end(client)
            if window.banned_until_s > now_s:
                retry = window.banned_until_s - now_s
                raise BinanceError(-1003, f"Way too many requests; IP banned until {retry} s from now.", 418, {"Retry-After": str(retry)})
            if now_s - window.start_s >= 60:
                window.start_s, window.used, window.violations = now_s - now_s % 60, 0, 0
            if window.used + weight > self.weight_per_min:
                window.violations += 1
                retry = max(1, math.ceil(window.start_s + 60 - now))
                if window.violations >= self.ban_after:
                    window.banned_until_s = now_s + self.ban_s
                raise BinanceError(
                    -1003,
                    f"Too many requests; current limit is {self.weight_per_min} request weight per 1 MINUTE. "
                    f"Please use the websocket for live updates to avoid polling the API.",
                    429,
                    {"Retry-After": str(retry)},
                )
            window.used += weight
            return window.used
