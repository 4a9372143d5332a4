"""crossent's native CPU operators (``crossent.kernels._native``): built off the critical path
and cached; where they serve a call, the reference's value and gradient for every option and
weight layout, and the torch formulation wherever they do not apply."""

from __future__ import annotations

import collections
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


class _Counted:
    """The native operators, each call counted by operator name."""

    def __init__(self, operators):
        self.operators = operators
        self.count = collections.Counter()

    def __getattr__(self, name):
        op = getattr(self.operators, name)

        def counted(*args):
            self.count[name] += 1
            return op(*args)

        return counted


@pytest.fixture
def calls(monkeypatch):
    """The calls of each native operator so far (a Counter by name)."""
    _ready()
    counted = _Counted(_native._OPERATORS)
    monkeypatch.setattr(_native, "_OPERATORS", counted)
    return counted.count


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
    assert calls["bce_with_logits"] == 1
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
    assert calls["bce_with_logits"] == 1
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
    assert calls["bce_with_logits"] == 14


def test_native_bce_with_logits_autograd_node(calls):
    """One C++ node: a retained graph backpropagates twice, an incoming gradient scales the
    gradient, and second derivatives are refused (not silently wrong)."""
    x = torch.randn(32, 10, requires_grad=True)
    y = (torch.rand(32, 10) < 0.3).float()
    pos_weight = torch.full((10,), 2.0)
    loss = crossent.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight)
    assert loss.grad_fn.name().endswith("OnePassLoss>")
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
    assert calls["bce_with_logits"] == 3


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
    assert calls["bce_with_logits"] == 3


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
    assert calls["bce_with_logits"] == 0
    # every target ignored: the general path's mean, 0 with a zero gradient
    ignored = torch.full_like(y, -1.0)
    out, grad = _value_and_grad(
        crossent.binary_cross_entropy_with_logits, x, ignored, ignore_index=-1
    )
    assert calls["bce_with_logits"] == 1
    assert out.item() == 0.0 and not grad.any()
    # a weight that requires a gradient: the reference path differentiates it
    w = torch.rand(5, requires_grad=True)
    crossent.binary_cross_entropy_with_logits(x, y, weight=w).backward()
    assert w.grad is not None and calls["bce_with_logits"] == 1
    with _native.disabled():
        crossent.binary_cross_entropy_with_logits(x, y)
    assert calls["bce_with_logits"] == 1


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
    # nothing half-written left; the failure remembered, so the next process neither tries
    # that compiler again nor warns again
    (marker,) = (tmp_path / "native").glob("*")
    assert marker.suffix == ".failed" and marker.read_text().startswith("false\n")
    again = _run(_FIRST_CALLS, CROSSENT_CACHE_DIR=str(tmp_path), CXX="false")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[:2] == ["building", "failed"]
    assert "could not be built" not in again.stderr
    assert list((tmp_path / "native").glob("*")) == [marker]


_CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": "w"},
    "smoothing": {"label_smoothing": 0.1},
    "all": {"weight": "w", "label_smoothing": 0.2, "ignore_index": 2},
    "no_ignore": {"ignore_index": None, "weight": "w"},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(32, 10), (5, 3), (256, 80), (7, 33)])
@pytest.mark.parametrize("options", list(_CE_OPTIONS))
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probabilities"])
def test_native_cross_entropy_equals_the_reference(calls, dtype, reduction, shape, options, probs):
    n, c = shape
    x = torch.randn(n, c, dtype=dtype) * 3
    options = dict(_CE_OPTIONS[options])
    if "weight" in options:
        options["weight"] = torch.rand(c, dtype=dtype) + 0.2
    ignore = options.get("ignore_index", -100)
    if probs:
        t = torch.softmax(torch.randn(n, c, dtype=dtype) * 2, 1)
        if ignore is not None:
            t[1] = ignore  # an ignored row
        t[2] = 0.0  # a row without target mass
    else:
        t = torch.randint(0, c, (n,))
        if ignore is not None:
            t[0] = ignore
    ours, grad = _value_and_grad(crossent.cross_entropy, x, t, reduction=reduction, **options)
    # class indices without smoothing from 16 classes on: ATen's kernels (faster there)
    native = probs or "label_smoothing" in options or c < 16
    assert calls["cross_entropy_probs" if probs else "cross_entropy"] == native
    ref, ref_grad = _value_and_grad(
        crossent.cross_entropy,
        x.double(),
        t.double() if probs else t,
        reduction=reduction,
        backend="reference",
        **{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in options.items()},
    )
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert_close(ours, ref.to(dtype))
    assert_close(grad, ref_grad.to(dtype))


def test_native_cross_entropy_edges(calls):
    # an out-of-range index: crossent's error (from the general path); every sample ignored:
    # the general path's mean, 0 with a zero gradient; a -inf logit without target mass: 0
    # and a zero gradient there, not 0 * inf = NaN
    x = torch.randn(6, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\]"):
        crossent.cross_entropy(x, torch.tensor([0, 1, 4, 2, 3, 1]))
    assert calls["cross_entropy"] == 1
    out, grad = _value_and_grad(crossent.cross_entropy, x, torch.full((6,), -100))
    assert out.item() == 0.0 and not grad.any() and calls["cross_entropy"] == 2
    masked = torch.cat([x.detach()[:, :3], torch.full((6, 1), float("-inf"))], 1)
    p = torch.cat([torch.softmax(torch.randn(6, 3), 1), torch.zeros(6, 1)], 1)
    for target in (torch.arange(6) % 3, p):
        ours, grad = _value_and_grad(crossent.cross_entropy, masked, target, reduction="none")
        ref, ref_grad = _value_and_grad(
            crossent.cross_entropy, masked, target, reduction="none", backend="fused"
        )
        assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
        assert_close(ours, ref)
        assert_close(grad, ref_grad)
    assert calls["cross_entropy"] == 3 and calls["cross_entropy_probs"] == 1
    # a per-sample loss under an incoming gradient, and no node without a gradient
    t = torch.randint(0, 4, (6,))
    incoming = torch.randn(6)
    (got,) = torch.autograd.grad(crossent.cross_entropy(x, t, reduction="none"), x, incoming)
    (want,) = torch.autograd.grad(
        crossent.cross_entropy(x, t, reduction="none", backend="reference"), x, incoming
    )
    assert_close(got, want)
    with torch.no_grad():
        assert crossent.cross_entropy(x, t).grad_fn is None
    # other ranks of input take ATen's kernel
    crossent.cross_entropy(torch.randn(4, 3, 2), torch.randint(0, 3, (4, 2)))
    assert calls["cross_entropy"] == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7,), (32, 10), (256, 80)])
@pytest.mark.parametrize("options", ["plain", "classes", "full_ignore"])
def test_native_binary_cross_entropy_equals_the_closed_form(
    calls, dtype, reduction, shape, options
):
    # against the general path's closed form, whose gradient at p = 0 and 1 (and within
    # 1e-12 of them) is crossent's, not ATen's; hard and soft targets
    tiny = 1e-300 if dtype == torch.float64 else 1e-30
    p = torch.rand(*shape, dtype=dtype)
    p.view(-1)[:4] = torch.tensor([0.0, 1.0, tiny, 1e-13], dtype=dtype)
    y = torch.rand(*shape, dtype=dtype)
    y.view(-1)[::2] = y.view(-1)[::2].round()
    kw = {}
    if options == "classes":
        kw["weight"] = torch.rand(shape[-1], dtype=dtype) + 0.3
    elif options == "full_ignore":
        kw["weight"] = torch.rand(*shape, dtype=dtype) + 0.3
        kw["ignore_index"] = -1
        y.view(-1)[5::7] = -1.0
    ours, grad = _value_and_grad(crossent.binary_cross_entropy, p, y, reduction=reduction, **kw)
    assert calls["binary_cross_entropy"] == 1
    ref, ref_grad = _value_and_grad(
        crossent.binary_cross_entropy, p, y, reduction=reduction, backend="fused", **kw
    )
    assert torch.isfinite(grad).all()
    assert_close(ours, ref)
    assert_close(grad, ref_grad)


def test_native_binary_cross_entropy_keeps_the_errors(calls):
    y = torch.tensor([1.0, 0.0])
    for bad in (1.5, -0.25, float("nan")):
        with pytest.raises(ValueError, match=r"`input` to hold probabilities in \[0, 1\]"):
            crossent.binary_cross_entropy(torch.tensor([0.5, bad]), y)
    assert calls["binary_cross_entropy"] == 3
    # a target outside [0, 1]: the general path's answer
    p = torch.tensor([0.5, 0.2])
    outside = torch.tensor([1.0, 2.0])
    assert_close(
        crossent.binary_cross_entropy(p, outside),
        crossent.binary_cross_entropy(p, outside, backend="fused"),
    )


@pytest.mark.skipif(not _BUILT_HERE, reason="built on Linux x86-64 with AVX2 or AVX-512")
def test_a_process_that_exits_during_the_build_leaves_nothing_behind(tmp_path):
    # the build runs in a daemon thread: at exit its compiler is stopped (with the processes
    # it started) and its partial output removed
    done = _run(
        """
        import time, torch, crossent
        from crossent.kernels import _native
        crossent.binary_cross_entropy_with_logits(torch.randn(8, 3), torch.rand(8, 3))
        time.sleep(1.0)
        print(_native.status()[0])
        """,
        CROSSENT_CACHE_DIR=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["building"]
    assert not list((tmp_path / "native").glob("*"))
    running = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert running.stdout == ""
