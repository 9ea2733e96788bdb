"""Linear USDT-margined perpetuals in the `derivatives` segment (docs/derivatives.md)."""

from . import liquidation as _liquidation  # noqa: F401  (its handler declares itself on MODULE)
from .module import MODULE

__all__ = ["MODULE"]
