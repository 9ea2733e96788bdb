"""Every console command (`staff`, `review`, `halts`, `asset`, `market`, `policy`, `audit`, `reconcile approve|lift`) has --help with an Example."""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from ringfence.cli import app

GROUPS = ["staff", "review", "halts", "asset", "market", "policy", "audit", "reconcile"]


def _commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    ctx = click.Context(root)
    out = []
    for group in GROUPS:
        sub = root.get_command(ctx, group)  # type: ignore[attr-defined]  (mounted lazily: cli.LAZY)
        out += [[group, name] for name in sub.commands]
    return out


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_console_command_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, command
