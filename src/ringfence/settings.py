"""Typed settings for ringfence, read from the environment with the prefix ``RINGFENCE_``.

One object (`Settings`) holds every knob; fields owned by identity carry the ``identity_`` prefix.
Invariant: outside dev mode (``RINGFENCE_MODE=prod``) the process refuses to start with a default
secret — `Settings.check_production_safe()` raises `ConfigError` naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

__all__ = ["Settings", "DEV_IDENTITY_SECRET_KEY_HEX", "load_settings", "settings_errors"]

# Publicly known dev key: fine for local demos, refused in prod mode.
DEV_IDENTITY_SECRET_KEY_HEX = "00" * 31 + "01"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RINGFENCE_", extra="ignore")

    mode: Literal["dev", "prod"] = "dev"
    database_url: str = "sqlite:///ringfence-data/identity.sqlite3"
    # The operator's statement that the path to the database and this machine have no other users: outside dev mode
    # a PostgreSQL URL over TCP without sslmode=verify-full/verify-ca, or over a socket in a directory other users can
    # write, is refused without it (whoever listens there gets the password; store/transport.py, docs/resilience.md).
    database_plain_ok: bool = False

    # 32-byte key (hex) for AES-GCM encryption of API secrets / TOTP seeds and HMAC of tokens.
    identity_secret_key_hex: str = DEV_IDENTITY_SECRET_KEY_HEX

    identity_argon2_memory_kib: int = Field(default=65536, ge=1024, le=4 * 1024 * 1024)
    identity_argon2_time_cost: int = Field(default=3, ge=1, le=20)
    identity_argon2_parallelism: int = Field(default=4, ge=1, le=16)
    # Password hashing runs in worker threads, never on the event loop (identity/web.py PasswordWork):
    # at most `threads` at once (each holds `memory_kib`), at most `waiting_max` more queued behind
    # them; past that a sign-in, sign-up or password change is answered 503 with Retry-After.
    identity_password_threads: int = Field(default=2, ge=1, le=64)
    identity_password_waiting_max: int = Field(default=32, ge=0, le=10_000)

    identity_session_ttl_s: int = Field(default=12 * 3600, ge=60, le=30 * 86400)
    identity_session_idle_s: int = Field(default=2 * 3600, ge=60, le=30 * 86400)
    identity_mfa_pending_ttl_s: int = Field(default=300, ge=30, le=3600)
    identity_email_token_ttl_s: int = Field(default=24 * 3600, ge=300, le=7 * 86400)
    identity_freeze_token_ttl_s: int = Field(default=7 * 86400, ge=3600, le=30 * 86400)
    identity_withdrawal_lock_s: int = Field(default=24 * 3600, ge=0, le=30 * 86400)

    # Lockout with exponential backoff: after `free_failures` failures each further failure
    # locks for base * 2**(n - free_failures) seconds, capped.
    identity_lockout_free_failures: int = Field(default=5, ge=1, le=100)
    identity_lockout_base_s: int = Field(default=30, ge=1, le=3600)
    identity_lockout_max_s: int = Field(default=3600, ge=1, le=86400)

    # Fixed-window rate limits on auth endpoints (per client IP).
    identity_login_per_ip_per_min: int = Field(default=30, ge=1, le=10_000)
    identity_signup_per_ip_per_hour: int = Field(default=10, ge=1, le=10_000)
    identity_second_factor_per_user_per_min: int = Field(default=10, ge=1, le=1000)

    identity_rp_id: str = "localhost"
    identity_rp_name: str = "ringfence"
    identity_origin: str = "http://localhost:8000"
    # The base of the links in the mail (verification, password reset, freeze, withdrawal confirmation): unset, the
    # origin above, which outside dev mode is the exchange's https:// address (never the listening host and port).
    identity_public_url: str = "http://localhost:8000"

    identity_smtp_host: str = "127.0.0.1"
    identity_smtp_port: int = Field(default=8025, ge=1, le=65535)
    identity_smtp_timeout_s: int = Field(default=10, ge=1, le=120)
    identity_mail_from: str = "security@ringfence.local"
    # SMTP login and transport security (docs/mail.md). `starttls` upgrades a plain connection,
    # `ssl` connects with TLS from the start (usually port 465); `none` only for a local relay.
    identity_smtp_username: str = ""
    identity_smtp_password: str = ""
    identity_smtp_security: Literal["none", "starttls", "ssl"] = "none"
    # The operator's statement that no other user runs processes on this machine: outside dev mode a relay on a
    # loopback port >= 1024 without TLS is refused without it (any local user could listen there; docs/mail.md).
    identity_smtp_local_plain_ok: bool = False
    # `ringfence serve` delivers the outbox itself every this many ms; 0 = not in serve (run
    # `ringfence identity deliver-mail` as its own process instead).
    identity_mail_poll_ms: int = Field(default=2_000, ge=0, le=600_000)
    identity_outbox_max_attempts: int = Field(default=8, ge=1, le=100)
    identity_outbox_backoff_base_s: int = Field(default=30, ge=1, le=3600)
    identity_outbox_backoff_max_s: int = Field(default=6 * 3600, ge=1, le=86400)

    identity_gnupg_home: str = "ringfence-data/gpg"
    identity_exchange_pgp_fingerprint: str = ""

    # API gateway (`ringfence serve`): request weight per IP and per API key per minute (Binance's
    # REQUEST_WEIGHT), bans for clients that keep going, body limit, CORS (closed when empty).
    api_weight_per_min: int = Field(default=60_000, ge=1, le=100_000_000)
    api_key_weight_per_min: int = Field(default=60_000, ge=1, le=100_000_000)
    api_ban_after: int = Field(default=50, ge=1, le=100_000)
    api_ban_s: int = Field(default=120, ge=1, le=86_400)
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    api_cors_origins: str = ""
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated IPs or CIDR
    # networks; `serve --forwarded-allow-ips` overrides). Empty: nobody's, the TCP peer is the
    # client. Nothing else (X-Real-IP, Forwarded) is ever read.
    api_forwarded_allow_ips: str = ""
    # Bearer token for GET /metrics. Empty: /metrics is open in dev mode and closed (401) in prod.
    api_metrics_token: str = ""
    # Connections of `serve` and of each gateway process (docs/api.md, api/http_wire.py, which reads the
    # same variables itself so that a gateway imports no settings; the bounds are the same): a request
    # must arrive whole within http_request_timeout_s; a connection whose client leaves its responses
    # unread for http_write_timeout_s is dropped; at most http_max_connections open at once per process
    # (lowered to what RLIMIT_NOFILE allows) and http_max_connections_per_ip from one peer (0: no bound).
    http_request_timeout_s: float = Field(default=10.0, gt=0, le=3600)  # float-ok: seconds for a timer, not money
    http_write_timeout_s: float = Field(default=30.0, gt=0, le=3600)  # float-ok: seconds for a timer, not money
    http_max_connections: int = Field(default=8192, ge=1, le=1_000_000)
    http_max_connections_per_ip: int = Field(default=256, ge=0, le=1_000_000)
    # The reconciler inside `ringfence serve`: internal checks every this many ms (0 = off).
    reconcile_every_ms: int = Field(default=5_000, ge=0, le=600_000)
    # Monitoring (docs/monitoring.md): the rule set (a JSON file; empty = the shipped default rules)
    # and how often the worker reads the event stream (ms; 0 = no monitoring worker).
    monitoring_rules: str = Field(default="", max_length=1000)
    # Self-trade prevention when an order names none (Binance's default is EXPIRE_TAKER), and
    # per-market overrides "BTCUSDT=NONE,ETHUSDT=EXPIRE_BOTH" (modes NONE, EXPIRE_TAKER, EXPIRE_MAKER, EXPIRE_BOTH).
    trading_stp_default: str = "EXPIRE_TAKER"
    trading_stp_markets: str = Field(default="", max_length=4000)
    monitoring_poll_ms: int = Field(default=200, ge=0, le=60_000)
    # Where the monitoring scorer runs: `process` (its own process beside the engine's, which keeps
    # the outbox: the rules, model and links off the engine's GIL) or `thread` (in the engine process).
    monitoring_scorer: Literal["process", "thread"] = "process"
    # A scorer process that answers none of these many checks in a row (one every 10 s; its warm-up after
    # a start not counted) is killed and started again (monitoring/scorer_process.py): 18 = 3 minutes and more.
    monitoring_scorer_missed_answers: int = Field(default=18, ge=1, le=100_000)
    # How often the event stream's outbox writes its queue to the database (a crash loses at most this
    # much of the non-engine events; the engine's are relayed again from the journal at the next start).
    monitoring_flush_ms: int = Field(default=100, ge=10, le=60_000)
    # A GeoIP country database (an MMDB file, e.g. GeoLite2-Country.mmdb; nothing is downloaded): the
    # monitoring worker adds the client IP's country to each event (docs/monitoring.md). Empty: none.
    monitoring_geoip: str = Field(default="", max_length=1000)
    # Proof of solvency inside `ringfence serve`: one proof at start, then one every this many
    # seconds (0 = only at start; `serve --demo` uses 30 unless set), the newest `por_keep` kept.
    por_every_s: int = Field(default=600, ge=0, le=7 * 86_400)
    por_keep: int = Field(default=500, ge=1, le=100_000)
    # Extra reserve sources for the publisher: comma-separated `package.module:factory`, each
    # called as factory(exchange, data_dir) -> ReserveSource or a list of them (custody plugs in here).
    por_reserve_sources: str = Field(default="", max_length=2000)
    # The asset the shield fund rule (shield value >= hot wallet value) values both sides in.
    shield_value_asset: str = Field(default="USDT", pattern=r"^[A-Z0-9]{2,12}$")
    # How often the shield sweeper (a custody worker in `serve`) moves the accrued share on chain.
    shield_sweep_every_s: int = Field(default=3_600, ge=1, le=7 * 86_400)
    # How often `serve` checks the shield fund rule and raises (or clears) its monitoring alert
    # (solvency/shield_alarm.py); 0 = never.
    shield_check_every_s: int = Field(default=10, ge=0, le=86_400)

    # Custody inside `ringfence serve` (docs/custody.md): which chain each custodied asset lives on,
    # e.g. "BTC=local,ETH=local,USDT=local" ("local" = the in-process demo chains, dev mode only;
    # `serve --demo` uses all three when this is empty). Empty and no --demo: no chains, no
    # deposits or withdrawals (canDeposit/canWithdraw false).
    custody_chains: str = ""
    custody_block_interval_ms: int = Field(default=3_000, ge=100, le=600_000)
    custody_poll_ms: int = Field(default=500, ge=50, le=60_000)
    # A new withdrawal address-book entry may receive funds after this long.
    custody_address_cooling_s: int = Field(default=24 * 3600, ge=0, le=30 * 86400)
    # KYT: a blacklist CSV (`chain,address,category,source`, OFAC-SDN style) screened on top of the
    # shipped sample, for deposit senders and withdrawal destinations; re-read when the file changes.
    kyt_blacklist: str = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _links_follow_the_origin(self) -> Settings:
        """RINGFENCE_IDENTITY_PUBLIC_URL unset: the mail's links start with RINGFENCE_IDENTITY_ORIGIN, the address the
        users' browsers are on (before, the default http://localhost:8000 went out in prod mail)."""
        if "identity_public_url" not in self.model_fields_set:
            self.__dict__["identity_public_url"] = self.identity_origin.rstrip("/")  # still "not set" for the checks
        return self

    def cors_origins(self) -> tuple[str, ...]:
        origins = tuple(o.strip() for o in self.api_cors_origins.split(",") if o.strip())
        if "*" in origins and self.mode != "dev":
            raise ConfigError("an open CORS policy ('*') is refused outside dev mode", field="RINGFENCE_API_CORS_ORIGINS")
        return origins

    def forwarded_allow_ips(self) -> tuple[str, ...]:
        """The trusted proxies, each a normalised IP or CIDR network ('*' only in dev mode)."""
        import ipaddress

        out: list[str] = []
        for entry in (e.strip() for e in self.api_forwarded_allow_ips.split(",")):
            if not entry:
                continue
            if entry == "*":
                if self.mode != "dev":
                    raise ConfigError("trusting forwarded headers from every peer ('*') is refused outside dev mode", field="RINGFENCE_API_FORWARDED_ALLOW_IPS")
                out.append(entry)
                continue
            try:
                out.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError as exc:
                raise ConfigError(f"'{entry[:60]}' is not an IP address or CIDR network", field="RINGFENCE_API_FORWARDED_ALLOW_IPS") from exc
        if len(out) > 64:
            raise ConfigError("at most 64 trusted proxies", field="RINGFENCE_API_FORWARDED_ALLOW_IPS")
        return tuple(out)

    def metrics_token(self) -> str:
        token = self.api_metrics_token.strip()
        if token and len(token) < 16:
            raise ConfigError("must be at least 16 characters (use a random token)", field="RINGFENCE_API_METRICS_TOKEN")
        return token

    def secret_key(self) -> bytes:
        try:
            key = bytes.fromhex(self.identity_secret_key_hex)
        except ValueError as exc:
            raise ConfigError("must be 64 hex characters (32 bytes)", field="RINGFENCE_IDENTITY_SECRET_KEY_HEX") from exc
        if len(key) != 32:
            raise ConfigError("must be 64 hex characters (32 bytes)", field="RINGFENCE_IDENTITY_SECRET_KEY_HEX")
        return key

    def check_production_safe(self) -> None:
        """Raise ConfigError when prod mode would run with a default secret or insecure origin (every problem
        in one error; `production_problems` lists them one by one)."""
        problems = self.production_problems()
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise ConfigError("; ".join(str(p) for p in problems))

    def production_problems(self) -> list[ConfigError]:
        """Every reason this configuration may not run, each naming its variable: an operator fixes them all
        at once instead of meeting them one start at a time."""
        problems: list[ConfigError] = []
        for check in (self.secret_key, self.cors_origins, self.forwarded_allow_ips, self.metrics_token):
            try:
                check()
            except ConfigError as err:
                problems.append(err)
        if self.mode == "dev":
            return problems
        if self.identity_secret_key_hex.lower() == DEV_IDENTITY_SECRET_KEY_HEX:
            problems.append(ConfigError("the default dev key is refused outside dev mode; set a random 32-byte hex key",
                                        field="RINGFENCE_IDENTITY_SECRET_KEY_HEX"))
        if self.identity_argon2_memory_kib < 19456:
            problems.append(ConfigError("must be at least 19456 KiB outside dev mode", field="RINGFENCE_IDENTITY_ARGON2_MEMORY_KIB"))
        if not self.identity_origin.startswith("https://"):
            problems.append(ConfigError("must be an https:// origin outside dev mode", field="RINGFENCE_IDENTITY_ORIGIN"))
        if "identity_public_url" in self.model_fields_set and not self.identity_public_url.startswith("https://"):
            problems.append(ConfigError("must be an https:// address outside dev mode (the base of the links in the mail; "
                                        "unset, RINGFENCE_IDENTITY_ORIGIN)", field="RINGFENCE_IDENTITY_PUBLIC_URL"))
        problems += self.smtp_problems()
        problems += self.database_problems()
        return problems

    def database_problems(self) -> list[ConfigError]:
        """Outside dev mode, a PostgreSQL database_url must reach a server no other local user can stand in for:
        over TCP with its certificate verified (sslmode=verify-full or verify-ca), or over a socket in a directory
        other users cannot write, unless RINGFENCE_DATABASE_PLAIN_OK=1 (intruder review of #21). The one check of
        every command that opens the database: store/transport.py `database_problems`."""
        if self.mode == "dev" or not self.database_url.startswith("postgres"):
            return []
        from .store.transport import database_problems

        return database_problems(self.database_url, mode=self.mode, plain_ok=self.database_plain_ok)

    def smtp_problems(self) -> list[ConfigError]:
        """Outside dev mode, the SMTP relay that gets password-reset and verification mail (and any SMTP login) must
        be one no other local user can stand in for (intruder review of #22): the host set on purpose, not left at
        dev mode's catcher 127.0.0.1:8025; and on this machine (is_this_machine: by address, not by name), a privileged
        port (< 1024, which only root can listen on) or TLS (starttls, ssl: the relay's certificate is verified), unless the operator states that this
        machine has no other users (RINGFENCE_IDENTITY_SMTP_LOCAL_PLAIN_OK=1); and an SMTP login (username or password)
        to a relay elsewhere only over TLS (intruder review of session 24: a login over none to a remote relay was
        taken, and whoever is on the path gets it)."""
        if "identity_smtp_host" not in self.model_fields_set:
            return [ConfigError("must be set outside dev mode (the default 127.0.0.1:8025 is dev mode's mail catcher): "
                                "your relay's host name, with RINGFENCE_IDENTITY_SMTP_PORT and _SECURITY",
                                field="RINGFENCE_IDENTITY_SMTP_HOST")]
        if (self.identity_smtp_port >= 1024 and self.identity_smtp_security == "none"
                and not self.identity_smtp_local_plain_ok and is_this_machine(self.identity_smtp_host)):
            return [ConfigError(
                f"none is refused outside dev mode for a relay on this machine (an address of its own, loopback or "
                f"0.0.0.0) on a port >= 1024 "
                f"({self.identity_smtp_host}:{self.identity_smtp_port}): any local user could listen there and get "
                "password-reset and verification mail; use starttls or ssl, a port below 1024 (e.g. 25), or set "
                "RINGFENCE_IDENTITY_SMTP_LOCAL_PLAIN_OK=1 if this machine has no other users",
                field="RINGFENCE_IDENTITY_SMTP_SECURITY")]
        if (self.identity_smtp_security == "none" and (self.identity_smtp_username or self.identity_smtp_password)
                and not is_this_machine(self.identity_smtp_host)):  # on this machine: the rule above
            return [ConfigError(
                f"none is refused outside dev mode with an SMTP login to a relay elsewhere ({self.identity_smtp_host}:"
                f"{self.identity_smtp_port}): the login would cross the network in clear text to whoever answers "
                "there; use starttls or ssl (the relay's certificate is verified), or a relay that needs no login",
                field="RINGFENCE_IDENTITY_SMTP_SECURITY")]
        return []


def is_this_machine(host: str) -> bool:
    """Whether `host` reaches this machine, decided by address, not by its text (intruder review of #23: `vm`, this
    machine's name in /etc/hosts, `127.1`, `0.0.0.0` and `::ffff:127.0.0.1` all reach the local listener too): any
    address it resolves to (numeric forms included) that is loopback, unspecified (0.0.0.0, ::), an IPv4-mapped one of
    those, or one of this machine's own addresses (its host name's, or any a socket here can bind to: every
    interface's). `localhost` and `*.localhost` count even if they do not resolve; any other name that does not
    resolve does not."""
    import ipaddress
    import socket

    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        addresses = {info[4][0]: info for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return False
    try:
        own = set(socket.gethostbyname_ex(socket.gethostname())[2])
    except (OSError, UnicodeError):
        own = set()
    for text, info in addresses.items():
        try:
            address = ipaddress.ip_address(str(text).split("%", 1)[0])
        except ValueError:
            continue
        mapped = getattr(address, "ipv4_mapped", None)
        for candidate in (address, mapped) if mapped is not None else (address,):
            if candidate.is_loopback or candidate.is_unspecified or str(candidate) in own or _bindable(info):
                return True
    return False


def _bindable(info: tuple) -> bool:  # type: ignore[type-arg]
    """Whether a socket of this machine can be bound to the address getaddrinfo gave (`info`; port 0, nothing
    listens): it is one of this machine's own addresses, on any interface. The host name's addresses alone missed
    them (intruder review of session 24: eth0's 192.0.2.2 was not "this machine", so uid 4242 listening on
    192.0.2.2:2525 got the SMTP login)."""
    import socket

    family, kind, proto, _, where = info
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind((where[0], 0, *where[2:]))  # (a link-local address's scope kept)
    except OSError:
        return False
    return True


def load_settings(**overrides: object) -> Settings:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    settings.check_production_safe()
    return settings


_SECRET_WORDS = ("secret", "password", "token", "key")


def settings_errors(exc: Exception) -> list[str]:
    """One line per bad environment variable of a pydantic ValidationError (several can be wrong at
    once), each naming the variable (`RINGFENCE_MODE: Input should be 'dev' or 'prod' (got 'staging')`).
    The value is echoed back only for a field that holds no secret."""
    lines = []
    for error in getattr(exc, "errors", lambda: [])():
        name = "_".join(str(part) for part in error.get("loc", ())) or "settings"
        variable = f"RINGFENCE_{name.upper()}"
        line = f"{variable}: {error.get('msg', 'invalid')}"
        value = error.get("input")
        if isinstance(value, str) and not any(word in name for word in _SECRET_WORDS):
            line += f" (got {value[:60]!r})"
        lines.append(line)
    return lines or [str(exc).splitlines()[0]]
