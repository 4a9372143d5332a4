"""The small-input path: a loss over a few thousand elements in as few torch operations as its
definition allows.

At a batch of 32 rows a loss costs what its Python and its operator calls cost, not what its
arithmetic costs: torch's own ``F.cross_entropy`` is two fused ATen kernels, and the general
path of a crossent loss (options, checks, backend choice, the closed form's few dozen small
operations, the autograd node) was five times slower. On CPU below :data:`SMALL_NUMEL`
elements, with ``backend="auto"``, the functions here compute the loss directly, differentiated
by autograd, with the same formula as the closed form:

* cross entropy with class-index targets: ATen's fused ``cross_entropy_loss`` (``log_softmax``
  is ``z - log(sum exp z)`` with ``z = x - max``, exactly the closed form's formula, so the
  rounding is the same; torch's options -- ``weight``, ``ignore_index``, ``label_smoothing``
  -- have torch's meaning, which is crossent's);
* BCE with logits: ``y softplus(-x) + (1 - y) softplus(x)``, two terms that never cancel, so
  every logit keeps float32's relative precision (torch's own kernel computes
  ``log(1 + exp(-|x|))`` and loses it from ``x = -15`` on);
* the sigmoid focal and Poly-1 focal losses: the same BCE times ``alpha_t (1 - p_t)^gamma``
  with ``1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x)`` (:func:`sigmoid_focal`).

Each returns ``None`` where the call is not one it covers (another dtype, a tensor option that
requires a gradient, a value it cannot check as cheaply); the general path then computes
it. The value checks keep their meaning at a lower cost: a class index out of range is caught
by ATen's own bounds check, and the call is then handed to the general path, which raises
crossent's error; a reduced result that is not finite (every target ignored, an overflow) is
handed over the same way, for the general path's answers (0, the rescaled sum).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F

from crossent import _validation as V

__all__ = [
    "SMALL_NUMEL",
    "binary_cross_entropy_with_logits",
    "cached_options",
    "cross_entropy",
    "sigmoid_focal",
]

#: Up to this many input elements, ``backend="auto"`` takes the small path on CPU (above it the
#: fused closed form's single pass wins).
SMALL_NUMEL = 1 << 15

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_NEVER = -(2**63)  # an ignore_index no class index can equal
_FLOATS = (torch.float32, torch.float64)

_options_cache: OrderedDict = OrderedDict()
# A tensor option of at most this many elements (a class weight, a pos_weight) is cached by
# identity with its options; a larger one is validated on each call.
_CACHED_NUMEL = 4096


def cached_options(definition: Any, keywords: dict[str, Any]) -> Any:
    """``definition.options_from(**keywords)``, validated once per distinct value: a training
    loop passes the same options every step. A tensor option is keyed by its identity and
    version (an in-place change is a new value); the cache holds it, so the identity cannot be
    reused while the entry lives."""
    if torch.compiler.is_compiling():  # traced once per graph: nothing to save
        return definition.options_from(**keywords)
    # the types too: 1, 1.0 and True are equal keys, but not equally valid options; a tensor
    # by identity and version, never the tensor itself (its == is elementwise)
    values = tuple(keywords.values())
    types = tuple(map(type, values))
    if torch.Tensor in types or any(isinstance(v, torch.Tensor) for v in values):
        if any(isinstance(v, torch.Tensor) and v.numel() > _CACHED_NUMEL for v in values):
            # per-batch data (a sample weight, an elementwise weight): not kept alive here
            return definition.options_from(**keywords)
        values = tuple((id(v), v._version) if isinstance(v, torch.Tensor) else v for v in values)
    key = (definition.name, tuple(keywords), values, types)
    try:
        options = _options_cache[key]
    except KeyError:
        options = definition.options_from(**keywords)
        _options_cache[key] = options
        if len(_options_cache) > 64:
            _options_cache.popitem(last=False)
    except TypeError:  # an unhashable keyword value: validate it the ordinary way
        options = definition.options_from(**keywords)
    return options


def _covers(options: Any, allowed: frozenset[str]) -> bool:
    """Whether every option that is on is one the small formulation computes: an option it does
    not know (one added to the loss later included) sends the call to the general path.
    Remembered per options object (:func:`cached_options` returns the same one each call)."""
    key = (id(options), allowed)
    known = _covered.get(key)
    if known is not None and known[0] is options:
        return known[1]
    result = True
    for f in dataclasses.fields(options):
        if f.name.startswith("_") or f.name in allowed or not f.init:
            continue
        value = getattr(options, f.name)
        if value is not None and value is not False:
            result = False
            break
    if len(_covered) > 256:
        _covered.clear()
    _covered[key] = (options, result)  # holds the object: its id is not reused meanwhile
    return result


_covered: dict[tuple[int, frozenset], tuple[Any, bool]] = {}

_CE_OPTIONS = frozenset({"weight", "ignore_index", "label_smoothing"})
_BCE_OPTIONS = frozenset({"weight", "pos_weight", "label_smoothing"})
_FOCAL_OPTIONS = _BCE_OPTIONS | {"gamma", "alpha", "epsilon"}


def _finite(out: torch.Tensor) -> bool:
    return out.dim() > 0 or math.isfinite(out.item())


def cross_entropy(
    definition: Any, input: torch.Tensor, target: torch.Tensor, reduction: str, keywords: dict
) -> torch.Tensor | None:
    """Cross entropy with class-index targets through ATen's fused kernel."""
    if input.dtype not in _FLOATS or target.dtype != torch.int64 or input.dim() == 0:
        return None
    options = cached_options(definition, keywords)
    if not _covers(options, _CE_OPTIONS):
        return None
    weight = options.weight
    if weight is not None and (weight.requires_grad or weight.dtype != input.dtype):
        return None
    V.check_class_target(input, target)
    V.check_class_vector("weight", weight, input.shape[input.dim() > 1], floating=True)
    ignore = options.ignore_index
    try:
        out = torch._C._nn.cross_entropy_loss(
            input,
            target,
            weight,
            _REDUCTIONS[reduction],
            _NEVER if ignore is None else ignore,
            options.label_smoothing or 0.0,
        )
    except (IndexError, RuntimeError):
        return None  # an index out of range: the general path words the error
    return out if _finite(out) else None


def binary_cross_entropy_with_logits(
    definition: Any, input: torch.Tensor, target: torch.Tensor, reduction: str, keywords: dict
) -> torch.Tensor | None:
    """BCE with logits as ``y softplus(-x) + (1 - y) softplus(x)`` (weights, ``pos_weight``,
    label smoothing; ``ignore_index`` takes the general path)."""
    if input.dtype not in _FLOATS or target.dtype != input.dtype:
        return None
    options = cached_options(definition, keywords)
    if not _covers(options, _BCE_OPTIONS):
        return None
    V.check_same_shape(input, target)
    weight, pos_weight = options.weight, options.pos_weight
    V.check_broadcastable("weight", weight, input.shape)
    V.check_broadcastable("pos_weight", pos_weight, input.shape)
    y = target
    if options.label_smoothing is not None:
        s = options.label_smoothing
        y = y * (1.0 - s) + 0.5 * s
    positive = F.softplus(-input)
    if pos_weight is not None:
        positive = positive * pos_weight.to(input.dtype)
    loss = torch.addcmul(y * positive, 1.0 - y, F.softplus(input))
    if weight is not None:
        loss = loss * weight.to(input.dtype)
    if reduction == "none":
        return loss
    out = loss.mean() if reduction == "mean" else loss.sum()
    return out if _finite(out) else None


def sigmoid_focal(
    definition: Any, input: torch.Tensor, target: torch.Tensor, reduction: str, keywords: dict
) -> torch.Tensor | None:
    """The sigmoid focal loss (and Poly-1 focal loss) from logits, in about as many operations
    as torchvision's formula, without its cancellations:

    ``alpha_t (1 - p_t)^gamma (y softplus(-x) + (1 - y) softplus(x))`` (+ ``epsilon
    (1 - p_t)^(gamma + 1)``) with ``1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x)``, a sum of
    non-negative terms (torchvision forms ``1 - p_t`` from the rounded ``p``, which is 0 from
    ``x = 17`` on in float32). For ``gamma`` 0 or at least 1 -- below 1 the factor's
    derivative at ``p_t = 1`` is infinite and autograd's product with 0 would give NaN, which
    the general path's closed form avoids -- and without ``ignore_index``."""
    if input.dtype not in _FLOATS or target.dtype != input.dtype:
        return None
    options = cached_options(definition, keywords)
    gamma = options.gamma
    if not _covers(options, _FOCAL_OPTIONS) or isinstance(gamma, torch.Tensor):
        return None
    if gamma is not None and 0.0 < gamma < 1.0:
        return None
    V.check_same_shape(input, target)
    weight, pos_weight = options.weight, options.pos_weight
    V.check_broadcastable("weight", weight, input.shape)
    V.check_broadcastable("pos_weight", pos_weight, input.shape)
    V.check_unit_targets("the focal loss", target, None)
    y = target
    if options.label_smoothing is not None:
        s = options.label_smoothing
        y = y * (1.0 - s) + 0.5 * s
    y1 = 1.0 - y
    neg_x = -input
    positive = F.softplus(neg_x)
    if pos_weight is not None:
        positive = positive * pos_weight.to(input.dtype)
    loss = torch.addcmul(y * positive, y1, F.softplus(input))
    one_minus_pt = None
    if gamma or options.epsilon is not None:
        one_minus_pt = torch.addcmul(y * torch.sigmoid(neg_x), y1, torch.sigmoid(input))
    if gamma:
        loss = loss * (one_minus_pt.square() if gamma == 2.0 else one_minus_pt.pow(gamma))
    if options.alpha is not None:
        a = options.alpha
        loss = loss * (y * (2.0 * a - 1.0) + (1.0 - a))
    if options.epsilon is not None:
        loss = loss + options.epsilon * one_minus_pt.pow((gamma or 0.0) + 1.0)
    if weight is not None:
        loss = loss * weight.to(input.dtype)
    if reduction == "none":
        return loss
    out = loss.mean() if reduction == "mean" else loss.sum()
    return out if _finite(out) else None
