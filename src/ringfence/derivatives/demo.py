"""`serve --demo`: the BTCUSDT and ETHUSDT perpetuals (internally BTCUSDTPERP, ETHUSDTPERP), funded
futures wallets for alice, bob and the market maker, and a resting ladder on each. Idempotent."""

from __future__ import annotations

from typing import Any

from ..engine.node import Node
from ..money import parse_amount
from .commands import FuturesTransfer, ListPerpetual, PlacePerpOrder
from .state import derivatives_state, wallet

__all__ = ["seed_perpetuals", "DEMO_PERPS", "DEMO_FUTURES_WALLETS"]

_U = 10**6
#: Binance's BTCUSDT brackets (first four): notional cap, max leverage, maintenance rate, cum.
BTC_BRACKETS = [[50_000 * _U, 125, 4_000, 0], [600_000 * _U, 100, 5_000, 50 * _U],
                [3_000_000 * _U, 75, 6_500, 950 * _U], [12_000_000 * _U, 50, 10_000, 11_450 * _U]]
ETH_BRACKETS = [[50_000 * _U, 100, 5_000, 0], [600_000 * _U, 75, 6_500, 75 * _U],
                [3_000_000 * _U, 50, 10_000, 2_175 * _U], [12_000_000 * _U, 25, 20_000, 32_175 * _U]]
#: Binance's LIMIT LOT_SIZE maxQty of each base (exchangeInfo advertises it; orders, conditional
#: ones too, are refused above it when placed).
DEMO_MAX_QTY = {"BTC": "1000", "ETH": "10000"}
# (symbol, base, index, brackets, tick, lot, reference, ladder quantity)
DEMO_PERPS = (
    ("BTCUSDTPERP", "BTC", "BTCUSDT", BTC_BRACKETS, "0.10", "0.001", "61000.00", "0.05"),
    ("ETHUSDTPERP", "ETH", "ETHUSDT", ETH_BRACKETS, "0.01", "0.001", "3000.00", "0.5"),
)
#: Moved from each owner's spot USDT into the futures wallet once (spot funding: api/demo.py).
DEMO_FUTURES_WALLETS = (("alice", "20000"), ("bob", "20000"), ("mm", "2000000"))
MARKET_MAKER = "mm"


def seed_perpetuals(node: Node) -> dict[str, Any]:
    engine: Any = node.engine
    ledger = engine.ledger
    st = derivatives_state(engine)
    decimals = {a.code: a.decimals for a in ledger.assets}
    listed = []
    for sym, base, index, brackets, tick, lot, _, _ in DEMO_PERPS:
        if sym in st.perps:
            continue
        node.execute(ListPerpetual(sym, base, "USDT", index, brackets, tick_size=parse_amount(tick, 6),
                                   lot_size=parse_amount(lot, decimals[base]), min_qty=parse_amount(lot, decimals[base]),
                                   max_qty=parse_amount(DEMO_MAX_QTY[base], decimals[base]),
                                   min_notional=5 * _U, default_leverage=20, impact_notional=5_000 * _U,
                                   max_account_share_ppm=0, concentration_imr_ppm=0))
        listed.append(sym)
    moved = 0
    for owner, amount in DEMO_FUTURES_WALLETS:
        if wallet(ledger, owner, "USDT") is None:  # once: a restart moves nothing again
            node.execute(FuturesTransfer(owner, "USDT", parse_amount(amount, 6), "MAIN_UMFUTURE"))
            moved += 1
    markets = engine.components["trading"].markets
    placed = 0
    for sym, base, _, _, tick, lot, reference, ladder in DEMO_PERPS:
        if markets[sym].by_owner.get(MARKET_MAKER):
            continue
        ref, t, size = parse_amount(reference, 6), parse_amount(tick, 6), parse_amount(ladder, decimals[base])
        size = size // parse_amount(lot, decimals[base]) * parse_amount(lot, decimals[base])
        orders = []
        for level in range(1, 6):
            offset = (2 + 2 * (level - 1)) * t
            orders.append(PlacePerpOrder(MARKET_MAKER, sym, "BUY", price=ref - offset, quantity=size * level, client_order_id=f"mm-{sym}-b{level}"))
            orders.append(PlacePerpOrder(MARKET_MAKER, sym, "SELL", price=ref + offset, quantity=size * level, client_order_id=f"mm-{sym}-s{level}"))
        node.execute_many(orders)
        placed += len(orders)
    return {"perpetuals": listed, "futures_wallets_funded": moved, "perp_ladder_orders": placed}
