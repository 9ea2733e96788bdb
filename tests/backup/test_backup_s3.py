"""Backups on S3-compatible storage: `ringfence backup create|verify|restore` with s3://BUCKET/PREFIX.

The storage is moto's S3 server (`moto.server.ThreadedMotoServer`): a real S3 HTTP endpoint on
127.0.0.1, spoken to by boto3 exactly as MinIO or AWS would be. A live `ringfence serve` takes
signed REST orders from a thread while `ringfence backup create --to s3://…` runs as its own
process; the S3 copy then verifies, restores to a sequence inside a batch (the state of replaying
the server's own journal to it) and to its end (served again, its API keys work). Damaged,
extra or missing objects fail verification naming them; a used prefix is refused and left as it
was; the secret key never appears in any output.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import boto3  # a missing boto3 (or moto, below) fails the run, never skips it
import httpx
import pytest

from api.conftest import Server, invoke
from pgtest import profile_database_url
from ringfence.app import replay_journal

from ringfence.backup import render_manifest

from .conftest import rf, trust_file_for
from .test_backup import _batch_inside, _place_orders, _signed


BUCKET = "rf-backups"
SECRET = "s3cr3t-Kq9vW2xZ-never-printed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"RINGFENCE_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIARINGFENCETEST", "AWS_SECRET_ACCESS_KEY": SECRET}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIARINGFENCETEST",
                          aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint, env, client
    finally:
        server.stop()


def _objects(client, prefix: str) -> dict[str, str]:
    """key (relative to prefix) -> ETag of every object under `prefix/`."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1:]] = obj["ETag"]
    return out


def _copy_prefix(client, src: str, dest: str) -> None:
    for rel in _objects(client, src):
        client.copy_object(Bucket=BUCKET, Key=f"{dest}/{rel}", CopySource={"Bucket": BUCKET, "Key": f"{src}/{rel}"})


def test_backup_of_a_live_server_to_s3_verifies_and_restores_point_in_time(tmp_path, s3):
    endpoint, env, client = s3
    outputs: list[str] = []

    def run(*args: str, check: bool = True, extra: dict[str, str] | None = None, here: bool = False):
        """`ringfence ARGS` as a process; with `here` the same command code in this process (api/conftest.py invoke,
        no Python start): the refusals of damaged copies below, each beside a real process's verify and restore."""
        if here:
            proc = invoke(*args, env={**env, **(extra or {})})
            assert proc.returncode == 0 or not check, proc.stdout + proc.stderr
        else:
            proc = rf(*args, check=check, env={**env, **(extra or {})}, process=True)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    srv = Server(tmp_path / "data", chains=False)  # the load is orders; the demo's chains are not in it (as test_backup.py)
    stop, placed = threading.Event(), []
    loader = threading.Thread(target=_place_orders, args=(srv, stop, placed))
    loader.start()
    try:
        deadline = time.monotonic() + 60  # orders placed before the backup starts (as test_backup.py; not a fixed 1 s)
        while len(placed) < 6 and loader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        on_pg = {} if srv.database_url.startswith("sqlite") else {"RINGFENCE_DATABASE_URL": srv.database_url}
        out = run("backup", "create", "--data", str(srv.data), "--to", f"s3://{BUCKET}/nightly/one", extra=on_pg).stdout
        time.sleep(0.5)
    finally:
        stop.set()
        loader.join(30)
    try:
        assert "backup: OK" in out and f"to s3://{BUCKET}/nightly/one, MANIFEST.json last" in out, out
        stored = _objects(client, "nightly/one")
        manifest = json.loads(client.get_object(Bucket=BUCKET, Key="nightly/one/MANIFEST.json")["Body"].read())
        listed = {"journal/" + f["name"] for f in manifest["files"]["journal"]}
        listed |= {"snapshots/" + manifest["files"]["snapshot"]["name"], manifest["files"]["identity"]["name"], "MANIFEST.json",
                   "journal/DURABLE"}  # the durable mark, as in a backup folder
        assert set(stored) == listed, (sorted(stored), sorted(listed))
        assert all(isinstance(p, int) for p in placed) and manifest["last_seq"] > 56, manifest["last_seq"]
        # the S3 copy is a byte-identical prefix of the live journal
        live, _, _ = replay_journal(srv.data / "engine", until_seq=manifest["last_seq"])
        assert live.state_hash() == manifest["state_hash"]
        inside = _batch_inside(srv.data / "engine", manifest["last_seq"])
        at_inside, _, _ = replay_journal(srv.data / "engine", until_seq=inside)
        # a used prefix is refused before anything is made, and left exactly as it was
        again = run("backup", "create", "--data", str(srv.data), "--to", f"s3://{BUCKET}/nightly/one", check=False, extra=on_pg)
        assert again.returncode == 1 and "is not empty" in again.stderr, again.stderr
        assert _objects(client, "nightly/one") == stored
    finally:
        assert srv.stop() == 0

    trust = str(trust_file_for(srv.data, tmp_path / "trusted-nodes.json"))  # the node's key: kept apart from S3
    out = run("backup", "verify", f"s3://{BUCKET}/nightly/one", "--trust", trust).stdout
    assert "backup verify: OK" in out and manifest["state_hash"] in out, out

    out = run("backup", "restore", f"s3://{BUCKET}/nightly/one", "--trust", trust, "--to", str(tmp_path / "pit"),
              "--to-seq", str(inside)).stdout
    assert "restore: OK" in out and "inside the batch" in out, out
    restored, _, _ = replay_journal(tmp_path / "pit" / "engine", use_snapshots=False)
    assert (restored.last_seq, restored.state_hash()) == (inside, at_inside.state_hash())

    full_url = profile_database_url(tmp_path / "full")  # the database the Server below will use, if any
    run("backup", "restore", f"s3://{BUCKET}/nightly/one", "--trust", trust, "--to", str(tmp_path / "full"),
        extra={"RINGFENCE_DATABASE_URL": full_url} if full_url else None)
    served = Server(tmp_path / "full", demo=False)
    try:
        assert httpx.get(served.base + "/readyz", timeout=5).json()["last_seq"] == manifest["last_seq"]
        key = json.loads((tmp_path / "data" / "demo-keys.json").read_text())[0]  # identity came back from S3 too
        r = httpx.get(served.base + "/api/v3/account?" + _signed(key["api_secret"], {}),
                      headers={"X-MBX-APIKEY": key["api_key"]}, timeout=10)
        assert r.status_code == 200, r.text
        outputs.append(served.log_text())
    finally:
        assert served.stop() == 0

    # damage: one changed journal object, one object the manifest does not list, one missing manifest
    _copy_prefix(client, "nightly/one", "damaged")
    segment = sorted(k for k in stored if k.startswith("journal/") and k.endswith(".rfj"))[0]
    body = bytearray(client.get_object(Bucket=BUCKET, Key=f"damaged/{segment}")["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=BUCKET, Key=f"damaged/{segment}", Body=bytes(body))
    bad = run("backup", "verify", f"s3://{BUCKET}/damaged", "--trust", trust, check=False, here=True)
    assert bad.returncode == 1 and f"{segment} does not match its SHA-256" in bad.stdout, bad.stdout + bad.stderr

    _copy_prefix(client, "nightly/one", "extra")
    client.put_object(Bucket=BUCKET, Key="extra/journal/99999999.rfj", Body=b"not a segment")
    bad = run("backup", "verify", f"s3://{BUCKET}/extra", "--trust", trust, check=False, here=True)
    assert bad.returncode == 1 and "journal/99999999.rfj is not in the manifest" in bad.stdout, bad.stdout + bad.stderr

    # the intruder's edit (review of #21, F4) on S3: a changed object and its SHA-256 recomputed in the manifest
    _copy_prefix(client, "nightly/one", "forged")
    client.put_object(Bucket=BUCKET, Key=f"forged/{segment}", Body=bytes(body))
    forged = dict(manifest, files=dict(manifest["files"], journal=[
        dict(f, sha256=hashlib.sha256(bytes(body)).hexdigest()) if "journal/" + f["name"] == segment else f
        for f in manifest["files"]["journal"]]))
    client.put_object(Bucket=BUCKET, Key="forged/MANIFEST.json", Body=render_manifest(forged))
    for args in (("verify", f"s3://{BUCKET}/forged"), ("restore", f"s3://{BUCKET}/forged", "--to", str(tmp_path / "f"))):
        bad = run("backup", *args, "--trust", trust, check=False, here=True)
        assert bad.returncode == 1 and "MANIFEST.json:signature" in bad.stderr, bad.stdout + bad.stderr
    assert not (tmp_path / "f").exists()

    _copy_prefix(client, "nightly/one", "unfinished")
    client.delete_object(Bucket=BUCKET, Key="unfinished/MANIFEST.json")
    for args in (("verify", f"s3://{BUCKET}/unfinished"), ("restore", f"s3://{BUCKET}/unfinished", "--to", str(tmp_path / "u"))):
        bad = run("backup", *args, "--trust", trust, check=False, here=True)
        assert bad.returncode == 1 and "has no MANIFEST.json" in bad.stderr, bad.stderr
    assert not (tmp_path / "u").exists()

    # an unreachable endpoint and a missing bucket fail naming them (and nothing else)
    closed = f"http://127.0.0.1:{_free_port()}"
    bad = run("backup", "verify", f"s3://{BUCKET}/nightly/one", "--trust", trust, "--s3-endpoint-url", closed, check=False)
    assert bad.returncode == 1 and closed in bad.stderr, bad.stderr
    bad = run("backup", "verify", "s3://no-such-bucket/x", "--trust", trust, check=False)
    assert bad.returncode == 1 and "NoSuchBucket" in bad.stderr, bad.stderr
    bad = run("backup", "verify", "s3:///x", "--trust", trust, check=False)
    assert bad.returncode == 1 and "bucket" in bad.stderr, bad.stderr

    assert not any(SECRET in text for text in outputs), "the S3 secret key was printed"
    assert endpoint  # every command above found the endpoint through RINGFENCE_S3_ENDPOINT_URL alone


def test_backup_help_shows_an_s3_example():
    for command in ("create", "verify", "restore"):
        out = rf("backup", command, "--help").stdout
        assert "s3://" in out and "--s3-endpoint-url" in out, out


def test_s3_locations_are_parsed_strictly_naming_the_option():
    from ringfence.backup.s3 import S3Location, parse_s3_url
    from ringfence.errors import ValidationError

    assert parse_s3_url("s3://rf-backups/nightly/one/", "--to") == S3Location("rf-backups", "nightly/one")
    assert parse_s3_url("s3://rf-backups", "--to") == S3Location("rf-backups", "")
    assert S3Location("b", "p").key("journal/DURABLE") == "p/journal/DURABLE" and S3Location("b", "").key("x") == "x"
    for bad in ("s3://", "s3:///x", "s3://two words/x", "s3://b/../x", "s3://b/a//c", "https://b/x", "s3://" + "b" * 64):
        with pytest.raises(ValidationError) as err:
            parse_s3_url(bad, "BACKUPDIR")
        assert err.value.field == "BACKUPDIR", bad


@pytest.mark.parametrize("name", ["/{victim}/evil.txt", "journal//x", "journal/../../{victim_rel}/evil.txt", "./x",
                                  "journal/"])
def test_an_object_name_that_leaves_the_download_folder_is_refused_before_anything_is_written(tmp_path, s3, name):
    """Intruder review, session 19 (F1): `PREFIX//tmp/x` named the absolute `/tmp/x`, and verify and
    restore downloaded the object there (creating its folders) before reading any signature — a
    file anywhere on disk from anyone who can write to the bucket. Every name is now checked
    before the first download; the command fails naming the object and writes nothing."""
    endpoint, env, client = s3
    victim = tmp_path / "victim"
    prefix = f"evil-{abs(hash(name)) % 10**8}"
    key = name.format(victim=str(victim).lstrip("/"), victim_rel=str(victim).lstrip("/"))
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/MANIFEST.json", Body=b"{}")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=b"attacker's bytes\n")
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"n1": "00" * 31 + "01"}))
    for args in (["verify", f"s3://{BUCKET}/{prefix}", "--trust", str(trust)],
                 ["restore", f"s3://{BUCKET}/{prefix}", "--trust", str(trust), "--to", str(tmp_path / "restored")]):
        proc = rf("backup", *args, check=False, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert "cannot be a file of a backup" in out and "BACKUPDIR" in out, out
        assert not victim.exists(), (args, out)
        assert not (tmp_path / "restored").exists(), out
        assert SECRET not in out


def _uploaded(demo_node, tmp_path, client, prefix: str, manifest_edit=None) -> dict:
    """A backup of the demo node made in process (signed by conftest's SIGNER) and uploaded under `prefix`; with
    `manifest_edit(manifest)` the manifest is changed and signed again first (an older manifest's shape)."""
    from ringfence.backup import MANIFEST, _sign_manifest, _write_manifest, create_backup
    from ringfence.backup.s3 import S3Location, upload_backup

    from .conftest import SIGNER

    local = tmp_path / prefix
    create_backup(demo_node, local, signer=SIGNER)
    manifest = json.loads((local / MANIFEST).read_text())
    if manifest_edit is not None:
        body = {k: v for k, v in manifest.items() if k not in ("signature", "signer")}
        manifest_edit(body)
        manifest = _sign_manifest(body, SIGNER)
        _write_manifest(local, manifest)
    upload_backup(local, S3Location(BUCKET, prefix), client)
    return manifest


def test_s3_objects_are_fetched_only_as_the_signed_manifest_lists_them_and_no_larger(demo_node, tmp_path, s3, trust_file):
    """Intruder review of session 22, B5: verify and restore downloaded every object under the prefix, of
    any size, before the manifest's signature was checked: an extra object, or a listed one swapped for a
    huge one, filled the verifying host's disk. Now MANIFEST.json comes first and is checked; an object it
    does not list, or one larger than it allows, is a problem and is never downloaded."""
    endpoint, env, client = s3
    manifest = _uploaded(demo_node, tmp_path, client, "b5-huge")
    snapshot = "snapshots/" + manifest["files"]["snapshot"]["name"]
    assert manifest["files"]["snapshot"]["bytes"] > 0  # a size per file in new manifests
    big = b"\0" * (3 * 1024 * 1024)
    client.put_object(Bucket=BUCKET, Key="b5-huge/journal/99999999.rfj", Body=big)  # not listed
    client.put_object(Bucket=BUCKET, Key=f"b5-huge/{snapshot}", Body=big)  # listed, larger than the manifest says
    listed = len(_objects(client, "b5-huge")) - 1
    for args in (("verify",), ("restore", "--to", str(tmp_path / "restored"))):
        bad = invoke("backup", args[0], f"s3://{BUCKET}/b5-huge", *args[1:], "--trust", str(trust_file), env=env)
        out = " ".join((bad.stdout + bad.stderr).split())
        assert bad.returncode == 1, out
        assert "journal/99999999.rfj is not in the manifest (3,145,728 bytes on S3, not downloaded)" in out, out
        assert f"{snapshot} is 3,145,728 bytes on S3, more than the {manifest['files']['snapshot']['bytes']:,}" in out, out
        assert f"downloaded {listed - 1} objects" in out, out  # the manifest and what it lists, bar the swapped one
    assert not (tmp_path / "restored").exists()


def _ringfence_client(s3, monkeypatch):
    """The client `verify` makes (s3.s3_client), with the credentials from the environment as there."""
    from ringfence.backup.s3 import s3_client

    endpoint, env, _ = s3
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return s3_client(endpoint)


def test_s3_download_checks_the_signature_before_fetching_anything_else(demo_node, tmp_path, s3, monkeypatch):
    """A manifest that does not verify: BackupInvalid naming its signature, and nothing but MANIFEST.json
    was fetched."""
    from ringfence.backup import BackupInvalid, render_manifest
    from ringfence.backup.s3 import S3Location, download_backup

    from .conftest import TRUST

    endpoint, env, client = s3
    manifest = _uploaded(demo_node, tmp_path, client, "b5-forged")
    forged = dict(manifest, last_seq=manifest["last_seq"] + 1)
    client.put_object(Bucket=BUCKET, Key="b5-forged/MANIFEST.json", Body=render_manifest(forged))
    dest = tmp_path / "fetched"
    with pytest.raises(BackupInvalid, match="does not verify") as err:
        download_backup(S3Location(BUCKET, "b5-forged"), _ringfence_client(s3, monkeypatch), dest, trust=TRUST)
    assert err.value.field == "MANIFEST.json:signature"
    assert sorted(p.name for p in dest.rglob("*")) == ["MANIFEST.json"]


def test_s3_an_old_manifest_without_sizes_is_bounded_by_the_documented_cap(demo_node, tmp_path, s3, monkeypatch):
    """A manifest made before sizes were written for the snapshot and the identity file: those objects are
    bounded by LEGACY_FILE_MAX_BYTES (16 GiB; made small here), and such a backup still verifies."""
    import ringfence.backup.s3 as s3_mod
    from ringfence.backup import verify_backup

    from .conftest import TRUST

    endpoint, env, client = s3

    def old_shape(body: dict) -> None:
        body["files"]["snapshot"].pop("bytes")

    manifest = _uploaded(demo_node, tmp_path, client, "b5-old", manifest_edit=old_shape)
    snapshot = "snapshots/" + manifest["files"]["snapshot"]["name"]
    loc = s3_mod.S3Location(BUCKET, "b5-old")
    objects, size, problems = s3_mod.download_backup(loc, _ringfence_client(s3, monkeypatch), tmp_path / "all", trust=TRUST)
    assert problems == [] and objects == len(_objects(client, "b5-old"))
    assert not verify_backup(tmp_path / "all", trust=TRUST).problems
    assert s3_mod.LEGACY_FILE_MAX_BYTES == 16 * 1024**3
    snap_size = client.head_object(Bucket=BUCKET, Key=f"b5-old/{snapshot}")["ContentLength"]
    monkeypatch.setattr(s3_mod, "LEGACY_FILE_MAX_BYTES", snap_size - 1)
    objects, size, problems = s3_mod.download_backup(loc, _ringfence_client(s3, monkeypatch), tmp_path / "capped", trust=TRUST)
    assert problems == [f"{snapshot} is {snap_size:,} bytes on S3, more than the {snap_size - 1:,} the manifest allows: "
                        "not downloaded"], problems
    assert not (tmp_path / "capped" / snapshot).exists()
    report = verify_backup(tmp_path / "capped", trust=TRUST, fetch_problems=problems)
    assert problems[0] in report.problems


def test_s3_an_object_swapped_for_a_larger_one_after_the_listing_is_cut_off(demo_node, tmp_path, s3, monkeypatch):
    """The size the listing gave is not trusted either: a read stops at what the manifest allows."""
    import ringfence.backup.s3 as s3_mod

    from .conftest import TRUST

    endpoint, env, client = s3
    manifest = _uploaded(demo_node, tmp_path, client, "b5-swap")
    snapshot = "snapshots/" + manifest["files"]["snapshot"]["name"]
    listing = s3_mod._list

    def list_then_swap(*args, **kwargs):
        out = listing(*args, **kwargs)
        client.put_object(Bucket=BUCKET, Key=f"b5-swap/{snapshot}", Body=b"\0" * (2 * 1024 * 1024))
        return out

    monkeypatch.setattr(s3_mod, "_list", list_then_swap)
    _, _, problems = s3_mod.download_backup(s3_mod.S3Location(BUCKET, "b5-swap"), _ringfence_client(s3, monkeypatch),
                                            tmp_path / "got", trust=TRUST)
    assert problems == [f"{snapshot} holds more than the {manifest['files']['snapshot']['bytes']:,} bytes the manifest "
                        "allows: not downloaded"], problems
    assert not (tmp_path / "got" / snapshot).exists()
