"""`IdentityContext`: what every identity service function needs — store, settings, clock, keys.

The clock is injectable (integer Unix seconds) so tests can move time for expiry, lockout backoff
and TOTP windows without sleeping. Nothing else in identity reads the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..settings import Settings
from ..store import Store
from .passwords import PasswordPolicy
from .sealing import Sealer

__all__ = ["IdentityContext", "system_clock"]


def system_clock() -> int:
    return int(time.time())


@dataclass
class IdentityContext:
    store: Store
    settings: Settings
    clock: Callable[[], int] = system_clock
    sealer: Sealer = field(init=False)
    passwords: PasswordPolicy = field(init=False)
    _keyring: object | None = field(default=None, init=False, repr=False)
    #: `ringfence serve`'s mail worker and demo catcher (identity.delivery.MailSetup), when it runs them.
    mail_setup: Any = field(default=None, init=False, repr=False)
    #: `ringfence serve --demo`: dev-mode demo extras (demo funds for a web user) may be offered.
    demo: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.settings.check_production_safe()
        self.sealer = Sealer(self.settings.secret_key())
        self.passwords = PasswordPolicy(
            memory_kib=self.settings.identity_argon2_memory_kib,
            time_cost=self.settings.identity_argon2_time_cost,
            parallelism=self.settings.identity_argon2_parallelism,
        )

    def now(self) -> int:
        return int(self.clock())

    @property
    def keyring(self):  # type: ignore[no-untyped-def]
        """The GnuPG keyring (created lazily: only PGP features need gpg installed)."""
        if self._keyring is None:
            from .pgp import Keyring

            self._keyring = Keyring(self.settings.identity_gnupg_home)
        return self._keyring
