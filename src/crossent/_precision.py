"""The one place for dtypes and numeric constants: what a loss computes in, stores and returns.

* :func:`compute_dtype` -- the dtype every backend (reference, fused, compiled, Triton) computes
  a loss in;
* :func:`grad_dtype` -- the dtype a fused forward stores its gradient in;
* :func:`output_dtype` -- the dtype a loss returns;
* ``LOG_CLAMP`` / ``EXP_CLAMP`` -- torch's BCELoss clamp of the log terms of probability inputs;
* ``SATURATION`` -- the logit beyond which a modulating factor has saturated exactly.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "EXP_CLAMP",
    "LOG_CLAMP",
    "SATURATION",
    "compute_dtype",
    "grad_dtype",
    "output_dtype",
]

# torch's BCELoss clamps each log term at -100 so that p = 0 or 1 gives a finite loss; the
# probability forms keep that clamp so they are drop-in replacements.
LOG_CLAMP = -100.0
EXP_CLAMP = math.exp(LOG_CLAMP)

# Beyond |x| = 1e3 a modulating factor (1 - p_t)^gamma and its derivative have saturated
# exactly, even in float64 (exp(-745) underflows), or the loss they multiply is exactly 0.
# Computing the factor from logits clamped there changes no value and no gradient, and keeps
# d loss / d factor = base_loss * gamma (~|x| * gamma) from overflowing into 0 * inf = NaN
# for |x| near the float32 maximum.
SATURATION = 1e3


def compute_dtype(dtype: torch.dtype, probs: bool = False) -> torch.dtype:
    """The dtype a loss computes in, on every backend: float32 for float16 / bfloat16 /
    float32 inputs, float64 for float64 inputs -- and for probability inputs of the binary
    family (``probs``). Their gradient ``((1 - y) p - w y (1 - p)) / (p (1 - p))`` (BCE; the
    focal loss adds a term) is ill-conditioned where it crosses 0, at
    ``p = w y / (1 - y + w y)`` -- soft or smoothed targets put elements there -- and every
    float32 evaluation, torch's included, is hundreds of ulps off on some of them (about 900
    for torch's CUDA ops, 1400 for a float32 kernel, on a 67 x 129 case). In float64 the one
    rounding left is the final cast.

    >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float32, probs=True)
    (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 or probs else torch.float32


def grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gradient a fused forward stores: the input's, but float32 for
    float16. Backward multiplies it by the incoming gradient and only then rounds to float16,
    as autograd does. Stored in float16, a mean's gradient ``(p - y) / N`` falls below
    float16's normal range (6.1e-5) wherever ``|p - y| < 6.1e-5 N`` (a 1000-way softmax's
    classes from 16 rows on), and loss scaling (GradScaler) then multiplied its subnormal
    remains -- a third of a 2048 x 1000 cross entropy's gradient entries were 0 -- while a
    per-element gradient beyond 65504 (``reduction="none"``) overflowed before the incoming
    gradient could bring it back. bfloat16 has float32's range and keeps its own dtype."""
    return torch.float32 if dtype == torch.float16 else dtype


def output_dtype(input: torch.Tensor) -> torch.dtype:
    """The dtype a loss returns for ``input``: the input's own, except under ``torch.autocast``.

    Outside autocast a float16 / bfloat16 input gives a loss in that dtype (computed in
    float32 inside). Under autocast the loss is float32, as torch's own losses are (autocast
    runs them in float32): a ``"sum"`` over many elements or a large loss stays finite where
    float16 would overflow at 65504, and ``loss.dtype`` is what code written for torch expects.

    >>> import torch
    >>> x = torch.zeros(2, dtype=torch.bfloat16)
    >>> output_dtype(x)
    torch.bfloat16
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     output_dtype(x)
    torch.float32
    """
    if (
        input.dtype in (torch.float16, torch.bfloat16)
        and input.device.type in ("cpu", "cuda", "xpu", "mps")
        and torch.is_autocast_enabled(input.device.type)
    ):
        return torch.float32
    return input.dtype
