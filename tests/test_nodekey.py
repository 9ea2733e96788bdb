"""The node key and peers file (src/ringfence/nodekey.py): private at rest, every bad entry named."""

import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from ringfence import nodekey
from ringfence.errors import ConfigError


def test_the_key_is_made_once_private_and_loaded_again(tmp_path):
    old = os.umask(0o022)
    try:
        key = nodekey.load_or_create(tmp_path / "d")
    finally:
        os.umask(old)
    path = tmp_path / "d" / nodekey.KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert nodekey.public_hex(nodekey.load_or_create(tmp_path / "d")) == nodekey.public_hex(key)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        nodekey.load_key(path)


def test_a_file_that_is_not_a_key_is_named(tmp_path):
    (tmp_path / "k").write_text("nonsense")
    os.chmod(tmp_path / "k", 0o600)
    with pytest.raises(ConfigError, match="not a PEM Ed25519 private key") as err:
        nodekey.load_key(tmp_path / "k")
    assert err.value.field == "--node-key"


@pytest.mark.parametrize("content, field, said", [
    ("[]", "--peers", "must be a JSON object"), ("{}", "--peers", "must be a JSON object"), ("{", "--peers", "is not JSON"),
    ('{"a b": "' + "0" * 64 + '"}', "--peers[a b]", "node id 'a b'"),
    ('{"a1": "' + "0" * 63 + '"}', "--peers[a1]", "node 'a1' in "),
    ('{"a1": "' + "A" * 64 + '"}', "--peers[a1]", "node 'a1' in "),
    ('{"a1": 5}', "--peers[a1]", "node 'a1' in "),
])
def test_a_bad_peers_file_is_refused_with_the_entry_named(tmp_path, content, field, said):
    (tmp_path / "peers.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        nodekey.load_peers(tmp_path / "peers.json")
    assert err.value.field == field
    assert said in err.value.message  # the entry is named in the text too, not only in the field


def test_a_bad_peers_entry_is_named_by_the_command(tmp_path):
    from typer.testing import CliRunner

    from ringfence.cli import app

    (tmp_path / "peers.json").write_text('{"a": "' + "0" * 64 + '", "b": "' + "0" * 40 + '"}')
    result = CliRunner().invoke(app, ["replication", "status", "--nats", "nats://127.0.0.1:4222/RF", "--peers",
                                      str(tmp_path / "peers.json")], env={"COLUMNS": "300"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "--peers[b]: node 'b' in" in out and "got 40 characters" in out, out


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=256), flip=st.integers(min_value=0, max_value=63 * 8 + 7))
def test_a_signature_verifies_for_its_data_only(tmp_path_factory, data, flip):
    d = tmp_path_factory.mktemp("k")
    key = nodekey.load_or_create(d)
    (d / "peers.json").write_text(json.dumps({"a1": nodekey.public_hex(key)}))
    pub = nodekey.load_peers(d / "peers.json")["a1"]
    sig = key.sign(data)
    assert nodekey.verify(pub, sig, data)
    bad = bytearray(sig)
    bad[flip // 8] ^= 1 << (flip % 8)
    assert not nodekey.verify(pub, bytes(bad), data)
    assert not nodekey.verify(pub, sig, data + b"x")
