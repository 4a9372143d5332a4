"""The report's figures (matplotlib, Agg backend): precision-recall curves, reliability diagrams
and training curves. Each function returns PNG bytes."""

from __future__ import annotations

import io

import numpy as np

from crossent.compare import metrics as M
from crossent.compare.runner import CompareResult

__all__ = ["pr_curves", "reliability_diagrams", "training_curves"]

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(result: CompareResult) -> dict[str, str]:
    palette = [
        "#1f77b4",
        "#d62728",
        "#2ca02c",
        "#ff7f0e",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
    ]
    return {s.label: palette[i % len(palette)] for i, s in enumerate(result.losses)}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return buffer.getvalue()


def _pooled(result: CompareResult, loss: str, column: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Test targets and scores of every seed, pooled: one label's column, all labels
    (``column=None``, binary tasks), or one-vs-rest indicators (multi-class)."""
    ys, ps = [], []
    for run in result.runs_of(loss):
        y, p = run.test_targets, run.test_probs
        if result.task == "multiclass":
            y = np.eye(p.shape[1])[y]
        if column is not None:
            y, p = y[:, column], p[:, column]
        ys.append(np.ravel(y))
        ps.append(np.ravel(p))
    return np.concatenate(ys), np.concatenate(ps)


def _table_ap(result: CompareResult, loss: str, column: int | None) -> float | None:
    """The average precision the report's tables show for this panel: the mean over seeds of
    each seed's AP (binary: the AP column; multi-label: the per-label table, or the micro
    column for all labels). ``None`` for multi-class data, whose tables have no AP."""
    if result.task == "binary":
        return result.summary[loss]["average_precision"].mean
    if result.task == "multilabel":
        if column is None:
            return result.summary[loss]["average_precision_micro"].mean
        name = result.dataset.label_names[column]
        runs = result.runs_of(loss)
        return float(np.mean([r.per_label[name]["average_precision"] for r in runs]))
    return None


def pr_curves(result: CompareResult) -> bytes:
    """Precision-recall curves of the test predictions, every seed pooled, one line per loss.

    Binary: one panel; multi-label: one panel per label and one micro-averaged; multi-class:
    the micro-averaged one-vs-rest curve. The AP in each legend is the one the report's tables
    show (the mean over seeds of each seed's AP), so figure and tables agree; multi-class
    tables have no AP, and there the legend gives the pooled curve's own AP, labelled so.
    Legends sit below their panels, where they cover no curve."""
    return _png(pr_figure(result))


def pr_figure(result: CompareResult):
    """The matplotlib figure :func:`pr_curves` renders."""
    plt = _plt()
    colors = _colors(result)
    panels: list[tuple[str, int | None]]
    if result.task == "binary":
        panels = [(f"positive class {result.dataset.label_names[0]!r}", 0)]
    elif result.task == "multilabel":
        panels = [(f"label {n!r}", j) for j, n in enumerate(result.dataset.label_names)]
        panels.append(("all labels (micro)", None))
    else:
        panels = [("all classes, one-vs-rest (micro)", None)]
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    legend_h = 0.22 * (len(result.losses) + 1) + 0.3
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(4.8 * cols, (4.0 + legend_h) * rows + 0.4),
        squeeze=False,
        layout="constrained",
    )
    seeds = len(result.seeds)
    for ax, (title, column) in zip(axes.flat, panels, strict=False):
        prevalence = None
        for spec in result.losses:
            y, p = _pooled(result, spec.label, column)
            precision, recall = M.precision_recall_curve(y, p)
            ap = _table_ap(result, spec.label, column)
            if ap is None:
                text = f"pooled AP {M.average_precision(y, p):.3f}"
            else:
                text = f"AP {ap:.3f}" + (" (mean of seeds)" if seeds > 1 else "")
            ax.step(
                recall,
                precision,
                where="post",
                color=colors[spec.label],
                lw=1.6,
                label=f"{spec.label}: {text}",
            )
            prevalence = y.mean()
        if prevalence is not None:
            ax.axhline(prevalence, color="grey", ls=":", lw=1, label=f"chance ({prevalence:.3f})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    ap_source = (
        "AP: the pooled curve's (multi-class tables have no AP)"
        if result.task == "multiclass"
        else "AP: as in the report's tables"
        + (f", the mean of the {seeds} seeds' APs" if seeds > 1 else "")
    )
    fig.suptitle(
        f"Precision-recall on the test split\ncurves: the test predictions of {seeds} seed(s) "
        f"pooled; {ap_source}",
        fontsize=10,
    )
    return fig


def reliability_diagrams(result: CompareResult) -> bytes:
    """One panel per loss: observed frequency against mean predicted probability in 15 bins
    (binary / multi-label: every label's probabilities pooled; multi-class: top-label
    confidence), above a histogram of how many predictions fall in each bin."""
    plt = _plt()
    colors = _colors(result)
    n = len(result.losses)
    fig, axes = plt.subplots(
        2,
        n,
        figsize=(3.3 * n + 0.6, 5.2),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.2]},
        sharex=True,
    )
    edges = np.linspace(0, 1, M.N_BINS + 1)
    for k, spec in enumerate(result.losses):
        if result.task == "multiclass":
            ys, ps = [], []
            for run in result.runs_of(spec.label):
                pred = run.test_probs.argmax(axis=1)
                ys.append((pred == run.test_targets).astype(float))
                ps.append(run.test_probs.max(axis=1))
            y, p = np.concatenate(ys), np.concatenate(ps)
            xlabel = "confidence (top class)"
        else:
            y, p = _pooled(result, spec.label, None)
            xlabel = "predicted probability"
        counts, conf, freq = M.reliability_bins(y, p)
        ece = M.expected_calibration_error(y, p)
        ax, hist = axes[0, k], axes[1, k]
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ok = counts > 0
        # Marker area grows with the bin's count: a bin of two predictions should not look
        # as certain as one of a thousand.
        sizes = 12 + 30 * np.log10(counts[ok])
        ax.plot(conf[ok], freq[ok], "-", color=colors[spec.label], lw=1.0, alpha=0.6)
        ax.scatter(
            conf[ok],
            freq[ok],
            s=sizes,
            color=colors[spec.label],
            zorder=3,
            edgecolor="white",
            linewidth=0.5,
        )
        ax.set_title(f"{spec.label}\npooled ECE {ece:.4f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.set_ylabel("observed frequency")
            hist.set_ylabel("predictions")
        hist.bar(
            edges[:-1],
            np.maximum(counts, 0.8),
            width=1 / M.N_BINS,
            align="edge",
            color=colors[spec.label],
            alpha=0.6,
        )
        hist.set_yscale("log")
        hist.set_ylim(0.8, max(counts.max(), 1) * 2)
        hist.set_xlabel(xlabel)
    fig.suptitle(
        "Reliability on the test split (all seeds pooled; dashed = perfect calibration; "
        "marker area ~ log of the bin's count)",
        fontsize=11,
    )
    fig.tight_layout()
    return _png(fig)


def training_curves(result: CompareResult) -> bytes:
    """Per loss: its training and validation loss (top) and the primary metric on the
    validation split (bottom), one line per seed, a dot at the epoch whose weights were kept
    (the lowest validation loss)."""
    plt = _plt()
    colors = _colors(result)
    n = len(result.losses)
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n + 0.6, 5.4), squeeze=False, sharex="col")
    title = M.METRICS[result.primary].title
    for k, spec in enumerate(result.losses):
        top, bottom = axes[0, k], axes[1, k]
        color = colors[spec.label]
        for j, run in enumerate(result.runs_of(spec.label)):
            h = run.history
            epochs = np.arange(1, h.epochs_run + 1)
            alpha = 1.0 if j == 0 else 0.55
            top.plot(
                epochs,
                h.train_loss,
                color=color,
                lw=1.2,
                alpha=alpha,
                label="train" if j == 0 else None,
            )
            top.plot(
                epochs,
                h.val_loss,
                color=color,
                lw=1.2,
                ls="--",
                alpha=alpha,
                label="validation" if j == 0 else None,
            )
            bottom.plot(epochs, h.val_score, color=color, lw=1.2, alpha=alpha)
            b = h.best_epoch
            if b:
                top.plot([b], [h.val_loss[b - 1]], "o", color="black", ms=3.5)
                bottom.plot([b], [h.val_score[b - 1]], "o", color="black", ms=3.5)
        top.set_title(spec.label, fontsize=9)
        top.set_yscale("log")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
        bottom.set_xlabel("epoch")
        if k == 0:
            top.set_ylabel("loss (each its own)")
            bottom.set_ylabel(f"validation {title}")
            top.legend(fontsize=8)
    fig.suptitle(
        f"Training curves, one line per seed ({len(result.seeds)}); black dot = epoch kept "
        f"(lowest validation loss)",
        fontsize=11,
    )
    fig.tight_layout()
    return _png(fig)
