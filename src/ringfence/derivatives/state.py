"""The derivatives module's state, its arithmetic (margin, PnL, mark) and its invariants.

Integers only; every division rounds against the user (docs/derivatives.md, "Rounding"):
`ceil` is `-(-a // b)`, `floor` is `a // b`.
"""

from __future__ import annotations

from typing import Any

from ..engine.core import Engine
from ..errors import InvariantViolation
from .dstate import DerivativesState
from .margin import PPM, Bracket, Perp, Position, cross_upnl, initial_margin, mark_of_perp, unrealized
from .positions import IsolatedSet, PositionBook, index_matches

__all__ = [
    "SEGMENT", "PPM", "Bracket", "Perp", "Position", "DerivativesState", "derivatives_state", "ceil_div",
    "mark_of_perp", "unrealized", "maint_margin", "bracket_for", "effective_leverage", "initial_margin",
    "account_summary", "wallet", "pool_of", "funding_account", "PositionBook", "IsolatedSet", "margin_check",
    "margin_check_reference", "cross_upnl",
]

SEGMENT = "derivatives"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def derivatives_state(engine: Engine) -> DerivativesState:
    st: DerivativesState = engine.components["derivatives"]
    return st


def _snapshot(st: DerivativesState) -> Any:
    if not st.perps and not st.positions:
        return None  # nothing listed: the state hash is what it was before the module existed
    ro = [[sym, sorted(ids)] for sym, ids in sorted(st.reduce_only_orders.items()) if ids]
    return [
        [st.perps[s].row() for s in sorted(st.perps)],
        sorted([o, s, *p.row()] for (o, s), p in st.positions.items()),
        sorted([o, s, lev] for (o, s), lev in st.leverage.items()),
        sorted([o, s] for o, s in st.isolated),
        st.next_tran_id,
        # optional tails (older snapshots end earlier): liquidation cool-downs, reduce-only orders,
        # untriggered conditional orders
        *([sorted([o, a, t] for (o, a), t in st.liq_next_ns.items())] if st.liq_next_ns or ro or st.conditional else []),
        *([ro] if ro or st.conditional else []),
        *([[o.row() for o in st.conditional.values()], st.conditional_check_ns] if st.conditional else []),
    ]


def _restore(engine: Engine, data: Any) -> DerivativesState:
    st = DerivativesState(engine)
    if data is None:
        return st
    perps, positions, leverage, isolated, st.next_tran_id = data[:5]
    st.liq_next_ns = {(o, a): t for o, a, t in data[5]} if len(data) > 5 else {}
    st.reduce_only_orders = {sym: set(ids) for sym, ids in data[6]} if len(data) > 6 else {}
    if len(data) > 7:
        from .conditional import ConditionalOrder, add_conditional

        for r in data[7]:
            add_conditional(st, ConditionalOrder.from_row(r))
        st.conditional_check_ns = data[8]
    st.perps = {r[0]: Perp.from_row(r) for r in perps}
    st.positions = PositionBook(((r[0], r[1]), Position(*r[2:])) for r in positions)
    st.leverage = {(o, s): lev for o, s, lev in leverage}
    st.isolated = IsolatedSet((o, s) for o, s in isolated)
    return st


def _factory(engine: Engine) -> DerivativesState:
    return DerivativesState(engine)


# ------------------------------------------------------------------------------ accounts


def wallet(ledger: Any, owner: str, asset: str) -> Any:
    """The owner's derivatives wallet (cross collateral), or None."""
    return ledger.find(owner, asset, "available", SEGMENT)


def pool_of(ledger: Any, p: Perp) -> Any:
    """The market's PnL pool: pays realised profits, receives realised losses."""
    return ledger.open_system_account(p.quote, "pnl_" + p.symbol.lower(), SEGMENT)


def funding_account(ledger: Any, asset: str) -> Any:
    return ledger.open_system_account(asset, "funding", SEGMENT)


# ------------------------------------------------------------------------------ arithmetic


def bracket_for(p: Perp, notional: int) -> Bracket | None:
    """The bracket whose cap is the first at or above `notional` (None: above the last cap)."""
    for b in p.brackets:
        if notional <= b.cap:
            return b
    return None


def effective_leverage(st: DerivativesState, p: Perp, owner: str, notional: int) -> int:
    """The owner's leverage setting, lowered to the bracket's maximum for `notional`."""
    lev = st.leverage.get((owner, p.symbol), p.default_leverage)
    b = bracket_for(p, notional) or p.brackets[-1]
    return min(lev, b.max_leverage)


def concentration_imr_ppm(p: Perp, size_abs: int, open_interest: int) -> int:
    """dYdX-style: the initial margin rate a concentrated position needs, share × factor."""
    if not p.conc_imr_ppm or open_interest <= 0:
        return 0
    share_ppm = ceil_div(size_abs * PPM, open_interest)
    return ceil_div(share_ppm * p.conc_imr_ppm, PPM)


def notional_at(pos: Position, mark: int, scale: int) -> int:
    return ceil_div(abs(pos.size) * mark, scale)


def maint_margin(p: Perp, pos: Position, mark: int) -> int:
    """`max(0, ceil(notional × mmr) − maint_amount)` at mark (the bracket of that notional)."""
    if not pos.size:
        return 0
    n = notional_at(pos, mark or (pos.cost * p.scale // abs(pos.size)), p.scale)
    b = bracket_for(p, n) or p.brackets[-1]
    return max(0, ceil_div(n * b.mmr_ppm, PPM) - b.maint_amount)


def account_summary(engine: Engine, owner: str, asset: str = "USDT") -> dict[str, int]:
    """The owner's derivatives account in `asset`: wallet, margins, unrealised PnL, equity."""
    st = derivatives_state(engine)
    ledger = engine.ledger
    w = wallet(ledger, owner, asset)
    wallet_balance = w.balance if w is not None else 0
    wallet_free = w.available if w is not None else 0
    order_margin = w.debits_pending if w is not None else 0
    cross_margin = iso_margin = cross_upnl = iso_upnl = maint = 0
    for sym, p in st.perps.items():  # a few markets: never a scan of every position
        pos = st.positions.get((owner, sym))
        if pos is None or p.quote != asset:
            continue
        o = owner
        mark = mark_of_perp(engine, p)
        u = unrealized(pos, mark, p.scale)
        if (o, sym) in st.isolated:
            iso_margin += pos.margin
            iso_upnl += u
        else:
            cross_margin += pos.margin
            cross_upnl += u
            maint += maint_margin(p, pos, mark)
    cross_equity = wallet_balance + cross_margin + cross_upnl
    return {
        "wallet": wallet_balance, "free": wallet_free, "order_margin": order_margin, "cross_margin": cross_margin,
        "isolated_margin": iso_margin, "cross_upnl": cross_upnl, "isolated_upnl": iso_upnl,
        "cross_equity": cross_equity, "equity": cross_equity + iso_margin + iso_upnl, "cross_maint": maint,
        "withdrawable": max(0, wallet_free + min(0, cross_upnl)),
    }


# ------------------------------------------------------------------------------ invariants


def check_invariants(st: DerivativesState) -> None:
    """Longs = shorts per market; the PnL pool holds exactly minus the positions' signed cost; each
    owner's margin accounts hold exactly their positions' margins; the funding account is empty."""
    if not index_matches(st.positions):
        raise InvariantViolation("the position book's owner index differs from its positions")
    engine = st.engine
    if engine is None or not st.perps:
        if st.positions:
            raise InvariantViolation("positions without a listed perpetual")
        return
    ledger = engine.ledger
    net: dict[str, int] = {s: 0 for s in st.perps}
    longs: dict[str, int] = {s: 0 for s in st.perps}
    signed_cost: dict[str, int] = {s: 0 for s in st.perps}
    margins: dict[tuple[str, str, str], int] = {}
    for (owner, sym), pos in st.positions.items():
        p = st.perps[sym]
        if pos.size == 0 or pos.cost < 0 or pos.margin < 0 or pos.extra < 0:
            raise InvariantViolation(f"position {owner}/{sym} is malformed: {pos.row()}")
        net[sym] += pos.size
        if pos.size > 0:
            longs[sym] += pos.size
        signed_cost[sym] += pos.cost if pos.size > 0 else -pos.cost
        kind = "isolated" if (owner, sym) in st.isolated else "margin"
        key = (owner, p.quote, kind)
        margins[key] = margins.get(key, 0) + pos.margin
    for sym, p in st.perps.items():
        if net[sym]:
            raise InvariantViolation(f"{sym}: longs and shorts differ by {net[sym]}")
        if longs[sym] != p.open_interest:
            raise InvariantViolation(f"{sym}: open interest {p.open_interest} != longs {longs[sym]}")
        pool = pool_of(ledger, p)
        if pool.balance != -signed_cost[sym]:
            raise InvariantViolation(f"{sym}: PnL pool {pool.balance} != -(signed cost) {-signed_cost[sym]}")
        if pool.debits_pending or pool.credits_pending:
            raise InvariantViolation(f"{sym}: the PnL pool has pending transfers")
    _check_reduce_only(st)
    trading = engine.components.get("trading")
    for sym in st.perps:  # each owner's open quantity per side, as the contract's seats count it (`OrderSeat`)
        m = trading.markets.get(sym) if trading is not None else None
        check_seats = getattr(m.contract, "check_seats", None) if m is not None else None
        if check_seats is not None:
            check_seats(m)
    for asset in {p.quote for p in st.perps.values()}:
        if funding_account(ledger, asset).balance:
            raise InvariantViolation("the funding account keeps a balance after a funding round")
    for a in ledger.iter_accounts():
        if a.segment == SEGMENT and a.kind in ("margin", "isolated") and a.owner != "system":
            if a.balance != margins.get((a.owner, a.asset, a.kind), 0):
                raise InvariantViolation(f"{a.name}: {a.balance} != its positions' margin")
            if a.debits_pending:
                raise InvariantViolation(f"{a.name}: margin accounts hold no pending transfers")
    if st.columns is not None:  # the margin sweep's mirror holds exactly the positions
        st.columns.verify()


def _check_reduce_only(st: DerivativesState) -> None:
    """A reduce-only order can never open or grow a position: the owner's open reduce-only orders on
    a market are all on the side that reduces the position, and together no larger than it."""
    trading = st.engine.components.get("trading")
    for sym, ids in st.reduce_only_orders.items():
        m = trading.markets[sym]
        room: dict[str, int] = {}
        for oid in ids:
            o = m.orders.get(oid)
            if o is None:
                continue  # ended (cancelled, filled): pruned at the market's next match
            pos = st.positions.get((o.owner, sym))
            if pos is None or (pos.size > 0) == o.is_buy:
                raise InvariantViolation(f"reduce-only order {oid} of {o.owner} would open or grow a {sym} position")
            left = room.get(o.owner, abs(pos.size)) - o.leaves
            if left < 0:
                raise InvariantViolation(f"{o.owner}'s reduce-only orders on {sym} exceed the position {pos.size}")
            room[o.owner] = left


def margin_check(engine: Engine) -> list[tuple[str, str, int, int]]:
    """Mark every position to market and compare each margin account's equity with its maintenance
    margin: `(owner, scope, equity, maintenance)` for each one below (scope: the margin asset for
    a cross account, the symbol for an isolated position), isolated positions first, each list in
    the positions' dict order (a cross account at its first position). What liquidation reads.

    Vectorised over the positions' columnar mirror (`columns.py`, brought up to date from the keys
    changed since the last call), integer-exact; the same result as `margin_check_reference`, the
    plain loop it replaces (tests/derivatives/test_margin_columns.py checks them against each other)."""
    from .columns import columns_of

    st = derivatives_state(engine)
    if not st.positions:
        return []
    return columns_of(st).margin_check(engine)


def margin_check_reference(engine: Engine) -> list[tuple[str, str, int, int]]:
    """`margin_check` as one loop over the positions in Python ints: the reference the columnar
    sweep is tested against (and what it computes, position by position, for the rare position
    whose numbers do not fit its int64 columns). The arithmetic is `unrealized` and
    `maint_margin`'s, inlined."""
    st = derivatives_state(engine)
    if not st.positions:
        return []
    ledger = engine.ledger
    per_market = {}
    for sym, p in st.perps.items():
        b0 = p.brackets[0]
        per_market[sym] = (mark_of_perp(engine, p), p.scale, b0.cap, b0.mmr_ppm, b0.maint_amount, p.brackets, p.quote)
    one_asset = len({p.quote for p in st.perps.values()}) == 1
    cross: dict[Any, list[int]] = {}
    out: list[tuple[str, str, int, int]] = []
    isolated = st.isolated
    for key, pos in st.positions.items():
        mark, scale, cap0, mmr, cum, brackets, quote = per_market[key[1]]
        size = pos.size
        if size > 0:
            upnl = size * mark // scale - pos.cost
            n = -(-size * mark // scale)
        else:
            n = -(size * mark // scale)
            upnl = pos.cost - n
        if n > cap0:
            for b in brackets:
                if n <= b.cap:
                    break
            mmr, cum = b.mmr_ppm, b.maint_amount
        mm = -(-n * mmr // PPM) - cum
        if mm < 0:
            mm = 0
        if isolated and key in isolated:
            eq = pos.margin + upnl
            if eq < mm:
                out.append((key[0], key[1], eq, mm))
            continue
        ck = key[0] if one_asset else (key[0], quote)
        acc = cross.get(ck)
        if acc is None:
            cross[ck] = [pos.margin + upnl, mm]
        else:
            acc[0] += pos.margin + upnl
            acc[1] += mm
    find = ledger.find
    the_asset = next(iter(st.perps.values())).quote
    for ck, (eq, mm) in cross.items():
        owner, asset = (ck, the_asset) if one_asset else ck
        w = find(owner, asset, "available", SEGMENT)
        if w is not None:
            eq += w.balance
        if eq < mm:
            out.append((owner, asset, eq, mm))
    return out
