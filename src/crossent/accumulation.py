"""Gradient accumulation with the exact mean over every micro-batch (and every rank).

Accumulating gradients over ``K`` micro-batches with ``loss / K`` averages the micro-batch
means, which is not the mean over the whole batch as soon as the micro-batches hold different
numbers of valid elements (ignore_index, padding, masks) or different class-weight sums:
``(s_1/n_1 + s_2/n_2) / 2 != (s_1 + s_2) / (n_1 + n_2)``. The same is true across the ranks of
a data-parallel job.

:class:`GradientAccumulator` does what fairseq's trainer does, for any crossent loss: each
micro-batch contributes the *sum* of its loss to the gradients, the accumulator records the
denominator that the loss's own ``"mean"`` would have divided by (valid elements, or class
weights of the valid targets), and before the optimizer step :meth:`~GradientAccumulator.normalize_`
divides the gradients once by the total -- all-reduced over the process group, one collective
per optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from crossent._reduction import _RECORDERS, all_reduce_sum, safe_denominator
from crossent._validation import check_choice, check_process_group

__all__ = ["GradientAccumulator"]


class GradientAccumulator:
    r"""Accumulate gradients over micro-batches and normalise them by the exact total.

    For micro-batches :math:`k` (on every rank :math:`r` of the group) with loss sums
    :math:`s_{rk}` and denominators :math:`n_{rk}`, the gradients after :meth:`normalize_` are
    those of :math:`\sum_{r,k} s_{rk} / \sum_{r,k} n_{rk}`: the ``"mean"`` of one process on the
    whole batch, whatever the micro-batch and per-rank sizes and valid counts.

    Use :meth:`loss` in place of calling the loss: it calls it and returns the **sum** of the
    micro-batch's loss (backpropagate that), recording the denominator the loss's ``"mean"``
    would have used. After the last micro-batch's backward, :meth:`normalize_` divides every
    gradient by the total denominator (all-reduced over the process group for
    ``reduction="global_mean"``) and returns the mean loss for logging; then step the optimizer.

    Args:
        reduction: ``"global_mean"`` (default): normalise by the total over every rank of the
            process group, for gradients that DDP / FSDP average over ranks; equal to
            ``"mean"`` outside a process group. ``"mean"``: normalise by this rank's total
            only.
        process_group: the group for ``"global_mean"``; ``None`` (default) is the default group.

    The loss called through :meth:`loss` must use ``reduction="mean"`` or
    ``"global_mean"`` (the default of every crossent loss); it is not all-reduced per call.
    Until :meth:`normalize_` the gradients hold sums: clip gradients after it, not before.

    Example (two micro-batches with different numbers of ignored labels):
        >>> import torch, crossent
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(6, 4), (torch.rand(6, 3) < 0.5).float()
        >>> y[:2] = -1                                    # ignored: only in the first micro-batch
        >>> loss_fn = crossent.BCEWithLogitsLoss(ignore_index=-1)
        >>> acc = crossent.GradientAccumulator()
        >>> for xb, yb in ((x[:3], y[:3]), (x[3:], y[3:])):
        ...     acc.loss(loss_fn, model(xb), yb).backward()
        >>> mean = acc.normalize_(model.parameters())
        >>> accumulated = model.weight.grad.clone()
        >>> model.zero_grad()
        >>> full = loss_fn(model(x), y)
        >>> full.backward()
        >>> torch.allclose(accumulated, model.weight.grad), torch.allclose(mean, full)
        (True, True)
    """

    def __init__(self, *, reduction: str = "global_mean", process_group: Any = None) -> None:
        self.reduction = check_choice("reduction", reduction, ("mean", "global_mean"))
        check_process_group(process_group, reduction)
        self.process_group = process_group
        self._sums: list[torch.Tensor] = []
        self._denominators: list[torch.Tensor] = []

    @property
    def num_calls(self) -> int:
        """The loss calls recorded since the last :meth:`normalize_` (or :meth:`reset`)."""
        return len(self._denominators)

    def loss(
        self, loss_fn: Callable[..., torch.Tensor], /, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Call ``loss_fn(*args, **kwargs)`` and return the **sum** of its loss.

        ``loss_fn`` is a crossent loss (a function, a module, or a ``functools.partial`` of
        one) whose reduction is ``"mean"`` or ``"global_mean"``. Its denominator is recorded
        for :meth:`normalize_`. The returned sum is in the loss's output dtype: under float16
        autocast a sum above 65504 reads as ``inf``, but its gradient is exact (only the
        value is rounded); :meth:`normalize_` returns the mean from float32 / float64 sums.
        """
        records: list[tuple[torch.Tensor, torch.Tensor]] = []
        _RECORDERS.append(records)
        try:
            out = loss_fn(*args, **kwargs)
        finally:
            _RECORDERS.pop()
        if len(records) != 1:
            name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
            raise ValueError(
                f"Expected `loss_fn` to be a crossent loss that reduces once with "
                f'reduction="mean" or "global_mean", but {name} made {len(records)} such '
                f"reductions. Pass a crossent loss (function or module) with its default "
                f'reduction; "none", "sum" and losses from other libraries cannot be normalised.'
            )
        total, denominator = records[0]
        self._sums.append(total)
        self._denominators.append(denominator)
        return out

    def reset(self) -> None:
        """Forget the recorded calls (``normalize_`` does this itself)."""
        self._sums.clear()
        self._denominators.clear()

    @torch.no_grad()
    def normalize_(self, parameters: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Divide the accumulated gradients by the total denominator, in place; reset.

        With ``reduction="global_mean"`` inside a process group the sums and denominators are
        all-reduced together (one collective) and the gradients are scaled by
        ``world_size / total``, because DDP and FSDP have already averaged them over ranks.

        Args:
            parameters: the parameters (or one tensor) whose ``.grad`` to scale; those without
                a gradient are skipped.

        Returns:
            The mean loss over every recorded call (and every rank, for ``"global_mean"``):
            the value one process would report on the whole batch, in the loss's compute
            dtype (float32, or float64 for float64 inputs), detached.
        """
        if not self._denominators:
            raise RuntimeError(
                "GradientAccumulator.normalize_() was called before any loss was recorded: "
                "call acc.loss(loss_fn, input, target) for each micro-batch first."
            )
        out_dtype = self._sums[0].dtype
        device = self._denominators[0].device
        # Sums and denominators travel together: one all-reduce per optimizer step.
        local = torch.stack(
            [
                torch.stack([s.to(device, torch.float64) for s in self._sums]).sum(),
                torch.stack([d.to(device, torch.float64) for d in self._denominators]).sum(),
            ]
        )
        world_size = 1
        if self.reduction == "global_mean":
            local, world_size = all_reduce_sum(local, self.process_group)
        loss_sum, denominator = local[0], safe_denominator(local[1])
        scale = world_size / denominator
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        for p in parameters:
            if p.grad is None:
                continue
            if p.grad.dtype in (torch.float16, torch.bfloat16):
                # scale can be far below float16's range (1 / 1e9): multiply in float32.
                p.grad.copy_(p.grad.float() * scale.to(p.grad.device, torch.float32))
            else:
                p.grad.mul_(scale.to(p.grad.device, p.grad.dtype))
        self.reset()
        return (loss_sum / denominator).to(out_dtype)

    def __repr__(self) -> str:
        return f"GradientAccumulator(reduction={self.reduction!r}, calls={self.num_calls})"
