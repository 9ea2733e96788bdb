"""Commands and events of the `derivatives` module (linear USDT-margined perpetuals).

Every amount is an integer in minor units: quantities in the base asset's minor units, prices
in quote minor units per whole base unit, money in quote minor units. Rates are in millionths
(ppm). See docs/derivatives.md for the rules and every rounding.
"""

from __future__ import annotations

from typing import ClassVar

from ..engine.commands import Command, Event

__all__ = [
    "ListPerpetual", "FuturesTransfer", "SetLeverage", "SetMarginType", "AdjustIsolatedMargin", "PlacePerpOrder",
    "PerpetualListed", "FuturesTransferred", "LeverageSet", "MarginTypeSet", "IsolatedMarginAdjusted",
    "PositionChanged", "FundingSettled", "LiquidateAccount", "LiquidationStep", "LiquidatePosition", "AutoDeleveraged",
    "PlaceConditionalOrder", "CancelConditionalOrder", "ConditionalOrderAccepted", "ConditionalOrderTriggered",
    "ConditionalOrderEnded",
]


class ListPerpetual(Command, tag="perp.list/1", gc=False, frozen=True):
    """List a linear perpetual `symbol` (internal name, e.g. BTCUSDTPERP) on `base`/`quote` in the
    `derivatives` segment, marked against the index of `index_symbol`.

    `brackets`: rows `[notional_cap, max_leverage, maint_margin_rate_ppm, maint_amount]`, caps
    ascending (the last one is the largest notional allowed), Binance's leverage brackets.
    """

    symbol: str
    base: str
    quote: str
    index_symbol: str
    brackets: list[list[int]]
    tick_size: int = 1
    lot_size: int = 1
    min_qty: int = 1
    max_qty: int = 10**30
    min_notional: int = 0
    default_leverage: int = 20
    #: Notional (quote minor units) the impact bid/ask prices are measured at.
    impact_notional: int = 0
    interest_ppm: int = 100  # 0.01 % per funding interval
    funding_clamp_ppm: int = 500  # ±0.05 %
    funding_cap_ppm: int = 7_500  # ±0.75 %
    funding_interval_ns: int = 8 * 3600 * 10**9
    #: Open interest cap in base minor units (0: none).
    max_open_interest: int = 0
    #: Largest share of the open interest one account may hold, in ppm (0: no limit) ...
    max_account_share_ppm: int = 0
    #: ... once the open interest is above this many base minor units (a new market is not stuck).
    share_floor_qty: int = 0
    #: Initial margin rate added per unit of share: imr = max(1/leverage, share × this / 10^6).
    concentration_imr_ppm: int = 0


class FuturesTransfer(Command, tag="perp.transfer/1", gc=False, frozen=True):
    """Move `amount` of `asset` between the owner's spot and derivatives wallets (Binance's
    `/sapi/v1/asset/transfer` types MAIN_UMFUTURE and UMFUTURE_MAIN)."""

    owner: str
    asset: str
    amount: int
    direction: str


class SetLeverage(Command, tag="perp.leverage/1", gc=False, frozen=True):
    owner: str
    symbol: str
    leverage: int


class SetMarginType(Command, tag="perp.margin_type/1", gc=False, frozen=True):
    owner: str
    symbol: str
    margin_type: str  # ISOLATED or CROSSED


class AdjustIsolatedMargin(Command, tag="perp.isolated_margin/1", gc=False, frozen=True):
    """Add (`action` 1) or remove (`action` 2) isolated margin of the owner's position (Binance's
    `/fapi/v1/positionMargin` types)."""

    owner: str
    symbol: str
    amount: int
    action: int


class PlacePerpOrder(Command, tag="perp.order/1", gc=False, frozen=True):
    """A perpetual order: trading's `PlaceOrder` plus `reduce_only` (0 or 1). Trading places it
    as it is (`trading.orders.NewOrder`): it has no quote amount and no self-trade prevention mode,
    which it answers as class attributes (not fields: the encoding is unchanged)."""

    quote_amount: ClassVar[int] = 0
    stp: ClassVar[str] = "NONE"

    owner: str
    symbol: str
    side: str
    order_type: str = "LIMIT"
    tif: str = "GTC"
    price: int = 0
    quantity: int = 0
    stop_price: int = 0
    client_order_id: str = ""
    reduce_only: int = 0


class PerpetualListed(Event, tag="perp.listed/1", gc=False, frozen=True):
    symbol: str
    base: str
    quote: str
    index_symbol: str
    next_funding_ns: int


class FuturesTransferred(Event, tag="perp.transferred/1", gc=False, frozen=True):
    owner: str
    asset: str
    amount: int
    direction: str
    tran_id: int


class LeverageSet(Event, tag="perp.leverage_set/1", gc=False, frozen=True):
    owner: str
    symbol: str
    leverage: int
    max_notional: int


class MarginTypeSet(Event, tag="perp.margin_type_set/1", gc=False, frozen=True):
    owner: str
    symbol: str
    margin_type: str


class IsolatedMarginAdjusted(Event, tag="perp.isolated_adjusted/1", gc=False, frozen=True):
    owner: str
    symbol: str
    amount: int
    action: int
    isolated_margin: int


class PositionChanged(Event, tag="perp.position/1", gc=False, frozen=True):
    """One side of a fill applied to a position: the new size (signed) and cost, the realised PnL
    of the part that closed, the fee paid, and what the insurance fund covered (bankrupt part)."""

    owner: str
    symbol: str
    trade_price: int
    trade_qty: int
    size: int
    cost: int
    margin: int
    realized_pnl: int
    fee: int
    insurance_covered: int


class FundingSettled(Event, tag="perp.funding/1", gc=False, frozen=True):
    """A funding round of one market: `owners[i]` received `amounts[i]` (negative: paid);
    `covered[i]` of a payment the owner could not make the insurance fund paid (empty: none did)."""

    symbol: str
    funding_time_ns: int
    rate_ppm: int
    premium_ppm: int
    index_price: int
    mark_price: int
    paid: int
    received: int
    to_insurance: int
    insurance_covered: int
    owners: list[str]
    amounts: list[int]
    covered: list[int] = []


class LiquidateAccount(Command, tag="perp.liquidate/1", gc=False, frozen=True):
    """One liquidation step of `owner`'s cross account in `asset` (submitted by the liquidation
    worker when `margin_check` finds it below maintenance; refused when it is not)."""

    owner: str
    asset: str


class LiquidationStep(Event, tag="perp.liquidation/1", gc=False, frozen=True):
    """A step: the account's orders cancelled, then an IOC of `ordered` at `limit_price` (the band
    edge) against `depth_in_band`; `filled` of it traded; the next step not before `next_ns`.
    `advance_kept`: of the one minor unit the insurance fund advanced a bankrupt account to hold
    the step's order with, what the account kept (0 or 1; the rest went back to the fund)."""

    owner: str
    symbol: str
    equity: int
    maintenance: int
    side: str
    ordered: int
    filled: int
    limit_price: int
    depth_in_band: int
    next_ns: int
    advance_kept: int = 0


class LiquidatePosition(Command, tag="perp.liquidate_isolated/1", gc=False, frozen=True):
    """One liquidation step of `owner`'s isolated position on `symbol` (submitted by the liquidation
    worker when `margin_check` finds the position's margin + PnL below its maintenance; refused
    when it is not). Only that position's own margin pays: the cross wallet is never debited."""

    owner: str
    symbol: str


class AutoDeleveraged(Event, tag="perp.adl/1", gc=False, frozen=True):
    """Auto-deleveraging: `quantity` of bankrupt `owner`'s position on `symbol` closed against
    `counterparty`'s opposite position (its place `rank` in the ADL ranking, 0 first) at the
    bankruptcy `price`; `side` is the bankrupt owner's (SELL closes a long). Both realised PnLs and
    the counterparty's size after are reported."""

    symbol: str
    owner: str
    counterparty: str
    side: str
    quantity: int
    price: int
    rank: int
    owner_realized_pnl: int
    counterparty_realized_pnl: int
    counterparty_size: int


class PlaceConditionalOrder(Command, tag="perp.algo/1", gc=False, frozen=True):
    """A conditional (algo) order on a perpetual, Binance's `POST /fapi/v1/algoOrder`: it holds
    nothing and is not in the book until its trigger fires; then it places a MARKET order
    (STOP_MARKET, TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET) or a LIMIT one at `price` (STOP,
    TAKE_PROFIT). See derivatives/conditional.py for the trigger rules.

    `working_type`: CONTRACT_PRICE (the last trade) or MARK_PRICE. `callback_bp`: a trailing stop's
    callback rate in basis points (10..1000, Binance's 0.1 %..10 %); `activation_price` optional
    (0: active at once). `close_position` 1: no quantity; at the trigger it closes the whole position.
    """

    owner: str
    symbol: str
    side: str
    order_type: str
    quantity: int = 0
    trigger_price: int = 0
    price: int = 0
    tif: str = "GTC"
    working_type: str = "CONTRACT_PRICE"
    reduce_only: int = 0
    close_position: int = 0
    callback_bp: int = 0
    activation_price: int = 0
    client_algo_id: str = ""


class CancelConditionalOrder(Command, tag="perp.algo_cancel/1", gc=False, frozen=True):
    """Cancel `owner`'s untriggered conditional order `algo_id` on `symbol`."""

    owner: str
    symbol: str
    algo_id: int


class ConditionalOrderAccepted(Event, tag="perp.algo_accepted/1", gc=False, frozen=True):
    symbol: str
    algo_id: int
    owner: str
    client_algo_id: str
    side: str
    order_type: str
    quantity: int
    trigger_price: int
    price: int
    tif: str
    working_type: str
    reduce_only: int
    close_position: int
    callback_bp: int
    activation_price: int


class ConditionalOrderTriggered(Event, tag="perp.algo_triggered/1", gc=False, frozen=True):
    """`algo_id` fired at `price` (its working price); it became order `order_id` (0: that order
    was refused, `reason` says why)."""

    symbol: str
    algo_id: int
    owner: str
    price: int
    order_id: int
    reason: str = ""


class ConditionalOrderEnded(Event, tag="perp.algo_ended/1", gc=False, frozen=True):
    """`algo_id` ended untriggered: `status` CANCELED (by its owner) or EXPIRED (`reason`)."""

    symbol: str
    algo_id: int
    owner: str
    status: str
    reason: str = ""
