"""Integer money: the asset registry and strict decimal-string <-> minor-unit conversion.

Every amount inside ringfence is a Python `int` counting the asset's minor unit (satoshi, wei,
cent, 1e-8 share). Decimal strings exist only at the edge, and `parse_amount` is the one door
through which they come in. It accepts exactly `digits[.digits]` (optionally with a leading `-` where
the caller allows negatives) and rejects, with an error naming the field and the rule:

* anything that is not a `str` (a float has already lost precision; a bool is not a number),
* the empty string, whitespace, a leading `+`, exponents (`1e5`), `NaN`, `Infinity`,
* more significant decimals than the asset has (trailing zeros past the precision are exact and
  accepted, as exchanges' clients send `"61000.00000000"`),
* negatives and zero unless the caller allows them,
* any magnitude of 2**127 minor units or more (amounts must fit a signed 128-bit ledger column).

`float` never appears here; `Decimal` is not used either: the parsing is exact string arithmetic.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from .errors import DuplicateAsset, InvalidAmount, UnknownAsset, ValidationError

__all__ = [
    "MAX_AMOUNT",
    "MAX_DECIMALS",
    "AssetClass",
    "Asset",
    "AssetRegistry",
    "parse_amount",
    "format_amount",
    "validate_asset_code",
]

#: Largest amount (in minor units) any balance, transfer or sum may hold: 2**127 - 1.
MAX_AMOUNT = (1 << 127) - 1
#: Largest number of decimals an asset may declare (wei has 18; leave room, bound the work).
MAX_DECIMALS = 30
#: Longest decimal string accepted at the edge (bounds parsing work; 2**127 has 39 digits).
MAX_AMOUNT_TEXT = 80

_DECIMAL_RE = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?")
_ASSET_CODE_RE = re.compile(r"[A-Z][A-Z0-9]{0,11}")


class AssetClass(str, enum.Enum):
    """Which risk world an asset belongs to; each trades in its own segment."""

    CRYPTO = "crypto"
    TOKENIZED = "tokenized"
    FIAT = "fiat"


def validate_asset_code(code: object, field: str = "asset") -> str:
    if not isinstance(code, str) or not _ASSET_CODE_RE.fullmatch(code):
        raise ValidationError(
            "asset code must be 1-12 characters, uppercase letters and digits, starting with a letter",
            field=field,
        )
    return code


@dataclass(frozen=True, slots=True)
class Asset:
    """One asset: its code, how many decimals its minor unit has, its class and (for crypto) chain."""

    code: str
    decimals: int
    asset_class: AssetClass
    chain: str | None = None

    def __post_init__(self) -> None:
        validate_asset_code(self.code)
        if not isinstance(self.decimals, int) or isinstance(self.decimals, bool):
            raise ValidationError("decimals must be an integer", field="decimals")
        if not 0 <= self.decimals <= MAX_DECIMALS:
            raise ValidationError(f"decimals must be between 0 and {MAX_DECIMALS}", field="decimals")
        if not isinstance(self.asset_class, AssetClass):
            object.__setattr__(self, "asset_class", AssetClass(self.asset_class))
        if self.chain is not None and (not isinstance(self.chain, str) or not 1 <= len(self.chain) <= 32):
            raise ValidationError("chain must be a name of 1-32 characters or absent", field="chain")

    def parse(self, text: object, field: str = "amount", **rules: bool) -> int:
        return parse_amount(text, self.decimals, field=field, **rules)

    def format(self, minor: int, *, trim: bool = False) -> str:
        return format_amount(minor, self.decimals, trim=trim)


class AssetRegistry:
    """The assets ringfence knows. Registering the same asset twice is a no-op; a clash is an error."""

    def __init__(self, assets: Iterable[Asset] = ()) -> None:
        self._by_code: dict[str, Asset] = {}
        for asset in assets:
            self.register(asset)

    def register(self, asset: Asset) -> Asset:
        existing = self._by_code.get(asset.code)
        if existing is not None:
            if existing != asset:
                raise DuplicateAsset(
                    f"asset {asset.code} is already registered as {existing}", field="asset"
                )
            return existing
        self._by_code[asset.code] = asset
        return asset

    def get(self, code: str, field: str = "asset") -> Asset:
        try:
            return self._by_code[code]
        except (KeyError, TypeError):
            raise UnknownAsset(f"unknown asset {code!r}; register it first", field=field) from None

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __iter__(self) -> Iterator[Asset]:
        return iter(sorted(self._by_code.values(), key=lambda a: a.code))

    def __len__(self) -> int:
        return len(self._by_code)


#: `parse_amount`'s answers for the texts met first (an order's price and quantity repeat): (text,
#: decimals) -> (minor, whether the text had a minus sign), for plain str texts that parsed; the checks
#: that depend on the caller's flags (negative, zero) are made again on every call.
_PARSED: dict[tuple[str, int], tuple[int, bool]] = {}
_PARSED_MAX = 8192


def parse_amount(
    text: object,
    decimals: int,
    *,
    field: str = "amount",
    allow_negative: bool = False,
    allow_zero: bool = True,
) -> int:
    """Parse a decimal string into integer minor units, exactly, or raise `InvalidAmount`."""
    if type(text) is str and type(decimals) is int:
        known = _PARSED.get((text, decimals))
        if known is not None:
            minor, negative = known
            if (allow_negative or not negative) and (allow_zero or minor != 0):
                return minor
            # refused under these flags: the full parse below says why
    minor = _parse_amount(text, decimals, field, allow_negative, allow_zero)
    if type(text) is str and type(decimals) is int and len(_PARSED) < _PARSED_MAX:
        _PARSED[(text, decimals)] = (minor, text.startswith("-"))
    return minor


def _parse_amount(text: object, decimals: int, field: str, allow_negative: bool, allow_zero: bool) -> int:
    if isinstance(text, bool) or not isinstance(text, str):
        kind = type(text).__name__
        raise InvalidAmount(f"must be a decimal string such as \"12.5\", not a {kind}", field=field)
    if text == "":
        raise InvalidAmount("must not be empty; send a decimal string such as \"12.5\"", field=field)
    if len(text) > MAX_AMOUNT_TEXT:
        raise InvalidAmount(f"is longer than {MAX_AMOUNT_TEXT} characters", field=field)
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise InvalidAmount(_explain_bad_decimal(text), field=field)
    sign, whole, frac = match.group(1), match.group(2), match.group(3) or ""
    if len(frac) > decimals:
        extra = frac[decimals:]
        if extra.strip("0"):
            raise InvalidAmount(
                f"has more than {decimals} decimal places, the most this asset allows", field=field
            )
        frac = frac[:decimals]
    minor = int(whole + frac.ljust(decimals, "0")) if decimals else int(whole)
    if sign:
        if not allow_negative:
            raise InvalidAmount("must not be negative", field=field)
        minor = -minor
    if minor == 0 and not allow_zero:
        raise InvalidAmount("must be greater than zero", field=field)
    if abs(minor) > MAX_AMOUNT:
        raise InvalidAmount("is too large: amounts must stay below 2^127 minor units", field=field)
    return minor


def _explain_bad_decimal(text: str) -> str:
    lowered = text.strip().lower()
    if lowered.lstrip("+-") in {"nan", "snan", "qnan"}:
        return "NaN is not a number; send a decimal string such as \"12.5\""
    if lowered.lstrip("+-") in {"inf", "infinity"}:
        return "infinity is not allowed; send a finite decimal string"
    if text != text.strip():
        return "must not contain spaces"
    if "e" in lowered and any(c.isdigit() for c in lowered):  # digit-ok: detects an exponent to refuse; any digit counts
        return "exponent notation is not allowed; write the number out, e.g. \"1500\" not \"1.5e3\""
    if text.startswith("+"):
        return "must not start with '+'"
    if text.startswith(".") or text.startswith("-."):
        return "needs a digit before the decimal point, e.g. \"0.5\""
    if text.endswith("."):
        return "needs digits after the decimal point, or no point at all"
    if re.fullmatch(r"-?0[0-9]+(\.[0-9]*)?", text):
        return "must not have leading zeros"
    if "," in text:
        return "must use '.' as the decimal point and no thousands separators"
    return "must be a plain decimal string: digits, optionally one '.' and more digits"


#: `format_amount`'s answers for the amounts met first (prices, quantities and zeros repeat: an order's
#: answer formats six of them): (minor, decimals) -> text, for plain ints and exact places only.
_FORMATTED: dict[tuple[int, int], str] = {}
_FORMATTED_MAX = 8192


def format_amount(minor: int, decimals: int, *, trim: bool = False) -> str:
    """Format integer minor units as a decimal string with exactly `decimals` places (or trimmed)."""
    exact = not trim and type(minor) is int and type(decimals) is int
    if exact:
        known = _FORMATTED.get((minor, decimals))
        if known is not None:
            return known
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise ValidationError("amount to format must be an integer count of minor units", field="amount")
    text = _format(minor, decimals, trim)
    if exact and len(_FORMATTED) < _FORMATTED_MAX:
        _FORMATTED[(minor, decimals)] = text
    return text


def _format(minor: int, decimals: int, trim: bool) -> str:
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor))
    if decimals == 0:
        return sign + digits
    digits = digits.rjust(decimals + 1, "0")
    whole, frac = digits[:-decimals], digits[-decimals:]
    if trim:
        frac = frac.rstrip("0")
        if not frac:
            return sign + whole
    return f"{sign}{whole}.{frac}"
