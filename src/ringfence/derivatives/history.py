"""The futures read model: what the USDⓈ-M API reports about the past, folded from engine events only.

Fed like trading's order history (`api.orders.OrderHistory`): after each batch on the loop thread,
and from the journal on start, so a restart rebuilds it exactly. It keeps, per account, the fills of
perpetual orders with their realised PnL (`/fapi/v1/userTrades`) and the income ledger — realised
PnL, commissions, funding, transfers (`/fapi/v1/income`) — and per market the funding rounds
(`/fapi/v1/fundingRate`). Integers in minor units, as in the engine; the API formats them.

A fill's realised PnL is in the `PositionChanged` events a perpetual fill emits (buyer, then
seller) just before its `Trade`; the two are paired here by owner, so a fill is reported once per
side with the PnL of that side. Every list is bounded.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from ..trading.commands import Trade
from .price_history import PriceCandles
from .commands import (
    ConditionalOrderAccepted,
    ConditionalOrderEnded,
    ConditionalOrderTriggered,
    FundingSettled,
    FuturesTransferred,
    IsolatedMarginAdjusted,
    MarginTypeSet,
    PerpetualListed,
    PositionChanged,
)

__all__ = ["FuturesHistory", "AlgoRecord", "MAX_ROWS_PER_ACCOUNT", "MAX_FUNDING_ROUNDS"]

MAX_ROWS_PER_ACCOUNT = 10_000
MAX_FUNDING_ROUNDS = 1_000


class AlgoRecord:
    """A conditional order as `/fapi/v1/algoOrder` reports it: what was asked, then NEW, TRIGGERED
    (`order_id` the order it became; 0: refused, `reason`), CANCELED or EXPIRED."""

    __slots__ = ("accepted", "status", "order_id", "reason", "trigger_price", "time_ms", "update_ms", "trigger_ms")

    def __init__(self, accepted: ConditionalOrderAccepted, ts_ms: int) -> None:
        self.accepted = accepted
        self.status = "NEW"
        self.order_id = 0
        self.reason = ""
        self.trigger_price = 0
        self.time_ms = self.update_ms = ts_ms
        self.trigger_ms = 0


class FuturesHistory:
    def __init__(self) -> None:
        #: internal symbol (BTCUSDTPERP) -> (base, quote)
        self.perps: dict[str, tuple[str, str]] = {}
        self.trades: dict[str, deque[dict[str, Any]]] = {}
        self.income: dict[str, deque[dict[str, Any]]] = {}
        self.funding: dict[str, deque[dict[str, Any]]] = {}
        self.next_tran_id = 1
        #: owner -> the reasons its futures account changed in the batch being absorbed (Binance's
        #: ACCOUNT_UPDATE `m`); the user stream takes and clears it after each batch.
        self.touched: dict[str, str] = {}
        #: (owner, trade id) -> realised PnL of that side of the fill (for ORDER_TRADE_UPDATE's `rp`).
        self.fill_pnl: dict[tuple[str, int], int] = {}
        #: mark and index price candles, sampled once a second (price_history.py)
        self.prices = PriceCandles()
        #: algo id -> conditional order; per owner the ids, oldest first (bounded)
        self.algos: dict[int, AlgoRecord] = {}
        self.algos_of: dict[str, deque[int]] = {}

    # ------------------------------------------------------------------ feeding

    def on_batch(self, first_seq: int, ts_ns: int, commands: list[Any], outputs: list[list[Any]]) -> None:
        self.fill_pnl.clear()  # read by the user stream while this batch is absorbed, then stale
        for events in outputs:
            self.feed(ts_ns, events)

    def on_replay(self, engine: Any, batch: Any, outputs: list[list[Any]]) -> None:
        for events in outputs:
            self.feed(batch.ts_ns, events)
        samples = self.prices.sample(engine, batch.ts_ns)  # the engine as of this batch's end
        if samples:
            self.prices.fold(batch.ts_ns, samples)
        self.touched.clear()  # nobody listens during a replay
        self.fill_pnl.clear()

    def feed(self, ts_ns: int, events: Iterable[Any]) -> None:
        ts_ms = ts_ns // 1_000_000
        pending: list[PositionChanged] = []
        for e in events:
            t = type(e)
            if t is PositionChanged:
                pending.append(e)
            elif t is Trade and e.symbol in self.perps:
                self._fill(e, pending, ts_ms)
                pending = []
            elif t is FundingSettled:
                self._funding(e, ts_ms)
            elif t is FuturesTransferred:
                into = e.direction == "MAIN_UMFUTURE"
                self._income(e.owner, "", "TRANSFER", e.amount if into else -e.amount, e.asset, ts_ms, info="TRANSFER")
                self.touched[e.owner] = "DEPOSIT" if into else "WITHDRAW"
            elif t is PerpetualListed:
                self.perps[e.symbol] = (e.base, e.quote)
            elif t is ConditionalOrderAccepted:
                self._algo(e, ts_ms)
            elif t is ConditionalOrderTriggered or t is ConditionalOrderEnded:
                r = self.algos.get(e.algo_id)
                if r is not None:
                    r.update_ms = ts_ms
                    if t is ConditionalOrderTriggered:
                        r.status, r.order_id, r.reason, r.trigger_price, r.trigger_ms = "TRIGGERED", e.order_id, e.reason, e.price, ts_ms
                    else:
                        r.status, r.reason = e.status, e.reason
            elif t is MarginTypeSet or t is IsolatedMarginAdjusted:
                # Binance pushes no ACCOUNT_UPDATE for orders that rest or are cancelled: only fills,
                # funding, transfers and these
                self.touched.setdefault(e.owner, "MARGIN_TYPE_CHANGE" if t is MarginTypeSet else "MARGIN_TRANSFER")

    def _algo(self, e: ConditionalOrderAccepted, ts_ms: int) -> None:
        ids = self.algos_of.setdefault(e.owner, deque())
        if len(ids) >= MAX_ROWS_PER_ACCOUNT:  # the oldest finished one goes (an open one is kept)
            for old in ids:
                if self.algos[old].status != "NEW":
                    ids.remove(old)
                    del self.algos[old]
                    break
        ids.append(e.algo_id)
        self.algos[e.algo_id] = AlgoRecord(e, ts_ms)

    def _fill(self, e: Trade, pending: list[PositionChanged], ts_ms: int) -> None:
        quote = self.perps[e.symbol][1]
        buyer_is_taker = e.taker_side == "BUY"
        sides = (
            (e.taker_owner, e.taker_order_id, e.taker_fee, False, buyer_is_taker),
            (e.maker_owner, e.maker_order_id, e.maker_fee, True, not buyer_is_taker),
        )
        # PositionChanged: the buyer's side first, then the seller's (derivatives.module.Contract.fill)
        by_side = {True: pending[-2], False: pending[-1]} if len(pending) >= 2 else {}
        for owner, order_id, fee, is_maker, is_buyer in sides:
            pc = by_side.get(is_buyer)
            pnl = pc.realized_pnl if pc is not None and pc.owner == owner else 0
            row = {
                "symbol": e.symbol, "id": e.trade_id, "orderId": order_id, "side": "BUY" if is_buyer else "SELL",
                "price": e.price, "qty": e.quantity, "realizedPnl": pnl, "marginAsset": quote, "quoteQty": e.quote_qty,
                "commission": fee, "commissionAsset": quote, "time": ts_ms, "buyer": is_buyer, "maker": is_maker,
            }
            _bounded(self.trades, owner).append(row)
            if pnl:
                self._income(owner, e.symbol, "REALIZED_PNL", pnl, quote, ts_ms, trade_id=e.trade_id)
            if fee:
                self._income(owner, e.symbol, "COMMISSION", -fee, quote, ts_ms, trade_id=e.trade_id)
            self.touched[owner] = "ORDER"
            self.fill_pnl[(owner, e.trade_id)] = pnl

    def _funding(self, e: FundingSettled, ts_ms: int) -> None:
        quote = self.perps.get(e.symbol, ("", "USDT"))[1]
        rounds = self.funding.setdefault(e.symbol, deque(maxlen=MAX_FUNDING_ROUNDS))
        rounds.append({"symbol": e.symbol, "rate_ppm": e.rate_ppm, "time": e.funding_time_ns // 1_000_000,
                       "mark": e.mark_price, "index": e.index_price})
        for owner, amount in zip(e.owners, e.amounts):
            self._income(owner, e.symbol, "FUNDING_FEE", amount, quote, ts_ms)
            self.touched[owner] = "FUNDING_FEE"

    def _income(self, owner: str, symbol: str, kind: str, amount: int, asset: str, ts_ms: int, *,
                trade_id: int = 0, info: str = "") -> None:
        tid = self.next_tran_id
        self.next_tran_id = tid + 1
        _bounded(self.income, owner).append({"symbol": symbol, "incomeType": kind, "income": amount, "asset": asset,
                                             "info": info, "time": ts_ms, "tranId": tid, "tradeId": str(trade_id) if trade_id else ""})

    # ------------------------------------------------------------------ queries

    def user_trades(self, owner: str, symbol: str) -> list[dict[str, Any]]:
        return [t for t in self.trades.get(owner, ()) if t["symbol"] == symbol]

    def income_of(self, owner: str) -> list[dict[str, Any]]:
        return list(self.income.get(owner, ()))

    def funding_of(self, symbol: str) -> list[dict[str, Any]]:
        return list(self.funding.get(symbol, ()))

    def take_touched(self) -> dict[str, str]:
        touched, self.touched = self.touched, {}
        return touched


def _bounded(rows: dict[str, deque[dict[str, Any]]], owner: str) -> deque[dict[str, Any]]:
    d = rows.get(owner)
    if d is None:
        d = rows[owner] = deque(maxlen=MAX_ROWS_PER_ACCOUNT)
    return d
