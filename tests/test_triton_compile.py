"""Every Triton kernel launch crossent makes, compiled for real GPUs -- without one.

The interpreter (``TRITON_INTERPRET=1``, ``test_kernels.py``) runs the kernels' Python in numpy:
it checks the math but not that a GPU compiler accepts the code. It accepts what the compiler
refuses (a kernel reading a plain global instead of a ``tl.constexpr``: on a GPU that kernel
failed and crossent fell back to the eager path, a bug CI could not see), and it never takes
the libdevice branches the GPU build uses. Triton's compiler itself needs no GPU: it lowers a
kernel to PTX and assembles it with the ``ptxas`` its wheel ships. So here the public losses
run with ``backend="triton"`` on CPU tensors with Triton's launcher replaced by a recorder;
each distinct launch (kernel, argument types, constexpr flags, warps) is then compiled for an
H100 (sm_90) and an A100 (sm_80), the GPUs the launch configurations were tuned or are
commonly run on. Nothing is executed: values are checked by the interpreter cases and, on a
GPU, by ``test_cuda.py``.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from crossent import functional as CF
from crossent.kernels import _dispatch
from tests.test_kernels import (
    OPTIONS,
    SOFTMAX_FAMILY,
    VARIANTS,
    _case,
    _family_kwargs,
    _public_ce_case,
)

triton = pytest.importorskip("triton")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction, mangle_type
except ImportError:  # pragma: no cover - another Triton layout
    pytest.skip("this Triton has no ASTSource / GPUTarget", allow_module_level=True)
_triton = pytest.importorskip("crossent.kernels._triton")  # imports triton: after the skip

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        _triton.interpreting(), reason="TRITON_INTERPRET=1: the kernels are interpreted here"
    ),
]

TARGETS = {"sm90": GPUTarget("cuda", 90, 32), "sm80": GPUTarget("cuda", 80, 32)}


def _launches(calls) -> dict[tuple, tuple]:
    """Run ``calls`` (functions of no arguments) with every Triton launch recorded instead of
    executed: ``{key: (kernel, signature, constexprs, num_warps)}``, one per distinct launch."""
    seen: dict[tuple, tuple] = {}

    def record(self, *args, grid, warmup, **kwargs):
        num_warps = kwargs.pop("num_warps", 4)
        names = self.arg_names
        bound = dict(zip(names, args))
        bound.update(kwargs)
        signature, constexprs = {}, {}
        for i, name in enumerate(names):
            value = bound.get(name, self.params[i].default)
            if self.params[i].is_constexpr or value is None:
                signature[name] = "constexpr"
                constexprs[name] = value
            else:
                signature[name] = mangle_type(value)  # Triton's own: "*fp32", "i32", ...
        variants = [signature]
        if "*fp16" in signature.values():
            # bfloat16 launches the same code with other pointer types (the interpreter, which
            # the dispatcher believes is running here, would refuse a bfloat16 input)
            variants.append({k: "*bf16" if v == "*fp16" else v for k, v in signature.items()})
        for sig in variants:
            key = (self.__name__, tuple(sig.items()), tuple(constexprs.items()), num_warps)
            seen.setdefault(key, (self, sig, constexprs, num_warps))
        return None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(JITFunction, "run", record)
        # route CPU tensors to the Triton backend, as TRITON_INTERPRET=1 does
        mp.setattr(_dispatch, "_interpreting", lambda: True)
        for call in calls:
            call()
        assert _dispatch._triton_error is None
    return seen


def _through_backward(fn, x, y, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, y, backend="triton", **kwargs)
    out.sum().backward() if out.dim() else (3 * out).backward()


def _binary_calls():
    calls = []
    for variant in VARIANTS:
        for option in OPTIONS:
            for reduction in ("none", "mean"):
                fn, x, y, kwargs = _case(variant, option, torch.float32, soft=True)
                calls.append(
                    functools.partial(_through_backward, fn, x, y, reduction=reduction, **kwargs)
                )
        for dtype in (torch.float64, torch.float16):  # float16 stands for bfloat16 too
            fn, x, y, kwargs = _case(variant, "all", dtype, soft=True)
            calls.append(functools.partial(_through_backward, fn, x, y, reduction="mean", **kwargs))
    # no gradient (inference), and boolean targets
    fn, x, y, kwargs = _case("focal_g2_a25", "plain", torch.float32, soft=False)
    calls.append(lambda: fn(x, y, backend="triton", **kwargs))
    calls.append(lambda: fn(x, y.bool(), backend="triton", **kwargs))
    return calls


def _softmax_calls():
    calls = []
    for loss in ("cross_entropy", *SOFTMAX_FAMILY):
        for kind in ("index", "probs"):
            for options in ("plain", "weight", "smoothing", "both"):
                for dtype in (torch.float32, torch.float64):
                    x, t, w = _public_ce_case(kind)
                    if loss == "cross_entropy":
                        fn, kwargs = CF.cross_entropy, {}
                        if options in ("weight", "both"):
                            kwargs["weight"] = w.to(dtype)
                        if options in ("smoothing", "both"):
                            kwargs["label_smoothing"] = 0.2
                    else:
                        fn, kwargs = _family_kwargs(loss, options, dtype, w)
                    t = t.to(dtype) if t.is_floating_point() else t
                    calls.append(functools.partial(_through_backward, fn, x.to(dtype), t, **kwargs))
    # z_loss, softcap and sample_weight (the Z_LOSS, SOFTCAP and SAMPLE_W flags) on each path
    x, t, w = _public_ce_case("index")
    sw = torch.rand(t.shape)
    for (fn, kwargs), target, dtype in itertools.product(
        [
            (CF.cross_entropy, {}),
            (CF.cross_entropy, {"label_smoothing": 0.1, "weight": w}),
            (CF.softmax_focal_loss, {"gamma": 2.0}),
            (CF.poly1_cross_entropy, {"label_smoothing": 0.1}),
        ],
        ("index", "probs"),
        (torch.float32, torch.float64),
    ):
        if dtype == torch.float64 and fn is not CF.cross_entropy:
            continue  # float64 once per target kind
        x, t, _ = _public_ce_case(target)
        t = t.to(dtype) if t.is_floating_point() else t
        kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        options = dict(z_loss=1e-4, softcap=30.0, sample_weight=sw.to(dtype), **kwargs)
        calls.append(functools.partial(_through_backward, fn, x.to(dtype), t, **options))
    # wide rows (every block size and warp count of the launch table) and half inputs
    for n_classes in (100, 1000, 2048, 4096, 8192, 16384, 32000, 40000):
        x = torch.randn(2, n_classes)
        t = torch.tensor([0, n_classes - 1])
        probs = torch.softmax(torch.randn(2, n_classes), 1)
        for dtype in (torch.float32, torch.float16):
            xd = x.to(dtype)
            calls.append(functools.partial(_through_backward, CF.cross_entropy, xd, t))
            calls.append(
                functools.partial(_through_backward, CF.cross_entropy, xd, probs.to(dtype))
            )
            calls.append(
                functools.partial(_through_backward, CF.softmax_focal_loss, xd, t, gamma=2.0)
            )
    return calls


@functools.cache
def _family_launches(family: str) -> dict[tuple, tuple]:
    return _launches(_binary_calls() if family == "binary" else _softmax_calls())


def _params(family: str):
    launches = _family_launches(family)
    return [
        pytest.param(launch, target, id=f"{target}-{i}-{launch[0].__name__}")
        for i, launch in enumerate(launches.values())
        for target in TARGETS
    ]


def _compile(launch, target):
    kernel, signature, constexprs, num_warps = launch
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=TARGETS[target], options={"num_warps": num_warps})
    assert compiled.asm["cubin"], "ptxas produced no binary"
    assert ".entry" in compiled.asm["ptx"]


@pytest.mark.parametrize("launch, target", _params("binary"))
def test_binary_kernels_compile_for_gpus(launch, target):
    _compile(launch, target)


@pytest.mark.parametrize("launch, target", _params("softmax"))
def test_softmax_kernels_compile_for_gpus(launch, target):
    _compile(launch, target)


def test_every_kernel_is_covered():
    # a new @triton.jit kernel that no recorded launch reaches would go untested here
    names = {key[0] for family in ("binary", "softmax") for key in _family_launches(family)}
    kernels = {
        name
        for name, value in vars(_triton).items()
        if isinstance(value, JITFunction) and name.endswith("_kernel")
    }
    assert kernels <= names, f"never launched here: {sorted(kernels - names)}"
