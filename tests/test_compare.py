"""``crossent compare`` end to end on tiny configurations: files, sane metrics, determinism,
the command line, loss specs and their errors, TensorBoard."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from typer.testing import CliRunner

from crossent.cli import app
from crossent.compare import CompareConfig, CompareError, run_compare
from crossent.compare.losses import parse_losses
from crossent.compare.report import verdict, write_report

pytestmark = pytest.mark.slow

# A few epochs of a small MLP: seconds, and still far better than chance on these data sets.
TINY = dict(seeds=2, max_epochs=6, patience=3, hidden=(16,), batch_size=128, lr=3e-3)


def _metrics(result):
    return [(r.loss, r.seed, r.metrics) for r in result.runs]


def _check_files(out, result):
    names = {p.name for p in out.iterdir()}
    assert {
        "results.csv",
        "summary.csv",
        "results.json",
        "report.md",
        "report.html",
        "figures",
    } <= names
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(result.losses) * len(result.seeds)
    assert list(rows[0])[:2] == ["loss", "seed"]
    assert set(result.columns) <= set(rows[0])
    data = json.loads((out / "results.json").read_text())
    assert data["best"] == result.best() and data["primary_metric"] == result.primary
    assert len(data["rows"]) == len(rows)
    assert set(data["summary"]) == {s.label for s in result.losses}
    assert data["verdict"].startswith(f"On {result.dataset.name}")
    # The settings every run used, the batch size resolved, and how each run ended.
    assert data["settings"]["batch_size"] == result.settings.batch_size >= 1
    assert [h["val_loss_flattened"] for h in data["histories"]] == [
        r.history.flattened for r in result.runs
    ]
    html = (out / "report.html").read_text()
    # Self-contained: three figures inline, nothing linked.
    assert html.count('src="data:image/png;base64,') == 3
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    md = (out / "report.md").read_text()
    assert md.count("![") == 3 and all(
        (out / "figures" / f).stat().st_size > 10_000
        for f in ("pr_curves.png", "reliability.png", "training_curves.png")
    )
    for spec in result.losses:
        assert f"| {spec.label} |" in md
    return rows, data


def test_binary_end_to_end(tmp_path):
    config = CompareConfig(
        data="digits-imbalanced", imbalance=20, losses=["bce", "focal", "asl"], **TINY
    )
    result = run_compare(config)
    assert result.task == "binary" and result.columns[:2] == ("average_precision", "roc_auc")
    assert "average_precision_micro" not in result.columns
    rows, _ = _check_files_after_write(tmp_path, result)
    for run in result.runs:
        prevalence = run.test_targets.mean()
        assert run.metrics["average_precision"] > max(0.5, 10 * prevalence), run
        assert run.metrics["roc_auc"] > 0.9
        assert 0 <= run.metrics["ece"] < 0.5 and 0 <= run.metrics["brier"] < 0.25
        assert 1 <= run.history.best_epoch <= run.history.epochs_run <= TINY["max_epochs"]
    assert rows[0]["loss"] == "bce" and rows[0]["seed"] == "0"


def _check_files_after_write(tmp_path, result):
    out = tmp_path / "report"
    write_report(result, out)
    return _check_files(out, result)


def test_multilabel_end_to_end(tmp_path):
    config = CompareConfig(data="digits-multilabel", losses=["bce", "asl:gamma_neg=2"], **TINY)
    result = run_compare(config)
    assert result.task == "multilabel"
    assert {"average_precision_micro", "f1_micro", "ece_micro"} <= set(result.columns)
    _, data = _check_files_after_write(tmp_path, result)
    for run in result.runs:
        assert set(run.per_label) == {"even", "prime", ">=5", "closed_loop"}
        for label, values in run.per_label.items():
            prevalence = run.test_targets[:, list(run.per_label).index(label)].mean()
            assert values["average_precision"] > prevalence + 0.2, (label, values)
        assert run.metrics["roc_auc_micro"] > 0.8
    assert len(data["per_label"]) == 4 and len(data["per_label"][0]["thresholds"]) == 4
    # Iterative stratification: every label's prevalence in each part close to the whole's.
    assert "iterative stratification" in (tmp_path / "report" / "report.md").read_text()


def test_multiclass_end_to_end(tmp_path):
    config = CompareConfig(data="digits", **TINY)
    result = run_compare(config)
    assert result.task == "multiclass" and result.columns == ("accuracy", "macro_f1", "nll", "ece")
    assert [s.label for s in result.losses] == ["ce", "ce:weight=auto", "softmax_focal", "poly1"]
    _check_files_after_write(tmp_path, result)
    for run in result.runs:
        assert run.metrics["accuracy"] > 0.7 and run.metrics["macro_f1"] > 0.7  # chance: 0.1
        assert run.metrics["nll"] < np.log(10)
    weighted = next(r for r in result.runs if r.loss == "ce:weight=auto")
    assert weighted.auto.startswith("weight=[")


def test_default_binary_losses_resolve_auto_from_the_training_split():
    config = CompareConfig(data="digits-imbalanced", **{**TINY, "seeds": 1, "max_epochs": 2})
    result = run_compare(config)
    assert [s.label for s in result.losses] == ["bce", "bce:pos_weight=auto", "focal", "asl"]
    from crossent.compare.splits import stratified_split

    run = next(r for r in result.runs if r.loss == "bce:pos_weight=auto")
    y_train = result.dataset.y[stratified_split("binary", result.dataset.y, config.split, 0).train]
    positives = y_train.sum()
    assert run.auto == f"pos_weight={(len(y_train) - positives) / positives:.3g}"


def test_same_seed_same_numbers_and_losses_share_init_and_batches():
    # focal with gamma=0 and no alpha *is* BCE: with the same initial weights and batches it
    # must train to exactly the same model.
    config = CompareConfig(data="breast-cancer", losses=["bce", "focal:gamma=0,alpha=none"], **TINY)
    first = run_compare(config)
    second = run_compare(config)
    assert _metrics(first) == _metrics(second)
    assert [r.history.val_loss for r in first.runs] == [r.history.val_loss for r in second.runs]
    for seed in first.seeds:
        bce, focal = (r for r in first.runs if r.seed == seed)
        assert bce.metrics == focal.metrics
        assert bce.history.train_loss == focal.history.train_loss
        assert np.array_equal(bce.test_probs, focal.test_probs)
    # A different seed gives another split and initialisation.
    other = run_compare(dataclasses.replace(config, first_seed=5))
    assert _metrics(other) != _metrics(first)


def test_progress_reports_every_epoch_and_run():
    events = []
    config = CompareConfig(data="breast-cancer", losses=["bce", "asl"], **{**TINY, "seeds": 1})
    result = run_compare(config, progress=events.append)
    done = [e for e in events if e.done]
    assert [(e.run, e.loss) for e in done] == [(0, "bce"), (1, "asl")]
    epochs = sum(r.history.epochs_run for r in result.runs)
    assert len(events) - len(done) == epochs
    # One seed: the report says that noise cannot be judged instead of flagging anything.
    assert "With one seed, no difference can be told apart from seed noise." in verdict(result)
    assert not any(c.significant for cs in result.comparisons.values() for c in cs)


def test_metric_option_sets_the_primary_metric_and_stopping_follows_the_validation_loss():
    config = CompareConfig(
        data="breast-cancer", losses=["bce"], metric="brier", **{**TINY, "seeds": 1}
    )
    result = run_compare(config)
    assert result.primary == "brier" and result.best() == "bce"
    h = result.runs[0].history
    # The kept epoch is the first lowest validation loss; the metric is only recorded.
    assert h.best_epoch == int(np.argmin(h.val_loss)) + 1
    assert len(h.val_score) == h.epochs_run and all(0 <= v < 0.25 for v in h.val_score)
    with pytest.raises(
        CompareError, match=r"`--metric` to be one of average_precision.*'accuracy'"
    ):
        run_compare(dataclasses.replace(config, metric="accuracy"))


def test_runs_stop_when_the_validation_loss_has_flattened(tmp_path):
    config = CompareConfig(
        data="breast-cancer", losses=["bce", "asl"], seeds=2, hidden=(16,), patience=3
    )
    result = run_compare(config)
    for run in result.runs:
        h = run.history
        assert h.flattened and h.epochs_run - h.best_epoch == config.patience
        assert h.val_loss[h.best_epoch - 1] == min(h.val_loss)
        assert min(h.val_loss[h.best_epoch :]) >= h.val_loss[h.best_epoch - 1]
    assert "Warning" not in verdict(result)
    # Cut off before the validation loss flattens: the report says so, run by run.
    cut = run_compare(dataclasses.replace(config, max_epochs=2, patience=5))
    assert all(not r.history.flattened and r.history.epochs_run == 2 for r in cut.runs)
    text = verdict(cut)
    assert (
        "Warning: 4 of 4 runs stopped at the 2-epoch limit before their validation loss "
        "flattened (bce seeds 0, 1; asl seeds 0, 1)" in text
    )
    write_report(cut, tmp_path)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {r["val_loss_flattened"] for r in rows} == {"False"}
    assert "Warning: 4 of 4 runs" in (tmp_path / "report.md").read_text()


def test_verdict_says_which_loss_to_use_for_what():
    binary = run_compare(CompareConfig(data="breast-cancer", **TINY))
    lines = verdict(binary).split("\n")
    assert lines[0].startswith("On breast-cancer (binary, 569 samples, 30 features;")
    assert lines[0].endswith("over 2 seeds:")
    assert [line.split(" (")[0] for line in lines[1:4]] == [
        "- **To rank** samples, most likely positive first",
        "- **To decide** yes or no at a threshold",
        "- **For calibrated probabilities**",
    ]
    ranking = lines[1]
    best = binary.best("average_precision")
    assert f"**{best}** (AP {binary.summary[best]['average_precision'].mean:.3f})" in ranking
    assert lines[-1].startswith("Settings: MLP 30-16-1 (ReLU), AdamW (lr 0.003")
    multiclass = run_compare(
        CompareConfig(data="digits-lt", losses=["ce", "ce:weight=auto"], **TINY)
    )
    lines = verdict(multiclass).split("\n")
    assert "training set of 10 classes from 94 (class '0') to 9 (class '9') samples" in lines[0]
    assert lines[1].startswith("- **To predict the class** (macro-F1, accuracy): ")
    assert lines[2].startswith("- **For calibrated probabilities** (NLL, ECE): ")
    assert (
        "the data set's own training set; the other rows split 0.5/0.5 validation/test" in lines[-1]
    )
    assert multiclass.splits[0] == {"train": 380, "val": 400, "test": 400}


def test_loss_spec_errors():
    with pytest.raises(
        CompareError, match=r"Loss 'focal' .* is a binary loss, but the data is multi-class"
    ):
        parse_losses(["focal"], "multiclass")
    with pytest.raises(CompareError, match=r"sets 'reduction', which compare chooses itself"):
        parse_losses(["bce:reduction=sum"], "binary")
    with pytest.raises(CompareError, match=r"Loss 'bce' is given twice"):
        parse_losses(["bce", "BCE"], "binary")
    with pytest.raises(CompareError, match=r"In `--loss hinge`: Unknown loss 'hinge'"):
        parse_losses(["hinge"], "binary")
    with pytest.raises(CompareError, match=r"Unknown option 'gama' for loss 'focal'"):
        parse_losses(["focal:gama=1"], "binary")


def test_auto_errors():
    from crossent.compare.losses import resolve_auto

    setups = parse_losses(["focal:alpha=auto"], "multilabel")
    with pytest.raises(CompareError, match=r"alpha=auto needs a single label"):
        resolve_auto(setups, "multilabel", np.eye(4)[np.arange(12) % 4], 4)
    setups = parse_losses(["asl:clip=auto"], "binary")
    with pytest.raises(CompareError, match=r"clip=auto is not defined for this loss"):
        resolve_auto(setups, "binary", np.ones((4, 1)), 1)
    setups = parse_losses(["focal:alpha=auto"], "binary")
    resolve_auto(setups, "binary", np.array([[1.0], [0.0], [0.0], [0.0]]), 1)
    assert setups[0].resolved["alpha"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "field,value,error",
    [
        ("seeds", 0, r"`--seeds` to be an integer >= 1, but got 0"),
        ("hidden", (16, 0), r"`--hidden` to be positive layer widths"),
        ("dropout", 1.0, r"`--dropout` to be in \[0, 1\), but got 1.0"),
        ("lr", 0.0, r"`--lr` to be > 0"),
        ("split", (0.5, 0.3, 0.3), r"`--split` fractions to sum to 1"),
        ("device", "tpu", r"`--device` to be auto, cpu or cuda, but got 'tpu'"),
    ],
)
def test_config_errors(field, value, error):
    config = dataclasses.replace(
        CompareConfig(data="breast-cancer", losses=["bce"]), **{field: value}
    )
    with pytest.raises(CompareError, match=error):
        run_compare(config)


def test_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    config = CompareConfig(
        data="breast-cancer",
        losses=["focal:gamma=1"],
        tensorboard=str(tmp_path / "tb"),
        **{**TINY, "seeds": 1},
    )
    run_compare(config)
    events = list((tmp_path / "tb" / "focal_gamma=1" / "seed0").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(CompareError, match=r"needs the tensorboard package.*pip install"):
        run_compare(config)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------

CLI_TINY = [
    "--seeds",
    "2",
    "--epochs",
    "8",
    "--patience",
    "3",
    "--hidden",
    "16",
    "--batch-size",
    "64",
    "--lr",
    "0.01",
]


def test_cli_csv_prints_table_and_writes_report(tmp_path):
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    path = tmp_path / "cancer.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(10)), "id", "diagnosis"])
        for i, (x, t) in enumerate(zip(bunch.data[:, :10], bunch.target)):
            writer.writerow([*x, f"p{i}", "benign" if t else "malignant"])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--csv",
            str(path),
            "--target",
            "diagnosis",
            "--drop",
            "id",
            "--loss",
            "bce",
            "--loss",
            "focal:gamma=2,alpha=0.5",
            "--out",
            str(out),
            *CLI_TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "focal:gamma=2,alpha=0.5" in result.output and "AP ↑" in result.output
    assert "positive class 'malignant'" in (out / "report.md").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and all(float(r["average_precision"]) > 0.8 for r in rows)


def test_cli_quiet_prints_nothing(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--data",
            "breast-cancer",
            "--loss",
            "bce",
            "--quiet",
            "--out",
            str(tmp_path),
            *CLI_TINY,
        ],
    )
    assert result.exit_code == 0 and result.output == ""
    assert (tmp_path / "report.html").is_file()


@pytest.mark.parametrize(
    "args,error",
    [
        (["--csv", "missing.csv", "--target", "y"], "`--csv` to be a readable file"),
        (["--data", "mnist"], "`--data` to be one of"),
        (["--loss", "bce:pos_weight"], "Expected `option=value`"),
        (["--hidden", "16,x"], "`--hidden` to be comma-separated integers"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, args, error):
    result = CliRunner().invoke(app, ["compare", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert error in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("data", ["breast-cancer", "digits-multilabel"])
def test_pr_figure_ap_is_the_tables_and_legends_cover_no_curve(data):
    from crossent.compare.figures import pr_figure

    config = CompareConfig(data=data, losses=["bce", "focal"], **{**TINY, "max_epochs": 3})
    result = run_compare(config)
    fig = pr_figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(panels) == (1 if data == "breast-cancer" else 5)
    for ax in panels:
        legend = ax.get_legend()
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    labels = [t.get_text() for t in panels[-1].get_legend().get_texts()]
    # The last panel is the binary panel or the micro one: its AP is the table's, digit by digit.
    column = "average_precision" if data == "breast-cancer" else "average_precision_micro"
    for spec, label in zip(result.losses, labels):
        table = result.summary[spec.label][column].mean
        assert label == f"{spec.label}: AP {table:.3f} (mean of seeds)"
    if data == "digits-multilabel":  # per-label panels: the per-label table of the report
        first = panels[0].get_legend().get_texts()[0].get_text()
        runs = result.runs_of("bce")
        mean = sum(r.per_label["even"]["average_precision"] for r in runs) / len(runs)
        assert first == f"bce: AP {mean:.3f} (mean of seeds)"
    assert "AP: as in the report's tables" in fig._suptitle.get_text()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_cli_default_data_follows_the_losses(tmp_path):
    # No --data: Caravan for binary losses, the long-tailed digits for multi-class ones.
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "--loss",
            "ce",
            "--loss",
            "poly1",
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["dataset"]["name"] == "digits-lt" and data["dataset"]["task"] == "multiclass"
    assert CompareConfig().data_name() == "caravan"
    assert CompareConfig(losses=["bce", "ce"]).data_name() == "caravan"  # the error says why
