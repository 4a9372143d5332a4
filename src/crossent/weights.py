r"""Class-weight tools: ``pos_weight`` for the sigmoid family, ``weight`` / ``alpha`` for softmax.

Three small functions that turn a data set's targets into the weights the losses take:

* :func:`class_counts` -- how many samples of each class (index, one-hot, multi-hot or soft
  targets);
* :func:`class_weights` -- per-class weights from those counts (inverse frequency, inverse
  square root, or Cui et al.'s effective number), for ``weight=`` of :func:`cross_entropy` or
  ``alpha=`` of :func:`softmax_focal_loss`;
* :func:`pos_weight` -- negatives / positives per label, for ``pos_weight=`` of the sigmoid
  family.

They run once on a data set, not in the training loop, so they may read tensor values and warn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from crossent import _validation as V

__all__ = ["class_counts", "class_weights", "pos_weight"]

METHODS = ("inverse_freq", "inverse_sqrt_freq", "effective_num")


def _labels(mask: torch.Tensor, limit: int = 10) -> str:
    """The indices where ``mask`` is True, as text (the first ``limit`` of them)."""
    index = mask.nonzero()
    shown = [tuple(i.tolist()) if len(i) > 1 else int(i[0]) for i in index[:limit]]
    more = f" and {len(index) - limit} more" if len(index) > limit else ""
    return ", ".join(str(s) for s in shown) + more


def _dims(dim: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
            raise ValueError(
                f"Expected `dim` to be a dimension of a target with {ndim} dimensions "
                f"(an int in [{-ndim}, {ndim - 1}] or a tuple of them), but got {dim!r}."
            )
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"Expected `dim` to name each dimension once, but got {dim!r}.")
    return tuple(out)


def pos_weight(
    target: torch.Tensor,
    *,
    dim: int | Sequence[int] = 0,
    ignore_index: float | None = None,
) -> torch.Tensor:
    r"""``negatives / positives`` per label, the ``pos_weight`` that balances each label.

    Use it with :func:`binary_cross_entropy_with_logits` (or the focal losses) on multi-label
    or binary data where positives are rare: weighting each label's positive term by this
    ratio gives its positives and negatives the same total weight.

    .. math::

        \mathrm{pos\_weight}_j = \frac{\sum_i (1 - y_{ij})}{\sum_i y_{ij}}

    summed over the dimension(s) ``dim`` (the samples). Soft targets count fractionally. A
    label with no positives (or no negatives) has no meaningful ratio: it gets the neutral
    weight 1 and a ``UserWarning`` naming it -- never ``inf`` or 0.

    Args:
        target: multi-hot or binary targets with values in [0, 1] (float, integer or bool).
        dim: the dimension(s) holding the samples, summed over. Default: 0, for an ``(N, C)``
            target. For ``(N, C, H, W)`` masks pass ``dim=(0, 2, 3)`` and reshape the result to
            ``(C, 1, 1)``.
        ignore_index: target entries equal to this value are not counted (the losses'
            ``ignore_index``). Default: None.

    Shape:
        - target: any shape ``(*)``.
        - output: ``target``'s shape without the dimensions in ``dim``.

    Returns:
        A tensor of the default floating dtype (float32 unless changed).

    Example:
        >>> import torch, crossent
        >>> target = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 1, 1]])
        >>> crossent.pos_weight(target)
        tensor([3.0000, 3.0000, 0.3333])

    References:
        The ``pos_weight`` argument of :class:`torch.nn.BCEWithLogitsLoss`, whose documentation
        suggests this ratio. https://pytorch.org/docs/stable/generated/torch.nn.BCEWithLogitsLoss.html

    See also:
        :func:`class_weights` (per-class weights for the softmax family),
        :func:`class_counts`.
    """
    V.check_tensor("target", target)
    if target.is_complex():
        raise TypeError(f"Expected `target` to be real, but got dtype {target.dtype}.")
    if target.dim() == 0:
        raise ValueError(
            f"Expected `target` to have a sample dimension, but got size {target.shape}."
        )
    dims = _dims(dim, target.dim())
    y = target.to(torch.float64)
    keep = torch.ones_like(y, dtype=torch.bool)
    if ignore_index is not None:
        V.check_number("ignore_index", ignore_index)
        keep = y != ignore_index
    bad = keep & ((y < 0) | (y > 1) | torch.isnan(y))
    if bool(bad.any()):
        raise ValueError(
            f"Expected `target` to hold multi-hot or binary targets in [0, 1], but it holds "
            f"{y[bad].flatten()[0].item()!r}. Pass `ignore_index` for markers of ignored "
            f"entries."
        )
    y = torch.where(keep, y, 0.0)
    positives = y.sum(dims)
    negatives = keep.to(torch.float64).sum(dims) - positives
    degenerate = (positives == 0) | (negatives == 0)
    if bool(degenerate.any()):
        warnings.warn(
            f"pos_weight: label(s) {_labels(degenerate)} have no positive or no negative "
            f"targets, so negatives / positives is undefined or 0; they get pos_weight 1 "
            f"(no re-weighting). Check the targets, or count over more data.",
            UserWarning,
            stacklevel=2,
        )
    ratio = negatives / torch.where(degenerate, 1.0, positives)
    return torch.where(degenerate, 1.0, ratio).to(torch.get_default_dtype())


def class_weights(
    counts: torch.Tensor | Sequence[float],
    *,
    method: str = "effective_num",
    beta: float = 0.999,
) -> torch.Tensor:
    r"""Per-class weights from class counts, normalised to sum to the number of classes.

    Use the result as ``weight=`` of :func:`cross_entropy` / :func:`poly1_cross_entropy` or as
    ``alpha=`` of :func:`softmax_focal_loss` on imbalanced data. ``"effective_num"`` (Cui et al.
    2019) interpolates between no re-weighting (``beta = 0``) and inverse frequency
    (``beta -> 1``); ``beta`` = 0.9, 0.99, 0.999, 0.9999 are the paper's choices.

    .. math::

        \text{inverse\_freq: } \frac{1}{n_c}, \qquad
        \text{inverse\_sqrt\_freq: } \frac{1}{\sqrt{n_c}}, \qquad
        \text{effective\_num: } \frac{1 - \beta}{1 - \beta^{n_c}},

        w_c = C\, \frac{u_c}{\sum_k u_k}

    with :math:`u_c` the unnormalised weight. :math:`1 - \beta^{n}` is computed as
    ``-expm1(n log beta)`` (exact for ``beta`` close to 1). A class with a zero count (absent
    from the data) gets the weight of the rarest observed class, with a ``UserWarning``; when
    every count is 0 all weights are 1. Never ``inf`` or NaN. scikit-learn's
    ``class_weight="balanced"`` is ``inverse_freq`` up to a constant factor.

    Args:
        counts: the number of samples per class, ``>= 0`` (fractional counts of soft targets
            are fine), e.g. from :func:`class_counts`.
        method: ``"inverse_freq"``, ``"inverse_sqrt_freq"`` or ``"effective_num"`` (default).
        beta: the effective-number hyperparameter in [0, 1); only used by
            ``"effective_num"``. Default: 0.999.

    Shape:
        - counts: ``(C,)``.
        - output: ``(C,)``.

    Returns:
        A tensor of the default floating dtype (float32 unless changed) that sums to ``C``.

    Example:
        >>> import torch, crossent
        >>> counts = torch.tensor([900, 90, 10])
        >>> crossent.class_weights(counts, method="inverse_freq")
        tensor([0.0297, 0.2970, 2.6733])
        >>> crossent.class_weights(counts, method="effective_num", beta=0.99)
        tensor([0.2284, 0.3836, 2.3880])

    References:
        Cui, Jia, Lin, Song, Belongie. "Class-Balanced Loss Based on Effective Number of
        Samples", CVPR 2019. https://arxiv.org/abs/1901.05555 ;
        Mahajan et al. "Exploring the Limits of Weakly Supervised Pretraining" (square-root
        re-weighting), ECCV 2018. https://arxiv.org/abs/1805.00932

    See also:
        :func:`class_counts`, :func:`pos_weight` (for the sigmoid family).
    """
    if not isinstance(counts, torch.Tensor):
        try:
            counts = torch.tensor(counts, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"Expected `counts` to be a tensor or a sequence of numbers, but got {counts!r}."
            ) from None
    if counts.is_complex() or counts.dtype == torch.bool:
        raise TypeError(f"Expected `counts` to be a real tensor, but got dtype {counts.dtype}.")
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"Expected `counts` to have size (C,) with C >= 1, one count per class, but got "
            f"size {counts.shape}."
        )
    V.check_choice("method", method, METHODS)
    beta = V.check_number("beta", beta, low=0.0, high=1.0, high_inclusive=False)
    n = counts.detach().to(torch.float64).cpu()
    bad = (n < 0) | ~torch.isfinite(n)
    if bool(bad.any()):
        raise ValueError(
            f"Expected `counts` to be finite and >= 0, but it holds {n[bad][0].item()!r}."
        )
    observed = n > 0
    num_classes = n.numel()
    if not bool(observed.any()):
        warnings.warn(
            "class_weights: every count is 0; returning weights of 1.", UserWarning, stacklevel=2
        )
        return torch.ones(num_classes, dtype=torch.get_default_dtype())
    n_safe = torch.where(observed, n, 1.0)
    if method == "inverse_freq":
        raw = 1.0 / n_safe
    elif method == "inverse_sqrt_freq":
        raw = n_safe.rsqrt()
    elif beta == 0.0:
        raw = torch.ones_like(n_safe)  # (1 - 0) / (1 - 0^n) = 1 for every n > 0
    else:
        # 1 - beta^n = -expm1(n log beta): no cancellation for beta close to 1.
        raw = (1.0 - beta) / -torch.expm1(n_safe * math.log(beta))
    if not bool(observed.all()):
        warnings.warn(
            f"class_weights: class(es) {_labels(~observed)} have a count of 0; they get the "
            f"weight of the rarest observed class.",
            UserWarning,
            stacklevel=2,
        )
        raw = torch.where(observed, raw, raw[observed].max())
    weights = raw * (num_classes / raw.sum())
    return weights.to(torch.get_default_dtype())


def class_counts(
    target: torch.Tensor,
    num_classes: int | None = None,
    *,
    ignore_index: int | None = -100,
) -> torch.Tensor:
    r"""The number of samples of each class, from class-index, one-hot or multi-hot targets.

    Use it on a data set's targets to feed :func:`class_weights`.

    .. math::

        n_c = \#\{i : t_i = c\} \quad \text{(class indices)}, \qquad
        n_c = \sum_i y_{ic} \quad \text{(one-hot, multi-hot, soft targets)}

    Args:
        target: class indices (an integer dtype, any shape; entries equal to ``ignore_index``
            are not counted), or one-hot / multi-hot / probability targets (floating or bool)
            whose class dimension is 1 (0 for a 1-D target), as the losses take them.
        num_classes: ``C``. For class indices it defaults to the largest index + 1; for the
            other forms it must equal the size of the class dimension if given.
        ignore_index: the marker of ignored class indices. Default: -100 (torch's).

    Shape:
        - target: ``(*)`` of indices, or ``(C)``, ``(N, C)``, ``(N, C, d1, ..., dk)``.
        - output: ``(C,)``.

    Returns:
        int64 counts for integer and bool targets; float64 sums for floating targets (soft
        targets count fractionally).

    Example:
        >>> import torch, crossent
        >>> crossent.class_counts(torch.tensor([0, 2, 2, -100, 1, 2]))
        tensor([1, 1, 3])
        >>> crossent.class_counts(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
        tensor([1., 0., 2.], dtype=torch.float64)

    References:
        Cui, Jia, Lin, Song, Belongie. "Class-Balanced Loss Based on Effective Number of
        Samples", CVPR 2019. https://arxiv.org/abs/1901.05555

    See also:
        :func:`class_weights`, :func:`pos_weight`.
    """
    V.check_tensor("target", target)
    if target.is_complex():
        raise TypeError(f"Expected `target` to be real, but got dtype {target.dtype}.")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"Expected `num_classes` to be an int >= 1, but got {num_classes!r}.")
    if target.is_floating_point() or target.dtype == torch.bool:
        if target.dim() == 0:
            raise ValueError(
                f"Expected one-hot or multi-hot `target` to have a class dimension, but got "
                f"size {target.shape}."
            )
        class_dim = 0 if target.dim() == 1 else 1
        size = target.shape[class_dim]
        if num_classes is not None and num_classes != size:
            raise ValueError(
                f"Expected `num_classes` to equal the size of the target's class dimension "
                f"{class_dim} ({size}), but got {num_classes}."
            )
        dims = tuple(d for d in range(target.dim()) if d != class_dim)
        if target.dtype == torch.bool:
            return target.to(torch.int64).sum(dims) if dims else target.to(torch.int64)
        return target.to(torch.float64).sum(dims) if dims else target.to(torch.float64)
    ignore_index = V.check_ignore_index(ignore_index)
    t = target.flatten().to(torch.int64)
    if ignore_index is not None:
        t = t[t != ignore_index]
    if t.numel():
        bad = t < 0
        if num_classes is not None:
            bad = bad | (t >= num_classes)
        if bool(bad.any()):
            allowed = ">= 0" if num_classes is None else f"in [0, {num_classes - 1}]"
            raise ValueError(
                f"Expected `target` to hold class indices {allowed} or equal to `ignore_index` "
                f"({ignore_index}), but it holds {t[bad][0].item()}."
            )
    if num_classes is None:
        num_classes = int(t.max().item()) + 1 if t.numel() else 0
    return torch.bincount(t, minlength=num_classes)
