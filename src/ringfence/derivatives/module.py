"""The `derivatives` engine module: linear perpetuals in the `derivatives` segment.

Orders on a perpetual go through trading's matching engine unchanged; the market carries a
`Contract` (`Market.contract`) that trading asks for an order's margin hold and hands each fill
to, and the fill changes positions instead of delivering the base asset. Money moves only through
the ledger's public API (`hold`, `capture`, `move`); docs/derivatives.md has the rules.
"""

from __future__ import annotations

from typing import Any

from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import Effect, Module, Scope
from ..errors import InsufficientFunds, NotFound, ValidationError
from ..trading.admin import MARGIN_SEGMENTS, _list_market
from ..trading.commands import ListMarket
from ..trading.module import market_scopes
from ..trading.state import MARKET_BINDERS, MAX_PRICE, MAX_QTY, trading_state
from .contract import Contract, handle_place_perp_order, order_precheck, trim_reduce_only
from .commands import (
    AdjustIsolatedMargin,
    FundingSettled,
    FuturesTransfer,
    FuturesTransferred,
    IsolatedMarginAdjusted,
    LeverageSet,
    ListPerpetual,
    MarginTypeSet,
    PerpetualListed,
    PlacePerpOrder,
    PositionChanged,
    SetLeverage,
    SetMarginType,
)
from .conditional import register as register_conditional
from .state import (
    PPM,
    SEGMENT,
    Bracket,
    DerivativesState,
    Perp,
    Position,
    _factory,
    _restore,
    _snapshot,
    bracket_for,
    ceil_div,
    concentration_imr_ppm,
    cross_upnl,
    derivatives_state,
    effective_leverage,
    funding_account,
    initial_margin,
    mark_of_perp,
    pool_of,
    wallet,
)

__all__ = ["MODULE", "Contract", "CONTRACT_REASONS", "trim_reduce_only"]

#: The order rejections a perpetual adds to trading's `REASONS` (each covered in tests/derivatives).
CONTRACT_REASONS = ("MARGIN_INSUFFICIENT", "REDUCE_ONLY_REJECTED", "CONCENTRATION_LIMIT", "OPEN_INTEREST_CAP")

MODULE = Module("derivatives", writes=("derivatives", "trading", "ledger", "index", "halts", "staff"))
MODULE.declare_events(
    PerpetualListed, FuturesTransferred, LeverageSet, MarginTypeSet, IsolatedMarginAdjusted, PositionChanged, FundingSettled
)
MODULE.declare_state(_factory, _snapshot, _restore, check_invariants=lambda st: st.check_invariants())

_MAX_AMOUNT = 2**127 - 1
_DIRECTIONS = ("MAIN_UMFUTURE", "UMFUTURE_MAIN")
_MAX_BRACKETS = 20


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValidationError(f"{name} must be an integer between {lo} and {hi}", field=name)
    return value


def _perp(engine: Engine, symbol: object) -> Perp:
    st = derivatives_state(engine)
    p = st.perps.get(symbol) if isinstance(symbol, str) else None
    if p is None:
        raise NotFound(f"unknown perpetual {symbol!r}", field="symbol")
    return p


def _bind(engine: Engine, m: Any) -> None:
    st = engine.components.get("derivatives")
    if st is not None and m.symbol in st.perps:
        m.contract = Contract(engine, m.symbol)


MARKET_BINDERS.append(_bind)
MARGIN_SEGMENTS.add(SEGMENT)  # no spot market in the derivatives segment (trading/admin.py)


# ------------------------------------------------------------------------------ listing


def _validate_list(engine: Engine, c: ListPerpetual) -> None:
    if not isinstance(c.brackets, list) or not 1 <= len(c.brackets) <= _MAX_BRACKETS:
        raise ValidationError(f"brackets must list 1 to {_MAX_BRACKETS} rows", field="brackets")
    cap_before = 0
    for i, row in enumerate(c.brackets):
        if not isinstance(row, list) or len(row) != 4:
            raise ValidationError("each bracket is [notional_cap, max_leverage, maint_margin_rate_ppm, maint_amount]", field=f"brackets[{i}]")
        cap, lev, mmr, cum = row
        _int(cap, f"brackets[{i}].notional_cap", cap_before + 1, MAX_PRICE)
        _int(lev, f"brackets[{i}].max_leverage", 1, 125)
        _int(mmr, f"brackets[{i}].maint_margin_rate_ppm", 1, PPM // (2 * lev))  # MM at most half the IM
        _int(cum, f"brackets[{i}].maint_amount", 0, MAX_PRICE)
        cap_before = cap
    _int(c.default_leverage, "default_leverage", 1, c.brackets[0][1])
    _int(c.impact_notional, "impact_notional", 0, MAX_PRICE)
    _int(c.interest_ppm, "interest_ppm", -PPM // 100, PPM // 100)
    _int(c.funding_clamp_ppm, "funding_clamp_ppm", 0, PPM // 10)
    _int(c.funding_cap_ppm, "funding_cap_ppm", 1, PPM // 10)
    _int(c.funding_interval_ns, "funding_interval_ns", 60 * 10**9, 24 * 3600 * 10**9)
    _int(c.max_open_interest, "max_open_interest", 0, MAX_QTY)
    _int(c.max_account_share_ppm, "max_account_share_ppm", 0, PPM)
    _int(c.share_floor_qty, "share_floor_qty", 0, MAX_QTY)
    _int(c.concentration_imr_ppm, "concentration_imr_ppm", 0, 10 * PPM)
    if not isinstance(c.index_symbol, str) or not 2 <= len(c.index_symbol) <= 20:
        raise ValidationError("index_symbol must name the index of the underlying (e.g. BTCUSDT)", field="index_symbol")
    if c.symbol in derivatives_state(engine).perps:
        raise ValidationError(f"perpetual {c.symbol} is already listed", field="symbol")


def _as_list_market(c: ListPerpetual) -> ListMarket:
    return ListMarket(c.symbol, c.base, c.quote, SEGMENT, c.tick_size, c.lot_size, c.min_qty, c.max_qty, c.min_notional,
                      band_ppm=0, band_timeout_ns=0)


def _precheck_list(engine: Engine, c: ListPerpetual) -> None:
    from ..trading.admin import _precheck_list_market

    _precheck_list_market(engine, _as_list_market(c))


@MODULE.handles(ListPerpetual, precheck=_precheck_list, effect=Effect.ADMIN, scopes=market_scopes)
def _list(engine: Engine, c: ListPerpetual) -> list[Event]:
    from ..trading.admin import _validate_list_market

    _validate_list(engine, c)
    lm = _as_list_market(c)
    _validate_list_market(engine, lm)
    # ---- checked: list the market in trading, then the contract
    ev = list(_list_market(engine, lm))
    st = derivatives_state(engine)
    ledger = engine.ledger
    interval = c.funding_interval_ns
    nxt = (engine.now_ns // interval + 1) * interval
    p = Perp(c.symbol, c.base, c.quote, c.index_symbol, [Bracket(*r) for r in c.brackets], c.default_leverage,
             c.impact_notional, c.interest_ppm, c.funding_clamp_ppm, c.funding_cap_ppm, interval, c.max_open_interest,
             c.max_account_share_ppm, c.share_floor_qty, c.concentration_imr_ppm, 10 ** ledger.assets.get(c.base).decimals,
             next_funding_ns=nxt)
    st.perps[c.symbol] = p
    pool_of(ledger, p)
    funding_account(ledger, c.quote)
    trading_state(engine).markets[c.symbol].contract = Contract(engine, c.symbol)
    engine.wake_at(nxt)
    ev.append(PerpetualListed(c.symbol, c.base, c.quote, c.index_symbol, nxt))
    return ev


# ------------------------------------------------------------------------------ transfers


def _transfer_scopes(engine: Engine, c: FuturesTransfer) -> list[Scope]:
    return [("segment", "spot"), ("segment", SEGMENT), ("asset", c.asset)]


def _transfer_effect(engine: Engine, c: FuturesTransfer) -> Effect:
    return Effect.REDUCES_RISK if c.direction == "MAIN_UMFUTURE" else Effect.MOVES_FUNDS_OUT


def _check_transfer(engine: Engine, c: FuturesTransfer) -> tuple[Any, Any, bool]:
    if c.direction not in _DIRECTIONS:
        raise ValidationError(f"type must be one of {', '.join(_DIRECTIONS)}", field="type")
    _int(c.amount, "amount", 1, _MAX_AMOUNT)
    ledger = engine.ledger
    asset = ledger.assets.get(c.asset, "asset")
    st = derivatives_state(engine)
    if not any(p.quote == asset.code for p in st.perps.values()):
        raise ValidationError(f"{c.asset} is not a margin asset of any perpetual", field="asset")
    spot = ledger.find(c.owner, c.asset, "available", "spot")
    fut = wallet(ledger, c.owner, c.asset)
    into = c.direction == "MAIN_UMFUTURE"
    source = spot if into else fut
    free = source.available if source is not None else 0
    if not into:
        free += min(0, cross_upnl(engine, st, c.owner, c.asset))
    if c.amount > free:
        where = "spot" if into else "futures"
        raise InsufficientFunds(f"the {where} wallet has {max(free, 0)} {c.asset} minor units free, less than {c.amount}", field="amount")
    if not ledger.can_open_accounts(1):
        raise ValidationError("the shard cannot open more accounts", field="owner")
    return spot, fut, into


@MODULE.handles(FuturesTransfer, effect=_transfer_effect, scopes=_transfer_scopes,
                precheck=lambda engine, c: (_check_transfer(engine, c), None)[1])
def _transfer(engine: Engine, c: FuturesTransfer) -> list[Event]:
    spot, fut, into = _check_transfer(engine, c)
    ledger = engine.ledger
    if fut is None:
        fut = ledger.open_account(c.owner, c.asset, "available", SEGMENT)[0]
    if into:
        ledger.move(spot, fut, c.amount)
    else:
        ledger.move(fut, spot, c.amount)
    st = derivatives_state(engine)
    tid = st.next_tran_id
    st.next_tran_id = tid + 1
    return [FuturesTransferred(c.owner, c.asset, c.amount, c.direction, tid)]


# ------------------------------------------------------------------------------ leverage, margin type


def _perp_scopes(engine: Engine, c: Any) -> list[Scope]:
    return market_scopes(engine, c)


def _check_leverage(engine: Engine, c: SetLeverage) -> tuple[Perp, int]:
    p = _perp(engine, c.symbol)
    _int(c.leverage, "leverage", 1, 125)
    st = derivatives_state(engine)
    pos = st.positions.get((c.owner, c.symbol))
    cost = pos.cost if pos is not None else 0
    b = bracket_for(p, cost) or p.brackets[-1]
    if c.leverage > b.max_leverage:
        raise ValidationError(
            f"leverage {c.leverage} is above {b.max_leverage}, the most allowed for a position of notional {cost}", field="leverage")
    grow = 0
    if pos is not None:
        old = st.leverage.get((c.owner, c.symbol))
        st.leverage_version += 1  # (the seats' copies: stale, here and after the `finally` below)
        st.leverage[(c.owner, c.symbol)] = c.leverage
        try:
            target = initial_margin(st, p, c.owner, abs(pos.size), pos.cost, p.open_interest) + pos.extra
        finally:
            if old is None:
                del st.leverage[(c.owner, c.symbol)]
            else:
                st.leverage[(c.owner, c.symbol)] = old
            st.leverage_version += 1
        grow = target - pos.margin
        w = wallet(engine.ledger, c.owner, p.quote)
        if grow > 0 and grow > (w.available if w is not None else 0):
            raise InsufficientFunds("Margin is insufficient for this leverage.", field="leverage")
    return p, grow


@MODULE.handles(SetLeverage, effect=Effect.NEUTRAL, scopes=_perp_scopes, precheck=lambda e, c: (_check_leverage(e, c), None)[1])
def _set_leverage(engine: Engine, c: SetLeverage) -> list[Event]:
    p, grow = _check_leverage(engine, c)
    st = derivatives_state(engine)
    st.leverage[(c.owner, c.symbol)] = c.leverage
    st.leverage_version += 1
    key = (c.owner, c.symbol)
    pos = st.positions.get(key)
    if pos is not None and grow:
        ledger = engine.ledger
        w = wallet(ledger, c.owner, p.quote)
        acct = ledger.find(c.owner, p.quote, "isolated" if key in st.isolated else "margin", SEGMENT)
        if grow > 0:
            ledger.move(w, acct, grow)
        else:
            ledger.move(acct, w, -grow)
        pos.margin += grow
    cap = max((b.cap for b in p.brackets if b.max_leverage >= c.leverage), default=0)
    return [LeverageSet(c.owner, c.symbol, c.leverage, cap)]


def _check_margin_type(engine: Engine, c: SetMarginType) -> Perp:
    p = _perp(engine, c.symbol)
    if c.margin_type not in ("ISOLATED", "CROSSED"):
        raise ValidationError("marginType must be ISOLATED or CROSSED", field="marginType")
    st = derivatives_state(engine)
    if (c.owner, c.symbol) in st.positions:
        raise ValidationError("Margin type cannot be changed if there exists position.", field="marginType")
    m = trading_state(engine).markets[c.symbol]
    if m.by_owner.get(c.owner):
        raise ValidationError("Margin type cannot be changed if there exists open orders.", field="marginType")
    return p


@MODULE.handles(SetMarginType, effect=Effect.NEUTRAL, scopes=_perp_scopes, precheck=lambda e, c: (_check_margin_type(e, c), None)[1])
def _set_margin_type(engine: Engine, c: SetMarginType) -> list[Event]:
    _check_margin_type(engine, c)
    st = derivatives_state(engine)
    if c.margin_type == "ISOLATED":
        st.isolated.add((c.owner, c.symbol))
    else:
        st.isolated.discard((c.owner, c.symbol))
    return [MarginTypeSet(c.owner, c.symbol, c.margin_type)]


def _check_adjust(engine: Engine, c: AdjustIsolatedMargin) -> tuple[Perp, Position]:
    p = _perp(engine, c.symbol)
    _int(c.amount, "amount", 1, _MAX_AMOUNT)
    if c.action not in (1, 2):
        raise ValidationError("type must be 1 (add margin) or 2 (reduce margin)", field="type")
    st = derivatives_state(engine)
    key = (c.owner, c.symbol)
    if key not in st.isolated:
        raise ValidationError("Margin is only adjustable for an isolated position; set marginType ISOLATED first", field="symbol")
    pos = st.positions.get(key)
    if pos is None:
        raise ValidationError("There is no position to adjust margin of.", field="symbol")
    if c.action == 1:
        w = wallet(engine.ledger, c.owner, p.quote)
        if c.amount > (w.available if w is not None else 0):
            raise InsufficientFunds("Margin is insufficient.", field="amount")
    elif c.amount > pos.extra:
        raise InsufficientFunds(f"at most {pos.extra} can be removed: the margin added above the initial margin", field="amount")
    return p, pos


@MODULE.handles(AdjustIsolatedMargin, effect=lambda e, c: Effect.REDUCES_RISK if c.action == 1 else Effect.OPENS_RISK,
                scopes=_perp_scopes, precheck=lambda e, c: (_check_adjust(e, c), None)[1])
def _adjust(engine: Engine, c: AdjustIsolatedMargin) -> list[Event]:
    p, pos = _check_adjust(engine, c)
    ledger = engine.ledger
    w = wallet(ledger, c.owner, p.quote)
    acct = ledger.get(c.owner, p.quote, "isolated", SEGMENT)
    if c.action == 1:
        ledger.move(w, acct, c.amount)
        pos.margin += c.amount
        pos.extra += c.amount
    else:
        ledger.move(acct, w, c.amount)
        pos.margin -= c.amount
        pos.extra -= c.amount
    return [IsolatedMarginAdjusted(c.owner, c.symbol, c.amount, c.action, pos.margin)]


# ------------------------------------------------------------------------------ orders


# The handler is the contract's (compiled): place the order, then fire the conditional orders its
# trades may have reached.
_place = MODULE.handles(PlacePerpOrder, precheck=order_precheck, scopes=_perp_scopes,
                        effect=lambda e, c: Effect.REDUCES_RISK if c.reduce_only == 1 else Effect.OPENS_RISK)(handle_place_perp_order)


# ------------------------------------------------------------------------------ funding


def impact_prices(m: Any, notional: int, scale: int) -> tuple[int, int]:
    """(impact bid, impact ask): the average price of selling / buying `notional` against the book
    (bid rounded down, ask up); 0 when the side cannot absorb it."""

    def walk(prices: list[int], book: dict[int, Any], is_bid: bool) -> int:
        need = notional
        qty = spent = 0
        for price in (reversed(prices) if is_bid else prices):
            level_qty = book[price].total
            level_notional = price * level_qty // scale
            if level_notional >= need:
                q = ceil_div(need * scale, price)
                qty += q
                spent += need
                need = 0
                break
            qty += level_qty
            spent += level_notional
            need -= level_notional
        if need > 0 or not qty:
            return 0
        return spent * scale // qty if is_bid else ceil_div(spent * scale, qty)

    if notional <= 0:
        return 0, 0
    return walk(m.bid_prices, m.bids, True), walk(m.ask_prices, m.asks, False)


def funding_rate(p: Perp, index: int, impact_bid: int, impact_ask: int) -> tuple[int, int]:
    """(rate, premium) in ppm: premium = (max(0, bid − index) − max(0, index − ask)) / index (floor);
    rate = premium + clamp(interest − premium, ±clamp), then capped at ±cap."""
    if not index or not impact_bid or not impact_ask:
        premium = 0
    else:
        premium = (max(0, impact_bid - index) - max(0, index - impact_ask)) * PPM // index
    rate = premium + max(-p.clamp_ppm, min(p.clamp_ppm, p.interest_ppm - premium))
    return max(-p.cap_ppm, min(p.cap_ppm, rate)), premium


def _fund(engine: Engine, st: DerivativesState, p: Perp) -> list[Event]:
    ledger = engine.ledger
    m = trading_state(engine).markets[p.symbol]
    index_state = engine.components.get("index")
    s = index_state.symbols.get(p.index_symbol) if index_state is not None else None
    index = s.index_minor if s is not None else 0
    mark = mark_of_perp(engine, p)
    when = p.next_funding_ns
    p.next_funding_ns = (engine.now_ns // p.interval_ns + 1) * p.interval_ns
    p.last_funding_ns = when
    if not index or not mark:
        p.last_rate_ppm = 0
        return [FundingSettled(p.symbol, when, 0, 0, index, mark, 0, 0, 0, 0, [], [])]
    bid, ask = impact_prices(m, p.impact_notional, p.scale)
    rate, premium = funding_rate(p, index, bid, ask)
    p.last_rate_ppm = rate
    pool = funding_account(ledger, p.quote)
    insurance = ledger.insurance(p.quote, SEGMENT)
    owners: list[str] = []
    amounts: list[int] = []
    shortfalls: list[int] = []
    paid = received = covered = 0
    rows = sorted(((o, pos) for (o, sym), pos in st.positions.items() if sym == p.symbol), key=lambda r: r[0])
    # Payers first (longs when the rate is positive): ceil; then receivers: floor.
    for payer_pass in (True, False):
        for owner, pos in rows:
            pays = (pos.size > 0) == (rate > 0)
            if pays != payer_pass or not rate:
                continue
            base = abs(pos.size) * mark * abs(rate)
            key = (owner, p.symbol)
            iso = key in st.isolated
            w = wallet(ledger, owner, p.quote)
            if pays:
                due = ceil_div(base, p.scale * PPM)
                if iso:
                    acct = ledger.get(owner, p.quote, "isolated", SEGMENT)
                    take = min(due, pos.margin)
                    ledger.move(acct, pool, take)
                    pos.margin -= take
                    pos.extra = min(pos.extra, pos.margin)
                else:
                    take = min(due, w.available)
                    ledger.move(w, pool, take)
                if due > take:
                    ledger.move(insurance, pool, due - take)
                    covered += due - take
                paid += due
                owners.append(owner)
                amounts.append(-due)
                shortfalls.append(due - take)
            else:
                got = base // (p.scale * PPM)
                if iso:
                    ledger.move(pool, ledger.get(owner, p.quote, "isolated", SEGMENT), got)
                    pos.margin += got
                else:
                    ledger.move(pool, w, got)
                received += got
                owners.append(owner)
                amounts.append(got)
                shortfalls.append(0)
    dust = pool.balance
    ledger.move(pool, insurance, dust)
    return [FundingSettled(p.symbol, when, rate, premium, index, mark, paid, received, dust, covered, owners, amounts,
                           shortfalls if covered else [])]


@MODULE.timer(lambda st: st.next_funding_ns())
def _funding_timer(engine: Engine) -> list[Event]:
    st = derivatives_state(engine)
    ev: list[Event] = []
    for sym in sorted(st.perps):
        p = st.perps[sym]
        if engine.now_ns >= p.next_funding_ns:
            ev.extend(_fund(engine, st, p))
    return ev


register_conditional(MODULE)

# Re-exported for the API and tests
__all__ += ["impact_prices", "funding_rate", "concentration_imr_ppm", "effective_leverage"]
