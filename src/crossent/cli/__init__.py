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


def _print_version(value: bool) -> None:
    # Eager: runs while the options are parsed, before typer asks for a command.
    if value:
        from crossent import __version__

        typer.echo(f"crossent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Classification losses: explain them, diagnose outputs and targets, compare them on data."""


@app.command("demo")
def demo(
    as_json: bool = typer.Option(False, "--json", help="Print the walkthroughs as JSON."),
) -> None:
    """Print the seed walkthrough: BCE by hand, checked against torch."""
    from crossent.demo import SEED_CASES, render, walkthrough

    results = [walkthrough(seed, target) for seed, target in SEED_CASES]
    if as_json:
        from crossent.cli._common import emit_json

        emit_json(
            [
                {**r, "rows": [[dict(p=p, y=y, loss=v) for p, y, v in row] for row in r["rows"]]}
                for r in results
            ]
        )
        return
    for result in results:
        typer.echo(render(result))


# The commands register themselves on `app` when imported.
from crossent.cli import bench as _bench  # noqa: E402, F401
from crossent.cli import compare as _compare  # noqa: E402, F401
from crossent.cli import curves as _curves  # noqa: E402, F401
from crossent.cli import doctor as _doctor  # noqa: E402, F401
from crossent.cli import explain as _explain  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    app()
