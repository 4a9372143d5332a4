r"""Vocab-parallel losses: each rank of a process group holds a contiguous slice of the classes.

As in Megatron-LM's vocab-parallel cross entropy, rank ``r`` of ``vocab_group`` passes the
logits of its classes ``[start_r, start_r + C_r)`` (slices in rank order, of any sizes, 0
included); the loss is that of one process on the concatenated logits, identical on every
rank, and each rank's gradient is its slice of the one-process gradient. No rank ever holds
the whole ``(N, C)`` logits.

What each rank passes:

* ``input``: its logit shard, class dimension 1 (0 for an unbatched ``(C_r,)`` input);
* class-index targets: the **global** indices, the same on every rank;
* probability targets, a class ``weight``, a per-class ``alpha``, and for the sigmoid family
  every tensor the input's size (``weight``, ``pos_weight``): the rank's slice, like the
  logits.

The softmax family needs a few statistics per row, each all-reduced once per call (batched
into one tensor per round):

1. MAX: the row maximum ``M`` (and, unless a :class:`VocabLayout` is given, every rank's class
   count, from which each rank knows its ``start`` and the total ``C``);
2. SUM: ``S = sum exp(x - M)`` (so ``lse = M + log S``), the target's shifted logit
   ``z_t = x_t - M`` (from the rank that owns class ``t``, 0 elsewhere), and as the options
   need them: the target's class weight and ``alpha`` from its owner, the sum of the
   shifted logits weighted by the class weights (label smoothing), the total class weight,
   the probability targets' mass ``A = sum a_c`` and ``sum a_c z_c``, the number of
   non-ignored target entries of a probability row, and ``s_below``, the sum of
   ``exp(z)`` over the classes below the maximum (``1 - p`` of the largest class, exact,
   for the focal factor and Poly-1);
3. SUM, for the softmax focal loss and Poly-1 with per-class terms (probability targets or
   label smoothing) only: each row's loss and ``sum_c g_c`` (see
   :func:`crossent.kernels._math.softmax_family`), which need the global ``p_c``.

Cross entropy and, for class indices without label smoothing, the softmax focal loss and
Poly-1 cross entropy are therefore closed forms of row statistics (two all-reduces); the
per-class focal terms take three. Softcapping (elementwise, before everything), a
``z_loss`` (``lse^2`` of a valid row) and per-sample weights (scaling a row) fit this scheme:
each is a function of the shard's logits or of the row statistics above.

The sigmoid family is elementwise: shards are independent, and only the sum and the
denominator of ``"mean"`` are global -- one all-reduce of two numbers for a reduced loss,
none for ``reduction="none"`` (each rank returns the elementwise loss of its shard).

:func:`vocab_closed_form` returns a function with the contract of the closed forms of
:mod:`crossent.kernels._math`, ``fn(logit_shard, target, options, *, mean_denominator,
reduce, need_grad) -> (global sum or per-row loss, denominator or None, gradient of the shard
or None)``, for code that computes the logits chunk by chunk (fused linear + loss);
:func:`run_vocab` is what the public functions run with ``vocab_group=``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from crossent import _validation as V
from crossent._precision import compute_dtype, grad_dtype, output_dtype
from crossent._reduction import distributed_ready, plan_reduction
from crossent.kernels._dispatch import KernelFamily
from crossent.kernels._function import FusedLoss
from crossent.kernels._math import (
    _class_view,
    _finish_rows,
    _focal_factor,
    _p_dfdp,
    _row_scale,
    _z_loss,
    softcap,
)
from crossent.losses._options import KernelOptions, SoftmaxOptions

__all__ = [
    "VocabLayout",
    "check_vocab_call",
    "run_vocab",
    "sigmoid_shard",
    "softmax_shard",
    "vocab_closed_form",
    "vocab_layout",
]

Scalar = float | torch.Tensor
_SPLIT = 4096  # a class count travels as two numbers below this: exact in any float dtype


@dataclass(frozen=True)
class VocabLayout:
    """Where this rank's classes lie: ``[start, start + local)`` of ``total``; ``largest``:
    the most classes a rank holds (what a chunked pass sizes its blocks by, so that every
    rank runs as many). The fields are Python integers (from :func:`vocab_layout`) or 0-dim
    tensors (computed inside a call)."""

    start: int | torch.Tensor
    local: int
    total: int | torch.Tensor
    largest: int | torch.Tensor | None = None


def _rank_and_size(group: Any) -> tuple[int, int]:
    import torch.distributed as dist

    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"Expected `vocab_group` to be a torch.distributed process group (such as "
            f"torch.distributed.new_group(ranks) or torch.distributed.group.WORLD), but got "
            f"{type(group).__name__}."
        )
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if world < 1 or rank < 0:
        # torch returns -1 on a rank outside the group.
        raise ValueError(
            f"Expected `vocab_group` to contain this rank (global rank {dist.get_rank()}), "
            f"but it does not. Call the loss only on the group's ranks, or pass the group of "
            f"the ranks that hold the class slices."
        )
    return rank, world


def _all_reduce(tensor: torch.Tensor, op: str, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op), group=group)
    return tensor


def _size_slots(local: int, rank: int, world: int, like: torch.Tensor) -> torch.Tensor:
    """Every rank's class count as ``(count // 4096, count % 4096)`` at its own slots, zeros
    elsewhere: a MAX (or SUM) over the group gives every count, exact in any float dtype."""
    slots = like.new_zeros(2 * world)
    slots[2 * rank] = local // _SPLIT
    slots[2 * rank + 1] = local % _SPLIT
    return slots


def _layout_from_slots(slots: torch.Tensor, rank: int, local: int) -> VocabLayout:
    sizes = (slots[0::2] * _SPLIT + slots[1::2]).to(torch.long)
    return VocabLayout(
        start=sizes[:rank].sum(), local=local, total=sizes.sum(), largest=sizes.max()
    )


def vocab_layout(group: Any, local_classes: int, device: torch.device | str = "cpu") -> VocabLayout:
    """Every rank's place in the classes, from one all-reduce of the class counts (a
    collective: every rank of ``group`` calls it). For code that calls the closed form of
    :func:`vocab_closed_form` many times with the same layout (row chunks): computed once,
    it saves the counts' slots in each call's first all-reduce and gives the fields as
    Python integers."""
    rank, world = _rank_and_size(group)
    slots = _size_slots(local_classes, rank, world, torch.zeros((), device=device))
    layout = _layout_from_slots(_all_reduce(slots, "SUM", group), rank, local_classes)
    return VocabLayout(int(layout.start), local_classes, int(layout.total), int(layout.largest))


def _reduce_rows(parts: list[torch.Tensor], group: Any) -> list[torch.Tensor]:
    """One SUM all-reduce of several tensors (row statistics and scalars), batched."""
    flat = torch.cat([p.reshape(-1) for p in parts])
    _all_reduce(flat, "SUM", group)
    out, at = [], 0
    for p in parts:
        out.append(flat[at : at + p.numel()].view(p.shape))
        at += p.numel()
    return out


def _at_target(values: torch.Tensor, t_local: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``values`` (``(N, C_r, ...)``, or a ``(1, C_r, 1, ...)`` class vector) at each row's
    target where this rank owns it, else 0; ``(N, 1, ...)``."""
    if values.shape[1] == 0:
        return torch.zeros(own.shape, dtype=values.dtype, device=values.device)
    values = values.expand(*own.shape[:1], values.shape[1], *own.shape[2:])
    return torch.where(own, values.gather(1, t_local), 0.0)


def _add_at_target(grad: torch.Tensor, t_local: torch.Tensor, own, values) -> torch.Tensor:
    """``grad[n, t, ...] += values[n, 0, ...]`` for the targets this rank owns."""
    if grad.shape[1] == 0:
        return grad
    from crossent.kernels._math import _add_at_target as add

    return add(grad, t_local, torch.where(own, values, 0.0))


def softmax_shard(
    input: torch.Tensor,
    target: torch.Tensor,
    options: SoftmaxOptions,
    *,
    group: Any,
    layout: VocabLayout | None = None,
    check_targets: bool = True,
    mean_denominator: Scalar | None,
    reduce: bool,
    need_grad: bool,
):
    r"""Cross entropy, softmax focal loss and Poly-1 cross entropy of a class shard ``(N, C_r,
    ...)`` (class dimension 1), with the contract of
    :func:`crossent.kernels._math.cross_entropy`: returns ``(sum or per-row loss,
    denominator or None, gradient of the shard or None)``, the sum, per-row loss and
    denominator global (the same on every rank of ``group``).

    ``layout``: from :func:`vocab_layout`; ``None``: the class counts travel with the first
    all-reduce. ``check_targets``: check that class indices lie in ``[0, C)`` (on CPU a host
    read, on a GPU a device-side assertion; a caller that checked once for many chunks passes
    ``False``).
    """
    o = options
    probs = target.is_floating_point()
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype)
    dcap = None
    if o.softcap is not None:
        x, dcap = softcap(x, o.softcap)  # elementwise: each rank caps its own logits
    n_local = x.shape[1]
    rows = x.shape[:1] + x.shape[2:]
    w_shape = [1] * x.dim()
    w_shape[1] = n_local

    # Round 1 (MAX): the row maximum, and the layout unless given.
    local_max = x.amax(dim=1) if n_local else x.new_full(rows, -math.inf)
    if layout is None:
        rank, world = _rank_and_size(group)
        buf = torch.cat([local_max.reshape(-1), _size_slots(n_local, rank, world, x)])
        _all_reduce(buf, "MAX", group)
        row_max = buf[: local_max.numel()].view(rows)
        layout = _layout_from_slots(buf[local_max.numel() :], rank, n_local)
    else:
        row_max = _all_reduce(local_max.contiguous(), "MAX", group)
    start = layout.start
    if check_targets and not probs and not _compiling():
        # a CPU target: one host read; on a GPU an assertion on the device (no synchronisation)
        V.check_class_indices(target, layout.total, o.ignore_index)
    # the class count as a number of the compute dtype (s / C in float64 stays float64)
    total = layout.total.to(dtype) if isinstance(layout.total, torch.Tensor) else layout.total

    top = row_max.unsqueeze(1)
    z = x - top  # shifted by the global maximum: z <= 0 on every rank
    ez = torch.exp(z)
    w = _class_view(o.weight, dtype, w_shape)
    al = _class_view(o.alpha, dtype, w_shape)
    smoothing = o.label_smoothing
    plain = o.plain
    per_class = probs or (smoothing is not None and not plain)

    # Round 2 (SUM): the row statistics this call needs.
    parts: dict[str, torch.Tensor] = {"S": ez.sum(dim=1, keepdim=True)}
    valid = t_local = own = None
    if probs:
        if o.ignore_index is not None:
            parts["kept"] = (target != o.ignore_index).sum(dim=1, keepdim=True).to(dtype)
        y = target.to(dtype)
        if smoothing is not None:
            y = y * (1.0 - smoothing) + smoothing / total
        if plain:
            a = y if w is None else w * y
            parts["A"] = a.sum(dim=1, keepdim=True)
            parts["Az"] = torch.where(a == 0, 0.0, a * z).sum(dim=1, keepdim=True)
    else:
        t = target.to(torch.long).unsqueeze(1)
        if o.ignore_index is not None:
            valid = t != o.ignore_index
            t = torch.where(valid, t, 0)
        t_local = t - start
        own = (t_local >= 0) & (t_local < n_local)
        t_local = torch.where(own, t_local, 0)
        if not per_class:
            parts["z_t"] = _at_target(z, t_local, own)
        if w is not None:
            parts["w_t"] = _at_target(w, t_local, own)
        if isinstance(al, torch.Tensor) and al.dim() and not per_class:
            parts["alpha_t"] = _at_target(al, t_local, own)
        if plain and smoothing is not None:
            if w is None:
                parts["sum_z"] = z.sum(dim=1, keepdim=True)
            else:
                parts["sum_wz"] = torch.where(w == 0, 0.0, w * z).sum(dim=1, keepdim=True)
                parts["W"] = w.sum().reshape(1)
    if not plain:
        parts["s_below"] = torch.where(z == 0, 0.0, ez).sum(dim=1, keepdim=True)
    stats = dict(zip(parts, _reduce_rows(list(parts.values()), group), strict=True))
    sum_ez = stats["S"]
    lse = torch.log(sum_ez)  # log-sum-exp of z over every rank's classes

    # the mean's 1 / denominator and the sample weights, in the per-row coefficients
    sc = _row_scale(mean_denominator, o.sample_weight, lse)
    denominator = grad = None
    w_t = None
    if probs:
        if o.ignore_index is not None:
            valid = stats["kept"] > 0  # a row is ignored when every entry of it is
            denominator = valid.sum(dtype=dtype)
    else:
        if w is not None:
            w_t = stats["w_t"]
            if valid is not None:
                w_t = torch.where(valid, w_t, 0.0)
        elif valid is not None:
            w_t = valid.to(dtype)
        if w_t is not None:
            denominator = w_t.sum()

    if plain and probs:
        loss = stats["A"] * lse - stats["Az"]  # sum_c a_c (lse - z_c), both terms >= 0
        coef = stats["A"]
        if o.z_loss is not None:
            term, k = _z_loss(o.z_loss, top + lse, None if valid is None else valid.to(dtype))
            loss = loss + term
            coef = coef + k
        if valid is not None:
            loss = torch.where(valid, loss, 0.0)
        if need_grad:
            grad = ez * (coef * sc / sum_ez) - a * sc
            if valid is not None:
                grad = torch.where(valid, grad, 0.0)
    elif plain:
        nll_coef = torch.ones_like(lse) if w_t is None else w_t
        if smoothing is not None:
            nll_coef = nll_coef * (1.0 - smoothing)
        nll = lse - stats["z_t"]
        if w_t is not None:
            nll = torch.where(nll_coef == 0, 0.0, nll)  # a zero weight at a -inf logit: 0
        loss = nll_coef * nll
        if smoothing is not None:
            eps = smoothing / total
            if valid is not None:
                eps = valid.to(dtype) * eps
            if w is None:
                smooth = total * lse - stats["sum_z"]
                w_sum = total
            else:
                smooth = stats["W"] * lse - stats["sum_wz"]
                w_sum = stats["W"]
            smooth = eps * smooth
            if valid is not None:
                smooth = torch.where(valid, smooth, 0.0)
            loss = loss + smooth
        coef = nll_coef
        if smoothing is not None:
            coef = coef + eps * w_sum
        if o.z_loss is not None:
            term, k = _z_loss(o.z_loss, top + lse, w_t)
            loss = loss + term
            coef = coef + k
        if need_grad:
            grad = ez * (coef * sc / sum_ez)
            if smoothing is not None:
                grad = grad - (eps * sc if w is None else (eps * sc) * w)
            grad = _add_at_target(grad, t_local, own, -(nll_coef * sc))
    elif not per_class:
        loss, grad = _family_at_target(o, stats, ez, top, lse, w_t, al, t_local, own, sc, need_grad)
    else:
        if probs:
            if valid is not None:
                y = torch.where(valid, y, 0.0)
        else:
            onehot = (torch.arange(n_local, device=x.device).view(w_shape) == t_local) & own
            y = onehot.to(dtype) * (1.0 - smoothing) + smoothing / total
            if valid is not None:
                y = torch.where(valid, y, 0.0)
        a = y if w is None else y * w
        if al is not None:
            a = a * al
        c = w_t if not probs else (None if valid is None else valid.to(dtype))
        loss, grad = _family_per_class(o, stats, z, ez, top, lse, a, c, sc, need_grad, group)
    loss, grad = _finish_rows(loss, grad, valid, o.sample_weight, dcap)
    loss = loss.squeeze(1)
    out = loss.sum() if reduce else loss.to(output_dtype(input))
    if mean_denominator is not None:
        out = out / mean_denominator  # the gradient has it already
    return out, denominator, None if grad is None else grad.to(grad_dtype(input.dtype))


def _family_at_target(o, stats, ez, top, lse, w_t, al, t_local, own, sc, need_grad):
    """Focal / Poly-1 for class indices without smoothing: a function of the row statistics
    ``S, z_t, s_below`` (and the target's weight and alpha), as in
    :func:`crossent.kernels._math.softmax_family`."""
    sum_ez, z_t, s_below = stats["S"], stats["z_t"], stats["s_below"]
    coef = w_t
    term = k = None
    if o.z_loss is not None:
        term, k = _z_loss(o.z_loss, top + lse, coef)  # before alpha: the mean's weights
    if al is not None:
        a_t = stats["alpha_t"] if "alpha_t" in stats else al
        coef = a_t if coef is None else coef * a_t
    log_pt = z_t - lse
    p_t = torch.exp(log_pt)
    # S - e^{z_t} sums the other classes exactly to rounding while p_t <= 1/2; above it the
    # target is the unique maximum and the other classes are those below it (s_below)
    big = p_t > 0.5
    s_other = torch.where(big, s_below, sum_ez - torch.exp(z_t))
    u = s_other / sum_ez  # 1 - p_t, exact
    f = -log_pt
    m = None
    if o.gamma is not None:
        m = _focal_factor(o.gamma, torch.log(s_other) - lse)
        f = f * m
    if o.epsilon is not None:
        f = f + o.epsilon * u
    f = _scaled(coef, f)
    if term is not None:
        f = f + term
    grad = None
    if need_grad:
        h = _scaled(coef, _p_dfdp(p_t, log_pt, u, big, m, o.gamma, o.epsilon) * sc)
        # g_k - p_k sum g = h ([k = t] - p_k), and the z-loss's p_k k
        rest = -h if k is None else k * sc - h
        grad = _add_at_target(ez * (rest / sum_ez), t_local, own, h)
    return f, grad


def _scaled(coef: Any, v: torch.Tensor) -> torch.Tensor:
    """``coef * v``, exactly 0 where ``coef`` is 0 (also where ``v`` is infinite)."""
    if isinstance(coef, torch.Tensor):
        return torch.where(coef == 0, 0.0, coef * v)
    if coef is not None:  # a number alpha, no weight and nothing ignored
        return coef * v if coef else torch.zeros_like(v)
    return v


def _family_per_class(o, stats, z, ez, top, lse, a, c, sc, need_grad, group):
    """Focal / Poly-1 with a coefficient per class: the terms need the global ``p_c``, so each
    row's loss and ``sum_c g_c`` are all-reduced once more (round 3)."""
    sum_ez = stats["S"]
    log_p = z - lse
    p = ez / sum_ez
    keep = a != 0
    terms = -log_p
    big = p > 0.5  # only the unique maximum, where z = 0
    u = torch.where(big, stats["s_below"] / sum_ez, 1.0 - p)  # 1 - p, exact
    m = None
    if o.gamma is not None:
        s_below = stats["s_below"]
        L = torch.where(big, torch.log(s_below) - lse, torch.log1p(-torch.where(big, 0.0, p)))
        m = _focal_factor(o.gamma, L)
        terms = terms * m
    if o.epsilon is not None:
        terms = terms + o.epsilon * u
    parts = [torch.where(keep, a * terms, 0.0).sum(dim=1, keepdim=True)]
    if need_grad:
        h = _p_dfdp(p, log_p, u, big, m, o.gamma, o.epsilon)
        g = torch.where(keep, a * (h * sc), 0.0)
        parts.append(g.sum(dim=1, keepdim=True))
    reduced = _reduce_rows(parts, group)
    loss = reduced[0]
    grad = g - p * reduced[1] if need_grad else None
    if o.z_loss is not None:
        # a function of the (global) row statistics: added once, after the all-reduce
        term, k = _z_loss(o.z_loss, top + lse, c)
        loss = loss + term
        if grad is not None:
            grad = grad + p * (k * sc)
    return loss, grad


def sigmoid_shard(
    input: torch.Tensor,
    target: torch.Tensor,
    options: KernelOptions,
    *,
    closed_form: Callable,
    group: Any,
    mean_denominator: Scalar | None,
    reduce: bool,
    need_grad: bool,
):
    """An elementwise (sigmoid-family) loss of a shard: ``closed_form`` on the shard, then,
    for a reduced loss, one SUM all-reduce of (the shard's sum, its count of valid
    elements): returns the global sum and the global count. ``reduce=False``: the shard's
    elementwise loss, no collective, denominator ``None``."""
    out, count, grad = closed_form(
        input, target, options, mean_denominator=None, reduce=reduce, need_grad=need_grad
    )
    if not reduce:
        grad = grad if mean_denominator is None or grad is None else grad / mean_denominator
        return (out if mean_denominator is None else out / mean_denominator), None, grad
    if count is None:
        count = torch.full((), float(input.numel()), dtype=out.dtype, device=out.device)
    # float64 where every backend has it: counts add up exactly (as "global_mean" does)
    wide = torch.float64 if out.device.type in ("cpu", "cuda") else out.dtype
    both = _all_reduce(torch.stack([out.to(wide), count.to(wide)]), "SUM", group)
    total, denominator = both[0].to(out.dtype), both[1].to(out.dtype)
    if mean_denominator is not None:
        total = total / mean_denominator
        grad = None if grad is None else grad * (1.0 / mean_denominator)
    return total, denominator, grad


def vocab_closed_form(
    family: KernelFamily,
    options: KernelOptions,
    group: Any,
    *,
    layout: VocabLayout | None = None,
    check_targets: bool = True,
) -> Callable:
    """The vocab-parallel closed form of ``family`` for ``options``:
    ``fn(logit_shard, target, options, *, mean_denominator, reduce, need_grad) -> (global sum
    or per-row loss, denominator or None, gradient of the shard or None)``, the contract of
    :mod:`crossent.kernels._math` (every rank of ``group`` calls it: it communicates).

    For a softmax family the returned sum, per-row loss and denominator are global; for an
    elementwise family the sum and denominator are, and ``reduce=False`` gives the shard's
    own elementwise loss. ``layout`` and ``check_targets``: see :func:`softmax_shard`."""
    if family.classes:
        return functools.partial(
            softmax_shard, group=group, layout=layout, check_targets=check_targets
        )
    return functools.partial(sigmoid_shard, closed_form=family.closed_form(options), group=group)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_vocab_call(vocab_group: Any, backend: str | None, *tensors: Any) -> None:
    """The checks of a call with ``vocab_group``: an initialised process group this rank
    belongs to, a backend that can run it, and no tensor but the input requiring a gradient."""
    if not distributed_ready():
        raise ValueError(
            "Expected an initialised torch.distributed process group for `vocab_group`, but "
            "torch.distributed is not initialised. Call torch.distributed.init_process_group() "
            "first, or pass vocab_group=None when this process holds every class."
        )
    _rank_and_size(vocab_group)
    if backend is not None:
        name = V.check_backend(backend)
        if name not in ("auto", "fused"):
            raise ValueError(
                f'Expected `backend` to be "auto" or "fused" with `vocab_group`, but got '
                f"{name!r}: the vocab-parallel loss runs the closed form eagerly, with its "
                f"all-reduces between the passes. The reference backend would need every "
                f'class on one rank. Use backend="fused" (or leave it unset).'
            )
    if torch.is_grad_enabled():
        for other in tensors:
            if isinstance(other, torch.Tensor) and other.requires_grad:
                raise ValueError(
                    f"Expected only `input` to require a gradient with `vocab_group`, but a "
                    f"{tuple(other.shape)} target or weight requires one too. The "
                    f"vocab-parallel loss differentiates the logits only: pass it detached."
                )


def run_vocab(
    family: KernelFamily,
    input: torch.Tensor,
    target: torch.Tensor,
    options: KernelOptions,
    reduction: str,
    process_group: Any,
    vocab_group: Any,
) -> torch.Tensor:
    """The loss of a checked call whose ``input`` is this rank's class shard, reduced: the
    vocab-parallel closed form through :class:`~crossent.kernels._function.FusedLoss` (only
    the shard gets a gradient), then :class:`crossent._reduction.Reduction` (over
    ``process_group`` for ``"global_mean"``: the data-parallel group)."""
    known = _known_denominator(family, input, target, options)
    plan = plan_reduction(reduction, process_group, input, known)
    need_grad = input.requires_grad and torch.is_grad_enabled()
    call = dict(mean_denominator=plan.fold, reduce=plan.reduce, need_grad=need_grad)
    fn = vocab_closed_form(family, options, vocab_group)
    if family.classes and input.dim() == 1:  # one sample (C_r,): a batch of one
        from crossent.kernels._dispatch import _unbatched

        fn = functools.partial(_unbatched, fn)
    if need_grad:
        compute = functools.partial(fn, target=target, options=options, **call)
        out, denominator = FusedLoss.apply(input, compute, 1 if family.classes else None, False)
    else:
        out, denominator, _ = fn(input, target, options, **call)
    return plan.finish(out, denominator, _rows(family, input))


def _rows(family: KernelFamily, input: torch.Tensor) -> int:
    """What ``"mean"`` divides by when nothing is ignored or weighted: the samples (rows) of a
    softmax shard, which may hold no class at all; the elementwise family always counts."""
    if family.classes:
        return math.prod(input.shape[:1] + input.shape[2:]) if input.dim() > 1 else 1
    return input.numel()


def _known_denominator(family, input, target, options):
    """The mean's denominator where every rank knows it before the pass: class indices
    (replicated) without ``weight`` -- the rows, or the valid ones. Else ``None``: counted
    in the pass, globally."""
    if not family.classes or target.is_floating_point() or options.weight is not None:
        return None
    if options.ignore_index is None:
        return _rows(family, input)
    ignore = options.ignore_index
    return lambda: (target != ignore).sum()
