"""The custody runtime inside `ringfence serve`: chains per asset, the workers that watch them and
pay out of them, and their supervision.

* **Chains.** Each custodied asset names its chain in settings (`RINGFENCE_CUSTODY_CHAINS`, e.g.
  `BTC=local,ETH=local,USDT=local`). `local` is the in-process demo chains (`LocalChains`): the
  Bitcoin UTXO simulator (saved to `DIR/chains/bitcoin.json` after every change, so it outlives a
  killed server like a real network would) and eth-tester with an ERC-20 USDT (every transaction
  and mined block is appended to `DIR/chains/ethereum.jsonl` and replayed into a fresh eth-tester
  on start: balances, nonces and heights come back exactly; block hashes do not). A miner thread
  makes a block on both every `custody_block_interval_ms`.
* **Workers** (each a `Supervised` thread, restarted with exponential back-off after an error;
  their state is in `/readyz` and `/metrics`): the deposit watcher per chain, the withdrawal
  pipeline, the balancer (sweeps of deposit addresses into hot, and recording confirmed
  transfers), chain reconciliation on every new block (halts withdrawals of an asset whose wallet
  holds less than the ledger says), and the security-change relay (identity's password / second
  factor / e-mail changes become `RecordSecurityChange` commands, so the engine enforces the lock),
  and the shield sweeper (`custody.shield.ShieldSweeper`: the fee share accrued in
  `insurance:<segment>` moves from the BTC hot wallet into the 2-of-3 shield vault on chain, every
  `shield_sweep_every_s`). Workers only read engine state (`node.read`) and submit commands; they never write state.
  Chain access is serialised by one lock (the simulator and eth-tester are single-threaded).
* **Keys.** Every Ethereum wallet's key (hot, cold, shield, one per deposit address) is generated in
  a PKCS#11 token of the HSM process (`eth_hsm.py`) and signs only behind the policy's attestation;
  the Bitcoin hot wallet is FROST 2-of-3 (`btc_signing.py`), warm and cold P2WSH vaults
  (`cold_refill.py`). The Bitcoin deposit addresses' keys are in the HSM process too (token
  `rf-btc-deposits`, sweeps to `btc_hot` only), and so are the Bitcoin shield vault's three keys (P2WSH
  2-of-3, one token each `rf-btc-shield-N`, signing only the proof of reserves' message). What is left
  derives from a random seed kept in `DIR/custody/seed` (0600) with `localnet.derive_key`, as
  `LocalNet` does (dev, worthless on any real chain): the demo faucet and the users' outside wallets,
  none of them a wallet of the exchange.
* **Proof of reserves.** `reserve_source(read)` is the `ReserveSource` `serve` hands its proof
  publisher: every wallet (deposit addresses, hot, warm, cold, the shield vault) signs the
  snapshot's ownership message with the signer that controls it (`seed_wallet_keys`, shared with
  `LocalNet`), and every balance of a chain is read at one pinned height, under the chain lock.

Without chain settings (and without `--demo`) nothing here runs and `canDeposit`/`canWithdraw`
stay false.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import structlog

from ..errors import ConfigError, RingfenceError, ValidationError
from .localnet import BTC_MINER_SPK, derive_key, shield_multisig
from .shield import DEFAULT_VALUE_ASSET
from .wallets import LocalKeySigner, build_btc_payment, eth_address, p2wpkh_address

__all__ = ["AssetTerms", "DEMO_TERMS", "LocalChains", "CustodyKeys", "CustodyRuntime", "Supervised",
           "parse_chain_settings", "demo_policy", "relay_security_changes", "DEMO_POLICY_ID", "NO_POLICY",
           "RuntimeReserveSource", "SHIELD_MIN_SWEEP_MINOR"]

log = structlog.get_logger("ringfence.custody")

#: Binance's network id of each asset's chain (what `network=` and `networkList[].network` say).
NETWORK_OF_CHAIN = {"bitcoin": "BTC", "ethereum": "ETH"}
#: The demo policy's proposal id. Who approves what is the staff register's business
#: (`ringfence.staff`): `serve --demo` seeds its genesis (staff/demo.py) before this runtime starts.
DEMO_POLICY_ID = "p-serve-1"
#: The demo policy's delay for mid-sized ETH withdrawals (so a client sees a policy delay at work).
DEMO_DELAY_S = 5
#: What bootstrap reports (and `serve` prints) when no withdrawal policy is active outside --demo.
NO_POLICY = ("no active withdrawal policy: every withdrawal is denied (default deny) until policy admins propose "
             "and approve one (ringfence policy propose|approve|activate --key ...); see docs/custody.md")
MAX_BACKOFF_MS = 30_000
#: Where the demo faucet pays from: its own wallets, or (ETH) the tainted demo wallet (KYT tests).
PAY_SOURCES = ("faucet", "tainted", "exploit")


@dataclass(frozen=True)
class AssetTerms:
    """What the exchange offers for one custodied asset (minor units)."""

    asset: str
    chain: str
    decimals: int
    credit_confirmations: int
    finality_confirmations: int
    min_deposit_minor: int
    min_withdrawal_minor: int
    max_withdrawal_minor: int
    withdrawal_fee_minor: int
    review_above_minor: int  # a withdrawal above this waits for a human (policy)
    sweep_min_minor: int

    @property
    def network(self) -> str:
        return NETWORK_OF_CHAIN[self.chain]


#: The demo's terms: credit after 2 confirmations (so a client sees them progress), final at 4.
DEMO_TERMS: dict[str, AssetTerms] = {
    "BTC": AssetTerms("BTC", "bitcoin", 8, 2, 4, 10_000, 100_000, 5 * 10**8, 10_000, 10_000_000, 10_000),
    "ETH": AssetTerms("ETH", "ethereum", 18, 2, 4, 10**15, 10**16, 100 * 10**18, 10**15, 2 * 10**18, 10**15),
    "USDT": AssetTerms("USDT", "ethereum", 6, 2, 4, 10**6, 10 * 10**6, 10**12, 10**6, 5_000 * 10**6, 100 * 10**6),
}
#: What the demo treasury puts in the hot wallets at the start (covers the demo's ledger funding).
DEMO_TREASURY = {"BTC": 110 * 10**8, "ETH": 1_100 * 10**18, "USDT": 12_000_000 * 10**6}
#: What the demo's shield fund holds from the start: CoinEx's rule asks that the shield vault be worth
#: at least the hot wallets (here about 22M USDT at the demo's reference prices; 450 BTC at 61,000
#: is about 27.5M), so the demo shows the rule holding, and an alert only when something drains it.
DEMO_SHIELD_FUND = {"BTC": 450 * 10**8}
#: The smallest shield sweep per asset with a shield vault (0.00001 BTC: well above the dust limit;
#: trading 0.1 BTC at the default 0.1 % fee accrues that much; 0.0001 ETH and 0.1 USDT: demo sizes, so a
#: few trades show a sweep — a real deployment sets them above the sweep's gas).
SHIELD_MIN_SWEEP_MINOR = {"BTC": 1_000, "ETH": 10**14, "USDT": 10**5}


def parse_chain_settings(text: str) -> dict[str, str]:
    """`BTC=local,ETH=local` -> {"BTC": "local", ...}; `none` -> {} (no chains, even with --demo);
    refuses unknown assets and chain kinds."""
    out: dict[str, str] = {}
    if text.strip().lower() == "none":
        return out
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        asset, sep, kind = part.partition("=")
        asset, kind = asset.strip().upper(), kind.strip()
        if not sep or asset not in DEMO_TERMS:
            raise ConfigError(f"'{part[:40]}': write ASSET=local with ASSET one of {', '.join(DEMO_TERMS)}",
                              field="RINGFENCE_CUSTODY_CHAINS")
        if kind != "local":
            raise ConfigError(f"{asset}: only 'local' (the in-process demo chains) is supported by this version",
                              field="RINGFENCE_CUSTODY_CHAINS")
        out[asset] = kind
    if "USDT" in out and "ETH" not in out:
        raise ConfigError("USDT is an ERC-20 token: configure ETH too (its gas)", field="RINGFENCE_CUSTODY_CHAINS")
    return out


def demo_hot_band(text: str) -> list[dict[str, Any]]:
    """`RINGFENCE_DEMO_HOT_BAND=MIN,TARGET,MAX` (basis points of reserves held hot) -> the demo policy's
    `balancing` section for ETH and USDT; empty (no automatic drains or refills) when unset."""
    if not text.strip():
        return []
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ConfigError("write MIN,TARGET,MAX in basis points, e.g. 500,1000,2000", field="RINGFENCE_DEMO_HOT_BAND")
    lo, mid, hi = (int(p) for p in parts)
    if not 0 <= lo <= mid <= hi <= 10_000:
        raise ConfigError("need 0 <= MIN <= TARGET <= MAX <= 10000", field="RINGFENCE_DEMO_HOT_BAND")
    return [{"asset": a, "hot_min_bp": lo, "hot_target_bp": mid, "hot_max_bp": hi} for a in ("ETH", "USDT")]


def demo_policy(terms: dict[str, AssetTerms], band: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Small withdrawals from a hot wallet go through; larger ones wait for two approvers' signed
    approvals (staff role `approver`; in the demo ada and cy). `band`: the policy's balancing section."""
    rules: list[dict[str, Any]] = [{"name": "deny-high-risk", "when": {"risk_score_gte": 90}, "action": {"type": "deny"}}]
    for t in terms.values():
        rules.append({"name": f"review-large-{t.asset}", "when": {"asset": [t.asset], "amount_minor_gt": t.review_above_minor},
                      "action": {"type": "approvals", "count": 2, "roles": ["approver"]}})
    if "ETH" in terms:  # mid-sized ETH (above 1, up to the review threshold): sent after a short policy delay
        rules.append({"name": "delay-mid-ETH", "when": {"asset": ["ETH"], "amount_minor_gt": 10**18},
                      "action": {"type": "delay", "delay_s": DEMO_DELAY_S}})
    rules.append({"name": "hot-small", "when": {"wallet_tier": ["hot"]}, "action": {"type": "allow"}})
    out: dict[str, Any] = {"version": 1, "approval_ttl_s": 3600, "rules": rules}
    band = [b for b in band or [] if b["asset"] in terms]
    if band:
        out["balancing"] = band
    return out


# --------------------------------------------------------------------------------------- keys


class SeedSigner(LocalKeySigner):
    """A `LocalKeySigner` whose keys derive from the seed on first use (deposit addresses)."""

    def __init__(self, seed: str) -> None:
        super().__init__({})
        self.seed = seed
        self._guard = threading.Lock()

    def _key(self, key_id: str) -> Any:
        import coincurve

        with self._guard:
            if key_id not in self._keys:
                self._keys[key_id] = coincurve.PrivateKey(derive_key(self.seed, key_id))
            return self._keys[key_id]


class CustodyKeys:
    """The demo's wallet addresses and the keys still derived from one seed.

    The Ethereum wallets' keys (hot, cold, shield) and every deposit address's key (both chains) are
    in the HSM process (`eth_hsm.EthHotHsm`, set as `eth_hsm`): nothing of them is derived here, and
    so are the Bitcoin shield vault's three keys. The Bitcoin hot wallet (FROST) and vaults (P2WSH) are
    set by the runtime. Without an HSM (a `CustodyKeys` read offline, e.g. by a test) the shield vault
    is the seed's (`localnet.shield_multisig`, as `LocalNet` has it)."""

    def __init__(self, seed: str, eth_hsm: Any = None) -> None:
        self.seed = seed
        self.signer = SeedSigner(seed)
        self.eth_hsm = eth_hsm
        self.btc_hot = self.btc_warm = self.eth_hot = ""  # set by the runtime from their signers
        self.cold: dict[str, str] = {"btc": "", "eth": ""}
        self.shield = eth_hsm.shield_btc_address if eth_hsm is not None else shield_multisig(seed).address(0)
        #: The shield fund's Ethereum vault (ETH and USDT): one key in the HSM, not a multisig contract
        #: (the local chain has no Safe); its coins are proven by that key's signature like cold's.
        self.shield_eth = ""
        if eth_hsm is not None:
            self.eth_hot, self.cold["eth"], self.shield_eth = eth_hsm.address, eth_hsm.cold_address, eth_hsm.shield_address

    def deposit_key_id(self, chain: str, account_id: str) -> str:
        return f"dep-{chain[:3]}-{account_id}"

    def deposit_signer(self, chain: str) -> Any:
        """Who signs for the chain's deposit addresses: the HSM process (a key per address in a token of
        the chain), or without one (a `CustodyKeys` read offline) the seed."""
        return self.eth_hsm if self.eth_hsm is not None else self.signer

    def deposit_address(self, chain: str, account_id: str) -> str:
        pub = self.deposit_signer(chain).public_key(self.deposit_key_id(chain, account_id))
        return p2wpkh_address(pub) if chain == "bitcoin" else eth_address(pub)

    def outside_address(self, chain: str, label: str) -> str:
        """An address outside the exchange (a user's own wallet in the demo)."""
        pub = self.signer.public_key(f"outside-{chain}-{label}")
        return p2wpkh_address(pub) if chain == "bitcoin" else eth_address(pub)


def load_seed(directory: Path) -> str:
    path = directory / "seed"
    if path.exists():
        return path.read_text().strip()
    directory.mkdir(parents=True, exist_ok=True)
    seed = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(seed + "\n")
    return seed


# ------------------------------------------------------------------------------------- chains


class LocalChains:
    """The in-process demo chains. Every use goes through `lock` (neither chain is thread-safe)."""

    FAUCET_BLOCKS = 120  # coinbases to the faucet: the first 21 are mature (about 1,000 BTC)

    def __init__(self, directory: Path, seed: str, chains: frozenset[str] = frozenset({"bitcoin", "ethereum"})) -> None:
        from ..chains.bitcoin.simulator import BitcoinSimulator

        self.chains = chains
        self.btc: Any = None
        self.eth: Any = None
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.faucet = SeedSigner(seed)
        self.faucet_btc = p2wpkh_address(self.faucet.public_key("faucet-btc"))
        btc_path = self.dir / "bitcoin.json"
        self._btc_path = btc_path
        if "bitcoin" in chains:
            fresh_btc = not btc_path.exists()
            sim = BitcoinSimulator() if fresh_btc else BitcoinSimulator.load(btc_path)
            self.btc = _SavingBitcoinAdapter(sim, "regtest", save=self.save_btc)
            if fresh_btc:
                sim.mine(self.FAUCET_BLOCKS, self.btc.script_of_address(self.faucet_btc))
                self.save_btc()
        self._eth_log = self.dir / "ethereum.jsonl"
        if "ethereum" in chains:
            # web3, eth_account and py-evm (about 1 s of imports, py_ecc's pairing tables among them) only
            # when an Ethereum chain is configured: a BTC-only custody starts without them
            from ..chains.ethereum import EthDevChain, EthereumSettings

            self._start_eth(EthDevChain, EthereumSettings)

    def _start_eth(self, EthDevChain: Any, EthereumSettings: Any) -> None:
        self.eth = _LoggingEthereumAdapter.from_settings(EthereumSettings(rpc_url=None))
        self.eth.log_path = self._eth_log
        self.dev = EthDevChain(self.eth)
        meta_path = self.dir / "ethereum.json"
        if meta_path.exists():
            self._replay_eth()
            meta = json.loads(meta_path.read_text())
            self.eth.add_token("USDT", meta["usdt_contract"], 6)
        else:
            contract = self.dev.deploy_token("USDT")  # logged: replayed on the next start
            _write_private(meta_path, json.dumps({"usdt_contract": contract}))

    def save_btc(self) -> None:
        self.btc.node.save(self._btc_path)

    def _replay_eth(self) -> None:
        if not self._eth_log.exists():
            return
        self.eth.log_path = None
        try:
            for n, line in enumerate(self._eth_log.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    log.warning("chains.eth_log_torn", line=n)  # a torn last line of a killed server
                    break
                if "tx" in entry:
                    self.eth.broadcast(bytes.fromhex(entry["tx"]))
                elif "mine" in entry:
                    self.dev.mine(int(entry["mine"]))
        finally:
            self.eth.log_path = self._eth_log

    def mine(self) -> None:
        with self.lock:
            if self.btc is not None:
                self.btc.node.mine(1, BTC_MINER_SPK)
                self.save_btc()
            if self.eth is not None:
                self.dev.mine(1)
                self.eth.log({"mine": 1})

    def heights(self) -> dict[str, int]:
        with self.lock:
            return {chain: self.adapter(chain).current_height() for chain in sorted(self.chains)}

    def pay(self, asset: str, to: str, amount_minor: int, source: str = "faucet") -> str:
        """The demo faucet: pay from a demo wallet on the local chain; returns the txid.

        `source="tainted"` (ETH only) pays from the demo's tainted wallet instead: a wallet funded
        by an address on the sample KYT blacklist (eth-tester dev key 9, `exploit`), so the deposit
        scores one hop of taint (90 > 85) and lands in quarantine. `source="exploit"` (ETH only) pays
        from that blacklisted address itself (dev key 9): the deposit is frozen and reported."""
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
            raise ValidationError("must be a positive amount", field="amount")
        if source not in PAY_SOURCES:
            raise ValidationError(f"must be one of {', '.join(PAY_SOURCES)}", field="from")
        if self.adapter("bitcoin" if asset == "BTC" else "ethereum") is None:
            raise ValidationError(f"{asset} is not on this server's chains", field="asset")
        if source in ("tainted", "exploit") and asset != "ETH":
            raise ValidationError(f"the {source} demo wallet pays ETH only", field="from")
        if source == "tainted":
            return self._pay_tainted(to, amount_minor)
        if source == "exploit":
            with self.lock:
                to = self.eth.validate_address(to, "to")
                return str(self.eth.broadcast(self.dev.sign_transfer(self.dev.dev_key(9), to, amount_minor)).txid)
        with self.lock:
            if asset == "BTC":
                to = self.btc.validate_address(to, "to")
                raw, txid, _ = build_btc_payment(self.btc, from_address=self.faucet_btc, key_id="faucet-btc",
                                                 signer=self.faucet, outputs=[(to, amount_minor)], fee_rate_sat_per_vb=2,
                                                 request_id=f"faucet-{secrets.token_hex(4)}", reason="demo faucet")
                self.btc.broadcast(raw)
                return txid
            if asset == "ETH":
                return self.eth.broadcast(self.dev.sign_transfer(self.dev.dev_key(2), to, amount_minor)).txid
            if asset == "USDT":
                return self.eth.broadcast(self.dev.sign_token_transfer(self.dev.dev_key(1), "USDT", to, amount_minor)).txid
        raise ValidationError(f"the faucet pays BTC, ETH or USDT, not {asset!r}", field="asset")

    def tainted_eth(self) -> tuple[bytes, str]:
        """The demo's tainted ETH wallet: (key, address), derived from the seed."""
        from eth_account import Account

        key = derive_key(self.faucet.seed, "faucet-tainted-eth")
        return key, str(Account.from_key(key).address)

    def _pay_tainted(self, to: str, amount_minor: int) -> str:
        key, address = self.tainted_eth()
        with self.lock:
            to = self.eth.validate_address(to, "to")
            gas_room = 10**16
            if self.eth.balance(address, None, None) < amount_minor + gas_room:
                # the blacklisted sample address (dev key 9) funds the wallet: that is the taint
                self.eth.broadcast(self.dev.sign_transfer(self.dev.dev_key(9), address, amount_minor + gas_room))
            return str(self.eth.broadcast(self.dev.sign_transfer(key, to, amount_minor)).txid)

    def balance(self, asset: str, address: str, height: int | None = None) -> int:
        """An address's balance at the tip, or at `height` (a past block of the asset's chain)."""
        if self.adapter("bitcoin" if asset == "BTC" else "ethereum") is None:
            raise ValidationError(f"{asset} is not on this server's chains", field="asset")
        if height is not None and (isinstance(height, bool) or not isinstance(height, int) or height < 0):
            raise ValidationError("must be a block height (a whole number >= 0)", field="height")
        with self.lock:
            if height is not None and height > self.adapter("bitcoin" if asset == "BTC" else "ethereum").current_height():
                raise ValidationError("is above the chain's tip", field="height")
            if asset == "BTC":
                return self.btc.balance(self.btc.validate_address(address), height)
            if asset in ("ETH", "USDT"):
                return self.eth.balance(self.eth.validate_address(address), height, None if asset == "ETH" else asset)
        raise ValidationError(f"must be BTC, ETH or USDT, not {asset!r}", field="asset")

    def adapter(self, chain: str) -> Any:
        return self.btc if chain == "bitcoin" else self.eth


def _write_private(path: Path, text: str) -> None:
    from ..nodekey import write_private  # never through a .tmp or link another user put there

    write_private(path, text.encode())


def _saving_adapter_class() -> type:
    from ..chains.bitcoin.adapter import BitcoinAdapter

    class SavingBitcoinAdapter(BitcoinAdapter):
        """Saves the simulator after every accepted transaction (a network keeps what it was sent)."""

        def __init__(self, node: Any, network: str, *, save: Callable[[], None]) -> None:
            super().__init__(node, network)
            self._save = save

        def broadcast(self, raw_tx: bytes) -> Any:
            res = super().broadcast(raw_tx)
            if not res.already_known:
                self._save()
            return res

    return SavingBitcoinAdapter


def _logging_adapter_class() -> type:
    from ..chains.ethereum import EthereumAdapter

    class LoggingEthereumAdapter(EthereumAdapter):
        """Appends every transaction the chain accepted to a log (fsync), to replay it on restart."""

        log_path: Path | None = None

        def log(self, entry: dict[str, Any]) -> None:
            if self.log_path is None:
                return
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

        def broadcast(self, raw_tx: bytes) -> Any:
            res = super().broadcast(raw_tx)
            if not res.already_known:
                self.log({"tx": bytes(raw_tx).hex()})
            return res

    return LoggingEthereumAdapter


class _LazyClass:
    def __init__(self, factory: Callable[[], type]) -> None:
        self._factory = factory
        self._cls: type | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cls(*args, **kwargs)

    @property
    def cls(self) -> type:
        if self._cls is None:
            self._cls = self._factory()
        return self._cls

    def from_settings(self, *args: Any, **kwargs: Any) -> Any:
        return self.cls.from_settings(*args, **kwargs)


_SavingBitcoinAdapter = _LazyClass(_saving_adapter_class)
_LoggingEthereumAdapter = _LazyClass(_logging_adapter_class)


def _as(node: Any, source: str) -> Any:
    """The node as the worker `source` sees it: its commands are journaled with its name (docs/resilience.md)."""
    return node.as_source(source) if hasattr(node, "as_source") else node


# ---------------------------------------------------------------------------------- supervision


class Supervised:
    """One worker thread: `step()` every `every_ms` under the chain lock; an error is logged and
    the worker restarts after an exponential back-off (0.5 s doubling to 30 s)."""

    def __init__(self, name: str, step: Callable[[], Any], every_ms: int, lock: Any) -> None:
        self.name, self.step, self.every_ms, self.lock = name, step, every_ms, lock
        self.restarts = 0
        self.steps = 0
        self.failures_in_row = 0
        self.last_error = ""
        self.last_ok_ms = 0
        self.state = "starting"
        self._thread: threading.Thread | None = None
        #: why the node it works for stopped (deposed, fenced, a failed journal write), else None: then
        #: no step runs again (a deposed primary's engine may hold a batch the stream refused: a
        #: withdrawal `signed` there, broadcast, would be paid again by the new primary)
        self.halted: Callable[[], str | None] = lambda: None

    def start(self, stop: threading.Event) -> None:
        import contextvars

        # python-bitcointx keeps its class dispatcher in context variables set at import; a new
        # thread starts with an empty context, so run the worker in a copy of the starter's
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run, stop), name=f"custody-{self.name}", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            reason = self.halted()
            if reason is not None:
                log.warning("custody.worker_stopped", worker=self.name, reason=f"the node has stopped ({reason}): nothing "
                            "more is signed, sent or journaled from its state")
                break
            try:
                with self.lock:
                    self.step()
                self.steps += 1
                self.failures_in_row = 0
                self.state = "running"
                self.last_ok_ms = time.time_ns() // 1_000_000
                wait_ms = self.every_ms
            except Exception as exc:  # a supervised worker: log it, back off, start the step again
                self.failures_in_row += 1
                self.restarts += 1
                self.state = "backing_off"
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                wait_ms = min(MAX_BACKOFF_MS, 500 * 2 ** min(self.failures_in_row - 1, 10))
                log.warning("custody.worker_failed", worker=self.name, error=self.last_error, retry_ms=wait_ms)
            self._wait(stop, wait_ms)
        self.state = "stopped"

    def _wait(self, stop: threading.Event, wait_ms: int) -> None:
        """`stop.wait` in slices of at most a second, ended early once the node has stopped: a worker
        that steps every few minutes (the shield sweeper, a key refresh) ends when the node does."""
        deadline = time.monotonic() + wait_ms / 1000
        while not stop.is_set() and self.halted() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, 1.0))

    def join(self, timeout_s: int) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "steps": self.steps, "restarts": self.restarts, "last_error": self.last_error,
                "last_ok_ms": self.last_ok_ms}


# ---------------------------------------------------------------------------------- the runtime


class CustodyRuntime:
    """Chains, keys, bootstrap and workers of one `serve` process."""

    def __init__(self, data_dir: Path, assets: dict[str, str], *, demo: bool, block_interval_ms: int = 3000,
                 poll_ms: int = 500, address_cooling_s: int = 86400, security_lock_s: int = 86400,
                 identity_ctx: Any = None, shield_sweep_every_s: int = 3600,
                 shield_value_asset: str = DEFAULT_VALUE_ASSET, kyt_blacklist: str = "") -> None:
        if not assets:
            raise ConfigError("no custodied assets configured", field="RINGFENCE_CUSTODY_CHAINS")
        self.data_dir = Path(data_dir)
        self.demo = demo
        self.terms = {a: DEMO_TERMS[a] for a in DEMO_TERMS if a in assets}
        self.block_interval_ms = block_interval_ms
        self.poll_ms = poll_ms
        self.address_cooling_s = address_cooling_s
        self.security_lock_s = security_lock_s
        self.identity_ctx = identity_ctx
        if shield_sweep_every_s <= 0:
            raise ConfigError("must be a positive number of seconds", field="RINGFENCE_SHIELD_SWEEP_EVERY_S")
        self.shield_sweep_every_s = shield_sweep_every_s
        self.shield_value_asset = shield_value_asset
        from .kyt import BlacklistFile, sample_blacklist

        # KYT's list: the shipped sample, plus RINGFENCE_KYT_BLACKLIST (refused at start if unreadable)
        try:
            self.blacklist: Any = BlacklistFile(kyt_blacklist, sample_blacklist()) if kyt_blacklist else sample_blacklist()
        except ValidationError as err:
            raise ConfigError(err.message, field="RINGFENCE_KYT_BLACKLIST") from None
        self.shield_sweeper: Any = None
        cdir = self.data_dir / "custody"
        #: The BTC hot wallet: a FROST 2-of-3 Taproot key held by signer processes (btc_signing.py).
        self.btc_signers: Any = None
        self.btc_hot_signer: Any = None
        self.cold_vault: Any = None
        self.btc_vaults: dict[str, Any] = {}
        bitcoin = "bitcoin" in {t.chain for t in self.terms.values()}
        if bitcoin:
            from .btc_signing import begin_btc_hot
            from .cold_refill import open_vaults, start_vault_ceremony  # btc_warm/btc_cold: P2WSH 2-of-3 vaults

            ceremony = start_vault_ceremony(self.data_dir)  # first start only; runs beside the signers' start
            finish_btc_hot = begin_btc_hot(self.data_dir)  # the signer processes start while the chains load
        #: The HSM process (eth_hsm.py): every Ethereum wallet's key and every deposit address's key
        #: (both chains), each in a token, signing only behind the policy's attestation.
        from .eth_hsm import EthHotHsm

        self.eth_hot_hsm: Any = EthHotHsm(cdir / "hsm")  # starts while the chains load
        seed = load_seed(cdir)
        self.chains = LocalChains(self.data_dir / "chains", seed, frozenset(t.chain for t in self.terms.values()))
        if self.eth_hot_hsm is not None:
            self.eth_hot_hsm.wait_ready()
        self.keys = CustodyKeys(seed, self.eth_hot_hsm)
        if bitcoin:
            self.btc_signers, self.btc_hot_signer = finish_btc_hot()
            self.keys.btc_hot = self.btc_hot_signer.address()
            self.btc_vaults = open_vaults(self.data_dir, ceremony=ceremony)
            self.cold_vault = self.btc_vaults["cold"]
            self.keys.cold["btc"] = self.cold_vault.address
            self.keys.btc_warm = self.btc_vaults["warm"].address
        self.node: Any = None
        self.workers: list[Supervised] = []
        self._stop = threading.Event()
        self.reconciler: Any = None
        self.token_sweepers: list[Any] = []
        self.rebalancer: Any = None
        self.last_chain_report: Any = None
        #: Test hook (demo only): SIGKILL the process at this withdrawal-worker point (e.g. after_record_signed).
        self.crash_at = os.environ.get("RINGFENCE_CUSTODY_CRASH_AT", "") if demo else ""

    # ---- what the API asks ------------------------------------------------------------------

    def chains_of_assets(self) -> dict[str, str]:
        return {a: t.chain for a, t in self.terms.items()}

    def deposit_address(self, account_id: str, asset: str) -> str:
        """The account's address on the asset's chain (the same on every call); assigned on first use."""
        from .commands import AssignDepositAddress, custody_state
        from ..ledger.commands import OpenAccount

        t = self.terms[asset]
        wallet = "btc_deposit" if t.chain == "bitcoin" else "eth_deposit"
        address = self.keys.deposit_address(t.chain, account_id)

        def known(engine: Any) -> tuple[bool, bool]:
            owner = custody_state(engine).owner_of(t.chain, address)
            return owner is not None, engine.ledger.find(account_id, asset, "available", "spot") is not None

        assigned, has_account = self.node.read(known)
        if not has_account:
            self.node.execute(OpenAccount(account_id, asset))
        if not assigned:
            self.node.execute(AssignDepositAddress(account_id, t.chain, wallet, address))
        return address

    # ---- bootstrap (idempotent: only what is missing is submitted) ---------------------------

    def bootstrap(self, node: Any) -> dict[str, Any]:
        from ..ledger.commands import RegisterAsset
        from .commands import ConfigureCustodyAsset, RegisterWallet, SetWithdrawalRules, custody_state

        ex = node.execute
        chains = {t.chain for t in self.terms.values()}
        assets = node.read(lambda e: {a.code: a for a in e.ledger.assets})
        for t in self.terms.values():
            have = assets.get(t.asset)
            if have is None:
                ex(RegisterAsset(t.asset, t.decimals, "crypto", t.chain))
            elif (have.decimals, have.chain) != (t.decimals, t.chain):
                # e.g. registered by `ringfence asset add` before the chain was configured: the chain's
                # amounts (in units of 10^-decimals) would be credited, withdrawn and shown in the
                # ledger's units instead, off by a power of ten; refuse to start rather than mis-credit
                raise ConfigError(f"{t.asset} is registered with {have.decimals} decimals on chain "
                                  f"{have.chain or 'none'}; its {t.chain} custody counts {t.decimals} decimals: "
                                  "custody of it cannot start on this data directory", field="RINGFENCE_CUSTODY_CHAINS")
        configured = node.read(lambda e: set(custody_state(e).assets))
        for t in self.terms.values():
            if t.asset not in configured:
                ex(ConfigureCustodyAsset(t.asset, t.chain, "regtest" if t.chain == "bitcoin" else "tester",
                                         t.credit_confirmations, t.finality_confirmations, t.min_deposit_minor,
                                         t.min_withdrawal_minor, t.max_withdrawal_minor, t.withdrawal_fee_minor))
        k = self.keys
        wallets = []
        if "bitcoin" in chains:
            wallets += [("btc_deposit", "bitcoin", "deposit", [], False), ("btc_hot", "bitcoin", "hot", [k.btc_hot], False),
                        ("btc_warm", "bitcoin", "warm", [k.btc_warm], False), ("btc_cold", "bitcoin", "cold", [k.cold["btc"]], False),
                        ("shield_btc", "bitcoin", "shield", [k.shield], True)]
        if "ethereum" in chains:
            wallets += [("eth_deposit", "ethereum", "deposit", [], False), ("eth_hot", "ethereum", "hot", [k.eth_hot], False),
                        ("eth_cold", "ethereum", "cold", [k.cold["eth"]], False),
                        ("shield_eth", "ethereum", "shield", [k.shield_eth], True)]
        if self.eth_hot_hsm is not None:
            self.eth_hot_hsm.node = node
            registered = node.read(lambda e: list(w.addresses) if (w := custody_state(e).wallets.get("eth_hot")) else None)
            for name, address in (("eth_hot", k.eth_hot), ("eth_cold", k.cold["eth"]), ("shield_eth", k.shield_eth),
                                  ("shield_btc", k.shield)):
                registered = node.read(lambda e, n=name: list(w.addresses) if (w := custody_state(e).wallets.get(n)) else None)
                if registered is not None and [a.lower() for a in registered] != [address.lower()]:
                    raise ConfigError(f"the journal's {name} wallet is {registered}, the HSM's key is {address}: this data "
                                      "directory was made before the key moved into the HSM; start from a fresh one",
                                      field=name)
        have = node.read(lambda e: set(custody_state(e).wallets))
        for name, chain, tier, addrs, public in wallets:
            if name not in have:
                ex(RegisterWallet(name, chain, tier, addrs, public))
        policy = self._ensure_policy(node)
        rules = node.read(lambda e: custody_state(e).rules)
        if rules is None or (rules.require_address_book, rules.address_cooling_s, rules.security_lock_s) != (
                True, self.address_cooling_s, self.security_lock_s):
            ex(SetWithdrawalRules(True, self.address_cooling_s, self.security_lock_s))
        out: dict[str, Any] = {"assets": sorted(self.terms), "policy": policy}
        if self.demo:
            out["treasury"] = self._fund_treasury(node)
            if self.cold_vault is not None:
                from .cold_refill import fund_demo_cold

                out["treasury"] += fund_demo_cold(self, node)
        return out

    def _ensure_policy(self, node: Any) -> str:
        """The withdrawal policy, decided by staff. With an active policy nothing is submitted.
        `--demo`: the demo's policy admins (pat proposes, pia and pol approve) sign `demo_policy`
        with their keys from DIR/demo-staff.json, then it is activated (the first policy has no
        delay). Otherwise no staff are invented: the answer says that no policy is active."""
        from .commands import ActivatePolicy, custody_state

        if node.read(lambda e: bool(custody_state(e).policy_text)):
            return "active"
        if not self.demo:
            log.warning("custody.no_policy", detail=NO_POLICY)
            return NO_POLICY
        from ..staff.decisions import POLICY_ADMIN
        from ..staff.demo import DEMO_POLICY_ADMINS, demo_staff_keys
        from ..staff.desk import StaffDesk
        from ..staff.state import staff_of

        def admins(engine: Any) -> set[str]:
            return {m.staff_id for m in staff_of(engine).active(POLICY_ADMIN)}

        keys = {s: k for s, k in demo_staff_keys(self.data_dir, DEMO_POLICY_ADMINS).items() if s in node.read(admins)}
        if len(keys) < len(DEMO_POLICY_ADMINS):
            msg = (f"{NO_POLICY} (the demo's policy admins {', '.join(DEMO_POLICY_ADMINS)} are not all in the staff register "
                   f"with their keys in {self.data_dir / 'demo-staff.json'}: a data directory from an older version)")
            log.warning("custody.no_policy", detail=msg)
            return msg
        desk = StaffDesk(keys, time.time_ns)
        pid = DEMO_POLICY_ID

        def proposal(engine: Any) -> tuple[str, str, list[str]] | None:
            p = custody_state(engine).proposals.get(pid)
            return None if p is None else (p.state, p.proposer, list(p.approvals))

        if node.read(proposal) is None:
            band = demo_hot_band(os.environ.get("RINGFENCE_DEMO_HOT_BAND", ""))
            node.execute(desk.propose_policy(pid, json.dumps(demo_policy(self.terms, band)), DEMO_POLICY_ADMINS[0]))
        for who in DEMO_POLICY_ADMINS:  # the other two approve (a restart after a crash resumes here)
            state, proposer, approvals = node.read(proposal)
            if state == "proposed" and who != proposer and who not in approvals:
                node.execute(node.read(lambda e, who=who: desk.approve_policy(e, pid, who)))
        node.execute(ActivatePolicy(pid))
        return "active"

    def _fund_treasury(self, node: Any) -> list[str]:
        """Demo only: the exchange's own coins arrive in the hot wallets (covering the demo's
        ledger-funded balances), recorded as `RecordTreasuryFunding`."""
        from .commands import RecordTreasuryFunding, custody_state

        done = node.read(lambda e: {k for k in custody_state(e).transfers if k.startswith("funding:")})
        funded = []
        for asset, amount in DEMO_TREASURY.items():
            if asset not in self.terms or f"funding:demo-hot-{asset}" in done:
                continue
            chain = self.terms[asset].chain
            hot = self.keys.btc_hot if chain == "bitcoin" else self.keys.eth_hot
            txid = self.chains.pay(asset, hot, amount)
            self.chains.mine()
            node.execute(RecordTreasuryFunding(f"demo-hot-{asset}", asset, "btc_hot" if chain == "bitcoin" else "eth_hot",
                                               amount, txid))
            funded.append(asset)
        for asset, amount in DEMO_SHIELD_FUND.items():
            if asset not in self.terms or self.terms[asset].chain != "bitcoin" or f"funding:demo-shield-{asset}" in done:
                continue
            txid = self.chains.pay(asset, self.keys.shield, amount)
            self.chains.mine()
            node.execute(RecordTreasuryFunding(f"demo-shield-{asset}", asset, "shield_btc", amount, txid))
            funded.append(f"{asset} shield")
        return funded

    def demo_withdraw_addresses(self, account_id: str) -> dict[str, str]:
        return {a: self.keys.outside_address(t.chain, account_id) for a, t in self.terms.items()}

    def add_demo_address_book(self, node: Any, account_id: str) -> dict[str, str]:
        """One pre-cooled address-book entry per asset for `account_id` (demo only)."""
        from .commands import AddWithdrawalAddress, custody_state

        addresses = self.demo_withdraw_addresses(account_id)
        listed = node.read(lambda e: set(custody_state(e).address_book))
        for asset, address in addresses.items():
            if f"{account_id}|{asset}|{address.lower() if self.terms[asset].chain == 'ethereum' else address}" not in listed:
                node.execute(AddWithdrawalAddress(account_id, asset, address, 0))
        return addresses

    # ---- proof of reserves and the shield fund ------------------------------------------------

    def assets_by_chain(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for a, t in self.terms.items():
            out[t.chain] = out.get(t.chain, ()) + (a,)
        return out

    def reserve_wallets(self, read: Callable[[Callable[[Any], Any]], Any]) -> list[Any]:
        """`WalletKeys` of every wallet: deposit addresses assigned so far (`read` = `Node.read`),
        hot, warm, cold and the shield vault, each with the signer that controls it."""
        from ..solvency.reserve_source import WalletKeys, seed_wallet_keys
        from .commands import custody_state

        k = self.keys
        deposits = read(lambda e: sorted((key.split(":", 1)[0], v[0], v[2]) for key, v in custody_state(e).deposit_addresses.items()))
        online = [(chain, address, k.deposit_signer(chain), k.deposit_key_id(chain, account)) for chain, account, address in deposits]
        online += [("bitcoin", k.btc_hot, self.btc_hot_signer, "btc-hot")]
        if not self.btc_vaults:  # the warm vault's holders sign PSBTs only (cold_refill.py)
            online += [("bitcoin", k.btc_warm, k.signer, "btc-warm")]
        if self.eth_hot_hsm is not None:  # every Ethereum wallet's key is in the HSM process
            online += [("ethereum", k.eth_hot, self.eth_hot_hsm, "eth-hot"), ("ethereum", k.shield_eth, self.eth_hot_hsm, "eth-shield"),
                       ("ethereum", k.cold["eth"], self.eth_hot_hsm, "eth-cold")]
        cold = {} if self.cold_vault is not None else {"bitcoin": k.cold["btc"]}
        assets = self.assets_by_chain()
        hsm = self.eth_hot_hsm
        wallets: list[Any] = seed_wallet_keys(k.seed, assets, online, cold,  # the BTC cold vault signs offline only
                                              None if hsm is not None else k.shield)
        if hsm is not None and "bitcoin" in assets:  # the shield vault: two of its three HSM tokens sign
            from .eth_hsm import BTC_SHIELD_KEY_IDS

            wallets.append(WalletKeys("bitcoin", assets["bitcoin"], hsm.shield_btc_address,
                                      tuple((hsm, key_id) for key_id in BTC_SHIELD_KEY_IDS),
                                      script_hex=hsm.shield_btc_script.hex(), threshold=2))
        return wallets

    def reserve_source(self, read: Callable[[Callable[[Any], Any]], Any]) -> "RuntimeReserveSource":
        """The `ReserveSource` `serve` gives its proof-of-solvency publisher."""
        return RuntimeReserveSource(self, read)

    def shield_routes(self) -> list[Any]:
        """One route per asset with a shield vault on its chain (BTC: hot -> the 2-of-3 vault; ETH and
        the ERC-20 USDT: the Ethereum hot wallet -> the Ethereum shield vault)."""
        from .shield import ShieldRoute

        routes = []
        if "BTC" in self.terms:
            routes.append(ShieldRoute("BTC", "btc_hot", self.keys.btc_hot, "btc-hot", self.btc_hot_signer, "shield_btc",
                                      self.keys.shield, SHIELD_MIN_SWEEP_MINOR["BTC"]))
        for asset in ("ETH", "USDT"):
            if asset in self.terms and "ETH" in self.terms:
                routes.append(ShieldRoute(asset, "eth_hot", self.keys.eth_hot, "eth-hot", self.eth_hot_hsm, "shield_eth",
                                          self.keys.shield_eth, SHIELD_MIN_SWEEP_MINOR[asset]))
        return routes

    def _shield_step(self) -> None:
        report = self.shield_sweeper.step()
        if report.sent or report.recorded or report.resent or report.errors:
            log.info("shield.step", sent=report.sent, recorded=report.recorded, resent=report.resent, errors=report.errors)

    # ---- workers ------------------------------------------------------------------------------

    def start(self, node: Any) -> None:
        from ..reconcile.reconciler import Reconciler, ReconcileSettings
        from . import workers as W
        from .kyt import BuiltinScorer, ChainFundingGraph
        from .withdrawals import identity_risk_facts

        self.node = node
        if self.eth_hot_hsm is not None:
            self.eth_hot_hsm.node = node  # the policy side decides from the journaled engine
        chains = {t.chain for t in self.terms.values()}
        adapters = {c: self.chains.adapter(c) for c in chains}
        scorer = BuiltinScorer(self.blacklist, ChainFundingGraph(adapters))
        lock = self.chains.lock
        every = self.poll_ms
        self.workers = [Supervised("miner", self.chains.mine, self.block_interval_ms, lock)]
        for chain, adapter in sorted(adapters.items()):
            watcher = W.DepositWatcher(_as(node, f"worker:deposits-{chain}"), adapter, scorer)
            self.workers.append(Supervised(f"deposits-{chain}", watcher.poll, every, lock))
        hot = {}
        if "bitcoin" in chains:
            hot["btc_hot"] = W.HotWallet("btc_hot", "bitcoin", self.keys.btc_hot, "btc-hot", self.btc_hot_signer)
        if "ethereum" in chains:
            hot["eth_hot"] = W.HotWallet("eth_hot", "ethereum", self.keys.eth_hot, "eth-hot", self.eth_hot_hsm)
        facts = identity_risk_facts(self.identity_ctx) if self.identity_ctx is not None else W.no_identity_facts
        self.withdrawal_worker = W.WithdrawalWorker(_as(node, "worker:withdrawals"), adapters, hot, identity_facts=facts,
                                                    destination_kyt=scorer.screen_destination)
        if self.crash_at:
            self._arm_crash()
        self.workers.append(Supervised("withdrawals", self.withdrawal_worker.step, every, lock))
        key_of_address: dict[str, str] = {}
        balancers = {c: W.Balancer(_as(node, "worker:balancer"), a, deposit_signer=self.keys.deposit_signer(c), key_of_address=key_of_address)
                     for c, a in adapters.items()}
        self.token_sweepers = self._token_sweepers(node, balancers, key_of_address)
        self.workers.append(Supervised("balancer", lambda: self._balance(balancers, key_of_address), every * 2, lock))
        self.rebalancer = self._rebalancer(node, balancers)
        if self.rebalancer is not None:
            self.workers.append(Supervised("rebalancer", self.rebalancer.step, every * 2, lock))
        tolerances = {"ETH": 10**16} if "ethereum" in chains else {}  # gas of token withdrawals in flight
        # paced between two balance reads until it finds a mismatch (then it keeps the lock until its halt is
        # submitted), the chain lock released while it pauses: a pass over the demo's
        # in-process chains was 30-40 ms of CPU in one burst on the engine process's GIL (docs/latency.md, session 20)
        from ..pacing import CHAIN_PASS_SHARE_PERMILLE, CpuPacer, unlocked_sleep

        self.reconciler = Reconciler(_as(node, "worker:reconciler"), wallets=self._wallet_specs(adapters), custody=_InFlightView(node),
                                     settings=ReconcileSettings(tolerances_minor=tolerances),
                                     pacer=CpuPacer(share_permille=CHAIN_PASS_SHARE_PERMILLE, sleep=unlocked_sleep(lock)))
        self.workers.append(Supervised("reconcile-chain", self._reconcile, every, lock))
        if hasattr(self.blacklist, "refresh"):  # RINGFENCE_KYT_BLACKLIST: re-read when the file changes
            self.workers.append(Supervised("kyt-blacklist", self.blacklist.refresh, 1000, threading.RLock()))
        if self.identity_ctx is not None:
            self.workers.append(Supervised("security-relay", self._relay_security_changes, every, threading.RLock()))
        if self.btc_hot_signer is not None:  # proactive share refresh of the FROST hot wallet (btc_signing.py)
            from .btc_signing import refresh_worker

            self.workers.append(refresh_worker(self, Supervised, lock))
        from .shield import ShieldSweeper

        self.shield_sweeper = ShieldSweeper(_as(node, "worker:shield-sweeper"), adapters, self.shield_routes(), value_asset=self.shield_value_asset)
        self.workers.append(Supervised("shield-sweeper", self._shield_step, self.shield_sweep_every_s * 1000, lock))
        for w in self.workers:
            w.halted = partial(node.stopped_reason, detailed=True)
            w.start(self._stop)

    def _arm_crash(self) -> None:
        from . import workers as W

        point = self.crash_at
        real = W._crash

        def crash(worker: Any, p: str) -> None:
            if p == point and worker is self.withdrawal_worker:
                import signal

                log.warning("custody.crash_injected", point=p)
                os.kill(os.getpid(), signal.SIGKILL)
            real(worker, p)

        W._crash = crash  # type: ignore[assignment]

    def _wallet_specs(self, adapters: dict[str, Any]) -> list[Any]:
        from ..reconcile.reconciler import custody_wallet_specs
        from .commands import custody_state

        by_chain: dict[str, list[str]] = {}
        for a, t in self.terms.items():
            by_chain.setdefault(t.chain, []).append(a)
        return self.node.read(lambda e: custody_wallet_specs(_Copy(custody_state(e)), adapters, by_chain))  # type: ignore[no-any-return]

    def _balance(self, balancers: dict[str, Any], key_of_address: dict[str, str]) -> None:
        from .commands import custody_state

        for key, (account, _wallet, address) in self.node.read(lambda e: [(k, tuple(v)) for k, v in custody_state(e).deposit_addresses.items()]):
            key_of_address[address] = self.keys.deposit_key_id(key.split(":", 1)[0], account)
        for chain, b in balancers.items():
            b.resend_pending()
            native = "BTC" if chain == "bitcoin" else "ETH"
            tokens = [ts for ts in self.token_sweepers if ts.adapter.chain == chain]
            if native in self.terms:
                t = self.terms[native]
                hot = self.keys.btc_hot if chain == "bitcoin" else self.keys.eth_hot
                if not any(ts.busy() for ts in tokens):  # one transfer at a time out of a deposit address's ETH
                    b.sweep(native, f"{chain[:3]}_deposit", f"{chain[:3]}_hot", hot, t.sweep_min_minor)
                b.record_confirmed(native, t.credit_confirmations)
            for ts in tokens:
                ts.step(self.terms[ts.token].credit_confirmations)

    def _rebalancer(self, node: Any, balancers: dict[str, Any]) -> Any:
        """Hot <-> cold moves of the Ethereum assets by the policy's bands (custody.rebalance)."""
        from .rebalance import Rebalancer, WalletKey

        assets = [a for a, t in sorted(self.terms.items()) if t.chain == "ethereum"]
        if "ethereum" not in balancers or not assets:
            return None
        k = self.keys
        return Rebalancer(_as(node, "worker:rebalancer"), self.chains.adapter("ethereum"), balancers["ethereum"], assets=assets,
                          hot=WalletKey("eth_hot", k.eth_hot, "eth-hot", self.eth_hot_hsm),
                          cold=WalletKey("eth_cold", k.cold["eth"], "eth-cold", self.eth_hot_hsm))

    def _token_sweepers(self, node: Any, balancers: dict[str, Any], key_of_address: dict[str, str]) -> list[Any]:
        """ERC-20 sweeps (custody.token_sweeps): gas top-up from hot, then the tokens into hot."""
        from .token_sweeps import TokenSweeper

        if "ethereum" not in balancers or "ETH" not in self.terms:
            return []
        return [TokenSweeper(_as(node, "worker:balancer"), self.chains.adapter("ethereum"), balancers["ethereum"], token=a,
                             deposit_wallet="eth_deposit", hot_wallet="eth_hot", hot_address=self.keys.eth_hot,
                             hot_key_id="eth-hot", hot_signer=self.eth_hot_hsm, deposit_signer=self.keys.deposit_signer("ethereum"),
                             key_of_address=key_of_address, min_minor=t.sweep_min_minor)
                for a, t in sorted(self.terms.items()) if t.chain == "ethereum" and a != "ETH"]

    def _reconcile(self) -> None:
        # the wallets' addresses grow as deposit addresses are assigned: re-read them every pass
        adapters = {c: self.chains.adapter(c) for c in {t.chain for t in self.terms.values()}}
        self.reconciler.wallets = self._wallet_specs(adapters)
        if self.reconciler.new_blocks():
            self.last_chain_report = self.reconciler.run_once(chain=True, internal=False)

    def _relay_security_changes(self) -> None:
        relay_security_changes(self.node, self.identity_ctx)

    def stop(self) -> None:
        self._stop.set()
        for w in self.workers:
            w.join(10)
        if self.btc_hot_signer is not None:
            self.btc_hot_signer.close()
        if self.eth_hot_hsm is not None:
            self.eth_hot_hsm.close()
        if self.btc_signers is not None:
            self.btc_signers.stop()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chains": self.chains.heights(), "workers": {w.name: w.status() for w in self.workers}}
        if self.btc_hot_signer is not None or self.eth_hot_hsm is not None:
            from .btc_signing import wallet_signers

            out["wallet_signers"] = wallet_signers(self)
        report = self.last_chain_report
        if report is not None:
            out["chain_reconciliation"] = {"seq": report.seq, "wallets": len(report.chain_rows),
                                           "mismatches": [m.evidence() for m in report.mismatches[:10]],
                                           "halts_submitted": list(report.halts_submitted)}
        bl = self.blacklist
        out["kyt"] = {"blacklist_entries": len(bl), "file": str(getattr(bl, "path", "")), "loads": getattr(bl, "loads", 0),
                      "error": getattr(bl, "error", "")}
        rb = self.rebalancer
        if rb is not None:
            out["rebalancer"] = {"proposed": rb.proposed, "executed": rb.executed, "last_refusal": rb.last_refusal}
        if self.token_sweepers:
            out["token_sweeps"] = {ts.token: {"gas_top_ups": ts.topped_up, "sweeps": ts.swept, "min_minor": str(ts.min_minor)}
                                   for ts in self.token_sweepers}
        sweeper = self.shield_sweeper
        if sweeper is not None:
            last = sweeper.last
            out["shield"] = {
                "every_s": self.shield_sweep_every_s,
                "routes": [{"asset": r.asset, "from_wallet": r.hot_wallet, "to_wallet": r.shield_wallet,
                            "vault_address": r.shield_address, "min_sweep_minor": str(r.min_sweep_minor)} for r in sweeper.routes],
                "last_step": None if last is None else {"sent": list(last.sent), "recorded": list(last.recorded),
                                                        "resent": last.resent, "errors": dict(last.errors)},
            }
        return out


def relay_security_changes(node: Any, identity_ctx: Any, *, limit: int = 100) -> int:
    """Identity's credential changes after the engine's relay position become `RecordSecurityChange`
    commands (in event order; a retry of a relayed id is answered `unchanged`). Returns how many."""
    from ..identity.events import security_changes_since
    from .commands import RecordSecurityChange, custody_state

    pos = node.read(lambda e: custody_state(e).security_relay_pos)
    sent = 0
    for event_id, account_id, kind in security_changes_since(identity_ctx, pos, limit=limit):
        try:
            node.execute(RecordSecurityChange(event_id, account_id, kind))
            sent += 1
        except RingfenceError as err:  # e.g. an account id the ledger refuses: skip it, keep relaying
            log.warning("custody.security_relay_refused", event_id=event_id, error=str(err))
    return sent


class RuntimeReserveSource:
    """Proof-of-reserves evidence from the custody runtime's own wallets (a `ReserveSource`).

    For each snapshot: the wallet list is re-read (deposit addresses grow), then, holding the chain
    lock, each chain's height is pinned and every claim signed; the balance readers it returns take
    the same lock for every read, so the publisher reads the in-process chains safely while the
    workers run."""

    name = "custody runtime (serve)"

    def __init__(self, runtime: CustodyRuntime, read: Callable[[Callable[[Any], Any]], Any]) -> None:
        self.runtime = runtime
        self.read = read

    def evidence(self, snapshot_id_hex: str) -> Any:
        from ..solvency.reserve_source import SignerReserveSource

        rt = self.runtime
        wallets = rt.reserve_wallets(self.read)
        adapters = {c: rt.chains.adapter(c) for c in sorted(rt.chains.chains)}
        with rt.chains.lock:
            return SignerReserveSource(self.name, wallets, adapters, lock=rt.chains.lock).evidence(snapshot_id_hex)


class _Copy:
    """A plain copy of what `custody_wallet_specs` reads, taken inside `node.read`."""

    def __init__(self, state: Any) -> None:
        import copy

        self.wallets = {k: copy.copy(v) for k, v in state.wallets.items()}
        self.deposit_addresses = {k: list(v) for k, v in state.deposit_addresses.items()}


class _InFlightView:
    """The custody flows' figures for reconciliation, read inside the reconciler's `node.read`:
    withdrawals and sweeps that may have left a wallet on chain but are not yet in the ledger
    count as in flight; sweeps on their way to a wallet count as pending."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def _state(self) -> Any:
        from .commands import custody_state

        engine = self.node.engine
        return custody_state(engine)

    def in_flight_withdrawals(self, asset: str, wallet: str) -> int:
        s = self._state()
        return s.in_flight_withdrawals(asset, wallet) + s.in_flight_transfers(asset, wallet)

    def pending_deposits(self, asset: str, wallet: str) -> int:
        s = self._state()
        incoming = sum(t.amount_minor for t in s.transfers.values()
                       if t.state == "signed" and t.asset == asset and t.to_wallet == wallet)
        return s.pending_deposits(asset, wallet) + incoming
