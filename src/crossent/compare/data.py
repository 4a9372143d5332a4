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
        """``"85 features"``, or what ``inputs`` says."""
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


MISSING_POLICIES = ("error", "drop", "mean")
# A text column with at most this many distinct values reads as categories, not as an id.
MAX_CATEGORIES = 20
# Likely targets proposed when `--target` is missing or wrong: at most this many classes.
MAX_PROPOSED_CLASSES = 10


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


@dataclass
class CsvProblem:
    """One problem of a CSV file: what is wrong, and the option or edit that fixes it.

    ``flag`` is the command-line option that fixes it on its own (``--drop-text``,
    ``--missing mean``), when there is one.
    """

    message: str
    fix: str
    flag: str | None = None


@dataclass
class _Column:
    """What one column of a CSV file holds."""

    name: str
    values: list[str]  # stripped, one per data row
    lines: list[int]  # the file's line number of each data row

    def __post_init__(self) -> None:
        self.missing = [i for i, v in enumerate(self.values) if _is_missing(v)]
        present = [i for i, v in enumerate(self.values) if not _is_missing(v)]
        self.numbers = {i: _to_float(self.values[i]) for i in present}
        self.text = [i for i in present if self.numbers[i] is None]
        self.nonfinite = [
            i for i in present if self.numbers[i] is not None and not math.isfinite(self.numbers[i])
        ]
        self.distinct = sorted({self.values[i] for i in present})

    @property
    def present(self) -> int:
        return len(self.values) - len(self.missing)

    def at(self, rows: list[int], limit: int = 3) -> str:
        """``"line 5"`` / ``"lines 5, 9, 12 and 40 more"``."""
        shown = [str(self.lines[i]) for i in rows[:limit]]
        more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
        return f"line{'s' if len(rows) > 1 else ''} {', '.join(shown)}{more}"

    def examples(self, rows: list[int], limit: int = 3) -> str:
        seen: list[str] = []
        for i in rows:
            if self.values[i] not in seen:
                seen.append(self.values[i])
            if len(seen) == limit:
                break
        return ", ".join(repr(v) if v else "empty" for v in seen)

    def looks_like_target(self) -> bool:
        return 2 <= len(self.distinct) <= MAX_PROPOSED_CLASSES and self.present > len(self.distinct)

    def describe_values(self) -> str:
        return f"{len(self.distinct)} values: {', '.join(self.distinct[:5])}" + (
            ", ..." if len(self.distinct) > 5 else ""
        )


def _propose_targets(columns: dict[str, _Column], wrong: str | None, exclude: set[str]) -> str:
    """A sentence naming the columns the user probably meant: close names, then columns with
    few distinct values (binary first)."""
    import difflib

    names = [n for n in columns if n not in exclude]
    parts = []
    if wrong is not None:
        lower = {n.lower(): n for n in names}
        close = [lower[m] for m in difflib.get_close_matches(wrong.lower(), list(lower), n=3)]
        if close:
            parts.append("Did you mean " + " or ".join(f"`--target {n}`" for n in close) + "?")
    likely = sorted(
        (c for c in (columns[n] for n in names) if c.looks_like_target()),
        key=lambda c: (len(c.distinct), names.index(c.name)),
    )
    if likely:
        shown = "; ".join(f"{c.name!r} ({c.describe_values()})" for c in likely[:4])
        parts.append(f"Columns with few distinct values, which could be labels: {shown}.")
    if parts and wrong is not None and parts[0].startswith("Did"):
        parts[0] = "d" + parts[0][1:]
    return " ".join(parts)


def _text_problem(column: _Column, n_rows: int) -> CsvProblem:
    name = column.name
    drop = f"--drop {_quote(name)}"
    numeric = column.present - len(column.text)
    if numeric >= 0.8 * column.present:
        return CsvProblem(
            f"Column {name!r} holds numbers except {len(column.text)} value(s) that are not "
            f"({column.examples(column.text)} on {column.at(column.text)}).",
            f"correct those cells (a number, or empty for a missing value), or leave the column "
            f"out with `{drop}`.",
            "--drop-text",
        )
    if len(column.distinct) <= min(MAX_CATEGORIES, column.present / 2):  # values repeat
        return CsvProblem(
            f"Column {name!r} holds categories ({len(column.distinct)}: "
            f"{', '.join(map(repr, column.distinct[:6]))}"
            f"{', ...' if len(column.distinct) > 6 else ''}), not numbers.",
            f"encode it as numbers (one 0/1 column per category), or leave it out with `{drop}` "
            f"(`--drop-text` leaves out every text column).",
            "--drop-text",
        )
    return CsvProblem(
        f"Column {name!r} holds text ({len(column.distinct)} different values in {n_rows} rows, "
        f"e.g. {column.examples(column.text, 2)}): an id or free text, not a feature.",
        f"leave it out with `{drop}` (`--drop-text` leaves out every text column).",
        "--drop-text",
    )


def _quote(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").replace(".", "").isalnum() else repr(name)


def format_problems(source: str, problems: list[CsvProblem]) -> str:
    """One message for every problem of a file, each with its fix."""
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    lines = [f"{source} has {count}; nothing was run:"]
    for k, p in enumerate(problems, start=1):
        lines.append(f"  {k}. {p.message}")
        lines.append(f"     Fix: {p.fix}")
    flags = [p.flag for p in problems]
    if len(problems) > 1 and all(flags):
        unique = dict.fromkeys(f for f in flags if f)
        if "--missing mean" in unique:  # it leaves out rows without a label, as drop does
            unique.pop("--missing drop", None)
        unique = " ".join(unique)
        lines.append(f"To fix all of them at once, add: {unique}")
    return "\n".join(lines)


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV file, each with its line number in the file."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CompareError(f"Expected `--csv` to be a readable file, but {str(path)!r} {what}.")
    rows: list[tuple[int, list[str]]] = []
    try:
        opener = gzip.open if path.suffix == ".gz" else open  # data.csv.gz is read as it is
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            line = 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((line, row))
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise CompareError(
            f"{str(path)!r} is not UTF-8 text: save it as a UTF-8 CSV file (a spreadsheet's "
            f'"CSV UTF-8" format).'
        ) from None
    except csv.Error as exc:
        raise CompareError(f"{str(path)!r} is not a readable CSV file: {exc}.") from None
    except OSError as exc:
        raise CompareError(f"Could not read {str(path)!r}: {exc.strerror or exc}.") from None
    return rows


def load_csv(
    path: str | Path,
    targets: list[str],
    *,
    drop: list[str] | tuple[str, ...] = (),
    positive: str | None = None,
    drop_text: bool = False,
    missing: str = "error",
) -> Dataset:
    """Read a CSV file with a header row: every column not in ``targets`` or ``drop`` is a
    numeric feature.

    One target column with two values is a binary task (the positive class is 1 / true / yes,
    or else the rarer value; ``positive`` overrides), with more values a multi-class task.
    Several target columns make a multi-label task; each must hold 0/1 (or true/false).

    Every problem of the file is found before anything is raised, and raised together in one
    :class:`CompareError`, each with its fix: text or category columns, missing values,
    unknown column names (with the likely target columns proposed), ragged rows, a target
    that cannot be a label.

    Args:
        path: the CSV file (UTF-8, comma-separated, a header row).
        targets: the label column(s).
        drop: columns to leave out.
        positive: the positive value of a binary target.
        drop_text: leave out every feature column that holds text (ids, names, categories).
        missing: what to do with a missing value (empty, ``NA``, ``nan``, ``?``, ...):
            ``"error"`` (default), ``"drop"`` (leave out the rows that have one) or ``"mean"``
            (fill a feature with the mean of the training split, computed per seed; rows
            whose target is missing are left out).
    """
    path = Path(path)
    if missing not in MISSING_POLICIES:
        raise CompareError(
            f"Expected `--missing` to be one of {', '.join(MISSING_POLICIES)}, but got {missing!r}."
        )
    rows = _read_rows(path)
    if len(rows) < 2:
        raise CompareError(
            f"Expected a header row and data rows in {str(path)!r}, but it has {len(rows)} row(s)."
        )
    problems: list[CsvProblem] = []
    header = [h.strip() for h in rows[0][1]]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        problems.append(
            CsvProblem(
                f"Column names repeat: {', '.join(map(repr, duplicated))}.",
                "give every column of the header row its own name.",
            )
        )
    ragged = [(line, len(row)) for line, row in rows[1:] if len(row) != len(header)]
    if ragged:
        shown = ", ".join(f"line {line} has {n}" for line, n in ragged[:3])
        more = f" and {len(ragged) - 3} more rows" if len(ragged) > 3 else ""
        problems.append(
            CsvProblem(
                f"{len(ragged)} row(s) do not have the header's {len(header)} fields ({shown}"
                f"{more}).",
                "check the separator (a comma) and quote fields that contain commas.",
            )
        )
    data = [(line, row) for line, row in rows[1:] if len(row) == len(header)]
    lines = [line for line, _ in data]
    col = {h: i for i, h in enumerate(header)}
    columns = {h: _Column(h, [row[col[h]].strip() for _, row in data], lines) for h in col}

    known = [t for t in targets if t in columns]
    if not targets:
        proposal = _propose_targets(columns, None, set(drop))
        problems.append(
            CsvProblem(
                "No `--target` column was given: compare needs the column to predict.",
                "name it with `--target COLUMN` (repeat for several 0/1 labels)."
                + (f" {proposal}" if proposal else ""),
            )
        )
    for name in targets:
        if name not in columns:
            proposal = _propose_targets(columns, name, {*known, *drop})
            problems.append(
                CsvProblem(
                    f"Target column {name!r} is not in {path.name}.",
                    (proposal + " " if proposal else "")
                    + f"{'Its' if proposal else 'name one of its'} columns: {', '.join(header)}.",
                )
            )
    if len(set(targets)) != len(targets):
        problems.append(
            CsvProblem(f"A `--target` column is given twice: {targets}.", "name each once.")
        )
    for name in drop:
        if name not in columns:
            import difflib

            close = difflib.get_close_matches(name, header, n=2)
            hint = f"did you mean {' or '.join(map(repr, close))}? Its" if close else "its"
            problems.append(
                CsvProblem(
                    f"Column {name!r} of `--drop` is not in {path.name}.",
                    f"{hint} columns are: {', '.join(header)}.",
                )
            )

    features = [h for h in columns if h not in targets and h not in drop]
    dropped_text = []
    skip_rows: set[int] = set()
    filled: dict[str, int] = {}
    n_rows = len(data)
    for name in features:
        c = columns[name]
        if c.present == 0:
            problems.append(
                CsvProblem(
                    f"Column {name!r} has no values (every cell is missing).",
                    f"leave it out with `--drop {_quote(name)}`.",
                )
            )
        elif c.text:
            if not drop_text:
                problems.append(_text_problem(c, n_rows))
            dropped_text.append(name)  # left out; its missing values do not matter
            continue
        elif c.nonfinite:
            problems.append(
                CsvProblem(
                    f"Column {name!r} holds {c.examples(c.nonfinite)} on {c.at(c.nonfinite)}.",
                    "replace them with finite numbers or leave them empty (a missing value).",
                )
            )
        if c.missing and c.present:
            if missing == "error":
                problems.append(
                    CsvProblem(
                        f"Column {name!r} has {len(c.missing)} missing value(s) "
                        f"({c.examples(c.missing)} on {c.at(c.missing)}).",
                        "`--missing mean` fills them with the training split's mean, "
                        "`--missing drop` leaves out the rows that have one, "
                        f"`--drop {_quote(name)}` leaves out the column.",
                        "--missing mean",
                    )
                )
            elif missing == "drop":
                skip_rows.update(c.missing)
            else:
                filled[name] = len(c.missing)
    features = [h for h in features if h not in dropped_text]
    if not features and not problems:
        problems.append(
            CsvProblem(
                f"No feature columns are left in {path.name} after the targets"
                + (", `--drop`" if drop else "")
                + (" and `--drop-text`" if dropped_text else "")
                + ".",
                "a model needs at least one numeric column besides the targets.",
            )
        )
    for name in known:
        c = columns[name]
        if c.missing:
            if missing == "error":
                problems.append(
                    CsvProblem(
                        f"Target column {name!r} has {len(c.missing)} missing value(s) "
                        f"({c.examples(c.missing)} on {c.at(c.missing)}): every sample needs a "
                        f"label.",
                        "`--missing drop` leaves out those rows (with `--missing mean` they are "
                        "left out too: a label is never filled in).",
                        "--missing drop",
                    )
                )
            else:
                skip_rows.update(c.missing)

    keep = [i for i in range(n_rows) if i not in skip_rows]
    dataset = None
    if known and len(known) == len(targets) and len(set(targets)) == len(targets):
        try:
            dataset = _targets(path, known, columns, keep, features, positive)
        except _TargetError as exc:
            problems.append(exc.problem)
    if problems or dataset is None:  # dataset is None only with a target problem listed
        raise CompareError(format_problems(str(path), problems))
    X = np.empty((len(keep), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        numbers = columns[name].numbers
        X[:, j] = [
            np.nan if numbers.get(i) is None else numbers[i]  # NaN: filled per split (mean)
            for i in keep
        ]
    dataset.X = X
    dataset.feature_names = features
    notes = []
    if dropped_text:
        notes.append(f"text columns left out (`--drop-text`): {', '.join(dropped_text)}")
    if skip_rows:
        notes.append(f"{len(skip_rows)} row(s) with a missing value left out")
    if filled:
        cells = ", ".join(f"{n} in {name}" for name, n in filled.items())
        notes.append(f"missing values filled with the training split's mean ({cells})")
    if notes:
        text = "; ".join(notes)
        dataset.description += " " + text[0].upper() + text[1:] + "."
    check_min_counts(dataset)
    return dataset


class _TargetError(Exception):
    """A target column that cannot be a label; :func:`load_csv` lists it with the others."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.problem = CsvProblem(message, fix)


def _targets(
    path: Path,
    targets: list[str],
    columns: dict[str, _Column],
    keep: list[int],
    features: list[str],
    positive: str | None,
) -> Dataset:
    """The targets of the kept rows (X is filled in by the caller); a :class:`_TargetError`
    for a target that cannot be a label."""
    n = len(keep)
    size = f"{path.name}: {n} rows, {len(features)} features"
    raw = {name: [columns[name].values[i] for i in keep] for name in targets}
    lines = columns[targets[0]].lines
    empty = np.empty((n, 0))
    if len(targets) > 1:
        y = np.empty((n, len(targets)), dtype=np.float64)
        for j, name in enumerate(targets):
            for k, v in enumerate(raw[name]):
                low = v.lower()
                if low in ("1", "1.0", "true"):
                    y[k, j] = 1.0
                elif low in ("0", "0.0", "false"):
                    y[k, j] = 0.0
                else:
                    raise _TargetError(
                        f"With several `--target` columns (multi-label) each must hold 0/1, but "
                        f"column {name!r} holds {v!r} on line {lines[keep[k]]}.",
                        "give multi-label targets as 0/1 columns, or one `--target` column "
                        "for classes.",
                    )
        return Dataset(
            name=path.name,
            description=f"{size}, labels {', '.join(targets)}.",
            task="multilabel",
            X=empty,
            y=y,
            label_names=list(targets),
        )
    name = targets[0]
    values = raw[name]
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    distinct = sorted(counts)
    if len(distinct) < 2:
        raise _TargetError(
            f"Target column {name!r} holds only the value {distinct[0] if distinct else ''!r}: "
            f"the other class has no samples.",
            "a classifier needs at least two classes: is it the right column?",
        )
    numbers = [_to_float(v) for v in distinct]
    numeric = all(x is not None and math.isfinite(x) for x in numbers)
    if len(distinct) == 2:
        try:
            pos = _binary_positive(distinct, name, positive, counts)
        except CompareError as exc:
            raise _TargetError(str(exc), "give one of the column's two values.") from None
        return Dataset(
            name=path.name,
            description=f"{size}; target {name!r}, positive class {pos!r}.",
            task="binary",
            X=empty,
            y=np.array([[1.0 if v == pos else 0.0] for v in values]).reshape(n, 1),
            label_names=[f"{name}={pos}"],
        )
    if positive is not None:
        raise _TargetError(
            f"`--positive` applies to a binary target, but column {name!r} has "
            f"{len(distinct)} classes.",
            "leave out `--positive`.",
        )
    if numeric and not all(float(x).is_integer() for x in numbers):
        raise _TargetError(
            f"Target column {name!r} holds non-integer numbers (e.g. {distinct[0]!r}): it "
            f"looks like a regression target.",
            "classes must be integers or names: choose a label column.",
        )
    if len(distinct) > MAX_CLASSES:
        raise _TargetError(
            f"Target column {name!r} has {len(distinct)} distinct values; compare handles "
            f"at most {MAX_CLASSES} classes.",
            "is it the right column? " + _propose_targets(columns, None, set(targets)),
        )
    if numeric:
        ints = sorted({int(float(v)) for v in distinct})
        if ints[0] >= 0:
            gap = sorted(set(range(ints[-1] + 1)) - set(ints))
            if gap:
                raise _TargetError(
                    f"Class {gap[0]} of target column {name!r} has no samples (it holds "
                    f"classes {', '.join(map(str, ints))}).",
                    f"renumber the classes 0..{len(ints) - 1} or add samples of the missing class.",
                )
        distinct = sorted(distinct, key=lambda v: float(v))
    index = {v: k for k, v in enumerate(distinct)}
    return Dataset(
        name=path.name,
        description=f"{size}; target {name!r} with {len(distinct)} classes.",
        task="multiclass",
        X=empty,
        y=np.array([index[v] for v in values], dtype=np.int64),
        label_names=[str(v) for v in distinct],
    )


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
    drop_text: bool = False,
    missing: str = "error",
    imbalance: float | None = None,
    data_seed: int = 0,
) -> Dataset:
    """A built-in data set by name (``None``: ``caravan``), or a CSV file (``csv_path`` with
    ``targets``; ``drop``, ``positive``, ``drop_text`` and ``missing`` as in
    ``crossent.compare.data.load_csv``)."""
    if csv_path is not None:
        return load_csv(
            csv_path,
            list(targets or []),
            drop=drop,
            positive=positive,
            drop_text=drop_text,
            missing=missing,
        )
    if targets:
        raise CompareError("`--target` needs `--csv PATH`: the built-in data sets have their own.")
    given = [
        name
        for name, value in (
            ("--drop", bool(drop)),
            ("--positive", positive is not None),
            ("--drop-text", drop_text),
            ("--missing", missing != "error"),
        )
        if value
    ]
    if given:
        raise CompareError(
            f"`{given[0]}` applies to `--csv PATH`; the built-in data sets need no cleaning."
        )
    return load_builtin(name or DEFAULT_DATA["binary"], imbalance=imbalance, data_seed=data_seed)
