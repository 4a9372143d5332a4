"""compare's metrics against scikit-learn, and the paired seed-noise statistics against scipy."""

from __future__ import annotations

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")
from sklearn.calibration import calibration_curve  # noqa: E402

from crossent.compare import metrics as M  # noqa: E402
from crossent.compare import stats as S  # noqa: E402


def _binary_case(seed, n=300, prevalence=0.1, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    y[:2] = [0.0, 1.0]  # both classes present
    s = 1 / (1 + np.exp(-(rng.normal(size=n) + 2.0 * y - 1.5)))
    if ties:
        s = np.round(s, 1)  # many tied scores, across classes
    return y, s


CASES = [
    pytest.param(dict(seed=0), id="random"),
    pytest.param(dict(seed=1, prevalence=0.02, n=500), id="rare-positives"),
    pytest.param(dict(seed=2, ties=True), id="tied-scores"),
    pytest.param(dict(seed=3, prevalence=0.6, n=40), id="small-majority-positive"),
]


@pytest.mark.parametrize("case", CASES)
def test_average_precision_matches_sklearn(case):
    y, s = _binary_case(**case)
    assert M.average_precision(y, s) == pytest.approx(
        sklearn_metrics.average_precision_score(y, s), rel=1e-12
    )


@pytest.mark.parametrize("case", CASES)
def test_roc_auc_matches_sklearn(case):
    y, s = _binary_case(**case)
    assert M.roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), rel=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_precision_recall_curve_matches_sklearn(case):
    y, s = _binary_case(**case)
    precision, recall = M.precision_recall_curve(y, s)
    ref_p, ref_r, _ = sklearn_metrics.precision_recall_curve(y, s)
    # scikit-learn lists the curve from the lowest threshold up and ends at (recall 0, precision 1);
    # ours starts there and goes down in threshold. It also drops points after full recall.
    ours = list(zip(recall, precision))[::-1]
    theirs = list(zip(ref_r, ref_p))
    k = len(theirs)
    np.testing.assert_allclose(np.array(ours[-k:]), np.array(theirs), rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("threshold", [0.5, 0.2, 0.73])
def test_f1_and_balanced_accuracy_match_sklearn(case, threshold):
    y, s = _binary_case(**case)
    pred = (s >= threshold).astype(float)
    assert M.f1_score(y, s, threshold) == pytest.approx(
        sklearn_metrics.f1_score(y, pred, zero_division=0.0), rel=1e-12
    )
    assert M.balanced_accuracy(y, s, threshold) == pytest.approx(
        sklearn_metrics.balanced_accuracy_score(y, pred), rel=1e-12
    )


def test_f1_without_predicted_or_true_positives_is_zero():
    y = np.zeros(5)
    assert (
        M.f1_score(y, np.full(5, 0.1))
        == 0.0
        == sklearn_metrics.f1_score(y, np.zeros(5), zero_division=0.0)
    )


@pytest.mark.parametrize("case", CASES)
def test_best_f1_threshold_reaches_the_best_f1(case):
    y, s = _binary_case(**case)
    t = M.best_f1_threshold(y, s)
    precision, recall, _ = sklearn_metrics.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        best = np.nanmax(2 * precision * recall / (precision + recall))
    assert M.f1_score(y, s, t) == pytest.approx(best, rel=1e-12)
    # Halfway between scores: no observed score sits on the threshold.
    assert not np.any(s == t) or t == s.min()


@pytest.mark.parametrize("case", CASES)
def test_brier_matches_sklearn(case):
    y, p = _binary_case(**case)
    assert M.brier_score(y, p) == pytest.approx(sklearn_metrics.brier_score_loss(y, p), rel=1e-12)


def _ece_reference(y, p, n_bins=15):
    """ECE from scikit-learn's calibration_curve (uniform bins) and the bins' counts."""
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / len(p))


@pytest.mark.parametrize("case", CASES)
def test_ece_matches_sklearn_calibration_curve(case):
    y, p = _binary_case(**case)
    assert M.expected_calibration_error(y, p) == pytest.approx(_ece_reference(y, p), rel=1e-12)


def test_reliability_bins_match_calibration_curve_and_edges_go_down():
    y, p = _binary_case(seed=5)
    p[:3] = [0.0, 1 / 15, 1.0]  # exactly on bin edges: (lo, hi], the first bin closed
    counts, conf, freq = M.reliability_bins(y, p)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15)
    np.testing.assert_allclose(freq[counts > 0], prob_true, rtol=1e-12)
    np.testing.assert_allclose(conf[counts > 0], prob_pred, rtol=1e-12)
    assert counts.sum() == len(p)


def test_perfect_and_constant_scores():
    y = np.array([0, 0, 1, 1, 0, 1], dtype=float)
    assert M.average_precision(y, y) == 1.0
    assert M.roc_auc(y, y) == 1.0
    assert M.roc_auc(y, np.full(6, 0.3)) == 0.5 == sklearn_metrics.roc_auc_score(y, np.full(6, 0.3))
    assert M.expected_calibration_error(y, y) == 0.0
    assert np.isnan(M.average_precision(np.zeros(4), np.arange(4.0)))
    assert np.isnan(M.roc_auc(np.ones(4), np.arange(4.0)))


def _multilabel_case(seed=0, n=200, labels=4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < np.linspace(0.05, 0.5, labels)).astype(float)
    y[:2] = [[0.0] * labels, [1.0] * labels]
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, labels)) + 2 * y - 1)))
    return y, p


def test_multilabel_macro_and_micro_match_sklearn():
    y, p = _multilabel_case()
    thresholds = np.array([0.3, 0.5, 0.45, 0.6])
    summary, per_label = M.binary_metrics(y, p, thresholds, label_names=list("abcd"))
    pred = (p >= thresholds).astype(float)
    half = (p >= 0.5).astype(float)
    sk = sklearn_metrics
    expected = {
        "average_precision": sk.average_precision_score(y, p, average="macro"),
        "average_precision_micro": sk.average_precision_score(y, p, average="micro"),
        "roc_auc": sk.roc_auc_score(y, p, average="macro"),
        "roc_auc_micro": sk.roc_auc_score(y, p, average="micro"),
        "f1": sk.f1_score(y, pred, average="macro", zero_division=0.0),
        "f1_micro": sk.f1_score(y, pred, average="micro", zero_division=0.0),
        "f1_at_0.5": sk.f1_score(y, half, average="macro", zero_division=0.0),
        "f1_at_0.5_micro": sk.f1_score(y, half, average="micro", zero_division=0.0),
        "balanced_accuracy": np.mean(
            [sk.balanced_accuracy_score(y[:, j], pred[:, j]) for j in range(4)]
        ),
        "balanced_accuracy_micro": sk.balanced_accuracy_score(y.ravel(), pred.ravel()),
        "ece": np.mean([_ece_reference(y[:, j], p[:, j]) for j in range(4)]),
        "ece_micro": _ece_reference(y.ravel(), p.ravel()),
        "brier": np.mean([sk.brier_score_loss(y[:, j], p[:, j]) for j in range(4)]),
    }
    assert set(summary) == set(expected)
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value, rel=1e-12), name
    assert per_label["c"]["average_precision"] == pytest.approx(
        sk.average_precision_score(y[:, 2], p[:, 2]), rel=1e-12
    )


def test_single_label_has_no_micro_columns():
    y, p = _binary_case(seed=0)
    summary, per_label = M.binary_metrics(y[:, None], p[:, None], np.array([0.5]))
    assert tuple(summary) == M.BINARY_COLUMNS
    assert list(per_label) == ["0"]


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    n, k = 300, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    logits[:, 4] -= 3.0  # a class that is rarely predicted
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    got = M.multiclass_metrics(y, probs, log_probs=log_probs)
    pred = probs.argmax(axis=1)
    sk = sklearn_metrics
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), rel=1e-12)
    assert got["macro_f1"] == pytest.approx(
        sk.f1_score(y, pred, average="macro", labels=range(k), zero_division=0.0), rel=1e-12
    )
    assert got["nll"] == pytest.approx(sk.log_loss(y, probs, labels=range(k)), rel=1e-9)
    confidence = probs.max(axis=1)
    correct = (pred == y).astype(float)
    assert got["ece"] == pytest.approx(_ece_reference(correct, confidence), rel=1e-12)
    # Without log_probs the NLL comes from the probabilities.
    assert M.multiclass_metrics(y, probs)["nll"] == pytest.approx(got["nll"], rel=1e-9)


def test_paired_test_matches_scipy():
    from scipy import stats

    a = [0.81, 0.84, 0.80, 0.86]
    b = [0.78, 0.80, 0.79, 0.81]
    mean, _, t, p = S.paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert t == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)


def test_compare_to_best_flags_only_consistent_gaps():
    per_seed = {
        "a": [0.90, 0.92, 0.91],
        "b": [0.80, 0.83, 0.81],  # ~0.10 below a on every seed: beyond noise
        "c": [0.95, 0.85, 0.90],  # about as good as a, but noisy
    }
    comps = {c.loss: c for c in S.compare_to_best(per_seed, "average_precision")}
    assert set(comps) == {"b", "c"} and comps["b"].reference == "a"
    assert comps["b"].significant and not comps["c"].significant
    # Lower-is-better metrics pick the smallest mean.
    assert S.compare_to_best({"x": [0.1, 0.2], "y": [0.3, 0.4]}, "ece")[0].loss == "y"


def test_summarize_ignores_nan_and_uses_sample_std():
    s = S.summarize([1.0, float("nan"), 3.0])
    assert (s.mean, s.n) == (2.0, 2)
    assert s.std == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert S.summarize([0.5]).std == 0.0
