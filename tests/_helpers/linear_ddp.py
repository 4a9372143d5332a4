"""The fused linear + loss under DDP with ``reduction="global_mean"``: run on each rank by
tests/test_linear.py through :func:`tests._helpers.distributed.run_distributed`."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import crossent

N, H, V = 11, 4, 9
LOSSES = {"ce": {}, "focal": {"ignore_index": -1}}


class Head(torch.nn.Module):
    """A linear head whose forward returns its fused loss."""

    def __init__(self, loss: str, reduction: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(H, V)
        self.loss, self.reduction = loss, reduction

    def forward(self, x, t):
        return crossent.linear_loss(
            x,
            self.linear.weight,
            t,
            loss=self.loss,
            linear_bias=self.linear.bias,
            reduction=self.reduction,
            batch_chunk_size=2,
            **LOSSES[self.loss],
        )


def _data(loss: str):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, H, generator=g)
    if loss == "ce":
        t = torch.randint(0, V, (N,), generator=g)
        t[:2] = -100  # ignored targets on rank 0 only: the ranks' counts differ
    else:
        t = (torch.rand(N, V, generator=g) < 0.3).float()
        t[:2, :5] = -1.0
    return x, t


def global_mean_checks(rank: int, world_size: int) -> dict:
    """Per loss and reduction: the relative error of the DDP-averaged gradients (each rank its
    uneven share of the rows: 3 and 8) against one process on the whole batch, and of the
    value averaged over ranks against the whole batch's mean. ``"global_mean"`` must meet
    them; the per-rank ``"mean"`` must not (so the check can fail)."""
    results = {}
    for loss in LOSSES:
        x, t = _data(loss)
        rows = slice(0, 3) if rank == 0 else slice(3, N)
        for reduction in ("global_mean", "mean"):
            torch.manual_seed(0)
            model = Head(loss, reduction)
            single = Head(loss, "mean")
            single.load_state_dict(model.state_dict())
            ddp = DistributedDataParallel(model)  # kept alive: its reducer syncs in backward
            out = ddp(x[rows], t[rows])
            out.backward()
            value = out.detach().clone()
            dist.all_reduce(value)
            full = single(x, t)
            full.backward()
            grad = torch.cat([p.grad.view(-1) for p in model.parameters()])
            ref = torch.cat([p.grad.view(-1) for p in single.parameters()])
            results[loss, reduction] = {
                "grad": float((grad - ref).norm() / ref.norm()),
                "value": float((value / world_size - full.detach()).abs() / full.detach().abs()),
            }
    return results
