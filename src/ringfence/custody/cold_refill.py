"""The BTC cold wallet of `serve` as a P2WSH 2-of-3 multisig, and cold -> hot refills through
offline PSBT signing with a quorum nominated per transaction.

* **Holders.** On first start three BIP-32 roots are generated and written, one file each, to
  `DIR/cold-holders/holder-N.tprv` (mode 0600): the demo's stand-in for three offline machines.
  `serve` keeps only the descriptor (`wsh(sortedmulti(2, xpub1, xpub2, xpub3))`, in
  `DIR/custody/btc-cold.json`), never a private key of the vault.
* **Refill** (`ringfence cold refill`, `POST /admin/v1/vault-refills`, a staff-signed request): the
  node builds a PSBT spending vault coins to the hot wallet (change back to the vault) and submits
  the operator quorum's signed decision with its txid (`AuthorizeVaultRefillSigned`, verified in the
  engine); the holders' quorum is `nominate_for_transaction(holders, 2, txid, the decision's journal
  sequence)`, both journaled, so an auditor recomputes the nomination offline.
* **Signing** happens offline: `ringfence keys sign-psbt --key holder-N.tprv` by each nominated
  holder. **Submit** (`ringfence cold submit`, `POST /admin/v1/vault-refills/ID/submit`): the
  signatures are merged into the PSBT, the wallet finalises it only if every input is signed by
  exactly the nominated holders (checked by the script interpreter), and the transfer is journaled
  (`RecordTransferSigned`, which must match the authorized refill) before it is broadcast; the
  balancer records it once confirmed (`RecordInternalTransfer`).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ValidationError

__all__ = ["ColdVault", "open_cold_vault", "open_vaults", "start_vault_ceremony", "COLD_M", "COLD_N"]

COLD_M, COLD_N = 2, 3
P2WSH_2OF3_INPUT_VB = 105


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


def _plain_id(text: str) -> bool:
    """ASCII letters, digits and '-' only, at most 40 characters (a refill id is also a file name)."""
    bare = text.replace("-", "")
    return 0 < len(text) <= 40 and bare.isascii() and bare.isalnum()


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

    def _reserved_coins(self) -> set[tuple[str, int]]:
        """Coins of refills still waiting for their holders' signatures (not offered twice)."""
        out: set[tuple[str, int]] = set()
        for path in sorted(self.dir.glob(f"{self.tier}*.json")) if self.dir.exists() else []:
            doc = json.loads(path.read_text())
            if doc.get("state") == "awaiting_signatures":
                out.update((str(t), int(v)) for t, v in doc.get("coins", []))
        return out

    def build_refill(self, runtime: Any, refill_id: str, amount_minor: int) -> dict[str, Any]:
        """The unsigned refill transaction (PSBT) paying `amount_minor` to the hot wallet, change back
        to the vault; coins chosen by `wallets.plan_btc_spend` like every Bitcoin wallet's. Nothing is
        journaled or stored here: the operators' decision (`AuthorizeVaultRefillSigned`) comes next."""
        from embit.psbt import PSBT

        from .wallets import plan_btc_spend

        if not isinstance(amount_minor, int) or amount_minor < 10_000:
            raise ValidationError("must be at least 0.0001 BTC", field="amount")
        if not _plain_id(refill_id) or not refill_id.startswith(self.tier) or len(refill_id) > 40:
            raise ValidationError(f"a refill id is {self.tier}-<letters and digits>, at most 40 characters", field="refill_id")
        if (self.dir / f"{refill_id}.json").exists():
            raise ValidationError("this refill id is taken", field="refill_id")
        adapter = runtime.chains.adapter("bitcoin")
        hot = runtime.keys.btc_hot
        with runtime.chains.lock:
            spend = plan_btc_spend(adapter, from_address=self.address, outputs=[(hot, amount_minor)],
                                   fee_rate_sat_per_vb=adapter.estimate_fee().fee_rate_minor,
                                   input_vb=P2WSH_2OF3_INPUT_VB, exclude=self._reserved_coins())
            outputs = [(bytes(adapter.script_of_address(hot)), amount_minor)]
        if spend.change_sat:
            outputs.append((bytes(self.wallet.script_pubkey(0)), spend.change_sat))
        psbt = self.wallet.create_psbt([{"txid": u.txid, "vout": u.vout, "amount_sat": u.value_sat, "index": 0}
                                        for u in spend.coins], outputs, spend.fee_sat)
        return {"id": refill_id, "from_wallet": self.wallet_name, "to_wallet": "btc_hot", "psbt": psbt,
                "txid": PSBT.from_string(psbt).tx.txid().hex(), "amount_minor": amount_minor, "fee_minor": spend.fee_sat,
                "coins": [[u.txid, u.vout] for u in spend.coins]}

    def record_authorized(self, doc: dict[str, Any], position: int, approvers: list[str]) -> dict[str, Any]:
        """After the engine accepted the decision at journal sequence `position`: nominate the holders'
        quorum from (txid, position), both journaled, and keep the refill for `submit`."""
        from ..keys.multisig import nominate_for_transaction

        nom = nominate_for_transaction(self.wallet.holders, COLD_M, doc["txid"], position)
        doc = {**doc, "journal_position": position, "nomination": nom.to_dict(), "approved_by": approvers,
               "state": "awaiting_signatures"}
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{doc['id']}.json").write_text(json.dumps(doc, indent=1))
        return doc

    def refill(self, refill_id: str) -> dict[str, Any]:
        if not _plain_id(refill_id):
            raise ValidationError("unknown refill id", field="id")
        path = self.dir / f"{refill_id}.json"
        if not path.exists():
            raise ValidationError("unknown refill id", field="id")
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def refills(self, limit: int = 100) -> list[dict[str, Any]]:
        """This vault's refills, newest first (at most `limit`): what the staff console lists."""
        paths = sorted(self.dir.glob(f"{self.tier}*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True) if self.dir.exists() else []
        return [json.loads(p.read_text()) for p in paths[:limit]]

    # ---- refill: merge signatures, finalise, journal, broadcast ---------------------------------

    def finalize(self, refill_id: str, signed_psbts: list[str]) -> tuple[dict[str, Any], bytes]:
        """Merge the holders' signatures; the wallet finalises only if every input is signed by exactly
        the nominated holders. Returns the refill and the final transaction."""
        from embit.psbt import PSBT

        from ..keys.multisig import Nomination, transaction_seed

        doc = self.refill(refill_id)
        if doc["state"] != "awaiting_signatures":
            raise ValidationError(f"refill {refill_id} is {doc['state']}", field="id")
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
        return doc, raw

    def cancelled(self, refill_id: str) -> dict[str, Any]:
        """After the engine accepted `CancelVaultRefillSigned`: its coins may be offered again."""
        doc = {**self.refill(refill_id), "state": "cancelled"}
        (self.dir / f"{refill_id}.json").write_text(json.dumps(doc, indent=1))
        return doc

    def broadcast(self, runtime: Any, doc: dict[str, Any], raw: bytes) -> dict[str, Any]:
        """After `RecordTransferSigned` was journaled: send it (the balancer records it once confirmed)."""
        with runtime.chains.lock:
            runtime.chains.adapter("bitcoin").broadcast(raw)
        doc = {**doc, "state": "broadcast", "transfer_id": doc["id"]}
        (self.dir / f"{doc['id']}.json").write_text(json.dumps(doc, indent=1))
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
