"""The small-input path (``crossent.losses._small``): what ``backend="auto"`` runs for CPU
inputs of at most ``SMALL_NUMEL`` elements. The same values and gradients as the reference,
the same errors, float32's precision at every logit, and the general path wherever the small
one does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent.kernels import _native
from crossent.losses._small import SMALL_NUMEL
from tests._helpers import assert_close


def _fused(out: torch.Tensor) -> bool:
    """Whether the general path's autograd node (FusedLoss) is in the loss's graph."""
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "Fused" in node.name():
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


@pytest.fixture(params=["native", "torch"])
def bce_formulation(request):
    """BCE with logits on the small path runs crossent's native operator where this machine
    builds it, else its torch formulation: a test taking this fixture runs on both."""
    if request.param == "native":
        if _native.status()[0] != "ready":
            pytest.skip(f"the native operators are not built here: {_native.status()}")
        yield "native"
    else:
        with _native.disabled():
            yield "torch"


def _value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7,), (16, 7), (4, 7, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.1},
        {"weight": "w", "ignore_index": 2},
        {"weight": "w", "label_smoothing": 0.2, "ignore_index": None},
    ],
    ids=["plain", "smoothing", "weight_ignore", "weight_smoothing_no_ignore"],
)
def test_cross_entropy_small_equals_the_reference(dtype, shape, reduction, options):
    x = torch.randn(shape, dtype=dtype) * 3
    classes = shape[0] if len(shape) == 1 else shape[1]
    index_shape = () if len(shape) == 1 else shape[:1] + shape[2:]
    t = torch.randint(0, classes, index_shape)
    options = {
        k: (torch.rand(classes, dtype=dtype) + 0.5 if v == "w" else v) for k, v in options.items()
    }
    ours, grad = _value_and_grad(crossent.cross_entropy, x, t, reduction=reduction, **options)
    assert not _fused(ours)  # not the general path's autograd node
    ref, ref_grad = _value_and_grad(
        crossent.cross_entropy, x, t, reduction=reduction, backend="reference", **options
    )
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    assert ours.dtype == dtype


def test_cross_entropy_small_keeps_the_errors_and_the_all_ignored_mean():
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\].*holds 3"):
        crossent.cross_entropy(x, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"holds -100"):
        crossent.cross_entropy(x, torch.tensor([0, -100, 1, 2]), ignore_index=None)
    with pytest.raises(ValueError, match="weight"):
        crossent.cross_entropy(x, torch.tensor([0, 1, 1, 2]), weight=torch.ones(4))
    # every target ignored: crossent's mean is 0 with a zero gradient (torch's is NaN)
    out = crossent.cross_entropy(x, torch.full((4,), -100))
    out.backward()
    assert out.item() == 0.0 and x.grad.abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"pos_weight": "pw", "weight": "w"},
        {"label_smoothing": 0.1, "pos_weight": "pw"},
        {"ignore_index": -1.0, "pos_weight": "pw"},
    ],
    ids=["plain", "weights", "smoothing", "ignore"],
)
@pytest.mark.parametrize("rows", [16, 512])
def test_bce_with_logits_small_equals_the_reference(
    dtype, reduction, options, rows, bce_formulation
):
    x = torch.randn(rows, 5, dtype=dtype) * 4
    y = torch.rand(rows, 5, dtype=dtype)
    y[::3] = y[::3].round()  # hard targets among the soft ones
    if "ignore_index" in options:
        y[1, :2] = -1.0
    made = {"pw": torch.rand(5, dtype=dtype) + 0.5, "w": torch.rand(rows, 5, dtype=dtype)}
    options = {k: made.get(v, v) for k, v in options.items()}
    ours, grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits, x, y, reduction=reduction, **options
    )
    assert not _fused(ours)
    ref, ref_grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits,
        x,
        y,
        reduction=reduction,
        backend="reference",
        **options,
    )
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


def test_bce_with_logits_small_keeps_float32_precision_at_every_logit(bce_formulation):
    # torch's own float32 kernel forms (1 - y) x - logsigmoid(x) and loses the loss's relative
    # precision from about x = -15 on. The small path does not: one softplus of the logit
    # flipped towards the nearer hard target, and for soft targets a correction that never
    # cancels it; hard and soft targets, alone and mixed
    for n in (341, 4097):
        x = torch.linspace(-85, 85, n)
        for value in (0.0, 1.0, 0.3, 0.5, 0.97, 0.999, "mixed"):
            if value == "mixed":
                y = (torch.arange(n) % 3 == 0).float()
                y[1::3] = 0.97
            else:
                y = torch.full_like(x, value)
            ours, grad = _value_and_grad(
                crossent.binary_cross_entropy_with_logits, x, y, reduction="none"
            )
            exact, exact_grad = _value_and_grad(
                crossent.binary_cross_entropy_with_logits,
                x.double(),
                y.double(),
                reduction="none",
                backend="reference",
            )
            assert not _fused(ours)
            for got, want in ((ours, exact), (grad, exact_grad)):
                big = want.abs() > 1e-30
                error = (got.double() - want).abs()[big]
                assert torch.all(error <= 1e-5 * want.abs()[big]), (n, value, error.max())
    torch_loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    exact = crossent.binary_cross_entropy_with_logits(
        x.double(), torch.zeros_like(x.double()), reduction="none", backend="reference"
    )
    assert ((torch_loss.double() - exact).abs() > 1e-2 * exact.abs()).any()  # torch's does not


@pytest.mark.parametrize("n", [50, 5000])
def test_bce_with_logits_small_takes_targets_outside_0_1_as_torch_does(n, bce_formulation):
    """BCE with logits is defined for any target (torch takes them): one outside [0, 1] is
    not taken for a hard one, on either hardness check (50 and 5000 elements)."""
    x = torch.randn(n, dtype=torch.float64) * 3
    y = torch.rand(n, dtype=torch.float64) * 4 - 1.5
    y[::2] = y[::2].round()  # integers outside [0, 1] among them: -1, 2
    ours, grad = _value_and_grad(crossent.binary_cross_entropy_with_logits, x, y)
    ref, ref_grad = _value_and_grad(F.binary_cross_entropy_with_logits, x, y)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


def test_bce_with_logits_small_is_one_autograd_node(bce_formulation):
    """Loss and gradient in one pass, handed to autograd as one node: a retained graph
    backpropagates twice (a new gradient each time), an incoming gradient scales it, and
    second derivatives are refused as on the fused path (not silently wrong)."""
    x = torch.randn(32, 10, requires_grad=True)
    y = (torch.rand(32, 10) < 0.3).float()
    loss = crossent.binary_cross_entropy_with_logits(x, y, pos_weight=torch.full((10,), 2.0))
    node = {"native": "CppNode<(anonymous namespace)::OnePassLoss>", "torch": "SmallLossBackward"}
    assert loss.grad_fn.name().endswith(node[bce_formulation])
    assert loss.grad_fn.next_functions[0][0].name() == "torch::autograd::AccumulateGrad"
    (3.0 * loss).backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    ref = F.binary_cross_entropy_with_logits(
        x.double(), y.double(), pos_weight=torch.full((10,), 2.0, dtype=torch.float64)
    )
    (ref_grad,) = torch.autograd.grad(ref, x)
    assert_close(first, 3.0 * ref_grad.float())
    assert_close(x.grad, 4.0 * ref_grad.float())
    with pytest.raises(RuntimeError, match=r"first derivatives only.*backend=\"reference\""):
        torch.autograd.grad(crossent.binary_cross_entropy_with_logits(x, y), x, create_graph=True)


@pytest.mark.parametrize("name", ["sigmoid_focal_loss", "poly1_focal_loss"])
def test_focal_small_hard_targets_are_one_autograd_node(name):
    """Hard targets (every one 0 or 1): loss and gradient in one pass, one node, equal to the
    reference under a non-unit incoming gradient; soft targets: differentiated by autograd."""
    fn = getattr(crossent, name)
    x = (torch.randn(32, 10, dtype=torch.float64) * 5).requires_grad_()
    y = (torch.rand(32, 10) < 0.3).double()
    options = {"gamma": 3.0, "alpha": 0.3, "pos_weight": torch.rand(10, dtype=torch.float64) + 0.5}
    for reduction in ("mean", "none"):
        ours = fn(x, y, reduction=reduction, **options)
        assert ours.grad_fn.name() == "SmallLossBackward"
        ref = fn(x, y, reduction=reduction, backend="reference", **options)
        scale = torch.rand(ours.shape, dtype=torch.float64) + 0.5
        (got,) = torch.autograd.grad(ours, x, scale)
        (want,) = torch.autograd.grad(ref, x, scale)
        assert_close(ours, ref)
        assert_close(got, want)
    soft = fn(x, torch.full_like(y, 0.3), **options)
    assert soft.grad_fn.name() != "SmallLossBackward" and not _fused(soft)


@pytest.mark.parametrize("name", ["binary_cross_entropy_with_logits", "sigmoid_focal_loss"])
def test_one_node_formulations_under_torch_func_grad(name):
    """Under ``torch.func.grad`` the one-node formulations take their autograd form: the
    transform's gradient equals autograd's (hard targets, the one-node case)."""
    fn = getattr(crossent, name)
    x = torch.randn(8, 5, dtype=torch.float64)
    y = (torch.rand(8, 5) < 0.3).double()
    ours = torch.func.grad(lambda a: fn(a, y, pos_weight=torch.full((5,), 2.0).double()))(x)
    _, ref_grad = _value_and_grad(
        fn, x, y, pos_weight=torch.full((5,), 2.0).double(), backend="reference"
    )
    assert_close(ours, ref_grad)


def test_small_path_only_where_it_applies(monkeypatch):
    x = torch.randn(8, 4, requires_grad=True)
    t = torch.randint(0, 4, (8,))
    y = torch.rand(8, 4)
    assert not _fused(crossent.cross_entropy(x, t))
    # an explicit backend, the environment's, an option not covered, a larger input: general
    assert _fused(crossent.cross_entropy(x, t, backend="fused"))
    assert _fused(crossent.softmax_focal_loss(x, t, label_smoothing=0.1))
    assert _fused(crossent.binary_focal_loss(torch.sigmoid(x), y))
    big = torch.randn(SMALL_NUMEL // 4 + 1, 4, requires_grad=True)
    assert _fused(crossent.cross_entropy(big, torch.randint(0, 4, (big.shape[0],))))
    monkeypatch.setenv("CROSSENT_BACKEND", "fused")
    assert _fused(crossent.cross_entropy(x, t))
    # a float16 input keeps the general path's float32 computation
    monkeypatch.delenv("CROSSENT_BACKEND")
    half = crossent.binary_cross_entropy_with_logits(x.detach().half(), y.half())
    assert half.dtype == torch.float16
    exact = crossent.binary_cross_entropy_with_logits(x.detach(), y)
    torch.testing.assert_close(half.float(), exact, rtol=1e-3, atol=1e-3)


def test_small_path_options_validated_once_per_value():
    from crossent.losses import CE
    from crossent.losses._small import cached_options

    w = torch.rand(4)
    first = cached_options(CE, {"weight": w, "label_smoothing": 0.1})
    assert cached_options(CE, {"weight": w, "label_smoothing": 0.1}) is first
    w.add_(1.0)  # an in-place change is a new value
    assert cached_options(CE, {"weight": w, "label_smoothing": 0.1}) is not first
    with pytest.raises(ValueError, match="label_smoothing"):
        cached_options(CE, {"label_smoothing": 1.5})


def test_value_checks_on_a_device_never_read_on_the_host(monkeypatch):
    # On a GPU a value check is an assertion on the device (torch._assert_async): no host
    # read, so no synchronisation. Shown on CPU by treating CPU tensors as a device's, with
    # every way of reading a tensor on the host disabled during the checks.
    from crossent import _validation as V

    monkeypatch.setattr(V, "on_device", lambda tensor: True)

    def refuse(*args, **kwargs):
        raise AssertionError("a value check read a tensor on the host")

    good_t, bad_t = torch.tensor([0, 2, -100, 1]), torch.tensor([0, 3, 1, 1])
    probs_ok, probs_bad = torch.rand(3, 4), torch.tensor([0.2, 1.5])
    with monkeypatch.context() as m:
        for method in ("item", "__bool__", "__float__", "__int__", "tolist"):
            m.setattr(torch.Tensor, method, refuse)
        V.check_class_indices(good_t, 3, -100)
        V.check_probabilities("input", probs_ok)
        V.check_unit_targets("the focal loss", probs_ok, None)
        V.check_nonnegative_tensor("alpha", probs_ok)
        # CPU runs torch._assert_async at once; a GPU fails the next synchronising call
        with pytest.raises(RuntimeError, match=r"class indices in \[0, 2\].*on the device"):
            V.check_class_indices(bad_t, 3, -100)
        with pytest.raises(RuntimeError, match=r"probabilities in \[0, 1\].*on the device"):
            V.check_probabilities("input", probs_bad)
        with pytest.raises(RuntimeError, match=r"values in \[0, 1\].*on the device"):
            V.check_unit_targets("the focal loss", probs_bad, None)
        with pytest.raises(RuntimeError, match=r"`alpha` to be >= 0.*on the device"):
            V.check_nonnegative_tensor("alpha", torch.tensor([0.5, -0.1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    "loss, options",
    [
        ("focal", {}),
        ("focal", {"gamma": 1.5, "alpha": None, "label_smoothing": 0.1}),
        ("focal", {"gamma": 3.0, "pos_weight": "pw", "weight": "w"}),
        ("poly1_focal", {}),
        ("poly1_focal", {"gamma": 0.0, "epsilon": 2.0, "alpha": 0.6}),
    ],
    ids=["default", "gamma15_smoothing", "gamma3_weights", "poly1", "poly1_gamma0"],
)
def test_sigmoid_focal_small_equals_the_reference(dtype, reduction, loss, options):
    fn = crossent.sigmoid_focal_loss if loss == "focal" else crossent.poly1_focal_loss
    x = torch.randn(16, 5, dtype=dtype) * 4
    y = torch.rand(16, 5, dtype=dtype)
    y[:8] = y[:8].round()
    made = {"pw": torch.rand(5, dtype=dtype) + 0.5, "w": torch.rand(16, 5, dtype=dtype)}
    options = {k: made.get(v, v) for k, v in options.items()}
    ours, grad = _value_and_grad(fn, x, y, reduction=reduction, **options)
    assert not _fused(ours)
    ref, ref_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="reference", **options)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


def test_sigmoid_focal_small_precision_and_where_it_does_not_apply():
    x = torch.linspace(-60, 60, 241)
    for y in (torch.zeros_like(x), torch.ones_like(x)):
        ours = crossent.sigmoid_focal_loss(x, y, reduction="none")
        exact = crossent.sigmoid_focal_loss(x.double(), y.double(), reduction="none")
        big = exact > 1e-30  # below, float32 underflows as it must
        assert torch.all((ours.double() - exact).abs()[big] <= 1e-5 * exact[big])
    x = torch.randn(6, 3, requires_grad=True)
    y = (torch.rand(6, 3) < 0.5).float()
    # gamma in (0, 1): the general path's closed form (finite gradient at p_t = 1)
    assert _fused(crossent.sigmoid_focal_loss(x, y, gamma=0.5))
    assert _fused(crossent.asymmetric_loss(x, y, gamma_neg=0.5))
    assert _fused(crossent.softmax_focal_loss(x, y.argmax(1), gamma=0.5))
    with pytest.raises(ValueError, match=r"values in \[0, 1\] for the focal loss"):
        crossent.sigmoid_focal_loss(x, y * 2)


@pytest.mark.parametrize(
    "options",
    [{"z_loss": 1e-2}, {"softcap": 2.0}, {"sample_weight": "v"}],
    ids=["z_loss", "softcap", "sample_weight"],
)
def test_small_path_never_drops_an_option_it_does_not_compute(options):
    # options the small formulation does not know send the call to the general path
    x = torch.randn(6, 4, dtype=torch.float64) * 3
    t = torch.randint(0, 4, (6,))
    options = {
        k: (torch.rand(6, dtype=torch.float64) if v == "v" else v) for k, v in options.items()
    }
    ours, grad = _value_and_grad(crossent.cross_entropy, x, t, **options)
    ref, ref_grad = _value_and_grad(crossent.cross_entropy, x, t, backend="reference", **options)
    plain = crossent.cross_entropy(x, t)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    assert not torch.allclose(ours, plain)


# ---- the formulations added for every loss ----------------------------------------------------

_G = torch.Generator().manual_seed(7)


def _case_tensors(kind: str, dtype: torch.dtype):
    """Input, target and the tensors options refer to, for one kind of call."""
    g = _G.manual_seed(7)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64) * 3
    made = {
        "w": torch.rand(5, generator=g, dtype=torch.float64) + 0.5,
        "ew": torch.rand(12, 5, generator=g, dtype=torch.float64),
    }
    if kind in ("index", "index3", "index_plain"):
        t = torch.randint(0, 5, (12,), generator=g)
        if kind != "index_plain":
            t[[2, 7]] = -100
        if kind == "index3":  # (N, C, d): the class dimension in the middle
            x, t = x.view(4, 3, 5).transpose(1, 2), t.view(4, 3)
            t = torch.where(t < 0, t, t % 5)
        return x.to(dtype), t, {k: v.to(dtype) for k, v in made.items()}
    if kind == "probs_target":
        t = torch.softmax(torch.randn(12, 5, generator=g, dtype=torch.float64), 1)
        return x.to(dtype), t.to(dtype), {k: v.to(dtype) for k, v in made.items()}
    y = torch.rand(12, 5, generator=g, dtype=torch.float64)
    y[:6] = y[:6].round()
    if kind.endswith("_ignore"):
        y[3, :2] = -1.0  # ignored with ignore_index=-1
    if kind.startswith("multilabel_probs"):
        x = torch.sigmoid(x)
    return x.to(dtype), y.to(dtype), {k: v.to(dtype) for k, v in made.items()}


_NEW_CASES = {
    "ce_probs": ("cross_entropy", "probs_target", {}),
    "ce_probs_options": (
        "cross_entropy",
        "probs_target",
        {"weight": "w", "label_smoothing": 0.1, "ignore_index": None},
    ),
    "softmax_focal": ("softmax_focal_loss", "index", {}),
    "softmax_focal_options": (
        "softmax_focal_loss",
        "index",
        {"gamma": 3.0, "alpha": 0.3, "weight": "w"},
    ),
    "softmax_focal_alpha_classes": ("softmax_focal_loss", "index3", {"gamma": 1.5, "alpha": "w"}),
    "softmax_focal_gamma0": ("softmax_focal_loss", "index", {"gamma": 0.0, "alpha": 0.5}),
    "softmax_focal_ignore_a_class": ("softmax_focal_loss", "index_plain", {"ignore_index": 1}),
    "softmax_focal_no_ignore": (
        "softmax_focal_loss",
        "index_plain",
        {"ignore_index": None, "alpha": 0.25, "gamma": 4.0},
    ),
    "poly1": ("poly1_cross_entropy", "index", {}),
    "poly1_options": ("poly1_cross_entropy", "index3", {"epsilon": -0.5, "weight": "w"}),
    "bce_probs": ("binary_cross_entropy", "multilabel_probs", {}),
    "bce_probs_options": (
        "binary_cross_entropy",
        "multilabel_probs_ignore",
        {"weight": "ew", "ignore_index": -1},
    ),
    "bce_ignore": (
        "binary_cross_entropy_with_logits",
        "multilabel_ignore",
        {"ignore_index": -1, "pos_weight": "w", "weight": "ew", "label_smoothing": 0.1},
    ),
    "focal_ignore": ("sigmoid_focal_loss", "multilabel_ignore", {"ignore_index": -1}),
    "focal_gamma4": ("sigmoid_focal_loss", "multilabel", {"gamma": 4.0, "alpha": None}),
    "poly1_focal_options": (
        "poly1_focal_loss",
        "multilabel_ignore",
        {"ignore_index": -1, "epsilon": 0.5, "gamma": 3.0, "pos_weight": "w"},
    ),
    "poly1_focal_gamma0": ("poly1_focal_loss", "multilabel", {"gamma": 0.0, "alpha": None}),
    "asl": ("asymmetric_loss", "multilabel", {}),
    "asl_options": (
        "asymmetric_loss",
        "multilabel_ignore",
        {
            "gamma_pos": 1.0,
            "gamma_neg": 2.0,
            "clip": 0.1,
            "ignore_index": -1,
            "weight": "ew",
            "label_smoothing": 0.1,
        },
    ),
    "asl_no_clip": ("asymmetric_loss", "multilabel", {"clip": None, "gamma_pos": 2.0}),
    "asl_gamma0": ("asymmetric_loss", "multilabel", {"gamma_neg": 0.0}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(_NEW_CASES))
def test_small_formulations_equal_the_closed_form(case, reduction, dtype):
    # values and gradients of every option the small formulation covers, against the general
    # path's closed form (what backend="auto" ran at this size before), to the dtype's table
    name, kind, options = _NEW_CASES[case]
    fn = getattr(crossent, name)
    x, y, made = _case_tensors(kind, dtype)
    options = {k: made.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    ours, grad = _value_and_grad(fn, x, y, reduction=reduction, **options)
    assert not _fused(ours)
    ref, ref_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="fused", **options)
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    assert ours.dtype == dtype


@pytest.mark.parametrize(
    "name, options",
    [
        ("sigmoid_focal_loss", {}),
        ("sigmoid_focal_loss", {"gamma": 1.0, "alpha": None, "pos_weight": "pw"}),
        ("poly1_focal_loss", {"epsilon": 2.0}),
        ("asymmetric_loss", {}),
        ("asymmetric_loss", {"gamma_pos": 1.0, "clip": None}),
        ("binary_cross_entropy_with_logits", {"ignore_index": -1.0, "pos_weight": "pw"}),
    ],
    ids=["focal", "focal_gamma1_pos_weight", "poly1_focal", "asl", "asl_no_clip", "bce_ignore"],
)
def test_small_binary_losses_keep_float32_precision_at_every_logit(name, options):
    # loss and gradient within 1e-5 of float64 at every logit from -80 to 80, hard and soft
    # targets (where both are above float32's underflow)
    fn = getattr(crossent, name)
    x = torch.linspace(-80, 80, 321)
    for value in (0.0, 1.0, 0.3, 0.5, 0.97):
        y = torch.full_like(x, value)
        made = {"pw": torch.full((321,), 2.0)}
        kw = {k: made.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
        ours, grad = _value_and_grad(fn, x, y, reduction="none", **kw)
        assert not _fused(ours)
        kw64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        exact, exact_grad = _value_and_grad(
            fn, x.double(), y.double(), reduction="none", backend="fused", **kw64
        )
        for got, want in ((ours, exact), (grad, exact_grad)):
            big = want.abs() > 1e-30
            error = (got.double() - want).abs()[big]
            assert torch.all(error <= 1e-5 * want.abs()[big]), (name, value, error.max())


def _same_error(call):
    """The error of ``call(backend)`` on the small path and on the general path: the same type
    and message."""
    with pytest.raises((ValueError, TypeError)) as small:
        call(None)
    with pytest.raises((ValueError, TypeError)) as general:
        call("fused")
    assert type(small.value) is type(general.value)
    assert str(small.value) == str(general.value)


def test_small_formulations_keep_the_errors():
    x = torch.randn(6, 4, requires_grad=True)
    t = torch.tensor([0, 1, 4, 2, 3, 1])  # 4: out of range
    p = torch.rand(6, 4)
    y = (torch.rand(6, 4) < 0.5).float()
    for fn in (crossent.softmax_focal_loss, crossent.poly1_cross_entropy):
        _same_error(lambda b, fn=fn: fn(x, t, backend=b))
        _same_error(lambda b, fn=fn: fn(x, t.clamp_max(3), weight=torch.ones(3), backend=b))
    _same_error(lambda b: crossent.softmax_focal_loss(x, t % 4, alpha=-torch.ones(4), backend=b))
    _same_error(lambda b: crossent.binary_cross_entropy(p * 2, y, backend=b))
    _same_error(lambda b: crossent.binary_cross_entropy(p - 0.5, y, backend=b))
    _same_error(lambda b: crossent.binary_cross_entropy(p, y, weight=torch.ones(3), backend=b))
    _same_error(lambda b: crossent.asymmetric_loss(x, y, weight=torch.ones(3), backend=b))
    _same_error(lambda b: crossent.sigmoid_focal_loss(x, y + 1, ignore_index=-1, backend=b))
    _same_error(lambda b: crossent.cross_entropy(x, p[:, :3], backend=b))


def _edge_cases():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    y = (torch.rand(6, 4, generator=g) < 0.5).double()
    t = torch.arange(6) % 3
    masked = torch.cat([x[:, :3], torch.full((6, 1), float("-inf"), dtype=x.dtype)], 1)
    return {
        # every element ignored: crossent's mean is 0 with a zero gradient
        "bce_all_ignored": (
            crossent.binary_cross_entropy_with_logits,
            x,
            torch.full_like(y, -1.0),
            {"ignore_index": -1},
        ),
        "asl_all_ignored": (
            crossent.asymmetric_loss,
            x,
            torch.full_like(y, -1.0),
            {"ignore_index": -1},
        ),
        "softmax_focal_all_ignored": (crossent.softmax_focal_loss, x, torch.full((6,), -100), {}),
        "poly1_all_ignored": (crossent.poly1_cross_entropy, x, torch.full((6,), -100), {}),
        # a row of probability targets that holds ignore_index everywhere is ignored
        "ce_probs_ignored_row": (
            crossent.cross_entropy,
            x,
            torch.cat([p[:5], torch.full((1, 4), -100.0, dtype=p.dtype)]),
            {},
        ),
        "ce_probs_row_starting_with_ignore_index": (
            crossent.cross_entropy,
            x,
            torch.cat([p[:5], torch.tensor([[-100.0, 0.2, 0.3, 0.5]], dtype=p.dtype)]),
            {},
        ),
        # torch's own binary_cross_entropy gradient is not crossent's at p = 0 and 1
        "bce_probs_at_0_and_1": (crossent.binary_cross_entropy, torch.cat([p[:5], y[:1]]), y, {}),
        # a -inf logit outside the target: a zero gradient there, not 0 * inf = NaN
        "softmax_focal_minus_inf_logit": (crossent.softmax_focal_loss, masked, t, {}),
        "poly1_minus_inf_logit": (crossent.poly1_cross_entropy, masked, t, {}),
        "ce_probs_minus_inf_logit": (
            crossent.cross_entropy,
            masked,
            torch.cat([p[:, :3], torch.zeros(6, 1, dtype=p.dtype)], 1),
            {"reduction": "none"},
        ),
    }


@pytest.mark.parametrize("case", list(_edge_cases()))
def test_small_formulations_keep_the_general_paths_answers_at_the_edges(case):
    fn, x, target, options = _edge_cases()[case]
    ours, grad = _value_and_grad(fn, x, target, **options)
    ref, ref_grad = _value_and_grad(fn, x, target, backend="fused", **options)
    assert_close(ours, ref)
    assert torch.isfinite(grad).all()
    assert_close(grad, ref_grad)


def test_small_path_caches_no_inference_tensor():
    # tensors the small path makes and keeps (a class weight of -1, a row of ones) are made
    # outside inference mode: a first call under it must not break a later training call
    x, t, w = torch.randn(8, 6), torch.randint(0, 6, (8,)), torch.rand(6)
    with torch.inference_mode():
        crossent.softmax_focal_loss(x, t, weight=w, gamma=3.0)
    ours, grad = _value_and_grad(crossent.softmax_focal_loss, x, t, weight=w, gamma=3.0)
    assert not _fused(ours)
    ref, ref_grad = _value_and_grad(
        crossent.softmax_focal_loss, x, t, weight=w, gamma=3.0, backend="fused"
    )
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


@pytest.mark.parametrize(
    "name",
    [
        "cross_entropy",
        "binary_cross_entropy_with_logits",
        "sigmoid_focal_loss",
        "asymmetric_loss",
        "softmax_focal_loss",
        "poly1_cross_entropy",
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_inputs_take_the_general_path(name, reduction):
    fn = getattr(crossent, name)
    x = torch.zeros(0, 5, requires_grad=True)
    softmax = name in ("cross_entropy", "softmax_focal_loss", "poly1_cross_entropy")
    t = torch.zeros(0, dtype=torch.long) if softmax else torch.zeros(0, 5)
    ours, general = fn(x, t, reduction=reduction), fn(x, t, reduction=reduction, backend="fused")
    torch.testing.assert_close(ours, general, equal_nan=True)
