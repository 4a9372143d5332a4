"""Mean and spread over seeds, and which differences between losses exceed the seed noise.

Within a seed every loss sees the same split, initial weights and batches, so the results of
two losses are *paired* by seed. The difference ``d_s = m_A(s) - m_B(s)`` removes what the
seed does to both (a hard test split lowers every loss); what is left varies only with how
the two losses respond to the seed. A difference counts as larger than the seed noise when a
paired t-test over the seeds rejects "no difference" at the 5 % level (two-sided):
``|mean(d)| / (sd(d) / sqrt(n)) > t_{0.975, n-1}`` -- 12.71 for 2 seeds, 4.30 for 3, 2.78 for
5, 2.26 for 10. With one seed nothing can be said, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from crossent.compare.metrics import METRICS

__all__ = ["Comparison", "Summary", "compare_to_best", "paired_test", "summarize", "t_critical"]

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """Loss ``loss`` against ``reference`` on ``metric``: paired over ``n`` seeds."""

    metric: str
    loss: str
    reference: str
    mean_difference: float
    std_difference: float
    n: int
    t: float
    p_value: float
    significant: bool

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(values) -> Summary:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return Summary(float(v.mean()), std, int(v.size))


def t_critical(df: int) -> float:
    """Two-sided 5 % critical value of Student's t with ``df`` degrees of freedom.

    >>> round(t_critical(2), 2)
    4.3
    """
    from scipy import stats

    return float(stats.t.ppf(1 - ALPHA / 2, df))


def paired_test(a, b) -> tuple[float, float, float, float]:
    """Mean and sd of the paired differences ``a - b``, the t statistic and two-sided p-value.

    >>> mean, sd, t, p = paired_test([0.80, 0.82, 0.79], [0.70, 0.73, 0.70])
    >>> round(mean, 3), p < 0.05
    (0.093, True)
    """
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = d.size
    if n < 2:
        return (float(d.mean()) if n else float("nan")), float("nan"), float("nan"), float("nan")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        # Every seed moved by exactly the same amount: no noise at all.
        return mean, 0.0, (math.copysign(math.inf, mean) if mean else 0.0), (0.0 if mean else 1.0)
    t = mean / (sd / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(t), n - 1))
    return mean, sd, t, p


def best_loss(means: dict[str, float], metric: str) -> str:
    """The loss with the best mean on ``metric`` (NaN never wins; ties go to the first)."""
    higher = METRICS[metric].higher_is_better
    finite = {k: v for k, v in means.items() if math.isfinite(v)}
    if not finite:
        return next(iter(means))
    return max(finite, key=lambda k: finite[k] if higher else -finite[k])


def compare_to_best(per_seed: dict[str, list[float]], metric: str) -> list[Comparison]:
    """Each loss against the best one on ``metric``; ``per_seed[loss]`` is ordered by seed."""
    means = {k: summarize(v).mean for k, v in per_seed.items()}
    best = best_loss(means, metric)
    out = []
    for loss, values in per_seed.items():
        if loss == best:
            continue
        mean, sd, t, p = paired_test(values, per_seed[best])
        n = int(np.sum(np.isfinite(np.asarray(values) - np.asarray(per_seed[best]))))
        out.append(Comparison(metric, loss, best, mean, sd, n, t, p, bool(p < ALPHA)))
    return out
