"""The positions' columnar mirror: what `margin_check` sweeps, in a few numpy passes.

Every position of `DerivativesState.positions` (a `PositionBook`) has a slot in int64 columns:
its size split by the market's scale (`h = |size| // scale`, `l = |size| % scale`), its side,
cost, margin, market, margin account (the `(owner, quote)` cross group) and whether it is
isolated. The book records each key whose position changed (a `Position`'s `size`, `cost` and
`margin` are properties that mark it; inserting and removing mark it too), and `sync()` copies
just those keys into the columns — so the engine's apply pays one set insertion per change, and a
sweep after a batch pays for the positions the batch changed, never for all of them.

The sweep is integer-exact, the same arithmetic as `state.margin_check_reference` (a plain loop):

* `floor(|size| × mark / scale) = h × mark + l × (mark // scale) + l × (mark % scale) // scale`,
  whose every product stays below 2**63 when `h × mark`, `mark` and `scale` are at most
  `V = 2**59 // markets` and `scale**2` fits int64 (decimals ≤ 9); the remainder says whether the
  ceiling is one more;
* `ceil(n × mmr / 10**6) = (n // 10**6) × mmr + ceil((n % 10**6) × mmr / 10**6)`;
* a cross account's sums have at most one position per market, so they stay within ±2**62.

A position whose numbers break those bounds (or a market whose mark or scale does) is computed in
Python ints, position by position, exactly as the reference does, and joins the same sums. A
cross account's wallet is read only when its positions alone are below maintenance: a user's
wallet never holds less than zero (the ledger's no-overdraft flag), so the others cannot be.

The mirror is derived data: not in the snapshot, rebuilt from the book after a restore, and
compared with it by `check_invariants` (`verify`).
"""

from __future__ import annotations

import threading
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from ..engine.core import Engine
from ..errors import InvariantViolation
from .state import PPM, SEGMENT, DerivativesState, Perp, Position, PositionBook, mark_of_perp

__all__ = ["Columns", "columns_of"]

_I64 = np.int64
_FIT = 2**62  # a stored column value is below this, or the position is flagged "does not fit"
_INT64_MAX = 2**63 - 1
_BIG_SEQ = 2**62
_CREATE = threading.Lock()

Key = tuple[str, str]
Arr = npt.NDArray[Any]


def columns_of(st: DerivativesState) -> "Columns":
    """The state's mirror, built from its book on first use."""
    cols = st.columns
    if cols is None or cols.book is not st.positions:
        with _CREATE:
            cols = st.columns
            if cols is None or cols.book is not st.positions:
                cols = Columns(st)
                st.columns = cols
    return cols  # type: ignore[no-any-return]


class Columns:
    _NAMES = ("h", "l", "cost", "margin", "mkt", "grp", "seq")
    _FLAGS = ("long", "iso", "live", "fits")

    def __init__(self, st: DerivativesState) -> None:
        self.st = st
        self.book: PositionBook = st.positions
        self.lock = threading.Lock()
        self.slot_of: dict[Key, int] = {}
        self.keys: list[Key | None] = []
        self.free: list[int] = []
        self.top = 0  # slots ever used (the live ones among them: `live`)
        self.cap = 0
        self.h: Arr = np.zeros(0, _I64)
        self.l: Arr = np.zeros(0, _I64)
        self.cost: Arr = np.zeros(0, _I64)
        self.margin: Arr = np.zeros(0, _I64)
        self.mkt: Arr = np.zeros(0, _I64)
        self.grp: Arr = np.zeros(0, _I64)
        self.seq: Arr = np.zeros(0, _I64)
        self.long: Arr = np.zeros(0, np.bool_)
        self.iso: Arr = np.zeros(0, np.bool_)
        self.live: Arr = np.zeros(0, np.bool_)
        self.fits: Arr = np.zeros(0, np.bool_)
        self.market_of: dict[str, int] = {}
        self.market_syms: list[str] = []
        self.group_of: dict[str, dict[str, int]] = {}  # quote -> owner -> group (the cross account)
        self.group_keys: list[Key] = []
        self.wallets: list[Any] = []  # each group's derivatives wallet (Account), once found
        self.ledger: Any = None
        with self.lock:
            self.book.dirty.clear()
            self.book.marks.n += 1  # (no position's key is in `dirty` now: `MarkCount`)
            self._build()

    # ------------------------------------------------------------------ keeping up with the book

    def _grow(self, need: int) -> None:
        cap = max(1024, self.cap)
        while cap < need:
            cap *= 2
        if cap == self.cap:
            return
        for name in self._NAMES + self._FLAGS:
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[: self.cap] = old
            setattr(self, name, new)
        self.keys.extend([None] * (cap - self.cap))
        self.cap = cap

    def sync(self) -> int:
        """Copy the positions whose keys changed since the last sync; returns how many keys."""
        dirty = self.book.dirty
        if not dirty:
            return 0
        keys = list(dirty)
        dirty.clear()
        self.book.marks.n += 1  # (no position's key is in `dirty` now: `MarkCount`)
        self._put(keys)
        return len(keys)

    def _build(self) -> None:
        """Every position of the book, in its order (one pass over the dict, no lookups by key)."""
        book = self.book
        n = len(book)
        self._grow(n)
        self.top = n
        keys = list(book)
        self.keys[:n] = keys
        self.slot_of = dict(zip(keys, range(n)))
        self._store(range(n), book.items())  # (iterated in place: a list of a million pairs would wake the GC)

    def _put(self, keys: list[Key]) -> None:
        """The positions under `keys` as they are now (removed ones free their slot)."""
        book = self.book
        slot_of, free, names = self.slot_of, self.free, self.keys
        get = dict.get
        gone: list[int] = []
        slots: list[int] = []
        items: list[tuple[Key, Position]] = []
        for key in keys:
            pos: Position | None = get(book, key)
            slot = slot_of.get(key)
            if pos is None:
                if slot is not None:
                    del slot_of[key]
                    names[slot] = None
                    free.append(slot)
                    gone.append(slot)
                continue
            if slot is None:
                if free:
                    slot = free.pop()
                else:
                    slot = self.top
                    self.top += 1
                    if slot >= self.cap:
                        self._grow(slot + 1)
                        names = self.keys
                slot_of[key] = slot
                names[slot] = key
            slots.append(slot)
            items.append((key, pos))
        if gone:
            idx = np.array(gone, _I64)
            self.live[idx] = False
            for name in ("h", "l", "cost", "margin"):
                getattr(self, name)[idx] = 0
        if slots:
            self._store(slots, items)

    def _store(self, slots: Any, items: Any) -> None:
        """Write the (key, position) pairs of `items` into `slots` (a `range` from 0, or a list)."""
        perps, isolated = self.st.perps, self.st.isolated
        market_of, group_of = self.market_of, self.group_of
        hs: list[int] = []
        ls: list[int] = []
        costs: list[int] = []
        margins: list[int] = []
        mkts: list[int] = []
        grps: list[int] = []
        seqs: list[int] = []
        longs: list[bool] = []
        isos: list[bool] = []
        fitss: list[bool] = []
        last_sym = None
        scale = m = 0
        quote = ""
        by_owner: dict[str, int] = {}
        for key, pos in items:
            owner, sym = key
            if sym != last_sym:  # (the book mostly runs market by market)
                p = perps[sym]
                scale, last_sym = p.scale, sym
                found = market_of.get(sym)
                if found is None:
                    found = market_of[sym] = len(self.market_syms)
                    self.market_syms.append(sym)
                m = found
                by_owner = group_of.setdefault(p.quote, {})
                quote = p.quote
            g = by_owner.get(owner)
            if g is None:
                g = by_owner[owner] = len(self.group_keys)
                self.group_keys.append((owner, quote))
                self.wallets.append(None)
            size, cost, margin = pos.size, pos.cost, pos.margin
            a = -size if size < 0 else size
            h = a // scale
            l = a - h * scale
            fits = h < _FIT and 0 <= cost < _FIT and 0 <= margin < _FIT
            if not fits:
                h = l = cost = margin = 0
            hs.append(h)
            ls.append(l)
            costs.append(cost)
            margins.append(margin)
            mkts.append(m)
            grps.append(g)
            seqs.append(pos._seq)
            longs.append(size > 0)
            isos.append(key in isolated)
            fitss.append(fits)
        idx: Any = slice(0, len(slots)) if isinstance(slots, range) else np.asarray(slots, _I64)  # (`_build`: from 0)
        for name, values in (("h", hs), ("l", ls), ("cost", costs), ("margin", margins), ("mkt", mkts), ("grp", grps), ("seq", seqs)):
            getattr(self, name)[idx] = np.array(values, _I64)
        self.long[idx] = np.array(longs, np.bool_)
        self.iso[idx] = np.array(isos, np.bool_)
        self.fits[idx] = np.array(fitss, np.bool_)
        self.live[idx] = True

    # ------------------------------------------------------------------ the sweep

    def margin_check(self, engine: Engine) -> list[tuple[str, str, int, int]]:
        with self.lock:
            self.sync()
            return self._sweep(engine)

    def _sweep(self, engine: Engine) -> list[tuple[str, str, int, int]]:
        st, top = self.st, self.top
        if not self.slot_of:
            return []
        perps = st.perps
        bound = 2**59 // max(1, len(perps))
        markets: list[tuple[Perp, int]] = []
        cols: list[list[int]] = [[] for _ in range(9)]  # mark, mark//scale, mark%scale, scale, h limit, fast, cap0, mmr0, cum0
        for sym in self.market_syms:
            p = perps[sym]
            mark, scale = mark_of_perp(engine, p), p.scale
            b0 = p.brackets[0]
            fast = (0 <= mark <= bound and 0 < scale <= bound and scale * scale <= _INT64_MAX
                    and all(0 <= b.mmr_ppm <= PPM and b.maint_amount >= 0 for b in p.brackets))
            markets.append((p, mark))
            mq, mr = divmod(mark, scale) if fast else (0, 0)
            for col, v in zip(cols, (mark if fast else 0, mq, mr, scale if fast else 1, bound // mark if fast and mark else bound,
                                     int(fast), min(b0.cap, _INT64_MAX), b0.mmr_ppm if fast else 0,
                                     min(b0.maint_amount, _FIT))):
                col.append(v)
        mark_m, mq_m, mr_m, scale_m, hlim_m, fast_m, cap0_m, mmr0_m, cum0_m = (np.array(c, _I64) for c in cols)
        mkt = self.mkt[:top]
        live = self.live[:top]
        h, l, cost, margin = self.h[:top], self.l[:top], self.cost[:top], self.margin[:top]
        slow = live & ~(self.fits[:top] & (fast_m[mkt] != 0) & (h <= hlim_m[mkt]) & (cost <= bound) & (margin <= bound))
        ok = live & ~slow
        # n = ceil(|size| × mark / scale), floor = nf (wraps harmlessly where not `ok`: masked below)
        lr = l * mr_m[mkt]
        scale_g = scale_m[mkt]
        nf = h * mark_m[mkt] + l * mq_m[mkt] + lr // scale_g
        n = nf + (lr % scale_g != 0)
        upnl = np.where(self.long[:top], nf - cost, cost - n)
        mmr, cum = mmr0_m[mkt], cum0_m[mkt]
        over = np.flatnonzero(ok & (n > cap0_m[mkt]))
        if over.size:  # above the first bracket: the bracket of its notional (the last one past every cap)
            for m, (p, _mark) in enumerate(markets):
                if not fast_m[m]:
                    continue
                idx = over[mkt[over] == m]
                if not idx.size:
                    continue
                caps = np.array([min(b.cap, _INT64_MAX) for b in p.brackets], _I64)
                which = np.minimum(np.searchsorted(caps, n[idx], side="left"), len(caps) - 1)
                mmr[idx] = np.array([x.mmr_ppm for x in p.brackets], _I64)[which]
                cum[idx] = np.array([min(x.maint_amount, _FIT) for x in p.brackets], _I64)[which]
        q = n // PPM
        mm = q * mmr + ((n - q * PPM) * mmr + (PPM - 1)) // PPM - cum
        np.maximum(mm, 0, out=mm)
        eq = margin + upnl
        iso = self.iso[:top]
        keys = self.keys
        # isolated positions: each its own account
        iso_rows: list[tuple[int, Key, int, int]] = [
            (int(self.seq[s]), keys[s], int(eq[s]), int(mm[s])) for s in np.flatnonzero(ok & iso & (eq < mm))]  # type: ignore[misc]
        # cross accounts: sums per group, then the wallet of those their positions leave short
        ngroups = len(self.group_keys)
        cross = np.flatnonzero(ok & ~iso)
        g_of = self.grp[cross]
        eqs = np.zeros(ngroups, _I64)
        mms = np.zeros(ngroups, _I64)
        np.add.at(eqs, g_of, eq[cross])
        np.add.at(mms, g_of, mm[cross])
        extra: dict[int, list[int]] = {}
        slow_idx = np.flatnonzero(slow)
        if slow_idx.size:
            marks = {p.symbol: mk for p, mk in markets}
            for s in slow_idx.tolist():
                key = keys[s]
                assert key is not None
                pos = self.book[key]
                p = perps[key[1]]
                e, mmv = _exact(pos, p, marks[key[1]])
                if iso[s]:
                    if e < mmv:
                        iso_rows.append((int(self.seq[s]), key, e, mmv))
                else:
                    acc = extra.setdefault(int(self.grp[s]), [0, 0])
                    acc[0] += e
                    acc[1] += mmv
        cand = np.flatnonzero(mms > eqs)
        groups = cand.tolist()
        eq_c = eqs[cand].tolist()
        mm_c = mms[cand].tolist()
        if extra:
            have = set(groups)
            for g in extra:
                if g not in have:
                    groups.append(g)
                    eq_c.append(int(eqs[g]))
                    mm_c.append(int(mms[g]))
            for i, g in enumerate(groups):
                more = extra.get(g)
                if more is not None:
                    eq_c[i] += more[0]
                    mm_c[i] += more[1]
        cross_rows: list[tuple[int, int, int]] = []
        if groups:
            ledger = engine.ledger
            if ledger is not self.ledger:
                self.ledger = ledger
                self.wallets = [None] * ngroups
            wallets = self.wallets
            accts = list(itemgetter(*groups)(wallets)) if len(groups) > 1 else [wallets[groups[0]]]
            find, gkeys = ledger.find, self.group_keys
            for i, w in enumerate(accts):
                if w is None:
                    g = groups[i]
                    owner, asset = gkeys[g]
                    w = find(owner, asset, "available", SEGMENT)
                    if w is not None:
                        wallets[g] = accts[i] = w
            for g, e, mmv, w in zip(groups, eq_c, mm_c, accts):
                if w is not None:
                    e += w.credits_posted - w.debits_posted  # its balance
                if e < mmv:
                    cross_rows.append((g, e, mmv))
        out: list[tuple[str, str, int, int]] = [(k[0], k[1], e, mmv) for _, k, e, mmv in sorted(iso_rows, key=lambda r: r[0])]
        if cross_rows:
            # each account where the dict order first meets one of its cross positions
            members = np.flatnonzero(live & ~iso)
            first = np.full(ngroups, _BIG_SEQ, _I64)
            np.minimum.at(first, self.grp[members], self.seq[members])
            cross_rows.sort(key=lambda r: int(first[r[0]]))
            gkeys = self.group_keys
            out.extend((gkeys[g][0], gkeys[g][1], e, mmv) for g, e, mmv in cross_rows)
        return out

    # ------------------------------------------------------------------ checking the mirror

    def verify(self) -> None:
        """The mirror holds exactly the book's positions (after a sync): `check_invariants`."""
        with self.lock:
            self.sync()
            st, top = self.st, self.top
            live_col = self.live[:top].tolist()  # (Python lists: one conversion, not a numpy read per value)
            live = sum(live_col)
            if live != len(self.book) or len(self.slot_of) != live:
                raise InvariantViolation(f"position columns hold {live} positions, the book {len(self.book)}")
            h_c, l_c, cost_c, margin_c = (getattr(self, n)[:top].tolist() for n in ("h", "l", "cost", "margin"))
            mkt_c, grp_c, seq_c = (getattr(self, n)[:top].tolist() for n in ("mkt", "grp", "seq"))
            long_c, iso_c, fits_c = (getattr(self, n)[:top].tolist() for n in ("long", "iso", "fits"))
            for key, pos in self.book.items():
                s = self.slot_of.get(key)
                if s is None or self.keys[s] != key or not live_col[s]:
                    raise InvariantViolation(f"position {key} is missing from the columns")
                p = st.perps[key[1]]
                h, l = divmod(abs(pos.size), p.scale)
                fits = h < _FIT and 0 <= pos.cost < _FIT and 0 <= pos.margin < _FIT
                want = (h, l, pos.cost, pos.margin) if fits else (0, 0, 0, 0)
                if ((h_c[s], l_c[s], cost_c[s], margin_c[s]) != want or fits_c[s] != fits or long_c[s] != (pos.size > 0)
                        or iso_c[s] != (key in st.isolated) or seq_c[s] != pos._seq
                        or self.market_syms[mkt_c[s]] != key[1] or self.group_keys[grp_c[s]] != (key[0], p.quote)):
                    raise InvariantViolation(f"position {key} differs in the columns")


def _exact(pos: Position, p: Perp, mark: int) -> tuple[int, int]:
    """(margin + unrealised PnL, maintenance margin) of one position in Python ints: the
    reference's arithmetic (`state.margin_check_reference`)."""
    size, scale = pos.size, p.scale
    if size > 0:
        upnl = size * mark // scale - pos.cost
        n = -(-size * mark // scale)
    else:
        n = -(size * mark // scale)
        upnl = pos.cost - n
    b0 = p.brackets[0]
    mmr, cum = b0.mmr_ppm, b0.maint_amount
    if n > b0.cap:
        for b in p.brackets:
            if n <= b.cap:
                break
        mmr, cum = b.mmr_ppm, b.maint_amount
    mm = -(-n * mmr // PPM) - cum
    return pos.margin + upnl, max(mm, 0)
