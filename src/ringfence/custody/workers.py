"""Custody workers: the loops that do I/O and turn chain/signing results into engine commands.

* `DepositWatcher` scans a chain, reports reorgs (`ReorgDeposits`), observes deposits
  (`ObserveDeposit`), scores them with a KYT `Scorer` once they have the asset's credit depth
  (`CreditDeposit`) and marks them final at finality depth (`FinalizeDeposit`).
* `WithdrawalWorker` drives each withdrawal one step per call, reading only the engine's journaled
  state: risk review (`RecordRiskReview`), policy decision (`DecideWithdrawal`), `AuthorizeSigning`
  once approvals/delays allow, signing through a `Signer` and `RecordSignedTx` **before** any
  broadcast, broadcast of exactly the journaled bytes (`RecordBroadcast`), confirmations
  (`SettleWithdrawal` / `FailWithdrawal`).
* `Balancer` executes `wallets.plan_balancing`: sweeps deposit addresses into hot, refills hot from
  warm/cold, drains hot to cold; each confirmed move becomes `RecordInternalTransfer`.

Crash safety: every step is decided from journaled state, so a worker that dies anywhere simply
redoes the step on restart. The only non-idempotent effect — sending a transaction — happens after
its bytes are journaled, and re-sending the same bytes is a no-op on the chain (`already_known`).
Tests inject `crash_at` to die between the effect and the command that records it.

Engine state is read only through `node.read` (between batches, when a sequencer thread applies
commands concurrently), and what a worker keeps is a copy (`_copies`), never a live record that
the next batch would change under it.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import Conflict, InsufficientFunds, RingfenceError, SigningRefused, TransactionRejected, ValidationError
from ..chains.adapter import Direction, TxState
from .commands import (
    AuthorizeSigning, CreditDeposit, DecideWithdrawal, FailWithdrawal, FinalizeDeposit, ObserveDeposit,
    RecordBroadcast, RecordInternalTransfer, RecordRiskReview, RecordSignedBatch, RecordSignedTx, RelocateDeposit, ReorgDeposits, SettleWithdrawal,
    custody_state,
)
from .deposits import CREDITED_STATES
from .kyt import QUARANTINE_ABOVE, KytInput, Scorer
from .wallets import btc_tx_inputs, build_btc_payment, build_eth_payment, eth_signing_digest
from .withdrawal_cmds import MAX_BATCH
from .withdrawals import IN_FLIGHT_STATES, OPEN_STATES, RiskFacts, WithdrawalRec, assess_risk

__all__ = ["DepositWatcher", "WithdrawalWorker", "HotWallet", "SimulatedCrash", "MAX_STEPS"]

MAX_STEPS = 10_000  # commands one `step()` may submit
#: Bitcoin withdrawals one transaction pays by default: enough to sign one input per coin instead of
#: one transaction per withdrawal, few enough that a transaction of one coin per withdrawal stays
#: small (a node hashes every input's signature over the whole transaction).
DEFAULT_BATCH = 25


class SimulatedCrash(Exception):
    """Raised by a worker at an injected crash point (tests only)."""


def _copies(records: Any) -> list[Any]:
    """Copies of engine records, taken inside `node.read`, for use after it."""
    return [copy.copy(r) for r in records]


def _crash(worker: Any, point: str) -> None:
    if getattr(worker, "crash_at", None) == point:
        worker.crash_at = None
        raise SimulatedCrash(point)


def _already_observed(state: Any, chain: str, t: Any, block: Any) -> bool:
    from .deposits import deposit_key

    d = state.deposits.get(deposit_key(chain, t.txid, t.index))
    if d is None or d.state in ("dropped", "reversed"):
        return False
    # a credited deposit found again in another block (a rescan after a restart, whose chain
    # replaced the block) is the confirmations step's business (`RelocateDeposit`), not a new sighting
    return d.state != "seen" or (d.height, d.block_hash) == (block.height, block.block_hash)


def resume_height(state: Any, chain: str) -> int:
    """Where a deposit watcher starts scanning, from the journaled deposits alone: just below the
    oldest non-final deposit, and never above the newest deposit seen (every block after it must be
    scanned again: it may hold deposits made while nobody watched). 0 without deposits."""
    seen = [d for d in state.deposits.values() if d.chain == chain]
    if not seen:
        return 0
    start = max(d.height for d in seen)
    open_heights = [d.height for d in seen if not d.final and d.state in ("seen", *CREDITED_STATES)]
    if open_heights:
        start = min(start, min(open_heights))
    return max(0, start - 1)


class DepositWatcher:
    def __init__(self, node: Any, adapter: Any, scorer: Scorer, *, since_height: int | None = None) -> None:
        self.node = node
        self.adapter = adapter
        self.scorer = scorer
        self.chain = adapter.chain
        # None: resume from the journal on the first poll (`resume_height`): a restarted watcher
        # rescans from its oldest open deposit (ObserveDeposit is idempotent by (chain, txid, index)).
        self.cursor: int = 0
        self._resume = since_height is None
        if since_height is not None:
            self.cursor = since_height
        self.crash_at: str | None = None
        self.errors: dict[str, str] = {}  # deposit key -> why its last step was refused

    def poll(self) -> int:
        """One pass: scan new blocks, then credit/finalize by confirmations. Returns commands sent."""
        sent = 0
        if self._resume:
            self.cursor = self.node.read(lambda e: resume_height(custody_state(e), self.chain))
            self._resume = False
        for _ in range(100):  # at most 100 * 500 blocks per poll
            res = self.adapter.scan(self.cursor, self.node.read(lambda e: custody_state(e).watched(self.chain)))
            if res.reorg is not None:
                self.node.execute(ReorgDeposits(self.chain, res.reorg.fork_height))
                sent += 1
            for block in res.blocks:
                for t in block.transfers:
                    if t.direction is not Direction.IN:
                        continue
                    if not self.node.read(lambda e, t=t: custody_state(e).owner_of(self.chain, t.address) is not None
                                          and t.asset in custody_state(e).assets):
                        continue
                    if self.node.read(lambda e, t=t, b=block: _already_observed(custody_state(e), self.chain, t, b)):
                        continue  # a rescan after a restart: nothing new to journal
                    try:
                        self.node.execute(ObserveDeposit(self.chain, t.txid, t.index, t.asset, t.address, t.amount_minor,
                                                         block.height, block.block_hash))
                    except RingfenceError as exc:  # e.g. the asset is halted: scan this block again next time
                        self.errors[f"{self.chain}:{t.txid}:{t.index}"] = f"{exc.code}: {exc}"
                        self.cursor = max(0, block.height - 1)
                        return sent + self._confirmations()
                    sent += 1
            self.cursor = res.scanned_to_height
            if res.scanned_to_height >= res.tip_height:
                break
        return sent + self._confirmations()

    def _relocate(self, d: Any) -> Any:
        """A credited, non-final deposit whose recorded block is no longer on the chain (replaced
        while nobody watched: the reorg tracker of a restarted watcher starts empty). If its
        transaction is in another block now, the deposit moves there (`RelocateDeposit`) and its
        confirmations count from that block; if not, the blocks from its height were reorganised
        away: `ReorgDeposits` reverses it and the scan starts again below it."""
        status = self.adapter.tx_status(d.txid)
        if status.state is TxState.CONFIRMED and status.block_height is not None and status.block_hash:
            self.node.execute(RelocateDeposit(d.chain, d.txid, d.index, status.block_height, status.block_hash))
            d.height, d.block_hash = status.block_height, status.block_hash
            return d
        self.node.execute(ReorgDeposits(self.chain, d.height))
        self.cursor = min(self.cursor, max(0, d.height - 1))
        return None

    def _confs(self, height: int, block_hash: str, tip: int) -> int:
        if height > tip or self.adapter.block_hash(height) != block_hash:
            return 0
        return tip - height + 1

    def _confirmations(self) -> int:
        sent = 0
        tip = self.adapter.current_height()
        def open_deposits(engine: Any) -> list[tuple[Any, Any]]:
            state = custody_state(engine)
            return [(copy.copy(d), copy.copy(state.assets[d.asset])) for d in state.deposits.values()
                    if d.chain == self.chain and not d.final and d.state in ("seen", *CREDITED_STATES)]

        for d, cfg in self.node.read(open_deposits):
            try:
                sent += self._advance(d, cfg, tip)
            except RingfenceError as exc:
                # e.g. a halt on the asset (RF_HALTED): this deposit waits, the others go on
                self.errors[d.key] = f"{exc.code}: {exc}"
                continue
            self.errors.pop(d.key, None)
        return sent

    def _advance(self, d: Any, cfg: Any, tip: int) -> int:
        sent = 0
        confs = self._confs(d.height, d.block_hash, tip)
        if confs == 0 and d.state != "seen":
            sent += 1
            if self._relocate(d) is None:
                return sent
            confs = self._confs(d.height, d.block_hash, tip)
        if d.state == "seen" and confs >= cfg.credit_confirmations:
            sender = None
            result = self.scorer.score(KytInput(d.chain, d.txid, d.index, d.asset, d.address, d.amount_minor, sender))
            _crash(self, "after_score")
            self.node.execute(CreditDeposit(d.chain, d.txid, d.index, confs, result.score, list(result.reasons),
                                            result.category, result.senders[0] if result.senders else ""))
            sent += 1
        if confs >= cfg.finality_confirmations:
            self.node.execute(FinalizeDeposit(d.chain, d.txid, d.index, confs))
            sent += 1
        return sent


def _check_pays(adapter: Any, raw: bytes, outputs: list[tuple[str, int]], own_address: str) -> None:
    """The signed transaction pays exactly `outputs` (each once, in order) and nothing but change to
    `own_address` besides: checked from its bytes before it is journaled (a batch pays many users)."""
    from ..chains.bitcoin.rawtx import parse

    paid = parse(raw)[1]
    want = [(bytes(adapter.script_of_address(a)), v) for a, v in outputs]
    own = bytes(adapter.script_of_address(own_address))
    if paid[:len(want)] != want or any(spk != own for spk, _ in paid[len(want):]) or len(paid) > len(want) + 1:
        raise SigningRefused("the signed transaction does not pay exactly the withdrawals and change", field="raw_tx")


@dataclass
class HotWallet:
    """How to sign for one hot wallet: its chain address, key id and `Signer`.

    `attest(withdrawal, digest)` (Ethereum/HSM) is the policy side: it returns the approval
    attestation the HSM signer requires, after checking the engine says this withdrawal is signing.
    """

    name: str
    chain: str
    address: str
    key_id: str
    signer: Any
    attest: Callable[[WithdrawalRec, bytes, dict[str, Any]], Any] | None = None


def no_identity_facts(w: WithdrawalRec) -> tuple[int, bool, bool]:
    """(seconds since last credential change or -1, new device, new ip) when identity is not wired."""
    return (-1, False, False)


class WithdrawalWorker:
    def __init__(self, node: Any, adapters: dict[str, Any], wallets: dict[str, HotWallet], *,
                 identity_facts: Callable[[WithdrawalRec], tuple[int, bool, bool]] = no_identity_facts,
                 destination_kyt: Callable[[str, str], Any] | None = None, batch_max: int = DEFAULT_BATCH) -> None:
        if not 1 <= batch_max <= MAX_BATCH:
            raise ValidationError(f"must be 1..{MAX_BATCH}", field="batch_max")
        self.node = node
        self.adapters = adapters
        self.wallets = wallets
        self.identity_facts = identity_facts
        self.destination_kyt = destination_kyt  # (chain, address) -> KytResult: KYT on the destination
        self.crash_at: str | None = None
        self.errors: dict[str, str] = {}  # withdrawal id -> last transient error
        self.broadcasts = 0  # transactions this worker handed to a chain (re-sends included)
        #: Bitcoin withdrawals one transaction pays at most (1: one transaction per withdrawal).
        self.batch_max = batch_max
        self._inputs_of: dict[str, tuple[tuple[str, int], ...]] = {}
        self._sent_txids: dict[str, Any] = {}
        self._tips: dict[str, tuple[str, int, str]] = {}
        #: broadcast withdrawals found unconfirmed (or short of finality) -> the tip they were checked at:
        #: a pass looks at them again only once their chain moved (thousands may wait for one block)
        self._waiting: dict[str, tuple[str, int, str]] = {}
        self._chains: dict[str, str] = {}

    def _chain_of(self, asset: str) -> str:
        chain = self._chains.get(asset)  # read once per pass
        if chain is None:
            chain = self._chains[asset] = self.node.read(lambda e: custody_state(e).assets[asset].chain)
        return chain

    def run_until_idle(self, max_rounds: int = 50) -> None:
        for _ in range(max_rounds):
            if self.step() == 0:
                return

    def step(self) -> int:
        """Advance every open withdrawal by one state. Returns how many commands were submitted.

        Bitcoin withdrawals that are `signing` in the same pass are paid by one transaction per hot
        wallet (up to `batch_max` outputs, `RecordSignedBatch`): one signature per input instead of one
        transaction per withdrawal, and the inputs of one transaction can never be chosen twice."""
        sent = 0
        self._sent_txids = {}  # this pass's broadcasts: a batch's transaction is sent once
        self._tips, self._chains = {}, {}  # this pass's chain tips (height, hash) and assets' chains
        tips = {chain: self._chain_tip(chain) for chain in {t[0] for t in self._waiting.values()}}
        waiting = self._waiting

        def open_withdrawals(engine: Any) -> list[WithdrawalRec]:
            state = custody_state(engine)
            # a broadcast withdrawal whose chain did not move since it was last looked at (no block, no
            # reorg) is not even copied: thousands may wait for one block
            return _copies(w for w in state.withdrawals.values() if w.state in OPEN_STATES and not (
                w.state == "broadcast" and w.id in waiting and waiting[w.id] == tips.get(state.assets[w.asset].chain)))

        withdrawals = self.node.read(open_withdrawals)
        batches: dict[str, list[WithdrawalRec]] = {}
        for w in sorted(withdrawals, key=lambda x: x.created_ns):
            if sent >= MAX_STEPS:
                break
            if w.state == "signing" and self.batch_max > 1 and self._batchable(w):
                batches.setdefault(w.wallet, []).append(w)
                continue
            sent += self._attempt(w, self._advance)
        for group in batches.values():
            for at in range(0, len(group), self.batch_max):
                if sent >= MAX_STEPS:
                    break
                sent += self._sign_batch(group[at:at + self.batch_max])
        return sent

    def _chain_tip(self, chain: str) -> tuple[str, int, str]:
        """The chain's tip (chain, height, block hash), read once per pass."""
        tip = self._tips.get(chain)
        if tip is None:
            adapter = self.adapters[chain]
            height = adapter.current_height()
            tip = self._tips[chain] = (chain, height, adapter.block_hash(height))
        return tip

    def _tip(self, asset: str) -> tuple[str, int, str]:
        return self._chain_tip(self._chain_of(asset))

    def _attempt(self, w: WithdrawalRec, action: Callable[[WithdrawalRec], int]) -> int:
        try:
            return action(w)
        except Conflict:
            return 0  # e.g. still delayed: try again on a later step
        except RingfenceError as exc:
            # e.g. the hot wallet has no confirmed coins yet: leave it for a later step (and a refill)
            self.errors[w.id] = f"{exc.code}: {exc}"
            return 0

    def _batchable(self, w: WithdrawalRec) -> bool:
        hw = self.wallets.get(w.wallet)
        return hw is not None and hw.chain == "bitcoin" and w.nonce < 0

    def _sign_batch(self, group: list[WithdrawalRec]) -> int:
        """Sign one transaction for `group` (withdrawals `signing` from one Bitcoin hot wallet) and
        journal it for all of them at once. A group the wallet cannot pay at once is split in halves
        (the first half first: the oldest withdrawals are paid first); one alone goes the single way."""
        if len(group) == 1:
            return self._attempt(group[0], self._advance)
        try:
            raw, txid, fee = self._sign_outputs(group)
        except InsufficientFunds:
            half = len(group) // 2
            return self._sign_batch(group[:half]) + self._sign_batch(group[half:])
        except RingfenceError as exc:
            for w in group:
                self.errors[w.id] = f"{exc.code}: {exc}"
            return 0
        _crash(self, "after_sign")
        n = len(group)
        shares = [fee // n + (1 if i < fee % n else 0) for i in range(n)]  # add up to the fee
        w0 = group[0]
        try:
            self.node.execute(RecordSignedBatch(w0.asset, w0.wallet, txid, raw.hex(), [w.id for w in group], shares))
        except Conflict:
            return 0  # one of them changed meanwhile (cancelled, frozen...): the next pass sees it
        _crash(self, "after_record_signed")
        return 1

    def _scope(self, w: WithdrawalRec) -> tuple[str, str, str]:
        return (w.id, w.asset, w.wallet)

    def _advance(self, w: WithdrawalRec) -> int:
        ex = self.node.execute
        if w.state == "confirmed":
            ex(RecordRiskReview(*self._scope(w), *self._risk(w)))
            return 1
        if w.state == "reviewed":
            ex(DecideWithdrawal(*self._scope(w)))
            return 1
        if w.state == "approved":
            if w.rule == "return-to-sender" and not w.screened and self.destination_kyt is not None:
                # a return to sender is screened like any withdrawal: a blacklisted sender waits for a human
                from .refund_cmds import ScreenReturn

                kyt = self.destination_kyt(self._chain_of(w.asset), w.address)
                hit = getattr(kyt, "category", "") != "" or kyt.score > QUARANTINE_ABOVE  # the deposits' quarantine line
                ex(ScreenReturn(*self._scope(w), min(max(int(kyt.score), 0), 100) if hit else 0,
                                list(kyt.reasons)[:20] if hit else []))
                return 1
            if self.node.read(lambda e: e.now_ns) < w.not_before_ns and self._clock_ns() < w.not_before_ns:
                return 0
            ex(AuthorizeSigning(*self._scope(w)))
            return 1
        if w.state == "signing":
            raw, txid, fee = self._sign(w)
            _crash(self, "after_sign")
            ex(RecordSignedTx(*self._scope(w), txid, raw.hex(), fee))
            _crash(self, "after_record_signed")
            return 1
        if w.state == "signed":
            return self._broadcast(w)
        if w.state == "broadcast":
            return self._confirm(w)
        return 0

    def _clock_ns(self) -> int:
        clock = getattr(self.node, "_clock", None)
        return clock() if clock else 0

    def _risk(self, w: WithdrawalRec) -> tuple[int, bool, list[str]]:
        def facts(engine: Any) -> tuple[int, list[Any], bool]:
            led, state = engine.ledger, custody_state(engine)
            acct = led.find(w.account_id, w.asset, "available", "spot")
            balance = (acct.available if acct else 0) + led.hold_remaining(w.hold_id)
            history = _copies(x for x in state.history(w.account_id, w.asset) if x.state == "settled")
            chain = state.assets[w.asset].chain
            norm = (lambda a: a.lower()) if chain == "ethereum" else (lambda a: a)
            # "new" means never paid before: an address-book entry is not known until it was used
            # (the book is required for every withdrawal once the rules are set, so it proves nothing)
            known = any(norm(x.address) == norm(w.address) for x in history) or (
                state.rules is None and f"{w.account_id}|{w.asset}|{norm(w.address)}" in state.address_book)
            return balance, history, known

        balance, history, known = self.node.read(facts)
        since, new_device, new_ip = self.identity_facts(w)
        review = assess_risk(RiskFacts(w.amount_minor, balance, tuple(x.amount_minor for x in history), known, since,
                                       new_device, new_ip))
        score, manual, reasons = review.score, review.manual_review, list(review.reasons)
        if self.destination_kyt is not None:
            # a blacklisted destination always goes to a human, whatever the user's history says
            # (hop taint above the deposits' quarantine line, too; below it the reason and score count)
            kyt = self.destination_kyt(self._chain_of(w.asset), w.address)
            if kyt.score > 0:
                score, reasons = max(score, kyt.score), [*kyt.reasons, *reasons]
                manual = manual or getattr(kyt, "category", "") != "" or kyt.score > QUARANTINE_ABOVE
        return score, manual, reasons

    def _reserved_coins(self, wallet: str) -> set[tuple[str, int]]:
        """Coins of `wallet` spent by withdrawal transactions signed but not yet broadcast: they are not
        in the mempool's spends yet, and choosing one again would sign a double spend the chain refuses
        (and fail the withdrawal). Each transaction is parsed once (`_inputs_of`, by txid)."""
        signed = self.node.read(lambda e: {x.txid: x.raw_tx for x in custody_state(e).withdrawals.values()
                                           if x.state == "signed" and x.wallet == wallet and x.raw_tx})
        cache = self._inputs_of
        for txid, raw in signed.items():
            if txid not in cache:
                cache[txid] = tuple(btc_tx_inputs(raw))
        if len(cache) > 4 * len(signed) + 1024:  # forget transactions long broadcast
            self._inputs_of = cache = {t: cache[t] for t in signed}
        return {op for txid in signed for op in cache[txid]}

    def _sign_outputs(self, group: list[WithdrawalRec]) -> tuple[bytes, str, int]:
        """One Bitcoin transaction paying every withdrawal of `group` (same wallet) its amount at its
        address, change back to the wallet; checked against the group before it is journaled."""
        w0 = group[0]
        hw = self.wallets[w0.wallet]
        adapter = self.adapters[hw.chain]
        rate = adapter.estimate_fee().fee_rate_minor
        outputs = [(w.address, w.amount_minor) for w in group]
        if len(group) == 1:
            rid, reason = f"wd-{w0.id}", f"withdrawal {w0.id} of {w0.amount_minor} {w0.asset} to {w0.address}"
        else:
            rid = f"wd-batch-{w0.id}-{len(group)}"
            reason = (f"{len(group)} withdrawals ({', '.join(w.id for w in group[:5])}{', ...' if len(group) > 5 else ''}) "
                      f"of {sum(w.amount_minor for w in group)} {w0.asset} in one transaction")
        raw, txid, fee = build_btc_payment(adapter, from_address=hw.address, key_id=hw.key_id, signer=hw.signer,
                                           outputs=outputs, fee_rate_sat_per_vb=rate, request_id=rid, reason=reason,
                                           exclude=self._reserved_coins(w0.wallet))
        _check_pays(adapter, raw, outputs, hw.address)
        return raw, txid, fee

    def _sign(self, w: WithdrawalRec) -> tuple[bytes, str, int]:
        hw = self.wallets[w.wallet]
        adapter = self.adapters[hw.chain]
        reason = f"withdrawal {w.id} of {w.amount_minor} {w.asset} to {w.address}"
        if hw.chain == "bitcoin":
            return self._sign_outputs([w])
        fee = adapter.estimate_fee()
        if w.asset != adapter.native_asset:  # an ERC-20 token: a call of the contract's transfer()
            from .wallets import ERC20_TRANSFER_GAS, erc20_transfer_data

            return build_eth_payment(adapter, key_id=hw.key_id, signer=hw.signer, to=adapter.token(w.asset).contract,
                                     value_wei=0, nonce=w.nonce, max_fee_per_gas=fee.fee_rate_minor,
                                     priority_fee_per_gas=fee.priority_fee_minor, request_id=f"wd-{w.id}",
                                     reason=reason, data=erc20_transfer_data(w.address, w.amount_minor),
                                     gas=ERC20_TRANSFER_GAS)[:2] + (0,)
        params = dict(to=w.address, value_wei=w.amount_minor, nonce=w.nonce, max_fee_per_gas=fee.fee_rate_minor,
                      priority_fee_per_gas=fee.priority_fee_minor)
        approval = hw.attest(w, eth_signing_digest(adapter, **params), params) if hw.attest else None
        return build_eth_payment(adapter, key_id=hw.key_id, signer=hw.signer, request_id=f"wd-{w.id}-{secrets.token_hex(4)}",
                                 reason=reason, approval=approval, **params)

    def _broadcast(self, w: WithdrawalRec) -> int:
        adapter = self.adapters[self._chain_of(w.asset)]
        sent = self._sent_txids
        try:
            if w.txid in sent:  # a batch's transaction, sent for another withdrawal of this pass
                res = sent[w.txid]
            elif not self._still_in_flight(w):
                return 0  # failed with its batch earlier in this pass: its bytes are never sent again
            else:
                res = sent[w.txid] = adapter.broadcast(bytes.fromhex(w.raw_tx))
        except TransactionRejected as exc:
            if adapter.tx_status(w.txid).state is TxState.UNKNOWN:
                self.node.execute(FailWithdrawal(*self._scope(w), f"chain refused the transaction: {exc.details.get('reason', exc.code)}"))
                return 1
            res = None
        self.broadcasts += 1
        _crash(self, "after_broadcast")
        self.node.execute(RecordBroadcast(*self._scope(w), res.txid if res else w.txid))
        return 1

    def _still_in_flight(self, w: WithdrawalRec) -> bool:
        """Read again just before journaled bytes are sent: `w` is this pass's copy, and a batch's
        withdrawals fail together (`FailWithdrawal`), so a sibling failed earlier in the pass must
        not send the transaction that still pays the refunded withdrawals."""
        def now(e: Any) -> bool:
            cur = custody_state(e).withdrawals.get(w.id)
            return cur is not None and cur.state in IN_FLIGHT_STATES and cur.txid == w.txid
        return bool(self.node.read(now))

    def _confirm(self, w: WithdrawalRec) -> int:
        done = self._confirm_once(w)
        if done:
            self._waiting.pop(w.id, None)
        else:
            self._waiting[w.id] = self._tip(w.asset)
        return done

    def _confirm_once(self, w: WithdrawalRec) -> int:
        chain = self._chain_of(w.asset)
        adapter = self.adapters[chain]
        status = adapter.tx_status(w.txid)
        if status.state is TxState.UNKNOWN:
            # Dropped (e.g. by a reorg) — re-send the same journaled bytes; never a new transaction.
            if not self._still_in_flight(w):
                return 1  # failed with its batch earlier in this pass: its bytes are never sent again
            try:
                adapter.broadcast(bytes.fromhex(w.raw_tx))
                self.broadcasts += 1
            except TransactionRejected as exc:
                self.node.execute(FailWithdrawal(*self._scope(w), f"transaction can no longer confirm: {exc.details.get('reason', exc.code)}"))
                return 1
            return 0
        if status.state is not TxState.CONFIRMED:
            return 0
        need = self.node.read(lambda e: custody_state(e).assets[w.asset].finality_confirmations)
        if status.confirmations < need:
            return 0
        fee, gas_asset, gas = w.network_fee_minor, "", 0
        if chain == "ethereum":
            receipt = adapter.w3.eth.get_transaction_receipt(w.txid)
            fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
            if not status.succeeded:
                # Reverted: nothing left the wallet but gas. Void the user's hold; the gas is the exchange's cost.
                self.node.execute(FailWithdrawal(*self._scope(w), "transaction reverted on chain"))
                return 1
            if w.asset != adapter.native_asset:  # a token transfer's gas is paid in ETH
                fee, gas_asset, gas = 0, adapter.native_asset, fee
        self.node.execute(SettleWithdrawal(*self._scope(w), w.txid, status.confirmations, fee, gas_asset, gas))
        return 1


class Balancer:
    """Executes sweeps (deposit addresses -> hot), drains and refills for one chain. Each transfer is
    journaled (`RecordTransferSigned`) before it is broadcast and recorded in the ledger
    (`RecordInternalTransfer`) once confirmed; `resend_pending` re-sends journaled ones after a restart."""

    def __init__(self, node: Any, adapter: Any, *, deposit_signer: Any, key_of_address: dict[str, str]) -> None:
        self.node = node
        self.adapter = adapter
        self.deposit_signer = deposit_signer
        self.key_of_address = key_of_address
        self.crash_at: str | None = None

    def sweep(self, asset: str, deposit_wallet: str, hot_wallet: str, hot_address: str, min_minor: int) -> list[str]:
        """Sweep every deposit address of `deposit_wallet` holding >= min_minor. Returns txids."""
        addresses = self.node.read(lambda e: sorted((k, tuple(v)) for k, v in custody_state(e).deposit_addresses.items()))
        # an address with a deposit not yet credited waits: the ledger never moves coins it has not booked
        waiting = self.node.read(lambda e: {d.address for d in custody_state(e).deposits.values()
                                            if d.chain == self.adapter.chain and d.state == "seen"})
        txids = []
        for key, (_account_id, wallet, address) in addresses:
            if wallet != deposit_wallet or not key.startswith(self.adapter.chain + ":") or address in waiting:
                continue
            bal = self.adapter.balance(address)
            if bal < min_minor:
                continue
            key_id = self.key_of_address[address]
            if self.adapter.chain == "bitcoin":
                rate = self.adapter.estimate_fee().fee_rate_minor
                raw, txid, fee = build_btc_payment(self.adapter, from_address=address, key_id=key_id,
                                                   signer=self.deposit_signer, outputs=[(hot_address, 1)],
                                                   fee_rate_sat_per_vb=rate, request_id=f"sweep-{address}",
                                                   reason="sweep to hot", sweep_all=True)
                amount = bal - fee
            else:
                fee_q = self.adapter.estimate_fee()
                max_fee = 21_000 * fee_q.fee_rate_minor
                if bal <= max_fee:
                    continue
                nonce = self.adapter.w3.eth.get_transaction_count(address, "pending")
                raw, txid, fee = build_eth_payment(self.adapter, key_id=key_id, signer=self.deposit_signer,
                                                   to=hot_address, value_wei=bal - max_fee, nonce=nonce,
                                                   max_fee_per_gas=fee_q.fee_rate_minor,
                                                   priority_fee_per_gas=fee_q.priority_fee_minor,
                                                   request_id=f"sweep-{address}", reason="sweep to hot")
                amount = bal - max_fee
            self._journal_and_send(f"sweep-{txid[:40]}", asset, deposit_wallet, hot_wallet, amount, fee, txid, raw)
            txids.append(txid)
        return txids

    def _journal_and_send(self, tid: str, asset: str, src: str, dst: str, amount: int, fee: int, txid: str,
                          raw: bytes) -> None:
        from .commands import RecordTransferSigned

        self.node.execute(RecordTransferSigned(tid, asset, src, dst, amount, fee, txid, raw.hex()))
        _crash(self, "after_record_transfer")
        self.adapter.broadcast(raw)

    def resend_pending(self) -> int:
        """After a restart: re-send every journaled, unrecorded transfer of this chain (idempotent)."""
        n = 0
        for t in self.node.read(lambda e: _copies(custody_state(e).transfers.values())):
            if t.state == "signed" and t.raw_tx and self._on_chain(t.asset):
                try:
                    self.adapter.broadcast(bytes.fromhex(t.raw_tx))
                    n += 1
                except TransactionRejected:
                    pass  # already mined (its inputs are spent) or truly invalid: record_confirmed decides
        return n

    def _on_chain(self, asset: str) -> bool:
        chain = self.node.read(lambda e: getattr(custody_state(e).assets.get(asset), "chain", None))
        return chain is not None and chain == self.adapter.chain

    def record_confirmed(self, asset: str, min_confirmations: int) -> int:
        done = 0
        signed = self.node.read(lambda e: _copies(t for t in custody_state(e).transfers.values() if t.state == "signed" and t.asset == asset))
        for t in signed:
            txid, tid, src, dst, amount, fee = t.txid, t.id, t.from_wallet, t.to_wallet, t.amount_minor, t.network_fee_minor
            status = self.adapter.tx_status(txid)
            if status.state is TxState.CONFIRMED and status.confirmations >= min_confirmations:
                if self.adapter.chain == "ethereum":
                    r = self.adapter.w3.eth.get_transaction_receipt(txid)
                    fee = r["gasUsed"] * r["effectiveGasPrice"]
                self.node.execute(RecordInternalTransfer(tid, asset, src, dst, amount, fee, txid))
                done += 1
        return done

    def transfer(self, asset: str, *, from_wallet: str, from_address: str, key_id: str, signer: Any, to_wallet: str,
                 to_address: str, amount_minor: int, kind: str, transfer_id: str = "") -> str:
        """Send `amount_minor` between two of our wallets (a drain to cold or a refill from warm).
        `transfer_id`: the id of a rebalance the engine authorized (`AuthorizeRebalance`); an ERC-20
        token is sent with the contract's `transfer()` (its gas in ETH, recorded by `TokenSweeper`)."""
        if self.adapter.chain == "bitcoin":
            rate = self.adapter.estimate_fee().fee_rate_minor
            raw, txid, fee = build_btc_payment(self.adapter, from_address=from_address, key_id=key_id, signer=signer,
                                               outputs=[(to_address, amount_minor)], fee_rate_sat_per_vb=rate,
                                               request_id=f"{kind}-{from_wallet}", reason=f"{kind} {from_wallet}->{to_wallet}")
        else:
            from .commands import ReserveWalletNonce, reserved_nonce

            fee_q = self.adapter.estimate_fee()
            tier, n_transfers = self.node.read(lambda e: (custody_state(e).wallets[from_wallet].tier, len(custody_state(e).transfers)))
            if tier == "hot":
                # The hot wallet's nonces belong to the engine (withdrawals use them too).
                purpose = f"{kind}-{from_wallet}-{n_transfers}"
                self.node.execute(ReserveWalletNonce(from_wallet, purpose))
                nonce = self.node.read(lambda e: reserved_nonce(custody_state(e), purpose))
            else:
                nonce = self.adapter.w3.eth.get_transaction_count(from_address, "pending")
            if asset != self.adapter.native_asset:
                from .wallets import ERC20_TRANSFER_GAS, erc20_transfer_data

                raw, txid, _gas = build_eth_payment(self.adapter, key_id=key_id, signer=signer, to=self.adapter.token(asset).contract,
                                                    value_wei=0, nonce=nonce, max_fee_per_gas=fee_q.fee_rate_minor,
                                                    priority_fee_per_gas=fee_q.priority_fee_minor, request_id=f"{kind}-{from_wallet}",
                                                    reason=f"{kind} {from_wallet}->{to_wallet}",
                                                    data=erc20_transfer_data(to_address, amount_minor), gas=ERC20_TRANSFER_GAS)
                fee = 0  # paid in ETH: recorded as the transfer's gas once confirmed
            else:
                raw, txid, fee = build_eth_payment(self.adapter, key_id=key_id, signer=signer, to=to_address,
                                                   value_wei=amount_minor, nonce=nonce, max_fee_per_gas=fee_q.fee_rate_minor,
                                                   priority_fee_per_gas=fee_q.priority_fee_minor,
                                                   request_id=f"{kind}-{from_wallet}", reason=f"{kind} {from_wallet}->{to_wallet}")
        self._journal_and_send(transfer_id or f"{kind}-{txid[:40]}", asset, from_wallet, to_wallet, amount_minor, fee, txid, raw)
        return txid


class PolicyAttestor:
    """The policy side of segregation of duties for the HSM hot wallet: it issues an approval
    attestation (signed by the policy engine's own HSM key) only for a withdrawal the journaled engine
    state says is `signing`, and only for the digest of a transaction paying exactly the journaled
    destination and amount with the journaled nonce."""

    def __init__(self, node: Any, adapter: Any, approval_key: Any, *, validity_ms: int = 60_000,
                 clock_ms: Callable[[], int] | None = None) -> None:
        import time

        self.node, self.adapter, self.approval_key = node, adapter, approval_key
        self.validity_ms = validity_ms
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def __call__(self, w: WithdrawalRec, digest: bytes, params: dict[str, Any]) -> Any:
        from ..errors import SigningRefused

        stopped = self.node.stopped_reason(detailed=True)
        if stopped is not None:  # deposed or fenced: its state may hold a batch the stream refused
            raise SigningRefused(f"the node has stopped ({stopped}): it attests nothing from its state", field="withdrawal_id")
        live = self.node.read(lambda e: copy.copy(custody_state(e).withdrawals.get(w.id)))
        if live is None or live.state != "signing":
            raise SigningRefused("the engine does not have this withdrawal in state signing", field="withdrawal_id")
        if (params["to"].lower(), params["value_wei"], params["nonce"]) != (live.address.lower(), live.amount_minor, live.nonce):
            raise SigningRefused("transaction does not match the approved withdrawal", field="digest")
        if eth_signing_digest(self.adapter, **params) != digest:
            raise SigningRefused("digest does not match the transaction", field="digest")
        return self.approval_key.approve(attestation_id=f"att-{w.id}-{secrets.token_hex(6)}", key_id=self._key_id(),
                                         transfer_digest=digest, now_ms=self.clock_ms(), validity_ms=self.validity_ms,
                                         decided_by="custody-policy", reason=f"withdrawal {w.id} approved by policy")

    key_id_for_hot = "eth-hot"

    def _key_id(self) -> str:
        return self.key_id_for_hot
