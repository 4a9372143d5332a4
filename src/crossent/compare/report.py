"""Writing a comparison out: ``results.csv`` (one row per loss and seed), ``summary.csv``,
``results.json`` (rows, summary, comparisons, settings, training histories), ``report.md``
with its figures in ``figures/``, and a self-contained ``report.html`` (figures embedded as
base64 PNG). Markdown and HTML are rendered from one list of blocks, so they say the same."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crossent import __version__
from crossent.compare import metrics as M
from crossent.compare.data import CompareError
from crossent.compare.runner import CompareResult, config_dict
from crossent.compare.stats import ALPHA, t_critical

__all__ = [
    "REPORT_FILES",
    "check_out_folder",
    "earlier_report",
    "format_cell",
    "metric_table",
    "verdict",
    "write_report",
]

FIGURES = ("pr_curves", "reliability", "training_curves")
# Every file a report consists of, relative to its folder.
REPORT_FILES = (
    "results.csv",
    "summary.csv",
    "results.json",
    "report.md",
    "report.html",
    *(f"figures/{name}.png" for name in FIGURES),
)

NOISE_MARK = "†"


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _digits(metric: str) -> int:
    return 4 if metric in ("ece", "ece_micro", "brier") else 3


def _task_text(result: CompareResult) -> str:
    return {"binary": "binary", "multilabel": "multi-label", "multiclass": "multi-class"}[
        result.task
    ]


def noise_rule(n_seeds: int) -> str:
    if n_seeds < 2:
        return "With one seed the seed noise cannot be estimated: run with `--seeds 3` or more."
    return (
        f"A difference is larger than the seed noise when a paired t-test over the {n_seeds} "
        f"seeds (each seed: same split, initial weights and batches for every loss) gives "
        f"p < {ALPHA:g}, i.e. |mean difference| > {t_critical(n_seeds - 1):.2f} x sd of the "
        f"differences / sqrt({n_seeds})."
    )


def significantly_worse(result: CompareResult, metric: str) -> set[str]:
    return {c.loss for c in result.comparisons[metric] if c.significant}


def format_cell(result: CompareResult, loss: str, metric: str) -> tuple[str, bool, bool]:
    """``"0.912 ± 0.013"``, whether it is the best mean (ties included), whether it is worse
    than the best by more than the seed noise."""
    s = result.summary[loss][metric]
    d = _digits(metric)
    text = f"{_fmt(s.mean, d)} ± {_fmt(s.std, d)}" if s.n > 1 else _fmt(s.mean, d)
    best = result.summary[result.best(metric)][metric].mean
    return text, s.mean == best, loss in significantly_worse(result, metric)


def metric_table(result: CompareResult, columns) -> tuple[list[str], list[list[str]]]:
    """Header and rows (plain text with ** for the best and † for beyond-noise gaps)."""
    header = [
        "loss",
        *[M.METRICS[c].title + (" ↑" if M.METRICS[c].higher_is_better else " ↓") for c in columns],
    ]
    rows = []
    for spec in result.losses:
        row = [spec.label]
        for c in columns:
            text, best, worse = format_cell(result, spec.label, c)
            row.append(f"**{text}**" if best else text + (f" {NOISE_MARK}" if worse else ""))
        rows.append(row)
    return header, rows


def _auto_summary(result: CompareResult, loss: str) -> str:
    autos = [r.auto for r in result.runs_of(loss) if r.auto]
    if not autos:
        return ""
    if len(set(autos)) == 1:
        return autos[0]
    # Values differ a little between seeds (each computed on that seed's training split).
    numbers = [[float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", a)] for a in autos]
    key = autos[0].split("=")[0]
    if all(len(n) == 1 for n in numbers):
        values = [n[0] for n in numbers]
        return f"{key}={min(values):.3g}..{max(values):.3g} (per seed's training split)"
    return f"{autos[0]} (seed {result.seeds[0]}; each seed's training split gives its own)"


# What the model is for, and the metrics that measure it (the first one leads).
PURPOSES = {
    "binary": (
        ("To rank", "samples, most likely positive first", ("average_precision",)),
        ("To decide", "yes or no at a threshold", ("f1", "f1_at_0.5")),
        ("For calibrated probabilities", "", ("ece", "brier")),
    ),
    "multiclass": (
        ("To predict the class", "", ("macro_f1", "accuracy")),
        ("For calibrated probabilities", "", ("nll", "ece")),
    ),
}
SHORT_NAMES = {
    "average_precision": "AP",
    "f1": "F1",
    "f1_at_0.5": "F1",
    "ece": "ECE",
    "brier": "Brier",
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "nll": "NLL",
}
# How a clause about one metric starts when the metrics of a purpose disagree.
ON_METRIC = {
    "f1": "with the threshold chosen on validation data",
    "f1_at_0.5": "at the fixed threshold 0.5",
    "ece": "on ECE",
    "brier": "on the Brier score",
    "macro_f1": "on macro-F1",
    "accuracy": "on accuracy",
    "nll": "on NLL",
}


def _names(items: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _standing(result: CompareResult, metric: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The best loss on ``metric``, the losses within the seed noise of it, those worse."""
    best = result.best(metric)
    worse = tuple(c.loss for c in result.comparisons[metric] if c.significant)
    within = tuple(s.label for s in result.losses if s.label != best and s.label not in worse)
    return best, within, worse


def _value(result: CompareResult, loss: str, metric: str) -> str:
    return _fmt(result.summary[loss][metric].mean, _digits(metric))


def _judgement(result: CompareResult, metrics: list[str]) -> str:
    """Which loss to use, in words, from its standing on ``metrics`` (the same on each), with
    the numbers behind it."""
    best, within, worse = _standing(result, metrics[0])
    values = ", ".join(f"{SHORT_NAMES.get(m, m)} {_value(result, best, m)}" for m in metrics)
    lead = f"**{best}** ({values})"
    if len(result.seeds) < 2 or not (within or worse):
        return f"{lead} has the best mean"
    if not within:
        return f"use {lead}: every other loss is worse beyond the seed noise"
    others = _names(list(within))
    if not worse:
        return (
            f"any of them: {lead} has the best mean, but {others} "
            f"{'is' if len(within) == 1 else 'are'} within the seed noise of it"
        )
    return (
        f"{lead} or {others}, within the seed noise of each other; {_names(list(worse))} "
        f"{'is' if len(worse) == 1 else 'are'} worse beyond it"
    )


def _positive_rate_note(result: CompareResult) -> str:
    """Binary data: losses whose F1 at 0.5 is near zero predict (almost) no positives there."""
    if result.task != "binary" or "f1_at_0.5" not in result.columns:
        return ""
    prevalence = float(np.mean([r.test_targets.mean() for r in result.runs]))
    shy = []
    for spec in result.losses:
        runs = result.runs_of(spec.label)
        rate = float(np.mean([(r.test_probs >= 0.5).mean() for r in runs]))
        if rate < prevalence / 5:
            shy.append((spec.label, rate))
    if not shy:
        return ""
    rates = _names([f"{rate:.1%}" for _, rate in shy])
    return (
        f" At 0.5, {_names([loss for loss, _ in shy])} "
        f"{'predicts' if len(shy) == 1 else 'predict'} almost no positives ({rates} of the "
        f"test samples; {prevalence:.1%} are positive): use "
        f"{'its' if len(shy) == 1 else 'their'} scores with a threshold chosen on validation "
        f"data."
    )


def purpose_lines(result: CompareResult) -> list[str]:
    """One sentence per use of the model: which loss to choose for it, and why."""
    lines = []
    for title, what, metrics in PURPOSES["multiclass" if result.task == "multiclass" else "binary"]:
        metrics = [m for m in metrics if m in result.columns]
        if not metrics:
            continue
        standings = [_standing(result, m) for m in metrics]
        if len(set(standings)) == 1:
            text = _judgement(result, metrics)  # the same standing on every metric: once
        elif len(result.seeds) > 1 and not any(worse for _, _, worse in standings):
            bests = ", ".join(
                f"**{best}** {SHORT_NAMES.get(m, m)} {_value(result, best, m)}"
                for m, (best, _, _) in zip(metrics, standings, strict=True)
            )
            text = (
                f"any of them: no loss is worse than the best beyond the seed noise on "
                f"{' or '.join(SHORT_NAMES.get(m, m) for m in metrics)} (best means: {bests})"
            )
        else:
            text = "; ".join(f"{ON_METRIC[m]}, {_judgement(result, [m])}" for m in metrics)
        names = ", ".join(dict.fromkeys(SHORT_NAMES.get(m, m) for m in metrics))
        note = _positive_rate_note(result) if "f1_at_0.5" in metrics else ""
        lines.append(f"**{title}**{' ' + what if what else ''} ({names}): {text}.{note}")
    return lines


def warnings(result: CompareResult) -> list[str]:
    """What makes this comparison less trustworthy than it looks."""
    out = []
    limit = result.settings.max_epochs
    open_runs = result.unflattened()
    if open_runs:
        which = "; ".join(
            f"{s.label} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            for s in result.losses
            if (seeds := [r.seed for r in open_runs if r.loss == s.label])
        )
        out.append(
            f"Warning: {len(open_runs)} of {len(result.runs)} runs stopped at the {limit}-epoch "
            f"limit before their validation loss flattened ({which}): they are not trained to "
            f"their best, and longer training could change this verdict. Raise the limit "
            f"(`--epochs`, or `max_epochs`)."
        )
    return out


def settings_text(result: CompareResult) -> str:
    cfg = result.settings
    return (
        f"Settings: {result.model}, {result.optimizer}, batch {_batch_text(result)}, at most "
        f"{cfg.max_epochs} epochs; each run keeps the epoch of its lowest validation loss and "
        f"stops after {cfg.patience} epochs without a new low; {result.split}; seeds "
        f"{', '.join(map(str, result.seeds))}; {result.world_size} process(es) on "
        f"{result.device}."
    )


def _batch_text(result: CompareResult) -> str:
    size = result.settings.batch_size
    if size is None:
        return "size of the caller's DataLoader"
    return f"{size}" + (" (about 16 steps per epoch)" if result.config.batch_size is None else "")


def verdict(result: CompareResult) -> str:
    """Which loss to use for what: one line on the data, one per use of the model (ranking,
    decisions at a threshold, calibrated probabilities; for multi-class data the predicted
    class and calibrated probabilities), the warnings, and the settings. Lines are separated
    by newlines; ``**`` marks the loss to use."""
    head, purposes, notes = _verdict_parts(result)
    return "\n".join([head, *(f"- {line}" for line in purposes), *notes])


def _verdict_parts(result: CompareResult) -> tuple[str, list[str], list[str]]:
    data = result.dataset
    n = len(result.seeds)
    head = (
        f"On {data.name} ({_task_text(result)}, {data.n_samples} samples, "
        f"{data.inputs_text()}; {data.prevalence_text()}), over {n} seed{'s' if n > 1 else ''}:"
    )
    notes = []
    if n < 2:
        notes.append("With one seed, no difference can be told apart from seed noise.")
    notes += warnings(result)
    notes.append(settings_text(result))
    return head, purpose_lines(result), notes


# --------------------------------------------------------------------------------------------
# Blocks rendered to Markdown and HTML
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "table" | "image" | "list"
    text: str = ""
    header: list[str] | None = None
    rows: list[list[str]] | None = None
    items: list[str] | None = None
    image: bytes | None = None
    filename: str = ""


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}\n")
        elif b.kind == "h2":
            out.append(f"## {b.text}\n")
        elif b.kind == "p":
            out.append(b.text + "\n")
        elif b.kind == "list":
            out.append("\n".join(f"- {i}" for i in b.items or []) + "\n")
        elif b.kind == "table":
            header = b.header or []
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|")
            for row in b.rows or []:
                out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            out.append("")
        elif b.kind == "image":
            out.append(f"![{b.text}]({b.filename})\n")
    return "\n".join(out)


CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f5f5f5; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0 1em; }
.verdict { background: #f0f6ff; border-left: 4px solid #3b7dd8; padding: .7em 1em; }
"""


def render_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    first_paragraph = True
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            cls = ' class="verdict"' if first_paragraph else ""
            first_paragraph = False
            body.append(f"<p{cls}>{_inline_html(b.text)}</p>")
        elif b.kind == "list":
            body.append(
                "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items or []) + "</ul>"
            )
        elif b.kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header or [])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>"
                for row in b.rows or []
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "image":
            data = base64.b64encode(b.image or b"").decode("ascii")
            body.append(f'<img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _blocks(result: CompareResult, figures: dict[str, bytes]) -> list[Block]:
    data = result.dataset
    p = result.primary
    head, purposes, notes = _verdict_parts(result)
    blocks = [
        Block("h1", f"crossent compare: {data.name}"),
        Block("p", head),
        Block("list", items=purposes),
        *(Block("p", note) for note in notes),
        Block("h2", "Test metrics (mean ± sd over seeds)"),
    ]
    macro = [c for c in result.columns if not c.endswith("_micro")]
    micro = [c for c in result.columns if c.endswith("_micro")]
    header, rows = metric_table(result, macro)
    blocks.append(Block("table", header=header, rows=rows))
    if micro:
        blocks.append(
            Block("p", "Above: macro averages over labels. Micro (every sample and label pooled):")
        )
        header, rows = metric_table(result, micro)
        blocks.append(Block("table", header=header, rows=rows))
    blocks.append(
        Block(
            "p",
            f"↑ higher is better, ↓ lower is better. **Bold**: best mean. {NOISE_MARK}: worse "
            f"than the best by more than the seed noise. {noise_rule(len(result.seeds))} "
            + (
                "F1 and balanced accuracy use each label's threshold that maximises F1 on the "
                "validation split; F1 @0.5 uses probability 0.5. ECE: 15 equal-width bins."
                if result.task != "multiclass"
                else "ECE: top-label confidence, 15 equal-width bins."
            ),
        )
    )
    blocks.append(Block("h2", f"Against the best on {M.METRICS[p].title}"))
    best = result.best(p)
    rows = []
    for c in result.comparisons[p]:
        sd = _fmt(c.std_difference, 4)
        rows.append(
            [
                c.loss,
                f"{c.mean_difference:+.4f}",
                sd,
                _fmt(c.t, 2) if math.isfinite(c.t) else ("inf" if c.n > 1 else "n/a"),
                _fmt(c.p_value, 4),
                "yes" if c.significant else "no",
            ]
        )
    blocks.append(
        Block(
            "table",
            header=["loss", f"mean diff. vs {best}", "sd of diff.", "t", "p", "beyond noise"],
            rows=rows,
        )
    )
    if result.task == "multilabel":
        blocks.append(Block("h2", "Average precision per label (mean over seeds)"))
        names = data.label_names
        rows = []
        for spec in result.losses:
            runs = result.runs_of(spec.label)
            rows.append(
                [spec.label]
                + [
                    _fmt(sum(r.per_label[n]["average_precision"] for r in runs) / len(runs))
                    for n in names
                ]
            )
        blocks.append(Block("table", header=["loss", *names], rows=rows))

    blocks.append(Block("h2", "Losses"))
    rows = []
    for spec in result.losses:
        runs = result.runs_of(spec.label)
        rows.append(
            [
                f"`{spec.label}`",
                spec.spec.title,
                _auto_summary(result, spec.label) or "-",
                f"{sum(r.history.best_epoch for r in runs) / len(runs):.0f}",
                f"{sum(r.history.seconds for r in runs) / len(runs):.1f} s",
            ]
        )
    blocks.append(
        Block(
            "table",
            header=["spec", "loss", "auto values", "epoch kept (mean)", "train time / run"],
            rows=rows,
        )
    )

    blocks.append(Block("h2", "Figures"))
    captions = {
        "pr_curves": "Precision-recall curves",
        "reliability": "Reliability diagrams",
        "training_curves": "Training curves",
    }
    for key, png in figures.items():
        blocks.append(Block("image", captions[key], image=png, filename=f"figures/{key}.png"))

    blocks.append(Block("h2", "Data and settings"))
    sizes = result.splits[result.seeds[0]]
    test_info = ""
    if result.task != "multiclass":
        positives = [int(r.test_targets.sum()) for r in result.runs_of(result.losses[0].label)]
        test_info = f"; positives in the test split per seed: {', '.join(map(str, positives))}"
    blocks.append(
        Block(
            "list",
            items=[
                data.description,
                f"Task: {_task_text(result)}; {data.prevalence_text()}.",
                f"Split (seed {result.seeds[0]}): {sizes['train']} train / {sizes['val']} "
                f"validation / {sizes['test']} test: {result.split}"
                + (" (iterative stratification)" if result.task == "multilabel" else "")
                + f"{test_info}."
                + (
                    " Features standardised with the training split's mean and sd."
                    if data.X is not None
                    else ""
                ),
                f"Model: {result.model}; {result.optimizer}, batch size {_batch_text(result)}, at "
                f"most {result.settings.max_epochs} epochs. Each run follows its own loss on the "
                f"validation split, keeps the weights of the epoch where it was lowest, and stops "
                f"after {result.settings.patience} epochs without a new low"
                + (
                    f" (all {len(result.runs)} runs stopped that way)."
                    if not result.unflattened()
                    else f" ({len(result.unflattened())} of {len(result.runs)} runs reached the "
                    f"epoch limit first)."
                ),
                "Within a seed every loss starts from the same initial weights and sees the same "
                "batches in the same order.",
                f"Seeds: {', '.join(map(str, result.seeds))}. Processes: {result.world_size} "
                f"(device {result.device}). Wall time: {result.seconds:.1f} s.",
                f"crossent {__version__}, torch {result.environment['torch']}, "
                f"python {result.environment['python']}.",
            ],
        )
    )
    blocks.append(Block("h2", "Files"))
    blocks.append(
        Block(
            "list",
            items=[
                "`results.csv`: one row per loss and seed, one column per metric.",
                "`summary.csv`: mean, sd and the comparison with the best loss per metric.",
                "`results.json`: all of it, with settings, per-label values and training "
                "histories.",
                "`report.md` (figures in `figures/`) and this report as one self-contained "
                "`report.html`.",
            ],
        )
    )
    return blocks


def _clean(value):
    """JSON-safe: NaN and infinity become null, NumPy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_json(result: CompareResult) -> dict:
    best = result.best()
    return _clean(
        {
            "crossent_version": __version__,
            "dataset": {
                "name": result.dataset.name,
                "description": result.dataset.description,
                "task": result.task,
                "samples": result.dataset.n_samples,
                "inputs": result.dataset.inputs_text(),
                "labels": result.dataset.label_names,
                "counts": result.dataset.class_counts().tolist(),
            },
            "config": config_dict(result.config),
            "settings": {**asdict(result.settings), "hidden": list(result.settings.hidden)},
            "split": result.split,
            "optimizer": result.optimizer,
            "model": result.model,
            "seeds": result.seeds,
            "splits": {str(k): v for k, v in result.splits.items()},
            "losses": [
                {
                    "label": s.label,
                    "loss": s.spec.name,
                    "options": {
                        k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in s.options.items()
                    },
                    "auto": [r.auto for r in result.runs_of(s.label)],
                }
                for s in result.losses
            ],
            "primary_metric": result.primary,
            "metrics": list(result.columns),
            "rows": result.rows(),
            "per_label": [
                {"loss": r.loss, "seed": r.seed, "thresholds": r.thresholds, "metrics": r.per_label}
                for r in result.runs
                if r.per_label
            ],
            "summary": {
                loss: {c: {"mean": s.mean, "std": s.std, "n": s.n} for c, s in by_metric.items()}
                for loss, by_metric in result.summary.items()
            },
            "comparisons": {c: [x.as_dict() for x in xs] for c, xs in result.comparisons.items()},
            "noise_rule": noise_rule(len(result.seeds)),
            "best": best,
            "verdict": verdict(result),
            "histories": [
                {
                    "loss": r.loss,
                    "seed": r.seed,
                    "train_loss": r.history.train_loss,
                    "val_loss": r.history.val_loss,
                    "val_" + result.primary: r.history.val_score,
                    "best_epoch": r.history.best_epoch,
                    "val_loss_flattened": r.history.flattened,
                }
                for r in result.runs
            ],
            "world_size": result.world_size,
            "device": result.device,
            "seconds": result.seconds,
            "environment": result.environment,
        }
    )


def earlier_report(out: str | Path) -> list[str] | None:
    """The files an earlier ``crossent compare`` wrote into the folder ``out``, as its
    ``results.json`` lists them; ``None`` when ``out`` holds no report."""
    path = Path(out) / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not {"crossent_version", "verdict", "rows"} <= set(data):
        return None
    files = data.get("report_files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return [f for f in files if f in REPORT_FILES]
    return list(REPORT_FILES)  # a report from before the list was recorded


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_out_folder(out: str | Path, *, inputs: list[str | Path] | tuple = ()) -> bool:
    """Check that a report can be written into the folder ``out`` without overwriting anything
    but an earlier report: not a file, not one of ``inputs`` (the data the comparison reads),
    no file of the report's names that ``crossent compare`` did not write. Returns whether an
    earlier report is there (and will be replaced); raises :class:`CompareError` otherwise.
    """
    out = Path(out)
    targets = [out / name for name in REPORT_FILES]
    for given in map(Path, inputs):
        if _same_file(out, given) or any(_same_file(t, given) for t in targets):
            raise CompareError(
                f"`--out {out}` would overwrite {str(given)!r}, the data this comparison reads; "
                f"nothing was run or written. Give the report a folder of its own, e.g. "
                f"`--out crossent-report`."
            )
    if out.exists() and not out.is_dir():
        raise CompareError(
            f"`--out` names the folder the report goes into, but {str(out)!r} is a file; "
            f"nothing was run or written. Give a folder, e.g. `--out crossent-report`."
        )
    if not out.exists():
        return False
    earlier = earlier_report(out)
    ours = set(earlier or ())
    taken = [name for name, path in zip(REPORT_FILES, targets, strict=True) if path.exists()]
    if (out / "figures").exists() and not (out / "figures").is_dir():
        taken.append("figures")
    foreign = [name for name in taken if name not in ours]
    if foreign:
        raise CompareError(
            f"{str(out)!r} already holds {', '.join(foreign)}, which crossent compare did not "
            f"write there; nothing was run or written. Give the report a new folder with `--out`, "
            f"or move those files."
        )
    return bool(earlier) and bool(taken)


def write_report(
    result: CompareResult, out: str | Path, *, figures: bool = True
) -> dict[str, Path]:
    """Write every output file into ``out`` (created if needed); returns their paths.

    Only an earlier report in ``out`` is replaced: ``check_out_folder`` refuses a file of
    the report's names that crossent did not write, and the comparison's own ``--csv`` data.
    """
    from crossent.compare import figures as F

    out = Path(out)
    check_out_folder(out, inputs=[result.config.csv] if result.config.csv else [])
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results.csv": out / "results.csv",
        "summary.csv": out / "summary.csv",
        "results.json": out / "results.json",
        "report.md": out / "report.md",
        "report.html": out / "report.html",
    }
    rows = result.rows()
    with paths["results.csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with paths["summary.csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "loss",
                "metric",
                "mean",
                "std",
                "n",
                "best",
                "diff_vs_best",
                "p_value",
                "beyond_noise",
            ]
        )
        for spec in result.losses:
            for c in result.columns:
                s = result.summary[spec.label][c]
                comp = next((x for x in result.comparisons[c] if x.loss == spec.label), None)
                writer.writerow(
                    [
                        spec.label,
                        c,
                        s.mean,
                        s.std,
                        s.n,
                        spec.label == result.best(c),
                        comp.mean_difference if comp else 0.0,
                        comp.p_value if comp else "",
                        comp.significant if comp else "",
                    ]
                )
    written = [name for name in REPORT_FILES if figures or not name.startswith("figures/")]
    summary = {**results_json(result), "report_files": written}
    paths["results.json"].write_text(json.dumps(summary, indent=2) + "\n")
    pngs: dict[str, bytes] = {}
    if figures:
        pngs = {
            "pr_curves": F.pr_curves(result),
            "reliability": F.reliability_diagrams(result),
            "training_curves": F.training_curves(result),
        }
        (out / "figures").mkdir(exist_ok=True)
        for key, png in pngs.items():
            path = out / "figures" / f"{key}.png"
            path.write_bytes(png)
            paths[f"figures/{key}.png"] = path
    blocks = _blocks(result, pngs)
    paths["report.md"].write_text(render_markdown(blocks))
    paths["report.html"].write_text(render_html(blocks, f"crossent compare: {result.dataset.name}"))
    return paths
