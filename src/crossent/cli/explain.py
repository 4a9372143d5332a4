"""``crossent explain``: a loss computed step by step, checked against torch."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from crossent._formula import fmt
from crossent._io import parse_shape, random_tensor
from crossent.cli import app
from crossent.cli._common import FLOAT_DTYPES, as_float, console, emit_json, load, user_errors
from crossent.explain import Explanation, explain
from crossent.registry import LOSSES, parse_loss_spec

# Flags that become loss options; every value is read like a spec value ("none", "[1, 2]", 2).
_OPTION_FLAGS = (
    "gamma",
    "alpha",
    "pos_weight",
    "weight",
    "label_smoothing",
    "ignore_index",
    "reduction",
)

_EXAMPLES = """
Examples:

  crossent explain --rand 42 --shape 2x3 --target "[[0,1,1],[1,0,0]]" \\
      --loss bce --probs

  crossent explain --input "[[2.0, -1.0], [0.5, 3.0]]" \\
      --target "[[1,0],[1,1]]" --loss focal --gamma 2 --alpha 0.25

  crossent explain --input logits.npy --target labels.npy \\
      --loss "focal:gamma=1" --json
"""

HELP = "\n\n".join(
    [
        "Compute a loss step by step, and torch's value beside it.",
        "Per element: the input, p, p_t, the formula with the numbers substituted and the "
        "loss; then the per-sample means, the reduction, and the value torch computes.",
    ]
)


@app.command("explain", help=HELP, epilog=_EXAMPLES)
def explain_command(
    input: str | None = typer.Option(
        None,
        "--input",
        "-i",
        help='Model outputs: inline ("[[0.88, 0.92], [0.96, 0.39]]") or a .npy/.pt/.csv file.',
    ),
    target: str = typer.Option(
        ...,
        "--target",
        "-t",
        help='Targets: inline ("[[0,1],[1,0]]", or class indices "[2, 0]") or a file.',
    ),
    loss: str = typer.Option(
        "bce",
        "--loss",
        "-l",
        help=f'A loss name or spec, e.g. focal or "focal:gamma=2, alpha=0.25". '
        f"Losses: {', '.join(sorted(LOSSES))}.",
    ),
    probs: bool = typer.Option(
        False,
        "--probs/--logits",
        help="The inputs are probabilities (the loss's probability form) or logits (default).",
    ),
    rand: int | None = typer.Option(
        None,
        "--rand",
        metavar="SEED",
        help="Use torch.manual_seed(SEED); torch.rand(SHAPE) as the input (needs --shape).",
    ),
    shape: str | None = typer.Option(None, "--shape", help='Shape for --rand, e.g. "2x3".'),
    gamma: str | None = typer.Option(None, "--gamma", help="Focusing parameter gamma."),
    alpha: str | None = typer.Option(None, "--alpha", help='Class-balance alpha, or "none".'),
    pos_weight: str | None = typer.Option(
        None, "--pos-weight", help='Positive-class weight: a number or a list "[1, 3]".'
    ),
    weight: str | None = typer.Option(
        None, "--weight", help='Elementwise (binary) or per-class (softmax) weight, e.g. "[1, 2]".'
    ),
    label_smoothing: str | None = typer.Option(
        None, "--label-smoothing", help="Label smoothing s."
    ),
    ignore_index: str | None = typer.Option(None, "--ignore-index", help="Target value to ignore."),
    reduction: str | None = typer.Option(
        None, "--reduction", help="none, mean (default), sum or global_mean."
    ),
    opt: Annotated[
        list[str] | None,
        typer.Option(
            "--opt", "-o", metavar="KEY=VALUE", help="Any other option of the loss (repeatable)."
        ),
    ] = None,
    dtype: str = typer.Option("float32", "--dtype", help="Input dtype: float32 or float64."),
    max_rows: int = typer.Option(
        40, "--max-rows", help="Show at most this many rows (0: all); --json always has all."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON."),
) -> None:
    """Compute a loss step by step (the help text is HELP above)."""
    if dtype not in FLOAT_DTYPES:
        raise typer.BadParameter(
            f"Expected `dtype` to be float32 or float64, but got {dtype!r}.", param_hint="--dtype"
        )
    if (input is None) == (rand is None):
        raise typer.BadParameter(
            "Give the input either as --input (inline or a file) or as --rand SEED --shape 2x3.",
            param_hint="--input / --rand",
        )
    if rand is not None:
        if shape is None:
            raise typer.BadParameter(
                "--rand needs --shape, e.g. --shape 2x3.", param_hint="--shape"
            )
        with user_errors("--shape"):
            x = random_tensor(rand, parse_shape(shape))
    else:
        if shape is not None:
            raise typer.BadParameter("--shape goes with --rand.", param_hint="--shape")
        x = load(input, name="input", param_hint="--input")
    x = as_float(x, FLOAT_DTYPES[dtype])
    y = load(target, name="target", param_hint="--target")

    flags = dict(
        zip(
            _OPTION_FLAGS,
            (gamma, alpha, pos_weight, weight, label_smoothing, ignore_index, reduction),
            strict=True,
        )
    )
    parts = [f"{k}={v}" for k, v in flags.items() if v is not None]
    for item in opt or []:
        if "=" not in item:
            raise typer.BadParameter(f"Expected KEY=VALUE, but got {item!r}.", param_hint="--opt")
        parts.append(item)
    spec_text = loss
    if parts:
        spec_text += ("," if ":" in loss else ":") + ",".join(parts)
    with user_errors("--loss"):
        spec, options = parse_loss_spec(spec_text)
    with user_errors():
        result = explain(x, y, spec, probs=probs, **options)
    if as_json:
        emit_json(result)
        return
    render(result, max_rows=max_rows)


def _vec(values: list[float], limit: int = 8) -> str:
    if len(values) <= limit:
        return "[" + ", ".join(fmt(v) for v in values) + "]"
    head, tail = values[:3], values[-2:]
    shown = ", ".join(fmt(v) for v in head) + ", ..., " + ", ".join(fmt(v) for v in tail)
    return f"[{shown}] ({len(values)})"


def _num(value: float | None) -> str:
    return "" if value is None else fmt(value)


def render(result: Explanation, *, max_rows: int = 40) -> None:
    out = console()
    out.print(Text.assemble((result.title, "bold"), f" ({result.form}): {result.function}"))
    out.print(
        f"input {tuple(result.input_shape)}, target {tuple(result.target_shape)}, "
        f"reduction {result.reduction!r}" + (f", spec {result.loss}" if ":" in result.loss else "")
    )
    out.print(Text(result.formula, style="bold"))
    if result.definitions:
        out.print("  where " + "\n        ".join(result.definitions))

    softmax = result.family == "softmax"
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    if softmax:
        table.add_column("sample", no_wrap=True)
        table.add_column("logits x", overflow="fold", max_width=30)
        table.add_column("p = softmax(x)", overflow="fold", max_width=30)
        table.add_column("target", no_wrap=True)
    else:
        table.add_column("element", no_wrap=True)
        table.add_column(
            "p" if result.form == "probabilities" else "x", justify="right", no_wrap=True
        )
        if result.form == "logits":
            table.add_column("p = σ(x)", justify="right", no_wrap=True)
        table.add_column("y", justify="right", no_wrap=True)
    table.add_column("p_t", justify="right", no_wrap=True)
    # The loss before the formula: on a narrow terminal the formula wraps, the loss stays whole.
    table.add_column("loss", justify="right", no_wrap=True)
    table.add_column("= formula", overflow="fold")

    steps = result.steps if max_rows <= 0 else result.steps[:max_rows]
    for s in steps:
        idx = "[" + ",".join(str(i) for i in s.index) + "]"
        formula = s.formula if s.formula is not None else (s.note or "-")
        if s.formula is not None and s.note:
            formula = f"{s.formula}   ({s.note})"
        if softmax:
            target = f"{s.target:g}" if isinstance(s.target, float) else _vec(s.target)
            cells = [idx, _vec(s.input), _vec(s.probability), target]
        else:
            cells = [idx, _num(s.input)]
            if result.form == "logits":
                cells.append(_num(s.probability))
            cells.append(f"{s.target:g}")
        cells += [_num(s.p_t), "ignored" if s.ignored else _num(s.loss), formula]
        table.add_row(*cells)
    out.print(table)
    if len(steps) < len(result.steps):
        out.print(f"  ... {len(result.steps) - len(steps)} more rows (--max-rows 0 shows all)")

    if result.samples:
        out.print("per-sample means:")
        for sm in result.samples[: max_rows if max_rows > 0 else None]:
            terms = " + ".join(fmt(v) for v in sm.losses) if len(sm.losses) <= 8 else "..."
            out.print(f"  sample {sm.sample}: ({terms}) / {len(sm.losses)} = {fmt(sm.mean)}")
    if result.reduction_formula:
        out.print(result.reduction_formula)
    counts = {len(sm.losses) for sm in result.samples}
    if result.reduction in ("mean", "global_mean") and len(counts) == 1 and len(result.samples) > 1:
        means = [sm.mean for sm in result.samples]
        mean_of_means = sum(means) / len(means)
        terms = " + ".join(fmt(m) for m in means) if len(means) <= 8 else "..."
        out.print(
            f"  = mean of the {len(means)} sample means ({terms}) / {len(means)} = "
            f"{fmt(mean_of_means)} (every sample holds {counts.pop()} losses)"
        )

    if result.value is not None:
        out.print(
            Text.assemble(
                "crossent  ",
                (fmt(result.value), "bold"),
                f"  ({result.value:.10g})  {result.function}",
            )
        )
        if result.torch_value is not None:
            out.print(
                Text.assemble(
                    "torch     ",
                    (fmt(result.torch_value), "bold"),
                    f"  ({result.torch_value:.10g})  {result.torch_function}",
                )
            )
            out.print(f"|crossent - torch| = {result.difference:.1e}")
    if result.elementwise_difference is not None:
        out.print(f"elementwise: max |crossent - torch| = {result.elementwise_difference:.1e}")
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
