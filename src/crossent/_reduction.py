"""The one place where ``"none" | "mean" | "sum" | "global_mean"`` is decided.

Every loss computes an elementwise (or per-sample) loss tensor in which ignored elements are
already zero, and the denominator its own ``"mean"`` divides by (the number of valid elements
for the binary family, the summed class weights of the valid targets for cross entropy). This
module turns that pair into the reduced value:

* ``"none"``: the unreduced tensor;
* ``"sum"``: its sum;
* ``"mean"``: sum / denominator, and **0 (with zero gradient) when the denominator is 0** --
  every element ignored -- where torch returns NaN;
* ``"global_mean"``: the mean over every rank of a ``torch.distributed`` process group. Each
  rank returns ``world_size * local_sum / global_denominator``. DDP averages gradients over
  ranks, so the parameter gradients equal those of one process on the concatenated batch,
  also when ranks hold different numbers of valid elements; the value, averaged over ranks,
  is the global mean. One all-reduce of the (detached) denominator per call. Outside an
  initialised process group it equals ``"mean"``.
"""

from __future__ import annotations

from typing import Any

import torch

from crossent._validation import check_reduction

__all__ = ["global_denominator", "reduce_loss", "reduce_sum", "safe_denominator"]


def safe_denominator(denominator: torch.Tensor) -> torch.Tensor:
    # A zero denominator only happens when the numerator is zero too (nothing valid):
    # dividing by 1 instead returns 0 with a zero gradient, never 0/0 = NaN.
    return torch.where(denominator == 0, torch.ones_like(denominator), denominator)


def _distributed_ready(process_group: Any) -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def global_denominator(
    denominator: torch.Tensor, process_group: Any = None
) -> tuple[torch.Tensor, int]:
    """All-reduce (sum) a detached denominator over the process group; returns it and the
    group's world size. Without an initialised process group: the denominator itself and 1."""
    if not _distributed_ready(process_group):
        return denominator, 1
    import torch.distributed as dist

    total = denominator.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=process_group)
    return total, dist.get_world_size(process_group)


def reduce_loss(
    loss: torch.Tensor,
    reduction: str,
    *,
    denominator: torch.Tensor | float | None = None,
    process_group: Any = None,
) -> torch.Tensor:
    """Reduce an elementwise loss whose ignored elements are already zero.

    Args:
        loss: the unreduced loss, in the compute dtype (float32 or float64).
        reduction: ``"none"``, ``"mean"``, ``"sum"`` or ``"global_mean"``.
        denominator: what ``"mean"`` divides by; ``None`` means ``loss.numel()``.
        process_group: the group for ``"global_mean"`` (``None``: the default group).

    >>> import torch
    >>> reduce_loss(torch.tensor([1.0, 2.0, 0.0]), "mean", denominator=torch.tensor(2.0))
    tensor(1.5000)
    >>> reduce_loss(torch.zeros(3), "mean", denominator=torch.tensor(0.0))
    tensor(0.)
    """
    check_reduction(reduction)
    if reduction == "none":
        return loss
    if denominator is None:
        denominator = float(loss.numel())
    return reduce_sum(loss.sum(), reduction, denominator=denominator, process_group=process_group)


def reduce_sum(
    total: torch.Tensor,
    reduction: str,
    *,
    denominator: torch.Tensor | float,
    process_group: Any = None,
) -> torch.Tensor:
    """:func:`reduce_loss` for a loss that is already summed (the fused kernels sum as they go).

    ``reduction`` is ``"sum"``, ``"mean"`` or ``"global_mean"``. A Python-number denominator is
    divided by directly: no tensor is made for it, so nothing waits on a host-to-device copy.

    >>> reduce_sum(torch.tensor(3.0), "mean", denominator=2)
    tensor(1.5000)
    """
    if reduction == "sum":
        return total
    if reduction == "mean" and not isinstance(denominator, torch.Tensor):
        return total / float(denominator) if denominator else total * 0.0
    if not isinstance(denominator, torch.Tensor):
        denominator = torch.tensor(float(denominator), dtype=total.dtype, device=total.device)
    denominator = denominator.to(total.dtype)
    if reduction == "mean":
        return total / safe_denominator(denominator)
    if reduction != "global_mean":
        raise ValueError(
            'Expected `reduction` to be "sum", "mean" or "global_mean" for an already summed '
            f"loss, but got {reduction!r}."
        )
    denominator, world_size = global_denominator(denominator, process_group)
    return total * world_size / safe_denominator(denominator)
