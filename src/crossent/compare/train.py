"""Training one model with one loss: AdamW, early stopping on the validation loss, optional DDP.

Everything random is drawn from the seed, never from the global state: the initial weights
(the caller passes one initial state to every loss), the batch order of each epoch
(``numpy.random.default_rng([seed, 2, epoch])`` for tensors, the same for every loss and every
process; a DataLoader's shuffling is re-seeded from the same numbers), and dropout (the global
generator is re-seeded inside a forked state for each run). Two runs with the same seed and
settings give identical numbers.

Stopping rule: each run follows its own loss on the validation data, keeps the weights of the
epoch where it was lowest, and stops after ``patience`` epochs without a new lowest value.
The validation loss is a smooth average over every validation sample, so once a model starts
to overfit it rises and stays above its low: a longer patience trains further but keeps the
same epoch. A validation *metric* such as average precision moves in steps with a few
positives and keeps finding new highs by chance, so the epoch it keeps -- and with it the
comparison -- would depend on the patience.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from crossent.compare.distributed import DistInfo, broadcast_floats, sum_floats
from crossent.compare.losses import LossSetup

__all__ = [
    "History",
    "LoaderData",
    "TrainData",
    "TrainSettings",
    "auto_batch_size",
    "batch_order",
    "predict",
    "predict_tensors",
    "train_model",
]

# Rows per forward pass when predicting from tensors (bounds the memory of image models).
EVAL_CHUNK = 4096


@dataclass(frozen=True)
class TrainSettings:
    """Model and optimisation settings shared by every loss.

    Attributes:
        hidden: widths of the MLP's hidden layers.
        dropout: dropout after each hidden layer (0 disables it).
        lr, weight_decay: AdamW's learning rate and decoupled weight decay.
        batch_size: samples per step (the global batch under DDP); ``None``:
            :func:`auto_batch_size` of the training rows, about 16 steps per epoch.
        max_epochs: the most passes over the training split.
        patience: stop after this many epochs without a lower validation loss; the weights of
            the epoch with the lowest validation loss are kept.
    """

    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int | None = None
    max_epochs: int = 100
    patience: int = 20

    def resolved(self, n_train: int) -> TrainSettings:
        """These settings with ``batch_size`` fixed for a training set of ``n_train`` rows."""
        if self.batch_size is not None:
            return self
        return replace(self, batch_size=auto_batch_size(n_train))


def auto_batch_size(n_train: int) -> int:
    """About 16 steps per epoch: ``n_train / 16`` rounded to a power of two, from 16 to 1024.

    An epoch is then about the same amount of training on a small data set as on a large one,
    so that one learning rate, patience and epoch limit suit both.

    >>> auto_batch_size(3493), auto_batch_size(380), auto_batch_size(100), auto_batch_size(10**6)
    (256, 32, 16, 1024)
    """
    return int(min(1024, max(16, 2 ** round(math.log2(max(n_train, 1) / 16)))))


@dataclass
class TrainData:
    """Tensors of one split's training and validation rows, on the training device.

    The inputs may have any shape ``(N, ...)``; targets are ``(N, L)`` floats (binary /
    multi-label) or ``(N,)`` class indices.
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.X_train.device

    def batches(
        self, seed: int, epoch: int, batch_size: int, dist: DistInfo
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches of ``epoch``: rows in the order :func:`batch_order` gives.
        Under DDP each batch is cut into ``world_size`` contiguous shards; this process gets
        shard ``rank``."""
        n = self.X_train.shape[0]
        order = torch.as_tensor(batch_order(seed, epoch, n), device=self.device)
        for begin in range(0, n, batch_size):
            batch = order[begin : begin + batch_size]
            if dist.distributed:
                batch = torch.tensor_split(batch, dist.world_size)[dist.rank]
            yield self.X_train[batch], self.y_train[batch]

    def validation_logits(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_tensors(model, self.X_val, self.y_val)


@dataclass
class LoaderData:
    """Training and validation data as DataLoaders of ``(inputs, targets)`` batches.

    Before each epoch the training loader's shuffling is seeded from ``(seed, epoch)``: its
    own ``generator`` when it has one, else the global generator it draws from. So every loss
    sees the same batches in the same order, as with tensors.
    """

    train: Iterable
    val: Iterable
    device: torch.device
    prepare: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    def batches(
        self, seed: int, epoch: int, batch_size: int, dist: DistInfo
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shuffle_seed = int(np.random.default_rng([seed, 2, epoch]).integers(2**62))
        generator = getattr(self.train, "generator", None)
        if generator is not None:
            generator.manual_seed(shuffle_seed)
        else:
            torch.manual_seed(shuffle_seed)
        for inputs, targets in self.train:
            yield self.prepare(inputs.to(self.device), targets.to(self.device))

    def validation_logits(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return predict(model, self.val, self.device, self.prepare)


def predict_tensors(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on the rows of ``X``, :data:`EVAL_CHUNK` rows at a time, and ``y``
    (evaluation mode, no gradient)."""
    model.eval()
    with torch.no_grad():
        logits = [model(X[i : i + EVAL_CHUNK]) for i in range(0, X.shape[0], EVAL_CHUNK)]
    return torch.cat(logits), y


def predict(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    prepare: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on every batch of ``(inputs, targets)``, and the targets, concatenated
    (evaluation mode, no gradient)."""
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for inputs, target in batches:
            x, y = prepare(inputs.to(device), target.to(device))
            logits.append(model(x))
            targets.append(y)
    return torch.cat(logits), torch.cat(targets)


@dataclass
class History:
    """What one run did, epoch by epoch.

    Attributes:
        train_loss, val_loss: the loss on the training batches (mean over steps) and on the
            validation data.
        val_score: the report's primary metric on the validation data (recorded, not used
            for stopping).
        best_epoch: the epoch with the lowest validation loss, whose weights were kept.
        flattened: whether the validation loss went ``patience`` epochs without a new low
            before the run ended; ``False`` when it hit ``max_epochs`` still improving.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    best_epoch: int = 0
    flattened: bool = False
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


def batch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the training rows used in ``epoch`` (1-based) under ``seed``."""
    return np.random.default_rng([seed, 2, epoch]).permutation(n)


def _lower(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value < best)


def train_model(
    model: nn.Module,
    loss: LossSetup,
    data: TrainData | LoaderData,
    settings: TrainSettings,
    *,
    seed: int,
    monitor: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    dist: DistInfo | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
    writer=None,
    metric_name: str = "score",
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> History:
    """Train ``model`` (in place) with ``loss`` and keep the weights of its epoch with the lowest
    validation loss; stop after ``settings.patience`` epochs without a lower one.

    Args:
        model: the initialised model, on the training device.
        loss: the loss, called with ``reduction="global_mean"`` on each step.
        data: training and validation tensors, or DataLoaders.
        settings: optimisation settings.
        seed: fixes the batch order and dropout.
        monitor: (validation logits, validation targets) -> a metric recorded each epoch in
            :attr:`History.val_score` (NaN without one); it does not decide anything.
        dist: the process group (one process when ``None``; DataLoaders need one process).
        on_epoch: called after every epoch with the 1-based epoch and the history so far.
        writer: a TensorBoard ``SummaryWriter`` or ``None``.
        metric_name: the monitored metric's name, for TensorBoard.
        optimizer: builds the optimizer from the parameters (default: AdamW with
            ``settings.lr`` and ``settings.weight_decay``).
    """
    device = data.device
    dist = dist or DistInfo(device=device)
    history = History()
    start = time.perf_counter()
    net: nn.Module = model
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    if optimizer is None:
        opt = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    else:
        opt = optimizer(model.parameters())
    best_loss = float("nan")
    best_state = copy.deepcopy(model.state_dict())
    devices = [device.index if device.index is not None else 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for epoch in range(1, settings.max_epochs + 1):
            model.train()
            total, steps = torch.zeros((), dtype=torch.float64, device=device), 0
            for inputs, targets in data.batches(seed, epoch, settings.batch_size, dist):
                value = loss(net(inputs), targets, reduction="global_mean")
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                total += value.detach().double()
                steps += 1
            # The value each rank returns, averaged over ranks, is the batch's global mean.
            (train_total,) = sum_floats([float(total)], dist)
            train_loss = train_total / dist.world_size / max(steps, 1)

            model.eval()
            with torch.no_grad():
                val_logits, val_targets = data.validation_logits(model)
                val_loss = float(loss(val_logits, val_targets, reduction="mean"))
                val_score = (
                    float(monitor(val_logits, val_targets)) if monitor is not None else math.nan
                )
            # Rank 0 decides, so that every process stops at the same epoch.
            val_loss, val_score = broadcast_floats([val_loss, val_score], dist)
            history.train_loss.append(train_loss)
            history.val_loss.append(val_loss)
            history.val_score.append(val_score)
            if writer is not None:
                writer.add_scalar("loss/train", train_loss, epoch)
                writer.add_scalar("loss/val", val_loss, epoch)
                if monitor is not None:
                    writer.add_scalar(f"val/{metric_name}", val_score, epoch)
            if _lower(val_loss, best_loss):
                best_loss = val_loss
                history.best_epoch = epoch
                best_state = copy.deepcopy(model.state_dict())
            if on_epoch is not None:
                on_epoch(epoch, history)
            if epoch - history.best_epoch >= settings.patience:
                history.flattened = history.best_epoch > 0  # not when every value was NaN
                break
    model.load_state_dict(best_state)
    history.seconds = time.perf_counter() - start
    return history
