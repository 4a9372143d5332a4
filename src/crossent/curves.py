"""Loss and gradient curves: how a loss treats easy and hard examples.

:func:`compute_curves` evaluates losses of the library on a grid of ``p_t`` (the probability
of the true class) and of the true-class logit ``z = log(p_t / (1 - p_t))``, with the gradient
``|dℓ/dz|`` from autograd through the loss itself -- no hand-written derivative. The default is
Figure 1 of Lin et al. 2017: the focal loss for gamma 0, 0.5, 1, 2, 5 (alpha off).

Sigmoid losses are evaluated at ``y = 1`` with logit ``z`` and at ``y = 0`` with logit ``-z``
(both give the same ``p_t``); where the two differ (ASL, an alpha), both are kept and labelled.
Softmax losses are evaluated on two classes with logits ``[z, 0]`` and target 0, so that
``p_t = σ(z)`` as well.

>>> curves = compute_curves(["focal:gamma=2,alpha=none"], points=5)
>>> curves.curves[0].label, round(curves.curves[0].summary["loss@0.9"], 6)  # -(0.1^2) log 0.9
('FL γ=2', 0.001054)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crossent.losses import SYMBOLS
from crossent.registry import AUTO, LossSpec, parse_loss_spec

__all__ = [
    "DEFAULT_GAMMAS",
    "Curve",
    "Curves",
    "compute_curves",
    "default_losses",
    "plot_curves",
    "write_csv",
]

DEFAULT_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
PNG_SOFTWARE = "crossent curves"
CSV_HEADER = ["curve", "spec", "y", "grid", "p_t", "logit", "loss", "grad_abs"]
# p_t at which the summary table reads the curves (Lin et al. quote 0.9 and 0.968).
SUMMARY_POINTS = (0.1, 0.5, 0.9, 0.99)
P_T_RANGE = (1e-3, 1.0 - 1e-3)
LOGIT_RANGE = (-8.0, 8.0)


@dataclass
class Curve:
    """One loss (and target side) on both grids."""

    label: str
    spec: str
    target: int
    loss_vs_pt: list[float]
    grad_vs_pt: list[float]
    loss_vs_logit: list[float]
    grad_vs_logit: list[float]
    summary: dict[str, float] = field(default_factory=dict)
    same_as: str | None = None


@dataclass
class Curves:
    title: str
    p_t: list[float]
    logit: list[float]
    curves: list[Curve]


def default_losses() -> list[str]:
    """Lin et al.'s Figure 1: the focal loss for gamma 0, 0.5, 1, 2, 5, without alpha."""
    return [f"focal:gamma={g:g},alpha=none" for g in DEFAULT_GAMMAS]


def _label(spec: LossSpec, options: dict[str, Any]) -> str:
    """A legend label: ``"γ=2"`` for Figure 1's focal curves, else the title and options."""
    if (
        spec.name == "focal"
        and set(options) <= {"gamma", "alpha"}
        and options.get("alpha", 0.25) is None
    ):
        gamma = options.get("gamma", spec.options()["gamma"])
        return "γ=0 (CE)" if gamma == 0 else f"FL γ={gamma:g}"
    # The options that shape the curve, at their effective values (defaults included).
    defaults = spec.options()
    effective = {k: defaults[k] for k in spec.curve_options}
    effective.update(options)
    parts = []
    for key, value in effective.items():
        symbol = SYMBOLS.get(key, key)
        if value is None:
            parts.append(f"{symbol} off")
        elif isinstance(value, torch.Tensor):
            parts.append(f"{symbol}=[" + ",".join(f"{v:g}" for v in value.flatten()) + "]")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{symbol}={value:g}")
        else:
            parts.append(f"{symbol}={value}")
    return spec.title + (" " + ", ".join(parts) if parts else "")


def _evaluate(
    spec: LossSpec, options: dict[str, Any], z: torch.Tensor, target: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and ``|dℓ/dz|`` at true-class logits ``z``, by autograd through the library."""
    fn = spec.function(probs=False)
    z = z.detach().clone().requires_grad_(True)
    if spec.family == "softmax":
        logits = torch.stack([z, torch.zeros_like(z)], dim=1)
        y = torch.zeros(z.shape[0], dtype=torch.int64)
    else:
        # p_t = σ(z): the logit is z for a positive, -z for a negative.
        logits = z if target == 1 else -z
        y = torch.full_like(z, float(target))
    loss = fn(logits, y, **options, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad.abs()


def compute_curves(
    losses: Sequence[str] | None = None,
    *,
    points: int = 500,
) -> Curves:
    """Loss and gradient magnitude against ``p_t`` and against the true-class logit.

    Args:
        losses: loss specs (``"focal:gamma=2"``, ``"asl"``, ``"poly1:epsilon=2"``); ``None``
            gives :func:`default_losses`.
        points: grid points per axis (>= 2).

    Returns:
        :class:`Curves`, in float64.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"Expected `points` to be an int >= 2, but got {points!r}.")
    texts = list(default_losses() if losses is None else losses)
    if not texts:
        raise ValueError("Expected at least one loss to plot, but got none.")
    p_t = torch.linspace(*P_T_RANGE, points, dtype=torch.float64)
    z_of_p = torch.logit(p_t)
    z = torch.linspace(*LOGIT_RANGE, points, dtype=torch.float64)
    z_summary = torch.logit(torch.tensor(SUMMARY_POINTS, dtype=torch.float64))
    curves: list[Curve] = []
    parsed = [(text, *parse_loss_spec(text)) for text in texts]  # every spec checked first
    for *_, options in parsed:
        for key, value in options.items():
            if isinstance(value, str) and value == AUTO:
                raise ValueError(
                    f"Expected `{key}` to be a value, but got 'auto': curves have no data to "
                    f"compute it from."
                )
        options.pop("reduction", None)
        options.pop("ignore_index", None)
    for text, spec, options in parsed:
        sides = [1] if spec.family == "softmax" else [1, 0]
        results = []
        for side in sides:
            loss_p, grad_p = _evaluate(spec, options, z_of_p, side)
            loss_z, grad_z = _evaluate(spec, options, z, side)
            loss_s, grad_s = _evaluate(spec, options, z_summary, side)
            results.append((side, loss_p, grad_p, loss_z, grad_z, loss_s, grad_s))
        symmetric = len(results) == 2 and all(
            torch.allclose(a, b, rtol=1e-9, atol=1e-12)
            for a, b in zip(results[0][1:], results[1][1:], strict=True)
        )
        if symmetric:
            results = results[:1]
        label = _label(spec, options)
        for side, loss_p, grad_p, loss_z, grad_z, loss_s, grad_s in results:
            summary = {}
            for i, pt in enumerate(SUMMARY_POINTS):
                summary[f"loss@{pt:g}"] = float(loss_s[i])
                summary[f"grad@{pt:g}"] = float(grad_s[i])
            curves.append(
                Curve(
                    label=label if len(results) == 1 else f"{label}, y={side}",
                    spec=text,
                    target=side,
                    loss_vs_pt=loss_p.tolist(),
                    grad_vs_pt=grad_p.tolist(),
                    loss_vs_logit=loss_z.tolist(),
                    grad_vs_logit=grad_z.tolist(),
                    summary=summary,
                )
            )
    for i, c in enumerate(curves):
        for earlier in curves[:i]:
            if earlier.same_as is None and all(
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
                for a, b in zip(
                    c.loss_vs_pt + c.loss_vs_logit,
                    earlier.loss_vs_pt + earlier.loss_vs_logit,
                    strict=True,
                )
            ):
                c.same_as = earlier.label  # drawn on top of it: the legend says so
                break
    if losses is None:
        title = "Focal loss for γ ∈ {0, 0.5, 1, 2, 5} (Lin et al. 2017, Fig. 1)"
    else:
        title = "Loss and gradient against the probability of the true class"
    return Curves(title=title, p_t=p_t.tolist(), logit=z.tolist(), curves=curves)


def write_csv(curves: Curves, path: str | Path) -> Path:
    """Long format: one row per curve and grid point (``grid`` is ``p_t`` or ``logit``)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for c in curves.curves:
            for pt, loss, grad in zip(curves.p_t, c.loss_vs_pt, c.grad_vs_pt, strict=True):
                z = math.log(pt / (1 - pt))
                writer.writerow([c.label, c.spec, c.target, "p_t", pt, z, loss, grad])
            for z, loss, grad in zip(curves.logit, c.loss_vs_logit, c.grad_vs_logit, strict=True):
                pt = 1 / (1 + math.exp(-z))
                writer.writerow([c.label, c.spec, c.target, "logit", pt, z, loss, grad])
    return path


def plot_curves(
    curves: Curves,
    path: str | Path,
    *,
    width: float = 12.0,
    height: float = 9.0,
    dpi: int = 100,
) -> Path:
    """Draw the four panels to a PNG of ``width * dpi`` by ``height * dpi`` pixels.

    Uses matplotlib's Agg canvas directly: no pyplot, no global backend change.
    """
    fig = _figure(curves, width=width, height=height, dpi=dpi)
    # The Software text chunk marks the file as this function's: `crossent curves` replaces
    # such a file, and refuses to overwrite any other.
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": PNG_SOFTWARE})
    return path


def _figure(curves: Curves, *, width: float, height: float, dpi: int) -> Any:
    """The figure :func:`plot_curves` saves (a matplotlib ``Figure`` on an Agg canvas)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "Plotting curves needs matplotlib: pip install 'crossent[compare]' (or matplotlib)."
        ) from None

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    colors = _colors(len(curves.curves))
    for c, color in zip(curves.curves, colors, strict=True):
        style = "--" if c.target == 0 and ", y=" in c.label else "-"
        label = c.label + (f"  (= {c.same_as})" if c.same_as else "")
        if c.same_as:
            style = ":"
        kw = {"color": color, "linestyle": style, "linewidth": 2.0, "label": label}
        axes[0, 0].plot(curves.p_t, c.loss_vs_pt, **kw)
        axes[0, 1].plot(curves.p_t, c.grad_vs_pt, **kw)
        axes[1, 0].plot(curves.logit, c.loss_vs_logit, **kw)
        axes[1, 1].plot(curves.logit, [max(g, 1e-12) for g in c.grad_vs_logit], **kw)

    axes[0, 0].set(xlim=(0, 1), ylim=(0, 5), title="Loss vs probability of the true class")
    axes[0, 0].set(xlabel="probability of the true class $p_t$", ylabel="loss ℓ")
    top = max(max(c.grad_vs_pt) for c in curves.curves)
    axes[0, 1].set(xlim=(0, 1), ylim=(0, max(1.05, 1.05 * top)))
    axes[0, 1].set(
        title="Gradient magnitude vs $p_t$",
        xlabel="probability of the true class $p_t$",
        ylabel="|∂ℓ/∂z|  (z: logit of the true class)",
    )
    loss_top = max(max(c.loss_vs_logit) for c in curves.curves)
    axes[1, 0].set(xlim=LOGIT_RANGE, ylim=(0, 1.05 * min(loss_top, 10.0)))
    axes[1, 0].set(
        title="Loss vs the logit of the true class",
        xlabel="logit of the true class z = log(p_t / (1 - p_t))",
        ylabel="loss ℓ",
    )
    axes[1, 1].set_yscale("log")
    axes[1, 1].set(xlim=LOGIT_RANGE, ylim=(1e-8, 2.0 * max(1.0, top)))
    axes[1, 1].set(
        title="Gradient magnitude vs the logit (log scale)",
        xlabel="logit of the true class z",
        ylabel="|∂ℓ/∂z|",
    )
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    # Below the panels, where it covers no curve: the legend, then the caption. Their height is
    # reserved in inches, so that neither is clipped whatever the number of curves.
    columns = 1 if len(curves.curves) <= 2 else 2 if len(curves.curves) <= 8 else 3
    legend_rows = -(-len(curves.curves) // columns)
    caption = "\n".join(
        [
            "Gradients by autograd through crossent's losses. Sigmoid losses: p_t = σ(z) for "
            "y = 1 and σ(-z) for y = 0 (dashed where the sides differ);",
            "softmax losses: logits [z, 0], target 0. Dotted: identical to an earlier curve.",
        ]
    )
    line = 0.2  # inches per legend row at fontsize 9 (and per caption line at 8)
    caption_h, legend_h = 2 * line + 0.1, legend_rows * line + 0.25
    bottom = (caption_h + legend_h) / height
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, caption_h / height),
        ncol=columns,
        fontsize=9,
        frameon=False,
    )
    fig.text(0.5, 0.1 / height, caption, ha="center", va="bottom", fontsize=8, color="0.35")
    fig.suptitle(curves.title, fontsize=14, fontweight="bold")
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.45 / height))
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]
