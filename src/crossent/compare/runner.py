"""The comparison grid: for each seed, one split and one initialisation; for each loss, one
training run from them; then test metrics, summaries over seeds and paired comparisons.

Two entry points share the grid: :func:`run_compare` here (the command line's comparison: a
built-in data set or a CSV file, split and standardised per seed, and a small MLP), and
:func:`crossent.compare.custom.compare_models` (your model on your data). Both return a
:class:`CompareResult`, which :func:`crossent.compare.report.write_report` writes out.
"""

from __future__ import annotations

import math
import platform
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crossent.compare.data import (
    DEFAULT_DATA,
    CompareError,
    Dataset,
    load_dataset,
)
from crossent.compare.distributed import (
    DistInfo,
    setup_distributed,
    teardown_distributed,
)
from crossent.compare.evaluate import evaluate, metric_columns, primary_metric, score
from crossent.compare.losses import LossSetup, parse_losses, resolve_auto
from crossent.compare.model import build_mlp, describe_mlp
from crossent.compare.splits import check_fractions, standardize, stratified_split
from crossent.compare.stats import Comparison, Summary, compare_to_best, summarize
from crossent.compare.train import (
    History,
    LoaderData,
    TrainData,
    TrainSettings,
    predict,
    predict_tensors,
    train_model,
)

__all__ = ["CompareConfig", "CompareResult", "Progress", "RunResult", "run_compare"]


@dataclass
class CompareConfig:
    """Everything a comparison depends on (the command line's options).

    ``data=None`` is the default data: ``caravan``, or ``digits-lt`` when every loss in
    ``losses`` is a multi-class (softmax) loss.
    """

    data: str | None = None
    csv: str | None = None
    targets: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    positive: str | None = None
    drop_text: bool = False
    missing: str = "error"
    imbalance: float | None = None
    data_seed: int = 0
    losses: list[str] = field(default_factory=list)
    seeds: int = 5
    first_seed: int = 0
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # the training settings, defaults from TrainSettings (the one place they are set)
    hidden: tuple[int, ...] = TrainSettings.hidden
    dropout: float = TrainSettings.dropout
    lr: float = TrainSettings.lr
    weight_decay: float = TrainSettings.weight_decay
    batch_size: int | None = TrainSettings.batch_size
    max_epochs: int = TrainSettings.max_epochs
    patience: int = TrainSettings.patience
    metric: str | None = None
    device: str = "auto"
    threads: int = 1
    tensorboard: str | None = None

    def settings(self) -> TrainSettings:
        values = {f.name: getattr(self, f.name) for f in fields(TrainSettings)}
        return TrainSettings(**{**values, "hidden": tuple(self.hidden)})

    def data_name(self) -> str:
        """The built-in data set this configuration reads (``csv`` aside)."""
        if self.data is not None:
            return self.data
        from crossent.registry import parse_loss_spec

        families = set()
        for text in self.losses:
            try:
                families.add(parse_loss_spec(text)[0].family)
            except ValueError:
                families.add("?")  # parse_losses reports it with the data's task
        return DEFAULT_DATA["multiclass" if families == {"softmax"} else "binary"]

    def validate(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CompareError(f"Expected `--{name}` to be an integer >= 1, but got {value!r}.")

        positive_int("seeds", self.seeds)
        if self.batch_size is not None:
            positive_int("batch-size", self.batch_size)
        positive_int("epochs", self.max_epochs)
        positive_int("patience", self.patience)
        positive_int("threads", self.threads)
        if not self.hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden
        ):
            raise CompareError(
                f"Expected `--hidden` to be positive layer widths (e.g. 64 or 128,64), but got "
                f"{self.hidden!r}."
            )
        for name, value, high in (("dropout", self.dropout, 1.0), ("lr", self.lr, None)):
            if not math.isfinite(value) or value < 0 or (high is not None and value >= high):
                bound = f"in [0, {high:g})" if high is not None else "> 0"
                raise CompareError(f"Expected `--{name}` to be {bound}, but got {value!r}.")
        if self.lr <= 0:
            raise CompareError(f"Expected `--lr` to be > 0, but got {self.lr!r}.")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise CompareError(
                f"Expected `--weight-decay` to be >= 0, but got {self.weight_decay!r}."
            )
        check_fractions(self.split)
        if self.tensorboard is not None:
            try:
                import tensorboard  # noqa: F401
            except ImportError as exc:
                raise CompareError(
                    "`--tensorboard` needs the tensorboard package, which is not installed: "
                    "pip install 'crossent[tensorboard]' (or pip install tensorboard)."
                ) from exc


@dataclass
class RunResult:
    """One loss trained under one seed."""

    loss: str
    seed: int
    metrics: dict[str, float]
    per_label: dict[str, dict[str, float]]
    thresholds: list[float]
    auto: str
    history: History
    test_probs: np.ndarray
    test_targets: np.ndarray

    def row(self, columns) -> dict:
        row = {"loss": self.loss, "seed": self.seed}
        row.update({c: self.metrics[c] for c in columns})
        row.update(
            {
                "best_epoch": self.history.best_epoch,
                "epochs_run": self.history.epochs_run,
                "val_loss_flattened": self.history.flattened,
                "train_seconds": round(self.history.seconds, 3),
            }
        )
        return row


@dataclass
class CompareResult:
    """A whole comparison: every run, the summaries over seeds, the paired comparisons, and
    what the report needs to say how they were obtained.

    Attributes:
        settings: the training settings every run used (the batch size resolved).
        split: how the data was divided, in words (``"stratified 0.6/0.2/0.2 ..."``).
        optimizer: the optimizer and its settings, in words.
    """

    config: CompareConfig
    dataset: Dataset
    losses: list[LossSetup]
    seeds: list[int]
    columns: tuple[str, ...]
    primary: str
    runs: list[RunResult]
    splits: dict[int, dict[str, int]]
    summary: dict[str, dict[str, Summary]]
    comparisons: dict[str, list[Comparison]]
    model: str
    world_size: int
    device: str
    seconds: float
    environment: dict[str, str]
    settings: TrainSettings = field(default_factory=TrainSettings)
    split: str = ""
    optimizer: str = ""

    @property
    def task(self) -> str:
        return self.dataset.task

    def rows(self) -> list[dict]:
        return [r.row(self.columns) for r in self.runs]

    def runs_of(self, loss: str) -> list[RunResult]:
        return [r for r in self.runs if r.loss == loss]

    def best(self, metric: str | None = None) -> str:
        from crossent.compare.stats import best_loss

        metric = metric or self.primary
        return best_loss({k: v[metric].mean for k, v in self.summary.items()}, metric)

    def unflattened(self) -> list[RunResult]:
        """Runs that hit ``max_epochs`` while their validation loss was still falling."""
        return [r for r in self.runs if not r.history.flattened]


@dataclass
class Progress:
    """What the progress callback receives after each epoch and at the end of each run."""

    run: int  # 0-based position in the grid
    runs: int
    seed: int
    loss: str
    epoch: int
    max_epochs: int
    done: bool  # the run finished (early stopping or the last epoch)


def tensorboard_dir(root: str | Path, loss: str, seed: int) -> Path:
    """``root/<loss>/seed<seed>`` with the spec made safe for a folder name.

    >>> tensorboard_dir("tb", "focal:gamma=2,alpha=0.25", 1).as_posix()
    'tb/focal_gamma=2_alpha=0.25/seed1'
    """
    return Path(root) / re.sub(r"[^A-Za-z0-9=._-]+", "_", loss) / f"seed{seed}"


# --------------------------------------------------------------------------------------------
# The grid, shared by both entry points
# --------------------------------------------------------------------------------------------


@dataclass
class _SeedData:
    """What one seed trains and evaluates on."""

    train: TrainData | LoaderData
    test: tuple[torch.Tensor, torch.Tensor] | Iterable
    y_train: np.ndarray  # targets in the metrics' layout, for `auto` options
    sizes: dict[str, int]
    prepare: Callable | None = None  # puts a DataLoader's targets in the losses' layout


def _targets_numpy(task: str, targets: torch.Tensor) -> np.ndarray:
    """(N, L) float64 0/1 for binary / multi-label tasks, (N,) int64 class indices otherwise."""
    t = targets.detach().cpu()
    return t.long().numpy() if task == "multiclass" else t.double().numpy()


def _evaluate_on(
    model: nn.Module, data: _SeedData, task: str, label_names: list[str], device
) -> tuple:
    model.eval()
    with torch.no_grad():
        val_logits, val_targets = data.train.validation_logits(model)
    if isinstance(data.test, tuple):
        test_logits, test_targets = predict_tensors(model, *data.test)
    else:
        test_logits, test_targets = predict(model, data.test, device, data.prepare)
    y_test = _targets_numpy(task, test_targets)
    ev = evaluate(
        task,
        y_test,
        test_logits,
        y_val=_targets_numpy(task, val_targets),
        val_logits=val_logits,
        label_names=label_names,
    )
    return ev, y_test


def _run_grid(
    *,
    task: str,
    n_outputs: int,
    label_names: list[str],
    losses: list[LossSetup],
    seeds: list[int],
    seed_data: Callable[[int], _SeedData],
    build_model: Callable[[int], nn.Module],
    settings: TrainSettings,
    primary: str,
    dist: DistInfo,
    progress: Callable[[Progress], None] | None,
    tensorboard: str | None,
    optimizer: Callable | None = None,
) -> tuple[list[RunResult], dict[int, dict[str, int]]]:
    """Train every loss under every seed; evaluate each run on the test data."""
    writer_cls = None
    if tensorboard is not None and dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer_cls = SummaryWriter
    runs: list[RunResult] = []
    splits: dict[int, dict[str, int]] = {}
    total = len(seeds) * len(losses)

    def monitor(logits: torch.Tensor, targets: torch.Tensor) -> float:
        return score(task, _targets_numpy(task, targets), logits, metric=primary)

    for seed in seeds:
        data = seed_data(seed)
        splits[seed] = data.sizes
        resolve_auto(losses, task, data.y_train, n_outputs)
        init = build_model(seed).state_dict()
        for loss in losses:
            k = len(runs)
            model = build_model(seed)
            model.load_state_dict(init)
            model.to(dist.device)

            def on_epoch(epoch: int, history: History, k=k, seed=seed, loss=loss) -> None:
                if progress is not None and dist.is_main:
                    progress(
                        Progress(k, total, seed, loss.label, epoch, settings.max_epochs, False)
                    )

            writer = None
            if writer_cls is not None:
                writer = writer_cls(log_dir=str(tensorboard_dir(tensorboard, loss.label, seed)))
            try:
                history = train_model(
                    model,
                    loss,
                    data.train,
                    settings,
                    seed=seed,
                    monitor=monitor,
                    dist=dist,
                    on_epoch=on_epoch,
                    writer=writer,
                    metric_name=primary,
                    optimizer=optimizer,
                )
            finally:
                if writer is not None:
                    writer.close()
            ev, y_test = _evaluate_on(model, data, task, label_names, dist.device)
            runs.append(
                RunResult(
                    loss=loss.label,
                    seed=seed,
                    metrics=ev.metrics,
                    per_label=ev.per_label,
                    thresholds=ev.thresholds,
                    auto=loss.auto_text(),
                    history=history,
                    test_probs=ev.probs,
                    test_targets=y_test,
                )
            )
            if progress is not None and dist.is_main:
                progress(
                    Progress(
                        k, total, seed, loss.label, history.epochs_run, settings.max_epochs, True
                    )
                )
    return runs, splits


def _result(
    *,
    config: CompareConfig,
    dataset: Dataset,
    losses: list[LossSetup],
    seeds: list[int],
    columns: tuple[str, ...],
    primary: str,
    runs: list[RunResult],
    splits: dict[int, dict[str, int]],
    model: str,
    dist: DistInfo,
    start: float,
    settings: TrainSettings,
    split: str,
    optimizer: str,
    threads: int,
) -> CompareResult:
    per_seed = {
        c: {s.label: [r.metrics[c] for r in runs if r.loss == s.label] for s in losses}
        for c in columns
    }
    return CompareResult(
        config=config,
        dataset=dataset,
        losses=losses,
        seeds=seeds,
        columns=columns,
        primary=primary,
        runs=runs,
        splits=splits,
        summary={s.label: {c: summarize(per_seed[c][s.label]) for c in columns} for s in losses},
        comparisons={c: compare_to_best(per_seed[c], c) for c in columns},
        model=model,
        world_size=dist.world_size,
        device=str(dist.device),
        seconds=time.perf_counter() - start,
        environment={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "threads": str(threads),
        },
        settings=settings,
        split=split,
        optimizer=optimizer,
    )


def _check_metric(metric: str | None, task: str, columns: tuple[str, ...]) -> str:
    primary = metric or primary_metric(task)
    if primary not in columns:
        raise CompareError(
            f"Expected `--metric` to be one of {', '.join(columns)} for {task} data, but "
            f"got {primary!r}."
        )
    return primary


# --------------------------------------------------------------------------------------------
# The command line's comparison: built-in data or CSV, an MLP
# --------------------------------------------------------------------------------------------


def _split_text(config: CompareConfig, dataset: Dataset) -> str:
    f = config.split
    if dataset.train_rows is not None:
        val = f[1] / (f[1] + f[2])
        return (
            f"the data set's own training set; the other rows split {val:.2g}/{1 - val:.2g} "
            f"validation/test, stratified"
        )
    return f"stratified {'/'.join(f'{x:g}' for x in f)} train/validation/test split"


def run_compare(
    config: CompareConfig,
    *,
    dataset: Dataset | None = None,
    progress: Callable[[Progress], None] | None = None,
    dist: DistInfo | None = None,
) -> CompareResult:
    """Run the whole comparison. Under ``torchrun`` every process must call this; all return
    the same result (only rank 0 should write it).

    Args:
        config: the options.
        dataset: a data set already loaded (``config``'s data options are then ignored).
        progress: called after every epoch of every run (rank 0 only).
        dist: an explicit process-group description; by default the one ``torchrun`` set up.
    """
    start = time.perf_counter()
    config.validate()
    if dataset is None:
        dataset = load_dataset(
            config.data_name() if config.csv is None else None,
            csv_path=config.csv,
            targets=config.targets,
            drop=config.drop,
            positive=config.positive,
            drop_text=config.drop_text,
            missing=config.missing,
            imbalance=config.imbalance,
            data_seed=config.data_seed,
        )
    losses = parse_losses(config.losses, dataset.task)
    columns = metric_columns(dataset.task, dataset.n_outputs)
    primary = _check_metric(config.metric, dataset.task, columns)
    seeds = [config.first_seed + k for k in range(config.seeds)]
    in_features = dataset.X.shape[1]

    def split_of(seed: int):
        return stratified_split(
            dataset.task, dataset.y, config.split, seed, train_rows=dataset.train_rows
        )

    settings = config.settings().resolved(len(split_of(seeds[0]).train))

    def build_model(seed: int) -> nn.Module:
        return build_mlp(
            in_features,
            dataset.n_outputs,
            hidden=settings.hidden,
            dropout=settings.dropout,
            seed=seed,
        )

    own = dist is None
    dist = dist or setup_distributed(config.device)

    def seed_data(seed: int) -> _SeedData:
        split = split_of(seed)
        X, _, _ = standardize(dataset.X, split.train)
        Xt = torch.as_tensor(X, dtype=torch.float32, device=dist.device)
        dtype = torch.long if dataset.task == "multiclass" else torch.float32
        yt = torch.as_tensor(dataset.y, dtype=dtype, device=dist.device)
        idx = {
            p: torch.as_tensor(getattr(split, p), device=dist.device)
            for p in ("train", "val", "test")
        }
        return _SeedData(
            train=TrainData(Xt[idx["train"]], yt[idx["train"]], Xt[idx["val"]], yt[idx["val"]]),
            test=(Xt[idx["test"]], yt[idx["test"]]),
            y_train=dataset.y[split.train],
            sizes=split.sizes(),
        )

    # The MLP's matrices are tiny: one thread is as fast, and several slow each other (and
    # everything else) down badly when the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        runs, splits = _run_grid(
            task=dataset.task,
            n_outputs=dataset.n_outputs,
            label_names=dataset.label_names,
            losses=losses,
            seeds=seeds,
            seed_data=seed_data,
            build_model=build_model,
            settings=settings,
            primary=primary,
            dist=dist,
            progress=progress,
            tensorboard=config.tensorboard,
        )
    finally:
        torch.set_num_threads(threads)
        if own:
            teardown_distributed(dist)
    return _result(
        config=config,
        dataset=dataset,
        losses=losses,
        seeds=seeds,
        columns=columns,
        primary=primary,
        runs=runs,
        splits=splits,
        model=describe_mlp(in_features, dataset.n_outputs, settings.hidden, settings.dropout),
        dist=dist,
        start=start,
        settings=settings,
        split=_split_text(config, dataset),
        optimizer=f"AdamW (lr {settings.lr:g}, weight decay {settings.weight_decay:g})",
        threads=config.threads,
    )


def config_dict(config: CompareConfig) -> dict:
    d = asdict(config)
    d["split"] = list(config.split)
    d["hidden"] = list(config.hidden)
    return d
