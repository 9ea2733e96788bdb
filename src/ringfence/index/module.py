"""The index engine module: feed keys, per-symbol parameters, signed quotes, the index, the band
reference and the REDUCE_ONLY halt when too few sources are live (docs/index.md).

Invariants:
* a quote changes state only if its venue's registered key signed exactly
  `quote_message(venue, symbol, price, source_ts_ns, seq)`, its `seq` is above the venue's last
  for the symbol, its source time did not go backwards, is not ahead of sequencer time by more
  than `max_ahead_ns` and not older than `stale_after_ns` — anything else is refused whole;
* a source is live while `now − min(source_ts, received) <= stale_after_ns` (sequencer time);
  stale sources are dropped by a before-command hook, so every command sees the index as of its
  own sequencer time;
* live < `min_sources` → the index is frozen, `IndexSourcesShort`, and the market gets the
  automatic halt `index:<SYMBOL>` (REDUCE_ONLY) through risk/halts.py; live >= `min_sources`
  again → recomputed and the halt is lifted;
* the band's reference follows the index (`trading.admin.follow_index`) unless an operator
  override is set; a plain `SetReferencePrice` on an indexed symbol is refused.
Everything is integer arithmetic on command fields and state: deterministic on replay.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import NEVER, Effect, Module
from ..errors import Conflict, Forbidden, NotFound, ValidationError
from ..risk.halts import REDUCE_ONLY, clear_automatic_halt, raise_automatic_halt
from ..trading.admin import follow_index
from ..trading.commands import SetReferencePrice
from ..trading.state import _SYMBOL_RE, MAX_PRICE
from .auth import authorize, consume_approvals
from .commands import (
    ConfigureIndex,
    FeedKeyRegistered,
    IndexConfigured,
    IndexPriceChanged,
    IndexSourcesRestored,
    IndexSourcesShort,
    OverrideReferencePrice,
    QuoteAccepted,
    ReferenceOverridden,
    RegisterFeedKey,
    SubmitQuote,
    quote_message,
)
from .mark import book_price
from .price import compute_index
from .state import MAX_SAMPLES, MAX_SOURCES, MAX_SYMBOLS, MAX_VENUES, IndexState, SourceQuote, SymbolIndex, index_state, restore, snapshot

__all__ = ["MODULE", "halt_id_of"]

MODULE = Module("index", writes=("index", "trading", "halts", "derivatives", "ledger", "staff"))
#: Reachable as `engine.index_state` too: the before-command hook reads it on every command.
MODULE.declare_state(IndexState, snapshot, restore, attribute="index_state")
MODULE.declare_events(FeedKeyRegistered, IndexConfigured, QuoteAccepted, IndexPriceChanged, IndexSourcesShort,
                      IndexSourcesRestored, ReferenceOverridden)

_VENUE_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_HEX_RE = re.compile(r"[0-9a-f]+")
MAX_WEIGHT = 1_000_000
MAX_INT64 = 2**63 - 1
MAX_REASON_CHARS = 500


def halt_id_of(symbol: str) -> str:
    """The id of the automatic REDUCE_ONLY halt the index raises for `symbol`."""
    return f"index:{symbol}"


def _int(value: object, field: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValidationError(f"{field} must be an integer between {lo} and {hi}", field=field)
    return value


def _venue(value: object, field: str = "venue") -> str:
    if not isinstance(value, str) or not _VENUE_RE.fullmatch(value):
        raise ValidationError(f"{field} must be 1-32 characters of A-Z a-z 0-9 _ . -", field=field)
    return value


def _symbol(value: object) -> str:
    if not isinstance(value, str) or not _SYMBOL_RE.fullmatch(value):
        raise ValidationError("symbol must be 2-20 characters of A-Z and 0-9 (e.g. BTCUSDT)", field="symbol")
    return value


def _public_key(key_hex: object, field: str) -> Ed25519PublicKey:
    if not isinstance(key_hex, str) or len(key_hex) != 64 or not _HEX_RE.fullmatch(key_hex):
        raise ValidationError("public key must be 64 lowercase hex characters (Ed25519)", field=field)
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
    except ValueError:
        raise ValidationError("not a valid Ed25519 public key", field=field) from None


# ----------------------------------------------------------------------------------------- feed keys


def _validate_feed_key(engine: Engine, c: RegisterFeedKey) -> list[str]:
    _venue(c.venue)
    _public_key(c.public_key_hex, "public_key_hex")
    st = index_state(engine)
    if c.venue not in st.feed_keys and len(st.feed_keys) >= MAX_VENUES:
        raise ValidationError(f"at most {MAX_VENUES} feed venues", field="venue")
    return authorize(engine, c, st.version)


@MODULE.handles(RegisterFeedKey, precheck=_validate_feed_key, effect=Effect.ADMIN)
def _register_feed_key(engine: Engine, c: RegisterFeedKey) -> list[Event]:
    approvers = _validate_feed_key(engine, c)
    consume_approvals(engine, c)
    st = index_state(engine)
    st.feed_keys[c.venue] = c.public_key_hex
    st.version += 1
    return [FeedKeyRegistered(c.venue, c.public_key_hex, approvers)]


# ----------------------------------------------------------------------------------------- configuration


def _check_sources(sources: object) -> dict[str, int]:
    if not isinstance(sources, list) or not 1 <= len(sources) <= MAX_SOURCES:
        raise ValidationError(f"sources must hold 1 to {MAX_SOURCES} (venue, weight) pairs", field="sources")
    out: dict[str, int] = {}
    for i, (venue, weight) in enumerate(sources):
        _venue(venue, f"sources[{i}]")
        _int(weight, f"sources[{i}].weight", 1, MAX_WEIGHT)
        if venue in out:
            raise ValidationError(f"venue {venue!r} is listed twice", field=f"sources[{i}]")
        out[venue] = weight
    return out


def _validate_configure(engine: Engine, c: ConfigureIndex) -> list[str]:
    _symbol(c.symbol)
    sources = _check_sources(c.sources)
    _int(c.min_sources, "min_sources", 1, len(sources))
    _int(c.clamp_ppm, "clamp_ppm", 0, 500_000)
    _int(c.stale_after_ns, "stale_after_ns", 10**9, 3600 * 10**9)
    _int(c.max_ahead_ns, "max_ahead_ns", 0, 60 * 10**9)
    _int(c.ma_sample_ns, "ma_sample_ns", 10**9, 3600 * 10**9)
    _int(c.ma_window_ns, "ma_window_ns", c.ma_sample_ns, 24 * 3600 * 10**9)
    if c.ma_window_ns // c.ma_sample_ns > MAX_SAMPLES:
        raise ValidationError(f"ma_window_ns / ma_sample_ns must be at most {MAX_SAMPLES} samples", field="ma_window_ns")
    st = index_state(engine)
    if c.symbol not in st.symbols and len(st.symbols) >= MAX_SYMBOLS:
        raise ValidationError(f"at most {MAX_SYMBOLS} indexed symbols", field="symbol")
    return authorize(engine, c, st.version)


@MODULE.handles(ConfigureIndex, precheck=_validate_configure, effect=Effect.ADMIN)
def _configure(engine: Engine, c: ConfigureIndex) -> list[Event]:
    approvers = _validate_configure(engine, c)
    consume_approvals(engine, c)
    st = index_state(engine)
    sources = {v: w for v, w in c.sources}
    old = st.symbols.get(c.symbol)
    s = SymbolIndex(c.symbol, sources, c.min_sources, c.clamp_ppm, c.stale_after_ns, c.max_ahead_ns,
                    c.ma_window_ns, c.ma_sample_ns)
    if old is not None:  # keep what was learned: quotes of venues still listed, the index, the override
        s.quotes = {v: q for v, q in old.quotes.items() if v in sources}
        s.index_minor, s.median_minor, s.index_ts_ns, s.short = old.index_minor, old.median_minor, old.index_ts_ns, old.short
        s.override_minor, s.samples, s.next_sample_ns = old.override_minor, old.samples, old.next_sample_ns
    st.symbols[c.symbol] = s
    st.version += 1
    ev: list[Event] = [IndexConfigured(c.symbol, sorted(sources.items()), c.min_sources,
                                       c.clamp_ppm, c.stale_after_ns, approvers)]
    ev += _recompute(engine, s)
    _schedule_check(engine, st)
    return ev


# ----------------------------------------------------------------------------------------- quotes


def _check_quote(engine: Engine, c: SubmitQuote, *, timing: bool) -> SymbolIndex:
    """Everything a quote must satisfy; `timing` adds the sequencer-time checks (the handler's).
    Cheap checks first; the signature last."""
    st = index_state(engine)
    _venue(c.venue)
    _symbol(c.symbol)
    _int(c.price_minor, "price_minor", 1, MAX_PRICE)
    _int(c.source_ts_ns, "source_ts_ns", 1, MAX_INT64)
    _int(c.seq, "seq", 1, MAX_INT64)
    if not isinstance(c.signature_hex, str) or len(c.signature_hex) != 128 or not _HEX_RE.fullmatch(c.signature_hex):
        raise ValidationError("signature_hex must be 128 lowercase hex characters (Ed25519)", field="signature_hex")
    s = st.symbols.get(c.symbol)
    if s is None:
        raise NotFound(f"no index is configured for {c.symbol}", field="symbol")
    if c.venue not in s.sources:
        raise Forbidden(f"venue {c.venue!r} is not a source of the {c.symbol} index", field="venue")
    key_hex = st.feed_keys.get(c.venue)
    if key_hex is None:
        raise Forbidden(f"venue {c.venue!r} has no registered feed key", field="venue")
    prev = s.quotes.get(c.venue)
    if prev is not None and c.seq <= prev.seq:
        raise Conflict(f"seq {c.seq} is not above {c.venue}'s last accepted seq {prev.seq} (replayed or out of order)", field="seq")
    if prev is not None and c.source_ts_ns < prev.source_ts_ns:
        raise Conflict("source_ts_ns is older than the venue's last accepted quote (out of order)", field="source_ts_ns")
    if timing:
        now = engine.now_ns
        if c.source_ts_ns > now + s.max_ahead_ns:
            raise ValidationError(f"source_ts_ns is more than {s.max_ahead_ns} ns ahead of sequencer time", field="source_ts_ns")
        if now - c.source_ts_ns > s.stale_after_ns:
            raise ValidationError(f"stale quote: older than {s.stale_after_ns} ns of sequencer time", field="source_ts_ns")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
            bytes.fromhex(c.signature_hex), quote_message(c.venue, c.symbol, c.price_minor, c.source_ts_ns, c.seq)
        )
    except InvalidSignature:
        raise Forbidden(f"the signature does not verify with {c.venue}'s feed key (forged or altered)", field="signature_hex") from None
    return s


def _precheck_quote(engine: Engine, c: SubmitQuote) -> None:
    _check_quote(engine, c, timing=False)


@MODULE.handles(SubmitQuote, precheck=_precheck_quote, effect=Effect.NEUTRAL)
def _submit_quote(engine: Engine, c: SubmitQuote) -> list[Event]:
    s = _check_quote(engine, c, timing=True)
    s.quotes[c.venue] = SourceQuote(c.price_minor, c.source_ts_ns, engine.now_ns, c.seq)
    ev: list[Event] = [QuoteAccepted(c.venue, c.symbol, c.price_minor, c.source_ts_ns, c.seq)]
    ev += _recompute(engine, s)
    _sample_basis(engine, s)
    st = index_state(engine)
    _schedule_check(engine, st)
    return ev


def _sample_basis(engine: Engine, s: SymbolIndex) -> None:
    """At most one basis sample per `ma_sample_ns`: (book mid, else last trade) − index."""
    now = engine.now_ns
    if s.short or not s.index_minor or now < s.next_sample_ns:
        return
    s.next_sample_ns = now + s.ma_sample_ns
    price = book_price(engine, s.symbol)
    if price:
        s.samples.append((now, price - s.index_minor))
    since = now - s.ma_window_ns
    while s.samples and (s.samples[0][0] < since or len(s.samples) > MAX_SAMPLES):
        s.samples.popleft()


# ----------------------------------------------------------------------------------------- the index


def _recompute(engine: Engine, s: SymbolIndex) -> list[Event]:
    """Recompute `s`'s index from its live sources; move the band; raise or lift the feed halt."""
    now = engine.now_ns
    live = s.live(now)
    s.live_sources = len(live)
    ev: list[Event] = []
    if len(live) < s.min_sources:
        if not s.short:
            s.short = True
            ev.append(IndexSourcesShort(s.symbol, len(live), s.min_sources))
            evidence = json.dumps({"live_sources": len(live), "min_sources": s.min_sources,
                                   "live": [v for v, _ in live], "index_minor": s.index_minor}, separators=(",", ":"))
            reason = f"index {s.symbol}: {len(live)} live price source(s), at least {s.min_sources} needed"
            ev += raise_automatic_halt(engine, halt_id_of(s.symbol), "market", s.symbol, REDUCE_ONLY, reason, evidence)
        return ev
    result = compute_index([q.price_minor for _, q in live], [s.sources[v] for v, _ in live], s.clamp_ppm)
    if result.index != s.index_minor or result.median != s.median_minor:
        s.index_minor, s.median_minor, s.index_ts_ns = result.index, result.median, now
        ev.append(IndexPriceChanged(s.symbol, result.index, result.median, len(live)))
    if s.short:
        s.short = False
        ev.append(IndexSourcesRestored(s.symbol, len(live), s.min_sources))
        ev += clear_automatic_halt(engine, halt_id_of(s.symbol), f"{len(live)} live price sources again (at least {s.min_sources})")
    if not s.override_minor:
        ev += follow_index(engine, s.symbol, s.index_minor)
    return ev


_NOTHING: tuple[Event, ...] = ()


def _schedule_check(engine: Engine, st: IndexState) -> None:
    """Work out when the next source goes stale and wake the engine then (a timer, as the ledger's
    expiry: no work at all on the commands in between)."""
    st.next_check_ns = st.next_expiry(engine.now_ns)
    if st.next_check_ns:
        engine.wake_at(st.next_check_ns)


@MODULE.timer(lambda st: st.next_check_ns or NEVER)
def _drop_stale_sources(engine: Engine) -> Sequence[Event]:
    """Drop sources that went stale by this command's sequencer time (one comparison when none did)."""
    st: IndexState = engine.index_state  # type: ignore[attr-defined]  # set by the engine (StateComponent.attribute)
    due = st.next_check_ns
    if not due or engine.now_ns < due:
        return _NOTHING
    ev: list[Event] = []
    for symbol in sorted(st.symbols):
        ev += _recompute(engine, st.symbols[symbol])
    st.next_check_ns = st.next_expiry(engine.now_ns)
    return ev


# ----------------------------------------------------------------------------------------- override


def _validate_override(engine: Engine, c: OverrideReferencePrice) -> list[str]:
    _symbol(c.symbol)
    _int(c.price_minor, "price_minor", 0, MAX_PRICE)
    if not isinstance(c.reason, str) or not c.reason.strip() or len(c.reason) > MAX_REASON_CHARS:
        raise ValidationError(f"reason must be a non-empty string of at most {MAX_REASON_CHARS} characters", field="reason")
    st = index_state(engine)
    if c.symbol not in st.symbols:
        raise NotFound(f"no index is configured for {c.symbol}; use SetReferencePrice", field="symbol")
    return authorize(engine, c, st.version)


@MODULE.handles(OverrideReferencePrice, precheck=_validate_override, effect=Effect.ADMIN)
def _override(engine: Engine, c: OverrideReferencePrice) -> list[Event]:
    approvers = _validate_override(engine, c)
    consume_approvals(engine, c)
    st = index_state(engine)
    s = st.symbols[c.symbol]
    s.override_minor = c.price_minor
    st.version += 1
    ev: list[Event] = [ReferenceOverridden(c.symbol, c.price_minor, c.reason, approvers)]
    target = c.price_minor or s.index_minor
    if target:
        ev += follow_index(engine, c.symbol, target)
    return ev


@MODULE.guard_for(SetReferencePrice)
def _reference_follows_index(engine: Engine, command: Any) -> None:
    """A plain `SetReferencePrice` would fight the index: refused on indexed symbols."""
    if type(command) is not SetReferencePrice:
        return
    st = engine.components.get("index")
    if st is not None and command.symbol in st.symbols:
        raise Forbidden(
            f"the {command.symbol} band follows its index; an operator override is OverrideReferencePrice "
            "signed by the staff operator quorum (docs/index.md)",
            field="symbol",
        )
