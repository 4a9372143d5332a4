"""Closed-form loss and gradient, written once in plain torch ops.

Each function here computes, in one pass over the data, the loss (summed, or elementwise for
``reduction="none"``) *and* its gradient with respect to the input, from formulas derived by
hand -- no autograd graph, no intermediate kept. The same code runs

* eagerly (the ``"fused"`` backend: correct everywhere, the fallback), and
* under ``torch.compile`` (the ``"compiled"`` backend: inductor fuses it into one vectorised
  C++ loop on CPU).

Numeric options arrive either as Python floats (eager) or as 0-dim tensors (compiled: a new
value is a new input, not a recompile). Python ``bool`` / ``str`` arguments select the code path
and are compile-time constants.

Math is done in float32 (float64 stays float64); the gradient and the elementwise loss are
returned in the input's dtype, the sum in the compute dtype.

Notation (logit family): ``e = exp(-|x|)``, ``l = log1p(e)``, ``p = sigmoid(x)``,
``q = sigmoid(-x) = 1 - p``, ``log p = min(x, 0) - l``, ``log q = min(-x, 0) - l``. Every
quantity below is built from these, so it is finite for every finite logit.
"""

from __future__ import annotations

import torch

from crossent._precision import EXP_CLAMP, LOG_CLAMP, compute_dtype, grad_dtype, output_dtype
from crossent.losses._options import AsymmetricOptions, SigmoidOptions, SoftmaxOptions

__all__ = ["asymmetric", "cross_entropy", "sigmoid_family", "softmax_family"]

Scalar = float | torch.Tensor


def _targets(target, dtype, ignore_index, smoothing):
    """Targets in the compute dtype, ignored positions zeroed, then smoothed to
    ``y (1 - s) + s / 2`` (the reference's order: ``crossent.losses._reference``)."""
    y = target.to(dtype)
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index
        y = torch.where(valid, y, 0.0)
    if smoothing is not None:
        y = y * (1.0 - smoothing) + 0.5 * smoothing
    return y, valid


def _finish(loss, grad, valid, weight, x, mean_denominator, reduce):
    """Weight, mask, reduce. Returns ``(sum or elementwise loss, valid count, gradient)``; a
    ``mean_denominator`` known in advance divides the sum (as the reference's mean does) and
    scales the gradient."""
    if weight is not None:
        w = weight.to(loss.dtype)
        loss = loss * w
        if grad is not None:
            grad = grad * w
    count = None
    if valid is not None:
        # where, not multiply: an ignored element contributes exactly 0, even a NaN input.
        loss = torch.where(valid, loss, 0.0)
        if grad is not None:
            grad = torch.where(valid, grad, 0.0)
        count = valid.sum(dtype=loss.dtype)
    # the elementwise loss in the loss's output dtype (float32 under autocast), rounded once
    out = loss.sum() if reduce else loss.to(output_dtype(x))
    if mean_denominator is not None:
        out = out / mean_denominator
        grad = None if grad is None else grad * (1.0 / mean_denominator)
    return out, count, None if grad is None else grad.to(grad_dtype(x.dtype))


def log1p_unit(e: torch.Tensor) -> torch.Tensor:
    """``log1p(e)`` for ``e`` in [0, 1] (here ``e = exp(-|x|)``).

    float64: ``torch.log1p``. Eager: ``torch.log1p`` too (ATen's vectorised kernel, a
    subnormal ``e`` passed through). Traced by torch.compile in float32: ``2 atanh(s)``,
    ``s = e / (2 + e) <= 1/3``, as
    ``2s + 2s (s^2 P(s^2))`` with ``P`` a degree-4 polynomial fitted to
    ``(atanh(s) / s - 1) / s^2`` on ``s^2`` in [0, 1/9] (weighted least squares; fit error
    below ``1.2e-10`` of the result, against ``1.5e-8`` for the six-term Taylor series), so
    the rounding of the small correction hardly matters. Measured within 1.5 units in the last
    place of the exact value over (0, 1], subnormal ``e`` included (``2s = e / (1 + e/2)``
    does not underflow). A division and seven multiply-adds where a vectorised ``log1p``
    costs several times that: on CPU the loss's largest cost.

    The coefficients are literals, not a module-level tuple: ``torch.compile(dynamic=True)``
    turned each float read out of the tuple into a graph input, which the generated loop
    reloaded and converted on every iteration (about 10% of the BCE kernel's time).
    """
    if e.dtype == torch.float64:
        return torch.log1p(e)
    if not torch.compiler.is_compiling():
        # eager: ATen's vectorised log1p, which flushes a subnormal e to 0 (there log1p(e) = e)
        return torch.where(e < torch.finfo(e.dtype).tiny, e, torch.log1p(e))
    two_s = e / (1.0 + 0.5 * e)  # 2s: no underflow for subnormal e
    s2 = 0.25 * (two_s * two_s)
    poly = 0.1214377603293038 * s2 + 0.10715612163800092
    poly = poly * s2 + 0.14308278783121478
    poly = poly * s2 + 0.19999444777185155
    poly = poly * s2 + 0.33333337744927793
    return two_s + two_s * (s2 * poly)


def _logit_terms(x):
    """``e, l, inv = 1 / (1 + e), x >= 0`` -- the shared pieces of the logit family."""
    e = torch.exp(-x.abs())  # in (0, 1]: never overflows
    l = log1p_unit(e)  # softplus(-|x|), exact for tiny e
    inv = 1.0 / (1.0 + e)
    return e, l, inv, x >= 0


def _int_power(s, bits):
    """``s ** (b0 + 2 b1 + 4 b2)`` by squaring; ``bits`` are bools or 0-dim bool tensors."""
    out = None
    for i, bit in enumerate(bits):
        if i:
            s = s * s
        if isinstance(bit, torch.Tensor):
            factor = torch.where(bit, s, 1.0)
        else:
            factor = s if bit else None
        if factor is not None:
            out = factor if out is None else out * factor
    return torch.ones_like(s) if out is None else out


def sigmoid_family(
    input: torch.Tensor,
    target: torch.Tensor,
    options: SigmoidOptions,
    *,
    mean_denominator: Scalar | None,
    reduce: bool,
    need_grad: bool,
):
    r"""BCE (``gamma is None``), focal loss and Poly-1 focal loss (``epsilon`` not None), from
    logits or (``probs``) probabilities.

    With ``B = -(w_pos y log p + (1 - y) log q)`` and the focal factor
    ``M = (1 - p_t)^gamma = exp(gamma L)``, ``L = log(1 - p_t) = log(y q + (1 - y) p)``:

    .. math::

        \ell = \alpha_t M B, \qquad
        \frac{d\ell}{dz} = \alpha_t M \left( \frac{dB}{dz} + \gamma B \frac{dL}{dz} \right)

    Logits: ``dB/dx = (1 - y) p - w_pos y q`` and ``dL/dx = (1 - 2y) p q / (1 - p_t)``.
    ``1 - p_t = D / (1 + e)`` with ``D = a + b e`` (``a, b`` = ``1 - y, y`` for ``x >= 0``,
    else ``y, 1 - y``), so ``L = log D - l`` and ``p q / (1 - p_t) = e / (D (1 + e))``; when
    ``a = 0`` (a hard target on the saturated side) ``D = e`` may underflow, and there the
    exact forms ``L = -|x| - l``, ``p q / (1 - p_t) = 1 / (1 + e)`` are used instead.

    Probabilities: ``log p`` and ``log(1 - p)`` are clamped at -100 as in torch's BCELoss,
    with zero derivative where the clamp is active (the reference's autograd does the same).

    Poly-1 adds ``epsilon s^(gamma + 1) = epsilon M s`` with ``s = 1 - p_t`` (after ``alpha_t``,
    which weights the focal term only), gradient ``epsilon (gamma + 1) M s dL/dz``.

    ``gamma_bits``: for an integer ``gamma`` in [0, 8], ``(gamma >= 1, binary digits of
    gamma - 1)``; ``M = s * s^(gamma - 1)`` by repeated squaring of ``s = 1 - p_t`` (no log, no
    exp), and ``M dL/dz = s^(gamma - 1) (s dL/dz)`` with ``s dL/dx = p q (1 - 2y)`` (no
    division). ``s`` is exact to rounding wherever ``s^gamma`` is representable (for
    ``a = 0``, ``s = e / (1 + e)`` underflows only when ``s^gamma`` does, ``gamma >= 1``), so
    the result is the same to the last digits. ``None``: any ``gamma >= 0`` through
    ``exp(gamma L)``.
    """
    o = options
    probs, gamma, gamma_bits, alpha, epsilon = o.probs, o.gamma, o.gamma_bits, o.alpha, o.epsilon
    weight, pos_weight = o.weight, o.pos_weight
    dtype = compute_dtype(input.dtype, probs)
    z = input.to(dtype)
    y, valid = _targets(target, dtype, o.ignore_index, o.label_smoothing)
    y1 = 1.0 - y
    if probs:
        # log p and log(1 - p), clamped at -100; d/dp of each (0 where clamped or p on the edge).
        p_ok = z > 0
        lp_raw = torch.log(torch.where(p_ok, z, 1.0))
        lp = torch.where(p_ok, lp_raw, LOG_CLAMP).clamp_min(LOG_CLAMP)
        om = 1.0 - z
        q_ok = om > 0
        lq_raw = torch.log(torch.where(q_ok, om, 1.0))
        lq = torch.where(q_ok, lq_raw, LOG_CLAMP).clamp_min(LOG_CLAMP)
        p_live = p_ok & (lp_raw >= LOG_CLAMP)
        q_live = q_ok & (lq_raw >= LOG_CLAMP)
    else:
        e, l, inv, pos = _logit_terms(z)
        if pos_weight is not None:
            lp = torch.clamp_max(z, 0.0) - l  # log sigmoid(x)
            lq = torch.clamp_max(-z, 0.0) - l  # log sigmoid(-x)
    if pos_weight is not None:
        pw = pos_weight.to(dtype)
    if probs or pos_weight is not None:
        pos_term = y * lp
        if pos_weight is not None:
            pos_term = pos_term * pw
        loss = -(pos_term + y1 * lq)  # the reference's expression order
    else:
        # the same sum regrouped: l + (target mass on the side x points away from) * |x|;
        # two non-negative terms (no cancellation) and fewer operations per element
        a = torch.where(pos, y1, y)
        loss = l + a * z.abs()
    grad = None
    if need_grad:
        if probs:
            wy = y if pos_weight is None else pw * y
            dlp = torch.where(p_live, 1.0 / z, 0.0)
            dlq = torch.where(q_live, -1.0 / om, 0.0)
            grad = -(wy * dlp + y1 * dlq)
            if pos_weight is None:
                # = (p - y) / (p (1 - p)) where both logs are live: no cancellation at p ~ y
                both = p_live & q_live
                grad = torch.where(both, (z - y) / torch.where(both, z * om, 1.0), grad)
        else:
            # (1 - y) p - w_pos y q, not p - y: p - 1 would cancel where q is small
            p = torch.where(pos, inv, e * inv)
            q = torch.where(pos, e * inv, inv)
            grad = y1 * p - (y if pos_weight is None else pw * y) * q
    if gamma is not None:
        if probs:
            # 1 - p_t = y Q + (1 - y) P with P = exp(log p), Q = exp(log(1 - p)) (clamped).
            big_p = torch.where(p_live, z, EXP_CLAMP)
            big_q = torch.where(q_live, om, EXP_CLAMP)
            s = y * big_q + y1 * big_p
            # s dL/dp = -y [q live] + (1 - y) [p live]
            s_dL = y1 * p_live.to(dtype) - y * q_live.to(dtype)
        else:
            if pos_weight is not None:
                a = torch.where(pos, y1, y)
            b = torch.where(pos, y, y1)
            d = a + b * e  # 1 - p_t = d / (1 + e)
            s = d * inv  # 1 - p_t; exact to rounding unless it underflows (then s^gamma does)
            s_dL = (e * inv * inv) * (y1 - y)  # s dL/dx = p q (1 - 2y)
        if gamma_bits is not None:
            # s^gamma = s * s^(gamma - 1): m dL = s^(gamma - 1) (s dL), no division
            at_least_one, bits = gamma_bits
            m_1 = _int_power(s, bits)  # s^(gamma - 1), or 1 for gamma = 0
            if isinstance(at_least_one, torch.Tensor):
                m = torch.where(at_least_one, m_1 * s, 1.0)
            else:
                m = m_1 * s if at_least_one else torch.ones_like(s)
            m_dL = m_1 * s_dL
        else:
            if probs:
                L = torch.log(s)
                m = torch.exp(gamma * L)  # (1 - p_t)^gamma from its log: any gamma >= 0
                m_dL = m * s_dL / s
            else:
                edge = a == 0  # there d = e, which may have underflowed: use log(e) = -|x|
                L = torch.where(edge, -z.abs(), torch.log(d)) - l
                m = torch.exp(gamma * L)
                r = torch.where(edge, 1.0, e / d) * inv  # p q / (1 - p_t)
                m_dL = m * r * (y1 - y)
        if grad is not None:
            # loss * m_dL first: at |x| near the format's max gamma * loss overflows while
            # m_dL is exactly 0 there (inf * 0 = NaN); their product is finite everywhere.
            grad = m * grad + gamma * (loss * m_dL)
        loss = m * loss
    if alpha is not None:
        alpha_t = alpha * y + (1.0 - alpha) * y1
        loss = loss * alpha_t
        if grad is not None:
            grad = grad * alpha_t
    if epsilon is not None:
        loss = loss + epsilon * (m * s)  # (1 - p_t)^(gamma + 1)
        if grad is not None:
            grad = grad + epsilon * (gamma + 1.0) * (m * s_dL)
    return _finish(loss, grad, valid, weight, input, mean_denominator, reduce)


def asymmetric(
    input: torch.Tensor,
    target: torch.Tensor,
    options: AsymmetricOptions,
    *,
    mean_denominator: Scalar | None,
    reduce: bool,
    need_grad: bool,
):
    r"""ASL: ``y * pos + (1 - y) * neg`` with

    * ``pos = -q^{gamma_pos} log p``,
      ``d pos / dx = q^{gamma_pos} (gamma_pos p log p - q)``;
    * without a clip: ``neg = -p^{gamma_neg} log q``,
      ``d neg / dx = p^{gamma_neg} (p - gamma_neg q log q)``;
    * with a clip ``m``: ``p_m = max(p - m, 0)``, ``neg = -p_m^{gamma_neg} log(q + m)`` where
      ``p_m > 0`` (else 0), ``d neg / dx = p q p_m^{gamma_neg}
      (1 / (q + m) - gamma_neg log(q + m) / p_m)``.
    """
    o = options
    gamma_pos, gamma_neg, clip, weight = o.gamma_pos, o.gamma_neg, o.clip, o.weight
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype)
    y, valid = _targets(target, dtype, o.ignore_index, o.label_smoothing)
    e, l, inv, pos = _logit_terms(x)
    lp = torch.clamp_max(x, 0.0) - l
    lq = torch.clamp_max(-x, 0.0) - l
    p = torch.where(pos, inv, e * inv)
    q = torch.where(pos, e * inv, inv)
    e_pos = torch.exp(gamma_pos * lq)  # q^gamma_pos in log space
    pos_loss = -lp * e_pos
    if clip is None:
        e_neg = torch.exp(gamma_neg * lp)
        neg_loss = -lq * e_neg
    else:
        p_m = (p - clip).clamp_min(0.0)
        shifted = p_m > 0
        log_1mpm = torch.log(q + clip)  # log(1 - p_m) where shifted; q + m: no cancellation
        e_neg = torch.exp(gamma_neg * torch.log(torch.where(shifted, p_m, 1.0)))
        neg_loss = torch.where(shifted, -log_1mpm * e_neg, 0.0)
    y1 = 1.0 - y
    loss = y * pos_loss + y1 * neg_loss
    grad = None
    if need_grad:
        d_pos = e_pos * (gamma_pos * p * lp - q)
        if clip is None:
            d_neg = e_neg * (p - gamma_neg * q * lq)
        else:
            safe_pm = torch.where(shifted, p_m, 1.0)
            d_neg = (p * q) * e_neg * (1.0 / (q + clip) - gamma_neg * log_1mpm / safe_pm)
            d_neg = torch.where(shifted, d_neg, 0.0)
        grad = y * d_pos + y1 * d_neg
    return _finish(loss, grad, valid, weight, input, mean_denominator, reduce)


def softcap(x: torch.Tensor, cap: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    """``cap * tanh(x / cap)`` and its derivative ``1 - tanh^2 = 4 e / (1 + e)^2`` with
    ``e = exp(-2 |x| / cap)``: never ``1 -`` a rounded ``tanh^2`` (0 wherever ``tanh`` rounds
    to 1, from ``|x| / cap`` of 9 on in float32), finite for every ``x`` (0 at ``+-inf``)."""
    u = x / cap
    e = torch.exp(-2.0 * u.abs())  # in [0, 1]: never overflows
    return cap * torch.tanh(u), 4.0 * e / ((1.0 + e) * (1.0 + e))


def _softmax_parts(input: torch.Tensor, cap: Scalar | None = None):
    """``x`` in the compute dtype (soft-capped when ``cap`` is given), ``z = x - max``,
    ``exp(z)``, its row sum ``S``, ``log S`` (the log-sum-exp of ``z``: ``lse(x) - x_j =
    log S - z_j``, no overflow, no cancellation when one class dominates), the row max, all
    over dimension 1 (keepdim), and ``dx / d input`` of the soft-capping (``None`` without)."""
    x = input.to(compute_dtype(input.dtype))
    dcap = None
    if cap is not None:
        x, dcap = softcap(x, cap)
    top = x.amax(dim=1, keepdim=True)
    z = x - top
    ez = torch.exp(z)
    sum_ez = ez.sum(dim=1, keepdim=True)
    return x, z, ez, sum_ez, torch.log(sum_ez), top, dcap


def _scaled_softmax(z, ez, lse, sum_ez, scale, recompute: bool = False):
    """``p * scale``, the softmax ``p = e^z / S`` times a per-row ``scale``: from the stored
    ``e^z``, or (``recompute``) as ``exp(z - log S) * scale``, which compiled code evaluates in
    its last pass over the row instead of storing ``e^z`` -- slower (a second ``exp`` per
    element), but with no ``(N, C)`` temporary (the gradient written in place). The two
    differ by a rounding of ``z - log S``: a few units in the last place."""
    if recompute:
        return torch.exp(z - lse) * scale
    return ez * (scale / sum_ez)


def _row_scale(mean_denominator: Scalar | None, sample_weight: torch.Tensor | None, like):
    """The factor each sample's gradient is stored with: ``1 / mean_denominator`` (folded
    mean) times the sample's ``sample_weight``; a number, or a tensor shaped like ``like``
    (``(N, 1, d1, ...)``)."""
    sc = 1.0 if mean_denominator is None else 1.0 / mean_denominator
    if sample_weight is None:
        return sc
    return sample_weight.to(like.dtype).reshape(like.shape) * sc


def _z_loss(z_loss: Scalar, lse: torch.Tensor, c: torch.Tensor | None):
    """PaLM's z-loss of each sample, ``z_loss c lse^2``, and the coefficient of ``p_k`` in its
    gradient, ``2 z_loss c lse`` (``lse`` of the whole row, ``c`` the sample's weight in the
    mean's denominator; ``None``: 1). Where ``c`` is 0 both are exactly 0, whatever the row's
    logits (an ignored sample)."""
    k = (2.0 * z_loss) * lse
    term = z_loss * (lse * lse)
    if c is not None:
        term = torch.where(c == 0, 0.0, c * term)
        k = torch.where(c == 0, 0.0, c * k)
    return term, k


def _finish_rows(loss, grad, valid, sample_weight, dcap):
    """The per-sample loss ``(N, 1, ...)`` scaled by ``sample_weight`` (an ignored sample
    stays exactly 0), and the gradient through the soft-capping."""
    if sample_weight is not None:
        loss = loss * sample_weight.to(loss.dtype).reshape(loss.shape)
        if valid is not None:
            loss = torch.where(valid, loss, 0.0)
    if grad is not None and dcap is not None:
        grad = grad * dcap
    return loss, grad


def _index_targets(target, ignore_index, weight, dtype):
    """Class indices as ``(N, 1, ...)`` int64 (ignored ones set to 0), the valid mask, and the
    weight of each sample's class (0 where ignored; the valid mask as numbers without a
    ``weight``): ``(t, valid or None, w_t or None)`` -- ``w_t`` summed is the denominator of
    ``"mean"``, ``None`` when every sample counts once."""
    t = target.to(torch.long).unsqueeze(1)
    valid = w_t = None
    if ignore_index is not None:
        valid = t != ignore_index
        t = torch.where(valid, t, 0)
    if weight is not None:
        w_t = weight.to(dtype).gather(0, t.view(-1)).view(t.shape)
        if valid is not None:
            w_t = torch.where(valid, w_t, 0.0)
    elif valid is not None:
        w_t = valid.to(dtype)
    return t, valid, w_t


def _probability_targets(target, dtype, ignore_index, smoothing, n_classes):
    """Probability targets smoothed, a row whose every entry is ``ignore_index`` zeroed:
    ``(y, valid rows or None, their count or None)``."""
    y = target.to(dtype)
    valid = denominator = None
    if ignore_index is not None:
        valid = (target != ignore_index).any(dim=1, keepdim=True)
        y = torch.where(valid, y, 0.0)
        denominator = valid.sum(dtype=dtype)
    if smoothing is not None:
        y = y * (1.0 - smoothing) + smoothing / n_classes
        if valid is not None:
            y = torch.where(valid, y, 0.0)
    return y, valid, denominator


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    options: SoftmaxOptions,
    *,
    mean_denominator: Scalar | None,
    reduce: bool,
    need_grad: bool,
    in_place: bool = False,
):
    r"""Softmax cross entropy over dimension 1 (crossent's, i.e. torch's, semantics), loss and
    gradient.

    Index targets (``probs=False``), class weights ``w``, smoothing ``s`` over ``C`` classes:

    .. math::

        \ell_i = (1 - s)\, w_{t_i} (\mathrm{lse}_i - x_{i t_i})
                 + \frac{s}{C} \sum_j w_j (\mathrm{lse}_i - x_{ij})

        \frac{d\ell_i}{dx_{ik}} = p_{ik} \Big((1 - s) w_{t_i} + \frac{s}{C} W\Big)
                 - (1 - s) w_{t_i} [k = t_i] - \frac{s}{C} w_k, \qquad W = \sum_j w_j

    and ``"mean"`` divides by :math:`\sum_i w_{t_i}` over non-ignored samples. Probability
    targets (``probs=True``), with ``a_j = w_j ((1 - s) y_j + s / C)``:
    :math:`\ell_i = \sum_j a_{ij} (\mathrm{lse}_i - x_{ij})`, gradient
    :math:`p_{ik} \sum_j a_{ij} - a_{ik}`; a row whose every target equals ``ignore_index``
    is ignored, and ``"mean"`` divides by the number of valid rows. Every difference
    ``lse - x`` is formed as ``log(sum exp(x - max)) - (x - max)``: no cancellation when one
    class dominates. A term whose coefficient is 0 contributes 0 even at a ``-inf`` logit.

    Returns ``(sum or per-sample loss, denominator or None, gradient)``; a ``None``
    denominator means every sample counts once. ``in_place``: the gradient is written over
    ``input`` and returned as it (the fused linear + loss's logits block, see
    :func:`crossent.linear._chunked.gradient_in_place`); compiled, its last pass recomputes
    ``e^z`` and compares with the target class instead of storing ``e^z`` and accumulating
    at the target, so the generated code writes it there directly, with no ``(N, C)``
    temporary.
    """
    o = options
    weight, ignore_index, smoothing = o.weight, o.ignore_index, o.label_smoothing
    fuse = in_place and torch.compiler.is_compiling()
    probs = target.is_floating_point()
    x, z, ez, sum_ez, lse, top, dcap = _softmax_parts(input, o.softcap)
    dtype, n_classes = x.dtype, x.shape[1]
    w_shape = [1] * x.dim()
    w_shape[1] = n_classes
    w = None if weight is None else weight.to(dtype).view(w_shape)
    # the mean's 1 / denominator and the sample weights go into the per-row coefficients:
    # the gradient's last write stays the one of the formula (no further pass over it)
    sc = _row_scale(mean_denominator, o.sample_weight, lse)
    denominator = None
    grad = None
    if probs:
        y, valid, denominator = _probability_targets(
            target, dtype, ignore_index, smoothing, n_classes
        )
        a = y if w is None else w * y
        loss = torch.where(a == 0, 0.0, a * (lse - z)).sum(dim=1, keepdim=True)
        coef = a.sum(dim=1, keepdim=True)
        if o.z_loss is not None:
            term, k = _z_loss(o.z_loss, top + lse, None if valid is None else valid.to(dtype))
            loss = loss + term
            coef = coef + k
        if need_grad:
            grad = _scaled_softmax(z, ez, lse, sum_ez, coef * sc, fuse) - a * sc
    else:
        t, valid, w_t = _index_targets(target, ignore_index, weight, dtype)
        # gather / scatter at the target class: an index outside [0, C) raises, as in torch
        z_t = z.gather(1, t)  # x_t - max
        if w_t is not None:
            denominator = w_t.sum()
        nll_coef = torch.ones_like(z_t) if w_t is None else w_t
        if smoothing is not None:
            nll_coef = nll_coef * (1.0 - smoothing)
        nll = lse - z_t
        if w_t is not None:
            nll = torch.where(nll_coef == 0, 0.0, nll)  # a zero weight at a -inf logit: 0
        loss = nll_coef * nll
        coef = nll_coef
        if smoothing is not None:
            eps = smoothing / n_classes
            if valid is not None:
                eps = valid.to(dtype) * eps
            if w is None:
                smooth = n_classes * lse - z.sum(dim=1, keepdim=True)
                w_sum = n_classes
            else:
                smooth = torch.where(w == 0, 0.0, w * (lse - z)).sum(dim=1, keepdim=True)
                w_sum = w.sum()
            smooth = eps * smooth
            if valid is not None:
                smooth = torch.where(valid, smooth, 0.0)
            loss = loss + smooth
            coef = coef + eps * w_sum
        if o.z_loss is not None:
            term, k = _z_loss(o.z_loss, top + lse, w_t)
            loss = loss + term
            coef = coef + k
        if need_grad:
            grad = _scaled_softmax(z, ez, lse, sum_ez, coef * sc, fuse)
            if smoothing is not None:
                grad = grad - (eps * sc if w is None else (eps * sc) * w)
            grad = _add_at_target(grad, t, -(nll_coef * sc), fuse)
    loss, grad = _finish_rows(loss, grad, valid, o.sample_weight, dcap)
    loss = loss.squeeze(1)
    out = loss.sum() if reduce else loss.to(output_dtype(input))
    if mean_denominator is not None:
        out = out / mean_denominator  # the gradient has it already
    if grad is not None and in_place:
        grad = input.copy_(grad)
    return out, denominator, None if grad is None else grad.to(grad_dtype(input.dtype))


def _class_view(v: Scalar | None, dtype: torch.dtype, shape: list[int]) -> Scalar | None:
    """A per-class ``(C,)`` tensor viewed along dimension 1; a number or 0-dim tensor as is."""
    if isinstance(v, torch.Tensor):
        v = v.to(dtype)
        return v.view(shape) if v.dim() else v
    return v


def softmax_family(
    input: torch.Tensor,
    target: torch.Tensor,
    options: SoftmaxOptions,
    *,
    mean_denominator: Scalar | None,
    reduce: bool,
    need_grad: bool,
):
    r"""Softmax focal loss and Poly-1 cross entropy over dimension 1, loss and gradient.

    With ``a_c = y'_c w_c alpha_c`` (``y'`` the smoothed target distribution, 0 for an ignored
    sample) and the per-class term ``f(p) = -(1 - p)^gamma log p + epsilon (1 - p)``
    (``gamma=None``: no focal factor; ``epsilon=None``: no polynomial term):

    .. math::

        \ell = \sum_c a_c f(p_c), \qquad
        \frac{d\ell}{dx_k} = g_k - p_k \sum_c g_c, \qquad g_c = a_c\, p_c f'(p_c)

    since :math:`dp_c / dx_k = p_c ([c = k] - p_k)`; and
    ``p f'(p) = M (gamma p r - 1) - epsilon p`` with ``M = (1 - p)^gamma = exp(gamma L)``,
    ``L = log(1 - p)``, ``r = log p / (1 - p)`` (-> -1 as ``p`` -> 1). ``1 - p`` and
    ``L`` are never formed from a rounded ``p`` near 1: where ``p <= 1/2``, ``1 - p`` (for a
    class index without smoothing, where only the target class has ``a_c != 0``:
    ``(S - e^{z_t}) / S``) is exact to rounding; the one class that can exceed 1/2 is the
    unique maximum (``z = x - max = 0``), and its ``1 - p`` is the sum of ``e^z`` over the
    classes below the maximum, over ``S``. A term with ``a_c = 0`` contributes 0, also at a
    ``-inf`` logit.
    ``"mean"`` divides as :func:`cross_entropy` does (``alpha`` never enters it).

    Returns ``(sum or per-sample loss, denominator or None, gradient)``.
    """
    o = options
    weight, alpha, ignore_index, smoothing = o.weight, o.alpha, o.ignore_index, o.label_smoothing
    gamma, epsilon = o.gamma, o.epsilon
    probs = target.is_floating_point()
    x, z, ez, sum_ez, lse, top, dcap = _softmax_parts(input, o.softcap)
    dtype, n_classes = x.dtype, x.shape[1]
    shape = [1] * x.dim()
    shape[1] = n_classes
    w = _class_view(weight, dtype, shape)
    al = _class_view(alpha, dtype, shape)
    sc = _row_scale(mean_denominator, o.sample_weight, lse)
    denominator = None
    grad = None
    k = None  # the z-loss's coefficient of p in the gradient
    if probs or smoothing is not None:
        # every class may carry target mass: per-class coefficients and terms
        if probs:
            y, valid, denominator = _probability_targets(
                target, dtype, ignore_index, smoothing, n_classes
            )
            c = None if valid is None else valid.to(dtype)
        else:
            t, valid, w_t = _index_targets(target, ignore_index, weight, dtype)
            onehot = torch.arange(n_classes, device=x.device).view(shape) == t
            y = onehot.to(dtype) * (1.0 - smoothing) + smoothing / n_classes
            if w_t is not None:
                denominator = w_t.sum()
            if valid is not None:
                y = torch.where(valid, y, 0.0)
            c = w_t
        a = y if w is None else y * w
        if al is not None:
            a = a * al
        log_p = z - lse
        p = ez / sum_ez
        keep = a != 0
        terms = -log_p
        m = u = big = None
        if gamma is not None or epsilon is not None:
            big = p > 0.5  # only the unique maximum, where z = 0
            s_below = torch.where(z == 0, 0.0, ez).sum(dim=1, keepdim=True)
            u = torch.where(big, s_below / sum_ez, 1.0 - p)  # 1 - p, exact
            if gamma is not None:
                L = torch.where(
                    big, torch.log(s_below) - lse, torch.log1p(-torch.where(big, 0.0, p))
                )
                m = _focal_factor(gamma, L)
                terms = terms * m
            if epsilon is not None:
                terms = terms + epsilon * u
        loss = torch.where(keep, a * terms, 0.0).sum(dim=1, keepdim=True)
        if o.z_loss is not None:
            term, k = _z_loss(o.z_loss, top + lse, c)
            loss = loss + term
        if need_grad:
            h = _p_dfdp(p, log_p, u, big, m, gamma, epsilon)
            g = torch.where(keep, a * (h * sc), 0.0)
            grad = g - p * g.sum(dim=1, keepdim=True)
            if k is not None:
                grad = grad + p * (k * sc)
    else:
        # class indices without smoothing: only the target class has a coefficient
        t, valid, coef = _index_targets(target, ignore_index, weight, dtype)
        if coef is not None:
            denominator = coef.sum()
        if o.z_loss is not None:
            term, k = _z_loss(o.z_loss, top + lse, coef)  # before alpha: the mean's weights
        if al is not None:
            a_t = al
            if isinstance(al, torch.Tensor) and al.dim():
                a_t = al.view(-1).gather(0, t.view(-1)).view_as(lse)
            coef = a_t if coef is None else coef * a_t
        z_t = z.gather(1, t)
        log_pt = z_t - lse
        p_t = torch.exp(log_pt)
        # S - e^{z_t} sums the other classes exactly to rounding while p_t <= 1/2; above it
        # the target is the unique maximum (z_t = 0) and the other classes are those below 0
        s_below = torch.where(z == 0, 0.0, ez).sum(dim=1, keepdim=True)
        big = p_t > 0.5
        s_other = torch.where(big, s_below, sum_ez - torch.exp(z_t))
        u = s_other / sum_ez  # 1 - p_t, exact
        f = -log_pt
        m = None
        if gamma is not None:
            m = _focal_factor(gamma, torch.log(s_other) - lse)
            f = f * m
        if epsilon is not None:
            f = f + epsilon * u
        if isinstance(coef, torch.Tensor):
            f = torch.where(coef == 0, 0.0, coef * f)
        elif coef is not None:  # a number alpha, no weight and nothing ignored
            f = coef * f if coef else torch.zeros_like(f)
        loss = f if k is None else f + term
        if need_grad:
            h = _p_dfdp(p_t, log_pt, u, big, m, gamma, epsilon) * sc
            if isinstance(coef, torch.Tensor):
                h = torch.where(coef == 0, 0.0, coef * h)
            elif coef is not None:
                h = coef * h if coef else torch.zeros_like(h)
            # g_k - p_k sum g = h ([k = t] - p_k), and the z-loss's p_k k
            rest = -h if k is None else k * sc - h
            grad = _add_at_target(ez * (rest / sum_ez), t, h)
    loss, grad = _finish_rows(loss, grad, valid, o.sample_weight, dcap)
    loss = loss.squeeze(1)
    out = loss.sum() if reduce else loss.to(output_dtype(input))
    if mean_denominator is not None:
        out = out / mean_denominator  # the gradient has it already
    return out, denominator, None if grad is None else grad.to(grad_dtype(input.dtype))


def _add_at_target(
    grad: torch.Tensor, t: torch.Tensor, values: torch.Tensor, compare: bool = False
) -> torch.Tensor:
    """``grad[n, t[n, 0, ...], ...] += values[n, 0, ...]`` (``grad``: a fresh ``(N, C, ...)``
    tensor of this closed form; ``t``, ``values``: ``(N, 1, ...)``), and ``grad``. An indexed
    accumulate in place, not ``scatter_add``: torch.compile fuses it into the generated code
    (``scatter_add`` ran as a separate ATen call that took about 7% of a cross entropy on CPU),
    and eagerly it writes in place instead of copying the gradient. Each row has one target,
    so no two updates meet (deterministic). ``compare``: a comparison with the class index
    instead, a pointwise step that compiled code folds into the pass writing ``grad`` (the
    accumulate needs the whole gradient stored first), so that pass can write it in place.
    """
    if compare:
        classes = torch.arange(grad.shape[1], device=grad.device)
        classes = classes.view([1, -1] + [1] * (grad.dim() - 2))
        return torch.where(classes == t, grad + values, grad)
    rest = t.shape[2:]  # the extra dimensions d1, ..., dk of an (N, C, d1, ..., dk) input
    rank = 1 + len(rest)
    index = [torch.arange(t.shape[0], device=t.device).view([-1] + [1] * len(rest))]
    index.append(t.squeeze(1))
    for j, size in enumerate(rest, start=1):
        shape = [1] * rank
        shape[j] = size
        index.append(torch.arange(size, device=t.device).view(shape))
    return grad.index_put_(tuple(index), values.squeeze(1), accumulate=True)


def _focal_factor(gamma, log_1mp):
    """``(1 - p)^gamma = exp(gamma log(1 - p))``; ``log(1 - p) = -inf`` (``p`` rounds to 1) is
    clamped to the dtype's minimum, as in the reference: a ``gamma`` that rounds to 0 in the
    compute dtype gives 1, not ``0 * -inf = NaN``."""
    return torch.exp(gamma * log_1mp.clamp_min(torch.finfo(log_1mp.dtype).min))


def _p_dfdp(p, log_p, u, big, m, gamma, epsilon):
    """``p f'(p)`` for ``f(p) = -(1 - p)^gamma log p + epsilon (1 - p)``: ``M (gamma p r - 1)
    - epsilon p`` with ``M = (1 - p)^gamma`` (``m``; ``None`` without a focal factor) and
    ``r = log p / (1 - p)``, from ``u = 1 - p`` (exact): where ``p > 1/2`` (``big``)
    ``log p = log1p(-u)``, and ``r = -1`` where ``u`` underflows to 0."""
    if m is None:
        h = torch.full_like(p, -1.0)
    else:
        u_safe = torch.where(u == 0, 1.0, u)
        r_big = torch.where(u == 0, -1.0, torch.log1p(-torch.where(big, u_safe, 0.0)) / u_safe)
        r = torch.where(big, r_big, log_p / u_safe)
        # p log p / (1 - p) -> 0 as p -> 0: a class whose p underflowed to 0 (log p = -inf,
        # a logit more than the format's range below the maximum) gives 0, not 0 * -inf = NaN
        pr = torch.where(p == 0, 0.0, p * r)
        h = m * (gamma * pr - 1.0)
    if epsilon is not None:
        h = h - epsilon * p
    return h
