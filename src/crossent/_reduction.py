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
  rank returns ``world_size * local_sum / global_denominator``. DDP (and FSDP) average
  gradients over ranks, so the parameter gradients equal those of one process on the
  concatenated batch, also when ranks hold different numbers of valid elements; the value,
  averaged over ranks, is the global mean. Outside an initialised process group it equals
  ``"mean"``.

The all-reduce of ``"global_mean"`` is one collective per call, on a detached copy of the
denominator (no gradient flows through it), in float64 on CPU and CUDA so that integer counts
and weight sums add up exactly on every backend (gloo, nccl) whatever the compute dtype. It is
written with the ordinary in-place ``torch.distributed.all_reduce``: eager code calls it
directly, and ``torch.compile`` (``fullgraph=True`` too) rewrites it into a functional
collective inside the graph, without a graph break.

Gradient accumulation has the same normalisation problem across micro-batches;
:class:`crossent.GradientAccumulator` solves it by recording, through :func:`record_denominators`,
the denominator each loss call would have divided by.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from crossent._precision import compute_dtype, output_dtype
from crossent._validation import check_process_group, check_reduction

__all__ = [
    "Reduction",
    "all_reduce_sum",
    "distributed_ready",
    "global_denominator",
    "output_dtype",
    "plan_reduction",
    "record_denominators",
    "recording_denominators",
    "reduce_loss",
    "reduce_sum",
    "safe_denominator",
]

# Active recorders of :func:`record_denominators` (innermost last); empty outside them.
_RECORDERS: list[list[tuple[torch.Tensor, torch.Tensor]]] = []


def safe_denominator(denominator: torch.Tensor) -> torch.Tensor:
    # A zero denominator only happens when the numerator is zero too (nothing valid):
    # dividing by 1 instead returns 0 with a zero gradient, never 0/0 = NaN.
    return torch.where(denominator == 0, torch.ones_like(denominator), denominator)


def distributed_ready() -> bool:
    """Whether ``torch.distributed`` has an initialised default process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _reduce_dtype(tensor: torch.Tensor) -> torch.dtype:
    # float64 where every backend has it (gloo, nccl): counts above 2**24 and sums of many
    # weights stay exact, so every rank divides by what one process would divide by.
    return torch.float64 if tensor.device.type in ("cpu", "cuda") else tensor.dtype


def all_reduce_sum(tensor: torch.Tensor, process_group: Any = None) -> tuple[torch.Tensor, int]:
    """Sum a detached copy of ``tensor`` over the process group (one all-reduce).

    Returns the sum, in float64 on CPU and CUDA, and the group's world size. Without an
    initialised process group: the copy itself and 1. Raises ValueError when this rank is not
    a member of ``process_group``.
    """
    copy = tensor.detach().to(_reduce_dtype(tensor), copy=True)
    if not distributed_ready():
        return copy, 1
    import torch.distributed as dist

    world_size = dist.get_world_size(process_group)
    if world_size < 1:
        # torch returns -1 (and skips the collective) on a rank outside the group.
        raise ValueError(
            f"Expected `process_group` to contain this rank (global rank {dist.get_rank()}), "
            f"but it does not. Call the loss only on the group's ranks, or pass a group "
            f"that contains every rank that calls it."
        )
    dist.all_reduce(copy, op=dist.ReduceOp.SUM, group=process_group)
    return copy, world_size


def global_denominator(
    denominator: torch.Tensor, process_group: Any = None
) -> tuple[torch.Tensor, int]:
    """The denominator summed over the process group (one all-reduce), and the world size.

    Without an initialised process group: the denominator itself and 1.
    """
    if not distributed_ready():
        return denominator, 1
    return all_reduce_sum(denominator, process_group)


def recording_denominators() -> bool:
    """Whether a :func:`record_denominators` context is active: a fused kernel must then
    leave the division to :func:`reduce_sum` (not fold the mean into its pass)."""
    return bool(_RECORDERS)


@contextmanager
def record_denominators() -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within this context every ``"mean"`` / ``"global_mean"`` reduction returns its **sum**
    and appends ``(sum, denominator)`` (both detached) to the list it yields; nothing is
    all-reduced. :class:`crossent.GradientAccumulator` is built on it.

    >>> import torch
    >>> with record_denominators() as records:
    ...     reduce_loss(torch.tensor([1.0, 2.0, 0.0]), "mean", denominator=torch.tensor(2.0))
    tensor(3.)
    >>> records
    [(tensor(3.), tensor(2.))]
    """
    records: list[tuple[torch.Tensor, torch.Tensor]] = []
    _RECORDERS.append(records)
    try:
        yield records
    finally:
        _RECORDERS.pop()


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
    check_process_group(process_group, reduction)
    if reduction == "none":
        return loss
    if denominator is None:
        denominator = float(loss.numel())
    return reduce_sum(loss.sum(), reduction, denominator=denominator, process_group=process_group)


def _full(like: torch.Tensor, value: float | int) -> torch.Tensor:
    # A number as a 0-dim tensor on ``like``'s device, written there by a fill kernel:
    # torch.tensor(value, device=...) would copy from host memory on every call, which a
    # CUDA graph cannot capture.
    return torch.full((), value, dtype=like.dtype, device=like.device)


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
    check_process_group(process_group, reduction)
    if reduction == "sum":
        return total
    if _RECORDERS:
        # Gradient accumulation: the sum now, the division once all micro-batches are seen.
        if not isinstance(denominator, torch.Tensor):
            denominator = _full(total, denominator)
        _RECORDERS[-1].append((total.detach(), denominator.detach().to(total.dtype)))
        return total
    if reduction == "mean" and not isinstance(denominator, torch.Tensor):
        return total / float(denominator) if denominator else total * 0.0
    if not isinstance(denominator, torch.Tensor):
        denominator = _full(total, denominator)
    denominator = denominator.to(total.dtype)
    if reduction == "mean":
        return total / safe_denominator(denominator)
    if reduction != "global_mean":
        raise ValueError(
            'Expected `reduction` to be "sum", "mean" or "global_mean" for an already summed '
            f"loss, but got {reduction!r}."
        )
    global_den, world_size = global_denominator(denominator, process_group)
    return total * world_size / safe_denominator(global_den.to(total.dtype))


@dataclass(frozen=True)
class Reduction:
    """A ``reduction`` resolved for one call: everything a backend needs to know about it.

    Attributes:
        kind: ``"none"``, ``"sum"``, ``"mean"`` or ``"global_mean"``.
        process_group: the group of ``"global_mean"``.
        fold: the mean's denominator where it is known before the pass and a fused kernel
            divides by it inside the pass (the loss it returns is then the mean itself, and
            the gradient it stores is final); ``None`` otherwise.
    """

    kind: str
    process_group: Any = None
    fold: Any = None

    @property
    def reduce(self) -> bool:
        """Whether the backend sums (``False``: it returns the elementwise loss)."""
        return self.kind != "none"

    def finish(
        self, out: torch.Tensor, denominator: torch.Tensor | None, default: float | int
    ) -> torch.Tensor:
        """The reduced loss from what a backend returned: its sum (or elementwise loss) and
        the denominator it counted in the pass (``None``: ``default``, every element or
        sample counts once). The one place where a sum is divided outside a kernel."""
        if not self.reduce or self.fold is not None:
            return out  # elementwise, or the kernel divided already
        return reduce_sum(
            out,
            self.kind,
            denominator=default if denominator is None else denominator,
            process_group=self.process_group,
        )


def plan_reduction(
    reduction: str,
    process_group: Any,
    input: torch.Tensor,
    known_denominator: int | float | Callable[[], torch.Tensor] | None = None,
) -> Reduction:
    """Resolve ``reduction`` for one call (validated here, once).

    ``known_denominator`` is the mean's denominator where a backend can know it before the
    pass: a number, or a function that counts it from the targets as a 0-dim tensor, called
    only when the mean is folded. It is folded (see :class:`Reduction`) for ``"mean"`` --
    and ``"global_mean"`` outside a process group, which is ``"mean"`` to the last bit --
    except while :func:`record_denominators` records (it must see the sum and its
    denominator). Backward can then see that its incoming gradient is exactly 1
    (``loss.backward()``) and hand the saved gradient on untouched.

    >>> import torch
    >>> plan_reduction("mean", None, torch.zeros(4), 4)
    Reduction(kind='mean', process_group=None, fold=4)
    >>> plan_reduction("sum", None, torch.zeros(4), 4).fold is None
    True
    """
    check_reduction(reduction)
    check_process_group(process_group, reduction)
    kind = reduction
    if kind == "global_mean" and not distributed_ready():
        kind = "mean"
    fold = None
    if kind == "mean" and known_denominator is not None and not _RECORDERS:
        fold = known_denominator() if callable(known_denominator) else known_denominator
        if isinstance(fold, torch.Tensor):
            fold = safe_denominator(fold.to(compute_dtype(input.dtype)))
        else:
            fold = fold or None  # an empty input: nothing to fold
    return Reduction(reduction, process_group, fold)
