"""What one loss is, and the one path every call of every loss takes.

A :class:`LossDefinition` holds everything the library knows about a loss: how its keywords
become the options of its kernel family (validated and normalised once), the checks of a call,
its reference math, its kernel family (closed form and Triton launcher), and what the tools
show (title, formula, symbols, torch's equivalent). :meth:`LossDefinition.compute` is the
skeleton of every public function:

    options -> checks -> backend -> (reference math | fused kernel) -> reduction -> dtype

and nothing else computes a loss.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from crossent._precision import output_dtype
from crossent._reduction import (
    _RECORDERS,
    distributed_ready,
    plan_reduction,
    recording_denominators,
    safe_denominator,
)
from crossent.kernels import _function
from crossent.kernels._dispatch import (
    ENV_VAR,
    KernelFamily,
    requested_backend,
    run_fused,
    select_backend,
)
from crossent.losses._options import KernelOptions
from crossent.losses._small import SMALL_NUMEL, cached_options

_SMALL_REDUCTIONS = frozenset({"none", "mean", "sum"})

try:  # the variable's key in os.environ's backing dict (bytes on POSIX)
    _ENV_KEY: Any = os.environ.encodekey(ENV_VAR)  # type: ignore[attr-defined]
except AttributeError:  # another os.environ: the plain lookup
    _ENV_KEY = None


def _environment_is_auto() -> bool:
    """Whether ``CROSSENT_BACKEND`` asks for ``"auto"`` (or is unset).

    ``os.environ.get`` of an unset variable costs 0.7 us (a ``KeyError`` raised and caught
    inside it), a tenth of a small cross entropy: its backing dict (CPython's ``_Environ``,
    which every assignment to ``os.environ`` updates) answers that in 0.03 us."""
    data = getattr(os.environ, "_data", None)
    if data is not None and _ENV_KEY is not None and _ENV_KEY not in data:
        return True
    value = os.environ.get(ENV_VAR)
    return not value or value == "auto"


__all__ = ["SYMBOLS", "LossDefinition", "run"]

# The symbol of each option in formulas, legends and explanations.
SYMBOLS: dict[str, str] = {
    "gamma": "γ",
    "alpha": "α",
    "pos_weight": "w_pos",
    "weight": "w",
    "label_smoothing": "s",
    "gamma_pos": "γ₊",
    "gamma_neg": "γ₋",
    "clip": "m",
    "epsilon": "ε",
    "z_loss": "λ",
    "softcap": "c",
    "sample_weight": "v",
}


@dataclass(frozen=True, repr=False)
class LossDefinition:
    """One loss of the library.

    Attributes:
        name: the registry key (``"focal"``); ``aliases`` are other accepted keys.
        title: a human name for reports and legends.
        family: ``"binary"`` (elementwise sigmoid losses, targets the input's shape) or
            ``"softmax"`` (one class per sample, class dimension 1).
        kernel: the closed form and Triton launcher that compute it.
        reference: the reference math ``(input, target, options) -> (loss, denominator)``.
        options_from: the loss's keywords (``probs=`` too where it has a probability form) ->
            its kernel options; validates and normalises every number once.
        check: ``(input, target, options, probs, *, shard=False) -> options``: the checks of
            one call's tensors; returns the options as the call uses them (an
            ``ignore_index`` that the target's dtype cannot hold becomes ``None``: nothing can
            equal it). ``shard``: the input is one rank's slice of the classes
            (``vocab_group``).
        function_name / probs_function_name: its public functions in
            :mod:`crossent.functional`.
        torch_name / torch_probs_name: torch's own function in
            :mod:`torch.nn.functional`, where torch has the loss.
        formula: the loss in LaTeX, as the documentation states it.
        symbolic: ``options -> `` the formula in plain text with only the terms the options
            switch on (``crossent explain``).
        formula_options: the options ``symbolic`` and ``explain``'s step-by-step
            formula know; another option given leaves the known ground.
        curve_options: the options that change the loss's shape as a function of ``p_t``
            (``crossent curves`` labels its curves with them).
        small: the small-input path (:mod:`crossent.losses._small`): ``(definition, input,
            target, reduction, probs, keywords) ->`` the loss in a few torch operations, or
            ``None`` where the call is not one it covers (a probability form included);
            ``backend="auto"`` takes it for CPU inputs of at most ``SMALL_NUMEL`` elements.
    """

    name: str
    title: str
    family: str
    kernel: KernelFamily
    reference: Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]
    options_from: Callable[..., KernelOptions]
    check: Callable[..., KernelOptions]
    function_name: str
    formula: str
    symbolic: Callable[[dict[str, Any], bool], str]
    formula_options: frozenset[str]
    curve_options: tuple[str, ...] = ()
    probs_function_name: str | None = None
    torch_name: str | None = None
    torch_probs_name: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)
    small: Callable[..., torch.Tensor | None] | None = None

    def __repr__(self) -> str:
        return f"LossDefinition(name={self.name!r}, title={self.title!r}, family={self.family!r})"

    # ---- the call -------------------------------------------------------------------------

    def compute(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        *,
        reduction: str = "mean",
        process_group: Any = None,
        vocab_group: Any = None,
        backend: str | None = None,
        probs: bool = False,
        **keywords: Any,
    ) -> torch.Tensor:
        """The loss of one call, the loss's own options as keywords (see :meth:`call`)."""
        return self.call(
            input, target, reduction, process_group, vocab_group, backend, probs, keywords
        )

    def call(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        reduction: str,
        process_group: Any,
        vocab_group: Any,
        backend: str | None,
        probs: bool,
        keywords: dict[str, Any],
    ) -> torch.Tensor:
        """The loss of one call: what every public function of this loss returns. The
        arguments by position and the loss's options as a dict the call may change (the
        public functions pass a new one): at a batch of 32 rows the packing of a dozen
        keyword arguments is a measurable part of a call."""
        small = self.small
        if (
            small is not None
            and type(input) is torch.Tensor
            and type(target) is torch.Tensor
            and input.is_cpu
            and 0 < input.numel() <= SMALL_NUMEL  # empty: the general path's answers
            and reduction in _SMALL_REDUCTIONS
            and process_group is None
            and vocab_group is None
            # a target that requires a gradient: the reference path differentiates it
            and not target.requires_grad
            and (backend == "auto" if backend is not None else _environment_is_auto())
            and not _RECORDERS  # recording_denominators()
            and not torch.compiler.is_compiling()
        ):
            out = small(self, input, target, reduction, probs, keywords)
            if out is not None:
                return out
        if self.probs_function_name is not None:
            keywords["probs"] = probs
        options = cached_options(self, keywords)
        shard = vocab_group is not None
        if shard:
            from crossent.linear._vocab import check_vocab_call

            check_vocab_call(vocab_group, backend, target, *options.tensors())
        options = self.check(input, target, options, probs, shard=shard)
        return run(
            self.kernel,
            self.reference,
            input,
            target,
            options,
            reduction,
            process_group,
            backend,
            vocab_group=vocab_group,
        )

    # ---- what the tools read --------------------------------------------------------------

    @property
    def logits(self) -> Callable[..., torch.Tensor]:
        """The public function taking logits."""
        from crossent import functional

        return getattr(functional, self.function_name)

    @property
    def probs(self) -> Callable[..., torch.Tensor] | None:
        """The public function taking probabilities, if the loss has one."""
        from crossent import functional

        name = self.probs_function_name
        return None if name is None else getattr(functional, name)

    def function(self, *, probs: bool = False) -> Callable[..., torch.Tensor]:
        if probs:
            if self.probs is None:
                raise ValueError(
                    f"Loss {self.name!r} has no probability form: pass logits instead."
                )
            return self.probs
        return self.logits

    @property
    def torch_logits(self) -> Callable[..., torch.Tensor] | None:
        return None if self.torch_name is None else getattr(torch.nn.functional, self.torch_name)

    @property
    def torch_probs(self) -> Callable[..., torch.Tensor] | None:
        name = self.torch_probs_name
        return None if name is None else getattr(torch.nn.functional, name)

    def torch_function(self, *, probs: bool = False) -> Callable[..., torch.Tensor] | None:
        return self.torch_probs if probs else self.torch_logits

    def options(self) -> dict[str, Any]:
        """The keyword-only options of the loss and their defaults."""
        sig = inspect.signature(self.logits)
        return {
            name: p.default
            for name, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }


def run(
    kernel: KernelFamily,
    reference: Callable,
    input: torch.Tensor,
    target: torch.Tensor,
    options: KernelOptions,
    reduction: str,
    process_group: Any,
    backend: str | None,
    *,
    vocab_group: Any = None,
) -> torch.Tensor:
    """Run a checked call on the backend :func:`~crossent.kernels.select_backend` picks and
    reduce it; returns the loss in ``crossent._precision.output_dtype``. With
    ``vocab_group`` the input is this rank's slice of the classes and the call runs the
    vocab-parallel closed form (:func:`crossent.linear._vocab.run_vocab`).

    A ``"mean"`` or ``"sum"`` that is not finite although the input is -- the elements fit
    but a partial sum, or an intermediate such as ``lse - x``, overflowed the compute dtype --
    is computed once more by ``_rescaled``, so a representable result is returned (on
    CPU, where reading the result is free; on a GPU checking would synchronise with the host).
    """
    if vocab_group is not None:
        from crossent.linear._vocab import run_vocab

        out = run_vocab(kernel, input, target, options, reduction, process_group, vocab_group)
        return out.to(output_dtype(input))
    path = select_backend(backend, input, target, *options.tensors())
    if path == "reference":
        plan = plan_reduction(reduction, process_group, input)
        loss, denominator = reference(input, target, options)
        out = plan.finish(loss.sum() if plan.reduce else loss, denominator, loss.numel())
    else:
        background = path == "compiled" and requested_backend(backend) != "compiled"
        out = run_fused(path, kernel, input, target, options, reduction, process_group, background)
    out = out.to(output_dtype(input))
    if reduction != "none" and _overflowed(out, input, reduction):
        rescaled = _rescaled(reference, input, target, options, reduction)
        if rescaled is not None:
            out = rescaled.to(out.dtype)
    return out


def _overflowed(out: torch.Tensor, input: torch.Tensor, reduction: str) -> bool:
    """A reduced loss that is not finite although the input is (CPU: reading it is free)."""
    return (
        _function.reads_are_free(out)
        and out.dim() == 0
        and not torch.compiler.is_compiling()
        and not recording_denominators()
        # every rank of a process group would have to take the same path
        and not (reduction == "global_mean" and distributed_ready())
        and not bool(torch.isfinite(out))
        and bool(torch.isfinite(input).all())
    )


def _rescaled(
    reference: Callable, input: torch.Tensor, target: torch.Tensor, options: Any, reduction: str
) -> torch.Tensor | None:
    """The sum or mean of the reference's elementwise loss, in float64, each element divided
    by the largest magnitude before the sum: no partial sum overflows, and the result is
    finite whenever it is representable. ``None`` where an element itself is not finite in
    float64 (the loss really is infinite)."""
    loss, denominator = reference(input.double(), target, options)
    if not bool(torch.isfinite(loss).all()):
        return None
    scale = loss.detach().abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    total = (loss / scale).sum()
    if reduction == "sum":
        return total * scale
    count = loss.numel() if denominator is None else safe_denominator(denominator.double())
    return total / count * scale
