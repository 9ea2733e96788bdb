"""A complete custody setup on local chains: a durable Node, the Bitcoin simulator, eth-tester,
deposit addresses, hot/cold wallets, approvers and a policy. Used by `ringfence custody demo` and
by the tests (the same wiring both ways).

Keys here are deterministic and derived from `key_seed` — test/demo only, worthless on any real
chain. The Ethereum hot wallet can be an HSM key (`hot_signer=...`); otherwise a `LocalKeySigner`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any, Callable

from ..engine.node import Node
from ..ledger.commands import OpenAccount, RegisterAsset
from ..chains.bitcoin.adapter import BitcoinAdapter
from ..chains.bitcoin.simulator import BitcoinSimulator
from .commands import (
    ActivatePolicy, AddWithdrawalAddress, AssignDepositAddress, ConfigureCustodyAsset,
    ConfirmWithdrawalEmail, RegisterWallet, RequestWithdrawal, custody_state,
)
from ..staff import StaffKey, staff_of
from ..staff.desk import StaffDesk
from .kyt import BuiltinScorer, ChainFundingGraph, sample_blacklist
from .wallets import LocalKeySigner, eth_address, p2wpkh_address
from .workers import Balancer, DepositWatcher, HotWallet, WithdrawalWorker
from ..app import new_node

__all__ = ["LocalNet", "DEFAULT_POLICY", "BTC_MINER_SPK", "START_NS", "STAFF", "derive_key", "shield_multisig"]

#: The local network's staff (genesis quorum 2 of the operators tina and tom).
STAFF: dict[str, list[str]] = {"tina": ["approver", "operator"], "tom": ["approver", "operator"], "ana": ["analyst"],
                               "pat": ["policy_admin"], "pia": ["policy_admin"], "pol": ["policy_admin"]}

START_NS = 1_800_000_000 * 10**9
BTC_MINER_SPK = bytes.fromhex("0014" + "ab" * 20)

#: The policy the demo and most tests run (docs/custody.md explains each rule).
DEFAULT_POLICY: dict[str, Any] = {
    "version": 1,
    "approval_ttl_s": 3600,
    "rules": [
        {"name": "deny-high-risk", "when": {"risk_score_gte": 90}, "action": {"type": "deny"}},
        {"name": "new-address-cooling", "when": {"allow_listed": True, "allow_list_age_s_lt": 86400},
         "action": {"type": "delay", "delay_s": 86400}},
        {"name": "large-btc", "when": {"asset": ["BTC"], "amount_minor_gt": 100_000_000},
         "action": {"type": "approvals", "count": 2, "roles": ["approver"]}},
        {"name": "large-eth", "when": {"asset": ["ETH"], "amount_minor_gt": 10 * 10**18},
         "action": {"type": "approvals", "count": 2, "roles": ["approver"]}},
        {"name": "big-share-of-hot", "when": {"wallet_share_bp_gte": 5_000},
         "action": {"type": "approvals", "count": 1, "roles": ["approver"], "delay_s": 600}},
        {"name": "btc-daily-velocity", "when": {"asset": ["BTC"], "user_velocity": {"window_s": 86400, "amount_minor_gt": 300_000_000}},
         "action": {"type": "manual_review"}},
        {"name": "hot-small", "when": {"wallet_tier": ["hot"]}, "action": {"type": "allow"}},
    ],
}


def shield_multisig(seed: str) -> Any:
    """The shield fund's 2-of-3 cold vault (wsh sortedmulti); the keys stay with offline signers."""
    from embit import bip32
    from embit.networks import NETWORKS

    from ..chains.bitcoin.wallet import DescriptorWallet

    net = NETWORKS["regtest"]
    parts = []
    for n in range(3):
        root = bip32.HDKey.from_seed(_key(seed, f"shield-{n}"), version=net["xprv"])
        xpub = root.derive("m/48h/1h/0h/2h").to_public().to_base58(net["xpub"])
        parts.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{xpub}/<0;1>/*")
    return DescriptorWallet("wsh(sortedmulti(2,%s))" % ",".join(parts))


def _key(seed: str, label: str) -> bytes:
    return hashlib.sha256(f"ringfence-localnet:{seed}:{label}".encode()).digest()


#: The demo/test key derivation (also used by `ringfence serve --demo`'s custody runtime).
derive_key = _key


class LocalNet:
    def __init__(self, data_dir: Path | str, *, eth: Any = None, key_seed: str | None = None,
                 hot_signer: Any = None, hot_key_id: str | None = None,
                 attest: Callable[..., Any] | None = None, sim: BitcoinSimulator | None = None) -> None:
        from ..chains.ethereum import EthDevChain, EthereumAdapter, EthereumSettings

        self.data_dir = Path(data_dir)
        self.now = {"ns": START_NS}
        self.seed = key_seed or secrets.token_hex(8)
        self.node = self._open_node()
        self.sim = sim or BitcoinSimulator()
        self.btc = BitcoinAdapter(self.sim, network="regtest")
        self.eth = eth or EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))
        self.dev = EthDevChain(self.eth)
        self.keys: dict[str, bytes] = {"btc-hot": _key(self.seed, "btc-hot"), "eth-hot": _key(self.seed, "eth-hot")}
        self.local = LocalKeySigner(self.keys)
        self.btc_hot = p2wpkh_address(self.local.public_key("btc-hot"))
        if hot_signer is not None:
            self.eth_hot_signer, self.eth_hot_key = hot_signer, hot_key_id or "eth-hot"
        else:
            self.eth_hot_signer, self.eth_hot_key = self.local, "eth-hot"
        self.eth_hot = eth_address(self.eth_hot_signer.public_key(self.eth_hot_key))
        self.attest = attest
        self.keys["btc-warm"] = _key(self.seed, "btc-warm")
        self.local = LocalKeySigner(self.keys)
        self.btc_warm = p2wpkh_address(self.local.public_key("btc-warm"))
        self.shield_wallet = shield_multisig(self.seed)
        self.cold = {"btc": p2wpkh_address(LocalKeySigner({"c": _key(self.seed, "btc-cold")}).public_key("c")),
                     "shield": self.shield_wallet.address(0),
                     "eth": eth_address(LocalKeySigner({"c": _key(self.seed, "eth-cold")}).public_key("c"))}
        self.deposit_keys: dict[str, str] = {}  # address -> key id
        #: Every demo staff member's signing key (one desk plays them all: test/demo only).
        self.desk = StaffDesk({s: StaffKey.from_seed_hex(s, _key(self.seed, f"staff-{s}").hex()) for s in STAFF},
                              lambda: self.now["ns"])
        self.scorer = BuiltinScorer(sample_blacklist(), ChainFundingGraph({"bitcoin": self.btc, "ethereum": self.eth}))
        self._make_workers()

    # --- node lifecycle -------------------------------------------------------------------------

    def _open_node(self) -> Node:
        node = new_node(self.data_dir, fsync=False, clock=lambda: self.now["ns"])
        node.open()
        return node

    def _make_workers(self) -> None:
        if self.attest is not None and hasattr(self.attest, "node"):
            self.attest.node = self.node  # the policy side reads the recovered engine after a restart
        self.btc_watcher = DepositWatcher(self.node, self.btc, self.scorer)
        self.eth_watcher = DepositWatcher(self.node, self.eth, self.scorer)
        wallets = {"btc_hot": HotWallet("btc_hot", "bitcoin", self.btc_hot, "btc-hot", self.local),
                   "eth_hot": HotWallet("eth_hot", "ethereum", self.eth_hot, self.eth_hot_key, self.eth_hot_signer,
                                        self.attest)}
        self.withdrawals = WithdrawalWorker(self.node, {"bitcoin": self.btc, "ethereum": self.eth}, wallets)
        self.btc_balancer = Balancer(self.node, self.btc, deposit_signer=self.local, key_of_address=self.deposit_keys)
        self.eth_balancer = Balancer(self.node, self.eth, deposit_signer=self.local, key_of_address=self.deposit_keys)

    def crash_and_restart(self) -> None:
        """Abandon the node without closing it (as a killed process would) and recover from the journal."""
        self.node.abandon()  # a dead process's files close unsynced and its data-directory lock is released
        self.node = self._open_node()
        self._make_workers()

    def advance(self, seconds: int) -> None:
        self.now["ns"] += seconds * 10**9

    def tick(self) -> None:
        self.now["ns"] += 1_000_000

    def execute(self, command: Any) -> list[Any]:
        self.tick()
        return self.node.execute(command)

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return custody_state(self.node.engine)

    @property
    def ledger(self):  # type: ignore[no-untyped-def]
        return self.node.engine.ledger

    # --- setup ----------------------------------------------------------------------------------

    def bootstrap(self, policy: dict[str, Any] | None = None, *, eth_credit: int = 3, eth_final: int = 8,
                  btc_credit: int = 2, btc_final: int = 6) -> None:
        ex = self.execute
        ex(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        ex(RegisterAsset("ETH", 18, "crypto", "ethereum"))
        ex(ConfigureCustodyAsset("BTC", "bitcoin", "regtest", btc_credit, btc_final, 10_000, 50_000, 5 * 10**8, 10_000))
        ex(ConfigureCustodyAsset("ETH", "ethereum", "tester", eth_credit, eth_final, 10**15, 10**16, 100 * 10**18, 10**15))
        ex(RegisterWallet("btc_deposit", "bitcoin", "deposit", []))
        ex(RegisterWallet("btc_hot", "bitcoin", "hot", [self.btc_hot]))
        ex(RegisterWallet("btc_warm", "bitcoin", "warm", [self.btc_warm]))
        ex(RegisterWallet("btc_cold", "bitcoin", "cold", [self.cold["btc"]]))
        ex(RegisterWallet("shield_btc", "bitcoin", "shield", [self.cold["shield"]], True))
        ex(RegisterWallet("eth_deposit", "ethereum", "deposit", []))
        ex(RegisterWallet("eth_hot", "ethereum", "hot", [self.eth_hot]))
        ex(RegisterWallet("eth_cold", "ethereum", "cold", [self.cold["eth"]]))
        if not staff_of(self.node.engine).members:
            ex(self.desk.genesis(STAFF, 2))
        self.install_policy(policy or DEFAULT_POLICY, "p-initial")

    def install_policy(self, policy: dict[str, Any], proposal_id: str) -> None:
        self.execute(self.desk.propose_policy(proposal_id, json.dumps(policy), "pat"))
        self.execute(self.desk.approve_policy(self.node.engine, proposal_id, "pia"))
        self.execute(self.desk.approve_policy(self.node.engine, proposal_id, "pol"))
        self.execute(ActivatePolicy(proposal_id))

    def sign(self, what: str, *args: Any) -> Any:
        """A signed staff command built by the desk against the live engine: `net.sign("approve_withdrawal",
        "w2", "tom", "approver")` is `desk.approve_withdrawal(engine, "w2", "tom", "approver")`."""
        self.tick()
        return getattr(self.desk, what)(self.node.engine, *args)

    def open_user(self, account_id: str) -> dict[str, str]:
        """Accounts and one deposit address per chain (keys derived from the seed)."""
        out = {}
        for asset, chain, wallet in (("BTC", "bitcoin", "btc_deposit"), ("ETH", "ethereum", "eth_deposit")):
            self.execute(OpenAccount(account_id, asset))
            kid = f"dep-{chain[:3]}-{account_id}"
            self.keys[kid] = _key(self.seed, kid)
            self.local = LocalKeySigner(self.keys)
            pub = self.local.public_key(kid)
            addr = p2wpkh_address(pub) if chain == "bitcoin" else eth_address(pub)
            self.deposit_keys[addr] = kid
            self.execute(AssignDepositAddress(account_id, chain, wallet, addr))
            out[chain] = addr
        self._make_workers()
        return out

    # --- chain actions (the outside world) ------------------------------------------------------

    def btc_fund_miner(self) -> None:
        """Give the test miner spendable coins (a coinbase matured by 100 blocks)."""
        from .wallets import p2wpkh_address as _a

        self.keys["miner"] = _key(self.seed, "miner")
        self.local = LocalKeySigner(self.keys)
        self.miner = _a(self.local.public_key("miner"))
        self.sim.mine(3, self.btc.script_of_address(self.miner))
        self.sim.mine(100, BTC_MINER_SPK)
        self._make_workers()

    def btc_send(self, to: str, amount_sat: int, *, from_key: str = "miner") -> str:
        from .wallets import build_btc_payment

        addr = p2wpkh_address(self.local.public_key(from_key))
        raw, txid, _ = build_btc_payment(self.btc, from_address=addr, key_id=from_key, signer=self.local,
                                         outputs=[(to, amount_sat)], fee_rate_sat_per_vb=2, request_id=f"send-{to}",
                                         reason="test payment")
        self.btc.broadcast(raw)
        return txid

    def btc_mine(self, n: int = 1) -> None:
        self.sim.mine(n, BTC_MINER_SPK)

    def eth_send(self, to: str, wei: int, dev_key: int = 1) -> str:
        return self.eth.broadcast(self.dev.sign_transfer(self.dev.dev_key(dev_key), to, wei)).txid

    def eth_mine(self, n: int = 1) -> None:
        self.dev.mine(n)

    # --- user actions (the gateway side) --------------------------------------------------------

    def request(self, wid: str, account_id: str, asset: str, address: str, amount_minor: int, *,
                confirm: bool = True, device_id: str = "dev-1", ip: str = "10.0.0.1") -> list[Any]:
        cfg = self.state.assets[asset]
        token = f"token-{wid}"
        wallet = "btc_hot" if asset == "BTC" else "eth_hot"
        ev = self.execute(RequestWithdrawal(wid, account_id, asset, wallet, address, amount_minor,
                                            cfg.withdrawal_fee_minor, hashlib.sha256(token.encode()).hexdigest(),
                                            device_id, ip))
        if confirm:
            ev += self.execute(ConfirmWithdrawalEmail(wid, asset, wallet, token))
        return ev

    def allow_list(self, account_id: str, asset: str, address: str) -> None:
        self.execute(AddWithdrawalAddress(account_id, asset, address))
