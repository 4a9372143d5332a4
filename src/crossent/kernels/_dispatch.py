"""Which backend computes a loss, and the calls into each (see :mod:`crossent.kernels`)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import queue
import sys
import threading
import time
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
    "wait_for_compiles",
]

ENV_VAR = "CROSSENT_BACKEND"
# "auto" compiles on CPU from this many input elements on: below it, the eager closed form is
# within microseconds of the compiled one and a first call never pays a compile (~25 s).
COMPILE_MIN_NUMEL = 1 << 16

_compile_error: BaseException | None = None
# Inside no_fallback(): a backend that cannot run raises instead of handing the call to another.
_strict = 0
_triton_error: BaseException | None = None
_compiled: dict[tuple, Any] = {}
_log = logging.getLogger("crossent")


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


def requested_backend(backend: str | None) -> str:
    """The backend a call asks for: ``backend``, else ``CROSSENT_BACKEND``, else ``"auto"``."""
    if backend is None:
        return V.check_backend(os.environ.get(ENV_VAR) or "auto", name=ENV_VAR)
    return V.check_backend(backend)


def select_backend(backend: str | None, input: torch.Tensor, *others: Any) -> str:
    """The backend that computes this call: ``"reference"``, ``"fused"``, ``"compiled"`` or
    ``"triton"``. ``backend`` is the caller's keyword (``None``: the environment variable
    ``CROSSENT_BACKEND``, else ``"auto"``); ``others`` are the call's other tensors (targets,
    weights): the fused paths differentiate only ``input``, so if one of them requires a
    gradient the call goes to the reference path (``"auto"``) or is refused (explicit)."""
    name = requested_backend(backend)
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


class _Compiled:
    """The compiled copy of a closed form for calls of one structure, and whether it is ready:
    ``"compiling"`` (a background thread is compiling it), ``"ready"`` or ``"failed"``."""

    __slots__ = ("_compiled", "clone", "state")

    def __init__(self, clone: Callable) -> None:
        self.clone = clone
        self.state = "new"
        self._compiled = None

    @property
    def fn(self) -> Callable:
        # torch.compile is called on first use: its first call imports dynamo (seconds), which
        # belongs in the background thread when compiling there
        if self._compiled is None:
            self._compiled = torch.compile(self.clone, dynamic=True, fullgraph=True)
        return self._compiled


def _get_compiled(fn: Callable, key: tuple) -> _Compiled:
    """The compiled ``fn`` for calls of one structure (``key``).

    torch.compile keeps a graph per combination of what is structural in a call (which
    options are given, the reduction, whether a gradient is needed, the dtype) and caches them
    on the function's code object, with dynamo's limit of 8 per code object, process-wide:
    five loss configurations with and without a gradient reached it, and every later call
    then ran eagerly. So each structure compiles a copy of ``fn`` with a code object of its
    own; its cache holds that structure's graphs alone (a new batch size reuses them:
    ``dynamic=True``; a new gamma or alpha too: numeric options are 0-dim tensor inputs)."""
    key = (fn, *key)
    entry = _compiled.get(key)
    if entry is None:
        clone = types.FunctionType(
            fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        clone.__kwdefaults__ = fn.__kwdefaults__
        clone.__qualname__ = fn.__qualname__
        entry = _Compiled(clone)
        _compiled[key] = entry
    return entry


# ---- compiling off the critical path --------------------------------------------------------
#
# A first compile of a closed form takes seconds (5-9 s on two cores). With backend="auto" the
# call that meets a new configuration does not wait for it: a background thread compiles while
# the eager closed form serves this call and the next ones, and the compiled graph takes over
# once it is ready. A ready graph is called under dynamo's "fail_on_recompile" stance: a call
# its guards do not cover (a recompile) runs eagerly too, and is compiled in the background.

_queue: queue.SimpleQueue = queue.SimpleQueue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()
_pending = 0  # compiles queued or running
_idle = threading.Condition(_worker_lock)


def _compile_worker() -> None:
    global _pending, _switch_interval
    try:  # Linux: a thread's own priority (its compiler subprocesses inherit it)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _COMPILE_NICENESS)
    except (AttributeError, OSError):
        pass
    while True:
        job = _queue.get()
        try:
            job()
        finally:
            with _worker_lock:
                _pending -= 1
                if _pending == 0 and _switch_interval is not None:
                    # (stored in microseconds: 2e-4 reads back as 0.00019999999999999998)
                    if abs(sys.getswitchinterval() - _COMPILING_SWITCH_INTERVAL) < 1e-7:
                        sys.setswitchinterval(_switch_interval)  # unless changed meanwhile
                    _switch_interval = None
                _idle.notify_all()


# While a compile runs in the background, the calling thread's eager stand-in competes with it
# for the two things a second busy thread takes: the GIL, which every torch operation hands
# back and forth (taken back after up to the switch interval, 5 ms by default), and a core,
# which an operation's intra-op threads wait for at their barrier. So for the time of the
# compiles the switch interval is 0.2 ms (restored after them), and the compiling thread (and
# the compiler processes it starts) runs at niceness 5. Measured on two cores at load ~2.9, an
# ASL training loop at 4096 x 1000 while its graph compiles: at niceness 0, steps of 0.5 s
# (at most 0.84 s) for 9 s; at 5, steps of 0.2 s (at most 0.55 s) for 21 s -- 2.6 times the
# steps per second; at 19 the compile starved (3 minutes). Not fewer intra-op threads for
# the stand-in: dynamo guards on torch.get_num_threads(), so a graph traced meanwhile would
# never match a later call.
_COMPILING_SWITCH_INTERVAL = 2e-4
_COMPILE_NICENESS = 5
_switch_interval: float | None = None  # the interval to restore, while compiles run


def _warm(entry: _Compiled, args: tuple, call: dict, modes: tuple) -> None:
    """Compile ``entry`` by calling it once with a call's arguments (the result is dropped),
    in the calling thread's grad and autocast modes (thread-local; dynamo guards on them)."""
    grad, autocast, autocast_dtype = modes
    for attempt in range(20):
        try:
            with (
                torch.set_grad_enabled(grad),
                torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast),
            ):
                entry.fn(*args, **call)
            entry.state = "ready"
            return
        except RuntimeError as exc:
            # The main thread had set the "fail_on_recompile" stance (process-wide) around a
            # call of a ready graph just as this compile started: try again.
            if "Detected recompile" in str(exc) and attempt < 19:
                time.sleep(0.01)
                continue
            _failed(entry, exc)
            return
        except Exception as exc:
            _failed(entry, exc)
            return


def _failed(entry: _Compiled, exc: BaseException) -> None:
    global _compile_error
    entry.state = "failed"
    if _compile_error is None:
        _compile_error = exc
        warnings.warn(
            f"crossent: torch.compile failed ({type(exc).__name__}: {exc}); the fused "
            f"kernels run eagerly from now on.",
            RuntimeWarning,
            stacklevel=2,
        )


def run_in_background(job: Callable[[], None]) -> None:
    """Run ``job`` in the compiling thread (after the compiles queued before it);
    :func:`wait_for_compiles` waits for it too. The native operators' build is one
    (:mod:`crossent.kernels._native`)."""
    global _worker, _pending, _switch_interval
    with _worker_lock:
        _pending += 1
        if _switch_interval is None:
            _switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_interval, _COMPILING_SWITCH_INTERVAL))
        if _worker is None:
            _worker = threading.Thread(target=_compile_worker, name="crossent-compile", daemon=True)
            _worker.start()
    _queue.put(job)


def _compile_in_background(entry: _Compiled, args: tuple, call: dict) -> None:
    entry.state = "compiling"
    modes = (
        torch.is_grad_enabled(),
        torch.is_autocast_enabled("cpu"),
        torch.get_autocast_dtype("cpu"),
    )
    run_in_background(functools.partial(_warm, entry, args, call, modes))


def wait_for_compiles(timeout: float | None = None) -> bool:
    """Block until the compiles that ``backend="auto"`` started in the background are done
    (``timeout`` seconds at most); returns whether none is left.

    With ``backend="auto"`` a CPU call that needs a new compiled graph does not wait for
    it: the eager closed form computes that call, and the next ones, until a background
    thread has compiled the graph (seconds, once per loss configuration and process). Call
    this after a warm-up step to measure the steady state, or before timing anything.

    >>> from crossent.kernels import wait_for_compiles
    >>> wait_for_compiles()
    True
    """
    with _worker_lock:
        return _idle.wait_for(lambda: _pending == 0, timeout)


def _call_ready(entry: _Compiled, args: tuple, call: dict):
    """Call a ready graph; ``None`` where it would have to recompile (then it recompiles in
    the background, and the caller runs eagerly)."""
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            return entry.fn(*args, **call)
    except RuntimeError as exc:
        if "Detected recompile" not in str(exc):
            raise
    _compile_in_background(entry, args, call)
    return None


def _run_compiled(
    fn: Callable,
    flat: bool,
    background: Callable | None,
    input: torch.Tensor,
    target: torch.Tensor,
    options,
    **call,
):
    """``fn`` through torch.compile; flattened to 1-D when ``flat`` (one graph for every
    input rank). ``background``: the eager computation of this call, which serves it while
    the graph compiles in a background thread (``backend="auto"``); ``None``: wait for the
    compile (``backend="compiled"``). If compilation fails (no C++ compiler, an unsupported
    platform) the same closed form runs eagerly and compilation is not tried again -- unless
    inside :func:`no_fallback`, where the failure is raised."""
    if _compile_error is not None:
        if _strict:
            raise RuntimeError(
                f'backend="compiled" cannot run: torch.compile failed earlier in this process '
                f"({type(_compile_error).__name__}: {_compile_error})."
            ) from _compile_error
        return (background or fn)(input, target, options, **call)
    eager = (input, target, options, dict(call))
    shape = input.shape
    if flat:
        input, target = input.reshape(-1), target.reshape(-1)
    # detach(): a view's detached alias has no `_base`, so dynamo does not guard on the layout
    # of the tensor it was sliced from (a new base shape would otherwise recompile).
    input, target = input.detach(), target.detach()
    compiled_options = options.for_compile(input, target)
    if isinstance(call["mean_denominator"], torch.Tensor):
        call["mean_denominator"] = call["mean_denominator"].detach()
    elif call["mean_denominator"] is not None:  # a number: a graph input, not a constant
        call["mean_denominator"] = _cached_scalar(
            float(call["mean_denominator"]),
            compute_dtype(input.dtype),
            input.device,
            "mean_denominator",
        )
    key = (*_structure(input, target, compiled_options), *call.values())
    key = tuple(v if not isinstance(v, torch.Tensor) else "tensor" for v in key)
    entry = _get_compiled(fn, key)
    args = (input, target, compiled_options)
    result = None
    if background is not None and entry.state != "failed":
        if entry.state == "new":
            _compile_in_background(entry, args, call)
        elif entry.state == "ready":
            result = _call_ready(entry, args, call)
        if result is None:
            return background(*eager[:3], **eager[3])
    else:
        try:
            _notice_wait(entry)
            result = entry.fn(*args, **call)
            entry.state = "ready"
        except Exception as exc:
            if _strict:
                raise
            out = fn(input, target, compiled_options, **call)  # raises if at fault
            _failed(entry, exc)
            result = out
    out, denominator, grad = result
    if flat:
        out = out.view(shape) if out.dim() else out
        grad = None if grad is None else grad.view(shape)
    return out, denominator, grad


_noticed = False


def _notice_wait(entry: _Compiled) -> None:
    """Say once per process that a call waits for a compile (``backend="compiled"``)."""
    global _noticed
    if entry.state == "new" and not _noticed:
        _noticed = True
        _log.warning(
            'crossent: backend="compiled" compiles the fused kernel for this loss '
            "configuration before the call returns (seconds, once per configuration and "
            'process); backend="auto" compiles in the background instead.'
        )


# The eager closed form makes a few dozen temporaries the size of what it is given; on a large
# input it runs over slices of this many elements (rows of dimension 0), so they stay small
# (and in cache) and the extra memory is the gradient buffer alone.
_EAGER_CHUNK = 1 << 16
_EAGER_CHUNK_DEVICE = 1 << 22  # on a GPU each slice costs kernel launches: fewer, larger ones
# While a graph compiles in a background thread, the eager calls that stand in for it run
# over few, large slices: every torch operation hands the GIL back and forth with the
# compiling thread (up to the switch interval each, see _COMPILING_SWITCH_INTERVAL), so the
# number of operations, not their size, decides how long such a call takes (measured on two
# cores: slices of 2^16 elements made the first cross entropy at 4096 x 1000 take 9 s, the
# whole input 0.7 s).
_EAGER_CHUNK_WHILE_COMPILING = 1 << 22


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
    background: bool = False,
) -> torch.Tensor:
    """The loss computed by ``family``'s closed form on ``path`` (``"fused"``, ``"compiled"``
    or ``"triton"``), reduced (:class:`crossent._reduction.Reduction`); a failing Triton
    kernel falls back to the eager closed form (see :func:`no_fallback`). ``background``
    (``backend="auto"``): a compiled graph that is not ready yet is compiled in a background
    thread while the eager closed form computes the call."""
    global _triton_error
    # (not while torch.compile traces: a kernel that fails there fails the compile, which
    # says so; the fallback would bake the eager closed form into the graph)
    compiling = torch.compiler.is_compiling()
    if path == "triton" and not _interpreting() and not _strict and not compiling:
        try:
            return _run_fused(path, family, input, target, options, reduction, process_group, False)
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
    return _run_fused(path, family, input, target, options, reduction, process_group, background)


def _run_fused(path, family, input, target, options, reduction, process_group, background):
    known = family.known_denominator(input, target, options)
    plan = plan_reduction(reduction, process_group, input, known)
    need_grad = input.requires_grad and torch.is_grad_enabled()
    call = dict(mean_denominator=plan.fold, reduce=plan.reduce, need_grad=need_grad)
    fn = family.triton(options) if path == "triton" else family.closed_form(options)
    flat = not family.classes and input.is_contiguous() and len(options.tensors()) == 0
    unbatched = family.classes and input.dim() == 1
    eager = fn
    if path != "triton" and not torch.compiler.is_compiling():
        chunk = _EAGER_CHUNK if input.device.type == "cpu" else _EAGER_CHUNK_DEVICE
        if path == "compiled":
            chunk = _EAGER_CHUNK_WHILE_COMPILING
        if input.numel() > chunk and input.dim() and not unbatched:
            eager = functools.partial(_chunked, fn, chunk, flat)
    if path == "compiled":
        fn = functools.partial(_run_compiled, fn, flat, eager if background else None)
    elif path == "fused":
        fn = eager
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
