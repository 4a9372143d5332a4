"""The ``crossent`` command. It parses arguments and renders results; the library does the math.

Each sub-command lives in its own module here and registers itself on :data:`app`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="crossent",
    help="Classification losses: explain them, diagnose outputs and targets, compare them on data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Classification losses: explain them, diagnose outputs and targets, compare them on data."""
    if version:
        from crossent import __version__

        typer.echo(f"crossent {__version__}")
        raise typer.Exit()


@app.command("demo")
def demo() -> None:
    """Print the seed walkthrough: BCE by hand, checked against torch."""
    from crossent.demo import SEED_CASES, render, walkthrough

    for seed, target in SEED_CASES:
        typer.echo(render(walkthrough(seed, target)))


# The commands register themselves on `app` when imported.
from crossent.cli import bench as _bench  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    app()
