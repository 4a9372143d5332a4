"""No host read on the Triton path: run as ``python -m tests._helpers.host_reads``.

tests/test_triton_ops.py starts it in a subprocess with ``TRITON_INTERPRET=1`` (the variable
must be set before triton is imported). Every loss runs forward and backward on the Triton
backend, on CPU tensors in the interpreter, with the reads a CUDA tensor would pay for with a
host synchronisation -- ``Tensor.item``, ``__bool__``, ``__float__``, ``__int__``,
``__index__``, ``tolist``, ``nonzero`` -- and ``torch.tensor`` (a per-call tensor made from host
data, a host-to-device copy on a GPU) recorded wherever they are called from crossent's
kernel, dispatch and reduction code. The value checks (``_validation.py``, the check
functions in ``losses/__init__.py``) are not counted: they read on purpose. ``reads_are_free``
answers as for a GPU tensor, so the CPU-only shortcuts (backward skipping an incoming
gradient of exactly 1, the overflow rescue of a reduced loss) stay off, as on a GPU. Prints
one line per read and exits 1 if any; else prints ``N calls, no host read``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch

import crossent
from crossent import functional as CF
from crossent.kernels import _function
from tests._helpers.tolerances import tolerance

_SRC = os.path.dirname(crossent.__file__)
# crossent's code on the path of a call, but the checks (whose reads the value checks need)
WATCHED = tuple(
    os.path.join(_SRC, *part.split("/"))
    for part in (
        "kernels/",
        "_reduction.py",
        "_precision.py",
        "losses/_definition.py",
        "losses/_options.py",
        "functional/",
    )
)
READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero")


@contextlib.contextmanager
def recording_reads() -> Iterator[list[str]]:
    """Within this context, the reads listed in ``READS`` and ``torch.tensor`` made from the
    watched files are appended to the yielded list as ``"file:line: name"``."""
    reads: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}
    saved_tensor = torch.tensor

    def watch(name, original):
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1)
            path = caller.f_code.co_filename
            if path.startswith(WATCHED):
                reads.append(f"{os.path.relpath(path, _SRC)}:{caller.f_lineno}: {name}")
            return original(*args, **kwargs)

        return wrapper

    for name, original in saved.items():
        setattr(torch.Tensor, name, watch(name, original))
    torch.tensor = watch("torch.tensor", saved_tensor)
    try:
        yield reads
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)
        torch.tensor = saved_tensor


def _cases():
    """(label, loss function, input, target, keywords): every loss, with the options that
    take other code paths (ignore_index, weights, smoothing, probability targets, float16 with
    its counted denominator, a single sample)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(6, 5, generator=g) < 0.4).double()
    y_ign = torch.where(torch.rand(6, 5, generator=g) < 0.3, -1.0, y)
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    t = torch.randint(0, 5, (6,), generator=g)
    t[1] = -100
    probs = torch.softmax(torch.randn(6, 5, generator=g, dtype=torch.float64), 1)
    return [
        ("bce", CF.binary_cross_entropy_with_logits, x, y, {"pos_weight": w}),
        ("bce_probs", CF.binary_cross_entropy, torch.sigmoid(x), y, {"weight": w}),
        ("focal_ignore", CF.sigmoid_focal_loss, x, y_ign, {"ignore_index": -1}),
        ("focal_half", CF.sigmoid_focal_loss, x.half(), y_ign.half(), {"ignore_index": -1}),
        ("binary_focal", CF.binary_focal_loss, torch.sigmoid(x), y, {"gamma": 1.5}),
        ("poly1_focal", CF.poly1_focal_loss, x, y, {"label_smoothing": 0.1}),
        ("asl", CF.asymmetric_loss, x, y_ign, {"ignore_index": -1, "weight": w}),
        ("ce", CF.cross_entropy, x, t, {}),
        ("ce_weight", CF.cross_entropy, x, t, {"weight": w, "label_smoothing": 0.1}),
        ("ce_probs", CF.cross_entropy, x, probs, {}),
        ("ce_single", CF.cross_entropy, x[0], t[0], {}),
        ("softmax_focal", CF.softmax_focal_loss, x, t, {"alpha": w}),
        ("poly1", CF.poly1_cross_entropy, x.float(), t, {"epsilon": 2.0}),
    ]


def main() -> int:
    failures: list[str] = []
    calls = 0
    saved = _function.reads_are_free
    _function.reads_are_free = lambda tensor: False  # as for a GPU tensor
    try:
        for label, fn, x, target, kwargs in _cases():
            for reduction in ("none", "mean", "sum"):
                for upstream in ("backward", "times_three"):
                    xx = x.detach().clone().requires_grad_(True)
                    with recording_reads() as reads:
                        out = fn(xx, target, reduction=reduction, backend="triton", **kwargs)
                        if reduction == "none":
                            out.sum().backward()
                        else:
                            (out if upstream == "backward" else 3 * out).backward()
                        no_grad = fn(x, target, reduction=reduction, backend="triton", **kwargs)
                    calls += 2
                    where = f"{label}/{reduction}/{upstream}"
                    failures += [f"{where}: {read}" for read in reads]
                    # the GPU-like route gives the reference's values
                    xr = x.detach().clone().requires_grad_(True)
                    ref = fn(xr, target, reduction=reduction, backend="reference", **kwargs)
                    factor = 3 if upstream == "times_three" and reduction != "none" else 1
                    (factor * ref).sum().backward()
                    try:
                        tol = tolerance(x.dtype)
                        torch.testing.assert_close(out.detach(), ref.detach(), **tol)
                        torch.testing.assert_close(no_grad, ref.detach(), **tol)
                        torch.testing.assert_close(xx.grad, xr.grad, **tol)
                    except AssertionError as exc:
                        failures.append(f"{where}: {str(exc).splitlines()[-1]}")
    finally:
        _function.reads_are_free = saved
    # the recorder itself: on CPU, backward reads an incoming gradient of 1 (free there)
    xx = x_check = torch.randn(4, 3, dtype=torch.float64).requires_grad_(True)
    with recording_reads() as reads:
        CF.cross_entropy(xx, torch.tensor([0, 1, 2, 0]), backend="triton").backward()
    if not any(r.startswith(os.path.join("kernels", "_function.py")) for r in reads):
        failures.append(f"the recorder saw no read of the CPU shortcut: {reads} ({x_check.grad})")
    for line in failures:
        print(line)
    if failures:
        return 1
    print(f"{calls} calls, no host read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
