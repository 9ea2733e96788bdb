"""The proof-of-liabilities modules split by idea: the verifier a user runs offline is stdlib only,
and every public name is still importable from `ringfence.solvency` (and the old `pol` path)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ringfence.solvency as solvency
from ringfence.solvency.pol_builder import build_liability_tree

SRC = str(Path(solvency.__file__).resolve().parents[2])

#: Runs in a fresh interpreter: a meta-path finder refuses every import outside the standard library
#: and ringfence itself, then the verifier is imported and checks a real proof read from stdin.
_STDLIB_ONLY = r"""
import importlib.abc, json, sys
at_startup = set(sys.modules)  # what site.py loaded before us (e.g. setuptools' _distutils_hack)

class RefuseNonStdlib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top == "ringfence":
            return None  # let the normal finders load it
        raise ImportError(f"the offline verifier must not import {name!r} (not in the standard library)")

sys.meta_path.insert(0, RefuseNonStdlib())
from ringfence.solvency.pol_verifier import verify_proof
doc = json.loads(sys.stdin.read())
ok, why = verify_proof(doc["proof"], doc["root"])
outside = sorted({m.partition(".")[0] for m in set(sys.modules) - at_startup} - set(sys.stdlib_module_names) - {"ringfence"})
print(json.dumps({"ok": ok, "why": why, "outside": outside,
                  "builder_loaded": "ringfence.solvency.pol_builder" in sys.modules}))
"""


def _run_stdlib_only(payload: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {SRC!r})\n" + _STDLIB_ONLY],
                          input=json.dumps(payload), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def proof_and_root() -> dict:
    snap = hashlib.sha256(b"split test").digest()
    tree = build_liability_tree(snap, ["BTC", "USDT"], [("ann", [5, 7]), ("ben", [0, 3]), ("cat", [2, 0])], b"s" * 32)
    return {"proof": tree.proof_for("ben"), "root": tree.root_document()}


def test_the_verifier_runs_with_the_standard_library_only(proof_and_root):
    out = _run_stdlib_only(proof_and_root)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"ok": True, "why": "valid", "outside": [], "builder_loaded": False}


def test_the_stdlib_only_check_can_fail(proof_and_root):
    """The hook really refuses: a verifier that imported numpy would fail this way."""
    payload = dict(proof_and_root)
    code = _STDLIB_ONLY.replace("from ringfence.solvency.pol_verifier import verify_proof",
                                "import numpy\nfrom ringfence.solvency.pol_verifier import verify_proof")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {SRC!r})\n" + code],
                         input=json.dumps(payload), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "must not import 'numpy'" in out.stderr


def test_a_tampered_proof_fails_in_the_stdlib_only_verifier(proof_and_root):
    proof = json.loads(json.dumps(proof_and_root["proof"]))
    proof["balances"][1] = str(int(proof["balances"][1]) + 1)
    out = _run_stdlib_only({"proof": proof, "root": proof_and_root["root"]})
    result = json.loads(out.stdout)
    assert result["ok"] is False and result["why"] != "valid"


def test_public_names_are_importable_from_the_package_and_the_old_path():
    import ringfence.solvency.pol as pol

    for name in solvency.__all__:
        assert getattr(solvency, name) is not None, name
    for name in pol.__all__:
        assert getattr(pol, name) is not None, name
    assert solvency.build_liability_tree is pol.build_liability_tree is build_liability_tree
    assert solvency.verify_proof is pol.verify_proof
