"""Every backend gives the same answer: the same cases run on "reference", "fused", "compiled"
and "triton" (the ``backend`` fixture of conftest.py, inside ``no_fallback``), each compared with
the reference path evaluated in float64 (or with torch where torch has the loss).

The first cases are disagreements once found by using the library as a new user would; each is
kept here so that it cannot come back. The rest are properties that every backend must share:
extreme logits, out-of-range targets, repeated backward, views and non-contiguous inputs, empty
tensors, narrow integer target dtypes.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent import functional as CF
from tests._helpers import assert_close
from tests.conftest import triton_runs_here

ROOT = pathlib.Path(__file__).resolve().parents[1]

# registry key -> (function, family, options that switch every feature of it on)
LOSSES = {
    "bce": (CF.binary_cross_entropy_with_logits, "binary", {}),
    "bce:probs": (CF.binary_cross_entropy, "binary_probs", {}),
    "focal": (CF.sigmoid_focal_loss, "binary", {"gamma": 2.0, "alpha": 0.25}),
    "focal:gamma=0.5": (CF.sigmoid_focal_loss, "binary", {"gamma": 0.5, "alpha": None}),
    "focal:probs": (CF.binary_focal_loss, "binary_probs", {"gamma": 2.0, "alpha": 0.25}),
    "asl": (CF.asymmetric_loss, "binary", {}),
    "poly1_focal": (CF.poly1_focal_loss, "binary", {"epsilon": 1.0}),
    "ce": (CF.cross_entropy, "softmax", {}),
    "ce:label_smoothing=0.1": (CF.cross_entropy, "softmax", {"label_smoothing": 0.1}),
    "softmax_focal": (CF.softmax_focal_loss, "softmax", {"gamma": 2.0}),
    "softmax_focal:alpha=0.25": (CF.softmax_focal_loss, "softmax", {"alpha": 0.25}),
    "poly1": (CF.poly1_cross_entropy, "softmax", {"epsilon": 1.0}),
}
BINARY = [k for k, v in LOSSES.items() if v[1].startswith("binary")]
SOFTMAX = [k for k, v in LOSSES.items() if v[1] == "softmax"]


def _inputs(name, shape=(5, 4), dtype=torch.float64, seed=0):
    """``(input, target)`` for loss ``name``: logits (probabilities for a probability form),
    multi-hot targets for the binary family, class indices for the softmax family."""
    _fn, family, _ = LOSSES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    if family == "binary_probs":
        x = torch.sigmoid(x)
    if family == "softmax":
        n_classes = shape[1]
        rows = (shape[0], *tuple(shape[2:]))
        target = torch.randint(0, n_classes, rows, generator=g)
    else:
        target = (torch.rand(shape, generator=g) < 0.4).double()
    return x.to(dtype), target


def _call(name, x, target, backend, **extra):
    fn, _, options = LOSSES[name]
    return fn(x, target, backend=backend, **{**options, **extra})


def _value_and_grad(name, x, target, backend, **extra):
    x = x.detach().clone().requires_grad_(True)
    loss = _call(name, x, target, backend, **extra)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def _skip_dtype(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("Triton's interpreter has no bfloat16")


# --------------------------------------------------------------------------------------------
# Disagreements once found between the backends (each must stay fixed)
# --------------------------------------------------------------------------------------------


@pytest.mark.compiled_subset()
def test_softmax_focal_number_alpha_without_ignore_index(backend):
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    got = crossent.softmax_focal_loss(x, t, alpha=0.25, ignore_index=None, backend=backend)
    ref = crossent.softmax_focal_loss(x, t, alpha=0.25, ignore_index=None, backend="reference")
    assert_close(got, ref)
    zero = crossent.softmax_focal_loss(x, t, alpha=0.0, ignore_index=None, backend=backend)
    assert zero.item() == 0.0


@pytest.mark.parametrize(
    "dtype, big", [(torch.float32, 3e38), (torch.float64, 1.7e308)], ids=["float32", "float64"]
)
@pytest.mark.parametrize("name", ["softmax_focal", "ce:label_smoothing=0.1", "poly1"])
@pytest.mark.parametrize("target_class", [0, 1])
@pytest.mark.compiled_subset(name=["softmax_focal"], dtype=[torch.float32])
def test_logits_further_apart_than_the_dtype_max_have_finite_gradients(
    backend, dtype, big, name, target_class
):
    # two logits of a row differ by more than the dtype's maximum; the reference is finite
    x = torch.tensor([[big, -big, 0.0]], dtype=dtype)
    t = torch.tensor([target_class])
    loss, grad = _value_and_grad(name, x, t, backend)
    ref_loss, ref_grad = _value_and_grad(name, x, t, "reference")
    assert torch.isfinite(grad).all(), grad
    assert_close(grad, ref_grad)
    assert_close(loss, ref_loss)
    if target_class == 0 and name == "softmax_focal":
        assert torch.isfinite(loss).all()  # the true loss is 0 there


@pytest.mark.parametrize("name", ["focal", "focal:probs", "poly1_focal"])
@pytest.mark.parametrize("bad", [1.5, -0.5, float("nan")])
@pytest.mark.compiled_subset(name=["focal"], bad=[1.5])
def test_focal_targets_outside_the_unit_interval_are_an_error(backend, name, bad):
    fn, family, _options = LOSSES[name]
    x = torch.tensor([0.7 if family == "binary_probs" else 3.0])
    with pytest.raises(ValueError, match=r"Expected `target` to hold values in \[0, 1\]"):
        fn(x, torch.tensor([bad]), backend=backend, gamma=0.5)
    # ... unless they are the ignore value
    out = fn(x, torch.tensor([-1.0]), backend=backend, gamma=0.5, ignore_index=-1)
    assert out.item() == 0.0


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.compiled_subset(name=["bce", "ce"], reduction=["mean"])
def test_repeated_backward_through_a_view_accumulates(backend, name, reduction):
    x0, target = _inputs(name, shape=(3, 4))
    base = x0.reshape(-1).clone().requires_grad_(True)
    loss = _call(name, base.view(3, 4), target, backend, reduction=reduction).sum()
    for _ in range(3):
        loss.backward(retain_graph=True)
    _, ref = _value_and_grad(name, x0, target, "reference", reduction=reduction)
    assert_close(base.grad, 3 * ref.reshape(-1))


@pytest.mark.compiled_subset()
def test_zero_classes_is_one_clear_error(backend):
    for fn in (CF.cross_entropy, CF.softmax_focal_loss, CF.poly1_cross_entropy):
        for checks in (True, False):
            previous = crossent.set_value_checks(checks)
            try:
                with pytest.raises(ValueError, match="at least one class along dimension 1"):
                    fn(torch.randn(2, 0), torch.zeros(2, dtype=torch.long), backend=backend)
                with pytest.raises(ValueError, match="at least one class along dimension 1"):
                    fn(torch.randn(2, 0), torch.rand(2, 0), backend=backend)
            finally:
                crossent.set_value_checks(previous)


@pytest.mark.parametrize("name", ["ce", "softmax_focal", "bce", "focal"])
@pytest.mark.compiled_subset(name=["ce", "bce"])
def test_an_ignore_index_a_narrow_target_cannot_hold_ignores_nothing(backend, name):
    # compared in int8, 300 would wrap to 44 and ignore the targets that hold 44
    fn, family, _ = LOSSES[name]
    x = torch.randn(2, 3, dtype=torch.float64)
    if family == "softmax":
        bad = torch.tensor([1, 44], dtype=torch.int8)
        with pytest.raises(ValueError, match=r"class indices in \[0, 2\].*but it holds 44"):
            fn(x, bad, ignore_index=300, backend=backend)
        t = torch.tensor([1, 2], dtype=torch.uint8)  # torch's default -100 and uint8 targets
        assert_close(fn(x, t, backend=backend), fn(x, t.long(), backend="reference"))
        return
    t = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.int8)
    got = fn(x, t, ignore_index=300, backend=backend)
    assert_close(got, fn(x, t.double(), backend="reference"))
    t[1, 1] = 44
    if name == "focal":
        with pytest.raises(ValueError, match="holds 44"):
            fn(x, t, ignore_index=300, backend=backend)
    else:  # BCE takes any target, as torch does: 44 is not ignored
        got = fn(x, t, ignore_index=300, backend=backend)
        assert_close(got, F.binary_cross_entropy_with_logits(x, t.double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.compiled_subset(dtype=[torch.float32])
def test_mean_and_sum_are_finite_when_the_result_is(backend, dtype, reduction):
    _skip_dtype(backend, dtype)
    big = torch.finfo(dtype).max / 2
    # every element's loss is finite, their sum is not representable, their mean is
    x = torch.tensor([big, -big, big, -big], dtype=dtype)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=dtype)
    got = crossent.binary_cross_entropy_with_logits(x, y, reduction=reduction, backend=backend)
    if reduction == "mean":
        assert torch.isfinite(got), got
        assert_close(got.double(), x.double().abs().max(), dtype=dtype)  # all elements equal
    else:
        assert got.item() == float("inf")  # the true sum exceeds the dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.compiled_subset(dtype=[torch.float32])
def test_smoothed_cross_entropy_beyond_the_float32_range_is_finite(backend, dtype):
    _skip_dtype(backend, dtype)
    # lse - x_j = 6e38 for two classes overflows float32, the smoothed loss (4e37) does not
    x = torch.tensor([[-3e38, -3e38, 3e38]], dtype=dtype, requires_grad=True)
    loss = crossent.cross_entropy(x, torch.tensor([2]), label_smoothing=0.1, backend=backend)
    exact = 0.1 / 3 * 2 * (x.detach().double()[0, 2] - x.detach().double()[0, 0])
    assert torch.isfinite(loss)
    assert_close(loss.double(), exact, dtype=dtype)
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["bce", "focal", "asl", "ce", "softmax_focal", "poly1"])
@pytest.mark.compiled_subset(name=["bce", "ce"])
def test_negative_class_weights_are_accepted_as_in_torch(backend, name):
    _fn, _family, _options = LOSSES[name]
    x, target = _inputs(name, shape=(6, 3))
    weight = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    got, got_grad = _value_and_grad(name, x, target, backend, weight=weight, reduction="sum")
    ref, ref_grad = _value_and_grad(name, x, target, "reference", weight=weight, reduction="sum")
    assert_close(got, ref)
    assert_close(got_grad, ref_grad)
    if name in ("bce", "ce"):
        torch_fn = F.binary_cross_entropy_with_logits if name == "bce" else F.cross_entropy
        assert_close(got, torch_fn(x, target, weight=weight, reduction="sum"))


# --------------------------------------------------------------------------------------------
# Properties every backend shares
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.compiled_subset(name=["bce", "focal", "ce"], dtype=[torch.float32])
def test_backends_agree_at_extreme_logits(backend, name, dtype):
    _fn, family, _ = LOSSES[name]
    big = {torch.float32: 1e30, torch.float64: 1e300}[dtype]
    if family == "binary_probs":
        x = torch.tensor([[0.0, 1.0, 1e-30, 1 - 1e-7], [0.5, 1e-45, 0.999, 0.25]], dtype=dtype)
        target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=dtype)
    else:
        x = torch.tensor([[big, -big, 0.0, 30.0], [-big, -1e4, 1e4, -30.0]], dtype=dtype)
        if family == "softmax":
            target = torch.tensor([1, 3])
        else:
            target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], dtype=dtype)
    for reduction in ("none", "mean"):
        loss, grad = _value_and_grad(name, x, target, backend, reduction=reduction)
        ref_loss, ref_grad = _value_and_grad(name, x, target, "reference", reduction=reduction)
        assert not torch.isnan(loss).any() and torch.isfinite(grad).all(), (loss, grad)
        assert_close(loss, ref_loss)
        assert_close(grad, ref_grad)


@pytest.mark.parametrize("y", [1.5, -0.5, 2.0])
@pytest.mark.compiled_subset(y=[1.5])
def test_bce_targets_outside_the_unit_interval_follow_torch(backend, y):
    # torch accepts them for BCE (the formula is linear in y); every backend follows
    x = torch.tensor([[3.0, -2.0, 0.5]], dtype=torch.float64)
    target = torch.full_like(x, y)
    loss, grad = _value_and_grad("bce", x, target, backend)
    xr = x.clone().requires_grad_(True)
    expected = F.binary_cross_entropy_with_logits(xr, target)
    expected.backward()
    assert_close(loss, expected.detach())
    assert_close(grad, xr.grad)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("layout", ["transposed", "strided", "expanded_target"])
@pytest.mark.compiled_subset(name=["bce", "ce"], layout=["transposed"])
def test_views_and_non_contiguous_inputs(backend, name, layout):
    _fn, family, _ = LOSSES[name]
    x, target = _inputs(name, shape=(4, 6))
    if layout == "transposed":
        x = x.t().contiguous().t()  # the same values, column-major
        if family != "softmax":
            target = target.t().contiguous().t()
    elif layout == "strided":
        wide, _ = _inputs(name, shape=(4, 12), seed=1)
        wide[:, ::2] = x
        x = wide[:, ::2]
    elif family != "softmax":
        target = target[:1].expand_as(x)
    assert not x.is_contiguous() or layout == "expanded_target"
    got, got_grad = _value_and_grad(name, x, target, backend, reduction="none")
    ref, ref_grad = _value_and_grad(
        name, x.contiguous(), target.contiguous(), "reference", reduction="none"
    )
    assert_close(got, ref)
    assert_close(got_grad, ref_grad)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.compiled_subset(name=["bce", "ce"], reduction=["mean"])
def test_empty_batches(backend, name, reduction):
    x, target = _inputs(name, shape=(0, 4))
    loss, grad = _value_and_grad(name, x, target, backend, reduction=reduction)
    ref, _ = _value_and_grad(name, x, target, "reference", reduction=reduction)
    assert loss.shape == ref.shape
    assert grad.shape == x.shape
    if reduction != "none":
        assert loss.item() == 0.0


@pytest.mark.parametrize("name", [*SOFTMAX, "bce", "focal", "asl"])
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32], ids=str)
@pytest.mark.compiled_subset(name=["bce", "ce"], dtype=[torch.int8])
def test_narrow_integer_targets(backend, name, dtype):
    x, target = _inputs(name, shape=(6, 4))
    ignore = 3 if dtype == torch.uint8 else -1
    if name in SOFTMAX:
        target = target.clone()
        target[2] = ignore
    else:
        target = target.clone()
        target[1, 1] = ignore
    got, got_grad = _value_and_grad(name, x, target.to(dtype), backend, ignore_index=ignore)
    ref, ref_grad = _value_and_grad(name, x, target, "reference", ignore_index=ignore)
    assert_close(got, ref)
    assert_close(got_grad, ref_grad)


# --------------------------------------------------------------------------------------------
# The triton cases, under the interpreter
# --------------------------------------------------------------------------------------------


FAMILY_SUITES = (
    "test_backends.py",
    "test_binary.py",
    "test_softmax.py",
    "test_softmax_options.py",
)


@pytest.mark.triton
@pytest.mark.parametrize("suite", FAMILY_SUITES)
def test_every_backend_case_under_the_triton_interpreter(suite):
    """The ``triton`` cases of a backend-parametrised suite, in a process with
    ``TRITON_INTERPRET=1`` (the variable must be set before triton is imported)."""
    pytest.importorskip("triton")
    if triton_runs_here():
        pytest.skip("the triton cases run in this process")
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        CROSSENT_TEST_ONLY_TRITON="1",
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "tests" / suite),
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            "-m",
            "triton",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and " failed" not in summary, tail
