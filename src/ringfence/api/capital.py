"""Binance's capital endpoints (`/sapi/v1/capital/...`) as the unmodified `ccxt.binance` calls them:
`fetchCurrencies` / `fetchDepositWithdrawFees` (config/getall), `fetchDepositAddress`,
`fetchDeposits` (deposit/hisrec), `withdraw` (withdraw/apply) and `fetchWithdrawals`
(withdraw/history); plus `balanceUpdate` events on the user data stream.

Thin layer, like the spot API: parameters are checked against `CAPITAL_PARAMS` and validated at the
edge with Binance's error codes (nothing reaches the engine on a bad request), then one engine
command is submitted. The engine's `RequestWithdrawal` enforces the same rules again (address
book, cooling period, the lock after a security change, the balance) with the sequencer's time;
its refusals come back here as the same codes.

A withdrawal through the API needs a key with the `withdraw` scope, which identity only issues
with an IP allow-list (checked on every request). It then skips Binance's e-mail step (status 0):
the key, its allow-list and the cooled address-book entry stand for the e-mailed confirmation,
as they do on Binance. Status codes (Binance's):

* deposits: 0 pending (seen, below the credit depth), 6 credited but not final (cannot be
  withdrawn on Binance; here: the credit is spendable, reversal is still possible), 1 success
  (final), 8 waiting for the user (quarantined by KYT: file a source-of-funds declaration),
  7 frozen (reported), 2 rejected (reorged away);
* withdrawals: 0 e-mail sent, 1 cancelled, 2 awaiting approval (manual review or approvals),
  3 rejected (denied by policy or by a reviewer), 4 processing, 5 failure, 6 completed. `info`
  carries the reason of the current state.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidAmount, RingfenceError
from ..money import format_amount, parse_amount
from .binance import EndpointParams, _doc, add_binance_route
from .binance_errors import BinanceError, from_ringfence
from .gateway import Params

__all__ = ["CapitalApi", "build_capital_router", "CAPITAL_PARAMS", "WITHDRAW_STATUS", "DEPOSIT_STATUS"]

_HIST = ("coin", "status", "startTime", "endTime", "offset", "limit")
#: (method, path under /sapi/v1) -> its parameters; everything else is refused (-1104).
CAPITAL_PARAMS: dict[tuple[str, str], EndpointParams] = {
    ("GET", "/capital/config/getall"): EndpointParams(signed=True),
    ("GET", "/capital/deposit/address"): EndpointParams(("coin", "network", "amount"), ("coin",), signed=True),
    ("GET", "/capital/deposit/hisrec"): EndpointParams(_HIST + ("txId", "includeSource"), signed=True),
    ("POST", "/capital/withdraw/apply"): EndpointParams(
        ("coin", "network", "address", "amount", "withdrawOrderId", "addressTag"),
        ("coin", "address", "amount"),
        refused=(("addressTag", -4008, "Address tag validation is not passed: no custodied network uses memos or tags."),
                 ("transactionFeeFlag", -1106, "Parameter 'transactionFeeFlag' sent when not required: the fee is always taken from the amount."),
                 ("walletType", -1106, "Parameter 'walletType' sent when not required: withdrawals are paid from the spot wallet.")),
        signed=True,
    ),
    ("GET", "/capital/withdraw/history"): EndpointParams(_HIST + ("withdrawOrderId", "idList"), signed=True),
    # ringfence's own (Binance asks by e-mail): the source-of-funds declaration of a quarantined deposit
    ("POST", "/capital/deposit/sourceOfFunds"): EndpointParams(("txId", "declaration"), ("txId", "declaration"), signed=True),
}

WITHDRAW_STATUS = {
    "requested": 0, "confirmed": 4, "reviewed": 4, "approved": 4, "signing": 4, "signed": 4, "broadcast": 4,
    "awaiting_approvals": 2, "manual_review": 2, "settled": 6, "denied": 3, "rejected": 3, "failed": 5,
}
DEPOSIT_STATUS = {"seen": 0, "credited": 6, "final": 1, "quarantined": 8, "frozen": 7, "dropped": 2, "reversed": 2,
                  "below_minimum": 7, "returned": 2}
ADDRESS_REGEX = {"bitcoin": "^(bcrt1|tb1|bc1)[0-9a-z]{11,71}$", "ethereum": "^(0x)[0-9A-Fa-f]{40}$"}
MAX_ROWS = 1000


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _apply_time(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class CapitalApi:
    def __init__(self, exchange: Any, gate: Any, runtime: Any, identity_ctx: Any = None) -> None:
        self.ex = exchange
        self.gate = gate
        self.runtime = runtime  # CustodyRuntime, or None: no chains, nothing to deposit or withdraw
        self.identity_ctx = identity_ctx

    # ------------------------------------------------------------------ what /api/v3/account says

    def can_deposit(self, owner: str) -> bool:
        return self.runtime is not None

    def can_withdraw(self, owner: str) -> bool:
        if self.runtime is None:
            return False
        from ..custody.commands import custody_state

        def read(engine: Any) -> bool:
            s = custody_state(engine)
            # the wall clock, as the withdrawal preview: the engine's time moves only with commands,
            # so in a quiet period a lock that has ended would still read as running
            now_ns = max(engine.now_ns, time.time_ns())
            return owner not in s.withdrawals_frozen and now_ns >= s.security_locks.get(owner, 0)

        if not self.ex.read(read):
            return False
        if self.identity_ctx is not None:
            from ..identity.events import check_withdrawals_allowed

            try:
                check_withdrawals_allowed(self.identity_ctx, owner)
            except RingfenceError:  # locked, frozen or unknown to identity: cannot withdraw now
                return False
        return True

    # ------------------------------------------------------------------ helpers

    def _coins(self, engine: Any, owner: str = "") -> list[dict[str, Any]]:
        from ..custody.commands import custody_state
        from ..custody.withdrawals import OPEN_STATES
        from ..risk.halts import halt_for

        s = custody_state(engine)
        terms = self.runtime.terms if self.runtime is not None else {}
        led = engine.ledger
        withdrawing: dict[str, int] = {}
        for w in s.withdrawals.values():
            if w.account_id == owner and w.state in OPEN_STATES:
                withdrawing[w.asset] = withdrawing.get(w.asset, 0) + w.amount_minor + w.fee_minor

        def posted(code: str, kind: str) -> tuple[int, int]:
            acct = led.find(owner, code, kind, "spot") if owner else None
            return (acct.available, acct.debits_pending) if acct is not None else (0, 0)

        out = []
        for asset in list(led.assets):
            code, d = asset.code, asset.decimals
            # the owner's spot wallet as Binance reports it: free (what a withdrawal may take), locked
            # (held by orders and withdrawals), withdrawing (open withdrawals), freeze (quarantined or
            # frozen deposits)
            free, locked = posted(code, "available")
            freeze = posted(code, "quarantine")[0] + posted(code, "frozen")[0]
            cfg = s.assets.get(code) if code in terms else None
            networks = []
            if cfg is not None:
                wallet = "btc_hot" if cfg.chain == "bitcoin" else "eth_hot"
                paused = halt_for(engine, "asset", code) or halt_for(engine, "asset", f"{code}@{wallet}")
                networks.append({
                    "network": terms[code].network, "coin": code, "name": cfg.chain.capitalize(), "isDefault": True,
                    "depositEnable": True, "withdrawEnable": paused is None,
                    "depositDesc": "", "withdrawDesc": "" if paused is None else f"withdrawals paused ({paused})",
                    "withdrawFee": format_amount(cfg.withdrawal_fee_minor, d),
                    # Binance's amount is gross (the fee comes out of it): the least one may ask for
                    # is the engine's minimum on-chain payment plus the fee
                    "withdrawMin": format_amount(cfg.min_withdrawal_minor + cfg.withdrawal_fee_minor, d),
                    "withdrawMax": format_amount(cfg.max_withdrawal_minor, d),
                    "withdrawIntegerMultiple": format_amount(1, d), "depositDust": format_amount(cfg.min_deposit_minor, d),
                    "minConfirm": cfg.credit_confirmations, "unLockConfirm": cfg.finality_confirmations,
                    "addressRegex": ADDRESS_REGEX[cfg.chain], "memoRegex": "", "specialTips": "",
                    "sameAddress": False, "busy": False, "resetAddressStatus": False,
                })
            out.append({
                "coin": code, "name": code, "depositAllEnable": bool(networks),
                "withdrawAllEnable": bool(networks) and all(n["withdrawEnable"] for n in networks),
                "free": format_amount(free, d), "locked": format_amount(locked, d), "freeze": format_amount(freeze, d),
                "withdrawing": format_amount(withdrawing.get(code, 0), d), "ipoing": "0", "ipoable": "0",
                "storage": "0", "isLegalMoney": asset.asset_class.value == "fiat", "trading": True, "networkList": networks,
            })
        return out

    def _coin(self, params: Params, name: str = "coin") -> Any:
        code = params.require(name)
        if self.runtime is None or code not in self.runtime.terms:
            offered = ", ".join(sorted(self.runtime.terms)) if self.runtime is not None else "none (no chains are configured)"
            raise BinanceError(-4018, f"We don't have this asset: '{code[:20]}' cannot be deposited or withdrawn here; coins: {offered}.")
        return self.runtime.terms[code]

    def _network(self, params: Params, terms: Any) -> None:
        network = params.get("network")
        if network is not None and network != terms.network:
            raise BinanceError(-4019, f"Current asset is not open for withdrawal or deposit on network '{network[:20]}': "
                                      f"{terms.asset} uses network {terms.network}.")

    def _confirmations(self, chain: str, height: int, block_hash: str) -> int:
        adapter = self.runtime.chains.adapter(chain)
        with self.runtime.chains.lock:
            tip = adapter.current_height()
            if height > tip or adapter.block_hash(height) != block_hash:
                return 0
            return tip - height + 1

    # ------------------------------------------------------------------ endpoints

    async def config_getall(self, request: Request) -> list[dict[str, Any]]:
        _params, owner = await self.gate.signed(request, "read", weight=10)
        return self.ex.read(lambda engine: self._coins(engine, owner))  # type: ignore[no-any-return]

    async def deposit_address(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "read", weight=10)
        terms = self._coin(params)
        self._network(params, terms)
        address = await run_in_threadpool(self.runtime.deposit_address, owner, terms.asset)
        return {"address": address, "coin": terms.asset, "tag": "", "url": ""}

    async def deposit_history(self, request: Request) -> list[dict[str, Any]]:
        from ..custody.commands import custody_state

        params, owner = await self.gate.signed(request, "read", weight=1)
        coin = self._coin(params).asset if params.get("coin") is not None else None
        status = params.integer("status", default=-1, low=0, high=8) if params.get("status") is not None else -1
        start, end = params.integer("startTime", default=0), params.integer("endTime", default=2**62)
        offset, limit = params.integer("offset", default=0, high=10**6), params.integer("limit", default=1000, low=1, high=MAX_ROWS)
        txid = params.get("txId")
        if self.runtime is None:
            return []

        def read(engine: Any) -> list[tuple[Any, ...]]:
            s = custody_state(engine)
            return [(d.key, d.chain, d.txid, d.index, d.asset, d.address, d.amount_minor, d.height, d.block_hash, d.state,
                     d.final, d.seen_ns, d.reasons[:3], engine.ledger.assets.get(d.asset).decimals,
                     s.assets[d.asset].finality_confirmations, bool(d.declaration))
                    for d in s.deposits.values() if d.account_id == owner]

        rows = []
        for (key, chain, tx, _index, asset, address, amount, height, bhash, state, final, seen_ns, reasons, decimals,
             need, declared) in self.ex.read(read):
            code = DEPOSIT_STATUS.get("final" if final and state == "credited" else state, 0)  # a final quarantined deposit is still 8
            if (coin and asset != coin) or (status >= 0 and code != status) or (txid and tx != txid):
                continue
            if not start <= _ms(seen_ns) <= end:
                continue
            confs = min(self._confirmations(chain, height, bhash), need) if state not in ("dropped", "reversed") else 0
            rows.append({
                "id": hashlib.sha256(key.encode()).hexdigest()[:20], "amount": format_amount(amount, decimals, trim=True),
                "coin": asset, "network": self.runtime.terms[asset].network, "status": code, "address": address,
                "addressTag": "", "txId": tx, "insertTime": _ms(seen_ns), "transferType": 0,
                "confirmTimes": f"{confs}/{need}", "unlockConfirm": need, "walletType": 0,
                "info": (("returned to sender; " if state == "returned" else "")
                         + ("source of funds declared, an analyst reviews it; " if declared and state == "quarantined" else "")
                         + "; ".join(reasons)
                         if state in ("quarantined", "frozen", "returned") else state),
            })
        rows.sort(key=lambda r: -r["insertTime"])
        return rows[offset : offset + limit]

    async def source_of_funds(self, request: Request) -> dict[str, Any]:
        """File the source-of-funds declaration of the caller's quarantined or frozen deposit(s) in `txId`."""
        from ..custody.commands import FileSourceOfFunds, custody_state

        params, owner = await self.gate.signed(request, "trade", weight=1)
        txid, text = params.require("txId"), params.require("declaration")
        if self.runtime is None:
            raise BinanceError(-4019, "Deposits are not enabled on this server.")

        def find(engine: Any) -> list[tuple[str, int, str]]:
            return [(d.chain, d.index, d.state) for d in custody_state(engine).deposits.values()
                    if d.account_id == owner and d.txid == txid and d.state in ("quarantined", "frozen")]

        found = self.ex.read(find)
        if not found:
            raise BinanceError(-1100, "Illegal parameter 'txId': no quarantined or frozen deposit of this account has that txId.")
        for chain, index, _state in found:
            await self.ex.submit(FileSourceOfFunds(chain, txid, index, owner, text))
        return {"txId": txid, "filed": len(found), "status": DEPOSIT_STATUS[found[0][2]],
                "info": "declaration filed: an analyst reviews it"}

    async def withdraw(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "withdraw", weight=1)
        return await self.submit_withdrawal(params, owner)

    async def submit_withdrawal(self, params: Params, owner: str, email_token: str | None = None,
                                via: str = "api-key") -> dict[str, Any]:
        """The one withdrawal path (API key or web session): every edge check, then `RequestWithdrawal`.
        With `email_token` (the web) the request waits for the e-mailed link (Binance status 0);
        without it (an API key with the withdraw scope) the confirmation is submitted at once."""
        terms = self._coin(params)
        self._network(params, terms)
        command, token = await self.withdraw_command(params, owner, terms, email_token, via)
        if self.identity_ctx is not None:
            from ..identity.events import check_withdrawals_allowed

            try:
                await run_in_threadpool(check_withdrawals_allowed, self.identity_ctx, owner)
            except RingfenceError as err:
                raise _withdraw_error(err) from None
        from ..custody.commands import ConfirmWithdrawalEmail

        try:
            await self.ex.submit(command)
            if email_token is None:
                await self.ex.submit(ConfirmWithdrawalEmail(command.withdrawal_id, command.asset, command.wallet, token))
        except RingfenceError as err:
            raise _withdraw_error(err) from None
        return {"id": command.withdrawal_id}

    def check_address(self, terms: Any, raw: str) -> str:
        """The address for the coin's network in canonical form, or -4033 (shared by the address book)."""
        from ..custody.commands import validate_chain_address

        try:
            return validate_chain_address(terms.chain, "regtest" if terms.chain == "bitcoin" else "tester", raw)
        except RingfenceError as err:
            raise BinanceError(-4033, f"Illegal address for {terms.asset} on network {terms.network}: {err.message}") from None

    async def withdraw_command(self, params: Params, owner: str, terms: Any, email_token: str | None = None,
                               via: str = "api-key") -> tuple[Any, str]:
        """`_withdraw_command`, its refusal by the post-change lock naming the change that set it: the
        engine keeps only the lock's end, identity's record says which change it was (read in a worker
        thread, off the event loop)."""
        from ..errors import WithdrawalsLocked

        try:
            return self._withdraw_command(params, owner, terms, email_token, via)
        except WithdrawalsLocked as err:
            if self.identity_ctx is not None and "change" not in err.details:
                from ..identity.events import last_credential_change

                err.details["change"] = await run_in_threadpool(last_credential_change, self.identity_ctx, owner)
            raise _withdraw_error(err) from None

    def _withdraw_command(self, params: Params, owner: str, terms: Any, email_token: str | None = None,
                          via: str = "api-key") -> tuple[Any, str]:
        """Everything checkable at the edge, against one consistent engine state; nothing changes.
        Refusals are BinanceErrors, but the post-change lock's is the WithdrawalsLocked itself
        (`withdraw_command` names its change)."""
        from ..custody.commands import RequestWithdrawal, custody_state, withdrawal_blocker
        from ..errors import WithdrawalsLocked

        address = self.check_address(terms, params.require("address"))
        raw_amount = params.require("amount")
        try:
            amount = parse_amount(raw_amount, terms.decimals, field="amount", allow_zero=False)
        except InvalidAmount as err:
            if "decimal places" in err.message:
                raise BinanceError(-4021, f"Parameter 'amount': at most {terms.decimals} decimals for {terms.asset} "
                                          f"(a multiple of {format_amount(1, terms.decimals)}).") from None
            raise BinanceError(-1100, f"Illegal characters found in parameter 'amount'; {err.message}.") from None
        order_id = params.get("withdrawOrderId")
        if order_id is not None and (len(order_id) > 64 or not order_id.isprintable()):
            raise BinanceError(-1100, "Illegal characters found in parameter 'withdrawOrderId'; at most 64 printable characters.")
        wid = ("wc-" + hashlib.sha256(f"{owner}\0{order_id}".encode()).hexdigest()[:24]) if order_id else "w-" + secrets.token_hex(10)

        def check(engine: Any) -> tuple[str, int]:
            s = custody_state(engine)
            cfg = s.assets[terms.asset]
            d = engine.ledger.assets.get(terms.asset).decimals
            fee = cfg.withdrawal_fee_minor
            if amount <= fee:
                raise BinanceError(-4028, f"The amount of withdrawal must be greater than the Commission ({format_amount(fee, d, trim=True)} {terms.asset}).")
            if amount - fee < cfg.min_withdrawal_minor:
                raise BinanceError(-4022, f"Not less than the minimum pick-up quantity {format_amount(cfg.min_withdrawal_minor + fee, d, trim=True)}.")
            if amount - fee > cfg.max_withdrawal_minor:
                raise BinanceError(-4023, f"The withdrawal exceeds the maximum amount of {format_amount(cfg.max_withdrawal_minor, d, trim=True)} per withdrawal.")
            if wid not in s.withdrawals:  # a retry of the same withdrawOrderId answers with the same id
                # the edge previews the rules at the wall clock (the engine's time moves only with commands;
                # RequestWithdrawal checks again at the sequencer's time)
                now_ns = max(engine.now_ns, time.time_ns())
                blocked = withdrawal_blocker(s, now_ns, owner, terms.asset, cfg.chain, address)
                if isinstance(blocked, WithdrawalsLocked):
                    raise blocked
                if blocked is not None:
                    raise _withdraw_error(blocked)
                acct = engine.ledger.find(owner, terms.asset, "available", "spot")
                have = acct.available if acct is not None else 0
                if have < amount:
                    raise BinanceError(-4026, f"You have insufficient balance: {format_amount(amount, d, trim=True)} {terms.asset} "
                                              f"needed, {format_amount(have, d, trim=True)} available.")
            wallet = "btc_hot" if cfg.chain == "bitcoin" else "eth_hot"
            return wallet, fee

        wallet, fee = self.ex.read(check)
        token = email_token or "api-" + hashlib.sha256(f"{wid}\0{owner}".encode()).hexdigest()
        ip = ""
        # the destination receives the amount less the fee (Binance's rule); the account pays `amount`
        command = RequestWithdrawal(wid, owner, terms.asset, wallet, address, amount - fee, fee,
                                    hashlib.sha256(token.encode()).hexdigest(), via, ip)
        return command, token

    async def withdraw_history(self, request: Request) -> list[dict[str, Any]]:
        from ..custody.commands import custody_state

        params, owner = await self.gate.signed(request, "read", weight=1)
        coin = self._coin(params).asset if params.get("coin") is not None else None
        status = params.integer("status", default=-1, low=0, high=6) if params.get("status") is not None else -1
        start, end = params.integer("startTime", default=0), params.integer("endTime", default=2**62)
        offset, limit = params.integer("offset", default=0, high=10**6), params.integer("limit", default=1000, low=1, high=MAX_ROWS)
        order_id = params.get("withdrawOrderId")
        want_id = ("wc-" + hashlib.sha256(f"{owner}\0{order_id}".encode()).hexdigest()[:24]) if order_id else None
        id_list = set((params.get("idList") or "").split(",")) - {""}
        if self.runtime is None:
            return []

        def read(engine: Any) -> list[dict[str, Any]]:
            rows = []
            for w in custody_state(engine).withdrawals.values():
                if w.account_id != owner:
                    continue
                d = engine.ledger.assets.get(w.asset).decimals
                rows.append(_withdraw_row(w, d, self.runtime.terms[w.asset].network if w.asset in self.runtime.terms else ""))
            return rows

        rows = [r for r in self.ex.read(read)
                if (not coin or r["coin"] == coin) and (status < 0 or r["status"] == status)
                and start <= r["_created_ms"] <= end and (want_id is None or r["id"] == want_id)
                and (not id_list or r["id"] in id_list)]
        rows.sort(key=lambda r: -r["_created_ms"])
        for r in rows:
            del r["_created_ms"]
        return rows[offset : offset + limit]


# What a withdrawal's owner is told. The operators' rule text, risk score and signal names stay in the
# staff console (`ringfence review`, /admin/v1/withdrawals/...): shown to the user (or to whoever took
# over the account) they would teach how to get past the fraud rules.
REFUSED_BY_RULE = "refused by a withdrawal rule — contact support"
REFUSED_AFTER_REVIEW = "refused after review — contact support"
UNDER_REVIEW = "under review"
# the engine's own end reasons written for the user (kept as they are); any other failure reason is
# an operator's text
_USER_END_REASONS = ("cancelled by the user", "the e-mail confirmation link expired",
                     "the destination was removed from your address book")


def user_end_reason(w: Any) -> str:
    """Why a withdrawal ended, as its owner is told: a category, never the rule, reviewer or score."""
    if w.state == "denied":
        return REFUSED_BY_RULE
    if w.state == "rejected":
        return REFUSED_AFTER_REVIEW
    if w.state == "failed" and (w.end_reason or "").startswith(_USER_END_REASONS):
        return str(w.end_reason)
    return "failed; the amount is back in your balance — contact support"


def _withdraw_reason(w: Any) -> str:
    """The `info` of a withdrawal history row (the user's own view: no rule text, score or signal)."""
    if w.state == "requested":
        return "waiting for the e-mail confirmation"
    if w.state in ("failed", "denied", "rejected"):
        return user_end_reason(w)
    if w.state == "settled":
        return f"completed: {w.confirmations} confirmations, network fee {w.network_fee_minor}"
    if w.state == "manual_review":
        return UNDER_REVIEW
    if w.state == "awaiting_approvals":
        return "waiting for approval"
    if w.state == "approved" and w.not_before_ns:
        return "approved; sent after a security delay"
    return {"confirmed": "e-mail confirmed; being checked", "reviewed": "being checked",
            "approved": "approved; being processed", "signing": "being processed", "signed": "being processed",
            "broadcast": "sent; waiting for confirmations"}.get(w.state, w.state)


def _withdraw_row(w: Any, decimals: int, network: str) -> dict[str, Any]:
    status = WITHDRAW_STATUS.get(w.state, 4)
    if w.state == "failed" and w.end_reason == "cancelled by the user":
        status = 1
    row = {
        "id": w.id, "amount": format_amount(w.amount_minor, decimals, trim=True),
        "transactionFee": format_amount(w.fee_minor, decimals, trim=True), "coin": w.asset, "status": status,
        "address": w.address, "txId": w.txid, "applyTime": _apply_time(w.created_ns), "network": network,
        "transferType": 0, "info": _withdraw_reason(w), "confirmNo": w.confirmations, "walletType": 0, "txKey": "",
        "_created_ms": _ms(w.created_ns),
    }
    if w.ended_ns and w.state == "settled":
        row["completeTime"] = _apply_time(w.ended_ns)
    return row


def _span(seconds: object) -> str:
    """The configured lock as words ('24 hours' is Binance's text; the demo's is '10 minutes')."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        return "the lock period"
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} s"


def _address_book_lock(err: RingfenceError) -> str:
    """-4016's own text for the lock that a change of the withdrawal address book set (Binance's names
    password, 2FA and e-mail changes only): the change, the configured lock, and when it ends."""
    until_s = err.details.get("locked_until_s")
    if not isinstance(until_s, int) and isinstance(err.details.get("locked_until_ns"), int):
        until_s = -(-err.details["locked_until_ns"] // 10**9)
    text = f"Withdrawals are locked for {_span(err.details.get('lock_s'))} after a change to your withdrawal address book"
    if not isinstance(until_s, int):
        return text + f" ({err.message})."
    at = datetime.fromtimestamp(until_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return text + f"; they open again at {at} (in {max(0, until_s - time.time_ns() // 10**9)} s)."


def _withdraw_error(err: RingfenceError) -> BinanceError:
    code = err.code
    if code == "RF_ADDRESS_NOT_LISTED":
        return BinanceError(-4035, f"This address is not on the whitelist. Please join and try again. ({err.message})")
    if code == "RF_ADDRESS_COOLING":
        return BinanceError(-4036, f"The new address needs time before withdrawals: {err.message}")
    if code == "RF_WITHDRAWALS_LOCKED" and err.details.get("change") == "withdrawal_address_changed":
        return BinanceError(-4016, _address_book_lock(err))
    if code == "RF_WITHDRAWALS_LOCKED":
        return BinanceError(-4016, f"Within {_span(err.details.get('lock_s'))} after a password, second-factor or e-mail change, "
                                   f"withdrawal is prohibited. ({err.message})")
    if code == "RF_ACCOUNT_FROZEN" or (code == "RF_FORBIDDEN" and err.field == "account_id"):
        return BinanceError(-4015, f"Withdraw is limited. ({err.message})")
    if code == "RF_INSUFFICIENT_FUNDS":
        return BinanceError(-4026, f"You have insufficient balance. ({err.message})")
    if code == "RF_HALTED":
        return BinanceError(-4019, f"Current asset is not open for withdrawal: withdrawals are paused. ({err.message})")
    if code == "RF_INVALID_ADDRESS":
        return BinanceError(-4033, f"Illegal address: {err.message}")
    if code == "RF_INVALID_AMOUNT":
        return BinanceError(-4022, f"Not less than the minimum pick-up quantity: {err.message}")
    return from_ringfence(err)


def balance_updates(exchange: Any, hub: Any) -> Callable[[int, int, list[list[Any]], dict[str, int]], None]:
    """A batch subscriber: Binance's `balanceUpdate` on the owner's user data streams when a
    deposit is credited (or released from quarantine, or reversed) and when a withdrawal leaves."""
    from ..custody.commands import custody_state
    from ..custody.state import CustodyEvent

    signs = {"deposit.credited": 1, "deposit.released": 1, "deposit.reversed": -1, "withdrawal.settled": -1}

    def on_batch(first_seq: int, ts_ns: int, outputs: list[list[Any]], before: dict[str, int]) -> None:
        wanted = [e for events in outputs for e in events if type(e) is CustodyEvent and e.kind in signs]
        if not wanted:
            return

        def read(engine: Any) -> list[tuple[str, str, int, int]]:
            s = custody_state(engine)
            out = []
            for e in wanted:
                rec = s.deposits.get(e.ref) if e.kind.startswith("deposit.") else s.withdrawals.get(e.ref)
                if rec is None:
                    continue
                amount = rec.amount_minor + (getattr(rec, "fee_minor", 0) if e.kind.startswith("withdrawal.") else 0)
                out.append((rec.account_id, rec.asset, signs[e.kind] * amount, engine.ledger.assets.get(rec.asset).decimals))
            return out

        event_ms = ts_ns // 1_000_000
        for owner, asset, delta, decimals in exchange.read(read):
            for stream in hub._user_streams(owner):
                hub.publish(stream, {"e": "balanceUpdate", "E": event_ms, "a": asset,
                                     "d": format_amount(delta, decimals, trim=True), "T": event_ms})

    return on_batch


def build_capital_router(api: CapitalApi) -> APIRouter:
    router = APIRouter(prefix="/sapi/v1", tags=["binance capital (deposits and withdrawals)"])

    def add(path: str, method: str, fn: Callable[[Request], Awaitable[Any]], weight: int, summary: str) -> None:
        spec = CAPITAL_PARAMS[(method, path)]
        add_binance_route(router, api.gate, spec, path, method, fn, weight, summary,
                          name=f"sapi_{method.lower()}_{path.strip('/').replace('/', '_')}", openapi_extra=_doc(spec))

    add("/capital/config/getall", "GET", api.config_getall, 10, "Coins, networks, fees and limits (signed)")
    add("/capital/deposit/address", "GET", api.deposit_address, 10, "The account's deposit address for a coin (signed)")
    add("/capital/deposit/hisrec", "GET", api.deposit_history, 1, "Deposit history with confirmations (signed)")
    add("/capital/withdraw/apply", "POST", api.withdraw, 1, "Withdraw to an address-book entry (signed, withdraw scope)")
    add("/capital/withdraw/history", "GET", api.withdraw_history, 1, "Withdrawal history with status and reason (signed)")
    add("/capital/deposit/sourceOfFunds", "POST", api.source_of_funds, 1,
        "File a source-of-funds declaration for a quarantined deposit (signed, trade scope; ringfence's own)")
    return router
