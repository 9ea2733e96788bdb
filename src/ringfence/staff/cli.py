"""The operator console: `ringfence staff|review|halts|policy ...` against a live node, each signed.

Every command that decides something signs the decision with the caller's key (`--key FILE`, or
`--key DIR/demo-staff.json#ID` for a demo member) and sends it in a signed request to the running
server's admin API (`--url`, default `$RINGFENCE_URL` or http://127.0.0.1:8000). Decisions that
need a quorum take the other members' approvals as tokens (`--approval TOKEN`), which each of
them prints with the same command and `--sign-only`; `--key` may also be repeated when one
terminal holds several keys (a demo, a test). `staff init` is the one command that works on a
stopped node's data directory: it creates the genesis quorum, once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import typer
from rich.table import Table

from ..cli_paths import tty_console
from ..errors import RingfenceError
from ..owned import safe_folder
from .console import DEFAULT_URL, AdminClient, load_key
from .decisions import ROLES, StaffKey, StaffSignature, format_approval, parse_approval, write_key_file

__all__ = ["staff_app", "review_app", "halts_app", "register_policy_commands"]

console = tty_console(width=160)
err_console = tty_console(stderr=True, width=160)

staff_app = typer.Typer(help="Staff identities: genesis, add, remove, list (signed by an operator quorum).\n\n"
                        "Example: ringfence staff list --key ada.key --url http://127.0.0.1:8000", no_args_is_help=True)
review_app = typer.Typer(help="Withdrawals and deposits waiting for a person: list, approve, reject, release, freeze.\n\n"
                         "Example: ringfence review list --key ada.key", no_args_is_help=True)
halts_app = typer.Typer(help="Halts on a live node: list, raise (one operator), lift (operator quorum).\n\n"
                        "Example: ringfence halts list --key ada.key", no_args_is_help=True)

URL = typer.Option(DEFAULT_URL, "--url", help="The running server (serve's address).")
KEY = typer.Option(..., "--key", help="Your staff key: FILE, DIR/demo-staff.json#ID, or pkcs11:TOKEN/LABEL#ID (an HSM; "
                   "PIN from RINGFENCE_STAFF_HSM_PIN).")
KEYS = typer.Option(..., "--key", help="Staff key(s): FILE, DIR/demo-staff.json#ID or pkcs11:TOKEN/LABEL#ID; the first one "
                    "sends the request. Repeatable.")
APPROVALS = typer.Option([], "--approval", help="Another member's approval token (from the same command with --sign-only). Repeatable.")
SIGN_ONLY = typer.Option(False, "--sign-only", help="Only print your approval token for the submitter; send nothing.")
TTL = typer.Option(600, "--ttl-s", min=10, max=86_400, help="How long your signature may be submitted.")


def _run(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except RingfenceError as err:
        err_console.print(f"[bold red]refused:[/] {err}")
        raise typer.Exit(1) from None


def _expires(ttl_s: int) -> int:
    return time.time_ns() + ttl_s * 10**9


def _keys(specs: list[str]) -> list[StaffKey]:
    try:
        return [load_key(s) for s in specs]
    except RingfenceError as err:
        err_console.print(f"[bold red]refused:[/] {err}")
        raise typer.Exit(1) from None


def _approvals(tokens: list[str]) -> list[StaffSignature]:
    try:
        return [parse_approval(t, f"--approval #{i + 1}") for i, t in enumerate(tokens)]
    except RingfenceError as err:
        err_console.print(f"[bold red]refused:[/] {err}")
        raise typer.Exit(1) from None


def _quorum_submit(keys: list[StaffKey], tokens: list[str], action: str, subject: list[Any], ttl_s: int,
                   sign_only: bool, send: Callable[[AdminClient, list[str]], Any], url: str,
                   timeout_s: int = 10) -> Any:
    sigs = [k.sign(action, subject, _expires(ttl_s)) for k in keys]
    if sign_only:
        for s in sigs:
            typer.echo(format_approval(s))
        return None
    all_tokens = [format_approval(s) for s in sigs] + [format_approval(a) for a in _approvals(tokens)]
    with AdminClient(url, keys[0], timeout_s=timeout_s) as client:
        return _run(lambda: send(client, all_tokens))


def _print_events(result: Any) -> None:
    if result is None:
        return
    console.print(f"[bold green]accepted[/] {result['accepted']}")
    for e in result["events"]:
        detail = {k: v for k, v in e.items() if k != "type"}
        console.print(f"  {e['type']}: {json.dumps(detail)[:300]}")


def _client(key: str, url: str) -> AdminClient:
    return _run(lambda: AdminClient(url, load_key(key)))


# ------------------------------------------------------------------------------------- staff


@staff_app.command("keygen")
def keygen(
    staff_id: str = typer.Argument(..., help="The new member's staff id (a-z 0-9 _ . -)."),
    out: Path | None = typer.Option(None, "--out", help="Where to write the key file (mode 0600; must not exist)."),
    hsm: str = typer.Option("", "--hsm", help="Instead of a file: generate the key inside this PKCS#11 token (label "
                            "STAFF_ID, not extractable; PIN from RINGFENCE_STAFF_HSM_PIN); use it as --key pkcs11:TOKEN/STAFF_ID#STAFF_ID."),
) -> None:
    """Create your Ed25519 staff key; prints the public key to hand to the operators who add you.

    Example: ringfence staff keygen dora --out dora.key
    Example (HSM): RINGFENCE_STAFF_HSM_PIN=... ringfence staff keygen dora --hsm staff-tokens
    """
    if hsm:
        from .console import open_staff_token

        def generate() -> str:
            token = open_staff_token(hsm)
            try:
                return bytes(token.generate(staff_id, "ed25519")).hex()
            finally:
                token.close()

        typer.echo(_run(generate))
        return
    if out is None:
        err_console.print("[bold red]error:[/] --out: name the key file to write (or --hsm TOKEN)")
        raise typer.Exit(2)
    if out.exists():
        err_console.print(f"[bold red]error:[/] --out: {out} exists; a key file is never overwritten")
        raise typer.Exit(2)
    key = StaffKey.generate(staff_id)
    _run(lambda: write_key_file(out, key))
    typer.echo(key.public_hex)


def _require_staff_member(data: Path, staff_id: str, *, sqlite_identity: bool = True) -> None:
    """Refuse a folder that is not a `serve --data DIR` (no identity store or node) and a staff id its
    register does not hold as active (read by replaying its journal in memory: safe while serve runs).
    `sqlite_identity=False`: the identity store is the database RINGFENCE_DATABASE_URL names, not a file
    in the folder (the PostgreSQL profile), so only the node is required."""
    from ..app import replay_journal
    from ..cli_paths import ENGINE_SUBDIR, fail
    from ..errors import RingfenceError
    from ..journal.journal import is_node_dir
    from .state import staff_of

    if (sqlite_identity and not (data / "identity.sqlite3").is_file()) or not is_node_dir(data / ENGINE_SUBDIR):
        fail(f"--data: {data} holds no node and identity store (identity.sqlite3, {ENGINE_SUBDIR}/); give the folder "
             "`ringfence serve --data DIR` uses (`make serve-demo`: ./ringfence-data/serve)")
    try:
        engine = replay_journal(data / ENGINE_SUBDIR, use_snapshots=True)[0]
    except RingfenceError as err:
        fail(f"--data: {data}: {err}", 1)
    active = sorted(m.staff_id for m in staff_of(engine).members.values() if m.status == "active")
    if staff_id not in active:
        fail(f"STAFF_ID: {staff_id!r} is not an active member of the staff register; its members: "
             f"{', '.join(active) or 'none (ringfence staff init)'}")


@staff_app.command("login")
def create_login(
    staff_id: str = typer.Argument(..., help="The member's staff id (as in the register)."),
    email: str = typer.Option(..., "--email", help="The member's own e-mail address (their sign-in name)."),
    out: Path = typer.Option(..., "--out", help="Where the one-time credentials are written (JSON, mode 0600)."),
    data: Path = typer.Option(None, "--data", help="`serve --data DIR`: its staff register, and its identity store "
                              "DIR/identity.sqlite3 unless RINGFENCE_DATABASE_URL names the server's database "
                              "(default: RINGFENCE_DATABASE_URL when set, else ./ringfence-data/serve, "
                              "the folder of `make serve-demo`)."),
) -> None:
    """Give a staff member their console login: an identity account `staff:ID` with a random password and
    TOTP on. The credentials (e-mail, password, TOTP secret and its otpauth:// URI) go to OUT (0600), never
    to the terminal; hand them to the member, who signs in at /login, enters the TOTP code, may add a
    passkey in the security centre, and opens /admin. The console page is served only to such a session
    of a member the register has active; decisions are still signed with the member's key.
    Example: ringfence staff login ada --email ada@example.com --data ./ringfence-data/serve --out ./ada-login.json
    """
    import os

    import pyotp

    from ..identity.context import IdentityContext
    from ..identity.staff_logins import create_staff_login
    from ..cli_paths import command_settings, open_store

    if out.exists():
        err_console.print(f"[bold red]error:[/] --out: {out} exists; credentials are never overwritten")
        raise typer.Exit(2)
    overrides: dict[str, Any] = {}
    database_url = os.environ.get("RINGFENCE_DATABASE_URL")  # the server's database (PostgreSQL profile)
    if data is None and not database_url:
        data = Path("ringfence-data/serve")  # what `serve --demo` / `make serve-demo` uses
    if data is not None:
        _require_staff_member(data, staff_id, sqlite_identity=not database_url)
        if not database_url:
            overrides["database_url"] = f"sqlite:///{(data / 'identity.sqlite3').resolve()}"
    settings = command_settings(**overrides)
    ctx = IdentityContext(store=open_store(settings.database_url), settings=settings)

    def make() -> Any:
        return create_staff_login(ctx, staff_id, email)

    login = _run(make)
    if login is None:
        err_console.print(f"[bold red]error:[/] {staff_id} has a console login already")
        raise typer.Exit(1)
    uri = pyotp.TOTP(login.totp_secret).provisioning_uri(name=login.email, issuer_name="ringfence staff")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"staff_id": login.staff_id, "email": login.email, "password": login.password,
                   "totp_secret": login.totp_secret, "otpauth": uri}, fh, indent=2)
    console.print(f"[bold green]login[/] for {staff_id} ({login.email}); credentials in {out} (0600)")


def _check_out_dir(out_dir: Path) -> None:
    """staff init's --out-dir, checked before anything is made: a file (or a file above it), a missing parent outside
    the current directory (a mistyped path, as --data), or a folder this user may not create in is one `error:`
    line naming --out-dir, exit 2 (it was a NotADirectoryError traceback after DIR/engine had been made)."""
    import os

    from ..cli_paths import fail, refuse_missing_parent
    from ..owned import nearest_existing

    try:  # key files another user could swap are refused when read (owned.read_own_file): so is their folder
        safe_folder(nearest_existing(out_dir), "--out-dir", "could put a staff key file of theirs in place of one "
                    "written there", "keep staff key files in a folder of this user's (chmod 700)")
    except RingfenceError as err:
        fail(str(err))
    if out_dir.is_dir():
        if not os.access(out_dir, os.W_OK | os.X_OK):
            fail(f"--out-dir: cannot write in {out_dir}: permission denied")
        return
    existing = out_dir.absolute()
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "" if existing == out_dir.absolute() else f" ({existing} is a file)"
        fail(f"--out-dir: {out_dir} cannot be a folder{what}; give a folder for the key files")
    refuse_missing_parent(out_dir, "--out-dir", "the key files' folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"--out-dir: cannot create {out_dir}: permission denied in {existing}")


@staff_app.command("init")
def init(
    data: Path = typer.Option(..., "--data", help="The stopped node's data directory (`serve --data DIR`)."),
    members: list[str] = typer.Option(..., "--member", help="ID:ROLE[,ROLE...] for each genesis member. Repeatable."),
    quorum: int = typer.Option(2, "--quorum", min=2, help="Operators needed for every quorum decision (at least 2)."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Where each member's key file ID.key is written (0600)."),
) -> None:
    """Create the genesis staff quorum on a node that has no staff yet (the node must be stopped).

    Each member's key is created here and written to OUT_DIR/ID.key; hand each file to its owner.
    Refused (rule genesis-once) when the node already has staff.
    Example: ringfence staff init --data ./ringfence-data --member ada:operator,approver --member ben:operator --member cy:analyst --out-dir ./keys
    """
    from ..app import new_node
    from ..cli_paths import fail, prepare_node_dir
    from .desk import StaffDesk

    roles: dict[str, list[str]] = {}
    for item in members:
        sid, sep, role_text = item.partition(":")
        if not sep or not sid or not role_text:
            err_console.print(f"[bold red]error:[/] --member {item!r}: expected ID:ROLE[,ROLE...] (roles: {', '.join(ROLES)})")
            raise typer.Exit(2)
        roles[sid] = role_text.split(",")
    keys = {sid: StaffKey.generate(sid) for sid in roles}
    for sid in roles:
        if (out_dir / f"{sid}.key").exists():
            err_console.print(f"[bold red]error:[/] --out-dir: {out_dir / (sid + '.key')} exists; key files are never overwritten")
            raise typer.Exit(2)
    _check_out_dir(out_dir)  # before --data's folders are made: a refused start makes nothing
    # DIR as `serve --data DIR` takes it keeps its node in DIR/engine; a node folder itself is taken as is
    node_dir = prepare_node_dir(data if (data / "journal").is_dir() else data / "engine", named=data)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)  # after --data's checks: a refused start makes no folder
    except OSError as err:
        fail(f"--out-dir: cannot create {out_dir}: {err.strerror or err}")
    try:  # before the genesis: key files refused after it would be lost (the folders write_key_file checks)
        safe_folder(out_dir, "--out-dir", "could put a staff key file of theirs in place of one written there",
                    "keep staff key files in a folder of this user's (chmod 700)")
    except RingfenceError as err:
        fail(str(err))

    def genesis() -> list[Any]:
        with new_node(node_dir) as node:
            return node.execute(StaffDesk(keys, time.time_ns).genesis(roles, quorum))

    [event] = _run(genesis)
    for sid, key in keys.items():
        write_key_file(out_dir / f"{sid}.key", key, "--out-dir")
    console.print(f"[bold green]genesis[/] staff {', '.join(event.staff_ids)} (operator quorum {quorum}); keys in {out_dir}")


@staff_app.command("list")
def list_staff(key: str = KEY, url: str = URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The staff register of a live node: ids, roles, keys, status.

    Example: ringfence staff list --key ./ringfence-data/serve/demo-staff.json#ada
    """
    with _client(key, url) as client:
        view = _run(lambda: client.get("/staff"))
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    table = Table(title=f"staff (register v{view['version']}, operator quorum {view['quorum']})")
    for col in ("staff id", "roles", "status", "public key", "added at seq", "removed at seq"):
        table.add_column(col, overflow="fold")
    for m in view["members"]:
        table.add_row(m["staff_id"], ", ".join(m["roles"]), m["status"], m["public_key"][:16] + "…", str(m["added_seq"]),
                      str(m["removed_seq"] or ""))
    console.print(table)


@staff_app.command("add")
def add(
    new_key: Path = typer.Option(..., "--new-key", help="The new member's key (from `staff keygen`: a file, or "
                                 "pkcs11:TOKEN/LABEL#ID): signs the proof of possession."),
    roles: list[str] = typer.Option(..., "--role", help=f"A role of the new member ({', '.join(ROLES)}). Repeatable."),
    reason: str = typer.Option(..., "--reason", help="Why; every approver signs the same text."),
    accounts: list[str] = typer.Option([], "--account", help="A customer account id (u_...) the new member holds here: "
                                       "they may never decide on its withdrawals or deposits. Repeatable."),
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Add a staff member: an operator quorum signs (AddStaff), and the new key proves itself.

    Example: ringfence staff add --new-key dora.key --role approver --account u_0123456789abcdef01234567 --reason "hired" --key ada.key --approval ben:...
    """
    from .commands import add_subject

    new = _run(lambda: load_key(str(new_key)))
    entry = new.entry(roles, accounts)
    with AdminClient(url, _keys(keys)[0]) as client:
        version = _run(lambda: client.get("/staff"))["version"]
    subject = add_subject(entry, reason, version)
    proof = format_approval(new.sign("staff.add", subject, _expires(ttl_s)))
    body = {"member": {"staff_id": entry.staff_id, "roles": entry.roles, "public_key": entry.public_key,
                       "accounts": entry.accounts},
            "reason": reason, "proof": proof}
    _print_events(_quorum_submit(_keys(keys), approvals, "staff.add", subject, ttl_s, sign_only,
                                 lambda c, toks: c.post("/staff", {**body, "approvals": toks}), url))


@staff_app.command("remove")
def remove(
    staff_id: str = typer.Argument(..., help="The member to remove (their key stops working on the next command)."),
    reason: str = typer.Option(..., "--reason", help="Why; every approver signs the same text."),
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Remove a staff member (RemoveStaff, operator quorum).

    Example: ringfence staff remove cy --reason "left the company" --key ada.key --approval ben:...
    """
    from .commands import remove_subject

    with AdminClient(url, _keys(keys)[0]) as client:
        version = _run(lambda: client.get("/staff"))["version"]
    _print_events(_quorum_submit(_keys(keys), approvals, "staff.remove", remove_subject(staff_id, reason, version),
                                 ttl_s, sign_only, lambda c, toks: c.post(f"/staff/{staff_id}/remove",
                                                                          {"reason": reason, "approvals": toks}), url))


# ------------------------------------------------------------------------------------- halts


@halts_app.command("list")
def list_halts(key: str = KEY, url: str = URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Active halts (with the sequence each was raised at) and recent lifts.

    Example: ringfence halts list --key ./ringfence-data/serve/demo-staff.json#ada
    """
    with _client(key, url) as client:
        view = _run(lambda: client.get("/halts"))
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    if not view["active"]:
        console.print("[bold green]no active halts[/]")
    table = Table(title=f"{len(view['active'])} active halt(s)")
    for col in ("halt id", "scope", "level", "raised at seq", "reason"):
        table.add_column(col, overflow="fold")
    for h in view["active"]:
        table.add_row(h["halt_id"], f"{h['scope_kind']}:{h['scope']}", h["level"], str(h["raised_seq"]), h["reason"])
    if view["active"]:
        console.print(table)
    for h in view["recently_lifted"][:5]:
        who = f"by {', '.join(h['approvers'])}" if h["approvers"] else "automatically (its condition cleared)"
        console.print(f"lifted {h['halt_id']} at seq {h['lifted_seq']} {who}: {h['lift_reason']}")


@halts_app.command("raise")
def raise_halt(
    halt_id: str = typer.Argument(..., help="An id for the halt."),
    scope_kind: str = typer.Option("venue", "--scope-kind", help="venue | segment | market | asset."),
    scope: str = typer.Option("*", "--scope", help="'*' for the venue, else the segment, symbol or asset (ASSET@wallet)."),
    level: str = typer.Option("HALTED", "--level", help="WITHDRAWALS_PAUSED | REDUCE_ONLY | HALTED."),
    reason: str = typer.Option(..., "--reason", help="Why (shown to users and operators)."),
    key: str = KEY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Raise a halt: one operator's signature (stopping is never the dangerous direction).

    Example: ringfence halts raise ops-1 --scope-kind asset --scope BTC --level WITHDRAWALS_PAUSED --reason "key ceremony" --key ada.key
    """
    from ..risk.halts import raise_subject

    k = _run(lambda: load_key(key))
    sig = k.sign("halt.raise", raise_subject(halt_id, scope_kind, scope, level, reason), _expires(ttl_s))
    body = {"halt_id": halt_id, "scope_kind": scope_kind, "scope": scope, "level": level, "reason": reason,
            "decision": format_approval(sig)}
    with AdminClient(url, k) as client:
        _print_events(_run(lambda: client.post("/halts", body)))


@halts_app.command("lift")
def lift_halt(
    halt_id: str = typer.Argument(..., help="The halt to lift (see `halts list`)."),
    reason: str = typer.Option(..., "--reason", help="Why it may be lifted; every approver signs the same text."),
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Lift a halt with the operator quorum's signatures (LiftHaltSigned); the engine verifies each.

    Example: ringfence halts lift rc.hot_wallet_shortfall.1a2b --reason "refilled" --key ada.key --approval ben:...
    """
    from ..risk.halts import lift_subject

    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        active = {h["halt_id"]: h for h in _run(lambda: client.get("/halts"))["active"]}
    if halt_id not in active:
        err_console.print(f"[bold red]refused:[/] halt_id: no active halt {halt_id!r} (see `ringfence halts list`)")
        raise typer.Exit(1)
    subject = lift_subject(halt_id, reason, active[halt_id]["raised_seq"])
    result = _quorum_submit(ks, approvals, "halt.lift", subject, ttl_s, sign_only,
                            lambda c, toks: c.post(f"/halts/{halt_id}/lift", {"reason": reason, "approvals": toks}), url)
    if result is not None:
        lifted = result["events"][-1]
        console.print(f"[bold green]lifted[/] {halt_id} approved by {', '.join(lifted.get('approvers', []))}")


# ------------------------------------------------------------------------------------- review


@review_app.command("list")
def list_review(key: str = KEY, url: str = URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Withdrawals awaiting approvals or manual review (with the rule, reasons and the user's history), and quarantined deposits.

    Example: ringfence review list --key ./ringfence-data/serve/demo-staff.json#cy
    """
    with _client(key, url) as client:
        view = _run(lambda: client.get("/review"))
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    table = Table(title=f"{len(view['withdrawals'])} withdrawal(s) waiting for a person")
    for col in ("id", "user", "amount", "state", "rule / reasons", "approvals", "user's last withdrawals"):
        table.add_column(col, overflow="fold")
    for w in view["withdrawals"]:
        valid = [a for a in w["approvals"] if a["valid"]]
        table.add_row(w["withdrawal_id"], w["account_id"], f"{w['amount']} {w['asset']}", w["state"],
                      f"{w['rule']}: " + "; ".join(w["decision_reasons"]),
                      f"{len(valid)}/{w['required_approvals']} ({', '.join(a['staff_id'] for a in valid)})",
                      ", ".join(f"{h['withdrawal_id']} {h['amount']} {h['asset']} {h['state']}" for h in w["user_history"]))
    console.print(table)
    for d in view["deposits"]:
        console.print(f"{d['state']} deposit {d['chain']}:{d['txid']}:{d['index']} of {d['account_id']} "
                      f"({d['amount']} {d['asset']}, score {d['score']}, from {d['sender'] or '?'}): "
                      f"declaration {d['declaration']!r}" + (f"; return signed by {', '.join(d['return_by'])}" if d["return_by"] else "")
                      + (f"; release signed by {', '.join(d['release_by'])}" if d.get("release_by") else ""))


@review_app.command("approve")
def approve(
    withdrawal_id: str = typer.Argument(..., help="The withdrawal (see `review list`)."),
    role: str = typer.Option("approver", "--role", help="The role you approve as (one the withdrawal's rule asks for)."),
    reason: str = typer.Option("approved after review", "--reason", help="For a manual review: why."),
    key: str = KEY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Approve a withdrawal: one signed approval (awaiting approvals) or the analyst's decision (manual review).

    Example: ringfence review approve w-123 --role approver --key ada.key
    """
    _decide_withdrawal(withdrawal_id, True, role, reason, key, ttl_s, url)


@review_app.command("reject")
def reject(
    withdrawal_id: str = typer.Argument(..., help="The withdrawal (see `review list`)."),
    reason: str = typer.Option(..., "--reason", help="Why (the user sees that it was rejected)."),
    key: str = KEY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Reject a withdrawal waiting for approvals or a manual review: its hold is released.

    Example: ringfence review reject w-123 --reason "could not reach the user" --key ada.key
    """
    _decide_withdrawal(withdrawal_id, False, "approver", reason, key, ttl_s, url)


def _decide_withdrawal(withdrawal_id: str, approve: bool, role: str, reason: str, key: str, ttl_s: int, url: str) -> None:
    from types import SimpleNamespace

    from ..custody.staff_cmds import approve_subject, manual_review_subject, reject_subject

    k = _run(lambda: load_key(key))
    with AdminClient(url, k) as client:
        w = _run(lambda: client.get(f"/withdrawals/{withdrawal_id}"))
        rec = SimpleNamespace(id=w["withdrawal_id"], asset=w["asset"], wallet=w["wallet"], address=w["address"],
                              amount_minor=int(w["amount_minor"]))
        if w["state"] == "manual_review":
            sig = k.sign("withdrawal.manual_review", manual_review_subject(rec, approve, reason), _expires(ttl_s))
            result = _run(lambda: client.post(f"/withdrawals/{withdrawal_id}/review",
                                              {"approve": approve, "reason": reason, "decision": format_approval(sig)}))
        elif approve:
            sig = k.sign("withdrawal.approve", approve_subject(rec, role), _expires(ttl_s))
            result = _run(lambda: client.post(f"/withdrawals/{withdrawal_id}/approve",
                                              {"role": role, "decision": format_approval(sig)}))
        else:
            sig = k.sign("withdrawal.reject", reject_subject(rec, reason), _expires(ttl_s))
            result = _run(lambda: client.post(f"/withdrawals/{withdrawal_id}/reject",
                                              {"reason": reason, "decision": format_approval(sig)}))
    _print_events(result)


def _deposit_decision(kind: str) -> Callable[..., None]:
    def command(
        deposit: str = typer.Argument(..., help="CHAIN:TXID:INDEX (see `review list`)."),
        reason: str = typer.Option(..., "--reason", help="Why."),
        key: str = KEY, ttl_s: int = TTL, url: str = URL,
    ) -> None:
        from ..custody.deposits import deposit_key
        from ..custody.staff_cmds import quarantine_subject

        chain, txid, index = _deposit_ref(deposit)
        k = _run(lambda: load_key(key))
        with AdminClient(url, k) as client:
            found = _queued_deposit(client, chain, txid, index, f"no quarantined deposit {deposit}")
            subject = quarantine_subject(deposit_key(chain, txid, index), int(found["amount_minor"]), kind, reason)
            sig = k.sign("deposit.review", subject, _expires(ttl_s))
            _print_events(_run(lambda: client.post("/deposits/review", {
                "chain": chain, "txid": txid, "index": index, "decision_kind": kind, "reason": reason,
                "decision": format_approval(sig)})))

    command.__doc__ = (f"{kind.capitalize()} a quarantined deposit (signed analyst decision).\n\n"
                       f"    Example: ringfence review {kind} ethereum:0xabc…:0 --reason \"invoice checked\" --key cy.key\n")
    return command


def _deposit_ref(deposit: str) -> tuple[str, str, int]:
    """CHAIN:TXID:INDEX (the form `review list` prints), or exit 2 naming the argument."""
    chain, _, rest = deposit.partition(":")
    txid, _, index_text = rest.rpartition(":")
    if not chain or not txid or not (index_text.isascii() and index_text.isdigit()):
        err_console.print("[bold red]error:[/] DEPOSIT: expected CHAIN:TXID:INDEX")
        raise typer.Exit(2)
    return chain, txid, int(index_text)


def _queued_deposit(client: Any, chain: str, txid: str, index: int, missing: str) -> dict[str, Any]:
    """The deposit as the review queue shows it (amount, sender), or exit 1 with `missing`."""
    found = [d for d in _run(lambda: client.get("/review"))["deposits"] if (d["chain"], d["txid"], d["index"]) == (chain, txid, index)]
    if not found:
        err_console.print(f"[bold red]refused:[/] {missing}")
        raise typer.Exit(1)
    return found[0]  # type: ignore[no-any-return]


review_app.command("release")(_deposit_decision("release"))
review_app.command("freeze")(_deposit_decision("freeze"))


@review_app.command("return")
def return_deposit(
    deposit: str = typer.Argument(..., help="CHAIN:TXID:INDEX of a quarantined or frozen deposit (see `review list`)."),
    reason: str = typer.Option(..., "--reason", help="Why the coins go back."),
    key: str = KEY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Return a quarantined or frozen deposit to its sender (signed analyst; two different analysts must sign).

    The amount less the withdrawal fee goes back on chain to the address that sent it.

    Example: ringfence review return ethereum:0xabc…:0 --reason "no source of funds given" --key DIR/demo-staff.json#ben
    """
    from ..custody.deposits import deposit_key
    from ..custody.refund_cmds import return_subject

    chain, txid, index = _deposit_ref(deposit)
    k = _run(lambda: load_key(key))
    with AdminClient(url, k) as client:
        found = _queued_deposit(client, chain, txid, index, f"no quarantined or frozen deposit {deposit}")
        sender = found["sender"]
        subject = return_subject(deposit_key(chain, txid, index), int(found["amount_minor"]), sender, reason)
        sig = k.sign("deposit.return", subject, _expires(ttl_s))
        _print_events(_run(lambda: client.post("/deposits/return", {
            "chain": chain, "txid": txid, "index": index, "address": sender, "reason": reason,
            "decision": format_approval(sig)})))


# ------------------------------------------------------------------------------------- policy


def register_policy_commands(policy_app: typer.Typer) -> None:
    """Add `propose`, `approve`, `activate`, `show` to the existing `ringfence policy` group."""

    @policy_app.command("show")
    def show(key: str = KEY, url: str = URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """The live node's active withdrawal policy and its proposals.

        Example: ringfence policy show --key pat.key
        """
        with _client(key, url) as client:
            view = _run(lambda: client.get("/policy"))
        if as_json:
            typer.echo(json.dumps(view, indent=2))
            return
        console.print(f"active policy: {view['active_policy'] or '(none)'}")
        for p in view["proposals"]:
            console.print(f"proposal {p['proposal_id']} by {p['proposer']}: {p['state']} "
                          f"(approvals: {', '.join(p['approvals']) or 'none'})")

    @policy_app.command("propose")
    def propose(
        proposal_id: str = typer.Argument(..., help="An id for the proposal."),
        file: Path = typer.Argument(..., help="The policy JSON file (check it first with `ringfence policy test`)."),
        key: str = KEY, ttl_s: int = TTL, url: str = URL,
    ) -> None:
        """Propose a withdrawal policy (signed policy admin); two other policy admins approve it.

        Example: ringfence policy propose p-2 policy.json --key pat.key
        """
        from ..custody.policy import parse_policy
        from ..custody.staff_cmds import propose_subject

        text = file.read_text() if file.is_file() else ""
        policy = _run(lambda: parse_policy(text))
        k = _run(lambda: load_key(key))
        sig = k.sign("policy.propose", propose_subject(proposal_id, policy.text), _expires(ttl_s))
        with AdminClient(url, k) as client:
            _print_events(_run(lambda: client.post("/policy/proposals", {
                "proposal_id": proposal_id, "policy_json": text, "decision": format_approval(sig)})))

    @policy_app.command("approve")
    def approve_policy(
        proposal_id: str = typer.Argument(..., help="The proposal (see `policy show`)."),
        key: str = KEY, ttl_s: int = TTL, url: str = URL,
    ) -> None:
        """Approve a policy proposal (signed; never the proposer's own).

        Example: ringfence policy approve p-2 --key pia.key
        """
        from ..custody.staff_cmds import policy_approve_subject

        k = _run(lambda: load_key(key))
        with AdminClient(url, k) as client:
            proposals = {p["proposal_id"]: p for p in _run(lambda: client.get("/policy"))["proposals"]}
            if proposal_id not in proposals:
                err_console.print(f"[bold red]refused:[/] no policy proposal {proposal_id!r}")
                raise typer.Exit(1)
            sig = k.sign("policy.approve", policy_approve_subject(proposal_id, proposals[proposal_id]["policy"]), _expires(ttl_s))
            _print_events(_run(lambda: client.post(f"/policy/proposals/{proposal_id}/approve",
                                                   {"decision": format_approval(sig)})))


    @policy_app.command("activate")
    def activate_policy(
        proposal_id: str = typer.Argument(..., help="The scheduled proposal (see `policy show`)."),
        key: str = KEY, url: str = URL,
    ) -> None:
        """Activate a policy proposal its quorum approved, once its delay passed (none for a node's first policy).

        Example: ringfence policy activate p-2 --key pat.key
        """
        with _client(key, url) as client:
            _print_events(_run(lambda: client.post(f"/policy/proposals/{proposal_id}/activate", {})))
