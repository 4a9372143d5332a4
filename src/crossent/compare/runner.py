"""The comparison grid: for each seed, one split and one initialisation; for each loss, one
training run from them; then test metrics, summaries over seeds and paired comparisons."""

from __future__ import annotations

import math
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch

from crossent.compare import metrics as M
from crossent.compare.data import CompareError, Dataset, load_dataset
from crossent.compare.distributed import DistInfo, setup_distributed, teardown_distributed
from crossent.compare.evaluate import evaluate, metric_columns, primary_metric, score
from crossent.compare.losses import LossSetup, parse_losses, resolve_auto
from crossent.compare.model import build_mlp, describe_mlp
from crossent.compare.splits import Split, check_fractions, standardize, stratified_split
from crossent.compare.stats import Comparison, Summary, compare_to_best, summarize
from crossent.compare.train import History, TrainData, TrainSettings, train_model

__all__ = ["CompareConfig", "CompareResult", "Progress", "RunResult", "run_compare"]


@dataclass
class CompareConfig:
    """Everything a comparison depends on (the command line's options)."""

    data: str = "digits-imbalanced"
    csv: str | None = None
    targets: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    positive: str | None = None
    imbalance: float | None = None
    data_seed: int = 0
    losses: list[str] = field(default_factory=list)
    seeds: int = 3
    first_seed: int = 0
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # the training settings, defaults from TrainSettings (the one place they are set)
    hidden: tuple[int, ...] = TrainSettings.hidden
    dropout: float = TrainSettings.dropout
    lr: float = TrainSettings.lr
    weight_decay: float = TrainSettings.weight_decay
    batch_size: int = TrainSettings.batch_size
    max_epochs: int = TrainSettings.max_epochs
    patience: int = TrainSettings.patience
    metric: str | None = None
    device: str = "auto"
    threads: int = 1
    tensorboard: str | None = None

    def settings(self) -> TrainSettings:
        values = {f.name: getattr(self, f.name) for f in fields(TrainSettings)}
        return TrainSettings(**{**values, "hidden": tuple(self.hidden)})

    def validate(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CompareError(f"Expected `--{name}` to be an integer >= 1, but got {value!r}.")

        positive_int("seeds", self.seeds)
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
                "train_seconds": round(self.history.seconds, 3),
            }
        )
        return row


@dataclass
class CompareResult:
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


def _tensors(
    dataset: Dataset, split: Split, device: torch.device
) -> tuple[TrainData, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    X, _, _ = standardize(dataset.X, split.train)
    to = dict(device=device)
    Xt = torch.as_tensor(X, dtype=torch.float32, **to)
    if dataset.task == "multiclass":
        yt = torch.as_tensor(dataset.y, dtype=torch.long, **to)
    else:
        yt = torch.as_tensor(dataset.y, dtype=torch.float32, **to)
    idx = {p: torch.as_tensor(getattr(split, p), **to) for p in ("train", "val", "test")}
    data = TrainData(Xt[idx["train"]], yt[idx["train"]], Xt[idx["val"]], yt[idx["val"]])
    return (
        data,
        Xt[idx["test"]],
        dataset.y[split.val],
        dataset.y[split.test],
        dataset.y[split.train],
    )


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
            config.data,
            csv_path=config.csv,
            targets=config.targets,
            drop=config.drop,
            positive=config.positive,
            imbalance=config.imbalance,
            data_seed=config.data_seed,
        )
    losses = parse_losses(config.losses, dataset.task)
    columns = metric_columns(dataset.task, dataset.n_outputs)
    primary = config.metric or primary_metric(dataset.task)
    if primary not in columns:
        raise CompareError(
            f"Expected `--metric` to be one of {', '.join(columns)} for {dataset.task} data, but "
            f"got {primary!r}."
        )
    higher = M.METRICS[primary].higher_is_better
    settings = config.settings()

    own = dist is None
    dist = dist or setup_distributed(config.device)
    # The MLP's matrices are tiny: one thread is as fast, and several slow each other (and
    # everything else) down badly when the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        writer_cls = None
        if config.tensorboard is not None and dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer_cls = SummaryWriter
        seeds = [config.first_seed + k for k in range(config.seeds)]
        runs: list[RunResult] = []
        splits: dict[int, dict[str, int]] = {}
        total = len(seeds) * len(losses)
        for seed in seeds:
            split = stratified_split(
                dataset.task, dataset.y, config.split, seed, train_rows=dataset.train_rows
            )
            splits[seed] = split.sizes()
            data, X_test, y_val, y_test, y_train = _tensors(dataset, split, dist.device)
            resolve_auto(losses, dataset.task, y_train, dataset.n_outputs)
            init = build_mlp(
                dataset.X.shape[1],
                dataset.n_outputs,
                hidden=settings.hidden,
                dropout=settings.dropout,
                seed=seed,
            ).state_dict()
            for loss in losses:
                k = len(runs)
                model = build_mlp(
                    dataset.X.shape[1],
                    dataset.n_outputs,
                    hidden=settings.hidden,
                    dropout=settings.dropout,
                    seed=seed,
                )
                model.load_state_dict(init)
                model.to(dist.device)

                def on_epoch(epoch: int, history: History, k=k, seed=seed, loss=loss) -> None:
                    if progress is not None and dist.is_main:
                        progress(
                            Progress(k, total, seed, loss.label, epoch, settings.max_epochs, False)
                        )

                writer = None
                if writer_cls is not None:
                    writer = writer_cls(
                        log_dir=str(tensorboard_dir(config.tensorboard, loss.label, seed))
                    )
                try:
                    history = train_model(
                        model,
                        loss,
                        data,
                        settings,
                        seed=seed,
                        monitor=partial(score, dataset.task, y_val, metric=primary),
                        higher_is_better=higher,
                        dist=dist,
                        on_epoch=on_epoch,
                        writer=writer,
                        metric_name=primary,
                    )
                finally:
                    if writer is not None:
                        writer.close()
                model.eval()
                with torch.no_grad():
                    val_logits = model(data.X_val)
                    test_logits = model(X_test)
                ev = evaluate(
                    dataset.task,
                    y_test,
                    test_logits,
                    y_val=y_val,
                    val_logits=val_logits,
                    label_names=dataset.label_names,
                )
                auto = loss.auto_text()
                runs.append(
                    RunResult(
                        loss=loss.label,
                        seed=seed,
                        metrics=ev.metrics,
                        per_label=ev.per_label,
                        thresholds=ev.thresholds,
                        auto=auto,
                        history=history,
                        test_probs=ev.probs,
                        test_targets=y_test,
                    )
                )
                if progress is not None and dist.is_main:
                    progress(
                        Progress(
                            k,
                            total,
                            seed,
                            loss.label,
                            history.epochs_run,
                            settings.max_epochs,
                            True,
                        )
                    )
    finally:
        torch.set_num_threads(threads)
        if own:
            teardown_distributed(dist)

    summary = {
        s.label: {c: summarize([r.metrics[c] for r in runs if r.loss == s.label]) for c in columns}
        for s in losses
    }
    comparisons = {
        c: compare_to_best(
            {s.label: [r.metrics[c] for r in runs if r.loss == s.label] for s in losses}, c
        )
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
        summary=summary,
        comparisons=comparisons,
        model=describe_mlp(
            dataset.X.shape[1], dataset.n_outputs, settings.hidden, settings.dropout
        ),
        world_size=dist.world_size,
        device=str(dist.device),
        seconds=time.perf_counter() - start,
        environment={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "threads": str(config.threads),
        },
    )


def config_dict(config: CompareConfig) -> dict:
    d = asdict(config)
    d["split"] = list(config.split)
    d["hidden"] = list(config.hidden)
    return d
