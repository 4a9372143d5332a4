"""``crossent bench``: time the fused kernels against torch (see :mod:`crossent.bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossent.cli import app
from crossent.cli._files import check_output, csv_header, first_line

FAMILIES = ("elementwise", "cross_entropy")
MARKDOWN_TITLE = "# crossent benchmark results"

HELP = "\n\n".join(
    [
        "Time crossent's fused losses against torch: forward, backward, both.",
        "Prints one table per loss and size, and checks the performance targets (speed-ups "
        "over the baselines, peak memory) on this run.",
        "--csv appends to a results CSV that crossent bench wrote (or creates it); --markdown "
        "replaces a report it wrote (or creates it). Any other existing file is left alone "
        "(exit status 2).",
    ]
)


def _our_csv(path: Path) -> bool:
    header = csv_header(path)
    return header[:3] == ["run_id", "date", "machine"] and (
        {"loss", "provider"} <= set(header) or {"case", "provider"} <= set(header)
    )


def _our_markdown(path: Path) -> bool:
    return first_line(path) == MARKDOWN_TITLE


def _names(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command("bench", help=HELP)
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny sizes, 3 rounds: a smoke test, not a measurement.")
    ] = False,
    family: Annotated[
        str,
        typer.Option(
            help="elementwise, cross_entropy or all (the losses of each family); small: every "
            "loss at 32 x 10 and 256 x 80 on one CPU thread, in microseconds per call."
        ),
    ] = "all",
    losses: Annotated[
        str | None,
        typer.Option(help="Comma-separated: bce_with_logits, sigmoid_focal, cross_entropy."),
    ] = None,
    providers: Annotated[
        str | None,
        typer.Option(help="Comma-separated providers, e.g. crossent,torch (default: all)."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Backend of the `crossent` provider (default: automatic).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if available).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="A JSON file of sizes and rounds (benchmarks/config.json).", dir_okay=False
        ),
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(min=1, help="Timed rounds (overrides the config).")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(min=0, help="Warm-up rounds (overrides the config).")
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="Append the results to this CSV (benchmarks/results.csv).", dir_okay=False
        ),
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            help="Render the CSV's latest runs (or this run) to this Markdown file.", dir_okay=False
        ),
    ] = None,
    memory: Annotated[bool, typer.Option(help="Measure peak memory too.")] = True,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the measurements and the targets as JSON instead of tables."
        ),
    ] = False,
) -> None:
    """Time crossent's fused losses against torch (the help text is HELP above)."""
    from rich.console import Console
    from rich.table import Table

    from crossent import bench as B
    from crossent._validation import check_backend, check_choice

    check_output(
        csv_path,
        option="--csv",
        what="a results CSV crossent bench wrote",
        ours=_our_csv,
        others={"--markdown": markdown, "--config": config},
        create_folder=True,
    )
    check_output(
        markdown,
        option="--markdown",
        what="a report crossent bench wrote",
        ours=_our_markdown,
        others={"--config": config},
    )

    if family == "small":
        _bench_small(B, quick, _names(losses), repeats, csv_path, markdown, as_json)
        return
    try:
        families = FAMILIES if family == "all" else (check_choice("family", family, FAMILIES),)
        if backend is not None:
            backend = check_backend(backend)
        cfg = B.load_config(config, quick=quick)
    except (ValueError, TypeError, OSError) as e:
        raise typer.BadParameter(str(e)) from None
    if repeats is not None:
        cfg["repeats"] = repeats
    if warmup is not None:
        cfg["warmup"] = warmup
    console = Console(highlight=False, soft_wrap=False, stderr=as_json)
    try:
        rows = B.run(
            cfg,
            families=families,
            losses=_names(losses),
            providers=_names(providers),
            backend=backend,
            device=device,
            memory=memory,
            progress=lambda msg: console.print(f"[dim]running {msg}[/dim]"),
        )
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(str(e)) from None
    if as_json:
        from crossent.cli._common import emit_json

        _write_files(B, rows, csv_path, markdown, console)
        emit_json({"rows": rows, "targets": B.targets(rows)})
        return
    table = Table(title="crossent bench (ms: median, p25-p75)")
    for col in (
        "loss",
        "size",
        "provider",
        "backend",
        "forward",
        "backward",
        "fwd+bwd",
        "speed-up",
        "peak extra",
    ):
        table.add_column(col)
    for row in rows:
        base = B._find(rows, row["loss"], row["size"], B.BASELINE[row["loss"]])
        speed = f"{base['total_ms'] / row['total_ms']:.2f}x" if base else "-"
        peak = row.get("peak_extra_bytes")
        table.add_row(
            row["loss"],
            row["size"],
            row["provider"],
            row["backend"] or "-",
            B._fmt_ms(row, "fwd"),
            B._fmt_ms(row, "bwd"),
            B._fmt_ms(row, "total"),
            speed,
            "-" if peak is None else f"{peak / row['grad_bytes']:.2f} grad",
        )
    console.print(table)
    for check in B.targets(rows):
        mark = "met" if check["met"] else "MISSED"
        console.print(f"{mark}: {check['target']}: {check['measured']} (wanted {check['wanted']})")
    _write_files(B, rows, csv_path, markdown, console)


def _write_files(B, rows, csv_path: Path | None, markdown: Path | None, console) -> None:
    if csv_path is not None:
        B.append_csv(rows, csv_path)
        console.print(f"appended {len(rows)} rows to {csv_path}")
        if markdown is not None:
            markdown.write_text(B.render_markdown(B.read_csv(csv_path)))
            console.print(f"wrote {markdown}")
    elif markdown is not None:
        markdown.write_text(B.render_markdown(rows))
        console.print(f"wrote {markdown}")


def _bench_small(B, quick, cases, rounds, csv_path, markdown, as_json) -> None:
    """``--family small``: :func:`crossent.bench.run_small`."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False, stderr=as_json)
    try:
        rows = B.run_small(
            cases=cases,
            rounds=rounds or (3 if quick else 40),
            calls=3 if quick else 25,
            progress=lambda msg: console.print(f"[dim]running {msg}[/dim]"),
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    ratios = B.small_ratios(rows)
    if as_json:
        from crossent.cli._common import emit_json

        emit_json({"rows": rows, "ratios": ratios})
    else:
        table = Table(title="crossent bench --family small (us per call, one CPU thread)")
        for col in ("case", "size", "baseline", "forward", "ratio", "fwd+bwd", "ratio "):
            table.add_column(col)
        for r in ratios:
            table.add_row(
                r["case"],
                r["size"],
                r["baseline"],
                f"{r['fwd_us']:.0f} / {r['base_fwd_us']:.0f}",
                f"{r['fwd_ratio']:.2f}",
                f"{r['total_us']:.0f} / {r['base_total_us']:.0f}",
                f"{r['total_ratio']:.2f}",
            )
        console.print(table)
    if csv_path is not None:
        B.append_small_csv(rows, csv_path)
        console.print(f"appended {len(rows)} rows to {csv_path}")
    if markdown is not None:
        markdown.write_text(MARKDOWN_TITLE + "\n\n" + B.render_small_markdown(rows))
        console.print(f"wrote {markdown}")
