"""Secret files a node writes and reads again (staff key files, demo-staff.json, the rates token, the
pseudonym key of `monitoring deidentify`, identity-store.json, the custody admin token, demo-keys.json,
key shares, custody-meta.json): written as a new file of this user's (nodekey.write_private,
O_EXCL|O_NOFOLLOW), never through a `.tmp` or a link someone else put there; read only if this user's
(owned.read_own_file)."""

import json
import os
import stat

import pytest

from ringfence.errors import ConfigError

OTHER = 4242
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="plays the other user with chown (root only)")


def _staff_key(path):
    from ringfence.staff.decisions import StaffKey, write_key_file

    write_key_file(path, StaffKey.from_seed_hex("dora", "11" * 32))
    return "11" * 32


def _demo(path):
    from ringfence.staff.demo import _write_0600

    _write_0600(path, {"staff": [{"staff_id": "ada", "private_key": "22" * 32}]})
    return "22" * 32


def _identity_store(path):
    from sqlalchemy import create_engine

    from ringfence.store import record_location

    record_location(path.parent, create_engine(f"sqlite:///{path.parent / 'identity.sqlite3'}"))
    return "identity.sqlite3"


def _custody_admin(path):
    from ringfence.api.chain_admin import write_admin_file

    return write_admin_file(path.parent.parent, "http://127.0.0.1:8000/custody-admin")


def _demo_keys(path, monkeypatch):
    from types import SimpleNamespace

    from ringfence.api import demo
    from ringfence.identity import api_keys

    monkeypatch.setattr(api_keys, "issue_demo_key", lambda ctx, account, email, **kw: SimpleNamespace(
        api_key=f"key-{account}", secret=f"secret-{account}-33", scopes=("read", "trade")))
    demo.write_demo_keys(None, path.parent)
    return "secret-alice-33"


def _key_share(path):
    from ringfence.keys.share_store import _atomic_write

    _atomic_write(path, b"sealed-share-44")
    return "sealed-share-44"


def _custody_meta(path):
    from ringfence.custody.runtime import _write_private

    _write_private(path, '{"usdt_contract": "0x55"}')
    return "0x55"


WRITERS = [pytest.param(_staff_key, "dora.key", id="staff.write_key_file"),
           pytest.param(_demo, "demo-staff.json", id="staff.demo"),
           pytest.param(_identity_store, "identity-store.json", id="store.record_location"),
           pytest.param(_custody_admin, "custody/admin.json", id="chain_admin.write_admin_file"),
           pytest.param(_demo_keys, "demo-keys.json", id="api.demo.write_demo_keys"),
           pytest.param(_key_share, "k1.share", id="keys.share_store"),
           pytest.param(_custody_meta, "custody-meta.json", id="custody.runtime")]


def _planted(folder, name, how):
    """`NAME.tmp` put there beforehand by another user: a file of theirs, open to all, or a link to one."""
    decoy = folder / "theirs"
    decoy.write_text("")
    os.chmod(decoy, 0o666)
    os.chown(decoy, OTHER, OTHER)
    tmp = folder / (name + ".tmp")
    tmp.parent.mkdir(exist_ok=True)
    if how == "link":
        tmp.symlink_to(decoy)
    else:
        tmp.write_text("")
        os.chmod(tmp, 0o666)
        os.chown(tmp, OTHER, OTHER)
    return decoy


@as_root
@pytest.mark.parametrize("how", ["file", "link"])
@pytest.mark.parametrize(("write", "name"), WRITERS)
def test_a_tmp_file_another_user_planted_is_never_written_through(tmp_path, write, name, how, monkeypatch):
    decoy = _planted(tmp_path, name, how)
    secret = write(tmp_path / name, monkeypatch) if write is _demo_keys else write(tmp_path / name)
    info = os.lstat(tmp_path / name)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o777 == 0o600
    assert secret in (tmp_path / name).read_text()
    assert decoy.read_text() == ""  # their file never held the secret
    assert not os.path.lexists(tmp_path / (name + ".tmp"))


@as_root
def test_the_identity_store_record_never_writes_through_a_link(tmp_path):
    """The exploit itself: DIR/.identity-store.json.tmp (the name record_location used) linked to a root file."""
    victim = tmp_path / "shadow"
    victim.write_text("root:x:0:0\n")
    (tmp_path / ".identity-store.json.tmp").symlink_to(victim)
    _identity_store(tmp_path / "identity-store.json")
    assert victim.read_text() == "root:x:0:0\n"
    assert not os.path.islink(tmp_path / "identity-store.json")
    assert os.lstat(tmp_path / "identity-store.json").st_mode & 0o777 == 0o600


@as_root
def test_a_rates_token_another_user_planted_is_refused(tmp_path, monkeypatch):
    from ringfence.i18n.fiat import load_or_create_token

    monkeypatch.delenv("RINGFENCE_API_RATES_TOKEN", raising=False)
    token = load_or_create_token(tmp_path)
    path = tmp_path / "rates-token"
    assert os.stat(path).st_mode & 0o777 == 0o600 and load_or_create_token(tmp_path) == token
    os.chown(path, OTHER, OTHER)  # theirs: they would set the rates every price is converted with
    with pytest.raises(ConfigError, match=f"belongs to user id {OTHER}") as err:
        load_or_create_token(tmp_path)
    assert err.value.field == "--data"
    path.unlink()
    (tmp_path / "elsewhere").write_text("their-token\n")
    os.chmod(tmp_path / "elsewhere", 0o600)
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="is a symbolic link"):
        load_or_create_token(tmp_path)
    assert (tmp_path / "elsewhere").read_text() == "their-token\n"


@as_root
def test_a_pseudonym_key_another_user_planted_is_refused(tmp_path):
    from ringfence.errors import ValidationError
    from ringfence.monitoring.deid import new_key_file, read_key_file

    path = tmp_path / "pseudo.key"
    key = new_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600 and read_key_file(path).key_id == key.key_id
    with pytest.raises(ValidationError, match="exists"):
        new_key_file(path)
    os.chown(path, OTHER, OTHER)
    with pytest.raises(ConfigError, match=f"belongs to user id {OTHER}") as err:
        read_key_file(path)
    assert err.value.field == "--key-file"


@as_root
def test_a_demo_staff_file_another_user_planted_is_not_read(tmp_path):
    from ringfence.staff.demo import _add_demo_logins

    path = tmp_path / "demo-staff.json"
    path.write_text(json.dumps({"staff": [{"staff_id": "ada"}]}))
    os.chmod(path, 0o600)
    os.chown(path, OTHER, OTHER)
    with pytest.raises(ConfigError, match=f"belongs to user id {OTHER}"):
        _add_demo_logins(path, object())
