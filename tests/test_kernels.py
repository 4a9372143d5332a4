"""Fused kernels: equal to the reference for every option, lean in memory, dispatched correctly.

* every loss and option through the eager closed form (``backend="fused"``) against the
  reference evaluated in float64 -- the exact value -- at the dtype tolerance table, gradients
  included; cross entropy against ``torch.nn.functional.cross_entropy``;
* the compiled path (a few compiles in all) against the eager closed form, and no recompile
  for a new batch size or new option values;
* memory and aliasing: only the gradient is saved, it becomes ``input.grad`` without a copy,
  the caller's tensors are never written, ``retain_graph`` works;
* the Triton kernels under ``TRITON_INTERPRET=1`` (in a subprocess: the variable must be set
  before triton is imported).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent import functional as CF
from crossent import kernels as K
from crossent.kernels import _dispatch
from crossent.losses import FOCAL
from tests._helpers import assert_as_exact_as, assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name -> (function, takes probabilities, loss-specific options)
VARIANTS = {
    "bce_logits": (CF.binary_cross_entropy_with_logits, False, {}),
    "bce_probs": (CF.binary_cross_entropy, True, {}),
    "focal_g2_a25": (CF.sigmoid_focal_loss, False, {"gamma": 2.0, "alpha": 0.25}),
    "focal_g05": (CF.sigmoid_focal_loss, False, {"gamma": 0.5, "alpha": None}),
    "focal_g3_a70": (CF.sigmoid_focal_loss, False, {"gamma": 3.0, "alpha": 0.7}),
    "focal_g0": (CF.sigmoid_focal_loss, False, {"gamma": 0.0, "alpha": 0.4}),
    "binary_focal_g2": (CF.binary_focal_loss, True, {"gamma": 2.0, "alpha": 0.25}),
    "binary_focal_g15": (CF.binary_focal_loss, True, {"gamma": 1.5, "alpha": None}),
    "poly1_focal": (CF.poly1_focal_loss, False, {"epsilon": 1.0, "gamma": 2.0, "alpha": 0.25}),
    "poly1_focal_neg": (CF.poly1_focal_loss, False, {"epsilon": -0.5, "gamma": 0.5, "alpha": None}),
    "asl_default": (CF.asymmetric_loss, False, {}),
    "asl_noclip": (CF.asymmetric_loss, False, {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": None}),
    "asl_clip02": (CF.asymmetric_loss, False, {"gamma_pos": 0.5, "gamma_neg": 2.5, "clip": 0.2}),
}
OPTIONS = ("plain", "weight_class", "weight_full", "pos_weight", "smoothing", "ignore", "all")
SHAPE = (6, 5)


def _case(variant, option, dtype, soft, *, shape=SHAPE, scale=3.0, seed=0):
    """Inputs and keyword options of one test case, in float64 (cast by the caller)."""
    fn, probs, extra = VARIANTS[variant]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if fn is CF.asymmetric_loss and extra.get("clip", 0.05):
        # keep p away from the clip margin's kink at p == clip, as test_binary's gradcheck does
        x = x + 0.5 * x.sign()
    if probs:
        x = torch.sigmoid(x)
    if soft:
        y = torch.rand(shape, generator=g, dtype=torch.float64)
    else:
        y = (torch.rand(shape, generator=g) < 0.4).double()
    kwargs = dict(extra)
    if option in ("weight_class", "all"):
        kwargs["weight"] = torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.5
    if option == "weight_full":
        kwargs["weight"] = torch.rand(shape, generator=g, dtype=torch.float64) * 2
    if option in ("pos_weight", "all") and fn is not CF.asymmetric_loss:
        kwargs["pos_weight"] = torch.rand(shape[-1], generator=g, dtype=torch.float64) * 3 + 0.2
    if option in ("smoothing", "all"):
        kwargs["label_smoothing"] = 0.1
    if option in ("ignore", "all"):
        y = torch.where(torch.rand(shape, generator=g) < 0.25, -1.0, y)
        kwargs["ignore_index"] = -1
    cast = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return fn, x.to(dtype), y.to(dtype), cast


def _value_and_grad(fn, x, y, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, y, **kwargs)
    # a non-uniform incoming gradient, so backward's scaling is checked too
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device)
    grad_out = grad_out.reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


def _exact(fn, x, y, **kwargs):
    """The reference path in float64 on the same (rounded) inputs, cast back."""
    up = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    out, grad = _value_and_grad(fn, x.double(), y.double(), backend="reference", **up)
    return out.to(x.dtype), grad.to(x.dtype)


def _check_against_reference(fn, x, y, ours, our_grad, **kwargs):
    exact, exact_grad = _exact(fn, x, y, **kwargs)
    if x.dtype == torch.float64:
        assert_close(ours, exact)
        assert_close(our_grad, exact_grad)
        return
    ref, ref_grad = _value_and_grad(fn, x, y, backend="reference", **kwargs)
    assert_as_exact_as(ours, exact, ref)
    assert_as_exact_as(our_grad, exact_grad, ref_grad)


# --------------------------------------------------------------------------------------------
# The closed form equals the reference, every option, value and gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_equals_reference(variant, option, reduction, soft, dtype):
    fn, x, y, kwargs = _case(variant, option, dtype, soft)
    ours, our_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="fused", **kwargs)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    _check_against_reference(fn, x, y, ours, our_grad, reduction=reduction, **kwargs)


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("option", ["pos_weight", "smoothing", "weight_full", "all"])
@pytest.mark.parametrize("variant", ["bce_probs", "binary_focal_g2", "binary_focal_g15"])
def test_probability_gradients_near_their_zero_are_exact(variant, option, reduction):
    # d loss / dp crosses 0 at p = w y / (1 - y + w y); soft targets put some of 8643 elements
    # close to it, where a float32 evaluation (torch's too) is hundreds of ulps off. The
    # closed form computes probability inputs in float64: the table's float32 tolerance
    # against the exact value, on every element.
    fn, x, y, kwargs = _case(variant, option, torch.float32, soft=True, shape=(67, 129))
    ours, our_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="fused", **kwargs)
    exact, exact_grad = _exact(fn, x, y, reduction=reduction, **kwargs)
    assert ours.dtype == our_grad.dtype == torch.float32
    assert_close(ours, exact)
    assert_close(our_grad, exact_grad)


def test_float16_mean_gradient_survives_loss_scaling():
    # A mean over 2048 rows puts most of d loss / dx below float16's normal range. Stored
    # that way (as it was) and multiplied by a loss scale afterwards, a third of the entries
    # were 0 and the gradient 1.4% off; the fused path keeps float32 until the scale is in.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2048, 1000, generator=g) * 2).half()
    t = torch.randint(0, 1000, (2048,), generator=g)

    def scaled_grad(backend, dtype=torch.float16, scale=8192.0):
        xx = x.to(dtype).clone().requires_grad_(True)
        (CF.cross_entropy(xx, t, backend=backend).float() * scale).backward()
        assert xx.grad.dtype == dtype
        return xx.grad.double() / scale

    exact = scaled_grad("reference", torch.float64, 1.0)
    errors, zeros = {}, {}
    for backend in ("fused", "reference"):
        grad = scaled_grad(backend)
        zeros[backend] = int((grad == 0).sum())  # entries below float16's range even scaled
        errors[backend] = float((grad - exact).abs().sum() / exact.abs().sum())
    assert zeros["fused"] <= zeros["reference"] <= 4
    assert errors["fused"] <= 1.01 * errors["reference"] < 1e-3


def test_float16_elementwise_gradient_beyond_65504_is_scaled_first():
    # reduction="none": d loss / dp = -w / p = -83000 overflows float16 on its own, but the
    # incoming gradient 0.5 brings it to -41500; the stored gradient is float32.
    p = torch.tensor([2.4e-5, 0.5], dtype=torch.float16, requires_grad=True)
    y = torch.tensor([1.0, 0.0], dtype=torch.float16)
    pw = torch.tensor(2.0, dtype=torch.float16)
    for backend in ("fused", "reference"):
        p.grad = None
        loss = CF.binary_cross_entropy(p, y, pos_weight=pw, reduction="none", backend=backend)
        loss.backward(torch.full_like(loss, 0.5))
        assert p.grad.dtype == torch.float16 and torch.isfinite(p.grad).all()
        expected = torch.tensor([-0.5 * 2 / 2.4e-5, 1.0])
        torch.testing.assert_close(p.grad.float(), expected, rtol=2e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_half_inputs(variant, reduction, dtype):
    fn, x, y, kwargs = _case(variant, "all", dtype, soft=True)
    ours, our_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="fused", **kwargs)
    ref, ref_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="reference", **kwargs)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_global_mean_outside_a_process_group_is_mean(variant):
    fn, x, y, kwargs = _case(variant, "all", torch.float64, soft=True)
    ours, our_grad = _value_and_grad(fn, x, y, reduction="global_mean", backend="fused", **kwargs)
    ref, ref_grad = _exact(fn, x, y, reduction="mean", **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


EXTREMES = {
    torch.float64: [-1e300, -1e4, -745.0, -40.0, -1e-300, 0.0, 40.0, 745.0, 1e4, 1e300],
    torch.float32: [-1e30, -1e4, -104.0, -88.0, -17.0, 0.0, 17.0, 88.0, 104.0, 1e4, 1e30],
}


@pytest.mark.parametrize("dtype", list(EXTREMES), ids=str)
@pytest.mark.parametrize(
    "variant", ["bce_logits", "focal_g2_a25", "focal_g05", "asl_default", "asl_noclip"]
)
def test_fused_equals_reference_at_extreme_logits(variant, dtype):
    fn, _, _, kwargs = _case(variant, "plain", dtype, soft=False)
    values = torch.tensor(EXTREMES[dtype], dtype=dtype)
    x = values.repeat_interleave(3)
    y = torch.tensor([0.0, 1.0, 0.3], dtype=dtype).repeat(len(values))
    ours, our_grad = _value_and_grad(fn, x, y, reduction="none", backend="fused", **kwargs)
    assert torch.isfinite(ours).all() and torch.isfinite(our_grad).all()
    _check_against_reference(fn, x, y, ours, our_grad, reduction="none", **kwargs)


@pytest.mark.parametrize("p_value", [0.0, 1.0, 1e-45, 1 - 2**-24, 0.5])
@pytest.mark.parametrize("y_value", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("variant", ["bce_probs", "binary_focal_g2", "binary_focal_g15"])
def test_probability_forms_equal_reference_at_the_clamp(variant, p_value, y_value):
    fn, _, _, kwargs = _case(variant, "plain", torch.float32, soft=False)
    p = torch.tensor([p_value])
    y = torch.tensor([y_value])
    ours, our_grad = _value_and_grad(fn, p, y, reduction="none", backend="fused", **kwargs)
    ref, ref_grad = _value_and_grad(fn, p, y, reduction="none", backend="reference", **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_everything_ignored_is_zero_with_zero_gradient(variant):
    fn, x, _, kwargs = _case(variant, "plain", torch.float32, soft=False)
    y = torch.full_like(x, -1.0)
    out, grad = _value_and_grad(fn, x, y, ignore_index=-1, backend="fused", **kwargs)
    assert out.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_integer_and_bool_targets():
    _, x, y, _ = _case("focal_g2_a25", "plain", torch.float32, soft=False)
    expected = CF.sigmoid_focal_loss(x, y, backend="reference")
    for target in (y.long(), y.bool(), y.to(torch.uint8)):
        assert_close(CF.sigmoid_focal_loss(x, target, backend="fused"), expected)


def test_non_contiguous_input_and_broadcast_weights():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, 3, 2, generator=g, dtype=torch.float64)
    x = base.transpose(1, 2)  # (4, 3, 6, 2), non-contiguous
    y = (torch.rand(x.shape, generator=g) < 0.5).double()
    kwargs = dict(
        weight=torch.rand(3, 1, 1, generator=g, dtype=torch.float64),
        pos_weight=torch.rand(6, 1, generator=g, dtype=torch.float64) + 0.5,
        gamma=1.5,
    )
    ours, grad = _value_and_grad(CF.sigmoid_focal_loss, x, y, backend="fused", **kwargs)
    ref, ref_grad = _value_and_grad(CF.sigmoid_focal_loss, x, y, backend="reference", **kwargs)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("weights", ["none", "full_and_per_class"])
def test_large_eager_inputs_run_in_slices(weights, reduction):
    # more than one slice of the eager closed form: same values, one gradient buffer
    g = torch.Generator().manual_seed(3)
    shape = (301, 250)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    y = torch.where(
        torch.rand(shape, generator=g) < 0.1, -1.0, torch.rand(shape, generator=g).double()
    )
    kwargs = dict(gamma=1.5, ignore_index=-1, label_smoothing=0.05, reduction=reduction)
    if weights != "none":
        kwargs["weight"] = torch.rand(shape, generator=g, dtype=torch.float64)
        kwargs["pos_weight"] = torch.rand(250, generator=g, dtype=torch.float64) + 0.5
    assert x.numel() > _dispatch._EAGER_CHUNK
    with _SavedRecorder() as rec:
        ours, grad = _value_and_grad(CF.sigmoid_focal_loss, x, y, backend="fused", **kwargs)
    assert [n for n, _ in rec.saved if n > 1] == [x.numel()]
    ref, ref_grad = _value_and_grad(CF.sigmoid_focal_loss, x, y, backend="reference", **kwargs)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    t = torch.randint(0, 250, (301,), generator=g)
    t[::7] = -100
    w = torch.rand(250, generator=g, dtype=torch.float64)
    ours, grad = _ce_value_and_grad(
        CF.cross_entropy, x, t, weight=w, label_smoothing=0.1, reduction=reduction, backend="fused"
    )
    ref, ref_grad = _ce_value_and_grad(
        F.cross_entropy, x, t, weight=w, label_smoothing=0.1, reduction=reduction
    )
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


def test_gradcheck_through_the_fused_node():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64)

    def fn(x):
        return CF.sigmoid_focal_loss(x, y, gamma=1.5, weight=w, reduction="none", backend="fused")

    # gradcheck backpropagates several times through one graph: retain_graph's copy path
    assert torch.autograd.gradcheck(fn, (x,))


# --------------------------------------------------------------------------------------------
# Cross entropy: the closed form against torch.nn.functional.cross_entropy
# --------------------------------------------------------------------------------------------


def _ce_case(shape, targets, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_classes = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    if targets == "index":
        t = torch.randint(0, n_classes, (shape[0], *shape[2:]), generator=g)
        t.view(-1)[::4] = -100
    else:
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, 1).to(dtype)
    w = torch.rand(n_classes, generator=g, dtype=torch.float64).to(dtype) + 0.2
    return x, t, w


def _ce_value_and_grad(fn, x, t, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, t, **kwargs)
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device)
    grad_out = grad_out.reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


def _ce_fused(path):
    def fn(x, t, weight=None, label_smoothing=0.0, reduction="mean"):
        with K.no_fallback():
            return CF.cross_entropy(
                x,
                t,
                weight=weight,
                ignore_index=-100,
                label_smoothing=label_smoothing,
                reduction=reduction,
                backend=path,
            )

    return fn


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("targets", ["index", "probs"])
@pytest.mark.parametrize("shape", [(9, 7), (3, 4, 5, 2)], ids=["NC", "NCHW"])
def test_fused_cross_entropy_equals_torch(shape, targets, weighted, smoothing, reduction, dtype):
    x, t, w = _ce_case(shape, targets, dtype)
    kwargs = dict(weight=w if weighted else None, label_smoothing=smoothing, reduction=reduction)
    ours, our_grad = _ce_value_and_grad(_ce_fused("fused"), x, t, **kwargs)
    up = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    t64 = t.double() if t.is_floating_point() else t
    exact, exact_grad = _ce_value_and_grad(F.cross_entropy, x.double(), t64, **up)
    ref, ref_grad = _ce_value_and_grad(F.cross_entropy, x, t, **kwargs)  # torch, same dtype
    assert ours.dtype == dtype and our_grad.dtype == dtype
    assert_as_exact_as(ours, exact.to(dtype), ref)
    assert_as_exact_as(our_grad, exact_grad.to(dtype), ref_grad)


def _public_ce_case(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (6,) if kind.startswith("single") else (7, 5, 3)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    if kind.endswith("index"):
        t = torch.randint(0, n_classes, shape[:0] if len(shape) == 1 else (7, 3), generator=g)
        if len(shape) > 1:
            t[::3, 1] = -100
    else:
        t = torch.softmax(
            torch.randn(shape, generator=g, dtype=torch.float64), -1 if len(shape) == 1 else 1
        )
        if len(shape) > 1:
            t[2, :, 1] = -100  # an ignored position: every target entry is ignore_index
    w = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.3
    return x, t, w


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "global_mean"])
@pytest.mark.parametrize("options", ["plain", "weight", "smoothing", "both"])
@pytest.mark.parametrize("kind", ["index", "probs", "single_index", "single_probs"])
def test_public_cross_entropy_fused_equals_reference(kind, options, reduction, dtype):
    x, t, w = _public_ce_case(kind)
    kwargs = dict(reduction=reduction)
    if options in ("weight", "both"):
        kwargs["weight"] = w.to(dtype)
    if options in ("smoothing", "both"):
        kwargs["label_smoothing"] = 0.2
    x, t = x.to(dtype), (t.to(dtype) if t.is_floating_point() else t)
    ours, our_grad = _ce_value_and_grad(CF.cross_entropy, x, t, backend="fused", **kwargs)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    ref, ref_grad = _ce_value_and_grad(CF.cross_entropy, x, t, backend="reference", **kwargs)
    up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    t64 = t.double() if t.is_floating_point() else t
    exact, exact_grad = _ce_value_and_grad(
        CF.cross_entropy, x.double(), t64, backend="reference", **up
    )
    assert_as_exact_as(ours, exact.to(dtype), ref)
    assert_as_exact_as(our_grad, exact_grad.to(dtype), ref_grad)


def test_focal_gamma0_and_poly_epsilon0_take_the_cross_entropy_kernel():
    x, t, w = _public_ce_case("index")
    x.requires_grad_(True)
    # "fused" named: "auto" computes an input this small on the small path (the same kernel
    # choice there: ATen's cross entropy, tests/test_small.py)
    for loss in (
        CF.softmax_focal_loss(x, t, gamma=0.0, alpha=None, weight=w, backend="fused"),
        CF.poly1_cross_entropy(x, t, epsilon=0.0, weight=w, backend="fused"),
    ):
        assert _uses_fused_node(loss)
        assert torch.equal(loss, CF.cross_entropy(x, t, weight=w, backend="fused"))


# name -> (function, loss-specific options): the softmax focal and Poly-1 kernel
SOFTMAX_FAMILY = {
    "focal_g2": (CF.softmax_focal_loss, {"gamma": 2.0}),
    "focal_g05_alpha_per_class": (
        CF.softmax_focal_loss,
        {"gamma": 0.5, "alpha": torch.tensor([0.2, 0.9, 0.0, 1.5, 0.4, 0.7])},
    ),
    "focal_g3_alpha_number": (CF.softmax_focal_loss, {"gamma": 3.0, "alpha": 0.25}),
    "focal_g0_alpha_number": (CF.softmax_focal_loss, {"gamma": 0.0, "alpha": 0.6}),
    "poly1_eps2": (CF.poly1_cross_entropy, {"epsilon": 2.0}),
    "poly1_eps_neg": (CF.poly1_cross_entropy, {"epsilon": -0.5}),
}


def _family_kwargs(loss, options, dtype, w):
    fn, kwargs = SOFTMAX_FAMILY[loss]
    n_classes = w.numel()
    kwargs = {
        k: v[:n_classes].to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
    }
    if options in ("weight", "both"):
        kwargs["weight"] = w.to(dtype)
    if options in ("smoothing", "both"):
        kwargs["label_smoothing"] = 0.2
    return fn, kwargs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("options", ["plain", "weight", "smoothing", "both"])
@pytest.mark.parametrize("kind", ["index", "probs", "single_index"])
@pytest.mark.parametrize("loss", SOFTMAX_FAMILY)
def test_fused_softmax_focal_and_poly1_equal_reference(loss, kind, options, reduction, dtype):
    x, t, w = _public_ce_case(kind)
    fn, kwargs = _family_kwargs(loss, options, dtype, w)
    kwargs["reduction"] = reduction
    x, t = x.to(dtype), (t.to(dtype) if t.is_floating_point() else t)
    ours, our_grad = _ce_value_and_grad(fn, x, t, backend="fused", **kwargs)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    ref, ref_grad = _ce_value_and_grad(fn, x, t, backend="reference", **kwargs)
    up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    t64 = t.double() if t.is_floating_point() else t
    exact, exact_grad = _ce_value_and_grad(fn, x.double(), t64, backend="reference", **up)
    assert_as_exact_as(ours, exact.to(dtype), ref)
    assert_as_exact_as(our_grad, exact_grad.to(dtype), ref_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("loss", ["focal_g2", "focal_g05_alpha_per_class", "poly1_eps2"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_softmax_family_at_saturated_rows(loss, smoothing, dtype):
    # p_t rounds to 1 (1 - p_t only from the other classes' sum), to 0, and a -inf logit
    x = torch.tensor(
        [
            [1e4, -1e4, 0.0, 1.0, 2.0, 3.0],
            [-1e30, 1e30, 5.0, 0.0, 0.0, 0.0],
            [88.0, 89.0, -88.0, 0.0, 1.0, -1.0],
            [30.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [float("-inf"), 2.0, 1.0, 0.0, 0.0, 0.0],
        ],
        dtype=dtype,
    )
    t = torch.tensor([0, 1, 2, 0, 1])
    fn, kwargs = _family_kwargs(loss, "plain", dtype, torch.ones(6))
    kwargs.update(label_smoothing=smoothing, reduction="none")
    if smoothing:  # smoothing gives the -inf class target mass: an infinite loss, as in torch
        x, t = x[:4], t[:4]
    ours, grad = _ce_value_and_grad(fn, x, t, backend="fused", **kwargs)
    ref, ref_grad = _ce_value_and_grad(fn, x, t, backend="reference", **kwargs)
    up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    exact, exact_grad = _ce_value_and_grad(fn, x.double(), t, backend="reference", **up)
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
    # the float32 reference differentiates log(1 - p_t) through a logsumexp: at p_t = 1e-77
    # its gradient is off by 354 x rounding; the closed form is not (compare with float64)
    assert_as_exact_as(ours, exact.to(dtype), ref)
    assert_as_exact_as(grad, exact_grad.to(dtype), ref_grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss", ["focal_g2", "poly1_eps2"])
def test_fused_softmax_family_half(loss, dtype):
    x, t, w = _ce_case((8, 6), "index", dtype)
    fn, kwargs = _family_kwargs(loss, "both", dtype, w)
    ours, our_grad = _ce_value_and_grad(fn, x, t, backend="fused", **kwargs)
    up = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    ref, ref_grad = _ce_value_and_grad(fn, x.float(), t, backend="reference", **up)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    assert_close(ours, ref.to(dtype))
    assert_close(our_grad, ref_grad.to(dtype))


@pytest.mark.parametrize("loss", ["focal_g2", "poly1_eps2"])
def test_fused_softmax_family_all_ignored_is_zero_not_nan(loss):
    fn, kwargs = SOFTMAX_FAMILY[loss]
    x = torch.randn(4, 3, requires_grad=True)
    loss = fn(x, torch.full((4,), -100), backend="fused", **kwargs)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_softmax_family_saves_only_the_gradient():
    x = torch.randn(16, 6, requires_grad=True)
    t = torch.randint(0, 6, (16,))
    for fn, kwargs in SOFTMAX_FAMILY.values():
        with _SavedRecorder() as rec:
            loss = fn(x, t, label_smoothing=0.1, backend="fused", **kwargs)
        assert [n for n, _ in rec.saved if n > 1] == [x.numel()]
        assert _uses_fused_node(loss)
        x.grad = None
        loss.backward()
        assert x.grad.data_ptr() == rec.saved[0][1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fused_cross_entropy_half(dtype):
    x, t, w = _ce_case((8, 6), "index", dtype)
    ours, our_grad = _ce_value_and_grad(_ce_fused("fused"), x, t, weight=w, label_smoothing=0.1)
    ref, ref_grad = _ce_value_and_grad(
        F.cross_entropy, x.float(), t, weight=w.float(), label_smoothing=0.1
    )
    assert ours.dtype == dtype and our_grad.dtype == dtype
    assert_close(ours, ref.to(dtype))
    assert_close(our_grad, ref_grad.to(dtype))


def test_fused_cross_entropy_all_ignored_is_zero_not_nan():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.full((4,), -100)
    loss = _ce_fused("fused")(x, t)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_fused_cross_entropy_extreme_logits():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e30, 1e30, 5.0], [88.0, 89.0, -88.0]])
    t = torch.tensor([1, 0, 2])
    ours, grad = _ce_value_and_grad(_ce_fused("fused"), x, t, reduction="none")
    ref, ref_grad = _ce_value_and_grad(F.cross_entropy, x, t, reduction="none")
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


# --------------------------------------------------------------------------------------------
# Memory and aliasing
# --------------------------------------------------------------------------------------------


class _SavedRecorder:
    """Records every tensor autograd saves while the forward runs."""

    def __init__(self):
        self.saved = []

    def pack(self, tensor):
        self.saved.append((tensor.numel(), tensor.data_ptr()))
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


MEMORY_CASES = {
    "bce_logits": (CF.binary_cross_entropy_with_logits, {}),
    "focal_everything": (
        CF.sigmoid_focal_loss,
        dict(gamma=0.5, weight=torch.rand(64), pos_weight=torch.rand(64), label_smoothing=0.1),
    ),
    "asl": (CF.asymmetric_loss, {}),
}


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all_valid", "ignore_index"])
@pytest.mark.parametrize("case", MEMORY_CASES)
def test_only_the_gradient_is_saved_and_it_becomes_input_grad(case, ignore, reduction):
    fn, kwargs = MEMORY_CASES[case]
    x = torch.randn(32, 64, requires_grad=True)
    y = (torch.rand(32, 64) < 0.3).float()
    if ignore:
        y[::3] = -1
        kwargs = dict(kwargs, ignore_index=-1)
    with _SavedRecorder() as fused:
        loss = fn(x, y, reduction=reduction, backend="fused", **kwargs)
    big = [(n, ptr) for n, ptr in fused.saved if n > 1]
    assert [n for n, _ in big] == [x.numel()], fused.saved  # one buffer: the gradient
    loss.sum().backward() if reduction == "none" else loss.backward()
    assert x.grad.data_ptr() == big[0][1]  # scaled in place and handed over: no copy
    with _SavedRecorder() as reference:
        fn(x, y, reduction=reduction, backend="reference", **kwargs)
    # the reference keeps several input-sized intermediates: the recorder sees them
    assert sum(n for n, _ in reference.saved) >= 2 * x.numel()


def test_cross_entropy_saves_only_the_gradient():
    x = torch.randn(16, 10, requires_grad=True)
    t = torch.randint(0, 10, (16,))
    with _SavedRecorder() as rec:
        loss = _ce_fused("fused")(x, t, label_smoothing=0.1)
    assert [n for n, _ in rec.saved if n > 1] == [x.numel()]
    loss.backward()
    assert x.grad.data_ptr() == rec.saved[0][1]


def test_caller_tensors_are_never_written():
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.rand(6, 4)
    y[0, 0] = -1
    w, pw = torch.rand(4), torch.rand(4)
    tensors = (x, y, w, pw)
    copies = [t.detach().clone() for t in tensors]
    versions = [t._version for t in tensors]
    for backend in ("fused", "reference"):
        loss = CF.sigmoid_focal_loss(
            x, y, weight=w, pos_weight=pw, ignore_index=-1, label_smoothing=0.1, backend=backend
        )
        loss.backward()
    for t, copy, version in zip(tensors, copies, versions):
        assert torch.equal(t.detach(), copy) and t._version == version


def test_retain_graph_backward_twice_accumulates_exact_gradients():
    x = torch.randn(5, 3, requires_grad=True)
    y = torch.rand(5, 3)
    loss = CF.sigmoid_focal_loss(x, y, backend="fused")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    assert_close(x.grad, 2 * first)
    reference = CF.sigmoid_focal_loss(x, y, backend="reference")
    assert_close(first, torch.autograd.grad(reference, x)[0])


def test_second_order_gradients_are_refused_clearly():
    x = torch.randn(5, requires_grad=True)
    loss = CF.binary_cross_entropy_with_logits(x, torch.rand(5), backend="fused")
    with pytest.raises(RuntimeError, match=r"first derivatives only.*backend=\"reference\""):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("mode", ["no_grad", "no_requires_grad"])
def test_forward_only_computes_no_gradient_buffer(mode):
    x = torch.randn(8, 3)
    y = torch.rand(8, 3)
    expected = CF.sigmoid_focal_loss(x, y, backend="reference")
    if mode == "no_grad":
        with torch.no_grad():
            out = CF.sigmoid_focal_loss(x.requires_grad_(True), y, backend="fused")
    else:
        out = CF.sigmoid_focal_loss(x, y, backend="fused")
    assert out.grad_fn is None
    assert_close(out, expected)


def test_no_host_synchronisation_in_the_kernels():
    # .item(), torch.equal, bool(tensor) or .tolist() on the hot path would wait for the device.
    for path in (ROOT / "src" / "crossent" / "kernels").glob("*.py"):
        text = path.read_text()
        for needle in (".item()", "torch.equal(", ".tolist()", ".cpu()", "nonzero("):
            assert needle not in text, f"{needle} in {path.name}"


# --------------------------------------------------------------------------------------------
# Choosing a backend
# --------------------------------------------------------------------------------------------


def _uses_fused_node(tensor) -> bool:
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "FusedLossBackward":
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def test_auto_rule(monkeypatch):
    monkeypatch.delenv(K.ENV_VAR, raising=False)
    tiny = torch.randn(8)
    large = torch.empty(K.COMPILE_MIN_NUMEL)
    assert K.select_backend(None, tiny) == "fused"
    assert K.select_backend("auto", large) == ("compiled" if K.compile_available() else "fused")
    soft_target = torch.rand(8, requires_grad=True)
    assert K.select_backend(None, tiny, soft_target) == "reference"
    with torch.no_grad():
        assert K.select_backend(None, tiny, soft_target) == "fused"
    assert K.select_backend("reference", large) == "reference"
    assert K.select_backend("fused", large) == "fused"


def test_environment_variable_and_keyword(monkeypatch):
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.rand(4, 3)
    monkeypatch.setenv(K.ENV_VAR, "reference")
    assert K.select_backend(None, x) == "reference"
    loss = CF.sigmoid_focal_loss(x, y)
    assert not _uses_fused_node(loss)
    # the keyword wins over the environment
    assert K.select_backend("fused", x) == "fused"
    loss = CF.sigmoid_focal_loss(x, y, backend="fused")
    assert _uses_fused_node(loss)
    monkeypatch.setenv(K.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"Expected `CROSSENT_BACKEND` to be one of .*'fast'"):
        CF.sigmoid_focal_loss(x, y)


def test_bad_backend_values_raise_clear_errors():
    x, y = torch.randn(4), torch.rand(4)
    with pytest.raises(ValueError, match=r"Expected `backend` to be one of \"auto\", .*'gpu'"):
        CF.binary_cross_entropy_with_logits(x, y, backend="gpu")
    with pytest.raises(ValueError, match=r"`backend` to be one of"):
        CF.asymmetric_loss(x, y, backend=3)
    weight = torch.rand(4, requires_grad=True)
    with pytest.raises(ValueError, match=r"only `input` to require a gradient"):
        CF.sigmoid_focal_loss(x, y, weight=weight, backend="fused")
    if K.triton_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match=r"Expected CUDA tensors for backend=\"triton\""):
            CF.sigmoid_focal_loss(x, y, backend="triton")


def test_module_and_registry_see_the_backend_option():
    x, y = torch.randn(4, 3), torch.rand(4, 3)
    module = crossent.FocalLoss(gamma=1.0, backend="reference")
    assert torch.equal(module(x, y), CF.sigmoid_focal_loss(x, y, gamma=1.0, backend="reference"))
    from crossent.registry import parse_loss_spec

    assert parse_loss_spec("focal:backend=fused")[1] == {"backend": "fused"}


def test_soft_target_gradients_fall_back_to_the_reference():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, dtype=torch.float64, requires_grad=True)
    loss = CF.sigmoid_focal_loss(x, y, gamma=2.0)
    assert not _uses_fused_node(loss)
    grads = torch.autograd.grad(loss, (x, y))
    reference = CF.sigmoid_focal_loss(x, y, gamma=2.0, backend="reference")
    for ours, ref in zip(grads, torch.autograd.grad(reference, (x, y))):
        assert_close(ours, ref)


def _broken_compile(monkeypatch):
    def raise_(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_dispatch._Compiled, "fn", property(lambda self: raise_))
    monkeypatch.setattr(_dispatch, "_compiled", {})
    monkeypatch.setattr(_dispatch, "_compile_error", None)


def test_compile_failure_falls_back_to_the_eager_closed_form(monkeypatch):
    _broken_compile(monkeypatch)
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.rand(6, 3)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        out = CF.sigmoid_focal_loss(x, y, backend="compiled")
    assert not K.compile_available()
    assert K.select_backend("auto", torch.empty(K.COMPILE_MIN_NUMEL)) == "fused"
    out.backward()
    assert_close(out, CF.sigmoid_focal_loss(x, y, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then silent
        CF.sigmoid_focal_loss(x, y, backend="compiled")


class _GatedCompile:
    """A stand-in for torch.compile whose "compile" waits for the test to open a gate, and
    which counts the calls that ran compiled code."""

    def __init__(self):
        import threading

        self.gate = threading.Event()
        self.compiled_calls = 0
        self.recompile_next = False

    def __call__(self, fn, **kwargs):
        compiled = set()

        def run(*args, **call):
            if not compiled:  # the first call compiles: blocked until the gate opens
                assert self.gate.wait(60)
                compiled.add(True)
            elif self.recompile_next:  # dynamo's "fail_on_recompile" stance, as it raises
                self.recompile_next = False
                raise RuntimeError("Detected recompile when torch.compile stance is ...")
            self.compiled_calls += 1
            return fn(*args, **call)

        return run


def test_auto_never_waits_for_a_compile(monkeypatch):
    # backend="auto" above COMPILE_MIN_NUMEL: the call that meets a new configuration runs the
    # eager closed form while the graph compiles in the background; once it is ready the
    # compiled graph serves; a call it would have to recompile for runs eagerly again.
    gated = _GatedCompile()
    monkeypatch.setattr(torch, "compile", gated)
    monkeypatch.setattr(_dispatch, "_compiled", {})
    switch_interval = sys.getswitchinterval()
    x = torch.randn(K.COMPILE_MIN_NUMEL // 16, 16, requires_grad=True)
    y = (torch.rand(x.shape) < 0.3).float()
    ref, ref_grad = _exact(CF.sigmoid_focal_loss, x, y)
    for _ in range(2):  # the compile is blocked: both calls are eager and exact
        ours, grad = _value_and_grad(CF.sigmoid_focal_loss, x, y)
        assert_close(ours, ref)
        assert_close(grad, ref_grad)
    assert gated.compiled_calls == 0 and not K.wait_for_compiles(timeout=0)
    # meanwhile the GIL changes hands every 0.2 ms, and the compile yields the CPU
    assert sys.getswitchinterval() <= 2.1e-4 < switch_interval
    if hasattr(os, "getpriority"):
        assert os.getpriority(os.PRIO_PROCESS, _dispatch._worker.native_id) >= 5
    gated.gate.set()
    assert K.wait_for_compiles(timeout=60)
    assert sys.getswitchinterval() == switch_interval  # restored
    warmed = gated.compiled_calls  # the background thread's own call
    ours, grad = _value_and_grad(CF.sigmoid_focal_loss, x, y)
    assert gated.compiled_calls == warmed + 1
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    gated.recompile_next = True  # the graph's guards refuse this call: eager, recompiled
    ours, grad = _value_and_grad(CF.sigmoid_focal_loss, x, y)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    assert K.wait_for_compiles(timeout=60)
    # explicitly asked for, "compiled" waits for its compile instead (said once, in the log)
    _value_and_grad(CF.sigmoid_focal_loss, x, y, gamma=3.0, backend="compiled")
    assert gated.compiled_calls > warmed + 1


# --------------------------------------------------------------------------------------------
# The compiled path (slow: each distinct configuration compiles once, ~10-25 s on 2 cores)
# --------------------------------------------------------------------------------------------


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.mark.slow
def test_compiled_bce_auto_large_input_and_no_recompile_for_new_shapes():
    x = torch.randn(K.COMPILE_MIN_NUMEL, requires_grad=True)
    y = (torch.rand(K.COMPILE_MIN_NUMEL) < 0.5).float()
    assert K.select_backend(None, x) == "compiled"
    ours, grad = _value_and_grad(CF.binary_cross_entropy_with_logits, x, y, reduction="none")
    ref, ref_grad = _exact(CF.binary_cross_entropy_with_logits, x, y, reduction="none")
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    assert K.wait_for_compiles(timeout=600)  # "auto" compiled it in the background
    graphs = _graphs()
    for shape in [(300, 7), (5, 11, 13), (70001,)]:  # new sizes, ranks: the same 1-D graph
        x = torch.randn(shape)
        y = (torch.rand(shape) < 0.5).float()
        ours, grad = _value_and_grad(
            CF.binary_cross_entropy_with_logits, x, y, reduction="none", backend="compiled"
        )
        ref, ref_grad = _exact(CF.binary_cross_entropy_with_logits, x, y, reduction="none")
        assert_close(ours, ref)
        assert_close(grad, ref_grad)
    assert _graphs() == graphs


@pytest.mark.slow
def test_compiled_many_loss_configurations_stay_compiled():
    # dynamo keeps at most `recompile_limit` graphs per code object (8 by default): with one
    # compiled closed form for every configuration, the fifth configuration with and without
    # a gradient disabled compilation for the process. Each configuration now compiles a copy
    # of its own -- shown here with the limit at 1.
    configs = [
        (CF.binary_cross_entropy_with_logits, {}),
        (CF.sigmoid_focal_loss, {"gamma": 2.0, "alpha": 0.25}),
        (CF.sigmoid_focal_loss, {"gamma": 1.5, "alpha": None}),
    ]
    with warnings.catch_warnings(), torch._dynamo.config.patch(recompile_limit=1):
        warnings.filterwarnings("error", message="crossent: torch.compile failed")
        for n in (300, 41):  # a new batch size reuses each configuration's graph
            for fn, kwargs in configs:
                x = torch.randn(n, 5)
                y = (torch.rand(n, 5) < 0.3).float()
                ours, grad = _value_and_grad(fn, x, y, backend="compiled", **kwargs)
                ref, ref_grad = _exact(fn, x, y, **kwargs)
                assert_close(ours, ref)
                assert_close(grad, ref_grad)
    assert K.compile_available()


@pytest.mark.slow
def test_compiled_focal_every_option_and_no_recompile_for_new_values():
    def run(n, gamma, alpha, smoothing, backend):
        fn, x, y, kwargs = _case("focal_g05", "all", torch.float32, soft=True, shape=(n, 5))
        kwargs.update(gamma=gamma, alpha=alpha, label_smoothing=smoothing)
        out = _value_and_grad(fn, x, y, backend=backend, **kwargs)
        return out, _exact(fn, x, y, **kwargs)

    (ours, grad), (ref, ref_grad) = run(12, 0.5, 0.25, 0.1, "compiled")
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    graphs = _graphs()
    for n, gamma, alpha, smoothing in [(40, 1.5, 0.6, 0.2), (7, 2.5, 0.1, 0.05)]:
        (ours, grad), (ref, ref_grad) = run(n, gamma, alpha, smoothing, "compiled")
        assert_close(ours, ref)
        assert_close(grad, ref_grad)
    assert _graphs() == graphs  # new batch sizes and new option values: no recompile


@pytest.mark.slow
def test_compiled_focal_new_integer_gamma_and_alpha_do_not_recompile():
    # an integer gamma (the default 2) runs by repeated squaring over its binary digits, given
    # to the graph as 0-dim bool tensors: gamma=2 then 3 had made two of them the same cached
    # tensor object, and dynamo recompiled (seconds) on the aliasing
    x = torch.randn(20, 5)
    y = (torch.rand(20, 5) < 0.3).float()
    _value_and_grad(CF.sigmoid_focal_loss, x, y, gamma=2.0, alpha=0.25, backend="compiled")
    graphs = _graphs()
    for gamma, alpha in [(3.0, 0.25), (1.0, 0.5), (4.0, 0.75), (2.0, 0.5)]:
        ours, grad = _value_and_grad(
            CF.sigmoid_focal_loss, x, y, gamma=gamma, alpha=alpha, backend="compiled"
        )
        ref, ref_grad = _exact(CF.sigmoid_focal_loss, x, y, gamma=gamma, alpha=alpha)
        assert_close(ours, ref)
        assert_close(grad, ref_grad)
    assert _graphs() == graphs


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["asl_clip02", "binary_focal_g2"])
def test_compiled_other_kernels(variant):
    fn, x, y, kwargs = _case(variant, "ignore", torch.float32, soft=True, shape=(10, 4))
    ours, grad = _value_and_grad(fn, x, y, backend="compiled", **kwargs)
    ref, ref_grad = _exact(fn, x, y, **kwargs)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


@pytest.mark.slow
def test_compiled_cross_entropy_and_no_recompile_for_new_batch():
    fn = _ce_fused("compiled")
    x, t, w = _ce_case((12, 9), "index", torch.float32)
    ours, grad = _ce_value_and_grad(fn, x, t, weight=w, label_smoothing=0.1)
    ref, ref_grad = _ce_value_and_grad(
        F.cross_entropy, x.double(), t, weight=w.double(), label_smoothing=0.1
    )
    assert_close(ours, ref.float())
    assert_close(grad, ref_grad.float())
    graphs = _graphs()
    x, t, w = _ce_case((31, 9), "index", torch.float32, seed=3)
    ours, grad = _ce_value_and_grad(fn, x, t, weight=w, label_smoothing=0.3)
    ref, ref_grad = _ce_value_and_grad(
        F.cross_entropy, x.double(), t, weight=w.double(), label_smoothing=0.3
    )
    assert_close(ours, ref.float())
    assert_close(grad, ref_grad.float())
    assert _graphs() == graphs


@pytest.mark.slow
def test_compiled_softmax_focal_and_poly1_and_no_recompile_for_new_values():
    def check(fn, n, seed, **kwargs):
        x, t, w = _ce_case((n, 6), "index", torch.float32, seed=seed)
        ours, grad = _ce_value_and_grad(fn, x, t, weight=w, backend="compiled", **kwargs)
        up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        ref, ref_grad = _ce_value_and_grad(
            fn, x.double(), t, weight=w.double(), backend="reference", **up
        )
        assert_close(ours, ref.float())
        assert_close(grad, ref_grad.float())

    alpha = torch.tensor([0.2, 0.9, 0.0, 1.5, 0.4, 0.7])
    check(CF.softmax_focal_loss, 12, 0, gamma=2.0, alpha=alpha)
    graphs = _graphs()
    check(CF.softmax_focal_loss, 31, 1, gamma=0.5, alpha=alpha.flip(0))
    check(CF.softmax_focal_loss, 5, 2, gamma=3.0, alpha=alpha)
    assert _graphs() == graphs  # new batch sizes, gamma and alpha values: no recompile
    check(CF.poly1_cross_entropy, 12, 3, epsilon=2.0, label_smoothing=0.1)
    graphs = _graphs()
    check(CF.poly1_cross_entropy, 20, 4, epsilon=-0.5, label_smoothing=0.3)
    assert _graphs() == graphs


@pytest.mark.slow
def test_inside_a_users_torch_compile_the_closed_form_is_traced():
    x = torch.randn(6, 4, requires_grad=True)
    y = (torch.rand(6, 4) < 0.5).float()

    def step(x, y):
        return CF.sigmoid_focal_loss(x, y, gamma=2.0) * 2

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    # eager with the fused node (a 6 x 4 input otherwise takes the small-input path)
    ref = CF.sigmoid_focal_loss(x, y, gamma=2.0, backend="fused") * 2
    (ref_grad,) = torch.autograd.grad(ref, x)
    assert _uses_fused_node(ref)
    assert_close(loss.detach(), ref.detach())
    assert_close(grad, ref_grad)


# --------------------------------------------------------------------------------------------
# Triton kernels under the interpreter
# --------------------------------------------------------------------------------------------


def _run_triton_cases(family: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    proc = subprocess.run(
        [sys.executable, "-m", "tests._helpers.triton_cases", family],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "cases passed" in proc.stdout, proc.stdout


@pytest.mark.triton
@pytest.mark.parametrize("family", ["binary", "cross_entropy", "softmax_focal", "scale"])
def test_triton_kernels_under_the_interpreter(family):
    pytest.importorskip("triton")
    _run_triton_cases(family)


def test_float32_log1p_series_is_within_one_and_a_half_ulps():
    from crossent.kernels._math import log1p_unit

    g = torch.Generator().manual_seed(0)
    e = torch.cat(
        [
            torch.logspace(-45, 0, 200_000, dtype=torch.float64),
            torch.rand(200_000, generator=g, dtype=torch.float64),
            torch.tensor([0.0, 1.0, 2**-24, 2**-126, 1.4e-45], dtype=torch.float64),
        ]
    ).float()
    exact = torch.log1p(e.double())
    got = log1p_unit(e)
    assert got.dtype == torch.float32
    error = (got.double() - exact).abs()
    assert (error <= 1.5 * torch.finfo(torch.float32).eps * exact).all()
    e64 = e.double()
    assert torch.equal(log1p_unit(e64), torch.log1p(e64))


@pytest.mark.parametrize("upstream", ["backward()", "times_3", "retain_graph"])
@pytest.mark.parametrize(
    "case",
    ["focal_mean", "focal_mean_ignore", "bce_sum", "ce_mean", "ce_mean_weighted", "asl_mean"],
)
def test_gradient_when_backward_starts_at_the_loss(case, upstream):
    # loss.backward(): the incoming gradient is exactly 1 and a known mean denominator was
    # folded into the forward, so backward hands the saved buffer on without a pass
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64)
    y = torch.rand(9, 6, generator=g, dtype=torch.float64)
    t = torch.randint(0, 6, (9,), generator=g)
    t[4] = -100
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    calls = {
        "focal_mean": lambda x, b: CF.sigmoid_focal_loss(x, y, backend=b),
        "focal_mean_ignore": lambda x, b: CF.sigmoid_focal_loss(
            x, torch.where(y < 0.2, -1.0, y), ignore_index=-1, backend=b
        ),
        "bce_sum": lambda x, b: CF.binary_cross_entropy_with_logits(
            x, y, reduction="sum", backend=b
        ),
        "ce_mean": lambda x, b: CF.cross_entropy(x, t, label_smoothing=0.1, backend=b),
        "ce_mean_weighted": lambda x, b: CF.cross_entropy(x, t, weight=w, backend=b),
        "asl_mean": lambda x, b: CF.asymmetric_loss(x, (y > 0.5).double(), backend=b),
    }
    grads = {}
    for backend in ("fused", "reference"):
        xx = x.clone().requires_grad_(True)
        loss = calls[case](xx, backend)
        if upstream == "times_3":
            (loss * 3).backward()
        elif upstream == "retain_graph":
            loss.backward(retain_graph=True)
            loss.backward()
        else:
            loss.backward()
        grads[backend] = xx.grad
    assert_close(grads["fused"], grads["reference"])


def test_a_failing_triton_kernel_falls_back_to_the_eager_closed_form(monkeypatch):
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels run fine under the interpreter")
    # CPU tensors outside the interpreter: Triton cannot launch, as on an unsupported GPU
    monkeypatch.setattr(_dispatch, "_triton_error", None)
    x = torch.randn(6, 3, requires_grad=True)
    y = torch.rand(6, 3)
    options = FOCAL.options_from(gamma=2.0, alpha=0.25)
    with pytest.warns(RuntimeWarning, match="a Triton kernel failed"):
        out = K.run_fused("triton", FOCAL.kernel, x, y, options, "mean", None)
    assert _dispatch._triton_error is not None
    out.backward()
    ref = CF.sigmoid_focal_loss(x.detach(), y, backend="reference")
    assert_close(out.detach(), ref)
