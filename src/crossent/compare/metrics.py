"""Evaluation metrics for ``crossent compare``, in NumPy (float64), tested against scikit-learn.

Binary / multi-label (one column of scores per label, probabilities of the positive class):

* ``average_precision`` -- area under the precision-recall curve as a step function,
  ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds (scikit-learn's definition,
  no interpolation);
* ``roc_auc`` -- trapezoidal area under the ROC curve (ties count one half);
* ``f1`` -- F1 at the threshold chosen on the *validation* set (the one that maximises F1
  there), ``f1_at_0.5`` -- F1 at probability 0.5;
* ``balanced_accuracy`` -- (TPR + TNR) / 2 at the validation-chosen threshold;
* ``ece`` -- expected calibration error with 15 equal-width bins ``(lo, hi]`` (the first one
  closed, as in :func:`sklearn.calibration.calibration_curve`): the count-weighted mean of
  ``|observed frequency - mean predicted probability|``;
* ``brier`` -- mean squared difference between probability and outcome.

Several labels are summarised two ways: *macro* (the mean of the per-label values; the
plain column names) and *micro* (every (sample, label) pair pooled; columns ending in
``_micro``). The Brier score needs no micro form: with the same samples under every label the
two are equal.

Multi-class (one probability row per sample): ``accuracy``, ``macro_f1`` (F1 per class of the
arg-max prediction, averaged over all classes), ``nll`` (mean negative log-likelihood of the
true class) and ``ece`` (top-label: confidence = highest probability, outcome = whether that
class is right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "METRICS",
    "MetricInfo",
    "average_precision",
    "balanced_accuracy",
    "best_f1_threshold",
    "binary_metrics",
    "brier_score",
    "expected_calibration_error",
    "f1_score",
    "multiclass_metrics",
    "precision_recall_curve",
    "reliability_bins",
    "roc_auc",
]

N_BINS = 15


@dataclass(frozen=True)
class MetricInfo:
    name: str
    title: str
    higher_is_better: bool


_INFO = [
    MetricInfo("average_precision", "AP (PR-AUC)", True),
    MetricInfo("roc_auc", "ROC-AUC", True),
    MetricInfo("f1", "F1 (val thr.)", True),
    MetricInfo("f1_at_0.5", "F1 @0.5", True),
    MetricInfo("balanced_accuracy", "Bal. acc.", True),
    MetricInfo("ece", "ECE", False),
    MetricInfo("brier", "Brier", False),
    MetricInfo("accuracy", "Accuracy", True),
    MetricInfo("macro_f1", "Macro-F1", True),
    MetricInfo("nll", "NLL", False),
]
BINARY_COLUMNS = (
    "average_precision",
    "roc_auc",
    "f1",
    "f1_at_0.5",
    "balanced_accuracy",
    "ece",
    "brier",
)
MICRO_COLUMNS = tuple(c + "_micro" for c in BINARY_COLUMNS if c != "brier")
MULTICLASS_COLUMNS = ("accuracy", "macro_f1", "nll", "ece")

METRICS: dict[str, MetricInfo] = {m.name: m for m in _INFO}
for _name in MICRO_COLUMNS:
    _base = METRICS[_name.removesuffix("_micro")]
    METRICS[_name] = MetricInfo(_name, _base.title + " micro", _base.higher_is_better)


def _as_binary(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(
            f"Expected targets and scores of the same size, but got {y.shape} and {s.shape}."
        )
    return y, s


def _binary_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false and true positives at each distinct threshold, highest score first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # The last index of each run of equal scores: tied samples cross the threshold together.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return fps, tps, s[last]


def precision_recall_curve(y, s) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold, from the highest threshold down,
    starting at (recall 0, precision 1)."""
    y, s = _as_binary(y, s)
    fps, tps, _ = _binary_curve(y, s)
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / tps[-1] if tps.size and tps[-1] > 0 else np.zeros_like(tps)
    return np.r_[1.0, precision], np.r_[0.0, recall]


def average_precision(y, s) -> float:
    """Area under the precision-recall step curve; NaN without positives."""
    y, s = _as_binary(y, s)
    if y.sum() == 0:
        return float("nan")
    precision, recall = precision_recall_curve(y, s)
    return float(np.sum(np.diff(recall) * precision[1:]))


def roc_auc(y, s) -> float:
    """Area under the ROC curve (trapezoids between distinct thresholds); NaN with one class."""
    y, s = _as_binary(y, s)
    n_pos = y.sum()
    if n_pos == 0 or n_pos == y.size:
        return float("nan")
    fps, tps, _ = _binary_curve(y, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _confusion(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float, float]:
    pred = s >= threshold
    pos = y > 0.5
    tp = float(np.sum(pred & pos))
    fp = float(np.sum(pred & ~pos))
    fn = float(np.sum(~pred & pos))
    tn = float(np.sum(~pred & ~pos))
    return tp, fp, fn, tn


def _f1(tp: float, fp: float, fn: float) -> float:
    # No positive predicted and none present: 0, scikit-learn's zero_division default.
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _balanced(tp: float, fp: float, fn: float, tn: float) -> float:
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    return (tpr + tnr) / 2.0


def f1_score(y, s, threshold: float = 0.5) -> float:
    """F1 of the prediction ``s >= threshold``."""
    y, s = _as_binary(y, s)
    return _f1(*_confusion(y, s, threshold)[:3])


def balanced_accuracy(y, s, threshold: float = 0.5) -> float:
    """(TPR + TNR) / 2 of the prediction ``s >= threshold``."""
    y, s = _as_binary(y, s)
    return _balanced(*_confusion(y, s, threshold))


def best_f1_threshold(y, s) -> float:
    """The threshold that maximises F1 on ``(y, s)`` (meant for the validation set).

    Of the thresholds with the highest F1 the largest is kept; it is placed halfway between
    the lowest score predicted positive and the next lower score, so that a test score equal to
    neither is not decided by a hair. Without positives: 0.5.
    """
    y, s = _as_binary(y, s)
    if y.sum() == 0:
        return 0.5
    fps, tps, thresholds = _binary_curve(y, s)
    fn = tps[-1] - tps
    f1 = 2 * tps / np.maximum(2 * tps + fps + fn, 1)
    k = int(np.argmax(f1))  # first maximum = highest threshold
    if k + 1 < thresholds.size:
        return float((thresholds[k] + thresholds[k + 1]) / 2.0)
    return float(thresholds[k])


def _bin_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], p)  # bins (lo, hi], the first one [0, hi]


def reliability_bins(y, p, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: number of samples, mean predicted probability, observed frequency (NaN if empty)."""
    y, p = _as_binary(y, p)
    ids = _bin_ids(p, n_bins)
    counts = np.bincount(ids, minlength=n_bins).astype(np.float64)
    sums = np.bincount(ids, weights=p, minlength=n_bins)
    hits = np.bincount(ids, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, sums / counts, hits / counts


def expected_calibration_error(y, p, n_bins: int = N_BINS) -> float:
    """``sum_b n_b / N |freq_b - conf_b|`` over equal-width bins of ``p``."""
    counts, conf, freq = reliability_bins(y, p, n_bins)
    nonempty = counts > 0
    return float(np.sum(counts[nonempty] * np.abs(freq[nonempty] - conf[nonempty])) / counts.sum())


def brier_score(y, p) -> float:
    y, p = _as_binary(y, p)
    return float(np.mean((p - y) ** 2))


def binary_metrics(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, *, label_names: list[str] | None = None
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """All binary / multi-label metrics of test targets ``y`` and probabilities ``p`` (N, L).

    ``thresholds`` holds one decision threshold per label (chosen on validation). Returns the
    summary (macro columns, plus micro columns when there are several labels) and the
    per-label values.
    """
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    p = np.asarray(p, dtype=np.float64).reshape(len(p), -1)
    n_labels = y.shape[1]
    names = label_names or [str(j) for j in range(n_labels)]
    per_label: dict[str, dict[str, float]] = {}
    pooled = np.zeros(4)  # tp, fp, fn, tn at the chosen thresholds
    pooled_half = np.zeros(3)
    for j in range(n_labels):
        yj, pj = y[:, j], p[:, j]
        counts = np.array(_confusion(yj, pj, float(thresholds[j])))
        half = np.array(_confusion(yj, pj, 0.5)[:3])
        pooled += counts
        pooled_half += half
        per_label[names[j]] = {
            "average_precision": average_precision(yj, pj),
            "roc_auc": roc_auc(yj, pj),
            "f1": _f1(*counts[:3]),
            "f1_at_0.5": _f1(*half),
            "balanced_accuracy": _balanced(*counts),
            "ece": expected_calibration_error(yj, pj),
            "brier": brier_score(yj, pj),
        }
    summary = {c: float(np.mean([per_label[n][c] for n in names])) for c in BINARY_COLUMNS}
    if n_labels > 1:
        summary.update(
            {
                "average_precision_micro": average_precision(y, p),
                "roc_auc_micro": roc_auc(y, p),
                "f1_micro": _f1(*pooled[:3]),
                "f1_at_0.5_micro": _f1(*pooled_half),
                "balanced_accuracy_micro": _balanced(*pooled),
                "ece_micro": expected_calibration_error(y, p),
            }
        )
    return summary, per_label


def multiclass_metrics(y, probs, *, log_probs=None) -> dict[str, float]:
    """Accuracy, macro-F1, NLL and top-label ECE of class indices ``y`` (N,) and
    probabilities ``probs`` (N, K). Pass ``log_probs`` (log-softmax of the logits) for an exact
    NLL when probabilities underflow."""
    y = np.asarray(y, dtype=np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    pred = probs.argmax(axis=1)
    f1s = []
    for c in range(k):
        tp = float(np.sum((pred == c) & (y == c)))
        fp = float(np.sum((pred == c) & (y != c)))
        fn = float(np.sum((pred != c) & (y == c)))
        f1s.append(_f1(tp, fp, fn))
    if log_probs is None:
        with np.errstate(divide="ignore"):
            log_probs = np.log(probs)
    log_probs = np.asarray(log_probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (pred == y).astype(np.float64)
    return {
        "accuracy": float(np.mean(correct)),
        "macro_f1": float(np.mean(f1s)),
        "nll": float(-np.mean(log_probs[np.arange(n), y])),
        "ece": expected_calibration_error(correct, confidence),
    }
