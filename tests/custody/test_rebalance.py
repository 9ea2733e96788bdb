"""Hot <-> cold rebalancing by the policy's band: the worker proposes (`AuthorizeRebalance`), the
engine decides from its ledger and the active policy, the chain executes. On the local network
(eth-tester): a drain to the target, a refill once a new band applies, and the engine's refusals
(inside the band, too much, no band, an unauthorized hot -> cold transfer), each changing nothing.
The live path (serve with a band, the drain on chain, reconciliation clean) is in
tests/api/test_custody_gaps.py."""

from __future__ import annotations

import copy

import pytest

from ringfence.custody.commands import AuthorizeRebalance, RecordTransferSigned
from ringfence.custody.localnet import DEFAULT_POLICY, _key
from ringfence.custody.rebalance import Rebalancer, WalletKey
from ringfence.custody.wallets import LocalKeySigner
from ringfence.errors import RingfenceError

from .flows import fund_eth


def _policy(lo: int, mid: int, hi: int) -> dict:
    p = copy.deepcopy(DEFAULT_POLICY)
    p["balancing"] = [{"asset": "ETH", "hot_min_bp": lo, "hot_target_bp": mid, "hot_max_bp": hi}]
    return p


def _refused(net, command, field: str) -> str:
    before = net.node.engine.state_hash()
    with pytest.raises(RingfenceError) as exc:
        net.execute(command)
    assert exc.value.field == field, exc.value
    assert net.node.engine.state_hash() == before
    return str(exc.value)


def _custody(net, wallet: str) -> int:
    return net.ledger.custody("ETH", wallet).balance


def test_the_engine_decides_drains_and_refills_by_the_policy_band(tmp_path, eth_chain) -> None:
    from ringfence.custody.localnet import LocalNet

    net = LocalNet(tmp_path / "node", eth=eth_chain, key_seed="rebalance-1")
    net.bootstrap(_policy(4_000, 5_000, 6_000))
    fund_eth(net, "reb", 10 * 10**18)
    hot = _custody(net, "eth_hot")
    assert hot > 9 * 10**18 and _custody(net, "eth_cold") == 0
    cold_signer = LocalKeySigner({"eth-cold": _key(net.seed, "eth-cold")})
    rb = Rebalancer(net.node, net.eth, net.eth_balancer, assets=["ETH"],
                    hot=WalletKey("eth_hot", net.eth_hot, "eth-hot", net.local),
                    cold=WalletKey("eth_cold", net.cold["eth"], "eth-cold", cold_signer))

    # refusals: more than brings hot to the target, a refill while hot is above the band, an asset without a band
    assert "at most" in _refused(net, AuthorizeRebalance("x1", "ETH", "eth_hot", "eth_cold", hot), "amount_minor")
    assert "not below" in _refused(net, AuthorizeRebalance("x2", "ETH", "eth_cold", "eth_hot", 1), "amount_minor")
    assert "no balancing band" in _refused(net, AuthorizeRebalance("x3", "BTC", "btc_hot", "btc_cold", 1), "asset")
    assert "needs an authorized rebalance" in _refused(
        net, RecordTransferSigned("x4", "ETH", "eth_hot", "eth_cold", 1, 0, "0x" + "cd" * 32, "00"), "transfer_id")

    net.tick()
    assert rb.step() == 1 and rb.proposed == 1
    drain = hot - hot * 5_000 // 10_000
    assert "not above" not in rb.last_refusal
    net.eth_mine(3)
    net.eth_balancer.record_confirmed("ETH", 1)
    assert _custody(net, "eth_cold") == drain == net.eth.balance(net.cold["eth"])
    assert _custody(net, "eth_hot") == net.eth.balance(net.eth_hot)
    assert rb.step() == 0, "inside the band: nothing to do"

    # a new band (hot should hold 90 %..95 %): after the policy's delay, the worker refills from cold
    import json

    from ringfence.custody.commands import ActivatePolicy

    net.execute(net.desk.propose_policy("p-band-2", json.dumps(_policy(9_000, 9_500, 10_000)), "pat"))
    net.execute(net.desk.approve_policy(net.node.engine, "p-band-2", "pia"))
    net.execute(net.desk.approve_policy(net.node.engine, "p-band-2", "pol"))
    net.advance(24 * 3600 + 1)
    net.execute(ActivatePolicy("p-band-2"))
    net.tick()
    assert rb.step() == 1 and rb.proposed == 2, rb.last_refusal
    net.eth_mine(3)
    net.eth_balancer.record_confirmed("ETH", 1)
    assert _custody(net, "eth_hot") == net.eth.balance(net.eth_hot) and _custody(net, "eth_hot") > hot * 8 // 10
    assert _custody(net, "eth_cold") == net.eth.balance(net.cold["eth"])
    net.node.engine.check_invariants()
