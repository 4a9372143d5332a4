"""The fused linear + loss (crossent.linear) against the unfused computation.

``linear_loss(x, W, t, loss=name, **options)`` must equal the named loss of ``F.linear(x, W,
b)`` -- value and the gradients of x, W and b -- to 1e-10 relative in float64 and 1e-5 / 1e-4
in float32, for every loss, with small blocks (several per call) so that the block loop, the
folded and the counted means are all exercised. Tiny shapes: the point is exactness.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import crossent
from crossent.kernels import _math, no_fallback
from crossent.linear import _chunked
from crossent.registry import get_loss

ROOT = Path(__file__).resolve().parents[1]
N, H, V = 7, 5, 6

# name -> (options, target kind): one configuration with every option each loss has
LOSSES = {
    "ce": ({"weight": "class", "label_smoothing": 0.1, "ignore_index": -100}, "index"),
    "ce_probs": ({"label_smoothing": 0.2}, "probs"),
    "softmax_focal": ({"gamma": 2.0, "alpha": "class", "ignore_index": -100}, "index"),
    "poly1": ({"epsilon": 0.5, "label_smoothing": 0.1}, "index"),
    "bce": ({"pos_weight": "class", "weight": "element", "ignore_index": -1}, "dense"),
    "focal": ({"gamma": 2.0, "alpha": 0.25, "label_smoothing": 0.1}, "dense"),
    "asl": ({"gamma_pos": 1.0, "gamma_neg": 3.0, "clip": 0.05}, "dense"),
    "poly1_focal": ({"epsilon": 1.0, "gamma": 1.5, "ignore_index": -1}, "dense"),
}


def _case(name, dtype, *, lead=(N,), bias=True, seed=0, classes=V):
    V = classes
    g = torch.Generator().manual_seed(seed)
    options, kind = LOSSES[name]
    x = torch.randn(*lead, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    opts = {}
    for key, value in options.items():
        if value == "class":
            value = torch.rand(V, generator=g, dtype=torch.float64) + 0.5
        elif value == "element":
            value = torch.rand(*lead, V, generator=g, dtype=torch.float64)
        opts[key] = value.to(dtype) if isinstance(value, torch.Tensor) else value
    if kind == "index":
        t = torch.randint(0, V, lead, generator=g)
        t.view(-1)[1 % t.numel()] = -100
    elif kind == "probs":
        t = torch.softmax(torch.randn(*lead, V, generator=g, dtype=torch.float64), -1).to(dtype)
    else:
        t = (torch.rand(*lead, V, generator=g) < 0.3).to(dtype)
        if opts.get("ignore_index") == -1:
            t.view(-1)[3] = -1
    tensors = [x.to(dtype), w.to(dtype)] + ([b.to(dtype)] if bias else [])
    return [t.requires_grad_() for t in tensors], t, opts, name.removesuffix("_probs")


def _unfused(loss, x, w, b, t, **kwargs):
    definition = get_loss(loss)
    return definition.logits(F.linear(x, w, b), t, backend="reference", **kwargs)


def _grads(out, tensors, seed=1):
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.rand(out.shape, generator=g, dtype=torch.float64).to(out.dtype) + 0.5
    return torch.autograd.grad(out, tensors, grad_out)


def _assert_normwise(actual, expected, rtol, label=""):
    """``|actual - expected| / |expected| <= rtol`` in the 2-norm: float32 sums over rows
    that cancel leave single elements with a larger relative error, but not the whole."""
    actual, expected = actual.detach().double(), expected.detach().double()
    error = float((actual - expected).norm() / expected.norm())
    assert error <= rtol, f"{label}: relative error {error:.3g} > {rtol:g}"


def _compare(name, dtype, reduction, backend="fused", rtol=None, grad_rtol=None, classes=V, **call):
    tensors, t, opts, loss = _case(name, dtype, classes=classes)
    x, w, b = tensors
    with no_fallback():
        ours = crossent.linear_loss(
            x, w, t, loss=loss, linear_bias=b, reduction=reduction, backend=backend, **opts, **call
        )
    ref = _unfused(loss, x, w, b, t, reduction=reduction, **opts)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    if dtype == torch.float64:
        torch.testing.assert_close(ours, ref, rtol=rtol, atol=0.0)
    else:
        _assert_normwise(ours, ref, rtol, "value")
    for a, r, label in zip(_grads(ours, tensors), _grads(ref, tensors), "xwb", strict=True):
        assert a.dtype == r.dtype
        if dtype == torch.float64:
            torch.testing.assert_close(a, r, rtol=grad_rtol, atol=0.0, msg=f"grad of {label}")
        else:
            _assert_normwise(a, r, grad_rtol, f"grad of {label}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_equals_the_unfused_computation_in_float64(name, reduction):
    _compare(name, torch.float64, reduction, rtol=1e-10, grad_rtol=1e-10, batch_chunk_size=3)


@pytest.mark.parametrize("name", ["ce", "softmax_focal", "focal", "asl"])
def test_float32_within_1e_5_value_and_1e_4_gradients(name):
    _compare(name, torch.float32, "mean", rtol=1e-5, grad_rtol=1e-4, batch_chunk_size=2)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_drop_in_for_torch_linear_cross_entropy(reduction):
    """Same arguments, same defaults (ignore_index None -> -100 for class indices), same
    results as torch's chunked path and its reference path."""
    tensors, t, _, _ = _case("ce", torch.float64)
    x, w, b = tensors
    weight = torch.rand(V, dtype=torch.float64) + 0.5
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)
    ours = crossent.linear_cross_entropy(
        x, w, t, linear_bias=b, weight=weight, reduction=reduction, options=opts
    )
    theirs = F.linear_cross_entropy(
        x, w, t, linear_bias=b, weight=weight, reduction=reduction, options=opts
    )
    unchunked = F.linear_cross_entropy(x, w, t, linear_bias=b, weight=weight, reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0.0)
    torch.testing.assert_close(ours, unchunked, rtol=1e-10, atol=0.0)
    for a, r in zip(_grads(ours, tensors), _grads(unchunked, tensors), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=0.0)


def test_probability_targets_and_smoothing_follow_torch():
    tensors, t, _, _ = _case("ce_probs", torch.float64)
    x, w, b = tensors
    ours = (
        crossent.linear_cross_entropy(x, w, t, linear_weight=None, label_smoothing=0.1)
        if False
        else (crossent.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1))
    )
    theirs = F.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0.0)


@pytest.mark.parametrize("lead", [(), (2, 3)], ids=["unbatched", "leading_dims"])
@pytest.mark.parametrize("name", ["ce", "focal", "bce"])
def test_unbatched_and_leading_dimensions(name, lead):
    """Inputs of size (H) and (..., H): the leading dimensions are rows, also for the
    per-element weights of the sigmoid losses."""
    if name != "ce" and lead == ():
        lead = (1,)
    tensors, t, opts, loss = _case(name, torch.float64, lead=lead, bias=False)
    x, w = tensors
    for reduction in ("mean", "none"):
        ours = crossent.linear_loss(x, w, t, loss=loss, reduction=reduction, **opts)
        if name == "ce":  # crossent's cross entropy wants the classes in dimension 1
            ref = _unfused(
                loss, x.reshape(-1, H), w, None, t.reshape(-1), reduction=reduction, **opts
            )
        else:  # elementwise: the logits' own size
            ref = _unfused(loss, x, w, None, t, reduction=reduction, **opts)
        torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-10, atol=0.0)
        assert ours.shape == (() if reduction == "mean" else ref.reshape(ours.shape).shape)
        if reduction == "none":
            expected = lead if name == "ce" else (*lead, V)
            assert ours.shape == expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    """float16 / bfloat16 operands: the logits, the loss and every gradient accumulated in
    float32 -- equal to the float32 computation on the same rounded operands, rounded once."""
    tensors, t, _, _ = _case("ce", dtype)
    ours = crossent.linear_cross_entropy(
        *tensors[:2], t, linear_bias=tensors[2], batch_chunk_size=2
    )
    up = [v.detach().float().requires_grad_() for v in tensors]
    ref = crossent.linear_cross_entropy(*up[:2], t, linear_bias=up[2])
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, ref.to(dtype), rtol=0, atol=0)
    grads = torch.autograd.grad(ours, tensors)
    for g, r in zip(grads, torch.autograd.grad(ref, up), strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g, r.to(dtype), rtol=0, atol=0)


def test_autocast_runs_the_matmuls_in_the_autocast_dtype_and_the_loss_in_float32():
    tensors, t, _, _ = _case("ce", torch.float32)
    x, w, b = tensors
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = crossent.linear_cross_entropy(x, w, t, linear_bias=b, batch_chunk_size=3)
        ref = crossent.cross_entropy(F.linear(x, w, b), t)
    assert ours.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)  # the same bfloat16 logits
    for a, r in zip(_grads(ours, tensors), _grads(ref, tensors), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, r, rtol=1.6e-2, atol=1e-3)


def test_blocks_never_hold_all_the_logits(monkeypatch):
    """The closed form sees blocks of at most ``BLOCK_ELEMENTS`` logits (one row minimum):
    memory does not grow with N x V."""
    seen = []
    real = _math.cross_entropy

    def spy(input, *args, **kwargs):
        seen.append(tuple(input.shape))
        return real(input, *args, **kwargs)

    monkeypatch.setattr(_math, "cross_entropy", spy)
    monkeypatch.setattr(_chunked, "BLOCK_ELEMENTS", 2 * V)
    x = torch.randn(9, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    crossent.linear_cross_entropy(x, w, torch.randint(0, V, (9,)), backend="fused").backward()
    assert seen == [(2, V)] * 4 + [(1, V)]


SIGMOID = [name for name, (_, kind) in LOSSES.items() if kind == "dense"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", SIGMOID)
def test_sigmoid_losses_over_more_classes_than_rows_run_in_blocks_of_classes(
    name, reduction, monkeypatch
):
    """An elementwise loss with fewer rows than classes is cut into blocks of classes over
    every row (4 of 11 classes per block here: the last block narrower), with the per-class
    and per-element weights sliced along: exact all the same."""
    seen = []
    real = _chunked.Plan._run_columns

    def spy(self, *args):
        seen.append(self.columns)
        return real(self, *args)

    monkeypatch.setattr(_chunked.Plan, "_run_columns", spy)
    monkeypatch.setattr(_chunked, "BLOCK_ELEMENTS", 4 * N)
    _compare(name, torch.float64, reduction, rtol=1e-10, grad_rtol=1e-10, classes=11)
    assert seen and set(seen) == {4}
    assert _chunked.block_columns(N, 11, torch.device("cpu"), None, True) == 4
    # row blocks where asked (batch_chunk_size), for the softmax family, or rows <= classes
    assert _chunked.block_columns(N, 11, torch.device("cpu"), 2, True) is None
    assert _chunked.block_columns(N, 11, torch.device("cpu"), None, False) is None
    assert _chunked.block_columns(N, N, torch.device("cpu"), None, True) is None


def test_blocks_of_classes_hold_one_block_of_logits(monkeypatch):
    """The closed form sees ``(N, k)`` blocks with ``N k <= BLOCK_ELEMENTS``."""
    seen = []
    real = _math.sigmoid_family

    def spy(input, *args, **kwargs):
        seen.append(tuple(input.shape))
        return real(input, *args, **kwargs)

    monkeypatch.setattr(_math, "sigmoid_family", spy)
    monkeypatch.setattr(_chunked, "BLOCK_ELEMENTS", 3 * 5)
    x = torch.randn(5, H, requires_grad=True)
    w = torch.randn(8, H, requires_grad=True)
    y = (torch.rand(5, 8) < 0.3).float()
    crossent.linear_loss(x, w, y, loss="focal", backend="fused").backward()
    assert seen == [(5, 3), (5, 3), (5, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_blocks_of_classes(reduction, monkeypatch):
    """The compiled closed form takes the blocks' strided targets and sliced weights."""
    monkeypatch.setattr(_chunked, "BLOCK_ELEMENTS", 4 * N)
    _compare("bce", torch.float64, reduction, "compiled", 1e-10, 1e-10, classes=11)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_blocks_of_classes_accumulate_in_float32(dtype, monkeypatch):
    """Blocks of classes with half-precision operands: the input's gradient is summed over
    the blocks in float32 and rounded once -- as the float32 computation, rounded."""
    monkeypatch.setattr(_chunked, "BLOCK_ELEMENTS", 4 * N)
    tensors, t, opts, loss = _case("focal", dtype, classes=11)
    ours = crossent.linear_loss(*tensors[:2], t, loss=loss, linear_bias=tensors[2], **opts)
    up = [v.detach().float().requires_grad_() for v in tensors]
    ref = _unfused(loss, *up, t.float(), **opts)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, ref.to(dtype), rtol=1e-3, atol=0)
    grads = torch.autograd.grad(ours, tensors)
    for g, r in zip(grads, torch.autograd.grad(ref, up), strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), r.to(dtype).float(), rtol=1e-2, atol=1e-5)


def test_repeated_and_retained_backward():
    tensors, t, _, _ = _case("ce", torch.float64)
    x, w, b = tensors
    out = crossent.linear_cross_entropy(x, w, t, linear_bias=b, batch_chunk_size=2)
    (first,) = torch.autograd.grad(out, w, retain_graph=True)
    (second,) = torch.autograd.grad(out * 3.0, w)
    torch.testing.assert_close(second, 3.0 * first, rtol=1e-12, atol=0)
    # accumulation into .grad over two calls (the saved buffer handed on, then added to)
    for _ in range(2):
        crossent.linear_cross_entropy(x, w, t, linear_bias=b).backward()
    ref = torch.autograd.grad(_unfused("ce", x, w, b, t), w)[0]
    torch.testing.assert_close(w.grad, 2 * ref, rtol=1e-10, atol=0)


def test_gradient_accumulation_equals_the_full_batch():
    tensors, t, _, _ = _case("ce", torch.float64)
    x, w, b = (v.detach() for v in tensors)
    w.requires_grad_()
    acc = crossent.GradientAccumulator()
    for rows in (slice(0, 2), slice(2, N)):  # the ignored target is in the first
        acc.loss(crossent.linear_cross_entropy, x[rows], w, t[rows], linear_bias=b).backward()
    mean = acc.normalize_([w])
    full = _unfused("ce", x, w, b, t)
    torch.testing.assert_close(mean, full.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(w.grad, torch.autograd.grad(full, w)[0], rtol=1e-10, atol=0)


def test_inside_a_users_torch_compile():
    tensors, t, _, _ = _case("ce", torch.float32)
    x, w, b = tensors

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(x, w, b, t):
        return crossent.linear_cross_entropy(x, w, t, linear_bias=b, batch_chunk_size=4)

    ours = step(x, w, b, t)
    ref = _unfused("ce", x, w, b, t)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    for a, r in zip(_grads(ours, tensors), _grads(ref, tensors), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_compiled_backend():
    _compare("focal", torch.float32, "mean", backend="compiled", rtol=1e-5, grad_rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "reduction"), [("ce", "mean"), ("ce_probs", "none")])
def test_compiled_cross_entropy_writes_its_gradient_over_the_logits(name, reduction, monkeypatch):
    """Compiled cross entropy stores the gradient into the logits block (so a block holds
    twice the rows): exact all the same, and the block's gradient is the buffer itself."""
    closed_form = _math.cross_entropy
    block = _chunked.gradient_in_place(closed_form)
    assert _chunked.gradient_in_place(closed_form) is block  # one wrapper, one graph cache
    assert _chunked.gradient_in_place(_math.sigmoid_family) is None  # would allocate anyway
    assert _chunked.block_rows(10**6, 1000, torch.device("cpu"), None, in_place=True) == (
        2 * _chunked.BLOCK_ELEMENTS // 1000
    )
    logits = torch.randn(4, V, dtype=torch.float64)
    _, _, grad = block(
        logits,
        torch.tensor([0, 1, 2, 3]),
        get_loss("ce").options_from(),
        mean_denominator=None,
        reduce=True,
        need_grad=True,
    )
    assert grad is logits
    _compare(name, torch.float64, reduction, backend="compiled", rtol=1e-10, grad_rtol=1e-10)


def test_modules_delegate_to_the_functions():
    tensors, t, opts, _ = _case("focal", torch.float64)
    x, w, b = tensors
    module = crossent.nn.LinearLoss("focal", batch_chunk_size=2, **opts)
    torch.testing.assert_close(
        module(x, w, t, b), _unfused("focal", x, w, b, t, **opts), rtol=1e-10, atol=0
    )
    weight = torch.rand(V, dtype=torch.float64)
    module = crossent.LinearCrossEntropyLoss(weight=weight, label_smoothing=0.1)
    assert module.weight is weight and "label_smoothing=0.1" in repr(module)
    ref = F.linear_cross_entropy(
        x, w, torch.tensor([0, 1, 2, 3, 4, 5, 0]), linear_bias=b, weight=weight, label_smoothing=0.1
    )
    torch.testing.assert_close(
        module(x, w, torch.tensor([0, 1, 2, 3, 4, 5, 0]), b), ref, rtol=1e-10, atol=0
    )
    with pytest.raises(ValueError, match="Expected `gamma` to be >= 0"):
        crossent.nn.LinearLoss("focal", gamma=-1.0)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"w": torch.zeros(V, H + 1)}, ValueError, r"last dimension of `input` \(5\) to equal"),
        ({"w": torch.zeros(V)}, ValueError, r"`linear_weight` to be 2-D"),
        ({"b": torch.zeros(V + 1)}, ValueError, r"`linear_bias` to have size \(6,\)"),
        ({"w": torch.zeros(V, H, dtype=torch.float64)}, TypeError, r"`linear_weight` to have"),
        ({"t": torch.zeros(N + 1, dtype=torch.long)}, ValueError, r"Expected `target` of size"),
        ({"chunk": 0}, ValueError, r"`batch_chunk_size` to be a positive integer"),
    ],
    ids=["in_features", "weight_rank", "bias_size", "dtype", "target_size", "chunk"],
)
def test_errors_name_the_argument_the_value_and_the_fix(change, error, match):
    x, w, b = torch.zeros(N, H), torch.zeros(V, H), torch.zeros(V)
    t = torch.zeros(N, dtype=torch.long)
    w, b, t = change.get("w", w), change.get("b", b), change.get("t", t)
    with pytest.raises(error, match=match):
        crossent.linear_cross_entropy(x, w, t, linear_bias=b, batch_chunk_size=change.get("chunk"))


def test_a_target_or_weight_requiring_a_gradient():
    """The fused pass differentiates x, W and b only: "auto" takes the reference path for a
    weight that requires a gradient, an explicit fused backend says so."""
    tensors, t, _, _ = _case("ce", torch.float64)
    x, w, b = tensors
    weight = (torch.rand(V, dtype=torch.float64) + 0.5).requires_grad_()
    out = crossent.linear_cross_entropy(x, w, t, linear_bias=b, weight=weight)
    (gw,) = torch.autograd.grad(out, weight)
    (ref,) = torch.autograd.grad(_unfused("ce", x, w, b, t, weight=weight), weight)
    torch.testing.assert_close(gw, ref, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="Expected only `input` to require a gradient"):
        crossent.linear_cross_entropy(x, w, t, weight=weight, backend="fused")


@pytest.mark.triton
def test_triton_kernels_under_the_interpreter():
    """The blocks through the Triton loss kernels (the CUDA path), run on CPU tensors by
    Triton's interpreter in a subprocess (the variable must be set before triton is
    imported)."""
    pytest.importorskip("triton")
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests._helpers.linear_triton_cases"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("cases passed"), proc.stdout


@pytest.mark.distributed
def test_ddp_global_mean_equals_one_process_on_the_whole_batch(tmp_path):
    """Two gloo ranks with uneven rows and ignored targets: DDP-averaged gradients and the
    rank-averaged value of ``"global_mean"`` equal one process's ``"mean"`` on the whole batch
    (a per-rank ``"mean"`` does not, so the check can fail)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    from tests._helpers.distributed import run_distributed
    from tests._helpers.linear_ddp import global_mean_checks

    ranks = run_distributed(global_mean_checks, tmp_path, timeout_s=240)
    for rank, result in enumerate(ranks):
        for loss in ("ce", "focal"):
            good, naive = result[loss, "global_mean"], result[loss, "mean"]
            assert good["grad"] <= 1e-6 and good["value"] <= 1e-6, (rank, loss, good)
            assert naive["grad"] > 1e-3, (rank, loss, naive)


def test_linear_bench_quick_run_and_its_results_section():
    """``crossent bench --family linear --quick``: every provider of both cases, the targets
    checked as ratios, and a RESULTS.md section that re-rendering the rest keeps."""
    import json

    from typer.testing import CliRunner

    from crossent import bench as B
    from crossent.cli import app

    runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    result = runner.invoke(
        app, ["bench", "--family", "linear", "--quick", "--repeats", "1", "--warmup", "0", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    providers = {(r["loss"], r["provider"]) for r in data["rows"]}
    assert ("linear_cross_entropy", "torch-chunked-512") in providers
    assert ("linear_sigmoid_focal", "unfused-torchvision-style") in providers
    assert all(r["total_ms"] > 0 and r["grad_bytes"] > 0 for r in data["rows"])
    assert {c["target"].split(":")[1].strip().split()[0] for c in data["targets"]} <= {
        "time",
        "peak",
    }
    section = B.render_linear_markdown(data["rows"])
    assert section.startswith(B.LINEAR_SECTION[0]) and "torch-chunked-512" in section
    text = B.with_linear_section("# results\n\nrest\n", section)
    assert B.linear_section_of(text) == section
    rerendered = B.with_linear_section("# results\n\nnew rest\n", B.linear_section_of(text))
    assert "new rest" in rerendered and B.linear_section_of(rerendered) == section
