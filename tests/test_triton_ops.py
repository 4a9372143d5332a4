"""The Triton kernels as registered ops: fake tensors, tracing, torch.compile, no host reads.

crossent registers its launches as ``crossent::binary_loss``, ``crossent::softmax_loss`` and
``crossent::scale_`` (``torch.library.triton_op``), so that ``torch.compile(fullgraph=True)``
on CUDA launches the kernels from the compiled graph. Without a GPU:

* the ops' meta implementations (their bodies, run on fake tensors) are checked for the
  shapes and dtypes eager mode returns, and ``make_fx`` traces a public loss to the ops;
* Inductor's own copy of each kernel's source (what it compiles under torch.compile) is
  compiled for sm_90;
* a function calling the losses is compiled (``fullgraph=True``, AOTAutograd with the eager
  backend: Inductor needs a GPU to compile Triton kernels) with Triton's launcher replaced by
  a recorder: the compiled graph launches exactly the kernels eager mode launches, with the
  same arguments -- so, on a GPU, the same values;
* ``tests/_helpers/host_reads.py`` runs every loss forward and backward under the
  interpreter with every host read recorded.

Triton's interpreter cannot take part in tracing (torch runs an interpreted kernel on the
fake tensors), so these run in a process without ``TRITON_INTERPRET=1``, like
test_triton_compile.py; the values themselves are checked by the interpreter cases and, on a
GPU, by test_cuda.py (which also runs ``torch.library.opcheck``, CUDA graphs and Inductor).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import crossent
from crossent import functional as CF
from crossent._precision import compute_dtype, grad_dtype, output_dtype
from crossent.kernels import _dispatch, _function

triton = pytest.importorskip("triton")
from triton.runtime.jit import JITFunction  # noqa: E402

_triton = pytest.importorskip("crossent.kernels._triton")  # imports triton: after the skip

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        _triton.interpreting(), reason="TRITON_INTERPRET=1: interpreted kernels cannot be traced"
    ),
]


@pytest.fixture
def gpu_route(monkeypatch):
    """CPU tensors take the route CUDA tensors take: the Triton backend (also inside
    torch.compile), no host read (``reads_are_free``), no value checks (they read the data;
    the lead's checks are tested elsewhere)."""
    monkeypatch.setattr(_dispatch, "_interpreting", lambda: True)
    monkeypatch.setattr(_dispatch, "_triton_traceable", lambda input: True)
    monkeypatch.setattr(_function, "reads_are_free", lambda tensor: False)
    previous = crossent.set_value_checks(False)
    yield
    crossent.set_value_checks(previous)
    assert _dispatch._triton_error is None


@pytest.fixture
def recorded_launches(monkeypatch):
    """Every Triton launch recorded instead of run: ``(kernel, grid, arguments)`` with the
    arguments that are not tensors (numbers, constexpr flags, warps) by name."""
    launches: list[tuple] = []

    def record(self, *args, grid, warmup, **kwargs):
        # Triton's launch defaults, which torch.compile passes explicitly (as a config)
        bound = {"num_warps": 4, "num_stages": 3, "num_ctas": 1}
        bound.update(zip(self.arg_names, args))
        bound.update(kwargs)
        numbers = tuple(
            (name, value)
            for name, value in sorted(bound.items())
            if not isinstance(value, torch.Tensor)
        )
        grid = tuple(grid) + (1,) * (3 - len(grid))
        launches.append((self.__name__, grid, numbers))

    monkeypatch.setattr(JITFunction, "run", record)
    return launches


# --------------------------------------------------------------------------------------------
# Meta implementations
# --------------------------------------------------------------------------------------------


def test_the_ops_are_registered():
    schemas = {
        name: str(getattr(torch.ops.crossent, name).default._schema)
        for name in ("binary_loss", "softmax_loss", "scale_")
    }
    assert "-> (Tensor, Tensor)" in schemas["binary_loss"]
    assert "-> (Tensor, Tensor)" in schemas["softmax_loss"]
    assert "Tensor(a0!) grad" in schemas["scale_"]  # mutates its first argument only


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("reduce", [False, True], ids=["none", "reduced"])
def test_binary_op_on_fake_tensors(reduce, dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 4, 5, dtype=dtype)
        y = torch.empty(3, 4, 5, dtype=dtype)
        w = torch.empty(4, 1, dtype=dtype)
        for kind, has_ignore, need_grad in [(0, False, True), (1, True, False), (2, True, True)]:
            out, grad = torch.ops.crossent.binary_loss(
                x, y, w, None, None, [-1.0, 0.0, 2.0, 0.25, 0.75, 0.0], 60, kind, 2,
                kind == 0, False, kind == 0, False, has_ignore, False, reduce, need_grad,
            )  # fmt: skip
            if reduce:
                assert out.shape == (2 if has_ignore else 1,)
                assert out.dtype == compute_dtype(dtype, kind == 1)
            else:
                assert out.shape == x.shape and out.dtype == output_dtype(x)
            if need_grad:
                assert grad.shape == x.shape and grad.dtype == grad_dtype(dtype)
            else:
                assert grad.numel() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("reduce", [False, True], ids=["none", "reduced"])
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_softmax_op_on_fake_tensors(probs, reduce, dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 7, 2, dtype=dtype)
        t = torch.empty(3, 7, 2, dtype=dtype) if probs else torch.empty(3, 2, dtype=torch.long)
        alpha = torch.empty(7)
        out, grad = torch.ops.crossent.softmax_loss(
            x,
            t,
            None,
            alpha,
            torch.empty(3, 2),
            None,
            [-100.0, 0.1, 2.0, 0.0, 0.0, 1e-4, 30.0],
            0,
            True,
            2,
            reduce,
            True,
        )
        if reduce:
            assert out.shape == (2,) and out.dtype == compute_dtype(dtype)
        else:
            assert out.shape == (3, 2) and out.dtype == output_dtype(x)
        assert grad.shape == x.shape and grad.dtype == grad_dtype(dtype)
        g = torch.empty(3, 7, 2)
        torch.ops.crossent.scale_(g, torch.empty(()))  # mutates in place: returns nothing


def test_make_fx_traces_the_losses_to_the_ops(gpu_route):
    from torch.fx.experimental.proxy_tensor import make_fx

    def losses(x, t, y):
        return (
            CF.cross_entropy(x, t, label_smoothing=0.1, backend="triton"),
            CF.sigmoid_focal_loss(x, y, reduction="none", backend="triton"),
        )

    x, y = torch.randn(6, 5), (torch.rand(6, 5) < 0.5).float()
    t = torch.randint(0, 5, (6,))
    graph = make_fx(losses, tracing_mode="symbolic")(x, t, y)
    targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
    assert "crossent.softmax_loss.default" in targets
    assert "crossent.binary_loss.default" in targets
    ce, focal = next(node for node in graph.graph.nodes if node.op == "output").args[0]
    assert ce.meta["val"].shape == () and list(focal.meta["val"].shape) == list(x.shape)


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


def _step(x, t, y, w):
    return (
        CF.cross_entropy(x, t, weight=w, backend="triton")
        + CF.softmax_focal_loss(x, t, gamma=2.0, alpha=0.5, backend="triton")
        + CF.sigmoid_focal_loss(x, y, reduction="sum", backend="triton")
        + CF.asymmetric_loss(x, y, ignore_index=-1, backend="triton")
        + CF.binary_cross_entropy(torch.sigmoid(x), y, backend="triton").mul(0.5)
    )


def _inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, generator=g)
    t = torch.randint(0, 5, (6,), generator=g)
    y = (torch.rand(6, 5, generator=g) < 0.4).float()
    return x, t, y, torch.rand(5, generator=g) + 0.5


def test_compiled_graph_launches_the_eager_kernels(gpu_route, recorded_launches):
    """fullgraph=True: no graph break. The compiled forward launches the kernels eager mode
    launches, with the same numbers and flags (backward, a product with the incoming gradient
    under torch.compile, is left to the compiler)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    x, t, y, w = _inputs()
    xx = x.clone().requires_grad_(True)
    _step(xx, t, y, w).backward()
    eager = [launch for launch in recorded_launches if launch[0] != "_scale_kernel"]
    assert {launch[0] for launch in eager} == {
        "_binary_kernel",
        "_cross_entropy_kernel",
        "_sum_rows_kernel",
    }
    recorded_launches.clear()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_step, backend=counter, fullgraph=True, dynamic=False)
    xx = x.clone().requires_grad_(True)
    compiled(xx, t, y, w).backward()
    assert counter.frame_count == 1
    assert sorted(recorded_launches) == sorted(eager)
    torch._dynamo.reset()


def test_compiled_with_dynamic_shapes_reuses_one_graph(gpu_route, recorded_launches):
    # a new batch size is a new value of a symbolic size, not a recompile; the mean's count
    # then reaches the kernels as a 0-dim tensor (SCALE 2), not as a baked-in number
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def loss(x, t):
        return CF.cross_entropy(x, t, ignore_index=None, backend="triton")

    compiled = torch.compile(loss, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for rows in (6, 9):
        x = torch.randn(rows, 5, requires_grad=True)
        compiled(x, torch.randint(0, 5, (rows,))).backward()
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames[1] == frames[0]  # the second batch size: no recompile
    kernels = [launch for launch in recorded_launches if launch[0] == "_cross_entropy_kernel"]
    assert [launch[1][0] for launch in kernels] == [6, 9]
    assert all(dict(launch[2])["SCALE"] == 2 for launch in kernels)
    torch._dynamo.reset()


def test_inductor_source_of_every_kernel_compiles_for_a_gpu(tmp_path):
    """Inductor does not import a user's kernel: it writes the kernel's source and everything
    it calls (jit functions, constexpr globals) into its own module, under its own imports
    (``libdevice`` from its helpers). That module, for each kernel, compiled for sm_90 with
    the argument types and flags of a real launch -- what a GPU would compile under
    torch.compile."""
    import functools
    import importlib.util

    from torch._inductor.codegen.triton import TritonKernel
    from torch._inductor.codegen.wrapper import (
        user_defined_triton_kernel_transitive_closure_source_code as closure_source,
    )

    from tests.test_triton_compile import _compile, _launches, _through_backward

    x, t, y, w = _inputs()
    calls = [
        functools.partial(_through_backward, CF.cross_entropy, x, t, weight=w),
        functools.partial(_through_backward, CF.sigmoid_focal_loss, x, y),
    ]
    first = {}
    for launch in _launches(calls).values():
        first.setdefault(launch[0].__name__, launch)
    kernels = {"_binary_kernel", "_cross_entropy_kernel", "_sum_rows_kernel", "_scale_kernel"}
    assert set(first) == kernels
    for name, (kernel, signature, constexprs, warps) in first.items():
        source = TritonKernel.gen_common_triton_imports() + "\n@triton.jit\n"
        source += closure_source(kernel)
        path = tmp_path / f"inductor_{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _compile((getattr(module, name), signature, constexprs, warps), "sm90")


# --------------------------------------------------------------------------------------------
# No host read
# --------------------------------------------------------------------------------------------


def test_no_host_read_on_the_triton_path():
    """tests/_helpers/host_reads.py under the interpreter: every loss forward and backward
    without a read of a tensor's value (or a tensor made from host data) in crossent's
    kernel, dispatch and reduction code."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    proc = subprocess.run(
        [sys.executable, "-m", "tests._helpers.host_reads"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "no host read" in proc.stdout
