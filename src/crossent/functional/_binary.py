"""The binary / multi-label (sigmoid) family: BCE, focal loss and ASL, from logits or probabilities.

Every loss here is elementwise: each element of ``input`` is an independent yes/no decision.
These functions are the public signatures and documentation; each loss itself -- options,
checks, reference math, fused kernels, what the tools show -- is defined once in
:mod:`crossent.losses`, and every call goes through
:meth:`crossent.losses.LossDefinition.compute`.
"""

from __future__ import annotations

from typing import Any

import torch

from crossent._docs import fill_doc
from crossent.losses import ASL, BCE, FOCAL, POLY1_FOCAL

__all__ = [
    "asymmetric_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_focal_loss",
    "poly1_focal_loss",
    "sigmoid_focal_loss",
]


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
    vocab_group: Any = None,
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
        {vocab_group}
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
    return BCE.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        False,
        {
            "pos_weight": pos_weight,
            "weight": weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
        },
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
    vocab_group: Any = None,
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
        {vocab_group}
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
    return BCE.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        True,
        {
            "pos_weight": pos_weight,
            "weight": weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
        },
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
    vocab_group: Any = None,
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
        {vocab_group}
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
    return FOCAL.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        False,
        {
            "gamma": gamma,
            "alpha": alpha,
            "pos_weight": pos_weight,
            "weight": weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
        },
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
    vocab_group: Any = None,
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
        {vocab_group}
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
    return FOCAL.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        True,
        {
            "gamma": gamma,
            "alpha": alpha,
            "pos_weight": pos_weight,
            "weight": weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
        },
    )


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
    vocab_group: Any = None,
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
        {vocab_group}
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
    return ASL.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        False,
        {
            "gamma_pos": gamma_pos,
            "gamma_neg": gamma_neg,
            "clip": clip,
            "weight": weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
        },
    )


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
    vocab_group: Any = None,
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
        {vocab_group}
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
    return POLY1_FOCAL.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        False,
        {
            "epsilon": epsilon,
            "gamma": gamma,
            "alpha": alpha,
            "pos_weight": pos_weight,
            "weight": weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
        },
    )
