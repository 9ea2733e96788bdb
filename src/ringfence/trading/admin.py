"""Trading admin commands: list a market, set its status and reference price, define fee tiers
and assign them, plus the band watch that moves a market to REDUCE_ONLY (and back) when the last
price sits outside the band around the reference price too long.
"""


from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import Effect
from .module import MODULE, market_scopes, refuse_set_market_status
from ..errors import ValidationError
from .book import ACTIVE, MARKET_STATUSES, REDUCE_ONLY, Market
from .commands import (
    AccountFeeTierSet,
    FeeTierSet,
    ListMarket,
    MarketListed,
    MarketStatusChanged,
    ReferencePriceSet,
    SetAccountFeeTier,
    SetFeeTier,
    SetMarketStatus,
    SetReferencePrice,
)
from .state import (
    _OWNER_RE,
    _SYMBOL_RE,
    MAX_BOOK_ORDERS_CAP,
    MAX_FEE_RATE_PPM,
    MAX_FEE_TIERS,
    MAX_LEVELS_CAP,
    MAX_MARKETS,
    MAX_OPEN_ORDERS_CAP,
    MAX_PRICE,
    MAX_QTY,
    _bind_accounts,
    _market,
    trading_state,
)
from .vocabulary import MarketStatus

__all__: list[str] = ["follow_index"]

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
    if not ledger.can_open_accounts(2):  # the market's two clearing accounts
        raise ValidationError("the shard cannot open more accounts", field="symbol")


#: Segments whose markets are contracts with their own margin rules (derivatives adds its own): a
#: spot market listed there would hold the users' margin with a plain spot hold, past the margin check.
MARGIN_SEGMENTS: set[str] = set()


def refuse_margin_segment(c: ListMarket) -> None:
    if c.segment in MARGIN_SEGMENTS:
        raise ValidationError(f"segment {c.segment!r} holds margin: a spot market cannot be listed there "
                              "(perpetuals are listed with ListPerpetual)", field="segment")


def _precheck_spot_listing(engine: Engine, c: ListMarket) -> None:
    refuse_margin_segment(c)
    _precheck_list_market(engine, c)


@MODULE.handles(ListMarket, precheck=_precheck_spot_listing, effect=Effect.ADMIN, scopes=market_scopes)
def _list_spot_market(engine: Engine, c: ListMarket) -> list[Event]:
    refuse_margin_segment(c)
    return _list_market(engine, c)


def _list_market(engine: Engine, c: ListMarket) -> list[Event]:
    """List a market (spot, or a perpetual's book for derivatives' ListPerpetual)."""
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


@MODULE.handles(SetMarketStatus, precheck=refuse_set_market_status, effect=Effect.ADMIN, scopes=market_scopes)
def _set_status(engine: Engine, c: SetMarketStatus) -> list[Event]:
    _precheck_status(engine, c)
    m = _market(trading_state(engine), c.symbol)
    m.status = MarketStatus(c.status)
    m.auto_reduce = False  # an operator's decision is not lifted by the band timer
    return [MarketStatusChanged(m.symbol, m.status, "OPERATOR")]


def _precheck_refprice(engine: Engine, c: SetReferencePrice) -> None:
    _check_int(c.price, "price", 1, MAX_PRICE)


@MODULE.handles(SetReferencePrice, precheck=_precheck_refprice, effect=Effect.ADMIN, scopes=market_scopes)
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


@MODULE.handles(SetFeeTier, precheck=_precheck_fee_tier, effect=Effect.ADMIN)
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


@MODULE.handles(SetAccountFeeTier, precheck=_precheck_account_tier, effect=Effect.ADMIN)
def _set_account_tier(engine: Engine, c: SetAccountFeeTier) -> list[Event]:
    _validate_account_tier(engine, c)
    st = trading_state(engine)
    if c.tier == 0:
        st.account_tier.pop(c.owner, None)
    else:
        st.account_tier[c.owner] = c.tier
    return [AccountFeeTierSet(c.owner, c.tier)]


def follow_index(engine: Engine, symbol: str, price: int) -> list[Event]:
    """Move `symbol`'s band reference to `price`: the index module's index (or its operator
    override) replaces the static `SetReferencePrice` once an index is configured (docs/index.md).
    Nothing happens when the market is not listed or the reference is already `price`."""
    m = trading_state(engine).markets.get(symbol)
    if m is None or price == m.ref_price:
        return []
    assert 0 < price <= MAX_PRICE, "index price out of range"
    m.set_reference(price)
    ev: list[Event] = [ReferencePriceSet(m.symbol, price)]
    _band_watch(m, engine.now_ns, ev)
    return ev


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

