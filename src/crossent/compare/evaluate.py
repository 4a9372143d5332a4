"""From a model's logits to the metrics of :mod:`crossent.compare.metrics`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crossent.compare import metrics as M

__all__ = ["Evaluation", "evaluate", "metric_columns", "primary_metric", "probabilities", "score"]


def primary_metric(task: str) -> str:
    """The report's primary metric (its comparison table, ``best`` in results.json and the
    validation metric recorded each epoch) unless ``--metric`` says otherwise: average
    precision (PR-AUC, macro over labels) for binary / multi-label data -- the ranking quality
    of the rare class, blind to the many easy negatives -- and macro-F1 for multi-class data,
    which weighs every class equally whatever its size."""
    return "macro_f1" if task == "multiclass" else "average_precision"


def metric_columns(task: str, n_outputs: int) -> tuple[str, ...]:
    if task == "multiclass":
        return M.MULTICLASS_COLUMNS
    return M.BINARY_COLUMNS + (M.MICRO_COLUMNS if n_outputs > 1 else ())


def probabilities(task: str, logits: torch.Tensor) -> np.ndarray:
    """Sigmoid per label, or softmax over classes, as float64 NumPy."""
    logits = logits.detach().to("cpu", torch.float64)
    probs = torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)
    return probs.numpy()


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_label: dict[str, dict[str, float]]
    thresholds: list[float]
    probs: np.ndarray


def evaluate(
    task: str,
    y_test: np.ndarray,
    test_logits: torch.Tensor,
    *,
    y_val: np.ndarray | None = None,
    val_logits: torch.Tensor | None = None,
    label_names: list[str] | None = None,
) -> Evaluation:
    """Every metric of the test predictions. For binary / multi-label data the decision
    threshold of each label is the one maximising F1 on the validation predictions (on the
    evaluated data itself when no validation data is given)."""
    probs = probabilities(task, test_logits)
    if task == "multiclass":
        log_probs = torch.log_softmax(test_logits.detach().to("cpu", torch.float64), dim=1).numpy()
        return Evaluation(M.multiclass_metrics(y_test, probs, log_probs=log_probs), {}, [], probs)
    if val_logits is None:
        y_val, val_probs = y_test, probs
    else:
        val_probs = probabilities(task, val_logits)
    thresholds = [M.best_f1_threshold(y_val[:, j], val_probs[:, j]) for j in range(probs.shape[1])]
    summary, per_label = M.binary_metrics(
        y_test, probs, np.array(thresholds), label_names=label_names
    )
    return Evaluation(summary, per_label, thresholds, probs)


def score(task: str, y: np.ndarray, logits: torch.Tensor, metric: str) -> float:
    """One metric of ``logits`` on ``y`` (the validation data, recorded each epoch)."""
    return evaluate(task, y, logits).metrics[metric]
