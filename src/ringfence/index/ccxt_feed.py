"""The ccxt poller: a feed worker that reads venues' tickers with ccxt and submits signed quotes.

Each configured venue is `(venue, exchange, market, symbol, url, decimals, key_file)`: ccxt's
`fetch_ticker(market)` on exchange class `exchange` (with ccxt `options` when given; its API URLs re-pointed at `url` when given —
this machine has no internet, so tests point it at local `ringfence serve` processes, which speak
Binance's `/api/v3/ticker/24hr`), the quote's price taken from the raw ticker strings (never
ccxt's floats): `lastPrice`, else `floor((bidPrice + askPrice) / 2)`; decimals beyond the quote
asset's are cut off (floor). Quotes go to a ringfence node's `POST /v1/index/quote`; the sequence
number of each venue continues above the one the node last accepted (read from `/v1/index`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from .commands import SubmitQuote
from .feeds import FeedSigner

__all__ = ["VenueConfig", "load_config", "price_minor_of", "CcxtPoller", "HttpQuoteSink"]

log = structlog.get_logger("ringfence.index")
_DECIMAL_RE = re.compile(r"([0-9]{1,40})(?:\.([0-9]{1,40}))?")


@dataclass(frozen=True)
class VenueConfig:
    venue: str
    exchange: str
    market: str
    symbol: str
    decimals: int
    key_file: str
    url: str | None = None
    #: ccxt exchange options, e.g. `{"fetchMarkets": ["spot"]}` for a spot-only Binance-like venue.
    options: tuple[tuple[str, Any], ...] = ()


def load_config(path: Path) -> list[VenueConfig]:
    """`{"venues": [{venue, exchange, market, symbol, decimals, key_file, url?}, ...]}`; key files
    relative to the config file."""
    raw = json.loads(path.read_text())
    out = []
    for i, v in enumerate(raw.get("venues", [])):
        try:
            key_file = str((path.parent / v["key_file"]).resolve())
            out.append(VenueConfig(str(v["venue"]), str(v["exchange"]), str(v["market"]), str(v["symbol"]),
                                   int(v["decimals"]), key_file, v.get("url"), tuple(dict(v.get("options") or {}).items())))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"venues[{i}]: {err!s} (needs venue, exchange, market, symbol, decimals, key_file)") from None
    if not out:
        raise ValueError("venues: at least one venue is needed")
    return out


def _minor(text: object, decimals: int) -> int | None:
    if not isinstance(text, str):
        return None
    m = _DECIMAL_RE.fullmatch(text.strip())
    if m is None:
        return None
    whole, frac = m.group(1), (m.group(2) or "")
    value: int = int(whole) * 10**decimals + int((frac[:decimals]).ljust(decimals, "0") or "0")
    return value


def price_minor_of(ticker: dict[str, Any], decimals: int) -> int | None:
    """The price in minor units from a ccxt ticker's raw strings (last, else the floor mid), or None."""
    info = ticker.get("info") or {}
    last = _minor(info.get("lastPrice", info.get("price")), decimals)
    if last:
        return last
    bid, ask = _minor(info.get("bidPrice"), decimals), _minor(info.get("askPrice"), decimals)
    if bid and ask:
        return (bid + ask) // 2
    return None


def _load_key(path: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(Path(path).read_text().strip()))


class CcxtPoller:
    def __init__(self, venues: list[VenueConfig], *, timeout_ms: int = 5000) -> None:
        import ccxt  # type: ignore[import-untyped]

        self.venues = venues
        self.signers = {v.venue: FeedSigner(v.venue, _load_key(v.key_file)) for v in venues}
        self.clients: dict[str, Any] = {}
        self.errors: list[str] = []
        for v in venues:
            client = getattr(ccxt, v.exchange)({"timeout": timeout_ms, "enableRateLimit": False, "options": dict(v.options)})
            if v.url:
                base = v.url.rstrip("/")
                api = client.urls["api"]
                for name, url in list(api.items()):
                    if isinstance(url, str):
                        api[name] = base + urlsplit(url).path
            self.clients[v.venue] = client

    def continue_from(self, last_seq: dict[tuple[str, str], int]) -> None:
        """Start each venue's sequence above what the node last accepted."""
        for (venue, symbol), seq in last_seq.items():
            if venue in self.signers:
                self.signers[venue].last_seq[symbol] = max(seq, self.signers[venue].last_seq.get(symbol, 0))

    def poll(self, now_ns: int) -> list[SubmitQuote]:
        """One quote per venue that answered with a usable price (the others are logged and skipped)."""
        import ccxt

        out = []
        for v in self.venues:
            try:
                ticker = self.clients[v.venue].fetch_ticker(v.market)
            except ccxt.BaseError as err:
                self.errors.append(f"{v.venue}: {type(err).__name__}")
                log.info("index.venue_unreachable", venue=v.venue, error=type(err).__name__)
                continue
            price = price_minor_of(ticker, v.decimals)
            if price is None:
                self.errors.append(f"{v.venue}: no price in the ticker")
                continue
            out.append(self.signers[v.venue].quote(v.symbol, price, now_ns))
        return out


class HttpQuoteSink:
    """Submits quotes to a ringfence node over HTTP (`POST /v1/index/quote`)."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:  # float-ok: a timeout
        import httpx

        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self.accepted = 0
        self.refused: list[str] = []

    def last_seq(self, symbols: set[str]) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for symbol in sorted(symbols):
            r = self.client.get("/v1/index", params={"symbol": symbol})
            if r.status_code == 200:
                for row in r.json()["sources"]:
                    out[(row["venue"], symbol)] = int(row["seq"])
        return out

    def send(self, quotes: list[SubmitQuote]) -> None:
        for q in quotes:
            r = self.client.post("/v1/index/quote", data={
                "venue": q.venue, "symbol": q.symbol, "price_minor": str(q.price_minor),
                "source_ts_ns": str(q.source_ts_ns), "seq": str(q.seq), "signature": q.signature_hex,
            })
            if r.status_code == 200:
                self.accepted += 1
            else:
                self.refused.append(f"{q.venue}: {r.status_code} {r.text[:200]}")

    def close(self) -> None:
        self.client.close()
