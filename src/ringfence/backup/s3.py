"""Backups on S3-compatible object storage: `s3://BUCKET/PREFIX` wherever a backup folder is taken.

`ringfence backup create --to s3://…` makes the backup in a private temporary folder exactly as it
would into a directory (copy, replay, snapshot, manifest), then uploads every file under PREFIX
with the manifest LAST: a prefix without `MANIFEST.json` is an upload that never finished, and
`verify`/`restore` refuse it as they refuse a folder without one. `verify` and `restore` download
MANIFEST.json first (at most 16 MiB) into a private temporary folder and check its signature
against the trust file; then only the objects it lists, each refused (never downloaded) when it
holds more bytes than the manifest gives for it; an object it does not list is a problem and is
not downloaded either. A manifest made before session 22 gives no size for the snapshot and the
identity file: those are bounded by LEGACY_FILE_MAX_BYTES (16 GiB). Then the same checks as on a
directory run (each file's SHA-256 against the manifest, the hash chain, the replayed state hash,
point-in-time restore), so an S3 copy is worth exactly what a directory copy is.

Where and as whom: the endpoint is `--s3-endpoint-url` or `RINGFENCE_S3_ENDPOINT_URL` (any
S3-compatible service: MinIO, Ceph, moto; AWS when unset), the region `RINGFENCE_S3_REGION` (else
boto3's own settings). Credentials come only from boto3's standard chain (`AWS_ACCESS_KEY_ID` and
`AWS_SECRET_ACCESS_KEY`, a profile, an instance role): never from a command-line option, where
`ps` would show them, and no message here ever carries them.

Needs `boto3` (`pip install 'ringfence[s3]'`; the test set-up installs it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ConfigError, ValidationError
from ..journal.journal import DURABLE_FILE as _DURABLE_FILE

__all__ = ["S3Location", "is_s3_url", "parse_s3_url", "s3_client", "require_empty", "upload_backup", "download_backup", "SCHEME"]

SCHEME = "s3://"
ENDPOINT_ENV = "RINGFENCE_S3_ENDPOINT_URL"
REGION_ENV = "RINGFENCE_S3_REGION"
MANIFEST = "MANIFEST.json"
DURABLE = _DURABLE_FILE  # the journal's durable mark (two fixed slots)
DURABLE_MAX_BYTES = 64 * 1024
#: the most bytes a file may have whose manifest gives no size (made before session 22 wrote "bytes"
#: for the snapshot and the identity file): an object larger than this is not downloaded
LEGACY_FILE_MAX_BYTES = 16 * 1024 * 1024 * 1024
_CHUNK = 4 * 1024 * 1024


def is_s3_url(target: str | os.PathLike[str]) -> bool:
    return isinstance(target, str) and target.startswith(SCHEME)


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing slash; may be empty: the whole bucket)."""

    bucket: str
    prefix: str

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def parse_s3_url(url: str, field: str) -> S3Location:
    """`s3://bucket/some/prefix` -> S3Location; a malformed one is a ValidationError naming `field`."""
    if not url.startswith(SCHEME):
        raise ValidationError(f"must start with {SCHEME}", field=field)
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not all(c.isalnum() or c in ".-_" for c in bucket) or len(bucket) > 63:
        raise ValidationError(f"{url!r} has no valid bucket name (s3://BUCKET/PREFIX)", field=field)
    parts = PurePosixPath(prefix).parts if prefix else ()
    if any(p in (".", "..") for p in parts) or "//" in prefix:
        raise ValidationError(f"{url!r}: the prefix must not contain '.', '..' or empty parts", field=field)
    return S3Location(bucket, prefix)


EXTRA = "ringfence[s3]"  # pyproject.toml's optional dependencies that bring boto3


def s3_client(endpoint_url: str | None = None, field: str = "--to") -> Any:
    """A boto3 S3 client for `endpoint_url` (else RINGFENCE_S3_ENDPOINT_URL, else AWS); `field` is the
    option or argument that named the s3:// location (`--to` for create, BACKUPDIR for verify/restore)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(f"an s3:// location needs boto3, which is not installed; install it with: "
                          f"pip install '{EXTRA}'", field=field) from None
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ValidationError("must be an http:// or https:// URL", field=ENDPOINT_ENV)
    region = os.environ.get(REGION_ENV) or None
    # path-style addressing: S3-compatible servers (MinIO, Ceph, moto) seldom serve bucket subdomains
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"},
                    connect_timeout=10, read_timeout=120)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config)


def _where(client: Any) -> str:
    """The endpoint a client talks to, for messages (scheme, host and port only: never credentials)."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(client.meta.endpoint_url))
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


def _fail(client: Any, loc: S3Location, doing: str, err: Exception, field: str) -> ConfigError:
    """botocore's error as a ConfigError naming the location and endpoint (its text names neither keys nor secrets)."""
    from botocore.exceptions import ClientError

    if isinstance(err, ClientError):
        info = err.response.get("Error", {})
        reason = f"{info.get('Code', 'error')}: {info.get('Message', '')}".strip(": ")
    else:
        reason = f"{type(err).__name__}: {err}"
    return ConfigError(f"cannot {doing} {loc} at {_where(client)}: {reason[:300]}", field=field)


def _list(client: Any, loc: S3Location, field: str) -> dict[str, int]:
    """Every object under the prefix: relative name -> size."""
    from botocore.exceptions import BotoCoreError, ClientError

    base = loc.key("")
    out: dict[str, int] = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(base):]] = int(obj["Size"])
    except (BotoCoreError, ClientError) as err:
        raise _fail(client, loc, "list", err, field) from None
    return out


def require_empty(loc: S3Location, client: Any) -> None:
    """A backup goes to a new place, as into a new folder: a prefix holding anything is refused."""
    if _list(client, loc, "--to"):
        raise ConfigError(f"{loc} is not empty; a backup goes under a new prefix", field="--to")


def upload_backup(local: Path, loc: S3Location, client: Any) -> tuple[int, int]:
    """Upload a finished backup folder under `loc` (which must be empty), MANIFEST.json last.
    Returns (objects, bytes)."""
    from botocore.exceptions import BotoCoreError, ClientError

    require_empty(loc, client)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    if not (local / MANIFEST).is_file():
        raise ConfigError(f"{local} has no {MANIFEST}: only a finished backup is uploaded", field="--to")
    files = [p for p in files if p.name != MANIFEST or p.parent != local] + [local / MANIFEST]
    total = 0
    for path in files:
        rel = path.relative_to(local).as_posix()
        try:
            client.upload_file(str(path), loc.bucket, loc.key(rel))
        except (BotoCoreError, ClientError) as err:
            raise _fail(client, loc, f"upload {rel} to", err, "--to") from None
        total += path.stat().st_size
    return len(files), total


def _inside(dest: Path, rel: str, loc: S3Location, field: str) -> Path:
    """Where object `rel` goes under `dest`: a relative path of plain names only. Refused: an empty
    name, a leading, trailing or doubled `/` (`PREFIX//etc/x` would name the absolute `/etc/x`),
    `.` and `..`, a NUL; and anything that would still land outside `dest`."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ConfigError(f"{loc}: the object name {rel!r} cannot be a file of a backup (only relative names "
                          f"of plain parts: no leading, trailing or doubled '/', no '.' or '..')", field=field)
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ConfigError(f"{loc}: the object name {rel!r} would be written outside {dest}", field=field)
    return target


def _fetch(client: Any, loc: S3Location, rel: str, target: Path, limit: int, field: str) -> int | None:
    """Download object `rel` into the new file `target`, reading at most `limit` bytes: the bytes read,
    or None when the object holds more (what was read is removed). The limit holds whatever the
    listing said: an object swapped for a larger one after the listing is cut off there too."""
    from botocore.exceptions import BotoCoreError, ClientError

    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    got = 0
    try:
        body = client.get_object(Bucket=loc.bucket, Key=loc.key(rel))["Body"]
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := body.read(min(_CHUNK, limit + 1 - got)):
                    got += len(chunk)
                    if got > limit:
                        break
                    out.write(chunk)
        finally:
            body.close()
    except (BotoCoreError, ClientError) as err:
        raise _fail(client, loc, f"download {rel} from", err, field) from None
    if got > limit:
        target.unlink()
        return None
    return got


def _allowed(manifest: dict[str, Any]) -> dict[str, int]:
    """Each object a backup may hold (relative name -> the most bytes it may have), from a manifest
    whose signature was checked: a journal segment, the snapshot and the identity file their
    manifest's "bytes" (written since session 22; a manifest without it: LEGACY_FILE_MAX_BYTES),
    the durable mark its fixed size."""
    from . import _listed_files

    listed = _listed_files(manifest)  # (every name checked to be one of a backup's; a malformed list refused)
    sizes: dict[str, object] = {}
    files = manifest["files"]
    for f in files["journal"]:
        sizes["journal/" + str(f["name"])] = f.get("bytes")
    sizes["snapshots/" + str(files["snapshot"]["name"])] = files["snapshot"].get("bytes")
    if files.get("identity"):
        sizes[str(files["identity"]["name"])] = files["identity"].get("bytes")
    out = {"journal/" + DURABLE: DURABLE_MAX_BYTES}
    for folder, name, _ in listed:
        rel = f"{folder}/{name}" if folder else name
        size = sizes.get(rel)
        out[rel] = size if type(size) is int and 0 <= size else LEGACY_FILE_MAX_BYTES
    return out


def download_backup(loc: S3Location, client: Any, dest: Path, field: str = "BACKUPDIR", *,
                    trust: dict[str, Any], allow_unsigned: bool = False) -> tuple[int, int, list[str]]:
    """Fetch the backup under `loc` into the empty folder `dest`: MANIFEST.json first (at most
    MANIFEST_MAX_BYTES), its signature checked against `trust` (`load_manifest`: BackupInvalid, and
    nothing else is fetched), then only the objects it lists, each refused when it holds more bytes
    than the manifest allows (`_allowed`). An object the manifest does not list, or one too large,
    is never downloaded: it is a problem (intruder review of session 22, B5: every object under the
    prefix, of any size, was fetched before the signature was checked, so whoever may write to the
    bucket could fill the verifying host's disk). Returns (objects, bytes, problems)."""
    from . import MANIFEST_MAX_BYTES, load_manifest

    objects = _list(client, loc, field)
    if not objects:
        raise ConfigError(f"{loc} holds no objects: no backup there (check the bucket, prefix and endpoint)", field=field)
    if MANIFEST not in objects:
        raise ConfigError(f"{loc} has no {MANIFEST}: not a backup, or an upload that never finished", field=field)
    targets = {rel: _inside(dest, rel, loc, field) for rel in sorted(objects)}  # every name checked before any write
    dest.mkdir(mode=0o700)
    size = _fetch(client, loc, MANIFEST, targets[MANIFEST], MANIFEST_MAX_BYTES, field)
    if size is None:
        raise ConfigError(f"{loc}: {MANIFEST} is larger than {MANIFEST_MAX_BYTES} bytes: not a manifest (not "
                          "downloaded)", field=field)
    manifest, _ = load_manifest(dest, trust=trust, allow_unsigned=allow_unsigned)
    allowed = _allowed(manifest)
    fetched, total, problems = 1, size, []
    for rel in sorted(objects):
        if rel == MANIFEST:
            continue
        if rel not in allowed:
            problems.append(f"{rel} is not in the manifest ({objects[rel]:,} bytes on S3, not downloaded)")
            continue
        if objects[rel] > allowed[rel]:
            problems.append(f"{rel} is {objects[rel]:,} bytes on S3, more than the {allowed[rel]:,} the manifest "
                            "allows: not downloaded")
            continue
        got = _fetch(client, loc, rel, targets[rel], allowed[rel], field)
        if got is None:
            problems.append(f"{rel} holds more than the {allowed[rel]:,} bytes the manifest allows: not downloaded")
            continue
        fetched, total = fetched + 1, total + got
    return fetched, total, problems
