"""The Triton kernels against the reference, run as ``python -m tests._helpers.triton_cases``.

tests/test_kernels.py starts it in a subprocess with ``TRITON_INTERPRET=1``: the variable must
be set before triton is imported, which another test in the same process may already have
done. Small CPU tensors only (the interpreter runs each program in numpy, slowly); no bfloat16
(the interpreter has none). Prints one line per failure and exits 1 if any; else prints
``N cases passed``.
"""

from __future__ import annotations

import inspect
import itertools
import os
import sys

import torch

import crossent
from crossent import functional as CF
from crossent._precision import grad_dtype
from crossent.kernels import _triton
from crossent.losses import AsymmetricOptions, SigmoidOptions, SoftmaxOptions
from crossent.losses import _reference as _softmax
from tests._helpers.tolerances import tolerance


def _grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


def _check(failures, label, ours, ref, dtype, rtol=None):
    """``ours`` against ``ref`` with the table's tolerance, or (``rtol``) relative only."""
    tol = tolerance(dtype) if rtol is None else {"rtol": rtol, "atol": 0.0}
    try:
        torch.testing.assert_close(ours, ref, **tol)
    except AssertionError as exc:
        failures.append(f"{label}: {str(exc).splitlines()[-2:]}")


BINARY = {
    "bce_logits": (CF.binary_cross_entropy_with_logits, False, {}),
    "bce_probs": (CF.binary_cross_entropy, True, {}),
    "focal_g2": (CF.sigmoid_focal_loss, False, {"gamma": 2.0, "alpha": 0.25}),
    "focal_g05": (CF.sigmoid_focal_loss, False, {"gamma": 0.5, "alpha": None}),
    "focal_g0": (CF.sigmoid_focal_loss, False, {"gamma": 0.0, "alpha": 0.25}),
    "focal_g3": (CF.sigmoid_focal_loss, False, {"gamma": 3.0, "alpha": None}),
    "binary_focal": (CF.binary_focal_loss, True, {"gamma": 1.5, "alpha": 0.6}),
    "binary_focal_g2": (CF.binary_focal_loss, True, {"gamma": 2.0, "alpha": None}),
    "poly1_focal": (CF.poly1_focal_loss, False, {"epsilon": -0.5, "gamma": 2.0, "alpha": 0.25}),
    "poly1_focal_g15": (CF.poly1_focal_loss, False, {"epsilon": 1.0, "gamma": 1.5, "alpha": None}),
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
    # probability inputs (computed in float64): exact to float32's tolerance also where the
    # gradient crosses 0 (soft targets put some of 8643 elements there)
    for name in ("bce_probs", "binary_focal", "binary_focal_g2"):
        fn, _, extra = BINARY[name]
        g = torch.Generator().manual_seed(count)
        x = torch.sigmoid(torch.randn(67, 129, generator=g, dtype=torch.float64) * 3).float()
        y = torch.rand(67, 129, generator=g).float()
        kwargs = dict(extra, label_smoothing=0.1, reduction="none")
        kwargs["pos_weight"] = torch.rand(129, generator=g) * 3 + 0.2
        ours, our_grad = _grad(fn, x, y, backend="triton", **kwargs)
        up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        exact, exact_grad = _grad(fn, x.double(), y.double(), backend="reference", **up)
        _check(failures, f"{name}-near-zero value", ours, exact.float(), torch.float32)
        _check(failures, f"{name}-near-zero grad", our_grad, exact_grad.float(), torch.float32)
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
        # one block, spatial rows, several blocks per row (float64; float32 at 40000 classes)
        [(6, 5), (2, 3, 4, 2), (3, 5000), (2, 40000)],
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
            lambda x, t, **kw: CF.cross_entropy(x, t, backend="triton", **kw),
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
    count += _leading_blocks_of_minus_inf(failures, CF.cross_entropy, {})
    return failures, count + 3


def _leading_blocks_of_minus_inf(failures, fn, options):
    """A row whose first blocks hold only -inf logits (masked classes): the online softmax
    has no finite maximum yet there, and must not form exp(-inf - -inf) = NaN."""
    x = torch.randn(2, 40000, dtype=torch.float64)
    x[:, :36000] = float("-inf")  # float32 blocks hold up to 32768 classes, float64 ones 2048
    t = torch.tensor([36700, 39999])
    ref, ref_grad = _grad(fn, x, t, reduction="none", backend="reference", **options)
    for dtype in (torch.float64, torch.float32):
        ours, our_grad = _grad(fn, x.to(dtype), t, reduction="none", backend="triton", **options)
        label = f"leading -inf blocks {fn.__name__} {options} {dtype}"
        _check(failures, label + " value", ours, ref.to(dtype), dtype)
        _check(failures, label + " grad", our_grad, ref_grad.to(dtype), dtype)
    return 2


# name -> (gamma, epsilon, alpha); "vec" is a per-class alpha tensor
SOFTMAX = {
    "focal_g2": (2.0, 0.0, None),
    "focal_g05": (0.5, 0.0, None),
    "focal_g2_alpha": (2.0, 0.0, 0.25),
    "focal_g05_alpha_vec": (0.5, 0.0, "vec"),
    "poly1_e1": (0.0, 1.0, None),
    "poly1_em05": (0.0, -0.5, None),
    "poly1_focal": (2.0, -0.5, None),
    "alpha_only": (0.0, 0.0, "vec"),
}


def _softmax_reference(x, t, *, weight, alpha, ignore_index, smoothing, gamma, epsilon):
    """Per-sample loss of crossent's reference path (float64 in, float64 out)."""
    common = dict(weight=weight, ignore_index=ignore_index, label_smoothing=smoothing)
    if epsilon == 0.0:
        fn, extra = CF.softmax_focal_loss, dict(gamma=gamma, alpha=alpha)
    elif gamma == 0.0 and alpha is None:
        fn, extra = CF.poly1_cross_entropy, dict(epsilon=epsilon)
    else:
        # no public function combines the two; the math both public functions call
        x, t, valid = _softmax.prepare_softmax_targets(x, t, class_dim=1, ignore_index=ignore_index)
        loss, _ = _softmax.softmax_family_loss(
            x,
            t,
            class_dim=1,
            valid=valid,
            weight=weight,
            alpha=alpha,
            gamma=gamma,
            epsilon=epsilon,
            label_smoothing=smoothing,
        )
        return loss
    if "backend" in inspect.signature(fn).parameters:
        common["backend"] = "reference"
    return fn(x, t, reduction="none", **common, **extra)


def _expected_denominator(t, probs, weight, ignore_index):
    if probs:
        return None if ignore_index is None else (t != ignore_index).any(1).sum().double()
    if ignore_index is None and weight is None:
        return None
    valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=bool)
    w_t = (
        torch.ones(t.shape, dtype=torch.float64)
        if weight is None
        else weight.double()[t.clamp_min(0)]
    )
    return torch.where(valid, w_t, 0.0).sum()


def _softmax_case(failures, label, x64, t, dtype, *, reduce=True, need_grad=True, tol=None, **opts):
    """One call of the Triton ``softmax_family`` against the float64 reference: the loss (per
    sample, or summed), the denominator, and the gradient of the summed loss."""
    weight, alpha = opts["weight"], opts["alpha"]
    probs = t.is_floating_point()
    x = x64.to(dtype)
    xr = x.double().requires_grad_(True)  # the reference sees the same rounded logits
    ref = _softmax_reference(xr, t.double() if probs else t, **opts)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    options = SoftmaxOptions(
        weight=None if weight is None else weight.to(dtype),
        alpha=alpha.to(dtype) if isinstance(alpha, torch.Tensor) else alpha,
        ignore_index=opts["ignore_index"],
        label_smoothing=opts["smoothing"] or None,
        gamma=opts["gamma"] or None,
        epsilon=opts["epsilon"] or None,
    )
    out, den, grad = _triton.softmax_family(
        x,
        t.to(dtype) if probs else t,
        options,
        mean_denominator=None,
        reduce=reduce,
        need_grad=need_grad,
    )
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    if reduce:
        _check(failures, label + " sum", out, ref.detach().sum().to(cdt), cdt)
        expected = _expected_denominator(t, probs, weight, opts["ignore_index"])
        if (den is None) != (expected is None):
            failures.append(f"{label}: denominator {den}, expected {expected}")
        elif den is not None:
            _check(failures, label + " denominator", den, expected.to(cdt), cdt)
    else:
        if out.dtype != dtype:
            failures.append(f"{label}: loss dtype {out.dtype}")
        _check(failures, label + " value", out, ref.detach().to(dtype), dtype, tol)
    if not need_grad:
        if grad is not None:
            failures.append(f"{label}: a gradient without need_grad")
        return
    if grad.dtype != grad_dtype(dtype):
        failures.append(f"{label}: gradient dtype {grad.dtype}")
    _check(failures, label + " grad", grad.to(dtype), ref_grad.to(dtype), dtype, tol)


def softmax_focal_cases():
    """Softmax focal loss / Poly-1 / alpha through the cross-entropy kernel's TERMS path."""
    failures, count = [], 0
    options = {
        # name: (shape, probability targets, weighted, smoothing)
        "plain": ((4, 5), False, False, 0.0),
        "weight": ((4, 5), False, True, 0.0),
        "smooth_nchw": ((2, 3, 2, 2), False, True, 0.1),
        "probs": ((4, 5), True, True, 0.0),
        "probs_smooth_nchw": ((2, 3, 2, 2), True, False, 0.1),
    }
    grid = itertools.product(
        SOFTMAX.items(), options.items(), [False, True], [torch.float64, torch.float32]
    )
    for (name, (gamma, epsilon, alpha)), (option, spec), reduce, dtype in grid:
        if reduce and (dtype == torch.float32 or option in ("plain", "probs_smooth_nchw")):
            continue  # sum = per-sample kernel + _sum_rows: float64, where denominators vary
        shape, probs, weighted, smoothing = spec
        g = torch.Generator().manual_seed(count)
        n_classes = shape[1]
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        if probs:
            t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1)
            t[1] = -100  # a position whose targets all equal ignore_index is ignored
        else:
            t = torch.randint(0, n_classes, (shape[0], *shape[2:]), generator=g)
            t.view(-1)[::4] = -100
        weight = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.2 if weighted else None
        if alpha == "vec":
            alpha = torch.rand(n_classes, generator=g, dtype=torch.float64)
        opts = dict(
            weight=weight,
            alpha=alpha,
            ignore_index=-100,
            smoothing=smoothing,
            gamma=gamma,
            epsilon=epsilon,
        )
        label = f"softmax-{name}-{option}-reduce{reduce}-{dtype}"
        _softmax_case(failures, label, x, t, dtype, reduce=reduce, **opts)
        count += 1
    plain = dict(weight=None, alpha=None, ignore_index=None, smoothing=0.0)
    g = torch.Generator().manual_seed(count)
    # float16 logits (float32 inside), nothing ignored; no gradient asked for
    x = torch.randn(8, 6, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 6, (8,), generator=g)
    for gamma, epsilon, smoothing in [(2.0, 0.0, 0.0), (0.5, 1.0, 0.1)]:
        opts = dict(plain, gamma=gamma, epsilon=epsilon, smoothing=smoothing)
        for reduce in (False, True):
            label = f"float16-g{gamma}-e{epsilon}-s{smoothing}-reduce{reduce}"
            _softmax_case(failures, label, x, t, torch.float16, reduce=reduce, **opts)
        _softmax_case(failures, label + " no grad", x, t, torch.float64, need_grad=False, **opts)
        count += 3
    # several blocks per row: C = 5000 (float64 blocks hold 2048 classes, float32 4096)
    x = torch.randn(2, 5000, generator=g, dtype=torch.float64) * 4
    x[0, 4321] = 30.0  # a dominant class in the last block: its 1 - p from the others' sum
    for target in (torch.tensor([4321, 17]), torch.softmax(x * 0.5, 1)):
        for dtype, (gamma, epsilon, smoothing) in itertools.product(
            [torch.float64, torch.float32], [(2.0, 0.0, 0.1), (0.5, -0.5, 0.0)]
        ):
            opts = dict(plain, gamma=gamma, epsilon=epsilon, smoothing=smoothing)
            label = f"multi-block-{target.dtype}-g{gamma}-e{epsilon}-s{smoothing}-{dtype}"
            _softmax_case(failures, label, x, target, dtype, reduce=False, **opts)
            count += 1
    # saturated rows: p_t = 1 to the last bit, p_t = 0, logits near float32's max
    x = torch.tensor([[1e4, -1e4, 0.0]] * 3 + [[-1e30, 1e30, 5.0]] * 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 2] * 2)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]] * 2, dtype=torch.float64)
    for target, smoothing, (gamma, epsilon), dtype in itertools.product(
        (t, y), (0.0, 0.1), [(2.0, 0.0), (0.5, 0.0), (0.0, 1.0)], [torch.float64, torch.float32]
    ):
        opts = dict(plain, gamma=gamma, epsilon=epsilon, smoothing=smoothing)
        label = f"saturated-{target.dtype}-g{gamma}-e{epsilon}-s{smoothing}-{dtype}"
        _softmax_case(failures, label, x, target, dtype, reduce=False, **opts)
        count += 1
    # confident rows in float32 (1 - p of the top class down to 3e-7, far below the float32
    # table's atol): every value and gradient element to 2e-5 relative of the float64 reference,
    # which only an exact 1 - p and log(1 - p) achieve (1 - rounded p is off by up to 10%)
    x = torch.tensor(
        [[12.0, 0.0, -1.0, 2.0], [0.5, 15.0, 1.0, -3.0], [9.0, 1.0, 9.5, 0.0], [-2, 0, 1, 14]],
        dtype=torch.float64,
    )
    t = torch.tensor([0, 1, 0, 2])
    y = torch.softmax(torch.tensor([[5.0, 0, 0, 0], [0, 4, 0, 1], [1, 0, 3, 0], [0, 0, 0, 6]]), 1)
    for target, smoothing, (gamma, epsilon) in itertools.product(
        (t, y.double()), (0.0, 0.1), [(2.0, 0.0), (0.5, 0.0), (0.0, 1.0), (0.5, -0.5)]
    ):
        opts = dict(plain, gamma=gamma, epsilon=epsilon, smoothing=smoothing)
        label = f"confident-{target.dtype}-g{gamma}-e{epsilon}-s{smoothing}"
        _softmax_case(failures, label, x, target, torch.float32, reduce=False, tol=2e-5, **opts)
        count += 1
    # end to end through the public functions (dispatcher, "mean", autograd, a (C,) input)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    t = torch.tensor([0, 3, -100, 1, 2])
    alpha = torch.rand(4, generator=g, dtype=torch.float64)
    calls = [
        (CF.softmax_focal_loss, x, t, dict(gamma=2.0, alpha=alpha, label_smoothing=0.1)),
        (CF.softmax_focal_loss, x[0], torch.softmax(x[1], 0), dict(gamma=0.5, alpha=0.25)),
        (CF.poly1_cross_entropy, x, t, dict(epsilon=-0.5, weight=alpha + 0.5)),
    ]
    for fn, x, t, kwargs in calls:
        for reduction in ("mean", "none"):
            ours, our_grad = _grad(fn, x, t, reduction=reduction, backend="triton", **kwargs)
            ref, ref_grad = _grad(fn, x, t, reduction=reduction, backend="reference", **kwargs)
            label = f"public-{fn.__name__}-{tuple(x.shape)}-{reduction}"
            _check(failures, label + " value", ours, ref, torch.float64)
            _check(failures, label + " grad", our_grad, ref_grad, torch.float64)
            count += 1
    # an index outside [0, C) (value checks off): NaN for that sample, no out-of-bounds read
    for smoothing in (0.0, 0.1):
        x = torch.randn(3, 4, generator=g)
        options = SoftmaxOptions(
            alpha=0.5, label_smoothing=smoothing or None, gamma=2.0, epsilon=1.0
        )
        loss, _, grad = _triton.softmax_family(
            x,
            torch.tensor([0, 7, 1]),
            options,
            mean_denominator=None,
            reduce=False,
            need_grad=True,
        )
        finite = torch.isfinite(loss[[0, 2]]).all() and torch.isfinite(grad[[0, 2]]).all()
        if not (torch.isnan(loss[1]) and torch.isnan(grad[1]).all() and finite):
            failures.append(f"out-of-range index, smoothing {smoothing}: {loss}, {grad}")
        count += 1
    count += _leading_blocks_of_minus_inf(failures, CF.softmax_focal_loss, {"gamma": 2.0})
    count += _leading_blocks_of_minus_inf(failures, CF.poly1_cross_entropy, {"epsilon": 1.0})
    return failures, count


def _call(mean_denominator):
    return dict(mean_denominator=mean_denominator, reduce=True, need_grad=True)


def scale_cases():
    """The backward scale kernel (in place, skipped where the incoming gradient is exactly 1)
    and a mean's denominator folded into the forward kernels (a number, or a 0-dim tensor)."""
    failures, count = [], 0
    g = torch.Generator().manual_seed(11)
    for n, dtype, factor in itertools.product(
        (0, 1, 4095, 4097, 10_000),
        (torch.float32, torch.float64, torch.float16),
        (1.0, 0.5, -3.0),
    ):
        grad = torch.randn(n, generator=g).to(dtype)
        before = grad.clone()
        out = _triton.scale_(grad, torch.tensor(factor))
        expected = (before.double() * factor).to(dtype)
        label = f"scale_ n={n} {dtype} by {factor}"
        if out is not grad:
            failures.append(f"{label}: not in place")
        elif factor == 1.0 and not torch.equal(grad, before):
            failures.append(f"{label}: the buffer changed")
        else:
            _check(failures, label, grad, expected, dtype)
        count += 1

    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(6, 5, generator=g) < 0.3).double()
    t = torch.randint(0, 5, (6,), generator=g)
    t[2] = -100
    calls = {
        "sigmoid": lambda den: _triton.sigmoid_family(
            x, y, SigmoidOptions(gamma=2.0, alpha=0.25), **_call(den)
        ),
        "asymmetric": lambda den: _triton.asymmetric(
            x, y, AsymmetricOptions(gamma_pos=1.0, gamma_neg=4.0, clip=0.05), **_call(den)
        ),
        "cross_entropy": lambda den: _triton.cross_entropy(
            x, t, SoftmaxOptions(ignore_index=-100), **_call(den)
        ),
        "softmax_focal": lambda den: _triton.softmax_family(
            x,
            t,
            SoftmaxOptions(alpha=0.25, ignore_index=-100, label_smoothing=0.1, gamma=2.0),
            **_call(den),
        ),
    }
    for (name, call), den in itertools.product(
        calls.items(), (7.0, torch.tensor(5.0, dtype=torch.float64))
    ):
        total, _, grad = call(None)
        mean, _, scaled = call(den)
        label = f"{name}, mean denominator {den!r}"
        _check(failures, label + " loss", mean, total / den, torch.float64)
        _check(failures, label + " grad", scaled, grad / den, torch.float64)
        count += 1

    # through the public functions: a folded mean and backward's scale kernel
    y_ignored = y.clone()
    y_ignored[0, :2] = -1.0
    for name, fn, target, kwargs in (
        ("bce", CF.binary_cross_entropy_with_logits, y, {}),
        ("focal_ignore", CF.sigmoid_focal_loss, y_ignored, {"ignore_index": -1}),
        ("ce", CF.cross_entropy, t, {}),
        ("ce_no_ignore", CF.cross_entropy, t.clamp_min(0), {"ignore_index": None}),
        ("softmax_focal", CF.softmax_focal_loss, t, {"gamma": 2.0}),
    ):
        for upstream in (1.0, 2.5):
            grads = []
            for backend in ("triton", "reference"):
                xx = x.clone().requires_grad_(True)
                (fn(xx, target, backend=backend, **kwargs) * upstream).backward()
                grads.append(xx.grad)
            _check(failures, f"{name} backward x {upstream}", grads[0], grads[1], torch.float64)
            count += 1
    return failures, count


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("TRITON_INTERPRET=1 must be set")
        return 2
    family = argv[0] if argv else "binary"
    families = {
        "binary": binary_cases,
        "cross_entropy": cross_entropy_cases,
        "softmax_focal": softmax_focal_cases,
        "scale": scale_cases,
    }
    failures, count = families[family]()
    for line in failures:
        print(line)
    if failures:
        print(f"{len(failures)} failures in {count} cases")
        return 1
    print(f"{count} cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
