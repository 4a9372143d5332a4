"""Explain a loss step by step, the way the BCE tutorials compute it by hand.

:func:`explain` returns, for every element (binary family) or sample (softmax family): the
input, the probability, ``p_t``, the formula with the numbers substituted, and the loss; then
the per-sample means, the reduction, and torch's own value beside it where torch has the loss.

The losses shown are the library's own (``reduction="none"``); the formula is the explanation.
Each formula is also evaluated in float64 (``Step.formula_value``), so a formula that did not
match the library would show, not hide (``Explanation.formula_max_error``).

>>> import torch
>>> from crossent.explain import explain
>>> _ = torch.manual_seed(42)
>>> result = explain(torch.rand(2, 3), torch.tensor([[0, 1, 1], [1, 0, 0]]), "bce", probs=True)
>>> round(result.value, 4), round(result.torch_value, 4)
(0.7739, 0.7739)
>>> result.steps[0].formula
'-log(1 - 0.8823)'
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from crossent import _formula as E
from crossent.losses import SYMBOLS
from crossent.registry import AUTO, LOSSES, LossSpec, format_spec, parse_loss_spec

__all__ = ["Explanation", "SampleMean", "Step", "explain", "resolve_loss"]

# Formulas agree with the library's float32 losses to about 1e-6 relative; anything beyond this
# is a formula that does not describe the loss, and the explanation says so.
FORMULA_RTOL = 1e-4
FORMULA_ATOL = 1e-6


@dataclass
class Step:
    """One element (binary family) or one sample position (softmax family)."""

    index: list[int]
    input: float | list[float]
    target: float | list[float]
    probability: float | list[float]
    p_t: float | None
    formula: str | None
    formula_value: float | None
    loss: float
    ignored: bool = False
    note: str | None = None


@dataclass
class SampleMean:
    sample: int
    losses: list[float]
    mean: float


@dataclass
class Explanation:
    """Everything :func:`explain` computed; ``crossent explain`` renders it."""

    loss: str
    title: str
    family: str
    form: str
    function: str
    options: dict[str, Any]
    formula: str
    definitions: list[str]
    input_shape: list[int]
    target_shape: list[int]
    steps: list[Step]
    samples: list[SampleMean]
    reduction: str
    reduction_formula: str | None
    by_hand: float | None
    value: float | None
    torch_function: str | None
    torch_value: float | None
    difference: float | None
    elementwise_difference: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def formula_max_error(self) -> float | None:
        """The largest ``|formula_value - loss|`` over the steps (None without formulas)."""
        errors = [
            abs(s.formula_value - s.loss)
            for s in self.steps
            if s.formula_value is not None and math.isfinite(s.loss)
        ]
        return max(errors) if errors else None


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def resolve_loss(
    loss: str | LossSpec, options: dict[str, Any] | None = None
) -> tuple[LossSpec, dict[str, Any]]:
    """A loss name or ``"name:opt=value"`` spec plus extra options -> (spec, options).

    Options given in ``options`` override those in the spec; unknown names raise ValueError.

    >>> spec, opts = resolve_loss("focal:gamma=2", {"alpha": None})
    >>> spec.name, opts
    ('focal', {'gamma': 2, 'alpha': None})
    """
    if isinstance(loss, LossSpec):
        spec, parsed = loss, {}
    else:
        spec, parsed = parse_loss_spec(str(loss))
    allowed = spec.options()
    merged = dict(parsed)
    for key, value in (options or {}).items():
        key = key.replace("-", "_")
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ValueError(
                f"Unknown option {key!r} for loss {spec.name!r}. Its options are: {known}."
            )
        merged[key] = value
    for key, value in merged.items():
        if isinstance(value, str) and value == AUTO:
            raise ValueError(
                f"Expected `{key}` to be a value, but got 'auto': explain shows given numbers. "
                f"`crossent doctor` computes suggested values from your targets."
            )
    return spec, merged


def _broadcast_option(value: Any, shape: torch.Size) -> torch.Tensor | None:
    if value is None:
        return None
    tensor = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    return torch.broadcast_to(tensor.detach().double().cpu(), shape)


def _qualname(fn: Any) -> str:
    module = fn.__module__ or ""
    if module.startswith("crossent"):
        module = "crossent"
    elif module.startswith("torch.nn.functional"):
        module = "torch.nn.functional"
    return f"{module}.{fn.__name__}"


def _is_default(spec: LossSpec, key: str, value: Any) -> bool:
    default = spec.options().get(key, inspect.Parameter.empty)
    if isinstance(value, torch.Tensor) or isinstance(default, torch.Tensor):
        return False
    return value == default


# --------------------------------------------------------------------------------------------
# Formulas, one builder per loss; None where the options leave the formula's known ground
# --------------------------------------------------------------------------------------------

# The options each loss's formula knows, from its definition (crossent.losses).
FORMULA_OPTIONS: dict[str, frozenset[str]] = {
    name: spec.formula_options for name, spec in LOSSES.items()
}


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        flat = value.flatten().tolist()
        if len(flat) == 1:
            return f"{flat[0]:g}"
        return "[" + ", ".join(f"{v:g}" for v in flat) + "]"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def symbolic(
    name: str, opts: dict[str, Any], *, family: str = "binary", probability_targets: bool = False
) -> str:
    """The loss's formula with only the terms its options switch on, e.g.
    ``"ℓ = -α_t·(1 - p_t)^γ·log(p_t)"`` for the focal loss with alpha and gamma (the
    definition's :attr:`~crossent.losses.LossDefinition.symbolic`).

    >>> symbolic("bce", {})
    'ℓ = -[y·log(p) + (1 - y)·log(1 - p)]'
    """
    if name not in LOSSES:
        return "ℓ: see the loss's docstring"
    return LOSSES[name].symbolic(opts, probability_targets)


def _binary_expr(
    name: str,
    opts: dict[str, Any],
    p: E.Prob,
    y: float,
    *,
    clamp: float | None,
    pos_w: float | None,
    w: float | None,
) -> tuple[E.Expr | None, str | None]:
    if not 0.0 <= y <= 1.0:
        return None, "target outside [0, 1]: no formula"
    weight = E.Const(w) if w is not None else None
    log_p, log_1mp = E.Log(p, clamp), E.Log(E.OneMinus(p), clamp)
    hard = y in (0.0, 1.0)
    if name == "asl":
        gp, gn, clip = opts["gamma_pos"], opts["gamma_neg"], opts["clip"]
        pos = E.mul(E.power(E.OneMinus(p), gp), log_p)
        note = None
        if clip:
            p_m = p.value() - clip
            if p_m <= 0:
                neg: E.Expr = E.Const(0.0)
                note = f"p ≤ m = {clip:g}: an easy negative, discarded"
            else:
                # log(1 - p_m) = log(1 - p + clip), from log(1 - p) without rounding.
                pm = E.Prob(math.log(p_m), E.logaddexp(p.log_1mp, math.log(clip)))
                neg = E.mul(E.power(pm, gn), E.Log(E.OneMinus(pm)))
                note = f"p_m = {E.fmt(p_m)}"
        else:
            neg = E.mul(E.power(p, gn), log_1mp)
        if y == 1.0:
            return E.Neg(E.mul(weight, pos)), None
        if y == 0.0:
            if isinstance(neg, E.Const):
                return E.mul(weight, neg), note
            return E.Neg(E.mul(weight, neg)), note
        terms = [(1, E.mul(E.Data(y), pos))]
        if not isinstance(neg, E.Const):
            terms.append((1, E.mul(E.Data(1.0 - y), neg)))
        return E.Neg(E.mul(weight, E.Sum(terms))), note

    gamma = float(opts.get("gamma") or 0.0)
    alpha = opts.get("alpha")
    epsilon = float(opts.get("epsilon") or 0.0)  # Poly-1 focal: + ε·(1 - p_t)^(γ+1)
    note = None
    if hard:
        if y == 1.0:
            alpha_t = alpha
            one_minus_p_t: E.Expr = E.OneMinus(p)
            inner = E.mul(E.Const(pos_w) if pos_w is not None else None, log_p)
        else:
            alpha_t = None if alpha is None else 1.0 - alpha
            one_minus_p_t = p
            inner = log_1mp
        a = E.Const(alpha_t) if alpha_t is not None else None
    else:
        # Soft target: the full bracket, and p_t = y p + (1 - y)(1 - p) as a number of its own.
        inner = E.Sum(
            [
                (1, E.mul(E.Const(pos_w) if pos_w is not None else None, E.Data(y), log_p)),
                (1, E.mul(E.Data(1.0 - y), log_1mp)),
            ]
        )
        log_y, log_1my = math.log(y), math.log1p(-y)
        p_t = E.Prob(
            E.logaddexp(log_y + p.log_p, log_1my + p.log_1mp),
            E.logaddexp(log_y + p.log_1mp, log_1my + p.log_p),
        )
        one_minus_p_t = E.OneMinus(p_t)
        if gamma or epsilon:
            note = f"soft target: p_t = y·p + (1 - y)·(1 - p) = {E.fmt(p_t.value())}"
        a = None
        if alpha is not None:
            a = E.Data(alpha * y + (1.0 - alpha) * (1.0 - y))
            note = (note + "; " if note else "") + "α_t = α·y + (1 - α)·(1 - y)"
    focal_loss = E.Neg(E.mul(a, E.power(one_minus_p_t, gamma), inner))
    if not epsilon:
        return E.Neg(E.mul(weight, a, E.power(one_minus_p_t, gamma), inner)), note
    poly = E.mul(E.Const(epsilon), E.power(one_minus_p_t, gamma + 1.0))
    return E.mul(weight, E.Sum([(1, focal_loss), (1, poly)])), note


def _softmax_expr(
    opts: dict[str, Any],
    probs: list[E.Prob],
    target: int | list[float],
) -> tuple[E.Expr | None, str | None]:
    """``Σ_c a_c·f_c`` with ``a_c = y_c·w_c·α_c`` (y smoothed) and
    ``f_c = -(1 - p_c)^γ·log(p_c) + ε·(1 - p_c)``; one class for an index target."""
    num_classes = len(probs)
    weight, alpha = opts.get("weight"), opts.get("alpha")
    gamma = float(opts.get("gamma") or 0.0)
    epsilon = float(opts.get("epsilon") or 0.0)
    s = float(opts.get("label_smoothing") or 0.0)

    def class_factor(value: Any, c: int) -> E.Expr | None:
        if value is None:
            return None
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            return E.Const(float(value[c]))
        return E.Const(float(value))

    if isinstance(target, int):
        y = [float(c == target) for c in range(num_classes)]
    else:
        y = list(target)
    if s:
        y = [v * (1.0 - s) + s / num_classes for v in y]
    used = [c for c in range(num_classes) if y[c] != 0]
    if isinstance(target, int):
        used.sort(key=lambda c: c != target)  # the target class first

    def inner(c: int) -> E.Expr:
        return E.mul(E.power(E.OneMinus(probs[c]), gamma), E.Log(probs[c]))

    def coef(c: int) -> list[E.Expr | None]:
        return [
            E.Data(y[c]) if y[c] != 1.0 else None,
            class_factor(weight, c),
            class_factor(alpha, c),
        ]

    shown, rest = used[:5], used[5:]
    note = None
    if rest:
        rest_value = math.fsum(
            E.mul(*coef(c), _f(inner(c), epsilon, probs[c])).value() for c in rest
        )
        note = f"the last term sums the {len(rest)} other classes"
    if not epsilon:
        terms = [(1, E.mul(*coef(c), inner(c))) for c in shown]
        if rest:
            terms.append((1, E.Data(-rest_value)))
        body = terms[0][1] if len(terms) == 1 else E.Sum(terms)
        return (E.Neg(body) if used else E.Const(0.0)), note
    terms = [(1, E.mul(*coef(c), _f(inner(c), epsilon, probs[c]))) for c in shown]
    if rest:
        terms.append((1, E.Data(rest_value)))
    if not terms:
        return E.Const(0.0), note
    return (terms[0][1] if len(terms) == 1 else E.Sum(terms)), note


def _f(inner: E.Expr, epsilon: float, p: E.Prob) -> E.Expr:
    """``-inner + ε·(1 - p)`` (the Poly-1 term), or ``-inner``."""
    if not epsilon:
        return E.Neg(inner)
    return E.Sum([(-1, inner), (1, E.mul(E.Const(epsilon), E.OneMinus(p)))])


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------


def _torch_value(
    spec: LossSpec,
    probs: bool,
    input: torch.Tensor,
    target: torch.Tensor,
    given: dict[str, Any],
    reduction: str,
) -> tuple[Any, torch.Tensor | None, torch.Tensor | None, str | None]:
    """torch's function and its (reduced, elementwise) values, or a note why there are none."""
    fn = spec.torch_function(probs=probs)
    if fn is None:
        return None, None, None, f"torch has no {spec.title} loss to compare with"
    params = inspect.signature(fn).parameters
    kwargs = {}
    for key, value in given.items():
        if key in ("reduction", "process_group", "vocab_group"):
            continue
        if key not in params:
            return fn, None, None, f"{_qualname(fn)} has no `{key}` option"
        kwargs[key] = value
    if spec.family == "binary" and not target.is_floating_point():
        target = target.to(input.dtype)  # torch wants float targets; the values are the same
    torch_reduction = "mean" if reduction == "global_mean" else reduction
    try:
        with torch.no_grad():
            elementwise = fn(input, target, reduction="none", **kwargs)
            reduced = fn(input, target, reduction=torch_reduction, **kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
        return fn, None, None, f"{_qualname(fn)} raised: {str(e).splitlines()[0]}"
    return fn, reduced, elementwise, None


def _sum_text(values: list[float], limit: int = 8) -> str:
    if len(values) <= limit:
        return "(" + " + ".join(E.fmt(v) for v in values) + ")"
    return E.fmt(math.fsum(values))


def explain(
    input: torch.Tensor,
    target: torch.Tensor,
    loss: str | LossSpec = "bce",
    *,
    probs: bool = False,
    **options: Any,
) -> Explanation:
    """Compute ``loss`` on ``input`` and ``target`` step by step.

    Args:
        input: logits (default) or, with ``probs=True``, probabilities. Binary family: any shape;
            softmax family: ``(N, C)`` or ``(N, C, d1, ...)``.
        target: as the loss takes it (the input's shape for the binary family; class indices
            ``(N, ...)`` or class probabilities for the softmax family).
        loss: a registered loss name or a ``"name:option=value,..."`` spec.
        probs: explain the probability form of the loss (ValueError where it has none).
        **options: keyword options of the loss (override the spec's).

    Returns:
        An :class:`Explanation`.
    """
    spec, opts = resolve_loss(loss, options)
    fn = spec.function(probs=probs)
    reduction = opts.get("reduction", spec.options().get("reduction", "mean"))
    call_opts = {k: v for k, v in opts.items() if k != "reduction"}
    with torch.no_grad():
        elementwise = fn(input, target, reduction="none", **call_opts)
        value = (
            None
            if reduction == "none"
            else float(fn(input, target, **call_opts, reduction=reduction))
        )
    all_opts = {**spec.options(), **opts}
    notes: list[str] = []
    formula_ok = spec.name in FORMULA_OPTIONS
    for key, val in opts.items():
        if formula_ok and key not in FORMULA_OPTIONS[spec.name] and not _is_default(spec, key, val):
            formula_ok = False
            notes.append(f"No step-by-step formula with `{key}` set; the losses are the library's.")
    if not formula_ok and spec.name not in FORMULA_OPTIONS:
        notes.append(f"No step-by-step formula for {spec.name!r}; the losses are the library's.")

    torch_fn, torch_reduced, torch_elementwise, torch_note = _torch_value(
        spec, probs, input, target, opts, reduction
    )
    if torch_note:
        notes.append(torch_note + ".")

    x = input.detach().double().cpu()
    loss_values = elementwise.detach().double().cpu()
    ignore_index = all_opts.get("ignore_index")
    steps: list[Step] = []
    definitions: list[str] = []
    if spec.family == "softmax":
        steps = _softmax_steps(spec, all_opts, x, target, loss_values, formula_ok, ignore_index)
        definitions = [
            "p_c = softmax(x)_c = exp(x_c) / Σ_j exp(x_j)",
            "p_t = p of the target class",
        ]
        if all_opts.get("weight") is not None:
            definitions.append("w_t = weight of the target class")
        if isinstance(all_opts.get("alpha"), torch.Tensor):
            definitions.append("α_t = alpha of the target class")
        if all_opts.get("label_smoothing"):
            definitions.append("y_c = y_c·(1 - s) + s / C (label smoothing)")
        if all_opts.get("softcap") is not None:
            definitions.append("x = c·tanh(x / c) before everything else (soft-capping)")
        if all_opts.get("z_loss"):
            definitions.append("lse(x) = log Σ_c exp(x_c), its square shown as a number")
        if all_opts.get("sample_weight") is not None:
            definitions.append("v = the sample's sample_weight")
    else:
        steps = _binary_steps(spec, all_opts, x, target, loss_values, probs, formula_ok)
        if not probs:
            definitions.append("p = σ(x) = 1 / (1 + exp(-x))")
        definitions.append("p_t = p if y = 1 else 1 - p")
        if all_opts.get("alpha") is not None:
            definitions.append("α_t = α if y = 1 else 1 - α")
        if spec.name == "asl" and all_opts.get("clip"):
            definitions.append("p_m = max(p - m, 0), the shifted probability of a negative")
        if all_opts.get("label_smoothing"):
            definitions.append("y is replaced by y' = y·(1 - s) + s/2 (label smoothing)")
    values = [
        f"{symbol} = {_show(all_opts[key])}"
        for key, symbol in SYMBOLS.items()
        # label_smoothing and z_loss are off at 0 (their default), not only at None
        if all_opts.get(key) is not None
        and not (key in ("label_smoothing", "z_loss") and not all_opts[key])
    ]
    if values:
        definitions.append(", ".join(values))
    if any(st.ignored for st in steps) or (
        "ignore_index" in opts and opts["ignore_index"] is not None
    ):
        definitions.append(f"targets equal to {all_opts['ignore_index']:g} are ignored (loss 0)")
    probability_targets = spec.family == "softmax" and tuple(target.shape) == tuple(x.shape)
    formula = symbolic(
        spec.name, all_opts, family=spec.family, probability_targets=probability_targets
    )

    samples = _sample_means(steps) if _has_samples(spec, x) else []
    valid = [s.loss for s in steps if not s.ignored]
    by_hand, reduction_formula = _by_hand(spec, all_opts, steps, valid, reduction)

    if steps and formula_ok:
        bad = [
            s
            for s in steps
            if s.formula_value is not None
            and not math.isclose(
                s.formula_value, s.loss, rel_tol=FORMULA_RTOL, abs_tol=FORMULA_ATOL
            )
        ]
        if bad:
            notes.append(
                f"The formula evaluates to {bad[0].formula_value!r} at {bad[0].index} but the "
                f"library gives {bad[0].loss!r}: the formula shown does not describe this loss."
            )
    if not probs and spec.family == "binary" and x.numel() and bool(((x >= 0) & (x <= 1)).all()):
        if spec.probs is not None:
            notes.append(
                "Every input lies in [0, 1]: if they are probabilities, not logits, pass "
                "--probs (probs=True)."
            )
    torch_value = None if torch_reduced is None or reduction == "none" else float(torch_reduced)
    difference = None
    if torch_value is not None and value is not None:
        difference = abs(value - torch_value)
    elementwise_difference = None
    if torch_elementwise is not None:
        elementwise_difference = (
            float((torch_elementwise.double() - elementwise.double()).abs().max())
            if elementwise.numel()
            else 0.0
        )

    return Explanation(
        loss=format_spec(spec, opts),
        title=spec.title,
        family=spec.family,
        form="probabilities" if probs else "logits",
        function=_qualname(fn),
        options={k: v for k, v in all_opts.items() if k not in ("process_group", "vocab_group")},
        formula=formula,
        definitions=definitions,
        input_shape=list(input.shape),
        target_shape=list(target.shape),
        steps=steps,
        samples=samples,
        reduction=reduction,
        reduction_formula=reduction_formula,
        by_hand=by_hand,
        value=value,
        torch_function=_qualname(torch_fn) if torch_fn is not None else None,
        torch_value=torch_value,
        difference=difference,
        elementwise_difference=elementwise_difference,
        notes=notes,
    )


def _binary_steps(
    spec: LossSpec,
    opts: dict[str, Any],
    x: torch.Tensor,
    target: torch.Tensor,
    losses: torch.Tensor,
    probs: bool,
    formula_ok: bool,
) -> list[Step]:
    shape = x.shape
    y_all = target.detach().double().cpu()
    pos_w = _broadcast_option(opts.get("pos_weight"), shape)
    weight = _broadcast_option(opts.get("weight"), shape)
    smoothing = float(opts.get("label_smoothing") or 0.0)
    ignore_index = opts.get("ignore_index")
    steps = []
    for idx in itertools.product(*(range(s) for s in shape)):
        xi, yi, li = float(x[idx]), float(y_all[idx]), float(losses[idx])
        p = E.Prob.from_value(xi) if probs else E.Prob.from_logit(xi)
        pv = p.value()
        ignored = ignore_index is not None and yi == float(ignore_index)
        y_used = yi * (1.0 - smoothing) + 0.5 * smoothing
        p_t = None if ignored else y_used * pv + (1.0 - y_used) * (1.0 - pv)
        formula = formula_value = note = None
        if ignored:
            note = "ignored (ignore_index)"
        elif formula_ok:
            expr, note = _binary_expr(
                spec.name,
                opts,
                p,
                y_used,
                clamp=-100.0 if probs else None,
                pos_w=float(pos_w[idx]) if pos_w is not None else None,
                w=float(weight[idx]) if weight is not None else None,
            )
            if expr is not None:
                formula, formula_value = expr.text(), expr.value()
            if smoothing:
                note = (note + "; " if note else "") + f"smoothed target y' = {E.fmt(y_used)}"
        steps.append(
            Step(
                index=list(idx),
                input=xi,
                target=yi,
                probability=pv,
                p_t=p_t,
                formula=formula,
                formula_value=formula_value,
                loss=li,
                ignored=ignored,
                note=note,
            )
        )
    return steps


def _softmax_steps(
    spec: LossSpec,
    opts: dict[str, Any],
    x: torch.Tensor,
    target: torch.Tensor,
    losses: torch.Tensor,
    formula_ok: bool,
    ignore_index: Any,
) -> list[Step]:
    index_targets = target.shape != x.shape
    t_all = target.detach().cpu()
    positions = (x.shape[0], *x.shape[2:])
    cap = opts.get("softcap")
    z = x if cap is None else cap * torch.tanh(x / cap)  # the capped logits the loss sees
    log_probs = torch.log_softmax(z, dim=1)
    log_1m_probs = _log1m_softmax(z)
    lse = torch.logsumexp(z, dim=1)
    z_loss, weight = opts.get("z_loss") or 0.0, opts.get("weight")
    sample_weight = opts.get("sample_weight")
    if sample_weight is not None:
        sample_weight = sample_weight.detach().double().cpu()
    steps = []
    for pos in itertools.product(*(range(s) for s in positions)):
        row_idx = (pos[0], slice(None), *pos[1:])
        logits = x[row_idx]
        class_probs = [
            E.Prob(lp, l1m)
            for lp, l1m in zip(
                log_probs[row_idx].tolist(), log_1m_probs[row_idx].tolist(), strict=True
            )
        ]
        loss_value = float(losses[pos]) if losses.dim() else float(losses)
        if index_targets:
            t: int | list[float] = int(t_all[pos])
            ignored = ignore_index is not None and t == int(ignore_index)
            p_t = None if ignored else class_probs[t].value()
            shown_target: float | list[float] = float(t)
        else:
            t = [float(v) for v in t_all[row_idx].double()]
            ignored = False
            p_t = None
            shown_target = t
        formula = formula_value = note = None
        if ignored:
            note = "ignored (ignore_index)"
        elif formula_ok:
            expr, note = _softmax_expr(opts, class_probs, t)
            if expr is not None and z_loss:
                # PaLM's z-loss, weighted as the sample counts in the mean (w_t, else 1)
                w_t = E.Const(float(weight[t])) if weight is not None and index_targets else None
                z_term = E.mul(E.Const(z_loss), w_t, E.Data(float(lse[pos]) ** 2))
                expr = E.Sum([(1, expr), (1, z_term)])
            if expr is not None and sample_weight is not None:
                expr = E.mul(E.Data(float(sample_weight[pos])), expr)
            if expr is not None:
                formula, formula_value = expr.text(), expr.value()
            if cap is not None:
                capped = ", ".join(E.fmt(float(v)) for v in z[row_idx])
                note = (note + "; " if note else "") + f"capped logits [{capped}]"
        steps.append(
            Step(
                index=list(pos),
                input=[float(v) for v in logits],
                target=shown_target,
                probability=[q.value() for q in class_probs],
                p_t=p_t,
                formula=formula,
                formula_value=formula_value,
                loss=loss_value,
                ignored=ignored,
                note=note,
            )
        )
    return steps


def _log1m_softmax(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(x))`` over dimension 1 without rounding ``1 - p`` to 0."""
    log_p = torch.log_softmax(x, dim=1)
    # A class other than the largest has p <= 1/2, where log1p(-p) is exact; for the largest,
    # 1 - p is the other classes' share: logsumexp(others) - logsumexp(all).
    top = x.argmax(dim=1, keepdim=True)
    is_top = torch.zeros_like(x, dtype=torch.bool).scatter_(1, top, True)
    others = torch.where(is_top, -math.inf, x).logsumexp(1, keepdim=True) - x.logsumexp(
        1, keepdim=True
    )
    return torch.log1p(-log_p.exp()).scatter(1, top, others)


def _has_samples(spec: LossSpec, x: torch.Tensor) -> bool:
    """Per-sample means say something only when a sample holds more than one loss."""
    return x.dim() >= (3 if spec.family == "softmax" else 2)


def _sample_means(steps: list[Step]) -> list[SampleMean]:
    out = []
    for sample, group in itertools.groupby(steps, key=lambda s: s.index[0]):
        losses = [s.loss for s in group if not s.ignored]
        mean = math.fsum(losses) / len(losses) if losses else 0.0
        out.append(SampleMean(sample=sample, losses=losses, mean=mean))
    return out


def _by_hand(
    spec: LossSpec,
    opts: dict[str, Any],
    steps: list[Step],
    valid: list[float],
    reduction: str,
) -> tuple[float | None, str | None]:
    """The reduction done from the per-step losses, and how it was done."""
    if reduction == "none":
        return None, None
    total = math.fsum(valid)
    if reduction == "sum":
        return total, f"sum {_sum_text(valid)} = {E.fmt(total)}"
    label = "mean" if reduction == "mean" else "global mean (one process: the mean)"
    weight = opts.get("weight")
    if (
        spec.family == "softmax"
        and weight is not None
        and steps
        and isinstance(steps[0].target, float)
    ):
        # torch's convention for class weights with index targets: divide by Σ w_target.
        ws = [float(weight[int(s.target)]) for s in steps if not s.ignored]
        denominator = math.fsum(ws)
        terms = " + ".join(f"{w:g}" for w in ws) + " = " if 1 < len(ws) <= 8 else ""
        shown = f"Σ w_target ({terms}{denominator:g})"
    else:
        denominator = float(len(valid))
        shown = str(len(valid))
    result = total / denominator if denominator else 0.0
    return result, f"{label} = {_sum_text(valid)} / {shown} = {E.fmt(result)}"
