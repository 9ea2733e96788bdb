"""Languages and currencies of the pages and e-mails people read (docs/i18n.md).

Every user-facing string of the dashboard, the wallet, the sign-in pages and security centre, the
e-mails and the `/por` page goes through the gettext catalogue `ringfence` in `i18n/locale/`:
English (the message ids themselves) plus the languages in `LOCALES`. The `.po` files are the
source; the `.mo` files beside them are compiled from them (`pybabel compile`) and shipped in the
package, and a test refuses a `.mo` that is older than its `.po` in content. The JavaScript of the
dashboard gets the same catalogue as JSON (`GET /i18n/catalog/<locale>.json`; the CSP forbids inline
script, so no catalogue is inlined).

Which language: the `rf_lang` cookie (set by the selector on every page), else a signed-in user's
profile, else the browser's `Accept-Language`, else English. Placeholders are `%(name)s` (pages,
scripts) or `{name}` (e-mail templates); every translation carries the same ones as its message id.

Money is never formatted before display: amounts stay integers / decimal strings; `format_amount`
turns a decimal string into a locale's digits, separators and (for fiat) symbol with Babel.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, localcontext
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from babel import Locale
from babel.dates import format_datetime as _babel_datetime
from babel.numbers import format_currency as _babel_currency
from babel.numbers import format_decimal as _babel_decimal
from babel.support import NullTranslations, Translations

__all__ = ["DEFAULT", "LOCALES", "COOKIE", "FIAT_COOKIE", "locale_dir", "negotiate", "translations", "gettext_for",
           "js_catalogue", "direction", "native_name", "format_amount", "format_fiat", "format_time", "placeholders",
           "page_context", "normalize_locale"]

DOMAIN = "ringfence"
DEFAULT = "en"
#: English plus the languages with a catalogue, in the selector's order. Arabic is right-to-left.
LOCALES: tuple[str, ...] = ("en", "de", "fr", "es", "pt", "it", "ru", "tr", "ja", "zh_Hans", "ko", "ar")
RTL = frozenset({"ar"})
COOKIE = "rf_lang"
FIAT_COOKIE = "rf_fiat"
_LOCALE_RE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8}){0,2}")
_DIGITS = 120  # decimal precision for display: more than any amount's digits, so nothing is rounded
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|\{(\w+)\}")


def locale_dir() -> Path:
    return Path(str(resources.files("ringfence.i18n") / "locale"))


def normalize_locale(value: object) -> str | None:
    """One of LOCALES for a tag such as `de-CH`, `zh-CN`, `zh-Hans`, `pt_BR`, `AR`; None if unsupported."""
    if not isinstance(value, str) or not _LOCALE_RE.fullmatch(value.strip()):
        return None
    parts = value.strip().replace("-", "_").split("_")
    lang = parts[0].lower()
    if lang == "zh":  # one Chinese catalogue, simplified script
        return "zh_Hans"
    return lang if lang in LOCALES else None


def negotiate(cookie: str | None, profile: str | None, accept_language: str | None) -> str:
    """The page language: the selector's cookie, then the user's profile, then Accept-Language, then English."""
    for choice in (cookie, profile):
        found = normalize_locale(choice)
        if found:
            return found
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "")[:512].split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])  # float-ok: a browser's preference weight (q=0.8), not money
            except ValueError:
                continue
        found = normalize_locale(tag)
        if found and q > 0:
            ranked.append((-q, i, found))
    return sorted(ranked)[0][2] if ranked else DEFAULT


@functools.lru_cache(maxsize=len(LOCALES))
def translations(locale: str) -> NullTranslations:
    """The compiled catalogue of `locale` (English: the message ids themselves)."""
    if locale == DEFAULT or locale not in LOCALES:
        return NullTranslations()
    return Translations.load(str(locale_dir()), [locale], DOMAIN)


def gettext_for(locale: str) -> Callable[..., str]:
    """`_("Hello %(name)s", name=x)`: translated, then formatted with the keyword arguments."""
    tr = translations(locale)

    def _(message: str, **params: Any) -> str:
        text = tr.gettext(message)
        return text % params if params else text

    return _


@functools.lru_cache(maxsize=len(LOCALES))
def js_catalogue(locale: str) -> dict[str, str]:
    """Every translated message of `locale` as {msgid: msgstr} (empty for English)."""
    if locale == DEFAULT or locale not in LOCALES:
        return {}
    from babel.messages.pofile import read_po

    with open(locale_dir() / locale / "LC_MESSAGES" / f"{DOMAIN}.po", "rb") as f:
        catalog = read_po(f, locale=locale)
    return {str(m.id): str(m.string) for m in catalog if m.id and m.string and not m.fuzzy and isinstance(m.id, str)}


def direction(locale: str) -> str:
    return "rtl" if locale in RTL else "ltr"


@functools.lru_cache(maxsize=len(LOCALES))
def native_name(locale: str) -> str:
    """The language's own name for itself ("Deutsch", "العربية"), for the selector."""
    name = Locale.parse(locale).get_display_name(locale) or locale
    return name[:1].upper() + name[1:]


def placeholders(text: str) -> list[str]:
    """The sorted placeholder names of a message (`%(x)s` and `{x}`), to compare a translation with its id."""
    return sorted(a or b for a, b in _PLACEHOLDER.findall(text))


def format_amount(decimal_string: str, locale: str) -> str:
    """A decimal string ("1234.50000000") in the locale's digits and separators, every decimal kept."""
    decimals = len(decimal_string.partition(".")[2])
    pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
    with localcontext() as exact:  # amounts reach 2^127 (39 digits) plus their decimals: never rounded
        exact.prec = _DIGITS
        return _babel_decimal(Decimal(decimal_string), format=pattern, locale=locale, decimal_quantization=False)


def format_fiat(minor: int, currency: str, digits: int, locale: str) -> str:
    """An integer count of a currency's minor units as the locale writes money (symbol, separators)."""
    with localcontext() as exact:
        exact.prec = _DIGITS
        return _babel_currency(Decimal(minor).scaleb(-digits), currency, locale=locale, currency_digits=True)


def format_time(at_s: int, locale: str) -> str:
    """A Unix time in seconds as the locale writes a date and time (UTC)."""
    import datetime as dt

    return _babel_datetime(dt.datetime.fromtimestamp(int(at_s), dt.timezone.utc), "medium", tzinfo=dt.timezone.utc, locale=locale) + " UTC"


def markup_gettext_for(locale: str) -> Callable[..., Any]:
    """`_m("Send %(coin)s …", coin=markup)`: the translation escaped, then the (markup) parameters put in."""
    from markupsafe import Markup, escape

    tr = translations(locale)

    def _m(message: str, **params: Any) -> Markup:
        return Markup(escape(tr.gettext(message))) % params

    return _m


def format_iso_time(iso: str, locale: str) -> str:
    """An ISO 8601 UTC time ("2026-12-04T16:00:37Z") as the locale writes it; unparseable text unchanged."""
    import datetime as dt

    try:
        at = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return format_time(int(at.timestamp()), locale)


def page_context(locale: str) -> dict[str, Any]:
    """What every server-rendered page needs: `_`, `_m`, `lang`, `dir`, and the selector's choices."""
    return {
        "_": gettext_for(locale),
        "_m": markup_gettext_for(locale),
        "lang": locale.replace("_", "-"),
        "locale": locale,
        "dir": direction(locale),
        "languages": [(code, native_name(code)) for code in LOCALES],
        "fmt_time": lambda at_s: format_time(at_s, locale),
    }


def request_locale(request: Any, profile: str | None = None) -> str:
    """The language for this request (cookie, profile, Accept-Language)."""
    return negotiate(request.cookies.get(COOKIE), profile, request.headers.get("accept-language"))


__all__ += ["request_locale", "N_", "format_iso_time"]


def N_(message: str) -> str:
    """Mark a string for the catalogue without translating it here (translated where it is shown)."""
    return message
