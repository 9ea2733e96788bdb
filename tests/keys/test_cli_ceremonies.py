"""Key ceremonies through `ringfence keys ...` against real signer processes; then grep every log for
key material (shares, operator key, passphrases, token) and prove it never appears."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import coincurve
from typer.testing import CliRunner

from ringfence.cli import app
from ringfence.keys.ceremony import load_operator_private_key
from ringfence.keys.coordinator import ThresholdCoordinator
from ringfence.keys.interface import Scheme, SigningRequest
from ringfence.keys.keylog import KeyOperationLog
from ringfence.keys.share_store import EncryptedShareStore

from .conftest import PASSPHRASES, TOKEN, SignerProcs

OPERATOR_PASS = "operator-alice-passphrase"
ENV = {"RINGFENCE_SIGNER_TOKEN": TOKEN, "RINGFENCE_OPERATOR_PASSPHRASE": OPERATOR_PASS}
runner = CliRunner()


def run(args: list[str], **env: str) -> str:
    res = runner.invoke(app, args, env={**ENV, **env})
    assert res.exit_code == 0, f"ringfence {' '.join(args)} failed:\n{res.output}\n{res.exception!r}"
    return res.output


def sign_ok(urls: dict[int, str], quorum: list[int], msg: bytes) -> bytes:
    c = ThresholdCoordinator(urls, TOKEN)
    try:
        sig = c.sign(SigningRequest(request_id="cli-" + msg.hex()[:8], key_id="vault", digest=msg, scheme=Scheme.BIP340,
                                    requested_by="t", reason="cli test"), quorum)
    finally:
        c.close()
    assert coincurve.PublicKeyXOnly(sig.public_key).verify(sig.signature, msg)
    return sig.public_key


def specs(procs: SignerProcs, ids: list[int]) -> list[str]:
    out: list[str] = []
    for i in ids:
        out += ["--signer", f"{i}={procs.url[i]}"]
    return out


def shares_hex(procs: SignerProcs, ids: list[int]) -> set[str]:
    found = set()
    for i in ids:
        st = EncryptedShareStore(procs.root / f"signer-{i}", PASSPHRASES[i])
        if st.has("vault"):
            kp = st.get("vault")
            found.add(kp.suite.group.serialize_scalar(kp.secret_share).hex())
    return found


def test_ceremonies_end_to_end_and_no_key_material_in_logs(signer_procs: SignerProcs, tmp_path: Path) -> None:
    for i in (1, 2, 3):
        signer_procs.start(i)
    log = tmp_path / "keyops.jsonl"
    common = ["--operator", "alice", "--log", str(log)]
    seen_secrets: set[str] = set()

    o = run(["keys", "create", "--key-id", "vault", "--threshold", "2", *specs(signer_procs, [1, 2, 3]),
             "--reason", "new vault", *common])
    gpk = re.search(r"group_public_key: ([0-9a-f]+)", o).group(1)  # type: ignore[union-attr]
    assert "taproot_address_regtest: bcrt1p" in o
    xonly = sign_ok(dict(signer_procs.url), [1, 2], b"\x10" * 32)
    seen_secrets |= shares_hex(signer_procs, [1, 2, 3])

    before = shares_hex(signer_procs, [1])
    o = run(["keys", "rotate", "--key-id", "vault", *specs(signer_procs, [1, 2, 3]), "--reason", "rotation", *common])
    assert gpk in o and shares_hex(signer_procs, [1]) != before
    assert sign_ok(dict(signer_procs.url), [2, 3], b"\x11" * 32) == xonly
    seen_secrets |= shares_hex(signer_procs, [1, 2, 3])

    signer_procs.start(4)
    o = run(["keys", "add-signer", "--key-id", "vault", *specs(signer_procs, [1, 2, 3]), "--quorum", "1,3",
             "--new-signer", f"4={signer_procs.url[4]}", "--threshold", "2", "--reason", "add signer 4", *common])
    assert gpk in o and "2 of 4" in o
    assert sign_ok(dict(signer_procs.url), [2, 4], b"\x12" * 32) == xonly
    seen_secrets |= shares_hex(signer_procs, [1, 2, 3, 4])

    o = run(["keys", "remove-signer", "--key-id", "vault", *specs(signer_procs, [1, 2, 3, 4]), "--remove", "2",
             "--quorum", "1,3", "--threshold", "2", "--yes", "--reason", "decommission 2", *common])
    assert gpk in o and "2 of 3" in o
    assert not EncryptedShareStore(signer_procs.root / "signer-2", PASSPHRASES[2]).has("vault")
    urls = {i: signer_procs.url[i] for i in (1, 3, 4)}
    assert sign_ok(urls, [1, 4], b"\x13" * 32) == xonly
    seen_secrets |= shares_hex(signer_procs, [1, 3, 4])

    # backup signer 1's share to alice's operator key; lose signer 1's disk; restore; sign again
    opkey = tmp_path / "alice.key"
    run(["keys", "operator-keygen", "--out", str(opkey), *common])
    bfile = tmp_path / "vault-1.backup"
    run(["keys", "backup", "--store", str(signer_procs.root / "signer-1"), "--key-id", "vault", "--operator-key",
         str(opkey), "--out", str(bfile), "--reason", "offsite", *common], RINGFENCE_SIGNER_PASSPHRASE=PASSPHRASES[1])
    original = shares_hex(signer_procs, [1])
    signer_procs.stop(1)
    shutil.rmtree(signer_procs.root / "signer-1")
    run(["keys", "restore", "--backup", str(bfile), "--operator-key", str(opkey), "--store",
         str(signer_procs.root / "signer-1"), "--reason", "disk failed", *common],
        RINGFENCE_STORE_PASSPHRASE=PASSPHRASES[1])
    assert shares_hex(signer_procs, [1]) == original
    signer_procs.start(1)
    assert sign_ok({i: signer_procs.url[i] for i in (1, 3, 4)}, [1, 3], b"\x14" * 32) == xonly
    # a wrong operator passphrase cannot open the backup
    res = runner.invoke(app, ["keys", "restore", "--backup", str(bfile), "--operator-key", str(opkey), "--store",
                              str(tmp_path / "elsewhere"), "--reason", "x", *common],
                        env={**ENV, "RINGFENCE_OPERATOR_PASSPHRASE": "not alices passphrase",
                             "RINGFENCE_STORE_PASSPHRASE": "some store passphrase"})
    assert res.exit_code != 0

    shown = run(["keys", "show", "--key-id", "vault", "--signer", f"3={signer_procs.url[3]}"])
    assert gpk in shown and "taproot_output_key: " in shown and "2 of 3" in shown
    run(["keys", "verify-log", "--log", str(log)])
    actions = [e["action"] for e in KeyOperationLog(log).entries()]
    assert actions == ["key_created", "key_rotated", "signer_added", "signer_removed", "operator_key_created",
                       "share_backed_up", "share_restored"]
    assert all(e["actor"] == "alice" and e["reason"] for e in KeyOperationLog(log).entries())

    # ---- grep every log and journal for key material ----
    op_priv = load_operator_private_key(opkey, OPERATOR_PASS).private_bytes_raw().hex()
    needles = {s for s in seen_secrets} | {op_priv, OPERATOR_PASS, TOKEN, *PASSPHRASES.values()}
    assert len(seen_secrets) >= 6
    logs = [log, *signer_procs.root.glob("signer-*.log"), *signer_procs.root.glob("signer-*/keyops.jsonl")]
    assert len(logs) >= 5
    for f in logs:
        text = f.read_bytes().decode(errors="replace").lower()
        for n in needles:
            assert n.lower() not in text, f"key material found in {f}"
            if re.fullmatch(r"[0-9a-f]{64}", n):
                assert bytes.fromhex(n) not in f.read_bytes(), f"raw key bytes found in {f}"
        assert "secret_share" not in text and "hiding" not in text


def test_cli_rejects_bad_signer_spec() -> None:
    res = runner.invoke(app, ["keys", "create", "--key-id", "x", "--threshold", "2", "--signer", "nonsense",
                              "--operator", "a", "--reason", "r"], env=ENV)
    assert res.exit_code != 0 and "ID=URL" in res.output


def test_every_keys_command_has_help_with_example() -> None:
    for cmd in ["create", "add-signer", "remove-signer", "rotate", "operator-keygen", "backup", "restore", "show",
                "verify-log"]:
        res = runner.invoke(app, ["keys", cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output, cmd
