"""Plain-value views of the index state for the API, the CLI and the dashboard (never live objects).

Decimal strings at the edge (quote decimals of the listed market); integers in minor units are
also given as strings (`*_minor`) so large values survive JavaScript clients.
"""

from __future__ import annotations

from typing import Any

from ..engine.core import Engine
from ..money import format_amount
from .mark import mark_of
from .price import PPM, compute_index
from .state import SymbolIndex

__all__ = ["index_symbols", "index_view", "premium_index_view", "premium_index_symbols", "rate_text"]


def _decimals(engine: Engine, symbol: str) -> int | None:
    trading = engine.components.get("trading")
    m = trading.markets.get(symbol) if trading is not None else None
    if m is None:
        return None
    return int(engine.ledger.assets.get(m.quote).decimals)


def _px(value: int, decimals: int | None) -> str:
    return format_amount(value, decimals) if decimals is not None else str(value)


def index_symbols(engine: Engine) -> list[str]:
    state = engine.components.get("index")
    return sorted(state.symbols) if state is not None else []


def _status(s: SymbolIndex) -> str:
    if s.short:
        return "SHORT"  # fewer than min_sources live: frozen, market REDUCE_ONLY
    return "LIVE" if s.index_minor else "WAITING"


def _sources(engine: Engine, s: SymbolIndex, decimals: int | None) -> list[dict[str, Any]]:
    now = engine.now_ns
    live = s.live(now)
    clamped: dict[str, int] = {}
    if live:
        r = compute_index([q.price_minor for _, q in live], [s.sources[v] for v, _ in live], s.clamp_ppm)
        clamped = {v: c for (v, _), c in zip(live, r.clamped)}
    live_weight = sum(s.sources[v] for v, _ in live)
    rows = []
    for venue in sorted(s.sources):
        q = s.quotes.get(venue)
        is_live = venue in clamped
        share_ppm = s.sources[venue] * PPM // live_weight if is_live and live_weight else 0
        rows.append({
            "venue": venue,
            "weight": s.sources[venue],
            "weightShare": format_amount(share_ppm, 6),
            "live": is_live,
            "price": _px(q.price_minor, decimals) if q else None,
            "clampedPrice": _px(clamped[venue], decimals) if is_live else None,
            "ageMs": (now - q.at_ns) // 1_000_000 if q else None,
            "seq": q.seq if q else 0,
        })
    return rows


def index_view(engine: Engine, symbol: str) -> dict[str, Any] | None:
    """Everything about `symbol`'s index and mark price, or None when it has no index."""
    state = engine.components.get("index")
    s = state.symbols.get(symbol) if state is not None else None
    if s is None:
        return None
    d = _decimals(engine, symbol)
    mark = mark_of(engine, symbol)
    trading = engine.components.get("trading")
    market = trading.markets.get(symbol) if trading is not None else None
    from ..risk.halts import market_status

    return {
        "symbol": symbol,
        "status": _status(s),
        "indexPrice": _px(s.index_minor, d) if s.index_minor else None,
        "indexPriceMinor": str(s.index_minor),
        "markPrice": _px(mark.mark_minor, d) if mark else None,
        "markPriceMinor": str(mark.mark_minor) if mark else None,
        "medianPrice": _px(s.median_minor, d) if s.median_minor else None,
        "maBasis": _px(abs(mark.ma_basis_minor), d) if mark else None,
        "maBasisNegative": bool(mark and mark.ma_basis_minor < 0),
        "maSamples": mark.ma_samples if mark else 0,
        "lastPrice": _px(mark.last_minor, d) if mark and mark.last_minor else None,
        "referencePrice": _px(market.ref_price, d) if market is not None and market.ref_price else None,
        "override": _px(s.override_minor, d) if s.override_minor else None,
        "marketStatus": market_status(engine, symbol) if market is not None else None,
        "liveSources": len(s.live(engine.now_ns)),
        "minSources": s.min_sources,
        "clampPpm": s.clamp_ppm,
        "staleAfterMs": s.stale_after_ns // 1_000_000,
        "time": s.index_ts_ns // 1_000_000,
        "asOfSeq": engine.last_seq,
        "adminVersion": getattr(state, "version", 0),
        "sources": _sources(engine, s, d),
    }


def premium_index_view(engine: Engine, symbol: str) -> dict[str, Any] | None:
    """Binance `GET /fapi/v1/premiumIndex` shape. For a listed perpetual (`BTCUSDT` names
    `BTCUSDTPERP`, docs/derivatives.md) its own mark price, the last funding rate, the interest rate
    and the next funding time; for an index with no perpetual, spot has no funding: rates are zero
    and there is no next funding time (0)."""
    state = engine.components.get("index")
    s = state.symbols.get(symbol) if state is not None else None
    deriv = engine.components.get("derivatives")
    perp = deriv.perps.get(symbol + "PERP") if deriv is not None else None
    if s is None and perp is None:
        return None
    if perp is not None:
        from ..derivatives.state import mark_of_perp

        d: int | None = int(engine.ledger.assets.get(perp.quote).decimals)
        s = state.symbols.get(perp.index_symbol) if state is not None else None
        mark_minor = mark_of_perp(engine, perp)
        rate, interest, next_ms = rate_text(perp.last_rate_ppm), rate_text(perp.interest_ppm), perp.next_funding_ns // 1_000_000
    else:
        d = _decimals(engine, symbol)
        mark = mark_of(engine, symbol)
        mark_minor = mark.mark_minor if mark else 0
        rate, interest, next_ms = "0.00000000", "0.00000000", 0
    index = _px(s.index_minor, d) if s is not None and s.index_minor else "0"
    return {
        "symbol": symbol,
        "markPrice": _px(mark_minor, d) if mark_minor else "0",
        "indexPrice": index,
        "estimatedSettlePrice": index,
        "lastFundingRate": rate,
        "interestRate": interest,
        "nextFundingTime": next_ms,
        "time": engine.now_ns // 1_000_000,
    }


def premium_index_symbols(engine: Engine) -> list[str]:
    """What `premiumIndex` lists without a symbol: every index and every perpetual (futures names)."""
    deriv = engine.components.get("derivatives")
    perps = [p[: -len("PERP")] for p in deriv.perps] if deriv is not None else []
    return sorted(set(index_symbols(engine)) | set(perps))


def rate_text(ppm: int) -> str:
    """A rate in millionths as Binance's 8-decimal string (100 ppm -> "0.00010000"): funding rates."""
    return ("-" if ppm < 0 else "") + format_amount(abs(ppm) * 100, 8)
