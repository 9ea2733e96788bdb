"""Shared steps for withdrawal tests: fund a user through a real deposit and a sweep into hot."""

from __future__ import annotations


def fund_btc(net, user: str, amount_sat: int) -> str:
    addrs = net.open_user(user)
    if not hasattr(net, "miner"):
        net.btc_fund_miner()
    net.btc_send(addrs["bitcoin"], amount_sat)
    net.btc_mine(2)
    net.btc_watcher.poll()
    net.btc_balancer.sweep("BTC", "btc_deposit", "btc_hot", net.btc_hot, 10_000)
    net.btc_mine(6)
    net.btc_balancer.record_confirmed("BTC", 1)
    net.btc_watcher.poll()
    return addrs["bitcoin"]


def fund_eth(net, user: str, wei: int) -> str:
    addrs = net.open_user(user)
    net.eth_send(addrs["ethereum"], wei)
    net.eth_mine(3)
    net.eth_watcher.poll()
    net.eth_balancer.sweep("ETH", "eth_deposit", "eth_hot", net.eth_hot, 10**15)
    net.eth_mine(8)
    net.eth_balancer.record_confirmed("ETH", 1)
    net.eth_watcher.poll()
    return addrs["ethereum"]


def outside_btc_address(n: int = 1) -> str:
    from ringfence.chains.bitcoin.address import script_to_address

    return script_to_address(bytes.fromhex("0014" + f"{n:02x}" * 20), "regtest")


def settle(net, asset: str = "BTC") -> None:
    """Run the worker through signing and broadcast, then mine to finality and settle."""
    net.withdrawals.run_until_idle()
    if asset == "BTC":
        net.btc_mine(6)
    else:
        net.eth_mine(8)
    net.withdrawals.run_until_idle()
