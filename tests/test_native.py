"""crossent's native CPU operators (``crossent.kernels._native``): built off the critical path
and cached; where they serve a call, the reference's value and gradient for every option and
weight layout, and the torch formulation wherever they do not apply."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import crossent
from crossent.kernels import _native
from tests._helpers import assert_close

_BUILT_HERE = sys.platform.startswith("linux") and _native._capability() is not None


def _ready() -> None:
    if _native.status()[0] != "ready":
        pytest.skip(f"the native operators are not built here: {_native.status()}")


@pytest.fixture
def calls(monkeypatch):
    """The number of calls of the native operator so far (a list of one count)."""
    _ready()
    op = _native._BCE_WITH_LOGITS
    count = [0]

    def counted(*args):
        count[0] += 1
        return op(*args)

    monkeypatch.setattr(_native, "_BCE_WITH_LOGITS", counted)
    return count


def _value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out, grad


def _exact(x, y, **options):
    """The reference path's value and gradient of BCE with logits in float64."""
    double = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    return _value_and_grad(
        crossent.binary_cross_entropy_with_logits,
        x.double(),
        y.double(),
        backend="reference",
        **double,
    )


@pytest.mark.skipif(not _BUILT_HERE, reason="built on Linux x86-64 with AVX2 or AVX-512")
def test_the_operators_are_built_on_this_machine():
    # the suite builds them before its first test (conftest.py); a failed build warns and
    # leaves the state "failed" with the compiler's error
    assert _native.status() == ("ready", None)


_WEIGHTS = {
    "none": lambda shape, dtype: None,
    "scalar": lambda shape, dtype: torch.tensor(1.7, dtype=dtype),
    "classes": lambda shape, dtype: torch.rand(shape[-1], dtype=dtype) + 0.5,
    "classes_2d": lambda shape, dtype: (torch.rand(shape[-1], dtype=dtype) + 0.5).reshape(
        *([1] * (len(shape) - 1)), shape[-1]
    ),
    "full": lambda shape, dtype: torch.rand(*shape, dtype=dtype) + 0.5,
}


def _targets(kind: str, shape, dtype) -> torch.Tensor:
    if kind == "hard":
        return (torch.rand(*shape) < 0.3).to(dtype)
    y = torch.rand(*shape, dtype=dtype)
    if kind == "mixed":
        y.view(-1)[::3] = y.view(-1)[::3].round()
    elif kind == "outside":  # BCE takes any target, as torch does
        y = y * 4 - 1.5
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7,), (16, 5), (3, 4, 17), (256, 80)])
@pytest.mark.parametrize(
    "weight, pos_weight",
    [
        ("none", "none"),
        ("classes", "none"),
        ("none", "classes"),
        ("full", "scalar"),
        ("scalar", "full"),
        ("classes_2d", "classes_2d"),
    ],
)
@pytest.mark.parametrize("targets", ["hard", "mixed", "outside"])
def test_native_bce_with_logits_equals_the_reference(
    calls, dtype, reduction, shape, weight, pos_weight, targets
):
    x = torch.randn(*shape, dtype=dtype) * 6
    y = _targets(targets, shape, dtype)
    options = {
        "weight": _WEIGHTS[weight](shape, dtype),
        "pos_weight": _WEIGHTS[pos_weight](shape, dtype),
    }
    ours, grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits, x, y, reduction=reduction, **options
    )
    assert calls[0] == 1
    ref, ref_grad = _exact(x, y, reduction=reduction, **options)
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert_close(ours, ref.to(dtype))
    assert_close(grad, ref_grad.to(dtype))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [
        {"ignore_index": -1.0},
        {"label_smoothing": 0.2},
        {"ignore_index": -1, "label_smoothing": 0.1, "weight": "classes", "pos_weight": "full"},
    ],
    ids=["ignore", "smoothing", "all"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_bce_with_logits_ignore_index_and_smoothing(calls, options, reduction, dtype):
    shape = (33, 9)
    x = torch.randn(*shape, dtype=dtype) * 6
    y = _targets("mixed", shape, dtype)
    y[::4, 2:5] = -1.0  # ignored where ignore_index is -1
    options = {
        k: _WEIGHTS[v](shape, dtype) if isinstance(v, str) else v for k, v in options.items()
    }
    ours, grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits, x, y, reduction=reduction, **options
    )
    assert calls[0] == 1
    ref, ref_grad = _exact(x, y, reduction=reduction, **options)
    assert_close(ours, ref.to(dtype))
    assert_close(grad, ref_grad.to(dtype))


def test_native_bce_with_logits_keeps_float32_precision_at_every_logit(calls):
    # within 1e-5 of float64 at every logit from -88 to 88, hard, soft and mixed targets,
    # loss and gradient (where float32 does not underflow); torch's own kernel does not
    x = torch.linspace(-88, 88, 1761)
    pos_weight = torch.full((1761,), 3.0)
    for value in (0.0, 1.0, 0.3, 0.5, 0.97, 0.999, "mixed"):
        if value == "mixed":
            y = (torch.arange(1761) % 3 == 0).float()
            y[1::3] = 0.97
        else:
            y = torch.full_like(x, value)
        for options in ({}, {"pos_weight": pos_weight}):
            ours, grad = _value_and_grad(
                crossent.binary_cross_entropy_with_logits, x, y, reduction="none", **options
            )
            exact, exact_grad = _exact(x, y, reduction="none", **options)
            big = exact.abs() > 1e-30
            error = (ours.double() - exact).abs()[big]
            assert torch.all(error <= 1e-5 * exact.abs()[big]), (value, error.max())
            # the gradient of a soft target crosses 0 (at x = log(y / (w (1 - y))) with
            # pos_weight w): there, within float32's rounding of its terms, of size 1 + w
            error = (grad.double() - exact_grad).abs()
            floor = 2.0**-24 * (1 + options.get("pos_weight", torch.ones(1)).double())
            assert torch.all(error <= 1e-5 * exact_grad.abs() + floor), (value, error.max())
    assert calls[0] == 14


def test_native_bce_with_logits_autograd_node(calls):
    """One C++ node: a retained graph backpropagates twice, an incoming gradient scales the
    gradient, and second derivatives are refused (not silently wrong)."""
    x = torch.randn(32, 10, requires_grad=True)
    y = (torch.rand(32, 10) < 0.3).float()
    pos_weight = torch.full((10,), 2.0)
    loss = crossent.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight)
    assert loss.grad_fn.name().endswith("BceWithLogits>")
    assert loss.grad_fn.next_functions[0][0].name() == "torch::autograd::AccumulateGrad"
    (3.0 * loss).backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    ref = crossent.binary_cross_entropy_with_logits(
        x.double(), y.double(), pos_weight=pos_weight.double(), backend="reference"
    )
    (ref_grad,) = torch.autograd.grad(ref, x)
    assert_close(first, 3.0 * ref_grad.float())
    assert_close(x.grad, 4.0 * ref_grad.float())
    none = crossent.binary_cross_entropy_with_logits(x, y, reduction="none")
    incoming = torch.randn(32, 10)
    (got,) = torch.autograd.grad(none, x, incoming)
    (want,) = torch.autograd.grad(
        crossent.binary_cross_entropy_with_logits(x, y, reduction="none", backend="reference"),
        x,
        incoming,
    )
    assert_close(got, want)
    with pytest.raises(RuntimeError, match=r"first derivatives only.*backend=\"reference\""):
        torch.autograd.grad(crossent.binary_cross_entropy_with_logits(x, y), x, create_graph=True)
    assert calls[0] == 3


def test_native_bce_with_logits_without_a_graph_and_in_other_layouts(calls):
    x = torch.randn(10, 32)
    y = (torch.rand(10, 32) < 0.5).float()
    ref = crossent.binary_cross_entropy_with_logits(x.t(), y.t(), backend="reference")
    with torch.no_grad():
        plain = crossent.binary_cross_entropy_with_logits(x.t(), y.t())  # not contiguous
    with torch.inference_mode():
        inference = crossent.binary_cross_entropy_with_logits(x.t(), y.t())
    leaf = x.t().clone().requires_grad_()
    ours, grad = _value_and_grad(crossent.binary_cross_entropy_with_logits, leaf, y.t())
    _, ref_grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits, leaf, y.t(), backend="reference"
    )
    assert plain.grad_fn is None and inference.grad_fn is None
    for got in (plain, inference, ours):
        assert_close(got, ref)
    assert_close(grad, ref_grad)
    assert calls[0] == 3


def test_where_the_native_operator_does_not_apply(calls):
    x = torch.randn(16, 5, requires_grad=True)
    y = (torch.rand(16, 5) < 0.5).float()
    per_row = torch.rand(16, 1) + 0.5  # a weight per row: the torch formulation
    ours, grad = _value_and_grad(crossent.binary_cross_entropy_with_logits, x, y, weight=per_row)
    ref, ref_grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits, x, y, weight=per_row, backend="reference"
    )
    assert_close(ours, ref)
    assert_close(grad, ref_grad)
    assert calls[0] == 0
    # every target ignored: the general path's mean, 0 with a zero gradient
    ignored = torch.full_like(y, -1.0)
    out, grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits, x, ignored, ignore_index=-1
    )
    assert calls[0] == 1
    assert out.item() == 0.0 and not grad.any()
    # a weight that requires a gradient: the reference path differentiates it
    w = torch.rand(5, requires_grad=True)
    crossent.binary_cross_entropy_with_logits(x, y, weight=w).backward()
    assert w.grad is not None and calls[0] == 1
    with _native.disabled():
        crossent.binary_cross_entropy_with_logits(x, y)
    assert calls[0] == 1


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=600,
    )


_FIRST_CALLS = """
    import time, torch, crossent
    from crossent.kernels import _native, wait_for_compiles
    x, y = torch.randn(32, 10), (torch.rand(32, 10) < 0.5).float()
    ref = crossent.binary_cross_entropy_with_logits(x, y, backend="reference")
    t0 = time.perf_counter()
    out = crossent.binary_cross_entropy_with_logits(x, y)
    first = time.perf_counter() - t0
    state = _native.status()[0]
    torch.testing.assert_close(out, ref)
    wait_for_compiles()
    out = crossent.binary_cross_entropy_with_logits(x, y)
    torch.testing.assert_close(out, ref)
    print(state, _native.status()[0], round(first, 3))
"""


@pytest.mark.skipif(not _BUILT_HERE, reason="built on Linux x86-64 with AVX2 or AVX-512")
def test_the_build_runs_in_the_background_and_is_cached(tmp_path):
    # a first process: its first call does not wait for the compiler (the torch formulation
    # serves it), and the library lands in the cache; a second process loads it from there
    first = _run(_FIRST_CALLS, CROSSENT_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    before, after, seconds = first.stdout.split()
    assert (before, after) == ("building", "ready")
    assert float(seconds) < 1.0
    libraries = list((tmp_path / "native").glob("crossent_native_*.so"))
    assert len(libraries) == 1 and not list((tmp_path / "native").glob("*.partial"))
    second = _run(
        """
        import time, torch
        from crossent.kernels import _native
        t0 = time.perf_counter()
        assert _native.build(wait=True)
        print(time.perf_counter() - t0)
        """,
        CROSSENT_CACHE_DIR=str(tmp_path),
    )
    assert second.returncode == 0, second.stderr
    assert float(second.stdout) < 2.0  # loaded, not compiled
    assert list((tmp_path / "native").glob("crossent_native_*.so")) == libraries


def test_turned_off_and_failed_builds_leave_the_torch_formulation(tmp_path):
    off = _run(_FIRST_CALLS, CROSSENT_CACHE_DIR=str(tmp_path), CROSSENT_NATIVE="0")
    assert off.returncode == 0, off.stderr
    assert off.stdout.split()[:2] == ["off", "off"]
    assert not (tmp_path / "native").exists()
    if not _BUILT_HERE:
        return
    failed = _run(_FIRST_CALLS, CROSSENT_CACHE_DIR=str(tmp_path), CXX="false")
    assert failed.returncode == 0, failed.stderr
    assert failed.stdout.split()[:2] == ["building", "failed"]
    assert "native CPU kernels could not be built" in failed.stderr
    assert not list((tmp_path / "native").glob("*"))  # nothing half-written left
