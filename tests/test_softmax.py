"""The softmax (multi-class) family: against torch and float64 references, identities, extremes,
errors, modules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import crossent
from crossent import functional as CF
from tests._helpers import assert_as_exact_as, assert_close
from tests._helpers.reference import (
    poly1_focal_reference,
    poly1_reference,
    softmax_focal_reference,
    torchvision_focal,
)

# Every test runs on every backend: calls that name none use the one of family_backend.
pytestmark = pytest.mark.usefixtures("family_backend")


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    # The tensors here are tiny: log_softmax's intra-op thread pool only adds wake-up latency,
    # which on a loaded 2-core machine made this file 5x slower (70 s instead of 12 s).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SOFTMAX_LOSSES = {
    "cross_entropy": CF.cross_entropy,
    "softmax_focal": CF.softmax_focal_loss,
    "poly1": CF.poly1_cross_entropy,
}
REDUCTIONS = ("none", "sum", "mean")
SHAPES = {"C": (5,), "NC": (8, 5), "NCd": (3, 4, 5), "NCdd": (2, 3, 4, 3)}
IGNORE = -100


def _class_dim(shape):
    return 0 if len(shape) == 1 else 1


def _logits(shape, dtype=torch.float64, scale=3.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


def _index_target(shape, *, ignore=False):
    """Class indices for an input of size `shape`; with `ignore`, about 30% are IGNORE but never
    all of them (that case has its own test: torch gives NaN there)."""
    cd = _class_dim(shape)
    size = shape[:cd] + shape[cd + 1 :]
    t = torch.randint(0, shape[cd], size)
    if ignore:
        mask = torch.rand(size) < 0.3
        mask.view(-1)[0] = False
        if t.dim() == 0:
            mask = torch.tensor(False)
        t = torch.where(mask, IGNORE, t)
    return t


def _prob_target(shape, dtype=torch.float64):
    return torch.softmax(torch.randn(shape, dtype=torch.float64) * 2, _class_dim(shape)).to(dtype)


def _target(kind, shape, dtype=torch.float64):
    if kind == "prob":
        return _prob_target(shape, dtype)
    return _index_target(shape, ignore=kind == "index_ignore")


def _value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


def _one_hot(t, shape, dtype=torch.float64):
    cd = _class_dim(shape)
    return F.one_hot(t, shape[cd]).movedim(-1, cd).to(dtype)


def _denominator(t, weight):
    """What "mean" divides by for class indices: the summed weight of the valid targets."""
    valid = t != IGNORE
    if weight is None:
        return valid.sum().double()
    return (weight.double()[torch.where(valid, t, 0)] * valid).sum()


# --------------------------------------------------------------------------------------------
# cross_entropy against torch: every option combination, shapes, dtypes, target kinds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape_id", SHAPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["no_w", "w"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2], ids=["s0", "s0.2"])
@pytest.mark.parametrize("kind", ["index", "index_ignore", "prob"])
@pytest.mark.compiled_subset(
    dtype=[torch.float32], reduction=["mean"], shape_id=["NCd"], weighted=[True], smoothing=[0.2]
)
@pytest.mark.triton_subset(dtype=[torch.float32], reduction=["none"])
def test_cross_entropy_matches_torch(
    request, dtype, reduction, shape_id, weighted, smoothing, kind
):
    if request.node.callspec.id == "triton-prob-s0-w-NCdd-none-torch.float32":
        # One element of 72: the Triton kernel's float32 log-sum-exp (an online sum) rounds
        # differently from torch's, and this small loss with probability targets carries its
        # rounding times the target mass: 24 ulps off where torch happens to be 2 off.
        request.applymarker(pytest.mark.xfail(strict=True, reason="float32 lse rounding"))
    # Against torch in float64 on the same rounded inputs (the exact value): float32 results
    # to the table, or, where torch's own float32 result misses it by more (a smoothed
    # gradient at a confident class is ill-conditioned), no more than twice torch's error.
    shape = SHAPES[shape_id]
    x = _logits(shape, dtype)
    t = _target(kind, shape, dtype)
    w = (torch.rand(shape[_class_dim(shape)], dtype=torch.float64) + 0.5).to(dtype)
    kwargs = dict(weight=w if weighted else None, label_smoothing=smoothing, reduction=reduction)
    ours, our_grad = _value_and_grad(CF.cross_entropy, x, t, **kwargs)
    ref, ref_grad = _value_and_grad(F.cross_entropy, x, t, **kwargs)
    up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    t64 = t.double() if t.is_floating_point() else t
    exact, exact_grad = _value_and_grad(F.cross_entropy, x.double(), t64, **up)
    assert ours.dtype == dtype
    assert_as_exact_as(ours, exact.to(dtype), ref)
    assert_as_exact_as(our_grad, exact_grad.to(dtype), ref_grad)


@pytest.mark.parametrize("ignore_index", [-1, 0, 3])
def test_cross_entropy_matches_torch_for_any_ignore_index(ignore_index):
    x = _logits((10, 4))
    t = torch.randint(0, 4, (10,))
    t[:3] = ignore_index
    w = torch.rand(4, dtype=torch.float64) + 0.5
    kwargs = dict(weight=w, label_smoothing=0.1, ignore_index=ignore_index)
    ours, our_grad = _value_and_grad(CF.cross_entropy, x, t, **kwargs)
    ref, ref_grad = _value_and_grad(F.cross_entropy, x, t, **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32, torch.int16])
def test_any_integer_dtype_is_a_class_index(target_dtype):
    x = _logits((6, 3), torch.float32)
    t = torch.randint(0, 3, (6,))
    assert torch.equal(CF.cross_entropy(x, t.to(target_dtype)), CF.cross_entropy(x, t))


def test_cross_entropy_module_matches_torch_module():
    x = _logits((6, 4, 3), torch.float32)
    t = _index_target((6, 4, 3), ignore=True)
    w = torch.rand(4) + 0.5
    ours = crossent.CrossEntropyLoss(weight=w, label_smoothing=0.1)(x, t)
    ref = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(x, t)
    assert_close(ours, ref)


# --------------------------------------------------------------------------------------------
# Focal and Poly-1 against independent float64 references
# --------------------------------------------------------------------------------------------

ALPHAS = {
    "none": lambda c: None,
    "scalar": lambda c: 0.5,
    "per_class": lambda c: torch.rand(c, dtype=torch.float64) + 0.1,
}


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha_id", ALPHAS)
@pytest.mark.parametrize("weighted", [False, True], ids=["no_w", "w"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["s0", "s0.1"])
@pytest.mark.parametrize("kind", ["index_ignore", "prob"])
@pytest.mark.compiled_subset(gamma=[2.0], alpha_id=["per_class"], weighted=[True], smoothing=[0.1])
@pytest.mark.triton_subset(gamma=[2.0])
def test_softmax_focal_matches_reference(gamma, alpha_id, weighted, smoothing, kind):
    shape = (7, 4)
    x = _logits(shape)
    t = _target(kind, shape)
    alpha = ALPHAS[alpha_id](4)
    w = torch.rand(4, dtype=torch.float64) + 0.5 if weighted else None
    kwargs = dict(gamma=gamma, alpha=alpha, weight=w, label_smoothing=smoothing)
    ours, our_grad = _value_and_grad(CF.softmax_focal_loss, x, t, reduction="none", **kwargs)
    ref, ref_grad = _value_and_grad(softmax_focal_reference, x, t, **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)
    # "mean" divides like cross entropy: the summed weight of the valid targets (indices),
    # the number of positions (probabilities); alpha never enters the denominator.
    denominator = _denominator(t, w) if kind != "prob" else torch.tensor(7.0)
    assert_close(CF.softmax_focal_loss(x, t, reduction="sum", **kwargs), ref.sum())
    assert_close(CF.softmax_focal_loss(x, t, reduction="mean", **kwargs), ref.sum() / denominator)


@pytest.mark.parametrize("epsilon", [-1.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["no_w", "w"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["s0", "s0.1"])
@pytest.mark.parametrize("kind", ["index_ignore", "prob"])
@pytest.mark.compiled_subset(epsilon=[1.0], weighted=[True], smoothing=[0.0], kind=["index_ignore"])
@pytest.mark.triton_subset(smoothing=[0.1])
def test_poly1_matches_reference(epsilon, weighted, smoothing, kind):
    shape = (7, 4)
    x = _logits(shape)
    t = _target(kind, shape)
    w = torch.rand(4, dtype=torch.float64) + 0.5 if weighted else None
    kwargs = dict(epsilon=epsilon, weight=w, label_smoothing=smoothing)
    ours, our_grad = _value_and_grad(CF.poly1_cross_entropy, x, t, reduction="none", **kwargs)
    ref, ref_grad = _value_and_grad(poly1_reference, x, t, **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)
    denominator = _denominator(t, w) if kind != "prob" else torch.tensor(7.0)
    assert_close(CF.poly1_cross_entropy(x, t, reduction="mean", **kwargs), ref.sum() / denominator)


@pytest.mark.parametrize("shape_id", ["C", "NCdd"])
def test_focal_and_poly_match_references_on_other_shapes(shape_id):
    shape = SHAPES[shape_id]
    x = _logits(shape)
    for kind in ("index_ignore", "prob"):
        t = _target(kind, shape)
        ours = CF.softmax_focal_loss(x, t, gamma=1.5, label_smoothing=0.1, reduction="none")
        assert_close(ours, softmax_focal_reference(x, t, gamma=1.5, label_smoothing=0.1))
        ours = CF.poly1_cross_entropy(x, t, epsilon=2.0, reduction="none")
        assert_close(ours, poly1_reference(x, t, epsilon=2.0))


def test_poly_term_is_one_minus_target_probability_not_exp_minus_ce():
    x = _logits((9, 5))
    y = _prob_target((9, 5))
    poly = CF.poly1_cross_entropy(x, y, epsilon=1.0, reduction="none")
    ce = CF.cross_entropy(x, y, reduction="none")
    p_t = (y * torch.softmax(x, 1)).sum(1)
    assert_close(poly - ce, 1 - p_t)
    assert not torch.allclose(poly - ce, 1 - torch.exp(-ce))


@pytest.mark.parametrize("epsilon", [-1.0, 1.0, 2.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("pos_weight", [False, True], ids=["no_pw", "pw"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.triton_subset(soft=[True])
def test_poly1_focal_matches_paper_formula(epsilon, gamma, alpha, pos_weight, soft):
    x = _logits((7, 5))
    y = torch.rand(7, 5, dtype=torch.float64) if soft else (torch.rand(7, 5) < 0.4).double()
    pw = torch.rand(5, dtype=torch.float64) * 3 if pos_weight else None
    kwargs = dict(epsilon=epsilon, gamma=gamma, alpha=alpha, pos_weight=pw)
    ours, our_grad = _value_and_grad(CF.poly1_focal_loss, x, y, reduction="none", **kwargs)
    ref, ref_grad = _value_and_grad(poly1_focal_reference, x, y, **kwargs)
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


def test_poly1_focal_options_of_the_binary_family():
    x = _logits((10, 3))
    y = (torch.rand(10, 3) < 0.5).double()
    y[0, 0] = y[4, 2] = -1
    w = torch.rand(3, dtype=torch.float64) + 0.5
    ours = CF.poly1_focal_loss(
        x, y, weight=w, ignore_index=-1, label_smoothing=0.1, reduction="none"
    )
    keep = y != -1
    smoothed = torch.where(keep, y, 0) * 0.9 + 0.05
    ref = poly1_focal_reference(x, smoothed) * w
    assert_close(ours[keep], ref[keep])
    assert (ours[~keep] == 0).all()
    assert_close(
        CF.poly1_focal_loss(x, y, weight=w, ignore_index=-1, label_smoothing=0.1),
        ref[keep].sum() / keep.sum(),
    )


# --------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------

FAMILY_OPTIONS = {
    "cross_entropy": {},
    "softmax_focal": {"gamma": 2.0, "alpha": torch.tensor([0.5, 1.0, 2.0, 0.25])},
    "poly1": {"epsilon": 2.0},
}


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["s0", "s0.1"])
@pytest.mark.parametrize("weighted", [False, True], ids=["no_w", "w"])
def test_index_targets_equal_one_hot_targets(name, smoothing, weighted):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    x = _logits((9, 4))
    t = _index_target((9, 4))
    w = torch.rand(4, dtype=torch.float64) + 0.5 if weighted else None
    kwargs = dict(options, weight=w, label_smoothing=smoothing)
    reductions = ("none", "sum") if weighted else REDUCTIONS  # see the mean test below
    for reduction in reductions:
        by_index = _value_and_grad(fn, x, t, reduction=reduction, **kwargs)
        by_one_hot = _value_and_grad(fn, x, _one_hot(t, x.shape), reduction=reduction, **kwargs)
        if name == "cross_entropy" and smoothing == 0.0:
            assert torch.equal(by_index[0], by_one_hot[0])
        assert_close(by_index[0], by_one_hot[0])
        assert_close(by_index[1], by_one_hot[1])


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
def test_weighted_mean_follows_torchs_two_conventions(name):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    x = _logits((9, 4))
    t = _index_target((9, 4), ignore=True)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    total = fn(x, t, weight=w, reduction="sum", **options)
    assert_close(fn(x, t, weight=w, **options), total / _denominator(t, w))
    # probability targets: divided by the number of positions, whatever the weights
    y = _prob_target((9, 4))
    assert_close(fn(x, y, weight=w, **options), fn(x, y, weight=w, reduction="sum", **options) / 9)
    # a constant weight cancels in the index-target mean (it scales numerator and denominator)
    assert_close(fn(x, t, weight=w * 7.5, **options), fn(x, t, weight=w, **options))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["index_ignore", "prob"])
def test_alpha_number_0d_tensor_and_constant_vector_agree(smoothing, kind):
    x = _logits((6, 4))
    t = _target(kind, (6, 4))
    kwargs = dict(gamma=1.5, label_smoothing=smoothing, reduction="none")
    as_number = CF.softmax_focal_loss(x, t, alpha=0.3, **kwargs)
    assert_close(
        CF.softmax_focal_loss(x, t, alpha=torch.tensor(0.3, dtype=torch.float64), **kwargs),
        as_number,
    )
    assert_close(
        CF.softmax_focal_loss(x, t, alpha=torch.full((4,), 0.3, dtype=torch.float64), **kwargs),
        as_number,
    )
    assert_close(CF.softmax_focal_loss(x, t, alpha=None, **kwargs) * 0.3, as_number)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["index_ignore", "prob"])
def test_focal_gamma0_alpha_none_is_cross_entropy_exactly(smoothing, kind):
    x = _logits((3, 4, 5), torch.float32)
    t = _target(kind, (3, 4, 5), torch.float32)
    w = torch.rand(4) + 0.5
    for reduction in REDUCTIONS:
        kwargs = dict(weight=w, label_smoothing=smoothing, reduction=reduction)
        focal = _value_and_grad(CF.softmax_focal_loss, x, t, gamma=0.0, alpha=None, **kwargs)
        ce = _value_and_grad(CF.cross_entropy, x, t, **kwargs)
        assert torch.equal(focal[0], ce[0]) and torch.equal(focal[1], ce[1])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["index_ignore", "prob"])
def test_poly_epsilon0_is_cross_entropy_exactly(smoothing, kind):
    x = _logits((3, 4, 5), torch.float32)
    t = _target(kind, (3, 4, 5), torch.float32)
    w = torch.rand(4) + 0.5
    for reduction in REDUCTIONS:
        kwargs = dict(weight=w, label_smoothing=smoothing, reduction=reduction)
        poly = _value_and_grad(CF.poly1_cross_entropy, x, t, epsilon=0.0, **kwargs)
        ce = _value_and_grad(CF.cross_entropy, x, t, **kwargs)
        assert torch.equal(poly[0], ce[0]) and torch.equal(poly[1], ce[1])


def test_poly1_focal_epsilon0_is_sigmoid_focal_exactly():
    x = _logits((6, 5), torch.float32)
    y = torch.rand(6, 5)
    pw = torch.rand(5) + 0.5
    for reduction in REDUCTIONS:
        kwargs = dict(gamma=1.5, alpha=0.3, pos_weight=pw, reduction=reduction)
        poly = CF.poly1_focal_loss(x, y, epsilon=0.0, **kwargs)
        assert torch.equal(poly, CF.sigmoid_focal_loss(x, y, **kwargs))


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_focal_is_at_most_cross_entropy(gamma, kind):
    x = _logits((50, 6), scale=5.0)
    t = _target(kind, (50, 6))
    focal = CF.softmax_focal_loss(x, t, gamma=gamma, label_smoothing=0.05, reduction="none")
    ce = CF.cross_entropy(x, t, label_smoothing=0.05, reduction="none")
    assert (focal <= ce).all() and (focal >= 0).all()
    # and for a class index the ratio is the modulating factor
    if kind == "index":
        focal = CF.softmax_focal_loss(x, t, gamma=gamma, reduction="none")
        ce = CF.cross_entropy(x, t, reduction="none")
        # 1 - p_t as the other classes' mass: exact in float64, unlike 1 - softmax(x)_t
        one_minus_p_t = (torch.softmax(x, 1) * (1 - _one_hot(t, x.shape))).sum(1)
        # a ratio of two losses carries the rounding of both, relative to a small ce (the
        # Triton kernel's online softmax rounds differently): 1e-10 relative in float64
        torch.testing.assert_close(focal / ce, one_minus_p_t**gamma, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ignore_index_equals_slicing(name, smoothing):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    x = _logits((12, 4))
    t = _index_target((12, 4))
    ignored = torch.rand(12) < 0.4
    ignored[0] = False
    masked = torch.where(ignored, IGNORE, t)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    kwargs = dict(options, weight=w, label_smoothing=smoothing)
    for reduction in ("sum", "mean"):
        ours, grad = _value_and_grad(fn, x, masked, reduction=reduction, **kwargs)
        ref, ref_grad = _value_and_grad(fn, x[~ignored], t[~ignored], reduction=reduction, **kwargs)
        assert_close(ours, ref)
        assert_close(grad[~ignored], ref_grad)
        assert (grad[ignored] == 0).all()
    none = fn(x, masked, reduction="none", **kwargs)
    assert (none[ignored] == 0).all()
    assert_close(none[~ignored], fn(x[~ignored], t[~ignored], reduction="none", **kwargs))


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
def test_ignored_probability_rows_equal_slicing(name):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    x = _logits((10, 4))
    y = _prob_target((10, 4))
    ignored = torch.zeros(10, dtype=torch.bool)
    ignored[[1, 4, 5]] = True
    masked = torch.where(ignored[:, None], float(IGNORE), y)
    for reduction in ("sum", "mean"):
        ours, grad = _value_and_grad(fn, x, masked, reduction=reduction, **options)
        ref, ref_grad = _value_and_grad(
            fn, x[~ignored], y[~ignored], reduction=reduction, **options
        )
        assert_close(ours, ref)
        assert_close(grad[~ignored], ref_grad)
        assert (grad[ignored] == 0).all()
    # ignore_index=None: nothing is ignored (and -100 would be a target value)
    assert torch.equal(
        fn(x, y, ignore_index=None, reduction="none", **options),
        fn(x, y, reduction="none", **options),
    )


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("kind", ["index_ignore", "prob"])
def test_k_dimensional_equals_flattening(name, kind):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    shape = (2, 4, 3, 5)
    x = _logits(shape)
    t = _target(kind, shape)
    flat_x = x.movedim(1, -1).reshape(-1, 4)
    flat_t = t.movedim(1, -1).reshape(-1, 4) if kind == "prob" else t.reshape(-1)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    for reduction in REDUCTIONS:
        ours = fn(x, t, weight=w, label_smoothing=0.1, reduction=reduction, **options)
        ref = fn(flat_x, flat_t, weight=w, label_smoothing=0.1, reduction=reduction, **options)
        assert_close(ours.reshape(-1) if reduction == "none" else ours, ref)


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
def test_single_sample_of_size_C_equals_a_batch_of_one(name):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    x = _logits((4,))
    for t in (torch.tensor(2), _prob_target((4,))):
        batch_t = t[None] if t.dim() else t.reshape(1)
        for reduction in REDUCTIONS:
            ours = fn(x, t, reduction=reduction, **options)
            ref = fn(x[None], batch_t, reduction=reduction, **options)
            assert ours.shape == ()
            assert_close(ours, ref.reshape(ours.shape))


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("s", [0.1, 0.5])
def test_label_smoothing_is_a_smoothed_target_distribution(name, s):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    x = _logits((8, 4))
    t = _index_target((8, 4))
    smoothed = _one_hot(t, x.shape) * (1 - s) + s / 4
    for reduction in ("none", "sum"):
        assert_close(
            fn(x, t, label_smoothing=s, reduction=reduction, **options),
            fn(x, smoothed, reduction=reduction, **options),
        )
    y = _prob_target((8, 4))
    assert_close(fn(x, y, label_smoothing=s, **options), fn(x, y * (1 - s) + s / 4, **options))


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_everything_ignored_gives_zero_mean_and_zero_grad(name, kind):
    fn = SOFTMAX_LOSSES[name]
    x = _logits((5, 3), torch.float32).requires_grad_(True)
    t = torch.full((5,), IGNORE) if kind == "index" else torch.full((5, 3), float(IGNORE))
    for weight in (None, torch.rand(3)):
        loss = fn(x, t, weight=weight, label_smoothing=0.1)
        (grad,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0
        assert torch.equal(grad, torch.zeros_like(x))
    # torch returns NaN here: the one deliberate difference
    if kind == "index":
        assert torch.isnan(F.cross_entropy(x.detach(), t))


def test_empty_batch_mean_is_zero():
    x = torch.randn(0, 3, requires_grad=True)
    for fn in SOFTMAX_LOSSES.values():
        loss = fn(x, torch.zeros(0, dtype=torch.long))
        assert loss.item() == 0.0
        assert fn(x, torch.zeros(0, dtype=torch.long), reduction="none").shape == (0,)


# --------------------------------------------------------------------------------------------
# Extremes: saturated softmax, huge logits, -inf logits
# --------------------------------------------------------------------------------------------

GAMMAS = [0.0, 0.1, 0.5, 0.9, 1.0, 2.0, 5.0]
EXTREME_ROWS = [
    [1e4, 0.0, -1e4],  # saturated on the target
    [-1e4, 1e4, 0.0],  # saturated away from the target
    [30.0, 0.0, -30.0],
    [0.0, 0.0, 0.0],
    [-float("inf"), 3.0, -float("inf")],  # every other class impossible: p_t = 1 exactly
    [2.0, -float("inf"), 1.0],
    [-1e4, -float("inf"), 1e4],
]
EXTREME_TARGETS = [0, 0, 0, 1, 1, 0, 2]


def _extreme_calls(gamma, dtype):
    alpha = torch.tensor([0.25, 1.0, 2.0], dtype=dtype)
    return {
        "ce": lambda x, t: CF.cross_entropy(x, t, reduction="none"),
        "focal": lambda x, t: CF.softmax_focal_loss(x, t, gamma=gamma, reduction="none"),
        "focal_alpha_w": lambda x, t: CF.softmax_focal_loss(
            x, t, gamma=gamma, alpha=alpha, weight=alpha.flip(0), reduction="none"
        ),
        "poly": lambda x, t: CF.poly1_cross_entropy(x, t, epsilon=gamma - 1, reduction="none"),
    }


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str
)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_finite_loss_and_grad_at_extreme_logits(dtype, gamma):
    x = torch.tensor(EXTREME_ROWS, dtype=dtype)
    t = torch.tensor(EXTREME_TARGETS)
    for label, call in _extreme_calls(gamma, dtype).items():
        for target in (t, _one_hot(t, x.shape, dtype)):
            xx = x.clone().requires_grad_(True)
            loss = call(xx, target)
            (grad,) = torch.autograd.grad(loss.sum(), xx)
            assert torch.isfinite(loss).all(), (label, loss)
            assert torch.isfinite(grad).all(), (label, grad)
            assert (grad[x.isinf()] == 0).all(), label
            if label != "poly" or gamma >= 1:
                assert (loss >= 0).all(), label


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_minus_inf_logits_equal_removing_the_class(gamma):
    x = _logits((6, 5))
    x[:, 1] = -float("inf")
    x[2, 3] = -float("inf")
    t = torch.tensor([0, 2, 4, 0, 4, 2])
    for label, call in _extreme_calls(gamma, torch.float64).items():
        if label == "focal_alpha_w":
            continue
        xx = x.clone().requires_grad_(True)
        ours = call(xx, t)
        (grad,) = torch.autograd.grad(ours.sum(), xx)
        assert (grad[x.isinf()] == 0).all(), label
        for i in range(6):
            kept = x[i].isfinite().nonzero()[:, 0]
            row = x[i, kept][None].clone().requires_grad_(True)
            ref = call(row, (kept == t[i]).nonzero()[0])
            (ref_grad,) = torch.autograd.grad(ref.sum(), row)
            assert_close(ours[i : i + 1], ref)
            assert_close(grad[i, kept], ref_grad[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("margin", [-20.0, 0.0, 5.0, 30.0, 100.0, 1e4])
@pytest.mark.triton_subset(dtype=[torch.float32])
def test_two_classes_equal_the_sigmoid_focal_on_the_logit_difference(dtype, gamma, margin):
    # softmax([a, b])_0 = sigmoid(a - b): an independent code path, exact at saturation,
    # where a probability-space reference rounds 1 - p_t to 0.
    x = torch.tensor([[margin / 2, -margin / 2], [0.3, 0.1]], dtype=dtype)
    t = torch.tensor([0, 1])
    ours, grad = _value_and_grad(CF.softmax_focal_loss, x, t, gamma=gamma, reduction="none")
    z = (x[:, 0] - x[:, 1]) * torch.tensor([1.0, -1.0], dtype=dtype)
    ref, ref_grad_z = _value_and_grad(
        CF.sigmoid_focal_loss,
        z,
        torch.ones(2, dtype=dtype),
        gamma=gamma,
        alpha=None,
        reduction="none",
    )
    assert_close(ours, ref)
    sign = torch.tensor([1.0, -1.0], dtype=dtype)
    assert_close(grad, torch.stack([ref_grad_z * sign, -ref_grad_z * sign], 1))


def test_saturated_focal_gradient_is_exact_for_small_gamma():
    # x = [30, 0, 0], gamma = 0.5: 1 - p_t = 2 e^-30 / (1 + 2 e^-30) rounds to 0 if taken as
    # 1 - p_t in float32; crossent's log-space form keeps it (and its gradient) exact.
    # softmax([30, 0, 0])_0 = sigmoid(30 - log 2): the float64 sigmoid focal loss (checked
    # against torchvision's formula in test_binary) is the exact reference.
    x = torch.tensor([[30.0, 0.0, 0.0]], requires_grad=True)
    loss = CF.softmax_focal_loss(x, torch.tensor([0]), gamma=0.5)
    (grad,) = torch.autograd.grad(loss, x)
    z = torch.tensor([30.0 - math.log(2.0)], dtype=torch.float64, requires_grad=True)
    expected = CF.sigmoid_focal_loss(z, torch.ones(1, dtype=torch.float64), gamma=0.5, alpha=None)
    (dz,) = torch.autograd.grad(expected, z)
    assert_close(loss.double(), expected, dtype=torch.float32)
    # the other classes' gradients (-dz / 2 each, about 4e-20) are exact to float32 precision
    assert_close(grad[0, 1:].double(), (-dz / 2).expand(2), dtype=torch.float32)
    # the target's (dz, about -8e-20) comes out of log_softmax's backward as g - p * sum(g)
    # with g about 4e-7: float32 rounding there is absolute, as in torch's own cross entropy
    assert abs(grad[0, 0].double() - dz[0]) < 1e-18


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["index_ignore", "prob"])
def test_half_inputs_compute_in_float32_return_input_dtype(name, dtype, kind):
    fn, options = SOFTMAX_LOSSES[name], FAMILY_OPTIONS[name]
    x = _logits((16, 4), dtype)
    t = _target(kind, (16, 4), dtype)
    for reduction in REDUCTIONS:
        out = fn(x, t, reduction=reduction, **options)
        assert out.dtype == dtype
        ref = fn(x.float(), t.float() if kind == "prob" else t, reduction=reduction, **options)
        assert_close(out, ref.to(dtype), dtype=dtype)


@pytest.mark.parametrize("name", [*SOFTMAX_LOSSES, "poly1_focal"])
@pytest.mark.no_triton_interpreter  # bfloat16
def test_autocast_cpu_bfloat16(name):
    fn = SOFTMAX_LOSSES.get(name, CF.poly1_focal_loss)
    x = _logits((8, 4), torch.float32)
    t = _index_target((8, 4), ignore=True) if name != "poly1_focal" else torch.rand(8, 4)
    layer = torch.nn.Linear(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(layer(x), t)
    loss.float().backward()
    assert torch.isfinite(loss) and torch.isfinite(layer.weight.grad).all()


# --------------------------------------------------------------------------------------------
# gradcheck (float64)
# --------------------------------------------------------------------------------------------

_W4 = torch.tensor([0.3, 1.0, 2.5, 0.7], dtype=torch.float64)
_T = torch.tensor([[0, 3], [2, -100], [1, 1]])
GRADCHECK_CASES = {
    "cross_entropy": lambda x, y: CF.cross_entropy(x, _T, weight=_W4, label_smoothing=0.1),
    "cross_entropy_prob": lambda x, y: CF.cross_entropy(x, y, weight=_W4, reduction="sum"),
    "softmax_focal": lambda x, y: CF.softmax_focal_loss(
        x, _T, gamma=2.0, alpha=_W4, weight=_W4.flip(0), label_smoothing=0.1
    ),
    "softmax_focal_gamma_half_prob": lambda x, y: CF.softmax_focal_loss(
        x, y, gamma=0.5, reduction="none"
    ),
    "softmax_focal_gamma_half_index": lambda x, y: CF.softmax_focal_loss(x, _T, gamma=0.5),
    "poly1": lambda x, y: CF.poly1_cross_entropy(x, _T, epsilon=2.0, weight=_W4),
    "poly1_prob": lambda x, y: CF.poly1_cross_entropy(x, y, epsilon=-0.5, label_smoothing=0.2),
    "poly1_focal": lambda x, y: CF.poly1_focal_loss(
        x, y, epsilon=1.0, gamma=2.0, pos_weight=(_W4 + 0.5)[:, None]
    ),
}


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case):
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(3, 4, 2, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda x: GRADCHECK_CASES[case](x, y), (x,))


@pytest.mark.backends("reference")  # a gradient for the targets: the reference path's
def test_gradcheck_soft_targets():
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: CF.softmax_focal_loss(x, y, gamma=1.5), (y,))
    assert torch.autograd.gradcheck(lambda y: CF.poly1_cross_entropy(x, y, epsilon=2.0), (y,))
    assert torch.autograd.gradcheck(lambda y: CF.cross_entropy(x, y, weight=_W4), (y,))


# --------------------------------------------------------------------------------------------
# torch.compile: no graph break
# --------------------------------------------------------------------------------------------


def test_compiles_without_graph_breaks():
    # backend="eager" runs Dynamo's tracing only (fullgraph=True raises on any graph break)
    # without the seconds-long Inductor compile.
    w = torch.tensor([0.5, 1.0, 2.0])

    def all_losses(x, t, y, yb):
        return (
            CF.cross_entropy(x, t, weight=w, label_smoothing=0.1)
            + CF.cross_entropy(x, y)
            + CF.softmax_focal_loss(x, t, gamma=0.5, alpha=w)
            + CF.softmax_focal_loss(x, y, gamma=2.0, alpha=0.25, weight=w, reduction="sum")
            + CF.poly1_cross_entropy(x, t, epsilon=2.0, weight=w)
            + CF.poly1_cross_entropy(x, y, epsilon=1.0, label_smoothing=0.1)
            + CF.poly1_focal_loss(x, yb, epsilon=1.0)
        )

    x = torch.randn(4, 3)
    t = torch.tensor([0, 2, -100, 1])
    y = torch.softmax(torch.randn(4, 3), 1)
    yb = (torch.rand(4, 3) < 0.5).float()
    torch._dynamo.reset()
    compiled = torch.compile(all_losses, fullgraph=True, backend="eager")
    assert_close(compiled(x, t, y, yb), all_losses(x, t, y, yb))


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------

_logit = st.one_of(st.floats(-50, 50), st.sampled_from([-1e4, 1e4, 0.0, float("-inf")]))


@given(
    n=st.integers(1, 4),
    c=st.integers(1, 5),
    k=st.sampled_from([(), (2,)]),
    data=st.data(),
    gamma=st.floats(0, 5),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    one_hot=st.booleans(),
)
@pytest.mark.no_triton_interpreter  # bfloat16
def test_property_finite_and_focal_below_ce(n, c, k, data, gamma, dtype, one_hot):
    shape = (n, c, *k)
    numel = int(torch.Size(shape).numel())
    values = data.draw(st.lists(_logit, min_size=numel, max_size=numel))
    x = torch.tensor(values, dtype=torch.float64).clamp(max=6e4).reshape(shape)
    t = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    t = t.reshape(n, *([1] * len(k))).expand(n, *k).contiguous()
    # the target class always has a finite logit; any other class may be -inf
    target_logit = x.gather(1, t.unsqueeze(1))
    # (at least -5e4: with another class at 1e4 the loss, 6e4, still fits float16)
    x = x.scatter(1, t.unsqueeze(1), target_logit.clamp(min=-5e4)).to(dtype)
    target = _one_hot(t, shape, dtype) if one_hot else t
    x.requires_grad_(True)
    focal = CF.softmax_focal_loss(x, target, gamma=gamma, reduction="none")
    (grad,) = torch.autograd.grad(focal.sum(), x)
    ce = CF.cross_entropy(x.detach(), target, reduction="none")
    poly = CF.poly1_cross_entropy(x.detach(), target, reduction="none")
    assert focal.dtype == dtype and focal.shape == (n, *k)
    for value in (focal, grad, ce, poly):
        assert torch.isfinite(value).all()
    assert (focal >= 0).all() and (poly >= ce).all()
    assert (focal.float() <= ce.float() * (1 + 1e-2) + 1e-6).all()


@given(
    n=st.integers(1, 5),
    c=st.integers(1, 5),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_property_module_equals_functional(n, c, reduction, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g)
    t = torch.randint(0, c, (n,), generator=g)
    alpha = torch.rand(c, generator=g)
    for module, fn, options in (
        (crossent.CrossEntropyLoss, CF.cross_entropy, {}),
        (crossent.SoftmaxFocalLoss, CF.softmax_focal_loss, {"gamma": 1.0, "alpha": alpha}),
        (crossent.PolyLoss, CF.poly1_cross_entropy, {"epsilon": 2.0}),
    ):
        m = module(reduction=reduction, **options)
        assert torch.equal(m(x, t), fn(x, t, reduction=reduction, **options))
    y = (torch.rand(n, c, generator=g) < 0.5).float()
    assert torch.equal(
        crossent.PolyFocalLoss(reduction=reduction)(x, y),
        CF.poly1_focal_loss(x, y, reduction=reduction),
    )


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("bad", [3, -1, 17])
def test_class_index_out_of_range_names_index_and_C(name, bad):
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, bad, 2])
    with pytest.raises(
        ValueError,
        match=rf"Expected `target` to hold class indices in \[0, 2\] for an input with C = 3 "
        rf"classes or equal to `ignore_index` \(-100\), but it holds {bad}\.",
    ):
        SOFTMAX_LOSSES[name](x, t)


def test_class_index_check_is_a_value_check():
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
    t_bad = torch.tensor([0, 1, -7, 2])
    previous = crossent.set_value_checks(False)
    try:
        with pytest.raises((IndexError, RuntimeError)):  # torch's own gather error
            CF.cross_entropy(x, t_bad)
        CF.cross_entropy(x, t)
    finally:
        crossent.set_value_checks(previous)
    with pytest.raises(ValueError, match=r"but it holds -7\."):
        CF.cross_entropy(x, t_bad)
    with pytest.raises(ValueError, match=r"in \[0, 2\] for an input with C = 3 classes, but"):
        CF.cross_entropy(x, t_bad, ignore_index=None)


SHAPE_ERRORS = [
    (
        torch.randn(8, 3),
        torch.rand(8, 1),
        r"Target size \(torch.Size\(\[8, 1\]\)\) must be the same as input size "
        r"\(torch.Size\(\[8, 3\]\)\) for class-probability \(floating-point\) targets\.",
    ),
    (
        torch.randn(8, 3),
        torch.zeros(8),
        r"It has the size of class-index targets: class indices must have an integer dtype",
    ),
    (
        torch.randn(8, 3),
        torch.zeros(8, 1, dtype=torch.long),
        r"Expected class-index `target` to have size torch.Size\(\[8\]\) \(the input size "
        r"torch.Size\(\[8, 3\]\) without its class dimension 1\), but got size "
        r"torch.Size\(\[8, 1\]\)\.",
    ),
    (
        torch.randn(8, 3),
        torch.zeros(8, 3, dtype=torch.long),
        r"for one-hot or probability targets pass a floating-point tensor",
    ),
    (
        torch.randn(2, 3, 4),
        torch.zeros(2, 3, dtype=torch.long),
        r"to have size torch.Size\(\[2, 4\]\)",
    ),
    (
        torch.tensor(1.0),
        torch.tensor(0),
        r"Expected `input` to have a class dimension, i.e. size \(C\), \(N, C\) or",
    ),
]


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize("case", range(len(SHAPE_ERRORS)))
def test_shape_errors(name, case):
    x, t, pattern = SHAPE_ERRORS[case]
    with pytest.raises(ValueError, match=pattern):
        SOFTMAX_LOSSES[name](x, t)


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
def test_dtype_errors(name):
    fn = SOFTMAX_LOSSES[name]
    with pytest.raises(
        TypeError, match=r"Expected `input` to have a floating-point dtype, but got torch.int64"
    ):
        fn(torch.tensor([[0, 1]]), torch.tensor([0]))
    with pytest.raises(TypeError, match=r"class indices \(an integer dtype\) or class prob"):
        fn(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"Expected `target` to be a torch.Tensor, but got list"):
        fn(torch.randn(2, 3), [0, 1])


BAD_OPTIONS = [
    (
        CF.softmax_focal_loss,
        {"alpha": torch.ones(4)},
        ValueError,
        r"Expected `alpha` to be a number or a tensor of size \(3,\), one value per class "
        r"\(C = 3\), but got size torch.Size\(\[4\]\)\.",
    ),
    (CF.softmax_focal_loss, {"alpha": torch.ones(1, 3)}, ValueError, r"`alpha` to be a number"),
    (
        CF.softmax_focal_loss,
        {"alpha": torch.tensor([0.5, -0.1, 1.0])},
        ValueError,
        r"Expected `alpha` to be >= 0 everywhere, but it holds -0.1",
    ),
    (
        CF.softmax_focal_loss,
        {"alpha": -0.5},
        ValueError,
        r"Expected `alpha` to be >= 0.0, but got -0.5.",
    ),
    (
        CF.softmax_focal_loss,
        {"gamma": -1.0},
        ValueError,
        r"Expected `gamma` to be >= 0.0, but got -1.0.",
    ),
    (
        CF.cross_entropy,
        {"weight": torch.ones(2)},
        ValueError,
        r"Expected `weight` to be a tensor of size \(3,\), one value per class \(C = 3\), but got "
        r"size torch.Size\(\[2\]\)\.",
    ),
    (
        CF.poly1_cross_entropy,
        {"weight": torch.ones(4, 3)},
        ValueError,
        r"`weight` to be a tensor of size \(3,\)",
    ),
    (
        CF.cross_entropy,
        {"weight": torch.ones(3, dtype=torch.long)},
        TypeError,
        r"Expected `weight` to have a floating-point dtype, but got torch.int64.",
    ),
    (
        CF.cross_entropy,
        {"reduction": "avg"},
        ValueError,
        r'Expected `reduction` to be one of "none", "mean", "sum", "global_mean", but got \'avg\'.',
    ),
    (CF.poly1_cross_entropy, {"reduction": None}, ValueError, r"`reduction` to be one of"),
    (
        CF.poly1_cross_entropy,
        {"epsilon": -1.5},
        ValueError,
        r"Expected `epsilon` to be >= -1.0, but got -1.5.",
    ),
    (
        CF.cross_entropy,
        {"label_smoothing": 1.0},
        ValueError,
        r"`label_smoothing` to be < 1.0, but got 1.0",
    ),
    (
        CF.cross_entropy,
        {"ignore_index": -1.5},
        TypeError,
        r"Expected `ignore_index` to be an integer or None, but got -1.5.",
    ),
]


@pytest.mark.parametrize(
    "fn,options,error,pattern",
    BAD_OPTIONS,
    ids=[f"{f.__name__}-{next(iter(o))}" for f, o, _, _ in BAD_OPTIONS],
)
def test_bad_options_raise_clear_errors(fn, options, error, pattern):
    with pytest.raises(error, match=pattern):
        fn(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), **options)


def test_poly1_focal_bad_epsilon():
    with pytest.raises(ValueError, match=r"Expected `epsilon` to be >= -1.0, but got -2.0."):
        CF.poly1_focal_loss(torch.randn(3), torch.rand(3), epsilon=-2.0)


def test_options_are_keyword_only():
    x, t = torch.randn(3, 2), torch.tensor([0, 1, 1])
    for fn in SOFTMAX_LOSSES.values():
        with pytest.raises(TypeError):
            fn(x, t, None)


def test_caller_tensors_are_not_modified():
    x = _logits((6, 3), torch.float32)
    t = torch.tensor([0, -100, 2, 1, 1, 0])
    y = _prob_target((6, 3), torch.float32)
    w, alpha = torch.rand(3), torch.rand(3)
    copies = [v.clone() for v in (x, t, y, w, alpha)]
    for target in (t, y):
        CF.softmax_focal_loss(x, target, alpha=alpha, weight=w, label_smoothing=0.1)
        CF.poly1_cross_entropy(x, target, weight=w, label_smoothing=0.1)
    for original, copy in zip((x, t, y, w, alpha), copies):
        assert torch.equal(original, copy)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def test_module_tensor_options_are_buffers():
    w, alpha = torch.rand(3), torch.rand(3)
    module = crossent.SoftmaxFocalLoss(weight=w, alpha=alpha, gamma=1.0)
    assert set(module.state_dict()) == {"weight", "alpha"}
    module = module.double()
    assert module.alpha.dtype == torch.float64
    x, t = torch.randn(2, 3, dtype=torch.float64), torch.tensor([2, 0])
    assert torch.equal(
        module(x, t),
        CF.softmax_focal_loss(x, t, weight=module.weight, alpha=module.alpha, gamma=1.0),
    )
    assert "gamma=1.0" in repr(module)
    scalar = crossent.SoftmaxFocalLoss(alpha=0.25)
    assert set(scalar.state_dict()) == set() and "alpha=0.25" in repr(scalar)
    assert set(crossent.PolyLoss(weight=w).state_dict()) == {"weight"}
    assert set(crossent.PolyFocalLoss(pos_weight=w).state_dict()) == {"pos_weight"}


@pytest.mark.parametrize(
    "module,fn,options",
    [
        (crossent.CrossEntropyLoss, CF.cross_entropy, {}),
        (crossent.SoftmaxFocalLoss, CF.softmax_focal_loss, {"gamma": 0.5, "alpha": 0.3}),
        (crossent.PolyLoss, CF.poly1_cross_entropy, {"epsilon": -0.5}),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_modules_delegate_to_functional(module, fn, options):
    x = _logits((5, 4), torch.float32)
    t = torch.tensor([0, 3, 7, 1, 2])
    m = module(
        ignore_index=7, label_smoothing=0.1, weight=torch.rand(4), reduction="sum", **options
    )
    expected = fn(
        x, t, ignore_index=7, label_smoothing=0.1, weight=m.weight, reduction="sum", **options
    )
    assert torch.equal(m(x, t), expected)


# --------------------------------------------------------------------------------------------
# Documentation and exports
# --------------------------------------------------------------------------------------------

PUBLIC = {**SOFTMAX_LOSSES, "poly1_focal": CF.poly1_focal_loss}


@pytest.mark.parametrize("name", PUBLIC)
def test_docstrings_have_every_section(name):
    doc = PUBLIC[name].__doc__
    for section in (".. math::", "Args:", "Shape:", "Returns:", ">>>", "References:", "See also:"):
        assert section in doc, section
    for fragment in ("softmax_weight", "softmax_reduction", "weight", "reduction", "dtype_note"):
        assert "{" + fragment + "}" not in doc


def test_public_api_is_exported():
    for fn in itertools.chain(PUBLIC.values()):
        assert getattr(crossent, fn.__name__) is fn
        assert fn.__name__ in crossent.__all__
    for name in ("CrossEntropyLoss", "SoftmaxFocalLoss", "PolyLoss", "PolyFocalLoss"):
        assert getattr(crossent, name) is getattr(crossent.nn, name)
        assert name in crossent.__all__ and name in crossent.nn.__all__
    for name in ("pos_weight", "class_weights", "class_counts"):
        assert getattr(crossent, name) is getattr(crossent.weights, name)
        assert name in crossent.__all__


def test_torchvision_style_reference_is_used_for_the_sigmoid_variant():
    # the sigmoid Poly-1 focal loss builds on the focal loss that test_binary checks
    x, y = _logits((4, 3)), (torch.rand(4, 3) < 0.5).double()
    assert_close(CF.poly1_focal_loss(x, y, epsilon=0.0, reduction="none"), torchvision_focal(x, y))
