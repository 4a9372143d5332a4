"""Launch configurations of the Triton kernels on a GPU: device time per forward+backward of
crossent's losses for each (block, warps) pair, to choose the defaults in
``crossent/kernels/_triton.py``. Needs CUDA.

    python benchmarks/sweep_triton.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import triton

import crossent
from crossent import bench
from crossent.kernels import _triton

DEVICE = torch.device("cuda")


def _time(fn, x, y) -> tuple[float, torch.Tensor]:
    ms = bench.device_ms(fn, x, y, DEVICE, steps=20)
    x.grad = None
    fn(x, y).backward()
    return ms, x.grad.clone()


def elementwise(n: int = 1 << 26) -> None:
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(n, generator=g, device=DEVICE).requires_grad_(True)
    y = (torch.rand(n, generator=g, device=DEVICE) < 0.1).float()
    losses = {
        "bce": lambda a, b: crossent.binary_cross_entropy_with_logits(a, b, backend="triton"),
        "focal": lambda a, b: crossent.sigmoid_focal_loss(a, b, backend="triton"),
    }
    default = (_triton._ELEMENTWISE_LIGHT, _triton._ELEMENTWISE_HEAVY)
    for name, fn in losses.items():
        reference = None
        for block, warps in [(1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8), (4096, 16)]:
            _triton._ELEMENTWISE_LIGHT = _triton._ELEMENTWISE_HEAVY = (block, warps)
            ms, grad = _time(fn, x, y)
            reference = grad if reference is None else reference
            same = torch.equal(grad, reference)
            gbps = 12 * n / (ms / 1e3) / 1e9
            print(f"{name} n={n} BLOCK={block} warps={warps}: {ms:.4f} ms {gbps:.0f} GB/s {same}")
    _triton._ELEMENTWISE_LIGHT, _triton._ELEMENTWISE_HEAVY = default


def rows() -> None:
    default = _triton._row_launch
    losses = {
        "ce": lambda a, b: crossent.cross_entropy(a, b, backend="triton"),
        "focal": lambda a, b: crossent.softmax_focal_loss(a, b, backend="triton"),
        "ce_smooth": lambda a, b: crossent.cross_entropy(
            a, b, label_smoothing=0.1, backend="triton"
        ),
    }
    for n, c in [(8192, 1000), (4096, 32000), (8192, 128256)]:
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randn(n, c, generator=g, device=DEVICE).requires_grad_(True)
        t = torch.randint(0, c, (n,), generator=g, device=DEVICE)
        for name, fn in losses.items():
            reference = None
            for cap, warps in [
                (4096, 8),
                (8192, 8),
                (8192, 16),
                (16384, 16),
                (16384, 32),
                (32768, 32),
                (2048, 4),
                (4096, 4),
            ]:
                block = min(triton.next_power_of_2(c), cap)
                _triton._row_launch = lambda *args, b=block, w=warps: (b, w)
                try:
                    ms, grad = _time(fn, x, t)
                except Exception as exc:
                    print(f"{name} {n}x{c} BLOCK={block} warps={warps}: {type(exc).__name__}")
                    crossent.kernels._dispatch._triton_error = None
                    continue
                finally:
                    _triton._row_launch = default
                if crossent.kernels._dispatch._triton_error is not None:
                    print(f"{name} {n}x{c} BLOCK={block} warps={warps}: fell back")
                    crossent.kernels._dispatch._triton_error = None
                    continue
                reference = grad if reference is None else reference
                err = ((grad - reference).abs().max() / reference.abs().max()).item()
                gbps = (8 * n * c + 8 * n) / (ms / 1e3) / 1e9
                print(
                    f"{name} {n}x{c} BLOCK={block} warps={warps}: {ms:.4f} ms "
                    f"{gbps:.0f} GB/s rel.diff {err:.1e}"
                )
        del x, t


if __name__ == "__main__":
    crossent.set_value_checks(False)
    print(f"copy: {bench.copy_gbps(DEVICE):.0f} GB/s")
    elementwise()
    rows()
