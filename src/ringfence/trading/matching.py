"""Spot matching inside the engine's `apply`: order checks, holds, price-time matching, fills, fees.

Every handler here validates first and mutates after; an order-level refusal is an
`OrderRejected` event (with a reason code from `REASONS`) and changes nothing.

Money flow of one order (all through the ledger, so conservation is checked by the ledger):

* **Hold.** Accepting an order opens a two-phase pending transfer from the owner's `available`
  account of the paying asset to the market's clearing account: `price * qty / 10**base_decimals`
  quote for a limit buy, the quote amount for a market buy by quote, `qty` base for a sell, and for
  a market buy by quantity `qty * protection_price` (the worst price it may fill at).
* **Fill** of `q` base at the maker's price `p`, notional `n = p * q / 10**base_decimals` (exact:
  `tick * lot` is a multiple of `10**base_decimals`): the buyer's hold posts `n` quote and the
  seller's hold posts `q` base into clearing; clearing pays the buyer `q - buyer_fee` base and the
  seller `n - seller_fee` quote. Fees are charged in the asset each side receives (Binance),
  `fee = ceil(amount * rate_ppm / 1_000_000)`; `floor(fee / 10)` goes to the segment's insurance
  ("shield") fund and the rest to `fees`, so the split never creates or destroys a minor unit.
  After every fill the clearing accounts' posted balances are back to zero.
* **Rest / end.** A buy that filled below its limit gives back the unused quote as it rests
  (Binance G12); cancel, expiry or completion voids whatever the hold still reserves.

Self-trade prevention (the taker's mode): `EXPIRE_TAKER` expires the incoming order's remainder,
`EXPIRE_MAKER` expires the resting order and carries on, `EXPIRE_BOTH` does both. `NONE` lets an
account trade with itself (it pays both fees).

Dual-price guard: limit prices must lie inside the band around the reference price; market orders
never fill outside it; a resting order whose price has left the band is expired when a taker
reaches it, so nothing ever prints outside the band. If the last price sits outside the band for
`band_timeout_ns` the market goes `REDUCE_ONLY` (cancels only) until the band holds again.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from typing import Any, Callable

from ..engine.commands import Event
from ..engine.core import Engine, handles, register_component
from ..errors import InvariantViolation, NotFound, ValidationError
from ..money import MAX_AMOUNT
from .book import ACTIVE, HALTED, MARKET_STATUSES, REDUCE_ONLY, Market, Order
from .commands import (
    AccountFeeTierSet,
    AmendOrder,
    CancelAll,
    CancelOrder,
    FeeTierSet,
    ListMarket,
    MarketListed,
    MarketStatusChanged,
    OrderAccepted,
    OrderAmended,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderRested,
    OrderTriggered,
    PlaceOrder,
    ReferencePriceSet,
    SetAccountFeeTier,
    SetFeeTier,
    SetMarketStatus,
    SetReferencePrice,
    Trade,
    TradingBatch,
)

__all__ = [
    "TradingState",
    "REASONS",
    "check_place",
    "trading_state",
    "DEFAULT_MAKER_RATE_PPM",
    "DEFAULT_TAKER_RATE_PPM",
    "MAX_PRICE",
    "MAX_QTY",
    "MAX_FEE_RATE_PPM",
]

#: Every reason an action can be refused with (stable: clients switch on them).
REASONS = (
    "UNKNOWN_MARKET",
    "MARKET_NOT_ACTIVE",
    "MARKET_HALTED",
    "INVALID_PARAMETER",
    "PRICE_NOT_ON_TICK",
    "QTY_NOT_ON_LOT",
    "QTY_BELOW_MIN",
    "QTY_ABOVE_MAX",
    "BELOW_MIN_NOTIONAL",
    "PRICE_OUTSIDE_BAND",
    "POST_ONLY_WOULD_TAKE",
    "STOP_WOULD_TRIGGER_IMMEDIATELY",
    "DUPLICATE_CLIENT_ORDER_ID",
    "TOO_MANY_OPEN_ORDERS",
    "BOOK_FULL",
    "INSUFFICIENT_BALANCE",
    "UNKNOWN_ORDER",
    "ORDER_NOT_AMENDABLE",
)

#: Binance's default spot rates: 0.1 % maker and taker (in millionths).
DEFAULT_MAKER_RATE_PPM = 1000
DEFAULT_TAKER_RATE_PPM = 1000
MAX_FEE_RATE_PPM = 100_000  # 10 %: a fee can never exceed what the payer receives
MAX_FEE_TIERS = 1000
MAX_PRICE = 10**30
MAX_QTY = 10**30
MAX_MARKETS = 10_000
MAX_OPEN_ORDERS_CAP = 100_000
MAX_BOOK_ORDERS_CAP = 10_000_000
MAX_LEVELS_CAP = 1_000_000

_SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")
_OWNER_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
_COID_RE = re.compile(r"[.A-Za-z0-9:/_\-]{1,36}")
_SIDES = {"BUY": True, "SELL": False}
_LIMITISH = frozenset(("LIMIT", "LIMIT_MAKER", "STOP_LIMIT"))
_TYPES = frozenset(("LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LIMIT", "STOP_MARKET"))
_TIFS = frozenset(("GTC", "IOC", "FOK"))
_STPS = frozenset(("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"))
_PPM = 1_000_000
#: Owners already seen to be well-formed (a pure cache: validation gives the same answer without it).
_VALID_OWNERS: set[str] = set()


class TradingState:
    """The trading component of the engine state: markets, id counters and fee tiers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.markets: dict[str, Market] = {}
        self.next_order_id = 1
        self.next_trade_id = 1
        self.tiers: dict[int, tuple[int, int]] = {0: (DEFAULT_MAKER_RATE_PPM, DEFAULT_TAKER_RATE_PPM)}
        self.account_tier: dict[str, int] = {}

    def rates(self, owner: str) -> tuple[int, int]:
        """`(maker_rate_ppm, taker_rate_ppm)` of `owner`'s fee tier."""
        return self.tiers[self.account_tier.get(owner, 0)]

    def check_invariants(self) -> None:
        ledger = self.engine.ledger
        for m in self.markets.values():
            m.check_invariants()
            for clearing in (m.clear_base, m.clear_quote):
                if clearing.credits_posted != clearing.debits_posted:
                    raise InvariantViolation(f"{clearing.name} keeps a posted balance after fills")
            held_base = held_quote = 0
            for o in m.orders.values():
                if not o.hold_id:
                    raise InvariantViolation(f"open order {o.id} holds nothing")
                p = ledger.pending.get(o.hold_id)
                if p is None or p.status != "pending" or p.credit is not (m.clear_base if p.debit.asset == m.base else m.clear_quote):
                    raise InvariantViolation(f"open order {o.id} lost its hold")
                if o.level is not None:  # resting: the hold covers exactly what can still trade
                    need = o.leaves * o.price // m.base_scale if o.is_buy else o.leaves
                    if p.remaining != need:
                        raise InvariantViolation(f"order {o.id} holds {p.remaining}, needs {need}")
                if p.debit.asset == m.base:
                    held_base += p.remaining
                else:
                    held_quote += p.remaining
            # Clearing accounts may be shared by no other market (one per market), so their pending
            # credits are exactly the holds of this market's open orders.
            if m.clear_base.credits_pending != held_base or m.clear_quote.credits_pending != held_quote:
                raise InvariantViolation(f"{m.symbol}: clearing pending != open holds")


def trading_state(engine: Engine) -> TradingState:
    return engine.components["trading"]  # type: ignore[no-any-return]


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
    markets = []
    for symbol in sorted(st.markets):
        m = st.markets[symbol]
        stops = sorted((o for o in m.orders.values() if o.level is None), key=lambda o: o.id)
        markets.append(
            [
                symbol,
                m.base,
                m.quote,
                m.segment,
                [getattr(m, name) for name in _MARKET_CONFIG],
                [m.status, m.auto_reduce, m.out_of_band, m.out_of_band_since_ns, m.ref_price, m.last_price],
                [o.row() for o in m.resting()],
                [o.row() for o in stops],
            ]
        )
    return [
        st.next_order_id,
        st.next_trade_id,
        sorted([t, mk, tk] for t, (mk, tk) in st.tiers.items()),
        sorted([o, t] for o, t in st.account_tier.items()),
        markets,
    ]


def _restore(engine: Engine, data: list[Any]) -> TradingState:
    st = TradingState(engine)
    next_order_id, next_trade_id, tiers, account_tier, markets = data
    st.next_order_id, st.next_trade_id = next_order_id, next_trade_id
    st.tiers = {t: (mk, tk) for t, mk, tk in tiers}
    st.account_tier = {o: t for o, t in account_tier}
    ledger = engine.ledger
    for symbol, base, quote, segment, config, status, resting, stops in markets:
        m = Market(symbol, base, quote, segment, 10 ** ledger.assets.get(base).decimals)
        for name, value in zip(_MARKET_CONFIG, config):
            setattr(m, name, value)
        m.status, m.auto_reduce, m.out_of_band, m.out_of_band_since_ns, ref, m.last_price = status
        m.set_reference(ref)
        _bind_accounts(ledger, m)
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
        o.type,
        o.tif,
        o.price,
        o.qty,
        o.leaves,
        o.filled,
        o.cum_quote,
        o.quote_left,
        o.stop_price,
        o.protect,
        o.coid,
        o.stp,
        o.hold_id,
        o.ts_ns,
    ) = row
    pay_asset, recv_asset = (m.quote, m.base) if o.is_buy else (m.base, m.quote)
    o.pay = ledger.get(o.owner, pay_asset, "available", m.segment)
    o.recv = ledger.get(o.owner, recv_asset, "available", m.segment)
    return o


def _bind_accounts(ledger: Any, m: Market) -> None:
    kind = "clr_" + m.symbol.lower()  # one clearing account per market and asset
    m.clear_base = ledger._open_system(m.base, kind, m.segment)
    m.clear_quote = ledger._open_system(m.quote, kind, m.segment)
    m.fees_base = ledger.fees(m.base, m.segment)
    m.fees_quote = ledger.fees(m.quote, m.segment)
    m.ins_base = ledger.insurance(m.base, m.segment)
    m.ins_quote = ledger.insurance(m.quote, m.segment)


register_component("trading", TradingState, _snapshot, _restore)


# ------------------------------------------------------------------------------ admin commands


def _market(st: TradingState, symbol: str) -> Market:
    m = st.markets.get(symbol)
    if m is None:
        raise NotFound(f"unknown market {symbol!r}; list it first", field="symbol")
    return m


def _check_int(value: object, field: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValidationError(f"{field} must be an integer between {lo} and {hi}", field=field)
    return value


# Prechecks run at the edge against the state *before* the batch; a command earlier in the same
# batch (RegisterAsset before ListMarket) is not applied yet. So prechecks check only the command
# itself; whatever depends on state is checked again, authoritatively, by the handler.


def _precheck_list_market(engine: Engine, c: ListMarket) -> None:
    if not isinstance(c.symbol, str) or not _SYMBOL_RE.fullmatch(c.symbol):
        raise ValidationError("symbol must be 2-20 characters of A-Z and 0-9 (e.g. BTCUSDT)", field="symbol")
    if c.base == c.quote:
        raise ValidationError("base and quote must be different assets", field="quote")
    _check_int(c.tick_size, "tick_size", 1, MAX_PRICE)
    _check_int(c.lot_size, "lot_size", 1, MAX_QTY)
    _check_int(c.min_qty, "min_qty", 1, MAX_QTY)
    if c.min_qty % c.lot_size:
        raise ValidationError("min_qty must be a multiple of lot_size", field="min_qty")
    _check_int(c.max_qty, "max_qty", c.min_qty, MAX_QTY)
    _check_int(c.min_notional, "min_notional", 0, MAX_PRICE)
    _check_int(c.band_ppm, "band_ppm", 0, 900_000)
    _check_int(c.band_timeout_ns, "band_timeout_ns", 0, 30 * 24 * 3600 * 10**9)
    _check_int(c.market_slippage_ppm, "market_slippage_ppm", 1, 900_000)
    _check_int(c.max_open_orders_per_account, "max_open_orders_per_account", 1, MAX_OPEN_ORDERS_CAP)
    _check_int(c.max_book_orders, "max_book_orders", 1, MAX_BOOK_ORDERS_CAP)
    _check_int(c.max_price_levels, "max_price_levels", 1, MAX_LEVELS_CAP)


def _validate_list_market(engine: Engine, c: ListMarket) -> None:
    _precheck_list_market(engine, c)
    ledger = engine.ledger
    base = ledger.assets.get(c.base, "base")
    ledger.assets.get(c.quote, "quote")
    if c.segment not in ledger.segments:
        raise ValidationError(f"unknown segment {c.segment!r}; known: {', '.join(ledger.segments)}", field="segment")
    if (c.tick_size * c.lot_size) % 10**base.decimals:
        raise ValidationError(
            f"tick_size * lot_size must be a multiple of 10**{base.decimals} (the base asset's scale) so that "
            "every notional is a whole number of quote minor units",
            field="lot_size",
        )
    st = trading_state(engine)
    if c.symbol in st.markets:
        raise ValidationError(f"market {c.symbol} is already listed", field="symbol")
    if len(st.markets) >= MAX_MARKETS:
        raise ValidationError(f"at most {MAX_MARKETS} markets per shard", field="symbol")


@handles(ListMarket, precheck=_precheck_list_market)
def _list_market(engine: Engine, c: ListMarket) -> list[Event]:
    _validate_list_market(engine, c)
    st = trading_state(engine)
    ledger = engine.ledger
    m = Market(c.symbol, c.base, c.quote, c.segment, 10 ** ledger.assets.get(c.base).decimals)
    m.tick, m.lot, m.min_qty, m.max_qty = c.tick_size, c.lot_size, c.min_qty, c.max_qty
    m.min_notional, m.band_ppm, m.band_timeout_ns = c.min_notional, c.band_ppm, c.band_timeout_ns
    m.slippage_ppm = c.market_slippage_ppm
    m.max_open_per_account = c.max_open_orders_per_account
    m.max_book_orders, m.max_levels = c.max_book_orders, c.max_price_levels
    _bind_accounts(ledger, m)
    st.markets[c.symbol] = m
    return [
        MarketListed(c.symbol, c.base, c.quote, c.segment, c.tick_size, c.lot_size, c.min_qty, c.min_notional, c.band_ppm, True)
    ]


def _precheck_status(engine: Engine, c: SetMarketStatus) -> None:
    if c.status not in MARKET_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(MARKET_STATUSES)}", field="status")


@handles(SetMarketStatus, precheck=_precheck_status)
def _set_status(engine: Engine, c: SetMarketStatus) -> list[Event]:
    _precheck_status(engine, c)
    m = _market(trading_state(engine), c.symbol)
    m.status = c.status
    m.auto_reduce = False  # an operator's decision is not lifted by the band timer
    return [MarketStatusChanged(m.symbol, m.status, "OPERATOR")]


def _precheck_refprice(engine: Engine, c: SetReferencePrice) -> None:
    _check_int(c.price, "price", 1, MAX_PRICE)


@handles(SetReferencePrice, precheck=_precheck_refprice)
def _set_refprice(engine: Engine, c: SetReferencePrice) -> list[Event]:
    _precheck_refprice(engine, c)
    m = _market(trading_state(engine), c.symbol)
    m.set_reference(c.price)
    ev: list[Event] = [ReferencePriceSet(m.symbol, c.price)]
    _band_watch(m, engine.now_ns, ev)
    return ev


def _precheck_fee_tier(engine: Engine, c: SetFeeTier) -> None:
    _check_int(c.tier, "tier", 0, MAX_FEE_TIERS - 1)
    _check_int(c.maker_rate_ppm, "maker_rate_ppm", 0, MAX_FEE_RATE_PPM)
    _check_int(c.taker_rate_ppm, "taker_rate_ppm", 0, MAX_FEE_RATE_PPM)


@handles(SetFeeTier, precheck=_precheck_fee_tier)
def _set_fee_tier(engine: Engine, c: SetFeeTier) -> list[Event]:
    _precheck_fee_tier(engine, c)
    trading_state(engine).tiers[c.tier] = (c.maker_rate_ppm, c.taker_rate_ppm)
    return [FeeTierSet(c.tier, c.maker_rate_ppm, c.taker_rate_ppm)]


def _precheck_account_tier(engine: Engine, c: SetAccountFeeTier) -> None:
    if not isinstance(c.owner, str) or not _OWNER_RE.fullmatch(c.owner):
        raise ValidationError("owner must be 1-64 characters of a-z, 0-9, '_', '.', '-'", field="owner")
    _check_int(c.tier, "tier", 0, MAX_FEE_TIERS - 1)


def _validate_account_tier(engine: Engine, c: SetAccountFeeTier) -> None:
    _precheck_account_tier(engine, c)
    if c.tier not in trading_state(engine).tiers:
        raise ValidationError(f"fee tier {c.tier} is not defined; define it with SetFeeTier", field="tier")


@handles(SetAccountFeeTier, precheck=_precheck_account_tier)
def _set_account_tier(engine: Engine, c: SetAccountFeeTier) -> list[Event]:
    _validate_account_tier(engine, c)
    st = trading_state(engine)
    if c.tier == 0:
        st.account_tier.pop(c.owner, None)
    else:
        st.account_tier[c.owner] = c.tier
    return [AccountFeeTierSet(c.owner, c.tier)]


# ------------------------------------------------------------------------------ band watch


def _band_watch(m: Market, now_ns: int, ev: list[Event]) -> None:
    """Move the market to REDUCE_ONLY if the last price sat outside the band too long (and back)."""
    last = m.last_price
    if last and m.band_hi and not m.band_lo <= last <= m.band_hi:
        if not m.out_of_band:
            m.out_of_band = True
            m.out_of_band_since_ns = now_ns
        if m.status == ACTIVE and now_ns - m.out_of_band_since_ns >= m.band_timeout_ns:
            m.status = REDUCE_ONLY
            m.auto_reduce = True
            ev.append(MarketStatusChanged(m.symbol, REDUCE_ONLY, "BAND_TIMEOUT"))
    elif m.out_of_band:
        m.out_of_band = False
        m.out_of_band_since_ns = 0
        if m.auto_reduce and m.status == REDUCE_ONLY:
            m.status = ACTIVE
            m.auto_reduce = False
            ev.append(MarketStatusChanged(m.symbol, ACTIVE, "BAND_RESTORED"))


# ------------------------------------------------------------------------------ order helpers


def _reject(
    ev: list[Event], action: str, c: Any, reason: str, field: str, message: str, order_id: int = 0
) -> None:
    ev.append(
        OrderRejected(
            action,
            c.symbol if isinstance(c.symbol, str) else "",
            c.owner if isinstance(c.owner, str) else "",
            order_id,
            getattr(c, "client_order_id", "") or "",
            reason,
            field,
            message,
        )
    )


def _end_hold(ledger: Any, hold_id: int) -> int:
    """Void what a finished order still holds and forget the finished hold; returns the amount.

    Finished engine-made holds are dropped from the ledger's pending table: they are no longer
    needed for idempotency (no client can name them), and keeping one per order ever placed would
    grow the state (and every snapshot) without bound.
    """
    released = ledger.release(hold_id)
    p = ledger.pending.pop(hold_id)
    if p.status not in ("posted", "voided") or p.remaining:
        raise InvariantViolation(f"hold {hold_id} ended as {p.status} with {p.remaining} left")
    return released


def _close(ledger: Any, m: Market, o: Order, ev: list[Event], cls: type, reason: str, was_resting: bool) -> None:
    released = _end_hold(ledger, o.hold_id)
    leaves = o.leaves if o.qty else 0  # orders by quote amount report no base remainder
    ev.append(cls(m.symbol, o.id, o.owner, "BUY" if o.is_buy else "SELL", o.price, leaves, was_resting, reason, released))


def _qty_problem(m: Market, qty: int) -> tuple[str, str] | None:
    """The LOT_SIZE filter: `(reason, message)` if `qty` breaks it, else None."""
    if qty % m.lot:
        return "QTY_NOT_ON_LOT", f"quantity must be a multiple of the lot size {m.lot}"
    if qty < m.min_qty:
        return "QTY_BELOW_MIN", f"quantity must be at least {m.min_qty}"
    if qty > m.max_qty:
        return "QTY_ABOVE_MAX", f"quantity must be at most {m.max_qty}"
    return None


def _take_out(m: Market, o: Order) -> bool:
    """Remove an open order from the book (or the stop list) and the indexes; True if it was resting."""
    resting = o.level is not None
    if resting:
        m.unlink(o)
    else:
        m.remove_stop(o)
    m.unindex(o)
    return resting


# ------------------------------------------------------------------------------ matching


def _fill(st: TradingState, ledger: Any, m: Market, t: Order, mk: Order, p: int, q: int, ev: list[Event]) -> None:
    """Settle one fill of `q` base at `p` between taker `t` and maker `mk` (see module docstring)."""
    n = p * q // m.base_scale
    tiers, account_tier = st.tiers, st.account_tier
    t_rate = tiers[account_tier.get(t.owner, 0)][1]
    m_rate = tiers[account_tier.get(mk.owner, 0)][0]
    if t.is_buy:
        buyer, seller, b_rate, s_rate = t, mk, t_rate, m_rate
    else:
        buyer, seller, b_rate, s_rate = mk, t, m_rate, t_rate
    b_fee = -(-q * b_rate // _PPM)  # ceil: fees round up to the minor unit
    s_fee = -(-n * s_rate // _PPM)
    b_shield = b_fee // 10  # the shield fund's share rounds down; fees get the rest
    s_shield = s_fee // 10
    # Post the two holds into clearing (Ledger.capture) and pay out of clearing (Ledger.move),
    # inlined on the hot path: the counter changes are exactly those of the ledger operations.
    # Their checks cannot fail here: a resting or in-flight order's hold covers every fill (checked
    # in TradingState.check_invariants), clearing accounts carry no balance flags, and no credit
    # can exceed MAX_AMOUNT without clearing's debits doing so first (checked below).
    pending = ledger.pending
    hb = pending[buyer.hold_id]
    hs = pending[seller.hold_id]
    if hb.status != "pending" or hs.status != "pending" or hb.remaining < n or hs.remaining < q:
        raise InvariantViolation(f"fill of {q} at {p}: a hold is short ({hb.remaining} quote, {hs.remaining} base)")
    cb, cq = m.clear_base, m.clear_quote
    bpay, spay = hb.debit, hs.debit
    bpay.debits_pending -= n
    bpay.debits_posted += n
    cq.credits_pending -= n
    cq.credits_posted += n
    hb.remaining -= n
    if not hb.remaining:
        hb.status = "posted"
    spay.debits_pending -= q
    spay.debits_posted += q
    cb.credits_pending -= q
    cb.credits_posted += q
    hs.remaining -= q
    if not hs.remaining:
        hs.status = "posted"
    cb.debits_posted += q
    buyer.recv.credits_posted += q - b_fee
    m.fees_base.credits_posted += b_fee - b_shield
    m.ins_base.credits_posted += b_shield
    cq.debits_posted += n
    seller.recv.credits_posted += n - s_fee
    m.fees_quote.credits_posted += s_fee - s_shield
    m.ins_quote.credits_posted += s_shield
    if cb.debits_posted > MAX_AMOUNT or cq.debits_posted > MAX_AMOUNT:
        raise InvariantViolation(f"{m.symbol}: clearing counters overflow 128 bits")
    t.leaves -= q
    t.filled += q
    t.cum_quote += n
    qmode = not t.qty
    if qmode:
        t.quote_left -= n
    mk.leaves -= q
    mk.filled += q
    mk.cum_quote += n
    mk.level.total -= q  # type: ignore[union-attr]
    m.last_price = p
    tid = st.next_trade_id
    st.next_trade_id = tid + 1
    if t.is_buy:
        t_fee, m_fee = b_fee, s_fee
    else:
        t_fee, m_fee = s_fee, b_fee
    ev.append(
        Trade(
            m.symbol,
            tid,
            p,
            q,
            n,
            "BUY" if t.is_buy else "SELL",
            t.id,
            mk.id,
            t.owner,
            mk.owner,
            t_fee,
            m_fee,
            t.quote_left if qmode else t.leaves,
            mk.leaves,
        )
    )


def _match(st: TradingState, ledger: Any, m: Market, t: Order, limit: int, ev: list[Event]) -> str:
    """Match taker `t` against the book up to `limit`. Returns why it stopped early ('' if not)."""
    is_buy = t.is_buy
    if is_buy:
        book, prices = m.asks, m.ask_prices
    else:
        book, prices = m.bids, m.bid_prices
    lo, hi = m.band_lo, m.band_hi
    stp = t.stp
    stp_on = stp != "NONE"
    owner = t.owner
    qmode = not t.qty  # an order by quote amount
    scale, lot = m.base_scale, m.lot
    while prices:
        p = prices[0] if is_buy else prices[-1]
        if (p > limit) if is_buy else (p < limit):
            return ""
        level = book[p]
        mk = level.head
        if hi and not lo <= p <= hi:
            # A resting price the band has left behind would print outside the band: expire it.
            while mk is not None:
                nxt = mk.next
                _take_out(m, mk)
                _close(ledger, m, mk, ev, OrderExpired, "PRICE_OUTSIDE_BAND", True)
                mk = nxt
            continue
        while mk is not None:
            if stp_on and mk.owner == owner:
                if stp == "EXPIRE_TAKER":
                    return "SELF_TRADE_PREVENTED"
                nxt = mk.next
                _take_out(m, mk)
                _close(ledger, m, mk, ev, OrderExpired, "SELF_TRADE_PREVENTED", True)
                if stp == "EXPIRE_BOTH":
                    return "SELF_TRADE_PREVENTED"
                mk = nxt
                continue
            q = mk.leaves
            if qmode:
                cap = t.quote_left * scale // p // lot * lot
                if not is_buy and cap > t.leaves:
                    cap = t.leaves
                if cap == 0:
                    return "QUOTE_SPENT"
                if q > cap:
                    q = cap
            elif q > t.leaves:
                q = t.leaves
            _fill(st, ledger, m, t, mk, p, q, ev)
            if mk.leaves == 0:
                nxt = mk.next
                m.unlink(mk)
                m.unindex(mk)
                _end_hold(ledger, mk.hold_id)
                mk = nxt
            if t.leaves == 0:
                return ""
    return ""


def _fok_fillable(m: Market, t: Order, limit: int) -> bool:
    """Could `t` fill completely right now (honouring the band and its self-trade mode)?"""
    need = t.leaves
    have = 0
    is_buy = t.is_buy
    if is_buy:
        book, it = m.asks, iter(m.ask_prices)
    else:
        book, it = m.bids, reversed(m.bid_prices)
    lo, hi = m.band_lo, m.band_hi
    per_order = t.stp != "NONE" and t.owner in m.by_owner
    for p in it:
        if (p > limit) if is_buy else (p < limit):
            break
        if hi and not lo <= p <= hi:
            continue
        level = book[p]
        if not per_order:
            have += level.total
        else:
            o = level.head
            while o is not None:
                if o.owner == t.owner:
                    if t.stp != "EXPIRE_MAKER":
                        return have >= need
                else:
                    have += o.leaves
                    if have >= need:
                        return True
                o = o.next
        if have >= need:
            return True
    return have >= need


def _execute(st: TradingState, ledger: Any, m: Market, o: Order, ev: list[Event]) -> None:
    """Run an accepted (or triggered, or re-priced) order as a taker, then rest or end it."""
    limit = o.price if o.type in _LIMITISH else o.protect
    if o.tif == "FOK" and not _fok_fillable(m, o, limit):
        _close(ledger, m, o, ev, OrderExpired, "FOK_NOT_FILLABLE", False)
        return
    stopped = _match(st, ledger, m, o, limit, ev) if limit else "NO_LIQUIDITY"
    if stopped == "SELF_TRADE_PREVENTED":
        _close(ledger, m, o, ev, OrderExpired, stopped, False)
    elif not o.qty:
        # By quote amount: FILLED once the rest cannot buy (or sell for) one more lot. The last
        # Trade's `taker_leaves` is the quote left, so say so explicitly: followers (the open-orders
        # read model above all) learn here that the order is finished and what was given back.
        if o.filled and (stopped == "QUOTE_SPENT" or o.quote_left == 0 or o.leaves == 0):
            released = _end_hold(ledger, o.hold_id)
            ev.append(OrderFilled(m.symbol, o.id, o.owner, "BUY" if o.is_buy else "SELL", o.quote_left, released))
        else:
            # nothing filled: the quote could not buy one lot, or the book/protection price stopped it
            _close(ledger, m, o, ev, OrderExpired, "NOT_FULLY_FILLED", False)
    elif o.leaves == 0:
        _end_hold(ledger, o.hold_id)  # FILLED: give back what a buy below its limit did not spend
    elif o.tif == "GTC" and o.type in _LIMITISH:
        if o.is_buy:
            hold = ledger.pending[o.hold_id]
            excess = hold.remaining - o.leaves * o.price // m.base_scale
            if excess:
                _resize_hold(hold, -excess)
        m.rest(o)
        m.index(o)
        ev.append(OrderRested(m.symbol, o.id, o.owner, "BUY" if o.is_buy else "SELL", o.price, o.leaves))
    else:
        _close(ledger, m, o, ev, OrderExpired, "NOT_FULLY_FILLED", False)


def _trigger_stops(st: TradingState, ledger: Any, m: Market, ev: list[Event]) -> None:
    """Fire every stop order the last price has crossed, oldest first, until none is left to fire."""
    while m.stops_buy or m.stops_sell:
        last = m.last_price
        fired: list[int] = []
        sb = m.stops_buy
        if sb and sb[0][0] <= last:
            i = bisect_right(sb, (last, 1 << 62))
            fired.extend(oid for _, oid in sb[:i])
            del sb[:i]
        ss = m.stops_sell
        if ss and ss[-1][0] >= last:
            j = bisect_left(ss, (last, 0))
            fired.extend(oid for _, oid in ss[j:])
            del ss[j:]
        if not fired:
            return
        fired.sort()
        for oid in fired:
            o = m.orders[oid]
            m.unindex(o)
            ev.append(OrderTriggered(m.symbol, oid, last))
            if o.type == "STOP_LIMIT":
                if not m.in_band(o.price):
                    _close(ledger, m, o, ev, OrderExpired, "PRICE_OUTSIDE_BAND", False)
                    continue
            elif m.band_hi:  # STOP_MARKET: never fill outside the band that holds now
                o.protect = min(o.protect, m.band_hi // m.tick * m.tick) if o.is_buy else max(o.protect, -(-m.band_lo // m.tick) * m.tick)
            _execute(st, ledger, m, o, ev)


# ------------------------------------------------------------------------------ place


def _place(engine: Engine, st: TradingState, c: PlaceOrder, ev: list[Event], dry_run: bool = False) -> None:
    """Check a new order against every market rule and the owner's balance, then place it.

    With `dry_run` (`check_place`, for the API's `order/test`) it stops where placing would start
    mutating, and it does not run the band timer (which may change the market's status).
    """
    m = st.markets.get(c.symbol)
    if m is None:
        return _reject(ev, "PLACE", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}")
    is_buy = _SIDES.get(c.side)
    if is_buy is None:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "side", "side must be BUY or SELL")
    typ, tif, stp, owner, coid = c.order_type, c.tif, c.stp, c.owner, c.client_order_id
    if typ not in _TYPES:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "order_type", f"type must be one of {', '.join(sorted(_TYPES))}")
    if tif not in _TIFS:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "tif", "tif must be GTC, IOC or FOK")
    if stp not in _STPS:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "stp", f"stp must be one of {', '.join(sorted(_STPS))}")
    if owner not in _VALID_OWNERS:
        if not _OWNER_RE.fullmatch(owner):
            return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "owner", "owner must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
        if len(_VALID_OWNERS) >= 1_000_000:
            _VALID_OWNERS.clear()
        _VALID_OWNERS.add(owner)
    if coid and not _COID_RE.fullmatch(coid):
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "client_order_id", "client_order_id must match ^[.A-Za-z0-9:/_-]{1,36}$")
    price, qty, qamt, stop = c.price, c.quantity, c.quote_amount, c.stop_price
    if not (0 <= price <= MAX_PRICE and 0 <= stop <= MAX_PRICE and 0 <= qty <= MAX_QTY and 0 <= qamt <= MAX_QTY):
        for value, name, hi in ((price, "price", MAX_PRICE), (stop, "stop_price", MAX_PRICE), (qty, "quantity", MAX_QTY), (qamt, "quote_amount", MAX_QTY)):
            if not 0 <= value <= hi:
                return _reject(ev, "PLACE", c, "INVALID_PARAMETER", name, f"{name} must be between 0 and {hi}")
    limitish = typ in _LIMITISH
    if limitish:
        if not price or not qty or qamt:
            return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "price" if not price else "quantity", f"{typ} needs price and quantity (and no quote_amount)")
    elif typ == "MARKET":
        if (qty > 0) == (qamt > 0):
            return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "quantity", "MARKET needs exactly one of quantity and quote_amount")
    elif not qty or qamt or price:  # STOP_MARKET
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "quantity", "STOP_MARKET needs quantity and stop_price only")
    is_stop = typ == "STOP_LIMIT" or typ == "STOP_MARKET"
    if is_stop != (stop > 0):
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "stop_price", "stop_price is required for stop orders and only for them")
    if typ == "LIMIT_MAKER" and tif != "GTC":
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "tif", "LIMIT_MAKER is always GTC")
    if not limitish and tif == "FOK":
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "tif", "market orders are IOC; FOK needs a limit price")
    if (m.band_hi or m.out_of_band) and not dry_run:
        _band_watch(m, engine.now_ns, ev)
    if m.status != ACTIVE:
        return _reject(ev, "PLACE", c, "MARKET_NOT_ACTIVE", "symbol", f"{m.symbol} is {m.status}; only cancels are accepted")
    tick, scale = m.tick, m.base_scale
    if price % tick:
        return _reject(ev, "PLACE", c, "PRICE_NOT_ON_TICK", "price", f"price must be a multiple of the tick size {tick}")
    if stop % tick:
        return _reject(ev, "PLACE", c, "PRICE_NOT_ON_TICK", "stop_price", f"stop_price must be a multiple of the tick size {tick}")
    if qty:
        problem = _qty_problem(m, qty)
        if problem is not None:
            return _reject(ev, "PLACE", c, problem[0], "quantity", problem[1])
    if limitish and m.band_hi and not m.band_lo <= price <= m.band_hi:
        return _reject(ev, "PLACE", c, "PRICE_OUTSIDE_BAND", "price", f"price must lie within {m.band_lo}..{m.band_hi} (the band around the reference price)")
    # A stop price gets the limit price's checks: a trigger the band could never reach is refused
    # now rather than resting for ever (and holding funds against an absurd price).
    if is_stop and m.band_hi and not m.band_lo <= stop <= m.band_hi:
        return _reject(ev, "PLACE", c, "PRICE_OUTSIDE_BAND", "stop_price", f"stop_price must lie within {m.band_lo}..{m.band_hi} (the band around the reference price)")
    if m.min_notional:
        if limitish:
            notional = price * qty // scale
        elif qamt:
            notional = qamt
        elif typ == "STOP_MARKET":
            notional = stop * qty // scale
        else:
            ref = m.ref_price or m.last_price
            notional = ref * qty // scale if ref else m.min_notional
        if notional < m.min_notional:
            return _reject(ev, "PLACE", c, "BELOW_MIN_NOTIONAL", "quantity", f"price * quantity must be at least {m.min_notional}")
    last = m.last_price
    if is_stop and last and ((is_buy and last >= stop) or (not is_buy and last <= stop)):
        return _reject(ev, "PLACE", c, "STOP_WOULD_TRIGGER_IMMEDIATELY", "stop_price", f"the last price {last} has already reached stop_price")
    if typ == "LIMIT_MAKER" and m.crosses(is_buy, price):
        return _reject(ev, "PLACE", c, "POST_ONLY_WOULD_TAKE", "price", "a post-only order must not take liquidity")
    if coid and (owner, coid) in m.coids:
        return _reject(ev, "PLACE", c, "DUPLICATE_CLIENT_ORDER_ID", "client_order_id", "an open order of this account already uses this client_order_id")
    can_rest = (limitish and tif == "GTC") or is_stop
    if can_rest:
        owned = m.by_owner.get(owner)
        if owned is not None and len(owned) >= m.max_open_per_account:
            return _reject(ev, "PLACE", c, "TOO_MANY_OPEN_ORDERS", "symbol", f"at most {m.max_open_per_account} open orders per account in {m.symbol}")
        if limitish and not is_stop:
            if m.book_orders >= m.max_book_orders or m.level_limit_reached(is_buy, price):
                return _reject(ev, "PLACE", c, "BOOK_FULL", "price", f"the {m.symbol} book is at its size limit")
    # The protection price of market orders, and what to hold.
    protect = 0
    if typ == "MARKET":
        if price:
            protect = price
        else:
            best = (m.ask_prices[0] if m.ask_prices else 0) if is_buy else (m.bid_prices[-1] if m.bid_prices else 0)
            if best:
                if is_buy:
                    protect = best * (_PPM + m.slippage_ppm) // _PPM // tick * tick
                else:
                    protect = -(-best * (_PPM - m.slippage_ppm) // _PPM // tick) * tick
        if protect and m.band_hi:
            protect = min(protect, m.band_hi // tick * tick) if is_buy else max(protect, -(-m.band_lo // tick) * tick)
    elif typ == "STOP_MARKET":
        protect = stop * (_PPM + m.slippage_ppm) // _PPM // tick * tick if is_buy else -(-stop * (_PPM - m.slippage_ppm) // _PPM // tick) * tick
    if is_buy:
        hold = qamt if qamt else (price if limitish else protect) * qty // scale
    elif qamt:
        # Enough base to raise `quote_amount` even at the protection price, rounded up to a lot.
        base_needed = -(-qamt * scale // protect) if protect else 0
        hold = -(-base_needed // m.lot) * m.lot
    else:
        hold = qty
    if typ == "MARKET" and not protect:
        hold = 0  # an empty opposite side: accepted and expired at once, nothing held
    ledger = engine.ledger
    segment = m.segment
    pay_asset, recv_asset = (m.quote, m.base) if is_buy else (m.base, m.quote)
    find = ledger.find
    pay = find(owner, pay_asset, "available", segment)
    if hold:
        if pay is None or not ledger.can_reserve(pay, hold):
            return _reject(ev, "PLACE", c, "INSUFFICIENT_BALANCE", "quantity", "Account has insufficient balance for requested action.")
    if dry_run:
        return
    # ---- every check passed: mutate from here on ----
    recv = find(owner, recv_asset, "available", segment)
    if recv is None:
        recv = ledger.open_account(owner, recv_asset, "available", segment)[0]
    if pay is None:
        pay = ledger.open_account(owner, pay_asset, "available", segment)[0]
    o = Order()
    oid = st.next_order_id
    st.next_order_id = oid + 1
    o.id = oid
    o.owner = owner
    o.is_buy = is_buy
    o.type = typ
    o.tif = "IOC" if not limitish else tif
    o.price = price if limitish else 0
    o.qty = qty
    # By quote amount the base quantity is open-ended: a sell may deliver at most what it holds;
    # a buy is bounded by its quote (the match loop stops when the quote cannot buy one more lot).
    o.leaves = qty if qty else (hold if not is_buy else MAX_QTY)
    o.filled = 0
    o.cum_quote = 0
    o.quote_left = qamt
    o.stop_price = stop
    o.protect = protect
    o.coid = coid
    o.stp = stp
    o.pay = pay
    o.recv = recv
    o.ts_ns = engine.now_ns
    o.hold_id = ledger.reserve(pay, m.clear_quote if is_buy else m.clear_base, hold) if hold else 0
    ev.append(OrderAccepted(m.symbol, oid, owner, coid, c.side, typ, o.tif, price, qty, qamt, stop, stp, hold))
    if not hold:  # a market order that met an empty book: nothing was held, nothing can fill
        ev.append(OrderExpired(m.symbol, oid, owner, c.side, 0, qty, False, "NO_LIQUIDITY", 0))
        return
    if is_stop:
        m.index(o)
        m.add_stop(o)
        return
    before = st.next_trade_id
    _execute(st, ledger, m, o, ev)
    if st.next_trade_id != before and (m.stops_buy or m.stops_sell):
        _trigger_stops(st, ledger, m, ev)


# ------------------------------------------------------------------------------ cancel / amend


def _cancel(engine: Engine, st: TradingState, c: CancelOrder, ev: list[Event]) -> None:
    m = st.markets.get(c.symbol)
    if m is None:
        return _reject(ev, "CANCEL", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}", c.order_id)
    if m.band_hi or m.out_of_band:
        _band_watch(m, engine.now_ns, ev)
    if m.status == HALTED:
        return _reject(ev, "CANCEL", c, "MARKET_HALTED", "symbol", f"{m.symbol} is HALTED; nothing can change until it is lifted", c.order_id)
    o = m.orders.get(c.order_id) if c.order_id else (m.coids.get((c.owner, c.client_order_id)) if c.client_order_id else None)
    if o is None or o.owner != c.owner:
        return _reject(ev, "CANCEL", c, "UNKNOWN_ORDER", "order_id", "Unknown order sent.", c.order_id)
    resting = _take_out(m, o)
    _close(engine.ledger, m, o, ev, OrderCanceled, "USER_CANCELED", resting)


def _cancel_all(engine: Engine, st: TradingState, c: CancelAll, ev: list[Event]) -> None:
    m = st.markets.get(c.symbol)
    if m is None:
        return _reject(ev, "CANCEL_ALL", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}")
    if m.band_hi or m.out_of_band:
        _band_watch(m, engine.now_ns, ev)
    if m.status == HALTED:
        return _reject(ev, "CANCEL_ALL", c, "MARKET_HALTED", "symbol", f"{m.symbol} is HALTED")
    owned = m.by_owner.get(c.owner)
    if not owned:
        return
    ledger = engine.ledger
    for oid in sorted(owned):
        o = m.orders[oid]
        resting = _take_out(m, o)
        _close(ledger, m, o, ev, OrderCanceled, "USER_CANCELED", resting)


def _amend(engine: Engine, st: TradingState, c: AmendOrder, ev: list[Event]) -> None:
    m = st.markets.get(c.symbol)
    oid = c.order_id
    if m is None:
        return _reject(ev, "AMEND", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}", oid)
    if m.band_hi or m.out_of_band:
        _band_watch(m, engine.now_ns, ev)
    if m.status != ACTIVE:
        return _reject(ev, "AMEND", c, "MARKET_NOT_ACTIVE", "symbol", f"{m.symbol} is {m.status}; only cancels are accepted", oid)
    o = m.orders.get(oid)
    if o is None or o.owner != c.owner:
        return _reject(ev, "AMEND", c, "UNKNOWN_ORDER", "order_id", "Unknown order sent.", oid)
    if o.level is None:
        return _reject(ev, "AMEND", c, "ORDER_NOT_AMENDABLE", "order_id", "only resting limit orders can be amended", oid)
    price = c.price or o.price
    qty = c.quantity or o.qty
    if not 0 < price <= MAX_PRICE or not 0 < qty <= MAX_QTY:
        return _reject(ev, "AMEND", c, "INVALID_PARAMETER", "price" if not 0 < price <= MAX_PRICE else "quantity", "price and quantity must be positive", oid)
    if price % m.tick:
        return _reject(ev, "AMEND", c, "PRICE_NOT_ON_TICK", "price", f"price must be a multiple of the tick size {m.tick}", oid)
    problem = _qty_problem(m, qty)
    if problem is not None:
        return _reject(ev, "AMEND", c, problem[0], "quantity", problem[1], oid)
    leaves = qty - o.filled
    if leaves <= 0:
        return _reject(ev, "AMEND", c, "INVALID_PARAMETER", "quantity", f"quantity must exceed the {o.filled} already filled", oid)
    reprice = price != o.price
    if reprice:
        if m.band_hi and not m.band_lo <= price <= m.band_hi:
            return _reject(ev, "AMEND", c, "PRICE_OUTSIDE_BAND", "price", f"price must lie within {m.band_lo}..{m.band_hi}", oid)
        if m.min_notional and price * qty // m.base_scale < m.min_notional:
            return _reject(ev, "AMEND", c, "BELOW_MIN_NOTIONAL", "price", f"price * quantity must be at least {m.min_notional}", oid)
        if o.type == "LIMIT_MAKER" and m.crosses(o.is_buy, price):
            return _reject(ev, "AMEND", c, "POST_ONLY_WOULD_TAKE", "price", "a post-only order must not take liquidity", oid)
        if m.level_limit_reached(o.is_buy, price):
            return _reject(ev, "AMEND", c, "BOOK_FULL", "price", f"the {m.symbol} book is at its size limit", oid)
    ledger = engine.ledger
    is_buy = o.is_buy
    hold = ledger.pending[o.hold_id]
    need = leaves * price // m.base_scale if is_buy else leaves
    extra = need - hold.remaining
    if extra > 0:
        pay = o.pay  # a user account: no overdraft (Ledger.can_reserve, inlined on the hot path)
        if pay.debits_posted + pay.debits_pending + extra > pay.credits_posted:
            return _reject(ev, "AMEND", c, "INSUFFICIENT_BALANCE", "quantity", "Account has insufficient balance for requested action.", oid)
    # ---- mutate ----
    if extra:
        _resize_hold(hold, extra)
    if not reprice and qty <= o.qty:  # a reduction keeps time priority
        o.level.total -= o.leaves - leaves  # type: ignore[union-attr]
        o.leaves = leaves
        o.qty = qty
        ev.append(OrderAmended(m.symbol, oid, price, qty, leaves, True))
        return
    m.unlink(o)
    o.price, o.qty, o.leaves = price, qty, leaves
    o.ts_ns = engine.now_ns
    ev.append(OrderAmended(m.symbol, oid, price, qty, leaves, False))
    if not m.crosses(is_buy, price):
        # It does not cross: straight to the back of its new level (the common "move").
        m.rest(o)
        ev.append(OrderRested(m.symbol, oid, o.owner, "BUY" if is_buy else "SELL", price, leaves))
        return
    m.unindex(o)
    before = st.next_trade_id
    _execute(st, ledger, m, o, ev)
    if st.next_trade_id != before and (m.stops_buy or m.stops_sell):
        _trigger_stops(st, ledger, m, ev)


def _resize_hold(p: Any, delta: int) -> None:
    """Grow (`delta > 0`, caller checked the balance) or partly release (`delta < 0`) a pending hold.

    The ledger has no "resize reservation" operation; this applies to an existing pending transfer
    exactly the counter changes `Ledger._reserve` / `Ledger._release` make, so that an amended order
    keeps one hold (and its id) instead of a void plus a new reservation.
    """
    if p.status != "pending" or p.remaining + delta <= 0:
        raise InvariantViolation(f"cannot resize hold {p.id} ({p.status}, {p.remaining}) by {delta}")
    p.debit.debits_pending += delta
    p.credit.credits_pending += delta
    p.remaining += delta
    if delta > 0:
        p.amount += delta


# ------------------------------------------------------------------------------ handlers

# Order actions have no edge precheck: message sizes are enforced by the command types
# (`Annotated[..., Meta(max_length=...)]`) in the node's strict decode, before journaling, and
# market rules are answered by events in `apply`.


_DISPATCH: dict[type, Callable[[Engine, TradingState, Any, list[Event]], None]] = {
    PlaceOrder: _place,
    CancelOrder: _cancel,
    CancelAll: _cancel_all,
    AmendOrder: _amend,
}


def _single(fn: Callable[[Engine, TradingState, Any, list[Event]], None]) -> Callable[[Engine, Any], list[Event]]:
    def handler(engine: Engine, c: Any) -> list[Event]:
        ev: list[Event] = []
        fn(engine, engine.components["trading"], c, ev)
        return ev

    handler.__name__ = fn.__name__
    return handler


for _type, _fn in _DISPATCH.items():
    handles(_type)(_single(_fn))


@handles(TradingBatch)
def _batch(engine: Engine, c: TradingBatch) -> list[Event]:
    ev: list[Event] = []
    st = engine.components["trading"]
    dispatch = _DISPATCH
    for action in c.actions:
        dispatch[type(action)](engine, st, action, ev)
    return ev


def check_place(engine: Engine, c: PlaceOrder) -> OrderRejected | None:
    """Run every check placing `c` would run, change nothing; the rejection, or None if it passes.

    Engine-level refusals (halts, malformed commands) are raised by `engine.precheck`, which the
    caller runs first. Read-only: call it between batches (`Node.query`), never during one.
    """
    ev: list[Event] = []
    _place(engine, trading_state(engine), c, ev, dry_run=True)
    for e in ev:
        if isinstance(e, OrderRejected):
            return e
    return None


def market_of(engine: Engine, symbol: str) -> Market:
    """The live `Market` (read-only use: demo, tests, the API's queries)."""
    return _market(trading_state(engine), symbol)

