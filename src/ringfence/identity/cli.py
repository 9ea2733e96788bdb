"""`ringfence identity ...`: migrate the identity store, deliver queued mail, manage the exchange PGP key,
register a user's Ed25519 API key.

Reads settings from the environment (RINGFENCE_*). Never prints secrets.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..cli_paths import command_settings, open_store, tty_console

app = typer.Typer(name="identity", help="Identity store and mail worker.\n\nExample: ringfence identity migrate",
                  no_args_is_help=True, add_completion=False)
console = tty_console()


def _context():  # type: ignore[no-untyped-def]
    from .context import IdentityContext

    settings = command_settings()
    return IdentityContext(store=open_store(settings.database_url), settings=settings)


@app.command()
def migrate() -> None:
    """Create or upgrade the identity tables (SQLite by default, PostgreSQL via RINGFENCE_DATABASE_URL).

    Outside dev mode (RINGFENCE_MODE=prod) the PostgreSQL server must be reached with its certificate verified
    (?sslmode=verify-full&sslrootcert=CA_FILE) or over a socket directory no other user can write
    (?host=/var/run/postgresql), unless RINGFENCE_DATABASE_PLAIN_OK=1 (docs/resilience.md); else exit 2.

    Example: RINGFENCE_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test ringfence identity migrate

    Example: RINGFENCE_MODE=prod RINGFENCE_DATABASE_URL="postgresql+psycopg://rf@db.internal/ringfence?sslmode=verify-full&sslrootcert=/etc/ringfence/pg-ca.pem" ringfence identity migrate
    """
    settings = command_settings()
    store = open_store(settings.database_url)
    where = store.engine.url.set(query={}).render_as_string(hide_password=True)  # (a password may be a query parameter)
    console.print(f"[green]identity schema is at head[/green] ({where.split('@')[-1]})")


@app.command("deliver-mail")
def deliver_mail(
    once: bool = typer.Option(False, help="deliver what is due once and exit"),
    interval_s: int = typer.Option(5, min=1, max=3600, help="seconds between polls"),
) -> None:
    """Send queued e-mails (anti-phishing code included) to the configured SMTP server, with retries.

    `ringfence serve` already does this every RINGFENCE_IDENTITY_MAIL_POLL_MS; run this command
    instead when serve's is off (RINGFENCE_IDENTITY_MAIL_POLL_MS=0). Settings (docs/mail.md):
    RINGFENCE_DATABASE_URL (the identity database serve uses: sqlite:///DIR/identity.sqlite3 for
    `serve --data DIR`), RINGFENCE_IDENTITY_SMTP_HOST, _PORT, _SECURITY (none, starttls, ssl),
    _USERNAME, _PASSWORD, RINGFENCE_IDENTITY_MAIL_FROM. The SMTP server is checked first: a wrong
    host, port, TLS mode or login exits 2 saying which setting to fix; with --once, a message that
    could not be sent exits 1.

    Example: RINGFENCE_DATABASE_URL=sqlite:///ringfence-data/identity.sqlite3 ringfence identity deliver-mail --once
    """
    from ..errors import RingfenceError
    from .mail import deliver_due, probe_smtp

    ctx = _context()
    try:
        probe_smtp(ctx.settings)
    except RingfenceError as err:
        console.print(f"[bold red]error:[/] {err.message}")
        raise typer.Exit(2) from None
    while True:
        report = deliver_due(ctx)
        console.print(f"sent={report.sent} failed={report.failed} dead={report.dead}")
        if report.last_error:
            console.print(f"[yellow]last failure:[/] {report.last_error}")
        if once:
            if report.failed or report.dead:
                raise typer.Exit(1)
            return
        time.sleep(interval_s)


@app.command("gen-exchange-pgp-key")
def gen_exchange_pgp_key(email: str = typer.Option("support@ringfence.local", help="user id e-mail of the key")) -> None:
    """Generate the exchange's PGP key (Ed25519/Cv25519) for secure tickets; prints its fingerprint.

    Example: ringfence identity gen-exchange-pgp-key --email support@example.com
    """
    ctx = _context()
    gpg = ctx.keyring.gpg
    key = gpg.gen_key(gpg.gen_key_input(key_type="EDDSA", key_curve="ed25519", subkey_type="ECDH",
                                        subkey_curve="cv25519", name_real="ringfence support", name_email=email,
                                        no_protection=True, expire_date="2y"))
    ctx.keyring.close()
    if not key.fingerprint:
        console.print(f"[red]gpg failed:[/red] {key.status}")
        raise typer.Exit(1)
    console.print(f"set RINGFENCE_IDENTITY_EXCHANGE_PGP_FINGERPRINT={key.fingerprint}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on; a wildcard or loopback address holds the port on "
                             "both address families (0.0.0.0 and [::], 127.0.0.1 or localhost and [::1]), as `ringfence serve`"),
    port: int = typer.Option(8000, min=1, max=65535, help="port to listen on"),
) -> None:
    """Serve the identity web pages (sign up, sign in, security centre) for development.

    Example: ringfence identity serve --port 8000   then open http://localhost:8000/signup
    """
    import uvicorn
    from rich.markup import escape

    from ..cli_paths import fail
    from ..listening import LISTEN_BACKLOG, ListenError, listen_on
    from .web import create_app

    try:  # both families of a wildcard or loopback host, or nothing (listening.py); before the store is opened
        sockets = listen_on(host, port, lambda line: console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True))
    except ListenError as err:
        fail(str(err))
    try:
        web_app = create_app(_context())
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    uvicorn.Server(uvicorn.Config(web_app, log_level="warning", backlog=LISTEN_BACKLOG)).run(sockets=sockets)


@app.command()
def purge() -> None:
    """Delete ended sessions, used tokens, old rate-limit windows, sent mail and year-old events.

    Example: ringfence identity purge
    """
    from .maintenance import purge_expired

    report = purge_expired(_context())
    for name, n in report.deleted.items():
        console.print(f"{name}: {n} deleted")


@app.command("add-ed25519-key")
def add_ed25519_key(
    email: str = typer.Option(..., "--email", help="your account's e-mail address"),
    public_key_file: Path = typer.Option(..., "--public-key-file", help="your Ed25519 PUBLIC key: PEM, or base64 of its 32 bytes"),
    label: str = typer.Option("ed25519 key", "--label", help="a name to recognise the key by"),
    scope: list[str] = typer.Option(["read"], "--scope", help="read, trade or withdraw; repeat for several"),
    ip: list[str] = typer.Option([], "--ip", help="IP address or CIDR network allowed to use the key; repeat (withdraw needs one)"),
) -> None:
    """Register the public half of an Ed25519 key pair you generated, as an API key (like Binance).

    Signs in with your password and a current authenticator code (both prompted, never echoed, or
    piped on stdin), registers the key behind that fresh second factor, and signs out again. The
    private key never leaves your machine: sign requests with base64(Ed25519_sign(private, query)).

    Make the pair: openssl genpkey -algorithm ed25519 -out key.pem; openssl pkey -in key.pem -pubout -out key.pub

    Example: ringfence identity add-ed25519-key --email you@example.com --public-key-file key.pub --scope read --scope trade
    """
    from ..cli_paths import fail, require_input_file
    from ..errors import RingfenceError
    from . import accounts, api_keys, second_factor, sessions

    require_input_file(public_key_file, "--public-key-file")
    try:
        text = public_key_file.read_text(encoding="utf-8")
        api_keys.parse_ed25519_public_key(text)  # refuse a bad key before asking for any secret
    except UnicodeDecodeError:
        fail("--public-key-file: public_key: is not text; give the PEM file or the base64 of the 32 raw bytes")
    except RingfenceError as err:
        fail(f"--public-key-file: {err}")
    password = typer.prompt("Password", hide_input=True)
    ctx = _context()
    token = None
    try:
        result = accounts.login(ctx, email, password, ip="127.0.0.1", user_agent="ringfence identity add-ed25519-key")
        token = result.session.token
        if result.second_factor_required:
            if "totp" not in result.methods:
                fail("this account's second factor is a passkey, which needs a browser: register the key in the "
                     "security centre (/security, 'Register an Ed25519 key')", 1)
            code = typer.prompt("Authenticator code", hide_input=True)
            token = second_factor.complete_login(ctx, token, method="totp", value=code.strip()).token
        created = api_keys.register_ed25519_key(ctx, token, text, scopes=scope, label=label, ip_allowlist=ip or None)
    except RingfenceError as err:
        fail(str(err), 1)
    finally:
        if token is not None:
            try:
                sessions.logout(ctx, token)
            except RingfenceError:
                pass  # a pending or already rotated session: nothing to sign out
    console.print(f"registered Ed25519 key {created.api_key[:8]}… scopes {','.join(created.scopes)}")
    typer.echo(f"api_key={created.api_key}")
