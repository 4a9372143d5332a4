"""The losses a comparison trains: parsed from ``"name:option=value"`` specs by the registry,
checked against the task, with ``auto`` values computed from the training split by
:mod:`crossent.weights`.

``auto`` means, per option:

* ``pos_weight=auto`` (binary family): negatives / positives of each label in the training
  split, :func:`crossent.weights.pos_weight`;
* ``alpha=auto`` (``focal``, one label only since its alpha is a number): the negatives'
  share of the training split, ``pos_weight / (1 + pos_weight)``, so that positives and
  negatives carry equal total weight;
* ``weight=auto`` (softmax family) and ``alpha=auto`` where a softmax loss takes per-class
  alpha: class-balanced weights from the training split's class counts,
  :func:`crossent.weights.class_weights` (effective number of samples, beta = 0.999).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crossent.compare.data import CompareError
from crossent.registry import AUTO, LOSSES, LossSpec, format_spec, parse_loss_spec

__all__ = ["DEFAULT_LOSSES", "LossSetup", "default_losses", "parse_losses", "resolve_auto"]

DEFAULT_LOSSES = {
    "binary": ("bce", "bce:pos_weight=auto", "focal", "asl"),
    "multiclass": ("ce", "ce:weight=auto", "softmax_focal", "poly1"),
}
# Options compare sets itself.
RESERVED = ("reduction", "process_group")


def default_losses(task: str) -> tuple[str, ...]:
    return DEFAULT_LOSSES["multiclass" if task == "multiclass" else "binary"]


def _family_for(task: str) -> str:
    return "softmax" if task == "multiclass" else "binary"


@dataclass
class LossSetup:
    """One loss as the comparison trains it.

    Attributes:
        label: the spec in canonical form, as the report names it (``"bce:pos_weight=auto"``).
        spec: the registry entry.
        options: the options as written (``auto`` kept).
        resolved: the options passed to the loss (``auto`` replaced by tensors).
    """

    label: str
    spec: LossSpec
    options: dict[str, Any]
    resolved: dict[str, Any] = field(default_factory=dict)

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, *, reduction: str
    ) -> torch.Tensor:
        options = {
            k: v.to(logits.device) if isinstance(v, torch.Tensor) else v
            for k, v in self.resolved.items()
        }
        return self.spec.logits(logits, target, **options, reduction=reduction)

    def auto_text(self) -> str:
        """The values ``auto`` became, e.g. ``"pos_weight=49.6"`` (empty without auto)."""
        parts = []
        for key, value in self.options.items():
            if value == AUTO:
                got = self.resolved[key]
                if isinstance(got, torch.Tensor):
                    flat = got.flatten().tolist()
                    text = (
                        f"{flat[0]:.3g}"
                        if len(flat) == 1
                        else "[" + ", ".join(f"{v:.3g}" for v in flat) + "]"
                    )
                else:
                    text = f"{got:.3g}"
                parts.append(f"{key}={text}")
        return ", ".join(parts)


def parse_losses(texts, task: str) -> list[LossSetup]:
    """Parse ``--loss`` specs (the task's defaults when none) and check them against the task."""
    texts = list(texts) or list(default_losses(task))
    family = _family_for(task)
    setups: list[LossSetup] = []
    for text in texts:
        try:
            spec, options = parse_loss_spec(text)
        except ValueError as exc:
            raise CompareError(f"In `--loss {text}`: {exc}") from exc
        if spec.family != family:
            fitting = ", ".join(sorted(n for n, s in LOSSES.items() if s.family == family))
            kind = (
                "multi-class (one class per sample)"
                if family == "softmax"
                else ("binary / multi-label (independent yes/no labels)")
            )
            raise CompareError(
                f"Loss {spec.name!r} (`--loss {text}`) is a {spec.family} loss, but the data is "
                f"{kind}. Losses for this data: {fitting or 'none registered yet'}."
            )
        for key in RESERVED:
            if key in options:
                raise CompareError(
                    f"`--loss {text}` sets {key!r}, which compare chooses itself "
                    f'(reduction="global_mean" for training). Remove it.'
                )
        label = format_spec(spec, options)
        if any(s.label == label for s in setups):
            raise CompareError(f"Loss {label!r} is given twice; each `--loss` must differ.")
        setups.append(LossSetup(label=label, spec=spec, options=options))
    return setups


def resolve_auto(setups: list[LossSetup], task: str, y_train: np.ndarray, n_outputs: int) -> None:
    """Replace every ``auto`` value by its value on the training targets (in place).

    ``y_train`` is (N, L) 0/1 for binary / multi-label tasks, (N,) class indices otherwise.
    """
    for setup in setups:
        resolved: dict[str, Any] = {}
        for key, value in setup.options.items():
            resolved[key] = (
                _auto_value(setup, key, task, y_train, n_outputs) if value == AUTO else value
            )
        setup.resolved = resolved


def _auto_value(setup: LossSetup, key: str, task: str, y_train: np.ndarray, n_outputs: int):
    from crossent import weights

    name = setup.spec.name
    if task == "multiclass":
        if key == "weight" or (key == "alpha" and _takes_tensor(setup.spec, key)):
            counts = weights.class_counts(torch.as_tensor(y_train, dtype=torch.long), n_outputs)
            return weights.class_weights(counts, method="effective_num", beta=0.999).float()
    else:
        target = torch.as_tensor(y_train, dtype=torch.float32)
        if key == "pos_weight":
            return weights.pos_weight(target, dim=0).float()
        if key == "alpha" and name == "focal":
            if target.shape[1] != 1:
                raise CompareError(
                    f"`{setup.label}`: alpha=auto needs a single label (focal's alpha is one "
                    f"number), but the data has {target.shape[1]}. Use pos_weight=auto for "
                    f"per-label balance."
                )
            pw = float(weights.pos_weight(target, dim=0).flatten()[0])
            return pw / (1.0 + pw)
    raise CompareError(
        f"`{setup.label}`: {key}=auto is not defined for this loss and data. `auto` is "
        f"available for pos_weight (bce, focal), alpha (focal on one label) and weight (softmax "
        f"losses)."
    )


def _takes_tensor(spec: LossSpec, key: str) -> bool:
    """Whether a softmax loss's option accepts a per-class tensor (read from its annotation)."""
    import inspect

    annotation = inspect.signature(spec.logits).parameters[key].annotation
    return "Tensor" in str(annotation)
