"""``torch.nn.Module`` wrappers: each stores its options and calls its loss's definition.

A module holds no math of its own and restates no signature: its options are those of the
loss's public function (:mod:`crossent.functional`). Tensor options (``weight``,
``pos_weight``, a per-class ``alpha``) are registered as buffers, so they follow
``.to(device)`` and are saved in the ``state_dict``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from crossent.losses import (
    ASL,
    BCE,
    CE,
    FOCAL,
    POLY1,
    POLY1_FOCAL,
    SOFTMAX_FOCAL,
    LossDefinition,
)

__all__ = [
    "AsymmetricLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BinaryFocalLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LinearCrossEntropyLoss",
    "LinearLoss",
    "PolyFocalLoss",
    "PolyLoss",
    "SoftmaxFocalLoss",
]


class _Loss(nn.Module):
    """Base of every loss module: stores the options of one loss and calls its definition.

    A subclass names its :class:`~crossent.losses.LossDefinition` (and ``probs = True`` for a
    probability form). Its constructor takes exactly the keyword options of the loss's public
    function, with the same defaults (the signature is that function's, so ``help()`` and
    editors show it), and validates them at construction. Tensor options are buffers:
    ``weight`` and ``pos_weight`` always (a list or number is converted), any other option
    when it is given a tensor (a per-class ``alpha``); ``weight`` and ``pos_weight`` are
    buffers even when ``None``, so a tensor can be assigned to them later.
    """

    definition: LossDefinition
    probs: bool = False
    _TENSOR_OPTIONS = ("weight", "pos_weight")
    # Keywords of the function that belong to one batch, not to the loss: ``forward`` takes
    # them (a module of a loss that has them says so in its signature), the constructor not.
    _CALL_OPTIONS = ("sample_weight",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "definition"):
            return  # a base of several modules (_SoftmaxLoss)
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += list(cls._defaults(signature=True).values())
        cls.__signature__ = inspect.Signature(params, return_annotation=None)

    @classmethod
    def _defaults(cls, *, signature: bool = False) -> dict[str, Any]:
        fn = cls.definition.function(probs=cls.probs)
        return {
            name: (p if signature else p.default)
            for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in cls._CALL_OPTIONS
        }

    def __init__(self, **options: Any) -> None:
        super().__init__()
        defaults = self._defaults()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}; "
                f"its options are: {', '.join(defaults)}."
            )
        values = {**defaults, **options}
        calling = ("reduction", "process_group", "vocab_group", "backend")
        loss_options = {k: v for k, v in values.items() if k not in calling}
        if self.definition.probs_function_name is not None:
            loss_options["probs"] = self.probs
        self.definition.options_from(**loss_options)  # a bad value fails here, not at forward
        self._options: dict[str, Any] = {}
        self._buffer_options: list[str] = []
        for name, value in values.items():
            if name in self._TENSOR_OPTIONS and value is not None:
                value = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
            if name in self._TENSOR_OPTIONS or isinstance(value, torch.Tensor):
                self.register_buffer(name, value)
                self._buffer_options.append(name)
            else:
                self._options[name] = value

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._compute(input, target)

    def _compute(self, input: torch.Tensor, target: torch.Tensor, **call: Any) -> torch.Tensor:
        tensors = {name: getattr(self, name) for name in self._buffer_options}
        return self.definition.compute(
            input, target, probs=self.probs, **tensors, **self._options, **call
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options.items())


class BCEWithLogitsLoss(_Loss):
    """Module form of :func:`crossent.binary_cross_entropy_with_logits` (same keyword options).

    >>> import torch, crossent
    >>> loss_fn = crossent.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0]), ignore_index=-1)
    >>> loss_fn(torch.tensor([0.5, -2.0, 1.0]), torch.tensor([1.0, 0.0, -1.0]))
    tensor(0.7746)
    """

    definition = BCE


class BCELoss(BCEWithLogitsLoss):
    """Module form of :func:`crossent.binary_cross_entropy` (probabilities; same options).

    >>> import torch, crossent
    >>> crossent.BCELoss()(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]))
    tensor(0.1643)
    """

    definition = BCE
    probs = True


class FocalLoss(_Loss):
    """Module form of :func:`crossent.sigmoid_focal_loss` (logits; same keyword options).

    >>> import torch, crossent
    >>> loss_fn = crossent.FocalLoss(gamma=2.0, alpha=0.25)
    >>> loss_fn(torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0]))
    tensor(0.0877)
    """

    definition = FOCAL


class BinaryFocalLoss(FocalLoss):
    """Module form of :func:`crossent.binary_focal_loss` (probabilities; same options as FocalLoss).

    >>> import torch, crossent
    >>> crossent.BinaryFocalLoss(alpha=None)(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]))
    tensor(0.0050)
    """

    definition = FOCAL
    probs = True


class AsymmetricLoss(_Loss):
    """Module form of :func:`crossent.asymmetric_loss` (logits; same keyword options).

    >>> import torch, crossent
    >>> crossent.AsymmetricLoss()(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]))
    tensor(0.0729)
    """

    definition = ASL


class PolyFocalLoss(_Loss):
    """Module form of :func:`crossent.poly1_focal_loss` (sigmoid; logits; same keyword options).

    >>> import torch, crossent
    >>> loss_fn = crossent.PolyFocalLoss(epsilon=1.0, gamma=2.0, alpha=0.25)
    >>> loss_fn(torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0]))
    tensor(0.2832)
    """

    definition = POLY1_FOCAL


# --------------------------------------------------------------------------------------------
# The softmax (multi-class) family
# --------------------------------------------------------------------------------------------


class _SoftmaxLoss(_Loss):
    """Base of the softmax family's modules: ``sample_weight`` is an argument of ``forward``
    (it belongs to the batch), every other option one of the constructor."""

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        *,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of ``input`` and ``target``; ``sample_weight`` as in the function."""
        return self._compute(input, target, sample_weight=sample_weight)


class CrossEntropyLoss(_SoftmaxLoss):
    """Module form of :func:`crossent.cross_entropy` (logits; same keyword options, and
    ``sample_weight`` as an argument of the call: ``loss_fn(input, target, sample_weight=v)``).

    A drop-in for :class:`torch.nn.CrossEntropyLoss` (options keyword-only), with a ``"mean"``
    of 0 instead of NaN when every target is ignored.

    >>> import torch, crossent
    >>> loss_fn = crossent.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    >>> loss_fn(torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]), torch.tensor([0, 1]))
    tensor(2.0202)
    """

    definition = CE


class SoftmaxFocalLoss(_SoftmaxLoss):
    """Module form of :func:`crossent.softmax_focal_loss` (logits; same keyword options, and
    ``sample_weight`` as an argument of the call).

    ``weight`` and a per-class ``alpha`` tensor are buffers; a number ``alpha`` is an option.

    >>> import torch, crossent
    >>> loss_fn = crossent.SoftmaxFocalLoss(gamma=2.0, alpha=torch.tensor([0.25, 0.5, 1.0]))
    >>> loss_fn(torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]), torch.tensor([0, 1]))
    tensor(0.6517)
    """

    definition = SOFTMAX_FOCAL


class PolyLoss(_SoftmaxLoss):
    """Module form of :func:`crossent.poly1_cross_entropy` (softmax Poly-1; same keyword
    options, and ``sample_weight`` as an argument of the call).

    >>> import torch, crossent
    >>> loss_fn = crossent.PolyLoss(epsilon=2.0)
    >>> loss_fn(torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]]), torch.tensor([0, 1]))
    tensor(2.7354)
    """

    definition = POLY1


# --------------------------------------------------------------------------------------------
# Fused linear + loss (crossent.linear): the head's weight is an argument of forward
# --------------------------------------------------------------------------------------------

_LINEAR_CALL_OPTIONS = (
    "reduction",
    "process_group",
    "vocab_group",
    "backend",
    "batch_chunk_size",
    "options",
)


class LinearLoss(nn.Module):
    """Module form of :func:`crossent.linear_loss`: a loss of a linear head, chunked.

    ``loss`` names the loss (``"focal"``, ``"asl"``, ``"ce"``, ...); the other keywords are
    that loss's options and those of :func:`crossent.linear_loss` (``reduction``,
    ``batch_chunk_size``, ``process_group``, ``vocab_group``, ``backend``), validated here.
    Tensor options (``weight``, ``pos_weight``, a per-class ``alpha``) are buffers. The head
    stays the caller's: ``forward(input, linear_weight, target, linear_bias=None)`` takes its
    weight (and bias), so a tied embedding or any ``nn.Linear`` can be passed -- with
    ``vocab_group``, this rank's rows of a vocab-parallel head.

    >>> import torch, crossent
    >>> _ = torch.manual_seed(0)
    >>> head, loss_fn = torch.nn.Linear(4, 10), crossent.nn.LinearLoss("focal", gamma=2.0)
    >>> x, y = torch.randn(6, 4), (torch.rand(6, 10) < 0.2).float()
    >>> bool(torch.isclose(loss_fn(x, head.weight, y, head.bias), crossent.FocalLoss()(head(x), y)))
    True
    """

    def __init__(self, loss: str = "ce", **options: Any) -> None:
        super().__init__()
        from crossent.linear._functional import _definition

        self.loss = loss
        self.definition = _definition(loss)
        loss_options = {k: v for k, v in options.items() if k not in _LINEAR_CALL_OPTIONS}
        self._check(loss_options)
        self._options: dict[str, Any] = {}
        self._buffer_options: list[str] = []
        for name, value in options.items():
            if isinstance(value, torch.Tensor):
                self.register_buffer(name, value)
                self._buffer_options.append(name)
            else:
                self._options[name] = value

    def _check(self, loss_options: dict[str, Any]) -> None:
        if self.definition.probs_function_name is not None:
            loss_options = {**loss_options, "probs": False}
        self.definition.options_from(**loss_options)  # a bad value fails here, not at forward

    def _call_options(self) -> dict[str, Any]:
        tensors = {name: getattr(self, name) for name in self._buffer_options}
        return {**self._options, **tensors}

    def forward(
        self,
        input: torch.Tensor,
        linear_weight: torch.Tensor,
        target: torch.Tensor,
        linear_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from crossent.linear import linear_loss

        return linear_loss(
            input,
            linear_weight,
            target,
            loss=self.loss,
            linear_bias=linear_bias,
            **self._call_options(),
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {"loss": self.loss, **self._options}.items())


class LinearCrossEntropyLoss(LinearLoss):
    """Module form of :func:`crossent.linear_cross_entropy` (same keyword options).

    Unlike :class:`torch.nn.LinearCrossEntropyLoss`, which owns an ``nn.Linear``, it stores
    options only (as every crossent module does): ``forward(input, linear_weight, target,
    linear_bias=None)`` takes the head's weight, so the head -- a tied embedding, a sharded
    layer -- stays where the model keeps it.

    >>> import torch, crossent
    >>> _ = torch.manual_seed(0)
    >>> head, loss_fn = torch.nn.Linear(4, 10), crossent.nn.LinearCrossEntropyLoss()
    >>> x, t = torch.randn(6, 4), torch.tensor([0, 3, 9, 1, -100, 2])
    >>> fused = loss_fn(x, head.weight, t, head.bias)
    >>> bool(torch.isclose(fused, crossent.cross_entropy(head(x), t)))
    True
    """

    def __init__(self, **options: Any) -> None:
        super().__init__("ce", **options)

    def _check(self, loss_options: dict[str, Any]) -> None:
        if loss_options.get("ignore_index", -100) is None:
            loss_options = {**loss_options, "ignore_index": -100}
        super()._check(loss_options)

    def forward(
        self,
        input: torch.Tensor,
        linear_weight: torch.Tensor,
        target: torch.Tensor,
        linear_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from crossent.linear import linear_cross_entropy

        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, **self._call_options()
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options.items())
