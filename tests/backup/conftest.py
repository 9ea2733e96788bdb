"""Shared by the backup tests: a small demo node, and the key that signs the backups made in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.conftest import Invoked, invoke
from ringfence.backup import BackupSigner
from ringfence.nodekey import public_hex

SIGNER = BackupSigner("backup-test-node", Ed25519PrivateKey.generate())
TRUST = {SIGNER.node_id: SIGNER.key.public_key()}


def rf(*args: str, check: bool = True, env: dict[str, str | None] | None = None,
       process: bool = False) -> subprocess.CompletedProcess[str] | Invoked:
    """`ringfence ARGS`; `env` adds variables to this process's, a None value removes one (COLUMNS=200). In this
    process (api/conftest.py `invoke`: the same command code, no Python start of about 0.6 s of CPU, more with boto3)
    unless `process`: a real `ringfence` process, which each backup command is at least once in this folder (the live
    tests' create, verify and restore, `trust-entry` in test_backup_signed.py)."""
    if not process:
        res = invoke(*args, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"ringfence {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res
    full = dict(os.environ, COLUMNS="200")
    for name, value in (env or {}).items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    proc = subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=300,
                          env=full)
    if check and proc.returncode != 0:
        raise AssertionError(f"ringfence {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_trust(path: Path, entries: dict[str, str]) -> Path:
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture
def trust_file(tmp_path) -> Path:
    """The trust file for SIGNER (kept outside every backup folder)."""
    return write_trust(tmp_path / "trusted-nodes.json", {SIGNER.node_id: public_hex(SIGNER.key)})


def trust_file_for(data: Path, path: Path) -> Path:
    """The trust file an operator writes for the node whose data directory is `data`, with `backup trust-entry`."""
    path.write_text(rf("backup", "trust-entry", "--data", str(data)).stdout)
    return path


@pytest.fixture(scope="module")
def demo_node(tmp_path_factory) -> Path:
    node = tmp_path_factory.mktemp("demo") / "node"
    rf("demo", "--data", str(node))
    return node


def verdict(stdout: str, start: str) -> str:
    """The verdict line from `start` on, as one line (the console wraps at its width)."""
    return " ".join(stdout[stdout.rindex(start):].split())
