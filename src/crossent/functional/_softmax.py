r"""The softmax (multi-class) family: cross entropy, softmax focal loss and Poly-1, from logits.

Every loss here is per sample: the class dimension (1, or 0 for an input of size ``(C)``) holds
the scores of mutually exclusive classes, and the target is either a class index per sample
(integer dtype) or a probability distribution over the classes (floating dtype, the input's
size). The math is written once, in log space, in :func:`softmax_family_loss`: with
``log p = log_softmax(x)``, per-class coefficients :math:`a_c` (the smoothed target times the
class weights) and per-class terms :math:`f_c`,

.. math::

    \ell = \sum_c a_c f_c, \qquad
    f_c = -(1 - p_c)^{\gamma} \log p_c + \epsilon (1 - p_c)

which is cross entropy for :math:`\gamma = \epsilon = 0`, the focal loss for
:math:`\epsilon = 0` and Poly-1 for :math:`\gamma = 0`. The public functions validate,
prepare the targets (``ignore_index``), call that math and hand the per-sample loss and the
denominator of ``"mean"`` to :func:`crossent._reduction.reduce_loss`. That is the
``"reference"`` backend; each of the three first asks :func:`crossent.kernels.select_backend`
whether a fused kernel (loss and closed-form gradient in one pass, :mod:`crossent.kernels`)
computes the call (``_softmax_loss``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from crossent import _validation as V
from crossent._docs import fill_doc
from crossent._reduction import output_dtype, reduce_loss
from crossent.functional._binary import SATURATION, compute_dtype
from crossent.kernels import cross_entropy_loss, select_backend

__all__ = ["cross_entropy", "poly1_cross_entropy", "softmax_focal_loss"]

_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Validation and preparation shared by the family
# --------------------------------------------------------------------------------------------


def check_softmax_common(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    label_smoothing: float,
    reduction: str,
) -> tuple[int, int | None, float]:
    """Checks shared by the family; returns ``(class_dim, ignore_index, label_smoothing)``."""
    V.check_floating_input("input", input)
    class_dim = V.class_dim_of(input)
    is_index = V.check_class_target(input, target)
    num_classes = input.shape[class_dim]
    V.check_class_vector("weight", weight, num_classes, floating=True)
    V.check_reduction(reduction)
    ignore_index = V.check_ignore_index(ignore_index)
    s = V.check_label_smoothing(label_smoothing)
    if is_index:
        V.check_class_indices(target, num_classes, ignore_index)
    return class_dim, ignore_index, s


def check_alpha(alpha: Any, num_classes: int) -> float | torch.Tensor | None:
    """``alpha`` of the softmax focal loss: None, a number >= 0, or a tensor of size (C,)."""
    if alpha is None:
        return None
    if isinstance(alpha, torch.Tensor):
        V.check_class_vector("alpha", alpha, num_classes, allow_scalar=True)
        return alpha
    return V.check_number("alpha", alpha, low=0.0)


def prepare_softmax_targets(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    class_dim: int,
    ignore_index: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits in the compute dtype and the targets with ignored positions made harmless.

    Returns ``(x, target, valid)``. Class indices become int64 with ignored entries set to
    class 0; probability targets come in the compute dtype with ignored rows set to 0.
    ``valid`` (the input's size without the class dimension) is ``None`` when nothing can be
    ignored.
    """
    x = input.to(compute_dtype(input.dtype))
    valid = None
    if not target.is_floating_point():
        t = target.to(torch.long)
        if ignore_index is not None:
            valid = t != ignore_index
            t = torch.where(valid, t, torch.zeros_like(t))
        return x, t, valid
    y = target.to(x.dtype)
    if ignore_index is not None:
        # A position is ignored when its whole target vector holds ignore_index.
        valid = ~(target == ignore_index).all(dim=class_dim)
        y = torch.where(valid.unsqueeze(class_dim), y, torch.zeros_like(y))
    return x, y, valid


# --------------------------------------------------------------------------------------------
# The math
# --------------------------------------------------------------------------------------------


def _class_view(v: torch.Tensor, like: torch.Tensor, class_dim: int) -> torch.Tensor:
    """A (C,) or 0-d per-class tensor shaped to broadcast along ``class_dim`` of ``like``."""
    shape = [1] * like.dim()
    shape[class_dim] = -1
    return v.to(like.dtype).reshape(shape)


def _logsumexp_where(log_p: torch.Tensor, keep: torch.Tensor, class_dim: int) -> torch.Tensor:
    """``log sum_{c: keep} p_c`` along ``class_dim`` (keepdim); -inf when no kept p_c > 0.

    A logsumexp of only -inf values has a NaN gradient (exp(-inf - -inf)); those rows are
    replaced by zeros before the logsumexp and by -inf after it, so their gradient is 0.
    """
    kept = torch.where(keep, log_p, _NEG_INF)
    any_mass = (kept > _NEG_INF).any(dim=class_dim, keepdim=True)
    lse = torch.logsumexp(torch.where(any_mass, kept, 0.0), dim=class_dim, keepdim=True)
    return torch.where(any_mass, lse, _NEG_INF)


def log1m_softmax(log_p: torch.Tensor, class_dim: int) -> torch.Tensor:
    """``log(1 - p_c)`` for every class, exact also where ``p_c`` rounds to 1.

    Only the largest class can have ``p_c`` near 1: for it, ``1 - p_c`` is the sum of the
    other probabilities, a logsumexp of their log-probabilities (no cancellation). Every other
    class has ``p_c <= 1/2``, where ``log1p(-p_c)`` is exact.
    """
    num_classes = log_p.shape[class_dim]
    shape = [1] * log_p.dim()
    shape[class_dim] = num_classes
    classes = torch.arange(num_classes, device=log_p.device).reshape(shape)
    is_max = classes == log_p.argmax(dim=class_dim, keepdim=True)
    # The inner where keeps the unused branch at p = e^-1, so its gradient stays finite.
    others = torch.log1p(-torch.exp(torch.where(is_max, -1.0, log_p)))
    top = _logsumexp_where(log_p, ~is_max, class_dim)
    return torch.where(is_max, top, others)


def _terms(
    log_p: torch.Tensor,
    log_1mp: torch.Tensor | None,
    *,
    gamma: float,
    epsilon: float,
) -> torch.Tensor:
    """Per-class terms ``-(1 - p)^gamma log p + epsilon (1 - p)``.

    ``(1 - p)^gamma = exp(gamma * log(1 - p))`` from an exact ``log(1 - p)``: never a power of a
    rounded probability, so the gradient is finite for every gamma >= 0 at a saturated softmax.
    """
    f = -log_p
    if gamma != 0.0 and log_1mp is not None:
        # Where p < e^-SATURATION, 1 - p is exactly 1 (float64 too) and the factor's derivative
        # exactly 0: cut the branch there, so that d f / d factor = -log p * gamma, which
        # overflows for logits near the format's max, never meets that 0 as inf * 0 = NaN.
        log_1mp = torch.where(log_p < -SATURATION, 0.0, log_1mp)
        # log(1 - p) = -inf (p = 1 exactly) is clamped to the dtype's minimum: a gamma that
        # rounds to 0 in the compute dtype would otherwise give 0 * -inf = NaN.
        floor = torch.finfo(log_1mp.dtype).min
        f = f * torch.exp(gamma * log_1mp.clamp_min(floor))
    if epsilon != 0.0:
        # 1 - p = -expm1(log p): exact to the last bit in absolute terms, which is what a sum needs.
        f = f + epsilon * -torch.expm1(log_p)
    return f


def softmax_family_loss(
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    class_dim: int,
    valid: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    alpha: float | torch.Tensor | None = None,
    gamma: float = 0.0,
    epsilon: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample loss (ignored samples exactly 0) and the denominator of ``"mean"``.

    ``target`` is what :func:`prepare_softmax_targets` returns: int64 class indices (ignored
    ones set to 0) or probabilities (ignored rows zeroed). The loss is
    ``sum_c a_c f_c`` with ``a_c = y_c weight_c alpha_c`` (``y`` smoothed) and ``f_c`` from
    :func:`_terms`. Wherever ``a_c`` is 0, ``log p_c`` is replaced by 0 before ``f_c`` is
    formed: a class with a -inf logit and no target mass then contributes 0 with a zero
    gradient instead of ``0 * inf = NaN``.

    The denominator is the summed ``weight`` of the valid targets' classes for class indices
    (their number without ``weight``), the number of valid positions for probabilities, and
    ``None`` (every position) when nothing is ignored and nothing weighted.
    """
    log_p = F.log_softmax(x, dim=class_dim)
    num_classes = x.shape[class_dim]
    s = label_smoothing
    is_index = not target.is_floating_point()
    valid_k = None if valid is None else valid.unsqueeze(class_dim)

    denominator: torch.Tensor | None = None
    w_t = None
    if is_index:
        t_k = target.unsqueeze(class_dim)
        if weight is not None:
            w_t = weight.to(x.dtype)[target]
            denominator = w_t.sum() if valid is None else torch.where(valid, w_t, 0.0).sum()
        elif valid is not None:
            denominator = valid.sum()
    elif valid is not None:
        denominator = valid.sum()

    if is_index and s == 0.0:
        # Only the target class contributes: gather it, skip the other classes' terms.
        log_p_t = log_p.gather(class_dim, t_k)
        coef = None
        if w_t is not None:
            coef = w_t.unsqueeze(class_dim)
        if alpha is not None:
            if isinstance(alpha, torch.Tensor):
                a = alpha.to(x.dtype)
            else:  # a fill, not a host-to-device copy
                a = torch.full((), alpha, dtype=x.dtype, device=x.device)
            a_t = a[target].unsqueeze(class_dim) if a.dim() == 1 else a
            coef = a_t if coef is None else coef * a_t
        zero = None if valid_k is None else ~valid_k
        if coef is not None:
            zero = coef == 0 if zero is None else zero | (coef == 0)
        if zero is not None:
            log_p_t = torch.where(zero, 0.0, log_p_t)
        log_1mp_t = None
        if gamma != 0.0:
            # 1 - p_t = sum of the other classes' probabilities: exact at saturation.
            classes = torch.arange(num_classes, device=x.device)
            shape = [1] * x.dim()
            shape[class_dim] = num_classes
            log_1mp_t = _logsumexp_where(log_p, classes.reshape(shape) != t_k, class_dim)
        loss = _terms(log_p_t, log_1mp_t, gamma=gamma, epsilon=epsilon)
        if coef is not None:
            loss = loss * coef
        return loss.squeeze(class_dim), denominator

    # Per-class coefficients a_c: the (smoothed) target distribution times the class weights.
    if is_index:
        shape = [1] * x.dim()
        shape[class_dim] = num_classes
        classes = torch.arange(num_classes, device=x.device).reshape(shape)
        coef = (classes == t_k).to(x.dtype) * (1.0 - s) + s / num_classes
    else:
        coef = target
        if s:
            coef = coef * (1.0 - s) + s / num_classes
    if valid_k is not None:
        coef = torch.where(valid_k, coef, 0.0)
    if weight is not None:
        coef = coef * _class_view(weight, x, class_dim)
    if isinstance(alpha, torch.Tensor):
        coef = coef * _class_view(alpha, x, class_dim)
    elif alpha is not None:
        coef = coef * alpha
    log_1mp = log1m_softmax(log_p, class_dim) if gamma != 0.0 else None
    log_p_safe = torch.where(coef == 0, 0.0, log_p)
    loss = (coef * _terms(log_p_safe, log_1mp, gamma=gamma, epsilon=epsilon)).sum(class_dim)
    return loss, denominator


def _softmax_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    class_dim: int,
    ignore_index: int | None,
    label_smoothing: float,
    weight: torch.Tensor | None,
    reduction: str,
    process_group: Any,
    backend: str | None,
    alpha: float | torch.Tensor | None = None,
    gamma: float = 0.0,
    epsilon: float = 0.0,
) -> torch.Tensor:
    """The three public softmax losses after validation: the fused kernel where
    :func:`crossent.kernels.select_backend` picks one (with ``gamma=0``, no ``alpha`` and
    ``epsilon=0`` it runs the cross-entropy kernel), else the reference path, reduced."""
    path = select_backend(backend, input, target, weight, alpha)
    if path != "reference":
        return cross_entropy_loss(
            path,
            input,
            target,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
            process_group=process_group,
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
        )
    x, t, valid = prepare_softmax_targets(
        input, target, class_dim=class_dim, ignore_index=ignore_index
    )
    loss, denominator = softmax_family_loss(
        x,
        t,
        class_dim=class_dim,
        valid=valid,
        weight=weight,
        alpha=alpha,
        gamma=gamma,
        epsilon=epsilon,
        label_smoothing=label_smoothing,
    )
    return reduce_loss(loss, reduction, denominator=denominator, process_group=process_group).to(
        output_dtype(input)
    )


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


@fill_doc
def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    process_group: Any = None,
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
        {softmax_ignore_index}
        {softmax_label_smoothing}
        {softmax_reduction}
        {process_group}
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
    class_dim, ignore_index, s = check_softmax_common(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    return _softmax_loss(
        input,
        target,
        class_dim=class_dim,
        ignore_index=ignore_index,
        label_smoothing=s,
        weight=weight,
        reduction=reduction,
        process_group=process_group,
        backend=backend,
    )


@fill_doc
def softmax_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    process_group: Any = None,
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
        {softmax_ignore_index}
        {softmax_label_smoothing}
        {softmax_reduction}
        {process_group}
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
    class_dim, ignore_index, s = check_softmax_common(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    gamma = V.check_number("gamma", gamma, low=0.0)
    alpha = check_alpha(alpha, input.shape[class_dim])
    return _softmax_loss(
        input,
        target,
        class_dim=class_dim,
        ignore_index=ignore_index,
        label_smoothing=s,
        weight=weight,
        reduction=reduction,
        process_group=process_group,
        backend=backend,
        alpha=alpha,
        gamma=gamma,
    )


@fill_doc
def poly1_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    process_group: Any = None,
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
        {softmax_ignore_index}
        {softmax_label_smoothing}
        {softmax_reduction}
        {process_group}
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
    class_dim, ignore_index, s = check_softmax_common(
        input,
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    epsilon = V.check_number("epsilon", epsilon, low=-1.0)
    return _softmax_loss(
        input,
        target,
        class_dim=class_dim,
        ignore_index=ignore_index,
        label_smoothing=s,
        weight=weight,
        reduction=reduction,
        process_group=process_group,
        backend=backend,
        epsilon=epsilon,
    )
