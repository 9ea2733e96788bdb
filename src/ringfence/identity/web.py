"""Identity web pages (FastAPI): sign up, sign in with TOTP or passkey, and the security centre.

A thin layer: it reads forms and cookies, calls the identity services, and renders Jinja2 templates
with autoescaping on (user-supplied text is always escaped, never executed). Every state-changing
request after sign-in carries the session-bound CSRF token (form field `csrf_token` or header
`X-CSRF-Token`), and every POST from a foreign `Origin` is refused (login CSRF). Cookies: `__Host-rf_session` and `__Host-rf_pending` (HttpOnly, Secure,
SameSite=Strict). A Content-Security-Policy without inline script blocks injected scripts as a
second line of defence. `create_router(ctx)` can be mounted into the dashboard app; `create_app(ctx)`
is a standalone app for development and tests.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from contextlib import asynccontextmanager
from contextvars import ContextVar
from importlib import resources
from typing import Any, AsyncIterator, Callable, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
from babel.dates import format_timedelta
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from ..errors import AuthenticationFailed, Busy, Forbidden, RingfenceError, Unauthorized, ValidationError
from ..i18n import format_amount, gettext_for, page_context, request_locale
from . import accounts, api_keys, events, mail, pgp_keys, second_factor, sessions
from .context import IdentityContext
from .security_centre import overview

__all__ = ["create_router", "create_app", "PasswordWork", "PENDING_COOKIE_NAME", "FORM_MAX_BYTES"]

_T = TypeVar("_T")

PENDING_COOKIE_NAME = "__Host-rf_pending"
FORM_MAX_BYTES = 128 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on form posts,
    # which the Origin check must refuse. Token-bearing URLs still never leak to other sites.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_env = Environment(loader=PackageLoader("ringfence.identity", "templates"), autoescape=select_autoescape(["html"]))
_env.filters["utc"] = lambda at_s: dt.datetime.fromtimestamp(int(at_s), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def totp_qr_svg(provisioning_uri: str) -> Markup:
    """The otpauth:// URI as an inline SVG QR code (segno): markup segno draws from the encoded bits,
    so nothing of the URI's text (the user's e-mail) appears in it. Inline SVG needs no data: URL."""
    import segno

    svg = segno.make(provisioning_uri, error="m").svg_inline(scale=5, border=4, dark="#000", light="#fff",
                                                             title="QR code for your authenticator app")
    return Markup(svg.replace("<svg ", '<svg id="totp-qr" role="img" ', 1))


#: The page's language and path, set per request by `page_locale` (an async dependency, so the sync
#: handlers that render in the thread pool see it): the selector's cookie, the profile, Accept-Language.
_PAGE_LOCALE: ContextVar[str] = ContextVar("page_locale", default="en")
_PAGE_PATH: ContextVar[str] = ContextVar("page_path", default="/")


async def page_locale(request: Request) -> None:
    from starlette.concurrency import run_in_threadpool

    ctx = getattr(request.app.state, "identity_ctx", None)
    token = _token(request)
    profile = await run_in_threadpool(accounts.profile_locale, ctx, token) if ctx is not None and token else None
    _PAGE_LOCALE.set(request_locale(request, profile))
    _PAGE_PATH.set(request.url.path)


def _t(message: str, **params: Any) -> str:
    """`message` in the page's language."""
    return gettext_for(_PAGE_LOCALE.get())(message, **params)


def fmt_duration(seconds: int) -> str:
    """A length of time in the page's language and the reader's words ("10 minutes", "1 Tag"), from whole
    seconds: the pages, the mails (mail.format_duration) and the wallet script (wallet.js) write it alike."""
    return format_timedelta(dt.timedelta(seconds=int(seconds)), threshold=1, locale=_PAGE_LOCALE.get())


def _render(name: str, status_code: int = 200, **params: Any) -> HTMLResponse:
    locale = _PAGE_LOCALE.get()
    page = page_context(locale)
    page.update(here=_PAGE_PATH.get(), fmt_number=lambda n: format_amount(str(int(n)), locale))
    page.update(fmt_duration=fmt_duration)
    page.update(event_label=lambda kind: mail.event_label(kind, page["_"]))  # a security event's kind, translated
    page.update(params)
    return HTMLResponse(_env.get_template(name).render(**page), status_code=status_code)


#: A form field as a sentence names it. The errors' own text stays English (docs/i18n.md) and reads on
#: from the field ("must be at least 10 characters"), so the field is named in English too.
_FIELD_WORDS = {"email": "The e-mail address", "new_email": "The new e-mail address", "password": "The password",
                "new_password": "The new password", "current_password": "The current password",
                "code": "The code", "token": "The link", "label": "The label", "country": "The country"}
_READS_ON = re.compile(r"(must|is|are|was|has|does|cannot|should)\b")

#: The pages whose form posts to their own address: a refusal there leads back to the form.
_FORM_PAGES = ("/signup", "/login", "/login/2fa", "/forgot-password", "/verify-email/new")


def for_people(err: RingfenceError) -> str:
    """The error as a sentence for a page: "The password must be at least 10 characters." rather than
    "body.password: must be ..." (the field's name, as code and the API write it, stays in `err.field`)."""
    field = (err.field or "").rsplit(".", 1)[-1]
    message = err.message.strip()
    if not field:
        return message
    words = _FIELD_WORDS.get(field) or "The " + field.replace("_", " ")
    if _READS_ON.match(message):  # "must be at least 10 characters" reads on from the field's name
        text = f"{words} {message}"
        return text if text.endswith((".", "!", "?", ")")) else text + "."
    label = words.removeprefix("The ")  # a sentence of its own: after the field as a form labels it
    return f"{label[:1].upper()}{label[1:]}: {message}"


class PasswordWork:
    """Runs an identity operation that hashes or verifies a password (argon2id: 64 MiB and ~0.1-0.5 s of
    CPU each) in a worker thread, never on the event loop: on the loop, 40 sign-ins at once stalled every
    other request of the process (GET /api/v3/ping) for 18 s. The whole operation goes to the thread, so
    its transaction stays on one thread (`Store.tx` opens a session per call; the engine's pool is
    thread-safe, as for FastAPI's sync routes); argon2-cffi releases the GIL while it hashes.

    At most `threads` operations run at once (memory: `threads` x the argon2 memory cost); at most
    `waiting_max` more wait for a thread. Past that the request is refused at once with `Busy` (503,
    Retry-After) and nothing is done: the queue never grows without bound. Context variables (the
    page's language) are copied into the thread (anyio). A request cancelled while its operation runs
    waits for it to finish (the transaction commits or rolls back whole); one cancelled while waiting
    never starts it. Rate limits, lockouts and the dummy verification for unknown e-mails are the
    operation's own and run in the thread unchanged."""

    RETRY_AFTER_S = 1

    def __init__(self, threads: int, waiting_max: int) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.admit_max = threads + waiting_max
        self.admitted = 0  # running + waiting; only the event loop's thread changes it

    async def __call__(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self.admitted >= self.admit_max:
            raise Busy(retry_after_s=self.RETRY_AFTER_S)
        self.admitted += 1
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)
        finally:
            self.admitted -= 1


def _retry_after(response: Response, err: RingfenceError) -> Response:
    """`response`, with `Retry-After` when `err` says how long to wait (RateLimited, Busy)."""
    retry = err.details.get("retry_after_s")
    if isinstance(retry, int) and retry > 0:
        response.headers["Retry-After"] = str(retry)
    return response


def _after(response: HTMLResponse, tasks: BackgroundTasks) -> HTMLResponse:
    """`response`, with `tasks` run once it is sent."""
    response.background = tasks
    return response


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "127.0.0.1"


def _set_cookie(response: Response, name: str, token: str, max_age_s: int) -> None:
    response.set_cookie(name, token, max_age=max_age_s, path="/", secure=True, httponly=True, samesite="strict")


_NEXT_PATH = re.compile(r"/[A-Za-z0-9/_\-.?=&%]{0,200}")


def safe_next(value: object) -> str | None:
    """Where to go after signing in (`?next=` / the form's `next`): a path on this site only — one '/'
    then path characters, never '//' (another host) or a scheme — else None (the security centre).
    Never an open redirect."""
    if isinstance(value, str) and _NEXT_PATH.fullmatch(value) and not value.startswith("//"):
        return value
    return None


def _session_response(ctx: IdentityContext, issued: sessions.IssuedSession, url: str = "/security") -> Response:
    response = RedirectResponse(url, status_code=303)
    _set_cookie(response, sessions.SESSION_COOKIE_NAME, issued.token, ctx.settings.identity_session_ttl_s)
    response.delete_cookie(PENDING_COOKIE_NAME, path="/", secure=True, httponly=True, samesite="strict")
    return response


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        raise ValidationError(f"the form must be at most {FORM_MAX_BYTES} bytes", field="form")
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _token(request: Request) -> str | None:
    return request.cookies.get(sessions.SESSION_COOKIE_NAME)


def _csrf(ctx: IdentityContext, request: Request, form: dict[str, str] | None = None) -> str:
    token = _token(request)
    sessions.authenticate(ctx, token)
    sent = (form or {}).get("csrf_token") or request.headers.get("x-csrf-token")
    sessions.verify_csrf(ctx, token, sent)
    assert token is not None
    return token


def create_router(ctx: IdentityContext) -> APIRouter:
    def same_origin_only(request: Request) -> None:
        # Browsers send Origin on cross-site POSTs. Refusing foreign origins blocks login CSRF (an
        # attacker signing the victim into the attacker's account) on the pre-session forms too.
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return
        origin = request.headers.get("origin")
        if origin is not None and origin != ctx.settings.identity_origin:
            raise Forbidden("cross-site requests are not allowed", field="origin")

    router = APIRouter(dependencies=[Depends(same_origin_only), Depends(page_locale)])
    # every route that hashes or verifies a password runs its accounts.* call through this
    password_work = PasswordWork(ctx.settings.identity_password_threads, ctx.settings.identity_password_waiting_max)

    @router.get("/static/identity.js")
    def static_js() -> Response:
        js = resources.files("ringfence.identity").joinpath("static/identity.js").read_text("utf-8")
        return Response(js, media_type="application/javascript")

    @router.get("/static/identity.css")
    def static_css() -> Response:
        css = resources.files("ringfence.identity").joinpath("static/identity.css").read_text("utf-8")
        return Response(css, media_type="text/css")

    @router.get("/signup", response_class=HTMLResponse)
    def signup_page() -> HTMLResponse:
        return _render("signup.html")

    @router.post("/signup", response_class=HTMLResponse)
    async def signup(request: Request) -> HTMLResponse:
        form = await _form(request)
        try:
            receipt = await password_work(accounts.sign_up, ctx, form.get("email", ""), form.get("password", ""),
                                          ip=_client_ip(request), locale=_PAGE_LOCALE.get())
        except RingfenceError as err:  # the form again, with what was typed (never the password) and why
            return _retry_after(_render("signup.html", status_code=err.http_status, error=for_people(err),
                                        email=form.get("email", "")[:254], error_field=err.field or ""), err)
        return _render("message.html", title=_t("Check your inbox"), message=_t(receipt.message), link="/login",
                       link_label=_t("Sign in"))

    def unusable_link(err: RingfenceError, message: str, link: str, link_label: str) -> HTMLResponse:
        """An e-mailed link that cannot be used (made up, used, expired): what to do instead, one link
        to the place that does it, the way back (message.html) and the error's code for support."""
        return _render("message.html", status_code=err.http_status, title=_t("This link cannot be used"), message=message,
                       code=err.code, link=link, link_label=link_label)

    def unusable_signup_link(err: RingfenceError) -> HTMLResponse:
        return unusable_link(err, _t("This confirmation link is invalid, already used or expired. If you already "
                                     "confirmed your address, sign in; otherwise ask for a new link."),
                             "/verify-email/new", _t("Send me a new link"))

    @router.get("/verify-email", response_class=HTMLResponse)
    def verify_page(token: str = "") -> HTMLResponse:
        # GET changes nothing (a mail scanner or link preview fetches the link): the POST button confirms
        try:
            email = accounts.check_verification_link(ctx, token)
        except Unauthorized as err:
            return unusable_signup_link(err)
        return _render("confirm_email.html", email=email, token=token)

    @router.post("/verify-email", response_class=HTMLResponse)
    async def verify(request: Request) -> HTMLResponse:
        # no session CSRF token (nobody is signed in yet): the link's token in the form is the secret,
        # and same_origin_only refuses a foreign Origin, as for /security/confirm-factor
        form = await _form(request)
        try:
            accounts.verify_email(ctx, form.get("token", ""))
        except Unauthorized as err:
            return unusable_signup_link(err)
        return _render("message.html", title=_t("E-mail confirmed"), message=_t("Your address is confirmed. You can sign in now."),
                       link="/login")

    @router.get("/verify-email/claim", response_class=HTMLResponse)
    def claim_page(token: str = "") -> HTMLResponse:
        # a resent link (/verify-email/new): GET changes nothing, it shows the password form
        try:
            email = accounts.check_claim_link(ctx, token)
        except Unauthorized as err:
            return unusable_signup_link(err)
        return _render("claim_account.html", email=email, token=token)

    @router.post("/verify-email/claim", response_class=HTMLResponse)
    async def claim(request: Request) -> HTMLResponse:
        # as /verify-email: the link's token in the form is the secret, same_origin_only refuses a foreign
        # Origin; the address is confirmed and the chosen password set in one transaction
        form = await _form(request)
        token = form.get("token", "")
        try:
            await password_work(accounts.claim_pending_account, ctx, token, form.get("password", ""), ip=_client_ip(request),
                                locale=_PAGE_LOCALE.get())  # the claimer's language, as at sign-up
        except Unauthorized as err:
            return unusable_signup_link(err)
        except (ValidationError, Busy) as err:
            if isinstance(err, ValidationError) and err.field != "password":
                raise
            email = accounts.check_claim_link(ctx, token)  # the form again, with what to change (nothing changed)
            return _retry_after(_render("claim_account.html", status_code=err.http_status, email=email, token=token,
                                        error=for_people(err)), err)
        return _render("message.html", title=_t("E-mail confirmed"),
                       message=_t("Your address is confirmed and your password is set. You can sign in now."), link="/login")

    @router.get("/verify-email/new", response_class=HTMLResponse)
    def resend_page() -> HTMLResponse:
        return _render("resend_verification.html")

    @router.post("/verify-email/new", response_class=HTMLResponse)
    async def resend(request: Request) -> HTMLResponse:
        # before sign-in, as /signup: no session CSRF token; same_origin_only refuses a foreign Origin
        form = await _form(request)
        tasks = BackgroundTasks()  # the look-up and the mail run after the answer: its time tells nothing
        try:
            receipt = accounts.resend_verification(ctx, form.get("email", ""), ip=_client_ip(request), later=tasks.add_task)
        except RingfenceError as err:  # as /signup: the form again, what was typed kept
            return _retry_after(_render("resend_verification.html", status_code=err.http_status, error=for_people(err),
                                        email=form.get("email", "")[:254]), err)
        return _after(_render("message.html", title=_t("Check your inbox"), message=_t(receipt.message), link="/login",
                              link_label=_t("Sign in")), tasks)

    @router.get("/forgot-password", response_class=HTMLResponse)
    def forgot_page() -> HTMLResponse:
        return _render("forgot_password.html")

    @router.post("/forgot-password", response_class=HTMLResponse)
    async def forgot(request: Request) -> HTMLResponse:
        # as /verify-email/new: no session CSRF token; same_origin_only refuses a foreign Origin; the same
        # answer for every address
        form = await _form(request)
        tasks = BackgroundTasks()  # as /verify-email/new: whether an account gets a link does not show in the time
        try:
            receipt = accounts.request_password_reset(ctx, form.get("email", ""), ip=_client_ip(request), later=tasks.add_task)
        except RingfenceError as err:  # as /signup: the form again, what was typed kept
            return _retry_after(_render("forgot_password.html", status_code=err.http_status, error=for_people(err),
                                        email=form.get("email", "")[:254]), err)
        return _after(_render("message.html", title=_t("Check your inbox"), message=_t(receipt.message), link="/login",
                              link_label=_t("Sign in")), tasks)

    def unusable_reset_link(err: RingfenceError) -> HTMLResponse:
        return unusable_link(err, _t("This password link is invalid, already used or expired. Ask for a new one."),
                             "/forgot-password", _t("Send me a new link"))

    @router.get("/reset-password", response_class=HTMLResponse)
    def reset_page(token: str = "") -> HTMLResponse:
        # GET changes nothing (a mail scanner fetches the link): it shows the form
        try:
            link = accounts.check_reset_link(ctx, token)
        except Unauthorized as err:
            return unusable_reset_link(err)
        return _render("reset_password.html", email=link.email, needs=link.needs, token=token)

    @router.post("/reset-password", response_class=HTMLResponse)
    async def reset(request: Request) -> HTMLResponse:
        # as /verify-email/claim: the link's token in the form is the secret, same_origin_only refuses a
        # foreign Origin; a refused password or code shows the form again (nothing changed)
        form = await _form(request)
        token = form.get("token", "")
        try:
            done = await password_work(accounts.reset_password, ctx, token, form.get("password", ""), form.get("code", ""),
                                       ip=_client_ip(request))
        except (ValidationError, AuthenticationFailed, Busy) as err:  # before Unauthorized: a wrong code is one
            if not isinstance(err, Busy) and err.field not in ("password", "code"):
                if isinstance(err, Unauthorized):
                    return unusable_reset_link(err)
                raise
            link = accounts.check_reset_link(ctx, token)
            return _retry_after(_render("reset_password.html", status_code=err.http_status, email=link.email,
                                        needs=link.needs, token=token, error=for_people(err)), err)
        except Unauthorized as err:
            return unusable_reset_link(err)
        message = _t("Your new password is set and the account was signed out everywhere. You can sign in now.")
        if done.api_keys_revoked:  # as a freeze does: keys made with the old password may not be the owner's
            message += " " + _t("Its API keys were revoked (%(count)s): if you use the API, create new keys in the "
                                "security centre.", count=done.api_keys_revoked)
        return _render("message.html", title=_t("Password changed"), message=message, link="/login", link_label=_t("Sign in"))

    def unusable_change_link(err: RingfenceError) -> HTMLResponse:
        # the reason stays the error's own (made up, used, expired, or replaced by a newer request); the
        # change is asked for again in the security centre
        return unusable_link(err, err.message, "/security", _t("Back to the security centre"))

    @router.get("/confirm-email", response_class=HTMLResponse)
    def confirm_email_page(token: str = "") -> HTMLResponse:
        # as /verify-email: GET only checks the link and shows the new address; the POST button changes it
        try:
            email = accounts.check_email_change_link(ctx, token)
        except Unauthorized as err:
            return unusable_change_link(err)
        return _render("confirm_email.html", email=email, token=token, change=True,
                       lock_s=ctx.settings.identity_withdrawal_lock_s)

    @router.post("/confirm-email", response_class=HTMLResponse)
    async def confirm_email(request: Request) -> HTMLResponse:
        # no session needed (the link may be opened on another device): the link's token is the secret,
        # and same_origin_only refuses a foreign Origin
        form = await _form(request)
        try:
            email = accounts.confirm_email_change(ctx, form.get("token", ""), ip=_client_ip(request))
        except Unauthorized as err:
            return unusable_change_link(err)
        return _render("message.html", title=_t("E-mail address changed"),
                       message=_t("Your account's e-mail address is now %(email)s: sign in with it.", email=email),
                       link="/security")

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> HTMLResponse:
        return _render("login.html", next_path=safe_next(request.query_params.get("next")))

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        try:
            result = await password_work(accounts.login, ctx, form.get("email", ""), form.get("password", ""),
                                         ip=_client_ip(request), user_agent=request.headers.get("user-agent", ""))
        except RingfenceError as err:  # as /signup: the form again, the address kept, the password not
            return _retry_after(_render("login.html", status_code=err.http_status, error=for_people(err),
                                        email=form.get("email", "")[:254], error_field=err.field or "",
                                        next_path=safe_next(form.get("next"))), err)
        next_path = safe_next(form.get("next"))
        if not result.second_factor_required:
            return _session_response(ctx, result.session, next_path or "/security")
        response = RedirectResponse("/login/2fa" + (f"?next={quote(next_path, safe='/')}" if next_path else ""), status_code=303)
        _set_cookie(response, PENDING_COOKIE_NAME, result.session.token, ctx.settings.identity_mfa_pending_ttl_s)
        return response

    @router.get("/login/2fa", response_class=HTMLResponse)
    def second_factor_page(request: Request) -> HTMLResponse:
        if not request.cookies.get(PENDING_COOKIE_NAME):
            raise Unauthorized("sign in with your e-mail and password first", field="session")
        return _render("login_2fa.html", next_path=safe_next(request.query_params.get("next")))

    @router.post("/login/2fa")
    async def second_factor_submit(request: Request) -> Response:
        form = await _form(request)
        method = form.get("method", "totp")
        issued = second_factor.complete_login(ctx, request.cookies.get(PENDING_COOKIE_NAME), method=method,
                                              value=form.get("code", ""))
        return _session_response(ctx, issued, safe_next(form.get("next")) or "/security")

    @router.post("/webauthn/login/options")
    def passkey_login_options(request: Request) -> Response:
        options = second_factor.begin_passkey_challenge(ctx, request.cookies.get(PENDING_COOKIE_NAME), purpose="login")
        return Response(options, media_type="application/json")

    @router.post("/webauthn/login")
    async def passkey_login(request: Request) -> Response:
        credential = (await request.body()).decode("utf-8", "replace")
        issued = second_factor.complete_login(ctx, request.cookies.get(PENDING_COOKIE_NAME), method="passkey", value=credential)
        response = JSONResponse({"redirect": safe_next(request.query_params.get("next")) or "/security"})
        _set_cookie(response, sessions.SESSION_COOKIE_NAME, issued.token, ctx.settings.identity_session_ttl_s)
        response.delete_cookie(PENDING_COOKIE_NAME, path="/", secure=True, httponly=True, samesite="strict")
        return response

    @router.get("/security", response_class=HTMLResponse)
    def security_centre(request: Request) -> Response:
        token = _token(request)
        try:
            view = overview(ctx, token)
        except Unauthorized:
            return RedirectResponse("/login", status_code=303)
        assert token is not None
        return _render("security.html", o=view, csrf=sessions.csrf_token_for(ctx, token), now_s=ctx.now(),
                       lock_s=ctx.settings.identity_withdrawal_lock_s)

    @router.post("/security/step-up")
    async def step_up(request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        issued = second_factor.step_up(ctx, token, method=form.get("method", "totp"), value=form.get("code", ""))
        return _session_response(ctx, issued)

    @router.post("/webauthn/step-up/options")
    def passkey_step_up_options(request: Request) -> Response:
        token = _csrf(ctx, request)
        return Response(second_factor.begin_passkey_challenge(ctx, token, purpose="step_up"), media_type="application/json")

    @router.post("/webauthn/step-up")
    async def passkey_step_up(request: Request) -> Response:
        token = _csrf(ctx, request)
        credential = (await request.body()).decode("utf-8", "replace")
        issued = second_factor.step_up(ctx, token, method="passkey", value=credential)
        response = JSONResponse({"redirect": "/security"})
        _set_cookie(response, sessions.SESSION_COOKIE_NAME, issued.token, ctx.settings.identity_session_ttl_s)
        return response

    @router.post("/security/totp/begin", response_class=HTMLResponse)
    async def totp_begin(request: Request) -> HTMLResponse:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        enrollment = second_factor.begin_totp_enrollment(ctx, token)
        return _render("totp_setup.html", enrollment=enrollment, qr_svg=totp_qr_svg(enrollment.provisioning_uri),
                       csrf=sessions.csrf_token_for(ctx, token))

    @router.post("/security/totp/confirm", response_class=HTMLResponse)
    async def totp_confirm(request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        issued, codes = second_factor.confirm_totp_enrollment(ctx, token, form.get("code", ""), ip=_client_ip(request))
        # a first second factor counts only once its e-mailed link is opened: the page says so
        pending = sessions.authenticate(ctx, issued.token).second_factor_pending
        response = _render("recovery_codes.html", codes=codes, pending=pending)
        _set_cookie(response, sessions.SESSION_COOKIE_NAME, issued.token, ctx.settings.identity_session_ttl_s)
        return response

    @router.post("/webauthn/register/options")
    def passkey_register_options(request: Request) -> Response:
        token = _csrf(ctx, request)
        return Response(second_factor.begin_passkey_registration(ctx, token), media_type="application/json")

    @router.post("/webauthn/register")
    async def passkey_register(request: Request) -> Response:
        token = _csrf(ctx, request)
        body = (await request.body()).decode("utf-8", "replace")
        try:
            payload = json.loads(body)
            credential, label = payload["credential"], payload.get("label", "passkey")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError("must be JSON with a credential", field="credential") from exc
        issued = second_factor.finish_passkey_registration(ctx, token, credential, label=label, ip=_client_ip(request))
        response = JSONResponse({"redirect": "/security"})
        _set_cookie(response, sessions.SESSION_COOKIE_NAME, issued.token, ctx.settings.identity_session_ttl_s)
        return response

    @router.post("/security/api-keys", response_class=HTMLResponse)
    async def create_key(request: Request) -> HTMLResponse:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        raw_scopes = (await request.form()).getlist("scopes")
        allow = [x.strip() for x in form.get("ip_allowlist", "").replace("\n", ",").split(",") if x.strip()]
        scopes = [s for s in raw_scopes if isinstance(s, str)]
        kind = form.get("kind", "hmac")
        if kind == "ed25519":  # the user registers the public half of a key pair they generated
            created = api_keys.register_ed25519_key(ctx, token, form.get("public_key", ""), scopes=scopes,
                                                    label=form.get("label", ""), ip_allowlist=allow, ip=_client_ip(request))
        else:
            created = api_keys.create_api_key(ctx, token, kind=kind, scopes=scopes,
                                              label=form.get("label", ""), ip_allowlist=allow, ip=_client_ip(request))
        return _render("api_key_created.html", key=created)

    @router.post("/security/api-keys/{key_id}/revoke")
    async def revoke_key(key_id: int, request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        api_keys.revoke_api_key(ctx, token, key_id, ip=_client_ip(request))
        return RedirectResponse("/security", status_code=303)

    @router.post("/security/password")
    async def change_password(request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        issued = await password_work(accounts.change_password, ctx, token, form.get("current_password", ""),
                                     form.get("new_password", ""), ip=_client_ip(request))
        return _session_response(ctx, issued)

    @router.post("/security/email", response_class=HTMLResponse)
    async def change_email(request: Request) -> HTMLResponse:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        accounts.request_email_change(ctx, token, form.get("new_email", ""))
        # the same answer whether or not the address is taken (no probing of registered addresses)
        return _render("message.html", title=_t("Check your inbox"), link="/security",
                       message=_t("If the new address can be used, a link to confirm the change is on its way to it. "
                                  "Your e-mail address changes only when that link's button is pressed."))

    @router.post("/security/anti-phishing")
    async def anti_phishing(request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        accounts.set_anti_phishing_code(ctx, token, form.get("code", ""), ip=_client_ip(request))
        return RedirectResponse("/security", status_code=303)

    @router.post("/security/pgp")
    async def pgp(request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        pgp_keys.register_pgp_key(ctx, token, form.get("public_key", ""), ip=_client_ip(request))
        return RedirectResponse("/security", status_code=303)

    @router.post("/security/sessions/{session_id}/revoke")
    async def revoke_session(session_id: int, request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        sessions.revoke_session(ctx, token, session_id)
        return RedirectResponse("/security", status_code=303)

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        form = await _form(request)
        token = _csrf(ctx, request, form)
        if form.get("everywhere"):
            sessions.logout_everywhere(ctx, token, ip=_client_ip(request))
        else:
            sessions.logout(ctx, token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(sessions.SESSION_COOKIE_NAME, path="/", secure=True, httponly=True, samesite="strict")
        return response

    @router.get("/security/confirm-factor", response_class=HTMLResponse)
    def confirm_factor_page(token: str = "") -> HTMLResponse:
        # GET changes nothing (a mail scanner's prefetch must not confirm an intruder's factor): one POST button,
        # shown only while the link can still be used (a used or expired one says so at once)
        second_factor.check_first_factor_link(ctx, token)
        return _render("confirm_factor.html", token=token)

    @router.post("/security/confirm-factor", response_class=HTMLResponse)
    async def confirm_factor(request: Request) -> HTMLResponse:
        form = await _form(request)
        second_factor.confirm_first_factor(ctx, form.get("token", ""), ip=_client_ip(request))
        return _render("message.html", title=_t("Second factor confirmed"),
                       message=_t("Your second factor is confirmed and now protects your account: you can trade and "
                                  "create API keys after signing in with it."), link="/security")

    @router.get("/security/freeze", response_class=HTMLResponse)
    def freeze_page(token: str = "") -> HTMLResponse:
        # GET never changes anything (mail scanners prefetch links); the one click is the POST button.
        return _render("freeze.html", token=token)

    @router.post("/security/freeze", response_class=HTMLResponse)
    async def freeze(request: Request) -> HTMLResponse:
        form = await _form(request)
        events.freeze_account(ctx, form.get("token", ""), ip=_client_ip(request))
        return _render("message.html", title=_t("Account frozen"),
                       message=_t("Your account is frozen: all sessions and API keys are stopped. Contact support."))

    return router


class _PageHeaders:
    """Pure ASGI middleware: the identity pages' security headers on responses under `prefixes`."""

    def __init__(self, app: Any, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes
        self.extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.prefixes):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [(k, v) for k, v in self.extra if k not in present]
            await send(message)

        await self.app(scope, receive, with_headers)


_LINK = re.compile(r"https?://[^\s<>\"']+")


def _segments(body: str) -> list[tuple[str, str]]:
    """Split a plain-text body into ("text", s) and ("link", url) parts; only http(s) URLs become links."""
    out: list[tuple[str, str]] = []
    at = 0
    for m in _LINK.finditer(body):
        out.append(("text", body[at:m.start()]))
        out.append(("link", m.group(0)))
        at = m.end()
    out.append(("text", body[at:]))
    return out


def create_dev_mail_router(ctx: IdentityContext) -> APIRouter:
    """`/dev/mail`: what the demo's local mail catcher received. Only mounted in dev mode with a
    catcher running (`serve --demo`); elsewhere the path does not exist (404)."""
    router = APIRouter(dependencies=[Depends(page_locale)])

    @router.get("/dev/mail", response_class=HTMLResponse)
    def dev_mail() -> HTMLResponse:
        setup = ctx.mail_setup
        assert setup is not None and setup.catcher is not None and ctx.settings.mode == "dev"
        messages = [(m, _segments(m.body)) for m in setup.catcher.messages()]
        return _render("dev_mail.html", messages=messages, delivery=setup.delivery)

    return router


def _run_mail_with_the_app(app: FastAPI, setup: Any) -> None:
    """Start the mail worker when the app starts serving and stop it (and the catcher) when it stops."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        setup.start()
        try:
            async with inner(a) as state:
                yield state
        finally:
            setup.stop()

    app.router.lifespan_context = lifespan


def _form_back(request: Request) -> str | None:
    """The form a refused POST came from (its page has the same address), or None."""
    path = request.url.path
    return path if request.method == "POST" and path in _FORM_PAGES else None


def _error_response(request: Request, exc: RingfenceError, *, as_json: bool) -> Response:
    """A refusal as JSON (the passkey calls under /webauthn/, and with `as_json` other routes' own API) or
    as the message page, with Retry-After when the error says how long to wait. The error's own text
    stays English (it names the field; docs/i18n.md), the page around it is translated; a refused form
    leads back to that form."""
    if as_json or request.url.path.startswith("/webauthn/"):
        return _retry_after(JSONResponse(exc.to_dict(), status_code=exc.http_status), exc)
    _PAGE_LOCALE.set(request_locale(request))
    _PAGE_PATH.set(request.url.path)
    return _retry_after(_render("message.html", status_code=exc.http_status, title=_t("That did not work"),
                                message=for_people(exc), code=exc.code, back=_form_back(request)), exc)


def install(app: FastAPI, ctx: IdentityContext) -> None:
    """Add the identity pages (sign-up, sign-in, security centre) to an existing app, with their
    security headers and error pages; `ringfence serve` serves them beside the dashboard, and runs
    the mail worker (and, with --demo, the mail catcher and /dev/mail) that `ctx.mail_setup` holds."""
    app.state.identity_ctx = ctx
    app.include_router(create_router(ctx), include_in_schema=False)
    paths = {route.path for route in create_router(ctx).routes}  # type: ignore[attr-defined]
    setup = ctx.mail_setup
    if setup is not None:
        _run_mail_with_the_app(app, setup)
        if setup.catcher is not None and ctx.settings.mode == "dev":
            dev_router = create_dev_mail_router(ctx)
            app.include_router(dev_router, include_in_schema=False)
            paths |= {route.path for route in dev_router.routes}  # type: ignore[attr-defined]
    prefixes = tuple(sorted({"/" + p.strip("/").split("/")[0] for p in paths}))

    app.add_middleware(_PageHeaders, prefixes=prefixes)

    @app.exception_handler(RingfenceError)
    async def identity_error(request: Request, exc: RingfenceError) -> Response:
        return _error_response(request, exc, as_json=not request.url.path.startswith(prefixes))


def create_app(ctx: IdentityContext) -> FastAPI:
    app = FastAPI(title="ringfence identity", docs_url=None, redoc_url=None, openapi_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})  # no per-request os.environ reads
    app.state.identity_ctx = ctx
    app.include_router(create_router(ctx))
    from ..i18n.api import build_i18n_router  # the language selector and the script's catalogue
    from ..i18n.fiat import FiatRates

    app.include_router(build_i18n_router(FiatRates(), "", ctx))

    @app.get("/", include_in_schema=False)
    def home() -> Response:  # no dashboard here: the error pages' "Back to the dashboard" leads to sign-in
        return RedirectResponse("/login", status_code=303)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(RingfenceError)
    async def ringfence_error(request: Request, exc: RingfenceError) -> Response:
        return _error_response(request, exc, as_json=False)

    return app
