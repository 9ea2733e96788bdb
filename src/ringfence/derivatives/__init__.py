"""Linear USDT-margined perpetuals in the `derivatives` segment (docs/derivatives.md)."""

from .module import MODULE

__all__ = ["MODULE"]
