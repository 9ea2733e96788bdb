"""The BTC hot wallet of a live `ringfence serve --demo` is a FROST 2-of-3 Taproot key (issue 16,
item 3): its three signer processes are started by `serve`, each with its own encrypted share
store; a withdrawal through the Binance API is paid on the local chain with a key-path spend whose
BIP-340 signature came from a quorum of two of them; and no process of the exchange holds the
whole key (a scan of the server's memory for it, with a positive control in a signer's memory).
"""

from __future__ import annotations

import json
import struct
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from .conftest import Server, cli
from ringfence.keys import frost

from .frost_shares import combined_secrets, share
from .test_capital import ENV, signed, wait_for, withdraw_key


@pytest.fixture(scope="module")
def frost_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("frosthot") / "data", env={**ENV, "RINGFENCE_BTC_REFRESH_EVERY_S": "3"})
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def _patterns(secret: int) -> dict[str, bytes]:
    """How a 256-bit secret can sit in a process's memory: raw bytes either way round, hex text, or
    a CPython int (30-bit digits in 32-bit words)."""
    raw = secret.to_bytes(32, "big")
    digits = []
    x = secret
    while x:
        digits.append(x & (2**30 - 1))
        x >>= 30
    return {"big-endian": raw, "little-endian": raw[::-1], "hex": raw.hex().encode(),
            "cpython-int": struct.pack(f"<{len(digits)}I", *digits)}


def _scan(pid: int, needles: dict[str, bytes]) -> set[str]:
    found: set[str] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r") or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]", "[vdso]")):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(lo)
                chunk = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            for name, needle in needles.items():
                if needle in chunk:
                    found.add(name)
    return found


def _record(data: Path) -> dict:
    return json.loads((data / "custody" / "btc-hot.json").read_text())


def test_wallet_signer_types_and_hot_address(frost_server: Server) -> None:
    status = httpx.get(frost_server.base + "/readyz").json()["custody"]
    signers = status["wallet_signers"]
    assert signers["btc_hot"].startswith("frost-taproot 2-of-3"), signers
    assert set(signers) >= {"btc_deposit", "btc_hot", "btc_warm", "btc_cold", "shield_btc", "eth_hot"}
    rec = _record(frost_server.data)
    assert rec["address"].startswith("bcrt1p") and rec["threshold"] == 2 and rec["signers"] == [1, 2, 3]
    # the engine's hot wallet is that Taproot address
    from ringfence.chains.bitcoin.address import address_to_script

    assert address_to_script(rec["address"], "regtest") == b"\x51\x20" + bytes.fromhex(rec["output_key"])
    # each signer has its own encrypted store holding only its own share of that key
    shares = [share(frost_server.data, i) for i in (1, 2, 3)]
    assert [s.identifier for s in shares] == [1, 2, 3]
    assert len({s.secret_share for s in shares}) == 3
    for i in (1, 2, 3):
        raw = (frost_server.data / "signers" / f"signer-{i}" / "shares" / "btc-hot.bin").read_bytes()
        assert shares[i - 1].secret_share.to_bytes(32, "big") not in raw, "a share file is not encrypted"


def test_shares_are_refreshed_on_schedule_and_the_key_stays(frost_server: Server) -> None:
    files = {i: frost_server.data / "signers" / f"signer-{i}" / "shares" / "btc-hot.bin" for i in (1, 2, 3)}
    rec0 = _record(frost_server.data)
    before = {i: f.read_bytes() for i, f in files.items()}
    plain0 = combined_secrets(frost_server.data)
    wait_for("a share refresh", lambda: _record(frost_server.data).get("refreshes", 0) > rec0.get("refreshes", 0), 60)
    rec = _record(frost_server.data)
    assert (rec["address"], rec["output_key"], rec["group_public_key"]) == (rec0["address"], rec0["output_key"],
                                                                            rec0["group_public_key"])
    assert all(files[i].read_bytes() != before[i] for i in (1, 2, 3)), "every share was replaced"
    assert combined_secrets(frost_server.data) == plain0, "the shares still combine to the same key"
    workers = httpx.get(frost_server.base + "/readyz").json()["custody"]["workers"]
    assert workers["btc-key-refresh"]["state"] == "running" and workers["btc-key-refresh"]["restarts"] == 0


def test_btc_withdrawal_is_a_frost_taproot_keypath_spend_on_chain(frost_server: Server) -> None:
    from bitcointx.core import CTxOut
    from bitcointx.core.script import CScript

    from ringfence.chains.bitcoin.simulator import BitcoinSimulator
    from ringfence.keys.taproot import verify_keypath_spend

    key = withdraw_key(frost_server.data)
    dest = key["withdraw_addresses"]["BTC"]
    res = signed(frost_server, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "BTC", "address": dest, "amount": "0.02"})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def completed():
        rows = signed(frost_server, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "BTC"}).json()
        row = next((r for r in rows if r["id"] == wid), None)
        return row if row and row["status"] == 6 and row.get("txId") else None

    row = wait_for("the BTC withdrawal to complete", completed, 90)
    sim = BitcoinSimulator.load(frost_server.data / "chains" / "bitcoin.json")
    tx = sim.get_tx(row["txId"])
    assert tx is not None and row["txId"] in sim.tx_height, "the withdrawal is mined on the local chain"
    rec = _record(frost_server.data)
    hot_spk = b"\x51\x20" + bytes.fromhex(rec["output_key"])
    spent = []
    for txin in tx.vin:
        prev = sim.get_tx(txin.prevout.hash[::-1].hex())
        out = prev.vout[txin.prevout.n]
        assert bytes(out.scriptPubKey) == hot_spk, "every input is a coin of the FROST hot wallet"
        spent.append(CTxOut(out.nValue, CScript(bytes(out.scriptPubKey))))
    for i in range(len(tx.vin)):
        assert len(tx.wit.vtxinwit[i].scriptWitness.stack) == 1 and len(tx.wit.vtxinwit[i].scriptWitness.stack[0]) == 64
        assert verify_keypath_spend(tx, i, spent), f"input {i}: the BIP-340 key-path signature does not verify"
    # exactly a quorum of two signer processes produced a share for each input, and said so in their logs
    signed_by = []
    for i in (1, 2, 3):
        log = (frost_server.data / "signers" / f"signer-{i}" / "keyops.jsonl").read_text().splitlines()
        if any(json.loads(line).get("reason") == f"request wd-{wid}:0" for line in log):
            signed_by.append(i)
    assert len(signed_by) == 2, signed_by


def test_no_process_of_the_exchange_holds_the_hot_key(frost_server: Server) -> None:
    """Scan the server process (every worker thread's memory, their config included) for the whole
    hot key, plain and Taproot-tweaked, and for every share, in every encoding a secret could take.
    Positive control: the same scan finds signer 1's share-store key in signer 1's memory."""
    plain, tweaked = combined_secrets(frost_server.data)
    needles = {f"group:{k}": v for k, v in _patterns(plain).items()}
    needles.update({f"output:{k}": v for k, v in _patterns(tweaked).items()})
    for i in (1, 2, 3):
        needles.update({f"share{i}:{k}": v for k, v in _patterns(share(frost_server.data, i).secret_share).items()})
    assert _scan(frost_server.proc.pid, needles) == set(), "the serve process holds hot-wallet key material"

    pids = _signer_pids(frost_server)
    assert len(pids) == 3
    # positive control: the same scan finds signer 1's share-store key (AES-256, derived from its
    # passphrase) in signer 1's memory, where it must be; and no signer's store key is in the server
    # the warm and cold vaults' holder keys were made in another process: none is in the server
    from embit import bip32

    for path in sorted(frost_server.data.glob("*-holders/holder-*.tprv")):
        root = bip32.HDKey.from_string(path.read_text().strip())
        child = root.derive("m/48h/1h/0h/2h/0/0")
        holder = {"xprv": path.read_text().strip().encode(), "root": root.key.secret, "child": child.key.secret}
        assert _scan(frost_server.proc.pid, holder) == set(), f"the server holds key material of {path.name}"
    keys = {i: _store_key(frost_server.data, i) for i in (1, 2, 3)}
    assert "big-endian" in _scan(pids[1], {"big-endian": keys[1]}), "positive control: the scan finds a key where one is"
    assert _scan(frost_server.proc.pid, {f"store{i}": k for i, k in keys.items()}) == set()
    assert _scan(pids[2], {f"group:{k}": v for k, v in _patterns(tweaked).items()}) == set()


def _store_key(data: Path, i: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    meta = json.loads((data / "signers" / f"signer-{i}" / "store.json").read_text())
    passphrase = (data / "signers" / f"signer-{i}.passphrase").read_text().strip()
    return Scrypt(bytes.fromhex(meta["salt"]), 32, int(meta["n"]), int(meta["r"]), int(meta["p"])).derive(passphrase.encode())


def _signer_pids(srv: Server) -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"ringfence.keys.signer_server" in argv and int(stat[1]) == srv.proc.pid:
            out[int(argv[argv.index(b"--identifier") + 1])] = int(entry.name)
    return out


@pytest.mark.parametrize("tier,amount", [("cold", "1.25"), ("warm", "0.5")])
def test_vault_to_hot_refill_through_offline_psbt_signing(frost_server: Server, tmp_path: Path, tier: str,
                                                           amount: str) -> None:
    """`ringfence cold refill [--from warm]` with two operators' keys (a staff-signed request to the
    admin API; the engine checks the quorum) -> the nominated holders sign offline with `ringfence keys
    sign-psbt` -> `ringfence cold submit`: the refill is journaled, broadcast, mined, and the hot
    wallet holds it. One operator alone, an approver, or a PSBT signed by a holder who was not
    nominated is refused and changes nothing; the old token-only demo endpoint is gone."""
    from embit import bip32

    from ringfence.keys.multisig import nominate_for_transaction

    from .test_capital import staff_key

    data = frost_server.data
    status = httpx.get(frost_server.base + "/readyz").json()["custody"]
    assert status["wallet_signers"][f"btc_{tier}"].startswith("p2wsh 2-of-3 multisig")
    assert json.loads((data / "custody" / f"btc-{tier}.json").read_text())["m"] == 2
    hot = _record(data)["address"]
    hot_before = _chain_sat(data, hot)
    url = ("--url", frost_server.base)
    psbt_file = tmp_path / "refill.psbt"
    refill_id = f"{tier}-t{tmp_path.name[-6:].replace('_', '')}"
    decide = ("cold", "refill", "--from", tier, "--amount", amount, "--out", str(psbt_file), "--id", refill_id)

    # refused (the same request the CLI sends, from this process): one operator alone (quorum), an operator
    # with an approver who is no operator (role-required)
    from ringfence.custody.vault_cmds import refill_subject
    from ringfence.staff.console import AdminClient, AdminError, load_key
    from ringfence.staff.decisions import format_approval

    subject = refill_subject(refill_id, "BTC", f"btc_{tier}", "btc_hot", int(Decimal(amount) * 10**8))
    with AdminClient(frost_server.base, load_key(staff_key(data, "ada")), timeout_s=60) as admin:
        for signers, rule in ((["ada"], "quorum"), (["ada", "cy"], "role-required")):
            tokens = [format_approval(load_key(staff_key(data, s)).sign("vault.refill", subject, time.time_ns() + 60 * 10**9))
                      for s in signers]
            with pytest.raises(AdminError, match=f"rule '{rule}'"):
                admin.post("/vault-refills", {"from": tier, "amount": amount, "refill_id": refill_id, "approvals": tokens})
    # the token-only demo endpoint that let anyone with the loopback token start a refill is gone
    token = json.loads((data / "custody" / "admin.json").read_text())["token"]
    old = httpx.post(frost_server.base + "/v1/demo/chain/cold/refill", json={"amount": amount, "from": tier},
                     headers={"Authorization": f"Bearer {token}"})
    assert old.status_code == 404, old.text

    made = cli(*decide, "--key", staff_key(data, "ada"), "--key", staff_key(data, "ben"), *url)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.split("\n")
    assert lines[0].split()[1] == refill_id
    txid, position = lines[1].split()[1], int(lines[2].split()[1])
    nominated = [line.split()[1:] for line in lines if line.startswith("nominated ")]
    assert len(nominated) == 2 and all(Path(f).exists() for _, f in nominated)
    holders = {bip32.HDKey.from_string(p.read_text().strip()).my_fingerprint.hex(): p
               for p in sorted((data / f"{tier}-holders").glob("holder-*.tprv"))}
    # anyone can recompute the nomination from the transaction id and the decision's journal position
    assert sorted(fp for fp, _ in nominated) == list(nominate_for_transaction(sorted(holders), 2, txid, position).selected)
    outsider = next(fp for fp in holders if fp not in dict(nominated))

    def sign(fp: str, name: str) -> Path:
        res = cli("keys", "sign-psbt", "--psbt", str(psbt_file), "--key", str(holders[fp]), "--out", str(tmp_path / name))
        assert res.returncode == 0, res.stderr
        return tmp_path / name

    bad = cli("cold", "submit", "--id", refill_id, "--psbt", str(sign(nominated[0][0], "a.psbt")),
              "--psbt", str(sign(outsider, "x.psbt")), "--key", staff_key(data, "ada"), *url)
    assert bad.returncode != 0 and "nominated" in bad.stderr.lower(), bad.stderr
    ok = cli("cold", "submit", "--id", refill_id, "--psbt", str(tmp_path / "a.psbt"),
             "--psbt", str(sign(nominated[1][0], "b.psbt")), "--key", staff_key(data, "ben"), *url)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split()[0] == txid and f"transfer {refill_id} broadcast" in ok.stdout
    want = hot_before + int(Decimal(amount) * 10**8)
    wait_for("the refill to reach the hot wallet", lambda: _chain_sat(data, hot) >= want, 60)
    if tier == "warm":  # a refill decided but never signed is dropped by one operator and can never be submitted
        later = f"{refill_id}x"
        subject = refill_subject(later, "BTC", "btc_warm", "btc_hot", 10**7)
        tokens = [format_approval(load_key(staff_key(data, s)).sign("vault.refill", subject, time.time_ns() + 60 * 10**9))
                  for s in ("ada", "ben")]
        ada = load_key(staff_key(data, "ada"))
        with AdminClient(frost_server.base, ada, timeout_s=60) as admin:
            admin.post("/vault-refills", {"from": "warm", "amount": "0.1", "refill_id": later, "approvals": tokens})
            why = "holder 2 is unreachable"
            decision = format_approval(ada.sign("vault.refill.cancel", [later, why], time.time_ns() + 60 * 10**9))
            assert admin.post(f"/vault-refills/{later}/cancel", {"reason": why, "decision": decision})["state"] == "cancelled"
            with pytest.raises(AdminError, match="is cancelled"):
                admin.post(f"/vault-refills/{later}/submit", {"psbts": [psbt_file.read_text().strip()]})


def _chain_sat(data: Path, address: str) -> int:
    from decimal import Decimal

    from .test_capital import chain_balance

    return int(chain_balance(data, "BTC", address) * Decimal(10**8))


def _withdraw_btc(srv: Server, amount: str) -> str:
    key = withdraw_key(srv.data)
    res = signed(srv, key, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "BTC", "address": key["withdraw_addresses"]["BTC"], "amount": amount})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def completed():
        rows = signed(srv, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "BTC"}).json()
        return next((r for r in rows if r["id"] == wid and r["status"] == 6), None)

    wait_for(f"the BTC withdrawal {wid} to complete", completed, 90)
    return str(wid)


def _signed_by(srv: Server, wid: str, ids) -> list[int]:
    return [i for i in ids if f"request wd-{wid}:0" in (srv.data / "signers" / f"signer-{i}" / "keyops.jsonl").read_text()]


def test_reshare_replaces_a_signer_under_an_operator_quorum_and_the_key_stays(frost_server: Server, tmp_path: Path) -> None:
    """`ringfence keys reshare --add 4 --remove 3` against the live node: one operator alone is refused
    (quorum); a decision that pins a certificate which is not signer 4's is accepted by the engine but
    the coordinator refuses signer 4's handshake and nothing changes hands; with two operators the node
    starts signer 4, a quorum of {1, 2} re-deals, signer 3's share is deleted. The group key and the
    address stay, {1, 4} combine to the key, signer 1's old share does not combine with the new ones,
    and a withdrawal is then signed by two of {1, 2, 4} and mined."""
    from ringfence.custody.vault_cmds import reshare_subject
    from ringfence.keys.tls import ensure_identity, fingerprint
    from ringfence.staff.console import AdminClient, AdminError, load_key
    from ringfence.staff.decisions import format_approval

    from .test_capital import staff_key

    data = frost_server.data
    rec0 = _record(data)
    assert rec0["signers"] == [1, 2, 3]
    url = ("--url", frost_server.base)
    ada, ben = staff_key(data, "ada"), staff_key(data, "ben")
    change = ("keys", "reshare", "--key-id", "btc-hot", "--remove", "3", "--reason", "signer 3's host is retired")
    old1 = share(data, 1)

    alone = cli(*change, "--add", "4", "--key", ada, *url)
    assert alone.returncode != 0 and "rule 'quorum'" in alone.stderr, alone.stderr
    with AdminClient(frost_server.base, load_key(ada), timeout_s=120) as admin:
        view = admin.get("/keys/btc-hot")
        assert view["generation"] == 0 and view["threshold"] == 2
        spare = next(s for s in view["signers"] if s["id"] == 4)  # started by the CLI; it holds no share
        fps = {s["id"]: s["fingerprint"] for s in view["signers"]}
        assert not spare["holder"] and spare["fingerprint"] and spare["url"].startswith("https://")
        # the request `--add 4=URL --cert 4=PEM` sends, from this process, with a certificate that is not signer 4's
        bogus = ensure_identity(tmp_path / "bogus", "not-signer-4", "bogus-passphrase")
        pairs = [[1, fps[1]], [2, fps[2]], [4, fingerprint(bogus.cert)]]
        subject = reshare_subject("btc-hot", 0, pairs, 2, "signer 3's host is retired")
        tokens = [format_approval(load_key(k).sign("keys.reshare", subject, time.time_ns() + 60 * 10**9)) for k in (ada, ben)]
        with pytest.raises(AdminError, match=r"signer 4 unreachable \(TLS authentication failed"):
            admin.post("/keys/btc-hot/reshare", {
                "generation": 0, "threshold": 2, "reason": "signer 3's host is retired", "approvals": tokens,
                "signers": [{"id": 1}, {"id": 2}, {"id": 4, "url": spare["url"], "certificate": bogus.cert.read_text()}]})
        assert _record(data)["signers"] == [1, 2, 3] and (data / "signers" / "signer-3" / "shares" / "btc-hot.bin").exists()
        assert not (data / "signers" / "signer-4" / "shares" / "btc-hot.bin").exists()
        assert admin.get("/keys/btc-hot")["generation"] == 1, "the decision was journaled; its ceremony failed"

        ok = cli(*change, "--add", "4", "--key", ada, "--key", ben, *url)
        assert ok.returncode == 0, ok.stderr
        assert "generation 2: signers 1,2,4 threshold 2; retired 3" in ok.stdout, ok.stdout
        after = admin.get("/keys/btc-hot")
    rec = _record(data)
    assert (rec["signers"], rec["threshold"], rec["generation"]) == ([1, 2, 4], 2, 2)
    assert (rec["group_public_key"], rec["output_key"], rec["address"]) == (rec0["group_public_key"], rec0["output_key"],
                                                                            rec0["address"])
    assert after["address"] == rec0["address"] and [s["id"] for s in after["signers"] if s["holder"]] == [1, 2, 4]
    assert not (data / "signers" / "signer-3" / "shares" / "btc-hot.bin").exists(), "the removed signer's share is gone"
    assert "share_deleted" in (data / "signers" / "signer-3" / "keyops.jsonl").read_text()
    plain, _ = combined_secrets(data, (1, 4))  # checked against the recorded group key inside
    new4 = share(data, 4)
    cs = new4.suite
    mixed = (frost.derive_interpolating_value(cs, [1, 4], 1) * old1.secret_share
             + frost.derive_interpolating_value(cs, [1, 4], 4) * new4.secret_share) % cs.group.order
    assert mixed != plain, "an old share still combines with the new ones"
    assert combined_secrets(data, (2, 4))[0] == plain
    wid = _withdraw_btc(frost_server, "0.012")
    by = _signed_by(frost_server, wid, (1, 2, 3, 4))
    assert len(by) == 2 and 3 not in by, by


def test_a_lost_signer_leaves_a_quorum_that_pays(frost_server: Server) -> None:
    """Signer 1's machine is gone (SIGKILL): withdrawals are still signed, by the two other holders."""
    import os
    import signal

    pids = _signer_pids(frost_server)
    os.kill(pids[1], signal.SIGKILL)
    wid = _withdraw_btc(frost_server, "0.011")
    others = [i for i in _record(frost_server.data)["signers"] if i != 1]
    assert _signed_by(frost_server, wid, (1, 2, 3, 4)) == others[:2]
