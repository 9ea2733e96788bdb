"""The BTC cold wallet of `serve` as a P2WSH 2-of-3 multisig, and cold -> hot refills through
offline PSBT signing with a quorum nominated per transaction.

* **Holders.** On first start three BIP-32 roots are generated and written, one file each, to
  `DIR/cold-holders/holder-N.tprv` (mode 0600): the demo's stand-in for three offline machines.
  `serve` keeps only the descriptor (`wsh(sortedmulti(2, xpub1, xpub2, xpub3))`, in
  `DIR/custody/btc-cold.json`), never a private key of the vault.
* **Refill** (`ringfence cold refill`, `POST /v1/demo/cold/refill`): a PSBT spending vault coins
  to the hot wallet (change back to the vault); the quorum is `nominate_for_transaction(holders,
  2, unsigned txid, journal position)`; both are in the refill's transfer id once journaled, so an
  auditor recomputes the nomination offline.
* **Signing** happens offline: `ringfence keys sign-psbt --key holder-N.tprv` by each nominated
  holder. **Submit** (`ringfence cold submit`): the signatures are merged into the PSBT, the wallet
  finalises it only if every input is signed by exactly the nominated holders (checked by the script
  interpreter), and the transfer is journaled (`RecordTransferSigned`) before it is broadcast; the
  balancer records it once confirmed (`RecordInternalTransfer`).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InsufficientFunds, ValidationError

__all__ = ["ColdVault", "open_cold_vault", "open_vaults", "start_vault_ceremony", "COLD_M", "COLD_N"]

COLD_M, COLD_N = 2, 3
P2WSH_2OF3_INPUT_VB = 105
TX_OVERHEAD_VB = 11
DUST_SAT = 546


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


def _record(data_dir: Path, tier: str) -> Path:
    if tier not in ("cold", "warm"):
        raise ValidationError("must be cold or warm", field="from")
    return Path(data_dir) / "custody" / f"btc-{tier}.json"


def start_vault_ceremony(data_dir: Path, tiers: tuple[str, ...] = ("warm", "cold")) -> Any:
    """Vaults without a record get their three holders' keys made in a child process (a stand-in
    for the key ceremony on the holders' machines), so not even the first run of `serve` has them in
    its memory. Returns the running child (or None); `open_vaults` waits for it."""
    import subprocess
    import sys

    missing = [t for t in tiers if not _record(data_dir, t).exists()]
    if not missing:
        return None
    return subprocess.Popen([sys.executable, "-m", "ringfence.custody.cold_refill", str(data_dir), *missing],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def open_vaults(data_dir: Path, tiers: tuple[str, ...] = ("warm", "cold"), ceremony: Any = None) -> dict[str, "ColdVault"]:
    """The vaults' descriptors (`DIR/custody/btc-TIER.json`), recording the ceremony's output first."""
    if ceremony is None:
        ceremony = start_vault_ceremony(data_dir, tiers)
    if ceremony is not None:
        out, err = ceremony.communicate(timeout=180)
        if ceremony.returncode != 0:
            raise ConfigError(f"making the vaults' holder keys failed: {err[-300:]}", field="vault")
        for tier, entries in json.loads(out).items():
            record = _record(data_dir, tier)
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"descriptor": f"wsh(sortedmulti({COLD_M},{','.join(entries)}))", "m": COLD_M},
                                         indent=1))
    return {t: ColdVault(Path(data_dir), json.loads(_record(data_dir, t).read_text())["descriptor"], t) for t in tiers}


def open_cold_vault(data_dir: Path, tier: str = "cold") -> "ColdVault":
    """One vault (`tier` cold or warm), made on first use."""
    return open_vaults(data_dir, (tier,))[tier]


class ColdVault:
    def __init__(self, data_dir: Path, descriptor: str, tier: str = "cold") -> None:
        from ..keys.multisig import ColdWallet

        self.tier = tier
        self.wallet_name = f"btc_{tier}"
        self.dir = Path(data_dir) / "custody" / "refills"
        self.wallet = ColdWallet(descriptor)
        self.address = self.wallet.address(0)
        self._lock = threading.Lock()

    signer_type = f"p2wsh {COLD_M}-of-{COLD_N} multisig, separate holders, quorum nominated per transaction"

    def holder_files(self, data_dir: Path) -> dict[str, str]:
        """fingerprint -> the holder's file (demo: where each 'offline machine' keeps its key)."""
        from embit import bip32

        out = {}
        for i in range(1, COLD_N + 1):
            path = Path(data_dir) / f"{self.tier}-holders" / f"holder-{i}.tprv"
            if path.exists():
                out[bip32.HDKey.from_string(path.read_text().strip()).my_fingerprint.hex()] = str(path)
        return out

    # ---- refill: build, nominate --------------------------------------------------------------

    def create_refill(self, runtime: Any, amount_minor: int) -> dict[str, Any]:
        from embit.psbt import PSBT

        from ..keys.multisig import nominate_for_transaction

        if not isinstance(amount_minor, int) or amount_minor < 10_000:
            raise ValidationError("must be at least 0.0001 BTC", field="amount")
        adapter = runtime.chains.adapter("bitcoin")
        hot = runtime.keys.btc_hot
        with runtime.chains.lock:
            tip = adapter.current_height()
            spent = set(getattr(adapter.node, "_mempool_spends", {}))
            coins = sorted((u for u in adapter.unspent(self.address) if (u.txid, u.vout) not in spent
                            and (not u.coinbase or tip - u.height + 1 >= 100)), key=lambda u: -u.value_sat)
            rate = adapter.estimate_fee().fee_rate_minor
            out_vb = 9 + len(adapter.script_of_address(hot)) + 9 + 34
            picked, total, fee = [], 0, 0
            for u in coins[:50]:
                picked.append(u)
                total += u.value_sat
                fee = (TX_OVERHEAD_VB + P2WSH_2OF3_INPUT_VB * len(picked) + out_vb) * rate
                if total >= amount_minor + fee:
                    break
            if total < amount_minor + fee:
                raise InsufficientFunds(f"the {self.tier} vault holds {total} spendable sat, needs {amount_minor + fee}",
                                        field="amount")
            outputs = [(bytes(adapter.script_of_address(hot)), amount_minor)]
            change = total - amount_minor - fee
            if change >= DUST_SAT:
                outputs.append((bytes(self.wallet.script_pubkey(0)), change))
            else:
                fee += change
        psbt = self.wallet.create_psbt([{"txid": u.txid, "vout": u.vout, "amount_sat": u.value_sat, "index": 0}
                                        for u in picked], outputs, fee)
        txid = PSBT.from_string(psbt).tx.txid().hex()
        position = int(runtime.node.read(lambda e: e.last_seq))
        nom = nominate_for_transaction(self.wallet.holders, COLD_M, txid, position)
        refill_id = f"{self.tier}{position}-{txid[:12]}"
        doc = {"id": refill_id, "from_wallet": self.wallet_name, "psbt": psbt, "txid": txid, "journal_position": position, "amount_minor": amount_minor,
               "fee_minor": fee, "nomination": nom.to_dict(), "state": "awaiting_signatures"}
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{refill_id}.json").write_text(json.dumps(doc, indent=1))
        return doc

    def refill(self, refill_id: str) -> dict[str, Any]:
        if not refill_id.replace("-", "").isalnum() or len(refill_id) > 40:
            raise ValidationError("unknown refill id", field="id")
        path = self.dir / f"{refill_id}.json"
        if not path.exists():
            raise ValidationError("unknown refill id", field="id")
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    # ---- refill: merge signatures, finalise, journal, broadcast ---------------------------------

    def submit(self, runtime: Any, refill_id: str, signed_psbts: list[str]) -> dict[str, Any]:
        from embit.psbt import PSBT

        from ..keys.multisig import Nomination, transaction_seed
        from .commands import custody_state
        from .workers import Balancer

        doc = self.refill(refill_id)
        if doc["state"] != "awaiting_signatures":
            return doc
        if not 1 <= len(signed_psbts) <= COLD_N:
            raise ValidationError(f"give 1..{COLD_N} signed PSBTs", field="psbts")
        base = PSBT.from_string(doc["psbt"])
        for text in signed_psbts:
            try:
                other = PSBT.from_string(text.strip())
            except Exception:
                raise ValidationError("a signed PSBT does not parse", field="psbts") from None
            if other.tx.txid() != base.tx.txid():
                raise ValidationError("a signed PSBT is for another transaction", field="psbts")
            for mine, theirs in zip(base.inputs, other.inputs):
                mine.partial_sigs.update(theirs.partial_sigs)
        nom = Nomination(**{**doc["nomination"], "holders": tuple(doc["nomination"]["holders"]),
                            "selected": tuple(doc["nomination"]["selected"])})
        raw = self.wallet.finalize(base.to_string(), nom, transaction_seed(doc["txid"], doc["journal_position"]).hex())
        node = runtime.node
        if not node.read(lambda e: self.wallet_name in custody_state(e).wallets):
            raise ConfigError(f"no {self.wallet_name} wallet registered", field="wallet")
        tid = f"refill-{doc['journal_position']}-{doc['txid'][:40]}"
        with runtime.chains.lock:
            balancer = Balancer(node, runtime.chains.adapter("bitcoin"), deposit_signer=None, key_of_address={})
            balancer._journal_and_send(tid, "BTC", self.wallet_name, "btc_hot", int(doc["amount_minor"]), int(doc["fee_minor"]),
                                       doc["txid"], raw)
        doc.update(state="broadcast", transfer_id=tid)
        (self.dir / f"{refill_id}.json").write_text(json.dumps(doc, indent=1))
        return doc


DEMO_VAULT_FUND_MINOR = {"cold": 20 * 10**8, "warm": 5 * 10**8}


def fund_demo_cold(runtime: Any, node: Any) -> list[str]:
    """Demo only: 20 BTC of the exchange's own arrive in the cold vault and 5 in the warm one
    (`RecordTreasuryFunding`)."""
    from .commands import RecordTreasuryFunding, custody_state

    funded = []
    for vault in runtime.btc_vaults.values():
        if f"funding:demo-{vault.tier}-BTC" in node.read(lambda e: set(custody_state(e).transfers)):
            continue
        amount = DEMO_VAULT_FUND_MINOR[vault.tier]
        txid = runtime.chains.pay("BTC", vault.address, amount)
        runtime.chains.mine()
        node.execute(RecordTreasuryFunding(f"demo-{vault.tier}-BTC", "BTC", vault.wallet_name, amount, txid))
        funded.append(f"BTC {vault.tier}")
    return funded


def _make_holders(data_dir: Path, tier: str) -> list[str]:
    """Run as `python -m ringfence.custody.cold_refill DIR TIER`: make the vault's three holder roots,
    write each to DIR/TIER-holders/holder-N.tprv (0600), print their descriptor entries (xpubs)."""
    from embit import bip32
    from embit.networks import NETWORKS

    from ..keys.multisig import holder_xpub_entry

    entries = []
    for i in range(1, COLD_N + 1):
        root = bip32.HDKey.from_seed(secrets.token_bytes(32), version=NETWORKS["regtest"]["xprv"])
        _write_private(Path(data_dir) / f"{tier}-holders" / f"holder-{i}.tprv", root.to_string())
        entries.append(holder_xpub_entry(root))
    return entries


if __name__ == "__main__":
    import sys

    print(json.dumps({tier: _make_holders(Path(sys.argv[1]), tier) for tier in sys.argv[2:]}))
