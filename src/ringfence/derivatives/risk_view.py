"""The risk view (`GET /v1/risk`, the `/risk` page): per segment its insurance fund, per perpetual its
mark and index price, open interest, funding rate and next funding time, and the positions nearest
to liquidation — read between batches, plain values out (decimal strings at the edge).

Public, like Binance's open interest and insurance fund pages: positions are listed without their
owner. An account's *margin ratio* is Binance's: maintenance margin / margin balance (cross: the
account's cross equity against the sum of its cross positions' maintenance; isolated: the position's
margin + unrealised PnL against its maintenance); at 100 % the account is liquidated. The list is
the `NEAR_LIQUIDATION_ROWS` highest ratios; computing it marks every position (like `margin_check`)
between two batches, so `CachedRiskView` serves one computation for `MAX_AGE_S` to any number of
readers (the page polls every 2 s): the engine pays for it at most once a second.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..engine.core import Engine
from ..index.view import rate_text
from ..money import format_amount
from .state import PPM, SEGMENT, account_summary, derivatives_state, maint_margin, mark_of_perp, notional_at, unrealized

__all__ = ["insurance_funds", "risk_view", "CachedRiskView", "NEAR_LIQUIDATION_ROWS"]

NEAR_LIQUIDATION_ROWS = 20


class CachedRiskView:
    """`risk_view` of a running exchange, recomputed at most every `MAX_AGE_S` seconds."""

    MAX_AGE_S = 1.0

    def __init__(self, exchange: Any) -> None:
        self.exchange = exchange
        self._view: dict[str, Any] | None = None
        self._at = 0.0  # float-ok: monotonic seconds, not money
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._view is None or now - self._at >= self.MAX_AGE_S:
                self._view = self.exchange.read(risk_view)
                self._at = now
            return self._view


def insurance_funds(engine: Engine) -> list[dict[str, Any]]:
    """Every segment with its insurance (shield) fund balance per asset (non-zero ones)."""
    ledger: Any = engine.ledger
    out = []
    for segment in ledger.segments:
        funds = []
        for asset in list(ledger.assets):
            account = ledger.find("system", asset.code, "insurance", segment)
            if account is not None and account.balance:
                funds.append({"asset": asset.code, "balance": format_amount(account.balance, asset.decimals)})
        out.append({"segment": segment, "insurance_fund": funds})
    return out


#: The width of the public margin-ratio bands, in percent.
RATIO_BAND_PERCENT = 10


def _two_digits(n: int) -> int:
    """`n` rounded down to two significant digits (12,345 -> 12,000)."""
    scale = 10 ** max(len(str(n)) - 2, 0)
    return n // scale * scale


def _ratio_ppm(maint: int, equity: int) -> int:
    """Maintenance / equity in millionths, rounded up; an account with no equity left is at 100 %+."""
    if maint <= 0:
        return 0
    if equity <= 0:
        return 10 * PPM  # shown as 1000 %: past liquidation, waiting for its step
    return -(-maint * PPM // equity)


def risk_view(engine: Engine) -> dict[str, Any]:
    st = derivatives_state(engine)
    ledger: Any = engine.ledger
    index = engine.components.get("index")
    markets = []
    marks: dict[str, int] = {}
    for sym in sorted(st.perps):
        p = st.perps[sym]
        qd, bd = ledger.assets.get(p.quote).decimals, ledger.assets.get(p.base).decimals
        mark = marks[sym] = mark_of_perp(engine, p)
        s = index.symbols.get(p.index_symbol) if index is not None else None
        longs = sum(1 for (o, ps), pos in st.positions.items() if ps == sym and pos.size > 0)
        shorts = sum(1 for (o, ps), pos in st.positions.items() if ps == sym and pos.size < 0)
        markets.append({
            "symbol": sym[: -len("PERP")] if sym.endswith("PERP") else sym, "internalSymbol": sym, "marginAsset": p.quote,
            "markPrice": format_amount(mark, qd), "indexPrice": format_amount(s.index_minor, qd) if s is not None and s.index_minor else None,
            "indexSources": len(s.live(engine.now_ns)) if s is not None else 0,
            "openInterest": format_amount(p.open_interest, bd),
            "openInterestValue": format_amount(-(-p.open_interest * mark // p.scale), qd),
            "openInterestCap": format_amount(p.max_oi, bd) if p.max_oi else None,
            "longAccounts": longs, "shortAccounts": shorts,
            "lastFundingRate": rate_text(p.last_rate_ppm), "interestRate": rate_text(p.interest_ppm),
            "lastFundingTime": p.last_funding_ns // 1_000_000, "nextFundingTime": p.next_funding_ns // 1_000_000,
        })
    rows: list[tuple[int, dict[str, Any]]] = []
    summaries: dict[tuple[str, str], dict[str, int]] = {}
    for (owner, sym), pos in st.positions.items():
        p = st.perps[sym]
        qd, bd = ledger.assets.get(p.quote).decimals, ledger.assets.get(p.base).decimals
        mark = marks[sym]
        mm = maint_margin(p, pos, mark)
        if (owner, sym) in st.isolated:
            ratio = _ratio_ppm(mm, pos.margin + unrealized(pos, mark, p.scale))
            mode = "isolated"
        else:
            key = (owner, p.quote)
            if key not in summaries:
                summaries[key] = account_summary(engine, owner, p.quote)
            s = summaries[key]
            ratio = _ratio_ppm(s["cross_maint"], s["cross_equity"])
            mode = "cross"
        # The page is public: no owner, and nothing exact enough to work out one account's balance or
        # liquidation price (size, entry, maintenance, the exact ratio) — the notional to two significant
        # digits and the margin ratio in bands of RATIO_BAND_PERCENT.
        band = min(ratio * 100 // PPM // RATIO_BAND_PERCENT * RATIO_BAND_PERCENT, 100)
        rows.append((ratio, {
            "symbol": sym[: -len("PERP")] if sym.endswith("PERP") else sym, "side": "LONG" if pos.size > 0 else "SHORT",
            "notionalApprox": format_amount(_two_digits(abs(notional_at(pos, mark, p.scale))), qd), "markPrice": format_amount(mark, qd),
            "marginType": mode, "marginRatioBand": f"{band}-{band + RATIO_BAND_PERCENT}" if band < 100 else "100+",
        }))
    rows.sort(key=lambda r: -r[0])
    return {
        "segments": insurance_funds(engine),
        "markets": markets,
        "positions": len(st.positions),
        "nearLiquidation": [r for _, r in rows[:NEAR_LIQUIDATION_ROWS]],
        "segment": SEGMENT,
        "time": engine.now_ns // 1_000_000,
        "asOfSeq": engine.last_seq,
    }
