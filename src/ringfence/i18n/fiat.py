"""Fiat currencies and the display-only rates feed (docs/i18n.md#fiat-values).

A balance is shown also in the user's chosen fiat currency. The rates behind that number are for
display only: they never enter the engine, never change a balance, never price an order. They live
in the serving process (and in `DIR/fiat-rates.json`, so a restart shows the last pushed rates),
pushed by `ringfence fiat feed` with the node's rates token (`DIR/rates-token`).

Invariants: no float. A rate arrives as a decimal string and is kept as an integer with
`RATE_DECIMALS` decimals; a value is computed in integers and floored to the currency's minor unit.
Currencies and their minor units come from Babel's CLDR data (the currencies legal tender somewhere
today), so the list and the digits are those the formatter uses.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from babel.core import get_global
from babel.numbers import get_currency_name, get_currency_precision, get_territory_currencies

from ..errors import ValidationError

__all__ = ["RATE_DECIMALS", "MAX_RATES", "currencies", "minor_units", "parse_rate", "FiatRates", "demo_rates_doc",
           "load_or_create_token"]

RATE_DECIMALS = 12
MAX_RATES = 400
#: The date the "legal tender today" list is taken at: fixed, so the list does not change under a test.
CURRENCY_LIST_DATE = dt.date(2026, 1, 1)
_RATE = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?")
_CODE = re.compile(r"[A-Z][A-Z0-9]{1,11}")


@functools.lru_cache(maxsize=1)
def currencies() -> tuple[str, ...]:
    """ISO 4217 codes of every currency that is legal tender in some territory (CLDR, via Babel)."""
    found: set[str] = set()
    for territory in get_global("territory_currencies"):
        found.update(get_territory_currencies(territory, start_date=CURRENCY_LIST_DATE, tender=True, non_tender=False))
    found.discard("XXX")
    return tuple(sorted(found))


def minor_units(code: str) -> int:
    """Digits after the decimal point the currency is written with (CLDR: JPY 0, EUR 2, KWD 3)."""
    return int(get_currency_precision(code))


def currency_rows(locale: str) -> list[dict[str, Any]]:
    return [{"code": c, "name": get_currency_name(c, locale=locale), "minorUnits": minor_units(c)} for c in currencies()]


def parse_rate(value: object, field_name: str) -> int:
    """A positive decimal string ("0.92", "61000") as an integer with RATE_DECIMALS decimals."""
    if not isinstance(value, str) or not _RATE.fullmatch(value):
        raise ValidationError("must be a positive decimal string with at most 12 decimals, e.g. \"0.92\"", field=field_name)
    whole, _, frac = value.partition(".")
    scaled = int(whole) * 10**RATE_DECIMALS + int((frac + "0" * RATE_DECIMALS)[:RATE_DECIMALS])
    if scaled <= 0:
        raise ValidationError("must be greater than zero", field=field_name)
    return scaled


def format_rate(scaled: int) -> str:
    whole, frac = divmod(scaled, 10**RATE_DECIMALS)
    text = f"{frac:0{RATE_DECIMALS}d}".rstrip("0")
    return f"{whole}.{text}" if text else str(whole)


def demo_rates_doc() -> dict[str, Any]:
    path = resources.files("ringfence.i18n") / "data" / "demo_rates.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def load_or_create_token(data: Path) -> str:
    """The node's rates token: RINGFENCE_API_RATES_TOKEN, else `DIR/rates-token` (made 0600 on first start,
    nodekey.write_private). The file is read only if it is this user's, not a symbolic link, 0600, in a
    folder no other user may write (owned.read_own_file: a token another user planted would let them set
    the fiat rates every price in the UI is converted with)."""
    from ..nodekey import write_private
    from ..owned import read_own_file

    configured = os.environ.get("RINGFENCE_API_RATES_TOKEN", "").strip()
    if configured:
        return configured
    path = data / "rates-token"
    if os.path.lexists(path):  # (a symbolic link too: refused, never written through)
        return read_own_file(path, "--data", "rates token").decode("utf-8").strip()
    token = secrets.token_urlsafe(32)
    write_private(path, (token + "\n").encode())
    return token


@dataclass
class FiatRates:
    """The latest rates a feed pushed: fiat units per USD, USD per asset unit (both scaled integers)."""

    fiat_per_usd: dict[str, int] = field(default_factory=dict)
    usd_per_asset: dict[str, int] = field(default_factory=dict)
    source: str = ""
    as_of_ms: int = 0
    path: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, doc: Mapping[str, Any], now_ms: int) -> dict[str, int]:
        """Validate a pushed document and merge it; nothing changes when any field is wrong."""
        if not isinstance(doc, Mapping):
            raise ValidationError("must be a JSON object with fiat and/or assets", field="body")
        fiat_in, assets_in = doc.get("fiat", {}), doc.get("assets", {})
        if not isinstance(fiat_in, Mapping) or not isinstance(assets_in, Mapping):
            raise ValidationError("must be objects of CODE: \"decimal\"", field="fiat" if not isinstance(fiat_in, Mapping) else "assets")
        if not fiat_in and not assets_in:
            raise ValidationError("give at least one rate in fiat or assets", field="body")
        if len(fiat_in) + len(assets_in) > MAX_RATES:
            raise ValidationError(f"at most {MAX_RATES} rates per push", field="body")
        known = set(currencies())
        fiat: dict[str, int] = {}
        for code, value in fiat_in.items():
            if code not in known:
                raise ValidationError("is not a current ISO 4217 currency (GET /v1/fiat/currencies)", field=f"fiat.{str(code)[:12]}")
            fiat[code] = parse_rate(value, f"fiat.{code}")
        assets: dict[str, int] = {}
        for code, value in assets_in.items():
            if not isinstance(code, str) or not _CODE.fullmatch(code):
                raise ValidationError("must be an asset code (A-Z, 0-9)", field=f"assets.{str(code)[:12]}")
            assets[code] = parse_rate(value, f"assets.{code}")
        source = doc.get("source", "")
        if not isinstance(source, str) or len(source) > 120:
            raise ValidationError("must be a string of at most 120 characters", field="source")
        with self._lock:
            self.fiat_per_usd.update(fiat)
            self.usd_per_asset.update(assets)
            self.source = source
            self.as_of_ms = now_ms
            self._save()
        return {"fiat": len(fiat), "assets": len(assets)}

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.document(), sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)

    def document(self) -> dict[str, Any]:
        return {"base": "USD", "source": self.source, "asOfMs": self.as_of_ms,
                "fiat": {k: format_rate(v) for k, v in sorted(self.fiat_per_usd.items())},
                "assets": {k: format_rate(v) for k, v in sorted(self.usd_per_asset.items())}}

    def value_minor(self, asset: str, amount_minor: int, asset_decimals: int, currency: str) -> int | None:
        """`amount_minor` of `asset` in `currency`'s minor units, floored; None without both rates."""
        with self._lock:
            usd = self.usd_per_asset.get(asset)
            per_usd = self.fiat_per_usd.get(currency)
        if usd is None or per_usd is None:
            return None
        digits = minor_units(currency)
        # amount/10^d × usd/10^R × per_usd/10^R × 10^digits, in integers, floored
        return amount_minor * usd * per_usd * 10**digits // (10**asset_decimals * 10 ** (2 * RATE_DECIMALS))

    @classmethod
    def open(cls, data: Path | None, *, demo: bool) -> "FiatRates":
        """The node's rates: the last pushed (`DIR/fiat-rates.json`), else the demo's seeded source with --demo."""
        rates = cls(path=data / "fiat-rates.json" if data is not None else None)
        if rates.path is not None and rates.path.exists():
            try:
                doc = json.loads(rates.path.read_text(encoding="utf-8"))
                rates.update(doc, int(doc.get("asOfMs", 0)))
                return rates
            except (OSError, ValueError, ValidationError):
                pass  # an unreadable file: start empty (display only), the next push rewrites it
        if demo:
            rates.update(demo_rates_doc(), 0)
        return rates
