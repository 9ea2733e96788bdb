"""Registering an asset by a decision of the staff operator quorum (`RegisterAssetSigned`, trading/staff_cmds.py).

The fields are checked by `RegisterAsset`'s own rules (`ledger.commands.checked_asset`, a hypothesis
property: it accepts exactly what `Asset` accepts, and names the field it refuses). Every refusal (a bad
field, a code already registered, one operator, a non-operator, approvals against an old change counter)
is refused at the edge and by the handler and leaves the domain state hash unchanged. A registration opens
the asset's system accounts, moves the trading change counter, lets a market list the asset, survives a
snapshot and replays from the journal to the same state hash.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.app import new_node
from ringfence.errors import RingfenceError
from ringfence.ledger.commands import AssetRegistered, RegisterAsset, checked_asset
from ringfence.money import Asset
from ringfence.trading.commands import ListMarket
from ringfence.trading.staff_cmds import ACTIONS, ListMarketSigned, RegisterAssetSigned, asset_subject, list_subject
from ringfence.trading.state import trading_state
from tests.staff.rig import Rig, domain_hash

ETH = RegisterAsset("ETH", 18, "crypto", "ethereum")


def version(rig: Rig) -> int:
    return trading_state(rig.engine).admin_version


def signed(rig: Rig, command: RegisterAsset, approvers: tuple[str, ...] = ("ada", "ben"), reason: str = "listing",
           at: int | None = None) -> RegisterAssetSigned:
    sigs = rig.desk.signs(approvers, ACTIONS["asset"], asset_subject(command, reason, version(rig) if at is None else at))
    return RegisterAssetSigned(command, reason, sigs)


def refused_with_field(rig: Rig, command: RegisterAssetSigned, field: str) -> None:
    before = domain_hash(rig.engine)
    with pytest.raises(RingfenceError) as err:
        rig.engine.precheck(command)
    assert err.value.field == field, (err.value.field, str(err.value))
    [rejected] = rig.apply(command)
    assert type(rejected).__name__ == "CommandRejected" and rejected.field == field, rejected
    assert domain_hash(rig.engine) == before


def test_the_quorum_registers_an_asset_and_a_market_can_list_it() -> None:
    rig = Rig()
    rig.refused(signed(rig, ETH, ("ada",)), "quorum")
    rig.refused(signed(rig, ETH, ("ada", "ana")), "role-required")
    rig.refused(signed(rig, ETH, ("ada", "ben"), at=7), "signature-valid")  # signed against another counter
    rig.refused(RegisterAssetSigned(ETH, "listing", rig.desk.signs(("ada", "ben"), ACTIONS["list"],
                                                                  asset_subject(ETH, "listing", 0))), "signature-valid")
    rig.refused(signed(rig, ETH, ("ada", "ada")), "distinct-people")  # one signer counted twice
    subject = asset_subject(ETH, "listing", 0)
    rig.refused(RegisterAssetSigned(ETH, "listing", [rig.desk.sign("ada", ACTIONS["asset"], subject),
                                                      rig.desk.sign("ben", ACTIONS["asset"], subject, expires_ns=rig.now)]),
                "not-expired")
    # a removed operator's key no longer counts, even on approvals signed while they were active
    by_cy = signed(rig, ETH, ("cy", "ada"))
    rig.run(rig.desk.remove(rig.engine, "cy", "left", ("ada", "ben")))
    rig.refused(by_cy, "staff-active")
    tampered = signed(rig, ETH)
    rig.refused(RegisterAssetSigned(RegisterAsset("ETH", 8, "crypto", "ethereum"), "listing", tampered.approvals),
                "signature-valid")  # the decimals are signed
    for bad, field in ((RegisterAsset("eth", 18, "crypto"), "code"), (RegisterAsset("ETH", 31, "crypto"), "decimals"),
                       (RegisterAsset("ETH", -1, "crypto"), "decimals"), (RegisterAsset("ETH", 18, "traditional"), "asset_class"),
                       (RegisterAsset("ETH", 18, "crypto", "x" * 33), "chain")):
        refused_with_field(rig, signed(rig, bad), field)
    refused_with_field(rig, signed(rig, ETH, reason=" "), "reason")
    assert "ETH" not in rig.engine.ledger.assets and version(rig) == 0

    events = rig.run(signed(rig, ETH))
    assert events[0] == AssetRegistered("ETH", True)
    assert (events[1].action, events[1].subject, events[1].approvers, events[1].version) == ("asset.register", "ETH", ["ada", "ben"], 1)
    ledger = rig.engine.ledger
    assert ledger.assets.get("ETH") == Asset("ETH", 18, "crypto", "ethereum")  # type: ignore[arg-type]
    assert ledger.world("ETH") is not None and version(rig) == 1
    rig.engine.ledger.check_invariants()
    # the same code again is refused, with the same or other properties, and changes nothing
    refused_with_field(rig, signed(rig, ETH), "code")
    refused_with_field(rig, signed(rig, RegisterAsset("ETH", 8, "tokenized")), "code")
    # the same approvals cannot register anything else (the counter moved, the nonces are spent)
    used = signed(rig, RegisterAsset("USDT", 6, "crypto", "ethereum"))
    rig.run(used)
    rig.refused(RegisterAssetSigned(RegisterAsset("USDC", 6, "crypto", "ethereum"), "listing", used.approvals),
                "nonce-once")
    market = ListMarket("ETHUSDT", "ETH", "USDT", "spot", 10_000, 10**14, 10**14, band_ppm=0)
    rig.run(ListMarketSigned(market, "first", rig.desk.signs(("ada", "ben"), ACTIONS["list"], list_subject(market, "first", 2))))
    assert "ETHUSDT" in trading_state(rig.engine).markets and version(rig) == 3
    assert rig.engine.restored(rig.engine.snapshot_bytes()).state_hash() == rig.engine.state_hash()


def test_a_registration_replays_from_the_journal_to_the_same_state_hash(tmp_path) -> None:
    from ringfence.staff.desk import StaffDesk
    from ringfence.staff.decisions import StaffKey

    keys = {s: StaffKey.generate(s) for s in ("ada", "ben")}
    desk = StaffDesk(keys, time.time_ns)  # the node's sequencer runs on the wall clock
    with new_node(tmp_path / "n", fsync=False) as node:
        node.execute(desk.genesis({"ada": ["operator"], "ben": ["operator"]}, 2))
        subject = asset_subject(ETH, "first", 0)
        events = node.execute(RegisterAssetSigned(ETH, "first", desk.signs(("ada", "ben"), ACTIONS["asset"], subject)))
        assert events[0] == AssetRegistered("ETH", True), events
        with pytest.raises(RingfenceError, match="already registered") as err:
            node.execute(RegisterAssetSigned(ETH, "again", desk.signs(("ada", "ben"), ACTIONS["asset"],
                                                                     asset_subject(ETH, "again", 1))))
        assert err.value.field == "code"
        live = node.engine.state_hash()
    with new_node(tmp_path / "n", fsync=False) as replayed:
        assert replayed.engine.state_hash() == live
        assert replayed.engine.ledger.assets.get("ETH").chain == "ethereum"


CODES = st.one_of(st.text(st.sampled_from("ABCXYZ019az_-"), min_size=0, max_size=14), st.sampled_from(["ETH", "A", "A" * 12]))
CLASSES = st.sampled_from(["crypto", "tokenized", "fiat", "traditional", "", "CRYPTO"])
CHAINS = st.one_of(st.just(""), st.text(min_size=1, max_size=36))
FIELDS = st.tuples(CODES, st.one_of(st.integers(-3, 34), st.booleans()), CLASSES, CHAINS)
#: What an operator can sign (a decision's subject holds str, int and lists; no bool reaches it: the API's
#: integers refuse one, and the engine checks the fields before the signatures)
SIGNABLE = st.tuples(CODES, st.integers(-3, 34), CLASSES, CHAINS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FIELDS)
def test_asset_add_accepts_exactly_what_register_asset_accepts(fields: tuple[Any, Any, Any, Any]) -> None:
    """`checked_asset` (what `asset add` and RegisterAssetSigned check) agrees with `Asset`, the rule RegisterAsset
    applies; a refusal names one of the command's own fields."""
    code, decimals, asset_class, chain = fields
    try:
        expected: Asset | None = Asset(code, decimals, asset_class, chain or None)
    except (RingfenceError, ValueError):
        expected = None
    try:
        got: Asset | None = checked_asset(RegisterAsset(code, decimals, asset_class, chain))
    except RingfenceError as err:
        assert err.field in {"code", "decimals", "asset_class", "chain"}, err
        got = None
    assert got == expected, (fields, got, expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SIGNABLE, min_size=1, max_size=6))
def test_a_refused_registration_changes_nothing_and_an_accepted_one_exactly_its_asset(batch: list[Any]) -> None:
    rig = Rig()
    for code, decimals, asset_class, chain in batch:
        command = signed(rig, RegisterAsset(code, decimals, asset_class, chain))
        before, known = domain_hash(rig.engine), {a.code: a for a in rig.engine.ledger.assets}
        events = rig.apply(command)
        after = {a.code: a for a in rig.engine.ledger.assets}
        if type(events[0]).__name__ == "CommandRejected":
            assert domain_hash(rig.engine) == before and after == known
        else:
            assert code not in known and after == {**known, code: Asset(code, decimals, asset_class, chain or None)}
        rig.engine.ledger.check_invariants()
