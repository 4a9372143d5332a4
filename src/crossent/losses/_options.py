"""Options of the closed forms: one frozen dataclass per kernel family, passed by name.

A loss's definition (:mod:`crossent.losses`) turns its public keywords into one of these
structures, validated and normalised once: a feature that is off is ``None`` (no ``gamma``
of 0, no ``label_smoothing`` of 0.0), so every backend tests the same thing. The reference
math, the eager and compiled closed forms (:mod:`crossent.kernels._math`) and the Triton
launchers (:mod:`crossent.kernels._triton`) read the fields by name.

Under ``torch.compile`` a numeric option is a 0-dim tensor (:meth:`KernelOptions.for_compile`):
a new value is a new graph input, not a recompile; which options are ``None`` and the flags
are the graph's structure (:meth:`KernelOptions.structure`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["AsymmetricOptions", "KernelOptions", "SigmoidOptions", "SoftmaxOptions"]

Scalar = float | torch.Tensor


@functools.lru_cache(maxsize=512)
def _cached_scalar(
    value: Any, dtype: torch.dtype, device: torch.device, slot: str = ""
) -> torch.Tensor:
    """A 0-dim tensor holding ``value``: options repeat from call to call, and the kernels only
    read these. One tensor per ``slot`` (the option it is for): two options of a call are never
    the same tensor object, since dynamo guards on such aliasing and recompiles when it
    changes (``gamma=2`` then ``gamma=3`` had made two of the gamma bits alias)."""
    return torch.full((), value, dtype=dtype, device=device)


def _scalar(value: Any, dtype: torch.dtype, device: torch.device, slot: str) -> Any:
    if value is None or isinstance(value, torch.Tensor):
        return value if value is None else value.to(dtype)
    return _cached_scalar(value, dtype, device, slot)


def integer_gamma(gamma: Scalar | None) -> int | None:
    """A focal ``gamma`` that is an integer in [0, 8] (2 in the paper), as an ``int``; else
    ``None``. The kernels take ``(1 - p_t)^gamma`` for these by multiplication (no log, no
    exp per element)."""
    if isinstance(gamma, (int, float)) and float(gamma).is_integer() and 0 <= gamma <= 8:
        return int(gamma)
    return None


@dataclass(frozen=True)
class KernelOptions:
    """Base of the option structures. Subclasses list their fields; these methods read them."""

    # Fields holding tensors the size of (part of) the input, sliced with it by row chunks.
    _row_tensors: tuple[str, ...] = dataclasses.field(default=(), init=False, repr=False)
    # Numeric fields, 0-dim tensors in the compute dtype under torch.compile.
    _numbers: tuple[str, ...] = dataclasses.field(default=(), init=False, repr=False)
    # Dimensions the input has beyond a row tensor's: 0 (elementwise: a row tensor has the
    # input's shape), 1 (per sample: the input's shape without its class dimension).
    _class_dims: int = dataclasses.field(default=0, init=False, repr=False)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensor options (weights): the dispatcher checks whether one needs a gradient."""
        return tuple(
            v
            for f in dataclasses.fields(self)
            if isinstance(v := getattr(self, f.name), torch.Tensor)
        )

    def structure(self) -> tuple:
        """What a compiled graph specialises on: which options are ``None``, and the flags."""
        out = []
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            out.append(v if v is None or isinstance(v, (bool, tuple)) else 0)
        return tuple(out)

    def for_compile(self, input: torch.Tensor, target: torch.Tensor) -> KernelOptions:
        """The same options with every number a 0-dim tensor: in the compute dtype, and
        ``ignore_index`` in the dtype it is compared in (the target's; float64 for integer
        targets of the binary family)."""
        from crossent._precision import compute_dtype

        dtype = compute_dtype(input.dtype, bool(getattr(self, "probs", False)))
        changes = {
            name: _scalar(getattr(self, name), dtype, input.device, name) for name in self._numbers
        }
        ignore = getattr(self, "ignore_index", None)
        if ignore is not None:
            changes["ignore_index"] = _scalar(
                ignore, self._ignore_dtype(target), input.device, "ignore_index"
            )
        return dataclasses.replace(self, **changes)

    def _ignore_dtype(self, target: torch.Tensor) -> torch.dtype:
        return target.dtype if target.is_floating_point() else torch.float64

    def rows(self, rows: slice, n_rows: int, ndim: int) -> KernelOptions:
        """The options for a slice of rows (dimension 0) of an ``ndim``-dimensional input of
        ``n_rows`` rows: a tensor option of the rank a row tensor has (the input's; for a
        per-sample loss the input's without the class dimension) that varies along it is
        sliced."""
        rank = ndim - self._class_dims
        changes = {}
        for name in self._row_tensors:
            w = getattr(self, name)
            if w is not None and rank > 0 and w.dim() == rank and w.shape[0] == n_rows > 1:
                changes[name] = w[rows]
        return dataclasses.replace(self, **changes) if changes else self

    def columns(self, columns: slice, n_classes: int) -> KernelOptions:
        """The options for a slice of the classes (the last dimension) of an elementwise
        loss's input of ``n_classes`` classes: a tensor option that varies along the classes
        (a per-class or per-element weight) is sliced; one that broadcasts along them is
        kept."""
        if self._class_dims:
            raise TypeError(
                f"{type(self).__name__} is a per-sample loss's: its classes are not sliced."
            )
        changes = {}
        for name in self._row_tensors:
            w = getattr(self, name)
            if w is not None and w.dim() > 0 and w.shape[-1] == n_classes > 1:
                changes[name] = w[..., columns]
        return dataclasses.replace(self, **changes) if changes else self


@dataclass(frozen=True)
class SigmoidOptions(KernelOptions):
    """BCE, focal loss and Poly-1 focal loss, from logits or (``probs``) probabilities.

    Attributes:
        probs: the input holds probabilities (torch's ``-100`` clamp of the logs applies).
        gamma: the focal exponent; ``None``: no modulating factor (BCE).
        alpha: the positives' weight in [0, 1], negatives get ``1 - alpha``; ``None``: off.
        epsilon: the Poly-1 coefficient of ``(1 - p_t)^(gamma + 1)``; ``None``: no term.
        label_smoothing: ``s`` in (0, 1), targets become ``y (1 - s) + s / 2``; ``None``: off.
        ignore_index: targets equal to it contribute nothing and are not counted.
        weight, pos_weight: tensors broadcast to the input's size.
        gamma_bits: derived -- for an integer ``gamma`` in [0, 8], ``(gamma >= 1, the binary
            digits of gamma - 1)``: the factor by repeated squaring, no log or exp.
    """

    probs: bool = False
    gamma: Scalar | None = None
    alpha: Scalar | None = None
    epsilon: Scalar | None = None
    label_smoothing: Scalar | None = None
    ignore_index: Scalar | None = None
    weight: torch.Tensor | None = None
    pos_weight: torch.Tensor | None = None
    gamma_bits: tuple | None = dataclasses.field(default=None, init=False)
    _row_tensors: tuple[str, ...] = dataclasses.field(
        default=("weight", "pos_weight"), init=False, repr=False
    )
    _numbers: tuple[str, ...] = dataclasses.field(
        default=("gamma", "alpha", "epsilon", "label_smoothing"), init=False, repr=False
    )

    def __post_init__(self) -> None:
        bits = None
        if (g := integer_gamma(self.gamma)) is not None:
            k = max(g - 1, 0)
            bits = (g >= 1, tuple(bool(k >> i & 1) for i in range(3)))
        object.__setattr__(self, "gamma_bits", bits)

    def for_compile(self, input: torch.Tensor, target: torch.Tensor) -> SigmoidOptions:
        out = super().for_compile(input, target)
        if self.gamma_bits is not None:
            # the bits as 0-dim bool tensors: a new integer gamma is an input, not a recompile
            flag, digits = self.gamma_bits
            bits = (
                _cached_scalar(flag, torch.bool, input.device, "gamma_flag"),
                tuple(
                    _cached_scalar(b, torch.bool, input.device, f"gamma_bit{i}")
                    for i, b in enumerate(digits)
                ),
            )
            object.__setattr__(out, "gamma_bits", bits)
        return out

    def structure(self) -> tuple:
        # which fields are given, not the bits' values (those are tensors when compiled)
        return (*super().structure()[:-1], self.gamma_bits is not None)


@dataclass(frozen=True)
class AsymmetricOptions(KernelOptions):
    """The asymmetric loss (ASL) from logits.

    Attributes:
        gamma_pos, gamma_neg: the focusing exponents of positives and negatives (``>= 0``).
        clip: the probability margin of negatives in (0, 1); ``None``: no margin.
        label_smoothing, ignore_index, weight: as in :class:`~crossent.losses.SigmoidOptions`.
    """

    gamma_pos: Scalar = 0.0
    gamma_neg: Scalar = 4.0
    clip: Scalar | None = None
    label_smoothing: Scalar | None = None
    ignore_index: Scalar | None = None
    weight: torch.Tensor | None = None
    _row_tensors: tuple[str, ...] = dataclasses.field(default=("weight",), init=False, repr=False)
    _numbers: tuple[str, ...] = dataclasses.field(
        default=("gamma_pos", "gamma_neg", "clip", "label_smoothing"), init=False, repr=False
    )


@dataclass(frozen=True)
class SoftmaxOptions(KernelOptions):
    """Cross entropy, softmax focal loss and Poly-1 cross entropy over the class dimension.

    Class-index targets (an integer dtype) or class-probability targets (floating point)
    are told apart by the target's dtype, not by an option.

    Attributes:
        gamma: the focal exponent; ``None``: no modulating factor.
        alpha: one factor for every class (a number or 0-dim tensor) or a ``(C,)`` tensor;
            ``None``: off. Unlike ``weight`` it never enters the mean's denominator.
        epsilon: the Poly-1 coefficient of ``1 - p``; ``None``: no term.
        label_smoothing: ``s`` in (0, 1), the target becomes ``(1 - s) y + s / C``; ``None``.
        ignore_index: class indices equal to it (or a probability row filled with it) are
            ignored; ``None``: nothing is.
        weight: a ``(C,)`` tensor of class weights.
        z_loss: the coefficient ``λ > 0`` of PaLM's auxiliary ``λ lse(z)^2`` per valid sample
            (times the weight the sample carries in the mean's denominator: ``w_t`` for class
            indices with ``weight``, else 1); ``None``: off.
        softcap: ``c > 0``: the logits become ``c tanh(x / c)`` before everything else (Gemma
            2's soft-capping); ``None``: off.
        sample_weight: a tensor of the per-sample loss's shape (the input's without the class
            dimension) that scales each sample's loss, the z-loss included, and never the
            mean's denominator; ``None``: off.
    """

    gamma: Scalar | None = None
    alpha: Scalar | None = None
    epsilon: Scalar | None = None
    label_smoothing: Scalar | None = None
    ignore_index: int | torch.Tensor | None = None
    weight: torch.Tensor | None = None
    z_loss: Scalar | None = None
    softcap: Scalar | None = None
    sample_weight: torch.Tensor | None = None
    _row_tensors: tuple[str, ...] = dataclasses.field(
        default=("sample_weight",), init=False, repr=False
    )
    _numbers: tuple[str, ...] = dataclasses.field(
        default=("gamma", "alpha", "epsilon", "label_smoothing", "z_loss", "softcap"),
        init=False,
        repr=False,
    )
    _class_dims: int = dataclasses.field(default=1, init=False, repr=False)

    def _ignore_dtype(self, target: torch.Tensor) -> torch.dtype:
        return target.dtype

    @property
    def plain(self) -> bool:
        """Plain cross entropy: no focal factor, no class factors, no Poly-1 term."""
        return self.gamma is None and self.alpha is None and self.epsilon is None
