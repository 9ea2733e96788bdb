"""Every command's `--help` at 80 columns (`COLUMNS=80`), as a terminal shows it: rich wraps words to
the width, so a description line ends only where the next word would not fit or an example or a list
item begins (a docstring's own line break, made at ~110 columns in the source, left half-empty lines
mid-sentence), and no word is cut in
two, except a single token longer than a table's help column (an environment variable's name, a URL,
an extended public key), which is folded rather than hidden (cli.py `_fold_parameter_help`)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ringfence.cli import LAZY, _load, app

WIDTH = 80
#: a token this long may not fit a help column beside an option's name and type: folded, by design
FOLDED_CHARS = 25
BOX = re.compile(r"^[\u2500-\u257f]+$")
#: lines that start on a line of their own: an example, a list item
OWN_LINE = re.compile(r"(Example\b|[-*\u2022] |\d+[.)] )")


def _paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        paths.append(path)
        if hasattr(cmd, "list_commands"):
            ctx = type(cmd).context_class(cmd)
            for name in cmd.list_commands(ctx):
                sub = _load(name) if not path and name in LAZY else cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def _help(path: list[str], columns: int) -> str:
    out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns), "TERMINAL_WIDTH": None})
    assert out.exit_code == 0, (path, out.output)
    return out.stdout


PATHS = _paths()


def test_every_command_is_rendered() -> None:
    assert len(PATHS) > 100 and ["serve"] in PATHS and ["journal", "replay"] in PATHS


@pytest.mark.parametrize("chunk", range(4))
def test_help_at_80_columns_breaks_lines_only_where_a_word_does_not_fit(chunk: int) -> None:
    broken, cut = [], []
    for path in PATHS[chunk::4]:
        narrow, wide = _help(path, WIDTH), _help(path, 2000)
        description = narrow.split("╭", 1)[0].splitlines()  # above the first panel (arguments, options)
        for line, following in zip(description, description[1:]):
            if (line.strip() and following.strip() and not line.lstrip().startswith("Usage:")
                    and not OWN_LINE.match(following.strip())):
                # rich leaves one column each side: the next word would have fitted on this line
                if len(line.rstrip()) + 1 + len(following.split()[0]) <= WIDTH - 1:
                    broken.append(f"ringfence {' '.join(path)} --help: {line.strip()!r} / {following.strip()!r}")
        words = set(wide.split())
        for token in narrow.split():
            if not BOX.match(token) and token not in words:
                whole = [w for w in words if token in w and (w.startswith(token) or w.endswith(token))]
                if not any(len(w) >= FOLDED_CHARS for w in whole):
                    cut.append(f"ringfence {' '.join(path)} --help: {token!r} (of {whole[:3]})")
    assert not broken, "a line break of the help text's own, mid-paragraph:\n" + "\n".join(broken)
    assert not cut, "a word cut in two:\n" + "\n".join(cut)
