"""The binary / multi-label (sigmoid) family: BCE, focal loss and ASL, from logits or probabilities.

Every loss here is elementwise: each element of ``input`` is an independent yes/no decision.
The math is written once, in log space, in :func:`sigmoid_family_elementwise` (BCE and focal
loss) and :func:`asymmetric_elementwise` (ASL); the public functions validate, prepare targets
(ignore_index, label smoothing), call that math and hand the result to
:func:`crossent._reduction.reduce_loss`. That is the ``"reference"`` backend; after validation
each function asks :func:`crossent.kernels.select_backend` whether a fused kernel (loss and
closed-form gradient in one pass, :mod:`crossent.kernels`) computes the call instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from crossent import _validation as V
from crossent._docs import fill_doc
from crossent._reduction import output_dtype, reduce_loss
from crossent.kernels import asymmetric_loss as fused_asymmetric
from crossent.kernels import select_backend, sigmoid_family_loss

__all__ = [
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_focal_loss",
    "poly1_focal_loss",
    "sigmoid_focal_loss",
]

# torch's BCELoss clamps each log term at -100 so that p = 0 or 1 gives a finite loss; the
# probability forms keep that clamp so they are drop-in replacements.
LOG_CLAMP = -100.0

# Beyond |x| = 1e3 a modulating factor (1 - p_t)^gamma and its derivative have saturated
# exactly, even in float64 (exp(-745) underflows), or the loss they multiply is exactly 0.
# Computing the factor from logits clamped there changes no value and no gradient, and keeps
# d loss / d factor = base_loss * gamma (~|x| * gamma) from overflowing into 0 * inf = NaN
# for |x| near the float32 maximum.
SATURATION = 1e3


def saturated_logs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p`` and ``log(1 - p)`` from logits clamped at +-SATURATION, for modulating factors."""
    xs = x.clamp(-SATURATION, SATURATION)
    return F.logsigmoid(xs), F.logsigmoid(-xs)


# --------------------------------------------------------------------------------------------
# Preparation shared by the family
# --------------------------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 / float32 -> float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_common(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    label_smoothing: float,
    ignore_index: float | None,
    reduction: str,
) -> float:
    """Metadata checks shared by every elementwise loss; returns label_smoothing as a float."""
    V.check_floating_input("input", input)
    V.check_tensor("target", target)
    if target.is_complex():
        raise TypeError(f"Expected `target` to be real, but got dtype {target.dtype}.")
    V.check_same_shape(input, target)
    V.check_broadcastable("weight", weight, input.shape)
    V.check_broadcastable("pos_weight", pos_weight, input.shape)
    V.check_reduction(reduction)
    if ignore_index is not None:
        V.check_number("ignore_index", ignore_index)
    return V.check_label_smoothing(label_smoothing)


def prepare_targets(
    target: torch.Tensor,
    dtype: torch.dtype,
    *,
    label_smoothing: float,
    ignore_index: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets in the compute dtype, smoothed, with ignored positions set to 0 (harmless).

    Returns ``(y, valid)``; ``valid`` is a bool mask, or ``None`` when nothing can be ignored.
    """
    y = target.to(dtype)
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index
        y = torch.where(valid, y, torch.zeros_like(y))
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return y, valid


def finish(
    loss: torch.Tensor,
    *,
    valid: torch.Tensor | None,
    weight: torch.Tensor | None,
    reduction: str,
    out_dtype: torch.dtype,
    process_group: Any = None,
) -> torch.Tensor:
    """Weight, mask, reduce, and return in the input dtype."""
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    denominator = None
    if valid is not None:
        # where, not multiply: an ignored element contributes exactly 0 whatever its input.
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        denominator = valid.sum()
    return reduce_loss(loss, reduction, denominator=denominator, process_group=process_group).to(
        out_dtype
    )


def _safe_log(x: torch.Tensor, *, floor: float) -> torch.Tensor:
    # log(x) for x > 0, `floor` at x == 0; the inner where keeps log's gradient finite (no 0 * inf).
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), floor)


def log_mix(y: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``log(y * exp(log_a) + (1 - y) * exp(log_b))`` without leaving log space.

    With ``log_a = log(1 - p)`` and ``log_b = log(p)`` this is ``log(1 - p_t)`` for a (soft)
    target ``y``; for ``y`` in {0, 1} it is exactly ``log_b`` or ``log_a``.
    """
    neg_inf = float("-inf")
    log_y = _safe_log(y, floor=neg_inf)
    log_1my = _safe_log(1.0 - y, floor=neg_inf)
    return torch.logaddexp(log_y + log_a, log_1my + log_b)


def sigmoid_family_elementwise(
    log_p: torch.Tensor,
    log_1mp: torch.Tensor,
    y: torch.Tensor,
    *,
    gamma: float = 0.0,
    alpha: float | None = None,
    pos_weight: torch.Tensor | None = None,
    modulating_logs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Elementwise focal loss from ``log p`` and ``log(1 - p)``; BCE when gamma = 0, alpha = None.

    ``modulating_logs``: ``(log p, log(1 - p))`` for the modulating factor only (the saturated
    logs of :func:`saturated_logs`); default: the same logs as the loss.

    ``alpha_t (1 - p_t)^gamma * -(w_pos y log p + (1 - y) log(1 - p))`` with
    ``(1 - p_t)^gamma = exp(gamma log(1 - p_t))``: no probability is rounded to 1 before the
    power, so the gradient at saturated logits is finite for every ``gamma >= 0``.
    """
    pos_term = y * log_p
    if pos_weight is not None:
        pos_term = pos_term * pos_weight.to(log_p.dtype)
    loss = -(pos_term + (1.0 - y) * log_1mp)
    if gamma != 0.0:
        m_log_p, m_log_1mp = modulating_logs if modulating_logs is not None else (log_p, log_1mp)
        loss = loss * torch.exp(gamma * log_mix(y, m_log_1mp, m_log_p))
    if alpha is not None:
        loss = loss * (alpha * y + (1.0 - alpha) * (1.0 - y))
    return loss


def probability_logs(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p`` and ``log(1 - p)`` clamped at -100 as torch's BCELoss does (finite at 0 and 1)."""
    log_p = _safe_log(p, floor=LOG_CLAMP).clamp_min(LOG_CLAMP)
    log_1mp = _safe_log(1.0 - p, floor=LOG_CLAMP).clamp_min(LOG_CLAMP)
    return log_p, log_1mp


def check_focal_options(gamma: float, alpha: float | None) -> tuple[float, float | None]:
    gamma = V.check_number("gamma", gamma, low=0.0)
    if alpha is not None:
        alpha = V.check_number("alpha", alpha, low=0.0, high=1.0)
    return gamma, alpha


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


@fill_doc
def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Binary cross entropy from logits: the loss for binary and multi-label classification.

    Use it whenever each element is an independent yes/no decision (binary classification,
    multi-label tagging, per-pixel masks). It takes raw scores (logits): do not apply a sigmoid
    first. Equal to :func:`torch.nn.functional.binary_cross_entropy_with_logits` for every option
    torch has, and adds ``label_smoothing`` and ``ignore_index``.

    .. math::

        \ell = -w \left[ w_{pos}\, y \log \sigma(x) + (1 - y) \log \sigma(-x) \right]

    computed with ``logsigmoid`` (log space): finite for every finite logit, exact at
    saturation, no ``eps``. {dtype_note}

    Args:
        input: logits, any shape.
        target: targets in [0, 1], the same shape as ``input``.
        {weight}
        {pos_weight}
        {label_smoothing}
        {ignore_index}
        {reduction}
        {process_group}
        {backend}

    {binary_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
        >>> target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> crossent.binary_cross_entropy_with_logits(logits, target)
        tensor(0.2790)

    References:
        Cox, D. R. "The Regression Analysis of Binary Sequences", 1958.
        https://doi.org/10.1111/j.2517-6161.1958.tb00292.x

    See also:
        :func:`binary_cross_entropy` (from probabilities), :func:`sigmoid_focal_loss`
        (down-weights easy examples), :func:`asymmetric_loss` (multi-label with many negatives).
    """
    s = check_common(
        input,
        target,
        weight=weight,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    path = select_backend(backend, input, target, weight, pos_weight)
    if path != "reference":
        return sigmoid_family_loss(
            path,
            input,
            target,
            probs=False,
            gamma=None,
            alpha=None,
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=s,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
        )
    x = input.to(compute_dtype(input.dtype))
    y, valid = prepare_targets(target, x.dtype, label_smoothing=s, ignore_index=ignore_index)
    loss = sigmoid_family_elementwise(F.logsigmoid(x), F.logsigmoid(-x), y, pos_weight=pos_weight)
    return finish(
        loss,
        valid=valid,
        weight=weight,
        reduction=reduction,
        out_dtype=output_dtype(input),
        process_group=process_group,
    )


@fill_doc
def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Binary cross entropy from probabilities: a drop-in for ``F.binary_cross_entropy``.

    Prefer :func:`binary_cross_entropy_with_logits`: a probability that has already been
    rounded to 0 or 1 has lost the information the loss needs. This form exists for models that
    output probabilities. Unlike torch's, it works under ``torch.autocast`` and accepts
    ``pos_weight``, ``label_smoothing`` and ``ignore_index``.

    .. math::

        \ell = -w \left[ w_{pos}\, y \max(\log p, -100) + (1 - y) \max(\log(1 - p), -100) \right]

    The clamp at -100 is torch's, kept so values match it exactly (a probability of exactly 0
    or 1 gives a finite loss); no ``eps`` is added inside the log, so a perfect prediction has
    a loss of exactly 0. {dtype_note}

    Args:
        input: probabilities in [0, 1] (ValueError otherwise), any shape.
        target: targets in [0, 1], the same shape as ``input``.
        {weight}
        {pos_weight}
        {label_smoothing}
        {ignore_index}
        {reduction}
        {process_group}
        {backend}

    {binary_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example (the worked example of the BCE tutorials, with exact inputs):
        >>> import torch, crossent
        >>> _ = torch.manual_seed(42)
        >>> p = torch.rand(2, 3)
        >>> target = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
        >>> crossent.binary_cross_entropy(p, target)
        tensor(0.7739)

    References:
        Goodfellow, Bengio, Courville. "Deep Learning", section 6.2.2.2, 2016.
        https://www.deeplearningbook.org/contents/mlp.html

    See also:
        :func:`binary_cross_entropy_with_logits` (preferred), :func:`binary_focal_loss`.
    """
    s = check_common(
        input,
        target,
        weight=weight,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    V.check_probabilities("input", input)
    path = select_backend(backend, input, target, weight, pos_weight)
    if path != "reference":
        return sigmoid_family_loss(
            path,
            input,
            target,
            probs=True,
            gamma=None,
            alpha=None,
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=s,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
        )
    p = input.to(compute_dtype(input.dtype))
    y, valid = prepare_targets(target, p.dtype, label_smoothing=s, ignore_index=ignore_index)
    log_p, log_1mp = probability_logs(p)
    loss = sigmoid_family_elementwise(log_p, log_1mp, y, pos_weight=pos_weight)
    return finish(
        loss,
        valid=valid,
        weight=weight,
        reduction=reduction,
        out_dtype=output_dtype(input),
        process_group=process_group,
    )


@fill_doc
def sigmoid_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Focal loss from logits (Lin et al. 2017): BCE that down-weights easy examples.

    Use it when a flood of easy negatives dominates the loss (dense detection, segmentation,
    heavily imbalanced multi-label data). ``gamma=0, alpha=None`` is exactly
    :func:`binary_cross_entropy_with_logits`.

    .. math::

        p_t = p\,y + (1 - p)(1 - y), \qquad \alpha_t = \alpha y + (1 - \alpha)(1 - y)

        \ell = -w\, \alpha_t\, (1 - p_t)^{\gamma}
               \left[ w_{pos}\, y \log p + (1 - y) \log(1 - p) \right]

    with :math:`p = \sigma(x)`. Both :math:`\log p` and :math:`\log(1 - p_t)` are computed in log
    space; the modulating factor is :math:`\exp(\gamma \log(1 - p_t))`, so loss and gradient are
    finite for every finite logit and every ``gamma >= 0`` (torchvision's formula gives a NaN
    gradient at ``x = 30, y = 1, gamma = 0.5``). Soft targets follow the same formula, as in
    torchvision. ``"mean"`` averages over valid elements; detection models that normalise by
    the number of positive anchors use ``reduction="sum"`` and divide. {dtype_note}

    Args:
        input: logits, any shape.
        target: targets in [0, 1], the same shape as ``input``.
        {gamma}
        {alpha}
        {weight}
        {pos_weight}
        {label_smoothing}
        {ignore_index}
        {reduction}
        {process_group}
        {backend}

    {binary_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
        >>> target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> crossent.sigmoid_focal_loss(logits, target, gamma=2.0, alpha=0.25)
        tensor(0.0274)

    References:
        Lin, Goyal, Girshick, He, Dollar. "Focal Loss for Dense Object Detection", ICCV 2017.
        https://arxiv.org/abs/1708.02002

    See also:
        :func:`binary_focal_loss` (from probabilities), :func:`asymmetric_loss`,
        :func:`binary_cross_entropy_with_logits`.
    """
    s = check_common(
        input,
        target,
        weight=weight,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    gamma, alpha = check_focal_options(gamma, alpha)
    path = select_backend(backend, input, target, weight, pos_weight)
    if path != "reference":
        return sigmoid_family_loss(
            path,
            input,
            target,
            probs=False,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=s,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
        )
    x = input.to(compute_dtype(input.dtype))
    y, valid = prepare_targets(target, x.dtype, label_smoothing=s, ignore_index=ignore_index)
    loss = sigmoid_family_elementwise(
        F.logsigmoid(x),
        F.logsigmoid(-x),
        y,
        gamma=gamma,
        alpha=alpha,
        pos_weight=pos_weight,
        modulating_logs=saturated_logs(x) if gamma != 0.0 else None,
    )
    return finish(
        loss,
        valid=valid,
        weight=weight,
        reduction=reduction,
        out_dtype=output_dtype(input),
        process_group=process_group,
    )


@fill_doc
def binary_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Focal loss from probabilities: :func:`sigmoid_focal_loss` for models that output p.

    Exists for compatibility; prefer the logits form. ``log p`` and ``log(1 - p)`` are clamped at
    -100 as in :func:`binary_cross_entropy` (so ``gamma=0, alpha=None`` equals it exactly), and
    :math:`(1 - p_t)^\gamma` is taken as :math:`\exp(\gamma \log(1 - p_t))` from those logs, so it
    is finite, with a finite gradient, at ``p`` = 0 or 1 for every ``gamma >= 0``.

    .. math::

        \ell = -w\, \alpha_t\, (1 - p_t)^{\gamma}
               \left[ w_{pos}\, y \log p + (1 - y) \log(1 - p) \right]

    {dtype_note}

    Args:
        input: probabilities in [0, 1] (ValueError otherwise), any shape.
        target: targets in [0, 1], the same shape as ``input``.
        {gamma}
        {alpha}
        {weight}
        {pos_weight}
        {label_smoothing}
        {ignore_index}
        {reduction}
        {process_group}
        {backend}

    {binary_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> p = torch.sigmoid(torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]]))
        >>> target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> crossent.binary_focal_loss(p, target, gamma=2.0, alpha=0.25)
        tensor(0.0274)

    References:
        Lin, Goyal, Girshick, He, Dollar. "Focal Loss for Dense Object Detection", ICCV 2017.
        https://arxiv.org/abs/1708.02002

    See also:
        :func:`sigmoid_focal_loss` (preferred), :func:`binary_cross_entropy`.
    """
    s = check_common(
        input,
        target,
        weight=weight,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    gamma, alpha = check_focal_options(gamma, alpha)
    V.check_probabilities("input", input)
    path = select_backend(backend, input, target, weight, pos_weight)
    if path != "reference":
        return sigmoid_family_loss(
            path,
            input,
            target,
            probs=True,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=s,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
        )
    p = input.to(compute_dtype(input.dtype))
    y, valid = prepare_targets(target, p.dtype, label_smoothing=s, ignore_index=ignore_index)
    log_p, log_1mp = probability_logs(p)
    loss = sigmoid_family_elementwise(
        log_p, log_1mp, y, gamma=gamma, alpha=alpha, pos_weight=pos_weight
    )
    return finish(
        loss,
        valid=valid,
        weight=weight,
        reduction=reduction,
        out_dtype=output_dtype(input),
        process_group=process_group,
    )


def asymmetric_elementwise(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    gamma_pos: float,
    gamma_neg: float,
    clip: float | None,
) -> torch.Tensor:
    """Elementwise ASL in log space; soft targets mix the positive and negative terms linearly.

    Positive term: ``-(1 - p)^gamma_pos log p``. Negative term, with the shifted probability
    ``p_m = max(p - clip, 0)``: ``-p_m^gamma_neg log(1 - p_m)``.
    """
    log_p = F.logsigmoid(x)
    log_1mp = F.logsigmoid(-x)
    # the modulating factors' exponents come from saturated logits (see SATURATION)
    sat_log_p, sat_log_1mp = saturated_logs(x) if gamma_pos or not clip else (log_p, log_1mp)
    pos = -log_p
    if gamma_pos != 0.0:
        pos = pos * torch.exp(gamma_pos * sat_log_1mp)
    if clip:
        # 1 - p_m = min(1 - p + clip, 1): log(sigma(-x) + clip) via logaddexp stays exact when
        # sigma(-x) is tiny; where p <= clip the shifted probability is 0 and so is the loss.
        p_m = (torch.sigmoid(x) - clip).clamp_min(0.0)
        shifted = p_m > 0
        log_pm = _safe_log(p_m, floor=float("-inf"))
        log_1mpm = torch.where(
            shifted, torch.logaddexp(log_1mp, log_1mp.new_tensor(clip).log()), 0.0
        )
    else:
        log_pm, log_1mpm = sat_log_p, log_1mp
        shifted = None
    neg = -log_1mpm
    if gamma_neg != 0.0:
        neg = neg * torch.exp(gamma_neg * log_pm)
    if shifted is not None:
        neg = torch.where(shifted, neg, torch.zeros_like(neg))
    return y * pos + (1.0 - y) * neg


@fill_doc
def asymmetric_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float | None = 0.05,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Asymmetric loss (ASL, Ridnik et al. 2021) from logits, for multi-label classification.

    Use it for multi-label data where each image has a few positive labels among many: it
    focuses negatives harder than positives (``gamma_neg > gamma_pos``) and discards very easy
    negatives entirely through a probability margin (``clip``), which also rejects mislabelled
    negatives.

    .. math::

        p_m = \max(p - m, 0), \qquad
        \ell = -w \left[ y (1 - p)^{\gamma_+} \log p
                         + (1 - y)\, p_m^{\gamma_-} \log(1 - p_m) \right]

    with :math:`p = \sigma(x)` and margin :math:`m` = ``clip``. Computed in log space: no
    ``eps`` clamp inside the log (the official code clamps at 1e-8), exact for hard targets;
    soft targets mix the two terms linearly. The official implementation returns the sum:
    use ``reduction="sum"`` to reproduce it. {dtype_note}

    Args:
        input: logits, any shape.
        target: targets in [0, 1], the same shape as ``input``.
        gamma_pos: focusing parameter of positives, ``>= 0``. Default: 0.
        gamma_neg: focusing parameter of negatives, ``>= 0``. Default: 4.
        clip: probability margin ``m`` in [0, 1) for negatives; ``None`` or 0 disables it.
            Default: 0.05.
        {weight}
        {label_smoothing}
        {ignore_index}
        {reduction}
        {process_group}
        {backend}

    {binary_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
        >>> target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> crossent.asymmetric_loss(logits, target)
        tensor(0.1074)

    References:
        Ridnik, Ben-Baruch, Zamir, Noy, Friedman, Protter, Zelnik-Manor. "Asymmetric Loss For
        Multi-Label Classification", ICCV 2021. https://arxiv.org/abs/2009.14119

    See also:
        :func:`sigmoid_focal_loss`, :func:`binary_cross_entropy_with_logits`.
    """
    s = check_common(
        input,
        target,
        weight=weight,
        pos_weight=None,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    gamma_pos = V.check_number("gamma_pos", gamma_pos, low=0.0)
    gamma_neg = V.check_number("gamma_neg", gamma_neg, low=0.0)
    if clip is not None:
        clip = V.check_number("clip", clip, low=0.0, high=1.0, high_inclusive=False)
    path = select_backend(backend, input, target, weight)
    if path != "reference":
        return fused_asymmetric(
            path,
            input,
            target,
            gamma_pos=gamma_pos,
            gamma_neg=gamma_neg,
            clip=clip,
            weight=weight,
            label_smoothing=s,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
        )
    x = input.to(compute_dtype(input.dtype))
    y, valid = prepare_targets(target, x.dtype, label_smoothing=s, ignore_index=ignore_index)
    loss = asymmetric_elementwise(x, y, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    return finish(
        loss,
        valid=valid,
        weight=weight,
        reduction=reduction,
        out_dtype=output_dtype(input),
        process_group=process_group,
    )


def poly1_focal_elementwise(
    log_p: torch.Tensor,
    log_1mp: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    gamma: float,
    alpha: float | None,
    pos_weight: torch.Tensor | None,
    modulating_logs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Elementwise Poly-1 focal loss: the focal loss plus ``epsilon (1 - p_t)^(gamma + 1)``.

    ``(1 - p_t)^(gamma + 1) = exp((gamma + 1) log(1 - p_t))`` with ``log(1 - p_t)`` from
    :func:`log_mix`, as in the focal term: exact at saturated logits, for soft targets too.
    ``modulating_logs`` as in :func:`sigmoid_family_elementwise`.
    """
    loss = sigmoid_family_elementwise(
        log_p,
        log_1mp,
        y,
        gamma=gamma,
        alpha=alpha,
        pos_weight=pos_weight,
        modulating_logs=modulating_logs,
    )
    if epsilon != 0.0:
        m_log_p, m_log_1mp = modulating_logs if modulating_logs is not None else (log_p, log_1mp)
        loss = loss + epsilon * torch.exp((gamma + 1.0) * log_mix(y, m_log_1mp, m_log_p))
    return loss


@fill_doc
def poly1_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon: float = 1.0,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Poly-1 focal loss from logits (Leng et al. 2022): focal loss plus a polynomial term.

    Use it where :func:`sigmoid_focal_loss` is used (dense detection, imbalanced multi-label
    data) to tune the weight of the leading polynomial term of the focal loss: the paper reports
    gains on COCO detection with ``epsilon=-1`` for RetinaNet. ``epsilon=0`` is exactly
    :func:`sigmoid_focal_loss`.

    .. math::

        \ell = \mathrm{FL}(x, y) + \epsilon\, (1 - p_t)^{\gamma + 1},
        \qquad p_t = p\,y + (1 - p)(1 - y)

    with :math:`\mathrm{FL}` the focal loss of :func:`sigmoid_focal_loss` (``alpha`` and
    ``pos_weight`` act on it alone, as in the paper's code) and ``weight`` multiplying the
    sum. :math:`(1 - p_t)^{\gamma + 1} = \exp((\gamma + 1) \log(1 - p_t))` is computed in
    log space, so loss and gradient are finite for every finite logit. {dtype_note}

    Args:
        input: logits, any shape.
        target: targets in [0, 1], the same shape as ``input``.
        epsilon: the coefficient of the polynomial term, ``>= -1`` (the paper's bound).
            Default: 1.
        {gamma}
        {alpha}
        {weight}
        {pos_weight}
        {label_smoothing}
        {ignore_index}
        {reduction}
        {process_group}
        {backend}

    {binary_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
        >>> target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> crossent.poly1_focal_loss(logits, target, epsilon=1.0)
        tensor(0.0607)
        >>> crossent.poly1_focal_loss(logits, target, epsilon=0.0)  # the focal loss
        tensor(0.0274)

    References:
        Leng, Tan, Liu, Cubuk, Shi, Cheng, Anguelov, Tan. "PolyLoss: A Polynomial Expansion
        Perspective of Classification Loss Functions", ICLR 2022.
        https://arxiv.org/abs/2204.12511

    See also:
        :func:`sigmoid_focal_loss`, :func:`poly1_cross_entropy` (the softmax Poly-1 loss).
    """
    s = check_common(
        input,
        target,
        weight=weight,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction=reduction,
    )
    gamma, alpha = check_focal_options(gamma, alpha)
    epsilon = V.check_number("epsilon", epsilon, low=-1.0)
    path = select_backend(backend, input, target, weight, pos_weight)
    if path != "reference":
        return sigmoid_family_loss(
            path,
            input,
            target,
            probs=False,
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=s,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
        )
    x = input.to(compute_dtype(input.dtype))
    y, valid = prepare_targets(target, x.dtype, label_smoothing=s, ignore_index=ignore_index)
    loss = poly1_focal_elementwise(
        F.logsigmoid(x),
        F.logsigmoid(-x),
        y,
        epsilon=epsilon,
        gamma=gamma,
        alpha=alpha,
        pos_weight=pos_weight,
        modulating_logs=saturated_logs(x),
    )
    return finish(
        loss,
        valid=valid,
        weight=weight,
        reduction=reduction,
        out_dtype=output_dtype(input),
        process_group=process_group,
    )
