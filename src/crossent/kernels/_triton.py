"""Hand-written Triton kernels for CUDA tensors (and, under ``TRITON_INTERPRET=1``, CPU ones).

Two kernels and a reduction stage:

* ``_binary_kernel``: the sigmoid family (BCE and focal loss from logits or probabilities) and
  ASL. One program per block of ``BLOCK`` elements: it reads the input and the target once,
  writes the gradient (and the elementwise loss for ``reduction="none"``) once, and stores
  the block's partial sum (and valid count) -- no atomics.
* ``_cross_entropy_kernel``: the softmax family, one program per row (sample, or sample x
  spatial position): an online softmax pass (running max and rescaled sum of exponentials,
  plus the sums label smoothing and probability targets need), then a pass that writes the
  gradient. Constexpr flags ``FOCAL``, ``POLY`` and ``ALPHA`` turn it into the softmax focal
  loss / Poly-1 cross entropy, ``sum_c a_c f(p_c)`` with ``a_c = y'_c w_c alpha_c`` and
  ``f(p) = -(1 - p)^gamma log p + epsilon (1 - p)``: the online pass also keeps the sum of
  exponentials below the max, so that ``1 - p`` and ``log(1 - p)`` of a dominant class are
  exact (never ``1 -`` a rounded p); the gradient is ``g_k - p_k sum_c g_c`` with
  ``g_c = a_c p_c f'(p_c)``. A class index without smoothing needs the target's term alone
  (two passes); smoothing and probability targets add a pass for the sums over classes. With
  the flags off, cross entropy compiles to the same code as before they existed.
* ``_sum_rows_kernel``: the deterministic second stage: one program per partial-sum row adds
  its values in a fixed order, so a result does not depend on scheduling.
* ``_scale_kernel``: backward's ``grad *= grad_out`` in place, for a reduced loss; it reads
  ``grad_out`` on the device and touches nothing when it is exactly 1 (``loss.backward()``
  with the mean's denominator folded into the forward, ``SCALE``), so backward costs a launch,
  not a pass, and never synchronises with the host.

The launches are registered operators (``torch.library.triton_op``, at the end of this
module): ``crossent::binary_loss``, ``crossent::softmax_loss`` and ``crossent::scale_``, so
that ``torch.compile`` traces a loss on CUDA without a graph break and launches these kernels
from its graph. Nothing in a launch reads a tensor's value on the host.

The math is the closed form of :mod:`crossent.kernels._math`; see its docstrings. Scalars
(gamma, alpha, ...) are passed as two float32 numbers ``hi + lo``, so float64 inputs keep
float64 options (Triton passes Python floats as float32), and a new value is not a recompile
-- except a focal ``gamma`` that is an integer in [0, 8]: it is the constexpr ``GAMMA_INT``,
and ``(1 - p_t)^gamma`` is then ``gamma - 1`` multiplications instead of a log and an exp
(with the log's division, three of the five transcendental-or-division steps per element of
the focal loss from logits; the CPU closed form does the same by squaring).
"""

from __future__ import annotations

import math
import os
import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.language.extra import libdevice

from crossent._precision import EXP_CLAMP as _EXP_CLAMP
from crossent._precision import LOG_CLAMP as _LOG_CLAMP
from crossent._precision import compute_dtype, grad_dtype, output_dtype
from crossent.losses._options import integer_gamma

__all__ = [
    "asymmetric",
    "cross_entropy",
    "interpreting",
    "scale_",
    "sigmoid_family",
    "softmax_family",
]

# Globals a kernel reads must be tl.constexpr: compiled for a GPU, Triton refuses plain ones
# (the interpreter does not; tests/test_cuda.py catches that on a GPU).
LOG_CLAMP = tl.constexpr(_LOG_CLAMP)
EXP_CLAMP = tl.constexpr(_EXP_CLAMP)
# Launch configuration of the elementwise kernel, (elements, warps) per program, chosen with
# benchmarks/sweep_triton.py on an H100: BCE from logits, a few operations per element, moves
# the most bytes with large blocks (93% -> 97% of a copy's bandwidth at 64M elements); the
# focal, probability and ASL forms do more arithmetic per element and want more warps over
# fewer elements each (59% -> 67% for the focal loss).
_ELEMENTWISE_LIGHT = (4096, 16)
_ELEMENTWISE_HEAVY = (1024, 8)
_SUM_BLOCK = 1024
_SCALE_BLOCK = 4096


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Compiled for a GPU, tl.exp and tl.log are the fast approximate instructions (ex2 / lg2.approx
# after a scaling whose rounding grows with |x|): several ulps off in float32 where torch's
# expf / logf are within one or two, so the kernels call libdevice's. Divisions are
# tl.math.div_rn: a plain / is div.full.f32, 2 ulps. The interpreter (numpy, exact to
# rounding) has no libdevice and takes tl.exp / tl.log.
ACCURATE = tl.constexpr(not interpreting())


def _round_f32(value: float) -> float:
    """``value`` rounded to float32 (to nearest, ties to even, +-inf past its range), as
    ``float(torch.tensor(value, dtype=torch.float32))`` -- in plain Python: no tensor is made,
    so nothing in a launch reads a tensor back and torch.compile traces it as constants."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # raised only where the rounded value is infinite
        return math.copysign(math.inf, value)


def _round_to(value: float, dtype: torch.dtype) -> float:
    """``float(torch.tensor(value, dtype=dtype))`` for a floating ``dtype``, in plain Python for
    the dtypes a target has (float64, float32, float16, bfloat16): torch rounds a Python number
    to float32 first, then to the 16-bit format, to nearest with ties to even."""
    if dtype == torch.float64:
        return float(value)
    single = _round_f32(value)
    if dtype == torch.float32 or not math.isfinite(single):
        return single
    if dtype == torch.float16:
        try:
            return struct.unpack("<e", struct.pack("<e", single))[0]
        except OverflowError:
            return math.copysign(math.inf, single)
    if dtype == torch.bfloat16:
        bits = struct.unpack("<I", struct.pack("<f", single))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
        return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]
    return float(torch.tensor(value, dtype=dtype))  # another format: a host-side CPU scalar


def _split(value: float | None) -> tuple[float, float]:
    """A float64 number as float32 ``hi + lo`` (exact to about 2**-48 relative)."""
    if value is None:
        return 0.0, 0.0
    hi = _round_f32(value)
    if not math.isfinite(hi):
        return hi, 0.0
    lo = _round_f32(value - hi)
    return hi, lo


@triton.jit
def _div(a, b):
    # a / b rounded to nearest: div_rn in float32 (a plain / is div.full.f32, 2 ulps); float64
    # division is exact to rounding already
    if b.dtype == tl.float64:
        q = a / b
    else:
        q = tl.math.div_rn(a, b)
    return q


@triton.jit
def _exp(x):
    if ACCURATE:
        y = libdevice.exp(x)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def _log(x):
    if ACCURATE:
        y = libdevice.log(x)
    else:
        y = tl.log(x)
    return y


@triton.jit
def _log1p_small(e):
    # log1p for e in [-1/2, 1]. The interpreter has no libdevice: there from log alone
    # (Goldberg's trick: u - 1 is exact, and the ratio e / (u - 1) corrects the rounding of
    # u = 1 + e).
    if ACCURATE:
        r = libdevice.log1p(e)
    else:
        u = 1.0 + e
        d = u - 1.0
        r = tl.where(d == 0.0, e, tl.log(u) * _div(e, tl.where(d == 0.0, 1.0, d)))
    return r


@triton.jit
def _scalar(hi, lo, CDT: tl.constexpr):
    return tl.cast(hi, CDT) + tl.cast(lo, CDT)


@triton.jit
def _grad_scale(scale_ptr, sc_hi, sc_lo, SCALE: tl.constexpr, CDT: tl.constexpr):
    # The factor the gradient is stored with: 1 / the mean's denominator where it is folded
    # into the pass (SCALE 1: passed as a number, 2: the denominator as a 0-dim tensor on the
    # device, counted from the targets without a host synchronisation), else 1.
    s = tl.full([], 1.0, CDT)
    if SCALE == 1:
        s = _scalar(sc_hi, sc_lo, CDT)
    if SCALE == 2:
        s = _div(1.0, tl.load(scale_ptr).to(CDT))
    return s


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
    scale_ptr,
    sc_hi,
    sc_lo,
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
    SCALE: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
    GAMMA_INT: tl.constexpr = -1,  # the focal gamma when it is an integer in [0, 8], else -1
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
        lp_raw = _log(tl.where(p_ok, x, 1.0))
        lp = tl.maximum(tl.where(p_ok, lp_raw, LOG_CLAMP), LOG_CLAMP)
        om = 1.0 - x
        q_ok = om > 0.0
        lq_raw = _log(tl.where(q_ok, om, 1.0))
        lq = tl.maximum(tl.where(q_ok, lq_raw, LOG_CLAMP), LOG_CLAMP)
        p_live = p_ok & (lp_raw >= LOG_CLAMP)
        q_live = q_ok & (lq_raw >= LOG_CLAMP)
    else:
        # Logits: e = exp(-|x|) never overflows; log sigmoid(+-x) = min(+-x, 0) - log1p(e).
        ax = tl.abs(x)
        e = _exp(-ax)
        l = _log1p_small(e)
        inv = _div(1.0, 1.0 + e)
        pos = x >= 0.0
        lp = tl.minimum(x, 0.0) - l
        lq = tl.minimum(-x, 0.0) - l
        p = tl.where(pos, inv, e * inv)
        q = tl.where(pos, e * inv, inv)
    if KIND == 2:
        e_pos = _exp(opt_a * lq)  # q^gamma_pos
        pos_loss = -lp * e_pos
        d_pos = e_pos * (opt_a * p * lp - q)
        if CLIP:
            p_m = tl.maximum(p - opt_c, 0.0)
            shifted = p_m > 0.0
            safe_pm = tl.where(shifted, p_m, 1.0)
            log_1mpm = _log(q + opt_c)  # log(1 - p_m) where shifted: q + m, no cancellation
            e_neg = _exp(opt_b * _log(safe_pm))
            neg_loss = tl.where(shifted, -log_1mpm * e_neg, 0.0)
            d_neg = _div(1.0, q + opt_c) - _div(opt_b * log_1mpm, safe_pm)
            d_neg = (p * q) * e_neg * d_neg
            d_neg = tl.where(shifted, d_neg, 0.0)
        else:
            e_neg = _exp(opt_b * lp)
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
            dlp = tl.where(p_live, _div(1.0, tl.where(p_live, x, 1.0)), 0.0)
            dlq = tl.where(q_live, _div(-1.0, tl.where(q_live, om, 1.0)), 0.0)
            grad = -(wy * dlp + y1 * dlq)
            if not HAS_PW:
                # = (p - y) / (p (1 - p)) where both logs are live: no cancellation at p ~ y
                both = p_live & q_live
                grad = tl.where(both, _div(x - y, tl.where(both, x * om, 1.0)), grad)
        else:
            # (1 - y) p - w_pos y q over the common denominator 1 + e: one rounding before
            # the difference (p, q = 1 / (1 + e), e / (1 + e) by the sign of x)
            grad = tl.where(pos, y1 - wy * e, y1 * e - wy) * inv
        if FOCAL:
            # s = 1 - p_t, L = log s, and s dL/dx (probabilities: s dL/dp)
            if KIND == 1:
                s = y * tl.where(q_live, om, EXP_CLAMP) + y1 * tl.where(p_live, x, EXP_CLAMP)
                s_dl = y1 * p_live.to(CDT) - y * q_live.to(CDT)
            else:
                a = tl.where(pos, y1, y)
                b = tl.where(pos, y, y1)
                d = a + b * e  # s = d / (1 + e)
                s = d * inv  # exact to rounding unless it underflows (then s^gamma does)
                s_dl = (e * inv * inv) * (y1 - y)  # p q (1 - 2y)
            if GAMMA_INT >= 0:
                # an integer gamma: s^gamma = s * s^(gamma - 1) by multiplication, and
                # s^gamma dL = s^(gamma - 1) (s dL): no log, exp or division per element
                m_1 = tl.full(s.shape, 1.0, CDT)
                for _ in tl.static_range(1, GAMMA_INT):
                    m_1 = m_1 * s
                if GAMMA_INT >= 1:
                    m = m_1 * s
                else:
                    m = m_1
                m_dl = m_1 * s_dl
            else:
                # any gamma >= 0: s^gamma = exp(gamma L)
                if KIND == 1:
                    big_l = _log(s)
                    d_l = _div(s_dl, s)
                else:
                    edge = a == 0.0  # s = e / (1 + e); e may have underflowed: L = -|x| - l
                    big_l = tl.where(edge, -ax, _log(tl.where(edge, 1.0, d))) - l
                    d_l = tl.where(edge, 1.0, _div(e, tl.where(edge, 1.0, d)))
                    d_l = d_l * inv * (y1 - y)
                m = _exp(opt_a * big_l)
                m_dl = m * d_l
            grad = m * grad + opt_a * (loss * m_dl)  # loss * m_dl first: no inf * 0
            loss = m * loss
        if HAS_ALPHA:
            alpha_t = opt_b * y + opt_c * y1
            loss = loss * alpha_t
            grad = grad * alpha_t
        if POLY:
            # Poly-1: + epsilon (1 - p_t)^(gamma + 1), after alpha_t (it weights the focal term)
            epsilon = _scalar(eps_hi, eps_lo, CDT)
            loss += epsilon * (m * s)  # s^(gamma + 1)
            # d s^(gamma + 1) = (gamma + 1) s^gamma (s dL): m * s_dl, right for gamma = 0 too
            # (where m_dl above is not s^(gamma - 1) s dL but only enters times gamma = 0)
            grad += epsilon * (opt_a + 1.0) * m * s_dl
    if HAS_W:
        w_off = (offs // w_inner) % w_mid
        w = tl.load(w_ptr + w_off, mask=mask, other=0.0).to(CDT)
        loss = loss * w
        grad = grad * w
    loss = tl.where(valid, loss, 0.0)
    if NEED_GRAD:
        grad = tl.where(valid, grad, 0.0) * _grad_scale(scale_ptr, sc_hi, sc_lo, SCALE, CDT)
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
    _k(_sum_rows_kernel)[(rows,)](parts, out, n, BLOCK=_SUM_BLOCK)
    return out


@triton.jit
def _scale_kernel(grad_ptr, g_ptr, n, F64: tl.constexpr, BLOCK: tl.constexpr):
    # grad *= g in place, for the 0-dim incoming gradient g of a reduced loss, read on the
    # device. loss.backward() makes g exactly 1 (a mean's denominator is folded into the
    # forward): then no program touches the buffer and backward costs one launch, no pass.
    CDT: tl.constexpr = tl.float64 if F64 else tl.float32
    g = tl.load(g_ptr).to(CDT)
    if g != 1.0:
        step = tl.num_programs(0).to(tl.int64) * BLOCK
        for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, step):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            v = tl.load(grad_ptr + offs, mask=mask).to(CDT)
            tl.store(grad_ptr + offs, (v * g).to(grad_ptr.dtype.element_ty), mask=mask)


def _scale(grad: torch.Tensor, grad_out: torch.Tensor) -> None:
    # the body of crossent::scale_ (see the registration layer at the end of this module)
    n = grad.numel()
    if n:
        programs = triton.cdiv(n, _SCALE_BLOCK)
        if grad.device.type == "cuda":  # a grid-stride loop: a few waves of programs at most
            sms = torch.cuda.get_device_properties(grad.device).multi_processor_count
            programs = min(programs, 8 * sms)
        f64 = torch.float64 in (grad.dtype, grad_out.dtype)
        _k(_scale_kernel)[(programs,)](grad, grad_out, n, F64=f64, BLOCK=_SCALE_BLOCK)


def scale_(grad: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``grad *= grad_out`` in place for a 0-dim ``grad_out``, skipped on the device where it
    is exactly 1 (nothing synchronises). ``grad`` must be contiguous. The op
    ``crossent::scale_``."""
    _run(_scale_op, _scale, grad, grad_out)
    return grad


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
    return _round_to(ignore_index, target.dtype)


def _scale_args(mean_denominator: torch.Tensor | None, mean_count: int, like: torch.Tensor):
    """Kernel arguments ``(scale_ptr, sc_hi, sc_lo)`` and ``SCALE`` for a mean's denominator
    folded into the pass (see ``_grad_scale``): a 0-dim tensor, else a count (0: none). A
    count that is symbolic -- traced by torch.compile with dynamic shapes -- is written into a
    0-dim tensor on the device: it reaches the kernel through memory, so the compiled graph
    does not specialise on the batch size."""
    if isinstance(mean_count, torch.SymInt):
        mean_denominator = torch.full((), mean_count, dtype=torch.float64, device=like.device)
    if mean_denominator is not None:
        return (mean_denominator.reshape(()), 0.0, 0.0), 2
    if mean_count:
        return (like, *_split(1.0 / mean_count)), 1
    return (like, 0.0, 0.0), 0


def _denominator_args(mean_denominator) -> tuple:
    """A launcher's ``mean_denominator`` (``None``, a count or a 0-dim tensor) as the ops'
    ``(mean_denominator: Tensor | None, mean_count: int)``."""
    if mean_denominator is None:
        return None, 0
    if isinstance(mean_denominator, torch.Tensor):
        return mean_denominator, 0
    return None, mean_denominator


def _folded(total: torch.Tensor, mean_denominator) -> torch.Tensor:
    # the sum divided as the reference's mean divides it; the gradient has the factor already
    return total if mean_denominator is None else total / mean_denominator


def _binary_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    mean_denominator: torch.Tensor | None,
    numbers: list[float],
    mean_count: int,
    kind: int,
    gamma_int: int,
    focal: bool,
    poly: bool,
    has_alpha: bool,
    clip: bool,
    has_ignore: bool,
    smooth: bool,
    reduce: bool,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of the op ``crossent::binary_loss``: the elementwise kernel and, for a reduced
    loss, the deterministic sum of its partial sums. ``numbers``: ignore_index, smoothing and
    the options a, b, c, epsilon of ``_binary_kernel`` (0 where off). Returns the per-element
    loss (``reduce`` False) or ``[sum]`` / ``[sum, valid count]`` (``has_ignore``), and the
    gradient (an empty tensor without ``need_grad``)."""
    ignore_index, smoothing, *opts = numbers
    x = input.contiguous()
    t = _target_for_triton(target)
    n = x.numel()
    light = kind == 0 and not (focal or poly)
    block, warps = _ELEMENTWISE_LIGHT if light else _ELEMENTWISE_HEAVY
    n_blocks = max(triton.cdiv(n, block), 1)
    # float64 for float64 inputs and for probabilities (kind 1): see _precision.compute_dtype
    cdt = compute_dtype(input.dtype, kind == 1)
    w, w_inner, w_mid = _broadcast_index(weight, input.shape)
    pw, pw_inner, pw_mid = _broadcast_index(pos_weight, input.shape)
    grad = torch.empty_like(x, dtype=grad_dtype(x.dtype)) if need_grad else None
    loss = None if reduce else torch.empty_like(x, dtype=output_dtype(input))
    parts = torch.empty((2 if has_ignore else 1, n_blocks), dtype=cdt, device=x.device)
    s = smoothing
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
    scale_args, scale_kind = _scale_args(mean_denominator, mean_count, dummy)
    _k(_binary_kernel)[(n_blocks,)](
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
        *scale_args,
        KIND=kind,
        FOCAL=focal,
        POLY=poly,
        HAS_ALPHA=has_alpha,
        CLIP=clip,
        HAS_W=weight is not None,
        HAS_PW=pos_weight is not None,
        HAS_IGNORE=has_ignore,
        SMOOTH=smooth,
        REDUCE=reduce,
        NEED_GRAD=need_grad,
        SCALE=scale_kind,
        F64=cdt == torch.float64,
        BLOCK=block,
        GAMMA_INT=gamma_int,
        num_warps=warps,
    )
    grad = grad.view(input.shape) if grad is not None else _no_grad(input)
    if not reduce:
        return loss.view(input.shape), grad
    return _sum_rows(parts), grad


def _launch_binary(
    kind, input, target, weight, pos_weight, ignore_index, smoothing, opts, mean_den, flags
):
    reduce, need_grad = flags["REDUCE"], flags["NEED_GRAD"]
    has_ignore = ignore_index is not None
    denominator, count = _denominator_args(mean_den)
    out, grad = _run(
        _binary_op,
        _binary_loss,
        input,
        target,
        weight,
        pos_weight,
        denominator,
        [_number(ignore_index), _number(smoothing), *(_number(v) for v in opts)],
        count,
        kind,
        flags["GAMMA_INT"],
        flags["FOCAL"],
        flags["POLY"],
        flags["HAS_ALPHA"],
        flags["CLIP"],
        has_ignore,
        bool(smoothing),
        reduce,
        need_grad,
    )
    grad = grad if need_grad else None
    if not reduce:
        return out, None, grad
    return _folded(out[0], mean_den), (out[1] if has_ignore else None), grad


def sigmoid_family(input, target, options, *, mean_denominator, reduce, need_grad):
    """Triton form of :func:`crossent.kernels._math.sigmoid_family` (same arguments and
    returns)."""
    o = options
    g_int = integer_gamma(o.gamma)
    flags = dict(
        FOCAL=o.gamma is not None,
        POLY=o.epsilon is not None,
        HAS_ALPHA=o.alpha is not None,
        CLIP=False,
        REDUCE=reduce,
        NEED_GRAD=need_grad,
        GAMMA_INT=-1 if g_int is None else g_int,
    )
    scalars = (o.gamma, o.alpha, None if o.alpha is None else 1.0 - o.alpha, o.epsilon)
    kind = 1 if o.probs else 0
    return _launch_binary(
        kind,
        input,
        target,
        o.weight,
        o.pos_weight,
        o.ignore_index,
        o.label_smoothing,
        scalars,
        mean_denominator,
        flags,
    )


def asymmetric(input, target, options, *, mean_denominator, reduce, need_grad):
    """Triton form of :func:`crossent.kernels._math.asymmetric` (same arguments and returns)."""
    o = options
    flags = dict(FOCAL=False, POLY=False, HAS_ALPHA=False, CLIP=o.clip is not None, REDUCE=reduce)
    flags.update(NEED_GRAD=need_grad, GAMMA_INT=-1)
    scalars = (o.gamma_pos, o.gamma_neg, o.clip, None)
    return _launch_binary(
        2,
        input,
        target,
        o.weight,
        None,
        o.ignore_index,
        o.label_smoothing,
        scalars,
        mean_denominator,
        flags,
    )


@triton.jit
def _cross_entropy_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    alpha_ptr,
    sw_ptr,
    grad_ptr,
    row_ptr,
    n_rows,
    n_classes,
    inner,
    ign_hi,
    ign_lo,
    s_hi,
    s_lo,
    gamma_hi,
    gamma_lo,
    eps_hi,
    eps_lo,
    alpha_hi,
    alpha_lo,
    zl_hi,
    zl_lo,
    cap_hi,
    cap_lo,
    scale_ptr,
    sc_hi,
    sc_lo,
    PROBS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    SMOOTH: tl.constexpr,
    FOCAL: tl.constexpr,
    POLY: tl.constexpr,
    ALPHA: tl.constexpr,  # 0: none, 1: one number for every class, 2: a (C,) tensor
    NEED_GRAD: tl.constexpr,
    SCALE: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
    Z_LOSS: tl.constexpr = False,  # + z_loss c lse^2 per sample (PaLM)
    SOFTCAP: tl.constexpr = False,  # logits soft-capped to cap tanh(x / cap) (Gemma 2)
    SAMPLE_W: tl.constexpr = False,  # each sample's loss times sample_weight
):
    CDT: tl.constexpr = tl.float64 if F64 else tl.float32
    # TERMS: the softmax focal loss / Poly-1 / alpha, sum_c a_c f(p_c) (see _terms); else
    # cross entropy, whose code below is unchanged by these flags.
    TERMS: tl.constexpr = FOCAL or POLY or ALPHA != 0
    row = tl.program_id(0).to(tl.int64)
    # Row = (sample n, spatial position s); class j sits at n * C * inner + j * inner + s.
    base = (row // inner) * n_classes * inner + row % inner
    smoothing = _scalar(s_hi, s_lo, CDT)
    cap = _scalar(cap_hi, cap_lo, CDT)
    grad_scale = _grad_scale(scale_ptr, sc_hi, sc_lo, SCALE, CDT)
    v = tl.full([], 1.0, CDT)
    if SAMPLE_W:
        # the sample's weight scales its loss and, through the scale, its whole gradient
        v = tl.load(sw_ptr + row).to(CDT)
        grad_scale = grad_scale * v
    # Pass 1: online softmax -- running max m and sum d of exp(x - m), rescaled when m grows --
    # and the weight sums the gradient's coefficient needs.
    m = tl.full([], float("-inf"), CDT)
    d = tl.zeros([], CDT)
    acc_w = tl.zeros([BLOCK], CDT)  # sum_j w_j y_j (probabilities) or sum_j w_j (smoothing)
    kept = tl.zeros([BLOCK], CDT)  # probability targets: entries != ignore_index
    d_rest = tl.zeros([], CDT)  # TERMS: sum of exp(x - m) over the x below the running max
    n_top = tl.zeros([], CDT)  # TERMS: how many x equal the running max
    for start in range(0, n_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        cmask = cols < n_classes
        x, _ = _logits(x_ptr, base + cols * inner, cmask, float("-inf"), cap, SOFTCAP, CDT)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # the shift of the exponentials: 0 while every logit so far is -inf (exp(-inf - -inf)
        # would be NaN; with a 0 shift those terms are exp(-inf) = 0)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new).to(CDT)
        if TERMS:
            # when the max grows, the entries at the old max join the rest
            grew = m_new > m
            top = x == m_new
            d_rest = (d_rest + tl.where(grew, n_top, 0.0)) * _exp(m - shift)
            d_rest += tl.sum(tl.where(top, 0.0, _exp(x - shift)), axis=0)
            n_top = tl.where(grew, 0.0, n_top) + tl.sum(top.to(CDT), axis=0)
        d = d * _exp(m - shift) + tl.sum(_exp(x - shift), axis=0)
        m = m_new
        if (PROBS or SMOOTH) and not TERMS:
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
    lse_z = _log(d)  # log-sum-exp of z = x - m: the loss is lse_z - z_t, no cancellation
    row_valid = tl.full([], 1.0, CDT)
    if PROBS and HAS_IGNORE:
        # a row is ignored when every target entry equals ignore_index
        row_valid = tl.where(tl.sum(kept, axis=0) > 0, 1.0, 0.0).to(CDT)
    sum_w = tl.sum(acc_w, axis=0) * row_valid
    loss = tl.zeros([], CDT)
    denom = row_valid
    keep_row = row_valid > 0.0
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
        x_t = tl.load(x_ptr + base + target * inner).to(CDT)
        if SOFTCAP:
            tanh_t, _ = _tanh_parts(_div(x_t, cap))
            x_t = cap * tanh_t
        z_t = x_t - m
        keep_row = valid
        w_t = tl.where(valid, 1.0, 0.0).to(CDT)
        if HAS_W:
            w_t = w_t * tl.load(w_ptr + target).to(CDT)
        denom = w_t
        nll_coef = w_t
        if SMOOTH:
            nll_coef = w_t * (1.0 - smoothing)
            eps = tl.where(valid, _div(smoothing, tl.zeros([], CDT) + n_classes), 0.0).to(CDT)
        loss = tl.where(nll_coef != 0.0, nll_coef * (lse_z - z_t), 0.0)
        coef = nll_coef + eps * sum_w
    # PaLM's z-loss, weighted as the sample counts in the mean (denom: w_t, or 1 if valid):
    # the term and its coefficient of p_k in the gradient; exactly 0 for an ignored sample
    z_term = tl.zeros([], CDT)
    z_grad = tl.zeros([], CDT)
    if Z_LOSS:
        z_loss = _scalar(zl_hi, zl_lo, CDT)
        lse = m + lse_z
        z_term = tl.where(denom != 0.0, z_loss * denom * (lse * lse), 0.0)
        z_grad = tl.where(denom != 0.0, 2.0 * z_loss * denom * lse, 0.0)
        coef += z_grad
    if TERMS:
        gamma = _scalar(gamma_hi, gamma_lo, CDT)
        epsilon = _scalar(eps_hi, eps_lo, CDT)
        alpha = _scalar(alpha_hi, alpha_lo, CDT)
        keep = row_valid
        g_t = tl.zeros([], CDT)
        g_rest = tl.zeros([], CDT)  # sum of g_c = a_c p_c f'(p_c) but the dominant class's
        g_top = tl.zeros([], CDT)  # the dominant class's g (0 if none)
        if PROBS or SMOOTH:
            if not PROBS:
                keep = tl.where(valid, 1.0, 0.0).to(CDT)
        else:
            # a class index without smoothing: the target's term alone, no pass for the sums
            a_t = w_t
            if ALPHA == 1:
                a_t = a_t * alpha
            if ALPHA == 2:
                a_t = a_t * tl.load(alpha_ptr + target).to(CDT)
            p_t, top_t = _probability(z_t, lse_z, d)
            f_t, h_t = _terms(z_t, lse_z, p_t, top_t, d, d_rest, gamma, epsilon, FOCAL, POLY)
            # a zero coefficient contributes 0, also at a -inf logit (no 0 * inf)
            loss = tl.where(a_t != 0.0, a_t * f_t, 0.0)
            g_t = tl.where(a_t != 0.0, a_t * h_t, 0.0)
            g_rest = tl.where(top_t, 0.0, g_t)
            g_top = tl.where(top_t, g_t, 0.0)
        # Phase 0, pass 2 (PROBS / SMOOTH: every class has a coefficient a_c): the loss and the
        # g sums. Phase 1, the last pass: d loss / d x_k = g_k - p_k sum_c g_c, for the
        # dominant class g_k (1 - p_k) - p_k g_rest, with 1 - p_k = d_rest / d exact.
        FIRST: tl.constexpr = 0 if PROBS or SMOOTH else 1
        PHASES: tl.constexpr = 2 if NEED_GRAD else 1
        om_top = _div(d_rest, d)
        for phase in tl.static_range(FIRST, PHASES):
            acc = tl.zeros([BLOCK], CDT)
            acc_g = tl.zeros([BLOCK], CDT)
            acc_top = tl.zeros([BLOCK], CDT)
            for start in range(0, n_classes, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                cmask = cols < n_classes
                offs = base + cols * inner
                if PROBS or SMOOTH:
                    p, top, af, g, dcap = _dense_terms(
                        x_ptr,
                        t_ptr,
                        w_ptr,
                        alpha_ptr,
                        base,
                        cols,
                        inner,
                        n_classes,
                        m,
                        lse_z,
                        d,
                        d_rest,
                        target,
                        keep,
                        smoothing,
                        gamma,
                        epsilon,
                        alpha,
                        cap,
                        PROBS,
                        HAS_W,
                        SMOOTH,
                        FOCAL,
                        POLY,
                        ALPHA,
                        SOFTCAP,
                        CDT,
                    )
                    if phase == 0:
                        acc += af
                        acc_g += tl.where(top, 0.0, g)
                        acc_top += tl.where(top, g, 0.0)
                else:
                    z, dcap = _logits(x_ptr, offs, cmask, float("-inf"), cap, SOFTCAP, CDT)
                    z = z - m
                    p, top = _probability(z, lse_z, d)
                    g = tl.where(cols == target, g_t, 0.0)
                if phase == 1:
                    g = tl.where(top, g * om_top - p * g_rest, g - p * (g_rest + g_top))
                    if Z_LOSS:
                        g += p * z_grad
                    if not PROBS:
                        g = tl.where(in_range, g, float("nan"))
                    if SOFTCAP:
                        g = g * dcap
                    g = g * grad_scale
                    tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=cmask)
            if phase == 0:
                loss = tl.sum(acc, axis=0)
                g_rest = tl.sum(acc_g, axis=0)
                g_top = tl.sum(acc_top, axis=0)
    # Cross entropy, pass 2: the terms summed over classes (probability targets, smoothing) and
    # the gradient
    #   d loss / d x_j = p_j coef - [j = t] nll_coef - eps w_j  (index targets)
    #                  = p_j coef - w_j y_j                    (probability targets)
    if (PROBS or SMOOTH or NEED_GRAD) and not TERMS:
        acc = tl.zeros([BLOCK], CDT)
        for start in range(0, n_classes, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            cmask = cols < n_classes
            offs = base + cols * inner
            z, dcap = _logits(x_ptr, offs, cmask, 0.0, cap, SOFTCAP, CDT)
            z = z - m
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
                g = _exp(z - lse_z) * coef
                if PROBS:
                    g -= wj
                else:
                    g -= tl.where(cols == target, nll_coef, 0.0)
                    if SMOOTH:
                        g -= eps * wj
                    g = tl.where(in_range, g, float("nan"))
                if SOFTCAP:
                    g = g * dcap
                g = g * grad_scale
                tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=cmask)
        if PROBS:
            loss = tl.sum(acc, axis=0)
        elif SMOOTH:
            loss += tl.where(eps != 0.0, eps * tl.sum(acc, axis=0), 0.0)
    if Z_LOSS:
        loss += z_term
    if SAMPLE_W:
        loss = tl.where(keep_row, loss * v, 0.0)  # an ignored sample stays exactly 0
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
            yj = yj * (1.0 - smoothing) + _div(smoothing, tl.zeros([], CDT) + n_classes)
        wj = tl.where(cmask, wj * yj, 0.0)
    return wj


@triton.jit
def _dense_terms(
    x_ptr,
    t_ptr,
    w_ptr,
    alpha_ptr,
    base,
    cols,
    inner,
    n_classes,
    m,
    lse_z,
    d,
    d_rest,
    target,
    keep,
    smoothing,
    gamma,
    epsilon,
    alpha,
    cap,
    PROBS: tl.constexpr,
    HAS_W: tl.constexpr,
    SMOOTH: tl.constexpr,
    FOCAL: tl.constexpr,
    POLY: tl.constexpr,
    ALPHA: tl.constexpr,
    SOFTCAP: tl.constexpr,
    CDT: tl.constexpr,
):
    """One block of classes ``cols`` of a row: ``p``, whether each is the dominant class,
    ``a f``, ``a h`` (see :func:`_terms`) with ``a_j = y'_j w_j alpha_j`` (``y'`` the smoothed
    target distribution, 0 outside the row and where ``keep``, the row's validity, is 0), and
    the soft-capping's derivative."""
    cmask = cols < n_classes
    z, dcap = _logits(x_ptr, base + cols * inner, cmask, float("-inf"), cap, SOFTCAP, CDT)
    z = z - m
    a = _class_weights(
        w_ptr, t_ptr, base, cols, cmask, inner, smoothing, n_classes, PROBS, HAS_W, SMOOTH, CDT
    )
    if not PROBS:
        # a class index, smoothed: y'_j = (1 - s) [j = t] + s / C
        a = a * (
            tl.where(cols == target, 1.0 - smoothing, 0.0)
            + _div(smoothing, tl.zeros([], CDT) + n_classes)
        )
    a = a * keep
    if ALPHA == 1:
        a = a * alpha
    if ALPHA == 2:
        a = a * tl.load(alpha_ptr + cols, mask=cmask, other=0.0).to(CDT)
    p, top = _probability(z, lse_z, d)
    f, h = _terms(z, lse_z, p, top, d, d_rest, gamma, epsilon, FOCAL, POLY)
    # a zero coefficient contributes 0, also at a -inf logit (no 0 * inf)
    live = a != 0.0
    return p, top, tl.where(live, a * f, 0.0), tl.where(live, a * h, 0.0), dcap


@triton.jit
def _tanh_parts(u):
    """``tanh(u)`` and its derivative ``1 - tanh^2 = 4 e / (1 + e)^2``, ``e = exp(-2|u|)``:
    never 1 minus a rounded ``tanh^2`` (0 wherever tanh rounds to 1), 0 at ``u = +-inf``."""
    e = _exp(-2.0 * tl.abs(u))
    dt = _div(4.0 * e, (1.0 + e) * (1.0 + e))
    if ACCURATE:
        t = libdevice.tanh(u)
    else:
        # (1 - e) / (1 + e) with 1 - e = -expm1(-2|u|) by Kahan's (e - 1) a / log(e): exact
        # where e is near 1 (small |u|), where e - 1 alone would cancel
        a = -2.0 * tl.abs(u)
        near = (e >= 0.5) & (e != 1.0)
        em1 = (e - 1.0) * _div(a, _log(tl.where(near, e, 0.5)))
        em1 = tl.where(near, em1, tl.where(e == 1.0, a, e - 1.0))
        t = _div(-em1, 1.0 + e)
        t = tl.where(u < 0.0, -t, t)
    return t, dt


@triton.jit
def _logits(x_ptr, offs, mask, other, cap, SOFTCAP: tl.constexpr, CDT: tl.constexpr):
    """A block of logits in the compute dtype, ``other`` outside ``mask``; with ``SOFTCAP``
    soft-capped to ``cap tanh(x / cap)``, and ``dx / d input`` (1 without)."""
    x = tl.load(x_ptr + offs, mask=mask, other=other).to(CDT)
    dcap = tl.zeros_like(x) + 1.0
    if SOFTCAP:
        t, dcap = _tanh_parts(_div(x, cap))
        x = tl.where(mask, cap * t, other)  # the padding stays what the reductions expect
    return x, dcap


@triton.jit
def _probability(z, lse_z, d):
    """p = softmax for z = x - max, and whether the class is the dominant one: the unique
    maximum with p > 1/2 (d = sum exp(z) < 2; a tie at the max makes d >= 2 exactly)."""
    # where, not &: the interpreter cannot broadcast a scalar boolean in &
    return _exp(z - lse_z), tl.where(d < 2.0, z == 0.0, False)


@triton.jit
def _terms(z, lse_z, p, top, d, d_rest, gamma, epsilon, FOCAL: tl.constexpr, POLY: tl.constexpr):
    """Per class f = -(1 - p)^gamma log p + epsilon (1 - p) and h = p f'(p)
    = (1 - p)^gamma (gamma p log p / (1 - p) - 1) - epsilon p.

    1 - p and log(1 - p) of the dominant class come from the sum of the others, d_rest / d
    (never 1 - a rounded p), and its log p from log1p(-(1 - p)); every other class has
    p <= 1/2, where 1 - p and log1p(-p) are exact.
    """
    om = tl.where(top, _div(d_rest, d), 1.0 - p)
    # (the wheres inside keep the branch not taken finite)
    lp = tl.where(top, _log1p_small(-tl.where(top, om, 0.0)), z - lse_z)
    f = -lp
    h = tl.zeros_like(p) - 1.0
    if FOCAL:
        l_top = _log(tl.where(top, d_rest, 1.0)) - lse_z
        l1m = tl.where(top, l_top, _log1p_small(-tl.where(top, 0.0, p)))
        # (1 - p)^gamma from its log; the clamp keeps gamma * log(0) from being 0 * -inf
        mf = _exp(gamma * tl.maximum(l1m, -3.0e38))
        # p log p / (1 - p): -p where 1 - p is 0 (its limit), 0 where p is 0 (no 0 * inf)
        lp_live = tl.where(p > 0.0, lp, 0.0)
        pr = tl.where(om > 0.0, p * _div(lp_live, tl.where(om > 0.0, om, 1.0)), -p)
        f = f * mf
        h = mf * (gamma * pr - 1.0)
    if POLY:
        f += epsilon * om
        h -= epsilon * p
    return f, h


def _row_launch(n_classes: int, cdt: torch.dtype, dense: bool, terms: bool) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of the row kernel: classes per block and warps per program.
    ``dense``: every class has a target coefficient (probabilities, smoothing); ``terms``:
    the focal / Poly-1 / alpha terms."""
    block = triton.next_power_of_2(max(n_classes, 1))
    if cdt == torch.float64:
        cap = 1024 if dense and terms else 2048  # ptxas (sm_90) spills registers beyond these
        block = min(block, cap)
        return block, 8 if block >= min(cap, 2048) else 4
    # float32, measured with benchmarks/sweep_triton.py on an H100: a row of up to 32768
    # classes in one block (one read for the softmax, the gradient from registers and L1) where
    # only the target's coefficient is needed; the dense paths carry more per class and do
    # better with blocks of 16384. Warps grow with the block: 4 up to 1024 classes, 32 from
    # 16384.
    block = min(block, 16384 if dense else 32768)
    return block, {1024: 4, 2048: 8, 4096: 8, 8192: 16}.get(block, 4 if block < 1024 else 32)


def _softmax_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    alpha: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    mean_denominator: torch.Tensor | None,
    numbers: list[float],
    mean_count: int,
    has_ignore: bool,
    alpha_kind: int,
    reduce: bool,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of the op ``crossent::softmax_loss``: the row kernel and, for a reduced loss,
    the deterministic sums of its rows. ``numbers``: ignore_index, label_smoothing, gamma,
    epsilon, a numeric alpha, z_loss and softcap (0 where off); ``alpha_kind`` 0: no alpha,
    1: the number, 2: the tensor ``alpha``. ``sample_weight``: one weight per sample, or
    ``None``. Returns the per-sample loss in ``output_dtype(input)`` (``reduce``
    False) or ``[sum, denominator]``, and the gradient (an empty tensor without
    ``need_grad``)."""
    ignore_index, smoothing, gamma, epsilon, alpha_number, z_loss, softcap = numbers
    probs = target.is_floating_point()
    x = input.contiguous()
    n_classes = x.shape[1]
    inner = math.prod(x.shape[2:])
    n_rows = x.shape[0] * inner
    cdt = compute_dtype(input.dtype)
    t = target.contiguous()
    w = None if weight is None else weight.contiguous()
    if alpha_kind == 2:
        alpha = alpha.reshape(-1).expand(n_classes).contiguous()  # a 0-dim alpha: one per class
    # one weight per row (sample n, position s) at n * inner + s, as the kernel reads it
    sw = None if sample_weight is None else sample_weight.reshape(-1).contiguous()
    grad = torch.empty_like(x, dtype=grad_dtype(x.dtype)) if need_grad else None
    rows = torch.empty((2, n_rows), dtype=cdt, device=x.device)
    terms = bool(gamma or epsilon or alpha_kind)
    # (a traced class count is made concrete here: the block size is a compile-time constant)
    block, num_warps = _row_launch(int(n_classes), cdt, bool(probs or smoothing), terms)
    scale_args, scale_kind = _scale_args(mean_denominator, mean_count, x)
    if n_rows:
        _k(_cross_entropy_kernel)[(n_rows,)](
            x,
            t,
            w if w is not None else x,
            alpha if alpha_kind == 2 else x,
            sw if sw is not None else x,
            grad if grad is not None else x,
            rows,
            n_rows,
            n_classes,
            inner,
            *_split(ignore_index),
            *_split(smoothing),
            *_split(gamma),
            *_split(epsilon),
            *_split(alpha_number if alpha_kind == 1 else None),
            *_split(z_loss or None),
            *_split(softcap or None),
            *scale_args,
            PROBS=probs,
            HAS_W=weight is not None,
            HAS_IGNORE=has_ignore,
            SMOOTH=bool(smoothing),
            FOCAL=bool(gamma),
            POLY=bool(epsilon),
            ALPHA=alpha_kind,
            NEED_GRAD=need_grad,
            SCALE=scale_kind,
            F64=cdt == torch.float64,
            BLOCK=block,
            Z_LOSS=bool(z_loss),
            SOFTCAP=bool(softcap),
            SAMPLE_W=sw is not None,
            num_warps=num_warps,
        )
    grad = grad if grad is not None else _no_grad(input)
    if not reduce:
        return rows[0].view((x.shape[0], *x.shape[2:])).to(output_dtype(input)), grad
    sums = _sum_rows(rows) if n_rows else torch.zeros(2, dtype=cdt, device=x.device)
    return sums, grad


def softmax_family(input, target, options, *, mean_denominator, reduce, need_grad):
    """Triton form of ``crossent.kernels._math.softmax_family``: returns (sum, or per-sample
    loss in ``output_dtype(input)`` when not ``reduce``; denominator or None; gradient
    d(sum of the loss)/d(input) in ``input.dtype``, or None). The op ``crossent::softmax_loss``
    and the mean's division."""
    o = options
    alpha = o.alpha
    alpha_kind = 0 if alpha is None else 2 if isinstance(alpha, torch.Tensor) else 1
    denominator, count = _denominator_args(mean_denominator)
    out, grad = _run(
        _softmax_op,
        _softmax_loss,
        input,
        target,
        o.weight,
        alpha if alpha_kind == 2 else None,
        o.sample_weight,
        denominator,
        [
            _number(o.ignore_index),
            _number(o.label_smoothing),
            _number(o.gamma),
            _number(o.epsilon),
            _number(alpha if alpha_kind == 1 else None),
            _number(o.z_loss),
            _number(o.softcap),
        ],
        count,
        o.ignore_index is not None,
        alpha_kind,
        reduce,
        need_grad,
    )
    grad = grad if need_grad else None
    if not reduce:
        return out, None, grad
    probs = target.is_floating_point()
    has_denominator = o.ignore_index is not None or (o.weight is not None and not probs)
    return _folded(out[0], mean_denominator), (out[1] if has_denominator else None), grad


def cross_entropy(input, target, options, *, mean_denominator, reduce, need_grad):
    """Triton form of :func:`crossent.kernels._math.cross_entropy` (same arguments and
    returns): the softmax kernel with its focal, Poly-1 and alpha terms compiled out."""
    return softmax_family(
        input,
        target,
        options,
        mean_denominator=mean_denominator,
        reduce=reduce,
        need_grad=need_grad,
    )


# --------------------------------------------------------------------------------------------
# The registration layer: each launch as a custom op (torch.library.triton_op)
# --------------------------------------------------------------------------------------------
#
# torch.compile sees ``crossent::binary_loss``, ``crossent::softmax_loss`` and
# ``crossent::scale_`` as ops of the user's graph (no graph break); AOTAutograd decomposes
# each into its Triton kernels (``wrap_triton``), which Inductor launches from the compiled
# graph. The op bodies run on fake tensors too: that is their meta implementation (shapes and
# dtypes, no launch). In eager mode with ordinary tensors the launchers call the bodies
# directly: the dispatcher's custom-op path costs about 25 us a call and changes nothing there.


def _number(value) -> float:
    """An option as an element of an op's ``float[]``: 0.0 where it is off (``None``)."""
    return 0.0 if value is None else float(value)


def _no_grad(input: torch.Tensor) -> torch.Tensor:
    # an op returns a tensor in every output: an empty one where no gradient was asked for
    return input.new_empty((0,), dtype=grad_dtype(input.dtype))


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _traced(args: tuple) -> bool:
    """Whether a launch is seen by a tracer -- torch.compile (dynamo), a dispatch mode (fake
    tensors, make_fx, AOTAutograd's functionalisation) or a tensor subclass: then it goes
    through the registered op."""
    return (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack() > 0
        or any(isinstance(a, torch.Tensor) and type(a) not in _PLAIN for a in args)
    )


def _run(op, body, *args):
    """``op(*args)`` where a tracer must see it, else its body, launched directly."""
    return op(*args) if _traced(args) else body(*args)


def _k(kernel):
    """``kernel`` for a launch: wrapped (``wrap_triton``) while a dispatch mode traces the op's
    body, so the launch becomes a node of the graph (and nothing runs on fake tensors); the
    kernel itself otherwise. Under ``TRITON_INTERPRET=1`` ``wrap_triton`` returns the
    interpreted kernel unchanged: the interpreter runs on real CPU tensors only, so the ops
    cannot be traced there."""
    return wrap_triton(kernel) if torch._C._len_torch_dispatch_stack() > 0 else kernel


_binary_op = triton_op("crossent::binary_loss", _binary_loss, mutates_args=())
_softmax_op = triton_op("crossent::softmax_loss", _softmax_loss, mutates_args=())
_scale_op = triton_op("crossent::scale_", _scale, mutates_args=("grad",))
