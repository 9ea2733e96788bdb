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
