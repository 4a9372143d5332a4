r"""One definition per loss: everything the library knows about a loss, in one place.

Each loss is a :class:`~crossent.losses.LossDefinition`. The public functions
(:mod:`crossent.functional`) call :meth:`~crossent.losses.LossDefinition.compute`;
the modules (:mod:`crossent.nn`) store its options; the registry, ``explain``, ``curves``,
``doctor``, ``bench`` and ``compare`` read its name, title, formula and symbols. Three kernel
families compute the seven losses:

* ``SIGMOID``: BCE, focal loss and Poly-1 focal loss, from logits or probabilities
  (options: ``SigmoidOptions``);
* ``ASYMMETRIC``: the asymmetric loss, ASL (``AsymmetricOptions``);
* ``SOFTMAX``: cross entropy, softmax focal loss and Poly-1 cross entropy
  (``SoftmaxOptions``).

A family is its reference math (``crossent.losses._reference``), its closed form
(``crossent.kernels._math``), its Triton launcher (``crossent.kernels._triton``) and
the mean's denominator it knows before the pass. docs/contributing.md ("Adding a loss") walks
through one definition.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from crossent import _validation as V
from crossent.kernels import _math
from crossent.kernels._dispatch import KernelFamily
from crossent.losses import _reference, _small
from crossent.losses._definition import SYMBOLS, LossDefinition, run
from crossent.losses._options import (
    AsymmetricOptions,
    KernelOptions,
    SigmoidOptions,
    SoftmaxOptions,
)

__all__ = [
    "ASL",
    "BCE",
    "CE",
    "DEFINITIONS",
    "FOCAL",
    "POLY1",
    "POLY1_FOCAL",
    "SOFTMAX_FOCAL",
    "SYMBOLS",
    "AsymmetricOptions",
    "KernelOptions",
    "LossDefinition",
    "SigmoidOptions",
    "SoftmaxOptions",
    "run",
]


def _triton(name: str):
    def launcher(options: KernelOptions):
        from crossent.kernels import _triton as T

        return getattr(T, name)

    return launcher


# --------------------------------------------------------------------------------------------
# The binary / multi-label family: elementwise, targets the input's size
# --------------------------------------------------------------------------------------------


def _binary_known_denominator(input: torch.Tensor, target: torch.Tensor, options: Any) -> Any:
    """The binary family's ``"mean"`` denominator where it is known before the pass: the
    element count, or -- for float16 with ``ignore_index`` -- the valid targets, counted first
    (one more read of the targets). float16 cannot hold every unscaled gradient (``-w y / p``
    passes 65504 at ``p ~ 3e-5``) that the mean brings back into range; folded in, the mean
    scales the gradient before it is rounded. Else ``None``: counted in the pass itself."""
    if options.ignore_index is None:
        return input.numel()
    if input.dtype == torch.float16:
        ignore = options.ignore_index
        return lambda: (target != ignore).sum()
    return None


SIGMOID = KernelFamily(
    name="sigmoid",
    classes=False,
    closed_form=lambda options: _math.sigmoid_family,
    triton=_triton("sigmoid_family"),
    known_denominator=_binary_known_denominator,
)
ASYMMETRIC = KernelFamily(
    name="asymmetric",
    classes=False,
    closed_form=lambda options: _math.asymmetric,
    triton=_triton("asymmetric"),
    known_denominator=_binary_known_denominator,
)


def _check_binary(
    input: torch.Tensor, target: torch.Tensor, options: Any, probs: bool, *, unit_targets: bool
) -> Any:
    V.check_floating_input("input", input)
    V.check_tensor("target", target)
    if target.is_complex():
        raise TypeError(f"Expected `target` to be real, but got dtype {target.dtype}.")
    V.check_same_shape(input, target)
    V.check_broadcastable("weight", options.weight, input.shape)
    V.check_broadcastable("pos_weight", getattr(options, "pos_weight", None), input.shape)
    options = _matchable_ignore_index(options, target)
    if probs:
        V.check_probabilities("input", input)
    if unit_targets:
        V.check_unit_targets("the focal loss", target, options.ignore_index)
    return options


def _matchable_ignore_index(options: Any, target: torch.Tensor) -> Any:
    ignore = V.ignore_index_for(target, options.ignore_index)
    if ignore is options.ignore_index:
        return options
    return dataclasses.replace(options, ignore_index=ignore)


# ``shard``: the input is one rank's slice of the classes (``vocab_group``). An elementwise
# loss checks a shard as any input: its targets and weights are the shard's too.
def _check_bce(input, target, options, probs, *, shard=False):
    return _check_binary(input, target, options, probs, unit_targets=False)


def _check_focal(input, target, options, probs, *, shard=False):
    return _check_binary(input, target, options, probs, unit_targets=True)


def _smoothing(value: Any) -> float | None:
    return V.check_label_smoothing(value) or None


def _binary_ignore(value: Any) -> float | None:
    return None if value is None else V.check_number("ignore_index", value)


def _gamma(value: Any) -> float:
    return V.check_number("gamma", value, low=0.0)


def _alpha(value: Any) -> float | None:
    return None if value is None else V.check_number("alpha", value, low=0.0, high=1.0)


def _epsilon(value: Any) -> float:
    return V.check_number("epsilon", value, low=-1.0)


def _bce_options(
    *, probs=False, weight=None, pos_weight=None, label_smoothing=0.0, ignore_index=None
) -> SigmoidOptions:
    return SigmoidOptions(
        probs=probs,
        label_smoothing=_smoothing(label_smoothing),
        ignore_index=_binary_ignore(ignore_index),
        weight=weight,
        pos_weight=pos_weight,
    )


def _focal_options(*, gamma=2.0, alpha=0.25, **common) -> SigmoidOptions:
    options = _bce_options(**common)
    # gamma = 0 is BCE exactly: no modulating factor at all
    return dataclasses.replace(options, gamma=_gamma(gamma) or None, alpha=_alpha(alpha))


def _poly1_focal_options(*, epsilon=1.0, gamma=2.0, alpha=0.25, **common) -> SigmoidOptions:
    epsilon = _epsilon(epsilon)
    options = _focal_options(gamma=gamma, alpha=alpha, **common)
    if not epsilon:
        return options  # the focal loss exactly
    # the Poly-1 term (1 - p_t)^(gamma + 1) needs gamma as a number, 0 included
    return dataclasses.replace(options, epsilon=epsilon, gamma=_gamma(gamma))


def _asl_options(
    *,
    gamma_pos=0.0,
    gamma_neg=4.0,
    clip=0.05,
    weight=None,
    label_smoothing=0.0,
    ignore_index=None,
) -> AsymmetricOptions:
    if clip is not None:
        clip = V.check_number("clip", clip, low=0.0, high=1.0, high_inclusive=False)
    return AsymmetricOptions(
        gamma_pos=V.check_number("gamma_pos", gamma_pos, low=0.0),
        gamma_neg=V.check_number("gamma_neg", gamma_neg, low=0.0),
        clip=clip or None,
        label_smoothing=_smoothing(label_smoothing),
        ignore_index=_binary_ignore(ignore_index),
        weight=weight,
    )


# ---- plain-text formulas (crossent explain) ------------------------------------------------


def _sigmoid_symbolic(opts: dict[str, Any], probability_targets: bool = False) -> str:
    w = "w·" if opts.get("weight") is not None else ""
    pw = "w_pos·" if opts.get("pos_weight") is not None else ""
    a_t = "α_t·" if opts.get("alpha") is not None else ""
    gamma = opts.get("gamma") or 0
    focal = "(1 - p_t)^γ·" if gamma else ""
    poly = ""
    if opts.get("epsilon"):
        poly = " + ε·(1 - p_t)^(γ+1)" if gamma else " + ε·(1 - p_t)"
    if not pw and not opts.get("label_smoothing") and (gamma or a_t):
        core = f"{a_t}{focal}log(p_t)"
    else:
        core = f"{a_t}{focal}[{pw}y·log(p) + (1 - y)·log(1 - p)]"
    if poly:
        return f"ℓ = {w}[-{core}{poly}]" if w else f"ℓ = -{core}{poly}"
    return f"ℓ = -{w}{core}"


def _asl_symbolic(opts: dict[str, Any], probability_targets: bool = False) -> str:
    w = "w·" if opts.get("weight") is not None else ""
    pos = "(1 - p)^γ₊·" if opts.get("gamma_pos") else ""
    neg = "p_m^γ₋·" if opts.get("gamma_neg") else ""
    neg_log = "log(1 - p_m)" if opts.get("clip") else "log(1 - p)"
    if not opts.get("clip"):
        neg = neg.replace("p_m", "p")
    return f"ℓ = -{w}[y·{pos}log(p) + (1 - y)·{neg}{neg_log}]"


_COMMON = frozenset({"weight", "ignore_index", "reduction", "process_group", "vocab_group"})

_BINARY_FORMULA = r"""\ell = -w\, \alpha_t\, (1 - p_t)^{\gamma}
    \left[ w_{pos}\, y \log p + (1 - y) \log(1 - p) \right]"""

BCE = LossDefinition(
    name="bce",
    title="BCE",
    family="binary",
    kernel=SIGMOID,
    reference=_reference.sigmoid_family,
    options_from=_bce_options,
    check=_check_bce,
    function_name="binary_cross_entropy_with_logits",
    probs_function_name="binary_cross_entropy",
    torch_name="binary_cross_entropy_with_logits",
    small=_small.binary_cross_entropy_with_logits,
    torch_probs_name="binary_cross_entropy",
    formula=r"\ell = -w \left[ w_{pos}\, y \log \sigma(x) + (1 - y) \log \sigma(-x) \right]",
    symbolic=_sigmoid_symbolic,
    formula_options=_COMMON | {"pos_weight", "label_smoothing"},
    aliases=("binary_cross_entropy", "binary_cross_entropy_with_logits", "bce_with_logits"),
)
FOCAL = LossDefinition(
    name="focal",
    title="Focal",
    family="binary",
    kernel=SIGMOID,
    reference=_reference.sigmoid_family,
    options_from=_focal_options,
    check=_check_focal,
    small=_small.sigmoid_focal,
    function_name="sigmoid_focal_loss",
    probs_function_name="binary_focal_loss",
    formula=_BINARY_FORMULA,
    symbolic=_sigmoid_symbolic,
    formula_options=_COMMON | {"pos_weight", "label_smoothing", "gamma", "alpha"},
    curve_options=("gamma", "alpha"),
    aliases=("sigmoid_focal", "sigmoid_focal_loss", "binary_focal_loss", "binary_focal"),
)
ASL = LossDefinition(
    name="asl",
    title="ASL",
    family="binary",
    kernel=ASYMMETRIC,
    reference=_reference.asymmetric,
    options_from=_asl_options,
    check=_check_bce,
    small=_small.asymmetric,
    function_name="asymmetric_loss",
    formula=r"""p_m = \max(p - m, 0), \qquad
    \ell = -w \left[ y (1 - p)^{\gamma_+} \log p
    + (1 - y)\, p_m^{\gamma_-} \log(1 - p_m) \right]""",
    symbolic=_asl_symbolic,
    formula_options=_COMMON | {"label_smoothing", "gamma_pos", "gamma_neg", "clip"},
    curve_options=("gamma_pos", "gamma_neg", "clip"),
    aliases=("asymmetric", "asymmetric_loss"),
)
POLY1_FOCAL = LossDefinition(
    name="poly1_focal",
    title="Poly-1 focal",
    family="binary",
    kernel=SIGMOID,
    reference=_reference.sigmoid_family,
    options_from=_poly1_focal_options,
    check=_check_focal,
    small=_small.sigmoid_focal,
    function_name="poly1_focal_loss",
    formula=r"\ell = \mathrm{FL}(x, y) + \epsilon\, (1 - p_t)^{\gamma + 1}",
    symbolic=_sigmoid_symbolic,
    formula_options=_COMMON | {"pos_weight", "label_smoothing", "gamma", "alpha", "epsilon"},
    curve_options=("gamma", "alpha", "epsilon"),
    aliases=("poly1_focal_loss", "poly_focal", "poly_focal_loss", "polyfocal"),
)


# --------------------------------------------------------------------------------------------
# The softmax (multi-class) family: a class dimension, class-index or probability targets
# --------------------------------------------------------------------------------------------


def _softmax_known_denominator(input: torch.Tensor, target: torch.Tensor, options: Any) -> Any:
    """For class indices without ``weight``, the mean's denominator from the targets alone
    (the rows, or the valid ones: a pass over N indices, not N x C); else ``None``."""
    if target.is_floating_point() or options.weight is not None:
        return None
    if options.ignore_index is None:
        return input.numel() // max(input.shape[1], 1) if input.dim() > 1 else 1
    ignore = options.ignore_index
    return lambda: (target != ignore).sum()


SOFTMAX = KernelFamily(
    name="softmax",
    classes=True,
    closed_form=lambda o: _math.cross_entropy if o.plain else _math.softmax_family,
    triton=_triton("softmax_family"),
    known_denominator=_softmax_known_denominator,
)


def _check_softmax(
    input: torch.Tensor, target: torch.Tensor, options: Any, probs: bool, *, shard: bool = False
) -> Any:
    """``shard``: the input is one rank's slice of the classes (``vocab_group``; it may hold
    none); ``weight`` and ``alpha`` are the slice's, class indices are global and checked
    against the total class count inside the call, once the ranks have exchanged it."""
    V.check_floating_input("input", input)
    class_dim = V.class_dim_of(input)
    is_index = V.check_class_target(input, target, shard=shard)
    num_classes = input.shape[class_dim]
    V.check_class_vector("weight", options.weight, num_classes, floating=True)
    if isinstance(options.alpha, torch.Tensor):
        V.check_class_vector(
            "alpha", options.alpha, num_classes, allow_scalar=True, nonnegative=True
        )
    V.check_sample_weight(options.sample_weight, input)
    if is_index:
        options = _matchable_ignore_index(options, target)
        if not shard:
            V.check_class_indices(target, num_classes, options.ignore_index)
    return options


def _z_loss(value: Any) -> float | None:
    # 0 switches it off: no term at all, the plain loss's code path
    return V.check_number("z_loss", value, low=0.0) or None


def _softcap(value: Any) -> float | None:
    if value is None:
        return None
    return V.check_number("softcap", value, low=0.0, low_inclusive=False)


def _sample_weight(value: Any) -> torch.Tensor | None:
    # its size and values are checked with the call (they depend on the input)
    return None if value is None else V.check_tensor("sample_weight", value)


def _ce_options(
    *,
    weight=None,
    sample_weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
) -> SoftmaxOptions:
    return SoftmaxOptions(
        label_smoothing=_smoothing(label_smoothing),
        ignore_index=V.check_ignore_index(ignore_index),
        weight=weight,
        z_loss=_z_loss(z_loss),
        softcap=_softcap(softcap),
        sample_weight=_sample_weight(sample_weight),
    )


def _softmax_alpha(alpha: Any) -> Any:
    """``alpha`` of the softmax focal loss: None, a number >= 0, or a tensor (checked against
    the class count with the call)."""
    if alpha is None or isinstance(alpha, torch.Tensor):
        if isinstance(alpha, torch.Tensor):
            V.check_tensor("alpha", alpha)
        return alpha
    return V.check_number("alpha", alpha, low=0.0)


def _softmax_focal_options(*, gamma=2.0, alpha=None, **common) -> SoftmaxOptions:
    options = _ce_options(**common)
    return dataclasses.replace(options, gamma=_gamma(gamma) or None, alpha=_softmax_alpha(alpha))


def _poly1_options(*, epsilon=1.0, **common) -> SoftmaxOptions:
    options = _ce_options(**common)
    return dataclasses.replace(options, epsilon=_epsilon(epsilon) or None)


def _softmax_symbolic(opts: dict[str, Any], probability_targets: bool = False) -> str:
    """The softmax family's formula with its terms: the loss of :func:`_softmax_terms`, the
    z-loss ``λ·lse(x)²`` (weighted as the mean counts the sample), a sample weight ``v`` over
    both, and the soft-capping of the logits."""
    body = _softmax_terms(opts, probability_targets).removeprefix("ℓ = ")
    if opts.get("z_loss"):
        index_weight = opts.get("weight") is not None and not probability_targets
        body += f" + λ·{'w_t·' if index_weight else ''}lse(x)²"
    if opts.get("sample_weight") is not None:
        body = f"v·[{body}]"
    capped = ", x = c·tanh(x / c)" if opts.get("softcap") is not None else ""
    return f"ℓ = {body}{capped}"


def _softmax_terms(opts: dict[str, Any], probability_targets: bool = False) -> str:
    a_t = "α_t·" if opts.get("alpha") is not None else ""
    gamma = opts.get("gamma") or 0
    focal = "(1 - p_t)^γ·" if gamma else ""
    w_t = "w_t·" if opts.get("weight") is not None else ""
    eps = " + ε·(1 - p_t)" if opts.get("epsilon") else ""
    if probability_targets or opts.get("label_smoothing"):
        eps = eps.replace("p_t", "p_c")
        a_c = "y_c·" + ("w_c·" if w_t else "") + ("α_c·" if a_t else "")
        f_c = f"-{focal.replace('p_t', 'p_c')}log(p_c){eps}"
        return f"ℓ = Σ_c {a_c}[{f_c}]" if eps else f"ℓ = -Σ_c {a_c}{f_c[1:]}"
    if eps:
        coef = w_t + a_t
        return f"ℓ = {coef}[-{focal}log(p_t){eps}]" if coef else f"ℓ = -{focal}log(p_t){eps}"
    return f"ℓ = -{w_t}{a_t}{focal}log(p_t)"


# the options every softmax loss has, which its formula and explain's steps know too
_SOFTMAX_COMMON = _COMMON | {"label_smoothing", "z_loss", "softcap", "sample_weight"}

_SOFTMAX_FORMULA = r"""y'_c = (1 - s)\, y_c + \frac{s}{C}, \qquad
    \ell = \sum_c w_c\, \alpha_c\, y'_c \left[ -(1 - p_c)^{\gamma} \log p_c
    + \epsilon (1 - p_c) \right], \qquad p = \operatorname{softmax}(x)"""

CE = LossDefinition(
    name="ce",
    title="CE",
    family="softmax",
    kernel=SOFTMAX,
    reference=_reference.softmax_family,
    options_from=_ce_options,
    check=_check_softmax,
    function_name="cross_entropy",
    torch_name="cross_entropy",
    small=_small.cross_entropy,
    formula=r"y'_c = (1 - s)\, y_c + \frac{s}{C}, \qquad \ell = -\sum_c w_c\, y'_c \log p_c",
    symbolic=_softmax_symbolic,
    formula_options=_SOFTMAX_COMMON,
    aliases=("cross_entropy", "crossentropy", "softmax_cross_entropy", "nll"),
)
SOFTMAX_FOCAL = LossDefinition(
    name="softmax_focal",
    title="Softmax focal",
    family="softmax",
    kernel=SOFTMAX,
    reference=_reference.softmax_family,
    options_from=_softmax_focal_options,
    check=_check_softmax,
    small=_small.softmax_focal,
    function_name="softmax_focal_loss",
    formula=_SOFTMAX_FORMULA.replace(r"+ \epsilon (1 - p_c) ", ""),
    symbolic=_softmax_symbolic,
    formula_options=_SOFTMAX_COMMON | {"gamma", "alpha"},
    curve_options=("gamma", "alpha"),
    aliases=("softmax_focal_loss", "focal_softmax", "multiclass_focal"),
)
POLY1 = LossDefinition(
    name="poly1",
    title="Poly-1",
    family="softmax",
    kernel=SOFTMAX,
    reference=_reference.softmax_family,
    options_from=_poly1_options,
    check=_check_softmax,
    small=_small.poly1_cross_entropy,
    function_name="poly1_cross_entropy",
    formula=r"P_t = \sum_c y'_c\, p_c, \qquad \ell = \mathrm{CE}(x, y') + \epsilon\, (1 - P_t)",
    symbolic=_softmax_symbolic,
    formula_options=_SOFTMAX_COMMON | {"epsilon"},
    curve_options=("epsilon",),
    aliases=("poly1_cross_entropy", "poly", "poly_loss", "polyloss"),
)

# Every loss, by registry key, in the order the tools list them.
DEFINITIONS: dict[str, LossDefinition] = {
    d.name: d for d in (BCE, FOCAL, ASL, POLY1_FOCAL, CE, SOFTMAX_FOCAL, POLY1)
}
