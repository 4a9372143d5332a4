"""``crossent doctor``: what task this is, which loss fits, and what is wrong."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from crossent._io import jsonable
from crossent.cli import app
from crossent.cli._common import console, emit_json, load, user_errors
from crossent.doctor import CHECKS, ERROR, INFO, WARNING, Diagnosis, TensorSummary, diagnose

_STYLE = {ERROR: "bold red", WARNING: "yellow", INFO: "cyan"}

_SEVERITY = {ERROR: "error", WARNING: "warning", INFO: "note"}

# Typer keeps single line breaks of an epilog paragraph; no line is wider than 76 columns.
_EPILOG = "\n\n".join(
    [
        "Exit status:",
        "  0  nothing wrong, or notes only (advice such as class imbalance)\n"
        "  1  warnings: likely mistakes (or, with --strict, notes too)\n"
        "  2  errors: the loss would fail or compute something else; a command-line\n"
        "     or file error also exits 2, with a message on stderr and no report",
        "Finding codes:",
        "\n".join(
            f"  {c.code} {c.name} ({_SEVERITY[c.severity]})\n       {c.detects}"
            for c in CHECKS.values()
        ),
        "Examples:",
        "  crossent doctor logits.npy labels.npy\n"
        "  crossent doctor probs.pt targets.pt --loss ce --json\n"
        '  crossent doctor "[[0.9, 0.1], [0.2, 0.8]]" "[0, 1]" --loss ce',
    ]
)

HELP = "\n\n".join(
    [
        "Diagnose model outputs and targets: the task, the loss that fits, the mistakes.",
        "Infers the task and recommends a loss, then reports each mistake (double softmax, "
        "wrong target format, out-of-range indices, silent broadcasting, NaN, saturation) and "
        "each note (class imbalance, with the weights to use) with the numbers that triggered "
        "it and the fix.",
        "The files are only read, never changed.",
    ]
)


@app.command("doctor", help=HELP, epilog=_EPILOG)
def doctor_command(
    outputs: str = typer.Argument(
        ..., help='Model outputs: a .npy/.pt/.csv file or inline "[[2.1, -0.3], ...]".'
    ),
    targets: str = typer.Argument(..., help="Targets: a file or inline numbers."),
    loss: str | None = typer.Option(
        None,
        "--loss",
        "-l",
        help='The loss they go into (name or spec, e.g. "ce" or "focal:gamma=2"); '
        "default: check against the recommended loss.",
    ),
    probs: bool = typer.Option(
        False, "--probs", help="The outputs are meant as probabilities (the probability form)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Exit 1 on notes too (advice such as class imbalance)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the diagnosis as JSON."),
) -> None:
    """Diagnose model outputs and targets (the help text is HELP above)."""
    output = load(outputs, name="outputs", param_hint="OUTPUTS")
    target = load(targets, name="targets", param_hint="TARGETS")
    with user_errors("--loss"):
        result = diagnose(output, target, loss, probs=probs)
    code = exit_status(result, strict=strict)
    if as_json:
        emit_json({**jsonable(result), "exit_code": code})
    else:
        render(result, exit_code=code)
    raise typer.Exit(code=code)


def exit_status(result: Diagnosis, *, strict: bool = False) -> int:
    """The command's exit status: 2 errors, 1 warnings, 0 otherwise; notes give 1 if strict."""
    if strict and result.exit_code == 0 and result.findings:
        return 1
    return result.exit_code


def _describe(t: TensorSummary) -> str:
    shape = "(" + ", ".join(map(str, t.shape)) + ("," if len(t.shape) == 1 else "") + ")"
    text = f"shape {shape}, {t.dtype}"
    if t.min is not None:
        text += f", range [{t.min:.4g}, {t.max:.4g}]"
    if t.num_unique <= 12:
        text += ", unique " + "[" + ", ".join(f"{v:g}" for v in t.unique) + "]"
    else:
        text += f", {t.num_unique} distinct values"
    if t.nan or t.inf:
        text += f", {t.nan} NaN, {t.inf} inf"
    return text


def render(result: Diagnosis, *, exit_code: int | None = None) -> None:
    out = console()
    out.print(f"[bold]outputs[/bold]  {escape(_describe(result.output))}")
    out.print(f"[bold]targets[/bold]  {escape(_describe(result.target))}")
    per_label = result.target_format in ("multi-hot", "binary", "soft")
    classes = ""
    if result.num_classes and result.num_classes > 1:
        classes = f", {result.num_classes} {'labels' if per_label else 'classes'}"
    if result.task == "unknown":
        out.print("[bold]task[/bold]     unknown (see the errors below)")
    else:
        out.print(f"[bold]task[/bold]     {result.task} ({result.target_format} targets{classes})")
        out.print(
            f"[bold]loss[/bold]     recommended [bold green]{escape(result.recommended_loss)}"
            f"[/bold green]: {escape(result.reason)}"
        )
    if result.loss:
        out.print(f"         checked against the given loss: {escape(result.loss)}")

    if result.prevalence is not None and result.counts is not None:
        n = len(result.prevalence)
        label = "label" if per_label else "class"
        what = "positives" if label == "label" else "targets"
        table = Table(title=f"prevalence per {label}", title_justify="left", show_edge=False)
        table.add_column(label, justify="right")
        table.add_column(what, justify="right")
        table.add_column("share", justify="right")
        order = list(range(n))
        if n > 12:  # the 6 rarest and the 6 most common
            order = sorted(order, key=lambda i: result.prevalence[i])
            order = order[:6] + order[-6:]
        for i in order:
            table.add_row(str(i), f"{result.counts[i]:g}", f"{result.prevalence[i]:.2%}")
        out.print(table)

    if result.findings:
        out.print("[bold]findings[/bold]")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for f in result.findings:
            style = _STYLE[f.severity]
            grid.add_row(
                f"  [{style}]{_SEVERITY[f.severity].upper():7}[/{style}]",
                f"[bold]{f.code} {f.name}[/bold]: {escape(f.message)}\n"
                f"[dim]fix:[/dim] {escape(f.fix)}",
            )
        out.print(grid)
    else:
        out.print("[green]no findings[/green]")
    if result.suggestions:
        out.print("[bold]suggested settings[/bold] (computed from these targets)")
        for key, spec in result.suggestions.items():
            out.print(f"  {key:28} {escape(spec)}")
    counts = {s: sum(f.severity == s for f in result.findings) for s in (ERROR, WARNING, INFO)}
    out.print(
        f"{counts[ERROR]} error(s), {counts[WARNING]} warning(s), {counts[INFO]} note(s): "
        f"exit status {result.exit_code if exit_code is None else exit_code}"
    )
