"""The losses by name: the one vocabulary shared by the command line, ``explain``, ``doctor``,
``compare`` and the benchmarks.

A loss is named by a short key (``"bce"``, ``"focal"``, ``"asl"``, ...) and configured with a
spec string ``"name:option=value,option=value"``, e.g. ``"focal:gamma=2,alpha=0.25"``. Values
are numbers, ``none`` (switches an option off), ``true``/``false``, a list ``[1, 2, 3]`` (a
tensor option such as ``pos_weight``), or ``auto`` -- kept as the string ``"auto"`` for the
caller to compute from data (``compare`` does, with :mod:`crossent.weights`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from crossent import functional as CF

__all__ = ["LOSSES", "LossSpec", "format_spec", "get_loss", "parse_loss_spec", "register"]

AUTO = "auto"


@dataclass(frozen=True)
class LossSpec:
    """One loss of the library, as the tools see it.

    Attributes:
        name: the short key (``"focal"``).
        family: ``"binary"`` (elementwise sigmoid losses, targets the input's shape) or
            ``"softmax"`` (one class per sample, class dimension 1).
        logits: the function taking logits.
        probs: the same loss taking probabilities, if there is one.
        torch_logits / torch_probs: torch's own function for the same loss, where torch has it.
        title: a human name for reports.
        aliases: other accepted keys.
    """

    name: str
    family: str
    logits: Callable[..., torch.Tensor]
    title: str
    probs: Callable[..., torch.Tensor] | None = None
    torch_logits: Callable[..., torch.Tensor] | None = None
    torch_probs: Callable[..., torch.Tensor] | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def function(self, *, probs: bool = False) -> Callable[..., torch.Tensor]:
        if probs:
            if self.probs is None:
                raise ValueError(
                    f"Loss {self.name!r} has no probability form: pass logits instead."
                )
            return self.probs
        return self.logits

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


LOSSES: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: LossSpec) -> LossSpec:
    """Add a loss to the registry (its name and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in LOSSES or key in _ALIASES:
            raise ValueError(f"Loss name {key!r} is already registered.")
    LOSSES[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


register(
    LossSpec(
        name="bce",
        family="binary",
        title="BCE",
        logits=CF.binary_cross_entropy_with_logits,
        probs=CF.binary_cross_entropy,
        torch_logits=F.binary_cross_entropy_with_logits,
        torch_probs=F.binary_cross_entropy,
        aliases=("binary_cross_entropy", "binary_cross_entropy_with_logits", "bce_with_logits"),
    )
)
register(
    LossSpec(
        name="focal",
        family="binary",
        title="Focal",
        logits=CF.sigmoid_focal_loss,
        probs=CF.binary_focal_loss,
        aliases=("sigmoid_focal", "sigmoid_focal_loss", "binary_focal_loss", "binary_focal"),
    )
)
register(
    LossSpec(
        name="asl",
        family="binary",
        title="ASL",
        logits=CF.asymmetric_loss,
        aliases=("asymmetric", "asymmetric_loss"),
    )
)

register(
    LossSpec(
        name="poly1_focal",
        family="binary",
        title="Poly-1 focal",
        logits=CF.poly1_focal_loss,
        aliases=("poly1_focal_loss", "poly_focal", "poly_focal_loss", "polyfocal"),
    )
)
register(
    LossSpec(
        name="ce",
        family="softmax",
        title="CE",
        logits=CF.cross_entropy,
        torch_logits=F.cross_entropy,
        aliases=("cross_entropy", "crossentropy", "softmax_cross_entropy", "nll"),
    )
)
register(
    LossSpec(
        name="softmax_focal",
        family="softmax",
        title="Softmax focal",
        logits=CF.softmax_focal_loss,
        aliases=("softmax_focal_loss", "focal_softmax", "multiclass_focal"),
    )
)
register(
    LossSpec(
        name="poly1",
        family="softmax",
        title="Poly-1",
        logits=CF.poly1_cross_entropy,
        aliases=("poly1_cross_entropy", "poly", "poly_loss", "polyloss"),
    )
)


def get_loss(name: str) -> LossSpec:
    """The registered loss called ``name`` (or one of its aliases).

    >>> get_loss("sigmoid_focal_loss").name
    'focal'
    """
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in LOSSES:
        known = ", ".join(sorted(LOSSES))
        raise ValueError(f"Unknown loss {name!r}. Known losses: {known}.")
    return LOSSES[key]


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _parse_value(text: str) -> Any:
    text = text.strip()
    low = text.lower()
    if low == AUTO:
        return AUTO
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if text.startswith("[") and text.endswith("]"):
        items = [t for t in text[1:-1].replace(";", ",").split(",") if t.strip()]
        return torch.tensor([float(_parse_value(t)) for t in items])
    if _NUMBER.match(text):
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    if low in ("mean", "sum", "none", "global_mean"):
        return low
    return text


def _split_options(text: str) -> list[str]:
    """Split on commas that are not inside brackets (lists hold commas too)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def parse_loss_spec(text: str) -> tuple[LossSpec, dict[str, Any]]:
    """Parse ``"name:option=value,..."`` into the loss and its keyword options.

    Unknown options raise ValueError naming the loss's options, so a typo never passes silently.

    >>> spec, options = parse_loss_spec("focal:gamma=2,alpha=0.25")
    >>> spec.name, options
    ('focal', {'gamma': 2, 'alpha': 0.25})
    >>> parse_loss_spec("bce:pos_weight=auto")[1]
    {'pos_weight': 'auto'}
    """
    name, _, rest = text.partition(":")
    spec = get_loss(name)
    allowed = spec.options()
    options: dict[str, Any] = {}
    for part in _split_options(rest):
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise ValueError(f"Expected `option=value` in loss spec {text!r}, but got {part!r}.")
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ValueError(
                f"Unknown option {key!r} for loss {spec.name!r}. Its options are: {known}."
            )
        options[key] = _parse_value(value)
    return spec, options


def format_spec(spec: LossSpec, options: dict[str, Any]) -> str:
    """The inverse of :func:`parse_loss_spec`, for labels in reports.

    >>> format_spec(get_loss("focal"), {"gamma": 2.0, "alpha": 0.25})
    'focal:gamma=2,alpha=0.25'
    """
    if not options:
        return spec.name

    def show(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return "[" + ",".join(f"{float(t):g}" for t in v.flatten()) + "]"
        if isinstance(v, float):
            return f"{v:g}"
        return str(v).lower() if v is None or isinstance(v, bool) else str(v)

    return spec.name + ":" + ",".join(f"{k}={show(v)}" for k, v in options.items())
