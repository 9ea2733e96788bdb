"""The futures user data stream: Binance USDⓈ-M's ORDER_TRADE_UPDATE, ALGO_UPDATE and ACCOUNT_UPDATE, pushed to
the account's futures listen key (`POST /fapi/v1/listenKey`; `/private/ws?listenKey=` or
`/ws/<listenKey>`).

It rides on the spot stream's machinery (`api.ws.StreamHub`: connections, bounded queues, slow
consumers): the hub accepts a futures key as a stream name, and this module publishes to it.
Order events come from trading's order history as they are folded (the spot stream skips perpetual
orders); after each batch, every account whose futures wallet or positions changed gets one
ACCOUNT_UPDATE read from the engine (wallet balance per margin asset and every position at mark),
with the reason Binance gives (`ORDER`: a fill; `FUNDING_FEE`; `DEPOSIT` / `WITHDRAW`: a transfer from or
to spot; `MARGIN_TYPE_CHANGE`; `MARGIN_TRANSFER`: isolated margin added or removed). As on Binance,
an order that rests or is cancelled changes no balance and pushes no ACCOUNT_UPDATE.

MARGIN_CALL: after batches (at most every `MARGIN_CHECK_S`, and always once after the last batch of
a burst), each account listening on a futures key is marked: a cross account whose maintenance
margin is at least `MARGIN_CALL_RATIO_PPM` of its margin balance (wallet + cross margin + unrealised
PnL; any at a balance ≤ 0), and each isolated position whose maintenance is that share of its margin +
PnL, is sent one MARGIN_CALL with those positions (Binance's `cw`, and per position `s ps pa mt iw mp
up mm`) — again every `MARGIN_CALL_REPEAT_S` while it stays there, at once after it left and came
back. Guidance only, as on Binance: the liquidation worker does not wait for it.
"""

from __future__ import annotations

import time
from typing import Any

from ..money import format_amount
from .api import SUFFIX, FuturesApi, adl_order_updates, external_symbol
from .commands import AutoDeleveraged, ConditionalOrderAccepted, ConditionalOrderEnded, ConditionalOrderTriggered
from .state import account_summary, derivatives_state, maint_margin, mark_of_perp, unrealized

__all__ = ["FuturesUserStream", "MARGIN_CALL_RATIO_PPM", "MARGIN_CHECK_S", "MARGIN_CALL_REPEAT_S"]

MARGIN_CALL_RATIO_PPM = 800_000  # maintenance ≥ 80 % of the margin balance
MARGIN_CHECK_S = 0.25  # float-ok: seconds between two checks at most
MARGIN_CALL_REPEAT_S = 60.0  # float-ok: seconds before the same account is called again

_EXEC_TYPES = {"NEW": "NEW", "CANCELED": "CANCELED", "EXPIRED": "EXPIRED", "EXPIRED_IN_MATCH": "EXPIRED"}


class FuturesUserStream:
    def __init__(self, api: FuturesApi, hub: Any) -> None:
        self.api = api
        self.ex = api.ex
        self.hub = hub
        self.keys = api.gate.listen_keys
        self.ex.history.subscribers.append(self.on_order_event)
        self.ex.batch_subscribers.append(self.on_batch)
        self._check_pending = False
        self._last_check = 0.0  # float-ok: time.monotonic()
        #: owner -> when it was last sent a MARGIN_CALL (monotonic seconds); gone once it is safe again
        self._called: dict[str, float] = {}

    def _streams(self, owner: str) -> list[str]:
        return [name for name in self.hub.subs if "@" not in name and self.keys.owner(name, kind="futures") == owner]

    def on_order_event(self, owner: str, kind: str, payload: Any) -> None:
        record, fill = (payload, None) if kind == "order" else payload
        if record.symbol not in self.ex.futures.perps:
            return
        streams = self._streams(owner)
        if not streams:
            return
        m = self.ex.market(record.symbol)
        qd, bd = m.quote_decimals, m.base_decimals
        executed = record.executed
        avg = record.cum_quote * 10**bd // executed if executed else 0
        pnl = self.ex.futures.fill_pnl.get((owner, fill["id"]), 0) if fill else 0
        typ = str(record.order_type.value)
        event_ms = record.update_ms
        order = {
            "s": external_symbol(record.symbol), "c": record.client_order_id or f"rf-{record.order_id}",
            "S": str(record.side.value), "o": typ, "f": str(record.tif.value),
            "q": format_amount(record.quantity, bd), "p": format_amount(record.price, qd), "ap": format_amount(avg, qd),
            "sp": "0", "x": "TRADE" if fill else _EXEC_TYPES.get(str(record.status), "NEW"), "X": str(record.status),
            "i": record.order_id, "l": format_amount(fill["qty"] if fill else 0, bd), "z": format_amount(executed, bd),
            "L": format_amount(fill["price"] if fill else 0, qd), "N": m.quote,
            "n": format_amount(fill["commission"] if fill else 0, qd), "T": event_ms, "t": fill["id"] if fill else 0,
            "b": "0", "a": "0", "m": bool(fill and fill["isMaker"]), "R": False, "wt": "CONTRACT_PRICE", "ot": typ,
            "ps": "BOTH", "cp": False, "rp": format_amount(pnl, qd), "pP": False, "si": 0, "ss": 0,
            "V": "NONE", "pm": "NONE", "gtd": 0,
        }
        payload_out = {"e": "ORDER_TRADE_UPDATE", "E": event_ms, "T": event_ms, "o": order}
        for stream in streams:
            self.hub.publish(stream, payload_out)

    def on_batch(self, first_seq: int, ts_ns: int, outputs: list[list[Any]], before: dict[str, int]) -> None:
        touched = self.ex.futures.take_touched()  # taken every batch, listened to or not
        event_ms = ts_ns // 1_000_000
        for events in outputs:  # auto-deleveraging: both sides get an ORDER_TRADE_UPDATE (derivatives/adl.py)
            for e in events:
                t = type(e)
                if t is AutoDeleveraged:
                    m = self.ex.market(e.symbol)
                    for owner, payload in adl_order_updates(e, m.base_decimals, m.quote_decimals, event_ms):
                        for stream in self._streams(owner):
                            self.hub.publish(stream, payload)
                elif t is ConditionalOrderAccepted or t is ConditionalOrderTriggered or t is ConditionalOrderEnded:
                    self._algo_update(e, event_ms)
        self._schedule_margin_check()
        for owner, reason in touched.items():
            streams = self._streams(owner)
            if not streams:
                continue
            account = self.ex.read(lambda e, o=owner, r=reason: self._account(e, o, r))
            payload = {"e": "ACCOUNT_UPDATE", "E": event_ms, "T": event_ms, "a": account}
            for stream in streams:
                self.hub.publish(stream, payload)

    def _algo_update(self, e: Any, event_ms: int) -> None:
        """Binance's ALGO_UPDATE: a conditional order was placed, fired, cancelled or expired."""
        streams = self._streams(e.owner)
        record = self.ex.futures.algos.get(e.algo_id)
        if not streams or record is None:
            return
        m = self.ex.market(e.symbol)
        v = self.api._algo_view(record, m.quote_decimals, m.base_decimals)
        if type(e) is ConditionalOrderAccepted:
            status = "NEW"  # (as it was at this event; the record may be further on)
        elif type(e) is ConditionalOrderTriggered:
            status = "TRIGGERED" if e.order_id else "FINISHED"
        else:
            status = e.status
        o = {"caid": v["clientAlgoId"], "aid": v["algoId"], "at": "CONDITIONAL", "o": v["orderType"], "s": v["symbol"],
             "S": v["side"], "ps": "BOTH", "f": v["timeInForce"], "q": v["quantity"], "X": status,
             "ai": v["actualOrderId"] if status != "NEW" else "", "ap": v["actualPrice"] or "0", "aq": v["actualQty"] or "0",
             "act": "0", "tp": v["triggerPrice"], "p": v["price"], "V": "NONE", "wt": v["workingType"], "pm": "NONE",
             "cp": v["closePosition"], "pP": False, "R": v["reduceOnly"], "tt": v["triggerTime"] if status != "NEW" else 0,
             "gtd": 0, "rm": v["rejectReason"] or ""}
        payload = {"e": "ALGO_UPDATE", "T": event_ms, "E": event_ms, "o": o}
        for stream in streams:
            self.hub.publish(stream, payload)

    def _account(self, engine: Any, owner: str, reason: str) -> dict[str, Any]:
        st = derivatives_state(engine)
        balances = []
        for asset in sorted({p.quote for p in st.perps.values()}):
            d = engine.ledger.assets.get(asset).decimals
            s = account_summary(engine, owner, asset)
            balances.append({"a": asset, "wb": format_amount(s["wallet"] + s["cross_margin"] + s["isolated_margin"], d),
                             "cw": format_amount(s["wallet"] + s["cross_margin"], d), "bc": "0"})
        positions = []
        for r in self.api._positions(engine, owner, None):
            key = (owner, r["symbol"] + SUFFIX)
            pos = st.positions.get(key)
            positions.append({"s": r["symbol"], "pa": r["positionAmt"], "ep": r["entryPrice"], "bep": r["breakEvenPrice"],
                              "cr": format_amount(pos.realized if pos is not None else 0, engine.ledger.assets.get(st.perps[key[1]].quote).decimals),
                              "up": r["unRealizedProfit"], "mt": r["marginType"], "iw": r["isolatedWallet"], "ps": "BOTH"})
        return {"m": reason, "B": balances, "P": positions}

    # ------------------------------------------------------------------ MARGIN_CALL

    def _schedule_margin_check(self) -> None:
        """One check at most every MARGIN_CHECK_S, the last one after the burst (a trailing edge), so
        the state after any batch is checked within that time; nothing to do without listeners."""
        if self._check_pending or self.ex.loop is None:
            return
        self._check_pending = True
        wait = max(0.0, self._last_check + MARGIN_CHECK_S - time.monotonic())  # float-ok: seconds
        self.ex.loop.call_later(wait, self._margin_calls)

    def _margin_calls(self) -> None:
        self._check_pending = False
        self._last_check = time.monotonic()
        owners = sorted({o for name in self.hub.subs if "@" not in name
                         for o in [self.keys.owner(name, kind="futures")] if o is not None})
        if not owners:
            self._called.clear()
            return
        now_ns, calls = self.ex.read(lambda engine: (engine.now_ns, {o: self._margin_call(engine, o) for o in owners}))
        now = time.monotonic()
        for owner, call in calls.items():
            if call is None:
                self._called.pop(owner, None)
                continue
            last = self._called.get(owner)
            if last is not None and now - last < MARGIN_CALL_REPEAT_S:
                continue
            self._called[owner] = now
            payload = {"e": "MARGIN_CALL", "E": now_ns // 1_000_000} | call
            for stream in self._streams(owner):
                self.hub.publish(stream, payload)

    def _margin_call(self, engine: Any, owner: str) -> dict[str, Any] | None:
        """MARGIN_CALL's body (`cw`, `p`) for `owner`, or None when nothing is at the call ratio."""
        st = derivatives_state(engine)
        rows = {r["symbol"]: r for r in self.api._positions(engine, owner, None)}
        at_risk: list[dict[str, Any]] = []
        cw = "0"
        for asset in sorted({p.quote for p in st.perps.values()}):
            d = engine.ledger.assets.get(asset).decimals
            s = account_summary(engine, owner, asset)
            cross = [sym for sym, p in sorted(st.perps.items()) if p.quote == asset and (owner, sym) in st.positions
                     and (owner, sym) not in st.isolated]
            if cross and (s["cross_equity"] <= 0 or s["cross_maint"] * 1_000_000 >= MARGIN_CALL_RATIO_PPM * s["cross_equity"]):
                at_risk += [rows[external_symbol(sym)] for sym in cross]
                cw = format_amount(s["wallet"] + s["cross_margin"], d)
        for key in sorted(k for k in st.isolated if k[0] == owner and k in st.positions):
            p, pos = st.perps[key[1]], st.positions[key]
            mark = mark_of_perp(engine, p)
            equity = pos.margin + unrealized(pos, mark, p.scale)
            if equity <= 0 or maint_margin(p, pos, mark) * 1_000_000 >= MARGIN_CALL_RATIO_PPM * equity:
                at_risk.append(rows[external_symbol(key[1])])
        if not at_risk:
            return None
        return {"cw": cw, "p": [{"s": r["symbol"], "ps": "BOTH", "pa": r["positionAmt"],
                                 "mt": "ISOLATED" if r["marginType"] == "isolated" else "CROSSED",
                                 "iw": r["isolatedWallet"], "mp": r["markPrice"], "up": r["unRealizedProfit"],
                                 "mm": r["maintMargin"]} for r in at_risk]}

