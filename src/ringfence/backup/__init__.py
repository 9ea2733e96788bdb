"""Backups of a node: a consistent copy of the journal, a verified snapshot, and restore to any sequence.

A backup is made *beside* a running node, never as a second writer of its directory: the journal's
segments are copied read-only (the durable mark is read first, so everything it names is already
on disk when the segments are read), the copy is cut back to its last complete record (a batch the
writer was still appending is left out, as recovery would leave it), and the copy is replayed from
genesis. The replay proves every record decodes and applies, checks the node's own snapshots
against the replayed state at their positions, and writes the backup's snapshot at its last
sequence. The SQLite identity database (embedded profile) is copied with SQLite's online backup
API; a PostgreSQL profile is backed up with the database's own tools (`pg_dump`).

Layout of BACKUPDIR (a node directory, so `journal verify BACKUPDIR` reads it too):

```
MANIFEST.json             what was copied: sequence, chain head, state hash, SHA-256 of every file;
                          signed with the writing node's Ed25519 key (see "The manifest's signature")
journal/*.rfj, DURABLE    the journal up to the backup's last sequence
snapshots/<seq>.snap      the engine state at that sequence (its state hash is in the manifest)
identity.sqlite3          the identity database, when the node used SQLite
```

Invariants: a backup's journal is a byte-identical prefix of the node's; its manifest is written
last (a backup without one is incomplete and refused); a restore to sequence N rebuilds exactly the
state the node had after command N (same state hash as replaying the node's journal to N).

The manifest's signature: the SHA-256 of every file is only worth what the manifest is worth, so
the manifest is signed with the key of the node that wrote it (`DATA_DIR/node.key`, ringfence.nodekey)
and `verify`/`restore` check it against a trust file (node id -> public key) kept apart from the
backups, before anything else is read or written. The rule for the signed bytes:

    b"ringfence-backup-manifest/1\n" + json.dumps(manifest without "signature", sort_keys=True,
                                                  separators=(",", ":"), ensure_ascii=True).encode()

`manifest["signer"]` = {"node_id", "public_key"} is part of the signed bytes and is information
only: the key checked is the trust file's for that node id, never one the backup names. The
signature is `manifest["signature"]`, 128 lower-case hex digits (64 bytes of Ed25519). MANIFEST.json
must be exactly the bytes `render_manifest` gives for its content (JSON, indent 2, keys sorted,
ASCII), so no byte of a signed manifest can change without the check failing.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError, JournalCorrupt, RingfenceError, SnapshotInvalid, ValidationError
from ..owned import nearest_existing, open_own_folder, safe_folder
from ..journal.journal import (
    DURABLE_FILE as _DURABLE_FILE,
    GENESIS_HASH,
    HEADER_SIZE,
    TRAILER_SIZE,
    DataDirLock,
    DurableMark,
    JournalWriter,
    Record,
    read_durable_mark,
    scan,
    segment_paths,
    write_durable_mark,
)

__all__ = ["BackupInvalid", "BackupReport", "BackupSigner", "create_backup", "verify_backup", "restore_backup",
           "load_manifest", "render_manifest", "signed_bytes", "MANIFEST", "FORMAT"]

MANIFEST = "MANIFEST.json"
FORMAT = "ringfence-backup/1"
IDENTITY_FILE = "identity.sqlite3"
PG_DUMP_FILE = "identity.pgdump"
COPY_CHUNK_BYTES = 4 * 1024 * 1024
SIGNATURE_DOMAIN = b"ringfence-backup-manifest/1\n"
UNTRUSTED = "NOT TRUSTED"
MANIFEST_MAX_BYTES = 16 * 1024 * 1024  # a manifest lists one line per segment: far below this

Progress = Callable[[str, int, int], None]  # (phase, done, total)


class BackupInvalid(RingfenceError, ValueError):
    code = "RF_BACKUP_INVALID"
    http_status = 422
    default_message = "the backup is incomplete or damaged"


class _RawBatch(msgspec.Struct, frozen=True, array_like=True):
    """A journal payload with its commands left encoded (cutting a batch keeps their exact bytes)."""

    first_seq: int
    ts_ns: int
    entropy: bytes
    commands: list[msgspec.Raw]


@dataclass(frozen=True)
class BackupSigner:
    """Who writes a backup: the node id operators list in their trust file, and that node's key."""

    node_id: str
    key: Ed25519PrivateKey


@dataclass
class BackupReport:
    """What a create, verify or restore found; `problems` empty means it passed."""

    directory: str
    last_seq: int = 0
    records: int = 0
    commands: int = 0
    chain_head: str = ""
    state_hash: str = ""
    segments: int = 0
    bytes: int = 0
    identity: str = "none"
    signer: str = ""
    trusted: bool = True  # False: accepted with --allow-unsigned although no trusted node signed it
    created_at: str = ""  # the manifest's, so the operator sees which backup (an older one swapped in?)
    manifest_last_seq: int = 0
    snapshots_checked: list[tuple[int, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _noop(_phase: str, _done: int, _total: int) -> None:
    return None


def _copy_segments(src_journal: Path, dest_journal: Path, progress: Progress) -> DurableMark | None:
    """Copy every segment read-only; the durable mark is read first so it never names unread bytes."""
    mark = read_durable_mark(src_journal)
    paths = segment_paths(src_journal)
    total = sum(p.stat().st_size for p in paths)
    done = 0
    dest_journal.mkdir(parents=True)
    for path in paths:
        with open(path, "rb") as src, open(dest_journal / path.name, "wb") as out:
            while chunk := src.read(COPY_CHUNK_BYTES):
                out.write(chunk)
                done += len(chunk)
                progress("copying journal", done, total)
            out.flush()
            os.fsync(out.fileno())
    return mark


def _scan_to_end(journal_dir: Path, *, truncate: bool) -> Any:
    gen = scan(journal_dir, truncate=truncate)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _replay(node_dir: Path, total: int, progress: Progress, check: dict[int, str] | None = None,
            until_seq: int | None = None) -> tuple[Any, Any, list[tuple[int, bool]]]:
    from ..app import replay_journal

    checked: list[tuple[int, bool]] = []
    done = [0]

    def on_batch(engine: Any, batch: Any, outputs: list[Any]) -> None:
        last = batch.first_seq + len(outputs) - 1
        if check and last in check:
            checked.append((last, engine.state_hash() == check[last]))

    def step(n: int) -> None:
        done[0] += n
        progress("replaying", done[0], total)

    engine, report, _ = replay_journal(node_dir, use_snapshots=False, on_batch=on_batch, progress=step, until_seq=until_seq)
    return engine, report, checked


def _node_snapshot_hashes(src_node: Path, up_to_seq: int) -> dict[int, str]:
    """State hashes the node recorded in its snapshots (a snapshot deleted while we look is skipped)."""
    from ..engine.snapshot import list_snapshots, read_snapshot

    out: dict[int, str] = {}
    for path in list_snapshots(src_node / "snapshots"):
        try:
            info = read_snapshot(path)
        except (OSError, SnapshotInvalid):
            continue
        if info.seq <= up_to_seq:
            out[info.seq] = info.state_hash
    return out


def _write_engine_snapshot(engine: Any, snap_dir: Path, journal_hash: bytes) -> Path:
    from ..engine.snapshot import write_snapshot

    payload = engine.snapshot_bytes()
    return write_snapshot(snap_dir, engine.last_seq, hashlib.sha256(payload).hexdigest(), journal_hash, payload, keep=1)


def _copy_identity(src: Path, dest: Path) -> None:
    """SQLite's online backup: a consistent copy even while the server writes (WAL mode)."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


#: libpq's parameters that name a file, relative to the current directory
_LIBPQ_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir", "passfile", "sslkeylogfile")


def _pg(tool: str, url: str, args: list[str]) -> str:
    """Run pg_dump / pg_restore against a SQLAlchemy URL, with the parameters psycopg gets for it (store/transport.py
    `libpq_params`: sslmode, sslrootcert and a socket host too, which were dropped, so pg_dump connected over TCP
    without TLS where serve used a verified one); the password goes in PGPASSWORD, not argv."""
    import subprocess

    from psycopg.conninfo import make_conninfo

    from ..store.transport import libpq_params

    params = libpq_params(url)
    env = dict(os.environ)
    if "password" in params:
        env["PGPASSWORD"] = params.pop("password")
    for name in _LIBPQ_FILES:  # named as this process (psycopg, the prod check) takes them: from its directory
        if params.get(name) and not (name == "sslrootcert" and params[name] == "system"):
            params[name] = os.path.abspath(params[name])
    conn = ["--dbname", make_conninfo("", **params)]
    binary = shutil.which(tool)
    if binary is None:
        raise ConfigError(f"{tool} is not installed; it is needed for the PostgreSQL identity database",
                          field="RINGFENCE_DATABASE_URL")
    # run in /: the tools' libpq may be older than psycopg's, which the prod check asked (here libpq 15 against 18):
    # one before 16 reads sslrootcert=system as the file ./system, and in a folder another user may write that was
    # their CA, so pg_dump sent the password to their server (intruder review of session 24); /system is root's
    proc = subprocess.run([binary, *conn, *args], env=env, capture_output=True, text=True, timeout=3600, cwd="/")
    if proc.returncode != 0:
        raise ConfigError(f"{tool} failed: {proc.stderr.strip()[:500]}", field="RINGFENCE_DATABASE_URL")
    return proc.stdout


def render_manifest(manifest: dict[str, Any]) -> bytes:
    """MANIFEST.json's exact bytes for `manifest` (the only layout a signed manifest may have)."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")


def signed_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes the signature covers: the domain line, then the manifest without "signature" (module doc)."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return SIGNATURE_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _sign_manifest(manifest: dict[str, Any], signer: BackupSigner) -> dict[str, Any]:
    from ..nodekey import public_hex

    signed = dict(manifest, signer={"node_id": signer.node_id, "public_key": public_hex(signer.key)})
    signed["signature"] = signer.key.sign(signed_bytes(signed)).hex()
    return signed


def _write_manifest(dest: Path, manifest: dict[str, Any]) -> None:
    tmp = dest / (MANIFEST + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(render_manifest(manifest))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest / MANIFEST)


def create_backup(src_node: Path, dest: Path, *, signer: BackupSigner, identity_db: Path | None = None,
                  identity_pg_url: str | None = None, progress: Progress = _noop) -> BackupReport:
    """Copy `src_node`'s journal (read-only; the node may be running) into the new folder `dest`;
    the manifest is signed by `signer`. A PostgreSQL identity database that cannot be reached is
    refused before `dest` is made."""
    _check_node_id(signer.node_id, "--node-id")
    if identity_pg_url:
        _open_database(identity_pg_url)  # a bad URL fails here, not after minutes of copying
    fd = _open_backup_folder(dest)
    try:
        return _create_in(src_node, _proc_fd(fd), str(dest), signer, identity_db,
                          identity_pg_url, progress)
    finally:
        os.close(fd)


def _open_backup_folder(dest: Path) -> int:
    """`dest`, made (0700) or taken when it is an empty folder of this user, opened once without following a
    symbolic link. Everything `create` writes, reads back, hashes and signs goes through this descriptor
    (`/proc/PID/fd/N`), in a folder nobody else may enter: a folder put in its place later by whoever may
    write the folder above, or changed by whoever owns it, is never written into nor read (intruder review
    of session 22, B1: the intruder pre-made tomorrow's dated folder in a shared backup area, put its own
    journal in place of the copy while `create` ran, and the node signed a backup with a batch the node
    never journaled; `verify` and `restore` said OK)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the folder {dest.parent} for {dest}: {err.strerror}", field="--to") from None
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        pass  # an empty folder of this user (a mount point, a folder made for the occasion): checked below
    except OSError as err:
        raise ConfigError(f"cannot create {dest}: {err.strerror}", field="--to") from None
    try:  # (the folders above are not checked: whoever may write them can move the backup, never forge its signature)
        fd = open_own_folder(dest, "--to", "could change the backup while it is made and have this node sign it",
                             "a backup goes into a new folder, or an empty one this user owns", above=False,
                             others_write_ok=True)  # (made private below)
    except FileNotFoundError:
        raise ConfigError(f"{dest} was removed as it was made; a backup goes into a new folder", field="--to") from None
    try:
        if os.listdir(fd):
            raise ConfigError(f"{dest} is not empty; a backup goes into a new folder", field="--to")
        os.fchmod(fd, 0o700)  # an empty folder made beforehand (umask 022: 0755) is private now
        if os.listdir(fd):  # put there by another user the folder's mode let in, before the fchmod
            raise ConfigError(f"{dest}: something was put in it while it was checked (it was open to other users); "
                              "a backup goes into a new folder", field="--to")
        _check_proc_fd(fd, dest, "--to")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _proc_fd(fd: int) -> Path:
    """The folder open as `fd`, as a path every process of this user may take (`pg_dump --file`):
    Linux's /proc/PID/fd/N."""
    return Path(PROC_FD.format(pid=os.getpid(), fd=fd))


PROC_FD = "/proc/{pid}/fd/{fd}"


def _check_proc_fd(fd: int, shown: Path, field: str) -> None:
    """`_proc_fd(fd)` names the folder open as `fd`, or a ConfigError says why it cannot (no /proc)."""
    try:
        same = os.path.samestat(os.stat(_proc_fd(fd)), os.fstat(fd))
    except OSError:
        same = False
    if not same:
        raise ConfigError(f"{shown}: this command writes through the folder's handle, which needs /proc mounted "
                          f"(Linux's /proc/PID/fd: {_proc_fd(fd).parent} is not there); nothing was copied into it",
                          field=field)


def _create_in(src_node: Path, dest: Path, shown: str, signer: BackupSigner, identity_db: Path | None,
               identity_pg_url: str | None, progress: Progress) -> BackupReport:
    """`create_backup` into the folder `dest` (a `/proc/PID/fd/N` path: `_open_backup_folder`); `shown` is
    the folder's name as given, for the report."""
    mark = _copy_segments(src_node / "journal", dest / "journal", progress)
    scanned = _scan_to_end(dest / "journal", truncate=True)  # our copy: cut a half-appended batch
    if scanned.last_seq == 0:
        raise ConfigError(f"{src_node} has no committed commands yet; nothing to back up", field="--data")
    if mark is not None and scanned.last_seq < mark.last_seq:
        raise JournalCorrupt(f"the copy ends at sequence {scanned.last_seq} but the node acknowledged {mark.last_seq}")
    assert scanned.tail_segment is not None
    if scanned.tail_segment.stat().st_size > scanned.tail_size:  # a pre-zeroed segment's zeros: not copied on
        with open(scanned.tail_segment, "r+b") as fh:
            fh.truncate(scanned.tail_size)
            fh.flush()
            os.fsync(fh.fileno())
    write_durable_mark(dest / "journal", DurableMark(int(scanned.tail_segment.name[: -len(".rfj")]), scanned.tail_size,
                                                      scanned.last_seq, scanned.last_hash))
    engine, replay, checked = _replay(dest, scanned.commands, progress, _node_snapshot_hashes(src_node, scanned.last_seq))
    snap = _write_engine_snapshot(engine, dest / "snapshots", scanned.last_hash)
    report = BackupReport(shown, scanned.last_seq, scanned.records, scanned.commands, scanned.last_hash.hex(),
                          replay.state_hash, scanned.segments, scanned.bytes_read, snapshots_checked=checked)
    if scanned.torn_tail:
        report.notes.append(f"left out a batch the node was still writing ({scanned.truncated_bytes} bytes)")
    report.problems.extend(f"the node's snapshot at sequence {seq} differs from the replay" for seq, ok in checked if not ok)
    if report.problems:
        raise BackupInvalid("; ".join(report.problems))
    files = {"journal": [], "snapshot": None, "identity": None}  # type: dict[str, Any]
    for path in segment_paths(dest / "journal"):
        files["journal"].append({"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256_file(path)})
    files["snapshot"] = {"name": snap.name, "seq": engine.last_seq, "bytes": snap.stat().st_size, "sha256": _sha256_file(snap)}
    if identity_db is not None and identity_db.is_file():
        _copy_identity(identity_db, dest / IDENTITY_FILE)
        files["identity"] = {"name": IDENTITY_FILE, "bytes": (dest / IDENTITY_FILE).stat().st_size,
                             "sha256": _sha256_file(dest / IDENTITY_FILE)}
        report.identity = "SQLite (online backup)"
    if identity_pg_url:
        _pg("pg_dump", identity_pg_url, ["--format=custom", "--no-owner", "--no-privileges", "--file", str((dest / PG_DUMP_FILE).absolute())])
        files["identity"] = {"name": PG_DUMP_FILE, "bytes": (dest / PG_DUMP_FILE).stat().st_size,
                             "sha256": _sha256_file(dest / PG_DUMP_FILE), "kind": "postgresql"}
        report.identity = "PostgreSQL (pg_dump, one consistent snapshot)"
    _write_manifest(dest, _sign_manifest({
        "format": FORMAT,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": str(src_node.resolve()),
        "last_seq": scanned.last_seq,
        "records": scanned.records,
        "commands": scanned.commands,
        "chain_head": scanned.last_hash.hex(),
        "state_hash": replay.state_hash,
        "files": files,
    }, signer))
    _make_private(dest)
    report.signer = signer.node_id
    return report


def _make_private(folder: Path) -> None:
    """Folders 0700 and files 0600 under `folder`, whatever the umask: a backup holds the journal and
    the identity store (password hashes, encrypted key secrets, session token hashes)."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


_NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_HEX = frozenset("0123456789abcdef")


def _check_node_id(node_id: object, field: str) -> None:
    """The rule of a trust file's node ids (ringfence.nodekey.load_peers)."""
    if (not isinstance(node_id, str) or not 1 <= len(node_id) <= 64 or not set(node_id) <= _NODE_ID_CHARS
            or node_id[0] in "._-"):
        raise ConfigError(f"{node_id!r} is not a node id: letters, digits, '.', '_', '-', at most 64, "
                          "starting with a letter or digit", field=field)


def _is_hex(text: object, digits: int) -> bool:
    return isinstance(text, str) and len(text) == digits and set(text) <= _HEX


def load_manifest(backup: Path, *, trust: dict[str, Ed25519PublicKey], allow_unsigned: bool = False) -> tuple[dict[str, Any], str]:
    """The manifest of `backup` once its signature checks against `trust` (node id -> public key).

    Refused (BackupInvalid naming the manifest's field): no signature; a signer not in `trust`, or
    whose key there is not the one it signed with; a signature that does not verify; bytes that are
    not the layout `create` writes. With `allow_unsigned` (dev mode only: the CLI checks it) an
    unsigned manifest or an untrusted signer is accepted and said so in the returned text; a
    signature by a trusted node that does not verify is refused even then.
    Returns (manifest, who signed it, in words).
    """
    from ..nodekey import verify

    path = backup / MANIFEST
    try:
        if path.stat().st_size > MANIFEST_MAX_BYTES:
            raise BackupInvalid(f"{path} is larger than {MANIFEST_MAX_BYTES} bytes: not a manifest", field="BACKUPDIR")
        raw = path.read_bytes()
        manifest = json.loads(raw)
    except FileNotFoundError:
        raise BackupInvalid(f"{backup} has no {MANIFEST}: not a backup, or one that never finished", field="BACKUPDIR") from None
    except (OSError, ValueError) as err:
        raise BackupInvalid(f"{path} cannot be read: {err}", field="BACKUPDIR") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupInvalid(f"{path} is not a {FORMAT} manifest", field="BACKUPDIR")

    def untrusted(reason: str, field: str) -> tuple[dict[str, Any], str]:
        if not allow_unsigned:
            raise BackupInvalid(reason + "; refused (only in dev mode may --allow-unsigned accept it)",
                                field=f"{MANIFEST}:{field}")
        return manifest, f"{UNTRUSTED}, accepted with --allow-unsigned (dev mode): {reason}"

    signature, signer = manifest.get("signature"), manifest.get("signer")
    if signature is None and signer is None:
        return untrusted("the backup is not signed (made before signed backups, or its signature was removed)",
                         "signature")
    if not isinstance(signer, dict) or not _is_hex(signer.get("public_key"), 64):
        raise BackupInvalid("must be {\"node_id\": …, \"public_key\": 64 hex digits}", field=f"{MANIFEST}:signer")
    node_id = signer.get("node_id")
    try:
        _check_node_id(node_id, f"{MANIFEST}:signer.node_id")
    except ConfigError as err:
        raise BackupInvalid(err.message, field=err.field) from None
    assert isinstance(node_id, str)
    if not _is_hex(signature, 128):
        raise BackupInvalid("must be 128 lower-case hex digits (an Ed25519 signature)", field=f"{MANIFEST}:signature")
    if render_manifest(manifest) != raw:
        raise BackupInvalid(f"{path} is not byte for byte the layout `backup create` writes: it was edited after "
                            "it was signed", field=MANIFEST)
    trusted = trust.get(node_id)
    if trusted is None:
        known = ", ".join(sorted(trust)) or "none"
        return untrusted(f"signed by node {node_id!r}, which the trust file does not list (it lists: {known})",
                         "signer.node_id")
    trusted_raw = trusted.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if not hmac.compare_digest(bytes.fromhex(signer["public_key"]), trusted_raw):
        return untrusted(f"signed by node {node_id!r} with a key that is not the one the trust file holds for "
                         f"{node_id!r} (the manifest names {signer['public_key'][:16]}…)", "signer.public_key")
    if not verify(trusted, bytes.fromhex(signature), signed_bytes(manifest)):
        raise BackupInvalid(f"does not verify with the key the trust file holds for {node_id!r}: the manifest was "
                            "changed after it was signed", field=f"{MANIFEST}:signature")
    return manifest, f"{node_id} (signature checked against the trust file)"


def _listed_files(manifest: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(folder, name, sha256) of every file the manifest lists; a name that is not one plain file
    name of the layout create writes is refused (an unsigned manifest accepted in dev mode is
    not to be trusted with paths)."""
    try:
        files = manifest["files"]
        out = [("journal", str(f["name"]), str(f["sha256"])) for f in files["journal"]]
        out.append(("snapshots", str(files["snapshot"]["name"]), str(files["snapshot"]["sha256"])))
        identity = files.get("identity")
        if identity:
            out.append(("", str(identity["name"]), str(identity["sha256"])))
    except (KeyError, TypeError) as err:
        raise BackupInvalid(f"the file list is malformed ({type(err).__name__}: {err})", field=f"{MANIFEST}:files") from None
    for folder, name, _ in out:
        suffix = {"journal": ".rfj", "snapshots": ".snap"}.get(folder)
        ok = (name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
              and (name.endswith(suffix) if suffix else name in (IDENTITY_FILE, PG_DUMP_FILE)))
        if not ok:
            raise BackupInvalid(f"{name!r} is not a file name of a backup's {folder or 'top'} folder",
                                field=f"{MANIFEST}:files")
    return out


def _unexpected_entries(backup: Path, listed: set[str]) -> list[str]:
    """Problems for every entry of `backup` the manifest does not account for (an extra file, a
    symbolic link anywhere, a special file); symbolic links are never followed."""
    expected_dirs = {"journal", "snapshots"}
    expected = listed | {MANIFEST, "journal/" + _DURABLE_FILE}
    problems: list[str] = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = prefix + entry.name
                if entry.is_symlink():
                    problems.append(f"{rel} is a symbolic link" + ("" if rel in expected | expected_dirs
                                                                  else ", not in the manifest") + ": refused")
                elif rel in expected_dirs and entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), rel + "/")
                elif rel not in expected:
                    problems.append(f"{rel} is not in the manifest")
                elif not entry.is_file(follow_symlinks=False):
                    problems.append(f"{rel} is not a regular file: refused")

    walk(backup, "")
    return problems


def _stage_files(backup: Path, manifest: dict[str, Any], stage: Path, report: BackupReport,
                 progress: Progress = _noop) -> None:
    """Copy every file the manifest lists from `backup` into the private folder `stage`, once,
    hashing the bytes as they are copied; only these copies are used afterwards (module doc: a file
    swapped in the backup after it was checked is never read). Opened with O_NOFOLLOW under folder
    descriptors opened with O_NOFOLLOW too: a symbolic link or a special file is refused. Problems
    (a missing, unexpected, linked or changed file) go into `report.problems`."""
    listed = _listed_files(manifest)
    problems = dict.fromkeys(_unexpected_entries(backup, {f"{d}/{n}" if d else n for d, n, _ in listed}))
    total = sum(f["bytes"] for f in manifest["files"]["journal"] if isinstance(f.get("bytes"), int))  # progress only
    done = 0
    root = os.open(backup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs: dict[str, int] = {"": root}
    try:
        for folder, name, expected in listed:
            rel = f"{folder}/{name}" if folder else name
            if folder not in dirs:
                try:
                    dirs[folder] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
                except OSError as err:
                    dirs[folder] = -1
                    problems[f"{folder} is a symbolic link: refused" if err.errno in (errno.ELOOP, errno.ENOTDIR)
                             else f"{folder} cannot be opened: {err.strerror}"] = None
                (stage / folder).mkdir(mode=0o700, exist_ok=True)
            if dirs[folder] < 0:
                problems[f"{rel} is missing"] = None
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirs[folder])
            except FileNotFoundError:
                problems[f"{rel} is missing"] = None
                continue
            except OSError as err:
                problems[f"{rel} is a symbolic link: refused" if err.errno == errno.ELOOP
                         else f"{rel} cannot be opened: {err.strerror}"] = None
                continue
            with os.fdopen(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    problems[f"{rel} is not a regular file: refused"] = None
                    continue
                digest = hashlib.sha256()
                out_fd = os.open(stage / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(out_fd, "wb") as out:
                    while chunk := src.read(COPY_CHUNK_BYTES):
                        digest.update(chunk)  # the very bytes written to the copy
                        out.write(chunk)
                        if folder == "journal":
                            done += len(chunk)
                            progress("checking files", done, total)
            if not hmac.compare_digest(digest.hexdigest(), expected):
                problems[f"{rel} does not match its SHA-256 in the manifest"] = None
    finally:
        for fd in dirs.values():
            if fd >= 0:
                os.close(fd)
    report.problems.extend(problems)


def _describe(report: BackupReport, manifest: dict[str, Any], signer: str) -> None:
    report.signer = signer
    report.trusted = not signer.startswith(UNTRUSTED)
    report.created_at = str(manifest.get("created_at", "unknown"))
    report.manifest_last_seq = int(manifest.get("last_seq", 0))


def _check_expected_seq(manifest: dict[str, Any], at_least: int | None) -> None:
    """--expect-seq-at-least: an older genuine backup swapped in (a rollback) is refused by its sequence."""
    last = int(manifest["last_seq"])
    if at_least is not None and last < at_least:
        raise BackupInvalid(f"the backup ends at sequence {last} (made {manifest.get('created_at', '?')}), before "
                            f"{at_least}: an older backup than expected", field="--expect-seq-at-least")


def verify_backup(backup: Path, *, trust: dict[str, Ed25519PublicKey], allow_unsigned: bool = False,
                  expect_seq_at_least: int | None = None, progress: Progress = _noop,
                  fetch_problems: Sequence[str] = ()) -> BackupReport:
    """Check the manifest's signature against `trust` (raises BackupInvalid: load_manifest), then
    every file's hash, the journal's chain, and replay: the state hash must match the manifest.

    Every listed file is copied once into a private temporary folder as it is hashed, and the
    chain, replay, snapshot and identity checks read only those copies (_stage_files). `fetch_problems`:
    what fetching the backup found (an s3:// object not downloaded: s3.download_backup), problems too."""
    manifest, signer = load_manifest(backup, trust=trust, allow_unsigned=allow_unsigned)
    _check_expected_seq(manifest, expect_seq_at_least)
    report = BackupReport(str(backup), identity="none")
    _describe(report, manifest, signer)
    report.problems.extend(fetch_problems)
    with tempfile.TemporaryDirectory(prefix="ringfence-verify-") as tmp:  # mode 0700
        _stage_files(backup, manifest, Path(tmp), report, progress)
        if not report.problems:
            _verify_staged(Path(tmp), manifest, report, progress)
    return report


def _verify_staged(stage: Path, manifest: dict[str, Any], report: BackupReport, progress: Progress) -> None:
    from ..engine.snapshot import read_snapshot

    try:
        scanned = _scan_to_end(stage / "journal", truncate=False)
        engine, replay, _ = _replay(stage, manifest["commands"], progress)
    except (JournalCorrupt, ValidationError) as err:
        report.problems.append(f"journal: {err.message}")
        return
    report.last_seq, report.records, report.commands = scanned.last_seq, scanned.records, scanned.commands
    report.chain_head, report.state_hash = scanned.last_hash.hex(), replay.state_hash
    report.segments, report.bytes = scanned.segments, scanned.bytes_read
    if scanned.torn_tail:
        report.problems.append(f"the journal ends in a torn record: {scanned.torn_tail}")
    for key, got in (("last_seq", scanned.last_seq), ("chain_head", report.chain_head), ("state_hash", replay.state_hash)):
        if manifest[key] != got:
            report.problems.append(f"{key}: the manifest says {manifest[key]}, the replay gives {got}")
    snap = read_snapshot(stage / "snapshots" / manifest["files"]["snapshot"]["name"])
    report.snapshots_checked.append((snap.seq, snap.seq == scanned.last_seq and snap.state_hash == replay.state_hash
                                     and snap.journal_hash == scanned.last_hash))
    if not report.snapshots_checked[-1][1]:
        report.problems.append(f"the snapshot at sequence {snap.seq} does not match the replayed state and chain head")
    engine.check_invariants()
    identity = manifest["files"].get("identity")
    if identity and identity.get("kind") == "postgresql":
        report.identity = _check_pg_dump(stage / PG_DUMP_FILE, report)
    elif identity:
        report.identity = _check_identity(stage / IDENTITY_FILE, report)


def _check_pg_dump(path: Path, report: BackupReport) -> str:
    """pg_restore --list reads the whole archive's table of contents: a damaged dump fails here."""
    import subprocess

    binary = shutil.which("pg_restore")
    if binary is None:
        report.notes.append("pg_restore is not installed: the PostgreSQL dump was checked by its SHA-256 only")
        return "PostgreSQL dump (SHA-256 checked)"
    proc = subprocess.run([binary, "--list", str(path)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        report.problems.append(f"{PG_DUMP_FILE}: pg_restore cannot read it: {proc.stderr.strip()[:200]}")
        return "damaged"
    tables = sum(1 for line in proc.stdout.splitlines() if " TABLE DATA " in line)
    return f"PostgreSQL dump, {tables} tables"


def _check_identity(path: Path, report: BackupReport) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        users = conn.execute("SELECT count(*) FROM identity_users").fetchone()[0]
    except sqlite3.DatabaseError as err:
        report.problems.append(f"{IDENTITY_FILE}: {err}")
        return "damaged"
    finally:
        conn.close()
    if result != "ok":
        report.problems.append(f"{IDENTITY_FILE}: integrity check says {result}")
    return f"SQLite, {users} users, integrity {result}"


class _NewDataDir:
    """Where restore builds the new data directory, so that a folder swapped in for `target` after
    its check is never written into (intruder review, session 19, F4: `target/engine` was made by
    path after the check, and a symlink put there meanwhile took the restore elsewhere):
    - no `target` yet: built in a private (0700) folder beside it, which then takes its place in
      one rename(2) — refused if anything (a symlink, a filled folder) appeared there meanwhile;
    - `target` an empty folder (a mount point, `--to .`): opened once without following a link and
      written through that handle (`/proc/self/fd/N`), so its owner, mode and ACLs stay and a swap
      of its path changes nothing; a failed restore removes what it wrote there.
    Anything else at `target` is refused."""

    def __init__(self, target: Path, beside: Path) -> None:
        # `beside` (the nearest existing folder above `target`) and every folder above it belong to this user
        # or root and no one else may write them (owned.safe_folder): its owner, or whoever may write it, could
        # swap the restored folder for one with a journal of theirs before `serve --data` reads it (intruder
        # review of session 23, F3: only an existing `target` was checked). Then only the real path is used.
        risk, remedy = ("could swap the restored data directory before it is served",
                        "give a --to under folders of this user's")
        self.beside = safe_folder(beside, "--to", risk, remedy)
        self.target, self.fd = self.beside / target.absolute().relative_to(beside), -1
        try:
            self.fd = open_own_folder(self.target, "--to", risk, "give a new folder, or an empty one this user owns",
                                      above=False)  # (above: checked)
        except FileNotFoundError:
            self.root = Path(tempfile.mkdtemp(prefix=".ringfence-restore-", dir=self.beside))
            return
        if os.listdir(self.fd):
            os.close(self.fd)
            raise ConfigError(f"{target} is not empty; a restore goes into a new or empty folder", field="--to")
        try:
            _check_proc_fd(self.fd, target, "--to")
        except ConfigError:
            os.close(self.fd)
            raise
        self.root = _proc_fd(self.fd)

    def finish(self) -> None:
        """The data directory is complete: a private one takes `target`'s place."""
        if self.fd >= 0:
            return
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # the folders made just now by name (exist_ok), or a `..` after one, may be another user's by now (a folder
        # of theirs made in sticky /tmp meanwhile, a link there): checked again, the real path used (s23 owners review)
        where = safe_folder(self.target.parent, "--to", "could swap the restored data directory before it is served",
                            "give a --to under folders of this user's") / self.target.name
        try:
            os.rename(self.root, where)
        except OSError as err:
            raise ConfigError(f"{where} cannot take the restored data directory ({err.strerror}): something was "
                              "put there after it was checked; give a new folder", field="--to") from None

    def close(self, done: bool) -> None:
        if self.fd < 0:
            shutil.rmtree(self.root, ignore_errors=True)  # (gone already once it took target's place)
            return
        if not done:
            for name in os.listdir(self.fd):
                shutil.rmtree(self.root / name, ignore_errors=True)
        os.close(self.fd)


def restore_backup(backup: Path, target: Path, *, trust: dict[str, Ed25519PublicKey], allow_unsigned: bool = False,
                   to_seq: int | None = None, identity_pg_url: str | None = None, expect_seq_at_least: int | None = None,
                   progress: Progress = _noop, fetch_problems: Sequence[str] = ()) -> BackupReport:
    """Build a new serve data directory `target` (node in target/engine) as of sequence `to_seq`.

    Everything is checked before `target` is touched: the manifest's signature against `trust`,
    `to_seq`, every file's SHA-256, and (a PostgreSQL identity dump) that the database is empty.
    Every listed file is copied once, hashed as it is copied, into a private (0700) staging folder
    beside `target` (_stage_files); the restore uses only those copies, so a file swapped in the
    backup after the check is never read, and the staging folder is removed whatever happens.
    `fetch_problems` (as verify_backup's) refuse the restore too."""
    manifest, signer = load_manifest(backup, trust=trust, allow_unsigned=allow_unsigned)
    _check_expected_seq(manifest, expect_seq_at_least)
    last_seq = int(manifest["last_seq"])
    if to_seq is None:
        to_seq = last_seq
    if not 1 <= to_seq <= last_seq:
        raise ValidationError(f"must be between 1 and {last_seq} (the backup's last sequence)", field="--to-seq")
    report = BackupReport(str(target))
    _describe(report, manifest, signer)
    if fetch_problems:  # before anything is made
        raise BackupInvalid("; ".join(fetch_problems), field="BACKUPDIR")
    new = _NewDataDir(target, nearest_existing(target.parent))
    stage, done = Path(tempfile.mkdtemp(prefix=".ringfence-restore-", dir=new.beside)), False  # mode 0700
    try:
        _stage_files(backup, manifest, stage, report, progress)
        if report.problems:
            raise BackupInvalid("; ".join(report.problems), field="BACKUPDIR")
        _restore_staged(stage, new, manifest, to_seq, report, identity_pg_url, progress)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        new.close(done)
    return report


def _restore_staged(stage: Path, new: _NewDataDir, manifest: dict[str, Any], to_seq: int, report: BackupReport,
                    identity_pg_url: str | None, progress: Progress) -> None:
    identity = manifest["files"].get("identity")
    if identity and identity.get("kind") == "postgresql" and identity_pg_url:
        _refuse_used_database(identity_pg_url)  # before anything is written
    node = new.root / "engine"
    node.mkdir(mode=0o700)
    lock = DataDirLock(node, "ringfence backup restore")
    try:
        cut = _restore_journal(stage / "journal", node / "journal", to_seq)
        if cut:
            report.notes.append(cut)
        engine, replay, _ = _replay(node, to_seq, progress)
        if engine.last_seq != to_seq:
            raise BackupInvalid(f"the restored journal ends at {engine.last_seq}, not {to_seq}")
        if to_seq == int(manifest["last_seq"]) and replay.state_hash != manifest["state_hash"]:
            raise BackupInvalid("the restored state hash differs from the one the backup recorded")
        scanned = _scan_to_end(node / "journal", truncate=False)
        _write_engine_snapshot(engine, node / "snapshots", scanned.last_hash)
    finally:
        lock.release()
    if identity and identity.get("kind") != "postgresql":
        shutil.move(stage / IDENTITY_FILE, new.root / IDENTITY_FILE)  # the checked copy itself
        os.chmod(new.root / IDENTITY_FILE, 0o600)
        report.identity = "SQLite, as of the backup (identity is not cut at --to-seq)"
    new.finish()
    if identity and identity.get("kind") == "postgresql":
        report.identity = _restore_pg(stage / PG_DUMP_FILE, identity_pg_url)
    report.last_seq, report.records, report.commands = to_seq, scanned.records, scanned.commands
    report.chain_head, report.state_hash = scanned.last_hash.hex(), replay.state_hash
    report.segments, report.bytes = scanned.segments, scanned.bytes_read


def _open_database(url: str) -> list[str]:
    """The tables of the database at `url`; a malformed or unreachable URL is a ConfigError naming
    RINGFENCE_DATABASE_URL (its text never carries the password)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    try:
        engine = create_engine(url)
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ConfigError("is not a database URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)",
                          field="RINGFENCE_DATABASE_URL") from None
    try:
        return list(inspect(engine).get_table_names())
    except DBAPIError as err:
        raise ConfigError(f"cannot open the database: {str(err.orig).splitlines()[0] if err.orig else type(err).__name__}",
                          field="RINGFENCE_DATABASE_URL") from None
    finally:
        engine.dispose()


def _refuse_used_database(url: str) -> None:
    if "identity_users" in _open_database(url):
        raise ConfigError("the database already holds identity tables; restore into an empty database",
                          field="RINGFENCE_DATABASE_URL")


def _restore_pg(dump: Path, url: str | None) -> str:
    """Load the identity dump into the (empty) PostgreSQL database at `url`."""
    if not url:
        return f"PostgreSQL dump kept in the backup ({PG_DUMP_FILE}); set RINGFENCE_DATABASE_URL to restore it"
    _pg("pg_restore", url, ["--no-owner", "--no-privileges", "--exit-on-error", str(dump.absolute())])
    return "PostgreSQL, restored with pg_restore (as of the backup; identity is not cut at --to-seq)"


def _restore_journal(src: Path, dest: Path, to_seq: int) -> str | None:
    """Copy whole records up to `to_seq`; a batch that straddles it is re-written with its first commands.

    Returns a note when a batch was cut (its record then has a new hash: the restored history
    diverges from the original exactly there, which is what a point-in-time restore means).
    """
    prev: Record | None = None
    straddle: Record | None = None
    gen = scan(src, truncate=False)
    for record in gen:
        if record.last_seq <= to_seq:
            prev = record
            if record.last_seq == to_seq:
                break
        else:
            straddle = record
            break
    gen.close()
    if straddle is not None:
        tail_name, tail_size = straddle.segment, straddle.offset
    else:
        assert prev is not None
        tail_name, tail_size = prev.segment, prev.offset + HEADER_SIZE + len(prev.payload) + TRAILER_SIZE
    dest.mkdir(parents=True)
    for path in segment_paths(src):
        if path.name <= tail_name:
            shutil.copyfile(path, dest / path.name)
    tail = dest / tail_name
    with open(tail, "r+b") as fh:
        fh.truncate(tail_size)
        fh.flush()
        os.fsync(fh.fileno())
    if straddle is None:
        assert prev is not None
        write_durable_mark(dest, DurableMark(int(tail_name[: -len(".rfj")]), tail_size, prev.last_seq, prev.hash))
        return None
    batch = msgspec.json.decode(straddle.payload, type=_RawBatch)
    keep = to_seq - straddle.first_seq + 1
    cut = _RawBatch(batch.first_seq, batch.ts_ns, batch.entropy, batch.commands[:keep])
    writer = JournalWriter(dest, next_seq=straddle.first_seq, last_hash=prev.hash if prev else GENESIS_HASH,
                           tail_segment=tail, tail_size=tail_size)
    try:
        writer.append(msgspec.json.encode(cut), straddle.first_seq, keep)  # also writes the durable mark
    finally:
        writer.close()
    return (f"sequence {to_seq} is inside the batch {straddle.first_seq}..{straddle.last_seq}: "
            f"its first {keep} commands were kept in a new record")
