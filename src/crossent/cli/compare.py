"""``crossent compare``: parse the options, show progress, print the table, write the report.

The work is done by :mod:`crossent.compare`; this module only talks to the terminal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from crossent.cli import app
from crossent.compare.runner import CompareConfig
from crossent.compare.train import TrainSettings

DEFAULT_OUT = Path("crossent-report")
LOSS_HELP = (
    'A loss to compare, as "name" or "name:option=value,...", e.g. bce, "bce:pos_weight=auto", '
    '"focal:gamma=2,alpha=0.25", asl, "ce:label_smoothing=0.1". Repeat for each loss. `auto` '
    "values are computed from the training split. Default: bce, bce:pos_weight=auto, focal, asl "
    "(binary / multi-label data) or ce, ce:weight=auto, softmax_focal, poly1 (multi-class)."
)


def _floats(text: str, option: str) -> tuple[float, ...]:
    from crossent.compare import CompareError

    try:
        return tuple(float(t) for t in text.replace(";", ",").split(",") if t.strip())
    except ValueError:
        raise CompareError(
            f"Expected `{option}` to be comma-separated numbers, but got {text!r}."
        ) from None


def _ints(text: str, option: str) -> tuple[int, ...]:
    from crossent.compare import CompareError

    try:
        return tuple(int(t) for t in text.replace(";", ",").split(",") if t.strip())
    except ValueError:
        raise CompareError(
            f"Expected `{option}` to be comma-separated integers (e.g. 64 or 128,64), but got "
            f"{text!r}."
        ) from None


Opt = typer.Option

# Paragraphs of one line each: typer keeps a line break inside a paragraph as it is written.
HELP = "\n\n".join(
    [
        "Which loss works on my data? Trains a small model with each loss and writes a report.",
        "The same small model is trained with each loss over several seeds and compared on the "
        "test split; the verdict says which loss to use for ranking, for decisions at a "
        "threshold and for calibrated probabilities. The --out folder gets results.csv, "
        "summary.csv, results.json, report.md (figures in figures/) and a self-contained "
        "report.html.",
        "Without options: bce, bce:pos_weight=auto, focal and asl on the Caravan insurance "
        "data (shipped with crossent), 5 seeds.",
        "Data-parallel: torchrun --nproc_per_node=N -m crossent compare ...",
    ]
)


@app.command("compare", help=HELP)
def compare(
    data: Annotated[
        str | None,
        Opt(
            "--data",
            "--dataset",
            help="Built-in data set: caravan (who buys caravan insurance, binary), digits-lt "
            "(long-tailed digits, multi-class), digits-imbalanced, digits-multilabel, digits, "
            "breast-cancer. Default: caravan, or digits-lt when every --loss is a multi-class "
            "loss. Nothing is downloaded.",
            show_default=False,
        ),
    ] = None,
    csv: Annotated[
        Path | None,
        Opt(
            "--csv",
            help="Your own data: a CSV file with a header row. Every problem of the file is "
            "reported at once, each with its fix.",
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        Opt("--target", help="Target column of --csv; repeat for multi-label (0/1 columns)."),
    ] = None,
    drop: Annotated[
        list[str] | None, Opt("--drop", help="A --csv column to leave out; repeatable.")
    ] = None,
    drop_text: Annotated[
        bool,
        Opt(
            "--drop-text",
            help="Leave out every --csv feature column that holds text (ids, names, categories).",
        ),
    ] = False,
    missing: Annotated[
        str,
        Opt(
            "--missing",
            help="A missing value in --csv (empty, NA, nan, ?): error; drop (leave out its row); "
            "mean (fill a feature with the training split's mean; a row without a label is "
            "left out).",
        ),
    ] = "error",
    positive: Annotated[
        str | None,
        Opt(
            "--positive",
            help="The positive value of a binary --target (default: 1/true/yes, else the rarer).",
        ),
    ] = None,
    imbalance: Annotated[
        float | None,
        Opt(
            "--imbalance",
            help="digits-imbalanced: negatives per positive, zeros subsampled (default 50). "
            "digits-lt: largest class / smallest class of the training rows (default 10).",
            show_default=False,
        ),
    ] = None,
    loss: Annotated[list[str] | None, Opt("--loss", "-l", help=LOSS_HELP)] = None,
    seeds: Annotated[
        int, Opt(help="Number of seeds (splits x initialisations).")
    ] = CompareConfig.seeds,
    first_seed: Annotated[int, Opt(help="The first seed; seeds are consecutive.")] = 0,
    split: Annotated[str, Opt(help="Train, validation, test fractions.")] = "0.6,0.2,0.2",
    hidden: Annotated[str, Opt(help="Hidden layer widths of the MLP, e.g. 128,64.")] = ",".join(
        map(str, TrainSettings.hidden)
    ),
    dropout: Annotated[float, Opt(help="Dropout after each hidden layer.")] = TrainSettings.dropout,
    lr: Annotated[float, Opt(help="AdamW learning rate.")] = TrainSettings.lr,
    weight_decay: Annotated[float, Opt(help="AdamW weight decay.")] = TrainSettings.weight_decay,
    batch_size: Annotated[
        int | None,
        Opt(
            help="Batch size (global, under torchrun). Default: about 16 steps per epoch, the "
            "training rows / 16 rounded to a power of two from 16 to 1024.",
            show_default=False,
        ),
    ] = TrainSettings.batch_size,
    epochs: Annotated[int, Opt(help="Maximum epochs per run.")] = TrainSettings.max_epochs,
    patience: Annotated[
        int,
        Opt(
            help="Stop a run after this many epochs without a lower validation loss; the "
            "epoch with the lowest one is kept."
        ),
    ] = TrainSettings.patience,
    metric: Annotated[
        str | None,
        Opt(
            help="The metric of the report's comparison table and of `best` in results.json "
            "(default: average_precision, or macro_f1 for multi-class data). Stopping follows "
            "the validation loss whatever it is.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, Opt(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int, Opt(help="CPU threads per process (the small MLP gains nothing from more).")
    ] = 1,
    out: Annotated[
        Path,
        Opt(
            "--out",
            "-o",
            help="The report's folder. Only an earlier report there is replaced; any other "
            "file, and the --csv data, is never overwritten.",
        ),
    ] = DEFAULT_OUT,
    tensorboard: Annotated[
        Path | None, Opt(help="Also log every run to TensorBoard in this folder.")
    ] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No progress bar and no table.")] = False,
    as_json: Annotated[
        bool,
        Opt("--json", help="Print the results as JSON (the report's results.json) instead."),
    ] = False,
) -> None:
    """Which loss works on my data? (The help text is HELP above.)"""
    from crossent.compare import CompareConfig, CompareError

    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        config = CompareConfig(
            data=data,
            csv=str(csv) if csv is not None else None,
            targets=list(target or []),
            drop=list(drop or []),
            positive=positive,
            drop_text=drop_text,
            missing=missing,
            imbalance=imbalance,
            losses=list(loss or []),
            seeds=seeds,
            first_seed=first_seed,
            split=_floats(split, "--split"),
            hidden=_ints(hidden, "--hidden"),
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            max_epochs=epochs,
            patience=patience,
            metric=metric,
            device=device,
            threads=threads,
            tensorboard=str(tensorboard) if tensorboard is not None else None,
        )
        _run(config, out, quiet=quiet or as_json or not main_rank, as_json=as_json and main_rank)
    except CompareError as exc:
        if main_rank:
            typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # the report could not be written (a full disk, no permission)
        if main_rank:
            typer.secho(f"Error: could not write the report: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _check_paths(config, out: Path) -> bool:
    """Before any training: the report may only replace an earlier report, never the data."""
    from crossent.compare import CompareError
    from crossent.compare.report import check_out_folder

    if config.tensorboard is not None and Path(config.tensorboard).is_file():
        raise CompareError(
            f"`--tensorboard` names a folder for the logs, but {config.tensorboard!r} is a file; "
            f"nothing was run."
        )
    return check_out_folder(out, inputs=[config.csv] if config.csv else [])


def _run(config, out: Path, *, quiet: bool, as_json: bool) -> None:
    from crossent.compare import run_compare
    from crossent.compare.distributed import setup_distributed, teardown_distributed

    start = time.perf_counter()
    replacing = _check_paths(config, out)
    if replacing and (not quiet or as_json):
        typer.echo(f"Replacing the earlier report in {out}/.", err=as_json)
    dist = setup_distributed(config.device)
    try:
        if quiet:
            result = run_compare(config, dist=dist)
        else:
            result = _with_progress(config, dist)
        if dist.is_main:
            from crossent.compare.report import write_report

            paths = write_report(result, out)
    finally:
        teardown_distributed(dist)
    if as_json:
        import json

        from crossent.cli._common import emit_json

        data = json.loads(paths["results.json"].read_text(encoding="utf-8"))
        data["report"] = {
            "folder": str(out),
            "files": {name: str(path) for name, path in paths.items()},
            "replaced_earlier_report": replacing,
        }
        emit_json(data)
    elif dist.is_main and not quiet:
        _print_summary(result, paths, time.perf_counter() - start, replacing)


def _with_progress(config, dist):
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from crossent.compare import run_compare

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("runs {task.fields[done]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("starting", total=None, done="0/?")

        def update(p) -> None:
            total = p.runs * p.max_epochs
            if p.done:
                completed = (p.run + 1) * p.max_epochs
                done = f"{p.run + 1}/{p.runs}"
            else:
                completed = p.run * p.max_epochs + p.epoch
                done = f"{p.run}/{p.runs}"
            bar.update(
                task,
                total=total,
                completed=completed,
                done=done,
                description=f"seed {p.seed} · {p.loss} · epoch {p.epoch}",
            )

        result = run_compare(config, progress=update, dist=dist)
        bar.update(task, description="done")
    return result


SHORT = {
    "average_precision": "AP",
    "roc_auc": "ROC-AUC",
    "f1": "F1",
    "f1_at_0.5": "F1@0.5",
    "balanced_accuracy": "BalAcc",
    "macro_f1": "MacroF1",
}


def _print_summary(result, paths, seconds: float, replacing: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from crossent.compare import metrics as M
    from crossent.compare.report import NOISE_MARK, format_cell, noise_rule, verdict

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped to a file: no need to wrap the table
    columns = [c for c in result.columns if not c.endswith("_micro")]
    table = Table(
        title=f"crossent compare: {result.dataset.name} -- test metrics, mean ± sd over "
        f"{len(result.seeds)} seed(s)",
        title_justify="left",
    )
    table.add_column("loss", style="bold", no_wrap=True)
    for c in columns:
        info = M.METRICS[c]
        arrow = "↑" if info.higher_is_better else "↓"
        table.add_column(f"{SHORT.get(c, info.title)} {arrow}", justify="right", no_wrap=True)
    for spec in result.losses:
        cells: list[str] = []
        for c in columns:
            text, best, worse = format_cell(result, spec.label, c)
            text = text.replace(" ± ", "±")
            if best:
                cells.append(f"[bold green]{text}[/]")
            else:
                cells.append(text + (f" {NOISE_MARK}" if worse else ""))
        table.add_row(spec.label, *cells)
    console.print(table)
    console.print(
        f"[green]bold[/]: best mean; {NOISE_MARK}: worse than the best beyond seed noise. "
        + noise_rule(len(result.seeds)),
        highlight=False,
    )
    console.print()
    console.print(verdict(result).replace("**", ""), highlight=False)
    console.print()
    out = paths["report.html"].parent
    console.print(
        f"Wrote {out}/{' (replacing the earlier report)' if replacing else ''}: "
        + ", ".join(k for k in paths if not k.startswith("figures/"))
        + f" ({seconds:.1f} s)",
        highlight=False,
    )
