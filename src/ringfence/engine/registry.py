"""Imports every package that registers commands, events, handlers or engine components.

The engine imports this module before it builds decoders or state, so a journal written with any
registered command type always decodes. A new domain package adds one import line here.
"""

from ..ledger import commands as _ledger_commands  # noqa: F401
from ..trading import matching as _trading_matching  # noqa: F401
from ..custody import commands as _custody_commands  # noqa: F401
from ..risk import halts as _risk_halts  # noqa: F401
