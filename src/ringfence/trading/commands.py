"""Trading commands and events: the wire shapes of spot trading (versioned, integer-only).

Units (see docs/trading.md):

* `price` is in **quote minor units per one whole base unit** (10**base_decimals base minor units),
  e.g. BTCUSDT with USDT at 6 decimals: 61000.50 USDT per BTC is `61_000_500_000`.
* `quantity` is in **base minor units** (satoshi for BTC); `quote_amount` in quote minor units.
* A market's `tick_size * lot_size` must be divisible by `10**base_decimals`, so the notional
  `price * quantity // 10**base_decimals` of any on-tick price and on-lot quantity is an exact
  integer: no fractional minor unit ever needs rounding.
* Fee rates are in millionths (hundredths of a basis point): `1000` = 0.1 %.

Enumerations travel as short upper-case strings (Binance's spelling) so journals stay readable:
sides `BUY`/`SELL`; types `LIMIT`, `LIMIT_MAKER` (post-only), `MARKET`, `STOP_LIMIT`,
`STOP_MARKET`; time in force `GTC`/`IOC`/`FOK`; self-trade prevention `NONE`, `EXPIRE_TAKER`,
`EXPIRE_MAKER`, `EXPIRE_BOTH`; market status `ACTIVE`, `REDUCE_ONLY`, `HALTED`.

All trading commands and events are `gc=False` structs: they hold only scalars (and, for
`TradingBatch`, a list of such structs), so they can never be part of a reference cycle, and
keeping millions of them out of the cyclic garbage collector's generations roughly halves the
collector's cost on the durable path (measured in bench/matching.py).

Order-level outcomes are *events*, not command rejections: a `PlaceOrder` that breaks a market rule
is journaled and answered with `OrderRejected(reason=...)`, so a batch (`TradingBatch`) can reject
one order and accept the next. Nothing is changed by a rejected action.
"""

from __future__ import annotations

from typing import Annotated, Union

from msgspec import Meta

from ..engine.commands import Command, Event

__all__ = [
    "ListMarket",
    "SetMarketStatus",
    "SetReferencePrice",
    "SetFeeTier",
    "SetAccountFeeTier",
    "PlaceOrder",
    "CancelOrder",
    "CancelAll",
    "AmendOrder",
    "TradingBatch",
    "TradingAction",
    "MarketListed",
    "MarketStatusChanged",
    "ReferencePriceSet",
    "FeeTierSet",
    "AccountFeeTierSet",
    "OrderAccepted",
    "OrderRejected",
    "OrderRested",
    "OrderTriggered",
    "Trade",
    "OrderAmended",
    "OrderCanceled",
    "OrderExpired",
    "OrderFilled",
    "MAX_BATCH_ACTIONS",
]

#: A `TradingBatch` carries at most this many actions (bounds one journal record's apply time).
MAX_BATCH_ACTIONS = 4096

# Message-size limits live in the types, so the node's strict decode at the edge enforces them
# (in C, before anything is journaled) and names the field: `actions[3].client_order_id`.
Owner = Annotated[str, Meta(max_length=64)]
Symbol = Annotated[str, Meta(max_length=20)]
ClientOrderId = Annotated[str, Meta(max_length=36)]
Word = Annotated[str, Meta(max_length=16)]


# ---------------------------------------------------------------------------------------- commands


class ListMarket(Command, tag="market.list/1", gc=False, frozen=True):
    """List a spot market (or update the rules of a listed one: same symbol, base, quote, segment)."""

    symbol: str
    base: str
    quote: str
    segment: str = "spot"
    tick_size: int = 1
    lot_size: int = 1
    min_qty: int = 1
    max_qty: int = 10**30
    min_notional: int = 0
    #: Price band half-width around the reference price, in millionths (100_000 = ±10 %); 0 = none.
    band_ppm: int = 100_000
    #: How long the last price may sit outside the band before the market goes REDUCE_ONLY.
    band_timeout_ns: int = 60 * 10**9
    #: Market orders without an explicit protection price never fill beyond this from the best price.
    market_slippage_ppm: int = 50_000
    max_open_orders_per_account: int = 200
    max_book_orders: int = 200_000
    max_price_levels: int = 20_000


class SetMarketStatus(Command, tag="market.status/1", gc=False, frozen=True):
    symbol: str
    status: str


class SetReferencePrice(Command, tag="market.refprice/1", gc=False, frozen=True):
    """The index price the dual-price guard compares with (fed by the risk/index worker)."""

    symbol: str
    price: int


class SetFeeTier(Command, tag="fee.tier/1", gc=False, frozen=True):
    """Define fee tier `tier`: maker and taker rates in millionths (hundredths of a basis point)."""

    tier: int
    maker_rate_ppm: int
    taker_rate_ppm: int


class SetAccountFeeTier(Command, tag="fee.account_tier/1", gc=False, frozen=True):
    owner: str
    tier: int


class PlaceOrder(Command, tag="order.place/1", gc=False, frozen=True):
    """Place an order.

    * LIMIT / LIMIT_MAKER: `price` and `quantity`; LIMIT_MAKER is post-only (rejected if it would take).
    * MARKET: `quantity` (base) **or** `quote_amount`; `price` > 0 is an optional protection price
      (worst price the order may fill at), else the market's slippage guard applies.
    * STOP_LIMIT: `stop_price`, `price`, `quantity`; STOP_MARKET: `stop_price` and `quantity`.
    """

    owner: Owner
    symbol: Symbol
    side: Word
    order_type: Word = "LIMIT"
    tif: Word = "GTC"
    price: int = 0
    quantity: int = 0
    quote_amount: int = 0
    stop_price: int = 0
    client_order_id: ClientOrderId = ""
    stp: Word = "NONE"


class CancelOrder(Command, tag="order.cancel/1", gc=False, frozen=True):
    """Cancel by `order_id`, or by `client_order_id` when `order_id` is 0."""

    owner: Owner
    symbol: Symbol
    order_id: int = 0
    client_order_id: ClientOrderId = ""


class CancelAll(Command, tag="order.cancel_all/1", gc=False, frozen=True):
    """Cancel every open order (resting and untriggered stops) of `owner` in `symbol`."""

    owner: Owner
    symbol: Symbol


class AmendOrder(Command, tag="order.amend/1", gc=False, frozen=True):
    """Change price and/or total quantity (0 = unchanged).

    Reducing the quantity at the same price keeps time priority; a new price or a larger quantity
    loses it (the order is re-entered at the back of its level and may trade on the way).
    """

    owner: Owner
    symbol: Symbol
    order_id: int
    price: int = 0
    quantity: int = 0


TradingAction = Union[PlaceOrder, CancelOrder, CancelAll, AmendOrder]


class TradingBatch(Command, tag="trading.batch/1", gc=False, frozen=True):
    """Many trading actions in one command: applied in order, each answered by its own events.

    The gateway coalesces concurrent requests into one batch so that encoding, journaling and
    acknowledgement are paid once per batch rather than once per order.
    """

    actions: Annotated[list[TradingAction], Meta(min_length=1, max_length=MAX_BATCH_ACTIONS)]


# ------------------------------------------------------------------------------------------ events


class MarketListed(Event, tag="market.listed/1", gc=False, frozen=True):
    symbol: str
    base: str
    quote: str
    segment: str
    tick_size: int
    lot_size: int
    min_qty: int
    min_notional: int
    band_ppm: int
    created: bool


class MarketStatusChanged(Event, tag="market.status_changed/1", gc=False, frozen=True):
    symbol: str
    status: str
    reason: str


class ReferencePriceSet(Event, tag="market.refprice_set/1", gc=False, frozen=True):
    symbol: str
    price: int


class FeeTierSet(Event, tag="fee.tier_set/1", gc=False, frozen=True):
    tier: int
    maker_rate_ppm: int
    taker_rate_ppm: int


class AccountFeeTierSet(Event, tag="fee.account_tier_set/1", gc=False, frozen=True):
    owner: str
    tier: int


class OrderAccepted(Event, tag="order.accepted/1", gc=False, frozen=True):
    """A new order passed every check; its funds are held. `hold` is the held amount (minor units)."""

    symbol: str
    order_id: int
    owner: str
    client_order_id: str
    side: str
    order_type: str
    tif: str
    price: int
    quantity: int
    quote_amount: int
    stop_price: int
    stp: str
    hold: int


class OrderRejected(Event, tag="order.rejected/1", gc=False, frozen=True):
    """`action` (PLACE, CANCEL, CANCEL_ALL, AMEND) was refused with `reason`; nothing changed."""

    action: str
    symbol: str
    owner: str
    order_id: int
    client_order_id: str
    reason: str
    field: str
    message: str


class OrderRested(Event, tag="order.rested/1", gc=False, frozen=True):
    """The order entered the book at the back of its price level with `leaves` remaining."""

    symbol: str
    order_id: int
    owner: str
    side: str
    price: int
    leaves: int


class OrderTriggered(Event, tag="order.triggered/1", gc=False, frozen=True):
    symbol: str
    order_id: int
    last_price: int


class Trade(Event, tag="trade/1", gc=False, frozen=True):
    """One fill at the maker's price. Fees are charged in the asset each side receives.

    `*_leaves` is what remains of each order after this fill (0 = the order is FILLED).
    """

    symbol: str
    trade_id: int
    price: int
    quantity: int
    quote_qty: int
    taker_side: str
    taker_order_id: int
    maker_order_id: int
    taker_owner: str
    maker_owner: str
    taker_fee: int
    maker_fee: int
    taker_leaves: int
    maker_leaves: int


class OrderAmended(Event, tag="order.amended/1", gc=False, frozen=True):
    symbol: str
    order_id: int
    price: int
    quantity: int
    leaves: int
    kept_priority: bool


class OrderCanceled(Event, tag="order.canceled/1", gc=False, frozen=True):
    """Status CANCELED. `was_resting` tells book followers to remove `leaves` at `price`."""

    symbol: str
    order_id: int
    owner: str
    side: str
    price: int
    leaves: int
    was_resting: bool
    reason: str
    released: int


class OrderExpired(Event, tag="order.expired/1", gc=False, frozen=True):
    """Status EXPIRED (IOC/FOK/market leftovers, self-trade prevention, band)."""

    symbol: str
    order_id: int
    owner: str
    side: str
    price: int
    leaves: int
    was_resting: bool
    reason: str
    released: int


class OrderFilled(Event, tag="order.filled/1", gc=False, frozen=True):
    """Status FILLED for an order by quote amount (`quoteOrderQty`), whose last `Trade` cannot say it.

    Such an order is done when what is left cannot buy (or sell for) one more lot at the book's
    price: `quote_left` is that unspent quote, and `released` what its hold gave back. Orders by
    base quantity need no such event: their last `Trade` has `taker_leaves == 0`.
    """

    symbol: str
    order_id: int
    owner: str
    side: str
    quote_left: int
    released: int
