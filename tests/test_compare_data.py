"""compare's data: built-in data sets, CSV reading and its errors, stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from crossent.compare.data import (
    DIGIT_ATTRIBUTES,
    CompareError,
    load_builtin,
    load_csv,
    load_dataset,
)
from crossent.compare.splits import (
    iterative_stratification,
    standardize,
    stratified_split,
)

# --------------------------------------------------------------------------------------------
# Built-in data sets
# --------------------------------------------------------------------------------------------


def test_digits_imbalanced_ratio_and_subsampling():
    d = load_builtin("digits-imbalanced")
    assert d.task == "binary" and d.y.shape == (d.n_samples, 1) and d.X.shape[1] == 64
    pos = int(d.y.sum())
    neg = d.n_samples - pos
    assert neg == 1797 - 178 and pos == round(neg / 50)
    d10 = load_builtin("digits-imbalanced", imbalance=10)
    assert int(d10.y.sum()) == round(neg / 10)
    assert int(load_builtin("digits-imbalanced", imbalance=2).y.sum()) == 178  # all zeros kept
    # The data set is fixed by data_seed, not by the training seeds.
    assert np.array_equal(load_builtin("digits-imbalanced").X, d.X)
    assert not np.array_equal(load_builtin("digits-imbalanced", data_seed=1).X, d.X)
    with pytest.raises(CompareError, match=r"`--imbalance` to be a number > 0, but got -1"):
        load_builtin("digits-imbalanced", imbalance=-1)


def test_digits_multilabel_labels_follow_the_digit():
    from sklearn.datasets import load_digits

    digit = load_digits().target
    d = load_builtin("digits-multilabel")
    assert d.task == "multilabel" and d.label_names == list(DIGIT_ATTRIBUTES)
    for j, members in enumerate(DIGIT_ATTRIBUTES.values()):
        assert np.array_equal(d.y[:, j] == 1, np.isin(digit, members))
    assert np.array_equal(d.y[digit == 8], np.tile([1, 0, 1, 1], ((digit == 8).sum(), 1)))


def test_digits_and_breast_cancer():
    d = load_builtin("digits")
    assert d.task == "multiclass" and d.y.dtype == np.int64 and d.n_outputs == 10
    b = load_builtin("breast-cancer")
    assert b.task == "binary" and b.label_names == ["malignant"] and int(b.y.sum()) == 212


def test_caravan_is_shipped_and_read_as_its_csv(tmp_path):
    import gzip
    from importlib.resources import files

    d = load_builtin("caravan")
    assert d.task == "binary" and d.X.shape == (5822, 85) and d.label_names == ["Purchase=Yes"]
    assert int(d.y.sum()) == 348  # 6.0% bought caravan insurance
    assert d.feature_names[:2] == ["MOSTYPE", "MAANTHUI"] and d.feature_names[-1] == "ABYSTAND"
    assert "CC BY 4.0" in d.description and "COIL 2000" in d.description
    # The default data set is the file `--csv Caravan.csv --target Purchase --positive Yes`
    # reads: the same numbers either way.
    packaged = files("crossent.compare") / "datasets" / "caravan.csv.gz"
    plain = tmp_path / "Caravan.csv"
    plain.write_bytes(gzip.decompress(packaged.read_bytes()))
    from_csv = load_csv(plain, ["Purchase"], positive="Yes")
    assert np.array_equal(from_csv.X, d.X) and np.array_equal(from_csv.y, d.y)
    assert load_dataset().name == "caravan"
    # Its source and license travel with it.
    notice = (files("crossent.compare") / "datasets" / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in notice and "Caravan" in notice


def test_digits_lt_is_long_tailed_with_balanced_validation_and_test():
    d = load_builtin("digits-lt")
    assert d.task == "multiclass" and d.n_outputs == 10
    counts = np.bincount(d.y[d.train_rows], minlength=10)
    n_max = counts[0]
    # Long-tailed CIFAR-10's profile: n_c = int(n_max * IF^(-c / (C - 1))), IF = 10.
    assert counts.tolist() == [int(n_max * 10 ** (-c / 9)) for c in range(10)]
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.1)
    held = np.delete(d.y, d.train_rows)
    assert np.bincount(held).tolist() == [80] * 10
    splits = [
        stratified_split("multiclass", d.y, (0.6, 0.2, 0.2), seed, train_rows=d.train_rows)
        for seed in (0, 1)
    ]
    for s in splits:
        assert np.array_equal(s.train, np.sort(d.train_rows))  # fixed under every seed
        assert np.bincount(d.y[s.val]).tolist() == [40] * 10
        assert np.bincount(d.y[s.test]).tolist() == [40] * 10
        assert len(np.intersect1d(s.val, s.test)) == 0 == len(np.intersect1d(s.train, s.test))
    assert not np.array_equal(splits[0].test, splits[1].test)  # each seed re-splits the rest
    steep = load_builtin("digits-lt", imbalance=50)
    assert np.bincount(steep.y[steep.train_rows])[-1] == int(n_max / 50)
    assert "imbalance factor 10" in d.description and "Cui et al." in d.description
    assert "from 94 (class '0') to 9 (class '9')" in d.prevalence_text()


@pytest.mark.parametrize(
    "name,imbalance,error",
    [
        ("digits-lt", 0.5, r"`--imbalance` to be a number >= 1, but got 0.5"),
        ("digits-lt", 500, r"`--imbalance` to be at most 94 for digits-lt"),
        ("caravan", 10, r"`--imbalance` applies to digits-imbalanced and digits-lt"),
    ],
)
def test_imbalance_errors(name, imbalance, error):
    with pytest.raises(CompareError, match=error):
        load_builtin(name, imbalance=imbalance)


def test_csv_gzip(tmp_path):
    import gzip

    text = "a,b,label\n" + _rows(12, lambda i: f"{i},{i % 3},{int(i % 4 == 0)}\n")
    path = tmp_path / "data.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    d = load_csv(path, ["label"])
    assert d.X.shape == (12, 2) and int(d.y.sum()) == 3


def test_unknown_builtin_and_target_without_csv():
    with pytest.raises(CompareError, match=r"`--data` to be one of .*digits-imbalanced.*'mnist'"):
        load_builtin("mnist")
    with pytest.raises(CompareError, match=r"`--target` needs `--csv PATH`"):
        load_dataset("digits", targets=["y"])
    for option, kwargs in (
        ("--drop-text", dict(drop_text=True)),
        ("--missing", dict(missing="mean")),
        ("--drop", dict(drop=["a"])),
    ):
        with pytest.raises(CompareError, match=rf"`{option}` applies to `--csv PATH`"):
            load_dataset("digits", **kwargs)


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(n, fmt):
    return "".join(fmt(i) for i in range(n))


def test_csv_binary_multiclass_multilabel(tmp_path):
    text = "a,b,label,x,y\n" + _rows(
        12,
        lambda i: (
            f"{i},{i % 3 * 0.5},{'spam' if i % 4 == 0 else 'ham'},{i % 2},{int(i % 3 == 0)}\n"
        ),
    )
    path = _write(tmp_path, text)
    d = load_csv(path, ["label"], drop=["x", "y"])
    assert d.task == "binary" and d.feature_names == ["a", "b"]
    assert d.label_names == ["label=spam"]  # the rarer value
    assert d.y[:, 0].tolist() == [float(i % 4 == 0) for i in range(12)]
    assert load_csv(path, ["label"], drop=["x", "y"], positive="ham").label_names == ["label=ham"]
    m = load_csv(path, ["x", "y"], drop=["label"])
    assert m.task == "multilabel" and m.y.shape == (12, 2) and m.X.shape == (12, 2)
    text = "f,cls\n" + _rows(12, lambda i: f"{i},{i % 3}\n")
    c = load_csv(_write(tmp_path, text, "mc.csv"), ["cls"])
    assert (
        c.task == "multiclass"
        and c.label_names == ["0", "1", "2"]
        and c.y.tolist()[:4] == [0, 1, 2, 0]
    )


def test_csv_binary_numeric_positive_is_one(tmp_path):
    text = "f,t\n" + _rows(10, lambda i: f"{i},{int(i < 7)}\n")  # 1 is the majority here
    assert load_csv(_write(tmp_path, text), ["t"]).label_names == ["t=1"]


@pytest.mark.parametrize(
    "text,targets,drop,error",
    [
        pytest.param(
            "a,b\n1,0\n2,1\n",
            ["c"],
            [],
            r"Target column 'c' is not in data.csv.\n     Fix: name one of its columns: a, b",
            id="missing-target-column",
        ),
        pytest.param(
            "a,b\n1,0\n2,1\n",
            ["b"],
            ["z"],
            r"Column 'z' of `--drop` is not in data.csv",
            id="missing-drop-column",
        ),
        pytest.param(
            "a,s,b\n1,x,0\n2,y,1\n3,z,0\n",
            ["b"],
            [],
            r"(?s)Column 's' holds text \(3 different values in 3 rows, e.g. 'x', 'y'\).*--drop s",
            id="non-numeric-feature",
        ),
        pytest.param(
            "a,b\n1,0\nnan,1\n3,0\n",
            ["b"],
            [],
            r"(?s)Column 'a' has 1 missing value\(s\) \('nan' on line 3\).*--missing mean",
            id="nan-feature",
        ),
        pytest.param(
            "a,b\n1,0\n,1\n3,0\n",
            ["b"],
            [],
            r"Column 'a' has 1 missing value\(s\) \(empty on line 3\)",
            id="empty-feature",
        ),
        pytest.param(
            "a,b\n1,0\n2,NA\n3,1\n",
            ["b"],
            [],
            r"Target column 'b' has 1 missing value\(s\) \('NA' on line 3\): every sample needs a label",
            id="missing-target",
        ),
        pytest.param(
            "a,b\n1,0\n2,0\n3,0\n",
            ["b"],
            [],
            r"Target column 'b' holds only the value '0': the other class has no samples",
            id="one-class",
        ),
        pytest.param(
            "a,b\n" + "".join(f"{i},{i % 2 * 2}\n" for i in range(8)) + "9,3\n",
            ["b"],
            [],
            r"Class 1 of target column 'b' has no samples",
            id="class-gap",
        ),
        pytest.param(
            "a,b\n1,0\n2,0\n3,1\n4,1\n5,0\n",
            ["b"],
            [],
            r"the positives of 'b=1' have 2 sample\(s\); compare needs at least 3",
            id="too-few-positives",
        ),
        pytest.param(
            "a,b,c\n1,0,1\n2,1,2\n3,0,0\n",
            ["b", "c"],
            [],
            r"column 'c' holds '2' on line 3",
            id="multilabel-not-binary",
        ),
        pytest.param(
            "a,b,c\n" + "".join(f"{i},{i % 2},0\n" for i in range(8)),
            ["b", "c"],
            [],
            r"the positives of 'c' have no samples",
            id="multilabel-label-without-positives",
        ),
        pytest.param(
            "a,b\n" + "".join(f"{i},{i * 0.37}\n" for i in range(8)),
            ["b"],
            [],
            r"non-integer numbers .* regression target",
            id="regression-target",
        ),
        pytest.param(
            "a,b\n1,0\n2\n",
            ["b"],
            [],
            r"1 row\(s\) do not have the header's 2 fields \(line 3 has 1\)",
            id="ragged-row",
        ),
        pytest.param("a,b\n", ["b"], [], r"a header row and data rows", id="no-data"),
        pytest.param("b\n0\n1\n", ["b"], [], r"No feature columns are left", id="no-features"),
    ],
)
def test_csv_errors(tmp_path, text, targets, drop, error):
    with pytest.raises(CompareError, match=error):
        load_csv(_write(tmp_path, text), targets, drop=drop)


def test_csv_missing_file_and_no_target(tmp_path):
    with pytest.raises(CompareError, match=r"`--csv` to be a readable file, but .*nope.csv"):
        load_csv(tmp_path / "nope.csv", ["y"])
    with pytest.raises(CompareError, match=r"No `--target` column was given"):
        load_csv(_write(tmp_path, "a,b\n1,0\n"), [])
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    with pytest.raises(CompareError, match=r"`--csv` to be a readable file, but .* is a folder"):
        load_csv(folder, ["y"])
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("a,b\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(CompareError, match=r"is not UTF-8 text: save it as a UTF-8"):
        load_csv(latin1, ["b"])


# A passenger list with the usual problems of a real file: a text id, categories, missing
# numbers, a column mostly missing; blank line 5 must not shift the line numbers.
PASSENGERS = "id,survived,pclass,name,sex,age,fare,embarked,cabin\n" + "".join(
    f'{i},{int(i % 3 == 0)},{1 + i % 3},"Person, No. {i}",{"fm"[i % 2]},'
    f"{'' if i in (2, 7, 11) else 20 + i},{5.5 * i},{'SCQ'[i % 3]},{f'C{i}' if i % 4 == 0 else ''}\n"
    + ("\n" if i == 2 else "")
    for i in range(1, 25)
)


def test_csv_every_problem_in_one_error_with_its_fix(tmp_path):
    path = _write(tmp_path, PASSENGERS)
    with pytest.raises(CompareError) as info:
        load_csv(path, ["survived"])
    text = str(info.value)
    assert text.startswith(f"{path} has 5 problems; nothing was run:")
    numbered = [line.split(".", 1)[0] for line in text.splitlines() if line[2:3].isdigit()]
    assert numbered == ["  1", "  2", "  3", "  4", "  5"]
    assert text.count("\n     Fix: ") == 5
    assert "Column 'name' holds text (24 different values in 24 rows, e.g. 'Person, No. 1'" in text
    assert "Fix: leave it out with `--drop name`" in text
    assert "Column 'sex' holds categories (2: 'f', 'm'), not numbers." in text
    assert "encode it as numbers (one 0/1 column per category)" in text
    # lines 3, 9, 13: data row i is on line i + 1, plus one for the blank line after row 2
    assert "Column 'age' has 3 missing value(s) (empty on lines 3, 9, 13)." in text
    assert "Column 'embarked' holds categories (3: 'C', 'Q', 'S'), not numbers." in text
    assert "Column 'cabin' holds text" in text and "cabin' has" not in text  # text: one problem
    assert text.endswith("To fix all of them at once, add: --drop-text --missing mean")


def test_csv_drop_text_and_missing_policies(tmp_path):
    path = _write(tmp_path, PASSENGERS)
    d = load_csv(path, ["survived"], drop_text=True, missing="mean")
    assert d.feature_names == ["id", "pclass", "age", "fare"] and d.X.shape == (24, 4)
    assert np.isnan(d.X[:, 2]).sum() == 3  # filled per split, from the training rows
    assert "Text columns left out (`--drop-text`): name, sex, embarked, cabin" in d.description
    assert "missing values filled with the training split's mean (3 in age)" in d.description
    d = load_csv(path, ["survived"], drop_text=True, missing="drop")
    assert d.X.shape == (21, 4) and not np.isnan(d.X).any()
    assert "3 row(s) with a missing value left out" in d.description
    d = load_csv(path, ["survived"], drop=["name", "sex", "embarked", "cabin", "age"])
    assert d.feature_names == ["id", "pclass", "fare"]
    with pytest.raises(CompareError, match=r"`--missing` to be one of error, drop, mean"):
        load_csv(path, ["survived"], missing="zero")
    # a missing label is never filled: those rows are left out under mean and drop
    text = "a,y\n" + "".join(f"{i},{'' if i == 4 else i % 2}\n" for i in range(12))
    for policy in ("mean", "drop"):
        d = load_csv(_write(tmp_path, text, "y.csv"), ["y"], missing=policy)
        assert d.n_samples == 11 and 4.0 not in d.X[:, 0]


def test_standardize_fills_missing_values_with_the_training_mean():
    X = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0], [100.0, np.nan]])
    Z, mean, _ = standardize(X, np.array([0, 1, 2]))
    # column 0: training mean of 1 and 3 is 2 -> row 2 gets 2; column 1: mean of 4 and 8 is 6
    assert mean.tolist() == [2.0, 6.0]
    assert Z[2, 0] == 0.0 and Z[0, 1] == 0.0 and Z[3, 1] == 0.0
    assert not np.isnan(Z).any()


@pytest.mark.parametrize(
    "targets,expected",
    [
        pytest.param(
            [],
            "No `--target` column was given: compare needs the column to predict.\n     Fix: name "
            "it with `--target COLUMN` (repeat for several 0/1 labels). Columns with few distinct "
            "values, which could be labels: 'survived' (2 values: 0, 1); 'sex' (2 values: f, m);",
            id="no-target",
        ),
        pytest.param(
            ["Survive"],
            "Target column 'Survive' is not in data.csv.\n     Fix: did you mean `--target "
            "survived`? Columns with few distinct values, which could be labels: 'survived'",
            id="misspelt-target",
        ),
    ],
)
def test_csv_wrong_target_proposes_the_likely_column(tmp_path, targets, expected):
    path = _write(tmp_path, PASSENGERS)
    with pytest.raises(CompareError) as info:
        load_csv(path, targets, drop_text=True, missing="mean")
    assert expected in str(info.value)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_stratified_split_binary_keeps_proportions_and_is_seeded():
    y = np.zeros((1000, 1))
    y[:20] = 1
    s = stratified_split("binary", y, (0.6, 0.2, 0.2), seed=0)
    parts = [s.train, s.val, s.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))  # a partition
    assert [int(y[p].sum()) for p in parts] == [12, 4, 4]
    assert [len(p) for p in parts] == [600, 200, 200]
    again = stratified_split("binary", y, (0.6, 0.2, 0.2), seed=0)
    other = stratified_split("binary", y, (0.6, 0.2, 0.2), seed=1)
    assert np.array_equal(again.test, s.test) and not np.array_equal(other.test, s.test)


def test_stratified_split_gives_every_part_a_rare_class():
    y = np.array([0] * 50 + [1] * 3 + [2] * 47)
    s = stratified_split("multiclass", y, (0.8, 0.1, 0.1), seed=0)
    for part in (s.train, s.val, s.test):
        assert set(y[part]) == {0, 1, 2}


def test_iterative_stratification_balances_every_label():
    rng = np.random.default_rng(0)
    Y = (rng.random((2000, 6)) < np.array([0.01, 0.03, 0.1, 0.3, 0.5, 0.02])).astype(int)
    parts = iterative_stratification(Y, [0.6, 0.2, 0.2], np.random.default_rng(1))
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))
    total = Y.sum(axis=0)
    for part, f in zip(parts, [0.6, 0.2, 0.2]):
        assert abs(len(part) - f * 2000) <= 6
        # Each label's positives within one sample of the desired share.
        assert np.all(np.abs(Y[part].sum(axis=0) - f * total) <= 1.0 + 1e-9)


def test_multilabel_split_too_rare_label_is_an_error():
    Y = np.zeros((100, 2))
    Y[::2, 0] = 1
    Y[0, 1] = 1  # one positive cannot be in train, validation and test
    with pytest.raises(CompareError, match=r"Label 1 has too few positives"):
        stratified_split("multilabel", Y, (0.6, 0.2, 0.2), seed=0)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.6, 0.3, 0.2), (0.8, 0.2, 0.0)])
def test_bad_fractions(fractions):
    with pytest.raises(CompareError, match=r"`--split`"):
        stratified_split("binary", np.zeros((10, 1)), fractions, seed=0)


def test_standardize_uses_training_rows_only():
    X = np.array([[0.0, 5.0], [2.0, 5.0], [100.0, 7.0]])
    Z, mean, scale = standardize(X, np.array([0, 1]))
    assert mean.tolist() == [1.0, 5.0] and scale.tolist() == [1.0, 1.0]  # constant column unscaled
    assert Z[:, 0].tolist() == [-1.0, 1.0, 99.0]
