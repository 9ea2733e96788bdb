"""Trading decisions of the staff operator quorum: register an asset, list and delist a market, define a
fee tier, put an account on a tier, set a market's reference price (docs/staff.md, "Markets and fees").

Each is a system-wide change, so each carries the signed decisions of at least the staff register's
operator quorum of distinct active operators, verified by the same checks as a halt lift
(`staff.check_quorum`: registered, active, operator role, unexpired, unused nonce, valid signature,
distinct people, the quorum); the handler then spends the nonces (`staff.consume`). What each
operator signs is the decision's action (`asset.register`, `market.list`, `market.delist`, `fee.tier`,
`fee.account_tier`, `market.reference`) over exactly the fields of the change, its reason and the
trading change counter `TradingState.admin_version`, so one set of approvals is good for exactly
one change: after any other trading decision the counter moved and old approvals no longer verify.

* Registering an asset (`RegisterAssetSigned`) checks its fields by `RegisterAsset`'s rules, naming
  the field it refuses (`code`, `decimals`, `asset_class`, `chain`), and refuses a code that is
  already registered, even with the same properties: an asset's decimals, class and chain never
  change, and a second decision about the same code is a mistake an operator should hear about.
  It opens the asset's system accounts as `RegisterAsset` does; markets can then list it.
* Delisting cancels every open order of the market (resting and untriggered stops, in order id
  order) with reason `DELISTED`, ending each order's hold (the held amount goes back to the owner's
  available balance: the ledger's `end_hold`), then removes the market. It is declared as reducing
  risk, so it passes a halt on the market: the usual sequence is halt, then delist. A perpetual is
  refused (its positions would need a settlement first).
* A reference price on a market whose band follows an index is refused: that override is
  `OverrideReferencePrice` (index/auth.py), with the same quorum.
* An account's fee tier is refused when an approver holds that customer account
  (`never-the-initiator`).

The unsigned `RegisterAsset`, `ListMarket`, `SetFeeTier`, `SetAccountFeeTier` and `SetReferencePrice` stay for the
node's own set-up (the demo, simulations) and replay; the admin API accepts only these signed ones.
Every check runs before anything changes: a refusal leaves the state hash unchanged.
"""

from __future__ import annotations

from typing import Any

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from ..errors import Conflict, Forbidden, NotFound, ValidationError
from ..ledger.commands import AssetRegistered, RegisterAsset, checked_asset
from ..staff.decisions import OPERATOR, StaffSignature
from ..staff.state import check_quorum, consume, staff_of
from .admin import (
    _band_watch,
    _precheck_account_tier,
    _precheck_fee_tier,
    _precheck_refprice,
    _validate_list_market,
    refuse_margin_segment,
    _list_market,
    _set_account_tier,
    _set_fee_tier,
)
from .book import Market
from .commands import ListMarket, OrderCanceled, ReferencePriceSet, SetAccountFeeTier, SetFeeTier, SetReferencePrice
from .matching import _close, _take_out
from .module import MODULE, market_scopes
from .state import _market, trading_state

__all__ = [
    "RegisterAssetSigned",
    "ListMarketSigned",
    "DelistMarketSigned",
    "SetFeeTierSigned",
    "SetAccountFeeTierSigned",
    "SetReferencePriceSigned",
    "MarketDelisted",
    "TradingDecision",
    "ACTIONS",
    "asset_subject",
    "list_subject",
    "delist_subject",
    "fee_tier_subject",
    "account_tier_subject",
    "reference_subject",
]

MAX_REASON_CHARS = 500
#: The decision action each command's approvers sign.
ACTIONS = {"asset": "asset.register", "list": "market.list", "delist": "market.delist", "fee_tier": "fee.tier", "account_tier": "fee.account_tier",
           "reference": "market.reference"}


class RegisterAssetSigned(Command, tag="asset.register_signed/1", frozen=True):
    asset: RegisterAsset
    reason: str
    approvals: list[StaffSignature]


class ListMarketSigned(Command, tag="market.list_signed/1", frozen=True):
    market: ListMarket
    reason: str
    approvals: list[StaffSignature]


class DelistMarketSigned(Command, tag="market.delist_signed/1", frozen=True):
    symbol: str
    reason: str
    approvals: list[StaffSignature]


class SetFeeTierSigned(Command, tag="fee.tier_signed/1", frozen=True):
    tier: SetFeeTier
    reason: str
    approvals: list[StaffSignature]


class SetAccountFeeTierSigned(Command, tag="fee.account_tier_signed/1", frozen=True):
    assignment: SetAccountFeeTier
    reason: str
    approvals: list[StaffSignature]


class SetReferencePriceSigned(Command, tag="market.refprice_signed/1", frozen=True):
    symbol: str
    price: int
    reason: str
    approvals: list[StaffSignature]


class MarketDelisted(Event, tag="market.delisted/1", frozen=True):
    symbol: str
    canceled_orders: int
    released_holds: int
    reason: str
    #: What the market was, so that read models can still show its orders and trades after it is
    #: gone from the engine (a user asks for the order the delisting canceled).
    base: str = ""
    quote: str = ""
    segment: str = ""
    tick: int = 0
    lot: int = 0


class TradingDecision(Event, tag="trading.decision/1", frozen=True):
    """Who decided a trading change, and the counter it was signed against (for the audit trail)."""

    action: str
    subject: str
    reason: str
    approvers: list[str]
    version: int


MODULE.declare_events(MarketDelisted, TradingDecision)


# ------------------------------------------------------------------------------- subjects


def asset_subject(c: RegisterAsset, reason: str, version: int) -> list[Any]:
    return [c.code, c.decimals, c.asset_class, c.chain, reason, version]


def list_subject(c: ListMarket, reason: str, version: int) -> list[Any]:
    return [c.symbol, c.base, c.quote, c.segment, c.tick_size, c.lot_size, c.min_qty, c.max_qty, c.min_notional,
            c.band_ppm, c.band_timeout_ns, c.market_slippage_ppm, c.max_open_orders_per_account, c.max_book_orders,
            c.max_price_levels, reason, version]


def delist_subject(symbol: str, reason: str, version: int) -> list[Any]:
    return [symbol, reason, version]


def fee_tier_subject(c: SetFeeTier, reason: str, version: int) -> list[Any]:
    return [c.tier, c.maker_rate_ppm, c.taker_rate_ppm, reason, version]


def account_tier_subject(c: SetAccountFeeTier, reason: str, version: int) -> list[Any]:
    return [c.owner, c.tier, reason, version]


def reference_subject(symbol: str, price: int, reason: str, version: int) -> list[Any]:
    return [symbol, price, reason, version]


# ------------------------------------------------------------------------------- checks


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON_CHARS:
        raise ValidationError(f"reason must be 1-{MAX_REASON_CHARS} characters", field="reason")
    return value


def _quorum(engine: Engine, action: str, subject: list[Any], approvals: Any, exclude: list[str] | None = None) -> list[str]:
    return check_quorum(engine, action, subject, approvals, OPERATOR, exclude=exclude or ())


def _version(engine: Engine) -> int:
    return trading_state(engine).admin_version


def _decided(engine: Engine, key: str, subject: str, reason: str, approvers: list[str]) -> TradingDecision:
    st = trading_state(engine)
    st.admin_version += 1
    return TradingDecision(ACTIONS[key], subject, reason, approvers, st.admin_version)


def _pre_asset(engine: Engine, c: RegisterAssetSigned) -> list[str]:
    reason = _reason(c.reason)
    if not isinstance(c.asset, RegisterAsset):
        raise ValidationError("asset is a RegisterAsset", field="asset")
    asset = checked_asset(c.asset)
    ledger = engine.ledger
    if asset.code in ledger.assets:
        have = ledger.assets.get(asset.code)
        raise Conflict(f"asset {asset.code} is already registered ({have.decimals} decimals, {have.asset_class.value}"
                       f"{', chain ' + have.chain if have.chain else ''}); an asset is registered once and its "
                       "properties never change", field="code")
    if not ledger.can_open_accounts(1 + 2 * len(ledger.segments)):  # its world account, fees and shield per segment
        raise ValidationError(f"the shard holds its maximum of {ledger.max_accounts} accounts", field="code")
    return _quorum(engine, ACTIONS["asset"], asset_subject(c.asset, reason, _version(engine)), c.approvals)


@MODULE.handles(RegisterAssetSigned, precheck=_pre_asset, effect=Effect.ADMIN)
def _register_asset_signed(engine: Engine, c: RegisterAssetSigned) -> list[Event]:
    approvers = _pre_asset(engine, c)
    consume(engine, c.approvals)
    created = engine.ledger.register_asset(checked_asset(c.asset))
    assert created, "a registered asset was registered again"
    return [AssetRegistered(c.asset.code, True), _decided(engine, "asset", c.asset.code, c.reason, approvers)]


def _pre_list(engine: Engine, c: ListMarketSigned) -> list[str]:
    reason = _reason(c.reason)
    if not isinstance(c.market, ListMarket):
        raise ValidationError("market is a ListMarket", field="market")
    refuse_margin_segment(c.market)
    _validate_list_market(engine, c.market)
    return _quorum(engine, ACTIONS["list"], list_subject(c.market, reason, _version(engine)), c.approvals)


@MODULE.handles(ListMarketSigned, precheck=_pre_list, effect=Effect.ADMIN, scopes=lambda e, c: market_scopes(e, c.market))
def _list_signed(engine: Engine, c: ListMarketSigned) -> list[Event]:
    approvers = _pre_list(engine, c)
    consume(engine, c.approvals)
    events = _list_market(engine, c.market)
    return [*events, _decided(engine, "list", c.market.symbol, c.reason, approvers)]


def _pre_delist(engine: Engine, c: DelistMarketSigned) -> list[str]:
    reason = _reason(c.reason)
    m = _market(trading_state(engine), c.symbol)
    if m.contract is not None:
        raise Conflict(f"{c.symbol} is a perpetual: its positions must be settled before it can be delisted; "
                       "delisting perpetuals is not supported", field="symbol")
    return _quorum(engine, ACTIONS["delist"], delist_subject(c.symbol, reason, _version(engine)), c.approvals)


@MODULE.handles(DelistMarketSigned, precheck=_pre_delist, effect=Effect.REDUCES_RISK, scopes=market_scopes)
def _delist_signed(engine: Engine, c: DelistMarketSigned) -> list[Event]:
    approvers = _pre_delist(engine, c)
    consume(engine, c.approvals)
    st = trading_state(engine)
    m: Market = st.markets[c.symbol]
    ev: list[Event] = []
    ledger = engine.ledger
    for oid in sorted(m.orders):
        o = m.orders[oid]
        resting = _take_out(m, o)
        _close(ledger, m, o, ev, OrderCanceled, "DELISTED", resting)
    assert not m.orders and m.book_orders == 0, "a delisted market keeps open orders"
    assert m.clearing.base.credits_pending == 0 and m.clearing.quote.credits_pending == 0, "a delisted market keeps holds"
    released = sum(e.released for e in ev if isinstance(e, OrderCanceled))
    del st.markets[c.symbol]
    ev.append(MarketDelisted(c.symbol, len(ev), released, c.reason, m.base, m.quote, m.segment, m.tick, m.lot))
    ev.append(_decided(engine, "delist", c.symbol, c.reason, approvers))
    return ev


def _pre_fee_tier(engine: Engine, c: SetFeeTierSigned) -> list[str]:
    reason = _reason(c.reason)
    if not isinstance(c.tier, SetFeeTier):
        raise ValidationError("tier is a SetFeeTier", field="tier")
    _precheck_fee_tier(engine, c.tier)
    return _quorum(engine, ACTIONS["fee_tier"], fee_tier_subject(c.tier, reason, _version(engine)), c.approvals)


@MODULE.handles(SetFeeTierSigned, precheck=_pre_fee_tier, effect=Effect.ADMIN)
def _fee_tier_signed(engine: Engine, c: SetFeeTierSigned) -> list[Event]:
    approvers = _pre_fee_tier(engine, c)
    consume(engine, c.approvals)
    return [*_set_fee_tier(engine, c.tier), _decided(engine, "fee_tier", str(c.tier.tier), c.reason, approvers)]


def _pre_account_tier(engine: Engine, c: SetAccountFeeTierSigned) -> list[str]:
    reason = _reason(c.reason)
    if not isinstance(c.assignment, SetAccountFeeTier):
        raise ValidationError("assignment is a SetAccountFeeTier", field="assignment")
    _precheck_account_tier(engine, c.assignment)
    if c.assignment.tier not in trading_state(engine).tiers:
        raise ValidationError(f"fee tier {c.assignment.tier} is not defined; define it first (ringfence market fees)",
                              field="tier")
    owner, ledger = c.assignment.owner, engine.ledger
    if c.assignment.tier and not any(ledger.find(owner, a.code, "available", seg) is not None
                                     for a in list(ledger.assets) for seg in ledger.segments):
        raise NotFound(f"no account {owner!r} holds anything here (a typo?)", field="account")
    # never-the-initiator: nobody approves a fee tier for a customer account they hold themselves
    holders = [m.staff_id for m in staff_of(engine).members.values() if m.holds_account(c.assignment.owner)]
    subject = account_tier_subject(c.assignment, reason, _version(engine))
    return _quorum(engine, ACTIONS["account_tier"], subject, c.approvals, exclude=holders)


@MODULE.handles(SetAccountFeeTierSigned, precheck=_pre_account_tier, effect=Effect.ADMIN)
def _account_tier_signed(engine: Engine, c: SetAccountFeeTierSigned) -> list[Event]:
    approvers = _pre_account_tier(engine, c)
    consume(engine, c.approvals)
    return [*_set_account_tier(engine, c.assignment),
            _decided(engine, "account_tier", c.assignment.owner, c.reason, approvers)]


def _pre_reference(engine: Engine, c: SetReferencePriceSigned) -> list[str]:
    reason = _reason(c.reason)
    _precheck_refprice(engine, SetReferencePrice(c.symbol, c.price))
    _market(trading_state(engine), c.symbol)
    index = engine.components.get("index")
    if index is not None and c.symbol in getattr(index, "symbols", {}):
        raise Forbidden(f"the {c.symbol} band follows its index; override it with OverrideReferencePrice "
                        "(ringfence market ref-price does so by itself)", field="symbol")
    return _quorum(engine, ACTIONS["reference"], reference_subject(c.symbol, c.price, reason, _version(engine)),
                   c.approvals)


@MODULE.handles(SetReferencePriceSigned, precheck=_pre_reference, effect=Effect.ADMIN, scopes=market_scopes)
def _reference_signed(engine: Engine, c: SetReferencePriceSigned) -> list[Event]:
    approvers = _pre_reference(engine, c)
    consume(engine, c.approvals)
    m = trading_state(engine).markets[c.symbol]
    m.set_reference(c.price)
    ev: list[Event] = [ReferencePriceSet(m.symbol, c.price)]
    _band_watch(m, engine.now_ns, ev)
    ev.append(_decided(engine, "reference", c.symbol, c.reason, approvers))
    return ev
