"""The small-input path: a loss over a few thousand elements in as few torch operations as its
definition allows.

At a batch of 32 rows a loss costs what its Python and its operator calls cost, not what its
arithmetic costs: torch's own ``F.cross_entropy`` is two fused ATen kernels, and the general
path of a crossent loss (options, checks, backend choice, the closed form's few dozen small
operations, the autograd node) was five times slower. On CPU below :data:`SMALL_NUMEL`
elements, with ``backend="auto"``, the functions here compute the loss directly, differentiated
by autograd, with the same formula as the closed form:

* cross entropy, class indices or class probabilities: ATen's fused ``cross_entropy_loss``
  (``log_softmax`` is ``z - log(sum exp z)`` with ``z = x - max``, exactly the closed form's
  formula, so the rounding is the same; torch's options -- ``weight``, ``ignore_index``,
  ``label_smoothing`` -- have torch's meaning, which is crossent's), or, for ``(N, C)``
  logits with probability targets, label smoothing or fewer than 16 classes, crossent's
  native operator (:mod:`crossent.kernels._native`), the same formula in one pass;
* the softmax focal loss (class indices): ``log p_t`` from the same kernel (a class weight of
  -1 turns its negative log-likelihood into ``log p_t``), ``(1 - p_t)^gamma`` as
  ``expm1(log p_t)^gamma``, and ``nll_loss`` for the class weights, ``ignore_index`` and the
  mean's denominator (:func:`softmax_focal`);
* Poly-1 cross entropy (class indices): ``log p_t`` from the same kernel, and ``nll_loss`` of
  the per-sample ``log p_t + epsilon expm1(log p_t)``;
* BCE with logits: ``softplus`` of the logit flipped towards the nearer hard target, plus a
  soft target's correction (:func:`_bce_flipped`: one transcendental pass, float32's relative
  precision at every logit and target; torch's own kernel forms ``(1 - y) x -
  logsigmoid(x)`` and loses it from ``x = -15`` on), its gradient formed in the same pass and
  handed to autograd as one node (:func:`_bce_logits`);
* BCE from probabilities: ATen's ``binary_cross_entropy`` (torch's formula and -100 clamp of
  the logs, which crossent keeps), where its gradient is crossent's (see
  :func:`binary_cross_entropy_with_logits`);
* BCE with logits and from probabilities, where crossent's native operators are loaded: the
  same formulas (the closed form's gradient at every probability) as one vectorised loop
  and one C++ autograd node (:mod:`crossent.kernels._native`);
* the sigmoid focal and Poly-1 focal losses: the flipped BCE, times ``alpha_t (1 -
  p_t)^gamma`` with ``1 - p_t = sigmoid(v)`` of the flipped logit ``v`` (:func:`sigmoid_focal`);
  for hard targets the loss and its gradient in one pass, one autograd node
  (:func:`_focal_hard`);
* the asymmetric loss: ``logsigmoid``, the shifted probability ``softshrink(p, m) =
  max(p - m, 0)`` with ``p = exp(logsigmoid(x))`` (:func:`asymmetric`);
* ``ignore_index`` of the binary losses: a mask, and the mean over the valid elements.

Each returns ``None`` where the call is not one it covers (another dtype, a tensor option that
requires a gradient, a value it cannot check as cheaply); the general path then computes
it. The value checks keep their meaning at a lower cost: a class index out of range, a
probability outside [0, 1], are caught by ATen's own checks inside its kernels, and the call
is then handed to the general path, which raises crossent's error (focal targets outside
[0, 1]: one ``aminmax``; a negative ``alpha`` tensor: checked once per value); a reduced
result that is not finite (every target ignored, an overflow) is handed over the same way,
for the general path's answers (0, the rescaled sum).

Everything a call's options decide -- whether the formulation covers them, their numbers, the
sizes their tensors were checked against -- is worked out once per distinct options value
(:func:`cached_options`) and kept with them as a :class:`_Plan`, which the next call with the
same keyword objects finds by identity (:func:`_plan`): a training loop passes the same
options every step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from operator import is_
from typing import Any

import torch
import torch.nn.functional as F

from crossent import _validation as V
from crossent.kernels import _native

__all__ = [
    "SMALL_NUMEL",
    "asymmetric",
    "binary_cross_entropy_with_logits",
    "cached_options",
    "cross_entropy",
    "poly1_cross_entropy",
    "sigmoid_focal",
    "softmax_focal",
]

#: Up to this many input elements, ``backend="auto"`` takes the small path on CPU (above it the
#: fused closed form's single pass wins).
SMALL_NUMEL = 1 << 15

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_NEVER = -(2**63)  # an ignore_index no class index can equal
_FLOAT32, _FLOAT64, _INT64 = torch.float32, torch.float64, torch.int64
_cross_entropy = torch._C._nn.cross_entropy_loss
_nll = torch._C._nn.nll_loss_nd
_binary_cross_entropy = torch._C._nn.binary_cross_entropy

# Keyword values of these types are keys as they are; any other (a tensor) needs a closer look.
_PLAIN = frozenset({int, float, bool, str, type(None)})
_UNSET = object()
_cache: dict[tuple, list] = {}
_CACHE_SIZE = 64
# A tensor option of at most this many elements (a class weight, a pos_weight) is cached by
# identity with its options; a larger one is validated on each call.
_CACHED_NUMEL = 4096


def _entry(definition: Any, keywords: dict[str, Any], probs: bool = False) -> list:
    """``[options, plan]`` for these keywords: ``options`` from ``definition.options_from``,
    validated once per distinct value, and the plan of the small formulation of the logits
    (or ``probs``) form (``_UNSET`` until one is made). A tensor option is keyed by its
    identity and version (an in-place change is a new value); the entry holds it, so the
    identity cannot be reused while the entry lives."""
    values = tuple(keywords.values())
    # the types too: 1, 1.0 and True are equal keys, but not equally valid options
    types = tuple(map(type, values))
    if not _PLAIN.issuperset(types):
        keyed = []
        for v in values:
            if isinstance(v, torch.Tensor):
                if v.numel() > _CACHED_NUMEL:
                    # per-batch data (a sample weight, an elementwise weight): not kept alive
                    return [definition.options_from(**keywords), _UNSET]
                v = (id(v), v._version)  # never the tensor itself: its == is elementwise
            keyed.append(v)
        values = tuple(keyed)
    key = (definition.name, probs, tuple(keywords), values, types)
    try:
        entry = _cache.get(key)
    except TypeError:  # an unhashable keyword value: validate it the ordinary way
        return [definition.options_from(**keywords), _UNSET]
    if entry is None:
        entry = [definition.options_from(**keywords), _UNSET]
        if len(_cache) >= _CACHE_SIZE:
            del _cache[next(iter(_cache))]  # the oldest
        _cache[key] = entry
    return entry


def cached_options(definition: Any, keywords: dict[str, Any]) -> Any:
    """``definition.options_from(**keywords)``, validated once per distinct value: a training
    loop passes the same options every step (see :func:`_entry`)."""
    if torch.compiler.is_compiling():  # traced once per graph: nothing to save
        return definition.options_from(**keywords)
    return _entry(definition, keywords)[0]


class _Plan:
    """What a small formulation reads from one options value, worked out once: the options'
    numbers as plain floats, the tensor options, the input shapes their sizes were checked
    against."""

    __slots__ = (
        "alpha",
        "checked",
        "clip",
        "epsilon",
        "gamma",
        "gamma_neg",
        "gamma_pos",
        "ignore",
        "native",
        "pos_weight",
        "rows",
        "smoothing",
        "weight",
    )

    def __init__(self, options: Any) -> None:
        get = options.__dict__.get  # fields the options class lacks read as None
        self.weight = get("weight")
        self.pos_weight = get("pos_weight")
        self.ignore = get("ignore_index")
        self.smoothing = get("label_smoothing")
        self.gamma = get("gamma")
        self.alpha = get("alpha")
        self.epsilon = get("epsilon")
        self.clip = get("clip")
        self.gamma_pos = get("gamma_pos")
        self.gamma_neg = get("gamma_neg")
        self.checked: Any = None  # what the tensor options were last checked against
        # whether the native operator reads the tensor options (None: none to check)
        self.native: bool | None = None
        self.rows: dict | None = None  # per-class rows, by (classes, dtype, input rank)


def _plan(
    definition: Any, keywords: dict[str, Any], make: Any, probs: bool = False
) -> _Plan | None:
    """The plan of this options value (``make(options, probs)``, made once), or ``None`` where
    the small formulation does not cover it.

    A loop calls a loss with the same keyword objects every step (the defaults of the public
    function, the same literals, the same weight tensor): the last call's names and values,
    compared by identity (and a tensor's version), find its plan without hashing them."""
    recent = _recent.get(definition.name)
    if (
        recent is not None
        and recent[0] is probs
        and len(keywords) == recent[1]
        and all(map(is_, keywords.values(), recent[2]))
        and all(map(is_, keywords, recent[3]))
        and (recent[4] is None or [keywords[k]._version for k in recent[4][0]] == recent[4][1])
    ):
        return recent[5]
    entry = _entry(definition, keywords, probs)
    plan = entry[1]
    if plan is _UNSET:
        plan = entry[1] = make(entry[0], probs)
    tensors = [k for k, v in keywords.items() if isinstance(v, torch.Tensor)]
    versions = None
    if tensors:
        if any(keywords[k].numel() > _CACHED_NUMEL for k in tensors):
            return plan  # not kept alive here either
        versions = (tensors, [keywords[k]._version for k in tensors])
    # holds the values: a tensor's identity is not reused while it lives
    values = tuple(keywords.values())
    _recent[definition.name] = (probs, len(values), values, tuple(keywords), versions, plan)
    return plan


_recent: dict[str, tuple] = {}


def _covers(options: Any, allowed: frozenset[str]) -> bool:
    """Whether every option that is on is one the small formulation computes: an option it does
    not know (one added to the loss later included) sends the call to the general path."""
    for f in dataclasses.fields(options):
        if f.name.startswith("_") or f.name in allowed or not f.init:
            continue
        value = getattr(options, f.name)
        if value is not None and value is not False:
            return False
    return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _power(value: Any) -> bool:
    """An exponent of a factor that can be 0: ``(1 - p_t)^gamma`` for ``gamma`` 0 or at least
    1. Below 1 its derivative at 0 is infinite, and autograd's product with the 0 that
    multiplies it would give NaN, which the general path's closed form avoids."""
    return value is None or (_number(value) and (value == 0 or value >= 1))


def _finite(out: torch.Tensor) -> bool:
    return out.dim() > 0 or math.isfinite(out.item())


def _power_of(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """``t ** gamma``; the small integer powers by multiplication (a general ``pow`` costs ten
    times more per element on CPU)."""
    if gamma == 2.0:
        return t.square()
    if gamma == 1.0:
        return t
    if gamma == 4.0:
        return t.square().square()
    return t.pow(gamma)  # ATen multiplies out 3 itself


# ---- the softmax family ----------------------------------------------------------------------

_CE_OPTIONS = frozenset({"weight", "ignore_index", "label_smoothing"})
_FOCAL_SOFTMAX_OPTIONS = frozenset({"weight", "ignore_index", "gamma", "alpha"})
_POLY1_OPTIONS = frozenset({"weight", "ignore_index", "epsilon"})


def _ce_plan(options: Any, probs: bool) -> _Plan | None:
    if not _covers(options, _CE_OPTIONS):
        return None
    plan = _Plan(options)
    plan.ignore = _NEVER if plan.ignore is None else plan.ignore
    plan.smoothing = plan.smoothing or 0.0
    return plan


def _softmax_focal_plan(options: Any, probs: bool) -> _Plan | None:
    if not _covers(options, _FOCAL_SOFTMAX_OPTIONS):
        return None
    plan = _Plan(options)
    if not _power(plan.gamma) or not (
        plan.alpha is None or _number(plan.alpha) or isinstance(plan.alpha, torch.Tensor)
    ):
        return None
    plan.ignore = _NEVER if plan.ignore is None else plan.ignore
    return plan


def _poly1_plan(options: Any, probs: bool) -> _Plan | None:
    if not _covers(options, _POLY1_OPTIONS):
        return None
    plan = _Plan(options)
    if not (plan.epsilon is None or _number(plan.epsilon)):
        return None
    plan.ignore = _NEVER if plan.ignore is None else plan.ignore
    return plan


def _class_weight_ok(weight: torch.Tensor, input: torch.Tensor, classes: int) -> bool:
    """A class weight ATen takes as it is; else the general path must see it (another dtype, a
    gradient, a size that is an error)."""
    return weight.dtype == input.dtype and not weight.requires_grad and weight.shape == (classes,)


_MINUS_ONES: dict[tuple[int, torch.dtype], torch.Tensor] = {}


def _minus_ones(classes: int, dtype: torch.dtype) -> torch.Tensor:
    """A class weight of -1 everywhere: ``nll_loss`` with it is ``log p_t`` (0 where ignored)."""
    w = _MINUS_ONES.get((classes, dtype))
    if w is None:
        if len(_MINUS_ONES) > 16:
            _MINUS_ONES.clear()
        with torch.inference_mode(False):  # an inference tensor could not be saved for backward
            w = _MINUS_ONES[classes, dtype] = torch.full((classes,), -1.0, dtype=dtype)
    return w


def _index_call(input: torch.Tensor, target: torch.Tensor) -> int | None:
    """The class count of a call with class-index targets of the right size, else ``None``
    (the general path checks and words the error; int64 indices only: ATen's dtype)."""
    if target.dtype is not _INT64:
        return None
    shape = input.shape
    n = len(shape)
    if n == 2:  # (N, C) and (N,): the common case, without slicing a Size
        ok = target.dim() == 1 and target.shape[0] == shape[0]
        classes = shape[1]
    elif n == 1:
        ok, classes = target.dim() == 0, shape[0]
    elif n:
        ok, classes = target.shape == shape[:1] + shape[2:], shape[1]
    else:
        return None
    return classes if ok and classes else None


def _index_plan(
    definition: Any, keywords: dict, make_plan: Callable, input: torch.Tensor, target: torch.Tensor
) -> tuple[int, _Plan] | None:
    """``(classes, plan)`` of a softmax-family call with class-index targets that the small
    formulations take as it is (float32 or float64, the targets' size, a class weight ATen
    takes), else ``None``."""
    dtype = input.dtype
    if dtype is not _FLOAT32 and dtype is not _FLOAT64:
        return None
    classes = _index_call(input, target)
    if classes is None:
        return None
    plan = _plan(definition, keywords, make_plan)
    if plan is None:
        return None
    weight = plan.weight
    if weight is not None and not _class_weight_ok(weight, input, classes):
        return None
    return classes, plan


#: From this many classes on, cross entropy with class indices and no label smoothing runs
#: ATen's kernels rather than the native operator: ATen's ``log_softmax`` over rows of at
#: least one AVX-512 vector costs less per row (measured on two cores, forward alone: 1280 x
#: 16, 31 us against 49; 256 x 80, 22 against 26), below it more (128 x 10: 27 against 14).
#: Label smoothing (a composite of several ATen operations) and probability targets always
#: take the native operator.
_ATEN_CLASSES = 16


def cross_entropy(
    definition: Any,
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    probs: bool,
    keywords: dict,
) -> torch.Tensor | None:
    """Cross entropy with class indices or class probabilities, ``(N, C)`` logits: crossent's
    native operator (:mod:`crossent.kernels._native`: loss and gradient in one pass, one
    autograd node, every option) where it is loaded and faster (see :data:`_ATEN_CLASSES`);
    else, and for other ranks, ATen's fused kernel.

    For probabilities ATen does not know ``ignore_index`` (a row holding it everywhere is
    ignored): ATen computes the call only where no row is one, which the smallest target
    tells (a row of probabilities in [0, 1] never holds -100); the native operator ignores
    such rows itself."""
    dtype = input.dtype
    if dtype is not _FLOAT32 and dtype is not _FLOAT64:
        return None
    plan = _plan(definition, keywords, _ce_plan)
    if plan is None:
        return None
    shape = input.shape
    rank = len(shape)
    if rank == 2 and target.dtype is _INT64 and target.dim() == 1 and target.shape[0] == shape[0]:
        classes = shape[1]  # _index_call's common case, inline: every call of a loop takes it
        index = classes > 0
    else:
        classes = _index_call(input, target)
        index = classes is not None
    if not index:
        if target.dtype is not dtype or target.shape != shape or not target.numel():
            return None
        classes = shape[rank > 1]
    weight = plan.weight
    if weight is not None and not _class_weight_ok(weight, input, classes):
        return None
    ignore = plan.ignore
    if (
        rank == 2
        and (not index or plan.smoothing or classes < _ATEN_CLASSES)
        and not _transformed()
    ):
        native = _native.operators()
        if native is not None:
            try:
                if index:
                    return native.cross_entropy(
                        input, target, weight, ignore, plan.smoothing, _REDUCTIONS[reduction]
                    )
                return native.cross_entropy_probs(
                    input,
                    target,
                    weight,
                    None if ignore == _NEVER else ignore,
                    plan.smoothing,
                    _REDUCTIONS[reduction],
                )
            # an index out of range (the general path words the error), a reduced loss that
            # is not finite (the general path's answer)
            except (IndexError, NotImplementedError):
                return None
    if not index and ignore != _NEVER:
        # a row is ignored only if every entry equals ignore_index: not where every entry
        # exceeds it (one reduction over contiguous memory; the row test only where not)
        if not target.min().item() > ignore and not bool(
            (target != ignore).any(dim=int(rank > 1)).all()
        ):
            return None
        ignore = _NEVER
    try:
        out = _cross_entropy(input, target, weight, _REDUCTIONS[reduction], ignore, plan.smoothing)
    except (IndexError, RuntimeError):
        return None  # an index out of range: the general path words the error
    if reduction != "none":
        return out if math.isfinite(out.item()) else None
    if not index and not math.isfinite(out.sum().item()):
        return None  # 0 * log p at a -inf logit is NaN in ATen's sum, 0 in the general path's
    return out


def _spread(v: torch.Tensor, input: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """A per-sample value ``v`` as an input-sized tensor whose every class holds it, times the
    class's ``alpha`` (1 without): ``nll_loss`` then picks the target's. One multiplication by
    a row cached in the plan; a contiguous result (``nll_loss`` would copy an expanded view,
    which costs three times as much)."""
    dim = input.dim()
    key = (input.shape[dim > 1], input.dtype, dim)
    row = plan.rows.get(key) if plan.rows is not None else None
    if row is None:
        alpha = plan.alpha
        if isinstance(alpha, torch.Tensor):
            row = alpha
        else:
            with torch.inference_mode(False):  # kept for calls that save it for backward
                row = torch.full((key[0],), 1.0 if alpha is None else alpha, dtype=input.dtype)
        if dim > 2:
            row = row.view([-1] + [1] * (dim - 2))
        if plan.rows is None or len(plan.rows) > 8:
            plan.rows = {}
        plan.rows[key] = row  # the plan's alpha: its version is the plan's
    return v.unsqueeze(int(dim > 1)) * row


def softmax_focal(
    definition: Any,
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    probs: bool,
    keywords: dict,
) -> torch.Tensor | None:
    """The softmax focal loss with class-index targets, ``-w_t alpha_t (1 - p_t)^gamma log p_t``.

    ``log p_t`` comes from ATen's cross-entropy kernel with a class weight of -1 (0 where
    ignored, an index out of range raises there); ``1 - p_t = -expm1(log p_t)``; ``nll_loss``
    of the per-sample ``(1 - p_t)^gamma log p_t`` (spread over the classes, times ``alpha``;
    without class weights, as one class) applies the class weights, ``ignore_index`` and the
    mean's denominator ``sum w_t`` -- the general path's, alpha left out. Only the target
    class enters an elementwise operation, so a ``-inf`` logit elsewhere has a zero gradient,
    as there. ``gamma`` 0 or at least 1."""
    call = _index_plan(definition, keywords, _softmax_focal_plan, input, target)
    if call is None:
        return None
    classes, plan = call
    dtype, weight = input.dtype, plan.weight
    alpha, gamma, ignore = plan.alpha, plan.gamma, plan.ignore
    if isinstance(alpha, torch.Tensor) and not _alpha_ok(plan, alpha, input, classes):
        return None
    reduce = _REDUCTIONS[reduction]
    try:
        if gamma is None and not isinstance(alpha, torch.Tensor):
            out = _cross_entropy(input, target, weight, reduce, ignore, 0.0)
            if alpha is not None:
                out = out * alpha
        else:
            log_pt = _cross_entropy(input, target, _minus_ones(classes, dtype), 0, ignore, 0.0)
            v = log_pt
            if gamma is not None:
                e = torch.expm1(log_pt)  # p_t - 1, exact where p_t <= 1/2
                v = (e.square() if gamma == 2.0 else _power_of(-e, gamma)) * log_pt
            out = _per_sample_nll(v, input, target, plan, reduce)
    except (IndexError, RuntimeError):
        return None
    return out if _finite(out) else None


def _per_sample_nll(
    v: torch.Tensor, input: torch.Tensor, target: torch.Tensor, plan: _Plan, reduce: int
) -> torch.Tensor:
    """``nll_loss`` of a per-sample value ``v`` (``log p_t`` and what multiplies it, 0 where
    ignored) times ``alpha_t``: ``-w_t alpha_t v``, reduced with the class weights,
    ``ignore_index`` and the mean's denominator ``sum w_t`` as the general path reduces."""
    weight, alpha, ignore = plan.weight, plan.alpha, plan.ignore
    if weight is None and not isinstance(alpha, torch.Tensor) and ignore < 0:
        # one class: every valid target becomes class 0 (ignore_index, negative, stays; an
        # index out of range has raised before), and nothing input-sized is formed
        if alpha is not None:
            v = v * alpha
        v = v.unsqueeze(int(input.dim() > 1))
        return _nll(v, target.clamp_max(0), None, reduce, ignore)
    return _nll(_spread(v, input, plan), target, weight, reduce, ignore)


def _alpha_ok(plan: _Plan, alpha: torch.Tensor, input: torch.Tensor, classes: int) -> bool:
    """A tensor ``alpha`` the formulation takes as is: the input's dtype, no gradient, one
    value per class, non-negative (checked once per options value and class count; a
    negative one raises crossent's error)."""
    if alpha.dtype != input.dtype or alpha.requires_grad or alpha.shape != (classes,):
        return False
    if plan.checked != classes:
        V.check_class_vector("alpha", alpha, classes, nonnegative=True)
        if V.value_checks_enabled():
            plan.checked = classes
    return True


def poly1_cross_entropy(
    definition: Any,
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    probs: bool,
    keywords: dict,
) -> torch.Tensor | None:
    """Poly-1 cross entropy with class-index targets, ``w_t (-log p_t + epsilon (1 - p_t))``:
    ``log p_t`` from ATen's cross-entropy kernel as in :func:`softmax_focal`, then the
    per-sample ``log p_t + epsilon expm1(log p_t)`` (``expm1``: exact where ``p_t`` nears 1)
    reduced by :func:`_per_sample_nll` -- one pass over the logits, and the rest over one
    value per sample. Only the target class enters an elementwise operation: a ``-inf``
    logit outside it has a zero gradient."""
    call = _index_plan(definition, keywords, _poly1_plan, input, target)
    if call is None:
        return None
    classes, plan = call
    reduce, ignore = _REDUCTIONS[reduction], plan.ignore
    try:
        if plan.epsilon is None:
            out = _cross_entropy(input, target, plan.weight, reduce, ignore, 0.0)
        else:
            minus_ones = _minus_ones(classes, input.dtype)
            log_pt = _cross_entropy(input, target, minus_ones, 0, ignore, 0.0)
            v = torch.add(log_pt, torch.expm1(log_pt), alpha=plan.epsilon)
            out = _per_sample_nll(v, input, target, plan, reduce)
    except (IndexError, RuntimeError):
        return None
    return out if _finite(out) else None


# ---- the binary family -----------------------------------------------------------------------

_BCE_OPTIONS = frozenset({"weight", "pos_weight", "label_smoothing", "ignore_index"})
_BCE_PROBS_OPTIONS = frozenset({"weight", "ignore_index"})
_FOCAL_OPTIONS = _BCE_OPTIONS | {"gamma", "alpha", "epsilon"}
_ASL_OPTIONS = frozenset(
    {"weight", "label_smoothing", "ignore_index", "gamma_pos", "gamma_neg", "clip"}
)


def _bce_plan(options: Any, probs: bool) -> _Plan | None:
    if not _covers(options, _BCE_PROBS_OPTIONS if probs else _BCE_OPTIONS):
        return None
    return _Plan(options)


def _focal_plan(options: Any, probs: bool) -> _Plan | None:
    if probs or not _covers(options, _FOCAL_OPTIONS):
        return None
    plan = _Plan(options)
    if not _power(plan.gamma) or not all(
        v is None or _number(v) for v in (plan.alpha, plan.epsilon)
    ):
        return None
    return plan


def _asl_plan(options: Any, probs: bool) -> _Plan | None:
    if not _covers(options, _ASL_OPTIONS):
        return None
    plan = _Plan(options)
    if not (_power(plan.gamma_pos) and _power(plan.gamma_neg)):
        return None
    if not (plan.clip is None or _number(plan.clip)):
        return None
    return plan


def _binary_call(input: torch.Tensor, target: torch.Tensor) -> bool:
    """float32 or float64 input, and targets of its dtype and size (else the general path
    converts them, or words the error)."""
    dtype = input.dtype
    return (
        (dtype is _FLOAT32 or dtype is _FLOAT64)
        and target.dtype is dtype
        and target.shape == input.shape
    )


def _binary_weights(plan: _Plan, input: torch.Tensor) -> tuple | None:
    """``weight`` and ``pos_weight`` in the input's dtype; ``None`` where one requires a
    gradient (the general path's reference differentiates it). Their sizes are checked
    against the input's once per options value and input size (a wrong one raises crossent's
    error)."""
    weight, pos_weight = plan.weight, plan.pos_weight
    key = (input.shape, input.dtype)
    if plan.checked != key:
        for name, w in (("weight", weight), ("pos_weight", pos_weight)):
            if w is not None:
                V.check_broadcastable(name, w, input.shape)
                if w.requires_grad or not w.is_floating_point():
                    return None
        plan.native = all(w is None or _native_layout(w, input.shape) for w in (weight, pos_weight))
        plan.checked = key
    if weight is not None:
        if weight.requires_grad:
            return None
        if weight.dtype != input.dtype:
            weight = weight.to(input.dtype)
    if pos_weight is not None:
        if pos_weight.requires_grad:
            return None
        if pos_weight.dtype != input.dtype:
            pos_weight = pos_weight.to(input.dtype)
    return weight, pos_weight


def _native_layout(w: torch.Tensor, shape: torch.Size) -> bool:
    """Whether a weight broadcasts over an input of ``shape`` in a way the native operator
    reads directly: one value, one per class (the last dimension), or one per element."""
    if w.shape == shape:
        return True
    if w.numel() == 1:
        return w.dim() <= max(len(shape), 1)
    return (
        1 <= w.dim() <= len(shape)
        and w.shape[-1] == shape[-1]
        and all(size == 1 for size in w.shape[:-1])
    )


def _targets(
    plan: _Plan, target: torch.Tensor, zero: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The targets, ignored positions set to 0 (``zero``; else left as they are, for a formula
    that is finite at any finite target: they are masked out), then smoothed (the reference's
    order), and the valid mask (``None``: nothing can be ignored)."""
    y, valid = target, None
    if plan.ignore is not None:
        valid = target != plan.ignore
        if zero:
            y = torch.where(valid, target, 0.0)
    if plan.smoothing is not None:
        s = plan.smoothing
        y = y * (1.0 - s) + 0.5 * s
    return y, valid


def _reduce(loss: torch.Tensor, valid: torch.Tensor | None, reduction: str) -> torch.Tensor | None:
    """``"none"``, ``"sum"``, or ``"mean"`` over the valid elements; ``None`` where the reduced
    result is not finite (every element ignored: the general path's mean is 0)."""
    if valid is not None:
        # where, not multiply: an ignored element contributes exactly 0 whatever its input
        loss = torch.where(valid, loss, 0.0)
        if reduction == "mean":
            out = loss.sum() / valid.sum()
            return out if math.isfinite(out.item()) else None
    if reduction == "none":
        return loss
    out = loss.mean() if reduction == "mean" else loss.sum()
    return out if math.isfinite(out.item()) else None


def binary_cross_entropy_with_logits(
    definition: Any,
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    probs: bool,
    keywords: dict,
) -> torch.Tensor | None:
    """BCE, from logits or (``probs``) probabilities, with every option.

    Logits: :func:`_bce_logits`, the loss and its gradient in one pass, one autograd node.

    Probabilities: ATen's ``binary_cross_entropy``, whose loss is crossent's (logs clamped at
    -100) and whose gradient ``(p - y) / (p (1 - p))`` is the closed form's wherever both logs
    are live and ``p (1 - p)`` is above torch's floor of 1e-12. Its kernel rejects a
    probability outside [0, 1] (the general path then words the error); a call that needs a
    gradient is checked for a probability within 2e-12 of 0, or 1, where the two gradients
    part (one ``aminmax``). ``pos_weight`` and label smoothing take the general path, which
    computes them in float64 (the gradient is ill-conditioned at ``p ~ y`` for a smoothed
    target)."""
    dtype = input.dtype  # _binary_call, inline: every call takes it
    if (
        (dtype is not _FLOAT32 and dtype is not _FLOAT64)
        or target.dtype is not dtype
        or target.shape != input.shape
    ):
        return None
    plan = _plan(definition, keywords, _bce_plan, probs)
    if plan is None:
        return None
    weight = pos_weight = None
    if plan.weight is not None or plan.pos_weight is not None:
        weights = _binary_weights(plan, input)
        if weights is None:
            return None
        weight, pos_weight = weights
    native = _native.operators()
    if native is not None and plan.native is not False and not _transformed():
        try:
            if probs:
                return native.binary_cross_entropy(
                    input, target, weight, plan.ignore, _REDUCTIONS[reduction]
                )
            return native.bce_with_logits(
                input,
                target,
                weight,
                pos_weight,
                plan.ignore,
                plan.smoothing or 0.0,
                _REDUCTIONS[reduction],
            )
        # a probability or target outside [0, 1] (the general path words the error), a
        # reduced loss that is not finite (the general path's answer)
        except (ValueError, NotImplementedError):
            return None
    y, valid = target, None
    if plan.ignore is not None or plan.smoothing is not None:
        y, valid = _targets(plan, target, zero=probs)
    if probs:
        if input.requires_grad and torch.is_grad_enabled():
            low, high = torch.aminmax(input.detach())
            if not (low.item() > 2e-12 and high.item() < 1.0 - 2e-12):
                return None
        try:
            if valid is None:
                out = _binary_cross_entropy(input, y, weight, _REDUCTIONS[reduction])
                return out if _finite(out) else None
            loss = _binary_cross_entropy(input, y, weight, 0)
        except RuntimeError:  # a probability or target outside [0, 1]
            return None
        return _reduce(loss, valid, reduction)
    if _transformed():
        loss = _bce_flipped(input, y, pos_weight)[0]
        return _reduce(loss if weight is None else loss * weight, valid, reduction)
    if input.requires_grad and torch.is_grad_enabled():
        out = _small_loss().apply(
            input, lambda x: _bce_logits(x, y, valid, weight, pos_weight, reduction, True)
        )
    else:
        out = _bce_logits(input, y, valid, weight, pos_weight, reduction, False)[0]
    if reduction == "none":
        return out
    return out if math.isfinite(out.item()) else None


def _bce_logits(
    x: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor | None,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    reduction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, d out / d x)`` of BCE with logits, reduced (``None`` for the gradient unless
    ``need_grad``): the formula of :func:`_bce_flipped`, one softplus and exact for every
    logit and target, with its derivative ``c s sigmoid(v) - m d`` (``s = 1 - 2r``) formed in
    the same pass (:class:`~crossent.kernels._function.SmallLoss` hands it to autograd).
    Targets that are all hard (``round(y)`` equals ``y``) skip the soft correction: up to
    :data:`_COMPARED` elements one ``torch.equal`` tells, above it (where ``equal`` is slower)
    one ``aminmax`` of ``d``, which the soft correction needs anyway."""
    r = _nearer_hard_target(y)  # 0 or 1: a target outside [0, 1] is not hard
    d = None
    if x.numel() <= _COMPARED:
        hard = torch.equal(r, y)
    else:
        d = y - r
        low, high = torch.aminmax(d)
        hard = low.item() == 0.0 and high.item() == 0.0
    v = torch.addcmul(x, r, x, value=-2.0)
    loss = F.softplus(v)
    grad = None
    if need_grad:
        w = torch.sigmoid(v)
        grad = torch.addcmul(w, r, w, value=-2.0)  # s sigmoid(v)
    one = None
    if pos_weight is not None:
        one = _constant(1.0, x.dtype)
        c = torch.lerp(one, pos_weight, y)
        loss = loss.mul_(c)
        if grad is not None:
            grad = grad.mul_(c)
    if not hard:
        md = y - r if d is None else d
        if pos_weight is not None:
            md = torch.lerp(pos_weight, one, r).mul_(md)
        loss = torch.addcmul(loss, md, x, value=-1.0)
        if grad is not None:
            grad = grad.sub_(md)
    return _weighted_reduction(loss, grad, weight, valid, reduction)


def _weighted_reduction(
    loss: torch.Tensor,
    grad: torch.Tensor | None,
    weight: torch.Tensor | None,
    valid: torch.Tensor | None,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, d out / d x)`` from the elementwise loss and gradient of a one-pass
    formulation (both new tensors, changed in place): weighted, the ignored elements masked,
    and reduced as the general path reduces (the mean over the valid elements)."""
    if weight is not None:
        loss = loss.mul_(weight)
        if grad is not None:
            grad = grad.mul_(weight)
    if valid is not None:
        # where, not multiply: an ignored element contributes exactly 0 whatever its input
        loss = torch.where(valid, loss, 0.0)
        if grad is not None:
            grad = torch.where(valid, grad, 0.0)
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return loss.sum(), grad
    if valid is None:
        if grad is not None:
            grad = grad.mul_(_constant(1.0 / loss.numel(), loss.dtype))
        return loss.mean(), grad
    count = valid.sum()
    if grad is not None:
        grad = grad.div_(count)
    return loss.sum() / count, grad


#: Up to this many elements :func:`_bce_logits` compares the targets with their rounding by
#: ``torch.equal`` (under a microsecond at 320 elements; 14 us at 20480, where an ``aminmax``
#: of the difference takes 4).
_COMPARED = 4096

_CONSTANTS: dict[tuple[float, torch.dtype], torch.Tensor] = {}


def _constant(value: float, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a 0-dim tensor of ``dtype``, made once: ``lerp`` takes no number as its
    start, and a product with a tensor ``1 / n`` costs a third of a division by the number
    ``n``, which torch wraps into a tensor on every call. Made outside inference mode: calls
    that save it for backward may follow."""
    t = _CONSTANTS.get((value, dtype))
    if t is None:
        if len(_CONSTANTS) > 32:
            _CONSTANTS.clear()
        with torch.inference_mode(False):
            t = _CONSTANTS[value, dtype] = torch.full((), value, dtype=dtype)
    return t


_transformed = torch._C._are_functorch_transforms_active
"""Whether a ``torch.func`` transform (``grad``, ``vmap``, ...) is running: the one-pass
formulations then take their autograd form, since their one node
(:class:`~crossent.kernels._function.SmallLoss`) is not a ``setup_context`` Function that the
transforms can see through."""

_SMALL_LOSS: list = []


def _small_loss() -> Any:
    """:class:`crossent.kernels._function.SmallLoss` (imported on first use: the kernels
    package imports this one's)."""
    if not _SMALL_LOSS:
        from crossent.kernels._function import SmallLoss

        _SMALL_LOSS.append(SmallLoss)
    return _SMALL_LOSS[0]


def _flip(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(r, v, d)``: ``r`` the nearer hard target (:func:`_nearer_hard_target`);
    ``v = (1 - 2r) x``, the logit flipped where the target is nearer 1 (so that
    ``softplus(v)`` is the BCE of a hard target, ``sigmoid(v)`` its ``1 - p_t``); ``d = y - r``
    (``|d| <= 1/2`` in [0, 1], exact): how soft the target is, 0 for a hard one."""
    r = _nearer_hard_target(y)
    return r, torch.addcmul(x, r, x, value=-2.0), y - r


def _nearer_hard_target(y: torch.Tensor) -> torch.Tensor:
    """``round(y)`` within [0, 1]: the nearer hard target of a target in [0, 1], and 0 or 1
    for one outside (BCE takes any target; ``d = y - r`` then carries the rest exactly)."""
    return torch.round(y).clamp_(0.0, 1.0)


def _bce_flipped(
    x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, v, d)``: BCE with logits, elementwise, with one softplus and exact for every
    logit and target, and :func:`_flip`'s ``v`` and ``d`` -- differentiated by autograd
    (the focal losses' soft targets; :func:`_bce_logits` forms the gradient itself):

    ``loss = c softplus(v) - m d x``, ``c = lerp(1, w_pos, y)``, ``m = lerp(w_pos, 1, r)``

    (``c = m = 1`` without ``pos_weight``). For a hard target ``d = 0``: one term, and
    ``softplus`` keeps float32's relative precision at every logit (torch's own kernel
    forms ``(1 - y) x - logsigmoid(x)``, which cancels from ``x = -15`` on). For a soft one
    the two terms cancel by at most a factor ``1 + w_pos`` (``softplus(x) - y x`` cancels
    without bound at ``y = 1``)."""
    r, v, d = _flip(x, y)
    loss = F.softplus(v)
    md = d
    if pos_weight is not None:
        one = _constant(1.0, x.dtype)
        loss = loss * torch.lerp(one, pos_weight, y)
        md = torch.lerp(pos_weight, one, r).mul_(d)
    return torch.addcmul(loss, md, x, value=-1.0), v, d


def sigmoid_focal(
    definition: Any,
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    probs: bool,
    keywords: dict,
) -> torch.Tensor | None:
    """The sigmoid focal loss (and Poly-1 focal loss) from logits, in fewer operations than
    torchvision's formula, without its cancellations. With the logit flipped towards the
    target, ``v = (1 - 2 round(y)) x`` (:func:`_flip`), the BCE is
    :func:`_bce_flipped`'s (one softplus) and ``1 - p_t`` is ``sigmoid(v)`` for a hard target,
    ``lerp(sigmoid(v), sigmoid(-v), |d|)`` for a soft one: exact for a confident correct
    prediction, where torchvision forms ``1 - p_t`` from the rounded ``p`` (0 from ``x = 17``
    on in float32); its derivative is formed as a product of two sigmoids (:func:`_sigmoid`).
    The loss is ``alpha_t (1 - p_t)^gamma BCE`` (+ ``epsilon (1 - p_t)^(gamma + 1)``). For
    ``gamma`` 0 or at least 1 (see :func:`_power`). One ``aminmax`` of ``y (1 - y)`` checks
    that the targets lie in [0, 1] and tells whether every one is hard (0 or 1), which needs
    no soft correction."""
    if not _binary_call(input, target):
        return None
    plan = _plan(definition, keywords, _focal_plan, probs)
    if plan is None:
        return None
    weight = pos_weight = None
    if plan.weight is not None or plan.pos_weight is not None:
        weights = _binary_weights(plan, input)
        if weights is None:
            return None
        weight, pos_weight = weights
    y, valid = target, None
    if plan.ignore is not None:
        valid = target != plan.ignore
        y = torch.where(valid, target, 0.0)
    hard = False
    if V.value_checks_enabled():
        # targets in [0, 1] (ignored ones aside), where y (1 - y) >= 0, the general path's
        # check words the error; and whether every one is 0 or 1, where y (1 - y) = 0
        low, high = torch.aminmax(torch.addcmul(y, y, y, value=-1.0))
        if not low.item() >= 0.0:
            return None
        hard = high.item() == 0.0
    if plan.smoothing is not None:
        s = plan.smoothing
        y = y * (1.0 - s) + 0.5 * s
        hard = False
    if hard and not _transformed():
        if input.requires_grad and torch.is_grad_enabled():
            out = _small_loss().apply(
                input,
                lambda x: _focal_hard(x, y, plan, pos_weight, weight, valid, reduction, True),
            )
        else:
            out = _focal_hard(input, y, plan, pos_weight, weight, valid, reduction, False)[0]
        if reduction == "none":
            return out
        return out if math.isfinite(out.item()) else None
    loss, v, d = _bce_flipped(input, y, pos_weight)
    gamma, epsilon = plan.gamma, plan.epsilon
    factor = one_minus_pt = None
    if gamma or epsilon is not None:
        # 1 - p_t = lerp(sigmoid(v), sigmoid(-v), |d|)
        one_minus_pt = _sigmoid(v, input.requires_grad and torch.is_grad_enabled())
        a = d.abs()
        one_minus_pt = torch.addcmul(a, one_minus_pt, a.mul(-2.0).add_(1.0))
        if gamma:
            factor = _power_of(one_minus_pt, gamma)
            loss = loss * factor
    if plan.alpha is not None:
        # alpha_t = (1 - alpha) + (2 alpha - 1) y from the targets (no gradient there)
        a = plan.alpha
        loss = loss * (y * (2.0 * a - 1.0)).add_(1.0 - a)
    if epsilon is not None:
        # + epsilon (1 - p_t)^(gamma + 1)
        if factor is None:
            loss = torch.add(loss, one_minus_pt, alpha=epsilon)
        else:
            loss = torch.addcmul(loss, factor, one_minus_pt, value=epsilon)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, valid, reduction)


def _focal_hard(
    x: torch.Tensor,
    y: torch.Tensor,
    plan: _Plan,
    pos_weight: torch.Tensor | None,
    weight: torch.Tensor | None,
    valid: torch.Tensor | None,
    reduction: str,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, d out / d x)`` of the sigmoid focal (and Poly-1 focal) loss for hard targets
    (every one 0 or 1), in one pass -- :class:`~crossent.kernels._function.SmallLoss` hands
    the gradient to autograd as one node, where the formula's dozen operations would make a
    dozen.

    With ``s = 1 - 2y`` and ``v = s x``: ``B = c softplus(v)`` (``c = lerp(1, w_pos, y)``),
    ``q = 1 - p_t = sigmoid(v)``, ``p_t = sigmoid(-v)``, ``M = q^gamma``;

    ``loss = alpha_t M B + epsilon M q``,
    ``d loss / dv = alpha_t M (c q + gamma p_t B) + epsilon (gamma + 1) M q p_t``

    (the closed form's ``alpha_t M (dB/dz + gamma B dL/dz)`` with ``L = log q``), and
    ``d loss / dx = s d loss / dv``: sums and products of positive factors, each from its own
    exact sigmoid, so no cancellation."""
    v = torch.addcmul(x, y, x, value=-2.0)
    b = F.softplus(v)
    q = torch.sigmoid(v)
    if pos_weight is not None:
        c = torch.lerp(_constant(1.0, x.dtype), pos_weight, y)
        b = b * c
    gamma, epsilon, alpha = plan.gamma, plan.epsilon, plan.alpha
    m = _power_of(q, gamma) if gamma else None
    loss = b if m is None else b * m
    alpha_t = None
    if alpha is not None:
        alpha_t = (y * (2.0 * alpha - 1.0)).add_(1.0 - alpha)
        loss = loss * alpha_t
    mq = None
    if epsilon is not None:
        mq = q if m is None else m * q
        loss = torch.add(loss, mq, alpha=epsilon)
    grad = None
    if need_grad:
        p_t = torch.sigmoid(v.neg())
        grad = q if pos_weight is None else q * c
        if gamma:
            grad = torch.addcmul(grad, p_t, b, value=gamma)
        if m is not None:
            grad = grad * m
        if alpha_t is not None:
            grad = grad * alpha_t
        if mq is not None:
            grad = torch.addcmul(grad, mq, p_t, value=epsilon * ((gamma or 0.0) + 1.0))
        grad = torch.addcmul(grad, y, grad, value=-2.0)  # times s
    return _weighted_reduction(loss, grad, weight, valid, reduction)


def _sigmoid(v: torch.Tensor, need_grad: bool) -> torch.Tensor:
    """``sigmoid(v)``, whose derivative is formed as the product ``sigmoid(v) sigmoid(-v)``:
    autograd's own forms ``1 - sigmoid(v)``, which loses float32's relative precision as
    ``sigmoid(v)`` nears 1 (a focal factor's derivative 4x less precise at ``gamma = 4``).
    The value is ``sigmoid(v)`` exactly: the derivative rides on ``v - v``, which is 0."""
    vd = v.detach()
    w = torch.sigmoid(vd)
    if not need_grad:
        return w
    return torch.addcmul(w, w * torch.sigmoid(-vd), v - vd)


def _signed(
    loss: torch.Tensor, valid: torch.Tensor | None, reduction: str, sign: float
) -> torch.Tensor | None:
    """:func:`_reduce` of ``sign * loss``, the sign turned on the reduced value where there is
    one."""
    if sign > 0:
        return _reduce(loss, valid, reduction)
    if reduction == "none":
        return _reduce(loss.neg(), valid, reduction)
    out = _reduce(loss, valid, reduction)
    return None if out is None else out.neg()


def asymmetric(
    definition: Any,
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    probs: bool,
    keywords: dict,
) -> torch.Tensor | None:
    """The asymmetric loss (ASL) from logits, ``-[y (1 - p)^gamma_pos log p + (1 - y)
    p_m^gamma_neg log(1 - p_m)]`` with ``p_m = max(p - m, 0)``, in log space as the closed
    form computes it:

    ``log p = logsigmoid(x)`` and ``log(1 - p) = logsigmoid(-x)`` (exact for every logit),
    ``(1 - p)^gamma_pos = exp(gamma_pos log(1 - p))``, ``p = exp(log p)`` (its derivative
    ``p (1 - p)`` from two exact factors), ``p_m = softshrink(p, m)`` (``max(p - m, 0)`` for
    ``p`` in [0, 1]) and ``log(1 - p_m) = log1p(-p_m)``; without a clip
    ``p^gamma_neg = exp(gamma_neg log p)``. The two terms mixed by one ``lerp``.
    ``gamma_pos`` and ``gamma_neg`` 0 or at least 1 (see :func:`_power`)."""
    if not _binary_call(input, target):
        return None
    plan = _plan(definition, keywords, _asl_plan, probs)
    if plan is None:
        return None
    weight = None
    if plan.weight is not None:
        weights = _binary_weights(plan, input)
        if weights is None:
            return None
        weight = weights[0]
    y, valid = _targets(plan, target)
    gamma_pos, gamma_neg, clip = plan.gamma_pos, plan.gamma_neg, plan.clip
    log_p = F.logsigmoid(input)
    log_q = F.logsigmoid(-input) if gamma_pos or clip is None else None
    positive = log_p
    if gamma_pos:
        positive = positive * torch.exp(gamma_pos * log_q)
    if clip is None:
        negative = log_q
        if gamma_neg:
            negative = negative * torch.exp(gamma_neg * log_p)
    else:
        p_m = F.softshrink(torch.exp(log_p), clip)
        negative = torch.log1p(-p_m)  # 1 - p_m >= m: no cancellation
        if gamma_neg:
            negative = negative * _power_of(p_m, gamma_neg)
    # minus the loss: both terms are logs (<= 0), mixed by the target
    loss = torch.lerp(negative, positive, y)
    if weight is not None:
        loss = loss * weight
    return _signed(loss, valid, reduction, -1.0)
