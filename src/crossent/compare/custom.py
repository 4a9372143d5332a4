"""Comparing losses on your own model and data: :func:`compare_models`.

The same grid as ``crossent compare`` (:mod:`crossent.compare.runner`) -- every loss from the
same initial weights, on the same batches, over several seeds, with the same stopping rule,
metrics and paired comparisons -- but the model is yours (any ``nn.Module`` a factory builds)
and so are the train / validation / test data: tensors of any shape (images, sequences) or
DataLoaders.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from crossent.compare.data import CompareError, Dataset, check_min_counts
from crossent.compare.distributed import DistInfo, resolve_device
from crossent.compare.evaluate import metric_columns
from crossent.compare.losses import parse_losses
from crossent.compare.runner import (
    CompareConfig,
    CompareResult,
    Progress,
    _check_metric,
    _result,
    _run_grid,
    _SeedData,
    _targets_numpy,
)
from crossent.compare.train import EVAL_CHUNK, LoaderData, TrainData, TrainSettings

__all__ = ["compare_models"]

# One part of the data: (inputs, targets) tensors, or a DataLoader of such batches.
Part = tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]


TASK_WORDS = {
    "binary": "binary (one 0/1 label)",
    "multilabel": "multi-label (several 0/1 labels)",
    "multiclass": "multi-class (one class index per sample)",
}


def _as_source(data, part: str):
    """``(inputs, targets)`` tensors, or an iterable of such batches (a DataLoader)."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise CompareError(
                f"Expected the inputs and targets of `{part}` to have the same number of "
                f"samples, but got {inputs.shape[0]} and {targets.shape[0]}."
            )
        if inputs.shape[0] == 0:
            raise CompareError(f"Expected `{part}` to hold samples, but it is empty.")
        return inputs, targets
    if isinstance(data, (str, bytes, os.PathLike, torch.Tensor, np.ndarray)) or not isinstance(
        data, Iterable
    ):
        raise CompareError(
            f"Expected `{part}` to be (inputs, targets) tensors or a DataLoader of (inputs, "
            f"targets) batches, but got {type(data).__name__}."
        )
    return data


def _collect(source, part: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """All targets of a source, and the shape of one input."""
    if isinstance(source, tuple):
        return source[1], tuple(source[0].shape[1:])
    targets, shape = [], None
    for batch in source:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise CompareError(
                f"Expected the DataLoader `{part}` to yield (inputs, targets) pairs, but it "
                f"yielded {type(batch).__name__}."
            )
        targets.append(batch[1])
        shape = shape or tuple(batch[0].shape[1:])
    if not targets:
        raise CompareError(f"Expected the DataLoader `{part}` to yield batches, but it is empty.")
    return torch.cat(targets), shape or ()


def _infer_task(targets: torch.Tensor, task: str | None) -> str:
    if task is not None:
        if task not in TASK_WORDS:
            raise CompareError(
                f"Expected `task` to be one of {', '.join(TASK_WORDS)}, but got {task!r}."
            )
        return task
    if targets.dtype == torch.bool or targets.is_floating_point():
        return "binary" if targets.dim() == 1 or targets.shape[1] == 1 else "multilabel"
    if targets.dim() == 1:
        return "multiclass"
    raise CompareError(
        f"Expected targets of shape (N,) with class indices (multi-class), or floats of shape "
        f"(N,) or (N, L) with 0/1 labels (binary, multi-label), but got {targets.dtype} of "
        f"shape {tuple(targets.shape)}. Pass `task=` if the dtype misleads."
    )


def _prepare_targets(task: str) -> Callable[[torch.Tensor, torch.Tensor], tuple]:
    """Targets in the losses' layout: (N, L) float for binary / multi-label, (N,) int64."""

    def prepare(inputs: torch.Tensor, targets: torch.Tensor):
        if task == "multiclass":
            return inputs, targets.long().reshape(-1)
        targets = targets.float()
        return inputs, targets.reshape(-1, 1) if targets.dim() == 1 else targets

    return prepare


def compare_models(
    model: Callable[[], nn.Module],
    train: Part,
    val: Part,
    test: Part,
    *,
    losses: Sequence[str] = (),
    seeds: int = 5,
    first_seed: int = 0,
    task: str | None = None,
    label_names: Sequence[str] | None = None,
    name: str = "your data",
    description: str = "",
    lr: float = TrainSettings.lr,
    weight_decay: float = TrainSettings.weight_decay,
    batch_size: int | None = TrainSettings.batch_size,
    max_epochs: int = TrainSettings.max_epochs,
    patience: int = TrainSettings.patience,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    metric: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> CompareResult:
    """Compare losses on your model and your data: the same grid, result and report as
    ``crossent compare``.

    Each seed builds one model from ``model()`` (its initial weights drawn from the seed) and
    trains a copy of it with every loss, on the same batches in the same order; the weights of
    the epoch with the lowest validation loss are kept, and the test metrics computed from
    them. The splits are yours and the same under every seed: seeds vary the initial weights,
    the batch order and dropout. One process (``torchrun`` is for the command line's MLP).

    Args:
        model: builds a fresh, untrained model returning logits: ``(batch, L)`` for L 0/1
            labels (L = 1 for binary data), ``(batch, K)`` for K classes.
        train: the training data: a pair ``(inputs, targets)`` of tensors -- inputs of any
            shape ``(N, ...)`` -- or a DataLoader yielding such pairs. Targets: float 0/1 of
            shape ``(N,)`` or ``(N, L)`` for binary / multi-label data, int64 class indices
            ``(N,)`` for multi-class data. With tensors, batches of ``batch_size`` rows are
            drawn in a seeded order; a DataLoader's own batches are used and its shuffling
            re-seeded each epoch.
        val: the validation data (stopping, and the F1 thresholds), as ``train``; a
            DataLoader should not shuffle.
        test: the test data the metrics are computed on, as ``val``.
        losses: loss specs as on the command line (``"bce:pos_weight=auto"``); default: the
            task's four defaults. ``auto`` values come from the training targets.
        seeds: how many seeds, from ``first_seed`` on.
        task: ``"binary"``, ``"multilabel"`` or ``"multiclass"``; inferred from the targets'
            dtype and shape when ``None``.
        label_names: the name of each label (or class), for the report.
        name: what the report calls the data.
        description: what the report says about the data.
        lr: AdamW's learning rate (ignored when ``optimizer`` is given).
        weight_decay: AdamW's weight decay (ignored when ``optimizer`` is given).
        batch_size: rows per step with tensor data (a DataLoader has its own); ``None``:
            about 16 steps per epoch (:func:`crossent.compare.train.auto_batch_size`).
        max_epochs: the most epochs of one run.
        patience: how many epochs without a lower validation loss end a run.
        optimizer: builds the optimizer from the model's parameters, e.g.
            ``lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)``.
        metric: the report's primary metric (default: average precision, or macro-F1 for
            multi-class data).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        threads: CPU threads for the comparison (``None``: torch's current setting); one is
            fastest for a small model on a shared machine.
        progress: called after every epoch of every run with a :class:`Progress`.

    Returns:
        A :class:`CompareResult`; write it out with
        :func:`crossent.compare.report.write_report`.
    """
    start = time.perf_counter()
    config = CompareConfig(
        data=name,
        losses=list(losses),
        seeds=seeds,
        first_seed=first_seed,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        max_epochs=max_epochs,
        patience=patience,
        metric=metric,
        device=device,
    )
    config.validate()
    if isinstance(model, nn.Module):
        raise CompareError(
            f"Expected `model` to be a function that builds a new model, but got a "
            f"{type(model).__name__} instance: pass a factory (e.g. `lambda: "
            f"{type(model).__name__}(...)`), so that every seed starts from fresh weights."
        )
    if not callable(model):
        raise CompareError(
            f"Expected `model` to be a function that builds a new model (a class, a function "
            f"or a lambda), but got {type(model).__name__}."
        )
    dev = resolve_device(device)
    data = _UserData.build(train, val, test, task=task, label_names=label_names, device=dev)
    dataset = Dataset(
        name=name,
        description=description
        or f"{name}: {TASK_WORDS[data.task]} data, inputs of shape {data.input_shape}.",
        task=data.task,
        X=None,
        y=np.concatenate([data.y[part] for part in ("train", "val", "test")]),
        label_names=data.label_names,
        train_rows=np.arange(len(data.y["train"])),  # y holds train, then val, then test
        inputs=f"inputs of shape {data.input_shape}",
    )
    check_min_counts(dataset, minimum=1)
    setups = parse_losses(config.losses, data.task)
    columns = metric_columns(data.task, dataset.n_outputs)
    primary = _check_metric(metric, data.task, columns)
    seed_list = [first_seed + k for k in range(seeds)]

    def build_model(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = model()
        if not isinstance(built, nn.Module):
            raise CompareError(
                f"Expected `model()` to return a torch.nn.Module, but it returned "
                f"{type(built).__name__}."
            )
        return built

    probe = build_model(seed_list[0])
    data.check_outputs(probe, dataset.n_outputs)
    train_source = data.sources["train"]
    if isinstance(train_source, tuple):
        settings = config.settings().resolved(len(data.y["train"]))
    else:  # the DataLoader's own batches; its batch size, where it has one, for the report
        config.batch_size = getattr(train_source, "batch_size", None)
        settings = config.settings()
    default_threads = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise CompareError(f"Expected `threads` to be an integer >= 1, but got {threads!r}.")
        torch.set_num_threads(threads)
    try:
        runs, splits = _run_grid(
            task=data.task,
            n_outputs=dataset.n_outputs,
            label_names=dataset.label_names,
            losses=setups,
            seeds=seed_list,
            seed_data=lambda seed: data.seed_data(settings.batch_size or EVAL_CHUNK),
            build_model=build_model,
            settings=settings,
            primary=primary,
            dist=DistInfo(device=dev),
            progress=progress,
            tensorboard=None,
            optimizer=optimizer,
        )
    finally:
        torch.set_num_threads(default_threads)
    sizes = data.sizes()
    n_params = sum(p.numel() for p in probe.parameters())
    return _result(
        config=config,
        dataset=dataset,
        losses=setups,
        seeds=seed_list,
        columns=columns,
        primary=primary,
        runs=runs,
        splits=splits,
        model=f"{type(probe).__name__} ({n_params:,} parameters)",
        dist=DistInfo(device=dev),
        start=start,
        settings=settings,
        split=(
            f"the caller's train/validation/test sets ({sizes['train']}/{sizes['val']}/"
            f"{sizes['test']} samples)"
        ),
        optimizer=(
            f"AdamW (lr {lr:g}, weight decay {weight_decay:g})"
            if optimizer is None
            else f"{type(optimizer(probe.parameters())).__name__} (the caller's optimizer)"
        ),
        threads=threads or default_threads,
    )


@dataclass
class _UserData:
    """The caller's train / validation / test data, checked, targets in the losses' layout."""

    task: str
    sources: dict[str, tuple[torch.Tensor, torch.Tensor] | Iterable]
    y: dict[str, np.ndarray]
    label_names: list[str]
    input_shape: tuple[int, ...]
    device: torch.device
    prepare: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def build(cls, train, val, test, *, task, label_names, device) -> _UserData:
        sources = {
            part: _as_source(d, part)
            for part, d in (("train", train), ("val", val), ("test", test))
        }
        targets, shapes = {}, {}
        for part, source in sources.items():
            targets[part], shapes[part] = _collect(source, part)
        task = _infer_task(targets["train"], task)
        prepare = _prepare_targets(task)
        y = {part: _targets_numpy(task, prepare(t, t)[1]) for part, t in targets.items()}
        if len({v.shape[1:] for v in y.values()}) > 1:
            raise CompareError(
                f"Expected targets of the same shape in train, val and test, but got "
                f"{', '.join(f'{part} {tuple(v.shape)}' for part, v in y.items())}."
            )
        y_all = np.concatenate(list(y.values()))
        if task == "multiclass":
            if y_all.min() < 0:
                raise CompareError(
                    f"Expected class indices >= 0 in the targets, but they hold {y_all.min()}."
                )
            n_outputs = len(label_names) if label_names is not None else int(y_all.max()) + 1
            if y_all.max() >= n_outputs:
                raise CompareError(
                    f"Expected class indices < {n_outputs} (one per label name), but the "
                    f"targets hold {y_all.max()}."
                )
        else:
            if not np.isin(y_all, (0.0, 1.0)).all():
                raise CompareError(
                    "Expected binary / multi-label targets to hold 0 and 1 only, but they hold "
                    f"{sorted(set(np.unique(y_all)) - {0.0, 1.0})[:3]}."
                )
            n_outputs = y_all.shape[1]
        names = [str(k) for k in range(n_outputs)] if label_names is None else list(label_names)
        if len(names) != n_outputs:
            raise CompareError(
                f"Expected {n_outputs} `label_names` (one per label), but got {len(names)}."
            )
        placed = {
            part: prepare(s[0].to(device), s[1].to(device)) if isinstance(s, tuple) else s
            for part, s in sources.items()
        }
        return cls(task, placed, y, names, shapes["train"], device, prepare)

    def sizes(self) -> dict[str, int]:
        return {part: len(v) for part, v in self.y.items()}

    def seed_data(self, batch_size: int) -> _SeedData:
        train, val = self.sources["train"], self.sources["val"]
        if isinstance(train, tuple) and isinstance(val, tuple):
            data: TrainData | LoaderData = TrainData(*train, *val)
        else:  # a DataLoader among them: batches from each, tensors cut into batches
            data = LoaderData(
                _batches(train, batch_size, shuffle=True),
                _batches(val, batch_size, shuffle=False),
                self.device,
                self.prepare,
            )
        return _SeedData(data, self.sources["test"], self.y["train"], self.sizes(), self.prepare)

    def check_outputs(self, model: nn.Module, n_outputs: int) -> None:
        """One forward pass on two training samples: the logits must fit the targets."""
        train = self.sources["train"]
        if isinstance(train, tuple):
            inputs = train[0][:2]
        else:
            inputs = next(iter(train))[0].to(self.device)
        model.to(self.device).eval()
        with torch.no_grad():
            logits = model(inputs)
        expected = (inputs.shape[0], n_outputs)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            got = (
                f"shape {tuple(logits.shape)}"
                if isinstance(logits, torch.Tensor)
                else type(logits).__name__
            )
            what = "class" if self.task == "multiclass" else "label"
            raise CompareError(
                f"Expected the model to return logits of shape (batch, {n_outputs}), one per "
                f"{what} of the {self.task} targets, but for a batch of {inputs.shape[0]} it "
                f"returned {got}."
            )


class _TensorBatches:
    """Tensors as an iterable of ``(inputs, targets)`` batches, like a DataLoader: shuffled
    from torch's global generator (which :class:`LoaderData` seeds before each epoch)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool):
        self.X, self.y, self.batch_size, self.shuffle = X, y, batch_size, shuffle

    def __iter__(self):
        n = self.X.shape[0]
        order = (torch.randperm(n) if self.shuffle else torch.arange(n)).to(self.X.device)
        for begin in range(0, n, self.batch_size):
            rows = order[begin : begin + self.batch_size]
            yield self.X[rows], self.y[rows]


def _batches(source, batch_size: int, *, shuffle: bool):
    """A DataLoader as it is; tensors as :class:`_TensorBatches`."""
    if not isinstance(source, tuple):
        return source
    return _TensorBatches(*source, batch_size, shuffle)
