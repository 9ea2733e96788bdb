"""The index module's commands and events (docs/index.md).

Prices are integers in the quote asset's minor units per whole base unit (trading's price unit);
times are nanoseconds. Feed quotes are signed by the venue's registered Ed25519 feed key over
`quote_message(...)`; configuration changes carry the staff operator quorum's signed decisions
(`StaffSignature`, over `index.auth.admin_subject(...)`; see `index/auth.py`).

The admin commands' `approvals` were `(operator, signature)` pairs of the retired halts operator
set while the index lived only on its own branch; no released journal holds them, so the field
type changed in place (same tags) instead of adding `/2` commands.
"""

from __future__ import annotations

import json

from ..engine.commands import Command, Event
from ..staff.decisions import StaffSignature

__all__ = [
    "RegisterFeedKey",
    "ConfigureIndex",
    "SubmitQuote",
    "OverrideReferencePrice",
    "FeedKeyRegistered",
    "IndexConfigured",
    "QuoteAccepted",
    "IndexPriceChanged",
    "IndexSourcesShort",
    "IndexSourcesRestored",
    "ReferenceOverridden",
    "quote_message",
    "QUOTE_DOMAIN",
]

#: Domain separation: a quote signature can never be taken for any other signed message.
QUOTE_DOMAIN = "ringfence/index-quote/v1"


class RegisterFeedKey(Command, tag="index.feed_key/1", frozen=True):
    """Register (or rotate) the Ed25519 key that signs `venue`'s quotes."""

    venue: str
    public_key_hex: str
    approvals: list[StaffSignature] = []


class ConfigureIndex(Command, tag="index.configure/1", frozen=True):
    """Set `symbol`'s index parameters (data, per symbol). Defaults: ±1 % clamp, 10 s staleness,
    2 s of allowed clock lead, a 30-minute moving-average basis sampled every minute."""

    symbol: str
    #: `(venue, weight)`; weight is a positive integer.
    sources: list[tuple[str, int]]
    min_sources: int
    clamp_ppm: int = 10_000
    stale_after_ns: int = 10 * 10**9
    max_ahead_ns: int = 2 * 10**9
    ma_window_ns: int = 30 * 60 * 10**9
    ma_sample_ns: int = 60 * 10**9
    approvals: list[StaffSignature] = []


class SubmitQuote(Command, tag="index.quote/1", frozen=True):
    """One venue's price for one symbol, signed by the venue's feed key."""

    venue: str
    symbol: str
    price_minor: int
    source_ts_ns: int
    seq: int
    signature_hex: str


class OverrideReferencePrice(Command, tag="index.override/1", frozen=True):
    """Operator override of the band's reference price (`price_minor` 0: follow the index again)."""

    symbol: str
    price_minor: int
    reason: str
    approvals: list[StaffSignature] = []


class FeedKeyRegistered(Event, tag="index.feed_key_registered/1", frozen=True):
    venue: str
    public_key_hex: str
    approvers: list[str]


class IndexConfigured(Event, tag="index.configured/1", frozen=True):
    symbol: str
    sources: list[tuple[str, int]]
    min_sources: int
    clamp_ppm: int
    stale_after_ns: int
    approvers: list[str]


class QuoteAccepted(Event, tag="index.quote_accepted/1", frozen=True):
    venue: str
    symbol: str
    price_minor: int
    source_ts_ns: int
    seq: int


class IndexPriceChanged(Event, tag="index.price/1", frozen=True):
    symbol: str
    index_minor: int
    median_minor: int
    live_sources: int


class IndexSourcesShort(Event, tag="index.sources_short/1", frozen=True):
    """Fewer than `min_sources` live: the index is frozen and the market is REDUCE_ONLY."""

    symbol: str
    live_sources: int
    min_sources: int


class IndexSourcesRestored(Event, tag="index.sources_restored/1", frozen=True):
    symbol: str
    live_sources: int
    min_sources: int


class ReferenceOverridden(Event, tag="index.override_set/1", frozen=True):
    symbol: str
    price_minor: int
    reason: str
    approvers: list[str]


def _canonical(items: list[object]) -> bytes:
    return json.dumps(items, separators=(",", ":"), ensure_ascii=True).encode()


def quote_message(venue: str, symbol: str, price_minor: int, source_ts_ns: int, seq: int) -> bytes:
    """The exact bytes a feed key signs for one quote: a JSON array led by the domain tag.

    Venue and symbol are restricted to `[A-Za-z0-9_.-]` / `[A-Z0-9]` before a quote is accepted,
    so the encoding is canonical (no escapes, no whitespace, integers in decimal)."""
    return _canonical([QUOTE_DOMAIN, venue, symbol, price_minor, source_ts_ns, seq])

