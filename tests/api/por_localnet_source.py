"""A reserve source for `serve` in tests: LocalNet's wallets on their own local chains, loaded by the
server process through RINGFENCE_POR_RESERVE_SOURCES=api.por_localnet_source:factory.

The wallets are funded on chain (coinbases to the BTC hot wallet and the shield vault, a dev
account's ETH to the ETH hot wallet), and before each proof one more 50 BTC block is mined to the
hot wallet, so each scheduled proof carries different evidence and coverage rises proof by proof.
Each proof's claims are signed by the wallets' own signers for that proof's snapshot.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from ringfence.custody.localnet import BTC_MINER_SPK, LocalNet
from ringfence.solvency.reserve_source import ReserveEvidence, localnet_reserve_source

ETH = 10**18


class GrowingReserves:
    name = "localnet (test chains)"

    def __init__(self, net: LocalNet) -> None:
        self.net = net
        self.inner = localnet_reserve_source(net)
        self.lock = threading.Lock()

    def evidence(self, snapshot_id_hex: str) -> ReserveEvidence:
        with self.lock:
            self.net.sim.mine(1, self.net.btc.script_of_address(self.net.btc_hot))  # 50 BTC more, before pinning
            return self.inner.evidence(snapshot_id_hex)


def factory(exchange: Any, data: Path) -> GrowingReserves:
    net = LocalNet(Path(tempfile.mkdtemp(prefix="por-localnet-")) / "node", key_seed="por-test")
    net.bootstrap()
    net.sim.mine(2, net.btc.script_of_address(net.btc_hot))  # 100 BTC
    net.sim.mine(1, net.btc.script_of_address(net.cold["shield"]))  # 50 BTC in the 2-of-3 vault
    net.sim.mine(1, BTC_MINER_SPK)
    net.eth_send(net.eth_hot, 1_100 * ETH)
    net.eth_mine(1)
    return GrowingReserves(net)
