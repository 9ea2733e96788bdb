"""The custody runtime's withdrawal policy comes from staff (issue 15 x issue 16).

`serve --demo`: the demo genesis holds three policy admins; bootstrap signs the proposal (pat) and
two approvals (pia, pol) with their keys from DIR/demo-staff.json, activates it, and a second
bootstrap (a restart) journals nothing. A proposal left half-approved (a crash in between) is
resumed, not proposed again. Without --demo bootstrap invents no staff and proposes nothing, and
says that no policy is active; a register without the demo's policy admins (an older data
directory) gets no policy either, with the reason.
"""

from __future__ import annotations

import json
import time

import pytest

from ringfence.app import new_node
from ringfence.custody.runtime import DEMO_POLICY_ID, NO_POLICY, CustodyRuntime, demo_policy
from ringfence.custody.state import custody_state
from ringfence.staff.decisions import StaffKey, read_key_file
from ringfence.staff.demo import DEMO_POLICY_ADMINS, seed_demo_staff
from ringfence.staff.desk import StaffDesk
from ringfence.staff.state import staff_of


def _proposals(node) -> dict:
    return node.read(lambda e: {p.id: (p.state, p.proposer, list(p.approvals)) for p in custody_state(e).proposals.values()})


_RUNTIMES: list[CustodyRuntime] = []


@pytest.fixture(autouse=True)
def _stop_runtimes():
    yield
    while _RUNTIMES:
        _RUNTIMES.pop().stop()  # the BTC hot wallet's signer processes end with the runtime


def _runtime(data, demo: bool) -> CustodyRuntime:
    rt = CustodyRuntime(data, {"BTC": "local"}, demo=demo)
    _RUNTIMES.append(rt)
    return rt


def test_demo_bootstrap_signs_the_policy_and_a_restart_submits_nothing(tmp_path) -> None:
    with new_node(tmp_path / "engine", fsync=False) as node:
        seed_demo_staff(node, tmp_path)
        rt = _runtime(tmp_path, demo=True)
        assert rt.bootstrap(node)["policy"] == "active"
        assert _proposals(node) == {DEMO_POLICY_ID: ("active", "pat", ["pia", "pol"])}
        text = node.read(lambda e: custody_state(e).policy_text)
        rules = {r["name"]: r["action"] for r in json.loads(text)["rules"]}
        assert rules["review-large-BTC"] == {"type": "approvals", "count": 2, "roles": ["approver"]}
        assert "treasury" not in text and node.read(lambda e: custody_state(e).approvers) == {}  # no SetApprover
        approvers = node.read(lambda e: sorted(m.staff_id for m in staff_of(e).active("approver")))
        assert approvers == ["ada", "cy"]
        seq = node.read(lambda e: e.last_seq)
        assert rt.bootstrap(node)["policy"] == "active"
        assert node.read(lambda e: e.last_seq) == seq, "a restart's bootstrap journals nothing"


def test_a_half_approved_demo_proposal_is_resumed(tmp_path) -> None:
    with new_node(tmp_path / "engine", fsync=False) as node:
        seed_demo_staff(node, tmp_path)
        rt = _runtime(tmp_path, demo=True)
        keys = {s: read_key_file(tmp_path / "demo-staff.json", s) for s in DEMO_POLICY_ADMINS}
        desk = StaffDesk(keys, time.time_ns)
        node.execute(desk.propose_policy(DEMO_POLICY_ID, json.dumps(demo_policy(rt.terms)), "pat"))
        node.execute(node.read(lambda e: desk.approve_policy(e, DEMO_POLICY_ID, "pol")))
        assert rt.bootstrap(node)["policy"] == "active"
        assert _proposals(node) == {DEMO_POLICY_ID: ("active", "pat", ["pol", "pia"])}


def test_without_demo_no_staff_or_policy_is_invented(tmp_path) -> None:
    with new_node(tmp_path / "engine", fsync=False) as node:
        out = _runtime(tmp_path, demo=False).bootstrap(node)
        assert out["policy"] == NO_POLICY and "ringfence policy propose" in NO_POLICY
        assert _proposals(node) == {} and node.read(lambda e: custody_state(e).policy_text) == ""
        assert node.read(lambda e: dict(staff_of(e).members)) == {}
        assert not (tmp_path / "demo-staff.json").exists()


def test_a_register_without_the_demo_policy_admins_gets_no_policy(tmp_path) -> None:
    """A data directory from before the policy admins joined the demo genesis: nothing is forged."""
    with new_node(tmp_path / "engine", fsync=False) as node:
        roles = {"ada": ["operator", "approver"], "ben": ["operator", "analyst"], "cy": ["approver", "analyst"]}
        node.execute(StaffDesk({s: StaffKey.generate(s) for s in roles}, time.time_ns).genesis(roles, 2))
        assert seed_demo_staff(node, tmp_path)["created"] is False  # an existing register is left alone
        out = _runtime(tmp_path, demo=True).bootstrap(node)
        assert out["policy"].startswith(NO_POLICY) and "pat, pia, pol" in out["policy"]
        assert _proposals(node) == {}


@pytest.mark.parametrize("registered", [("ETH", 8, "crypto", "ethereum"), ("ETH", 18, "crypto", "")])
def test_an_asset_registered_by_the_operators_with_other_terms_stops_custody_bootstrap(tmp_path, registered) -> None:
    """`ringfence asset add ETH --decimals 8` (or without its chain) before the chain was configured: bootstrap
    used to skip a code already there, so 1 ETH on chain (10**18 wei) would have been credited as 10**10 ETH.
    It refuses to start instead, naming the asset, and journals nothing; the same terms start as before."""
    from ringfence.errors import ConfigError
    from ringfence.ledger.commands import RegisterAsset
    from ringfence.trading.staff_cmds import ACTIONS, RegisterAssetSigned, asset_subject

    keys = {s: StaffKey.generate(s) for s in ("ada", "ben")}
    desk = StaffDesk(keys, time.time_ns)
    with new_node(tmp_path / "engine", fsync=False) as node:
        node.execute(desk.genesis({"ada": ["operator"], "ben": ["operator"]}, 2))
        asset = RegisterAsset(*registered)
        node.execute(RegisterAssetSigned(asset, "early", desk.signs(("ada", "ben"), ACTIONS["asset"],
                                                                    asset_subject(asset, "early", 0))))
        rt = CustodyRuntime(tmp_path, {"ETH": "local"}, demo=False)
        _RUNTIMES.append(rt)
        seq = node.read(lambda e: e.last_seq)
        with pytest.raises(ConfigError, match="ETH is registered with") as err:
            rt.bootstrap(node)
        assert err.value.field == "RINGFENCE_CUSTODY_CHAINS"
        assert node.read(lambda e: (e.last_seq, set(custody_state(e).assets))) == (seq, set())


def test_an_asset_registered_by_the_operators_with_the_chains_terms_is_kept(tmp_path) -> None:
    from ringfence.ledger.commands import RegisterAsset

    with new_node(tmp_path / "engine", fsync=False) as node:
        node.execute(RegisterAsset("ETH", 18, "crypto", "ethereum"))
        rt = CustodyRuntime(tmp_path, {"ETH": "local"}, demo=False)
        _RUNTIMES.append(rt)
        rt.bootstrap(node)
        assert node.read(lambda e: set(custody_state(e).assets)) == {"ETH"}
