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

__all__ = ["fail", "prepare_data_dir", "require_node_dir"]


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
    """An existing node data directory to read (it must hold `journal/`); never created."""
    if not path.exists():
        fail(f"{option}: {path} does not exist; give the data directory of a ringfence node")
    if not path.is_dir():
        fail(f"{option}: {path} is not a directory")
    if not (path / journal_under).is_dir():
        fail(f"{option}: {path} has no {journal_under}/ folder; is it a ringfence data directory?")
    return path
