"""`ringfence staff init` (genesis on a stopped node, once) and `staff keygen`, as processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from ringfence.app import replay_journal
from ringfence.staff import read_key_file, staff_of


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def test_staff_init_creates_the_genesis_quorum_once(tmp_path) -> None:
    data, keys = tmp_path / "data", tmp_path / "keys"
    out = cli("staff", "init", "--data", str(data), "--member", "ada:operator,approver", "--member", "ben:operator",
              "--member", "cy:analyst", "--out-dir", str(keys))
    assert out.returncode == 0, out.stderr
    engine, _, _ = replay_journal(data / "engine")
    members = staff_of(engine).members
    assert sorted(members) == ["ada", "ben", "cy"] and staff_of(engine).quorum == 2
    for sid in members:
        path = keys / f"{sid}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert read_key_file(path).public_hex == members[sid].public_key
    out = cli("staff", "init", "--data", str(data), "--member", "eve:operator", "--member", "mal:operator",
              "--out-dir", str(tmp_path / "keys2"))
    assert out.returncode == 1 and "rule 'genesis-once'" in out.stderr, out.stderr
    assert not (tmp_path / "keys2" / "eve.key").exists()  # no key file for a refused genesis
    out = cli("staff", "init", "--data", str(tmp_path / "d2"), "--member", "solo:operator", "--quorum", "1",
              "--out-dir", str(tmp_path / "k3"))
    assert out.returncode == 2  # a quorum of one is refused before anything happens


def test_keygen_never_overwrites_a_key(tmp_path) -> None:
    out = cli("staff", "keygen", "dora", "--out", str(tmp_path / "dora.key"))
    assert out.returncode == 0 and len(out.stdout.strip()) == 64
    again = cli("staff", "keygen", "dora", "--out", str(tmp_path / "dora.key"))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert read_key_file(tmp_path / "dora.key").public_hex == out.stdout.strip()


def test_a_team_key_file_asks_for_a_member_the_way_key_takes_it(tmp_path) -> None:
    """DIR/demo-staff.json holds several members: naming none, or one it does not hold, is refused
    with the `--key FILE#STAFF_ID` form the console takes (there is no --staff-id option)."""
    import json

    import pytest

    from ringfence.errors import ValidationError

    team = tmp_path / "demo-staff.json"
    seeds = {"ada": "11" * 32, "cy": "22" * 32}
    team.write_text(json.dumps({"staff": [{"staff_id": k, "private_key": v} for k, v in seeds.items()]}))
    for who in (None, "nobody"):
        with pytest.raises(ValidationError) as err:
            read_key_file(team, who)
        assert f"--key {team}#STAFF_ID" in str(err.value) and "--staff-id" not in str(err.value)
    assert read_key_file(team, "cy").staff_id == "cy"
