"""Which backend computes a loss, and the calls into each (see :mod:`crossent.kernels`)."""

from __future__ import annotations

import functools
import importlib.util
import os
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch

from crossent import _validation as V
from crossent._reduction import (
    distributed_ready,
    output_dtype,
    recording_denominators,
    reduce_sum,
    safe_denominator,
)
from crossent.kernels import _math
from crossent.kernels._function import FusedLoss

__all__ = [
    "COMPILE_MIN_NUMEL",
    "ENV_VAR",
    "asymmetric_loss",
    "compile_available",
    "cross_entropy_loss",
    "select_backend",
    "sigmoid_family_loss",
    "triton_available",
]

ENV_VAR = "CROSSENT_BACKEND"
# "auto" compiles on CPU from this many input elements on: below it, the eager closed form is
# within microseconds of the compiled one and a first call never pays a compile (~25 s).
COMPILE_MIN_NUMEL = 1 << 16

_compile_error: BaseException | None = None
_triton_error: BaseException | None = None
_compiled: dict[tuple, Callable] = {}


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def compile_available() -> bool:
    """Whether ``torch.compile`` has worked so far (it is disabled after its first failure)."""
    return _compile_error is None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(backend: str | None, input: torch.Tensor, *others: Any) -> str:
    """The backend that computes this call: ``"reference"``, ``"fused"``, ``"compiled"`` or
    ``"triton"``. ``backend`` is the caller's keyword (``None``: the environment variable
    ``CROSSENT_BACKEND``, else ``"auto"``); ``others`` are the call's other tensors (targets,
    weights): the fused paths differentiate only ``input``, so if one of them requires a
    gradient the call goes to the reference path (``"auto"``) or is refused (explicit)."""
    if backend is None:
        name = V.check_backend(os.environ.get(ENV_VAR) or "auto", name=ENV_VAR)
    else:
        name = V.check_backend(backend)
    if name == "reference":
        return name
    if input.numel() == 0 and name == "auto":
        return "reference"  # nothing to fuse; the reference handles every empty shape
    if torch.is_grad_enabled():
        for other in others:
            if isinstance(other, torch.Tensor) and other.requires_grad:
                if name == "auto":
                    return "reference"
                raise ValueError(
                    f"Expected only `input` to require a gradient with backend={name!r}, but "
                    f"a {tuple(other.shape)} target or weight requires one too. The fused "
                    f'kernels differentiate the input only: use backend="reference" (or '
                    f'"auto", which picks it).'
                )
    if torch.compiler.is_compiling():
        # Inside a user's torch.compile: the closed form is traced into their graph.
        return "fused"
    if name == "triton":
        if not triton_available():
            raise ValueError(
                'Expected an importable `triton` package for backend="triton", but it is not '
                'installed: `pip install triton`, or use backend="compiled" / "fused".'
            )
        if input.device.type != "cuda" and not (input.device.type == "cpu" and _interpreting()):
            raise ValueError(
                f'Expected CUDA tensors for backend="triton", but `input` is on '
                f'{input.device}. Use "compiled" or "fused" (or TRITON_INTERPRET=1 to run '
                f"the kernels in Triton's CPU interpreter, for testing)."
            )
        if input.dtype == torch.bfloat16 and _interpreting():
            raise TypeError(
                "Expected `input` not to be bfloat16 under TRITON_INTERPRET=1: Triton's "
                "interpreter has no bfloat16. Use float16 or float32 there."
            )
        return name
    if name == "auto":
        if input.device.type == "cuda":
            return "triton" if triton_available() and _triton_error is None else "fused"
        if input.device.type == "cpu" and input.numel() >= COMPILE_MIN_NUMEL:
            return "compiled" if compile_available() else "fused"
        return "fused"
    return name


# --------------------------------------------------------------------------------------------
# Running a closed form eagerly, compiled, or as a Triton kernel
# --------------------------------------------------------------------------------------------


def _structure(args: tuple) -> tuple:
    """What of a call ``(input, target, *options)`` torch.compile specialises a graph on, as
    far as it varies between loss configurations: the input's dtype and rank, the target's
    dtype, which options are ``None``, and the flags (about 2 us: this runs on every call)."""
    x = args[0]
    options = [a if a is None or a.__class__ is bool else 0 for a in args[2:]]
    return (x.dtype, x.dim(), args[1].dtype, *options)


def _get_compiled(fn: Callable, args: tuple) -> Callable:
    """The compiled ``fn`` for calls shaped like ``args``: one per structure of the call.

    torch.compile keeps a graph per combination of what is structural in a call (which
    options are given, the reduction, whether a gradient is needed, the dtype) and caches them
    on the function's code object, with dynamo's limit of 8 per code object, process-wide:
    five loss configurations with and without a gradient reached it, and every later call
    then ran eagerly. So each structure compiles a copy of ``fn`` with a code object of its
    own; its cache holds that structure's graphs alone (a new batch size reuses them:
    ``dynamic=True``; a new gamma or alpha too: numeric options are 0-dim tensor inputs)."""
    key = (fn, *_structure(args))
    compiled = _compiled.get(key)
    if compiled is None:
        clone = types.FunctionType(
            fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        clone.__kwdefaults__ = fn.__kwdefaults__
        clone.__qualname__ = fn.__qualname__
        compiled = torch.compile(clone, dynamic=True, fullgraph=True)
        _compiled[key] = compiled
    return compiled


def _run_compiled(fn: Callable, flat: bool, input: torch.Tensor, target: torch.Tensor, *args):
    """``fn(input, target, *args)`` through torch.compile; flattened to 1-D when ``flat`` (one
    graph for every input rank). If compilation fails (no C++ compiler, an unsupported
    platform) the same closed form runs eagerly and compilation is not tried again."""
    global _compile_error
    shape = input.shape
    if flat:
        input, target = input.reshape(-1), target.reshape(-1)
    # detach(): a view's detached alias has no `_base`, so dynamo does not guard on the layout
    # of the tensor it was sliced from (a new base shape would otherwise recompile).
    input, target = input.detach(), target.detach()
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    if _compile_error is None:
        try:
            call = (input, target, *args)
            out, denominator, grad = _get_compiled(fn, call)(*call)
        except Exception as exc:
            out, denominator, grad = fn(input, target, *args)  # raises if the inputs are at fault
            _compile_error = exc
            warnings.warn(
                f"crossent: torch.compile failed ({type(exc).__name__}: {exc}); the fused "
                f"kernels run eagerly from now on.",
                RuntimeWarning,
                stacklevel=2,
            )
    else:
        out, denominator, grad = fn(input, target, *args)
    if flat:
        out = out.view(shape) if out.dim() else out
        grad = None if grad is None else grad.view(shape)
    return out, denominator, grad


def _scalar(value: Any, dtype: torch.dtype, device: torch.device) -> Any:
    if value is None:
        return None
    return _cached_scalar(value, dtype, device)


@functools.lru_cache(maxsize=512)
def _cached_scalar(value: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Options repeat from call to call; the kernels only read these 0-dim tensors.
    return torch.full((), value, dtype=dtype, device=device)


def _option(value: Any, path: str, input: torch.Tensor) -> Any:
    """A numeric option as the closed form takes it: as is when eager, a 0-dim tensor in the
    compute dtype when compiled (a new value is then an input, not a recompile)."""
    if value is None or path != "compiled":
        return value
    dtype = _math.compute_dtype(input.dtype)
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    return _scalar(value, dtype, input.device)


def _run(
    path: str,
    fn: Callable,
    input: torch.Tensor,
    args: tuple,
    *,
    reduction: str,
    process_group: Any,
    default_denominator: int,
    class_dim: int | None = None,
    flat: bool = False,
    unbatched: bool = False,
    sliceable: tuple[int, ...] = (),
    mean_denominator: Any = None,
) -> torch.Tensor:
    """Run ``fn(input, *args, [mean_denominator,] reduce, need_grad)`` ->
    ``(out, denominator, grad)`` on ``path`` and reduce.

    A ``mean_denominator`` known in advance (see :func:`_mean_denominator`) is folded into the
    closed form (and the Triton kernels), which then returns the mean itself.
    """
    V.check_process_group(process_group, reduction)
    folded = mean_denominator is not None
    need_grad = input.requires_grad and torch.is_grad_enabled()
    if path != "triton":
        mean_denominator = _option(mean_denominator, path, input)
    args = (*args, mean_denominator, reduction != "none", need_grad)
    if path == "compiled":
        fn = functools.partial(_run_compiled, fn, flat)
    elif path == "fused" and not torch.compiler.is_compiling():
        chunk = _EAGER_CHUNK if input.device.type == "cpu" else _EAGER_CHUNK_DEVICE
        if input.numel() > chunk and input.dim() and not unbatched:
            fn = functools.partial(_chunked, fn, sliceable, chunk, flat)
    if unbatched:
        fn = functools.partial(_unbatched, fn)
    if need_grad:
        out, denominator = FusedLoss.apply(input, fn, args, class_dim, path == "triton")
    else:
        out, denominator, _ = fn(input, *args)
    if reduction == "none":
        return out
    if folded:
        # the kernel already divided by the mean's denominator
        return out.to(output_dtype(input))
    if denominator is None:
        denominator = default_denominator
    return reduce_sum(out, reduction, denominator=denominator, process_group=process_group).to(
        output_dtype(input)
    )


# The eager closed form makes a few dozen temporaries the size of what it is given; on a large
# input it runs over slices of this many elements (rows of dimension 0), so they stay small
# (and in cache) and the extra memory is the gradient buffer alone.
_EAGER_CHUNK = 1 << 16
_EAGER_CHUNK_DEVICE = 1 << 22  # on a GPU each slice costs kernel launches: fewer, larger ones


def _chunked(
    fn: Callable,
    sliceable: tuple[int, ...],
    chunk: int,
    flat: bool,
    input: torch.Tensor,
    target: torch.Tensor,
    *args,
):
    """``fn`` over slices of dimension 0 of ``input`` and ``target`` (and of the ``args`` at
    ``sliceable`` that vary along it), the gradient written slice by slice into one buffer."""
    shape = input.shape
    if flat:
        input, target = input.reshape(-1), target.reshape(-1)
    reduce, need_grad = args[-2], args[-1]
    rows = input.shape[0]
    step = max(1, chunk // max(1, input[:1].numel()))
    grad = torch.empty_like(input, dtype=_math.grad_dtype(input.dtype)) if need_grad else None
    outs, denominators = [], []
    for start in range(0, rows, step):
        rows_slice = slice(start, start + step)
        sliced = list(args)
        for i in sliceable:
            w = sliced[i]
            if w is not None and w.dim() == input.dim() and w.shape[0] == rows and rows > 1:
                sliced[i] = w[rows_slice]
        out, denominator, g = fn(input[rows_slice], target[rows_slice], *sliced)
        if grad is not None:
            grad[rows_slice] = g
        outs.append(out)
        denominators.append(denominator)
    out = torch.stack(outs).sum() if reduce else torch.cat(outs)
    denominator = None if denominators[0] is None else torch.stack(denominators).sum()
    if flat:
        out = out if reduce else out.view(shape)
        grad = None if grad is None else grad.view(shape)
    return out, denominator, grad


def _unbatched(fn: Callable, input: torch.Tensor, target: torch.Tensor, *args):
    """A single sample of size ``(C,)`` (target ``()`` or ``(C,)``) as a batch of one."""
    out, denominator, grad = fn(input.unsqueeze(0), target.unsqueeze(0), *args)
    out = out.squeeze(0) if out.dim() else out
    return out, denominator, None if grad is None else grad.squeeze(0)


def _mean_denominator(input: torch.Tensor, reduction: str, denominator: Any) -> Any:
    """The mean's denominator when a kernel can fold the mean into its pass, else ``None``.

    Backward can then see that its incoming gradient is exactly 1 (``loss.backward()``) and
    hand the saved gradient on untouched -- if the forward already divided by the mean's
    denominator, known before the pass (``denominator``: a number, or a function that counts
    it from the targets as a 0-dim tensor, called only when the mean is folded). On CPU
    backward reads that gradient; on a GPU the Triton scale kernel reads it on the device (no
    synchronisation) and skips the pass.
    """
    if reduction == "global_mean" and not distributed_ready():
        reduction = "mean"  # outside a process group "global_mean" is "mean", to the last bit
    if reduction != "mean" or denominator is None:
        return None
    if recording_denominators():
        return None  # GradientAccumulator: reduce_sum must see the sum and its denominator
    if callable(denominator):
        denominator = denominator()
    if isinstance(denominator, torch.Tensor):
        return safe_denominator(denominator.to(_math.compute_dtype(input.dtype)))
    return denominator or None


def _binary_count(input: torch.Tensor, target: torch.Tensor, ignore_index: float | None) -> Any:
    """The binary family's ``"mean"`` denominator where it is known before the pass (see
    :func:`_mean_denominator`): the element count, or -- for float16 with ``ignore_index`` --
    the valid targets, counted first (one more read of the targets). float16 cannot hold every
    unscaled gradient (``-w y / p`` passes 65504 at ``p ~ 3e-5``) that the mean brings back
    into range; folded in, the mean scales the gradient before it is rounded. Else ``None``:
    counted in the pass itself."""
    if ignore_index is None:
        return input.numel()
    if input.dtype == torch.float16:
        return lambda: (target != ignore_index).sum()
    return None


def _flat_ok(input: torch.Tensor, *weights: torch.Tensor | None) -> bool:
    return input.is_contiguous() and all(w is None for w in weights)


# --------------------------------------------------------------------------------------------
# Entry points, called by crossent.functional after validation
# --------------------------------------------------------------------------------------------


def _triton_fallback(entry: Callable) -> Callable:
    """If a Triton kernel cannot be built or launched (a GPU or driver Triton does not
    support), run the eager closed form instead, warn once, and stop choosing Triton."""

    @functools.wraps(entry)
    def wrapper(path: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        global _triton_error
        if path != "triton" or _interpreting():
            return entry(path, *args, **kwargs)
        try:
            return entry(path, *args, **kwargs)
        except Exception as exc:
            if _triton_error is None:
                warnings.warn(
                    f"crossent: a Triton kernel failed ({type(exc).__name__}: {exc}); the "
                    f"fused kernels run eagerly on this device from now on.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _triton_error = exc
            return entry("fused", *args, **kwargs)

    return wrapper


@_triton_fallback
def sigmoid_family_loss(
    path: str,
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    probs: bool,
    gamma: float | None,
    alpha: float | None,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    label_smoothing: float,
    ignore_index: float | None,
    reduction: str,
    process_group: Any = None,
    epsilon: float | None = None,
) -> torch.Tensor:
    """BCE (``gamma=None``), focal loss, or Poly-1 focal loss (``epsilon`` not None, logits),
    from logits or (``probs``) probabilities."""
    if path == "triton":
        from crossent.kernels import _triton

        fn = _triton.sigmoid_family
        args = (
            target,
            weight,
            pos_weight,
            ignore_index,
            label_smoothing,
            gamma,
            alpha,
            epsilon,
            probs,
        )
    else:
        fn = _math.sigmoid_family
        keep, add = (
            (1.0 - label_smoothing, 0.5 * label_smoothing) if label_smoothing else (None,) * 2
        )
        one_minus_alpha = None if alpha is None else 1.0 - alpha
        bits = None
        g_int = _math.integer_gamma(gamma)
        if g_int is not None:
            # the focal factor by squaring, no log / exp
            k = max(g_int - 1, 0)
            bits = (g_int >= 1, tuple(bool(k >> i & 1) for i in range(3)))
        if path == "compiled":
            cdt = _math.compute_dtype(input.dtype, probs)
            device = input.device
            options = [_scalar(ignore_index, _ignore_dtype(target), device)]
            options += [_scalar(v, cdt, device) for v in (keep, add, gamma)]
            if bits is not None:
                flag, digits = bits
                bits = (
                    _scalar(flag, torch.bool, device),
                    tuple(_scalar(b, torch.bool, device) for b in digits),
                )
            options.append(bits)
            options += [_scalar(v, cdt, device) for v in (alpha, one_minus_alpha, epsilon)]
        else:
            options = [ignore_index, keep, add, gamma, bits, alpha, one_minus_alpha, epsilon]
        args = (target, weight, pos_weight, *options, probs)
    return _run(
        path,
        fn,
        input,
        args,
        reduction=reduction,
        process_group=process_group,
        default_denominator=input.numel(),
        flat=_flat_ok(input, weight, pos_weight),
        sliceable=(0, 1),
        mean_denominator=_mean_denominator(
            input, reduction, _binary_count(input, target, ignore_index)
        ),
    )


@_triton_fallback
def asymmetric_loss(
    path: str,
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_pos: float,
    gamma_neg: float,
    clip: float | None,
    weight: torch.Tensor | None,
    label_smoothing: float,
    ignore_index: float | None,
    reduction: str,
    process_group: Any = None,
) -> torch.Tensor:
    """Asymmetric loss (ASL) from logits; ``clip`` None or 0 disables the margin."""
    clip = clip or None
    if path == "triton":
        from crossent.kernels import _triton

        fn = _triton.asymmetric
        args = (target, weight, ignore_index, label_smoothing, gamma_pos, gamma_neg, clip)
    else:
        fn = _math.asymmetric
        keep, add = (
            (1.0 - label_smoothing, 0.5 * label_smoothing) if label_smoothing else (None,) * 2
        )
        options = [ignore_index, keep, add, gamma_pos, gamma_neg, clip]
        if path == "compiled":
            cdt = _math.compute_dtype(input.dtype)
            ignore = _scalar(ignore_index, _ignore_dtype(target), input.device)
            options = [ignore] + [_scalar(v, cdt, input.device) for v in options[1:]]
        args = (target, weight, *options)
    return _run(
        path,
        fn,
        input,
        args,
        reduction=reduction,
        process_group=process_group,
        default_denominator=input.numel(),
        flat=_flat_ok(input, weight),
        sliceable=(0,),
        mean_denominator=_mean_denominator(
            input, reduction, _binary_count(input, target, ignore_index)
        ),
    )


@_triton_fallback
def cross_entropy_loss(
    path: str,
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    label_smoothing: float,
    reduction: str,
    process_group: Any = None,
    gamma: float | None = None,
    alpha: float | torch.Tensor | None = None,
    epsilon: float | None = None,
) -> torch.Tensor:
    """Softmax cross entropy over the class dimension (1, or 0 for an input of size ``(C)``)
    with crossent's (torch's) semantics: class-index targets (integer, the input's size without
    the class dimension) or class-probability targets (floating point, the input's size; a
    position whose every target entry equals ``ignore_index`` is ignored). ``"mean"`` divides
    by the summed weight of the non-ignored targets (index targets), or by the number of
    non-ignored positions (probability targets).

    With a focal factor (``gamma``, 0 or ``None``: none), class factors ``alpha`` or a Poly-1
    term (``epsilon``, 0 or ``None``: none) this is the softmax focal / Poly-1 loss
    (:func:`crossent.kernels._math.softmax_family`); without them, plain cross entropy
    (:func:`crossent.kernels._math.cross_entropy`)."""
    probs = target.is_floating_point()
    smoothing = label_smoothing or None
    gamma, epsilon = gamma or None, epsilon or None
    family = gamma is not None or alpha is not None or epsilon is not None
    if path == "triton":
        from crossent.kernels import _triton

        if family:
            fn = _triton.softmax_family
            args = (target, weight, alpha, ignore_index, smoothing, gamma, epsilon, probs)
        else:
            fn = _triton.cross_entropy
            args = (target, weight, ignore_index, smoothing, probs)
    else:
        ignore = ignore_index
        if path == "compiled" and ignore_index is not None:
            ignore = _scalar(ignore_index, target.dtype, input.device)
        smooth = _option(smoothing, path, input)
        if family:
            fn = _math.softmax_family
            alpha, gamma, epsilon = (_option(v, path, input) for v in (alpha, gamma, epsilon))
            args = (target, weight, alpha, ignore, smooth, gamma, epsilon, probs)
        else:
            fn = _math.cross_entropy
            args = (target, weight, ignore, smooth, probs)
    rows = input.numel() // max(input.shape[1], 1) if input.dim() > 1 else 1
    mean_denominator = None
    if not probs and weight is None:
        # the mean's denominator from the targets alone: a pass over N indices, not N x C
        count = rows if ignore_index is None else lambda: (target != ignore_index).sum()
        mean_denominator = _mean_denominator(input, reduction, count)
    return _run(
        path,
        fn,
        input,
        args,
        reduction=reduction,
        process_group=process_group,
        default_denominator=rows,
        class_dim=1,
        unbatched=input.dim() == 1,
        mean_denominator=mean_denominator,
    )


def _ignore_dtype(target: torch.Tensor) -> torch.dtype:
    # Compared in the target's dtype, as the reference's `target != ignore_index` does.
    return target.dtype if target.is_floating_point() else torch.float64
