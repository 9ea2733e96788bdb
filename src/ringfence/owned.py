"""Files and folders no other user can change: the one check behind every secret file a node reads
(node.key, a backup's --sign-key, a staff key file, replication-epoch.json) and every private folder it
writes into (nats-config's --out and --store-dir, backup create/restore --to).

Another local user must not be able to put a file of theirs where this user looks for its own (the
intruder reviews of sessions 22 and 23: a node.key uid 4242 planted became the node's signing key, a
restored data directory was swapped under a folder they could write, their --store-dir let them delete
the stream). The rule, as ssh's StrictModes has it:

* the file or folder itself belongs to this user and is not a symbolic link;
* a folder, and every folder above it (after symbolic links are resolved), belongs to this user or to
  root and may not be written by anyone else, unless it has the sticky bit (`/tmp`: others can make
  entries there but never rename or remove this user's).

Every refusal is a ConfigError naming the option and the path, and says what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["others_may_write", "refuse_unless_own", "safe_folder", "nearest_existing", "open_own_folder", "read_own_file",
           "make_own_folder", "trust_file_problem"]


def others_may_write(mode: int) -> bool:
    """Whether users other than the owner may rename or remove entries of a folder with this mode."""
    return bool(mode & 0o022) and not mode & stat.S_ISVTX


def refuse_unless_own(info: os.stat_result, shown: object, field: str, risk: str, remedy: str, *,
                      others_write_ok: bool = False) -> None:
    """A ConfigError unless `info` (of `shown`) belongs to this user and, a folder, others may not write it
    (unless `others_write_ok`: a caller that makes it private itself)."""
    me = os.geteuid()
    if info.st_uid != me:
        raise ConfigError(f"{shown} belongs to user id {info.st_uid}, not to this user ({me}): its owner {risk}; "
                          f"{remedy}", field=field)
    if stat.S_ISDIR(info.st_mode) and others_may_write(info.st_mode) and not others_write_ok:
        raise ConfigError(f"{shown} may be written by other users (mode {info.st_mode & 0o7777:04o}): they {risk}; "
                          f"make it 0700 (chmod 700) or {remedy}", field=field)


def safe_folder(folder: Path, field: str, risk: str, remedy: str) -> Path:
    """`folder` with its symbolic links resolved, once it and every folder above it belong to this user
    or root and no one else may write them (sticky folders aside). The caller goes on through the path
    returned, never `folder` itself: a link in `folder` someone could change later is not followed again."""
    real = Path(os.path.realpath(folder))
    me = os.geteuid()
    for each in (real, *real.parents):
        shown = each if each == real else f"{each} (holding {folder})"
        try:  # lstat: a folder swapped for a symbolic link after realpath() looked is not followed, but refused
            info = os.lstat(each)
        except OSError as err:
            raise ConfigError(f"{shown} cannot be checked: {err.strerror}", field=field) from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{shown} changed while it was checked (it is no longer a folder but "
                              f"{'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'a file'}); {remedy}", field=field)
        if info.st_uid not in (me, 0):
            raise ConfigError(f"{shown} belongs to user id {info.st_uid}: its owner {risk}; {remedy}", field=field)
        if others_may_write(info.st_mode):
            raise ConfigError(f"{shown} may be written by other users (mode "
                              f"{info.st_mode & 0o7777:04o}, no sticky bit): they {risk}; make it 0755 or 0700 "
                              f"(chmod go-w), or {remedy}", field=field)
    return real


def make_own_folder(path: Path, field: str, risk: str, remedy: str) -> Path:
    """`path` made (0700) unless it is there, then checked as it now is (lstat, never following a link): a real
    folder of this user's that no one else may write, sticky or not. For a folder made with exist_ok inside a
    checked one (serve's DIR/run): one someone else made there earlier is refused, not written into (intruder
    review of session 23: uid 4242's DIR/run held the engine's socket). Its parent must exist."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling link: lstat below says which
    except OSError as err:
        raise ConfigError(f"{path} cannot be made: {err.strerror}", field=field) from None
    try:
        info = os.lstat(path)
    except OSError as err:
        raise ConfigError(f"{path} cannot be checked: {err.strerror}", field=field) from None
    if not stat.S_ISDIR(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
        raise ConfigError(f"{path} is {kind}: whoever made it {risk}; {remedy}", field=field)
    refuse_unless_own(info, path, field, risk, remedy)
    if info.st_mode & 0o022:
        raise ConfigError(f"{path} may be written by other users (mode {info.st_mode & 0o7777:04o}): they {risk}; "
                          f"chmod 700 {path}, or {remedy}", field=field)
    return path


def nearest_existing(path: Path) -> Path:
    """`path` (made absolute) or the nearest folder above it that exists: what `safe_folder` checks
    before anything is made under it."""
    path = path.absolute()
    while not path.is_dir():
        path = path.parent
    return path


def open_own_folder(path: Path, field: str, risk: str, remedy: str, *, above: bool = True,
                    others_write_ok: bool = False) -> int:
    """`path`, a folder of this user's that others may not write (see refuse_unless_own), opened once
    without following a symbolic link (O_DIRECTORY|O_NOFOLLOW); with `above`, the folders holding it
    pass `safe_folder` (without, the caller checked them). The caller writes through the descriptor
    returned (`/proc/self/fd/N`) and closes it. FileNotFoundError when there is no `path`."""
    where = safe_folder(path.absolute().parent, field, risk, remedy) / path.name if above else path
    try:
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigError(f"{path} is not a folder (a symbolic link or a file); {remedy}", field=field) from None
        raise ConfigError(f"{path} cannot be opened: {err.strerror}", field=field) from None
    try:
        refuse_unless_own(os.fstat(fd), path, field, risk, remedy, others_write_ok=others_write_ok)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own_file(path: Path, field: str, what: str, *, private: bool = True) -> bytes:
    """The bytes of `path`, a regular file of this user's (not a symbolic link), in a folder that passes
    `safe_folder`; with `private`, one no other user may read or write (mode 0600 or narrower).
    FileNotFoundError when it is not there; a ConfigError naming `field` for anything else."""
    remedy = f"keep {what} in a folder of this user's (chmod 700) and make the file again there"
    risk = f"could put a {what} of theirs in its place"
    where = safe_folder(path.absolute().parent, field, risk, remedy) / path.name
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise
        if err.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link: {what} is read only from the file itself, so that no "
                              "one can point it elsewhere; give the file's own path", field=field) from None
        raise ConfigError(f"{path} cannot be read: {err.strerror}", field=field) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path} is not a regular file; {what} is a file", field=field)
        refuse_unless_own(info, path, field, risk, remedy)
        if private and info.st_mode & 0o077:
            raise ConfigError(f"{path} is readable by other users; chmod 600 it", field=field)
        return fh.read()


def trust_file_problem(path: str | Path, trusted: frozenset[int] = frozenset()) -> str | None:
    """Why another local user could decide what a file a client trusts holds (a CA certificate libpq or the NATS
    client verifies the server against, a pg_service.conf saying where the database is), or None when they cannot.
    Such a file is read again at every connection, so a check at start is worth only as much as this: the file,
    once it is there, belongs to this user, root or an owner in `trusted` (the database's own account) and nobody
    else may write it; every folder above it, as written and as its links resolve, too (a sticky folder such as /tmp
    above it aside); and a file not there yet may not be made by others (its nearest folder is not writable by
    others at all, sticky or not). A relative path is the current directory's, as libpq and ssl take it (intruder
    review of session 24: uid 4242's CA in a folder of theirs made libpq's verify-full take their server)."""
    owners = {0, os.geteuid(), *trusted}
    given = Path(os.path.abspath(path))
    real = Path(os.path.realpath(given))
    for walk in dict.fromkeys((given, real)):
        for folder in reversed(walk.parents):
            try:
                info = os.stat(folder)
            except FileNotFoundError:
                break  # made later only by whoever may write the folder above, checked below
            except OSError as err:
                return f"{folder} cannot be checked ({err.strerror})"
            if info.st_uid not in owners:
                return f"the folder {folder} belongs to user id {info.st_uid}, who could put another file at {path}"
            if others_may_write(info.st_mode):
                return (f"the folder {folder} may be written by other users (mode {info.st_mode & 0o7777:04o}, no sticky "
                        f"bit), who could put another file at {path}")
    try:
        info = os.stat(real)
    except FileNotFoundError:
        holder = nearest_existing(real.parent)
        if os.stat(holder).st_mode & 0o022:
            return f"{path} is not there, and other users may make it in {holder}"
        return None
    except OSError as err:
        return f"{path} cannot be checked ({err.strerror})"
    if info.st_uid not in owners:
        return f"{path} belongs to user id {info.st_uid}, who could write what it holds"
    if info.st_mode & 0o022:
        return f"{path} may be written by other users (mode {info.st_mode & 0o7777:04o})"
    return None
