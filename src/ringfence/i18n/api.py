"""The language and currency endpoints (docs/i18n.md).

* `GET /i18n/locales` — the languages with a catalogue: code, own name, direction.
* `GET /i18n/catalog/<locale>.json` — the catalogue of one language for the dashboard's script.
* `POST /i18n/locale` (form `locale`, `next`) — the selector: sets the `rf_lang` cookie and, for a
  signed-in user, the profile's language (e-mails go out in it); then back to `next`.
* `POST /i18n/fiat` (form `currency`, `next`) — the fiat selector: the `rf_fiat` cookie.
* `GET /v1/fiat/currencies` — ISO 4217 currencies with their minor units (names in `?locale=`).
* `GET /v1/fiat/rates` — the current display rates; `POST /v1/fiat/rates` — a feed pushes rates
  (`Authorization: Bearer <rates token>`; `ringfence fiat feed`).
* `GET /v1/fiat/value?currency=EUR&amounts=BTC:1.5,USDT:20` — amounts valued in a fiat currency,
  formatted for the request's language. Display only.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ..errors import ValidationError
from . import COOKIE, FIAT_COOKIE, LOCALES, direction, format_amount, format_fiat, js_catalogue, native_name
from . import normalize_locale, request_locale
from .fiat import FiatRates, currencies, currency_rows, minor_units

__all__ = ["build_i18n_router", "fiat_choice"]

_NEXT = re.compile(r"/[A-Za-z0-9/_\-.?=&%]{0,200}")
_AMOUNT = re.compile(r"([A-Z][A-Z0-9]{1,11}):([0-9]{1,30}(?:\.[0-9]{1,30})?)")
YEAR_S = 365 * 24 * 3600
MAX_AMOUNTS = 50


def fiat_choice(request: Request) -> str:
    """The chosen fiat currency: the `rf_fiat` cookie, else USD."""
    chosen = request.cookies.get(FIAT_COOKIE, "")
    return chosen if chosen in currencies() else "USD"


def _error(exc: ValidationError) -> JSONResponse:
    return JSONResponse({"code": -1100, "msg": f"Illegal parameter '{exc.field}': {exc.message}"}, status_code=400)


def _back(form_next: object) -> str:
    # only a path on this site: never an open redirect
    return form_next if isinstance(form_next, str) and _NEXT.fullmatch(form_next) and not form_next.startswith("//") else "/"


def build_i18n_router(rates: FiatRates, rates_token: str, identity_ctx: Any = None, secure_cookies: bool = True) -> APIRouter:
    from ..api.binance import ERROR_RESPONSES as _ERRORS  # the error shape every endpoint documents

    ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {k: v for k, v in _ERRORS.items()}

    router = APIRouter()

    @router.get("/i18n/locales", tags=["languages"], summary="Languages with a catalogue: code, own name, text direction",
                responses=ERROR_RESPONSES)
    async def locales() -> list[dict[str, str]]:
        return [{"code": c, "name": native_name(c), "dir": direction(c)} for c in LOCALES]

    @router.get("/i18n/catalog/{name}", tags=["languages"], summary="One language's catalogue for the dashboard's script",
                responses={**ERROR_RESPONSES, "404": {"description": "no such language"}})
    async def catalog(name: str) -> Response:
        code = name.removesuffix(".json")
        if code not in LOCALES:
            return JSONResponse({"code": -1100, "msg": f"Illegal parameter 'locale': one of {', '.join(LOCALES)}"}, status_code=404)
        body = {"locale": code, "dir": direction(code), "messages": js_catalogue(code)}
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})

    def set_cookie(response: Response, name: str, value: str) -> None:
        # readable by no script (HttpOnly), sent to this site only; a preference, not a credential
        response.set_cookie(name, value, max_age=YEAR_S, path="/", secure=secure_cookies, httponly=True, samesite="lax")

    @router.post("/i18n/locale", include_in_schema=False)
    async def choose_locale(request: Request) -> Response:
        form = await request.form()
        locale = normalize_locale(form.get("locale"))
        if locale is None:
            return JSONResponse({"code": -1100, "msg": f"Illegal parameter 'locale': one of {', '.join(LOCALES)}"}, status_code=400)
        response = RedirectResponse(_back(form.get("next")), status_code=303)
        set_cookie(response, COOKIE, locale)
        if identity_ctx is not None:
            from starlette.concurrency import run_in_threadpool

            from ..identity import accounts, sessions

            token = request.cookies.get(sessions.SESSION_COOKIE_NAME)
            if token:
                await run_in_threadpool(accounts.set_locale, identity_ctx, token, locale)
        return response

    @router.post("/i18n/fiat", include_in_schema=False)
    async def choose_fiat(request: Request) -> Response:
        form = await request.form()
        code = form.get("currency")
        if not isinstance(code, str) or code not in currencies():
            return JSONResponse({"code": -1100, "msg": "Illegal parameter 'currency': see /v1/fiat/currencies"}, status_code=400)
        response = RedirectResponse(_back(form.get("next")), status_code=303)
        set_cookie(response, FIAT_COOKIE, code)
        return response

    @router.get("/v1/fiat/currencies", tags=["fiat"], summary="ISO 4217 currencies with their minor units (display only)",
                responses=ERROR_RESPONSES)
    async def fiat_currencies(request: Request, locale: str | None = Query(None, description="Names in this language")) -> dict[str, Any]:
        lang = normalize_locale(locale) or request_locale(request)
        return {"count": len(currencies()), "currencies": currency_rows(lang)}

    @router.get("/v1/fiat/rates", tags=["fiat"], summary="Current display rates: fiat per USD, USD per asset (decimal strings)",
                responses=ERROR_RESPONSES)
    async def fiat_rates() -> dict[str, Any]:
        return rates.document()

    @router.post("/v1/fiat/rates", tags=["fiat"], summary="Push display rates (Authorization: Bearer <rates token>)",
                 responses=ERROR_RESPONSES)
    async def push_rates(request: Request) -> Response:
        sent = request.headers.get("authorization", "")
        if not rates_token or not hmac.compare_digest(sent.encode(), f"Bearer {rates_token}".encode()):
            return JSONResponse({"code": -1002, "msg": "a rates feed needs the node's rates token (DIR/rates-token)"}, status_code=401)
        try:
            doc = json.loads(await request.body())
            counts = rates.update(doc, time.time_ns() // 1_000_000)
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                return _error(exc)
            return JSONResponse({"code": -1100, "msg": "Illegal parameter 'body': must be JSON"}, status_code=400)
        return JSONResponse({"accepted": counts, "asOfMs": rates.as_of_ms})

    @router.get("/v1/fiat/value", tags=["fiat"], summary="Amounts valued in a fiat currency, formatted for the language (display only)",
                responses=ERROR_RESPONSES)
    async def fiat_value(request: Request, amounts: str = Query(..., max_length=2000, description="ASSET:amount,… e.g. BTC:1.5,USDT:20"),
                         currency: str | None = Query(None, description="ISO 4217 code (default: the rf_fiat cookie, else USD)"),
                         locale: str | None = Query(None)) -> Response:
        code = currency or fiat_choice(request)
        if code not in currencies():
            return JSONResponse({"code": -1100, "msg": "Illegal parameter 'currency': see /v1/fiat/currencies"}, status_code=400)
        lang = normalize_locale(locale) or request_locale(request)
        parts = [p for p in amounts.split(",") if p]
        if len(parts) > MAX_AMOUNTS:
            return JSONResponse({"code": -1100, "msg": f"Illegal parameter 'amounts': at most {MAX_AMOUNTS}"}, status_code=400)
        rows, total, complete = [], 0, True
        digits = minor_units(code)
        for part in parts:
            m = _AMOUNT.fullmatch(part)
            if m is None:
                return JSONResponse({"code": -1100, "msg": "Illegal parameter 'amounts': ASSET:decimal,… e.g. BTC:1.5"}, status_code=400)
            asset, amount = m.groups()
            whole, _, frac = amount.partition(".")
            value = rates.value_minor(asset, int(whole + frac), len(frac), code)
            if value is None:
                complete = False
            else:
                total += value
            rows.append({"asset": asset, "amount": amount, "amountFormatted": format_amount(amount, lang),
                         "valueMinor": None if value is None else str(value),
                         "valueFormatted": None if value is None else format_fiat(value, code, digits, lang)})
        return JSONResponse({"currency": code, "minorUnits": digits, "locale": lang, "rows": rows, "complete": complete,
                             "totalMinor": str(total), "totalFormatted": format_fiat(total, code, digits, lang),
                             "asOfMs": rates.as_of_ms, "source": rates.source}, headers={"Cache-Control": "no-store"})

    return router
