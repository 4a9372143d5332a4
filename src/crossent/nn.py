"""``torch.nn.Module`` wrappers: each stores its options and calls the functional form.

A module holds no math of its own. Tensor options (``weight``, ``pos_weight``, a per-class
``alpha``) are registered as buffers, so they follow ``.to(device)`` and are saved in the
``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossent import functional as CF

__all__ = [
    "AsymmetricLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BinaryFocalLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "PolyFocalLoss",
    "PolyLoss",
    "SoftmaxFocalLoss",
]


class _Loss(nn.Module):
    """Base: tensor options become buffers, every other option is kept as an attribute.

    Names in ``_tensor_options`` are always buffers (a list or number is converted);
    names in ``_maybe_tensor_options`` are buffers when given a tensor and plain options
    otherwise (``alpha`` of :class:`SoftmaxFocalLoss`: a number or a per-class tensor).
    """

    _function: Any = None
    _tensor_options: tuple[str, ...] = ()
    _maybe_tensor_options: tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._options: dict[str, Any] = {}
        self._buffer_options: list[str] = []
        for name, value in options.items():
            if name in self._tensor_options or (
                name in self._maybe_tensor_options and isinstance(value, torch.Tensor)
            ):
                if value is not None and not isinstance(value, torch.Tensor):
                    value = torch.as_tensor(value)
                self.register_buffer(name, value)
                self._buffer_options.append(name)
            else:
                self._options[name] = value

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tensors = {name: getattr(self, name) for name in self._buffer_options}
        return type(self)._function(input, target, **tensors, **self._options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options.items())


class BCEWithLogitsLoss(_Loss):
    """Module form of :func:`crossent.binary_cross_entropy_with_logits` (same keyword options).

    >>> import torch, crossent
    >>> loss_fn = crossent.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0]), ignore_index=-1)
    >>> loss_fn(torch.tensor([0.5, -2.0, 1.0]), torch.tensor([1.0, 0.0, -1.0]))
    tensor(0.7746)
    """

    _function = staticmethod(CF.binary_cross_entropy_with_logits)
    _tensor_options = ("weight", "pos_weight")

    def __init__(
        self,
        *,
        weight: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        ignore_index: float | None = None,
        reduction: str = "mean",
        process_group: Any = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
        )


class BCELoss(BCEWithLogitsLoss):
    """Module form of :func:`crossent.binary_cross_entropy` (probabilities; same options).

    >>> import torch, crossent
    >>> crossent.BCELoss()(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]))
    tensor(0.1643)
    """

    _function = staticmethod(CF.binary_cross_entropy)


class FocalLoss(_Loss):
    """Module form of :func:`crossent.sigmoid_focal_loss` (logits; same keyword options).

    >>> import torch, crossent
    >>> loss_fn = crossent.FocalLoss(gamma=2.0, alpha=0.25)
    >>> loss_fn(torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0]))
    tensor(0.0877)
    """

    _function = staticmethod(CF.sigmoid_focal_loss)
    _tensor_options = ("weight", "pos_weight")

    def __init__(
        self,
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
    ) -> None:
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
        )


class BinaryFocalLoss(FocalLoss):
    """Module form of :func:`crossent.binary_focal_loss` (probabilities; same options as FocalLoss).

    >>> import torch, crossent
    >>> crossent.BinaryFocalLoss(alpha=None)(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]))
    tensor(0.0050)
    """

    _function = staticmethod(CF.binary_focal_loss)


class AsymmetricLoss(_Loss):
    """Module form of :func:`crossent.asymmetric_loss` (logits; same keyword options).

    >>> import torch, crossent
    >>> crossent.AsymmetricLoss()(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]))
    tensor(0.0729)
    """

    _function = staticmethod(CF.asymmetric_loss)
    _tensor_options = ("weight",)

    def __init__(
        self,
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
    ) -> None:
        super().__init__(
            gamma_pos=gamma_pos,
            gamma_neg=gamma_neg,
            clip=clip,
            weight=weight,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
        )


class PolyFocalLoss(_Loss):
    """Module form of :func:`crossent.poly1_focal_loss` (sigmoid; logits; same keyword options).

    >>> import torch, crossent
    >>> loss_fn = crossent.PolyFocalLoss(epsilon=1.0, gamma=2.0, alpha=0.25)
    >>> loss_fn(torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0]))
    tensor(0.2832)
    """

    _function = staticmethod(CF.poly1_focal_loss)
    _tensor_options = ("weight", "pos_weight")

    def __init__(
        self,
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
    ) -> None:
        super().__init__(
            epsilon=epsilon,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            pos_weight=pos_weight,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
        )


# --------------------------------------------------------------------------------------------
# The softmax (multi-class) family
# --------------------------------------------------------------------------------------------


class CrossEntropyLoss(_Loss):
    """Module form of :func:`crossent.cross_entropy` (logits; same keyword options).

    A drop-in for :class:`torch.nn.CrossEntropyLoss` (options keyword-only), with a ``"mean"``
    of 0 instead of NaN when every target is ignored.

    >>> import torch, crossent
    >>> loss_fn = crossent.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    >>> loss_fn(torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]), torch.tensor([0, 1]))
    tensor(2.0202)
    """

    _function = staticmethod(CF.cross_entropy)
    _tensor_options = ("weight",)

    def __init__(
        self,
        *,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        process_group: Any = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
        )


class SoftmaxFocalLoss(_Loss):
    """Module form of :func:`crossent.softmax_focal_loss` (logits; same keyword options).

    ``weight`` and a per-class ``alpha`` tensor are buffers; a number ``alpha`` is an option.

    >>> import torch, crossent
    >>> loss_fn = crossent.SoftmaxFocalLoss(gamma=2.0, alpha=torch.tensor([0.25, 0.5, 1.0]))
    >>> loss_fn(torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]), torch.tensor([0, 1]))
    tensor(0.6517)
    """

    _function = staticmethod(CF.softmax_focal_loss)
    _tensor_options = ("weight",)
    _maybe_tensor_options = ("alpha",)

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        process_group: Any = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
        )


class PolyLoss(_Loss):
    """Module form of :func:`crossent.poly1_cross_entropy` (softmax Poly-1; same keyword options).

    >>> import torch, crossent
    >>> loss_fn = crossent.PolyLoss(epsilon=2.0)
    >>> loss_fn(torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]), torch.tensor([0, 1]))
    tensor(2.7354)
    """

    _function = staticmethod(CF.poly1_cross_entropy)
    _tensor_options = ("weight",)

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        process_group: Any = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(
            epsilon=epsilon,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
        )
