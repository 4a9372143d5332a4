"""``crossent.compare.compare_models``: your model on your data, tensors of any shape or
DataLoaders, with the grid, result and report of ``crossent compare``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from crossent.compare import CompareError, compare_models
from crossent.compare.report import verdict, write_report

pytestmark = pytest.mark.slow

# A few epochs of a tiny CNN on a few hundred images, one thread: seconds.
FAST = dict(seeds=2, max_epochs=4, patience=2, lr=3e-3, threads=1)


def _images():
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) images; a fixed train / val / test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts = order[:600], order[600:900], order[900:1200]
    return [(x[p], y[p]) for p in parts]


def tiny_cnn(outputs: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, outputs),
    )


def test_cnn_on_images_multiclass(tmp_path):
    train, val, test = _images()
    result = compare_models(
        tiny_cnn, train, val, test, losses=["ce", "softmax_focal"], name="digit images", **FAST
    )
    assert result.task == "multiclass" and result.columns == ("accuracy", "macro_f1", "nll", "ece")
    assert result.dataset.inputs_text() == "inputs of shape (1, 8, 8)"
    assert result.splits[0] == {"train": 600, "val": 300, "test": 300}
    assert result.model == "Sequential (690 parameters)"
    for run in result.runs:
        assert run.metrics["accuracy"] > 0.5  # chance: 0.1
        assert run.test_targets.shape == (300,) and run.test_probs.shape == (300, 10)
        h = run.history
        assert h.best_epoch == int(np.argmin(h.val_loss)) + 1
    text = verdict(result)
    assert text.startswith("On digit images (multi-class, 1200 samples, inputs of shape (1, 8, 8)")
    assert "**To predict the class** (macro-F1, accuracy)" in text
    assert "the caller's train/validation/test sets (600/300/300 samples)" in text
    assert "batch 32 (about 16 steps per epoch)" in text  # 600 / 16 = 37.5 -> 32
    paths = write_report(result, tmp_path / "report")
    assert "digit images" in paths["report.md"].read_text()


def _binary(parts, digit=0):
    return [(x, (y == digit).float()) for x, y in parts]


def test_dataloaders_give_every_loss_the_same_batches():
    # focal with gamma=0 and no alpha *is* BCE: with the same initial weights and the same
    # batches in the same order, the two must train to the same model -- through DataLoaders
    # whose shuffling the comparison re-seeds each epoch, and with their own generator.
    train, val, test = _binary(_images())
    losses = ["bce", "focal:gamma=0,alpha=none"]
    loaders = [
        DataLoader(TensorDataset(*train), batch_size=64, shuffle=True),
        DataLoader(TensorDataset(*val), batch_size=128),
        DataLoader(TensorDataset(*test), batch_size=128),
    ]
    result = compare_models(lambda: tiny_cnn(1), *loaders, losses=losses, **FAST)
    assert result.task == "binary" and result.dataset.label_names == ["0"]
    for seed in result.seeds:
        bce, focal = (r for r in result.runs if r.seed == seed)
        assert bce.history.train_loss == pytest.approx(focal.history.train_loss, rel=1e-6)
        assert bce.metrics == pytest.approx(focal.metrics, rel=1e-6)
    generator = torch.Generator().manual_seed(123)
    loaders[0] = DataLoader(TensorDataset(*train), batch_size=64, shuffle=True, generator=generator)
    again = compare_models(lambda: tiny_cnn(1), *loaders, losses=losses, **FAST)
    for seed in result.seeds:
        bce, focal = (r for r in again.runs if r.seed == seed)
        assert bce.history.train_loss == pytest.approx(focal.history.train_loss, rel=1e-6)
    # The same loaders give the same numbers twice: nothing depends on the global state.
    torch.manual_seed(999)
    twice = compare_models(lambda: tiny_cnn(1), *loaders, losses=losses, **FAST)
    assert [r.metrics for r in twice.runs] == [r.metrics for r in again.runs]
    # Training tensors beside a validation DataLoader: still shuffled, the same for every loss.
    mixed = compare_models(lambda: tiny_cnn(1), train, loaders[1], test, losses=losses, **FAST)
    for seed in mixed.seeds:
        bce, focal = (r for r in mixed.runs if r.seed == seed)
        assert bce.history.train_loss == pytest.approx(focal.history.train_loss, rel=1e-6)
    assert mixed.runs[0].history.train_loss != again.runs[0].history.train_loss


def test_multilabel_tensors_and_labels():
    parts = _images()
    labels = ["even", "at least 5"]
    multi = [(x, torch.stack([y % 2 == 0, y >= 5], dim=1).float()) for x, y in parts]
    result = compare_models(
        lambda: tiny_cnn(2), *multi, losses=["bce:pos_weight=auto"], label_names=labels, **FAST
    )
    assert result.task == "multilabel" and "average_precision_micro" in result.columns
    assert set(result.runs[0].per_label) == set(labels)
    assert result.runs[0].auto.startswith("pos_weight=[")


@pytest.mark.parametrize(
    "change,error",
    [
        (
            dict(model=lambda: tiny_cnn(3)),
            r"logits of shape \(batch, 10\).*returned shape \(2, 3\)",
        ),
        (dict(model=lambda: "not a model"), r"`model\(\)` to return a torch.nn.Module"),
        (dict(model=tiny_cnn()), r"`model` to be a function that builds a new model"),
        (dict(train=[1, 2, 3]), r"DataLoader `train` to yield \(inputs, targets\) pairs"),
        (dict(val="val.csv"), r"`val` to be \(inputs, targets\) tensors or a DataLoader"),
        (dict(label_names=["a", "b"]), r"class indices < 2 \(one per label name\)"),
        (dict(losses=["bce"]), r"Loss 'bce' .* is a binary loss, but the data is multi-class"),
        (dict(task="regression"), r"`task` to be one of binary, multilabel, multiclass"),
    ],
)
def test_errors(change, error):
    train, val, test = _images()
    args = dict(model=tiny_cnn, train=train, val=val, test=test, seeds=1, max_epochs=1, threads=1)
    args.update(change)
    with pytest.raises(CompareError, match=error):
        compare_models(
            args.pop("model"), args.pop("train"), args.pop("val"), args.pop("test"), **args
        )


def test_mismatched_tensors_and_targets_are_errors():
    train, val, test = _images()
    with pytest.raises(
        CompareError, match=r"inputs and targets of `train` to have the same number"
    ):
        compare_models(tiny_cnn, (train[0], train[1][:-1]), val, test, seeds=1)
    soft = (train[0], torch.full((len(train[1]),), 0.3))
    with pytest.raises(CompareError, match=r"hold 0 and 1 only"):
        compare_models(lambda: tiny_cnn(1), soft, _binary([val])[0], _binary([test])[0], seeds=1)
