"""The binary / multi-label family: against torch and float64 references, identities, extremes, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import crossent
from crossent import functional as CF
from tests._helpers import assert_close
from tests._helpers.reference import official_asl, torchvision_focal

# Every test runs on every backend: calls that name none use the one of family_backend.
pytestmark = pytest.mark.usefixtures("family_backend")

LOGIT_LOSSES = {
    "bce_with_logits": CF.binary_cross_entropy_with_logits,
    "sigmoid_focal": CF.sigmoid_focal_loss,
    "asymmetric": CF.asymmetric_loss,
}
PROB_LOSSES = {
    "bce": CF.binary_cross_entropy,
    "binary_focal": CF.binary_focal_loss,
}
ALL_LOSSES = {**LOGIT_LOSSES, **PROB_LOSSES}
REDUCTIONS = ("none", "sum", "mean")


def _inputs(shape, dtype, *, probs=False, soft=False, scale=3.0):
    x = torch.randn(shape, dtype=torch.float64) * scale
    y = torch.rand(shape, dtype=torch.float64) if soft else (torch.rand(shape) < 0.4).double()
    if probs:
        x = torch.sigmoid(x)
    return x.to(dtype), y.to(dtype)


def _torch_reference(fn, x, y, **kwargs):
    """torch's loss evaluated in float64 on the same (already rounded) inputs, cast back.

    torch's own float32 BCE-with-logits computes ``(1 - y) x + softplus(-x)``, which cancels for
    negative logits with y = 0 (3e-3 relative error at x = -9, all digits lost by x = -15); crossent's log-space form
    does not. So float32 results are held to the true value, at the float32 tolerance.
    """
    dtype = x.dtype
    up = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    out, grad = _value_and_grad(fn, x.double(), y.double(), **up)
    return out.to(dtype), grad.to(dtype)


def _value_and_grad(fn, x, y, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, y, **kwargs)
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


# --------------------------------------------------------------------------------------------
# Against torch
# --------------------------------------------------------------------------------------------

SHAPES = {"N": (16,), "NC": (8, 5), "NCHW": (2, 3, 4, 4)}
WEIGHTS = {
    "none": lambda s: None,
    "per_class": lambda s: torch.rand(s[-1], dtype=torch.float64) + 0.5,
    "full": lambda s: torch.rand(s, dtype=torch.float64) * 2,
}


def _pos_weight(shape, kind):
    if kind == "none":
        return None
    if len(shape) == 4:  # (N, C, H, W): one weight per channel, documented as size (C, 1, 1)
        return torch.rand(shape[1], 1, 1, dtype=torch.float64) * 3 + 0.2
    return torch.rand(shape[-1], dtype=torch.float64) * 3 + 0.2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape_id", SHAPES)
@pytest.mark.parametrize("weight_id", WEIGHTS)
@pytest.mark.parametrize("pos_weight_id", ["none", "per_channel"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.compiled_subset(
    dtype=[torch.float32],
    shape_id=["NCHW"],
    weight_id=["per_class"],
    pos_weight_id=["per_channel"],
    soft=[True],
)
@pytest.mark.triton_subset(dtype=[torch.float32], weight_id=["full"], reduction=["none", "mean"])
def test_bce_with_logits_matches_torch(dtype, reduction, shape_id, weight_id, pos_weight_id, soft):
    shape = SHAPES[shape_id]
    x, y = _inputs(shape, dtype, soft=soft)
    w = WEIGHTS[weight_id](shape)
    pw = _pos_weight(shape, pos_weight_id)
    w = None if w is None else w.to(dtype)
    pw = None if pw is None else pw.to(dtype)
    kwargs = dict(weight=w, pos_weight=pw, reduction=reduction)
    ours, our_grad = _value_and_grad(CF.binary_cross_entropy_with_logits, x, y, **kwargs)
    ref, ref_grad = _torch_reference(F.binary_cross_entropy_with_logits, x, y, **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape_id", SHAPES)
@pytest.mark.parametrize("weight_id", WEIGHTS)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.triton_subset(dtype=[torch.float32], reduction=["none"])
def test_bce_matches_torch(dtype, reduction, shape_id, weight_id, soft):
    shape = SHAPES[shape_id]
    p, y = _inputs(shape, dtype, probs=True, soft=soft)
    w = WEIGHTS[weight_id](shape)
    w = None if w is None else w.to(dtype)
    ours, our_grad = _value_and_grad(CF.binary_cross_entropy, p, y, weight=w, reduction=reduction)
    ref, ref_grad = _torch_reference(F.binary_cross_entropy, p, y, weight=w, reduction=reduction)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("p_value", [0.0, 1.0, 1e-45, 1 - 2**-24])
@pytest.mark.parametrize("y_value", [0.0, 1.0, 0.3])
def test_bce_keeps_torch_clamp_at_the_boundary(p_value, y_value):
    p = torch.tensor([p_value])
    y = torch.tensor([y_value])
    ours = CF.binary_cross_entropy(p, y, reduction="none")
    assert_close(ours, F.binary_cross_entropy(p, y, reduction="none"))
    p.requires_grad_(True)
    (grad,) = torch.autograd.grad(CF.binary_cross_entropy(p, y), p)
    assert torch.isfinite(grad).all()


def test_bce_module_matches_torch_module():
    x, y = _inputs((6, 4), torch.float32)
    w, pw = torch.rand(4) + 0.5, torch.rand(4) * 2
    ours = crossent.BCEWithLogitsLoss(weight=w, pos_weight=pw)(x, y)
    ref = torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw)(x, y)
    assert_close(ours, ref)
    p = torch.sigmoid(x)
    assert_close(crossent.BCELoss(weight=w)(p, y), torch.nn.BCELoss(weight=w)(p, y))


# --------------------------------------------------------------------------------------------
# Against float64 references (focal: torchvision's formula; ASL: the official code)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.9])
@pytest.mark.parametrize("pos_weight", [False, True], ids=["no_pw", "pw"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.compiled_subset(gamma=[2.0], alpha=[0.25], pos_weight=[False], soft=[True])
@pytest.mark.triton_subset(alpha=[0.25])
def test_sigmoid_focal_matches_torchvision_formula(gamma, alpha, pos_weight, soft):
    x, y = _inputs((7, 5), torch.float64, soft=soft)
    pw = torch.rand(5, dtype=torch.float64) * 3 if pos_weight else None
    kwargs = dict(gamma=gamma, alpha=alpha, pos_weight=pw)
    ours, our_grad = _value_and_grad(CF.sigmoid_focal_loss, x, y, reduction="none", **kwargs)
    ref, ref_grad = _value_and_grad(torchvision_focal, x, y, **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("gamma_pos", [0.0, 1.0])
@pytest.mark.parametrize("gamma_neg", [0.0, 2.0, 4.0])
@pytest.mark.parametrize("clip", [None, 0.0, 0.05, 0.2])
@pytest.mark.compiled_subset(gamma_pos=[1.0], gamma_neg=[4.0], clip=[0.05])
def test_asymmetric_matches_official_formula(gamma_pos, gamma_neg, clip):
    x, y = _inputs((9, 6), torch.float64)
    kwargs = dict(gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    ours, our_grad = _value_and_grad(CF.asymmetric_loss, x, y, reduction="none", **kwargs)
    ref, ref_grad = _value_and_grad(official_asl, x, y, **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


def test_asymmetric_sum_is_official_return_value():
    x, y = _inputs((4, 10), torch.float64)
    assert_close(CF.asymmetric_loss(x, y, reduction="sum"), official_asl(x, y).sum())


def test_asymmetric_soft_targets_mix_terms_linearly():
    x = torch.randn(20, dtype=torch.float64)
    y = torch.rand(20, dtype=torch.float64)
    mixed = CF.asymmetric_loss(x, y, reduction="none")
    pos = CF.asymmetric_loss(x, torch.ones_like(y), reduction="none")
    neg = CF.asymmetric_loss(x, torch.zeros_like(y), reduction="none")
    assert_close(mixed, y * pos + (1 - y) * neg)


# --------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str
)
def test_focal_with_gamma0_alpha_none_is_bce_exactly(dtype):
    x, y = _inputs((6, 7), dtype, soft=True)
    pw = torch.rand(7).to(dtype) + 0.5
    for reduction in REDUCTIONS:
        focal = CF.sigmoid_focal_loss(
            x, y, gamma=0.0, alpha=None, pos_weight=pw, reduction=reduction
        )
        bce = CF.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction=reduction)
        assert torch.equal(focal, bce)
        p = torch.sigmoid(x.float()).to(dtype)
        focal_p = CF.binary_focal_loss(p, y, gamma=0.0, alpha=None, reduction=reduction)
        assert torch.equal(focal_p, CF.binary_cross_entropy(p, y, reduction=reduction))


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_focal_is_at_most_bce_elementwise(gamma):
    x, y = _inputs((50,), torch.float64, scale=6.0)
    focal = CF.sigmoid_focal_loss(x, y, gamma=gamma, alpha=None, reduction="none")
    bce = CF.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert (focal <= bce).all()
    assert (focal >= 0).all()


@pytest.mark.parametrize("gamma", [0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_over_bce_is_alpha_t_times_modulating_factor(gamma, alpha):
    x, y = _inputs((40,), torch.float64)
    focal = CF.sigmoid_focal_loss(x, y, gamma=gamma, alpha=alpha, reduction="none")
    bce = CF.binary_cross_entropy_with_logits(x, y, reduction="none")
    p = torch.sigmoid(x)
    p_t = torch.where(y == 1, p, 1 - p)
    alpha_t = 1.0 if alpha is None else torch.where(y == 1, alpha, 1 - alpha)
    assert_close(focal / bce, alpha_t * (1 - p_t) ** gamma)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_mean_is_sum_over_valid_count(name):
    fn = ALL_LOSSES[name]
    x, y = _inputs((10, 3), torch.float64, probs=name in PROB_LOSSES)
    y[0, 0] = y[3, 1] = y[7, 2] = -1
    w = torch.rand(3, dtype=torch.float64) * 2
    total = fn(x, y, ignore_index=-1, weight=w, reduction="sum")
    # weights rescale the terms, not the denominator (torch's convention)
    assert_close(fn(x, y, ignore_index=-1, weight=w, reduction="mean"), total / 27)
    y = y.clamp(0, 1)
    assert_close(fn(x, y, reduction="mean"), fn(x, y, reduction="sum") / 30)


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("ignore_index", [-1, -100, 2])
def test_ignore_index_equals_slicing(name, ignore_index):
    fn = ALL_LOSSES[name]
    x, y = _inputs((12, 4), torch.float64, probs=name in PROB_LOSSES, soft=True)
    ignored = torch.rand(12, 4) < 0.3
    y_masked = torch.where(ignored, torch.tensor(float(ignore_index), dtype=y.dtype), y)
    for reduction in ("sum", "mean"):
        ours, grad = _value_and_grad(
            fn, x, y_masked, ignore_index=ignore_index, reduction=reduction
        )
        ref, ref_grad_kept = _value_and_grad(fn, x[~ignored], y[~ignored], reduction=reduction)
        assert_close(ours, ref)
        assert_close(grad[~ignored], ref_grad_kept)
        assert (grad[ignored] == 0).all()
    none = fn(x, y_masked, ignore_index=ignore_index, reduction="none")
    assert (none[ignored] == 0).all()
    assert_close(none[~ignored], fn(x[~ignored], y[~ignored], reduction="none"))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_everything_ignored_gives_zero_mean_and_zero_grad(name):
    fn = ALL_LOSSES[name]
    x, _ = _inputs((5, 2), torch.float32, probs=name in PROB_LOSSES)
    y = torch.full((5, 2), -1.0)
    x.requires_grad_(True)
    loss = fn(x, y, ignore_index=-1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_probability_and_logit_forms_agree(gamma, alpha):
    x, y = _inputs((30,), torch.float64, soft=True)
    p = torch.sigmoid(x)
    focal = CF.sigmoid_focal_loss(x, y, gamma=gamma, alpha=alpha, reduction="none")
    focal_p = CF.binary_focal_loss(p, y, gamma=gamma, alpha=alpha, reduction="none")
    assert_close(focal_p, focal, check_dtype=True)
    assert_close(
        CF.binary_cross_entropy(p, y, reduction="none"),
        CF.binary_cross_entropy_with_logits(x, y, reduction="none"),
    )


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("s", [0.1, 0.5])
def test_label_smoothing_is_a_smoothed_target(name, s):
    fn = ALL_LOSSES[name]
    x, y = _inputs((8, 3), torch.float64, probs=name in PROB_LOSSES)
    smoothed = y * (1 - s) + s / 2
    assert_close(fn(x, y, label_smoothing=s), fn(x, smoothed))


def test_label_smoothing_applies_after_ignore_index():
    x, y = _inputs((10,), torch.float64)
    y[2] = -1
    ours = CF.binary_cross_entropy_with_logits(
        x, y, ignore_index=-1, label_smoothing=0.2, reduction="none"
    )
    assert ours[2] == 0
    keep = torch.arange(10) != 2
    ref = CF.binary_cross_entropy_with_logits(x[keep], y[keep] * 0.8 + 0.1, reduction="none")
    assert_close(ours[keep], ref)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_integer_and_bool_targets_equal_float_targets(name):
    fn = LOGIT_LOSSES[name]
    x, y = _inputs((6, 4), torch.float32)
    expected = fn(x, y)
    assert_close(fn(x, y.long()), expected)
    assert_close(fn(x, y.bool()), expected)


def test_perfect_prediction_has_zero_loss_no_eps_bias():
    y = torch.tensor([1.0, 0.0])
    p = torch.tensor([1.0, 0.0])
    assert CF.binary_cross_entropy(p, y, reduction="sum").item() == 0.0
    assert CF.binary_focal_loss(p, y, reduction="sum").item() == 0.0
    x = torch.tensor([200.0, -200.0])
    for fn in LOGIT_LOSSES.values():
        assert fn(x, y, reduction="sum").item() == 0.0


# --------------------------------------------------------------------------------------------
# dtypes, extremes, gradcheck
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_inputs_compute_in_float32_return_input_dtype(name, dtype, reduction):
    fn = ALL_LOSSES[name]
    x, y = _inputs((16, 8), dtype, probs=name in PROB_LOSSES, soft=True)
    out = fn(x, y, reduction=reduction)
    assert out.dtype == dtype
    ref = fn(x.float(), y.float(), reduction=reduction)
    assert_close(out, ref.to(dtype), dtype=dtype)


EXTREME_LOGITS = {
    torch.float64: [-1e300, -1e30, -1e4, -88.0, -30.0, 0.0, 30.0, 88.0, 1e4, 1e30, 1e300],
    # Up to 1e30: at 3e38 the gradient's intermediate gamma * loss (1e39) leaves float32's range.
    torch.float32: [-1e30, -1e20, -1e4, -104.0, -30.0, -1e-30, 0.0, 30.0, 104.0, 1e4, 1e30],
    torch.float16: [-65504.0, -1e4, -30.0, -11.0, 0.0, 11.0, 30.0, 1e4, 65504.0],
    torch.bfloat16: [-1e30, -1e4, -30.0, 0.0, 30.0, 1e4, 1e30],
}
GAMMAS = [0.0, 0.1, 0.5, 0.9, 1.0, 2.0, 5.0]


@pytest.mark.parametrize("dtype", list(EXTREME_LOGITS), ids=str)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_finite_loss_and_grad_at_extreme_logits(dtype, gamma):
    values = torch.tensor(EXTREME_LOGITS[dtype], dtype=dtype)
    x = values.repeat_interleave(3)
    y = torch.tensor([0.0, 1.0, 0.3], dtype=dtype).repeat(len(values))
    calls = {
        "bce": lambda x: CF.binary_cross_entropy_with_logits(x, y, reduction="none"),
        "focal": lambda x: CF.sigmoid_focal_loss(x, y, gamma=gamma, reduction="none"),
        "focal_pw_ls": lambda x: CF.sigmoid_focal_loss(
            x,
            y,
            gamma=gamma,
            pos_weight=torch.tensor(3.0, dtype=dtype),
            label_smoothing=0.1,
            reduction="none",
        ),
        "asl": lambda x: CF.asymmetric_loss(
            x, y, gamma_pos=gamma, gamma_neg=gamma + 1, reduction="none"
        ),
        "asl_noclip": lambda x: CF.asymmetric_loss(
            x, y, gamma_pos=gamma, gamma_neg=gamma, clip=None, reduction="none"
        ),
    }
    for label, call in calls.items():
        xx = x.clone().requires_grad_(True)
        loss = call(xx)
        (grad,) = torch.autograd.grad(loss.sum(), xx)
        assert torch.isfinite(loss).all(), (label, x[~torch.isfinite(loss)])
        assert torch.isfinite(grad).all(), (label, x[~torch.isfinite(grad)])
        assert (loss >= 0).all(), label


@pytest.mark.parametrize("gamma", GAMMAS)
def test_probability_forms_finite_at_zero_and_one(gamma):
    p = torch.tensor([0.0, 0.0, 1.0, 1.0, 1e-45, 0.5], requires_grad=True)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.5])
    loss = CF.binary_focal_loss(p, y, gamma=gamma, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), p)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # a maximally wrong prediction costs torch's clamp, 100 (times alpha_t)
    assert loss[1].item() == pytest.approx(0.25 * 100.0)


def test_torchvision_nan_case_is_finite_and_correct():
    # torchvision.ops.sigmoid_focal_loss gives a NaN gradient here: p rounds to 1 in float32.
    x = torch.tensor([30.0], requires_grad=True)
    loss = CF.sigmoid_focal_loss(x, torch.ones(1), gamma=0.5, alpha=None)
    (grad,) = torch.autograd.grad(loss, x)
    x64 = torch.tensor([30.0], dtype=torch.float64)
    # exact: (1 - p)^0.5 * -log p with 1 - p = sigmoid(-30), derivative by hand
    q = torch.sigmoid(-x64)
    expected_loss = q**0.5 * torch.nn.functional.softplus(-x64)
    expected_grad = -(q**0.5) * (0.5 * (1 - q) * torch.nn.functional.softplus(-x64) + q)
    assert_close(loss.double(), expected_loss[0], dtype=torch.float32)
    assert_close(grad.double(), expected_grad, dtype=torch.float32)


_W3 = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
GRADCHECK_CASES = {
    "bce_with_logits": lambda x, y: CF.binary_cross_entropy_with_logits(
        x, y, weight=_W3, pos_weight=_W3 + 0.5, ignore_index=-1
    ),
    "bce": lambda x, y: CF.binary_cross_entropy(torch.sigmoid(x), y, label_smoothing=0.1),
    "sigmoid_focal": lambda x, y: CF.sigmoid_focal_loss(
        x, y, gamma=2.0, alpha=0.25, reduction="sum"
    ),
    "sigmoid_focal_gamma_half": lambda x, y: CF.sigmoid_focal_loss(
        x, y, gamma=0.5, alpha=None, label_smoothing=0.05
    ),
    "binary_focal": lambda x, y: CF.binary_focal_loss(
        torch.sigmoid(x), y, gamma=1.5, reduction="none"
    ),
    "asymmetric": lambda x, y: CF.asymmetric_loss(x, y, gamma_pos=1.0, gamma_neg=3.0, clip=0.05),
    "asymmetric_noclip": lambda x, y: CF.asymmetric_loss(x, y, clip=None, reduction="none"),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, dtype=torch.float64)
    if case.startswith("asymmetric"):
        # keep p away from the clip margin's kink at p == clip
        x = (x.detach() + 0.5 * x.detach().sign()).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: GRADCHECK_CASES[case](x, y), (x,))


@pytest.mark.backends("reference")  # a gradient for the targets: the reference path's
def test_soft_target_gradient_flows_for_bce():
    x = torch.randn(5, dtype=torch.float64)
    y = torch.rand(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: CF.binary_cross_entropy_with_logits(x, y), (y,))
    assert torch.autograd.gradcheck(lambda y: CF.sigmoid_focal_loss(x, y, gamma=2.0), (y,))


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.no_triton_interpreter  # bfloat16
def test_autocast_cpu_bfloat16(name):
    fn = ALL_LOSSES[name]
    x, y = _inputs((8, 4), torch.float32, probs=name in PROB_LOSSES)
    w = torch.nn.Linear(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = w(x)
        inp = torch.sigmoid(h) if name in PROB_LOSSES else h
        loss = fn(inp, y)
    loss.float().backward()
    assert torch.isfinite(loss) and torch.isfinite(w.weight.grad).all()


def test_caller_tensors_are_not_modified():
    x, y = _inputs((6, 3), torch.float32, soft=True)
    y[0, 0] = -1
    w, pw = torch.rand(3), torch.rand(3)
    copies = [t.clone() for t in (x, y, w, pw)]
    for fn in (CF.binary_cross_entropy_with_logits, CF.sigmoid_focal_loss):
        fn(x, y, weight=w, pos_weight=pw, ignore_index=-1, label_smoothing=0.1)
    for original, copy in zip((x, y, w, pw), copies):
        assert torch.equal(original, copy)


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------

_shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)
_logit = st.one_of(st.floats(-50, 50), st.sampled_from([-1e4, 1e4, -1e30, 1e30, 0.0]))


@given(
    shape=_shapes,
    data=st.data(),
    gamma=st.floats(0, 5),
    alpha=st.one_of(st.none(), st.floats(0, 1)),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
)
@pytest.mark.no_triton_interpreter  # bfloat16
def test_property_focal_finite_nonnegative_and_below_bce(shape, data, gamma, alpha, dtype):
    n = int(torch.Size(shape).numel())
    values = data.draw(st.lists(_logit, min_size=n, max_size=n))
    targets = data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.9]), min_size=n, max_size=n))
    x = torch.tensor(values, dtype=torch.float64).clamp(-6e4, 6e4).to(dtype).reshape(shape)
    y = torch.tensor(targets, dtype=dtype).reshape(shape)
    x.requires_grad_(True)
    focal = CF.sigmoid_focal_loss(x, y, gamma=gamma, alpha=alpha, reduction="none")
    (grad,) = torch.autograd.grad(focal.sum(), x)
    bce = CF.binary_cross_entropy_with_logits(x.detach(), y, reduction="none")
    assert focal.dtype == dtype and focal.shape == x.shape
    assert torch.isfinite(focal).all() and torch.isfinite(grad).all()
    assert (focal >= 0).all()
    assert (focal.float() <= bce.float() * (1 + 1e-2) + 1e-6).all()


@given(
    shape=_shapes, reduction=st.sampled_from(["none", "sum", "mean"]), seed=st.integers(0, 2**16)
)
def test_property_module_equals_functional(shape, reduction, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    y = (torch.rand(shape, generator=g) > 0.5).float()
    for module, fn in (
        (crossent.BCEWithLogitsLoss(reduction=reduction), CF.binary_cross_entropy_with_logits),
        (crossent.FocalLoss(reduction=reduction), CF.sigmoid_focal_loss),
        (crossent.AsymmetricLoss(reduction=reduction), CF.asymmetric_loss),
    ):
        assert torch.equal(module(x, y), fn(x, y, reduction=reduction))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_shape_mismatch_is_an_error_not_a_broadcast(name):
    fn = ALL_LOSSES[name]
    x = torch.rand(8)
    with pytest.raises(
        ValueError,
        match=r"Target size \(torch.Size\(\[8, 1\]\)\) must be the same as input size \(torch.Size\(\[8\]\)\)",
    ):
        fn(x, torch.rand(8, 1))


@pytest.mark.parametrize("name", PROB_LOSSES)
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_probabilities_outside_unit_interval(name, bad):
    p = torch.tensor([0.2, bad])
    with pytest.raises(ValueError, match=r"Expected `input` to hold probabilities in \[0, 1\]"):
        PROB_LOSSES[name](p, torch.tensor([0.0, 1.0]))


def test_value_checks_can_be_switched_off():
    previous = crossent.set_value_checks(False)
    try:
        CF.binary_cross_entropy(torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]))
    finally:
        crossent.set_value_checks(previous)
    with pytest.raises(ValueError):
        CF.binary_cross_entropy(torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_integer_input_is_a_type_error(name):
    with pytest.raises(
        TypeError, match=r"Expected `input` to have a floating-point dtype, but got torch.int64"
    ):
        ALL_LOSSES[name](torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))


BAD_OPTIONS = [
    (
        CF.sigmoid_focal_loss,
        {"gamma": -1.0},
        ValueError,
        r"Expected `gamma` to be >= 0.0, but got -1.0.",
    ),
    (CF.binary_focal_loss, {"gamma": -0.5}, ValueError, r"`gamma` to be >= 0.0"),
    (
        CF.sigmoid_focal_loss,
        {"alpha": 1.5},
        ValueError,
        r"Expected `alpha` to be <= 1.0, but got 1.5.",
    ),
    (
        CF.sigmoid_focal_loss,
        {"alpha": -0.1},
        ValueError,
        r"Expected `alpha` to be >= 0.0, but got -0.1.",
    ),
    (
        CF.binary_cross_entropy_with_logits,
        {"label_smoothing": 1.0},
        ValueError,
        r"`label_smoothing` to be < 1.0, but got 1.0",
    ),
    (
        CF.binary_cross_entropy_with_logits,
        {"label_smoothing": -0.1},
        ValueError,
        r"`label_smoothing` to be >= 0.0",
    ),
    (
        CF.binary_cross_entropy_with_logits,
        {"reduction": "avg"},
        ValueError,
        r'Expected `reduction` to be one of "none", "mean", "sum", "global_mean", but got \'avg\'.',
    ),
    (CF.asymmetric_loss, {"reduction": None}, ValueError, r"`reduction` to be one of"),
    (
        CF.binary_cross_entropy_with_logits,
        {"pos_weight": torch.ones(3)},
        ValueError,
        r"Expected `pos_weight` to broadcast to the input size torch.Size\(\[4, 2\]\), but got size torch.Size\(\[3\]\)",
    ),
    (
        CF.binary_cross_entropy_with_logits,
        {"weight": torch.ones(4)},
        ValueError,
        r"`weight` to broadcast",
    ),
    (
        CF.binary_cross_entropy_with_logits,
        {"weight": torch.ones(2, 4, 2)},
        ValueError,
        r"`weight` to broadcast",
    ),
    (CF.asymmetric_loss, {"clip": 1.0}, ValueError, r"`clip` to be < 1.0"),
    (CF.asymmetric_loss, {"gamma_neg": -2}, ValueError, r"`gamma_neg` to be >= 0.0"),
    (CF.sigmoid_focal_loss, {"gamma": "2"}, TypeError, r"`gamma` to be a number"),
    (CF.sigmoid_focal_loss, {"gamma": float("nan")}, ValueError, r"`gamma` to be finite"),
    (
        CF.binary_cross_entropy_with_logits,
        {"ignore_index": "x"},
        TypeError,
        r"`ignore_index` to be a number",
    ),
]


@pytest.mark.parametrize(
    "fn,options,error,pattern",
    BAD_OPTIONS,
    ids=[f"{f.__name__}-{next(iter(o))}" for f, o, _, _ in BAD_OPTIONS],
)
def test_bad_options_raise_clear_errors(fn, options, error, pattern):
    x = torch.randn(4, 2)
    y = torch.rand(4, 2)
    if fn is CF.binary_focal_loss:
        x = torch.sigmoid(x)
    with pytest.raises(error, match=pattern):
        fn(x, y, **options)


def test_options_are_keyword_only():
    x, y = torch.randn(3), torch.rand(3)
    for fn in ALL_LOSSES.values():
        with pytest.raises(TypeError):
            fn(x, y, None)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def test_module_weights_are_buffers():
    w, pw = torch.rand(3), torch.rand(3)
    module = crossent.FocalLoss(weight=w, pos_weight=pw, gamma=1.0)
    assert set(dict(module.named_buffers())) == {"weight", "pos_weight"}
    assert set(module.state_dict()) == {"weight", "pos_weight"}
    module = module.double()
    assert module.weight.dtype == torch.float64
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)
    assert torch.equal(
        module(x, y),
        CF.sigmoid_focal_loss(x, y, weight=module.weight, pos_weight=module.pos_weight, gamma=1.0),
    )
    assert "gamma=1.0" in repr(module)


@pytest.mark.parametrize(
    "module,fn,probs",
    [
        (crossent.BCELoss, CF.binary_cross_entropy, True),
        (crossent.BCEWithLogitsLoss, CF.binary_cross_entropy_with_logits, False),
        (crossent.FocalLoss, CF.sigmoid_focal_loss, False),
        (crossent.BinaryFocalLoss, CF.binary_focal_loss, True),
        (crossent.AsymmetricLoss, CF.asymmetric_loss, False),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_modules_delegate_to_functional(module, fn, probs):
    x, y = _inputs((5, 4), torch.float32, probs=probs)
    y[1, 1] = -1
    m = module(ignore_index=-1, label_smoothing=0.1, weight=torch.rand(4), reduction="sum")
    assert torch.equal(
        m(x, y), fn(x, y, ignore_index=-1, label_smoothing=0.1, weight=m.weight, reduction="sum")
    )


# --------------------------------------------------------------------------------------------
# The seed tutorials' worked examples
# --------------------------------------------------------------------------------------------


def test_seed_walkthrough_42():
    torch.manual_seed(42)
    p = torch.rand(2, 3)
    y = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss = crossent.binary_cross_entropy(p, y)
    assert round(loss.item(), 4) == 0.7739  # the tutorial printed 0.7725 from rounded inputs
    assert_close(loss, F.binary_cross_entropy(p, y))


def test_seed_walkthrough_0():
    torch.manual_seed(0)
    p = torch.rand(2, 3)
    y = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    elementwise = crossent.binary_cross_entropy(p, y, reduction="none")
    expected = torch.tensor([[0.6857, 1.4620, 2.4250], [2.0247, 0.3673, 1.0053]])
    torch.testing.assert_close(elementwise, expected, atol=5e-5, rtol=0)
    assert round(elementwise.mean().item(), 4) == 1.3283
    assert round(crossent.binary_cross_entropy(p, y).item(), 4) == 1.3283


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_docstrings_have_every_section(name):
    doc = ALL_LOSSES[name].__doc__
    for section in (".. math::", "Args:", "Shape:", "Returns:", ">>>", "References:", "See also:"):
        assert section in doc, section
    assert "{" + "weight}" not in doc  # every fragment was filled in


def test_public_api_is_exported():
    for name in itertools.chain(ALL_LOSSES.values()):
        assert getattr(crossent, name.__name__) is name
    for name in ("BCELoss", "BCEWithLogitsLoss", "FocalLoss", "BinaryFocalLoss", "AsymmetricLoss"):
        assert getattr(crossent, name) is getattr(crossent.nn, name)
