"""The autograd node of every fused path: forward computes loss and gradient, backward scales.

Memory: the forward's gradient buffer (the input's size and dtype; float32 for a float16
input, see :func:`crossent._precision.grad_dtype`) is the only tensor saved.
When autograd will not run this node again (no ``retain_graph``), backward scales that buffer in
place (for an incoming gradient of exactly 1 not at all) and hands it on; autograd has released
its own reference by then, so the buffer becomes ``input.grad`` itself (or flows into the next
node) without a copy. Peak extra memory of a forward plus backward is therefore one gradient
buffer. With ``retain_graph=True`` (or
under ``torch.compile``) backward returns a scaled copy and the saved buffer stays intact.

Time: when the incoming gradient is a scalar exactly 1 (``loss.backward()``: the kernels fold
a mean's denominator into the forward where it is known in advance), backward does no pass at
all. On CPU reading that scalar is a memory load. A GPU value is never read on the host (that
would synchronise): after a Triton forward, backward launches the Triton scale kernel, which
reads it on the device and leaves the buffer untouched when it is 1 -- one launch instead of
a pass of 8 bytes per element. Other GPU paths scale with ``mul_``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["FusedLoss", "SmallLoss", "reads_are_free"]


def _keep_graph() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``)."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except (AttributeError, RuntimeError):  # older torch, or no graph task: never write in place
        return True


def reads_are_free(tensor: torch.Tensor) -> bool:
    """Whether reading ``tensor``'s value on the host is free: a CPU tensor (a memory load). A
    GPU value read on the host would wait for the device (a synchronisation), which the fused
    paths never do; this is the one test of that on those paths."""
    return tensor.device.type == "cpu"


def _is_exactly_one(grad_out: torch.Tensor) -> bool:
    """A scalar incoming gradient equal to 1, looked at only where that is free (see
    :func:`reads_are_free`)."""
    return (
        reads_are_free(grad_out)
        and grad_out.dim() == 0
        and not torch.compiler.is_compiling()
        and float(grad_out) == 1.0
    )


class FusedLoss(torch.autograd.Function):
    """``out, denominator = FusedLoss.apply(input, compute, class_dim, on_device)``.

    ``compute(input)`` returns ``(out, denominator, grad)``: the summed (or elementwise)
    loss, the ``"mean"`` denominator or ``None``, and d(out summed)/d(input) in
    :func:`crossent._precision.grad_dtype`. Only ``input`` receives a gradient; the dispatcher
    routes every call in which another tensor requires one to the reference path.
    ``class_dim``: for a per-sample loss (cross entropy, ``reduction="none"``) the input
    dimension the output lacks, else ``None``. ``on_device``: the forward ran a Triton kernel,
    so backward scales with one too.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        compute: Callable[[torch.Tensor], Any],
        class_dim: int | None = None,
        on_device: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, denominator, grad = compute(input)
        ctx.class_dim = class_dim if out.dim() else None
        ctx.on_device = on_device
        ctx.input_dtype = input.dtype  # float16: the gradient is stored in float32
        ctx.save_for_backward(grad)
        if denominator is not None:
            ctx.mark_non_differentiable(denominator)
        return out, denominator

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, _grad_denominator: Any) -> tuple:
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # create_graph=True: a silently constant gradient would give wrong second-order
            # terms (a gradient penalty that never trains), so say so instead.
            raise RuntimeError(
                "crossent's fused kernels compute first derivatives only, but backward was "
                "called with create_graph=True. For higher-order gradients compute the loss "
                'with backend="reference".'
            )
        (grad,) = ctx.saved_tensors
        if ctx.class_dim is not None:
            grad_out = grad_out.unsqueeze(ctx.class_dim)
        if torch.compiler.is_compiling() or _keep_graph():
            # The graph is kept (retain_graph=True): the saved buffer must stay intact for the
            # next backward, so hand on a new tensor -- autograd may keep what it is given as
            # `input.grad` (also through a view) and accumulate into it in place.
            grad = grad.clone() if _is_exactly_one(grad_out) else grad * grad_out
        elif _is_exactly_one(grad_out):
            # loss.backward() on the loss itself: the gradient is already final (a mean's
            # denominator is folded into the forward), so no pass over it at all.
            pass
        elif ctx.on_device and grad_out.dim() == 0 and grad.is_contiguous():
            # The graph is freed after this call: reuse the saved buffer (see the module
            # docstring), on the device.
            from crossent.kernels import _triton

            grad = _triton.scale_(grad, grad_out)
        else:
            grad = grad.mul_(grad_out)  # the saved buffer, reused
        # float16: rounded from the float32 buffer only now, after the incoming gradient
        return grad.to(ctx.input_dtype), None, None, None


class SmallLoss(torch.autograd.Function):
    """``out = SmallLoss.apply(input, compute)``: the autograd node of the small-input path's
    formulations that compute a loss and its gradient in one go
    (:mod:`crossent.losses._small`).

    ``compute(input)`` returns ``(out, grad)``: the loss (reduced, or elementwise) and
    d(out summed)/d(input). One node instead of one per operation: at a batch of 32 rows each
    node of a graph costs microseconds whatever its size. Backward multiplies the saved
    gradient by the incoming one (a new tensor each time: ``retain_graph=True`` works), and,
    as :class:`FusedLoss`, refuses ``create_graph=True``.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, compute: Callable) -> torch.Tensor:
        out, grad = compute(input)
        ctx.grad = grad
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            raise RuntimeError(
                "crossent's fused kernels compute first derivatives only, but backward was "
                "called with create_graph=True. For higher-order gradients compute the loss "
                'with backend="reference".'
            )
        return ctx.grad * grad_out, None
