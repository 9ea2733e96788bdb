"""The auditor's books: accounts as plain integers, and the four ways money moves between them.

An account is `(owner, asset, kind, segment)` with a posted balance and pending debits and credits;
what a user can spend is posted minus pending debits. Everything else in the model moves money only
through `move`, `reserve`, `release` and `capture` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Books", "Bal", "Expect", "Refuse", "ModelError", "Key", "SYSTEM", "PPM", "ceil_div"]

PPM = 1_000_000
MAX_AMOUNT = (1 << 127) - 1
SYSTEM = "system"

Key = tuple[str, str, str, str]  # (owner, asset, kind, segment)


class ModelError(AssertionError):
    """The model itself reached an impossible state (a bug in the model or a disagreement upstream)."""


@dataclass
class Bal:
    posted: int = 0  # credits_posted - debits_posted
    debits_pending: int = 0
    credits_pending: int = 0

    def row(self) -> tuple[int, int, int]:
        return (self.posted, self.debits_pending, self.credits_pending)


@dataclass
class Expect:
    """What a command should do: refused (with `code`, or any code when None), or its events."""

    refused: bool = False
    code: str | None = None
    events: list[tuple[Any, ...]] = field(default_factory=list)
    note: str = ""


class Refuse(Exception):
    def __init__(self, code: str | None, note: str = "") -> None:
        super().__init__(note)
        self.code, self.note = code, note


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Books:
    """Accounts and the money primitives every domain model uses."""

    def _init_books(self) -> None:
        self.accounts: dict[Key, Bal] = {}
        self.now_ns = 0
        #: Set when a command's time alone changed state (a band timer fired): like an expiry, that
        #: is not the command's effect, so "a rejected command changes nothing" is not asked then.
        self.time_effects = False

    def bal(self, key: Key) -> Bal:
        b = self.accounts.get(key)
        if b is None:
            b = self.accounts[key] = Bal()
        return b

    def available(self, key: Key) -> int:
        b = self.accounts.get(key)
        return 0 if b is None else b.posted - b.debits_pending

    def move(self, debit: Key, credit: Key, amount: int) -> None:
        if amount < 0 or debit[1] != credit[1]:
            raise ModelError(f"bad move {debit} -> {credit} of {amount}")
        if debit[0] != SYSTEM and self.available(debit) < amount:
            raise ModelError(f"model would overdraw {debit} by moving {amount}")
        self.bal(debit).posted -= amount
        self.bal(credit).posted += amount

    def reserve(self, debit: Key, credit: Key, amount: int) -> None:
        self.bal(debit).debits_pending += amount
        self.bal(credit).credits_pending += amount

    def release(self, debit: Key, credit: Key, amount: int) -> None:
        self.bal(debit).debits_pending -= amount
        self.bal(credit).credits_pending -= amount

    def _unpost(self, debit: Key, credit: Key, amount: int) -> None:
        self.bal(debit).posted += amount
        self.bal(credit).posted -= amount

    def capture(self, debit: Key, credit: Key, amount: int) -> None:
        self.release(debit, credit, amount)
        self.bal(debit).posted -= amount
        self.bal(credit).posted += amount

    def account_rows(self) -> dict[Key, tuple[int, int, int]]:
        return {k: b.row() for k, b in self.accounts.items() if b.row() != (0, 0, 0)}
