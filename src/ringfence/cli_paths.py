"""Data-directory checks shared by every `ringfence` command that takes `--data` or `DIR`.

One place decides what a usable folder is, so every command answers a file, an unwritable path
or a folder that is not a node's data directory with the same clear message (exit 2), never a
traceback, and an inspection command never creates the folder it was asked to read.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import typer
from rich.console import Console

__all__ = [
    "fail",
    "say_error",
    "command_settings",
    "open_store",
    "tty_console",
    "check_new_dir",
    "prepare_data_dir",
    "prepare_node_dir",
    "refuse_foreign_data_dir",
    "refuse_foreign_writer",
    "refuse_missing_parent",
    "require_node_dir",
    "require_input_file",
    "ENGINE_SUBDIR",
    "DEFAULT_URL",
]

#: The running node a console command talks to (`--url`): $RINGFENCE_URL, or `serve`'s own default. Here, not
#: in staff/console.py, so a command that only names it (`--url` in its help) does not import httpx.
DEFAULT_URL = os.environ.get("RINGFENCE_URL", "http://127.0.0.1:8000")

#: Where `ringfence serve --data DIR` keeps its engine node (journal, snapshots): `DIR/engine`.
ENGINE_SUBDIR = "engine"


def tty_console(stderr: bool = False, width: int = 140) -> Console:
    """A rich console for a command's output: the terminal's width on a terminal; `width` columns
    when piped or captured, so tables are not cut to rich's 80-column default."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else width)


def say_error(message: str) -> None:
    """One `error:` line on stderr (a command that has several to say before it `fail`s)."""
    from rich.markup import escape

    # escaped: a field such as `--peers[b]` is text, not a rich style tag (it vanished from the line)
    tty_console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")


def fail(message: str, code: int = 2) -> None:
    say_error(message)
    raise typer.Exit(code)


def command_settings(**overrides: object):  # type: ignore[no-untyped-def]
    """`load_settings(**overrides)` for a command: every bad RINGFENCE_ variable, or every reason prod mode refuses
    the configuration (Settings.production_problems: a default secret, the database's path...), one `error:` line
    each, then exit 2, never a traceback."""
    from pydantic import ValidationError as SettingsInvalid

    from .settings import Settings, settings_errors

    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except SettingsInvalid as err:
        lines = settings_errors(err)
    else:
        lines = [str(problem) for problem in settings.production_problems()]
    for line in lines[:-1]:
        say_error(line)
    if lines:
        fail(lines[-1])
    return settings


def open_store(url: str, option: str = "RINGFENCE_DATABASE_URL"):  # type: ignore[no-untyped-def]
    """`Store.from_url(url)` for a command: a URL it does not take or a database it cannot open ends the
    command with one `error:` line naming where the URL came from (`option`: the setting by default, or
    the command's own option such as --database-url), exit 2, as `serve` does. Outside dev mode (RINGFENCE_MODE)
    a PostgreSQL URL is first checked as serve checks it (store/transport.py: TCP only with sslmode=verify-full
    or verify-ca, a socket only in a directory no other user can write, or RINGFENCE_DATABASE_PLAIN_OK=1):
    refused before anything connects."""
    from .errors import RingfenceError
    from .store import Store
    from .store.transport import database_problems

    problems = [str(problem) for problem in database_problems(url, option)]
    for problem in problems[:-1]:
        say_error(problem)
    if problems:
        fail(problems[-1])
    try:
        return Store.from_url(url)
    except RingfenceError as err:
        fail(f"{option}: {err.message}" if err.field == "RINGFENCE_DATABASE_URL" else str(err))


_IN_USE_HINT = (
    "only one process may write a journal. Stop that process first, or send the change to it "
    "(read-only commands such as `ringfence journal verify` work while it runs)"
)


def _refuse_node_dirs(path: Path, option: str, *, include_self: bool) -> None:
    """Refuse `path` when it (with include_self) or any folder above it is a node directory."""
    from .journal.journal import is_node_dir, lock_holder

    try:
        resolved = path.resolve()
    except OSError:
        resolved = path.absolute()
    for where in ([resolved] if include_self else []) + list(resolved.parents):
        if not is_node_dir(where):
            continue
        holder = lock_holder(where)
        if where == resolved:
            what = (f"{path} is a node directory (it holds a journal or a LOCK); this command needs a folder of its "
                    "own (`ringfence serve --data DIR` keeps its node in DIR/engine: give DIR)")
        else:
            what = (f"{path} is inside the node directory {where}; a node must not be created inside another "
                    "node's directory. Choose a folder outside it")
        if holder is not None:
            fail(f"{option}: {where} is in use by {holder[0]}: {what}", 1)
        fail(f"{option}: {what}")


def refuse_foreign_writer(path: Path, option: str = "--data") -> None:
    """Refuse, before anything is created, a writer aimed at another process's node or beside/inside one.

    In order: a lock on `path` held by another process (named by pid, exit 1); a `ringfence serve`
    data directory (`path/engine/journal`: its holder's pid first when the server runs); a folder
    inside another node's directory. Never creates or locks anything.
    """
    from .errors import DataDirLocked, RingfenceError
    from .journal.journal import check_node_placement, lock_holder

    holder = lock_holder(path) if path.is_dir() else None
    if holder is not None:
        fail(f"{option}: {path} is in use by {holder[0]}; {_IN_USE_HINT}", 1)
    try:
        check_node_placement(path)
    except DataDirLocked as err:
        fail(f"{option}: {err.message}", 1)
    except RingfenceError as err:
        fail(f"{option}: {err.message}")


#: What a data directory holds that a node opens as its own: checked at start by `refuse_foreign_data_dir`.
_OWN_ENTRIES = (ENGINE_SUBDIR, "identity.sqlite3", "identity.sqlite3-wal", "identity.sqlite3-shm",
                "identity.sqlite3-journal")
_DATA_RISK = "could read or change the node's users, sessions, API keys and journal, or swap them for theirs"


def _check_entry(info: os.stat_result, shown: Path, option: str, remedy: str, *, link_hint: str,
                 files_any_mode: bool) -> None:
    """`shown` (lstat `info`) is not a symbolic link, is this user's and, unlike `owned.refuse_unless_own`, may
    not be written by others even with the sticky bit (a folder; a file too unless `files_any_mode`)."""
    from .errors import ConfigError
    from .owned import refuse_unless_own

    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{shown} is a symbolic link (to {os.path.realpath(shown)}): whoever may change it decides "
                          f"where the node writes; {link_hint}{remedy}", field=option)
    refuse_unless_own(info, shown, option, _DATA_RISK, remedy)
    if (stat.S_ISDIR(info.st_mode) or not files_any_mode) and info.st_mode & 0o022:
        raise ConfigError(f"{shown} may be written by other users (mode {info.st_mode & 0o7777:04o}): they "
                          f"{_DATA_RISK}; chmod 700 {shown}, or {remedy}", field=option)


def _check_own_entry(info: os.stat_result, shown: Path, option: str, remedy: str) -> None:
    """The data directory itself, engine/ and identity.sqlite3*: others could make its entries before a first
    start, so not even a file of it may be written by others."""
    _check_entry(info, shown, option, remedy, link_hint="give the folder's own path, or ", files_any_mode=False)


def _check_other_entry(info: os.stat_result, shown: Path, option: str) -> None:
    """Any other entry of a data directory: a file of this user's may have any mode (a node's own files are
    made 0600)."""
    remedy = (f"it is not the node's: move it out of {shown.parent} (check what it holds first), or give {option} a new "
              "folder of this user's (mkdir -m 700 DIR)")
    _check_entry(info, shown, option, remedy, link_hint="", files_any_mode=True)


def refuse_foreign_data_dir(path: Path, option: str = "--data") -> None:
    """Refuse (exit 2, naming `option`) a data directory another local user could change: `path` must be
    this user's, not a symbolic link, not writable by others (sticky or not), and every folder above it
    this user's or root's and closed to others (owned.safe_folder, as for node.key); of what is already in
    it, engine/ and identity.sqlite3{,-wal,-shm,-journal} must be this user's, not links and closed to others,
    and every other entry this user's, not a link and, a folder, closed to others (run/, gpg/, ...). When `path` is
    not there yet, the nearest folder above it that exists is checked: nothing is made under a folder
    someone else could swap (intruder review of session 23: uid 4242's identity.sqlite3-wal adopted by
    root's node). Called before anything is made, and again once the folder is."""
    from .errors import ConfigError
    from .owned import nearest_existing, safe_folder

    remedy = (f"give {option} a folder of this user's that no one else may write (a new one: mkdir -m 700 DIR), "
              "in folders only this user or root may write")
    try:
        try:
            info: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None:
            _check_own_entry(info, path, option, remedy)
        real = safe_folder(nearest_existing(path), option, _DATA_RISK, remedy)
        if info is None or not stat.S_ISDIR(info.st_mode):
            return  # nothing in it yet; or not a folder, which the caller's own check names (`real` is then above it)
        for name in _OWN_ENTRIES:
            try:
                entry = os.lstat(real / name)
            except FileNotFoundError:
                continue
            _check_own_entry(entry, path / name, option, remedy)
        # every other entry too: the node makes run/ (its engine socket), gpg/, por/, custody/... with exist_ok,
        # so one another user made there earlier would be written into (intruder review of session 23: DIR/run)
        with os.scandir(real) as entries:
            names = sorted(each.name for each in entries if each.name not in _OWN_ENTRIES)
        for name in names:
            try:
                entry = os.lstat(real / name)
            except FileNotFoundError:
                continue
            _check_other_entry(entry, path / name, option)
    except ConfigError as err:
        fail(f"{option}: {err.message}")


def refuse_missing_parent(path: Path, option: str = "--data", what: str = "a data directory") -> None:
    """A mistyped data directory must not become a tree of new folders: the directory itself is made,
    and missing folders above it only inside the current directory (the quick start's
    `./ringfence-data/serve` in a fresh clone, where ./ringfence-data is not there yet). Elsewhere (a
    service's unit file's absolute path) its parent must exist: `--data /srv/ringfnce/node1` made
    /srv/ringfnce and started an empty exchange in it. "Inside" is decided on where the existing part of
    the path really is (symlinks resolved), not on its text: `new/x`, `$PWD/new/x` and `../cwd/new/x` are
    the same place; a symlink in the current directory that leads out of it is outside. A path starting
    with `~` is refused with a hint: the shell did not expand it (`--data=~/x`), and `./~/x` is never meant.
    Refused before anything is created, naming the option, what the path is for (`what`: staff init's
    --out-dir is "the key files' folder") and the missing folder (exit 2)."""
    if str(path).startswith("~"):
        fail(f"{option}: {path} starts with ~, which the shell did not expand (it does not after --opt=); "
             f"write {option} ~/... with a space, or $HOME/... , so the folder is not made as ./~")
    parent = Path(os.path.abspath(path)).parent
    if parent.exists():  # (a file there: the mkdir that follows says so)
        return
    first_missing = parent
    while not first_missing.parent.exists():
        first_missing = first_missing.parent
    try:
        inside = first_missing.parent.resolve().is_relative_to(Path.cwd().resolve())
    except OSError:
        inside = False
    if inside:
        return
    nor = "" if first_missing == parent else f" (nor does {first_missing})"
    fail(f"{option}: {parent} does not exist{nor}: {what} is made only in a folder that exists, so a "
         f"mistyped path does not become new folders; check the path, or make its parent first (mkdir -p {parent})")


def prepare_node_dir(path: Path, option: str = "--data", *, named: Path | None = None) -> Path:
    """The node directory a writer opens, given what the user typed, created if absent.

    Resolves like `require_node_dir`: the DIR `serve --data` takes means its node, `DIR/engine`
    (so a running server's lock refuses the writer with its pid); both layouts at once is refused.
    A directory inside another node's directory is refused before anything is created; so is one
    whose parent does not exist (`refuse_missing_parent`; of `named`, the folder the user typed,
    when `path` is a folder the command appends to it, such as `staff init`'s DIR/engine); so is a folder
    another user owns or may write (`refuse_foreign_data_dir`, on what was typed and on the node directory).
    """
    if path.exists() and not path.is_dir():
        fail(f"{option}: {path} is a file, not a folder")
    typed = path
    if path.is_dir():
        direct = (path / "journal").is_dir()
        nested = (path / ENGINE_SUBDIR / "journal").is_dir()
        if direct and nested:
            fail(f"{option}: {path} holds both journal/ and {ENGINE_SUBDIR}/journal/; name the one you mean "
                 f"({path} or {path / ENGINE_SUBDIR})")
        if nested:
            path = path / ENGINE_SUBDIR
    refuse_foreign_writer(path, option)
    for each in dict.fromkeys((named or typed, typed, path)):  # the folder typed, and DIR/engine when that is the node
        refuse_foreign_data_dir(each, option)
    if not path.is_dir():
        refuse_missing_parent(named or path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option}: cannot create {path}: {err.strerror or err}")
    refuse_foreign_data_dir(path, option)  # again once made: through the folder checked, not a link put there since
    return path


def check_new_dir(path: Path, option: str = "--data", *, empty: bool = False) -> None:
    """What `prepare_data_dir` refuses, checked without creating anything: a file, a node directory
    or a folder inside one, and (with `empty`) a folder that already holds something."""
    if path.exists() and not path.is_dir():
        fail(f"{option}: {path} is a file, not a folder")
    _refuse_node_dirs(path, option, include_self=True)
    if empty and path.is_dir() and any(path.iterdir()):
        fail(f"{option}: {path} is not empty; use a new folder")


def prepare_data_dir(path: Path, option: str = "--data") -> Path:
    """A folder to write into: created if absent; a file or an uncreatable path is refused.

    So is a node directory, or any folder inside one (before anything is created): the folder is
    the command's own (`serve --data DIR` keeps its node in DIR/engine), never nested in another
    node's. A running holder is named by pid (exit 1). So is a path whose parent does not exist,
    outside the current directory (`refuse_missing_parent`: a mistyped path), and a folder another
    user owns or may write, or one under such a folder (`refuse_foreign_data_dir`).
    """
    check_new_dir(path, option)
    refuse_foreign_data_dir(path, option)  # another user's folder, or one they may write: before anything is made
    if not path.is_dir():
        refuse_missing_parent(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option}: cannot create {path}: {err.strerror or err}")
    refuse_foreign_data_dir(path, option)  # again once made (as nodekey.load_or_create)
    return path


def require_node_dir(path: Path, option: str = "DIR", *, journal_under: str = "journal") -> Path:
    """The engine node directory to read or write, given the data directory a command was handed.

    Accepts both what `ringfence serve --data DIR` takes (`DIR`, whose node lives in `DIR/engine`)
    and a node directory itself (`DIR/engine`, or the folder `ringfence demo` writes): whichever
    of `DIR/journal/` and `DIR/engine/journal/` exists. Both existing is refused as ambiguous
    rather than guessed. Returns the node directory; never creates anything.
    """
    if not path.exists():
        fail(f"{option}: {path} does not exist; give the data directory of a ringfence node")
    if not path.is_dir():
        fail(f"{option}: {path} is not a directory")
    direct = (path / journal_under).is_dir()
    nested = (path / ENGINE_SUBDIR / journal_under).is_dir()
    if direct and nested:
        fail(
            f"{option}: {path} holds both {journal_under}/ and {ENGINE_SUBDIR}/{journal_under}/; name the one you mean "
            f"({path} or {path / ENGINE_SUBDIR})"
        )
    if nested:
        return path / ENGINE_SUBDIR
    if not direct:
        fail(
            f"{option}: {path} has no {journal_under}/ folder (nor {ENGINE_SUBDIR}/{journal_under}/); is it a ringfence "
            "data directory? (`ringfence serve --data DIR` writes DIR/engine/journal)"
        )
    return path


def require_input_file(path: Path, option: str) -> Path:
    """An input file that must exist and be a readable file: a missing input is an error, never 'empty'."""
    if not path.exists():
        fail(f"{option}: {path} does not exist")
    if not path.is_file():
        fail(f"{option}: {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        fail(f"{option}: cannot read {path}: {err.strerror or err}")
    return path
