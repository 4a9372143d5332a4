r"""The softmax (multi-class) family: cross entropy, softmax focal loss and Poly-1, from logits.

Every loss here is per sample: the class dimension (1, or 0 for an input of size ``(C)``) holds
the scores of mutually exclusive classes, and the target is either a class index per sample
(integer dtype) or a probability distribution over the classes (floating dtype, the input's
size). With ``log p = log_softmax(x)``, per-class coefficients :math:`a_c` (the smoothed target
times the class weights) and per-class terms :math:`f_c`,

.. math::

    \ell = \sum_c a_c f_c, \qquad
    f_c = -(1 - p_c)^{\gamma} \log p_c + \epsilon (1 - p_c)

which is cross entropy for :math:`\gamma = \epsilon = 0`, the focal loss for
:math:`\epsilon = 0` and Poly-1 for :math:`\gamma = 0`. Every one of them also takes three
options for large-vocabulary training, applied to sample :math:`i` as

.. math::

    x \leftarrow c \tanh(x / c), \qquad
    \ell_i \leftarrow v_i \left( \ell_i + \lambda\, \omega_i\, \mathrm{lse}(x_i)^2 \right)

with ``softcap`` :math:`c` (Gemma 2; first, so everything else sees the capped logits),
``z_loss`` :math:`\lambda` (PaLM; :math:`\omega_i` the weight the sample carries in the mean's
denominator: :math:`w_{t_i}` for a class index with ``weight``, else 1) and ``sample_weight``
:math:`v_i`, which never enters the denominator. These functions are the public signatures
and documentation; each loss is defined once in :mod:`crossent.losses`.
"""

from __future__ import annotations

from typing import Any

import torch

from crossent._docs import fill_doc
from crossent.losses import CE, POLY1, SOFTMAX_FOCAL

__all__ = ["cross_entropy", "poly1_cross_entropy", "softmax_focal_loss"]


@fill_doc
def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    vocab_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Cross entropy from logits: the loss for multi-class classification.

    Use it when every sample belongs to exactly one of ``C`` classes (or, with probability
    targets, to a distribution over them: mixup, distillation). It takes raw scores (logits):
    do not apply a softmax first. Equal to :func:`torch.nn.functional.cross_entropy` in value
    and gradient for every combination of its options; the one deliberate difference is that
    when every target is ignored, ``"mean"`` returns 0 with a zero gradient instead of NaN.

    .. math::

        y'_c = (1 - s)\, y_c + \frac{s}{C}, \qquad
        \ell = -\sum_c w_c\, y'_c \log p_c, \qquad p = \operatorname{softmax}(x)

    with :math:`y` the one-hot vector of a class index, or the probability target; for a class
    index :math:`t` this is :math:`-(1 - s) w_t \log p_t - \frac{s}{C} \sum_c w_c \log p_c`
    (torch's formula, weights inside the smoothing sum). ``log p`` is ``log_softmax``: finite
    for every finite logit, and a class with a ``-inf`` logit that carries no target mass
    contributes 0 with a zero gradient (with ``label_smoothing > 0`` every class carries mass,
    so such a row's loss is ``inf``, as in torch). {dtype_note}

    Args:
        input: logits, size ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``.
        target: class indices (integer dtype) or class probabilities (floating dtype, the
            input's size); see Shape.
        {softmax_weight}
        {softmax_sample_weight}
        {softmax_ignore_index}
        {softmax_label_smoothing}
        {softmax_z_loss}
        {softmax_softcap}
        {softmax_reduction}
        {process_group}
        {vocab_group}
        {backend}

    {softmax_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
        >>> crossent.cross_entropy(logits, torch.tensor([0, 1]))
        tensor(1.5755)
        >>> crossent.cross_entropy(logits, torch.tensor([0, -100]))  # the second is ignored
        tensor(0.2413)

    References:
        Goodfellow, Bengio, Courville. "Deep Learning", section 6.2.2.3 (softmax units), 2016.
        https://www.deeplearningbook.org/contents/mlp.html ;
        Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. "Rethinking the Inception Architecture for
        Computer Vision" (label smoothing), CVPR 2016. https://arxiv.org/abs/1512.00567

    See also:
        :func:`softmax_focal_loss` (down-weights easy examples), :func:`poly1_cross_entropy`,
        :func:`crossent.class_weights` (a ``weight`` from class counts),
        :func:`binary_cross_entropy_with_logits` (independent labels).
    """
    return CE.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        False,
        {
            "weight": weight,
            "sample_weight": sample_weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
            "z_loss": z_loss,
            "softcap": softcap,
        },
    )


@fill_doc
def softmax_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    vocab_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Multi-class focal loss from logits (Lin et al. 2017): cross entropy for hard examples.

    Use it for multi-class problems where many easy, well-classified samples drown the few
    hard ones (long-tailed classification, dense per-pixel classification). The factor
    :math:`(1 - p_t)^\gamma` shrinks the loss of confident correct predictions.
    ``gamma=0, alpha=None`` is exactly :func:`cross_entropy` (the same code path).

    .. math::

        \ell = -\sum_c w_c\, \alpha_c\, y'_c\, (1 - p_c)^{\gamma} \log p_c,
        \qquad y'_c = (1 - s)\, y_c + \frac{s}{C}

    so a class index :math:`t` without smoothing gives
    :math:`-w_t \alpha_t (1 - p_t)^\gamma \log p_t`. Probability targets weight each class's
    focal term by its target mass, so class indices equal their one-hot form (for ``"none"``
    and ``"sum"``; ``"mean"`` divides differently, see ``reduction``). Both
    :math:`\log p_c` (``log_softmax``) and :math:`\log(1 - p_c)` are computed in log space --
    :math:`1 - p_t` as the logsumexp of the other classes, never by subtracting a rounded
    probability from 1 -- and :math:`(1 - p_c)^\gamma = \exp(\gamma \log(1 - p_c))`, so loss
    and gradient are finite for every ``gamma >= 0`` (including ``0 < gamma < 1``) at a
    saturated softmax, for logits up to ``1e4`` and beyond, and for rows whose other classes
    have ``-inf`` logits (without ``label_smoothing``, which gives those classes target mass
    and so an infinite loss, as in cross entropy). ``"mean"`` divides as
    :func:`cross_entropy` does (by the summed ``weight`` of the valid targets' classes for
    class indices); ``alpha`` rescales the terms only, never the denominator. {dtype_note}

    Args:
        input: logits, size ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``.
        target: class indices (integer dtype) or class probabilities (floating dtype, the
            input's size); see Shape.
        gamma: focusing parameter ``>= 0``; 0 gives cross entropy, 2 is the paper's choice.
            Default: 2.
        alpha: class balancing factor: ``None`` (default, off), a number ``>= 0`` (one factor
            for every class, i.e. a scale) or a tensor of size ``(C,)`` with one factor per
            class, ``>= 0``. Unlike ``weight`` it does not enter the denominator of ``"mean"``.
        {softmax_weight}
        {softmax_sample_weight}
        {softmax_ignore_index}
        {softmax_label_smoothing}
        {softmax_z_loss}
        {softmax_softcap}
        {softmax_reduction}
        {process_group}
        {vocab_group}
        {backend}

    {softmax_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
        >>> target = torch.tensor([0, 1])
        >>> crossent.softmax_focal_loss(logits, target, gamma=2.0)
        tensor(1.3061)
        >>> crossent.softmax_focal_loss(logits, target, gamma=0.0)  # cross entropy
        tensor(1.5755)

    References:
        Lin, Goyal, Girshick, He, Dollar. "Focal Loss for Dense Object Detection", ICCV 2017.
        https://arxiv.org/abs/1708.02002

    See also:
        :func:`cross_entropy`, :func:`poly1_cross_entropy`, :func:`sigmoid_focal_loss` (for
        independent labels), :func:`crossent.class_weights` (a per-class ``alpha`` or
        ``weight`` from class counts).
    """
    return SOFTMAX_FOCAL.call(
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
            "weight": weight,
            "sample_weight": sample_weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
            "z_loss": z_loss,
            "softcap": softcap,
        },
    )


@fill_doc
def poly1_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon: float = 1.0,
    weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    process_group: Any = None,
    vocab_group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Poly-1 cross entropy (Leng et al. 2022): cross entropy plus ``epsilon (1 - P_t)``.

    Use it as a drop-in replacement for cross entropy with one extra knob: the paper reports
    gains in classification (``epsilon=2`` on ImageNet) from raising the weight of the first
    polynomial term of the cross-entropy expansion; negative values (down to -1) lower it.
    ``epsilon=0`` is exactly :func:`cross_entropy` (the same code path).

    .. math::

        P_t = \sum_c y'_c\, p_c, \qquad
        \ell = \mathrm{CE}(x, y') + \epsilon\, (1 - P_t)

    with :math:`y'` the (smoothed) target distribution, as in the paper's code: :math:`P_t` is
    the target mass the model assigns, not :math:`\exp(-\mathrm{CE})`. With ``weight`` each
    class's term is weighted as in cross entropy, :math:`\ell = \sum_c w_c y'_c
    [-\log p_c + \epsilon (1 - p_c)]`, so the weight of a sample scales its whole loss; for
    targets that sum to one and no weight this is the formula above. ``"mean"`` divides as
    :func:`cross_entropy` does. :math:`1 - p_c` is ``-expm1(log p_c)``. {dtype_note}

    Args:
        input: logits, size ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``.
        target: class indices (integer dtype) or class probabilities (floating dtype, the
            input's size); see Shape.
        epsilon: the coefficient of the first polynomial term, ``>= -1`` (the paper's bound).
            Default: 1.
        {softmax_weight}
        {softmax_sample_weight}
        {softmax_ignore_index}
        {softmax_label_smoothing}
        {softmax_z_loss}
        {softmax_softcap}
        {softmax_reduction}
        {process_group}
        {vocab_group}
        {backend}

    {softmax_shape}

    Returns:
        The loss, in the input's dtype (float32 under ``torch.autocast``).

    Example:
        >>> import torch, crossent
        >>> logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
        >>> target = torch.tensor([0, 1])
        >>> crossent.poly1_cross_entropy(logits, target, epsilon=1.0)
        tensor(2.1554)
        >>> crossent.poly1_cross_entropy(logits, target, epsilon=0.0)  # cross entropy
        tensor(1.5755)

    References:
        Leng, Tan, Liu, Cubuk, Shi, Cheng, Anguelov, Tan. "PolyLoss: A Polynomial Expansion
        Perspective of Classification Loss Functions", ICLR 2022.
        https://arxiv.org/abs/2204.12511

    See also:
        :func:`cross_entropy`, :func:`softmax_focal_loss`, :func:`poly1_focal_loss` (the
        sigmoid Poly-1 focal loss).
    """
    return POLY1.call(
        input,
        target,
        reduction,
        process_group,
        vocab_group,
        backend,
        False,
        {
            "epsilon": epsilon,
            "weight": weight,
            "sample_weight": sample_weight,
            "label_smoothing": label_smoothing,
            "ignore_index": ignore_index,
            "z_loss": z_loss,
            "softcap": softcap,
        },
    )
