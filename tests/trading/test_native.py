"""The compiled hot path (ringfence/native.py): built with mypyc, identical to pure Python, refused
when stale, and replaced by pure Python with a warning when no compiler is present.

Every test works on its own copy of the source tree (with the checkout's build when it is fresh,
else compiled once per module into a temporary directory), so the tests never change the
checkout's own build. The differential
run is `bench/native_diff.py` on a smaller seeded stream (the seed is printed; the full run is
`python bench/native_diff.py --commands 1000000`). Reproduce a failure with
`RINGFENCE_NATIVE_SEED=<seed> pytest tests/trading/test_native.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DIFF = ROOT / "bench" / "native_diff.py"
COMMANDS = int(os.environ.get("RINGFENCE_NATIVE_COMMANDS", "20000"))

pytestmark = pytest.mark.slow  # one mypyc build (~30 s on the 2-core CI machine)


def _copy_tree(dst: Path, with_build: Path | None = None) -> Path:
    """A copy of src/ringfence (sources only; or with the build of `with_build`)."""
    src = with_build or SRC
    ignore = shutil.ignore_patterns("__pycache__") if with_build else shutil.ignore_patterns("__pycache__", "*.so", "_native.json")
    shutil.copytree(src / "ringfence", dst / "ringfence", ignore=ignore)
    return dst


def _run(tree: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(tree), "RINGFENCE_PURE": "", **(env or {})}
    return subprocess.run([sys.executable, *args], env=full, capture_output=True, text=True, timeout=timeout)


_STATUS = "import json, ringfence.native as n; print(json.dumps(n.status()))"


def _status(tree: Path, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    proc = _run(tree, "-c", _STATUS, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compiled copy: the checkout's own build when it is fresh (`make test` has just built it, so
    CI does not compile twice), else a new build of a sources-only copy."""
    own, _ = _status(SRC)
    tree = _copy_tree(tmp_path_factory.mktemp("native-built"), with_build=SRC if own["implementation"] == "compiled" else None)
    proc = None if own["implementation"] == "compiled" else _run(tree, "-m", "ringfence.native", "build")
    assert proc is None or proc.returncode == 0, proc.stderr
    status, _ = _status(tree)
    assert status["implementation"] == "compiled", f"the build did not load: {status}\n{proc.stderr[-3000:] if proc else ''}"
    return tree


def _diff(tree: Path, seed: int, n: int) -> dict[str, Any]:
    proc = _run(tree, str(DIFF), "--src", str(tree), "--seed", str(seed), "--commands", str(n), "--no-record")
    assert proc.stdout.strip(), proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["exit"] = proc.returncode
    return result


def test_compiled_and_pure_emit_the_same_events_and_state(built: Path) -> None:
    seed = int(os.environ.get("RINGFENCE_NATIVE_SEED", random.SystemRandom().randrange(1, 2**31)))
    print(f"seed={seed} commands={COMMANDS} (reproduce: RINGFENCE_NATIVE_SEED={seed} pytest {__file__})")
    result = _diff(built, seed, COMMANDS)
    assert result["problems"] == [] and result["same"] and result["exit"] == 0, result
    kinds = result["event_kinds"]
    # The stream reached the matching code's corners, not only the exchange-core mix.
    for kind in ("Trade", "OrderTriggered", "OrderFilled", "OrderExpired:SELF_TRADE_PREVENTED", "OrderExpired:FOK_NOT_FILLABLE",
                 "OrderRejected:POST_ONLY_WOULD_TAKE", "OrderRejected:INSUFFICIENT_BALANCE", "MarketStatusChanged"):
        assert kinds.get(kind, 0) > 0, (kind, kinds)


def test_the_differential_run_sees_a_difference(built: Path, tmp_path: Path) -> None:
    # A build whose stamp was forged to match a changed source (what the staleness check exists
    # to prevent) runs the old compiled code against the new pure code: the comparison must fail.
    tree = _copy_tree(tmp_path, with_build=built)
    matching = tree / "ringfence" / "trading" / "matching.py"
    text = matching.read_text()
    rounding = "seller_fee_minor = -(-notional_minor * seller_rate_ppm // _PPM)"
    assert rounding in text
    matching.write_text(text.replace(rounding, "seller_fee_minor = notional_minor * seller_rate_ppm // _PPM"))  # floor, not ceil
    stamp_path = tree / "ringfence" / "trading" / "_native.json"
    stamp = json.loads(stamp_path.read_text())
    stamp["sources"]["ringfence.trading.matching"] = hashlib.sha256(matching.read_bytes()).hexdigest()
    stamp_path.write_text(json.dumps(stamp))
    result = _diff(tree, 5, 3000)
    assert result["exit"] == 1 and not result["same"]
    assert any(p.startswith("events_sha256 differs") for p in result["problems"]), result["problems"]


def test_a_stale_build_is_refused_with_a_warning(built: Path, tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path, with_build=built)
    book = tree / "ringfence" / "trading" / "book.py"
    original = book.read_text()
    book.write_text(original + "\nSTALE_PROBE = 1\n")
    probe = _run(tree, "-c", "import ringfence.trading.book as b, ringfence.native as n, json; "
                 "print(json.dumps([getattr(b, 'STALE_PROBE', 0), n.status()]))")
    assert probe.returncode == 0, probe.stderr
    seen, status = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen == 1  # the changed source runs, not the old extension beside it
    assert status["implementation"] == "pure" and set(status["modules"].values()) == {"pure"}
    assert "source changed since the compiled build (ringfence.trading.book)" in probe.stderr
    assert "NOT used, running pure Python" in probe.stderr
    # `ringfence version` says so too
    version = _run(tree, "-m", "ringfence.cli", "version")
    assert "hot path: pure Python (the source changed since the compiled build" in version.stdout
    # Back to the compiled source: the build is used again, silently.
    book.write_text(original)
    status, stderr = _status(tree)
    assert status["implementation"] == "compiled" and "warning" not in stderr


def test_pure_on_request_and_compiled_otherwise(built: Path) -> None:
    status, stderr = _status(built, env={"RINGFENCE_PURE": "1"})
    assert status == {"implementation": "pure", "reason": "RINGFENCE_PURE=1", "modules": {m: "pure" for m in status["modules"]}}
    assert len(status["modules"]) >= 2 and "warning" not in stderr
    version = _run(built, "-m", "ringfence.cli", "version")
    assert version.returncode == 0 and version.stdout.splitlines()[1].startswith("hot path: compiled (mypyc ")


def test_no_compiler_falls_back_to_pure_python_with_a_warning(built: Path, tmp_path: Path) -> None:
    # A tree with an earlier build: a failed rebuild must not leave that (now unchecked) build behind.
    tree = _copy_tree(tmp_path, with_build=built)
    trading = tree / "ringfence" / "trading"
    assert list(trading.glob("*.so"))
    proc = _run(tree, "-m", "ringfence.native", "build", env={"CC": "/bin/false"})
    assert proc.returncode == 0, proc.stderr  # the set-up (make demo / make test) carries on
    assert "could not be built" in proc.stderr and "Falling back to pure Python" in proc.stderr
    assert "'/bin/false'" in proc.stderr
    assert not list(trading.glob("*.so")) and not (trading / "_native.json").exists()
    status, stderr = _status(tree)
    assert status["implementation"] == "pure" and status["reason"].startswith("not built")
    # ... and the exchange works: a seeded stream runs to the end on pure Python.
    run = _run(tree, str(DIFF), "--child", "--seed", "9", "--commands", "2000")
    assert run.returncode == 0, run.stderr
    child = json.loads(run.stdout.strip().splitlines()[-1])
    assert child["implementation"] == "pure" and child["commands"] == 2000 and not child["halted"]
    assert child["event_kinds"].get("Trade", 0) > 0


def test_a_build_that_does_not_load_is_refused(built: Path, tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path, with_build=built)
    (library,) = (tree / "ringfence" / "trading").glob("_native__mypyc*.so")
    library.write_bytes(b"not a shared library")
    status, stderr = _status(tree)
    assert status["implementation"] == "pure" and status["reason"].startswith("the compiled build does not load")
    assert "NOT used, running pure Python" in stderr


def test_the_makefile_rebuilds_when_any_compiled_source_changes() -> None:
    """`make setup` rebuilds the hot path when one of NATIVE_SOURCES changed: the list must name every
    module in COMPILED (a module left out would be refused as stale at import after an edit, and the
    exchange would quietly run pure Python until someone ran `make native`)."""
    from ringfence.native import COMPILED

    makefile = (ROOT / "Makefile").read_text()
    line = next(ln for ln in makefile.splitlines() if ln.startswith("NATIVE_SOURCES :="))
    listed = set(re.findall(r"src/ringfence/[\w/]+\.py", line))
    for prefix, names in re.findall(r"\$\(addprefix (src/ringfence/[\w/]+/),([^)]*)\)", line):
        listed |= {prefix + name for name in names.split()}
    wanted = {"src/ringfence/" + module.removeprefix("ringfence.").replace(".", "/") + ".py" for module in COMPILED}
    assert wanted - listed == set(), f"Makefile NATIVE_SOURCES lacks {sorted(wanted - listed)}"
