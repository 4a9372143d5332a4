"""The reference math of every loss: ordinary torch operations, differentiated by autograd.

This is the ``"reference"`` backend and the definition the other backends are tested against.
Each entry takes ``(input, target, options)`` -- the options structure of
:mod:`crossent.losses._options` -- and returns the elementwise (binary family) or per-sample
(softmax family) loss, weighted, with ignored elements exactly 0, and the denominator of
``"mean"`` (``None``: every element or sample counts once). Reduction is
:class:`crossent._reduction.Reduction`'s, as on every backend.

Everything is computed in log space -- ``logsigmoid``, ``log_softmax``, a modulating factor
``(1 - p_t)^gamma = exp(gamma log(1 - p_t))`` -- so loss and gradient are finite for every
finite logit and every ``gamma >= 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossent._precision import LOG_CLAMP, SATURATION, compute_dtype
from crossent.losses._options import AsymmetricOptions, SigmoidOptions, SoftmaxOptions

__all__ = ["asymmetric", "sigmoid_family", "softcap", "softmax_family"]

_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# The binary / multi-label family
# --------------------------------------------------------------------------------------------


def prepare_targets(
    target: torch.Tensor,
    dtype: torch.dtype,
    *,
    label_smoothing: float | None,
    ignore_index: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets in the compute dtype, smoothed, with ignored positions set to 0 (harmless).

    Returns ``(y, valid)``; ``valid`` is a bool mask, or ``None`` when nothing can be ignored.
    """
    y = target.to(dtype)
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index
        y = torch.where(valid, y, torch.zeros_like(y))
    if label_smoothing is not None:
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return y, valid


def _weigh_and_mask(
    loss: torch.Tensor, valid: torch.Tensor | None, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight, zero the ignored elements; the mean's denominator (the valid count) or None."""
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    if valid is None:
        return loss, None
    # where, not multiply: an ignored element contributes exactly 0 whatever its input.
    return torch.where(valid, loss, torch.zeros_like(loss)), valid.sum()


def saturated_logs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p`` and ``log(1 - p)`` from logits clamped at +-SATURATION, for modulating factors."""
    xs = x.clamp(-SATURATION, SATURATION)
    return F.logsigmoid(xs), F.logsigmoid(-xs)


def _safe_log(x: torch.Tensor, *, floor: float) -> torch.Tensor:
    # log(x) for x > 0, `floor` at x == 0; the inner where keeps log's gradient finite (no 0 * inf).
    positive = x > 0
    return torch.where(positive, torch.log(torch.where(positive, x, torch.ones_like(x))), floor)


def log_mix(y: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``log(y * exp(log_a) + (1 - y) * exp(log_b))`` without leaving log space.

    With ``log_a = log(1 - p)`` and ``log_b = log(p)`` this is ``log(1 - p_t)`` for a (soft)
    target ``y``; for ``y`` in {0, 1} it is exactly ``log_b`` or ``log_a``.
    """
    neg_inf = float("-inf")
    log_y = _safe_log(y, floor=neg_inf)
    log_1my = _safe_log(1.0 - y, floor=neg_inf)
    return torch.logaddexp(log_y + log_a, log_1my + log_b)


def sigmoid_family_elementwise(
    log_p: torch.Tensor,
    log_1mp: torch.Tensor,
    y: torch.Tensor,
    *,
    gamma: float = 0.0,
    alpha: float | None = None,
    pos_weight: torch.Tensor | None = None,
    modulating_logs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Elementwise focal loss from ``log p`` and ``log(1 - p)``; BCE when gamma = 0, alpha = None.

    ``modulating_logs``: ``(log p, log(1 - p))`` for the modulating factor only (the saturated
    logs of :func:`saturated_logs`); default: the same logs as the loss.

    ``alpha_t (1 - p_t)^gamma * -(w_pos y log p + (1 - y) log(1 - p))`` with
    ``(1 - p_t)^gamma = exp(gamma log(1 - p_t))``: no probability is rounded to 1 before the
    power, so the gradient at saturated logits is finite for every ``gamma >= 0``.
    """
    pos_term = y * log_p
    if pos_weight is not None:
        pos_term = pos_term * pos_weight.to(log_p.dtype)
    loss = -(pos_term + (1.0 - y) * log_1mp)
    if gamma != 0.0:
        m_log_p, m_log_1mp = modulating_logs if modulating_logs is not None else (log_p, log_1mp)
        loss = loss * torch.exp(gamma * log_mix(y, m_log_1mp, m_log_p))
    if alpha is not None:
        loss = loss * (alpha * y + (1.0 - alpha) * (1.0 - y))
    return loss


def probability_logs(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p`` and ``log(1 - p)`` clamped at -100 as torch's BCELoss does (finite at 0 and 1)."""
    log_p = _safe_log(p, floor=LOG_CLAMP).clamp_min(LOG_CLAMP)
    log_1mp = _safe_log(1.0 - p, floor=LOG_CLAMP).clamp_min(LOG_CLAMP)
    return log_p, log_1mp


def asymmetric_elementwise(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    gamma_pos: float,
    gamma_neg: float,
    clip: float | None,
) -> torch.Tensor:
    """Elementwise ASL in log space; soft targets mix the positive and negative terms linearly.

    Positive term: ``-(1 - p)^gamma_pos log p``. Negative term, with the shifted probability
    ``p_m = max(p - clip, 0)``: ``-p_m^gamma_neg log(1 - p_m)``.
    """
    log_p = F.logsigmoid(x)
    log_1mp = F.logsigmoid(-x)
    # the modulating factors' exponents come from saturated logits (see SATURATION)
    sat_log_p, sat_log_1mp = saturated_logs(x) if gamma_pos or not clip else (log_p, log_1mp)
    pos = -log_p
    if gamma_pos != 0.0:
        pos = pos * torch.exp(gamma_pos * sat_log_1mp)
    if clip:
        # 1 - p_m = min(1 - p + clip, 1): log(sigma(-x) + clip) via logaddexp stays exact when
        # sigma(-x) is tiny; where p <= clip the shifted probability is 0 and so is the loss.
        p_m = (torch.sigmoid(x) - clip).clamp_min(0.0)
        shifted = p_m > 0
        log_pm = _safe_log(p_m, floor=float("-inf"))
        log_1mpm = torch.where(
            shifted, torch.logaddexp(log_1mp, log_1mp.new_tensor(clip).log()), 0.0
        )
    else:
        log_pm, log_1mpm = sat_log_p, log_1mp
        shifted = None
    neg = -log_1mpm
    if gamma_neg != 0.0:
        neg = neg * torch.exp(gamma_neg * log_pm)
    if shifted is not None:
        neg = torch.where(shifted, neg, torch.zeros_like(neg))
    return y * pos + (1.0 - y) * neg


def poly1_focal_elementwise(
    log_p: torch.Tensor,
    log_1mp: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    gamma: float,
    alpha: float | None,
    pos_weight: torch.Tensor | None,
    modulating_logs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Elementwise Poly-1 focal loss: the focal loss plus ``epsilon (1 - p_t)^(gamma + 1)``.

    ``(1 - p_t)^(gamma + 1) = exp((gamma + 1) log(1 - p_t))`` with ``log(1 - p_t)`` from
    :func:`log_mix`, as in the focal term: exact at saturated logits, for soft targets too.
    ``modulating_logs`` as in :func:`sigmoid_family_elementwise`.
    """
    loss = sigmoid_family_elementwise(
        log_p,
        log_1mp,
        y,
        gamma=gamma,
        alpha=alpha,
        pos_weight=pos_weight,
        modulating_logs=modulating_logs,
    )
    if epsilon != 0.0:
        m_log_p, m_log_1mp = modulating_logs if modulating_logs is not None else (log_p, log_1mp)
        loss = loss + epsilon * torch.exp((gamma + 1.0) * log_mix(y, m_log_1mp, m_log_p))
    return loss


def sigmoid_family(
    input: torch.Tensor, target: torch.Tensor, options: SigmoidOptions
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """BCE, focal loss or Poly-1 focal loss, from logits or probabilities (see
    :class:`~crossent.losses._options.SigmoidOptions`)."""
    o = options
    x = input.to(compute_dtype(input.dtype, o.probs))
    y, valid = prepare_targets(
        target, x.dtype, label_smoothing=o.label_smoothing, ignore_index=o.ignore_index
    )
    if o.probs:
        log_p, log_1mp = probability_logs(x)
        modulating = None
    else:
        log_p, log_1mp = F.logsigmoid(x), F.logsigmoid(-x)
        focal = o.gamma is not None or o.epsilon is not None
        modulating = saturated_logs(x) if focal else None
    gamma = 0.0 if o.gamma is None else o.gamma
    if o.epsilon is None:
        loss = sigmoid_family_elementwise(
            log_p,
            log_1mp,
            y,
            gamma=gamma,
            alpha=o.alpha,
            pos_weight=o.pos_weight,
            modulating_logs=modulating,
        )
    else:
        loss = poly1_focal_elementwise(
            log_p,
            log_1mp,
            y,
            epsilon=o.epsilon,
            gamma=gamma,
            alpha=o.alpha,
            pos_weight=o.pos_weight,
            modulating_logs=modulating,
        )
    return _weigh_and_mask(loss, valid, o.weight)


def asymmetric(
    input: torch.Tensor, target: torch.Tensor, options: AsymmetricOptions
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The asymmetric loss (ASL) from logits."""
    o = options
    x = input.to(compute_dtype(input.dtype))
    y, valid = prepare_targets(
        target, x.dtype, label_smoothing=o.label_smoothing, ignore_index=o.ignore_index
    )
    loss = asymmetric_elementwise(x, y, gamma_pos=o.gamma_pos, gamma_neg=o.gamma_neg, clip=o.clip)
    return _weigh_and_mask(loss, valid, o.weight)


# --------------------------------------------------------------------------------------------
# The softmax (multi-class) family
# --------------------------------------------------------------------------------------------


def prepare_softmax_targets(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    class_dim: int,
    ignore_index: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits in the compute dtype and the targets with ignored positions made harmless.

    Returns ``(x, target, valid)``. Class indices become int64 with ignored entries set to
    class 0; probability targets come in the compute dtype with ignored rows set to 0.
    ``valid`` (the input's size without the class dimension) is ``None`` when nothing can be
    ignored.
    """
    x = input.to(compute_dtype(input.dtype))
    valid = None
    if not target.is_floating_point():
        t = target.to(torch.long)
        if ignore_index is not None:
            valid = t != ignore_index
            t = torch.where(valid, t, torch.zeros_like(t))
        return x, t, valid
    y = target.to(x.dtype)
    if ignore_index is not None:
        # A position is ignored when its whole target vector holds ignore_index.
        valid = ~(target == ignore_index).all(dim=class_dim)
        y = torch.where(valid.unsqueeze(class_dim), y, torch.zeros_like(y))
    return x, y, valid


def _class_view(v: torch.Tensor, like: torch.Tensor, class_dim: int) -> torch.Tensor:
    """A (C,) or 0-d per-class tensor shaped to broadcast along ``class_dim`` of ``like``."""
    shape = [1] * like.dim()
    shape[class_dim] = -1
    return v.to(like.dtype).reshape(shape)


def _logsumexp_where(log_p: torch.Tensor, keep: torch.Tensor, class_dim: int) -> torch.Tensor:
    """``log sum_{c: keep} p_c`` along ``class_dim`` (keepdim); -inf when no kept p_c > 0.

    A logsumexp of only -inf values has a NaN gradient (exp(-inf - -inf)); those rows are
    replaced by zeros before the logsumexp and by -inf after it, so their gradient is 0.
    """
    kept = torch.where(keep, log_p, _NEG_INF)
    any_mass = (kept > _NEG_INF).any(dim=class_dim, keepdim=True)
    lse = torch.logsumexp(torch.where(any_mass, kept, 0.0), dim=class_dim, keepdim=True)
    return torch.where(any_mass, lse, _NEG_INF)


def log1m_softmax(log_p: torch.Tensor, class_dim: int) -> torch.Tensor:
    """``log(1 - p_c)`` for every class, exact also where ``p_c`` rounds to 1.

    Only the largest class can have ``p_c`` near 1: for it, ``1 - p_c`` is the sum of the
    other probabilities, a logsumexp of their log-probabilities (no cancellation). Every other
    class has ``p_c <= 1/2``, where ``log1p(-p_c)`` is exact.
    """
    num_classes = log_p.shape[class_dim]
    shape = [1] * log_p.dim()
    shape[class_dim] = num_classes
    classes = torch.arange(num_classes, device=log_p.device).reshape(shape)
    is_max = classes == log_p.argmax(dim=class_dim, keepdim=True)
    # The inner where keeps the unused branch at p = e^-1, so its gradient stays finite.
    others = torch.log1p(-torch.exp(torch.where(is_max, -1.0, log_p)))
    top = _logsumexp_where(log_p, ~is_max, class_dim)
    return torch.where(is_max, top, others)


def _terms(
    log_p: torch.Tensor,
    log_1mp: torch.Tensor | None,
    *,
    gamma: float,
    epsilon: float,
) -> torch.Tensor:
    """Per-class terms ``-(1 - p)^gamma log p + epsilon (1 - p)``.

    ``(1 - p)^gamma = exp(gamma * log(1 - p))`` from an exact ``log(1 - p)``: never a power of a
    rounded probability, so the gradient is finite for every gamma >= 0 at a saturated softmax.
    """
    f = -log_p
    if gamma != 0.0 and log_1mp is not None:
        # Where p < e^-SATURATION, 1 - p is exactly 1 (float64 too) and the factor's derivative
        # exactly 0: cut the branch there, so that d f / d factor = -log p * gamma, which
        # overflows for logits near the format's max, never meets that 0 as inf * 0 = NaN.
        log_1mp = torch.where(log_p < -SATURATION, 0.0, log_1mp)
        # log(1 - p) = -inf (p = 1 exactly) is clamped to the dtype's minimum: a gamma that
        # rounds to 0 in the compute dtype would otherwise give 0 * -inf = NaN.
        floor = torch.finfo(log_1mp.dtype).min
        f = f * torch.exp(gamma * log_1mp.clamp_min(floor))
    if epsilon != 0.0:
        # 1 - p = -expm1(log p): exact to the last bit in absolute terms, which is what a sum needs.
        f = f + epsilon * -torch.expm1(log_p)
    return f


def softmax_family_loss(
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    class_dim: int,
    valid: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    alpha: float | torch.Tensor | None = None,
    gamma: float = 0.0,
    epsilon: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample loss (ignored samples exactly 0) and the denominator of ``"mean"``.

    ``target`` is what :func:`prepare_softmax_targets` returns: int64 class indices (ignored
    ones set to 0) or probabilities (ignored rows zeroed). The loss is
    ``sum_c a_c f_c`` with ``a_c = y_c weight_c alpha_c`` (``y`` smoothed) and ``f_c`` from
    :func:`_terms`. Wherever ``a_c`` is 0, ``log p_c`` is replaced by 0 before ``f_c`` is
    formed: a class with a -inf logit and no target mass then contributes 0 with a zero
    gradient instead of ``0 * inf = NaN``.

    The denominator is the summed ``weight`` of the valid targets' classes for class indices
    (their number without ``weight``), the number of valid positions for probabilities, and
    ``None`` (every position) when nothing is ignored and nothing weighted.
    """
    log_p = F.log_softmax(x, dim=class_dim)
    num_classes = x.shape[class_dim]
    s = label_smoothing
    is_index = not target.is_floating_point()
    valid_k = None if valid is None else valid.unsqueeze(class_dim)

    denominator: torch.Tensor | None = None
    w_t = None
    if is_index:
        t_k = target.unsqueeze(class_dim)
        if weight is not None:
            w_t = weight.to(x.dtype)[target]
            denominator = w_t.sum() if valid is None else torch.where(valid, w_t, 0.0).sum()
        elif valid is not None:
            denominator = valid.sum()
    elif valid is not None:
        denominator = valid.sum()

    if is_index and s == 0.0:
        # Only the target class contributes: gather it, skip the other classes' terms.
        log_p_t = log_p.gather(class_dim, t_k)
        coef = None
        if w_t is not None:
            coef = w_t.unsqueeze(class_dim)
        if alpha is not None:
            if isinstance(alpha, torch.Tensor):
                a = alpha.to(x.dtype)
            else:  # a fill, not a host-to-device copy
                a = torch.full((), alpha, dtype=x.dtype, device=x.device)
            a_t = a[target].unsqueeze(class_dim) if a.dim() == 1 else a
            coef = a_t if coef is None else coef * a_t
        zero = None if valid_k is None else ~valid_k
        if coef is not None:
            zero = coef == 0 if zero is None else zero | (coef == 0)
        if zero is not None:
            log_p_t = torch.where(zero, 0.0, log_p_t)
        log_1mp_t = None
        if gamma != 0.0:
            # 1 - p_t = sum of the other classes' probabilities: exact at saturation.
            classes = torch.arange(num_classes, device=x.device)
            shape = [1] * x.dim()
            shape[class_dim] = num_classes
            log_1mp_t = _logsumexp_where(log_p, classes.reshape(shape) != t_k, class_dim)
        loss = _terms(log_p_t, log_1mp_t, gamma=gamma, epsilon=epsilon)
        if coef is not None:
            loss = loss * coef
        return loss.squeeze(class_dim), denominator

    # Per-class coefficients a_c: the (smoothed) target distribution times the class weights.
    if is_index:
        shape = [1] * x.dim()
        shape[class_dim] = num_classes
        classes = torch.arange(num_classes, device=x.device).reshape(shape)
        coef = (classes == t_k).to(x.dtype) * (1.0 - s) + s / num_classes
    else:
        coef = target
        if s:
            coef = coef * (1.0 - s) + s / num_classes
    if valid_k is not None:
        coef = torch.where(valid_k, coef, 0.0)
    if weight is not None:
        coef = coef * _class_view(weight, x, class_dim)
    if isinstance(alpha, torch.Tensor):
        coef = coef * _class_view(alpha, x, class_dim)
    elif alpha is not None:
        coef = coef * alpha
    log_1mp = log1m_softmax(log_p, class_dim) if gamma != 0.0 else None
    log_p_safe = torch.where(coef == 0, 0.0, log_p)
    loss = (coef * _terms(log_p_safe, log_1mp, gamma=gamma, epsilon=epsilon)).sum(class_dim)
    return loss, denominator


def softcap(x: torch.Tensor, cap: float | torch.Tensor) -> torch.Tensor:
    """``cap * tanh(x / cap)`` (Gemma 2's logit soft-capping), differentiable to any order.

    Written as ``tanh(a) = -expm1(-2a) / (1 + exp(-2a))`` for ``a = |x| / cap``, odd by a
    ``where``: its autograd derivative is ``4 e / (1 + e)^2`` (``e = exp(-2a)``) summed from two
    positive terms, exact where ``tanh`` rounds to 1 (``1 - tanh^2`` would be 0 there), and 1
    at ``x = 0`` (``sign(x) * |x|`` would give 0)."""

    def positive(a: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(-2.0 * a) / (1.0 + torch.exp(-2.0 * a))

    u = x / cap
    # the inner wheres keep the branch not taken at a >= 0, so its gradient stays finite
    return cap * torch.where(u >= 0, positive(u.clamp_min(0.0)), -positive((-u).clamp_min(0.0)))


def _sample_coefficient(
    t: torch.Tensor, valid: torch.Tensor | None, weight: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """The weight a sample carries in the mean's denominator: ``weight[t]`` for a valid class
    index with class weights, 1 for any other valid sample, 0 for an ignored one (``None``:
    1 everywhere)."""
    c = None
    if weight is not None and not t.is_floating_point():
        c = weight.to(dtype)[t]
    if valid is not None:
        c = valid.to(dtype) if c is None else torch.where(valid, c, 0.0)
    return c


def softmax_family(
    input: torch.Tensor, target: torch.Tensor, options: SoftmaxOptions
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross entropy, softmax focal loss or Poly-1 cross entropy over the class dimension (1,
    or 0 for an input of size ``(C)``), with the options every one of them has: the logits
    soft-capped first (``softcap``), PaLM's z-loss ``z_loss * lse(z)^2`` added to each valid
    sample (times the weight the sample carries in the mean's denominator), and the whole
    per-sample loss scaled by ``sample_weight``."""
    o = options
    class_dim = 0 if input.dim() == 1 else 1
    x, t, valid = prepare_softmax_targets(
        input, target, class_dim=class_dim, ignore_index=o.ignore_index
    )
    if o.softcap is not None:
        x = softcap(x, o.softcap)
    loss, denominator = softmax_family_loss(
        x,
        t,
        class_dim=class_dim,
        valid=valid,
        weight=o.weight,
        alpha=o.alpha,
        gamma=0.0 if o.gamma is None else o.gamma,
        epsilon=0.0 if o.epsilon is None else o.epsilon,
        label_smoothing=0.0 if o.label_smoothing is None else o.label_smoothing,
    )
    if o.z_loss is not None:
        lse = torch.logsumexp(x, dim=class_dim)
        z = o.z_loss * lse.square()
        c = _sample_coefficient(t, valid, o.weight, x.dtype)
        if c is not None:
            # where, not multiply: an ignored sample contributes exactly 0 whatever its logits
            z = torch.where(c == 0, 0.0, c * z)
        loss = loss + z
    if o.sample_weight is not None:
        loss = loss * o.sample_weight.to(x.dtype)
        if valid is not None:
            loss = torch.where(valid, loss, 0.0)
    return loss, denominator
