"""`ringfence custody demo` and `ringfence policy test FILE`.

The demo runs the whole custody flow on the local chains (Bitcoin simulator, eth-tester) with a
durable journal: a deposit credited after confirmations, a tainted deposit quarantined and released
by an analyst after a source-of-funds declaration, a sweep into hot, a withdrawal allowed by policy
and signed by the local BTC key, and a withdrawal of ~100% of a balance to a new address that goes
to manual review and is then signed by the HSM (SoftHSM2) behind a policy attestation.

`policy test` validates a policy file and dry-runs it against recorded requests (a JSON list of the
facts the policy sees), explaining each decision. Nothing is changed anywhere.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..cli_paths import tty_console
from ..errors import RingfenceError

custody_app = typer.Typer(help="Custody flows on local chains.\n\nExample: ringfence custody demo", no_args_is_help=True)
policy_app = typer.Typer(help="Withdrawal policies.\n\nExample: ringfence policy test policy.json --requests requests.json",
                         no_args_is_help=True)
console = tty_console(width=140)

#: Recorded requests used by `policy test` when --requests is not given (docs/custody.md).
SAMPLE_REQUESTS: list[dict[str, Any]] = [
    {"id": "small-hot", "asset": "BTC", "amount_minor": 1_000_000, "wallet": "btc_hot", "wallet_tier": "hot",
     "wallet_balance_minor": 500_000_000, "user_balance_minor": 50_000_000, "allow_listed": False,
     "allow_list_age_s": -1, "risk_score": 20, "manual_review_flagged": False},
    {"id": "fresh-address", "asset": "BTC", "amount_minor": 1_000_000, "wallet": "btc_hot", "wallet_tier": "hot",
     "wallet_balance_minor": 500_000_000, "user_balance_minor": 50_000_000, "allow_listed": True,
     "allow_list_age_s": 3_600, "risk_score": 20, "manual_review_flagged": False},
    {"id": "large-btc", "asset": "BTC", "amount_minor": 200_000_000, "wallet": "btc_hot", "wallet_tier": "hot",
     "wallet_balance_minor": 900_000_000, "user_balance_minor": 300_000_000, "allow_listed": True,
     "allow_list_age_s": 200_000, "risk_score": 30, "manual_review_flagged": False},
    {"id": "risky", "asset": "ETH", "amount_minor": 10**17, "wallet": "eth_hot", "wallet_tier": "hot",
     "wallet_balance_minor": 10**20, "user_balance_minor": 10**18, "allow_listed": False, "allow_list_age_s": -1,
     "risk_score": 95, "manual_review_flagged": True},
]

_FACT_FIELDS = ("asset", "amount_minor", "wallet", "wallet_tier", "wallet_balance_minor", "user_balance_minor",
                "allow_listed", "allow_list_age_s", "risk_score", "manual_review_flagged")
MAX_REQUESTS = 10_000


def _fail(message: str, code: int = 2) -> None:
    tty_console(stderr=True, width=200).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def facts_from_record(rec: Any, n: int) -> Any:
    from .policy import Facts

    if not isinstance(rec, dict):
        raise RingfenceError(f"requests[{n}] must be an object", field=f"requests[{n}]")
    missing = [f for f in _FACT_FIELDS if f not in rec]
    if missing:
        raise RingfenceError(f"requests[{n}] lacks {', '.join(missing)}", field=f"requests[{n}]")
    for f in _FACT_FIELDS:
        v = rec[f]
        want = bool if f in ("allow_listed", "manual_review_flagged") else (str if f in ("asset", "wallet", "wallet_tier") else int)
        if (want is int and (isinstance(v, bool) or not isinstance(v, int))) or not isinstance(v, want):
            raise RingfenceError(f"requests[{n}].{f} must be {want.__name__}", field=f"requests[{n}].{f}")
    return Facts(**{f: rec[f] for f in _FACT_FIELDS},
                 user_velocity_minor={int(k): v for k, v in rec.get("user_velocity_minor", {}).items()},
                 wallet_velocity_minor={int(k): v for k, v in rec.get("wallet_velocity_minor", {}).items()})


def recorded_requests(data_dir: Path) -> list[dict[str, Any]]:
    """The policy facts of every withdrawal decided in a node's journal (read-only replay)."""
    from ..app import replay_journal
    from .commands import custody_state

    if not (data_dir / "journal").is_dir():
        raise RingfenceError(f"{data_dir} holds no journal", field="journal")
    engine, _, _ = replay_journal(data_dir, truncate=False)
    out = []
    for w in custody_state(engine).withdrawals.values():
        if w.facts_json:
            rec = json.loads(w.facts_json)
            rec["decision"] = w.decision + (f" ({w.rule})" if w.rule else "")
            out.append(rec)
    return out[:MAX_REQUESTS]


def dry_run(policy_text: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate `policy_text` against each recorded request; the manual-review override applies."""
    from .policy import evaluate, parse_policy

    policy = parse_policy(policy_text)
    if len(requests) > MAX_REQUESTS:
        raise RingfenceError(f"at most {MAX_REQUESTS} requests", field="requests")
    out = []
    for n, rec in enumerate(requests):
        facts = facts_from_record(rec, n)
        d = evaluate(policy, facts)
        action, reasons = d.action, list(d.reasons)
        if facts.manual_review_flagged and action in ("allow", "approvals", "delay"):
            action = "manual_review"
            reasons.append("risk review requires manual review (overrides the rule's action)")
        detail = {"approvals": f"{d.approvals} from {'/'.join(d.roles)}" + (f", then {d.delay_s} s" if d.delay_s else ""),
                  "delay": f"{d.delay_s} s"}.get(action, "")
        out.append({"id": rec.get("id", f"#{n}"), "was": rec.get("decision", ""), "action": action, "detail": detail, "rule": d.rule or "(default deny)",
                    "reasons": reasons})
    return out


@policy_app.command("test")
def policy_test(
    file: Path = typer.Argument(..., help="policy JSON file"),
    requests: Optional[Path] = typer.Option(None, "--requests", "-r", help="JSON list of recorded requests (facts); default: built-in samples"),
    journal: Optional[Path] = typer.Option(None, "--journal", "-j", help="a node's data folder: re-decide every withdrawal it recorded"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Validate a policy and dry-run it against recorded requests, explaining each decision.

    Example: ringfence policy test policy.json --requests requests.json

    With --journal DIR, each withdrawal recorded in that node's journal is re-decided with the facts
    its original decision saw, and the table shows the original decision next to the new one.
    """
    from ..cli_paths import require_input_file, require_node_dir

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"FILE: cannot read {file}: {exc.strerror}")
    if requests is not None:
        require_input_file(requests, "--requests")
    if journal is not None:
        journal = require_node_dir(journal, "--journal")  # DIR as `serve --data` takes it, or the node folder
    try:
        if journal is not None:
            recs = recorded_requests(journal)
        else:
            recs = SAMPLE_REQUESTS if requests is None else json.loads(requests.read_text(encoding="utf-8"))
        if not isinstance(recs, list):
            raise RingfenceError("must be a JSON list of requests", field="requests")
        results = dry_run(text, recs)
    except json.JSONDecodeError as exc:
        _fail(f"--requests: not valid JSON: {exc.msg} at line {exc.lineno}")
    except OSError as exc:
        _fail(f"--requests: cannot read {requests}: {exc.strerror}")
    except RingfenceError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"policy {file.name}: {len(results)} request(s)")
    for col in ("request", "was", "decision", "rule", "why"):
        table.add_column(col)
    for r in results:
        table.add_row(r["id"], r["was"], r["action"] + (f" ({r['detail']})" if r["detail"] else ""), r["rule"],
                      "; ".join(r["reasons"]))
    console.print(table)


def _hsm_setup(root: Path) -> tuple[Any, Any] | None:
    """SoftHSM2 tokens for the ETH hot key and the policy approval key, or None when unavailable."""
    import os

    if shutil.which("softhsm2-util") is None:
        return None
    from ..keys.hsm import HsmSigner, HsmToken, PolicyApprovalKey, init_softhsm_token, write_softhsm_config
    from ..keys.keylog import KeyOperationLog

    conf = write_softhsm_config(root)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    init_softhsm_token(conf, "demo-hot", so_pin="demo-so-hot", user_pin="demo-user-hot")
    init_softhsm_token(conf, "demo-policy", so_pin="demo-so-pol", user_pin="demo-user-pol")
    hot, pol = HsmToken("demo-hot", "demo-user-hot"), HsmToken("demo-policy", "demo-user-pol")
    hot.generate("eth-hot", "secp256k1")
    pol.generate("policy-approval", "ed25519")
    log = KeyOperationLog(root / "keyops.jsonl")
    policy_key = PolicyApprovalKey(pol, "policy-approval", log=log)
    signer = HsmSigner(hot, policy_public_key=policy_key.public_key(), replay_db=root / "replay.sqlite", log=log)
    return signer, policy_key


def run_demo(data: Path, *, use_hsm: bool = True, say: Any = print) -> dict[str, Any]:
    """The custody demo; returns a summary the test checks."""
    from ..chains.ethereum import EthereumAdapter, EthereumSettings
    from .commands import FileSourceOfFunds
    from .localnet import LocalNet
    from .workers import PolicyAttestor

    eth = EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))
    hsm = _hsm_setup(data / "hsm") if use_hsm else None
    kw: dict[str, Any] = {}
    attestor = None
    if hsm is not None:
        attestor = PolicyAttestor(None, eth, hsm[1])
        kw = dict(hot_signer=hsm[0], hot_key_id="eth-hot", attest=attestor)
    net = LocalNet(data / "node", eth=eth, key_seed="demo", **kw)
    if attestor is not None:
        attestor.node = net.node
    net.bootstrap()
    say(f"ETH hot wallet {net.eth_hot} signs with {'the HSM (SoftHSM2) behind policy attestations' if hsm else 'a local key'}")
    alice, bob, carol = net.open_user("alice"), net.open_user("bob"), net.open_user("carol")

    # 1. A deposit credited after confirmations.
    net.btc_fund_miner()
    net.btc_send(alice["bitcoin"], 200_000_000)
    net.btc_mine(1)
    net.btc_watcher.poll()
    say(f"alice's 2 BTC deposit seen: {net.state.pending_deposits('BTC', 'btc_deposit')} sat pending")
    net.btc_mine(1)
    net.btc_watcher.poll()
    say(f"after 2 confirmations alice has {net.ledger.find('alice', 'BTC').balance} sat available")

    # 2. A tainted deposit: quarantined, declared, released by an analyst.
    from eth_account import Account

    mule_key = bytes.fromhex("6b" * 32)
    mule = Account.from_key(mule_key).address
    net.eth_send(mule, 2 * 10**18, dev_key=9)  # dev key 9 is on the sample blacklist (exploit)
    txid = net.eth.broadcast(net.dev.sign_transfer(mule_key, bob["ethereum"], 10**18)).txid
    net.eth_mine(3)
    net.eth_watcher.poll()
    dep = next(d for d in net.state.deposits.values() if d.txid == txid)
    say(f"bob's 1 ETH deposit: KYT score {dep.score} -> {dep.state} ({dep.reasons[0]})")
    net.execute(FileSourceOfFunds("ethereum", txid, dep.index, "bob", "Sold my car to a private buyer; contract attached."))
    net.execute(net.sign("review_deposit", "ethereum", txid, dep.index, "ana", "release", "contract and bank trail verified"))
    say(f"analyst ana released it: bob has {net.ledger.find('bob', 'ETH').balance} wei available")

    # 3. Carol deposits ETH; sweeps bring deposits into the hot wallets.
    net.eth_send(carol["ethereum"], 3 * 10**18)
    net.eth_mine(3)
    net.eth_watcher.poll()
    net.btc_balancer.sweep("BTC", "btc_deposit", "btc_hot", net.btc_hot, 10_000)
    net.eth_balancer.sweep("ETH", "eth_deposit", "eth_hot", net.eth_hot, 10**15)
    net.btc_mine(6)
    net.eth_mine(8)
    net.btc_balancer.record_confirmed("BTC", 1)
    net.eth_balancer.record_confirmed("ETH", 1)
    net.btc_watcher.poll()
    net.eth_watcher.poll()
    say(f"swept into hot: {net.ledger.custody('BTC', 'btc_hot').balance} sat, {net.ledger.custody('ETH', 'eth_hot').balance} wei")

    # 4. Alice withdraws 0.5 BTC: risk review, policy allows, signed, journaled, broadcast, settled.
    from ..chains.bitcoin.address import script_to_address

    dest = script_to_address(bytes.fromhex("0014" + "42" * 20), "regtest")
    net.request("demo-w1", "alice", "BTC", dest, 50_000_000)
    net.withdrawals.run_until_idle()
    w1 = net.state.withdrawals["demo-w1"]
    say(f"withdrawal demo-w1: risk {w1.risk_score} ({'; '.join(w1.risk_reasons)}); policy: {w1.decision} by {w1.rule!r}; "
        f"signed tx {w1.txid[:16]}... journaled, {w1.state}")
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    say(f"demo-w1 {w1.state}: destination holds {net.btc.balance(dest)} sat")

    # 5. Carol withdraws ~100% to a new address: mandatory manual review, then HSM signing.
    carol_bal = net.ledger.find("carol", "ETH").available
    eth_dest = "0x" + "77" * 20
    net.request("demo-w2", "carol", "ETH", eth_dest, carol_bal - 10**15)
    net.withdrawals.run_until_idle()
    w2 = net.state.withdrawals["demo-w2"]
    say(f"withdrawal demo-w2 of 100% to a new address: {w2.state} ({w2.decision_reasons[-1]})")
    net.execute(net.sign("manual_review", "demo-w2", "ana", True, "confirmed with carol by video call"))
    net.withdrawals.run_until_idle()
    net.eth_mine(8)
    net.withdrawals.run_until_idle()
    say(f"demo-w2 {w2.state}: {eth_dest} holds {net.eth.balance(eth_dest)} wei")
    net.node.engine.check_invariants()
    summary = {
        "alice_btc": net.ledger.find("alice", "BTC").balance, "bob_eth": net.ledger.find("bob", "ETH").balance,
        "w1": w1.state, "w2": w2.state, "w2_review": w2.reviewed_by, "quarantined_score": dep.score,
        "hsm": hsm is not None, "btc_dest": net.btc.balance(dest), "eth_dest": net.eth.balance(eth_dest),
        "hot_matches_chain": net.ledger.custody("ETH", "eth_hot").balance == net.eth.balance(net.eth_hot)
        and net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot),
    }
    net.node.close()
    return summary


@custody_app.command("demo")
def demo(
    data: Optional[Path] = typer.Option(None, "--data", help="empty folder for the journal and HSM tokens (default: a temp dir)"),
    hsm: bool = typer.Option(True, "--hsm/--no-hsm", help="sign ETH with SoftHSM2 behind policy attestations"),
) -> None:
    """Deposit, quarantined deposit and withdrawals through review and signing on the local chains.

    Example: ringfence custody demo --data ./ringfence-data/custody
    """
    tmp = None
    if data is None:
        tmp = tempfile.mkdtemp(prefix="rf-custody-")
        data = Path(tmp)
    elif data.is_dir() and any(data.iterdir()):
        _fail(f"--data: {data} is not empty; pass an empty or new folder")
    else:
        from ..cli_paths import prepare_data_dir

        prepare_data_dir(data)
    try:
        summary = run_demo(data, use_hsm=hsm, say=lambda m: console.print(f"[green]•[/] {m}"))
    except RingfenceError as exc:
        _fail(str(exc), 1)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"[bold]custody demo done[/]: {json.dumps(summary)}")
