"""The Triton kernels on a real GPU: every loss and option against the reference evaluated in
float64, the backward scale kernel, and offsets past 2**31 elements.

Also the GPU path as a whole: forward and backward without a host synchronisation
(``torch.cuda.set_sync_debug_mode("error")``), captured by a CUDA graph, compiled with
``torch.compile(fullgraph=True)`` (Inductor launching crossent's kernels), and
``torch.library.opcheck`` of the registered ops.

Skipped without CUDA (CI has none: there the same kernels run under ``TRITON_INTERPRET=1``,
see ``test_kernels.py``). On a CUDA machine: ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

import crossent
from crossent import functional as CF
from crossent.kernels import _dispatch, _triton
from tests._helpers import assert_as_exact_as, assert_close
from tests.test_kernels import (
    OPTIONS,
    SOFTMAX_FAMILY,
    VARIANTS,
    _case,
    _ce_value_and_grad,
    _check_against_reference,
    _family_kwargs,
    _public_ce_case,
    _value_and_grad,
)

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.triton,
]
CUDA = "cuda"


@pytest.fixture(autouse=True)
def _no_fallback():
    # a Triton kernel that fails to compile falls back to the eager closed form with a warning,
    # and every later call would then test that instead: fail the test that hit it
    yield
    error, _dispatch._triton_error = _dispatch._triton_error, None
    assert error is None, f"a Triton kernel failed and the eager path ran instead: {error}"


def _to_cuda(value):
    return value.to(CUDA) if isinstance(value, torch.Tensor) else value


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_binary_family_equals_reference(variant, option, reduction, soft, dtype):
    fn, x, y, kwargs = _case(variant, option, dtype, soft, shape=(67, 129))
    x, y = x.to(CUDA), y.to(CUDA)
    kwargs = {k: _to_cuda(v) for k, v in kwargs.items()}
    ours, our_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="triton", **kwargs)
    assert ours.dtype == dtype and our_grad.dtype == dtype and our_grad.is_cuda
    _check_against_reference(fn, x, y, ours, our_grad, reduction=reduction, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_binary_family_half_inputs(variant, reduction, dtype):
    fn, x, y, kwargs = _case(variant, "all", dtype, soft=True, shape=(67, 129))
    x, y = x.to(CUDA), y.to(CUDA)
    kwargs = {k: _to_cuda(v) for k, v in kwargs.items()}
    ours, our_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="triton", **kwargs)
    ref, ref_grad = _value_and_grad(fn, x, y, reduction=reduction, backend="reference", **kwargs)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    assert_close(ours, ref)
    assert_close(our_grad, ref_grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("options", ["plain", "weight", "smoothing", "both"])
@pytest.mark.parametrize("kind", ["index", "probs", "single_index"])
@pytest.mark.parametrize("loss", ["cross_entropy", *SOFTMAX_FAMILY])
def test_triton_softmax_family_equals_reference(loss, kind, options, reduction, dtype):
    x, t, w = _public_ce_case(kind)
    if loss == "cross_entropy":
        fn = CF.cross_entropy
        kwargs = {"weight": w.to(dtype)} if options in ("weight", "both") else {}
        if options in ("smoothing", "both"):
            kwargs["label_smoothing"] = 0.2
    else:
        fn, kwargs = _family_kwargs(loss, options, dtype, w)
    kwargs = {k: _to_cuda(v) for k, v in kwargs.items()}
    kwargs["reduction"] = reduction
    x, t = x.to(dtype).to(CUDA), (t.to(dtype) if t.is_floating_point() else t).to(CUDA)
    ours, our_grad = _ce_value_and_grad(fn, x, t, backend="triton", **kwargs)
    assert ours.dtype == dtype and our_grad.dtype == dtype and our_grad.is_cuda
    up = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    t64 = t.double() if t.is_floating_point() else t
    exact, exact_grad = _ce_value_and_grad(fn, x.double(), t64, backend="reference", **up)
    ref, ref_grad = _ce_value_and_grad(fn, x, t, backend="reference", **kwargs)
    assert_as_exact_as(ours, exact.to(dtype), ref)
    assert_as_exact_as(our_grad, exact_grad.to(dtype), ref_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n_classes", [1000, 32000, 128256])
@pytest.mark.parametrize(
    "loss", ["cross_entropy", "ce_smoothing", "ce_probs", "focal_g2", "focal_probs", "poly1_eps2"]
)
def test_triton_softmax_family_wide_rows(loss, n_classes, dtype):
    # wide rows: one block of up to 32768 classes, or the online softmax over several blocks
    g = torch.Generator(device=CUDA).manual_seed(n_classes)
    x = (torch.randn(64, n_classes, generator=g, device=CUDA) * 4).to(dtype)
    t = torch.randint(0, n_classes, (64,), generator=g, device=CUDA)
    t[::7] = -100
    if loss.endswith("probs"):
        t = torch.softmax(torch.randn(64, n_classes, generator=g, device=CUDA), 1).to(dtype)
    if loss in ("cross_entropy", "ce_probs"):
        fn, kwargs = CF.cross_entropy, {}
    elif loss == "ce_smoothing":
        fn, kwargs = CF.cross_entropy, {"label_smoothing": 0.1}
    elif loss == "focal_probs":
        fn, kwargs = CF.softmax_focal_loss, {"gamma": 2.0}
    else:
        fn, kwargs = _family_kwargs(loss, "plain", dtype, torch.ones(n_classes))
    ours, our_grad = _ce_value_and_grad(fn, x, t, backend="triton", **kwargs)
    t64 = t.double() if t.is_floating_point() else t
    exact, exact_grad = _ce_value_and_grad(fn, x.double(), t64, backend="reference", **kwargs)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(ours.double(), exact, rtol=tol, atol=tol * 1e-2)
    torch.testing.assert_close(our_grad.double(), exact_grad, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("factor", [1.0, 0.25, -3.0])
def test_scale_kernel_in_place_and_skipped_at_one(factor, dtype):
    n = 3 * 4096 * 132 * 8 + 5  # more blocks than the grid: the grid-stride loop
    grad = torch.randn(n, device=CUDA).to(dtype)
    before = grad.clone()
    out = _triton.scale_(grad, torch.tensor(factor, device=CUDA))
    assert out is grad
    if factor == 1.0:
        assert torch.equal(grad, before)
    else:
        assert_close(grad, (before.double() * factor).to(dtype))


@pytest.mark.parametrize("upstream", [1.0, 3.0])
@pytest.mark.parametrize("loss", ["bce", "focal_ignore", "ce", "ce_weight", "softmax_focal"])
def test_backward_from_the_loss_equals_reference(loss, upstream):
    # loss.backward() (a folded mean: the scale kernel skips) and (3 * loss).backward()
    g = torch.Generator(device=CUDA).manual_seed(1)
    x = torch.randn(300, 17, generator=g, device=CUDA, dtype=torch.float64)
    y = (torch.rand(300, 17, generator=g, device=CUDA) < 0.3).double()
    y_ign = torch.where(torch.rand(300, 17, generator=g, device=CUDA) < 0.2, -1.0, y)
    t = torch.randint(0, 17, (300,), generator=g, device=CUDA)
    t[::5] = -100
    w = torch.rand(17, generator=g, device=CUDA, dtype=torch.float64) + 0.5
    call = {
        "bce": lambda x, b: CF.binary_cross_entropy_with_logits(x, y, backend=b),
        "focal_ignore": lambda x, b: CF.sigmoid_focal_loss(x, y_ign, ignore_index=-1, backend=b),
        "ce": lambda x, b: CF.cross_entropy(x, t, backend=b),
        "ce_weight": lambda x, b: CF.cross_entropy(x, t, weight=w, backend=b),
        "softmax_focal": lambda x, b: CF.softmax_focal_loss(x, t, gamma=2.0, backend=b),
    }[loss]
    grads = []
    for backend in ("triton", "reference"):
        xx = x.clone().requires_grad_(True)
        (call(xx, backend) * upstream).backward()
        grads.append(xx.grad)
    assert_close(grads[0], grads[1])


def _free_gib() -> float:
    free, _ = torch.cuda.mem_get_info()
    return free / 2**30


@pytest.mark.slow
def test_offsets_past_two_to_the_31_elements():
    # int64 offsets: the last elements of inputs with more than 2**31 entries
    n = 2**31 + 4099
    if _free_gib() < 3 * n * 4 / 2**30 + 4:
        pytest.skip("needs about 30 GiB of free GPU memory")
    x = torch.randn(n, device=CUDA)
    y = (torch.rand(n, device=CUDA) < 0.5).float()
    x.requires_grad_(True)
    CF.sigmoid_focal_loss(x, y, reduction="sum", backend="triton").backward()
    tail = slice(n - 10_000, n)
    xt = x.detach()[tail].double().requires_grad_(True)
    CF.sigmoid_focal_loss(xt, y[tail].double(), reduction="sum", backend="reference").backward()
    torch.testing.assert_close(x.grad[tail].double(), xt.grad, rtol=1e-5, atol=1e-7)
    del x, y
    torch.cuda.empty_cache()

    rows, n_classes = 16_500, 131_072  # 2.16e9 logits
    x = torch.randn(rows, n_classes, device=CUDA).requires_grad_(True)
    t = torch.randint(0, n_classes, (rows,), device=CUDA)
    CF.cross_entropy(x, t, reduction="sum", backend="triton").backward()
    last = slice(rows - 4, rows)
    xt = x.detach()[last].double().requires_grad_(True)
    CF.cross_entropy(xt, t[last], reduction="sum", backend="reference").backward()
    torch.testing.assert_close(x.grad[last].double(), xt.grad, rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------------------------
# The GPU path: no host synchronisation, CUDA graphs, torch.compile, the registered ops
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["unchecked", "checked"])
def value_checks(request):
    """With the value checks switched off (the kernel, dispatch and reduction path alone) and
    on (on a GPU they are device-side assertions: nothing to read on the host either)."""
    previous = crossent.set_value_checks(request.param)
    yield request.param
    crossent.set_value_checks(previous)


@pytest.fixture
def no_value_checks():
    previous = crossent.set_value_checks(False)
    yield
    crossent.set_value_checks(previous)


def _gpu_path_cases():
    """(id, loss of x): every family, with the options that change the route (a counted
    denominator, weights, probability targets, float16, a reduction that is not folded)."""
    g = torch.Generator(device=CUDA).manual_seed(4)
    y = (torch.rand(64, 33, generator=g, device=CUDA) < 0.3).float()
    y_ign = torch.where(torch.rand(64, 33, generator=g, device=CUDA) < 0.2, -1.0, y)
    t = torch.randint(0, 33, (64,), generator=g, device=CUDA)
    t[::5] = -100
    w = torch.rand(33, generator=g, device=CUDA) + 0.5
    probs = torch.softmax(torch.randn(64, 33, generator=g, device=CUDA), 1)
    return {
        "bce": lambda x: CF.binary_cross_entropy_with_logits(x, y, pos_weight=w),
        "focal_ignore": lambda x: CF.sigmoid_focal_loss(x, y_ign, ignore_index=-1),
        "focal_half_ignore": lambda x: CF.sigmoid_focal_loss(
            x.half(), y_ign.half(), ignore_index=-1
        ).float(),
        "asl_sum": lambda x: CF.asymmetric_loss(x, y, reduction="sum"),
        "bce_probs": lambda x: CF.binary_cross_entropy(torch.sigmoid(x), y),
        "ce": lambda x: CF.cross_entropy(x, t),
        "ce_weight_smoothing": lambda x: CF.cross_entropy(x, t, weight=w, label_smoothing=0.1),
        "ce_probs": lambda x: CF.cross_entropy(x, probs),
        "ce_none": lambda x: CF.cross_entropy(x, t, reduction="none").sum(),
        "softmax_focal": lambda x: CF.softmax_focal_loss(x, t, gamma=2.0, alpha=w),
        "poly1": lambda x: CF.poly1_cross_entropy(x, t, epsilon=1.5),
    }


GPU_PATH_CASES = [
    "bce",
    "focal_ignore",
    "focal_half_ignore",
    "asl_sum",
    "bce_probs",
    "ce",
    "ce_weight_smoothing",
    "ce_probs",
    "ce_none",
    "softmax_focal",
    "poly1",
]


@pytest.mark.parametrize("upstream", [1.0, 3.0])
@pytest.mark.parametrize("case", GPU_PATH_CASES)
def test_forward_and_backward_never_synchronise(case, upstream, value_checks):
    call = _gpu_path_cases()[case]
    x = torch.randn(64, 33, device=CUDA, requires_grad=True)
    (call(x) * upstream).backward()  # warm-up: the kernels compile and load here
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = call(x)
        (loss if upstream == 1.0 else loss * upstream).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x.grad is not None and x.grad.is_cuda


@pytest.mark.parametrize("case", GPU_PATH_CASES)
def test_forward_and_backward_are_captured_by_a_cuda_graph(case, value_checks):
    call = _gpu_path_cases()[case]
    static_x = torch.randn(64, 33, device=CUDA, requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch's docs do
        for _ in range(2):
            static_x.grad = None
            call(static_x).backward()
    torch.cuda.current_stream().wait_stream(side)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = call(static_x)
        static_loss.backward()
    for seed in (1, 2):
        fresh = torch.randn(64, 33, device=CUDA, generator=torch.Generator(CUDA).manual_seed(seed))
        with torch.no_grad():
            static_x.copy_(fresh)
        graph.replay()
        x = fresh.clone().requires_grad_(True)
        loss = call(x)
        loss.backward()
        # the same kernels on the same data: the same bits
        assert torch.equal(static_loss, loss.detach())
        assert torch.equal(static_x.grad, x.grad)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_launches_the_triton_kernels(mode, no_value_checks):
    """torch.compile(fullgraph=True) of a model and two losses (backend "auto"): no graph
    break, crossent's Triton kernels in Inductor's code (``mode="reduce-overhead"``: inside
    its CUDA graphs), and the eager step's values."""
    import torch._dynamo
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    g = torch.Generator(device=CUDA).manual_seed(6)
    features = torch.randn(128, 16, generator=g, device=CUDA)
    t = torch.randint(0, 10, (128,), generator=g, device=CUDA)
    y = (torch.rand(128, 10, generator=g, device=CUDA) < 0.2).float()

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Linear(16, 10).to(CUDA)

    def step(model, features):
        scores = model(features)
        return CF.cross_entropy(scores, t) + CF.sigmoid_focal_loss(scores, y)

    eager_model, compiled_model = make_model(), make_model()
    eager = step(eager_model, features)
    eager.backward()
    compiled = torch.compile(step, fullgraph=True, mode=None if mode == "default" else mode)

    def compiled_step():
        compiled_model.zero_grad(set_to_none=True)
        loss = compiled(compiled_model, features)
        loss.backward()
        return loss.detach().clone()

    _, codes = run_and_get_code(compiled_step)  # the first call compiles
    code = "\n".join(codes)
    assert "_cross_entropy_kernel" in code and "_binary_kernel" in code
    for _ in range(3):  # reduce-overhead records its CUDA graphs on a later call, then replays
        loss = compiled_step()
        torch.testing.assert_close(loss, eager.detach(), rtol=1e-6, atol=1e-7)
        for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    torch._dynamo.reset()


def test_compiled_code_contains_the_kernels():
    import torch._dynamo
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    x = torch.randn(32, 7, device=CUDA)
    t = torch.randint(0, 7, (32,), device=CUDA)
    compiled = torch.compile(lambda x, t: CF.cross_entropy(x, t), fullgraph=True)
    out, codes = run_and_get_code(compiled, x, t)
    assert any("_cross_entropy_kernel" in code for code in codes)
    # the same kernels with the same arguments as eager mode: the same bits
    assert torch.equal(out, CF.cross_entropy(x, t))
    torch._dynamo.reset()


def test_opcheck_of_the_registered_ops():
    g = torch.Generator(device=CUDA).manual_seed(7)
    x = torch.randn(6, 5, generator=g, device=CUDA)
    y = (torch.rand(6, 5, generator=g, device=CUDA) < 0.5).float()
    t = torch.randint(0, 5, (6,), generator=g, device=CUDA)
    w = torch.rand(5, generator=g, device=CUDA)
    numbers = [-1.0, 0.1, 2.0, 0.25, 0.75, 0.0]
    for reduce in (False, True):
        torch.library.opcheck(
            torch.ops.crossent.binary_loss.default,
            (x, y, w, None, None, numbers, 30, 0, 2, True, False, True, False, True, True,
             reduce, True),
        )  # fmt: skip
        torch.library.opcheck(
            torch.ops.crossent.softmax_loss.default,
            (x, t, w, None, None, [-100.0, 0.1, 2.0, 0.0, 0.5], 0, True, 1, reduce, True),
        )
    torch.library.opcheck(
        torch.ops.crossent.scale_.default,
        (torch.randn(100, device=CUDA), torch.tensor(3.0, device=CUDA)),
    )
