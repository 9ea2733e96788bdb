"""Signed backups (intruder review of #21, F4): a backup is trusted only as far as its manifest's signature.

The intruder changed a user's e-mail inside the identity copy of a backup, recomputed its SHA-256 in
MANIFEST.json, and `backup verify` and `backup restore` said OK. The same works for the journal: a
shorter, rewritten history with its own snapshot and a manifest to match is a sound backup of
something that never happened. Now the manifest is signed by the node that wrote the backup, and
verify/restore check it against a trust file kept apart from the backups, before anything else.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from ringfence.backup import (
    MANIFEST,
    BackupInvalid,
    BackupSigner,
    create_backup,
    render_manifest,
    restore_backup,
    verify_backup,
)
from ringfence.nodekey import load_key, public_hex

from .conftest import SIGNER, TRUST, rf, verdict, write_trust


def _identity_db(path: Path) -> Path:
    """A SQLite identity store with the real schema and one staff user (id 1)."""
    from sqlalchemy import create_engine, text

    from ringfence.store.models import Base

    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO identity_users (id, account_id, email, password_hash, created_at_s, email_verified, "
                          "totp_enabled, totp_last_step, mfa_failures, mfa_locked_until_s, withdrawals_locked_until_s, "
                          "frozen) VALUES (1, 'acct-1', 'staff@ringfence.test', 'x', 0, 1, 0, 0, 0, 0, 0, 0)"))
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def signed_backup(demo_node, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signed")
    create_backup(demo_node, root / "bk", signer=SIGNER, identity_db=_identity_db(root / "identity.sqlite3"))
    return root / "bk"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_identity(bk: Path) -> None:
    """The intruder's edit: staff user 1's e-mail, and the identity file's SHA-256 in the manifest to match."""
    conn = sqlite3.connect(bk / "identity.sqlite3")
    conn.execute("UPDATE identity_users SET email = 'intruder@evil.test' WHERE id = 1")
    conn.commit()
    conn.close()
    manifest = json.loads((bk / MANIFEST).read_bytes())
    manifest["files"]["identity"]["sha256"] = _sha256(bk / "identity.sqlite3")
    (bk / MANIFEST).write_bytes(render_manifest(manifest))  # byte for byte the layout create writes


def _rewrite_journal(bk: Path, tmp: Path) -> None:
    """The same for the journal: swap in a shorter, rewritten history (a point-in-time cut inside a batch:
    a record with a new hash), its snapshot, and every manifest field and SHA-256 to match."""
    manifest = json.loads((bk / MANIFEST).read_bytes())
    cut = restore_backup(bk, tmp / "cut", trust=TRUST, to_seq=manifest["last_seq"] - 1)
    for sub in ("journal", "snapshots"):
        shutil.rmtree(bk / sub)
        shutil.copytree(tmp / "cut" / "engine" / sub, bk / sub)
    manifest.update(last_seq=cut.last_seq, records=cut.records, commands=cut.commands, chain_head=cut.chain_head,
                    state_hash=cut.state_hash)
    manifest["files"]["journal"] = [{"name": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)}
                                    for p in sorted((bk / "journal").glob("*.rfj"))]
    snap = next((bk / "snapshots").iterdir())
    manifest["files"]["snapshot"] = {"name": snap.name, "seq": cut.last_seq, "sha256": _sha256(snap)}
    (bk / MANIFEST).write_bytes(render_manifest(manifest))


@pytest.mark.parametrize("attack", ["identity", "journal"])
def test_the_intruders_edit_with_a_recomputed_sha256_is_refused_by_verify_and_restore(
        attack, signed_backup, tmp_path, trust_file):
    bk = tmp_path / "bk"
    shutil.copytree(signed_backup, bk)
    assert not verify_backup(bk, trust=TRUST).problems  # the genuine backup passes
    _edit_identity(bk) if attack == "identity" else _rewrite_journal(bk, tmp_path)
    with pytest.raises(BackupInvalid) as err:
        verify_backup(bk, trust=TRUST)
    assert err.value.field == "MANIFEST.json:signature" and "changed after it was signed" in err.value.message
    proc = rf("backup", "verify", str(bk), "--trust", str(trust_file), check=False)
    assert proc.returncode == 1 and "MANIFEST.json:signature" in proc.stderr, proc.stdout + proc.stderr
    proc = rf("backup", "restore", str(bk), "--trust", str(trust_file), "--to", str(tmp_path / "restored"), check=False)
    assert proc.returncode == 1 and "MANIFEST.json:signature" in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "restored").exists()  # refused before anything was made


def test_a_backup_signed_by_a_key_the_trust_file_does_not_hold_is_refused(demo_node, tmp_path, trust_file):
    impostor = Ed25519PrivateKey.generate()
    for name, signer, field in (("same-name", BackupSigner(SIGNER.node_id, impostor), "signer.public_key"),
                                ("unknown", BackupSigner("not-listed", impostor), "signer.node_id"),
                                ("unknown-real-key", BackupSigner("not-listed", SIGNER.key), "signer.node_id")):
        create_backup(demo_node, tmp_path / name, signer=signer)
        with pytest.raises(BackupInvalid) as err:
            verify_backup(tmp_path / name, trust=TRUST)
        assert err.value.field == f"MANIFEST.json:{field}", (name, err.value)
        with pytest.raises(BackupInvalid):
            restore_backup(tmp_path / name, tmp_path / f"{name}-restored", trust=TRUST)
        assert not (tmp_path / f"{name}-restored").exists()
        proc = rf("backup", "restore", str(tmp_path / name), "--trust", str(trust_file), "--to",
                  str(tmp_path / f"{name}-cli"), check=False)
        assert proc.returncode == 1 and f"MANIFEST.json:{field}" in proc.stderr, proc.stderr
        assert not (tmp_path / f"{name}-cli").exists()


def test_an_unsigned_backup_is_refused_and_accepted_only_in_dev_mode_with_allow_unsigned(signed_backup, tmp_path, trust_file):
    bk = tmp_path / "bk"
    shutil.copytree(signed_backup, bk)
    manifest = json.loads((bk / MANIFEST).read_bytes())
    del manifest["signature"], manifest["signer"]
    (bk / MANIFEST).write_bytes(render_manifest(manifest))  # as a backup made before signing
    with pytest.raises(BackupInvalid) as err:
        verify_backup(bk, trust=TRUST)
    assert err.value.field == "MANIFEST.json:signature" and "not signed" in err.value.message
    proc = rf("backup", "verify", str(bk), "--trust", str(trust_file), check=False)
    assert proc.returncode == 1 and "MANIFEST.json:signature: the backup is not signed" in proc.stderr, proc.stderr
    proc = rf("backup", "verify", str(bk), check=False)  # no trust file at all
    assert proc.returncode == 2 and "--trust:" in proc.stderr, proc.stderr
    # Settings' mode defaults to dev: an operator's shell without RINGFENCE_MODE must not be dev mode here
    # (intruder review I5), and an untrusted backup is never "OK (signature…)" even when accepted
    last = json.loads((bk / MANIFEST).read_bytes())["last_seq"]
    for mode in ("prod", None, "dev"):
        for command in (("verify", str(bk)), ("restore", str(bk), "--to", str(tmp_path / f"restored-{mode}"))):
            proc = rf("backup", *command, "--allow-unsigned", check=False, env={"RINGFENCE_MODE": mode})
            if mode == "prod":
                assert proc.returncode == 2 and "--allow-unsigned: refused outside dev mode" in proc.stderr, proc.stderr
            elif mode is None:
                assert proc.returncode == 2 and "--allow-unsigned: needs RINGFENCE_MODE=dev set explicitly" in proc.stderr
            else:
                assert proc.returncode == 3 and "warning:" in proc.stderr and "NOT TRUSTED" in proc.stderr, proc.stderr
                line = verdict(proc.stdout, "backup verify:" if command[0] == "verify" else "restore:")
                assert line.split(": ", 1)[1].startswith("NOT TRUSTED") and f"last sequence {last:,}" in line, line
                assert "OK" not in proc.stdout, proc.stdout
    assert not (tmp_path / "restored-prod").exists() and not (tmp_path / "restored-None").exists()
    assert (tmp_path / "restored-dev" / "engine").is_dir()
    help_text = " ".join(rf("backup", "verify", "--help").stdout.replace("│", " ").split())
    assert "3 sound but NOT TRUSTED" in help_text, help_text
    # a trusted node's signature that does not verify is refused even with --allow-unsigned
    shutil.rmtree(bk)
    shutil.copytree(signed_backup, bk)
    _edit_identity(bk)
    proc = rf("backup", "verify", str(bk), "--trust", str(trust_file), "--allow-unsigned", check=False,
              env={"RINGFENCE_MODE": "dev"})
    assert proc.returncode == 1 and "MANIFEST.json:signature" in proc.stderr, proc.stderr


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_change_to_any_byte_of_the_manifest_fails_verification(signed_backup, data):
    """Property: replacing, deleting or inserting any byte of a signed MANIFEST.json is refused
    (BackupInvalid naming the manifest) before a single file is read."""
    path = signed_backup / MANIFEST
    genuine = path.read_bytes()
    i = data.draw(st.integers(0, len(genuine) - 1), label="offset")
    how = data.draw(st.sampled_from(["replace", "delete", "insert"]), label="how")
    if how == "replace":
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != genuine[i]), label="byte")
        changed = genuine[:i] + bytes([byte]) + genuine[i + 1:]
    elif how == "delete":
        changed = genuine[:i] + genuine[i + 1:]
    else:
        changed = genuine[:i] + bytes([data.draw(st.integers(0, 255), label="byte")]) + genuine[i:]
    try:
        path.write_bytes(changed)
        with pytest.raises(BackupInvalid) as err:
            verify_backup(signed_backup, trust=TRUST)
        assert err.value.field is not None and err.value.field.startswith(("MANIFEST.json", "BACKUPDIR")), err.value
    finally:
        path.write_bytes(genuine)


def test_bad_input_to_restore_and_create_creates_nothing(signed_backup, demo_node, tmp_path, trust_file):
    """New-user review: a refused command used to leave an empty --to folder behind."""
    target = tmp_path / "restored"
    last = json.loads((signed_backup / MANIFEST).read_bytes())["last_seq"]
    cases = [
        (["backup", "restore", str(signed_backup), "--trust", str(trust_file), "--to", str(target), "--to-seq", "99999"],
         f"--to-seq: must be between 1 and {last}", {}),
        (["backup", "restore", str(tmp_path / "no-such-backup"), "--trust", str(trust_file), "--to", str(target)],
         "BACKUPDIR:", {}),
        (["backup", "restore", str(signed_backup), "--trust", str(tmp_path / "no-trust.json"), "--to", str(target)],
         "--trust:", {}),
        (["backup", "create", "--data", str(demo_node), "--to", str(target)],
         "RINGFENCE_DATABASE_URL: cannot open the database", {"RINGFENCE_DATABASE_URL": "postgresql://rf:pw@127.0.0.1:1/none"}),
        (["backup", "create", "--data", str(demo_node), "--to", str(target)],
         "RINGFENCE_DATABASE_URL: is not a database URL", {"RINGFENCE_DATABASE_URL": "postgresql://rf:pw@127.0.0.1:notaport/x"}),
        (["backup", "create", "--data", str(demo_node), "--to", str(target), "--sign-key", str(tmp_path / "none.key")],
         "--sign-key:", {}),
    ]
    for args, expected, env in cases:
        proc = rf(*args, check=False, env=env)
        assert proc.returncode != 0 and expected in proc.stderr, (args, proc.stdout, proc.stderr)
        assert "pw" not in proc.stderr.replace("pwd", "")  # the database password is never printed
        assert not target.exists(), args


def test_a_backup_inside_the_data_directory_it_backs_up_is_refused(demo_node, tmp_path):
    """New-user review: `backup create --data ./b --to ./b/inside` (b as `serve --data` lays it out: the node in
    b/engine) said OK; a backup in the node's own folder dies with it."""
    data = tmp_path / "b"
    shutil.copytree(demo_node, data / "engine")
    for named in (data, data / "engine"):
        proc = rf("backup", "create", "--data", str(named), "--to", str(data / "inside"), check=False)
        assert proc.returncode == 2 and "--to:" in proc.stderr and "inside the data directory" in proc.stderr, proc.stderr
        assert not (data / "inside").exists()


def test_trust_entry_prints_the_key_that_signs_a_nodes_backups(demo_node, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_node, data / "engine")
    out = rf("backup", "trust-entry", "--data", str(data), "--node-id", "primary-a", process=True).stdout
    key = load_key(data / "node.key")  # made on first use, in the data directory beside engine/
    assert json.loads(out) == {"primary-a": public_hex(key)}
    trust = write_trust(tmp_path / "trusted-nodes.json", json.loads(out))
    rf("backup", "create", "--data", str(data), "--to", str(tmp_path / "bk"), "--node-id", "primary-a")
    manifest = json.loads((tmp_path / "bk" / MANIFEST).read_bytes())
    assert manifest["signer"] == {"node_id": "primary-a", "public_key": public_hex(key)}
    assert "backup verify: OK" in rf("backup", "verify", str(tmp_path / "bk"), "--trust", str(trust)).stdout
    proc = rf("backup", "trust-entry", "--data", str(data), "--node-id", "-bad id", check=False)
    assert proc.returncode == 2 and "--node-id:" in proc.stderr, proc.stderr


def test_a_missing_boto3_names_the_option_of_each_command_and_the_s3_extra(demo_node, tmp_path, trust_file):
    fake = tmp_path / "no-boto3"
    (fake / "boto3").mkdir(parents=True)
    (fake / "boto3" / "__init__.py").write_text("raise ImportError('boto3 is hidden for this test')\n")
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    for args, field in ((["verify", "s3://rf-backups/x", "--trust", str(trust_file)], "BACKUPDIR"),
                        (["restore", "s3://rf-backups/x", "--trust", str(trust_file), "--to", str(tmp_path / "r")], "BACKUPDIR"),
                        (["create", "--data", str(demo_node), "--to", "s3://rf-backups/x"], "--to")):
        proc = rf("backup", *args, check=False, env=env, process=True)  # a process: boto3 hidden by its PYTHONPATH
        assert proc.returncode == 1, proc.stderr
        text = " ".join(proc.stderr.split())
        assert f"{field}: an s3:// location needs boto3" in text and "pip install 'ringfence[s3]'" in text, text
    assert not (tmp_path / "r").exists()
