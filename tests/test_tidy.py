"""Tidy: patterns the code base refuses, checked on every run (in the spirit of TigerBeetle's tidy.zig).

Each check reads the source as text or as a syntax tree; none imports the code. A failure names
the file, the line and the rule, so the fix is obvious. Rules:

* no `float` in `src/ringfence` without a `# float-ok: reason` on the line (money is integers);
* no broad `except` (bare, `Exception`, `BaseException`) that swallows the error without saying
  why: the handler must re-raise or translate (contain a `raise`), or carry a comment on the
  `except` line explaining why carrying on is right;
* no function longer than `MAX_FUNCTION_LINES` in the packages that move money (engine, ledger,
  trading, money.py): a function that moves money is short enough to read at once;
* no `x.isdigit()` without `x.isascii() and` before it on the line (`"²".isdigit()` and
  `"٣".isdigit()` are true, and `int("٣")` is 3: a Unicode digit would pass as a number), unless
  the line says `# digit-ok: reason`.

The ledger's own rule (nothing outside `ledger/` touches `ledger._*`, `ledger.pending` or balance
counters) lives beside the ledger, in `tests/ledger/test_only_writer.py`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ringfence"
MAX_FUNCTION_LINES = 80
MONEY_PACKAGES = ("engine", "ledger", "trading", "money.py")

_FLOAT = re.compile(r"\bfloat\(|:\s*float\b|->\s*float\b")
_BROAD = {"Exception", "BaseException"}
_ISDIGIT = re.compile(r"([\w.\[\]]+)\.isdigit\(\)")


def _sources(*parts: str) -> list[Path]:
    roots = [SRC / p for p in parts] if parts else [SRC]
    out: list[Path] = []
    for root in roots:
        out.extend([root] if root.suffix == ".py" else sorted(root.rglob("*.py")))
    assert out, f"no sources under {roots}"
    return out


def _name(path: Path) -> str:
    return str(path.relative_to(SRC.parents[1]))


def test_no_float_near_money_without_a_reason() -> None:
    found = [
        f"{_name(path)}:{n}: {line.strip()}"
        for path in _sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _FLOAT.search(line.split("#", 1)[0]) and "# float-ok" not in line
    ]
    assert not found, "float in src/ringfence without '# float-ok: reason':\n" + "\n".join(found)


def _unguarded_isdigit(line: str) -> bool:
    code = line.split("#", 1)[0]
    return any(f"{m.group(1)}.isascii() and" not in code for m in _ISDIGIT.finditer(code)) and "# digit-ok" not in line


def test_no_unicode_digits_pass_as_numbers() -> None:
    found = [
        f"{_name(path)}:{n}: {line.strip()}"
        for path in _sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _unguarded_isdigit(line)
    ]
    assert not found, "isdigit() without isascii() (Unicode digits pass) in src/ringfence:\n" + "\n".join(found)


def _is_broad(handler: ast.ExceptHandler) -> bool:
    kind = handler.type
    if kind is None:
        return True
    names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
    return any(isinstance(n, ast.Name) and n.id in _BROAD for n in names)


def test_no_broad_except_swallows_without_a_reason() -> None:
    found = []
    for path in _sources():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.ExceptHandler) or not _is_broad(node):
                continue
            raises = any(isinstance(n, ast.Raise) for stmt in node.body for n in ast.walk(stmt))
            commented = "#" in lines[node.lineno - 1]
            if not raises and not commented:
                found.append(f"{_name(path)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not found, "broad except that swallows the error without a reason:\n" + "\n".join(found)


def test_functions_that_move_money_are_short() -> None:
    found = []
    for path in _sources(*MONEY_PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{_name(path)}:{node.lineno}: {node.name} is {length} lines")
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines in {MONEY_PACKAGES}:\n" + "\n".join(found)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """Each rule flags a planted offender (so a rule that silently matches nothing is caught)."""
    planted = "def f(x):\n    try:\n        return float(x)\n    except Exception:\n        pass\n"
    tree = ast.parse(planted)
    handler = next(n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler))
    assert _is_broad(handler) and not any(isinstance(n, ast.Raise) for n in ast.walk(handler))
    assert _FLOAT.search("    return float(x)") and _FLOAT.search("def f() -> float:")
    assert not _FLOAT.search("    floaty = 1")
    assert _unguarded_isdigit("    if ts.isdigit():") and not _unguarded_isdigit("    if ts.isascii() and ts.isdigit():")
