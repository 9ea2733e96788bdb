"""The futures user data stream: Binance USDⓈ-M's ORDER_TRADE_UPDATE and ACCOUNT_UPDATE, pushed to
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
"""

from __future__ import annotations

from typing import Any

from ..money import format_amount
from .api import SUFFIX, FuturesApi, adl_order_updates, external_symbol
from .commands import AutoDeleveraged
from .state import account_summary, derivatives_state

__all__ = ["FuturesUserStream"]

_EXEC_TYPES = {"NEW": "NEW", "CANCELED": "CANCELED", "EXPIRED": "EXPIRED", "EXPIRED_IN_MATCH": "EXPIRED"}


class FuturesUserStream:
    def __init__(self, api: FuturesApi, hub: Any) -> None:
        self.api = api
        self.ex = api.ex
        self.hub = hub
        self.keys = api.gate.listen_keys
        self.ex.history.subscribers.append(self.on_order_event)
        self.ex.batch_subscribers.append(self.on_batch)

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
                if type(e) is AutoDeleveraged:
                    m = self.ex.market(e.symbol)
                    for owner, payload in adl_order_updates(e, m.base_decimals, m.quote_decimals, event_ms):
                        for stream in self._streams(owner):
                            self.hub.publish(stream, payload)
        for owner, reason in touched.items():
            streams = self._streams(owner)
            if not streams:
                continue
            account = self.ex.read(lambda e, o=owner, r=reason: self._account(e, o, r))
            payload = {"e": "ACCOUNT_UPDATE", "E": event_ms, "T": event_ms, "a": account}
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
