"""Data-directory checks shared by every `ringfence` command that takes `--data` or `DIR`.

One place decides what a usable folder is, so every command answers a file, an unwritable path
or a folder that is not a node's data directory with the same clear message (exit 2), never a
traceback, and an inspection command never creates the folder it was asked to read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

__all__ = ["fail", "prepare_data_dir", "require_node_dir", "require_input_file", "ENGINE_SUBDIR"]

#: Where `ringfence serve --data DIR` keeps its engine node (journal, snapshots): `DIR/engine`.
ENGINE_SUBDIR = "engine"


def fail(message: str, code: int = 2) -> None:
    Console(stderr=True, width=None if sys.stderr.isatty() else 140).print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def prepare_data_dir(path: Path, option: str = "--data") -> Path:
    """A folder to write into: created if absent; a file or an uncreatable path is refused."""
    if path.exists() and not path.is_dir():
        fail(f"{option}: {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{option}: cannot create {path}: {err.strerror or err}")
    return path


def require_node_dir(path: Path, option: str = "DIR", *, journal_under: str = "journal") -> Path:
    """The engine node directory to read or write, given the data directory a command was handed.

    Accepts both what `ringfence serve --data DIR` takes (`DIR`, whose node lives in `DIR/engine`)
    and a node directory itself (`DIR/engine`, or the folder `ringfence demo` writes): whichever
    of `DIR/journal/` and `DIR/engine/journal/` exists. Both existing is refused as ambiguous
    rather than guessed. Returns the node directory; never creates anything.
    """
    if not path.exists():
        fail(f"{option}: {path} does not exist; give the data directory of a ringfence node")
    if not path.is_dir():
        fail(f"{option}: {path} is not a directory")
    direct = (path / journal_under).is_dir()
    nested = (path / ENGINE_SUBDIR / journal_under).is_dir()
    if direct and nested:
        fail(
            f"{option}: {path} holds both {journal_under}/ and {ENGINE_SUBDIR}/{journal_under}/; name the one you mean "
            f"({path} or {path / ENGINE_SUBDIR})"
        )
    if nested:
        return path / ENGINE_SUBDIR
    if not direct:
        fail(
            f"{option}: {path} has no {journal_under}/ folder (nor {ENGINE_SUBDIR}/{journal_under}/); is it a ringfence "
            "data directory? (`ringfence serve --data DIR` writes DIR/engine/journal)"
        )
    return path


def require_input_file(path: Path, option: str) -> Path:
    """An input file that must exist and be a readable file: a missing input is an error, never 'empty'."""
    if not path.exists():
        fail(f"{option}: {path} does not exist")
    if not path.is_file():
        fail(f"{option}: {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        fail(f"{option}: cannot read {path}: {err.strerror or err}")
    return path
