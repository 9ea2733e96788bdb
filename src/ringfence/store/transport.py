"""The way to a PostgreSQL server, as libpq will take it, and whether a node outside dev mode may take it.

Intruder review of #21: libpq's default `sslmode=prefer` verifies nothing, and PostgreSQL's port 5432 is >= 1024,
so while PostgreSQL is down any local user can listen there, be sent the database password (in clear text with
`password` authentication) and answer with a fake identity database. Outside dev mode (RINGFENCE_MODE) a PostgreSQL
URL is therefore taken only when every address libpq may connect to is one no other user can stand in for:

* over TCP (a host name or address, or a hostaddr): `sslmode=verify-full` or `verify-ca`, the server's certificate
  checked against `sslrootcert` (libpq's default `prefer`, `allow`, `require`, `disable` are refused);
* over a Unix socket (a host that is a directory, or no host at all: libpq's default socket directory): a
  directory that no other user can write, nor any directory above it (a sticky one such as /tmp only above a
  directory of root's or of this user's); an abstract socket name (@NAME) is anyone's to bind. `sslmode` does not
  apply to a socket;
* what libpq reads again at every connection, so that a check at start holds: the CA file verify-* checks against
  and the pg_service.conf files of a service (`service=`, PGSERVICE) belong to root, this user or PostgreSQL's
  account, no one else may write them or a folder above them (owned.trust_file_problem); the socket directory and
  the folders above it belong to the same (intruder review of session 24: uid 4242's folder, CA and service file
  were each taken); a service defined in LDAP is refused, before the probe (libpq asks LDAP there);
* anything, given RINGFENCE_DATABASE_PLAIN_OK=1: the operator's statement that the path to the database and this
  machine have no other users (as RINGFENCE_IDENTITY_SMTP_LOCAL_PLAIN_OK for the mail relay).

What libpq will do is asked of libpq itself (`libpq_path`): the parameters SQLAlchemy hands psycopg for the URL,
completed by libpq as it completes them for the connection (the URL first, then a service file, then PGHOST,
PGHOSTADDR, PGPORT, PGSSLMODE..., then its compiled-in defaults). libpq works them out in PQconnectStart before it
opens any socket; given a target_session_attrs it does not know it stops right there, and `PQconninfo` tells its
choices with nothing connected. One check for every command that opens the database (`database_problems`):
`Settings.production_problems` (serve, identity), `cli_paths.open_store` (monitoring, staff), `backup`.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..owned import trust_file_problem

__all__ = ["LibpqPath", "VERIFIED_SSLMODES", "PLAIN_OK_VARIABLE", "libpq_params", "libpq_path", "database_problems"]

#: The sslmodes in which libpq checks the server's certificate against sslrootcert (verify-full also its name).
VERIFIED_SSLMODES = ("verify-full", "verify-ca")
PLAIN_OK_VARIABLE = "RINGFENCE_DATABASE_PLAIN_OK"
_PROBE = "ringfence-resolve-only"  # a target_session_attrs libpq refuses: PQconnectStart stops before any socket
_NO_OTHER_USERS = f"or set {PLAIN_OK_VARIABLE}=1 if the path to the database and this machine have no other users"


@dataclass(frozen=True)
class LibpqPath:
    """Where libpq will connect for a URL: its TCP addresses (host or hostaddr, with the port), its socket
    directories, and the sslmode it will use (`sslmode_from`: the URL, PGSSLMODE, libpq's default...)."""

    tcp: tuple[str, ...]
    sockets: tuple[str, ...]
    port: str
    sslmode: str
    sslmode_from: str
    #: the CA file libpq verifies the server against (the URL's, PGSSLROOTCERT, a service's; "": its default
    #: ~/.postgresql/root.crt; "system": OpenSSL's own store)
    sslrootcert: str = ""


def libpq_params(url: str) -> dict[str, str]:
    """The connection parameters (the password too) that SQLAlchemy's psycopg dialect gives psycopg, and so libpq,
    for `url`: host, port, user, dbname and every query parameter (`?sslmode=verify-full&host=/run/postgresql`)."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
    from sqlalchemy.engine import make_url

    _, params = PGDialect_psycopg().create_connect_args(make_url(url))
    return {k: str(v) for k, v in params.items() if v is not None}


def _probe(params: dict[str, str]):  # type: ignore[no-untyped-def]
    """A PGconn that libpq gave up on after working out `params` completely, before connecting (see the module's
    docstring); the caller finishes it. Raises ConfigError(field None) with libpq's words if it refused `params`."""
    from psycopg import ProgrammingError, pq
    from psycopg.conninfo import make_conninfo

    try:
        conninfo = make_conninfo("", **{**params, "target_session_attrs": _PROBE})
    except ProgrammingError as err:  # libpq's parser: an unknown parameter (never the password)
        raise ConfigError(f"libpq refuses its parameters: {str(err).strip() or type(err).__name__}") from None
    pgconn = pq.PGconn.connect_start(conninfo.encode())
    error = pgconn.error_message.decode(errors="replace").strip()
    if pgconn.status != pq.ConnStatus.BAD or _PROBE not in error:
        pgconn.finish()
        raise ConfigError(f"libpq refuses its parameters: {error.splitlines()[0] if error else 'unknown reason'}")
    return pgconn


@functools.cache
def _default_host() -> str:
    """Where libpq connects when no host is named: its compiled-in socket directory (/var/run/postgresql in
    psycopg's own libpq and Debian's; /tmp in PostgreSQL's sources), or localhost where it has none."""
    pgconn = _probe({"host": "", "hostaddr": ""})
    try:
        return pgconn.host.decode()
    finally:
        pgconn.finish()


def _split(value: str | None) -> list[str]:
    """libpq's comma-separated host, hostaddr and port lists. A comma always separates: neither libpq
    (parse_comma_separated_list) nor psycopg (which splits the list into attempts itself) escapes one, so
    `host=/srv/x\\,127.0.0.1` is a socket directory `/srv/x\\` and then 127.0.0.1 over TCP (intruder review of
    session 24: read as one socket directory `/srv/x,127.0.0.1`, the TCP attempt without TLS was taken)."""
    return (value or "").split(",")


def libpq_path(url: str, field: str = "RINGFENCE_DATABASE_URL") -> LibpqPath:
    """What libpq will connect to for the PostgreSQL `url` in this process's environment (see the module's
    docstring). A URL libpq refuses (an unknown parameter, host and hostaddr lists of different lengths) is a
    ConfigError naming `field`, its password never shown."""
    from sqlalchemy.exc import ArgumentError

    from ..errors import without_credentials

    try:
        params = libpq_params(url)
    except (ArgumentError, ValueError) as err:
        raise ConfigError(f"cannot read the URL {without_credentials(url)} ({type(err).__name__})", field=field) from None
    try:
        pgconn = _probe(params)
    except ConfigError as err:
        raise ConfigError(err.message, field=field) from None
    try:
        options = {o.keyword.decode(): (o.val.decode() if o.val is not None else None) for o in pgconn.info}
    finally:
        pgconn.finish()
    hosts, addresses, ports = _split(options.get("host")), _split(options.get("hostaddr")), _split(options.get("port"))
    count = len(addresses) if options.get("hostaddr") else len(hosts)
    tcp: list[str] = []
    sockets: list[str] = []
    for i in range(count):  # libpq's slots: hostaddr names the address, else host; a list of ports or one for all
        address = addresses[i] if options.get("hostaddr") else ""
        host = hosts[i] if i < len(hosts) else ""
        port = (ports[i] if len(ports) > 1 and i < len(ports) else ports[0]) or "5432"
        if address:
            tcp.append(f"{host} ({address}):{port}" if host else f"{address}:{port}")
        elif (host or _default_host()).startswith(("/", "@")):  # libpq's is_unixsock_path
            sockets.append(host or _default_host())
        else:
            tcp.append(f"{host or _default_host()}:{port}")
    if "sslmode" in params:
        source = "the URL"
    elif os.environ.get("PGSSLMODE"):
        source = "PGSSLMODE"
    else:
        source = "libpq's default" if options.get("sslmode") == "prefer" else "libpq's settings (service, PGREQUIRESSL)"
    return LibpqPath(tuple(tcp), tuple(sockets), ports[0] or "5432", options.get("sslmode") or "prefer", source,
                     options.get("sslrootcert") or "")


@functools.cache
def _database_account() -> frozenset[int]:
    """The PostgreSQL server's own account (`postgres`), which owns its socket directory (/var/run/postgresql) and
    may own the files it is configured with; trusted as root is: it holds the database already."""
    import pwd

    try:
        return frozenset({pwd.getpwnam("postgres").pw_uid})
    except KeyError:
        return frozenset()


def _unsafe_directory(directory: str) -> str | None:
    """Why another user could put a PostgreSQL socket in `directory` (None: nobody but its owner and group can):
    it, or a directory above it, belongs to a user other than root, this user and PostgreSQL's account (its owner
    may make the socket, or rename the directory and make another: intruder review of session 24, uid 4242's
    folder was taken), or is writable by every user. A sticky directory (/tmp) is allowed above it only before a
    directory of root's or this user's (nobody else may rename or replace that one)."""
    if directory.startswith("@"):
        return f"{directory} is an abstract socket name, which any local user can bind"
    given = Path(directory)
    try:
        real = given.resolve(strict=True)
    except (OSError, RuntimeError):
        return f"the socket directory {directory} does not exist (is PostgreSQL's socket there?)"
    if not real.is_dir():
        return f"{directory} is not a directory"
    trusted_owners = {0, os.geteuid()}
    for walk in dict.fromkeys((given, real)):  # the path as written (its links' folders) and as it resolves
        parts = walk.parts
        for depth in range(1, len(parts) + 1):
            folder = Path(*parts[:depth])
            info = folder.stat()
            if info.st_uid not in trusted_owners | _database_account():
                return (f"the socket directory {directory} is, or is inside, {folder}, which belongs to user id "
                        f"{info.st_uid} (not root, this user or PostgreSQL's account)")
            mode = info.st_mode
            if not mode & stat.S_IWOTH:
                continue
            if depth == len(parts):
                return f"the socket directory {folder} is writable by every user (mode {stat.S_IMODE(mode):o})"
            child = folder / parts[depth]
            if not (mode & stat.S_ISVTX and child.lstat().st_uid in trusted_owners):
                return (f"the socket directory {directory} is inside {folder}, which every user can write "
                        f"(mode {stat.S_IMODE(mode):o}), and {child} is not root's or this user's")
    return None


def _service_files() -> list[Path]:
    """Where libpq looks up a service (`service=NAME`, PGSERVICE): PGSERVICEFILE or ~/.pg_service.conf, then
    PGSYSCONFDIR's pg_service.conf (without it, the directory libpq was built with: /etc/postgresql-common for
    psycopg's libpq and Debian's)."""
    user = os.environ.get("PGSERVICEFILE") or str(Path.home() / ".pg_service.conf")
    system = Path(os.environ.get("PGSYSCONFDIR") or "/etc/postgresql-common") / "pg_service.conf"
    return [Path(user), system]


def _service_problems(service: str) -> list[str]:
    """Why the service `service`'s definition is not the operator's alone: a service file another user could write
    (libpq reads it again at every connection, so whatever the check saw, they could later name their own server),
    or a definition looked up in LDAP (`ldap://...` in its section: over the network, at every connection,
    answered by whoever is on the path; libpq asks it even in the probe, before any check)."""
    problems: list[str] = []
    for file in _service_files():
        reason = trust_file_problem(file, _database_account())
        if reason is not None:
            problems.append(f"the service file {file}: {reason}")
            continue
        try:
            lines = file.read_text(errors="replace").splitlines()
        except OSError:
            continue  # not there (and no one else may make it): libpq skips it too
        section = ""
        for line in lines:
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif section == service and line.startswith("ldap"):
                problems.append(f"the service {service} in {file} is looked up in LDAP ({line.split('?', 1)[0]}), over "
                                "the network at every connection, answered by whoever is on the path")
    return problems


def _service_named(url: str, field: str) -> str:
    """The service libpq will look up for `url`: the URL's `service` parameter, else PGSERVICE."""
    from sqlalchemy.exc import ArgumentError

    from ..errors import without_credentials

    try:
        params = libpq_params(url)
    except (ArgumentError, ValueError) as err:
        raise ConfigError(f"cannot read the URL {without_credentials(url)} ({type(err).__name__})", field=field) from None
    return params.get("service") or os.environ.get("PGSERVICE", "")


def _plain_ok_from_environment() -> bool:
    from pydantic import TypeAdapter
    from pydantic import ValidationError as Invalid

    value = os.environ.get(PLAIN_OK_VARIABLE, "")
    try:
        return bool(TypeAdapter(bool).validate_python(value)) if value else False
    except Invalid:
        raise ConfigError(f"must be 1 or 0 (true or false), not {value[:20]!r}", field=PLAIN_OK_VARIABLE) from None


def database_problems(url: str, field: str = "RINGFENCE_DATABASE_URL", *, mode: str | None = None,
                      plain_ok: bool | None = None) -> list[ConfigError]:
    """Why a node outside dev mode may not take the way libpq would to the PostgreSQL server at `url` (nothing for
    a SQLite URL, in dev mode or with RINGFENCE_DATABASE_PLAIN_OK=1), each naming `field`, the URL's variable or
    the command's option. `mode` and `plain_ok`: the Settings' (Settings.production_problems); by default
    RINGFENCE_MODE (anything but dev is strict) and RINGFENCE_DATABASE_PLAIN_OK of the environment, for a command
    that reads no Settings."""
    if not url.startswith("postgres"):
        return []
    if (os.environ.get("RINGFENCE_MODE", "dev") if mode is None else mode) == "dev":
        return []
    try:
        if plain_ok if plain_ok is not None else _plain_ok_from_environment():
            return []
        service = _service_named(url, field)
        if service:  # before the probe: libpq reads the service's definition there (from LDAP too)
            reasons = _service_problems(service)
            if reasons:
                return [ConfigError(f"names the PostgreSQL service {service}, and {reason}: libpq would connect where "
                                    f"that says. Outside dev mode keep pg_service.conf in folders only this user or "
                                    f"root may write, with the service's parameters in it, {_NO_OTHER_USERS}", field=field)
                        for reason in reasons]
        path = libpq_path(url, field)
    except ConfigError as err:
        return [err]
    problems: list[ConfigError] = []
    if path.tcp and path.sslmode in VERIFIED_SSLMODES and path.sslrootcert != "system":
        ca = path.sslrootcert or str(Path.home() / ".postgresql" / "root.crt")  # libpq's default
        reason = trust_file_problem(ca, _database_account())
        if reason is not None:
            problems.append(ConfigError(
                f"verifies the server's certificate against sslrootcert {ca}, and {reason}: they could make it their "
                "own CA, and libpq would send the database password to their server. Outside dev mode keep the CA "
                f"file in folders only this user or root may write (/etc/ringfence/pg-ca.pem), {_NO_OTHER_USERS}",
                field=field))
    if path.tcp and path.sslmode not in VERIFIED_SSLMODES:
        problems.append(ConfigError(
            f"connects over TCP to {', '.join(path.tcp)} with sslmode={path.sslmode} ({path.sslmode_from}), which does "
            "not verify the server's certificate: whoever listens there (any local user, on a port >= 1024 while "
            "PostgreSQL is down) would get the database password and could answer with a fake identity database. "
            "Outside dev mode add sslmode=verify-full (or verify-ca) and sslrootcert=CA_FILE to the URL, connect "
            f"over a Unix socket only PostgreSQL's user can write (?host=/var/run/postgresql), {_NO_OTHER_USERS}",
            field=field))
    for directory in path.sockets:
        reason = _unsafe_directory(directory)
        if reason is not None:
            problems.append(ConfigError(
                f"connects over a Unix socket, and {reason}: any local user could put a socket .s.PGSQL.{path.port} "
                "there while PostgreSQL is down, get the database password and answer with a fake identity "
                "database. Outside dev mode use a socket directory only PostgreSQL's user can write (e.g. "
                f"/var/run/postgresql), TCP with sslmode=verify-full, {_NO_OTHER_USERS}", field=field))
    return problems
