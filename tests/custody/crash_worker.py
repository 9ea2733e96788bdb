"""A custody worker process for the kill test: `setup DIR` prepares a funded user and a withdrawal
request; `run DIR POINT` drives the withdrawal and SIGKILLs itself at POINT (after saving the chain,
which outlives us like a real network would). `run DIR none` finishes and prints the outcome."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ringfence.custody import workers  # noqa: E402
from ringfence.chains.bitcoin.simulator import BitcoinSimulator  # noqa: E402
from ringfence.custody.localnet import LocalNet  # noqa: E402
from tests.custody.flows import fund_btc, outside_btc_address  # noqa: E402


def main() -> None:
    phase, data = sys.argv[1], Path(sys.argv[2])
    chain = data / "chain.json"
    if phase == "setup":
        net = LocalNet(data / "node", key_seed="kill-test")
        net.bootstrap()
        fund_btc(net, "alice", 100_000_000)
        net.request("k1", "alice", "BTC", outside_btc_address(30), 25_000_000)
        net.sim.save(chain)
        net.node.close()
        return
    point = sys.argv[3]
    net = LocalNet(data / "node", key_seed="kill-test", sim=BitcoinSimulator.load(chain))
    net.now["ns"] = max(net.now["ns"], net.node.engine.now_ns + 1)
    real_crash = workers._crash

    def die(worker, p):  # type: ignore[no-untyped-def]
        if p == point:
            net.sim.save(chain)
            os.kill(os.getpid(), signal.SIGKILL)
        real_crash(worker, p)

    workers._crash = die
    if point.startswith("step-"):
        for _ in range(int(point[5:])):
            net.withdrawals.step()
            net.sim.save(chain)
        os.kill(os.getpid(), signal.SIGKILL)
    net.withdrawals.run_until_idle()
    net.sim.save(chain)
    if point == "none":
        net.btc_mine(6)
        net.withdrawals.run_until_idle()
        net.sim.save(chain)
        w = net.state.withdrawals["k1"]
        dest = outside_btc_address(30)
        spk = net.btc.script_of_address(dest)
        paying = {b.GetTxid() for h in range(1, net.sim.height + 1) for b in net.sim.block_at(h).txs
                  if any(bytes(o.scriptPubKey) == spk for o in b.vout)}
        net.node.engine.check_invariants()
        print(json.dumps({"state": w.state, "dest": net.btc.balance(dest), "paying_txs": len(paying),
                          "hot_matches": net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)}))


if __name__ == "__main__":
    main()
