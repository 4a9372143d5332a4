"""The Triton kernels against the reference, run as ``python -m tests._helpers.triton_cases``.

tests/test_kernels.py starts it in a subprocess with ``TRITON_INTERPRET=1``: the variable must
be set before triton is imported, which another test in the same process may already have
done. Small CPU tensors only (the interpreter runs each program in numpy, slowly); no bfloat16
(the interpreter has none). Prints one line per failure and exits 1 if any; else prints
``N cases passed``.
"""

from __future__ import annotations

import itertools
import os
import sys

import torch

import crossent
from crossent import functional as CF
from crossent import kernels as K
from tests._helpers.tolerances import tolerance


def _grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


def _check(failures, label, ours, ref, dtype):
    try:
        torch.testing.assert_close(ours, ref, **tolerance(dtype))
    except AssertionError as exc:
        failures.append(f"{label}: {str(exc).splitlines()[-2:]}")


BINARY = {
    "bce_logits": (CF.binary_cross_entropy_with_logits, False, {}),
    "bce_probs": (CF.binary_cross_entropy, True, {}),
    "focal_g2": (CF.sigmoid_focal_loss, False, {"gamma": 2.0, "alpha": 0.25}),
    "focal_g05": (CF.sigmoid_focal_loss, False, {"gamma": 0.5, "alpha": None}),
    "binary_focal": (CF.binary_focal_loss, True, {"gamma": 1.5, "alpha": 0.6}),
    "poly1_focal": (CF.poly1_focal_loss, False, {"epsilon": -0.5, "gamma": 2.0, "alpha": 0.25}),
    "asl": (CF.asymmetric_loss, False, {"gamma_pos": 1.0, "gamma_neg": 3.0, "clip": 0.1}),
    "asl_noclip": (CF.asymmetric_loss, False, {"clip": None}),
}


def binary_cases():
    failures, count = [], 0
    grid = itertools.product(
        BINARY.items(),
        ["plain", "everything", "weight_nchw"],
        ["none", "mean"],  # "sum" is the same kernel as "mean" (the division comes after)
        [torch.float64, torch.float32, torch.float16],
    )
    for (name, (fn, probs, extra)), option, reduction, dtype in grid:
        if dtype == torch.float16 and option != "everything":
            continue  # half precision: once per loss, with every option
        g = torch.Generator().manual_seed(count)
        shape = (3, 4, 5, 2) if option == "weight_nchw" else (7, 5)
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        if fn is CF.asymmetric_loss:
            x = x + 0.5 * x.sign()  # away from the clip margin's kink
        if probs:
            x = torch.sigmoid(x)
        y = torch.rand(shape, generator=g, dtype=torch.float64)
        kwargs = dict(extra)
        if option == "everything":
            kwargs["weight"] = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
            if fn is not CF.asymmetric_loss:
                kwargs["pos_weight"] = torch.rand(5, generator=g, dtype=torch.float64) * 2
            kwargs["label_smoothing"] = 0.1
            y = torch.where(torch.rand(shape, generator=g) < 0.3, -1.0, y)
            kwargs["ignore_index"] = -1
        if option == "weight_nchw":
            kwargs["weight"] = torch.rand(4, 1, 1, generator=g, dtype=torch.float64)
        x, y = x.to(dtype), y.to(dtype)
        kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        ours, our_grad = _grad(fn, x, y, reduction=reduction, backend="triton", **kwargs)
        ref, ref_grad = _grad(fn, x, y, reduction=reduction, backend="fused", **kwargs)
        label = f"{name}-{option}-{reduction}-{dtype}"
        if ours.dtype != dtype or our_grad.dtype != dtype:
            failures.append(f"{label}: dtype {ours.dtype}, {our_grad.dtype}")
        _check(failures, label + " value", ours, ref, dtype)
        _check(failures, label + " grad", our_grad, ref_grad, dtype)
        count += 1
    # more blocks than one program: the two-stage sum over several partial sums
    x = torch.randn(5000, dtype=torch.float64)
    y = (torch.rand(5000) < 0.5).double()
    ours, our_grad = _grad(CF.sigmoid_focal_loss, x, y, backend="triton")
    ref, ref_grad = _grad(CF.sigmoid_focal_loss, x, y, backend="reference")
    _check(failures, "multi-block value", ours, ref, torch.float64)
    _check(failures, "multi-block grad", our_grad, ref_grad, torch.float64)
    return failures, count + 1


def cross_entropy_cases():
    failures, count = [], 0
    grid = itertools.product(
        [(6, 5), (2, 3, 4, 2), (3, 5000)],  # one block, spatial rows, several blocks per row
        ["index", "probs"],
        [False, True],
        [0.0, 0.15],
        ["none", "mean"],
        [torch.float64, torch.float32],
    )
    for shape, targets, weighted, smoothing, reduction, dtype in grid:
        if dtype == torch.float32 and (weighted != (smoothing > 0) or reduction == "none"):
            continue  # float32: a quarter of the grid
        g = torch.Generator().manual_seed(count)
        n_classes = shape[1]
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        if targets == "index":
            t = torch.randint(0, n_classes, (shape[0], *shape[2:]), generator=g)
            t.view(-1)[::3] = -100
        else:
            t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1)
            t[1] = -100  # crossent's rule: a position whose targets all equal ignore_index
        w = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.2 if weighted else None
        ref, ref_grad = _grad(
            CF.cross_entropy,
            x,
            t,
            weight=w,
            label_smoothing=smoothing,
            reduction=reduction,
            backend="reference",
        )
        x = x.to(dtype)
        t = t.to(dtype) if targets == "probs" else t
        w = None if w is None else w.to(dtype)
        ours, our_grad = _grad(
            lambda x, t, **kw: K.cross_entropy_loss("triton", x, t, **kw),
            x,
            t,
            weight=w,
            ignore_index=-100,
            label_smoothing=smoothing,
            reduction=reduction,
        )
        label = f"ce-{shape}-{targets}-w{weighted}-s{smoothing}-{reduction}-{dtype}"
        _check(failures, label + " value", ours, ref.to(dtype), dtype)
        _check(failures, label + " grad", our_grad, ref_grad.to(dtype), dtype)
        count += 1
    # a single sample of size (C,), and an index outside [0, C): NaN, no out-of-bounds read
    x = torch.randn(9, dtype=torch.float64)
    for t in (torch.tensor(4), torch.softmax(torch.randn(9, dtype=torch.float64), 0)):
        ours, our_grad = _grad(CF.cross_entropy, x, t, label_smoothing=0.1, backend="triton")
        ref, ref_grad = _grad(CF.cross_entropy, x, t, label_smoothing=0.1, backend="reference")
        _check(failures, f"single {t.dtype} value", ours, ref, torch.float64)
        _check(failures, f"single {t.dtype} grad", our_grad, ref_grad, torch.float64)
    previous = crossent.set_value_checks(False)
    bad = CF.cross_entropy(
        torch.randn(3, 4), torch.tensor([0, 7, 1]), reduction="none", backend="triton"
    )
    crossent.set_value_checks(previous)
    if not (torch.isnan(bad[1]) and torch.isfinite(bad[[0, 2]]).all()):
        failures.append(f"out-of-range index: {bad}")
    return failures, count + 3


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("TRITON_INTERPRET=1 must be set")
        return 2
    family = argv[0] if argv else "binary"
    failures, count = {"binary": binary_cases, "cross_entropy": cross_entropy_cases}[family]()
    for line in failures:
        print(line)
    if failures:
        print(f"{len(failures)} failures in {count} cases")
        return 1
    print(f"{count} cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
