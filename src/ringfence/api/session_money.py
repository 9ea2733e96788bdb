"""Deposits, withdrawals and the withdrawal address book from the signed-in web session.

The dashboard's wallet pages (`/wallet/deposit`, `/wallet/withdraw`, `/wallet/history`) call these
`/session/v3` endpoints; they run the *same* handlers as `/sapi/v1/capital/...` (`CapitalApi`), with
the session (cookie, CSRF token, Origin; `session_trading._authenticate`) in place of the API key:

* `GET  /session/v3/capital/config/getall`, `.../deposit/address` (plus the address as an inline SVG
  QR code, segno), `.../deposit/hisrec`, `.../withdraw/history`: read scope;
* `POST /session/v3/capital/withdraw/apply` (coin, network, address, amount, code): a fresh second
  factor — the TOTP `code` in the request (identity's step-up, which rotates the session cookie) or a
  passkey step-up within 5 minutes — then `CapitalApi.submit_withdrawal` (every edge check, the
  engine's `RequestWithdrawal` with the same rules), and an e-mail (anti-phishing code) whose link
  confirms it: Binance status 0 "e-mail sent" until then;
* `GET/POST/DELETE /session/v3/addressBook`: list (with the cooling state), add (coin, network,
  address, code: the address is validated for its network at the edge by `CapitalApi.check_address`,
  a fresh second factor is required and identity records the change, then an e-mail carries a link;
  only the link submits `AddWithdrawalAddress` with the configured cooling period), remove.
* `POST /session/v3/account/email` (new_email, code): the security centre's e-mail change — a fresh
  second factor as above (an account without one cannot change its e-mail) — then a link to the new
  address (the same answer whether or not that address is taken); its `/confirm-email` page changes
  the address, tells the old one and locks withdrawals like every credential change (docs/security.md).

The e-mailed links carry sealed tokens (AES-GCM under identity's key, purpose-bound, 30 minutes);
the withdrawal's link is the engine's own e-mail token (only its sha256 is journaled).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import RingfenceError, ValidationError
from ..identity import sessions
from ..identity.context import IdentityContext
from ..i18n import N_
from .binance import EndpointParams, check_params
from .binance_errors import BinanceError, from_ringfence
from .capital import CAPITAL_PARAMS, UNDER_REVIEW, CapitalApi, user_end_reason
from .session_trading import NO_STORE, PREFIX, SessionCaller, _authenticate, _refuse, _Refused

__all__ = ["build_session_money_router", "install_session_money", "LINK_TTL_S"]

LINK_TTL_S = 1800
LINK_MAX = 1024  # characters of a sealed address link's token (a real one is about 250)
USED_LINK_PURPOSE = "address_link"  # identity_email_tokens.purpose of a used address link's nonce
#: identity_email_tokens.purpose of an address's removal (its used_at_s): links of it made until then are void
REMOVED_PURPOSE = "address_removed"
LINK_REVOKED = N_("This confirmation link is no longer valid.")
ADDRESS_PURPOSE = "ringfence/address-book/confirm/v1"
BOOK_ADD = EndpointParams(("coin", "network", "address", "code"), ("coin", "address"))
BOOK_DEL = EndpointParams(("coin", "address"), ("coin", "address"))
BOOK_LIST = EndpointParams(("coin",))
WD_CANCEL = EndpointParams(("id",), ("id",))
EMAIL_CHANGE = EndpointParams(("new_email", "code"), ("new_email",))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    """The bytes of a token exactly as `_b64` wrote it; any other spelling of them (padding, '+' or
    '/', trailing junk, stray bits in the last character) is a ValueError: one sealed payload has one
    token, so nothing keyed on a token can be dodged by re-spelling it."""
    raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(raw) != text:
        raise ValueError("not the canonical base64url spelling")
    return raw


def qr_svg(text: str) -> str:
    import segno

    svg = segno.make(text, error="m").svg_inline(scale=5, border=4, dark="#000", light="#fff", title="QR code of the deposit address")
    return svg.replace("<svg ", '<svg id="deposit-qr" role="img" ', 1)


def _fresh_factor(ctx: IdentityContext, token: str | None, code: str | None) -> str | None:
    """A second factor passed now (TOTP `code`: step-up, returns the rotated session token) or within
    5 minutes (a passkey step-up); raises a RingfenceError otherwise. Runs in a worker thread."""
    from ..identity import second_factor

    try:
        if code:
            return second_factor.step_up(ctx, token, method="totp", value=code).token
        sessions.require_fresh_second_factor(sessions.authenticate(ctx, token))
    except RingfenceError as err:  # a wrong or missing code: nothing was submitted
        raise _Refused(403, f"Second factor not accepted: {err}. Enter the current code of your authenticator app "
                            "(or confirm with your passkey) and try again.") from None
    return None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _refused(events: list[Any]) -> list[Any]:
    """The events, or the engine's refusal as the error it names (nothing changed)."""
    from ..engine.core import CommandRejected
    from ..engine.node import rejection_error

    for e in events:
        if isinstance(e, CommandRejected):
            raise rejection_error(e)
    return events


@dataclasses.dataclass(frozen=True)
class AddressLink:
    """What an address link adds: shown on its page before the button, and after."""

    asset: str
    network: str
    address: str
    cooling_s: int
    expires_s: int


@dataclasses.dataclass(frozen=True)
class WithdrawalLink:
    """The withdrawal a link confirms, as its page shows it (amounts as decimal strings)."""

    id: str
    asset: str
    network: str
    amount: str  # as asked for (the fee included)
    fee: str
    received: str  # what the address receives
    address: str
    state: str
    end_reason: str
    expired: bool


class _AlreadyDone(BinanceError):
    """The link's work is already done (the address is in the book, the withdrawal confirmed): a second
    click or a replay, not a failure. Still 409 (nothing changed), but its page says so and where to
    follow it, not "not confirmed"."""

    def __init__(self, msg: str, *, wid: str = "", asset: str = "", address: str = "", cooling_left_s: int = 0) -> None:
        super().__init__(-1002, msg, 409)
        self.wid, self.asset, self.address = wid, asset, address
        self.cooling_left_s = cooling_left_s  # an address: how long it still cools (0: usable now)


class _LinkSpent(BinanceError):
    """An address link that expired or was used: its page says only that (the same whatever the book
    holds: intruder review, an expired link told its holder whether the address was in the book)."""

    def __init__(self, msg: str, status: int) -> None:
        super().__init__(-1002, msg, status)


class _AfterStepUp(Exception):
    """A refusal after a TOTP step-up rotated the session: the answer must still set the new cookie."""

    def __init__(self, rotated: str | None, err: RingfenceError) -> None:
        super().__init__(str(err))
        self.rotated = rotated
        self.err = err


class SessionMoney:
    def __init__(self, capital: CapitalApi, ctx: IdentityContext) -> None:
        self.capital = capital
        self.ctx = ctx

    def link(self, path: str, token: str) -> str:
        return f"{self.ctx.settings.identity_public_url}{path}?token={token}"

    # ---------------------------------------------------------------- address book

    def book(self, owner: str, coin: str | None) -> list[dict[str, Any]]:
        from ..custody.commands import custody_state

        def read(engine: Any) -> list[tuple[str, int, int]]:
            s = custody_state(engine)
            prefix = owner + "|"
            return [(k, at, s.address_usable_ns.get(k, at)) for k, at in s.address_book.items() if k.startswith(prefix)]

        now = time.time_ns()
        rows = []
        for key, added_ns, usable_ns in self.capital.ex.read(read):
            _, asset, address = key.split("|", 2)
            if coin and asset != coin:
                continue
            terms = self.capital.runtime.terms.get(asset) if self.capital.runtime is not None else None
            cooling_s = max(0, -(-(usable_ns - now) // 10**9))
            rows.append({"coin": asset, "network": terms.network if terms else "", "address": address,
                         "addedTime": added_ns // 10**6, "usableTime": usable_ns // 10**6,
                         "status": "cooling" if cooling_s else "usable", "coolingSecondsLeft": cooling_s})
        rows.sort(key=lambda r: (r["coin"], r["addedTime"]))
        return rows

    def request_address(self, token: str | None, caller: SessionCaller, terms: Any, address: str, code: str | None,
                        ip: str) -> str | None:
        """Fresh second factor, identity's record of the change, the e-mail with the sealed link.
        Returns the rotated session token when a TOTP code stepped the session up."""
        rotated = _fresh_factor(self.ctx, token, code)
        try:
            self._record_and_mail(rotated or token, caller, terms, address, ip)
        except RingfenceError as err:  # e.g. the account was frozen meanwhile: keep the rotated session
            raise _AfterStepUp(rotated, err) from None
        return rotated

    def request_email(self, token: str | None, new_email: str, code: str | None) -> str | None:
        """The security centre's e-mail change (`accounts.request_email_change`) after a fresh second
        factor. Returns the rotated session token when a TOTP code stepped the session up."""
        from ..identity import accounts

        rotated = _fresh_factor(self.ctx, token, code)
        try:
            accounts.request_email_change(self.ctx, rotated or token, new_email)
        except RingfenceError as err:  # e.g. it is already the account's address: keep the rotated session
            raise _AfterStepUp(rotated, err) from None
        return rotated

    def _record_and_mail(self, token: str | None, caller: SessionCaller, terms: Any, address: str, ip: str) -> None:
        from ..identity import events, mail
        from ..store.models import User

        events.withdrawal_address_changed(self.ctx, token, ip=ip)
        payload = {"a": caller.account_id, "c": terms.asset, "d": address, "x": self.ctx.now() + LINK_TTL_S,
                   "n": secrets.token_hex(8)}
        sealed = _b64(self.ctx.sealer.seal(json.dumps(payload).encode(), purpose=ADDRESS_PURPOSE))
        cooling = self.capital.runtime.address_cooling_s
        with self.ctx.store.tx() as db:
            user = db.get(User, sessions.authenticate(self.ctx, token).user_id)
            # the same one-click "this wasn't me" freeze link as the security-change notices carry
            mail.enqueue(self.ctx, db, user, "withdrawal_address_confirmation", {
                "asset": terms.asset, "address": address, "network": terms.network, "ip": ip or "unknown",
                "link": self.link("/wallet/confirm-address", sealed),
                "cooling": cooling,  # seconds; the mail writes them in the reader's words ("10 minutes")
                "freeze_link": events.freeze_link(self.ctx, db, user, reason="withdrawal_address_requested")})

    def _open(self, token: str) -> dict[str, Any]:
        """The sealed payload of an address link, or a BinanceError (400) saying the link is not valid."""
        try:
            sealed = _unb64(token)
        except ValueError:  # binascii.Error too: '=' padding, '+' or '/', '.', '!' or other junk
            raise BinanceError(-1002, "This confirmation link is not valid: its token is not as it was e-mailed "
                                      "(open the link from the e-mail unchanged).", 400) from None
        try:
            payload = json.loads(self.ctx.sealer.unseal(sealed, purpose=ADDRESS_PURPOSE))
            for name in ("a", "c", "d", "x", "n"):
                if name not in payload:
                    raise KeyError(name)
            return dict(payload)
        except (RingfenceError, ValueError, KeyError, TypeError):
            raise BinanceError(-1002, "This confirmation link is not valid.", 400) from None

    def _used_digest(self, payload: dict[str, Any]) -> str:
        # keyed on the random nonce sealed inside the payload, not on the token's text: however the
        # token is spelled, one link has one nonce
        return self.ctx.sealer.token_digest(f"{ADDRESS_PURPOSE}|{payload['a']}|{payload['n']}")

    def _is_used(self, digest: str) -> bool:
        from sqlalchemy import select

        from ..store.models import EmailToken

        with self.ctx.store.tx() as db:
            return db.scalars(select(EmailToken.id).where(EmailToken.token_hash == digest)).first() is not None

    def address_link(self, token: str) -> AddressLink:
        """What the address link would add, or a BinanceError saying why it cannot; reads only (the
        link's GET page asks this before it offers its button: a mail scanner's fetch adds nothing).
        Runs in a worker thread (it reads identity's store)."""

        payload = self._open(token)
        try:
            owner, asset, address, expires_s = str(payload["a"]), str(payload["c"]), str(payload["d"]), int(payload["x"])
        except (ValueError, TypeError):
            raise BinanceError(-1002, "This confirmation link is not valid.", 400) from None
        # An expired or used link says so before the book is read: whoever holds it (a forwarded mail, a
        # browser's history) learns nothing of the book's contents. Only a link that could still add the
        # address, and so tells its holder anyway, says that the address is already there (and how long
        # it still cools).
        if expires_s < self.ctx.now():
            raise _LinkSpent("This confirmation link expired (30 minutes); add the address again.", 400)
        if self._is_used(self._used_digest(payload)):
            raise _LinkSpent("This confirmation link was already used.", 409)
        self._check_not_removed(owner, asset, address, expires_s)

        listed = next((e for e in self.book(owner, asset) if e["address"].lower() == address.lower()), None)
        if listed is not None:  # added meanwhile (another link of the same address): done, not "not added"
            raise _AlreadyDone("This address is already in your address book; nothing to confirm.", asset=asset, address=address,
                               cooling_left_s=listed["coolingSecondsLeft"])
        terms = self.capital.runtime.terms.get(asset) if self.capital.runtime is not None else None
        cooling_s = self.capital.runtime.address_cooling_s if self.capital.runtime is not None else 0
        return AddressLink(asset, terms.network if terms else asset, address, cooling_s, expires_s)

    def _removed_digest(self, owner: str, asset: str, address: str) -> str:
        return self.ctx.sealer.token_digest(f"{ADDRESS_PURPOSE}|removed|{owner}|{asset}|{address.lower()}")

    def _check_not_removed(self, owner: str, asset: str, address: str, expires_s: int) -> None:
        """A link made before (or in the same second as) the owner last removed its address from the book is
        void (intruder review: a still-live link re-added an address its owner had removed since). Its page
        says only that it is no longer valid."""
        from sqlalchemy import select

        from ..store.models import EmailToken

        with self.ctx.store.tx() as db:
            removed_s = db.scalars(select(EmailToken.used_at_s).where(
                EmailToken.token_hash == self._removed_digest(owner, asset, address),
                EmailToken.purpose == REMOVED_PURPOSE)).first()
        if removed_s is not None and expires_s - LINK_TTL_S <= removed_s:
            raise _LinkSpent(LINK_REVOKED, 409)

    def note_removed(self, owner: str, asset: str, address: str) -> None:
        """Record that the owner removes `address` now: every link of it made until now stops working
        (`_check_not_removed`). Kept as long as such a link could live (`LINK_TTL_S`), then pruned with
        the e-mail tokens. Written before the engine removes the entry, so a link confirmed meanwhile
        finds it. Runs in a worker thread."""
        from sqlalchemy import select, update
        from sqlalchemy.exc import IntegrityError

        from ..store.models import EmailToken, User

        digest, now = self._removed_digest(owner, asset, address), self.ctx.now()
        for _ in range(2):  # a concurrent removal of the same address may insert the row first
            try:
                with self.ctx.store.tx() as db:
                    done = db.execute(update(EmailToken).where(EmailToken.token_hash == digest, EmailToken.purpose == REMOVED_PURPOSE)
                                      .values(used_at_s=now, expires_at_s=now + LINK_TTL_S))
                    if getattr(done, "rowcount", 0):
                        return
                    user = db.scalars(select(User).where(User.account_id == owner)).first()
                    if user is None:
                        return
                    db.add(EmailToken(user_id=user.id, purpose=REMOVED_PURPOSE, token_hash=digest, email=user.email,
                                      expires_at_s=now + LINK_TTL_S, used_at_s=now))
                return
            except IntegrityError:
                continue

    def _claim(self, payload: dict[str, Any], expires_s: int) -> str:
        """Mark the link used in identity's store (a row of `identity_email_tokens`, purpose
        `address_link`, keyed on the sealed nonce; pruned with the other e-mail tokens once expired).
        Persisted, not kept in memory: a restart must not make a used link usable again within its 30
        minutes, and the address book (the engine's) cannot tell a removed entry from a never-added one.
        The unique token_hash makes the claim atomic: of two concurrent POSTs one wins."""
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        from ..store.models import EmailToken, User

        digest = self._used_digest(payload)
        try:
            with self.ctx.store.tx() as db:
                user = db.scalars(select(User).where(User.account_id == str(payload["a"]))).first()
                if user is None:
                    raise BinanceError(-1002, "This confirmation link is not valid.", 400)
                db.add(EmailToken(user_id=user.id, purpose=USED_LINK_PURPOSE, token_hash=digest, email=user.email,
                                  expires_at_s=expires_s, used_at_s=self.ctx.now()))
        except IntegrityError:  # the same link's nonce is already there: used (or being used) by another POST
            raise _LinkSpent("This confirmation link was already used.", 409) from None
        return digest

    def _unclaim(self, digest: str) -> None:
        from sqlalchemy import delete

        from ..store.models import EmailToken

        with self.ctx.store.tx() as db:
            db.execute(delete(EmailToken).where(EmailToken.token_hash == digest, EmailToken.purpose == USED_LINK_PURPOSE))

    async def confirm_address(self, token: str) -> AddressLink:
        """Add the address the link names, once: the link is marked used (in identity's store) before
        the engine is asked, so a second (or concurrent, or after a restart) POST finds it used; a
        refusal frees it again."""
        from ..custody.commands import AddWithdrawalAddress

        link = await run_in_threadpool(self.address_link, token)
        payload = self._open(token)
        digest = await run_in_threadpool(self._claim, payload, link.expires_s)
        try:
            # again after the claim: a removal that came while the page was read voids the link too
            await run_in_threadpool(self._check_not_removed, str(payload["a"]), link.asset, link.address, link.expires_s)
            _refused(await self.capital.ex.submit(AddWithdrawalAddress(str(payload["a"]), link.asset, link.address)))
        except Exception:  # any refusal (engine or journal): nothing was added, so the link stays usable
            await run_in_threadpool(self._unclaim, digest)
            raise
        return link

    # ---------------------------------------------------------------- withdrawals

    def withdrawal_link(self, wid: str, token: str, *, engine_decides_expiry: bool = False) -> WithdrawalLink:
        """The withdrawal the link confirms, or a BinanceError saying why it cannot; reads only (the
        link's GET page asks this before it offers its button). A wrong token learns nothing more."""
        from ..custody.commands import custody_state
        from ..custody.state import EMAIL_CONFIRM_TTL_NS
        from ..money import format_amount

        def read(engine: Any) -> WithdrawalLink | None:
            w = custody_state(engine).withdrawals.get(wid)
            if w is None or not hmac.compare_digest(_digest(token), w.email_token_hash):
                return None
            d = engine.ledger.assets.get(w.asset).decimals
            terms = self.capital.runtime.terms.get(w.asset) if self.capital.runtime is not None else None
            # the amount as the user asked for it and the e-mail says it (the fee comes out of it), and what arrives
            return WithdrawalLink(w.id, w.asset, terms.network if terms else w.asset,
                                  format_amount(w.amount_minor + w.fee_minor, d, trim=True), format_amount(w.fee_minor, d, trim=True),
                                  format_amount(w.amount_minor, d, trim=True), w.address, w.state,
                                  user_end_reason(w) if w.state in ("failed", "denied", "rejected") else "",
                                  time.time_ns() - w.created_ns > EMAIL_CONFIRM_TTL_NS)

        link = self.capital.ex.read(read) if token else None
        if link is None:
            raise BinanceError(-1002, "This confirmation link is not valid.", 400)
        if link.state in ("failed", "denied", "rejected"):
            raise BinanceError(-1002, f"This withdrawal is no longer waiting for confirmation: {link.end_reason or link.state}.", 409)
        if link.state != "requested":
            raise _AlreadyDone("This withdrawal is already confirmed; follow it on the withdraw page.", wid=link.id)
        if link.expired and not engine_decides_expiry:
            raise BinanceError(-1002, "This confirmation link expired (30 minutes); request the withdrawal again.", 400)
        return link

    async def confirm_withdrawal(self, wid: str, token: str) -> WithdrawalLink:
        """Confirm the withdrawal, once: the engine moves it from `requested` only (a replay is
        `withdrawal.unchanged`), and the answer says which happened."""
        from ..custody.commands import ConfirmWithdrawalEmail, custody_state
        from ..custody.state import CustodyEvent

        link = self.withdrawal_link(wid, token, engine_decides_expiry=True)  # an expired one: the engine voids it
        wallet = self.capital.ex.read(lambda engine: custody_state(engine).withdrawals[wid].wallet)
        events = _refused(await self.capital.ex.submit(ConfirmWithdrawalEmail(wid, link.asset, wallet, token)))
        kinds = [e.kind for e in events if isinstance(e, CustodyEvent)]
        if "withdrawal.confirmed" not in kinds:
            self.withdrawal_link(wid, token)  # raises why (confirmed meanwhile, expired: the engine voided it)
            raise BinanceError(-1002, "This withdrawal was not confirmed; open the link again.", 409)
        return link

    def mail_withdrawal(self, caller: SessionCaller, wid: str, token: str) -> None:
        """The confirmation e-mail: what the link's page shows (the amount asked for, the fee, what
        arrives: the engine's record, in minor units, as decimal strings), when the link expires, and a
        freeze link for a reader who did not ask for it."""
        from sqlalchemy import select

        from ..custody.commands import custody_state
        from ..custody.withdrawals import confirmation_mail_params
        from ..identity import events, mail
        from ..store.models import User

        link = self.withdrawal_link(wid, token, engine_decides_expiry=True)
        created_ns = self.capital.ex.read(lambda engine: custody_state(engine).withdrawals[wid].created_ns)
        with self.ctx.store.tx() as db:
            user = db.scalars(select(User).where(User.account_id == caller.account_id)).first()
            assert user is not None
            mail.enqueue(self.ctx, db, user, "withdrawal_confirmation", confirmation_mail_params(
                link.amount, link.fee, link.received, link.asset, link.address, created_ns,
                f"{self.ctx.settings.identity_public_url}/wallet/confirm-withdrawal?id={wid}&token={token}",
                events.freeze_link(self.ctx, db, user, reason="withdrawal_requested")))



_RANK = {"requested": 0, "confirmed": 1, "reviewed": 2, "manual_review": 3, "awaiting_approvals": 3, "approved": 4,
         "signing": 5, "signed": 6, "broadcast": 7, "settled": 8}


def timeline(w: Any) -> list[dict[str, Any]]:
    """The withdrawal's steps so far, each with its Binance status and a reason its owner may read,
    from the engine's record (so a reload or another device shows the same history). No rule text,
    risk score, signal name or reviewer: those are the operators' (staff console)."""
    rank = _RANK.get(w.state, -1)
    steps = [{"status": 0, "step": "e-mail sent", "info": "waiting for the e-mail confirmation"}]
    if rank >= 1 or (w.state in ("denied", "rejected") or (w.state == "failed" and w.risk_score)):
        steps.append({"status": 4, "step": "e-mail confirmed", "info": "the button on the e-mailed link's page was pressed"})
    if rank >= 2 or w.risk_reasons or w.risk_score or w.decision:
        steps.append({"status": 4, "step": "checks", "info": "done" if (rank >= 4 or w.decision) else "in progress"})
    if w.manual_review or w.required_approvals:
        steps.append({"status": 2, "step": "awaiting approval", "info": UNDER_REVIEW if w.manual_review else "waiting for approval"})
    if rank >= 5:
        steps.append({"status": 4, "step": "processing", "info": "signing" if rank == 5 else f"signed; txid {w.txid}"})
    if rank >= 7:
        steps.append({"status": 4, "step": "broadcast", "info": f"{w.confirmations} confirmation(s)"})
    if w.state == "settled":
        steps.append({"status": 6, "step": "completed", "info": f"{w.confirmations} confirmations"})
    elif w.state in ("denied", "rejected"):
        steps.append({"status": 3, "step": "rejected", "info": user_end_reason(w)})
    elif w.state == "failed":
        cancelled = w.end_reason == "cancelled by the user"
        steps.append({"status": 1 if cancelled else 5, "step": "cancelled" if cancelled else "failure", "info": user_end_reason(w)})
    return steps


def _binance_response(err: BinanceError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers={**err.headers, **NO_STORE})


def build_session_money_router(capital: CapitalApi, ctx: IdentityContext) -> APIRouter:
    money = SessionMoney(capital, ctx)
    gate = capital.gate
    router = APIRouter()

    async def run(request: Request, spec: EndpointParams, weight: int,
                  then: Callable[[SessionCaller, Any], Awaitable[Any]]) -> Response:
        try:
            await gate.charge(request, weight)
            caller = await _authenticate(ctx, request)
            gate.key_limiter.charge(f"session:{caller.session_id}", weight)
            params = await gate.params(request)
            check_params(spec, params)
            result = await then(caller, params)
        except _Refused as refused:
            return _refuse(refused.status, refused.msg)
        except BinanceError as err:
            return _binance_response(err)
        except RingfenceError as err:
            return _binance_response(from_ringfence(err))
        if isinstance(result, Response):
            return result
        return JSONResponse(result, headers=NO_STORE)

    def same(method: str, path: str, fn: Callable[[Request], Awaitable[Any]], weight: int, extra: Callable[[Any], Any] | None = None) -> None:
        spec = dataclasses.replace(CAPITAL_PARAMS[(method, path)], signed=False)

        async def endpoint(request: Request) -> Response:
            async def call(caller: SessionCaller, params: Any) -> Any:
                result = await fn(request)
                return extra(result) if extra is not None else result

            return await run(request, spec, weight, call)

        endpoint.__name__ = f"session_money_{method.lower()}_{path.strip('/').replace('/', '_')}"
        router.add_api_route(PREFIX + path, endpoint, methods=[method], response_model=None, include_in_schema=False)

    same("GET", "/capital/config/getall", capital.config_getall, 10)
    same("GET", "/capital/deposit/address", capital.deposit_address, 10, lambda r: {**r, "qrSvg": qr_svg(r["address"])})
    same("GET", "/capital/deposit/hisrec", capital.deposit_history, 1)
    same("POST", "/capital/deposit/sourceOfFunds", capital.source_of_funds, 1)  # the deposit page's declaration form
    def with_timelines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from ..custody.commands import custody_state

        ids = [r["id"] for r in rows]
        recs = capital.ex.read(lambda engine: {i: custody_state(engine).withdrawals.get(i) for i in ids})
        return [{**r, "timeline": timeline(recs[r["id"]]) if recs.get(r["id"]) is not None else []} for r in rows]

    same("GET", "/capital/withdraw/history", capital.withdraw_history, 1, with_timelines)

    apply_spec = dataclasses.replace(CAPITAL_PARAMS[("POST", "/capital/withdraw/apply")], signed=False)
    apply_spec = dataclasses.replace(apply_spec, honoured=apply_spec.honoured + ("code",))

    def with_cookie(body: dict[str, Any], rotated: str | None, status: int = 200) -> Response:
        """The answer; after a TOTP step-up it carries the rotated session cookie and its CSRF token."""
        if rotated:
            body["csrfToken"] = sessions.csrf_token_for(ctx, rotated)
        response = JSONResponse(body, status_code=status, headers=NO_STORE)
        if rotated:
            response.set_cookie(sessions.SESSION_COOKIE_NAME, rotated, max_age=ctx.settings.identity_session_ttl_s,
                                path="/", secure=True, httponly=True, samesite="strict")
        return response

    @router.post(PREFIX + "/capital/withdraw/apply", include_in_schema=False)
    async def withdraw(request: Request) -> Response:
        async def go(caller: SessionCaller, params: Any) -> Response:
            terms = capital._coin(params)
            capital._network(params, terms)
            await capital.withdraw_command(params, caller.account_id, terms)  # every edge check before the code is spent
            token = request.cookies.get(sessions.SESSION_COOKIE_NAME)
            rotated = await run_in_threadpool(_fresh_factor, ctx, token, params.get("code"))
            email_token = secrets.token_urlsafe(24)
            try:
                result = await capital.submit_withdrawal(params, caller.account_id, email_token, via="web-session")
            except BinanceError as err:  # refused after the step-up: the answer still carries the new session
                return with_cookie(err.body(), rotated, err.status)
            await run_in_threadpool(money.mail_withdrawal, caller, result["id"], email_token)
            return with_cookie({**result, "status": 0, "info": "e-mail sent: open the link in it to confirm"}, rotated)

        return await run(request, apply_spec, 1, go)

    @router.get(PREFIX + "/addressBook", include_in_schema=False)
    async def list_book(request: Request) -> Response:
        async def go(caller: SessionCaller, params: Any) -> Any:
            coin = capital._coin(params).asset if params.get("coin") is not None else None
            return {"cooling": capital.runtime.address_cooling_s if capital.runtime is not None else 0,
                    "entries": money.book(caller.account_id, coin) if capital.runtime is not None else []}

        return await run(request, BOOK_LIST, 1, go)

    @router.post(PREFIX + "/addressBook", include_in_schema=False)
    async def add_address(request: Request) -> Response:
        async def go(caller: SessionCaller, params: Any) -> Response:
            terms = capital._coin(params)
            capital._network(params, terms)
            address = capital.check_address(terms, params.require("address"))
            token = request.cookies.get(sessions.SESSION_COOKIE_NAME)
            ip = gate.client_ip(request)
            try:
                rotated = await run_in_threadpool(money.request_address, token, caller, terms, address, params.get("code"), ip)
            except _AfterStepUp as after:
                mapped = from_ringfence(after.err)
                return with_cookie(mapped.body(), after.rotated, mapped.status)
            return with_cookie({"coin": terms.asset, "address": address, "status": "email_sent",
                                "info": "e-mail sent: open the link in it to add the address"}, rotated)

        return await run(request, BOOK_ADD, 5, go)

    @router.post(PREFIX + "/account/email", include_in_schema=False)
    async def change_email(request: Request) -> Response:
        async def go(caller: SessionCaller, params: Any) -> Response:
            from ..identity.fields import normalize_email

            new_email = normalize_email(params.require("new_email"), field="new_email")  # before the code is spent
            if new_email == caller.email:
                raise ValidationError("is already your e-mail address", field="new_email")
            token = request.cookies.get(sessions.SESSION_COOKIE_NAME)
            try:
                rotated = await run_in_threadpool(money.request_email, token, new_email, params.get("code"))
            except _AfterStepUp as after:
                mapped = from_ringfence(after.err)
                return with_cookie(mapped.body(), after.rotated, mapped.status)
            # the same answer whether or not the address is taken (no probing of registered addresses)
            return with_cookie({"status": "email_sent", "info": "if the new address can be used, a link to confirm the "
                                "change was sent to it; the address changes only when that link's button is pressed"}, rotated)

        return await run(request, EMAIL_CHANGE, 5, go)

    @router.delete(PREFIX + "/addressBook", include_in_schema=False)
    async def remove_address(request: Request) -> Response:
        from ..custody.commands import RemoveWithdrawalAddress

        async def go(caller: SessionCaller, params: Any) -> Any:
            terms = capital._coin(params)
            address = capital.check_address(terms, params.require("address"))
            await run_in_threadpool(money.note_removed, caller.account_id, terms.asset, address)
            await capital.ex.submit(RemoveWithdrawalAddress(caller.account_id, terms.asset, address))
            return {"coin": terms.asset, "address": address, "status": "removed"}

        return await run(request, BOOK_DEL, 1, go)

    @router.post(PREFIX + "/capital/withdraw/cancel", include_in_schema=False)
    async def cancel_withdrawal(request: Request) -> Response:
        """The user cancels their own withdrawal before it is signed (Binance status 1); the hold is
        released. Journaled as `CancelWithdrawal`, which the engine refuses once signing began."""
        from ..custody.commands import CancelWithdrawal, custody_state
        from ..custody.withdrawals import OPEN_STATES
        from ..errors import Conflict

        async def go(caller: SessionCaller, params: Any) -> Any:
            if "trade" not in caller.scopes:  # as for every money action of a session: signed in with the second factor
                raise _Refused(403, f"This session may not cancel a withdrawal: {caller.why_not('trade')}")
            wid = params.require("id")
            rec = capital.ex.read(lambda engine: custody_state(engine).withdrawals.get(wid))
            if rec is None or rec.account_id != caller.account_id:
                raise BinanceError(-1100, f"Illegal characters found in parameter 'id'; no withdrawal of yours has id '{wid[:40]}'.")
            if rec.rule == "return-to-sender":
                raise Conflict("a return to sender was decided by analysts; it cannot be cancelled here", field="id")
            if rec.state not in OPEN_STATES or rec.state in ("signing", "signed", "broadcast"):
                raise Conflict(f"the withdrawal is {rec.state}: only one not yet being signed can be cancelled", field="id")
            await capital.ex.submit(CancelWithdrawal(wid, rec.asset, rec.wallet, caller.account_id))
            return {"id": wid, "status": 1, "info": "cancelled by the user"}

        return await run(request, WD_CANCEL, 1, go)

    # ---------------------------------------------------------------- pages and e-mailed links

    from ..errors import Forbidden
    from ..identity.web import SECURITY_HEADERS, _form, _render, _t, page_locale

    # The e-mailed links' pages, in the reader's language (the cookie, the profile, Accept-Language).
    # GET changes nothing (a mail scanner or link preview fetches the link): it checks the link
    # read-only and shows what would be confirmed with one POST button; the POST acts, once. As for
    # /security/confirm-factor the POST carries no session CSRF token (the link's token in the form is
    # the secret, and the reader may be signed out or on another device); a foreign Origin is refused.
    def render(name: str, status_code: int = 200, **params: Any) -> HTMLResponse:
        # the identity pages' headers: their CSP lets the page's form post to this origin (the baseline's
        # form-action 'none' would block the button) and load the identity stylesheet and script
        response = _render(name, status_code, **params)
        response.headers.update(SECURITY_HEADERS)
        return response

    def link_error(err: RingfenceError | BinanceError, title: str) -> HTMLResponse:
        """The page of a link that did not act: why (the error's own sentence), the way back to the
        dashboard or sign-in, and the code as a small reference for support (message.html). A link
        whose work is already done says so instead, with where to follow it."""
        if isinstance(err, _AlreadyDone) and err.wid:
            return render("message.html", err.status, title=_t("Withdrawal already confirmed"),
                          message=_t("This withdrawal is already confirmed; follow it on the withdraw page."),
                          link="/wallet/withdraw")
        if isinstance(err, _AlreadyDone):  # a reopened link: where the cooling stands now, not as it was
            from ..identity.web import fmt_duration

            message = (_t("%(address)s is in your %(asset)s address book. It cools for %(left)s more before it can receive withdrawals.",
                          address=err.address, asset=err.asset, left=fmt_duration(err.cooling_left_s))
                       if err.cooling_left_s else
                       _t("%(address)s is in your %(asset)s address book and can receive withdrawals now.",
                          address=err.address, asset=err.asset))
            return render("message.html", err.status, title=_t("Withdrawal address already added"), message=message,
                          link="/wallet/withdraw")
        if isinstance(err, _LinkSpent):  # used or expired: not "not added" (it may have been), and nothing of the book
            return render("message.html", err.status, title=_t("This link cannot be used"), message=_t(err.msg),
                          code=str(err.code))
        if isinstance(err, BinanceError):
            return render("message.html", err.status if 400 <= err.status < 500 else 400, title=title,
                           message=err.msg, code=str(err.code))
        return render("message.html", err.http_status if 400 <= err.http_status < 500 else 400, title=title,
                       message=str(err), code=err.code)

    async def link_form(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is not None and origin != ctx.settings.identity_origin:
            raise Forbidden("cross-site requests are not allowed", field="origin")
        return await _form(request)

    @router.get("/wallet/confirm-address", include_in_schema=False)
    async def confirm_address_page(request: Request, token: str = "") -> HTMLResponse:
        await page_locale(request)
        try:
            link = await run_in_threadpool(money.address_link, token[:LINK_MAX])
        except (BinanceError, RingfenceError) as err:
            return link_error(err, _t("Address not added"))
        return render("confirm_address.html", link=link, token=token)

    @router.post("/wallet/confirm-address", include_in_schema=False)
    async def confirm_address(request: Request) -> HTMLResponse:
        await page_locale(request)
        try:
            form = await link_form(request)
            link = await money.confirm_address(form.get("token", "")[:LINK_MAX])
        except (BinanceError, RingfenceError) as err:
            return link_error(err, _t("Address not added"))
        from ..identity.web import fmt_duration

        return render("message.html", title=_t("Withdrawal address added"),
                       message=_t("%(address)s is in your %(asset)s address book. It cools for %(cooling)s before it can receive withdrawals.",
                                  address=link.address, asset=link.asset, cooling=fmt_duration(link.cooling_s)),
                       link="/wallet/withdraw")

    @router.get("/wallet/confirm-withdrawal", include_in_schema=False)
    async def confirm_withdrawal_page(request: Request, id: str = "", token: str = "") -> HTMLResponse:  # noqa: A002 (the link's name)
        await page_locale(request)
        try:
            link = money.withdrawal_link(id[:64], token[:128])
        except (BinanceError, RingfenceError) as err:
            return link_error(err, _t("Withdrawal not confirmed"))
        return render("confirm_withdrawal.html", w=link, token=token)

    @router.post("/wallet/confirm-withdrawal", include_in_schema=False)
    async def confirm_withdrawal(request: Request) -> HTMLResponse:
        await page_locale(request)
        try:
            form = await link_form(request)
            link = await money.confirm_withdrawal(form.get("id", "")[:64], form.get("token", "")[:128])
        except (BinanceError, RingfenceError) as err:
            return link_error(err, _t("Withdrawal not confirmed"))
        return render("message.html", title=_t("Withdrawal confirmed"),
                       message=_t("Withdrawal %(id)s is confirmed; follow it on the withdraw page.", id=link.id),
                       link="/wallet/withdraw")

    return router


def install_session_money(app: Any, capital: CapitalApi, ctx: IdentityContext) -> None:
    """Mount the session's capital endpoints, the e-mailed links and the wallet pages."""
    from importlib import resources
    from pathlib import Path

    from .app import _page_headers

    app.include_router(build_session_money_router(capital, ctx))
    static_dir = Path(str(resources.files("ringfence.web") / "dashboard"))

    async def wallet_page(request: Request) -> HTMLResponse:
        from ..web.pages import render_page  # in the visitor's language (docs/i18n.md)

        return HTMLResponse(await render_page(request, "wallet.html"), headers=_page_headers(request))

    for page in ("deposit", "withdraw", "history"):
        app.add_api_route(f"/wallet/{page}", wallet_page, methods=["GET"], include_in_schema=False)

    async def wallet_root() -> RedirectResponse:  # the address people type: the first wallet page, not a 404
        return RedirectResponse("/wallet/deposit", status_code=303)

    app.add_api_route("/wallet", wallet_root, methods=["GET"], include_in_schema=False)

    async def wallet_js(request: Request) -> FileResponse:
        return FileResponse(static_dir / "wallet.js", headers=_page_headers(request))

    app.add_api_route("/dashboard/wallet.js", wallet_js, methods=["GET"], include_in_schema=False)
