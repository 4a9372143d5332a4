"""The softmax family's z_loss, softcap and sample_weight on every backend, against float64
computations written here: softcap through ``torch.tanh``, then torch's cross entropy (or the
probability-space focal / Poly-1 references); the z-loss by hand from ``torch.logsumexp``;
sample weights by hand."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent import functional as CF
from crossent.explain import explain
from tests._helpers import assert_close
from tests._helpers.reference import poly1_reference, softmax_focal_reference

# Every test runs on every backend: calls that name none use the one of family_backend.
pytestmark = pytest.mark.usefixtures("family_backend")

IGNORE = -100
SHAPE = (6, 4, 2)  # (N, C, d): the per-sample loss is (6, 2)
LOSSES = {
    "ce": (CF.cross_entropy, {}),
    "focal": (CF.softmax_focal_loss, {"gamma": 2.0, "alpha": 0.5}),
    "poly1": (CF.poly1_cross_entropy, {"epsilon": 1.0}),
}
OPTIONS = {
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.0},
    "sample_weight": {"sample_weight": True},
    "all_w_s": {"z_loss": 0.05, "softcap": 3.0, "sample_weight": True, "weight": True, "s": 0.1},
}


def _case(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 3
    if kind == "prob":
        t = torch.softmax(torch.randn(SHAPE, generator=g, dtype=torch.float64), 1)
        t[2, :, 1] = IGNORE  # a position whose whole target vector is ignore_index
    else:
        t = torch.randint(0, SHAPE[1], (SHAPE[0], SHAPE[2]), generator=g)
        t[2, 1] = t[4, 0] = IGNORE
    w = torch.rand(SHAPE[1], generator=g, dtype=torch.float64) + 0.5
    v = torch.randn(SHAPE[0], SHAPE[2], generator=g, dtype=torch.float64)  # negatives too
    return x, t, w, v


def _expected(loss, x, t, *, weight, s, z_loss, softcap, sample_weight, reduction):
    """The loss in float64 from torch's own functions, then the options by hand."""
    x = x.double()
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    probs = t.is_floating_point()
    w = None if weight is None else weight.double()
    if loss == "ce":
        kwargs = {} if probs else {"ignore_index": IGNORE}
        per = F.cross_entropy(x, t, weight=w, label_smoothing=s, reduction="none", **kwargs)
    elif loss == "focal":
        per = softmax_focal_reference(
            x, t, gamma=2.0, alpha=0.5, weight=w, label_smoothing=s, ignore_index=IGNORE
        )
    else:
        per = poly1_reference(x, t, epsilon=1.0, weight=w, label_smoothing=s, ignore_index=IGNORE)
    if probs:
        valid = ~(t == IGNORE).all(1)
        per = torch.where(valid, per, 0.0)  # torch knows no ignored probability rows
        counted = valid.double()  # "mean" counts valid positions
    else:
        valid = t != IGNORE
        counted = valid.double() if w is None else w[t.clamp_min(0)] * valid
    lse = torch.logsumexp(x, 1)
    per = per + z_loss * counted * lse**2
    if sample_weight is not None:
        per = per * sample_weight.double()
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / counted.sum()


def _value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    grad_out = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


# float64 for every combination (the table's 1e-12); float32 with every option at once
GRID = [
    pytest.param(loss, kind, option, reduction, dtype, id=f"{loss}-{kind}-{option}-{reduction}-{d}")
    for loss, kind, option, reduction in itertools.product(
        LOSSES, ["index", "prob"], OPTIONS, ["none", "sum", "mean"]
    )
    for d, dtype in (("f64", torch.float64), ("f32", torch.float32))
    if dtype == torch.float64 or option == "all_w_s"
]


@pytest.mark.parametrize("loss,kind,option,reduction,dtype", GRID)
@pytest.mark.compiled_subset(
    loss=["ce"], kind=["index"], option=["all_w_s"], reduction=["mean"], dtype=[torch.float32]
)
@pytest.mark.triton_subset(reduction=["mean"])
def test_matches_float64_computation(loss, kind, option, reduction, dtype):
    x, t, w, v = _case(kind)
    opts = OPTIONS[option]
    fn, extra = LOSSES[loss]
    known = dict(
        weight=w if opts.get("weight") else None,
        s=opts.get("s", 0.0),
        z_loss=opts.get("z_loss", 0.0),
        softcap=opts.get("softcap"),
        sample_weight=v if opts.get("sample_weight") else None,
    )
    kwargs = dict(
        weight=None if known["weight"] is None else w.to(dtype),
        label_smoothing=known["s"],
        z_loss=known["z_loss"],
        softcap=known["softcap"],
        sample_weight=None if known["sample_weight"] is None else v.to(dtype),
    )
    tt = t.to(dtype) if kind == "prob" else t
    x = x.to(dtype)  # the float64 computation sees the same rounded logits
    ours, grad = _value_and_grad(fn, x, tt, reduction=reduction, **kwargs, **extra)
    exact, exact_grad = _value_and_grad(
        lambda x, t: _expected(loss, x, t, reduction=reduction, **known), x.double(), t
    )
    assert ours.dtype == dtype
    assert_close(ours.double(), exact, dtype=dtype, check_dtype=False)
    assert_close(grad.double(), exact_grad, dtype=dtype, check_dtype=False)


def test_z_loss_mean_is_the_loss_plus_z_loss_times_the_mean_of_lse_squared():
    x, t, _, _ = _case("index")
    valid = t != IGNORE
    lse2 = torch.logsumexp(x, 1)[valid].square().mean()
    for fn, extra in LOSSES.values():
        plain = fn(x, t, **extra)
        assert_close(fn(x, t, z_loss=1e-3, **extra), plain + 1e-3 * lse2)


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_sample_weight_never_changes_the_denominator(kind):
    x, t, w, v = _case(kind)
    for fn, extra in LOSSES.values():
        for weight in (None, w):
            plain = fn(x, t, weight=weight, z_loss=0.01, **extra)
            ones = fn(x, t, weight=weight, z_loss=0.01, sample_weight=torch.ones_like(v), **extra)
            halves = fn(x, t, weight=weight, z_loss=0.01, sample_weight=v * 0 + 0.5, **extra)
            assert_close(ones, plain)
            assert_close(halves, plain * 0.5)


def test_off_values_are_the_plain_loss_exactly():
    x, t, _, _ = _case("index")
    for fn, extra in LOSSES.values():
        assert torch.equal(fn(x, t, z_loss=0.0, softcap=None, **extra), fn(x, t, **extra))


def test_a_single_sample_of_size_C():
    x, t, _, _ = _case("index")
    x0, t0 = x[0, :, 0], t[0, 0]
    for fn, extra in LOSSES.values():
        kwargs = dict(z_loss=0.01, softcap=2.0, sample_weight=torch.tensor(1.5, dtype=x.dtype))
        one = fn(x0, t0, **kwargs, **extra)
        batch = fn(x0[None], t0[None], **{**kwargs, "sample_weight": torch.tensor([1.5])}, **extra)
        assert_close(one, batch.to(one.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_finite_at_extreme_logits(dtype, kind):
    x = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    t = torch.tensor([0, 0, 1])
    if kind == "prob":
        t = F.one_hot(t, 3).to(dtype)
    v = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    for (fn, extra), softcap in itertools.product(LOSSES.values(), (None, 30.0)):
        xx = x.clone().requires_grad_(True)
        loss = fn(xx, t, z_loss=1e-4, softcap=softcap, sample_weight=v, reduction="none", **extra)
        (grad,) = torch.autograd.grad(loss.sum(), xx)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), (fn, softcap)


def test_softcap_gradient_where_tanh_rounds_to_one():
    # x / c = 30: tanh is 1 in float32 (and 1 - tanh^2 would be 0); 1 / cosh^2 is 3.5e-26
    x = torch.tensor([[90.0, 0.0, -3.0]])
    t = torch.tensor([1])
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(CF.cross_entropy(x, t, softcap=3.0), x)
    z = 3.0 * torch.tanh(x.detach().double() / 3.0)
    z.requires_grad_(True)
    (dz,) = torch.autograd.grad(F.cross_entropy(z, t), z)
    expected = dz / torch.cosh(x.detach().double() / 3.0).square()
    assert grad[0, 0] != 0
    assert_close(grad.double(), expected, dtype=torch.float32)


@pytest.mark.backends("reference", "fused")  # the eager closed form's row slices
def test_sample_weight_is_sliced_with_the_rows_of_a_large_input():
    x = torch.randn(2100, 40)  # 84000 elements: more than one slice of 65536
    t = torch.randint(0, 40, (2100,))
    v = torch.rand(2100)
    for reduction in ("none", "mean"):
        ours, grad = _value_and_grad(CF.cross_entropy, x, t, sample_weight=v, reduction=reduction)

        def expected(x, t, reduction=reduction):
            per = F.cross_entropy(x, t, reduction="none") * v.double()
            return per if reduction == "none" else per.mean()

        exact, exact_grad = _value_and_grad(expected, x.double(), t)
        assert_close(ours.double(), exact, dtype=torch.float32, check_dtype=False)
        assert_close(grad.double(), exact_grad, dtype=torch.float32, check_dtype=False)


def test_a_sample_weight_requiring_grad_takes_the_reference_path(family_backend):
    x, t, _, v = _case("index")
    v = v.clone().requires_grad_(True)
    if family_backend == "reference":
        loss = CF.cross_entropy(x, t, sample_weight=v)
        (dv,) = torch.autograd.grad(loss, v)
        expected = F.cross_entropy(x, t, reduction="none") / (t != IGNORE).sum()
        assert_close(dv, expected)
    else:
        with pytest.raises(ValueError, match=r"Expected only `input` to require a gradient"):
            CF.cross_entropy(x, t, sample_weight=v)
    assert torch.isfinite(CF.cross_entropy(x, t, sample_weight=v, backend="auto"))


def test_module_takes_sample_weight_in_forward():
    x, t, w, v = _case("index")
    for module, (fn, extra) in zip(
        (crossent.CrossEntropyLoss, crossent.SoftmaxFocalLoss, crossent.PolyLoss),
        LOSSES.values(),
    ):
        loss_fn = module(weight=w, z_loss=0.01, softcap=5.0, **extra)
        expected = fn(x, t, weight=w, z_loss=0.01, softcap=5.0, sample_weight=v, **extra)
        assert torch.equal(loss_fn(x, t, sample_weight=v), expected)
        assert torch.equal(loss_fn(x, t), fn(x, t, weight=w, z_loss=0.01, softcap=5.0, **extra))
        with pytest.raises(TypeError, match=r"unexpected keyword argument 'sample_weight'"):
            module(sample_weight=v)


def test_explain_shows_the_terms_and_drops_nothing():
    x = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    t = torch.tensor([0, 1])
    v = torch.tensor([0.5, 2.0])
    out = explain(x, t, "ce", z_loss=0.01, softcap=5.0, sample_weight=v)
    assert out.formula == "ℓ = v·[-log(p_t) + λ·lse(x)²], x = c·tanh(x / c)"
    assert out.notes == ["torch.nn.functional.cross_entropy has no `z_loss` option."]
    assert "λ = 0.01, c = 5" in ", ".join(out.definitions)
    expected = CF.cross_entropy(x, t, z_loss=0.01, softcap=5.0, sample_weight=v, reduction="none")
    assert_close(torch.tensor([s.loss for s in out.steps]), expected)
    # each step's formula, evaluated in float64, is the loss of its sample
    assert out.formula_max_error < 1e-6
    assert "capped logits" in out.steps[0].note
    plain = explain(x, t, "ce")
    assert "λ" not in plain.formula and "λ" not in ", ".join(plain.definitions)


def test_compiles_without_graph_breaks():
    x, t, w, v = _case("index")

    def losses(x, t, v):
        return (
            CF.cross_entropy(x, t, weight=w, z_loss=1e-3, softcap=5.0, sample_weight=v)
            + CF.softmax_focal_loss(x, t, z_loss=1e-3, sample_weight=v, label_smoothing=0.1)
            + CF.poly1_cross_entropy(x, t, softcap=3.0)
        )

    torch._dynamo.reset()
    compiled = torch.compile(losses, fullgraph=True, backend="eager")
    assert_close(compiled(x, t, v), losses(x, t, v))


BAD = [
    ({"z_loss": -0.1}, ValueError, r"Expected `z_loss` to be >= 0.0, but got -0.1\."),
    ({"z_loss": float("nan")}, ValueError, r"Expected `z_loss` to be finite, but got nan\."),
    ({"softcap": 0.0}, ValueError, r"Expected `softcap` to be > 0.0, but got 0.0\."),
    ({"softcap": -30.0}, ValueError, r"Expected `softcap` to be > 0.0, but got -30.0\."),
    ({"softcap": float("inf")}, ValueError, r"Expected `softcap` to be finite, but got inf\."),
    ({"softcap": "30"}, TypeError, r"Expected `softcap` to be a number, but got '30'\."),
    (
        {"sample_weight": torch.ones(6)},
        ValueError,
        r"Expected `sample_weight` to have size torch.Size\(\[6, 2\]\) \(one weight per sample: "
        r"the input size torch.Size\(\[6, 4, 2\]\) without its class dimension 1\), but got "
        r"size torch.Size\(\[6\]\)\.",
    ),
    (
        {"sample_weight": torch.ones(6, 2, dtype=torch.long)},
        TypeError,
        r"Expected `sample_weight` to have a floating-point dtype, but got torch.int64\.",
    ),
    (
        {"sample_weight": torch.tensor([[1.0, float("nan")]] * 6)},
        ValueError,
        r"Expected `sample_weight` to be finite everywhere, but it holds nan\.",
    ),
    (
        {"sample_weight": [1.0] * 6},
        TypeError,
        r"Expected `sample_weight` to be a torch.Tensor, but got list\.",
    ),
]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(
    "options,error,pattern", BAD, ids=[f"{next(iter(o))}-{i}" for i, (o, _, _) in enumerate(BAD)]
)
def test_bad_values_raise_clear_errors(loss, options, error, pattern):
    fn, extra = LOSSES[loss]
    x, t, _, _ = _case("index")
    with pytest.raises(error, match=pattern):
        fn(x, t, **options, **extra)
