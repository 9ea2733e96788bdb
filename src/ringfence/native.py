"""The compiled hot path: the order book and matching loop built with mypyc, pure Python as the reference.

    python -m ringfence.native build     # compile in place (make native; run by make demo / make test)
    python -m ringfence.native status    # which implementation an import gets, and why

The modules in `COMPILED` are ordinary, type-checked Python. `build()` compiles them with mypyc
(it ships with mypy) into extension modules placed beside their sources, and records the SHA-256
of each source it compiled in a stamp file (`_native.json`, beside them). Python's importer prefers
an extension module to a `.py` of the same name, so a build takes effect on the next start.

What an import gets (`activate()`, called by `ringfence.trading` and `ringfence.ledger` before they import
anything else):

* the compiled modules, when every one of them is built and every source still hashes to what the
  stamp recorded;
* the pure-Python sources when nothing is built (no compiler, no mypyc: `build()` warned), when
  `RINGFENCE_PURE=1`, or when any source changed since the build: a stale extension would
  otherwise silently run old code in place of the new source, so it is refused with a warning and
  the `.py` files are imported instead (by a finder in front of the importer).

Either way the two are the same program: `tests/trading/test_native.py` runs seeded command
streams through both and compares every event and the state hash. A build never fails the set-up:
with no compiler (or mypyc missing) it warns and the exchange runs on pure Python.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

__all__ = ["COMPILED", "GROUP", "activate", "build", "status", "describe", "NativeBuildWarning"]

#: The hot path: every module an order's trip through `Engine.apply` spends its time in (see
#: bench/matching.py's profile in docs/trading.md). Compiled together, so calls between them are
#: native calls.
COMPILED = (
    "ringfence.trading.book",
    "ringfence.trading.matching",
    "ringfence.trading.orders",
    "ringfence.trading.state",
    "ringfence.trading.admin",
    # A perpetual's order and fill path (its `Contract`, which the matching loop calls per fill, and
    # the margin arithmetic it asks for).
    "ringfence.derivatives.contract",
    "ringfence.derivatives.margin",
    # The derivatives state the contract reads on every order and fill (a native class: C fields;
    # its position book and isolated set subclass dict and set and stay Python, `positions.py`).
    "ringfence.derivatives.dstate",
    # The ledger's postings every order and fill makes (hold, settle_fill, settle_margin_side, ...)
    # and the account and hold records they read and write: native classes, read as C fields.
    "ringfence.ledger.account",
    "ringfence.ledger.ledger",
    # The incremental state digest replication takes after every batch (ledger/digest.py): per
    # account the batch changed, a few big-integer products (as slow compiled as interpreted,
    # session 10) but also the loop, the reads of the account's counters and digest fields (C
    # fields of the native `Account` here) and the bookkeeping around them (session 17).
    "ringfence.ledger.digest",
)
#: The shared library mypyc puts the group's code in (`ringfence/trading/_native__mypyc*.so`).
GROUP = "ringfence.trading._native"
PURE_ENV = "RINGFENCE_PURE"
_PACKAGE_DIR = Path(__file__).resolve().parent  # .../ringfence
_STAMP = _PACKAGE_DIR / "trading" / "_native.json"
_EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


class NativeBuildWarning(UserWarning):
    """The compiled hot path is not in use although it could be (stale build, failed build)."""


def _source(module: str) -> Path:
    return _PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str) -> Path:
    return _PACKAGE_DIR.parent.joinpath(*module.split(".")).with_name(module.rsplit(".", 1)[1] + _EXT_SUFFIX)


def _group_library() -> Path:
    return _extension(GROUP + "__mypyc")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _warn(message: str) -> None:
    # A warning through `warnings` (tests can catch it) and a plain line on stderr, so that a
    # user who starts the exchange sees it whatever the warning filters say.
    warnings.warn(message, NativeBuildWarning, stacklevel=3)
    print(f"ringfence: warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ selection

_state: dict[str, Any] = {}


class _PureFinder(importlib.abc.MetaPathFinder):
    """Imports the `.py` source of the compiled modules, ahead of any extension beside it."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def _decide() -> tuple[str, str]:
    """('compiled' | 'pure', why)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return "pure", f"{PURE_ENV}={os.environ[PURE_ENV]}"
    built = [m for m in COMPILED if _extension(m).exists()]
    if not built and not _group_library().exists():
        return "pure", "not built (run `make native` or `python -m ringfence.native build`)"
    try:
        stamp = json.loads(_STAMP.read_text())
        recorded: dict[str, str] = stamp["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        return "stale", "a compiled build is present without its stamp (_native.json)"
    missing = [m for m in COMPILED if not _extension(m).exists()] + ([] if _group_library().exists() else [GROUP])
    if missing:
        return "stale", f"the compiled build is incomplete (missing {', '.join(missing)})"
    changed = [m for m in COMPILED if recorded.get(m) != _digest(_source(m))]
    if changed:
        return "stale", f"the source changed since the compiled build ({', '.join(changed)})"
    return "compiled", f"mypyc {stamp.get('mypy', '?')}, built {stamp.get('built_at', '?')}"


def activate() -> dict[str, Any]:
    """Choose the implementation for this process (once; before the modules are imported)."""
    if _state:
        return _state
    kind, why = _decide()
    if kind == "compiled":
        try:  # the group's shared library loads (built for this interpreter, not truncated)
            importlib.import_module(GROUP + "__mypyc")
        except ImportError as err:
            kind, why = "stale", f"the compiled build does not load ({err})"
    if kind == "stale":
        _warn(f"{why}: the compiled hot path is NOT used, running pure Python; rebuild with `make native`")
        kind = "pure"
    if kind == "pure":
        sys.meta_path.insert(0, _PureFinder())
    _state.update(chosen=kind, reason=why)
    return _state


def status() -> dict[str, Any]:
    """What is loaded: `{"implementation": "compiled" | "pure" | "mixed", "reason", "modules"}`.

    Read from the modules actually imported (an extension's `__file__` ends in the platform's
    extension suffix), not from what was intended."""
    state = activate()
    modules = {}
    for name in COMPILED:
        module = importlib.import_module(name)
        file = getattr(module, "__file__", "") or ""
        modules[name] = "compiled" if file.endswith(_EXT_SUFFIX) else "pure"
    kinds = set(modules.values())
    implementation = kinds.pop() if len(kinds) == 1 else "mixed"
    return {"implementation": implementation, "reason": state["reason"], "modules": modules}


def describe() -> str:
    """One line for logs and `ringfence version`."""
    s = status()
    if s["implementation"] == "compiled":
        return f"hot path: compiled ({s['reason']})"
    return f"hot path: pure Python ({s['reason']})"


# ------------------------------------------------------------------------------------ build

_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
paths = sys.argv[1:]
sys.argv = [sys.argv[0], "build_ext", "--build-lib", "lib", "--build-temp", "temp"]
# The modules compiled are checked in full; those they import are read for their types only, as the
# project's own mypy settings do (pyproject.toml, `follow_imports = "silent"`, not found from this
# temporary directory). Otherwise a type error in any imported module stops the build, or not,
# depending on whether mypy finds ringfence through an installed (editable) package.
setup(name="ringfence-native", packages=[],
      ext_modules=mypycify(["--follow-imports=silent", *paths], group_name=%r, opt_level="3"))
"""


def _remove_build() -> None:
    for path in [_extension(m) for m in COMPILED] + [_group_library(), _STAMP]:
        path.unlink(missing_ok=True)


def build(verbose: bool = False) -> bool:
    """Compile `COMPILED` in place. True on success; on any failure warn, leave no extension behind
    (so pure Python runs) and return False. Never raises for a missing compiler or mypyc."""
    missing = [name for name in ("mypyc", "setuptools") if importlib.util.find_spec(name) is None]
    if missing:
        _remove_build()
        _warn(f"{' and '.join(missing)} not installed: the hot path stays pure Python (pip install 'mypy==2.4.1' setuptools, then `make native`)")
        return False
    sources = {m: _source(m) for m in COMPILED}
    digests = {m: _digest(p) for m, p in sources.items()}  # what is compiled is what is recorded
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ringfence-native-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "setup_native.py").write_text(_SETUP % GROUP)
        proc = subprocess.run(
            [sys.executable, "setup_native.py", *[str(p) for p in sources.values()]],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if verbose or proc.returncode:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        built = {m: tmp / "lib" / Path(*m.split(".")).with_name(m.rsplit(".", 1)[1] + _EXT_SUFFIX) for m in COMPILED}
        library = tmp / "lib" / Path(*GROUP.split(".")).with_name(GROUP.rsplit(".", 1)[1] + "__mypyc" + _EXT_SUFFIX)
        if proc.returncode or not library.exists() or not all(p.exists() for p in built.values()):
            _remove_build()
            compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
            lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]
            _warn(
                f"the compiled hot path could not be built (exit {proc.returncode}; C compiler {compiler!r}; "
                f"{lines[-1].strip()[:200] if lines else 'no error line'}). Is a C compiler with Python's headers "
                "installed? Falling back to pure Python: the same results, slower"
            )
            return False
        # Replace, never overwrite in place: a running process may have the old library mapped.
        for src, dst in [*((built[m], _extension(m)) for m in COMPILED), (library, _group_library())]:
            part = dst.with_name(dst.name + ".part")
            shutil.copy2(src, part)
            os.replace(part, dst)
    from importlib.metadata import version

    stamp = {
        "sources": digests,
        "mypy": version("mypy"),
        "python": sys.version.split()[0],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.perf_counter() - started, 1),  # float-ok: report
    }
    _STAMP.write_text(json.dumps(stamp, indent=1) + "\n")
    # Check that the build loads in a fresh interpreter (a broken extension must not be left in place).
    check = subprocess.run(
        [sys.executable, "-c", "import ringfence.native as n; print(n.status()['implementation'])"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(_PACKAGE_DIR.parent), os.environ.get("PYTHONPATH", "")]), PURE_ENV: ""},
    )
    if check.returncode or check.stdout.strip() != "compiled":
        _remove_build()
        sys.stderr.write(check.stderr[-4000:])
        _warn("the compiled hot path was built but does not load: removed it, falling back to pure Python")
        return False
    print(f"ringfence: compiled the hot path with mypyc {stamp['mypy']} in {stamp['build_seconds']} s: {', '.join(COMPILED)}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["build"]:
        build(verbose="-v" in args)
        return 0  # a failed build falls back to pure Python: the set-up carries on
    if args[:1] == ["status"]:
        print(json.dumps(status()))
        return 0
    if args[:1] == ["clean"]:
        _remove_build()
        return 0
    print(__doc__.split("\n\n")[1] if __doc__ else "", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # Run as `python -m ringfence.native`: use the importable module, whose choice
    # `ringfence.trading` reads (this file, run as __main__, is a second copy of it).
    from ringfence.native import main as _main

    sys.exit(_main())
