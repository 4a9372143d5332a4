"""Hand-written Triton kernels for CUDA tensors (and, under ``TRITON_INTERPRET=1``, CPU ones).

Two kernels and a reduction stage:

* ``_binary_kernel``: the sigmoid family (BCE and focal loss from logits or probabilities) and
  ASL. One program per block of ``BLOCK`` elements: it reads the input and the target once,
  writes the gradient (and the elementwise loss for ``reduction="none"``) once, and stores
  the block's partial sum (and valid count) -- no atomics.
* ``_cross_entropy_kernel``: one program per row (sample, or sample x spatial position):
  an online softmax pass (running max and rescaled sum of exponentials, plus the sums label
  smoothing and probability targets need), then a pass that writes the gradient.
* ``_sum_rows_kernel``: the deterministic second stage: one program per partial-sum row adds
  its values in a fixed order, so a result does not depend on scheduling.

The math is the closed form of :mod:`crossent.kernels._math`; see its docstrings. Scalars
(gamma, alpha, ...) are passed as two float32 numbers ``hi + lo``, so float64 inputs keep
float64 options (Triton passes Python floats as float32), and a new value is not a recompile.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from crossent._reduction import output_dtype

__all__ = ["asymmetric", "cross_entropy", "interpreting", "sigmoid_family"]

LOG_CLAMP = -100.0
EXP_CLAMP = math.exp(LOG_CLAMP)
_ELEMENTWISE_BLOCK = 1024
_SUM_BLOCK = 1024


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _split(value: float | None) -> tuple[float, float]:
    """A float64 number as float32 ``hi + lo`` (exact to about 2**-48 relative)."""
    if value is None:
        return 0.0, 0.0
    hi = float(torch.tensor(value, dtype=torch.float32))
    if not math.isfinite(hi):
        return hi, 0.0
    lo = float(torch.tensor(value - hi, dtype=torch.float32))
    return hi, lo


@triton.jit
def _log1p_small(e):
    # log1p for e in [0, 1] from log alone (Goldberg's trick: u - 1 is exact, and the ratio
    # e / (u - 1) corrects the rounding of u = 1 + e); libdevice.log1p has no interpreter.
    u = 1.0 + e
    d = u - 1.0
    return tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _scalar(hi, lo, CDT: tl.constexpr):
    return tl.cast(hi, CDT) + tl.cast(lo, CDT)


@triton.jit
def _binary_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    pw_ptr,
    loss_ptr,
    grad_ptr,
    part_ptr,
    n,
    n_blocks,
    w_inner,
    w_mid,
    pw_inner,
    pw_mid,
    ign_hi,
    ign_lo,
    keep_hi,
    keep_lo,
    add_hi,
    add_lo,
    a_hi,
    a_lo,
    b_hi,
    b_lo,
    c_hi,
    c_lo,
    eps_hi,
    eps_lo,
    KIND: tl.constexpr,  # 0: logits (BCE / focal), 1: probabilities (BCE / focal), 2: ASL
    FOCAL: tl.constexpr,
    POLY: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    CLIP: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_PW: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    SMOOTH: tl.constexpr,
    REDUCE: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Options a, b, c: focal -> gamma, alpha, 1 - alpha; ASL -> gamma_pos, gamma_neg, clip.
    CDT: tl.constexpr = tl.float64 if F64 else tl.float32
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(CDT)
    y = tl.load(t_ptr + offs, mask=mask, other=0).to(CDT)
    valid = mask
    if HAS_IGNORE:
        valid = valid & (y != _scalar(ign_hi, ign_lo, CDT))
        y = tl.where(valid, y, 0.0)
    if SMOOTH:
        y = y * _scalar(keep_hi, keep_lo, CDT) + _scalar(add_hi, add_lo, CDT)
    y1 = 1.0 - y
    opt_a = _scalar(a_hi, a_lo, CDT)
    opt_b = _scalar(b_hi, b_lo, CDT)
    opt_c = _scalar(c_hi, c_lo, CDT)
    if KIND == 1:
        # Probabilities: log p, log(1 - p) clamped at -100 (torch's BCELoss), zero slope there.
        p_ok = x > 0.0
        lp_raw = tl.log(tl.where(p_ok, x, 1.0))
        lp = tl.maximum(tl.where(p_ok, lp_raw, LOG_CLAMP), LOG_CLAMP)
        om = 1.0 - x
        q_ok = om > 0.0
        lq_raw = tl.log(tl.where(q_ok, om, 1.0))
        lq = tl.maximum(tl.where(q_ok, lq_raw, LOG_CLAMP), LOG_CLAMP)
        p_live = p_ok & (lp_raw >= LOG_CLAMP)
        q_live = q_ok & (lq_raw >= LOG_CLAMP)
    else:
        # Logits: e = exp(-|x|) never overflows; log sigmoid(+-x) = min(+-x, 0) - log1p(e).
        ax = tl.abs(x)
        e = tl.exp(-ax)
        l = _log1p_small(e)
        inv = 1.0 / (1.0 + e)
        pos = x >= 0.0
        lp = tl.minimum(x, 0.0) - l
        lq = tl.minimum(-x, 0.0) - l
        p = tl.where(pos, inv, e * inv)
        q = tl.where(pos, e * inv, inv)
    if KIND == 2:
        e_pos = tl.exp(opt_a * lq)  # q^gamma_pos
        pos_loss = -lp * e_pos
        d_pos = e_pos * (opt_a * p * lp - q)
        if CLIP:
            p_m = tl.maximum(p - opt_c, 0.0)
            shifted = p_m > 0.0
            safe_pm = tl.where(shifted, p_m, 1.0)
            log_1mpm = tl.log(q + opt_c)  # log(1 - p_m) where shifted: q + m, no cancellation
            e_neg = tl.exp(opt_b * tl.log(safe_pm))
            neg_loss = tl.where(shifted, -log_1mpm * e_neg, 0.0)
            d_neg = (p * q) * e_neg * (1.0 / (q + opt_c) - opt_b * log_1mpm / safe_pm)
            d_neg = tl.where(shifted, d_neg, 0.0)
        else:
            e_neg = tl.exp(opt_b * lp)
            neg_loss = -lq * e_neg
            d_neg = e_neg * (p - opt_b * q * lq)
        loss = y * pos_loss + y1 * neg_loss
        grad = y * d_pos + y1 * d_neg
    else:
        wy = y
        if HAS_PW:
            pw_off = (offs // pw_inner) % pw_mid
            wy = y * tl.load(pw_ptr + pw_off, mask=mask, other=0.0).to(CDT)
        loss = -(wy * lp + y1 * lq)
        if KIND == 1:
            dlp = tl.where(p_live, 1.0 / tl.where(p_live, x, 1.0), 0.0)
            dlq = tl.where(q_live, -1.0 / tl.where(q_live, om, 1.0), 0.0)
            grad = -(wy * dlp + y1 * dlq)
        else:
            grad = y1 * p - wy * q
        if FOCAL:
            if KIND == 1:
                s = y * tl.where(q_live, om, EXP_CLAMP) + y1 * tl.where(p_live, x, EXP_CLAMP)
                big_l = tl.log(s)
                d_l = (y1 * p_live.to(CDT) - y * q_live.to(CDT)) / s
            else:
                a = tl.where(pos, y1, y)
                b = tl.where(pos, y, y1)
                d = a + b * e
                edge = a == 0.0  # 1 - p_t = e / (1 + e); e may have underflowed
                big_l = tl.where(edge, -ax, tl.log(tl.where(edge, 1.0, d))) - l
                d_l = tl.where(edge, 1.0, e / tl.where(edge, 1.0, d)) * inv * (y1 - y)
            m = tl.exp(opt_a * big_l)  # (1 - p_t)^gamma from its log
            grad = m * (grad + opt_a * (loss * d_l))  # loss * d_l first: no inf * 0
            loss = m * loss
        if HAS_ALPHA:
            alpha_t = opt_b * y + opt_c * y1
            loss = loss * alpha_t
            grad = grad * alpha_t
        if POLY:
            # Poly-1: + epsilon (1 - p_t)^(gamma + 1), after alpha_t (it weights the focal term)
            epsilon = _scalar(eps_hi, eps_lo, CDT)
            poly = tl.exp((opt_a + 1.0) * big_l)
            loss += epsilon * poly
            grad += epsilon * (opt_a + 1.0) * poly * d_l
    if HAS_W:
        w_off = (offs // w_inner) % w_mid
        w = tl.load(w_ptr + w_off, mask=mask, other=0.0).to(CDT)
        loss = loss * w
        grad = grad * w
    loss = tl.where(valid, loss, 0.0)
    if NEED_GRAD:
        grad = tl.where(valid, grad, 0.0)
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    if REDUCE:
        tl.store(part_ptr + pid, tl.sum(loss, axis=0))
        if HAS_IGNORE:
            tl.store(part_ptr + n_blocks + pid, tl.sum(valid.to(CDT), axis=0))
    else:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sum_rows_kernel(part_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # Row r of a (rows, n) buffer, added in a fixed order: deterministic, no atomics.
    row = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + row * n + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + row, tl.sum(acc, axis=0))


def _sum_rows(parts: torch.Tensor) -> torch.Tensor:
    """Deterministic sum of each row of a 2-D buffer of partial sums."""
    rows, n = parts.shape
    out = torch.empty(rows, dtype=parts.dtype, device=parts.device)
    _sum_rows_kernel[(rows,)](parts, out, n, BLOCK=_SUM_BLOCK)
    return out


def _broadcast_index(tensor: torch.Tensor | None, shape: torch.Size):
    """A weight broadcast against ``shape`` as a flat vector read at ``(i // inner) % mid``.

    That covers a scalar, a full-size weight and any weight that varies along one contiguous
    run of dimensions (``(C,)`` for ``(N, C)``, ``(C, 1, 1)`` for ``(N, C, H, W)``). Any other
    pattern is expanded to the full size (a copy, only for such unusual weights).
    """
    if tensor is None:
        return None, 1, 1
    full = [1] * (len(shape) - tensor.dim()) + list(tensor.shape)
    varying = [d for d, size in enumerate(full) if size != 1 and shape[d] != 1]
    if not varying:
        return tensor.reshape(1).contiguous(), 1, 1
    first, last = varying[0], varying[-1]
    if all(full[d] == shape[d] for d in range(first, last + 1)):
        inner = math.prod(shape[last + 1 :])
        mid = math.prod(shape[first : last + 1])
        return tensor.reshape(-1).contiguous(), inner, mid
    return tensor.expand(shape).reshape(-1).contiguous(), 1, math.prod(shape)


def _target_for_triton(target: torch.Tensor) -> torch.Tensor:
    target = target.contiguous()
    return target.view(torch.uint8) if target.dtype == torch.bool else target


def _ignore_value(target: torch.Tensor, ignore_index: float | None) -> float | None:
    # Compared in the target's dtype, as ``target != ignore_index`` does in the reference.
    if ignore_index is None or not target.is_floating_point():
        return ignore_index
    return float(torch.tensor(ignore_index, dtype=target.dtype))


def _launch_binary(kind, input, target, weight, pos_weight, ignore_index, smoothing, opts, flags):
    reduce, need_grad = flags["REDUCE"], flags["NEED_GRAD"]
    x = input.contiguous()
    t = _target_for_triton(target)
    n = x.numel()
    n_blocks = max(triton.cdiv(n, _ELEMENTWISE_BLOCK), 1)
    cdt = torch.float64 if input.dtype == torch.float64 else torch.float32
    w, w_inner, w_mid = _broadcast_index(weight, input.shape)
    pw, pw_inner, pw_mid = _broadcast_index(pos_weight, input.shape)
    grad = torch.empty_like(x) if need_grad else None
    loss = None if reduce else torch.empty_like(x, dtype=output_dtype(input))
    has_ignore = ignore_index is not None
    parts = torch.empty((2 if has_ignore else 1, n_blocks), dtype=cdt, device=x.device)
    s = smoothing or 0.0
    scalars = [
        *_split(_ignore_value(target, ignore_index)),
        *_split(1.0 - s),
        *_split(0.5 * s),
        *_split(opts[0]),
        *_split(opts[1]),
        *_split(opts[2]),
        *_split(opts[3]),
    ]
    dummy = x  # never read: the flags switch those loads off
    _binary_kernel[(n_blocks,)](
        x,
        t,
        w if w is not None else dummy,
        pw if pw is not None else dummy,
        loss if loss is not None else dummy,
        grad if grad is not None else dummy,
        parts,
        n,
        n_blocks,
        w_inner,
        w_mid,
        pw_inner,
        pw_mid,
        *scalars,
        KIND=kind,
        HAS_W=weight is not None,
        HAS_PW=pos_weight is not None,
        HAS_IGNORE=has_ignore,
        SMOOTH=bool(smoothing),
        F64=cdt == torch.float64,
        BLOCK=_ELEMENTWISE_BLOCK,
        **flags,
    )
    if grad is not None:
        grad = grad.view(input.shape)
    if not reduce:
        return loss.view(input.shape), None, grad
    sums = _sum_rows(parts)
    return sums[0], (sums[1] if has_ignore else None), grad


def sigmoid_family(
    input,
    target,
    weight,
    pos_weight,
    ignore_index,
    smoothing,
    gamma,
    alpha,
    epsilon,
    probs,
    reduce,
    need_grad,
):
    """Triton form of :func:`crossent.kernels._math.sigmoid_family` (same returns)."""
    flags = dict(
        FOCAL=gamma is not None,
        POLY=epsilon is not None,
        HAS_ALPHA=alpha is not None,
        CLIP=False,
        REDUCE=reduce,
        NEED_GRAD=need_grad,
    )
    opts = (gamma, alpha, None if alpha is None else 1.0 - alpha, epsilon)
    kind = 1 if probs else 0
    return _launch_binary(
        kind, input, target, weight, pos_weight, ignore_index, smoothing, opts, flags
    )


def asymmetric(
    input, target, weight, ignore_index, smoothing, gamma_pos, gamma_neg, clip, reduce, need_grad
):
    """Triton form of :func:`crossent.kernels._math.asymmetric` (same returns)."""
    flags = dict(FOCAL=False, POLY=False, HAS_ALPHA=False, CLIP=clip is not None, REDUCE=reduce)
    flags["NEED_GRAD"] = need_grad
    opts = (gamma_pos, gamma_neg, clip, None)
    return _launch_binary(2, input, target, weight, None, ignore_index, smoothing, opts, flags)


@triton.jit
def _cross_entropy_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    grad_ptr,
    row_ptr,
    n_rows,
    n_classes,
    inner,
    ign_hi,
    ign_lo,
    s_hi,
    s_lo,
    PROBS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    SMOOTH: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    CDT: tl.constexpr = tl.float64 if F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    # Row = (sample n, spatial position s); class j sits at n * C * inner + j * inner + s.
    base = (row // inner) * n_classes * inner + row % inner
    smoothing = _scalar(s_hi, s_lo, CDT)
    # Pass 1: online softmax -- running max m and sum d of exp(x - m), rescaled when m grows --
    # and the weight sums the gradient's coefficient needs.
    m = tl.full([], float("-inf"), CDT)
    d = tl.zeros([], CDT)
    acc_w = tl.zeros([BLOCK], CDT)  # sum_j w_j y_j (probabilities) or sum_j w_j (smoothing)
    kept = tl.zeros([BLOCK], CDT)  # probability targets: entries != ignore_index
    for start in range(0, n_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < n_classes
        x = tl.load(x_ptr + base + cols * inner, mask=cmask, other=float("-inf")).to(CDT)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
        if PROBS or SMOOTH:
            wj = _class_weights(
                w_ptr,
                t_ptr,
                base,
                cols,
                cmask,
                inner,
                smoothing,
                n_classes,
                PROBS,
                HAS_W,
                SMOOTH,
                CDT,
            )
            acc_w += wj
        if PROBS and HAS_IGNORE:
            yj = tl.load(t_ptr + base + cols * inner, mask=cmask, other=0.0).to(CDT)
            kept += tl.where(cmask & (yj != _scalar(ign_hi, ign_lo, CDT)), 1.0, 0.0)
    lse_z = tl.log(d)  # log-sum-exp of z = x - m: the loss is lse_z - z_t, no cancellation
    row_valid = tl.full([], 1.0, CDT)
    if PROBS and HAS_IGNORE:
        # a row is ignored when every target entry equals ignore_index
        row_valid = tl.where(tl.sum(kept, axis=0) > 0, 1.0, 0.0).to(CDT)
    sum_w = tl.sum(acc_w, axis=0) * row_valid
    loss = tl.zeros([], CDT)
    denom = row_valid
    nll_coef = tl.zeros([], CDT)
    eps = tl.zeros([], CDT)
    target = tl.full([], -1, tl.int64)
    if PROBS:
        coef = sum_w
    else:
        target = tl.load(t_ptr + row).to(tl.int64)
        valid = tl.full([], 1, tl.int1)
        if HAS_IGNORE:
            valid = target.to(CDT) != _scalar(ign_hi, ign_lo, CDT)
            target = tl.where(valid, target, 0)
        # an index outside [0, C) cannot raise on the device: never read there, give NaN
        in_range = (target >= 0) & (target < n_classes)
        target = tl.where(in_range, target, 0)
        z_t = tl.load(x_ptr + base + target * inner).to(CDT) - m
        w_t = tl.where(valid, 1.0, 0.0).to(CDT)
        if HAS_W:
            w_t = w_t * tl.load(w_ptr + target).to(CDT)
        denom = w_t
        nll_coef = w_t
        if SMOOTH:
            nll_coef = w_t * (1.0 - smoothing)
            eps = tl.where(valid, smoothing / n_classes, 0.0).to(CDT)
        loss = tl.where(nll_coef != 0.0, nll_coef * (lse_z - z_t), 0.0)
        coef = nll_coef + eps * sum_w
    # Pass 2: the terms summed over classes (probability targets, smoothing) and the gradient
    #   d loss / d x_j = p_j coef - [j = t] nll_coef - eps w_j  (index targets)
    #                  = p_j coef - w_j y_j                    (probability targets)
    if PROBS or SMOOTH or NEED_GRAD:
        acc = tl.zeros([BLOCK], CDT)
        for start in range(0, n_classes, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            cmask = cols < n_classes
            offs = base + cols * inner
            z = tl.load(x_ptr + offs, mask=cmask, other=0.0).to(CDT) - m
            if PROBS or SMOOTH:
                wj = _class_weights(
                    w_ptr,
                    t_ptr,
                    base,
                    cols,
                    cmask,
                    inner,
                    smoothing,
                    n_classes,
                    PROBS,
                    HAS_W,
                    SMOOTH,
                    CDT,
                )
                if PROBS:
                    wj = wj * row_valid
                # a zero coefficient contributes 0, also at a -inf logit (no 0 * inf)
                acc += tl.where(cmask & (wj != 0.0), wj * (lse_z - z), 0.0)
            if NEED_GRAD:
                g = tl.exp(z - lse_z) * coef
                if PROBS:
                    g -= wj
                else:
                    g -= tl.where(cols == target, nll_coef, 0.0)
                    if SMOOTH:
                        g -= eps * wj
                    g = tl.where(in_range, g, float("nan"))
                tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=cmask)
        if PROBS:
            loss = tl.sum(acc, axis=0)
        elif SMOOTH:
            loss += tl.where(eps != 0.0, eps * tl.sum(acc, axis=0), 0.0)
    if not PROBS:
        loss = tl.where(in_range, loss, float("nan"))
    tl.store(row_ptr + row, loss)
    tl.store(row_ptr + n_rows + row, denom)


@triton.jit
def _class_weights(
    w_ptr,
    t_ptr,
    base,
    cols,
    cmask,
    inner,
    smoothing,
    n_classes,
    PROBS: tl.constexpr,
    HAS_W: tl.constexpr,
    SMOOTH: tl.constexpr,
    CDT: tl.constexpr,
):
    """w_j y_j (probability targets, smoothed) or w_j; 0 outside the row."""
    wj = tl.where(cmask, 1.0, 0.0).to(CDT)
    if HAS_W:
        wj = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(CDT)
    if PROBS:
        yj = tl.load(t_ptr + base + cols * inner, mask=cmask, other=0.0).to(CDT)
        if SMOOTH:
            yj = yj * (1.0 - smoothing) + smoothing / n_classes
        wj = tl.where(cmask, wj * yj, 0.0)
    return wj


def cross_entropy(input, target, weight, ignore_index, smoothing, probs, reduce, need_grad):
    """Triton form of :func:`crossent.kernels._math.cross_entropy` (same returns)."""
    x = input.contiguous()
    n_classes = x.shape[1]
    inner = math.prod(x.shape[2:])
    n_rows = x.shape[0] * inner
    cdt = torch.float64 if input.dtype == torch.float64 else torch.float32
    t = target.contiguous()
    w = None if weight is None else weight.contiguous()
    grad = torch.empty_like(x) if need_grad else None
    rows = torch.empty((2, n_rows), dtype=cdt, device=x.device)
    block = min(triton.next_power_of_2(max(n_classes, 1)), 4096 if cdt == torch.float32 else 2048)
    if n_rows:
        _cross_entropy_kernel[(n_rows,)](
            x,
            t,
            w if w is not None else x,
            grad if grad is not None else x,
            rows,
            n_rows,
            n_classes,
            inner,
            *_split(ignore_index),
            *_split(smoothing),
            PROBS=probs,
            HAS_W=weight is not None,
            HAS_IGNORE=ignore_index is not None,
            SMOOTH=bool(smoothing),
            NEED_GRAD=need_grad,
            F64=cdt == torch.float64,
            BLOCK=block,
            num_warps=8 if block >= 2048 else 4,  # wide rows: more threads per program
        )
    has_denominator = ignore_index is not None or (weight is not None and not probs)
    if not reduce:
        loss = rows[0].view((x.shape[0], *x.shape[2:])).to(output_dtype(input))
        return loss, None, grad
    sums = _sum_rows(rows) if n_rows else torch.zeros(2, dtype=cdt, device=x.device)
    return sums[0], (sums[1] if has_denominator else None), grad
