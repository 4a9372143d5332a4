"""Data sets for ``crossent compare``: real ones that ship with crossent or scikit-learn (nothing
is downloaded), and CSV files.

A :class:`Dataset` holds float64 features ``X`` (N, D) and targets in one of two layouts:

* ``binary`` / ``multilabel``: ``y`` of shape (N, L) with 0/1 entries (L = 1 for binary);
* ``multiclass``: ``y`` of shape (N,) with class indices 0 .. K-1.

Every problem is checked here, once, with an error that names the column, the value and the fix
(:class:`CompareError`, a ValueError the command line prints without a traceback).
"""

from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BUILTIN_DATASETS",
    "DEFAULT_DATA",
    "CompareError",
    "Dataset",
    "check_min_counts",
    "load_builtin",
    "load_csv",
    "load_dataset",
]

TASKS = ("binary", "multilabel", "multiclass")
MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}
MAX_CLASSES = 100


class CompareError(ValueError):
    """A problem with the user's data or options, worded for the person running the command."""


@dataclass
class Dataset:
    """Features, targets and what they mean.

    Attributes:
        name: short name (``"digits-imbalanced"`` or the CSV file name).
        description: one or two sentences for the report.
        task: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        X: features, float64 (N, D).
        y: targets, float64 (N, L) of 0/1, or int64 (N,) of class indices.
        label_names: the positive class of each label (binary / multi-label), or the class
            names (multi-class).
        feature_names: one per column of ``X``.
        train_rows: rows that form the training set under every seed (``None``: each seed
            draws a stratified one); the other rows are split into validation and test.
            ``digits-lt`` fixes its long-tailed training set this way.
        inputs: what one sample is, for reports (default: ``"<D> features"``).
    """

    name: str
    description: str
    task: str
    X: np.ndarray
    y: np.ndarray
    label_names: list[str]
    feature_names: list[str] = field(default_factory=list)
    train_rows: np.ndarray | None = None
    inputs: str = ""

    @property
    def n_outputs(self) -> int:
        """Logits the model needs: L labels, or K classes."""
        return len(self.label_names)

    @property
    def n_samples(self) -> int:
        return int(self.y.shape[0])

    def inputs_text(self) -> str:
        """``"85 features"``, or what :attr:`inputs` says."""
        return self.inputs or f"{self.X.shape[1]} features"

    def class_counts(self) -> np.ndarray:
        """Positives per label (binary / multi-label) or samples per class (multi-class)."""
        if self.task == "multiclass":
            return np.bincount(self.y, minlength=self.n_outputs)
        return self.y.sum(axis=0).astype(np.int64)

    def prevalence_text(self) -> str:
        counts = self.class_counts()
        n = self.n_samples
        if self.task == "multiclass" and self.train_rows is not None:
            counts = np.bincount(self.y[self.train_rows], minlength=self.n_outputs)
            rest = np.bincount(np.delete(self.y, self.train_rows), minlength=self.n_outputs)
            small, large = int(np.argmin(counts)), int(np.argmax(counts))
            held = (
                f"{rest[0]} per class"
                if np.all(rest == rest[0])
                else f"{int(rest.sum())} samples, {rest.min()} to {rest.max()} per class"
            )
            return (
                f"training set of {len(counts)} classes from {counts[large]} (class "
                f"{self.label_names[large]!r}) to {counts[small]} (class "
                f"{self.label_names[small]!r}) samples, {counts[large] / counts[small]:.1f}:1; "
                f"validation and test from {held}"
            )
        if self.task == "multiclass" and len(counts) > 4:
            small, large = int(np.argmin(counts)), int(np.argmax(counts))
            return (
                f"{len(counts)} classes of {counts[small]} (class {self.label_names[small]!r}) "
                f"to {counts[large]} (class {self.label_names[large]!r}) samples"
            )
        parts = [
            f"{name} {c} ({c / n:.1%})" for name, c in zip(self.label_names, counts, strict=True)
        ]
        if self.task == "binary":
            c = int(counts[0])
            return (
                f"{c} positives ({self.label_names[0]}) of {n}, {c / n:.1%}, "
                f"1:{(n - c) / max(c, 1):.1f}"
            )
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Built-in data sets
# --------------------------------------------------------------------------------------------

DIGIT_ATTRIBUTES = {
    "even": (0, 2, 4, 6, 8),
    "prime": (2, 3, 5, 7),
    ">=5": (5, 6, 7, 8, 9),
    # Handwritten 4s in this data set are mostly open at the top, so 4 has no closed loop.
    "closed_loop": (0, 6, 8, 9),
}

BUILTIN_DATASETS = {
    "caravan": "who buys caravan insurance: 5822 customers, 85 features, 6% positive (binary)",
    "digits-lt": "the ten digits, long-tailed training set, balanced test set (multi-class)",
    "digits-imbalanced": "digit 0 against the other nine, zeros subsampled (binary, imbalanced)",
    "digits-multilabel": "attributes of each digit: even, prime, >=5, closed loop (multi-label)",
    "digits": "the ten digits (multi-class)",
    "breast-cancer": "Wisconsin diagnostic breast cancer, malignant vs benign (binary)",
}
# What `crossent compare` runs without `--data`: the binary default, or the multi-class one when
# every `--loss` is a softmax loss.
DEFAULT_DATA = {"binary": "caravan", "multiclass": "digits-lt"}
# `--imbalance` of the data sets that take one, when not given.
DEFAULT_IMBALANCE = {"digits-imbalanced": 50.0, "digits-lt": 10.0}

CARAVAN_SOURCE = (
    "The Insurance Company Benchmark (COIL 2000), UCI Machine Learning Repository, "
    "https://doi.org/10.24432/C5630S, CC BY 4.0 (P. van der Putten and M. van Someren (eds), "
    "CoIL Challenge 2000: The Insurance Company Case, 2000); shipped with crossent: the "
    "challenge's training file, as the ISLP package distributes it"
)
# digits-lt holds out this many images of each digit for its balanced validation and test sets
# (the scarcest digit has 174 images).
DIGITS_LT_HELD_OUT = 80


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CompareError(
            "The built-in data sets need scikit-learn: pip install 'crossent[compare]'."
        ) from exc
    return datasets


def _check_imbalance(imbalance: float, *, at_least: float | None = None) -> None:
    """``imbalance`` is a finite number > 0, or >= ``at_least``."""
    number = isinstance(imbalance, (int, float)) and not isinstance(imbalance, bool)
    if not (number and math.isfinite(imbalance)) or (
        imbalance < at_least if at_least is not None else imbalance <= 0
    ):
        bound = f">= {at_least:g}" if at_least is not None else "> 0"
        raise CompareError(f"Expected `--imbalance` to be a number {bound}, but got {imbalance!r}.")


def _digits_long_tailed(
    X: np.ndarray,
    digit: np.ndarray,
    features: list[str],
    source: str,
    imbalance: float,
    data_seed: int,
) -> Dataset:
    """digits-lt: a long-tailed training set built as long-tailed CIFAR-10 is (Cui et al. 2019),
    with balanced validation and test sets.

    First :data:`DIGITS_LT_HELD_OUT` images of each digit are held out (each seed splits them
    into validation and test, so both stay balanced); of the remaining images digit ``c``
    keeps ``int(n_max * IF ** (-c / 9))`` for training, where ``n_max`` is the number left of
    the scarcest digit and ``IF`` the imbalance factor. The training set is the same under
    every seed.
    """
    _check_imbalance(imbalance, at_least=1.0)
    classes = 10
    rng = np.random.default_rng([data_seed, 1])
    shuffled = [rng.permutation(np.flatnonzero(digit == c)) for c in range(classes)]
    held_out = np.concatenate([rows[:DIGITS_LT_HELD_OUT] for rows in shuffled])
    pools = [rows[DIGITS_LT_HELD_OUT:] for rows in shuffled]
    n_max = min(len(rows) for rows in pools)
    largest = n_max  # the rarest digit keeps at least one training image
    if imbalance > largest:
        raise CompareError(
            f"Expected `--imbalance` to be at most {largest:g} for digits-lt ({n_max} training "
            f"images of the most frequent digit, and at least 1 of the rarest), but got "
            f"{imbalance!r}."
        )
    counts = [int(n_max * imbalance ** (-c / (classes - 1))) for c in range(classes)]
    kept = np.concatenate([rows[:n] for rows, n in zip(pools, counts, strict=True)])
    index = np.sort(np.r_[kept, held_out])
    profile = ", ".join(map(str, counts))
    return Dataset(
        name="digits-lt",
        description=(
            f"{source}, long-tailed as long-tailed CIFAR-10 is built (Cui et al., Class-Balanced "
            f"Loss Based on Effective Number of Samples, CVPR 2019): digit c keeps "
            f"int({n_max} x {imbalance:g}^(-c/9)) training images, imbalance factor "
            f"{imbalance:g}: {profile} images of the digits 0 to 9 (subsampling seed "
            f"{data_seed}), the same under every seed. {DIGITS_LT_HELD_OUT} other images of "
            f"each digit are held out and split by each seed into balanced validation and test "
            f"sets, so the test metrics weigh every digit equally."
        ),
        task="multiclass",
        X=X[index],
        y=digit[index],
        label_names=[str(d) for d in range(classes)],
        feature_names=features,
        train_rows=np.searchsorted(index, np.sort(kept)),
    )


def load_caravan() -> Dataset:
    """The Insurance Company Benchmark (COIL 2000): which customers bought caravan insurance.

    5822 customers of a Dutch insurer, 85 numeric features (43 socio-demographic ones derived
    from the postcode, 42 on the other insurance products owned), 348 buyers (6.0%). Shipped
    with crossent as a gzip-compressed CSV (``crossent/compare/datasets/caravan.csv.gz``) and
    read exactly as ``--csv Caravan.csv --target Purchase --positive Yes`` reads the file, so
    both commands give the same numbers. Source and license: :data:`CARAVAN_SOURCE`.
    """
    from importlib.resources import as_file, files

    with as_file(files("crossent.compare") / "datasets" / "caravan.csv.gz") as path:
        dataset = load_csv(path, ["Purchase"], positive="Yes")
    dataset.name = "caravan"
    dataset.description = (
        f"{CARAVAN_SOURCE}. {dataset.n_samples} customers of an insurer, "
        f"{dataset.X.shape[1]} numeric features (socio-demographic ones derived from the "
        f"postcode, and the other insurance products owned); positive = bought a caravan "
        f"insurance policy (Purchase = Yes)."
    )
    return dataset


def load_builtin(name: str, *, imbalance: float | None = None, data_seed: int = 0) -> Dataset:
    """One of :data:`BUILTIN_DATASETS`.

    Args:
        name: the data set's name.
        imbalance: ``digits-imbalanced``: negatives per positive after subsampling the
            positives (default 50, which keeps 32 of the 178 zeros against 1619 other digits;
            a value at or below the natural ratio, 9.1, keeps every positive).
            ``digits-lt``: the imbalance factor, largest class / smallest class of the training
            rows (default 10). Other data sets take none.
        data_seed: which images the subsampling keeps. The data set is the same for every
            training seed; seeds vary the splits, initialisation and batches.
    """
    if name not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_DATASETS)
        raise CompareError(f"Expected `--data` to be one of {known}, but got {name!r}.")
    if imbalance is not None and name not in DEFAULT_IMBALANCE:
        raise CompareError(
            f"`--imbalance` applies to {' and '.join(DEFAULT_IMBALANCE)}, but the data is {name}."
        )
    if imbalance is None:
        imbalance = DEFAULT_IMBALANCE.get(name, 0.0)
    if name == "caravan":
        return load_caravan()
    datasets = _sklearn_datasets()
    if name == "breast-cancer":
        bunch = datasets.load_breast_cancer()
        # scikit-learn codes malignant as 0; the condition of interest is the positive class.
        y = (bunch.target == 0).astype(np.float64)[:, None]
        return Dataset(
            name=name,
            description=(
                "Wisconsin diagnostic breast cancer (scikit-learn): 569 tumours, 30 features of "
                "cell nuclei; positive = malignant."
            ),
            task="binary",
            X=bunch.data.astype(np.float64),
            y=y,
            label_names=["malignant"],
            feature_names=list(bunch.feature_names),
        )
    bunch = datasets.load_digits()
    X = bunch.data.astype(np.float64)
    digit = bunch.target.astype(np.int64)
    features = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]
    source = "scikit-learn's handwritten digits (8x8 images, 64 pixel features)"
    if name == "digits":
        return Dataset(
            name=name,
            description=f"{source}: {len(digit)} images of the ten digits.",
            task="multiclass",
            X=X,
            y=digit,
            label_names=[str(d) for d in range(10)],
            feature_names=features,
        )
    if name == "digits-lt":
        return _digits_long_tailed(X, digit, features, source, imbalance, data_seed)
    if name == "digits-multilabel":
        y = np.stack(
            [np.isin(digit, members) for members in DIGIT_ATTRIBUTES.values()], axis=1
        ).astype(np.float64)
        rules = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in DIGIT_ATTRIBUTES.items())
        return Dataset(
            name=name,
            description=(
                f"{source}: {len(digit)} images, four attributes of each image's digit as "
                f"labels ({rules})."
            ),
            task="multilabel",
            X=X,
            y=y,
            label_names=list(DIGIT_ATTRIBUTES),
            feature_names=features,
        )
    # digits-imbalanced
    _check_imbalance(imbalance)
    positives = np.flatnonzero(digit == 0)
    negatives = np.flatnonzero(digit != 0)
    n_keep = min(len(positives), max(3, round(len(negatives) / imbalance)))
    rng = np.random.default_rng(data_seed)
    kept = np.sort(rng.choice(positives, size=n_keep, replace=False))
    index = np.sort(np.r_[kept, negatives])
    y = (digit[index] == 0).astype(np.float64)[:, None]
    return Dataset(
        name=name,
        description=(
            f"{source}: digit 0 (positive) against the other nine; {n_keep} of the "
            f"{len(positives)} zeros kept (subsampling seed {data_seed}) against "
            f"{len(negatives)} other digits, 1:{len(negatives) / n_keep:.1f}."
        ),
        task="binary",
        X=X[index],
        y=y,
        label_names=["digit 0"],
        feature_names=features,
    )


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def _is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING


def _to_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number


def _binary_positive(values: list[str], column: str, positive: str | None, counts: dict) -> str:
    """Which of two values is the positive class."""
    if positive is not None:
        if positive not in values:
            raise CompareError(
                f"Expected `--positive` to be a value of column {column!r} "
                f"({', '.join(map(repr, values))}), but got {positive!r}."
            )
        return positive
    low = {v.strip().lower(): v for v in values}
    for yes, no in (("1", "0"), ("1", "-1"), ("1.0", "0.0"), ("true", "false"), ("yes", "no")):
        if set(low) == {yes, no}:
            return low[yes]
    # Otherwise the minority class: the rare event is what such a comparison is about.
    return min(values, key=lambda v: (counts[v], v))


def load_csv(
    path: str | Path,
    targets: list[str],
    *,
    drop: list[str] | tuple[str, ...] = (),
    positive: str | None = None,
) -> Dataset:
    """Read a CSV file with a header row: every column not in ``targets`` or ``drop`` is a
    numeric feature.

    One target column with two values is a binary task (the positive class is 1 / true / yes,
    or else the rarer value; ``positive`` overrides), with more values a multi-class task.
    Several target columns make a multi-label task; each must hold 0/1 (or true/false).
    """
    path = Path(path)
    if not targets:
        raise CompareError("Expected at least one `--target COLUMN` with `--csv`, but got none.")
    if not path.is_file():
        raise CompareError(
            f"Expected `--csv` to be a readable file, but {str(path)!r} does not exist."
        )
    opener = gzip.open if path.suffix == ".gz" else open  # data.csv.gz is read as it is
    with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise CompareError(
            f"Expected a header row and data rows in {str(path)!r}, but it has {len(rows)} row(s)."
        )
    header = [h.strip() for h in rows[0]]
    data = rows[1:]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise CompareError(
            f"Column names must be unique in {str(path)!r}, but {duplicated} repeat."
        )
    for column in [*targets, *drop]:
        if column not in header:
            raise CompareError(
                f"Column {column!r} is not in {str(path)!r}. Its columns are: {', '.join(header)}."
            )
    if len(set(targets)) != len(targets):
        raise CompareError(f"Expected distinct `--target` columns, but got {targets}.")
    for line, row in enumerate(data, start=2):
        if len(row) != len(header):
            raise CompareError(
                f"Line {line} of {str(path)!r} has {len(row)} fields, but the header has "
                f"{len(header)}."
            )
    features = [h for h in header if h not in targets and h not in drop]
    if not features:
        raise CompareError(
            f"No feature columns are left in {str(path)!r} after the targets and `--drop`."
        )
    col = {h: i for i, h in enumerate(header)}

    X = np.empty((len(data), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        for i, row in enumerate(data):
            cell = row[col[name]]
            if _is_missing(cell):
                raise CompareError(
                    f"Feature column {name!r} has a missing value ({cell!r}) on line {i + 2}. "
                    f"Fill or remove such rows, or leave the column out with `--drop {name}`."
                )
            number = _to_float(cell)
            if number is None or not math.isfinite(number):
                raise CompareError(
                    f"Feature column {name!r} must be numeric, but line {i + 2} holds {cell!r}. "
                    f"Encode it as numbers (e.g. one column per category) or leave it out with "
                    f"`--drop {name}`."
                )
            X[i, j] = number

    raw = {}
    for name in targets:
        values = [row[col[name]].strip() for row in data]
        for i, v in enumerate(values):
            if _is_missing(v):
                raise CompareError(
                    f"Target column {name!r} has a missing value ({v!r}) on line {i + 2}: "
                    f"every sample needs a label."
                )
        raw[name] = values

    if len(targets) > 1:
        y = np.empty((len(data), len(targets)), dtype=np.float64)
        for j, name in enumerate(targets):
            for i, v in enumerate(raw[name]):
                low = v.lower()
                if low in ("1", "1.0", "true"):
                    y[i, j] = 1.0
                elif low in ("0", "0.0", "false"):
                    y[i, j] = 0.0
                else:
                    raise CompareError(
                        f"With several `--target` columns (multi-label) each must hold 0/1, but "
                        f"column {name!r} holds {v!r} on line {i + 2}."
                    )
        dataset = Dataset(
            name=path.name,
            description=(
                f"{path.name}: {len(data)} rows, {len(features)} features, labels "
                f"{', '.join(targets)}."
            ),
            task="multilabel",
            X=X,
            y=y,
            label_names=list(targets),
            feature_names=features,
        )
    else:
        name = targets[0]
        values = raw[name]
        counts: dict[str, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        distinct = sorted(counts)
        if len(distinct) < 2:
            raise CompareError(
                f"Target column {name!r} holds only the value {distinct[0]!r}: the other class has "
                f"no samples. A classifier needs at least two classes."
            )
        numbers = [_to_float(v) for v in distinct]
        numeric = all(n is not None and math.isfinite(n) for n in numbers)
        if len(distinct) == 2:
            pos = _binary_positive(distinct, name, positive, counts)
            y = np.array([[1.0 if v == pos else 0.0] for v in values])
            dataset = Dataset(
                name=path.name,
                description=(
                    f"{path.name}: {len(data)} rows, {len(features)} features; target {name!r}, "
                    f"positive class {pos!r}."
                ),
                task="binary",
                X=X,
                y=y,
                label_names=[f"{name}={pos}"],
                feature_names=features,
            )
        else:
            if positive is not None:
                raise CompareError(
                    f"`--positive` applies to a binary target, but column {name!r} has "
                    f"{len(distinct)} classes."
                )
            if numeric and not all(float(n).is_integer() for n in numbers):
                raise CompareError(
                    f"Target column {name!r} holds non-integer numbers (e.g. {distinct[0]!r}): it "
                    f"looks like a regression target. Classes must be integers or names."
                )
            if len(distinct) > MAX_CLASSES:
                raise CompareError(
                    f"Target column {name!r} has {len(distinct)} distinct values; compare handles "
                    f"at most {MAX_CLASSES} classes. Is it the right column?"
                )
            if numeric:
                ints = sorted({int(float(v)) for v in distinct})
                if ints[0] >= 0:
                    missing = sorted(set(range(ints[-1] + 1)) - set(ints))
                    if missing:
                        raise CompareError(
                            f"Class {missing[0]} of target column {name!r} has no samples (it "
                            f"holds classes {', '.join(map(str, ints))}). Renumber the classes "
                            f"0..{len(ints) - 1} or add samples of the missing class."
                        )
                distinct = sorted(distinct, key=lambda v: float(v))
            index = {v: k for k, v in enumerate(distinct)}
            y = np.array([index[v] for v in values], dtype=np.int64)
            dataset = Dataset(
                name=path.name,
                description=(
                    f"{path.name}: {len(data)} rows, {len(features)} features; target {name!r} "
                    f"with {len(distinct)} classes."
                ),
                task="multiclass",
                X=X,
                y=y,
                label_names=[str(v) for v in distinct],
                feature_names=features,
            )
    check_min_counts(dataset)
    return dataset


def check_min_counts(dataset: Dataset, minimum: int = 3) -> None:
    """Every class (and, for labels, both values) needs a sample in train, validation and test."""
    n = dataset.n_samples
    counts = dataset.class_counts()
    for name, c in zip(dataset.label_names, counts, strict=True):
        c = int(c)
        checks = [(c, f"class {name!r}")]
        if dataset.task != "multiclass":
            checks = [(c, f"the positives of {name!r}"), (n - c, f"the negatives of {name!r}")]
        for count, what in checks:
            if count == 0:
                raise CompareError(f"In {dataset.name}, {what} have no samples.")
            if count < minimum:
                raise CompareError(
                    f"In {dataset.name}, {what} have {count} sample(s); compare needs at least "
                    f"{minimum} (one each for training, validation and test)."
                )


def load_dataset(
    name: str | None = None,
    *,
    csv_path: str | Path | None = None,
    targets: list[str] | None = None,
    drop: list[str] | tuple[str, ...] = (),
    positive: str | None = None,
    imbalance: float | None = None,
    data_seed: int = 0,
) -> Dataset:
    """A built-in data set by name (``None``: ``caravan``), or a CSV file (``csv_path`` with
    ``targets``)."""
    if csv_path is not None:
        return load_csv(csv_path, list(targets or []), drop=drop, positive=positive)
    if targets:
        raise CompareError("`--target` needs `--csv PATH`: the built-in data sets have their own.")
    return load_builtin(name or DEFAULT_DATA["binary"], imbalance=imbalance, data_seed=data_seed)
