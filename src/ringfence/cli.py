"""The `ringfence` command line (Typer + rich).

Each domain package contributes a Typer sub-app (`ringfence journal ...`, `ringfence por ...`);
this module only mounts them. Every command has `--help` with an example.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="ringfence",
    help="ringfence: an exchange core where every balance is provable.\n\nExample: ringfence demo",
    no_args_is_help=True,
    add_completion=False,
)


from .trading.cli import app as _trading_app  # noqa: E402

app.add_typer(_trading_app, name="trading")


@app.callback()
def _root() -> None:
    """ringfence: an exchange core where every balance is provable."""


@app.command()
def version() -> None:
    """Print the ringfence version.

    Example: ringfence version
    """
    from . import __version__

    typer.echo(__version__)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
