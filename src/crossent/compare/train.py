"""Training one model with one loss: AdamW, early stopping on validation, optional DDP.

Everything random is drawn from the seed, never from the global state: the initial weights
(the caller passes one initial state to every loss), the batch order of each epoch
(``numpy.random.default_rng([seed, 2, epoch])``, the same for every loss and every process),
and dropout (the global generator is re-seeded inside a forked state for each run). Two runs
with the same seed and settings give identical numbers.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from crossent.compare.distributed import DistInfo, broadcast_floats, sum_floats
from crossent.compare.losses import LossSetup

__all__ = ["History", "TrainData", "TrainSettings", "batch_order", "train_model"]


@dataclass(frozen=True)
class TrainSettings:
    """Model and optimisation settings shared by every loss.

    Attributes:
        hidden: widths of the MLP's hidden layers.
        dropout: dropout after each hidden layer (0 disables it).
        lr, weight_decay: AdamW's learning rate and decoupled weight decay.
        batch_size: samples per step (the global batch under DDP).
        max_epochs: the most passes over the training split.
        patience: stop after this many epochs without a better validation score; the weights of
            the best epoch are kept.
    """

    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 10


@dataclass
class TrainData:
    """Standardised tensors of one split, on the training device."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


def batch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the training rows used in ``epoch`` (1-based) under ``seed``."""
    return np.random.default_rng([seed, 2, epoch]).permutation(n)


def _better(score: float, loss: float, best_score: float, best_loss: float, higher: bool) -> bool:
    if math.isnan(score):
        return False
    if math.isnan(best_score):
        return True
    if score != best_score:
        return score > best_score if higher else score < best_score
    return loss < best_loss  # equal scores (AP = 1 on a small validation set): lower loss wins


def train_model(
    model: nn.Module,
    loss: LossSetup,
    data: TrainData,
    settings: TrainSettings,
    *,
    seed: int,
    monitor: Callable[[torch.Tensor], float],
    higher_is_better: bool,
    dist: DistInfo | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
    writer=None,
    metric_name: str = "score",
) -> History:
    """Train ``model`` (in place) with ``loss`` and keep the weights of its best validation epoch.

    Args:
        model: the initialised model, on the training device.
        loss: the loss, called with ``reduction="global_mean"`` on each step.
        data: training and validation tensors.
        settings: optimisation settings.
        seed: fixes the batch order and dropout.
        monitor: validation logits -> the score early stopping follows.
        higher_is_better: the direction of ``monitor``.
        dist: the process group (one process when ``None``). Each step's batch is cut into
            ``world_size`` contiguous shards; this process trains on shard ``rank``.
        on_epoch: called after every epoch with the 1-based epoch and the history so far.
        writer: a TensorBoard ``SummaryWriter`` or ``None``.
        metric_name: the monitored metric's name, for TensorBoard.
    """
    dist = dist or DistInfo(device=data.X_train.device)
    history = History()
    start = time.perf_counter()
    net: nn.Module = model
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    n = data.X_train.shape[0]
    best_score, best_loss = float("nan"), float("inf")
    best_state = copy.deepcopy(model.state_dict())
    cuda = data.X_train.device
    devices = [cuda.index if cuda.index is not None else 0] if cuda.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for epoch in range(1, settings.max_epochs + 1):
            model.train()
            order = torch.as_tensor(batch_order(seed, epoch, n), device=data.X_train.device)
            total, steps = torch.zeros((), dtype=torch.float64, device=data.X_train.device), 0
            for begin in range(0, n, settings.batch_size):
                batch = order[begin : begin + settings.batch_size]
                if dist.distributed:
                    batch = torch.tensor_split(batch, dist.world_size)[dist.rank]
                logits = net(data.X_train[batch])
                value = loss(logits, data.y_train[batch], reduction="global_mean")
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                total += value.detach().double()
                steps += 1
            # The value each rank returns, averaged over ranks, is the batch's global mean.
            (train_total,) = sum_floats([float(total)], dist)
            train_loss = train_total / dist.world_size / steps

            model.eval()
            with torch.no_grad():
                val_logits = model(data.X_val)
                val_loss = float(loss(val_logits, data.y_val, reduction="mean"))
                val_score = float(monitor(val_logits))
            # Rank 0 decides, so that every process stops at the same epoch.
            val_loss, val_score = broadcast_floats([val_loss, val_score], dist)
            history.train_loss.append(train_loss)
            history.val_loss.append(val_loss)
            history.val_score.append(val_score)
            if writer is not None:
                writer.add_scalar("loss/train", train_loss, epoch)
                writer.add_scalar("loss/val", val_loss, epoch)
                writer.add_scalar(f"val/{metric_name}", val_score, epoch)
            if _better(val_score, val_loss, best_score, best_loss, higher_is_better):
                best_score, best_loss = val_score, val_loss
                history.best_epoch = epoch
                best_state = copy.deepcopy(model.state_dict())
            if on_epoch is not None:
                on_epoch(epoch, history)
            if epoch - history.best_epoch >= settings.patience:
                break
    model.load_state_dict(best_state)
    history.seconds = time.perf_counter() - start
    return history
