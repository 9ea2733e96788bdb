"""Deterministic simulation (TigerBeetle's VOPR) of one durable engine shard, checked by an auditor.

`run_simulation(seed, steps, data_dir)` drives a real `Node` on real files with a seeded stream of
valid and invalid commands for every module — ledger transfers and two-phase holds; spot orders
(limit GTC/IOC/FOK, post-only, market by quantity and by quote amount, stop-limit, stop-market,
self-trade prevention, client order ids), cancels, cancel-all, amends and batches; custody deposits
(observed, credited, quarantined and reviewed, finalised, reorganised away), sweeps, treasury
funding and withdrawals through every state of their machine with policy decisions, approvals and
manual review; halts at every scope and level, lifted with a valid operator quorum and refused
with forged, replayed, duplicated or too few approvals; operator-set rotation — interleaved with
crashes (the process abandoned, often with a torn half-written batch at the journal's end),
recovery from snapshot plus journal, and snapshots.

Before each command the independent model (`model/`, the auditor) predicts what it must do; after
it, the runner checks:

* refused vs accepted (and the error code), and the command's normalised events (orders accepted,
  rejected with which reason, rested, traded at which price and quantity with which fees, canceled,
  expired with what released; ledger result codes; expiries);
* every ledger account (posted, pending debits, pending credits), every open order (side, price,
  what is left, what is held, resting or armed), client holds, deposits, withdrawals, frozen
  accounts, halts and the operator set — against the model;
* invariants: every asset sums to zero, no user account overdrawn, no book crossed, each market's
  clearing reservations equal its open orders' holds, plus the engine's own `check_invariants`;
* a refused command changed nothing: the state hash is unchanged (or, if it was journaled and
  rejected in `apply`, everything but the sequencer's stamps is);
* after a crash, the recovered state hash equals the hash before it; at the end a full replay of the
  journal from genesis reproduces the live hash.

Everything random comes from `random.Random(seed)` (the node's clock and entropy too), so a seed
replays a run exactly. A violation raises `SimulationFailure` naming the seed, the step, the command,
the first differing field and the command line that reproduces it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec

from ..app import new_node, replay_journal
from ..engine.commands import Batch, encode
from ..engine.core import CommandRejected
from ..engine.node import Ack, Node, rejection_error
from ..errors import RingfenceError
from ..journal.journal import encode_record, segment_paths
from ..ledger.commands import CreateTransfers
from ..ledger.model import Transfer
from . import probe
from .model import Expect, Model, ModelError, Refuse
from .workload import ACTIONS, CUSTODY, PERP_ACTIONS, Workload

__all__ = ["run_simulation", "SimulationFailure", "SimulationResult", "ACTIONS", "PERP_ACTIONS"]

COMPARED_EVENTS = frozenset({"transfers", "expired_transfer", "accepted", "rejected", "rested", "trade", "canceled",
                             "expired", "amended", "triggered", "filled", "status", "refprice"})


#: The answers of a shard halted by a broken invariant: the command that broke it, and every later one.
SHARD_HALT_CODES = frozenset({"RF_INVARIANT", "RF_SHARD_HALTED"})


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, step: int, what: str, command: str = "", workload: str = "") -> None:
        where = f"\n  command: {command}" if command else ""
        option = f" --workload {workload}" if workload else ""
        super().__init__(f"simulation seed={seed} failed at step {step}: {what}{where}\n"
                         f"reproduce with: ringfence sim --seed {seed} --steps {step + 1}{option}")
        self.seed, self.step, self.what, self.command = seed, step, what, command


@dataclass
class SimulationResult:
    seed: int
    steps: int
    commands_acknowledged: int = 0
    commands_rejected: int = 0
    transfers_failed: int = 0
    orders_rejected: int = 0
    trades: int = 0
    halted_refusals: int = 0
    crashes: int = 0
    torn_tails: int = 0
    durable_unacknowledged: int = 0
    group_commits: int = 0
    snapshots: int = 0
    state_hash: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    #: The perpetuals workload: what its fills and funding rounds did (position opened, increased,
    #: reduced, closed, flipped; realised profit / loss; funding paid; order rejections by reason).
    perps: dict[str, int] = field(default_factory=dict)

    def _tally(self, what: str) -> None:
        self.perps[what] = self.perps.get(what, 0) + 1


def _normalise(events: list[Any]) -> list[tuple[Any, ...]]:
    """The engine's events in the auditor's shape (only the kinds the auditor predicts one by one)."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        n = type(e).__name__
        if n == "TransfersCreated":
            out.append(("transfers", [tuple(f) for f in e.failures]))
        elif n == "TransferExpired":
            out.append(("expired_transfer", e.pending_id, e.released))
        elif n == "OrderAccepted":
            out.append(("accepted", e.order_id, e.hold))
        elif n == "OrderRejected":
            out.append(("rejected", e.action, e.reason))
        elif n == "OrderRested":
            out.append(("rested", e.order_id, e.price, e.leaves))
        elif n == "Trade":
            out.append(("trade", e.trade_id, e.price, e.quantity, e.quote_qty, e.taker_order_id, e.maker_order_id,
                        e.taker_fee, e.maker_fee))
        elif n == "OrderCanceled":
            out.append(("canceled", e.order_id, e.reason, e.released, e.leaves))
        elif n == "OrderExpired":
            out.append(("expired", e.order_id, e.reason, e.released, e.leaves))
        elif n == "OrderAmended":
            out.append(("amended", e.order_id, e.price, e.quantity, e.leaves, e.kept_priority))
        elif n == "OrderFilled":
            out.append(("filled", e.order_id, e.quote_left, e.released))
        elif n == "OrderTriggered":
            out.append(("triggered", e.order_id, e.last_price))
        elif n == "MarketStatusChanged":
            out.append(("status", e.symbol, e.status, e.reason))
        elif n == "ReferencePriceSet":
            out.append(("refprice", e.symbol, e.price))
    return out


def _first_difference(name: str, engine: dict[Any, Any], model: dict[Any, Any]) -> str | None:
    if engine == model:
        return None
    for key in sorted(set(engine) | set(model), key=repr):
        e, m = engine.get(key), model.get(key)
        if e != m:
            return f"{name}[{key!r}]: engine {e!r}, model {m!r}"
    return None


class _Sim(Workload):
    def __init__(self, seed: int, steps: int, data_dir: Path, crash_pct: int,
                 on_step: Callable[[int], None] | None, fsync: bool, workload: str = "") -> None:
        self.seed, self.steps, self.data_dir = seed, steps, data_dir
        self.rng = random.Random(seed)
        self._entropy_rng = random.Random(seed ^ 0x5EED)
        if workload not in ("", "perps"):
            raise ValueError(f"workload must be '' (every spot module) or 'perps', not {workload!r}")
        self.workload, self.perps_mode = workload, workload == "perps"
        self.weights = dict(PERP_ACTIONS if self.perps_mode else ACTIONS, **{"fault.crash": crash_pct})
        self.on_step, self.fsync = on_step, fsync
        self.model = Model()
        self.result = SimulationResult(seed, steps)
        self.planned_ts = 1_700_000_000_000_000_000
        self.step = -1
        self.next_tid = 1
        self.serial = 0
        self.tip = {"bitcoin": 100, "ethereum": 1000}
        self.tokens: dict[str, str] = {}  # withdrawal id -> e-mail token
        self.txids: dict[str, str] = {}  # withdrawal id -> txid it was signed with
        self.listed: dict[tuple[str, str], list[str]] = {}  # (user, asset) -> allow-listed addresses
        self.operator_keys: dict[str, Any] = {}  # staff id -> StaffKey of the active operators
        self.node = self._new_node()
        self.keys: dict[int, tuple[str, str, str, str]] = {}
        self.ids: dict[tuple[str, str, str, str], int] = {}

    def _clock(self) -> int:
        return self.planned_ts

    def _new_node(self) -> Node:
        node = new_node(self.data_dir, clock=self._clock, entropy=self._entropy_rng.randbytes, fsync=self.fsync,
                    segment_bytes=self.rng.choice([4_000, 64_000, 1 << 26]))
        node.open()
        return node

    @property
    def engine(self) -> Any:
        return self.node.engine

    def fail(self, what: str, command: Any = None) -> None:
        raise SimulationFailure(self.seed, self.step, what, repr(command) if command is not None else "", self.workload)

    def _refresh_ids(self) -> None:
        self.keys = probe.account_ids(self.engine)
        self.ids = {k: i for i, k in self.keys.items()}

    def do(self, command: Any, predict: Callable[[], list[tuple[Any, ...]]], *, malformed: bool = False) -> list[Any] | None:
        """Predict with the model, run on the engine, compare outcome, events and state.

        `malformed`: the command is refused at the edge (types, unknown asset...) before any halt
        is consulted, so the model's guard is not asked."""
        model, engine = self.model, self.engine
        model.time_effects = False
        self.planned_ts += self.rng.randrange(1_000, 5_000_000)
        previous_now = model.now_ns
        model.now_ns = max(self.planned_ts, model.now_ns)
        expired = model.expire(model.now_ns)
        index_before = model.index_save()
        index_events = model.index_tick(engine.last_seq + 1)
        funding_before = model.perp_tick()
        self._refresh_ids()
        try:
            if not malformed:
                model.guard(command, self.keys)
            expect = Expect(events=[("expired_transfer", pid, amount) for pid, amount in expired] + index_events + predict())
        except Refuse as refusal:
            expect = Expect(refused=True, code=refusal.code, note=refusal.note)
        except ModelError as err:
            self.fail(f"the auditor's model broke: {err}", command)
            raise
        # "A refused command changes nothing" needs the hashes before; they cost an encoding of the
        # whole state, so take them only when the model expects a refusal (if the engine refuses
        # what the model accepts, the run fails on that anyway).
        only_rejections = not expect.refused and bool(expect.events) and all(e[0] == "rejected" for e in expect.events)
        check_unchanged = expect.refused or only_rejections
        hash_before = engine.state_hash() if check_unchanged else ""
        domain_before = probe.domain_state(engine) if check_unchanged else None
        seq_before = engine.last_seq
        events: list[Any] | None = None
        error: RingfenceError | None = None
        try:
            events = self.node.execute(command)
        except RingfenceError as err:
            error = err
        journaled = engine.last_seq != seq_before
        if not journaled:
            model.unexpire(expired)
            model.perp_restore(funding_before)
            model.index_restore(index_before)
            model.now_ns = previous_now
        if error is not None:
            self._no_shard_halt(error, command)
            self.result.commands_rejected += 1
            if error.code == "RF_HALTED":
                self.result.halted_refusals += 1
            if not expect.refused:
                self.fail(f"refused with {error.code} ({error}) but the model expects it to be accepted "
                          f"with events {[e for e in expect.events if e[0] in COMPARED_EVENTS]}", command)
            if expect.code is not None and error.code != expect.code:
                self.fail(f"refused with {error.code} ({error}); the model expects {expect.code} ({expect.note})", command)
            if not journaled and engine.state_hash() != hash_before:
                self.fail("a command refused before journaling changed the state hash", command)
            if journaled and not expired and not model.time_effects:
                self._unchanged(domain_before, f"a command rejected in apply ({error.code}: {error}) changed", command)
        else:
            assert events is not None
            self.result.commands_acknowledged += 1
            if expect.refused:
                self.fail(f"accepted, but the model expects a refusal ({expect.code}: {expect.note}); "
                          f"events {_normalise(events)}", command)
            if only_rejections and not model.time_effects:
                self._unchanged(domain_before, "every action of the command was rejected, yet it changed", command)
            got = _normalise(events)
            want = [e for e in expect.events if e[0] in COMPARED_EVENTS]
            if got != want:
                for i, (g, w) in enumerate(zip(got, want)):
                    if g != w:
                        self.fail(f"event {i}: engine {g}, model {w}", command)
                self.fail(f"engine emitted {len(got)} events {got[len(want):]}, model {len(want)} {want[len(got):]}", command)
            if self.perps_mode:
                self._tally_perps(events, got)
            for g in got:
                if g[0] == "transfers":
                    self.result.transfers_failed += len(g[1])
                elif g[0] == "rejected":
                    self.result.orders_rejected += 1
                elif g[0] == "trade":
                    self.result.trades += 1
        self.audit(command)
        return events

    def a_fault_group_commit(self) -> None:
        """2-4 commands from the workload sent as one batch: prechecked against the state before the
        batch, journaled as one record (split where a precheck needs an earlier command applied),
        one timestamp. The model applies them in order; each outcome and the state are compared."""
        captured: list[tuple[Any, Callable[[], list[tuple[Any, ...]]], bool]] = []

        def capture(command: Any, predict: Callable[[], list[tuple[Any, ...]]], *, malformed: bool = False) -> None:
            captured.append((command, predict, malformed))

        # A rotation's removal signs the staff register's version its addition makes, an index admin
        # change the index version the one before it makes: not in one batch.
        names = [n for n in self.weights if not n.startswith(("fault.", "halt.raise", "operators.rotate", "index.feed_key"))]
        self.do = capture  # type: ignore[method-assign]  # the generators build; nothing runs yet
        try:
            for _ in range(self.rng.randrange(2, 5)):
                getattr(self, "a_" + self.rng.choice(names).replace(".", "_"))()
        finally:
            del self.do
        if captured:
            self._do_group(captured)

    def _do_group(self, captured: list[tuple[Any, Callable[[], list[tuple[Any, ...]]], bool]]) -> None:
        model, engine, node = self.model, self.engine, self.node
        model.time_effects = False
        self.planned_ts += self.rng.randrange(1_000, 5_000_000)
        previous_now = model.now_ns
        model.now_ns = max(self.planned_ts, model.now_ns)
        expired = model.expire(model.now_ns)
        index_before = model.index_save()
        index_events = model.index_tick(engine.last_seq + 1)
        funding_before = model.perp_tick()
        expects: list[Expect] = []
        for command, predict, malformed in captured:
            self._refresh_ids()
            try:
                if not malformed:
                    model.guard(command, self.keys)
                expects.append(Expect(events=predict()))
            except Refuse as refusal:
                expects.append(Expect(refused=True, code=refusal.code, note=refusal.note))
            except ModelError as err:
                self.fail(f"the auditor's model broke: {err}", command)
        seq_before = engine.last_seq
        acks, items = [], []
        for command, _, _ in captured:  # what Node.execute_many does, keeping every answer
            ack = Ack(node._acked)
            acks.append(ack)
            try:
                ack.command, ack.raw = node.prepare(command)
            except RingfenceError as err:
                ack._resolve(error=err)
                continue
            items.append(ack)  # the Ack carries the prepared command (Node.submit)
        node._commit(items)
        if engine.last_seq == seq_before:
            model.unexpire(expired)
            model.perp_restore(funding_before)
            model.index_restore(index_before)
            model.now_ns = previous_now
        expiry_events = [("expired_transfer", pid, amount) for pid, amount in expired] + index_events
        for (command, _, _), ack, expect in zip(captured, acks, expects):
            journaled = ack.events is not None
            got = _normalise(ack.events or [])
            # The hold expiries of this moment come with the first command that was journaled.
            want_expiries, expiry_events = (expiry_events, []) if journaled else ([], expiry_events)
            if [e for e in got if e[0] == "expired_transfer"] != [e for e in want_expiries if e[0] == "expired_transfer"]:
                self.fail(f"in a group commit: engine expiries {got}, model {want_expiries}", command)
            rejected = [e for e in ack.events or [] if isinstance(e, CommandRejected)]
            error = rejection_error(rejected[0]) if rejected else ack.error
            if error is not None and not isinstance(error, RingfenceError):
                raise error  # not a refusal: a failure of the run
            if error is not None:
                self._no_shard_halt(error, command, "in a group commit: ")
                self.result.commands_rejected += 1
                if not expect.refused:
                    self.fail(f"in a group commit: refused with {error.code} ({error}) but the model expects it accepted", command)
                if expect.code is not None and error.code != expect.code:
                    self.fail(f"in a group commit: refused with {error.code} ({error}); the model expects {expect.code} "
                              f"({expect.note})", command)
                continue
            self.result.commands_acknowledged += 1
            if expect.refused:
                self.fail(f"in a group commit: accepted, but the model expects a refusal ({expect.code}: {expect.note}); "
                          f"events {got}", command)
            want = want_expiries + [e for e in expect.events if e[0] in COMPARED_EVENTS]
            if got != want:
                self.fail(f"in a group commit: engine events {got}, model {want}", command)
        self.result.group_commits += 1
        self.audit(captured[-1][0])

    def _tally_perps(self, events: list[Any], got: list[tuple[Any, ...]]) -> None:
        tally = self.result._tally
        for e in events:
            n = type(e).__name__
            if n == "PositionChanged":
                before = e.size - e.trade_qty
                if before == 0:
                    tally("position opened")
                elif e.size == 0:
                    tally("position closed")
                elif (before > 0) != (e.size > 0):
                    tally("position flipped")
                elif abs(e.size) > abs(before):
                    tally("position increased")
                else:
                    tally("position reduced")
                if e.realized_pnl:
                    tally("realised profit" if e.realized_pnl > 0 else "realised loss")
                if e.insurance_covered:
                    tally("loss covered by insurance")
                if (e.owner, e.symbol) in self.model.isolated:
                    tally("isolated fill")
            elif n == "LiquidationStep":
                tally("liquidation step")
                if e.filled:
                    tally("liquidation step that traded")
                kind = "isolated" if (e.owner, e.symbol) in self.model.isolated else "cross"
                tally(f"{kind} liquidation step")
                if e.filled:
                    tally(f"{kind} liquidation step that traded")
            elif n == "AutoDeleveraged":
                tally("auto-deleveraged close")
            elif n == "OrderExpired" and e.reason == "MARKET_REDUCE_ONLY":
                tally("maker expired: the market only reduces")
            elif n == "FundingSettled":
                tally("funding round")
                if e.owners:
                    tally("funding round with payments")
                    tally("funding rate positive" if e.rate_ppm > 0 else "funding rate negative")
                if e.insurance_covered:
                    tally("funding shortfall paid by insurance")
        for g in got:
            if g[0] == "rejected":
                tally("rejected " + g[2])

    def _no_shard_halt(self, error: RingfenceError, command: Any, where: str = "") -> None:
        """A broken invariant halts the shard (the command undone, every later one refused): never
        a refusal the model could expect, always a failure of the run, named as such."""
        if error.code in SHARD_HALT_CODES:
            self.fail(f"{where}the shard halted on a broken engine invariant ({error.code}: {error})", command)

    def _unchanged(self, before: Any, what: str, command: Any) -> None:
        diff = probe.first_state_difference(before, probe.domain_state(self.engine))
        if diff is not None:
            self.fail(f"{what} {diff}", command)

    def audit(self, command: Any = None) -> None:
        """The engine's whole observable state against the model, and the invariants."""
        engine, model = self.engine, self.model
        accounts = probe.accounts(engine)
        for name, got, want in (
            ("accounts", accounts, model.account_rows()),
            ("orders", probe.orders(engine), model.order_rows()),
            ("markets", probe.markets(engine), model.market_rows()),
            ("client holds", probe.client_pendings(engine, model.pending_rows()), model.pending_rows()),
            ("withdrawals", probe.withdrawals(engine), model.withdrawal_rows()),
            ("sweeps and fundings", probe.internal_transfers(engine), model.internal_rows()),
            ("next nonces", probe.next_nonces(engine),
             {name: model.next_nonce.get(name, 0) for name, (chain, _) in model.wallets.items() if chain == "ethereum"}),
            ("deposits", probe.deposits(engine), {k: (d.state, d.final) for k, d in model.deposits.items()}),
            ("halts", probe.halts(engine), {k: (h.kind, h.scope, h.level) for k, h in model.halts.items()}),
            ("index", probe.index(engine), model.index_rows()),
            ("positions", probe.positions(engine), model.position_rows()),
            ("perpetuals", probe.perps(engine), model.perp_rows()),
            ("liquidation cool-downs", probe.liquidation_cooldowns(engine), model.cooldown_rows()),
        ):
            diff = _first_difference(name, got, want)
            if diff is not None:
                self.fail(diff, command)
        if probe.frozen_accounts(engine) != model.frozen_accounts:
            self.fail(f"frozen accounts: engine {sorted(probe.frozen_accounts(engine))}, model {sorted(model.frozen_accounts)}", command)
        version, threshold, ops = probe.operators(engine)
        if (version, threshold, ops) != (model.staff_version, model.threshold, sorted(model.operators)):
            self.fail(f"operators: engine v{version} {threshold}-of-{ops}, model v{model.staff_version} "
                      f"{model.threshold}-of-{sorted(model.operators)}", command)
        # Invariants, computed here from the engine's accounts and books (not by the engine).
        totals: dict[str, list[int]] = {}
        for (owner, asset, kind, segment), (posted, debits_pending, credits_pending) in accounts.items():
            t = totals.setdefault(asset, [0, 0])
            t[0] += posted
            t[1] += debits_pending - credits_pending
            if owner != "system" and posted - debits_pending < 0:
                self.fail(f"user account {owner}:{asset}:{kind}:{segment} is overdrawn ({posted} posted, {debits_pending} held)", command)
        for asset, (posted, pending) in totals.items():
            if posted or pending:
                self.fail(f"{asset} does not sum to zero: posted {posted}, pending {pending}", command)
        for symbol, (bid, ask) in probe.best_prices(engine).items():
            if bid and ask and bid >= ask:
                self.fail(f"{symbol} book is crossed: best bid {bid} >= best ask {ask}", command)
        books = probe.orders(engine)
        for symbol, (base_pending, quote_pending) in probe.clearing_pending(engine).items():
            held_base = sum(row[4] for row in books.get(symbol, {}).values() if row[1] == "SELL")
            held_quote = sum(row[4] for row in books.get(symbol, {}).values() if row[1] == "BUY")
            if symbol in model.perps:  # a perpetual's orders hold margin in the quote asset, both sides
                held_base, held_quote = 0, held_base + held_quote
            if (base_pending, quote_pending) != (held_base, held_quote):
                self.fail(f"{symbol}: clearing reserves {(base_pending, quote_pending)} but open orders hold "
                          f"{(held_base, held_quote)}", command)
        holds = probe.withdrawal_holds(engine)
        for asset in sorted(set(holds) | {c.asset for c in CUSTODY}):
            held = holds.get(asset, 0)
            clearing = accounts.get(("system", asset, "clearing", "-"), (0, 0, 0))
            if clearing[2] != held:
                self.fail(f"{asset}: the withdrawal clearing account reserves {clearing[2]} but open withdrawals "
                          f"hold {held}", command)
        if probe.perp_settings(engine) != model.perp_settings():
            self.fail(f"leverage and margin type: engine {probe.perp_settings(engine)}, model {model.perp_settings()}", command)
        # Perpetuals: longs = shorts in every market (money is conserved by the sums above).
        net: dict[str, int] = {}
        for (_, symbol), (size, *_rest) in probe.positions(engine).items():
            net[symbol] = net.get(symbol, 0) + size
        for symbol, n in net.items():
            if n:
                self.fail(f"{symbol}: longs and shorts differ by {n}", command)
        if probe.shard_halted(engine) is not None:
            self.fail(f"the shard is halted: {probe.shard_halted(engine)}", command)
        try:
            engine.check_invariants()
        except AssertionError as err:
            self.fail(f"engine invariant: {err}", command)

    def run(self) -> SimulationResult:
        self.setup()
        if self.perps_mode:
            self.setup_perps()
        names = list(self.weights)
        weights = [self.weights[n] for n in names]
        for step in range(self.steps):
            self.step = step
            action = self.rng.choices(names, weights=weights)[0]
            self.result.counts[action] = self.result.counts.get(action, 0) + 1
            getattr(self, "a_" + action.replace(".", "_"))()
            if self.on_step is not None:
                self.on_step(step)
        self.step = self.steps
        live = self.engine.state_hash()
        self.node.close()
        replayed, _, _ = replay_journal(self.data_dir, use_snapshots=False)
        if replayed.state_hash() != live:
            self.fail("a full replay of the journal does not reproduce the live state hash")
        self.result.state_hash = live
        return self.result

    def a_fault_snapshot(self) -> None:
        self.node.snapshot()
        self.result.snapshots += 1

    def a_fault_crash(self) -> None:
        if self.rng.random() < 0.2:  # float-ok
            return self._crash_after_write()
        before, last_seq = self.engine.state_hash(), self.engine.last_seq
        writer = self.node.writer
        assert writer is not None
        if self.rng.random() < 0.7:  # float-ok: die in the middle of writing the next batch
            record, _ = encode_record(self.rng.randbytes(self.rng.randrange(10, 400)), writer.next_seq, 1, writer.last_hash)
            _, _, tail, end = writer.position()  # its segment's logical end (pre-zeroed: zeros follow)
            if tail is None:  # no segment open (the last one is full): at the end of the last one, as before
                tail = segment_paths(self.data_dir / "journal")[-1]
                end = tail.stat().st_size
            with open(tail, "r+b") as fh:
                fh.seek(end)
                fh.write(record[: self.rng.randrange(1, len(record))])
            self.result.torn_tails += 1
        self.node.abandon()  # the process dies: no clean close, nothing synced, the lock released
        self.node = self._new_node()
        self.result.crashes += 1
        if self.engine.last_seq != last_seq or self.engine.state_hash() != before:
            self.fail(f"recovery after a crash lost or invented state (seq {last_seq} -> {self.engine.last_seq})")
        self._refresh_ids()
        self.audit()

    def _crash_after_write(self) -> None:
        """The batch reached the journal whole, then the process died before applying it: nobody was
        told, yet it is durable, so recovery applies it — and the model must agree with the result."""
        model, writer = self.model, self.node.writer
        assert writer is not None
        aid, key = self._user_account()
        world = self.ids[("system", key[1], "world", "-")]
        transfers = [Transfer(self._tid(), world, aid, self._amount(key[1]))]
        command = CreateTransfers(transfers)
        _, raw = self.node.prepare(command)
        self.planned_ts += self.rng.randrange(1_000, 5_000_000)
        ts = max(self.planned_ts, model.now_ns)
        writer.append(encode(Batch(writer.next_seq, ts, self._entropy_rng.randbytes(32), [msgspec.Raw(raw)])),
                      writer.next_seq, 1)
        self.node.abandon()
        self.node = self._new_node()
        self.result.crashes += 1
        self.result.durable_unacknowledged += 1
        model.now_ns = ts
        model.expire(ts)
        model.index_tick(self.engine.last_seq)  # the recovered command's own sequence number
        model.perp_tick()
        self._refresh_ids()
        try:
            model.guard(command, self.keys)
            model.create_transfers(transfers, self.keys)
        except Refuse:
            pass  # refused in apply during recovery (a halt): nothing changed
        self.audit(command)


def run_simulation(
    seed: int,
    steps: int,
    data_dir: Path,
    *,
    crash_probability_pct: int = 4,
    on_step: Callable[[int], None] | None = None,
    fsync: bool = False,
    workload: str = "",
) -> SimulationResult:
    """Run `steps` audited steps from `seed` on a node in `data_dir` (empty or absent).

    `fsync=False` by default: a simulated crash abandons the process, not the operating system, so
    what was written is still there; the torn tail is written on purpose.
    `workload="perps"`: the linear-perpetuals workload (`PERP_ACTIONS`) instead of the spot one.
    """
    return _Sim(seed, steps, Path(data_dir), crash_probability_pct, on_step, fsync, workload).run()
