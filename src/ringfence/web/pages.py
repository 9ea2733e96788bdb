"""The dashboard's page, served in the visitor's language (docs/i18n.md).

`index.html` is a Jinja template (autoescaped) rendered per request with the language chosen by
the selector's cookie, the signed-in user's profile or Accept-Language, and the fiat currency of
the `rf_fiat` cookie. Its script (`app.js`) gets its strings from `/i18n/catalog/<locale>.json`.
"""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..i18n import page_context, request_locale

__all__ = ["render_page"]

_env = Environment(loader=PackageLoader("ringfence.web", "dashboard"), autoescape=select_autoescape(["html"]))


@functools.lru_cache(maxsize=16)
def fiat_choices(locale: str) -> tuple[tuple[str, str], ...]:
    from babel.numbers import get_currency_name

    from ..i18n.fiat import currencies

    return tuple((code, get_currency_name(code, locale=locale)) for code in currencies())


async def render_page(request: Any, name: str) -> str:
    from starlette.concurrency import run_in_threadpool

    from ..i18n.api import fiat_choice

    ctx = getattr(request.app.state, "identity_ctx", None)
    profile = None
    if ctx is not None:
        from ..identity import accounts, sessions

        token = request.cookies.get(sessions.SESSION_COOKIE_NAME)
        if token:
            profile = await run_in_threadpool(accounts.profile_locale, ctx, token)
    locale = request_locale(request, profile)
    params: dict[str, Any] = page_context(locale)
    params.update(here=request.url.path, fiat=fiat_choice(request), fiat_choices=fiat_choices(locale))
    return _env.get_template(name).render(**params)
