"""``torch.nn.Module`` wrappers: each stores its options and calls the functional form.

A module holds no math of its own. Tensor options (``weight``, ``pos_weight``) are registered as
buffers, so they follow ``.to(device)`` and are saved in the ``state_dict``.
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
    "FocalLoss",
]


class _Loss(nn.Module):
    """Base: tensor options become buffers, every other option is kept as an attribute."""

    _function: Any = None
    _tensor_options: tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._options: dict[str, Any] = {}
        for name, value in options.items():
            if name in self._tensor_options:
                if value is not None and not isinstance(value, torch.Tensor):
                    value = torch.as_tensor(value)
                self.register_buffer(name, value)
            else:
                self._options[name] = value

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tensors = {name: getattr(self, name) for name in self._tensor_options}
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
