"""Which backend computes a loss, and the calls into each (see :mod:`crossent.kernels`)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from crossent import _validation as V
from crossent._precision import compute_dtype, grad_dtype
from crossent._reduction import plan_reduction
from crossent.kernels._function import FusedLoss
from crossent.losses._options import KernelOptions, _cached_scalar

__all__ = [
    "COMPILE_MIN_NUMEL",
    "ENV_VAR",
    "KernelFamily",
    "compile_available",
    "no_fallback",
    "run_fused",
    "select_backend",
    "triton_available",
]

ENV_VAR = "CROSSENT_BACKEND"
# "auto" compiles on CPU from this many input elements on: below it, the eager closed form is
# within microseconds of the compiled one and a first call never pays a compile (~25 s).
COMPILE_MIN_NUMEL = 1 << 16

_compile_error: BaseException | None = None
# Inside no_fallback(): a backend that cannot run raises instead of handing the call to another.
_strict = 0
_triton_error: BaseException | None = None
_compiled: dict[tuple, Callable] = {}


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def compile_available() -> bool:
    """Whether ``torch.compile`` has worked so far (it is disabled after its first failure)."""
    return _compile_error is None


@contextlib.contextmanager
def no_fallback() -> Iterator[None]:
    """Within this context a backend that cannot run a call raises its error instead of
    handing the call to the eager closed form (``torch.compile`` failing, a Triton kernel that
    cannot be built or launched): the backend asked for is the one that ran. The tests run
    every backend inside it, so a silent fallback fails them.

    >>> import torch, crossent
    >>> from crossent.kernels import no_fallback
    >>> with no_fallback():
    ...     crossent.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), backend="fused")
    tensor(1.0986)
    """
    global _strict
    _strict += 1
    try:
        yield
    finally:
        _strict -= 1


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_traceable(input: torch.Tensor) -> bool:
    """Whether torch.compile can launch the Triton kernels for ``input`` from its graph: a CUDA
    tensor, with triton importable and no kernel failure so far. (Under TRITON_INTERPRET=1
    the kernels are Python functions that run on real CPU tensors: a trace, which runs them
    on fake tensors, cannot contain them.)"""
    return input.device.type == "cuda" and triton_available() and _triton_error is None


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
        # Inside a user's torch.compile: on CUDA the Triton kernels, as registered ops (see
        # kernels/_triton.py), are launched from the compiled graph -- the same kernels, so
        # the same values, as eager mode. Elsewhere (and for backend="fused") the closed form
        # is traced into the graph.
        if name in ("triton", "auto") and _triton_traceable(input):
            return "triton"
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


@dataclass(frozen=True)
class KernelFamily:
    """A family of losses computed by one closed form and one Triton launcher.

    Attributes:
        name: ``"sigmoid"``, ``"asymmetric"`` or ``"softmax"``.
        classes: the input has a class dimension (1, or 0 for a ``(C,)`` input) and the loss
            is per sample; else it is elementwise.
        closed_form: ``options -> function`` of :mod:`crossent.kernels._math`, called as
            ``fn(input, target, options, *, mean_denominator, reduce, need_grad)`` and
            returning ``(sum or unreduced loss, denominator or None, gradient or None)``.
        triton: the same for :mod:`crossent.kernels._triton` (imported on first use).
        known_denominator: ``(input, target, options) ->`` the mean's denominator where it
            is known before the pass (see :func:`crossent._reduction.plan_reduction`), else
            ``None``.
    """

    name: str
    classes: bool
    closed_form: Callable[[Any], Callable]
    triton: Callable[[Any], Callable]
    known_denominator: Callable[[torch.Tensor, torch.Tensor, Any], Any]

    def default_denominator(self, input: torch.Tensor) -> int:
        """What ``"mean"`` divides by when the pass counted nothing: every element, or for a
        per-sample loss every sample (row)."""
        if not self.classes:
            return input.numel()
        return input.numel() // max(input.shape[1], 1) if input.dim() > 1 else 1


def _structure(input: torch.Tensor, target: torch.Tensor, options: KernelOptions) -> tuple:
    """What torch.compile specialises a graph on, as far as it varies between loss
    configurations: the input's dtype and rank, the target's dtype, which options are
    ``None``, and the flags (about 2 us: this runs on every call)."""
    return (input.dtype, input.dim(), target.dtype, type(options), *options.structure())


def _get_compiled(fn: Callable, key: tuple) -> Callable:
    """The compiled ``fn`` for calls of one structure (``key``).

    torch.compile keeps a graph per combination of what is structural in a call (which
    options are given, the reduction, whether a gradient is needed, the dtype) and caches them
    on the function's code object, with dynamo's limit of 8 per code object, process-wide:
    five loss configurations with and without a gradient reached it, and every later call
    then ran eagerly. So each structure compiles a copy of ``fn`` with a code object of its
    own; its cache holds that structure's graphs alone (a new batch size reuses them:
    ``dynamic=True``; a new gamma or alpha too: numeric options are 0-dim tensor inputs)."""
    key = (fn, *key)
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


def _run_compiled(
    fn: Callable, flat: bool, input: torch.Tensor, target: torch.Tensor, options, **call
):
    """``fn`` through torch.compile; flattened to 1-D when ``flat`` (one graph for every
    input rank). If compilation fails (no C++ compiler, an unsupported platform) the same
    closed form runs eagerly and compilation is not tried again -- unless inside
    :func:`no_fallback`, where the failure is raised."""
    global _compile_error
    shape = input.shape
    if flat:
        input, target = input.reshape(-1), target.reshape(-1)
    # detach(): a view's detached alias has no `_base`, so dynamo does not guard on the layout
    # of the tensor it was sliced from (a new base shape would otherwise recompile).
    input, target = input.detach(), target.detach()
    options = options.for_compile(input, target)
    if isinstance(call["mean_denominator"], torch.Tensor):
        call["mean_denominator"] = call["mean_denominator"].detach()
    elif call["mean_denominator"] is not None:  # a number: a graph input, not a constant
        call["mean_denominator"] = _cached_scalar(
            float(call["mean_denominator"]), compute_dtype(input.dtype), input.device
        )
    if _compile_error is None:
        try:
            key = (*_structure(input, target, options), *call.values())
            key = tuple(v if not isinstance(v, torch.Tensor) else "tensor" for v in key)
            out, denominator, grad = _get_compiled(fn, key)(input, target, options, **call)
        except Exception as exc:
            if _strict:
                raise
            out, denominator, grad = fn(input, target, options, **call)  # raises if at fault
            _compile_error = exc
            warnings.warn(
                f"crossent: torch.compile failed ({type(exc).__name__}: {exc}); the fused "
                f"kernels run eagerly from now on.",
                RuntimeWarning,
                stacklevel=2,
            )
    else:
        if _strict:
            raise RuntimeError(
                f'backend="compiled" cannot run: torch.compile failed earlier in this process '
                f"({type(_compile_error).__name__}: {_compile_error})."
            ) from _compile_error
        out, denominator, grad = fn(input, target, options, **call)
    if flat:
        out = out.view(shape) if out.dim() else out
        grad = None if grad is None else grad.view(shape)
    return out, denominator, grad


# The eager closed form makes a few dozen temporaries the size of what it is given; on a large
# input it runs over slices of this many elements (rows of dimension 0), so they stay small
# (and in cache) and the extra memory is the gradient buffer alone.
_EAGER_CHUNK = 1 << 16
_EAGER_CHUNK_DEVICE = 1 << 22  # on a GPU each slice costs kernel launches: fewer, larger ones


def _chunked(
    fn: Callable,
    chunk: int,
    flat: bool,
    input: torch.Tensor,
    target: torch.Tensor,
    options,
    **call,
):
    """``fn`` over slices of dimension 0 of ``input``, ``target`` and the options' tensors
    that vary along it, the gradient written slice by slice into one buffer."""
    shape = input.shape
    if flat:
        input, target = input.reshape(-1), target.reshape(-1)
    rows = input.shape[0]
    step = max(1, chunk // max(1, input[:1].numel()))
    need_grad = call["need_grad"]
    grad = torch.empty_like(input, dtype=grad_dtype(input.dtype)) if need_grad else None
    outs, denominators = [], []
    for start in range(0, rows, step):
        sl = slice(start, start + step)
        part = options.rows(sl, rows, input.dim())
        out, denominator, g = fn(input[sl], target[sl], part, **call)
        if grad is not None:
            grad[sl] = g
        outs.append(out)
        denominators.append(denominator)
    out = torch.stack(outs).sum() if call["reduce"] else torch.cat(outs)
    denominator = None if denominators[0] is None else torch.stack(denominators).sum()
    if flat:
        out = out if call["reduce"] else out.view(shape)
        grad = None if grad is None else grad.view(shape)
    return out, denominator, grad


def _unbatched(fn: Callable, input: torch.Tensor, target: torch.Tensor, options, **call):
    """A single sample of size ``(C,)`` (target ``()`` or ``(C,)``) as a batch of one."""
    out, denominator, grad = fn(input.unsqueeze(0), target.unsqueeze(0), options, **call)
    out = out.squeeze(0) if out.dim() else out
    return out, denominator, None if grad is None else grad.squeeze(0)


def run_fused(
    path: str,
    family: KernelFamily,
    input: torch.Tensor,
    target: torch.Tensor,
    options: KernelOptions,
    reduction: str,
    process_group: Any,
) -> torch.Tensor:
    """The loss computed by ``family``'s closed form on ``path`` (``"fused"``, ``"compiled"``
    or ``"triton"``), reduced (:class:`crossent._reduction.Reduction`); a failing Triton
    kernel falls back to the eager closed form (see :func:`no_fallback`)."""
    global _triton_error
    # (not while torch.compile traces: a kernel that fails there fails the compile, which
    # says so; the fallback would bake the eager closed form into the graph)
    compiling = torch.compiler.is_compiling()
    if path == "triton" and not _interpreting() and not _strict and not compiling:
        try:
            return _run_fused(path, family, input, target, options, reduction, process_group)
        except Exception as exc:
            if _triton_error is None:
                warnings.warn(
                    f"crossent: a Triton kernel failed ({type(exc).__name__}: {exc}); the "
                    f"fused kernels run eagerly on this device from now on.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _triton_error = exc
            path = "fused"
    return _run_fused(path, family, input, target, options, reduction, process_group)


def _run_fused(path, family, input, target, options, reduction, process_group):
    known = family.known_denominator(input, target, options)
    plan = plan_reduction(reduction, process_group, input, known)
    need_grad = input.requires_grad and torch.is_grad_enabled()
    call = dict(mean_denominator=plan.fold, reduce=plan.reduce, need_grad=need_grad)
    fn = family.triton(options) if path == "triton" else family.closed_form(options)
    flat = not family.classes and input.is_contiguous() and len(options.tensors()) == 0
    unbatched = family.classes and input.dim() == 1
    if path == "compiled":
        fn = functools.partial(_run_compiled, fn, flat)
    elif path == "fused" and not torch.compiler.is_compiling():
        chunk = _EAGER_CHUNK if input.device.type == "cpu" else _EAGER_CHUNK_DEVICE
        if input.numel() > chunk and input.dim() and not unbatched:
            fn = functools.partial(_chunked, fn, chunk, flat)
    if unbatched:
        fn = functools.partial(_unbatched, fn)
    if need_grad:
        class_dim = 1 if family.classes else None
        # what FusedLoss computes: input -> fn(input, target, options, **call)
        compute = functools.partial(fn, target=target, options=options, **call)
        out, denominator = FusedLoss.apply(input, compute, class_dim, path == "triton")
    else:
        out, denominator, _ = fn(input, target, options, **call)
    return plan.finish(out, denominator, family.default_denominator(input))
