"""The ledger is compiled with the hot path (ringfence/native.py): `Account`, `Pending` and `Ledger`
are native classes exactly when the build is in use, and a method overridden in a Python subclass
of `Ledger` (how tests plant a bug: tests/conftest.py, `use_ledger_class`) is what the ledger's own
compiled code calls. This file runs under both implementations."""

from __future__ import annotations

from ringfence import native
from ringfence.ledger.account import Account
from ringfence.ledger.digest import LedgerDigest
from ringfence.ledger.ledger import Ledger, Pending
from ringfence.ledger.model import Account as ModelAccount
from ringfence.money import Asset


def test_native_exactly_when_compiled() -> None:
    compiled = native.status()["implementation"] == "compiled"
    for cls in (Account, Pending, Ledger, LedgerDigest):  # (the digest: compiled since session 17)
        assert hasattr(cls, "__mypyc_attrs__") == compiled, cls
    assert ModelAccount is Account  # (`ledger.model` re-exports it)


def test_an_override_in_a_subclass_is_what_compiled_code_calls() -> None:
    calls: list[str] = []

    class Watched(Ledger):
        def _margin_side_hold(self, *args):  # type: ignore[no-untyped-def]
            calls.append("_margin_side_hold")
            return super()._margin_side_hold(*args)

        def move(self, debit, credit, amount):  # type: ignore[no-untyped-def]
            calls.append("move")
            super().move(debit, credit, amount)

    led = Watched()
    led.register_asset(Asset("USDT", 6, "crypto", "ethereum"))
    seg = "derivatives"
    wallet = led.open_account("alice", "USDT", "available", seg)[0]
    margin = led.open_account("alice", "USDT", "margin", seg)[0]
    pool = led.open_system_account("USDT", "pnl_btcusdtperp", seg)
    clearing = led.open_system_account("USDT", "clr_btcusdtperp", seg)
    led.move(led.world("USDT"), wallet, 1_000)
    hold = led.hold(wallet, clearing, 100)
    calls.clear()
    # (settle_margin_side calls `_margin_side_hold` on itself: a native call when compiled)
    led.settle_margin_side(hold, 40, wallet, margin, 0, pool, 0, 0, led.insurance("USDT", seg), 0, led.fees("USDT", seg),
                           3, 1, 20)
    assert calls == ["_margin_side_hold"]
    assert (wallet.debits_pending, margin.balance, led.fees("USDT", seg).balance) == (60, 20, 3)
    led.check_invariants()
