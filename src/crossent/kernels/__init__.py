"""Fused loss kernels: the loss and its gradient in one pass, on CPU and GPU.

A loss over N elements must at least read the input and the target once and write one
gradient. The fused paths do exactly that: a :class:`torch.autograd.Function` whose forward
computes the reduced loss *and* the closed-form gradient in one pass, and saves only that
gradient; backward multiplies it by the incoming gradient (in place when the graph is not
retained, so the buffer becomes ``input.grad`` itself). No per-element intermediate is kept,
the caller's tensors are never written, nothing synchronises with the host.

Backends -- every loss function takes ``backend=`` (``None``: the environment variable
``CROSSENT_BACKEND``, else ``"auto"``):

``"reference"``
    The loss written as ordinary torch operations, differentiated by autograd. Always
    available; the definition the other backends are tested against.
``"fused"``
    The closed form (:mod:`crossent.kernels._math`) run eagerly, any device.
``"compiled"``
    The same closed form through ``torch.compile(dynamic=True)``, compiled once per loss
    configuration (inductor generates one vectorised C++ loop on CPU). A new batch size or a
    new value of ``gamma``, ``alpha``, ``label_smoothing``, ... reuses it. Asked for
    explicitly, a call that needs a new compile waits for it (seconds; said once per
    process). If compilation fails (no C++ compiler) the eager closed form is used, with one
    warning.
``"triton"``
    Hand-written Triton kernels (:mod:`crossent.kernels._triton`), for CUDA tensors. With
    ``TRITON_INTERPRET=1`` they also run on CPU tensors, slowly: for testing.
``"auto"`` (default)
    On CPU up to ``crossent.losses._small.SMALL_NUMEL`` elements, every loss first takes
    the small-input path where it covers the call (a few torch operations, differentiated by
    autograd; :mod:`crossent.losses._small`), or, once they are built (in the background,
    cached across processes; ``CROSSENT_NATIVE=0`` turns them off), crossent's native C++
    operators for BCE with logits, BCE from probabilities and cross entropy
    (:mod:`crossent.kernels._native`): one vectorised pass, one autograd node.
    Otherwise:
    ``"reference"`` when a target or weight requires a gradient (the fused paths
    differentiate the input only); ``"triton"`` for CUDA tensors (``"fused"`` without
    triton), also inside a user's ``torch.compile``: the kernels are registered operators
    (``crossent::binary_loss``, ``crossent::softmax_loss``, ``crossent::scale_``) that
    Inductor launches from the compiled graph; on CPU ``"compiled"`` from
    :data:`COMPILE_MIN_NUMEL` elements on and ``"fused"`` below, where a compile would cost
    more than it saves, and ``"fused"`` inside a user's ``torch.compile`` (the closed form is
    traced into their graph). A call never waits for a compile here: while a configuration's
    graph is compiling in a background thread, the eager closed form computes its calls
    (:func:`wait_for_compiles` waits for them, for benchmarks).

Results of every backend equal the reference to the dtype tolerance table, gradients included.
"""

from crossent.kernels._dispatch import (
    COMPILE_MIN_NUMEL,
    ENV_VAR,
    KernelFamily,
    compile_available,
    no_fallback,
    run_fused,
    select_backend,
    triton_available,
    wait_for_compiles,
)
from crossent.kernels._function import FusedLoss

__all__ = [
    "COMPILE_MIN_NUMEL",
    "ENV_VAR",
    "FusedLoss",
    "KernelFamily",
    "compile_available",
    "no_fallback",
    "run_fused",
    "select_backend",
    "triton_available",
    "wait_for_compiles",
]
