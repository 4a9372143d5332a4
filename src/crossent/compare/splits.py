"""Stratified train / validation / test splits, fixed by the seed, and feature standardisation.

* One label (binary, multi-class): each class is shuffled and cut in the requested fractions
  (at least one sample of every class in each part), so every part has the class proportions
  of the whole data set up to rounding.
* Several labels (multi-label): iterative stratification (Sechidis, Tsoumakas, Vlahavas,
  "On the Stratification of Multi-Label Data", ECML PKDD 2011), which keeps each label's
  positives in proportion in every part -- shuffling by label combination cannot, because most
  combinations are rare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossent.compare.data import CompareError

__all__ = ["PARTS", "Split", "iterative_stratification", "standardize", "stratified_split"]

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Sorted row indices of each part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {p: len(getattr(self, p)) for p in PARTS}


def check_fractions(fractions) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise CompareError(
            f"Expected `--split` to be three fractions > 0 (train, validation, test), but got "
            f"{list(fractions)}."
        )
    if abs(f.sum() - 1.0) > 1e-6:
        raise CompareError(
            f"Expected the `--split` fractions to sum to 1, but got {list(fractions)} "
            f"(sum {f.sum():g})."
        )
    return f


def _split_single(classes: np.ndarray, fractions: np.ndarray, rng: np.random.Generator):
    """Cut each class's shuffled rows in ``fractions`` (two or three parts; every part but the
    first gets at least one row of each class, the first the rest)."""
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(classes):
        idx = rng.permutation(np.flatnonzero(classes == c))
        n = len(idx)
        # Validation and test get at least one sample of each class, training the rest (>= 1).
        held = [max(1, round(f * n)) for f in fractions[1:]]
        while n - sum(held) < 1:
            held[int(np.argmax(held))] -= 1  # the larger part gives one up (validation on ties)
        bounds = np.cumsum([n - sum(held), *held])
        for part, piece in zip(parts, np.split(idx, bounds[:-1]), strict=True):
            part.append(piece)
    return [np.sort(np.concatenate(p)) for p in parts]


def iterative_stratification(
    Y: np.ndarray, fractions, rng: np.random.Generator
) -> list[np.ndarray]:
    """Assign each row of the 0/1 matrix ``Y`` (N, L) to one of ``len(fractions)`` parts.

    Sechidis et al. 2011, Algorithm 1: repeatedly take the label with the fewest remaining
    positives and deal its samples out, each to the part that still wants most of that label
    (ties: the part that wants most samples overall, then at random). Samples without any
    positive label go last, to the parts that want most samples.

    >>> rng = np.random.default_rng(0)
    >>> Y = np.array([[1, 0]] * 10 + [[0, 1]] * 10 + [[1, 1]] * 10)
    >>> parts = iterative_stratification(Y, [0.6, 0.2, 0.2], rng)
    >>> [len(p) for p in parts], [Y[p].sum(axis=0).tolist() for p in parts]
    ([17, 7, 6], [[12, 12], [4, 4], [4, 4]])
    """
    Y = np.asarray(Y) > 0
    fractions = np.asarray(fractions, dtype=np.float64)
    n = Y.shape[0]
    wanted = fractions * n  # samples each part still wants
    wanted_label = np.outer(fractions, Y.sum(axis=0)).astype(np.float64)  # (parts, labels)
    assignment = np.full(n, -1, dtype=np.int64)
    remaining = np.ones(n, dtype=bool)

    def pick(candidates: np.ndarray) -> int:
        return (
            int(candidates[rng.integers(len(candidates))])
            if len(candidates) > 1
            else int(candidates[0])
        )

    while remaining.any():
        counts = Y[remaining].sum(axis=0)
        if counts.max() == 0:
            for i in rng.permutation(np.flatnonzero(remaining)):
                best = np.flatnonzero(wanted == wanted.max())
                part = pick(best)
                assignment[i] = part
                wanted[part] -= 1
            break
        counts = np.where(counts > 0, counts, np.iinfo(np.int64).max)
        label = pick(np.flatnonzero(counts == counts.min()))
        for i in rng.permutation(np.flatnonzero(remaining & Y[:, label])):
            want = wanted_label[:, label]
            best = np.flatnonzero(want == want.max())
            if len(best) > 1:
                overall = wanted[best]
                best = best[overall == overall.max()]
            part = pick(best)
            assignment[i] = part
            remaining[i] = False
            wanted_label[part] -= Y[i]
            wanted[part] -= 1
        remaining[assignment >= 0] = False
    return [np.flatnonzero(assignment == k) for k in range(len(fractions))]


def stratified_split(
    task: str, y: np.ndarray, fractions, seed: int, *, train_rows: np.ndarray | None = None
) -> Split:
    """Split the rows of targets ``y`` into train / validation / test, fixed by ``seed``.

    ``y`` is (N, L) 0/1 for binary and multi-label tasks, (N,) class indices for multi-class.
    Every part receives positives and negatives of every label (or samples of every class);
    where stratification cannot achieve that, a :class:`CompareError` says which label.

    ``train_rows`` fixes the training set (the same under every seed, e.g. a long-tailed one);
    the other rows are split into validation and test in the ratio of the last two
    fractions, and the first fraction is not used.
    """
    f = check_fractions(fractions)
    rng = np.random.default_rng([seed, 0])
    rows = np.arange(len(y))
    if train_rows is not None:
        rows = np.setdiff1d(rows, train_rows)
        f = f[1:] / f[1:].sum()
    y = np.asarray(y)[rows]
    if task == "multiclass":
        parts = _split_single(y, f, rng)
    elif task == "binary":
        parts = _split_single(y[:, 0].astype(np.int64), f, rng)
    else:
        parts = iterative_stratification(y, f, rng)
        Y = y > 0
        for part, name in zip(parts, PARTS, strict=False):
            positives = Y[part].sum(axis=0)
            for j in np.flatnonzero((positives == 0) | (positives == len(part))):
                raise CompareError(
                    f"Label {j} has too few positives or negatives ({int(Y[:, j].sum())} positives "
                    f"of {len(Y)}) for every part of the split to hold both; the {name} part "
                    f"gets none. Use more data or larger `--split` fractions for validation "
                    f"and test."
                )
    parts = [rows[part] for part in parts]
    if train_rows is not None:
        parts.insert(0, np.sort(np.asarray(train_rows)))
    return Split(*parts)


def standardize(X: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise every column with the mean and standard deviation of the training rows.

    Columns constant on the training rows (blank pixels) are centred and left unscaled.
    Missing values (NaN, from ``crossent compare --missing mean``) are filled with the mean of
    the training rows' values, so they become 0; the test rows tell nothing about the fill.
    Returns the standardised copy, the means and the scales.
    """
    nan = np.isnan(X)
    if nan.any():
        present = ~nan[train]
        count = present.sum(axis=0)
        total = np.where(present, X[train], 0.0).sum(axis=0)
        fill = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        X = np.where(nan, fill, X)
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)
    return (X - mean) / scale, mean, scale
