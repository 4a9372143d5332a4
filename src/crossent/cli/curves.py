"""``crossent curves``: loss and gradient against p_t and the logit, to PNG (and CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crossent.cli import app
from crossent.cli._common import console, emit_json, user_errors
from crossent.cli._files import check_output, csv_header, png_text
from crossent.curves import (
    CSV_HEADER,
    PNG_SOFTWARE,
    SUMMARY_POINTS,
    compute_curves,
    default_losses,
    plot_curves,
    write_csv,
)

_EPILOG = """
Examples:

  crossent curves --out focal.png

  crossent curves --loss asl --loss "poly1:epsilon=1" \\
      --out compare.png --csv compare.csv

  crossent curves --no-default --loss ce --loss "softmax_focal:gamma=2" \\
      --loss poly1
"""


def _our_png(path: Path) -> bool:
    return png_text(path).get("Software") == PNG_SOFTWARE


def _our_csv(path: Path) -> bool:
    return csv_header(path) == CSV_HEADER


HELP = "\n\n".join(
    [
        "Plot loss and gradient against p_t, the probability of the true class.",
        "Draws loss and gradient magnitude against p_t and against the true-class logit, for "
        "the chosen losses; the gradients come from autograd through the library's losses.",
        "--out (and --csv) may name a new file or one an earlier crossent curves wrote, which "
        "is replaced; any other existing file is left alone (exit status 2).",
    ]
)


@app.command("curves", help=HELP, epilog=_EPILOG)
def curves_command(
    loss: Annotated[
        list[str] | None,
        typer.Option(
            "--loss",
            "-l",
            help='A loss spec to add, e.g. "asl" or "poly1:epsilon=2" (repeatable).',
        ),
    ] = None,
    default: bool = typer.Option(
        True,
        "--default/--no-default",
        help="Include the focal loss for gamma 0, 0.5, 1, 2, 5 (Lin et al. 2017, Fig. 1).",
    ),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The PNG to write.", dir_okay=False)
    ] = Path("crossent_curves.png"),
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write the curves as CSV (long format).", dir_okay=False),
    ] = None,
    points: int = typer.Option(500, "--points", min=2, max=100_000, help="Points per axis."),
    dpi: int = typer.Option(100, "--dpi", min=30, max=600, help="Resolution (12 x 9 inches)."),
    as_json: bool = typer.Option(False, "--json", help="Print the curve data as JSON."),
) -> None:
    """Plot loss and gradient against p_t (the help text is HELP above)."""
    replacing = [
        path
        for path, option, what, ours, other in (
            (out, "--out", "a figure crossent curves wrote", _our_png, ("--csv", csv_path)),
            (csv_path, "--csv", "a CSV crossent curves wrote", _our_csv, ("--out", out)),
        )
        if check_output(path, option=option, what=what, ours=ours, others=dict([other]))
    ]
    specs = (default_losses() if default else []) + list(loss or [])
    if not specs:
        raise typer.BadParameter("Nothing to plot: add --loss SPEC or drop --no-default.")
    with user_errors("--loss"):
        curves = compute_curves(specs, points=points)
    if default and not loss:
        curves.title = compute_curves(None, points=2).title
    elif default:
        curves.title = "Focal loss for γ ∈ {0, 0.5, 1, 2, 5} (Lin et al. 2017) and " + ", ".join(
            loss or []
        )
    try:
        plot_curves(curves, out, dpi=dpi)
        if csv_path is not None:
            write_csv(curves, csv_path)
    except OSError as e:
        raise typer.BadParameter(f"Could not write: {e}", param_hint="--out / --csv") from None
    except ImportError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        emit_json(curves)
        return
    con = console()
    table = Table(title=curves.title, title_justify="left", show_edge=False)
    table.add_column("curve")
    for pt in SUMMARY_POINTS:
        table.add_column(f"ℓ @ p_t={pt:g}", justify="right")
    table.add_column("|∂ℓ/∂z| @ 0.9", justify="right")
    for c in curves.curves:
        table.add_row(
            c.label,
            *(f"{c.summary[f'loss@{pt:g}']:.4g}" for pt in SUMMARY_POINTS),
            f"{c.summary['grad@0.9']:.4g}",
        )
    con.print(table)
    con.print(f"wrote {out}" + (f" and {csv_path}" if csv_path is not None else ""))
    if replacing:
        con.print(f"(replaced {' and '.join(map(str, replacing))}, from an earlier run)")
