"""The `trading` engine component: markets, id counters, fee tiers, their snapshot and restore.

Markets bind their ledger accounts once (per-market clearing accounts, the segment's fees and
shield fund); limits on everything a client can grow (markets, open orders, book size, levels)
live here with the vocabulary of order types, time in force and self-trade modes.
"""

import re
from typing import Any, Final

from ..engine.core import Engine
from .module import MODULE
from ..errors import InvariantViolation, NotFound
from .book import Market, Order
from .vocabulary import MarketStatus, OrderType, SelfTradePrevention, Side, TimeInForce

__all__ = [
    "TradingState",
    "trading_state",
    "market_of",
    "DEFAULT_MAKER_RATE_PPM",
    "DEFAULT_TAKER_RATE_PPM",
    "MAX_PRICE",
    "MAX_QTY",
    "MAX_FEE_RATE_PPM",
    "MARKET_BINDERS",
    "market_snapshot",
    "snapshot_around_markets",
]

#: Called with `(engine, market)` for every market a snapshot restores (the derivatives module binds
#: its contract rules to its perpetuals this way; its own state is restored before trading's).
MARKET_BINDERS: list[Any] = []

#: Binance's default spot rates: 0.1 % maker and taker (in millionths).
DEFAULT_MAKER_RATE_PPM = 1000
DEFAULT_TAKER_RATE_PPM = 1000
MAX_FEE_RATE_PPM = 100_000  # 10 %: a fee can never exceed what the payer receives
MAX_FEE_TIERS = 1000
MAX_PRICE: Final = 10**30
MAX_QTY: Final = 10**30
MAX_MARKETS = 10_000
MAX_OPEN_ORDERS_CAP = 100_000
MAX_BOOK_ORDERS_CAP = 10_000_000
MAX_LEVELS_CAP = 1_000_000

_SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")
_OWNER_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
_COID_RE: Final = re.compile(r"[.A-Za-z0-9:/_\-]{1,36}")
# A command's strings -> the enum members (one dict lookup validates and converts; a plain string
# finds its member because a StrEnum member hashes and compares as its value).
_SIDES: Final[dict[str, bool]] = {Side.BUY: True, Side.SELL: False}
_LIMITISH: Final = frozenset((OrderType.LIMIT, OrderType.LIMIT_MAKER, OrderType.STOP_LIMIT))
_TYPES: dict[str, OrderType] = {t.value: t for t in OrderType}
_TIFS: dict[str, TimeInForce] = {t.value: t for t in TimeInForce}
_STPS: dict[str, SelfTradePrevention] = {s.value: s for s in SelfTradePrevention}
_PPM: Final = 1_000_000
#: Owners already seen to be well-formed (a pure cache: validation gives the same answer without it).
_VALID_OWNERS: Final[set[str]] = set()


class TradingState:
    """The trading component of the engine state: markets, id counters and fee tiers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.markets: dict[str, Market] = {}
        self.next_order_id = 1
        self.next_trade_id = 1
        self.tiers: dict[int, tuple[int, int]] = {0: (DEFAULT_MAKER_RATE_PPM, DEFAULT_TAKER_RATE_PPM)}
        self.account_tier: dict[str, int] = {}
        #: Trading decisions of the staff operator quorum so far (`staff_cmds.py`): every decision
        #: signs the current value, so one set of approvals is good for exactly one change.
        self.admin_version = 0

    def rates(self, owner: str) -> tuple[int, int]:
        """`(maker_rate_ppm, taker_rate_ppm)` of `owner`'s fee tier."""
        return self.tiers[self.account_tier.get(owner, 0)]

    def check_invariants(self) -> None:
        ledger = self.engine.ledger
        for m in self.markets.values():
            m.check_invariants()
            clear_base, clear_quote = m.clearing.base, m.clearing.quote
            for clearing in (clear_base, clear_quote):
                if clearing.credits_posted != clearing.debits_posted:
                    raise InvariantViolation(f"{clearing.name} keeps a posted balance after fills")
            held_base = held_quote = 0
            for o in m.orders.values():
                if not o.hold_id:
                    raise InvariantViolation(f"open order {o.id} holds nothing")
                p = ledger.pending_hold(o.hold_id)
                if p is None or p.status != "pending" or p.credit_id != (clear_base.id if p.asset == m.base else clear_quote.id):
                    raise InvariantViolation(f"open order {o.id} lost its hold")
                if o.level is not None:  # resting: the hold covers exactly what can still trade
                    if m.contract is not None:
                        need = m.contract.rest_need(m, o)
                    else:
                        need = o.leaves * o.price // m.base_scale if o.is_buy else o.leaves
                    if p.remaining != need:
                        raise InvariantViolation(f"order {o.id} holds {p.remaining}, needs {need}")
                if p.asset == m.base:
                    held_base += p.remaining
                else:
                    held_quote += p.remaining
            # Clearing accounts may be shared by no other market (one per market), so their pending
            # credits are exactly the holds of this market's open orders.
            if clear_base.credits_pending != held_base or clear_quote.credits_pending != held_quote:
                raise InvariantViolation(f"{m.symbol}: clearing pending != open holds")


def trading_state(engine: Engine) -> TradingState:
    state: TradingState = engine.components["trading"]
    return state


# ------------------------------------------------------------------------------ snapshot / restore

_MARKET_CONFIG = (
    "tick",
    "lot",
    "min_qty",
    "max_qty",
    "min_notional",
    "band_ppm",
    "band_timeout_ns",
    "slippage_ppm",
    "max_open_per_account",
    "max_book_orders",
    "max_levels",
)


def _snapshot(st: TradingState) -> list[Any]:
    head, tail = snapshot_around_markets(st)
    return head + [[market_snapshot(symbol, st.markets[symbol]) for symbol in sorted(st.markets)]] + tail


def market_snapshot(symbol: str, m: Market) -> list[Any]:
    """One market's entry in the snapshot (trading/digest.py keeps its encoding between digests)."""
    stops = sorted((o for o in m.orders.values() if o.level is None), key=lambda o: o.id)
    return [
        symbol,
        m.base,
        m.quote,
        m.segment,
        [getattr(m, name) for name in _MARKET_CONFIG],
        [m.status, m.auto_reduce, m.out_of_band, m.out_of_band_since_ns, m.ref_price, m.last_price],
        [o.row() for o in m.resting()],
        [o.row() for o in stops],
    ]


def snapshot_around_markets(st: TradingState) -> tuple[list[Any], list[Any]]:
    """The snapshot's entries before the list of markets, and after it."""
    head = [
        st.next_order_id,
        st.next_trade_id,
        sorted([t, mk, tk] for t, (mk, tk) in st.tiers.items()),
        sorted([o, t] for o, t in st.account_tier.items()),
    ]
    # appended only once a signed decision was taken: older snapshots (and their hashes) stay as they were
    return head, [st.admin_version] if st.admin_version else []


def _restore(engine: Engine, data: list[Any]) -> TradingState:
    st = TradingState(engine)
    next_order_id, next_trade_id, tiers, account_tier, markets = data[:5]
    st.admin_version = data[5] if len(data) > 5 else 0
    st.next_order_id, st.next_trade_id = next_order_id, next_trade_id
    st.tiers = {t: (mk, tk) for t, mk, tk in tiers}
    st.account_tier = {o: t for o, t in account_tier}
    ledger = engine.ledger
    for symbol, base, quote, segment, config, status, resting, stops in markets:
        m = Market(symbol, base, quote, segment, 10 ** ledger.assets.get(base).decimals)
        for name, value in zip(_MARKET_CONFIG, config):
            setattr(m, name, value)
        # Snapshots hold the status as its string; the market keeps the member (a compiled `Market`
        # checks the attribute's type, so convert before assigning).
        status_word, m.auto_reduce, m.out_of_band, m.out_of_band_since_ns, ref, m.last_price = status
        m.status = MarketStatus(status_word)
        m.set_reference(ref)
        _bind_accounts(ledger, m)
        for bind in MARKET_BINDERS:  # before the orders: a perpetual's orders pay and receive margin
            bind(engine, m)
        for row in resting:
            o = _order_from_row(ledger, m, row)
            m.rest(o)
            m.index(o)
        for row in stops:
            o = _order_from_row(ledger, m, row)
            m.index(o)
            m.add_stop(o)
        st.markets[symbol] = m
    return st


def _order_from_row(ledger: Any, m: Market, row: list[Any]) -> Order:
    o = Order()
    (
        o.id,
        o.owner,
        o.is_buy,
        typ,
        tif,
        o.price,
        o.qty,
        o.leaves,
        o.filled,
        o.cum_quote,
        o.quote_left,
        o.stop_price,
        o.protect,
        o.coid,
        stp,
        o.hold_id,
        o.ts_ns,
    ) = row
    # Snapshots hold the strings; the engine works with the members (converted before they are
    # assigned: a compiled `Order` checks each attribute's type).
    o.type, o.tif, o.stp = OrderType(typ), TimeInForce(tif), SelfTradePrevention(stp)
    pay_asset, recv_asset = (m.quote, m.base) if o.is_buy else (m.base, m.quote)
    if m.contract is not None:  # a perpetual's order holds and settles margin in the quote asset
        pay_asset = recv_asset = m.quote
    o.pay = ledger.get(o.owner, pay_asset, "available", m.segment)
    o.recv = ledger.get(o.owner, recv_asset, "available", m.segment)
    return o


def _bind_accounts(ledger: Any, m: Market) -> None:
    # One clearing account per market and asset (`clr_<symbol>`), plus the segment's fees and shield.
    m.clearing = ledger.open_clearing(m.symbol.lower(), m.base, m.quote, m.segment)


MODULE.declare_state(TradingState, _snapshot, _restore)



def _market(st: TradingState, symbol: str) -> Market:
    m = st.markets.get(symbol)
    if m is None:
        raise NotFound(f"unknown market {symbol!r}; list it first", field="symbol")
    return m



def market_of(engine: Engine, symbol: str) -> Market:
    """The live `Market` (read-only use: demo, tests, the API's queries)."""
    return _market(trading_state(engine), symbol)

