"""The losses by name: the one vocabulary shared by the command line, ``explain``, ``doctor``,
``compare`` and the benchmarks, built from the definitions in :mod:`crossent.losses`.

A loss is named by a short key (``"bce"``, ``"focal"``, ``"asl"``, ...) and configured with a
spec string ``"name:option=value,option=value"``, e.g. ``"focal:gamma=2,alpha=0.25"``. Values
are numbers, ``none`` (switches an option off), ``true``/``false``, a list ``[1, 2, 3]`` (a
tensor option such as ``pos_weight``), or ``auto`` -- kept as the string ``"auto"`` for the
caller to compute from data (``compare`` does, with :mod:`crossent.weights`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from crossent.losses import DEFINITIONS, LossDefinition

__all__ = ["LOSSES", "LossSpec", "format_spec", "get_loss", "parse_loss_spec", "register"]

AUTO = "auto"


# A registered loss is its definition: name, family, title, functions, torch's equivalent,
# aliases and options all come from crossent.losses.
LossSpec = LossDefinition

LOSSES: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: LossSpec) -> LossSpec:
    """Add a loss definition to the registry (its name and aliases must be new)."""
    for key in (spec.name, *spec.aliases):
        if key in LOSSES or key in _ALIASES:
            raise ValueError(f"Loss name {key!r} is already registered.")
    LOSSES[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


for _definition in DEFINITIONS.values():
    register(_definition)


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
