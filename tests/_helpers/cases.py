"""Every loss of the library, as forms a training loop calls, with inputs for each family.

The suites that must cover "every loss" (distributed, autocast, compile, accumulation) iterate
:func:`loss_forms`: every registered loss (``crossent.registry.LOSSES``) from logits, from
probabilities where it has that form, and every module of ``crossent.nn``. A loss added to the
registry is covered without touching those tests; a family these builders do not know, or a
module whose function is not registered, fails loudly here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import crossent.nn
from crossent.registry import LOSSES, LossSpec

# Ignored targets: -1 for the elementwise (binary) family, torch's -100 for class indices.
IGNORE = {"binary": -1.0, "softmax": -100}
NUM_CLASSES = 3


@dataclass(frozen=True)
class LossForm:
    """One way of calling one loss: ``make(**options)`` returns ``loss(scores, target)``.

    ``scores`` are a model's raw outputs (logits); a probability form applies the family's
    link (sigmoid / softmax) first, as a model that outputs probabilities would.
    """

    id: str
    spec: LossSpec
    probs: bool
    module: type[torch.nn.Module] | None = None

    @property
    def function(self) -> Callable[..., torch.Tensor]:
        return self.spec.function(probs=self.probs)

    def to_input(self, scores: torch.Tensor) -> torch.Tensor:
        if not self.probs:
            return scores
        if self.spec.family == "binary":
            return torch.sigmoid(scores)
        return torch.softmax(scores, dim=1)

    def make(
        self, *, link: bool = True, **options: Any
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss as ``fn(scores, target)``; modules are built here, outside any compile.

        Options the loss does not take are dropped (a family-wide option set fits every
        loss of the family). ``link=False``: ``fn`` takes the loss's own input (probabilities
        for a probability form) instead of scores.
        """
        options = {k: v for k, v in options.items() if k in self.spec.options()}
        prepare = self.to_input if link else (lambda t: t)
        if self.module is not None:
            module = self.module(**options)
            return lambda scores, target: module(prepare(scores), target)
        fn = functools.partial(self.function, **options)
        return lambda scores, target: fn(prepare(scores), target)


def _module_forms() -> list[LossForm]:
    forms = []
    for name in crossent.nn.__all__:
        cls = getattr(crossent.nn, name)
        if issubclass(cls, crossent.nn.LinearLoss):
            continue  # a linear head's loss (input, weight, target): tests/test_linear.py
        definition = getattr(cls, "definition", None)
        if definition is None or LOSSES.get(definition.name) is not definition:
            raise LookupError(
                f"crossent.nn.{name} computes {definition!r}, which is not a registered loss "
                f"definition: register it in crossent.registry so that every suite covers it."
            )
        forms.append(LossForm(f"nn.{name}", definition, cls.probs, cls))
    return forms


def loss_forms(*, modules: bool = True) -> list[LossForm]:
    """Every registered loss from logits, from probabilities, and (optionally) every module."""
    forms = []
    for spec in LOSSES.values():
        if spec.family not in IGNORE:
            raise LookupError(
                f"tests/_helpers/cases.py has no inputs for the {spec.family!r} family of "
                f"loss {spec.name!r}: add them so the distributed / autocast / compile suites "
                f"cover it."
            )
        forms.append(LossForm(spec.name, spec, False))
        if spec.probs is not None:
            forms.append(LossForm(f"{spec.name}:probs", spec, True))
    if modules:
        forms.extend(_module_forms())
    return forms


def make_target(
    form: LossForm,
    n: int,
    *,
    generator: torch.Generator,
    ignore_fraction: float = 0.0,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Targets for ``n`` samples: multi-hot (n, C) for the binary family, class indices (n,)
    for the softmax family; about ``ignore_fraction`` of them set to the ignore value."""
    family = form.spec.family
    if family == "binary":
        target = (torch.rand(n, num_classes, generator=generator) < 0.4).float()
    else:
        target = torch.randint(0, num_classes, (n,), generator=generator)
    if ignore_fraction:
        drop = torch.rand(target.shape, generator=generator) < ignore_fraction
        target = torch.where(drop, torch.full_like(target, IGNORE[family]), target)
    return target


def ignore_all(form: LossForm, target: torch.Tensor) -> torch.Tensor:
    return torch.full_like(target, IGNORE[form.spec.family])


def make_options(
    form: LossForm,
    *,
    generator: torch.Generator,
    weighted: bool = True,
    ignore: bool = True,
    num_classes: int = NUM_CLASSES,
) -> dict[str, Any]:
    """Options every loss of the family takes (filtered by the loss's own options in make):
    per-class ``weight`` (and ``pos_weight``) and ``ignore_index``."""
    options: dict[str, Any] = {}
    if ignore:
        options["ignore_index"] = IGNORE[form.spec.family]
    if weighted:
        options["weight"] = torch.rand(num_classes, generator=generator) + 0.5
        options["pos_weight"] = torch.rand(num_classes, generator=generator) * 2 + 0.5
    return options


def cast_options(options: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    return {
        k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in options.items()
    }


# The dispatch keyword of the fused kernels (crossent.kernels), where losses have it:
# "reference" is the autograd path, "fused" the closed-form forward + gradient. "compiled"
# and "triton" are covered by tests/test_kernels.py (each costs a compile, or needs a GPU).
HAS_BACKENDS = any("backend" in spec.options() for spec in LOSSES.values())
BACKENDS = ("reference", "fused") if HAS_BACKENDS else (None,)


def backend_option(backend: str | None) -> dict[str, Any]:
    return {} if backend is None else {"backend": backend}


def with_backends(forms: list[LossForm]) -> list[Any]:
    """``pytest.param(form, backend)`` for every form on every backend it has (one, named
    ``None``, for a loss without the keyword)."""
    import pytest

    params = []
    for form in forms:
        has = "backend" in form.spec.options()
        for backend in BACKENDS if has else (None,):
            label = form.id if backend is None else f"{form.id}/{backend}"
            params.append(pytest.param(form, backend, id=label))
    return params
