"""The chunked pass of a fused linear + loss: a block at a time, never all the logits.

For a block of ``B`` rows ``x_c`` of the ``(N, H)`` input, one step computes

.. code-block:: text

    logits_c = x_c W^T + b                         (B, V), float32 for float16 / bfloat16
    loss_c, g_c = closed_form(logits_c, target_c)  g_c = d loss / d logits_c, same pass
    grad_input[c] = g_c W      grad_W += g_c^T x_c      grad_b += g_c summed over rows

and drops ``logits_c`` and ``g_c`` before the next block. ``closed_form`` is the loss's kernel
family (:mod:`crossent.kernels._math` eagerly or compiled, :mod:`crossent.kernels._triton` on
CUDA): the same code, with the same options, as the loss called on the whole logits.

Memory (the bound): the extra memory of a forward plus backward is

* the gradients of ``input``, ``linear_weight`` and ``linear_bias``, accumulated in the
  compute dtype (float32; float64 for float64) -- the size of the operands themselves, which
  any backward produces -- plus, for float16 / bfloat16 operands outside autocast, one float32
  copy of ``linear_weight`` (the matmuls run in float32);
* one block's working set: the logits block, its gradient and the closed form's temporaries,
  ``k`` tensors of ``B x V`` elements, with ``B = max(1, BLOCK_ELEMENTS // V)`` rows (or the
  caller's ``batch_chunk_size``): ``BLOCK_ELEMENTS`` is 2**23 on CPU (the logits block and
  its gradient: 64 MiB in float32) and 2**25 on GPUs (256 MiB). Where the closed form is
  compiled (``"compiled"``, the CPU default for large blocks), cross entropy writes the
  gradient over the logits (:func:`gradient_in_place`): ``k`` is 1, and the block has twice
  the rows (``2 * BLOCK_ELEMENTS // V``) in the same memory. ``k`` is 2-3 for the
  other compiled closed forms and the Triton kernels (CUDA), about 4 for cross entropy and
  up to about 15 for the focal losses on the eager ``"fused"`` path (and while a block's
  graph is still compiling in the background).

An elementwise (sigmoid) loss over fewer rows than classes is cut the other way
(:func:`block_columns`): blocks of ``C = max(1, BLOCK_ELEMENTS // N)`` classes over every row,

.. code-block:: text

    logits_c = x W_c^T + b_c                       (N, C)
    grad_input += g_c W_c      grad_W[c] = g_c^T x      grad_b[c] = g_c summed over rows

with the same ``k`` tensors of ``N x C`` elements (for half precision a float32 copy of
``input`` instead of ``linear_weight``).

Neither term grows with ``N x V``: the full logits (``N x V x 4`` bytes, 2 GB at
``N = 4096, V = 128k``) and their gradient (as much again) are never held. ``reduction=
"none"`` is the exception the output itself makes for the elementwise (sigmoid) losses: their
unreduced loss is ``(N, V)``.

A mean's denominator known before the pass (class-index targets without class weights, the
element count of the sigmoid losses) is folded into every block, so the stored gradients are
final and backward of ``loss.backward()`` only hands them on; otherwise each block returns its
sum and its denominator, and :meth:`crossent._reduction.Reduction.finish` divides once, outside
the autograd node (``"global_mean"`` all-reduces the denominator there: one collective per call,
so DDP gradients equal those of one process on the whole batch).

Vocab-parallel (classes sharded over ranks) plugs in at ``kernel``: per block, the logits of
the rank's slice of ``linear_weight``, a sharded closed form returning the global loss and the
local logit gradient, and ``grad_input`` all-reduced over the group once after the loop
(``finish_grad_input``). :func:`crossent.linear_cross_entropy` and
:func:`crossent.linear_loss` do this with ``vocab_group=``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from crossent.kernels._function import _is_exactly_one, _keep_graph

__all__ = [
    "BLOCK_ELEMENTS",
    "BLOCK_ELEMENTS_DEVICE",
    "LinearLossFunction",
    "Plan",
    "block_columns",
    "block_rows",
    "gradient_in_place",
]

# The memory budget of one block's logits and their gradient together, in float32 elements:
# 2 x 2**23 elements = 64 MiB on CPU (rows ~ 262 at V = 32000: large enough that the three
# matmuls per block run near full speed), 2 x 2**25 = 256 MiB on a GPU (fewer, larger
# matmuls and launches).
BLOCK_ELEMENTS = 1 << 23
BLOCK_ELEMENTS_DEVICE = 1 << 25


def block_rows(
    n_rows: int,
    n_classes: int,
    device: torch.device,
    batch_chunk_size: int | None,
    in_place: bool = False,
):
    """Rows per block: ``batch_chunk_size`` if given, else as many as keep the block's logits
    and their gradient within twice ``BLOCK_ELEMENTS`` -- one ``(B, V)`` tensor each, or, where
    the kernel writes the gradient over the logits (``in_place``), one for both; at least one
    row."""
    if batch_chunk_size is not None:
        return max(1, min(batch_chunk_size, n_rows))
    budget = BLOCK_ELEMENTS if device.type == "cpu" else BLOCK_ELEMENTS_DEVICE
    if in_place:
        budget *= 2
    return max(1, min(n_rows, budget // max(n_classes, 1)))


def block_columns(
    n_rows: int,
    n_classes: int,
    device: torch.device,
    batch_chunk_size: int | None,
    elementwise: bool,
) -> int | None:
    """Classes per block for an elementwise (sigmoid) loss with fewer rows than classes --
    as many as keep the block's logits and their gradient within twice ``BLOCK_ELEMENTS``
    -- or ``None``: blocks of rows (:func:`block_rows`).

    An elementwise loss needs no row's other classes, so its blocks can be column slices
    ``x W_c^T`` of every row. Which way to cut is a matter of the matmuls: a block of rows
    adds its ``(V, H)`` product into ``grad_W`` (read and written whole per block), a block
    of columns its ``(N, H)`` product into ``grad_input`` and writes its own rows of
    ``grad_W`` once -- the smaller accumulator wins, and every block's matmuls run over all
    ``N`` rows instead of a few hundred (measured on 2 CPU cores at N = 2048, H = 256,
    V = 50000, sigmoid focal: 0.97x the unfused time, against 1.36x with blocks of rows).
    A ``batch_chunk_size`` asks for row blocks; so does a vocab-parallel call (its caller
    does not ask for columns): every rank must run the same number of blocks."""
    if not elementwise or batch_chunk_size is not None or not 0 < n_rows < n_classes:
        return None
    budget = BLOCK_ELEMENTS if device.type == "cpu" else BLOCK_ELEMENTS_DEVICE
    return max(1, min(n_classes, budget // max(n_rows, 1)))


def gradient_in_place(fn: Callable) -> Callable | None:
    """The closed form ``fn`` writing its logit gradient over its ``input`` (the block's logits
    buffer, which the loop does not read again) and returning it as that tensor, if ``fn``
    can (an ``in_place`` keyword: cross entropy); else ``None``. Compiled, its last pass
    stores the gradient straight into the buffer, so a block needs no second ``(B, V)``
    tensor and holds twice the rows in the same memory (larger, faster matmuls). A copy into
    the buffer would not do: the generated code of the sigmoid losses still allocates the
    gradient (measured: 242 MiB instead of 114 for the focal loss at V = 50000). One wrapper
    per closed form (and its signature read once): the compiled graphs are cached per
    function."""
    try:
        return _in_place_wrappers[fn]
    except KeyError:
        pass
    block = None
    if "in_place" in inspect.signature(fn).parameters:

        def block(input, target, options, **call):
            return fn(input, target, options, in_place=True, **call)

        block.__name__ = block.__qualname__ = f"{fn.__name__}_in_place"
    _in_place_wrappers[fn] = block
    return block


_in_place_wrappers: dict[Callable, Callable | None] = {}


@dataclass(frozen=True)
class Plan:
    """One call of the chunked pass: everything but the three differentiable operands.

    Attributes:
        kernel: the closed form, called as ``kernel(logits, target, options, *,
            mean_denominator, reduce, need_grad) -> (sum or loss, denominator, grad)``.
        target: the targets, rows first: ``(N,)`` class indices, ``(N, V)`` probabilities or
            multi-hot targets.
        options: the loss's kernel options for all ``N`` rows (sliced per block).
        rows: rows per block.
        mean_denominator: the folded mean's denominator, or ``None``.
        reduce: sum the loss (``False``: ``reduction="none"``).
        per_row: the unreduced loss is one value per row (softmax family), else ``(N, V)``.
        mm_dtype: the dtype the matmuls run in (the autocast dtype under autocast).
        acc_dtype: the dtype of the logits block and of the gradient accumulators.
        needs: which of input, linear_weight, linear_bias need a gradient.
        finish_grad_input: applied to ``grad_input`` after the loop (vocab-parallel: the
            all-reduce over the group); ``None``: nothing.
        in_place: the kernel writes the gradient over the logits block
            (:func:`gradient_in_place`): no block-sized allocation per block.
        columns: classes per block (:func:`block_columns`): the blocks are slices of the
            classes over every row, not of the rows (``rows`` is then unused); ``None``:
            blocks of rows.
    """

    kernel: Callable
    target: torch.Tensor
    options: Any
    rows: int
    mean_denominator: Any
    reduce: bool
    per_row: bool
    mm_dtype: torch.dtype
    acc_dtype: torch.dtype
    needs: tuple[bool, bool, bool]
    finish_grad_input: Callable | None = None
    in_place: bool = False
    columns: int | None = None

    def run(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        *,
        need_grad: bool,
        grad_out: torch.Tensor | None = None,
    ):
        """The loop. Returns ``(out, denominator, grad_input, grad_weight, grad_bias)``: the
        loss summed over blocks (or concatenated), the summed denominator (``None``: every
        row or element counts once), and the gradients in ``acc_dtype`` (``None`` where not
        needed). ``grad_out`` (``reduction="none"``'s backward) scales each block's logit
        gradient before the matmuls."""
        with _no_autocast(x.device.type):
            if self.columns is not None:
                return self._run_columns(x, w, b, need_grad, grad_out)
            return self._run(x, w, b, need_grad, grad_out)

    def _run(self, x, w, b, need_grad, grad_out):
        n, h = x.shape
        v = w.shape[0]
        mm, acc = self.mm_dtype, self.acc_dtype
        need_x, need_w, need_b = self.needs if need_grad else (False, False, False)
        wm = w if w.dtype == mm else w.to(mm)
        bm = None if b is None else (b if b.dtype == mm else b.to(mm))
        gi = torch.empty((n, h), dtype=acc, device=x.device) if need_x else None
        gw = torch.zeros((v, h), dtype=acc, device=x.device) if need_w else None
        gb = torch.zeros((v,), dtype=acc, device=x.device) if need_b else None
        outs, denominators = [], []
        # one logits buffer for every block: the only block-sized allocation per block is the
        # kernel's gradient, if it does not write it over the buffer (see TRIM_BYTES for what
        # its frees cost on CPU)
        buf = torch.empty((min(self.rows, n), v), dtype=mm, device=x.device)
        trim = not self.in_place and _trims(buf)
        for start in range(0, n, self.rows):
            sl = slice(start, min(start + self.rows, n))
            xc = x[sl] if x.dtype == mm else x[sl].to(mm)
            # the buffer is free again after the block (or holds the gradient, in place)
            out, denominator, g = self._block(
                buf[: sl.stop - start],
                xc,
                wm,
                bm,
                self.target[sl],
                self.options.rows(sl, n, 2),
                need_grad,
            )
            outs.append(out)
            denominators.append(denominator)
            if not need_grad:
                continue
            scale = None
            if grad_out is not None:
                scale = grad_out[sl].unsqueeze(1) if self.per_row else grad_out[sl]
            g, gm = self._block_gradient(g, scale)
            if need_x:
                if gi.dtype == mm:
                    torch.mm(gm, wm, out=gi[sl])
                else:
                    gi[sl] = gm @ wm
            if need_w:
                if gw.dtype == mm:
                    gw.addmm_(gm.t(), xc)
                else:
                    gw += gm.t() @ xc  # each block's product added in float32, not rounded
            if need_b:
                gb += g.sum(0)
            del g, gm
            if trim:
                _trim()
        return self._finish(outs, denominators, 0, x, gi, gw, gb)

    def _run_columns(self, x, w, b, need_grad, grad_out):
        """The loop over blocks of classes (``columns`` of them) of an elementwise loss:
        ``logits_c = x W_c^T + b_c`` over every row, ``grad_input += g_c W_c``,
        ``grad_W[c] = g_c^T x``, ``grad_b[c] = g_c`` summed over rows."""
        n, h = x.shape
        v = w.shape[0]
        mm, acc = self.mm_dtype, self.acc_dtype
        need_x, need_w, need_b = self.needs if need_grad else (False, False, False)
        xm = x if x.dtype == mm else x.to(mm)  # (N, H): the one whole-size conversion
        gi = torch.zeros((n, h), dtype=acc, device=x.device) if need_x else None
        gw = torch.empty((v, h), dtype=acc, device=x.device) if need_w else None
        gb = torch.empty((v,), dtype=acc, device=x.device) if need_b else None
        outs, denominators = [], []
        width = min(self.columns, v)
        # one flat buffer: each block's logits a contiguous (N, k) view of it
        buf = torch.empty((n * width,), dtype=mm, device=x.device)
        trim = _trims(buf)
        for start in range(0, v, width):
            cols = slice(start, min(start + width, v))
            k = cols.stop - start
            wc = w[cols] if w.dtype == mm else w[cols].to(mm)
            bc = None if b is None else (b[cols] if b.dtype == mm else b[cols].to(mm))
            out, denominator, g = self._block(
                buf[: n * k].view(n, k),
                xm,
                wc,
                bc,
                self.target[:, cols],
                self.options.columns(cols, v),
                need_grad,
            )
            outs.append(out)
            denominators.append(denominator)
            if not need_grad:
                continue
            g, gm = self._block_gradient(g, None if grad_out is None else grad_out[:, cols])
            if need_x:
                if gi.dtype == mm:
                    gi.addmm_(gm, wc)
                else:
                    gi += gm @ wc  # each block's product added in float32, not rounded
            if need_w:
                if gw.dtype == mm:
                    torch.mm(gm.t(), xm, out=gw[cols])
                else:
                    gw[cols] = gm.t() @ xm
            if need_b:
                torch.sum(g, 0, out=gb[cols])
            del g, gm
            if trim:
                _trim()
        return self._finish(outs, denominators, 1, x, gi, gw, gb)

    def _block(self, logits, xm, wm, bm, target, options, need_grad):
        """One block's closed form: ``logits = xm wm^T + bm`` computed into ``logits`` (a view
        of the loop's buffer), in ``acc_dtype`` for the loss (under autocast the loss runs in
        float32, as torch's losses do), then the kernel's ``(out, denominator, grad)``."""
        if bm is None:
            torch.mm(xm, wm.t(), out=logits)
        else:
            torch.addmm(bm, xm, wm.t(), out=logits)
        if logits.dtype != self.acc_dtype:
            logits = logits.to(self.acc_dtype)
        return self.kernel(
            logits,
            target,
            options,
            mean_denominator=self.mean_denominator,
            reduce=self.reduce,
            need_grad=need_grad,
        )

    def _block_gradient(self, g, scale):
        """A block's logit gradient times ``scale`` (the incoming gradient's slice, for
        ``reduction="none"``; ``None``: 1), in ``acc_dtype`` and in ``mm_dtype``: ``(g, gm)``."""
        if scale is not None:
            g = g * scale.to(g.dtype)
        if g.dtype != self.acc_dtype:
            g = g.to(self.acc_dtype)
        return g, (g if g.dtype == self.mm_dtype else g.to(self.mm_dtype))

    def _finish(self, outs, denominators, dim, x, gi, gw, gb):
        """The loss summed over the blocks (or the unreduced blocks joined along ``dim``), the
        summed denominator, and the gradients (``finish_grad_input`` applied)."""
        if self.reduce:
            out = outs[0] if len(outs) == 1 else torch.stack(outs).sum()
        elif outs:
            out = torch.cat(outs, dim)
        else:
            out = torch.empty(0, dtype=self.acc_dtype, device=x.device)
        denominator = None
        if denominators and denominators[0] is not None:
            denominator = denominators[0] if len(outs) == 1 else torch.stack(denominators).sum()
        if gi is not None and self.finish_grad_input is not None:
            gi = self.finish_grad_input(gi)
        return out, denominator, gi, gw, gb


# On CPU, a block's gradient (freed after each block) is a heap allocation just below glibc's
# mmap ceiling (32 MiB): small allocations in between split the freed chunk, the next block's
# gradient no longer fits it, and the heap grows by a block per block or two -- resident
# memory the process keeps (measured: 470 MiB instead of 150 for 13 blocks of 33 MB).
# ``malloc_trim(0)`` after each block of at least TRIM_BYTES returns those pages (tens of
# microseconds; the block's matmuls take tens of milliseconds or more).
TRIM_BYTES = 1 << 24


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _trims(buf: torch.Tensor) -> bool:
    """Whether the loop calls :func:`_trim` after each block: on CPU, for blocks of at least
    ``TRIM_BYTES`` (outside a trace)."""
    return (
        buf.device.type == "cpu"
        and buf.numel() * buf.element_size() >= TRIM_BYTES
        and not torch.compiler.is_compiling()
    )


def _trim() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _no_autocast(device_type: str):
    """Autocast off inside the loop: the plan says which dtype each matmul runs in."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class LinearLossFunction(torch.autograd.Function):
    """``out, denominator = LinearLossFunction.apply(x, w, b, forward, backward, dtypes)``.

    ``forward(x, w, b)`` is :meth:`Plan.run` with ``need_grad`` set: for a reduced loss it
    returns the gradients too, which are saved and scaled by the incoming (scalar) gradient in
    backward -- not at all for ``loss.backward()`` on a folded mean, where they are final.
    ``backward`` is ``None`` then; for ``reduction="none"`` the forward computes the loss only
    and ``backward(x, w, b, grad_out)`` runs the loop again with the incoming gradient (the
    per-row or per-element scale cannot be applied to a gradient that was summed already).
    ``dtypes``: the dtypes of x, w, b, which their gradients are returned in.
    """

    @staticmethod
    def forward(ctx, x, w, b, forward, backward, dtypes):
        out, denominator, gi, gw, gb = forward(x, w, b)
        ctx.dtypes = dtypes
        ctx.recompute = backward
        ctx.has_bias = b is not None
        if backward is None:
            ctx.has = (gi is not None, gw is not None, gb is not None)
            ctx.save_for_backward(*(t for t in (gi, gw, gb) if t is not None))
        else:
            ctx.save_for_backward(x, w, b)
        if denominator is not None:
            ctx.mark_non_differentiable(denominator)
        return out, denominator

    @staticmethod
    def backward(ctx, grad_out, _grad_denominator):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            raise RuntimeError(
                "crossent's fused linear + loss computes first derivatives only, but backward "
                "was called with create_graph=True. For higher-order gradients compute the "
                'loss with backend="reference".'
            )
        if ctx.recompute is not None:
            x, w, b = ctx.saved_tensors
            _, _, gi, gw, gb = ctx.recompute(x, w, b, grad_out)
            grads = [gi, gw, gb]
        else:
            saved = iter(ctx.saved_tensors)
            grads = [next(saved) if has else None for has in ctx.has]
            keep = torch.compiler.is_compiling() or _keep_graph()
            one = _is_exactly_one(grad_out)
            for i, g in enumerate(grads):
                if g is None:
                    continue
                if one:
                    # a kept graph must find its buffers intact: hand on a copy
                    grads[i] = g.clone() if keep and g.dtype == ctx.dtypes[i] else g
                elif keep:
                    grads[i] = g * grad_out
                else:
                    grads[i] = g.mul_(grad_out)  # the saved buffer, reused
        out = []
        for g, dtype in zip(grads, ctx.dtypes, strict=True):
            out.append(None if g is None or dtype is None else g.to(dtype))
        if not ctx.has_bias:
            out[2] = None
        return out[0], out[1], out[2], None, None, None


def run_plan(
    plan: Plan, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out, denominator)`` of the plan, through :class:`LinearLossFunction` when a gradient
    is needed."""
    need_grad = any(plan.needs) and torch.is_grad_enabled()
    if not need_grad:
        out, denominator, *_ = plan.run(x, w, b, need_grad=False)
        return out, denominator
    dtypes = (x.dtype, w.dtype, None if b is None else b.dtype)
    if plan.reduce:
        forward = functools.partial(plan.run, need_grad=True)
        backward = None
    else:
        forward = functools.partial(plan.run, need_grad=False)
        backward = functools.partial(_recompute, plan)
    return LinearLossFunction.apply(x, w, b, forward, backward, dtypes)


def _recompute(plan: Plan, x, w, b, grad_out):
    return plan.run(x, w, b, need_grad=True, grad_out=grad_out)
